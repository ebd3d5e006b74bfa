//! What passes between the MapReduce AM and its task containers (Hadoop's "task_protocol"): the
//! assignment a task container is started with (JSON in `SPINDLE_MR_TASK`), and the status
//! reports a task sends the AM over HTTP while it runs and when it ends.

use std::fmt;

use serde::{Deserialize, Serialize};
use spindle_protocol::NodeId;

use super::{Partitioner, Split, TaskCounters};

/// Environment variable holding a task container's [`TaskAssignment`] as JSON.
pub const TASK_ENV: &str = "SPINDLE_MR_TASK";

/// Map or reduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    Map,
    Reduce,
}

/// One attempt of one task: `m_000012_1` is the second attempt (from 0) of map 12.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskAttemptId {
    pub kind: TaskKind,
    /// Map index (split order) or reduce partition.
    pub task: u32,
    /// Attempt number of this task, from 0; speculative attempts get the next number too.
    pub attempt: u32,
}

impl fmt::Display for TaskAttemptId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            TaskKind::Map => 'm',
            TaskKind::Reduce => 'r',
        };
        write!(f, "{kind}_{:06}_{}", self.task, self.attempt)
    }
}

impl TaskAttemptId {
    /// The name of a map attempt's output files (`<name>.data`, `<name>.index`) in the app's
    /// shuffle directory on its node; a valid shuffle output name.
    pub fn output_name(&self) -> String {
        self.to_string()
    }
}

/// The job-wide part of every assignment: the functions as the spec names them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobFunctions {
    pub mapper: String,
    pub combiner: Option<String>,
    pub reducer: String,
    /// Sort buffer of a map task, in bytes.
    pub sort_buffer_bytes: usize,
    /// Environment of streaming commands (the spec's `env`).
    pub env: std::collections::BTreeMap<String, String>,
}

/// Where one map's output can be fetched from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapOutputLocation {
    pub map: u32,
    pub node_id: NodeId,
    /// The agent's API address (`host:port`), where `/v1/shuffle/…` is served.
    pub node_address: String,
    /// The successful attempt's output name.
    pub output_name: String,
}

/// What one task attempt does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskWork {
    /// Read `split`, write map output partitioned by `partitioner` into the shuffle directory.
    Map { split: Split, partitioner: Partitioner },
    /// Fetch `partition` from every map in `maps` (all of them, in map order), reduce, and write
    /// `part-r-NNNNN` into `output_dir` (the job's temporary output directory).
    Reduce {
        partition: u32,
        maps: Vec<MapOutputLocation>,
        /// A local directory, or an `s3://` prefix the part file is uploaded to.
        output_dir: String,
    },
}

/// A task container's instructions (JSON in [`TASK_ENV`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskAssignment {
    pub attempt: TaskAttemptId,
    pub functions: JobFunctions,
    pub work: TaskWork,
    /// Base URL of the AM's task API, where the task sends its [`TaskReport`]s.
    pub am_url: String,
}

/// How a task attempt ended, as the task itself saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskOutcome {
    /// Map output is complete in the shuffle directory under `attempt.output_name()`; reduce
    /// output is `part-r-NNNNN` in the assignment's `output_dir`.
    Succeeded,
    /// The task's own failure (bad input, a failing command): counts toward
    /// `max_task_attempts`. `error` is shown in the job's diagnostics.
    Failed { error: String },
    /// A reducer could not fetch these maps' output (their node is gone or lost the files):
    /// the AM re-runs those maps; the reduce attempt does not count as failed.
    FetchFailed { maps: Vec<u32>, error: String },
}

/// Task → AM, `POST {am_url}/v1/tasks/{attempt}`: progress while it runs, the outcome at the
/// end. Authenticated with the app's shuffle token (every container of the app has it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskReport {
    pub attempt: TaskAttemptId,
    /// 0.0 ..= 1.0: bytes of the split read (map), or segments merged and reduced (reduce).
    pub progress: f32,
    pub counters: TaskCounters,
    /// Set on the last report.
    pub outcome: Option<TaskOutcome>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_names_are_hadoop_like_and_valid_output_names() {
        let attempt = TaskAttemptId {
            kind: TaskKind::Map,
            task: 12,
            attempt: 1,
        };
        assert_eq!(attempt.to_string(), "m_000012_1");
        assert!(crate::is_valid_output_name(&attempt.output_name()));
    }
}
