//! The savepoint format and how a changed job maps its state: round trips through real files,
//! operators added and removed, parallelism changed, and every refusal with its field.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use spindle_protocol::{OperatorKind, OperatorSpec, StreamSpec};
use spindle_storage::S3Settings;

use super::*;
use crate::checkpoints::{CheckpointMeta, SnapshotFile};
use crate::state::StateWriter;

/// generator (2) → key_by → window `count` (2) → file sink: the exactly-once pipeline.
fn spec() -> StreamSpec {
    let job: spindle_protocol::JobSpec =
        toml::from_str(include_str!("../../../examples/stream-exactly-once.toml")).expect("the example parses");
    job.stream.expect("a stream job")
}

/// A complete checkpoint 7 of `spec()` whose snapshot files are real ones under `dir`: the
/// generators' offsets and the windows' key groups (each instance half of them).
fn checkpoint(dir: &Path) -> CheckpointMeta {
    let chk = dir.join("chk-7");
    let mut stages: BTreeMap<String, Vec<SnapshotFile>> = BTreeMap::new();
    for index in 0..2u32 {
        let path = chk.join(format!("events-{}.state", 10 + index));
        let mut writer = StateWriter::create(&path).unwrap();
        writer.operator_state(&(1000 + u64::from(index)).to_le_bytes()).unwrap();
        let bytes = writer.finish().unwrap();
        stages.entry("events".into()).or_default().push(SnapshotFile {
            index,
            range: (0, 128),
            path: path.display().to_string(),
            bytes,
        });
        let range = (index * 64, index * 64 + 64);
        let path = chk.join(format!("count-{}.state", 20 + index));
        let mut writer = StateWriter::create(&path).unwrap();
        for group in range.0..range.1 {
            writer.key_group(group, |bytes| bytes.extend_from_slice(b"window")).unwrap();
        }
        let bytes = writer.finish().unwrap();
        stages.entry("count".into()).or_default().push(SnapshotFile {
            index,
            range,
            path: path.display().to_string(),
            bytes,
        });
    }
    CheckpointMeta {
        id: 7,
        completed_at_ms: 1,
        duration_ms: 2,
        size_bytes: 3,
        parallelism: BTreeMap::from([("events".into(), 2), ("count".into(), 2), ("out".into(), 2)]),
        stages,
        commits: vec![Commit {
            renames: vec![("/out/.staging/a".into(), "/out/part-a".into())],
            ..Commit::default()
        }],
        last: false,
        counters: BTreeMap::new(),
        epoch: (1 << 32) + 3,
    }
}

fn taken() -> Taken {
    Taken {
        app_id: "application_1_0001".into(),
        savepoint_id: 4,
        stopped: true,
        taken_at_ms: 99,
    }
}

/// Settings for savepoints in local directories (no object store is involved).
fn s3() -> S3Settings {
    S3Settings::default()
}

/// The path of a location in a directory (every location of these tests is one).
#[track_caller]
fn local(location: Location) -> PathBuf {
    match location {
        Location::Dir(path) => path,
        Location::Object(object) => panic!("a directory was expected, not {object}"),
    }
}

/// Takes a savepoint of `checkpoint(dir)` into `dir/sp` as the committer does; its directory.
fn take(dir: &Path) -> PathBuf {
    let (meta, copies) = SavepointMeta::of_checkpoint(&spec(), &checkpoint(dir), taken());
    let path = savepoint_path(&Location::Dir(dir.join("savepoints")), "application_1_0001", 4);
    assert_eq!(prepare(&path, &s3()).unwrap(), None, "a new savepoint directory");
    write(&path, meta, &copies, &s3()).unwrap();
    local(path)
}

fn operator(name: &str, kind: OperatorKind, input: &str) -> OperatorSpec {
    OperatorSpec {
        name: name.to_owned(),
        kind: Some(kind),
        input: vec![input.to_owned()],
        parallelism: 1,
        ..OperatorSpec::default()
    }
}

#[track_caller]
fn refused(result: Result<CheckpointMeta, spindle_protocol::SpecError>, field: &str, hint: &str) {
    let err = result.expect_err("refused");
    assert_eq!(err.field, field, "{err}");
    assert!(err.reason.contains(hint), "`{hint}` not in: {err}");
}

#[test]
fn a_savepoint_round_trips_with_its_graph_state_and_commits_and_outlives_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = take(dir.path());
    assert!(path.ends_with("savepoints/savepoint-application_1_0001-4"));
    std::fs::remove_dir_all(dir.path().join("chk-7")).unwrap();

    let (read_dir, meta) = read(&path.display().to_string(), &s3()).unwrap();
    assert_eq!(local(read_dir), path);
    let (url_dir, url_meta) = read(&format!("file://{}/{METADATA}", path.display()), &s3()).unwrap();
    assert_eq!(
        (local(url_dir), url_meta),
        (path.clone(), meta.clone()),
        "its metadata file or a file:// URL name it too"
    );
    assert_eq!(
        (
            meta.format_version,
            meta.checkpoint,
            meta.savepoint_id,
            meta.key_groups,
            meta.stopped
        ),
        (FORMAT_VERSION, 7, 4, 128, true)
    );
    let shape: Vec<(&str, OperatorKind, u32, bool, bool, usize)> = meta
        .operators
        .iter()
        .map(|op| (op.name.as_str(), op.kind, op.parallelism, op.keyed, op.fused, op.state.len()))
        .collect();
    assert_eq!(
        shape,
        [
            ("events", OperatorKind::Generator, 2, false, false, 2),
            ("by_key", OperatorKind::KeyBy, 1, false, true, 0),
            ("count", OperatorKind::Window, 2, true, false, 2),
            ("out", OperatorKind::FileSink, 2, false, false, 0),
        ]
    );
    let count = &meta.operators[2].state;
    assert_eq!(
        (count[1].index, count[1].key_groups, count[1].file.as_str(), count[1].bytes),
        (1, (64, 128), "count-1.state", 64 * 6)
    );
    assert_eq!(meta.operators[0].state[0].bytes, 8, "a generator's offset");
    assert_eq!(meta.commits, checkpoint(dir.path()).commits);
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path.join(METADATA)).unwrap()).unwrap();
    assert_eq!(json["format_version"], 1, "a stable, versioned format");
    assert_eq!(json["operators"][2]["name"], "count");

    // The same job restores every file from the savepoint, numbering after its checkpoint.
    let point = meta.restore_point(&Location::Dir(path.clone()), &spec()).unwrap();
    assert_eq!((point.id, point.epoch, point.commits.len()), (7, (1 << 32) + 3, 1));
    assert_eq!(point.stages["count"][1].path, path.join("count-1.state").display().to_string());
    assert_eq!(point.stages["events"].len(), 2);
    assert!(point.counters.is_empty(), "a new job counts from 0");
    let mut reader = crate::state::StateReader::open(Path::new(&point.stages["events"][1].path)).unwrap();
    assert_eq!(reader.operator_state().unwrap(), Some(1001u64.to_le_bytes().to_vec()));

    // Taking it again (a retried write, an earlier attempt's savepoint) changes nothing.
    let (again, copies) = SavepointMeta::of_checkpoint(&spec(), &checkpoint(dir.path()), taken());
    write(&Location::Dir(path.clone()), again, &copies, &s3()).unwrap();
    assert_eq!(prepare(&Location::Dir(path), &s3()).unwrap(), Some(meta));
}

#[test]
fn state_is_mapped_by_name_onto_a_new_parallelism_and_added_operators_start_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = take(dir.path());
    let (_, meta) = read(&path.display().to_string(), &s3()).unwrap();
    let path = Location::Dir(path);
    let mut changed = spec();
    changed.set_parallelism("count", 3).unwrap();
    // A stateless stage between the window and the sink, and a second keyed operator.
    let mut tap = operator("tap", OperatorKind::Map, "count");
    tap.command = Some(vec!["cat".into()]);
    changed.operators.push(tap);
    changed.operators.last_mut().unwrap().parallelism = 2;
    changed.operators.iter_mut().find(|op| op.name == "out").unwrap().input = vec!["tap".into(), "totals".into()];
    let mut totals = operator("totals", OperatorKind::Reduce, "by_key");
    totals.aggregate = Some(spindle_protocol::Aggregate::Count);
    changed.operators.push(totals);
    changed.validate().unwrap();

    let point = meta.restore_point(&path, &changed).unwrap();
    assert_eq!(point.parallelism["count"], 3, "the new job's parallelism");
    let ranges: Vec<(u32, u32)> = point.stages["count"].iter().map(|file| file.range).collect();
    assert_eq!(
        ranges,
        [(0, 64), (64, 128)],
        "every key group; the new instances read what overlaps theirs"
    );
    assert!(!point.stages.contains_key("tap") && !point.stages.contains_key("totals"));

    // Rebuilt as the coordinator deploys it: each new instance reads the files over its range.
    let layout = crate::graph::fresh_layout(&crate::graph::Graph::build(&changed), &[2, 3, 2, 2, 1], 128, {
        let mut id = 0;
        move || {
            id += 1;
            id
        }
    });
    let middle = &layout[1][1];
    assert_eq!(middle.range, (43, 86));
    let overlapping: Vec<_> = point.stages["count"]
        .iter()
        .filter_map(|file| crate::graph::intersect(file.range, middle.range))
        .collect();
    assert_eq!(overlapping, [(43, 64), (64, 86)]);
}

#[test]
fn state_that_would_be_dropped_or_misread_is_refused_with_its_field_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let path = take(dir.path());
    let (_, meta) = read(&path.display().to_string(), &s3()).unwrap();
    let path = Location::Dir(path);

    let mut other_groups = spec();
    other_groups.key_groups = 64;
    refused(
        meta.restore_point(&path, &other_groups),
        "stream.key_groups",
        "set key_groups = 128",
    );

    let mut more_partitions = spec();
    more_partitions.operators[0].parallelism = 3;
    refused(
        meta.restore_point(&path, &more_partitions),
        "stream.operators[0].parallelism",
        "offsets are per partition",
    );

    let mut renamed = spec();
    renamed.operators[2].name = "counts".into();
    renamed.operators[3].input = vec!["counts".into()];
    refused(
        meta.restore_point(&path, &renamed),
        "stream.operators",
        "operator `count` (window) is not in this job",
    );
    renamed.allow_dropped_state = true;
    let point = meta.restore_point(&path, &renamed).unwrap();
    assert!(!point.stages.contains_key("count") && point.stages.contains_key("events"));

    let mut other_kind = spec();
    other_kind.operators[2].kind = Some(OperatorKind::Reduce);
    other_kind.operators[2].size_ms = None;
    refused(
        meta.restore_point(&path, &other_kind),
        "stream.operators[2].kind",
        "was a keyed window in the savepoint and is a keyed reduce now",
    );

    // Operators without state go and change freely: the sink has none.
    let mut no_sink_state = spec();
    no_sink_state.operators[3].kind = Some(OperatorKind::StdoutSink);
    no_sink_state.operators[3].path = None;
    meta.restore_point(&path, &no_sink_state).unwrap();

    let mut newer = meta.clone();
    newer.format_version = 2;
    refused(newer.restore_point(&path, &spec()), "stream.from_savepoint", "format version 2");
    let mut escaping = meta.clone();
    escaping.operators[2].state[0].file = "../../etc/passwd".into();
    refused(
        escaping.restore_point(&path, &spec()),
        "stream.from_savepoint",
        "not a file name inside",
    );
}

#[test]
fn savepoints_that_are_missing_of_an_unknown_version_or_writable_by_others_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here");
    let err = read(&missing.display().to_string(), &s3()).unwrap_err();
    assert!(
        err.field == "stream.from_savepoint" && err.reason.contains("no savepoint at"),
        "{err}"
    );
    assert_eq!(read("relative/sp", &s3()).unwrap_err().field, "stream.from_savepoint");

    let path = take(dir.path());
    let metadata = path.join(METADATA);
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&metadata).unwrap()).unwrap();
    json["format_version"] = 9.into();
    json["operators"] = "a shape this build does not know".into();
    std::fs::write(&metadata, serde_json::to_vec(&json).unwrap()).unwrap();
    let err = read(&path.display().to_string(), &s3()).unwrap_err();
    assert!(
        err.reason.contains("format version 9"),
        "the version is named, not a parse error: {err}"
    );

    std::fs::set_permissions(&metadata, std::fs::Permissions::from_mode(0o666)).unwrap();
    let err = read(&path.display().to_string(), &s3()).unwrap_err();
    assert!(err.reason.contains("only it may write"), "{err}");
}
