//! Bodies of the suite for the history of forgotten nodes: kept, not reloaded, purged.

use spindle_protocol::{NodeId, NodeState};

use super::support::{TestDb, batch, forgotten_node, node};

pub async fn forgotten_nodes_are_history_not_reloaded(db: TestDb) {
    let store = db.connect().await;
    let epoch = store.begin_epoch().await.unwrap();
    let tracked = node("a:8042", NodeState::Lost);
    let lost = forgotten_node("b:8042", NodeState::Lost, 5_000);
    let decommissioned = forgotten_node("c:8042", NodeState::Decommissioned, 7_000);
    store
        .commit(
            epoch,
            &batch(vec![], vec![], vec![decommissioned.clone(), tracked.clone(), lost.clone()]),
        )
        .await
        .unwrap();
    assert_eq!(store.load().await.unwrap().nodes, [tracked], "a restart does not track them again");
    assert_eq!(store.forgotten_nodes().await.unwrap(), [lost.clone(), decommissioned]);
    assert_eq!(store.forgotten_node(&lost.node_id).await.unwrap(), Some(lost));
    assert_eq!(store.forgotten_node(&NodeId("a:8042".to_owned())).await.unwrap(), None, "tracked");
    assert_eq!(store.forgotten_node(&NodeId("z:8042".to_owned())).await.unwrap(), None, "unknown");
    let columns = db
        .fetch_strings("SELECT node_id || ' ' || state || ' ' || COALESCE(CAST(forgotten_at_ms AS TEXT), '-') FROM nodes ORDER BY node_id")
        .await;
    assert_eq!(columns, ["a:8042 LOST -", "b:8042 LOST 5000", "c:8042 DECOMMISSIONED 7000"]);
}

pub async fn a_forgotten_node_that_registers_again_is_tracked_again(db: TestDb) {
    let store = db.connect().await;
    let epoch = store.begin_epoch().await.unwrap();
    let forgotten = forgotten_node("b:8042", NodeState::Lost, 5_000);
    store.commit(epoch, &batch(vec![], vec![], vec![forgotten])).await.unwrap();
    let back = spindle_resource_manager::records::NodeRecord {
        departed_at_ms: None,
        ..node("b:8042", NodeState::Running)
    };
    store.commit(epoch, &batch(vec![], vec![], vec![back.clone()])).await.unwrap();
    assert_eq!(store.load().await.unwrap().nodes, [back]);
    assert!(store.forgotten_nodes().await.unwrap().is_empty());
    assert_eq!(
        store.purge_forgotten_nodes_before(u64::MAX).await.unwrap(),
        0,
        "a tracked node is never purged"
    );
}

pub async fn purging_forgotten_nodes_keeps_newer_history_and_tracked_nodes(db: TestDb) {
    let store = db.connect().await;
    let epoch = store.begin_epoch().await.unwrap();
    let old = forgotten_node("old:8042", NodeState::Lost, 1_000);
    let at_cutoff = forgotten_node("recent:8042", NodeState::Decommissioned, 5_000);
    let tracked = node("tracked:8042", NodeState::Lost);
    store
        .commit(epoch, &batch(vec![], vec![], vec![old, at_cutoff.clone(), tracked.clone()]))
        .await
        .unwrap();
    assert_eq!(store.purge_forgotten_nodes_before(5_000).await.unwrap(), 1);
    assert_eq!(
        store.forgotten_nodes().await.unwrap(),
        [at_cutoff],
        "forgotten at the cutoff, not before: kept"
    );
    assert_eq!(store.load().await.unwrap().nodes, [tracked]);
    assert_eq!(
        store.purge_forgotten_nodes_before(5_000).await.unwrap(),
        0,
        "purging again finds nothing"
    );
}
