//! The sampling memory monitor, for containers without a cgroup (as YARN's
//! ContainersMonitor): every 500 ms one scan of /proc sums the RSS of each watched process
//! group, and containers over their limit are killed with EXCEEDED_MEMORY.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::manager::ContainerManager;

/// How often the monitor samples. A container can overshoot its limit for up to this long.
pub(crate) const SAMPLING_INTERVAL: Duration = Duration::from_millis(500);

/// Runs until `stop` is cancelled. Scans /proc only while some container is watched.
pub(crate) async fn run_memory_monitor(manager: Arc<ContainerManager>, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(SAMPLING_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let watched = manager.sampled_containers();
        if watched.is_empty() {
            continue;
        }
        let Ok(rss_by_group) = tokio::task::spawn_blocking(rss_by_process_group).await else {
            continue;
        };
        for container in watched {
            let rss_bytes = rss_by_group.get(&container.process_group).copied().unwrap_or(0);
            if rss_bytes > container.limit_bytes {
                let limit_mb = container.limit_bytes / (1024 * 1024);
                tracing::info!(container_id = %container.container_id, rss_mb = rss_bytes / (1024 * 1024), limit_mb, "killing a container over its memory limit");
                manager.kill_over_memory(container.container_id, rss_bytes);
            }
        }
    }
}

/// A container the sampling monitor watches.
#[derive(Debug, Clone)]
pub(crate) struct SampledContainer {
    pub container_id: spindle_protocol::ContainerId,
    pub process_group: i32,
    pub limit_bytes: u64,
}

/// RSS in bytes summed per process group over every process in /proc. Blocking.
pub(crate) fn rss_by_process_group() -> HashMap<i32, u64> {
    // SAFETY: sysconf has no preconditions.
    let page_size = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let mut totals = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return totals;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|name| name.bytes().all(|b| b.is_ascii_digit())) else {
            continue;
        };
        // A process may exit between listing and reading: skip it.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some((process_group, rss_pages)) = parse_stat(&stat) {
            *totals.entry(process_group).or_insert(0) += rss_pages * page_size;
        }
    }
    totals
}

/// The process group (field 5) and RSS in pages (field 24) of a /proc/<pid>/stat line. The
/// command name (field 2) may hold spaces and parentheses, so fields are counted after its
/// last `)`.
pub(crate) fn parse_stat(stat: &str) -> Option<(i32, u64)> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // fields[0] is field 3 (state).
    let process_group = fields.get(5 - 3)?.parse().ok()?;
    let rss_pages = fields.get(24 - 3)?.parse::<i64>().ok()?;
    Some((process_group, rss_pages.max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_lines_with_odd_command_names() {
        let line = "4242 (my (odd) prog) S 1 4240 4240 0 -1 4194560 120 0 0 0 1 2 0 0 20 0 1 0 \
                    12345 10485760 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        assert_eq!(parse_stat(line), Some((4240, 2560)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 0"), None);
    }

    #[test]
    fn scans_our_own_process_group() {
        // SAFETY: getpgrp cannot fail.
        let own_group = unsafe { libc::getpgrp() };
        let totals = rss_by_process_group();
        assert!(totals.get(&own_group).copied().unwrap_or(0) > 0);
    }
}
