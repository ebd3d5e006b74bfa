//! Scenario tests of the scheduler through the simulator, and the simulator's own guarantees.

use spindle_protocol::Resources;

use super::workload::leaf_queue;
use super::*;
use crate::scheduler::queues::QueueConfig;

const NODE: Resources = Resources {
    vcores: 16,
    memory_mb: 64 << 10,
};
const AM: Resources = Resources {
    vcores: 1,
    memory_mb: 1024,
};
const WORKER: Resources = Resources {
    vcores: 1,
    memory_mb: 4096,
};

fn nodes(count: usize) -> Vec<NodeSpec> {
    (0..count)
        .map(|index| NodeSpec {
            capacity: NODE,
            rack: format!("/rack-{}", index / 10),
            labels: Vec::new(),
        })
        .collect()
}

/// Leaves `a` and `b` under root with these (guaranteed, maximum) percentages.
fn two_queues(a: (u32, u32), b: (u32, u32)) -> QueueConfig {
    QueueConfig {
        children: vec![leaf_queue("a", a.0, a.1), leaf_queue("b", b.0, b.1)],
        ..leaf_queue("root", 100, 100)
    }
}

/// A streaming app of one-vcore workers that wants `target` of them from each time on.
fn streaming(queue: &str, submit_at_ms: u64, steps: &[(u64, u32)]) -> AppSpec {
    AppSpec {
        queue: queue.to_owned(),
        user: format!("{queue}-user"),
        priority: 0,
        submit_at_ms,
        am: AM,
        kind: AppKind::Streaming {
            resources: WORKER,
            parallelism: steps.iter().map(|&(at_ms, target)| ParallelismStep { at_ms, target }).collect(),
            ends_at_ms: None,
        },
    }
}

fn share(simulation: &Simulation, queue: &str) -> f64 {
    simulation
        .leaf_shares()
        .into_iter()
        .find(|(name, _)| name == queue)
        .map(|(_, share)| share)
        .expect("queue exists")
}

fn assert_near(simulation: &Simulation, queue: &str, expected: f64, when: &str) {
    let actual = share(simulation, queue);
    assert!(
        (actual - expected).abs() <= 0.05,
        "{when}: queue {queue} holds {:.1}% of the cluster, expected {:.0}% ± 5%",
        actual * 100.0,
        expected * 100.0
    );
}

/// Issue scenario 1: two queues guaranteed 70/30, both wanting more than the cluster, starting
/// from `b` holding nearly all of it. Preemption must bring both within ±5% of their guarantee
/// within two grace periods of `a`'s demand, and keep them there.
#[test]
fn saturated_queues_settle_at_70_30_within_two_grace_periods() {
    let config = SimConfig::default();
    let demand_at_ms = 10_000;
    let workload = Workload {
        queues: two_queues((70, 100), (30, 100)),
        nodes: nodes(20),
        // `a` starts its AM with the cluster empty but wants workers only at 10 s, when `b`
        // already holds everything else.
        apps: vec![
            streaming("a", 0, &[(0, 0), (demand_at_ms, 1_000)]),
            streaming("b", 0, &[(0, 1_000)]),
        ],
        node_events: Vec::new(),
    };
    let mut simulation = Simulation::new(config, workload, 1).unwrap();
    simulation.run_until(demand_at_ms - 1);
    assert!(share(&simulation, "b") > 0.95, "b should hold nearly the whole cluster first");

    let settled_by_ms = demand_at_ms + 2 * config.grace_ms;
    simulation.run_until(settled_by_ms);
    simulation.assert_consistent();
    assert_near(&simulation, "a", 0.70, "two grace periods after a's demand");
    assert_near(&simulation, "b", 0.30, "two grace periods after a's demand");
    simulation.run_until(settled_by_ms + 3 * config.grace_ms);
    assert_near(&simulation, "a", 0.70, "later");
    assert_near(&simulation, "b", 0.30, "later");
    let report = simulation.report();
    assert!(report.preemptions > 0, "{report:?}");
}

/// Issue scenario 2: with `b` idle, `a` borrows up to its 80% maximum; when `b` submits, it gets
/// its 40% guarantee back (±5%) by preemption within the grace period plus 2 s.
#[test]
fn idle_queue_gets_its_guarantee_back_within_grace_plus_two_seconds() {
    let config = SimConfig::default();
    let submit_at_ms = 30_000;
    let workload = Workload {
        queues: two_queues((60, 80), (40, 100)),
        nodes: nodes(20),
        apps: vec![
            streaming("a", 0, &[(0, 1_000)]),
            streaming("b", submit_at_ms, &[(submit_at_ms, 1_000)]),
        ],
        node_events: Vec::new(),
    };
    let mut simulation = Simulation::new(config, workload, 1).unwrap();
    simulation.run_until(submit_at_ms - 1);
    let borrowed = share(&simulation, "a");
    assert!(
        (0.75..=0.80 + 1e-9).contains(&borrowed),
        "a should borrow up to its 80% maximum while b is idle, holds {:.1}%",
        borrowed * 100.0
    );

    simulation.run_until(submit_at_ms + config.grace_ms + 2_000);
    simulation.assert_consistent();
    assert_near(&simulation, "b", 0.40, "grace period + 2 s after b submitted");
    assert_near(&simulation, "a", 0.60, "grace period + 2 s after b submitted");
}

fn small_params(seed: u64) -> WorkloadParams {
    WorkloadParams {
        nodes: 40,
        apps: 60,
        queues: 3,
        seed,
    }
}

fn short_config() -> SimConfig {
    SimConfig {
        horizon_ms: 150_000,
        ..SimConfig::default()
    }
}

#[test]
fn same_seed_gives_the_same_placements() {
    let first = simulate(&small_params(7), short_config()).unwrap();
    let second = simulate(&small_params(7), short_config()).unwrap();
    assert!(first.placements > 100, "{first:?}");
    assert_eq!(first.placement_digest, second.placement_digest);
    assert_eq!(first.placements, second.placements);
    assert_eq!(first.per_queue, second.per_queue);
    let other = simulate(&small_params(8), short_config()).unwrap();
    assert_ne!(first.placement_digest, other.placement_digest);
}

#[test]
fn a_generated_run_stays_consistent_and_reports_sane_figures() {
    let config = short_config();
    let workload = Workload::generate(&small_params(3), config.horizon_ms);
    assert!(workload.node_events.iter().any(|event| matches!(event.change, NodeChange::Lost(_))));
    let guarantees: u32 = workload.queues.children.iter().filter_map(|queue| queue.guaranteed_percent).sum();
    assert_eq!(guarantees, 100);
    let groups = || {
        workload.apps.iter().flat_map(|app| match &app.kind {
            AppKind::Batch { task_groups } => task_groups.as_slice(),
            AppKind::Streaming { .. } => &[],
        })
    };
    assert!(groups().any(|group| group.preferred_nodes.len() == 3), "some asks prefer nodes");
    assert!(groups().any(|group| group.label.is_some()), "some asks require gpu");
    assert!(workload.nodes.iter().any(|node| !node.labels.is_empty()), "some nodes carry gpu");
    let mut simulation = Simulation::new(config, workload, 3).unwrap();
    while simulation.now_ms() <= config.horizon_ms {
        simulation.run_until(simulation.now_ms() + 10_000);
        simulation.assert_consistent();
    }
    let report = simulation.report();
    assert_eq!(report.queues, 3);
    assert!(report.placements > 0 && report.allocations_per_sec > 0.0);
    assert!(report.decision_p50_us <= report.decision_p99_us);
    // Locality: every placement of an ask with preferences is counted once.
    assert!(report.locality_placements > 0, "{report:?}");
    let fractions = report.node_local_fraction + report.rack_local_fraction + report.off_rack_fraction;
    assert!((fractions - 1.0).abs() < 1e-9, "{report:?}");
    assert!(report.node_local_fraction > 0.0, "{report:?}");
    // Labels: gpu asks ran, only on gpu nodes, and no queue without access used a gpu node.
    assert!(report.label_required_placements > 0, "{report:?}");
    assert_eq!(report.label_required_placements_off_label, 0);
    assert!(report.labelled_node_placements >= report.label_required_placements);
    assert_eq!(report.inaccessible_label_placements, 0);
    let jain = report.jain_index.expect("users had demand");
    assert!(jain > 0.0 && jain <= 1.0 + 1e-9, "{jain}");
    for queue in &report.per_queue {
        assert_eq!(queue.shares_percent.len(), report.sample_times_s.len());
        // Lost nodes shrink the cluster under a queue's feet, hence the slack.
        assert!(
            queue.shares_percent.iter().all(|&share| share <= queue.maximum_percent + 5.0),
            "{queue:?}"
        );
    }
}

#[test]
fn generated_preferences_follow_hdfs_placement_and_only_the_last_queue_uses_gpu() {
    let params = WorkloadParams {
        nodes: 400,
        apps: 400,
        queues: 4,
        seed: 5,
    };
    let workload = Workload::generate(&params, SimConfig::default().horizon_ms);
    let gpu_nodes = workload.nodes.iter().filter(|node| node.labels == [workload::GPU_LABEL]).count();
    assert_eq!(gpu_nodes, 20, "5% of the nodes");
    let queues = &workload.queues.children;
    assert!(queues[..3].iter().all(|queue| queue.accessible_labels.is_empty()));
    assert_eq!(queues[3].accessible_labels, [workload::GPU_LABEL]);
    let (mut batch, mut with_preferences, mut requiring_gpu) = (0, 0, 0);
    for app in &workload.apps {
        let AppKind::Batch { task_groups } = &app.kind else { continue };
        batch += 1;
        with_preferences += usize::from(task_groups.iter().any(|group| !group.preferred_nodes.is_empty()));
        requiring_gpu += usize::from(task_groups.iter().any(|group| group.label.is_some()));
        for group in task_groups {
            if group.label.is_some() {
                assert_eq!(app.queue, queues[3].name, "only the queue that may use gpu requires it");
            }
            let [first, second, third] = group.preferred_nodes[..] else {
                assert!(group.preferred_nodes.is_empty(), "{group:?}");
                continue;
            };
            let rack = |node: usize| &workload.nodes[node].rack;
            assert!(second != third && rack(second) == rack(third), "{group:?}");
            assert_ne!(rack(first), rack(second), "{group:?}");
        }
    }
    let locality_share = with_preferences as f64 / batch as f64;
    assert!((0.2..0.4).contains(&locality_share), "{locality_share}");
    assert!(requiring_gpu > 0);
}

#[test]
fn tasks_on_a_lost_node_run_again_and_the_app_finishes() {
    let workload = Workload {
        queues: two_queues((50, 100), (50, 100)),
        nodes: nodes(2),
        apps: vec![AppSpec {
            queue: "a".to_owned(),
            user: "alice".to_owned(),
            priority: 0,
            submit_at_ms: 0,
            am: AM,
            kind: AppKind::Batch {
                task_groups: vec![TaskGroup {
                    resources: WORKER,
                    count: 40,
                    min_duration_ms: 10_000,
                    max_duration_ms: 10_000,
                    preferred_nodes: Vec::new(),
                    label: None,
                }],
            },
        }],
        node_events: vec![
            NodeEvent {
                at_ms: 5_000,
                change: NodeChange::Lost(1),
            },
            NodeEvent {
                at_ms: 8_000,
                change: NodeChange::Returns(1),
            },
        ],
    };
    let report = Simulation::new(SimConfig::default(), workload, 1).unwrap().run();
    assert_eq!(report.batch_apps_finished, 1);
    assert!(report.containers_lost_with_nodes > 0);
    // 40 tasks, one AM (a second one if the AM's node was the lost one), re-runs for the lost.
    assert_eq!(report.placements, 1 + 40 + report.containers_lost_with_nodes + report.am_restarts);
}
