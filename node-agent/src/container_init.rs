//! The first process of a container when the agent recovers containers across its restarts:
//! `/bin/sh -c INIT_SCRIPT spindle-init EXIT_FILE PROGRAM ARGS…` (YARN's container launch
//! script writes an exit-code file for the same reason).
//!
//! An agent learns how a child ended by waiting for it, but a restarted agent is no parent of
//! the containers it adopts. So the container's leader is a shell: it runs the program as its
//! child, waits, writes how it ended to `EXIT_FILE` (`exit N`, or `signal N` for a program a
//! fatal signal ended, `$?` being 128 + N), and ends the same way (re-raising the signal). It
//! survives the SIGTERM the agent sends to the process group (its trap does nothing and is
//! reset for the program, which decides when to end) and is SIGKILLed with it. It runs in the
//! container's cgroups and as the container's account, so the file lands in the container's
//! own directory; a program that forges it can only misreport its own exit to its own
//! application. A shell, not a `spindle` subcommand: starting the `spindle` binary costs ~1.2
//! ms more per container (its size and dynamic relocations), `dash` ~0.1 ms.
//!
//! As with any shell, a program that exits with code 128 + N by itself (e.g. 130) is recorded
//! as ended by signal N.

use std::path::Path;

use crate::exit::ProcessExit;

/// The shell that runs `INIT_SCRIPT`.
pub(crate) const SHELL: &str = "/bin/sh";
/// `$0` of the script, as `ps` shows it.
pub(crate) const NAME: &str = "spindle-init";

/// `$1`: the exit file; the rest: the program and its arguments. Only the fatal signals are
/// re-raised (never one that would stop or be ignored).
pub(crate) const INIT_SCRIPT: &str = r#"f=$1; shift
trap : TERM INT HUP QUIT
"$@"
c=$?
s=$((c - 128))
case $s in 1|2|3|4|6|7|8|9|11|13|14|15) echo "signal $s" > "$f"; trap - TERM INT HUP QUIT; kill -$s $$ ;; esac
echo "exit $c" > "$f"
exit $c
"#;

/// The name of the file in a container's directory that says how its program ended.
pub(crate) const EXIT_FILE: &str = ".spindle-exit";

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
        for (line, exit) in [
            ("exit 0\n", ProcessExit::Code(0)),
            ("exit 3\n", ProcessExit::Code(3)),
            ("signal 9\n", ProcessExit::Signal(libc::SIGKILL)),
        ] {
            std::fs::write(dir.path().join(EXIT_FILE), line).unwrap();
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

    /// The script, run by the real shell: codes, signals (the shell ends by the same one) and
    /// a program that does not exist (127, as before it).
    #[test]
    fn the_init_script_records_and_passes_on_how_the_program_ended() {
        use std::os::unix::process::ExitStatusExt;
        let dir = tempfile::tempdir().unwrap();
        let run = |program: &[&str]| {
            let status = std::process::Command::new(SHELL)
                .args(["-c", INIT_SCRIPT, NAME])
                .arg(dir.path().join(EXIT_FILE))
                .args(program)
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap();
            (status.code(), status.signal(), read_exit(dir.path()))
        };
        assert_eq!(run(&["sh", "-c", "exit 3"]), (Some(3), None, Some(ProcessExit::Code(3))));
        assert_eq!(run(&["true"]), (Some(0), None, Some(ProcessExit::Code(0))));
        assert_eq!(
            run(&["sh", "-c", "kill -9 $$"]),
            (None, Some(libc::SIGKILL), Some(ProcessExit::Signal(libc::SIGKILL)))
        );
        assert_eq!(run(&["/nonexistent/program"]), (Some(127), None, Some(ProcessExit::Code(127))));
    }
}
