//! The counters a task reports (Hadoop's task counters, by the same names where they exist).

use serde::{Deserialize, Serialize};

/// What a map or reduce task did; the AM adds them up into the job's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCounters {
    /// Lines a map task read from its split.
    pub map_input_records: u64,
    /// Bytes of those lines, newlines included.
    pub map_input_bytes: u64,
    /// Records the mapper emitted.
    pub map_output_records: u64,
    /// Records that went into the combiner (every round: buffer, spills' merge).
    pub combine_input_records: u64,
    /// Records the combiner emitted.
    pub combine_output_records: u64,
    /// Records a map task wrote to disk: its spills and its final output.
    pub spilled_records: u64,
    /// Spill files a map task wrote before its final output (0 if it all fit in memory).
    pub spills: u64,
    /// Distinct keys a reduce task saw.
    pub reduce_input_groups: u64,
    /// Records a reduce task read from all map outputs.
    pub reduce_input_records: u64,
    /// Records the reducer emitted.
    pub reduce_output_records: u64,
    /// Bytes of the task's output: the map output's `.data`, or the reducer's `part-r-NNNNN`.
    pub bytes_written: u64,
    /// Bytes a reduce task fetched from the maps' agents (Hadoop's shuffle bytes).
    #[serde(default)]
    pub shuffle_bytes: u64,
}
