//! The client commands as a user runs them: the real `spindle` binary against a fake RM that
//! answers like the real API, so output, exit codes and config resolution are checked end to end.

use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use serde_json::{Value, json};
use spindle_protocol::JobSpec;

const TOKEN: &str = "test-token-0123456789";
const APP_ID: &str = "application_1700000000000_0001";
const TASK_CONTAINER: &str = "container_e01_1700000000000_0001_01_000002";

/// What the fake RM saw, for assertions.
#[derive(Default)]
struct Seen {
    submitted: Vec<JobSpec>,
    app_polls: u32,
}

type Shared = Arc<Mutex<Seen>>;

/// A 401 with the API's error body.
type Refusal = (StatusCode, Json<Value>);

fn authorised(headers: &HeaderMap) -> Result<(), Refusal> {
    let expected = format!("Bearer {TOKEN}");
    if headers.get("authorization").and_then(|value| value.to_str().ok()) == Some(expected.as_str()) {
        return Ok(());
    }
    let body = json!({"error": {"code": "unauthorized", "message": "missing or unknown API token"}});
    Err((StatusCode::UNAUTHORIZED, Json(body)))
}

fn app_report(state: &str, final_status: &str) -> Value {
    json!({
        "app_id": APP_ID, "name": "hello", "queue": "default", "user": "ann", "kind": "shell",
        "priority": 0, "state": state, "final_status": final_status, "diagnostics": "",
        "progress": if state == "FINISHED" { 1.0 } else { 0.5 }, "max_attempts": 2,
        "attempts": [{"attempt": 1, "am_container": "container_e01_1700000000000_0001_01_000001",
                      "node_id": "127.0.0.1:8042", "started_at_ms": 1_700_000_000_500u64,
                      "finished_at_ms": null, "diagnostics": ""}],
        "allocated": {"vcores": 2, "memory_mb": 384}, "running_containers": 2,
        "submitted_at_ms": 1_700_000_000_000u64, "started_at_ms": 1_700_000_000_500u64,
        "finished_at_ms": if state == "FINISHED" { json!(1_700_000_003_000u64) } else { Value::Null },
    })
}

async fn start_fake_rm() -> (String, Shared) {
    let seen = Shared::default();
    let app = axum::Router::new()
        .route(
            "/v1/apps",
            get(|headers: HeaderMap| async move {
                authorised(&headers)?;
                Ok::<_, Refusal>(Json(json!([app_report("RUNNING", "UNDEFINED")])))
            })
            .post(
                |State(seen): State<Shared>, headers: HeaderMap, Json(spec): Json<JobSpec>| async move {
                    authorised(&headers)?;
                    seen.lock().unwrap().submitted.push(spec);
                    Ok::<_, Refusal>((StatusCode::CREATED, Json(json!({"app_id": APP_ID}))))
                },
            ),
        )
        .route(
            "/v1/apps/{app_id}",
            get(|State(seen): State<Shared>, headers: HeaderMap| async move {
                authorised(&headers)?;
                let mut seen = seen.lock().unwrap();
                seen.app_polls += 1;
                // Running on the first poll, then done: `--wait` must poll more than once.
                let report = if seen.app_polls < 2 {
                    app_report("RUNNING", "UNDEFINED")
                } else {
                    app_report("FINISHED", "SUCCEEDED")
                };
                Ok::<_, Refusal>(Json(report))
            }),
        )
        .route(
            "/v1/apps/{app_id}/containers",
            get(|headers: HeaderMap| async move {
                authorised(&headers)?;
                Ok::<_, Refusal>(Json(json!([{
                    "container_id": TASK_CONTAINER, "node_id": "127.0.0.1:8042",
                    "node_address": "127.0.0.1:8042", "resources": {"vcores": 1, "memory_mb": 128},
                    "state": "COMPLETE", "is_am": false, "exit_code": 0, "exit_reason": "SUCCESS",
                    "diagnostics": "", "allocated_at_ms": 1u64, "started_at_ms": 2u64, "finished_at_ms": 3u64
                }])))
            }),
        )
        .route(
            "/v1/nodes",
            get(|headers: HeaderMap| async move {
                authorised(&headers)?;
                Ok::<_, Refusal>(Json(json!([{
                    "node_id": "127.0.0.1:8042", "address": "127.0.0.1:8042", "rack": "/default-rack",
                    "labels": [], "state": "RUNNING", "capacity": {"vcores": 8, "memory_mb": 8192},
                    "used": {"vcores": 2, "memory_mb": 384}, "containers": 2,
                    "usage": {"cpu_percent": 3.0, "memory_used_mb": 100}, "health_report": "",
                    "last_heartbeat_ms": spindle_protocol::now_ms()
                }])))
            }),
        )
        .route(
            "/v1/containers/{container_id}/logs/{stream}",
            get(
                |UrlPath((container_id, stream)): UrlPath<(String, String)>, headers: HeaderMap| async move {
                    authorised(&headers)?;
                    Ok::<_, Refusal>(format!("{stream} of {container_id}\n"))
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

/// Runs `spindle` with a private SPINDLE_HOME and none of the caller's Spindle variables.
async fn spindle(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_spindle"));
    command
        .args(args)
        .env("SPINDLE_HOME", home)
        .env_remove("SPINDLE_RM")
        .env_remove("SPINDLE_TOKEN");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().await.unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write_client_config(home: &Path, rm: &str, token: &str) {
    std::fs::write(home.join("config.toml"), format!("rm = [\"{rm}\"]\ntoken = \"{token}\"\n")).unwrap();
}

#[tokio::test]
async fn apps_reads_the_rm_and_token_from_the_config_file() {
    let (url, _) = start_fake_rm().await;
    let home = tempfile::tempdir().unwrap();
    write_client_config(home.path(), &url, TOKEN);
    let output = spindle(home.path(), &["apps"], &[]).await;
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(stdout.starts_with("ID "), "{stdout}");
    assert!(
        stdout.contains(APP_ID) && stdout.contains("RUNNING") && stdout.contains("50%"),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_wrong_token_exits_1_with_a_hint_and_flags_beat_the_environment() {
    let (url, _) = start_fake_rm().await;
    let home = tempfile::tempdir().unwrap();
    let output = spindle(home.path(), &["nodes", "--rm", &url], &[("SPINDLE_TOKEN", "wrong-token")]).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("HTTP 401") && stderr.contains("hint: check --token"), "{stderr}");

    let output = spindle(
        home.path(),
        &["nodes", "--token", TOKEN],
        &[("SPINDLE_TOKEN", "wrong-token"), ("SPINDLE_RM", &url)],
    )
    .await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("127.0.0.1:8042  RUNNING"), "{}", text(&output.stdout));
}

#[tokio::test]
async fn submit_wait_follows_the_app_and_exits_0_when_it_succeeds() {
    let (url, seen) = start_fake_rm().await;
    let home = tempfile::tempdir().unwrap();
    write_client_config(home.path(), &url, TOKEN);
    let job = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello-shell.toml");
    let output = spindle(home.path(), &["submit", job.to_str().unwrap(), "--wait"], &[]).await;
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(stdout.starts_with(APP_ID), "{stdout}");
    assert!(stdout.contains("FINISHED  SUCCEEDED  in 3.0s"), "{stdout}");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.submitted[0].shell.as_ref().unwrap().containers, 4);
    assert!(seen.app_polls >= 2);
}

#[tokio::test]
async fn app_shows_attempts_and_containers_and_json_adds_the_containers() {
    let (url, _) = start_fake_rm().await;
    let home = tempfile::tempdir().unwrap();
    let args = ["app", APP_ID, "--rm", &url, "--token", TOKEN];
    let output = spindle(home.path(), &args, &[]).await;
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(stdout.contains("\nAttempts\n") && stdout.contains("1/2"), "{stdout}");
    assert!(stdout.contains(TASK_CONTAINER) && stdout.contains("SUCCESS"), "{stdout}");

    let output = spindle(home.path(), &[&args[..], &["--json"]].concat(), &[]).await;
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["app_id"], APP_ID);
    assert_eq!(report["containers"][0]["container_id"], TASK_CONTAINER);
}

#[tokio::test]
async fn logs_prints_the_stream_asked_for() {
    let (url, _) = start_fake_rm().await;
    let home = tempfile::tempdir().unwrap();
    let output = spindle(
        home.path(),
        &["logs", TASK_CONTAINER, "--stderr", "--rm", &url, "--token", TOKEN],
        &[],
    )
    .await;
    assert_eq!(text(&output.stdout), format!("stderr of {TASK_CONTAINER}\n"));
}

#[tokio::test]
async fn bad_job_files_exit_2_naming_file_and_field_before_any_request() {
    let home = tempfile::tempdir().unwrap();
    let job = home.path().join("job.toml");
    std::fs::write(&job, "name = \"x\"\nkind = \"shell\"\n[shell]\ncommand = [\"true\"]\nvcores = 0\n").unwrap();
    // No RM at this address: the file must be refused before the client tries to reach it.
    let output = spindle(home.path(), &["submit", job.to_str().unwrap(), "--rm", "127.0.0.1:1"], &[]).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("job.toml: shell.vcores: must be at least 1"), "{stderr}");
}

#[tokio::test]
async fn an_unreachable_rm_exits_1_saying_where_it_looked() {
    let home = tempfile::tempdir().unwrap();
    let output = spindle(home.path(), &["apps", "--rm", "127.0.0.1:1"], &[]).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot reach http://127.0.0.1:1"), "{stderr}");
}
