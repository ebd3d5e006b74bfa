//! The object-store streaming scenario the single-host and the multi-host tests share: a
//! `file_source` over an object prefix → keyed 1 s window → exactly-once `file_sink` on the
//! store, checkpointing to the store too, through a live rescale 2 → 4 and a `kill -9` of a
//! worker; objects are added before the job, after the rescale, and after the kill.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use spindle_protocol::{AppId, ContainerId, ContainerState, JobSpec, OperatorKind, OperatorSpec, RmClient};
use spindle_storage::{ObjectUrl, S3Settings};

/// Counts per (key, 1 s window) of what the scenario's objects hold.
type Windows = BTreeMap<(String, i64), u64>;

/// Object `i`: 40,000 lines `k<n % 50> <time>` spanning 10 s from i × 10 s; counted into
/// `expected`.
fn object_text(i: u64, expected: &mut Windows) -> String {
    let mut text = String::new();
    for j in 0..40_000u64 {
        let (key, time) = (format!("k{}", (i * 7 + j) % 50), (i * 10_000 + j / 4) as i64);
        *expected.entry((key.clone(), time - time % 1000)).or_default() += 1;
        text.push_str(&format!("{key} {time}\n"));
    }
    text
}

/// The exactly-once example reading `root/in`, writing `root/out` and checkpointing to
/// `root/checkpoints`, with the job's store settings `env`.
pub fn object_source_job(root: &str, env: &BTreeMap<String, String>, dir: &Path) -> JobSpec {
    let mut spec = super::example_job("stream-exactly-once.toml", dir);
    *super::operator_mut(&mut spec, "events") = OperatorSpec {
        name: "events".into(),
        kind: Some(OperatorKind::FileSource),
        parallelism: 1,
        path: Some(format!("{root}/in")),
        time_field: Some("$2".into()),
        ..Default::default()
    };
    super::operator_mut(&mut spec, "out").path = Some(format!("{root}/out"));
    let stream = spec.stream.as_mut().unwrap();
    stream.env = env.clone();
    stream.checkpoint_dir = Some(format!("{root}/checkpoints"));
    spec.validate().unwrap();
    spec
}

/// Runs the scenario on a cluster `client` reaches, whose agents work in `agent_dirs`; `dir`
/// is scratch space of the test. Kills the job at the end and deletes everything under `root`.
pub async fn run_object_source_scenario(client: &RmClient, env: &BTreeMap<String, String>, root: &str, agent_dirs: &[PathBuf], dir: &Path) {
    let settings = S3Settings::from_env(env);
    let open = |url: &str| ObjectUrl::parse(url, &settings).unwrap();
    let input = open(&format!("{root}/in"));
    let mut expected = Windows::new();
    for i in 0..3 {
        let text = object_text(i, &mut expected);
        input.child(&format!("part-{i}.txt")).put(text).await.unwrap();
    }
    let app_id = client.submit(&object_source_job(root, env, dir)).await.unwrap();
    super::wait_for_checkpoint(client, app_id, 0, 0, "a first checkpoint").await;
    client.scale_operator(app_id, "count", 4).await.unwrap();
    super::wait_until(Duration::from_secs(60), "the rescale to 4", || async {
        let detail = super::stream_detail(client, app_id).await?;
        detail.last_rescale.filter(|r| r.to == 4 && r.finished_at_ms.is_some())
    })
    .await;
    for i in 3..5 {
        let text = object_text(i, &mut expected);
        input.child(&format!("part-{i}.txt")).put(text).await.unwrap();
    }
    let victim = super::wait_until(Duration::from_secs(30), "a running worker", || async {
        super::task_containers(client, app_id)
            .await
            .into_iter()
            .filter(|c| c.state == ContainerState::Running)
            .map(|c| c.container_id)
            .next_back()
    })
    .await;
    super::kill_processes_under(&container_dir(agent_dirs, app_id, victim));
    input.child("part-9.txt").put("sentinel 999999\n").await.unwrap();

    let out = open(&format!("{root}/out"));
    let local = dir.join("downloaded");
    let committed = super::wait_until(Duration::from_secs(120), "every window committed", || async {
        let _ = std::fs::remove_dir_all(&local);
        std::fs::create_dir_all(&local).unwrap();
        for entry in out.list().await.ok()? {
            let name = entry.key.rsplit('/').next().unwrap().to_owned();
            assert!(name.starts_with("part-out-"), "only committed parts are visible: {}", entry.key);
            std::fs::write(local.join(&name), out.at(&entry.key).get().await.ok()?).unwrap();
        }
        let committed = super::committed_windows(&local);
        (committed.len() >= expected.len()).then_some(committed)
    })
    .await;
    assert_eq!(committed.len(), expected.len());
    super::assert_exact(&local, &expected);
    // The job checkpointed to the store: completed checkpoints are there, metadata and all.
    let checkpoints = open(&format!("{root}/checkpoints/{app_id}")).list().await.unwrap();
    assert!(
        checkpoints.iter().any(|entry| entry.key.ends_with("/_metadata.json")),
        "checkpoint metadata on the store: {checkpoints:?}"
    );
    client.kill(app_id).await.unwrap();
    super::wait_for_app_end(client, app_id, Duration::from_secs(30)).await;
    open(root).delete_all().await.unwrap();
}

/// The directory of `container` under one of the agents' work dirs.
fn container_dir(agent_dirs: &[PathBuf], app_id: AppId, container: ContainerId) -> PathBuf {
    agent_dirs
        .iter()
        .map(|agent| agent.join("apps").join(app_id.to_string()).join(container.to_string()))
        .find(|dir| dir.is_dir())
        .unwrap_or_else(|| panic!("no directory of {container} under {agent_dirs:?}"))
}
