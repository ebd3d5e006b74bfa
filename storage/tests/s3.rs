//! The object operations against a real S3-compatible server (`s3s-fs`, which `.ci/run`
//! installs and starts; its bucket `spindle-test` exists). Skipped with a line saying so when
//! the server is not there, unless SPINDLE_REQUIRE_S3=1.

use std::collections::BTreeMap;

use spindle_storage::{ObjectReader, ObjectUrl, S3Settings};

/// The test server's settings, or `None` (the test skips) when it does not answer.
pub fn test_s3() -> Option<S3Settings> {
    let endpoint = std::env::var("SPINDLE_TEST_S3").unwrap_or_else(|_| "http://127.0.0.1:8014".to_owned());
    let address = endpoint.trim_start_matches("http://").trim_end_matches('/').to_owned();
    let reachable = std::net::TcpStream::connect(&address).is_ok();
    if !reachable {
        if std::env::var_os("SPINDLE_REQUIRE_S3").is_some() {
            panic!("SPINDLE_REQUIRE_S3 is set but no S3 server answers at {endpoint}");
        }
        eprintln!("skipped: no S3-compatible server at {endpoint} (set SPINDLE_TEST_S3)");
        return None;
    }
    Some(S3Settings::from_env(&BTreeMap::from([
        ("AWS_ENDPOINT_URL".to_owned(), endpoint),
        ("AWS_ACCESS_KEY_ID".to_owned(), "spindle-test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY".to_owned(), "spindle-test-secret".to_owned()),
    ])))
}

fn unique_prefix(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("s3://spindle-test/storage-{name}-{nanos}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_are_written_listed_read_by_range_copied_and_deleted() {
    let Some(settings) = test_s3() else { return };
    let root = ObjectUrl::parse(&unique_prefix("ops"), &settings).unwrap();
    root.child("b/two.txt").put("two\n").await.unwrap();
    root.child("a.txt").put("one\nline two\n").await.unwrap();
    let listed = root.list().await.unwrap();
    let keys: Vec<&str> = listed.iter().map(|e| e.key.strip_prefix(root.key()).unwrap()).collect();
    assert_eq!(keys, ["/a.txt", "/b/two.txt"]);
    assert_eq!(listed[0].size, 13);
    assert_eq!(&root.child("a.txt").get_range(4..8).await.unwrap()[..], b"line");
    assert_eq!(root.child("a.txt").size().await.unwrap(), Some(13));
    assert_eq!(root.child("missing").size().await.unwrap(), None);

    // A multipart upload of a file bigger than one part.
    let dir = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..20 * 1024 * 1024u32).map(|n| (n % 251) as u8).collect();
    std::fs::write(dir.path().join("big"), &big).unwrap();
    assert_eq!(
        root.child("big").upload_file(&dir.path().join("big")).await.unwrap(),
        big.len() as u64
    );
    root.child("big").copy_to(&root.child("copy")).await.unwrap();
    let copy = root.child("copy");
    let read = tokio::task::spawn_blocking(move || {
        let mut reader = ObjectReader::new(copy, 5, big.len() as u64, 3 * 1024 * 1024);
        let mut read = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut read).unwrap();
        (read, big)
    })
    .await
    .unwrap();
    assert!(read.0 == read.1[5..], "the copy reads back from offset 5");

    root.delete_all().await.unwrap();
    assert!(root.list().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_fail_with_the_url_and_no_secret() {
    let Some(mut settings) = test_s3() else { return };
    settings.secret_access_key = Some("not-the-secret".to_owned());
    let root = ObjectUrl::parse(&unique_prefix("denied"), &settings).unwrap();
    let error = root.child("x").put("x").await.unwrap_err().to_string();
    assert!(error.contains("s3://spindle-test/storage-denied"), "{error}");
    assert!(!error.contains("not-the-secret"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_uploads_appear_only_when_completed_and_aborted_ones_never() {
    let Some(settings) = test_s3() else { return };
    let root = ObjectUrl::parse(&unique_prefix("uploads"), &settings).unwrap();
    let (kept, dropped) = (root.child("kept"), root.child("dropped"));
    let kept_upload = kept.start_upload().await.unwrap();
    let part = kept.upload_part(&kept_upload, 0, b"line\n".to_vec()).await.unwrap();
    let dropped_upload = dropped.start_upload().await.unwrap();
    dropped.upload_part(&dropped_upload, 0, b"never\n".to_vec()).await.unwrap();
    assert!(root.list().await.unwrap().is_empty(), "nothing is visible before completion");

    kept.complete_upload(&kept_upload, std::slice::from_ref(&part)).await.unwrap();
    kept.complete_upload(&kept_upload, &[part]).await.unwrap();
    assert_eq!(&kept.get().await.unwrap()[..], b"line\n", "completed once, again a no-op");
    dropped.abort_upload(&dropped_upload).await.unwrap();
    assert!(dropped.complete_upload(&dropped_upload, &["x".to_owned()]).await.is_err());
    let keys: Vec<String> = root.list().await.unwrap().into_iter().map(|entry| entry.key).collect();
    assert_eq!(keys, [kept.key().to_owned()]);
    root.delete_all().await.unwrap();
}
