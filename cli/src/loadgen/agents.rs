//! The fake node agents: each registers with a join token, heartbeats on the RM's interval
//! with its usage and its containers' statuses, and runs "containers" that are only entries
//! (`containers.rs`): RUNNING from their launch, COMPLETE (exit 0) once their duration has
//! passed, or when their fake AM finishes, or when the RM says kill. Nothing is executed.
//!
//! One task per agent does what the real agent's heartbeat loop does (`node-agent`'s
//! `heartbeat.rs`): periodic heartbeats, and, unless turned off, one at once when a container
//! starts or ends (coalesced while one is in flight). Periodic heartbeats keep a fixed phase
//! per agent, spread evenly over the interval, so N agents make N/interval requests a second
//! rather than N at the top of each second.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use reqwest::header::HeaderValue;
use spindle_protocol::{
    ContainerId, ContainerStatus, ContainerToken, ExitReason, NodeHeartbeatReply, NodeHeartbeatRequest, NodeId, NodeKeyring, NodeUsage,
    RegisterNodeReply, RegisterNodeRequest, Resources, TokenError, now_ms,
};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::containers::{Acknowledged, LaunchKind, NodeContainers};
use super::ledger::Ledger;
use super::rm_http::{self, CallError, RmHttp, bearer};
use super::stats::{Count, Latency, Stats};

/// Nodes per rack: the rack names are part of every registration and of the RM's topology.
const NODES_PER_RACK: usize = 40;
/// First and longest pause between two registration tries.
const REGISTER_BACKOFF_START: Duration = Duration::from_millis(100);
const REGISTER_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Exit code of a container the RM had killed (SIGKILL, as a shell reports it).
const KILLED_EXIT_CODE: i32 = 137;

/// What every agent shares.
pub struct AgentContext {
    pub stats: Arc<Stats>,
    pub ledger: Arc<Ledger>,
    /// `Bearer join.…`: registers any node.
    pub join_bearer: HeaderValue,
    /// Heartbeat at once when a container starts or ends, as the real agent does.
    pub immediate_heartbeats: bool,
    /// Registrations in flight at once: each is a commit, and ten thousand at once would only
    /// queue for the RM's lock and time out.
    pub registrations: Semaphore,
    /// The RM's heartbeat interval, as its registration replies give it (for the summary).
    pub heartbeat_interval_ms: AtomicU64,
    /// Cancelled at the end of the run: every agent stops (without leaving the cluster).
    pub stop: CancellationToken,
}

/// The agents, by index and by node id.
pub struct Fleet {
    /// By index: the launch API routes by it.
    pub agents: Vec<Arc<Agent>>,
    /// Index by node id: the fake AMs launch grants on the node they name.
    by_node: HashMap<NodeId, usize>,
}

impl Fleet {
    /// `count` agents of `capacity` each. Node ids name the launch listener's port, so two
    /// load generators on one host (or one run after another on the same RM within its node
    /// expiry) never claim each other's nodes. With `shared_connections`, the agents share
    /// `rm`'s connection pool; else each has a connection of its own, as real agents do (the
    /// RM then holds one keep-alive connection per agent, as it would in a real cluster).
    pub fn new(count: usize, capacity: Resources, launch_address: std::net::SocketAddr, rm: &RmHttp, shared_connections: bool) -> Fleet {
        let agents: Vec<Arc<Agent>> = (0..count)
            .map(|index| {
                Arc::new(Agent {
                    index,
                    node_id: NodeId(format!("loadgen-{}-{index:05}", launch_address.port())),
                    // One listener serves every agent; the RM builds launch URLs as
                    // `http://{address}/v1/containers`, so a path prefix routes to the agent and
                    // gives each node an address of its own. A shared address would make the
                    // RM's launcher, which keeps one client per address and node, rebuild its
                    // client at nearly every AM launch: not what a real cluster costs it.
                    address: format!("{launch_address}/nodes/{index}"),
                    rack: format!("/rack-{}", index / NODES_PER_RACK),
                    capacity,
                    rm: if shared_connections { rm.clone() } else { rm.with_own_connection() },
                    state: Mutex::new(AgentState {
                        keyring: None,
                        bearer: None,
                        containers: NodeContainers::new(capacity),
                    }),
                    changed: Notify::new(),
                })
            })
            .collect();
        let by_node = agents.iter().map(|agent| (agent.node_id.clone(), agent.index)).collect();
        Fleet { agents, by_node }
    }

    pub fn by_node(&self, node_id: &NodeId) -> Option<&Arc<Agent>> {
        self.by_node.get(node_id).map(|index| &self.agents[*index])
    }
}

/// One fake node agent.
pub struct Agent {
    /// Its place in the fleet: the path of its address and the phase of its heartbeats.
    pub index: usize,
    pub node_id: NodeId,
    /// Where the RM sends its AM launches (`launch_api.rs`).
    pub address: String,
    /// Registered, so the RM's topology has racks as a real cluster's has.
    rack: String,
    /// What it registers; checked at every launch.
    capacity: Resources,
    /// The agent's client of the RM (its own connection, or the shared pool).
    rm: RmHttp,
    state: Mutex<AgentState>,
    /// A container started or ended: its loop recomputes the next end and, with immediate
    /// heartbeats, reports at once.
    changed: Notify,
}

struct AgentState {
    /// The node's keys once registered: its bearer, and the check of container tokens.
    keyring: Option<NodeKeyring>,
    bearer: Option<HeaderValue>,
    containers: NodeContainers,
}

/// Why an agent refused a launch.
#[derive(Debug, thiserror::Error)]
pub enum LaunchRefused {
    #[error("the node has not registered yet")]
    NotRegistered,
    #[error("container {0} is already on this node")]
    AlreadyRunning(ContainerId),
    #[error(transparent)]
    BadToken(#[from] TokenError),
}

/// Why the agent's loop woke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    Periodic,
    ContainerEnd,
    Changed,
}

impl Agent {
    fn lock(&self) -> MutexGuard<'_, AgentState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers (retrying until the RM accepts or the run stops), then heartbeats until the
    /// run stops or the RM says shutdown. Periodic heartbeats fall at `phase` within each
    /// interval, counted from `epoch`.
    pub async fn run(self: Arc<Self>, context: Arc<AgentContext>, epoch: Instant, phase: f64) {
        let Some(interval) = self.register(&context).await else {
            return;
        };
        let mut next_periodic = first_tick(epoch, interval, phase, Instant::now());
        loop {
            let next_end = self.lock().containers.next_end();
            let wake = tokio::select! {
                () = context.stop.cancelled() => return,
                () = tokio::time::sleep_until(next_periodic.into()) => Wake::Periodic,
                () = sleep_until_some(next_end) => Wake::ContainerEnd,
                () = self.changed.notified() => Wake::Changed,
            };
            let ended = self.lock().containers.complete_due(Instant::now());
            match wake {
                Wake::Periodic => {
                    next_periodic += interval;
                    let now = Instant::now();
                    if next_periodic <= now {
                        // Fallen behind by a whole interval: skip the missed ticks, keep the phase.
                        context.stats.inc(Count::LateHeartbeats);
                        while next_periodic <= now {
                            next_periodic += interval;
                        }
                    }
                }
                Wake::ContainerEnd if ended && context.immediate_heartbeats => {}
                Wake::Changed if context.immediate_heartbeats => {}
                // Without a report to send now: the next periodic heartbeat carries the change.
                _ => continue,
            }
            if !self.heartbeat(&context, wake != Wake::Periodic).await {
                return;
            }
        }
    }

    /// Registers with the node's keys, or the join token before it has any; returns the RM's
    /// heartbeat interval, or `None` if the run stopped first.
    async fn register(&self, context: &AgentContext) -> Option<Duration> {
        let mut backoff = REGISTER_BACKOFF_START;
        loop {
            let request = RegisterNodeRequest {
                node_id: self.node_id.clone(),
                address: self.address.clone(),
                capacity: self.capacity,
                rack: self.rack.clone(),
                labels: Vec::new(),
                containers: self.lock().containers.statuses().0,
                isolation: Default::default(),
            };
            let bearer = self.lock().bearer.clone().unwrap_or_else(|| context.join_bearer.clone());
            let registered = {
                let _permit = tokio::select! {
                    () = context.stop.cancelled() => return None,
                    permit = context.registrations.acquire() => permit.expect("the semaphore is never closed"),
                };
                tokio::select! {
                    () = context.stop.cancelled() => return None,
                    result = self.rm.post::<_, RegisterNodeReply>(rm_http::REGISTER_NODE, &bearer, &request, None) => result,
                }
            };
            match registered {
                Ok((reply, elapsed)) => {
                    context.stats.inc(Count::Registrations);
                    context.stats.record(Latency::Register, elapsed);
                    let keyring = match NodeKeyring::new(&reply.credential) {
                        Ok(keyring) => keyring,
                        Err(err) => {
                            context
                                .ledger
                                .violation(format!("{}: the RM sent an unusable credential: {err}", self.node_id));
                            return None;
                        }
                    };
                    {
                        let mut state = self.lock();
                        state.bearer = Some(bearer_of(&keyring));
                        state.keyring = Some(keyring);
                    }
                    self.apply_orders(context, &reply.acked, &reply.kill, Instant::now());
                    let interval_ms = reply.heartbeat_interval_ms.max(1);
                    context.heartbeat_interval_ms.store(interval_ms, Ordering::Relaxed);
                    return Some(Duration::from_millis(interval_ms));
                }
                Err(err) => {
                    context.stats.inc(Count::RegisterErrors);
                    tracing::warn!(node = %self.node_id, error = %err, "registration failed; trying again");
                    if err.status() == Some(403) {
                        // Keys the RM no longer takes: join again.
                        self.lock().bearer = None;
                    }
                    tokio::select! {
                        () = context.stop.cancelled() => return None,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(REGISTER_BACKOFF_MAX);
                }
            }
        }
    }

    /// Sends one heartbeat and applies its reply; `false` when the agent should stop.
    async fn heartbeat(&self, context: &AgentContext, immediate: bool) -> bool {
        let (containers, reported_running, usage, bearer) = {
            let state = self.lock();
            let (containers, running) = state.containers.statuses();
            (containers, running, self.usage(state.containers.used()), state.bearer.clone())
        };
        let Some(bearer) = bearer else {
            return self.register(context).await.is_some();
        };
        let request = NodeHeartbeatRequest {
            node_id: self.node_id.clone(),
            usage,
            healthy: true,
            health_report: String::new(),
            containers,
        };
        let result = tokio::select! {
            () = context.stop.cancelled() => return false,
            result = self.rm.post::<_, NodeHeartbeatReply>(rm_http::NODE_HEARTBEAT, &bearer, &request, None) => result,
        };
        let reply = match result {
            Ok((reply, elapsed)) => {
                context.stats.inc(Count::Heartbeats);
                if immediate {
                    context.stats.inc(Count::ImmediateHeartbeats);
                }
                context.stats.record(Latency::Heartbeat, elapsed);
                reply
            }
            Err(err) => {
                context.stats.inc(Count::HeartbeatErrors);
                tracing::debug!(node = %self.node_id, error = %err, "heartbeat failed");
                if let CallError::Status { status: 403, .. } = err {
                    self.lock().bearer = None;
                    return self.register(context).await.is_some();
                }
                // Statuses stay until acknowledged: the next heartbeat carries them again.
                return true;
            }
        };
        let now = Instant::now();
        {
            let mut state = self.lock();
            state.containers.mark_known_running(&reported_running);
            if let Some(credential) = &reply.credential
                && let Some(keyring) = state.keyring.as_mut()
            {
                match keyring.merge(credential) {
                    Ok(()) => {
                        let bearer = bearer_of(keyring);
                        state.bearer = Some(bearer);
                    }
                    Err(err) => context
                        .ledger
                        .violation(format!("{}: the RM sent unusable keys: {err}", self.node_id)),
                }
            }
        }
        self.apply_orders(context, &reply.acked, &reply.kill, now);
        if reply.shutdown {
            tracing::warn!(node = %self.node_id, "the RM says shutdown: this agent stops");
            return false;
        }
        if reply.resync {
            context.stats.inc(Count::Resyncs);
            return self.register(context).await.is_some();
        }
        true
    }

    /// Forgets acknowledged completions and kills what the RM says to kill.
    fn apply_orders(&self, context: &AgentContext, acked: &[ContainerId], kill: &[ContainerId], now: Instant) {
        let mut killed = 0;
        {
            let mut state = self.lock();
            for container_id in acked {
                match state.containers.acknowledge(container_id) {
                    Acknowledged::Task => context.ledger.acknowledged(*container_id, now),
                    Acknowledged::StillRunning => context.ledger.violation(format!(
                        "{}: the RM acknowledged the end of {container_id}, which still runs",
                        self.node_id
                    )),
                    Acknowledged::Am | Acknowledged::Unknown => {}
                }
            }
            for container_id in kill {
                if state.containers.kill(container_id, KILLED_EXIT_CODE) {
                    killed += 1;
                }
            }
        }
        if killed > 0 {
            context.stats.add(Count::KilledByRm, killed);
            self.changed.notify_one();
        }
    }

    /// Starts a container: checks its token as the real agent does, and that it fits what
    /// the node's running containers leave (a violation if not: the RM over-committed).
    pub fn launch(&self, token: &ContainerToken, kind: LaunchKind, ledger: &Ledger) -> Result<ContainerStatus, LaunchRefused> {
        let status = {
            let mut state = self.lock();
            let keyring = state.keyring.as_ref().ok_or(LaunchRefused::NotRegistered)?;
            keyring.verify_container(token, now_ms())?;
            if state.containers.contains(&token.container_id) {
                return Err(LaunchRefused::AlreadyRunning(token.container_id));
            }
            let (status, fits) = state.containers.start(token.container_id, token.resources, kind, Instant::now());
            if let Err(held) = fits {
                ledger.violation(format!(
                    "{} over-committed: launching {} ({}) makes {held} of its {}",
                    self.node_id, token.container_id, token.resources, self.capacity
                ));
            }
            status
        };
        self.changed.notify_one();
        Ok(status)
    }

    /// The fake AM in an AM container is done: the container ends with its exit code.
    pub fn am_exited(&self, container_id: &ContainerId, exit_code: i32) {
        let reason = if exit_code == 0 { ExitReason::Success } else { ExitReason::Failed };
        if self.lock().containers.complete(container_id, exit_code, reason, "") {
            self.changed.notify_one();
        }
    }

    /// Whether `rm_bearer` is the RM's, for this node, unexpired (as the real agent checks
    /// RM → agent calls).
    pub fn verifies_rm_bearer(&self, rm_bearer: &str) -> bool {
        self.lock()
            .keyring
            .as_ref()
            .is_some_and(|keyring| keyring.verify_rm(rm_bearer, now_ms()).is_some())
    }

    /// Whether the RM has heard that this container runs; `None` if it does not run here.
    pub fn known_running(&self, container_id: &ContainerId) -> Option<bool> {
        self.lock().containers.known_running(container_id)
    }

    /// A plausible usage: three quarters of what the running containers hold.
    fn usage(&self, used: Resources) -> NodeUsage {
        NodeUsage {
            cpu_percent: 75.0 * used.vcores as f32 / self.capacity.vcores.max(1) as f32,
            memory_used_mb: used.memory_mb * 3 / 4,
        }
    }
}

fn bearer_of(keyring: &NodeKeyring) -> HeaderValue {
    bearer(&keyring.bearer())
}

/// The first moment at `phase` (a fraction of `interval`) past `epoch` that is not before `now`.
fn first_tick(epoch: Instant, interval: Duration, phase: f64, now: Instant) -> Instant {
    let mut tick = epoch + interval.mul_f64(phase.clamp(0.0, 1.0));
    while tick < now {
        tick += interval;
    }
    tick
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_keep_their_phase_and_never_fall_in_the_past() {
        let epoch = Instant::now();
        let second = Duration::from_secs(1);
        assert_eq!(first_tick(epoch, second, 0.25, epoch), epoch + second / 4);
        let later = epoch + Duration::from_millis(2_600);
        assert_eq!(first_tick(epoch, second, 0.25, later), epoch + Duration::from_millis(3_250));
    }
}
