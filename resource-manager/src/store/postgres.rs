//! The PostgreSQL backend, for HA setups and big clusters.

use std::str::FromStr;
use std::time::Duration;

use sqlx::Postgres;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::StoreError;
use super::shared::{Queries, Statement};
use crate::records::Snapshot;

/// Locks the epoch row for the rest of the transaction, so a `begin_epoch` by a newer RM waits
/// for this write to finish, and a write waits for a `begin_epoch` in flight and then sees the
/// new epoch (READ COMMITTED re-reads a row it had to wait for). It also queues concurrent
/// writers one behind the other, as SQLite's write lock does.
const READ_EPOCH: &str = "SELECT epoch FROM cluster_meta WHERE id = 1 FOR UPDATE";
/// A REPEATABLE READ snapshot makes the three tables agree with each other at one instant.
const BEGIN_READ: &str = "BEGIN TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY";
const MAX_CONNECTIONS: u32 = 4;
/// Fail a connect or an acquire in a bounded time when the server is down, with the error.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// The PostgreSQL store: a pool over one database (and the schema its URL selects).
#[derive(Debug, Clone)]
pub struct PgStore {
    /// Connections to the server.
    pool: PgPool,
    /// What `Store::describe` shows: host, port and database, never the password.
    description: String,
}

impl PgStore {
    /// Connects with a `postgres://` URL and migrates the database. The URL may choose a schema
    /// with `?options=-c search_path=NAME` (`%20` and `%3D` encoded): the tables and sqlx's
    /// migration table are then created in that schema.
    pub(super) async fn connect(url: &str) -> Result<PgStore, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(|_| StoreError::bad_url(url))?;
        let description = format!(
            "postgres://{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or_else(|| options.get_username())
        );
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        sqlx::migrate!("../migrations/postgres").run(&pool).await?;
        Ok(PgStore { pool, description })
    }

    pub(super) fn describe(&self) -> String {
        self.description.clone()
    }

    pub(super) async fn begin_epoch(&self, started_at_ms: u64) -> Result<u64, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Queries::<Postgres>::bump_epoch(&mut conn, started_at_ms).await
    }

    pub(super) async fn load(&self) -> Result<Snapshot, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_READ).await?;
        let snapshot = Queries::<Postgres>::load(&mut tx).await?;
        tx.commit().await?;
        Ok(snapshot)
    }

    pub(super) async fn write(&self, epoch: u64, statements: Vec<Statement>) -> Result<(), StoreError> {
        let tx = self.pool.begin().await?;
        Queries::<Postgres>::fenced_write(tx, READ_EPOCH, epoch, statements).await
    }

    pub(super) async fn purge_finished_before(&self, cutoff_ms: u64) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let purged = Queries::<Postgres>::purge_finished_before(&mut tx, cutoff_ms).await?;
        tx.commit().await?;
        Ok(purged)
    }

    pub(super) async fn close(&self) {
        self.pool.close().await;
    }
}
