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
    /// Which generation of the node's key signed the token (`crate::credential`).
    pub key_generation: u64,
    /// The app's shuffle token (`ClusterSecret::shuffle_token`): the agent gives it to the
    /// container and admits it for the app's map output on this node. Agents no longer hold
    /// the cluster secret, so they learn it here, from the RM, for the apps they run.
    pub shuffle_token: String,
    /// Hex HMAC-SHA256 under the node's key of that generation over the fields above.
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

    pub(crate) fn mac(&self, message: &str) -> String {
        hmac_hex(&self.0, message)
    }

    pub(crate) fn verify_mac(&self, message: &str, signature_hex: &str) -> bool {
        hmac_verify(&self.0, message, signature_hex)
    }

    /// The raw HMAC of `message`: the seed of a derived key.
    pub(crate) fn derive(&self, message: &str) -> [u8; 32] {
        hmac(&self.0, message)
    }

    /// The bearer token an AM attempt uses towards the RM (YARN's AMRMToken).
    pub fn am_token(&self, app_id: AppId, attempt: u32) -> String {
        self.mac(&format!("am|{app_id}|{attempt}"))
    }

    pub fn verify_am_token(&self, app_id: AppId, attempt: u32, token: &str) -> bool {
        self.verify_mac(&format!("am|{app_id}|{attempt}"), token)
    }

    /// The bearer token that reads an app's map output from any agent's shuffle endpoint. Agents
    /// give it (`SPINDLE_SHUFFLE_TOKEN`) only to the app's own containers, so one job cannot
    /// read another's intermediate data.
    pub fn shuffle_token(&self, app_id: AppId) -> String {
        self.mac(&shuffle_message(app_id))
    }
}

/// HMAC-SHA256 of `message` under `key`.
fn hmac(key: &[u8], message: &str) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message.as_bytes());
    mac.finalize().into_bytes().into()
}

/// Hex HMAC-SHA256 of `message` under `key`.
pub(crate) fn hmac_hex(key: &[u8], message: &str) -> String {
    hex::encode(hmac(key, message))
}

/// Checks a hex HMAC-SHA256 in constant time (`verify_slice`).
pub(crate) fn hmac_verify(key: &[u8], message: &str, signature_hex: &str) -> bool {
    let Ok(signature) = hex::decode(signature_hex) else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message.as_bytes());
    mac.verify_slice(&signature).is_ok()
}

/// Compares two secrets without an early exit that would tell how much of a guess was right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |difference, (x, y)| difference | (x ^ y)) == 0
}

/// A purpose prefix of its own, so a shuffle token never doubles as another kind of token.
fn shuffle_message(app_id: AppId) -> String {
    format!("shuffle|{app_id}")
}

/// Every field but the signature. The account name cannot contain `|` (checked where it is
/// configured) and the shuffle token is hex, so no two grants share a message.
pub(crate) fn container_message(token: &ContainerToken) -> String {
    let ContainerToken {
        container_id,
        node_id,
        resources,
        user,
        expires_at_ms,
        key_generation,
        shuffle_token,
        signature: _,
    } = token;
    format!(
        "container|{container_id}|{node_id}|{}|{}|{user}|{expires_at_ms}|{key_generation}|{shuffle_token}",
        resources.vcores, resources.memory_mb
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
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
        assert_eq!(token, secret.shuffle_token(app), "deterministic: the same in every container token");
        assert_ne!(token, secret.shuffle_token(other_app));
        assert_ne!(token, ClusterSecret::new("other").shuffle_token(app));
        // Distinct purposes: no other token of the same secret is a shuffle token.
        assert_ne!(token, secret.am_token(app, 1));
        assert!(!secret.verify_am_token(app, 1, &token));
    }
}
