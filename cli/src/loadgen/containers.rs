//! What one fake node runs: containers that are only entries, RUNNING from their launch and
//! COMPLETE once their time is up, their AM finishes or the RM kills them, kept until the RM
//! acknowledges their end. Pure bookkeeping: the caller passes `now` and does the talking.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use spindle_protocol::{ContainerId, ContainerState, ContainerStatus, ExitReason, Resources, now_ms};
use tokio_util::sync::CancellationToken;

/// What a launch starts.
pub enum LaunchKind {
    /// A task container that runs for this long.
    Task(Duration),
    /// An AM container; `stop` ends its fake AM if the RM kills the container.
    Am(CancellationToken),
}

/// The containers of one node and what the running ones hold.
pub struct NodeContainers {
    capacity: Resources,
    containers: HashMap<ContainerId, FakeContainer>,
    used: Resources,
}

/// A container as the fake agent keeps it.
struct FakeContainer {
    status: ContainerStatus,
    resources: Resources,
    /// When a running task container ends by itself; `None` for an AM container, which ends
    /// when its fake AM does.
    ends_at: Option<Instant>,
    /// A heartbeat that reported it RUNNING was answered: the RM knows it runs, so releasing
    /// it now makes the RM ask for a kill rather than free its room at once.
    known_running: bool,
    /// For an AM container: stops its fake AM when the RM kills the container.
    am_stop: Option<CancellationToken>,
}

/// What an acknowledgement from the RM was about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acknowledged {
    /// A completed task container, now forgotten.
    Task,
    /// A completed AM container, now forgotten.
    Am,
    /// A container that still runs: the RM acknowledged an end that did not happen.
    StillRunning,
    /// None this node has (already forgotten).
    Unknown,
}

impl NodeContainers {
    pub fn new(capacity: Resources) -> NodeContainers {
        NodeContainers {
            capacity,
            containers: HashMap::new(),
            used: Resources::ZERO,
        }
    }

    pub fn used(&self) -> Resources {
        self.used
    }

    pub fn contains(&self, container_id: &ContainerId) -> bool {
        self.containers.contains_key(container_id)
    }

    /// Starts a container that is not here yet; `Err` with what the running containers would
    /// hold if it does not fit the node (it is started anyway: the caller reports the RM's
    /// over-commitment, and the run goes on).
    pub fn start(
        &mut self,
        container_id: ContainerId,
        resources: Resources,
        kind: LaunchKind,
        now: Instant,
    ) -> (ContainerStatus, Result<(), Resources>) {
        debug_assert!(!self.contains(&container_id), "checked by the caller");
        let after = self.used + resources;
        let fits = if self.capacity.fits(&after) { Ok(()) } else { Err(after) };
        self.used = after;
        let status = ContainerStatus {
            container_id,
            state: ContainerState::Running,
            exit_code: None,
            exit_reason: None,
            diagnostics: String::new(),
            started_at_ms: Some(now_ms()),
            finished_at_ms: None,
        };
        let (ends_at, am_stop) = match kind {
            LaunchKind::Task(duration) => (Some(now + duration), None),
            LaunchKind::Am(stop) => (None, Some(stop)),
        };
        let container = FakeContainer {
            status: status.clone(),
            resources,
            ends_at,
            known_running: false,
            am_stop,
        };
        self.containers.insert(container_id, container);
        (status, fits)
    }

    /// Marks a running container COMPLETE and frees its room; whether it was running.
    pub fn complete(&mut self, container_id: &ContainerId, exit_code: i32, reason: ExitReason, diagnostics: &str) -> bool {
        let Some(container) = self.containers.get_mut(container_id) else {
            return false;
        };
        if container.status.state != ContainerState::Running {
            return false;
        }
        container.status.state = ContainerState::Complete;
        container.status.exit_code = Some(exit_code);
        container.status.exit_reason = Some(reason);
        container.status.diagnostics = diagnostics.to_owned();
        container.status.finished_at_ms = Some(now_ms());
        container.ends_at = None;
        self.used -= container.resources;
        true
    }

    /// Kills a running container as the RM asked; whether it was running. An AM container's
    /// fake AM is told to stop.
    pub fn kill(&mut self, container_id: &ContainerId, exit_code: i32) -> bool {
        if !self.complete(container_id, exit_code, ExitReason::KilledByRm, "killed by the resource manager") {
            return false;
        }
        if let Some(stop) = self.containers.get(container_id).and_then(|container| container.am_stop.as_ref()) {
            stop.cancel();
        }
        true
    }

    /// Ends the task containers whose time is up at `now`; whether any ended.
    pub fn complete_due(&mut self, now: Instant) -> bool {
        let due: Vec<ContainerId> = self
            .containers
            .iter()
            .filter(|(_, container)| container.ends_at.is_some_and(|ends_at| ends_at <= now))
            .map(|(container_id, _)| *container_id)
            .collect();
        for container_id in &due {
            self.complete(container_id, 0, ExitReason::Success, "");
        }
        !due.is_empty()
    }

    /// When the next running task container ends.
    pub fn next_end(&self) -> Option<Instant> {
        self.containers.values().filter_map(|container| container.ends_at).min()
    }

    /// What a heartbeat reports, as the real agent: every running container and every
    /// completed one the RM has not acknowledged; and which of them run.
    pub fn statuses(&self) -> (Vec<ContainerStatus>, Vec<ContainerId>) {
        let statuses: Vec<ContainerStatus> = self.containers.values().map(|container| container.status.clone()).collect();
        let running = statuses
            .iter()
            .filter(|status| status.state == ContainerState::Running)
            .map(|status| status.container_id)
            .collect();
        (statuses, running)
    }

    /// A heartbeat that reported these as running was answered.
    pub fn mark_known_running(&mut self, container_ids: &[ContainerId]) {
        for container_id in container_ids {
            if let Some(container) = self.containers.get_mut(container_id) {
                container.known_running = true;
            }
        }
    }

    /// Whether the RM has heard that this container runs; `None` if it does not run here.
    pub fn known_running(&self, container_id: &ContainerId) -> Option<bool> {
        self.containers
            .get(container_id)
            .filter(|container| container.status.state == ContainerState::Running)
            .map(|container| container.known_running)
    }

    /// The RM recorded this container's end: forget it, unless it still runs.
    pub fn acknowledge(&mut self, container_id: &ContainerId) -> Acknowledged {
        let Some(container) = self.containers.get(container_id) else {
            return Acknowledged::Unknown;
        };
        if container.status.state != ContainerState::Complete {
            return Acknowledged::StillRunning;
        }
        let is_am = container.am_stop.is_some();
        self.containers.remove(container_id);
        if is_am { Acknowledged::Am } else { Acknowledged::Task }
    }
}

#[cfg(test)]
mod tests {
    use spindle_protocol::AppId;

    use super::*;

    fn container(seq: u64) -> ContainerId {
        ContainerId {
            app: AppId { cluster_ts: 1, seq: 1 },
            attempt: 1,
            epoch: 1,
            seq,
        }
    }

    #[test]
    fn a_task_runs_for_its_duration_and_is_reported_until_acknowledged() {
        let mut node = NodeContainers::new(Resources::new(4, 4096));
        let start = Instant::now();
        let (status, fits) = node.start(
            container(1),
            Resources::new(1, 1024),
            LaunchKind::Task(Duration::from_secs(2)),
            start,
        );
        assert_eq!((status.state, fits), (ContainerState::Running, Ok(())));
        assert_eq!(node.next_end(), Some(start + Duration::from_secs(2)));
        assert!(!node.complete_due(start + Duration::from_secs(1)));
        assert!(node.complete_due(start + Duration::from_secs(2)));
        assert_eq!(node.used(), Resources::ZERO, "its room is free as soon as it ends");
        let (statuses, running) = node.statuses();
        assert_eq!((statuses.len(), statuses[0].state, running.len()), (1, ContainerState::Complete, 0));
        assert_eq!(statuses[0].exit_code, Some(0));
        assert_eq!(node.acknowledge(&container(1)), Acknowledged::Task);
        assert!(node.statuses().0.is_empty());
        assert_eq!(node.acknowledge(&container(1)), Acknowledged::Unknown);
    }

    #[test]
    fn a_launch_beyond_the_capacity_is_reported_with_what_the_node_would_hold() {
        let mut node = NodeContainers::new(Resources::new(2, 2048));
        let now = Instant::now();
        let task = || LaunchKind::Task(Duration::from_secs(1));
        assert_eq!(node.start(container(1), Resources::new(1, 1024), task(), now).1, Ok(()));
        assert_eq!(node.start(container(2), Resources::new(1, 1024), task(), now).1, Ok(()));
        assert_eq!(
            node.start(container(3), Resources::new(1, 512), task(), now).1,
            Err(Resources::new(3, 2560))
        );
    }

    #[test]
    fn a_kill_stops_an_am_and_an_acknowledgement_of_a_running_container_is_refused() {
        let mut node = NodeContainers::new(Resources::new(4, 4096));
        let stop = CancellationToken::new();
        let (_, fits) = node.start(container(1), Resources::new(1, 256), LaunchKind::Am(stop.clone()), Instant::now());
        assert_eq!(fits, Ok(()));
        assert_eq!(node.next_end(), None, "an AM container ends when its AM does");
        assert_eq!(node.acknowledge(&container(1)), Acknowledged::StillRunning);
        assert_eq!(node.known_running(&container(1)), Some(false));
        node.mark_known_running(&[container(1)]);
        assert_eq!(node.known_running(&container(1)), Some(true));
        assert!(node.kill(&container(1), 137));
        assert!(stop.is_cancelled());
        assert!(!node.kill(&container(1), 137), "a container ends once");
        assert_eq!(node.known_running(&container(1)), None);
        assert_eq!(node.acknowledge(&container(1)), Acknowledged::Am);
    }
}
