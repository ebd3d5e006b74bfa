//! Dominant shares (DRF) and a way to order them: what queue, user and donor ordering all use.

use std::cmp::Ordering;

use spindle_protocol::Resources;

/// The larger of `used`'s fractions of the cluster's vcores and memory; 0 for an empty cluster.
pub(crate) fn dominant_share(used: Resources, cluster: Resources) -> f64 {
    let part = |used: f64, total: f64| if total > 0.0 { used / total } else { 0.0 };
    part(f64::from(used.vcores), f64::from(cluster.vcores)).max(part(used.memory_mb as f64, cluster.memory_mb as f64))
}

/// An `f64` ordered with `total_cmp`, so shares can key a heap.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Share(pub(crate) f64);

impl Eq for Share {}
impl PartialOrd for Share {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Share {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}
