//! The simulator's table of live containers: a slab, so a container is found from its id, its
//! completion event or a preemption victim in O(1), and slots are reused as containers end.

use spindle_protocol::{AppId, ContainerId, Resources};

/// A container the simulation runs.
#[derive(Debug, Clone)]
pub(crate) struct LiveContainer {
    pub id: ContainerId,
    /// Index of its app in the workload.
    pub app: usize,
    /// Index of its node.
    pub node: usize,
    pub resources: Resources,
    /// Which ask it serves: `None` for the AM container.
    pub ask: Option<usize>,
    /// Its index in its app's `SnapshotApp::containers`, kept up to date on swap-removes.
    pub position: usize,
    /// When its preemption notice runs out, while it is under one.
    pub notice_deadline_ms: Option<u64>,
}

/// Live containers by slot. A container id's `seq` carries its slot in the low 32 bits and a
/// running count above them, so ids never repeat although slots do.
#[derive(Debug, Default)]
pub(crate) struct ContainerTable {
    slots: Vec<Option<LiveContainer>>,
    free_slots: Vec<usize>,
    /// Containers ever started; the high half of the next id's `seq`.
    started: u64,
    live: usize,
}

impl ContainerTable {
    /// Stores a new container (not under notice) and returns its slot.
    pub fn insert(&mut self, app_id: AppId, app: usize, node: usize, resources: Resources, ask: Option<usize>, position: usize) -> usize {
        let slot = self.free_slots.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        debug_assert!(slot < 1 << 32, "slot does not fit the id's low half");
        self.started += 1;
        let id = ContainerId {
            app: app_id,
            attempt: 1,
            epoch: 0,
            seq: (self.started << 32) | slot as u64,
        };
        self.slots[slot] = Some(LiveContainer {
            id,
            app,
            node,
            resources,
            ask,
            position,
            notice_deadline_ms: None,
        });
        self.live += 1;
        slot
    }

    /// The slot of a live container, `None` if it has ended.
    pub fn slot_of(&self, id: &ContainerId) -> Option<usize> {
        let slot = (id.seq & 0xFFFF_FFFF) as usize;
        let live = self.slots.get(slot)?.as_ref()?;
        (live.id == *id).then_some(slot)
    }

    pub fn get(&self, slot: usize) -> Option<&LiveContainer> {
        self.slots.get(slot)?.as_ref()
    }

    pub fn get_mut(&mut self, slot: usize) -> Option<&mut LiveContainer> {
        self.slots.get_mut(slot)?.as_mut()
    }

    pub fn remove(&mut self, slot: usize) -> Option<LiveContainer> {
        let removed = self.slots.get_mut(slot)?.take()?;
        self.free_slots.push(slot);
        self.live -= 1;
        Some(removed)
    }

    /// Slots of the live containers on `node`, in slot order.
    pub fn on_node(&self, node: usize) -> Vec<usize> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, container)| container.as_ref().is_some_and(|container| container.node == node))
            .map(|(slot, _)| slot)
            .collect()
    }

    pub fn live(&self) -> usize {
        self.live
    }
}
