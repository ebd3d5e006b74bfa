//! `spindle simulate`: runs the real scheduler against a synthetic workload in simulated time
//! (see `spindle_resource_manager::sim`) and prints how fast and how fair it was.

use std::process::ExitCode;

use anyhow::Context;
use spindle_resource_manager::sim::{self, SimConfig, SimReport, WorkloadParams};

use crate::args::SimulateArgs;
use crate::client::print_json;
use crate::table::{Table, key_values};

/// At most this many sample rows in the text table; longer runs show every n-th sample.
const MAX_TABLE_ROWS: usize = 12;

/// Runs the simulation on this thread (it is CPU-bound and alone) and prints its report.
pub fn simulate(args: &SimulateArgs, json: bool) -> anyhow::Result<ExitCode> {
    let params = WorkloadParams {
        nodes: args.nodes,
        apps: args.apps,
        queues: args.queues,
        seed: args.seed,
    };
    let config = SimConfig {
        grace_ms: args.grace_s * 1000,
        horizon_ms: args.horizon_s * 1000,
        ..SimConfig::default()
    };
    let report = sim::simulate(&params, config).context("the generated queue tree is invalid (a bug in the simulator)")?;
    if json {
        print_json(&report)?;
    } else {
        out!("{}", render(&report, &config));
    }
    Ok(ExitCode::SUCCESS)
}

fn render(report: &SimReport, config: &SimConfig) -> String {
    let mut out = format!(
        "Simulated {:.1} s of a {}-node cluster with {} queues, seed {}: {} apps ({} batch, {} of them finished; {} streaming).\n\n",
        report.simulated_seconds,
        report.nodes,
        report.queues,
        report.seed,
        report.apps,
        report.batch_apps,
        report.batch_apps_finished,
        report.streaming_apps,
    );
    let jain = report
        .jain_index
        .map_or_else(|| "n/a (no user had demand)".to_owned(), |jain| format!("{jain:.3}"));
    out.push_str(&key_values(&[
        (
            "placements",
            format!(
                "{} containers in {} rounds of {} ms (peak {} running)",
                report.placements, report.rounds, config.round_interval_ms, report.peak_live_containers
            ),
        ),
        (
            "allocations/s",
            format!(
                "{:.0} per second of wall time inside solve ({:.0} ns each; {:.0} ms in solve)",
                report.allocations_per_sec, report.placement_cost_ns, report.solve_wall_ms
            ),
        ),
        (
            "end to end",
            format!(
                "{:.0} ms wall for the whole simulation ({:.0} placements/s)",
                report.end_to_end_wall_ms, report.end_to_end_allocations_per_sec
            ),
        ),
        (
            "one decision",
            format!(
                "p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs (wall time of one solve round)",
                report.decision_p50_us, report.decision_p99_us, report.decision_max_us
            ),
        ),
        (
            "preemption",
            format!(
                "{} containers killed, {} notices ({} withdrawn), grace {} s; {:.0} ms planning",
                report.preemptions,
                report.preemption_notices,
                report.preemption_notices_withdrawn,
                config.grace_ms / 1000,
                report.preemption_planning_wall_ms
            ),
        ),
        (
            "node churn",
            format!(
                "{} containers lost with nodes, {} AM attempts restarted",
                report.containers_lost_with_nodes, report.am_restarts
            ),
        ),
        (
            "locality",
            format!(
                "{:.1}% node-local, {:.1}% rack-local, {:.1}% off-rack of {} containers of asks with preferred nodes",
                report.node_local_fraction * 100.0,
                report.rack_local_fraction * 100.0,
                report.off_rack_fraction * 100.0,
                report.locality_placements
            ),
        ),
        (
            "node labels",
            format!(
                "{} containers of asks requiring a label ({} off it), {} on labelled nodes ({} of queues without access)",
                report.label_required_placements,
                report.label_required_placements_off_label,
                report.labelled_node_placements,
                report.inaccessible_label_placements
            ),
        ),
        (
            "fairness",
            format!("Jain index {jain} over {} users (time-averaged share ÷ fair share)", report.users),
        ),
    ]));
    out.push('\n');
    out.push_str(&format!(
        "Queue shares of the cluster (dominant share, %), sampled every {} s:\n",
        report.sample_interval_s
    ));
    out.push_str(&share_table(report).render());
    out
}

/// Rows: guarantee, maximum, then samples over time, then the mean; one column per queue.
fn share_table(report: &SimReport) -> Table {
    let mut headers = vec!["time".to_owned()];
    headers.extend(report.per_queue.iter().map(|queue| queue.name.clone()));
    let header_refs: Vec<&str> = headers.iter().map(String::as_str).collect();
    let mut table = Table::new(&header_refs).right_align(&(0..headers.len()).collect::<Vec<_>>());
    let row = |label: String, value: &dyn Fn(&sim::QueueReport) -> f64| {
        std::iter::once(label)
            .chain(report.per_queue.iter().map(|queue| format!("{:.1}", value(queue))))
            .collect::<Vec<_>>()
    };
    table.row(row("guaranteed".to_owned(), &|queue| queue.guaranteed_percent));
    table.row(row("maximum".to_owned(), &|queue| queue.maximum_percent));
    let samples = report.sample_times_s.len();
    let stride = samples.div_ceil(MAX_TABLE_ROWS).max(1);
    for (index, time) in report.sample_times_s.iter().enumerate() {
        if index % stride == 0 || index + 1 == samples {
            table.row(row(format!("{time:.0} s"), &|queue| queue.shares_percent[index]));
        }
    }
    table.row(row("mean".to_owned(), &|queue| queue.mean_share_percent));
    table
}
