//! MapReduce jobs end to end, with real AM and task processes: on a local cluster, word count
//! with built-ins and with streaming scripts checked against a reference, and a TeraSort-like
//! total-order sort checked by a validator; on RM and agent processes, a word count that loses
//! an agent to `kill -9` while its reducers run. The jobs are the files of `examples/`, each of
//! which must parse and validate.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use spindle_protocol::{AppState, ContainerId, ContainerState, ExitReason, FinalStatus, JobSpec, NodeId};
use support::{Db, TestCluster, read_counts, run_to_success, start_local, task_containers, wait_for_app_end, wait_until};

/// Deterministic text over a small vocabulary, in `files` files of about 0.7 MB, and its word
/// counts.
fn write_text(dir: &Path, files: usize) -> BTreeMap<String, u64> {
    std::fs::create_dir_all(dir).unwrap();
    let words = [
        "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
    ];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut counts = BTreeMap::new();
    for file in 0..files {
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
    let dir = support::shared_tempdir("spindle-mapreduce-");
    let _cleanup = support::CleanupDir(dir.path());
    let expected = write_text(&dir.path().join("input"), 2);
    let cluster = start_local(dir.path()).await;
    let client = cluster.client();

    let builtins = dir.path().join("out-builtins");
    let spec = example_job("wordcount.toml", &dir.path().join("input"), &builtins);
    let report = run_to_success(&client, &spec, Duration::from_secs(120)).await;
    assert!(builtins.join("_SUCCESS").exists());
    // The AM's counters reach the app report.
    let counters = &report.detail.as_ref().expect("the MapReduce AM reports its detail").counters;
    assert_eq!(counters["map_input_records"], 60_000, "{counters:?}");
    assert_eq!(counters["map_output_records"], expected.values().sum::<u64>(), "{counters:?}");
    assert_eq!(counters["reduce_output_records"], expected.len() as u64, "{counters:?}");
    assert!(counters["shuffle_bytes"] > 0, "{counters:?}");
    assert_eq!(read_counts(&builtins), expected);

    // Hadoop Streaming: any executable reading lines on stdin and writing key<TAB>value lines.
    let streaming = dir.path().join("out-streaming");
    let spec = example_job("streaming-wordcount.toml", &dir.path().join("input"), &streaming);
    run_to_success(&client, &spec, Duration::from_secs(120)).await;
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

/// A job file of `examples/` with its placeholder paths replaced by the test's, and 1 MB splits
/// so that a few MB of input make several maps.
fn example_job(file: &str, input: &Path, output: &Path) -> JobSpec {
    let path = support::examples_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    let mut spec: JobSpec = toml::from_str(&text).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    let mapreduce = spec
        .mapreduce
        .as_mut()
        .unwrap_or_else(|| panic!("{} has no [mapreduce]", path.display()));
    mapreduce.input = vec![input.display().to_string()];
    mapreduce.output = output.display().to_string();
    mapreduce.split_size_mb = 1;
    spec.validate().unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    spec
}

#[test]
fn every_example_job_file_parses_and_validates() {
    let mut mapreduce_examples = Vec::new();
    for entry in std::fs::read_dir(support::examples_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|ext| ext != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let spec: JobSpec = toml::from_str(&text).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        spec.validate().unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        if let Some(mapreduce) = &spec.mapreduce {
            assert!(
                mapreduce
                    .input
                    .iter()
                    .chain([&mapreduce.output])
                    .all(|path| path.starts_with("/data/") || path.starts_with("s3://")),
                "{}: examples use the placeholder paths under /data/ the README explains (or s3:// URLs)",
                path.display()
            );
            mapreduce_examples.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    mapreduce_examples.sort();
    assert_eq!(
        mapreduce_examples,
        ["sort.toml", "streaming-wordcount.toml", "wordcount-s3.toml", "wordcount.toml"]
    );
}

/// TeraSort's record: a 10-byte key, then payload, 100 bytes with the newline.
const RECORD_BYTES: usize = 100;
const KEY_BYTES: usize = 10;

/// How many records a set holds and a checksum that does not depend on their order (the
/// wrapping sum of each record's FNV-1a hash), as TeraValidate compares input and output.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct RecordSummary {
    records: u64,
    checksum: u64,
}

impl RecordSummary {
    fn add(&mut self, record: &[u8]) {
        let hash = record.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
        });
        self.records += 1;
        self.checksum = self.checksum.wrapping_add(hash);
    }
}

/// `files` files of `per_file` records each: random printable keys (a few repeated, so equal
/// keys meet across splits), then the record's number and filler. No tab, so the whole line is
/// the `sort` mapper's key, and lines order by key first.
fn write_records(dir: &Path, files: usize, per_file: usize) -> RecordSummary {
    std::fs::create_dir_all(dir).unwrap();
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut summary = RecordSummary::default();
    let mut repeated_key = [b'!'; KEY_BYTES];
    for file in 0..files {
        let mut data = Vec::with_capacity(per_file * RECORD_BYTES);
        for index in 0..per_file {
            let number = file * per_file + index;
            let mut key = [0u8; KEY_BYTES];
            key.fill_with(|| b'!' + (next() % 94) as u8);
            if number % 1000 == 999 {
                key = repeated_key;
            } else if number.is_multiple_of(1000) {
                repeated_key = key;
            }
            let start = data.len();
            data.extend_from_slice(&key);
            data.extend_from_slice(format!(" {number:020} ").as_bytes());
            let filler = b'A' + (number % 26) as u8;
            data.resize(start + RECORD_BYTES - 1, filler);
            summary.add(&data[start..]);
            data.push(b'\n');
        }
        std::fs::write(dir.join(format!("records-{file}")), data).unwrap();
    }
    summary
}

/// TeraValidate: every part file is a run of whole records sorted by key, each part's first key
/// is at least the previous part's last, and no part is nearly empty (the sampled ranges split
/// the keys evenly). Returns what the parts hold, to compare with the input.
fn validate_sorted_output(output: &Path, reducers: usize) -> RecordSummary {
    let mut names: Vec<String> = std::fs::read_dir(output)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut expected_names: Vec<String> = (0..reducers).map(|part| format!("part-r-{part:05}")).collect();
    expected_names.push("_SUCCESS".to_owned());
    expected_names.sort();
    assert_eq!(names, expected_names);

    let mut summary = RecordSummary::default();
    let mut previous_key: Option<Vec<u8>> = None;
    let mut per_part = Vec::new();
    for part in 0..reducers {
        let path = output.join(format!("part-r-{part:05}"));
        let data = std::fs::read(&path).unwrap();
        assert_eq!(data.len() % RECORD_BYTES, 0, "{} holds a partial record", path.display());
        for (index, record) in data.chunks_exact(RECORD_BYTES).enumerate() {
            let (line, newline) = record.split_at(RECORD_BYTES - 1);
            assert!(
                newline == b"\n" && !line.contains(&b'\n'),
                "{} record {index} is not a 100-byte line",
                path.display()
            );
            let key = &line[..KEY_BYTES];
            if let Some(previous) = &previous_key {
                assert!(
                    previous.as_slice() <= key,
                    "{} record {index}: key {:?} after {:?}",
                    path.display(),
                    String::from_utf8_lossy(key),
                    String::from_utf8_lossy(previous)
                );
            }
            previous_key = Some(key.to_vec());
            summary.add(line);
        }
        per_part.push(data.len() / RECORD_BYTES);
    }
    let total: usize = per_part.iter().sum();
    assert!(
        per_part.iter().all(|&records| records * reducers * 2 > total),
        "the ranges are far from even: {per_part:?} records per part"
    );
    summary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sort_of_100_byte_records_is_globally_ordered_across_reducers() {
    let dir = support::shared_tempdir("spindle-sort-");
    let _cleanup = support::CleanupDir(dir.path());
    let input = dir.path().join("records");
    // 6 MB in four files: six maps or more of 1 MB splits.
    let written = write_records(&input, 4, 15_000);
    let cluster = start_local(dir.path()).await;
    let client = cluster.client();

    let output = dir.path().join("sorted");
    let mut spec = example_job("sort.toml", &input, &output);
    let mapreduce = spec.mapreduce.as_mut().unwrap();
    assert_eq!(
        (mapreduce.mapper.as_str(), mapreduce.reducer.as_str(), mapreduce.reducers),
        ("sort", "sort", 3)
    );
    // A buffer smaller than a split: maps spill and merge their spills.
    mapreduce.sort_buffer_mb = 1;
    let report = run_to_success(&client, &spec, Duration::from_secs(120)).await;
    eprintln!("sort: {}", report.diagnostics);
    let sorted = validate_sorted_output(&output, 3);
    assert_eq!(sorted, written, "the output holds other records than the input");
    cluster.shutdown().await.expect("the local cluster stops cleanly");
}

/// How long each reducer sleeps before it reduces: long enough for the RM to declare the killed
/// agent's node LOST (`node_expiry`) while the reducer that ran there would still be running.
const SLOW_REDUCER_SLEEP_S: u64 = 6;

/// `kill -9` of an agent (not the AM's) that holds map output and runs a reducer: its containers
/// end NODE_LOST, the AM runs again what was lost with it, and the output is still exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn word_count_survives_kill_9_of_an_agent_while_reducers_run() {
    let mut cluster = TestCluster::start(Db::Sqlite).await;
    for _ in 0..3 {
        cluster.start_agent(4, 4096).await;
    }
    let admin = cluster.admin();
    let input = cluster.path().join("input");
    let expected = write_text(&input, 6);
    let output = cluster.path().join("out");
    let slow_reducer =
        format!("sleep {SLOW_REDUCER_SLEEP_S}; awk -F'\\t' '{{ sum[$1] += $2 }} END {{ for (w in sum) print w \"\\t\" sum[w] }}'");
    let mut spec = wordcount_job(&input, &output, "wordcount", Some("sum"), &slow_reducer);
    let mapreduce = spec.mapreduce.as_mut().unwrap();
    mapreduce.reducers = 3;
    // Whatever is slow here is slow on purpose: no second attempt racing the first.
    mapreduce.speculation = false;
    let started = Instant::now();
    let app_id = admin.submit(&spec).await.unwrap();

    let am_node = wait_until(Duration::from_secs(30), "the AM container to be placed", || async {
        admin.app(app_id).await.ok()?.attempts.first()?.node_id.clone()
    })
    .await;
    // Reduces start only once every map has output (slowstart 1.0): past half the progress,
    // the task containers that run are reducers.
    wait_until(Duration::from_secs(60), "the maps to end and reducers to run", || async {
        let report = admin.app(app_id).await.ok()?;
        assert!(!report.state.is_terminal(), "the job ended before its reducers ran: {report:#?}");
        let tasks = task_containers(&admin, app_id).await;
        (report.progress >= 0.5
            && tasks
                .iter()
                .any(|task| task.state == ContainerState::Running && task.node_id != am_node))
        .then_some(())
    })
    .await;
    // Let the reducers fetch their input and go to sleep: the one on the victim is then lost by
    // NODE_LOST alone, and running it again needs map output that died with the node.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tasks = task_containers(&admin, app_id).await;
    let running_on = |node: &NodeId| -> Vec<ContainerId> {
        tasks
            .iter()
            .filter(|task| task.node_id == *node && task.state == ContainerState::Running)
            .map(|task| task.container_id)
            .collect()
    };
    let ran_on = |node: &NodeId| tasks.iter().filter(|task| task.node_id == *node).count();
    // The non-AM node running the most reducers, and of those the one that ran the most maps.
    let victim = (0..cluster.agents.len())
        .filter(|&agent| *cluster.node_id(agent) != am_node)
        .max_by_key(|&agent| (running_on(cluster.node_id(agent)).len(), ran_on(cluster.node_id(agent))))
        .expect("a node other than the AM's");
    let victim_node = cluster.node_id(victim).clone();
    let running_at_kill = running_on(&victim_node);
    // What ended well there before the kill are maps (no reducer is done yet): their output dies
    // with the node.
    let maps_on_victim = tasks
        .iter()
        .filter(|task| task.node_id == victim_node && task.exit_reason == Some(ExitReason::Success))
        .count();
    assert!(!running_at_kill.is_empty(), "no reducer runs outside the AM's node: {tasks:#?}");
    eprintln!(
        "killing {victim_node} after {:.1}s: it runs {} and ran {maps_on_victim} maps",
        started.elapsed().as_secs_f64(),
        running_at_kill.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
    );
    cluster.agents[victim].daemon.kill9();

    let report = wait_for_app_end(&admin, app_id, Duration::from_secs(90)).await;
    eprintln!(
        "the job ended after {:.1}s: {}",
        started.elapsed().as_secs_f64(),
        report.diagnostics
    );
    assert_eq!(
        (report.state, report.final_status),
        (AppState::Finished, FinalStatus::Succeeded),
        "{report:#?}"
    );
    assert_eq!(report.attempts.len(), 1, "the AM's node was not killed: {:#?}", report.attempts);
    assert_eq!(read_counts(&output), expected);

    let tasks_after = task_containers(&admin, app_id).await;
    for task in &tasks_after {
        eprintln!("{} on {}: {:?} {:?}", task.container_id, task.node_id, task.state, task.exit_reason);
    }
    // NODE_LOST once the RM expires the node; on a loaded machine a reducer may still have been
    // fetching when its agent died, report the fetch failure, and be released by the AM first.
    for container_id in &running_at_kill {
        let container = tasks_after.iter().find(|task| task.container_id == *container_id).unwrap();
        assert!(
            matches!(container.exit_reason, Some(ExitReason::NodeLost | ExitReason::KilledByApp)),
            "{container:#?}"
        );
    }
    // Every map and reduce succeeded once, and the maps whose output was lost once more: the
    // reducer that runs again needs their output.
    let succeeded = tasks_after
        .iter()
        .filter(|task| task.exit_reason == Some(ExitReason::Success))
        .count();
    assert!(
        succeeded >= 6 + 3 + maps_on_victim,
        "{succeeded} task containers succeeded; 6 maps, 3 reduces and the {maps_on_victim} maps lost with {victim_node} must have"
    );
}

/// Input "on one node's local disk" (`input_locations`): its maps run on that node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maps_run_on_the_node_that_holds_their_input() {
    let dir = support::shared_tempdir("spindle-mr-locality-");
    let _cleanup = support::CleanupDir(dir.path());
    let expected = write_text(&dir.path().join("input"), 3);
    let cluster = start_local(dir.path()).await;
    let client = cluster.client();
    let holder = format!("127.0.0.1:{}", cluster.agent_addresses[1].port());

    let output = dir.path().join("out");
    let mut spec = wordcount_job(&dir.path().join("input"), &output, "wordcount", Some("sum"), "sum");
    let mapreduce = spec.mapreduce.as_mut().unwrap();
    mapreduce.input_locations = [(dir.path().join("input").display().to_string(), vec![holder.clone()])].into();
    let report = run_to_success(&client, &spec, Duration::from_secs(120)).await;
    let app = report.app_id;
    assert_eq!(read_counts(&output), expected);

    // The first task containers are the maps (3 files of ~0.7 MB in 1 MB splits: 3 maps).
    let tasks = task_containers(&client, app).await;
    let maps_on_holder = tasks.iter().take(3).filter(|task| task.node_id.0 == holder).count();
    assert_eq!(maps_on_holder, 3, "maps ran where their input is: {tasks:#?}");
    cluster.shutdown().await.expect("the local cluster stops cleanly");
}
