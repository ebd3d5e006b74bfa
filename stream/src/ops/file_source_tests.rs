use std::io::Write;
use std::path::Path;

use spindle_protocol::OperatorKind;

use super::*;
use crate::ops::test_context;

fn spec(dir: &Path, follow: bool, time_field: Option<&str>) -> OperatorSpec {
    OperatorSpec {
        name: "files".into(),
        kind: Some(OperatorKind::FileSource),
        path: Some(dir.display().to_string()),
        follow: Some(follow),
        time_field: time_field.map(str::to_owned),
        ..OperatorSpec::default()
    }
}

fn lines(out: &Batch) -> Vec<String> {
    out.iter().map(|record| String::from_utf8(record.value.to_vec()).unwrap()).collect()
}

fn append(path: &Path, text: &str) {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

#[test]
fn bounded_reading_ends_with_the_last_partial_line() {
    let dir = tempfile::tempdir().unwrap();
    append(&dir.path().join("a.log"), "1 x\nbad y\r\n3 z");
    append(&dir.path().join("b.log"), "4 w\n");
    append(&dir.path().join(".hidden"), "9 h\n");
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let mut source = FileSource::new(&spec(dir.path(), false, Some("$1")), &test_context(0, 1)).unwrap();
    let mut out = Batch::new();
    let mut polls = 0;
    while source.poll(&mut out, 2).unwrap() != SourceStatus::Finished {
        polls += 1;
        assert!(polls < 10);
    }
    assert_eq!(lines(&out), vec!["1 x", "3 z", "4 w"]);
    assert_eq!(out.iter().map(|record| record.time).collect::<Vec<_>>(), vec![1, 3, 4]);
    assert_eq!(source.bad_records(), 1);
    assert_eq!(source.lag(), Some(0));
}

#[test]
fn following_waits_for_complete_lines_and_new_files_and_resumes_from_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.log");
    append(&a, "one\ntw");
    let mut source = FileSource::new(&spec(dir.path(), true, None), &test_context(0, 1)).unwrap();
    let mut out = Batch::new();
    assert_eq!(source.poll(&mut out, 100).unwrap(), SourceStatus::Ready);
    assert_eq!(source.poll(&mut out, 100).unwrap(), SourceStatus::Idle);
    assert_eq!(lines(&out), vec!["one"]);
    assert_eq!(source.lag(), Some(1), "2 bytes unread, lines of 4 bytes so far: one record");
    assert!(out.iter().next().unwrap().time > 1_600_000_000_000, "processing time");

    append(&a, "o\nthree\n");
    append(&dir.path().join("b.log"), "four\n");
    std::thread::sleep(RESCAN_INTERVAL);
    while source.poll(&mut out, 100).unwrap() == SourceStatus::Ready {}
    assert_eq!(lines(&out), vec!["one", "two", "three", "four"]);

    let offsets = source.snapshot().unwrap();
    append(&a, "five\n");
    let mut restored = FileSource::new(&spec(dir.path(), true, None), &test_context(0, 1)).unwrap();
    restored.restore(&offsets).unwrap();
    let mut after = Batch::new();
    while restored.poll(&mut after, 100).unwrap() == SourceStatus::Ready {}
    assert_eq!(lines(&after), vec!["five"]);
    assert!(restored.restore(b"not json").is_err());
}

#[test]
fn instances_split_the_files() {
    let dir = tempfile::tempdir().unwrap();
    for file in 0..20 {
        append(&dir.path().join(format!("f{file}")), &format!("line{file}\n"));
    }
    let mut all = Vec::new();
    for index in 0..3 {
        let mut source = FileSource::new(&spec(dir.path(), false, None), &test_context(index, 3)).unwrap();
        let mut out = Batch::new();
        while source.poll(&mut out, 7).unwrap() != SourceStatus::Finished {}
        all.extend(lines(&out));
    }
    all.sort();
    let mut expected: Vec<String> = (0..20).map(|file| format!("line{file}")).collect();
    expected.sort();
    assert_eq!(all, expected);
}

#[test]
fn a_long_line_is_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let long = "y".repeat(CHUNK * 3 + 5);
    append(&dir.path().join("a"), &format!("{long}\nshort\n"));
    let mut source = FileSource::new(&spec(dir.path(), false, None), &test_context(0, 1)).unwrap();
    let mut out = Batch::new();
    while source.poll(&mut out, 100).unwrap() != SourceStatus::Finished {}
    assert_eq!(lines(&out), vec![long, "short".to_string()]);
}
