//! The agent's HTTP API: who may do what, and how requests are refused.

mod common;

use common::{TestAgent, container_id};
use spindle_protocol::{AgentClient, ClientError, ErrorBody, NodeId, Resources, now_ms};

fn api_error(result: Result<impl std::fmt::Debug, ClientError>) -> (u16, String, String) {
    match result.expect_err("the request should be refused") {
        ClientError::Api { status, code, message } => (status, code, message),
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launches_need_a_valid_token_for_this_node() {
    let agent = TestAgent::start_without_rm(|_| {}).await;
    let client = agent.anonymous();

    let mut forged = agent.launch_request(1, 128, &["true"]);
    forged.token.resources.memory_mb = 4096;
    let (status, code, message) = api_error(client.launch(&forged).await);
    assert_eq!((status, code.as_str()), (403, "forbidden"));
    assert!(message.contains("signature"), "{message}");

    let mut elsewhere = agent.launch_request(2, 128, &["true"]);
    elsewhere.token = common::authority().sign_container(
        spindle_protocol::ContainerGrant {
            container_id: container_id(2),
            node_id: NodeId("other-host:8042".into()),
            resources: Resources::new(1, 128),
            user: "nobody".to_owned(),
        },
        now_ms() + 60_000,
    );
    let (status, _, message) = api_error(client.launch(&elsewhere).await);
    assert_eq!(status, 403);
    assert!(message.contains("other-host:8042"), "{message}");

    let mut expired = agent.launch_request(3, 128, &["true"]);
    expired.token = common::authority().sign_container(
        spindle_protocol::ContainerGrant {
            container_id: container_id(3),
            node_id: agent.node_id.clone(),
            resources: Resources::new(1, 128),
            user: "nobody".to_owned(),
        },
        now_ms() - 1,
    );
    let (status, _, message) = api_error(client.launch(&expired).await);
    assert_eq!(status, 403);
    assert!(message.contains("expired"), "{message}");

    // None of the refused launches left a trace.
    assert!(agent.list().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_ids_are_single_use_and_unknown_ids_are_not_found() {
    let agent = TestAgent::start_without_rm(|_| {}).await;
    agent.launch(1, 128, &["sleep", "30"]).await.unwrap();
    let (status, code, message) = api_error(agent.launch(1, 128, &["true"]).await);
    assert_eq!((status, code.as_str()), (409, "already_running"));
    assert!(message.contains(&container_id(1).to_string()), "{message}");

    let (status, code, _) = api_error(agent.admin().status(container_id(99)).await);
    assert_eq!((status, code.as_str()), (404, "container_not_found"));
    let (status, _, _) = api_error(agent.admin().stop(container_id(99)).await);
    assert_eq!(status, 404);
    let (status, _, _) = api_error(agent.admin().logs(container_id(99), "stdout").await);
    assert_eq!(status, 404);

    let listed = agent.list().await;
    assert_eq!(listed.len(), 1);
    agent.admin().stop(container_id(1)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_stops_need_the_agent_token_or_the_containers_own() {
    let agent = TestAgent::start_without_rm(|_| {}).await;
    agent.launch(1, 128, &["sleep", "30"]).await.unwrap();
    agent.launch(2, 128, &["true"]).await.unwrap();

    let (status, code, message) = api_error(agent.anonymous().status(container_id(1)).await);
    assert_eq!((status, code.as_str()), (401, "unauthorized"));
    assert!(message.contains("Bearer"), "{message}");

    let stranger = AgentClient::new(&agent.address, Some("not-a-token".into()));
    let (status, code, _) = api_error(stranger.status(container_id(1)).await);
    assert_eq!((status, code.as_str()), (403, "forbidden"));
    let (status, _, _) = api_error(stranger.stop(container_id(1)).await);
    assert_eq!(status, 403);
    let (status, _, _) = api_error(stranger.logs(container_id(1), "stdout").await);
    assert_eq!(status, 403);

    // Bearers that are not the RM's for this node: the RM's for another node, this node's own
    // credential towards the RM (an agent cannot act as the RM, even towards itself), and an
    // expired one.
    let authority = common::authority();
    let keys = spindle_protocol::NodeKeyring::new(&authority.credential(&agent.node_id, now_ms())).unwrap();
    for bearer in [
        authority.rm_bearer(&NodeId("127.0.0.1:1".into()), 1, now_ms() + 60_000),
        keys.bearer(),
        authority.rm_bearer(&agent.node_id, 1, now_ms() - 1),
    ] {
        let (status, _, _) = api_error(AgentClient::new(&agent.address, Some(bearer.clone())).status(container_id(1)).await);
        assert_eq!(status, 403, "{bearer}");
    }

    // Once the agent has heard of a newer RM epoch (an RM bearer of epoch 3), a replaced RM
    // (epoch 2) may neither read nor stop, nor launch: 409 naming both epochs.
    let newer = AgentClient::new(&agent.address, Some(authority.rm_bearer(&agent.node_id, 3, now_ms() + 60_000)));
    assert!(newer.status(container_id(1)).await.is_ok());
    let replaced = AgentClient::new(&agent.address, Some(authority.rm_bearer(&agent.node_id, 2, now_ms() + 60_000)));
    let (status, code, message) = api_error(replaced.stop(container_id(1)).await);
    assert_eq!((status, code.as_str()), (409, "stale_epoch"), "{message}");
    assert!(message.contains("epoch 2") && message.contains("epoch 3"), "{message}");
    let (status, code, _) = api_error(replaced.launch(&agent.launch_request(9, 64, &["true"])).await);
    assert_eq!((status, code.as_str()), (409, "stale_epoch"));

    // Container 2's AM may not touch container 1.
    let other_am = AgentClient::new(&agent.address, Some(agent.token(2, 128).signature));
    assert!(other_am.status(container_id(2)).await.is_ok());
    let (status, _, _) = api_error(other_am.status(container_id(1)).await);
    assert_eq!(status, 403);

    let own_am = AgentClient::new(&agent.address, Some(agent.token(1, 128).signature));
    assert!(own_am.status(container_id(1)).await.is_ok());
    let (status, _, message) = api_error(own_am.logs(container_id(1), "syslog").await);
    assert_eq!(status, 400);
    assert!(message.contains("stdout or stderr"), "{message}");
    own_am.stop(container_id(1)).await.unwrap();

    // Listing is for the RM only.
    let http = spindle_protocol::tls::client_builder().build().expect("an HTTP client");
    let url = format!("http://{}/v1/containers", agent.address);
    let answer = http.get(&url).bearer_auth(agent.token(1, 128).signature).send().await.unwrap();
    assert_eq!(answer.status(), 403);
    let answer = http.get(&url).send().await.unwrap();
    assert_eq!(answer.status(), 401);
    let healthz = http.get(format!("http://{}/healthz", agent.address)).send().await.unwrap();
    assert_eq!(healthz.status(), 200);
    assert_eq!(healthz.text().await.unwrap(), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused_with_json_errors() {
    let agent = TestAgent::start_without_rm(|_| {}).await;
    let http = spindle_protocol::tls::client_builder().build().expect("an HTTP client");
    let url = format!("http://{}/v1/containers", agent.address);

    let post = |body: String| http.post(&url).header("content-type", "application/json").body(body).send();
    let error_of = |answer: reqwest::Response| async move {
        let status = answer.status().as_u16();
        let body: ErrorBody = answer.json().await.expect("a JSON error body");
        (status, body.error.code, body.error.message)
    };

    let (status, code, message) = error_of(post("{not json".into()).await.unwrap()).await;
    assert_eq!((status, code.as_str()), (400, "bad_request"));
    assert!(!message.is_empty());

    let mut request = serde_json::to_value(agent.launch_request(1, 128, &["true"])).unwrap();
    request["launch"]["comand"] = serde_json::json!(["true"]);
    let (status, _, message) = error_of(post(request.to_string()).await.unwrap()).await;
    assert_eq!(status, 400);
    assert!(message.contains("comand"), "{message}");

    let mut request = serde_json::to_value(agent.launch_request(2, 128, &["true"])).unwrap();
    request["launch"]["command"] = serde_json::json!([]);
    let (status, _, message) = error_of(post(request.to_string()).await.unwrap()).await;
    assert_eq!(status, 400);
    assert!(message.contains("launch.command"), "{message}");

    // Announce a 2 MiB body and send none: the agent must answer from the length alone (a
    // client writing the whole body could see its connection closed before the answer).
    let (status, body) = raw_post_without_body(&agent.address, 2 * 1024 * 1024).await;
    let body: ErrorBody = serde_json::from_str(&body).expect("a JSON error body");
    let code = body.error.code;
    assert_eq!((status, code.as_str()), (413, "payload_too_large"));

    let answer = http
        .get(format!("http://{}/v1/containers/not-an-id", agent.address))
        .bearer_auth(agent.rm_bearer())
        .send()
        .await
        .unwrap();
    let (status, _, message) = error_of(answer).await;
    assert_eq!(status, 400);
    assert!(message.contains("not-an-id"), "{message}");

    let answer = http.get(format!("http://{}/v2/nothing", agent.address)).send().await.unwrap();
    let (status, code, _) = error_of(answer).await;
    assert_eq!((status, code.as_str()), (404, "not_found"));
}

/// Sends a POST that announces `content_length` bytes but sends none; returns status and body.
async fn raw_post_without_body(address: &str, content_length: usize) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /v1/containers HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {content_length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(common::PATIENCE, stream.read(&mut buffer))
            .await
            .expect("the agent answers without waiting for the body")
            .unwrap();
        received.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&received).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())
                        .flatten()
                })
                .expect("a content-length");
            if body.len() >= length {
                let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                return (status, body[..length].to_owned());
            }
        }
        assert!(read > 0, "connection closed before a full answer: {text}");
    }
}
