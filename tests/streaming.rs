//! Streaming jobs end to end, with real AM and worker processes: exactly-once output through
//! `kill -9` of a worker, of a whole node and of the AM; a live rescale 2 → 4 → 1 of the keyed
//! window operator with the output still exact; and operators' totals that survive rescales
//! and a restart and equal what the output proves. The jobs are `examples/stream-*.toml`.
//!
//! The generator is deterministic from its seed, so the committed output is compared with the
//! counts computed from the seed: every (key, window) once, with its exact count.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use spindle_protocol::{AppId, AppState, ContainerId, ContainerState, FinalStatus, JobSpec, RmClient};
use support::{
    CleanupDir, Db, TestCluster, assert_exact, example_job, expected, kill_processes_under, local_container_dir, operator_mut, start_local,
    stream_detail, task_containers, wait_for_app_end, wait_for_checkpoint, wait_until,
};

fn node_of(cluster: &TestCluster, node: &spindle_protocol::NodeId) -> usize {
    (0..cluster.agents.len()).find(|&agent| cluster.node_id(agent) == node).unwrap()
}

fn agent_dir(cluster: &TestCluster, agent: usize) -> PathBuf {
    cluster.path().join(format!("agent{agent}"))
}

/// `kill -9` of one worker, then of a whole node (agent and containers), then of the AM: each
/// time the job resumes from its latest checkpoint, and the committed output is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_through_kill_9_of_a_worker_a_node_and_the_am() {
    let mut cluster = TestCluster::start(Db::Sqlite).await;
    for _ in 0..3 {
        cluster.start_agent(4, 4096).await;
    }
    let admin = cluster.admin();
    let spec = example_job("stream-exactly-once.toml", cluster.path());
    let expected = expected(&spec);
    let out = cluster.path().join("out");
    let started = Instant::now();
    let app_id = admin.submit(&spec).await.unwrap();

    // 1. A worker container.
    let first = wait_for_checkpoint(&admin, app_id, 0, 0, "a first checkpoint").await;
    let workers = task_containers(&admin, app_id).await;
    let victim = workers
        .iter()
        .find(|c| c.state == ContainerState::Running)
        .expect("a running worker");
    let dir = agent_dir(&cluster, node_of(&cluster, &victim.node_id))
        .join("apps")
        .join(app_id.to_string())
        .join(victim.container_id.to_string());
    eprintln!(
        "{:.1}s: kill -9 worker {} after checkpoint {first}",
        started.elapsed().as_secs_f64(),
        victim.container_id
    );
    kill_processes_under(&dir);
    let second = wait_for_checkpoint(&admin, app_id, first, 1, "a checkpoint after the worker's loss").await;

    // 2. A node that runs workers but not the AM: the agent and everything it started.
    let report = admin.app(app_id).await.unwrap();
    let am_node = report.attempts.last().unwrap().node_id.clone().unwrap();
    let workers = task_containers(&admin, app_id).await;
    let node = workers
        .iter()
        .filter(|c| c.state == ContainerState::Running && c.node_id != am_node)
        .map(|c| node_of(&cluster, &c.node_id))
        .next()
        .expect("a worker outside the AM's node");
    eprintln!(
        "{:.1}s: kill -9 node {} after checkpoint {second}",
        started.elapsed().as_secs_f64(),
        cluster.node_id(node)
    );
    cluster.agents[node].daemon.kill9();
    kill_processes_under(&agent_dir(&cluster, node).join("apps"));
    let third = wait_for_checkpoint(&admin, app_id, second, 2, "a checkpoint after the node's loss").await;

    // 3. The AM: the RM starts a new attempt, which resumes from the checkpoints on disk.
    let report = admin.app(app_id).await.unwrap();
    let attempt = report.attempts.last().unwrap();
    let am_dir = agent_dir(&cluster, node_of(&cluster, attempt.node_id.as_ref().unwrap()))
        .join("apps")
        .join(app_id.to_string())
        .join(attempt.am_container.unwrap().to_string());
    eprintln!("{:.1}s: kill -9 the AM after checkpoint {third}", started.elapsed().as_secs_f64());
    kill_processes_under(&am_dir);

    let report = wait_for_app_end(&admin, app_id, Duration::from_secs(120)).await;
    eprintln!("{:.1}s: the job ended: {}", started.elapsed().as_secs_f64(), report.diagnostics);
    assert_eq!(
        (report.state, report.final_status),
        (AppState::Finished, FinalStatus::Succeeded),
        "{report:#?}"
    );
    // The RM may first place the new AM on the killed node (not yet declared lost): such an
    // attempt fails to launch and does not count.
    assert!(
        report.attempts.len() >= 2,
        "a new AM attempt after the kill: {:#?}",
        report.attempts
    );
    assert_exact(&out, &expected);
    assert_totals_match(&report, &spec, expected.len() as u64);
    // What the failed attempts staged was cleaned up when the pipeline was deployed again.
    let staged: Vec<_> = std::fs::read_dir(out.join(".staging"))
        .unwrap()
        .flatten()
        .map(|entry| entry.file_name())
        .collect();
    assert!(staged.is_empty(), "left in .staging: {staged:?}");
}

/// The operators' totals in the final report — in its stream detail, its counters (what
/// `spindle app` shows) and its `/metrics` families — are what the bounded generators produced
/// (every event once) and what the committed output proves (`windows` results, each once).
fn assert_totals_match(report: &spindle_protocol::AppReport, spec: &JobSpec, windows: u64) {
    let stream_spec = spec.stream.as_ref().unwrap();
    let generator = stream_spec.operators.iter().find(|op| op.name == "events").unwrap();
    let produced = u64::from(generator.parallelism) * generator.limit.unwrap();
    let detail = report.detail.as_ref().unwrap();
    let stream = detail.stream().unwrap();
    let operator = |name: &str| stream.operators.iter().find(|op| op.name == name).unwrap().clone();
    let (events, count, out) = (operator("events"), operator("count"), operator("out"));
    let totals = |op: &spindle_protocol::OperatorStatus| (op.records_in, op.records_out);
    assert_eq!(
        (totals(&events), totals(&count), totals(&out)),
        ((0, produced), (produced, windows), (windows, 0)),
        "(records in, records out) of the generators, the window and the sink"
    );
    assert_eq!(events.bytes_out, count.bytes_in, "what the generators sent is what the window took");
    assert_eq!(count.bytes_out, out.bytes_in);
    for (name, value) in [
        ("events.records_out", produced),
        ("count.records_in", produced),
        ("count.records_out", windows),
        ("out.records_in", windows),
    ] {
        assert_eq!(detail.counters.get(name), Some(&value), "counter {name}: {:?}", detail.counters);
    }
    let exported = |family: &str, operator: &str| {
        detail
            .metrics
            .iter()
            .find(|f| f.name == family)
            .and_then(|f| {
                f.samples
                    .iter()
                    .find(|s| s.labels.get("operator").map(String::as_str) == Some(operator))
            })
            .map(|sample| sample.value)
    };
    assert_eq!(exported("spindle_stream_records_out_total", "events"), Some(produced as f64));
    assert_eq!(exported("spindle_stream_records_in_total", "count"), Some(produced as f64));
    assert_eq!(exported("spindle_stream_records_in_total", "out"), Some(windows as f64));
}

/// Waits until the rescale to `to` is done; returns its pause.
async fn wait_for_rescale(client: &RmClient, app_id: AppId, to: u32) -> u64 {
    wait_until(Duration::from_secs(60), &format!("the rescale to {to}"), || async {
        let detail = stream_detail(client, app_id).await?;
        let rescale = detail.last_rescale?;
        let count = detail.operators.iter().find(|op| op.name == "count")?;
        (rescale.to == to && rescale.finished_at_ms.is_some() && count.parallelism == to).then_some(rescale.pause_ms.unwrap_or(0))
    })
    .await
}

/// The keyed window operator goes 2 → 4 → 1 while the job runs; nothing restarts and the
/// output is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescaling_the_window_operator_2_to_4_to_1_keeps_the_output_exact() {
    let dir = support::shared_tempdir("spindle-test-");
    let cluster = start_local(dir.path()).await;
    let _cleanup = CleanupDir(dir.path());
    let client = cluster.client();
    let mut spec = example_job("stream-exactly-once.toml", dir.path());
    let generator = operator_mut(&mut spec, "events");
    generator.keys = Some(1000);
    generator.limit = Some(200_000);
    let expected = expected(&spec);
    let app_id = client.submit(&spec).await.unwrap();
    wait_for_checkpoint(&client, app_id, 0, 0, "a first checkpoint").await;

    let reply = client.scale_operator(app_id, "count", 4).await.unwrap();
    assert_eq!((reply.previous, reply.parallelism), (2, 4));
    let up = wait_for_rescale(&client, app_id, 4).await;
    let reply = client.scale_operator(app_id, "count", 1).await.unwrap();
    assert_eq!((reply.previous, reply.parallelism), (4, 1));
    let down = wait_for_rescale(&client, app_id, 1).await;
    eprintln!("rescale pauses: 2 → 4 {up} ms, 4 → 1 {down} ms");

    let report = wait_for_app_end(&client, app_id, Duration::from_secs(120)).await;
    assert_eq!(
        (report.state, report.final_status),
        (AppState::Finished, FinalStatus::Succeeded),
        "{report:#?}"
    );
    let detail = report.detail.and_then(|detail| detail.stream()).unwrap();
    assert_eq!(detail.restarts, 0, "a rescale restarts nothing");
    assert_exact(&dir.path().join("out"), &expected);
    let _ = cluster.shutdown().await;
}

/// The working directory of a container of a `spindle local` cluster's agents.
/// Operators' totals are carried through rescales 2 → 4 → 1 (retired instances' counts
/// included) and through a restart after a worker's `kill -9`: at the end the report's totals,
/// its counters (what `spindle app` shows) and its `/metrics` families equal what the bounded
/// generators produced and what the committed output proves, exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_totals_survive_rescales_and_a_killed_worker_and_match_the_output() {
    let dir = support::shared_tempdir("spindle-test-");
    let cluster = start_local(dir.path()).await;
    let _cleanup = CleanupDir(dir.path());
    // The containers run outside the data dir: their logs too are printed if the test fails.
    let work_root = cluster.work_root.clone();
    let _cleanup_containers = CleanupDir(&work_root);
    let client = cluster.client();
    let started = Instant::now();
    let mut spec = example_job("stream-exactly-once.toml", dir.path());
    let generator = operator_mut(&mut spec, "events");
    generator.keys = Some(1000);
    generator.limit = Some(200_000);
    let expected = expected(&spec);
    let app_id = client.submit(&spec).await.unwrap();
    wait_for_checkpoint(&client, app_id, 0, 0, "a first checkpoint").await;

    client.scale_operator(app_id, "count", 4).await.unwrap();
    wait_for_rescale(&client, app_id, 4).await;
    client.scale_operator(app_id, "count", 1).await.unwrap();
    wait_for_rescale(&client, app_id, 1).await;
    // The workers the scale-down emptied are handed back; kill one of the two that stay.
    let victim = wait_until(Duration::from_secs(30), "the emptied workers to go", || async {
        let running: Vec<ContainerId> = task_containers(&client, app_id)
            .await
            .into_iter()
            .filter(|c| c.state == ContainerState::Running)
            .map(|c| c.container_id)
            .collect();
        (running.len() == 2).then(|| running[0])
    })
    .await;
    eprintln!("{:.1}s: kill -9 worker {victim}", started.elapsed().as_secs_f64());
    kill_processes_under(&local_container_dir(&work_root, app_id, victim));

    let report = wait_for_app_end(&client, app_id, Duration::from_secs(90)).await;
    eprintln!("{:.1}s: the job ended: {}", started.elapsed().as_secs_f64(), report.diagnostics);
    assert_eq!(
        (report.state, report.final_status),
        (AppState::Finished, FinalStatus::Succeeded),
        "{report:#?}"
    );
    assert_exact(&dir.path().join("out"), &expected);
    assert!(
        report.detail.as_ref().and_then(|detail| detail.stream()).unwrap().restarts >= 1,
        "the killed worker restarted the job"
    );
    assert_totals_match(&report, &spec, expected.len() as u64);
    let _ = cluster.shutdown().await;
}

/// Files → filter → an external command (awk) → key_by → a keyed sum in one big window →
/// files: a bounded file source ends the job, and the sums are exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_pipeline_with_a_filter_an_external_command_and_a_keyed_sum_is_exact() {
    let dir = support::shared_tempdir("spindle-test-");
    let cluster = start_local(dir.path()).await;
    let _cleanup = CleanupDir(dir.path());
    let input = dir.path().join("input");
    std::fs::create_dir_all(&input).unwrap();
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for file in 0..2 {
        let mut text = String::new();
        for line in 0..5_000i64 {
            let (key, value, time) = (format!("user{}", line % 7), (line * 31 + file) % 100, line * 10);
            text.push_str(&format!("{key} {value} {time}\n"));
            if value > 10 {
                *expected.entry(key).or_default() += value * 2;
            }
        }
        std::fs::write(input.join(format!("events-{file}.log")), text).unwrap();
    }
    let spec = example_job("stream-files.toml", dir.path());
    let mut spec = spec;
    let stream = spec.stream.as_mut().unwrap();
    stream.operators.iter_mut().find(|op| op.name == "lines").unwrap().path = Some(input.display().to_string());
    let report = support::run_to_success(&cluster.client(), &spec, Duration::from_secs(120)).await;
    let detail = report.detail.and_then(|detail| detail.stream()).unwrap();
    assert_eq!(detail.restarts, 0);
    let mut sums = BTreeMap::new();
    for entry in std::fs::read_dir(dir.path().join("out")).unwrap().flatten() {
        if !entry.file_name().to_string_lossy().starts_with("part-") {
            continue;
        }
        for line in std::fs::read_to_string(entry.path()).unwrap().lines() {
            let fields: Vec<&str> = line.split('\t').collect();
            assert!(
                sums.insert(fields[0].to_owned(), fields[3].parse::<i64>().unwrap()).is_none(),
                "{line} twice"
            );
        }
    }
    assert_eq!(sums, expected);
    let _ = cluster.shutdown().await;
}

/// A job binary with a Rust operator of its own (`cli/examples/stream_user_operator.rs`, built
/// with the tests): its keyed state goes through checkpoints and a live rescale like a
/// built-in's, and its output is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_operator_from_a_job_binary_of_its_own_is_checkpointed_and_rescaled() {
    let binary = support::spindle_bin()
        .parent()
        .unwrap()
        .join("examples")
        .join("stream_user_operator");
    if !binary.exists() {
        // `cargo test` and `cargo nextest` build examples; a bare `--test` build may not.
        panic!(
            "{} is missing: build it with `cargo build -p spindle-cli --example stream_user_operator`",
            binary.display()
        );
    }
    let dir = support::shared_tempdir("spindle-test-");
    let cluster = start_local(dir.path()).await;
    let _cleanup = CleanupDir(dir.path());
    let client = cluster.client();
    let mut spec = example_job("stream-user-operator.toml", dir.path());
    let stream = spec.stream.as_mut().unwrap();
    stream.worker_command = Some(vec![binary.display().to_string()]);
    let (seed, keys, limit) = (3, 20, 40_000);
    let mut distinct: BTreeMap<String, std::collections::BTreeSet<u64>> = BTreeMap::new();
    for instance in 0..2 {
        for n in 0..limit {
            let (key, value) = spindle_stream::ops::generator::event(seed, instance, n, keys);
            distinct.entry(format!("k{key}")).or_default().insert(value);
        }
    }
    let app_id = client.submit(&spec).await.unwrap();
    wait_for_checkpoint(&client, app_id, 0, 0, "a first checkpoint").await;
    client.scale_operator(app_id, "distinct", 3).await.unwrap();
    wait_until(Duration::from_secs(60), "the rescale to 3", || async {
        let detail = stream_detail(&client, app_id).await?;
        detail.last_rescale.filter(|r| r.to == 3 && r.finished_at_ms.is_some())
    })
    .await;
    let report = wait_for_app_end(&client, app_id, Duration::from_secs(120)).await;
    assert_eq!(
        (report.state, report.final_status),
        (AppState::Finished, FinalStatus::Succeeded),
        "{report:#?}"
    );
    // Each key's lines count 1, 2, … up to its number of distinct values, each once.
    let mut seen: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for entry in std::fs::read_dir(dir.path().join("out")).unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with("part-") {
            for line in std::fs::read_to_string(entry.path()).unwrap().lines() {
                let (key, count) = line.split_once('\t').unwrap();
                seen.entry(key.to_owned()).or_default().push(count.parse().unwrap());
            }
        }
    }
    for (key, values) in &distinct {
        let mut counts = seen.remove(key).unwrap_or_default();
        counts.sort_unstable();
        assert_eq!(counts, (1..=values.len()).collect::<Vec<_>>(), "key {key}");
    }
    assert!(seen.is_empty(), "keys that were never generated: {seen:?}");
    let _ = cluster.shutdown().await;
}
