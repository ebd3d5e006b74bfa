//! Asynchronous snapshots (Flink's heap backend): at an aligned barrier the instance only
//! *captures* its operator's state (`Operator::capture`: a frozen view or an in-memory copy)
//! and goes on processing; its snapshot thread writes the file, syncs and renames it, and only
//! then acknowledges the checkpoint to the AM. So the AM still completes a checkpoint (and a
//! rescale still hands key groups over) only from files that are durable and whole.
//!
//! At most one snapshot per instance is in flight: the next barrier's capture waits for the
//! previous write, so memory stays bounded (the state, plus at most one snapshot of it).
//! Acknowledgements leave in checkpoint order, and a failed write fails the instance (the job
//! restarts from its latest complete checkpoint, as when a synchronous write failed).

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use spindle_storage::S3Settings;

use crate::control::{Ack, ToAm};
use crate::location::Location;
use crate::operator::OperatorError;
use crate::state::{CapturedState, StateReader, StateWriter};

/// Where an instance's snapshot files go and where the files it restores from are.
#[derive(Debug, Clone)]
pub struct StateFiles {
    /// The job's checkpoint dir (`<checkpoint_dir>/<app_id>`).
    pub root: Location,
    /// The job's settings, for files the AM names elsewhere (a savepoint's).
    pub s3: S3Settings,
    /// The instance's scratch dir: snapshots bound for an object store are written here first.
    pub scratch: PathBuf,
}

impl StateFiles {
    /// The snapshot file of instance `instance` of `operator` at `checkpoint`.
    pub fn snapshot(&self, checkpoint: u64, operator: &str, instance: u64) -> Location {
        self.root.child(&format!("chk-{checkpoint}/{operator}-{instance}.state"))
    }

    pub fn create(&self, location: &Location) -> Result<StateWriter, OperatorError> {
        StateWriter::create_at(location, &self.scratch)
    }

    /// Opens a file a message named (by its location's text).
    pub fn open(&self, text: &str) -> Result<StateReader, OperatorError> {
        StateReader::open_at(&self.root.resolve(text, &self.s3)?)
    }
}

/// One snapshot to write: the state captured at a barrier and the acknowledgement to send
/// once its file is in place.
pub struct SnapshotJob {
    pub location: Location,
    pub files: StateFiles,
    pub state: Box<dyn CapturedState>,
    /// Complete but for the file's path and size and the duration, filled in once written.
    pub ack: Ack,
    /// When the barrier was aligned (the ack's `duration_ms` runs from there to the rename).
    pub aligned_at: Instant,
}

/// An instance's snapshot thread, started at its first snapshot.
pub struct SnapshotThread {
    name: String,
    to_am: UnboundedSender<ToAm>,
    /// Jobs to the thread; a rendezvous channel (the thread takes a job only when idle).
    jobs: Option<SyncSender<SnapshotJob>>,
    /// One result per job, in order.
    done: Option<Receiver<Result<(), OperatorError>>>,
    thread: Option<JoinHandle<()>>,
    /// A job was handed over and its result not yet read.
    in_flight: bool,
}

impl SnapshotThread {
    /// `name` names the thread; acknowledgements go to `to_am`.
    pub fn new(name: String, to_am: UnboundedSender<ToAm>) -> SnapshotThread {
        SnapshotThread {
            name,
            to_am,
            jobs: None,
            done: None,
            thread: None,
            in_flight: false,
        }
    }

    /// Hands `job` to the thread, after waiting for the snapshot in flight (whose error it
    /// returns, the new job then not started).
    pub fn submit(&mut self, job: SnapshotJob) -> Result<(), OperatorError> {
        self.wait()?;
        if self.jobs.is_none() {
            self.start()?;
        }
        let jobs = self.jobs.as_ref().expect("started");
        jobs.send(job)
            .map_err(|_| OperatorError::failed("the instance's snapshot thread ended unexpectedly"))?;
        self.in_flight = true;
        Ok(())
    }

    /// Waits until no snapshot is in flight; the error of its write if it failed.
    pub fn wait(&mut self) -> Result<(), OperatorError> {
        if !self.in_flight {
            return Ok(());
        }
        self.in_flight = false;
        let done = self.done.as_ref().expect("a job in flight has a thread");
        done.recv()
            .unwrap_or_else(|_| Err(OperatorError::failed("the instance's snapshot thread ended unexpectedly")))
    }

    /// The error of a write that failed since the last look, without waiting.
    pub fn check(&mut self) -> Result<(), OperatorError> {
        if !self.in_flight {
            return Ok(());
        }
        let done = self.done.as_ref().expect("a job in flight has a thread");
        match done.try_recv() {
            Ok(result) => {
                self.in_flight = false;
                result
            }
            Err(TryRecvError::Empty) => Ok(()),
            Err(TryRecvError::Disconnected) => {
                self.in_flight = false;
                Err(OperatorError::failed("the instance's snapshot thread ended unexpectedly"))
            }
        }
    }

    fn start(&mut self) -> Result<(), OperatorError> {
        let (jobs, job_rx) = std::sync::mpsc::sync_channel::<SnapshotJob>(0);
        let (done_tx, done) = std::sync::mpsc::sync_channel(1);
        let to_am = self.to_am.clone();
        let thread = std::thread::Builder::new().name(self.name.clone()).spawn(move || {
            for job in job_rx {
                let result = write_and_ack(job, &to_am);
                if done_tx.send(result).is_err() {
                    return;
                }
            }
        })?;
        self.jobs = Some(jobs);
        self.done = Some(done);
        self.thread = Some(thread);
        Ok(())
    }
}

impl Drop for SnapshotThread {
    /// Lets the snapshot in flight finish (a retired instance's acknowledgement must still
    /// leave; a reset waits for its instances' threads anyway).
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Writes one snapshot file, syncs and renames it (or uploads it), and only then acknowledges.
fn write_and_ack(job: SnapshotJob, to_am: &UnboundedSender<ToAm>) -> Result<(), OperatorError> {
    let SnapshotJob {
        location,
        files,
        state,
        mut ack,
        aligned_at,
    } = job;
    let started = Instant::now();
    let mut writer = files.create(&location)?;
    state.write_to(&mut writer)?;
    ack.state_bytes = writer.finish()?;
    ack.state_file = Some(location.to_string());
    ack.duration_ms = aligned_at.elapsed().as_millis() as u64;
    tracing::debug!(
        instance = ack.instance,
        checkpoint = ack.checkpoint,
        state_bytes = ack.state_bytes,
        sync_ms = started.saturating_duration_since(aligned_at).as_millis() as u64,
        write_ms = started.elapsed().as_millis() as u64,
        "snapshot written"
    );
    let _ = to_am.send(ToAm::Acked(ack));
    Ok(())
}

#[cfg(test)]
#[path = "snapshots_tests.rs"]
mod tests;
