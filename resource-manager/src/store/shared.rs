//! The query code both backends share. The SQL is the same text on SQLite and PostgreSQL
//! (`$N` placeholders, `ON CONFLICT … DO UPDATE`, `RETURNING`); only how a transaction begins and
//! how the epoch row is locked differ, and those stay in `sqlite.rs` and `postgres.rs`.

use std::collections::BTreeMap;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;
use spindle_protocol::{AppId, NodeId};
use sqlx::{AssertSqlSafe, Database, Encode, Executor, FromRow, IntoArguments, Transaction, Type};

use super::StoreError;
use crate::cluster::AppQuery;
use crate::records::{AppRecord, ContainerRecord, NodeRecord, Snapshot, WriteBatch};

/// Rows per multi-row `INSERT`. A 2,000-container batch becomes 10 statements instead of 2,000
/// round trips; the bind count (200 × 7 at most) stays far below both databases' limits, and
/// full chunks always have the same text, so their prepared statements are reused.
const ROWS_PER_STATEMENT: usize = 200;

/// Bumps the epoch in one statement, which is atomic on its own on both backends.
const BUMP_EPOCH: &str = "UPDATE cluster_meta SET epoch = epoch + 1, started_at_ms = $1 WHERE id = 1 RETURNING epoch";
/// What a restart reloads into memory: apps not ended, ended ones some of whose containers still
/// run, and the `$1` that ended last (`finished_apps_in_memory`), with their containers. The
/// other ended apps are history, read on demand (`APP_HISTORY`, `APP_BY_ID`).
const LOAD_APPS: &str = "SELECT app_id, doc FROM apps WHERE state NOT IN ('FINISHED', 'FAILED', 'KILLED') \
     OR EXISTS (SELECT 1 FROM containers live WHERE live.app_id = apps.app_id AND live.state <> 'COMPLETE') \
     OR app_id IN (SELECT app_id FROM apps WHERE state IN ('FINISHED', 'FAILED', 'KILLED') \
                   ORDER BY finished_at_ms DESC, app_ts DESC, app_seq DESC LIMIT $1) \
     ORDER BY submitted_at_ms, app_id";
const LOAD_CONTAINERS: &str = "SELECT container_id, doc FROM containers WHERE app_id IN (SELECT app_id FROM apps \
     WHERE state NOT IN ('FINISHED', 'FAILED', 'KILLED') \
     OR EXISTS (SELECT 1 FROM containers live WHERE live.app_id = apps.app_id AND live.state <> 'COMPLETE') \
     OR app_id IN (SELECT app_id FROM apps WHERE state IN ('FINISHED', 'FAILED', 'KILLED') \
                   ORDER BY finished_at_ms DESC, app_ts DESC, app_seq DESC LIMIT $1)) \
     ORDER BY container_id";
/// The newest app `LOAD_APPS` leaves in the store (the same condition, negated): the in-memory
/// listing is complete only above it.
const NEWEST_UNLOADED_APP: &str = "SELECT app_ts, app_seq FROM apps WHERE state IN ('FINISHED', 'FAILED', 'KILLED') \
     AND NOT EXISTS (SELECT 1 FROM containers live WHERE live.app_id = apps.app_id AND live.state <> 'COMPLETE') \
     AND app_id NOT IN (SELECT app_id FROM apps WHERE state IN ('FINISHED', 'FAILED', 'KILLED') \
                        ORDER BY finished_at_ms DESC, app_ts DESC, app_seq DESC LIMIT $1) \
     ORDER BY app_ts DESC, app_seq DESC LIMIT 1";
/// Apps older (by id) than `($1, $2)`, newest first, filtered by state, queue and user (`''`
/// for any): a page of the history.
const APP_HISTORY: &str = "SELECT app_id, doc FROM apps WHERE (app_ts < $1 OR (app_ts = $1 AND app_seq < $2)) \
     AND ($3 = '' OR state = $3) AND ($4 = '' OR queue = $4) AND ($5 = '' OR user_name = $5) \
     ORDER BY app_ts DESC, app_seq DESC LIMIT $6";
const APP_BY_ID: &str = "SELECT app_id, doc FROM apps WHERE app_id = $1";
const CONTAINERS_OF_APP: &str = "SELECT container_id, doc FROM containers WHERE app_id = $1";
/// Forgotten nodes are history: a restarted RM does not track them again.
const LOAD_NODES: &str = "SELECT node_id, doc FROM nodes WHERE forgotten_at_ms IS NULL ORDER BY node_id";
const LOAD_FORGOTTEN_NODES: &str = "SELECT node_id, doc FROM nodes WHERE forgotten_at_ms IS NOT NULL ORDER BY node_id";
const LOAD_FORGOTTEN_NODE: &str = "SELECT node_id, doc FROM nodes WHERE node_id = $1 AND forgotten_at_ms IS NOT NULL";
/// The history of forgotten nodes is kept as long as finished apps (`retain_finished`). A node
/// that registered again has no `forgotten_at_ms` and is never touched.
const PURGE_FORGOTTEN_NODES: &str = "DELETE FROM nodes WHERE forgotten_at_ms < $1 RETURNING node_id";
/// The terminal app states, spelled out so the statement is a constant; a unit test keeps the
/// list in step with `AppState::is_terminal`. An ended app some of whose containers still run
/// (an AM that finished its app and is still exiting) stays: the RM keeps it in memory and
/// will write those containers' completions.
const PURGE_CONTAINERS: &str = "DELETE FROM containers WHERE app_id IN (SELECT app_id FROM apps \
     WHERE state IN ('FINISHED', 'FAILED', 'KILLED') AND finished_at_ms < $1 \
     AND NOT EXISTS (SELECT 1 FROM containers live WHERE live.app_id = apps.app_id AND live.state <> 'COMPLETE'))";
const PURGE_APPS: &str = "DELETE FROM apps WHERE state IN ('FINISHED', 'FAILED', 'KILLED') \
     AND finished_at_ms < $1 \
     AND NOT EXISTS (SELECT 1 FROM containers live WHERE live.app_id = apps.app_id AND live.state <> 'COMPLETE') \
     RETURNING app_id";

/// One table as the upsert code sees it; the first column is the primary key.
struct Table {
    name: &'static str,
    columns: &'static [&'static str],
}

const APPS: Table = Table {
    name: "apps",
    columns: &[
        "app_id",
        "state",
        "queue",
        "user_name",
        "submitted_at_ms",
        "finished_at_ms",
        "app_ts",
        "app_seq",
        "doc",
    ],
};
const CONTAINERS: Table = Table {
    name: "containers",
    columns: &["container_id", "app_id", "node_id", "state", "doc"],
};
const NODES: Table = Table {
    name: "nodes",
    columns: &["node_id", "state", "forgotten_at_ms", "doc"],
};

/// A value to bind: the only three column types the schema uses.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum SqlValue {
    Text(String),
    Int(i64),
    NullableInt(Option<i64>),
}

/// A statement with its arguments, ready to run inside a transaction.
#[derive(Debug)]
pub(super) struct Statement {
    sql: String,
    values: Vec<SqlValue>,
    /// Whether the connection keeps it prepared (see `CACHED_TAIL_ROWS`).
    persistent: bool,
}

/// Upserts of a full chunk or of at most this many rows stay prepared on their connection;
/// other tails run unprepared. Each distinct row count is a statement of its own, and SQLite's
/// compiled form of a 150-row upsert is hundreds of KB: cached by the hundred on each pooled
/// connection, they held tens of MB of an RM at 1,000 agents.
const CACHED_TAIL_ROWS: usize = 4;

/// Turns a batch into upsert statements: apps first, so the containers' foreign key finds
/// them. Done before the transaction begins, so JSON encoding never holds the write lock.
///
/// A record that appears twice in the batch is written once, as its last version: PostgreSQL
/// refuses one `INSERT` that touches a row twice. Rows go in key order, so the same batch
/// always produces the same statements.
pub(super) fn upsert_statements(batch: &WriteBatch) -> Result<Vec<Statement>, StoreError> {
    let mut statements = Vec::new();
    let app_rows = batch.apps.iter().map(app_row).collect::<Result<Vec<_>, _>>()?;
    push_upserts(&mut statements, &APPS, app_rows);
    push_upserts(&mut statements, &CONTAINERS, batch.containers.iter().map(container_row).collect());
    push_upserts(&mut statements, &NODES, batch.nodes.iter().map(node_row).collect());
    Ok(statements)
}

fn push_upserts(statements: &mut Vec<Statement>, table: &Table, rows: Vec<(String, Vec<SqlValue>)>) {
    // Later versions of a record overwrite earlier ones; the map also sorts by key.
    let latest: BTreeMap<String, Vec<SqlValue>> = rows.into_iter().collect();
    let mut rows = latest.into_values().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<Vec<SqlValue>> = rows.by_ref().take(ROWS_PER_STATEMENT).collect();
        statements.push(Statement {
            sql: upsert_sql(table, chunk.len()),
            persistent: chunk.len() == ROWS_PER_STATEMENT || chunk.len() <= CACHED_TAIL_ROWS,
            values: chunk.into_iter().flatten().collect(),
        });
    }
}

/// `INSERT INTO t (k, a, b) VALUES ($1, $2, $3), … ON CONFLICT (k) DO UPDATE SET a = excluded.a, …`
fn upsert_sql(table: &Table, row_count: usize) -> String {
    let width = table.columns.len();
    let rows: Vec<String> = (0..row_count)
        .map(|row| {
            let placeholders: Vec<String> = (1..=width).map(|column| format!("${}", row * width + column)).collect();
            format!("({})", placeholders.join(", "))
        })
        .collect();
    let updates: Vec<String> = table.columns[1..]
        .iter()
        .map(|column| format!("{column} = excluded.{column}"))
        .collect();
    format!(
        "INSERT INTO {} ({}) VALUES {} ON CONFLICT ({}) DO UPDATE SET {}",
        table.name,
        table.columns.join(", "),
        rows.join(", "),
        table.columns[0],
        updates.join(", ")
    )
}

fn app_row(app: &AppRecord) -> Result<(String, Vec<SqlValue>), StoreError> {
    let key = app.app_id.to_string();
    // serde_json writes a NaN as `null`, which would then fail to load and stop the RM from
    // restarting: refuse it here, where the caller can still see which app was wrong.
    if !app.progress.is_finite() {
        return Err(StoreError::Corrupt {
            what: format!("app {key} (not written)"),
            reason: format!("progress is {}, not a finite number", app.progress),
        });
    }
    let values = vec![
        SqlValue::Text(key.clone()),
        SqlValue::Text(app.state.as_str().to_owned()),
        SqlValue::Text(app.spec.queue.clone()),
        SqlValue::Text(app.user.clone()),
        SqlValue::Int(to_sql_int(app.submitted_at_ms)),
        SqlValue::NullableInt(app.finished_at_ms.map(to_sql_int)),
        SqlValue::Int(to_sql_int(app.app_id.cluster_ts)),
        SqlValue::Int(i64::from(app.app_id.seq)),
        SqlValue::Text(to_doc(app)),
    ];
    Ok((key, values))
}

fn container_row(container: &ContainerRecord) -> (String, Vec<SqlValue>) {
    let key = container.container_id.to_string();
    let values = vec![
        SqlValue::Text(key.clone()),
        SqlValue::Text(container.container_id.app.to_string()),
        SqlValue::Text(container.node_id.to_string()),
        SqlValue::Text(json_name(&container.state)),
        SqlValue::Text(to_doc(container)),
    ];
    (key, values)
}

fn node_row(node: &NodeRecord) -> (String, Vec<SqlValue>) {
    let key = node.node_id.to_string();
    let values = vec![
        SqlValue::Text(key.clone()),
        SqlValue::Text(json_name(&node.state)),
        SqlValue::NullableInt(node.forgotten.map(|forgotten| to_sql_int(forgotten.at_ms))),
        SqlValue::Text(to_doc(node)),
    ];
    (key, values)
}

/// The records hold only strings, numbers, enums and string-keyed maps, so encoding cannot fail.
fn to_doc(record: &impl Serialize) -> String {
    serde_json::to_string(record).expect("records always encode as JSON")
}

/// A state's wire name (`RUNNING`), the same string the API shows.
fn json_name(state: &impl Serialize) -> String {
    match serde_json::to_value(state) {
        Ok(serde_json::Value::String(name)) => name,
        other => unreachable!("states serialize as strings, got {other:?}"),
    }
}

/// Timestamps are u64 in Rust and BIGINT in SQL; a value past i64::MAX (year 292 million)
/// only ever comes from a bug, and the doc keeps the exact value anyway.
fn to_sql_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(super) fn epoch_from_sql(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt {
        what: "cluster_meta epoch".to_owned(),
        reason: format!("{value} is negative"),
    })
}

/// Decodes `(key, doc)` rows, checking that each doc describes the row it sits in.
fn decode_rows<T: DeserializeOwned>(table: &str, rows: Vec<(String, String)>, key_of: impl Fn(&T) -> String) -> Result<Vec<T>, StoreError> {
    rows.into_iter()
        .map(|(key, doc)| {
            let corrupt = |reason: String| StoreError::Corrupt {
                what: format!("{table} row {key}"),
                reason,
            };
            let record: T = serde_json::from_str(&doc).map_err(|error| corrupt(format!("doc does not decode: {error}")))?;
            let doc_key = key_of(&record);
            if doc_key != key {
                return Err(corrupt(format!("doc describes {doc_key} instead")));
            }
            Ok(record)
        })
        .collect()
}

/// The shared queries, generic over the sqlx driver. The driver bounds are spelled once, here;
/// `Sqlite` and `Postgres` satisfy them all.
pub(super) struct Queries<DB>(PhantomData<DB>);

impl<DB> Queries<DB>
where
    DB: Database + sqlx::database::HasStatementCache,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'v> String: Encode<'v, DB> + Type<DB>,
    for<'v> i64: Encode<'v, DB> + Type<DB>,
    for<'v> Option<i64>: Encode<'v, DB>,
    for<'r> (String, String): FromRow<'r, DB::Row>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
    for<'r> (i64, i64): FromRow<'r, DB::Row>,
    for<'r> (String,): FromRow<'r, DB::Row>,
{
    /// Increments the epoch, records `started_at_ms`, and returns the new epoch.
    pub(super) async fn bump_epoch(conn: &mut DB::Connection, started_at_ms: u64) -> Result<u64, StoreError> {
        let row: Option<(i64,)> = sqlx::query_as(BUMP_EPOCH)
            .bind(to_sql_int(started_at_ms))
            .fetch_optional(conn)
            .await?;
        let Some((epoch,)) = row else {
            return Err(StoreError::Corrupt {
                what: "cluster_meta".to_owned(),
                reason: "the row with id = 1 is missing; it is created by the first migration".to_owned(),
            });
        };
        epoch_from_sql(epoch)
    }

    /// Reads what a restart reloads (`LOAD_APPS`, keeping `finished_in_memory` ended apps) and
    /// the nodes; the caller runs this in one read transaction for a consistent view.
    pub(super) async fn load(conn: &mut DB::Connection, finished_in_memory: usize) -> Result<Snapshot, StoreError> {
        let bound = i64::try_from(finished_in_memory).unwrap_or(i64::MAX);
        let app_rows: Vec<(String, String)> = sqlx::query_as(LOAD_APPS).bind(bound).fetch_all(&mut *conn).await?;
        let container_rows: Vec<(String, String)> = sqlx::query_as(LOAD_CONTAINERS).bind(bound).fetch_all(&mut *conn).await?;
        let node_rows: Vec<(String, String)> = sqlx::query_as(LOAD_NODES).fetch_all(&mut *conn).await?;
        let newest_unloaded: Option<(i64, i64)> = sqlx::query_as(NEWEST_UNLOADED_APP).bind(bound).fetch_optional(&mut *conn).await?;
        Ok(Snapshot {
            apps: decode_rows("apps", app_rows, |app: &AppRecord| app.app_id.to_string())?,
            containers: decode_rows("containers", container_rows, |container: &ContainerRecord| {
                container.container_id.to_string()
            })?,
            nodes: decode_rows("nodes", node_rows, |node: &NodeRecord| node.node_id.to_string())?,
            newest_unloaded_app: newest_unloaded.map(|(ts, seq)| AppId {
                cluster_ts: ts as u64,
                seq: seq as u32,
            }),
        })
    }

    /// A page of the apps older than `query.before` (all if `None`), newest first.
    pub(super) async fn app_history(conn: &mut DB::Connection, query: &AppQuery) -> Result<Vec<AppRecord>, StoreError> {
        let before = query.before.unwrap_or(AppId {
            cluster_ts: i64::MAX as u64,
            seq: u32::MAX,
        });
        let rows: Vec<(String, String)> = sqlx::query_as(APP_HISTORY)
            .bind(to_sql_int(before.cluster_ts))
            .bind(i64::from(before.seq))
            .bind(query.state.map_or("", |state| state.as_str()).to_owned())
            .bind(query.queue.clone().unwrap_or_default())
            .bind(query.user.clone().unwrap_or_default())
            .bind(i64::try_from(query.limit).unwrap_or(i64::MAX))
            .fetch_all(conn)
            .await?;
        decode_rows("apps", rows, |app: &AppRecord| app.app_id.to_string())
    }

    /// One app's record and all its containers' (by id), if the store has it.
    pub(super) async fn app_with_containers(
        conn: &mut DB::Connection,
        app_id: AppId,
    ) -> Result<Option<(AppRecord, Vec<ContainerRecord>)>, StoreError> {
        let key = app_id.to_string();
        let rows: Vec<(String, String)> = sqlx::query_as(APP_BY_ID).bind(key.clone()).fetch_all(&mut *conn).await?;
        let Some(app) = decode_rows("apps", rows, |app: &AppRecord| app.app_id.to_string())?.pop() else {
            return Ok(None);
        };
        let rows: Vec<(String, String)> = sqlx::query_as(CONTAINERS_OF_APP).bind(key).fetch_all(&mut *conn).await?;
        let mut containers = decode_rows("containers", rows, |container: &ContainerRecord| container.container_id.to_string())?;
        containers.sort_by_key(|container| container.container_id);
        Ok(Some((app, containers)))
    }

    /// The nodes the RM has forgotten, by id; with `node_id`, only that one (if it is forgotten).
    pub(super) async fn forgotten_nodes(conn: &mut DB::Connection, node_id: Option<&NodeId>) -> Result<Vec<NodeRecord>, StoreError> {
        let rows: Vec<(String, String)> = match node_id {
            Some(node_id) => {
                sqlx::query_as(LOAD_FORGOTTEN_NODE)
                    .bind(node_id.to_string())
                    .fetch_all(conn)
                    .await?
            }
            None => sqlx::query_as(LOAD_FORGOTTEN_NODES).fetch_all(conn).await?,
        };
        decode_rows("nodes", rows, |node: &NodeRecord| node.node_id.to_string())
    }

    /// Deletes the history of nodes forgotten before `cutoff_ms`; returns how many went.
    pub(super) async fn purge_forgotten_nodes_before(conn: &mut DB::Connection, cutoff_ms: u64) -> Result<u64, StoreError> {
        let purged: Vec<(String,)> = sqlx::query_as(PURGE_FORGOTTEN_NODES)
            .bind(to_sql_int(cutoff_ms))
            .fetch_all(conn)
            .await?;
        Ok(purged.len() as u64)
    }

    /// Checks the fence, then runs the statements, then commits; on any error it rolls back.
    /// `read_epoch` is the backend's way of reading (and, on PostgreSQL, locking) the epoch.
    pub(super) async fn fenced_write(
        mut tx: Transaction<'_, DB>,
        read_epoch: &'static str,
        ours: u64,
        statements: Vec<Statement>,
    ) -> Result<(), StoreError> {
        match Self::fence_then_run(&mut *tx, read_epoch, ours, statements).await {
            Ok(()) => Ok(tx.commit().await?),
            Err(error) => {
                // Roll back now rather than when the transaction drops: on PostgreSQL a dropped
                // transaction keeps the epoch row locked until its connection is next used.
                if let Err(rollback_error) = tx.rollback().await {
                    tracing::warn!(error = %rollback_error, "rollback after a failed commit failed");
                }
                Err(error)
            }
        }
    }

    async fn fence_then_run(
        conn: &mut DB::Connection,
        read_epoch: &'static str,
        ours: u64,
        statements: Vec<Statement>,
    ) -> Result<(), StoreError> {
        let (current,): (i64,) = sqlx::query_as(read_epoch).fetch_one(&mut *conn).await?;
        let current = epoch_from_sql(current)?;
        // Any mismatch fences: a higher epoch means a newer RM took over; a lower one means this
        // writer's epoch came from another database.
        if current != ours {
            return Err(StoreError::Fenced { ours, current });
        }
        for statement in statements {
            Self::execute(&mut *conn, statement).await?;
        }
        Ok(())
    }

    async fn execute(conn: &mut DB::Connection, statement: Statement) -> Result<(), sqlx::Error> {
        let mut query = sqlx::query(AssertSqlSafe(statement.sql)).persistent(statement.persistent);
        for value in statement.values {
            query = match value {
                SqlValue::Text(text) => query.bind(text),
                SqlValue::Int(number) => query.bind(number),
                SqlValue::NullableInt(number) => query.bind(number),
            };
        }
        query.execute(conn).await?;
        Ok(())
    }

    /// Deletes terminal apps finished before `cutoff_ms` and their containers; returns how many apps.
    pub(super) async fn purge_finished_before(conn: &mut DB::Connection, cutoff_ms: u64) -> Result<u64, StoreError> {
        let cutoff = to_sql_int(cutoff_ms);
        sqlx::query(PURGE_CONTAINERS).bind(cutoff).execute(&mut *conn).await?;
        // RETURNING rather than rows_affected(): sqlx has no driver-independent way to read it.
        let purged: Vec<(String,)> = sqlx::query_as(PURGE_APPS).bind(cutoff).fetch_all(&mut *conn).await?;
        Ok(purged.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spindle_protocol::AppState;

    #[test]
    fn upsert_sql_numbers_placeholders_across_rows() {
        assert_eq!(
            upsert_sql(&NODES, 2),
            "INSERT INTO nodes (node_id, state, forgotten_at_ms, doc) VALUES ($1, $2, $3, $4), ($5, $6, $7, $8) \
             ON CONFLICT (node_id) DO UPDATE SET state = excluded.state, forgotten_at_ms = excluded.forgotten_at_ms, doc = excluded.doc"
        );
    }

    #[test]
    fn purge_statements_name_exactly_the_terminal_states() {
        let terminal: Vec<String> = AppState::ALL
            .into_iter()
            .filter(|state| state.is_terminal())
            .map(|state| format!("'{}'", state.as_str()))
            .collect();
        let list = format!("state IN ({})", terminal.join(", "));
        assert!(PURGE_CONTAINERS.contains(&list), "{PURGE_CONTAINERS}");
        assert!(PURGE_APPS.contains(&list), "{PURGE_APPS}");
    }

    #[test]
    fn big_batches_split_into_full_chunks_and_a_tail() {
        let rows: Vec<(String, Vec<SqlValue>)> = (0..ROWS_PER_STATEMENT * 2 + 3)
            .map(|index| {
                (
                    format!("node-{index:05}"),
                    vec![SqlValue::Text(format!("node-{index:05}")), SqlValue::Int(0), SqlValue::Int(0)],
                )
            })
            .collect();
        let mut statements = Vec::new();
        push_upserts(&mut statements, &NODES, rows);
        let row_counts: Vec<usize> = statements.iter().map(|statement| statement.values.len() / 3).collect();
        assert_eq!(row_counts, [ROWS_PER_STATEMENT, ROWS_PER_STATEMENT, 3]);
        assert_eq!(statements[0].sql, statements[1].sql, "full chunks reuse one prepared statement");
    }

    #[test]
    fn a_record_twice_in_a_batch_is_written_once_as_its_last_version() {
        let row = |key: &str, state: &str| {
            (
                key.to_owned(),
                vec![SqlValue::Text(key.to_owned()), SqlValue::Text(state.to_owned())],
            )
        };
        let mut statements = Vec::new();
        push_upserts(&mut statements, &NODES, vec![row("b", "NEW"), row("a", "NEW"), row("b", "RUNNING")]);
        assert_eq!(statements.len(), 1);
        let expected: Vec<SqlValue> = [row("a", "NEW").1, row("b", "RUNNING").1].concat();
        assert_eq!(statements[0].values, expected, "deduplicated, last wins, in key order");
    }

    #[test]
    fn a_doc_in_the_wrong_row_is_corrupt() {
        let rows = vec![("nodes-a".to_owned(), "\"nodes-b\"".to_owned())];
        let error = decode_rows("nodes", rows, |name: &String| name.clone()).unwrap_err();
        assert!(error.to_string().contains("nodes row nodes-a"), "{error}");
        assert!(error.to_string().contains("describes nodes-b"), "{error}");
    }
}
