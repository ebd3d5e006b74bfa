//! The shell job's decisions as a pure state machine: which task each grant runs, what to ask
//! for, what to release, how completions and launch failures count, and when the job is done.
//! No I/O and no clock: the master loop feeds it events and carries out what it returns.

use std::collections::{BTreeSet, HashMap, HashSet};

use spindle_protocol::{Allocation, ContainerId, ContainerState, ContainerStatus, ExitReason, FinalStatus, ResourceAsk, Resources};

use crate::launch::{LaunchFailure, LaunchFailureKind};

/// How many launches of one task may fail with the agent unreachable before such failures count
/// toward `max_retries` too: a node the RM sees but the AM cannot reach must not loop forever.
pub const MAX_UNCOUNTED_LAUNCH_FAILURES: u32 = 10;

/// Where one task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Needs a container.
    Pending,
    /// Has a container; the launch request is on its way to the agent.
    Launching(ContainerId),
    /// The agent accepted the launch.
    Running(ContainerId),
    /// Exited 0 in this container; never run again.
    Succeeded(ContainerId),
}

#[derive(Debug, Clone)]
struct Task {
    state: TaskState,
    /// Failures that count toward `max_retries`.
    failures: u32,
    /// Launches that failed because the agent did not answer; they count only past a limit.
    unreachable_launches: u32,
}

/// How the job ended, as it goes to the RM in `finish`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    Succeeded { diagnostics: String },
    Failed { diagnostics: String },
}

impl JobOutcome {
    pub fn final_status(&self) -> FinalStatus {
        match self {
            JobOutcome::Succeeded { .. } => FinalStatus::Succeeded,
            JobOutcome::Failed { .. } => FinalStatus::Failed,
        }
    }

    pub fn diagnostics(&self) -> &str {
        match self {
            JobOutcome::Succeeded { diagnostics } | JobOutcome::Failed { diagnostics } => diagnostics,
        }
    }
}

/// A decision to run task `task_index` in the granted container.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskLaunch {
    pub task_index: u32,
    pub allocation: Allocation,
}

/// How many tasks are where, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskCounts {
    pub pending: u32,
    pub launching: u32,
    pub running: u32,
    pub succeeded: u32,
    /// Failures counted toward `max_retries`, over all tasks.
    pub failures: u32,
}

/// The task table of one shell job.
#[derive(Debug, Clone)]
pub struct ShellTasks {
    tasks: Vec<Task>,
    /// Tasks waiting for a container, lowest index first so the order of work is predictable.
    pending: BTreeSet<u32>,
    /// The task each live container of ours runs (launching or running).
    container_tasks: HashMap<ContainerId, u32>,
    /// Every container ever granted to this AM: a grant delivered again (after an RM restart) is
    /// ignored, so a finished container is never run again.
    seen: HashSet<ContainerId>,
    /// Containers to hand back in the next allocate.
    releases: Vec<ContainerId>,
    succeeded: u32,
    failures: u32,
    max_retries: u32,
    /// The size of every task container: what to ask for, and the least a grant must have.
    task_resources: Resources,
    outcome: Option<JobOutcome>,
    /// The node label every task container requires, if any.
    label: Option<String>,
}

/// What a completed container means for its task.
enum Completion {
    Succeeded,
    /// Ended through no fault of its own (preempted): run again, not counted.
    Retry,
    /// Counts toward `max_retries`; the text describes it for diagnostics.
    Failed(String),
}

impl ShellTasks {
    pub fn new(task_count: u32, max_retries: u32, task_resources: Resources) -> Self {
        let task = Task {
            state: TaskState::Pending,
            failures: 0,
            unreachable_launches: 0,
        };
        ShellTasks {
            tasks: vec![task; task_count as usize],
            pending: (0..task_count).collect(),
            container_tasks: HashMap::new(),
            seen: HashSet::new(),
            releases: Vec::new(),
            succeeded: 0,
            failures: 0,
            max_retries,
            task_resources,
            label: None,
            outcome: None,
        }
    }

    /// Task containers must run on nodes carrying `label`.
    pub fn with_label(mut self, label: Option<String>) -> Self {
        self.label = label;
        self
    }

    /// The asks of the next allocate: one container per task that has none (absolute count).
    /// The count is sent even when zero, so the RM drops an earlier, larger ask.
    pub fn asks(&self) -> Vec<ResourceAsk> {
        let count = if self.outcome.is_some() { 0 } else { self.pending.len() as u32 };
        vec![ResourceAsk {
            priority: 0,
            resources: self.task_resources,
            count,
            nodes: Vec::new(),
            racks: Vec::new(),
            label: self.label.clone(),
        }]
    }

    /// The containers to release in the next allocate; each is handed out once.
    pub fn take_releases(&mut self) -> Vec<ContainerId> {
        std::mem::take(&mut self.releases)
    }

    pub fn progress(&self) -> f32 {
        if self.tasks.is_empty() {
            return 1.0;
        }
        self.succeeded as f32 / self.tasks.len() as f32
    }

    /// `Some` once the job has succeeded or failed.
    pub fn outcome(&self) -> Option<&JobOutcome> {
        self.outcome.as_ref()
    }

    pub fn task_state(&self, task_index: u32) -> Option<TaskState> {
        self.tasks.get(task_index as usize).map(|task| task.state)
    }

    pub fn counts(&self) -> TaskCounts {
        let mut counts = TaskCounts {
            failures: self.failures,
            ..TaskCounts::default()
        };
        for task in &self.tasks {
            match task.state {
                TaskState::Pending => counts.pending += 1,
                TaskState::Launching(_) => counts.launching += 1,
                TaskState::Running(_) => counts.running += 1,
                TaskState::Succeeded(_) => counts.succeeded += 1,
            }
        }
        counts
    }

    /// After a (re-)register: the RM lists the attempt's live containers. Ours keep running as
    /// they are; any it lists that we never received (a grant whose reply was lost in an RM
    /// crash) have no task and no token here, so they are released. `own` is the AM's container.
    pub fn on_registered(&mut self, live: &[ContainerId], own: Option<ContainerId>) {
        for &container_id in live {
            if Some(container_id) == own || self.container_tasks.contains_key(&container_id) {
                continue;
            }
            tracing::debug!(container_id = %container_id, "releasing a live container with no task");
            self.seen.insert(container_id);
            self.releases.push(container_id);
        }
    }

    /// Assigns grants to pending tasks, lowest index first; releases the ones not needed.
    pub fn on_allocated(&mut self, allocations: Vec<Allocation>) -> Vec<TaskLaunch> {
        let mut launches = Vec::new();
        for allocation in allocations {
            let container_id = allocation.container_id;
            if !self.seen.insert(container_id) {
                tracing::debug!(container_id = %container_id, "ignoring a grant received before");
                continue;
            }
            let big_enough = allocation.resources.fits(&self.task_resources);
            let task_index = match self.outcome {
                None if big_enough => self.pending.pop_first(),
                _ => None,
            };
            let Some(task_index) = task_index else {
                tracing::debug!(container_id = %container_id, big_enough, "releasing a grant not needed");
                self.releases.push(container_id);
                continue;
            };
            self.tasks[task_index as usize].state = TaskState::Launching(container_id);
            self.container_tasks.insert(container_id, task_index);
            launches.push(TaskLaunch { task_index, allocation });
        }
        launches
    }

    /// The agent accepted the launch.
    pub fn on_launched(&mut self, container_id: ContainerId) {
        if let Some(task_index) = self.launching_task(container_id) {
            self.tasks[task_index as usize].state = TaskState::Running(container_id);
        }
    }

    /// The launch failed: release the container and find the task a new one. A refusal counts
    /// toward `max_retries` (the agent judged this launch: a bad command fails the job rather
    /// than looping); an unreachable agent does not, up to `MAX_UNCOUNTED_LAUNCH_FAILURES`.
    pub fn on_launch_failed(&mut self, container_id: ContainerId, failure: &LaunchFailure) {
        let Some(task_index) = self.launching_task(container_id) else {
            return;
        };
        self.container_tasks.remove(&container_id);
        self.releases.push(container_id);
        let task = &mut self.tasks[task_index as usize];
        let counts = match failure.kind {
            LaunchFailureKind::AgentRefused => true,
            LaunchFailureKind::AgentUnreachable => {
                task.unreachable_launches += 1;
                task.unreachable_launches > MAX_UNCOUNTED_LAUNCH_FAILURES
            }
        };
        if counts {
            let description = format!("container {container_id} could not be launched: {}", failure.message);
            self.record_failure(task_index, description);
        } else {
            self.requeue(task_index);
        }
    }

    /// A container of ours completed. Completions of containers we do not track (released,
    /// already completed, the AM's own) are ignored.
    pub fn on_completed(&mut self, status: &ContainerStatus) {
        if status.state != ContainerState::Complete {
            return;
        }
        let container_id = status.container_id;
        let Some(task_index) = self.container_tasks.remove(&container_id) else {
            tracing::debug!(container_id = %container_id, "ignoring the completion of a container with no task");
            return;
        };
        match classify(status) {
            Completion::Succeeded => {
                self.tasks[task_index as usize].state = TaskState::Succeeded(container_id);
                self.succeeded += 1;
                if self.succeeded as usize == self.tasks.len() {
                    self.outcome = Some(JobOutcome::Succeeded {
                        diagnostics: format!("{} containers succeeded", self.tasks.len()),
                    });
                }
            }
            Completion::Retry => self.requeue(task_index),
            Completion::Failed(description) => self.record_failure(task_index, description),
        }
    }

    fn launching_task(&self, container_id: ContainerId) -> Option<u32> {
        let task_index = *self.container_tasks.get(&container_id)?;
        let state = self.tasks[task_index as usize].state;
        (state == TaskState::Launching(container_id)).then_some(task_index)
    }

    fn requeue(&mut self, task_index: u32) {
        debug_assert!(!self.pending.contains(&task_index), "task {task_index} is queued twice");
        self.tasks[task_index as usize].state = TaskState::Pending;
        self.pending.insert(task_index);
    }

    /// Counts a failure; past `max_retries` the job fails and every live container is released.
    fn record_failure(&mut self, task_index: u32, description: String) {
        self.failures += 1;
        let task = &mut self.tasks[task_index as usize];
        task.failures += 1;
        if task.failures <= self.max_retries {
            self.requeue(task_index);
            return;
        }
        task.state = TaskState::Pending;
        let diagnostics = format!("task {task_index} failed {} times; last: {description}", task.failures);
        self.outcome = Some(JobOutcome::Failed { diagnostics });
        self.pending.clear();
        self.releases
            .extend(self.container_tasks.drain().map(|(container_id, _)| container_id));
    }
}

fn classify(status: &ContainerStatus) -> Completion {
    let id = status.container_id;
    let reason = status.exit_reason.unwrap_or(match status.exit_code {
        Some(0) => ExitReason::Success,
        _ => ExitReason::Failed,
    });
    let what = match reason {
        ExitReason::Success => return Completion::Succeeded,
        ExitReason::Preempted => return Completion::Retry,
        ExitReason::Failed => match status.exit_code {
            Some(code) => format!("container {id} exited with code {code}"),
            None => format!("container {id} failed"),
        },
        ExitReason::ExceededMemory => format!("container {id} exceeded its memory limit"),
        ExitReason::NodeLost => format!("container {id} was lost with its node"),
        ExitReason::Expired => format!("container {id} expired before it was launched"),
        ExitReason::KilledByRm => format!("container {id} was killed by the RM"),
        // The shell AM kills only containers it no longer tracks, so this one was killed by
        // someone else: count it, so that the job cannot loop forever.
        ExitReason::KilledByApp => format!("container {id} was killed by the application"),
    };
    let diagnostics = status.diagnostics.trim();
    Completion::Failed(if diagnostics.is_empty() {
        what
    } else {
        format!("{what}: {diagnostics}")
    })
}
