//! The scheduler: pure functions of a [`snapshot::ClusterSnapshot`], with no I/O and no clock
//! of their own. The RM builds a snapshot from its state for every round; the simulator
//! (`crate::sim`) builds them from a synthetic workload.
//!
//! - [`queues`]: the queue tree from the config, validated into an indexed tree.
//! - [`capacity`]: `solve`, the placement pipeline (hierarchical capacity, DRF between users,
//!   locality, node labels), with the wait reason of every app it could not serve.
//! - [`preemption`]: `victims`, the containers to take back so queues get their guarantee.
//!
//! See README.md in this crate for the words and the pipeline.

pub mod capacity;
mod node_ring;
pub mod preemption;
pub mod queues;
pub(crate) mod share;
pub mod snapshot;
