//! Ended apps leaving memory beyond `finished_apps_in_memory`, oldest first, never while their
//! AM container still exits; lists tell when the store must fill in below them.

use super::*;
use crate::cluster::merge_app_pages;

fn bounded(finished_apps_in_memory: usize) -> Rm {
    Rm::new(Cluster::new(
        ClusterSettings {
            finished_apps_in_memory,
            ..settings()
        },
        1,
        0,
    ))
}

fn all(limit: usize) -> AppQuery {
    AppQuery {
        limit,
        ..AppQuery::default()
    }
}

#[test]
fn the_oldest_ended_apps_leave_memory_once_their_containers_are_done() {
    let mut rm = bounded(1);
    let mut n1 = register(&mut rm, "n1:8042", 8, 8192, 0);
    let (first, first_tasks) = running_job(&mut rm, &mut n1, 2, 0);
    let (second, _) = running_job(&mut rm, &mut n1, 1, 0);
    for task in first_tasks {
        n1.exit(task, 0, 1_000);
    }
    n1.heartbeat(&mut rm, 1_000);
    first.finish(&mut rm, FinalStatus::Succeeded, 2_000).unwrap();
    second.finish(&mut rm, FinalStatus::Succeeded, 2_100).unwrap();
    let third = rm.submit(shell_spec(1), 2_200).unwrap();

    rm.tick(3_000);
    assert!(rm.cluster.app_report(first.app_id).is_some(), "its AM container is still exiting");
    assert_eq!(rm.cluster.app_page_for(&caller(), &all(10)).1, None, "nothing has left memory yet");

    let first_am = rm.am_container(first.app_id);
    n1.exit(first_am, 0, 3_100);
    n1.heartbeat(&mut rm, 3_100);
    rm.tick(4_000);
    assert!(rm.cluster.app_report(first.app_id).is_none(), "the oldest ended app left");
    assert_eq!(rm.cluster.containers_of(first.app_id).count(), 0, "with its containers");
    assert!(
        rm.cluster.app_report(second.app_id).is_some(),
        "the bound keeps the latest ended one"
    );
    assert!(rm.cluster.app_report(third).is_some(), "apps that have not ended never leave");
    assert!(
        rm.store.containers.keys().any(|id| id.app == first.app_id),
        "the store keeps it all"
    );

    // A page that reaches below the evicted app asks the store for the rest.
    let (memory, history) = rm.cluster.app_page_for(&caller(), &all(10));
    let ids: Vec<AppId> = memory.iter().map(|report| report.app_id).collect();
    assert_eq!(ids, [third, second.app_id]);
    let history = history.expect("the store must fill in");
    assert_eq!(
        history.before,
        Some(AppId {
            seq: first.app_id.seq + 1,
            ..first.app_id
        })
    );
    // A page that ends above it does not.
    assert_eq!(rm.cluster.app_page_for(&caller(), &all(1)).1, None);
}

#[test]
fn stored_reports_follow_the_view_acl_and_merge_under_memory() {
    let mut rm = bounded(0);
    let app_id = rm.submit(shell_spec(1), 0).unwrap();
    rm.kill(&caller(), app_id, 100).unwrap();
    rm.tick(200);
    assert!(rm.cluster.app_report(app_id).is_none(), "a bound of 0 keeps no ended app");
    let mut record = rm.store.snapshot().apps.pop().expect("stored");
    record.diagnostics = "secret".to_owned();

    let owners = rm.cluster.stored_app_report_for(&caller(), record.clone());
    assert_eq!((owners.state, owners.diagnostics.as_str()), (AppState::Killed, "secret"));
    let stranger = Caller {
        user: "mallory".to_owned(),
        ..caller()
    };
    assert_eq!(rm.cluster.stored_app_report_for(&stranger, record.clone()).diagnostics, "<hidden>");
    assert!(
        rm.cluster
            .stored_container_location(&stranger, &record, &stored_container(app_id))
            .is_err()
    );

    let newer = rm.submit(shell_spec(1), 300).unwrap();
    let memory = rm.cluster.app_reports_for(&caller(), &all(10));
    let merged = merge_app_pages(memory, vec![owners.clone(), owners], 10);
    let ids: Vec<AppId> = merged.iter().map(|report| report.app_id).collect();
    assert_eq!(ids, [newer, app_id], "newest first, each once");
}

fn stored_container(app_id: AppId) -> ContainerRecord {
    ContainerRecord {
        container_id: ContainerId {
            app: app_id,
            attempt: 1,
            epoch: 1,
            seq: 1,
        },
        node_id: NodeId("n1:8042".to_owned()),
        node_address: "n1:8042".to_owned(),
        resources: AM,
        state: ContainerState::Complete,
        is_am: true,
        exit_code: Some(0),
        exit_reason: None,
        diagnostics: String::new(),
        allocated_at_ms: 0,
        launch_deadline_ms: 0,
        started_at_ms: None,
        finished_at_ms: None,
    }
}
