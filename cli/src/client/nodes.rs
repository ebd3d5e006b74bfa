//! `spindle nodes`, `spindle decommission NODE` and `spindle queues`: the cluster's capacity.

use std::process::ExitCode;

use anyhow::Context;
use spindle_protocol::{DecommissionRequest, JoinTokenRequest, NodeId, NodeReport, NodeState, QueueReport, Resources, now_ms};

use super::{ClientContext, print_json};
use crate::args::{DecommissionArgs, JoinTokenArgs};
use crate::table::{Table, age, wire_name};

/// `spindle nodes [--all]`: nodes that left (DECOMMISSIONED, LOST) only with `--all`, so a
/// cluster that has churned through many hosts still lists what it has; `--all` also lists
/// those the RM has forgotten (`departed_node_expiry` after they left), from its history.
pub async fn list(context: &ClientContext, all: bool) -> anyhow::Result<ExitCode> {
    let nodes = if all {
        context.client.all_nodes().await
    } else {
        context.client.nodes().await
    };
    let mut nodes = nodes.context("cannot list nodes")?;
    let total = nodes.len();
    if !all {
        nodes.retain(|node| !matches!(node.state, NodeState::Decommissioned | NodeState::Lost));
    }
    let hidden = total - nodes.len();
    if context.json {
        print_json(&nodes)?;
    } else if total == 0 {
        eprintln!("no nodes: start one with `spindle node-agent --rm URL`, or a whole cluster with `spindle local`");
    } else {
        if !nodes.is_empty() {
            out!("{}", nodes_table(&nodes, now_ms()).render());
        }
        if hidden > 0 {
            eprintln!("{hidden} decommissioned or lost node(s) not shown: `spindle nodes --all` lists them");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn recommission(context: &ClientContext, node_id: &str) -> anyhow::Result<ExitCode> {
    let node_id = NodeId(node_id.to_owned());
    let node = context
        .client
        .recommission(&node_id)
        .await
        .with_context(|| format!("cannot recommission {node_id}"))?;
    if context.json {
        print_json(&node)?;
    } else {
        outln!("{node_id}  {}", wire_name(&node.state));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn queues(context: &ClientContext) -> anyhow::Result<ExitCode> {
    let root = context.client.queues().await.context("cannot list queues")?;
    if context.json {
        print_json(&root)?;
    } else {
        out!("{}", queues_table(&root).render());
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn reload_queues(context: &ClientContext) -> anyhow::Result<ExitCode> {
    let root = context.client.reload_queues().await.context("cannot reload queues")?;
    if context.json {
        print_json(&root)?;
    } else {
        out!("queues reloaded\n{}", queues_table(&root).render());
    }
    Ok(ExitCode::SUCCESS)
}

/// One row per queue, children indented under their parent; resources as `vcores/memory`.
pub fn queues_table(root: &QueueReport) -> Table {
    fn add(table: &mut Table, queue: &QueueReport, depth: usize) {
        let short_name = queue.name.rsplit('.').next().unwrap_or(&queue.name);
        let users: Vec<&str> = queue.users.iter().map(|user| user.user.as_str()).collect();
        table.row(vec![
            format!("{}{short_name}", "  ".repeat(depth)),
            format!("{:.0}%", queue.guaranteed_percent),
            format!("{:.0}%", queue.maximum_percent),
            resources(queue.used),
            resources(queue.pending),
            queue.apps_running.to_string(),
            users.join(","),
        ]);
        for child in &queue.children {
            add(table, child, depth + 1);
        }
    }
    fn resources(value: Resources) -> String {
        crate::table::resources(&value)
    }
    let mut table = Table::new(&["QUEUE", "GUARANTEED", "MAXIMUM", "USED", "PENDING", "APPS", "USERS"]).right_align(&[1, 2, 5]);
    add(&mut table, root, 0);
    table
}

pub fn nodes_table(nodes: &[NodeReport], now_ms: u64) -> Table {
    let mut table = Table::new(&[
        "ID",
        "STATE",
        "RACK",
        "CONTAINERS",
        "USED",
        "CAPACITY",
        "LAST HEARTBEAT",
        "RUNS CONTAINERS AS",
    ])
    .right_align(&[3]);
    for node in nodes {
        let forgotten = if node.forgotten_at_ms.is_some() { " (forgotten)" } else { "" };
        table.row(vec![
            node.node_id.to_string(),
            format!("{}{forgotten}", wire_name(&node.state)),
            node.rack.clone(),
            node.containers.to_string(),
            crate::table::resources(&node.used),
            crate::table::resources(&node.capacity),
            age(now_ms, node.last_heartbeat_ms),
            node.isolation.summary(),
        ]);
    }
    table
}

pub async fn decommission(context: &ClientContext, args: &DecommissionArgs) -> anyhow::Result<ExitCode> {
    let node_id = NodeId(args.node_id.clone());
    let request = DecommissionRequest {
        timeout_s: args.timeout_s,
        force: args.force,
    };
    let node = context
        .client
        .decommission(&node_id, &request)
        .await
        .with_context(|| format!("cannot decommission {node_id}"))?;
    if context.json {
        print_json(&node)?;
    } else if node.state == NodeState::Decommissioning {
        let grace = if args.force {
            "are killed now".to_owned()
        } else {
            format!("get up to {}s to finish", args.timeout_s)
        };
        outln!("{node_id}  DECOMMISSIONING  (its {} running container(s) {grace})", node.containers);
    } else {
        outln!("{node_id}  {}", wire_name(&node.state));
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a join token alone on stdout, so it can go straight into a file:
/// `spindle join-token > /etc/spindle/join-token`.
pub async fn join_token(context: &ClientContext, args: &JoinTokenArgs) -> anyhow::Result<ExitCode> {
    let reply = context
        .client
        .join_token(&JoinTokenRequest { ttl_s: args.ttl_s })
        .await
        .context("cannot make a join token")?;
    if context.json {
        print_json(&reply)?;
    } else {
        outln!("{}", reply.token);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use spindle_protocol::{NodeUsage, QueueUserReport};

    #[test]
    fn the_nodes_table_shows_used_over_capacity() {
        let node = NodeReport {
            node_id: NodeId("127.0.0.1:8042".into()),
            address: "127.0.0.1:8042".into(),
            rack: "/default-rack".into(),
            labels: Vec::new(),
            state: NodeState::Running,
            capacity: Resources::new(8, 16 * 1024),
            used: Resources::new(3, 640),
            containers: 3,
            usage: NodeUsage::default(),
            health_report: String::new(),
            last_heartbeat_ms: 9_000,
            isolation: spindle_protocol::NodeIsolation {
                run_as: spindle_protocol::RunAs::PerUser { min_uid: 1000 },
                limits: "cgroup v1".into(),
            },
            departed_at_ms: None,
            forgotten_at_ms: None,
        };
        let mut single_user = node.clone();
        single_user.node_id = NodeId("127.0.0.1:8043".into());
        single_user.isolation.run_as = spindle_protocol::RunAs::SingleUser {
            account: "alice".into(),
            uid: 1001,
        };
        let table = nodes_table(&[node, single_user], 10_000).render();
        assert_eq!(
            table,
            "ID              STATE    RACK           CONTAINERS  USED               CAPACITY          LAST HEARTBEAT  RUNS CONTAINERS AS\n\
             127.0.0.1:8042  RUNNING  /default-rack           3  3 vcores / 640 MB  8 vcores / 16 GB  1s ago          per-user\n\
             127.0.0.1:8043  RUNNING  /default-rack           3  3 vcores / 640 MB  8 vcores / 16 GB  1s ago          single-tenant (as alice)\n"
        );
    }

    #[test]
    fn the_queues_table_indents_children_under_their_parent() {
        let leaf = QueueReport {
            name: "root.default".into(),
            guaranteed_percent: 100.0,
            maximum_percent: 100.0,
            guaranteed: Resources::new(8, 16_384),
            maximum: Resources::new(8, 16_384),
            used: Resources::new(3, 640),
            pending: Resources::new(1, 128),
            apps_running: 2,
            users: vec![QueueUserReport {
                user: "alice".into(),
                used: Resources::new(3, 640),
                pending: Resources::new(1, 128),
                apps_running: 2,
            }],
            children: Vec::new(),
        };
        let root = QueueReport {
            name: "root".into(),
            users: Vec::new(),
            children: vec![leaf.clone()],
            ..leaf
        };
        let table = queues_table(&root).render();
        assert_eq!(
            table,
            "QUEUE      GUARANTEED  MAXIMUM  USED               PENDING           APPS  USERS\n\
             root             100%     100%  3 vcores / 640 MB  1 vcore / 128 MB     2\n\
             \x20 default        100%     100%  3 vcores / 640 MB  1 vcore / 128 MB     2  alice\n"
        );
    }
}
