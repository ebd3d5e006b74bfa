//! Checkpoints as the coordinator runs them: triggering barriers, collecting acknowledgements,
//! writing the metadata that makes a checkpoint complete, and the last commit of a job whose
//! sources all ended.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use spindle_protocol::now_ms;

use super::coordinator::{Coordinator, Effect, Pending, Phase};
use crate::checkpoints::{CheckpointMeta, SnapshotFile};
use crate::control::{Ack, ToWorker};
use crate::counts::RecordCounts;
use crate::operator::Commit;
use crate::wire::InstanceId;
use spindle_protocol::ContainerId;

impl Coordinator {
    pub(super) fn maybe_trigger(&mut self) {
        // Savepoints go first, at once; a stop under way holds the others back.
        if self.maybe_trigger_savepoint() {
            return;
        }
        let interval = Duration::from_millis(self.spec.checkpoint_interval_ms);
        if self.rescale.is_some()
            || !self.pending.is_empty()
            || self.sources_done
            || self.now.saturating_duration_since(self.last_trigger) < interval
        {
            return;
        }
        let id = self.next_checkpoint;
        self.next_checkpoint += 1;
        self.trigger(id);
    }

    /// Sends barrier `id` into the sources of the current layout.
    pub(super) fn trigger(&mut self, id: u64) {
        let Some(layout) = &self.layout else { return };
        self.last_trigger = self.now;
        let mut expected = BTreeMap::new();
        let mut by_worker: BTreeMap<ContainerId, Vec<InstanceId>> = BTreeMap::new();
        for (stage, placed) in layout.iter().enumerate() {
            for instance in placed {
                expected.insert(instance.id, (stage, instance.index, instance.range));
                if self.graph.stages[stage].spec.kind().is_source() {
                    by_worker.entry(self.slots[instance.worker]).or_default().push(instance.id);
                }
            }
        }
        self.pending.insert(
            id,
            Pending {
                started: self.now,
                expected,
                acks: BTreeMap::new(),
            },
        );
        let stop = self.savepoints.stops_at(id);
        for (worker, instances) in by_worker {
            self.send(
                worker,
                ToWorker::Trigger {
                    checkpoint: id,
                    instances,
                    stop,
                },
            );
        }
    }

    /// An instance's part of checkpoint `id` arrived.
    pub fn on_ack(&mut self, ack: Ack, now: Instant) {
        self.now = now;
        let id = ack.checkpoint;
        let Some(pending) = self.pending.get_mut(&id) else { return };
        if !pending.expected.contains_key(&ack.instance) {
            return;
        }
        let (instance, duration_ms) = (ack.instance, ack.duration_ms);
        pending.acks.insert(ack.instance, ack);
        self.rescale_on_ack(id, instance, duration_ms);
        let pending = &self.pending[&id];
        if pending.acks.len() == pending.expected.len() {
            self.complete(id);
        }
    }

    pub(super) fn complete(&mut self, id: u64) {
        let pending = self.pending.remove(&id).expect("checked by the caller");
        let mut stages: BTreeMap<String, Vec<SnapshotFile>> = BTreeMap::new();
        // What instances that went on through a regional restart staged for checkpoints it
        // abandoned is theirs: it is committed with this one.
        let mut commits: Vec<Commit> = self.carried.iter().map(|(_, commit)| commit.clone()).collect();
        let mut size = 0;
        for (instance, ack) in &pending.acks {
            let (stage, index, range) = pending.expected[instance];
            size += ack.state_bytes;
            if let Some(path) = &ack.state_file {
                stages
                    .entry(self.graph.stages[stage].spec.name.clone())
                    .or_default()
                    .push(SnapshotFile {
                        index,
                        range,
                        path: path.clone(),
                        bytes: ack.state_bytes,
                    });
            }
            if let Some(commit) = &ack.commit {
                commits.push(commit.clone());
            }
        }
        // Each instance's counts at the barrier: the checkpoint's totals, kept only if it is.
        let counters = self
            .counters
            .checkpointed(pending.acks.iter().map(|(instance, ack)| (*instance, ack.counts)));
        let meta = CheckpointMeta {
            id,
            completed_at_ms: now_ms(),
            duration_ms: self.now.saturating_duration_since(pending.started).as_millis() as u64,
            size_bytes: size,
            parallelism: self.parallelism_by_name(),
            stages,
            commits: commits.clone(),
            last: false,
            counters: counters.committed().clone(),
            epoch: self.epoch,
        };
        if let Err(error) = self.storage.complete(&meta) {
            tracing::warn!(checkpoint = id, %error, "cannot write checkpoint metadata: the checkpoint does not count");
            return;
        }
        self.counters = counters;
        self.carried.clear();
        let live: BTreeSet<InstanceId> = self
            .layout
            .iter()
            .flatten()
            .flatten()
            .chain(self.rescale.iter().flat_map(|rescale| &rescale.new))
            .map(|placed| placed.id)
            .collect();
        self.counters.forget_departed(&live);
        self.metrics.forget_departed(&live);
        tracing::debug!(checkpoint = id, bytes = size, duration_ms = meta.duration_ms, "checkpoint complete");
        self.pending.retain(|&other, _| other > id);
        // A savepoint of this checkpoint is copied out of it before its commits run (and so
        // before the prune after them).
        self.savepoint_on_complete(&meta);
        self.last_complete = Some(meta);
        self.effects.push(Effect::Commit(commits));
        self.rescale_on_complete(id);
    }

    /// An instance's input ended for good (bounded sources), with everything it counted.
    pub fn on_finished(&mut self, instance: InstanceId, commit: Option<Commit>, counts: RecordCounts, now: Instant) {
        self.now = now;
        self.counters.observe(instance, counts);
        let Some(layout) = &self.layout else { return };
        let Some(stage) = layout.iter().position(|placed| placed.iter().any(|p| p.id == instance)) else {
            return;
        };
        if self.graph.stages[stage].spec.kind().is_source() {
            self.sources_done = true;
        }
        self.finished.insert(instance, commit);
        // The sinks finish last, but the other instances' last counts may still be on their
        // way (each worker has its own connection): the job's final totals wait for them.
        let all_done = layout.iter().flatten().all(|p| self.finished.contains_key(&p.id));
        if all_done && self.phase == Phase::Running {
            self.finish_job();
        }
    }

    /// Every sink ended: the last checkpoint commits what no complete checkpoint did.
    pub(super) fn finish_job(&mut self) {
        let mut commits: Vec<Commit> = self.carried.iter().map(|(_, commit)| commit.clone()).collect();
        for pending in self.pending.values() {
            commits.extend(pending.acks.values().filter_map(|ack| ack.commit.clone()));
        }
        commits.extend(self.finished.values().flatten().cloned());
        let id = self.next_checkpoint;
        self.next_checkpoint += 1;
        let meta = CheckpointMeta {
            id,
            completed_at_ms: now_ms(),
            duration_ms: 0,
            size_bytes: 0,
            parallelism: self.parallelism_by_name(),
            stages: BTreeMap::new(),
            commits: commits.clone(),
            last: true,
            counters: self.counters.totals(),
            epoch: self.epoch,
        };
        self.phase = Phase::Finishing;
        self.fail_unstarted_savepoints("the job's sources ended before the savepoint could be taken");
        if let Err(error) = self.storage.complete(&meta) {
            self.effects.push(Effect::Finish {
                succeeded: false,
                diagnostics: format!("cannot record the last checkpoint: {error}"),
            });
            return;
        }
        tracing::info!(checkpoint = id, "every source ended and every sink finished: committing the rest");
        self.effects.push(Effect::Commit(commits));
        self.effects.push(Effect::Finish {
            succeeded: true,
            diagnostics: format!(
                "every source ended; output committed (last checkpoint {id}, {} restarts)",
                self.restarts
            ),
        });
    }
}
