//! A map task: read a split's lines, run the mapper, and write the partitioned, sorted and
//! combined map output for the shuffle.

use spindle_storage::S3Settings;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use spindle_protocol::TaskFunction;

use super::collector::MapOutputCollector;
use super::combine::GroupFunction;
use super::command::{run_streaming, stdin_error};
use super::counters::TaskCounters;
use super::error::{TaskError, TaskResult};
use super::functions::BuiltinMapper;
use super::input::Split;
use super::map_output::{MapOutputFiles, is_valid_output_name};
use super::records::Partitioner;
use super::split_reader::SplitReader;

/// Splits at least this large are read by a thread of their own, ahead of the mapper.
const READ_AHEAD_MIN_SPLIT_BYTES: u64 = 4 << 20;
/// Size of the blocks read ahead.
const READ_AHEAD_BLOCK_BYTES: usize = 1 << 20;

/// Everything a map task needs; the AM fills it from the job spec and the task's split.
#[derive(Debug, Clone)]
pub struct MapTaskParams {
    /// The bytes of input this task reads (lines starting in it).
    pub split: Split,
    /// A map built-in (`wordcount`, `grep`, `identity`, `sort`) or a command.
    pub mapper: TaskFunction,
    /// A built-in `sum`/`count` or a command, run on the sorted output before the shuffle.
    pub combiner: Option<TaskFunction>,
    /// Which reducer gets each key; also says how many reducers there are.
    pub partitioner: Partitioner,
    /// Memory for map output before it spills to disk (the spec's `sort_buffer_mb`, in bytes).
    pub sort_buffer_bytes: usize,
    /// Directory of the map output (on the node agent's disk, where the shuffle serves it).
    pub output_dir: PathBuf,
    /// The map output's name: `<name>.data` and `<name>.index` (`[A-Za-z0-9_.-]+`).
    pub output_name: String,
    /// Extra environment of mapper and combiner commands.
    pub env: BTreeMap<String, String>,
}

/// What a finished map task produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapTaskReport {
    /// The complete map output.
    pub output: MapOutputFiles,
    /// Its index: partition `p` is bytes `index[p]..index[p + 1]` of the data.
    pub index: Vec<u64>,
    pub counters: TaskCounters,
}

/// Runs a map task to completion (blocking: call it from a thread of its own or
/// `spawn_blocking`).
pub fn run_map_task(params: MapTaskParams) -> TaskResult<MapTaskReport> {
    run_map_task_with_progress(params, &AtomicU64::new(0))
}

/// How many input lines pass between two updates of the progress counter.
const PROGRESS_EVERY_LINES: u64 = 4096;

/// `run_map_task`, storing the bytes of the split read so far into `bytes_read` as it goes
/// (every few thousand lines), for the task's progress reports.
pub fn run_map_task_with_progress(params: MapTaskParams, bytes_read: &AtomicU64) -> TaskResult<MapTaskReport> {
    if !is_valid_output_name(&params.output_name) {
        return Err(TaskError::InvalidParams(format!(
            "map output name `{}` must match [A-Za-z0-9_.-]+",
            params.output_name
        )));
    }
    params.partitioner.validate().map_err(TaskError::InvalidParams)?;
    let combiner = params
        .combiner
        .as_ref()
        .map(|combiner| GroupFunction::new(combiner, &params.env, "combiner"))
        .transpose()?;
    let mut collector = MapOutputCollector::new(
        &params.partitioner,
        combiner,
        params.sort_buffer_bytes.max(1),
        &params.output_dir,
        &params.output_name,
    );
    let s3 = S3Settings::from_env(&params.env);
    let mut reader = if params.split.length >= READ_AHEAD_MIN_SPLIT_BYTES {
        SplitReader::open_read_ahead(&params.split, &s3, READ_AHEAD_BLOCK_BYTES)?
    } else {
        SplitReader::open(&params.split, &s3)?
    };
    let mut input_records = 0;
    match &params.mapper {
        TaskFunction::Builtin(builtin) => {
            let mapper = BuiltinMapper::new(builtin)
                .ok_or_else(|| TaskError::InvalidParams(format!("built-in `{builtin:?}` cannot be a mapper")))?;
            let mut emit = |key: &[u8], value: &[u8]| collector.collect(key, value);
            while let Some(line) = reader.next_line()? {
                input_records += 1;
                mapper.map_line(line, &mut emit)?;
                if input_records % PROGRESS_EVERY_LINES == 0 {
                    bytes_read.store(reader.bytes_read(), Ordering::Relaxed);
                }
            }
        }
        TaskFunction::Command(command) => {
            let mut env = params.env.clone();
            // Hadoop Streaming's names for the split, which scripts use.
            env.insert("mapreduce_map_input_file".into(), params.split.path.clone());
            env.insert("mapreduce_map_input_start".into(), params.split.start.to_string());
            env.insert("mapreduce_map_input_length".into(), params.split.length.to_string());
            let records = &mut input_records;
            let reader = &mut reader;
            run_streaming(
                command,
                &env,
                move |stdin| {
                    while let Some(line) = reader.next_line()? {
                        *records += 1;
                        stdin.write_all(line).map_err(stdin_error)?;
                        stdin.write_all(b"\n").map_err(stdin_error)?;
                        if *records % PROGRESS_EVERY_LINES == 0 {
                            bytes_read.store(reader.bytes_read(), Ordering::Relaxed);
                        }
                    }
                    Ok(())
                },
                |key, value| collector.collect(key, value),
            )?;
        }
    }
    bytes_read.store(reader.bytes_read(), Ordering::Relaxed);
    let (output, index, mut counters) = collector.finish()?;
    counters.map_input_records = input_records;
    counters.map_input_bytes = reader.bytes_read();
    Ok(MapTaskReport { output, index, counters })
}
