//! The `[stream]` section of a job spec: a long-running pipeline of operators (a DAG), each
//! with its own parallelism, checkpointed for exactly-once results and rescalable while it runs.
//!
//! Operators name their inputs; stateless transforms (`map` with `expr`, `filter`, `key_by`)
//! are fused into the edge from their input, the rest run as instances in task containers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::resources::Resources;

/// Default number of key groups of a job: the unit keyed state moves in when rescaling.
pub const DEFAULT_KEY_GROUPS: u32 = 128;
/// Most key groups (and so most parallelism of a keyed operator) one job may have.
pub const MAX_KEY_GROUPS: u32 = 32_768;
/// Most instances of one operator.
pub const MAX_PARALLELISM: u32 = 1024;

/// A streaming job (`kind = "stream"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamSpec {
    /// The pipeline, in any order; names are unique, inputs name earlier or later operators
    /// but never form a cycle.
    pub operators: Vec<OperatorSpec>,
    /// How many key groups keys hash into (fixed for the job's life; the most instances a keyed
    /// operator can have).
    #[serde(default = "default_key_groups")]
    pub key_groups: u32,
    /// How often the AM starts a checkpoint.
    #[serde(default = "default_checkpoint_interval_ms")]
    pub checkpoint_interval_ms: u64,
    /// Absolute path of checkpoint storage; the job's checkpoints go to `<dir>/<app_id>/`.
    /// Every node must see the same directory (a local cluster's disk, or a shared mount).
    /// Default: `<temp dir>/spindle-checkpoints`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_dir: Option<String>,
    /// Complete checkpoints kept (older ones are deleted).
    #[serde(default = "default_keep_checkpoints")]
    pub keep_checkpoints: u32,
    /// Container size of each worker (a worker hosts one instance of each of several operators,
    /// as Flink's slot sharing does: the job needs as many workers as its widest operator).
    #[serde(default = "default_worker")]
    pub worker: Resources,
    /// Restarts from the latest checkpoint after failures before the job FAILS.
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    /// argv of the worker process (default: `spindle stream-task`, the binary the AM runs
    /// from): a job binary with its own Rust operators (`kind = "user"`) goes here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_command: Option<Vec<String>>,
    /// Extra environment of workers (and of `command` operators).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Let the AM set the parallelism of keyed operators from their measured load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<AutoscaleSpec>,
    /// Absolute path (or `file://` URL) where `spindle savepoint` puts savepoints when it names
    /// no `--dir` (Flink's `state.savepoints.dir`). Default: `<checkpoint_dir>/savepoints`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint_dir: Option<String>,
    /// Start from this savepoint (its directory or its `_metadata.json`): operators' state
    /// mapped by name, sources' offsets by name. Used while the job has no checkpoint of its
    /// own; after that it recovers from its own checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_savepoint: Option<String>,
    /// With `from_savepoint`: start even if the state of operators this job no longer has (or
    /// has changed so that it cannot read it) would be dropped. Default false: refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_dropped_state: bool,
    /// What a failure restarts from the latest checkpoint (Flink's failover strategy).
    #[serde(default, skip_serializing_if = "FailoverStrategy::is_region")]
    pub failover: FailoverStrategy,
}

/// What a failure restarts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailoverStrategy {
    /// The failed instances' failover region: the instances connected to them by data,
    /// directly or through others; the rest of the job runs on.
    #[default]
    Region,
    /// Every instance of the job.
    Full,
}

impl FailoverStrategy {
    pub fn is_region(&self) -> bool {
        *self == FailoverStrategy::Region
    }
}

/// DS2-style autoscaling bounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AutoscaleSpec {
    pub min: u32,
    pub max: u32,
    /// The window rates are averaged over before a decision (at least 2 s), measured from 3 s
    /// after the latest rescale ended: so also the least time between two rescales.
    #[serde(default = "default_cooldown_ms")]
    pub cooldown_ms: u64,
    /// Busy fraction an instance should run at (headroom for bursts).
    #[serde(default = "default_target_utilization")]
    pub target_utilization: f64,
}

/// The kinds of operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OperatorKind {
    /// Source: deterministic events from `seed` and each event's offset.
    Generator,
    /// Source: lines of the files in directory `path`, followed as they grow.
    FileSource,
    /// Source: lines read from a TCP server at `address` (not replayable).
    TcpSource,
    /// Source: messages of a NATS JetStream `stream` (optionally only `subject`).
    NatsSource,
    /// Transform: each line to `expr`'s fields, or through an external `command`.
    Map,
    /// Transform: lines for which `expr` holds.
    Filter,
    /// Transform: sets each record's key to `expr`; keyed operators need it on every input.
    KeyBy,
    /// Keyed: a running `aggregate` per key, emitted on every update.
    Reduce,
    /// Keyed: event-time windows (`size_ms`, `slide_ms`) with an `aggregate` per key.
    Window,
    /// A Rust operator of the job's own worker binary, named by `class`.
    User,
    /// Sink: rolling files in directory `path`, committed on checkpoints (exactly-once).
    FileSink,
    /// Sink: lines on the worker's stdout (at-least-once).
    StdoutSink,
    /// Sink: drops everything (benchmarks).
    DiscardSink,
    /// Sink: messages to NATS `subject`, published on checkpoints with deduplication ids.
    NatsSink,
}

/// What keyed `reduce` and `window` compute per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Aggregate {
    Count,
    Sum,
    Min,
    Max,
}

/// One operator. Which optional fields apply depends on `kind`; a field that does not apply
/// is refused, so a typo never silently does nothing.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OperatorSpec {
    /// Unique in the job; `[a-z0-9_-]`, as `spindle scale APP OPERATOR N` names it.
    pub name: String,
    pub kind: Option<OperatorKind>,
    /// Names of the operators feeding this one (several: their union). Empty for sources.
    #[serde(default)]
    pub input: Vec<String>,
    /// Instances of the operator (fused transforms take their input's).
    #[serde(default = "one")]
    pub parallelism: u32,

    // --- sources ---
    /// generator: events per second per instance (absent: as fast as it can).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u64>,
    /// generator: events per second of event time per instance (default: `rate`, or
    /// 1,000,000 when unthrottled): event `n` of an instance has time `n * 1000 / event_rate` ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_rate: Option<u64>,
    /// generator: how many distinct keys (`k0` … `k{keys-1}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<u64>,
    /// generator: seed of the event sequence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// generator: events per instance before it ends (absent: never ends). A job whose
    /// sources all end SUCCEEDS once its sinks committed everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// file_source: directory to read; file_sink: directory to write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// file_source: keep reading lines appended and files added (default true); false ends
    /// the source at the end of the files there at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow: Option<bool>,
    /// tcp_source: `host:port` to connect to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// nats_source / nats_sink: server URL (default `nats://127.0.0.1:4222`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// nats_source: the JetStream stream to read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// nats_source: only this subject of the stream; nats_sink: the subject to publish to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Sources: the field holding each record's event time in ms (e.g. `$3`); absent: the
    /// time the source read it (generator: its own deterministic time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_field: Option<String>,
    /// Sources: how late (in event time) records may arrive; watermarks trail the largest
    /// time seen by this much.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_of_orderness_ms: Option<u64>,

    // --- transforms ---
    /// map: output fields (`$1, $3 * 2`); filter: a condition (`$2 > 10`); key_by: the key
    /// (`$1`). Fields are `$N` (1-based) of the line split on `delimiter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expr: Option<String>,
    /// map: argv of a program reading lines on stdin and writing lines on stdout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Field delimiter of lines for `$N` (default: runs of whitespace; output fields are
    /// joined with a tab).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delimiter: Option<String>,

    // --- keyed ---
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<Aggregate>,
    /// The numeric field `sum`, `min` and `max` read (e.g. `$2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// window: length of a window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_ms: Option<u64>,
    /// window: distance between window starts (absent: tumbling, `size_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slide_ms: Option<u64>,

    // --- user operators ---
    /// user: the operator's registered name in the worker binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// user: whether it keeps keyed state (then its inputs need `key_by`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyed: Option<bool>,
    /// user: free-form settings handed to the operator.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,

    // --- sinks ---
    /// file_sink: start a new file within a checkpoint after this many MB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roll_mb: Option<u64>,
}

impl OperatorKind {
    pub fn is_source(self) -> bool {
        matches!(
            self,
            OperatorKind::Generator | OperatorKind::FileSource | OperatorKind::TcpSource | OperatorKind::NatsSource
        )
    }

    pub fn is_sink(self) -> bool {
        matches!(
            self,
            OperatorKind::FileSink | OperatorKind::StdoutSink | OperatorKind::DiscardSink | OperatorKind::NatsSink
        )
    }

    /// The name as written in the spec.
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorKind::Generator => "generator",
            OperatorKind::FileSource => "file_source",
            OperatorKind::TcpSource => "tcp_source",
            OperatorKind::NatsSource => "nats_source",
            OperatorKind::Map => "map",
            OperatorKind::Filter => "filter",
            OperatorKind::KeyBy => "key_by",
            OperatorKind::Reduce => "reduce",
            OperatorKind::Window => "window",
            OperatorKind::User => "user",
            OperatorKind::FileSink => "file_sink",
            OperatorKind::StdoutSink => "stdout_sink",
            OperatorKind::DiscardSink => "discard_sink",
            OperatorKind::NatsSink => "nats_sink",
        }
    }
}

impl OperatorSpec {
    /// The kind; `validate` makes sure it is set.
    pub fn kind(&self) -> OperatorKind {
        self.kind.unwrap_or(OperatorKind::Map)
    }

    /// Whether the operator keeps state per key (its inputs must be keyed).
    pub fn is_keyed(&self) -> bool {
        match self.kind() {
            OperatorKind::Reduce | OperatorKind::Window => true,
            OperatorKind::User => self.keyed.unwrap_or(false),
            _ => false,
        }
    }

    /// Whether the operator runs fused into the edge from its input instead of as instances
    /// of its own: stateless built-in transforms.
    pub fn is_fused(&self) -> bool {
        match self.kind() {
            OperatorKind::Filter | OperatorKind::KeyBy => true,
            OperatorKind::Map => self.command.is_none(),
            _ => false,
        }
    }

    /// Whether `spindle scale` may change its parallelism while the job runs: instances that
    /// are not sources (sources' parallelism is their number of partitions) and not fused.
    pub fn is_rescalable(&self) -> bool {
        !self.kind().is_source() && !self.is_fused()
    }
}

fn one() -> u32 {
    1
}

fn default_key_groups() -> u32 {
    DEFAULT_KEY_GROUPS
}

fn default_checkpoint_interval_ms() -> u64 {
    1_000
}

fn default_keep_checkpoints() -> u32 {
    3
}

fn default_worker() -> Resources {
    Resources::new(1, 512)
}

fn default_max_restarts() -> u32 {
    20
}

fn default_cooldown_ms() -> u64 {
    30_000
}

fn default_target_utilization() -> f64 {
    0.7
}
