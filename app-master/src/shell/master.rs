//! The shell job on the AM driver. Every decision is the pure `ShellTasks`'; this file only
//! turns its task launches into launch specs.

use std::time::{Duration, Instant};

use spindle_protocol::{Allocation, ContainerId, ContainerStatus, LaunchSpec, ResourceAsk, ShellSpec};
use tokio_util::sync::CancellationToken;

use crate::AmExit;
use crate::context::AmContext;
use crate::driver::{self, Framework, Outcome, Report};
use crate::error::AmError;
use crate::launch::{AgentLauncher, ContainerLauncher, DEFAULT_MAX_LAUNCHES_IN_FLIGHT, LaunchFailure};
use crate::shell::tasks::ShellTasks;

/// The variable that tells each task container which of the N tasks it is (0-based).
pub const TASK_INDEX_ENV: &str = spindle_protocol::env::TASK_INDEX;

/// How long an allocate may wait on the RM for news when the AM expects nothing of its own.
const IDLE_WAIT: Duration = Duration::from_millis(1000);

/// The application master of a `shell` job (YARN's DistributedShell): runs `shell.command` in
/// `shell.containers` containers, re-running failed ones up to `shell.max_retries` times each.
pub struct ShellMaster<L = AgentLauncher> {
    context: AmContext,
    /// The `[shell]` section of the spec, checked present.
    shell: ShellSpec,
    /// Starts granted containers (the agents' HTTP API, or a fake in tests).
    launcher: L,
    max_launches_in_flight: usize,
}

impl ShellMaster<AgentLauncher> {
    /// A shell AM that launches on the real node agents.
    pub fn new(context: AmContext) -> Result<Self, AmError> {
        Self::with_launcher(context, AgentLauncher::new())
    }
}

impl<L: ContainerLauncher> ShellMaster<L> {
    /// A shell AM that launches through `launcher`. Fails if the spec is not a valid shell job.
    pub fn with_launcher(context: AmContext, launcher: L) -> Result<Self, AmError> {
        context.spec.validate()?;
        let Some(shell) = context.spec.shell.clone() else {
            return Err(AmError::UnsupportedKind {
                kind: format!("{:?}", context.spec.kind).to_lowercase(),
            });
        };
        Ok(ShellMaster {
            context,
            shell,
            launcher,
            max_launches_in_flight: DEFAULT_MAX_LAUNCHES_IN_FLIGHT,
        })
    }

    /// Caps the launches talking to agents at once (default 64).
    pub fn max_launches_in_flight(mut self, limit: usize) -> Self {
        self.max_launches_in_flight = limit;
        self
    }

    /// Runs the job to its end. `Ok` when it finished (succeeded or failed, recorded by the RM),
    /// when the RM said to stop, or when `shutdown` fired; `Err` when the attempt cannot go on.
    pub async fn run(self, shutdown: CancellationToken) -> Result<AmExit, AmError> {
        let ShellMaster {
            context,
            shell,
            launcher,
            max_launches_in_flight,
        } = self;
        tracing::info!(
            app_id = %context.app_id, attempt = context.attempt, tasks = shell.containers,
            resources = %shell.resources(), max_retries = shell.max_retries,
            "shell AM starting"
        );
        driver::run(context, launcher, max_launches_in_flight, shutdown, |started| async move {
            if !started.registered.max_container.fits(&shell.resources()) {
                tracing::warn!(
                    task = %shell.resources(), largest = %started.registered.max_container,
                    "no live node can hold a task container yet; waiting for one"
                );
            }
            Ok(ShellFramework::new(shell))
        })
        .await
    }
}

/// The shell job on the driver: `ShellTasks` decides, this adds the launch specs.
pub struct ShellFramework {
    shell: ShellSpec,
    tasks: ShellTasks,
}

impl ShellFramework {
    pub fn new(shell: ShellSpec) -> Self {
        let tasks = ShellTasks::new(shell.containers, shell.max_retries, shell.resources()).with_label(shell.node_label.clone());
        ShellFramework { shell, tasks }
    }
}

impl Framework for ShellFramework {
    /// The shell job has no I/O of its own.
    type Event = std::convert::Infallible;

    fn allocate_wait(&self) -> Duration {
        IDLE_WAIT
    }

    fn on_registered(&mut self, live: &[ContainerId], _now: Instant) {
        self.tasks.on_registered(live, None);
    }

    fn on_granted(&mut self, allocation: Allocation, _now: Instant) -> Option<LaunchSpec> {
        let launch = self.tasks.on_allocated(vec![allocation]).pop()?;
        tracing::debug!(container_id = %launch.allocation.container_id, task_index = launch.task_index, "launching task");
        Some(task_launch_spec(&self.shell, launch.task_index))
    }

    fn on_launched(&mut self, container: ContainerId, result: Result<(), LaunchFailure>, _now: Instant) {
        match result {
            Ok(()) => self.tasks.on_launched(container),
            Err(failure) => self.tasks.on_launch_failed(container, &failure),
        }
    }

    fn on_completed(&mut self, status: &ContainerStatus, _now: Instant) {
        self.tasks.on_completed(status);
    }

    fn on_event(&mut self, event: Self::Event, _now: Instant) {
        match event {}
    }

    fn asks(&self) -> Vec<ResourceAsk> {
        self.tasks.asks()
    }

    fn take_releases(&mut self) -> Vec<ContainerId> {
        self.tasks.take_releases()
    }

    fn report(&self) -> Report {
        Report {
            progress: self.tasks.progress(),
            detail: None,
        }
    }

    fn outcome(&mut self) -> Option<Outcome> {
        let outcome = self.tasks.outcome()?;
        let counts = self.tasks.counts();
        tracing::info!(
            succeeded = counts.succeeded,
            tasks = self.shell.containers,
            failures = counts.failures,
            "shell job over"
        );
        Some(Outcome {
            final_status: outcome.final_status(),
            diagnostics: outcome.diagnostics().to_owned(),
        })
    }
}

/// What task `task_index` runs: the job's command, with its env and the task index.
pub fn task_launch_spec(shell: &ShellSpec, task_index: u32) -> LaunchSpec {
    let mut env = shell.env.clone();
    env.insert(TASK_INDEX_ENV.to_owned(), task_index.to_string());
    LaunchSpec {
        command: shell.command.clone(),
        env,
        files: Default::default(),
    }
}
