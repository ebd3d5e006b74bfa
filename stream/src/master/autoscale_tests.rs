//! The autoscaler on synthetic measurements. DS2's arithmetic on one window's rates, then a
//! simulated job (generators → 1 s window `count` → sink) whose window instances each process
//! `TRUE_RATE` records per busy second — less when they outnumber the machine's cores —
//! reported once a second as workers do, with time moved by hand: steady inputs from below and
//! above, ±15% noise, checkpoint spikes, steps up and down, and cores that run out.

use super::*;
use crate::graph::{Placed, fresh_layout, window_count_spec};

/// Records one uncontended window instance processes per busy second.
const TRUE_RATE: f64 = 1e6;
const COUNT: usize = 1;

fn settings(max: u32) -> AutoscaleSpec {
    AutoscaleSpec {
        min: 1,
        max,
        cooldown_ms: 5000,
        target_utilization: 0.7,
    }
}

/// The example pipeline: generators (2) → key_by → window `count` → discard sink.
fn graph(generator_rate: Option<u64>) -> Graph {
    let mut spec = window_count_spec(2);
    spec.operators[0].rate = generator_rate;
    Graph::build(&spec)
}

#[test]
fn a_saturated_keyed_operator_behind_backpressured_sources_grows() {
    // Sources that report no backlog emit 1 M/s but are blocked half the time: they could do
    // 2 M/s. Two window instances fully busy process 1 M/s: 0.5 M/s each per busy second.
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
    let demands = ds2(&graph(None), &rates, &[2, 2, 1]);
    assert_eq!(demands[0], None, "sources keep their parallelism");
    let count = demands[COUNT].unwrap();
    assert_eq!((count.rate_to_sustain, count.true_rate), (2e6, 5e5));
    // 2 M/s / (0.5 M/s × 0.8) = 5.
    assert_eq!(size(2, count, 0.8, 1, 8), 5);
    assert_eq!(size(2, count, 0.8, 1, 4), 4, "within the bounds");
    assert_eq!(size(1, demands[2].unwrap(), 0.8, 1, 8), 1);
}

#[test]
fn a_throttled_generator_asks_for_its_rate_and_a_backlog_for_what_arrives() {
    // Held back, the generators (2 × 300,000/s declared) emit 200,000/s and are blocked 90% of
    // the time: they must sustain 600,000/s, not 2 M/s.
    let rates = |backlog_growth_per_s| {
        [
            StageRates {
                records_out_per_s: 2e5,
                backpressured: 0.9,
                backlog_growth_per_s,
                ..Default::default()
            },
            StageRates {
                records_in_per_s: 2e5,
                records_out_per_s: 2e3,
                busy: 1.0,
                ..Default::default()
            },
            StageRates::default(),
        ]
    };
    let count = ds2(&graph(Some(300_000)), &rates(None), &[2, 1, 1])[COUNT].unwrap();
    assert_eq!(count.rate_to_sustain, 6e5);
    // A source that reports its backlog: what it read plus how fast the backlog grew.
    let count = ds2(&graph(None), &rates(Some(1e5)), &[2, 1, 1])[COUNT].unwrap();
    assert_eq!(count.rate_to_sustain, 3e5);
    // Draining a backlog faster than it arrives is not more input.
    let count = ds2(&graph(None), &rates(Some(-1e5)), &[2, 1, 1])[COUNT].unwrap();
    assert_eq!(count.rate_to_sustain, 1e5);
    // No input, no true rate: nothing to decide on.
    assert_eq!(ds2(&graph(None), &[StageRates::default(); 3], &[2, 1, 1])[COUNT], None);
}

#[test]
fn sizing_scales_down_only_with_a_margin() {
    let demand = |rate_to_sustain| Demand {
        rate_to_sustain,
        true_rate: TRUE_RATE,
    };
    // Above the target: up to the least parallelism at or below it.
    assert_eq!(size(1, demand(1.5e6), 0.7, 1, 8), 3);
    assert_eq!(size(2, demand(1.4e6), 0.7, 1, 8), 2, "exactly at the target stays");
    // Below: down only to what runs at or below 0.7 × 0.8 = 0.56.
    assert_eq!(size(4, demand(1.5e6), 0.7, 1, 8), 3, "2 would run at 0.75");
    assert_eq!(size(3, demand(1.5e6), 0.7, 1, 8), 3);
    assert_eq!(size(3, demand(1.1e6), 0.7, 1, 8), 2, "2 runs at 0.55");
    assert_eq!(size(2, demand(1.2e6), 0.7, 1, 8), 2, "1 would run at 1.2");
    assert_eq!(size(2, demand(0.6e6), 0.7, 1, 8), 2, "1 would run at 0.6, above 0.56");
    assert_eq!(size(2, demand(0.5e6), 0.7, 1, 8), 1);
    // The bounds win, and a ceiling below the current parallelism scales down to it.
    assert_eq!(size(8, demand(1e3), 0.7, 2, 8), 2);
    assert_eq!(size(5, demand(3e6), 0.7, 1, 2), 2);
}

/// How the simulated job's input arrives.
#[derive(Clone, Copy, PartialEq)]
enum Input {
    /// Generators throttled to the input rate (`rate` declared in the spec).
    Throttled,
    /// A source that reads what arrives and reports its backlog.
    Backlogged,
}

/// A job on a simulated machine, reported once a second, decided on four times a second.
struct Sim {
    graph: Graph,
    settings: AutoscaleSpec,
    autoscaler: Autoscaler,
    input: Input,
    /// Records per second arriving, by second since the start.
    rate: Box<dyn Fn(u64) -> f64>,
    /// Cores the window instances share (`None`: one each).
    cores: Option<f64>,
    /// Noise on the input and on busy time, as a fraction either way.
    noise: f64,
    /// Every this many seconds, a checkpoint halves the window instances' speed for a second.
    checkpoint_every: Option<u64>,
    seconds: u64,
    now: Instant,
    layout: Layout,
    next_id: u64,
    /// Records arrived and not yet processed.
    backlog: f64,
    counters: BTreeMap<InstanceId, InstanceMetrics>,
    /// When a rescale being carried out ends, and the parallelism it brings.
    rescaling: Option<(Instant, u32)>,
    /// (second, from, to) of every rescale decided.
    rescales: Vec<(u64, u32, u32)>,
    random: u64,
}

impl Sim {
    fn new(input: Input, rate: impl Fn(u64) -> f64 + 'static, count_parallelism: u32, max: u32) -> Sim {
        let generator_rate = (input == Input::Throttled).then(|| (rate(0) / 2.0) as u64);
        let graph = graph(generator_rate);
        let mut next_id = 0;
        let layout = fresh_layout(&graph, &[2, count_parallelism, 1], 128, || {
            next_id += 1;
            next_id
        });
        Sim {
            graph,
            settings: settings(max),
            autoscaler: Autoscaler::default(),
            input,
            rate: Box::new(rate),
            cores: None,
            noise: 0.0,
            checkpoint_every: None,
            seconds: 0,
            now: Instant::now(),
            layout,
            next_id,
            backlog: 0.0,
            counters: BTreeMap::new(),
            rescaling: None,
            rescales: Vec::new(),
            random: 0x9e37_79b9_7f4a_7c15,
        }
    }

    fn parallelism(&self) -> u32 {
        self.layout[COUNT].len() as u32
    }

    /// Uniform in [-1, 1] (xorshift: the same sequence every run).
    fn jitter(&mut self) -> f64 {
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        (self.random % 20_001) as f64 / 10_000.0 - 1.0
    }

    /// Records one window instance processes per busy second at `parallelism`.
    fn true_rate(&self, parallelism: u32) -> f64 {
        let shared = self.cores.map_or(1.0, |cores| (cores / f64::from(parallelism)).min(1.0));
        TRUE_RATE * shared
    }

    /// One second of the job, then the workers' reports.
    fn second(&mut self) {
        let p = self.parallelism();
        let checkpoint = self.checkpoint_every.is_some_and(|every| self.seconds % every == every - 1);
        let slowdown = if checkpoint { 0.5 } else { 1.0 };
        let arrived = (self.rate)(self.seconds) * (1.0 + self.noise * self.jitter());
        let true_rate = self.true_rate(p) * slowdown;
        let processed = (arrived + self.backlog).min(true_rate * f64::from(p));
        self.backlog += arrived - processed;
        let busy = (processed / true_rate * (1.0 + self.noise * self.jitter()) / f64::from(p)).min(1.0);
        let behind = self.backlog > 1.0;
        let lag = (self.input == Input::Backlogged).then_some((self.backlog / 2.0) as u64);
        let stages: [(f64, f64, f64, f64, Option<u64>); 3] = [
            // records in, records out, busy, backpressured fraction, lag — per instance
            (0.0, processed / 2.0, 0.05, if behind { 0.9 } else { 0.0 }, lag),
            (processed / f64::from(p), processed / 100.0 / f64::from(p), busy, 0.0, None),
            (processed / 100.0, 0.0, 0.001, 0.0, None),
        ];
        let mut samples = Vec::new();
        for (stage, (records_in, records_out, busy, backpressured, lag)) in stages.into_iter().enumerate() {
            for placed in &self.layout[stage] {
                let counter = self.counters.entry(placed.id).or_insert_with(|| InstanceMetrics {
                    id: placed.id,
                    ..Default::default()
                });
                counter.records_in += records_in as u64;
                counter.records_out += records_out as u64;
                counter.busy_ns += (busy * 1e9) as u64;
                counter.backpressured_ns += (backpressured * 1e9) as u64;
                counter.lag = lag;
                samples.push(counter.clone());
            }
        }
        self.seconds += 1;
        self.now += Duration::from_secs(1);
        self.autoscaler.record(self.now, &samples, &self.settings);
    }

    /// Runs `seconds` seconds, deciding 4 times a second and carrying out rescales in 1 s.
    fn run(&mut self, seconds: u64) {
        for _ in 0..seconds {
            self.second();
            for quarter in 0..4 {
                let now = self.now + Duration::from_millis(250 * quarter);
                if let Some((ends, to)) = self.rescaling
                    && now >= ends
                {
                    let ids: Vec<Placed> = (0..to)
                        .map(|index| {
                            self.next_id += 1;
                            Placed {
                                id: self.next_id,
                                index,
                                range: (0, 128),
                                worker: index as usize,
                            }
                        })
                        .collect();
                    self.layout[COUNT] = ids;
                    self.rescaling = None;
                }
                let changing = self.rescaling.is_some();
                let decision = self
                    .autoscaler
                    .decide(now, &self.graph, &self.layout, changing, &self.settings, 128);
                if let Some(decision) = decision {
                    assert_eq!(decision.stage, COUNT, "only the window operator changes: {decision:?}");
                    assert_eq!(decision.from, self.parallelism());
                    self.rescales.push((self.seconds, decision.from, decision.to));
                    self.rescaling = Some((now + Duration::from_secs(1), decision.to));
                }
            }
        }
    }

    /// Rescales decided from `second` on.
    fn rescales_since(&self, second: u64) -> Vec<(u64, u32, u32)> {
        self.rescales.iter().copied().filter(|(at, ..)| *at >= second).collect()
    }
}

/// Runs `sim` for a minute and then ten more: it must reach `wanted` in at most 3 rescales
/// within the minute and not rescale again.
fn settles_at(mut sim: Sim, wanted: u32) -> Sim {
    sim.run(60);
    assert_eq!(sim.parallelism(), wanted, "after a minute: {:?}", sim.rescales);
    assert!(sim.rescales.len() <= 3, "more than 3 rescales: {:?}", sim.rescales);
    let settled = sim.rescales.len();
    sim.run(600);
    assert_eq!(
        sim.rescales.len(),
        settled,
        "rescaled while the input was steady: {:?}",
        sim.rescales
    );
    sim
}

#[test]
fn a_steady_input_is_reached_from_below_and_from_above_and_kept() {
    // 1.5 M/s at 1 M/s per instance and 0.7: 3 instances (0.5 each); 2 would run at 0.75.
    for input in [Input::Throttled, Input::Backlogged] {
        for start in [1, 4, 8] {
            let sim = settles_at(Sim::new(input, |_| 1.5e6, start, 8), 3);
            let expected = if start == 3 { 0 } else { 1 };
            assert_eq!(sim.rescales.len(), expected, "from {start}: {:?}", sim.rescales);
        }
    }
}

#[test]
fn noise_of_15_percent_does_not_make_it_flap() {
    // Each 1 M/s per instance: 0.9 M/s on 2 runs at 0.45, 1.5 M/s on 3 at 0.5, 2.2 M/s on 4 at
    // 0.55; one fewer would run at 0.9, 0.75 and 0.73.
    for (rate, wanted) in [(0.9e6, 2), (1.5e6, 3), (2.2e6, 4)] {
        for start in [1, 4, 8] {
            let mut sim = Sim::new(Input::Backlogged, move |_| rate, start, 8);
            sim.noise = 0.15;
            settles_at(sim, wanted);
        }
    }
}

#[test]
fn an_instance_a_third_busy_is_left_alone() {
    // The case: 1 M/s with the window instance 33% busy scaled 1 → 2 and back.
    let mut sim = Sim::new(Input::Throttled, |_| 0.33e6, 1, 4);
    sim.noise = 0.15;
    sim.checkpoint_every = Some(5);
    let sim = settles_at(sim, 1);
    assert_eq!(sim.rescales, []);
}

#[test]
fn a_checkpoint_that_doubles_busy_time_for_a_second_is_averaged_out() {
    // At 0.5 M/s one instance runs at 0.5; in a checkpoint's second it runs at half speed, 100%
    // busy: taken alone, that second asks for 2 instances.
    let spike = Demand {
        rate_to_sustain: 0.5e6,
        true_rate: 0.5e6,
    };
    assert_eq!(size(1, spike, 0.7, 1, 8), 2);
    let mut sim = Sim::new(Input::Throttled, |_| 0.5e6, 1, 8);
    sim.checkpoint_every = Some(5);
    let sim = settles_at(sim, 1);
    assert_eq!(sim.rescales, []);
}

#[test]
fn steps_in_the_input_are_followed_within_two_cooldowns() {
    // 0.5 M/s for 2 minutes, then 1.5 M/s for 2 minutes, then 0.5 M/s again.
    let rate = |second: u64| if (120..240).contains(&second) { 1.5e6 } else { 0.5e6 };
    let mut sim = Sim::new(Input::Backlogged, rate, 1, 8);
    sim.noise = 0.05;
    let cooldown_s = sim.settings.cooldown_ms / 1000;
    let cooldowns = |n: u64| n * cooldown_s;
    sim.run(120);
    assert_eq!(sim.rescales, [], "0.5 M/s on one instance runs at 0.5");

    sim.run(120);
    let up = sim.rescales_since(120);
    assert!(up.len() <= 3 && !up.is_empty(), "{up:?}");
    assert!(up[0].0 <= 120 + cooldowns(2), "the step up at 120 s is followed late: {up:?}");
    assert!(up.iter().all(|(_, from, to)| to > from), "only up: {up:?}");
    assert_eq!(sim.parallelism(), 3);
    assert!(up.last().unwrap().0 < 180, "then steady: {up:?}");

    sim.run(120);
    let down = sim.rescales_since(240);
    assert!(down.len() <= 3 && !down.is_empty(), "{down:?}");
    assert!(down[0].0 <= 240 + cooldowns(2), "the step down at 240 s is followed late: {down:?}");
    assert!(down.iter().all(|(_, from, to)| to < from), "only down: {down:?}");
    assert_eq!(sim.parallelism(), 1);
    assert!(down.last().unwrap().0 < 300, "then steady: {down:?}");
}

#[test]
fn instances_that_share_two_cores_are_not_added_beyond_what_helps() {
    // 3 M/s on a machine with 2 cores for the window: any parallelism above 2 only slows each
    // instance down (busy time grows, throughput does not). DS2 alone would ask for 5, then 8.
    let mut sim = Sim::new(Input::Throttled, |_| 3e6, 1, 8);
    sim.cores = Some(2.0);
    sim.run(60);
    assert_eq!(sim.rescales.iter().map(|r| (r.1, r.2)).collect::<Vec<_>>(), [(1, 5), (5, 2)]);
    // The ceiling holds for CEILING_HOLD; then it is tried once more.
    sim.run(CEILING_HOLD.as_secs() - 60);
    assert_eq!(sim.rescales.len(), 2, "{:?}", sim.rescales);

    // From 4 (already slowed to half speed each): 8 does no better, so back to 4.
    let mut sim = Sim::new(Input::Throttled, |_| 3e6, 4, 8);
    sim.cores = Some(2.0);
    sim.run(60);
    assert_eq!(sim.rescales.iter().map(|r| (r.1, r.2)).collect::<Vec<_>>(), [(4, 8), (8, 4)]);
    sim.run(200);
    assert_eq!(sim.rescales.len(), 2, "{:?}", sim.rescales);

    // Where more instances do help, only less than promised, the last step back stays.
    let mut sim = Sim::new(Input::Throttled, |_| 1.5e6, 1, 8);
    sim.cores = Some(2.0);
    sim.run(60);
    assert_eq!(
        sim.rescales.iter().map(|r| (r.1, r.2)).collect::<Vec<_>>(),
        [(1, 3), (3, 4), (4, 3)]
    );
    sim.run(200);
    assert_eq!(sim.rescales.len(), 3, "{:?}", sim.rescales);
}

#[test]
fn instances_slower_each_but_within_the_target_are_kept() {
    // A busy machine: 2 instances each run at 60% of one's speed. 0.75 M/s on one runs at
    // 0.75; on two at 0.625 — below the target, so the scale-up helped enough, though the
    // capacity grew by only a fifth of what it promised.
    let mut sim = Sim::new(Input::Throttled, |_| 0.75e6, 1, 8);
    sim.cores = Some(1.2);
    let sim = settles_at(sim, 2);
    assert_eq!(sim.rescales.iter().map(|r| (r.1, r.2)).collect::<Vec<_>>(), [(1, 2)]);
}

#[test]
fn nothing_is_decided_during_a_change_nor_before_a_window_after_it() {
    let mut sim = Sim::new(Input::Throttled, |_| 1.5e6, 1, 8);
    // Warm-up (3 s) and a full window (5 s) after the deployment: the first decision.
    sim.run(8);
    assert_eq!(sim.rescales, []);
    sim.run(2);
    assert_eq!(sim.rescales.len(), 1, "{:?}", sim.rescales);
    let settings = sim.settings.clone();
    // A change under way: nothing, however long.
    let layout = sim.layout.clone();
    for _ in 0..100 {
        sim.now += Duration::from_secs(1);
        assert_eq!(sim.autoscaler.decide(sim.now, &sim.graph, &layout, true, &settings, 128), None);
    }
}
