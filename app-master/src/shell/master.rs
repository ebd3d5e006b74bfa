//! The shell job's I/O loop: register, then allocate / launch / observe until the task table says
//! the job is done, then finish. Every decision is the pure `ShellTasks`'; this file only
//! carries them out.

use std::time::Duration;

use spindle_protocol::{AllocateRequest, LaunchSpec, ShellSpec};
use tokio_util::sync::CancellationToken;

use crate::AmExit;
use crate::context::AmContext;
use crate::error::AmError;
use crate::launch::{AgentLauncher, ContainerLauncher, DEFAULT_MAX_LAUNCHES_IN_FLIGHT, LaunchPool, LaunchResult};
use crate::rm::{Heartbeat, RmConnection};
use crate::shell::tasks::ShellTasks;

/// The variable that tells each task container which of the N tasks it is (0-based).
pub const TASK_INDEX_ENV: &str = spindle_protocol::env::TASK_INDEX;

/// How long an allocate may wait on the RM for news when the AM expects nothing of its own.
const IDLE_WAIT: Duration = Duration::from_millis(1000);
/// Shorter while launches are in flight, so a failed launch is re-asked for promptly.
const LAUNCHING_WAIT: Duration = Duration::from_millis(200);

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
        let app_id = self.context.app_id;
        match self.run_until_done(&shutdown).await {
            Err(AmError::Cancelled) => {
                tracing::info!(app_id = %app_id, "shell AM stopping: asked to stop");
                Ok(AmExit::Cancelled)
            }
            other => other,
        }
    }

    async fn run_until_done(self, shutdown: &CancellationToken) -> Result<AmExit, AmError> {
        let context = &self.context;
        let own_container = context.container_id;
        let mut rm = RmConnection::new(
            &context.rm_urls,
            &context.am_token,
            context.app_id,
            context.attempt,
            context.rm_retry,
        );
        let mut tasks = ShellTasks::new(self.shell.containers, self.shell.max_retries, self.shell.resources())
            .with_label(self.shell.node_label.clone());
        let mut launches = LaunchPool::new(self.launcher, self.max_launches_in_flight);
        let mut launched_total: u64 = 0;
        tracing::info!(
            app_id = %context.app_id, attempt = context.attempt, tasks = self.shell.containers,
            resources = %self.shell.resources(), max_retries = self.shell.max_retries,
            "shell AM starting"
        );

        let registered = rm.register(shutdown).await?;
        if !registered.max_container.fits(&self.shell.resources()) {
            tracing::warn!(
                task = %self.shell.resources(), largest = %registered.max_container,
                "no live node can hold a task container yet; waiting for one"
            );
        }
        tasks.on_registered(&registered.live_containers, own_container);

        while tasks.outcome().is_none() {
            apply_launch_results(&mut tasks, launches.finished());
            if tasks.outcome().is_some() {
                break;
            }
            let wait = if launches.in_flight() > 0 { LAUNCHING_WAIT } else { IDLE_WAIT };
            let request = AllocateRequest {
                app_id: context.app_id,
                attempt: context.attempt,
                asks: tasks.asks(),
                releases: tasks.take_releases(),
                progress: tasks.progress(),
                wait_ms: wait.as_millis() as u64,
                response_id: None, // numbered by RmConnection
                detail: None,
            };
            let Heartbeat { reply, reregistered } = rm.allocate(&request, shutdown).await?;
            if let Some(registered) = reregistered {
                tasks.on_registered(&registered.live_containers, own_container);
            }
            if reply.shutdown {
                tracing::info!(app_id = %context.app_id, "the RM says this attempt is over (app killed or superseded): stopping without finish");
                return Ok(AmExit::ShutdownByRm);
            }
            // Completions first: a task they free can take a grant of this same reply.
            for status in &reply.completed {
                tracing::debug!(
                    container_id = %status.container_id, exit_code = ?status.exit_code,
                    exit_reason = ?status.exit_reason, diagnostics = %status.diagnostics,
                    "container completed"
                );
                tasks.on_completed(status);
            }
            for container_id in &reply.preempt {
                tracing::debug!(container_id = %container_id, "the RM will preempt a container; its task will run again");
            }
            for launch in tasks.on_allocated(reply.allocated) {
                tracing::debug!(
                    container_id = %launch.allocation.container_id, node_id = %launch.allocation.node_id,
                    task_index = launch.task_index, "launching task"
                );
                launched_total += 1;
                launches.spawn(launch.allocation, task_launch_spec(&self.shell, launch.task_index));
            }
        }

        let outcome = tasks.outcome().cloned().expect("the loop ends with an outcome");
        let releases = tasks.take_releases();
        if !releases.is_empty() {
            // Hand back what is still running (a failed job's other tasks) before finishing.
            let request = AllocateRequest {
                app_id: context.app_id,
                attempt: context.attempt,
                asks: tasks.asks(),
                releases,
                progress: tasks.progress(),
                wait_ms: 0,
                response_id: None, // numbered by RmConnection
                detail: None,
            };
            if rm.allocate(&request, shutdown).await?.reply.shutdown {
                return Ok(AmExit::ShutdownByRm);
            }
        }
        let counts = tasks.counts();
        rm.finish(outcome.final_status(), outcome.diagnostics(), shutdown).await?;
        tracing::info!(
            app_id = %context.app_id, final_status = ?outcome.final_status(),
            succeeded = counts.succeeded, tasks = self.shell.containers,
            failures = counts.failures, launches = launched_total,
            "shell job finished: {}", outcome.diagnostics()
        );
        Ok(AmExit::Finished {
            final_status: outcome.final_status(),
            diagnostics: outcome.diagnostics().to_owned(),
        })
    }
}

fn apply_launch_results(tasks: &mut ShellTasks, results: Vec<LaunchResult>) {
    for LaunchResult { container_id, result } in results {
        match result {
            Ok(()) => {
                tracing::debug!(container_id = %container_id, "container launched");
                tasks.on_launched(container_id);
            }
            Err(failure) => {
                tracing::warn!(
                    container_id = %container_id, kind = ?failure.kind, error = %failure.message,
                    "container launch failed: releasing it, the task gets a new container"
                );
                tasks.on_launch_failed(container_id, &failure);
            }
        }
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
