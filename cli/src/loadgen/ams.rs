//! The fake application masters: `--ams` apps live at once, each submitted as a `custom` job
//! whose AM container the RM launches on a fake agent (which runs nothing: the launch starts a
//! fake AM in this process instead). A fake AM registers, then asks for its containers in
//! waves of random sizes and mixed shapes, launches each grant on its fake agent for a task's
//! duration (now and then releasing one unlaunched, or a running one), waits for every
//! completion, and finishes the app SUCCEEDED (`am.rs`). When an app ends, another is submitted.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use spindle_protocol::{ClusterSecret, ContainerId, JobSpec, RmClient};
use tokio_util::sync::CancellationToken;

use super::agents::Fleet;
use super::am::{AmEnd, FakeAm};
use super::ledger::Ledger;
use super::rm_http::RmHttp;
use super::stats::{Count, Stats};

/// How the fake AMs behave.
#[derive(Debug, Clone)]
pub struct AmSettings {
    pub containers_per_am: u32,
    pub task: Duration,
    pub queue: String,
    pub seed: u64,
}

/// The live apps and their fake AMs.
pub struct AmPool {
    pub rm: RmHttp,
    /// The submitting user's client (submissions and app reports).
    pub user: RmClient,
    /// Makes an AM's token when its launch carries none.
    pub secret: ClusterSecret,
    pub fleet: Arc<Fleet>,
    pub stats: Arc<Stats>,
    pub ledger: Arc<Ledger>,
    pub settings: AmSettings,
    /// Cancelled when the measured window is over: apps that end are not replaced.
    pub submitting: CancellationToken,
    /// Cancelled at the end of the run: every fake AM stops where it is.
    pub stop: CancellationToken,
    /// Apps submitted whose end this pool has not seen.
    live_apps: AtomicUsize,
    /// Apps submitted so far: names them.
    submitted: AtomicUsize,
}

impl AmPool {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        rm: RmHttp,
        user: RmClient,
        secret: ClusterSecret,
        fleet: Arc<Fleet>,
        stats: Arc<Stats>,
        ledger: Arc<Ledger>,
        settings: AmSettings,
        stop: CancellationToken,
    ) -> AmPool {
        AmPool {
            rm,
            user,
            secret,
            fleet,
            stats,
            ledger,
            settings,
            submitting: CancellationToken::new(),
            stop,
            live_apps: AtomicUsize::new(0),
            submitted: AtomicUsize::new(0),
        }
    }

    /// Apps submitted and not yet seen ending.
    pub fn live_apps(&self) -> usize {
        self.live_apps.load(Ordering::Relaxed)
    }

    /// Submits `count` apps, spread over `spread`, each replaced by a new one when it ends.
    pub fn start(self: &Arc<Self>, count: usize, spread: Duration) {
        for index in 0..count {
            let pool = Arc::clone(self);
            let delay = spread.mul_f64(index as f64 / count.max(1) as f64);
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                pool.submit_app().await;
            });
        }
    }

    /// Submits one app, trying again (each second) until it is accepted or submitting stops.
    async fn submit_app(self: Arc<Self>) {
        while !self.submitting.is_cancelled() {
            let sequence = self.submitted.fetch_add(1, Ordering::Relaxed);
            let spec = custom_job(sequence, &self.settings.queue);
            match self.user.submit(&spec).await {
                Ok(_) => {
                    self.stats.inc(Count::AppsSubmitted);
                    self.live_apps.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(err) => {
                    self.stats.inc(Count::SubmitErrors);
                    tracing::warn!(error = %err, "submission failed; trying again in a second");
                    tokio::select! {
                        () = self.submitting.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    /// The app ended: one fewer live, and a new one unless submitting has stopped.
    fn app_ended(self: &Arc<Self>) {
        self.live_apps.fetch_sub(1, Ordering::Relaxed);
        if !self.submitting.is_cancelled() {
            tokio::spawn(Arc::clone(self).submit_app());
        }
    }

    /// An AM container was launched on agent `agent`: runs its fake AM. `am_token`: the one in
    /// the launch's environment, as a real AM reads it.
    pub fn start_am(self: &Arc<Self>, am_container: ContainerId, agent: usize, am_token: Option<String>, stop: CancellationToken) {
        let (app_id, attempt) = (am_container.app, am_container.attempt);
        let token = am_token.unwrap_or_else(|| self.secret.am_token(app_id, attempt));
        let seed = self.settings.seed ^ (u64::from(app_id.seq) << 20) ^ u64::from(attempt);
        let am = FakeAm::new(Arc::clone(self), am_container, &token, seed, stop);
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            let end = am.run().await;
            let exit_code = match end {
                AmEnd::Finished => 0,
                AmEnd::ShutDown | AmEnd::Stopped => 1,
            };
            if let Some(agent) = pool.fleet.agents.get(agent) {
                agent.am_exited(&am_container, exit_code);
            }
            match end {
                AmEnd::Finished => pool.app_ended(),
                // A new attempt may follow (another launch starts its AM), or the app is over.
                AmEnd::ShutDown | AmEnd::Stopped if !pool.stop.is_cancelled() => {
                    let report = pool.user.app(app_id).await;
                    if report.is_ok_and(|report| report.state.is_terminal()) {
                        pool.app_ended();
                    }
                }
                _ => {}
            }
        });
    }
}

/// A `custom` job: the RM hands its AM container to a fake agent, which runs nothing.
fn custom_job(sequence: usize, queue: &str) -> JobSpec {
    serde_json::from_value(serde_json::json!({
        "name": format!("loadgen-{sequence}"),
        "queue": queue,
        "kind": "custom",
        "custom": { "command": ["true"] },
    }))
    .expect("the load generator's job spec is valid")
}
