//! The one door for state changes of apps, attempts' containers and nodes: every change is
//! checked against the tables in `spindle_protocol::states` at run time. The tables are the
//! contract the store, the reports and the agents rely on, so a change they do not allow is a
//! bug: it is refused and logged (and panics in debug builds, so the random-operation tests
//! find it) rather than committed.

use std::fmt::{Debug, Display};

use spindle_protocol::{AppState, ContainerState, NodeState};

/// A state with a transition table.
pub(super) trait StateMachine: Copy + PartialEq + Debug {
    const ENTITY: &'static str;
    fn allows(self, next: Self) -> bool;
}

impl StateMachine for AppState {
    const ENTITY: &'static str = "app";
    fn allows(self, next: Self) -> bool {
        self.can_become(next)
    }
}

impl StateMachine for ContainerState {
    const ENTITY: &'static str = "container";
    fn allows(self, next: Self) -> bool {
        self.can_become(next)
    }
}

impl StateMachine for NodeState {
    const ENTITY: &'static str = "node";
    fn allows(self, next: Self) -> bool {
        self.can_become(next)
    }
}

/// Moves `state` (of the entity `id`) to `next` if the table allows it; staying put is always
/// allowed. Returns whether the state is now `next`.
pub(super) fn transition<S: StateMachine>(id: &dyn Display, state: &mut S, next: S) -> bool {
    if *state == next {
        return true;
    }
    if !state.allows(next) {
        tracing::error!(entity = S::ENTITY, %id, from = ?*state, to = ?next, "refused a state change the transition table does not allow");
        debug_assert!(false, "{} {id}: {:?} -> {next:?} is not in the transition table", S::ENTITY, *state);
        return false;
    }
    *state = next;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_changes_happen_and_staying_put_is_allowed() {
        let mut state = AppState::New;
        assert!(transition(&"app_1", &mut state, AppState::Submitted));
        assert!(transition(&"app_1", &mut state, AppState::Submitted));
        assert_eq!(state, AppState::Submitted);
    }

    #[test]
    #[cfg(not(debug_assertions))]
    fn a_change_outside_the_table_is_refused() {
        let mut state = NodeState::Decommissioned;
        assert!(!transition(&"n1", &mut state, NodeState::Unhealthy));
        assert_eq!(state, NodeState::Decommissioned);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "not in the transition table")]
    fn a_change_outside_the_table_is_a_bug() {
        let mut state = ContainerState::Complete;
        transition(&"c1", &mut state, ContainerState::Running);
    }
}
