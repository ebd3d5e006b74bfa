//! One container's cgroup: moving its process in, reading its OOM counters, and handing the
//! cgroup back (or removing it) when the container ends.

use std::ffi::{CStr, CString};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{CgroupVersion, IDLE_CGROUP_LIMIT, JoinMethod, write_file};

/// How long removal waits for the kernel to let go of an emptied cgroup.
const REMOVE_ATTEMPTS: u32 = 40;
const REMOVE_RETRY_DELAY: Duration = Duration::from_millis(25);

/// An emptied cgroup still charged with more memory than this is removed, not reused: files its
/// containers wrote on tmpfs (MapReduce map output in the shuffle dir, for one) stay charged to
/// it and cannot be reclaimed, so the next container would start with that much of its limit
/// gone (a 1 GiB sort's reducers were OOM-killed that way). Removal hands the charge to the
/// parent cgroup.
const REUSE_MAX_CHARGED_BYTES: u64 = 8 * 1024 * 1024;

/// One container's cgroup.
#[derive(Debug)]
pub(crate) struct ContainerCgroup {
    pub(super) version: CgroupVersion,
    pub(super) mount: PathBuf,
    pub(super) dir: PathBuf,
    pub(super) join_method: JoinMethod,
    /// `<dir>/cgroup.procs`, as the new process's join needs it (see `procs_path`).
    pub(super) procs_path: CString,
    /// The cgroup's OOM-kill and limit-hit counters when this container got it: a reused
    /// cgroup keeps the counts of its earlier containers.
    pub(super) oom_kills_before: u64,
    pub(super) failcnt_before: u64,
    /// Where the cgroup goes back when the container ends.
    pub(super) idle: Arc<Mutex<Vec<PathBuf>>>,
}

/// (OOM kills, times the limit was hit) of a cgroup; OOM kills are `None` on v1 kernels
/// before 4.13, which do not count them.
pub(super) fn read_oom_counters(version: CgroupVersion, dir: &Path) -> (Option<u64>, u64) {
    match version {
        CgroupVersion::V1 => {
            let kills = std::fs::read_to_string(dir.join("memory.oom_control"))
                .ok()
                .and_then(|text| counter(&text, "oom_kill"));
            let failcnt = std::fs::read_to_string(dir.join("memory.failcnt"))
                .ok()
                .and_then(|text| text.trim().parse::<u64>().ok())
                .unwrap_or(0);
            (kills, failcnt)
        }
        CgroupVersion::V2 => {
            let kills = std::fs::read_to_string(dir.join("memory.events"))
                .ok()
                .and_then(|text| counter(&text, "oom_kill"));
            (kills, 0)
        }
    }
}

impl ContainerCgroup {
    pub(crate) fn join_method(&self) -> JoinMethod {
        self.join_method
    }

    /// Runs `spawn` with the calling thread inside this cgroup, so the process it starts is
    /// born there (`JoinMethod::SpawningThread`). Fails, without running `spawn`, if the thread
    /// cannot enter.
    pub(crate) fn spawn_from_inside<T>(&self, spawn: impl FnOnce() -> T) -> io::Result<T> {
        let _inside = ThreadInCgroup::enter(&self.mount, &self.dir)?;
        Ok(spawn())
    }

    /// `cgroup.procs`, which the new process writes itself into before it execs, so not one
    /// byte the container allocates escapes the limit (`spawn.rs`).
    pub(crate) fn procs_path(&self) -> &CStr {
        &self.procs_path
    }

    /// v2: weighs the container's CPU by its vcores (and caps it, if `hard_cap`), in its one
    /// cgroup. Best effort: without the cpu controller delegated the files do not exist.
    pub(crate) fn set_cpu(&self, vcores: u32, hard_cap: bool) -> io::Result<()> {
        if self.version != CgroupVersion::V2 {
            return Ok(());
        }
        std::fs::write(self.dir.join("cpu.weight"), super::cpu::v2_weight(vcores).to_string())?;
        let max = if hard_cap {
            super::cpu::v2_cpu_max(vcores)
        } else {
            "max".to_owned()
        };
        std::fs::write(self.dir.join("cpu.max"), max)
    }

    /// Whether the kernel's OOM killer killed a process of this cgroup.
    pub(crate) fn oom_killed(&self, leader_sigkilled: bool) -> bool {
        match read_oom_counters(self.version, &self.dir) {
            (Some(kills), _) => kills > self.oom_kills_before,
            // Kernels before 4.13 have no oom_kill counter: a SIGKILLed leader in a cgroup
            // that hit its limit is the best evidence there is.
            (None, failcnt) => leader_sigkilled && failcnt > self.failcnt_before,
        }
    }

    /// Gives the cgroup back for the next container once its last process is gone, or
    /// removes it when enough are idle already (or it cannot be emptied).
    pub(crate) fn release(self) {
        self.kill_members();
        let empty = std::fs::read_to_string(self.dir.join("cgroup.procs")).is_ok_and(|procs| procs.trim().is_empty());
        if empty && self.charged_bytes().is_some_and(|bytes| bytes <= REUSE_MAX_CHARGED_BYTES) {
            let mut idle = self.idle.lock().expect("idle cgroup list is never poisoned");
            if idle.len() < IDLE_CGROUP_LIMIT {
                idle.push(self.dir.clone());
                return;
            }
        }
        self.remove();
    }

    /// Memory still charged to the cgroup (page cache, tmpfs files), if the kernel says.
    fn charged_bytes(&self) -> Option<u64> {
        let file = match self.version {
            CgroupVersion::V1 => "memory.usage_in_bytes",
            CgroupVersion::V2 => "memory.current",
        };
        std::fs::read_to_string(self.dir.join(file)).ok()?.trim().parse().ok()
    }

    /// SIGKILLs whatever is still in the cgroup (processes that left the container's process
    /// group), then removes the cgroup, retrying while the kernel finishes tearing it down.
    pub(crate) fn remove(&self) {
        for _ in 0..REMOVE_ATTEMPTS {
            self.kill_members();
            match std::fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(err) if err.kind() == io::ErrorKind::NotFound => return,
                Err(_) => std::thread::sleep(REMOVE_RETRY_DELAY),
            }
        }
        tracing::warn!(cgroup = %self.dir.display(), "cannot remove a container's cgroup; it stays until removed by hand");
    }

    /// The processes in the cgroup now (none if it cannot be read).
    pub(crate) fn member_pids(&self) -> Vec<i32> {
        super::member_pids(&self.dir)
    }

    fn kill_members(&self) {
        let own_pid = std::process::id() as i32;
        for pid in self.member_pids() {
            // Only possible if a spawning thread failed to leave: never kill the agent.
            if pid == own_pid {
                tracing::error!(cgroup = %self.dir.display(), "an agent thread is stuck in a container's cgroup");
                continue;
            }
            // SAFETY: plain syscall; a pid that has gone away just yields ESRCH.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// While alive, the calling thread sits in a container's v1 cgroup; dropping it moves the
/// thread back to where it was.
pub(super) struct ThreadInCgroup {
    tid: String,
    home_tasks: PathBuf,
}

impl ThreadInCgroup {
    pub(super) fn enter(mount: &Path, dir: &Path) -> io::Result<ThreadInCgroup> {
        // Home is the process's cgroup (its first thread's), so even a thread that once failed
        // to leave a container's cgroup goes back to the right place next time.
        let home_tasks = memory_cgroup_of(mount, "/proc/self/cgroup")?.join("tasks");
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() }.to_string();
        write_file(&dir.join("tasks"), &tid)?;
        Ok(ThreadInCgroup { tid, home_tasks })
    }
}

impl Drop for ThreadInCgroup {
    fn drop(&mut self) {
        let back = write_file(&self.home_tasks, &self.tid).or_else(|_| write_file(&self.home_tasks, &self.tid));
        if let Err(err) = back {
            tracing::error!(error = %err, home = %self.home_tasks.display(), "an agent thread cannot leave a container's cgroup");
        }
    }
}

/// The v1 memory cgroup directory named in `listing` (/proc/self/cgroup for the process,
/// /proc/thread-self/cgroup for the calling thread), in the hierarchy mounted at `mount`.
pub(super) fn memory_cgroup_of(mount: &Path, listing: &str) -> io::Result<PathBuf> {
    let membership = std::fs::read_to_string(listing)?;
    let relative = memory_cgroup_path(&membership)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no memory controller line in {listing}")))?;
    Ok(mount.join(relative.trim_start_matches('/')))
}

/// The path of the v1 memory cgroup in a /proc/<pid>/cgroup listing (`4:memory:/a/b`).
fn memory_cgroup_path(membership: &str) -> Option<&str> {
    membership.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        controllers.split(',').any(|name| name == "memory").then_some(path)
    })
}

/// The value of a `name N` line, as in memory.oom_control and memory.events.
fn counter(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_counters() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(counter(v1, "oom_kill"), Some(2));
        assert_eq!(counter(v1, "oom_kill_disable"), Some(0));
        let v2 = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(counter(v2, "oom_kill"), Some(1));
        assert_eq!(counter(v2, "missing"), None);
    }

    #[test]
    fn finds_the_memory_cgroup_of_a_thread() {
        let membership = "9:name=systemd:/\n4:memory:/process_api/abc\n0::/\n";
        assert_eq!(memory_cgroup_path(membership), Some("/process_api/abc"));
        assert_eq!(memory_cgroup_path("3:cpu,memory:/x\n"), Some("/x"));
        assert_eq!(memory_cgroup_path("0::/user.slice\n"), None);
    }
}
