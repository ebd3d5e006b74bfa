//! Memory limits through cgroups: one cgroup per container under `<memory root>/spindle`, with
//! the container's memory as its hard limit, so the kernel stops a container at its limit
//! instead of the agent noticing after the fact. Everything here blocks (cgroupfs writes):
//! call it from the blocking pool.

mod container;
pub(crate) mod cpu;
mod detect;

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub(crate) use container::ContainerCgroup;
use container::read_oom_counters;
pub(crate) use cpu::{CpuCgroup, CpuRoot};
use detect::{prepare, v1_memory_mount, v2_mounts};

/// Emptied container cgroups kept for reuse. Creating and removing a memory cgroup costs more
/// than starting a short container's process (the kernel's cgroup mutex, per-cgroup files),
/// so an agent keeps up to this many idle ones and gives them to the next containers.
const IDLE_CGROUP_LIMIT: usize = 256;

/// The two cgroup interfaces differ in file names and in how controllers are enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CgroupVersion {
    V1,
    V2,
}

/// How a new container process gets into its cgroup before its program runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JoinMethod {
    /// v1: the spawning thread moves itself into the cgroup, spawns (a child starts in its
    /// parent thread's cgroups) and moves back.
    SpawningThread,
    /// The new process writes itself into `cgroup.procs` before it execs (`spawn.rs`). For
    /// v2, where a thread cannot sit in another memory cgroup than its process, and when the
    /// trial migration at start fails.
    ByTheChild,
}

/// A writable memory hierarchy, ready to hold container cgroups.
#[derive(Debug, Clone)]
pub(crate) struct CgroupRoot {
    version: CgroupVersion,
    /// Where the hierarchy is mounted: the agent's own cgroup paths are relative to it.
    mount: PathBuf,
    /// `<memory root>/spindle`: parent of every container cgroup of every agent on this host.
    base: PathBuf,
    join_method: JoinMethod,
    /// Emptied cgroups of this agent's finished containers, ready for new ones.
    idle: Arc<Mutex<Vec<PathBuf>>>,
}

impl CgroupRoot {
    /// Finds a writable memory hierarchy: cgroup v1 first, then v2. The error says why none fits.
    pub(crate) fn detect() -> Result<CgroupRoot, String> {
        let mounts = std::fs::read_to_string("/proc/self/mounts").map_err(|err| format!("cannot read /proc/self/mounts: {err}"))?;
        let mut reasons = Vec::new();
        match v1_memory_mount(&mounts) {
            Some(mount) => match prepare(CgroupVersion::V1, &mount) {
                Ok(root) => return Ok(root),
                Err(err) => reasons.push(format!("cgroup v1 at {}: {err}", mount.display())),
            },
            None => reasons.push("no cgroup v1 memory hierarchy is mounted".to_owned()),
        }
        let v2_mounts = v2_mounts(&mounts);
        if v2_mounts.is_empty() {
            reasons.push("no cgroup v2 hierarchy is mounted".to_owned());
        }
        for mount in v2_mounts {
            match prepare(CgroupVersion::V2, &mount) {
                Ok(root) => return Ok(root),
                Err(err) => reasons.push(format!("cgroup v2 at {}: {err}", mount.display())),
            }
        }
        Err(reasons.join("; "))
    }

    pub(crate) fn version(&self) -> CgroupVersion {
        self.version
    }

    pub(crate) fn join_method(&self) -> JoinMethod {
        self.join_method
    }

    /// Removes the idle cgroups kept for reuse (when the agent stops).
    pub(crate) fn remove_idle(&self) {
        let idle = std::mem::take(&mut *self.idle.lock().expect("idle cgroup list is never poisoned"));
        for dir in idle {
            let _ = std::fs::remove_dir(&dir);
        }
    }

    /// The container cgroup process `pid` is in (a container of an earlier agent process, to
    /// be removed when it ends), if it is one of Spindle's.
    pub(crate) fn container_dir_of(&self, pid: i32) -> Option<PathBuf> {
        let controller = (self.version == CgroupVersion::V1).then_some("memory");
        dir_of(pid, &self.mount, &self.base, controller)
    }
}

/// The cgroup of `pid` under `mount` (v1: of `controller`; v2: the unified one), if it lies
/// below `base`: never a cgroup Spindle did not make.
pub(crate) fn dir_of(pid: i32, mount: &Path, base: &Path, controller: Option<&str>) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let relative = text.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let wanted = match controller {
            Some(name) => controllers.split(',').any(|found| found == name),
            None => controllers.is_empty(),
        };
        wanted.then(|| path.trim_start_matches('/').to_owned())
    })?;
    let dir = mount.join(relative);
    (dir.starts_with(base) && dir != base).then_some(dir)
}

impl CgroupRoot {
    /// A cgroup with a hard memory limit of `limit_bytes`: an idle one of this agent if there
    /// is one, else a new one named `name`.
    pub(crate) fn create(&self, name: &str, limit_bytes: u64) -> io::Result<ContainerCgroup> {
        let reusable = self.idle.lock().expect("idle cgroup list is never poisoned").pop();
        if let Some(dir) = reusable {
            match self.configure(dir.clone(), limit_bytes) {
                Ok(cgroup) => return Ok(cgroup),
                // Removed meanwhile (another agent's clean-up), or its limit cannot be set.
                Err(_) => {
                    let _ = std::fs::remove_dir(&dir);
                }
            }
        }
        let dir = self.base.join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            // Left over by an agent that stopped with the container still in it: reuse.
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(err),
        }
        self.configure(dir.clone(), limit_bytes).inspect_err(|_| {
            let _ = std::fs::remove_dir(&dir);
        })
    }

    /// Sets the limits of an existing, empty cgroup and notes its counters.
    fn configure(&self, dir: PathBuf, limit_bytes: u64) -> io::Result<ContainerCgroup> {
        let limit = limit_bytes.to_string();
        let limited = match self.version {
            CgroupVersion::V1 => write_file(&dir.join("memory.limit_in_bytes"), &limit).or_else(|_| {
                // v1 refuses a memory limit above the memory+swap limit a reused cgroup still
                // has: raise that one first.
                let _ = write_file(&dir.join("memory.memsw.limit_in_bytes"), &limit);
                write_file(&dir.join("memory.limit_in_bytes"), &limit)
            }),
            CgroupVersion::V2 => write_file(&dir.join("memory.max"), &limit),
        };
        limited?;
        // Best effort: without swap accounting a container could hide overuse in swap, and
        // without oom.group a v2 OOM kill could leave half a process tree behind.
        match self.version {
            CgroupVersion::V1 => {
                let _ = write_file(&dir.join("memory.memsw.limit_in_bytes"), &limit);
                let _ = write_file(&dir.join("memory.swappiness"), "0");
            }
            CgroupVersion::V2 => {
                let _ = write_file(&dir.join("memory.swap.max"), "0");
                let _ = write_file(&dir.join("memory.oom.group"), "1");
            }
        }
        let procs_path = CString::new(dir.join("cgroup.procs").as_os_str().as_bytes())
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
        let (oom_kills_before, failcnt_before) = read_oom_counters(self.version, &dir);
        Ok(ContainerCgroup {
            version: self.version,
            mount: self.mount.clone(),
            dir,
            join_method: self.join_method,
            procs_path,
            oom_kills_before: oom_kills_before.unwrap_or(0),
            failcnt_before,
            idle: Arc::clone(&self.idle),
        })
    }
}

fn write_file(path: &Path, contents: &str) -> io::Result<()> {
    std::fs::write(path, contents)
}

/// The processes in the cgroup at `dir` now (none if it cannot be read).
fn member_pids(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|procs| procs.lines().filter_map(|line| line.trim().parse().ok()).collect())
        .unwrap_or_default()
}
