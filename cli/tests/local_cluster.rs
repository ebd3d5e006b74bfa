//! Real clusters in one process (`LocalCluster`) and the real `spindle demo`: the roles wired
//! by this crate, end to end, with the shell AM run as `spindle app-master` by the agents.

use std::path::{Path, PathBuf};
use std::time::Duration;

use spindle_cli::client::progress::{ProgressLine, ProgressMode};
use spindle_cli::client::submit::{load_spec, wait_for_app};
use spindle_cli::local::{LocalCluster, LocalOptions};
use spindle_protocol::{AppFilter, FinalStatus, Resources};

const JOB_TIMEOUT: Duration = Duration::from_secs(90);

fn options(data_dir: &Path) -> LocalOptions {
    let mut options = LocalOptions::new(data_dir).unwrap();
    // The test binary is not `spindle`: agents must start the real one for the AM.
    options.spindle_bin = PathBuf::from(env!("CARGO_BIN_EXE_spindle"));
    options.agent_capacity = Some(Resources::new(4, 4096));
    options
}

fn hello_job() -> spindle_protocol::JobSpec {
    load_spec(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello-shell.toml")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_cluster_runs_the_hello_example_and_keeps_it_across_a_restart() {
    let data_dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(options(data_dir.path())).await.unwrap();
    assert_eq!(cluster.agent_addresses.len(), 2);
    let client = cluster.client();
    assert_eq!(client.nodes().await.unwrap().len(), 2);

    let app_id = client.submit(&hello_job()).await.unwrap();
    let mut progress = ProgressLine::new(ProgressMode::Off);
    let report = tokio::time::timeout(JOB_TIMEOUT, wait_for_app(&client, app_id, &mut progress))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.final_status, FinalStatus::Succeeded, "{}", report.diagnostics);

    let tasks: Vec<_> = client.containers(app_id).await.unwrap().into_iter().filter(|c| !c.is_am).collect();
    assert_eq!(tasks.len(), 4);
    for task in &tasks {
        let stdout = client.logs(task.container_id, "stdout").await.unwrap();
        assert_eq!(stdout.trim(), format!("hello from {}", task.container_id));
    }
    let (token, agents) = (cluster.token.clone(), cluster.agent_addresses.clone());
    cluster.shutdown().await.unwrap();

    // Same data dir: same token, the same agents (no LOST leftovers), and the store still knows the app.
    let cluster = LocalCluster::start(options(data_dir.path())).await.unwrap();
    assert_eq!((&cluster.token, &cluster.agent_addresses), (&token, &agents));
    assert_eq!(cluster.client().nodes().await.unwrap().len(), 2);
    let apps = cluster.client().apps(&AppFilter::default()).await.unwrap();
    assert!(
        apps.iter()
            .any(|app| app.app_id == app_id && app.final_status == FinalStatus::Succeeded)
    );
    cluster.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_demo_runs_and_exits_0() {
    let home = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_spindle"))
        .arg("demo")
        .env("SPINDLE_HOME", home.path())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(stdout.matches("hello from container_").count(), 4, "{stdout}");
    assert!(
        !home.path().join("config.toml").exists(),
        "the demo must not write the client config"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_cluster_goes_on_after_one_of_its_agents_is_decommissioned() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::start(options(data_dir.path())).await.unwrap();
    let client = cluster.client();
    let drained = client.nodes().await.unwrap()[0].node_id.clone();
    let request = spindle_protocol::DecommissionRequest {
        timeout_s: 30,
        force: false,
    };
    client.decommission(&drained, &request).await.unwrap();

    // The drained agent stops by itself; the cluster does not stop with it.
    let unexpected = tokio::time::timeout(Duration::from_secs(3), cluster.wait_for_unexpected_exit()).await;
    assert!(unexpected.is_err(), "the cluster stopped: {:?}", unexpected.err());
    let node = client.node(&drained).await.unwrap();
    assert_eq!(node.state, spindle_protocol::NodeState::Decommissioned);

    let app_id = client.submit(&hello_job()).await.unwrap();
    let mut progress = ProgressLine::new(ProgressMode::Off);
    let report = tokio::time::timeout(JOB_TIMEOUT, wait_for_app(&client, app_id, &mut progress))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.final_status, FinalStatus::Succeeded, "{}", report.diagnostics);
    assert!(client.containers(app_id).await.unwrap().iter().all(|c| c.node_id != drained));
    cluster.shutdown().await.unwrap();
}
