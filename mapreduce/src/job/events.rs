//! What the job learns while it runs: task reports, container completions, launch failures,
//! lost nodes, and the passing of time (`tick`); and how attempts end.

use spindle_protocol::{ContainerId, ContainerState, ContainerStatus, ExitReason, NodeId};

use super::speculation::{max_running_speculations, median_ms, straggler_remaining_ms};
use super::task::{Attempt, TaskState};
use super::{JobOutcome, MAX_UNCOUNTED_LAUNCH_FAILURES, MapReduceJob, REPORT_GRACE_MS};
use crate::task_protocol::{MapOutputLocation, TaskAttemptId, TaskKind, TaskOutcome, TaskReport};
use spindle_app_master::{LaunchFailure, LaunchFailureKind};

/// How an attempt that did not succeed ended.
enum AttemptEnd {
    /// Counts toward `max_task_attempts` and toward avoiding its node.
    Failed(String),
    /// Through no fault of the task (preempted, node lost, killed): run again, not counted.
    Killed,
}

impl MapReduceJob {
    /// A task's report: progress and counters, and at the end its outcome. Reports of attempts
    /// that are no longer live are ignored.
    pub fn on_task_report(&mut self, report: &TaskReport, now_ms: u64) {
        if self.outcome.is_some() {
            return;
        }
        let id = report.attempt;
        let Some(attempt) = self.attempts.get_mut(&id) else {
            tracing::debug!(attempt = %id, "ignoring the report of an attempt that is not live");
            return;
        };
        // A progress report may arrive after the final one (HTTP requests race): it changes nothing.
        if report.outcome.is_none() && attempt.reported_success {
            return;
        }
        attempt.progress = f64::from(report.progress).clamp(0.0, 1.0);
        match &report.outcome {
            // Progress reports carry no counters; the final report has them all.
            None => {}
            Some(TaskOutcome::Succeeded) => {
                attempt.counters = report.counters;
                attempt.reported_success = true;
                attempt.progress = 1.0;
                if attempt.exited_cleanly_ms.is_some() {
                    self.attempt_succeeded(id, now_ms);
                }
            }
            Some(TaskOutcome::Failed { error }) => {
                let description = format!("{id} failed on node {}: {error}", attempt.node_id);
                self.end_attempt(id, AttemptEnd::Failed(description));
            }
            Some(TaskOutcome::FetchFailed { maps, error }) => self.on_fetch_failed(id, maps, error),
        }
    }

    /// A container of ours completed. Completions of containers we do not track (released,
    /// already ended, the AM's own) are ignored.
    pub fn on_container_completed(&mut self, status: &ContainerStatus, now_ms: u64) {
        if status.state != ContainerState::Complete || self.outcome.is_some() {
            return;
        }
        // The container is gone: it is no longer held, and never released.
        let Some(id) = self.containers.remove(&status.container_id) else {
            return;
        };
        let reason = status.exit_reason.unwrap_or(match status.exit_code {
            Some(0) => ExitReason::Success,
            _ => ExitReason::Failed,
        });
        let node_id = self.attempts[&id].node_id.clone();
        match reason {
            ExitReason::Success => {
                let attempt = self.attempts.get_mut(&id).expect("a tracked container has a live attempt");
                attempt.exited_cleanly_ms = Some(now_ms);
                if attempt.reported_success {
                    self.attempt_succeeded(id, now_ms);
                }
            }
            ExitReason::Preempted | ExitReason::KilledByRm | ExitReason::KilledByApp | ExitReason::Expired => {
                self.end_attempt(id, AttemptEnd::Killed);
            }
            ExitReason::NodeLost => {
                self.end_attempt(id, AttemptEnd::Killed);
                self.on_node_lost(&node_id);
            }
            // A reduce that could not fetch its input exits so (after its report, which may
            // arrive later or not at all): not the reduce's fault, so not counted; if the map
            // output is gone for good, the report or the node's loss runs the maps again.
            ExitReason::Failed if status.exit_code == Some(i32::from(crate::task_main::exit_code::FETCH_FAILED)) => {
                self.tallies.fetch_failures += 1;
                self.end_attempt(id, AttemptEnd::Killed);
            }
            ExitReason::Failed | ExitReason::ExceededMemory => {
                let what = match (reason, status.exit_code) {
                    (ExitReason::ExceededMemory, _) => "exceeded its memory limit".to_owned(),
                    (_, Some(code)) => format!("exited with code {code}"),
                    (_, None) => "failed".to_owned(),
                };
                let diagnostics = status.diagnostics.trim();
                let mut description = format!("{id} in container {} on node {node_id} {what}", status.container_id);
                if !diagnostics.is_empty() {
                    description = format!("{description}: {diagnostics}");
                }
                self.end_attempt(id, AttemptEnd::Failed(description));
            }
        }
    }

    /// The driver could not launch a granted container: release it and run the task again. A
    /// refusal counts as a failure (a bad command fails the job rather than looping); an
    /// unreachable agent counts against its node, and against the task only past
    /// `MAX_UNCOUNTED_LAUNCH_FAILURES`.
    pub fn on_launch_failed(&mut self, container_id: ContainerId, failure: &LaunchFailure) {
        let Some(&id) = self.containers.get(&container_id) else {
            return;
        };
        let node_id = self.attempts[&id].node_id.clone();
        let description = format!(
            "{id}: container {container_id} on node {node_id} could not be launched: {}",
            failure.message
        );
        let end = match failure.kind {
            LaunchFailureKind::AgentRefused => AttemptEnd::Failed(description),
            LaunchFailureKind::AgentUnreachable => {
                let task = self.task_mut(id.kind, id.task);
                task.unreachable_launches += 1;
                if task.unreachable_launches > MAX_UNCOUNTED_LAUNCH_FAILURES {
                    AttemptEnd::Failed(description)
                } else {
                    self.record_node_failure(&node_id);
                    AttemptEnd::Killed
                }
            }
        };
        self.end_attempt(id, end);
    }

    /// A node is gone (or the RM said it is LOST): the map output it served is lost. Every
    /// map whose output lived there runs again while some reduce still needs it. Its running
    /// attempts end when their `NODE_LOST` completions arrive.
    pub fn on_node_lost(&mut self, node_id: &NodeId) {
        if self.outcome.is_some() || !self.reduces_outstanding() {
            return;
        }
        // An attempt that exited 0 there and awaits its report has lost its output with it.
        let exited_there: Vec<TaskAttemptId> = self
            .attempts
            .values()
            .filter(|attempt| attempt.exited_cleanly_ms.is_some() && attempt.node_id == *node_id)
            .map(|attempt| attempt.id)
            .collect();
        for id in exited_there {
            self.end_attempt(id, AttemptEnd::Killed);
        }
        let lost: Vec<u32> = self
            .maps
            .iter()
            .filter(|task| task.output.as_ref().is_some_and(|output| output.node_id == *node_id))
            .map(|task| task.index)
            .collect();
        for map in lost {
            self.lose_map_output(map);
        }
    }

    /// The passage of time: fails attempts whose container exited 0 without a `Succeeded`
    /// report within `REPORT_GRACE_MS`, and picks stragglers for speculation.
    pub fn tick(&mut self, now_ms: u64) {
        if self.outcome.is_some() {
            return;
        }
        let silent: Vec<TaskAttemptId> = self
            .attempts
            .values()
            .filter(|attempt| {
                attempt
                    .exited_cleanly_ms
                    .is_some_and(|exited| now_ms.saturating_sub(exited) >= REPORT_GRACE_MS)
            })
            .map(|attempt| attempt.id)
            .collect();
        for id in silent {
            let node_id = self.attempts[&id].node_id.clone();
            let description = format!("{id} on node {node_id} exited 0 without reporting success");
            self.end_attempt(id, AttemptEnd::Failed(description));
            if self.outcome.is_some() {
                return;
            }
        }
        self.choose_stragglers(now_ms);
    }

    fn on_fetch_failed(&mut self, id: TaskAttemptId, maps: &[u32], error: &str) {
        let attempt = self.attempts.get(&id).expect("checked live");
        if id.kind != TaskKind::Reduce {
            let description = format!("{id} reported a fetch failure, which only reduces can: {error}");
            self.end_attempt(id, AttemptEnd::Failed(description));
            return;
        }
        tracing::info!(attempt = %id, ?maps, error, "fetch failure: re-running the maps whose output was lost");
        // Only a failure about a map's current output loses it: the map may have run again
        // since this reduce started.
        let lost_maps: Vec<u32> = maps
            .iter()
            .copied()
            .filter(|&map| {
                let Some(task) = self.maps.get(map as usize) else { return false };
                task.output_attempt.is_some() && task.output_attempt == attempt.map_output_attempts.get(map as usize).copied()
            })
            .collect();
        self.tallies.fetch_failures += 1;
        self.end_attempt(id, AttemptEnd::Killed);
        for map in lost_maps {
            if let Some(node_id) = self.maps[map as usize].output.as_ref().map(|output| output.node_id.clone()) {
                self.record_node_failure(&node_id);
            }
            self.lose_map_output(map);
        }
    }

    /// A map's output is gone: run the map again (not counted as a failure).
    fn lose_map_output(&mut self, map: u32) {
        let task = &mut self.maps[map as usize];
        if task.output.take().is_none() {
            return;
        }
        task.output_attempt = None;
        debug_assert!(task.live_attempts.is_empty(), "a succeeded map has no live attempt");
        task.move_to(TaskState::Pending);
        self.tallies.lost_map_outputs += 1;
        tracing::info!(map, "map output lost: the map runs again");
    }

    /// Both halves of success are in: the task succeeded; any other attempt of it is killed.
    fn attempt_succeeded(&mut self, id: TaskAttemptId, now_ms: u64) {
        let attempt = self.remove_attempt(id);
        let task = self.task_mut(id.kind, id.task);
        if task.state == TaskState::Succeeded {
            return;
        }
        task.move_to(TaskState::Succeeded);
        task.wants_speculative = false;
        task.success_counters = Some(attempt.counters);
        task.success_duration_ms = Some(now_ms.saturating_sub(attempt.launched_ms));
        task.output_attempt = Some(id.attempt);
        if id.kind == TaskKind::Map {
            task.output = Some(MapOutputLocation {
                map: id.task,
                node_id: attempt.node_id.clone(),
                node_address: attempt.node_address.clone(),
                output_name: id.output_name(),
            });
        }
        let losers: Vec<u32> = task.live_attempts.clone();
        for loser in losers {
            let loser = TaskAttemptId { attempt: loser, ..id };
            tracing::debug!(winner = %id, loser = %loser, "another attempt won: killing this one");
            self.end_attempt(loser, AttemptEnd::Killed);
        }
        if id.kind == TaskKind::Reduce && !self.reduces_outstanding() {
            self.outcome = Some(JobOutcome::ReadyToCommit);
            self.release_everything();
        }
    }

    /// Ends a live attempt that did not succeed; its container (if still held) is released.
    fn end_attempt(&mut self, id: TaskAttemptId, end: AttemptEnd) {
        let attempt = self.remove_attempt(id);
        let max_task_attempts = self.settings.max_task_attempts.max(1);
        let description = match end {
            AttemptEnd::Killed => {
                self.tallies.killed += 1;
                None
            }
            AttemptEnd::Failed(description) => {
                tracing::info!(attempt = %id, error = %description, "task attempt failed");
                self.tallies.failed += 1;
                self.record_node_failure(&attempt.node_id);
                Some(description)
            }
        };
        let task = self.task_mut(id.kind, id.task);
        if let Some(description) = description {
            task.counted_failures += 1;
            task.last_error = Some(description);
        }
        if task.state == TaskState::Succeeded || !task.live_attempts.is_empty() {
            return;
        }
        task.move_to(TaskState::Pending);
        task.wants_speculative = false;
        if task.counted_failures >= max_task_attempts {
            let diagnostics = format!(
                "{} failed {} times (max_task_attempts = {max_task_attempts}); last error: {}",
                task.name(),
                task.counted_failures,
                task.last_error.as_deref().unwrap_or("unknown")
            );
            self.fail(diagnostics);
        }
    }

    /// Takes a live attempt out of every table, releasing its container if still held.
    fn remove_attempt(&mut self, id: TaskAttemptId) -> Attempt {
        let attempt = self.attempts.remove(&id).expect("ending a live attempt");
        if self.containers.remove(&attempt.container_id).is_some() {
            self.releases.push(attempt.container_id);
        }
        let task = self.task_mut(id.kind, id.task);
        task.live_attempts.retain(|&live| live != id.attempt);
        attempt
    }

    fn record_node_failure(&mut self, node_id: &NodeId) {
        if self.nodes.record_failure(node_id, self.settings.node_failure_threshold) {
            tracing::warn!(node_id = %node_id, "tasks keep failing on this node: the job avoids it");
        }
    }

    fn fail(&mut self, diagnostics: String) {
        tracing::warn!(diagnostics = %diagnostics, "the job failed");
        self.outcome = Some(JobOutcome::Failed { diagnostics });
        self.release_everything();
    }

    /// The job is over (or committing): every held container goes back.
    fn release_everything(&mut self) {
        let held = std::mem::take(&mut self.containers);
        self.releases.extend(held.into_keys());
        self.attempts.clear();
        for task in self.maps.iter_mut().chain(self.reduces.iter_mut()) {
            task.live_attempts.clear();
            task.wants_speculative = false;
            if task.state == TaskState::Running {
                task.move_to(TaskState::Pending);
            }
        }
    }

    /// Marks stragglers for a speculative attempt (see `speculation.rs`).
    fn choose_stragglers(&mut self, now_ms: u64) {
        let Some(settings) = self.settings.speculation else {
            return;
        };
        let cap = max_running_speculations(&settings, self.maps.len() + self.reduces.len());
        let mut in_flight = self.speculations_in_flight();
        for kind in [TaskKind::Map, TaskKind::Reduce] {
            if in_flight >= cap {
                return;
            }
            if kind == TaskKind::Reduce && !self.all_maps_have_output() {
                continue;
            }
            let stage = self.stage(kind);
            if stage.iter().any(|task| task.state == TaskState::Pending) {
                continue;
            }
            let Some(median) = median_ms(stage.iter().filter_map(|task| task.success_duration_ms).collect()) else {
                continue;
            };
            let mut stragglers: Vec<(f64, u32)> = stage
                .iter()
                .filter(|task| task.state == TaskState::Running && !task.speculated && !task.wants_speculative)
                .filter_map(|task| {
                    let [attempt] = task.live_attempts.as_slice() else { return None };
                    let attempt = &self.attempts[&TaskAttemptId {
                        kind,
                        task: task.index,
                        attempt: *attempt,
                    }];
                    if attempt.exited_cleanly_ms.is_some() {
                        return None;
                    }
                    let elapsed = now_ms.saturating_sub(attempt.launched_ms);
                    straggler_remaining_ms(&settings, median, elapsed, attempt.progress).map(|remaining| (remaining, task.index))
                })
                .collect();
            stragglers.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            for (remaining_ms, index) in stragglers {
                if in_flight >= cap {
                    return;
                }
                tracing::info!(
                    ?kind,
                    task = index,
                    remaining_ms,
                    median_ms = median,
                    "straggler: asking for a speculative attempt"
                );
                self.task_mut(kind, index).wants_speculative = true;
                in_flight += 1;
            }
        }
    }

    /// Speculative attempts wanted or running now.
    fn speculations_in_flight(&self) -> usize {
        let wanted = self.maps.iter().chain(&self.reduces).filter(|task| task.wants_speculative).count();
        let running = self.attempts.values().filter(|attempt| attempt.speculative).count();
        wanted + running
    }
}
