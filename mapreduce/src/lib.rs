//! The MapReduce task runtime: what map and reduce task containers run (issue 4).
//!
//! ```text
//! map:    split ─ SplitReader ─ mapper ─ partitioner ─ sort buffer (or running totals) ─ spills ─ merge ─ <name>.data + .index
//! reduce: one partition's segment from every map ─ k-way merge ─ reducer ─ part-r-NNNNN
//! ```
//!
//! The AM (scheduling, retries, speculation, commit) calls `expand_inputs` and `compute_splits`
//! to plan map tasks, `sample_input_keys` and `sample_split_points` for a total-order sort, then
//! `run_map_task` and `run_reduce_task` (blocking) inside task containers.
//!
//! Formats, fixed because other processes read them:
//! - Map output (read by the node agent's shuffle server): `<name>.data` holds each partition's
//!   records in key order, each framed `u32 LE key length, u32 LE value length, key, value`;
//!   `<name>.index` holds `reducers + 1` LE `u64` offsets (partition `p` is
//!   `data[index[p]..index[p + 1]]`). `.data` is renamed into place before `.index`.
//! - Text (input of streaming commands, `part-r-NNNNN`): `key<TAB>value<LF>`, and `key<LF>`
//!   when the value is empty; reading, a line without a tab is a key with an empty value.
//! - Input lines end at `\n` (a `\r` before it is dropped); a line belongs to the split its
//!   first byte is in (Hadoop's rule), so every line is read exactly once.
//! - The hash partitioner is FNV-1a 64 of the key bytes modulo reducers, the same everywhere.

mod aggregate;
#[cfg(test)]
mod bench_tests;
mod collector;
mod combine;
mod command;
pub mod committer;
mod counters;
mod error;
mod functions;
mod glob;
mod input;
pub mod job;
mod map_output;
mod map_task;
pub mod master;
mod merge;
pub mod planning;
mod records;
mod reduce_task;
mod sampling;
mod sort_buffer;
mod split_reader;
pub mod task_api;
pub mod task_main;
pub mod task_protocol;
#[cfg(test)]
mod tests;

pub use counters::TaskCounters;
pub use error::{TaskError, TaskResult};
pub use functions::{split_key_value, write_text_record};
pub use input::{InputFile, Split, compute_splits, expand_inputs};
pub use map_output::{MapOutputFiles, is_valid_output_name};
pub use map_task::{MapTaskParams, MapTaskReport, run_map_task, run_map_task_with_progress};
pub use master::MapReduceMaster;
pub use records::{FrameReader, Partitioner, SortedRecords, fnv1a_64, write_frame};
pub use reduce_task::{MapSegment, ReduceTaskParams, ReduceTaskReport, part_file_name, run_reduce_task};
pub use sampling::{sample_input_keys, sample_split_points};
pub use split_reader::SplitReader;
