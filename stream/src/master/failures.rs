//! Failures as the coordinator handles them: restarts from the latest checkpoint (of the failed
//! instances' failover region alone when the rest of the job can go on, else of the whole
//! pipeline), lost workers, preemption notices, and workers to hand back.
//!
//! Regional recovery (Flink's failover regions): instances exchange records along the graph's
//! edges, all-to-all over keyed and round-robin edges, instance `i` to instance `i` over
//! forward ones (`Graph::is_forward`). A failed instance's region is everything connected to
//! it; nothing outside it sent it records or received records from it, so the rest of the job
//! is consistent without going back. The region's instances stop on their workers, then start
//! again from the latest complete checkpoint on the same slots (a lost worker's slot on a
//! replacement): its sources replay from their checkpointed offsets, nothing else does.
//! Checkpoints in flight are abandoned; what the other regions' sinks staged for them is
//! committed with the next checkpoint that completes (they did not go back, so that output is
//! theirs once and only once).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use spindle_protocol::{ContainerId, FailoverStrategy, OperatorKind, RestartStatus, now_ms};

use super::coordinator::{Coordinator, Effect, Phase};
use crate::control::ToWorker;
use crate::graph::Placed;
use crate::operator::UploadCommit;
use crate::wire::InstanceId;

/// How long workers have to stop a region's instances before the whole job restarts instead.
const CANCEL_PATIENCE: Duration = Duration::from_secs(15);

/// A failover region going back to the latest checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Its instances, by their ids in the layout (they get new ones when deployed again).
    pub region: BTreeSet<InstanceId>,
    /// Workers that have not yet said they stopped the region's instances.
    pub waiting: BTreeSet<ContainerId>,
    pub since: Instant,
}

impl Coordinator {
    /// An instance reported an error: restart, unless it belongs to an earlier deployment.
    pub fn on_instance_failed(&mut self, instance: InstanceId, error: &str, now: Instant) {
        self.now = now;
        let live = self
            .layout
            .as_ref()
            .is_some_and(|layout| layout.iter().flatten().any(|p| p.id == instance));
        if live {
            self.recover(BTreeSet::from([instance]), &format!("instance {instance} failed: {error}"));
        }
    }

    /// These instances failed: their failover region goes back to the latest checkpoint alone
    /// when it can, else the whole pipeline does.
    fn recover(&mut self, failed: BTreeSet<InstanceId>, reason: &str) {
        if let Phase::Recovering(recovery) = &self.phase {
            if failed.is_subset(&recovery.region) {
                return; // going back already
            }
            // Another region failed meanwhile: start everything again.
            return self.restart(reason);
        }
        match self.failover_region(&failed) {
            Some(region) => self.restart_region(region, reason),
            None => self.restart(reason),
        }
    }

    /// The region to restart alone, if the job allows: `failover = "region"` (the default),
    /// running with no rescale, preemption or stop under way (their barriers span every region), and a region short of the whole job.
    fn failover_region(&self, failed: &BTreeSet<InstanceId>) -> Option<BTreeSet<InstanceId>> {
        if self.spec.failover == FailoverStrategy::Full
            || self.phase != Phase::Running
            || self.rescale.is_some()
            || self.savepoints.stopping()
            || !self.draining.is_empty()
        {
            return None;
        }
        let layout = self.layout.as_ref()?;
        let region = self.graph.region(layout, failed);
        let total = layout.iter().map(Vec::len).sum::<usize>();
        (region.len() < total).then_some(region)
    }

    /// Counts a restart; `false` (and the job is failing) past `max_restarts`.
    fn count_restart(&mut self, reason: &str, instances: usize) -> bool {
        self.restarts += 1;
        let of_instances = self.layout.iter().flatten().map(Vec::len).sum::<usize>();
        self.last_restart = Some(RestartStatus {
            at_ms: now_ms(),
            reason: reason.to_owned(),
            instances: instances.min(of_instances) as u32,
            of_instances: of_instances as u32,
            checkpoint: self.last_complete.as_ref().map(|meta| meta.id),
        });
        if self.restarts > self.spec.max_restarts {
            self.phase = Phase::Finishing;
            self.effects.push(Effect::Finish {
                succeeded: false,
                diagnostics: format!("restarted {} times (max_restarts); last failure: {reason}", self.spec.max_restarts),
            });
            return false;
        }
        true
    }

    /// Something failed: stop everything and start again from the latest complete checkpoint.
    pub(super) fn restart(&mut self, reason: &str) {
        if matches!(self.phase, Phase::Finishing) {
            return;
        }
        let everything = self.layout.iter().flatten().map(Vec::len).sum::<usize>();
        if !self.count_restart(reason, everything) {
            return;
        }
        tracing::warn!(restarts = self.restarts, %reason, "restarting the pipeline from its latest checkpoint");
        self.epoch += 1;
        let dropped = self
            .pending
            .values()
            .flat_map(|pending| pending.acks.values().filter_map(|ack| ack.commit.as_ref()))
            .chain(self.carried.iter().map(|(_, commit)| commit))
            .chain(self.finished.values().flatten());
        let uploads: Vec<UploadCommit> = dropped.flat_map(|commit| commit.uploads.iter().cloned()).collect();
        if !uploads.is_empty() {
            self.effects.push(Effect::AbortUploads(uploads));
        }
        self.pending.clear();
        self.carried.clear();
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

    /// Stops `region`'s instances; `tick_recovery` deploys them again once they stopped.
    fn restart_region(&mut self, region: BTreeSet<InstanceId>, reason: &str) {
        if !self.count_restart(reason, region.len()) {
            return;
        }
        tracing::warn!(
            restarts = self.restarts,
            instances = region.len(),
            of = self.last_restart.as_ref().map_or(0, |last| last.of_instances),
            %reason,
            "restarting a failover region from the latest checkpoint; the rest of the job goes on"
        );
        self.epoch += 1;
        // The region's own staged uploads will never be completed: it writes them again.
        let mut uploads: Vec<UploadCommit> = Vec::new();
        for (_, pending) in std::mem::take(&mut self.pending) {
            for (instance, ack) in pending.acks {
                match ack.commit {
                    Some(commit) if !region.contains(&instance) => self.carried.push((instance, commit)),
                    Some(commit) => uploads.extend(commit.uploads),
                    None => {}
                }
            }
        }
        let in_region = |instance: &InstanceId| region.contains(instance);
        uploads.extend(
            self.carried
                .iter()
                .filter(|(instance, _)| in_region(instance))
                .flat_map(|(_, commit)| commit.uploads.iter().cloned()),
        );
        uploads.extend(
            self.finished
                .iter()
                .filter(|(instance, _)| in_region(instance))
                .flat_map(|(_, commit)| commit.iter().flat_map(|commit| commit.uploads.iter().cloned())),
        );
        if !uploads.is_empty() {
            self.effects.push(Effect::AbortUploads(uploads));
        }
        self.carried.retain(|(instance, _)| !region.contains(instance));
        self.finished.retain(|instance, _| !region.contains(instance));
        self.counters.go_back(&region);
        let mut cancels: BTreeMap<ContainerId, Vec<InstanceId>> = BTreeMap::new();
        for placed in self.layout.iter().flatten().flatten().filter(|p| region.contains(&p.id)) {
            cancels.entry(self.slots[placed.worker]).or_default().push(placed.id);
        }
        let mut waiting = BTreeSet::new();
        for (worker, instances) in cancels {
            if self.workers.contains_key(&worker) {
                self.send(
                    worker,
                    ToWorker::Cancel {
                        instances,
                        epoch: self.epoch,
                    },
                );
                waiting.insert(worker);
            }
        }
        self.phase = Phase::Recovering(Recovery {
            region,
            waiting,
            since: self.now,
        });
    }

    pub fn on_cancelled(&mut self, worker: ContainerId, epoch: u64, now: Instant) {
        self.now = now;
        if let Phase::Recovering(recovery) = &mut self.phase
            && epoch == self.epoch
        {
            recovery.waiting.remove(&worker);
        }
    }

    /// Deploys the recovering region once its instances stopped and its slots have workers.
    pub(super) fn tick_recovery(&mut self) {
        let Phase::Recovering(recovery) = &self.phase else { return };
        if !recovery.waiting.is_empty() {
            if self.now.saturating_duration_since(recovery.since) > CANCEL_PATIENCE {
                self.restart("a failed region's instances did not stop within 15 s");
            }
            return;
        }
        let region = recovery.region.clone();
        let Some(mut layout) = self.layout.take() else { return };
        // A slot whose worker is gone goes to a connected worker that hosts nothing; with too
        // few, wait: the asks bring replacements.
        let live =
            |coordinator: &Coordinator, worker: &ContainerId| coordinator.workers.get(worker).is_some_and(|w| w.data_address.is_some());
        let lost: BTreeSet<usize> = layout
            .iter()
            .flatten()
            .filter(|p| region.contains(&p.id) && !live(self, &self.slots[p.worker]))
            .map(|p| p.worker)
            .collect();
        let spare: Vec<ContainerId> = self.connected().into_iter().filter(|id| !self.slots.contains(id)).collect();
        if spare.len() < lost.len() {
            self.layout = Some(layout);
            return;
        }
        for (slot, worker) in lost.into_iter().zip(spare) {
            self.slots[slot] = worker;
        }
        let mut restarted: Vec<(usize, Placed)> = Vec::new();
        for (stage, placed) in layout.iter_mut().enumerate() {
            for instance in placed.iter_mut().filter(|p| region.contains(&p.id)) {
                instance.id = self.next_instance_id();
                restarted.push((stage, instance.clone()));
            }
        }
        self.clean_region_staging(&restarted);
        let restored = self.last_complete.as_ref().map_or(0, |meta| meta.id);
        let mut starts: BTreeMap<ContainerId, Vec<_>> = BTreeMap::new();
        for (stage, instance) in &restarted {
            self.counters.track(instance.id, &self.graph.stages[*stage].spec.name);
            let plan = self.instance_plan(&layout, *stage, instance, restored, None);
            starts.entry(self.slots[instance.worker]).or_default().push(plan);
        }
        tracing::info!(
            epoch = self.epoch,
            restored,
            instances = restarted.len(),
            "deploying a failover region again"
        );
        for (worker, instances) in starts {
            self.send(worker, ToWorker::Start { instances });
        }
        self.layout = Some(layout);
        self.phase = Phase::Running;
        self.last_trigger = self.now;
    }

    /// What the restarted file sink instances staged before goes (it was never committed, and
    /// they write it again); the other instances' staged files stay.
    fn clean_region_staging(&mut self, restarted: &[(usize, Placed)]) {
        let mut dirs = Vec::new();
        let mut prefixes = Vec::new();
        for (stage, instance) in restarted {
            let spec = &self.graph.stages[*stage].spec;
            if spec.kind() != OperatorKind::FileSink {
                continue;
            }
            if let Some(path) = &spec.path {
                let dir = std::path::Path::new(path).join(".staging");
                if !dirs.contains(&dir) {
                    dirs.push(dir);
                }
                prefixes.push(crate::ops::sinks::staged_prefix(&spec.name, instance.index));
            }
        }
        if !prefixes.is_empty() {
            self.effects.push(Effect::CleanStaging {
                dirs,
                epoch: self.epoch,
                prefixes,
            });
        }
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
        match &mut self.phase {
            Phase::Resetting { waiting, .. } => {
                waiting.remove(&worker);
                if waiting.is_empty() {
                    self.phase = Phase::Deploying;
                }
            }
            Phase::Recovering(recovery) => {
                recovery.waiting.remove(&worker);
            }
            _ => {}
        }
        let hosted = self.instances_on(worker);
        if !hosted.is_empty() {
            self.recover(hosted, &format!("worker {worker} lost: {reason}"));
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
        !self.instances_on(worker).is_empty()
    }

    /// The current layout's instances on `worker`.
    fn instances_on(&self, worker: ContainerId) -> BTreeSet<InstanceId> {
        let Some(layout) = &self.layout else { return BTreeSet::new() };
        layout
            .iter()
            .flatten()
            .filter(|placed| self.slots.get(placed.worker) == Some(&worker))
            .map(|placed| placed.id)
            .collect()
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
