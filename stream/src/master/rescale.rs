//! Live rescaling of one operator (no restart): new instances start beside the old ones, the
//! operator's upstream switches to the new key-group owners exactly at a checkpoint barrier,
//! the old owners' snapshots of that barrier hand the moving groups over, and only instances
//! that gain groups pause until they have loaded them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use spindle_protocol::{ContainerId, RescaleStatus, now_ms};

use super::coordinator::{Coordinator, Phase};
use crate::control::{InputPlan, InstanceChange, Range, StateFileRef, ToWorker};
use crate::graph::{Layout, Placed, intersect};
use crate::keys::{assign_ranges, even_ranges};
use crate::wire::InstanceId;

/// A rescale in progress.
pub struct Rescale {
    pub stage: usize,
    pub checkpoint: u64,
    pub old: Vec<Placed>,
    pub new: Vec<Placed>,
    /// Workers that must confirm they queued the changes before the barrier goes out.
    pub awaiting_prepared: BTreeSet<ContainerId>,
    /// Instances that gain groups → their range before the rescale (`None`: new instance).
    pub gaining: BTreeMap<u64, Option<(u32, u32)>>,
    pub loads_sent: bool,
    /// Gaining instances told to load.
    pub loaded_requested: BTreeSet<u64>,
    pub loaded: BTreeSet<u64>,
    pub checkpoint_done: bool,
    pub started: Instant,
    /// When the first old instance stopped at the barrier (its ack's arrival less the time it
    /// spent on the snapshot): moved groups are not processed from then until loaded.
    pub barrier_at: Option<Instant>,
    pub status: RescaleStatus,
}

impl Coordinator {
    /// Starts a rescale when a stage's wanted parallelism differs from what runs and enough
    /// workers are connected.
    pub(super) fn maybe_start_rescale(&mut self) {
        if self.rescale.is_some()
            || !self.pending.is_empty()
            || self.sources_done
            || self.phase != Phase::Running
            || self.savepoints.holds_rescales()
        {
            return;
        }
        let Some(layout) = &self.layout else { return };
        let Some(stage) = (0..layout.len()).find(|&stage| layout[stage].len() as u32 != self.parallelism[stage]) else {
            return;
        };
        let to = self.parallelism[stage] as usize;
        // Slots free for this stage: connected workers hosting none of its instances.
        let used: BTreeSet<usize> = layout[stage].iter().map(|p| p.worker).collect();
        let mut free: Vec<usize> = (0..self.slots.len())
            .filter(|slot| !used.contains(slot) && !self.draining.contains(slot) && self.workers.contains_key(&self.slots[*slot]))
            .collect();
        // Instances on workers being preempted do not stay, so they do not count.
        let staying = layout[stage].iter().filter(|p| !self.draining.contains(&p.worker)).count();
        let adding = to.saturating_sub(staying);
        if free.len() < adding {
            let spare: Vec<ContainerId> = self.connected().into_iter().filter(|id| !self.slots.contains(id)).collect();
            for worker in spare.into_iter().take(adding - free.len()) {
                self.slots.push(worker);
                free.push(self.slots.len() - 1);
            }
        }
        if free.len() < adding {
            return; // the asks bring more workers; try again on a later tick
        }
        self.start_rescale(stage, to, free);
    }

    fn start_rescale(&mut self, stage: usize, to: usize, free: Vec<usize>) {
        let layout = self.layout.clone().expect("running");
        let spec = self.graph.stages[stage].spec.clone();
        let mut old = layout[stage].clone();
        old.sort_by_key(|p| (p.range, p.index));
        let key_groups = self.spec.key_groups;
        let new_ranges: Vec<(u32, u32)> = if spec.is_keyed() {
            even_ranges(key_groups, to as u32).into_iter().map(|r| (r.start, r.end)).collect()
        } else {
            vec![(0, key_groups); to]
        };
        // Instances on workers being preempted are never kept.
        let draining = |p: &Placed| self.draining.contains(&p.worker);
        let mut keepers: Vec<Option<usize>> = if spec.is_keyed() {
            let current: Vec<_> = old.iter().map(|p| if draining(p) { 0..0 } else { p.range.0..p.range.1 }).collect();
            let wanted: Vec<_> = new_ranges.iter().map(|r| r.0..r.1).collect();
            assign_ranges(&current, &wanted)
        } else {
            vec![None; to]
        };
        // Ranges no current instance overlaps (or whose overlapping ones went to other ranges)
        // go to current instances left over before any new one is started: a scale-down never
        // needs a new instance.
        let unused: Vec<usize> = (0..old.len())
            .filter(|&i| !draining(&old[i]) && !keepers.contains(&Some(i)))
            .collect();
        let mut unused = unused.into_iter();
        for keeper in keepers.iter_mut().filter(|keeper| keeper.is_none()) {
            *keeper = unused.next();
        }
        let checkpoint = self.next_checkpoint;
        self.next_checkpoint += 1;
        let mut free = free.into_iter();
        let mut new = Vec::with_capacity(to);
        let mut gaining = BTreeMap::new();
        for (index, (range, keeper)) in new_ranges.iter().zip(&keepers).enumerate() {
            let placed = match keeper {
                Some(k) => Placed {
                    index: index as u32,
                    range: *range,
                    ..old[*k].clone()
                },
                None => Placed {
                    id: self.next_instance_id(),
                    index: index as u32,
                    range: *range,
                    worker: free.next().expect("enough free slots"),
                },
            };
            if spec.is_keyed() {
                match keeper {
                    None => {
                        gaining.insert(placed.id, None);
                    }
                    Some(k) if !(old[*k].range.0 <= range.0 && range.1 <= old[*k].range.1) => {
                        gaining.insert(placed.id, Some(old[*k].range));
                    }
                    Some(_) => {}
                }
            }
            new.push(placed);
        }
        let kept: BTreeSet<u64> = keepers.iter().flatten().map(|&k| old[k].id).collect();
        let added: Vec<Placed> = new.iter().filter(|p| !kept.contains(&p.id)).cloned().collect();
        let mut next_layout = layout.clone();
        next_layout[stage] = new.clone();

        // 1. Start the new instances (they wait for data after the barrier, and for state).
        // They count from 0 (only records after the barrier reach them); instances that stay
        // keep their counts, and retiring ones count up to the barrier.
        let mut starts: BTreeMap<ContainerId, Vec<_>> = BTreeMap::new();
        for placed in &added {
            self.counters.track(placed.id, &spec.name);
            let plan = self.instance_plan(&next_layout, stage, placed, checkpoint, Some(checkpoint));
            starts.entry(self.slots[placed.worker]).or_default().push(plan);
        }
        for (worker, instances) in starts {
            self.send(worker, ToWorker::Start { instances });
        }
        // 2. Changes at the barrier, per worker: connections that change (upstream instances
        // switch to the new owners, downstream ones hear from new senders), then the
        // rescaled operator's own instances' key groups.
        let mut changes = self.connection_changes(&layout, &next_layout, checkpoint);
        for placed in &old {
            let after = new.iter().find(|p| p.id == placed.id);
            changes.entry(self.slots[placed.worker]).or_default().push(InstanceChange::Regroup {
                instance: placed.id,
                range: after.map(|p| p.range),
                gains: after.is_some_and(|p| gaining.contains_key(&p.id)),
            });
        }
        let awaiting_prepared: BTreeSet<ContainerId> = changes.keys().copied().collect();
        for (worker, changes) in changes {
            self.send(worker, ToWorker::Rescale { checkpoint, changes });
        }
        tracing::info!(operator = %spec.name, from = old.len(), to, checkpoint, "rescaling");
        self.rescale = Some(Rescale {
            stage,
            checkpoint,
            status: RescaleStatus {
                operator: spec.name.clone(),
                from: old.len() as u32,
                to: to as u32,
                started_at_ms: now_ms(),
                finished_at_ms: None,
                pause_ms: None,
            },
            old,
            new,
            awaiting_prepared,
            gaining,
            loads_sent: false,
            loaded_requested: BTreeSet::new(),
            loaded: BTreeSet::new(),
            checkpoint_done: false,
            started: self.now,
            barrier_at: None,
        });
        self.metrics.last_rescale = self.rescale.as_ref().map(|r| r.status.clone());
    }

    /// What the instances that stay must change at barrier `checkpoint` for the job to go from
    /// layout `before` to `after`, by worker: the targets of an edge (`Retarget`) and the
    /// senders they hear from (`AddInputs`; a sender that stops sending says so after the
    /// barrier). Any change of layout: a rescale changes one stage's instances, and with them
    /// its edges' partitioning (a forward edge goes round-robin when its ends' parallelisms
    /// part, and back when they meet).
    fn connection_changes(&self, before: &Layout, after: &Layout, checkpoint: u64) -> BTreeMap<ContainerId, Vec<InstanceChange>> {
        let mut changes: BTreeMap<ContainerId, Vec<InstanceChange>> = BTreeMap::new();
        for (stage, placed) in after.iter().enumerate() {
            for now in placed {
                // New instances are started with every connection in their plan.
                let Some(was) = before[stage].iter().find(|p| p.id == now.id) else {
                    continue;
                };
                let worker = self.slots[now.worker];
                for (local, edge) in self.graph.outgoing(stage).into_iter().enumerate() {
                    let old: BTreeMap<InstanceId, Range> =
                        self.graph.receivers(before, edge, was).iter().map(|p| (p.id, p.range)).collect();
                    let new = self.graph.receivers(after, edge, now);
                    if new.len() == old.len() && new.iter().all(|p| old.get(&p.id) == Some(&p.range)) {
                        continue;
                    }
                    let targets = new
                        .iter()
                        .map(|p| self.target_plan(p, (!old.contains_key(&p.id)).then_some(checkpoint)))
                        .collect();
                    changes.entry(worker).or_default().push(InstanceChange::Retarget {
                        instance: now.id,
                        edge: local,
                        targets,
                    });
                }
                let heard: BTreeSet<InstanceId> = self
                    .graph
                    .incoming(stage)
                    .into_iter()
                    .flat_map(|edge| self.graph.senders(before, edge, was))
                    .map(|p| p.id)
                    .collect();
                let inputs: Vec<InputPlan> = self
                    .graph
                    .incoming(stage)
                    .into_iter()
                    .flat_map(|edge| self.graph.senders(after, edge, now))
                    .filter(|p| !heard.contains(&p.id))
                    .map(|p| InputPlan {
                        from: p.id,
                        starts_after: Some(checkpoint),
                    })
                    .collect();
                if !inputs.is_empty() {
                    changes
                        .entry(worker)
                        .or_default()
                        .push(InstanceChange::AddInputs { instance: now.id, inputs });
                }
            }
        }
        changes
    }

    /// A worker queued its changes; once all did, the barrier goes out (from the old layout).
    pub fn on_prepared(&mut self, worker: ContainerId, checkpoint: u64, now: Instant) {
        self.now = now;
        let Some(rescale) = &mut self.rescale else { return };
        if rescale.checkpoint != checkpoint {
            return;
        }
        rescale.awaiting_prepared.remove(&worker);
        if rescale.awaiting_prepared.is_empty() {
            let (stage, new) = (rescale.stage, rescale.new.clone());
            self.trigger(checkpoint);
            // Later checkpoints expect the new instances.
            if let Some(layout) = &mut self.layout {
                layout[stage] = new;
            }
        }
    }

    /// As the old instances of the stage snapshot the barrier, gaining instances load.
    pub(super) fn rescale_on_ack(&mut self, checkpoint: u64, instance: u64, duration_ms: u64) {
        if let Some(rescale) = &mut self.rescale
            && rescale.checkpoint == checkpoint
            && rescale.old.iter().any(|p| p.id == instance)
        {
            let stopped = self.now - std::time::Duration::from_millis(duration_ms);
            rescale.barrier_at = Some(rescale.barrier_at.map_or(stopped, |at| at.min(stopped)));
        }
        let Some(rescale) = &self.rescale else { return };
        if rescale.checkpoint != checkpoint || rescale.loads_sent {
            return;
        }
        let Some(pending) = self.pending.get(&checkpoint) else { return };
        // Each gaining instance loads as soon as the old owners of its new groups have written
        // their snapshots; it need not wait for the others.
        let mut loads = Vec::new();
        for placed in &rescale.new {
            let Some(&before) = rescale.gaining.get(&placed.id) else { continue };
            if rescale.loaded_requested.contains(&placed.id) {
                continue;
            }
            let mut refs = Vec::new();
            let mut ready = true;
            for old in rescale.old.iter().filter(|old| old.id != placed.id) {
                let Some(gained) = intersect(old.range, placed.range) else {
                    continue;
                };
                // Groups it already had stay in memory.
                if before.is_some_and(|b| b.0 <= gained.0 && gained.1 <= b.1) {
                    continue;
                }
                match pending.acks.get(&old.id).and_then(|ack| ack.state_file.clone()) {
                    Some(path) => refs.push(StateFileRef {
                        path,
                        range: gained,
                        operator_state: false,
                    }),
                    None => ready = false,
                }
            }
            if ready {
                loads.push((self.slots[placed.worker], placed.id, refs));
            }
        }
        for (worker, instance, files) in loads {
            if let Some(rescale) = &mut self.rescale {
                rescale.loaded_requested.insert(instance);
            }
            self.send(
                worker,
                ToWorker::Load {
                    instance,
                    checkpoint,
                    files,
                },
            );
        }
        if let Some(rescale) = &mut self.rescale
            && rescale.gaining.keys().all(|id| rescale.loaded_requested.contains(id))
        {
            rescale.loads_sent = true;
        }
        self.maybe_end_rescale();
    }

    pub(super) fn rescale_on_complete(&mut self, checkpoint: u64) {
        if let Some(rescale) = &mut self.rescale
            && rescale.checkpoint == checkpoint
        {
            rescale.checkpoint_done = true;
        }
        self.maybe_end_rescale();
    }

    pub fn on_loaded(&mut self, instance: u64, checkpoint: u64, paused_ms: u64, now: Instant) {
        self.now = now;
        let Some(rescale) = &mut self.rescale else { return };
        if rescale.checkpoint != checkpoint {
            return;
        }
        rescale.loaded.insert(instance);
        // Measured on the AM's clock from the barrier at the old owners; the instance's own
        // figure (from when it started waiting) only when that is unknown.
        let paused_ms = rescale
            .barrier_at
            .map_or(paused_ms, |at| now.saturating_duration_since(at).as_millis() as u64);
        let pause = rescale.status.pause_ms.unwrap_or(0).max(paused_ms);
        rescale.status.pause_ms = Some(pause);
        self.maybe_end_rescale();
    }

    fn maybe_end_rescale(&mut self) {
        let Some(rescale) = &self.rescale else { return };
        let all_loaded = rescale.gaining.keys().all(|id| rescale.loaded.contains(id));
        if !(rescale.checkpoint_done && rescale.loads_sent && all_loaded) {
            return;
        }
        let mut rescale = self.rescale.take().expect("checked");
        rescale.status.finished_at_ms = Some(now_ms());
        rescale.status.pause_ms.get_or_insert(0);
        tracing::info!(
            operator = %rescale.status.operator,
            from = rescale.status.from,
            to = rescale.status.to,
            pause_ms = rescale.status.pause_ms,
            took_ms = self.now.saturating_duration_since(rescale.started).as_millis() as u64,
            "rescaled"
        );
        self.metrics.last_rescale = Some(rescale.status);
    }
}
