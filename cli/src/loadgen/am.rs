//! One fake AM attempt: register, ask for containers in waves, launch or release what is
//! granted, wait for every completion, finish SUCCEEDED; checking on the way what only an AM
//! can see (see `ledger.rs`).
//!
//! Its allocate calls follow the protocol as the real AM driver does: asks are absolute,
//! `response_id` is the last reply's, and a call with nothing new to say long-polls. A call
//! that carries new asks or releases does not wait (`wait_ms = 0`): its round trip is the
//! RM's service time for an AM, a scheduling round included, which is what `allocate_p50_ms`
//! and `allocate_p99_ms` report.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::header::HeaderValue;
use serde::Serialize;
use serde::de::DeserializeOwned;
use spindle_protocol::{
    AllocateReply, AllocateRequest, AppId, ContainerId, FinalStatus, FinishAmRequest, RegisterAmReply, RegisterAmRequest, ResourceAsk,
    Resources,
};
use tokio_util::sync::CancellationToken;

use super::agents::{Agent, LaunchRefused};
use super::ams::AmPool;
use super::containers::LaunchKind;
use super::rm_http::{self, bearer};
use super::stats::{Count, Latency};

/// The container shapes fake AMs ask for: small, medium and large tasks.
pub const SHAPES: [Resources; 3] = [
    Resources { vcores: 1, memory_mb: 512 },
    Resources {
        vcores: 1,
        memory_mb: 1024,
    },
    Resources {
        vcores: 2,
        memory_mb: 2048,
    },
];
/// The largest wave of asks: a stage of a small job.
const MAX_WAVE: u32 = 8;
/// How long an allocate call with nothing new waits for news.
const LONG_POLL: Duration = Duration::from_millis(1000);
/// Beyond the long poll, how long the client waits for the RM's answer.
const ALLOCATE_TIMEOUT_MARGIN: Duration = Duration::from_secs(10);
/// Share of grants released without being launched, and of launched ones released while they run.
const RELEASE_UNLAUNCHED: f64 = 0.05;
const RELEASE_RUNNING: f64 = 0.03;
/// Tries of a register or finish call that failed in transit, and the pause between them.
const CALL_TRIES: u32 = 5;
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// How soon a release waiting for the RM to hear that its container runs looks again.
const RELEASE_RECHECK: Duration = Duration::from_millis(100);

/// How an AM attempt ended.
pub enum AmEnd {
    /// It finished the app.
    Finished,
    /// The RM told it to stop (its attempt is no longer current, or the app ended), or it could
    /// not reach the RM.
    ShutDown,
    /// The run stopped, or the RM killed its container.
    Stopped,
}

/// One AM attempt.
pub struct FakeAm {
    pool: Arc<AmPool>,
    app_id: AppId,
    attempt: u32,
    bearer: HeaderValue,
    rng: StdRng,
    /// Cancelled when the run stops or the RM kills the AM's container.
    stop: CancellationToken,
    /// Containers not asked for yet.
    to_ask: u32,
    /// Per shape, containers asked for and not granted yet: the absolute asks.
    wanted: [u32; SHAPES.len()],
    /// The asks of the last call the RM answered, to tell whether the next call says news.
    asks_sent: Option<[u32; SHAPES.len()]>,
    /// Per shape, when each wanted container was first asked for, oldest first.
    asked_at: [VecDeque<Instant>; SHAPES.len()],
    /// Every container this attempt was granted.
    granted: HashSet<ContainerId>,
    /// Granted containers whose completion has not been delivered.
    outstanding: HashSet<ContainerId>,
    completed: u32,
    /// Containers to release in the next call.
    releases: Vec<ContainerId>,
    /// Running containers to release once their time comes, with their agent.
    release_at: Vec<(Instant, ContainerId, Arc<Agent>)>,
    /// The `response_id` of the last reply received.
    response_id: u64,
    /// The last allocate call got no reply: the RM may replay that reply, so the next one
    /// may be older than the call.
    previous_call_failed: bool,
}

impl FakeAm {
    pub fn new(pool: Arc<AmPool>, am_container: ContainerId, am_token: &str, seed: u64, stop: CancellationToken) -> FakeAm {
        let to_ask = pool.settings.containers_per_am;
        FakeAm {
            pool,
            app_id: am_container.app,
            attempt: am_container.attempt,
            bearer: bearer(am_token),
            rng: StdRng::seed_from_u64(seed),
            stop,
            to_ask,
            wanted: [0; SHAPES.len()],
            asks_sent: None,
            asked_at: Default::default(),
            granted: HashSet::new(),
            outstanding: HashSet::new(),
            completed: 0,
            releases: Vec::new(),
            release_at: Vec::new(),
            response_id: 0,
            previous_call_failed: false,
        }
    }

    pub async fn run(mut self) -> AmEnd {
        let request = RegisterAmRequest {
            app_id: self.app_id,
            attempt: self.attempt,
        };
        if let Err(end) = self.call::<_, RegisterAmReply>(rm_http::REGISTER_AM, &request).await {
            return end;
        }
        loop {
            let nothing_wanted = self.wanted.iter().all(|wanted| *wanted == 0);
            if nothing_wanted && self.outstanding.is_empty() {
                if self.to_ask == 0 {
                    return self.finish().await;
                }
                // A new wave once the last one has ended, as a job's next stage starts.
                self.ask_wave();
            }
            self.release_due_containers();
            if let Err(end) = self.allocate().await {
                return end;
            }
        }
    }

    /// One allocate call: at once if it carries news, else a long poll.
    async fn allocate(&mut self) -> Result<(), AmEnd> {
        let news = self.asks_sent != Some(self.wanted) || !self.releases.is_empty();
        let wait = if news { Duration::ZERO } else { self.long_poll() };
        let releases = std::mem::take(&mut self.releases);
        let request = AllocateRequest {
            app_id: self.app_id,
            attempt: self.attempt,
            asks: self.asks(),
            releases: releases.clone(),
            // Progress that changes is committed by the RM, as a real AM's would be.
            progress: self.completed as f32 / self.pool.settings.containers_per_am.max(1) as f32,
            wait_ms: wait.as_millis() as u64,
            response_id: Some(self.response_id),
            detail: None,
        };
        let sent = Instant::now();
        let timeout = Some(wait + ALLOCATE_TIMEOUT_MARGIN);
        let result = tokio::select! {
            () = self.stop.cancelled() => return Err(AmEnd::Stopped),
            result = self.pool.rm.post::<_, AllocateReply>(rm_http::ALLOCATE, &self.bearer, &request, timeout) => result,
        };
        let stats = &self.pool.stats;
        match result {
            Ok((reply, elapsed)) => {
                stats.inc(Count::AllocateCalls);
                if wait.is_zero() {
                    stats.record(Latency::Allocate, elapsed);
                }
                if reply.shutdown {
                    stats.inc(Count::AmShutdowns);
                    return Err(AmEnd::ShutDown);
                }
                self.asks_sent = Some(self.wanted);
                self.take_reply(reply, sent);
                Ok(())
            }
            Err(err) if err.status().is_some_and(refused_for_good) => {
                tracing::warn!(app = %self.app_id, attempt = self.attempt, error = %err, "allocate refused: the attempt stops");
                stats.inc(Count::AllocateErrors);
                stats.inc(Count::AmShutdowns);
                Err(AmEnd::ShutDown)
            }
            Err(err) => {
                tracing::warn!(app = %self.app_id, error = %err, "allocate failed; trying again");
                stats.inc(Count::AllocateErrors);
                // Sent again: releasing a container twice is harmless.
                self.releases.extend(releases);
                self.previous_call_failed = true;
                tokio::select! {
                    () = self.stop.cancelled() => Err(AmEnd::Stopped),
                    () = tokio::time::sleep(RETRY_PAUSE) => Ok(()),
                }
            }
        }
    }

    /// Takes a reply's grants and completions, checking them against what this AM asked
    /// for and was granted; then checks that no acknowledged completion is missing.
    fn take_reply(&mut self, reply: AllocateReply, sent: Instant) {
        self.response_id = reply.response_id;
        let now = Instant::now();
        for allocation in reply.allocated {
            let container_id = allocation.container_id;
            let ledger = &self.pool.ledger;
            ledger.granted(container_id);
            if (container_id.app, container_id.attempt) != (self.app_id, self.attempt) {
                ledger.violation(format!("{container_id} was granted to attempt {} of {}", self.attempt, self.app_id));
            }
            match SHAPES.iter().position(|shape| *shape == allocation.resources) {
                Some(shape) if self.wanted[shape] > 0 => {
                    self.wanted[shape] -= 1;
                    if let Some(asked) = self.asked_at[shape].pop_front() {
                        self.pool.stats.record(Latency::AskToGrant, now.duration_since(asked));
                    }
                }
                _ => ledger.violation(format!(
                    "{} was granted {container_id} of {} beyond its asks ({:?} wanted of {SHAPES:?})",
                    self.app_id, allocation.resources, self.wanted
                )),
            }
            self.pool.stats.inc(Count::ContainersGranted);
            self.granted.insert(container_id);
            self.outstanding.insert(container_id);
            self.launch_or_release(allocation, now);
        }
        for status in reply.completed {
            let container_id = status.container_id;
            if !self.granted.contains(&container_id) {
                self.pool.ledger.violation(format!(
                    "attempt {} of {} was told of the end of {container_id}, which it was never granted",
                    self.attempt, self.app_id
                ));
            } else if !self.outstanding.remove(&container_id) {
                self.pool.ledger.violation(format!(
                    "attempt {} of {} was told of the end of {container_id} twice",
                    self.attempt, self.app_id
                ));
            } else {
                self.completed += 1;
                self.pool.ledger.delivered(container_id);
                self.pool.stats.inc(Count::ContainersCompleted);
            }
        }
        if !std::mem::take(&mut self.previous_call_failed) {
            for missing in self.pool.ledger.acknowledged_before(self.outstanding.iter().copied(), sent) {
                self.pool.ledger.violation(format!(
                    "the RM acknowledged the end of {missing} to its agent before {} sent an allocate call, but the reply did not carry it",
                    self.app_id
                ));
            }
        }
    }

    /// Launches a grant on its agent for a task's duration (in this process: the RM is not on
    /// the AM → agent path, so an HTTP call there would measure only this process), or now
    /// and then releases it unlaunched, or marks it to be released while it runs.
    fn launch_or_release(&mut self, allocation: spindle_protocol::Allocation, now: Instant) {
        let container_id = allocation.container_id;
        if self.rng.random_bool(RELEASE_UNLAUNCHED) {
            self.releases.push(container_id);
            self.pool.stats.inc(Count::ReleasedUnlaunched);
            return;
        }
        let Some(agent) = self.pool.fleet.by_node(&allocation.node_id).cloned() else {
            self.pool.ledger.violation(format!(
                "{container_id} was granted on {}, which is none of the fake agents",
                allocation.node_id
            ));
            self.releases.push(container_id);
            return;
        };
        if allocation.node_address != agent.address {
            self.pool.ledger.violation(format!(
                "{container_id} on {} came with address {}, not the {} it registered",
                agent.node_id, allocation.node_address, agent.address
            ));
        }
        let duration = self.pool.settings.task.mul_f64(self.rng.random_range(0.5..1.5));
        match agent.launch(&allocation.token, LaunchKind::Task(duration), &self.pool.ledger) {
            Ok(_) => {
                if self.rng.random_bool(RELEASE_RUNNING) {
                    let release_at = now + duration.mul_f64(self.rng.random_range(0.2..0.8));
                    self.release_at.push((release_at, container_id, agent));
                }
            }
            Err(refused) => {
                self.pool.stats.inc(Count::LaunchErrors);
                if !matches!(refused, LaunchRefused::BadToken(spindle_protocol::TokenError::Expired { .. })) {
                    self.pool
                        .ledger
                        .violation(format!("{} refused the launch of {container_id}: {refused}", agent.node_id));
                }
                self.releases.push(container_id);
            }
        }
    }

    /// How long a call with nothing new may wait: the long poll, or less if a running
    /// container is due to be released sooner.
    fn long_poll(&self) -> Duration {
        let now = Instant::now();
        self.release_at
            .iter()
            .map(|(at, _, _)| at.saturating_duration_since(now))
            .fold(LONG_POLL, Duration::min)
    }

    /// Asks for the next wave: up to `MAX_WAVE` containers of random shapes.
    fn ask_wave(&mut self) {
        let size = self.rng.random_range(1..=self.to_ask.min(MAX_WAVE));
        self.to_ask -= size;
        let now = Instant::now();
        for _ in 0..size {
            let shape = self.rng.random_range(0..SHAPES.len());
            self.wanted[shape] += 1;
            self.asked_at[shape].push_back(now);
        }
    }

    /// The absolute asks: per shape, the containers still wanted.
    fn asks(&self) -> Vec<ResourceAsk> {
        SHAPES
            .iter()
            .zip(self.wanted)
            .filter(|(_, count)| *count > 0)
            .map(|(resources, count)| ResourceAsk {
                priority: 0,
                resources: *resources,
                count,
                nodes: Vec::new(),
                racks: Vec::new(),
                label: None,
            })
            .collect()
    }

    /// Queues the release of running containers whose time has come, once the RM has heard
    /// that they run: released before, the RM would free their room at once while the agent
    /// still runs them, and a grant of that room could over-commit the node for a moment.
    fn release_due_containers(&mut self) {
        let now = Instant::now();
        let mut index = 0;
        while index < self.release_at.len() {
            let (at, container_id, agent) = &self.release_at[index];
            if *at > now {
                index += 1;
                continue;
            }
            match agent.known_running(container_id) {
                Some(true) => {
                    self.releases.push(*container_id);
                    self.pool.stats.inc(Count::ReleasedRunning);
                    self.release_at.swap_remove(index);
                }
                Some(false) => {
                    self.release_at[index].0 = now + RELEASE_RECHECK;
                    index += 1;
                }
                // Ended meanwhile: nothing to release.
                None => {
                    self.release_at.swap_remove(index);
                }
            }
        }
    }

    /// Finishes the app SUCCEEDED; every grant's completion was delivered once (each was
    /// checked as it came, and none is outstanding).
    async fn finish(&mut self) -> AmEnd {
        debug_assert!(self.outstanding.is_empty(), "an AM finishes once every container has ended");
        let request = FinishAmRequest {
            app_id: self.app_id,
            attempt: self.attempt,
            final_status: FinalStatus::Succeeded,
            diagnostics: String::new(),
        };
        match self.call::<_, serde_json::Value>(rm_http::FINISH_AM, &request).await {
            Ok(_) => {
                self.pool.stats.inc(Count::AppsFinished);
                AmEnd::Finished
            }
            Err(end) => end,
        }
    }

    /// A register or finish call, tried again while it fails in transit or the RM is busy.
    async fn call<B: Serialize, R: DeserializeOwned>(&self, path: &'static str, body: &B) -> Result<R, AmEnd> {
        for _ in 0..CALL_TRIES {
            let result = tokio::select! {
                () = self.stop.cancelled() => return Err(AmEnd::Stopped),
                result = self.pool.rm.post::<_, R>(path, &self.bearer, body, None) => result,
            };
            match result {
                Ok((reply, _)) => return Ok(reply),
                Err(err) if err.status().is_some_and(refused_for_good) => {
                    tracing::warn!(app = %self.app_id, attempt = self.attempt, error = %err, "the RM refused the AM's call");
                    return Err(AmEnd::ShutDown);
                }
                Err(err) => tracing::warn!(app = %self.app_id, error = %err, "AM call failed; trying again"),
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        tracing::warn!(app = %self.app_id, path, "AM call failed {CALL_TRIES} times; the attempt gives up");
        Err(AmEnd::ShutDown)
    }
}

/// Whether an answer's status refuses the call for good (the attempt is not current, the app
/// is gone, the request is wrong): sending it again would not help, unlike after a 429 or a
/// 5xx (the RM busy or between leaders).
fn refused_for_good(status: u16) -> bool {
    (400..500).contains(&status) && status != 429
}
