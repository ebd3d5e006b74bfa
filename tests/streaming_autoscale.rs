//! DS2 autoscaling that settles, with real AM and worker processes on this machine: a steady,
//! throttled input that needs 2 instances of the window operator is reached from 1 and from 4
//! in at most 3 rescales, and then nothing is rescaled while the input stays steady.
//!
//! The job is `examples/stream-window-count.toml` with sliding windows (1 s every 25 ms: each
//! record updates 40 windows), so the window operator is the cost and the generators and the
//! data plane's per-batch work are almost free. How fast one window instance is depends on
//! the build and the machine, so the test first measures it (a job without autoscaling, its
//! window instance nearly or fully busy), then throttles the generators to 72% of that. One
//! instance runs at 0.72 or more (the measure is of a full instance, the fastest it gets),
//! above the target of 0.7; two run at 0.36 each, or 0.65 where each is 45% slower for
//! sharing the 2 cores (as measured here beside builds); one alone would run above
//! 0.7 × 0.8 = 0.56. So 2 is what the rules settle on — while the machine's speed holds: a
//! run beside builds that take the cores can make 3 (or, when two instances barely beat one,
//! 1) right for a while, and the test fails then, printing what the AM measured.
//!
//! Timings: cooldown 8 s (after every change, a 3 s warm-up and an 8 s window before the next
//! decision: long enough to average the instances' noisy busy time); the quiet period is 60 s
//! after the start from 1 and 30 s after the start from 4, to keep the test near 3 minutes.

mod support;

use std::time::{Duration, Instant};

use spindle_protocol::{AppId, AutoscaleSpec, JobSpec, RmClient, StreamDetail};
use support::{CleanupDir, start_local, stream_detail, wait_for_app_end, wait_for_checkpoint};

/// The example job: generators throttled to `rate` each, the window `count` with
/// `parallelism` instances over 1 s windows sliding by 25 ms.
fn job(name: &str, rate: u64, parallelism: u32, autoscale: Option<AutoscaleSpec>) -> JobSpec {
    let text = std::fs::read_to_string(support::examples_dir().join("stream-window-count.toml")).unwrap();
    let mut spec: JobSpec = toml::from_str(&text).unwrap();
    spec.name = name.to_owned();
    let stream = spec.stream.as_mut().unwrap();
    stream.autoscale = autoscale;
    for operator in &mut stream.operators {
        match operator.name.as_str() {
            "events" => operator.rate = Some(rate),
            "count" => {
                operator.parallelism = parallelism;
                operator.slide_ms = Some(25);
            }
            _ => {}
        }
    }
    spec.validate().unwrap();
    spec
}

fn count_operator(detail: &StreamDetail) -> &spindle_protocol::OperatorStatus {
    detail.operators.iter().find(|op| op.name == "count").expect("the window operator")
}

/// Records one window instance processes per busy second, and how busy it was, measured
/// over 8 reports of a job at `rate` per generator with one window instance.
async fn measure_true_rate(client: &RmClient, rate: u64) -> (f64, f64) {
    let app_id = client.submit(&job("autoscale-calibration", rate, 1, None)).await.unwrap();
    wait_for_checkpoint(client, app_id, 0, 0, "the calibration job's first checkpoint").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (mut records, mut busy) = (0.0, 0.0);
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let detail = stream_detail(client, app_id).await.expect("the calibration job's detail");
        let instance = &count_operator(&detail).instances[0];
        records += instance.records_in_per_s;
        busy += instance.busy;
    }
    stop(client, app_id).await;
    assert!(busy > 0.0 && records > 0.0, "the window instance did nothing");
    (records / busy, busy / 8.0)
}

/// The true rate of a window instance that is nearly or fully busy (as it is in the runs:
/// fuller batches make it faster than when mostly idle): measured at 2 × 50,000/s (more than
/// a debug build's instance takes), and again nearer its speed if that left it idle.
async fn calibrate(client: &RmClient) -> f64 {
    let mut rate = 50_000;
    loop {
        let (true_rate, busy) = measure_true_rate(client, rate).await;
        eprintln!("calibration at 2 × {rate}/s: {true_rate:.0} records per busy second, busy {busy:.2}");
        if busy >= 0.6 || rate > 10_000_000 {
            return true_rate;
        }
        rate = (true_rate * 0.9 / 2.0) as u64;
    }
}

/// The rescales of `count` seen so far, as (from, to), in order; polled often enough to see
/// every one (the autoscaler leaves at least 11 s between two). Also what the window instances
/// measured, once a second, to show when the test fails.
#[derive(Default)]
struct Watch {
    rescales: Vec<(u64, u32, u32)>,
    trace: Vec<String>,
    last_traced: Option<Instant>,
}

impl Watch {
    /// Polls the job once; the detail if it has one.
    async fn poll(&mut self, client: &RmClient, app_id: AppId) -> Option<StreamDetail> {
        let detail = stream_detail(client, app_id).await?;
        if let Some(rescale) = &detail.last_rescale
            && rescale.operator == "count"
            && self.rescales.last().is_none_or(|last| last.0 != rescale.started_at_ms)
        {
            eprintln!("rescale of count: {} → {}", rescale.from, rescale.to);
            self.rescales.push((rescale.started_at_ms, rescale.from, rescale.to));
        }
        if self.last_traced.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            self.last_traced = Some(Instant::now());
            let count = count_operator(&detail);
            let instances: Vec<String> = count
                .instances
                .iter()
                .map(|i| format!("{:.0}/s busy {:.2}", i.records_in_per_s, i.busy))
                .collect();
            self.trace.push(format!(
                "count {} → {}: {}",
                count.parallelism,
                count.target_parallelism,
                instances.join(", ")
            ));
        }
        Some(detail)
    }

    fn steps(&self) -> Vec<(u32, u32)> {
        self.rescales.iter().map(|(_, from, to)| (*from, *to)).collect()
    }

    /// Prints what was measured and the AM's decisions, then fails.
    async fn fail(&self, client: &RmClient, app_id: AppId, why: String) -> ! {
        for line in self.trace.iter().rev().take(40).rev() {
            eprintln!("  {line}");
        }
        print_decisions(client, app_id).await;
        panic!("{why}");
    }
}

/// Starts the job with `start` window instances; it must settle at `wanted` in at most 3
/// rescales and then stay there for `quiet`.
async fn settles(client: &RmClient, rate: u64, start: u32, wanted: u32, quiet: Duration) {
    let autoscale = AutoscaleSpec {
        min: 1,
        max: 4,
        cooldown_ms: 8000,
        target_utilization: 0.7,
    };
    let app_id = client
        .submit(&job(&format!("autoscale-from-{start}"), rate, start, Some(autoscale)))
        .await
        .unwrap();
    let submitted = Instant::now();
    let mut watch = Watch::default();
    let deadline = submitted + Duration::from_secs(120);
    loop {
        if let Some(detail) = watch.poll(client, app_id).await {
            let count = count_operator(&detail);
            let done = detail.last_rescale.as_ref().is_some_and(|r| r.finished_at_ms.is_some());
            if count.parallelism == wanted && count.target_parallelism == wanted && done {
                break;
            }
        }
        if Instant::now() > deadline {
            let why = format!("from {start}: not settled at {wanted} within 120 s: {:?}", watch.steps());
            watch.fail(client, app_id, why).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = submitted.elapsed();
    if watch.rescales.len() > 3 {
        let why = format!("from {start}: more than 3 rescales: {:?}", watch.steps());
        watch.fail(client, app_id, why).await;
    }

    let quiet_from = Instant::now();
    while quiet_from.elapsed() < quiet {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let detail = watch.poll(client, app_id).await.expect("the job's detail");
        let count = count_operator(&detail);
        if (count.parallelism, count.target_parallelism) != (wanted, wanted) {
            let why = format!(
                "from {start}: settled at {wanted} ({:?}), then {} → {} after {:.0} s of a steady input",
                watch.steps(),
                count.parallelism,
                count.target_parallelism,
                quiet_from.elapsed().as_secs_f64()
            );
            watch.fail(client, app_id, why).await;
        }
    }
    eprintln!(
        "from {start}: {:?} in {:.0} s, then none for {} s",
        watch.steps(),
        took.as_secs_f64(),
        quiet.as_secs()
    );
    print_decisions(client, app_id).await;
    stop(client, app_id).await;
}

/// Kills a job and lets its containers go, so the next one has the cores to itself.
async fn stop(client: &RmClient, app_id: AppId) {
    client.kill(app_id).await.unwrap();
    wait_for_app_end(client, app_id, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
}

/// The AM's log lines of its autoscaling decisions (what it measured), for whoever reads the
/// test's output.
async fn print_decisions(client: &RmClient, app_id: AppId) {
    let Ok(report) = client.app(app_id).await else { return };
    let Some(am) = report.attempts.last().and_then(|attempt| attempt.am_container) else {
        return;
    };
    for stream in ["stdout", "stderr"] {
        let log = client.logs(am, stream).await.unwrap_or_default();
        for line in log.lines().filter(|line| line.contains("autoscaling") || line.contains("capping")) {
            eprintln!("  AM: {line}");
        }
    }
}

// Out of the default run: it calibrates against one instance's measured speed, which swings
// many-fold when anything else loads the 2 cores, and then fails (it failed in a CI-like run).
// Run it on an idle machine with SPINDLE_RUN_TIMING_TESTS=1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_input_is_reached_from_1_and_from_4_and_then_kept() {
    if std::env::var_os("SPINDLE_RUN_TIMING_TESTS").is_none() {
        eprintln!("skipped: timing-sensitive, set SPINDLE_RUN_TIMING_TESTS=1 on an idle machine to run it");
        return;
    }
    let dir = support::shared_tempdir("spindle-test-");
    let cluster = start_local(dir.path()).await;
    let _cleanup = CleanupDir(dir.path());
    // The containers run in the agents' own work root: a failing run must not leave them.
    let work_root = cluster.work_root.clone();
    let _cleanup_containers = CleanupDir(&work_root);
    let client = cluster.client();

    let true_rate = calibrate(&client).await;
    let rate = (true_rate * 0.72 / 2.0) as u64;
    eprintln!("one window instance: {true_rate:.0} records per busy second; generators: 2 × {rate}/s");

    settles(&client, rate, 1, 2, Duration::from_secs(60)).await;
    settles(&client, rate, 4, 2, Duration::from_secs(30)).await;
    let _ = cluster.shutdown().await;
}
