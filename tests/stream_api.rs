//! A streaming job's control plane over HTTP against a real RM (in this process, on port 0):
//! `PUT /v1/apps/{app_id}/operators/{name}` stores the parallelism and wakes the AM's
//! long-polling allocate with it; the AM's stream detail shows in `/metrics`. No agents: the
//! test plays the AM itself, which may register before its container runs.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use spindle_protocol::{
    AllocateRequest, AppId, ClusterSecret, InstanceStatus, JobDetail, JobSpec, OperatorStatus, RegisterAmRequest, RmClient, StreamDetail,
};
use support::{InProcessRm, SECRET, shell_job};

fn window_count() -> JobSpec {
    toml::from_str(
        r#"
        name = "window-count"
        kind = "stream"
        [[stream.operators]]
        name = "events"
        kind = "generator"
        [[stream.operators]]
        name = "by-key"
        kind = "key_by"
        input = ["events"]
        expr = "$1"
        [[stream.operators]]
        name = "count"
        kind = "window"
        input = ["by-key"]
        parallelism = 2
        size_ms = 1000
        aggregate = "count"
        [[stream.operators]]
        name = "out"
        kind = "discard_sink"
        input = ["count"]
        "#,
    )
    .expect("the job parses")
}

/// The app's first AM, as the RM would start it.
async fn am_of(rm: &InProcessRm, app_id: AppId) -> RmClient {
    let token = ClusterSecret::new(SECRET).am_token(app_id, 1);
    let am = RmClient::new(std::slice::from_ref(&rm.url), Some(token));
    am.register_am(&RegisterAmRequest { app_id, attempt: 1 })
        .await
        .expect("the AM registers");
    am
}

fn allocate_request(app_id: AppId, wait_ms: u64, detail: Option<JobDetail>) -> AllocateRequest {
    AllocateRequest {
        app_id,
        attempt: 1,
        asks: Vec::new(),
        releases: Vec::new(),
        progress: 0.0,
        wait_ms,
        response_id: None,
        detail,
    }
}

#[tokio::test]
async fn scaling_an_operator_wakes_the_am_and_bad_requests_are_refused() {
    let rm = InProcessRm::start().await;
    let app_id = rm.user().submit(&window_count()).await.expect("a stream job is accepted");
    let am = am_of(&rm, app_id).await;

    let first = am.allocate(&allocate_request(app_id, 0, None)).await.unwrap();
    let expected = |count: u32| {
        BTreeMap::from([
            ("events".into(), 1),
            ("by-key".into(), 1),
            ("count".into(), count),
            ("out".into(), 1),
        ])
    };
    assert_eq!(first.operators, expected(2));

    // An allocate waiting up to 20 s returns as soon as the operator is scaled.
    let waiting = {
        let am = am.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let reply = am.allocate(&allocate_request(app_id, 20_000, None)).await.unwrap();
            (reply, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let scaled = rm.user().scale_operator(app_id, "count", 4).await.expect("the owner may scale");
    assert_eq!((scaled.operator.as_str(), scaled.previous, scaled.parallelism), ("count", 2, 4));
    let (reply, waited) = waiting.await.unwrap();
    assert_eq!(reply.operators, expected(4));
    assert!(
        waited < Duration::from_secs(10),
        "the long poll was woken, not timed out: {waited:?}"
    );

    let refused = |result: Result<_, spindle_protocol::ClientError>| {
        let err = result.expect_err("refused");
        (err.status(), err.to_string())
    };
    let (status, message) = refused(rm.user().scale_operator(app_id, "counts", 3).await);
    assert_eq!(status, Some(404), "{message}");
    assert!(message.contains("`counts`") && message.contains("`count`, `out`"), "{message}");
    let (status, message) = refused(rm.user().scale_operator(app_id, "count", 0).await);
    assert_eq!(status, Some(400), "{message}");
    assert!(message.contains("parallelism"), "{message}");
    let (status, message) = refused(rm.user().scale_operator(app_id, "events", 3).await);
    assert_eq!(status, Some(400), "{message}");
    assert!(message.contains("cannot be rescaled"), "{message}");

    let body = spindle_protocol::tls::client_builder()
        .build()
        .expect("an HTTP client")
        .put(format!("{}/v1/apps/{app_id}/operators/count", rm.url))
        .bearer_auth(support::USER_TOKEN)
        .header("content-type", "application/json")
        .body(r#"{"parallelism": "four"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(body.status(), 400);

    let admins_app = rm.admin().submit(&window_count()).await.unwrap();
    let (status, message) = refused(rm.user().scale_operator(admins_app, "count", 3).await);
    assert_eq!(status, Some(403), "{message}");
    rm.admin()
        .scale_operator(app_id, "count", 3)
        .await
        .expect("an admin may scale any app");

    let shell = rm.user().submit(&shell_job("hello", "true", 1, 128, 0)).await.unwrap();
    let (status, message) = refused(rm.user().scale_operator(shell, "count", 3).await);
    assert_eq!(status, Some(409), "{message}");
    assert!(message.contains("only stream jobs have operators"), "{message}");

    rm.user().kill(app_id).await.unwrap();
    let (status, message) = refused(rm.user().scale_operator(app_id, "count", 2).await);
    assert_eq!(status, Some(409), "{message}");

    let openapi = reqwest::get(format!("{}/openapi.json", rm.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        openapi.contains("/v1/apps/{app_id}/operators/{name}"),
        "the scale endpoint is documented"
    );
    assert!(openapi.contains("ScaleRequest"));
    rm.stop().await;
}

#[tokio::test]
async fn the_ams_stream_detail_shows_in_metrics() {
    let rm = InProcessRm::start().await;
    let app_id = rm.user().submit(&window_count()).await.unwrap();
    let am = am_of(&rm, app_id).await;
    let detail = JobDetail {
        stream: Some(StreamDetail {
            operators: vec![OperatorStatus {
                name: "count".into(),
                kind: "window".into(),
                parallelism: 1,
                target_parallelism: 1,
                instances: vec![InstanceStatus {
                    busy: 0.75,
                    state_bytes: 1234,
                    ..InstanceStatus::default()
                }],
            }],
            restarts: 2,
            ..StreamDetail::default()
        }),
        ..JobDetail::default()
    };
    am.allocate(&allocate_request(app_id, 0, Some(detail))).await.unwrap();
    // Any API user's token may scrape /metrics (Prometheus: `authorization` in the scrape job).
    let metrics = spindle_protocol::tls::client_builder()
        .build()
        .expect("an HTTP client")
        .get(format!("{}/metrics", rm.url))
        .bearer_auth(support::USER_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        format!("spindle_stream_busy_ratio{{app=\"{app_id}\",operator=\"count\",instance=\"0\"}} 0.75"),
        format!("spindle_stream_state_bytes{{app=\"{app_id}\",operator=\"count\",instance=\"0\"}} 1234"),
        format!("spindle_stream_restarts_total{{app=\"{app_id}\"}} 2"),
    ] {
        assert!(metrics.lines().any(|written| written == line), "no `{line}` in:\n{metrics}");
    }
    rm.stop().await;
}
