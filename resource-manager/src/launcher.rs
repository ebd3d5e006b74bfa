//! Starting AM containers: the one container the RM launches itself (AMs launch the rest).
//! Behind a trait so sandbox tests can make launches fail on demand.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use spindle_protocol::{AgentClient, ClientError, NodeAuthority, NodeId, RM_BEARER_VALIDITY, error_codes, now_ms};

use crate::cluster::AmLaunch;

/// Why an AM launch did not happen.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The agent already has this container (a relaunch after an RM restart): nothing to do.
    #[error("the agent already runs this container")]
    AlreadyRunning,
    /// The agent could not be asked, or could not act now (unreachable, draining, token
    /// expired): not the app's doing.
    #[error("{0}")]
    Failed(String),
    /// The agent refused the launch itself (400: an account that cannot run containers on that
    /// node, a launch spec the OS cannot run): the app's doing, so it counts as a failed attempt
    /// instead of being retried as if the node had failed.
    #[error("{0}")]
    Refused(String),
}

/// Starts an AM container on its node.
pub trait AmLauncher: Send + Sync + 'static {
    fn launch(&self, launch: AmLaunch) -> Pin<Box<dyn Future<Output = Result<(), LaunchError>> + Send + '_>>;
}

/// Launches over the agent's HTTP API, reusing one connection pool per agent.
pub struct HttpAmLauncher {
    authority: NodeAuthority,
    /// The epoch of the RM term it launches for, signed into its bearers.
    epoch: u64,
    clients: Mutex<HashMap<String, CachedClient>>,
}

/// A client with an RM bearer for one node, replaced once half its validity has passed.
struct CachedClient {
    client: AgentClient,
    node_id: NodeId,
    renew_at_ms: u64,
}

impl HttpAmLauncher {
    pub fn new(authority: NodeAuthority, epoch: u64) -> Self {
        HttpAmLauncher {
            authority,
            epoch,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self, address: &str, node_id: &NodeId) -> AgentClient {
        let now = now_ms();
        let mut clients = self.clients.lock().expect("launcher client map is never poisoned");
        if let Some(cached) = clients.get(address)
            && cached.node_id == *node_id
            && now < cached.renew_at_ms
        {
            return cached.client.clone();
        }
        let validity = RM_BEARER_VALIDITY.as_millis() as u64;
        let bearer = self.authority.rm_bearer(node_id, self.epoch, now + validity);
        let cached = CachedClient {
            client: AgentClient::new(address, Some(bearer)),
            node_id: node_id.clone(),
            renew_at_ms: now + validity / 2,
        };
        let client = cached.client.clone();
        clients.insert(address.to_owned(), cached);
        client
    }
}

impl AmLauncher for HttpAmLauncher {
    fn launch(&self, launch: AmLaunch) -> Pin<Box<dyn Future<Output = Result<(), LaunchError>> + Send + '_>> {
        Box::pin(async move {
            let client = self.client(&launch.node_address, &launch.request.token.node_id);
            match client.launch(&launch.request).await {
                Ok(_) => Ok(()),
                Err(err) if err.code() == Some(error_codes::ALREADY_RUNNING) => Err(LaunchError::AlreadyRunning),
                Err(err @ ClientError::Api { status: 400, .. }) => Err(LaunchError::Refused(err.to_string())),
                Err(err) => Err(LaunchError::Failed(err.to_string())),
            }
        })
    }
}
