use std::collections::{HashMap, HashSet};
use std::time::Instant;

use proptest::prelude::*;
use spindle_protocol::{AppId, ContainerId, NodeId, Resources};

use super::victims;
use crate::scheduler::queues::{QueueConfig, QueueTree};
use crate::scheduler::snapshot::{AppAsk, ClusterSnapshot, SnapshotApp, SnapshotContainer, SnapshotNode};

mod properties;

const SMALL: Resources = Resources {
    vcores: 1,
    memory_mb: 1024,
};

fn tree(text: &str) -> QueueTree {
    let config: QueueConfig = toml::from_str(text).expect("queue config parses");
    QueueTree::from_config(&config).expect("queue config is valid")
}

/// `root` with leaves `a` and `b` at the given guaranteed percentages, both with maximum 100.
fn two_queues(a_guaranteed: u32, b_guaranteed: u32) -> QueueTree {
    tree(&format!(
        "name = \"root\"\n\
         [[children]]\nname = \"a\"\nguaranteed_percent = {a_guaranteed}\n\
         [[children]]\nname = \"b\"\nguaranteed_percent = {b_guaranteed}\n"
    ))
}

fn nodes(count: usize, capacity: Resources, headroom: Resources) -> Vec<SnapshotNode> {
    (0..count)
        .map(|index| SnapshotNode {
            node_id: NodeId(format!("node-{index:05}")),
            capacity,
            headroom,
            schedulable: true,
            ..SnapshotNode::default()
        })
        .collect()
}

/// Ten full nodes of 10 vcores / 10 GiB: room for 100 `SMALL` containers, none free.
fn full_cluster() -> Vec<SnapshotNode> {
    nodes(10, Resources::new(10, 10_240), Resources::ZERO)
}

fn app_id(seq: u32) -> AppId {
    AppId { cluster_ts: 1, seq }
}

fn container_id(app_seq: u32, seq: u64) -> ContainerId {
    ContainerId {
        app: app_id(app_seq),
        attempt: 1,
        epoch: 1,
        seq,
    }
}

/// An app in `queue` holding `count` `SMALL` containers granted at times 0, 1, …; the first one
/// (the oldest) is its AM. Container `seq` equals its grant time.
fn running(seq: u32, queue: &str, user: &str, count: u64) -> SnapshotApp {
    let containers = (0..count)
        .map(|index| SnapshotContainer {
            container_id: container_id(seq, index),
            resources: SMALL,
            is_am: index == 0,
            allocated_at_ms: index,
            preempting: false,
        })
        .collect();
    with_totals(SnapshotApp {
        app_id: app_id(seq),
        queue: queue.to_owned(),
        user: user.to_owned(),
        priority: 0,
        submitted_at_ms: u64::from(seq),
        used: Resources::ZERO,
        am_used: Resources::ZERO,
        pending_am: None,
        asks: Vec::new(),
        containers,
    })
}

/// Sets `used` and `am_used` from the app's containers.
fn with_totals(mut app: SnapshotApp) -> SnapshotApp {
    app.used = Resources::ZERO;
    app.am_used = Resources::ZERO;
    for container in &app.containers {
        app.used += container.resources;
        if container.is_am {
            app.am_used += container.resources;
        }
    }
    app
}

fn asking(mut app: SnapshotApp, count: u32) -> SnapshotApp {
    app.asks.push(AppAsk {
        resources: SMALL,
        count,
        ..AppAsk::default()
    });
    app
}

fn plan(queues: &QueueTree, nodes: Vec<SnapshotNode>, apps: Vec<SnapshotApp>) -> Vec<ContainerId> {
    victims(&ClusterSnapshot {
        queues,
        nodes: nodes.into(),
        apps,
        now_ms: 1_000,
    })
}

fn seqs(victims: &[ContainerId]) -> Vec<u64> {
    victims.iter().map(|id| id.seq).collect()
}

/// `a` holds 90 of 100 (guarantee 50), `b` holds 10 (guarantee 50) and asks for `b_pending`.
fn a_over_b_starved(b_pending: u32) -> (QueueTree, Vec<SnapshotApp>) {
    let apps = vec![running(1, "a", "ann", 90), asking(running(2, "b", "bob", 10), b_pending)];
    (two_queues(50, 50), apps)
}

#[test]
fn a_starved_queue_takes_its_gap_back_from_the_youngest_containers_of_the_queue_over_its_guarantee() {
    let (queues, apps) = a_over_b_starved(100);
    let victims = plan(&queues, full_cluster(), apps);
    // b's gap is 40 containers; a keeps exactly its guarantee of 50.
    assert_eq!(seqs(&victims), (50..90).rev().collect::<Vec<u64>>());
    assert!(victims.iter().all(|id| id.app == app_id(1)));
}

#[test]
fn nothing_is_preempted_without_a_starved_queue() {
    let queues = two_queues(50, 50);
    let at_guarantee = vec![running(1, "a", "ann", 50), asking(running(2, "b", "bob", 50), 100)];
    assert!(plan(&queues, full_cluster(), at_guarantee).is_empty(), "b is at its guarantee");
    let nothing_pending = vec![running(1, "a", "ann", 90), running(2, "b", "bob", 10)];
    assert!(plan(&queues, full_cluster(), nothing_pending).is_empty(), "b asks for nothing");
    let nobody_over = vec![running(1, "a", "ann", 40), asking(running(2, "b", "bob", 10), 100)];
    let one_free_node = nodes(1, Resources::new(10, 10_240), Resources::ZERO);
    assert!(plan(&queues, one_free_node, nobody_over).is_empty(), "a is below its guarantee too");
}

#[test]
fn free_space_that_covers_the_need_means_no_preemption() {
    let (queues, apps) = a_over_b_starved(5);
    let mut cluster = full_cluster();
    cluster[3].headroom = Resources::new(10, 10_240);
    assert!(plan(&queues, cluster, apps.clone()).is_empty(), "10 containers fit on node 3");

    let mut cluster = full_cluster();
    cluster[3].headroom = Resources::new(3, 3_072);
    assert_eq!(seqs(&plan(&queues, cluster, apps)), [89, 88], "3 of the 5 fit, 2 must be freed");
}

#[test]
fn slivers_too_small_for_a_pending_container_do_not_count_as_free() {
    let (queues, apps) = a_over_b_starved(5);
    let slivers = nodes(10, Resources::new(10, 10_240), Resources::new(1, 512));
    assert_eq!(seqs(&plan(&queues, slivers, apps)), [89, 88, 87, 86, 85]);
}

#[test]
fn containers_under_notice_are_chosen_first_and_counted_once() {
    let (queues, mut apps) = a_over_b_starved(10);
    for container in &mut apps[0].containers[1..=5] {
        container.preempting = true;
    }
    let victims = plan(&queues, full_cluster(), apps.clone());
    assert_eq!(seqs(&victims), [5, 4, 3, 2, 1, 89, 88, 87, 86, 85]);

    apps[1].asks[0].count = 3;
    assert_eq!(
        seqs(&plan(&queues, full_cluster(), apps.clone())),
        [5, 4, 3],
        "only 3 are still needed"
    );

    // The AM released containers itself: the freed space covers the need, every notice is withdrawn.
    let mut cluster = full_cluster();
    cluster[0].headroom = Resources::new(3, 3_072);
    assert!(plan(&queues, cluster, apps).is_empty());
}

#[test]
fn am_containers_go_last_and_only_with_their_whole_app() {
    // a has no guarantee, so everything it holds may go: 2 AMs (the youngest containers) and 10 workers.
    let queues = two_queues(0, 100);
    let mut ann = running(1, "a", "ann", 4);
    let mut al = running(3, "a", "al", 8);
    for app in [&mut ann, &mut al] {
        let am = &mut app.containers[0];
        am.allocated_at_ms = 100;
    }
    let bob = running(2, "b", "bob", 8);
    let cluster = nodes(2, Resources::new(10, 10_240), Resources::ZERO);

    let some = plan(&queues, cluster.clone(), vec![ann.clone(), al.clone(), asking(bob.clone(), 9)]);
    assert_eq!(some.len(), 9);
    assert!(some.iter().all(|id| id.seq != 0), "no AM while workers remain: {some:?}");
    // al holds more, so al's app goes first.
    assert_eq!(&seqs(&some)[..7], [7, 6, 5, 4, 3, 2, 1]);

    let all = plan(&queues, cluster, vec![ann, al, asking(bob, 12)]);
    assert_eq!(all.len(), 12);
    assert!(all[..10].iter().all(|id| id.seq != 0), "workers first: {all:?}");
    assert_eq!(all[10..], [container_id(3, 0), container_id(1, 0)], "then the AMs, al's first");
}

#[test]
fn only_pending_demand_is_reclaimed_when_it_is_below_the_gap() {
    let (queues, apps) = a_over_b_starved(5);
    assert_eq!(seqs(&plan(&queues, full_cluster(), apps)), [89, 88, 87, 86, 85]);
}

#[test]
fn within_a_queue_the_heaviest_user_and_then_the_lowest_priority_latest_app_go_first() {
    let queues = two_queues(50, 50);
    let mut light = running(1, "a", "light", 20);
    light.submitted_at_ms = 50;
    let mut heavy_early = running(3, "a", "heavy", 30);
    heavy_early.submitted_at_ms = 10;
    let mut heavy_late = running(4, "a", "heavy", 30);
    heavy_late.submitted_at_ms = 20;
    let mut heavy_low_priority = running(5, "a", "heavy", 10);
    heavy_low_priority.priority = -1;
    let b = asking(running(2, "b", "bob", 10), 100);
    let victims = plan(&queues, full_cluster(), vec![light, heavy_early, heavy_late, heavy_low_priority, b]);
    let apps: Vec<u32> = victims.iter().map(|id| id.app.seq).collect();
    let first_of = |seq: u32| apps.iter().position(|&app| app == seq);
    assert_eq!(victims.len(), 40);
    assert!(first_of(5) < first_of(4) && first_of(4) < first_of(3), "{apps:?}");
    assert_eq!(first_of(1), None, "the lighter user keeps everything: {apps:?}");
}

#[test]
fn the_queue_furthest_over_its_guarantee_gives_first_until_it_is_level_with_the_next() {
    let queues = tree(
        "name = \"root\"\n\
         [[children]]\nname = \"a\"\nguaranteed_percent = 20\n\
         [[children]]\nname = \"c\"\nguaranteed_percent = 20\n\
         [[children]]\nname = \"b\"\nguaranteed_percent = 60\n",
    );
    // a is at 50/20, c at 30/20; b needs 40 back: a gives 20 alone, then both give 10 each.
    let apps = vec![
        running(1, "a", "ann", 50),
        running(3, "c", "cid", 30),
        asking(running(2, "b", "bob", 20), 100),
    ];
    let victims = plan(&queues, full_cluster(), apps);
    let from = |seq: u32, victims: &[ContainerId]| victims.iter().filter(|id| id.app.seq == seq).count();
    assert_eq!(victims.len(), 40);
    assert_eq!(from(1, &victims[..20]), 20, "a gives alone until it is level with c");
    assert_eq!((from(1, &victims), from(3, &victims)), (30, 10), "both end at their guarantee");
}

#[test]
fn a_leaf_under_a_parent_at_its_maximum_takes_its_guarantee_back_from_a_sibling() {
    let queues = tree(
        "name = \"root\"\n\
         [[children]]\nname = \"p\"\nguaranteed_percent = 40\nmaximum_percent = 40\n\
         [[children.children]]\nname = \"b\"\nguaranteed_percent = 50\n\
         [[children.children]]\nname = \"c\"\nguaranteed_percent = 50\n\
         [[children]]\nname = \"d\"\nguaranteed_percent = 60\n",
    );
    let apps = vec![
        asking(running(1, "b", "bob", 10), 100),
        running(2, "c", "cid", 30),
        running(3, "d", "dan", 60),
    ];
    let victims = plan(&queues, full_cluster(), apps);
    assert_eq!(victims.len(), 10, "b's gap: {victims:?}");
    assert!(victims.iter().all(|id| id.app == app_id(2)), "only c is over its guarantee");
}

/// 5,000 nodes, 50,000 containers, one starved queue:
/// `cargo test -p spindle-resource-manager --release --lib scheduler::preemption -- --ignored --nocapture`
#[test]
#[ignore = "micro-benchmark"]
fn bench_victims_on_5000_nodes_and_50000_containers() {
    let queues = two_queues(50, 50);
    let cluster = nodes(5_000, Resources::new(10, 40_960), Resources::ZERO);
    let mut apps: Vec<SnapshotApp> = (0..450).map(|app| running(app + 10, "a", &format!("u{}", app % 20), 100)).collect();
    apps.extend((0..50).map(|app| asking(running(app + 1_000, "b", "bob", 100), 400)));
    let snapshot = ClusterSnapshot {
        queues: &queues,
        nodes: cluster.into(),
        apps,
        now_ms: 1_000,
    };
    let rounds = 10;
    let started = Instant::now();
    let mut chosen = 0;
    for _ in 0..rounds {
        chosen = victims(&snapshot).len();
    }
    let per_round = started.elapsed() / rounds;
    println!("victims() on 5,000 nodes / 50,000 containers: {chosen} victims in {per_round:?} per call");
    assert_eq!(chosen, 20_000);

    let mut calm = snapshot.clone();
    calm.apps.iter_mut().for_each(|app| app.asks.clear());
    let started = Instant::now();
    for _ in 0..rounds {
        assert!(victims(&calm).is_empty());
    }
    println!("victims() with no starved queue: {:?} per call", started.elapsed() / rounds);
}

/// Which app (index into `apps`) each victim belongs to and what it holds; unknown ids are left out.
fn victim_resources(apps: &[SnapshotApp], victims: &[ContainerId]) -> HashMap<ContainerId, (usize, Resources)> {
    let chosen: HashSet<ContainerId> = victims.iter().copied().collect();
    let mut by_id = HashMap::new();
    for (index, app) in apps.iter().enumerate() {
        for container in app.containers.iter().filter(|container| chosen.contains(&container.container_id)) {
            by_id.insert(container.container_id, (index, container.resources));
        }
    }
    by_id
}
