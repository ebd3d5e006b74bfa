//! A whole cluster in this process (`LocalCluster`: RM + agents on port 0), with containers that
//! are real processes of the `spindle` binary's AM and the job's commands.

mod support;

use std::time::Duration;

use spindle_cli::local::{LocalCluster, LocalOptions};
use spindle_protocol::{AppState, ExitReason, FinalStatus, Resources};
use support::{shell_job, task_containers, wait_for_app_end};

/// A local cluster of `agents` agents of 4 vcores and 4 GiB in `dir`, whose agents start the
/// real binary as the AM.
async fn start_local(dir: &std::path::Path, agents: usize) -> LocalCluster {
    let mut options = LocalOptions::new(dir).expect("local options");
    options.agents = agents;
    options.agent_capacity = Some(Resources::new(4, 4096));
    options.spindle_bin = support::spindle_bin();
    LocalCluster::start(options).await.expect("the local cluster starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_over_memory_limit_is_killed() {
    let dir = support::shared_tempdir("spindle-sandbox-");
    let _cleanup = support::CleanupDir(dir.path());
    let cluster = start_local(dir.path(), 1).await;
    let client = cluster.client();

    let mut spec = shell_job("hog", "", 1, 64, 0);
    spec.shell.as_mut().unwrap().command = ["python3", "-c", "b = bytearray(400*1024*1024); import time; time.sleep(10)"]
        .map(str::to_owned)
        .to_vec();
    let app_id = client.submit(&spec).await.unwrap();
    let report = wait_for_app_end(&client, app_id, Duration::from_secs(60)).await;
    assert_eq!(
        (report.state, report.final_status),
        (AppState::Failed, FinalStatus::Failed),
        "{report:?}"
    );

    let tasks = task_containers(&client, app_id).await;
    assert_eq!(tasks.len(), 1, "max_retries = 0: the task runs once: {tasks:#?}");
    assert_eq!(tasks[0].exit_reason, Some(ExitReason::ExceededMemory), "{:#?}", tasks[0]);
    cluster.shutdown().await.expect("the local cluster stops cleanly");
}
