//! One instance's thread: a source, operator or sink with its inputs and outputs. Each runs on
//! a thread of its own (Flink's task thread): the hot loop never awaits, and data connections
//! run on the worker's async runtime beside it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::mpsc::UnboundedSender;

use super::inputs::{InputChange, Inputs};
use super::net::{Inbound, SendError};
use super::outputs::Outputs;
use super::snapshots::{SnapshotJob, SnapshotThread, StateFiles};
use crate::control::{Ack, InputPlan, InstancePlan, Range, StateFileRef, TargetPlan, ToAm};
use crate::counts::RecordCounts;
use crate::location::Location;
use crate::operator::{Operator, OperatorError, Sink, Source, SourceStatus};
use crate::record::{Batch, EventTime};
use crate::wire::{DataEvent, InstanceId};

/// Records a source reads per poll.
const SOURCE_BATCH: usize = 1024;
/// How often sources emit watermarks and idle instances flush partly filled batches.
const FLUSH_EVERY: Duration = Duration::from_millis(20);

/// What the AM asks of one instance.
pub enum Command {
    /// A source injects this barrier; `stop`: then reads nothing more (a stop with a savepoint).
    Trigger {
        checkpoint: u64,
        stop: bool,
    },
    Retarget {
        checkpoint: u64,
        edge: usize,
        targets: Vec<TargetPlan>,
    },
    Regroup {
        checkpoint: u64,
        range: Option<Range>,
        gains: bool,
    },
    AddInputs(Vec<InputPlan>),
    Load {
        checkpoint: u64,
        files: Vec<StateFileRef>,
    },
}

/// The code an instance runs.
pub enum Body {
    Source(Box<dyn Source>),
    Operator(Box<dyn Operator>),
    Sink(Box<dyn Sink>),
}

/// Counters an instance keeps and the worker reports (only the instance's thread writes them).
#[derive(Default)]
pub struct Counters {
    pub records_in: AtomicU64,
    pub records_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub busy_ns: AtomicU64,
    pub backpressured_ns: AtomicU64,
    pub state_bytes: AtomicU64,
    /// `u64::MAX`: unknown.
    pub lag: AtomicU64,
    pub late_records: AtomicU64,
    pub bad_records: AtomicU64,
}

/// Everything an instance thread needs besides its body.
pub struct Environment {
    pub plan: InstancePlan,
    pub inbox: Receiver<Inbound<Command>>,
    pub to_am: UnboundedSender<ToAm>,
    pub counters: Arc<Counters>,
    pub cancel: Arc<AtomicBool>,
    pub handle: Handle,
    pub token: String,
    pub files: StateFiles,
}

#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error(transparent)]
    Operator(#[from] OperatorError),
    #[error(transparent)]
    Send(#[from] SendError),
    #[error("writing a snapshot: {0}")]
    Snapshot(OperatorError),
    #[error("input from instance {from} broke: {error}")]
    InputBroken { from: InstanceId, error: String },
}

/// Runs an instance to its end; failures go to the AM.
pub fn run(env: Environment, body: Body) {
    let id = env.plan.id;
    let to_am = env.to_am.clone();
    let cancel = env.cancel.clone();
    match run_inner(env, body) {
        Ok(()) => {}
        Err(RunError::Send(SendError::Cancelled)) => {}
        Err(_) if cancel.load(Ordering::Relaxed) => {}
        Err(error) => {
            tracing::warn!(instance = id, %error, "instance failed");
            let _ = to_am.send(ToAm::Failed {
                instance: id,
                error: error.to_string(),
            });
        }
    }
}

fn run_inner(env: Environment, mut body: Body) -> Result<(), RunError> {
    restore(&mut body, &env.plan.restore, &env.files)?;
    let outputs = Outputs::connect(
        &env.plan.outputs,
        env.plan.key_groups,
        env.plan.id,
        &env.token,
        &env.handle,
        env.cancel.clone(),
    )?;
    let snapshots = SnapshotThread::new(format!("{}-{}-snapshot", env.plan.spec.name, env.plan.index), env.to_am.clone());
    let mut instance = Instance {
        snapshots,
        outputs,
        inputs: Inputs::new(
            env.plan.inputs.iter().map(|input| (input.from, input.starts_after)),
            env.plan.await_load.unwrap_or(env.plan.last_checkpoint),
        ),
        out: Batch::with_capacity(64 << 10),
        regroup: None,
        paused_since: None,
        env,
    };
    instance.inputs.paused = instance.env.plan.await_load.is_some();
    if instance.inputs.paused {
        instance.paused_since = Some(Instant::now());
    }
    match body {
        Body::Source(source) => instance.run_source(source),
        body => instance.run_consumer(body),
    }
}

fn restore(body: &mut Body, refs: &[StateFileRef], files: &StateFiles) -> Result<(), OperatorError> {
    for file in refs {
        let mut reader = files.open(&file.path)?;
        if file.operator_state
            && let Some(bytes) = reader.operator_state()?
        {
            match body {
                Body::Source(source) => source.restore(&bytes)?,
                Body::Operator(operator) => operator.restore_operator_state(&bytes)?,
                Body::Sink(_) => {}
            }
        }
        if let Body::Operator(operator) = body {
            reader.read_key_groups(&(file.range.0..file.range.1), |group, bytes| {
                operator.restore_key_group(group, bytes)
            })?;
        }
    }
    Ok(())
}

struct Instance {
    env: Environment,
    outputs: Outputs,
    inputs: Inputs,
    out: Batch,
    /// A rescale's change to this instance's groups, at its barrier.
    regroup: Option<(u64, Option<Range>, bool)>,
    paused_since: Option<Instant>,
    /// Writes operator snapshots while the instance goes on (see `snapshots.rs`).
    snapshots: SnapshotThread,
}

impl Instance {
    fn cancelled(&self) -> bool {
        self.env.cancel.load(Ordering::Relaxed)
    }

    fn run_source(&mut self, mut source: Box<dyn Source>) -> Result<(), RunError> {
        let out_of_orderness = self.env.plan.spec.out_of_orderness_ms.unwrap_or(0) as i64;
        let mut max_time = EventTime::MIN;
        let mut sent_watermark = EventTime::MIN;
        let mut last_flush = Instant::now();
        let mut finished = false;
        // Stopped at a stop's barrier: the job ends once its savepoint is written.
        let mut stopped = false;
        let mut batch = Batch::with_capacity(64 << 10);
        loop {
            if self.cancelled() {
                return Ok(());
            }
            while let Ok(message) = self.env.inbox.try_recv() {
                if let Inbound::Command(command) = message {
                    match command {
                        Command::Trigger { checkpoint, stop } if !finished => {
                            self.checkpoint_source(source.as_mut(), checkpoint)?;
                            stopped |= stop;
                        }
                        other => self.command(other, None)?,
                    }
                }
            }
            if finished || stopped {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            let started = Instant::now();
            let backpressured = self.outputs.backpressured;
            batch.clear();
            let status = source.poll(&mut batch, SOURCE_BATCH)?;
            for record in &batch {
                max_time = max_time.max(record.time);
            }
            self.outputs.route(&batch, &self.env.cancel)?;
            self.account(0, 0, started, backpressured);
            if let Some(lag) = source.lag() {
                self.env.counters.lag.store(lag, Ordering::Relaxed);
            }
            self.env.counters.bad_records.store(source.bad_records(), Ordering::Relaxed);
            if last_flush.elapsed() >= FLUSH_EVERY {
                last_flush = Instant::now();
                let watermark = max_time.saturating_sub(out_of_orderness);
                if watermark > sent_watermark {
                    sent_watermark = watermark;
                    self.outputs.broadcast(&DataEvent::Watermark(watermark), &self.env.cancel)?;
                } else {
                    self.outputs.flush(&self.env.cancel)?;
                }
            }
            match status {
                SourceStatus::Ready => {}
                SourceStatus::Idle => std::thread::sleep(Duration::from_millis(1)),
                SourceStatus::Finished => {
                    self.outputs.broadcast(&DataEvent::Watermark(EventTime::MAX), &self.env.cancel)?;
                    self.outputs.broadcast(&DataEvent::End { last: true }, &self.env.cancel)?;
                    finished = true;
                    let _ = self.env.to_am.send(ToAm::Finished {
                        instance: self.env.plan.id,
                        commit: None,
                        counts: self.counts(0, source.bad_records()),
                    });
                }
            }
        }
    }

    fn checkpoint_source(&mut self, source: &mut dyn Source, checkpoint: u64) -> Result<(), RunError> {
        let started = Instant::now();
        let offsets = source.snapshot()?;
        let location = self.state_path(checkpoint);
        let mut writer = self.env.files.create(&location)?;
        writer.operator_state(&offsets)?;
        let bytes = writer.finish()?;
        self.outputs.broadcast(&DataEvent::Barrier(checkpoint), &self.env.cancel)?;
        self.outputs.switch_at(checkpoint, &self.env.cancel)?;
        self.inputs.last_checkpoint = checkpoint;
        self.ack(Ack {
            instance: self.env.plan.id,
            checkpoint,
            state_file: Some(location.to_string()),
            state_bytes: bytes,
            commit: None,
            duration_ms: started.elapsed().as_millis() as u64,
            counts: self.counts(0, source.bad_records()),
        });
        Ok(())
    }

    fn state_path(&self, checkpoint: u64) -> Location {
        self.env.files.snapshot(checkpoint, &self.env.plan.spec.name, self.env.plan.id)
    }

    fn ack(&self, ack: Ack) {
        let _ = self.env.to_am.send(ToAm::Acked(ack));
    }

    fn account(&self, records_in: usize, bytes_in: usize, started: Instant, backpressured_before: Duration) {
        let counters = &self.env.counters;
        let waited = self.outputs.backpressured.saturating_sub(backpressured_before);
        counters.records_in.fetch_add(records_in as u64, Ordering::Relaxed);
        counters.bytes_in.fetch_add(bytes_in as u64, Ordering::Relaxed);
        counters.records_out.store(self.outputs.records_out, Ordering::Relaxed);
        counters.bytes_out.store(self.outputs.bytes_out, Ordering::Relaxed);
        counters
            .busy_ns
            .fetch_add(started.elapsed().saturating_sub(waited).as_nanos() as u64, Ordering::Relaxed);
        counters.backpressured_ns.fetch_add(waited.as_nanos() as u64, Ordering::Relaxed);
    }

    /// What this instance counted so far, exactly (read on its own thread, unlike the worker's
    /// samples of `Counters`): at a barrier, the records before it.
    fn counts(&self, late_records: u64, bad_records: u64) -> RecordCounts {
        RecordCounts {
            records_in: self.env.counters.records_in.load(Ordering::Relaxed),
            records_out: self.outputs.records_out,
            bytes_in: self.env.counters.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.outputs.bytes_out,
            late_records,
            bad_records,
        }
    }

    /// `counts` with the late and bad records its body counted.
    fn body_counts(&self, body: &Body) -> RecordCounts {
        match body {
            Body::Operator(operator) => self.counts(operator.late_records(), operator.bad_records()),
            Body::Source(source) => self.counts(0, source.bad_records()),
            Body::Sink(_) => self.counts(0, 0),
        }
    }

    fn command(&mut self, command: Command, body: Option<&mut Body>) -> Result<(), RunError> {
        match command {
            Command::Trigger { .. } => {}
            Command::Retarget { checkpoint, edge, targets } => self.outputs.prepare_retarget(checkpoint, edge, targets)?,
            Command::Regroup { checkpoint, range, gains } => self.regroup = Some((checkpoint, range, gains)),
            Command::AddInputs(inputs) => {
                for input in inputs {
                    self.inputs.expect(input.from, input.starts_after);
                }
            }
            Command::Load { checkpoint, files } => {
                if let Some(body) = body {
                    restore(body, &files, &self.env.files)?;
                    if let Body::Operator(operator) = body {
                        self.env.counters.state_bytes.store(operator.state_bytes(), Ordering::Relaxed);
                    }
                }
                self.inputs.paused = false;
                let paused_ms = self.paused_since.take().map_or(0, |since| since.elapsed().as_millis() as u64);
                let _ = self.env.to_am.send(ToAm::Loaded {
                    instance: self.env.plan.id,
                    checkpoint,
                    paused_ms,
                });
            }
        }
        Ok(())
    }

    fn run_consumer(&mut self, mut body: Body) -> Result<(), RunError> {
        let mut last_flush = Instant::now();
        loop {
            if self.cancelled() {
                return Ok(());
            }
            let next = match self.inputs.next_ready() {
                Some(ready) => Some(ready),
                None => match self.env.inbox.recv_timeout(FLUSH_EVERY) {
                    Ok(Inbound::Data { from, event }) => self.inputs.admit(from, event),
                    Ok(Inbound::Connected {
                        from,
                        credits,
                        starts_after,
                    }) => {
                        self.inputs.connected(from, credits, starts_after);
                        None
                    }
                    Ok(Inbound::Broken { from, error }) => return Err(RunError::InputBroken { from, error }),
                    Ok(Inbound::Command(command)) => {
                        self.command(command, Some(&mut body))?;
                        None
                    }
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return Ok(()),
                },
            };
            if let Some((from, event)) = next
                && self.handle(&mut body, from, event)?
            {
                // Retired or finished: its last snapshot is acknowledged before it ends.
                self.snapshots.wait().map_err(RunError::Snapshot)?;
                return Ok(());
            }
            if last_flush.elapsed() >= FLUSH_EVERY {
                last_flush = Instant::now();
                self.outputs.flush(&self.env.cancel)?;
                self.snapshots.check().map_err(RunError::Snapshot)?;
            }
        }
    }

    /// Handles one input event; `true` when the instance is done.
    fn handle(&mut self, body: &mut Body, from: InstanceId, event: DataEvent) -> Result<bool, RunError> {
        let changes = match event {
            DataEvent::Batch(batch) => {
                let started = Instant::now();
                let backpressured = self.outputs.backpressured;
                self.process(body, &batch)?;
                self.inputs.processed_batch(from);
                self.account(batch.len(), batch.byte_len(), started, backpressured);
                return Ok(false);
            }
            DataEvent::Watermark(watermark) => vec![self.inputs.on_watermark(from, watermark)],
            DataEvent::Barrier(checkpoint) => vec![self.inputs.on_barrier(from, checkpoint)],
            DataEvent::End { last } => self.inputs.on_end(from, last),
        };
        for change in changes {
            match change {
                InputChange::Nothing => {}
                // The end of every input: `finish` passes it on after the last output, which
                // an operator may still produce (an external command's last lines).
                InputChange::Watermark(EventTime::MAX) => {}
                InputChange::Watermark(watermark) => {
                    if let Body::Operator(operator) = body {
                        self.out.clear();
                        operator.on_watermark(watermark, &mut self.out)?;
                        let emitted = self.out.take();
                        self.outputs.route(&emitted, &self.env.cancel)?;
                        self.env.counters.late_records.store(operator.late_records(), Ordering::Relaxed);
                    }
                    self.outputs.broadcast(&DataEvent::Watermark(watermark), &self.env.cancel)?;
                }
                InputChange::Aligned(checkpoint) => {
                    if self.checkpoint(body, checkpoint)? {
                        return Ok(true);
                    }
                }
                InputChange::Ended => {
                    self.finish(body)?;
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    fn process(&mut self, body: &mut Body, batch: &Batch) -> Result<(), RunError> {
        match body {
            Body::Operator(operator) => {
                let key_groups = self.env.plan.key_groups;
                self.out.clear();
                for record in batch {
                    let group = crate::keys::key_group(record.key, key_groups);
                    operator.process(record, group, &mut self.out)?;
                }
                let emitted = self.out.take();
                self.outputs.route(&emitted, &self.env.cancel)?;
                self.env.counters.bad_records.store(operator.bad_records(), Ordering::Relaxed);
            }
            Body::Sink(sink) => sink.write(batch)?,
            Body::Source(_) => {}
        }
        Ok(())
    }

    /// Barrier `checkpoint` aligned: forward it, snapshot, apply a rescale's changes. `true`
    /// when a rescale retired this instance. An operator's state is only captured here; its
    /// snapshot thread writes it and acknowledges (one in flight: a capture waits for the
    /// previous write).
    fn checkpoint(&mut self, body: &mut Body, checkpoint: u64) -> Result<bool, RunError> {
        let started = Instant::now();
        self.outputs.broadcast(&DataEvent::Barrier(checkpoint), &self.env.cancel)?;
        let mut ack = Ack {
            instance: self.env.plan.id,
            checkpoint,
            state_file: None,
            state_bytes: 0,
            commit: None,
            duration_ms: 0,
            counts: self.body_counts(body),
        };
        match body {
            Body::Operator(operator) => {
                self.snapshots.wait().map_err(RunError::Snapshot)?;
                let job = SnapshotJob {
                    location: self.state_path(checkpoint),
                    files: self.env.files.clone(),
                    state: operator.capture()?,
                    ack,
                    aligned_at: started,
                };
                self.snapshots.submit(job).map_err(RunError::Snapshot)?;
            }
            Body::Sink(sink) => {
                let commit = sink.prepare_commit(checkpoint)?;
                ack.commit = (!commit.is_empty()).then_some(commit);
                ack.duration_ms = started.elapsed().as_millis() as u64;
                self.ack(ack);
            }
            Body::Source(_) => {
                ack.duration_ms = started.elapsed().as_millis() as u64;
                self.ack(ack);
            }
        }
        self.outputs.switch_at(checkpoint, &self.env.cancel)?;
        self.inputs.checkpoint_done(checkpoint);
        if let Some((at, range, gains)) = self.regroup.take() {
            if at != checkpoint {
                self.regroup = Some((at, range, gains));
            } else {
                let Some(range) = range else {
                    // Retired: downstream forgets this sender; the state went with the snapshot.
                    self.outputs.broadcast(&DataEvent::End { last: false }, &self.env.cancel)?;
                    return Ok(true);
                };
                if let Body::Operator(operator) = body {
                    operator.retain_key_groups(&(range.0..range.1));
                    self.env.counters.state_bytes.store(operator.state_bytes(), Ordering::Relaxed);
                }
                if gains {
                    self.inputs.paused = true;
                    self.paused_since = Some(Instant::now());
                }
            }
        }
        if let Body::Operator(operator) = body {
            self.env.counters.state_bytes.store(operator.state_bytes(), Ordering::Relaxed);
        }
        Ok(false)
    }

    fn finish(&mut self, body: &mut Body) -> Result<(), RunError> {
        let mut commit = None;
        match body {
            Body::Operator(operator) => {
                self.out.clear();
                operator.finish(&mut self.out)?;
                let emitted = self.out.take();
                self.outputs.route(&emitted, &self.env.cancel)?;
            }
            Body::Sink(sink) => {
                let final_commit = sink.finish(self.inputs.last_checkpoint + 1)?;
                commit = (!final_commit.is_empty()).then_some(final_commit);
            }
            Body::Source(_) => {}
        }
        self.outputs.broadcast(&DataEvent::Watermark(EventTime::MAX), &self.env.cancel)?;
        self.outputs.broadcast(&DataEvent::End { last: true }, &self.env.cancel)?;
        // The last checkpoint's acknowledgement before the end.
        self.snapshots.wait().map_err(RunError::Snapshot)?;
        let _ = self.env.to_am.send(ToAm::Finished {
            instance: self.env.plan.id,
            commit,
            counts: self.body_counts(body),
        });
        Ok(())
    }
}
