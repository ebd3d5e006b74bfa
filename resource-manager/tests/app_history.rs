//! Ended apps beyond `finished_apps_in_memory` against a real RM on SQLite: they leave memory
//! but stay listed (newest first, paged by `Link` headers across the memory/store boundary)
//! and readable one by one from the store, with the same view ACL; a restarted RM loads only
//! the bound and still lists everything.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use spindle_protocol::{AppId, AppReport, AppState, JobSpec, RmClient};
use spindle_resource_manager::config::{ApiUser, RmConfig};
use spindle_resource_manager::store::Store;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const ANN: &str = "app-history-ann-token-0123456789";
const BOB: &str = "app-history-bob-token-0123456789";
const IN_MEMORY: usize = 3;
const APPS: usize = 10;

struct Rm {
    url: String,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), spindle_resource_manager::error::RmError>>,
}

async fn start(db: &str) -> Rm {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let address = listener.local_addr().unwrap();
    let mut config = RmConfig {
        listen: address,
        db: db.to_owned(),
        cluster_secret: "app-history-secret-0123456789".to_owned(),
        finished_apps_in_memory: IN_MEMORY,
        ..RmConfig::default()
    };
    for (name, token) in [("ann", ANN), ("bob", BOB)] {
        config.users.push(ApiUser {
            name: name.to_owned(),
            token: token.to_owned(),
            admin: false,
            unix_user: None,
        });
    }
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(spindle_resource_manager::run(config, listener, shutdown.clone()));
    let url = format!("http://{address}");
    let client = RmClient::new(std::slice::from_ref(&url), Some(ANN.to_owned()));
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.apps(&Default::default()).await.is_err() {
        assert!(Instant::now() < deadline, "the RM did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Rm { url, shutdown, task }
}

impl Rm {
    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }

    async fn get(&self, token: &str, path: &str) -> reqwest::Response {
        reqwest::Client::new()
            .get(format!("{}{path}", self.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// Every page of `path`, following `Link: <…>; rel="next"`; the ids in order, and the pages.
    async fn all_pages(&self, token: &str, path: &str) -> (Vec<AppId>, usize) {
        let (mut ids, mut pages, mut next) = (Vec::new(), 0, Some(path.to_owned()));
        while let Some(path) = next.take() {
            let response = self.get(token, &path).await;
            assert_eq!(response.status(), 200, "{path}");
            next = response.headers().get("link").map(|link| {
                link.to_str()
                    .unwrap()
                    .split_once('<')
                    .unwrap()
                    .1
                    .split_once('>')
                    .unwrap()
                    .0
                    .to_owned()
            });
            let page: Vec<AppReport> = response.json().await.unwrap();
            ids.extend(page.iter().map(|report| report.app_id));
            pages += 1;
            assert!(pages <= APPS + 1, "the links never end");
        }
        (ids, pages)
    }
}

fn newest_first(submitted: &[AppId]) -> Vec<AppId> {
    submitted.iter().rev().copied().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_apps_leave_memory_but_stay_listed_and_readable_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("rm.db").display());
    let rm = start(&db).await;
    let ann = RmClient::new(std::slice::from_ref(&rm.url), Some(ANN.to_owned()));
    let spec: JobSpec = serde_json::from_value(serde_json::json!({
        "name": "short",
        "kind": "shell",
        "shell": { "command": ["true"], "containers": 1, "vcores": 1, "memory_mb": 64 },
    }))
    .unwrap();
    let mut submitted = Vec::new();
    for _ in 0..APPS {
        let app_id = ann.submit(&spec).await.unwrap();
        ann.kill(app_id).await.unwrap();
        submitted.push(app_id);
    }
    let running = ann.submit(&spec).await.unwrap();
    submitted.push(running);
    // The next ticks (every 250 ms) evict the oldest ended apps.
    tokio::time::sleep(Duration::from_millis(800)).await;

    let (ids, pages) = rm.all_pages(ANN, "/v1/apps?limit=4").await;
    assert_eq!(
        ids,
        newest_first(&submitted),
        "every app once, newest first, across memory and store"
    );
    assert_eq!(pages, 3);
    let (killed, _) = rm.all_pages(ANN, "/v1/apps?limit=2&state=KILLED&user=ann").await;
    assert_eq!(
        killed,
        newest_first(&submitted[..APPS]),
        "filters hold on both sides of the boundary"
    );

    // The oldest app is only in the store: read whole by its owner, redacted for others.
    let oldest = submitted[0];
    let report: AppReport = rm.get(ANN, &format!("/v1/apps/{oldest}")).await.json().await.unwrap();
    assert_eq!((report.app_id, report.state), (oldest, AppState::Killed));
    assert_ne!(report.diagnostics, "<hidden>");
    let seen_by_bob: AppReport = rm.get(BOB, &format!("/v1/apps/{oldest}")).await.json().await.unwrap();
    assert_eq!(seen_by_bob.diagnostics, "<hidden>", "the view ACL applies to history too");
    let containers = rm.get(ANN, &format!("/v1/apps/{oldest}/containers")).await;
    assert_eq!(containers.status(), 200);
    // Killing it answers as it did in memory: it ended (409); not yours (403).
    let again = ann.kill(oldest).await.unwrap_err();
    assert_eq!(again.status(), Some(409), "{again}");
    assert!(again.to_string().contains("already ended as KILLED"), "{again}");
    let bob = RmClient::new(std::slice::from_ref(&rm.url), Some(BOB.to_owned()));
    let forbidden = bob.kill(oldest).await.unwrap_err();
    assert_eq!(forbidden.status(), Some(403), "{forbidden}");
    let unknown = rm.get(ANN, "/v1/apps/application_1_9999").await;
    assert_eq!(unknown.status(), 404);
    let bad_cursor = rm.get(ANN, "/v1/apps?before=yesterday").await;
    assert_eq!(bad_cursor.status(), 400);
    assert!(bad_cursor.text().await.unwrap().contains("before"));
    rm.stop().await;

    // A restart loads the running app and the last IN_MEMORY ended ones, and lists all.
    let store = Store::connect(&db).await.unwrap();
    let loaded: BTreeSet<AppId> = store
        .load_bounded(IN_MEMORY)
        .await
        .unwrap()
        .apps
        .iter()
        .map(|app| app.app_id)
        .collect();
    let expected: BTreeSet<AppId> = submitted[APPS - IN_MEMORY..].iter().copied().collect();
    assert_eq!(loaded, expected);
    store.close().await;
    let rm = start(&db).await;
    let (ids, _) = rm.all_pages(ANN, "/v1/apps?limit=3").await;
    assert_eq!(ids, newest_first(&submitted));
    rm.stop().await;
}
