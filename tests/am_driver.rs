//! The one AM driver under every job kind (shell, MapReduce, stream), end to end on RM and agent
//! processes: each kind rides a work-preserving RM restart, loses a node, is preempted by a
//! queue below its guarantee, and is killed, and each time ends as it must — with its exact
//! output, or KILLED with nothing left running.
//!
//! The jobs are small and their results known in advance: shell tasks append their index to a
//! file when they start and when they end; a word count over generated text; a bounded stream
//! generator whose committed window counts must add up to exactly what it generated.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use spindle_protocol::{AppId, AppReport, AppState, ContainerReport, ContainerState, ExitReason, FinalStatus, JobSpec, NodeId, RmClient};
use support::{
    Db, TestCluster, kill_processes_under, read_counts, shell_job, task_containers, task_lines, wait_for_app_end, wait_for_checkpoint,
    wait_until,
};

/// How long a job of these tests may take; they end in well under half of it.
const JOB_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Shell,
    MapReduce,
    Stream,
}

/// What a stream job's generator emits: `limit` events per instance, `rate` per second of
/// event time, over keys `k0` … `k{keys-1}`.
#[derive(Debug, Clone, Copy)]
struct Generator {
    parallelism: u32,
    rate: u64,
    keys: u64,
    /// `None`: it never ends.
    limit: Option<u64>,
}

/// What a job must leave behind, and where.
enum Expected {
    /// `tasks` tasks, each appending its index to `started` and, once its sleep is over, `ended`.
    Shell { tasks: u32, started: PathBuf, ended: PathBuf },
    /// Word counts of the input in `output`, from `maps` maps (one per input file) and `reducers`.
    MapReduce {
        output: PathBuf,
        counts: BTreeMap<String, u64>,
        maps: usize,
        reducers: usize,
    },
    /// 1 s window counts of `generator`'s events in the part files of `out`.
    Stream { out: PathBuf, generator: Generator },
}

/// A job of one kind with its input written and its result known.
struct TestJob {
    spec: JobSpec,
    expected: Expected,
}

impl TestJob {
    /// `tasks` tasks of `sleep sleep_s`, each re-run at most `max_retries` times.
    fn shell(dir: &Path, tasks: u32, sleep_s: u32, max_retries: u32) -> TestJob {
        let (started, ended) = (dir.join("started.txt"), dir.join("ended.txt"));
        let script = format!(
            "echo $SPINDLE_TASK_INDEX >> {}; sleep {sleep_s}; echo $SPINDLE_TASK_INDEX >> {}",
            started.display(),
            ended.display()
        );
        TestJob {
            spec: shell_job("driver-shell", &script, tasks, 64, max_retries),
            expected: Expected::Shell { tasks, started, ended },
        }
    }

    /// A word count of `files` small files (a map each) whose mapper sleeps `map_sleep_s` first.
    fn mapreduce(dir: &Path, files: usize, map_sleep_s: u32, reducers: u32, max_task_attempts: u32) -> TestJob {
        let input = dir.join("input");
        let output = dir.join("out");
        let counts = write_words(&input, files);
        let mapper = format!("sleep {map_sleep_s}; awk '{{ for (i = 1; i <= NF; i++) print $i \"\\t1\" }}'");
        let spec = serde_json::from_value(serde_json::json!({
            "name": "driver-mapreduce",
            "kind": "mapreduce",
            "mapreduce": {
                "input": [input.display().to_string()],
                "output": output.display().to_string(),
                "mapper": mapper,
                "combiner": "sum",
                "reducer": "sum",
                "reducers": reducers,
                "split_size_mb": 1,
                "map": {"vcores": 1, "memory_mb": 256},
                "reduce": {"vcores": 1, "memory_mb": 256},
                "sort_buffer_mb": 16,
                "max_task_attempts": max_task_attempts,
                // Only the containers the scenario makes: no second attempt racing a slow one.
                "speculation": false,
            }
        }))
        .expect("a valid MapReduce job");
        TestJob {
            spec,
            expected: Expected::MapReduce {
                output,
                counts,
                maps: files,
                reducers: reducers as usize,
            },
        }
    }

    /// generator → key_by → a 1 s tumbling `count` of `window_parallelism` instances → files,
    /// checkpointed every 500 ms.
    fn stream(dir: &Path, generator: Generator, window_parallelism: u32) -> TestJob {
        let out = dir.join("out");
        let limit = generator.limit.map(|limit| format!("limit = {limit}")).unwrap_or_default();
        let toml = format!(
            r#"
name = "driver-stream"
kind = "stream"
[stream]
checkpoint_interval_ms = 500
checkpoint_dir = {checkpoints:?}
worker = {{ vcores = 1, memory_mb = 256 }}
[[stream.operators]]
name = "events"
kind = "generator"
parallelism = {parallelism}
rate = {rate}
keys = {keys}
seed = 5
{limit}
[[stream.operators]]
name = "by_key"
kind = "key_by"
input = ["events"]
expr = "$1"
[[stream.operators]]
name = "count"
kind = "window"
input = ["by_key"]
parallelism = {window_parallelism}
size_ms = 1000
aggregate = "count"
[[stream.operators]]
name = "out"
kind = "file_sink"
input = ["count"]
path = {out:?}
"#,
            checkpoints = dir.join("checkpoints").display().to_string(),
            parallelism = generator.parallelism,
            rate = generator.rate,
            keys = generator.keys,
            out = out.display().to_string(),
        );
        let spec: JobSpec = toml::from_str(&toml).expect("a valid stream job");
        spec.validate().expect("a valid stream job");
        TestJob {
            spec,
            expected: Expected::Stream { out, generator },
        }
    }

    /// Waits until the job does work that a fault can interrupt: `running_tasks` tasks run
    /// (shell, MapReduce), or a first checkpoint is complete (stream).
    async fn wait_until_working(&self, client: &RmClient, app_id: AppId, running_tasks: usize) {
        if let Expected::Stream { .. } = self.expected {
            wait_for_checkpoint(client, app_id, 0, 0, "a first checkpoint").await;
            return;
        }
        wait_until(Duration::from_secs(60), &format!("{running_tasks} running tasks"), || async {
            let report = client.app(app_id).await.ok()?;
            assert!(!report.state.is_terminal(), "the job ended before the fault: {report:#?}");
            let running = task_containers(client, app_id)
                .await
                .iter()
                .filter(|task| task.state == ContainerState::Running)
                .count();
            (running >= running_tasks).then_some(())
        })
        .await;
    }

    /// How many task containers a run without faults succeeds with (each task once).
    fn tasks(&self) -> usize {
        match &self.expected {
            Expected::Shell { tasks, .. } => *tasks as usize,
            Expected::MapReduce { maps, reducers, .. } => maps + reducers,
            Expected::Stream { .. } => panic!("a stream job has workers, not tasks"),
        }
    }

    /// The job's output is exact; `runs` says how often a shell task may have run.
    fn assert_output(&self, runs: Runs) {
        match &self.expected {
            Expected::Shell { tasks, started, ended } => {
                let all: Vec<String> = (0..*tasks).map(|index| index.to_string()).collect();
                let (started, mut ended) = (task_lines(started), task_lines(ended));
                match runs {
                    Runs::Once => {
                        assert_eq!(started, all, "each task started exactly once");
                        assert_eq!(ended, all, "each task ran to its end exactly once");
                    }
                    Runs::EndedOnce => assert_eq!(ended, all, "each task ran to its end exactly once"),
                    Runs::AtLeastOnce => {
                        ended.dedup();
                        assert_eq!(ended, all, "each task ran to its end");
                    }
                }
            }
            Expected::MapReduce { output, counts, .. } => {
                assert!(output.join("_SUCCESS").exists(), "no _SUCCESS in {}", output.display());
                assert_eq!(&read_counts(output), counts);
            }
            Expected::Stream { out, generator } => assert_stream_output_exact(out, *generator),
        }
    }
}

/// How often a shell task may have run, in part or to its end.
#[derive(Debug, Clone, Copy)]
enum Runs {
    /// Started and ended once: nothing was re-run.
    Once,
    /// Interrupted runs (preempted mid-sleep) ran again; each ran to its end once.
    EndedOnce,
    /// A run that ended just before its node died may run again.
    AtLeastOnce,
}

/// Deterministic words, 300 lines of 1 to 5 in each of `files` files (a few KB: one split
/// each), and their counts.
fn write_words(dir: &Path, files: usize) -> BTreeMap<String, u64> {
    std::fs::create_dir_all(dir).unwrap();
    let words = ["red", "green", "blue", "cyan", "magenta", "yellow", "black", "white"];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut counts = BTreeMap::new();
    for file in 0..files {
        let mut text = String::new();
        for line in 0..300 {
            for position in 0..(1 + line % 5) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let word = words[(state % words.len() as u64) as usize];
                if position > 0 {
                    text.push(' ');
                }
                text.push_str(word);
                *counts.entry(word.to_owned()).or_insert(0) += 1;
            }
            text.push('\n');
        }
        std::fs::write(dir.join(format!("words-{file}.txt")), text).unwrap();
    }
    counts
}

/// Every committed `key<TAB>start<TAB>end<TAB>count` line: each (key, window) once, keys of
/// the generator's, and each window's counts adding up to the events the generator gave it
/// (event `n` has time `n * 1000 / rate` ms) — nothing lost, nothing counted twice.
fn assert_stream_output_exact(out: &Path, generator: Generator) {
    let limit = generator.limit.expect("a bounded generator");
    let mut expected: BTreeMap<i64, u64> = BTreeMap::new();
    for n in 0..limit {
        let time = (n * 1000 / generator.rate) as i64;
        *expected.entry(time - time % 1000).or_default() += u64::from(generator.parallelism);
    }
    let mut windows = BTreeSet::new();
    let mut totals: BTreeMap<i64, u64> = BTreeMap::new();
    for entry in std::fs::read_dir(out)
        .unwrap_or_else(|err| panic!("{}: {err}", out.display()))
        .flatten()
    {
        if !entry.file_name().to_string_lossy().starts_with("part-") {
            continue;
        }
        for line in std::fs::read_to_string(entry.path()).unwrap().lines() {
            let fields: Vec<&str> = line.split('\t').collect();
            assert_eq!(fields.len(), 4, "{line:?} in {}", entry.path().display());
            let key: u64 = fields[0]
                .strip_prefix('k')
                .and_then(|key| key.parse().ok())
                .unwrap_or_else(|| panic!("{line:?}: not a generated key"));
            assert!(key < generator.keys, "{line:?}: not a generated key");
            let start: i64 = fields[1].parse().unwrap();
            assert!(windows.insert((key, start)), "{line:?} committed twice");
            *totals.entry(start).or_default() += fields[3].parse::<u64>().unwrap();
        }
    }
    assert_eq!(totals, expected, "events per window start, committed vs generated");
}

/// The app's containers, the AM's included.
async fn containers(client: &RmClient, app_id: AppId) -> Vec<ContainerReport> {
    client.containers(app_id).await.expect("list the app's containers")
}

fn succeeded_tasks(containers: &[ContainerReport]) -> usize {
    containers
        .iter()
        .filter(|container| !container.is_am && container.exit_reason == Some(ExitReason::Success))
        .count()
}

fn assert_succeeded(report: &AppReport) {
    assert_eq!(
        (report.state, report.final_status),
        (AppState::Finished, FinalStatus::Succeeded),
        "{report:#?}"
    );
}

/// Both logs of a container, as the RM serves them.
async fn container_logs(client: &RmClient, container: spindle_protocol::ContainerId) -> String {
    let stdout = client.logs(container, "stdout").await.unwrap_or_default();
    let stderr = client.logs(container, "stderr").await.unwrap_or_default();
    format!("{stdout}{stderr}")
}

// ---- 1. RM restart ----------------------------------------------------------------------------

/// SIGKILL of the RM while the job works, and a start on the same store a second later: the AM
/// rides the outage and registers again, nothing runs twice, and the output is exact.
async fn rides_an_rm_restart(kind: Kind) {
    let mut cluster = TestCluster::start(Db::Sqlite).await;
    cluster.start_agent(2, 4096).await;
    cluster.start_agent(2, 4096).await;
    let admin = cluster.admin();
    // 4 vcores: the AM and 3 tasks or workers at a time.
    let job = match kind {
        Kind::Shell => TestJob::shell(cluster.path(), 6, 2, 0),
        Kind::MapReduce => TestJob::mapreduce(cluster.path(), 4, 2, 2, 1),
        Kind::Stream => TestJob::stream(
            cluster.path(),
            Generator {
                parallelism: 2,
                rate: 5000,
                keys: 20,
                limit: Some(30_000),
            },
            2,
        ),
    };
    let app_id = admin.submit(&job.spec).await.unwrap();
    job.wait_until_working(&admin, app_id, 2).await;

    cluster.kill_rm();
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.start_rm().await;

    let report = wait_for_app_end(&admin, app_id, JOB_TIMEOUT).await;
    assert_succeeded(&report);
    assert_eq!(report.attempts.len(), 1, "the AM survived the RM's restart: {:#?}", report.attempts);
    job.assert_output(Runs::Once);
    let containers = containers(&admin, app_id).await;
    if kind == Kind::Stream {
        let detail = report.detail.as_ref().and_then(|detail| detail.stream()).expect("a stream detail");
        assert_eq!(detail.restarts, 0, "an RM restart costs the pipeline nothing");
    } else {
        for container in containers.iter().filter(|container| !container.is_am) {
            assert_eq!(
                container.exit_reason,
                Some(ExitReason::Success),
                "nothing was killed or re-run: {container:#?}"
            );
        }
        assert_eq!(succeeded_tasks(&containers), job.tasks(), "each task ran once: {containers:#?}");
    }
    let am = report.attempts[0].am_container.expect("the attempt's AM container");
    let logs = container_logs(&admin, am).await;
    assert!(
        logs.contains("registering again after an RM outage"),
        "the AM did not re-register:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_rides_an_rm_restart() {
    rides_an_rm_restart(Kind::Shell).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapreduce_rides_an_rm_restart() {
    rides_an_rm_restart(Kind::MapReduce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_rides_an_rm_restart() {
    rides_an_rm_restart(Kind::Stream).await;
}

// ---- 2. Node loss -----------------------------------------------------------------------------

/// A node other than the AM's dies with its containers (SIGKILL of the agent and of every
/// process it started) while it runs tasks or workers: what ran there runs again elsewhere and
/// the output is exact.
async fn survives_the_loss_of_a_node(kind: Kind) {
    let mut cluster = TestCluster::start(Db::Sqlite).await;
    // 2 vcores each: the AM's node has room for one task, so others run elsewhere.
    for _ in 0..3 {
        cluster.start_agent(2, 4096).await;
    }
    let admin = cluster.admin();
    let job = match kind {
        Kind::Shell => TestJob::shell(cluster.path(), 8, 3, 2),
        Kind::MapReduce => TestJob::mapreduce(cluster.path(), 5, 3, 2, 2),
        Kind::Stream => TestJob::stream(
            cluster.path(),
            Generator {
                parallelism: 2,
                rate: 5000,
                keys: 20,
                limit: Some(40_000),
            },
            2,
        ),
    };
    let app_id = admin.submit(&job.spec).await.unwrap();
    job.wait_until_working(&admin, app_id, 2).await;

    let am_node = admin.app(app_id).await.unwrap().attempts[0].node_id.clone().expect("the AM's node");
    let running: Vec<ContainerReport> = task_containers(&admin, app_id)
        .await
        .into_iter()
        .filter(|task| task.state == ContainerState::Running && task.node_id != am_node)
        .collect();
    let victim_node: NodeId = running.first().expect("a task or worker outside the AM's node").node_id.clone();
    let victim = (0..cluster.agents.len())
        .find(|&agent| *cluster.node_id(agent) == victim_node)
        .unwrap();
    let lost: Vec<ContainerReport> = running.into_iter().filter(|task| task.node_id == victim_node).collect();
    eprintln!("killing {victim_node} and its {} running containers", lost.len());
    cluster.agents[victim].daemon.kill9();
    kill_processes_under(&cluster.path().join(format!("agent{victim}")).join("apps"));

    let report = wait_for_app_end(&admin, app_id, JOB_TIMEOUT).await;
    assert_succeeded(&report);
    assert_eq!(report.attempts.len(), 1, "the AM's node lived: {:#?}", report.attempts);
    wait_until(Duration::from_secs(15), "the killed node to be LOST", || async {
        cluster.node_state(&victim_node).await == Some(spindle_protocol::NodeState::Lost)
    })
    .await;
    job.assert_output(Runs::AtLeastOnce);
    let containers = containers(&admin, app_id).await;
    for container in &lost {
        let after = containers.iter().find(|c| c.container_id == container.container_id).unwrap();
        assert!(
            matches!(after.exit_reason, Some(ExitReason::NodeLost | ExitReason::KilledByApp)),
            "a container of the lost node: {after:#?}"
        );
    }
    match kind {
        Kind::Stream => {
            let detail = report.detail.as_ref().and_then(|detail| detail.stream()).expect("a stream detail");
            assert!(detail.restarts >= 1, "the pipeline restarted from a checkpoint: {detail:#?}");
        }
        Kind::Shell => {
            assert_eq!(
                succeeded_tasks(&containers),
                job.tasks(),
                "each task succeeded once: {containers:#?}"
            );
            let Expected::Shell { started, .. } = &job.expected else {
                unreachable!()
            };
            assert!(
                task_lines(started).len() >= job.tasks() + lost.len(),
                "the {} tasks lost with the node ran again",
                lost.len()
            );
        }
        Kind::MapReduce => {
            // Maps that had ended on the lost node ran again too: their output died with it.
            assert!(
                succeeded_tasks(&containers) >= job.tasks(),
                "every map and reduce succeeded: {containers:#?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_survives_the_loss_of_a_node() {
    survives_the_loss_of_a_node(Kind::Shell).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapreduce_survives_the_loss_of_a_node() {
    survives_the_loss_of_a_node(Kind::MapReduce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_survives_the_loss_of_a_node() {
    survives_the_loss_of_a_node(Kind::Stream).await;
}

// ---- 3. Preemption ----------------------------------------------------------------------------

/// Short, so that the tests are quick; the RM's default is 15 s.
const PREEMPTION_GRACE_S: u64 = 3;

/// A cluster of 2 agents of 4 vcores with queues `first` (alice's) and `second` (the admin's),
/// half of it guaranteed to each.
async fn two_queue_cluster() -> TestCluster {
    let mut cluster = TestCluster::start(Db::Sqlite).await;
    let path = cluster.path().join("rm.toml");
    let mut config = std::fs::read_to_string(&path).expect("read the RM config");
    config.push_str(&format!(
        "\n[scheduler]\npreemption_grace = {PREEMPTION_GRACE_S}\n\
         [queues]\nname = \"root\"\n\
         [[queues.children]]\nname = \"first\"\nguaranteed_percent = 50\nam_share_percent = 50\nsubmit_users = [\"{}\"]\n\
         [[queues.children]]\nname = \"second\"\nguaranteed_percent = 50\nam_share_percent = 50\nsubmit_users = [\"{}\"]\n",
        support::USER,
        support::ADMIN
    ));
    std::fs::write(&path, config).expect("write the RM config");
    cluster.kill_rm();
    cluster.start_rm().await;
    cluster.start_agent(4, 4096).await;
    cluster.start_agent(4, 4096).await;
    cluster
}

/// A job borrows most of the cluster in queue `first`; a job in `second` then wants its
/// guarantee, so the RM preempts the first job's containers. Shell and MapReduce run the
/// preempted tasks again without counting them as failures (one attempt allowed); a stream job
/// scales down and hands its workers back before the grace period ends, without a restart.
async fn ends_correctly_after_preemption(kind: Kind) {
    let cluster = two_queue_cluster().await;
    let (alice, admin) = (cluster.user(), cluster.admin());
    let mut job = match kind {
        // The AM and 7 tasks: the whole cluster, 4 vcores past the queue's guarantee.
        Kind::Shell => TestJob::shell(cluster.path(), 7, 8, 0),
        Kind::MapReduce => TestJob::mapreduce(cluster.path(), 7, 8, 1, 1),
        // The AM and 5 workers (the window's width): 2 vcores past the guarantee.
        Kind::Stream => TestJob::stream(
            cluster.path(),
            Generator {
                parallelism: 1,
                rate: 5000,
                keys: 50,
                limit: Some(60_000),
            },
            5,
        ),
    };
    job.spec.queue = "first".to_owned();
    let app_id = alice.submit(&job.spec).await.unwrap();
    job.wait_until_working(&alice, app_id, 7).await;

    let mut second = match kind {
        Kind::Stream => shell_job("second", "sleep 8", 4, 128, 0),
        _ => shell_job("second", "sleep 2", 3, 128, 0),
    };
    second.queue = "second".to_owned();
    let second_id = admin.submit(&second).await.unwrap();
    if kind == Kind::Stream {
        let detail = wait_until(Duration::from_secs(30), "the window to scale down", || async {
            let detail = support::stream_detail(&alice, app_id).await?;
            let count = detail.operators.iter().find(|op| op.name == "count")?;
            (count.parallelism < 5 && detail.last_rescale.as_ref()?.finished_at_ms.is_some()).then_some(detail)
        })
        .await;
        eprintln!("scaled down under preemption: {:?}", detail.last_rescale);
    }

    let second_report = wait_for_app_end(&admin, second_id, JOB_TIMEOUT).await;
    assert_succeeded(&second_report);
    let report = wait_for_app_end(&alice, app_id, JOB_TIMEOUT).await;
    assert_succeeded(&report);
    assert_eq!(report.attempts.len(), 1, "the AM is never preempted: {:#?}", report.attempts);
    job.assert_output(Runs::EndedOnce);
    let containers = containers(&alice, app_id).await;
    let preempted = containers
        .iter()
        .filter(|container| container.exit_reason == Some(ExitReason::Preempted))
        .count();
    if kind == Kind::Stream {
        let detail = report.detail.as_ref().and_then(|detail| detail.stream()).expect("a stream detail");
        assert_eq!(
            detail.restarts, 0,
            "a preemption notice is answered by scaling down, not by failing"
        );
        assert_eq!(preempted, 0, "workers were handed back before the kill: {containers:#?}");
    } else {
        assert!(preempted > 0, "the second queue's guarantee needed preemption: {containers:#?}");
        assert_eq!(
            succeeded_tasks(&containers),
            job.tasks(),
            "each task succeeded once: {containers:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_ends_correctly_after_preemption() {
    ends_correctly_after_preemption(Kind::Shell).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapreduce_ends_correctly_after_preemption() {
    ends_correctly_after_preemption(Kind::MapReduce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_scales_down_under_preemption() {
    ends_correctly_after_preemption(Kind::Stream).await;
}

// ---- 4. Kill ----------------------------------------------------------------------------------

/// Pids of the processes whose working directory is under `dir` (a container's, on its node),
/// even once `dir` is deleted (their cwd then reads `… (deleted)`).
fn processes_under(dir: &Path) -> Vec<u32> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok().map(|pid| (pid, entry.path())))
        .filter(|(_, path)| std::fs::read_link(path.join("cwd")).is_ok_and(|cwd| cwd.starts_with(&dir)))
        .map(|(pid, _)| pid)
        .collect()
}

/// Killing the app while it works: it ends KILLED and stays so (the AM stops without finishing
/// over it, and no new attempt starts), every container ends, and no process of it is left on
/// any node.
async fn stops_when_killed(kind: Kind) {
    let mut cluster = TestCluster::start(Db::Sqlite).await;
    cluster.start_agent(4, 4096).await;
    cluster.start_agent(4, 4096).await;
    let admin = cluster.admin();
    let job = match kind {
        Kind::Shell => TestJob::shell(cluster.path(), 3, 600, 0),
        Kind::MapReduce => TestJob::mapreduce(cluster.path(), 3, 600, 1, 1),
        Kind::Stream => TestJob::stream(
            cluster.path(),
            Generator {
                parallelism: 2,
                rate: 2000,
                keys: 20,
                limit: None,
            },
            2,
        ),
    };
    let app_id = admin.submit(&job.spec).await.unwrap();
    job.wait_until_working(&admin, app_id, 3).await;
    let app_dirs: Vec<PathBuf> = (0..cluster.agents.len())
        .map(|agent| cluster.path().join(format!("agent{agent}")).join("apps").join(app_id.to_string()))
        .collect();
    assert!(
        app_dirs.iter().any(|dir| !processes_under(dir).is_empty()),
        "the job's processes run before the kill"
    );

    admin.kill(app_id).await.expect("the admin may kill the app");
    let report = wait_for_app_end(&admin, app_id, Duration::from_secs(30)).await;
    assert_eq!(
        (report.state, report.final_status),
        (AppState::Killed, FinalStatus::Killed),
        "{report:#?}"
    );
    wait_until(Duration::from_secs(30), "every container of the app to end", || async {
        containers(&admin, app_id)
            .await
            .iter()
            .all(|container| container.state == ContainerState::Complete)
    })
    .await;
    wait_until(Duration::from_secs(30), "no process of the app on any node", || async {
        app_dirs.iter().all(|dir| processes_under(dir).is_empty())
    })
    .await;

    let after = admin.app(app_id).await.unwrap();
    assert_eq!(
        (after.state, after.final_status),
        (AppState::Killed, FinalStatus::Killed),
        "the AM did not finish over the kill: {after:#?}"
    );
    assert_eq!(after.attempts.len(), 1, "no new attempt after the kill: {:#?}", after.attempts);
    // The AM may exit cleanly once the RM says stop; no task ran to its end. A stream worker is
    // the exception: the AM, told to stop, tells its workers to go, and one that exits before its
    // agent's kill lands ends cleanly (exit 0) though the app was killed; its output is not
    // committed, so nothing of the job completed.
    if kind != Kind::Stream {
        for container in containers(&admin, app_id).await.iter().filter(|container| !container.is_am) {
            assert_ne!(container.exit_reason, Some(ExitReason::Success), "{container:#?}");
        }
    }
    let am = after.attempts[0].am_container.expect("the attempt's AM container");
    let logs = container_logs(&admin, am).await;
    // Told by the RM's allocate reply, or by SIGTERM from its agent if that came first.
    let stopped = logs.contains("stopping without finish") || logs.contains("asked to stop");
    assert!(
        logs.contains("AM started") && stopped && !logs.contains("job finished"),
        "the AM must stop without finishing the killed job:\n{logs}"
    );
    if let Expected::MapReduce { output, .. } = &job.expected {
        assert!(!output.join("_SUCCESS").exists(), "a killed job commits nothing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_stops_when_killed() {
    stops_when_killed(Kind::Shell).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapreduce_stops_when_killed() {
    stops_when_killed(Kind::MapReduce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_stops_when_killed() {
    stops_when_killed(Kind::Stream).await;
}
