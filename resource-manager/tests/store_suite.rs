//! One behaviour suite for the store, run on both backends: every test body below is an
//! `async fn(TestDb)`, and `backend_suite!` runs each of them once on a fresh SQLite file and
//! once in a fresh PostgreSQL schema.
//!
//! PostgreSQL comes from `SPINDLE_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432/test`).
//! If it cannot be reached the PostgreSQL tests fail rather than skip: CI starts it.
//! Run: `cargo test -p spindle-resource-manager --test store_suite`. The per-test databases and
//! the record builders live in `store_suite/support.rs`; the bodies about forgotten nodes in
//! `store_suite/forgotten_nodes.rs`, those about the history of ended apps in
//! `store_suite/app_history.rs`.

use std::time::{Duration, Instant};

use spindle_protocol::{AppState, ContainerState, NodeState};
use spindle_resource_manager::records::{AppRecord, ContainerRecord, Snapshot, WriteBatch};
use spindle_resource_manager::store::{Leadership, Store, StoreError};

// Under the suite's own directory, so it cannot clash with other test targets' helpers.
#[path = "store_suite/support.rs"]
mod support;

#[path = "store_suite/forgotten_nodes.rs"]
mod forgotten_nodes;

#[path = "store_suite/app_history.rs"]
mod app_history;

use app_history::{
    a_bounded_load_keeps_live_apps_and_the_latest_ended, app_history_pages_newest_first_by_id_with_filters,
    one_stored_app_reads_back_with_its_containers,
};
use forgotten_nodes::{
    a_forgotten_node_that_registers_again_is_tracked_again, forgotten_nodes_are_history_not_reloaded,
    purging_forgotten_nodes_keeps_newer_history_and_tracked_nodes,
};
use support::{TestDb, app, app_id, batch, container, node};

/// Generates `mod sqlite` and `mod postgres`, each with one `#[tokio::test]` per body.
macro_rules! backend_suite {
    ($($body:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $body() {
                    super::$body(super::TestDb::sqlite()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $body() {
                    let Some(db) = super::TestDb::postgres().await else { return };
                    super::$body(db).await;
                }
            )*
        }
    };
}

backend_suite!(
    migrations_are_idempotent,
    epochs_count_up_and_survive_reconnect,
    commit_then_load_round_trips_every_field,
    load_orders_apps_by_submission_then_id_and_containers_by_id,
    upsert_replaces_the_stored_version,
    a_record_twice_in_one_batch_keeps_its_last_version,
    a_batch_is_atomic,
    a_stale_epoch_is_fenced_and_writes_nothing,
    an_empty_batch_is_a_no_op,
    two_thousand_containers_commit_in_one_batch,
    concurrent_writers_both_succeed,
    purge_removes_only_old_terminal_apps_and_their_containers,
    purge_keeps_an_ended_app_whose_containers_still_run,
    a_corrupt_doc_is_reported_with_its_row,
    forgotten_nodes_are_history_not_reloaded,
    a_forgotten_node_that_registers_again_is_tracked_again,
    purging_forgotten_nodes_keeps_newer_history_and_tracked_nodes,
    a_bounded_load_keeps_live_apps_and_the_latest_ended,
    app_history_pages_newest_first_by_id_with_filters,
    one_stored_app_reads_back_with_its_containers,
);

// ---- bodies ---------------------------------------------------------------------------------

async fn migrations_are_idempotent(db: TestDb) {
    let first = db.connect().await;
    let epoch = first.begin_epoch().await.unwrap();
    first
        .commit(epoch, &batch(vec![app(1, 100, AppState::Running, None)], vec![], vec![]))
        .await
        .unwrap();
    first.close().await;
    // Connecting again re-runs the embedded migrations: they must find nothing to do.
    let second = db.connect().await;
    let third = db.connect().await;
    assert_eq!(second.load().await.unwrap().apps.len(), 1);
    assert_eq!(third.load().await.unwrap().apps.len(), 1);
}

async fn epochs_count_up_and_survive_reconnect(db: TestDb) {
    let store = db.connect().await;
    for expected in 1..=3 {
        assert_eq!(store.begin_epoch().await.unwrap(), expected);
    }
    store.close().await;
    let store = db.connect().await;
    assert_eq!(store.begin_epoch().await.unwrap(), 4);
    let started = db.fetch_strings("SELECT CAST(started_at_ms AS TEXT) FROM cluster_meta").await;
    let started: u64 = started[0].parse().unwrap();
    assert!(
        started.abs_diff(spindle_protocol::now_ms()) < 60_000,
        "start time recorded: {started}"
    );
}

async fn commit_then_load_round_trips_every_field(db: TestDb) {
    let store = db.connect().await;
    assert!(
        store.describe().starts_with(db.url().split(':').next().unwrap()),
        "{}",
        store.describe()
    );
    assert!(!store.describe().contains('@'), "no credentials in {}", store.describe());
    let epoch = store.begin_epoch().await.unwrap();
    let written = batch(
        vec![app(1, 100, AppState::Finished, Some(900))],
        vec![container(1, 1, ContainerState::Complete), container(1, 2, ContainerState::Running)],
        vec![node("node-1:8042", NodeState::Decommissioning)],
    );
    store.commit(epoch, &written).await.unwrap();
    let expected = Snapshot {
        apps: written.apps,
        containers: written.containers,
        nodes: written.nodes,
        newest_unloaded_app: None,
    };
    assert_eq!(store.load().await.unwrap(), expected);
    // The copied columns agree with the docs: later queries filter on them.
    let columns = db
        .fetch_strings(
            "SELECT app_id || ' ' || state || ' ' || queue || ' ' || user_name || ' ' \
             || CAST(submitted_at_ms AS TEXT) || ' ' || CAST(finished_at_ms AS TEXT) FROM apps",
        )
        .await;
    assert_eq!(columns, [format!("{} FINISHED analytics alice 100 900", app_id(1))]);
    let columns = db
        .fetch_strings("SELECT app_id || ' ' || node_id || ' ' || state FROM containers ORDER BY container_id")
        .await;
    assert_eq!(
        columns,
        [
            format!("{} node-1:8042 COMPLETE", app_id(1)),
            format!("{} node-1:8042 RUNNING", app_id(1))
        ]
    );
    assert_eq!(db.fetch_strings("SELECT state FROM nodes").await, ["DECOMMISSIONING"]);
}

async fn load_orders_apps_by_submission_then_id_and_containers_by_id(db: TestDb) {
    let store = db.connect().await;
    let epoch = store.begin_epoch().await.unwrap();
    let apps = vec![
        app(3, 200, AppState::Running, None),
        app(2, 100, AppState::Running, None),
        app(1, 200, AppState::Running, None),
    ];
    // Sequence numbers past 9999 outgrow the zero padding: ids then sort as strings.
    let containers = vec![
        container(1, 10, ContainerState::Running),
        container(1, 9, ContainerState::Running),
        container(1, 1_000_000, ContainerState::Running),
    ];
    store
        .commit(
            epoch,
            &batch(
                apps,
                containers.clone(),
                vec![node("b", NodeState::Running), node("a", NodeState::Lost)],
            ),
        )
        .await
        .unwrap();
    let snapshot = store.load().await.unwrap();
    let app_order: Vec<u32> = snapshot.apps.iter().map(|app| app.app_id.seq).collect();
    assert_eq!(app_order, [2, 1, 3]);
    let mut expected: Vec<String> = containers.iter().map(|c| c.container_id.to_string()).collect();
    expected.sort();
    let loaded: Vec<String> = snapshot.containers.iter().map(|c| c.container_id.to_string()).collect();
    assert_eq!(loaded, expected);
    let node_order: Vec<&str> = snapshot.nodes.iter().map(|node| node.node_id.as_str()).collect();
    assert_eq!(node_order, ["a", "b"]);
}

async fn upsert_replaces_the_stored_version(db: TestDb) {
    let store = db.connect().await;
    let epoch = store.begin_epoch().await.unwrap();
    let first = batch(
        vec![app(1, 100, AppState::Running, None)],
        vec![container(1, 1, ContainerState::Running)],
        vec![node("n", NodeState::Running)],
    );
    store.commit(epoch, &first).await.unwrap();
    let second = batch(
        vec![app(1, 100, AppState::Killed, Some(500))],
        vec![container(1, 1, ContainerState::Complete)],
        vec![node("n", NodeState::Lost)],
    );
    store.commit(epoch, &second).await.unwrap();
    let snapshot = store.load().await.unwrap();
    assert_eq!(
        snapshot,
        Snapshot {
            apps: second.apps,
            containers: second.containers,
            nodes: second.nodes,
            newest_unloaded_app: None,
        }
    );
    assert_eq!(db.fetch_strings("SELECT state FROM apps").await, ["KILLED"]);
}

async fn a_record_twice_in_one_batch_keeps_its_last_version(db: TestDb) {
    let store = db.connect().await;
    let epoch = store.begin_epoch().await.unwrap();
    let twice = batch(
        vec![app(1, 100, AppState::Accepted, None), app(1, 100, AppState::Running, None)],
        vec![container(1, 1, ContainerState::Allocated), container(1, 1, ContainerState::Running)],
        vec![node("n", NodeState::New), node("n", NodeState::Running)],
    );
    store.commit(epoch, &twice).await.unwrap();
    let snapshot = store.load().await.unwrap();
    assert_eq!(snapshot.apps, [twice.apps[1].clone()]);
    assert_eq!(snapshot.containers, [twice.containers[1].clone()]);
    assert_eq!(snapshot.nodes, [twice.nodes[1].clone()]);
}

async fn a_batch_is_atomic(db: TestDb) {
    let store = db.connect().await;
    let epoch = store.begin_epoch().await.unwrap();
    // The app is fine; the container belongs to an app the store has never seen, so the
    // foreign key refuses it after the app's row was already written in the transaction.
    let half_bad = batch(
        vec![app(1, 100, AppState::Running, None)],
        vec![container(2, 1, ContainerState::Running)],
        vec![node("n", NodeState::Running)],
    );
    let error = store.commit(epoch, &half_bad).await.unwrap_err();
    assert!(matches!(error, StoreError::Database(_)), "{error:?}");
    assert_eq!(
        store.load().await.unwrap(),
        Snapshot::default(),
        "nothing of the failed batch is visible"
    );
    // The store is still usable afterwards.
    store
        .commit(epoch, &batch(vec![app(1, 100, AppState::Running, None)], vec![], vec![]))
        .await
        .unwrap();
    assert_eq!(store.load().await.unwrap().apps.len(), 1);
}

async fn a_stale_epoch_is_fenced_and_writes_nothing(db: TestDb) {
    let old_rm = db.connect().await;
    let old_epoch = old_rm.begin_epoch().await.unwrap();
    old_rm
        .commit(old_epoch, &batch(vec![app(1, 100, AppState::Running, None)], vec![], vec![]))
        .await
        .unwrap();
    // A newer RM starts on the same database.
    let new_rm = db.connect().await;
    let new_epoch = new_rm.begin_epoch().await.unwrap();
    let late = batch(
        vec![app(1, 100, AppState::Killed, Some(300)), app(2, 200, AppState::Running, None)],
        vec![container(1, 1, ContainerState::Running)],
        vec![node("n", NodeState::Running)],
    );
    match old_rm.commit(old_epoch, &late).await {
        Err(StoreError::Fenced { ours, current }) => {
            assert_eq!((ours, current), (old_epoch, new_epoch))
        }
        other => panic!("expected Fenced, got {other:?}"),
    }
    let snapshot = new_rm.load().await.unwrap();
    assert_eq!(
        snapshot.apps,
        [app(1, 100, AppState::Running, None)],
        "the fenced batch wrote nothing"
    );
    assert!(snapshot.containers.is_empty() && snapshot.nodes.is_empty());
    new_rm.commit(new_epoch, &late).await.unwrap();
    assert_eq!(new_rm.load().await.unwrap().apps.len(), 2);
}

async fn an_empty_batch_is_a_no_op(db: TestDb) {
    let store = db.connect().await;
    store.begin_epoch().await.unwrap();
    // Even with an epoch that would be fenced: there is nothing to protect.
    store.commit(999, &WriteBatch::default()).await.unwrap();
    assert_eq!(store.load().await.unwrap(), Snapshot::default());
}

async fn two_thousand_containers_commit_in_one_batch(db: TestDb) {
    let store = db.connect().await;
    let epoch = store.begin_epoch().await.unwrap();
    let apps: Vec<AppRecord> = (1..=10).map(|seq| app(seq, u64::from(seq), AppState::Running, None)).collect();
    store.commit(epoch, &batch(apps, vec![], vec![])).await.unwrap();
    let containers: Vec<ContainerRecord> = (0..2_000u64)
        .map(|seq| container(1 + (seq % 10) as u32, seq, ContainerState::Running))
        .collect();
    let started = Instant::now();
    store.commit(epoch, &batch(vec![], containers.clone(), vec![])).await.unwrap();
    let inserted = started.elapsed();
    let updated: Vec<ContainerRecord> = containers
        .iter()
        .map(|c| ContainerRecord {
            state: ContainerState::Complete,
            ..c.clone()
        })
        .collect();
    let started = Instant::now();
    store.commit(epoch, &batch(vec![], updated.clone(), vec![])).await.unwrap();
    let replaced = started.elapsed();
    // Reported, not asserted: timings on a shared CI machine are noise.
    eprintln!(
        "{}: 2,000 container inserts in {inserted:?}, 2,000 updates in {replaced:?}",
        store.describe()
    );
    let mut expected = updated;
    expected.sort_by_key(|c| c.container_id.to_string());
    assert_eq!(store.load().await.unwrap().containers, expected);
}

async fn concurrent_writers_both_succeed(db: TestDb) {
    // Two pools, as two RM tasks would hold: each commit reads the epoch and then writes, the
    // pattern that deadlocks on SQLite unless the write lock is taken at BEGIN.
    let (one, two) = (db.connect().await, db.connect().await);
    let epoch = one.begin_epoch().await.unwrap();
    let writer = |store: Store, first_seq: u32| {
        tokio::spawn(async move {
            for seq in first_seq..first_seq + 25 {
                let batch = batch(
                    vec![app(seq, u64::from(seq), AppState::Running, None)],
                    vec![container(seq, 1, ContainerState::Running)],
                    vec![],
                );
                store.commit(epoch, &batch).await.unwrap();
            }
        })
    };
    let (left, right) = tokio::join!(writer(one.clone(), 1), writer(two, 1001));
    left.unwrap();
    right.unwrap();
    let snapshot = one.load().await.unwrap();
    assert_eq!((snapshot.apps.len(), snapshot.containers.len()), (50, 50));
}

async fn purge_removes_only_old_terminal_apps_and_their_containers(db: TestDb) {
    let store = db.connect().await;
    let epoch = store.begin_epoch().await.unwrap();
    let apps = vec![
        app(1, 10, AppState::Finished, Some(100)), // old and done: purged
        app(2, 20, AppState::Killed, Some(999)),   // old and done: purged
        app(3, 30, AppState::Failed, Some(1_000)), // finished at the cutoff, not before: kept
        app(4, 40, AppState::Running, None),       // still running: kept
        app(5, 50, AppState::Accepted, Some(50)),  // a finished time but not terminal: kept
    ];
    let containers: Vec<ContainerRecord> = (1..=5)
        .flat_map(|seq| {
            [
                container(seq, 1, ContainerState::Complete),
                container(seq, 2, ContainerState::Complete),
            ]
        })
        .collect();
    store
        .commit(epoch, &batch(apps, containers, vec![node("n", NodeState::Running)]))
        .await
        .unwrap();
    assert_eq!(store.purge_finished_before(1_000).await.unwrap(), 2);
    let snapshot = store.load().await.unwrap();
    let kept_apps: Vec<u32> = snapshot.apps.iter().map(|app| app.app_id.seq).collect();
    assert_eq!(kept_apps, [3, 4, 5]);
    let container_apps: Vec<u32> = snapshot.containers.iter().map(|c| c.container_id.app.seq).collect();
    assert_eq!(container_apps, [3, 3, 4, 4, 5, 5]);
    assert_eq!(snapshot.nodes.len(), 1, "nodes are not touched");
    assert_eq!(store.purge_finished_before(1_000).await.unwrap(), 0, "purging again finds nothing");
}

async fn purge_keeps_an_ended_app_whose_containers_still_run(db: TestDb) {
    // The RM keeps such an app in memory (an AM that finished its app may still be exiting);
    // the store must keep it too, or the container's completion cannot be written later.
    let store = db.connect().await;
    let epoch = store.begin_epoch().await.unwrap();
    let apps = vec![app(1, 10, AppState::Finished, Some(100)), app(2, 20, AppState::Finished, Some(100))];
    let containers = vec![
        container(1, 1, ContainerState::Running),
        container(1, 2, ContainerState::Complete),
        container(2, 1, ContainerState::Complete),
    ];
    store.commit(epoch, &batch(apps, containers, Vec::new())).await.unwrap();
    assert_eq!(
        store.purge_finished_before(1_000).await.unwrap(),
        1,
        "only the app with nothing live"
    );
    let snapshot = store.load().await.unwrap();
    let kept_apps: Vec<u32> = snapshot.apps.iter().map(|app| app.app_id.seq).collect();
    assert_eq!(kept_apps, [1]);
    assert_eq!(snapshot.containers.len(), 2, "the live app keeps all its containers");
    store
        .commit(
            epoch,
            &batch(Vec::new(), vec![container(1, 1, ContainerState::Complete)], Vec::new()),
        )
        .await
        .expect("the late completion is written");
    assert_eq!(store.purge_finished_before(1_000).await.unwrap(), 1, "purged once nothing runs");
    assert_eq!(store.load().await.unwrap(), Snapshot::default());
}

async fn a_corrupt_doc_is_reported_with_its_row(db: TestDb) {
    let store = db.connect().await;
    let epoch = store.begin_epoch().await.unwrap();
    store
        .commit(
            epoch,
            &batch(
                vec![app(1, 100, AppState::Running, None), app(2, 200, AppState::Running, None)],
                vec![],
                vec![],
            ),
        )
        .await
        .unwrap();
    db.execute(&format!("UPDATE apps SET doc = '{{\"app_id\": 42' WHERE app_id = '{}'", app_id(2)))
        .await;
    match store.load().await {
        Err(error @ StoreError::Corrupt { .. }) => {
            let StoreError::Corrupt { what, .. } = &error else { unreachable!() };
            assert_eq!(what, &format!("apps row {}", app_id(2)));
            assert!(error.to_string().contains(&app_id(2).to_string()), "{error}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

// ---- backend-independent --------------------------------------------------------------------

#[tokio::test]
async fn an_in_memory_database_works_for_tests() {
    let store = Store::connect("sqlite::memory:").await.unwrap();
    assert_eq!(store.describe(), "sqlite::memory:");
    let epoch = store.begin_epoch().await.unwrap();
    assert_eq!(epoch, 1);
    let written = batch(
        vec![app(1, 100, AppState::Running, None)],
        vec![container(1, 1, ContainerState::Running)],
        vec![node("n", NodeState::Running)],
    );
    store.commit(epoch, &written).await.unwrap();
    assert_eq!(
        store.load().await.unwrap(),
        Snapshot {
            apps: written.apps,
            containers: written.containers,
            nodes: written.nodes,
            newest_unloaded_app: None,
        }
    );
    // serde_json would write a NaN as null, which could never load again: refused up front.
    let mut broken = app(2, 200, AppState::Running, None);
    broken.progress = f32::NAN;
    let error = store.commit(epoch, &batch(vec![broken], vec![], vec![])).await.unwrap_err();
    assert!(
        matches!(&error, StoreError::Corrupt { what, .. } if what.contains(&app_id(2).to_string())),
        "{error:?}"
    );
    assert_eq!(store.load().await.unwrap().apps.len(), 1);
    // Each in-memory store is private: a second one starts empty.
    let other = Store::connect("sqlite::memory:").await.unwrap();
    assert_eq!(other.begin_epoch().await.unwrap(), 1);
}

#[tokio::test]
async fn a_bad_url_says_which_urls_are_accepted() {
    for url in ["mysql://root:hunter2@db/spindle", "spindle.db", "postgres://db:notaport/spindle"] {
        let error = match Store::connect(url).await {
            Err(error @ StoreError::BadUrl { .. }) => error,
            other => panic!("{url}: expected BadUrl, got {other:?}"),
        };
        let message = error.to_string();
        for accepted in ["sqlite://PATH", "sqlite::memory:", "postgres://"] {
            assert!(message.contains(accepted), "{message} should mention {accepted}");
        }
        assert!(!message.contains("hunter2"), "no password in {message}");
    }
}

// ---- leader election (PostgreSQL) -----------------------------------------------------------

/// Two RMs on one database: one leads, the other learns who; once the lease runs out the other
/// takes over in a new epoch, the old leader's renewal and writes are refused, and a clean
/// stop hands the lease over at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_elects_one_leader_whose_lease_fences_the_last() {
    let Some(db) = TestDb::postgres().await else { return };
    let (first, second) = (db.connect().await, db.connect().await);
    assert!(first.elects_leader());
    let lease = Duration::from_millis(300);
    let Leadership::Won { epoch: first_epoch } = first.try_lead("http://a:8088", lease).await.unwrap() else {
        panic!("the first RM of a new database leads");
    };
    assert_eq!(
        second.try_lead("http://b:8088", lease).await.unwrap(),
        Leadership::Held {
            epoch: first_epoch,
            leader_url: "http://a:8088".to_owned()
        }
    );
    // Renewed, the lease outlives its first length.
    for _ in 0..4 {
        tokio::time::sleep(lease / 3).await;
        assert!(first.renew_lease(first_epoch, lease).await.unwrap());
    }
    assert!(matches!(
        second.try_lead("http://b:8088", lease).await.unwrap(),
        Leadership::Held { .. }
    ));
    // Not renewed, it expires and the other RM takes over.
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    let Leadership::Won { epoch: second_epoch } = second.try_lead("http://b:8088", lease).await.unwrap() else {
        panic!("the lease expired: the second RM leads");
    };
    assert_eq!(second_epoch, first_epoch + 1);
    assert!(
        !first.renew_lease(first_epoch, lease).await.unwrap(),
        "the old leader's lease is gone"
    );
    let written = batch(vec![app(1, 100, AppState::Running, None)], vec![], vec![]);
    assert!(matches!(
        first.commit(first_epoch, &written).await,
        Err(StoreError::Fenced { ours, current }) if (ours, current) == (first_epoch, second_epoch)
    ));
    second.commit(second_epoch, &written).await.unwrap();
    // A clean stop gives the lease up: the first RM need not wait for it to expire.
    second.release_lease(second_epoch).await.unwrap();
    assert_eq!(
        first.try_lead("http://a:8088", Duration::from_secs(60)).await.unwrap(),
        Leadership::Won { epoch: second_epoch + 1 }
    );
    // An RM restarted at the URL that holds the lease (it bound that address again, so the
    // last one is gone) takes it back at once.
    let restarted = db.connect().await;
    assert_eq!(
        restarted.try_lead("http://a:8088", lease).await.unwrap(),
        Leadership::Won { epoch: second_epoch + 2 }
    );
}

/// SQLite serves one RM: every start leads, in a new epoch.
#[tokio::test]
async fn sqlite_always_leads() {
    let db = TestDb::sqlite();
    let store = db.connect().await;
    assert!(!store.elects_leader());
    let lease = Duration::from_secs(5);
    assert_eq!(store.try_lead("http://a:8088", lease).await.unwrap(), Leadership::Won { epoch: 1 });
    assert_eq!(store.try_lead("http://a:8088", lease).await.unwrap(), Leadership::Won { epoch: 2 });
    assert!(store.renew_lease(2, lease).await.unwrap());
    store.release_lease(2).await.unwrap();
}
