//! The containers counted for `/metrics`.

use spindle_protocol::{ContainerState, Resources};

use super::ContainerManager;
use crate::metrics::Census;

impl ContainerManager {
    /// Containers by state (every state, zeros included) and what live ones were granted.
    pub(crate) fn census(&self, capacity: Resources) -> Census {
        let state = self.lock();
        let mut containers: Vec<(ContainerState, u64)> = ContainerState::ALL.iter().map(|state| (*state, 0)).collect();
        let mut used = Resources::ZERO;
        for record in state.containers.values() {
            if let Some(count) = containers.iter_mut().find(|(known, _)| *known == record.status.state) {
                count.1 += 1;
            }
            if record.status.state != ContainerState::Complete {
                used += record.resources;
            }
        }
        Census {
            containers,
            used,
            capacity,
        }
    }
}
