use std::collections::BTreeMap;

use serde_json::json;
use spindle_protocol::{AppId, JobKind};

use super::*;

/// Nine in the morning of 2023-11-14 (UTC), when every report below was taken.
const NOW_MS: u64 = 1_699_952_400_000;

fn cluster() -> ClusterReport {
    ClusterReport {
        epoch: 3,
        started_at_ms: NOW_MS - 3_600_000,
        store: "sqlite".into(),
        capacity: Resources::new(16, 32 * 1024),
        used: Resources::new(5, 1280),
        available: Resources::new(11, 32 * 1024 - 1280),
        nodes: BTreeMap::from([("RUNNING".into(), 2), ("LOST".into(), 1), ("DECOMMISSIONED".into(), 0)]),
        apps: BTreeMap::from([("RUNNING".into(), 2), ("ACCEPTED".into(), 1), ("FINISHED".into(), 14)]),
        containers_running: 5,
    }
}

fn node(port: u16, state: &str, used: (u32, u64), containers: u32) -> NodeReport {
    serde_json::from_value(json!({
        "node_id": format!("127.0.0.1:{port}"),
        "address": format!("127.0.0.1:{port}"),
        "rack": "/default-rack",
        "labels": [],
        "state": state,
        "capacity": { "vcores": 8, "memory_mb": 16384 },
        "used": { "vcores": used.0, "memory_mb": used.1 },
        "containers": containers,
        "usage": { "cpu_percent": 0.0, "memory_used_mb": 0 },
        "health_report": "",
        "last_heartbeat_ms": NOW_MS - 1_000,
    }))
    .expect("a node report")
}

fn app(seq: u32, name: &str, kind: JobKind, state: AppState, vcores: u32) -> AppReport {
    AppReport {
        app_id: AppId {
            cluster_ts: 1_699_900_000_000,
            seq,
        },
        name: name.into(),
        queue: "default".into(),
        user: "ann".into(),
        kind,
        priority: 0,
        state,
        final_status: spindle_protocol::FinalStatus::Undefined,
        diagnostics: String::new(),
        progress: 0.5,
        max_attempts: 2,
        attempts: Vec::new(),
        allocated: Resources::new(vcores, u64::from(vcores) * 256),
        running_containers: vcores,
        submitted_at_ms: NOW_MS - 70_000,
        started_at_ms: (state == AppState::Running).then_some(NOW_MS - 65_000),
        finished_at_ms: None,
        detail: None,
    }
}

fn nodes() -> Vec<NodeReport> {
    vec![
        node(8042, "RUNNING", (1, 256), 1),
        node(8043, "RUNNING", (4, 1024), 4),
        node(8044, "LOST", (0, 0), 0),
    ]
}

fn apps() -> Vec<AppReport> {
    vec![
        AppReport {
            progress: 0.0,
            ..app(2, "waiting", JobKind::Shell, AppState::Accepted, 0)
        },
        app(1, "hello", JobKind::Shell, AppState::Running, 2),
        app(3, "clicks", JobKind::Stream, AppState::Running, 3),
    ]
}

#[test]
fn a_snapshot_shows_totals_the_busiest_nodes_and_the_live_apps() {
    let view = render_snapshot(&cluster(), &nodes(), &apps(), usize::MAX, usize::MAX, NOW_MS);
    assert_eq!(
        view,
        "nodes       2 RUNNING, 1 LOST\n\
         used        5 vcores / 1.2 GB of 16 vcores / 32 GB  (31% of vcores, 3% of memory)\n\
         containers  5 running\n\
         apps        1 ACCEPTED, 2 RUNNING, 14 FINISHED\n\
         \n\
         NODE            STATE    CONTAINERS  USED              CAPACITY\n\
         127.0.0.1:8043  RUNNING           4  4 vcores / 1 GB   8 vcores / 16 GB\n\
         127.0.0.1:8042  RUNNING           1  1 vcore / 256 MB  8 vcores / 16 GB\n\
         \n\
         APP                             USER  QUEUE    STATE     PROGRESS  CONTAINERS  USED               ELAPSED  NAME\n\
         application_1699900000000_0003  ann   default  RUNNING    running           3  3 vcores / 768 MB    1m05s  clicks\n\
         application_1699900000000_0001  ann   default  RUNNING        50%           2  2 vcores / 512 MB    1m05s  hello\n\
         application_1699900000000_0002  ann   default  ACCEPTED        0%           0  0 vcores / 0 MB      1m10s  waiting\n"
    );
}

#[test]
fn a_stream_is_running_never_half_done() {
    let view = render_snapshot(&cluster(), &nodes(), &apps(), usize::MAX, usize::MAX, NOW_MS);
    let stream_line = view.lines().find(|line| line.contains("clicks")).unwrap();
    assert!(stream_line.contains("running") && !stream_line.contains('%'), "{stream_line}");
}

#[test]
fn a_short_screen_cuts_the_apps_list_with_how_many_are_left() {
    let many: Vec<AppReport> = (1..=40)
        .map(|seq| app(seq, "batch", JobKind::Shell, AppState::Running, 1))
        .collect();
    let view = render_snapshot(&cluster(), &nodes(), &many, 120, 20, NOW_MS);
    let lines: Vec<&str> = view.lines().collect();
    assert_eq!(lines.len(), 20, "{view}");
    // Both nodes still show; the apps take the rest, the last line saying what is left out.
    assert!(view.contains("127.0.0.1:8042") && view.contains("127.0.0.1:8043"), "{view}");
    let shown = lines.iter().filter(|line| line.starts_with("application_")).count();
    assert_eq!(lines[19], format!("… {} more apps", 40 - shown));
}

#[test]
fn a_long_node_list_leaves_room_for_the_apps() {
    let many_nodes: Vec<NodeReport> = (0..30).map(|index| node(9000 + index, "RUNNING", (1, 128), 1)).collect();
    let view = render_snapshot(&cluster(), &many_nodes, &apps(), 120, 24, NOW_MS);
    assert_eq!(view.lines().count(), 24, "{view}");
    assert!(view.contains("more nodes"), "{view}");
    for app in ["clicks", "hello", "waiting"] {
        assert!(view.contains(app), "{app} is missing from\n{view}");
    }
}

#[test]
fn lines_are_cut_to_the_screen_width_without_trailing_spaces() {
    let view = render_snapshot(&cluster(), &nodes(), &apps(), 60, usize::MAX, NOW_MS);
    for line in view.lines() {
        assert!(console::measure_text_width(line) <= 60, "{line:?} is wider than 60");
        assert_eq!(line, line.trim_end(), "{line:?} ends in spaces");
    }
    assert!(view.lines().any(|line| line.ends_with('…')), "{view}");
}

#[test]
fn what_jobs_and_agents_named_is_escaped() {
    let mut evil = app(9, "evil\x1b[2J\rname", JobKind::Shell, AppState::Running, 1);
    evil.user = "mal\u{202e}lory".into();
    let mut odd_node = node(8050, "RUNNING", (1, 128), 1);
    odd_node.node_id = spindle_protocol::NodeId("host\x07:1".into());
    let mut odd_cluster = cluster();
    odd_cluster.apps.insert("\x1b[31mFORGED".into(), 1);
    let view = render_snapshot(&odd_cluster, &[odd_node], &[evil], usize::MAX, usize::MAX, NOW_MS);
    assert!(!view.chars().any(|c| c.is_control() && c != '\n'), "{view:?}");
    assert!(!view.contains('\u{202e}'), "{view:?}");
    assert!(view.contains("evil\\x1b[2J\\rname") && view.contains("host\\x07:1"), "{view}");
}

#[test]
fn an_empty_cluster_says_so() {
    let mut empty = cluster();
    empty.nodes.clear();
    empty.apps.clear();
    empty.capacity = Resources::ZERO;
    empty.used = Resources::ZERO;
    let view = render_snapshot(&empty, &[], &[], usize::MAX, usize::MAX, NOW_MS);
    assert!(
        view.starts_with("nodes       none\nused        0 vcores / 0 MB of 0 vcores / 0 MB  (- of vcores, - of memory)\n"),
        "{view}"
    );
    assert!(
        view.contains("\nno nodes: start one with") && view.ends_with("no running or accepted apps\n"),
        "{view}"
    );
}

#[test]
fn timestamps_are_utc_dates() {
    assert_eq!(utc_timestamp(0), "1970-01-01 00:00:00 UTC");
    assert_eq!(utc_timestamp(NOW_MS), "2023-11-14 09:00:00 UTC");
    assert_eq!(utc_timestamp(951_782_400_000), "2000-02-29 00:00:00 UTC");
}

#[test]
fn a_tiny_window_counts_what_it_cannot_list() {
    let view = render_snapshot(&cluster(), &nodes(), &apps(), 120, 10, NOW_MS);
    // No room for a row of nodes under a header: their count instead, and the apps get the line.
    assert_eq!(view.lines().count(), 10, "{view}");
    assert!(view.contains("\n2 nodes, the window is too short to list them\n"), "{view}");
    assert!(!view.contains("NODE ") && view.ends_with("clicks\n… 2 more apps\n"), "{view}");
}
