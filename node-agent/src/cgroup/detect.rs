//! Finding a writable memory hierarchy at start: mount parsing, the `spindle` parent cgroup,
//! controller delegation (v2), the join-method trial and clean-up of stale cgroups.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::container::{ThreadInCgroup, memory_cgroup_of};
use super::{CgroupRoot, CgroupVersion, JoinMethod, write_file};

/// Name of the directory, under the memory hierarchy's root, that holds the containers' cgroups.
const SPINDLE_CGROUP: &str = "spindle";

/// Empty container cgroups older than this, found at start, were left behind by agents that
/// stopped while their containers ran: they are removed. Younger ones may belong to another
/// agent on this host that is just starting a container.
const STALE_CGROUP_AGE: Duration = Duration::from_secs(60);

/// v1: whether this thread can move into `trial` and back home, which `SpawningThread` needs.
fn can_migrate_threads(mount: &Path, trial: &Path) -> bool {
    let entered = ThreadInCgroup::enter(mount, trial).is_ok();
    let home = memory_cgroup_of(mount, "/proc/self/cgroup");
    let now = memory_cgroup_of(mount, "/proc/thread-self/cgroup");
    entered && matches!((home, now), (Ok(home), Ok(now)) if home == now)
}

/// Makes `<mount>/spindle` and proves a container cgroup can be created in it.
pub(super) fn prepare(version: CgroupVersion, mount: &Path) -> Result<CgroupRoot, String> {
    if version == CgroupVersion::V2 {
        let controllers =
            std::fs::read_to_string(mount.join("cgroup.controllers")).map_err(|err| format!("cannot read cgroup.controllers: {err}"))?;
        if !controllers.split_whitespace().any(|name| name == "memory") {
            return Err("the memory controller is not available in this hierarchy".to_owned());
        }
        enable_memory_controller(mount)?;
    }
    let base = mount.join(SPINDLE_CGROUP);
    match std::fs::create_dir(&base) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(format!("cannot create {}: {err}", base.display())),
    }
    if version == CgroupVersion::V2 {
        enable_memory_controller(&base)?;
    }
    let limit_file = match version {
        CgroupVersion::V1 => "memory.limit_in_bytes",
        CgroupVersion::V2 => "memory.max",
    };
    // A trial cgroup proves we may create cgroups and set limits, not just see the files.
    // Unique per agent, not just per process: `spindle local` runs several agents in one
    // process, and two probes sharing a cgroup would see each other's removal.
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let probe = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let trial = base.join(format!("probe-{}-{probe}", std::process::id()));
    let _ = std::fs::create_dir(&trial);
    let result =
        std::fs::metadata(trial.join(limit_file)).map_err(|err| format!("cannot create a container cgroup with a memory limit: {err}"));
    let join_method = if version == CgroupVersion::V1 && can_migrate_threads(mount, &trial) {
        JoinMethod::SpawningThread
    } else {
        JoinMethod::ByTheChild
    };
    let _ = std::fs::remove_dir(&trial);
    result?;
    remove_stale_cgroups(&base);
    Ok(CgroupRoot {
        version,
        mount: mount.to_path_buf(),
        base,
        join_method,
        idle: Arc::new(Mutex::new(Vec::new())),
    })
}

/// Removes old, empty container cgroups; the kernel refuses to remove any that still hold a
/// process, so a container that is still running keeps its cgroup.
fn remove_stale_cgroups(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let is_old_dir = entry.metadata().is_ok_and(|meta| {
            meta.is_dir()
                && meta
                    .modified()
                    .ok()
                    .and_then(|modified| modified.elapsed().ok())
                    .is_some_and(|age| age > STALE_CGROUP_AGE)
        });
        if is_old_dir && std::fs::remove_dir(entry.path()).is_ok() {
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(removed, base = %base.display(), "removed empty container cgroups left by earlier agents");
    }
}

/// v2 only lets a cgroup's children limit memory if the cgroup delegates the controller.
fn enable_memory_controller(dir: &Path) -> Result<(), String> {
    let current = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    if current.split_whitespace().any(|name| name == "memory") {
        return Ok(());
    }
    write_file(&dir.join("cgroup.subtree_control"), "+memory")
        .map_err(|err| format!("cannot enable the memory controller in {}: {err}", dir.display()))
}

/// The mount point of the v1 hierarchy that has the memory controller, from /proc/self/mounts.
pub(super) fn v1_memory_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, mount_point, fs_type, options, ..] = fields.as_slice() else {
            return None;
        };
        (*fs_type == "cgroup" && options.split(',').any(|option| option == "memory")).then(|| PathBuf::from(mount_point))
    })
}

/// Mount points of cgroup v2 hierarchies, from /proc/self/mounts.
pub(super) fn v2_mounts(mounts: &str) -> Vec<PathBuf> {
    mounts
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [_, mount_point, fs_type, ..] = fields.as_slice() else {
                return None;
            };
            (*fs_type == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";

    #[test]
    fn finds_hierarchies_in_mounts() {
        assert_eq!(v1_memory_mount(MOUNTS), Some(PathBuf::from("/sys/fs/cgroup/memory")));
        assert_eq!(v2_mounts(MOUNTS), vec![PathBuf::from("/sys/fs/cgroup/unified")]);
        assert_eq!(v1_memory_mount("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0"), None);
    }
}
