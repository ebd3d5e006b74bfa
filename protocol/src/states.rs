//! Lifecycles of apps, containers and nodes, with YARN's state names and a table of the legal
//! transitions. The RM checks every transition against these tables before it commits one.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where an application is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AppState {
    New,
    Submitted,
    Accepted,
    Running,
    Finished,
    Failed,
    Killed,
}

/// How an application ended, as its AM (or the RM) reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FinalStatus {
    Undefined,
    Succeeded,
    Failed,
    Killed,
}

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ContainerState {
    /// Granted by the RM, not yet handed to the AM.
    Allocated,
    /// Handed to the AM in an allocate reply, not yet started on its node.
    Acquired,
    Running,
    Complete,
}

/// Why a container completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExitReason {
    Success,
    Failed,
    KilledByApp,
    KilledByRm,
    Preempted,
    ExceededMemory,
    NodeLost,
    Expired,
}

/// Where a node agent is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NodeState {
    New,
    Running,
    Unhealthy,
    Decommissioning,
    Decommissioned,
    Lost,
}

impl AppState {
    pub const ALL: [AppState; 7] = [
        AppState::New,
        AppState::Submitted,
        AppState::Accepted,
        AppState::Running,
        AppState::Finished,
        AppState::Failed,
        AppState::Killed,
    ];

    /// Whether the app has ended for good.
    pub fn is_terminal(self) -> bool {
        matches!(self, AppState::Finished | AppState::Failed | AppState::Killed)
    }

    /// The legal transitions. `Running → Accepted` is a failed AM attempt making way for the next.
    pub fn can_become(self, next: AppState) -> bool {
        use AppState::*;
        matches!(
            (self, next),
            (New, Submitted)
                | (Submitted, Accepted)
                | (Submitted | Accepted | Running, Killed)
                | (Submitted | Accepted | Running, Failed)
                | (Accepted, Running)
                | (Running, Accepted)
                | (Running, Finished)
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AppState::New => "NEW",
            AppState::Submitted => "SUBMITTED",
            AppState::Accepted => "ACCEPTED",
            AppState::Running => "RUNNING",
            AppState::Finished => "FINISHED",
            AppState::Failed => "FAILED",
            AppState::Killed => "KILLED",
        }
    }
}

impl std::str::FromStr for AppState {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        AppState::ALL
            .into_iter()
            .find(|state| state.as_str().eq_ignore_ascii_case(text))
            .ok_or_else(|| {
                format!("unknown app state `{text}`: expected one of NEW, SUBMITTED, ACCEPTED, RUNNING, FINISHED, FAILED, KILLED")
            })
    }
}

impl ContainerState {
    pub const ALL: [ContainerState; 4] = [
        ContainerState::Allocated,
        ContainerState::Acquired,
        ContainerState::Running,
        ContainerState::Complete,
    ];

    /// The legal transitions. AM containers go `Allocated → Running` directly: the RM launches
    /// them itself, so there is no AM to acquire them.
    pub fn can_become(self, next: ContainerState) -> bool {
        use ContainerState::*;
        matches!(
            (self, next),
            (Allocated, Acquired) | (Allocated | Acquired, Running) | (Allocated | Acquired | Running, Complete)
        )
    }

    pub fn is_live(self) -> bool {
        self != ContainerState::Complete
    }
}

impl NodeState {
    pub const ALL: [NodeState; 6] = [
        NodeState::New,
        NodeState::Running,
        NodeState::Unhealthy,
        NodeState::Decommissioning,
        NodeState::Decommissioned,
        NodeState::Lost,
    ];

    /// The legal transitions. A LOST or DECOMMISSIONED node that registers again comes back RUNNING.
    pub fn can_become(self, next: NodeState) -> bool {
        use NodeState::*;
        matches!(
            (self, next),
            (New | Lost | Decommissioned, Running)
                // Recommissioned: a drain called off (`spindle recommission`), as YARN allows.
                | (Decommissioning, Running)
                | (Running, Unhealthy)
                | (Unhealthy, Running)
                | (New | Running | Unhealthy, Decommissioning)
                | (Decommissioning, Decommissioned)
                | (New | Running | Unhealthy | Decommissioning, Lost)
        )
    }

    /// Whether new containers may be placed on a node in this state.
    pub fn is_schedulable(self) -> bool {
        self == NodeState::Running
    }

    /// Whether the node still counts as part of the cluster (its capacity is in the totals).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            NodeState::New | NodeState::Running | NodeState::Unhealthy | NodeState::Decommissioning
        )
    }
}

/// The name a state or reason has on the wire (`RUNNING`, `NODE_LOST`): the one users know,
/// for tables, labels and logs.
pub fn wire_name(value: &impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        Ok(other) => other.to_string(),
        Err(_) => "?".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pair of states, checked against the table written out by hand.
    #[test]
    fn app_transition_table() {
        use AppState::*;
        let legal = [
            (New, Submitted),
            (Submitted, Accepted),
            (Submitted, Killed),
            (Accepted, Killed),
            (Running, Killed),
            (Submitted, Failed),
            (Accepted, Failed),
            (Running, Failed),
            (Accepted, Running),
            (Running, Accepted),
            (Running, Finished),
        ];
        for from in AppState::ALL {
            for to in AppState::ALL {
                assert_eq!(from.can_become(to), legal.contains(&(from, to)), "{from:?} -> {to:?}");
            }
        }
        for terminal in [Finished, Failed, Killed] {
            assert!(AppState::ALL.iter().all(|next| !terminal.can_become(*next)));
        }
    }

    #[test]
    fn container_transition_table() {
        use ContainerState::*;
        let legal = [
            (Allocated, Acquired),
            (Allocated, Running),
            (Acquired, Running),
            (Allocated, Complete),
            (Acquired, Complete),
            (Running, Complete),
        ];
        for from in ContainerState::ALL {
            for to in ContainerState::ALL {
                assert_eq!(from.can_become(to), legal.contains(&(from, to)), "{from:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn node_transition_table() {
        use NodeState::*;
        let legal = [
            (New, Running),
            (Lost, Running),
            (Decommissioned, Running),
            (Running, Unhealthy),
            (Unhealthy, Running),
            (New, Decommissioning),
            (Running, Decommissioning),
            (Unhealthy, Decommissioning),
            (Decommissioning, Decommissioned),
            (Decommissioning, Running),
            (New, Lost),
            (Running, Lost),
            (Unhealthy, Lost),
            (Decommissioning, Lost),
        ];
        for from in NodeState::ALL {
            for to in NodeState::ALL {
                assert_eq!(from.can_become(to), legal.contains(&(from, to)), "{from:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn states_serialize_with_yarn_names() {
        assert_eq!(serde_json::to_string(&AppState::Accepted).unwrap(), "\"ACCEPTED\"");
        assert_eq!(serde_json::to_string(&ExitReason::ExceededMemory).unwrap(), "\"EXCEEDED_MEMORY\"");
        assert_eq!("running".parse::<AppState>().unwrap(), AppState::Running);
    }
}
