//! A store that stops accepting writes stops the RM (fail-stop): nothing it did not commit is
//! acknowledged, `run` ends with an error so a supervisor restarts it, and a restart recovers
//! what was acknowledged before.

mod support;

use std::net::Ipv4Addr;
use std::time::Duration;

use spindle_protocol::RmClient;
use spindle_resource_manager::config::{ApiUser, RmConfig};
use sqlx::{AssertSqlSafe, Connection};
use support::{ADMIN, ADMIN_TOKEN, PgSchema, SECRET, shell_job, wait_until};
use tokio_util::sync::CancellationToken;

struct RunningRm {
    client: RmClient,
    address: std::net::SocketAddr,
    task: tokio::task::JoinHandle<Result<(), spindle_resource_manager::RmError>>,
    shutdown: CancellationToken,
}

async fn start_rm(db: &str) -> RunningRm {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let address = listener.local_addr().unwrap();
    let config = RmConfig {
        listen: address,
        db: db.to_owned(),
        cluster_secret: SECRET.to_owned(),
        users: vec![ApiUser {
            name: ADMIN.to_owned(),
            token: ADMIN_TOKEN.to_owned(),
            admin: true,
            unix_user: None,
        }],
        ..RmConfig::default()
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(spindle_resource_manager::run(config, listener, shutdown.clone()));
    let client = RmClient::new(&[format!("http://{address}")], Some(ADMIN_TOKEN.to_owned()));
    wait_until(Duration::from_secs(20), "the RM to answer", || {
        let client = client.clone();
        async move { client.cluster().await.is_ok() }
    })
    .await;
    RunningRm {
        client,
        address,
        task,
        shutdown,
    }
}

async fn execute(url: &str, statement: &str) {
    let mut connection = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query(AssertSqlSafe(statement.to_owned()))
        .execute(&mut connection)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_failure_stops_the_rm_and_loses_nothing_acknowledged() {
    let schema = PgSchema::create().await;
    let rm = start_rm(&schema.url).await;
    let kept = rm.client.submit(&shell_job("kept", "true", 1, 64, 0)).await.unwrap();

    // The store refuses every write from now on.
    execute(&schema.url, "ALTER TABLE apps RENAME TO apps_away").await;
    let refused = rm.client.submit(&shell_job("refused", "true", 1, 64, 0)).await.unwrap_err();
    assert_eq!(refused.status(), Some(503), "{refused}");
    assert!(refused.to_string().contains("could not save the change"), "{refused}");

    let ended = tokio::time::timeout(Duration::from_secs(20), rm.task)
        .await
        .expect("the RM stops by itself")
        .unwrap();
    let error = ended.expect_err("run ends with an error, so a supervisor restarts the RM");
    assert!(error.to_string().contains("a store write failed"), "{error}");
    drop(rm.shutdown);

    // Repaired and restarted: the acknowledged app is there, the refused one is not.
    execute(&schema.url, "ALTER TABLE apps_away RENAME TO apps").await;
    let rm = start_rm(&schema.url).await;
    let apps = rm.client.apps(&Default::default()).await.unwrap();
    let names: Vec<&str> = apps.iter().map(|app| app.name.as_str()).collect();
    assert_eq!(names, ["kept"], "{apps:?}");
    assert_eq!(apps[0].app_id, kept);
    assert_eq!(rm.client.cluster().await.unwrap().epoch, 2);
    rm.shutdown.cancel();
    rm.task.await.unwrap().unwrap();
}

/// Another RM took over (a newer epoch in the store): this one is fenced at its next write and
/// exits within 10 s, even while clients hold connections open (an idle one, one that sent half
/// a request head), so a supervisor can restart it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_rm_exits_within_10_s_despite_clients_holding_connections() {
    use tokio::io::AsyncWriteExt;

    let schema = PgSchema::create().await;
    let rm = start_rm(&schema.url).await;
    let _idle = tokio::net::TcpStream::connect(rm.address).await.unwrap();
    let mut half = tokio::net::TcpStream::connect(rm.address).await.unwrap();
    half.write_all(b"GET /v1/cluster HTTP/1.1\r\nHost: x\r\n").await.unwrap();

    execute(&schema.url, "UPDATE cluster_meta SET epoch = epoch + 1").await;
    let fenced_at = std::time::Instant::now();
    let refused = rm.client.submit(&shell_job("late", "true", 1, 64, 0)).await.unwrap_err();
    assert_eq!(refused.status(), Some(503), "{refused}");
    let ended = tokio::time::timeout(Duration::from_secs(12), rm.task)
        .await
        .expect("the fenced RM stops by itself within the shutdown bound")
        .unwrap();
    let took = fenced_at.elapsed();
    ended.expect_err("run ends with an error, so a supervisor restarts the RM");
    eprintln!("fenced RM stopped {took:?} after the newer epoch appeared");
    assert!(took < Duration::from_secs(11), "took {took:?}");
    drop(rm.shutdown);
}
