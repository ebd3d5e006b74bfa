//! YARN REST compatibility against a real cluster, checked with an existing YARN client from
//! PyPI (`yarn-api-client` 1.0.3, unchanged): the cluster's info, metrics and scheduler, apps
//! listed and filtered, one app's report and attempts, nodes, and a shell app submitted through
//! `new-application` + `POST /ws/v1/cluster/apps` and killed with `PUT …/state`.
//!
//! The client runs in `target/test-venv` (`.ci/run` makes it) or whatever python
//! `SPINDLE_TEST_PYTHON` names; without it the test skips, saying so, unless
//! `SPINDLE_REQUIRE_TEST_PYTHON` is set.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use support::{ADMIN_TOKEN, Db, TestCluster, run_to_success, shell_job};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yarn_rest_client_reads_the_cluster_and_submits_and_kills_an_app() {
    let Some(python) = support::test_python("yarn_api_client") else {
        return;
    };
    let mut cluster = TestCluster::start(Db::Sqlite).await;
    cluster.start_agent(4, 4096).await;
    cluster.start_agent(4, 4096).await;
    let admin = cluster.admin();
    let done = run_to_success(&admin, &shell_job("yarn-visible", "echo hi", 2, 128, 0), Duration::from_secs(60)).await;
    let node_id = cluster.node_id(0).0.clone();

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/python/yarn_client.py");
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(&python)
            .arg(&script)
            .args([&cluster.rm_url(), ADMIN_TOKEN, &done.app_id.to_string(), &node_id])
            .output(),
    )
    .await
    .expect("the client ends in time")
    .expect("run the YARN client");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the YARN client failed:\n{stderr}");
    let read: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|err| panic!("not JSON ({err}):\n{stderr}"));

    assert_eq!(read["info"]["haState"], "ACTIVE");
    assert_eq!(read["info"]["state"], "STARTED");
    let metrics = &read["metrics"];
    assert_eq!(
        (metrics["totalNodes"].as_u64(), metrics["activeNodes"].as_u64()),
        (Some(2), Some(2)),
        "{metrics}"
    );
    assert_eq!(metrics["totalVirtualCores"], 8, "{metrics}");
    assert_eq!(metrics["totalMB"], 8192, "{metrics}");
    assert!(metrics["appsCompleted"].as_u64() >= Some(1), "{metrics}");
    assert_eq!(read["scheduler"]["queueName"], "root");
    assert_eq!(read["scheduler"]["type"], "capacityScheduler");

    let app_id = done.app_id.to_string();
    let listed = read["apps"].as_array().expect("apps.app is a list");
    assert!(listed.iter().any(|app| app["id"] == app_id.as_str()), "{listed:#?}");
    let finished = read["finished_apps"].as_array().expect("a list");
    assert!(
        finished.iter().all(|app| app["state"] == "FINISHED") && !finished.is_empty(),
        "{finished:#?}"
    );
    let app = &read["app"];
    assert_eq!(
        (app["state"].as_str(), app["finalStatus"].as_str()),
        (Some("FINISHED"), Some("SUCCEEDED")),
        "{app}"
    );
    assert_eq!(app["name"], "yarn-visible");
    assert_eq!(app["progress"], 100.0);
    assert_eq!(app["applicationType"], "SPINDLE-SHELL");
    let attempts = read["attempts"].as_array().expect("a list");
    assert_eq!(attempts.len(), 1, "{attempts:#?}");
    let attempt_id = attempts[0]["appAttemptId"].as_str().unwrap();
    assert!(
        attempt_id.starts_with("appattempt_") && attempt_id.ends_with("_000001"),
        "{attempt_id}"
    );

    assert_eq!(read["nodes"].as_array().map(Vec::len), Some(2));
    assert_eq!(read["node"]["id"], node_id.as_str());
    assert_eq!(read["node"]["state"], "RUNNING");

    let submitted = read["new_application"]["application-id"].as_str().expect("an id");
    assert!(submitted.starts_with("application_"), "{submitted}");
    assert!(read["new_application"]["maximum-resource-capability"]["memory"].as_u64() == Some(4096));
    assert_eq!(read["submitted_state"], "RUNNING", "{read}");
    assert_eq!(read["submitted_app"]["name"], "yarn-sleeper");
    assert_eq!(read["kill"]["state"], "KILLED");
    assert_eq!(read["state_after_kill"], "KILLED");
    let spindle_view = admin.app(submitted.parse().unwrap()).await.unwrap();
    assert_eq!(spindle_view.state, spindle_protocol::AppState::Killed);
    assert!(
        read["unsupported"].as_str().unwrap_or_default().contains("501"),
        "{}",
        read["unsupported"]
    );
}
