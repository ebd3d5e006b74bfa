//! The one owner of the node's containers. HTTP handlers, the heartbeat loop and the memory
//! monitor call its methods; only it changes a container's record. Each running container has
//! one supervising task that waits for its exit, carries out kills and records the end.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use spindle_protocol::{
    AppId, ContainerId, ContainerState, ContainerStatus, ExitReason, LaunchRequest, LaunchSpec, NodeKeyring, Resources, now_ms,
};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::AgentError;
use crate::account::Account;
use crate::launcher::{self, CONTAINER_KILL_GRACE, KillRequest, LaunchContext, SpawnFailure};
use crate::memory::SampledContainer;
use crate::recovery;

mod adopt;
mod auth;
mod census;
mod retention_rules;
mod shuffle_access;
mod supervise;

/// How long a completed container the RM has acknowledged stays queryable (status, and logs
/// with its own token) before the agent forgets it. Its files stay until `log_retention` ends.
const ACKED_RETENTION: Duration = Duration::from_secs(10 * 60);
/// At most this many acknowledged containers are kept, whatever their age.
const MAX_ACKED_RETAINED: usize = 10_000;

const MIB: u64 = 1024 * 1024;

/// Owns the containers map and every change to it.
pub(crate) struct ContainerManager {
    /// The node's keys from the RM: check container tokens and the RM's bearer. `None` until
    /// the first registration when no credential was saved.
    keys: RwLock<Option<NodeKeyring>>,
    /// The newest RM epoch this agent has heard of (replies, RM bearers, container ids): calls
    /// and replies of an older RM, replaced by a newer leader, are refused or ignored.
    rm_epoch: std::sync::atomic::AtomicU64,
    context: Arc<LaunchContext>,
    state: Mutex<ManagerState>,
    /// Wakes the heartbeat loop at once when a container starts or ends.
    report_trigger: Arc<Notify>,
    /// Supervising tasks and cgroup clean-ups, awaited when the agent stops.
    tasks: TaskTracker,
    /// Cancelled when the agent stops: supervisors let go of their (still running) containers.
    stop: CancellationToken,
    /// Cgroup set-up failures are logged at warn once, then at debug.
    cgroup_failure_logged: AtomicBool,
    /// How long a finished container's directory is kept (`AgentConfig::log_retention`).
    log_retention: Duration,
    /// The agent's event metrics (launches, heartbeats, requests), for `/metrics`.
    pub(crate) metrics: crate::metrics::AgentMetrics,
}

struct ManagerState {
    containers: HashMap<ContainerId, ContainerRecord>,
    /// Acknowledged completions, oldest first, so they can be forgotten in order.
    acked_order: VecDeque<(Instant, ContainerId)>,
    /// The RM is decommissioning this node: refuse launches.
    draining: bool,
    /// Containers whose directories the retention sweep is deleting right now. Launches of these
    /// ids are refused, so a directory is never deleted under a container being launched.
    removing_dirs: HashSet<ContainerId>,
    /// The shuffle token of each app that ran here, from its container tokens: admits the
    /// app's reducers to its map output here, and nothing else.
    shuffle_tokens: HashMap<AppId, String>,
}

/// Everything the agent knows about one container.
struct ContainerRecord {
    /// What GET answers and heartbeats carry.
    status: ContainerStatus,
    /// From the token: the memory limit and the size in the container's environment.
    resources: Resources,
    /// The launch token's signature: the container's AM may use it as a bearer token.
    token_signature: String,
    /// The leader's pid and process group id, once it started and until it ended.
    process_group: Option<i32>,
    /// No cgroup limits it: the memory monitor samples it.
    sampled: bool,
    /// Set when the agent decided to stop it: the reason wins over whatever exit follows.
    kill: Option<KillRequest>,
    /// Tells the supervising task to start the SIGTERM, grace, SIGKILL sequence.
    kill_signal: Arc<Notify>,
    /// Flips to true on completion; DELETE waits on it.
    finished: watch::Sender<bool>,
    /// The RM has recorded the completion: no longer reported.
    acked: bool,
    /// When it completed: the retention of its directory counts from here.
    finished_at: Option<Instant>,
    /// The retention sweep deleted its directory: logs answer that they were removed.
    files_removed: bool,
}

impl ContainerManager {
    pub(crate) fn new(
        keys: Option<NodeKeyring>,
        context: LaunchContext,
        tasks: TaskTracker,
        stop: CancellationToken,
        log_retention: Duration,
    ) -> Self {
        ContainerManager {
            keys: RwLock::new(keys),
            rm_epoch: std::sync::atomic::AtomicU64::new(0),
            context: Arc::new(context),
            state: Mutex::new(ManagerState {
                containers: HashMap::new(),
                acked_order: VecDeque::new(),
                draining: false,
                removing_dirs: HashSet::new(),
                shuffle_tokens: HashMap::new(),
            }),
            report_trigger: Arc::new(Notify::new()),
            tasks,
            stop,
            cgroup_failure_logged: AtomicBool::new(false),
            log_retention,
            metrics: crate::metrics::AgentMetrics::new(),
        }
    }

    /// Notified whenever a container starts or ends.
    pub(crate) fn report_trigger(&self) -> Arc<Notify> {
        self.report_trigger.clone()
    }

    fn lock(&self) -> MutexGuard<'_, ManagerState> {
        // A panic while holding the lock leaves plain data behind; carry on with it.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Checks the token, then starts the container. A program that cannot be started still
    /// yields a status (COMPLETE, FAILED), as YARN reports launch failures as completions.
    pub(crate) async fn launch(self: &Arc<Self>, request: LaunchRequest) -> Result<ContainerStatus, AgentError> {
        launcher::check_spec(&request.launch).map_err(AgentError::BadRequest)?;
        self.check_container_token(&request.token)?;
        // Spawned: once the account is known the container exists and must be started even
        // if the caller goes away (axum drops a handler's future when its client hangs up).
        self.tasks
            .spawn(Arc::clone(self).record_and_start(request))
            .await
            .unwrap_or_else(|join_error| std::panic::resume_unwind(join_error.into_panic()))
    }

    /// Resolves the token's account (refusing it with 400 when it cannot run containers
    /// here), records the container and starts it.
    async fn record_and_start(self: Arc<Self>, request: LaunchRequest) -> Result<ContainerStatus, AgentError> {
        let account = {
            let context = self.context.clone();
            let user = request.token.user.clone();
            tokio::task::spawn_blocking(move || context.run_mode.account_for(&user))
                .await
                .unwrap_or_else(|join_error| std::panic::resume_unwind(join_error.into_panic()))?
        };
        let container_id = request.token.container_id;
        let resources = request.token.resources;
        let kill_signal = Arc::new(Notify::new());
        {
            let mut state = self.lock();
            if state.draining {
                return Err(AgentError::Draining);
            }
            if state.containers.contains_key(&container_id) || state.removing_dirs.contains(&container_id) {
                return Err(AgentError::DuplicateContainer(container_id));
            }
            let new_app = state
                .shuffle_tokens
                .insert(container_id.app, request.token.shuffle_token.clone())
                .is_none();
            if new_app && self.context.recover {
                // Its map output stays servable after its containers end: a restarted agent
                // must still know who may fetch it.
                if let Err(err) = recovery::save_shuffle_token(&self.context.work_dir, container_id.app, &request.token.shuffle_token) {
                    tracing::warn!(app = %container_id.app, error = %err, "cannot save the app's shuffle token for recovery");
                }
            }
            let record = ContainerRecord {
                status: ContainerStatus {
                    container_id,
                    state: ContainerState::Running,
                    exit_code: None,
                    exit_reason: None,
                    diagnostics: String::new(),
                    started_at_ms: Some(now_ms()),
                    finished_at_ms: None,
                },
                resources,
                token_signature: request.token.signature,
                process_group: None,
                sampled: false,
                kill: None,
                kill_signal: kill_signal.clone(),
                finished: watch::Sender::new(false),
                acked: false,
                finished_at: None,
                files_removed: false,
            };
            state.containers.insert(container_id, record);
        }
        if self.context.recover {
            // Before the process exists: an agent killed between the spawn and the record
            // below would otherwise leave a container nobody knows of (`adopt.rs`).
            self.save_for_recovery(&recovery::SavedContainer {
                container_id,
                pid: recovery::STARTING,
                start_ticks: 0,
                resources,
                token_signature: String::new(),
                sampled: false,
                started_at_ms: now_ms(),
                completed: None,
            });
        }
        let shuffle_token = request.token.shuffle_token;
        self.start(container_id, resources, account, request.launch, shuffle_token, kill_signal)
            .await
    }

    /// Spawns the process of a container `launch` recorded, and supervises it.
    async fn start(
        self: Arc<Self>,
        container_id: ContainerId,
        resources: Resources,
        account: Option<Account>,
        spec: LaunchSpec,
        shuffle_token: String,
        kill_signal: Arc<Notify>,
    ) -> Result<ContainerStatus, AgentError> {
        let context = self.context.clone();
        let spawn = move || {
            let launch = launcher::Launch {
                container_id: &container_id,
                resources: &resources,
                account: account.as_ref(),
                spec: &spec,
                shuffle_token: &shuffle_token,
            };
            launcher::spawn_container(&context, &launch)
        };
        let spawned = tokio::task::spawn_blocking(spawn).await.unwrap_or_else(|join_error| {
            Err(SpawnFailure {
                exit_code: None,
                diagnostics: format!("the agent failed while starting the container: {join_error}"),
            })
        });

        match spawned {
            Ok(spawned) => {
                if let Some(reason) = &spawned.cgroup_error {
                    self.log_cgroup_failure(container_id, reason);
                }
                let (status, saved) = {
                    let mut state = self.lock();
                    let record = state
                        .containers
                        .get_mut(&container_id)
                        .expect("running containers are never removed");
                    record.process_group = Some(spawned.process.pid());
                    record.sampled = spawned.cgroup.is_none();
                    let saved = self.context.recover.then(|| recovery::SavedContainer {
                        container_id,
                        pid: spawned.process.pid(),
                        start_ticks: recovery::start_ticks(spawned.process.pid()).unwrap_or_default(),
                        resources,
                        token_signature: record.token_signature.clone(),
                        sampled: record.sampled,
                        started_at_ms: record.status.started_at_ms.unwrap_or_default(),
                        completed: None,
                    });
                    (record.status.clone(), saved)
                };
                if let Some(saved) = saved {
                    self.save_for_recovery(&saved);
                }
                tracing::debug!(container_id = %container_id, pid = spawned.process.pid(), "container started");
                self.tasks
                    .spawn(self.clone().supervise(container_id, spawned, kill_signal, resources));
                self.report_trigger.notify_one();
                Ok(status)
            }
            Err(failure) => {
                tracing::info!(container_id = %container_id, diagnostics = %failure.diagnostics, "container could not start");
                self.complete(container_id, failure.exit_code, ExitReason::Failed, failure.diagnostics);
                self.status(&container_id)
            }
        }
    }

    fn log_cgroup_failure(&self, container_id: ContainerId, reason: &str) {
        if self.cgroup_failure_logged.swap(true, Ordering::Relaxed) {
            tracing::debug!(container_id = %container_id, reason, "no cgroup for container; sampling its memory");
        } else {
            tracing::warn!(container_id = %container_id, reason, "cannot give a container its own cgroup; sampling the memory of such containers instead (logged once)");
        }
    }

    /// Records a container's end, wakes DELETE waiters and the heartbeat loop.
    fn complete(&self, container_id: ContainerId, exit_code: Option<i32>, reason: ExitReason, diagnostics: String) {
        let mut saved = None;
        {
            let mut state = self.lock();
            let Some(record) = state.containers.get_mut(&container_id) else {
                return;
            };
            debug_assert!(record.status.state == ContainerState::Running, "a container completes once");
            record.status.state = ContainerState::Complete;
            record.status.exit_code = exit_code;
            record.status.exit_reason = Some(reason);
            record.status.diagnostics = diagnostics;
            record.status.finished_at_ms = Some(now_ms());
            record.finished_at = Some(Instant::now());
            record.process_group = None;
            record.sampled = false;
            record.finished.send_replace(true);
            if self.context.recover {
                saved = Some(recovery::SavedContainer {
                    container_id,
                    pid: 0,
                    start_ticks: 0,
                    resources: record.resources,
                    token_signature: record.token_signature.clone(),
                    sampled: false,
                    started_at_ms: record.status.started_at_ms.unwrap_or_default(),
                    completed: Some(record.status.clone()),
                });
            }
        }
        // The end must reach the RM even if this agent restarts before it is acknowledged.
        if let Some(saved) = saved {
            self.save_for_recovery(&saved);
        }
        self.report_trigger.notify_one();
    }

    fn save_for_recovery(&self, saved: &recovery::SavedContainer) {
        if let Err(err) = recovery::save(&self.context.work_dir, saved) {
            tracing::warn!(container_id = %saved.container_id, error = %err, "cannot save the container for recovery: a restarted agent would not adopt it");
        }
    }

    pub(crate) fn status(&self, container_id: &ContainerId) -> Result<ContainerStatus, AgentError> {
        self.lock()
            .containers
            .get(container_id)
            .map(|record| record.status.clone())
            .ok_or_else(|| AgentError::ContainerNotFound(container_id.to_string()))
    }

    /// Every container the agent still knows, in id order.
    pub(crate) fn list(&self) -> Vec<ContainerStatus> {
        let mut statuses: Vec<ContainerStatus> = self.lock().containers.values().map(|record| record.status.clone()).collect();
        statuses.sort_by_key(|status| status.container_id);
        statuses
    }

    /// Asks a container to stop; the first reason given wins. Unknown ids are an error; a
    /// container that already ended is left as it is.
    pub(crate) fn kill(&self, container_id: &ContainerId, request: KillRequest) -> Result<(), AgentError> {
        let mut state = self.lock();
        let record = state
            .containers
            .get_mut(container_id)
            .ok_or_else(|| AgentError::ContainerNotFound(container_id.to_string()))?;
        if record.status.state == ContainerState::Complete || record.kill.is_some() {
            return Ok(());
        }
        record.kill = Some(request);
        record.kill_signal.notify_one();
        Ok(())
    }

    /// `DELETE /v1/containers/{id}`: kills with KILLED_BY_APP and waits (up to the grace period
    /// and a little) for the end, so the answer usually shows the final status.
    pub(crate) async fn stop_by_app(&self, container_id: &ContainerId) -> Result<ContainerStatus, AgentError> {
        self.kill(
            container_id,
            KillRequest {
                reason: ExitReason::KilledByApp,
                detail: "stopped at the request of its application".to_owned(),
            },
        )?;
        let finished = self.lock().containers.get(container_id).map(|record| record.finished.subscribe());
        if let Some(mut finished) = finished {
            let wait = finished.wait_for(|done| *done);
            let _ = tokio::time::timeout(CONTAINER_KILL_GRACE + Duration::from_secs(2), wait).await;
        }
        self.status(container_id)
    }

    /// Kills the containers the RM lists (KILLED_BY_RM); ids it no longer has are ignored.
    pub(crate) fn kill_by_rm(&self, container_ids: &[ContainerId]) {
        for container_id in container_ids {
            let request = KillRequest {
                reason: ExitReason::KilledByRm,
                detail: "killed by the resource manager".to_owned(),
            };
            if self.kill(container_id, request).is_err() {
                tracing::debug!(container_id = %container_id, "the RM asked to kill a container this node does not have");
            }
        }
    }

    /// The sampling monitor found the container over its limit.
    pub(crate) fn kill_over_memory(&self, container_id: ContainerId, rss_bytes: u64) {
        let limit_mb = self
            .lock()
            .containers
            .get(&container_id)
            .map_or(0, |record| record.resources.memory_mb);
        let request = KillRequest {
            reason: ExitReason::ExceededMemory,
            detail: format!(
                "container used more than its {limit_mb} MB memory limit (resident set of its processes: {} MB)",
                rss_bytes / MIB
            ),
        };
        let _ = self.kill(&container_id, request);
    }

    /// Kills every running container and waits for them to end, at most `timeout`.
    pub(crate) async fn kill_all_and_wait(&self, reason: ExitReason, detail: &str, timeout: Duration) {
        let waiters: Vec<watch::Receiver<bool>> = {
            let mut state = self.lock();
            state
                .containers
                .values_mut()
                .filter(|record| record.status.state == ContainerState::Running)
                .map(|record| {
                    if record.kill.is_none() {
                        record.kill = Some(KillRequest {
                            reason,
                            detail: detail.to_owned(),
                        });
                        record.kill_signal.notify_one();
                    }
                    record.finished.subscribe()
                })
                .collect()
        };
        let all_finished = async {
            for mut finished in waiters {
                let _ = finished.wait_for(|done| *done).await;
            }
        };
        let _ = tokio::time::timeout(timeout, all_finished).await;
    }

    /// The RM recorded these completions: stop reporting them, and forget old ones.
    pub(crate) fn acknowledge(&self, container_ids: &[ContainerId]) {
        let now = Instant::now();
        let mut state = self.lock();
        for container_id in container_ids {
            let Some(record) = state.containers.get_mut(container_id) else {
                continue;
            };
            if record.status.state == ContainerState::Complete && !record.acked {
                record.acked = true;
                state.acked_order.push_back((now, *container_id));
                if self.context.recover {
                    recovery::forget(&self.context.work_dir, container_id);
                }
            }
        }
        while let Some(&(acked_at, oldest)) = state.acked_order.front() {
            let expired = now.duration_since(acked_at) > ACKED_RETENTION;
            if !expired && state.acked_order.len() <= MAX_ACKED_RETAINED {
                break;
            }
            state.acked_order.pop_front();
            state.containers.remove(&oldest);
        }
    }

    /// Follows the RM: a decommissioning node takes no new containers.
    pub(crate) fn set_draining(&self, draining: bool) {
        let mut state = self.lock();
        if state.draining != draining {
            tracing::info!(draining, "node drain state changed by the RM");
            state.draining = draining;
        }
    }

    /// What a heartbeat or a registration reports: every running container and every
    /// completed one the RM has not acknowledged.
    pub(crate) fn reportable_statuses(&self) -> Vec<ContainerStatus> {
        self.lock()
            .containers
            .values()
            .filter(|record| record.status.state == ContainerState::Running || !record.acked)
            .map(|record| record.status.clone())
            .collect()
    }

    /// Running containers without a cgroup, for the sampling memory monitor.
    pub(crate) fn sampled_containers(&self) -> Vec<SampledContainer> {
        self.lock()
            .containers
            .iter()
            .filter(|(_, record)| record.sampled && record.kill.is_none())
            .filter_map(|(container_id, record)| {
                Some(SampledContainer {
                    container_id: *container_id,
                    process_group: record.process_group?,
                    limit_bytes: record.resources.memory_mb.saturating_mul(MIB),
                })
            })
            .collect()
    }

    /// Where a container's stdout or stderr file is (whether or not the agent remembers it).
    pub(crate) fn log_path(&self, container_id: &ContainerId, stream: &str) -> std::path::PathBuf {
        launcher::container_dir(&self.context.work_dir, container_id).join(stream)
    }
}

#[cfg(test)]
mod tests;
