//! The embedded backend: one SQLite file in WAL mode, or a private in-memory database for tests.

use std::str::FromStr;
use std::time::Duration;

use sqlx::Sqlite;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use super::StoreError;
use super::shared::{Queries, Statement};
use crate::records::Snapshot;

/// Takes the write lock when the transaction begins, not at its first write: a deferred
/// transaction that reads first cannot wait for the lock it later needs and fails with
/// SQLITE_BUSY instead, so two concurrent writers would fail rather than queue.
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";
/// The write lock taken by `BEGIN IMMEDIATE` already keeps the epoch from changing under us.
const READ_EPOCH: &str = "SELECT epoch FROM cluster_meta WHERE id = 1";
/// How long a writer waits for another one before giving up with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// WAL lets readers run beside the one writer; a handful of connections is plenty for an RM
/// whose state changes go through one owner.
const MAX_CONNECTIONS: u32 = 4;

/// The SQLite store: a pool over one database file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Connections share the file; writers serialize on SQLite's write lock.
    pool: SqlitePool,
    /// What `Store::describe` shows: the URL with an absolute path.
    description: String,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at a `sqlite:` URL and migrates it.
    pub(super) async fn connect(url: &str) -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|_| StoreError::bad_url(url))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let in_memory = is_in_memory(url);
        let description = if in_memory {
            "sqlite::memory:".to_owned()
        } else {
            let path = options.get_filename();
            let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
            format!("sqlite://{}", path.display())
        };
        let pool_options = if in_memory {
            // An in-memory database lives only as long as a connection to it: keep exactly one
            // open for the life of the pool.
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            SqlitePoolOptions::new().max_connections(MAX_CONNECTIONS)
        };
        let pool = pool_options.connect_with(options).await?;
        sqlx::migrate!("../migrations/sqlite").run(&pool).await?;
        Ok(SqliteStore { pool, description })
    }

    pub(super) fn describe(&self) -> String {
        self.description.clone()
    }

    pub(super) async fn begin_epoch(&self, started_at_ms: u64) -> Result<u64, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Queries::<Sqlite>::bump_epoch(&mut conn, started_at_ms).await
    }

    pub(super) async fn load(&self) -> Result<Snapshot, StoreError> {
        // In WAL mode a read transaction sees one point in time across the three tables.
        let mut tx = self.pool.begin().await?;
        let snapshot = Queries::<Sqlite>::load(&mut tx).await?;
        tx.commit().await?;
        Ok(snapshot)
    }

    pub(super) async fn write(&self, epoch: u64, statements: Vec<Statement>) -> Result<(), StoreError> {
        let tx = self.pool.begin_with(BEGIN_WRITE).await?;
        Queries::<Sqlite>::fenced_write(tx, READ_EPOCH, epoch, statements).await
    }

    pub(super) async fn purge_finished_before(&self, cutoff_ms: u64) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let purged = Queries::<Sqlite>::purge_finished_before(&mut tx, cutoff_ms).await?;
        tx.commit().await?;
        Ok(purged)
    }

    pub(super) async fn close(&self) {
        self.pool.close().await;
    }
}

/// `sqlite::memory:`, or a URL asking for `mode=memory`: both open a private in-memory database.
fn is_in_memory(url: &str) -> bool {
    let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
    rest.starts_with(":memory:") || rest.contains("mode=memory")
}
