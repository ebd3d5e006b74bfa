//! Starting granted containers on their node agents: the `ContainerLauncher` side-effect trait,
//! its real implementation over HTTP, and a pool that runs many launches at once.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use spindle_protocol::{AgentClient, Allocation, ClientError, ContainerId, LaunchRequest, LaunchSpec, error_codes};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// How many launches may be in flight at once by default: enough that a burst of grants starts
/// quickly, few enough not to flood the agents.
pub const DEFAULT_MAX_LAUNCHES_IN_FLIGHT: usize = 64;

/// Why a granted container did not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchFailure {
    pub kind: LaunchFailureKind,
    /// What the agent or the network said, for diagnostics.
    pub message: String,
}

/// Whether the agent saw the launch at all: the shell AM counts only refusals as task failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchFailureKind {
    /// Never answered (connection refused, timeout), or is draining: the node is likely going away.
    AgentUnreachable,
    /// Answered with an error (bad token, bad command, …), or with an unreadable answer.
    AgentRefused,
}

/// Starts one granted container. A trait so tests can fail launches on demand.
pub trait ContainerLauncher: Send + Sync + 'static {
    fn launch(&self, allocation: &Allocation, spec: LaunchSpec) -> impl Future<Output = Result<(), LaunchFailure>> + Send;
}

/// Launches over the agents' HTTP API, keeping one client (one connection pool) per agent.
#[derive(Debug, Default)]
pub struct AgentLauncher {
    /// By node address. Launches authenticate by the container token in their body, so one
    /// client (made with the first grant's token signature as bearer) serves every grant there.
    clients: Mutex<HashMap<String, AgentClient>>,
}

impl AgentLauncher {
    pub fn new() -> Self {
        AgentLauncher::default()
    }

    fn client_for(&self, allocation: &Allocation) -> AgentClient {
        let mut clients = self.clients.lock().expect("the agent client map is never poisoned");
        clients
            .entry(allocation.node_address.clone())
            .or_insert_with(|| AgentClient::new(&allocation.node_address, Some(allocation.token.signature.clone())))
            .clone()
    }
}

impl ContainerLauncher for AgentLauncher {
    async fn launch(&self, allocation: &Allocation, spec: LaunchSpec) -> Result<(), LaunchFailure> {
        let client = self.client_for(allocation);
        let request = LaunchRequest {
            token: allocation.token.clone(),
            launch: spec,
        };
        match client.launch(&request).await {
            Ok(_status) => Ok(()),
            Err(error) => Err(launch_failure(error)),
        }
    }
}

/// How a launch failed. A draining agent (a decommission that raced the grant) says nothing
/// about the task either: like an unreachable one, the node is going away.
fn launch_failure(error: ClientError) -> LaunchFailure {
    let kind = match &error {
        ClientError::Unreachable { .. } => LaunchFailureKind::AgentUnreachable,
        error if error.code() == Some(error_codes::DRAINING) => LaunchFailureKind::AgentUnreachable,
        _ => LaunchFailureKind::AgentRefused,
    };
    LaunchFailure {
        kind,
        message: error.to_string(),
    }
}

/// The outcome of one launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchResult {
    pub container_id: ContainerId,
    pub result: Result<(), LaunchFailure>,
}

/// Runs launches concurrently, at most `max_in_flight` at once, and hands back their outcomes.
pub struct LaunchPool<L> {
    launcher: Arc<L>,
    /// Bounds the launches talking to agents at once; the rest wait for a permit.
    permits: Arc<Semaphore>,
    /// A JoinSet rather than a TaskTracker: dropping the pool (the AM exits) aborts launches
    /// still in flight, so no container starts after the AM has gone.
    launches: JoinSet<LaunchResult>,
}

impl<L: ContainerLauncher> LaunchPool<L> {
    pub fn new(launcher: L, max_in_flight: usize) -> Self {
        LaunchPool {
            launcher: Arc::new(launcher),
            permits: Arc::new(Semaphore::new(max_in_flight.max(1))),
            launches: JoinSet::new(),
        }
    }

    /// Starts launching `allocation` with `spec` in the background.
    pub fn spawn(&mut self, allocation: Allocation, spec: LaunchSpec) {
        let launcher = Arc::clone(&self.launcher);
        let permits = Arc::clone(&self.permits);
        self.launches.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("the launch semaphore is never closed");
            let result = launcher.launch(&allocation, spec).await;
            LaunchResult {
                container_id: allocation.container_id,
                result,
            }
        });
    }

    /// How many launches have not yet been collected by `finished`.
    pub fn in_flight(&self) -> usize {
        self.launches.len()
    }

    /// The next launch to end; `None` when none is in flight. Cancel-safe.
    pub async fn next_finished(&mut self) -> Option<LaunchResult> {
        loop {
            match self.launches.join_next().await? {
                Ok(result) => return Some(result),
                Err(error) => tracing::error!(%error, "a container launch task failed"),
            }
        }
    }

    /// The launches that have ended since the last call; never waits.
    pub fn finished(&mut self) -> Vec<LaunchResult> {
        let mut results = Vec::new();
        while let Some(joined) = self.launches.try_join_next() {
            match joined {
                Ok(result) => results.push(result),
                // A launch task panicked: its container stays as it is and the RM will report
                // it (EXPIRED if it never started), so the task is not lost.
                Err(error) => tracing::error!(%error, "a container launch task failed"),
            }
        }
        results
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_draining_agent_does_not_count_against_the_task() {
        let api = |status: u16, code: &str| ClientError::Api {
            status,
            code: code.to_owned(),
            message: "whatever the agent says".to_owned(),
        };
        // As the node agent answers a launch while its node is being decommissioned: by code.
        let draining = api(409, error_codes::DRAINING);
        assert_eq!(launch_failure(draining).kind, LaunchFailureKind::AgentUnreachable);
        let duplicate = api(409, error_codes::ALREADY_RUNNING);
        assert_eq!(launch_failure(duplicate).kind, LaunchFailureKind::AgentRefused);
        assert_eq!(
            launch_failure(api(400, error_codes::BAD_REQUEST)).kind,
            LaunchFailureKind::AgentRefused
        );
        let unreachable = ClientError::Unreachable {
            urls: "n1:8042".to_owned(),
            reason: "connection refused".to_owned(),
        };
        assert_eq!(launch_failure(unreachable).kind, LaunchFailureKind::AgentUnreachable);
    }
}
