//! Bodies about ended apps beyond `finished_apps_in_memory`: what a bounded load leaves in the
//! store, and reading that history back (pages by id, one app with its containers).

use spindle_protocol::{AppId, AppState, ContainerState};
use spindle_resource_manager::cluster::AppQuery;

use super::support::{TestDb, app, app_id, batch, container};

fn ids(apps: &[spindle_resource_manager::records::AppRecord]) -> Vec<u32> {
    apps.iter().map(|app| app.app_id.seq).collect()
}

pub async fn a_bounded_load_keeps_live_apps_and_the_latest_ended(db: TestDb) {
    let store = db.connect().await;
    let epoch = store.begin_epoch().await.unwrap();
    let mut apps = vec![app(1, 100, AppState::Running, None)];
    // Ended in the order 2, 3, …, 6; app 7 ended first of all but its AM container still exits.
    for seq in 2..=6 {
        apps.push(app(seq, 100 + u64::from(seq), AppState::Finished, Some(1_000 + u64::from(seq))));
    }
    apps.push(app(7, 107, AppState::Failed, Some(500)));
    let containers = vec![
        container(1, 1, ContainerState::Running),
        container(3, 1, ContainerState::Complete),
        container(6, 1, ContainerState::Complete),
        container(6, 2, ContainerState::Complete),
        container(7, 1, ContainerState::Running),
    ];
    store.commit(epoch, &batch(apps, containers, vec![])).await.unwrap();

    let snapshot = store.load_bounded(2).await.unwrap();
    let mut loaded = ids(&snapshot.apps);
    loaded.sort_unstable();
    assert_eq!(
        loaded,
        [1, 5, 6, 7],
        "the running app, the two that ended last, and the one still exiting"
    );
    let containers: Vec<(u32, u64)> = snapshot
        .containers
        .iter()
        .map(|c| (c.container_id.app.seq, c.container_id.seq))
        .collect();
    assert_eq!(containers, [(1, 1), (6, 1), (6, 2), (7, 1)], "only the loaded apps' containers");
    assert_eq!(snapshot.newest_unloaded_app, Some(app_id(4)));

    let everything = store.load().await.unwrap();
    assert_eq!(everything.apps.len(), 7);
    assert_eq!(everything.newest_unloaded_app, None);
}

pub async fn app_history_pages_newest_first_by_id_with_filters(db: TestDb) {
    let store = db.connect().await;
    let epoch = store.begin_epoch().await.unwrap();
    // Sequence numbers whose text does not sort: `_10000` < `_9999` as strings.
    let mut apps = Vec::new();
    for seq in [9_998, 9_999, 10_000, 10_001] {
        apps.push(app(seq, 100, AppState::Finished, Some(200)));
    }
    apps[1].state = AppState::Killed;
    apps[2].user = "bob".to_owned();
    apps[3].spec.queue = "other".to_owned();
    store.commit(epoch, &batch(apps, vec![], vec![])).await.unwrap();

    let query = |limit: usize, before: Option<AppId>| AppQuery {
        limit,
        before,
        ..AppQuery::default()
    };
    assert_eq!(
        ids(&store.app_history(&query(10, None)).await.unwrap()),
        [10_001, 10_000, 9_999, 9_998]
    );
    let first = store.app_history(&query(2, None)).await.unwrap();
    assert_eq!(ids(&first), [10_001, 10_000]);
    let next = store.app_history(&query(2, Some(first[1].app_id))).await.unwrap();
    assert_eq!(ids(&next), [9_999, 9_998], "the next page starts below the last one's id");

    let filtered = |state: Option<AppState>, queue: Option<&str>, user: Option<&str>| AppQuery {
        state,
        queue: queue.map(str::to_owned),
        user: user.map(str::to_owned),
        ..query(10, None)
    };
    assert_eq!(
        ids(&store.app_history(&filtered(Some(AppState::Killed), None, None)).await.unwrap()),
        [9_999]
    );
    assert_eq!(
        ids(&store.app_history(&filtered(None, Some("other"), None)).await.unwrap()),
        [10_001]
    );
    assert_eq!(ids(&store.app_history(&filtered(None, None, Some("bob"))).await.unwrap()), [10_000]);
    assert!(
        store
            .app_history(&filtered(Some(AppState::Running), None, None))
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn one_stored_app_reads_back_with_its_containers(db: TestDb) {
    let store = db.connect().await;
    let epoch = store.begin_epoch().await.unwrap();
    let containers = vec![
        container(2, 10, ContainerState::Complete),
        container(2, 9, ContainerState::Complete),
        container(3, 1, ContainerState::Complete),
    ];
    let apps = vec![
        app(2, 100, AppState::Finished, Some(300)),
        app(3, 100, AppState::Finished, Some(300)),
    ];
    store.commit(epoch, &batch(apps.clone(), containers, vec![])).await.unwrap();

    let (found, containers) = store.app_with_containers(app_id(2)).await.unwrap().expect("stored");
    assert_eq!(found, apps[0]);
    let seqs: Vec<u64> = containers.iter().map(|c| c.container_id.seq).collect();
    assert_eq!(seqs, [9, 10], "its containers only, by id (not as text)");
    assert!(store.app_with_containers(app_id(99)).await.unwrap().is_none());
}
