use super::*;

#[test]
fn passwords_are_masked_in_urls() {
    assert_eq!(
        mask_password("postgres://spindle:hunter2@db:5432/rm"),
        "postgres://spindle:***@db:5432/rm"
    );
    assert_eq!(mask_password("postgres://spindle@db/rm"), "postgres://spindle@db/rm");
    assert_eq!(mask_password("mysql://a:b@c/d"), "mysql://a:***@c/d");
    assert_eq!(mask_password("sqlite:///tmp/a@b:c"), "sqlite:///tmp/a@b:c");
    assert_eq!(mask_password("nonsense"), "nonsense");
    assert_eq!(
        mask_password("postgres://u:pw@db:5432/rm?sslmode=disable"),
        "postgres://u:***@db:5432/rm?sslmode=disable"
    );
}

#[test]
fn passwords_with_unencoded_separators_and_in_parameters_are_masked_whole() {
    assert_eq!(mask_password("postgres://spindle:p@ss/w:rd@db/rm"), "postgres://spindle:***@db/rm");
    assert_eq!(
        mask_password("postgres://db/rm?user=spindle&password=hunter2&sslpassword=x"),
        "postgres://db/rm?user=spindle&password=***&sslpassword=***"
    );
    assert_eq!(mask_password("postgres://db/rm?options=a@b:c"), "postgres://db/rm?options=a@b:c");
    for url in ["postgres://spindle:hunter2@db/rm", "postgresql://a:hunter2@h/d?password=hunter2"] {
        assert!(!mask_password(url).contains("hunter2"), "{url}");
    }
}

#[test]
fn sqlite_synchronous_reads_full_or_normal_and_names_itself_otherwise() {
    #[derive(Debug, serde::Deserialize)]
    struct Field {
        sqlite_synchronous: SqliteSynchronous,
    }
    let read = |text: &str| toml::from_str::<Field>(text).map(|field| field.sqlite_synchronous);
    assert_eq!(read("sqlite_synchronous = \"full\"").unwrap(), SqliteSynchronous::Full);
    assert_eq!(read("sqlite_synchronous = \"NORMAL\"").unwrap(), SqliteSynchronous::Normal);
    assert_eq!(SqliteSynchronous::default(), SqliteSynchronous::Full);
    let message = read("sqlite_synchronous = \"off\"").unwrap_err().to_string();
    assert!(
        message.contains("sqlite_synchronous is \"off\"") && message.contains("\"full\"") && message.contains("\"normal\""),
        "{message}"
    );
}

#[test]
fn bad_url_message_lists_the_accepted_forms_without_the_password() {
    let message = StoreError::bad_url("mysql://root:hunter2@db/rm").to_string();
    assert!(!message.contains("hunter2"), "{message}");
    for form in ["sqlite://PATH", "sqlite::memory:", "postgres://"] {
        assert!(message.contains(form), "{message} should mention {form}");
    }
}

/// The RM drives the store from spawned tasks, so every future it returns must be `Send`.
/// Checked at compile time; the closure is never called.
#[test]
fn store_futures_are_send() {
    fn assert_send<T: Send>(_: T) {}
    let _check = |store: &Store, batch: &WriteBatch| {
        assert_send(Store::connect("sqlite::memory:"));
        assert_send(store.begin_epoch());
        assert_send(store.load());
        assert_send(store.commit(1, batch));
        assert_send(store.purge_finished_before(0));
        assert_send(store.forgotten_nodes());
        assert_send(store.forgotten_node(&spindle_protocol::NodeId("n1:8042".to_owned())));
        assert_send(store.purge_forgotten_nodes_before(0));
        assert_send(store.close());
    };
}

#[tokio::test]
async fn in_memory_store_keeps_its_data_between_calls() {
    let store = Store::connect("sqlite::memory:").await.unwrap();
    assert_eq!(store.describe(), "sqlite::memory:");
    assert_eq!(store.begin_epoch().await.unwrap(), 1);
    assert_eq!(store.begin_epoch().await.unwrap(), 2);
    assert_eq!(store.load().await.unwrap(), Snapshot::default());
}
