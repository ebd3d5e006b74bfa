//! The suite's plumbing: a database of its own per test, and fully populated records.

use spindle_protocol::{AppId, AppState, ContainerId, ContainerState, ExitReason, FinalStatus, JobSpec, NodeId, NodeState, Resources};
use spindle_resource_manager::records::{AppRecord, AttemptRecord, ContainerRecord, ForgottenNode, NodeRecord, WriteBatch};
use spindle_resource_manager::store::Store;
use sqlx::{AssertSqlSafe, Connection};

const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A database of its own for one test: a SQLite file in a temporary directory, or a PostgreSQL
/// schema created for the test and dropped when the test ends (even if it panics).
pub enum TestDb {
    Sqlite { _dir: tempfile::TempDir, url: String },
    Postgres { server_url: String, schema: String, url: String },
}

impl TestDb {
    /// A fresh database file in a temporary directory, deleted with it.
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let url = format!("sqlite://{}", dir.path().join("spindle.db").display());
        TestDb::Sqlite { _dir: dir, url }
    }

    /// Creates a random schema with a plain connection, then points the store at it through the
    /// URL (`options=-c search_path=…`), so PostgreSQL tests run in parallel without meeting.
    /// `None` (the test skips, saying so) when no server answers, unless SPINDLE_REQUIRE_POSTGRES
    /// is set (CI), which makes it a failure.
    pub async fn postgres() -> Option<TestDb> {
        let server_url = std::env::var("SPINDLE_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_POSTGRES.to_owned());
        let mut admin = match sqlx::PgConnection::connect(&server_url).await {
            Ok(admin) => admin,
            Err(error) => {
                let why = format!("PostgreSQL is unreachable at {server_url} ({error}): start it, or point SPINDLE_TEST_POSTGRES at one");
                assert!(
                    std::env::var_os("SPINDLE_REQUIRE_POSTGRES").is_none(),
                    "SPINDLE_REQUIRE_POSTGRES is set, but {why}"
                );
                // Straight to stderr, not `eprintln!`, which the test harness captures: the skip must show.
                use std::io::Write as _;
                let _ = writeln!(
                    std::io::stderr(),
                    "skipped: {why} (set SPINDLE_REQUIRE_POSTGRES to make this a failure)"
                );
                return None;
            }
        };
        // The server picks the name, so concurrent test processes cannot collide.
        let schema: String = sqlx::query_scalar("SELECT 'spindle_test_' || replace(gen_random_uuid()::text, '-', '')")
            .fetch_one(&mut admin)
            .await
            .expect("name a test schema");
        sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&mut admin)
            .await
            .expect("create the test schema");
        let separator = if server_url.contains('?') { '&' } else { '?' };
        let url = format!("{server_url}{separator}options=-c%20search_path%3D{schema}");
        Some(TestDb::Postgres { server_url, schema, url })
    }

    /// The URL the store under test connects with.
    pub fn url(&self) -> &str {
        match self {
            TestDb::Sqlite { url, .. } | TestDb::Postgres { url, .. } => url,
        }
    }

    /// A new store (with its own pool) on this test's database.
    pub async fn connect(&self) -> Store {
        Store::connect(self.url())
            .await
            .unwrap_or_else(|error| panic!("connect to {}: {error}", self.url()))
    }

    /// Runs raw SQL under the store, as a bug or a bad disk would.
    pub async fn execute(&self, sql: &str) {
        let sql = AssertSqlSafe(sql.to_owned());
        match self {
            TestDb::Sqlite { url, .. } => {
                let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
                sqlx::query(sql).execute(&mut conn).await.unwrap();
            }
            TestDb::Postgres { url, .. } => {
                let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
                sqlx::query(sql).execute(&mut conn).await.unwrap();
            }
        }
    }

    /// Reads one text column of raw SQL, to look at the copied columns beside the docs.
    pub async fn fetch_strings(&self, sql: &str) -> Vec<String> {
        let sql = AssertSqlSafe(sql.to_owned());
        match self {
            TestDb::Sqlite { url, .. } => {
                let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
                sqlx::query_scalar(sql).fetch_all(&mut conn).await.unwrap()
            }
            TestDb::Postgres { url, .. } => {
                let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
                sqlx::query_scalar(sql).fetch_all(&mut conn).await.unwrap()
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let TestDb::Postgres { server_url, schema, .. } = self else {
            return;
        };
        let (server_url, drop_schema) = (server_url.clone(), format!("DROP SCHEMA {schema} CASCADE"));
        // Drop cannot await, and the test's runtime may be unwinding: use a runtime of our own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let mut admin = sqlx::PgConnection::connect(&server_url).await?;
                sqlx::query("SET lock_timeout = '10s'").execute(&mut admin).await?;
                sqlx::query(AssertSqlSafe(drop_schema)).execute(&mut admin).await?;
                Ok::<(), sqlx::Error>(())
            })
        });
        if let Ok(Err(error)) = cleanup.join() {
            eprintln!("could not drop test schema {schema}: {error}");
        }
    }
}

/// The RM start time baked into every id of the suite.
pub const CLUSTER_TS: u64 = 1_700_000_000_000;

/// The id of app `seq`.
pub fn app_id(seq: u32) -> AppId {
    AppId {
        cluster_ts: CLUSTER_TS,
        seq,
    }
}

/// The id of container `seq` of app `app_seq`.
pub fn container_id(app_seq: u32, seq: u64) -> ContainerId {
    ContainerId {
        app: app_id(app_seq),
        attempt: 2,
        epoch: 3,
        seq,
    }
}

/// The brief's shell job, with a non-default queue and priority.
pub fn shell_spec() -> JobSpec {
    let mut spec: JobSpec = serde_json::from_value(serde_json::json!({
        "name": "x", "kind": "shell", "shell": {"command": ["true"], "containers": 2}
    }))
    .unwrap();
    spec.queue = "analytics".to_owned();
    spec.priority = 7;
    spec
}

/// An app with every optional field set and two attempts.
pub fn app(seq: u32, submitted_at_ms: u64, state: AppState, finished_at_ms: Option<u64>) -> AppRecord {
    let attempt = |number: u32| AttemptRecord {
        attempt: number,
        am_container: Some(container_id(seq, u64::from(number))),
        node_id: Some(NodeId(format!("node-{number}:8042"))),
        registered: true,
        started_at_ms: submitted_at_ms + 10 * u64::from(number),
        finished_at_ms: Some(submitted_at_ms + 15 * u64::from(number)),
        diagnostics: format!("attempt {number} lost its node"),
        counts_as_failure: number == 1,
    };
    AppRecord {
        app_id: app_id(seq),
        user: "alice".to_owned(),
        spec: shell_spec(),
        state,
        final_status: FinalStatus::Succeeded,
        diagnostics: "all good".to_owned(),
        progress: 0.75,
        attempts: vec![attempt(1), attempt(2)],
        submitted_at_ms,
        started_at_ms: Some(submitted_at_ms + 5),
        finished_at_ms,
        unix_user: "nobody".to_owned(),
        submission_key: None,
        requests: [("savepoints/2".to_owned(), serde_json::json!({"dir": "/data/sp", "stop": true}))].into(),
        last_request: 2,
    }
}

/// A completed container with every optional field set.
pub fn container(app_seq: u32, seq: u64, state: ContainerState) -> ContainerRecord {
    ContainerRecord {
        container_id: container_id(app_seq, seq),
        node_id: NodeId("node-1:8042".to_owned()),
        node_address: "10.0.0.1:8042".to_owned(),
        resources: Resources::new(2, 1536),
        state,
        is_am: seq == 1,
        exit_code: Some(137),
        exit_reason: Some(ExitReason::ExceededMemory),
        diagnostics: "killed: 1600 MB > 1536 MB".to_owned(),
        allocated_at_ms: 1_000,
        launch_deadline_ms: 61_000,
        started_at_ms: Some(1_200),
        finished_at_ms: Some(9_000),
    }
}

/// A node with every optional field set.
pub fn node(name: &str, state: NodeState) -> NodeRecord {
    NodeRecord {
        node_id: NodeId(name.to_owned()),
        address: format!("http://{name}"),
        rack: "/rack-7".to_owned(),
        labels: vec!["gpu".to_owned(), "ssd".to_owned()],
        capacity: Resources::new(16, 65_536),
        state,
        decommission_deadline_ms: Some(123_456),
        isolation: Default::default(),
        departed_at_ms: Some(234_567),
        forgotten: None,
    }
}

/// A departed node the RM forgot at `at_ms`: history, which `load` leaves out.
pub fn forgotten_node(name: &str, state: NodeState, at_ms: u64) -> NodeRecord {
    NodeRecord {
        forgotten: Some(ForgottenNode {
            at_ms,
            last_heartbeat_ms: at_ms - 1_000,
        }),
        ..node(name, state)
    }
}

/// A batch from its three lists.
pub fn batch(apps: Vec<AppRecord>, containers: Vec<ContainerRecord>, nodes: Vec<NodeRecord>) -> WriteBatch {
    WriteBatch { apps, containers, nodes }
}
