//! How apps, containers and nodes come and go: what a placement starts, what an ending container
//! gives back, and what a lost AM or node takes with it. Every change updates the snapshot's
//! nodes and apps in place, so the next round sees it without a rebuild.

use std::cmp::Reverse;

use spindle_protocol::{ContainerId, NodeId, Resources};

use super::{AppPhase, EndReason, EventKind, Simulation};
use crate::scheduler::snapshot::{AppAsk, ContainerKind, ContainerPlacement, SnapshotApp, SnapshotContainer, SnapshotNode};
use crate::sim::metrics::Locality;
use crate::sim::workload::{AppKind, NodeSpec};

impl Simulation {
    /// Applies one placement: the container starts, its ask and its node's headroom shrink, and
    /// a batch task's end is scheduled.
    pub(super) fn start_container(&mut self, placement: ContainerPlacement) {
        self.recorder
            .record_placement(self.now_ms, placement.app_id, placement.container, &placement.node_id);
        let app = placement.app_id.seq as usize - 1;
        let node = self.node_by_id[&placement.node_id];
        let position = self.runs[app]
            .position
            .expect("the scheduler placed a container of an app that is not running");
        let snapshot_app = &mut self.apps[position];
        let (resources, ask) = match placement.container {
            ContainerKind::Am => (snapshot_app.pending_am.take().expect("AM placed twice"), None),
            ContainerKind::Ask(index) => {
                let ask = &mut snapshot_app.asks[index];
                debug_assert!(ask.count > 0, "placed more containers than asked");
                ask.count -= 1;
                (ask.resources, Some(index))
            }
        };
        let slot = self
            .containers
            .insert(placement.app_id, app, node, resources, ask, snapshot_app.containers.len());
        let id = self.containers.get(slot).expect("just inserted").id;
        snapshot_app.containers.push(SnapshotContainer {
            container_id: id,
            resources,
            is_am: ask.is_none(),
            allocated_at_ms: self.now_ms,
            preempting: false,
        });
        snapshot_app.used += resources;
        if ask.is_none() {
            snapshot_app.am_used += resources;
        }
        self.record_where(app, ask, node);
        let node_state = &mut self.nodes[node];
        debug_assert!(
            node_state.schedulable && node_state.headroom.fits(&resources),
            "node {} over-committed",
            node_state.node_id
        );
        node_state.headroom -= resources;
        let run = &mut self.runs[app];
        match (&run.spec.kind, ask) {
            (_, None) => {}
            (AppKind::Batch { task_groups }, Some(group)) => {
                let duration = self
                    .rng
                    .between(task_groups[group].min_duration_ms, task_groups[group].max_duration_ms);
                self.schedule(self.now_ms + duration, EventKind::TaskEnds { slot, seq: id.seq });
            }
            (AppKind::Streaming { .. }, Some(_)) => run.running += 1,
        }
    }

    /// Counts how local a placement of an ask with preferences was, and whether it kept to the
    /// label rules, for the report.
    fn record_where(&mut self, app: usize, ask: Option<usize>, node: usize) {
        let run = &self.runs[app];
        let group = match (&run.spec.kind, ask) {
            (AppKind::Batch { task_groups }, Some(group)) => Some(&task_groups[group]),
            _ => None,
        };
        let placed_on = &self.nodes[node];
        if let Some(group) = group
            && !group.preferred_nodes.is_empty()
        {
            let locality = if group.preferred_nodes.contains(&node) {
                Locality::Node
            } else if group
                .preferred_nodes
                .iter()
                .any(|&preferred| self.nodes.get(preferred).is_some_and(|preferred| preferred.rack == placed_on.rack))
            {
                Locality::Rack
            } else {
                Locality::OffRack
            };
            self.recorder.record_locality(locality);
        }
        let required = group.and_then(|group| group.label.as_deref());
        if required.is_none() && placed_on.labels.is_empty() {
            return;
        }
        // Only the few placements on labelled nodes or of labelled asks get here.
        let queue = self.tree.leaf(&run.spec.queue).map(|leaf| &self.tree.queues[leaf]);
        let queue_may_use_node = queue.is_some_and(|queue| placed_on.labels.iter().all(|label| queue.may_use_label(label)));
        let carries_required = required.is_none_or(|label| placed_on.labels.iter().any(|carried| carried == label));
        self.recorder.record_labels(
            required.is_some(),
            !placed_on.labels.is_empty(),
            carries_required,
            queue_may_use_node,
        );
    }

    /// A node joins, empty; ids are zero-padded so appending keeps the snapshot in id order.
    pub(super) fn add_node(&mut self, spec: NodeSpec) {
        let node_id = node_id(self.nodes.len());
        self.node_by_id.insert(node_id.clone(), self.nodes.len());
        self.nodes.push(SnapshotNode {
            node_id,
            rack: spec.rack,
            labels: spec.labels,
            capacity: spec.capacity,
            headroom: spec.capacity,
            schedulable: true,
        });
        self.node_lost.push(false);
    }

    /// A node stops: its containers end as `NODE_LOST` and it takes nothing until it returns.
    pub(super) fn lose_node(&mut self, node: usize) {
        if node >= self.nodes.len() || self.node_lost[node] {
            return;
        }
        self.node_lost[node] = true;
        self.nodes[node].schedulable = false;
        for slot in self.containers.on_node(node) {
            // An AM lost earlier in this loop may already have released this one.
            if self.containers.get(slot).is_some() {
                self.recorder.containers_lost_with_nodes += 1;
                self.end_container(slot, EndReason::NodeLost);
            }
        }
        self.nodes[node].headroom = Resources::ZERO;
    }

    /// The app enters the snapshot with its AM pending and its asks waiting behind it.
    pub(super) fn submit(&mut self, app: usize) {
        let run = &mut self.runs[app];
        let asks = match &run.spec.kind {
            AppKind::Batch { task_groups } => task_groups
                .iter()
                .map(|group| AppAsk {
                    resources: group.resources,
                    count: group.count,
                    nodes: group.preferred_nodes.iter().map(|&node| node_id(node)).collect(),
                    racks: Vec::new(),
                    label: group.label.clone(),
                })
                .collect(),
            AppKind::Streaming { resources, .. } => vec![AppAsk {
                resources: *resources,
                count: run.target,
                ..AppAsk::default()
            }],
        };
        run.phase = AppPhase::Running;
        run.position = Some(self.apps.len());
        self.apps.push(SnapshotApp {
            app_id: run.app_id,
            queue: run.spec.queue.clone(),
            user: run.spec.user.clone(),
            priority: run.spec.priority,
            submitted_at_ms: self.now_ms,
            used: Resources::ZERO,
            am_used: Resources::ZERO,
            pending_am: Some(run.spec.am),
            asks,
            containers: Vec::new(),
        });
    }

    /// A streaming app's target changed: ask for the difference, or give back the youngest
    /// containers.
    pub(super) fn rescale(&mut self, app: usize) {
        let run = &self.runs[app];
        let position = run.position.expect("running app has a snapshot");
        if run.running > run.target {
            let mut workers: Vec<&SnapshotContainer> = self.apps[position].containers.iter().filter(|container| !container.is_am).collect();
            workers.sort_by_key(|container| Reverse((container.allocated_at_ms, container.container_id.seq)));
            let excess: Vec<ContainerId> = workers
                .into_iter()
                .take((run.running - run.target) as usize)
                .map(|container| container.container_id)
                .collect();
            for id in excess {
                let slot = self.containers.slot_of(&id).expect("snapshot container is live");
                self.end_container(slot, EndReason::Released);
            }
        }
        let run = &self.runs[app];
        self.apps[position].asks[0].count = run.target.saturating_sub(run.running);
    }

    /// A container ends and gives back its resources; what its app does next depends on why.
    pub(super) fn end_container(&mut self, slot: usize, reason: EndReason) {
        let Some(container) = self.containers.remove(slot) else {
            return;
        };
        let position = self.runs[container.app].position.expect("container of an app that is not running");
        let snapshot_app = &mut self.apps[position];
        snapshot_app.containers.swap_remove(container.position);
        if let Some(moved) = snapshot_app.containers.get(container.position) {
            let moved_slot = self.containers.slot_of(&moved.container_id).expect("snapshot container is live");
            self.containers.get_mut(moved_slot).expect("live").position = container.position;
        }
        snapshot_app.used -= container.resources;
        if !self.node_lost[container.node] {
            let node = &mut self.nodes[container.node];
            node.headroom += container.resources;
            debug_assert!(node.capacity.fits(&node.headroom), "node {} freed more than it has", node.node_id);
        }
        let run = &mut self.runs[container.app];
        let Some(ask) = container.ask else {
            snapshot_app.am_used -= container.resources;
            if matches!(reason, EndReason::Preempted | EndReason::NodeLost) && run.phase == AppPhase::Running {
                self.restart_attempt(container.app);
            }
            return;
        };
        match &run.spec.kind {
            AppKind::Batch { .. } if reason == EndReason::Completed => {
                run.unfinished_tasks[ask] -= 1;
                if run.unfinished_tasks.iter().all(|&left| left == 0) && run.phase == AppPhase::Running {
                    self.finish_app(container.app);
                }
            }
            // The task did not finish: it runs again.
            AppKind::Batch { .. } => snapshot_app.asks[ask].count += 1,
            AppKind::Streaming { .. } => {
                run.running -= 1;
                snapshot_app.asks[0].count = run.target.saturating_sub(run.running);
            }
        }
    }

    /// The AM was lost: its containers go with it and the app starts again from a new AM, its
    /// unfinished batch tasks pending again.
    fn restart_attempt(&mut self, app: usize) {
        self.recorder.am_restarts += 1;
        self.release_all(app);
        let position = self.runs[app].position.expect("running app has a snapshot");
        self.apps[position].pending_am = Some(self.runs[app].spec.am);
    }

    /// Ends every container of the app (its AM too, if it still has one) as given back.
    fn release_all(&mut self, app: usize) {
        let position = self.runs[app].position.expect("running app has a snapshot");
        let ids: Vec<ContainerId> = self.apps[position]
            .containers
            .iter()
            .map(|container| container.container_id)
            .collect();
        for id in ids {
            if let Some(slot) = self.containers.slot_of(&id) {
                self.end_container(slot, EndReason::Released);
            }
        }
    }

    /// The app is done: its containers go, and it leaves the snapshot.
    pub(super) fn finish_app(&mut self, app: usize) {
        self.runs[app].phase = AppPhase::Finished;
        self.release_all(app);
        let position = self.runs[app].position.take().expect("running app has a snapshot");
        self.apps.remove(position);
        for run in &mut self.runs {
            if let Some(later) = run.position.as_mut()
                && *later > position
            {
                *later -= 1;
            }
        }
        if matches!(self.runs[app].spec.kind, AppKind::Batch { .. }) {
            self.batch_apps_finished += 1;
        }
    }
}

/// The id of the node at `index`: zero-padded, so joins (appended) keep the snapshot in id order,
/// and a workload can name nodes by index before they join.
fn node_id(index: usize) -> NodeId {
    NodeId(format!("node-{index:06}"))
}
