//! The one owner of the RM's state. Every change goes through `mutate`: apply it to the state
//! machine, commit what it touched, and only then tell anyone (reply, wake long-polling AMs,
//! launch AM containers). Commits are grouped: the committer takes every change queued while
//! the previous transaction ran into the next one, in order, so the state lock is held only
//! while memory changes, never across the store's I/O. A reply (or a read) that follows a
//! change waits until that change is durable. A store failure stops the RM: the store is the
//! truth, and a restart recovers from it. Scheduling rounds run in a task of their own
//! (`rounds.rs`), one for all the changes that made one due since the last.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use spindle_protocol::{AllocateReply, AllocateRequest, AppId, ContainerStatus, ExitReason, NodeAuthority, QueueReport, now_ms};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::{Cluster, ClusterSettings, Outbox};
use crate::config::RmConfig;
use crate::error::ReloadError;
use crate::error::RmError;
use crate::launcher::{AmLauncher, LaunchError};
use crate::metrics::RmMetrics;
use crate::scheduler::capacity::LocalitySettings;
use crate::store::{Store, StoreError};

mod commit;
mod rounds;
mod timers;

use commit::Queued;

/// Where an applied change stands on its way to being durable (`ResourceManager::settle`).
enum Pending {
    /// Queued for the committer, which tells once it is durable and its outbox done.
    Queued(oneshot::Receiver<()>),
    /// It wrote nothing; its outbox waits for the changes queued before it (up to `after`).
    Unwritten { after: u64, outbox: Outbox },
    /// The committer is gone: the term ended.
    Stopped,
}

/// Longest an allocate call may wait for news, whatever the AM asks.
pub(crate) const MAX_ALLOCATE_WAIT: Duration = Duration::from_secs(30);
/// How long the end of a term waits for its background tasks (a commit in flight finishes or
/// fails within the store's own timeouts).
const TASKS_STOP_BOUND: Duration = Duration::from_secs(10);
/// How often timers run: node expiry, launch expiry, decommission deadlines.
pub const TICK_INTERVAL: Duration = Duration::from_millis(250);

/// Why an RM stopped acting by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fatal {
    /// The store error, for logs and `run`'s error.
    pub reason: String,
    /// The leadership was lost (fenced by a newer RM, or the database unreachable past the
    /// lease): on PostgreSQL the RM becomes a standby rather than stopping.
    pub steps_down: bool,
}

/// The resource manager's service: state, store, and the wiring between them.
pub struct ResourceManager {
    /// The state machine. Held only while a change is applied and queued (or a view read):
    /// queueing under it is what orders the commits as the changes were made.
    cluster: Arc<tokio::sync::Mutex<Cluster>>,
    /// Changes on their way to the committer.
    queue: mpsc::UnboundedSender<Queued>,
    /// The `seq` of the latest change queued (written under the state lock).
    queued: AtomicU64,
    /// The `seq` of the latest change committed and told (its outbox done).
    durable: watch::Sender<u64>,
    pub(crate) store: Store,
    /// The epoch this RM leads in: every commit carries it.
    epoch: u64,
    pub config: RmConfig,
    /// The cluster secret and the node credentials derived from it.
    pub authority: NodeAuthority,
    /// Long-polling AMs wait on their app's Notify.
    wakers: Mutex<HashMap<AppId, Arc<Notify>>>,
    launcher: Arc<dyn AmLauncher>,
    /// Cancelled on a fatal store error, and by the caller to stop the RM.
    pub shutdown: CancellationToken,
    /// Why the RM stopped itself, if it did.
    fatal: Mutex<Option<Fatal>>,
    /// The process's metrics (they outlive this term).
    pub metrics: Arc<RmMetrics>,
    /// Told when a change made a scheduling round due (`rounds.rs`).
    round_wanted: Notify,
    /// Every background task of this term (timers, SIGHUP reloads, AM launches, commits of
    /// dropped requests): awaited when the term ends, so none outlives it.
    tasks: TaskTracker,
}

impl ResourceManager {
    /// Takes over in `epoch` (just opened in the store, by `Store::try_lead`): reloads
    /// everything, and relaunches AMs that were granted but maybe not started before a crash
    /// or a failover. `shutdown` ends this RM's term.
    pub async fn start(
        config: RmConfig,
        store: Store,
        epoch: u64,
        launcher: Arc<dyn AmLauncher>,
        shutdown: CancellationToken,
        metrics: Arc<RmMetrics>,
    ) -> Result<Arc<ResourceManager>, RmError> {
        let authority = config.node_authority();
        let settings = ClusterSettings {
            authority: authority.clone(),
            node_expiry_ms: config.node_expiry.as_millis() as u64,
            departed_node_expiry_ms: config.departed_node_expiry_ms(),
            heartbeat_interval_ms: config.heartbeat_interval.as_millis() as u64,
            container_launch_expiry_ms: config.container_launch_expiry.as_millis() as u64,
            queues: config.queue_tree()?,
            preemption_grace_ms: config
                .scheduler
                .preemption
                .then_some(config.scheduler.preemption_grace.as_millis() as u64),
            locality: LocalitySettings {
                node_delay: config.scheduler.node_locality_delay,
                rack_delay: config.scheduler.rack_locality_delay,
            },
            finished_apps_in_memory: config.finished_apps_in_memory,
        };
        let snapshot = store.load_bounded(config.finished_apps_in_memory).await?;
        tracing::info!(epoch, apps = snapshot.apps.len(), containers = snapshot.containers.len(), nodes = snapshot.nodes.len(), store = %store.describe(), "recovered state");
        let mut cluster = Cluster::recover(settings, epoch, now_ms(), snapshot);
        cluster.defer_rounds();
        let outbox = cluster.take_outbox();
        let (queue, queued) = mpsc::unbounded_channel();
        let rm = Arc::new(ResourceManager {
            cluster: Arc::new(tokio::sync::Mutex::new(cluster)),
            queue,
            queued: AtomicU64::new(0),
            durable: watch::Sender::new(0),
            store,
            epoch,
            config,
            authority,
            wakers: Mutex::new(HashMap::new()),
            launcher,
            shutdown,
            fatal: Mutex::new(None),
            metrics,
            round_wanted: Notify::new(),
            tasks: TaskTracker::new(),
        });
        rm.dispatch(outbox);
        rm.tasks.spawn(Arc::clone(&rm).run_committer(queued));
        rm.tasks.spawn(Arc::clone(&rm).run_rounds());
        Ok(rm)
    }

    /// The store error that made the RM stop itself, if any.
    pub fn fatal_error(&self) -> Option<Fatal> {
        self.fatal.lock().expect("fatal slot is never poisoned").clone()
    }

    /// The epoch this RM writes in.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn store_description(&self) -> String {
        self.store.describe()
    }

    /// Applies one change, has it committed, then performs its side effects; returns once
    /// it (and every change before it) is durable.
    pub async fn mutate<T>(self: &Arc<Self>, change: impl FnOnce(&mut Cluster, u64) -> T) -> Result<T, RmError> {
        let (result, pending) = self.apply(change).await;
        self.settle(pending).await?;
        Ok(result)
    }

    /// Applies one change in memory and queues its writes for the committer (under the state
    /// lock, so the committer sees changes in the order they were made). If it made a
    /// scheduling round due, the round task is told.
    async fn apply<T>(self: &Arc<Self>, change: impl FnOnce(&mut Cluster, u64) -> T) -> (T, Pending) {
        let mut cluster = self.cluster.lock().await;
        let result = change(&mut cluster, now_ms());
        let round_due = cluster.round_due();
        let batch = cluster.take_writes();
        let outbox = cluster.take_outbox();
        let pending = if batch.is_empty() {
            Pending::Unwritten {
                after: self.queued.load(Ordering::Acquire),
                outbox,
            }
        } else {
            let seq = self.queued.fetch_add(1, Ordering::AcqRel) + 1;
            let (done, told) = oneshot::channel();
            match self.queue.send(Queued { seq, batch, outbox, done }) {
                Ok(()) => Pending::Queued(told),
                Err(_) => Pending::Stopped,
            }
        };
        drop(cluster);
        if round_due {
            self.round_wanted.notify_one();
        }
        (result, pending)
    }

    /// Waits until an applied change is durable and its outbox done.
    async fn settle(self: &Arc<Self>, pending: Pending) -> Result<(), RmError> {
        match pending {
            Pending::Queued(told) => told.await.map_err(|_| self.stopped()),
            // Nothing to commit (a heartbeat that changed nothing durable): what it tells may
            // still rest on changes queued before it, so it waits for those.
            Pending::Unwritten { after, outbox } => {
                self.wait_durable(after).await?;
                self.dispatch(outbox);
                Ok(())
            }
            Pending::Stopped => Err(self.stopped()),
        }
    }

    /// Waits until the change `seq` (and all before it) is durable and told.
    async fn wait_durable(&self, seq: u64) -> Result<(), RmError> {
        let mut durable = self.durable.subscribe();
        if *durable.borrow() >= seq {
            return Ok(());
        }
        tokio::select! {
            reached = durable.wait_for(|done| *done >= seq) => reached.map(drop).map_err(|_| self.stopped()),
            () = self.shutdown.cancelled() => Err(self.stopped()),
        }
    }

    /// Why a change cannot be confirmed: the store failed, or the term ended first.
    fn stopped(&self) -> RmError {
        let reason = self
            .fatal_error()
            .map_or_else(|| "its term ended before the change was committed".to_owned(), |fatal| fatal.reason);
        RmError::NotSaved(reason)
    }

    /// A read-only look at the state, answered once what it sees is durable (a change
    /// queued before the look has committed).
    pub async fn read<T>(&self, view: impl FnOnce(&Cluster) -> T) -> T {
        let (seen, before) = {
            let cluster = self.cluster.lock().await;
            (view(&cluster), self.queued.load(Ordering::Acquire))
        };
        // A term that ended (or failed) answers what memory holds: readers of a stopping RM
        // get no promise of durability anyway, and a caller of `read` cannot fail.
        let _ = self.wait_durable(before).await;
        seen
    }

    /// The nodes the RM tracks and, with `with_forgotten`, those it has forgotten (the store's
    /// history), by id. The state lock is held across the store read (once what memory holds
    /// is durable), so a node forgotten or registered again meanwhile is listed exactly once.
    pub async fn node_reports(&self, with_forgotten: bool) -> Result<Vec<spindle_protocol::NodeReport>, StoreError> {
        let cluster = self.cluster.lock().await;
        let mut reports = cluster.node_reports();
        if with_forgotten {
            let _ = self.wait_durable(self.queued.load(Ordering::Acquire)).await;
            let history = self.store.forgotten_nodes().await?;
            reports.extend(history.iter().map(crate::cluster::forgotten_node_report));
            reports.sort_by(|a, b| a.node_id.as_str().cmp(b.node_id.as_str()));
        }
        Ok(reports)
    }

    /// One node as the RM tracks it, else its last state if the RM has forgotten it.
    pub async fn node_report(&self, node_id: &spindle_protocol::NodeId) -> Result<Option<spindle_protocol::NodeReport>, StoreError> {
        let cluster = self.cluster.lock().await;
        if let Some(report) = cluster.node_report(node_id) {
            return Ok(Some(report));
        }
        let _ = self.wait_durable(self.queued.load(Ordering::Acquire)).await;
        let history = self.store.forgotten_node(node_id).await?;
        Ok(history.as_ref().map(crate::cluster::forgotten_node_report))
    }

    /// The state, for reads that must not wait for durability (`app_history.rs` turns store
    /// records into reports with it).
    pub(crate) fn state(&self) -> &tokio::sync::Mutex<Cluster> {
        &self.cluster
    }

    fn waker(&self, app_id: AppId) -> Arc<Notify> {
        self.wakers
            .lock()
            .expect("waker map is never poisoned")
            .entry(app_id)
            .or_default()
            .clone()
    }

    fn dispatch(self: &Arc<Self>, outbox: Outbox) {
        self.metrics.record(&outbox.observed);
        if !outbox.wake.is_empty() {
            let wakers = self.wakers.lock().expect("waker map is never poisoned");
            for app_id in &outbox.wake {
                if let Some(notify) = wakers.get(app_id) {
                    notify.notify_waiters();
                }
            }
        }
        if !outbox.evicted.is_empty() {
            let mut wakers = self.wakers.lock().expect("waker map is never poisoned");
            for app_id in &outbox.evicted {
                wakers.remove(app_id);
            }
        }
        if self.config.log_aggregation.dir.is_some() {
            for app_id in outbox.ended {
                self.tasks.spawn(crate::app_logs::aggregate(Arc::clone(self), app_id));
            }
        }
        for launch in outbox.am_launches {
            let rm = Arc::clone(self);
            self.tasks.spawn(async move {
                let container_id = launch.request.token.container_id;
                let node = launch.node_address.clone();
                // A launch cut short by the end of the term is not lost: the next active RM
                // launches every granted AM that has not reported running.
                let launched = tokio::select! {
                    launched = rm.launcher.launch(launch) => launched,
                    () = rm.shutdown.cancelled() => return,
                };
                match launched {
                    Ok(()) | Err(LaunchError::AlreadyRunning) => {}
                    Err(error) => {
                        tracing::warn!(container = %container_id, node = %node, reason = %error, "AM launch failed");
                        let diagnostics = format!("could not launch the application master on {node}: {error}");
                        // Never launched through no fault of the app (agent unreachable or
                        // draining, token expired while the RM was down): as an unlaunched grant,
                        // EXPIRED, which does not count toward `max_attempts`. Refused by the
                        // agent (its account cannot run there): FAILED, which counts.
                        let exit_reason = match error {
                            LaunchError::Refused(_) => ExitReason::Failed,
                            _ => ExitReason::Expired,
                        };
                        let status = ContainerStatus {
                            container_id,
                            state: spindle_protocol::ContainerState::Complete,
                            exit_code: None,
                            exit_reason: Some(exit_reason),
                            diagnostics,
                            started_at_ms: None,
                            finished_at_ms: None,
                        };
                        let _ = rm.mutate(|cluster, now| cluster.launch_failed(status, now)).await;
                    }
                }
            });
        }
    }

    /// Reads the config file again and swaps in its queue tree, unless that would orphan live
    /// apps. Other fields of the file need a restart and are ignored here.
    pub async fn reload_queues(self: &Arc<Self>) -> Result<QueueReport, RmError> {
        let path = self.config.path.as_ref().ok_or(ReloadError::NoConfigFile)?;
        let fresh = RmConfig::parse_file(path).map_err(ReloadError::from)?;
        let queues = fresh.queue_tree().map_err(ReloadError::from)?;
        let report = self
            .mutate(move |cluster, _| {
                cluster.replace_queues(queues)?;
                Ok::<_, ReloadError>(cluster.queue_report())
            })
            .await??;
        tracing::info!(path = %path.display(), "queues reloaded");
        Ok(report)
    }

    /// The AM protocol's allocate: record asks, then answer at once with news, or wait for
    /// news up to `wait_ms` (long poll).
    pub async fn allocate(self: &Arc<Self>, request: AllocateRequest) -> Result<AllocateReply, RmError> {
        self.metrics.allocate_calls.inc();
        let (app_id, attempt) = (request.app_id, request.attempt);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(request.wait_ms).min(MAX_ALLOCATE_WAIT);
        let notify = self.waker(app_id);
        // Enabled before looking, so a wake-up between the look and the wait is not missed.
        let mut notified = Box::pin(notify.notified());
        notified.as_mut().enable();
        let news = self.mutate(move |cluster, now| cluster.allocate(&request, now)).await??;
        if let Some(reply) = news {
            return Ok(reply);
        }
        loop {
            let woken = tokio::select! {
                result = tokio::time::timeout_at(deadline, notified.as_mut()) => result.is_ok(),
                _ = self.shutdown.cancelled() => false,
            };
            if !woken {
                return self.mutate(move |cluster, _| cluster.idle_reply(app_id, attempt)).await;
            }
            notified = Box::pin(notify.notified());
            notified.as_mut().enable();
            if let Some(reply) = self.mutate(|cluster, _| cluster.collect_news(app_id, attempt)).await? {
                return Ok(reply);
            }
        }
    }

    /// Starts the term's background tasks: the timers and SIGHUP queue reloads.
    pub fn spawn_background(self: &Arc<Self>) {
        self.tasks.spawn(Arc::clone(self).run_timers());
        self.tasks.spawn(crate::reload_on_sighup(Arc::clone(self)));
    }

    /// Waits (at most `TASKS_STOP_BOUND`) for every background task of the term, once
    /// `shutdown` has fired: none outlives it.
    pub async fn stop_background(&self) {
        self.tasks.close();
        if tokio::time::timeout(TASKS_STOP_BOUND, self.tasks.wait()).await.is_err() {
            tracing::warn!(left = self.tasks.len(), "background tasks still running after the term ended");
        }
    }
}

#[cfg(test)]
mod tests {
    use spindle_protocol::{NodeId, RegisterNodeRequest, Resources};

    use super::*;
    use crate::cluster::AmLaunch;

    struct NoLaunches;

    impl AmLauncher for NoLaunches {
        fn launch(&self, _launch: AmLaunch) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), LaunchError>> + Send + '_>> {
            Box::pin(async { Ok(()) })
        }
    }

    struct FailingLaunches;

    impl AmLauncher for FailingLaunches {
        fn launch(&self, _launch: AmLaunch) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), LaunchError>> + Send + '_>> {
            Box::pin(async { Err(LaunchError::Failed("connection refused".to_owned())) })
        }
    }

    /// An agent that refuses every launch itself (400: the account cannot run containers there).
    struct RefusingLaunches;

    impl AmLauncher for RefusingLaunches {
        fn launch(&self, _launch: AmLaunch) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), LaunchError>> + Send + '_>> {
            Box::pin(async { Err(LaunchError::Refused("no Unix account `ghost` exists on this node".to_owned())) })
        }
    }

    /// An RM on an in-memory SQLite store that launches AMs through `launcher`.
    async fn start_rm(launcher: Arc<dyn AmLauncher>) -> Arc<ResourceManager> {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        let config = RmConfig {
            cluster_secret: "test-secret-0123456789".to_owned(),
            ..RmConfig::default()
        };
        let epoch = store.begin_epoch().await.unwrap();
        ResourceManager::start(config, store, epoch, launcher, CancellationToken::new(), RmMetrics::new())
            .await
            .unwrap()
    }

    fn node_n1() -> RegisterNodeRequest {
        RegisterNodeRequest {
            node_id: NodeId("n1:8042".to_owned()),
            address: "n1:8042".to_owned(),
            capacity: Resources::new(4, 4096),
            rack: "/default".to_owned(),
            labels: Vec::new(),
            containers: Vec::new(),
            isolation: Default::default(),
        }
    }

    /// Registers node n1 and submits, as alice running as `unix_user`, a shell job with
    /// `max_attempts = 1`.
    async fn submit_one_attempt_job(rm: &Arc<ResourceManager>, unix_user: &str) -> spindle_protocol::AppId {
        let node = node_n1();
        rm.mutate(|cluster, now| cluster.register_node(node, now)).await.unwrap().unwrap();
        let spec: spindle_protocol::JobSpec = toml::from_str(
            "name = \"one\"\nkind = \"shell\"\nmax_attempts = 1\n[shell]\ncommand = [\"true\"]\ncontainers = 1\nvcores = 1\nmemory_mb = 128\n",
        )
        .unwrap();
        let caller = crate::cluster::Caller {
            user: "alice".to_owned(),
            admin: false,
            unix_user: Some(unix_user.to_owned()),
        };
        rm.mutate(|cluster, now| cluster.submit(&caller, spec, now)).await.unwrap().unwrap()
    }

    /// An AM the RM could not even start (agent unreachable, draining, token expired while the
    /// RM was down) did not fail through the app's fault: as README says, it does not count.
    #[tokio::test]
    async fn an_am_launch_the_rm_could_not_make_does_not_count_toward_max_attempts() {
        let rm = start_rm(Arc::new(FailingLaunches)).await;
        let app_id = submit_one_attempt_job(&rm, "nobody").await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let report = rm.read(|cluster| cluster.app_report(app_id)).await.unwrap();
            assert_ne!(report.state, spindle_protocol::AppState::Failed, "{}", report.diagnostics);
            if report.attempts.len() >= 2 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "no second attempt: {report:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// An agent's 400 is the app's doing: a refused launch is a failed attempt, so with
    /// `max_attempts = 1` the app FAILS at once with the agent's reason (an unreachable agent
    /// would have opened another attempt instead, see above).
    #[tokio::test]
    async fn an_am_launch_the_agent_refuses_counts_as_a_failed_attempt() {
        let rm = start_rm(Arc::new(RefusingLaunches)).await;
        let app_id = submit_one_attempt_job(&rm, "ghost").await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let report = loop {
            let report = rm.read(|cluster| cluster.app_report(app_id)).await.unwrap();
            if report.state == spindle_protocol::AppState::Failed {
                break report;
            }
            assert!(tokio::time::Instant::now() < deadline, "still not failed: {report:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(report.attempts.len(), 1, "the refused attempt counted: {report:?}");
        assert!(report.diagnostics.contains("no Unix account `ghost`"), "{}", report.diagnostics);
    }

    /// A client that hangs up makes axum drop its handler's future, wherever it is waiting.
    #[tokio::test]
    async fn a_change_is_committed_even_if_its_caller_goes_away_during_the_commit() {
        let rm = start_rm(Arc::new(NoLaunches)).await;
        let request = node_n1();
        // Polled once: the change is made and the commit has started, then the caller is gone.
        let finished = tokio::select! {
            biased;
            result = rm.mutate(|cluster, now| cluster.register_node(request, now)) => Some(result),
            () = std::future::ready(()) => None,
        };
        assert!(finished.is_none(), "the commit was still in flight");
        assert!(
            rm.read(|cluster| cluster.node_report(&NodeId("n1:8042".to_owned())))
                .await
                .is_some()
        );
        // Any later change waits for the one before it to be committed.
        rm.mutate(|_, _| ()).await.unwrap();
        assert_eq!(rm.store.load().await.unwrap().nodes.len(), 1, "memory and store agree");
        assert!(rm.fatal_error().is_none());
    }
}
