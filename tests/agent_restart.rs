//! Node agents restarted under running jobs, as an operator upgrading them (SIGTERM) or a
//! crash (SIGKILL) would: the next start adopts the containers that still run and reports the
//! ends it missed, so the job goes on as if nothing happened (YARN's NodeManager recovery).

mod support;

use std::time::Duration;

use spindle_protocol::{AppState, ExitReason, FinalStatus};
use support::{Db, TestCluster, shell_job, task_lines, wait_for_app_end, wait_for_containers_to_end, wait_until};

const JOB_TIMEOUT: Duration = Duration::from_secs(90);

/// One agent runs a job's AM and its tasks; it is stopped gracefully, then killed -9, each
/// time while tasks run, and started again at once. Some tasks end while it is down. The job
/// succeeds, each task ran exactly once, its AM attempt is the first, and every container
/// ended with success: none was killed or counted as failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restarted_under_a_running_job_keeps_its_containers() {
    // The agent is away for a few seconds at most; on a loaded machine (the whole suite on two
    // cores) the 3 s of the other tests would make its node LOST, which is another test.
    let mut cluster = TestCluster::start_with_node_expiry(Db::Sqlite, 15).await;
    cluster.start_agent(4, 4096).await;
    let admin = cluster.admin();

    let ran = cluster.path().join("ran.txt");
    let ended = cluster.path().join("ended.txt");
    // Tasks of 1.5 s, three at a time: restarts land mid-task, and some tasks end while no
    // agent runs.
    let script = format!(
        "echo $SPINDLE_TASK_INDEX >> {}; sleep 1.5; echo $SPINDLE_TASK_INDEX >> {}",
        ran.display(),
        ended.display()
    );
    let app_id = admin.submit(&shell_job("restarts", &script, 9, 64, 3)).await.unwrap();
    wait_until(Duration::from_secs(30), "2 tasks to have started", || async {
        (task_lines(&ran).len() >= 2).then_some(())
    })
    .await;

    cluster.restart_agent(0, true).await;
    wait_until(Duration::from_secs(30), "5 tasks to have started", || async {
        (task_lines(&ran).len() >= 5).then_some(())
    })
    .await;
    cluster.agents[0].daemon.kill9();
    // Down for a second: a task or two end meanwhile.
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.restart_agent(0, false).await;

    let report = wait_for_app_end(&admin, app_id, JOB_TIMEOUT).await;
    assert_eq!(
        (report.state, report.final_status),
        (AppState::Finished, FinalStatus::Succeeded),
        "{report:?}"
    );
    let expected: Vec<String> = (0..9).map(|index| index.to_string()).collect();
    assert_eq!(task_lines(&ran), expected, "each task started exactly once");
    assert_eq!(task_lines(&ended), expected, "each task ran to its end");
    assert_eq!(
        report.attempts.len(),
        1,
        "the AM was adopted, not restarted: {:#?}",
        report.attempts
    );
    for container in wait_for_containers_to_end(&admin, app_id).await {
        assert_eq!(
            container.exit_reason,
            Some(ExitReason::Success),
            "no container was killed or failed: {container:?}"
        );
    }
    let logs = cluster.agents[0].daemon.logs();
    assert!(logs.contains("adopted the containers of the previous agent process"), "{logs}");
}

/// An agent that stays away past the node expiry comes back to an RM that has given its
/// containers up (NODE_LOST, their work re-run elsewhere): the containers it adopts are killed
/// at its registration, so no stale copy runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_back_after_the_node_expiry_kills_the_containers_it_adopted() {
    let mut cluster = TestCluster::start(Db::Sqlite).await;
    cluster.start_agent(2, 4096).await;
    let admin = cluster.admin();
    let pids = cluster.path().join("pids.txt");
    let script = format!("echo $$ >> {}; exec sleep 600", pids.display());
    let app_id = admin.submit(&shell_job("long", &script, 1, 64, 1)).await.unwrap();
    let pid: i32 = wait_until(Duration::from_secs(30), "the task to run", || async {
        task_lines(&pids).first().and_then(|line| line.parse().ok())
    })
    .await;
    cluster.agents[0].daemon.kill9();
    let node = cluster.node_id(0).clone();
    wait_until(Duration::from_secs(30), "the node to be LOST", || async {
        (admin.node(&node).await.ok()?.state == spindle_protocol::NodeState::Lost).then_some(())
    })
    .await;
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    assert_eq!(unsafe { libc::kill(pid, 0) }, 0, "the task outlived its agent");
    cluster.restart_agent(0, false).await;
    wait_until(Duration::from_secs(30), "the stale task to be killed", || async {
        // SAFETY: as above.
        (unsafe { libc::kill(pid, 0) } != 0).then_some(())
    })
    .await;
    admin.kill(app_id).await.unwrap();
}
