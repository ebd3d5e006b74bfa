//! The task main's attempts, run in-process against temporary directories.

use std::collections::BTreeMap;

use super::*;
use crate::task_protocol::{JobFunctions, TaskAttemptId, TaskKind};
use crate::{MapOutputFiles, Partitioner, Split};

fn functions() -> JobFunctions {
    JobFunctions {
        mapper: "wordcount".into(),
        combiner: Some("sum".into()),
        reducer: "sum".into(),
        sort_buffer_bytes: 1 << 20,
        env: BTreeMap::new(),
    }
}

fn environment(dir: &Path) -> TaskEnvironment {
    TaskEnvironment {
        app_id: "application_1_0001".parse().unwrap(),
        shuffle_dir: dir.join("shuffle"),
        shuffle_token: "token".into(),
        work_dir: dir.join("work"),
        // Long enough to see a retry, short enough for a unit test.
        unreachable_retry_window: std::time::Duration::from_millis(300),
    }
}

#[tokio::test]
async fn a_map_attempt_writes_its_output_where_the_shuffle_serves_it() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.txt");
    std::fs::write(&input, "a b a\nc a\n").unwrap();
    let environment = environment(dir.path());
    std::fs::create_dir_all(&environment.shuffle_dir).unwrap();
    let attempt = TaskAttemptId {
        kind: TaskKind::Map,
        task: 0,
        attempt: 0,
    };
    let assignment = TaskAssignment {
        attempt,
        functions: functions(),
        work: TaskWork::Map {
            split: Split {
                path: input.display().to_string(),
                start: 0,
                length: 10,
            },
            partitioner: Partitioner::Hash { reducers: 2 },
        },
        am_url: "http://127.0.0.1:9".into(),
    };
    let (outcome, counters) = run_attempt(&assignment, &environment).await;
    assert_eq!(outcome, TaskOutcome::Succeeded);
    assert_eq!((counters.map_input_records, counters.map_output_records), (2, 5));
    let files = MapOutputFiles::at(&environment.shuffle_dir, &attempt.output_name());
    assert_eq!(files.read_index().unwrap().len(), 3, "two partitions");
}

#[tokio::test]
async fn a_reduce_that_cannot_fetch_names_the_maps_to_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let environment = environment(dir.path());
    let unreachable = |map| MapOutputLocation {
        map,
        node_id: spindle_protocol::NodeId("gone:1".into()),
        node_address: "127.0.0.1:9".into(),
        output_name: format!("m_{map:06}_0"),
    };
    let assignment = TaskAssignment {
        attempt: TaskAttemptId {
            kind: TaskKind::Reduce,
            task: 0,
            attempt: 0,
        },
        functions: functions(),
        work: TaskWork::Reduce {
            partition: 0,
            maps: vec![unreachable(0), unreachable(1)],
            output_dir: dir.path().join("out").display().to_string(),
        },
        am_url: "http://127.0.0.1:9".into(),
    };
    let (outcome, _) = run_attempt(&assignment, &environment).await;
    let TaskOutcome::FetchFailed { maps, error } = outcome else {
        panic!("expected a fetch failure, got {outcome:?}");
    };
    assert_eq!(maps, [0, 1]);
    assert!(error.contains("map 0 on gone:1") || error.contains("map 1 on gone:1"), "{error}");
}

#[tokio::test]
async fn a_function_the_spec_does_not_allow_fails_the_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let environment = environment(dir.path());
    let mut functions = functions();
    functions.mapper = "sum".into();
    let assignment = TaskAssignment {
        attempt: TaskAttemptId {
            kind: TaskKind::Map,
            task: 0,
            attempt: 0,
        },
        functions,
        work: TaskWork::Map {
            split: Split {
                path: dir.path().join("missing").display().to_string(),
                start: 0,
                length: 1,
            },
            partitioner: Partitioner::Hash { reducers: 1 },
        },
        am_url: "http://127.0.0.1:9".into(),
    };
    let (outcome, _) = run_attempt(&assignment, &environment).await;
    assert!(
        matches!(outcome, TaskOutcome::Failed { ref error } if error.contains("mapper")),
        "{outcome:?}"
    );
}
