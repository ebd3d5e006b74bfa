//! Submitting.

use super::*;

#[test]
fn submit_accepts_the_app_and_launches_its_am_with_a_signed_token() {
    let mut rm = cluster();
    register(&mut rm, "n1:8042", 4, 4096, 0);
    let spec = shell_spec(3);
    let app_id = rm.submit(spec.clone(), 100).unwrap();

    let app = rm.app(app_id);
    assert_eq!((app.state, app.final_status), (AppState::Accepted, FinalStatus::Undefined));
    assert_eq!(app.user, "alice");
    assert_eq!(app.attempts.len(), 1);
    assert_eq!(app.attempts[0].attempt, 1);
    assert_eq!(app.attempts[0].node_id, Some(node_id("n1:8042")));
    let am_container = app.attempts[0].am_container.expect("the AM container is granted at once");
    assert_eq!((am_container.app, am_container.attempt, am_container.epoch), (app_id, 1, 1));
    let container = rm.container(am_container);
    assert_eq!(
        (container.state, container.is_am, container.resources),
        (ContainerState::Allocated, true, AM)
    );

    // The app and its AM container are in the change's batch, so they are durable before the launch.
    let written_apps: Vec<AppId> = rm.last_writes.apps.iter().map(|app| app.app_id).collect();
    let written_containers: Vec<ContainerId> = rm.last_writes.containers.iter().map(|c| c.container_id).collect();
    assert_eq!((written_apps, written_containers), (vec![app_id], vec![am_container]));
    assert_eq!(rm.last_writes.apps[0].state, AppState::Accepted);

    let launches = rm.take_launches();
    assert_eq!(launches.len(), 1);
    let launch = &launches[0];
    assert_eq!(launch.node_address, "n1:8042");
    let token = &launch.request.token;
    assert_eq!(
        (token.container_id, token.resources, token.expires_at_ms),
        (am_container, AM, 100 + LAUNCH_EXPIRY_MS)
    );
    super::verify_container(token, &node_id("n1:8042"), 100).expect("signed for n1");
    assert!(super::verify_container(token, &node_id("n2:8042"), 100).is_err(), "only for n1");
    let other_cluster = spindle_protocol::NodeAuthority::new(
        ClusterSecret::new("another-secret"),
        std::time::Duration::from_secs(3600),
        std::time::Duration::from_secs(3600),
    );
    let other_keys = spindle_protocol::NodeKeyring::new(&other_cluster.credential(&node_id("n1:8042"), 100)).unwrap();
    assert!(other_keys.verify_container(token, 100).is_err());
    let launch_env = &launch.request.launch.env;
    assert!(secret().verify_am_token(app_id, 1, &launch_env[env::AM_TOKEN]));
    assert!(
        !secret().verify_am_token(app_id, 2, &launch_env[env::AM_TOKEN]),
        "the AM token is for attempt 1 only"
    );
    // The spec travels as a file of the AM's working dir, named in its environment.
    let spec_file = &launch_env[env::JOB_SPEC_FILE];
    let job: JobSpec = serde_json::from_str(&launch.request.launch.files[spec_file]).unwrap();
    assert_eq!(job, spec);
    assert!(!launch_env.contains_key(env::JOB_SPEC));
    assert_eq!(token.user, "nobody", "the caller's account, signed");
    assert_eq!(launch.request.launch.command, ["spindle", "app-master"]);
}

#[test]
fn a_custom_job_launches_the_users_own_am_command() {
    let mut rm = cluster();
    register(&mut rm, "n1:8042", 4, 4096, 0);
    rm.submit(custom_spec(AM), 0).unwrap();
    let launch = &rm.take_launches()[0];
    assert_eq!(launch.request.launch.command, ["./my-am"]);
    assert!(launch.request.launch.env.contains_key(env::AM_TOKEN));
}

#[test]
fn a_job_submitted_before_any_node_waits_for_one() {
    let mut rm = cluster();
    let app_id = rm.submit(shell_spec(1), 0).unwrap();
    let app = rm.app(app_id);
    assert_eq!(app.state, AppState::Accepted);
    assert_eq!(app.attempts[0].am_container, None);
    assert!(app.diagnostics.contains("waiting"), "{}", app.diagnostics);
    rm.tick(1_000);
    assert!(rm.take_launches().is_empty());

    register(&mut rm, "n1:8042", 4, 4096, 2_000);
    let launches = rm.take_launches();
    assert_eq!(launches.len(), 1);
    assert_eq!(launches[0].node_address, "n1:8042");
    assert_eq!(
        rm.app(app_id).attempts[0].am_container,
        Some(launches[0].request.token.container_id)
    );
}

#[test]
fn a_container_bigger_than_every_node_is_refused_naming_the_field() {
    let mut rm = cluster();
    register(&mut rm, "n1:8042", 4, 4096, 0);
    register(&mut rm, "n2:8042", 2, 8192, 0);
    let refused_field = |rm: &mut Rm, spec: JobSpec| match rm.submit(spec, 10) {
        Err(AppError::InvalidSpec(error)) => {
            assert!(rm.last_writes.is_empty(), "a refused job writes nothing");
            assert!(rm.launches.is_empty() && rm.woken.is_empty(), "a refused job has no side effects");
            error.field
        }
        other => panic!("expected InvalidSpec, got {other:?}"),
    };

    let mut big_tasks = shell_spec(1);
    big_tasks.shell.as_mut().unwrap().memory_mb = 16_384;
    assert_eq!(refused_field(&mut rm, big_tasks), "shell.memory_mb");
    let mut big_am = shell_spec(1);
    big_am.am = Resources::new(8, 256);
    assert_eq!(refused_field(&mut rm, big_am), "am.vcores");
    assert_eq!(refused_field(&mut rm, custom_spec(Resources::new(1, 10_000))), "am.memory_mb");

    // Nothing was used up by the refusals: the first job accepted is the first app.
    assert_eq!(rm.submit(shell_spec(1), 20).unwrap().seq, 1);
}

#[test]
fn a_container_that_fits_no_single_node_is_refused() {
    let mut rm = cluster();
    register(&mut rm, "cpu:8042", 8, 1024, 0);
    register(&mut rm, "mem:8042", 1, 8192, 0);
    // Each resource alone fits some node, but no node has both: the job could never run.
    let mut spec = shell_spec(1);
    let shell = spec.shell.as_mut().unwrap();
    (shell.vcores, shell.memory_mb) = (4, 4096);
    match rm.submit(spec, 10) {
        Err(AppError::InvalidSpec(error)) => assert!(error.field.starts_with("shell"), "{error}"),
        other => panic!("expected InvalidSpec, got {other:?}"),
    }
    assert!(rm.last_writes.is_empty());
}

#[test]
fn invalid_specs_are_refused_and_nothing_is_written() {
    let mut rm = cluster();
    register(&mut rm, "n1:8042", 4, 4096, 0);
    let mut no_vcores = shell_spec(1);
    no_vcores.shell.as_mut().unwrap().vcores = 0;
    let mut no_am_vcores = shell_spec(1);
    no_am_vcores.am.vcores = 0;
    let mut no_attempts = shell_spec(1);
    no_attempts.max_attempts = 0;
    for (spec, field) in [
        (no_vcores, "shell.vcores"),
        (no_am_vcores, "am.vcores"),
        (no_attempts, "max_attempts"),
        (shell_spec(0), "shell.containers"),
    ] {
        match rm.submit(spec, 10) {
            Err(AppError::InvalidSpec(error)) => assert_eq!(error.field, field),
            other => panic!("expected InvalidSpec for {field}, got {other:?}"),
        }
        assert!(rm.last_writes.is_empty(), "a refused job writes nothing");
    }
    assert!(
        rm.cluster
            .app_reports(&AppQuery {
                limit: usize::MAX,
                ..AppQuery::default()
            })
            .is_empty()
    );
    assert!(rm.take_launches().is_empty());
}

/// A submission sent again with its idempotency key (its answer was lost in a crash or a
/// failover) names the app the first one made, also after a restart; the same key from another
/// user is another submission.
#[test]
fn a_submission_repeated_with_its_key_makes_one_app_also_across_a_restart() {
    let mut rm = cluster();
    register(&mut rm, "n1:8042", 4, 4096, 0);
    let key = Some("3f2a9c".to_owned());
    let first = rm
        .mutate(|cluster| cluster.submit_once(&caller(), shell_spec(1), key.clone(), 100))
        .unwrap();
    let again = rm
        .mutate(|cluster| cluster.submit_once(&caller(), shell_spec(1), key.clone(), 110))
        .unwrap();
    assert_eq!(first, again);
    assert!(rm.last_writes.apps.is_empty(), "the repeat wrote nothing");

    rm.restart(200);
    let after_restart = rm
        .mutate(|cluster| cluster.submit_once(&caller(), shell_spec(1), key.clone(), 210))
        .unwrap();
    assert_eq!(after_restart, first, "the key is durable with the app");

    let bob = Caller {
        user: "bob".to_owned(),
        ..caller()
    };
    let bobs = rm
        .mutate(|cluster| cluster.submit_once(&bob, shell_spec(1), key.clone(), 220))
        .unwrap();
    assert_ne!(bobs, first, "keys are per user");
    let unkeyed = rm.submit(shell_spec(1), 230).unwrap();
    assert_ne!(unkeyed, first);
}

#[test]
fn a_reserved_app_id_is_used_once_and_only_by_the_user_it_was_reserved_for() {
    let mut rm = cluster();
    register(&mut rm, "n1:8042", 4, 4096, 0);
    let reserved = rm.mutate(|cluster| Ok::<_, AppError>(cluster.reserve_app_id(&caller()))).unwrap();
    let mallory = Caller {
        user: "mallory".to_owned(),
        admin: false,
        unix_user: Some("nobody".to_owned()),
    };
    let refused =
        |result: Result<AppId, AppError>| matches!(result, Err(AppError::InvalidRequest(error)) if error.field == "application-id");
    // Another user cannot take it, nor may anyone submit under an id never handed out.
    assert!(refused(rm.mutate(|cluster| cluster.submit_reserved(
        &mallory,
        shell_spec(1),
        reserved,
        0
    ))));
    let unknown = AppId {
        seq: reserved.seq + 100,
        ..reserved
    };
    assert!(refused(rm.mutate(|cluster| cluster.submit_reserved(
        &caller(),
        shell_spec(1),
        unknown,
        0
    ))));
    assert!(rm.last_writes.apps.is_empty(), "a refused submission writes nothing");

    let app_id = rm
        .mutate(|cluster| cluster.submit_reserved(&caller(), shell_spec(1), reserved, 0))
        .unwrap();
    assert_eq!(app_id, reserved);
    assert!(
        refused(rm.mutate(|cluster| cluster.submit_reserved(&caller(), shell_spec(1), reserved, 0))),
        "used once"
    );
    // Ids of ordinary submissions never collide with a reserved one.
    let next = rm.submit(shell_spec(1), 0).unwrap();
    assert!(next.seq > reserved.seq);
}
