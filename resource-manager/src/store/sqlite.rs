//! The embedded backend: one SQLite file in WAL mode, or a private in-memory database for tests.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use spindle_protocol::{AppId, NodeId};
use sqlx::Sqlite;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use super::shared::{Queries, Statement};
use super::{Leadership, SqliteSynchronous, StoreError};
use crate::cluster::AppQuery;
use crate::records::{AppRecord, ContainerRecord, NodeRecord, Snapshot};

/// Takes the write lock when the transaction begins, not at its first write: a deferred
/// transaction that reads first cannot wait for the lock it later needs and fails with
/// SQLITE_BUSY instead, so two concurrent writers would fail rather than queue.
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";
/// The write lock taken by `BEGIN IMMEDIATE` already keeps the epoch from changing under us.
const READ_EPOCH: &str = "SELECT epoch FROM cluster_meta WHERE id = 1";
/// Which RM started last, for the same shape as PostgreSQL's lease row.
const NOTE_LEADER: &str = "UPDATE cluster_meta SET leader_url = $1 WHERE id = 1";
/// How long a writer waits for another one before giving up with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// WAL lets readers run beside the one writer; a handful of connections is plenty for an RM
/// whose state changes go through one owner.
const MAX_CONNECTIONS: u32 = 4;
/// The database and its -wal and -shm files: owner-only, they hold every job's spec and env.
const PRIVATE_FILE_MODE: u32 = 0o600;
/// A directory the RM creates for its database.
const PRIVATE_DIR_MODE: u32 = 0o700;

/// The SQLite store: a pool over one database file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Connections share the file; writers serialize on SQLite's write lock.
    pool: SqlitePool,
    /// What `Store::describe` shows: the URL with an absolute path.
    description: String,
    /// An exclusive `flock` on `<database>.lock`, held while the store is open: SQLite serves
    /// one RM (a second one would take over the epoch and the first would die at its next
    /// write); several RMs need PostgreSQL.
    _lock: Option<std::sync::Arc<std::fs::File>>,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at a `sqlite:` URL and migrates it. A database
    /// file is created owner-only (0600), in a directory created 0700 if it is missing.
    pub(super) async fn connect(url: &str, synchronous: SqliteSynchronous) -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|_| StoreError::bad_url(url))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match synchronous {
                SqliteSynchronous::Full => sqlx::sqlite::SqliteSynchronous::Full,
                SqliteSynchronous::Normal => sqlx::sqlite::SqliteSynchronous::Normal,
            })
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let in_memory = is_in_memory(url);
        let database_file = (!in_memory).then(|| options.get_filename().to_owned());
        let mut lock = None;
        if let Some(path) = database_file.clone() {
            lock = Some(run_blocking(move || prepare_private_files(&path).and_then(|()| lock_database(&path))).await?);
        }
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
        if let Some(path) = database_file {
            // The first connection has created the -wal and -shm files by now; SQLite gave
            // them the database file's mode, and this makes sure of it.
            run_blocking(move || restrict_existing_files(&path)).await?;
        }
        Ok(SqliteStore {
            pool,
            description,
            _lock: lock,
        })
    }

    pub(super) fn describe(&self) -> String {
        self.description.clone()
    }

    pub(super) async fn begin_epoch(&self, started_at_ms: u64) -> Result<u64, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Queries::<Sqlite>::bump_epoch(&mut conn, started_at_ms).await
    }

    /// SQLite serves one RM (the store's lock), so it always wins: a new epoch, and its URL noted.
    pub(super) async fn try_lead(&self, url: &str, started_at_ms: u64) -> Result<Leadership, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let epoch = Queries::<Sqlite>::bump_epoch(&mut conn, started_at_ms).await?;
        sqlx::query(NOTE_LEADER).bind(url).execute(&mut *conn).await?;
        Ok(Leadership::Won { epoch })
    }

    pub(super) async fn load(&self, finished_in_memory: usize) -> Result<Snapshot, StoreError> {
        // In WAL mode a read transaction sees one point in time across the three tables.
        let mut tx = self.pool.begin().await?;
        let snapshot = Queries::<Sqlite>::load(&mut tx, finished_in_memory).await?;
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

    pub(super) async fn app_history(&self, query: &AppQuery) -> Result<Vec<AppRecord>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Queries::<Sqlite>::app_history(&mut conn, query).await
    }

    pub(super) async fn app_with_containers(&self, app_id: AppId) -> Result<Option<(AppRecord, Vec<ContainerRecord>)>, StoreError> {
        // One read transaction: the app and its containers as of one point in time.
        let mut tx = self.pool.begin().await?;
        let found = Queries::<Sqlite>::app_with_containers(&mut tx, app_id).await?;
        tx.commit().await?;
        Ok(found)
    }

    pub(super) async fn forgotten_nodes(&self, node_id: Option<&NodeId>) -> Result<Vec<NodeRecord>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Queries::<Sqlite>::forgotten_nodes(&mut conn, node_id).await
    }

    pub(super) async fn purge_forgotten_nodes_before(&self, cutoff_ms: u64) -> Result<u64, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Queries::<Sqlite>::purge_forgotten_nodes_before(&mut conn, cutoff_ms).await
    }

    pub(super) async fn close(&self) {
        self.pool.close().await;
    }
}

/// File work off the async threads.
async fn run_blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T, StoreError> + Send + 'static) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|join_error| std::panic::resume_unwind(join_error.into_panic()))
}

/// Makes the database's directory (0700) if it is missing and the database file (0600) if it is
/// missing, and brings an existing database and its -wal and -shm files to 0600.
///
/// Why an empty file first, rather than a umask around the pool's creation: SQLite's unix VFS
/// gives a database file it creates mode 0644 whatever the umask (it fchmods the new file to its
/// default permissions), and creates the -wal and -shm files lazily, at the first connection
/// and again after a clean close, with the mode of the database file. So a 0600 file made here
/// (which SQLite opens as an empty database) makes all three 0600 for good, without changing the
/// process-wide umask under other threads that create files meanwhile. Modes are set with chmod
/// after creation, so a umask cannot take bits away from the owner either.
/// Takes `<database>.lock` (0600) with an exclusive, non-blocking `flock`, or says who holds it.
/// The kernel drops the lock when the process ends, however it ends. Stores of one process
/// share its lock (tests open several on one file, as two RMs would on PostgreSQL); another
/// process is refused.
fn lock_database(path: &Path) -> Result<std::sync::Arc<std::fs::File>, StoreError> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, Weak};
    static HELD: Mutex<Option<HashMap<std::path::PathBuf, Weak<std::fs::File>>>> = Mutex::new(None);

    let mut lock_path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned()).into_os_string();
    lock_path.push(".lock");
    let lock_path = std::path::PathBuf::from(lock_path);
    let mut held = HELD.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let held = held.get_or_insert_with(HashMap::new);
    held.retain(|_, file| file.strong_count() > 0);
    if let Some(file) = held.get(&lock_path).and_then(Weak::upgrade) {
        return Ok(file);
    }
    match crate::store::exclusive_lock(&lock_path) {
        Ok(Some(file)) => {
            let file = Arc::new(file);
            held.insert(lock_path, Arc::downgrade(&file));
            Ok(file)
        }
        Ok(None) => Err(StoreError::InUse {
            database: path.display().to_string(),
            lock: lock_path.display().to_string(),
        }),
        Err(source) => Err(StoreError::Io {
            what: format!("cannot lock {}", lock_path.display()),
            source,
        }),
    }
}

fn prepare_private_files(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let io_error = |what: String| move |source| StoreError::Io { what, source };
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty() && !dir.exists()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(PRIVATE_DIR_MODE)
            .create(dir)
            .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(PRIVATE_DIR_MODE)))
            .map_err(io_error(format!("cannot create the database directory {}", dir.display())))?;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_FILE_MODE)
        .open(path)
    {
        Ok(_) => std::fs::set_permissions(path, std::fs::Permissions::from_mode(PRIVATE_FILE_MODE))
            .map_err(io_error(format!("cannot make the database file {} owner-only", path.display()))),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => restrict_existing_files(path),
        Err(source) => Err(StoreError::Io {
            what: format!("cannot create the database file {}", path.display()),
            source,
        }),
    }
}

/// Brings the database file and its -wal and -shm files, where they exist, to mode 0600. A file
/// the RM may not chmod (another owner's) is left as it is, with a warning: it can still work.
fn restrict_existing_files(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    for file in database_files(path) {
        let mode = match std::fs::metadata(&file) {
            Ok(metadata) => metadata.permissions().mode() & 0o777,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(StoreError::Io {
                    what: format!("cannot read the mode of {}", file.display()),
                    source,
                });
            }
        };
        if mode == PRIVATE_FILE_MODE {
            continue;
        }
        match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(PRIVATE_FILE_MODE)) {
            Ok(()) => tracing::info!(file = %file.display(), old_mode = format!("{mode:o}"), "database file made owner-only (0600)"),
            Err(err) => tracing::warn!(
                file = %file.display(),
                mode = format!("{mode:o}"),
                error = %err,
                "cannot make the database file owner-only: others may read the cluster's jobs; chmod 600 it"
            ),
        }
    }
    Ok(())
}

/// The database file and the two files SQLite keeps beside it in WAL mode.
fn database_files(path: &Path) -> [PathBuf; 3] {
    let with_suffix = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    [path.to_owned(), with_suffix("-wal"), with_suffix("-shm")]
}

/// `sqlite::memory:`, or a URL asking for `mode=memory`: both open a private in-memory database.
fn is_in_memory(url: &str) -> bool {
    let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
    rest.starts_with(":memory:") || rest.contains("mode=memory")
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    async fn synchronous_pragma(store: &SqliteStore) -> i64 {
        sqlx::query_scalar("PRAGMA synchronous").fetch_one(&store.pool).await.unwrap()
    }

    #[tokio::test]
    async fn a_new_database_is_owner_only_in_an_owner_only_directory_and_syncs_fully() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/spindle.db");
        let url = format!("sqlite://{}", path.display());
        let store = SqliteStore::connect(&url, SqliteSynchronous::default()).await.unwrap();
        store.begin_epoch(1).await.unwrap();
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        for file in database_files(&path) {
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
        // 2 is FULL: an acknowledged commit is on disk.
        assert_eq!(synchronous_pragma(&store).await, 2);
        store.close().await;
    }

    #[tokio::test]
    async fn an_existing_database_is_tightened_and_normal_sync_can_be_chosen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spindle.db");
        let url = format!("sqlite://{}", path.display());
        SqliteStore::connect(&url, SqliteSynchronous::Full).await.unwrap().close().await;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

        let store = SqliteStore::connect(&url, SqliteSynchronous::Normal).await.unwrap();
        for file in database_files(&path) {
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
        // The RM did not create this directory: its mode is the operator's choice.
        assert_eq!(mode(dir.path()), 0o755);
        // 1 is NORMAL.
        assert_eq!(synchronous_pragma(&store).await, 1);
        store.close().await;
    }

    #[tokio::test]
    async fn a_database_is_locked_against_other_processes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spindle.db");
        let url = format!("sqlite://{}", path.display());
        let first = SqliteStore::connect(&url, SqliteSynchronous::Full).await.unwrap();
        assert_eq!(mode(&dir.path().join("spindle.db.lock")), 0o600);
        // Another process: a child that tries the lock as a second RM's store would.
        let try_lock = |dir: &Path| {
            let output = std::process::Command::new("flock")
                .args(["--nonblock", "--conflict-exit-code", "3"])
                .arg(dir.join("spindle.db.lock"))
                .arg("true")
                .status()
                .expect("run flock(1)");
            output.code()
        };
        assert_eq!(try_lock(dir.path()), Some(3), "another process cannot take the lock");
        // In this process, stores share it (as two RMs would share PostgreSQL in tests).
        let second = SqliteStore::connect(&url, SqliteSynchronous::Full).await.unwrap();
        drop(first);
        assert_eq!(try_lock(dir.path()), Some(3), "held while any store of this process is open");
        drop(second);
        assert_eq!(try_lock(dir.path()), Some(0), "released with the last store");
    }
}
