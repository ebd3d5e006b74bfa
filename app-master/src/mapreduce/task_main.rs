//! The main of a MapReduce task container (`spindle mr-task`): read the assignment the AM put in
//! the environment, run the map or reduce attempt, report the outcome to the AM, and exit with a
//! code that says the same (for an AM that never got the report).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use spindle_protocol::{AgentClient, AppId, Stage, TaskFunction, env};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::umbilical::{MapOutputLocation, TASK_ENV, TaskAssignment, TaskOutcome, TaskReport, TaskWork};
use super::{MapSegment, MapTaskParams, ReduceTaskParams, TaskCounters, run_map_task_with_progress, run_reduce_task};

/// Exit codes of a task container, read by the AM when no report arrived.
pub mod exit_code {
    pub const SUCCEEDED: u8 = 0;
    pub const FAILED: u8 = 1;
    pub const FETCH_FAILED: u8 = 3;
}

/// Map outputs a reducer fetches at once: enough to keep every agent busy, few enough not to
/// open hundreds of connections.
const PARALLEL_FETCHES: usize = 8;

/// What a task container needs besides its assignment, from the agent's environment.
struct TaskEnvironment {
    app_id: AppId,
    shuffle_dir: PathBuf,
    shuffle_token: String,
    /// The container's working directory: fetched segments go here.
    work_dir: PathBuf,
}

/// Runs the attempt described by the environment; returns the process exit code.
pub async fn run_from_env() -> anyhow::Result<u8> {
    let assignment: TaskAssignment =
        serde_json::from_str(&read_env(TASK_ENV)?).with_context(|| format!("{TASK_ENV} is not a task assignment"))?;
    let environment = TaskEnvironment {
        app_id: read_env(env::APP_ID)?
            .parse()
            .with_context(|| format!("{} is not an app id", env::APP_ID))?,
        shuffle_dir: PathBuf::from(read_env(env::SHUFFLE_DIR)?),
        shuffle_token: read_env(env::SHUFFLE_TOKEN)?,
        work_dir: std::env::current_dir().context("cannot read the container's working directory")?,
    };
    tracing::info!(attempt = %assignment.attempt, "task starting");
    let (outcome, counters) = run_attempt(&assignment, &environment).await;
    match &outcome {
        TaskOutcome::Succeeded => tracing::info!(attempt = %assignment.attempt, "task succeeded"),
        TaskOutcome::Failed { error } => tracing::error!(attempt = %assignment.attempt, %error, "task failed"),
        TaskOutcome::FetchFailed { maps, error } => tracing::error!(attempt = %assignment.attempt, ?maps, %error, "fetch failed"),
    }
    let code = match outcome {
        TaskOutcome::Succeeded => exit_code::SUCCEEDED,
        TaskOutcome::Failed { .. } => exit_code::FAILED,
        TaskOutcome::FetchFailed { .. } => exit_code::FETCH_FAILED,
    };
    let report = TaskReport {
        attempt: assignment.attempt,
        progress: 1.0,
        counters,
        outcome: Some(outcome),
    };
    if let Err(err) = send_report(&assignment.am_url, &environment.shuffle_token, &report).await {
        // The exit code still tells the AM, through the RM, how the attempt ended.
        tracing::warn!(error = %err, "cannot report to the application master");
    }
    Ok(code)
}

fn read_env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set: `spindle mr-task` runs only in a MapReduce task container"))
}

async fn run_attempt(assignment: &TaskAssignment, environment: &TaskEnvironment) -> (TaskOutcome, TaskCounters) {
    let result = match &assignment.work {
        TaskWork::Map { split, partitioner } => {
            let parsed = parse_functions(assignment, Stage::Map);
            match parsed {
                Err(error) => Err(error),
                Ok((mapper, combiner)) => {
                    let split_bytes = split.length.max(1);
                    let params = MapTaskParams {
                        split: split.clone(),
                        mapper,
                        combiner,
                        partitioner: partitioner.clone(),
                        sort_buffer_bytes: assignment.functions.sort_buffer_bytes,
                        output_dir: environment.shuffle_dir.clone(),
                        output_name: assignment.attempt.output_name(),
                        env: assignment.functions.env.clone(),
                    };
                    let bytes_read = Arc::new(AtomicU64::new(0));
                    let reporter = report_progress_while_running(assignment, environment, {
                        let bytes_read = Arc::clone(&bytes_read);
                        move || (bytes_read.load(Ordering::Relaxed) as f64 / split_bytes as f64).min(0.99) as f32
                    });
                    let result = blocking(move || run_map_task_with_progress(params, &bytes_read).map(|report| report.counters)).await;
                    reporter.abort();
                    result
                }
            }
        }
        TaskWork::Reduce {
            partition,
            maps,
            output_dir,
        } => return reduce(assignment, environment, *partition, maps, output_dir).await,
    };
    match result {
        Ok(counters) => (TaskOutcome::Succeeded, counters),
        Err(error) => (TaskOutcome::Failed { error }, TaskCounters::default()),
    }
}

/// The mapper and combiner (for a map), or the reducer and nothing (for a reduce).
fn parse_functions(assignment: &TaskAssignment, stage: Stage) -> Result<(TaskFunction, Option<TaskFunction>), String> {
    let functions = &assignment.functions;
    let parse = |field: &str, text: &str, stage| TaskFunction::parse(field, text, stage).map_err(|err| err.to_string());
    match stage {
        Stage::Map => Ok((
            parse("mapper", &functions.mapper, Stage::Map)?,
            functions
                .combiner
                .as_deref()
                .map(|combiner| parse("combiner", combiner, Stage::Combine))
                .transpose()?,
        )),
        _ => Ok((parse("reducer", &functions.reducer, Stage::Reduce)?, None)),
    }
}

async fn reduce(
    assignment: &TaskAssignment,
    environment: &TaskEnvironment,
    partition: u32,
    maps: &[MapOutputLocation],
    output_dir: &Path,
) -> (TaskOutcome, TaskCounters) {
    let reducer = match parse_functions(assignment, Stage::Reduce) {
        Ok((reducer, _)) => reducer,
        Err(error) => return (TaskOutcome::Failed { error }, TaskCounters::default()),
    };
    let fetch_dir = environment.work_dir.join("fetched");
    for dir in [&fetch_dir, &output_dir.to_owned()] {
        if let Err(err) = tokio::fs::create_dir_all(dir).await {
            let error = format!("cannot create {}: {err}", dir.display());
            return (TaskOutcome::Failed { error }, TaskCounters::default());
        }
    }
    // Progress: the first half is fetching (maps fetched), the second half merging and reducing
    // (bytes of the fetched segments read).
    let fetched = Arc::new(AtomicU64::new(0));
    let merged_bytes = Arc::new(AtomicU64::new(0));
    let fetched_bytes = Arc::new(AtomicU64::new(0));
    let reporter = report_progress_while_running(assignment, environment, {
        let (fetched, merged_bytes, fetched_bytes) = (Arc::clone(&fetched), Arc::clone(&merged_bytes), Arc::clone(&fetched_bytes));
        let maps = maps.len().max(1) as f64;
        move || {
            let fetching = fetched.load(Ordering::Relaxed) as f64 / maps;
            let total = fetched_bytes.load(Ordering::Relaxed).max(1) as f64;
            let reducing = merged_bytes.load(Ordering::Relaxed) as f64 / total;
            (0.5 * fetching + 0.5 * reducing).min(0.99) as f32
        }
    });
    let (outcome, counters) = reduce_fetched(
        assignment,
        environment,
        partition,
        maps,
        output_dir,
        reducer,
        &fetch_dir,
        Progress {
            fetched,
            merged_bytes,
            fetched_bytes,
        },
    )
    .await;
    reporter.abort();
    (outcome, counters)
}

/// Counters a reduce attempt updates as it goes, for its progress reports.
struct Progress {
    /// Maps whose segment has been fetched.
    fetched: Arc<AtomicU64>,
    /// Bytes of the fetched segments the merge has read.
    merged_bytes: Arc<AtomicU64>,
    /// Total bytes fetched (known once fetching ends).
    fetched_bytes: Arc<AtomicU64>,
}

/// A reader that adds the bytes it hands out to a shared counter.
struct CountingReader<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: std::io::Read> std::io::Read for CountingReader<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let count = self.inner.read(buffer)?;
        self.read.fetch_add(count as u64, Ordering::Relaxed);
        Ok(count)
    }
}

#[allow(clippy::too_many_arguments)]
async fn reduce_fetched(
    assignment: &TaskAssignment,
    environment: &TaskEnvironment,
    partition: u32,
    maps: &[MapOutputLocation],
    output_dir: &Path,
    reducer: TaskFunction,
    fetch_dir: &Path,
    progress: Progress,
) -> (TaskOutcome, TaskCounters) {
    let files = match fetch_all(environment, partition, maps, fetch_dir, &progress.fetched).await {
        Ok(files) => files,
        Err((maps, error)) => return (TaskOutcome::FetchFailed { maps, error }, TaskCounters::default()),
    };
    let shuffle_bytes: u64 = files
        .iter()
        .filter_map(|path| std::fs::metadata(path).ok())
        .map(|meta| meta.len())
        .sum();
    progress.fetched_bytes.store(shuffle_bytes, Ordering::Relaxed);
    let mut segments = Vec::with_capacity(files.len());
    for (location, path) in maps.iter().zip(&files) {
        match std::fs::File::open(path) {
            Ok(file) => segments.push(MapSegment {
                name: format!("map {} on {}", location.map, location.node_id),
                reader: Box::new(std::io::BufReader::with_capacity(
                    256 * 1024,
                    CountingReader {
                        inner: file,
                        read: Arc::clone(&progress.merged_bytes),
                    },
                )),
            }),
            Err(err) => {
                let error = format!("cannot open fetched segment {}: {err}", path.display());
                return (TaskOutcome::Failed { error }, TaskCounters::default());
            }
        }
    }
    let params = ReduceTaskParams {
        partition,
        segments,
        reducer,
        output_dir: output_dir.to_owned(),
        env: assignment.functions.env.clone(),
    };
    let shuffle_bytes: u64 = files
        .iter()
        .filter_map(|path| std::fs::metadata(path).ok())
        .map(|meta| meta.len())
        .sum();
    let result = blocking(move || {
        run_reduce_task(params).map(|report| TaskCounters {
            shuffle_bytes,
            ..report.counters
        })
    })
    .await;
    // The fetched copies are not needed any more, whatever happened.
    let _ = tokio::fs::remove_dir_all(fetch_dir).await;
    match result {
        Ok(counters) => (TaskOutcome::Succeeded, counters),
        Err(error) => (TaskOutcome::Failed { error }, TaskCounters::default()),
    }
}

/// Fetches this partition of every map into a file each (in map order), a few at a time.
/// Errors: the maps that could not be fetched, and the first error.
async fn fetch_all(
    environment: &TaskEnvironment,
    partition: u32,
    maps: &[MapOutputLocation],
    fetch_dir: &Path,
    fetched: &AtomicU64,
) -> Result<Vec<PathBuf>, (Vec<u32>, String)> {
    let permits = Arc::new(Semaphore::new(PARALLEL_FETCHES));
    let mut fetches = JoinSet::new();
    let mut clients: BTreeMap<String, AgentClient> = BTreeMap::new();
    let mut files = Vec::with_capacity(maps.len());
    for location in maps {
        let client = clients
            .entry(location.node_address.clone())
            .or_insert_with(|| AgentClient::new(&location.node_address, None))
            .clone();
        let path = fetch_dir.join(format!("map_{:06}", location.map));
        files.push(path.clone());
        let (app_id, token, location, permits) = (
            environment.app_id,
            environment.shuffle_token.clone(),
            location.clone(),
            Arc::clone(&permits),
        );
        fetches.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("the semaphore is never closed");
            let result = async {
                let mut file = tokio::fs::File::create(&path).await.map_err(|err| err.to_string())?;
                client
                    .fetch_shuffle_to(app_id, &location.output_name, partition, &token, &mut file)
                    .await
                    .map_err(|err| err.to_string())?;
                tokio::io::AsyncWriteExt::flush(&mut file).await.map_err(|err| err.to_string())
            }
            .await;
            result.map_err(|error| (location.map, format!("map {} on {}: {error}", location.map, location.node_id)))
        });
    }
    let mut failed = Vec::new();
    let mut first_error = None;
    while let Some(joined) = fetches.join_next().await {
        match joined.expect("fetch tasks do not panic") {
            Ok(()) => {
                fetched.fetch_add(1, Ordering::Relaxed);
            }
            Err((map, error)) => {
                failed.push(map);
                first_error.get_or_insert(error);
            }
        }
    }
    if failed.is_empty() {
        return Ok(files);
    }
    failed.sort_unstable();
    Err((failed, first_error.unwrap_or_default()))
}

/// Runs blocking task work off the async threads; a panic becomes a task failure.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> super::TaskResult<T> + Send + 'static) -> Result<T, String> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(err.to_string()),
        Err(join) => Err(format!("the task panicked: {join}")),
    }
}

/// How often a running task tells the AM its progress (what speculation estimates from).
const PROGRESS_REPORT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Reports `progress()` to the AM every second until aborted; a lost report is not retried
/// (the next one carries newer progress).
fn report_progress_while_running(
    assignment: &TaskAssignment,
    environment: &TaskEnvironment,
    progress: impl Fn() -> f32 + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let (am_url, token, attempt) = (assignment.am_url.clone(), environment.shuffle_token.clone(), assignment.attempt);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(PROGRESS_REPORT_INTERVAL).await;
            let report = TaskReport {
                attempt,
                progress: progress(),
                counters: TaskCounters::default(),
                outcome: None,
            };
            if let Err(err) = send_report_once(&am_url, &token, &report).await {
                tracing::debug!(error = %err, "progress report not delivered");
            }
        }
    })
}

async fn send_report_once(am_url: &str, token: &str, report: &TaskReport) -> anyhow::Result<()> {
    let url = format!("{}/v1/tasks/{}", am_url.trim_end_matches('/'), report.attempt);
    let response = reqwest::Client::new()
        .post(&url)
        .timeout(std::time::Duration::from_secs(2))
        .bearer_auth(token)
        .json(report)
        .send()
        .await?;
    anyhow::ensure!(response.status().is_success(), "{url} answered {}", response.status());
    Ok(())
}

/// `POST {am_url}/v1/tasks/{attempt}` with the app's shuffle token; a few tries.
async fn send_report(am_url: &str, token: &str, report: &TaskReport) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .context("cannot build an HTTP client")?;
    let url = format!("{}/v1/tasks/{}", am_url.trim_end_matches('/'), report.attempt);
    let mut last_error = None;
    for delay_ms in [0, 200, 1_000] {
        tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
        match client.post(&url).bearer_auth(token).json(report).send().await {
            Ok(response) if response.status().is_success() => return Ok(()),
            Ok(response) => last_error = Some(anyhow::anyhow!("{url} answered {}", response.status())),
            Err(err) => last_error = Some(anyhow::anyhow!("{url}: {err}")),
        }
    }
    Err(last_error.expect("at least one try"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapreduce::umbilical::{JobFunctions, TaskAttemptId, TaskKind};
    use crate::mapreduce::{MapOutputFiles, Partitioner, Split};

    fn functions() -> JobFunctions {
        JobFunctions {
            mapper: "wordcount".into(),
            combiner: Some("sum".into()),
            reducer: "sum".into(),
            sort_buffer_bytes: 1 << 20,
            env: BTreeMap::new(),
        }
    }

    fn environment(dir: &Path) -> TaskEnvironment {
        TaskEnvironment {
            app_id: "application_1_0001".parse().unwrap(),
            shuffle_dir: dir.join("shuffle"),
            shuffle_token: "token".into(),
            work_dir: dir.join("work"),
        }
    }

    #[tokio::test]
    async fn a_map_attempt_writes_its_output_where_the_shuffle_serves_it() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("input.txt");
        std::fs::write(&input, "a b a\nc a\n").unwrap();
        let environment = environment(dir.path());
        std::fs::create_dir_all(&environment.shuffle_dir).unwrap();
        let attempt = TaskAttemptId {
            kind: TaskKind::Map,
            task: 0,
            attempt: 0,
        };
        let assignment = TaskAssignment {
            attempt,
            functions: functions(),
            work: TaskWork::Map {
                split: Split {
                    path: input,
                    start: 0,
                    length: 10,
                },
                partitioner: Partitioner::Hash { reducers: 2 },
            },
            am_url: "http://127.0.0.1:9".into(),
        };
        let (outcome, counters) = run_attempt(&assignment, &environment).await;
        assert_eq!(outcome, TaskOutcome::Succeeded);
        assert_eq!((counters.map_input_records, counters.map_output_records), (2, 5));
        let files = MapOutputFiles::at(&environment.shuffle_dir, &attempt.output_name());
        assert_eq!(files.read_index().unwrap().len(), 3, "two partitions");
    }

    #[tokio::test]
    async fn a_reduce_that_cannot_fetch_names_the_maps_to_run_again() {
        let dir = tempfile::tempdir().unwrap();
        let environment = environment(dir.path());
        let unreachable = |map| MapOutputLocation {
            map,
            node_id: spindle_protocol::NodeId("gone:1".into()),
            node_address: "127.0.0.1:9".into(),
            output_name: format!("m_{map:06}_0"),
        };
        let assignment = TaskAssignment {
            attempt: TaskAttemptId {
                kind: TaskKind::Reduce,
                task: 0,
                attempt: 0,
            },
            functions: functions(),
            work: TaskWork::Reduce {
                partition: 0,
                maps: vec![unreachable(0), unreachable(1)],
                output_dir: dir.path().join("out"),
            },
            am_url: "http://127.0.0.1:9".into(),
        };
        let (outcome, _) = run_attempt(&assignment, &environment).await;
        let TaskOutcome::FetchFailed { maps, error } = outcome else {
            panic!("expected a fetch failure, got {outcome:?}");
        };
        assert_eq!(maps, [0, 1]);
        assert!(error.contains("map 0 on gone:1") || error.contains("map 1 on gone:1"), "{error}");
    }

    #[tokio::test]
    async fn a_function_the_spec_does_not_allow_fails_the_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let environment = environment(dir.path());
        let mut functions = functions();
        functions.mapper = "sum".into();
        let assignment = TaskAssignment {
            attempt: TaskAttemptId {
                kind: TaskKind::Map,
                task: 0,
                attempt: 0,
            },
            functions,
            work: TaskWork::Map {
                split: Split {
                    path: dir.path().join("missing"),
                    start: 0,
                    length: 1,
                },
                partitioner: Partitioner::Hash { reducers: 1 },
            },
            am_url: "http://127.0.0.1:9".into(),
        };
        let (outcome, _) = run_attempt(&assignment, &environment).await;
        assert!(
            matches!(outcome, TaskOutcome::Failed { ref error } if error.contains("mapper")),
            "{outcome:?}"
        );
    }
}
