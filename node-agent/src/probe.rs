//! What the node itself measures: its capacity at start, its CPU and memory use and the health
//! of its work dir on every periodic heartbeat.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use spindle_protocol::{NodeUsage, Resources};
use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};

/// Below this much free space in the work dir's filesystem the node reports itself unhealthy:
/// containers could not write their logs or outputs.
pub(crate) const MIN_FREE_DISK_BYTES: u64 = 256 * 1024 * 1024;

const MIB: u64 = 1024 * 1024;

/// Memory kept back for the OS and the agent: max(1 GiB, 10% of the total).
pub(crate) fn memory_reserve_mb(total_mb: u64) -> u64 {
    (total_mb / 10).max(1024)
}

/// What an agent offers unless told otherwise: all CPUs and total memory minus the reserve.
/// Blocking: call from `spawn_blocking`.
pub fn default_capacity() -> Resources {
    let refresh = RefreshKind::nothing()
        .with_cpu(CpuRefreshKind::nothing())
        .with_memory(MemoryRefreshKind::nothing().with_ram());
    let (vcores, total_mb) = match System::new_with_specifics(refresh) {
        Ok(system) => (system.cpus().len(), system.total_memory() / MIB),
        Err(err) => {
            tracing::warn!(error = %err, "cannot probe the node's size; falling back to 1 vcore and 0 MB: set the capacity explicitly");
            (0, 0)
        }
    };
    let vcores = if vcores == 0 {
        std::thread::available_parallelism().map_or(1, |count| count.get())
    } else {
        vcores
    };
    Resources::new(
        u32::try_from(vcores).unwrap_or(u32::MAX),
        total_mb.saturating_sub(memory_reserve_mb(total_mb)),
    )
}

/// Bytes available to unprivileged users in the filesystem holding `path` (statvfs).
pub(crate) fn free_disk_bytes(path: &Path) -> std::io::Result<u64> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidInput, err))?;
    // SAFETY: statvfs only writes into the zeroed struct we own; the path is NUL-terminated.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    let result = unsafe { libc::statvfs(c_path.as_ptr(), &mut stats) };
    if result != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((stats.f_bavail as u64).saturating_mul(stats.f_frsize as u64))
}

/// Healthy unless the work dir's filesystem is nearly full or cannot be checked.
pub(crate) fn disk_health(work_dir: &Path) -> (bool, String) {
    match free_disk_bytes(work_dir) {
        Ok(free) if free < MIN_FREE_DISK_BYTES => (
            false,
            format!(
                "work dir {} has only {} MiB free (needs at least {} MiB): free some space",
                work_dir.display(),
                free / MIB,
                MIN_FREE_DISK_BYTES / MIB
            ),
        ),
        Ok(_) => (true, String::new()),
        Err(err) => (false, format!("cannot check work dir {}: {err}", work_dir.display())),
    }
}

/// One heartbeat's view of the node.
#[derive(Debug, Clone, Default)]
pub(crate) struct NodeSample {
    pub usage: NodeUsage,
    pub healthy: bool,
    pub health_report: String,
}

/// Samples usage and health; keeps one `System` so CPU use is measured between two refreshes.
pub(crate) struct Probe {
    /// `None` only while a sample runs on the blocking pool (or if sysinfo is unsupported).
    system: Option<System>,
    work_dir: PathBuf,
}

impl Probe {
    pub(crate) fn new(work_dir: PathBuf) -> Self {
        let system = System::new().ok();
        Probe { system, work_dir }
    }

    /// Refreshes CPU and memory use and checks the disk, on the blocking pool.
    pub(crate) async fn sample(&mut self) -> NodeSample {
        let system = self.system.take();
        let work_dir = self.work_dir.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let mut system = system;
            let usage = match system.as_mut() {
                Some(system) => {
                    system.refresh_cpu_usage();
                    system.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
                    NodeUsage {
                        cpu_percent: system.global_cpu_usage(),
                        memory_used_mb: system.used_memory() / MIB,
                    }
                }
                None => NodeUsage::default(),
            };
            let (healthy, health_report) = disk_health(&work_dir);
            (
                system,
                NodeSample {
                    usage,
                    healthy,
                    health_report,
                },
            )
        })
        .await;
        match joined {
            Ok((system, sample)) => {
                self.system = system;
                sample
            }
            Err(err) => NodeSample {
                usage: NodeUsage::default(),
                healthy: false,
                health_report: format!("the node probe failed: {err}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_is_at_least_one_gib_or_ten_percent() {
        assert_eq!(memory_reserve_mb(4096), 1024);
        assert_eq!(memory_reserve_mb(65536), 6553);
        assert_eq!(memory_reserve_mb(512), 1024);
    }

    #[test]
    fn capacity_and_disk_are_probed() {
        let capacity = default_capacity();
        assert!(capacity.vcores >= 1);
        let free = free_disk_bytes(Path::new("/tmp")).unwrap();
        assert!(free > 0);
        assert!(free_disk_bytes(Path::new("/no/such/dir")).is_err());
        let (healthy, report) = disk_health(Path::new("/no/such/dir"));
        assert!(!healthy);
        assert!(report.contains("/no/such/dir"));
    }

    #[tokio::test]
    async fn samples_usage() {
        let mut probe = Probe::new(PathBuf::from("/tmp"));
        let first = probe.sample().await;
        let second = probe.sample().await;
        assert!(second.usage.memory_used_mb > 0);
        assert!(first.healthy || !first.health_report.is_empty());
    }
}
