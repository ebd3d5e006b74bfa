//! Signed tokens. The RM and agents share a cluster secret; the RM signs what it grants, agents
//! and the RM itself check the signature, so no one can run a container the RM did not grant.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use utoipa::ToSchema;

use crate::{AppId, ContainerId, NodeId, Resources};

type HmacSha256 = Hmac<Sha256>;

/// The cluster secret that RM and agents share; never sent over the wire.
#[derive(Clone)]
pub struct ClusterSecret(Vec<u8>);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(…)")
    }
}

/// A grant to run one container on one node until a deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContainerToken {
    pub container_id: ContainerId,
    pub node_id: NodeId,
    pub resources: Resources,
    /// The Unix account the container runs as, from the RM's mapping of the app's user; signed,
    /// so an AM cannot run its containers as anyone else.
    pub user: String,
    /// The agent refuses to start the container after this time (ms since the epoch).
    pub expires_at_ms: u64,
    /// Hex HMAC-SHA256 over the fields above.
    pub signature: String,
}

/// What the RM grants in a container token, before it is signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerGrant {
    pub container_id: ContainerId,
    pub node_id: NodeId,
    pub resources: Resources,
    /// The Unix account the container runs as.
    pub user: String,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the container token's signature is not valid for this cluster")]
    BadSignature,
    #[error("the container token is for node {expected}, not this node ({actual})")]
    WrongNode { expected: NodeId, actual: NodeId },
    #[error("the container token expired at {expires_at_ms} (now {now_ms})")]
    Expired { expires_at_ms: u64, now_ms: u64 },
}

impl ClusterSecret {
    /// The secret as configured (any non-empty string).
    pub fn new(secret: impl AsRef<[u8]>) -> Self {
        ClusterSecret(secret.as_ref().to_vec())
    }

    fn mac(&self, message: &str) -> String {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(message.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    fn verify_mac(&self, message: &str, signature_hex: &str) -> bool {
        let Ok(signature) = hex::decode(signature_hex) else {
            return false;
        };
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(message.as_bytes());
        // verify_slice compares in constant time.
        mac.verify_slice(&signature).is_ok()
    }

    /// Signs a container grant.
    pub fn sign_container(&self, grant: ContainerGrant, expires_at_ms: u64) -> ContainerToken {
        let ContainerGrant {
            container_id,
            node_id,
            resources,
            user,
        } = grant;
        let signature = self.mac(&container_message(&container_id, &node_id, &resources, &user, expires_at_ms));
        ContainerToken {
            container_id,
            node_id,
            resources,
            user,
            expires_at_ms,
            signature,
        }
    }

    /// Checks a container token as the agent `node` at time `now_ms`.
    pub fn verify_container(&self, token: &ContainerToken, node: &NodeId, now_ms: u64) -> Result<(), TokenError> {
        let message = container_message(
            &token.container_id,
            &token.node_id,
            &token.resources,
            &token.user,
            token.expires_at_ms,
        );
        if !self.verify_mac(&message, &token.signature) {
            return Err(TokenError::BadSignature);
        }
        if &token.node_id != node {
            return Err(TokenError::WrongNode {
                expected: token.node_id.clone(),
                actual: node.clone(),
            });
        }
        if now_ms > token.expires_at_ms {
            return Err(TokenError::Expired {
                expires_at_ms: token.expires_at_ms,
                now_ms,
            });
        }
        Ok(())
    }

    /// The bearer token an AM attempt uses towards the RM (YARN's AMRMToken).
    pub fn am_token(&self, app_id: AppId, attempt: u32) -> String {
        self.mac(&format!("am|{app_id}|{attempt}"))
    }

    pub fn verify_am_token(&self, app_id: AppId, attempt: u32, token: &str) -> bool {
        self.verify_mac(&format!("am|{app_id}|{attempt}"), token)
    }

    /// The bearer token agents present to the RM: proves knowledge of the secret without sending it.
    pub fn agent_token(&self) -> String {
        self.mac("agent")
    }

    pub fn verify_agent_token(&self, token: &str) -> bool {
        self.verify_mac("agent", token)
    }

    /// The bearer token that reads an app's map output from any agent's shuffle endpoint. Agents
    /// give it (`SPINDLE_SHUFFLE_TOKEN`) only to the app's own containers, so one job cannot
    /// read another's intermediate data.
    pub fn shuffle_token(&self, app_id: AppId) -> String {
        self.mac(&shuffle_message(app_id))
    }

    /// Checks a shuffle token for `app_id` in constant time.
    pub fn verify_shuffle_token(&self, app_id: AppId, token: &str) -> bool {
        self.verify_mac(&shuffle_message(app_id), token)
    }
}

/// Compares two secrets without an early exit that would tell how much of a guess was right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |difference, (x, y)| difference | (x ^ y)) == 0
}

/// A purpose prefix of its own, so a shuffle token never doubles as another kind of token.
fn shuffle_message(app_id: AppId) -> String {
    format!("shuffle|{app_id}")
}

/// The account name goes last but one and cannot contain `|` (checked where it is configured),
/// so no two grants share a message.
fn container_message(container_id: &ContainerId, node_id: &NodeId, resources: &Resources, user: &str, expires_at_ms: u64) -> String {
    format!(
        "container|{container_id}|{node_id}|{}|{}|{user}|{expires_at_ms}",
        resources.vcores, resources.memory_mb
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container() -> ContainerId {
        ContainerId {
            app: AppId { cluster_ts: 1, seq: 2 },
            attempt: 1,
            epoch: 1,
            seq: 3,
        }
    }

    #[test]
    fn container_tokens_verify_only_unchanged() {
        let secret = ClusterSecret::new("s3cret");
        let node = NodeId("127.0.0.1:8042".into());
        let grant = ContainerGrant {
            container_id: container(),
            node_id: node.clone(),
            resources: Resources::new(1, 128),
            user: "alice".to_owned(),
        };
        let token = secret.sign_container(grant, 1_000);
        secret.verify_container(&token, &node, 999).unwrap();

        let mut bigger = token.clone();
        bigger.resources.memory_mb = 4096;
        assert_eq!(secret.verify_container(&bigger, &node, 999), Err(TokenError::BadSignature));
        let mut as_root = token.clone();
        as_root.user = "root".to_owned();
        assert_eq!(secret.verify_container(&as_root, &node, 999), Err(TokenError::BadSignature));
        assert!(matches!(
            secret.verify_container(&token, &NodeId("other:1".into()), 999),
            Err(TokenError::WrongNode { .. })
        ));
        assert!(matches!(
            secret.verify_container(&token, &node, 1_001),
            Err(TokenError::Expired { .. })
        ));
        assert_eq!(
            ClusterSecret::new("other").verify_container(&token, &node, 999),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn am_tokens_bind_app_and_attempt() {
        let secret = ClusterSecret::new("s3cret");
        let app = AppId { cluster_ts: 1, seq: 2 };
        let token = secret.am_token(app, 1);
        assert!(secret.verify_am_token(app, 1, &token));
        assert!(!secret.verify_am_token(app, 2, &token));
        assert!(!secret.verify_am_token(app, 1, "zz"));
    }

    #[test]
    fn shuffle_tokens_bind_the_app_and_nothing_else() {
        let secret = ClusterSecret::new("s3cret");
        let app = AppId { cluster_ts: 1, seq: 2 };
        let other_app = AppId { cluster_ts: 1, seq: 3 };
        let token = secret.shuffle_token(app);
        assert_eq!(
            token,
            secret.shuffle_token(app),
            "deterministic: every agent derives the same token"
        );
        assert!(secret.verify_shuffle_token(app, &token));
        assert!(!secret.verify_shuffle_token(other_app, &token));
        assert!(!ClusterSecret::new("other").verify_shuffle_token(app, &token));
        assert!(!secret.verify_shuffle_token(app, ""));
        assert!(!secret.verify_shuffle_token(app, "not hex"));
        // Distinct purposes: no other token of the same secret is a shuffle token.
        assert!(!secret.verify_shuffle_token(app, &secret.agent_token()));
        assert!(!secret.verify_shuffle_token(app, &secret.am_token(app, 1)));
        assert!(!secret.verify_am_token(app, 1, &token));
        assert!(!secret.verify_agent_token(&token));
    }
}
