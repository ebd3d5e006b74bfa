//! Bad input of every kind against a real RM (in this process, on port 0): each is refused with
//! the right status, a stable `error.code` and a message naming the problem, and none of them
//! changes anything. Then the same mistakes made through the `spindle` binary.

mod support;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use spindle_protocol::{AppId, ClusterSecret, NodeId, Resources};
use support::{ADMIN_TOKEN, InProcessRm, SECRET, USER_TOKEN, run_spindle, shell_job, wait_until};

/// A request to the RM: method, path, token, body.
struct Call<'a> {
    rm: &'a InProcessRm,
    method: Method,
    path: String,
    token: Option<&'a str>,
    body: Option<Vec<u8>>,
    headers: Vec<(&'static str, String)>,
}

impl<'a> Call<'a> {
    fn new(rm: &'a InProcessRm, method: Method, path: impl Into<String>) -> Self {
        Call {
            rm,
            method,
            path: path.into(),
            token: Some(ADMIN_TOKEN),
            body: None,
            headers: Vec::new(),
        }
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn token(mut self, token: Option<&'a str>) -> Self {
        self.token = token;
        self
    }

    fn json(self, body: &Value) -> Self {
        self.raw(serde_json::to_vec(body).unwrap())
    }

    fn raw(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    async fn send(self) -> (StatusCode, String) {
        let mut request = spindle_protocol::tls::client_builder()
            .build()
            .expect("an HTTP client")
            .request(self.method, format!("{}{}", self.rm.url, self.path));
        if let Some(token) = self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = self.body {
            request = request.header("content-type", "application/json").body(body);
        }
        for (name, value) in self.headers {
            request = request.header(name, value);
        }
        let response = request.send().await.expect("the RM answers");
        let status = response.status();
        (status, response.text().await.unwrap_or_default())
    }

    /// Sends, and checks the status, the error code and that the message mentions each of `mentions`.
    async fn refused(self, status: StatusCode, code: &str, mentions: &[&str]) -> String {
        let what = format!("{} {}", self.method, self.path);
        let (got, body) = self.send().await;
        assert_eq!(got, status, "{what}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{what}: the error body is not JSON: {body}"));
        assert_eq!(body["error"]["code"], code, "{what}: {body}");
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no error.message: {body}"));
        for mention in mentions {
            assert!(
                message.contains(mention),
                "{what}: the message does not mention `{mention}`: {message}"
            );
        }
        message.to_owned()
    }
}

fn hello() -> Value {
    json!({"name": "hello", "kind": "shell", "shell": {"command": ["true"], "containers": 2}})
}

/// `hello()` with `shell.<field>` set to `value`.
fn hello_with(field: &str, value: Value) -> Value {
    let mut spec = hello();
    spec["shell"][field] = value;
    spec
}

async fn app_count(rm: &InProcessRm) -> usize {
    rm.admin().apps(&Default::default()).await.unwrap().len()
}

fn init_logs() {
    let _ = tracing_subscriber::fmt().with_env_filter("info").with_test_writer().try_init();
}

#[tokio::test]
async fn bad_submissions_are_refused_and_create_nothing() {
    init_logs();
    let rm = InProcessRm::start().await;
    let post = || Call::new(&rm, Method::POST, "/v1/apps");

    post()
        .raw("{\"name\": \"x\", ")
        .refused(StatusCode::BAD_REQUEST, "bad_request", &["malformed JSON"])
        .await;
    post().raw("").refused(StatusCode::BAD_REQUEST, "bad_request", &["empty"]).await;
    post()
        .json(&hello())
        .header("idempotency-key", "x".repeat(129))
        .refused(StatusCode::BAD_REQUEST, "bad_request", &["idempotency-key", "128"])
        .await;
    let mut unknown = hello();
    unknown["shel"] = json!({});
    post()
        .json(&unknown)
        .refused(StatusCode::BAD_REQUEST, "bad_request", &["shel"])
        .await;
    post()
        .json(&hello_with("colour", json!("red")))
        .refused(StatusCode::BAD_REQUEST, "bad_request", &["colour"])
        .await;
    post()
        .json(&hello_with("vcores", json!(0)))
        .refused(StatusCode::BAD_REQUEST, "invalid_spec", &["shell.vcores"])
        .await;
    post()
        .json(&hello_with("vcores", json!(-1)))
        .refused(StatusCode::BAD_REQUEST, "bad_request", &["shell.vcores"])
        .await;
    post()
        .json(&hello_with("vcores", json!("two")))
        .refused(StatusCode::BAD_REQUEST, "bad_request", &["shell.vcores"])
        .await;
    post()
        .json(&hello_with("memory_mb", json!(u64::MAX)))
        .refused(StatusCode::BAD_REQUEST, "invalid_spec", &["memory"])
        .await;
    post()
        .json(&hello_with("memory_mb", json!(1_000_000_000_000_000u64)))
        .refused(StatusCode::BAD_REQUEST, "invalid_spec", &["shell.memory_mb"])
        .await;
    post()
        .json(&hello_with("containers", json!(0)))
        .refused(StatusCode::BAD_REQUEST, "invalid_spec", &["shell.containers"])
        .await;
    post()
        .json(&hello_with("command", json!([])))
        .refused(StatusCode::BAD_REQUEST, "invalid_spec", &["shell.command"])
        .await;
    post()
        .json(&json!({"name": "x", "kind": "shell"}))
        .refused(StatusCode::BAD_REQUEST, "invalid_spec", &["shell", "section"])
        .await;
    post()
        .json(&json!({"name": "x", "kind": "custom"}))
        .refused(StatusCode::BAD_REQUEST, "invalid_spec", &["custom", "section"])
        .await;
    post()
        .json(&json!({"name": "x", "kind": "teleport"}))
        .refused(StatusCode::BAD_REQUEST, "bad_request", &["kind"])
        .await;
    let mut no_attempts = hello();
    no_attempts["max_attempts"] = json!(0);
    post()
        .json(&no_attempts)
        .refused(StatusCode::BAD_REQUEST, "invalid_spec", &["max_attempts"])
        .await;
    let mut no_name = hello();
    no_name["name"] = json!(" ");
    post()
        .json(&no_name)
        .refused(StatusCode::BAD_REQUEST, "invalid_spec", &["name"])
        .await;

    // Over the body limit (1 MiB): a valid document with a long name.
    let mut huge = hello();
    huge["name"] = json!("x".repeat(1_100_000));
    post()
        .json(&huge)
        .refused(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", &["too large"])
        .await;

    post()
        .json(&hello())
        .token(None)
        .refused(StatusCode::UNAUTHORIZED, "unauthorized", &["token"])
        .await;
    post()
        .json(&hello())
        .token(Some("wrong-token-0123456789"))
        .refused(StatusCode::UNAUTHORIZED, "unauthorized", &["token"])
        .await;

    assert_eq!(app_count(&rm).await, 0, "a refused submission must leave no app behind");
    // And a good one still goes through.
    assert_eq!(
        Call::new(&rm, Method::POST, "/v1/apps").json(&hello()).send().await.0,
        StatusCode::CREATED
    );
    assert_eq!(app_count(&rm).await, 1);
    rm.stop().await;
}

#[tokio::test]
async fn unknown_and_malformed_ids_and_queries() {
    init_logs();
    let rm = InProcessRm::start().await;
    let get = |path: &str| Call::new(&rm, Method::GET, path);

    let unknown_app = AppId {
        cluster_ts: 1_700_000_000_000,
        seq: 1,
    };
    get(&format!("/v1/apps/{unknown_app}"))
        .refused(StatusCode::NOT_FOUND, "app_not_found", &[&unknown_app.to_string()])
        .await;
    get(&format!("/v1/apps/{unknown_app}/containers"))
        .refused(StatusCode::NOT_FOUND, "app_not_found", &["not found"])
        .await;
    Call::new(&rm, Method::DELETE, format!("/v1/apps/{unknown_app}"))
        .refused(StatusCode::NOT_FOUND, "app_not_found", &["not found"])
        .await;
    get("/v1/apps/app_1")
        .refused(StatusCode::BAD_REQUEST, "bad_request", &["app_id", "app_1"])
        .await;
    Call::new(&rm, Method::DELETE, "/v1/apps/application_x_1")
        .refused(StatusCode::BAD_REQUEST, "bad_request", &["app_id"])
        .await;
    get("/v1/containers/container_1/logs/stdout")
        .refused(StatusCode::BAD_REQUEST, "bad_request", &["container_id"])
        .await;

    get("/v1/nodes/nosuch.example:8042")
        .refused(StatusCode::NOT_FOUND, "node_not_found", &["nosuch.example:8042"])
        .await;
    Call::new(&rm, Method::POST, "/v1/nodes/nosuch.example:8042/decommission")
        .json(&json!({"timeout_s": 10}))
        .refused(StatusCode::NOT_FOUND, "node_not_found", &["nosuch.example:8042"])
        .await;

    get("/v1/apps?colour=red")
        .refused(StatusCode::BAD_REQUEST, "bad_request", &["colour"])
        .await;
    get("/v1/apps?state=DONE")
        .refused(StatusCode::BAD_REQUEST, "bad_request", &["state"])
        .await;
    get("/v1/apps?limit=lots")
        .refused(StatusCode::BAD_REQUEST, "bad_request", &["limit"])
        .await;
    get("/v1/apps?limit=0")
        .refused(StatusCode::BAD_REQUEST, "bad_request", &["limit"])
        .await;
    assert_eq!(get("/v1/apps?state=RUNNING&limit=5").send().await.0, StatusCode::OK);
    rm.stop().await;
}

#[tokio::test]
async fn callers_without_the_right_credentials_are_refused() {
    init_logs();
    let rm = InProcessRm::start().await;
    for path in ["/v1/apps", "/v1/nodes", "/v1/cluster"] {
        Call::new(&rm, Method::GET, path)
            .token(None)
            .refused(StatusCode::UNAUTHORIZED, "unauthorized", &["Authorization"])
            .await;
        Call::new(&rm, Method::GET, path)
            .token(Some("not-a-token-of-this-cluster"))
            .refused(StatusCode::UNAUTHORIZED, "unauthorized", &["token is not valid"])
            .await;
    }

    // An agent must hold a join token of this cluster, or a node credential.
    let register = json!({
        "node_id": "127.0.0.1:1", "address": "127.0.0.1:1", "capacity": {"vcores": 2, "memory_mb": 1024},
        "rack": "/default-rack", "labels": [], "containers": []
    });
    Call::new(&rm, Method::POST, "/v1/internal/nodes/register")
        .json(&register)
        .token(None)
        .refused(StatusCode::UNAUTHORIZED, "unauthorized", &["Authorization"])
        .await;
    let other_clusters = ClusterSecret::new("not-the-cluster-secret-0123456789").join_token(spindle_protocol::now_ms() + 60_000);
    Call::new(&rm, Method::POST, "/v1/internal/nodes/register")
        .json(&register)
        .token(Some(&other_clusters))
        .refused(StatusCode::FORBIDDEN, "forbidden", &["join token is not valid"])
        .await;
    let expired = ClusterSecret::new(SECRET).join_token(spindle_protocol::now_ms() - 1);
    Call::new(&rm, Method::POST, "/v1/internal/nodes/register")
        .json(&register)
        .token(Some(&expired))
        .refused(StatusCode::FORBIDDEN, "forbidden", &["join token expired", "spindle join-token"])
        .await;
    // A user's token is not an agent's.
    Call::new(&rm, Method::POST, "/v1/internal/nodes/register")
        .json(&register)
        .token(Some(ADMIN_TOKEN))
        .refused(StatusCode::FORBIDDEN, "forbidden", &["neither a join token"])
        .await;
    assert!(
        rm.admin().nodes().await.unwrap().is_empty(),
        "a refused agent must not become a node"
    );

    // An AM must hold the token of its own app and attempt.
    let app_id = rm.user().submit(&shell_job("mine", "true", 1, 64, 0)).await.unwrap();
    let allocate = json!({"app_id": app_id, "attempt": 1, "asks": [], "releases": [], "progress": 0.0, "wait_ms": 0});
    let other_attempt = ClusterSecret::new(SECRET).am_token(app_id, 2);
    for token in ["not-an-am-token", other_attempt.as_str(), USER_TOKEN] {
        Call::new(&rm, Method::POST, "/v1/internal/am/allocate")
            .json(&allocate)
            .token(Some(token))
            .refused(StatusCode::FORBIDDEN, "forbidden", &["AM token", &app_id.to_string()])
            .await;
    }

    // Only admins decommission; only owners and admins kill.
    Call::new(&rm, Method::POST, "/v1/nodes/127.0.0.1:1/decommission")
        .json(&json!({"timeout_s": 10}))
        .token(Some(USER_TOKEN))
        .refused(StatusCode::FORBIDDEN, "forbidden", &["admin"])
        .await;
    let admins_app = rm.admin().submit(&shell_job("admins", "true", 1, 64, 0)).await.unwrap();
    Call::new(&rm, Method::DELETE, format!("/v1/apps/{admins_app}"))
        .token(Some(USER_TOKEN))
        .refused(StatusCode::FORBIDDEN, "forbidden", &[&admins_app.to_string(), "owner"])
        .await;
    assert!(
        !rm.admin().app(admins_app).await.unwrap().state.is_terminal(),
        "a refused kill must not kill"
    );

    // Killing twice is a conflict.
    assert_eq!(
        Call::new(&rm, Method::DELETE, format!("/v1/apps/{app_id}"))
            .token(Some(USER_TOKEN))
            .send()
            .await
            .0,
        StatusCode::OK
    );
    Call::new(&rm, Method::DELETE, format!("/v1/apps/{app_id}"))
        .token(Some(USER_TOKEN))
        .refused(StatusCode::CONFLICT, "conflict", &["already ended", "KILLED"])
        .await;
    rm.stop().await;
}

#[tokio::test]
async fn a_container_bigger_than_any_node_is_refused() {
    init_logs();
    let rm = InProcessRm::start().await;
    let agent_dir = support::shared_tempdir("spindle-test-");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node_id = NodeId(listener.local_addr().unwrap().to_string());
    let mut config = spindle_node_agent::AgentConfig::new(vec![rm.url.clone()], Some(support::join_token()), agent_dir.path().to_owned());
    config.advertise_host = Some("127.0.0.1".to_owned());
    config.capacity = Some(Resources::new(2, 1024));
    config.spindle_bin = support::spindle_bin();
    let agent_shutdown = tokio_util::sync::CancellationToken::new();
    let agent = tokio::spawn(spindle_node_agent::run(config, listener, agent_shutdown.clone()));
    let admin = rm.admin();
    wait_until(Duration::from_secs(30), "the agent to register", || async {
        admin.node(&node_id).await.is_ok()
    })
    .await;

    let post = || Call::new(&rm, Method::POST, "/v1/apps");
    post()
        .json(&hello_with("vcores", json!(4)))
        .refused(StatusCode::BAD_REQUEST, "invalid_spec", &["shell.vcores", "more than any node has"])
        .await;
    post()
        .json(&hello_with("memory_mb", json!(2048)))
        .refused(
            StatusCode::BAD_REQUEST,
            "invalid_spec",
            &["shell.memory_mb", "more than any node has"],
        )
        .await;
    let mut big_am = hello();
    big_am["am"] = json!({"vcores": 1, "memory_mb": 4096});
    post()
        .json(&big_am)
        .refused(StatusCode::BAD_REQUEST, "invalid_spec", &["am.memory_mb", "more than any node has"])
        .await;
    assert_eq!(app_count(&rm).await, 0, "a refused submission must leave no app behind");

    agent_shutdown.cancel();
    agent.await.unwrap().expect("the agent stops cleanly");
    rm.stop().await;
}

const GOOD_JOB: &str = "name = \"x\"\nkind = \"shell\"\n[shell]\ncommand = [\"true\"]\nvcores = 1\n";

#[tokio::test]
async fn the_cli_names_what_is_wrong() {
    init_logs();
    let rm = InProcessRm::start().await;
    let home = support::shared_tempdir("spindle-test-");
    let timeout = Duration::from_secs(30);
    let with_rm = |args: &[&str]| -> Vec<String> {
        let mut all: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
        all.extend(["--rm".to_owned(), rm.url.clone(), "--token".to_owned(), ADMIN_TOKEN.to_owned()]);
        all
    };

    for (name, text, field) in [
        ("negative.toml", GOOD_JOB.replace("vcores = 1", "vcores = -1"), "vcores"),
        ("typo.toml", GOOD_JOB.replace("vcores = 1", "vcorez = 1"), "vcorez"),
        ("zero.toml", GOOD_JOB.replace("vcores = 1", "vcores = 0"), "shell.vcores"),
    ] {
        let path = home.path().join(name);
        std::fs::write(&path, text).unwrap();
        let args = with_rm(&["submit", path.to_str().unwrap()]);
        let output = run_spindle(home.path(), &args.iter().map(String::as_str).collect::<Vec<_>>(), timeout).await;
        assert!(!output.success(), "{output}");
        assert!(output.stderr.contains(name) && output.stderr.contains(field), "{name}: {output}");
    }
    assert_eq!(app_count(&rm).await, 0);

    let output = run_spindle(
        home.path(),
        &["apps", "--rm", &rm.url, "--token", "wrong-token-0123456789"],
        timeout,
    )
    .await;
    assert!(!output.success(), "{output}");
    assert!(output.stderr.contains("token is not valid"), "{output}");

    let output = run_spindle(
        home.path(),
        &["apps", "--rm", "http://127.0.0.1:1", "--token", ADMIN_TOKEN],
        timeout,
    )
    .await;
    assert!(!output.success(), "{output}");
    assert!(output.stderr.contains("cannot reach"), "{output}");
    rm.stop().await;
}
