//! The HTTP listener: `/metrics` (Prometheus), `/healthz`, `/readyz`, and the read-only explain
//! API under `/v1/` (optionally behind a bearer token). The server's one thread never waits for
//! the pipeline (see [`HttpState`]).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Semaphore;

use crate::runtime::Status;

/// Explain reads in flight at once; a call beyond them is answered 503 at once.
pub const EXPLAIN_CONCURRENCY: usize = 4;
/// Longest an explain read waits for a lock of the engine (a shard being restored, reconciled
/// or written, the tables during a table change) before it answers busy.
pub const EXPLAIN_PATIENCE: Duration = Duration::from_millis(1500);
/// An explain call answers within this whatever its read does (503 busy past it).
pub const EXPLAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// The `Retry-After` of a busy or restoring answer, in seconds.
const RETRY_AFTER_SECONDS: u64 = 1;

/// What the handlers share.
///
/// Nothing here waits for the pipeline on the HTTP server's thread: `/healthz` answers
/// outright, `/readyz` reads atomics, `/metrics` renders the Prometheus handle (no pipeline
/// lock) on the blocking pool, and explain calls read the engine on the blocking pool, at
/// most [`EXPLAIN_CONCURRENCY`] at once, answering 503 when they cannot have its locks in time.
#[derive(Clone)]
pub struct HttpState {
    pub prometheus: Option<PrometheusHandle>,
    pub status: Arc<Status>,
    pub token: Option<String>,
    /// One permit per explain read in flight.
    pub explain_permits: Arc<Semaphore>,
}

impl HttpState {
    pub fn new(
        prometheus: Option<PrometheusHandle>,
        status: Arc<Status>,
        token: Option<String>,
    ) -> Self {
        HttpState {
            prometheus,
            status,
            token,
            explain_permits: Arc::new(Semaphore::new(EXPLAIN_CONCURRENCY)),
        }
    }
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
    let Some(h) = s.prometheus.clone() else {
        return (StatusCode::NOT_FOUND, "metrics are not enabled\n").into_response();
    };
    // Rendering drains the histograms: off the server's thread, so it never delays a probe.
    match tokio::task::spawn_blocking(move || h.render()).await {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rendering metrics failed: {e}\n"),
        )
            .into_response(),
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

/// A 503 of the explain API: a JSON body saying why (`error`: `not_started`, `busy` or
/// `restoring`), what readiness waits for, and a `Retry-After`.
fn unavailable(status: &Status, error: &str, detail: &str) -> Response {
    let body = serde_json::json!({
        "error": error,
        "detail": detail,
        "readiness": status.describe(),
        "retry_after_seconds": RETRY_AFTER_SECONDS,
    });
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (header::RETRY_AFTER, RETRY_AFTER_SECONDS.to_string()),
        ],
        body.to_string(),
    )
        .into_response()
}

fn json_bytes(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Runs `read` on the blocking pool under an explain permit, answering within
/// [`EXPLAIN_TIMEOUT`]; `Err` is the 503 (or 500) to answer instead.
async fn explain_read<T: Send + 'static>(
    s: &HttpState,
    read: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Response> {
    let Ok(permit) = s.explain_permits.clone().try_acquire_owned() else {
        return Err(unavailable(
            &s.status,
            "busy",
            &format!("{EXPLAIN_CONCURRENCY} explain calls are already in flight"),
        ));
    };
    let task = tokio::task::spawn_blocking(move || {
        // Held until the read ends, even past the timeout: the bound is on reads, not calls.
        let _permit = permit;
        read()
    });
    match tokio::time::timeout(EXPLAIN_TIMEOUT, task).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err((
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the explain read failed: {e}\n"),
        )
            .into_response()),
        Err(_) => Err(unavailable(
            &s.status,
            "busy",
            &format!("the engine did not answer within {EXPLAIN_TIMEOUT:?}"),
        )),
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
    let status = s.status.clone();
    let (t, d) = (tenant.clone(), device.clone());
    let read = explain_read(&s, move || {
        let partitions = status.assigned();
        status.with_reader(|e, now| {
            e.try_explain_device(&t, &d, now, &partitions, EXPLAIN_PATIENCE)
                .map(|x| x.map(|x| serde_json::to_vec(&x)))
        })
    })
    .await;
    match read {
        Err(r) => r,
        Ok(None) => unavailable(&s.status, "not_started", "the pipeline has not started yet"),
        Ok(Some(Err(busy))) => unavailable(&s.status, "busy", &format!("engine busy: {busy}")),
        Ok(Some(Ok(Some(Ok(body))))) => json_bytes(body),
        Ok(Some(Ok(Some(Err(e))))) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the explanation failed: {e}\n"),
        )
            .into_response(),
        // While partitions are restored the device may just not be read yet.
        Ok(Some(Ok(None))) if !s.status.ready() => unavailable(
            &s.status,
            "restoring",
            &format!(
                "device {tenant}/{device} is not held (yet): this instance is not ready, its \
                 partition may still be restoring"
            ),
        ),
        Ok(Some(Ok(None))) => (
            StatusCode::NOT_FOUND,
            format!("device {tenant}/{device} is not held by this instance (unknown, or its partition is owned by another instance)\n"),
        )
            .into_response(),
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
    let status = s.status.clone();
    let read = explain_read(&s, move || {
        status.with_reader(|e, _| {
            e.try_explain_connectors(&tenant, EXPLAIN_PATIENCE)
                .map(|x| serde_json::to_vec(&x))
        })
    })
    .await;
    match read {
        Err(r) => r,
        Ok(None) => unavailable(&s.status, "not_started", "the pipeline has not started yet"),
        Ok(Some(Err(busy))) => unavailable(&s.status, "busy", &format!("engine busy: {busy}")),
        Ok(Some(Ok(Ok(body)))) => json_bytes(body),
        Ok(Some(Ok(Err(e)))) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the explanation failed: {e}\n"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Instant;

    use serde_json::Value;

    use super::*;
    use crate::config::Config;
    use crate::engine::explain::tests::engine_with_device;
    use crate::runtime::clock::SystemClock;

    /// GET `path`: (status, headers and body as text, how long it took).
    fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String, Duration) {
        let t = Instant::now();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let code = text.split(' ').nth(1).unwrap().parse().unwrap();
        (code, text, t.elapsed())
    }

    fn busy_json(text: &str) -> Value {
        let body = text.split_once("\r\n\r\n").unwrap().1;
        serde_json::from_str(body).unwrap()
    }

    #[test]
    fn explain_never_holds_up_the_server_and_says_why_it_cannot_answer() {
        let engine = engine_with_device();
        let status = Arc::new(Status::default());
        let mut cfg = Config::default();
        cfg.http.listen = "127.0.0.1:0".into();
        let addr = crate::service::start_http(&cfg, status.clone()).unwrap();
        let device = "/v1/tenants/acme/devices/d1";

        let (code, text, _) = get(addr, device);
        assert_eq!(code, 503, "{text}");
        assert_eq!(busy_json(&text)["error"], "not_started", "{text}");

        status.set_reader(Some(engine.reader()), Arc::new(SystemClock));
        status.set_assigned(vec![1, 0]);
        status.set_tables_loaded(true);
        status.set_restoring(true);
        // Not ready: a device not held may still be restoring.
        let (code, text, _) = get(addr, "/v1/tenants/acme/devices/later");
        assert_eq!(code, 503, "{text}");
        assert_eq!(busy_json(&text)["error"], "restoring", "{text}");
        assert!(text.contains("\r\nretry-after: 1\r\n"), "{text}");
        status.set_restoring(false);
        status.set_restored(true);
        let (code, text, _) = get(addr, "/v1/tenants/acme/devices/later");
        assert_eq!(code, 404, "{text}");
        let (code, text, _) = get(addr, device);
        assert_eq!(code, 200, "{text}");
        assert!(text.contains("\"device_id\":\"d1\""), "{text}");

        // The device's shard is being written throughout: busy, and the server goes on.
        let shard = engine.shards().get_mut(&0).unwrap();
        std::thread::scope(|s| {
            let waiting = s.spawn(|| get(addr, device));
            std::thread::sleep(Duration::from_millis(200));
            for path in ["/healthz", "/readyz", "/metrics"] {
                let (code, text, took) = get(addr, path);
                assert!(code == 200 || path == "/metrics", "{path}: {text}");
                assert!(took < Duration::from_millis(100), "{path}: {took:?}");
            }
            let (code, text, took) = waiting.join().unwrap();
            assert_eq!(code, 503, "{text}");
            assert_eq!(busy_json(&text)["error"], "busy", "{text}");
            assert!(text.contains("\r\nretry-after: 1\r\n"), "{text}");
            assert!(
                took >= EXPLAIN_PATIENCE && took < EXPLAIN_TIMEOUT,
                "{took:?}"
            );
        });

        // At most EXPLAIN_CONCURRENCY reads at once; the next call is told so at once. Reads
        // still waiting when the shard is free answer.
        std::thread::scope(|s| {
            let waiting: Vec<_> = (0..EXPLAIN_CONCURRENCY)
                .map(|_| s.spawn(|| get(addr, device)))
                .collect();
            std::thread::sleep(Duration::from_millis(300));
            let (code, text, took) = get(addr, "/v1/tenants/acme/connectors");
            assert_eq!(code, 503, "{text}");
            assert!(text.contains("already in flight"), "{text}");
            assert!(took < Duration::from_millis(100), "{took:?}");
            drop(shard);
            for w in waiting {
                let (code, text, _) = w.join().unwrap();
                assert_eq!(code, 200, "{text}");
            }
        });
        let (code, text, _) = get(addr, "/v1/tenants/acme/connectors");
        assert_eq!(code, 200, "{text}");
    }
}
