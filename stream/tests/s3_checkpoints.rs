//! Snapshot files and checkpoint metadata on a real S3-compatible server (`s3s-fs`, which
//! `.ci/run` starts with the bucket `spindle-test`): what a rescale's new owner reads back with
//! ranged GETs equals what was written, a cut object is refused, and the AM's storage lists,
//! completes, verifies and prunes checkpoints on the store. Skipped with a line saying so when
//! the server is not there, unless SPINDLE_REQUIRE_S3=1.

use std::collections::BTreeMap;

use spindle_storage::{ObjectUrl, S3Settings, block_on};
use spindle_stream::checkpoints::{CheckpointMeta, SnapshotFile, Storage};
use spindle_stream::location::Location;
use spindle_stream::{OperatorError, StateReader, StateWriter};

fn test_s3() -> Option<S3Settings> {
    let endpoint = std::env::var("SPINDLE_TEST_S3").unwrap_or_else(|_| "http://127.0.0.1:8014".to_owned());
    let address = endpoint.trim_start_matches("http://").trim_end_matches('/').to_owned();
    if std::net::TcpStream::connect(&address).is_err() {
        assert!(
            std::env::var_os("SPINDLE_REQUIRE_S3").is_none(),
            "SPINDLE_REQUIRE_S3 is set but no S3 server answers at {endpoint}"
        );
        eprintln!("skipped: no S3-compatible server at {endpoint} (set SPINDLE_TEST_S3)");
        return None;
    }
    Some(S3Settings::from_env(&BTreeMap::from([
        ("AWS_ENDPOINT_URL".to_owned(), endpoint),
        ("AWS_ACCESS_KEY_ID".to_owned(), "spindle-test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY".to_owned(), "spindle-test-secret".to_owned()),
    ])))
}

fn unique_root(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("s3://spindle-test/stream-{name}-{nanos}")
}

/// Group `g`'s bytes: sizes vary so sections straddle the 16 MB fetch bound.
fn group_bytes(group: u32) -> Vec<u8> {
    let len = if group % 16 == 3 { 9 << 20 } else { 1000 + group as usize * 37 };
    (0..len).map(|i| (i as u32).wrapping_mul(31).wrapping_add(group) as u8).collect()
}

#[test]
fn a_snapshot_on_the_store_reads_back_by_key_group_and_a_cut_one_is_refused() {
    let Some(s3) = test_s3() else { return };
    let root = Location::open(&unique_root("snapshot"), &s3).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let file = root.child("chk-1/count-3.state");
    let mut writer = StateWriter::create_at(&file, scratch.path()).unwrap();
    for group in 0..64 {
        writer
            .key_group(group, |bytes| bytes.extend_from_slice(&group_bytes(group)))
            .unwrap();
    }
    writer.operator_state(b"offsets").unwrap();
    let size = writer.finish().unwrap();
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0, "the scratch copy is gone");
    assert_eq!(file.size().unwrap(), Some(size));

    let mut reader = StateReader::open_at(&file).unwrap();
    assert_eq!(reader.key_groups().count(), 64);
    let mut seen = Vec::new();
    // Groups 10..40 as a new owner after a rescale reads them: adjacent sections in few GETs.
    reader
        .read_key_groups(&(10..40), |group, bytes| {
            assert_eq!(bytes, group_bytes(group).as_slice(), "group {group}");
            seen.push(group);
            Ok(())
        })
        .unwrap();
    assert_eq!(seen, (10..40).collect::<Vec<_>>());
    assert_eq!(reader.operator_state().unwrap().as_deref(), Some(&b"offsets"[..]));

    let Location::Object(object) = &file else { unreachable!() };
    let whole = block_on(object.get()).unwrap();
    block_on(object.put(whole.slice(..whole.len() - 5))).unwrap();
    assert!(matches!(StateReader::open_at(&file), Err(OperatorError::CorruptState(_))));
    block_on(ObjectUrl::parse(&root.to_string(), &s3).unwrap().delete_all()).unwrap();
}

#[test]
fn the_ams_storage_completes_verifies_and_prunes_checkpoints_on_the_store() {
    let Some(s3) = test_s3() else { return };
    let base = unique_root("storage");
    let storage = Storage::new(&Location::open(&base, &s3).unwrap(), "app-1", s3.clone());
    storage.prepare().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    for id in 1..=4 {
        let file = storage.dir(id).child("count-0.state");
        let mut writer = StateWriter::create_at(&file, scratch.path()).unwrap();
        writer.key_group(1, |bytes| bytes.extend_from_slice(b"state")).unwrap();
        let bytes = writer.finish().unwrap();
        if id == 4 {
            continue; // never acknowledged by everyone: no metadata
        }
        storage
            .complete(&CheckpointMeta {
                id,
                completed_at_ms: 1,
                duration_ms: 1,
                size_bytes: bytes,
                parallelism: BTreeMap::new(),
                stages: BTreeMap::from([(
                    "count".to_owned(),
                    vec![SnapshotFile {
                        index: 0,
                        range: (0, 128),
                        path: file.to_string(),
                        bytes,
                    }],
                )]),
                commits: Vec::new(),
                last: false,
                counters: BTreeMap::new(),
                epoch: 0,
            })
            .unwrap();
    }
    assert_eq!(storage.ids(), vec![1, 2, 3, 4]);
    assert_eq!(
        storage.complete_checkpoints().iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(storage.latest_whole().unwrap().id, 3);
    let Location::Object(newest) = storage.dir(3).child("count-0.state") else {
        unreachable!()
    };
    block_on(newest.delete()).unwrap();
    assert_eq!(storage.latest_whole().unwrap().id, 2, "3 lost a file: recover from 2");

    storage.prune(1);
    assert_eq!(
        storage.ids(),
        vec![3, 4],
        "all but the newest complete one and the one in flight go"
    );
    block_on(ObjectUrl::parse(&base, &s3).unwrap().delete_all()).unwrap();

    let wrong = S3Settings {
        secret_access_key: Some("wrong".to_owned()),
        ..s3.clone()
    };
    let refused = Storage::new(&Location::open(&base, &wrong).unwrap(), "app-1", wrong).prepare();
    assert!(refused.is_err(), "wrong credentials fail the attempt at once");
}
