//! Spindle's reports in the JSON shapes and field names of Hadoop's ResourceManager REST API
//! (`/ws/v1/cluster/...`, Hadoop 3). Pure: reports in, `serde_json::Value`s out. Which field is
//! mapped how is written down in resource-manager/README.md ("YARN REST compatibility").

use serde::Serialize;
use serde_json::{Value, json};
use spindle_protocol::{AppId, AppReport, AttemptReport, ClusterReport, NodeReport, QueueReport, Resources};

/// A state or status as its wire name (`RUNNING`, `SUCCEEDED`): YARN's names are the same.
pub fn wire(value: &impl Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// `/ws/v1/cluster/info`.
pub fn cluster_info(report: &ClusterReport) -> Value {
    let version = env!("CARGO_PKG_VERSION");
    json!({ "clusterInfo": {
        "id": report.started_at_ms,
        "startedOn": report.started_at_ms,
        "state": "STARTED",
        "haState": "ACTIVE",
        "rmStateStoreName": report.store,
        "resourceManagerVersion": format!("spindle-{version}"),
        "resourceManagerBuildVersion": format!("spindle-{version}"),
        "resourceManagerVersionBuiltOn": "",
        "hadoopVersion": format!("spindle-{version}"),
        "hadoopBuildVersion": format!("spindle-{version}"),
        "hadoopVersionBuiltOn": "",
    }})
}

/// `/ws/v1/cluster/metrics`.
pub fn cluster_metrics(report: &ClusterReport) -> Value {
    let apps = |state: &str| report.apps.get(state).copied().unwrap_or(0);
    let nodes = |state: &str| report.nodes.get(state).copied().unwrap_or(0);
    let submitted: u32 = report.apps.values().sum();
    json!({ "clusterMetrics": {
        "appsSubmitted": submitted,
        "appsCompleted": apps("FINISHED") + apps("FAILED") + apps("KILLED"),
        "appsPending": apps("NEW") + apps("SUBMITTED") + apps("ACCEPTED"),
        "appsRunning": apps("RUNNING"),
        "appsFailed": apps("FAILED"),
        "appsKilled": apps("KILLED"),
        "reservedMB": 0,
        "availableMB": report.available.memory_mb,
        "allocatedMB": report.used.memory_mb,
        "totalMB": report.capacity.memory_mb,
        "reservedVirtualCores": 0,
        "availableVirtualCores": report.available.vcores,
        "allocatedVirtualCores": report.used.vcores,
        "totalVirtualCores": report.capacity.vcores,
        "containersAllocated": report.containers_running,
        "containersReserved": 0,
        "containersPending": 0,
        "totalNodes": report.nodes.values().sum::<u32>(),
        "activeNodes": nodes("RUNNING"),
        "lostNodes": nodes("LOST"),
        "unhealthyNodes": nodes("UNHEALTHY"),
        "decommissioningNodes": nodes("DECOMMISSIONING"),
        "decommissionedNodes": nodes("DECOMMISSIONED"),
        "rebootedNodes": 0,
        "shutdownNodes": 0,
    }})
}

/// `/ws/v1/cluster/scheduler`: the queue tree as the capacity scheduler's.
pub fn scheduler(root: &QueueReport) -> Value {
    let mut info = queue(root, 100.0);
    let object = info.as_object_mut().expect("a queue is an object");
    object.insert("type".to_owned(), json!("capacityScheduler"));
    json!({ "scheduler": { "schedulerInfo": info } })
}

/// One queue; `absolute` is the parent's absolute capacity (percent of the cluster).
fn queue(report: &QueueReport, parent_absolute: f32) -> Value {
    let name = report.name.rsplit('.').next().unwrap_or(&report.name);
    let absolute = parent_absolute * report.guaranteed_percent / 100.0;
    let used_percent = percent(report.used, report.guaranteed);
    let mut value = json!({
        "queueName": name,
        "queuePath": report.name,
        "state": "RUNNING",
        "capacity": report.guaranteed_percent,
        "maxCapacity": report.maximum_percent,
        "usedCapacity": used_percent,
        "absoluteCapacity": absolute,
        "absoluteMaxCapacity": parent_absolute * report.maximum_percent / 100.0,
        "absoluteUsedCapacity": absolute * used_percent / 100.0,
        "numApplications": report.apps_running,
        "resourcesUsed": resources(report.used),
    });
    let object = value.as_object_mut().expect("an object");
    if report.children.is_empty() {
        object.insert("type".to_owned(), json!("capacitySchedulerLeafQueueInfo"));
        object.insert("numActiveApplications".to_owned(), json!(report.apps_running));
        object.insert("numPendingApplications".to_owned(), json!(0));
        let users: Vec<Value> = report
            .users
            .iter()
            .map(|user| {
                json!({
                    "username": user.user,
                    "resourcesUsed": resources(user.used),
                    "numActiveApplications": user.apps_running,
                    "numPendingApplications": 0,
                })
            })
            .collect();
        object.insert("users".to_owned(), json!({ "user": users }));
    } else {
        let children: Vec<Value> = report.children.iter().map(|child| queue(child, absolute)).collect();
        object.insert("queues".to_owned(), json!({ "queue": children }));
    }
    value
}

/// One app (`/ws/v1/cluster/apps/{id}` and the list).
pub fn app(report: &AppReport, now_ms: u64) -> Value {
    let started = report.started_at_ms.unwrap_or(report.submitted_at_ms);
    let finished = report.finished_at_ms.unwrap_or(0);
    let elapsed = report.finished_at_ms.unwrap_or(now_ms).saturating_sub(started);
    let am = report.attempts.last();
    let am_host = am
        .and_then(|attempt| attempt.node_id.as_ref())
        .map(|node| node.0.clone())
        .unwrap_or_default();
    json!({
        "id": report.app_id.to_string(),
        "user": report.user,
        "name": report.name,
        "queue": report.queue,
        "state": wire(&report.state),
        "finalStatus": wire(&report.final_status),
        "progress": f64::from(report.progress) * 100.0,
        "trackingUI": "",
        "trackingUrl": "",
        "diagnostics": report.diagnostics,
        "clusterId": report.app_id.cluster_ts,
        "applicationType": format!("SPINDLE-{}", report.kind.as_str().to_uppercase()),
        "applicationTags": "",
        "priority": report.priority,
        "startedTime": started,
        "launchTime": report.started_at_ms.unwrap_or(0),
        "finishedTime": finished,
        "elapsedTime": elapsed,
        "amContainerLogs": am.and_then(|attempt| attempt.am_container).map(|id| format!("/v1/containers/{id}/logs/stdout")).unwrap_or_default(),
        "amHostHttpAddress": am_host,
        "amRPCAddress": "",
        "allocatedMB": report.allocated.memory_mb,
        "allocatedVCores": report.allocated.vcores,
        "reservedMB": 0,
        "reservedVCores": 0,
        "runningContainers": report.running_containers,
        "memorySeconds": 0,
        "vcoreSeconds": 0,
        "queueUsagePercentage": 0.0,
        "clusterUsagePercentage": 0.0,
        "preemptedResourceMB": 0,
        "preemptedResourceVCores": 0,
        "numNonAMContainerPreempted": 0,
        "numAMContainerPreempted": 0,
        "logAggregationStatus": "NOT_START",
        "unmanagedApplication": false,
        "amNodeLabelExpression": "",
    })
}

/// `appattempt_<cluster-ts>_<seq>_<attempt>`, as YARN names attempts.
pub fn attempt_id(app_id: AppId, attempt: u32) -> String {
    format!("appattempt_{}_{:04}_{attempt:06}", app_id.cluster_ts, app_id.seq)
}

/// One AM attempt (`/ws/v1/cluster/apps/{id}/appattempts`).
pub fn attempt(app_id: AppId, attempt: &AttemptReport, current: bool, app_state: &str) -> Value {
    let node = attempt.node_id.as_ref().map(|node| node.0.clone()).unwrap_or_default();
    let state = match (current, attempt.finished_at_ms) {
        (true, None) => "RUNNING",
        (true, Some(_)) => app_state,
        (false, _) => "FAILED",
    };
    json!({
        "id": attempt.attempt,
        "appAttemptId": attempt_id(app_id, attempt.attempt),
        "startTime": attempt.started_at_ms,
        "finishedTime": attempt.finished_at_ms.unwrap_or(0),
        "containerId": attempt.am_container.map(|id| id.to_string()).unwrap_or_default(),
        "nodeHttpAddress": node,
        "nodeId": node,
        "logsLink": attempt.am_container.map(|id| format!("/v1/containers/{id}/logs/stdout")).unwrap_or_default(),
        "blacklistedNodes": "",
        "diagnosticsInfo": attempt.diagnostics,
        "appAttemptState": state,
    })
}

/// One node (`/ws/v1/cluster/nodes`).
pub fn node(report: &NodeReport) -> Value {
    let host = report
        .node_id
        .0
        .rsplit_once(':')
        .map_or(report.node_id.0.as_str(), |(host, _)| host);
    let available = report.capacity.saturating_sub(&report.used);
    json!({
        "rack": report.rack,
        "state": wire(&report.state),
        "id": report.node_id.0,
        "nodeHostName": host,
        "nodeHTTPAddress": report.address,
        "lastHealthUpdate": report.last_heartbeat_ms,
        "version": format!("spindle-{}", env!("CARGO_PKG_VERSION")),
        "healthReport": report.health_report,
        "numContainers": report.containers,
        "usedMemoryMB": report.used.memory_mb,
        "availMemoryMB": available.memory_mb,
        "usedVirtualCores": report.used.vcores,
        "availableVirtualCores": available.vcores,
        "nodeLabels": report.labels,
        "resourceUtilization": {
            "nodePhysicalMemoryMB": report.usage.memory_used_mb,
            "nodeCPUUsage": report.usage.cpu_percent / 100.0,
        },
    })
}

fn resources(resources: Resources) -> Value {
    json!({ "memory": resources.memory_mb, "vCores": resources.vcores })
}

/// `used` as a percent of `of` (by memory, YARN's default resource calculator).
fn percent(used: Resources, of: Resources) -> f32 {
    if of.memory_mb == 0 {
        0.0
    } else {
        used.memory_mb as f32 * 100.0 / of.memory_mb as f32
    }
}

#[cfg(test)]
mod tests {
    use spindle_protocol::{AppState, FinalStatus, NodeState};

    use super::*;

    #[test]
    fn states_keep_yarns_names_and_attempt_ids_yarns_form() {
        assert_eq!(wire(&AppState::Running), "RUNNING");
        assert_eq!(wire(&FinalStatus::Succeeded), "SUCCEEDED");
        assert_eq!(wire(&NodeState::Decommissioning), "DECOMMISSIONING");
        let app_id = AppId {
            cluster_ts: 1_700_000_000_000,
            seq: 7,
        };
        assert_eq!(attempt_id(app_id, 2), "appattempt_1700000000000_0007_000002");
    }

    #[test]
    fn cluster_metrics_count_apps_and_nodes_by_state() {
        let report = ClusterReport {
            epoch: 1,
            started_at_ms: 5,
            store: "sqlite".to_owned(),
            capacity: Resources::new(8, 8192),
            used: Resources::new(2, 2048),
            available: Resources::new(6, 6144),
            nodes: [("RUNNING".to_owned(), 2), ("LOST".to_owned(), 1)].into(),
            apps: [("RUNNING".to_owned(), 1), ("FINISHED".to_owned(), 3), ("ACCEPTED".to_owned(), 2)].into(),
            containers_running: 4,
        };
        let metrics = &cluster_metrics(&report)["clusterMetrics"];
        assert_eq!(metrics["appsSubmitted"], 6);
        assert_eq!(metrics["appsCompleted"], 3);
        assert_eq!(metrics["appsPending"], 2);
        assert_eq!(metrics["totalNodes"], 3);
        assert_eq!(metrics["activeNodes"], 2);
        assert_eq!(metrics["lostNodes"], 1);
        assert_eq!(
            (metrics["totalMB"].as_u64(), metrics["allocatedVirtualCores"].as_u64()),
            (Some(8192), Some(2))
        );
    }
}
