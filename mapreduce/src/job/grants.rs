//! The RM side of the job: what to ask for, and which task a granted container runs.

use std::collections::BTreeMap;

use spindle_protocol::{Allocation, NodeId, ResourceAsk};

use super::plan::{GrantDecision, ReleaseReason, TaskLaunch};
use super::task::{Attempt, TaskState};
use super::{MAP_PRIORITY, MapReduceJob, REDUCE_PRIORITY};
use crate::task_protocol::{MapOutputLocation, TaskAssignment, TaskAttemptId, TaskKind, TaskWork};

/// A task chosen for a grant.
#[derive(Debug, Clone, Copy)]
struct Choice {
    kind: TaskKind,
    index: u32,
    speculative: bool,
}

impl MapReduceJob {
    /// The asks of the next allocate, absolute counts: one map ask per distinct preferred-node
    /// list of the pending maps (speculative maps ask without preference), and, while every
    /// map has output, one reduce ask. Held plus asked-for containers never exceed
    /// `max_containers`; maps get the budget first. Empty once the job is over.
    pub fn asks(&self) -> Vec<ResourceAsk> {
        if self.outcome.is_some() {
            return Vec::new();
        }
        let mut budget = match self.settings.max_containers {
            Some(max_containers) => max_containers.saturating_sub(self.held_containers()),
            None => u32::MAX,
        };
        let mut take = |wanted: u32| {
            let granted = wanted.min(budget);
            budget -= granted;
            granted
        };

        let mut map_groups: BTreeMap<Vec<NodeId>, u32> = BTreeMap::new();
        for task in self.maps.iter().filter(|task| task.state == TaskState::Pending) {
            if take(1) == 0 {
                break;
            }
            *map_groups.entry(self.usable_nodes(&task.preferred_nodes)).or_default() += 1;
        }
        let speculative_maps = self.maps.iter().filter(|task| task.wants_speculative).count() as u32;
        let speculative_maps = take(speculative_maps);
        if speculative_maps > 0 {
            *map_groups.entry(Vec::new()).or_default() += speculative_maps;
        }

        let mut asks: Vec<ResourceAsk> = map_groups
            .into_iter()
            .map(|(nodes, count)| ResourceAsk {
                priority: MAP_PRIORITY,
                resources: self.settings.map_resources,
                count,
                nodes,
                racks: Vec::new(),
                label: self.settings.label.clone(),
            })
            .collect();
        if self.all_maps_have_output() {
            let runnable = self
                .reduces
                .iter()
                .filter(|task| task.state == TaskState::Pending || task.wants_speculative)
                .count() as u32;
            let count = take(runnable);
            if count > 0 {
                asks.push(ResourceAsk {
                    priority: REDUCE_PRIORITY,
                    resources: self.settings.reduce_resources,
                    count,
                    nodes: Vec::new(),
                    racks: Vec::new(),
                    label: self.settings.label.clone(),
                });
            }
        }
        asks
    }

    /// Decides what a granted container runs (see the module doc for the order); a release is
    /// also queued in `take_releases`. A grant seen before is ignored (`AlreadySeen`).
    pub fn on_granted(&mut self, allocation: Allocation, now_ms: u64) -> GrantDecision {
        let container_id = allocation.container_id;
        if !self.seen_containers.insert(container_id) {
            return GrantDecision::AlreadySeen { container_id };
        }
        self.nodes.saw(&allocation.node_id);
        let refusal = if self.outcome.is_some() {
            Some(ReleaseReason::JobOver)
        } else if self.nodes.is_avoided(&allocation.node_id) {
            Some(ReleaseReason::AvoidedNode)
        } else if self.settings.max_containers.is_some_and(|max| self.held_containers() >= max) {
            Some(ReleaseReason::AtMaxContainers)
        } else {
            None
        };
        let choice = match refusal {
            Some(reason) => Err(reason),
            None => self.choose_task(&allocation).ok_or(ReleaseReason::NothingToRun),
        };
        match choice {
            Ok(choice) => GrantDecision::Launch(Box::new(self.start_attempt(choice, allocation, now_ms))),
            Err(reason) => {
                tracing::debug!(container_id = %container_id, node_id = %allocation.node_id, ?reason, "releasing a grant");
                self.releases.push(container_id);
                GrantDecision::Release { container_id, reason }
            }
        }
    }

    /// `preferred` without the avoided nodes.
    fn usable_nodes(&self, preferred: &[NodeId]) -> Vec<NodeId> {
        preferred.iter().filter(|node| !self.nodes.is_avoided(node)).cloned().collect()
    }

    fn choose_task(&self, allocation: &Allocation) -> Option<Choice> {
        let node = &allocation.node_id;
        let choose = |kind, index, speculative| Choice { kind, index, speculative };
        if allocation.resources.fits(&self.settings.map_resources) {
            let pending = || self.maps.iter().filter(|task| task.state == TaskState::Pending);
            let node_local = pending().find(|task| task.preferred_nodes.contains(node));
            let unpreferred = || pending().find(|task| self.usable_nodes(&task.preferred_nodes).is_empty());
            if let Some(task) = node_local.or_else(unpreferred).or_else(|| pending().next()) {
                return Some(choose(TaskKind::Map, task.index, false));
            }
            if let Some(task) = self.maps.iter().find(|task| self.can_speculate_on(task, node)) {
                return Some(choose(TaskKind::Map, task.index, true));
            }
        }
        if !self.all_maps_have_output() || !allocation.resources.fits(&self.settings.reduce_resources) {
            return None;
        }
        if let Some(task) = self.reduces.iter().find(|task| task.state == TaskState::Pending) {
            return Some(choose(TaskKind::Reduce, task.index, false));
        }
        let task = self.reduces.iter().find(|task| self.can_speculate_on(task, node))?;
        Some(choose(TaskKind::Reduce, task.index, true))
    }

    /// A task wanting a speculative attempt whose running attempt is not on `node` (a second
    /// attempt next to a slow one would likely be as slow).
    fn can_speculate_on(&self, task: &super::task::Task, node: &NodeId) -> bool {
        task.wants_speculative
            && task.live_attempts.iter().all(|&attempt| {
                let id = TaskAttemptId {
                    kind: task.kind,
                    task: task.index,
                    attempt,
                };
                self.attempts.get(&id).is_none_or(|live| live.node_id != *node)
            })
    }

    fn start_attempt(&mut self, choice: Choice, allocation: Allocation, now_ms: u64) -> TaskLaunch {
        let Choice { kind, index, speculative } = choice;
        let task = self.task_mut(kind, index);
        let id = TaskAttemptId {
            kind,
            task: index,
            attempt: task.next_attempt,
        };
        task.next_attempt += 1;
        task.live_attempts.push(id.attempt);
        task.move_to(TaskState::Running);
        if speculative {
            task.wants_speculative = false;
            task.speculated = true;
            self.tallies.speculative += 1;
        }
        let (work, map_output_attempts) = match kind {
            TaskKind::Map => (
                TaskWork::Map {
                    split: self.plan.splits[index as usize].clone(),
                    partitioner: self.plan.partitioner.clone(),
                },
                Vec::new(),
            ),
            TaskKind::Reduce => {
                let maps: Vec<MapOutputLocation> = self
                    .maps
                    .iter()
                    .map(|task| task.output.clone().expect("reduces start only while every map has output"))
                    .collect();
                let attempts = self.maps.iter().map(|task| task.output_attempt.unwrap_or_default()).collect();
                let work = TaskWork::Reduce {
                    partition: index,
                    maps,
                    output_dir: format!("{}/{id}", self.plan.output_temp_dir),
                };
                (work, attempts)
            }
        };
        tracing::debug!(attempt = %id, container_id = %allocation.container_id, node_id = %allocation.node_id, speculative, "starting task attempt");
        self.attempts.insert(
            id,
            Attempt {
                id,
                container_id: allocation.container_id,
                node_id: allocation.node_id.clone(),
                node_address: allocation.node_address.clone(),
                launched_ms: now_ms,
                progress: 0.0,
                counters: Default::default(),
                reported_success: false,
                exited_cleanly_ms: None,
                speculative,
                map_output_attempts,
            },
        );
        self.containers.insert(allocation.container_id, id);
        let assignment = TaskAssignment {
            attempt: id,
            functions: self.plan.functions.clone(),
            work,
            am_url: self.plan.am_url.clone(),
        };
        TaskLaunch {
            allocation,
            assignment,
            speculative,
        }
    }
}
