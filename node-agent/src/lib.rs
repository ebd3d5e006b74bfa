//! The Spindle node agent: registers with the RM and heartbeats, serves the container API,
//! launches containers as process groups, enforces their memory limits (cgroups or RSS
//! sampling), reports how they end, deletes their directories once the log retention is over,
//! and serves apps' map output (the shuffle) until the RM says they ended. See README.md for a
//! map of the parts.

mod access;
mod account;
mod api;
mod cgroup;
mod config;
mod container_init;
mod credential;
mod error;
mod exit;
mod heartbeat;
mod launcher;
mod log_reading;
mod manager;
mod memory;
mod metrics;
mod probe;
mod recovery;
mod retention;
mod served_file;
mod shuffle;
mod spawn;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use spindle_protocol::{ExitReason, RmClient};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use access::runnable_by_others;
pub use account::{AccountError, DEFAULT_MIN_UID};
pub use config::{
    AgentConfig, AgentTls, DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_LOG_RETENTION, DEFAULT_MAX_CONNECTIONS, DEFAULT_RACK, MemoryEnforcement,
};
pub use error::AgentError;
pub use launcher::CONTAINER_KILL_GRACE;
// `spindle local` splits the machine between its agents.
pub use probe::default_capacity;

use crate::account::RunMode;
use crate::cgroup::{CgroupRoot, CpuRoot};
use crate::heartbeat::{HeartbeatEnd, Heartbeater, NodeDescription};
use crate::launcher::LaunchContext;
use crate::manager::ContainerManager;
use crate::probe::Probe;

/// Gives an agent its node credential before it starts (`spindle local`, whose agents run in the
/// RM's process): written where the agent looks for it, so it needs no join token.
pub fn save_node_credential(work_dir: &std::path::Path, credential: &spindle_protocol::NodeCredential) -> Result<(), AgentError> {
    let keyring = spindle_protocol::NodeKeyring::new(credential).map_err(|err| AgentError::Config(err.to_string()))?;
    std::fs::create_dir_all(work_dir)
        .and_then(|()| credential::save(work_dir, &keyring))
        .map_err(|err| AgentError::io(format!("cannot save the node credential in {}", work_dir.display()), err))
}

/// Serves the agent API on `listener`, registers with the RM and heartbeats until `shutdown` is
/// cancelled or the RM says shutdown (the node is decommissioned). Returns `Ok` on a clean stop.
///
/// What happens to running containers:
/// - cancelled `shutdown` (the operator stops the agent, e.g. for an upgrade): they are left
///   running, for the next start to adopt (`recover_containers`), unless
///   `kill_containers_on_stop` is on.
/// - RM shutdown: the RM has given the node up, so its remaining containers are killed
///   (KILLED_BY_RM) before `run` returns.
pub async fn run(config: AgentConfig, listener: tokio::net::TcpListener, shutdown: CancellationToken) -> Result<(), AgentError> {
    config.validate()?;
    let local_address = listener
        .local_addr()
        .map_err(|err| AgentError::io("cannot read the listener's address", err))?;
    let node_id = config::advertised_node_id(config.advertise_host.as_deref(), local_address);
    let run_mode = Arc::new(RunMode::detect(config.min_uid)?);
    let work_dir = {
        let (work_dir, spindle_bin, per_user) = (
            config.work_dir.clone(),
            config.spindle_bin.clone(),
            matches!(*run_mode, RunMode::PerUser { .. }),
        );
        tokio::task::spawn_blocking(move || access::prepare_work_dir(&work_dir, &spindle_bin, per_user))
            .await
            .map_err(|err| AgentError::Config(format!("preparing the work dir failed: {err}")))??
    };
    let (tls, container_ca) = match &config.tls {
        Some(files) => {
            let (acceptor, published) = tls::prepare(files, &work_dir)?;
            (Some(acceptor), Some(published.display().to_string()))
        }
        None => (None, None),
    };
    match *run_mode {
        RunMode::PerUser { .. } => tracing::info!(mode = %run_mode.describe(), "container accounts"),
        RunMode::SingleUser(_) => tracing::warn!(mode = %run_mode.describe(), "container accounts"),
    }

    let capacity = match config.capacity {
        Some(capacity) => capacity,
        None => tokio::task::spawn_blocking(probe::default_capacity)
            .await
            .map_err(|err| AgentError::Config(format!("the capacity probe failed: {err}")))?,
    };
    let cgroups = select_cgroups(config.memory_enforcement).await?;
    let cpu = select_cpu(cgroups.as_ref(), config.cpu_hard_cap).await;

    let tasks = TaskTracker::new();
    // Stops the server, monitor and supervisors once heartbeats have ended and the containers
    // that must die are dead: not a child of `shutdown`, or the supervisors would be gone before
    // they could kill anything.
    let stop = CancellationToken::new();
    let context = LaunchContext {
        node_id: node_id.clone(),
        rm_urls: config.rm_urls.join(","),
        work_dir: work_dir.clone(),
        spindle_bin: config.spindle_bin.clone(),
        recover: config.recover_containers,
        node_port: local_address.port(),
        cgroups: cgroups.clone(),
        cpu: cpu.clone().ok().flatten(),
        cpu_hard_cap: config.cpu_hard_cap,
        run_mode: run_mode.clone(),
        inherited_env: launcher::inherited_env(matches!(*run_mode, RunMode::PerUser { .. })),
        ca_file: container_ca,
    };
    let isolation = account::isolation(
        &run_mode,
        describe_limits(cgroups.as_ref(), config.memory_enforcement, &cpu, config.cpu_hard_cap),
    );
    let saved_keys = credential::load(&work_dir, &node_id);
    if saved_keys.is_none() && config.join_token.is_none() {
        return Err(AgentError::Config(format!(
            "no node credential for {node_id} in {} and no join token: make one with `spindle join-token` and pass \
             --join-token-file FILE (or SPINDLE_JOIN_TOKEN)",
            credential::path(&work_dir).display()
        )));
    }
    let manager = Arc::new(ContainerManager::new(
        saved_keys,
        context,
        tasks.clone(),
        stop.clone(),
        config.log_retention,
    ));

    if config.recover_containers {
        recovery::prepare(&work_dir).map_err(|err| AgentError::io(format!("cannot prepare {}/recovery", work_dir.display()), err))?;
        // Before serving and registering: the RM hears of adopted containers at registration.
        manager.adopt_saved();
    }

    let server = {
        // Every agent route answers promptly (a DELETE waits for the kill grace at most), so
        // one request timeout covers them all; file bodies stream on after it.
        let router =
            spindle_http_server::with_request_timeout(api::router(manager.clone(), capacity), spindle_http_server::DEFAULT_REQUEST_TIMEOUT);
        let limits = spindle_http_server::ServerLimits::with_max_connections(config.max_connections);
        tasks.spawn(spindle_http_server::serve(
            listener,
            router,
            limits,
            tls,
            stop.clone().cancelled_owned(),
        ))
    };
    tasks.spawn(memory::run_memory_monitor(manager.clone(), stop.clone()));
    tasks.spawn(retention::run_retention_sweeper(manager.clone(), stop.clone()));
    tracing::info!(node_id = %node_id, work_dir = %work_dir.display(), capacity = %capacity, "node agent serving");

    let heartbeater = Heartbeater::new(
        RmClient::new(&config.rm_urls, None),
        config.join_token.clone(),
        work_dir.clone(),
        manager.clone(),
        NodeDescription {
            node_id: node_id.clone(),
            address: node_id.to_string(),
            capacity,
            rack: config.rack.clone(),
            labels: config.labels.clone(),
            isolation,
        },
        Probe::new(work_dir),
        config.heartbeat_interval,
    );
    let end = heartbeater.run(&shutdown).await;
    let kill_reason = match end {
        HeartbeatEnd::ShutdownByRm => Some("the node was decommissioned"),
        _ if config.kill_containers_on_stop => Some("the node agent stopped"),
        _ => None,
    };
    if let Some(detail) = kill_reason {
        manager
            .kill_all_and_wait(ExitReason::KilledByRm, detail, CONTAINER_KILL_GRACE + Duration::from_secs(1))
            .await;
    }
    stop.cancel();
    tasks.close();
    // Requests in flight get the server's shutdown timeout (10 s), then their connections close.
    server
        .await
        .map_err(|err| AgentError::io("the API server task failed", std::io::Error::other(err)))?;
    tasks.wait().await;
    let cpu_root = cpu.ok().flatten();
    if cgroups.is_some() || cpu_root.is_some() {
        let _ = tokio::task::spawn_blocking(move || {
            cgroups.iter().for_each(CgroupRoot::remove_idle);
            cpu_root.iter().for_each(CpuRoot::remove_idle);
        })
        .await;
    }
    tracing::info!(node_id = %node_id, reason = ?end, "node agent stopped");
    Ok(())
}

/// Picks the cgroup hierarchy for memory limits, or none (sampling).
async fn select_cgroups(enforcement: MemoryEnforcement) -> Result<Option<CgroupRoot>, AgentError> {
    if enforcement == MemoryEnforcement::Sampling {
        return Ok(None);
    }
    let detected = tokio::task::spawn_blocking(CgroupRoot::detect)
        .await
        .map_err(|err| AgentError::CgroupUnavailable(err.to_string()))?;
    match (detected, enforcement) {
        (Ok(root), _) => {
            tracing::info!(version = ?root.version(), join = ?root.join_method(), "container memory limits enforced by cgroups");
            Ok(Some(root))
        }
        (Err(reason), MemoryEnforcement::Cgroup) => Err(AgentError::CgroupUnavailable(reason)),
        (Err(reason), _) => {
            tracing::info!(reason = %reason, "no writable cgroup memory hierarchy; sampling container memory instead");
            Ok(None)
        }
    }
}

/// How container limits are applied, for the node's report: the cgroup version in use, or why
/// memory is sampled instead, and how CPU is divided.
fn describe_limits(
    cgroups: Option<&CgroupRoot>,
    enforcement: MemoryEnforcement,
    cpu: &Result<Option<CpuRoot>, String>,
    hard_cap: bool,
) -> String {
    let memory = match (cgroups, enforcement) {
        (Some(root), _) => format!("memory: cgroup {:?}", root.version()).to_lowercase(),
        (None, MemoryEnforcement::Sampling) => "memory: sampled (configured)".to_owned(),
        (None, _) => "memory: sampled (no writable cgroup hierarchy)".to_owned(),
    };
    let cpu = match (cpu, cgroups.map(CgroupRoot::version)) {
        (Ok(Some(_)), _) => cgroup::cpu::describe(cgroup::CgroupVersion::V1, hard_cap),
        (Ok(None), Some(version)) => cgroup::cpu::describe(version, hard_cap),
        (Ok(None), None) => "cpu: not divided (no cgroups)".to_owned(),
        (Err(reason), _) => format!("cpu: not divided ({reason})"),
    };
    format!("{memory}; cpu: {cpu}").replace("cpu: cpu: ", "cpu: ")
}

/// The v1 CPU hierarchy containers get weights in: `Ok(None)` with v2 (weights go into the
/// memory cgroup); `Err` says why CPU cannot be divided, logged once at start.
async fn select_cpu(memory: Option<&CgroupRoot>, hard_cap: bool) -> Result<Option<CpuRoot>, String> {
    if memory.is_some_and(|root| root.version() == cgroup::CgroupVersion::V2) {
        return Ok(None);
    }
    let detected = tokio::task::spawn_blocking(move || CpuRoot::detect(hard_cap))
        .await
        .unwrap_or_else(|err| Err(err.to_string()));
    match detected {
        Ok(root) => {
            tracing::info!(hard_cap, "container CPU divided by vcores (cgroup v1 cpu.shares)");
            Ok(Some(root))
        }
        Err(reason) => {
            tracing::warn!(reason = %reason, "cannot write CPU cgroups: containers share CPU without weights");
            Err(reason)
        }
    }
}
