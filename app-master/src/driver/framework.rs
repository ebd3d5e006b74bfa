//! What a job kind implements to run on the driver: events in, decisions out.
//!
//! The driver calls these methods from one task, in the order the events happened, with the
//! time it read once per event (`now`), so an implementation needs no clock and no locks. What
//! it wants done it returns (a launch spec for a grant) or leaves to be collected (asks,
//! releases, report, outcome); I/O of its own (a task API, worker connections, commits) reports
//! back through `Self::Event`s on the channel the driver handed it at start.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use spindle_protocol::{Allocation, ContainerId, ContainerStatus, FinalStatus, JobDetail, LaunchSpec, ResourceAsk};

use crate::launch::LaunchFailure;

/// How the job ended, as the driver reports it to the RM in `finish`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub final_status: FinalStatus,
    pub diagnostics: String,
}

impl Outcome {
    pub fn succeeded(diagnostics: impl Into<String>) -> Self {
        Outcome {
            final_status: FinalStatus::Succeeded,
            diagnostics: diagnostics.into(),
        }
    }

    pub fn failed(diagnostics: impl Into<String>) -> Self {
        Outcome {
            final_status: FinalStatus::Failed,
            diagnostics: diagnostics.into(),
        }
    }
}

/// What the RM shows of the job: sent with every allocate.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// 0.0 ..= 1.0.
    pub progress: f32,
    pub detail: Option<JobDetail>,
}

/// A job kind on the driver.
pub trait Framework: Send + 'static {
    /// What the framework's own I/O (task reports, worker connections, commits) tells it.
    type Event: Send + 'static;

    /// How long an allocate may wait at the RM for news. The driver shortens it while launches
    /// are in flight (a failed launch is asked for again sooner).
    fn allocate_wait(&self) -> Duration;

    /// How often `tick` runs when nothing happens (it also runs after every event).
    fn tick_every(&self) -> Option<Duration> {
        None
    }

    /// The attempt's containers the RM knows, after registering and after every re-registration
    /// (an RM restart); the AM's own container is not among them. Containers the framework does
    /// not know are its to release.
    fn on_registered(&mut self, live: &[ContainerId], now: Instant);

    /// A granted container: the launch to run in it, or `None` when it is not wanted (the
    /// framework releases it).
    fn on_granted(&mut self, allocation: Allocation, now: Instant) -> Option<LaunchSpec>;

    /// The agent's answer to a launch.
    fn on_launched(&mut self, container: ContainerId, result: Result<(), LaunchFailure>, now: Instant);

    /// A container of the app ended (delivered before the grants of the same reply, so a task it
    /// frees can take one of them).
    fn on_completed(&mut self, status: &ContainerStatus, now: Instant);

    /// The RM will take these containers back after a grace period.
    fn on_preempt_notice(&mut self, _containers: &[ContainerId], _now: Instant) {}

    /// The app's controls as the RM stores them (for example an operator's parallelism set by
    /// `spindle scale`), in every allocate reply: the framework converges on them.
    fn on_controls(&mut self, _controls: &BTreeMap<String, serde_json::Value>, _now: Instant) {}

    /// One event of the framework's own I/O.
    fn on_event(&mut self, event: Self::Event, now: Instant);

    /// Time passed: timers (checkpoints, speculation, report deadlines) fire here.
    fn tick(&mut self, _now: Instant) {}

    /// What the job still needs, absolute (an earlier, larger ask is replaced).
    fn asks(&self) -> Vec<ResourceAsk>;

    /// Containers to hand back in the next allocate.
    fn take_releases(&mut self) -> Vec<ContainerId>;

    /// Progress and detail for the RM's reports.
    fn report(&self) -> Report;

    /// `Some` once the job is over: the driver hands back what is left and finishes.
    fn outcome(&mut self) -> Option<Outcome>;

    /// The driver stops (after the outcome, or without one when the RM or the process said
    /// stop): tell the framework's processes to go.
    fn stop(&mut self) {}
}
