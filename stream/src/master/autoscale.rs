//! DS2-style autoscaling (Kalavri et al., OSDI 2018), pure: each operator's parallelism from
//! its *true* processing rate (records per second of busy time, so waiting for input or for
//! credit does not count) against the rate its input must sustain, propagated from the
//! sources in topological order. A backpressured source could emit more than it does: its
//! target is what it emits per unblocked second; a source whose backlog grows needs that
//! growth on top.

use spindle_protocol::AutoscaleSpec;

use crate::graph::Graph;

/// What one stage did over the last interval, summed over its instances.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageRates {
    pub records_in_per_s: f64,
    pub records_out_per_s: f64,
    /// Sum of the instances' busy fractions (2 instances fully busy: 2.0).
    pub busy: f64,
    /// Mean backpressured fraction of the instances.
    pub backpressured: f64,
    /// Growth of the sources' backlog, records per second (sources only).
    pub backlog_growth_per_s: f64,
}

/// The parallelism DS2 wants for every stage (sources and stages that cannot be rescaled keep
/// theirs). `None` when the measurements are not enough to decide (no input seen yet).
pub fn ds2(graph: &Graph, rates: &[StageRates], current: &[u32], settings: &AutoscaleSpec, key_groups: u32) -> Option<Vec<u32>> {
    let order = topological(graph);
    let mut target_out = vec![0.0f64; graph.stages.len()];
    let mut wanted = current.to_vec();
    for &stage in &order {
        let spec = &graph.stages[stage].spec;
        let observed = rates[stage];
        if spec.kind().is_source() {
            let unblocked = (1.0 - observed.backpressured).max(0.05);
            target_out[stage] = observed.records_out_per_s / unblocked + observed.backlog_growth_per_s.max(0.0);
            continue;
        }
        let incoming = graph.incoming(stage);
        let upstream_observed: f64 = incoming.iter().map(|&e| rates[graph.edges[e].from].records_out_per_s).sum();
        let upstream_target: f64 = incoming.iter().map(|&e| target_out[graph.edges[e].from]).sum();
        let scale = if upstream_observed > 0.0 {
            upstream_target / upstream_observed
        } else {
            1.0
        };
        let target_in = observed.records_in_per_s * scale;
        let selectivity = if observed.records_in_per_s > 0.0 {
            observed.records_out_per_s / observed.records_in_per_s
        } else {
            1.0
        };
        target_out[stage] = target_in * selectivity;
        if !spec.is_rescalable() {
            continue;
        }
        if observed.records_in_per_s <= 0.0 || observed.busy <= 0.0 {
            return None;
        }
        let true_rate_per_instance = observed.records_in_per_s / observed.busy;
        let needed = (target_in / (true_rate_per_instance * settings.target_utilization)).ceil() as u32;
        let upper = settings.max.min(if spec.is_keyed() { key_groups } else { u32::MAX });
        wanted[stage] = needed.clamp(settings.min, upper.max(settings.min));
    }
    Some(wanted)
}

/// Stages with every input before them.
fn topological(graph: &Graph) -> Vec<usize> {
    let mut order = Vec::with_capacity(graph.stages.len());
    let mut placed = vec![false; graph.stages.len()];
    while order.len() < graph.stages.len() {
        let before = order.len();
        for stage in 0..graph.stages.len() {
            if !placed[stage] && graph.incoming(stage).iter().all(|&e| placed[graph.edges[e].from]) {
                placed[stage] = true;
                order.push(stage);
            }
        }
        if order.len() == before {
            break; // a cycle: validation refuses those
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph() -> Graph {
        Graph::build(&crate::graph::window_count_spec(2))
    }

    fn settings() -> AutoscaleSpec {
        AutoscaleSpec {
            min: 1,
            max: 8,
            cooldown_ms: 1000,
            target_utilization: 0.8,
        }
    }

    #[test]
    fn a_saturated_keyed_operator_behind_backpressured_sources_grows() {
        // Sources emit 1 M/s but are blocked half the time: they could do 2 M/s. Two window
        // instances fully busy process 1 M/s: 0.5 M/s each per busy second.
        let rates = [
            StageRates {
                records_out_per_s: 1e6,
                backpressured: 0.5,
                ..Default::default()
            },
            StageRates {
                records_in_per_s: 1e6,
                records_out_per_s: 1e4,
                busy: 2.0,
                ..Default::default()
            },
            StageRates {
                records_in_per_s: 1e4,
                busy: 0.01,
                ..Default::default()
            },
        ];
        let wanted = ds2(&graph(), &rates, &[2, 2, 1], &settings(), 128).unwrap();
        // 2 M/s / (0.5 M/s × 0.8) = 5.
        assert_eq!(wanted, vec![2, 5, 1]);
    }

    #[test]
    fn an_idle_operator_shrinks_to_the_minimum_and_sources_keep_theirs() {
        let rates = [
            StageRates {
                records_out_per_s: 1e4,
                ..Default::default()
            },
            StageRates {
                records_in_per_s: 1e4,
                records_out_per_s: 1e2,
                busy: 0.02,
                ..Default::default()
            },
            StageRates {
                records_in_per_s: 1e2,
                busy: 0.001,
                ..Default::default()
            },
        ];
        assert_eq!(ds2(&graph(), &rates, &[2, 4, 1], &settings(), 128).unwrap(), vec![2, 1, 1]);
    }

    #[test]
    fn a_growing_backlog_asks_for_more_and_no_input_decides_nothing() {
        let rates = [
            StageRates {
                records_out_per_s: 1e5,
                backlog_growth_per_s: 1e5,
                ..Default::default()
            },
            StageRates {
                records_in_per_s: 1e5,
                records_out_per_s: 1e3,
                busy: 1.0,
                ..Default::default()
            },
            StageRates {
                records_in_per_s: 1e3,
                busy: 0.01,
                ..Default::default()
            },
        ];
        // 2e5 / (1e5 × 0.8) = 2.5 → 3.
        assert_eq!(ds2(&graph(), &rates, &[2, 1, 1], &settings(), 128).unwrap()[1], 3);
        assert_eq!(ds2(&graph(), &[StageRates::default(); 3], &[2, 1, 1], &settings(), 128), None);
    }
}
