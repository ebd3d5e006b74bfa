//! Departed nodes (DECOMMISSIONED, LOST): forgotten `departed_node_expiry` after they departed,
//! kept as history in the store, never reloaded, and new again when they register.

use super::*;

/// When `rm` has forgotten the node at `address`: not tracked, and its stored record says so.
fn forgotten_at(rm: &Rm, address: &str) -> Option<u64> {
    let forgotten = rm
        .store
        .node(address)
        .and_then(|record| record.forgotten)
        .map(|forgotten| forgotten.at_ms);
    assert_eq!(
        forgotten.is_some(),
        rm.cluster.node_report(&node_id(address)).is_none(),
        "{address} is forgotten in the store exactly when the RM no longer tracks it"
    );
    forgotten
}

fn tracked_addresses(rm: &Rm) -> Vec<String> {
    rm.cluster.node_reports().into_iter().map(|node| node.node_id.0).collect()
}

#[test]
fn a_lost_node_is_forgotten_once_departed_longer_than_the_expiry_and_not_before() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 4, 4096, 0);
    let mut n2 = register(&mut rm, "n2:8042", 4, 4096, 0);
    // n1 falls silent; n2 heartbeats throughout.
    let mut now = 0;
    while now < 10_000 {
        now += 1_000;
        n2.heartbeat(&mut rm, now);
    }
    rm.tick(10_001);
    let lost = rm.node("n1:8042");
    assert_eq!((lost.state, lost.departed_at_ms), (NodeState::Lost, Some(10_001)));
    assert_eq!(
        rm.store.node("n1:8042").unwrap().departed_at_ms,
        Some(10_001),
        "the clock is durable"
    );

    while now < 10_000 + DEPARTED_NODE_EXPIRY_MS {
        now += 1_000;
        n2.heartbeat(&mut rm, now);
    }
    rm.tick(10_001 + DEPARTED_NODE_EXPIRY_MS);
    assert_eq!(forgotten_at(&rm, "n1:8042"), None, "exactly the expiry is not yet too long");
    rm.tick(10_002 + DEPARTED_NODE_EXPIRY_MS);
    let forgotten = 10_002 + DEPARTED_NODE_EXPIRY_MS;
    assert_eq!(forgotten_at(&rm, "n1:8042"), Some(forgotten));
    assert_eq!(tracked_addresses(&rm), ["n2:8042"]);

    // Written once more, as history: its last state, when it departed, when it was last heard.
    let [written] = &rm.last_writes.nodes[..] else {
        panic!("one node written: {:?}", rm.last_writes.nodes)
    };
    assert_eq!((written.state, written.departed_at_ms), (NodeState::Lost, Some(10_001)));
    assert_eq!(
        written.forgotten,
        Some(crate::records::ForgottenNode {
            at_ms: forgotten,
            last_heartbeat_ms: 0
        })
    );
    let history = super::super::forgotten_node_report(written);
    assert_eq!(
        (
            history.state,
            history.departed_at_ms,
            history.forgotten_at_ms,
            history.last_heartbeat_ms
        ),
        (NodeState::Lost, Some(10_001), Some(forgotten), 0)
    );
    assert_eq!((history.used, history.containers), (Resources::ZERO, 0));

    // Nothing more to write at the next tick; its agent, if it comes back, must register.
    rm.tick(forgotten + 1);
    assert!(rm.last_writes.nodes.is_empty(), "{:?}", rm.last_writes.nodes);
    assert!(n1.heartbeat(&mut rm, forgotten + 2).resync);
    assert!(rm.last_writes.is_empty(), "a heartbeat of a forgotten node changes nothing");
}

#[test]
fn a_decommissioned_node_is_forgotten_only_once_its_agent_is_silent() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 4, 4096, 0);
    rm.decommission("n1:8042", 60, false, 1_000).unwrap();
    assert_eq!(
        rm.node("n1:8042").departed_at_ms,
        Some(1_000),
        "nothing to drain: decommissioned at once"
    );

    // The agent did not hear `shutdown` (or ignores it) and heartbeats on: it is told again
    // each time, so the RM keeps the node past the expiry instead of inviting it back.
    let last_heartbeat = 5_000 + DEPARTED_NODE_EXPIRY_MS;
    for now in [DEPARTED_NODE_EXPIRY_MS / 2, 1_000 + DEPARTED_NODE_EXPIRY_MS, last_heartbeat] {
        assert!(n1.heartbeat(&mut rm, now).shutdown);
        rm.tick(now + 1);
    }
    assert_eq!(forgotten_at(&rm, "n1:8042"), None, "departed long enough, but heard");
    assert_eq!(
        rm.node("n1:8042").last_heartbeat_ms,
        last_heartbeat,
        "the report shows it is still heard"
    );
    rm.tick(last_heartbeat + NODE_EXPIRY_MS);
    assert_eq!(
        forgotten_at(&rm, "n1:8042"),
        None,
        "exactly node_expiry of silence is not yet silent"
    );
    rm.tick(last_heartbeat + NODE_EXPIRY_MS + 1);
    assert_eq!(forgotten_at(&rm, "n1:8042"), Some(last_heartbeat + NODE_EXPIRY_MS + 1));
    let record = rm.store.node("n1:8042").unwrap();
    assert_eq!(record.state, NodeState::Decommissioned);
    assert_eq!(record.forgotten.map(|forgotten| forgotten.last_heartbeat_ms), Some(last_heartbeat));
}

#[test]
fn running_unhealthy_and_decommissioning_nodes_are_never_forgotten() {
    let mut rm = cluster();
    // Containers that outlive the whole test keep `draining` DECOMMISSIONING (a week's drain).
    let mut draining = register(&mut rm, "draining:8042", 4, 4096, 0);
    let (_am, _tasks) = running_job(&mut rm, &mut draining, 1, 0);
    rm.decommission("draining:8042", 7 * 24 * 3600, false, 0).unwrap();
    let mut running = register(&mut rm, "running:8042", 4, 4096, 0);
    let mut unhealthy = register(&mut rm, "unhealthy:8042", 4, 4096, 0);
    unhealthy.healthy = false;

    let mut now = 0;
    while now < 10 * DEPARTED_NODE_EXPIRY_MS {
        now += 5_000;
        for agent in [&mut running, &mut unhealthy, &mut draining] {
            agent.heartbeat(&mut rm, now);
        }
        rm.tick(now);
    }
    let states: Vec<(String, NodeState)> = rm
        .cluster
        .node_reports()
        .into_iter()
        .map(|node| (node.node_id.0, node.state))
        .collect();
    assert_eq!(
        states,
        [
            ("draining:8042".to_owned(), NodeState::Decommissioning),
            ("running:8042".to_owned(), NodeState::Running),
            ("unhealthy:8042".to_owned(), NodeState::Unhealthy),
        ]
    );
    assert!(rm.cluster.node_reports().iter().all(|node| node.departed_at_ms.is_none()));
}

#[test]
fn a_forgotten_node_that_registers_again_is_a_new_node() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 4, 4096, 0);
    rm.decommission("n1:8042", 0, true, 0).unwrap();
    rm.tick(NODE_EXPIRY_MS + DEPARTED_NODE_EXPIRY_MS + 1);
    assert!(forgotten_at(&rm, "n1:8042").is_some());

    // The same host comes back, bigger.
    n1.capacity = Resources::new(8, 8192);
    let reply = n1.register(&mut rm, 100_000);
    assert!(reply.kill.is_empty() && reply.acked.is_empty());
    let node = rm.node("n1:8042");
    assert_eq!(
        (node.state, node.capacity, node.departed_at_ms, node.forgotten_at_ms),
        (NodeState::Running, Resources::new(8, 8192), None, None)
    );
    assert_eq!(node.last_heartbeat_ms, 100_000);
    let record = rm.store.node("n1:8042").unwrap();
    assert_eq!(
        (record.state, record.forgotten, record.departed_at_ms),
        (NodeState::Running, None, None)
    );
    assert!(!n1.heartbeat(&mut rm, 101_000).resync);

    // It takes work again, and can depart and be forgotten again.
    let (_am, tasks) = running_job(&mut rm, &mut n1, 2, 102_000);
    assert_eq!(rm.container(tasks[1]).node_id, n1.node_id);
    rm.tick(102_000 + NODE_EXPIRY_MS + 1);
    assert_eq!(rm.node("n1:8042").state, NodeState::Lost);
    rm.tick(102_000 + NODE_EXPIRY_MS + DEPARTED_NODE_EXPIRY_MS + 2);
    assert_eq!(
        forgotten_at(&rm, "n1:8042"),
        Some(102_000 + NODE_EXPIRY_MS + DEPARTED_NODE_EXPIRY_MS + 2)
    );
    // Its completed containers still name it: history, not a live reference.
    for id in tasks {
        let container = rm.container(id);
        assert_eq!((container.state, container.node_id), (ContainerState::Complete, n1.node_id.clone()));
    }
}

#[test]
fn a_restart_keeps_the_departure_clock_and_does_not_bring_forgotten_nodes_back() {
    let mut rm = cluster();
    register(&mut rm, "gone:8042", 4, 4096, 0);
    let mut stays = register(&mut rm, "stays:8042", 4, 4096, 0);
    stays.heartbeat(&mut rm, 5_000);
    rm.tick(NODE_EXPIRY_MS + 1);
    assert_eq!(rm.node("gone:8042").state, NodeState::Lost);

    rm.restart(30_000);
    assert_eq!(
        rm.node("gone:8042").departed_at_ms,
        Some(NODE_EXPIRY_MS + 1),
        "not reset by the restart"
    );
    stays.register(&mut rm, 30_000);
    stays.heartbeat(&mut rm, NODE_EXPIRY_MS + DEPARTED_NODE_EXPIRY_MS - 1_000);
    rm.tick(NODE_EXPIRY_MS + DEPARTED_NODE_EXPIRY_MS + 2);
    assert_eq!(forgotten_at(&rm, "gone:8042"), Some(NODE_EXPIRY_MS + DEPARTED_NODE_EXPIRY_MS + 2));

    rm.restart(NODE_EXPIRY_MS + DEPARTED_NODE_EXPIRY_MS + 10_000);
    assert_eq!(tracked_addresses(&rm), ["stays:8042"]);
    assert!(rm.last_writes.nodes.is_empty(), "recovery writes nothing for history");
    assert!(rm.store.node("gone:8042").unwrap().forgotten.is_some(), "still in the history");
}

#[test]
fn recovery_skips_a_forgotten_record_and_times_an_untimed_departure_from_now() {
    let stored = |name: &str, state: NodeState, forgotten: Option<u64>| NodeRecord {
        node_id: node_id(name),
        address: name.to_owned(),
        rack: "/default".to_owned(),
        labels: Vec::new(),
        capacity: Resources::new(4, 4096),
        state,
        decommission_deadline_ms: None,
        isolation: Default::default(),
        // Stored before departures were timed.
        departed_at_ms: None,
        forgotten: forgotten.map(|at_ms| crate::records::ForgottenNode {
            at_ms,
            last_heartbeat_ms: 0,
        }),
    };
    let snapshot = Snapshot {
        nodes: vec![
            stored("forgotten:8042", NodeState::Lost, Some(5_000)),
            stored("old-lost:8042", NodeState::Lost, None),
            stored("running:8042", NodeState::Running, None),
        ],
        ..Snapshot::default()
    };
    let mut cluster = Cluster::recover(settings(), 2, 40_000, snapshot);
    let tracked: Vec<(String, Option<u64>)> = cluster
        .node_reports()
        .into_iter()
        .map(|node| (node.node_id.0, node.departed_at_ms))
        .collect();
    assert_eq!(
        tracked,
        [("old-lost:8042".to_owned(), Some(40_000)), ("running:8042".to_owned(), None)]
    );
    let writes = cluster.take_writes();
    let written: Vec<(&str, Option<u64>)> = writes
        .nodes
        .iter()
        .map(|node| (node.node_id.as_str(), node.departed_at_ms))
        .collect();
    assert_eq!(written, [("old-lost:8042", Some(40_000))], "the new clock is made durable");
}

#[test]
fn departed_nodes_are_kept_for_ever_without_an_expiry() {
    let mut rm = Rm::new(Cluster::new(
        ClusterSettings {
            departed_node_expiry_ms: None,
            ..settings()
        },
        1,
        0,
    ));
    register(&mut rm, "n1:8042", 4, 4096, 0);
    rm.tick(NODE_EXPIRY_MS + 1);
    rm.tick(365 * 24 * 3600 * 1000);
    assert_eq!(rm.node("n1:8042").state, NodeState::Lost);
}

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "due to be forgotten")]
fn forgetting_a_node_with_live_containers_is_a_bug() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 4, 4096, 0);
    running_job(&mut rm, &mut n1, 1, 0);
    // Corrupted by hand: departed long ago, its containers still live.
    let node = rm.cluster.nodes.get_mut(&node_id("n1:8042")).unwrap();
    node.record.state = NodeState::Lost;
    node.record.departed_at_ms = Some(0);
    rm.cluster.forget_departed_nodes(NODE_EXPIRY_MS + DEPARTED_NODE_EXPIRY_MS + 1);
}
