//! `mtdgate bench --quick` against the project's real broker: the benchmark itself runs to the
//! end and prints every figure. Timing thresholds are never asserted here: bars are judged by
//! the benchmark's own table (BENCHMARKS.md), not by tests on a shared machine.

mod support;

use std::process::Command;

#[test]
fn bench_quick_completes_and_prints_every_figure() {
    let broker = support::broker();
    let out = Command::new(env!("CARGO_BIN_EXE_mtdgate"))
        .args(["bench", "--quick", "--bootstrap-servers", broker])
        .output()
        .expect("run mtdgate bench --quick");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "mtdgate bench --quick failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for figure in [
        "pipe, exactly-once",
        "mtdgate, exactly-once",
        "pipe, at-least-once",
        "mtdgate, at-least-once",
        "pipe, exactly-once, flush in commit",
        "latency p50",
        "latency p99",
        "latency max",
        "restore, ",
        "fan-out ",
        "grace expiry, ",
        "grace entry (policy change), ",
        "memory @ ",
        "membership reload, ",
    ] {
        assert!(
            stdout.contains(&format!("| {figure}")),
            "figure {figure:?} missing from the final table:\n{stdout}"
        );
    }
    // The memory part's fillings with deadlines pending (grace periods and report expiry).
    for variant in [
        "1.0 population + expiry deadlines",
        "1.0 population + expiries + graces",
        "1.1 population + expiry deadlines",
        "1.1 population + expiries + graces",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("| memory @ ") && l.contains(variant)),
            "memory figure {variant:?} missing from the final table:\n{stdout}"
        );
    }
    assert!(stdout.contains("| figure"), "no final table:\n{stdout}");
}
