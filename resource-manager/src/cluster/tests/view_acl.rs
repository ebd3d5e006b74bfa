//! Who sees what of an app's reports (the view ACL): its owner, an admin of its queue or of a
//! parent, and cluster admins see everything; anyone else sees it with diagnostics, AM
//! counters and containers' stderr hidden, and may not read its logs.

use super::*;
use crate::cluster::HIDDEN;

/// Dana administers the whole tree, carol only `batch`; `streaming` has no admins.
fn queues_with_admins() -> QueueTree {
    let config: QueueConfig = toml::from_str(
        r#"
        name = "root"
        admin_users = ["dana"]
        [[children]]
        name = "batch"
        guaranteed_percent = 50
        am_share_percent = 100
        admin_users = ["carol"]
        [[children]]
        name = "streaming"
        guaranteed_percent = 50
        am_share_percent = 100
        "#,
    )
    .expect("queue config parses");
    QueueTree::from_config(&config).expect("queue config is valid")
}

fn person(name: &str, admin: bool) -> Caller {
    Caller {
        user: name.to_owned(),
        admin,
        unix_user: Some("nobody".to_owned()),
    }
}

const SECRET_TEXT: &str = "hunter2";

/// Alice's app in `queue` on a fresh RM: its AM reported a counter naming a secret, then its
/// task and AM containers failed with the secret on their stderr, so its diagnostics, its
/// attempt's and its containers' all carry it: the app FAILED (one attempt only).
fn alices_app_with_secrets(queue: &str) -> (Rm, AppId, ContainerId) {
    let mut rm = Rm::new(Cluster::new(
        ClusterSettings {
            queues: queues_with_admins(),
            ..settings()
        },
        1,
        0,
    ));
    let mut n1 = register(&mut rm, "n1:8042", 8, 8192, 0);
    let spec = JobSpec {
        queue: queue.to_owned(),
        max_attempts: 1,
        ..shell_spec(1)
    };
    let mut am = start_job(&mut rm, &mut n1, spec, 0);
    let tasks = grant_and_launch(&mut rm, &mut am, &mut n1, 1, 0);
    let mut report = am.request(Vec::new(), Vec::new());
    report.detail = Some(spindle_protocol::JobDetail {
        counters: BTreeMap::from([(format!("lines matching {SECRET_TEXT}"), 3)]),
        ..Default::default()
    });
    am.update_asks(&mut rm, &report, 10).expect("the detail is taken");
    for container_id in [tasks[0], rm.am_container(am.app_id)] {
        let status = n1.containers.get_mut(&container_id).expect("n1 runs it");
        status.state = ContainerState::Complete;
        status.exit_code = Some(1);
        status.exit_reason = Some(ExitReason::Failed);
        status.diagnostics = format!("exited with code 1; stderr tail: password {SECRET_TEXT} rejected");
        status.finished_at_ms = Some(20);
        n1.heartbeat(&mut rm, 20);
    }
    (rm, am.app_id, tasks[0])
}

#[test]
fn the_owner_queue_admins_and_cluster_admins_see_everything() {
    let (rm, app_id, _) = alices_app_with_secrets("batch");
    let full = rm.app(app_id);
    assert_eq!(full.state, AppState::Failed);
    assert!(full.diagnostics.contains(SECRET_TEXT), "{}", full.diagnostics);
    assert!(full.attempts[0].diagnostics.contains(SECRET_TEXT));
    for viewer in [
        person("alice", false),
        person("carol", false),
        person("dana", false),
        person("root", true),
    ] {
        let cluster = &rm.cluster;
        assert_eq!(cluster.app_report_for(&viewer, app_id).as_ref(), Some(&full), "{}", viewer.user);
        assert_eq!(
            cluster.container_reports_for(&viewer, app_id),
            Some(rm.containers(app_id)),
            "{}",
            viewer.user
        );
        assert!(cluster.may_view_app(&viewer, app_id), "{}", viewer.user);
        assert!(cluster.container_logs_location(&viewer, rm.am_container(app_id)).is_ok());
    }
}

#[test]
fn anyone_else_sees_the_state_but_no_diagnostics_counters_or_stderr() {
    let (rm, app_id, task) = alices_app_with_secrets("batch");
    let bob = person("bob", false);
    let full = rm.app(app_id);
    let seen = rm.cluster.app_report_for(&bob, app_id).expect("bob sees the app");
    assert_eq!(
        (
            seen.state,
            &seen.queue,
            &seen.user,
            &seen.name,
            seen.progress,
            seen.allocated,
            seen.submitted_at_ms
        ),
        (
            full.state,
            &full.queue,
            &full.user,
            &full.name,
            full.progress,
            full.allocated,
            full.submitted_at_ms
        )
    );
    assert_eq!(seen.diagnostics, HIDDEN);
    assert_eq!(seen.attempts[0].diagnostics, HIDDEN);
    assert!(seen.detail.expect("the detail stays").counters.is_empty());
    assert!(!full.detail.expect("alice's AM reported one").counters.is_empty());

    let containers = rm.cluster.container_reports_for(&bob, app_id).unwrap();
    let failed = containers.iter().find(|c| c.container_id == task).unwrap();
    assert_eq!((failed.state, failed.exit_code), (ContainerState::Complete, Some(1)));
    assert_eq!(failed.diagnostics, HIDDEN);
    let everything = format!("{:?}", (rm.cluster.app_reports_for(&bob, &all_apps()), containers));
    assert!(!everything.contains(SECRET_TEXT), "{everything}");
}

#[test]
fn a_queue_admin_sees_only_the_apps_of_the_queues_they_administer() {
    let (rm, app_id, _) = alices_app_with_secrets("streaming");
    let carol = person("carol", false);
    assert!(!rm.cluster.may_view_app(&carol, app_id), "carol administers batch, not streaming");
    assert_eq!(rm.cluster.app_report_for(&carol, app_id).unwrap().diagnostics, HIDDEN);
    assert!(rm.cluster.may_view_app(&person("dana", false), app_id), "dana administers root");
}

#[test]
fn a_list_hides_only_the_apps_the_caller_may_not_view() {
    let (mut rm, alices, _) = alices_app_with_secrets("batch");
    let bobs = rm
        .mutate(|cluster| {
            let spec = JobSpec {
                queue: "batch".to_owned(),
                ..shell_spec(1)
            };
            cluster.submit(&person("bob", false), spec, 30)
        })
        .expect("bob submits");
    let reports = rm.cluster.app_reports_for(&person("bob", false), &all_apps());
    let diagnostics = |app_id: AppId| reports.iter().find(|report| report.app_id == app_id).unwrap().diagnostics.clone();
    assert_eq!(diagnostics(alices), HIDDEN);
    assert_eq!(diagnostics(bobs), rm.app(bobs).diagnostics, "bob sees his own");
    assert_ne!(diagnostics(bobs), HIDDEN);
}

#[test]
fn only_viewers_may_read_a_containers_logs() {
    let (rm, app_id, task) = alices_app_with_secrets("batch");
    let refused = rm.cluster.container_logs_location(&person("bob", false), task).unwrap_err();
    let AppError::Forbidden(message) = refused else {
        panic!("expected Forbidden (403), got {refused:?}");
    };
    assert!(
        message.contains("user bob may not read the logs") && message.contains("an admin of queue `batch`"),
        "{message}"
    );
    let location = rm.cluster.container_logs_location(&person("carol", false), task).unwrap();
    assert_eq!((location.owner.as_str(), location.node_address.as_str()), ("alice", "n1:8042"));
    let unknown = ContainerId { seq: 999, ..task };
    assert_eq!(
        rm.cluster.container_logs_location(&person("alice", false), unknown).unwrap_err(),
        AppError::ContainerNotFound(unknown)
    );
    assert!(
        !rm.cluster.may_view_app(&person("root", true), AppId { seq: 99, ..app_id }),
        "no such app"
    );
}

fn all_apps() -> AppQuery {
    AppQuery {
        limit: usize::MAX,
        ..AppQuery::default()
    }
}
