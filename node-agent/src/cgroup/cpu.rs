//! CPU shared by vcores: each container's cgroup gets a CPU weight in proportion to its vcores,
//! so busy containers on one node get CPU time 1:3 when they hold 1 and 3 vcores, and
//! optionally a hard cap of its vcores' worth of CPU time (CFS quota).
//!
//! cgroup v1 keeps CPU in a hierarchy of its own (`/sys/fs/cgroup/cpu`): a container gets a
//! second cgroup there, which its new process joins before exec. With v2 the weight goes into
//! the container's one cgroup (`ContainerCgroup::set_cpu`).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{CgroupVersion, IDLE_CGROUP_LIMIT, write_file};

/// v1's `cpu.shares` of one vcore (the kernel's default weight for a cgroup).
const V1_SHARES_PER_VCORE: u64 = 1024;
/// v2's `cpu.weight` of one vcore (the kernel's default weight), within 1..=10000.
const V2_WEIGHT_PER_VCORE: u64 = 100;
/// CFS period of the optional hard cap.
const CFS_PERIOD_US: u64 = 100_000;

/// Name of the directory, under the CPU hierarchy's root, that holds container cgroups.
const SPINDLE_CGROUP: &str = "spindle";

/// A writable cgroup v1 CPU hierarchy.
#[derive(Debug, Clone)]
pub(crate) struct CpuRoot {
    /// `<cpu mount>/spindle`.
    base: PathBuf,
    /// Cap each container at its vcores' worth of CPU time, not only weigh it.
    hard_cap: bool,
    /// Emptied cgroups of this agent's finished containers, with the vcores they are set for:
    /// reusing one costs a write, where mkdir and rmdir cost ~0.5 ms of kernel time each.
    idle: Arc<Mutex<Vec<(PathBuf, u32)>>>,
}

/// A container's cgroup in the v1 CPU hierarchy.
#[derive(Debug)]
pub(crate) struct CpuCgroup {
    dir: PathBuf,
    vcores: u32,
    /// Where it goes back when the container ends.
    idle: Arc<Mutex<Vec<(PathBuf, u32)>>>,
}

impl CpuRoot {
    /// Finds the v1 `cpu` hierarchy in `/proc/self/mounts` and proves a container cgroup with
    /// a weight can be made there. The error says why not.
    pub(crate) fn detect(hard_cap: bool) -> Result<CpuRoot, String> {
        let mounts = std::fs::read_to_string("/proc/self/mounts").map_err(|err| format!("cannot read /proc/self/mounts: {err}"))?;
        let mount = v1_cpu_mount(&mounts).ok_or_else(|| "no cgroup v1 cpu hierarchy is mounted".to_owned())?;
        let base = mount.join(SPINDLE_CGROUP);
        match std::fs::create_dir(&base) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(format!("cannot create {}: {err}", base.display())),
        }
        if !base.join("cpu.shares").exists() {
            return Err(format!("{} has no cpu.shares", base.display()));
        }
        // Seeing the files is not enough (an earlier root agent may have made `base`): prove a
        // container cgroup can be made there, as an unprivileged agent cannot.
        let trial = base.join(format!("probe-{}", std::process::id()));
        match std::fs::create_dir(&trial) {
            Ok(()) => {
                let _ = std::fs::remove_dir(&trial);
            }
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(format!("cannot create a cgroup in {}: {err}", base.display())),
        }
        remove_stale(&base);
        Ok(CpuRoot {
            base,
            hard_cap,
            idle: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// A cgroup named `name` weighted (and capped, if configured) by `vcores`.
    pub(crate) fn create(&self, name: &str, vcores: u32) -> io::Result<CpuCgroup> {
        let reusable = self.idle.lock().expect("idle cgroup list is never poisoned").pop();
        if let Some((dir, set_for)) = reusable {
            // The shares are written even when unchanged: the write proves the cgroup is still
            // there (another agent's stale sweep may have removed it).
            let configured = write_file(&dir.join("cpu.shares"), &v1_shares(vcores).to_string())
                .and_then(|()| if set_for == vcores { Ok(()) } else { self.set_quota(&dir, vcores) });
            match configured {
                Ok(()) => return self.cgroup(dir, vcores),
                Err(_) => {
                    let _ = std::fs::remove_dir(&dir);
                }
            }
        }
        let dir = self.base.join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(err),
        }
        let configured = write_file(&dir.join("cpu.shares"), &v1_shares(vcores).to_string()).and_then(|()| self.set_quota(&dir, vcores));
        if let Err(err) = configured {
            let _ = std::fs::remove_dir(&dir);
            return Err(err);
        }
        self.cgroup(dir, vcores)
    }

    /// A cgroup named `name` weighted by `vcores`, with the processes `members` lists moved
    /// into it: twice, so a process forked by one not yet moved during the first pass is
    /// caught by the second; later children are born inside. Processes that ended meanwhile
    /// are skipped. Blocking.
    pub(crate) fn adopt(&self, name: &str, vcores: u32, members: impl Fn() -> Vec<i32>) -> io::Result<CpuCgroup> {
        let cgroup = self.create(name, vcores)?;
        let procs = cgroup.dir.join("cgroup.procs");
        for _ in 0..2 {
            for pid in members() {
                match write_file(&procs, &pid.to_string()) {
                    Ok(()) => {}
                    Err(err) if err.raw_os_error() == Some(libc::ESRCH) => {}
                    Err(err) => {
                        cgroup.release();
                        return Err(err);
                    }
                }
            }
        }
        Ok(cgroup)
    }

    /// The CFS quota: `vcores` worth of CPU time with a hard cap, else none.
    fn set_quota(&self, dir: &Path, vcores: u32) -> io::Result<()> {
        let quota = if self.hard_cap {
            cfs_quota_us(vcores).to_string()
        } else {
            "-1".to_owned()
        };
        write_file(&dir.join("cpu.cfs_period_us"), &CFS_PERIOD_US.to_string())?;
        write_file(&dir.join("cpu.cfs_quota_us"), &quota)
    }

    fn cgroup(&self, dir: PathBuf, vcores: u32) -> io::Result<CpuCgroup> {
        Ok(CpuCgroup {
            dir,
            vcores,
            idle: Arc::clone(&self.idle),
        })
    }

    /// Removes the idle cgroups kept for reuse (when the agent stops).
    pub(crate) fn remove_idle(&self) {
        let idle = std::mem::take(&mut *self.idle.lock().expect("idle cgroup list is never poisoned"));
        for (dir, _) in idle {
            let _ = std::fs::remove_dir(&dir);
        }
    }

    /// The container cgroup of process `pid` in this hierarchy, if it is one of Spindle's.
    pub(crate) fn container_dir_of(&self, pid: i32) -> Option<PathBuf> {
        super::dir_of(pid, self.base.parent()?, &self.base, Some("cpu"))
    }
}

impl CpuCgroup {
    /// The processes in the cgroup now.
    #[cfg(test)]
    pub(crate) fn member_pids(&self) -> Vec<i32> {
        super::member_pids(&self.dir)
    }

    /// Gives the cgroup back for the next container once it is empty, or removes it when
    /// enough are idle already. Blocking.
    pub(crate) fn release(self) {
        let empty = std::fs::read_to_string(self.dir.join("cgroup.procs")).is_ok_and(|procs| procs.trim().is_empty());
        if empty {
            let mut idle = self.idle.lock().expect("idle cgroup list is never poisoned");
            if idle.len() < IDLE_CGROUP_LIMIT {
                idle.push((self.dir.clone(), self.vcores));
                return;
            }
        }
        self.remove();
    }

    /// Removes the cgroup once the container has ended (its processes are gone by then: the
    /// process group and the memory cgroup were killed). Blocking.
    pub(crate) fn remove(self) {
        for _ in 0..20 {
            match std::fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(err) if err.kind() == io::ErrorKind::NotFound => return,
                // EBUSY while the last members are being reaped.
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        }
        tracing::debug!(dir = %self.dir.display(), "cannot remove a container's cpu cgroup");
    }
}

/// Removes empty container cgroups older than a minute, left by agents that stopped while
/// their containers ran (younger ones may belong to another agent on this host just starting
/// a container). A cgroup with members cannot be removed, so a race costs nothing.
fn remove_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else { return };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|meta| meta.modified())
            .is_ok_and(|modified| modified.elapsed().is_ok_and(|age| age > std::time::Duration::from_secs(60)));
        if old && entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

/// v1 `cpu.shares` for `vcores` (at least the kernel's minimum of 2).
pub(crate) fn v1_shares(vcores: u32) -> u64 {
    (u64::from(vcores) * V1_SHARES_PER_VCORE).max(2)
}

/// v2 `cpu.weight` for `vcores`, within the kernel's 1..=10000.
pub(crate) fn v2_weight(vcores: u32) -> u64 {
    (u64::from(vcores) * V2_WEIGHT_PER_VCORE).clamp(1, 10_000)
}

/// CFS quota (µs per `CFS_PERIOD_US`) of `vcores` whole CPUs.
pub(crate) fn cfs_quota_us(vcores: u32) -> u64 {
    u64::from(vcores.max(1)) * CFS_PERIOD_US
}

/// The v2 `cpu.max` line of a hard cap of `vcores`.
pub(crate) fn v2_cpu_max(vcores: u32) -> String {
    format!("{} {CFS_PERIOD_US}", cfs_quota_us(vcores))
}

/// The mount point of the v1 hierarchy that has the `cpu` controller.
fn v1_cpu_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (path, kind, options) = (fields.get(1)?, fields.get(2)?, fields.get(3)?);
        (*kind == "cgroup" && options.split(',').any(|option| option == "cpu")).then(|| Path::new(path).to_path_buf())
    })
}

/// The versions this module serves, for the start-up log.
pub(crate) fn describe(version: CgroupVersion, hard_cap: bool) -> String {
    let cap = if hard_cap { ", capped at its vcores" } else { "" };
    match version {
        CgroupVersion::V1 => format!("cpu.shares by vcores{cap}"),
        CgroupVersion::V2 => format!("cpu.weight by vcores{cap}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_follow_vcores() {
        assert_eq!(v1_shares(1), 1024);
        assert_eq!(v1_shares(3), 3 * 1024);
        assert_eq!(v1_shares(0), 2);
        assert_eq!(v2_weight(3), 300);
        assert_eq!(v2_weight(1_000), 10_000);
        assert_eq!(v2_cpu_max(2), "200000 100000");
    }

    #[test]
    fn finds_the_cpu_hierarchy() {
        let mounts = "cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n\
                      cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,relatime,cpu,cpuacct 0 0\n\
                      cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0\n";
        assert_eq!(v1_cpu_mount(mounts), Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")));
        assert_eq!(v1_cpu_mount("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n"), None);
    }

    #[test]
    fn finished_cgroups_are_reused_with_the_new_weight() {
        let Ok(root) = CpuRoot::detect(false) else {
            eprintln!("skipped: no writable cgroup v1 cpu hierarchy");
            return;
        };
        let name = format!("reuse-test-{}", std::process::id());
        let first = root.create(&name, 1).unwrap();
        let dir = first.dir.clone();
        assert_eq!(std::fs::read_to_string(dir.join("cpu.shares")).unwrap().trim(), "1024");
        first.release();
        let second = root.create(&format!("{name}-b"), 3).unwrap();
        assert_eq!(second.dir, dir, "an empty finished cgroup is taken again");
        assert_eq!(std::fs::read_to_string(dir.join("cpu.shares")).unwrap().trim(), "3072");
        second.release();
        // One that vanished meanwhile (another agent's sweep) is replaced by a new one.
        std::fs::remove_dir(&dir).unwrap();
        let third = root.create(&format!("{name}-c"), 2).unwrap();
        assert_ne!(third.dir, dir);
        assert_eq!(std::fs::read_to_string(third.dir.join("cpu.shares")).unwrap().trim(), "2048");
        third.remove();
        root.remove_idle();
    }

    #[test]
    fn a_running_process_tree_is_adopted_whole_and_gone_processes_are_skipped() {
        let Ok(root) = CpuRoot::detect(false) else {
            eprintln!("skipped: no writable cgroup v1 cpu hierarchy");
            return;
        };
        // A shell with a child, started outside any container cgroup, as a container is.
        let mut shell = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & echo $!; wait"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(shell.stdout.take().unwrap()), &mut line).unwrap();
        let child: i32 = line.trim().parse().unwrap();
        let members = vec![shell.id() as i32, child, 999_999_999];
        let cgroup = root
            .adopt(&format!("adopt-test-{}", std::process::id()), 2, || members.clone())
            .unwrap();
        let mut inside = cgroup.member_pids();
        inside.sort_unstable();
        let mut expected = vec![shell.id() as i32, child];
        expected.sort_unstable();
        assert_eq!(inside, expected);
        assert_eq!(std::fs::read_to_string(cgroup.dir.join("cpu.shares")).unwrap().trim(), "2048");
        // SAFETY: plain syscalls on processes this test started.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::kill(shell.id() as i32, libc::SIGKILL);
        }
        let _ = shell.wait();
        cgroup.remove();
        root.remove_idle();
    }
}
