//! Nodes: loss, launch expiry, release, kill, health, decommissioning.

use super::*;

#[test]
fn a_silent_node_is_lost_and_comes_back_when_it_registers_again() {
    let mut rm = cluster();
    // n1 has room for the AM only, so the tasks go to n2.
    let mut n1 = register(&mut rm, "n1:8042", 1, 256, 0);
    let mut n2 = register(&mut rm, "n2:8042", 4, 4096, 0);
    let mut am = start_job(&mut rm, &mut n1, shell_spec(2), 0);
    let tasks = grant_and_launch(&mut rm, &mut am, &mut n2, 2, 1_000);

    n1.heartbeat(&mut rm, 5_000);
    n1.heartbeat(&mut rm, 10_000);
    rm.tick(11_000);
    assert_eq!(
        rm.node("n2:8042").state,
        NodeState::Running,
        "exactly node_expiry of silence is not yet too long"
    );
    rm.tick(11_001);
    let lost = rm.node("n2:8042");
    assert_eq!((lost.state, lost.used, lost.containers), (NodeState::Lost, Resources::ZERO, 0));
    assert!(tasks.iter().all(|id| rm.container(*id).exit_reason == Some(ExitReason::NodeLost)));
    let news = am.collect_news(&mut rm).expect("the AM hears of the loss");
    assert_eq!(
        reasons(&news.completed),
        tasks.iter().map(|id| (*id, ExitReason::NodeLost)).collect::<Vec<_>>()
    );
    assert_eq!(rm.app(am.app_id).state, AppState::Running, "the AM was elsewhere");

    let reply = n2.heartbeat(&mut rm, 12_000);
    assert!(reply.resync && reply.kill.is_empty(), "a lost node is told to register again");

    // It comes back still running the tasks the RM gave up on: it must kill them.
    let reply = n2.register(&mut rm, 13_000);
    assert_eq!(rm.node("n2:8042").state, NodeState::Running);
    assert_eq!(sorted(reply.kill), tasks);
    let reply = n2.heartbeat(&mut rm, 14_000);
    assert_eq!(sorted(reply.acked), tasks, "their ends are acked");
    assert!(
        tasks.iter().all(|id| rm.container(*id).exit_reason == Some(ExitReason::NodeLost)),
        "and change nothing"
    );
    assert!(
        n2.heartbeat(&mut rm, 15_000).kill.is_empty(),
        "killed and acked: no more kills to send"
    );

    // The node takes containers again.
    am.ask(&mut rm, 1, 16_000);
    assert_eq!(am.collect_news(&mut rm).unwrap().allocated[0].node_id, n2.node_id);
}

#[test]
fn an_unknown_node_is_told_to_register() {
    let mut rm = cluster();
    let mut stranger = Agent {
        node_id: node_id("x:8042"),
        capacity: Resources::new(1, 1),
        healthy: true,
        labels: Vec::new(),
        containers: BTreeMap::new(),
    };
    assert!(stranger.heartbeat(&mut rm, 0).resync);
    assert!(rm.last_writes.is_empty());
}

#[test]
fn a_grant_not_launched_by_its_deadline_expires() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 4, 4096, 0);
    let mut am = start_job(&mut rm, &mut n1, shell_spec(2), 0);
    am.ask(&mut rm, 2, 1_000);
    let news = am.collect_news(&mut rm).unwrap();
    let (launched, forgotten) = (news.allocated[0].container_id, news.allocated[1].container_id);
    n1.launch(launched, 2_000);
    n1.heartbeat(&mut rm, 2_000);

    let deadline = 1_000 + LAUNCH_EXPIRY_MS;
    n1.heartbeat(&mut rm, deadline);
    rm.tick(deadline);
    assert_eq!(
        rm.container(forgotten).state,
        ContainerState::Acquired,
        "still launchable at the deadline"
    );
    rm.tick(deadline + 1);
    let expired = rm.container(forgotten);
    assert_eq!(
        (expired.state, expired.exit_reason),
        (ContainerState::Complete, Some(ExitReason::Expired))
    );
    assert!(expired.diagnostics.contains("60 s"), "{}", expired.diagnostics);
    assert!(
        super::verify_container(&news.allocated[1].token, &n1.node_id, deadline + 1).is_err(),
        "its token has expired too"
    );
    assert_eq!(
        reasons(&am.collect_news(&mut rm).unwrap().completed),
        [(forgotten, ExitReason::Expired)]
    );
    assert_eq!(rm.container(launched).state, ContainerState::Running);
    assert_eq!(rm.node("n1:8042").used, Resources::new(2, 256 + 128));
}

#[test]
fn a_released_container_is_killed_and_completes_as_killed_by_app() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 4, 4096, 0);
    let (mut am, tasks) = running_job(&mut rm, &mut n1, 2, 0);

    am.release(&mut rm, &tasks, 100);
    assert_eq!(
        rm.container(tasks[0]).state,
        ContainerState::Running,
        "running until its agent says it ended"
    );
    let reply = n1.heartbeat(&mut rm, 200);
    assert_eq!(sorted(reply.kill), tasks);
    // Whatever the agent says of the end (here: killed by the RM, and one that died of the signal), it was the AM's doing.
    n1.containers.get_mut(&tasks[1]).unwrap().exit_reason = Some(ExitReason::Failed);
    n1.heartbeat(&mut rm, 300);
    for id in &tasks {
        let task = rm.container(*id);
        assert_eq!(task.exit_reason, Some(ExitReason::KilledByApp), "{id}");
        assert!(task.diagnostics.contains("released"), "{}", task.diagnostics);
    }
    let news = am.collect_news(&mut rm).unwrap();
    assert_eq!(
        reasons(&news.completed),
        tasks.iter().map(|id| (*id, ExitReason::KilledByApp)).collect::<Vec<_>>()
    );
    assert_eq!(rm.node("n1:8042").used, AM);
}

#[test]
fn a_released_container_that_had_already_succeeded_keeps_its_success() {
    // The rule `complete_container` states: a container that beat the kill to its end keeps
    // its own SUCCESS (or EXCEEDED_MEMORY), so an AM never redoes work that was done.
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 4, 4096, 0);
    let (mut am, tasks) = running_job(&mut rm, &mut n1, 1, 0);
    am.release(&mut rm, &tasks, 100);
    n1.exit(tasks[0], 0, 150);
    n1.heartbeat(&mut rm, 200);
    assert_eq!(
        reasons(&am.collect_news(&mut rm).unwrap().completed),
        [(tasks[0], ExitReason::Success)]
    );
}

#[test]
fn an_am_may_release_only_its_own_containers() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 8, 8192, 0);
    let (_am, tasks) = running_job(&mut rm, &mut n1, 1, 0);
    let (other, _) = running_job(&mut rm, &mut n1, 1, 0);
    let request = other.request(Vec::new(), tasks.clone());
    assert!(matches!(other.update_asks(&mut rm, &request, 10), Err(AppError::Forbidden(_))));
    assert_eq!(rm.container(tasks[0]).state, ContainerState::Running);
}

#[test]
fn only_the_owner_or_an_admin_may_kill_an_app_and_only_once() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 8, 8192, 0);
    let (mut am, tasks) = running_job(&mut rm, &mut n1, 2, 0);
    let app_id = am.app_id;
    let am_container = rm.am_container(app_id);

    let bob = Caller {
        user: "bob".to_owned(),
        admin: false,
        unix_user: Some("nobody".to_owned()),
    };
    assert!(matches!(rm.kill(&bob, app_id, 10), Err(AppError::Forbidden(message)) if message.contains("alice")));
    assert!(rm.last_writes.is_empty());
    assert_eq!(rm.app(app_id).state, AppState::Running);

    rm.kill(&caller(), app_id, 20).unwrap();
    let app = rm.app(app_id);
    assert_eq!((app.state, app.final_status), (AppState::Killed, FinalStatus::Killed));
    assert!(app.diagnostics.contains("killed by user alice"), "{}", app.diagnostics);
    assert!(am.collect_news(&mut rm).unwrap().shutdown);
    let reply = n1.heartbeat(&mut rm, 30);
    assert_eq!(
        sorted(reply.kill),
        sorted([tasks.clone(), vec![am_container]].concat()),
        "the AM goes too"
    );
    n1.heartbeat(&mut rm, 40);
    assert!(rm.containers(app_id).iter().all(|c| c.exit_reason == Some(ExitReason::KilledByRm)));
    assert_eq!(rm.node("n1:8042").used, Resources::ZERO);
    assert!(matches!(rm.kill(&caller(), app_id, 50), Err(AppError::Conflict(_))));
    assert!(matches!(
        rm.kill(&caller(), AppId { cluster_ts: 0, seq: 99 }, 50),
        Err(AppError::NotFound(_))
    ));

    let (other, _) = running_job(&mut rm, &mut n1, 1, 60);
    let root = Caller {
        user: "root".to_owned(),
        admin: true,
        unix_user: Some("nobody".to_owned()),
    };
    rm.kill(&root, other.app_id, 70).unwrap();
    assert_eq!(rm.app(other.app_id).state, AppState::Killed);
}

#[test]
fn an_unhealthy_node_gets_no_new_containers() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 4, 4096, 0);
    n1.healthy = false;
    n1.heartbeat(&mut rm, 100);
    let report = rm.node("n1:8042");
    assert_eq!((report.state, report.health_report.as_str()), (NodeState::Unhealthy, "disk full"));
    let app_id = rm.submit(shell_spec(1), 200).unwrap();
    assert_eq!(rm.app(app_id).attempts[0].am_container, None);
    n1.healthy = true;
    n1.heartbeat(&mut rm, 300);
    assert_eq!(rm.node("n1:8042").state, NodeState::Running);
    assert_eq!(n1.start_ams(&mut rm, 300).len(), 1, "placed once the node is healthy again");
}

/// n1 holds only the AM; n2 runs two tasks. Returns the RM, both agents, the AM and the tasks.
pub(super) fn job_with_tasks_on_n2() -> (Rm, Agent, Agent, Am, Vec<ContainerId>) {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 1, 256, 0);
    let mut n2 = register(&mut rm, "n2:8042", 4, 4096, 0);
    let mut am = start_job(&mut rm, &mut n1, shell_spec(2), 0);
    let tasks = grant_and_launch(&mut rm, &mut am, &mut n2, 2, 0);
    am.collect_news(&mut rm);
    (rm, n1, n2, am, tasks)
}

#[test]
fn a_decommissioning_node_drains_then_is_decommissioned() {
    let (mut rm, _n1, mut n2, mut am, tasks) = job_with_tasks_on_n2();
    rm.decommission("n2:8042", 300, false, 1_000).unwrap();
    assert_eq!(rm.node("n2:8042").state, NodeState::Decommissioning);
    let reply = n2.heartbeat(&mut rm, 1_100);
    assert!(reply.drain && !reply.shutdown && reply.kill.is_empty(), "{reply:?}");

    am.ask(&mut rm, 1, 1_200);
    assert!(am.collect_news(&mut rm).is_none(), "a draining node takes no new containers");

    n2.exit(tasks[0], 0, 2_000);
    assert!(n2.heartbeat(&mut rm, 2_000).drain);
    n2.exit(tasks[1], 0, 3_000);
    let reply = n2.heartbeat(&mut rm, 3_000);
    assert!(reply.shutdown && !reply.drain, "{reply:?}");
    assert_eq!(rm.node("n2:8042").state, NodeState::Decommissioned);
    assert!(n2.heartbeat(&mut rm, 4_000).shutdown);
    let news = am.collect_news(&mut rm).unwrap();
    assert_eq!(
        reasons(&news.completed),
        tasks.iter().map(|id| (*id, ExitReason::Success)).collect::<Vec<_>>()
    );
    assert_eq!(
        rm.cluster.cluster_report(String::new()).capacity,
        Resources::new(1, 256),
        "a decommissioned node is out"
    );

    // The pending ask goes to a node that joins.
    register(&mut rm, "n3:8042", 4, 4096, 5_000);
    assert_eq!(am.collect_news(&mut rm).unwrap().allocated[0].node_id, node_id("n3:8042"));

    assert!(matches!(
        rm.decommission("n2:8042", 0, false, 6_000),
        Err(NodeError::Conflict { .. })
    ));
    assert!(matches!(rm.decommission("n9:8042", 0, false, 6_000), Err(NodeError::NotFound(_))));
    assert!(matches!(
        rm.decommission("n3:8042", 8 * 24 * 3600, false, 6_000),
        Err(NodeError::Invalid { field: "timeout_s", .. })
    ));
}

#[test]
fn a_recommissioned_node_runs_new_containers_again_and_only_a_draining_one_can_be() {
    let (mut rm, _n1, mut n2, mut am, tasks) = job_with_tasks_on_n2();
    rm.decommission("n2:8042", 300, false, 1_000).unwrap();
    am.ask(&mut rm, 1, 1_100);
    assert!(am.collect_news(&mut rm).is_none(), "a draining node takes no new containers");

    rm.mutate(|cluster| cluster.recommission(&node_id("n2:8042"))).unwrap();
    assert_eq!(rm.node("n2:8042").state, NodeState::Running);
    let reply = n2.heartbeat(&mut rm, 1_200);
    assert!(
        !reply.drain && !reply.shutdown && reply.kill.is_empty(),
        "running tasks go on: {reply:?}"
    );
    let news = am.collect_news(&mut rm).expect("the pending ask is granted");
    assert_eq!(news.allocated[0].node_id, node_id("n2:8042"));
    assert!(tasks.iter().all(|id| rm.container(*id).exit_reason.is_none()), "nothing was killed");

    for (node, why) in [("n2:8042", "running"), ("n9:8042", "unknown")] {
        let refused = rm.mutate(|cluster| cluster.recommission(&node_id(node)));
        assert!(refused.is_err(), "{why}: {refused:?}");
    }
    assert!(matches!(
        rm.mutate(|cluster| cluster.recommission(&node_id("n9:8042"))),
        Err(NodeError::NotFound(_))
    ));
}

#[test]
fn a_forced_decommission_kills_at_once() {
    let (mut rm, _n1, mut n2, mut am, tasks) = job_with_tasks_on_n2();
    // A third task is granted on n2 but not launched yet: it ends at once.
    am.ask(&mut rm, 1, 500);
    let unlaunched = am.collect_news(&mut rm).unwrap().allocated[0].container_id;

    rm.decommission("n2:8042", 300, true, 1_000).unwrap();
    assert_eq!(rm.container(unlaunched).exit_reason, Some(ExitReason::KilledByRm));
    let reply = n2.heartbeat(&mut rm, 1_100);
    assert_eq!(sorted(reply.kill), tasks);
    let reply = n2.heartbeat(&mut rm, 1_200);
    assert!(reply.shutdown);
    assert_eq!(rm.node("n2:8042").state, NodeState::Decommissioned);
    let completed = reasons(&am.collect_news(&mut rm).unwrap().completed);
    assert_eq!(
        completed,
        [
            (unlaunched, ExitReason::KilledByRm),
            (tasks[0], ExitReason::KilledByRm),
            (tasks[1], ExitReason::KilledByRm)
        ]
    );
}

#[test]
fn a_decommission_timeout_kills_what_is_left_at_the_deadline() {
    let (mut rm, mut n1, mut n2, _am, tasks) = job_with_tasks_on_n2();
    rm.decommission("n2:8042", 30, false, 1_000).unwrap();
    for now in [10_000, 20_000, 30_000] {
        n1.heartbeat(&mut rm, now);
        n2.heartbeat(&mut rm, now);
    }
    rm.tick(30_999);
    assert!(n2.heartbeat(&mut rm, 30_999).kill.is_empty(), "not before the deadline");
    rm.tick(31_000);
    assert_eq!(sorted(n2.heartbeat(&mut rm, 31_000).kill), tasks);
    assert!(n2.heartbeat(&mut rm, 31_100).shutdown);
    assert!(tasks.iter().all(|id| rm.container(*id).exit_reason == Some(ExitReason::KilledByRm)));
}

#[test]
fn decommissioning_an_idle_node_ends_at_once() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 4, 4096, 0);
    rm.decommission("n1:8042", 300, false, 10).unwrap();
    assert_eq!(rm.node("n1:8042").state, NodeState::Decommissioned);
    assert!(n1.heartbeat(&mut rm, 20).shutdown);
    // A decommissioned agent that starts again is welcome back.
    n1.register(&mut rm, 30);
    assert_eq!(rm.node("n1:8042").state, NodeState::Running);
}
