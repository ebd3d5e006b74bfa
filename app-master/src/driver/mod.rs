//! The one AM driver every job kind runs on: it registers the attempt, keeps one long-polling
//! allocate in flight (numbered, retried across RM outages and fail-overs, re-registering after
//! them), launches what the framework decides, hands it completions, preemption notices, the
//! app's controls, its own events and ticks, and finishes once the framework has an outcome.
//!
//! ```text
//!   register ──► start(framework) ──► on_registered
//!        ┌───────────────────────────── select ─────────────────────────────┐
//!        │ allocate reply: re-registered? shutdown? controls, preempt notices, │
//!        │                 completions, grants ──► LaunchPool                 │
//!        │ launch results ──► on_launched                                     │
//!        │ framework events (task reports, worker messages, commits)          │
//!        │ ticks                                                              │
//!        └── after each: tick(now); next allocate {asks, releases, report} ───┘
//!   outcome ──► [allocate: final releases and report] ──► stop ──► finish
//! ```
//!
//! The allocate runs beside the framework's events, never cancelled (its reply may carry
//! grants); only `shutdown` ends it. The framework never sees the clock or the network.

mod framework;

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use spindle_protocol::{AllocateRequest, ContainerId, RegisterAmReply};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::AmExit;
use crate::context::AmContext;
use crate::error::AmError;
use crate::launch::{ContainerLauncher, DEFAULT_MAX_LAUNCHES_IN_FLIGHT, LaunchPool};
use crate::rm::{Heartbeat, RmConnection};
pub use framework::{Framework, Outcome, Report};

/// While launches are in flight, an allocate waits at most this long, so a failed launch is
/// asked for again promptly.
const LAUNCHING_WAIT: Duration = Duration::from_millis(200);

/// What a framework is started with, once the attempt is registered.
pub struct Started<E> {
    pub context: AmContext,
    pub registered: RegisterAmReply,
    /// Where the framework's own I/O sends its events.
    pub events: mpsc::UnboundedSender<E>,
    /// Fires when the AM stops; the framework's servers stop with it.
    pub shutdown: CancellationToken,
}

/// Runs one AM attempt: `start` builds the framework after registration (an `Err` outcome, such
/// as input that cannot be planned, finishes the job at once). `Ok` once the RM recorded the end,
/// the RM said stop, or `shutdown` fired; `Err` when the attempt cannot go on.
pub async fn run<F, L, S, Fut>(
    context: AmContext,
    launcher: L,
    max_launches_in_flight: usize,
    shutdown: CancellationToken,
    start: S,
) -> Result<AmExit, AmError>
where
    F: Framework,
    L: ContainerLauncher,
    S: FnOnce(Started<F::Event>) -> Fut,
    Fut: Future<Output = Result<F, Outcome>>,
{
    let app_id = context.app_id;
    let kind = context.spec.kind.as_str();
    let api_shutdown = shutdown.child_token();
    let result = drive(context, launcher, max_launches_in_flight, &shutdown, api_shutdown.clone(), start).await;
    api_shutdown.cancel();
    match result {
        Err(AmError::Cancelled) => {
            tracing::info!(app_id = %app_id, kind, "AM stopping: asked to stop");
            Ok(AmExit::Cancelled)
        }
        other => other,
    }
}

/// `run` with the default bound on launches in flight.
pub async fn run_default<F, L, S, Fut>(context: AmContext, launcher: L, shutdown: CancellationToken, start: S) -> Result<AmExit, AmError>
where
    F: Framework,
    L: ContainerLauncher,
    S: FnOnce(Started<F::Event>) -> Fut,
    Fut: Future<Output = Result<F, Outcome>>,
{
    run(context, launcher, DEFAULT_MAX_LAUNCHES_IN_FLIGHT, shutdown, start).await
}

type InFlight = Pin<Box<dyn Future<Output = (RmConnection, Result<Heartbeat, AmError>)> + Send>>;

async fn drive<F, L, S, Fut>(
    context: AmContext,
    launcher: L,
    max_launches_in_flight: usize,
    shutdown: &CancellationToken,
    framework_shutdown: CancellationToken,
    start: S,
) -> Result<AmExit, AmError>
where
    F: Framework,
    L: ContainerLauncher,
    S: FnOnce(Started<F::Event>) -> Fut,
    Fut: Future<Output = Result<F, Outcome>>,
{
    let own = context.container_id;
    let mut rm = RmConnection::new(
        &context.rm_urls,
        &context.am_token,
        context.app_id,
        context.attempt,
        context.rm_retry,
    );
    let registered = rm.register(shutdown).await?;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let started = Started {
        context: context.clone(),
        registered: registered.clone(),
        events: events_tx,
        shutdown: framework_shutdown,
    };
    let mut framework = match start(started).await {
        Ok(framework) => framework,
        Err(outcome) => return finish(&mut rm, &context, outcome, shutdown).await,
    };
    framework.on_registered(&without_own(&registered.live_containers, own), Instant::now());
    tracing::info!(app_id = %context.app_id, attempt = context.attempt, kind = context.spec.kind.as_str(), "AM started");

    let mut launches = LaunchPool::new(launcher, max_launches_in_flight);
    let mut ticker = framework.tick_every().map(|every| {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker
    });
    let mut events_open = true;
    let mut idle: Option<RmConnection> = Some(rm);
    let mut in_flight: Option<InFlight> = None;
    // Grants that arrived after the outcome: nobody runs them, they go back in the last allocate.
    let mut unwanted: Vec<ContainerId> = Vec::new();
    let mut outcome: Option<Outcome> = None;

    loop {
        if outcome.is_none() {
            outcome = framework.outcome();
        }
        if let Some(rm) = idle.take() {
            if outcome.is_some() {
                idle = Some(rm);
                break;
            }
            let request = next_request(
                &mut framework,
                &context,
                Round::Next {
                    launching: launches.in_flight() > 0,
                },
                Vec::new(),
            );
            let stop = shutdown.clone();
            in_flight = Some(Box::pin(async move {
                let mut rm = rm;
                let result = rm.allocate(&request, &stop).await;
                (rm, result)
            }));
        }
        let allocate = in_flight.as_mut().expect("an allocate is in flight while the driver waits");
        tokio::select! {
            () = shutdown.cancelled() => {
                framework.stop();
                return Err(AmError::Cancelled);
            }
            (rm, result) = allocate => {
                in_flight = None;
                idle = Some(rm);
                let heartbeat = match result {
                    Ok(heartbeat) => heartbeat,
                    // The attempt ends here (refused, the RM gone past the budget, or asked to
                    // stop while the allocate waited): the framework's processes go too.
                    Err(error) => {
                        framework.stop();
                        return Err(error);
                    }
                };
                let now = Instant::now();
                if let Some(registered) = &heartbeat.reregistered {
                    framework.on_registered(&without_own(&registered.live_containers, own), now);
                }
                let reply = heartbeat.reply;
                if reply.shutdown {
                    tracing::info!(app_id = %context.app_id, "the RM says this attempt is over (app killed or superseded): stopping without finish");
                    framework.stop();
                    return Ok(AmExit::ShutdownByRm);
                }
                framework.on_controls(&reply.controls, now);
                if !reply.preempt.is_empty() {
                    tracing::debug!(containers = ?reply.preempt, "preemption notice");
                    framework.on_preempt_notice(&reply.preempt, now);
                }
                // Completions first: a task they free can take a grant of this same reply.
                for status in &reply.completed {
                    tracing::debug!(
                        container_id = %status.container_id, exit_code = ?status.exit_code,
                        exit_reason = ?status.exit_reason, diagnostics = %status.diagnostics,
                        "container completed"
                    );
                    framework.on_completed(status, now);
                }
                if outcome.is_some() {
                    unwanted.extend(reply.allocated.iter().map(|grant| grant.container_id));
                } else {
                    for allocation in reply.allocated {
                        if let Some(spec) = framework.on_granted(allocation.clone(), now) {
                            tracing::debug!(container_id = %allocation.container_id, node_id = %allocation.node_id, "launching");
                            launches.spawn(allocation, spec);
                        }
                    }
                }
            }
            Some(launched) = launches.next_finished(), if launches.in_flight() > 0 => {
                if let Err(failure) = &launched.result {
                    tracing::warn!(
                        container_id = %launched.container_id, kind = ?failure.kind, error = %failure.message,
                        "container launch failed"
                    );
                }
                framework.on_launched(launched.container_id, launched.result, Instant::now());
            }
            event = events.recv(), if events_open => match event {
                Some(event) => framework.on_event(event, Instant::now()),
                None => events_open = false,
            },
            () = next_tick(&mut ticker) => {}
        }
        framework.tick(Instant::now());
    }

    // Hand back what is still held and send the final report before finishing.
    let mut rm = idle.expect("the loop ends between allocates");
    let outcome = outcome.expect("the loop ends with an outcome");
    let request = next_request(&mut framework, &context, Round::Last, unwanted);
    let reply = rm.allocate(&request, shutdown).await;
    framework.stop();
    if reply?.reply.shutdown {
        return Ok(AmExit::ShutdownByRm);
    }
    finish(&mut rm, &context, outcome, shutdown).await
}

/// Which allocate the driver sends.
enum Round {
    /// One of the loop's: asks and a long poll.
    Next { launching: bool },
    /// After the outcome: no asks, no waiting, the last releases and report.
    Last,
}

/// The next allocate: the framework's asks, releases and report.
fn next_request<F: Framework>(
    framework: &mut F,
    context: &AmContext,
    round: Round,
    mut extra_releases: Vec<ContainerId>,
) -> AllocateRequest {
    let (asks, wait) = match round {
        Round::Next { launching } => {
            let wait = framework.allocate_wait();
            (framework.asks(), if launching { wait.min(LAUNCHING_WAIT) } else { wait })
        }
        Round::Last => (Vec::new(), Duration::ZERO),
    };
    let mut releases = framework.take_releases();
    releases.append(&mut extra_releases);
    let report = framework.report();
    AllocateRequest {
        app_id: context.app_id,
        attempt: context.attempt,
        asks,
        releases,
        progress: report.progress,
        wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        response_id: None, // numbered by RmConnection
        detail: report.detail,
    }
}

async fn finish(rm: &mut RmConnection, context: &AmContext, outcome: Outcome, shutdown: &CancellationToken) -> Result<AmExit, AmError> {
    rm.finish(outcome.final_status, &outcome.diagnostics, shutdown).await?;
    tracing::info!(
        app_id = %context.app_id, kind = context.spec.kind.as_str(), final_status = ?outcome.final_status,
        "job finished: {}", outcome.diagnostics
    );
    Ok(AmExit::Finished {
        final_status: outcome.final_status,
        diagnostics: outcome.diagnostics,
    })
}

/// The RM lists the AM's own container among the attempt's live ones after a restart.
fn without_own(live: &[ContainerId], own: Option<ContainerId>) -> Vec<ContainerId> {
    live.iter().copied().filter(|id| Some(*id) != own).collect()
}

async fn next_tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(ticker) => {
            ticker.tick().await;
        }
        None => std::future::pending().await,
    }
}
