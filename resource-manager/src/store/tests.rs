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
