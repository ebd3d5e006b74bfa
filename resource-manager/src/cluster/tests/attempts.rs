//! AM attempts.

use super::*;

#[test]
fn a_failed_am_starts_a_clean_new_attempt() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 8, 8192, 0);
    let (mut am, tasks) = running_job(&mut rm, &mut n1, 3, 0);
    let app_id = am.app_id;
    let first_am = rm.am_container(app_id);

    n1.exit(first_am, 1, 100);
    let reply = n1.heartbeat(&mut rm, 100);
    let app = rm.app(app_id);
    assert_eq!(app.state, AppState::Accepted);
    assert_eq!(app.attempts.len(), 2);
    assert_eq!(app.attempts[0].finished_at_ms, Some(100));
    assert!(
        app.attempts[0].diagnostics.contains("with code 1"),
        "{}",
        app.attempts[0].diagnostics
    );
    assert!(
        app.diagnostics.contains("granted on n1:8042"),
        "the next AM is on its way: {}",
        app.diagnostics
    );
    assert_eq!(sorted(reply.kill.clone()), tasks, "the old attempt's containers go");

    // The next AM is placed at once, with ids and tokens of attempt 2.
    let launches = rm.take_launches();
    assert_eq!(launches.len(), 1);
    let second_am = launches[0].request.token.container_id;
    assert_eq!(second_am.attempt, 2);
    assert!(secret().verify_am_token(app_id, 2, &launches[0].request.launch.env[env::AM_TOKEN]));
    rm.launches = launches;

    // The old AM is told to stop and may not register again.
    assert!(am.collect_news(&mut rm).unwrap().shutdown);
    assert!(matches!(am.register(&mut rm, 150), Err(AppError::Conflict(_))));

    // The old tasks end as the agent kills them; the new attempt does not hear of them.
    n1.heartbeat(&mut rm, 200);
    assert!(tasks.iter().all(|id| rm.container(*id).exit_reason == Some(ExitReason::KilledByRm)));
    assert_eq!(n1.start_am(&mut rm, 300), second_am);
    let mut am2 = Am::of(&rm, app_id);
    assert_eq!(am2.attempt, 2);
    assert_eq!(am2.register(&mut rm, 300).unwrap().live_containers, [second_am]);
    assert_eq!(rm.app(app_id).state, AppState::Running);
    assert!(am2.collect_news(&mut rm).is_none());
}

#[test]
fn the_app_fails_after_max_attempts_failed_attempts() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 4, 4096, 0);
    let app_id = rm.submit(shell_spec(1), 0).unwrap();
    for (attempt, now) in [(1, 100), (2, 200)] {
        let am_container = n1.start_am(&mut rm, now);
        assert_eq!(am_container.attempt, attempt);
        n1.exit(am_container, 1, now + 50);
        n1.heartbeat(&mut rm, now + 50);
    }
    let app = rm.app(app_id);
    assert_eq!((app.state, app.final_status), (AppState::Failed, FinalStatus::Failed));
    assert_eq!(app.attempts.len(), 2);
    assert!(app.diagnostics.contains("max_attempts = 2"), "{}", app.diagnostics);
    assert!(rm.take_launches().is_empty(), "no third attempt");
    assert_eq!(rm.node("n1:8042").used, Resources::ZERO);
}

#[test]
fn an_am_lost_with_its_node_does_not_count_toward_max_attempts() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 4, 4096, 0);
    let mut n2 = register(&mut rm, "n2:8042", 4, 4096, 0);
    let app_id = rm.submit(shell_spec(1), 0).unwrap();
    assert_eq!(rm.app(app_id).attempts[0].node_id, Some(node_id("n1:8042")));
    n1.start_am(&mut rm, 0);

    // n1 goes silent; n2 keeps beating.
    n2.heartbeat(&mut rm, 9_000);
    rm.tick(10_001);
    let app = rm.app(app_id);
    assert!(app.attempts[0].diagnostics.contains("NodeLost"), "{}", app.attempts[0].diagnostics);
    assert_eq!((app.state, app.attempts.len()), (AppState::Accepted, 2));

    // Two failures that count, on n2: attempt 3 is allowed, then the app fails.
    for now in [11_000, 12_000] {
        let am_container = n2.start_am(&mut rm, now);
        n2.exit(am_container, 1, now + 10);
        n2.heartbeat(&mut rm, now + 10);
    }
    let app = rm.app(app_id);
    assert_eq!((app.state, app.attempts.len()), (AppState::Failed, 3));
    assert!(app.diagnostics.contains("3 time(s) (max_attempts = 2)"), "{}", app.diagnostics);
}
