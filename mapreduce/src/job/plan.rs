//! What a job is made of (`JobPlan`), how it may run (`JobSettings`), and what the state
//! machine hands back to its driver (`GrantDecision`, `TaskLaunch`, `JobOutcome`).

use spindle_protocol::{Allocation, ContainerId, MapReduceSpec, NodeId, Resources};

use crate::Partitioner;
use crate::Split;
use crate::task_protocol::{JobFunctions, TaskAssignment};

/// The work of one job, fixed when the AM starts: one map task per split, one reduce task per
/// partition of `partitioner`.
#[derive(Debug, Clone, PartialEq)]
pub struct JobPlan {
    /// Map task `i` reads `splits[i]`.
    pub splits: Vec<Split>,
    /// Nodes that hold split `i` on local disk (`preferred_nodes[i]`), when the input is on
    /// node-local disks. Shorter than `splits` (or empty) means "no preference" for the rest.
    pub preferred_nodes: Vec<Vec<NodeId>>,
    /// How map output is spread over reducers; its `reducers()` is the reduce task count (≥ 1).
    pub partitioner: Partitioner,
    /// Mapper, combiner, reducer and their environment, as every assignment carries them.
    pub functions: JobFunctions,
    /// The job's staging directory: reduce attempt `a` writes its `part-r-NNNNN` into
    /// `<output_temp_dir>/<a>` (`r_000003_0`), the layout of `OutputCommitter::attempt_dir`,
    /// and the commit publishes the winners' files (`MapReduceJob::winning_reduce_attempts`).
    /// A local directory, or an `s3://` prefix (`<output>/_temporary/<app>`).
    pub output_temp_dir: String,
    /// Base URL of the AM's task API, where tasks send their reports.
    pub am_url: String,
}

/// Knobs of one job's scheduling, fault handling and speculation.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSettings {
    /// Container size of each map task (asked for, and the least a grant must have to run one).
    pub map_resources: Resources,
    /// Container size of each reduce task.
    pub reduce_resources: Resources,
    /// Counted failures of one task after which the job fails (≥ 1).
    pub max_task_attempts: u32,
    /// Most task containers held plus asked for at once; `None` is "as many as runnable tasks".
    pub max_containers: Option<u32>,
    /// Counted task failures on one node after which the job avoids it (see `nodes.rs` for the cap).
    pub node_failure_threshold: u32,
    /// The node label every task container requires, if any.
    pub label: Option<String>,
    /// Straggler detection; `None` turns speculative execution off.
    pub speculation: Option<SpeculationSettings>,
}

/// When a running task counts as a straggler worth a second attempt (LATE-style).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpeculationSettings {
    /// A task younger than this is never speculated: early progress rates are noise.
    pub min_runtime_ms: u64,
    /// A task is slow when its estimated total time exceeds this many times the median
    /// duration of the stage's succeeded tasks.
    pub slowness_factor: f64,
    /// Speculative attempts running at once, as a fraction of all tasks (at least one).
    pub max_running_fraction: f64,
}

impl Default for SpeculationSettings {
    fn default() -> Self {
        SpeculationSettings {
            min_runtime_ms: 5_000,
            slowness_factor: 1.5,
            max_running_fraction: 0.1,
        }
    }
}

/// Default of [`JobSettings::node_failure_threshold`] (Hadoop's `maxtaskfailures.per.tracker` is 3).
pub const DEFAULT_NODE_FAILURE_THRESHOLD: u32 = 3;

impl JobSettings {
    /// The settings a `[mapreduce]` spec asks for, with the defaults for the rest.
    pub fn from_spec(spec: &MapReduceSpec) -> Self {
        JobSettings {
            map_resources: spec.map,
            reduce_resources: spec.reduce,
            max_task_attempts: spec.max_task_attempts.max(1),
            max_containers: spec.max_containers,
            node_failure_threshold: DEFAULT_NODE_FAILURE_THRESHOLD,
            label: None,
            speculation: spec.speculation.then(SpeculationSettings::default),
        }
    }
}

/// What to do with one granted container.
#[derive(Debug, Clone, PartialEq)]
pub enum GrantDecision {
    /// Start this task attempt in it.
    Launch(Box<TaskLaunch>),
    /// Nothing to run there: hand it back. It is already queued in `take_releases`.
    Release { container_id: ContainerId, reason: ReleaseReason },
    /// A grant delivered again (after an RM restart): already handled, nothing to do.
    AlreadySeen { container_id: ContainerId },
}

/// Why a grant was handed back, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseReason {
    /// No runnable task fits it (all running, or reduces wait for maps, or too small).
    NothingToRun,
    /// The job avoids the node after repeated task failures there.
    AvoidedNode,
    /// The job already holds `max_containers`.
    AtMaxContainers,
    /// The job has ended (or is committing).
    JobOver,
}

/// A task attempt to start in a granted container.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskLaunch {
    pub allocation: Allocation,
    /// What goes to the task container (JSON in `SPINDLE_MR_TASK`).
    pub assignment: TaskAssignment,
    /// A second attempt of a straggler.
    pub speculative: bool,
}

/// Where the job is headed; `None` from [`super::MapReduceJob::outcome`] while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// Every reduce succeeded: the driver publishes the winners' output
    /// (`winning_reduce_attempts`) and calls `commit_done` (or `commit_failed`).
    ReadyToCommit,
    /// Committed: the job succeeded.
    Succeeded { diagnostics: String },
    /// A task failed `max_task_attempts` times, or the commit failed.
    Failed { diagnostics: String },
}
