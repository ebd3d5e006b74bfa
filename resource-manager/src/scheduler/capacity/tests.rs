use std::collections::BTreeMap;
use std::time::Instant;

use proptest::prelude::*;
use spindle_protocol::{AppId, NodeId, Resources};

use super::{CapacityScheduler, LocalitySettings};
use crate::scheduler::queues::{QueueConfig, QueueTree};
use crate::scheduler::snapshot::{
    AppAsk, ClusterSnapshot, ContainerKind, ContainerPlacement, Decisions, SnapshotApp, SnapshotNode, WaitReason,
};

pub(super) fn tree(text: &str) -> QueueTree {
    let config: QueueConfig = toml::from_str(text).expect("queue config parses");
    QueueTree::from_config(&config).expect("queue config is valid")
}

/// `root` with leaves `a` and `b` at the given guaranteed / maximum percentages; `a` may use
/// nodes labelled `gpu` (a label no other test node carries unless the test says so).
pub(super) fn two_queues(a: (u32, u32), b: (u32, u32)) -> QueueTree {
    tree(&format!(
        "name = \"root\"\n\
         [[children]]\nname = \"a\"\nguaranteed_percent = {}\nmaximum_percent = {}\naccessible_labels = [\"gpu\"]\n\
         [[children]]\nname = \"b\"\nguaranteed_percent = {}\nmaximum_percent = {}\n",
        a.0, a.1, b.0, b.1
    ))
}

pub(super) fn nodes(count: usize, vcores: u32, memory_mb: u64) -> Vec<SnapshotNode> {
    (0..count)
        .map(|index| SnapshotNode {
            node_id: NodeId(format!("node-{index:05}")),
            capacity: Resources::new(vcores, memory_mb),
            headroom: Resources::new(vcores, memory_mb),
            schedulable: true,
            ..SnapshotNode::default()
        })
        .collect()
}

pub(super) fn app(seq: u32, queue: &str, user: &str, asks: &[(u32, u32, u64)]) -> SnapshotApp {
    SnapshotApp {
        app_id: AppId { cluster_ts: 1, seq },
        queue: queue.to_owned(),
        user: user.to_owned(),
        priority: 0,
        submitted_at_ms: u64::from(seq),
        used: Resources::ZERO,
        am_used: Resources::ZERO,
        pending_am: None,
        asks: asks
            .iter()
            .map(|&(count, vcores, memory_mb)| AppAsk {
                resources: Resources::new(vcores, memory_mb),
                count,
                ..AppAsk::default()
            })
            .collect(),
        containers: Vec::new(),
    }
}

pub(super) fn solve(queues: &QueueTree, nodes: Vec<SnapshotNode>, apps: Vec<SnapshotApp>) -> Decisions {
    CapacityScheduler::new().solve(&ClusterSnapshot {
        queues,
        nodes: nodes.into(),
        apps,
        now_ms: 0,
    })
}

pub(super) fn count_for(decisions: &Decisions, seq: u32) -> usize {
    decisions.placements.iter().filter(|p| p.app_id.seq == seq).count()
}

#[test]
fn two_saturated_queues_split_seventy_thirty() {
    let queues = two_queues((70, 100), (30, 100));
    let apps = vec![app(1, "a", "ann", &[(10_000, 1, 1024)]), app(2, "b", "bob", &[(10_000, 1, 1024)])];
    let decisions = solve(&queues, nodes(10, 10, 10_240), apps);
    assert_eq!(decisions.placements.len(), 100, "the cluster fills up");
    assert!(count_for(&decisions, 1).abs_diff(70) <= 1, "a got {}", count_for(&decisions, 1));
    assert!(count_for(&decisions, 2).abs_diff(30) <= 1, "b got {}", count_for(&decisions, 2));
    assert!(matches!(
        decisions.wait_reason(AppId { cluster_ts: 1, seq: 1 }),
        Some(WaitReason::ClusterFull { .. })
    ));
}

#[test]
fn an_idle_queues_capacity_is_borrowed_up_to_the_maximum() {
    let queues = two_queues((30, 60), (70, 100));
    let decisions = solve(&queues, nodes(10, 10, 10_240), vec![app(1, "a", "ann", &[(10_000, 1, 1024)])]);
    assert_eq!(count_for(&decisions, 1), 60, "30% guaranteed, 60% maximum");
    let reason = decisions.wait_reason(AppId { cluster_ts: 1, seq: 1 }).unwrap();
    assert!(
        matches!(reason, WaitReason::QueueAtMaximum { queue, .. } if queue == "root.a"),
        "{reason:?}"
    );
    assert!(reason.to_string().contains("queue `root.a` is at its maximum capacity"), "{reason}");
}

#[test]
fn a_parents_maximum_caps_its_children() {
    let queues = tree(
        "name = \"root\"\n[[children]]\nname = \"team\"\nguaranteed_percent = 50\nmaximum_percent = 50\n\
         [[children.children]]\nname = \"x\"\nguaranteed_percent = 50\n\
         [[children.children]]\nname = \"y\"\nguaranteed_percent = 50\n\
         [[children]]\nname = \"other\"\nguaranteed_percent = 50\n",
    );
    let apps = vec![app(1, "x", "ann", &[(1000, 1, 1024)]), app(2, "y", "bob", &[(1000, 1, 1024)])];
    let decisions = solve(&queues, nodes(10, 10, 10_240), apps);
    assert_eq!(count_for(&decisions, 1) + count_for(&decisions, 2), 50);
    assert!(
        matches!(decisions.wait_reason(AppId { cluster_ts: 1, seq: 2 }), Some(WaitReason::QueueAtMaximum { queue, .. }) if queue == "root.team")
    );
}

#[test]
fn drf_equalises_dominant_shares_of_cpu_and_memory_heavy_users() {
    let queues = two_queues((100, 100), (0, 100));
    // 320 vcores, 320 GiB. `cpu` already holds an eighth of the vcores: `mem` catches up first.
    let mut cpu = app(1, "a", "cpu", &[(1000, 4, 1024)]);
    cpu.used = Resources::new(40, 10 * 1024);
    let mem = app(2, "a", "mem", &[(1000, 1, 4096)]);
    let mut cluster = nodes(20, 16, 16 * 1024);
    cluster[0].headroom = Resources::new(0, 12 * 1024);
    cluster[1].headroom = Resources::new(0, 12 * 1024);
    cluster[2].headroom = Resources::new(8, 14 * 1024);
    let decisions = solve(&queues, cluster, vec![cpu, mem]);
    let first_ten: Vec<u32> = decisions.placements[..10].iter().map(|p| p.app_id.seq).collect();
    assert_eq!(first_ten, [2; 10], "mem reaches cpu's 12.5% dominant share first");
    // From there on they alternate while the cluster has room for both shapes: their dominant
    // shares (one container is 1/80 of the cluster for each) stay within one container.
    let (mut cpu_count, mut mem_count) = (10i64, 0i64);
    for placement in &decisions.placements[..40] {
        match placement.app_id.seq {
            1 => cpu_count += 1,
            _ => mem_count += 1,
        }
        if cpu_count + mem_count > 20 {
            assert!((cpu_count - mem_count).abs() <= 1, "cpu {cpu_count} vs mem {mem_count}");
        }
    }
}

#[test]
fn the_am_share_limit_blocks_an_am_and_says_so() {
    let queues = two_queues((50, 100), (50, 100));
    // Queue `a` may reach 40 vcores / 40 GiB, so AMs there may hold 4 vcores / 4 GiB.
    let mut running = app(1, "a", "ann", &[]);
    running.used = Resources::new(1, 3072);
    running.am_used = Resources::new(1, 3072);
    let mut waiting = app(2, "a", "bob", &[]);
    waiting.pending_am = Some(Resources::new(1, 3072));
    let mut elsewhere = app(3, "b", "bob", &[]);
    elsewhere.pending_am = Some(Resources::new(1, 3072));
    let decisions = solve(&queues, nodes(10, 4, 4096), vec![running, waiting, elsewhere]);
    assert_eq!(decisions.placements.len(), 1);
    assert_eq!(decisions.placements[0].container, ContainerKind::Am);
    assert_eq!(decisions.placements[0].app_id.seq, 3, "queue b has no AM yet");
    let reason = decisions.wait_reason(AppId { cluster_ts: 1, seq: 2 }).unwrap();
    assert!(matches!(reason, WaitReason::AmShareLimit { .. }), "{reason:?}");
    assert!(reason.to_string().contains("AM share limit of queue `root.a`"), "{reason}");
}

#[test]
fn the_first_am_of_an_empty_queue_starts_even_above_the_share() {
    let queues = two_queues((50, 100), (50, 100));
    let mut big_am = app(1, "a", "ann", &[(5, 1, 512)]);
    big_am.pending_am = Some(Resources::new(4, 4096));
    let decisions = solve(&queues, nodes(2, 4, 4096), vec![big_am]);
    assert_eq!(decisions.placements.len(), 1, "asks wait until the AM runs");
    assert_eq!(decisions.placements[0].container, ContainerKind::Am);
    assert_eq!(decisions.wait_reason(AppId { cluster_ts: 1, seq: 1 }), None);
}

#[test]
fn a_container_larger_than_any_node_says_so_and_does_not_block_smaller_asks() {
    let queues = two_queues((50, 100), (50, 100));
    let decisions = solve(&queues, nodes(3, 8, 8192), vec![app(1, "a", "ann", &[(1, 16, 1024), (2, 1, 1024)])]);
    assert_eq!(decisions.placements.len(), 2);
    assert!(decisions.placements.iter().all(|p| p.container == ContainerKind::Ask(1)));
    let reason = decisions.wait_reason(AppId { cluster_ts: 1, seq: 1 }).unwrap();
    assert!(matches!(reason, WaitReason::NoNodeLargeEnough { .. }), "{reason:?}");
    assert!(reason.to_string().contains("no node is large enough"), "{reason}");
}

#[test]
fn the_user_limit_caps_one_user_but_not_the_others() {
    let queues = tree("name = \"root\"\n[[children]]\nname = \"shared\"\nguaranteed_percent = 100\nuser_limit_percent = 25\n");
    let apps = vec![
        app(1, "shared", "ann", &[(1000, 1, 1024)]),
        app(2, "shared", "bob", &[(10, 1, 1024)]),
    ];
    let decisions = solve(&queues, nodes(10, 10, 10_240), apps);
    assert_eq!(count_for(&decisions, 1), 25);
    assert_eq!(count_for(&decisions, 2), 10);
    let reason = decisions.wait_reason(AppId { cluster_ts: 1, seq: 1 }).unwrap();
    assert!(matches!(reason, WaitReason::UserLimit { user, .. } if user == "ann"), "{reason:?}");
    assert_eq!(decisions.wait_reason(AppId { cluster_ts: 1, seq: 2 }), None);
}

#[test]
fn a_users_apps_go_by_priority_then_submit_time() {
    let queues = two_queues((100, 100), (0, 100));
    let mut urgent = app(3, "a", "ann", &[(2, 1, 1024)]);
    urgent.priority = 5;
    let apps = vec![app(1, "a", "ann", &[(2, 1, 1024)]), app(2, "a", "ann", &[(2, 1, 1024)]), urgent];
    let decisions = solve(&queues, nodes(1, 5, 5120), apps);
    let order: Vec<u32> = decisions.placements.iter().map(|p| p.app_id.seq).collect();
    assert_eq!(order, [3, 3, 1, 1, 2]);
    let reason = decisions.wait_reason(AppId { cluster_ts: 1, seq: 2 });
    assert!(matches!(reason, Some(WaitReason::ClusterFull { .. })), "{reason:?}");
}

#[test]
fn an_app_in_an_unknown_or_parent_queue_waits_with_a_reason() {
    let queues = two_queues((50, 100), (50, 100));
    let decisions = solve(&queues, nodes(1, 4, 4096), vec![app(1, "root", "ann", &[(1, 1, 1024)])]);
    assert!(decisions.placements.is_empty());
    let reason = decisions.wait_reason(AppId { cluster_ts: 1, seq: 1 }).unwrap();
    assert_eq!(reason.to_string(), "queue `root` is not a leaf queue of the current configuration");
}

#[test]
fn unschedulable_nodes_take_nothing_and_the_cursor_rotates_between_rounds() {
    let queues = two_queues((50, 100), (50, 100));
    let mut cluster = nodes(3, 4, 4096);
    cluster[1].schedulable = false;
    let mut scheduler = CapacityScheduler::new();
    let mut on = Vec::new();
    for seq in 1..=3 {
        let snapshot = ClusterSnapshot {
            queues: &queues,
            nodes: cluster.clone().into(),
            apps: vec![app(seq, "a", "ann", &[(1, 1, 1024)])],
            now_ms: u64::from(seq),
        };
        on.extend(scheduler.solve(&snapshot).placements.into_iter().map(|p| p.node_id.0));
    }
    assert_eq!(on, ["node-00000", "node-00002", "node-00000"]);
}

/// What the proptest varies per node: vcores, memory, schedulable, label (0: none, 1: `gpu`,
/// 2: `ssd`), rack.
type NodeSpec = (u32, u64, bool, u8, u8);
/// Per ask: count, vcores, memory, label (0 and 3: none, 1: `gpu`, 2: `ssd`), preferred node.
type AskSpec = (u32, u32, u64, u8, Option<usize>);

fn label_for(choice: u8) -> Option<String> {
    match choice {
        1 => Some("gpu".to_owned()),
        2 => Some("ssd".to_owned()),
        _ => None,
    }
}

proptest! {
    /// Over three rounds of one snapshot (locality counters move on between them): no node
    /// over-committed, no queue past its maximum, labels respected, every short app without
    /// preferences explained, and two schedulers fed the same snapshots decide the same.
    #[test]
    fn never_overcommits_respects_maximums_and_labels_and_is_deterministic(
        (a_guaranteed, a_extra) in (0u32..=100, 0u32..=100),
        node_specs in proptest::collection::vec((1u32..16, 256u64..16_384, any::<bool>(), 0u8..3, 0u8..3), 1..12),
        app_specs in proptest::collection::vec(
            (any::<bool>(), 0u8..3, -1i32..2, proptest::option::of((1u32..4, 128u64..2048)),
             proptest::collection::vec((0u32..30, 1u32..6, 64u64..4096, 0u8..4, proptest::option::of(0usize..12)), 0..3)),
            1..12,
        ),
    ) {
        let a_maximum = (a_guaranteed + a_extra).clamp(1, 100);
        let queues = two_queues((a_guaranteed, a_maximum), (100 - a_guaranteed, 100));
        let nodes: Vec<SnapshotNode> = node_specs.iter().enumerate().map(|(index, &(vcores, memory_mb, schedulable, label, rack)): (usize, &NodeSpec)| SnapshotNode {
            node_id: NodeId(format!("n{index}")),
            rack: format!("r{rack}"),
            labels: label_for(label).into_iter().collect(),
            capacity: Resources::new(vcores, memory_mb),
            headroom: Resources::new(vcores / 2 + 1, memory_mb / 2 + 128),
            schedulable,
        }).collect();
        let apps: Vec<SnapshotApp> = app_specs.iter().enumerate().map(|(index, (in_a, user, priority, am, asks))| {
            let mut app = app(index as u32 + 1, if *in_a { "a" } else { "b" }, &format!("u{user}"), &[]);
            app.priority = *priority;
            app.pending_am = am.map(|(vcores, memory_mb)| Resources::new(vcores, memory_mb));
            app.asks = asks.iter().map(|&(count, vcores, memory_mb, label, preferred): &AskSpec| AppAsk {
                resources: Resources::new(vcores, memory_mb),
                count,
                nodes: preferred.map(|node| NodeId(format!("n{node}"))).into_iter().collect(),
                racks: Vec::new(),
                label: label_for(label),
            }).collect();
            app
        }).collect();
        let snapshot = ClusterSnapshot { queues: &queues, nodes: nodes.clone().into(), apps: apps.clone(), now_ms: 7 };
        let locality = LocalitySettings { node_delay: 1, rack_delay: 1 };
        let (mut first, mut second) = (CapacityScheduler::with_locality(locality), CapacityScheduler::with_locality(locality));
        for _round in 0..3 {
            let decisions = first.solve(&snapshot);
            prop_assert_eq!(&decisions, &second.solve(&snapshot));
            check_invariants(&queues, &nodes, &apps, &decisions)?;
        }
    }
}

/// The invariants every round's decisions must keep, whatever the input.
fn check_invariants(queues: &QueueTree, nodes: &[SnapshotNode], apps: &[SnapshotApp], decisions: &Decisions) -> Result<(), TestCaseError> {
    let app_of = |placement: &ContainerPlacement| apps.iter().find(|app| app.app_id == placement.app_id).unwrap();
    let size_of = |placement: &ContainerPlacement| match placement.container {
        ContainerKind::Am => app_of(placement).pending_am.unwrap(),
        ContainerKind::Ask(index) => app_of(placement).asks[index].resources,
    };
    let mut node_used: BTreeMap<&str, Resources> = BTreeMap::new();
    let mut queue_used: BTreeMap<&str, Resources> = BTreeMap::new();
    let mut placed_per_app: BTreeMap<u32, usize> = BTreeMap::new();
    for placement in &decisions.placements {
        let app = app_of(placement);
        *node_used.entry(placement.node_id.as_str()).or_default() += size_of(placement);
        *queue_used.entry(app.queue.as_str()).or_default() += size_of(placement);
        *placed_per_app.entry(placement.app_id.seq).or_default() += 1;
        let node = nodes.iter().find(|node| node.node_id == placement.node_id).unwrap();
        let queue = &queues.queues[queues.leaf(&app.queue).unwrap()];
        prop_assert!(
            node.labels.iter().all(|label| queue.may_use_label(label)),
            "app {} of queue {} on node {} labelled {:?}",
            app.app_id.seq,
            app.queue,
            node.node_id,
            node.labels
        );
        if let ContainerKind::Ask(index) = placement.container
            && let Some(label) = &app.asks[index].label
        {
            prop_assert!(
                node.labels.contains(label),
                "ask for {} on node {} labelled {:?}",
                label,
                node.node_id,
                node.labels
            );
        }
    }
    for node in nodes {
        let used = node_used.get(node.node_id.as_str()).copied().unwrap_or_default();
        prop_assert!(
            node.headroom.fits(&used),
            "node {} over-committed: {} on {}",
            node.node_id,
            used,
            node.headroom
        );
        prop_assert!(node.schedulable || used.is_zero());
    }
    let cluster = nodes
        .iter()
        .filter(|n| n.schedulable)
        .fold(Resources::ZERO, |sum, n| sum + n.capacity);
    let capacities = queues.capacities(cluster);
    for (name, used) in &queue_used {
        let maximum = capacities[queues.leaf(name).unwrap()].maximum;
        prop_assert!(maximum.fits(used), "queue {} at {} over its maximum {}", name, used, maximum);
    }
    for app in apps {
        let wanted = if app.pending_am.is_some() {
            1
        } else {
            app.asks.iter().map(|ask| ask.count as usize).sum()
        };
        let got = placed_per_app.get(&app.app_id.seq).copied().unwrap_or(0);
        let explained = decisions.wait_reason(app.app_id).is_some();
        // An ask waiting for locality shows no reason: it resolves by itself.
        let may_wait_for_locality = app.pending_am.is_none() && app.asks.iter().any(|ask| ask.count > 0 && !ask.nodes.is_empty());
        if may_wait_for_locality {
            prop_assert!(!explained || got < wanted, "app {} got all it wanted yet waits", app.app_id.seq);
        } else {
            prop_assert_eq!(got < wanted, explained, "app {}", app.app_id.seq);
        }
    }
    Ok(())
}

/// Times one `solve` of 1,000 apps at 500 and 5,000 nodes. Run with
/// `cargo test --release -p spindle-resource-manager --lib scheduler -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark; prints placements per second"]
fn bench_solve_at_500_and_5000_nodes() {
    for node_count in [500, 5_000] {
        bench_solve(node_count, 0);
    }
}

/// The same with 30% of the asks preferring one node (delay scheduling on the hot path).
#[test]
#[ignore = "benchmark; prints placements per second"]
fn bench_solve_with_30_percent_of_asks_preferring_a_node() {
    for node_count in [500, 5_000] {
        bench_solve(node_count, 30);
    }
}

/// Best of five fresh `solve`s (the machine is shared, so the minimum is the figure that means
/// something); `preferred_percent` of the asks name one node.
fn bench_solve(node_count: usize, preferred_percent: usize) {
    let queues = tree(
        "name = \"root\"\n\
         [[children]]\nname = \"streaming\"\nguaranteed_percent = 40\nmaximum_percent = 80\n\
         [[children]]\nname = \"batch\"\nguaranteed_percent = 40\nuser_limit_percent = 50\n\
         [[children]]\nname = \"adhoc\"\nguaranteed_percent = 20\nmaximum_percent = 50\n",
    );
    let apps: Vec<SnapshotApp> = (0..1_000usize)
        .map(|index| {
            let queue = ["streaming", "batch", "adhoc"][index % 3];
            let user = format!("user{}", index % 50);
            let shapes = [(200, 1, 2048), (100, 2, 4096), (50, 4, 1024)];
            let mut app = app(index as u32 + 1, queue, &user, &shapes);
            for (ask_index, ask) in app.asks.iter_mut().enumerate() {
                if (index * 3 + ask_index) % 100 < preferred_percent {
                    ask.nodes = vec![NodeId(format!("node-{:05}", (index * 37 + ask_index * 11) % node_count))];
                }
            }
            app
        })
        .collect();
    let snapshot = ClusterSnapshot {
        queues: &queues,
        nodes: nodes(node_count, 32, 128 * 1024).into(),
        apps,
        now_ms: 0,
    };
    let mut best = None;
    let mut placements = 0;
    for _ in 0..5 {
        let started = Instant::now();
        let decisions = CapacityScheduler::new().solve(&snapshot);
        let elapsed = started.elapsed();
        placements = decisions.placements.len();
        best = Some(best.map_or(elapsed, |best: std::time::Duration| best.min(elapsed)));
    }
    let best = best.unwrap();
    println!(
        "{node_count} nodes, 1000 apps, {preferred_percent}% of asks preferring a node: {placements} placements in {best:?} (best of 5) \
         = {:.0} placements/s, {:.2} µs each",
        placements as f64 / best.as_secs_f64(),
        best.as_secs_f64() * 1e6 / placements.max(1) as f64
    );
}
