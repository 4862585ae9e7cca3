//! `mtdgate explain`: asks a running instance's explain API why a device has its verdict, or
//! where a tenant's connectors stand, and prints the answer as short tables. The answers are
//! read into the very types the API serialises ([`mtdgate::engine::explain`]).

use std::fmt::Write as _;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use mtdgate::engine::explain::{
    ConnectorExplanation, DeadlineKind, DeviceExplanation, PartnerCeiling, Scope,
};
use mtdgate::model::{ConnectorConfig, Management, Platform, PolicyKind, Threat};
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

/// GETs `path` from the instance at `base` and reads the JSON answer as a `T`.
pub fn get<T: DeserializeOwned>(
    base: &str,
    path: &str,
    token: Option<&str>,
) -> Result<T, ExplainError> {
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
                detail: format!("not an explanation of this mtdgate version ({e})"),
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
        let d: DeviceExplanation = get(&args.url, &path, token)?;
        out.push_str(&if args.json {
            json(&d)
        } else {
            render_device(&d, now)
        });
    }
    if args.connectors {
        if !out.is_empty() {
            out.push('\n');
        }
        let path = format!("/v1/tenants/{}/connectors", segment(&args.tenant));
        let c: Vec<ConnectorExplanation> = get(&args.url, &path, token)?;
        out.push_str(&if args.json {
            json(&c)
        } else {
            render_connectors(&args.tenant, &c, now)
        });
    }
    Ok(out)
}

/// Pretty JSON of an answer, as the API serialises it.
fn json<T: Serialize>(v: &T) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

/// The text of an optional value, `-` for none.
fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn yes_no(v: bool) -> &'static str {
    if v {
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

fn moment(at: Option<i64>, now: i64) -> String {
    match at {
        Some(ms) => format!("{} ({})", utc(ms), relative(ms, now)),
        None => "-".to_owned(),
    }
}

/// Renders a device explanation; deadlines are shown relative to `now`.
pub fn render_device(d: &DeviceExplanation, now: i64) -> String {
    let mut out = String::new();
    let mdm = d.management == Management::Mdm;
    let _ = writeln!(
        out,
        "device {}/{}  (partition {})",
        d.tenant_id, d.device_id, d.partition
    );
    let _ = writeln!(
        out,
        "  platform      {}, {}{}, OS {}",
        d.platform,
        d.management,
        if d.enrolled {
            " (enrolled)"
        } else {
            " (not enrolled)"
        },
        or_dash(d.os_version.as_deref()),
    );
    let _ = writeln!(out, "  user          {}", user_line(d));
    let decision = &d.decision;
    if mdm {
        let _ = writeln!(
            out,
            "  compliance    {}   (rules now: {}, worst level {})",
            d.compliance,
            or_dash(decision.state),
            or_dash(decision.worst_level),
        );
        if decision.grace_ends_at.is_some() {
            let _ = writeln!(
                out,
                "  grace ends    {}",
                moment(decision.grace_ends_at, now)
            );
        }
    } else {
        let _ = writeln!(
            out,
            "  app access    {}{}",
            if d.mam_blocked { "BLOCKED" } else { "allowed" },
            if d.mam_wipe_incident {
                ", wiped for the current incident"
            } else {
                ""
            }
        );
    }
    out.push('\n');
    if d.partners.is_empty() {
        out.push_str("  no partner has reported this device\n");
    } else {
        let rows: Vec<Vec<String>> = d
            .partners
            .iter()
            .map(|p| {
                vec![
                    p.partner_id.clone(),
                    p.health_state.to_string(),
                    or_dash(p.level),
                    utc(p.observed_at),
                    format!("{} ago", span(p.age_ms)),
                    yes_no(p.counts).to_owned(),
                    p.why.clone(),
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
        let threats: Vec<Vec<String>> = d
            .partners
            .iter()
            .flat_map(|p| {
                p.threats.iter().map(|t| {
                    vec![
                        p.partner_id.clone(),
                        t.severity.to_string(),
                        t.category.clone(),
                        t.name.clone(),
                    ]
                })
            })
            .collect();
        if !threats.is_empty() {
            out.push_str("\n  threats (worst first, of each partner's latest report)\n");
            table(
                &mut out,
                "    ",
                &["PARTNER", "SEVERITY", "CATEGORY", "NAME"],
                &threats,
            );
        }
    }
    out.push('\n');
    render_policies(&mut out, d);
    out.push('\n');
    render_deadlines(&mut out, d, now);
    if mdm {
        if decision.reasons.is_empty() {
            let _ = writeln!(
                out,
                "  decision: {} with no reasons against it",
                or_dash(decision.state)
            );
        } else {
            out.push_str("  decision reasons\n");
            // A reason's threats follow it, one line each, under its detail.
            let rows: Vec<Vec<String>> = decision
                .reasons
                .iter()
                .flat_map(|r| {
                    std::iter::once(vec![
                        r.partner_id.clone(),
                        r.code.to_string(),
                        r.detail.clone(),
                    ])
                    .chain(r.threats.iter().map(|t| {
                        vec![
                            String::new(),
                            String::new(),
                            format!("threat {}", threat(t)),
                        ]
                    }))
                })
                .collect();
            table(&mut out, "    ", &["PARTNER", "CODE", "DETAIL"], &rows);
        }
    } else if decision.app_protection_policies.is_empty() {
        out.push_str("  decision: no app protection policy applies\n");
    } else {
        out.push_str("  decision: app protection policies in force\n");
        for p in &decision.app_protection_policies {
            let _ = writeln!(out, "    {p}");
        }
    }
    out
}

/// The device's pending deadlines, earliest first (nothing when it has none).
fn render_deadlines(out: &mut String, d: &DeviceExplanation, now: i64) {
    if d.deadlines.is_empty() {
        return;
    }
    let _ = writeln!(out, "  deadlines ({}, earliest first)", d.deadlines.len());
    let rows: Vec<Vec<String>> = d
        .deadlines
        .iter()
        .map(|e| {
            vec![
                match e.kind {
                    DeadlineKind::GraceEnd => "GRACE_END",
                    DeadlineKind::ReportExpiry => "REPORT_EXPIRY",
                }
                .to_owned(),
                moment(Some(e.at), now),
                match (&e.policy_id, &e.partner_id) {
                    (Some(p), Some(q)) => format!("policy {p}, partner {q}"),
                    (Some(p), None) => format!("policy {p}"),
                    (None, Some(q)) => format!("partner {q}"),
                    (None, None) => "-".to_owned(),
                },
                e.then.clone(),
            ]
        })
        .collect();
    table(
        out,
        "    ",
        &["KIND", "AT", "POLICY/PARTNER", "THEN"],
        &rows,
    );
    out.push('\n');
}

/// `alice, in groups contractors, sales`; `alice, in no group`; `none (...)` without a user.
fn user_line(d: &DeviceExplanation) -> String {
    match &d.user_id {
        None => "none (only policies for all users can apply)".to_owned(),
        Some(u) if d.groups.is_empty() => format!("{u}, in no group"),
        Some(u) => format!("{u}, in groups {}", d.groups.join(", ")),
    }
}

/// `HIGH network: rogue-access-point`.
fn threat(t: &Threat) -> String {
    format!("{} {}: {}", t.severity, t.category, t.name)
}

/// Why a policy applies to the device or not.
fn scope_text(s: &Scope) -> String {
    match s {
        Scope::AllUsers => "all users".to_owned(),
        Scope::Included { group } => format!("group {group} included"),
        Scope::Excluded { group } => format!("excluded by group {group}"),
        Scope::NotIncluded => "not in an included group".to_owned(),
        Scope::NoUser => "no user (assigned to groups only)".to_owned(),
    }
}

/// `lookout max LOW, microsoft-defender-for-endpoint max MEDIUM`.
fn judges_text(kind: PolicyKind, judges: &[PartnerCeiling]) -> String {
    if judges.is_empty() {
        return match kind {
            PolicyKind::Compliance => "no partner's data".to_owned(),
            PolicyKind::AppProtection => "no partner chosen".to_owned(),
        };
    }
    judges
        .iter()
        .map(|j| format!("{} max {}", j.partner_id, j.max_level))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The policies of the device's platform and kind: whether each applies, why, and whose data
/// it judges with which ceiling.
fn render_policies(out: &mut String, d: &DeviceExplanation) {
    let kind = match d.management {
        Management::Mdm => PolicyKind::Compliance,
        Management::Mam => PolicyKind::AppProtection,
    };
    if d.policies.is_empty() {
        let _ = writeln!(out, "  no {kind} policy for {} devices", d.platform);
        return;
    }
    let applying = d.policies.iter().filter(|p| p.applies).count();
    let _ = writeln!(
        out,
        "  {kind} policies for {}: {applying} of {} apply",
        d.platform,
        d.policies.len()
    );
    let rows: Vec<Vec<String>> = d
        .policies
        .iter()
        .map(|p| {
            vec![
                p.policy_id.clone(),
                yes_no(p.applies).to_owned(),
                scope_text(&p.scope),
                judges_text(p.kind, &p.judges),
            ]
        })
        .collect();
    table(out, "    ", &["POLICY", "APPLIES", "WHY", "JUDGES"], &rows);
}

fn settings_summary(c: Option<&ConnectorConfig>) -> String {
    let Some(c) = c else {
        return "no settings".into();
    };
    let mut parts = Vec::new();
    if !c.provisioned {
        parts.push("not provisioned".to_owned());
    } else if !c.setup_complete {
        parts.push("setup incomplete".to_owned());
    }
    type Toggle = fn(&ConnectorConfig, Platform) -> bool;
    let toggles: [(&str, Toggle); 3] = [
        ("compliance", ConnectorConfig::compliance_enabled),
        ("app protection", ConnectorConfig::mam_enabled),
        (
            "blocked on missing data",
            ConnectorConfig::blocked_on_missing_data,
        ),
    ];
    for (what, on) in toggles {
        let platforms: Vec<String> = Platform::ALL
            .iter()
            .filter(|p| on(c, **p))
            .map(|p| p.as_str().to_ascii_lowercase())
            .collect();
        if !platforms.is_empty() {
            parts.push(format!("{what}: {}", platforms.join(",")));
        }
    }
    if c.ios_app_sync {
        parts.push(if c.ios_app_sync_personal_full {
            "App Sync (personal: full)".to_owned()
        } else {
            "App Sync".to_owned()
        });
    }
    if c.unsupported_os_blocked {
        parts.push("unsupported OS blocked".to_owned());
    }
    parts.push(format!(
        "timeout {}, ignore after {}d",
        span(c.heartbeat_timeout_seconds * 1000),
        c.unresponsive_threshold_days
    ));
    parts.join("; ")
}

/// Renders a tenant's connectors.
pub fn render_connectors(tenant: &str, list: &[ConnectorExplanation], now: i64) -> String {
    let mut out = String::new();
    if list.is_empty() {
        let _ = writeln!(out, "tenant {tenant} has no connectors on this instance");
        return out;
    }
    let _ = writeln!(out, "connectors of tenant {tenant} ({})", list.len());
    let mut rows: Vec<Vec<String>> = list
        .iter()
        .map(|c| {
            vec![
                c.partner_id.clone(),
                c.status.to_string(),
                if c.compliance_ignored {
                    "IGNORED".into()
                } else {
                    "used".into()
                },
                c.last_heartbeat_at
                    .map_or_else(|| "never".into(), |t| relative(t, now)),
                moment(c.unresponsive_at, now),
                moment(c.ignored_at, now),
                if c.error_code == 0 {
                    "-".into()
                } else {
                    c.error_code.to_string()
                },
                settings_summary(c.settings.as_ref()),
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
    use mtdgate::engine::explain::PolicyExplanation;

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
        let text = render_device(
            &serde_json::from_value(v).expect("a device explanation"),
            5_000,
        );
        assert!(text.contains("compliance    NONCOMPLIANT"), "{text}");
        assert!(text.contains("LEVEL_EXCEEDS_POLICY"), "{text}");
        assert!(text.contains("4s ago"), "{text}");
        // An answer without the 1.1 fields (an older instance) still reads and renders.
        assert!(text.contains("  user          none"), "{text}");
        assert!(!text.contains("threat"), "{text}");
        assert!(!text.contains("deadlines"), "{text}");
        assert!(!text.contains("grace ends"), "{text}");
    }

    /// When [`assigned_device`] is explained: 65 s after its partners' reports.
    const NOW: i64 = 1_709_528_832_000;

    /// An iOS device of a user in two groups, under an all-users policy, a Defender-only
    /// policy of one group and a policy its other group is excluded from, with a partner whose
    /// report has threats. The all-users policy has a 24 h grace period, which the device is
    /// in, and the tenant's reports are valid 7 days (the README's example).
    fn assigned_device() -> DeviceExplanation {
        use mtdgate::engine::explain::{DeadlineExplanation, Decision, PartnerExplanation};
        use mtdgate::model::{
            ComplianceState, HealthState, Reason, ReasonCode, ThreatLevel, ThreatSeverity,
        };
        const DEFENDER: &str = "microsoft-defender-for-endpoint";
        let ceiling = |partner: &str, max_level| PartnerCeiling {
            partner_id: partner.into(),
            max_level,
        };
        let policy = |id: &str, scope: Scope, judges| PolicyExplanation {
            policy_id: id.into(),
            kind: PolicyKind::Compliance,
            applies: scope.applies(),
            scope,
            judges,
        };
        let threats = vec![
            Threat {
                category: "network".into(),
                name: "rogue-access-point".into(),
                severity: ThreatSeverity::High,
            },
            Threat {
                category: "app".into(),
                name: "sideloaded-app".into(),
                severity: ThreatSeverity::Medium,
            },
        ];
        const OBSERVED: i64 = 1_709_528_767_000;
        const GRACE_ENDS: i64 = OBSERVED + 24 * 3_600_000;
        let expiry = |partner: &str| DeadlineExplanation {
            kind: DeadlineKind::ReportExpiry,
            at: OBSERVED + 7 * 86_400_000,
            policy_id: None,
            partner_id: Some(partner.into()),
            then: "the partner's latest report expires: no usable data from it \
                   (REPORT_EXPIRED), unless a newer report arrives"
                .into(),
        };
        let partner = |id: &str, health, threats| PartnerExplanation {
            partner_id: id.into(),
            health_state: health,
            level: health.level(),
            observed_at: OBSERVED,
            age_ms: NOW - OBSERVED,
            counts: true,
            why: "connector counts for compliance on this platform".into(),
            threats,
        };
        DeviceExplanation {
            tenant_id: "acme".into(),
            device_id: "d1".into(),
            partition: 3,
            platform: Platform::Ios,
            management: Management::Mdm,
            enrolled: true,
            os_version: Some("17.4".into()),
            user_id: Some("alice".into()),
            groups: vec!["contractors".into(), "sales".into()],
            compliance: ComplianceState::InGracePeriod,
            mam_blocked: false,
            mam_wipe_incident: false,
            partners: vec![
                partner("lookout", HealthState::High, threats.clone()),
                partner(DEFENDER, HealthState::Secured, vec![]),
            ],
            policies: vec![
                policy(
                    "baseline",
                    Scope::AllUsers,
                    vec![
                        ceiling("lookout", ThreatLevel::Medium),
                        ceiling(DEFENDER, ThreatLevel::Medium),
                    ],
                ),
                policy(
                    "defender-only",
                    Scope::Included {
                        group: "sales".into(),
                    },
                    vec![ceiling(DEFENDER, ThreatLevel::Low)],
                ),
                policy("hr", Scope::NotIncluded, vec![]),
                policy(
                    "strict",
                    Scope::Excluded {
                        group: "contractors".into(),
                    },
                    vec![
                        ceiling("lookout", ThreatLevel::Secured),
                        ceiling(DEFENDER, ThreatLevel::Secured),
                    ],
                ),
            ],
            deadlines: vec![
                DeadlineExplanation {
                    kind: DeadlineKind::GraceEnd,
                    at: GRACE_ENDS,
                    policy_id: Some("baseline".into()),
                    partner_id: None,
                    then: "NONCOMPLIANT if the device still fails policy baseline".into(),
                },
                expiry("lookout"),
                expiry(DEFENDER),
            ],
            decision: Decision {
                grace_ends_at: Some(GRACE_ENDS),
                state: Some(ComplianceState::InGracePeriod),
                worst_level: Some(ThreatLevel::High),
                reasons: vec![Reason {
                    partner_id: "lookout".into(),
                    code: ReasonCode::LevelExceedsPolicy,
                    detail: "reported level HIGH exceeds MEDIUM allowed by policy baseline".into(),
                    threats,
                }],
                app_protection_policies: vec![],
            },
        }
    }

    #[test]
    fn device_shows_assignment_ceilings_and_threats() {
        let d = assigned_device();
        let text = render_device(&d, NOW);
        let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
        for want in [
            "  user          alice, in groups contractors, sales",
            "  compliance    IN_GRACE_PERIOD   (rules now: IN_GRACE_PERIOD, worst level HIGH)",
            "  grace ends    2024-03-05 05:06:07 UTC (in 23h 58m)",
            "  threats (worst first, of each partner's latest report)",
            "    PARTNER  SEVERITY  CATEGORY  NAME",
            "    lookout  HIGH      network   rogue-access-point",
            "    lookout  MEDIUM    app       sideloaded-app",
            "  COMPLIANCE policies for IOS: 2 of 4 apply",
            "    POLICY         APPLIES  WHY                            JUDGES",
            "    baseline       yes      all users                      lookout max MEDIUM, microsoft-defender-for-endpoint max MEDIUM",
            "    defender-only  yes      group sales included           microsoft-defender-for-endpoint max LOW",
            "    hr             no       not in an included group       no partner's data",
            "    strict         no       excluded by group contractors  lookout max SECURED, microsoft-defender-for-endpoint max SECURED",
            "  deadlines (3, earliest first)",
            "    KIND           AT                                    POLICY/PARTNER                           THEN",
            "    GRACE_END      2024-03-05 05:06:07 UTC (in 23h 58m)  policy baseline                          NONCOMPLIANT if the device still fails policy baseline",
            "    REPORT_EXPIRY  2024-03-11 05:06:07 UTC (in 6d 23h)   partner lookout                          the partner's latest report expires: no usable data from it (REPORT_EXPIRED), unless a newer report arrives",
            "    REPORT_EXPIRY  2024-03-11 05:06:07 UTC (in 6d 23h)   partner microsoft-defender-for-endpoint  the partner's latest report expires: no usable data from it (REPORT_EXPIRED), unless a newer report arrives",
            "    lookout  LEVEL_EXCEEDS_POLICY  reported level HIGH exceeds MEDIUM allowed by policy baseline",
            "                                   threat HIGH network: rogue-access-point",
            "                                   threat MEDIUM app: sideloaded-app",
        ] {
            assert!(lines.contains(&want), "{want:?} missing:\n{text}");
        }
        // Deadlines come after the policies and before the decision; relative times follow
        // the clock (an hour later, the grace ends in 22h 58m).
        let at = |s: &str| text.find(s).unwrap();
        assert!(
            at("COMPLIANCE policies") < at("deadlines (") && at("deadlines (") < at("decision")
        );
        let later = render_device(&d, NOW + 3_600_000);
        assert!(
            later.contains("  grace ends    2024-03-05 05:06:07 UTC (in 22h 58m)\n"),
            "{later}"
        );
        // The API's JSON reads back into the same explanation.
        let back: DeviceExplanation = serde_json::from_str(&json(&d)).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn the_readme_example_is_what_the_cli_prints() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("  $ mtdgate explain acme d1\n")
            .expect("README shows `mtdgate explain acme d1`");
        let block = &readme[start..];
        let block = &block[block.find('\n').unwrap() + 1..block.find("  ```").unwrap()];
        let shown: String = block
            .lines()
            .map(|l| format!("{}\n", l.strip_prefix("  ").unwrap_or(l)))
            .collect();
        let printed: String = render_device(&assigned_device(), NOW)
            .lines()
            .map(|l| format!("{}\n", l.trim_end()))
            .collect();
        assert_eq!(shown, printed);
    }

    #[test]
    fn an_unenrolled_device_shows_its_app_access() {
        use mtdgate::engine::explain::Decision;
        use mtdgate::model::{ComplianceState, Platform};
        let d = DeviceExplanation {
            tenant_id: "acme".into(),
            device_id: "m1".into(),
            partition: 0,
            platform: Platform::Android,
            management: Management::Mam,
            enrolled: false,
            os_version: None,
            user_id: None,
            groups: vec![],
            compliance: ComplianceState::Unknown,
            mam_blocked: true,
            mam_wipe_incident: true,
            partners: vec![],
            policies: vec![
                PolicyExplanation {
                    policy_id: "block".into(),
                    kind: PolicyKind::AppProtection,
                    applies: true,
                    scope: Scope::AllUsers,
                    judges: vec![],
                },
                PolicyExplanation {
                    policy_id: "sales-only".into(),
                    kind: PolicyKind::AppProtection,
                    applies: false,
                    scope: Scope::NoUser,
                    judges: vec![PartnerCeiling {
                        partner_id: "lookout".into(),
                        max_level: mtdgate::model::ThreatLevel::Medium,
                    }],
                },
            ],
            deadlines: vec![],
            decision: Decision {
                grace_ends_at: None,
                state: None,
                worst_level: None,
                reasons: vec![],
                app_protection_policies: vec!["block (BLOCK above LOW)".into()],
            },
        };
        let text = render_device(&d, 0);
        assert!(text.contains("ANDROID, MAM (not enrolled), OS -"), "{text}");
        assert!(
            text.contains("app access    BLOCKED, wiped for the current incident"),
            "{text}"
        );
        assert!(
            text.contains("no partner has reported this device"),
            "{text}"
        );
        assert!(
            text.contains(
                "  decision: app protection policies in force\n    block (BLOCK above LOW)\n"
            ),
            "{text}"
        );
        let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
        for want in [
            "  user          none (only policies for all users can apply)",
            "  APP_PROTECTION policies for ANDROID: 1 of 2 apply",
            "    block       yes      all users                          no partner chosen",
            "    sales-only  no       no user (assigned to groups only)  lookout max MEDIUM",
        ] {
            assert!(lines.contains(&want), "{want:?} missing:\n{text}");
        }
        // What the API serialises is what the CLI reads back.
        let back: DeviceExplanation = serde_json::from_str(&json(&d)).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn connectors_render_with_their_deadlines_and_settings() {
        use mtdgate::model::ConnectorStatus;
        let now = 1_700_000_000_000;
        let mut settings = ConnectorConfig::new("acme", "lookout", now);
        settings.provisioned = true;
        settings.setup_complete = true;
        settings.ios_enabled = true;
        settings.ios_mam_enabled = true;
        let c = ConnectorExplanation {
            partner_id: "lookout".into(),
            status: ConnectorStatus::Enabled,
            compliance_ignored: false,
            last_heartbeat_at: Some(now - 3_000),
            error_code: 0,
            unresponsive_at: Some(now + 57_000),
            ignored_at: None,
            settings: Some(settings),
        };
        let text = render_connectors("acme", &[c], now);
        assert!(text.starts_with("connectors of tenant acme (1)"), "{text}");
        assert!(text.contains("UNRESPONSIVE AT"), "{text}");
        let row = text.lines().find(|l| l.contains("lookout")).unwrap();
        for cell in [
            "ENABLED",
            "used",
            "3s ago",
            "(in 57s)",
            "compliance: ios; app protection: ios; timeout",
        ] {
            assert!(row.contains(cell), "{cell:?} missing: {row}");
        }
        assert_eq!(
            render_connectors("acme", &[], now),
            "tenant acme has no connectors on this instance\n"
        );
    }
}
