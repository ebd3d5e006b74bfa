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

    /// Checks a launch's container token with the node's keys (none yet: 503). The container
    /// id names the epoch of the RM that granted it, which the agent learns if it is newer.
    /// An older one is fine: the grant was committed before that RM told anyone, so the RM
    /// that leads now knows it.
    pub(super) fn check_container_token(&self, token: &ContainerToken) -> Result<(), AgentError> {
        self.keys()
            .as_ref()
            .ok_or(AgentError::NotRegistered)?
            .verify_container(token, now_ms())?;
        self.observe_epoch(token.container_id.epoch);
        Ok(())
    }

    /// Learns of RM epoch `epoch`; `false` if a newer one is known already (its sender has
    /// been replaced by a newer leader, and what it says must not be acted on).
    pub(crate) fn observe_epoch(&self, epoch: u64) -> bool {
        let known = self.rm_epoch.fetch_max(epoch, std::sync::atomic::Ordering::AcqRel);
        epoch >= known
    }

    /// The newest RM epoch heard of.
    pub(crate) fn rm_epoch(&self) -> u64 {
        self.rm_epoch.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Checks that `bearer`, if it is an RM bearer at all, is of the current leader: a launch
    /// sent by a replaced RM is refused even though its container token is valid.
    pub(crate) fn check_rm_epoch(&self, bearer: Option<&str>) -> Result<(), AgentError> {
        let Some(epoch) = bearer.and_then(|bearer| self.keys().as_ref()?.verify_rm(bearer, now_ms())) else {
            return Ok(());
        };
        self.fenced(epoch)
    }

    fn fenced(&self, epoch: u64) -> Result<(), AgentError> {
        if self.observe_epoch(epoch) {
            return Ok(());
        }
        Err(AgentError::StaleRm {
            epoch,
            current: self.rm_epoch(),
        })
    }

    /// Admits the RM's bearer for this node (of the current epoch) for anything, and a
    /// container's own token signature (its AM) for that container.
    pub(crate) fn authorize(&self, bearer: &str, container_id: Option<&ContainerId>) -> Result<(), AgentError> {
        let rm_epoch = self.keys().as_ref().and_then(|keys| keys.verify_rm(bearer, now_ms()));
        if let Some(epoch) = rm_epoch {
            return self.fenced(epoch);
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
