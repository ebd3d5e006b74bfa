//! Shuffle clean-up: which apps' shuffle data each node is told to delete, and for how long.

use super::*;
use crate::cluster::nodes::SHUFFLE_CLEANUP_REPLIES;

/// An AM on n1 (room for it only) and two tasks on n2, running; n3 joins later and runs nothing.
fn job_on_two_nodes(rm: &mut Rm) -> (Agent, Agent, Agent, Am, Vec<ContainerId>) {
    let mut n1 = register(rm, "n1:8042", 1, 256, 0);
    let mut n2 = register(rm, "n2:8042", 4, 4096, 0);
    let mut am = start_job(rm, &mut n1, shell_spec(2), 0);
    let tasks = grant_and_launch(rm, &mut am, &mut n2, 2, 1_000);
    let n3 = register(rm, "n3:8042", 4, 4096, 1_000);
    (n1, n2, n3, am, tasks)
}

#[test]
fn an_ended_app_is_listed_for_the_nodes_it_ran_on_for_a_few_replies() {
    let mut rm = cluster();
    let (mut n1, mut n2, mut n3, am, tasks) = job_on_two_nodes(&mut rm);
    for task in &tasks {
        n2.exit(*task, 0, 2_000);
    }
    assert!(
        n2.heartbeat(&mut rm, 2_000).cleanup_apps.is_empty(),
        "the app still runs: its output is needed"
    );
    assert!(n1.heartbeat(&mut rm, 2_000).cleanup_apps.is_empty());

    am.finish(&mut rm, FinalStatus::Succeeded, 3_000).unwrap();
    assert!(rm.app(am.app_id).state.is_terminal());
    assert!(
        n1.heartbeat(&mut rm, 3_100).cleanup_apps.is_empty(),
        "the AM container still runs on n1: its files may still be written"
    );
    assert_eq!(
        n2.heartbeat(&mut rm, 3_100).cleanup_apps,
        vec![am.app_id],
        "nothing of the app is left on n2"
    );

    let am_container = n1.running()[0];
    n1.exit(am_container, 0, 3_200);
    assert_eq!(
        n1.heartbeat(&mut rm, 3_200).cleanup_apps,
        vec![am.app_id],
        "its AM container has ended"
    );

    for reply in 1..SHUFFLE_CLEANUP_REPLIES {
        assert_eq!(n2.heartbeat(&mut rm, 4_000 + u64::from(reply)).cleanup_apps, vec![am.app_id]);
    }
    assert!(n2.heartbeat(&mut rm, 5_000).cleanup_apps.is_empty(), "told often enough");
    assert!(n2.heartbeat(&mut rm, 6_000).cleanup_apps.is_empty());
    for now in [3_300, 3_400] {
        assert_eq!(n1.heartbeat(&mut rm, now).cleanup_apps, vec![am.app_id]);
    }
    assert!(n1.heartbeat(&mut rm, 3_500).cleanup_apps.is_empty());
    for now in [2_000, 3_100, 4_000, 5_000] {
        assert!(n3.heartbeat(&mut rm, now).cleanup_apps.is_empty(), "the app never ran on n3");
    }
}

#[test]
fn a_killed_app_is_listed_once_its_containers_on_the_node_have_ended() {
    let mut rm = cluster();
    let mut node = register(&mut rm, "n1:8042", 8, 8192, 0);
    let (killed, _) = running_job(&mut rm, &mut node, 2, 0);
    // Another app keeps running on the same node throughout.
    let (running, _) = running_job(&mut rm, &mut node, 1, 500);

    rm.kill(&caller(), killed.app_id, 2_000).unwrap();
    let reply = node.heartbeat(&mut rm, 2_100);
    assert_eq!(reply.kill.len(), 3, "its AM and two tasks");
    assert!(reply.cleanup_apps.is_empty(), "its containers are being killed, not yet ended");
    let reply = node.heartbeat(&mut rm, 2_200);
    assert_eq!(reply.acked.len(), 3);
    assert_eq!(
        reply.cleanup_apps,
        vec![killed.app_id],
        "only the killed app, not {}",
        running.app_id
    );
    assert_eq!(rm.app(running.app_id).state, AppState::Running);
}

#[test]
fn an_app_purged_before_its_nodes_heard_of_its_end_is_still_cleaned_up() {
    let mut rm = cluster();
    let (mut n1, mut n2, _n3, am, tasks) = job_on_two_nodes(&mut rm);
    for task in &tasks {
        n2.exit(*task, 0, 2_000);
    }
    n2.heartbeat(&mut rm, 2_000);
    am.finish(&mut rm, FinalStatus::Succeeded, 3_000).unwrap();
    let am_container = n1.running()[0];
    n1.exit(am_container, 0, 3_000);
    n1.heartbeat(&mut rm, 3_000);
    assert_eq!(rm.mutate(|cluster| cluster.forget_finished_before(u64::MAX)), 1);
    assert_eq!(
        n2.heartbeat(&mut rm, 4_000).cleanup_apps,
        vec![am.app_id],
        "an unknown app has ended"
    );
}

#[test]
fn a_container_reported_after_the_clean_up_lists_its_app_again() {
    let mut rm = cluster();
    let (_n1, mut n2, _n3, am, tasks) = job_on_two_nodes(&mut rm);
    for task in &tasks {
        n2.exit(*task, 0, 2_000);
    }
    n2.heartbeat(&mut rm, 2_000);
    am.finish(&mut rm, FinalStatus::Succeeded, 3_000).unwrap();
    for reply in 0..SHUFFLE_CLEANUP_REPLIES {
        assert_eq!(n2.heartbeat(&mut rm, 3_000 + u64::from(reply)).cleanup_apps, vec![am.app_id]);
    }
    assert!(n2.heartbeat(&mut rm, 4_000).cleanup_apps.is_empty());

    // A late launch of a container the app was granted (or a forged one): the agent made the
    // app's shuffle dir again. The RM kills it, and lists the app once it has ended.
    let late = ContainerId { seq: 99, ..tasks[0] };
    n2.launch(late, 5_000);
    let reply = n2.heartbeat(&mut rm, 5_000);
    assert_eq!(reply.kill, vec![late]);
    let reply = n2.heartbeat(&mut rm, 5_100);
    assert_eq!(reply.cleanup_apps, vec![am.app_id]);
}
