//! One task and its attempts, as the job tracks them.

use spindle_protocol::{ContainerId, NodeId};

use crate::TaskCounters;
use crate::task_protocol::{MapOutputLocation, TaskAttemptId, TaskKind};

/// Where one task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Needs a container (a map also when its output was lost).
    Pending,
    /// At least one live attempt, none succeeded yet.
    Running,
    /// An attempt succeeded (report and clean exit); for a map, its output is `Task::output`.
    Succeeded,
}

impl TaskState {
    pub const ALL: [TaskState; 3] = [TaskState::Pending, TaskState::Running, TaskState::Succeeded];

    /// The legal transitions: an attempt starts (`Pending → Running`, or a second one while
    /// `Running`), the last live attempt ends without success (`Running → Pending`), one
    /// succeeds, and a succeeded map's output is lost (`Succeeded → Pending`). The job's end
    /// also sends running tasks back to `Pending` (their containers are released).
    pub fn can_become(self, next: TaskState) -> bool {
        use TaskState::*;
        matches!(
            (self, next),
            (Pending, Running) | (Running, Running) | (Running, Pending) | (Running, Succeeded) | (Succeeded, Pending)
        )
    }
}

/// One map or reduce task.
#[derive(Debug, Clone)]
pub(super) struct Task {
    pub kind: TaskKind,
    /// Map index (split order) or reduce partition.
    pub index: u32,
    pub state: TaskState,
    /// Nodes holding the map's split (avoided nodes are filtered out when asking).
    pub preferred_nodes: Vec<NodeId>,
    /// The number of the next attempt; every start takes one, speculative ones too.
    pub next_attempt: u32,
    /// Attempts now running (one, or two while speculated).
    pub live_attempts: Vec<u32>,
    /// Failures that count toward `max_task_attempts`.
    pub counted_failures: u32,
    /// The last counted failure's description, for the job's diagnostics.
    pub last_error: Option<String>,
    /// Launches lost to an unreachable agent: counted only past a limit, so a node the AM
    /// cannot reach does not loop forever.
    pub unreachable_launches: u32,
    /// The speculation pass chose this task: it wants a second container.
    pub wants_speculative: bool,
    /// A speculative attempt was started once; never again.
    pub speculated: bool,
    /// A succeeded map's output (its node and name), cleared when that output is lost.
    pub output: Option<MapOutputLocation>,
    /// The attempt that succeeded (for a map: that wrote `output`; for a reduce: whose part
    /// file the commit publishes).
    pub output_attempt: Option<u32>,
    /// Counters of the attempt that succeeded last.
    pub success_counters: Option<TaskCounters>,
    /// How long that attempt ran, for the stage's median.
    pub success_duration_ms: Option<u64>,
}

impl Task {
    pub fn new(kind: TaskKind, index: u32, preferred_nodes: Vec<NodeId>) -> Self {
        Task {
            kind,
            index,
            state: TaskState::Pending,
            preferred_nodes,
            next_attempt: 0,
            live_attempts: Vec::new(),
            counted_failures: 0,
            last_error: None,
            unreachable_launches: 0,
            wants_speculative: false,
            speculated: false,
            output: None,
            output_attempt: None,
            success_counters: None,
            success_duration_ms: None,
        }
    }

    /// Moves to `next`, which must be a legal transition (checked in debug builds).
    pub fn move_to(&mut self, next: TaskState) {
        debug_assert!(
            self.state.can_become(next),
            "{}: illegal transition {:?} -> {:?}",
            self.name(),
            self.state,
            next
        );
        self.state = next;
    }

    pub fn name(&self) -> String {
        match self.kind {
            TaskKind::Map => format!("map {}", self.index),
            TaskKind::Reduce => format!("reduce {}", self.index),
        }
    }
}

/// One live attempt (ended attempts are dropped; their effects live on in the task and counts).
#[derive(Debug, Clone)]
pub(super) struct Attempt {
    pub id: TaskAttemptId,
    /// Where it runs: completions and launch failures name the container.
    pub container_id: ContainerId,
    /// Its node: failures count against it, and a map's output lives there.
    pub node_id: NodeId,
    /// The node agent's address, where a succeeded map's output is fetched from.
    pub node_address: String,
    /// When the grant was assigned: the start of its elapsed time for speculation.
    pub launched_ms: u64,
    /// Latest reported progress, 0.0 ..= 1.0.
    pub progress: f64,
    /// Latest reported counters; the task's counters if this attempt wins.
    pub counters: TaskCounters,
    /// The task said `Succeeded`; it succeeds once its container also exits 0.
    pub reported_success: bool,
    /// The container exited 0 before the task's `Succeeded` report: when, so that a report
    /// that never comes fails the attempt after `REPORT_GRACE_MS`.
    pub exited_cleanly_ms: Option<u64>,
    /// A second attempt of a straggler (counted against the speculation cap).
    pub speculative: bool,
    /// A reduce's map outputs, by map: the attempt number each was fetched from, so that a
    /// fetch failure about an output since replaced is recognised as stale.
    pub map_output_attempts: Vec<u32>,
}
