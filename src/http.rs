//! The HTTP listener: `/metrics` (Prometheus), `/healthz`, `/readyz`, and the read-only explain
//! API under `/v1/` (optionally behind a bearer token).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::runtime::Status;

/// What the handlers share.
#[derive(Clone)]
pub struct HttpState {
    pub prometheus: Option<PrometheusHandle>,
    pub status: Arc<Status>,
    pub token: Option<String>,
}

/// The router.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/v1/tenants/{tenant}/devices/{device}", get(device))
        .route("/v1/tenants/{tenant}/connectors", get(connectors))
        .with_state(state)
}

async fn metrics(State(s): State<HttpState>) -> Response {
    match &s.prometheus {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are not enabled\n").into_response(),
    }
}

async fn readyz(State(s): State<HttpState>) -> Response {
    if s.status.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", s.status.describe()),
        )
            .into_response()
    }
}

fn authorized(s: &HttpState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let Some(token) = &s.token else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Constant-time comparison: the token guards who may read device state.
    let ok = given.is_some_and(|g| {
        g.len() == token.len()
            && g.bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if ok {
        Ok(())
    } else {
        Err(Box::new(
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "a valid bearer token is required\n",
            )
                .into_response(),
        ))
    }
}

async fn device(
    State(s): State<HttpState>,
    headers: HeaderMap,
    Path((tenant, device)): Path<(String, String)>,
) -> Response {
    if let Err(r) = authorized(&s, &headers) {
        return *r;
    }
    match s.status.with_reader(|e, now| e.explain_device(&tenant, &device, now)) {
        Some(Some(x)) => Json(x).into_response(),
        Some(None) => (
            StatusCode::NOT_FOUND,
            format!("device {tenant}/{device} is not held by this instance (unknown, or its partition is owned by another instance)\n"),
        )
            .into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "not started yet\n").into_response(),
    }
}

async fn connectors(
    State(s): State<HttpState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Response {
    if let Err(r) = authorized(&s, &headers) {
        return *r;
    }
    match s.status.with_reader(|e, _| e.explain_connectors(&tenant)) {
        Some(x) => Json(x).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "not started yet\n").into_response(),
    }
}
