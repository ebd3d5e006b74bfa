//! The job's visible state: per-stage task counts, overall progress, summed counters and
//! attempt tallies, as the AM puts them in its progress and diagnostics.

use serde::{Deserialize, Serialize};
use spindle_protocol::NodeId;

use super::MapReduceJob;
use super::task::{Task, TaskState};
use crate::TaskCounters;
use crate::task_protocol::TaskAttemptId;

/// Tasks of one stage by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct StageProgress {
    pub total: u32,
    pub pending: u32,
    pub running: u32,
    pub succeeded: u32,
    /// 0.0 ..= 1.0: succeeded tasks plus the best progress of each running one, over `total`.
    pub progress: f32,
}

/// A snapshot of the whole job for reports and progress bars.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobProgress {
    pub maps: StageProgress,
    pub reduces: StageProgress,
    /// Maps count for half and reduces for half (Hadoop's split), 0.0 ..= 1.0.
    pub progress: f32,
    /// Sum of the counters of each task's succeeded attempt (a map run again after its output
    /// was lost counts once, with its latest success).
    pub counters: TaskCounters,
    /// Attempts that failed and counted toward `max_task_attempts`.
    pub failed_attempts: u64,
    /// Attempts ended without counting: preempted, node lost, killed, speculative losers,
    /// fetch failures.
    pub killed_attempts: u64,
    /// Speculative attempts started.
    pub speculative_attempts: u64,
    /// Reduce attempts ended by a fetch failure.
    pub fetch_failures: u64,
    /// Succeeded maps run again because their output was lost.
    pub lost_map_outputs: u64,
    /// Nodes the job avoids after repeated failures there.
    pub avoided_nodes: Vec<NodeId>,
}

impl MapReduceJob {
    /// Where the job is, for the app report.
    pub fn progress(&self) -> JobProgress {
        let maps = self.stage_progress(&self.maps);
        let reduces = self.stage_progress(&self.reduces);
        let mut counters = TaskCounters::default();
        for task_counters in self
            .maps
            .iter()
            .chain(&self.reduces)
            .filter_map(|task| task.success_counters.as_ref())
        {
            add_counters(&mut counters, task_counters);
        }
        JobProgress {
            maps,
            reduces,
            progress: (maps.progress + reduces.progress) / 2.0,
            counters,
            failed_attempts: self.tallies.failed,
            killed_attempts: self.tallies.killed,
            speculative_attempts: self.tallies.speculative,
            fetch_failures: self.tallies.fetch_failures,
            lost_map_outputs: self.tallies.lost_map_outputs,
            avoided_nodes: self.avoided_nodes(),
        }
    }

    fn stage_progress(&self, tasks: &[Task]) -> StageProgress {
        let mut stage = StageProgress {
            total: tasks.len() as u32,
            ..StageProgress::default()
        };
        let mut done = 0.0f64;
        for task in tasks {
            match task.state {
                TaskState::Pending => stage.pending += 1,
                TaskState::Running => {
                    stage.running += 1;
                    let best = task
                        .live_attempts
                        .iter()
                        .filter_map(|&attempt| {
                            let id = TaskAttemptId {
                                kind: task.kind,
                                task: task.index,
                                attempt,
                            };
                            self.attempts.get(&id).map(|live| live.progress)
                        })
                        .fold(0.0, f64::max);
                    done += best;
                }
                TaskState::Succeeded => {
                    stage.succeeded += 1;
                    done += 1.0;
                }
            }
        }
        stage.progress = if tasks.is_empty() {
            1.0
        } else {
            (done / tasks.len() as f64).clamp(0.0, 1.0) as f32
        };
        stage
    }
}

/// `total += counters`, field by field.
pub fn add_counters(total: &mut TaskCounters, counters: &TaskCounters) {
    let TaskCounters {
        map_input_records,
        map_input_bytes,
        map_output_records,
        combine_input_records,
        combine_output_records,
        spilled_records,
        spills,
        reduce_input_groups,
        reduce_input_records,
        reduce_output_records,
        bytes_written,
        shuffle_bytes,
    } = *counters;
    total.map_input_records += map_input_records;
    total.map_input_bytes += map_input_bytes;
    total.map_output_records += map_output_records;
    total.combine_input_records += combine_input_records;
    total.combine_output_records += combine_output_records;
    total.spilled_records += spilled_records;
    total.spills += spills;
    total.reduce_input_groups += reduce_input_groups;
    total.reduce_input_records += reduce_input_records;
    total.reduce_output_records += reduce_output_records;
    total.bytes_written += bytes_written;
    total.shuffle_bytes += shuffle_bytes;
}
