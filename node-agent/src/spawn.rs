//! Starting a container's process the way `posix_spawn` does — `clone(CLONE_VM | CLONE_VFORK)`,
//! so the agent's memory is shared, not copied — plus the steps `posix_spawn` cannot do, made by
//! the child between clone and exec: joining cgroups and becoming the container's account.
//!
//! Why not std's `Command`: a `pre_exec` hook or a uid makes it `fork()`, which cost ~4.4 ms of
//! CPU per container in a busy agent (the page-table copy, its teardown at exec, and
//! copy-on-write faults in every agent thread afterwards) and cut launches from ~1,600/s to
//! ~330/s (bench/README.md). Go's `syscall.ForkExec` takes the same path on Linux.
//!
//! The child shares the agent's memory and runs on a stack the parent lends it, while the
//! calling thread is suspended until the child execs or exits. So the child must not allocate,
//! take a lock or touch anything the parent's other threads may be changing: everything it
//! needs is prepared here first (`Prepared`), and it makes raw system calls only.

use std::ffi::{CString, c_int, c_void};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// The child's stack. It runs a few frames of raw system calls; glibc's posix_spawn gives its
/// child 32 KiB plus the argument vectors, which this child never copies.
const CHILD_STACK_BYTES: usize = 64 * 1024;

/// Exit code of a child that failed before its program ran (the parent reports the real error).
const CHILD_FAILED: c_int = 127;

/// Who the process runs as, already checked (see `account.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, set before the gid and uid (setgroups needs root).
    pub groups: Vec<libc::gid_t>,
}

/// What to start.
#[derive(Debug)]
pub(crate) struct ProcessSpec {
    /// A path (with a `/`): this module does no PATH lookup, and refuses a bare name.
    pub program: CString,
    /// argv, argv[0] included.
    pub args: Vec<CString>,
    /// `NAME=value` entries: the whole environment.
    pub env: Vec<CString>,
    pub cwd: CString,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// `cgroup.procs` files the process writes itself into before anything else runs.
    pub join_cgroups: Vec<CString>,
    /// `None`: stay the agent's own account.
    pub identity: Option<Identity>,
}

/// The child's step that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    ProcessGroup,
    /// Index into `ProcessSpec::join_cgroups`.
    JoinCgroup(usize),
    Groups,
    Gid,
    Uid,
    Chdir,
    Stdio,
    Exec,
    /// In the parent: clone itself, or opening the pidfd.
    Start,
}

/// Why a process did not start.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub(crate) struct SpawnError {
    pub step: Step,
    /// The step in words, with its path or id.
    pub what: String,
    #[source]
    pub source: io::Error,
}

/// A started process, a child of the agent. Dropping it leaves the process running (the
/// agent stops without killing containers, see `supervise.rs`).
#[derive(Debug)]
pub(crate) struct ContainerProcess {
    pid: libc::pid_t,
    /// Readable once the process has exited: waited on without a thread or SIGCHLD.
    pidfd: OwnedFd,
}

/// Starts `spec`. Blocking for as long as the child takes to reach exec (the calling thread is
/// suspended meanwhile): call on the blocking pool.
pub(crate) fn spawn(spec: &ProcessSpec) -> Result<ContainerProcess, SpawnError> {
    let start_error = |what: &str, source: io::Error| SpawnError {
        step: Step::Start,
        what: what.to_owned(),
        source,
    };
    if !spec.program.as_bytes().contains(&b'/') {
        // A bare name was not found on PATH by the caller: never run a file of that name in
        // the working dir, as execve would.
        return Err(SpawnError {
            step: Step::Exec,
            what: describe(Step::Exec, spec),
            source: io::Error::from(io::ErrorKind::NotFound),
        });
    }
    let devnull = std::fs::File::open("/dev/null").map_err(|err| start_error("open /dev/null", err))?;
    // fds 0-2 are the child's targets: a source there could be overwritten before it is used.
    let stdin = above_stdio(devnull.into()).map_err(|err| start_error("duplicate stdin", err))?;
    let stdout = above_stdio(spec.stdout.try_clone().map_err(|err| start_error("duplicate stdout", err))?)
        .map_err(|err| start_error("duplicate stdout", err))?;
    let stderr = above_stdio(spec.stderr.try_clone().map_err(|err| start_error("duplicate stderr", err))?)
        .map_err(|err| start_error("duplicate stderr", err))?;
    let mut prepared = Prepared {
        program: spec.program.as_ptr(),
        argv: null_terminated(&spec.args),
        envp: null_terminated(&spec.env),
        cwd: spec.cwd.as_ptr(),
        stdio: [stdin.as_raw_fd(), stdout.as_raw_fd(), stderr.as_raw_fd()],
        join_cgroups: spec.join_cgroups.iter().map(|path| path.as_ptr()).collect(),
        identity: spec.identity.as_ref().map(|identity| {
            (
                identity.uid as libc::c_long,
                identity.gid as libc::c_long,
                identity.groups.as_ptr(),
                identity.groups.len(),
            )
        }),
        failed: None,
    };
    let mut stack = vec![0u8; CHILD_STACK_BYTES];
    // SAFETY: the stack grows down from its end, which clone wants 16-byte aligned.
    let stack_top = unsafe { stack.as_mut_ptr().add(CHILD_STACK_BYTES) };
    let stack_top = (stack_top as usize & !15) as *mut c_void;

    // Signals stay blocked from before clone until the child has reset every handler: the
    // agent's handlers must not run in a child that shares its memory.
    let (pid, clone_error) = with_signals_blocked(|| {
        // SAFETY: `child_main` only makes raw system calls on `prepared`, which outlives the
        // child's use of it: CLONE_VFORK suspends this thread until the child execs or exits.
        // CLONE_VM without CLONE_FILES: the child's fd table is its own copy.
        let pid = unsafe {
            libc::clone(
                child_main,
                stack_top,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                (&raw mut prepared).cast(),
            )
        };
        (pid, (pid < 0).then(io::Error::last_os_error))
    });
    drop(stack);
    if let Some(err) = clone_error {
        return Err(start_error("clone", err));
    }
    if let Some((step, errno)) = prepared.failed {
        // It has exited already: reap it.
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        return Err(SpawnError {
            step,
            what: describe(step, spec),
            source: io::Error::from_raw_os_error(errno),
        });
    }
    // SAFETY: `pid` is our unreaped child, so the pid cannot have been reused.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        let err = io::Error::last_os_error();
        // SAFETY: our child; it must not run unwatched.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        return Err(start_error("pidfd_open (needs Linux 5.3)", err));
    }
    Ok(ContainerProcess {
        pid,
        // SAFETY: a new fd we own.
        pidfd: unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) },
    })
}

impl ContainerProcess {
    pub(crate) fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// Waits for the process to exit and reaps it.
    pub(crate) async fn wait(self) -> io::Result<ExitStatus> {
        // SAFETY: the AsyncFd owns the OwnedFd, which stays open and the same fd until it drops.
        let pidfd = unsafe { AsyncFd::register_with_interest(self.pidfd, Interest::READABLE) }.map_err(io::Error::from)?;
        loop {
            let mut ready = pidfd.readable().await?;
            let mut status = 0;
            // SAFETY: waiting for our own child without blocking.
            match unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) } {
                0 => ready.clear_ready(),
                pid if pid == self.pid => return Ok(ExitStatus::from_raw(status)),
                _ => {
                    let err = io::Error::last_os_error();
                    if err.kind() != io::ErrorKind::Interrupted {
                        return Err(err);
                    }
                }
            }
        }
    }
}

/// Everything the child reads, as raw pointers into memory the parent keeps alive, and the
/// one thing it writes: the step that failed.
struct Prepared {
    program: *const libc::c_char,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    cwd: *const libc::c_char,
    /// Sources of fds 0, 1 and 2; all above 2.
    stdio: [RawFd; 3],
    join_cgroups: Vec<*const libc::c_char>,
    /// uid, gid, supplementary groups and their count.
    identity: Option<(libc::c_long, libc::c_long, *const libc::gid_t, usize)>,
    failed: Option<(Step, c_int)>,
}

/// The child. Raw system calls only (see the module comment); on a failure it records the step
/// and errno for the parent and exits.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the parent's `Prepared`, alive and not touched by the suspended parent
    // until this child execs or exits.
    let prepared = unsafe { &mut *arg.cast::<Prepared>() };
    match unsafe { child_steps(prepared) } {
        Ok(never) => match never {},
        Err(step) => {
            prepared.failed = Some((step, errno()));
            // SAFETY: ends this child only (no atexit handlers: they belong to the agent).
            unsafe { libc::syscall(libc::SYS_exit_group, CHILD_FAILED) };
            CHILD_FAILED
        }
    }
}

/// # Safety
/// Only in the child of `spawn`.
unsafe fn child_steps(prepared: &Prepared) -> Result<std::convert::Infallible, Step> {
    unsafe {
        reset_signals();
        check(libc::syscall(libc::SYS_setpgid, 0, 0), Step::ProcessGroup)?;
        for (index, path) in prepared.join_cgroups.iter().enumerate() {
            join_cgroup(*path).map_err(|()| Step::JoinCgroup(index))?;
        }
        if let Some((uid, gid, groups, count)) = prepared.identity {
            // Groups, then gid, then uid: each later call gives up what the earlier ones need.
            // Real, effective and saved ids alike, so the process cannot switch back.
            check(libc::syscall(libc::SYS_setgroups, count as libc::c_long, groups), Step::Groups)?;
            check(libc::syscall(libc::SYS_setresgid, gid, gid, gid), Step::Gid)?;
            check(libc::syscall(libc::SYS_setresuid, uid, uid, uid), Step::Uid)?;
        }
        // After the drop: the container's account must itself be able to enter its dir.
        check(libc::syscall(libc::SYS_chdir, prepared.cwd), Step::Chdir)?;
        for (target, source) in prepared.stdio.iter().enumerate() {
            // dup3 clears close-on-exec on the target; sources are above 2, never equal to it.
            check(libc::syscall(libc::SYS_dup3, *source, target as c_int, 0), Step::Stdio)?;
        }
        // No fd of the agent reaches the program, even one opened without O_CLOEXEC by a
        // library (Linux 5.11; older kernels rely on O_CLOEXEC alone, as std does).
        libc::syscall(libc::SYS_close_range, 3, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC);
        libc::syscall(libc::SYS_execve, prepared.program, prepared.argv.as_ptr(), prepared.envp.as_ptr());
    }
    Err(Step::Exec)
}

/// Every signal back to its default action and unblocked, as a new program expects (the agent
/// ignores SIGPIPE, which an ignored disposition would pass on through exec). Raw
/// `rt_sigaction`: glibc's wrapper refuses its own internal signals (32, 33), which the
/// process may have ignored too.
///
/// # Safety
/// Only in the child of `spawn`.
unsafe fn reset_signals() {
    // The kernel's `struct sigaction` on x86-64 and aarch64: handler, flags, restorer, mask;
    // all zero is SIG_DFL with no flags.
    let default = [0usize; 4];
    for signal in 1..=libc::SIGRTMAX() {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: the kernel reads 32 bytes of `default`; the 8-byte sigset is the kernel's.
        unsafe {
            libc::syscall(libc::SYS_rt_sigaction, signal, default.as_ptr(), std::ptr::null_mut::<usize>(), 8);
        }
    }
    let empty: u64 = 0;
    // SAFETY: as above.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &raw const empty,
            std::ptr::null_mut::<u64>(),
            8,
        );
    }
}

/// Writes "0" (the writing process) into a `cgroup.procs` file.
///
/// # Safety
/// Only in the child of `spawn`; `path` is NUL-terminated.
unsafe fn join_cgroup(path: *const libc::c_char) -> Result<(), ()> {
    unsafe {
        let fd = libc::syscall(libc::SYS_openat, libc::AT_FDCWD, path, libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(());
        }
        let written = libc::syscall(libc::SYS_write, fd, b"0".as_ptr(), 1);
        let errno_after_write = errno();
        libc::syscall(libc::SYS_close, fd);
        if written != 1 {
            set_errno(errno_after_write);
            return Err(());
        }
    }
    Ok(())
}

fn check(result: libc::c_long, step: Step) -> Result<(), Step> {
    if result < 0 { Err(step) } else { Ok(()) }
}

fn errno() -> c_int {
    // SAFETY: the calling thread's errno (the suspended parent's, shared by the child, as in
    // glibc's posix_spawn).
    unsafe { *libc::__errno_location() }
}

fn set_errno(value: c_int) {
    // SAFETY: as in `errno`.
    unsafe { *libc::__errno_location() = value };
}

/// Runs `action` with every signal blocked in the calling thread, then restores its mask.
fn with_signals_blocked<T>(action: impl FnOnce() -> T) -> T {
    // SAFETY: sigset_t values on the stack, filled by sigfillset; pthread_sigmask changes only
    // this thread's mask, restored below.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut previous);
        let result = action();
        libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
        result
    }
}

/// `fd` itself if it is above 2, else a duplicate that is (close-on-exec like every fd here).
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC on an fd we own returns a new fd or -1.
    let duplicate = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if duplicate < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(duplicate) })
}

fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings.iter().map(|value| value.as_ptr()).chain([std::ptr::null()]).collect()
}

/// A failed step in words, for diagnostics.
fn describe(step: Step, spec: &ProcessSpec) -> String {
    let program = spec.program.to_string_lossy();
    match step {
        Step::ProcessGroup => "cannot start a process group".to_owned(),
        Step::JoinCgroup(index) => format!(
            "cannot join cgroup {}",
            spec.join_cgroups
                .get(index)
                .map_or_else(String::new, |path| path.to_string_lossy().into_owned())
        ),
        Step::Groups | Step::Gid | Step::Uid => {
            let (uid, gid) = spec.identity.as_ref().map_or((0, 0), |identity| (identity.uid, identity.gid));
            let what = match step {
                Step::Groups => "supplementary groups",
                Step::Gid => "gid",
                _ => "uid",
            };
            format!("cannot become uid {uid} gid {gid} ({what})")
        }
        Step::Chdir => format!("cannot enter {}", spec.cwd.to_string_lossy()),
        Step::Stdio => "cannot set up stdin, stdout and stderr".to_owned(),
        Step::Exec | Step::Start => format!("cannot start `{program}`"),
    }
}

#[cfg(test)]
mod tests;
