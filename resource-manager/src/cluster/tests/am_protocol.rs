//! The AM protocol.

use super::*;

#[test]
fn a_registered_am_gets_exactly_what_it_asks_for() {
    let mut rm = cluster();
    // Room for many more than three tasks, so an over-grant would show.
    let mut n1 = register(&mut rm, "n1:8042", 16, 16_384, 0);
    let app_id = rm.submit(shell_spec(3), 0).unwrap();
    let am_container = n1.start_am(&mut rm, 10);
    let mut am = Am::of(&rm, app_id);

    let registered = am.register(&mut rm, 20).unwrap();
    assert_eq!(rm.app(app_id).state, AppState::Running);
    assert_eq!(rm.app(app_id).started_at_ms, Some(20));
    assert_eq!(registered.queue, "default");
    assert_eq!(registered.max_container, Resources::new(16, 16_384));
    assert_eq!(registered.live_containers, [am_container]);

    am.ask(&mut rm, 3, 30);
    assert!(rm.woken.contains(&app_id), "a long-polling AM is woken by its grants");
    // The AM has not heard of the grants yet and sends the same absolute ask again.
    am.ask(&mut rm, 3, 40);
    let news = am.collect_news(&mut rm).expect("grants are news");
    assert_eq!(news.allocated.len(), 3);
    assert!(!news.shutdown);
    for allocation in &news.allocated {
        assert_eq!(
            (allocation.node_id.as_str(), allocation.node_address.as_str()),
            ("n1:8042", "n1:8042")
        );
        assert_eq!(allocation.resources, TASK);
        assert_eq!((allocation.container_id.attempt, allocation.container_id.epoch), (1, 1));
        super::verify_container(&allocation.token, &n1.node_id, 40).expect("a token n1 accepts");
        assert_eq!(rm.container(allocation.container_id).state, ContainerState::Acquired);
    }
    assert_eq!(news.headroom, Resources::new(16 - 4, 16_384 - 256 - 3 * 128));
    assert_eq!(rm.containers(app_id).len(), 4, "the AM container and three tasks, no more");

    // Told of its grants, the AM now wants none beyond them; nothing new happens.
    am.ask(&mut rm, 0, 50);
    assert!(am.collect_news(&mut rm).is_none());
    assert_eq!(rm.containers(app_id).len(), 4);
}

#[test]
fn an_ams_asks_wait_until_it_registers() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 4, 4096, 0);
    let app_id = rm.submit(shell_spec(1), 0).unwrap();
    n1.start_am(&mut rm, 0);
    let mut am = Am::of(&rm, app_id);
    am.ask(&mut rm, 1, 10);
    assert!(am.collect_news(&mut rm).is_none());
    am.register(&mut rm, 20).unwrap();
    am.ask(&mut rm, 1, 30);
    assert_eq!(am.collect_news(&mut rm).unwrap().allocated.len(), 1);
}

#[test]
fn an_ams_asks_are_served_lower_priority_number_first() {
    let mut rm = cluster();
    // After the AM, room for one more container.
    let mut n1 = register(&mut rm, "n1:8042", 2, 2048, 0);
    let mut am = start_job(&mut rm, &mut n1, shell_spec(1), 0);
    let urgent = ResourceAsk {
        priority: 1,
        resources: Resources::new(1, 512),
        ..task_ask(1)
    };
    let later = ResourceAsk {
        priority: 5,
        ..task_ask(1)
    };
    am.update_asks(&mut rm, &am.request(vec![later, urgent], Vec::new()), 10).unwrap();
    let news = am.collect_news(&mut rm).unwrap();
    let sizes: Vec<Resources> = news.allocated.iter().map(|allocation| allocation.resources).collect();
    assert_eq!(sizes, [Resources::new(1, 512)], "the priority-1 ask is served first");
}

#[test]
fn completions_reach_the_am_and_free_the_node() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 4, 4096, 0);
    let (mut am, tasks) = running_job(&mut rm, &mut n1, 3, 100);
    assert_eq!(rm.node("n1:8042").used, Resources::new(4, 256 + 3 * 128));
    for id in &tasks {
        let task = rm.container(*id);
        assert_eq!((task.state, task.started_at_ms), (ContainerState::Running, Some(100)));
    }

    n1.exit(tasks[0], 0, 200);
    let reply = n1.heartbeat(&mut rm, 200);
    assert_eq!(reply.acked, [tasks[0]]);
    assert!(reply.kill.is_empty() && !reply.drain && !reply.shutdown && !reply.resync);
    assert!(rm.woken.contains(&am.app_id));
    let news = am.collect_news(&mut rm).expect("a completion is news");
    assert_eq!(reasons(&news.completed), [(tasks[0], ExitReason::Success)]);
    assert_eq!(news.completed[0].exit_code, Some(0));

    n1.exit(tasks[1], 0, 300);
    n1.exit(tasks[2], 2, 300);
    assert_eq!(sorted(n1.heartbeat(&mut rm, 300).acked), tasks[1..]);
    let news = am.collect_news(&mut rm).unwrap();
    assert_eq!(
        reasons(&news.completed),
        [(tasks[1], ExitReason::Success), (tasks[2], ExitReason::Failed)]
    );
    let failed = rm.container(tasks[2]);
    assert_eq!(
        (failed.state, failed.exit_code, failed.finished_at_ms),
        (ContainerState::Complete, Some(2), Some(300))
    );

    assert_eq!(rm.node("n1:8042").used, AM, "only the AM is left");
    assert_eq!(rm.app(am.app_id).allocated, AM);
    assert_eq!(n1.running(), [rm.am_container(am.app_id)], "the agent forgot what the RM acked");
    assert!(am.collect_news(&mut rm).is_none(), "every completion is told once");
}

#[test]
fn finishing_the_app_kills_its_other_containers_but_not_the_am() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 4, 4096, 0);
    let (mut am, tasks) = running_job(&mut rm, &mut n1, 3, 0);
    let am_container = rm.am_container(am.app_id);
    n1.exit(tasks[0], 0, 100);
    n1.heartbeat(&mut rm, 100);

    am.finish(&mut rm, FinalStatus::Succeeded, 200).unwrap();
    let app = rm.app(am.app_id);
    assert_eq!((app.state, app.final_status), (AppState::Finished, FinalStatus::Succeeded));
    assert_eq!((app.progress, app.finished_at_ms), (1.0, Some(200)));

    let reply = n1.heartbeat(&mut rm, 300);
    assert_eq!(sorted(reply.kill.clone()), tasks[1..]);
    assert!(!reply.kill.contains(&am_container), "an AM that finished its app exits by itself");
    n1.heartbeat(&mut rm, 400);
    for id in &tasks[1..] {
        let task = rm.container(*id);
        assert_eq!(
            (task.state, task.exit_reason),
            (ContainerState::Complete, Some(ExitReason::KilledByRm))
        );
    }
    assert_eq!(rm.container(am_container).state, ContainerState::Running);
    assert!(am.collect_news(&mut rm).unwrap().shutdown, "the ended app's AM is told to stop");
    assert!(am.finish(&mut rm, FinalStatus::Succeeded, 450).is_err(), "it finishes once");

    n1.exit(am_container, 0, 500);
    n1.heartbeat(&mut rm, 500);
    assert_eq!(rm.container(am_container).exit_reason, Some(ExitReason::Success));
    assert_eq!(rm.node("n1:8042").used, Resources::ZERO);
    assert_eq!(rm.app(am.app_id).state, AppState::Finished);
}

#[test]
fn an_am_may_finish_without_registering() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 4, 4096, 0);
    let app_id = rm.submit(shell_spec(1), 0).unwrap();
    n1.start_am(&mut rm, 0);
    Am::of(&rm, app_id).finish(&mut rm, FinalStatus::Succeeded, 10).unwrap();
    assert_eq!(rm.app(app_id).state, AppState::Finished);
}

#[test]
fn an_ask_for_containers_of_no_size_is_refused() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 4, 4096, 0);
    let am = start_job(&mut rm, &mut n1, shell_spec(1), 0);
    // A zero-sized container fits anywhere, any number of times: without a check every
    // scheduling round would grant all of `count` (up to u32::MAX) containers.
    for resources in [Resources::new(0, 0), Resources::new(0, 128), Resources::new(1, 0)] {
        let ask = ResourceAsk {
            resources,
            count: 1_000,
            ..task_ask(0)
        };
        let err = am.update_asks(&mut rm, &am.request(vec![ask], Vec::new()), 10).unwrap_err();
        assert!(matches!(err, AppError::InvalidSpec(_)), "{err:?}");
    }
    assert_eq!(rm.containers(am.app_id).len(), 1, "only the AM container");
}

#[test]
fn a_lost_allocate_reply_is_sent_again_and_nothing_is_lost_or_granted_twice() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 16, 16_384, 0);
    let app_id = rm.submit(shell_spec(3), 0).unwrap();
    n1.start_am(&mut rm, 10);
    let am = Am::of(&rm, app_id);
    am.register(&mut rm, 20).unwrap();
    let allocate = |rm: &mut Rm, response_id: Option<u64>, count: u32, now: u64| {
        let mut request = am.request(vec![task_ask(count)], vec![]);
        request.response_id = response_id;
        rm.mutate(|cluster| cluster.allocate(&request, now)).unwrap()
    };

    let first = allocate(&mut rm, Some(0), 3, 30).expect("three grants");
    assert_eq!((first.response_id, first.allocated.len()), (1, 3));
    // That reply never arrived: the AM asks again, still for 3, saying it last got reply 0.
    let again = allocate(&mut rm, Some(0), 3, 40).expect("the lost reply, again");
    assert_eq!(again, first);
    assert_eq!(rm.containers(app_id).len(), 4, "the AM and three tasks: nothing granted twice");

    // Having got reply 1, the AM wants nothing more: no news, no replay.
    assert!(allocate(&mut rm, Some(1), 0, 50).is_none());
    assert_eq!(rm.containers(app_id).len(), 4);
    // An AM that does not number its requests never gets replays.
    assert!(allocate(&mut rm, None, 0, 60).is_none());
}

#[test]
fn the_ams_job_detail_shows_in_the_app_report_and_oversized_ones_are_refused() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 8, 8192, 0);
    let (am, _) = running_job(&mut rm, &mut n1, 1, 0);
    let detail = spindle_protocol::JobDetail {
        stages: vec![spindle_protocol::StageStatus {
            name: "map".into(),
            total: 10,
            running: 2,
            succeeded: 3,
        }],
        counters: BTreeMap::from([("map_input_records".to_owned(), 42)]),
        ..spindle_protocol::JobDetail::default()
    };
    let mut request = am.request(Vec::new(), Vec::new());
    request.detail = Some(detail.clone());
    am.update_asks(&mut rm, &request, 1).unwrap();
    assert_eq!(rm.app(am.app_id).detail, Some(detail.clone()));

    // A request without one keeps the last; an oversized one is refused naming the field.
    am.update_asks(&mut rm, &am.request(Vec::new(), Vec::new()), 2).unwrap();
    assert_eq!(rm.app(am.app_id).detail, Some(detail));
    let mut oversized = am.request(Vec::new(), Vec::new());
    oversized.detail = Some(spindle_protocol::JobDetail {
        stages: Vec::new(),
        counters: (0..100).map(|index| (format!("c{index}"), 1)).collect(),
        ..spindle_protocol::JobDetail::default()
    });
    let AppError::InvalidSpec(error) = am.update_asks(&mut rm, &oversized, 3).unwrap_err() else {
        panic!("an oversized detail is invalid");
    };
    assert_eq!(error.field, "detail.counters");
}
