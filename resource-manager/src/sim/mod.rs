//! The scheduler simulator: the real [`CapacityScheduler`](crate::scheduler::capacity::CapacityScheduler)
//! and [`preemption::victims`](crate::scheduler::preemption::victims) driven by a synthetic or
//! scripted workload in simulated time, for scenario tests and `spindle simulate`.
//!
//! ```text
//! Workload ──(generate / by hand)──► Simulation ──rounds──► SimReport
//!   queues, nodes, apps,              events → preemption plan → solve → sample
//!   node losses and joins             (snapshot kept in place between rounds)
//! ```
//!
//! Glossary and the report's definitions:
//! * **round**: one `solve` call, every `round_interval_ms` (250 ms) of simulated time; the
//!   preemption plan runs every `preemption_interval_ms` (1 s) before that round's `solve`.
//! * **allocations_per_sec**: containers placed ÷ wall time spent *inside `solve`* (snapshot
//!   upkeep, events and preemption are outside it; `end_to_end_wall_ms` includes everything).
//! * **placement_cost_ns**: wall time inside `solve` ÷ containers placed.
//! * **decision_p50_us / decision_p99_us**: percentiles (nearest rank) of the wall time of one
//!   `solve` call, over all rounds, including rounds that placed nothing.
//! * **queue share**: a leaf's dominant share (max of its vcore and memory fractions) of the
//!   schedulable cluster, sampled every `sample_interval_ms` (10 s).
//! * **jain_index**: Jain's index over users. At each sample every user with demand (what it
//!   holds plus pending AMs and asks) gets a fair dominant share by hierarchical max-min: the
//!   cluster split among leaf queues with demand by guarantee, each queue's part split equally
//!   among its users with demand, nobody above its demand. A user's value is its
//!   time-averaged ratio of actual to fair share; 1.0 means every user got the same fraction
//!   of what it was entitled to.
//! * **preemptions**: containers killed because a notice ran out while `victims` still chose
//!   them; notices sent and withdrawn are reported beside it.
//! * **node_local_fraction / rack_local_fraction / off_rack_fraction**: of the containers placed
//!   for asks with preferred nodes, those on a preferred node, on another node of a preferred
//!   node's rack, and elsewhere.
//! * **label placements**: containers of asks requiring a label, counted with those that landed
//!   on a node without it, and containers on labelled nodes, counted with those whose queue may
//!   not use the node's labels; both "without" counts must stay 0.
//!
//! Determinism: the workload and task durations come from [`rng::SplitMix64`] seeded by the
//! caller, events are replayed in (time, insertion) order, and the scheduler is pure, so one seed
//! gives the same placements, summed up in `placement_digest`.

mod containers;
mod engine;
mod metrics;
pub mod rng;
pub mod workload;

#[cfg(test)]
mod tests;

pub use engine::{SimConfig, Simulation};
pub use metrics::{QueueReport, SimReport};
pub use workload::{AppKind, AppSpec, NodeChange, NodeEvent, NodeSpec, ParallelismStep, TaskGroup, Workload, WorkloadParams};

use crate::scheduler::queues::QueueConfigError;

/// Generates the workload for `params` and runs it to the end.
pub fn simulate(params: &WorkloadParams, config: SimConfig) -> Result<SimReport, QueueConfigError> {
    let workload = Workload::generate(params, config.horizon_ms);
    Ok(Simulation::new(config, workload, params.seed)?.run())
}
