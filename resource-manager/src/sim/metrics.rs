//! What a simulation measures, and the report it ends with. The definitions here are the ones
//! `spindle simulate` and bench/README.md quote.

use std::time::{Duration, Instant};

use serde::Serialize;
use spindle_protocol::{AppId, NodeId, Resources};

use crate::scheduler::share::dominant_share;
use crate::scheduler::snapshot::ContainerKind;

/// A leaf queue as the report names it.
#[derive(Debug, Clone)]
pub(crate) struct LeafInfo {
    pub name: String,
    pub guaranteed_fraction: f64,
    pub maximum_fraction: f64,
}

/// How close to its preferred nodes a container of an ask with preferences landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Locality {
    /// On one of the ask's preferred nodes.
    Node,
    /// On another node of a preferred node's rack.
    Rack,
    OffRack,
}

/// Placements by what the node-label rules say about them.
#[derive(Debug, Clone, Copy, Default)]
struct LabelCounts {
    /// Containers of asks requiring a label, and those of them on a node without it.
    required: u64,
    required_off_label: u64,
    /// Containers on labelled nodes, and those of them whose queue may not use the node's labels.
    on_labelled_nodes: u64,
    on_inaccessible_nodes: u64,
}

/// Counters and samples gathered while the simulation runs.
#[derive(Debug)]
pub(crate) struct Recorder {
    /// When the simulation was built: the start of the end-to-end wall time.
    started: Instant,
    /// Wall time of every `solve` call, one per round.
    round_solve_ns: Vec<u64>,
    solve_total_ns: u64,
    pub placements: u64,
    preemption_planning_ns: u64,
    pub preemption_notices: u64,
    pub preemption_notices_withdrawn: u64,
    pub preemption_kills: u64,
    pub containers_lost_with_nodes: u64,
    pub am_restarts: u64,
    pub peak_live_containers: usize,
    /// Containers of asks with preferences, node-local, rack-local and off-rack.
    locality: [u64; 3],
    labels: LabelCounts,
    leaves: Vec<LeafInfo>,
    sample_times_ms: Vec<u64>,
    /// Per leaf, its dominant share of the cluster at each sample.
    queue_series: Vec<Vec<f64>>,
    /// Per user (a user of one leaf queue): its leaf, and its running sum and count of
    /// share/fair-share ratios over the samples in which it had demand.
    user_leaf: Vec<usize>,
    user_ratio_sum: Vec<f64>,
    user_ratio_samples: Vec<u32>,
    /// FNV-1a over every placement (time, app, container kind, node), in decision order.
    digest: u64,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl Recorder {
    pub fn new(leaves: Vec<LeafInfo>, user_leaf: Vec<usize>) -> Recorder {
        Recorder {
            started: Instant::now(),
            round_solve_ns: Vec::new(),
            solve_total_ns: 0,
            placements: 0,
            preemption_planning_ns: 0,
            preemption_notices: 0,
            preemption_notices_withdrawn: 0,
            preemption_kills: 0,
            containers_lost_with_nodes: 0,
            am_restarts: 0,
            peak_live_containers: 0,
            locality: [0; 3],
            labels: LabelCounts::default(),
            queue_series: vec![Vec::new(); leaves.len()],
            leaves,
            sample_times_ms: Vec::new(),
            user_ratio_sum: vec![0.0; user_leaf.len()],
            user_ratio_samples: vec![0; user_leaf.len()],
            user_leaf,
            digest: FNV_OFFSET,
        }
    }

    /// The leaf (index among leaves) of a user.
    pub fn user_leaf(&self, user: usize) -> usize {
        self.user_leaf[user]
    }

    pub fn record_round(&mut self, solve_wall: Duration, placements: usize) {
        let nanos = solve_wall.as_nanos() as u64;
        self.round_solve_ns.push(nanos);
        self.solve_total_ns += nanos;
        self.placements += placements as u64;
    }

    pub fn record_preemption_planning(&mut self, wall: Duration) {
        self.preemption_planning_ns += wall.as_nanos() as u64;
    }

    pub fn record_placement(&mut self, now_ms: u64, app_id: AppId, kind: ContainerKind, node_id: &NodeId) {
        let kind_code = match kind {
            ContainerKind::Am => u64::MAX,
            ContainerKind::Ask(index) => index as u64,
        };
        for word in [now_ms, u64::from(app_id.seq), kind_code] {
            self.digest_bytes(&word.to_le_bytes());
        }
        self.digest_bytes(node_id.as_str().as_bytes());
    }

    pub fn record_locality(&mut self, locality: Locality) {
        self.locality[locality as usize] += 1;
    }

    /// One placement of an ask requiring a label (`required`) or on a labelled node.
    pub fn record_labels(&mut self, required: bool, on_labelled_node: bool, node_carries_required: bool, queue_may_use_node: bool) {
        let counts = &mut self.labels;
        counts.required += u64::from(required);
        counts.required_off_label += u64::from(required && !node_carries_required);
        counts.on_labelled_nodes += u64::from(on_labelled_node);
        counts.on_inaccessible_nodes += u64::from(on_labelled_node && !queue_may_use_node);
    }

    fn digest_bytes(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.digest = (self.digest ^ u64::from(byte)).wrapping_mul(FNV_PRIME);
        }
    }

    /// One sample of queue shares and user fairness. `user_demand` is what each user holds plus
    /// what it still waits for (pending AMs and asks).
    pub fn sample(&mut self, now_ms: u64, cluster: Resources, leaf_used: &[Resources], user_used: &[Resources], user_demand: &[Resources]) {
        self.sample_times_ms.push(now_ms);
        for (series, used) in self.queue_series.iter_mut().zip(leaf_used) {
            series.push(dominant_share(*used, cluster));
        }
        let fair = self.fair_shares(cluster, user_demand);
        for (user, fair_share) in fair.into_iter().enumerate() {
            if fair_share > 0.0 {
                self.user_ratio_sum[user] += dominant_share(user_used[user], cluster) / fair_share;
                self.user_ratio_samples[user] += 1;
            }
        }
    }

    /// Each user's fair dominant share now, by hierarchical weighted max-min (water-filling):
    /// first among leaf queues with demand, weighted by their guarantees, then among each queue's
    /// users with demand, equally. Nobody's fair share exceeds what it wants.
    fn fair_shares(&self, cluster: Resources, user_demand: &[Resources]) -> Vec<f64> {
        let demand: Vec<f64> = user_demand.iter().map(|demand| dominant_share(*demand, cluster).min(1.0)).collect();
        let mut leaf_demand = vec![0.0; self.leaves.len()];
        for (user, wanted) in demand.iter().enumerate() {
            leaf_demand[self.user_leaf[user]] += wanted;
        }
        // A queue guaranteed nothing still gets idle capacity; give it a token weight.
        let leaf_weight: Vec<f64> = self.leaves.iter().map(|leaf| leaf.guaranteed_fraction.max(1e-6)).collect();
        let leaf_fair = water_fill(&leaf_weight, &leaf_demand, 1.0);
        let mut fair = vec![0.0; demand.len()];
        for (leaf, leaf_share) in leaf_fair.into_iter().enumerate() {
            let users: Vec<usize> = (0..demand.len()).filter(|&user| self.user_leaf[user] == leaf).collect();
            let user_demand: Vec<f64> = users.iter().map(|&user| demand[user]).collect();
            let shares = water_fill(&vec![1.0; users.len()], &user_demand, leaf_share);
            for (user, share) in users.into_iter().zip(shares) {
                fair[user] = share;
            }
        }
        fair
    }

    pub fn report(self, run: RunFacts) -> SimReport {
        let mut sorted = self.round_solve_ns.clone();
        sorted.sort_unstable();
        let end_to_end = self.started.elapsed();
        let solve_seconds = self.solve_total_ns as f64 / 1e9;
        let per_user: Vec<f64> = self
            .user_ratio_sum
            .iter()
            .zip(&self.user_ratio_samples)
            .filter(|(_, samples)| **samples > 0)
            .map(|(sum, samples)| sum / f64::from(*samples))
            .collect();
        let per_queue = self
            .leaves
            .iter()
            .zip(&self.queue_series)
            .map(|(leaf, series)| QueueReport {
                name: leaf.name.clone(),
                guaranteed_percent: round1(leaf.guaranteed_fraction * 100.0),
                maximum_percent: round1(leaf.maximum_fraction * 100.0),
                mean_share_percent: round1(series.iter().sum::<f64>() / series.len().max(1) as f64 * 100.0),
                shares_percent: series.iter().map(|share| round1(share * 100.0)).collect(),
            })
            .collect();
        let locality_placements: u64 = self.locality.iter().sum();
        let locality_fraction = |count: u64| count as f64 / locality_placements.max(1) as f64;
        SimReport {
            nodes: run.nodes,
            apps: run.apps,
            queues: self.leaves.len(),
            seed: run.seed,
            simulated_seconds: run.simulated_ms as f64 / 1000.0,
            rounds: sorted.len() as u64,
            placements: self.placements,
            solve_wall_ms: solve_seconds * 1e3,
            allocations_per_sec: if solve_seconds > 0.0 {
                self.placements as f64 / solve_seconds
            } else {
                0.0
            },
            placement_cost_ns: self.solve_total_ns as f64 / self.placements.max(1) as f64,
            decision_p50_us: percentile(&sorted, 50.0) as f64 / 1e3,
            decision_p99_us: percentile(&sorted, 99.0) as f64 / 1e3,
            decision_max_us: sorted.last().copied().unwrap_or(0) as f64 / 1e3,
            end_to_end_wall_ms: end_to_end.as_secs_f64() * 1e3,
            end_to_end_allocations_per_sec: self.placements as f64 / end_to_end.as_secs_f64().max(1e-9),
            preemption_planning_wall_ms: self.preemption_planning_ns as f64 / 1e6,
            preemptions: self.preemption_kills,
            preemption_notices: self.preemption_notices,
            preemption_notices_withdrawn: self.preemption_notices_withdrawn,
            containers_lost_with_nodes: self.containers_lost_with_nodes,
            am_restarts: self.am_restarts,
            peak_live_containers: self.peak_live_containers,
            locality_placements,
            node_local_fraction: locality_fraction(self.locality[Locality::Node as usize]),
            rack_local_fraction: locality_fraction(self.locality[Locality::Rack as usize]),
            off_rack_fraction: locality_fraction(self.locality[Locality::OffRack as usize]),
            label_required_placements: self.labels.required,
            label_required_placements_off_label: self.labels.required_off_label,
            labelled_node_placements: self.labels.on_labelled_nodes,
            inaccessible_label_placements: self.labels.on_inaccessible_nodes,
            batch_apps: run.batch_apps,
            batch_apps_finished: run.batch_apps_finished,
            streaming_apps: run.apps - run.batch_apps,
            users: per_user.len(),
            jain_index: jain_index(&per_user),
            sample_interval_s: run.sample_interval_ms as f64 / 1000.0,
            sample_times_s: self.sample_times_ms.iter().map(|&ms| ms as f64 / 1000.0).collect(),
            per_queue,
            placement_digest: format!("{:016x}", self.digest),
        }
    }
}

/// Facts about the run the recorder does not see itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunFacts {
    pub nodes: usize,
    pub apps: usize,
    pub batch_apps: usize,
    pub batch_apps_finished: usize,
    pub seed: u64,
    pub simulated_ms: u64,
    pub sample_interval_ms: u64,
}

/// The outcome of one simulation; `spindle simulate --json` prints it as it is.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimReport {
    /// Nodes at the start (joins come on top).
    pub nodes: usize,
    pub apps: usize,
    pub queues: usize,
    pub seed: u64,
    pub simulated_seconds: f64,
    /// Scheduling rounds, one `solve` each.
    pub rounds: u64,
    /// Containers placed by `solve` (AMs included).
    pub placements: u64,
    /// Wall time spent inside `solve`, all rounds together.
    pub solve_wall_ms: f64,
    /// `placements` per second of wall time spent inside `solve` (not end to end).
    pub allocations_per_sec: f64,
    /// `solve_wall_ms` per placement, in ns: the per-allocation cost.
    pub placement_cost_ns: f64,
    /// Median, 99th percentile and maximum wall time of one `solve` call (one round).
    pub decision_p50_us: f64,
    pub decision_p99_us: f64,
    pub decision_max_us: f64,
    /// Wall time of the whole simulation: workload replay, snapshot upkeep, solve, preemption.
    pub end_to_end_wall_ms: f64,
    pub end_to_end_allocations_per_sec: f64,
    /// Wall time inside `preemption::victims`, all calls together.
    pub preemption_planning_wall_ms: f64,
    /// Containers killed by preemption (their grace period ran out while still chosen).
    pub preemptions: u64,
    /// Preemption notices sent, and notices withdrawn because the plan no longer chose them.
    pub preemption_notices: u64,
    pub preemption_notices_withdrawn: u64,
    pub containers_lost_with_nodes: u64,
    /// AM containers lost (preempted or with their node) whose app started a new attempt.
    pub am_restarts: u64,
    pub peak_live_containers: usize,
    /// Containers placed for asks with preferred nodes, and the fractions of them that landed on
    /// a preferred node, elsewhere in a preferred node's rack, and off those racks (0 without any).
    pub locality_placements: u64,
    pub node_local_fraction: f64,
    pub rack_local_fraction: f64,
    pub off_rack_fraction: f64,
    /// Containers placed for asks requiring a node label, and those of them on a node without it
    /// (a scheduler bug if not 0).
    pub label_required_placements: u64,
    pub label_required_placements_off_label: u64,
    /// Containers placed on labelled nodes, and those of them whose queue may not use every
    /// label of the node (a scheduler bug if not 0).
    pub labelled_node_placements: u64,
    pub inaccessible_label_placements: u64,
    pub batch_apps: usize,
    pub batch_apps_finished: usize,
    pub streaming_apps: usize,
    /// Users that had demand in at least one sample.
    pub users: usize,
    /// Jain's index over users' time-averaged share/fair-share ratios (see the module docs);
    /// `null` when no user ever had demand.
    pub jain_index: Option<f64>,
    pub sample_interval_s: f64,
    pub sample_times_s: Vec<f64>,
    pub per_queue: Vec<QueueReport>,
    /// Hex FNV-1a digest of every placement: equal digests, equal decisions.
    pub placement_digest: String,
}

/// One leaf queue's share of the cluster over time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueReport {
    pub name: String,
    pub guaranteed_percent: f64,
    pub maximum_percent: f64,
    pub mean_share_percent: f64,
    /// Dominant share of the cluster at each of `sample_times_s`.
    pub shares_percent: Vec<f64>,
}

/// Weighted max-min division of `total` among claimants: each gets at most its demand, and what
/// the satisfied leave is shared by weight among the rest. Claimants without demand get 0.
fn water_fill(weights: &[f64], demands: &[f64], total: f64) -> Vec<f64> {
    let mut order: Vec<usize> = (0..demands.len()).filter(|&index| demands[index] > 0.0).collect();
    // Smallest demand per unit of weight first: those are the ones that get all they want.
    order.sort_by(|&a, &b| (demands[a] / weights[a]).total_cmp(&(demands[b] / weights[b])).then(a.cmp(&b)));
    let mut shares = vec![0.0; demands.len()];
    let mut remaining = total;
    let mut remaining_weight: f64 = order.iter().map(|&index| weights[index]).sum();
    for index in order {
        let offer = remaining * weights[index] / remaining_weight;
        shares[index] = demands[index].min(offer);
        remaining -= shares[index];
        remaining_weight -= weights[index];
    }
    shares
}

/// Nearest-rank percentile of sorted values; 0 for no values.
fn percentile(sorted: &[u64], percent: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (percent / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Jain's fairness index (Σx)² / (n·Σx²): 1 when all equal, 1/n when one takes everything.
pub(crate) fn jain_index(values: &[f64]) -> Option<f64> {
    let squares: f64 = values.iter().map(|value| value * value).sum();
    if values.is_empty() || squares == 0.0 {
        return None;
    }
    let sum: f64 = values.iter().sum();
    Some(sum * sum / (values.len() as f64 * squares))
}

fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jain_and_percentiles() {
        assert_eq!(jain_index(&[1.0, 1.0, 1.0]), Some(1.0));
        assert!((jain_index(&[1.0, 0.0, 0.0, 0.0]).unwrap() - 0.25).abs() < 1e-12);
        assert_eq!(jain_index(&[]), None);
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 50.0), 50);
        assert_eq!(percentile(&values, 99.0), 99);
        assert_eq!(percentile(&[7], 99.0), 7);
    }

    #[test]
    fn fair_shares_cap_at_demand_and_split_the_rest_by_guarantee() {
        let leaves = vec![
            LeafInfo {
                name: "a".into(),
                guaranteed_fraction: 0.5,
                maximum_fraction: 1.0,
            },
            LeafInfo {
                name: "b".into(),
                guaranteed_fraction: 0.5,
                maximum_fraction: 1.0,
            },
        ];
        // Users 0 and 1 in `a`, user 2 in `b`; user 0 wants only 10%.
        let recorder = Recorder::new(leaves, vec![0, 0, 1]);
        let cluster = Resources::new(100, 100_000);
        let demand = [Resources::new(10, 0), Resources::new(100, 0), Resources::new(100, 0)];
        let fair = recorder.fair_shares(cluster, &demand);
        assert!((fair[0] - 0.10).abs() < 1e-9);
        assert!((fair[2] - 0.50).abs() < 1e-9, "{fair:?}");
        assert!((fair[1] - 0.40).abs() < 1e-9, "{fair:?}");
    }
}
