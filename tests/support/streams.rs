//! What the streaming and MapReduce tests share: a local 2-agent cluster in a test's directory,
//! polling a stream job's detail for checkpoints, and the exactly-once example with what its
//! committed output must be.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use spindle_cli::local::{LocalCluster, LocalOptions};
use spindle_protocol::{AppId, ContainerId, JobSpec, OperatorSpec, Resources, RmClient, StreamDetail};
use spindle_stream::ops::generator::expected_window_counts;

/// `spindle local` in-process: an RM and 2 agents of 4 vcores and 8 GB each, under `dir`.
pub async fn start_local(dir: &Path) -> LocalCluster {
    let mut options = LocalOptions::new(dir.join("local")).expect("local options");
    options.agents = 2;
    options.agent_capacity = Some(Resources::new(4, 8192));
    options.spindle_bin = super::spindle_bin();
    LocalCluster::start(options).await.expect("the local cluster starts")
}

/// The directory of `container` of a local cluster's app (the agents of `start_local`).
pub fn local_container_dir(work_root: &Path, app_id: AppId, container: ContainerId) -> PathBuf {
    (0..2)
        .map(|agent| {
            work_root
                .join(format!("agent-{agent}"))
                .join("apps")
                .join(app_id.to_string())
                .join(container.to_string())
        })
        .find(|dir| dir.is_dir())
        .unwrap_or_else(|| panic!("no directory of {container} under {}", work_root.display()))
}

/// The stream job's detail; panics if the job has ended (the caller waits for it running).
pub async fn stream_detail(client: &RmClient, app_id: AppId) -> Option<StreamDetail> {
    let report = client.app(app_id).await.ok()?;
    assert!(!report.state.is_terminal(), "the job ended early: {report:#?}");
    report.detail?.stream()
}

/// Waits for a checkpoint newer than `after` with at least `restarts` restarts behind it.
pub async fn wait_for_checkpoint(client: &RmClient, app_id: AppId, after: u64, restarts: u32, what: &str) -> u64 {
    super::wait_until(Duration::from_secs(60), what, || async {
        let detail = stream_detail(client, app_id).await?;
        let id = detail.last_checkpoint?.id;
        (id > after && detail.restarts >= restarts).then_some(id)
    })
    .await
}

/// The exactly-once example with its output and checkpoints in `dir`.
pub fn example_job(name: &str, dir: &Path) -> JobSpec {
    let text = std::fs::read_to_string(super::examples_dir().join(name)).unwrap();
    let mut spec: JobSpec = toml::from_str(&text).unwrap();
    let stream = spec.stream.as_mut().unwrap();
    stream.checkpoint_dir = Some(dir.join("checkpoints").display().to_string());
    for operator in &mut stream.operators {
        if operator.path.is_some() {
            operator.path = Some(dir.join("out").display().to_string());
        }
    }
    spec.validate().unwrap();
    spec
}

/// The operator `name` of a stream job's spec, to change before submitting it.
pub fn operator_mut<'a>(spec: &'a mut JobSpec, name: &str) -> &'a mut OperatorSpec {
    let stream = spec.stream.as_mut().expect("a stream job");
    stream
        .operators
        .iter_mut()
        .find(|op| op.name == name)
        .unwrap_or_else(|| panic!("no operator {name}"))
}

/// What the job's generators produce, counted per key and 1 s window.
pub fn expected(spec: &JobSpec) -> BTreeMap<(String, i64), u64> {
    let stream = spec.stream.as_ref().unwrap();
    let generator = stream.operators.iter().find(|op| op.name == "events").unwrap();
    let event_rate = generator.event_rate.or(generator.rate).unwrap_or(1_000_000);
    expected_window_counts(
        generator.seed.unwrap_or(0),
        generator.parallelism,
        generator.keys.unwrap_or(1000),
        generator.limit.unwrap(),
        event_rate,
        1000,
    )
}

/// Every committed `key<TAB>start<TAB>end<TAB>count` line; a (key, window) twice fails.
pub fn committed_windows(out: &Path) -> BTreeMap<(String, i64), u64> {
    let mut windows = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(out) else { return windows };
    for entry in entries.flatten() {
        let path = entry.path();
        if !entry.file_name().to_string_lossy().starts_with("part-") {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let fields: Vec<&str> = line.split('\t').collect();
            assert_eq!(fields.len(), 4, "{line:?} in {}", path.display());
            let key = (fields[0].to_owned(), fields[1].parse::<i64>().unwrap());
            let count = fields[3].parse::<u64>().unwrap();
            assert!(
                windows.insert(key.clone(), count).is_none(),
                "{key:?} committed twice (in {})",
                path.display()
            );
        }
    }
    windows
}

pub fn assert_exact(out: &Path, expected: &BTreeMap<(String, i64), u64>) {
    let committed = committed_windows(out);
    let missing: Vec<_> = expected.keys().filter(|key| !committed.contains_key(*key)).take(5).collect();
    let extra: Vec<_> = committed.keys().filter(|key| !expected.contains_key(*key)).take(5).collect();
    let wrong: Vec<_> = expected
        .iter()
        .filter(|(key, count)| committed.get(*key).is_some_and(|c| c != *count))
        .take(5)
        .map(|(key, count)| (key.clone(), *count, committed[key]))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && wrong.is_empty(),
        "{} windows expected, {} committed; missing {missing:?}, extra {extra:?}, wrong (key, expected, got) {wrong:?}",
        expected.len(),
        committed.len()
    );
}
