//! Scenarios for delay scheduling and node labels, over several rounds where it matters.

use std::collections::BTreeMap;

use spindle_protocol::{AppId, NodeId, Resources};

use super::tests::{app, count_for, nodes, solve, two_queues};
use super::{CapacityScheduler, LocalitySettings};
use crate::scheduler::queues::QueueTree;
use crate::scheduler::snapshot::{ClusterSnapshot, ContainerKind, Decisions, SnapshotApp, SnapshotNode, WaitReason};

const UNIT: Resources = Resources {
    vcores: 1,
    memory_mb: 1024,
};

fn node_id(index: usize) -> NodeId {
    NodeId(format!("node-{index:05}"))
}

/// `count` nodes of 8 vcores / 8 GiB, `rack_size` per rack (`rack-0`, `rack-1`, ...), all free.
fn racked_nodes(count: usize, rack_size: usize) -> Vec<SnapshotNode> {
    let mut cluster = nodes(count, 8, 8192);
    for (index, node) in cluster.iter_mut().enumerate() {
        node.rack = format!("rack-{}", index / rack_size);
    }
    cluster
}

/// App `seq` in queue `a` wanting `count` one-unit containers, preferably on `preferred`.
fn local_app(seq: u32, count: u32, preferred: &[usize]) -> SnapshotApp {
    let mut app = app(seq, "a", &format!("user{seq}"), &[(count, 1, 1024)]);
    app.asks[0].nodes = preferred.iter().map(|&index| node_id(index)).collect();
    app
}

fn app_id(seq: u32) -> AppId {
    AppId { cluster_ts: 1, seq }
}

fn solve_round(scheduler: &mut CapacityScheduler, queues: &QueueTree, nodes: &[SnapshotNode], apps: &[SnapshotApp]) -> Decisions {
    scheduler.solve(&ClusterSnapshot {
        queues,
        nodes: nodes.to_vec().into(),
        apps: apps.to_vec(),
        now_ms: 0,
    })
}

/// Runs rounds until every app is placed or `rounds` ran: node `i` is full until round
/// `frees_at[i]` (`None`: never), apps leave once placed. Returns app seq → (round, node index).
fn run_until_placed(
    locality: LocalitySettings,
    mut cluster: Vec<SnapshotNode>,
    frees_at: &[Option<u32>],
    mut apps: Vec<SnapshotApp>,
    rounds: u32,
) -> BTreeMap<u32, (u32, usize)> {
    let queues = two_queues((100, 100), (0, 100));
    let free_headroom: Vec<Resources> = cluster.iter().map(|node| node.headroom).collect();
    let mut scheduler = CapacityScheduler::with_locality(locality);
    let mut placed = BTreeMap::new();
    for round in 0..rounds {
        for (index, node) in cluster.iter_mut().enumerate() {
            if frees_at[index].is_none_or(|frees| round < frees) {
                node.headroom = Resources::ZERO;
            } else if frees_at[index] == Some(round) {
                node.headroom = free_headroom[index];
            }
        }
        let decisions = solve_round(&mut scheduler, &queues, &cluster, &apps);
        for placement in &decisions.placements {
            let node = cluster.iter().position(|node| node.node_id == placement.node_id).unwrap();
            cluster[node].headroom -= UNIT;
            placed.insert(placement.app_id.seq, (round, node));
            assert_eq!(
                decisions.wait_reason(placement.app_id),
                None,
                "waiting for locality shows no reason"
            );
        }
        apps.retain(|app| !placed.contains_key(&app.app_id.seq));
    }
    placed
}

#[test]
fn delay_scheduling_places_at_least_90_percent_of_node_local_asks_on_their_node_when_it_frees_up_within_the_delay() {
    // 40 busy nodes in 4 racks, each wanted by one app and freeing up at some round within the
    // node delay; 10 idle nodes in their own rack could take every app at once.
    let locality = LocalitySettings {
        node_delay: 4,
        rack_delay: 4,
    };
    let mut frees_at: Vec<Option<u32>> = (0..40u32).map(|index| Some((index * 7 + 3) % locality.node_delay)).collect();
    frees_at.extend([Some(0); 10]);
    let apps: Vec<SnapshotApp> = (0..40).map(|index| local_app(index as u32 + 1, 1, &[index])).collect();
    let local_share = |locality: LocalitySettings| {
        let placed = run_until_placed(locality, racked_nodes(50, 10), &frees_at, apps.clone(), 12);
        assert_eq!(placed.len(), 40, "every app is placed in the end");
        let local = placed.iter().filter(|&(&seq, &(_, node))| node == seq as usize - 1).count();
        local as f64 / placed.len() as f64
    };
    let with_delay = local_share(locality);
    assert!(
        with_delay >= 0.9,
        "only {:.0}% node-local with delay scheduling",
        with_delay * 100.0
    );
    let without_delay = local_share(LocalitySettings {
        node_delay: 0,
        rack_delay: 0,
    });
    assert!(
        without_delay < 0.5,
        "{:.0}% node-local without a delay: the scenario does not exercise waiting",
        without_delay * 100.0
    );
}

#[test]
fn an_ask_whose_node_never_frees_goes_rack_local_after_node_delay_then_anywhere_after_node_and_rack_delay() {
    let locality = LocalitySettings {
        node_delay: 2,
        rack_delay: 3,
    };
    // rack-0: node 0 (wanted by app 1, never frees), node 1 (free).
    // rack-1: node 2 (wanted by app 2, never frees), node 3 (never frees). rack-2: node 4 (free).
    let frees_at = [None, Some(0), None, None, Some(0)];
    let apps = vec![local_app(1, 1, &[0]), local_app(2, 1, &[2])];
    let placed = run_until_placed(locality, racked_nodes(5, 2), &frees_at, apps, 10);
    assert_eq!(placed[&1], (2, 1), "app 1: rack-local once it missed node_delay opportunities");
    let (round, node) = placed[&2];
    assert_eq!(round, 5, "app 2: anywhere once it missed node_delay + rack_delay");
    assert!(node == 1 || node == 4, "only nodes 1 and 4 have room, got {node}");
}

#[test]
fn an_ask_naming_only_racks_waits_rack_delay_for_them() {
    let locality = LocalitySettings {
        node_delay: 2,
        rack_delay: 3,
    };
    // rack-0 (nodes 0, 1) frees up at round 2; rack-1 (nodes 2, 3) is free from the start.
    let frees_at = [Some(2), Some(2), Some(0), Some(0)];
    let mut wants_rack = local_app(1, 1, &[]);
    wants_rack.asks[0].racks = vec!["rack-0".to_owned()];
    let placed = run_until_placed(locality, racked_nodes(4, 2), &frees_at, vec![wants_rack], 10);
    assert_eq!(placed[&1], (2, 0), "no node phase to wait for: the rack phase starts at once");
}

#[test]
fn waiting_for_locality_does_not_block_the_apps_other_asks_or_other_apps() {
    let queues = two_queues((100, 100), (0, 100));
    let mut cluster = racked_nodes(3, 3);
    cluster[0].headroom = Resources::ZERO;
    let mut picky = app(1, "a", "ann", &[(1, 1, 1024), (2, 1, 1024)]);
    picky.asks[0].nodes = vec![node_id(0)];
    let other = app(2, "a", "ann", &[(3, 1, 1024)]);
    let decisions = solve(&queues, cluster, vec![picky, other]);
    let picky_asks: Vec<ContainerKind> = decisions
        .placements
        .iter()
        .filter(|p| p.app_id.seq == 1)
        .map(|p| p.container)
        .collect();
    assert_eq!(picky_asks, [ContainerKind::Ask(1), ContainerKind::Ask(1)]);
    assert_eq!(count_for(&decisions, 2), 3);
    assert_eq!(decisions.wait_reason(app_id(1)), None);
    assert!(decisions.placements.iter().all(|p| p.node_id != node_id(0)));
}

#[test]
fn a_node_local_placement_resets_the_count_and_apps_that_leave_drop_theirs() {
    let queues = two_queues((100, 100), (0, 100));
    let mut scheduler = CapacityScheduler::with_locality(LocalitySettings {
        node_delay: 3,
        rack_delay: 0,
    });
    let mut cluster = racked_nodes(3, 3);
    cluster[0].headroom = Resources::ZERO;
    let apps = vec![local_app(1, 2, &[0])];
    assert!(solve_round(&mut scheduler, &queues, &cluster, &apps).placements.is_empty());
    assert_eq!(scheduler.locality_misses.len(), 1, "one opportunity missed");
    // Room for one of its two containers frees up on its node: node-local, so the count resets
    // even though the second container missed again.
    cluster[0].headroom = UNIT;
    let decisions = solve_round(&mut scheduler, &queues, &cluster, &apps);
    assert_eq!(decisions.placements.len(), 1);
    assert_eq!(decisions.placements[0].node_id, node_id(0));
    assert_eq!(scheduler.locality_misses.len(), 0);
    cluster[0].headroom = Resources::ZERO;
    solve_round(&mut scheduler, &queues, &cluster, &apps);
    assert_eq!(scheduler.locality_misses.len(), 1);
    solve_round(&mut scheduler, &queues, &cluster, &[]);
    assert_eq!(scheduler.locality_misses.len(), 0, "the app left");
}

#[test]
fn a_full_cluster_is_no_missed_opportunity_and_says_so() {
    let queues = two_queues((100, 100), (0, 100));
    let mut scheduler = CapacityScheduler::with_locality(LocalitySettings {
        node_delay: 1,
        rack_delay: 0,
    });
    let mut cluster = racked_nodes(2, 2);
    for node in &mut cluster {
        node.headroom = Resources::ZERO;
    }
    let apps = vec![local_app(1, 1, &[0])];
    let decisions = solve_round(&mut scheduler, &queues, &cluster, &apps);
    assert!(matches!(decisions.wait_reason(app_id(1)), Some(WaitReason::ClusterFull { .. })));
    assert_eq!(scheduler.locality_misses.len(), 0);
}

/// Queue `a` may use `gpu`, queue `b` no label. Nodes: 0 unlabelled, 1 `gpu`, 2 `ssd`.
fn labelled_cluster() -> (QueueTree, Vec<SnapshotNode>) {
    let mut cluster = racked_nodes(3, 3);
    cluster[1].labels = vec!["gpu".to_owned()];
    cluster[2].labels = vec!["ssd".to_owned()];
    (two_queues((50, 100), (50, 100)), cluster)
}

fn nodes_used_by(decisions: &Decisions, seq: u32) -> Vec<NodeId> {
    let mut used: Vec<NodeId> = decisions
        .placements
        .iter()
        .filter(|p| p.app_id.seq == seq)
        .map(|p| p.node_id.clone())
        .collect();
    used.sort();
    used.dedup();
    used
}

#[test]
fn labelled_asks_land_only_on_their_label_and_unlabelled_asks_avoid_labels_their_queue_cannot_use() {
    let (queues, cluster) = labelled_cluster();
    let mut on_gpu = app(1, "a", "ann", &[(20, 1, 1024)]);
    on_gpu.asks[0].label = Some("gpu".to_owned());
    let anywhere_in_a = app(2, "a", "ann", &[(20, 1, 1024)]);
    let anywhere_in_b = app(3, "b", "bob", &[(20, 1, 1024)]);
    let decisions = solve(&queues, cluster, vec![on_gpu, anywhere_in_a, anywhere_in_b]);
    assert_eq!(nodes_used_by(&decisions, 1), [node_id(1)]);
    assert!(!nodes_used_by(&decisions, 2).contains(&node_id(2)), "a may not use ssd");
    assert_eq!(nodes_used_by(&decisions, 3), [node_id(0)], "b may use no label");
    assert_eq!(decisions.placements.len(), 16, "nodes 0 and 1 fill up, node 2 (ssd) takes nobody");
    let reason = decisions.wait_reason(app_id(1));
    assert!(matches!(reason, Some(WaitReason::ClusterFull { .. })), "{reason:?}");
}

#[test]
fn an_ask_for_a_label_its_queue_may_not_use_waits_with_label_not_accessible() {
    let (queues, cluster) = labelled_cluster();
    let mut wants_gpu = app(1, "b", "bob", &[(1, 1, 1024), (2, 1, 1024)]);
    wants_gpu.asks[0].label = Some("gpu".to_owned());
    let decisions = solve(&queues, cluster, vec![wants_gpu]);
    assert_eq!(count_for(&decisions, 1), 2, "its unlabelled ask still runs");
    let reason = decisions.wait_reason(app_id(1)).unwrap();
    assert_eq!(
        reason,
        &WaitReason::LabelNotAccessible {
            queue: "root.b".to_owned(),
            label: "gpu".to_owned()
        }
    );
    assert_eq!(
        reason.to_string(),
        "queue `root.b` may not use node label `gpu` (see its accessible_labels)"
    );
}

#[test]
fn an_ask_for_a_label_no_schedulable_node_carries_waits_with_label_not_present() {
    let (queues, mut cluster) = labelled_cluster();
    cluster[1].schedulable = false;
    let mut wants_gpu = app(1, "a", "ann", &[(1, 1, 1024)]);
    wants_gpu.asks[0].label = Some("gpu".to_owned());
    let decisions = solve(&queues, cluster, vec![wants_gpu]);
    assert!(decisions.placements.is_empty());
    let reason = decisions.wait_reason(app_id(1)).unwrap();
    assert_eq!(reason, &WaitReason::LabelNotPresent { label: "gpu".to_owned() });
    assert_eq!(reason.to_string(), "no schedulable node carries label `gpu`");
}

#[test]
fn the_am_avoids_nodes_of_labels_its_queue_cannot_use() {
    let (queues, mut cluster) = labelled_cluster();
    cluster[0].headroom = Resources::ZERO;
    let mut am_in_b = app(1, "b", "bob", &[]);
    am_in_b.pending_am = Some(UNIT);
    let mut am_in_a = app(2, "a", "ann", &[]);
    am_in_a.pending_am = Some(UNIT);
    let decisions = solve(&queues, cluster, vec![am_in_b, am_in_a]);
    assert_eq!(count_for(&decisions, 1), 0, "only labelled nodes have room");
    assert!(matches!(decisions.wait_reason(app_id(1)), Some(WaitReason::ClusterFull { .. })));
    assert_eq!(nodes_used_by(&decisions, 2), [node_id(1)], "a may use gpu, not ssd");
}

#[test]
fn a_preferred_node_without_the_required_label_is_not_waited_for() {
    let (queues, cluster) = labelled_cluster();
    let mut scheduler = CapacityScheduler::with_locality(LocalitySettings {
        node_delay: 5,
        rack_delay: 5,
    });
    let mut wants_gpu = app(1, "a", "ann", &[(1, 1, 1024)]);
    wants_gpu.asks[0].label = Some("gpu".to_owned());
    wants_gpu.asks[0].nodes = vec![node_id(0)];
    let decisions = solve_round(&mut scheduler, &queues, &cluster, &[wants_gpu]);
    assert_eq!(nodes_used_by(&decisions, 1), [node_id(1)]);
}
