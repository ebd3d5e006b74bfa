//! The two resources Spindle schedules: virtual cores and memory.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A bundle of resources: a node's capacity, a container's size, a queue's usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    pub vcores: u32,
    pub memory_mb: u64,
}

impl Resources {
    pub const ZERO: Resources = Resources { vcores: 0, memory_mb: 0 };

    pub fn new(vcores: u32, memory_mb: u64) -> Self {
        Resources { vcores, memory_mb }
    }

    /// Whether `other` fits inside `self` in every dimension.
    pub fn fits(&self, other: &Resources) -> bool {
        other.vcores <= self.vcores && other.memory_mb <= self.memory_mb
    }

    pub fn saturating_sub(&self, other: &Resources) -> Resources {
        Resources {
            vcores: self.vcores.saturating_sub(other.vcores),
            memory_mb: self.memory_mb.saturating_sub(other.memory_mb),
        }
    }

    pub fn is_zero(&self) -> bool {
        self.vcores == 0 && self.memory_mb == 0
    }

    /// `count` containers of this size (saturating: asks may be huge).
    pub fn times(&self, count: u32) -> Resources {
        Resources {
            vcores: self.vcores.saturating_mul(count),
            memory_mb: self.memory_mb.saturating_mul(u64::from(count)),
        }
    }
}

impl std::ops::Add for Resources {
    type Output = Resources;

    fn add(self, other: Resources) -> Resources {
        Resources {
            vcores: self.vcores + other.vcores,
            memory_mb: self.memory_mb + other.memory_mb,
        }
    }
}

impl std::ops::AddAssign for Resources {
    fn add_assign(&mut self, other: Resources) {
        *self = *self + other;
    }
}

impl std::ops::SubAssign for Resources {
    fn sub_assign(&mut self, other: Resources) {
        *self = self.saturating_sub(&other);
    }
}

impl std::fmt::Display for Resources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<vcores:{}, memory:{} MB>", self.vcores, self.memory_mb)
    }
}
