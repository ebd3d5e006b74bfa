//! The MapReduce job as a pure state machine: which task each grant runs, what to ask the RM
//! for, how reports and container completions move tasks along, retries, node avoidance, lost
//! map output, speculation, and when the job is ready to commit or has failed. No I/O and no
//! clock: the AM's driver loop feeds it events with `now_ms` and carries out what it returns.
//!
//! ```text
//!  RM reply ── completed ──► on_container_completed ─┐
//!           └─ allocated ──► on_granted ─────────────┤        ┌─► asks()          ─┐
//!  task API ── TaskReport ─► on_task_report ─────────┼─► task ├─► take_releases()  ├─► next allocate
//!  launcher ── failure ────► on_launch_failed ───────┤  table ├─► progress()      ─┘
//!  timer ───── now_ms ─────► tick ───────────────────┘        └─► outcome(): ReadyToCommit | Failed
//! ```
//!
//! A driver round: `tick(now)`; allocate with `asks()`, `take_releases()` and
//! `progress().progress`; feed the reply's completions first (a task they free can take a grant
//! of the same reply), then each grant to `on_granted`, launching what it says with the
//! assignment as JSON in `SPINDLE_MR_TASK`; feed launch failures and task reports as they come.
//! On `ReadyToCommit`, send the last releases, publish `winning_reduce_attempts()` with the
//! `OutputCommitter`, then `commit_done()` (or `commit_failed`) and finish; on `Failed`, send
//! the releases and finish with the diagnostics.
//!
//! Rules:
//! - **Success** of an attempt needs both its `Succeeded` report and its container's exit 0,
//!   in either order. Reports normally come first (the task posts before it exits); an exit 0
//!   whose report has not come within `REPORT_GRACE_MS` (checked by `tick`) is a failure.
//!   A map's output then lives on that attempt's node, served by its agent.
//! - **Slowstart 1.0**: reduces are asked for and started only while every map has output
//!   (their assignment lists every map's location). A map re-run after a lost output holds
//!   back pending reduces; running ones carry on.
//! - **Counted failures** (toward `max_task_attempts`, and toward avoiding the node): a
//!   `Failed` report, a container failing (non-zero exit, memory limit), an exit 0 without a
//!   report, a launch the agent refused, and unreachable-agent launches past
//!   `MAX_UNCOUNTED_LAUNCH_FAILURES`. Not counted: preemption, node lost, containers killed
//!   by the RM or the app, expired grants, fetch failures (the reduce is re-queued). The job
//!   fails when a task has `max_task_attempts` counted failures and no live attempt left: a
//!   speculative sibling still running may yet succeed.
//! - **Lost map output**: a `FetchFailed { maps }` re-runs those maps (if the failure is about
//!   their current output) and counts a failure against the node that served them; a
//!   `NODE_LOST` completion (or `on_node_lost`) re-runs every map whose output was on that node,
//!   as long as some reduce has not succeeded. Neither counts toward `max_task_attempts`.
//! - **Locality**: one map ask per distinct preferred-node list; a grant on node X runs a
//!   pending map preferring X, else one without preferences, else any map, else a speculative
//!   map, else (maps all done) a reduce, else a speculative reduce; else it is released.
//! - **Priorities**: maps ask at `MAP_PRIORITY`, reduces at `REDUCE_PRIORITY` (served later).
//! - **`max_containers`** caps held containers plus asked-for ones; grants beyond it are released.
//! - **Speculation**: see `speculation.rs`; checked by `tick` once a stage has no pending task.
//!   One speculative attempt per task; whichever attempt succeeds first wins, the other's
//!   container is released (killed).

mod events;
#[cfg(test)]
mod fault_tests;
mod grants;
mod nodes;
mod plan;
mod progress;
#[cfg(test)]
mod prop_tests;
mod speculation;
mod task;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashSet};

use spindle_protocol::{ContainerId, NodeId};

use super::task_protocol::{TaskAttemptId, TaskKind};
use nodes::NodeHealth;
use task::{Attempt, Task};

pub use plan::{
    DEFAULT_NODE_FAILURE_THRESHOLD, GrantDecision, JobOutcome, JobPlan, JobSettings, ReleaseReason, SpeculationSettings, TaskLaunch,
};
pub use progress::{JobProgress, StageProgress};
pub use task::TaskState;

/// Ask priority of map containers (lower is served first).
pub const MAP_PRIORITY: i32 = 10;
/// Ask priority of reduce containers.
pub const REDUCE_PRIORITY: i32 = 20;
/// How long after a container's exit 0 its task's `Succeeded` report may still arrive.
pub const REPORT_GRACE_MS: u64 = 10_000;
/// Launches of one task lost to an unreachable agent before they count as failures.
pub const MAX_UNCOUNTED_LAUNCH_FAILURES: u32 = 10;

/// Attempt tallies for the job's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct AttemptTallies {
    /// Attempts that failed and counted toward `max_task_attempts`.
    failed: u64,
    /// Attempts ended without counting: preempted, node lost, killed (speculative losers too).
    killed: u64,
    /// Speculative attempts started.
    speculative: u64,
    /// Reduce attempts ended by a fetch failure.
    fetch_failures: u64,
    /// Succeeded maps whose output was lost and had to run again.
    lost_map_outputs: u64,
}

/// The state of one MapReduce job (see the module doc for its rules).
#[derive(Debug, Clone)]
pub struct MapReduceJob {
    /// Splits, partitioner and functions: what assignments are built from.
    plan: JobPlan,
    /// Sizes, limits and speculation knobs.
    settings: JobSettings,
    /// Map task `i` reads `plan.splits[i]`.
    maps: Vec<Task>,
    /// Reduce task `p` reduces partition `p`.
    reduces: Vec<Task>,
    /// Live attempts (running, or exited 0 awaiting their report).
    attempts: BTreeMap<TaskAttemptId, Attempt>,
    /// The attempt each container we hold runs; a container leaves when it completes or is
    /// released. Its size is what counts against `max_containers`.
    containers: BTreeMap<ContainerId, TaskAttemptId>,
    /// Every container ever granted: a grant delivered again (after an RM restart) is ignored.
    seen_containers: HashSet<ContainerId>,
    /// Containers to hand back (or kill) in the next allocate.
    releases: Vec<ContainerId>,
    /// Failures per node, and the nodes avoided because of them.
    nodes: NodeHealth,
    /// Attempt counts for `JobProgress`.
    tallies: AttemptTallies,
    /// Set once the job is ready to commit, committed, or failed; then nothing runs any more.
    outcome: Option<JobOutcome>,
}

impl MapReduceJob {
    /// A job with every task pending. The spec guarantees at least one reducer; a plan with
    /// none would have nothing to reduce and is ready to commit at once.
    pub fn new(plan: JobPlan, settings: JobSettings) -> Self {
        let reducers = plan.partitioner.reducers();
        let maps = (0..plan.splits.len())
            .map(|index| {
                let mut preferred = plan.preferred_nodes.get(index).cloned().unwrap_or_default();
                preferred.sort();
                preferred.dedup();
                Task::new(TaskKind::Map, index as u32, preferred)
            })
            .collect();
        let reduces = (0..reducers).map(|index| Task::new(TaskKind::Reduce, index, Vec::new())).collect();
        let mut job = MapReduceJob {
            plan,
            settings,
            maps,
            reduces,
            attempts: BTreeMap::new(),
            containers: BTreeMap::new(),
            seen_containers: HashSet::new(),
            releases: Vec::new(),
            nodes: NodeHealth::default(),
            tallies: AttemptTallies::default(),
            outcome: None,
        };
        if job.reduces.is_empty() {
            job.outcome = Some(JobOutcome::ReadyToCommit);
        }
        job
    }

    /// `Some` once the job is ready to commit, committed, or failed.
    pub fn outcome(&self) -> Option<&JobOutcome> {
        self.outcome.as_ref()
    }

    /// The driver renamed the temporary output into place: the job succeeded.
    pub fn commit_done(&mut self) {
        debug_assert_eq!(self.outcome, Some(JobOutcome::ReadyToCommit), "commit before the job was ready");
        let diagnostics = format!(
            "{} maps and {} reduces succeeded; output committed",
            self.maps.len(),
            self.reduces.len()
        );
        self.outcome = Some(JobOutcome::Succeeded { diagnostics });
    }

    /// The commit failed (the rename, or the output exists): the job fails with `error`.
    pub fn commit_failed(&mut self, error: &str) {
        self.outcome = Some(JobOutcome::Failed {
            diagnostics: format!("committing the output failed: {error}"),
        });
    }

    /// The succeeded attempt of every reduce, in partition order: what the commit publishes.
    /// Complete once the outcome is `ReadyToCommit`.
    pub fn winning_reduce_attempts(&self) -> Vec<TaskAttemptId> {
        self.reduces
            .iter()
            .filter(|task| task.state == TaskState::Succeeded)
            .filter_map(|task| {
                let attempt = task.output_attempt?;
                Some(TaskAttemptId {
                    kind: TaskKind::Reduce,
                    task: task.index,
                    attempt,
                })
            })
            .collect()
    }

    /// The containers to release in the next allocate (idle grants, speculative losers, and
    /// everything still running once the job is over); each is handed out once.
    pub fn take_releases(&mut self) -> Vec<ContainerId> {
        std::mem::take(&mut self.releases)
    }

    /// Where task `index` of `kind` is.
    pub fn task_state(&self, kind: TaskKind, index: u32) -> Option<TaskState> {
        self.stage(kind).get(index as usize).map(|task| task.state)
    }

    /// The live attempts of one task, oldest first.
    pub fn live_attempts(&self, kind: TaskKind, index: u32) -> Vec<TaskAttemptId> {
        let Some(task) = self.stage(kind).get(index as usize) else {
            return Vec::new();
        };
        task.live_attempts
            .iter()
            .map(|&attempt| TaskAttemptId {
                kind,
                task: index,
                attempt,
            })
            .collect()
    }

    /// The container a live attempt runs in (`None` once it exited or ended).
    pub fn attempt_container(&self, attempt: TaskAttemptId) -> Option<ContainerId> {
        let container_id = self.attempts.get(&attempt)?.container_id;
        self.containers.contains_key(&container_id).then_some(container_id)
    }

    /// Nodes the job avoids, in name order.
    pub fn avoided_nodes(&self) -> Vec<NodeId> {
        self.nodes.avoided().cloned().collect()
    }

    /// Containers held now (running or launching task attempts).
    pub fn held_containers(&self) -> u32 {
        self.containers.len() as u32
    }

    /// After a (re-)register: containers the RM lists that we never received (a grant whose
    /// reply was lost in an RM crash) have no task here, so they are released. `own` is the
    /// AM's own container.
    pub fn on_registered(&mut self, live: &[ContainerId], own: Option<ContainerId>) {
        for &container_id in live {
            if Some(container_id) == own || self.containers.contains_key(&container_id) {
                continue;
            }
            self.seen_containers.insert(container_id);
            if !self.releases.contains(&container_id) {
                self.releases.push(container_id);
            }
        }
    }

    fn stage(&self, kind: TaskKind) -> &[Task] {
        match kind {
            TaskKind::Map => &self.maps,
            TaskKind::Reduce => &self.reduces,
        }
    }

    fn task_mut(&mut self, kind: TaskKind, index: u32) -> &mut Task {
        match kind {
            TaskKind::Map => &mut self.maps[index as usize],
            TaskKind::Reduce => &mut self.reduces[index as usize],
        }
    }

    fn all_maps_have_output(&self) -> bool {
        self.maps.iter().all(|task| task.output.is_some())
    }

    fn reduces_outstanding(&self) -> bool {
        self.reduces.iter().any(|task| task.state != TaskState::Succeeded)
    }
}
