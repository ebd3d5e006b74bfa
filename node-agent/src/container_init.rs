//! `spindle container-init EXIT_FILE PROGRAM ARGV0 ARGS…`: the first process of a container
//! when the agent recovers containers across its restarts (YARN's container launch script
//! writes an exit-code file for the same reason).
//!
//! An agent learns how a child ended by waiting for it, but a restarted agent is no parent of
//! the containers it adopts. So the container's leader is this small process: it runs the
//! program as its child, waits, writes how it ended to `EXIT_FILE` (`exit N` or `signal N`,
//! written whole by a rename), and ends the same way. It survives the SIGTERM the agent sends
//! to the process group (its handler does nothing: the program decides when to end) and is
//! SIGKILLed with it. It runs in the container's cgroups and as the container's account, so
//! the file lands in the container's own directory; a program that forges it can only
//! misreport its own exit to its own application.

use std::ffi::{CString, OsString};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::exit::ProcessExit;

/// The subcommand that runs `run`; `main` dispatches on it before anything else starts.
pub const SUBCOMMAND: &str = "container-init";

/// Exit code when the program could not be started, as shells report (127: not found).
const NOT_FOUND: i32 = 127;
const NOT_RUNNABLE: i32 = 126;

/// The name of the file in a container's directory that says how its program ended.
pub(crate) const EXIT_FILE: &str = ".spindle-exit";

/// Runs the container's program and returns the exit code this process must end with (after
/// re-raising the program's fatal signal, if it died of one).
pub fn run(args: &[OsString]) -> i32 {
    let [exit_file, program, argv @ ..] = args else {
        eprintln!("usage: spindle {SUBCOMMAND} EXIT_FILE PROGRAM ARGV0 [ARGS…] (started by the node agent)");
        return 2;
    };
    let to_c = |text: &OsString| CString::new(text.as_bytes()).ok();
    let (Some(program), Some(argv)) = (to_c(program), argv.iter().map(to_c).collect::<Option<Vec<_>>>()) else {
        eprintln!("spindle: an argument holds a NUL byte");
        return NOT_RUNNABLE;
    };
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|arg| arg.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    // Handlers, not SIG_IGN: an exec resets handled signals to their default, so the program
    // gets SIGTERM as usual, while this process outlives it to record its end.
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT] {
        // SAFETY: installing a handler that does nothing (async-signal-safe).
        unsafe { libc::signal(signal, ignore_signal as *const () as libc::sighandler_t) };
    }
    // SAFETY: fork in a single-threaded process (nothing has started threads yet); the child
    // only calls execv and _exit.
    let child = unsafe { libc::fork() };
    if child == 0 {
        // SAFETY: arguments are valid NUL-terminated strings and a NULL-terminated array.
        unsafe { libc::execv(program.as_ptr(), argv_ptrs.as_ptr()) };
        let err = std::io::Error::last_os_error();
        let _ = writeln!(std::io::stderr(), "spindle: cannot start `{}`: {err}", program.to_string_lossy());
        let code = if err.kind() == std::io::ErrorKind::NotFound {
            NOT_FOUND
        } else {
            NOT_RUNNABLE
        };
        // SAFETY: ending the forked child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    if child < 0 {
        eprintln!("spindle: cannot start the container: fork: {}", std::io::Error::last_os_error());
        return NOT_RUNNABLE;
    }
    let exit = wait_for(child);
    if let Err(err) = write_exit(Path::new(exit_file), exit) {
        eprintln!("spindle: cannot record the exit status: {err}");
    }
    match exit {
        ProcessExit::Code(code) => code,
        ProcessExit::Signal(signal) => {
            // End as the program did, so a waiting agent sees the same signal.
            // SAFETY: restoring the default action and raising a signal at ourselves.
            unsafe {
                libc::signal(signal, libc::SIG_DFL);
                libc::raise(signal);
            }
            128 + signal
        }
    }
}

extern "C" fn ignore_signal(_: libc::c_int) {}

fn wait_for(child: libc::pid_t) -> ProcessExit {
    loop {
        let mut status = 0;
        // SAFETY: waiting for our own child.
        let waited = unsafe { libc::waitpid(child, &mut status, 0) };
        if waited == child {
            if libc::WIFSIGNALED(status) {
                return ProcessExit::Signal(libc::WTERMSIG(status));
            }
            return ProcessExit::Code(libc::WEXITSTATUS(status));
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return ProcessExit::Code(NOT_RUNNABLE);
        }
    }
}

fn write_exit(path: &Path, exit: ProcessExit) -> std::io::Result<()> {
    let line = match exit {
        ProcessExit::Code(code) => format!("exit {code}\n"),
        ProcessExit::Signal(signal) => format!("signal {signal}\n"),
    };
    let mut temporary = PathBuf::from(path);
    temporary.set_extension("tmp");
    std::fs::write(&temporary, line)?;
    std::fs::rename(&temporary, path)
}

/// How a container's program ended, from its exit file in `container_dir`, if it has ended
/// and the file is sound. The file is the container's: opened without following a link,
/// read to a small bound, and only a well-formed line is believed.
pub(crate) fn read_exit(container_dir: &Path) -> Option<ProcessExit> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(container_dir.join(EXIT_FILE))
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    file.take(64).read_to_string(&mut text).ok()?;
    let (kind, number) = text.trim().split_once(' ')?;
    let number: i32 = number.parse().ok()?;
    match kind {
        "exit" if (0..=255).contains(&number) => Some(ProcessExit::Code(number)),
        "signal" if (1..=64).contains(&number) => Some(ProcessExit::Signal(number)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_files_round_trip_and_bad_ones_are_not_believed() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_exit(dir.path()), None, "no file: still running, or gone without one");
        for exit in [ProcessExit::Code(0), ProcessExit::Code(3), ProcessExit::Signal(libc::SIGKILL)] {
            write_exit(&dir.path().join(EXIT_FILE), exit).unwrap();
            assert_eq!(read_exit(dir.path()), Some(exit));
        }
        for forged in ["exit 999", "signal 0", "garbage", "exit -1", ""] {
            std::fs::write(dir.path().join(EXIT_FILE), forged).unwrap();
            assert_eq!(read_exit(dir.path()), None, "{forged:?}");
        }
        std::fs::remove_file(dir.path().join(EXIT_FILE)).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join(EXIT_FILE)).unwrap();
        assert_eq!(read_exit(dir.path()), None, "a link is not followed");
    }
}
