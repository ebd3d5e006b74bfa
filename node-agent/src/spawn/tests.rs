use std::os::fd::OwnedFd;
use std::path::Path;

use super::*;

fn cstring(value: &str) -> CString {
    CString::new(value).unwrap()
}

/// A spec running `sh -c script` in `dir`, output into `dir/out` and `dir/err`.
fn shell(dir: &Path, script: &str, env: &[&str]) -> ProcessSpec {
    let file = |name: &str| -> OwnedFd { std::fs::File::create(dir.join(name)).unwrap().into() };
    ProcessSpec {
        program: cstring("/bin/sh"),
        args: vec![cstring("sh"), cstring("-c"), cstring(script)],
        env: env.iter().map(|entry| cstring(entry)).collect(),
        cwd: cstring(dir.to_str().unwrap()),
        stdout: file("out"),
        stderr: file("err"),
        join_cgroups: Vec::new(),
        identity: None,
    }
}

fn run(spec: &ProcessSpec) -> ExitStatus {
    let process = spawn(spec).unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap()
        .block_on(process.wait())
        .unwrap()
}

fn output(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("out")).unwrap()
}

#[test]
fn runs_the_program_with_exactly_its_env_dir_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let spec = shell(
        dir.path(),
        "echo \"$GREETING\"; pwd; env | wc -l; echo oops >&2; exit 3",
        &["GREETING=hello world"],
    );
    let status = run(&spec);
    assert_eq!(status.code(), Some(3));
    let canonical = dir.path().canonicalize().unwrap();
    // sh itself adds PWD (and may add SHLVL, _) to what it was given.
    let lines: Vec<String> = output(dir.path()).lines().map(str::to_owned).collect();
    assert_eq!(lines[0], "hello world");
    assert_eq!(Path::new(&lines[1]), canonical);
    assert!(lines[2].trim().parse::<u32>().unwrap() <= 4, "{lines:?}");
    assert_eq!(std::fs::read_to_string(dir.path().join("err")).unwrap(), "oops\n");
}

#[test]
fn the_process_leads_its_own_group_with_default_signals_and_no_inherited_fds() {
    let dir = tempfile::tempdir().unwrap();
    // An fd the agent opened without O_CLOEXEC must not reach the program.
    let leaky = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) };
    assert!(leaky > 2);
    let spec = shell(
        dir.path(),
        "cut -d' ' -f5 /proc/$$/stat; echo $$; grep -E '^Sig(Ign|Blk)' /proc/self/status; ls /proc/self/fd | wc -l",
        &["PATH=/usr/bin:/bin"],
    );
    let process = spawn(&spec).unwrap();
    let pid = process.pid();
    let status = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap()
        .block_on(process.wait())
        .unwrap();
    unsafe { libc::close(leaky) };
    assert!(status.success(), "{}", std::fs::read_to_string(dir.path().join("err")).unwrap());
    let text = output(dir.path());
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], pid.to_string(), "its pid is its process group: {text}");
    assert_eq!(lines[1], pid.to_string());
    assert!(
        lines.contains(&"SigIgn:\t0000000000000000"),
        "SIGPIPE and the rest back to default: {text}"
    );
    assert!(lines.contains(&"SigBlk:\t0000000000000000"), "nothing blocked: {text}");
    // 0, 1, 2 and the one ls opens for /proc/self/fd.
    assert_eq!(lines.last().unwrap().trim(), "4", "{text}");
}

#[test]
fn a_missing_program_fails_at_exec_with_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = shell(dir.path(), "", &[]);
    spec.program = cstring("/no/such/program");
    let err = spawn(&spec).unwrap_err();
    assert_eq!(err.step, Step::Exec);
    assert_eq!(err.source.kind(), io::ErrorKind::NotFound);
    assert!(err.to_string().contains("/no/such/program"), "{err}");
}

#[test]
fn a_bare_program_name_is_not_looked_up_in_the_work_dir() {
    let dir = tempfile::tempdir().unwrap();
    let planted = dir.path().join("planted");
    std::fs::write(&planted, "#!/bin/sh\necho ran\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut spec = shell(dir.path(), "", &[]);
    spec.program = cstring("planted");
    let err = spawn(&spec).unwrap_err();
    assert_eq!((err.step, err.source.kind()), (Step::Exec, io::ErrorKind::NotFound));
    assert_eq!(output(dir.path()), "");
}

#[test]
fn a_missing_work_dir_fails_before_exec() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = shell(dir.path(), "true", &[]);
    spec.cwd = cstring("/no/such/dir");
    let err = spawn(&spec).unwrap_err();
    assert_eq!(err.step, Step::Chdir);
    assert!(err.to_string().contains("/no/such/dir"), "{err}");
}

#[test]
fn an_unwritable_cgroup_fails_before_exec() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = shell(dir.path(), "true", &[]);
    spec.join_cgroups = vec![cstring("/no/such/cgroup/cgroup.procs")];
    let err = spawn(&spec).unwrap_err();
    assert_eq!(err.step, Step::JoinCgroup(0));
    assert!(err.to_string().contains("/no/such/cgroup"), "{err}");
}

#[test]
fn as_root_the_process_becomes_the_given_account_for_good() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The account must reach its work dir.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut spec = shell(
        dir.path(),
        "id -u; id -g; id -G; grep -E '^(Uid|Gid)' /proc/self/status",
        &["PATH=/usr/bin:/bin"],
    );
    spec.identity = Some(Identity {
        uid: 65534,
        gid: 65534,
        groups: vec![65534, 4242],
    });
    let status = run(&spec);
    assert!(status.success(), "{}", std::fs::read_to_string(dir.path().join("err")).unwrap());
    let text = output(dir.path());
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(&lines[..3], ["65534", "65534", "65534 4242"], "{text}");
    // Real, effective, saved and file-system ids alike: no way back to root.
    assert!(lines.contains(&"Uid:\t65534\t65534\t65534\t65534"), "{text}");
    assert!(lines.contains(&"Gid:\t65534\t65534\t65534\t65534"), "{text}");
}

#[test]
fn many_concurrent_spawns_from_several_threads_all_run() {
    let dir = tempfile::tempdir().unwrap();
    let threads: Vec<_> = (0..4)
        .map(|thread| {
            let dir = dir.path().join(thread.to_string());
            std::fs::create_dir(&dir).unwrap();
            std::thread::spawn(move || {
                for round in 0..25 {
                    let spec = shell(&dir, &format!("exit {}", round % 7), &[]);
                    assert_eq!(run(&spec).code(), Some(round % 7));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}
