//! The load generator's result: one JSON object, made from two snapshots (the start and the
//! end of the measured window) of its own counters, of the RM's `/metrics` and of the CPU
//! time of the RM's process and its own.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::stats::{Count, Latency, StatsSnapshot};

/// What is printed, one JSON line. Rates are per second of the measured window; latencies
/// are client-side, in milliseconds; `null` where there was nothing to measure.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub agents: usize,
    pub ams: usize,
    /// Length of the measured window.
    pub duration_s: f64,
    pub warmup_s: u64,
    pub heartbeat_interval_ms: u64,
    /// Heartbeats the RM answered, periodic and immediate.
    pub heartbeats_per_sec: f64,
    /// Of those, the periodic ones: `agents` / interval when the RM keeps up.
    pub periodic_heartbeats_per_sec: f64,
    /// Heartbeats as the RM counted them (`spindle_heartbeats_total`).
    pub rm_heartbeats_per_sec: Option<f64>,
    pub heartbeat_p50_ms: Option<f64>,
    pub heartbeat_p99_ms: Option<f64>,
    /// Allocate calls answered in the window, quick and long-polling.
    pub allocate_calls: u64,
    /// Allocate calls that carried new asks or releases and did not wait.
    pub allocate_p50_ms: Option<f64>,
    pub allocate_p99_ms: Option<f64>,
    /// From an AM's first ask for a container to the reply that granted it.
    pub ask_to_grant_p50_ms: Option<f64>,
    pub ask_to_grant_p99_ms: Option<f64>,
    /// Task containers granted.
    pub containers_per_sec: f64,
    /// Task container completions delivered to AMs.
    pub completions_per_sec: f64,
    pub apps_finished_per_sec: f64,
    /// Over the whole run: apps finished, and apps still live when it ended.
    pub apps_finished: u64,
    pub apps_unfinished: usize,
    pub store_commits_per_sec: Option<f64>,
    /// Mean time of one store commit (the RM holds its state lock meanwhile).
    pub store_commit_mean_ms: Option<f64>,
    /// Mean time a heartbeat spent in the RM, as the RM measured it: beside the client's
    /// figures, it tells the RM's own time (mostly waiting for its state lock) from the network's.
    pub rm_heartbeat_mean_ms: Option<f64>,
    /// Scheduling rounds the RM ran per second, and the mean time of one
    /// (`spindle_scheduling_round_duration_seconds`).
    pub rm_rounds_per_sec: Option<f64>,
    pub rm_round_mean_ms: Option<f64>,
    /// CPU seconds of the RM's process per wall second (`--rm-pid`).
    pub rm_cpu_cores: Option<f64>,
    /// The RM's resident memory at the end of the window, and its peak (`--rm-pid`).
    pub rm_rss_mb: Option<f64>,
    pub rm_peak_rss_mb: Option<f64>,
    /// CPU seconds of this process per wall second: the load generator's own cost.
    pub loadgen_cpu_cores: Option<f64>,
    /// Time from the first registration sent to the last one answered.
    pub register_all_s: f64,
    pub register_p50_ms: Option<f64>,
    pub register_p99_ms: Option<f64>,
    /// Periodic heartbeats in the window that left more than an interval late: the RM's
    /// answers took longer than the interval, and the agents fell behind.
    pub late_heartbeats: u64,
    /// Over the whole run.
    pub register_errors: u64,
    pub heartbeat_errors: u64,
    pub resyncs: u64,
    pub allocate_errors: u64,
    pub submit_errors: u64,
    pub launch_errors: u64,
    pub am_shutdowns: u64,
    pub containers_granted: u64,
    pub released_unlaunched: u64,
    pub released_running: u64,
    pub killed_by_rm: u64,
    /// Empty when every invariant held.
    pub invariant_violations: Vec<String>,
}

/// The RM's counters the summary uses, as `/metrics` shows them (`None`: missing).
#[derive(Debug, Clone, Copy, Default)]
pub struct RmCounters {
    pub store_commits: Option<f64>,
    /// Seconds the commits took, summed.
    pub store_commit_seconds: Option<f64>,
    pub heartbeats: Option<f64>,
    /// Heartbeat requests the RM answered, and the seconds they took in the RM, summed.
    pub heartbeat_requests: Option<f64>,
    pub heartbeat_request_seconds: Option<f64>,
    /// Scheduling rounds run, and the seconds they took, summed.
    pub rounds: Option<f64>,
    pub round_seconds: Option<f64>,
}

/// The label of the heartbeat route in `spindle_http_request_duration_seconds`.
const HEARTBEAT_ROUTE: &str = "route=\"/v1/internal/nodes/heartbeat\"";

impl RmCounters {
    /// Reads the counters from OpenMetrics text.
    pub fn parse(text: &str) -> RmCounters {
        RmCounters {
            store_commits: sample_sum(text, "spindle_store_commits_total", ""),
            store_commit_seconds: sample_sum(text, "spindle_store_commit_duration_seconds_sum", ""),
            heartbeats: sample_sum(text, "spindle_heartbeats_total", ""),
            heartbeat_requests: sample_sum(text, "spindle_http_request_duration_seconds_count", HEARTBEAT_ROUTE),
            heartbeat_request_seconds: sample_sum(text, "spindle_http_request_duration_seconds_sum", HEARTBEAT_ROUTE),
            rounds: sample_sum(text, "spindle_scheduling_round_duration_seconds_count", ""),
            round_seconds: sample_sum(text, "spindle_scheduling_round_duration_seconds_sum", ""),
        }
    }
}

/// The sum of the samples named `name` whose labels contain `label` (all of them for "").
fn sample_sum(text: &str, name: &str, label: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let value = match rest.chars().next()? {
                ' ' if label.is_empty() => rest.trim(),
                '{' => {
                    let (labels, value) = rest.rsplit_once('}')?;
                    if !labels.contains(label) {
                        return None;
                    }
                    value.trim()
                }
                _ => return None,
            };
            value.split_whitespace().next()?.parse().ok()
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// The mean of a summed quantity per event between two readings, in milliseconds.
pub fn mean_ms(
    start: &RmCounters,
    end: &RmCounters,
    total: fn(&RmCounters) -> Option<f64>,
    count: fn(&RmCounters) -> Option<f64>,
) -> Option<f64> {
    let events = count(end)? - count(start)?;
    if events <= 0.0 {
        return None;
    }
    Some(round((total(end)? - total(start)?) / events * 1000.0, 3))
}

/// A process's CPU time and memory, from `/proc`.
#[derive(Debug, Clone)]
pub struct ProcessProbe {
    dir: PathBuf,
}

/// CPU time at a moment of wall time.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    cpu: Duration,
    at: Instant,
}

impl ProcessProbe {
    pub fn of_pid(pid: u32) -> ProcessProbe {
        ProcessProbe {
            dir: PathBuf::from(format!("/proc/{pid}")),
        }
    }

    pub fn of_self() -> ProcessProbe {
        ProcessProbe {
            dir: PathBuf::from("/proc/self"),
        }
    }

    pub fn exists(&self) -> bool {
        self.dir.join("stat").exists()
    }

    /// User and system CPU time so far (`utime` + `stime` of `/proc/PID/stat`).
    pub fn cpu(&self) -> Option<CpuSample> {
        let stat = std::fs::read_to_string(self.dir.join("stat")).ok()?;
        // The command name may hold spaces and parentheses: the fields start after the last ')'.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        // Fields 14 and 15 of proc(5), counted from `state`, the third.
        let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        // SAFETY: sysconf reads a constant of the system; no memory is involved.
        let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        Some(CpuSample {
            cpu: Duration::from_secs_f64(ticks as f64 / ticks_per_second),
            at: Instant::now(),
        })
    }

    /// Resident memory now and at its peak, in MB (`VmRSS`, `VmHWM` of `/proc/PID/status`).
    pub fn rss_mb(&self) -> (Option<f64>, Option<f64>) {
        let Ok(status) = std::fs::read_to_string(self.dir.join("status")) else {
            return (None, None);
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                .map(|kib| kib / 1024.0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

/// CPU seconds per wall second between two samples.
pub fn cores(start: Option<CpuSample>, end: Option<CpuSample>) -> Option<f64> {
    let (start, end) = (start?, end?);
    let wall = end.at.duration_since(start.at).as_secs_f64();
    (wall > 0.0).then(|| end.cpu.saturating_sub(start.cpu).as_secs_f64() / wall)
}

/// What the window measured, before the run's totals and the violations are added.
pub struct Window<'a> {
    pub stats: &'a StatsSnapshot,
    pub seconds: f64,
}

impl Window<'_> {
    pub fn rate(&self, count: Count) -> f64 {
        round(self.stats.count(count) as f64 / self.seconds.max(f64::MIN_POSITIVE), 1)
    }

    pub fn quantile_ms(&self, latency: Latency, quantile: f64) -> Option<f64> {
        self.stats.latency(latency).quantile_ms(quantile).map(|ms| round(ms, 2))
    }
}

/// `value` rounded to `digits` decimals: the summary shows what was measured, not float noise.
pub fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_from_openmetrics_text() {
        let text = "# TYPE spindle_store_commits counter\n\
                    spindle_store_commits_total 1234\n\
                    spindle_store_commits_created 1.7e9\n\
                    spindle_heartbeats_total{a=\"1\"} 2\n\
                    spindle_heartbeats_total{a=\"2\"} 3.5\n\
                    spindle_http_request_duration_seconds_sum{route=\"/v1/internal/nodes/heartbeat\",method=\"POST\",status=\"200\"} 4.5\n\
                    spindle_http_request_duration_seconds_sum{route=\"/v1/apps\",method=\"POST\",status=\"201\"} 9\n\
                    # EOF\n";
        let counters = RmCounters::parse(text);
        assert_eq!(counters.store_commits, Some(1234.0));
        assert_eq!(counters.heartbeats, Some(5.5));
        assert_eq!(counters.heartbeat_request_seconds, Some(4.5));
        assert_eq!(RmCounters::parse("# EOF\n").store_commits, None);
    }

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let probe = ProcessProbe::of_self();
        assert!(probe.exists());
        assert!(probe.cpu().is_some());
        let (rss, peak) = probe.rss_mb();
        assert!(rss.unwrap() > 0.0 && peak.unwrap() >= rss.unwrap());
    }
}
