//! The chaos suite, bounded for CI: `bench/chaos.py` (the harness for long runs) for about a
//! minute and a half with faults every few seconds, on this build's binary. Two RMs on a
//! private PostgreSQL server and three agents, each on a network-namespace host, run word
//! counts and exactly-once stream jobs while the harness kill -9s the active RM, restarts
//! agents (SIGTERM and kill -9), crashes hosts, restarts PostgreSQL and partitions hosts from
//! the RMs (shorter and longer than the node expiry). Every job must succeed with exact
//! output, and every check after every fault must pass; the summary says what was injected.

mod support;

use std::process::Command;

/// Seconds of faults and new jobs; the jobs running at the end are then waited for.
const DURATION_S: &str = "75";

#[test]
fn a_mixed_workload_survives_every_kind_of_fault_with_exact_output() {
    if std::fs::read_dir("/usr/lib/postgresql").is_err() {
        support::skip_unless_required(
            support::REQUIRE_POSTGRES,
            "the chaos suite runs a private PostgreSQL server: none is installed",
        );
        return;
    }
    let dir = support::shared_tempdir("spindle-chaos-");
    // Another subnet and bridge than the script's defaults and than other test processes'.
    let tag = std::process::id() % 200 + 20;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/chaos.py");
    let output = Command::new("python3")
        .arg(script)
        .args(["--duration-s", DURATION_S, "--seed", "11", "--json"])
        .args(["--fault-min-s", "3", "--fault-max-s", "6", "--node-expiry", "6"])
        .args(["--text-mb", "1", "--text-copies", "2", "--stream-limit", "30000"])
        .args(["--subnet", &format!("10.66.{tag}"), "--bridge", &format!("spchaos{tag}")])
        .arg("--spindle")
        .arg(support::spindle_bin())
        .arg("--dir")
        .arg(dir.path())
        .output()
        .expect("python3 runs bench/chaos.py");
    let log = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary: serde_json::Value = match stdout.lines().rev().find_map(|line| serde_json::from_str(line).ok()) {
        Some(summary) => summary,
        None => panic!("no JSON summary (exit {:?}):\n{log}\n{stdout}", output.status),
    };
    eprintln!("{log}");
    let faults = &summary["faults"];
    let jobs = &summary["jobs"];
    let checks = &summary["checks"];
    eprintln!(
        "faults {faults}\njobs submitted {} succeeded {} failed {}",
        jobs["submitted"], jobs["succeeded"], jobs["failed"]
    );
    assert!(faults["total"].as_u64().unwrap_or(0) >= 5, "too few faults injected: {faults}");
    assert_eq!(jobs["failed"], 0, "{jobs}");
    assert!(jobs["submitted"].as_u64().unwrap_or(0) >= 4, "{jobs}");
    assert_eq!(jobs["succeeded"], jobs["submitted"], "{jobs}");
    assert_eq!(jobs["output_exact"], jobs["submitted"], "{jobs}");
    assert_eq!(checks["failed"], 0, "failed checks: {checks}");
    assert!(output.status.success(), "the harness failed: {:?}", output.status);
}
