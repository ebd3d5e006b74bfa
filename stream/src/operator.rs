//! The operator interfaces: what a worker runs for each instance. Built-in operators implement
//! them, and so can a user's own Rust operators in a job binary of their own (`kind = "user"`,
//! registered in an `OperatorRegistry`).
//!
//! The runtime calls one instance from one thread at a time: no locking inside operators.
//! Records come in `Batch`es; an operator appends what it emits to the `out` batch it is given.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use spindle_protocol::OperatorSpec;
use thiserror::Error;

use super::keys::KeyGroupRange;
use super::record::{Batch, EventTime, Record};
use super::state::{CapturedState, StateWriter};

/// An operator failed: the instance fails, and the job restarts from its latest checkpoint.
#[derive(Debug, Error)]
pub enum OperatorError {
    #[error("{0}")]
    Failed(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt state: {0}")]
    CorruptState(String),
}

impl OperatorError {
    pub fn failed(message: impl Into<String>) -> OperatorError {
        OperatorError::Failed(message.into())
    }
}

/// Where and what an instance is.
#[derive(Debug, Clone)]
pub struct InstanceContext {
    pub app_id: String,
    pub operator: String,
    pub index: u32,
    pub parallelism: u32,
    /// The job's number of key groups.
    pub key_groups: u32,
    /// Groups this instance owns (keyed operators; all groups otherwise).
    pub key_group_range: KeyGroupRange,
    /// Deployment epoch: grows with every restart, so names made by an instance are unique.
    pub epoch: u64,
    /// A scratch directory of the worker container.
    pub work_dir: PathBuf,
    /// The job's checkpoint directory (`<checkpoint_dir>/<app_id>`).
    pub checkpoint_dir: crate::location::Location,
    pub env: BTreeMap<String, String>,
}

/// A transform or keyed operator: records in, records out.
pub trait Operator: Send {
    /// One input record. `key_group` is the group of `record.key` (keyed operators).
    fn process(&mut self, record: Record<'_>, key_group: u32, out: &mut Batch) -> Result<(), OperatorError>;

    /// Event time reached `watermark` on every input: no record older than it will come
    /// (late ones excepted). Windows fire here.
    fn on_watermark(&mut self, _watermark: EventTime, _out: &mut Batch) -> Result<(), OperatorError> {
        Ok(())
    }

    /// Every input ended: emit what is left.
    fn finish(&mut self, out: &mut Batch) -> Result<(), OperatorError> {
        self.on_watermark(EventTime::MAX, out)
    }

    /// A checkpoint barrier passed: write the state of every owned key group (and any state
    /// that is not keyed). Called between records, never concurrently with `process`.
    fn snapshot(&mut self, _state: &mut StateWriter) -> Result<(), OperatorError> {
        Ok(())
    }

    /// A checkpoint barrier passed: take what `snapshot` would write, as cheaply as possible, so
    /// that it can be written to the snapshot file on another thread while `process` goes on
    /// (the synchronous phase of an asynchronous snapshot). The default serializes `snapshot`
    /// into memory; an operator can return a frozen view instead (`window`'s copy-on-write maps).
    fn capture(&mut self) -> Result<Box<dyn CapturedState>, OperatorError> {
        let mut state = StateWriter::in_memory();
        self.snapshot(&mut state)?;
        Ok(Box::new(state.into_buffered()))
    }

    /// Adds one key group's state, as `snapshot` wrote it (at start, after a restart, or when
    /// a rescale hands the group to this instance).
    fn restore_key_group(&mut self, _group: u32, _bytes: &[u8]) -> Result<(), OperatorError> {
        Ok(())
    }

    /// Restores state that is not keyed, as `snapshot` wrote it with `StateWriter::operator_state`.
    fn restore_operator_state(&mut self, _bytes: &[u8]) -> Result<(), OperatorError> {
        Ok(())
    }

    /// A rescale moved groups away: drop the state of every group outside `keep`.
    fn retain_key_groups(&mut self, _keep: &KeyGroupRange) {}

    /// Approximate bytes of state held (for reports and autoscaling).
    fn state_bytes(&self) -> u64 {
        0
    }

    /// Records dropped because they came after the watermark had passed their window.
    fn late_records(&self) -> u64 {
        0
    }

    /// Records skipped because a field they need (a value to aggregate) does not parse.
    fn bad_records(&self) -> u64 {
        0
    }
}

/// What a source's `poll` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceStatus {
    /// It appended records (or may have more right away).
    Ready,
    /// Nothing to read now: poll again a little later.
    Idle,
    /// It will never produce more (bounded input read to its end).
    Finished,
}

/// A source: reads records from outside, from offsets it can snapshot and restore.
pub trait Source: Send {
    /// Appends up to `max_records` records. Must not block for long (≤ ~10 ms): the runtime
    /// handles checkpoint triggers between polls.
    fn poll(&mut self, out: &mut Batch, max_records: usize) -> Result<SourceStatus, OperatorError>;

    /// The offsets after the records emitted so far (restoring them resumes right after).
    fn snapshot(&mut self) -> Result<Vec<u8>, OperatorError>;

    fn restore(&mut self, state: &[u8]) -> Result<(), OperatorError>;

    /// Records known to be waiting to be read, where the source can tell.
    fn lag(&self) -> Option<u64> {
        None
    }

    /// Records skipped because their time field does not parse.
    fn bad_records(&self) -> u64 {
        0
    }
}

/// A sink: writes records out, invisible to readers until a checkpoint covering them completes.
pub trait Sink: Send {
    fn write(&mut self, batch: &Batch) -> Result<(), OperatorError>;

    /// A checkpoint barrier passed: make everything written so far durable but still
    /// invisible, and say what publishing it takes. The AM keeps that `Commit` in the
    /// checkpoint and runs it once the checkpoint is complete, and again after a restore from
    /// it (so committing must be idempotent).
    fn prepare_commit(&mut self, checkpoint: u64) -> Result<Commit, OperatorError>;

    /// Every input ended: like `prepare_commit`, for the job's last output.
    fn finish(&mut self, checkpoint: u64) -> Result<Commit, OperatorError> {
        self.prepare_commit(checkpoint)
    }
}

/// What the AM does to publish a sink's output of one checkpoint (idempotent).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Commit {
    /// Staged file → its final name (renamed; a missing staged file whose final name exists
    /// was committed before).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub renames: Vec<(PathBuf, PathBuf)>,
    /// NATS: a staged file of messages (one per line) to publish to `subject` with message ids
    /// `<id_prefix>-<line number>` (JetStream drops duplicates of an id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<NatsCommit>,
    /// Object stores: multipart uploads to complete (the object appears whole; completing one
    /// already completed is a no-op).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uploads: Vec<UploadCommit>,
}

/// A multipart upload a `file` sink on an object store staged, to complete at commit.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UploadCommit {
    /// `s3://bucket/key` of the object it makes.
    pub url: String,
    pub upload_id: String,
    /// The parts' ids, in order.
    pub parts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NatsCommit {
    pub url: String,
    pub subject: String,
    pub staged: PathBuf,
    pub id_prefix: String,
}

impl Commit {
    pub fn is_empty(&self) -> bool {
        self.renames.is_empty() && self.nats.is_none() && self.uploads.is_empty()
    }
}

/// Builds a user operator (`kind = "user"`, `class = "…"`).
pub type UserOperatorFactory = Arc<dyn Fn(&OperatorSpec, &InstanceContext) -> Result<Box<dyn Operator>, OperatorError> + Send + Sync>;

/// The user operators a worker binary knows, by class name.
#[derive(Clone, Default)]
pub struct OperatorRegistry {
    factories: BTreeMap<String, UserOperatorFactory>,
}

impl OperatorRegistry {
    pub fn new() -> OperatorRegistry {
        OperatorRegistry::default()
    }

    /// Registers `class`: `kind = "user"` operators with that class are built by `factory`.
    pub fn register(
        &mut self,
        class: impl Into<String>,
        factory: impl Fn(&OperatorSpec, &InstanceContext) -> Result<Box<dyn Operator>, OperatorError> + Send + Sync + 'static,
    ) -> &mut Self {
        self.factories.insert(class.into(), Arc::new(factory));
        self
    }

    pub fn build(&self, spec: &OperatorSpec, context: &InstanceContext) -> Result<Box<dyn Operator>, OperatorError> {
        let class = spec.class.as_deref().unwrap_or_default();
        let factory = self.factories.get(class).ok_or_else(|| {
            OperatorError::failed(format!(
                "operator {}: this worker binary has no user operator `{class}` (it knows: {})",
                spec.name,
                self.factories.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        factory(spec, context)
    }
}
