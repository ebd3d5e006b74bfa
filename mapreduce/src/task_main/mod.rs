//! The main of a MapReduce task container (`spindle mr-task`): read the assignment the AM put in
//! the environment, run the map or reduce attempt, report the outcome to the AM, and exit with a
//! code that says the same (for an AM that never got the report).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

mod fetch;
mod reports;
#[cfg(test)]
mod tests;

use anyhow::Context;
use spindle_protocol::{AppId, Stage, TaskFunction, env};

use super::task_protocol::{MapOutputLocation, TASK_ENV, TaskAssignment, TaskOutcome, TaskReport, TaskWork};
use super::{MapSegment, MapTaskParams, ReduceTaskParams, TaskCounters, run_map_task_with_progress, run_reduce_task};
use fetch::{CountingReader, fetch_all};
use reports::{report_progress_while_running, send_report};

/// Exit codes of a task container, read by the AM when no report arrived.
pub mod exit_code {
    pub const SUCCEEDED: u8 = 0;
    pub const FAILED: u8 = 1;
    pub const FETCH_FAILED: u8 = 3;
}

/// What a task container needs besides its assignment, from the agent's environment.
struct TaskEnvironment {
    app_id: AppId,
    shuffle_dir: PathBuf,
    shuffle_token: String,
    /// The container's working directory: fetched segments go here.
    work_dir: PathBuf,
    /// How long a fetch from an agent that cannot be reached is retried (`fetch.rs`).
    unreachable_retry_window: std::time::Duration,
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
        unreachable_retry_window: fetch::UNREACHABLE_RETRY_WINDOW,
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
                    let reporter =
                        report_progress_while_running(assignment.am_url.clone(), environment.shuffle_token.clone(), assignment.attempt, {
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
        } => {
            let Ok(url) = spindle_storage::DataUrl::parse(output_dir) else {
                let error = format!("the output directory {output_dir:?} is not a path or URL");
                return (TaskOutcome::Failed { error }, TaskCounters::default());
            };
            let spindle_storage::DataUrl::S3 { .. } = url else {
                return reduce(assignment, environment, *partition, maps, std::path::Path::new(output_dir)).await;
            };
            // On an object store: written here, then uploaded under the attempt's own prefix;
            // only the AM's commit copies the winner's into the output.
            let local = environment.work_dir.join("output");
            let (outcome, counters) = reduce(assignment, environment, *partition, maps, &local).await;
            if outcome != TaskOutcome::Succeeded {
                return (outcome, counters);
            }
            let name = crate::part_file_name(*partition);
            let s3 = spindle_storage::S3Settings::from_env(&assignment.functions.env);
            let uploaded = match spindle_storage::ObjectUrl::parse(&url.join(&name).to_string(), &s3) {
                Ok(object) => object.upload_file(&local.join(&name)).await.map_err(|error| error.to_string()),
                Err(error) => Err(error.to_string()),
            };
            return match uploaded {
                Ok(_) => (outcome, counters),
                Err(error) => (
                    TaskOutcome::Failed {
                        error: format!("cannot upload the reduce output: {error}"),
                    },
                    counters,
                ),
            };
        }
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
    let reporter = report_progress_while_running(assignment.am_url.clone(), environment.shuffle_token.clone(), assignment.attempt, {
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

/// Runs blocking task work off the async threads; a panic becomes a task failure.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> super::TaskResult<T> + Send + 'static) -> Result<T, String> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(err.to_string()),
        Err(join) => Err(format!("the task panicked: {join}")),
    }
}
