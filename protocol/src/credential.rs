//! Per-node credentials: only the RM holds the cluster secret.
//!
//! - A **join token** (`join.<expires>.<mac>`, made by `spindle join-token`) lets a new agent
//!   register once, as whichever node it is, until it expires. It is a bootstrap credential.
//! - At registration the RM issues the agent a **node credential**: keys derived from the secret
//!   for that node id and a *generation* (`now / rotation`), the current one and the next. The
//!   agent proves itself with `node.<generation>.<node id>.<mac>` and checks the container tokens
//!   the RM signed for it. A key works for one node only, so a stolen credential cannot register
//!   or heartbeat as another node, and no one can sign launches for another node with it.
//! - Keys **rotate** without a restart: when an agent's heartbeat shows an older generation than
//!   the RM's, the reply carries the new keys; the RM accepts a generation for `lifetime` only.
//! - RM → agent calls carry `rm.<expires>.<epoch>.<signature>.<node id>`, an Ed25519 signature:
//!   agents hold the public key only, so no agent can call another agent, or itself, as the RM;
//!   the signed epoch lets an agent refuse an RM that has been replaced by a newer leader.

use std::collections::BTreeMap;
use std::time::Duration;

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::token::{container_message, hmac_hex, hmac_verify};
use crate::{ClusterSecret, ContainerGrant, ContainerToken, NodeId, TokenError};

const JOIN_PREFIX: &str = "join.";
const NODE_PREFIX: &str = "node.";
const RM_PREFIX: &str = "rm.";

/// How long an RM → agent bearer is valid; the RM makes a new one after half of it.
pub const RM_BEARER_VALIDITY: Duration = Duration::from_secs(3600);

/// One generation of a node's key, as it travels (hex).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerationKey {
    pub generation: u64,
    /// 32 bytes, hex.
    pub key: String,
}

impl std::fmt::Debug for GenerationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GenerationKey({}, …)", self.generation)
    }
}

/// What the RM issues to one agent: in the registration reply, and in a heartbeat reply when
/// the keys rotate. The agent keeps it in a 0600 file so it can restart without a join token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeCredential {
    pub node_id: NodeId,
    /// The generation the agent authenticates with from now on.
    pub current: u64,
    /// The current generation's key and the next one's: a container token signed just after a
    /// rotation already verifies on an agent that has not heard of the rotation yet.
    pub keys: Vec<GenerationKey>,
    /// The RM's Ed25519 public key (hex): checks RM → agent calls.
    pub rm_public_key: String,
}

/// Why the RM refused an agent's or a join token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("the bearer token is neither a join token (join.…) nor a node credential (node.…)")]
    Malformed,
    #[error("the join token is not valid for this cluster (wrong cluster secret, or altered)")]
    BadJoinToken,
    #[error("the join token expired at {expires_at_ms} (now {now_ms}): make a new one with `spindle join-token`")]
    JoinTokenExpired { expires_at_ms: u64, now_ms: u64 },
    #[error("the node credential is not valid for node {node_id} in this cluster")]
    BadNodeCredential { node_id: NodeId },
    #[error(
        "the node credential of {node_id} is of generation {generation}, older than the oldest this RM accepts ({oldest}): \
         start the agent with a new join token"
    )]
    NodeCredentialExpired { node_id: NodeId, generation: u64, oldest: u64 },
    #[error("the node credential is of generation {generation}, which does not exist yet (is a clock far ahead?)")]
    NodeCredentialFromTheFuture { generation: u64 },
}

/// An agent the RM has authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentLogin {
    /// A new agent with a join token: it may register, as any node.
    Join,
    /// An agent with its node credential: it may act as this node only.
    Node { node_id: NodeId, generation: u64 },
}

/// The RM's side: derives every node's keys from the cluster secret, so nothing per node
/// needs storing and any RM of the cluster derives the same.
#[derive(Clone)]
pub struct NodeAuthority {
    secret: ClusterSecret,
    rotation_ms: u64,
    lifetime_ms: u64,
    signing_key: std::sync::Arc<Ed25519KeyPair>,
}

impl std::fmt::Debug for NodeAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeAuthority")
            .field("rotation_ms", &self.rotation_ms)
            .field("lifetime_ms", &self.lifetime_ms)
            .finish_non_exhaustive()
    }
}

impl NodeAuthority {
    /// `rotation`: how often node keys change; `lifetime`: how long the RM still accepts a key
    /// an agent has not rotated (an agent that was down longer needs a new join token).
    pub fn new(secret: ClusterSecret, rotation: Duration, lifetime: Duration) -> Self {
        let seed = secret.derive("rm-signing-key");
        let signing_key = Ed25519KeyPair::from_seed_unchecked(&seed).expect("any 32 bytes are an Ed25519 seed");
        NodeAuthority {
            secret,
            rotation_ms: rotation.as_millis().max(1) as u64,
            lifetime_ms: lifetime.as_millis() as u64,
            signing_key: std::sync::Arc::new(signing_key),
        }
    }

    pub fn secret(&self) -> &ClusterSecret {
        &self.secret
    }

    pub fn generation_at(&self, ms: u64) -> u64 {
        ms / self.rotation_ms
    }

    fn node_key(&self, node_id: &NodeId, generation: u64) -> [u8; 32] {
        self.secret.derive(&format!("node-key|{node_id}|{generation}"))
    }

    /// The credential for `node_id` as of `now_ms`.
    pub fn credential(&self, node_id: &NodeId, now_ms: u64) -> NodeCredential {
        let current = self.generation_at(now_ms);
        NodeCredential {
            node_id: node_id.clone(),
            current,
            keys: [current, current + 1]
                .into_iter()
                .map(|generation| GenerationKey {
                    generation,
                    key: hex::encode(self.node_key(node_id, generation)),
                })
                .collect(),
            rm_public_key: hex::encode(self.signing_key.public_key().as_ref()),
        }
    }

    /// A join token valid until `expires_at_ms`.
    pub fn join_token(&self, expires_at_ms: u64) -> String {
        self.secret.join_token(expires_at_ms)
    }

    /// Who presents `bearer`: a join token's holder or one node.
    pub fn authenticate(&self, bearer: &str, now_ms: u64) -> Result<AgentLogin, CredentialError> {
        if let Some(rest) = bearer.strip_prefix(JOIN_PREFIX) {
            let (expires, mac) = rest.split_once('.').ok_or(CredentialError::Malformed)?;
            let expires_at_ms: u64 = expires.parse().map_err(|_| CredentialError::Malformed)?;
            if !self.secret.verify_mac(&join_message(expires_at_ms), mac) {
                return Err(CredentialError::BadJoinToken);
            }
            if now_ms > expires_at_ms {
                return Err(CredentialError::JoinTokenExpired { expires_at_ms, now_ms });
            }
            return Ok(AgentLogin::Join);
        }
        let (node_id, generation, mac) = parse_node_bearer(bearer).ok_or(CredentialError::Malformed)?;
        let key = self.node_key(&node_id, generation);
        if !hmac_verify(&key, &node_bearer_message(&node_id, generation), mac) {
            return Err(CredentialError::BadNodeCredential { node_id });
        }
        let oldest = self.generation_at(now_ms.saturating_sub(self.lifetime_ms));
        if generation < oldest {
            return Err(CredentialError::NodeCredentialExpired {
                node_id,
                generation,
                oldest,
            });
        }
        if generation > self.generation_at(now_ms) + 1 {
            return Err(CredentialError::NodeCredentialFromTheFuture { generation });
        }
        Ok(AgentLogin::Node { node_id, generation })
    }

    /// Signs a container grant with its node's key of the generation its deadline falls in:
    /// the agent holds that key as long as it heard from the RM within one rotation (the RM's
    /// config keeps launch deadlines shorter than half a rotation).
    pub fn sign_container(&self, grant: ContainerGrant, expires_at_ms: u64) -> ContainerToken {
        let ContainerGrant {
            container_id,
            node_id,
            resources,
            user,
        } = grant;
        let key_generation = self.generation_at(expires_at_ms);
        let mut token = ContainerToken {
            shuffle_token: self.secret.shuffle_token(container_id.app),
            container_id,
            resources,
            user,
            expires_at_ms,
            key_generation,
            signature: String::new(),
            node_id,
        };
        let key = self.node_key(&token.node_id, key_generation);
        token.signature = hmac_hex(&key, &container_message(&token));
        token
    }

    /// The bearer of RM → agent calls to `node_id` from the RM leading in `epoch`, valid
    /// until `expires_at_ms`: the agent refuses it once it has heard of a newer epoch.
    pub fn rm_bearer(&self, node_id: &NodeId, epoch: u64, expires_at_ms: u64) -> String {
        let signature = self.signing_key.sign(rm_bearer_message(node_id, epoch, expires_at_ms).as_bytes());
        format!("{RM_PREFIX}{expires_at_ms}.{epoch}.{}.{node_id}", hex::encode(signature.as_ref()))
    }
}

/// The agent's side: the keys the RM issued it, by generation.
#[derive(Clone)]
pub struct NodeKeyring {
    node_id: NodeId,
    current: u64,
    keys: BTreeMap<u64, [u8; 32]>,
    rm_public_key: Vec<u8>,
}

impl std::fmt::Debug for NodeKeyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKeyring")
            .field("node_id", &self.node_id)
            .field("current", &self.current)
            .field("generations", &self.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Why a credential from the RM (or its file) cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the node credential is unusable: {0}")]
pub struct BadCredential(String);

impl NodeKeyring {
    pub fn new(credential: &NodeCredential) -> Result<Self, BadCredential> {
        let mut keyring = NodeKeyring {
            node_id: credential.node_id.clone(),
            current: 0,
            keys: BTreeMap::new(),
            rm_public_key: Vec::new(),
        };
        keyring.merge(credential)?;
        Ok(keyring)
    }

    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    pub fn generation(&self) -> u64 {
        self.current
    }

    /// Takes newer keys from the RM. Keeps the previous generation too, for tokens signed
    /// before the rotation that are still on their way.
    pub fn merge(&mut self, credential: &NodeCredential) -> Result<(), BadCredential> {
        if credential.node_id != self.node_id {
            return Err(BadCredential(format!(
                "it is for node {}, not {}",
                credential.node_id, self.node_id
            )));
        }
        let rm_public_key = hex::decode(&credential.rm_public_key).map_err(|_| BadCredential("rm_public_key is not hex".into()))?;
        let mut keys = self.keys.clone();
        for GenerationKey { generation, key } in &credential.keys {
            let bytes: [u8; 32] = hex::decode(key)
                .ok()
                .and_then(|bytes| bytes.try_into().ok())
                .ok_or_else(|| BadCredential(format!("the key of generation {generation} is not 32 bytes of hex")))?;
            keys.insert(*generation, bytes);
        }
        if !keys.contains_key(&credential.current) {
            return Err(BadCredential(format!(
                "it has no key for its current generation {}",
                credential.current
            )));
        }
        let current = credential.current.max(self.current);
        keys.retain(|generation, _| *generation + 1 >= current);
        (self.current, self.keys, self.rm_public_key) = (current, keys, rm_public_key);
        Ok(())
    }

    /// What the agent keeps on disk: every key it holds.
    pub fn to_credential(&self) -> NodeCredential {
        NodeCredential {
            node_id: self.node_id.clone(),
            current: self.current,
            keys: self
                .keys
                .iter()
                .map(|(generation, key)| GenerationKey {
                    generation: *generation,
                    key: hex::encode(key),
                })
                .collect(),
            rm_public_key: hex::encode(&self.rm_public_key),
        }
    }

    /// The agent's bearer towards the RM.
    pub fn bearer(&self) -> String {
        let key = &self.keys[&self.current];
        let mac = hmac_hex(key, &node_bearer_message(&self.node_id, self.current));
        format!("{NODE_PREFIX}{}.{}.{mac}", self.current, self.node_id)
    }

    /// Checks a container token for this node at `now_ms`.
    pub fn verify_container(&self, token: &ContainerToken, now_ms: u64) -> Result<(), TokenError> {
        // The node first: an AM that sent a launch to the wrong agent learns that, not just
        // "bad signature" (this node has no key to check another node's tokens with).
        if token.node_id != self.node_id {
            return Err(TokenError::WrongNode {
                expected: token.node_id.clone(),
                actual: self.node_id.clone(),
            });
        }
        let signed = self
            .keys
            .get(&token.key_generation)
            .is_some_and(|key| hmac_verify(key, &container_message(token), &token.signature));
        if !signed {
            return Err(TokenError::BadSignature);
        }
        if now_ms > token.expires_at_ms {
            return Err(TokenError::Expired {
                expires_at_ms: token.expires_at_ms,
                now_ms,
            });
        }
        Ok(())
    }

    /// The epoch of the RM that signed `bearer`, if it is the RM's, for this node, unexpired.
    pub fn verify_rm(&self, bearer: &str, now_ms: u64) -> Option<u64> {
        let rest = bearer.strip_prefix(RM_PREFIX)?;
        let mut parts = rest.splitn(4, '.');
        let (expires, epoch, signature, node_id) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let (Ok(expires_at_ms), Ok(epoch), Ok(signature)) = (expires.parse::<u64>(), epoch.parse::<u64>(), hex::decode(signature)) else {
            return None;
        };
        let valid = node_id == self.node_id.0
            && now_ms <= expires_at_ms
            && UnparsedPublicKey::new(&ED25519, &self.rm_public_key)
                .verify(rm_bearer_message(&self.node_id, epoch, expires_at_ms).as_bytes(), &signature)
                .is_ok();
        valid.then_some(epoch)
    }
}

impl ClusterSecret {
    /// A join token valid until `expires_at_ms` (`NodeAuthority::authenticate` checks it).
    pub fn join_token(&self, expires_at_ms: u64) -> String {
        format!("{JOIN_PREFIX}{expires_at_ms}.{}", self.mac(&join_message(expires_at_ms)))
    }
}

fn join_message(expires_at_ms: u64) -> String {
    format!("join|{expires_at_ms}")
}

fn node_bearer_message(node_id: &NodeId, generation: u64) -> String {
    format!("agent|{node_id}|{generation}")
}

fn rm_bearer_message(node_id: &NodeId, epoch: u64, expires_at_ms: u64) -> String {
    format!("rm-to-agent|{node_id}|{epoch}|{expires_at_ms}")
}

/// `node.<generation>.<node id>.<mac>`: the node id may hold dots, the mac is hex.
fn parse_node_bearer(bearer: &str) -> Option<(NodeId, u64, &str)> {
    let rest = bearer.strip_prefix(NODE_PREFIX)?;
    let (generation, rest) = rest.split_once('.')?;
    let (node_id, mac) = rest.rsplit_once('.')?;
    Some((NodeId(node_id.to_owned()), generation.parse().ok()?, mac))
}

#[cfg(test)]
mod tests;
