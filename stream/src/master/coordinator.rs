//! The streaming AM's brain (Flink's JobManager): deployments, checkpoints, restarts and the
//! end of a bounded job. It owns the job's state; the I/O loop (`master/mod.rs`) feeds it
//! events and carries out what it sends (messages to workers, commits, container asks).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use spindle_protocol::{ContainerId, StreamSpec};
use spindle_storage::S3Settings;

use super::autoscale::Autoscaler;
use super::counters::{CounterLedger, OperatorTotals};
use super::metrics::Metrics;
use super::rescale::Rescale;
use super::savepoints::{Savepoints, epoch_after};
use crate::checkpoints::{CheckpointMeta, Storage};
use crate::control::{Ack, EdgePlan, InputPlan, InstancePlan, StateFileRef, TargetPlan, ToWorker};
use crate::graph::{Graph, Layout, Placed, fresh_layout, intersect, workers_needed};
use crate::location::Location;
use crate::operator::Commit;
use crate::wire::InstanceId;

/// A worker container.
#[derive(Debug, Clone, Default)]
pub struct Worker {
    /// Where its instances receive data; set when it said hello on its control connection.
    pub data_address: Option<String>,
}

/// Where the job is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for enough workers to deploy.
    Deploying,
    /// Waiting for workers to stop the instances of an earlier deployment.
    Resetting {
        waiting: BTreeSet<ContainerId>,
        since: Instant,
    },
    Running,
    /// One failover region is going back to the latest checkpoint while the rest of the job
    /// runs on (`failures.rs`).
    Recovering(super::failures::Recovery),
    /// Every sink finished: the last commit is being made.
    Finishing,
}

/// A checkpoint in flight.
pub struct Pending {
    pub started: Instant,
    /// Instance → (stage, index, range) as the barrier found them.
    pub expected: BTreeMap<InstanceId, (usize, u32, (u32, u32))>,
    pub acks: BTreeMap<InstanceId, Ack>,
}

/// What the I/O around the coordinator must do for it, in order.
#[derive(Debug)]
pub enum Effect {
    /// Send a control message to a worker (dropped if it has gone).
    Send { worker: ContainerId, message: ToWorker },
    /// Run these commits in order (then prune old checkpoints).
    Commit(Vec<Commit>),
    /// After the commits queued before it: abort these multipart uploads staged on object
    /// stores for checkpoints that will never complete (best effort: a bucket's lifecycle rule
    /// for incomplete uploads is the backstop).
    AbortUploads(Vec<crate::operator::UploadCommit>),
    /// After the commits queued before it: delete what file sinks staged in these directories
    /// before `epoch` (attempts that failed; nothing will ever commit those files); only the
    /// files whose names start with one of `prefixes` when there are any (the instances of a
    /// region that restarted: the others' files are still to be committed).
    CleanStaging {
        dirs: Vec<std::path::PathBuf>,
        epoch: u64,
        prefixes: Vec<String>,
    },
    /// The job is over: after the commits, finish with this status.
    Finish { succeeded: bool, diagnostics: String },
    /// Copy a complete checkpoint's files into savepoint `id`'s directory and write its
    /// metadata (before the commits queued after it); answered by `on_savepoint_written`.
    WriteSavepoint {
        id: u64,
        dir: Location,
        meta: Box<crate::savepoint::SavepointMeta>,
        copies: Vec<crate::savepoint::FileCopy>,
    },
}

pub struct Coordinator {
    pub spec: StreamSpec,
    pub app_id: String,
    pub graph: Graph,
    pub storage: Storage,
    /// Wanted parallelism by stage.
    pub parallelism: Vec<u32>,
    pub workers: BTreeMap<ContainerId, Worker>,
    /// The layout's worker numbers → containers.
    pub slots: Vec<ContainerId>,
    pub layout: Option<Layout>,
    pub phase: Phase,
    pub epoch: u64,
    pub(super) next_id: u64,
    pub next_checkpoint: u64,
    pub(super) last_trigger: Instant,
    pub pending: BTreeMap<u64, Pending>,
    pub last_complete: Option<CheckpointMeta>,
    /// Instances whose input ended, with sinks' last commits.
    pub finished: BTreeMap<InstanceId, Option<Commit>>,
    pub sources_done: bool,
    pub restarts: u32,
    pub rescale: Option<Rescale>,
    pub metrics: Metrics,
    /// Every operator's totals, folded at each complete checkpoint.
    pub counters: CounterLedger,
    pub effects: Vec<Effect>,
    /// The savepoints asked of the job (`savepoints.rs`).
    pub savepoints: Savepoints,
    /// The parallelism the RM last said it stores: only its changes are news (the autoscaler
    /// may have moved away from it since).
    pub(super) rm_parallelism: BTreeMap<String, u32>,
    /// DS2 autoscaling's readings, the scale-up it is judging and ceilings it found.
    pub(super) autoscaler: Autoscaler,
    /// Commits of instances that went on through a regional restart, made for checkpoints the
    /// restart abandoned: their output is valid (they do not go back), so it is committed
    /// with the next checkpoint that completes, unless they go back themselves before.
    pub(super) carried: Vec<(InstanceId, Commit)>,
    /// The last restart from a checkpoint, for the report.
    pub last_restart: Option<spindle_protocol::RestartStatus>,
    /// Slots of workers the RM will take back (preemption): rescales retire their instances.
    pub draining: BTreeSet<usize>,
    /// The time of the event being handled, as the caller gave it: the coordinator reads no
    /// clock, so its tests move time by hand.
    pub(super) now: Instant,
}

impl Coordinator {
    /// Reads the checkpoint dir's complete checkpoints (the job resumes from the latest).
    pub fn new(spec: StreamSpec, app_id: String, attempt: u32, checkpoint_dir: &Location, now: Instant) -> Coordinator {
        let graph = Graph::build(&spec);
        let storage = Storage::new(checkpoint_dir, &app_id, S3Settings::from_env(&spec.env));
        let last_complete = storage.latest_whole();
        let mut parallelism: Vec<u32> = graph.stages.iter().map(|stage| stage.spec.parallelism).collect();
        // A rescale survives an AM restart through the checkpoint that made it.
        if let Some(meta) = &last_complete {
            for (stage, p) in graph.stages.iter().zip(parallelism.iter_mut()) {
                if let Some(&restored) = meta.parallelism.get(&stage.spec.name) {
                    *p = restored;
                }
            }
        }
        let next_checkpoint = storage.ids().last().map_or(1, |id| id + 1);
        let epoch = epoch_after(u64::from(attempt) << 32, last_complete.as_ref().map(|meta| meta.epoch));
        // A new attempt goes on counting from the checkpoint it resumes from.
        let counters = CounterLedger::starting_from(last_complete.as_ref().map(|meta| meta.counters.clone()).unwrap_or_default());
        Coordinator {
            spec,
            app_id,
            graph,
            storage,
            parallelism,
            workers: BTreeMap::new(),
            slots: Vec::new(),
            layout: None,
            phase: Phase::Deploying,
            epoch,
            next_id: epoch,
            next_checkpoint,
            last_trigger: now,
            pending: BTreeMap::new(),
            last_complete,
            finished: BTreeMap::new(),
            sources_done: false,
            restarts: 0,
            rescale: None,
            metrics: Metrics::default(),
            counters,
            effects: Vec::new(),
            savepoints: Savepoints::default(),
            rm_parallelism: BTreeMap::new(),
            autoscaler: Autoscaler::default(),
            draining: BTreeSet::new(),
            carried: Vec::new(),
            last_restart: None,
            now,
        }
    }

    pub fn next_instance_id(&mut self) -> InstanceId {
        self.next_id += 1;
        self.next_id
    }

    pub fn workers_wanted(&self) -> usize {
        workers_needed(&self.parallelism)
    }

    /// Workers that said hello, in a stable order.
    pub fn connected(&self) -> Vec<ContainerId> {
        self.workers
            .iter()
            .filter(|(_, worker)| worker.data_address.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// The totals at the checkpoint a deployment restores from (none yet: zero).
    pub(super) fn restored_totals(&self) -> OperatorTotals {
        self.last_complete.as_ref().map(|meta| meta.counters.clone()).unwrap_or_default()
    }

    /// Workers' samples of their instances: rates, and counts between checkpoints.
    pub fn on_metrics(&mut self, samples: Vec<crate::control::InstanceMetrics>, now: Instant) {
        self.now = now;
        for sample in &samples {
            self.counters.observe(sample.id, sample.counts());
        }
        if let Some(settings) = &self.spec.autoscale {
            self.autoscaler.record(now, &samples, settings);
        }
        self.metrics.record(now, samples);
    }

    pub fn send(&mut self, worker: ContainerId, message: ToWorker) {
        self.effects.push(Effect::Send { worker, message });
    }

    /// Takes what the I/O must do, in order.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    pub fn address_of_slot(&self, slot: usize) -> String {
        self.workers
            .get(&self.slots[slot])
            .and_then(|worker| worker.data_address.clone())
            .unwrap_or_default()
    }

    /// The desired parallelism changed (the RM's `PUT …/operators/{name}`).
    pub fn set_desired(&mut self, desired: &BTreeMap<String, u32>, now: Instant) {
        self.now = now;
        for (stage, p) in self.graph.stages.iter().zip(self.parallelism.iter_mut()) {
            let name = &stage.spec.name;
            if let Some(&wanted) = desired.get(name)
                && self.rm_parallelism.get(name) != Some(&wanted)
                && stage.spec.is_rescalable()
                && wanted >= 1
            {
                // The first map only says what was submitted; a restarted AM keeps what its
                // checkpoint recorded unless the RM's value differs from the submitted one.
                if !self.rm_parallelism.is_empty() || wanted != stage.spec.parallelism {
                    *p = wanted;
                }
            }
        }
        self.rm_parallelism = desired.clone();
    }

    /// DS2 autoscaling, when the job asks for it: one stage at a time, once the previous
    /// change is done and a window measured after it (`autoscale.rs`).
    fn maybe_autoscale(&mut self) {
        let Some(settings) = &self.spec.autoscale else { return };
        let Some(layout) = &self.layout else { return };
        if self.sources_done {
            return;
        }
        let running: Vec<u32> = layout.iter().map(|placed| placed.len() as u32).collect();
        let changing = self.rescale.is_some() || running != self.parallelism;
        let Some(decision) = self
            .autoscaler
            .decide(self.now, &self.graph, layout, changing, settings, self.spec.key_groups)
        else {
            return;
        };
        tracing::info!(
            operator = %self.graph.stages[decision.stage].spec.name,
            from = decision.from,
            to = decision.to,
            rate_to_sustain = decision.demand.rate_to_sustain.round(),
            true_rate = decision.demand.true_rate.round(),
            utilization = decision.demand.utilization(decision.from),
            ceiling = decision.ceiling,
            "autoscaling"
        );
        self.parallelism[decision.stage] = decision.to;
    }

    /// Called often: deploys when ready, triggers checkpoints, starts rescales.
    pub fn tick(&mut self, now: Instant) {
        self.now = now;
        match &self.phase {
            Phase::Deploying => {
                if self.connected().len() >= self.workers_wanted() {
                    self.deploy();
                }
            }
            Phase::Recovering(_) => self.tick_recovery(),
            Phase::Resetting { since, .. } => {
                if self.now.saturating_duration_since(*since) > Duration::from_secs(15) {
                    tracing::warn!("workers did not confirm a reset within 15 s: deploying without them");
                    if let Phase::Resetting { waiting, .. } = std::mem::replace(&mut self.phase, Phase::Deploying) {
                        for worker in waiting {
                            self.workers.remove(&worker);
                        }
                    }
                }
            }
            Phase::Running => {
                self.maybe_autoscale();
                self.maybe_start_rescale();
                self.maybe_trigger();
            }
            Phase::Finishing => {}
        }
    }

    /// A deployment from the latest complete checkpoint onto the connected workers.
    fn deploy(&mut self) {
        let connected = self.connected();
        let needed = self.workers_wanted();
        self.slots = connected.into_iter().take(needed).collect();
        self.draining.clear();
        let mut ids = Vec::new();
        for _ in 0..self.parallelism.iter().map(|&p| p as usize).sum::<usize>() {
            ids.push(self.next_instance_id());
        }
        let mut ids = ids.into_iter();
        let layout = fresh_layout(&self.graph, &self.parallelism, self.spec.key_groups, || {
            ids.next().expect("enough ids")
        });
        let restored = self.last_complete.as_ref().map_or(0, |meta| meta.id);
        if self.last_complete.is_some() {
            // Publish what the kept checkpoints committed, oldest first, in case an earlier
            // attempt died before doing so (committing is idempotent; a checkpoint is pruned
            // only after its commits ran). A job restoring a savepoint has none of its own
            // yet: the savepoint's, in case the job it came from ended before they ran.
            let mut kept = self.storage.complete_checkpoints();
            if kept.is_empty() {
                kept.extend(self.last_complete.clone());
            }
            let commits: Vec<Commit> = kept.into_iter().flat_map(|meta| meta.commits).collect();
            self.effects.push(Effect::Commit(commits));
        }
        let dirs: Vec<std::path::PathBuf> = self
            .graph
            .stages
            .iter()
            .filter(|stage| stage.spec.kind() == spindle_protocol::OperatorKind::FileSink)
            .filter_map(|stage| stage.spec.path.as_ref().map(|path| std::path::Path::new(path).join(".staging")))
            .collect();
        if !dirs.is_empty() {
            self.effects.push(Effect::CleanStaging {
                dirs,
                epoch: self.epoch,
                prefixes: Vec::new(),
            });
        }
        // The new instances count from 0, on top of the totals of the checkpoint they restore.
        self.counters.restore(self.restored_totals());
        let mut starts: BTreeMap<ContainerId, Vec<InstancePlan>> = BTreeMap::new();
        for (stage, placed) in layout.iter().enumerate() {
            for instance in placed {
                self.counters.track(instance.id, &self.graph.stages[stage].spec.name);
                let plan = self.instance_plan(&layout, stage, instance, restored, None);
                starts.entry(self.slots[instance.worker]).or_default().push(plan);
            }
        }
        tracing::info!(
            epoch = self.epoch,
            restored,
            workers = self.slots.len(),
            "deploying the pipeline{}",
            if restored > 0 { " from a checkpoint" } else { "" }
        );
        for (worker, instances) in starts {
            self.send(worker, ToWorker::Start { instances });
        }
        self.layout = Some(layout);
        self.phase = Phase::Running;
        self.last_trigger = self.now;
    }

    /// The plan of one instance within `layout`. `starts_after`: it is added by a rescale at
    /// that barrier (its connections carry only later data).
    pub fn instance_plan(
        &self,
        layout: &Layout,
        stage: usize,
        instance: &Placed,
        restored: u64,
        starts_after: Option<u64>,
    ) -> InstancePlan {
        let spec = &self.graph.stages[stage].spec;
        let inputs = self
            .graph
            .incoming(stage)
            .into_iter()
            .flat_map(|edge| self.graph.senders(layout, edge, instance))
            .map(|upstream| InputPlan {
                from: upstream.id,
                starts_after,
            })
            .collect();
        let outputs = self
            .graph
            .outgoing(stage)
            .into_iter()
            .map(|edge| EdgePlan {
                chain: self.graph.edges[edge].chain.clone(),
                keyed: self.graph.edges[edge].keyed,
                targets: self
                    .graph
                    .receivers(layout, edge, instance)
                    .into_iter()
                    .map(|target| self.target_plan(target, starts_after))
                    .collect(),
            })
            .collect();
        let restore = if starts_after.is_some() {
            Vec::new()
        } else {
            self.restore_files(stage, instance)
        };
        InstancePlan {
            id: instance.id,
            spec: spec.clone(),
            index: instance.index,
            parallelism: layout[stage].len() as u32,
            epoch: self.epoch,
            key_groups: self.spec.key_groups,
            range: instance.range,
            inputs,
            outputs,
            restore,
            await_load: starts_after.filter(|_| spec.is_keyed()),
            last_checkpoint: starts_after.unwrap_or(restored),
            app_id: self.app_id.clone(),
            checkpoint_dir: self.storage.root().to_string(),
            env: self.spec.env.clone(),
        }
    }

    /// Where to send to `target`; `starts_after`: the connection carries only data after
    /// that barrier.
    pub fn target_plan(&self, target: &Placed, starts_after: Option<u64>) -> TargetPlan {
        TargetPlan {
            id: target.id,
            address: self.address_of_slot(target.worker),
            range: target.range,
            starts_after,
        }
    }

    /// Snapshot files an instance restores from: keyed stages read every file's groups inside
    /// their range; others read the file of their own index (sources' offsets).
    fn restore_files(&self, stage: usize, instance: &Placed) -> Vec<StateFileRef> {
        let Some(meta) = &self.last_complete else { return Vec::new() };
        let spec = &self.graph.stages[stage].spec;
        let Some(files) = meta.stages.get(&spec.name) else {
            return Vec::new();
        };
        if spec.is_keyed() {
            files
                .iter()
                .filter_map(|file| {
                    intersect(file.range, instance.range).map(|range| StateFileRef {
                        path: file.path.clone(),
                        range,
                        operator_state: false,
                    })
                })
                .collect()
        } else {
            files
                .iter()
                .filter(|file| file.index == instance.index)
                .map(|file| StateFileRef {
                    path: file.path.clone(),
                    range: (0, 0),
                    operator_state: true,
                })
                .collect()
        }
    }

    pub fn parallelism_by_name(&self) -> BTreeMap<String, u32> {
        self.graph
            .stages
            .iter()
            .zip(&self.parallelism)
            .map(|(stage, &p)| (stage.spec.name.clone(), p))
            .collect()
    }
}
