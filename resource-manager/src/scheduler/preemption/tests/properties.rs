//! Property tests over random small clusters: 2–3 leaves (one nested under a parent with a
//! maximum), a few apps with containers, some already under notice.

use super::*;

/// Leaf names, in tree order.
const LEAVES: [&str; 3] = ["l0", "l1", "l2"];

/// `root` → `l0` (`l0_percent`), `p` → `l1` (`split` percent of `p`) [, `l2` (the rest)]; `p`
/// gets `parent_percent` of what `l0` leaves, and a maximum of at least that.
fn random_tree(leaf_count: usize, l0_percent: u32, split: u32, parent_percent: u32, parent_maximum: u32) -> QueueTree {
    let leaf = |name: &str, guaranteed: u32, depth: &str| {
        format!("[[{depth}]]\nname = \"{name}\"\nguaranteed_percent = {guaranteed}\nmaximum_percent = 100\n")
    };
    let mut text = String::from("name = \"root\"\n");
    text += &leaf("l0", l0_percent, "children");
    let parent_guaranteed = (100 - l0_percent) * parent_percent / 100;
    let parent_maximum = parent_maximum.max(parent_guaranteed).max(1);
    text += &format!("[[children]]\nname = \"p\"\nguaranteed_percent = {parent_guaranteed}\nmaximum_percent = {parent_maximum}\n");
    text += &leaf("l1", split, "children.children");
    if leaf_count == 3 {
        text += &leaf("l2", 100 - split, "children.children");
    }
    tree(&text)
}

/// (vcores, memory, under notice, grant time) of one container.
type ContainerSpec = (u32, u64, bool, u64);
/// (leaf, user, priority, has an AM, containers, pending count, pending size).
type AppSpec = (usize, u8, i32, bool, Vec<ContainerSpec>, u32, (u32, u64));

fn random_app(seq: u32, leaf_count: usize, spec: &AppSpec) -> SnapshotApp {
    let (leaf, user, priority, has_am, containers, pending, (vcores, memory_mb)) = spec;
    let containers = containers
        .iter()
        .enumerate()
        .map(|(index, &(vcores, memory_mb, preempting, allocated_at_ms))| SnapshotContainer {
            container_id: container_id(seq, index as u64),
            resources: Resources::new(vcores, memory_mb),
            is_am: *has_am && index == 0,
            allocated_at_ms,
            preempting,
        })
        .collect();
    let mut app = running(seq, LEAVES[leaf % leaf_count], &format!("u{user}"), 0);
    app.priority = *priority;
    app.containers = containers;
    app.asks = vec![AppAsk {
        resources: Resources::new(*vcores, *memory_mb),
        count: *pending,
        ..AppAsk::default()
    }];
    with_totals(app)
}

fn dominant_share(used: Resources, cluster: Resources) -> f64 {
    let part = |used: f64, total: f64| if total > 0.0 { used / total } else { 0.0 };
    part(f64::from(used.vcores), f64::from(cluster.vcores)).max(part(used.memory_mb as f64, cluster.memory_mb as f64))
}

fn app_strategy() -> impl Strategy<Value = AppSpec> {
    (
        0usize..3,
        0u8..3,
        -1i32..2,
        any::<bool>(),
        prop_oneof![1 => Just(Vec::new()), 3 => proptest::collection::vec((1u32..4, 256u64..4096, proptest::bool::weighted(0.2), 0u64..50), 1..12)],
        0u32..20,
        (1u32..4, 256u64..4096),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Victims are real, distinct containers of queues over their guarantee, never take a queue
    /// below it, take AMs only with their whole app, put notices first, and come out the same twice.
    #[test]
    fn victims_are_sound_and_deterministic(
        leaf_count in 2usize..=3,
        (l0_percent, split) in (0u32..=100, 0u32..=100),
        parent_percent in prop_oneof![Just(100u32), 0u32..=100],
        parent_maximum in 1u32..=100,
        node_shapes in proptest::collection::vec((4u32..32, 4_096u64..65_536, prop_oneof![3 => Just(0u32), 1 => 0u32..=100], proptest::bool::weighted(0.9)), 1..6),
        app_specs in proptest::collection::vec(app_strategy(), 1..10),
    ) {
        let queues = random_tree(leaf_count, l0_percent, split, parent_percent, parent_maximum);
        let nodes: Vec<SnapshotNode> = node_shapes.iter().enumerate().map(|(index, &(vcores, memory_mb, free_percent, schedulable))| SnapshotNode {
            node_id: NodeId(format!("n{index}")),
            capacity: Resources::new(vcores, memory_mb),
            headroom: Resources::new(vcores * free_percent / 100, memory_mb * u64::from(free_percent) / 100),
            schedulable,
            ..SnapshotNode::default()
        }).collect();
        let apps: Vec<SnapshotApp> = app_specs.iter().enumerate().map(|(index, spec)| random_app(index as u32 + 1, leaf_count, spec)).collect();
        let snapshot = ClusterSnapshot { queues: &queues, nodes: nodes.into(), apps, now_ms: 100 };

        let chosen = victims(&snapshot);
        prop_assert_eq!(&chosen, &victims(&snapshot), "deterministic");
        let distinct: HashSet<ContainerId> = chosen.iter().copied().collect();
        prop_assert_eq!(distinct.len(), chosen.len(), "no duplicates");
        let by_id = victim_resources(&snapshot.apps, &chosen);
        prop_assert_eq!(by_id.len(), chosen.len(), "every victim is a container of the snapshot");

        let mut cluster = Resources::ZERO;
        for node in snapshot.nodes.iter().filter(|node| node.schedulable) {
            cluster += node.capacity;
        }
        let capacities = queues.capacities(cluster);
        let mut used = vec![Resources::ZERO; queues.queues.len()];
        let mut after = used.clone();
        let leaf_of = |app: &SnapshotApp| queues.leaf(&app.queue).expect("apps name leaves");
        for app in &snapshot.apps {
            used[leaf_of(app)] += app.used;
            after[leaf_of(app)] += app.used;
        }
        for (app, resources) in by_id.values() {
            after[leaf_of(&snapshot.apps[*app])] -= *resources;
        }
        let starved = (0..queues.queues.len()).any(|leaf| {
            dominant_share(used[leaf], cluster) < dominant_share(capacities[leaf].guaranteed, cluster)
                && snapshot.apps.iter().any(|app| leaf_of(app) == leaf && app.asks.iter().any(|ask| ask.count > 0))
        });
        prop_assert!(chosen.is_empty() || starved, "victims without a starved leaf");
        for (leaf, (used, after)) in used.iter().zip(&after).enumerate() {
            if used == after {
                continue;
            }
            let guaranteed = dominant_share(capacities[leaf].guaranteed, cluster);
            prop_assert!(dominant_share(*used, cluster) > guaranteed, "victims from {} at/below its guarantee", queues.queues[leaf].path);
            prop_assert!(dominant_share(*after, cluster) >= guaranteed, "{} pushed below its guarantee", queues.queues[leaf].path);
        }

        let containers: HashMap<ContainerId, &SnapshotContainer> =
            snapshot.apps.iter().flat_map(|app| &app.containers).map(|container| (container.container_id, container)).collect();
        for (app, _) in by_id.values() {
            let app = &snapshot.apps[*app];
            let am_chosen = app.containers.iter().any(|container| container.is_am && distinct.contains(&container.container_id));
            let all_workers_chosen = app.containers.iter().all(|container| container.is_am || distinct.contains(&container.container_id));
            prop_assert!(!am_chosen || all_workers_chosen, "AM of {:?} chosen while workers remain", app.app_id);
        }
        let is_notice = |id: &ContainerId| containers[id].preempting && !containers[id].is_am;
        let notices = chosen.iter().take_while(|id| is_notice(id)).count();
        prop_assert!(chosen[notices..].iter().all(|id| !is_notice(id)), "containers under notice come first");
    }
}
