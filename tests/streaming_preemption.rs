//! A streaming job that borrowed idle capacity gives it back by scaling down, not by failing:
//! when another queue needs its guarantee, the RM's preemption notices name the stream job's
//! newest workers, the AM retires the window instances on them (a live rescale) and hands the
//! workers back before the grace period ends. The job never restarts, no container of it is
//! killed by preemption, and its output stays exact.

mod support;

use std::time::Duration;

use spindle_cli::local::{LocalCluster, LocalOptions};
use spindle_protocol::{AppState, ExitReason, FinalStatus, JobSpec, Resources, RmClient};
use spindle_stream::ops::generator::expected_window_counts;
use support::{CleanupDir, shell_job, stream_detail, wait_for_app_end, wait_for_checkpoint, wait_until};

const ALICE_TOKEN: &str = "alice-token-0123456789";
const BOB_TOKEN: &str = "bob-token-0123456789ab";
/// Short, so the test is quick; the RM's default is 15 s.
const GRACE_S: u64 = 3;

fn rm_config() -> String {
    format!(
        "[scheduler]\npreemption_grace = {GRACE_S}\n\
         [[users]]\nname = \"alice\"\ntoken = \"{ALICE_TOKEN}\"\n\
         [[users]]\nname = \"bob\"\ntoken = \"{BOB_TOKEN}\"\n\
         [queues]\nname = \"root\"\n\
         [[queues.children]]\nname = \"streams\"\nguaranteed_percent = 50\nam_share_percent = 50\nsubmit_users = [\"alice\"]\n\
         [[queues.children]]\nname = \"batch\"\nguaranteed_percent = 50\nam_share_percent = 50\nsubmit_users = [\"bob\"]\n"
    )
}

/// One generator → key_by → a window `count` of 5 instances → files: 6 workers... of which the
/// 4 newest host only a window instance.
fn stream_job(dir: &std::path::Path) -> JobSpec {
    let toml = format!(
        r#"
name = "borrower"
queue = "streams"
kind = "stream"
[stream]
checkpoint_interval_ms = 500
checkpoint_dir = {checkpoints:?}
worker = {{ vcores = 1, memory_mb = 256 }}
[[stream.operators]]
name = "events"
kind = "generator"
rate = 5000
keys = 100
seed = 11
limit = 100000
[[stream.operators]]
name = "by_key"
kind = "key_by"
input = ["events"]
expr = "$1"
[[stream.operators]]
name = "count"
kind = "window"
input = ["by_key"]
parallelism = 5
size_ms = 1000
aggregate = "count"
[[stream.operators]]
name = "out"
kind = "file_sink"
input = ["count"]
path = {out:?}
"#,
        checkpoints = dir.join("checkpoints").display().to_string(),
        out = dir.join("out").display().to_string(),
    );
    toml::from_str(&toml).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preempted_streaming_job_scales_down_instead_of_failing() {
    let dir = support::shared_tempdir("spindle-test-");
    let _cleanup = CleanupDir(dir.path());
    let config = dir.path().join("rm.toml");
    std::fs::write(&config, rm_config()).unwrap();
    let mut options = LocalOptions::new(dir.path().join("local")).expect("local options");
    options.agents = 2;
    options.agent_capacity = Some(Resources::new(4, 4096));
    options.spindle_bin = support::spindle_bin();
    options.rm_config = Some(config);
    let cluster = LocalCluster::start(options).await.expect("the local cluster starts");
    let urls = std::slice::from_ref(&cluster.rm_url);
    let alice = RmClient::new(urls, Some(ALICE_TOKEN.to_owned()));
    let bob = RmClient::new(urls, Some(BOB_TOKEN.to_owned()));

    // The stream job takes 6 of the 8 vcores (AM + 5 workers): 2 beyond its queue's guarantee.
    let spec = stream_job(dir.path());
    let app_id = alice.submit(&spec).await.unwrap();
    wait_for_checkpoint(&alice, app_id, 0, 0, "a first checkpoint").await;

    // Batch wants its guarantee (4 vcores) while 2 are free: 2 of the stream's workers must go.
    let mut batch = shell_job("etl", "sleep 8", 4, 128, 0);
    batch.queue = "batch".to_owned();
    let batch_id = bob.submit(&batch).await.unwrap();
    let shrunk = wait_until(Duration::from_secs(30), "the window to scale down", || async {
        let detail = stream_detail(&alice, app_id).await?;
        let count = detail.operators.iter().find(|op| op.name == "count")?;
        (count.parallelism == 3 && detail.last_rescale.as_ref()?.finished_at_ms.is_some()).then_some(detail)
    })
    .await;
    eprintln!("scaled down under preemption: {:?}", shrunk.last_rescale);

    let batch_report = wait_for_app_end(&bob, batch_id, Duration::from_secs(60)).await;
    assert_eq!(batch_report.final_status, FinalStatus::Succeeded, "{batch_report:#?}");
    let report = wait_for_app_end(&alice, app_id, Duration::from_secs(90)).await;
    assert_eq!(
        (report.state, report.final_status),
        (AppState::Finished, FinalStatus::Succeeded),
        "{report:#?}"
    );
    let detail = report.detail.and_then(|detail| detail.stream()).unwrap();
    assert_eq!(
        detail.restarts, 0,
        "a preemption notice is answered by scaling down, not by failing"
    );
    let preempted: Vec<_> = alice
        .containers(app_id)
        .await
        .unwrap()
        .into_iter()
        .filter(|container| container.exit_reason == Some(ExitReason::Preempted))
        .map(|container| container.container_id)
        .collect();
    assert!(preempted.is_empty(), "workers were handed back before the kill: {preempted:?}");

    let expected = expected_window_counts(11, 1, 100, 100_000, 5000, 1000);
    let mut committed = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(dir.path().join("out")).unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with("part-") {
            for line in std::fs::read_to_string(entry.path()).unwrap().lines() {
                let fields: Vec<&str> = line.split('\t').collect();
                let key = (fields[0].to_owned(), fields[1].parse::<i64>().unwrap());
                assert!(committed.insert(key, fields[3].parse::<u64>().unwrap()).is_none(), "{line} twice");
            }
        }
    }
    assert_eq!(committed, expected);
    let _ = cluster.shutdown().await;
}
