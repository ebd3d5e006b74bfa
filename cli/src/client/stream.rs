//! Streaming jobs in the client: `spindle scale APP OPERATOR N`, and the stream section of
//! `spindle app ID` (operators with their instances, checkpoints, restarts, rescales,
//! savepoints).

use std::process::ExitCode;

use anyhow::Context;
use spindle_protocol::{InstanceStatus, OperatorStatus, SavepointState, StreamDetail};

use super::{ClientContext, print_json};
use crate::args::ScaleArgs;
use crate::table::{Table, age, key_values, or_dash, precise_duration, terminal_safe};

pub async fn scale(context: &ClientContext, args: &ScaleArgs) -> anyhow::Result<ExitCode> {
    let reply = context
        .client
        .scale_operator(args.app_id, &args.operator, args.parallelism)
        .await
        .with_context(|| format!("cannot scale operator `{}` of {}", args.operator, args.app_id))?;
    if context.json {
        print_json(&reply)?;
    } else if reply.previous == reply.parallelism {
        outln!(
            "{}: operator {} already has parallelism {}",
            reply.app_id,
            terminal_safe(&reply.operator),
            reply.parallelism
        );
    } else {
        outln!(
            "{}: operator {} {} → {} (the AM is rescaling it)",
            reply.app_id,
            terminal_safe(&reply.operator),
            reply.previous,
            reply.parallelism
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The stream section of `spindle app ID`: one row per operator (totals over its instances)
/// with a row per instance under it, then checkpoint, restarts and the last rescale.
pub fn stream_section(detail: &StreamDetail, now_ms: u64) -> String {
    let mut table = Table::new(&[
        "OPERATOR",
        "KIND",
        "PARALLELISM",
        "IN/S",
        "OUT/S",
        "BUSY",
        "BACKPRESSURED",
        "STATE",
        "SOURCE LAG",
        "CONTAINER",
    ])
    .right_align(&[2, 3, 4, 5, 6, 7, 8]);
    for operator in &detail.operators {
        table.row(operator_row(operator));
        for instance in &operator.instances {
            table.row(instance_row(instance));
        }
    }
    let mut out = String::from("\nOperators\n");
    out.push_str(&table.render());
    let checkpoint = detail.last_checkpoint.as_ref().map(|checkpoint| {
        format!(
            "#{}, {}, took {}, {}",
            checkpoint.id,
            age(now_ms, checkpoint.completed_at_ms),
            millis(checkpoint.duration_ms),
            bytes(checkpoint.size_bytes)
        )
    });
    let rescale = detail.last_rescale.as_ref().map(|rescale| {
        let how = match (rescale.finished_at_ms, rescale.pause_ms) {
            (None, _) => format!("in progress, started {}", age(now_ms, rescale.started_at_ms)),
            (Some(finished), Some(pause)) => format!("{}, paused {}", age(now_ms, finished), millis(pause)),
            (Some(finished), None) => age(now_ms, finished),
        };
        format!("{} {} → {}, {how}", rescale.operator, rescale.from, rescale.to)
    });
    let savepoint = detail.savepoints.iter().max_by_key(|savepoint| savepoint.id).map(|savepoint| {
        let how = match (savepoint.state, savepoint.completed_at_ms) {
            (SavepointState::Completed, Some(at)) => format!("completed {}", age(now_ms, at)),
            (SavepointState::Completed, None) => "completed".to_owned(),
            (SavepointState::InProgress, _) => "in progress".to_owned(),
            (SavepointState::Failed, _) => format!("failed: {}", savepoint.error.as_deref().unwrap_or("no reason given")),
        };
        let stop = if savepoint.stop { " (stop)" } else { "" };
        format!("#{}{stop} {how}, {}", savepoint.id, terminal_safe(&savepoint.path))
    });
    let restarts = match &detail.last_restart {
        Some(last) => {
            let what = if last.instances < last.of_instances {
                format!("{} of {} instances (a failover region)", last.instances, last.of_instances)
            } else {
                "the whole pipeline".to_owned()
            };
            let from = last
                .checkpoint
                .map_or_else(|| "the start".to_owned(), |id| format!("checkpoint {id}"));
            format!(
                "{}, last {}: {what} from {from}: {}",
                detail.restarts,
                age(now_ms, last.at_ms),
                terminal_safe(&last.reason)
            )
        }
        None => detail.restarts.to_string(),
    };
    out.push('\n');
    out.push_str(&key_values(&[
        ("last checkpoint", checkpoint.unwrap_or_else(|| "none yet".to_owned())),
        ("restarts", restarts),
        ("last rescale", or_dash(rescale)),
        ("last savepoint", or_dash(savepoint)),
    ]));
    out
}

fn operator_row(operator: &OperatorStatus) -> Vec<String> {
    let instances = &operator.instances;
    let parallelism = if operator.target_parallelism != operator.parallelism {
        format!("{} → {}", operator.parallelism, operator.target_parallelism)
    } else {
        operator.parallelism.to_string()
    };
    let mean = |figure: fn(&InstanceStatus) -> f64| {
        if instances.is_empty() {
            0.0
        } else {
            instances.iter().map(figure).sum::<f64>() / instances.len() as f64
        }
    };
    let lags: Vec<u64> = instances.iter().filter_map(|instance| instance.source_lag).collect();
    vec![
        operator.name.clone(),
        operator.kind.clone(),
        parallelism,
        rate(instances.iter().map(|instance| instance.records_in_per_s).sum()),
        rate(instances.iter().map(|instance| instance.records_out_per_s).sum()),
        ratio(mean(|instance| instance.busy)),
        ratio(mean(|instance| instance.backpressured)),
        bytes(instances.iter().map(|instance| instance.state_bytes).sum()),
        if lags.is_empty() {
            "-".to_owned()
        } else {
            count(lags.iter().sum())
        },
    ]
}

/// Indented under its operator; the KIND column holds the key groups an instance owns.
fn instance_row(instance: &InstanceStatus) -> Vec<String> {
    vec![
        format!("  #{}", instance.index),
        instance
            .key_groups
            .map(|(first, end)| format!("groups {first}..{end}"))
            .unwrap_or_default(),
        String::new(),
        rate(instance.records_in_per_s),
        rate(instance.records_out_per_s),
        ratio(instance.busy),
        ratio(instance.backpressured),
        bytes(instance.state_bytes),
        instance.source_lag.map(count).unwrap_or_default(),
        or_dash(instance.container_id),
    ]
}

/// A short time, where milliseconds matter (a pause, a checkpoint): `350ms`, `1.3s`.
fn millis(ms: u64) -> String {
    if ms < 1000 { format!("{ms}ms") } else { precise_duration(ms) }
}

/// Records per second: `850`, `12.5k`, `600k`, `2.1M`.
fn rate(per_second: f64) -> String {
    match per_second {
        value if !value.is_finite() || value < 0.0 => "-".to_owned(),
        value if value < 1_000.0 => format!("{value:.0}"),
        value if value < 1_000_000.0 => scaled(value / 1_000.0, "k"),
        value if value < 1_000_000_000.0 => scaled(value / 1_000_000.0, "M"),
        value => scaled(value / 1_000_000_000.0, "G"),
    }
}

/// About three significant digits: `1.5k`, `12.5k`, `600k`.
fn scaled(value: f64, unit: &str) -> String {
    if value < 100.0 {
        format!("{value:.1}{unit}")
    } else {
        format!("{value:.0}{unit}")
    }
}

/// A whole count, as `rate` writes it.
fn count(value: u64) -> String {
    rate(value as f64)
}

/// `0.456` → `46%`.
fn ratio(fraction: f64) -> String {
    format!("{:.0}%", fraction.clamp(0.0, 1.0) * 100.0)
}

/// Bytes in the unit people read fastest: `0B`, `512B`, `4.0K`, `98.1M`, `100M`, `2.0G`.
fn bytes(count: u64) -> String {
    const UNITS: [&str; 4] = ["K", "M", "G", "T"];
    if count < 1024 {
        return format!("{count}B");
    }
    let mut value = count as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    scaled(value, UNITS[unit])
}

#[cfg(test)]
mod tests {
    use spindle_protocol::{AppId, CheckpointStatus, ContainerId, RescaleStatus};

    use super::*;

    fn instance(index: u32, key_groups: Option<(u32, u32)>, source_lag: Option<u64>) -> InstanceStatus {
        InstanceStatus {
            index,
            container_id: Some(ContainerId {
                epoch: 1,
                app: AppId {
                    cluster_ts: 1_700_000_000_000,
                    seq: 1,
                },
                attempt: 1,
                seq: u64::from(index) + 2,
            }),
            key_groups,
            records_in: 0,
            records_out: 0,
            records_in_per_s: 600_000.0,
            records_out_per_s: 1_700.0,
            busy: 0.58,
            backpressured: 0.04,
            state_bytes: 50 * 1024 * 1024,
            source_lag,
        }
    }

    fn sample() -> StreamDetail {
        StreamDetail {
            operators: vec![
                OperatorStatus {
                    name: "events".into(),
                    kind: "generator".into(),
                    parallelism: 1,
                    target_parallelism: 1,
                    instances: vec![InstanceStatus {
                        state_bytes: 0,
                        ..instance(0, None, Some(1_500))
                    }],
                    ..OperatorStatus::default()
                },
                OperatorStatus {
                    name: "count".into(),
                    kind: "window".into(),
                    parallelism: 2,
                    target_parallelism: 4,
                    instances: vec![instance(0, Some((0, 64)), None), instance(1, Some((64, 128)), None)],
                    ..OperatorStatus::default()
                },
            ],
            last_checkpoint: Some(CheckpointStatus {
                id: 42,
                completed_at_ms: 7_000,
                duration_ms: 80,
                size_bytes: 100 * 1024 * 1024,
            }),
            restarts: 1,
            last_rescale: Some(RescaleStatus {
                operator: "count".into(),
                from: 1,
                to: 2,
                started_at_ms: 1_000,
                finished_at_ms: Some(1_400),
                pause_ms: Some(350),
            }),
            last_restart: None,
            savepoints: vec![spindle_protocol::SavepointStatus {
                id: 2,
                state: SavepointState::Completed,
                path: "/data/savepoints/savepoint-application_1_0001-2".into(),
                stop: false,
                checkpoint: Some(40),
                completed_at_ms: Some(4_000),
                error: None,
            }],
        }
    }

    #[test]
    fn the_stream_section_shows_operators_instances_and_checkpoints() {
        let section = stream_section(&sample(), 10_000);
        let lines: Vec<&str> = section.lines().collect();
        assert_eq!(lines[1], "Operators");
        assert!(lines[2].starts_with("OPERATOR  KIND  "), "{section}");
        assert!(lines[2].ends_with("BUSY  BACKPRESSURED  STATE  SOURCE LAG  CONTAINER"), "{section}");
        let row = |prefix: &str| {
            lines
                .iter()
                .find(|line| line.starts_with(prefix))
                .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{section}"))
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            row("events"),
            ["events", "generator", "1", "600k", "1.7k", "58%", "4%", "0B", "1.5k"]
        );
        assert_eq!(
            row("count"),
            ["count", "window", "2", "→", "4", "1.2M", "3.4k", "58%", "4%", "100M", "-"]
        );
        let instances: Vec<&&str> = lines.iter().filter(|line| line.starts_with("  #")).collect();
        assert_eq!(instances.len(), 3);
        assert_eq!(
            instances[2].split_whitespace().collect::<Vec<_>>(),
            [
                "#1",
                "groups",
                "64..128",
                "600k",
                "1.7k",
                "58%",
                "4%",
                "50.0M",
                "container_e01_1700000000000_0001_01_000003"
            ]
        );
        assert!(section.contains("last checkpoint  #42, 3s ago, took 80ms, 100M\n"), "{section}");
        assert!(section.contains("restarts         1\n"), "{section}");
        let mut regional = sample();
        regional.restarts = 2;
        regional.last_restart = Some(spindle_protocol::RestartStatus {
            at_ms: 5_000,
            reason: "worker lost".into(),
            instances: 2,
            of_instances: 6,
            checkpoint: Some(41),
        });
        assert!(
            stream_section(&regional, 10_000)
                .contains("restarts         2, last 5s ago: 2 of 6 instances (a failover region) from checkpoint 41: worker lost\n"),
            "{}",
            stream_section(&regional, 10_000)
        );
        assert!(
            section.contains("last rescale     count 1 → 2, 8s ago, paused 350ms\n"),
            "{section}"
        );
        assert!(
            section.contains("last savepoint   #2 completed 6s ago, /data/savepoints/savepoint-application_1_0001-2\n"),
            "{section}"
        );
    }

    #[test]
    fn a_new_job_has_no_checkpoint_and_a_rescale_may_be_in_progress() {
        let mut detail = sample();
        detail.last_checkpoint = None;
        detail.last_rescale.as_mut().unwrap().finished_at_ms = None;
        detail.operators[1].instances.clear();
        let section = stream_section(&detail, 3_000);
        assert!(section.contains("last checkpoint  none yet\n"), "{section}");
        assert!(section.contains("count 1 → 2, in progress, started 2s ago"), "{section}");
        assert!(
            section.lines().any(|line| line.starts_with("count") && line.contains("0%")),
            "{section}"
        );
    }

    #[test]
    fn figures_read_like_people_say_them() {
        assert_eq!(
            (rate(850.4), rate(12_500.0), rate(2_100_000.0), rate(f64::NAN)),
            ("850".into(), "12.5k".into(), "2.1M".into(), "-".into())
        );
        assert_eq!(
            (bytes(0), bytes(512), bytes(4096), bytes(3 << 30)),
            ("0B".into(), "512B".into(), "4.0K".into(), "3.0G".into())
        );
        assert_eq!((ratio(0.456), ratio(1.5)), ("46%".into(), "100%".into()));
    }
}
