//! Speculative execution end to end: the first map attempt to start sleeps (a straggler on
//! purpose); with speculation the AM runs a second attempt elsewhere and the job ends much
//! sooner than with speculation off. Both runs give the exact word counts.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use spindle_cli::local::{LocalCluster, LocalOptions};
use spindle_protocol::{AppState, FinalStatus, JobSpec, Resources, RmClient};
use support::{read_counts, wait_for_app_end};

/// How long the straggler sleeps: far beyond the 5 s a task must run before it may be speculated.
const STRAGGLE_S: u64 = 25;

fn write_input(dir: &Path) -> BTreeMap<String, u64> {
    std::fs::create_dir_all(dir).unwrap();
    let mut counts = BTreeMap::new();
    for file in 0..4 {
        let mut text = String::new();
        for line in 0..20_000u64 {
            let word = format!("w{}", (line * 7 + file) % 97);
            text.push_str(&word);
            text.push_str(" common\n");
            *counts.entry(word).or_insert(0) += 1;
            *counts.entry("common".to_owned()).or_insert(0) += 1;
        }
        std::fs::write(dir.join(format!("part-{file}.txt")), text).unwrap();
    }
    counts
}

/// Word count whose mapper sleeps in the first attempt that takes the marker directory (made
/// atomically by `mkdir`); every other attempt, a speculative one included, runs at once.
fn straggling_job(input: &Path, output: &Path, marker: &Path, speculation: bool) -> JobSpec {
    let mapper = format!(
        "if mkdir {} 2>/dev/null; then sleep {STRAGGLE_S}; fi; awk '{{ for (i = 1; i <= NF; i++) print $i \"\\t1\" }}'",
        marker.display()
    );
    serde_json::from_value(serde_json::json!({
        "name": "straggler",
        "kind": "mapreduce",
        "mapreduce": {
            "input": [input.display().to_string()],
            "output": output.display().to_string(),
            "mapper": mapper,
            "combiner": "sum",
            "reducer": "sum",
            "reducers": 1,
            "map": {"vcores": 1, "memory_mb": 256},
            "reduce": {"vcores": 1, "memory_mb": 256},
            "sort_buffer_mb": 16,
            "speculation": speculation,
        }
    }))
    .expect("a valid job")
}

async fn run(client: &RmClient, spec: &JobSpec) -> (Duration, spindle_protocol::AppReport) {
    let started = Instant::now();
    let app = client.submit(spec).await.unwrap();
    let report = wait_for_app_end(client, app, Duration::from_secs(120)).await;
    (started.elapsed(), report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_straggling_map_is_speculated_and_the_job_ends_sooner_than_without_speculation() {
    let dir = support::shared_tempdir("spindle-speculation-");
    let _cleanup = support::CleanupDir(dir.path());
    let expected = write_input(&dir.path().join("input"));
    let mut options = LocalOptions::new(dir.path().join("local")).expect("local options");
    options.agents = 2;
    options.agent_capacity = Some(Resources::new(4, 8192));
    options.spindle_bin = support::spindle_bin();
    let cluster = LocalCluster::start(options).await.expect("the local cluster starts");
    let client = cluster.client();

    let fast_output = dir.path().join("out-speculation");
    let spec = straggling_job(&dir.path().join("input"), &fast_output, &dir.path().join("marker-1"), true);
    let (with_speculation, report) = run(&client, &spec).await;
    assert_eq!(
        (report.state, report.final_status),
        (AppState::Finished, FinalStatus::Succeeded),
        "{report:#?}"
    );
    assert_eq!(read_counts(&fast_output), expected);
    let speculated = report
        .detail
        .as_ref()
        .and_then(|detail| detail.counters.get("speculative_attempts").copied())
        .unwrap_or_default();
    assert!(speculated >= 1, "a speculative attempt ran: {:#?}", report.detail);

    let slow_output = dir.path().join("out-no-speculation");
    let spec = straggling_job(&dir.path().join("input"), &slow_output, &dir.path().join("marker-2"), false);
    let (without_speculation, report) = run(&client, &spec).await;
    assert_eq!(report.final_status, FinalStatus::Succeeded, "{report:#?}");
    assert_eq!(read_counts(&slow_output), expected);

    eprintln!("with speculation {with_speculation:?}, without {without_speculation:?}");
    assert!(
        without_speculation >= Duration::from_secs(STRAGGLE_S),
        "the straggler held the job back"
    );
    assert!(
        with_speculation + Duration::from_secs(5) < without_speculation,
        "speculation ended the job sooner: {with_speculation:?} vs {without_speculation:?}"
    );
    cluster.shutdown().await.expect("the local cluster stops cleanly");
}
