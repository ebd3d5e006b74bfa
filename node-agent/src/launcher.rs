//! Starting a container's process and reading how it ended: the command line, environment,
//! working dir and log files, the process group, the cgroup, signals, and turning an exit into
//! an exit code, a reason and diagnostics.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use spindle_protocol::{ContainerId, LaunchSpec, NodeId, Resources, env};

use crate::account::{Account, RunMode};
use crate::cgroup::{CgroupRoot, ContainerCgroup, CpuRoot, JoinMethod};
pub(crate) use crate::exit::{KillRequest, ProcessExit, classify_exit, read_tail};
use crate::spawn::{self, ContainerProcess, Identity, ProcessSpec, Step};

/// How long a container may take to exit after SIGTERM before its process group gets SIGKILL.
pub const CONTAINER_KILL_GRACE: Duration = Duration::from_secs(2);

/// How long a container runs before it is moved into a cgroup v1 `cpu` cgroup weighted by its
/// vcores. Joining a `cpu` cgroup at start made every launch ~1.1 ms of CPU dearer (run-as-user
/// 0.59× single-user in `bench/cluster_bench.py`; 0.86× without it), which short containers
/// never earn back; CPU weights matter for containers that stay busy, and from their second on
/// they have them. Memory limits apply from the first instruction, as before.
pub(crate) const CPU_WEIGHT_DELAY: Duration = Duration::from_secs(1);

/// The only variables of the agent's own environment a container inherits: everything else
/// (the cluster secret, tokens, whatever the operator's shell had) stays with the agent.
const INHERITED_ENV: [&str; 4] = ["PATH", "LANG", "LC_ALL", "TZ"];

/// PATH for containers when the agent has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The allowlisted part of the agent's environment (`INHERITED_ENV`), read once at start. For
/// containers of other accounts (`per_user`), PATH keeps only the dirs every account can
/// reach: root's own (`/root/.cargo/bin`, …) would find programs a container cannot run.
pub(crate) fn inherited_env(per_user: bool) -> Vec<(String, String)> {
    let mut inherited: Vec<(String, String)> = INHERITED_ENV
        .iter()
        .filter_map(|name| std::env::var(name).ok().map(|value| ((*name).to_owned(), value)))
        .map(|(name, value)| match (name.as_str(), per_user) {
            ("PATH", true) => {
                let open = std::env::split_paths(&value).filter(|dir| crate::access::open_to_others(dir));
                let joined = std::env::join_paths(open).map(|path| path.to_string_lossy().into_owned());
                (name, joined.unwrap_or_default())
            }
            _ => (name, value),
        })
        .filter(|(_, value)| !value.is_empty())
        .collect();
    if !inherited.iter().any(|(name, _)| name == "PATH") {
        inherited.push(("PATH".to_owned(), DEFAULT_PATH.to_owned()));
    }
    inherited
}

/// Node-wide facts every launch needs.
#[derive(Debug, Clone)]
pub(crate) struct LaunchContext {
    pub node_id: NodeId,
    /// `SPINDLE_RM` for containers: the RM URLs, comma-joined.
    pub rm_urls: String,
    pub work_dir: PathBuf,
    pub spindle_bin: PathBuf,
    /// Containers outlive the agent and are adopted by its next start: each runs under
    /// a `/bin/sh` script that records how it ended (`crate::container_init`).
    pub recover: bool,
    /// Part of cgroup names, so several agents on one host never collide.
    pub node_port: u16,
    /// `None`: no cgroup hierarchy in use, memory is sampled.
    pub cgroups: Option<CgroupRoot>,
    /// cgroup v1's CPU hierarchy, where containers get a weight by vcores; `None` with v2
    /// (the weight goes into the memory cgroup) or without a writable hierarchy.
    pub cpu: Option<CpuRoot>,
    /// Cap each container's CPU time at its vcores, not only weigh it.
    pub cpu_hard_cap: bool,
    /// Whose account containers run as.
    pub run_mode: Arc<RunMode>,
    /// The allowlisted variables of the agent's environment (`inherited_env`).
    pub inherited_env: Vec<(String, String)>,
    /// On a TLS cluster, `SPINDLE_CA_FILE` for containers: the agent's world-readable copy of
    /// the cluster's CA certificate.
    pub ca_file: Option<String>,
}

impl LaunchContext {
    /// The PATH containers inherit (possibly filtered, see `inherited_env`).
    fn inherited_path(&self) -> &str {
        self.inherited_env
            .iter()
            .find(|(name, _)| name == "PATH")
            .map_or(DEFAULT_PATH, |(_, value)| value.as_str())
    }
}

/// One container to start: what its token grants and what its AM asked to run.
pub(crate) struct Launch<'a> {
    pub container_id: &'a ContainerId,
    pub resources: &'a Resources,
    /// The account it runs as; `None` runs it as the agent's own (single-tenant agents).
    pub account: Option<&'a Account>,
    pub spec: &'a LaunchSpec,
    /// The app's `ClusterSecret::shuffle_token`.
    pub shuffle_token: &'a str,
}

/// A started container process.
#[derive(Debug)]
pub(crate) struct SpawnedContainer {
    /// Its pid is also the id of the container's process group.
    pub process: ContainerProcess,
    pub cgroup: Option<ContainerCgroup>,
    /// Why a cgroup could not be set up, when one should have been (memory is sampled instead).
    pub cgroup_error: Option<String>,
}

/// A container that could not be started; it completes FAILED at once.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SpawnFailure {
    /// 127 when the program does not exist, 126 when it cannot be run (as shells report);
    /// `None` when the agent failed before trying the program.
    pub exit_code: Option<i32>,
    pub diagnostics: String,
}

/// Refuses a launch spec the OS could not run as given, naming the bad part.
pub(crate) fn check_spec(spec: &LaunchSpec) -> Result<(), String> {
    if spec.command.is_empty() || spec.command[0].is_empty() {
        return Err("launch.command is empty: give at least the program to run".to_owned());
    }
    if let Some(index) = spec.command.iter().position(|arg| arg.contains('\0')) {
        return Err(format!("launch.command[{index}] contains a NUL byte"));
    }
    for (name, value) in &spec.env {
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(format!(
                "launch.env has an invalid variable name `{name}`: names are non-empty, without `=` or NUL"
            ));
        }
        if value.contains('\0') {
            return Err(format!("launch.env.{name} contains a NUL byte"));
        }
    }
    for name in spec.files.keys() {
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) || RESERVED_FILES.contains(&name.as_str()) {
            return Err(format!(
                "launch.files has an invalid file name `{name}`: plain names only, not stdout, stderr or tmp"
            ));
        }
    }
    Ok(())
}

/// Names in a container's dir the agent itself creates.
const RESERVED_FILES: [&str; 3] = ["stdout", "stderr", "tmp"];

/// `<work_dir>/apps/<app_id>/<container_id>`: the container's working dir and log dir.
pub(crate) fn container_dir(work_dir: &Path, container_id: &ContainerId) -> PathBuf {
    work_dir
        .join("apps")
        .join(container_id.app.to_string())
        .join(container_id.to_string())
}

/// Prepares the container's directory, the app's shuffle directory, log files and cgroup and
/// starts its command in a new process group, as its account. Blocking (file system, spawn):
/// call on the blocking pool, inside the runtime.
pub(crate) fn spawn_container(context: &LaunchContext, launch: &Launch<'_>) -> Result<SpawnedContainer, SpawnFailure> {
    let Launch {
        container_id,
        resources,
        account,
        spec,
        shuffle_token: _,
    } = *launch;
    let dir = container_dir(&context.work_dir, container_id);
    let agent_failure = |what: &str, err: std::io::Error| SpawnFailure {
        exit_code: None,
        diagnostics: format!("the agent could not {what}: {err}"),
    };
    let dir_parent = dir.parent().expect("a container dir has its app's dir as parent");
    make_dir(dir_parent, PASSAGE_MODE, None).map_err(|err| agent_failure(&format!("create {}", dir_parent.display()), err))?;
    make_dir(&dir, PRIVATE_DIR_MODE, account).map_err(|err| agent_failure(&format!("create {}", dir.display()), err))?;
    let tmp_dir = dir.join("tmp");
    make_dir(&tmp_dir, PRIVATE_DIR_MODE, account).map_err(|err| agent_failure(&format!("create {}", tmp_dir.display()), err))?;
    let shuffle_dir = crate::shuffle::app_shuffle_dir(&context.work_dir, container_id.app);
    make_dir(&shuffle_dir, PRIVATE_DIR_MODE, account).map_err(|err| agent_failure(&format!("create {}", shuffle_dir.display()), err))?;
    let stdout = create_private_file(&dir.join("stdout"), account).map_err(|err| agent_failure("create the stdout file", err))?;
    let mut stderr = create_private_file(&dir.join("stderr"), account).map_err(|err| agent_failure("create the stderr file", err))?;
    let stderr_for_child = stderr.try_clone().map_err(|err| agent_failure("open the stderr file", err))?;
    for (name, content) in &spec.files {
        let mut file = create_private_file(&dir.join(name), account).map_err(|err| agent_failure(&format!("create {name}"), err))?;
        file.write_all(content.as_bytes())
            .map_err(|err| agent_failure(&format!("write {name}"), err))?;
    }

    let (mut cgroup, mut cgroup_error) = match &context.cgroups {
        Some(root) => {
            let name = cgroup_name(context, container_id);
            match root.create(&name, resources.memory_mb.saturating_mul(1024 * 1024)) {
                Ok(cgroup) => (Some(cgroup), None),
                Err(err) => (None, Some(format!("cannot create cgroup {name}: {err}"))),
            }
        }
        None => (None, None),
    };

    // v2: the weight goes into the container's one cgroup, which costs nothing more. v1: the
    // supervisor weighs the container later (`CPU_WEIGHT_DELAY`).
    if let (None, Some(cgroup)) = (&context.cpu, &cgroup)
        && let Err(err) = cgroup.set_cpu(resources.vcores, context.cpu_hard_cap)
    {
        cgroup_error.get_or_insert(format!(
            "cannot set the cpu weight of cgroup {}: {err}",
            cgroup_name(context, container_id)
        ));
    }

    let program = program_path(&spec.command[0], &context.spindle_bin, &spec.env, context.inherited_path());
    let mut join_cgroups = Vec::new();
    // The child joins its cgroups itself before its program runs, or what the program
    // allocates first escapes the limit; except with v1's spawning-thread method, where it is
    // born in its memory cgroup.
    let joins_from_inside = cgroup
        .as_ref()
        .is_some_and(|cgroup| cgroup.join_method() == JoinMethod::SpawningThread);
    if let Some(cgroup) = cgroup.as_ref().filter(|_| !joins_from_inside) {
        join_cgroups.push(cgroup.procs_path().to_owned());
    }
    let mut args: Vec<CString> = spec.command.iter().map(|arg| c_string(arg.as_bytes())).collect();
    let mut program = c_string(program.as_os_str().as_bytes());
    if context.recover {
        // `sh -c SCRIPT spindle-init EXIT_FILE PROGRAM ARGS…`: the program's argv[0] becomes
        // its path (a shell's "$@" cannot set it).
        let exit_file = dir.join(crate::container_init::EXIT_FILE);
        args[0] = program;
        let init = [
            c_string(b"sh"),
            c_string(b"-c"),
            c_string(crate::container_init::INIT_SCRIPT.as_bytes()),
            c_string(crate::container_init::NAME.as_bytes()),
            c_string(exit_file.as_os_str().as_bytes()),
        ];
        args.splice(0..0, init);
        program = c_string(crate::container_init::SHELL.as_bytes());
    }
    let process = ProcessSpec {
        program,
        args,
        env: container_env(context, launch, &dir, &tmp_dir, &shuffle_dir),
        cwd: c_string(dir.as_os_str().as_bytes()),
        stdout: stdout.into(),
        stderr: stderr_for_child.into(),
        join_cgroups,
        identity: account.map(|account| Identity {
            uid: account.uid,
            gid: account.gid,
            groups: account.groups.clone(),
        }),
    };
    let spawned_inside = match &cgroup {
        Some(cgroup) if joins_from_inside => Some(cgroup.spawn_from_inside(|| spawn::spawn(&process))),
        _ => None,
    };
    let started = match spawned_inside {
        Some(Ok(started)) => started,
        // The thread could not enter: run the container without a cgroup (sampled).
        Some(Err(err)) => {
            cgroup_error = Some(format!("cannot enter cgroup: {err}"));
            if let Some(unused) = cgroup.take() {
                unused.remove();
            }
            spawn::spawn(&process)
        }
        None => spawn::spawn(&process),
    };

    match started {
        Ok(process) => Ok(SpawnedContainer {
            process,
            cgroup,
            cgroup_error,
        }),
        Err(err) => {
            // 127 / 126 as shells report a program they cannot find / run; a step before exec
            // is the agent's failure, counted as 126 too (the program was never tried).
            let exit_code = if err.step == Step::Exec && err.source.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            let diagnostics = err.to_string();
            // The AM's user reads logs first: say it there too.
            let _ = writeln!(stderr, "spindle: {diagnostics}");
            if let Some(cgroup) = cgroup {
                cgroup.remove();
            }
            Err(SpawnFailure {
                exit_code: Some(exit_code),
                diagnostics,
            })
        }
    }
}

/// The container's whole environment, later entries winning: the agent's allowlist, HOME,
/// TMPDIR and the account's names, the job's own env, then what Spindle sets.
fn container_env(context: &LaunchContext, launch: &Launch<'_>, dir: &Path, tmp_dir: &Path, shuffle_dir: &Path) -> Vec<CString> {
    let Launch {
        container_id,
        resources,
        account,
        spec,
        shuffle_token,
    } = *launch;
    let mut vars: BTreeMap<&str, Cow<'_, str>> = BTreeMap::new();
    for (name, value) in &context.inherited_env {
        vars.insert(name, Cow::Borrowed(value));
    }
    vars.insert("HOME", dir.to_string_lossy());
    vars.insert("TMPDIR", tmp_dir.to_string_lossy());
    if let Some(account) = account {
        vars.insert("USER", Cow::Borrowed(&account.name));
        vars.insert("LOGNAME", Cow::Borrowed(&account.name));
    }
    for (name, value) in &spec.env {
        vars.insert(name, Cow::Borrowed(value));
    }
    let spindle_vars = [
        (env::APP_ID, container_id.app.to_string()),
        (env::CONTAINER_ID, container_id.to_string()),
        (env::ATTEMPT, container_id.attempt.to_string()),
        (env::RM, context.rm_urls.clone()),
        (env::NODE_ID, context.node_id.as_str().to_owned()),
        (env::MEMORY_MB, resources.memory_mb.to_string()),
        (env::VCORES, resources.vcores.to_string()),
        (env::SHUFFLE_DIR, shuffle_dir.to_string_lossy().into_owned()),
        (env::SHUFFLE_TOKEN, shuffle_token.to_owned()),
    ];
    for (name, value) in spindle_vars {
        vars.insert(name, Cow::Owned(value));
    }
    if let Some(ca_file) = &context.ca_file {
        vars.insert(env::CA_FILE, Cow::Borrowed(ca_file));
    }
    vars.into_iter()
        .map(|(name, value)| c_string(format!("{name}={value}").as_bytes()))
        .collect()
}

/// A container's cgroup name in every hierarchy: the agent's port keeps several agents on one
/// host apart.
pub(crate) fn cgroup_name(context: &LaunchContext, container_id: &ContainerId) -> String {
    format!("{}-{container_id}", context.node_port)
}

/// `check_spec` refused NULs in commands and env, and paths come from the agent's config.
fn c_string(bytes: &[u8]) -> CString {
    CString::new(bytes)
        .unwrap_or_else(|_| CString::new(bytes.iter().copied().filter(|byte| *byte != 0).collect::<Vec<u8>>()).expect("NULs removed"))
}

/// Directories others may pass through but not list (`apps/<app>`, the work dir): a
/// container reaches its own dir below without learning the names of others'.
pub(crate) const PASSAGE_MODE: u32 = 0o711;
/// A container's own dirs: only its account.
const PRIVATE_DIR_MODE: u32 = 0o700;

/// Creates `path` with `mode`, owned by `account` when given; missing parents get
/// `PASSAGE_MODE`. An existing dir gets the mode and owner too (a leftover of an earlier agent
/// process). It must not be a symlink: the agent never follows one a container planted.
fn make_dir(path: &Path, mode: u32, account: Option<&Account>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::DirBuilder::new().recursive(true).mode(PASSAGE_MODE).create(path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(err),
    }
    let metadata = std::fs::symlink_metadata(path)?;
    if !metadata.is_dir() {
        return Err(std::io::Error::other(format!("{} is not a directory", path.display())));
    }
    if let Some(account) = account {
        std::os::unix::fs::lchown(path, Some(account.uid), Some(account.gid))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Creates (or truncates) a file only the container's account may read: 0600, its owner,
/// never through a symlink.
fn create_private_file(path: &Path, account: Option<&Account>) -> std::io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    if let Some(account) = account {
        std::os::unix::fs::fchown(&file, Some(account.uid), Some(account.gid))?;
    }
    Ok(file)
}

/// The program to run: argv[0] `spindle` means this agent's own binary; a bare name is looked
/// up on PATH here, once, in the agent, rather than by the child trying one `execve` per PATH
/// entry. The container's PATH (from its launch env) wins over the agent's.
fn program_path(argv0: &str, spindle_bin: &Path, launch_env: &std::collections::BTreeMap<String, String>, inherited_path: &str) -> PathBuf {
    if argv0 == "spindle" {
        return spindle_bin.to_path_buf();
    }
    if argv0.contains('/') {
        return PathBuf::from(argv0);
    }
    let search_path = launch_env.get("PATH").map_or(inherited_path, String::as_str);
    std::env::split_paths(&search_path)
        .map(|dir| dir.join(argv0))
        .find(|candidate| is_executable_file(candidate))
        // Not found: spawning the bare name fails with ENOENT, reported as exit code 127.
        .unwrap_or_else(|| PathBuf::from(argv0))
}

fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Sends `signal` to every process of a container's process group; a group that is already
/// gone is not an error.
pub(crate) fn signal_process_group(process_group: i32, signal: i32) {
    // killpg(0) or killpg(1) would hit the agent's own group or every process we may signal.
    if process_group <= 1 {
        debug_assert!(false, "refusing to signal process group {process_group}");
        return;
    }
    // SAFETY: plain syscall on a group id we created.
    unsafe { libc::killpg(process_group, signal) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_the_os_cannot_run_are_refused() {
        let spec = |command: &[&str], env: &[(&str, &str)]| LaunchSpec {
            command: command.iter().map(|arg| arg.to_string()).collect(),
            env: env.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect(),
            files: Default::default(),
        };
        assert!(check_spec(&spec(&["true"], &[("A", "b")])).is_ok());
        assert!(check_spec(&spec(&[], &[])).unwrap_err().contains("launch.command"));
        assert!(check_spec(&spec(&[""], &[])).is_err());
        assert!(check_spec(&spec(&["echo", "a\0b"], &[])).unwrap_err().contains("command[1]"));
        assert!(check_spec(&spec(&["true"], &[("A=B", "c")])).unwrap_err().contains("`A=B`"));
        assert!(check_spec(&spec(&["true"], &[("", "c")])).is_err());
        assert!(check_spec(&spec(&["true"], &[("A", "\0")])).unwrap_err().contains("launch.env.A"));
    }

    #[test]
    fn argv0_spindle_is_the_agents_binary() {
        let bin = Path::new("/opt/spindle/bin/spindle");
        let no_env = std::collections::BTreeMap::new();
        assert_eq!(program_path("spindle", bin, &no_env, DEFAULT_PATH), bin);
        assert_eq!(program_path("./spindle", bin, &no_env, DEFAULT_PATH), PathBuf::from("./spindle"));
    }

    #[test]
    fn bare_names_are_found_on_the_containers_path_first() {
        let bin = Path::new("/opt/spindle/bin/spindle");
        let dir = tempfile::tempdir().unwrap();
        let own_sh = dir.path().join("sh");
        std::fs::write(&own_sh, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&own_sh, std::fs::Permissions::from_mode(0o755)).unwrap();
        let env = std::collections::BTreeMap::from([("PATH".to_owned(), format!("{}:/bin:/usr/bin", dir.path().display()))]);
        assert_eq!(program_path("sh", bin, &env, DEFAULT_PATH), own_sh);
        let found = program_path("sh", bin, &std::collections::BTreeMap::new(), DEFAULT_PATH);
        assert!(found.is_absolute() && found.ends_with("sh"), "{}", found.display());
        assert_eq!(
            program_path("no-such-program-here", bin, &env, DEFAULT_PATH),
            PathBuf::from("no-such-program-here")
        );
    }
}
