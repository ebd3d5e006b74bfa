//! Who may do what on the agent, with the keys the RM issued this node: the launch token's
//! check, the RM's bearer for this node or a container's own token on reads and stops, and the
//! keys themselves (installed at registration and rotation, the agent's bearer towards the RM).

use std::sync::RwLockReadGuard;

use spindle_protocol::{BadCredential, ContainerId, ContainerToken, NodeCredential, NodeKeyring, now_ms};

use super::ContainerManager;
use crate::AgentError;

impl ContainerManager {
    fn keys(&self) -> RwLockReadGuard<'_, Option<NodeKeyring>> {
        // A panic while holding the lock leaves plain data behind; carry on with it.
        self.keys.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Checks a launch's container token with the node's keys (none yet: 503).
    pub(super) fn check_container_token(&self, token: &ContainerToken) -> Result<(), AgentError> {
        Ok(self
            .keys()
            .as_ref()
            .ok_or(AgentError::NotRegistered)?
            .verify_container(token, now_ms())?)
    }

    /// Admits the RM's bearer for this node for anything, and a container's own token
    /// signature (its AM) for that container.
    pub(crate) fn authorize(&self, bearer: &str, container_id: Option<&ContainerId>) -> Result<(), AgentError> {
        if self.keys().as_ref().is_some_and(|keys| keys.verify_rm(bearer, now_ms())) {
            return Ok(());
        }
        let Some(container_id) = container_id else {
            return Err(AgentError::Forbidden("only the resource manager may list containers".to_owned()));
        };
        let own_token = self
            .lock()
            .containers
            .get(container_id)
            .is_some_and(|record| spindle_protocol::constant_time_eq(record.token_signature.as_bytes(), bearer.as_bytes()));
        if own_token {
            Ok(())
        } else {
            Err(AgentError::Forbidden(format!(
                "the bearer token is neither the resource manager's for this node nor the token of container {container_id}"
            )))
        }
    }

    /// The bearer towards the RM, once the node has keys.
    pub(crate) fn rm_bearer(&self) -> Option<String> {
        self.keys().as_ref().map(NodeKeyring::bearer)
    }

    /// Takes the keys the RM issued (a registration's, or a rotation's) and returns the
    /// keyring to save. Keys of another node id replace the old ones (a new registration).
    pub(crate) fn install_credential(&self, credential: &NodeCredential) -> Result<NodeKeyring, BadCredential> {
        let mut keys = self.keys.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        match keys.as_mut() {
            Some(keyring) if keyring.node_id() == &credential.node_id => keyring.merge(credential)?,
            _ => *keys = Some(NodeKeyring::new(credential)?),
        }
        Ok(keys.clone().expect("just set"))
    }
}
