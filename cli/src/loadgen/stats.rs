//! What the load generator counts and times: lock-free counters and latency histograms that the
//! fake agents and AMs record into from every task, and snapshots of both whose difference is
//! what happened inside the measured window.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The events the load generator counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// Heartbeats the RM answered, periodic and immediate.
    Heartbeats,
    /// Of those, sent at once because a container started or ended (as the real agent does).
    ImmediateHeartbeats,
    /// Heartbeats that failed (unreachable, timeout, an error status).
    HeartbeatErrors,
    /// Periodic heartbeats that left more than one interval late (the agent task fell behind).
    LateHeartbeats,
    /// Heartbeat replies saying `resync`: the RM did not know the node (lost, or restarted).
    Resyncs,
    Registrations,
    RegisterErrors,
    /// Allocate calls the RM answered, quick and long-polling.
    AllocateCalls,
    AllocateErrors,
    /// Task containers granted to the fake AMs.
    ContainersGranted,
    /// Completions of task containers delivered to the fake AMs.
    ContainersCompleted,
    /// Task containers the fake AMs released without launching them.
    ReleasedUnlaunched,
    /// Running task containers the fake AMs released (the RM has the agent kill them).
    ReleasedRunning,
    /// Containers the RM told a fake agent to kill.
    KilledByRm,
    /// AM containers the RM launched over HTTP on a fake agent.
    AmLaunches,
    /// Launches a fake agent refused (duplicate, bad or expired token).
    LaunchErrors,
    AppsSubmitted,
    SubmitErrors,
    /// Apps whose fake AM finished them (FINISHED, SUCCEEDED).
    AppsFinished,
    /// AM attempts told to stop (`shutdown`) before they finished.
    AmShutdowns,
}

impl Count {
    const ALL: [Count; 20] = [
        Count::Heartbeats,
        Count::ImmediateHeartbeats,
        Count::HeartbeatErrors,
        Count::LateHeartbeats,
        Count::Resyncs,
        Count::Registrations,
        Count::RegisterErrors,
        Count::AllocateCalls,
        Count::AllocateErrors,
        Count::ContainersGranted,
        Count::ContainersCompleted,
        Count::ReleasedUnlaunched,
        Count::ReleasedRunning,
        Count::KilledByRm,
        Count::AmLaunches,
        Count::LaunchErrors,
        Count::AppsSubmitted,
        Count::SubmitErrors,
        Count::AppsFinished,
        Count::AmShutdowns,
    ];
}

/// The latencies the load generator measures, client side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latency {
    Heartbeat,
    Register,
    /// Allocate calls that carry new asks or releases and do not wait (`wait_ms = 0`): the
    /// RM's service time for an AM, a scheduling round included.
    Allocate,
    /// From the moment an AM first asked for a container to the reply that granted it.
    AskToGrant,
}

impl Latency {
    const ALL: [Latency; 4] = [Latency::Heartbeat, Latency::Register, Latency::Allocate, Latency::AskToGrant];
}

/// Every counter and histogram, shared by all tasks.
pub struct Stats {
    counts: [AtomicU64; Count::ALL.len()],
    latencies: [Histogram; Latency::ALL.len()],
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            latencies: std::array::from_fn(|_| Histogram::new()),
        }
    }

    pub fn add(&self, count: Count, by: u64) {
        self.counts[count as usize].fetch_add(by, Ordering::Relaxed);
    }

    pub fn inc(&self, count: Count) {
        self.add(count, 1);
    }

    /// The count so far.
    pub fn count(&self, count: Count) -> u64 {
        self.counts[count as usize].load(Ordering::Relaxed)
    }

    pub fn record(&self, latency: Latency, elapsed: Duration) {
        self.latencies[latency as usize].record(elapsed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            counts: Count::ALL.map(|count| self.counts[count as usize].load(Ordering::Relaxed)),
            latencies: Latency::ALL.map(|latency| self.latencies[latency as usize].snapshot()),
        }
    }
}

/// The counters and histograms at one moment; `since` gives what happened between two.
#[derive(Debug, Clone)]
pub struct StatsSnapshot {
    counts: [u64; Count::ALL.len()],
    latencies: [HistogramSnapshot; Latency::ALL.len()],
}

impl StatsSnapshot {
    pub fn count(&self, count: Count) -> u64 {
        self.counts[count as usize]
    }

    pub fn latency(&self, latency: Latency) -> &HistogramSnapshot {
        &self.latencies[latency as usize]
    }

    /// What was recorded after `earlier` was taken.
    pub fn since(&self, earlier: &StatsSnapshot) -> StatsSnapshot {
        StatsSnapshot {
            counts: std::array::from_fn(|index| self.counts[index].saturating_sub(earlier.counts[index])),
            latencies: std::array::from_fn(|index| self.latencies[index].since(&earlier.latencies[index])),
        }
    }
}

/// Sub-buckets per power of two: a recorded value is off by at most 1/64 (1.6%).
const SUB_BUCKET_BITS: u32 = 6;
const SUB_BUCKETS: u64 = 1 << SUB_BUCKET_BITS;
/// Values in microseconds up to 2^40 µs (12 days) have a bucket; larger ones share the last.
const MAX_EXPONENT: u32 = 40;
const BUCKETS: usize = (2 * SUB_BUCKETS + (MAX_EXPONENT as u64 - SUB_BUCKET_BITS as u64) * SUB_BUCKETS) as usize;

/// A log-linear histogram of durations in microseconds (HdrHistogram's layout, fixed
/// precision): recording is one relaxed atomic add, so thousands of tasks record without a
/// lock, and two snapshots subtract bucket by bucket.
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
}

impl Histogram {
    pub fn new() -> Histogram {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn record(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: self.buckets.iter().map(|bucket| bucket.load(Ordering::Relaxed)).collect(),
        }
    }
}

/// Values below `2 * SUB_BUCKETS` have a bucket each; above, each power of two is cut into
/// `SUB_BUCKETS` equal parts.
fn bucket_of(micros: u64) -> usize {
    if micros < 2 * SUB_BUCKETS {
        return micros as usize;
    }
    let exponent = (63 - micros.leading_zeros()).min(MAX_EXPONENT);
    let shift = exponent - SUB_BUCKET_BITS;
    let sub_bucket = (micros >> shift).min(2 * SUB_BUCKETS - 1) - SUB_BUCKETS;
    (SUB_BUCKETS + u64::from(exponent - SUB_BUCKET_BITS) * SUB_BUCKETS + sub_bucket) as usize
}

/// The middle of the values bucket `index` holds, in microseconds.
fn bucket_value(index: usize) -> f64 {
    let index = index as u64;
    if index < 2 * SUB_BUCKETS {
        return index as f64;
    }
    let exponent = (index - SUB_BUCKETS) / SUB_BUCKETS + u64::from(SUB_BUCKET_BITS);
    let sub_bucket = (index - SUB_BUCKETS) % SUB_BUCKETS + SUB_BUCKETS;
    let shift = exponent - u64::from(SUB_BUCKET_BITS);
    let low = sub_bucket << shift;
    low as f64 + ((1u64 << shift) as f64 - 1.0) / 2.0
}

/// A histogram's counts at one moment.
#[derive(Debug, Clone)]
pub struct HistogramSnapshot {
    counts: Vec<u64>,
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: self
                .counts
                .iter()
                .zip(&earlier.counts)
                .map(|(now, before)| now.saturating_sub(*before))
                .collect(),
        }
    }

    /// The `quantile` (0..=1) in milliseconds, by nearest rank; `None` with no samples.
    pub fn quantile_ms(&self, quantile: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((quantile * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(bucket_value(index) / 1000.0);
            }
        }
        unreachable!("the rank is at most the total")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_lands_in_a_bucket_whose_middle_is_within_two_percent() {
        let mut previous = 0;
        for micros in (0..5_000).chain((5_000..100_000_000).step_by(997)).chain([u64::MAX / 2, u64::MAX]) {
            let index = bucket_of(micros);
            assert!(index < BUCKETS, "{micros} µs");
            assert!(index >= previous, "buckets grow with the value ({micros} µs)");
            previous = index;
            if micros < 1 << (MAX_EXPONENT + 1) {
                let middle = bucket_value(index);
                assert!(
                    (middle - micros as f64).abs() <= micros as f64 / 50.0 + 0.5,
                    "{micros} µs → {middle}"
                );
            }
        }
    }

    #[test]
    fn quantiles_come_from_the_window_between_two_snapshots() {
        let histogram = Histogram::new();
        for _ in 0..1000 {
            histogram.record(Duration::from_millis(500));
        }
        let before = histogram.snapshot();
        for millis in 1..=100 {
            histogram.record(Duration::from_millis(millis));
        }
        let window = histogram.snapshot().since(&before);
        assert_eq!(window.count(), 100);
        let p50 = window.quantile_ms(0.5).unwrap();
        let p99 = window.quantile_ms(0.99).unwrap();
        assert!((49.0..=51.0).contains(&p50), "{p50}");
        assert!((97.0..=101.0).contains(&p99), "{p99}");
        assert_eq!(Histogram::new().snapshot().quantile_ms(0.5), None);
    }

    #[test]
    fn counts_subtract() {
        let stats = Stats::new();
        stats.add(Count::Heartbeats, 5);
        let before = stats.snapshot();
        stats.inc(Count::Heartbeats);
        stats.inc(Count::AmShutdowns);
        let window = stats.snapshot().since(&before);
        assert_eq!((window.count(Count::Heartbeats), window.count(Count::AmShutdowns)), (1, 1));
    }
}
