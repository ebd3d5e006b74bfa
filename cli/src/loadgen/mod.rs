//! `spindle loadgen`: plays N node agents and M application masters against a real RM, over
//! its real HTTP API, and prints what the RM sustained as one JSON line.
//!
//! ```text
//!             ┌──────────────── this process (one runtime, --workers threads) ───────────────┐
//!  RM ◄─HTTP─ │ agents.rs: N fake agents ── register, heartbeat (statuses, usage), kill, ack  │
//!     ◄─HTTP─ │ am.rs / ams.rs: M fake AMs ── submit, register, allocate (asks, releases),   │
//!             │                               finish; launch grants on agents in process    │
//!     ──HTTP─►│ launch_api.rs: the agents' POST …/v1/containers: AM launches from the RM     │
//!             │ stats.rs (counters, histograms) · ledger.rs (invariants) · summary.rs (JSON) │
//!             └──────────────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! A run: the agents register (a bounded number at a time) and heartbeat from then on; the
//! AMs' apps are submitted; after `--warmup-s` the measured window of `--duration-s` begins;
//! then no new apps are submitted and the live ones get `--drain-s` to finish, so that the
//! invariants cover whole apps; then everything stops where it is (the RM is left with nodes
//! that will be LOST: a benchmark starts a fresh RM for each run). The exit code is 1 if an
//! invariant was violated.

mod agents;
mod am;
mod ams;
mod containers;
mod launch_api;
mod ledger;
mod rm_http;
mod stats;
mod summary;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use spindle_protocol::{ClusterSecret, Resources, RmClient, now_ms};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use self::agents::{AgentContext, Fleet};
use self::ams::{AmPool, AmSettings};
use self::ledger::Ledger;
use self::rm_http::{RmHttp, bearer};
use self::stats::{Count, Latency, Stats};
use self::summary::{ProcessProbe, RmCounters, Summary, Window, cores, mean_ms, round};
use crate::args::{GlobalArgs, LoadgenArgs};
use crate::error::{EXIT_FAILURE, UsageError};
use crate::settings::ClientSettings;

/// Registrations in flight at once: enough that they are not starved by the heartbeats of the
/// agents already registered (every request waits for the RM's one state lock, in turn).
const CONCURRENT_REGISTRATIONS: usize = 128;
/// How long registration may go without progress before the run gives up.
const REGISTRATION_STALL: Duration = Duration::from_secs(30);
/// The AMs' apps are submitted over this long, not all at once.
const SUBMISSION_SPREAD: Duration = Duration::from_secs(1);
/// How long the join token made for the agents is valid.
const JOIN_TOKEN_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// A run as the command line describes it, checked.
struct Plan {
    rm_url: String,
    secret: ClusterSecret,
    user_token: String,
    agents: usize,
    ams: usize,
    warmup: Duration,
    window: Duration,
    drain: Duration,
    node_capacity: Resources,
    am_settings: AmSettings,
    rm_process: Option<ProcessProbe>,
    immediate_heartbeats: bool,
    shared_connections: bool,
}

/// Runs the load generator and prints its summary; exit 1 if an invariant was violated.
pub async fn loadgen(args: &LoadgenArgs, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let plan = plan(args, global)?;
    let summary = run(plan).await?;
    outln!("{}", serde_json::to_string(&summary)?);
    Ok(if summary.invariant_violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILURE)
    })
}

/// Checks the arguments and reads the files they name; every error names its flag.
fn plan(args: &LoadgenArgs, global: &GlobalArgs) -> anyhow::Result<Plan> {
    if global.ca_file.is_some() {
        return Err(UsageError::new("--ca-file: the fake agents serve plain HTTP, so the load generator needs an RM without TLS").into());
    }
    let settings = ClientSettings::load(global.rm.as_deref(), global.token.as_deref())?;
    let [rm_url] = settings.rm_urls.as_slice() else {
        return Err(UsageError::new(format!(
            "--rm: the load generator drives one RM; got {}",
            settings.rm_urls.join(",")
        ))
        .into());
    };
    let read = |flag: &str, path: &std::path::Path| -> anyhow::Result<String> {
        let text =
            std::fs::read_to_string(path).map_err(|err| UsageError::new(format!("{flag}: cannot read {}: {err}", path.display())))?;
        let text = text.trim().to_owned();
        if text.is_empty() {
            return Err(UsageError::new(format!("{flag}: {} is empty", path.display())).into());
        }
        Ok(text)
    };
    let secret = match &args.secret_file {
        Some(path) => read("--secret-file", path)?,
        None => crate::settings::cluster_secret_env().ok_or_else(|| {
            UsageError::new("--secret-file: give the file holding the RM's cluster_secret (or set SPINDLE_CLUSTER_SECRET)")
        })?,
    };
    let user_token = match &args.token_file {
        Some(path) => read("--token-file", path)?,
        None => settings.token.clone().ok_or_else(|| {
            UsageError::new(
                "--token-file: give a file holding the API token of a user who may submit jobs (or use --token / SPINDLE_TOKEN)",
            )
        })?,
    };
    let largest = am::SHAPES.iter().fold(Resources::ZERO, |largest, shape| {
        Resources::new(largest.vcores.max(shape.vcores), largest.memory_mb.max(shape.memory_mb))
    });
    if args.node_vcores < largest.vcores || args.node_memory_mb < largest.memory_mb {
        return Err(UsageError::new(format!(
            "--node-vcores/--node-memory-mb: a node of {} cannot hold the largest container the fake AMs ask for ({largest})",
            Resources::new(args.node_vcores, args.node_memory_mb)
        ))
        .into());
    }
    // A connection per agent and per AM, and a few more.
    let files_needed = if args.shared_connections { 0 } else { args.agents } + args.ams + 256;
    let files_allowed = crate::daemon::raise_open_file_limit();
    if (files_allowed as usize) < files_needed {
        return Err(UsageError::new(format!(
            "--agents {} --ams {}: about {files_needed} open files are needed and this process may open {files_allowed}: \
             raise the limit (ulimit -n) or pass --shared-connections",
            args.agents, args.ams
        ))
        .into());
    }
    let rm_process = match args.rm_pid {
        Some(pid) => {
            let probe = ProcessProbe::of_pid(pid);
            if !probe.exists() {
                return Err(UsageError::new(format!("--rm-pid: no process {pid} on this machine")).into());
            }
            Some(probe)
        }
        None => None,
    };
    Ok(Plan {
        rm_url: rm_url.clone(),
        secret: ClusterSecret::new(secret),
        user_token,
        agents: args.agents,
        ams: args.ams,
        warmup: Duration::from_secs(args.warmup_s),
        window: Duration::from_secs(args.duration_s),
        drain: Duration::from_secs(args.drain_s),
        node_capacity: Resources::new(args.node_vcores, args.node_memory_mb),
        am_settings: AmSettings {
            containers_per_am: args.containers_per_am,
            task: Duration::from_millis(args.task_ms),
            queue: args.queue.clone(),
            seed: args.seed,
        },
        rm_process,
        immediate_heartbeats: !args.no_immediate_heartbeats,
        shared_connections: args.shared_connections,
    })
}

/// What is measured at the start and at the end of the window.
struct Mark {
    stats: stats::StatsSnapshot,
    rm: RmCounters,
    rm_cpu: Option<summary::CpuSample>,
    own_cpu: Option<summary::CpuSample>,
    at: Instant,
}

async fn run(plan: Plan) -> anyhow::Result<Summary> {
    let stats = Arc::new(Stats::new());
    let ledger = Arc::new(Ledger::new());
    let stop = CancellationToken::new();
    let rm = RmHttp::new(&plan.rm_url);
    let user_bearer = bearer(&plan.user_token);
    // Reachable, and the token is good: `/metrics` takes any API user's.
    let read_rm_counters = || async {
        let text = rm.get_text("/metrics", &user_bearer).await?;
        Ok::<_, rm_http::CallError>(RmCounters::parse(&text))
    };
    read_rm_counters()
        .await
        .with_context(|| format!("cannot read {}/metrics with the given token", plan.rm_url))?;

    let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .context("cannot listen for the RM's AM launches")?;
    let launch_address = listener.local_addr()?;
    let fleet = Arc::new(Fleet::new(
        plan.agents,
        plan.node_capacity,
        launch_address,
        &rm,
        plan.shared_connections,
    ));
    let pool = Arc::new(AmPool::new(
        rm.clone(),
        RmClient::new(std::slice::from_ref(&plan.rm_url), Some(plan.user_token.clone())),
        plan.secret.clone(),
        Arc::clone(&fleet),
        Arc::clone(&stats),
        Arc::clone(&ledger),
        plan.am_settings.clone(),
        stop.clone(),
    ));
    let api = Arc::new(launch_api::LaunchApi {
        fleet: Arc::clone(&fleet),
        pool: Arc::clone(&pool),
        stats: Arc::clone(&stats),
        ledger: Arc::clone(&ledger),
    });
    let server = axum::serve(listener, launch_api::router(api)).with_graceful_shutdown(stop.clone().cancelled_owned());
    tokio::spawn(async move {
        if let Err(err) = server.await {
            tracing::error!(error = %err, "the fake agents' launch listener failed");
        }
    });

    let join_expiry = now_ms() + JOIN_TOKEN_VALIDITY.as_millis() as u64;
    let context = Arc::new(AgentContext {
        stats: Arc::clone(&stats),
        ledger: Arc::clone(&ledger),
        join_bearer: bearer(&plan.secret.join_token(join_expiry)),
        immediate_heartbeats: plan.immediate_heartbeats,
        registrations: Semaphore::new(CONCURRENT_REGISTRATIONS),
        heartbeat_interval_ms: AtomicU64::new(0),
        stop: stop.clone(),
    });
    let epoch = Instant::now();
    for agent in &fleet.agents {
        let phase = agent.index as f64 / plan.agents as f64;
        tokio::spawn(Arc::clone(agent).run(Arc::clone(&context), epoch, phase));
    }
    let register_all = wait_for_registrations(&stats, plan.agents).await;
    let register_all = match register_all {
        Ok(elapsed) => elapsed,
        Err(err) => {
            stop.cancel();
            return Err(err);
        }
    };
    tracing::info!(agents = plan.agents, seconds = register_all.as_secs_f64(), "every agent registered");

    pool.start(plan.ams, SUBMISSION_SPREAD);
    tokio::time::sleep(plan.warmup).await;
    let own_process = ProcessProbe::of_self();
    let mark = || async {
        Mark {
            stats: stats.snapshot(),
            rm: read_rm_counters().await.unwrap_or_default(),
            rm_cpu: plan.rm_process.as_ref().and_then(ProcessProbe::cpu),
            own_cpu: own_process.cpu(),
            at: Instant::now(),
        }
    };
    let start = mark().await;
    // Benchmarks watch for these lines (to profile the RM inside the window).
    tracing::info!(seconds = plan.window.as_secs(), "measured window begins");
    tokio::time::sleep(plan.window).await;
    let end = mark().await;
    tracing::info!(live_apps = pool.live_apps(), "measured window ends; draining");
    let (rm_rss_mb, rm_peak_rss_mb) = plan.rm_process.as_ref().map_or((None, None), ProcessProbe::rss_mb);

    // The apps that are live finish (nothing new is submitted), so the invariants cover
    // whole apps; those that do not in time are counted as unfinished.
    pool.submitting.cancel();
    let drain_deadline = Instant::now() + plan.drain;
    while pool.live_apps() > 0 && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();

    let total = stats.snapshot();
    let window_stats = end.stats.since(&start.stats);
    let seconds = end.at.duration_since(start.at).as_secs_f64();
    let window = Window {
        stats: &window_stats,
        seconds,
    };
    let rm_rate = |counter: fn(&RmCounters) -> Option<f64>| {
        let (before, after) = (counter(&start.rm)?, counter(&end.rm)?);
        Some(round((after - before) / seconds, 1))
    };
    let periodic = window_stats.count(Count::Heartbeats) - window_stats.count(Count::ImmediateHeartbeats);
    let registrations = total.latency(Latency::Register);
    Ok(Summary {
        agents: plan.agents,
        ams: plan.ams,
        duration_s: round(seconds, 2),
        warmup_s: plan.warmup.as_secs(),
        heartbeat_interval_ms: context.heartbeat_interval_ms.load(Ordering::Relaxed),
        heartbeats_per_sec: window.rate(Count::Heartbeats),
        periodic_heartbeats_per_sec: round(periodic as f64 / seconds, 1),
        rm_heartbeats_per_sec: rm_rate(|counters| counters.heartbeats),
        heartbeat_p50_ms: window.quantile_ms(Latency::Heartbeat, 0.5),
        heartbeat_p99_ms: window.quantile_ms(Latency::Heartbeat, 0.99),
        allocate_calls: window_stats.count(Count::AllocateCalls),
        allocate_p50_ms: window.quantile_ms(Latency::Allocate, 0.5),
        allocate_p99_ms: window.quantile_ms(Latency::Allocate, 0.99),
        ask_to_grant_p50_ms: window.quantile_ms(Latency::AskToGrant, 0.5),
        ask_to_grant_p99_ms: window.quantile_ms(Latency::AskToGrant, 0.99),
        containers_per_sec: window.rate(Count::ContainersGranted),
        completions_per_sec: window.rate(Count::ContainersCompleted),
        apps_finished_per_sec: window.rate(Count::AppsFinished),
        apps_finished: total.count(Count::AppsFinished),
        apps_unfinished: pool.live_apps(),
        store_commits_per_sec: rm_rate(|counters| counters.store_commits),
        store_commit_mean_ms: mean_ms(&start.rm, &end.rm, |rm| rm.store_commit_seconds, |rm| rm.store_commits),
        rm_heartbeat_mean_ms: mean_ms(&start.rm, &end.rm, |rm| rm.heartbeat_request_seconds, |rm| rm.heartbeat_requests),
        rm_rounds_per_sec: rm_rate(|counters| counters.rounds),
        rm_round_mean_ms: mean_ms(&start.rm, &end.rm, |rm| rm.round_seconds, |rm| rm.rounds),
        rm_cpu_cores: cores(start.rm_cpu, end.rm_cpu).map(|cores| round(cores, 3)),
        rm_rss_mb: rm_rss_mb.map(|mb| round(mb, 1)),
        rm_peak_rss_mb: rm_peak_rss_mb.map(|mb| round(mb, 1)),
        loadgen_cpu_cores: cores(start.own_cpu, end.own_cpu).map(|cores| round(cores, 3)),
        register_all_s: round(register_all.as_secs_f64(), 2),
        register_p50_ms: registrations.quantile_ms(0.5).map(|ms| round(ms, 2)),
        register_p99_ms: registrations.quantile_ms(0.99).map(|ms| round(ms, 2)),
        register_errors: total.count(Count::RegisterErrors),
        heartbeat_errors: total.count(Count::HeartbeatErrors),
        late_heartbeats: window_stats.count(Count::LateHeartbeats),
        resyncs: total.count(Count::Resyncs),
        allocate_errors: total.count(Count::AllocateErrors),
        submit_errors: total.count(Count::SubmitErrors),
        launch_errors: total.count(Count::LaunchErrors),
        am_shutdowns: total.count(Count::AmShutdowns),
        containers_granted: total.count(Count::ContainersGranted),
        released_unlaunched: total.count(Count::ReleasedUnlaunched),
        released_running: total.count(Count::ReleasedRunning),
        killed_by_rm: total.count(Count::KilledByRm),
        invariant_violations: ledger.violations(),
    })
}

/// Waits until `agents` registrations were answered; how long that took. Gives up when none
/// was answered for `REGISTRATION_STALL`.
async fn wait_for_registrations(stats: &Stats, agents: usize) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let (mut registered, mut progress_at) = (0, Instant::now());
    loop {
        let now_registered = stats.count(Count::Registrations);
        if now_registered as usize >= agents {
            return Ok(started.elapsed());
        }
        if now_registered > registered {
            (registered, progress_at) = (now_registered, Instant::now());
        } else if progress_at.elapsed() > REGISTRATION_STALL {
            anyhow::bail!(
                "only {registered} of {agents} agents registered, none in the last {} s ({} registrations failed: see the log)",
                REGISTRATION_STALL.as_secs(),
                stats.count(Count::RegisterErrors)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
