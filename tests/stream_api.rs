//! A streaming job's control plane over HTTP against a real RM (in this process, on port 0):
//! `PUT /v1/apps/{app_id}/operators/{name}` stores the parallelism and `POST
//! /v1/apps/{app_id}/savepoints` a savepoint request, each waking the AM's long-polling
//! allocate with it; the AM's stream detail shows in `/metrics`. No agents: the
//! test plays the AM itself, which may register before its container runs.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use spindle_protocol::{
    AllocateRequest, AppId, ClusterSecret, JobDetail, JobSpec, MetricFamily, MetricSample, RegisterAmRequest, RmClient, SavepointRequest,
    StreamDetail,
};
use support::{InProcessRm, SECRET, shell_job};

fn window_count() -> JobSpec {
    toml::from_str(include_str!("../examples/stream-window-count.toml")).expect("the example parses")
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
    let expected = |count: u32| -> BTreeMap<String, serde_json::Value> {
        [("events", 2), ("by_key", 1), ("count", count), ("out", 1)]
            .into_iter()
            .map(|(name, parallelism)| (format!("operators/{name}"), serde_json::json!({ "parallelism": parallelism })))
            .collect()
    };
    assert_eq!(first.controls, expected(2));

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
    assert_eq!(reply.controls, expected(4));
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

/// `POST /v1/apps/{app_id}/savepoints`: a request stored for the AM (202 with its id), which
/// its long-polling allocate wakes up with; for the owner, a queue admin or an admin; a bad
/// `dir` is a 400 naming it; an app that is not a running stream job is a 409.
#[tokio::test]
async fn a_savepoint_request_wakes_the_am_and_bad_ones_are_refused() {
    let rm = InProcessRm::start().await;
    let refused = |result: Result<_, spindle_protocol::ClientError>| {
        let err = result.expect_err("refused");
        (err.status(), err.to_string())
    };
    let request = |dir: Option<&str>, stop: bool| SavepointRequest {
        dir: dir.map(str::to_owned),
        stop,
    };
    let app_id = rm.user().submit(&window_count()).await.unwrap();
    let (status, message) = refused(rm.user().request_savepoint(app_id, &request(None, false)).await);
    assert_eq!(status, Some(409), "{message}");
    assert!(message.contains("is ACCEPTED"), "no AM to take it yet: {message}");

    let am = am_of(&rm, app_id).await;
    am.allocate(&allocate_request(app_id, 0, None)).await.unwrap();
    let waiting = {
        let am = am.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let reply = am.allocate(&allocate_request(app_id, 20_000, None)).await.unwrap();
            (reply, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reply = rm
        .user()
        .request_savepoint(app_id, &request(Some("file:///data/savepoints"), true))
        .await
        .expect("the owner may ask");
    assert_eq!((reply.app_id, reply.savepoint_id), (app_id, 1));
    let (woken, waited) = waiting.await.unwrap();
    assert!(waited < Duration::from_secs(10), "the long poll was woken: {waited:?}");
    assert_eq!(
        woken.controls.get("savepoints/1"),
        Some(&serde_json::json!({"dir": "/data/savepoints", "stop": true})),
        "{:?}",
        woken.controls
    );

    for dir in ["savepoints", "/data/../etc", "hdfs://nn/sp", "s3://Bad_Bucket/sp"] {
        let (status, message) = refused(rm.user().request_savepoint(app_id, &request(Some(dir), false)).await);
        assert_eq!(status, Some(400), "{dir}: {message}");
        assert!(message.contains("dir"), "{message}");
    }
    let garbled = spindle_protocol::tls::client_builder()
        .build()
        .expect("an HTTP client")
        .post(format!("{}/v1/apps/{app_id}/savepoints", rm.url))
        .bearer_auth(support::USER_TOKEN)
        .header("content-type", "application/json")
        .body(r#"{"directory": "/data"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(garbled.status(), 400);

    let admins_app = rm.admin().submit(&window_count()).await.unwrap();
    let (status, message) = refused(rm.user().request_savepoint(admins_app, &request(None, false)).await);
    assert_eq!(status, Some(403), "{message}");
    let second = rm
        .admin()
        .request_savepoint(app_id, &request(None, false))
        .await
        .expect("an admin may ask for any app's");
    assert_eq!(second.savepoint_id, 2);

    let shell = rm.user().submit(&shell_job("hello", "true", 1, 128, 0)).await.unwrap();
    let (status, message) = refused(rm.user().request_savepoint(shell, &request(None, false)).await);
    assert_eq!(status, Some(409), "{message}");
    assert!(message.contains("only stream jobs take savepoints"), "{message}");
    rm.user().kill(app_id).await.unwrap();
    let (status, message) = refused(rm.user().request_savepoint(app_id, &request(None, true)).await);
    assert_eq!(status, Some(409), "{message}");

    let openapi = reqwest::get(format!("{}/openapi.json", rm.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        openapi.contains("/v1/apps/{app_id}/savepoints"),
        "the savepoint endpoint is documented"
    );
    assert!(openapi.contains("SavepointRequest") && openapi.contains("SavepointReply"));
    rm.stop().await;
}

#[tokio::test]
async fn the_ams_stream_detail_shows_in_metrics() {
    let rm = InProcessRm::start().await;
    let app_id = rm.user().submit(&window_count()).await.unwrap();
    let am = am_of(&rm, app_id).await;
    // What the stream AM exports (`exported_metrics`): families named after the job's kind.
    let sample = |labels: &[(&str, &str)], value: f64| MetricSample {
        labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        value,
    };
    let family = |name: &str, kind: &str, samples: Vec<MetricSample>| MetricFamily {
        name: name.to_owned(),
        help: "figures".to_owned(),
        kind: kind.to_owned(),
        samples,
    };
    let instance = [("operator", "count"), ("instance", "0")];
    let detail = JobDetail {
        metrics: vec![
            family("spindle_stream_busy_ratio", "gauge", vec![sample(&instance, 0.75)]),
            family("spindle_stream_state_bytes", "gauge", vec![sample(&instance, 1234.0)]),
            family("spindle_stream_restarts_total", "counter", vec![sample(&[], 2.0)]),
        ],
        ..JobDetail::default()
    }
    .with_section(
        spindle_protocol::STREAM_SECTION,
        &StreamDetail {
            restarts: 2,
            ..StreamDetail::default()
        },
    );
    // An AM may not pass its figures off as the RM's, nor as another kind's.
    for name in ["spindle_nodes", "spindle_mapreduce_maps"] {
        let forged = JobDetail {
            metrics: vec![family(name, "gauge", vec![sample(&[], 1.0)])],
            ..JobDetail::default()
        };
        let refused = am.allocate(&allocate_request(app_id, 0, Some(forged))).await.unwrap_err();
        assert_eq!(refused.status(), Some(400), "{refused}");
        assert!(refused.to_string().contains("detail.metrics[0]"), "{refused}");
    }
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
        format!("spindle_stream_busy_ratio{{app=\"{app_id}\",instance=\"0\",operator=\"count\"}} 0.75"),
        format!("spindle_stream_state_bytes{{app=\"{app_id}\",instance=\"0\",operator=\"count\"}} 1234"),
        format!("spindle_stream_restarts_total{{app=\"{app_id}\"}} 2"),
    ] {
        assert!(metrics.lines().any(|written| written == line), "no `{line}` in:\n{metrics}");
    }
    // Prometheus' own parser reads all of it: the RM's families and the AM's, with their types
    // and labels (skipped, saying so, where the parser is not installed).
    if let Some(families) = support::parse_prometheus_text(&metrics) {
        assert_eq!(families["spindle_store_commits"]["type"], "counter", "{families}");
        assert_eq!(families["spindle_nodes"]["type"], "gauge");
        assert_eq!(families["spindle_stream_restarts"]["type"], "counter");
        let busy = &families["spindle_stream_busy_ratio"]["samples"][0];
        assert_eq!(busy[1]["app"], app_id.to_string());
        assert_eq!(
            (busy[1]["operator"].as_str(), busy[1]["instance"].as_str()),
            (Some("count"), Some("0"))
        );
        assert_eq!(busy[2], 0.75);
    }
    rm.stop().await;
}
