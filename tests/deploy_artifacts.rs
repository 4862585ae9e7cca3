//! Checks the operator-facing deployment artifacts against each other and against the service:
//! dashboards and alerts may only query metrics the service declares (`src/telemetry.rs`, listed
//! in `deploy/metrics.txt` and the README table, which must match it),
//! alert rules must pass `promtool check rules` and their unit tests (`promtool test rules`,
//! a firing and a quiet case per alert), the Kubernetes manifests `kubernetes-validate --strict`,
//! and the compose file, manifests and Dockerfile must describe the binary and endpoints mtdgate
//! really has. These files are not compiled, so without this test a renamed metric or probe path
//! would only show up in production. `tests/kafka_metrics.rs` compares the declarations (and
//! `deploy/metrics.txt`) with a real scrape of the running binary.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_yaml::Value;

use mtdgate::telemetry::{self, MetricDef, MetricKind, RebalanceKind, TransactionResult};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let p = root().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

fn yaml(rel: &str) -> Value {
    serde_yaml::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"))
}

/// Every document of a multi-document YAML file (empty documents skipped).
fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            Value::deserialize(d)
                .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// The metric names the service exports: the declarations in `src/telemetry.rs`
/// (`deploy/metrics.txt` and the README table are checked against them below).
fn known_metrics() -> BTreeSet<String> {
    telemetry::ALL.iter().map(|d| d.name.to_owned()).collect()
}

/// `deploy/metrics.txt` as (name, type, label keys), in file order.
fn metrics_txt() -> Vec<(String, String, Vec<String>)> {
    read("deploy/metrics.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(
                cols.len(),
                3,
                "deploy/metrics.txt: want `name type labels`: {l:?}"
            );
            let labels = match cols[2] {
                "-" => Vec::new(),
                ls => ls.split(',').map(str::to_owned).collect(),
            };
            (cols[0].to_owned(), cols[1].to_owned(), labels)
        })
        .collect()
}

/// The `mtdgate_...` identifiers a PromQL expression mentions.
fn metric_refs(expr: &str) -> Vec<String> {
    let b = expr.as_bytes();
    let is_ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("mtdgate_") {
        let start = i + pos;
        let mut end = start + "mtdgate_".len();
        while end < b.len()
            && (b[end].is_ascii_lowercase() || b[end].is_ascii_digit() || b[end] == b'_')
        {
            end += 1;
        }
        if start == 0 || !is_ident(b[start - 1]) {
            out.push(expr[start..end].to_owned());
        }
        i = end;
    }
    out
}

/// The metric a reference resolves to, allowing the histogram series suffixes on histograms
/// (per `src/telemetry.rs`; names outside `known` never resolve).
fn resolve<'a>(name: &'a str, known: &BTreeSet<String>) -> Option<&'a str> {
    if known.contains(name) {
        return Some(name);
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|s| name.strip_suffix(s))
        .find(|base| {
            known.contains(*base)
                && MetricDef::find(base).is_some_and(|d| d.kind == MetricKind::Histogram)
        })
}

/// The scrape job of `deploy/prometheus/prometheus.yml` (the ServiceMonitor's job label, the
/// Service name, is the same).
const JOB: &str = "mtdgate";

/// Asserts every metric in `expr` is exported; returns the metrics used. An expression naming
/// no mtdgate metric must be about the scrape itself: `up{job="mtdgate"}`.
fn check_expr(origin: &str, expr: &str, known: &BTreeSet<String>) -> Vec<String> {
    let refs = metric_refs(expr);
    assert!(
        !refs.is_empty() || expr.contains(&format!("up{{job=\"{JOB}\"}}")),
        "{origin}: expression names no mtdgate metric (nor up{{job=\"{JOB}\"}}): {expr}"
    );
    refs.iter()
        .map(|r| {
            resolve(r, known)
                .unwrap_or_else(|| {
                    panic!(
                        "{origin}: {r} is not a metric mtdgate declares (src/telemetry.rs): {expr}"
                    )
                })
                .to_owned()
        })
        .collect()
}

/// Every string under a key named `key`, anywhere in a JSON document.
fn json_strings_at(v: &serde_json::Value, key: &str, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, child) in m {
                match child {
                    serde_json::Value::String(s) if k == key => out.push(s.clone()),
                    _ => json_strings_at(child, key, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|c| json_strings_at(c, key, out)),
        _ => {}
    }
}

/// Runs an external checker in the repository root; its stdout and stderr, or a panic naming
/// how to install it (a missing tool fails the test, never skips it).
fn run_tool(tool: &str, install: &str, args: &[&str]) -> (bool, String) {
    let out = match Command::new(tool).args(args).current_dir(root()).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("{tool} is not on PATH; {install}")
        }
        Err(e) => panic!("running {tool}: {e}"),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn promtool(args: &[&str]) -> String {
    let (ok, text) = run_tool(
        "promtool",
        "run `bash scripts/install-deps` (Debian package `prometheus`)",
        args,
    );
    assert!(ok, "promtool {} failed:\n{text}", args.join(" "));
    text
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(*k))?.as_str()
}

#[test]
fn metric_reference_scanner() {
    let known: BTreeSet<String> = ["mtdgate_processing_seconds", "mtdgate_ready"]
        .map(String::from)
        .into();
    let refs = metric_refs(
        "histogram_quantile(0.99, sum by (le) (rate(mtdgate_processing_seconds_bucket{job=\"mtdgate\"}[5m]))) and x_mtdgate_other",
    );
    assert_eq!(refs, ["mtdgate_processing_seconds_bucket"]);
    assert_eq!(
        resolve(&refs[0], &known),
        Some("mtdgate_processing_seconds")
    );
    assert_eq!(resolve("mtdgate_ready_total", &known), None);
    // Series suffixes belong to histograms only: `mtdgate_ready` is a gauge.
    assert_eq!(resolve("mtdgate_ready_count", &known), None);
}

/// The declarations as (name, type, label keys), in declaration order.
fn declared() -> Vec<(String, String, Vec<String>)> {
    telemetry::ALL
        .iter()
        .map(|d| {
            let labels = d.labels.iter().map(|l| l.to_string()).collect();
            (d.name.to_owned(), d.kind.as_str().to_owned(), labels)
        })
        .collect()
}

#[test]
fn metrics_txt_lists_exactly_the_declared_metrics() {
    assert_eq!(
        metrics_txt(),
        declared(),
        "deploy/metrics.txt must list src/telemetry.rs's ALL: same names, types, labels, order"
    );
}

/// The README's metrics table as (name, type, label keys, stated label values), one entry per
/// metric name (a row may name several metrics, with one type for all or one per name).
fn readme_metrics_table() -> Vec<(String, String, Vec<String>, Vec<String>)> {
    let readme = read("README.md");
    let mut lines = readme
        .lines()
        .skip_while(|l| l.trim() != "| metric | type | labels |")
        .skip(2); // header and separator
    let mut out = Vec::new();
    for row in lines
        .by_ref()
        .take_while(|l| l.trim_start().starts_with('|'))
    {
        let cells: Vec<&str> = row
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        assert_eq!(cells.len(), 3, "README metrics table row: {row}");
        let ticked = |cell: &str| -> Vec<String> {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect()
        };
        let names = ticked(cells[0]);
        let kinds: Vec<&str> = cells[1].split(',').map(str::trim).collect();
        assert!(
            !names.is_empty() && (kinds.len() == 1 || kinds.len() == names.len()),
            "README metrics table row: {row}"
        );
        // Label keys are the ticked words outside parentheses; `key` = a / b states the values.
        let outside: String = cells[2].split('(').next().unwrap_or_default().to_owned();
        let labels = ticked(&outside);
        let values: Vec<String> = match outside.split_once('=') {
            Some((_, v)) => v.split('/').map(|v| v.trim().to_owned()).collect(),
            None => Vec::new(),
        };
        for (i, n) in names.into_iter().enumerate() {
            let kind = kinds[if kinds.len() == 1 { 0 } else { i }].to_owned();
            out.push((n, kind, labels.clone(), values.clone()));
        }
    }
    assert!(
        !out.is_empty(),
        "README.md has no `| metric | type | labels |` table"
    );
    out
}

#[test]
fn readme_metrics_table_matches_the_declarations() {
    let table = readme_metrics_table();
    let got: Vec<_> = table
        .iter()
        .map(|(n, k, l, _)| (n.clone(), k.clone(), l.clone()))
        .collect();
    assert_eq!(
        got,
        declared(),
        "README.md metrics table must list src/telemetry.rs's ALL: same names, types, labels, order"
    );
    // Where the table spells out a label's values, they are the typed label's values.
    let typed: [(&str, Vec<&str>); 2] = [
        (
            telemetry::TRANSACTIONS.name,
            TransactionResult::ALL.iter().map(|r| r.as_str()).collect(),
        ),
        (
            telemetry::REBALANCES.name,
            RebalanceKind::ALL.iter().map(|k| k.as_str()).collect(),
        ),
    ];
    for (name, want) in typed {
        let (_, _, _, values) = table.iter().find(|(n, ..)| n == name).unwrap();
        assert_eq!(values, &want, "README.md: label values of {name}");
    }
}

#[test]
fn dashboard_queries_only_exported_metrics() {
    let known = known_metrics();
    let rel = "deploy/grafana/dashboards/mtdgate.json";
    let dash: serde_json::Value =
        serde_json::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not valid JSON: {e}"));
    let panels = dash["panels"]
        .as_array()
        .expect("dashboard has a panels array");
    assert!(!panels.is_empty(), "dashboard has no panels");
    assert!(
        dash["schemaVersion"].as_u64().is_some(),
        "dashboard has no schemaVersion"
    );
    let mut ids = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "a panel has no title: {p}");
        if let Some(id) = p["id"].as_u64() {
            assert!(ids.insert(id), "panel id {id} is used twice");
        }
        if p["type"] != "row" {
            let targets = p["targets"].as_array().map(Vec::len).unwrap_or(0);
            assert!(targets > 0, "panel {title:?} has no query");
        }
    }

    let mut exprs = Vec::new();
    json_strings_at(&dash["panels"], "expr", &mut exprs);
    json_strings_at(&dash["templating"], "query", &mut exprs);
    json_strings_at(&dash["templating"], "definition", &mut exprs);
    let exprs: Vec<_> = exprs
        .into_iter()
        .filter(|e| e.contains("mtdgate_"))
        .collect();
    assert!(!exprs.is_empty(), "dashboard has no PromQL expressions");
    let mut used = BTreeSet::new();
    for e in &exprs {
        used.extend(check_expr(rel, e, &known));
    }
    let unshown: Vec<_> = known.difference(&used).collect();
    assert!(
        unshown.is_empty(),
        "{rel} shows no panel for exported metrics {unshown:?}"
    );

    for rel in [
        "deploy/grafana/provisioning/datasources/prometheus.yml",
        "deploy/grafana/provisioning/dashboards/mtdgate.yml",
    ] {
        assert!(
            yaml(rel).get("apiVersion").is_some(),
            "{rel}: no apiVersion"
        );
    }
}

#[test]
fn alert_rules_use_exported_metrics_and_pass_promtool() {
    let known = known_metrics();
    let rel = "deploy/prometheus/alerts.yml";
    let doc = yaml(rel);
    let groups = doc["groups"].as_sequence().expect("alerts.yml has groups");
    let group = groups
        .iter()
        .find(|g| g["name"].as_str() == Some("mtdgate"))
        .expect("alerts.yml has a group named mtdgate");
    let rules = group["rules"]
        .as_sequence()
        .expect("group mtdgate has rules");
    let mut names = BTreeSet::new();
    for r in rules {
        let name = r["alert"]
            .as_str()
            .expect("every rule is an alert with a name");
        let expr = r["expr"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no expr"));
        check_expr(&format!("{rel} {name}"), expr, &known);
        for k in ["summary", "description"] {
            assert!(
                str_at(r, &["annotations", k]).is_some_and(|s| !s.trim().is_empty()),
                "{name}: no {k} annotation"
            );
        }
        assert!(
            matches!(
                str_at(r, &["labels", "severity"]),
                Some("warning" | "critical" | "info")
            ),
            "{name}: severity label must be warning, critical or info"
        );
        names.insert(name.to_owned());
    }
    for want in [
        "MtdgateConnectorUnresponsive",
        "MtdgateComplianceIgnored",
        "MtdgateRejectedRateHigh",
        "MtdgateConsumerLagGrowing",
        "MtdgateTransactionAborts",
        "MtdgateNotReady",
        "MtdgatePipelineRestarting",
        "MtdgateInstanceDown",
        "MtdgateAbsent",
        "MtdgateSchemaRegistryUnreachable",
    ] {
        assert!(names.contains(want), "alerts.yml lacks {want}");
    }

    // A job selector names the job Prometheus really scrapes.
    let prom = yaml("deploy/prometheus/prometheus.yml");
    let jobs: Vec<&str> = prom["scrape_configs"]
        .as_sequence()
        .expect("prometheus.yml has scrape_configs")
        .iter()
        .filter_map(|c| c["job_name"].as_str())
        .collect();
    assert!(
        jobs.contains(&JOB),
        "prometheus.yml scrapes no job {JOB}: {jobs:?}"
    );
    for r in rules {
        let expr = r["expr"].as_str().unwrap();
        for (i, _) in expr.match_indices("job=") {
            let value = expr[i + 4..].trim_start_matches(['"', '~']);
            assert!(
                value.starts_with(&format!("{JOB}\"")),
                "{}: job selector other than job=\"{JOB}\": {expr}",
                r["alert"].as_str().unwrap()
            );
        }
    }

    promtool(&["check", "rules", rel]);
    promtool(&["check", "config", "deploy/prometheus/prometheus.yml"]);
}

const ALERT_TESTS: &str = "deploy/prometheus/alerts.test.yml";

/// `promtool test rules`: every alert fires when it should, with its labels and annotations,
/// after its `for`, and stays quiet otherwise.
#[test]
fn alert_rules_pass_their_promtool_unit_tests() {
    let out = promtool(&["test", "rules", ALERT_TESTS]);
    assert!(out.contains("SUCCESS"), "promtool test rules:\n{out}");
}

/// Every alert of `alerts.yml` has a case in `alerts.test.yml` where it fires and one where it
/// does not, and the tests name no alert that does not exist.
#[test]
fn every_alert_has_a_firing_and_a_quiet_test_case() {
    let rules = yaml("deploy/prometheus/alerts.yml");
    let alerts: BTreeSet<String> = rules["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap())
        .filter_map(|r| r["alert"].as_str().map(str::to_owned))
        .collect();
    assert!(!alerts.is_empty());

    let doc = yaml(ALERT_TESTS);
    let files: Vec<&str> = doc["rule_files"]
        .as_sequence()
        .expect("alerts.test.yml has rule_files")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        files,
        ["alerts.yml"],
        "{ALERT_TESTS} tests alerts.yml next to it"
    );
    let (mut fires, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    for t in doc["tests"]
        .as_sequence()
        .expect("alerts.test.yml has tests")
    {
        for case in t["alert_rule_test"].as_sequence().into_iter().flatten() {
            let name = case["alertname"]
                .as_str()
                .expect("alert_rule_test without alertname")
                .to_owned();
            assert!(
                alerts.contains(&name),
                "{ALERT_TESTS} tests {name}, which alerts.yml does not define"
            );
            let expected = case["exp_alerts"].as_sequence().map_or(0, Vec::len);
            if expected > 0 {
                fires.insert(name);
            } else {
                quiet.insert(name);
            }
        }
    }
    let never_fires: Vec<_> = alerts.difference(&fires).collect();
    assert!(
        never_fires.is_empty(),
        "{ALERT_TESTS} has no case where these alerts fire: {never_fires:?}"
    );
    let never_quiet: Vec<_> = alerts.difference(&quiet).collect();
    assert!(
        never_quiet.is_empty(),
        "{ALERT_TESTS} has no case where these alerts stay quiet: {never_quiet:?}"
    );
}

/// The registry compose runs, and the URL mtdgate is given for it (its Confluent API).
const REGISTRY_IMAGE: &str = "apicurio/apicurio-registry:3.3.3";
const REGISTRY_URL: &str = "http://registry:8080/apis/ccompat/v7";

/// A compose service's `environment`, as a map or a `KEY=value` list.
fn compose_env(svc: &Value) -> Vec<(String, String)> {
    match &svc["environment"] {
        Value::Mapping(m) => m
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => serde_yaml::to_string(other).unwrap().trim().to_owned(),
                };
                (k.as_str().unwrap().to_owned(), v)
            })
            .collect(),
        Value::Sequence(s) => s
            .iter()
            .filter_map(Value::as_str)
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// A healthcheck's `test` as argv: `["CMD", ...]` as given, `CMD-SHELL` / a string via `sh -c`.
fn healthcheck_argv(svc: &Value, service: &str) -> Vec<String> {
    let test = &svc["healthcheck"]["test"];
    match test {
        Value::Sequence(s) => {
            let words: Vec<String> = s
                .iter()
                .map(|w| w.as_str().expect("healthcheck words").to_owned())
                .collect();
            match words.first().map(String::as_str) {
                Some("CMD") => words[1..].to_vec(),
                Some("CMD-SHELL") => vec!["sh".into(), "-c".into(), words[1..].join(" ")],
                _ => panic!("docker-compose.yml {service}: healthcheck test must start with CMD or CMD-SHELL"),
            }
        }
        Value::String(s) => vec!["sh".into(), "-c".into(), s.clone()],
        _ => panic!("docker-compose.yml: service {service} has no healthcheck"),
    }
}

/// The programs the runtime image of the Dockerfile has: a Debian base (`bash`, `sh`, `grep`,
/// `head`, ...) plus what its runtime stage installs, and mtdgate itself. Neither curl nor wget
/// unless installed there.
fn runtime_image_programs() -> BTreeSet<String> {
    let docker = read("Dockerfile");
    let stage = docker
        .rsplit_once("\nFROM ")
        .map(|(_, s)| s)
        .expect("Dockerfile has a runtime stage");
    assert!(
        stage.starts_with("debian:"),
        "Dockerfile: the runtime stage is no longer Debian ({}); revisit the compose healthcheck",
        stage.lines().next().unwrap_or_default()
    );
    let mut have: BTreeSet<String> = [
        "bash",
        "sh",
        "/bin/sh",
        "/bin/bash",
        "grep",
        "head",
        "cat",
        "mtdgate",
    ]
    .map(String::from)
    .into();
    for line in stage.lines() {
        if let Some(rest) = line.split("apt-get install").nth(1) {
            have.extend(
                rest.split_whitespace()
                    .take_while(|w| *w != "&&" && *w != "\\")
                    .filter(|w| !w.starts_with('-'))
                    .map(String::from),
            );
        }
    }
    have
}

#[test]
fn compose_runs_the_whole_stack_from_the_repository_image() {
    let rel = "docker-compose.yml";
    let doc = yaml(rel);
    let services = doc["services"]
        .as_mapping()
        .expect("compose file has services");
    for want in [
        "kafka",
        "registry",
        "mtdgate",
        "simulator",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains_key(want), "{rel} has no service {want}");
    }
    let mtdgate = &doc["services"]["mtdgate"];
    let build = &mtdgate["build"];
    let (context, dockerfile) = match build {
        Value::String(s) => (s.as_str(), "Dockerfile"),
        Value::Mapping(_) => (
            build["context"].as_str().unwrap_or("."),
            build["dockerfile"].as_str().unwrap_or("Dockerfile"),
        ),
        _ => panic!("{rel}: service mtdgate must build the repository image"),
    };
    let path = root().join(context).join(dockerfile);
    assert!(
        matches!(context, "." | "./") && path.is_file(),
        "{rel}: mtdgate must build from the repository Dockerfile, not {}",
        path.display()
    );

    // One image, built once: mtdgate alone builds and tags it, the simulator runs that tag.
    let image = mtdgate["image"]
        .as_str()
        .unwrap_or_else(|| panic!("{rel}: service mtdgate must tag its image (image:)"));
    let builders: Vec<&str> = services
        .iter()
        .filter(|(_, svc)| !svc["build"].is_null())
        .map(|(name, _)| name.as_str().unwrap())
        .collect();
    assert_eq!(
        builders,
        ["mtdgate"],
        "{rel}: only service mtdgate may build"
    );
    let simulator = &doc["services"]["simulator"];
    assert_eq!(
        simulator["image"].as_str(),
        Some(image),
        "{rel}: the simulator runs the image service mtdgate builds"
    );
    assert_eq!(
        simulator["command"][0].as_str(),
        Some("simulate"),
        "{rel}: the simulator runs `mtdgate simulate`"
    );
    assert_eq!(
        simulator["pull_policy"].as_str(),
        Some("never"),
        "{rel}: the simulator's image is built here, never pulled"
    );

    // The registry: Apicurio with in-memory storage, and mtdgate pointed at its Confluent API.
    let registry = &doc["services"]["registry"];
    assert_eq!(registry["image"].as_str(), Some(REGISTRY_IMAGE));
    let renv = compose_env(registry);
    for (k, v) in [
        ("APICURIO_STORAGE_KIND", "sql"),
        ("APICURIO_STORAGE_SQL_KIND", "h2"),
    ] {
        assert!(
            renv.iter().any(|(ek, ev)| ek == k && ev == v),
            "{rel}: registry must use in-memory storage ({k}={v})"
        );
    }
    assert!(
        healthcheck_argv(registry, "registry")
            .join(" ")
            .contains("/apis/ccompat/v7/"),
        "{rel}: the registry's healthcheck asks the Confluent API mtdgate uses"
    );
    let env = compose_env(mtdgate);
    assert!(
        env.iter()
            .any(|(k, v)| k == "MTDGATE_SCHEMA_REGISTRY__URL" && v == REGISTRY_URL),
        "{rel}: mtdgate must use the registry: MTDGATE_SCHEMA_REGISTRY__URL={REGISTRY_URL}"
    );
    assert_eq!(
        str_at(mtdgate, &["depends_on", "registry", "condition"]),
        Some("service_healthy"),
        "{rel}: mtdgate starts once the registry answers"
    );

    // The environment gives the binary a configuration it accepts (the image's file, then the
    // overrides), with the registry set.
    let out = Command::new(env!("CARGO_BIN_EXE_mtdgate"))
        .args(["config", "--config", "deploy/docker/mtdgate.toml"])
        .current_dir(root())
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("run mtdgate config");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{rel}: mtdgate rejects the mtdgate service's environment:\n{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let effective: toml::Value = toml::from_str(&printed).unwrap();
    assert_eq!(
        effective["schema_registry"]["url"].as_str(),
        Some(REGISTRY_URL)
    );
    assert_eq!(
        effective["kafka"]["bootstrap_servers"].as_str(),
        Some("kafka:9092")
    );

    // mtdgate's healthcheck: GET /healthz on the listener, with a program the image has.
    let listen = effective["http"]["listen"].as_str().unwrap();
    let port = listen.rsplit(':').next().unwrap();
    let argv = healthcheck_argv(mtdgate, "mtdgate");
    let joined = argv.join(" ");
    assert!(
        joined.contains("/healthz") && joined.contains(&format!("/{port}")),
        "{rel}: mtdgate's healthcheck must GET /healthz on port {port}: {joined}"
    );
    let have = runtime_image_programs();
    assert!(
        have.contains(&argv[0]),
        "{rel}: mtdgate's healthcheck runs {}, which the runtime image lacks (it has {have:?})",
        argv[0]
    );
    for tool in ["curl", "wget"] {
        assert!(
            !argv.iter().any(|w| w.split_whitespace().any(|x| x == tool)) || have.contains(tool),
            "{rel}: mtdgate's healthcheck uses {tool}, which the runtime image lacks"
        );
    }
    assert_eq!(
        str_at(simulator, &["depends_on", "mtdgate", "condition"]),
        Some("service_healthy"),
        "{rel}: the simulator waits for a healthy mtdgate"
    );

    // Every file mounted from the repository exists.
    for (name, svc) in services {
        for v in svc["volumes"].as_sequence().into_iter().flatten() {
            let Some(src) = v.as_str().and_then(|s| s.split(':').next()) else {
                continue;
            };
            if src.starts_with("./") {
                assert!(
                    root().join(src).exists(),
                    "{rel}: service {} mounts missing {src}",
                    name.as_str().unwrap_or("?")
                );
            }
        }
    }
}

/// The Kubernetes version whose schemas the manifests are validated against (bundled with
/// `kubernetes-validate`, which 1.37.0 has for 1.25.0 to 1.37.0).
const KUBERNETES_VERSION: &str = "1.34.0";

/// Files of `deploy/kubernetes` that `kubernetes-validate` has no schema for: the ServiceMonitor
/// is a Prometheus Operator CRD, the kustomization a kustomize file, not an API object (its
/// resources are checked below).
const NOT_VALIDATED: [(&str, &str); 2] = [
    ("servicemonitor.yaml", "ServiceMonitor"),
    ("kustomization.yaml", "Kustomization"),
];

/// `kubernetes-validate --strict` (unknown fields are errors) over every manifest: each document
/// must pass, and a manifest it finds no schema for fails rather than passing with a warning.
#[test]
fn kubernetes_manifests_pass_strict_schema_validation() {
    let dir = root().join("deploy/kubernetes");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes exists")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect();
    files.sort();
    for (file, kind) in NOT_VALIDATED {
        let docs = yaml_docs(&dir.join(file));
        assert!(
            docs.iter().all(|d| d["kind"].as_str() == Some(kind)),
            "deploy/kubernetes/{file} is left out of validation as a {kind} only"
        );
    }
    files.retain(|f| !NOT_VALIDATED.iter().any(|(n, _)| n == f));
    assert!(!files.is_empty(), "deploy/kubernetes holds no manifests");

    let paths: Vec<String> = files
        .iter()
        .map(|f| format!("deploy/kubernetes/{f}"))
        .collect();
    let mut args = vec!["--strict", "--kubernetes-version", KUBERNETES_VERSION];
    args.extend(paths.iter().map(String::as_str));
    let (ok, out) = run_tool(
        "kubernetes-validate",
        "install it with `pip install kubernetes-validate` (scripts/install-deps does)",
        &args,
    );
    assert!(ok, "kubernetes-validate {} failed:\n{out}", args.join(" "));
    let problems: Vec<&str> = out
        .lines()
        .filter(|l| !l.starts_with("INFO "))
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(
        problems.is_empty(),
        "kubernetes-validate reported (warnings count: a missing schema validates nothing):\n{out}"
    );
    for p in &paths {
        let docs = yaml_docs(&root().join(p)).len();
        let passed = out
            .lines()
            .filter(|l| l.starts_with(&format!("INFO {p} passed for resource")))
            .count();
        assert_eq!(
            passed, docs,
            "{p}: {docs} documents, {passed} validated:\n{out}"
        );
    }
}

#[test]
fn kubernetes_manifests_parse_and_probe_the_real_endpoints() {
    let dir = root().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes exists")
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "deploy/kubernetes holds no manifests");

    let mut objects = Vec::new();
    for f in &files {
        for doc in yaml_docs(f) {
            let kind = doc["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: a document without kind", f.display()));
            if kind != "Kustomization" {
                assert!(
                    str_at(&doc, &["metadata", "name"]).is_some(),
                    "{}: {kind} without metadata.name",
                    f.display()
                );
            }
            objects.push(doc);
        }
    }
    let of_kind = |k: &'static str| {
        objects
            .iter()
            .filter(move |o| o["kind"].as_str() == Some(k))
    };

    let deployment = of_kind("Deployment").next().expect("a Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        str_at(container, &["readinessProbe", "httpGet", "path"]),
        Some("/readyz")
    );
    assert_eq!(
        str_at(container, &["livenessProbe", "httpGet", "path"]),
        Some("/healthz")
    );
    let env = container["env"].as_sequence().expect("container env");
    assert!(
        env.iter()
            .any(|e| e["name"].as_str() == Some("MTDGATE_KAFKA__INSTANCE_ID")
                && str_at(e, &["valueFrom", "fieldRef", "fieldPath"]) == Some("metadata.name")),
        "the instance id comes from the pod name"
    );
    assert!(
        of_kind("PodDisruptionBudget").next().is_some(),
        "a PodDisruptionBudget"
    );

    // The configuration shipped in the ConfigMap is one mtdgate accepts.
    let cm = of_kind("ConfigMap").next().expect("a ConfigMap");
    let toml = str_at(cm, &["data", "mtdgate.toml"]).expect("ConfigMap holds mtdgate.toml");
    let cfg = mtdgate::config::Config::from_toml(toml)
        .unwrap_or_else(|e| panic!("configmap.yaml mtdgate.toml: {e}"));
    assert!(cfg.http.listen.ends_with(":9464"));

    // kustomization.yaml lists files that exist.
    let kust = of_kind("Kustomization")
        .next()
        .expect("a kustomization.yaml");
    for r in kust["resources"].as_sequence().expect("resources") {
        let r = r.as_str().unwrap();
        assert!(
            dir.join(r).is_file(),
            "kustomization.yaml lists missing {r}"
        );
    }
}

#[test]
fn dockerfile_builds_the_mtdgate_binary() {
    let docker = read("Dockerfile");
    assert!(
        docker.contains("cargo build --release"),
        "Dockerfile: no release build"
    );
    assert!(
        docker.contains("--bin mtdgate"),
        "Dockerfile: does not build the mtdgate binary"
    );
    assert!(docker.contains("ENTRYPOINT [\"mtdgate\"]"));
    assert!(docker.contains("EXPOSE 9464"));

    let manifest: toml::Value = toml::from_str(&read("Cargo.toml")).unwrap();
    let bins = manifest["bin"]
        .as_array()
        .expect("Cargo.toml declares [[bin]]");
    assert!(
        bins.iter().any(|b| b["name"].as_str() == Some("mtdgate")),
        "Cargo.toml has no mtdgate binary"
    );

    // The configuration baked into the image is one mtdgate accepts.
    let rel = "deploy/docker/mtdgate.toml";
    assert!(docker.contains(rel), "Dockerfile does not install {rel}");
    let cfg =
        mtdgate::config::Config::from_toml(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    assert_eq!(cfg.http.listen, "0.0.0.0:9464");
}
