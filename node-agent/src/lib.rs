//! The Spindle node agent: registers with the RM and heartbeats, serves the container API,
//! launches containers as process groups, enforces their memory limits (cgroups or RSS
//! sampling), reports how they end, deletes their directories once the log retention is over,
//! and serves apps' map output (the shuffle) until the RM says they ended. See README.md for a
//! map of the parts.

mod api;
mod cgroup;
mod config;
mod error;
mod heartbeat;
mod launcher;
mod manager;
mod memory;
mod probe;
mod retention;
mod shuffle;

use std::sync::Arc;
use std::time::Duration;

use spindle_protocol::{ExitReason, RmClient};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{AgentConfig, DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_LOG_RETENTION, DEFAULT_RACK, MemoryEnforcement};
pub use error::AgentError;
pub use launcher::CONTAINER_KILL_GRACE;

use crate::cgroup::CgroupRoot;
use crate::heartbeat::{HeartbeatEnd, Heartbeater, NodeDescription};
use crate::launcher::LaunchContext;
use crate::manager::ContainerManager;
use crate::probe::Probe;

/// Serves the agent API on `listener`, registers with the RM and heartbeats until `shutdown` is
/// cancelled or the RM says shutdown (the node is decommissioned). Returns `Ok` on a clean stop.
///
/// What happens to running containers:
/// - cancelled `shutdown` (the operator stops the agent): they are killed before `run`
///   returns, unless `kill_containers_on_stop` is off — this agent keeps no state on disk, so
///   a restarted agent could not adopt them, and the RM re-runs their work elsewhere.
/// - RM shutdown: the RM has given the node up, so its remaining containers are killed
///   (KILLED_BY_RM) before `run` returns.
pub async fn run(config: AgentConfig, listener: tokio::net::TcpListener, shutdown: CancellationToken) -> Result<(), AgentError> {
    config.validate()?;
    let local_address = listener
        .local_addr()
        .map_err(|err| AgentError::io("cannot read the listener's address", err))?;
    let node_id = config::advertised_node_id(config.advertise_host.as_deref(), local_address);
    tokio::fs::create_dir_all(config.work_dir.join("apps")).await.map_err(|err| {
        AgentError::io(
            format!(
                "cannot create the work dir {}: check --work-dir and its permissions",
                config.work_dir.display()
            ),
            err,
        )
    })?;
    let work_dir = tokio::fs::canonicalize(&config.work_dir)
        .await
        .map_err(|err| AgentError::io("cannot resolve the work dir", err))?;

    let capacity = match config.capacity {
        Some(capacity) => capacity,
        None => tokio::task::spawn_blocking(probe::default_capacity)
            .await
            .map_err(|err| AgentError::Config(format!("the capacity probe failed: {err}")))?,
    };
    let cgroups = select_cgroups(config.memory_enforcement).await?;

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
        node_port: local_address.port(),
        cgroups: cgroups.clone(),
    };
    let manager = Arc::new(ContainerManager::new(
        config.cluster_secret.clone(),
        context,
        tasks.clone(),
        stop.clone(),
        config.log_retention,
    ));

    let server = {
        let router = api::router(manager.clone());
        let stop = stop.clone();
        tasks.spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        })
    };
    tasks.spawn(memory::run_memory_monitor(manager.clone(), stop.clone()));
    tasks.spawn(retention::run_retention_sweeper(manager.clone(), stop.clone()));
    tracing::info!(node_id = %node_id, work_dir = %work_dir.display(), capacity = %capacity, "node agent serving");

    let heartbeater = Heartbeater::new(
        RmClient::new(&config.rm_urls, Some(config.cluster_secret.agent_token())),
        manager.clone(),
        NodeDescription {
            node_id: node_id.clone(),
            address: node_id.to_string(),
            capacity,
            rack: config.rack.clone(),
            labels: config.labels.clone(),
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
    let served = server
        .await
        .map_err(|err| AgentError::io("the API server task failed", std::io::Error::other(err)))?;
    tasks.wait().await;
    if let Some(root) = cgroups {
        let _ = tokio::task::spawn_blocking(move || root.remove_idle()).await;
    }
    served.map_err(|err| AgentError::io("the API server failed", err))?;
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
