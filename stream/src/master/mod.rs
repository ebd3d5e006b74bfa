//! The streaming job's AM on the driver: keeps as many worker containers as the widest operator
//! needs, serves the workers' control connections, and carries out the pure coordinator's
//! effects (messages to workers, commits, the end of the job).

mod autoscale;
mod checkpointing;
mod committer;
mod control_server;
mod coordinator;
mod counters;
mod exported_metrics;
mod failures;
mod metrics;
mod rescale;
mod savepoints;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use spindle_protocol::{
    Allocation, ContainerId, ContainerStatus, JobDetail, LaunchSpec, OPERATOR_CONTROL_PREFIX, ResourceAsk, STREAM_SECTION, StreamSpec, env,
    savepoint_location,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::checkpoints::Storage;
use crate::control::{ToAm, ToWorker};
use crate::location::Location;
use crate::runtime::worker::AM_CONTROL_ENV;
use committer::{CommitJob, SavepointWrite, run_commits, spawn_committer};
pub use coordinator::{Coordinator, Effect, Phase, Worker};
pub use savepoints::SavepointAsk;
use spindle_app_master::AmContext;
use spindle_app_master::AmError;
use spindle_app_master::AmExit;
use spindle_app_master::driver::{self, Framework, Outcome, Report, Started};
use spindle_app_master::{AgentLauncher, ContainerLauncher, LaunchFailure};
use spindle_storage::S3Settings;

/// How long an allocate waits on the RM for news (control messages arrive meanwhile).
const ALLOCATE_WAIT: Duration = Duration::from_millis(250);
/// Checkpoint triggers, deployment and rescale steps are checked this often.
const TICK: Duration = Duration::from_millis(20);

/// What the stream AM's own I/O reports.
pub enum Event {
    /// A worker connected and proved it belongs to the app.
    Hello {
        container: ContainerId,
        data_address: String,
        tx: mpsc::UnboundedSender<ToWorker>,
    },
    Message {
        container: ContainerId,
        /// Boxed: an ack with its sink commit is several times the other events' size.
        message: Box<ToAm>,
    },
    Closed {
        container: ContainerId,
    },
    /// A batch of sink commits ran: `Err` is why it failed.
    Committed(Result<(), String>),
    /// Savepoint `id` was written (or why not).
    SavepointWritten {
        id: u64,
        result: Result<(), String>,
    },
}

/// The application master of a `stream` job.
pub struct StreamMaster<L = AgentLauncher> {
    context: AmContext,
    spec: StreamSpec,
    launcher: L,
    token: String,
}

impl StreamMaster<AgentLauncher> {
    pub fn new(context: AmContext) -> Result<Self, AmError> {
        let token = std::env::var(env::SHUFFLE_TOKEN).map_err(|_| AmError::MissingEnv { name: env::SHUFFLE_TOKEN })?;
        Self::with_launcher(context, AgentLauncher::new(), token)
    }
}

impl<L: ContainerLauncher> StreamMaster<L> {
    pub fn with_launcher(context: AmContext, launcher: L, token: String) -> Result<Self, AmError> {
        context.spec.validate()?;
        let Some(spec) = context.spec.stream.clone() else {
            return Err(AmError::UnsupportedKind {
                kind: format!("{:?}", context.spec.kind).to_lowercase(),
            });
        };
        Ok(StreamMaster {
            context,
            spec,
            launcher,
            token,
        })
    }

    pub async fn run(self, shutdown: CancellationToken) -> Result<AmExit, AmError> {
        let StreamMaster {
            context,
            spec,
            launcher,
            token,
        } = self;
        // The checkpoint dir is checked before registering: a dir this job cannot use safely
        // fails the attempt, as it did before the driver.
        let s3 = S3Settings::from_env(&spec.env);
        let checkpoint_dir = match &spec.checkpoint_dir {
            Some(dir) => Location::open(dir, &s3).map_err(|err| AmError::Setup(format!("checkpoint storage: {dir}: {err}")))?,
            None => Location::Dir(default_checkpoint_dir()),
        };
        Storage::new(&checkpoint_dir, &context.app_id.to_string(), s3)
            .prepare()
            .map_err(|err| AmError::Setup(format!("checkpoint storage: cannot prepare {checkpoint_dir}: {err}")))?;
        driver::run_default(context, launcher, shutdown, |started| start(started, spec, token, checkpoint_dir)).await
    }
}

/// Reads the latest checkpoint, opens the control port and starts the committer. A job whose
/// last checkpoint is recorded is over: its commits run (again) and it finishes at once.
async fn start(started: Started<Event>, spec: StreamSpec, token: String, checkpoint_dir: Location) -> Result<StreamFramework, Outcome> {
    let Started {
        context, events, shutdown, ..
    } = started;
    let s3 = S3Settings::from_env(&spec.env);
    let mut coordinator = Coordinator::new(
        spec.clone(),
        context.app_id.to_string(),
        context.attempt,
        &checkpoint_dir,
        Instant::now(),
    );
    // Only a job with no checkpoint of its own starts from its savepoint: later attempts
    // recover from their own, as any job does.
    if coordinator.last_complete.is_none()
        && let Some(from) = &spec.from_savepoint
    {
        let point = crate::savepoint::read(from, &s3)
            .and_then(|(dir, meta)| meta.restore_point(&dir, &spec))
            .map_err(|err| Outcome::failed(format!("cannot start from savepoint {from}: {err}")))?;
        tracing::info!(savepoint = %from, checkpoint = point.id, "starting from a savepoint");
        coordinator.restore_from_savepoint(point);
    }
    let savepoint_dir = match &spec.savepoint_dir {
        Some(dir) => savepoint_location("stream.savepoint_dir", dir)
            .map_err(|err| err.to_string())
            .and_then(|dir| Location::open(&dir, &s3).map_err(|err| format!("stream.savepoint_dir: {err}")))
            .map_err(Outcome::failed)?,
        None => checkpoint_dir.child("savepoints"),
    };
    let commits = spawn_committer(coordinator.storage.clone(), spec.keep_checkpoints as usize, s3.clone());
    if let Some(meta) = coordinator.last_complete.clone().filter(|meta| meta.last) {
        return Err(match run_commits(&commits, meta.commits).await {
            Ok(()) => Outcome::succeeded(format!("the job had ended (last checkpoint {})", meta.id)),
            Err(error) => Outcome::failed(format!("committing the last output failed: {error}")),
        });
    }
    let listener = TcpListener::bind(("0.0.0.0", 0))
        .await
        .map_err(|error| Outcome::failed(format!("cannot open the control port: {error}")))?;
    let port = listener
        .local_addr()
        .map_err(|error| Outcome::failed(format!("cannot open the control port: {error}")))?
        .port();
    let host = context
        .node_id
        .as_ref()
        .and_then(|node| node.0.rsplit_once(':').map(|(host, _)| host.to_owned()))
        .unwrap_or_else(|| "127.0.0.1".to_owned());
    let control_address = format!("{host}:{port}");
    let accepting = events.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = control_server::accept_workers(listener, token, accepting) => {}
            () = shutdown.cancelled() => {}
        }
    });
    let worker_command = spec
        .worker_command
        .clone()
        .unwrap_or_else(|| vec!["spindle".to_owned(), "stream-task".to_owned()]);
    let mut worker_env = spec.env.clone();
    worker_env.insert(AM_CONTROL_ENV.to_owned(), control_address.clone());
    tracing::info!(app_id = %context.app_id, %control_address, "stream AM starting");
    Ok(StreamFramework {
        app_id: context.app_id.to_string(),
        savepoint_dir,
        s3,
        worker: LaunchSpec {
            command: worker_command,
            env: worker_env,
            files: Default::default(),
        },
        spec,
        coordinator,
        channels: BTreeMap::new(),
        released: BTreeSet::new(),
        to_release: Vec::new(),
        commits,
        events,
        commits_running: 0,
        finish: None,
        commit_failure: None,
    })
}

/// The stream job on the driver.
pub struct StreamFramework {
    app_id: String,
    /// Where savepoints go when their request names no directory.
    savepoint_dir: Location,
    /// The job's object-store settings (from its env).
    s3: S3Settings,
    spec: StreamSpec,
    coordinator: Coordinator,
    /// What every worker container runs.
    worker: LaunchSpec,
    /// Control channels of the workers that said hello.
    channels: BTreeMap<ContainerId, mpsc::UnboundedSender<ToWorker>>,
    /// Containers handed back (or being), so none is released twice.
    released: BTreeSet<ContainerId>,
    /// Releases for the next allocate.
    to_release: Vec<ContainerId>,
    commits: mpsc::UnboundedSender<CommitJob>,
    /// For the commits' results.
    events: mpsc::UnboundedSender<Event>,
    commits_running: usize,
    /// The coordinator's verdict; the job ends once every commit queued before it ran.
    finish: Option<(bool, String)>,
    commit_failure: Option<String>,
}

impl StreamFramework {
    fn send(&self, worker: ContainerId, message: ToWorker) {
        if let Some(tx) = self.channels.get(&worker) {
            let _ = tx.send(message);
        }
    }

    /// Carries out what the coordinator decided.
    fn apply_effects(&mut self) {
        for effect in self.coordinator.take_effects() {
            match effect {
                Effect::Send { worker, message } => {
                    let stop = matches!(message, ToWorker::Shutdown);
                    self.send(worker, message);
                    if stop {
                        self.channels.remove(&worker);
                    }
                }
                Effect::Commit(batch) => {
                    if batch.is_empty() {
                        continue;
                    }
                    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
                    let job = CommitJob {
                        commits: batch,
                        clean: None,
                        savepoint: None,
                        abort: Vec::new(),
                        done: Some(done_tx),
                    };
                    if self.commits.send(job).is_err() {
                        self.commit_failure = Some("the committer stopped".to_owned());
                        continue;
                    }
                    self.commits_running += 1;
                    let events = self.events.clone();
                    tokio::spawn(async move {
                        let result = done_rx.await.unwrap_or_else(|_| Err("the committer stopped".to_owned()));
                        let _ = events.send(Event::Committed(result));
                    });
                }
                Effect::CleanStaging { dirs, epoch, prefixes } => {
                    let _ = self.commits.send(CommitJob {
                        commits: Vec::new(),
                        clean: Some((dirs, epoch, prefixes)),
                        savepoint: None,
                        abort: Vec::new(),
                        done: None,
                    });
                }
                Effect::AbortUploads(uploads) => {
                    let _ = self.commits.send(CommitJob {
                        commits: Vec::new(),
                        clean: None,
                        savepoint: None,
                        abort: uploads,
                        done: None,
                    });
                }
                Effect::WriteSavepoint { id, dir, meta, copies } => {
                    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
                    let job = CommitJob {
                        commits: Vec::new(),
                        clean: None,
                        savepoint: Some(SavepointWrite { dir, meta: *meta, copies }),
                        abort: Vec::new(),
                        done: Some(done_tx),
                    };
                    // Counted with the commits: the job does not end while one is written.
                    self.commits_running += 1;
                    let events = self.events.clone();
                    let sent = self.commits.send(job).is_ok();
                    tokio::spawn(async move {
                        let result = if sent {
                            done_rx.await.unwrap_or_else(|_| Err("the committer stopped".to_owned()))
                        } else {
                            Err("the committer stopped".to_owned())
                        };
                        let _ = events.send(Event::SavepointWritten { id, result });
                    });
                }
                Effect::Finish { succeeded, diagnostics } => {
                    self.finish.get_or_insert((succeeded, diagnostics));
                }
            }
        }
    }

    fn on_message(&mut self, container: ContainerId, message: ToAm, now: Instant) {
        let coordinator = &mut self.coordinator;
        match message {
            ToAm::Hello { .. } => {}
            ToAm::Acked(ack) => coordinator.on_ack(ack, now),
            ToAm::Prepared { checkpoint } => coordinator.on_prepared(container, checkpoint, now),
            ToAm::Loaded {
                instance,
                checkpoint,
                paused_ms,
            } => coordinator.on_loaded(instance, checkpoint, paused_ms, now),
            ToAm::Finished { instance, commit, counts } => coordinator.on_finished(instance, commit, counts, now),
            ToAm::Failed { instance, error } => coordinator.on_instance_failed(instance, &error, now),
            ToAm::Metrics { instances } => coordinator.on_metrics(instances, now),
            ToAm::ResetDone { epoch } => coordinator.on_reset_done(container, epoch, now),
            ToAm::Cancelled { epoch } => coordinator.on_cancelled(container, epoch, now),
        }
    }
}

impl Framework for StreamFramework {
    type Event = Event;

    fn allocate_wait(&self) -> Duration {
        ALLOCATE_WAIT
    }

    fn tick_every(&self) -> Option<Duration> {
        Some(TICK)
    }

    /// Workers of an earlier AM attempt are not reused: their control connections went to it,
    /// so they are handed back.
    fn on_registered(&mut self, live: &[ContainerId], _now: Instant) {
        for id in live {
            if !self.coordinator.workers.contains_key(id) && self.released.insert(*id) {
                tracing::debug!(container_id = %id, "releasing a container this attempt does not know");
                self.to_release.push(*id);
            }
        }
    }

    fn on_granted(&mut self, allocation: Allocation, _now: Instant) -> Option<LaunchSpec> {
        self.coordinator.workers.insert(allocation.container_id, Worker::default());
        Some(self.worker.clone())
    }

    fn on_launched(&mut self, container: ContainerId, result: Result<(), LaunchFailure>, now: Instant) {
        if let Err(failure) = result {
            self.coordinator
                .on_worker_lost(container, &format!("launch failed: {}", failure.message), now);
        }
    }

    fn on_completed(&mut self, status: &ContainerStatus, now: Instant) {
        let reason = format!("container ended: {}", status.diagnostics.trim());
        self.coordinator.on_worker_lost(status.container_id, &reason, now);
    }

    fn on_preempt_notice(&mut self, containers: &[ContainerId], now: Instant) {
        self.coordinator.on_preempt(containers, now);
    }

    fn on_controls(&mut self, controls: &BTreeMap<String, serde_json::Value>, now: Instant) {
        let desired = operator_parallelism(controls);
        if !desired.is_empty() {
            self.coordinator.set_desired(&desired, now);
        }
        let asks = savepoints::asks_from_controls(controls, &self.coordinator.savepoints, &self.savepoint_dir, &self.app_id, &self.s3);
        if !asks.is_empty() {
            self.coordinator.on_savepoint_asks(asks, now);
        }
    }

    fn on_event(&mut self, event: Event, now: Instant) {
        match event {
            Event::Hello {
                container,
                data_address,
                tx,
            } => match self.coordinator.workers.get_mut(&container) {
                Some(worker) => {
                    worker.data_address = Some(data_address);
                    self.channels.insert(container, tx);
                }
                // Not ours (any more): tell it to go.
                None => {
                    let _ = tx.send(ToWorker::Shutdown);
                }
            },
            Event::Closed { container } => {
                self.coordinator.on_worker_lost(container, "its control connection closed", now);
            }
            Event::Message { container, message } => self.on_message(container, *message, now),
            Event::SavepointWritten { id, result } => {
                self.commits_running = self.commits_running.saturating_sub(1);
                self.coordinator.on_savepoint_written(id, result, now);
            }
            Event::Committed(result) => {
                self.commits_running = self.commits_running.saturating_sub(1);
                if let Err(error) = result {
                    // A failed commit fails the job: its output cannot be published.
                    self.commit_failure.get_or_insert(format!("committing sink output failed: {error}"));
                }
            }
        }
    }

    fn tick(&mut self, now: Instant) {
        self.coordinator.tick(now);
        self.apply_effects();
    }

    fn asks(&self) -> Vec<ResourceAsk> {
        let wanted = self.coordinator.workers_wanted().saturating_sub(self.coordinator.workers.len());
        if wanted == 0 {
            return Vec::new();
        }
        vec![ResourceAsk {
            priority: 1,
            resources: self.spec.worker,
            count: u32::try_from(wanted).unwrap_or(u32::MAX),
            nodes: Vec::new(),
            racks: Vec::new(),
            label: None,
        }]
    }

    fn take_releases(&mut self) -> Vec<ContainerId> {
        for id in self.coordinator.idle_workers() {
            if self.released.insert(id) {
                self.send(id, ToWorker::Shutdown);
                self.channels.remove(&id);
                self.coordinator.workers.remove(&id);
                self.to_release.push(id);
            }
        }
        std::mem::take(&mut self.to_release)
    }

    fn report(&self) -> Report {
        let stream = self.coordinator.stream_detail();
        let detail = JobDetail {
            counters: counters::job_counters(&stream),
            metrics: exported_metrics::exported_metrics(&stream),
            ..JobDetail::default()
        };
        Report {
            progress: 0.5,
            detail: Some(detail.with_section(STREAM_SECTION, &stream)),
        }
    }

    fn outcome(&mut self) -> Option<Outcome> {
        let (succeeded, diagnostics) = match (&self.commit_failure, &self.finish) {
            (Some(failure), _) => (false, failure.clone()),
            (None, Some((succeeded, diagnostics))) => (*succeeded, diagnostics.clone()),
            (None, None) => return None,
        };
        // Every commit queued so far (the last one included) must be done before the end.
        if self.commits_running > 0 {
            return None;
        }
        Some(if succeeded {
            Outcome::succeeded(diagnostics)
        } else {
            Outcome::failed(diagnostics)
        })
    }

    fn stop(&mut self) {
        for tx in std::mem::take(&mut self.channels).into_values() {
            let _ = tx.send(ToWorker::Shutdown);
        }
    }
}

/// `operators/<name>` → `{"parallelism": n}` controls as a map of wanted parallelism.
fn operator_parallelism(controls: &BTreeMap<String, serde_json::Value>) -> BTreeMap<String, u32> {
    controls
        .iter()
        .filter_map(|(key, value)| {
            let name = key.strip_prefix(OPERATOR_CONTROL_PREFIX)?;
            let parallelism = u32::try_from(value.get("parallelism")?.as_u64()?).ok()?;
            Some((name.to_owned(), parallelism))
        })
        .collect()
}

/// Without a `checkpoint_dir`: `/tmp/spindle-checkpoints-<uid>`, one per account and
/// private to it (0700), never a dir every account may write. Only for jobs whose workers
/// share one host.
fn default_checkpoint_dir() -> PathBuf {
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    // Not `temp_dir()`: the agent points TMPDIR into the container's own dir, which a later
    // AM attempt (another container) would not see.
    let dir = PathBuf::from("/tmp").join(format!("spindle-checkpoints-{uid}"));
    use std::os::unix::fs::DirBuilderExt;
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    dir
}
