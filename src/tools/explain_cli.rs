//! `mtdgate explain`: asks a running instance's explain API why a device has its verdict, or
//! where a tenant's connectors stand, and prints the answer as short tables.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;

use mtdgate::runtime::clock::{Clock, SystemClock};

/// `mtdgate explain` options.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Examples:\n  mtdgate explain acme d1\n  mtdgate explain acme --connectors --url http://mtdgate:9464"
)]
pub struct ExplainArgs {
    /// Tenant id.
    pub tenant: String,
    /// Device id (omit with --connectors).
    pub device: Option<String>,
    /// Show the tenant's connectors: status, heartbeat and deadlines.
    #[arg(long)]
    pub connectors: bool,
    /// Base URL of the instance's HTTP listener.
    #[arg(long, default_value = "http://127.0.0.1:9464")]
    pub url: String,
    /// Bearer token of the explain API (http.explain_token).
    #[arg(long, env = "MTDGATE_HTTP__EXPLAIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// Why the explain API gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("cannot reach mtdgate at {url}: {detail} (is `mtdgate run` serving http.listen there? set --url)")]
    Unreachable { url: String, detail: String },
    #[error("401 unauthorized: the explain API needs a valid bearer token (--token or MTDGATE_HTTP__EXPLAIN_TOKEN){}", if *.given { "; the one given was refused" } else { "" })]
    Unauthorized { given: bool },
    #[error("404 not found: {0}")]
    NotFound(String),
    #[error("503 not ready: {0}")]
    Unavailable(String),
    #[error("HTTP {status} from {url}: {body}")]
    Status {
        status: u16,
        url: String,
        body: String,
    },
    #[error("unexpected answer from {url}: {detail}")]
    Invalid { url: String, detail: String },
    #[error("{0}")]
    Usage(String),
}

/// Percent-encodes one path segment.
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// GETs `path` from the instance at `base` and parses the JSON answer.
pub fn get(base: &str, path: &str, token: Option<&str>) -> Result<Value, ExplainError> {
    let base = base.trim_end_matches('/');
    let base = if base.contains("://") {
        base.to_owned()
    } else {
        format!("http://{base}")
    };
    let url = format!("{base}{path}");
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .build();
    let mut req = agent.get(&url);
    if let Some(t) = token.filter(|t| !t.is_empty()) {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    match req.call() {
        Ok(resp) => {
            let text = resp.into_string().map_err(|e| ExplainError::Invalid {
                url: url.clone(),
                detail: e.to_string(),
            })?;
            serde_json::from_str(&text).map_err(|e| ExplainError::Invalid {
                url,
                detail: format!("not JSON ({e})"),
            })
        }
        Err(ureq::Error::Status(status, resp)) => {
            let body = resp.into_string().unwrap_or_default().trim().to_owned();
            Err(match status {
                401 => ExplainError::Unauthorized {
                    given: token.is_some_and(|t| !t.is_empty()),
                },
                404 => ExplainError::NotFound(if body.is_empty() {
                    format!("{url} (is this an mtdgate explain API?)")
                } else {
                    body
                }),
                503 => ExplainError::Unavailable(body),
                _ => ExplainError::Status { status, url, body },
            })
        }
        Err(ureq::Error::Transport(t)) => {
            let detail = match t.kind() {
                ureq::ErrorKind::ConnectionFailed => {
                    let inner = std::error::Error::source(&t)
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| t.to_string());
                    format!("connection failed ({inner})")
                }
                ureq::ErrorKind::Dns => "host not found".to_owned(),
                ureq::ErrorKind::Io => format!("no answer ({t})"),
                _ => t.to_string(),
            };
            Err(ExplainError::Unreachable { url: base, detail })
        }
    }
}

/// Runs the command; returns the text to print.
pub fn run(args: &ExplainArgs) -> Result<String, ExplainError> {
    if args.device.is_none() && !args.connectors {
        return Err(ExplainError::Usage(
            "give a DEVICE to explain, or --connectors for the tenant's connectors".into(),
        ));
    }
    let token = args.token.as_deref();
    let mut out = String::new();
    let now = SystemClock.now_ms();
    if let Some(device) = &args.device {
        let path = format!(
            "/v1/tenants/{}/devices/{}",
            segment(&args.tenant),
            segment(device)
        );
        let v = get(&args.url, &path, token)?;
        if args.json {
            out.push_str(&serde_json::to_string_pretty(&v).unwrap_or_default());
            out.push('\n');
        } else {
            out.push_str(&render_device(&v));
        }
    }
    if args.connectors {
        if !out.is_empty() {
            out.push('\n');
        }
        let path = format!("/v1/tenants/{}/connectors", segment(&args.tenant));
        let v = get(&args.url, &path, token)?;
        if args.json {
            out.push_str(&serde_json::to_string_pretty(&v).unwrap_or_default());
            out.push('\n');
        } else {
            out.push_str(&render_connectors(&args.tenant, &v, now));
        }
    }
    Ok(out)
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn yes_no(v: &Value) -> &'static str {
    if v.as_bool().unwrap_or(false) {
        "yes"
    } else {
        "no"
    }
}

/// A table with columns as wide as their widest cell; the last column is not padded.
fn table(out: &mut String, indent: &str, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = String>| {
        out.push_str(indent);
        let cells: Vec<String> = cells.collect();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                let pad = widths[i] - c.chars().count();
                out.push_str(c);
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push('\n');
    };
    line(out, &mut header.iter().map(|h| h.to_string()));
    for r in rows {
        line(out, &mut r.iter().cloned());
    }
}

/// `2025-03-04 05:06:07 UTC` of epoch milliseconds.
pub fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `3s`, `5m 2s`, `4h 10m`, `2d 3h`.
pub fn span(ms: i64) -> String {
    let s = ms.unsigned_abs() / 1000;
    let (d, h, m, sec) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {sec}s")
    } else if ms.unsigned_abs() < 1000 {
        format!("{}ms", ms.unsigned_abs())
    } else {
        format!("{sec}s")
    }
}

/// `in 5m 2s` or `3s ago` for a moment relative to `now`.
pub fn relative(at: i64, now: i64) -> String {
    if at >= now {
        format!("in {}", span(at - now))
    } else {
        format!("{} ago", span(now - at))
    }
}

fn moment(v: &Value, now: i64) -> String {
    match v.as_i64() {
        Some(ms) => format!("{} ({})", utc(ms), relative(ms, now)),
        None => "-".to_owned(),
    }
}

/// Renders a device explanation.
pub fn render_device(v: &Value) -> String {
    let mut out = String::new();
    let mdm = v["management"].as_str() == Some("MDM");
    let _ = writeln!(
        out,
        "device {}/{}  (partition {})",
        s(&v["tenant_id"]),
        s(&v["device_id"]),
        s(&v["partition"])
    );
    let _ = writeln!(
        out,
        "  platform      {}, {}{}, OS {}",
        s(&v["platform"]),
        s(&v["management"]),
        if v["enrolled"].as_bool().unwrap_or(false) {
            " (enrolled)"
        } else {
            " (not enrolled)"
        },
        s(&v["os_version"]),
    );
    let d = &v["decision"];
    if mdm {
        let _ = writeln!(
            out,
            "  compliance    {}   (rules now: {}, worst level {})",
            s(&v["compliance"]),
            s(&d["state"]),
            s(&d["worst_level"]),
        );
    } else {
        let _ = writeln!(
            out,
            "  app access    {}{}",
            if v["mam_blocked"].as_bool().unwrap_or(false) {
                "BLOCKED"
            } else {
                "allowed"
            },
            if v["mam_wipe_incident"].as_bool().unwrap_or(false) {
                ", wiped for the current incident"
            } else {
                ""
            }
        );
    }
    let partners = v["partners"].as_array().cloned().unwrap_or_default();
    out.push('\n');
    if partners.is_empty() {
        out.push_str("  no partner has reported this device\n");
    } else {
        let rows: Vec<Vec<String>> = partners
            .iter()
            .map(|p| {
                vec![
                    s(&p["partner_id"]),
                    s(&p["health_state"]),
                    s(&p["level"]),
                    p["observed_at"]
                        .as_i64()
                        .map(utc)
                        .unwrap_or_else(|| "-".into()),
                    p["age_ms"]
                        .as_i64()
                        .map(|a| format!("{} ago", span(a)))
                        .unwrap_or_else(|| "-".into()),
                    yes_no(&p["counts"]).to_owned(),
                    s(&p["why"]),
                ]
            })
            .collect();
        table(
            &mut out,
            "  ",
            &[
                "PARTNER", "STATE", "LEVEL", "OBSERVED", "AGE", "COUNTS", "WHY",
            ],
            &rows,
        );
    }
    let reasons = d["reasons"].as_array().cloned().unwrap_or_default();
    let policies = d["app_protection_policies"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if mdm {
        out.push('\n');
        if reasons.is_empty() {
            let _ = writeln!(
                out,
                "  decision: {} with no reasons against it",
                s(&d["state"])
            );
        } else {
            out.push_str("  decision reasons\n");
            let rows: Vec<Vec<String>> = reasons
                .iter()
                .map(|r| vec![s(&r["partner_id"]), s(&r["code"]), s(&r["detail"])])
                .collect();
            table(&mut out, "    ", &["PARTNER", "CODE", "DETAIL"], &rows);
        }
    } else {
        out.push('\n');
        if policies.is_empty() {
            out.push_str("  no app protection policy applies\n");
        } else {
            out.push_str("  app protection policies\n");
            for p in &policies {
                let _ = writeln!(out, "    {}", s(p));
            }
        }
    }
    out
}

fn settings_summary(c: &Value) -> String {
    if c.is_null() {
        return "no settings".into();
    }
    let on = |f: &str| c[f].as_bool().unwrap_or(false);
    let mut parts = Vec::new();
    if !on("provisioned") {
        parts.push("not provisioned".to_owned());
    } else if !on("setup_complete") {
        parts.push("setup incomplete".to_owned());
    }
    let list = |suffix: &str, platforms: &[&str]| {
        platforms
            .iter()
            .filter(|p| on(&format!("{p}{suffix}")))
            .copied()
            .collect::<Vec<_>>()
            .join(",")
    };
    let compliance = list("_enabled", &["android", "ios", "windows", "macos"]);
    if !compliance.is_empty() {
        parts.push(format!("compliance: {compliance}"));
    }
    let mam = list("_mam_enabled", &["android", "ios", "windows"]);
    if !mam.is_empty() {
        parts.push(format!("app protection: {mam}"));
    }
    let missing = list(
        "_blocked_on_missing_data",
        &["android", "ios", "windows", "macos"],
    );
    if !missing.is_empty() {
        parts.push(format!("blocked on missing data: {missing}"));
    }
    if on("ios_app_sync") {
        parts.push(if on("ios_app_sync_personal_full") {
            "App Sync (personal: full)".to_owned()
        } else {
            "App Sync".to_owned()
        });
    }
    if on("unsupported_os_blocked") {
        parts.push("unsupported OS blocked".to_owned());
    }
    if let (Some(t), Some(d)) = (
        c["heartbeat_timeout_seconds"].as_i64(),
        c["unresponsive_threshold_days"].as_i64(),
    ) {
        parts.push(format!("timeout {}, ignore after {d}d", span(t * 1000)));
    }
    parts.join("; ")
}

/// Renders a tenant's connectors.
pub fn render_connectors(tenant: &str, v: &Value, now: i64) -> String {
    let mut out = String::new();
    let list = v.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        let _ = writeln!(out, "tenant {tenant} has no connectors on this instance");
        return out;
    }
    let _ = writeln!(out, "connectors of tenant {tenant} ({})", list.len());
    let mut rows: Vec<Vec<String>> = list
        .iter()
        .map(|c| {
            let error = c["error_code"].as_i64().unwrap_or(0);
            vec![
                s(&c["partner_id"]),
                s(&c["status"]),
                if c["compliance_ignored"].as_bool().unwrap_or(false) {
                    "IGNORED".into()
                } else {
                    "used".into()
                },
                c["last_heartbeat_at"]
                    .as_i64()
                    .map(|t| relative(t, now))
                    .unwrap_or_else(|| "never".into()),
                moment(&c["unresponsive_at"], now),
                moment(&c["ignored_at"], now),
                if error == 0 {
                    "-".into()
                } else {
                    error.to_string()
                },
                settings_summary(&c["settings"]),
            ]
        })
        .collect();
    rows.sort();
    table(
        &mut out,
        "  ",
        &[
            "PARTNER",
            "STATUS",
            "DATA",
            "HEARTBEAT",
            "UNRESPONSIVE AT",
            "IGNORED AT",
            "ERROR",
            "SETTINGS",
        ],
        &rows,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_well() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_709_528_767_000), "2024-03-04 05:06:07 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(relative(10_000, 7_000), "in 3s");
        assert_eq!(relative(0, 125_000), "2m 5s ago");
        assert_eq!(span(90_061_000), "1d 1h");
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn device_renders_as_a_table() {
        let v = serde_json::json!({
            "tenant_id": "acme", "device_id": "d1", "partition": 2, "platform": "IOS",
            "management": "MDM", "enrolled": true, "os_version": "17.4",
            "compliance": "NONCOMPLIANT", "mam_blocked": false, "mam_wipe_incident": false,
            "partners": [{"partner_id": "lookout", "health_state": "HIGH", "level": "HIGH",
                "observed_at": 1_000, "age_ms": 4_000, "counts": true, "why": "counts"}],
            "decision": {"state": "NONCOMPLIANT", "worst_level": "HIGH",
                "reasons": [{"partner_id": "lookout", "code": "LEVEL_EXCEEDS_POLICY", "detail": "HIGH above MEDIUM"}],
                "app_protection_policies": []}
        });
        let text = render_device(&v);
        assert!(text.contains("compliance    NONCOMPLIANT"), "{text}");
        assert!(text.contains("LEVEL_EXCEEDS_POLICY"), "{text}");
        assert!(text.contains("4s ago"), "{text}");
    }
}
