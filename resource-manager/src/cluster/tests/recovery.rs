//! Recovery after an RM restart.

use super::nodes::job_with_tasks_on_n2;
use super::*;

#[test]
fn a_restarted_rm_recovers_the_cluster_and_running_work_carries_on() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 8, 8192, 0);
    let (mut am, tasks) = running_job(&mut rm, &mut n1, 3, 0);
    let app_id = am.app_id;
    n1.exit(tasks[0], 0, 1_000);
    n1.heartbeat(&mut rm, 1_000);
    am.collect_news(&mut rm).expect("the AM heard of the end before the restart");
    // A grant the AM never hears of before the RM dies.
    am.ask(&mut rm, 1, 1_100);
    let unheard = rm.containers(app_id).last().unwrap().container_id;
    assert_eq!(rm.container(unheard).state, ContainerState::Allocated);
    let (app_before, containers_before, node_before) = (rm.app(app_id), rm.containers(app_id), rm.node("n1:8042"));

    rm.restart(50_000);
    assert_eq!(rm.cluster.epoch(), 2);
    assert_eq!(rm.app(app_id), app_before);
    assert_eq!(rm.containers(app_id), containers_before);
    let node = rm.node("n1:8042");
    assert_eq!(
        (node.state, node.used, node.containers),
        (node_before.state, node_before.used, node_before.containers)
    );
    assert!(rm.take_launches().is_empty(), "the AM runs: nothing to relaunch");

    // The agent is told to register again, and keeps its containers when it does.
    assert!(n1.heartbeat(&mut rm, 50_100).resync);
    let reply = n1.register(&mut rm, 50_200);
    assert_eq!(reply.epoch, 2);
    assert!(reply.kill.is_empty());
    for id in [rm.am_container(app_id), tasks[1], tasks[2]] {
        assert_eq!(rm.container(id).state, ContainerState::Running, "{id}");
    }
    assert!(!n1.heartbeat(&mut rm, 50_300).resync);

    // The AM reconnects: completions of its attempt are told again (at least once), the unheard grant too.
    let registered = am.register(&mut rm, 50_400).unwrap();
    assert_eq!(registered.live_containers, [rm.am_container(app_id), tasks[1], tasks[2], unheard]);
    let news = am.collect_news(&mut rm).unwrap();
    assert_eq!(reasons(&news.completed), [(tasks[0], ExitReason::Success)]);
    assert_eq!(news.allocated.iter().map(|a| a.container_id).collect::<Vec<_>>(), [unheard]);

    // What is new carries the new epoch and start time.
    am.ask(&mut rm, 1, 50_500);
    assert_eq!(am.collect_news(&mut rm).unwrap().allocated[0].container_id.epoch, 2);
    let new_app = rm.submit(shell_spec(1), 50_600).unwrap();
    assert_eq!((new_app.cluster_ts, new_app.seq), (50_000, 1));
    assert!(new_app > app_id);
}

#[test]
fn a_restarted_rm_relaunches_an_am_that_may_never_have_started() {
    let mut rm = cluster();
    register(&mut rm, "n1:8042", 4, 4096, 0);
    let app_id = rm.submit(shell_spec(1), 0).unwrap();
    let am_container = rm.am_container(app_id);
    rm.restart(1_000);
    let launches = rm.take_launches();
    assert_eq!(launches.len(), 1);
    assert_eq!(launches[0].request.token.container_id, am_container);
}

#[test]
fn after_a_restart_a_node_that_never_registers_again_is_lost() {
    let (mut rm, mut n1, _n2, mut am, tasks) = job_with_tasks_on_n2();
    rm.restart(50_000);
    n1.register(&mut rm, 50_100);
    am.register(&mut rm, 50_100).unwrap();
    assert!(am.collect_news(&mut rm).is_none());

    n1.heartbeat(&mut rm, 59_000);
    rm.tick(60_000);
    assert_eq!(
        rm.node("n2:8042").state,
        NodeState::Running,
        "a full node_expiry from the restart to come back"
    );
    n1.heartbeat(&mut rm, 60_001);
    rm.tick(60_001);
    assert_eq!(rm.node("n2:8042").state, NodeState::Lost);
    assert_eq!(
        reasons(&am.collect_news(&mut rm).unwrap().completed),
        tasks.iter().map(|id| (*id, ExitReason::NodeLost)).collect::<Vec<_>>()
    );
    assert_eq!(rm.app(am.app_id).state, AppState::Running);
}

#[test]
fn a_restarted_rm_still_kills_the_containers_of_a_killed_app() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 4, 4096, 0);
    let (am, tasks) = running_job(&mut rm, &mut n1, 2, 0);
    rm.kill(&caller(), am.app_id, 100).unwrap();
    // The RM dies before the agent's next heartbeat could carry the kills.
    rm.restart(1_000);
    n1.register(&mut rm, 1_100);
    let reply = n1.heartbeat(&mut rm, 1_200);
    assert_eq!(
        sorted(reply.kill),
        sorted([tasks.clone(), vec![rm.am_container(am.app_id)]].concat())
    );
    n1.heartbeat(&mut rm, 1_300);
    assert!(
        rm.containers(am.app_id)
            .iter()
            .all(|c| c.exit_reason == Some(ExitReason::KilledByRm))
    );
    assert_eq!(rm.node("n1:8042").used, Resources::ZERO);
}

#[test]
fn a_restarted_rm_still_kills_the_containers_of_a_failed_attempt() {
    let (mut rm, mut n1, mut n2, am, tasks) = job_with_tasks_on_n2();
    let first_am = rm.am_container(am.app_id);
    n1.exit(first_am, 1, 100);
    n1.heartbeat(&mut rm, 100);
    assert_eq!(rm.app(am.app_id).attempts.len(), 2);
    // n2 has not heard that attempt 1's tasks must go when the RM dies.
    rm.restart(1_000);
    n2.register(&mut rm, 1_100);
    assert_eq!(sorted(n2.heartbeat(&mut rm, 1_200).kill), tasks);
}
