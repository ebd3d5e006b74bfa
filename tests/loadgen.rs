//! `spindle loadgen` at a small size against a real RM process on SQLite: its summary has
//! every figure the benchmarks read, the RM kept up, and no invariant broke (no container
//! granted twice, every completion delivered once, no node over-committed).

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Db, SECRET, TestCluster, USER_TOKEN, run_spindle};

/// The figures `bench/rm_scale_bench.py` and bench/README.md read.
const FIELDS: &[&str] = &[
    "agents",
    "ams",
    "duration_s",
    "heartbeats_per_sec",
    "periodic_heartbeats_per_sec",
    "rm_cpu_cores",
    "rm_rss_mb",
    "allocate_p50_ms",
    "allocate_p99_ms",
    "heartbeat_p50_ms",
    "heartbeat_p99_ms",
    "ask_to_grant_p50_ms",
    "ask_to_grant_p99_ms",
    "containers_per_sec",
    "store_commits_per_sec",
    "apps_finished",
    "allocate_calls",
    "register_errors",
    "loadgen_cpu_cores",
    "invariant_violations",
];

const AGENTS: u64 = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_drives_a_real_rm_and_every_invariant_holds() {
    let cluster = TestCluster::start(Db::Sqlite).await;
    let secret_file = cluster.path().join("cluster-secret");
    let token_file = cluster.path().join("user-token");
    std::fs::write(&secret_file, SECRET).unwrap();
    std::fs::write(&token_file, USER_TOKEN).unwrap();
    let rm_url = cluster.rm_url();
    let rm_pid = cluster.rm.as_ref().expect("the RM runs").pid().to_string();
    let (secret_file, token_file) = (secret_file.display().to_string(), token_file.display().to_string());
    let agents = AGENTS.to_string();
    #[rustfmt::skip]
    let args = [
        "loadgen", "--rm", &rm_url, "--secret-file", &secret_file, "--token-file", &token_file,
        "--agents", &agents, "--ams", "10", "--warmup-s", "2", "--duration-s", "8", "--drain-s", "10",
        "--task-ms", "500", "--containers-per-am", "12", "--rm-pid", &rm_pid,
    ];
    let output = run_spindle(&cluster.path().join("home"), &args, Duration::from_secs(90)).await;
    assert!(output.success(), "{output}");
    let summary: Value = serde_json::from_str(output.stdout.trim()).unwrap_or_else(|err| panic!("{err}: {output}"));

    for field in FIELDS {
        let value = &summary[field];
        assert!(!value.is_null(), "{field} is missing or null: {summary:#}");
    }
    assert_eq!(summary["invariant_violations"], serde_json::json!([]), "{summary:#}");
    assert_eq!(summary["agents"], AGENTS);
    assert!(summary["apps_finished"].as_u64().unwrap() > 0, "{summary:#}");
    assert!(summary["containers_granted"].as_u64().unwrap() > 0, "{summary:#}");
    assert!(summary["containers_per_sec"].as_f64().unwrap() > 0.0, "{summary:#}");
    assert!(summary["store_commits_per_sec"].as_f64().unwrap() > 0.0, "{summary:#}");
    assert!(summary["rm_cpu_cores"].as_f64().unwrap() > 0.0, "{summary:#}");
    assert_eq!(summary["register_errors"], 0, "{summary:#}");
    // Every agent heartbeats once per interval (the test clusters' is short), spread evenly.
    let interval_ms = summary["heartbeat_interval_ms"].as_f64().unwrap();
    let expected = AGENTS as f64 * 1000.0 / interval_ms;
    let periodic = summary["periodic_heartbeats_per_sec"].as_f64().unwrap();
    assert!(
        (periodic - expected).abs() <= expected * 0.2,
        "{periodic}/s, not ~{expected}/s: {summary:#}"
    );
    let all = summary["heartbeats_per_sec"].as_f64().unwrap();
    assert!(all >= periodic, "{summary:#}");
    let rm_counted = summary["rm_heartbeats_per_sec"].as_f64().unwrap();
    assert!((rm_counted - all).abs() <= all * 0.1, "the RM counted {rm_counted}/s: {summary:#}");
}

#[tokio::test]
async fn bad_arguments_are_usage_errors_that_name_their_flag() {
    let home = tempfile::tempdir().unwrap();
    let missing = home.path().join("missing");
    let missing = missing.display().to_string();
    for (args, flag) in [
        (vec!["loadgen", "--agents", "0"], "--agents"),
        (vec!["loadgen", "--task-ms", "0"], "--task-ms"),
        (
            vec!["loadgen", "--secret-file", &missing, "--token-file", &missing],
            "--secret-file",
        ),
        (vec!["loadgen", "--token", "t"], "--secret-file"),
    ] {
        let output = run_spindle(home.path(), &args, Duration::from_secs(30)).await;
        assert_eq!(output.status.code(), Some(2), "{args:?}: {output}");
        assert!(output.stderr.contains(flag), "{args:?} does not name {flag}: {output}");
    }
}
