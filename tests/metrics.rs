//! `/metrics` of the RM and of an agent after a real job, read with Prometheus' own OpenMetrics
//! parser: the figures an operator graphs are there, with their types, units and every state.

mod support;

use std::time::Duration;

use serde_json::Value;
use spindle_cli::local::{LocalCluster, LocalOptions};
use spindle_protocol::{AppState, Resources};
use support::{shell_job, wait_for_app_end};

async fn scrape(url: &str, token: Option<&str>) -> (u16, String, String) {
    let client = spindle_protocol::tls::client_builder().build().expect("an HTTP client");
    let mut request = client.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the scrape is answered");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, content_type, response.text().await.expect("a body"))
}

/// The value of the sample named `sample` whose labels include every pair of `labels`.
fn value(families: &Value, family: &str, sample: &str, labels: &[(&str, &str)]) -> Option<f64> {
    families[family]["samples"].as_array()?.iter().find_map(|found| {
        let matches = found[0] == sample && labels.iter().all(|(name, value)| found[1][*name] == *value);
        matches.then(|| found[2].as_f64()).flatten()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rm_and_agent_metrics_after_a_job_are_read_by_prometheus_parser() {
    let dir = support::shared_tempdir("spindle-metrics-");
    let _cleanup = support::CleanupDir(dir.path());
    let mut options = LocalOptions::new(dir.path()).expect("local options");
    options.agents = 1;
    options.agent_capacity = Some(Resources::new(4, 4096));
    options.spindle_bin = support::spindle_bin();
    let cluster = LocalCluster::start(options).await.expect("the local cluster starts");
    let client = cluster.client();
    let app_id = client.submit(&shell_job("graphed", "echo hi", 2, 64, 0)).await.unwrap();
    let report = wait_for_app_end(&client, app_id, Duration::from_secs(60)).await;
    assert_eq!(report.state, AppState::Finished, "{report:?}");

    let rm_url = format!("{}/metrics", cluster.rm_url);
    let (status, _, refused) = scrape(&rm_url, None).await;
    assert_eq!(status, 401, "the RM's figures name apps and users: {refused}");
    let (status, content_type, text) = scrape(&rm_url, Some(&cluster.token)).await;
    assert_eq!(status, 200, "{text}");
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    assert!(text.ends_with("# EOF\n"), "{text}");

    let Some(families) = support::parse_prometheus_text(&text) else {
        cluster.shutdown().await.expect("the local cluster stops cleanly");
        return;
    };
    let kind = |family: &str| families[family]["type"].as_str().map(str::to_owned);
    // Every state has a series, zeros included.
    assert_eq!(
        value(&families, "spindle_apps", "spindle_apps", &[("state", "FINISHED")]),
        Some(1.0)
    );
    assert_eq!(value(&families, "spindle_apps", "spindle_apps", &[("state", "KILLED")]), Some(0.0));
    assert_eq!(
        value(&families, "spindle_nodes", "spindle_nodes", &[("state", "RUNNING")]),
        Some(1.0)
    );
    assert_eq!(value(&families, "spindle_nodes", "spindle_nodes", &[("state", "LOST")]), Some(0.0));
    let complete = value(&families, "spindle_containers", "spindle_containers", &[("state", "COMPLETE")]);
    assert_eq!(complete, Some(3.0), "the AM and two tasks: {text}");
    assert_eq!(
        value(&families, "spindle_containers", "spindle_containers", &[("state", "RUNNING")]),
        Some(0.0)
    );
    // Histograms of what the RM did for the job: its AM and two tasks were granted, rounds ran,
    // changes were committed, and the AM's allocate calls were answered.
    for histogram in [
        "spindle_allocation_latency_seconds",
        "spindle_scheduling_round_duration_seconds",
        "spindle_store_commit_duration_seconds",
        "spindle_http_request_duration_seconds",
    ] {
        assert_eq!(kind(histogram).as_deref(), Some("histogram"), "{histogram}: {text}");
    }
    let granted = value(
        &families,
        "spindle_allocation_latency_seconds",
        "spindle_allocation_latency_seconds_count",
        &[],
    );
    assert_eq!(granted, Some(3.0), "one latency per container granted: {text}");
    let rounds = value(
        &families,
        "spindle_scheduling_round_duration_seconds",
        "spindle_scheduling_round_duration_seconds_count",
        &[],
    );
    assert!(rounds.is_some_and(|rounds| rounds >= 1.0), "{text}");
    let commits = value(&families, "spindle_store_commits", "spindle_store_commits_total", &[]).unwrap();
    let timed = value(
        &families,
        "spindle_store_commit_duration_seconds",
        "spindle_store_commit_duration_seconds_count",
        &[],
    );
    assert_eq!(timed, Some(commits), "every commit is timed: {text}");
    // Requests by route pattern and status (never by path: no app id in a label).
    let allocates = value(
        &families,
        "spindle_http_requests",
        "spindle_http_requests_total",
        &[("route", "/v1/internal/am/allocate"), ("method", "POST"), ("status", "200")],
    );
    assert!(allocates.is_some_and(|calls| calls >= 1.0), "{text}");
    let submits = [("route", "/v1/apps"), ("method", "POST"), ("status", "201")];
    assert_eq!(
        value(&families, "spindle_http_requests", "spindle_http_requests_total", &submits),
        Some(1.0)
    );
    // Queues, in bytes and vcores; the node's heartbeat age.
    let default_queue = [("queue", "root.default")];
    assert_eq!(kind("spindle_queue_guaranteed_memory_bytes").as_deref(), Some("gauge"));
    assert_eq!(
        value(&families, "spindle_queue_used_vcores", "spindle_queue_used_vcores", &default_queue),
        Some(0.0)
    );
    assert_eq!(
        value(&families, "spindle_capacity_memory_bytes", "spindle_capacity_memory_bytes", &[]),
        Some(4096.0 * 1024.0 * 1024.0)
    );
    let node = cluster.agent_addresses[0].to_string();
    let age = value(
        &families,
        "spindle_node_heartbeat_age_seconds",
        "spindle_node_heartbeat_age_seconds",
        &[("node", &node)],
    );
    assert!(age.is_some_and(|age| (0.0..30.0).contains(&age)), "{age:?} in {text}");

    // The agent's figures: open, like a node exporter's, and naming no app, user or container.
    let (status, _, agent_text) = scrape(&format!("http://{node}/metrics"), None).await;
    assert_eq!(status, 200, "{agent_text}");
    let app_digits = app_id.to_string();
    let app_digits = app_digits.trim_start_matches("application_");
    assert!(!agent_text.contains(app_digits), "no app or container id: {agent_text}");
    let agent = support::parse_prometheus_text(&agent_text).expect("the parser ran for the RM");
    let launched = value(
        &agent,
        "spindle_agent_container_launches",
        "spindle_agent_container_launches_total",
        &[("outcome", "started")],
    );
    assert_eq!(launched, Some(3.0), "{agent_text}");
    assert_eq!(
        value(
            &agent,
            "spindle_agent_containers",
            "spindle_agent_containers",
            &[("state", "RUNNING")]
        ),
        Some(0.0)
    );
    let heartbeats = value(
        &agent,
        "spindle_agent_heartbeat_duration_seconds",
        "spindle_agent_heartbeat_duration_seconds_count",
        &[],
    );
    assert!(heartbeats.is_some_and(|count| count >= 1.0), "{agent_text}");
    assert_eq!(
        value(&agent, "spindle_agent_capacity_vcores", "spindle_agent_capacity_vcores", &[]),
        Some(4.0)
    );
    cluster.shutdown().await.expect("the local cluster stops cleanly");
}
