use std::time::Duration;

use super::*;
use crate::{AppId, ContainerId, Resources};

const HOUR_MS: u64 = 3_600_000;

fn authority() -> NodeAuthority {
    NodeAuthority::new(
        ClusterSecret::new("s3cret-0123456789"),
        Duration::from_secs(3600),
        Duration::from_secs(24 * 3600),
    )
}

fn node(port: u16) -> NodeId {
    NodeId(format!("10.0.0.1:{port}"))
}

fn grant(node_id: &NodeId) -> ContainerGrant {
    ContainerGrant {
        container_id: ContainerId {
            app: AppId { cluster_ts: 1, seq: 2 },
            attempt: 1,
            epoch: 1,
            seq: 3,
        },
        node_id: node_id.clone(),
        resources: Resources::new(1, 128),
        user: "alice".to_owned(),
    }
}

fn keyring(authority: &NodeAuthority, node_id: &NodeId, now_ms: u64) -> NodeKeyring {
    NodeKeyring::new(&authority.credential(node_id, now_ms)).unwrap()
}

#[test]
fn a_node_credential_authenticates_its_node_only() {
    let authority = authority();
    let now = 100 * HOUR_MS + 5;
    let bearer = keyring(&authority, &node(1), now).bearer();
    assert_eq!(
        authority.authenticate(&bearer, now),
        Ok(AgentLogin::Node {
            node_id: node(1),
            generation: 100
        })
    );
    // The same mac with another node id in front of it.
    let as_other = bearer.replace("10.0.0.1:1", "10.0.0.1:2");
    assert!(matches!(
        authority.authenticate(&as_other, now),
        Err(CredentialError::BadNodeCredential { .. })
    ));
    let other_cluster = NodeAuthority::new(
        ClusterSecret::new("another-secret-0123"),
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    );
    assert!(other_cluster.authenticate(&bearer, now).is_err());
    for garbage in ["", "node.", "node.x.10.0.0.1:1.00", "Bearer", "join.", "join.1"] {
        assert!(authority.authenticate(garbage, now).is_err(), "{garbage:?}");
    }
}

#[test]
fn old_credentials_expire_and_future_ones_are_refused() {
    let authority = authority();
    let issued = 100 * HOUR_MS;
    let bearer = keyring(&authority, &node(1), issued).bearer();
    assert!(
        authority.authenticate(&bearer, issued + 24 * HOUR_MS).is_ok(),
        "still within the lifetime"
    );
    assert!(matches!(
        authority.authenticate(&bearer, issued + 26 * HOUR_MS),
        Err(CredentialError::NodeCredentialExpired { generation: 100, .. })
    ));
    assert!(matches!(
        authority.authenticate(&bearer, issued - 3 * HOUR_MS),
        Err(CredentialError::NodeCredentialFromTheFuture { generation: 100 })
    ));
}

#[test]
fn join_tokens_expire_and_cannot_be_forged() {
    let authority = authority();
    let token = authority.join_token(1_000);
    assert_eq!(authority.authenticate(&token, 999), Ok(AgentLogin::Join));
    assert!(matches!(
        authority.authenticate(&token, 1_001),
        Err(CredentialError::JoinTokenExpired { .. })
    ));
    let extended = token.replace("join.1000.", "join.9999999.");
    assert_eq!(authority.authenticate(&extended, 999), Err(CredentialError::BadJoinToken));
}

#[test]
fn container_tokens_verify_unchanged_on_their_node_only() {
    let authority = authority();
    let now = 100 * HOUR_MS;
    let token = authority.sign_container(grant(&node(1)), now + 60_000);
    let mine = keyring(&authority, &node(1), now);
    mine.verify_container(&token, now).unwrap();
    assert_eq!(token.shuffle_token, authority.secret().shuffle_token(token.container_id.app));

    let tampered: [fn(&mut ContainerToken); 5] = [
        |t| t.resources.memory_mb = 4096,
        |t| t.user = "root".to_owned(),
        |t| t.shuffle_token = "00".repeat(32),
        |t| t.expires_at_ms += 1,
        |t| t.key_generation += 1,
    ];
    for tamper in tampered {
        let mut changed = token.clone();
        tamper(&mut changed);
        assert_eq!(mine.verify_container(&changed, now), Err(TokenError::BadSignature), "{changed:?}");
    }
    assert!(matches!(
        mine.verify_container(&token, now + 60_001),
        Err(TokenError::Expired { .. })
    ));
    // Another node's keys do not verify it, nor can it sign one that its own keys would
    // accept for a node it is not.
    let theirs = keyring(&authority, &node(2), now);
    assert!(matches!(theirs.verify_container(&token, now), Err(TokenError::WrongNode { .. })));
    let mut relabelled = token.clone();
    relabelled.node_id = node(2);
    assert_eq!(theirs.verify_container(&relabelled, now), Err(TokenError::BadSignature));
}

#[test]
fn keys_rotate_with_an_overlap() {
    let authority = authority();
    let mut ring = keyring(&authority, &node(1), 100 * HOUR_MS);
    // Signed after the rotation the agent has not heard of yet: the next key is already there.
    let early = authority.sign_container(grant(&node(1)), 101 * HOUR_MS + 10);
    ring.verify_container(&early, 101 * HOUR_MS).unwrap();

    ring.merge(&authority.credential(&node(1), 101 * HOUR_MS)).unwrap();
    assert_eq!(ring.generation(), 101);
    let late = authority.sign_container(grant(&node(1)), 100 * HOUR_MS + 10);
    ring.verify_container(&late, 100 * HOUR_MS).unwrap();
    assert!(matches!(
        authority.authenticate(&ring.bearer(), 101 * HOUR_MS),
        Ok(AgentLogin::Node { generation: 101, .. })
    ));

    ring.merge(&authority.credential(&node(1), 102 * HOUR_MS)).unwrap();
    assert_eq!(
        ring.to_credential().keys.iter().map(|key| key.generation).collect::<Vec<_>>(),
        [101, 102, 103],
        "generation 100 is dropped"
    );
    // An older credential does not roll it back, and another node's is refused.
    ring.merge(&authority.credential(&node(1), 100 * HOUR_MS)).unwrap();
    assert_eq!(ring.generation(), 102);
    assert!(ring.merge(&authority.credential(&node(2), 102 * HOUR_MS)).is_err());
    let restored = NodeKeyring::new(&ring.to_credential()).unwrap();
    assert_eq!(restored.bearer(), ring.bearer());
}

#[test]
fn rm_bearers_are_checked_with_the_public_key_for_one_node() {
    let authority = authority();
    let now = 100 * HOUR_MS;
    let bearer = authority.rm_bearer(&node(1), 7, now + 1_000);
    let mine = keyring(&authority, &node(1), now);
    assert_eq!(mine.verify_rm(&bearer, now), Some(7), "valid, from the RM of epoch 7");
    assert_eq!(mine.verify_rm(&bearer, now + 1_001), None, "expired");
    assert_eq!(keyring(&authority, &node(2), now).verify_rm(&bearer, now), None, "another node's");
    let later = bearer.replace(&format!("rm.{}", now + 1_000), &format!("rm.{}", now + 9_000));
    assert_eq!(mine.verify_rm(&later, now), None, "expiry changed");
    let newer = bearer.replace(&format!("rm.{}.7.", now + 1_000), &format!("rm.{}.8.", now + 1_000));
    assert_eq!(mine.verify_rm(&newer, now), None, "epoch changed");
    // A node's own bearer towards the RM is no RM bearer.
    assert_eq!(mine.verify_rm(&mine.bearer(), now), None);
    let credential = authority.credential(&node(1), now);
    assert!(
        !serde_json::to_string(&credential)
            .unwrap()
            .contains(&hex::encode(authority.secret().derive("rm-signing-key"))),
        "the signing seed never leaves the RM"
    );
}
