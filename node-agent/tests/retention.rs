//! Retention of container directories: finished containers' directories go once `log_retention`
//! is over (and their logs then answer 404 saying so), running containers' directories stay,
//! and directories an earlier agent process left are judged by their modification time.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use common::{StubRm, TestAgent, container_id, eventually};
use spindle_protocol::{ContainerState, ErrorBody, ExitReason};

/// Short enough for fast tests; the sweep then runs every 75 ms.
const RETENTION: Duration = Duration::from_millis(300);

async fn wait_until_gone(path: &Path) {
    let what = format!("{} to be removed", path.display());
    eventually(&what, || async { (!path.exists()).then_some(()) }).await;
}

/// `GET …/logs/{stream}` with the RM's bearer: status and error body.
async fn log_error(agent: &TestAgent, seq: u64, stream: &str) -> (u16, ErrorBody) {
    let answer = spindle_protocol::tls::client_builder()
        .build()
        .expect("an HTTP client")
        .get(format!(
            "http://{}/v1/containers/{}/logs/{stream}",
            agent.address,
            container_id(seq)
        ))
        .bearer_auth(agent.rm_bearer())
        .send()
        .await
        .unwrap();
    (answer.status().as_u16(), answer.json().await.unwrap())
}

fn app_dir(agent: &TestAgent) -> PathBuf {
    agent.work_dir.join("apps").join(container_id(1).app.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_containers_directory_goes_after_the_retention_and_its_logs_say_so() {
    // With an RM that acknowledges completions: acknowledged containers' directories go too.
    let rm = StubRm::start().await;
    let agent = TestAgent::start(&rm.url, |config| config.log_retention = RETENTION).await.unwrap();
    let launched = Instant::now();
    agent.launch(1, 64, &["sh", "-c", "echo out; echo err >&2"]).await.unwrap();
    let done = agent.wait_complete(container_id(1)).await;
    assert_eq!(done.exit_reason, Some(ExitReason::Success));
    rm.wait_for_heartbeat("the completion reported (and acknowledged)", |heartbeat| {
        heartbeat
            .containers
            .iter()
            .any(|status| status.container_id == container_id(1) && status.state == ContainerState::Complete)
    })
    .await;

    wait_until_gone(&agent.container_dir(1)).await;
    assert!(launched.elapsed() >= RETENTION, "removed before its retention was over");
    // The app directory held only this container.
    wait_until_gone(&app_dir(&agent)).await;

    for stream in ["stdout", "stderr"] {
        let (status, body) = log_error(&agent, 1, stream).await;
        assert_eq!((status, body.error.code.as_str()), (404, "logs_removed"), "{}", body.error.message);
        assert!(
            body.error.message.contains("removed after the retention period"),
            "{}",
            body.error.message
        );
        assert!(body.error.message.contains("--log-retention-s"), "{}", body.error.message);
    }
    // The record outlives the files: the status still says how it ended.
    assert_eq!(agent.admin().status(container_id(1)).await.unwrap(), done);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_containers_directory_stays_through_sweeps() {
    let agent = TestAgent::start_without_rm(|config| config.log_retention = RETENTION).await;
    agent.launch(1, 64, &["sleep", "5"]).await.unwrap();
    agent.launch(2, 64, &["true"]).await.unwrap();
    agent.wait_complete(container_id(2)).await;
    // Sweeps are running: the finished sibling in the same app goes.
    wait_until_gone(&agent.container_dir(2)).await;

    // Four retention periods: about sixteen more sweeps.
    tokio::time::sleep(RETENTION * 4).await;
    let dir = agent.container_dir(1);
    let age = SystemTime::now()
        .duration_since(std::fs::metadata(&dir).unwrap().modified().unwrap())
        .unwrap_or_default();
    // By its age alone the directory would be gone: the running record is what keeps it.
    assert!(age >= RETENTION, "the directory is only {age:?} old");
    assert!(dir.join("stdout").exists() && dir.join("stderr").exists());
    assert_eq!(agent.admin().status(container_id(1)).await.unwrap().state, ContainerState::Running);

    // Once it ends, its retention starts; then the emptied app directory goes too.
    let before_end = Instant::now();
    let stopped = agent.admin().stop(container_id(1)).await.unwrap();
    assert_eq!(stopped.exit_reason, Some(ExitReason::KilledByApp));
    wait_until_gone(&dir).await;
    assert!(before_end.elapsed() >= RETENTION, "removed before its retention was over");
    wait_until_gone(&app_dir(&agent)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_left_by_an_earlier_agent_go_by_their_age_at_start() {
    let mut old_dir = PathBuf::new();
    let mut young_dir = PathBuf::new();
    let _agent = TestAgent::start_without_rm(|config| {
        config.log_retention = Duration::from_secs(30 * 60);
        let apps = config.work_dir.join("apps");
        old_dir = apps.join("application_1_0001").join("container_e01_1_0001_01_000001");
        young_dir = apps.join("application_1_0002").join("container_e01_1_0002_01_000001");
        for dir in [&old_dir, &young_dir] {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join("stdout"), "left behind\n").unwrap();
        }
        // Last: writing into the directory would refresh its time again.
        let touched = std::process::Command::new("touch")
            .args(["-d", "1 hour ago"])
            .arg(&old_dir)
            .status()
            .unwrap();
        assert!(touched.success());
    })
    .await;

    wait_until_gone(&old_dir).await;
    wait_until_gone(old_dir.parent().unwrap()).await;
    // Judged in the same start-up sweep: a directory younger than the retention stays.
    assert!(young_dir.join("stdout").exists());
}
