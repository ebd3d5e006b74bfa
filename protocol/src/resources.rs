//! The two resources Spindle schedules: virtual cores and memory.
//!
//! Arithmetic saturates in every operator (`+`, `-`, `*`, and their assigning forms): sizes come
//! from users, agents and AMs, and a sum of hostile or corrupt figures must clamp at the type's
//! bounds rather than panic (debug builds) or wrap (release builds).

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

    pub fn saturating_add(&self, other: &Resources) -> Resources {
        Resources {
            vcores: self.vcores.saturating_add(other.vcores),
            memory_mb: self.memory_mb.saturating_add(other.memory_mb),
        }
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

/// Saturating: clamps at `u32::MAX` vcores and `u64::MAX` MB.
impl std::ops::Add for Resources {
    type Output = Resources;

    fn add(self, other: Resources) -> Resources {
        self.saturating_add(&other)
    }
}

impl std::ops::AddAssign for Resources {
    fn add_assign(&mut self, other: Resources) {
        *self = *self + other;
    }
}

/// Saturating: clamps at zero in each dimension.
impl std::ops::Sub for Resources {
    type Output = Resources;

    fn sub(self, other: Resources) -> Resources {
        self.saturating_sub(&other)
    }
}

impl std::ops::SubAssign for Resources {
    fn sub_assign(&mut self, other: Resources) {
        *self = *self - other;
    }
}

/// `count` containers of this size, saturating (as [`Resources::times`]).
impl std::ops::Mul<u32> for Resources {
    type Output = Resources;

    fn mul(self, count: u32) -> Resources {
        self.times(count)
    }
}

impl std::iter::Sum for Resources {
    fn sum<I: Iterator<Item = Resources>>(iter: I) -> Resources {
        iter.fold(Resources::ZERO, |total, next| total + next)
    }
}

impl std::fmt::Display for Resources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<vcores:{}, memory:{} MB>", self.vcores, self.memory_mb)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn resources() -> impl Strategy<Value = Resources> {
        // Half the cases near the bounds, where overflow lives.
        let vcores = prop_oneof![any::<u32>(), (u32::MAX - 16)..=u32::MAX, 0..16u32];
        let memory_mb = prop_oneof![any::<u64>(), (u64::MAX - 16)..=u64::MAX, 0..16u64];
        (vcores, memory_mb).prop_map(|(vcores, memory_mb)| Resources::new(vcores, memory_mb))
    }

    #[test]
    fn arithmetic_clamps_at_the_bounds() {
        let max = Resources::new(u32::MAX, u64::MAX);
        assert_eq!(max + Resources::new(1, 1), max);
        assert_eq!(Resources::ZERO - Resources::new(1, 1), Resources::ZERO);
        assert_eq!(max * 2, max);
        assert_eq!(Resources::new(2, 512) * 3, Resources::new(6, 1536));
        let mut total = max;
        total += Resources::new(5, 5);
        assert_eq!(total, max);
        assert_eq!([max, max, Resources::new(1, 1)].into_iter().sum::<Resources>(), max);
    }

    proptest! {
        #[test]
        fn add_sub_and_mul_never_panic_and_match_wide_arithmetic(a in resources(), b in resources(), count in any::<u32>()) {
            let clamp32 = |wide: i128| wide.clamp(0, i128::from(u32::MAX)) as u32;
            let clamp64 = |wide: i128| wide.clamp(0, i128::from(u64::MAX)) as u64;
            let (av, am, bv, bm) = (i128::from(a.vcores), i128::from(a.memory_mb), i128::from(b.vcores), i128::from(b.memory_mb));
            prop_assert_eq!(a + b, Resources::new(clamp32(av + bv), clamp64(am + bm)));
            prop_assert_eq!(a - b, Resources::new(clamp32(av - bv), clamp64(am - bm)));
            let n = i128::from(count);
            prop_assert_eq!(a * count, Resources::new(clamp32(av * n), clamp64(am * n)));
            // Sums are monotone and what fits still fits after adding.
            prop_assert!((a + b).fits(&a) && (a + b).fits(&b));
            prop_assert!(a.fits(&(a - b)));
        }
    }
}
