//! What the simulator plays: a queue tree, nodes, apps and node changes, all as plain data. Tests
//! write one by hand ([`Workload`] has public fields); `spindle simulate` generates one from a
//! seed with [`Workload::generate`].

use spindle_protocol::Resources;

use super::rng::SplitMix64;
use crate::scheduler::queues::QueueConfig;

/// One node's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub capacity: Resources,
    pub rack: String,
    /// Node labels it carries, sorted (the generator gives a few nodes `gpu`).
    pub labels: Vec<String>,
}

/// A change to the node set at a point of simulated time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEvent {
    pub at_ms: u64,
    pub change: NodeChange,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeChange {
    /// The node (index into `Workload::nodes`, joins counted after them) stops heartbeating:
    /// its containers end as `NODE_LOST`.
    Lost(usize),
    /// A lost node comes back empty (its agent restarted).
    Returns(usize),
    /// A new node joins; it gets the next node index.
    Joins(NodeSpec),
}

/// One app the workload submits.
#[derive(Debug, Clone, PartialEq)]
pub struct AppSpec {
    /// Leaf queue name.
    pub queue: String,
    pub user: String,
    pub priority: i32,
    pub submit_at_ms: u64,
    /// Size of its AM container.
    pub am: Resources,
    pub kind: AppKind,
}

/// The two kinds of work the issue asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum AppKind {
    /// Finishes when every task has run once to completion.
    Batch { task_groups: Vec<TaskGroup> },
    /// Long-running containers of one size; the number wanted follows `parallelism`.
    Streaming {
        resources: Resources,
        /// Target number of containers from each time on (absolute simulated ms, ascending);
        /// the first step should be at or before the submit time.
        parallelism: Vec<ParallelismStep>,
        /// When the job is stopped; `None` runs it to the end of the simulation.
        ends_at_ms: Option<u64>,
    },
}

/// `count` tasks of one size, each running a duration drawn uniformly from the range; one ask of
/// the app, so all its tasks share one set of preferred nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskGroup {
    pub resources: Resources,
    pub count: u32,
    pub min_duration_ms: u64,
    pub max_duration_ms: u64,
    /// Nodes (indices into `Workload::nodes`) holding the tasks' input, like the replicas of an
    /// HDFS block; empty for no preference. The ask's preferred racks are theirs.
    pub preferred_nodes: Vec<usize>,
    /// A node label every task requires.
    pub label: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParallelismStep {
    pub at_ms: u64,
    pub target: u32,
}

/// Everything one simulation plays.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    pub queues: QueueConfig,
    pub nodes: Vec<NodeSpec>,
    pub apps: Vec<AppSpec>,
    /// Ascending by time.
    pub node_events: Vec<NodeEvent>,
}

/// The knobs of a generated workload (the CLI's flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkloadParams {
    pub nodes: usize,
    pub apps: usize,
    /// Leaf queues under root, 1..=100.
    pub queues: usize,
    pub seed: u64,
}

/// Container sizes batch tasks pick from: mixed, so nodes fragment as they would.
const TASK_SHAPES: [(u32, u64); 7] = [(1, 2048), (1, 4096), (2, 4096), (2, 8192), (4, 8192), (4, 16384), (8, 16384)];
const STREAM_SHAPES: [(u32, u64); 4] = [(1, 4096), (2, 4096), (2, 8192), (4, 8192)];
/// Node sizes: vcores and memory (MB) are drawn as a pair of neighbouring grades.
const NODE_VCORES: [u32; 5] = [16, 24, 32, 48, 64];
const NODE_MEMORY_MB: [u64; 5] = [64 << 10, 96 << 10, 128 << 10, 192 << 10, 256 << 10];
const NODES_PER_RACK: usize = 40;
/// Share of apps that are streaming jobs.
const STREAMING_FRACTION: f64 = 0.15;
/// Batch demand over the arrival window, as a multiple of what the cluster (minus the streaming
/// share) can run in that window: above 1, so the cluster stays saturated and queues compete.
const BATCH_LOAD: f64 = 1.2;
/// Part of the cluster streaming jobs want at their peak, all together.
const STREAMING_PEAK_SHARE: f64 = 0.3;
/// Share of batch apps whose tasks read input stored on particular nodes (locality preferences).
const LOCALITY_FRACTION: f64 = 0.3;
/// Replicas of each input block, placed as HDFS does by default.
const REPLICAS: usize = 3;
/// A task group with locality becomes one ask per replica set of about this many tasks...
const TASKS_PER_REPLICA_SET: u32 = 4;
/// ...but at most this many asks: a big input is approximated by this many replica sets, each
/// preferred by many tasks, which keeps the ask table (and the scheduler's locality state) small.
const MAX_REPLICA_SETS: u32 = 32;
/// The label of the nodes only the last leaf queue may use, and the share of nodes carrying it.
pub const GPU_LABEL: &str = "gpu";
const GPU_NODE_FRACTION: f64 = 0.05;
/// Share of the labelled queue's batch apps whose tasks require the label.
const GPU_APP_FRACTION: f64 = 0.3;
/// Demand of the apps requiring the label over the arrival window, as a multiple of what the
/// labelled nodes can run in it: below 1, so the run does not wait long for them at the end.
const GPU_LOAD: f64 = 0.5;

impl Workload {
    /// A synthetic workload: `queues` leaves with uneven guarantees summing to 100, 2–4 users
    /// each; nodes of 16–64 vcores and 64–256 GiB; batch apps of 1–20 s tasks arriving over the
    /// first 60% of the horizon, sized to the cluster so it stays busy, 30% of them with locality
    /// preferences; streaming apps that scale every 20–60 s; about 1% of nodes lost (back after
    /// 30–120 s) and 1% joining; 5% of nodes labelled `gpu`, which only the last leaf may use and
    /// some of its batch apps require. Laid out over `horizon_ms` of simulated time.
    pub fn generate(params: &WorkloadParams, horizon_ms: u64) -> Workload {
        let mut rng = SplitMix64::new(params.seed);
        let queues = generated_queues(params.queues, &mut rng);
        let users: Vec<(String, Vec<String>)> = queues
            .children
            .iter()
            .map(|queue| {
                let count = rng.between(2, 4);
                (
                    queue.name.clone(),
                    (0..count).map(|user| format!("{}-u{user}", queue.name)).collect(),
                )
            })
            .collect();
        let mut nodes: Vec<NodeSpec> = (0..params.nodes).map(|index| generated_node(index, &mut rng)).collect();
        let cluster_vcores: f64 = nodes.iter().map(|node| f64::from(node.capacity.vcores)).sum();
        let gpu_vcores = label_gpu_nodes(&mut nodes, &mut rng);
        let gpu_queue = queues.children.last().map(|queue| queue.name.clone()).filter(|_| gpu_vcores > 0.0);
        let horizon = horizon_ms;

        let streaming_apps = (0..params.apps).filter(|_| rng.unit() < STREAMING_FRACTION).count();
        let batch_apps = params.apps - streaming_apps;
        let arrival_window_ms = horizon * 6 / 10;
        // Expected vcore-milliseconds of one batch app, before its skew.
        let batch_budget =
            BATCH_LOAD * (1.0 - STREAMING_PEAK_SHARE / 2.0) * cluster_vcores * arrival_window_ms as f64 / batch_apps.max(1) as f64;
        // Expected vcore-milliseconds of one app requiring `gpu`, from the expected number of them.
        let gpu_apps = (batch_apps as f64 / users.len() as f64 * GPU_APP_FRACTION).max(1.0);
        let gpu_budget = GPU_LOAD * gpu_vcores * arrival_window_ms as f64 / gpu_apps;
        let mut apps = Vec::with_capacity(params.apps);
        for index in 0..params.apps {
            let (queue, queue_users) = rng.pick(&users);
            let user = rng.pick(queue_users).clone();
            let streaming = index < streaming_apps;
            let kind = if streaming {
                generated_streaming(horizon, cluster_vcores * STREAMING_PEAK_SHARE / streaming_apps as f64, &mut rng)
            } else if gpu_queue.as_ref() == Some(queue) && rng.unit() < GPU_APP_FRACTION {
                generated_batch(gpu_budget, Some(GPU_LABEL), &mut rng)
            } else if rng.unit() < LOCALITY_FRACTION {
                with_replica_sets(generated_batch(batch_budget, None, &mut rng), params.nodes, &mut rng)
            } else {
                generated_batch(batch_budget, None, &mut rng)
            };
            let submit_at_ms = match &kind {
                AppKind::Streaming { parallelism, .. } => parallelism[0].at_ms,
                AppKind::Batch { .. } => rng.below(arrival_window_ms + 1),
            };
            apps.push(AppSpec {
                queue: queue.clone(),
                user,
                priority: rng.below(3) as i32,
                submit_at_ms,
                am: Resources::new(1, 2048),
                kind,
            });
        }
        apps.sort_by_key(|app| app.submit_at_ms);

        let node_events = generated_node_events(&nodes, horizon, &mut rng);
        Workload {
            queues,
            nodes,
            apps,
            node_events,
        }
    }
}

fn generated_queues(count: usize, rng: &mut SplitMix64) -> QueueConfig {
    debug_assert!((1..=100).contains(&count));
    // Every leaf gets 1%, the rest goes by random weights 1–4; rounding leftovers go first-come.
    let weights: Vec<u64> = (0..count).map(|_| rng.between(1, 4)).collect();
    let total_weight: u64 = weights.iter().sum();
    let spare = 100 - count as u64;
    let mut guarantees: Vec<u64> = weights.iter().map(|weight| 1 + spare * weight / total_weight).collect();
    let leftover = 100 - guarantees.iter().sum::<u64>();
    // Fewer than `count` points are left over (each leaf lost less than one to rounding).
    for guarantee in guarantees.iter_mut().take(leftover as usize) {
        *guarantee += 1;
    }
    let children = guarantees
        .iter()
        .enumerate()
        .map(|(index, &guarantee)| QueueConfig {
            guaranteed_percent: Some(guarantee as u32),
            // Elastic, but not all the way: some queues meet their maximum.
            maximum_percent: (guarantee * 2 + 30).min(100) as u32,
            // The last leaf alone may use the `gpu` nodes.
            accessible_labels: if index + 1 == count {
                vec![GPU_LABEL.to_owned()]
            } else {
                Vec::new()
            },
            ..leaf_queue(&format!("q{index}"), 0, 100)
        })
        .collect();
    QueueConfig {
        children,
        ..leaf_queue("root", 100, 100)
    }
}

/// A queue config with the defaults of the TOML form.
pub fn leaf_queue(name: &str, guaranteed_percent: u32, maximum_percent: u32) -> QueueConfig {
    QueueConfig {
        name: name.to_owned(),
        guaranteed_percent: Some(guaranteed_percent),
        maximum_percent,
        user_limit_percent: 100,
        am_share_percent: 10,
        submit_users: vec!["*".to_owned()],
        admin_users: Vec::new(),
        accessible_labels: Vec::new(),
        children: Vec::new(),
    }
}

fn generated_node(index: usize, rng: &mut SplitMix64) -> NodeSpec {
    let grade = rng.below(NODE_VCORES.len() as u64) as usize;
    let memory_grade = (grade + rng.below(3) as usize).saturating_sub(1).min(NODE_MEMORY_MB.len() - 1);
    NodeSpec {
        capacity: Resources::new(NODE_VCORES[grade], NODE_MEMORY_MB[memory_grade]),
        rack: format!("/rack-{}", index / NODES_PER_RACK),
        labels: Vec::new(),
    }
}

/// Labels about 5% of the nodes (at least one, in clusters of 10 or more) `gpu`; returns their
/// vcores.
fn label_gpu_nodes(nodes: &mut [NodeSpec], rng: &mut SplitMix64) -> f64 {
    if nodes.len() < 10 {
        return 0.0;
    }
    let wanted = ((nodes.len() as f64 * GPU_NODE_FRACTION).round() as usize).max(1);
    let mut labelled = 0;
    let mut vcores = 0.0;
    while labelled < wanted {
        let node = &mut nodes[rng.below(nodes.len() as u64) as usize];
        if node.labels.is_empty() {
            node.labels.push(GPU_LABEL.to_owned());
            vcores += f64::from(node.capacity.vcores);
            labelled += 1;
        }
    }
    vcores
}

fn generated_batch(budget_vcore_ms: f64, label: Option<&str>, rng: &mut SplitMix64) -> AppKind {
    // App sizes are skewed (exponential, mean 1): many small jobs, a few big ones.
    let skew = (-(1.0 - rng.unit()).ln()).clamp(0.05, 5.0);
    let groups = rng.between(1, 2) as usize;
    let mut task_groups = Vec::with_capacity(groups);
    for _ in 0..groups {
        let (vcores, memory_mb) = *rng.pick(&TASK_SHAPES);
        let min_duration_ms = rng.between(1, 10) * 1000;
        let max_duration_ms = rng.between(min_duration_ms / 1000, 20) * 1000;
        let task_cost = f64::from(vcores) * (min_duration_ms + max_duration_ms) as f64 / 2.0;
        let count = (budget_vcore_ms * skew / groups as f64 / task_cost).round().max(1.0) as u32;
        task_groups.push(TaskGroup {
            resources: Resources::new(vcores, memory_mb),
            count,
            min_duration_ms,
            max_duration_ms,
            preferred_nodes: Vec::new(),
            label: label.map(str::to_owned),
        });
    }
    AppKind::Batch { task_groups }
}

/// Splits each task group into replica sets: asks of the same shape whose tasks prefer the three
/// nodes holding their input (see `TASKS_PER_REPLICA_SET` and `MAX_REPLICA_SETS`).
fn with_replica_sets(batch: AppKind, node_count: usize, rng: &mut SplitMix64) -> AppKind {
    let AppKind::Batch { task_groups } = batch else {
        return batch;
    };
    if node_count == 0 {
        return AppKind::Batch { task_groups };
    }
    let mut split = Vec::new();
    for group in task_groups {
        let sets = group.count.div_ceil(TASKS_PER_REPLICA_SET).clamp(1, MAX_REPLICA_SETS);
        for set in 0..sets {
            // The first `count % sets` sets take one task more.
            let count = group.count / sets + u32::from(set < group.count % sets);
            split.push(TaskGroup {
                count,
                preferred_nodes: replica_nodes(node_count, rng),
                ..group.clone()
            });
        }
    }
    AppKind::Batch { task_groups: split }
}

/// Where HDFS's default policy puts a block's replicas: one node, then two nodes of one other
/// rack (racks are runs of `NODES_PER_RACK` node indices, as `generated_node` lays them out).
/// Clusters of one rack get distinct nodes anywhere.
fn replica_nodes(node_count: usize, rng: &mut SplitMix64) -> Vec<usize> {
    let first = rng.below(node_count as u64) as usize;
    let mut replicas = vec![first];
    let racks = node_count.div_ceil(NODES_PER_RACK);
    if racks >= 2 {
        let other_rack = (first / NODES_PER_RACK + 1 + rng.below(racks as u64 - 1) as usize) % racks;
        let rack_start = other_rack * NODES_PER_RACK;
        let rack_len = (node_count - rack_start).min(NODES_PER_RACK);
        let second = rng.below(rack_len as u64) as usize;
        replicas.push(rack_start + second);
        if rack_len > 1 {
            replicas.push(rack_start + (second + 1 + rng.below(rack_len as u64 - 1) as usize) % rack_len);
        }
    }
    while replicas.len() < REPLICAS.min(node_count) {
        let candidate = rng.below(node_count as u64) as usize;
        if !replicas.contains(&candidate) {
            replicas.push(candidate);
        }
    }
    replicas
}

fn generated_streaming(horizon_ms: u64, peak_vcores: f64, rng: &mut SplitMix64) -> AppKind {
    let (vcores, memory_mb) = *rng.pick(&STREAM_SHAPES);
    let most = ((peak_vcores / f64::from(vcores)).round() as u32).max(2);
    let least = (most / 4).max(1);
    let mut at_ms = rng.below(horizon_ms * 3 / 10 + 1);
    let ends_at_ms = (rng.unit() < 0.4).then(|| at_ms + rng.between(horizon_ms / 5, horizon_ms));
    let mut parallelism = Vec::new();
    while at_ms < horizon_ms && ends_at_ms.is_none_or(|end| at_ms < end) {
        parallelism.push(ParallelismStep {
            at_ms,
            target: rng.between(u64::from(least), u64::from(most)) as u32,
        });
        at_ms += rng.between(20_000, 60_000);
    }
    AppKind::Streaming {
        resources: Resources::new(vcores, memory_mb),
        parallelism,
        ends_at_ms,
    }
}

fn generated_node_events(nodes: &[NodeSpec], horizon_ms: u64, rng: &mut SplitMix64) -> Vec<NodeEvent> {
    let mut events = Vec::new();
    if nodes.is_empty() || horizon_ms < 120_000 {
        return events;
    }
    let changes = (nodes.len() / 100).max(1);
    let mut lost = Vec::new();
    for _ in 0..changes {
        let node = rng.below(nodes.len() as u64) as usize;
        if lost.contains(&node) {
            continue;
        }
        lost.push(node);
        let at_ms = rng.between(30_000, horizon_ms - 90_000);
        events.push(NodeEvent {
            at_ms,
            change: NodeChange::Lost(node),
        });
        events.push(NodeEvent {
            at_ms: at_ms + rng.between(30_000, 120_000),
            change: NodeChange::Returns(node),
        });
    }
    for index in 0..changes {
        events.push(NodeEvent {
            at_ms: rng.between(10_000, horizon_ms - 60_000),
            change: NodeChange::Joins(generated_node(nodes.len() + index, rng)),
        });
    }
    events.sort_by_key(|event| event.at_ms);
    events
}
