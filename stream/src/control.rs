//! What the AM and its workers say to each other over the control channel (JSON frames on one
//! TCP connection per worker, opened by the worker).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use spindle_protocol::OperatorSpec;

use super::counts::RecordCounts;
use super::operator::Commit;
use super::wire::InstanceId;

/// A key-group range on the wire, `[start, end)`.
pub type Range = (u32, u32);

/// AM → worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToWorker {
    /// Start these instances.
    Start { instances: Vec<InstancePlan> },
    /// Stop every instance (a restart from a checkpoint follows); answered by `ResetDone`.
    Reset { epoch: u64 },
    /// Stop these instances (their failover region restarts from a checkpoint while the
    /// others go on); answered by `Cancelled` once they stopped.
    Cancel { instances: Vec<InstanceId>, epoch: u64 },
    /// Sources among `instances` inject barrier `checkpoint`; with `stop` (a stop with a
    /// savepoint) they read nothing after it.
    Trigger {
        checkpoint: u64,
        instances: Vec<InstanceId>,
        #[serde(default)]
        stop: bool,
    },
    /// Changes that take effect at barrier `checkpoint` (a rescale); answered by `Prepared`
    /// once every instance has them queued, before the AM triggers that barrier.
    Rescale { checkpoint: u64, changes: Vec<InstanceChange> },
    /// A rescaled instance may load the groups it gained (their owners' snapshots are written).
    Load {
        instance: InstanceId,
        checkpoint: u64,
        files: Vec<StateFileRef>,
    },
    /// The job is over: exit.
    Shutdown,
}

/// One instance to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstancePlan {
    pub id: InstanceId,
    pub spec: OperatorSpec,
    pub index: u32,
    pub parallelism: u32,
    /// Unique per deployment and per rescale, for names an instance makes.
    pub epoch: u64,
    pub key_groups: u32,
    pub range: Range,
    pub inputs: Vec<InputPlan>,
    pub outputs: Vec<EdgePlan>,
    /// Snapshot files to restore from, with the groups to read from each.
    pub restore: Vec<StateFileRef>,
    /// Created by a rescale at this barrier: wait for `Load` before processing.
    pub await_load: Option<u64>,
    /// Checkpoint ids continue after this one.
    pub last_checkpoint: u64,
    pub app_id: String,
    /// The job's checkpoint dir (`<checkpoint_dir>/<app_id>`): a path or an `s3://` URL.
    pub checkpoint_dir: String,
    pub env: BTreeMap<String, String>,
}

/// An upstream instance this one reads from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InputPlan {
    pub from: InstanceId,
    /// Only data after this barrier comes on it (it was added by a rescale).
    pub starts_after: Option<u64>,
}

/// One outgoing edge: fused transforms, then the instances of the next operator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EdgePlan {
    /// Fused transforms run on each record before it leaves, in order.
    pub chain: Vec<OperatorSpec>,
    /// Partition by key group (else round-robin by batch).
    pub keyed: bool,
    pub targets: Vec<TargetPlan>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetPlan {
    pub id: InstanceId,
    /// The data address of the worker hosting it.
    pub address: String,
    pub range: Range,
    pub starts_after: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateFileRef {
    /// A path, or an `s3://` URL (see `Location`).
    pub path: String,
    /// Groups to read from it (all the file has within this range).
    pub range: Range,
    /// Read the operator (non-keyed) state too.
    pub operator_state: bool,
}

/// A change at a rescale barrier.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum InstanceChange {
    /// Upstream: after the barrier, edge `edge` goes to these targets.
    Retarget {
        instance: InstanceId,
        edge: usize,
        targets: Vec<TargetPlan>,
    },
    /// The rescaled operator: after the barrier, own `range` (`None`: retire). `gains`: wait
    /// for `Load` before processing.
    Regroup {
        instance: InstanceId,
        range: Option<Range>,
        gains: bool,
    },
    /// Downstream: new inputs whose data starts after the barrier.
    AddInputs { instance: InstanceId, inputs: Vec<InputPlan> },
}

/// Worker → AM.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToAm {
    Hello {
        container_id: String,
        data_address: String,
        token: String,
    },
    Acked(Ack),
    Prepared {
        checkpoint: u64,
    },
    Loaded {
        instance: InstanceId,
        checkpoint: u64,
        paused_ms: u64,
    },
    /// The instance's input ended for good and it emitted everything (sinks: with the commit
    /// of their last output).
    Finished {
        instance: InstanceId,
        commit: Option<Commit>,
        /// Everything it counted, exact: the job's last totals are made of these.
        #[serde(default)]
        counts: RecordCounts,
    },
    Failed {
        instance: InstanceId,
        error: String,
    },
    Metrics {
        instances: Vec<InstanceMetrics>,
    },
    ResetDone {
        epoch: u64,
    },
    Cancelled {
        epoch: u64,
    },
}

/// An instance's part of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ack {
    pub instance: InstanceId,
    pub checkpoint: u64,
    /// Its snapshot file: a path, or an `s3://` URL (see `Location`).
    pub state_file: Option<String>,
    pub state_bytes: u64,
    pub commit: Option<Commit>,
    /// From the barrier's arrival at the first input to the snapshot written.
    pub duration_ms: u64,
    /// What it counted since it started, up to the barrier exactly: the AM folds these into
    /// the operators' totals the checkpoint records.
    #[serde(default)]
    pub counts: RecordCounts,
}

/// Totals since the instance started, read while it runs (so a little behind it); the AM
/// turns them into rates and shows them between checkpoints.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InstanceMetrics {
    pub id: InstanceId,
    pub records_in: u64,
    pub records_out: u64,
    pub busy_ns: u64,
    pub backpressured_ns: u64,
    pub state_bytes: u64,
    pub lag: Option<u64>,
    pub late_records: u64,
    /// Records skipped because a field they need does not parse.
    #[serde(default)]
    pub bad_records: u64,
    #[serde(default)]
    pub bytes_in: u64,
    #[serde(default)]
    pub bytes_out: u64,
}

impl InstanceMetrics {
    /// The counters of this sample (the rest are rates' raw figures and gauges).
    pub fn counts(&self) -> RecordCounts {
        RecordCounts {
            records_in: self.records_in,
            records_out: self.records_out,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            late_records: self.late_records,
            bad_records: self.bad_records,
        }
    }
}
