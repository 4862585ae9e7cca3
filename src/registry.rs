//! A client of a Confluent-compatible schema registry (Confluent Schema Registry, Apicurio's
//! `/apis/ccompat/v7`, Karapace, Redpanda): writer schemas by id for Confluent-framed inputs
//! (`GET /schemas/ids/{id}`), and the ids of mtdgate's output schemas under `<topic>-value`
//! (`POST /subjects/{subject}/versions` to register, `POST /subjects/{subject}` to look up).
//!
//! Two kinds of failure are kept apart, because only one of them says anything about a
//! record: the registry *answered* that an id is not registered (the record is
//! `UNKNOWN_SCHEMA`), or it *did not answer* (unreachable, timed out, a 5xx, 401, 403 or 429):
//! then processing waits and asks again, and a good record is never rejected for the
//! registry's sake. While it does not answer, the next request waits for a backoff that doubles
//! up to `max_backoff_ms`, so a stream of records costs one attempt per backoff, not one each.
//!
//! A small client over `ureq` (already the explain CLI's) rather than a registry crate: the
//! crates on crates.io bring their own async HTTP stack and Avro library, where mtdgate needs
//! three requests and already decodes Avro itself (`codec`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use apache_avro::Schema;
use base64::Engine as _;
use serde::Deserialize;
use tracing::{info, warn};

use crate::codec::{ResolveError, SchemaResolver};
use crate::config::SchemaRegistryConfig;
use crate::telemetry::{self, RegistryResult};

/// How long an id the registry said it does not know is answered from memory.
const MISS_TTL: Duration = Duration::from_secs(30);
/// Most remembered misses (a stream of garbage ids must not grow memory).
const MAX_MISSES: usize = 10_000;
/// First wait after a failed request.
const MIN_BACKOFF: Duration = Duration::from_millis(250);

/// Why a registry request gave no answer to use.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// No answer: worth retrying.
    #[error("schema registry {url} cannot be reached: {detail}")]
    Unreachable { url: String, detail: String },
    /// An answer that retrying will not change (bad credentials are reported as unreachable
    /// on reads, which wait, but here at start they stop the service with this message).
    #[error("schema registry {url} refused {what}: HTTP {status}: {message}")]
    Refused {
        url: String,
        what: String,
        status: u16,
        message: String,
    },
}

/// The registry client; shared by every pipeline of the service (its state survives restarts).
pub struct Registry {
    agent: ureq::Agent,
    /// Base URL without a trailing slash.
    base: String,
    /// The URL with any credentials removed, for messages.
    shown: String,
    authorization: Option<String>,
    max_backoff: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// No request before this instant (the registry did not answer the last one).
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Why the last request failed, for the errors returned meanwhile.
    last_error: String,
    /// Failed requests in a row (the outage is logged on the first and then sparsely).
    failures: u64,
    /// Ids the registry answered it does not know, and when.
    misses: HashMap<u32, Instant>,
}

#[derive(Deserialize)]
struct SchemaById {
    schema: String,
    #[serde(rename = "schemaType", default)]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct IdAnswer {
    id: u32,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    #[serde(default)]
    error_code: Option<i64>,
    #[serde(default)]
    message: Option<String>,
}

/// What one request came back with.
enum Answer {
    Ok(String),
    /// HTTP 404: not registered.
    NotFound(String),
    /// Any other status.
    Status(u16, String),
}

impl Registry {
    /// A client for `cfg` (which must have a URL); reads the TLS files now, so a wrong path is
    /// reported at start.
    pub fn new(cfg: &SchemaRegistryConfig) -> anyhow::Result<Registry> {
        let raw = cfg.url.trim().trim_end_matches('/');
        // Credentials in the URL (`https://user:pass@host`) become basic auth.
        let (base, url_auth) = split_credentials(raw);
        let shown = base.clone();
        let mut tls = native_tls::TlsConnector::builder();
        if let Some(ca) = &cfg.ca_location {
            let pem = std::fs::read(ca)
                .with_context(|| format!("schema_registry.ca_location {ca}: cannot read"))?;
            let cert = native_tls::Certificate::from_pem(&pem).with_context(|| {
                format!("schema_registry.ca_location {ca}: not a PEM certificate")
            })?;
            tls.add_root_certificate(cert);
        }
        if let (Some(cert), Some(key)) = (&cfg.certificate_location, &cfg.key_location) {
            let c = std::fs::read(cert).with_context(|| {
                format!("schema_registry.certificate_location {cert}: cannot read")
            })?;
            let k = std::fs::read(key)
                .with_context(|| format!("schema_registry.key_location {key}: cannot read"))?;
            let identity = native_tls::Identity::from_pkcs8(&c, &k).with_context(|| {
                format!(
                    "schema_registry.certificate_location {cert} / key_location {key}: \
                     need a PEM certificate and a PEM PKCS#8 key"
                )
            })?;
            tls.identity(identity);
        }
        let tls = tls.build().context("schema registry TLS set-up")?;
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_millis(cfg.connect_timeout_ms))
            .timeout(Duration::from_millis(cfg.request_timeout_ms))
            .tls_connector(Arc::new(tls))
            .user_agent(concat!("mtdgate/", env!("CARGO_PKG_VERSION")))
            .build();
        let auth = match (&cfg.username, &cfg.password) {
            (Some(u), p) => Some((u.clone(), p.clone().unwrap_or_default())),
            (None, _) => url_auth,
        };
        let authorization = auth.map(|(u, p)| {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            format!("Basic {token}")
        });
        Ok(Registry {
            agent,
            base,
            shown,
            authorization,
            max_backoff: Duration::from_millis(cfg.max_backoff_ms.max(1)),
            state: Mutex::new(State::default()),
        })
    }

    /// The registry's URL without credentials.
    pub fn url(&self) -> &str {
        &self.shown
    }

    /// When the registry may be asked again, if it is waited for now.
    pub fn retry_at(&self) -> Option<Instant> {
        self.lock().retry_at.filter(|t| *t > Instant::now())
    }

    /// The id of `schema` under `subject`: registered there when `register`, else looked up.
    pub fn subject_id(
        &self,
        subject: &str,
        schema: &str,
        register: bool,
    ) -> Result<u32, RegistryError> {
        let body = serde_json::json!({ "schema": schema }).to_string();
        let (path, what) = if register {
            (
                format!("/subjects/{subject}/versions"),
                format!("to register the schema under {subject}"),
            )
        } else {
            (
                format!("/subjects/{subject}"),
                format!("the schema under {subject}"),
            )
        };
        match self.request(&path, Some(&body))? {
            Answer::Ok(text) => serde_json::from_str::<IdAnswer>(&text)
                .map(|a| a.id)
                .map_err(|e| self.unreachable(format!("unexpected answer to {path}: {e}"))),
            Answer::NotFound(text) => Err(RegistryError::Refused {
                url: self.shown.clone(),
                what: if register {
                    what
                } else {
                    format!(
                        "{what} (it is not registered there and \
                         schema_registry.auto_register is off)"
                    )
                },
                status: 404,
                message: error_message(&text),
            }),
            Answer::Status(status, text) => Err(RegistryError::Refused {
                url: self.shown.clone(),
                what,
                status,
                message: error_message(&text),
            }),
        }
    }

    /// The schema registered under `id`: `Ok(None)` when the registry says there is none.
    pub fn schema_by_id(&self, id: u32) -> Result<Option<Arc<Schema>>, ResolveError> {
        {
            let mut st = self.lock();
            if let Some(at) = st.misses.get(&id) {
                if at.elapsed() < MISS_TTL {
                    return Ok(None);
                }
                st.misses.remove(&id);
            }
        }
        let path = format!("/schemas/ids/{id}");
        let text = match self.request(&path, None) {
            Ok(Answer::Ok(text)) => text,
            Ok(Answer::NotFound(_)) => {
                let mut st = self.lock();
                if st.misses.len() >= MAX_MISSES {
                    st.misses.retain(|_, at| at.elapsed() < MISS_TTL);
                    if st.misses.len() >= MAX_MISSES {
                        st.misses.clear();
                    }
                }
                st.misses.insert(id, Instant::now());
                return Ok(None);
            }
            // A refusal of a read (401, 403, 429, 5xx) is the registry's or the
            // operator's problem, never the record's: wait.
            Ok(Answer::Status(status, text)) => {
                let e = self.unreachable(format!("HTTP {status}: {}", error_message(&text)));
                return Err(ResolveError::Unavailable(e.to_string()));
            }
            Err(e) => return Err(ResolveError::Unavailable(e.to_string())),
        };
        let answer: SchemaById = serde_json::from_str(&text).map_err(|e| {
            ResolveError::Unusable(format!("the registry's answer for id {id}: {e}"))
        })?;
        if let Some(t) = answer.schema_type.as_deref().filter(|t| *t != "AVRO") {
            return Err(ResolveError::Unusable(format!(
                "schema id {id} is a {t} schema, not Avro"
            )));
        }
        if !answer.references.is_empty() {
            return Err(ResolveError::Unusable(format!(
                "schema id {id} uses schema references, which mtdgate does not follow"
            )));
        }
        Schema::parse_str(&answer.schema)
            .map(|s| Some(Arc::new(s)))
            .map_err(|e| ResolveError::Unusable(format!("schema id {id}: {e}")))
    }

    /// One request; `Err` when the registry did not answer (or is being waited for).
    fn request(&self, path: &str, body: Option<&str>) -> Result<Answer, RegistryError> {
        if let Some(at) = self.retry_at() {
            let st = self.lock();
            return Err(RegistryError::Unreachable {
                url: self.shown.clone(),
                detail: format!(
                    "{} (next attempt in {} ms)",
                    st.last_error,
                    at.saturating_duration_since(Instant::now()).as_millis()
                ),
            });
        }
        let url = format!("{}{path}", self.base);
        let mut req = match body {
            Some(_) => self.agent.post(&url),
            None => self.agent.get(&url),
        }
        .set(
            "Accept",
            "application/vnd.schemaregistry.v1+json, application/json",
        );
        if let Some(a) = &self.authorization {
            req = req.set("Authorization", a);
        }
        let result = match body {
            Some(b) => req
                .set("Content-Type", "application/vnd.schemaregistry.v1+json")
                .send_string(b),
            None => req.call(),
        };
        let answer = match result {
            Ok(resp) => resp
                .into_string()
                .map(Answer::Ok)
                .map_err(|e| self.unreachable(format!("reading the answer to {path}: {e}")))?,
            Err(ureq::Error::Status(404, resp)) => {
                Answer::NotFound(resp.into_string().unwrap_or_default())
            }
            Err(ureq::Error::Status(status, resp)) => {
                let text = resp.into_string().unwrap_or_default();
                if status >= 500 || status == 429 || status == 401 || status == 403 {
                    // Counted and backed off like no answer; the caller decides what it means.
                    self.failed(format!("HTTP {status}: {}", error_message(&text)));
                    return Ok(Answer::Status(status, text));
                }
                Answer::Status(status, text)
            }
            Err(ureq::Error::Transport(t)) => return Err(self.unreachable(transport(&t))),
        };
        self.answered();
        Ok(answer)
    }

    /// Records a failed request and returns it as an error.
    fn unreachable(&self, detail: String) -> RegistryError {
        self.failed(detail.clone());
        RegistryError::Unreachable {
            url: self.shown.clone(),
            detail,
        }
    }

    fn failed(&self, detail: String) {
        telemetry::schema_registry_request(RegistryResult::Error);
        let mut st = self.lock();
        st.backoff = (st.backoff * 2).clamp(MIN_BACKOFF, self.max_backoff);
        st.retry_at = Some(Instant::now() + st.backoff);
        st.failures += 1;
        // The first failure, then every 20th (about every three minutes at a 10 s backoff).
        if st.failures == 1 || st.failures % 20 == 0 {
            warn!(
                registry = %self.shown,
                error = %detail,
                failures = st.failures,
                retry_in_ms = st.backoff.as_millis() as u64,
                "schema registry not answering: records that need it wait (none is rejected)"
            );
        }
        st.last_error = detail;
    }

    fn answered(&self) {
        let mut st = self.lock();
        if st.failures > 0 {
            info!(registry = %self.shown, failures = st.failures, "schema registry answers again");
        }
        st.failures = 0;
        st.backoff = Duration::ZERO;
        st.retry_at = None;
        drop(st);
        telemetry::schema_registry_request(RegistryResult::Ok);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl SchemaResolver for Registry {
    fn resolve(&self, id: u32) -> Result<Option<Arc<Schema>>, ResolveError> {
        let r = self.schema_by_id(id);
        if matches!(r, Ok(None)) {
            telemetry::schema_registry_request(RegistryResult::NotFound);
        }
        r
    }
}

/// `scheme://user:pass@host/...` -> (`scheme://host/...`, Some((user, pass))).
fn split_credentials(url: &str) -> (String, Option<(String, String)>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_owned(), None);
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((creds, host)) => {
            let (u, p) = creds.split_once(':').unwrap_or((creds, ""));
            let url = format!("{scheme}://{host}{}", &rest[authority_end..]);
            (url, Some((u.to_owned(), p.to_owned())))
        }
        None => (url.to_owned(), None),
    }
}

/// The registry's error message (`{"error_code": 40403, "message": "..."}`), or the text.
fn error_message(text: &str) -> String {
    match serde_json::from_str::<ErrorAnswer>(text) {
        Ok(ErrorAnswer {
            error_code: Some(code),
            message: Some(m),
        }) => format!("{m} (error code {code})"),
        Ok(ErrorAnswer {
            message: Some(m), ..
        }) => m,
        _ => text.chars().take(300).collect(),
    }
}

fn transport(t: &ureq::Transport) -> String {
    let what = match t.kind() {
        ureq::ErrorKind::ConnectionFailed => "connection failed",
        ureq::ErrorKind::Dns => "host not found",
        ureq::ErrorKind::Io => "I/O error or timeout",
        ureq::ErrorKind::InvalidUrl => "invalid URL",
        _ => "transport error",
    };
    match t.message() {
        Some(m) => format!("{what}: {m}"),
        None => match std::error::Error::source(t) {
            Some(s) => format!("{what}: {s}"),
            None => what.to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_the_url_become_basic_auth() {
        assert_eq!(
            split_credentials("https://u:p%40ss@reg.example:8081/apis/ccompat/v7"),
            (
                "https://reg.example:8081/apis/ccompat/v7".to_owned(),
                Some(("u".to_owned(), "p%40ss".to_owned()))
            )
        );
        assert_eq!(
            split_credentials("http://reg:8081/a@b"),
            ("http://reg:8081/a@b".to_owned(), None)
        );
    }

    #[test]
    fn registry_error_bodies_are_shown_briefly() {
        assert_eq!(
            error_message(r#"{"error_code":40403,"message":"Schema not found"}"#),
            "Schema not found (error code 40403)"
        );
        assert_eq!(error_message("plain"), "plain");
    }

    #[test]
    fn an_unreachable_registry_is_waited_for_not_asked_each_time() {
        let cfg = SchemaRegistryConfig {
            // A port nothing listens on: connection refused at once.
            url: "http://127.0.0.1:9".into(),
            connect_timeout_ms: 500,
            ..SchemaRegistryConfig::default()
        };
        let r = Registry::new(&cfg).unwrap();
        let first = r.schema_by_id(1).unwrap_err();
        assert!(matches!(first, ResolveError::Unavailable(_)), "{first:?}");
        assert!(r.retry_at().is_some());
        // Within the backoff no request is made: the error says when the next one is.
        match r.schema_by_id(2).unwrap_err() {
            ResolveError::Unavailable(m) => assert!(m.contains("next attempt"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
