//! Memory limits through cgroups: one cgroup per container under `<memory root>/spindle`, with
//! the container's memory as its hard limit, so the kernel stops a container at its limit
//! instead of the agent noticing after the fact. Everything here blocks (cgroupfs writes):
//! call it from the blocking pool, or from a forked child for `join_hook`.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Name of the directory, under the memory hierarchy's root, that holds the containers' cgroups.
const SPINDLE_CGROUP: &str = "spindle";

/// Empty container cgroups older than this, found at start, were left behind by agents that
/// stopped while their containers ran: they are removed. Younger ones may belong to another
/// agent on this host that is just starting a container.
const STALE_CGROUP_AGE: Duration = Duration::from_secs(60);

/// Emptied container cgroups kept for reuse. Creating and removing a memory cgroup costs more
/// than starting a short container's process (the kernel's cgroup mutex, per-cgroup files),
/// so an agent keeps up to this many idle ones and gives them to the next containers.
const IDLE_CGROUP_LIMIT: usize = 256;

/// How long removal waits for the kernel to let go of an emptied cgroup.
const REMOVE_ATTEMPTS: u32 = 40;
const REMOVE_RETRY_DELAY: Duration = Duration::from_millis(25);

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
    /// parent thread's cgroups) and moves back. This keeps std's posix_spawn (vfork) path:
    /// a `pre_exec` hook forces fork(), which copies the agent's page tables and write-protects
    /// its memory, and measured 2–3× slower per container on a busy agent.
    SpawningThread,
    /// A `pre_exec` hook in the forked child writes its pid into `cgroup.procs`. For v2, where
    /// a thread cannot sit in another memory cgroup than its process, and when the trial
    /// migration at start fails.
    PreExecHook,
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

/// One container's cgroup.
#[derive(Debug)]
pub(crate) struct ContainerCgroup {
    version: CgroupVersion,
    mount: PathBuf,
    dir: PathBuf,
    join_method: JoinMethod,
    /// `<dir>/cgroup.procs`, prepared before fork: the child may not allocate.
    procs_path: CString,
    /// The cgroup's OOM-kill and limit-hit counters when this container got it: a reused
    /// cgroup keeps the counts of its earlier containers.
    oom_kills_before: u64,
    failcnt_before: u64,
    /// Where the cgroup goes back when the container ends.
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

/// (OOM kills, times the limit was hit) of a cgroup; OOM kills are `None` on v1 kernels
/// before 4.13, which do not count them.
fn read_oom_counters(version: CgroupVersion, dir: &Path) -> (Option<u64>, u64) {
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

    /// A `pre_exec` hook that moves the forked child into this cgroup before it execs, so
    /// not one byte the container allocates escapes the limit. Async-signal-safe: it only calls
    /// getpid/open/write/close on memory prepared before the fork.
    pub(crate) fn join_hook(&self) -> impl FnMut() -> io::Result<()> + Send + Sync + 'static {
        let procs_path = self.procs_path.clone();
        move || {
            let mut digits = [0u8; 20];
            // SAFETY: getpid cannot fail and is async-signal-safe.
            let pid = unsafe { libc::getpid() };
            let text = format_decimal(pid.unsigned_abs(), &mut digits);
            // SAFETY: the path is a valid NUL-terminated string owned by this closure; the fd is
            // closed on every path; nothing here allocates or takes a lock.
            unsafe {
                let fd = libc::open(procs_path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let written = libc::write(fd, text.as_ptr().cast(), text.len());
                let write_error = (written < 0).then(io::Error::last_os_error);
                libc::close(fd);
                match write_error {
                    Some(err) => Err(err),
                    None => Ok(()),
                }
            }
        }
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
        if empty {
            let mut idle = self.idle.lock().expect("idle cgroup list is never poisoned");
            if idle.len() < IDLE_CGROUP_LIMIT {
                idle.push(self.dir.clone());
                return;
            }
        }
        self.remove();
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

    fn kill_members(&self) {
        let Ok(procs) = std::fs::read_to_string(self.dir.join("cgroup.procs")) else {
            return;
        };
        let own_pid = std::process::id() as i32;
        for pid in procs.lines().filter_map(|line| line.trim().parse::<i32>().ok()) {
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
struct ThreadInCgroup {
    tid: String,
    home_tasks: PathBuf,
}

impl ThreadInCgroup {
    fn enter(mount: &Path, dir: &Path) -> io::Result<ThreadInCgroup> {
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
fn memory_cgroup_of(mount: &Path, listing: &str) -> io::Result<PathBuf> {
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

/// v1: whether this thread can move into `trial` and back home, which `SpawningThread` needs.
fn can_migrate_threads(mount: &Path, trial: &Path) -> bool {
    let entered = ThreadInCgroup::enter(mount, trial).is_ok();
    let home = memory_cgroup_of(mount, "/proc/self/cgroup");
    let now = memory_cgroup_of(mount, "/proc/thread-self/cgroup");
    entered && matches!((home, now), (Ok(home), Ok(now)) if home == now)
}

/// Makes `<mount>/spindle` and proves a container cgroup can be created in it.
fn prepare(version: CgroupVersion, mount: &Path) -> Result<CgroupRoot, String> {
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
        JoinMethod::PreExecHook
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

fn write_file(path: &Path, contents: &str) -> io::Result<()> {
    std::fs::write(path, contents)
}

/// The mount point of the v1 hierarchy that has the memory controller, from /proc/self/mounts.
fn v1_memory_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, mount_point, fs_type, options, ..] = fields.as_slice() else {
            return None;
        };
        (*fs_type == "cgroup" && options.split(',').any(|option| option == "memory")).then(|| PathBuf::from(mount_point))
    })
}

/// Mount points of cgroup v2 hierarchies, from /proc/self/mounts.
fn v2_mounts(mounts: &str) -> Vec<PathBuf> {
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

/// The value of a `name N` line, as in memory.oom_control and memory.events.
fn counter(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok()).flatten()
    })
}

/// Writes `value` in decimal into `buffer` without allocating; returns the digits.
fn format_decimal(mut value: u32, buffer: &mut [u8; 20]) -> &[u8] {
    let mut start = buffer.len();
    loop {
        start -= 1;
        buffer[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    &buffer[start..]
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

    #[test]
    fn formats_pids_without_allocating() {
        let mut buffer = [0u8; 20];
        assert_eq!(format_decimal(0, &mut buffer), b"0");
        assert_eq!(format_decimal(4_194_304, &mut buffer), b"4194304");
        assert_eq!(format_decimal(u32::MAX, &mut buffer), b"4294967295");
    }
}
