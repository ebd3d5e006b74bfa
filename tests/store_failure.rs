//! A store that stops accepting writes stops the RM (fail-stop): nothing it did not commit is
//! acknowledged, `run` ends with an error so a supervisor restarts it, and a restart recovers
//! what was acknowledged before. A fenced RM (another took over) stops acting and stands by.

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
    use tokio::io::AsyncWriteExt;

    let Some(schema) = PgSchema::create().await else { return };
    let rm = start_rm(&schema.url).await;
    let kept = rm.client.submit(&shell_job("kept", "true", 1, 64, 0)).await.unwrap();
    // Clients holding connections (an idle one, one that sent half a request head) do not
    // keep a stopping RM alive past its bound.
    let _idle = tokio::net::TcpStream::connect(rm.address).await.unwrap();
    let mut half = tokio::net::TcpStream::connect(rm.address).await.unwrap();
    half.write_all(b"GET /v1/cluster HTTP/1.1\r\nHost: x\r\n").await.unwrap();

    // The store refuses every write from now on (not for want of the database: a refusal, so
    // the RM stops rather than stepping down to standby).
    execute(&schema.url, "ALTER TABLE apps RENAME TO apps_away").await;
    let refused = rm.client.submit(&shell_job("refused", "true", 1, 64, 0)).await.unwrap_err();
    assert_eq!(refused.status(), Some(503), "{refused}");
    assert!(refused.to_string().contains("could not save the change"), "{refused}");

    let ended = tokio::time::timeout(Duration::from_secs(12), rm.task)
        .await
        .expect("the RM stops by itself within its bound")
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

/// Another RM took over (a newer epoch in the store): this one is fenced at its next write,
/// refuses the change (503, nothing written) and stops acting at once. On PostgreSQL it then
/// stands for leadership again rather than exiting: here the lease still names its own URL, so
/// it takes over again in a newer epoch and serves, idle and half-sent connections or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_rm_stops_acting_and_stands_for_leadership_again() {
    use tokio::io::AsyncWriteExt;

    let Some(schema) = PgSchema::create().await else { return };
    let rm = start_rm(&schema.url).await;
    let _idle = tokio::net::TcpStream::connect(rm.address).await.unwrap();
    let mut half = tokio::net::TcpStream::connect(rm.address).await.unwrap();
    half.write_all(b"GET /v1/cluster HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let epoch = rm.client.cluster().await.unwrap().epoch;

    execute(&schema.url, "UPDATE cluster_meta SET epoch = epoch + 1").await;
    let refused = rm.client.submit(&shell_job("late", "true", 1, 64, 0)).await.unwrap_err();
    assert_eq!(refused.status(), Some(503), "{refused}");
    let new_epoch = wait_until(Duration::from_secs(15), "the RM to lead again in a newer epoch", || {
        let client = rm.client.clone();
        async move {
            client
                .cluster()
                .await
                .ok()
                .map(|cluster| cluster.epoch)
                .filter(|now| *now > epoch + 1)
        }
    })
    .await;
    let apps = rm.client.apps(&Default::default()).await.unwrap();
    assert!(apps.is_empty(), "the fenced submission wrote nothing: {apps:?}");
    rm.client.submit(&shell_job("later", "true", 1, 64, 0)).await.unwrap();
    eprintln!("fenced at epoch {epoch}, leading again at epoch {new_epoch}");
    assert!(!rm.task.is_finished(), "the RM still runs");
    // Hung up first: held connections would make the stop wait its whole graceful bound.
    drop((_idle, half));
    rm.shutdown.cancel();
    rm.task.await.unwrap().unwrap();
}
