use crate::job::JobSpec;
use crate::stream::{Aggregate, AutoscaleSpec, OperatorKind, OperatorSpec, StreamSpec};

/// generator → key_by → window count → file sink: the pipeline of the exactly-once test.
/// The example pipeline (examples/stream-window-count.toml: generator → key_by → 1 s window
/// `count` → sink) with its sink writing files, as the checks of paths need.
fn window_count() -> StreamSpec {
    let job: crate::JobSpec = toml::from_str(include_str!("../../../examples/stream-window-count.toml")).expect("the example parses");
    let mut spec = job.stream.expect("a stream job");
    let out = spec.operators.last_mut().expect("a sink");
    out.kind = Some(OperatorKind::FileSink);
    out.path = Some("/tmp/spindle-out".into());
    spec
}

fn operator(name: &str, kind: OperatorKind, input: &[&str]) -> OperatorSpec {
    OperatorSpec {
        name: name.to_owned(),
        kind: Some(kind),
        input: input.iter().map(|name| (*name).to_owned()).collect(),
        parallelism: 1,
        ..OperatorSpec::default()
    }
}

/// Asserts the spec is refused naming `field`, with a reason containing `hint`.
#[track_caller]
fn assert_refused(spec: &StreamSpec, field: &str, hint: &str) {
    let err = spec.validate().expect_err("the spec is invalid");
    assert_eq!(err.field, field, "{err}");
    assert!(err.reason.contains(hint), "`{hint}` not in: {err}");
}

#[test]
fn the_example_is_valid_with_defaults() {
    let spec = window_count();
    spec.validate().unwrap();
    assert_eq!(
        (spec.key_groups, spec.checkpoint_interval_ms, spec.keep_checkpoints),
        (128, 1000, 3)
    );
    assert_eq!(spec.operator("count").unwrap().aggregate, Some(Aggregate::Count));
    assert!(spec.operator("nope").is_none());
}

#[test]
fn a_job_spec_needs_its_stream_section_and_others_may_not_have_one() {
    let mut job: JobSpec = serde_json::from_value(serde_json::json!({"name": "s", "kind": "stream"})).unwrap();
    assert_eq!(job.validate().unwrap_err().field, "stream");
    job.stream = Some(window_count());
    job.validate().unwrap();
    job.stream.as_mut().unwrap().worker.memory_mb = 4096;
    assert_eq!(job.largest_container().memory_mb, 4096);
    job.stream.as_mut().unwrap().key_groups = 0;
    assert_eq!(job.validate().unwrap_err().field, "stream.key_groups");

    let mut shell: JobSpec = serde_json::from_value(serde_json::json!({
        "name": "x", "kind": "shell", "shell": {"command": ["true"]}
    }))
    .unwrap();
    shell.stream = Some(window_count());
    assert_eq!(shell.validate().unwrap_err().field, "stream");
}

#[test]
fn names_and_kinds() {
    let mut spec = window_count();
    spec.operators.clear();
    assert_refused(&spec, "stream.operators", "at least a source and a sink");
    let mut spec = window_count();
    spec.operators
        .extend((0..61).map(|index| operator(&format!("tap{index}"), OperatorKind::DiscardSink, &["count"])));
    assert_refused(&spec, "stream.operators", "at most 64");
    let cases: [(&str, &str); 3] = [("", "must not be empty"), ("Count", "a-z, 0-9"), (&"x".repeat(65), "at most 64")];
    for (name, hint) in cases {
        let mut spec = window_count();
        spec.operators[2].name = name.to_owned();
        assert_refused(&spec, "stream.operators[2].name", hint);
    }
    let mut spec = window_count();
    spec.operators[3].name = "count".into();
    assert_refused(&spec, "stream.operators[3].name", "also the name of operators[2]");
    let mut spec = window_count();
    spec.operators[1].kind = None;
    assert_refused(&spec, "stream.operators[1].kind", "one of generator, file_source");
    let missing: StreamSpec = toml::from_str("[[operators]]\nname = \"a\"\n").unwrap();
    assert_refused(&missing, "stream.operators[0].kind", "needs a kind");
}

#[test]
fn inputs_must_exist_and_fit_their_operator() {
    type Breakage = fn(&mut StreamSpec);
    let cases: [(Breakage, &str, &str); 8] = [
        (
            |spec| spec.operators[0].input = vec!["out".into()],
            "stream.operators[0].input",
            "sources take no input",
        ),
        (
            |spec| spec.operators[2].input.clear(),
            "stream.operators[2].input",
            "at least one operator",
        ),
        (
            |spec| spec.operators[2].input = vec!["bykey".into()],
            "stream.operators[2].input",
            "not an operator of this job",
        ),
        (
            |spec| spec.operators[2].input = vec!["by_key".into(), "by_key".into()],
            "stream.operators[2].input",
            "twice",
        ),
        (
            |spec| spec.operators[1].input.push("events2".into()),
            "stream.operators[1].input",
            "exactly one",
        ),
        (
            |spec| {
                spec.operators.push(operator("late", OperatorKind::StdoutSink, &["out"]));
            },
            "stream.operators[4].input",
            "sinks emit nothing",
        ),
        (
            |spec| spec.operators.retain(|operator| operator.name != "out"),
            "stream.operators",
            "has no sink",
        ),
        (
            |spec| {
                spec.operators.push(operator("unused", OperatorKind::Map, &["events"]));
                spec.operators[4].command = Some(vec!["cat".into()]);
            },
            "stream.operators[4]",
            "`unused` feeds nothing",
        ),
    ];
    for (break_it, field, hint) in cases {
        let mut spec = window_count();
        break_it(&mut spec);
        assert_refused(&spec, field, hint);
    }
    let mut spec = window_count();
    spec.operators.remove(0);
    spec.operators[0].input = vec!["out".into()];
    spec.operators[0].kind = Some(OperatorKind::Filter);
    assert_refused(&spec, "stream.operators[0].input", "sinks emit nothing");
}

#[test]
fn cycles_are_refused_naming_their_operators() {
    let mut spec = window_count();
    // by_key ← count ← by_key, beside a proper source so only the cycle is wrong.
    spec.operators[1].input = vec!["count".into()];
    spec.operators.push(operator("tap", OperatorKind::DiscardSink, &["events"]));
    let err = spec.validate().unwrap_err();
    assert!(err.reason.contains("form a cycle"), "{err}");
    assert!(
        err.reason.contains("by_key → count → by_key") || err.reason.contains("count → by_key → count"),
        "{err}"
    );
    let mut spec = window_count();
    spec.operators[1].input = vec!["by_key".into()];
    assert_refused(&spec, "stream.operators[1].input", "by_key → by_key");
}

#[test]
fn keyed_operators_need_a_key_by_on_every_input() {
    let mut spec = window_count();
    spec.operators[2].input = vec!["events".into()];
    spec.operators[1].input = vec!["events".into()];
    spec.operators.push(operator("all", OperatorKind::DiscardSink, &["by_key"]));
    assert_refused(
        &spec,
        "stream.operators[2].input",
        "operator `count`: input `events` is not keyed: put a key_by between them",
    );

    // A filter after the key_by keeps the key; a map with a command in between does not.
    let mut spec = window_count();
    let mut filter = operator("some", OperatorKind::Filter, &["by_key"]);
    filter.expr = Some("$2 > 1".into());
    spec.operators.push(filter);
    spec.operators[2].input = vec!["some".into()];
    spec.validate().unwrap();
    spec.operators[4] = OperatorSpec {
        command: Some(vec!["cat".into()]),
        ..operator("some", OperatorKind::Map, &["by_key"])
    };
    assert_refused(&spec, "stream.operators[2].input", "input `some` is not keyed");
}

#[test]
fn parallelism_bounds() {
    type Breakage = fn(&mut StreamSpec);
    let cases: [(Breakage, &str, &str); 6] = [
        (
            |spec| spec.operators[2].parallelism = 0,
            "stream.operators[2].parallelism",
            "use 1 to 1024",
        ),
        (
            |spec| spec.operators[3].parallelism = 1025,
            "stream.operators[3].parallelism",
            "use 1 to 1024",
        ),
        (
            |spec| spec.operators[2].parallelism = 129,
            "stream.operators[2].parallelism",
            "key_groups (128)",
        ),
        (
            |spec| spec.operators[1].parallelism = 2,
            "stream.operators[1].parallelism",
            "remove `parallelism`",
        ),
        (
            |spec| {
                spec.operators[0] = OperatorSpec {
                    address: Some("127.0.0.1:9999".into()),
                    parallelism: 2,
                    ..operator("events", OperatorKind::TcpSource, &[])
                }
            },
            "stream.operators[0].parallelism",
            "must be 1",
        ),
        (
            |spec| {
                spec.operators[0] = OperatorSpec {
                    stream: Some("EVENTS".into()),
                    parallelism: 3,
                    ..operator("events", OperatorKind::NatsSource, &[])
                }
            },
            "stream.operators[0].parallelism",
            "must be 1",
        ),
    ];
    for (break_it, field, hint) in cases {
        let mut spec = window_count();
        break_it(&mut spec);
        assert_refused(&spec, field, hint);
    }
}

#[test]
fn fields_that_do_not_apply_to_the_kind_are_refused() {
    let mut spec = window_count();
    spec.operators[2].rate = Some(5);
    assert_refused(&spec, "stream.operators[2].rate", "`rate` applies only to kind = generator");
    let mut spec = window_count();
    spec.operators[0].path = Some("/data".into());
    assert_refused(&spec, "stream.operators[0].path", "kind = file_source or file_sink");
    let mut spec = window_count();
    spec.operators[3].options.insert("a".into(), "b".into());
    assert_refused(&spec, "stream.operators[3].options", "kind = user");
}

#[test]
fn required_fields_and_values_per_kind() {
    type Breakage = fn(&mut OperatorSpec);
    // (operator index, breakage, field, hint)
    let cases: [(usize, Breakage, &str, &str); 18] = [
        (0, |op| op.rate = Some(0), "rate", "at least 1"),
        (0, |op| op.keys = Some(0), "keys", "at least 1"),
        (1, |op| op.expr = None, "expr", "needs `expr`"),
        (1, |op| op.expr = Some(" ".into()), "expr", "must not be empty"),
        (1, |op| op.delimiter = Some(String::new()), "delimiter", "must not be empty"),
        (
            1,
            |op| op.command = Some(vec!["cat".into()]),
            "command",
            "applies only to kind = map",
        ),
        (2, |op| op.size_ms = None, "size_ms", "needs `size_ms`"),
        (2, |op| op.size_ms = Some(0), "size_ms", "out of range"),
        (2, |op| op.size_ms = Some(86_400_001), "size_ms", "a day"),
        (2, |op| op.slide_ms = Some(2000), "slide_ms", "out of range"),
        (2, |op| op.slide_ms = Some(300), "slide_ms", "does not divide"),
        (2, |op| op.aggregate = None, "aggregate", "count, sum, min or max"),
        (2, |op| op.field = Some("$2".into()), "field", "reads no field"),
        (2, |op| op.aggregate = Some(Aggregate::Sum), "field", "needs `field`"),
        (3, |op| op.path = None, "path", "needs `path`"),
        (3, |op| op.path = Some("out".into()), "path", "absolute"),
        (3, |op| op.path = Some("s3://Out/x".into()), "path", "bucket"),
        (3, |op| op.roll_mb = Some(0), "roll_mb", "at least 1"),
    ];
    for (index, break_it, field, hint) in cases {
        let mut spec = window_count();
        break_it(&mut spec.operators[index]);
        assert_refused(&spec, &format!("stream.operators[{index}].{field}"), hint);
    }
    let mut spec = window_count();
    spec.operators[2].aggregate = Some(Aggregate::Max);
    spec.operators[2].field = Some("$0".into());
    assert_refused(&spec, "stream.operators[2].field", "from $1");
    spec.operators[2].field = Some("$2".into());
    spec.operators[2].slide_ms = Some(250);
    spec.validate().unwrap();
}

#[test]
fn sources_sinks_and_transforms_of_every_kind() {
    let mut spec = window_count();
    let map = |expr: Option<&str>, command: Option<Vec<String>>| OperatorSpec {
        expr: expr.map(str::to_owned),
        command,
        ..operator("by_key", OperatorKind::Map, &["events"])
    };
    spec.operators[1] = map(None, None);
    assert_refused(&spec, "stream.operators[1].expr", "either `expr`");
    spec.operators[1] = map(Some("$1"), Some(vec!["cat".into()]));
    assert_refused(&spec, "stream.operators[1].command", "not both");
    spec.operators[1] = map(None, Some(Vec::new()));
    assert_refused(&spec, "stream.operators[1].command", "must name a program");

    let source = |kind| operator("events", kind, &[]);
    let mut spec = window_count();
    spec.operators[0] = source(OperatorKind::TcpSource);
    assert_refused(&spec, "stream.operators[0].address", "needs `address`");
    spec.operators[0].address = Some("localhost".into());
    assert_refused(&spec, "stream.operators[0].address", "not host:port");
    spec.operators[0].address = Some("localhost:7000".into());
    spec.operators[0].time_field = Some("3".into());
    assert_refused(&spec, "stream.operators[0].time_field", "`$N`");
    spec.operators[0].time_field = Some("$3".into());
    spec.validate().unwrap();

    spec.operators[0] = source(OperatorKind::NatsSource);
    assert_refused(&spec, "stream.operators[0].stream", "needs `stream`");
    spec.operators[0].stream = Some("EVENTS".into());
    spec.operators[0].subject = Some("events.>".into());
    spec.validate().unwrap();

    spec.operators[0] = source(OperatorKind::FileSource);
    assert_refused(&spec, "stream.operators[0].path", "needs `path`");
    spec.operators[0].path = Some("/data/in".into());
    spec.operators[0].follow = Some(false);
    spec.validate().unwrap();

    spec.operators[3] = operator("out", OperatorKind::NatsSink, &["count"]);
    assert_refused(&spec, "stream.operators[3].subject", "needs `subject`");
    spec.operators[3].subject = Some("counts".into());
    spec.validate().unwrap();
    spec.checkpoint_dir = Some("s3://bucket/ckpt".into());
    assert_refused(&spec, "stream.checkpoint_dir", "nats_sink `out` stages its output");
    spec.checkpoint_dir = None;

    spec.operators[2] = operator("count", OperatorKind::User, &["by_key"]);
    assert_refused(&spec, "stream.operators[2].class", "needs `class`");
    spec.operators[2].class = Some("my-op".into());
    spec.operators[2].keyed = Some(true);
    spec.operators[2].parallelism = 200;
    assert_refused(&spec, "stream.operators[2].parallelism", "key_groups");
    spec.operators[2].parallelism = 4;
    spec.validate().unwrap();
}

#[test]
fn job_settings() {
    type Breakage = fn(&mut StreamSpec);
    fn autoscale(min: u32, max: u32, target_utilization: f64) -> AutoscaleSpec {
        AutoscaleSpec {
            min,
            max,
            cooldown_ms: 1000,
            target_utilization,
        }
    }
    let cases: [(Breakage, &str); 19] = [
        (|spec| spec.key_groups = 40_000, "stream.key_groups"),
        (|spec| spec.checkpoint_interval_ms = 49, "stream.checkpoint_interval_ms"),
        (|spec| spec.checkpoint_interval_ms = 3_600_001, "stream.checkpoint_interval_ms"),
        (|spec| spec.checkpoint_dir = Some("ckpt".into()), "stream.checkpoint_dir"),
        (
            |spec| spec.checkpoint_dir = Some("s3://Bucket/ckpt".into()),
            "stream.checkpoint_dir",
        ),
        (|spec| spec.savepoint_dir = Some("savepoints".into()), "stream.savepoint_dir"),
        (|spec| spec.from_savepoint = Some("/sp/../etc".into()), "stream.from_savepoint"),
        (|spec| spec.from_savepoint = Some("hdfs://nn/sp".into()), "stream.from_savepoint"),
        (|spec| spec.allow_dropped_state = true, "stream.allow_dropped_state"),
        (|spec| spec.keep_checkpoints = 0, "stream.keep_checkpoints"),
        (|spec| spec.keep_checkpoints = 101, "stream.keep_checkpoints"),
        (|spec| spec.worker.vcores = 0, "stream.worker.vcores"),
        (|spec| spec.worker_command = Some(Vec::new()), "stream.worker_command"),
        (|spec| spec.max_restarts = 1001, "stream.max_restarts"),
        (|spec| spec.env = [("A=B".to_owned(), "c".to_owned())].into(), "stream.env"),
        (|spec| spec.autoscale = Some(autoscale(0, 4, 0.7)), "stream.autoscale.min"),
        (|spec| spec.autoscale = Some(autoscale(5, 4, 0.7)), "stream.autoscale.max"),
        (|spec| spec.autoscale = Some(autoscale(1, 129, 0.7)), "stream.autoscale.max"),
        (
            |spec| spec.autoscale = Some(autoscale(1, 4, f64::NAN)),
            "stream.autoscale.target_utilization",
        ),
    ];
    for (break_it, field) in cases {
        let mut spec = window_count();
        break_it(&mut spec);
        assert_eq!(spec.validate().unwrap_err().field, field);
    }
    let mut spec = window_count();
    spec.autoscale = Some(autoscale(1, 8, 1.0));
    spec.checkpoint_dir = Some("/shared/ckpt".into());
    spec.savepoint_dir = Some("file:///shared/savepoints".into());
    spec.from_savepoint = Some("/shared/savepoints/savepoint-application_1_0001-1".into());
    spec.allow_dropped_state = true;
    spec.validate().unwrap();
}

#[test]
fn set_parallelism_changes_only_what_may_change() {
    let mut spec = window_count();
    assert_eq!(spec.set_parallelism("count", 4).unwrap(), 2);
    assert_eq!(spec.operator("count").unwrap().parallelism, 4);
    assert_eq!(spec.set_parallelism("out", 3).unwrap(), 1);
    spec.validate().unwrap();

    let err = spec.set_parallelism("counts", 2).unwrap_err();
    assert_eq!(err.field, "operator");
    assert!(
        err.reason.contains("no operator `counts`") && err.reason.contains("`count`, `out`"),
        "{err}"
    );
    let err = spec.set_parallelism("events", 2).unwrap_err();
    assert!(err.reason.contains("number of partitions"), "{err}");
    let err = spec.set_parallelism("by_key", 2).unwrap_err();
    assert!(err.reason.contains("fused"), "{err}");
    for (parallelism, hint) in [(0, "use 1 to 1024"), (1025, "use 1 to 1024"), (129, "key_groups (128)")] {
        let err = spec.set_parallelism("count", parallelism).unwrap_err();
        assert_eq!(err.field, "parallelism");
        assert!(err.reason.contains(hint), "{err}");
    }
    spec.autoscale = Some(AutoscaleSpec {
        min: 2,
        max: 6,
        cooldown_ms: 0,
        target_utilization: 0.7,
    });
    let err = spec.set_parallelism("count", 8).unwrap_err();
    assert!(err.reason.contains("autoscale bounds 2..=6"), "{err}");
    assert_eq!(spec.operator("count").unwrap().parallelism, 4, "a refused change changes nothing");
    assert_eq!(spec.set_parallelism("count", 6).unwrap(), 4);
}

#[test]
fn the_stream_examples_are_valid() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples).expect("examples/ is there") {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if path.extension().is_some_and(|extension| extension == "toml") && text.contains("kind = \"stream\"") {
            let job: JobSpec = toml::from_str(&text).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
            job.validate().unwrap_or_else(|err| panic!("{}: {err}", path.display()));
            checked += 1;
        }
    }
    assert!(checked > 0, "no stream example in {}", examples.display());
}
