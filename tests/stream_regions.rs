//! Regional recovery end to end, with real AM and worker processes: `kill -9` of one worker of
//! `examples/stream-parallel-etl.toml` (three forward pipelines, so three failover regions, one
//! per worker) restarts that region alone, on a replacement worker, from the latest checkpoint;
//! the other regions' instances run on in their containers, and the committed output holds
//! every generated record exactly once.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use spindle_protocol::{AppState, ContainerId, FinalStatus, JobSpec, StreamDetail};
use spindle_stream::ops::generator::{event, write_line};
use support::{
    CleanupDir, example_job, kill_processes_under, local_container_dir, start_local, stream_detail, wait_for_app_end, wait_for_checkpoint,
};

/// Every line the generators of `spec` produce that passes `$2 > 100`, with its multiplicity.
fn expected_lines(spec: &JobSpec) -> BTreeMap<Vec<u8>, u64> {
    let stream = spec.stream.as_ref().unwrap();
    let generator = stream.operators.iter().find(|op| op.name == "events").unwrap();
    let mut lines = BTreeMap::new();
    for instance in 0..generator.parallelism {
        for n in 0..generator.limit.unwrap() {
            let (key, value) = event(generator.seed.unwrap(), instance, n, generator.keys.unwrap());
            if value > 100 {
                let mut line = Vec::new();
                write_line(&mut line, key, value);
                *lines.entry(line).or_insert(0) += 1;
            }
        }
    }
    lines
}

/// Every committed line of the file sink's output, with its multiplicity.
fn committed_lines(out: &Path) -> BTreeMap<Vec<u8>, u64> {
    let mut lines = BTreeMap::new();
    for entry in std::fs::read_dir(out).unwrap().flatten() {
        if !entry.file_name().to_string_lossy().starts_with("part-") {
            continue;
        }
        for line in std::fs::read(entry.path())
            .unwrap()
            .split(|&b| b == b'\n')
            .filter(|line| !line.is_empty())
        {
            *lines.entry(line.to_vec()).or_insert(0) += 1;
        }
    }
    lines
}

/// The container of each instance of `operator`, by index.
fn containers_of(detail: &StreamDetail, operator: &str) -> Vec<Option<ContainerId>> {
    let operator = detail.operators.iter().find(|op| op.name == operator).unwrap();
    operator.instances.iter().map(|instance| instance.container_id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_worker_restarts_only_its_region_and_the_output_stays_exact() {
    let dir = support::shared_tempdir("spindle-test-");
    let cluster = start_local(dir.path()).await;
    let _cleanup = CleanupDir(dir.path());
    let work_root = cluster.work_root.clone();
    let _cleanup_containers = CleanupDir(&work_root);
    let client = cluster.client();
    let started = Instant::now();
    let spec = example_job("stream-parallel-etl.toml", dir.path());
    let expected = expected_lines(&spec);
    let app_id = client.submit(&spec).await.unwrap();
    wait_for_checkpoint(&client, app_id, 0, 0, "a first checkpoint").await;

    let before = stream_detail(&client, app_id).await.unwrap();
    let workers = containers_of(&before, "events");
    assert_eq!(workers.len(), 3);
    assert_eq!(containers_of(&before, "out"), workers, "instance i of each operator on worker i");
    let victim = workers[1].expect("placed");
    eprintln!("{:.1}s: kill -9 worker {victim} (region 1)", started.elapsed().as_secs_f64());
    kill_processes_under(&local_container_dir(&work_root, app_id, victim));

    let report = wait_for_app_end(&client, app_id, Duration::from_secs(120)).await;
    eprintln!("{:.1}s: the job ended: {}", started.elapsed().as_secs_f64(), report.diagnostics);
    assert_eq!(
        (report.state, report.final_status),
        (AppState::Finished, FinalStatus::Succeeded),
        "{report:#?}"
    );
    let detail = report.detail.as_ref().and_then(|detail| detail.stream()).unwrap();
    assert_eq!(detail.restarts, 1, "{detail:#?}");
    let restart = detail.last_restart.as_ref().unwrap();
    assert_eq!(
        (restart.instances, restart.of_instances),
        (2, 6),
        "the lost worker's generator and sink went back, nothing else: {restart:?}"
    );
    let after = containers_of(&detail, "events");
    assert_eq!(
        (after[0], after[2]),
        (workers[0], workers[2]),
        "the other regions ran on where they were"
    );
    assert_ne!(after[1], workers[1], "region 1 runs on a replacement worker");

    let committed = committed_lines(&dir.path().join("out"));
    let total: u64 = expected.values().sum();
    let missing: Vec<_> = expected
        .iter()
        .filter(|(line, n)| committed.get(*line) != Some(n))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && committed.len() == expected.len(),
        "{total} lines expected, {} committed; first differences (line, expected count): {missing:?}",
        committed.values().sum::<u64>()
    );
    // The totals count every event once: the regions that ran on were not replayed.
    let events = detail.operators.iter().find(|op| op.name == "events").unwrap();
    assert_eq!(events.records_out, total);
    let _ = cluster.shutdown().await;
}
