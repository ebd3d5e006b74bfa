//! DS2 autoscaling that settles, with real AM and worker processes on this machine: a steady
//! input that needs 2 instances is reached from 1 and from 4 in at most 3 rescales, nothing is
//! rescaled for 60 s while the input stays steady, and a step up of the input is followed
//! within 2 cooldowns.
//!
//! The job reads lines the test appends to a file at a rate it controls (`file_source`,
//! following the file: a real external input whose backlog the autoscaler sees), keys them and
//! passes them through `paced` (`cli/examples/stream_user_operator.rs`), an operator that waits
//! 100 µs per record: one instance takes at most 10,000 records per busy second, on an idle or
//! a loaded machine alike (waiting needs no core). So the parallelism an input needs is known
//! without calibrating against the machine, as DS2's rules compute it (target 0.7, scale down
//! only to a parallelism that runs at ≤ 0.7 × 0.8 = 0.56):
//!
//! * 8,000 lines/s: 1 instance would be ≥ 0.8 busy, above 0.7, so 2 (0.4 each); from 4, down
//!   to 2 (≤ 0.56 while the per-record overhead of the worker stays under 40 µs), not to 1.
//! * 16,000 lines/s: 2 run at ≥ 0.8, so up to 3 (0.53); 3 stays (2 would be above 0.56).
//!
//! Cooldown 8 s: after every change a 3 s warm-up and an 8 s window before the next decision.
//! The whole test takes about 4 minutes.

mod support;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use spindle_protocol::{AppId, JobSpec, RmClient, StreamDetail};
use support::{CleanupDir, start_local, stream_detail, wait_for_app_end};

const COOLDOWN: Duration = Duration::from_secs(8);
/// A rate 1 instance cannot take below 0.7 busy and 2 take at 0.4 each.
const NEEDS_2: u64 = 8_000;
/// Twice that: 2 instances would run at 0.8, 3 at 0.53.
const NEEDS_3: u64 = 16_000;

/// file source (the test's lines) → key_by → `paced` (`start` instances, autoscaled 1..=4) →
/// discard.
fn job(name: &str, input: &std::path::Path, binary: &std::path::Path, start: u32) -> JobSpec {
    let text = format!(
        r#"
name = "{name}"
kind = "stream"

[stream]
checkpoint_interval_ms = 1000
worker = {{ vcores = 1, memory_mb = 256 }}
worker_command = ["{binary}"]
env = {{ PACED_US_PER_RECORD = "100" }}
autoscale = {{ min = 1, max = 4, cooldown_ms = {cooldown}, target_utilization = 0.7 }}

[[stream.operators]]
name = "lines"
kind = "file_source"
path = "{input}"

[[stream.operators]]
name = "by_key"
kind = "key_by"
input = ["lines"]
expr = "$1"

[[stream.operators]]
name = "paced"
kind = "user"
class = "paced"
keyed = true
input = ["by_key"]
parallelism = {start}

[[stream.operators]]
name = "out"
kind = "discard_sink"
input = ["paced"]
"#,
        binary = binary.display(),
        input = input.display(),
        cooldown = COOLDOWN.as_millis(),
    );
    let spec: JobSpec = toml::from_str(&text).unwrap();
    spec.validate().unwrap();
    spec
}

/// Appends `rate` lines a second (`k<n % 1000> <n>`) to `path` in 20 ms steps until `stop`;
/// `rate` may change while it runs.
fn feed(path: std::path::PathBuf, rate: Arc<AtomicU64>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
        let started = Instant::now();
        let (mut written, mut owed, mut last) = (0u64, 0.0f64, Instant::now());
        let mut text = String::new();
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
            let now = Instant::now();
            owed += rate.load(Ordering::Relaxed) as f64 * now.duration_since(last).as_secs_f64();
            last = now;
            text.clear();
            while owed >= 1.0 {
                use std::fmt::Write as _;
                let _ = writeln!(text, "k{} {written}", written % 1000);
                written += 1;
                owed -= 1.0;
            }
            // Whole lines per write: the source never sees half of one for long.
            file.write_all(text.as_bytes()).unwrap();
        }
        eprintln!("fed {written} lines in {:.0} s", started.elapsed().as_secs_f64());
    })
}

fn paced(detail: &StreamDetail) -> &spindle_protocol::OperatorStatus {
    detail.operators.iter().find(|op| op.name == "paced").expect("the paced operator")
}

/// The rescales of `paced` seen so far, as (started at, from, to), in order; polled often
/// enough to see every one (the autoscaler leaves at least 11 s between two). Also what the
/// instances measured, once a second, to show when the test fails.
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
            && rescale.operator == "paced"
            && self.rescales.last().is_none_or(|last| last.0 != rescale.started_at_ms)
        {
            eprintln!("rescale of paced: {} → {}", rescale.from, rescale.to);
            self.rescales.push((rescale.started_at_ms, rescale.from, rescale.to));
        }
        if self.last_traced.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            self.last_traced = Some(Instant::now());
            let op = paced(&detail);
            let instances: Vec<String> = op
                .instances
                .iter()
                .map(|i| format!("{:.0}/s busy {:.2}", i.records_in_per_s, i.busy))
                .collect();
            self.trace.push(format!(
                "paced {} → {}: {}",
                op.parallelism,
                op.target_parallelism,
                instances.join(", ")
            ));
        }
        Some(detail)
    }

    fn steps(&self) -> Vec<(u32, u32)> {
        self.rescales.iter().map(|(_, from, to)| (*from, *to)).collect()
    }

    /// Polls until `paced` runs `wanted` instances with no rescale under way, at most `within`.
    async fn until_at(&mut self, client: &RmClient, app_id: AppId, wanted: u32, within: Duration, what: &str) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(detail) = self.poll(client, app_id).await {
                let op = paced(&detail);
                let done = detail.last_rescale.as_ref().is_none_or(|r| r.finished_at_ms.is_some());
                if op.parallelism == wanted && op.target_parallelism == wanted && done {
                    return;
                }
            }
            if Instant::now() > deadline {
                let why = format!("{what}: not at {wanted} within {} s: {:?}", within.as_secs(), self.steps());
                self.fail(client, app_id, why).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Polls for `quiet`: `paced` must stay at `wanted` all along.
    async fn stays_at(&mut self, client: &RmClient, app_id: AppId, wanted: u32, quiet: Duration, what: &str) {
        let from = Instant::now();
        while from.elapsed() < quiet {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let detail = self.poll(client, app_id).await.expect("the job's detail");
            let op = paced(&detail);
            if (op.parallelism, op.target_parallelism) != (wanted, wanted) {
                let why = format!(
                    "{what}: settled at {wanted} ({:?}), then {} → {} after {:.0} s of a steady input",
                    self.steps(),
                    op.parallelism,
                    op.target_parallelism,
                    from.elapsed().as_secs_f64()
                );
                self.fail(client, app_id, why).await;
            }
        }
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

/// One job from `start` instances: it must reach 2 in at most 3 rescales and stay there for
/// 60 s; with `step`, the input then doubles and it must be at 3 within 2 cooldowns (plus the
/// rescale's own few seconds) and stay there for a cooldown's window.
async fn run(client: &RmClient, dir: &std::path::Path, binary: &std::path::Path, start: u32, step: bool) {
    let input = dir.join(format!("input-from-{start}"));
    std::fs::create_dir_all(&input).unwrap();
    let rate = Arc::new(AtomicU64::new(NEEDS_2));
    let stop_feeding = Arc::new(AtomicBool::new(false));
    let feeder = feed(input.join("lines.txt"), rate.clone(), stop_feeding.clone());
    let app_id = client
        .submit(&job(&format!("autoscale-from-{start}"), &input, binary, start))
        .await
        .unwrap();
    let submitted = Instant::now();
    let mut watch = Watch::default();
    let what = format!("from {start} at {NEEDS_2}/s");
    watch.until_at(client, app_id, 2, Duration::from_secs(120), &what).await;
    let took = submitted.elapsed();
    if watch.rescales.len() > 3 {
        let why = format!("{what}: more than 3 rescales: {:?}", watch.steps());
        watch.fail(client, app_id, why).await;
    }
    watch.stays_at(client, app_id, 2, Duration::from_secs(60), &what).await;
    eprintln!("{what}: {:?} in {:.0} s, then none for 60 s", watch.steps(), took.as_secs_f64());

    if step {
        rate.store(NEEDS_3, Ordering::Relaxed);
        let stepped = Instant::now();
        let what = format!("from {start}, after a step to {NEEDS_3}/s");
        // Two cooldowns to decide, plus the rescale itself (a few seconds at most here).
        watch
            .until_at(client, app_id, 3, 2 * COOLDOWN + Duration::from_secs(6), &what)
            .await;
        eprintln!("{what}: at 3 {:.1} s after the step", stepped.elapsed().as_secs_f64());
        watch.stays_at(client, app_id, 3, COOLDOWN * 2, &what).await;
    }
    print_decisions(client, app_id).await;
    stop(client, app_id).await;
    stop_feeding.store(true, Ordering::Relaxed);
    feeder.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_input_is_reached_from_1_and_from_4_and_kept_and_a_step_is_followed() {
    let binary = support::spindle_bin()
        .parent()
        .unwrap()
        .join("examples")
        .join("stream_user_operator");
    assert!(
        binary.exists(),
        "{} is missing: build it with `cargo build -p spindle-cli --example stream_user_operator`",
        binary.display()
    );
    let dir = support::shared_tempdir("spindle-test-");
    let cluster = start_local(dir.path()).await;
    let _cleanup = CleanupDir(dir.path());
    // The containers run in the agents' own work root: a failing run must not leave them.
    let work_root = cluster.work_root.clone();
    let _cleanup_containers = CleanupDir(&work_root);
    let client = cluster.client();

    run(&client, dir.path(), &binary, 1, true).await;
    run(&client, dir.path(), &binary, 4, false).await;
    let _ = cluster.shutdown().await;
}
