//! Queues as the RM applies them: submit ACLs, who may kill, wait reasons in diagnostics,
//! reloads that would orphan apps, the queue report, and preemption's notice → grace → kill.

use super::*;
use crate::scheduler::preemption::STARVATION_PATIENCE_MS;

/// `streaming` (60%, alice only, AMs may hold all of it) and `batch` (40%, anyone; carol
/// administers it); both may borrow the whole cluster.
fn two_team_queues() -> QueueTree {
    let config: QueueConfig = toml::from_str(
        r#"
        name = "root"
        [[children]]
        name = "streaming"
        guaranteed_percent = 60
        am_share_percent = 100
        submit_users = ["alice"]
        [[children]]
        name = "batch"
        guaranteed_percent = 40
        am_share_percent = 100
        admin_users = ["carol"]
        "#,
    )
    .expect("queue config parses");
    QueueTree::from_config(&config).expect("queue config is valid")
}

fn cluster_with(queues: QueueTree) -> Rm {
    Rm::new(Cluster::new(ClusterSettings { queues, ..settings() }, 1, 0))
}

fn user(name: &str) -> Caller {
    Caller {
        user: name.to_owned(),
        admin: false,
        unix_user: Some("nobody".to_owned()),
    }
}

fn in_queue(queue: &str, tasks: u32) -> JobSpec {
    JobSpec {
        queue: queue.to_owned(),
        ..shell_spec(tasks)
    }
}

fn submit_as(rm: &mut Rm, who: &str, spec: JobSpec, now: u64) -> Result<AppId, AppError> {
    rm.mutate(|cluster| cluster.submit(&user(who), spec, now))
}

#[test]
fn a_user_outside_a_queue_acl_may_not_submit_to_it() {
    let mut rm = cluster_with(two_team_queues());
    register(&mut rm, "n1:8042", 8, 8192, 0);
    let refused = submit_as(&mut rm, "bob", in_queue("streaming", 1), 0).unwrap_err();
    let AppError::Forbidden(message) = refused else {
        panic!("expected Forbidden (403), got {refused:?}");
    };
    assert!(message.contains("bob may not submit to queue `streaming`"), "{message}");
    submit_as(&mut rm, "alice", in_queue("streaming", 1), 0).expect("alice is in the ACL");
    submit_as(&mut rm, "bob", in_queue("batch", 1), 0).expect("batch lets everyone submit");
    let admin = Caller {
        user: "root".to_owned(),
        admin: true,
        unix_user: Some("nobody".to_owned()),
    };
    rm.mutate(|cluster| cluster.submit(&admin, in_queue("streaming", 1), 0))
        .expect("cluster admins may submit anywhere");
}

#[test]
fn an_unknown_or_parent_queue_is_refused_with_the_leaf_names() {
    let mut rm = cluster_with(two_team_queues());
    for queue in ["nightly", "root"] {
        let refused = submit_as(&mut rm, "alice", in_queue(queue, 1), 0).unwrap_err();
        let AppError::InvalidSpec(error) = refused else {
            panic!("expected InvalidSpec, got {refused:?}");
        };
        assert_eq!(error.field, "queue");
        assert!(error.reason.contains("leaf queues: batch, streaming"), "{}", error.reason);
    }
}

#[test]
fn the_owner_a_queue_admin_or_a_cluster_admin_may_kill_an_app() {
    let mut rm = cluster_with(two_team_queues());
    register(&mut rm, "n1:8042", 8, 8192, 0);
    let first = submit_as(&mut rm, "bob", in_queue("batch", 1), 0).unwrap();
    let second = submit_as(&mut rm, "bob", in_queue("batch", 1), 0).unwrap();
    let AppError::Forbidden(message) = rm.kill(&user("dave"), first, 1).unwrap_err() else {
        panic!("dave is neither owner nor admin");
    };
    assert!(message.contains("an admin of queue `batch`"), "{message}");
    rm.kill(&user("carol"), first, 1).expect("carol administers batch");
    rm.kill(&user("bob"), second, 1).expect("bob owns it");
}

#[test]
fn an_app_blocked_by_the_am_share_limit_says_so_in_its_diagnostics() {
    // The default tree: AMs may hold 10% of the queue, 819 MB of this node; each AM has 256 MB.
    let mut rm = cluster_with(QueueTree::from_config(&QueueConfig::default()).unwrap());
    let mut n1 = register(&mut rm, "n1:8042", 64, 8192, 0);
    let mut admitted = Vec::new();
    for _ in 0..4 {
        admitted.push(rm.submit(shell_spec(1), 0).unwrap());
        n1.start_ams(&mut rm, 0);
    }
    let states: Vec<AppState> = admitted.iter().map(|&app| rm.app(app).state).collect();
    assert_eq!(
        states,
        [AppState::Accepted; 4],
        "an AM launched is not registered yet, but it holds its container"
    );
    let waiting = admitted[3];
    assert!(rm.app(waiting).attempts[0].am_container.is_none(), "the fourth AM was not granted");
    let diagnostics = rm.app(waiting).diagnostics;
    assert!(
        diagnostics.contains("AM share limit of queue `root.default`") && diagnostics.contains("memory:768 MB"),
        "{diagnostics}"
    );
    assert!(rm.app(admitted[0]).attempts[0].am_container.is_some());
}

#[test]
fn a_job_larger_than_the_free_space_says_the_cluster_is_full() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 2, 2048, 0);
    let (_am, _tasks) = running_job(&mut rm, &mut n1, 1, 0);
    let waiting = rm.submit(shell_spec(1), 1).unwrap();
    let diagnostics = rm.app(waiting).diagnostics;
    assert!(diagnostics.contains("the cluster is full"), "{diagnostics}");
}

#[test]
fn a_reload_that_would_orphan_live_apps_is_refused_and_changes_nothing() {
    let mut rm = cluster_with(two_team_queues());
    register(&mut rm, "n1:8042", 8, 8192, 0);
    let app = submit_as(&mut rm, "bob", in_queue("batch", 1), 0).unwrap();
    let without_batch: QueueConfig =
        toml::from_str("name = \"root\"\n[[children]]\nname = \"streaming\"\nguaranteed_percent = 100\nsubmit_users = [\"alice\"]\n")
            .unwrap();
    let tree = QueueTree::from_config(&without_batch).unwrap();
    let refused = rm.mutate(|cluster| cluster.replace_queues(tree.clone())).unwrap_err();
    assert_eq!(refused.orphans, [("batch".to_owned(), vec![app.to_string()])]);
    assert!(refused.to_string().contains(&format!("queue `batch` holds {app}")), "{refused}");
    assert!(
        rm.mutate(|cluster| cluster.queue_report())
            .children
            .iter()
            .any(|queue| queue.name == "root.batch"),
        "the old tree stays"
    );

    rm.kill(&user("bob"), app, 1).unwrap();
    rm.mutate(|cluster| cluster.replace_queues(tree))
        .expect("no live app is left in batch");
    let report = rm.mutate(|cluster| cluster.queue_report());
    assert_eq!(report.children.len(), 1);
}

#[test]
fn the_queue_report_shows_guarantees_use_pending_and_users() {
    let mut rm = cluster_with(two_team_queues());
    let mut n1 = register(&mut rm, "n1:8042", 10, 10_240, 0);
    let am = start_job(&mut rm, &mut n1, in_queue_as_alice("streaming"), 0);
    am.ask(&mut rm, 20, 0);
    let report = rm.mutate(|cluster| cluster.queue_report());
    let streaming = &report.children[0];
    assert_eq!(streaming.name, "root.streaming");
    assert_eq!(streaming.guaranteed, Resources::new(6, 6144));
    assert_eq!(streaming.maximum, Resources::new(10, 10_240));
    // The AM and 9 tasks fill the node; 11 tasks wait.
    assert_eq!(streaming.used, AM + TASK.times(9));
    assert_eq!(streaming.pending, TASK.times(11));
    assert_eq!(streaming.users.len(), 1);
    assert_eq!(streaming.users[0].user, "alice");
    assert_eq!(report.used, streaming.used, "the root sums its children");
    assert_eq!(report.children[1].users, []);
}

fn in_queue_as_alice(queue: &str) -> JobSpec {
    // `Rm::submit` submits as alice, who may use every queue of `two_team_queues`.
    in_queue(queue, 1)
}

/// Queue `a` (50%) fills the node while `b` (50%) is idle; then `b` submits one job.
#[test]
fn preemption_gives_a_starved_queue_its_guarantee_back_after_the_grace_period() {
    let config: QueueConfig = toml::from_str(
        "name = \"root\"\n\
         [[children]]\nname = \"a\"\nguaranteed_percent = 50\nam_share_percent = 100\n\
         [[children]]\nname = \"b\"\nguaranteed_percent = 50\nam_share_percent = 100\n",
    )
    .unwrap();
    let mut rm = cluster_with(QueueTree::from_config(&config).unwrap());
    let mut n1 = register(&mut rm, "n1:8042", 8, 8192, 0);
    let mut greedy = start_job(&mut rm, &mut n1, in_queue("a", 7), 0);
    let tasks = grant_and_launch(&mut rm, &mut greedy, &mut n1, 7, 0);
    assert_eq!(rm.node("n1:8042").used.vcores, 8, "queue a borrowed the whole node");

    let starved = rm.submit(in_queue("b", 3), 1_000).unwrap();
    rm.tick(1_000);
    assert!(greedy.collect_news(&mut rm).is_none(), "a moment of starvation gives no notice yet");
    let noticed_at = 1_000 + STARVATION_PATIENCE_MS;
    rm.tick(noticed_at);
    let notice = greedy.collect_news(&mut rm).expect("a preemption notice is news");
    assert!(!notice.preempt.is_empty(), "queue a gets a notice");
    assert!(
        notice.preempt.iter().all(|victim| tasks.contains(victim)),
        "tasks go first, not the AM"
    );
    // Only what b asks for is taken back: room for its AM (its tasks are not asked for yet).
    assert_eq!(notice.preempt.len(), 1, "{:?}", notice.preempt);
    let youngest = *tasks.iter().max().expect("a has tasks");
    assert_eq!(notice.preempt, [youngest]);

    // Inside the grace period nothing is killed (the node heartbeats, or it would be LOST).
    for now in (noticed_at..noticed_at + PREEMPTION_GRACE_MS).step_by(5_000) {
        rm.tick(now);
        assert!(n1.heartbeat(&mut rm, now).kill.is_empty());
    }
    rm.tick(noticed_at + PREEMPTION_GRACE_MS - 1);
    assert!(n1.heartbeat(&mut rm, noticed_at + PREEMPTION_GRACE_MS - 1).kill.is_empty());
    rm.tick(noticed_at + PREEMPTION_GRACE_MS);
    let reply = n1.heartbeat(&mut rm, noticed_at + PREEMPTION_GRACE_MS);
    assert_eq!(sorted(reply.kill.clone()), sorted(notice.preempt.clone()));
    n1.heartbeat(&mut rm, noticed_at + PREEMPTION_GRACE_MS + 1);
    greedy.collect_news(&mut rm);
    let preempted: Vec<ExitReason> = greedy.completed.iter().filter_map(|status| status.exit_reason).collect();
    assert_eq!(preempted, [ExitReason::Preempted]);

    rm.tick(noticed_at + PREEMPTION_GRACE_MS + 2);
    assert!(
        rm.app(starved).attempts[0].am_container.is_some(),
        "queue b's AM got the freed room: {}",
        rm.app(starved).diagnostics
    );
}

#[test]
fn allocate_headroom_is_capped_by_the_queue_maximum() {
    let config: QueueConfig = toml::from_str(
        "name = \"root\"\n\
         [[children]]\nname = \"small\"\nguaranteed_percent = 25\nmaximum_percent = 50\nam_share_percent = 100\n\
         [[children]]\nname = \"big\"\nguaranteed_percent = 75\n",
    )
    .unwrap();
    let mut rm = cluster_with(QueueTree::from_config(&config).unwrap());
    let mut n1 = register(&mut rm, "n1:8042", 8, 8192, 0);
    let mut am = start_job(&mut rm, &mut n1, in_queue("small", 1), 0);
    grant_and_launch(&mut rm, &mut am, &mut n1, 1, 0);
    // The queue may hold 4 vcores and 4096 MB; its AM and task hold 2 vcores and 384 MB.
    let reply = rm.mutate(|cluster| cluster.idle_reply(am.app_id, am.attempt));
    assert_eq!(reply.headroom, Resources::new(2, 4096 - 384));
}

/// `gpu` nodes: only queues allowed the label use them, and only asks that require it wait for them.
#[test]
fn labelled_nodes_serve_only_queues_allowed_their_label() {
    let config: QueueConfig = toml::from_str(
        "name = \"root\"\n\
         [[children]]\nname = \"ml\"\nguaranteed_percent = 50\nam_share_percent = 100\naccessible_labels = [\"gpu\"]\n\
         [[children]]\nname = \"web\"\nguaranteed_percent = 50\nam_share_percent = 100\n",
    )
    .unwrap();
    let mut rm = cluster_with(QueueTree::from_config(&config).unwrap());
    let mut plain = register(&mut rm, "cpu1:8042", 4, 4096, 0);
    let mut gpu = register_labelled(&mut rm, "gpu1:8042", 4, 4096, &["gpu"], 0);

    // web's AM must not land on the gpu node, whatever the ring's cursor says.
    for _ in 0..3 {
        rm.submit(in_queue("web", 1), 0).unwrap();
    }
    assert_eq!(gpu.start_ams(&mut rm, 0), [], "web may not use gpu nodes");
    assert_eq!(plain.start_ams(&mut rm, 0).len(), 3);

    // A web job that requires gpu waits, saying why; an ml one runs there.
    let mut web = start_job(&mut rm, &mut plain, in_queue("web", 1), 0);
    let gpu_ask = ResourceAsk {
        label: Some("gpu".to_owned()),
        ..task_ask(1)
    };
    web.update_asks(&mut rm, &web.request(vec![gpu_ask.clone()], Vec::new()), 1)
        .unwrap();
    assert!(web.collect_news(&mut rm).is_none());
    let diagnostics = rm.app(web.app_id).diagnostics;
    assert!(diagnostics.contains("may not use node label `gpu`"), "{diagnostics}");

    let ml_app = rm.submit(in_queue("ml", 1), 2).unwrap();
    let am = gpu.start_ams(&mut rm, 2);
    assert_eq!(am.len(), 1, "ml's AM may use the gpu node, the only one with room");
    let mut ml = Am::of(&rm, ml_app);
    ml.register(&mut rm, 2).unwrap();
    ml.update_asks(&mut rm, &ml.request(vec![gpu_ask], Vec::new()), 2).unwrap();
    let grants = ml.collect_news(&mut rm).expect("ml gets its gpu container").allocated;
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].node_id, gpu.node_id);
}
