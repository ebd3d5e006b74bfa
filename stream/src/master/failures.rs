//! Failures as the coordinator handles them: restarts from the latest checkpoint, lost
//! workers, preemption notices, and workers to hand back.

use std::collections::BTreeSet;
use std::time::Instant;

use spindle_protocol::ContainerId;

use super::coordinator::{Coordinator, Effect, Phase};
use crate::control::ToWorker;
use crate::wire::InstanceId;

impl Coordinator {
    /// An instance reported an error: restart, unless it belongs to an earlier deployment.
    pub fn on_instance_failed(&mut self, instance: InstanceId, error: &str, now: Instant) {
        self.now = now;
        let live = self
            .layout
            .as_ref()
            .is_some_and(|layout| layout.iter().flatten().any(|p| p.id == instance));
        if live {
            self.restart(&format!("instance {instance} failed: {error}"));
        }
    }

    /// Something failed: stop everything and start again from the latest complete checkpoint.
    pub(super) fn restart(&mut self, reason: &str) {
        if matches!(self.phase, Phase::Finishing) {
            return;
        }
        self.restarts += 1;
        if self.restarts > self.spec.max_restarts {
            self.phase = Phase::Finishing;
            self.effects.push(Effect::Finish {
                succeeded: false,
                diagnostics: format!("restarted {} times (max_restarts); last failure: {reason}", self.spec.max_restarts),
            });
            return;
        }
        tracing::warn!(restarts = self.restarts, %reason, "restarting the pipeline from its latest checkpoint");
        self.epoch += 1;
        self.pending.clear();
        self.finished.clear();
        self.sources_done = false;
        self.rescale = None;
        self.layout = None;
        // What the instances counted since the checkpoint is dropped with them: the records
        // are replayed and counted again (so the totals shown go back to the checkpoint's).
        self.counters.restore(self.restored_totals());
        let waiting: BTreeSet<ContainerId> = self.connected().into_iter().collect();
        for &worker in &waiting {
            self.send(worker, ToWorker::Reset { epoch: self.epoch });
        }
        self.phase = if waiting.is_empty() {
            Phase::Deploying
        } else {
            Phase::Resetting { waiting, since: self.now }
        };
    }

    pub fn on_reset_done(&mut self, worker: ContainerId, epoch: u64, now: Instant) {
        self.now = now;
        if epoch != self.epoch {
            return;
        }
        if let Phase::Resetting { waiting, .. } = &mut self.phase {
            waiting.remove(&worker);
            if waiting.is_empty() {
                self.phase = Phase::Deploying;
            }
        }
    }

    /// A worker is gone (its container ended or its control connection broke).
    pub fn on_worker_lost(&mut self, worker: ContainerId, reason: &str, now: Instant) {
        self.now = now;
        // A worker cut off from its node (or whose container the RM gave up on) must not go on
        // running anything of this job.
        self.send(worker, ToWorker::Shutdown);
        if self.workers.remove(&worker).is_none() {
            return;
        }
        if let Phase::Resetting { waiting, .. } = &mut self.phase {
            waiting.remove(&worker);
            if waiting.is_empty() {
                self.phase = Phase::Deploying;
            }
        }
        if self.hosts_instances(worker) {
            self.restart(&format!("worker {worker} lost: {reason}"));
        }
    }

    /// The RM will preempt these containers: scale down the operators on them instead of
    /// failing when they go. A worker hosting a source cannot be emptied (sources keep their
    /// parallelism): its loss will restart the job from its checkpoint, as a failure would.
    pub fn on_preempt(&mut self, containers: &[ContainerId], now: Instant) {
        self.now = now;
        let Some(layout) = &self.layout else { return };
        for container in containers {
            let Some(slot) = self.slots.iter().position(|id| id == container) else {
                continue;
            };
            if !self.draining.insert(slot) {
                continue;
            }
            let hosted: Vec<usize> = (0..layout.len())
                .filter(|&stage| layout[stage].iter().any(|p| p.worker == slot))
                .collect();
            if hosted.iter().any(|&stage| !self.graph.stages[stage].spec.is_rescalable()) {
                tracing::warn!(%container, "a preempted worker hosts a source: the job will restart from its checkpoint when it goes");
                continue;
            }
            for stage in hosted {
                self.parallelism[stage] = self.parallelism[stage].saturating_sub(1).max(1);
            }
            tracing::info!(%container, "preemption notice: scaling down the operators on it");
        }
    }

    /// Whether the current layout has instances on `worker`.
    pub fn hosts_instances(&self, worker: ContainerId) -> bool {
        let Some(layout) = &self.layout else { return false };
        layout.iter().flatten().any(|placed| self.slots.get(placed.worker) == Some(&worker))
    }

    /// Workers beyond what the job needs that host nothing: hand them back. Nothing goes
    /// while a deployment or rescale may still place instances.
    pub fn idle_workers(&self) -> Vec<ContainerId> {
        if self.phase != Phase::Running || self.rescale.is_some() {
            return Vec::new();
        }
        let excess = self.workers.len().saturating_sub(self.workers_wanted());
        self.workers
            .iter()
            .filter(|(id, worker)| worker.data_address.is_some() && !self.hosts_instances(**id))
            .map(|(id, _)| *id)
            .take(excess)
            .collect()
    }
}
