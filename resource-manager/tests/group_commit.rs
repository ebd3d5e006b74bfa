//! Group commit against a real RM on SQLite: many submissions at once are each answered only
//! once durable, share transactions (fewer commits than changes, as `/metrics` counts them),
//! and every answered one is in the store when it is opened again after the RM stopped.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use spindle_protocol::{JobSpec, RmClient};
use spindle_resource_manager::config::{ApiUser, RmConfig};
use spindle_resource_manager::store::Store;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "group-commit-token-0123456789";
const SUBMISSIONS: usize = 200;

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_changes_share_transactions_and_every_answered_one_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("rm.db").display());
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let address = listener.local_addr().unwrap();
    let mut config = RmConfig {
        listen: address,
        db: db.clone(),
        cluster_secret: "group-commit-secret-0123456789".to_owned(),
        ..RmConfig::default()
    };
    config.users.push(ApiUser {
        name: "ann".to_owned(),
        token: TOKEN.to_owned(),
        admin: false,
        unix_user: None,
    });
    let shutdown = CancellationToken::new();
    let rm = tokio::spawn(spindle_resource_manager::run(config, listener, shutdown.clone()));
    let url = format!("http://{address}");
    let client = RmClient::new(std::slice::from_ref(&url), Some(TOKEN.to_owned()));
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.apps(&Default::default()).await.is_err() {
        assert!(Instant::now() < deadline, "the RM did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = || async {
        reqwest::Client::new()
            .get(format!("{url}/metrics"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let before = metrics().await;

    let spec: JobSpec = serde_json::from_value(serde_json::json!({
        "name": "sleeper",
        "kind": "shell",
        "shell": { "command": ["sleep", "1"], "containers": 1, "vcores": 1, "memory_mb": 64 },
    }))
    .unwrap();
    let submissions: Vec<_> = (0..SUBMISSIONS)
        .map(|_| {
            let (client, spec) = (client.clone(), spec.clone());
            tokio::spawn(async move { client.submit(&spec).await.unwrap() })
        })
        .collect();
    let mut answered = Vec::new();
    for submission in submissions {
        answered.push(submission.await.unwrap());
    }

    let after = metrics().await;
    let changes = metric(&after, "spindle_store_changes_total") - metric(&before, "spindle_store_changes_total");
    let commits = metric(&after, "spindle_store_commits_total") - metric(&before, "spindle_store_commits_total");
    assert!(changes >= SUBMISSIONS as f64, "{changes} changes for {SUBMISSIONS} submissions");
    assert!(
        commits < changes,
        "{commits} commits for {changes} changes: none shared a transaction"
    );

    shutdown.cancel();
    rm.await.unwrap().unwrap();
    let store = Store::connect(&db).await.unwrap();
    let stored = store.load().await.unwrap();
    for app_id in &answered {
        assert!(
            stored.apps.iter().any(|app| app.app_id == *app_id),
            "{app_id} was answered but is not in the store"
        );
    }
}
