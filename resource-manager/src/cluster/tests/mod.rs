//! Unit tests of the cluster state machine, driven the way the RM service drives it.
//!
//! `Rm` plays the service: every change goes through `Rm::mutate`, which takes the change's
//! write batch, checks each record in it against the transition tables, upserts it into a fake
//! store (what a restarted RM recovers from), keeps the outbox, and checks the cluster's
//! invariants, so every test checks those too. `Agent` plays a node agent, `Am` an application
//! master. Times are milliseconds from 0, when the first RM started.
//!
//! Here: the fixtures. `harness.rs`: `Rm`, its fake store and the checks. `actors.rs`: `Agent`
//! and `Am`. The test files see all of it through `use super::*;`.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use spindle_protocol::{
    AllocateReply, AllocateRequest, Allocation, AppId, AppReport, AppState, ClusterSecret, ContainerId, ContainerReport, ContainerState,
    ContainerStatus, CustomSpec, ExitReason, FinalStatus, FinishAmRequest, JobKind, JobSpec, NodeHeartbeatReply, NodeHeartbeatRequest,
    NodeId, NodeReport, NodeState, NodeUsage, RegisterAmReply, RegisterAmRequest, RegisterNodeReply, RegisterNodeRequest, ResourceAsk,
    Resources, ShellSpec, env,
};

use super::{AmLaunch, AppError, AppQuery, Caller, Cluster, ClusterSettings, NodeError};
use crate::records::{AppRecord, ContainerRecord, NodeRecord, Snapshot, WriteBatch};
use crate::scheduler::capacity::LocalitySettings;
use crate::scheduler::queues::{QueueConfig, QueueTree};

mod actors;
mod harness;

use actors::{Agent, Am, grant_and_launch, register, register_labelled, running_job, start_job};
use harness::Rm;

const SECRET: &str = "test-secret-0123456789";
const NODE_EXPIRY_MS: u64 = 10_000;
/// Short enough that the random operations see departed nodes forgotten and registering again.
const DEPARTED_NODE_EXPIRY_MS: u64 = 30_000;
const LAUNCH_EXPIRY_MS: u64 = 60_000;
/// The AM container of every job here (the job spec's default).
const AM: Resources = Resources { vcores: 1, memory_mb: 256 };
/// Each task container of `shell_spec`.
const TASK: Resources = Resources { vcores: 1, memory_mb: 128 };

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

fn settings() -> ClusterSettings {
    ClusterSettings {
        authority: authority(),
        node_expiry_ms: NODE_EXPIRY_MS,
        departed_node_expiry_ms: Some(DEPARTED_NODE_EXPIRY_MS),
        heartbeat_interval_ms: 1000,
        container_launch_expiry_ms: LAUNCH_EXPIRY_MS,
        queues: lifecycle_queues(),
        preemption_grace_ms: Some(PREEMPTION_GRACE_MS),
        locality: LocalitySettings::default(),
        finished_apps_in_memory: 1_000,
    }
}

/// The default tree, but AMs may hold the whole queue: lifecycle tests run several jobs on one
/// small node, where the default 10% AM share would admit one AM at a time (scheduling.rs tests
/// that limit).
fn lifecycle_queues() -> QueueTree {
    let mut config = QueueConfig::default();
    config.children[0].am_share_percent = 100;
    QueueTree::from_config(&config).expect("the default queues are valid")
}

/// Grace period of preemption notices in these tests.
const PREEMPTION_GRACE_MS: u64 = 15_000;

fn secret() -> ClusterSecret {
    ClusterSecret::new(SECRET)
}

fn authority() -> spindle_protocol::NodeAuthority {
    spindle_protocol::NodeAuthority::new(
        secret(),
        std::time::Duration::from_secs(3600),
        std::time::Duration::from_secs(24 * 3600),
    )
}

/// Checks a container token as the agent of `node` would, with the keys the RM gives it at `now`.
fn verify_container(token: &spindle_protocol::ContainerToken, node: &NodeId, now: u64) -> Result<(), spindle_protocol::TokenError> {
    spindle_protocol::NodeKeyring::new(&authority().credential(node, now))
        .expect("the RM's credentials are usable")
        .verify_container(token, now)
}

/// A new RM (epoch 1, started at 0) on an empty store.
fn cluster() -> Rm {
    Rm::new(Cluster::new(settings(), 1, 0))
}

/// The user who submits every job here.
fn caller() -> Caller {
    Caller {
        user: "alice".to_owned(),
        admin: false,
        unix_user: Some("nobody".to_owned()),
    }
}

/// A shell job of `containers` task containers of `TASK` size, with a default AM.
fn shell_spec(containers: u32) -> JobSpec {
    JobSpec {
        name: "test".to_owned(),
        queue: "default".to_owned(),
        kind: JobKind::Shell,
        max_attempts: 2,
        priority: 0,
        am: AM,
        shell: Some(ShellSpec {
            command: vec!["true".to_owned()],
            containers,
            vcores: TASK.vcores,
            memory_mb: TASK.memory_mb,
            env: BTreeMap::new(),
            max_retries: 3,
            node_label: None,
        }),
        custom: None,
        mapreduce: None,
        stream: None,
    }
}

fn custom_spec(am: Resources) -> JobSpec {
    JobSpec {
        kind: JobKind::Custom,
        am,
        shell: None,
        custom: Some(CustomSpec {
            command: vec!["./my-am".to_owned()],
            env: BTreeMap::new(),
        }),
        ..shell_spec(1)
    }
}

fn node_id(address: &str) -> NodeId {
    NodeId(address.to_owned())
}

fn task_ask(count: u32) -> ResourceAsk {
    ResourceAsk {
        priority: 0,
        resources: TASK,
        count,
        nodes: Vec::new(),
        racks: Vec::new(),
        label: None,
    }
}

fn sorted(mut ids: Vec<ContainerId>) -> Vec<ContainerId> {
    ids.sort();
    ids
}

fn reasons(statuses: &[ContainerStatus]) -> Vec<(ContainerId, ExitReason)> {
    statuses
        .iter()
        .map(|status| (status.container_id, status.exit_reason.expect("completions have a reason")))
        .collect()
}

mod am_protocol;
mod attempts;
mod cleanup;
mod controls;
mod departed_nodes;
mod history;
mod nodes;
mod queues;
mod random_operations;
mod recovery;
mod rounds;
mod submit;
mod view_acl;
