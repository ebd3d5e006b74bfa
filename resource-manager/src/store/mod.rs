//! The RM's durable store: apps (with their attempts), containers and nodes, kept in SQLite or
//! PostgreSQL behind one interface, plus the cluster epoch that fences a stale RM's writes.
//!
//! ```text
//!              Store (enum: no dyn, one match per call)
//!             /                                        \
//!   SqliteStore (sqlite.rs)                    PgStore (postgres.rs)
//!   BEGIN IMMEDIATE, WAL                       BEGIN, SELECT … FOR UPDATE
//!             \                                        /
//!              shared.rs: the SQL, upsert building, doc decoding
//! ```
//!
//! Each record is stored whole as JSON (`doc`), beside a few copied columns that queries filter
//! or sort on. Nodes the RM has forgotten keep their row (`forgotten_at_ms` set) as history.
//! Glossary: *epoch* — a counter bumped at each RM start; a write carries the epoch its RM got,
//! and is *fenced* (refused) once a newer RM has bumped it.

mod postgres;
mod shared;
mod sqlite;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

use std::time::Duration;

use spindle_protocol::{AppId, NodeId};

use crate::cluster::AppQuery;
use crate::records::{AppRecord, ContainerRecord, NodeRecord, Snapshot, WriteBatch};

/// The URL forms `Store::connect` accepts, quoted by `StoreError::BadUrl`.
const ACCEPTED_URLS: &str = "sqlite://PATH (a file, created if missing), sqlite::memory: (in memory, for tests) \
     or postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE (postgresql:// too)";

/// What can go wrong talking to the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused a statement or could not be reached.
    #[error("store database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The embedded schema migrations could not be applied.
    #[error("store schema migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A newer RM has bumped the epoch since this one started: nothing was written, and this RM
    /// must stop acting as the leader.
    #[error(
        "write refused: this resource manager holds epoch {ours} but the store is at epoch {current}; \
         another resource manager has taken over, so this one must stop"
    )]
    Fenced {
        /// The epoch the refused writer holds.
        ours: u64,
        /// The epoch in the store.
        current: u64,
    },
    /// A stored row does not decode (or a record could not be stored faithfully).
    #[error("store record {what} is corrupt: {reason}")]
    Corrupt {
        /// Which row, e.g. `apps row application_1700000000000_0001`.
        what: String,
        /// Why it does not decode.
        reason: String,
    },
    /// The database's file or directory could not be created or made owner-only.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path.
        what: String,
        source: std::io::Error,
    },
    /// Another process (an RM, or a `spindle local`) has this SQLite database open.
    #[error(
        "the SQLite database {database} is in use by another resource manager (it holds {lock}): stop that one first, \
         or, for several resource managers on one store, use PostgreSQL"
    )]
    InUse { database: String, lock: String },
    /// The store URL has a scheme (or parameters) this build does not understand.
    #[error("unsupported store URL `{url}`: use {ACCEPTED_URLS}")]
    BadUrl {
        /// The URL as given, with any password masked.
        url: String,
    },
}

/// Opens `path` (creating it 0600) and takes an exclusive lock on it (`flock`) without
/// waiting: `Ok(None)` if another open file (another process, or another store in this one)
/// holds it. The lock lasts as long as the returned file is open.
pub fn exclusive_lock(path: &std::path::Path) -> std::io::Result<Option<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(err)) => Err(err),
    }
}

impl StoreError {
    pub(crate) fn bad_url(url: &str) -> StoreError {
        StoreError::BadUrl { url: mask_password(url) }
    }
}

/// How a store is opened, beyond its URL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreOptions {
    /// SQLite's `synchronous` pragma; PostgreSQL has settings of its own on the server.
    pub sqlite_synchronous: SqliteSynchronous,
}

/// How hard SQLite pushes a commit to disk before the RM acknowledges it (`sqlite_synchronous`
/// in the RM config: `"full"` or `"normal"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SqliteSynchronous {
    /// The WAL is synced at every commit: an acknowledged change survives a power loss or an
    /// OS crash. The default, since the RM tells clients, agents and AMs only what is durable.
    #[default]
    Full,
    /// The WAL is synced at checkpoints only: an RM crash loses nothing, but a power loss or
    /// OS crash may lose the last acknowledged commits. Faster commits, for disposable clusters.
    Normal,
}

impl<'de> serde::Deserialize<'de> for SqliteSynchronous {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.to_ascii_lowercase().as_str() {
            "full" => Ok(SqliteSynchronous::Full),
            "normal" => Ok(SqliteSynchronous::Normal),
            _ => Err(serde::de::Error::custom(format!(
                "sqlite_synchronous is \"{text}\": use \"full\" (commits survive power loss; the default) \
                 or \"normal\" (faster; a power loss may lose the last commits)"
            ))),
        }
    }
}

/// The outcome of one try at leadership (`Store::try_lead`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leadership {
    /// This RM leads, in this new epoch, and must renew its lease to go on.
    Won { epoch: u64 },
    /// Another RM's lease has not expired: it leads (at `leader_url`) in `epoch`.
    Held { epoch: u64, leader_url: String },
}

impl StoreError {
    /// Whether the database could not be reached (down, restarting, network), as opposed to a
    /// refusal or a bad record: what a retry may cure.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Database(err) => {
                matches!(
                    err,
                    sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_)
                ) || err
                    .as_database_error()
                    .and_then(|db| db.code())
                    // Class 57 (operator intervention: admin shutdown, crash shutdown, cannot connect
                    // now) and 08 (connection exception).
                    .is_some_and(|code| code.starts_with("57") || code.starts_with("08"))
            }
            _ => false,
        }
    }
}

/// The RM's durable store, on one of the two backends. Cheap to clone: clones share the pool.
#[derive(Debug, Clone)]
pub enum Store {
    /// The embedded default: one SQLite file.
    Sqlite(SqliteStore),
    /// A PostgreSQL database, for HA and big clusters.
    Postgres(PgStore),
}

impl Store {
    /// Opens the store at `url` with the default options (see [`Store::connect_with`]).
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        Store::connect_with(url, StoreOptions::default()).await
    }

    /// Opens the store at `url` and applies the embedded migrations:
    /// `sqlite://PATH` (created if missing, owner-only; WAL, `options.sqlite_synchronous`,
    /// foreign keys, busy timeout), `sqlite::memory:` for tests, or `postgres://…` (a
    /// `?options=-c%20search_path%3DNAME` parameter puts the tables in schema NAME).
    pub async fn connect_with(url: &str, options: StoreOptions) -> Result<Store, StoreError> {
        if url.starts_with("sqlite:") {
            return Ok(Store::Sqlite(SqliteStore::connect(url, options.sqlite_synchronous).await?));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Store::Postgres(PgStore::connect(url).await?));
        }
        Err(StoreError::bad_url(url))
    }

    /// A short description for logs and `GET /v1/cluster`, e.g. `sqlite:///var/lib/spindle.db`
    /// or `postgres://db.example:5432/spindle`; never a password.
    pub fn describe(&self) -> String {
        match self {
            Store::Sqlite(store) => store.describe(),
            Store::Postgres(store) => store.describe(),
        }
    }

    /// Increments the cluster epoch (0 in a new database, so the first call returns 1), records
    /// now as the RM's start time, and returns the new epoch. Called once at each RM start.
    pub async fn begin_epoch(&self) -> Result<u64, StoreError> {
        let started_at_ms = spindle_protocol::now_ms();
        match self {
            Store::Sqlite(store) => store.begin_epoch(started_at_ms).await,
            Store::Postgres(store) => store.begin_epoch(started_at_ms).await,
        }
    }

    /// One try at leading the RMs of this store, as the RM reachable at `url`. On PostgreSQL:
    /// wins if the lease is free, expired or already `url`'s, opening a new epoch (which fences
    /// the last leader's writes) held for `lease` unless renewed; otherwise says who holds it.
    /// On SQLite, which serves one RM, it always wins, as `begin_epoch` does.
    pub async fn try_lead(&self, url: &str, lease: Duration) -> Result<Leadership, StoreError> {
        let started_at_ms = spindle_protocol::now_ms();
        match self {
            Store::Sqlite(store) => store.try_lead(url, started_at_ms).await,
            Store::Postgres(store) => store.try_lead(url, lease, started_at_ms).await,
        }
    }

    /// Extends the lease of `epoch` by `lease` from now (the database's now); `false` if
    /// another RM has taken it, after which this one must stop acting as the leader.
    pub async fn renew_lease(&self, epoch: u64, lease: Duration) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(true),
            Store::Postgres(store) => store.renew_lease(epoch, lease).await,
        }
    }

    /// Gives the lease of `epoch` up at once (a clean stop): a standby takes over without
    /// waiting for it to expire.
    pub async fn release_lease(&self, epoch: u64) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(_) => Ok(()),
            Store::Postgres(store) => store.release_lease(epoch).await,
        }
    }

    /// Whether several RMs may share this store and elect a leader (PostgreSQL), or it serves
    /// exactly one (SQLite).
    pub fn elects_leader(&self) -> bool {
        matches!(self, Store::Postgres(_))
    }

    /// Everything to reload at restart: apps by `submitted_at_ms` then id, containers by id,
    /// nodes by id (ids compared as strings, byte by byte), but not the nodes the RM forgot.
    /// Every app is reloaded; see [`Store::load_bounded`] for a bound on ended ones.
    pub async fn load(&self) -> Result<Snapshot, StoreError> {
        self.load_bounded(usize::MAX).await
    }

    /// What a restart reloads: as [`Store::load`], but of the ended apps (none of whose
    /// containers still run) only the `finished_in_memory` that ended last, with their
    /// containers; the others stay in the store as history (`app_history`).
    pub async fn load_bounded(&self, finished_in_memory: usize) -> Result<Snapshot, StoreError> {
        match self {
            Store::Sqlite(store) => store.load(finished_in_memory).await,
            Store::Postgres(store) => store.load(finished_in_memory).await,
        }
    }

    /// A page of the stored apps older (by id) than `query.before` (all if `None`), newest
    /// first, matching its state, queue and user: the history of apps no longer in memory.
    pub async fn app_history(&self, query: &AppQuery) -> Result<Vec<AppRecord>, StoreError> {
        match self {
            Store::Sqlite(store) => store.app_history(query).await,
            Store::Postgres(store) => store.app_history(query).await,
        }
    }

    /// One stored app with all its containers (by id), read at one point in time.
    pub async fn app_with_containers(&self, app_id: AppId) -> Result<Option<(AppRecord, Vec<ContainerRecord>)>, StoreError> {
        match self {
            Store::Sqlite(store) => store.app_with_containers(app_id).await,
            Store::Postgres(store) => store.app_with_containers(app_id).await,
        }
    }

    /// Upserts every record of `batch` in one transaction, if the store's epoch is still `epoch`;
    /// otherwise writes nothing and returns `Fenced`. An empty batch is a no-op. A record present
    /// twice in the batch is stored as its last version.
    pub async fn commit(&self, epoch: u64, batch: &WriteBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let statements = shared::upsert_statements(batch)?;
        match self {
            Store::Sqlite(store) => store.write(epoch, statements).await,
            Store::Postgres(store) => store.write(epoch, statements).await,
        }
    }

    /// Deletes apps in a terminal state that finished before `cutoff_ms`, with their containers;
    /// returns how many apps went. Retention: keeps the database from growing without bound.
    pub async fn purge_finished_before(&self, cutoff_ms: u64) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(store) => store.purge_finished_before(cutoff_ms).await,
            Store::Postgres(store) => store.purge_finished_before(cutoff_ms).await,
        }
    }

    /// The last records of the nodes the RM has forgotten (departed longer than
    /// `departed_node_expiry`), by id: history, which `load` leaves out.
    pub async fn forgotten_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        match self {
            Store::Sqlite(store) => store.forgotten_nodes(None).await,
            Store::Postgres(store) => store.forgotten_nodes(None).await,
        }
    }

    /// The last record of `node_id` if the RM has forgotten it; `None` if it is tracked or unknown.
    pub async fn forgotten_node(&self, node_id: &NodeId) -> Result<Option<NodeRecord>, StoreError> {
        let found = match self {
            Store::Sqlite(store) => store.forgotten_nodes(Some(node_id)).await?,
            Store::Postgres(store) => store.forgotten_nodes(Some(node_id)).await?,
        };
        Ok(found.into_iter().next())
    }

    /// Deletes the history of nodes forgotten before `cutoff_ms` (a node that registered again
    /// is not forgotten and stays); returns how many went. Retention, as for finished apps.
    pub async fn purge_forgotten_nodes_before(&self, cutoff_ms: u64) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(store) => store.purge_forgotten_nodes_before(cutoff_ms).await,
            Store::Postgres(store) => store.purge_forgotten_nodes_before(cutoff_ms).await,
        }
    }

    /// Closes the pool, waiting for connections in use to come back. On SQLite the last close
    /// checkpoints the WAL into the database file, so call it on a clean shutdown.
    pub async fn close(&self) {
        match self {
            Store::Sqlite(store) => store.close().await,
            Store::Postgres(store) => store.close().await,
        }
    }
}

/// A database URL safe to print: `scheme://user:secret@host/db` → `scheme://user:***@host/db`,
/// and the value of any `…password=` query parameter replaced by `***`. Conservative: a password
/// with an unencoded `@` or `/` is masked up to the last `@`, so no part of it shows. Use it
/// wherever a store URL reaches a log line or a message.
pub fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let mut masked = format!("{scheme}://");
    match before_query.rfind('@').and_then(|at| Some((before_query[..at].find(':')?, at))) {
        // A `:` before the last `@` and inside the first path segment starts a password; one
        // after a `/` is part of a path (`sqlite:///tmp/a@b:c`), not of the authority.
        Some((colon, at)) if !before_query[..colon].contains('/') => {
            masked.push_str(&before_query[..colon]);
            masked.push_str(":***");
            masked.push_str(&before_query[at..]);
        }
        _ => masked.push_str(before_query),
    }
    if let Some(query) = query {
        let parameters: Vec<String> = query
            .split('&')
            .map(|parameter| match parameter.split_once('=') {
                Some((name, _)) if name.to_ascii_lowercase().contains("password") => format!("{name}=***"),
                _ => parameter.to_owned(),
            })
            .collect();
        masked.push('?');
        masked.push_str(&parameters.join("&"));
    }
    masked
}

#[cfg(test)]
mod tests;
