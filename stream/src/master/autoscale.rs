//! DS2-style autoscaling (Kalavri et al., OSDI 2018), pure: each operator's parallelism from
//! its *true* processing rate (records per second of busy time, so waiting for input or for
//! credit does not count) against the rate its input must sustain, propagated from the
//! sources in topological order.
//!
//! DS2's model alone flaps on a real machine; these rules make its decisions settle
//! (stream/README.md, *Autoscaling*, says the same for users):
//!
//! 1. **Windows, not samples.** Rates are the change of the instances' counters over the last
//!    `max(cooldown_ms, 2 s)` (never one report), and only from [`WARMUP`] after the latest
//!    deployment or rescale ended: a checkpoint's pause and catch-up fall inside one window and
//!    cancel out, and new instances' catch-up is not taken for load. Snapshot time is not busy
//!    time (the workers count busy time around batches only), so the true rate is not lowered
//!    by checkpoints either. Nothing is decided before the window is full, so two decisions are
//!    at least `WARMUP + window` apart.
//! 2. **Hysteresis.** Up when the current parallelism would run above `target_utilization`, to
//!    the least that runs at or below it; down only to a parallelism predicted to run at or
//!    below `target_utilization ×` [`SCALE_DOWN_MARGIN`].
//! 3. **The machine.** Instances that share cores each measure slower, so DS2 extrapolates
//!    more capacity than more instances bring. A scale-up after which the stage still runs
//!    above its target is judged on the next window: if the stage's capacity (instances × true
//!    rate) grew by less than [`EFFECTIVENESS`] of the increase they promised, the
//!    parallelism that delivers what was measured becomes a ceiling for [`CEILING_HOLD`] (at
//!    least 10 cooldowns), and the stage goes back to it.
//! 4. **What arrives.** A throttled generator must sustain its `rate` × instances; a source
//!    that reports its backlog (files, NATS) what it read plus what its backlog grew; any
//!    other what it emits per unblocked second. Backpressure alone says nothing about a source
//!    that can tell what arrives: a held-back source is blocked most of the time, and
//!    dividing by its unblocked time would ask for many times the input.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use spindle_protocol::{AutoscaleSpec, OperatorKind};

use crate::control::InstanceMetrics;
use crate::graph::{Graph, Layout};
use crate::wire::InstanceId;

/// Measuring starts this long after a deployment or rescale ended: new instances catch up on
/// what queued while they paused, and that backlog is not the input rate.
pub const WARMUP: Duration = Duration::from_secs(3);
/// The shortest window: workers report once a second, so it spans at least two reports.
pub const MIN_WINDOW: Duration = Duration::from_secs(2);
/// A scale-down's predicted utilization must be at most target × this. 0.8 leaves a band of at
/// least 25% between the thresholds at every parallelism (at `p` the stage stays while its
/// utilization is in `(target × 0.8 × (p-1)/p, target]`), so a scale-up is undone only when
/// the measured load falls by more than 20%, a scale-down only when it rises by more than
/// 25% — beyond what ±15% noise leaves in a window's average.
pub const SCALE_DOWN_MARGIN: f64 = 0.8;
/// A scale-up from `p` to `q` must raise the stage's capacity by at least this fraction of the
/// increase it promised (capacity × `q/p`): instances that wait for cores deliver far less.
/// Flink's autoscaler asks a tenth; a third still passes a doubling that brings +50% on a
/// busy machine, and catches a 1 → 5 on 2 cores (+100% of a promised +400%).
pub const EFFECTIVENESS: f64 = 1.0 / 3.0;
/// How long a ceiling found by an ineffective scale-up holds (or 10 cooldowns if longer): the
/// machine may change, but trying again often is a rescale up and back each time.
pub const CEILING_HOLD: Duration = Duration::from_secs(300);

/// What one stage did over the window, summed over its instances.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageRates {
    /// Records its instances took in per second.
    pub records_in_per_s: f64,
    /// Records they sent on per second (a source's: what it read).
    pub records_out_per_s: f64,
    /// Sum of the instances' busy fractions (2 instances fully busy: 2.0).
    pub busy: f64,
    /// Mean backpressured fraction of the instances.
    pub backpressured: f64,
    /// Growth of the sources' backlog, records per second (`None`: they do not report one).
    pub backlog_growth_per_s: Option<f64>,
}

/// What a rescalable stage must do and can do, by DS2.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Demand {
    /// Records per second its input must sustain.
    pub rate_to_sustain: f64,
    /// Records one instance processes per busy second.
    pub true_rate: f64,
}

impl Demand {
    /// Predicted busy fraction of each of `instances`.
    pub fn utilization(&self, instances: u32) -> f64 {
        self.rate_to_sustain / (self.true_rate * f64::from(instances.max(1)))
    }
}

/// DS2's demand on every rescalable stage (`None` for the others, and for stages with no input
/// or no busy time yet: nothing to measure a true rate from).
pub fn ds2(graph: &Graph, rates: &[StageRates], instances: &[u32]) -> Vec<Option<Demand>> {
    let mut target_out = vec![0.0f64; graph.stages.len()];
    let mut demands = vec![None; graph.stages.len()];
    for stage in topological(graph) {
        let spec = &graph.stages[stage].spec;
        let observed = rates[stage];
        if spec.kind().is_source() {
            target_out[stage] = match (spec.kind(), spec.rate, observed.backlog_growth_per_s) {
                // Throttled: it emits `rate` per instance, catching up after it was held back.
                (OperatorKind::Generator, Some(rate), _) => rate as f64 * f64::from(instances[stage]),
                // What arrives: what it read plus what its backlog grew (a shrinking backlog
                // is read faster than it arrives).
                (_, _, Some(growth)) => (observed.records_out_per_s + growth).max(0.0),
                // Nothing says what arrives: what it could emit if never backpressured.
                _ => observed.records_out_per_s / (1.0 - observed.backpressured).max(0.05),
            };
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
        let rate_to_sustain = observed.records_in_per_s * scale;
        let selectivity = if observed.records_in_per_s > 0.0 {
            observed.records_out_per_s / observed.records_in_per_s
        } else {
            1.0
        };
        target_out[stage] = rate_to_sustain * selectivity;
        if spec.is_rescalable() && observed.records_in_per_s > 0.0 && observed.busy > 0.0 {
            demands[stage] = Some(Demand {
                rate_to_sustain,
                true_rate: observed.records_in_per_s / observed.busy,
            });
        }
    }
    demands
}

/// The parallelism a stage running `current` instances should have (rule 2), within
/// `lower..=upper` (`upper` carries a ceiling of rule 3, so a stage above it goes down to it).
pub fn size(current: u32, demand: Demand, target_utilization: f64, lower: u32, upper: u32) -> u32 {
    let instances_at = |utilization: f64| {
        // Float error must not turn exactly 2.0 instances into 3.
        let exact = demand.rate_to_sustain / (demand.true_rate * utilization);
        (exact - 1e-9).ceil().max(1.0).min(f64::from(u32::MAX)) as u32
    };
    let wanted = if demand.utilization(current) > target_utilization {
        instances_at(target_utilization)
    } else {
        instances_at(target_utilization * SCALE_DOWN_MARGIN).min(current)
    };
    wanted.clamp(lower, upper.max(lower))
}

/// One report of an instance's counters.
#[derive(Debug, Clone, Copy)]
struct Reading {
    at: Instant,
    records_in: u64,
    records_out: u64,
    busy_ns: u64,
    backpressured_ns: u64,
    lag: Option<u64>,
}

/// A scale-up whose effect the next window judges.
#[derive(Debug, Clone, Copy)]
struct ScaleUp {
    stage: usize,
    from: u32,
    to: u32,
    /// Instances × true rate before it.
    capacity_before: f64,
    /// One instance's true rate before it: what a ceiling is counted in.
    true_rate_before: f64,
}

/// A parallelism a stage is not scaled beyond, found by a scale-up that did not help.
#[derive(Debug, Clone, Copy)]
struct Ceiling {
    parallelism: u32,
    /// The machine may change: the parallelism above is tried again after this.
    until: Instant,
}

/// A change the autoscaler wants, and why.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub stage: usize,
    pub from: u32,
    pub to: u32,
    pub demand: Demand,
    /// Set when the stage goes back to a ceiling an ineffective scale-up found.
    pub ceiling: Option<u32>,
}

/// The autoscaler's memory between decisions: readings over the window, when measuring may
/// start, the scale-up being judged and the ceilings found.
#[derive(Debug, Default)]
pub struct Autoscaler {
    /// Readings of the live instances, oldest first, as far back as one window needs.
    readings: BTreeMap<InstanceId, VecDeque<Reading>>,
    /// The instances by stage when last seen: a change is a deployment or a rescale.
    seen: Vec<Vec<InstanceId>>,
    /// Readings count from here (the latest change ended [`WARMUP`] before).
    measuring_since: Option<Instant>,
    /// The latest scale-up, until the first window after it says whether it helped.
    judging: Option<ScaleUp>,
    /// By stage: the parallelism not to exceed, found by a scale-up that did not help.
    ceilings: BTreeMap<usize, Ceiling>,
}

/// The window rates are averaged over.
pub fn window(settings: &AutoscaleSpec) -> Duration {
    Duration::from_millis(settings.cooldown_ms).max(MIN_WINDOW)
}

impl Autoscaler {
    /// Keeps the workers' reports (only as far back as a window needs).
    pub fn record(&mut self, now: Instant, samples: &[InstanceMetrics], settings: &AutoscaleSpec) {
        let keep_from = now.checked_sub(window(settings) + Duration::from_secs(2));
        for sample in samples {
            let readings = self.readings.entry(sample.id).or_default();
            readings.push_back(Reading {
                at: now,
                records_in: sample.records_in,
                records_out: sample.records_out,
                busy_ns: sample.busy_ns,
                backpressured_ns: sample.backpressured_ns,
                lag: sample.lag,
            });
            // The newest reading older than a window is the baseline: keep it, drop older ones.
            while let Some(keep_from) = keep_from
                && readings.len() > 1
                && readings[1].at <= keep_from
            {
                readings.pop_front();
            }
        }
    }

    /// The change to make now, if any. `changing`: a rescale is under way or a parallelism is
    /// wanted that does not run yet (measure nothing until it is done).
    pub fn decide(
        &mut self,
        now: Instant,
        graph: &Graph,
        layout: &Layout,
        changing: bool,
        settings: &AutoscaleSpec,
        key_groups: u32,
    ) -> Option<Decision> {
        let instances: Vec<Vec<InstanceId>> = layout.iter().map(|placed| placed.iter().map(|p| p.id).collect()).collect();
        if changing || instances != self.seen || self.measuring_since.is_none() {
            self.readings.retain(|id, _| instances.iter().flatten().any(|live| live == id));
            self.seen = instances;
            self.measuring_since = Some(now + WARMUP);
            return None;
        }
        let since = self.measuring_since?;
        let window = window(settings);
        if now < since + window {
            return None;
        }
        let rates = self.window_rates(since, window)?;
        let current: Vec<u32> = self.seen.iter().map(|ids| ids.len() as u32).collect();
        let demands = ds2(graph, &rates, &current);
        self.ceilings.retain(|_, ceiling| ceiling.until > now);
        self.judge(now, &current, &demands, settings);
        for (stage, demand) in demands.iter().enumerate() {
            let Some(demand) = *demand else { continue };
            let spec = &graph.stages[stage].spec;
            let ceiling = self.ceilings.get(&stage).map(|ceiling| ceiling.parallelism);
            let upper = settings
                .max
                .min(if spec.is_keyed() { key_groups } else { u32::MAX })
                .min(ceiling.unwrap_or(u32::MAX));
            let to = size(current[stage], demand, settings.target_utilization, settings.min, upper);
            if to == current[stage] {
                continue;
            }
            if to > current[stage] {
                self.judging = Some(ScaleUp {
                    stage,
                    from: current[stage],
                    to,
                    capacity_before: demand.true_rate * f64::from(current[stage]),
                    true_rate_before: demand.true_rate,
                });
            }
            return Some(Decision {
                stage,
                from: current[stage],
                to,
                demand,
                ceiling: ceiling.filter(|&ceiling| to == ceiling && to < current[stage]),
            });
        }
        None
    }

    /// Rule 3: did the last scale-up raise the capacity it promised? If not, the parallelism
    /// that delivers what it measured (at the per-instance rate before) is a ceiling. Judged
    /// only while the stage still runs above its target: one that reached it was helped enough
    /// (its instances may well be slower each, as busier machines are; that is no reason to
    /// go back).
    fn judge(&mut self, now: Instant, current: &[u32], demands: &[Option<Demand>], settings: &AutoscaleSpec) {
        let Some(scale_up) = self.judging else { return };
        if current[scale_up.stage] != scale_up.to {
            self.judging = None; // something else changed it: nothing to judge
            return;
        }
        let Some(demand) = demands[scale_up.stage] else { return };
        self.judging = None;
        if demand.utilization(scale_up.to) <= settings.target_utilization {
            return;
        }
        let capacity = demand.true_rate * f64::from(scale_up.to);
        let promised = f64::from(scale_up.to) / f64::from(scale_up.from);
        if capacity >= scale_up.capacity_before * (1.0 + EFFECTIVENESS * (promised - 1.0)) {
            return;
        }
        let delivers = (capacity / scale_up.true_rate_before).round() as u32;
        let parallelism = delivers.clamp(scale_up.from, scale_up.to - 1);
        let hold = CEILING_HOLD.max(Duration::from_millis(settings.cooldown_ms.saturating_mul(10)));
        tracing::info!(
            stage = scale_up.stage,
            from = scale_up.from,
            to = scale_up.to,
            capacity_before = scale_up.capacity_before.round(),
            capacity_after = capacity.round(),
            ceiling = parallelism,
            "a scale-up did not raise the capacity it promised (instances share cores?): capping"
        );
        self.ceilings.insert(
            scale_up.stage,
            Ceiling {
                parallelism,
                until: now + hold,
            },
        );
    }

    /// Every stage's rates over the window: per instance, from its newest reading at least a
    /// window before its latest (and not before `since`) to its latest. `None` while an
    /// instance has no such pair.
    fn window_rates(&self, since: Instant, window: Duration) -> Option<Vec<StageRates>> {
        let mut stages = Vec::with_capacity(self.seen.len());
        for ids in &self.seen {
            let mut rates = StageRates::default();
            for id in ids {
                let readings = self.readings.get(id)?;
                let last = readings.back()?;
                let first = readings
                    .iter()
                    .rev()
                    .find(|reading| reading.at + window <= last.at)
                    .filter(|reading| reading.at >= since)?;
                let seconds = last.at.duration_since(first.at).as_secs_f64();
                let per_s = |after: u64, before: u64| after.saturating_sub(before) as f64 / seconds;
                rates.records_in_per_s += per_s(last.records_in, first.records_in);
                rates.records_out_per_s += per_s(last.records_out, first.records_out);
                rates.busy += (per_s(last.busy_ns, first.busy_ns) / 1e9).min(1.0);
                rates.backpressured += (per_s(last.backpressured_ns, first.backpressured_ns) / 1e9).min(1.0);
                if let (Some(now_lag), Some(then_lag)) = (last.lag, first.lag) {
                    *rates.backlog_growth_per_s.get_or_insert(0.0) += (now_lag as f64 - then_lag as f64) / seconds;
                }
            }
            if !ids.is_empty() {
                rates.backpressured /= ids.len() as f64;
            }
            stages.push(rates);
        }
        Some(stages)
    }
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
#[path = "autoscale_tests.rs"]
mod tests;
