//! The PostgreSQL backend, for HA setups and big clusters.

use std::str::FromStr;
use std::time::Duration;

use spindle_protocol::{AppId, NodeId};
use sqlx::Postgres;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::shared::{Queries, Statement, epoch_from_sql};
use super::{Leadership, StoreError};
use crate::cluster::AppQuery;
use crate::records::{AppRecord, ContainerRecord, NodeRecord, Snapshot};

/// Locks the epoch row for the rest of the transaction, so a `begin_epoch` by a newer RM waits
/// for this write to finish, and a write waits for a `begin_epoch` in flight and then sees the
/// new epoch (READ COMMITTED re-reads a row it had to wait for). It also queues concurrent
/// writers one behind the other, as SQLite's write lock does.
const READ_EPOCH: &str = "SELECT epoch FROM cluster_meta WHERE id = 1 FOR UPDATE";
/// A REPEATABLE READ snapshot makes the three tables agree with each other at one instant.
const BEGIN_READ: &str = "BEGIN TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY";
const MAX_CONNECTIONS: u32 = 4;
/// Takes the lease if it is free, expired, or already this RM's (the same advertised URL: a
/// restarted RM that bound its listen address again), bumping the epoch. The expiry is
/// computed on the database's clock, so the RMs' clocks need not agree.
const TAKE_LEASE: &str = "UPDATE cluster_meta SET epoch = epoch + 1, started_at_ms = $1, leader_url = $2, \
     lease_expires_at = clock_timestamp() + make_interval(secs => $3) \
     WHERE id = 1 AND (lease_expires_at IS NULL OR lease_expires_at <= clock_timestamp() OR leader_url = $2) \
     RETURNING epoch";
/// Who holds the lease, when `TAKE_LEASE` did not get it.
const READ_LEASE: &str = "SELECT epoch, leader_url FROM cluster_meta WHERE id = 1";
/// Extends the lease, only for the epoch that holds it.
const RENEW_LEASE: &str =
    "UPDATE cluster_meta SET lease_expires_at = clock_timestamp() + make_interval(secs => $2) WHERE id = 1 AND epoch = $1";
/// Ends the lease now (a clean stop), so a standby need not wait for it to expire.
const RELEASE_LEASE: &str = "UPDATE cluster_meta SET lease_expires_at = clock_timestamp() WHERE id = 1 AND epoch = $1";
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

    pub(super) async fn try_lead(&self, url: &str, lease: Duration, started_at_ms: u64) -> Result<Leadership, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let won: Option<(i64,)> = sqlx::query_as(TAKE_LEASE)
            .bind(started_at_ms as i64)
            .bind(url)
            .bind(lease.as_secs_f64())
            .fetch_optional(&mut *conn)
            .await?;
        if let Some((epoch,)) = won {
            return Ok(Leadership::Won {
                epoch: epoch_from_sql(epoch)?,
            });
        }
        let (epoch, leader_url): (i64, String) = sqlx::query_as(READ_LEASE).fetch_one(&mut *conn).await?;
        Ok(Leadership::Held {
            epoch: epoch_from_sql(epoch)?,
            leader_url,
        })
    }

    pub(super) async fn renew_lease(&self, epoch: u64, lease: Duration) -> Result<bool, StoreError> {
        let renewed = sqlx::query(RENEW_LEASE)
            .bind(epoch as i64)
            .bind(lease.as_secs_f64())
            .execute(&self.pool)
            .await?;
        Ok(renewed.rows_affected() == 1)
    }

    pub(super) async fn release_lease(&self, epoch: u64) -> Result<(), StoreError> {
        sqlx::query(RELEASE_LEASE).bind(epoch as i64).execute(&self.pool).await?;
        Ok(())
    }

    pub(super) async fn load(&self, finished_in_memory: usize) -> Result<Snapshot, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_READ).await?;
        let snapshot = Queries::<Postgres>::load(&mut tx, finished_in_memory).await?;
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

    pub(super) async fn app_history(&self, query: &AppQuery) -> Result<Vec<AppRecord>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Queries::<Postgres>::app_history(&mut conn, query).await
    }

    pub(super) async fn app_with_containers(&self, app_id: AppId) -> Result<Option<(AppRecord, Vec<ContainerRecord>)>, StoreError> {
        // One read transaction: the app and its containers as of one point in time.
        let mut tx = self.pool.begin_with(BEGIN_READ).await?;
        let found = Queries::<Postgres>::app_with_containers(&mut tx, app_id).await?;
        tx.commit().await?;
        Ok(found)
    }

    pub(super) async fn forgotten_nodes(&self, node_id: Option<&NodeId>) -> Result<Vec<NodeRecord>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Queries::<Postgres>::forgotten_nodes(&mut conn, node_id).await
    }

    pub(super) async fn purge_forgotten_nodes_before(&self, cutoff_ms: u64) -> Result<u64, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Queries::<Postgres>::purge_forgotten_nodes_before(&mut conn, cutoff_ms).await
    }

    pub(super) async fn close(&self) {
        self.pool.close().await;
    }
}
