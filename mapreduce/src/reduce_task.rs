//! A reduce task: merge one partition's segments from every map, run the reducer over each
//! group of equal keys, and write `part-r-NNNNN` for the AM to commit.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{BufWriter, Read};
use std::path::PathBuf;

use spindle_protocol::TaskFunction;

use super::combine::{GroupFunction, reduce_sorted};
use super::counters::TaskCounters;
use super::error::{TaskError, TaskResult};
use super::functions::write_text_record;
use super::merge::MergedRecords;

/// One map's segment of this reduce task's partition: framed records sorted by key, read as a
/// stream (a file, or the body of a fetch from a shuffle server).
pub struct MapSegment {
    /// Which map it came from, for errors (for example `map 12 on node-3`).
    pub name: String,
    /// The segment's bytes.
    pub reader: Box<dyn Read + Send>,
}

impl fmt::Debug for MapSegment {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("MapSegment")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Everything a reduce task needs.
#[derive(Debug)]
pub struct ReduceTaskParams {
    /// The partition this task reduces; names the output `part-r-NNNNN`.
    pub partition: u32,
    /// The partition's segment from every map, in map order (equal keys keep that order).
    pub segments: Vec<MapSegment>,
    /// A reduce built-in (`sum`, `count`, `identity`, `sort`) or a command.
    pub reducer: TaskFunction,
    /// The attempt's temporary directory; the AM renames the output into place at commit.
    pub output_dir: PathBuf,
    /// Extra environment of a reducer command.
    pub env: BTreeMap<String, String>,
}

/// What a finished reduce task produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReduceTaskReport {
    /// `output_dir/part-r-NNNNN`.
    pub output: PathBuf,
    pub counters: TaskCounters,
}

/// The output file name of a partition: `part-r-00007`.
pub fn part_file_name(partition: u32) -> String {
    format!("part-r-{partition:05}")
}

/// Runs a reduce task to completion (blocking). The segments are merged as streams: memory
/// holds one record per map, however large the partition.
pub fn run_reduce_task(params: ReduceTaskParams) -> TaskResult<ReduceTaskReport> {
    let mut env = params.env;
    env.insert("mapreduce_task_partition".into(), params.partition.to_string());
    let reducer = GroupFunction::new(&params.reducer, &env, "reducer")?;
    let output = params.output_dir.join(part_file_name(params.partition));
    let temporary = params.output_dir.join(format!(".{}.tmp", part_file_name(params.partition)));
    let file = File::create(&temporary).map_err(TaskError::io("create the reduce output", &temporary))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut merged = MergedRecords::new(params.segments.into_iter().map(|segment| (segment.name, segment.reader)).collect());
    let (mut records, mut bytes) = (0, 0);
    let counts = reduce_sorted(reducer, &mut merged, |key, value| {
        records += 1;
        bytes += write_text_record(&mut out, key, value).map_err(TaskError::io("write the reduce output", &temporary))?;
        Ok(())
    })?;
    let file = out
        .into_inner()
        .map_err(|error| TaskError::io("write the reduce output", &temporary)(error.into_error()))?;
    file.sync_all().map_err(TaskError::io("sync the reduce output", &temporary))?;
    fs::rename(&temporary, &output).map_err(TaskError::io("rename the reduce output into place", &output))?;
    Ok(ReduceTaskReport {
        output,
        counters: TaskCounters {
            reduce_input_groups: counts.input_groups,
            reduce_input_records: counts.input_records,
            reduce_output_records: records,
            bytes_written: bytes,
            ..TaskCounters::default()
        },
    })
}
