//! What the capacity scheduler reads (a [`ClusterSnapshot`]) and what it answers
//! ([`Decisions`]): plain data, so the RM, tests and the simulator build them the same way.

use std::borrow::Cow;
use std::fmt;

use spindle_protocol::{AppId, ContainerId, NodeId, Resources};

use super::queues::QueueTree;

/// Everything one scheduling round looks at. Read only: `solve` never changes it.
#[derive(Debug, Clone)]
pub struct ClusterSnapshot<'a> {
    /// The validated queue tree; borrowed so a round does not copy it.
    pub queues: &'a QueueTree,
    /// Nodes in a stable order (the RM keeps them sorted by id); node choice walks this order.
    /// Borrowed from the RM's view kept between rounds; owned where tools and tests build it.
    pub nodes: Cow<'a, [SnapshotNode]>,
    /// Running and accepted apps with what they hold and what they still want.
    pub apps: Vec<SnapshotApp>,
    /// The RM's clock, read by the caller; kept for delay scheduling and preemption deadlines.
    pub now_ms: u64,
}

/// One node as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SnapshotNode {
    pub node_id: NodeId,
    /// Rack the agent reports (`/default-rack` unless configured); for rack-local placement.
    pub rack: String,
    /// Labels the agent carries, sorted. Only asks whose queue may use every one of them land
    /// here; an ask that requires a label lands only on nodes carrying it.
    pub labels: Vec<String>,
    /// Total resources the node offers; tells "no node is large enough" from "cluster is full".
    pub capacity: Resources,
    /// What is still free on it.
    pub headroom: Resources,
    /// False for draining or unhealthy nodes: they take nothing and do not count in the cluster.
    pub schedulable: bool,
}

/// One app: where it lives, what it holds, what it waits for.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotApp {
    pub app_id: AppId,
    /// Name of its leaf queue.
    pub queue: String,
    pub user: String,
    /// Higher is served first among one user's apps.
    pub priority: i32,
    pub submitted_at_ms: u64,
    /// All resources its containers hold, AM included.
    pub used: Resources,
    /// The part of `used` held by its AM container; counts towards the queue's AM share.
    pub am_used: Resources,
    /// Size of the AM container if it still has to be placed. While it is, the app's asks wait.
    pub pending_am: Option<Resources>,
    /// Containers the running AM asked for, in the app's ask-table order.
    pub asks: Vec<AppAsk>,
    /// Its live containers (AM included), for preemption; `solve` does not read them.
    pub containers: Vec<SnapshotContainer>,
}

/// `count` more containers of one size, with where they would rather run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AppAsk {
    pub resources: Resources,
    pub count: u32,
    /// Preferred nodes; empty means no node preference.
    pub nodes: Vec<NodeId>,
    /// Preferred racks (besides the racks of `nodes`); empty means no rack preference.
    pub racks: Vec<String>,
    /// A node label the containers require; `None` runs on unlabelled nodes (or nodes whose
    /// labels the queue may use).
    pub label: Option<String>,
}

/// A live container, as preemption sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotContainer {
    pub container_id: ContainerId,
    pub resources: Resources,
    pub is_am: bool,
    /// When it was granted: the youngest go first.
    pub allocated_at_ms: u64,
    /// Already under a preemption notice (its grace period runs).
    pub preempting: bool,
}

/// Which container of an app a placement is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ContainerKind {
    /// The app's AM container.
    Am,
    /// One container of the ask at this index of `SnapshotApp::asks`.
    Ask(usize),
}

/// Start one container of `app_id` on `node_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPlacement {
    pub app_id: AppId,
    pub container: ContainerKind,
    pub node_id: NodeId,
}

/// The result of one round.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decisions {
    /// In the order they were decided.
    pub placements: Vec<ContainerPlacement>,
    /// Every app that got less than it asked for, with the first reason it had to stop; ordered
    /// by app id.
    pub waiting: Vec<(AppId, WaitReason)>,
}

impl Decisions {
    /// Why `app_id` waits, if it does.
    pub fn wait_reason(&self, app_id: AppId) -> Option<&WaitReason> {
        self.waiting
            .binary_search_by(|(id, _)| id.cmp(&app_id))
            .ok()
            .map(|index| &self.waiting[index].1)
    }
}

/// Why an app got less than it asked for; `Display` is the text for its diagnostics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitReason {
    /// The queue's AM containers already hold its AM share.
    AmShareLimit {
        queue: String,
        am_used: Resources,
        am_limit: Resources,
        am_size: Resources,
    },
    /// The user already holds the most one user may in this queue.
    UserLimit {
        queue: String,
        user: String,
        user_used: Resources,
        user_limit: Resources,
    },
    /// The queue (or the parent named here) is at its maximum capacity.
    QueueAtMaximum {
        queue: String,
        used: Resources,
        maximum: Resources,
    },
    /// No schedulable node could ever take a container this size.
    NoNodeLargeEnough { size: Resources, largest_node: Resources },
    /// Nodes large enough exist, but none has this much free now.
    ClusterFull { size: Resources },
    /// The app names a queue that is not a leaf of the current tree.
    UnknownQueue { queue: String },
    /// No schedulable node carries the label the ask requires.
    LabelNotPresent { label: String },
    /// The ask requires a label its queue may not use.
    LabelNotAccessible { queue: String, label: String },
}

impl fmt::Display for WaitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitReason::AmShareLimit {
                queue,
                am_used,
                am_limit,
                am_size,
            } => write!(
                f,
                "waiting for the AM share limit of queue `{queue}`: AMs there hold {am_used} of {am_limit}, \
                 this AM needs {am_size}; it starts when another app of the queue finishes"
            ),
            WaitReason::UserLimit {
                queue,
                user,
                user_used,
                user_limit,
            } => write!(
                f,
                "user `{user}` reached the user limit of queue `{queue}`: holds {user_used} of {user_limit}"
            ),
            WaitReason::QueueAtMaximum { queue, used, maximum } => {
                write!(f, "queue `{queue}` is at its maximum capacity: uses {used} of {maximum}")
            }
            WaitReason::NoNodeLargeEnough { size, largest_node } => write!(
                f,
                "no node is large enough for a container of {size} (the largest node offers {largest_node}); \
                 ask for smaller containers"
            ),
            WaitReason::ClusterFull { size } => {
                write!(f, "the cluster is full: no node has {size} free right now")
            }
            WaitReason::UnknownQueue { queue } => {
                write!(f, "queue `{queue}` is not a leaf queue of the current configuration")
            }
            WaitReason::LabelNotPresent { label } => {
                write!(f, "no schedulable node carries label `{label}`")
            }
            WaitReason::LabelNotAccessible { queue, label } => {
                write!(f, "queue `{queue}` may not use node label `{label}` (see its accessible_labels)")
            }
        }
    }
}
