//! MapReduce jobs end to end on a local cluster (real RM, agents, AM and task processes):
//! word count with built-ins and with streaming scripts, checked against a reference.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use spindle_cli::local::{LocalCluster, LocalOptions};
use spindle_protocol::{AppState, FinalStatus, JobSpec, Resources};
use support::wait_for_app_end;

async fn start_local(dir: &Path) -> LocalCluster {
    let mut options = LocalOptions::new(dir.join("local")).expect("local options");
    options.agents = 2;
    options.agent_capacity = Some(Resources::new(4, 8192));
    options.spindle_bin = support::spindle_bin();
    LocalCluster::start(options).await.expect("the local cluster starts")
}

/// Deterministic text over a small vocabulary, in two files, and its word counts.
fn write_text(dir: &Path) -> BTreeMap<String, u64> {
    std::fs::create_dir_all(dir).unwrap();
    let words = [
        "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
    ];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut counts = BTreeMap::new();
    for file in 0..2 {
        let mut text = String::new();
        for line in 0..30_000 {
            for position in 0..(1 + line % 7) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let word = words[(state % words.len() as u64) as usize];
                if position > 0 {
                    text.push(if state.is_multiple_of(5) { '\t' } else { ' ' });
                }
                text.push_str(word);
                *counts.entry(word.to_owned()).or_insert(0) += 1;
            }
            text.push('\n');
        }
        std::fs::write(dir.join(format!("part-{file}.txt")), text).unwrap();
    }
    counts
}

/// Every `key<TAB>count` line of the job's part files.
fn read_counts(output: &Path) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for entry in std::fs::read_dir(output).unwrap() {
        let path = entry.unwrap().path();
        if !path.file_name().unwrap().to_string_lossy().starts_with("part-r-") {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let (word, count) = line.split_once('\t').unwrap_or_else(|| panic!("{line:?} in {}", path.display()));
            assert!(
                counts.insert(word.to_owned(), count.parse::<u64>().unwrap()).is_none(),
                "{word} twice"
            );
        }
    }
    counts
}

fn wordcount_job(input: &Path, output: &Path, mapper: &str, combiner: Option<&str>, reducer: &str) -> JobSpec {
    let mut mapreduce = serde_json::json!({
        "input": [input.display().to_string()],
        "output": output.display().to_string(),
        "mapper": mapper,
        "reducer": reducer,
        "reducers": 2,
        "split_size_mb": 1,
        "map": {"vcores": 1, "memory_mb": 256},
        "reduce": {"vcores": 1, "memory_mb": 256},
        "sort_buffer_mb": 16,
    });
    if let Some(combiner) = combiner {
        mapreduce["combiner"] = combiner.into();
    }
    serde_json::from_value(serde_json::json!({"name": "wordcount", "kind": "mapreduce", "mapreduce": mapreduce})).expect("a valid job")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn word_count_with_builtins_and_with_streaming_scripts_matches_the_reference() {
    let dir = tempfile::Builder::new().prefix("spindle-mapreduce-").tempdir().unwrap();
    let _cleanup = support::CleanupDir(dir.path());
    let expected = write_text(&dir.path().join("input"));
    let cluster = start_local(dir.path()).await;
    let client = cluster.client();

    let builtins = dir.path().join("out-builtins");
    let spec = wordcount_job(&dir.path().join("input"), &builtins, "wordcount", Some("sum"), "sum");
    let app = client.submit(&spec).await.unwrap();
    let report = wait_for_app_end(&client, app, Duration::from_secs(120)).await;
    assert_eq!(
        (report.state, report.final_status),
        (AppState::Finished, FinalStatus::Succeeded),
        "{report:#?}"
    );
    assert!(builtins.join("_SUCCESS").exists());
    assert_eq!(read_counts(&builtins), expected);

    // Hadoop Streaming: any executable reading lines on stdin and writing key<TAB>value lines.
    let streaming = dir.path().join("out-streaming");
    let mapper = "awk '{ for (i = 1; i <= NF; i++) print $i \"\\t1\" }'";
    let reducer = "awk -F'\\t' '{ sum[$1] += $2 } END { for (w in sum) print w \"\\t\" sum[w] }'";
    let spec = wordcount_job(&dir.path().join("input"), &streaming, mapper, None, reducer);
    let app = client.submit(&spec).await.unwrap();
    let report = wait_for_app_end(&client, app, Duration::from_secs(120)).await;
    assert_eq!(
        (report.state, report.final_status),
        (AppState::Finished, FinalStatus::Succeeded),
        "{report:#?}"
    );
    assert_eq!(read_counts(&streaming), expected);

    // An existing output is refused unless overwrite: the job fails, saying why, and the old
    // output is untouched.
    let spec = wordcount_job(&dir.path().join("input"), &builtins, "wordcount", Some("sum"), "sum");
    let app = client.submit(&spec).await.unwrap();
    let report = wait_for_app_end(&client, app, Duration::from_secs(60)).await;
    assert_eq!(report.final_status, FinalStatus::Failed, "{report:#?}");
    assert!(report.diagnostics.contains("already exists"), "{}", report.diagnostics);
    assert_eq!(read_counts(&builtins), expected);
    cluster.shutdown().await.expect("the local cluster stops cleanly");
}
