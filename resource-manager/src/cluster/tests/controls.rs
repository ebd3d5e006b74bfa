//! App controls and AM details at the RM, with a stream job (the kind that has controls):
//! submitting it, scaling its operators through the generic control, what its AM reports.

use spindle_protocol::{AllocateReply, JobDetail, MetricFamily, MetricSample, STREAM_SECTION, StreamDetail};

use super::*;

/// The example pipeline (examples/stream-window-count.toml): generator (2) → key_by → window
/// `count` (parallelism 2) → discard sink.
fn stream_spec() -> JobSpec {
    toml::from_str(include_str!("../../../../examples/stream-window-count.toml")).expect("the example parses")
}

fn parallelism_of(record: &AppRecord, operator: &str) -> u32 {
    record
        .spec
        .stream
        .as_ref()
        .and_then(|stream| stream.operator(operator))
        .expect("the operator exists")
        .parallelism
}

/// `PUT …/operators/{name}` as the API runs it: the generic control `operators/{name}`; the
/// parallelism it had.
fn scale(rm: &mut Rm, by: &Caller, app_id: AppId, operator: &str, parallelism: u32) -> Result<u32, AppError> {
    let value = serde_json::json!({ "parallelism": parallelism });
    let key = spindle_protocol::operator_control_key(operator);
    let change = rm.mutate(|cluster| cluster.control_app(by, app_id, &key, &value))?;
    Ok(change.previous["parallelism"].as_u64().expect("a parallelism") as u32)
}

/// The operators' parallelism a reply's controls carry.
fn operators(reply: &AllocateReply) -> BTreeMap<String, u32> {
    reply
        .controls
        .iter()
        .filter_map(|(key, value)| {
            let name = key.strip_prefix("operators/")?;
            Some((name.to_owned(), value["parallelism"].as_u64().expect("a parallelism") as u32))
        })
        .collect()
}

fn expected_operators(count: u32) -> BTreeMap<String, u32> {
    BTreeMap::from([
        ("events".to_owned(), 2),
        ("by_key".to_owned(), 1),
        ("count".to_owned(), count),
        ("out".to_owned(), 1),
    ])
}

#[test]
fn stream_jobs_are_accepted_unless_no_node_could_hold_a_worker() {
    let mut rm = cluster();
    register(&mut rm, "n1:8042", 4, 4096, 0);
    rm.submit(stream_spec(), 0).expect("a stream job is accepted");
    let mut too_big = stream_spec();
    too_big.stream.as_mut().unwrap().worker.memory_mb = 8192;
    let AppError::InvalidSpec(error) = rm.submit(too_big, 0).unwrap_err() else {
        panic!("a worker no node can hold is an invalid spec");
    };
    assert_eq!(error.field, "stream.worker.memory_mb");
}

#[test]
fn scaling_by_the_owner_is_stored_and_wakes_the_waiting_am_with_the_new_parallelism() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 4, 4096, 0);
    let mut am = start_job(&mut rm, &mut n1, stream_spec(), 0);
    assert!(am.collect_news(&mut rm).is_none(), "nothing new: the AM would wait");
    let idle = rm.mutate(|cluster| cluster.idle_reply(am.app_id, am.attempt));
    assert_eq!(operators(&idle), expected_operators(2), "every reply carries the parallelism");

    rm.woken.clear();
    assert_eq!(
        scale(&mut rm, &caller(), am.app_id, "count", 4).unwrap(),
        2,
        "the parallelism it had"
    );
    assert_eq!(rm.last_writes.apps.len(), 1, "the change is committed before anyone is told");
    assert_eq!(parallelism_of(&rm.last_writes.apps[0], "count"), 4);
    assert!(rm.woken.contains(&am.app_id), "a long-polling AM is woken");
    let news = am.collect_news(&mut rm).expect("a new parallelism is news");
    assert_eq!(operators(&news), expected_operators(4));
    assert!(am.collect_news(&mut rm).is_none(), "and it is news once");

    // The same parallelism again changes nothing and wakes nobody.
    rm.woken.clear();
    assert_eq!(scale(&mut rm, &caller(), am.app_id, "count", 4).unwrap(), 4);
    assert!(rm.woken.is_empty() && rm.last_writes.apps.is_empty());

    // An admin may scale anyone's app; a restarted RM still knows the new parallelism.
    let admin = Caller {
        user: "root".to_owned(),
        admin: true,
        unix_user: Some("nobody".to_owned()),
    };
    scale(&mut rm, &admin, am.app_id, "out", 3).unwrap();
    rm.restart(100);
    let idle = rm.mutate(|cluster| cluster.idle_reply(am.app_id, am.attempt));
    assert_eq!(operators(&idle)["count"], 4);
    assert_eq!(operators(&idle)["out"], 3);
}

#[test]
fn a_replayed_allocate_reply_carries_the_current_parallelism() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 4, 4096, 0);
    let am = start_job(&mut rm, &mut n1, stream_spec(), 0);
    let allocate = |rm: &mut Rm, response_id: Option<u64>, count: u32, now: u64| {
        let mut request = am.request(vec![task_ask(count)], vec![]);
        request.response_id = response_id;
        rm.mutate(|cluster| cluster.allocate(&request, now)).unwrap()
    };
    let first = allocate(&mut rm, Some(0), 1, 10).expect("a grant");
    assert_eq!(operators(&first), expected_operators(2));
    scale(&mut rm, &caller(), am.app_id, "count", 3).unwrap();
    // The first reply was lost: it comes again, with its grant and today's parallelism.
    let again = allocate(&mut rm, Some(0), 1, 20).expect("the lost reply");
    assert_eq!((again.response_id, &again.allocated), (first.response_id, &first.allocated));
    assert_eq!(operators(&again), expected_operators(3));
}

#[test]
fn scaling_is_refused_for_other_users_unknown_operators_bad_numbers_and_ended_or_other_apps() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 8, 8192, 0);
    let am = start_job(&mut rm, &mut n1, stream_spec(), 0);
    let app_id = am.app_id;
    let bob = Caller {
        user: "bob".to_owned(),
        admin: false,
        unix_user: Some("nobody".to_owned()),
    };
    let err = scale(&mut rm, &bob, app_id, "count", 4).unwrap_err();
    assert!(
        matches!(&err, AppError::Forbidden(message) if message.contains("may not change")),
        "{err:?}"
    );

    let err = scale(&mut rm, &caller(), app_id, "counts", 4).unwrap_err();
    let AppError::ControlTargetNotFound(message) = &err else {
        panic!("an unknown operator is not found: {err:?}");
    };
    assert!(message.contains("`counts`") && message.contains("`count`, `out`"), "{message}");

    for (operator, parallelism, field) in [
        ("count", 0, "parallelism"),
        ("count", 129, "parallelism"),
        ("events", 2, "operator"),
    ] {
        let err = scale(&mut rm, &caller(), app_id, operator, parallelism).unwrap_err();
        assert!(matches!(&err, AppError::InvalidRequest(spec) if spec.field == field), "{err:?}");
    }
    assert!(rm.last_writes.apps.is_empty(), "a refused scale writes nothing");

    let unknown = AppId { seq: 99, ..app_id };
    assert_eq!(
        scale(&mut rm, &caller(), unknown, "count", 2).unwrap_err(),
        AppError::NotFound(unknown)
    );

    let shell = rm.submit(shell_spec(1), 0).unwrap();
    let err = scale(&mut rm, &caller(), shell, "count", 2).unwrap_err();
    assert_eq!(
        err,
        AppError::Conflict(format!("app {shell}: this is a shell job: only stream jobs have operators"))
    );

    rm.kill(&caller(), app_id, 10).unwrap();
    let err = scale(&mut rm, &caller(), app_id, "count", 4).unwrap_err();
    assert!(
        matches!(&err, AppError::Conflict(message) if message.contains("already ended")),
        "{err:?}"
    );
}

fn family(name: &str, value: f64) -> MetricFamily {
    MetricFamily {
        name: name.to_owned(),
        help: "a figure".to_owned(),
        kind: "gauge".to_owned(),
        samples: vec![MetricSample {
            labels: BTreeMap::from([("operator".to_owned(), "count".to_owned())]),
            value,
        }],
    }
}

fn stream_detail(restarts: u32) -> JobDetail {
    JobDetail {
        metrics: vec![family("spindle_stream_busy_ratio", 0.5)],
        ..JobDetail::default()
    }
    .with_section(
        STREAM_SECTION,
        &StreamDetail {
            restarts,
            ..StreamDetail::default()
        },
    )
}

#[test]
fn an_am_detail_is_stored_as_sent_and_bad_or_oversized_ones_are_refused() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 4, 4096, 0);
    let am = start_job(&mut rm, &mut n1, stream_spec(), 0);
    let send = |rm: &mut Rm, detail: JobDetail| {
        let mut request = am.request(Vec::new(), Vec::new());
        request.detail = Some(detail);
        am.update_asks(rm, &request, 1)
    };
    send(&mut rm, stream_detail(3)).unwrap();
    assert_eq!(rm.app(am.app_id).detail, Some(stream_detail(3)));
    assert_eq!(rm.app(am.app_id).detail.unwrap().stream().unwrap().restarts, 3);
    let metrics = rm.cluster.app_metrics();
    assert_eq!((metrics.len(), metrics[0].0, metrics[0].1), (1, am.app_id, JobKind::Stream));

    let field = |result: Result<(), AppError>| match result {
        Err(AppError::InvalidSpec(error)) => error.field,
        other => panic!("refused as an invalid detail: {other:?}"),
    };
    let with_metric = |family: MetricFamily| JobDetail {
        metrics: vec![family],
        ..JobDetail::default()
    };
    let oversized = JobDetail::default().with_section("blob", &"x".repeat(600 * 1024));
    assert_eq!(field(send(&mut rm, oversized)), "detail.sections");
    for forged in ["spindle_nodes", "spindle_mapreduce_maps", "spindle_stream_Busy"] {
        assert_eq!(
            field(send(&mut rm, with_metric(family(forged, 1.0)))),
            "detail.metrics[0]",
            "{forged}"
        );
    }
    let mut app_label = family("spindle_stream_busy_ratio", 1.0);
    app_label.samples[0].labels.insert("app".to_owned(), "someone-else".to_owned());
    assert_eq!(field(send(&mut rm, with_metric(app_label))), "detail.metrics[0]");
    assert_eq!(
        field(send(&mut rm, with_metric(family("spindle_stream_busy_ratio", f64::NAN)))),
        "detail.metrics[0]"
    );
    let mut too_many = family("spindle_stream_busy_ratio", 1.0);
    too_many.samples = vec![too_many.samples[0].clone(); 9000];
    assert_eq!(field(send(&mut rm, with_metric(too_many))), "detail.metrics");
    assert_eq!(rm.app(am.app_id).detail, Some(stream_detail(3)), "a refused detail keeps the last");

    rm.kill(&caller(), am.app_id, 10).unwrap();
    assert!(rm.cluster.app_metrics().is_empty(), "ended apps leave /metrics");
}

/// `POST …/savepoints` as the API runs it: the generic request `savepoints`.
fn request_savepoint(rm: &mut Rm, by: &Caller, app_id: AppId, body: serde_json::Value) -> Result<u64, AppError> {
    rm.mutate(|cluster| cluster.request_app(by, app_id, spindle_protocol::SAVEPOINT_REQUEST_KIND, &body))
}

/// The savepoint requests a reply's controls carry, by id.
fn savepoint_requests(reply: &AllocateReply) -> BTreeMap<u64, spindle_protocol::SavepointRequest> {
    reply
        .controls
        .iter()
        .filter_map(|(key, value)| spindle_protocol::parse_savepoint_request(key, value))
        .collect()
}

#[test]
fn a_savepoint_request_is_numbered_stored_and_wakes_the_am_which_sees_it_in_every_reply() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 4, 4096, 0);
    let mut am = start_job(&mut rm, &mut n1, stream_spec(), 0);
    assert!(am.collect_news(&mut rm).is_none());
    rm.woken.clear();

    let first = request_savepoint(&mut rm, &caller(), am.app_id, serde_json::json!({"dir": "file:///data/sp"})).unwrap();
    assert_eq!(first, 1);
    assert!(rm.woken.contains(&am.app_id), "a long-polling AM is woken");
    assert_eq!(rm.last_writes.apps.len(), 1, "the request is committed before it is answered");
    let news = am.collect_news(&mut rm).expect("a request is news");
    let requests = savepoint_requests(&news);
    assert_eq!(requests.len(), 1);
    assert_eq!(
        (requests[&1].dir.as_deref(), requests[&1].stop),
        (Some("/data/sp"), false),
        "stored as a plain path"
    );
    assert_eq!(operators(&news), expected_operators(2), "beside the spec's controls");

    // A second one (a stop) gets the next id; both survive an RM restart.
    assert_eq!(
        request_savepoint(&mut rm, &caller(), am.app_id, serde_json::json!({"stop": true})).unwrap(),
        2
    );
    rm.restart(100);
    let idle = rm.mutate(|cluster| cluster.idle_reply(am.app_id, am.attempt));
    let requests = savepoint_requests(&idle);
    assert_eq!(requests.keys().copied().collect::<Vec<_>>(), [1, 2]);
    assert!(requests[&2].stop && requests[&2].dir.is_none());

    // Only the newest are kept, and ids are never reused.
    for _ in 0..20 {
        request_savepoint(&mut rm, &caller(), am.app_id, serde_json::json!({})).unwrap();
    }
    let idle = rm.mutate(|cluster| cluster.idle_reply(am.app_id, am.attempt));
    let ids: Vec<u64> = savepoint_requests(&idle).keys().copied().collect();
    assert_eq!(ids, (7..=22).collect::<Vec<_>>());
}

#[test]
fn savepoint_requests_are_refused_to_others_with_bad_dirs_and_for_apps_that_are_not_running_stream_jobs() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 8, 8192, 0);
    let am = start_job(&mut rm, &mut n1, stream_spec(), 0);
    let app_id = am.app_id;
    let bob = Caller {
        user: "bob".to_owned(),
        admin: false,
        unix_user: Some("nobody".to_owned()),
    };
    let err = request_savepoint(&mut rm, &bob, app_id, serde_json::json!({})).unwrap_err();
    assert!(matches!(&err, AppError::Forbidden(m) if m.contains("may not change")), "{err:?}");

    for (body, field) in [
        (serde_json::json!({"dir": "savepoints"}), "dir"),
        (serde_json::json!({"dir": "/data/../etc"}), "dir"),
        (serde_json::json!({"dir": "hdfs://nn/sp"}), "dir"),
        (serde_json::json!({"dir": "s3://Bad_Bucket/sp"}), "dir"),
        (serde_json::json!({"stop": "yes"}), "body"),
    ] {
        let err = request_savepoint(&mut rm, &caller(), app_id, body.clone()).unwrap_err();
        assert!(matches!(&err, AppError::InvalidRequest(e) if e.field == field), "{body}: {err:?}");
    }
    assert!(rm.last_writes.apps.is_empty(), "a refused request writes nothing");

    // An admin may ask for anyone's savepoint.
    let admin = Caller {
        user: "root".to_owned(),
        admin: true,
        unix_user: Some("nobody".to_owned()),
    };
    request_savepoint(&mut rm, &admin, app_id, serde_json::json!({})).unwrap();

    // 409: a shell job, a stream job whose AM is not up yet, an ended job.
    let (shell_am, _) = running_job(&mut rm, &mut n1, 1, 0);
    let err = request_savepoint(&mut rm, &caller(), shell_am.app_id, serde_json::json!({})).unwrap_err();
    assert!(
        matches!(&err, AppError::Conflict(m) if m.contains("only stream jobs take savepoints")),
        "{err:?}"
    );
    let waiting = rm.submit(stream_spec(), 0).unwrap();
    let err = request_savepoint(&mut rm, &caller(), waiting, serde_json::json!({})).unwrap_err();
    assert!(matches!(&err, AppError::Conflict(m) if m.contains("is ACCEPTED")), "{err:?}");
    rm.kill(&caller(), app_id, 10).unwrap();
    let err = request_savepoint(&mut rm, &caller(), app_id, serde_json::json!({})).unwrap_err();
    assert!(matches!(&err, AppError::Conflict(m) if m.contains("already ended")), "{err:?}");
    let unknown = AppId { seq: 99, ..app_id };
    assert_eq!(
        request_savepoint(&mut rm, &caller(), unknown, serde_json::json!({})).unwrap_err(),
        AppError::NotFound(unknown)
    );
}
