//! Straggler detection, LATE-style: estimate each running task's time to finish from its
//! progress rate, and give a second attempt to the ones a fresh attempt would likely beat.
//!
//! A task is a straggler when all of these hold:
//! - it has run at least `min_runtime_ms` (early rates are noise);
//! - its estimated total time (`elapsed + remaining`, `remaining = (1 - progress) / rate`,
//!   `rate = progress / elapsed`) exceeds `slowness_factor` × the median duration of the
//!   stage's succeeded tasks;
//! - its estimated remaining time exceeds that median: a fresh attempt should finish first.
//!
//! A task that reported no progress at all has an infinite estimate. Stragglers are ranked by
//! remaining time, longest first. Without a succeeded task in the stage there is no median,
//! and nothing is speculated.

use super::plan::SpeculationSettings;

/// The median of `durations` (the lower middle for an even count); `None` when empty.
pub(super) fn median_ms(mut durations: Vec<u64>) -> Option<u64> {
    if durations.is_empty() {
        return None;
    }
    durations.sort_unstable();
    Some(durations[(durations.len() - 1) / 2])
}

/// Estimated milliseconds until a task that has run `elapsed_ms` with `progress` finishes;
/// infinite without progress.
pub(super) fn estimated_remaining_ms(elapsed_ms: u64, progress: f64) -> f64 {
    let progress = progress.clamp(0.0, 1.0);
    if progress <= 0.0 || elapsed_ms == 0 {
        return f64::INFINITY;
    }
    let rate = progress / elapsed_ms as f64;
    (1.0 - progress) / rate
}

/// `Some(remaining_ms)` if the task is a straggler by the rules above.
pub(super) fn straggler_remaining_ms(settings: &SpeculationSettings, median_ms: u64, elapsed_ms: u64, progress: f64) -> Option<f64> {
    if elapsed_ms < settings.min_runtime_ms {
        return None;
    }
    let remaining = estimated_remaining_ms(elapsed_ms, progress);
    let estimated_total = elapsed_ms as f64 + remaining;
    let slow = estimated_total > settings.slowness_factor * median_ms as f64;
    let fresh_attempt_wins = remaining > median_ms as f64;
    (slow && fresh_attempt_wins).then_some(remaining)
}

/// Speculative attempts allowed to run at once for a job of `task_count` tasks.
pub(super) fn max_running_speculations(settings: &SpeculationSettings, task_count: usize) -> usize {
    ((task_count as f64 * settings.max_running_fraction).floor() as usize).max(1)
}
