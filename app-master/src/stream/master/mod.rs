//! The streaming job's AM: registers with the RM, keeps as many worker containers as the
//! widest operator needs, serves the workers' control connections, and runs the coordinator's
//! decisions (deployments, checkpoints, rescales, restarts, commits) until the job ends.

mod autoscale;
mod checkpointing;
mod committer;
mod coordinator;
mod failures;
mod metrics;
mod rescale;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use spindle_protocol::{AllocateRequest, ContainerId, FinalStatus, JobDetail, LaunchSpec, ResourceAsk, StreamSpec, env};
use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::checkpoints::Storage;
use super::control::{ToAm, ToWorker};
use super::runtime::worker::AM_CONTROL_ENV;
use super::wire::{read_json, write_json};
use crate::AmExit;
use crate::context::AmContext;
use crate::error::AmError;
use crate::launch::{AgentLauncher, ContainerLauncher, DEFAULT_MAX_LAUNCHES_IN_FLIGHT, LaunchPool};
use crate::rm::{Heartbeat, RmConnection};
use committer::{CommitJob, run_commits, spawn_committer};
pub use coordinator::{Coordinator, Effect, Phase, Worker};

/// How long an allocate waits on the RM for news (control messages arrive meanwhile).
const ALLOCATE_WAIT_MS: u64 = 250;
const TICK: Duration = Duration::from_millis(20);

/// What the control connections report to the loop.
enum Event {
    Hello {
        container: ContainerId,
        data_address: String,
        tx: mpsc::UnboundedSender<ToWorker>,
    },
    Message {
        container: ContainerId,
        message: ToAm,
    },
    Closed {
        container: ContainerId,
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
        let app_id = self.context.app_id;
        match self.run_until_done(&shutdown).await {
            Err(AmError::Cancelled) => {
                tracing::info!(app_id = %app_id, "stream AM stopping: asked to stop");
                Ok(AmExit::Cancelled)
            }
            other => other,
        }
    }

    async fn run_until_done(self, shutdown: &CancellationToken) -> Result<AmExit, AmError> {
        let context = &self.context;
        let mut rm = RmConnection::new(
            &context.rm_urls,
            &context.am_token,
            context.app_id,
            context.attempt,
            context.rm_retry,
        );
        rm.register(shutdown).await?;
        let checkpoint_dir = self.spec.checkpoint_dir.clone().map_or_else(default_checkpoint_dir, PathBuf::from);
        Storage::new(&checkpoint_dir, &context.app_id.to_string())
            .prepare()
            .map_err(|err| AmError::Checkpoints(format!("cannot prepare {}: {err}", checkpoint_dir.display())))?;
        let mut coordinator = Coordinator::new(self.spec.clone(), context.app_id.to_string(), context.attempt, &checkpoint_dir);
        let storage = coordinator.storage.clone();
        let keep = self.spec.keep_checkpoints as usize;
        let commits = spawn_committer(storage, keep);

        // A job whose last checkpoint is recorded is over: publish (again) and finish.
        if let Some(meta) = coordinator.last_complete.clone().filter(|meta| meta.last) {
            let outcome = run_commits(&commits, meta.commits).await;
            let (status, diagnostics) = match outcome {
                Ok(()) => (FinalStatus::Succeeded, format!("the job had ended (last checkpoint {})", meta.id)),
                Err(error) => (FinalStatus::Failed, format!("committing the last output failed: {error}")),
            };
            rm.finish(status, &diagnostics, shutdown).await?;
            return Ok(AmExit::Finished {
                final_status: status,
                diagnostics,
            });
        }

        let listener = TcpListener::bind(("0.0.0.0", 0))
            .await
            .map_err(|error| AmError::Io(error.to_string()))?;
        let host = context
            .node_id
            .as_ref()
            .and_then(|node| node.0.rsplit_once(':').map(|(host, _)| host.to_owned()))
            .unwrap_or_else(|| "127.0.0.1".to_owned());
        let control_address = format!(
            "{host}:{}",
            listener.local_addr().map_err(|error| AmError::Io(error.to_string()))?.port()
        );
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let accept = tokio::spawn(accept_workers(listener, self.token.clone(), events_tx));

        let StreamMaster {
            context, spec, launcher, ..
        } = self;
        let context = &context;
        let mut launches = LaunchPool::new(launcher, DEFAULT_MAX_LAUNCHES_IN_FLIGHT);
        let (requests_tx, requests_rx) = mpsc::channel::<AllocateRequest>(1);
        let (replies_tx, mut replies) = mpsc::channel::<Result<Heartbeat, AmError>>(1);
        let heartbeat = tokio::spawn(heartbeat_loop(rm, requests_rx, replies_tx, shutdown.clone()));
        let mut released: BTreeSet<ContainerId> = BTreeSet::new();
        let worker_command = spec
            .worker_command
            .clone()
            .unwrap_or_else(|| vec!["spindle".to_owned(), "stream-task".to_owned()]);
        let mut launch_env = spec.env.clone();
        launch_env.insert(AM_CONTROL_ENV.to_owned(), control_address.clone());
        tracing::info!(app_id = %context.app_id, %control_address, "stream AM starting");

        let mut ticker = tokio::time::interval(TICK);
        let mut outcome: Option<(bool, String)> = None;
        let mut pending_commits = Vec::new();
        requests_tx
            .send(allocate_request(context, &spec, &coordinator, Vec::new(), 0))
            .await
            .map_err(|_| AmError::Cancelled)?;
        while outcome.is_none() {
            tokio::select! {
                _ = shutdown.cancelled() => return Err(AmError::Cancelled),
                event = events.recv() => {
                    let Some(event) = event else { break };
                    handle_event(&mut coordinator, event);
                }
                reply = replies.recv() => {
                    let Some(reply) = reply else { return Err(AmError::Cancelled) };
                    let Heartbeat { reply, .. } = reply?;
                    if reply.shutdown {
                        tracing::info!("the RM says this attempt is over: stopping without finish");
                        shutdown_workers(&coordinator);
                        return Ok(AmExit::ShutdownByRm);
                    }
                    if !reply.operators.is_empty() {
                        coordinator.set_desired(&reply.operators);
                    }
                    if !reply.preempt.is_empty() {
                        coordinator.on_preempt(&reply.preempt);
                    }
                    for status in &reply.completed {
                        coordinator.on_worker_lost(status.container_id, &format!("container ended: {}", status.diagnostics.trim()));
                    }
                    for allocation in reply.allocated {
                        coordinator.workers.insert(allocation.container_id, Worker { data_address: None, tx: None });
                        launches.spawn(allocation, LaunchSpec { command: worker_command.clone(), env: launch_env.clone(), files: Default::default() });
                    }
                    for result in launches.finished() {
                        if let Err(failure) = result.result {
                            coordinator.on_worker_lost(result.container_id, &format!("launch failed: {}", failure.message));
                        }
                    }
                    let releases: Vec<ContainerId> = coordinator.idle_workers().into_iter().filter(|id| released.insert(*id)).collect();
                    for id in &releases {
                        coordinator.send(*id, ToWorker::Shutdown);
                        coordinator.workers.remove(id);
                    }
                    let wanted = coordinator.workers_wanted().saturating_sub(coordinator.workers.len());
                    let request = allocate_request(context, &spec, &coordinator, releases, wanted as u32);
                    if requests_tx.send(request).await.is_err() {
                        return Err(AmError::Cancelled);
                    }
                }
                _ = ticker.tick() => {}
            }
            coordinator.tick();
            for effect in std::mem::take(&mut coordinator.effects) {
                match effect {
                    Effect::Commit(batch) => {
                        if !batch.is_empty() {
                            let (done_tx, done_rx) = oneshot::channel();
                            let _ = commits.send(CommitJob {
                                commits: batch,
                                clean: None,
                                done: Some(done_tx),
                            });
                            pending_commits.push(done_rx);
                        }
                    }
                    Effect::CleanStaging { dirs, epoch } => {
                        let _ = commits.send(CommitJob {
                            commits: Vec::new(),
                            clean: Some((dirs, epoch)),
                            done: None,
                        });
                    }
                    Effect::Finish { succeeded, diagnostics } => outcome = Some((succeeded, diagnostics)),
                }
            }
            // A failed commit fails the job: its output cannot be published.
            let mut still = Vec::new();
            for mut done in pending_commits.drain(..) {
                match done.try_recv() {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => outcome = Some((false, format!("committing sink output failed: {error}"))),
                    Err(oneshot::error::TryRecvError::Empty) => still.push(done),
                    Err(oneshot::error::TryRecvError::Closed) => {}
                }
            }
            pending_commits = still;
        }
        let (succeeded, mut diagnostics) = outcome.unwrap_or((false, "the control listener stopped".to_owned()));
        // Every commit queued so far (the last one included) must be done before the end.
        for done in pending_commits {
            if let Ok(Err(error)) = done.await {
                diagnostics = format!("committing sink output failed: {error}");
            }
        }
        let succeeded = succeeded && !diagnostics.starts_with("committing");
        shutdown_workers(&coordinator);
        accept.abort();
        drop(requests_tx);
        let mut rm = heartbeat.await.map_err(|error| AmError::Io(error.to_string()))?;
        let final_status = if succeeded { FinalStatus::Succeeded } else { FinalStatus::Failed };
        tracing::info!(?final_status, %diagnostics, "stream job finished");
        rm.finish(final_status, &diagnostics, shutdown).await?;
        Ok(AmExit::Finished { final_status, diagnostics })
    }
}

/// The next allocate: workers still wanted, idle ones handed back, and the pipeline's detail.
fn allocate_request(
    context: &AmContext,
    spec: &StreamSpec,
    coordinator: &Coordinator,
    releases: Vec<ContainerId>,
    wanted: u32,
) -> AllocateRequest {
    let asks = if wanted > 0 {
        vec![ResourceAsk {
            priority: 1,
            resources: spec.worker,
            count: wanted,
            nodes: Vec::new(),
            racks: Vec::new(),
            label: None,
        }]
    } else {
        Vec::new()
    };
    let layout = coordinator.layout.as_ref();
    let detail = JobDetail {
        stages: Vec::new(),
        counters: coordinator.metrics.totals(&coordinator.graph, layout),
        stream: Some(coordinator.metrics.detail(
            &coordinator.graph,
            layout,
            &coordinator.parallelism,
            &coordinator.slots,
            coordinator.last_complete.as_ref(),
            coordinator.restarts,
        )),
    };
    AllocateRequest {
        app_id: context.app_id,
        attempt: context.attempt,
        asks,
        releases,
        progress: 0.5,
        wait_ms: ALLOCATE_WAIT_MS,
        response_id: None,
        detail: Some(detail),
    }
}

fn handle_event(coordinator: &mut Coordinator, event: Event) {
    match event {
        Event::Hello {
            container,
            data_address,
            tx,
        } => match coordinator.workers.get_mut(&container) {
            Some(worker) => {
                worker.data_address = Some(data_address);
                worker.tx = Some(tx);
            }
            None => {
                // Not ours (any more): tell it to go.
                let _ = tx.send(ToWorker::Shutdown);
            }
        },
        Event::Closed { container } => coordinator.on_worker_lost(container, "its control connection closed"),
        Event::Message { container, message } => match message {
            ToAm::Hello { .. } => {}
            ToAm::Acked(ack) => coordinator.on_ack(ack),
            ToAm::Prepared { checkpoint } => coordinator.on_prepared(container, checkpoint),
            ToAm::Loaded {
                instance,
                checkpoint,
                paused_ms,
            } => coordinator.on_loaded(instance, checkpoint, paused_ms),
            ToAm::Finished { instance, commit } => coordinator.on_finished(instance, commit),
            ToAm::Failed { instance, error } => {
                let live = coordinator
                    .layout
                    .as_ref()
                    .is_some_and(|layout| layout.iter().flatten().any(|p| p.id == instance));
                if live {
                    coordinator.restart(&format!("instance {instance} failed: {error}"));
                }
            }
            ToAm::Metrics { instances } => coordinator.metrics.record(Instant::now(), instances),
            ToAm::ResetDone { epoch } => coordinator.on_reset_done(container, epoch),
        },
    }
}

fn shutdown_workers(coordinator: &Coordinator) {
    for id in coordinator.workers.keys() {
        coordinator.send(*id, ToWorker::Shutdown);
    }
}

/// Sends allocate requests as the loop hands them over, one at a time, so asks are always
/// computed from the latest grants; gives the connection back when the loop is done.
async fn heartbeat_loop(
    mut rm: RmConnection,
    mut requests: mpsc::Receiver<AllocateRequest>,
    replies: mpsc::Sender<Result<Heartbeat, AmError>>,
    shutdown: CancellationToken,
) -> RmConnection {
    while let Some(request) = requests.recv().await {
        let result = rm.allocate(&request, &shutdown).await;
        if replies.send(result).await.is_err() {
            break;
        }
    }
    rm
}

/// Accepts workers' control connections: each says hello with the app's token first.
async fn accept_workers(listener: TcpListener, token: String, events: mpsc::UnboundedSender<Event>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (token, events) = (token.clone(), events.clone());
        tokio::spawn(async move {
            if let Err(error) = serve_worker(stream, &token, events).await {
                tracing::debug!(%error, "worker control connection ended");
            }
        });
    }
}

async fn serve_worker(stream: TcpStream, token: &str, events: mpsc::UnboundedSender<Event>) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let Some(ToAm::Hello {
        container_id,
        data_address,
        token: given,
    }) = read_json::<_, ToAm>(&mut reader).await?
    else {
        return Ok(());
    };
    let Ok(container) = container_id.parse::<ContainerId>() else {
        return Ok(());
    };
    if given != token {
        tracing::warn!(%container_id, "a worker presented a wrong token");
        return Ok(());
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<ToWorker>();
    tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            let stop = matches!(message, ToWorker::Shutdown);
            if write_json(&mut writer, &message).await.is_err() || stop {
                break;
            }
        }
    });
    let _ = events.send(Event::Hello {
        container,
        data_address,
        tx,
    });
    loop {
        match read_json::<_, ToAm>(&mut reader).await {
            Ok(Some(message)) => {
                if events.send(Event::Message { container, message }).is_err() {
                    return Ok(());
                }
            }
            Ok(None) | Err(_) => {
                let _ = events.send(Event::Closed { container });
                return Ok(());
            }
        }
    }
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
