//! The agent's work dir at start: created, made passable (not listable) for container
//! accounts, and checked that those accounts can reach it and run the `spindle` binary, so a
//! wrong path fails the agent's start with a clear message instead of every container.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::AgentError;
use crate::launcher::PASSAGE_MODE;

/// Search permission for "others" on a directory; execute permission on a file.
const OTHERS_EXECUTE: u32 = 0o001;

/// Creates `<work_dir>/apps` and `<work_dir>/shuffle` and returns the work dir's canonical
/// path. For an agent that runs containers as other accounts (`per_user`), the work dir and
/// those two become 0711 — containers pass through to their own 0700 dirs but cannot list
/// anyone else's — and every ancestor of the work dir and of `spindle_bin` must let others
/// pass. Blocking.
pub(crate) fn prepare_work_dir(work_dir: &Path, spindle_bin: &Path, per_user: bool) -> Result<PathBuf, AgentError> {
    for sub in ["apps", "shuffle"] {
        std::fs::create_dir_all(work_dir.join(sub)).map_err(|err| {
            AgentError::io(
                format!(
                    "cannot create the work dir {}: check --work-dir and its permissions",
                    work_dir.display()
                ),
                err,
            )
        })?;
    }
    let work_dir = std::fs::canonicalize(work_dir).map_err(|err| AgentError::io("cannot resolve the work dir", err))?;
    if !per_user {
        return Ok(work_dir);
    }
    for dir in [work_dir.clone(), work_dir.join("apps"), work_dir.join("shuffle")] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(PASSAGE_MODE))
            .map_err(|err| AgentError::io(format!("cannot set the mode of {}", dir.display()), err))?;
    }
    if let Some(blocking) = first_closed_ancestor(&work_dir) {
        return Err(AgentError::Config(format!(
            "containers run as their users' accounts and must reach the work dir {}, but {} does not let others \
             pass (no o+x): `chmod o+x` it or choose another --work-dir",
            work_dir.display(),
            blocking.display()
        )));
    }
    let bin = std::fs::canonicalize(spindle_bin)
        .map_err(|err| AgentError::io(format!("cannot resolve the spindle binary {}", spindle_bin.display()), err))?;
    let bin_runnable = std::fs::metadata(&bin).is_ok_and(|meta| meta.permissions().mode() & OTHERS_EXECUTE != 0);
    if let Some(blocking) = first_closed_ancestor(&bin).or((!bin_runnable).then(|| bin.clone())) {
        return Err(AgentError::Config(format!(
            "containers run as their users' accounts and must be able to run {} (AMs and tasks are that binary), \
             but {} does not let others pass or run it (no o+x): install spindle where every account can run it",
            bin.display(),
            blocking.display()
        )));
    }
    Ok(work_dir)
}

/// Whether every account may run the program at `path`: it and its dirs let others pass.
pub fn runnable_by_others(path: &Path) -> bool {
    std::fs::canonicalize(path).is_ok_and(|path| {
        std::fs::metadata(&path).is_ok_and(|meta| meta.permissions().mode() & OTHERS_EXECUTE != 0) && first_closed_ancestor(&path).is_none()
    })
}

/// Whether every account may pass through `dir` and all of its ancestors.
pub(crate) fn open_to_others(dir: &Path) -> bool {
    dir.is_absolute()
        && std::fs::metadata(dir).is_ok_and(|meta| meta.permissions().mode() & OTHERS_EXECUTE != 0)
        && first_closed_ancestor(dir).is_none()
}

/// The first proper ancestor of `path` (from the root down) that others may not search.
fn first_closed_ancestor(path: &Path) -> Option<PathBuf> {
    let mut ancestors: Vec<&Path> = path.ancestors().skip(1).collect();
    ancestors.reverse();
    ancestors
        .into_iter()
        .find(|dir| std::fs::metadata(dir).is_ok_and(|meta| meta.permissions().mode() & OTHERS_EXECUTE == 0))
        .map(Path::to_path_buf)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A temporary dir containers of other accounts can reach (tempfile makes 0700 ones).
    pub(crate) fn passable_tempdir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    #[test]
    fn closed_ancestors_are_found() {
        let outer = tempfile::tempdir().unwrap();
        std::fs::set_permissions(outer.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let work = outer.path().join("agent");
        std::fs::create_dir(&work).unwrap();
        assert_eq!(first_closed_ancestor(&work).as_deref(), Some(outer.path()));
        std::fs::set_permissions(outer.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        assert_eq!(first_closed_ancestor(&work), None);
    }

    #[test]
    fn a_per_user_work_dir_is_passable_but_not_listable() {
        let outer = tempfile::tempdir().unwrap();
        std::fs::set_permissions(outer.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = outer.path().join("spindle");
        std::fs::write(&bin, "").unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let work = prepare_work_dir(&outer.path().join("agent"), &bin, true).unwrap();
        for dir in [work.clone(), work.join("apps"), work.join("shuffle")] {
            assert_eq!(
                std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
                0o711,
                "{}",
                dir.display()
            );
        }
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o700)).unwrap();
        let err = prepare_work_dir(&outer.path().join("agent"), &bin, true).unwrap_err();
        assert!(err.to_string().contains("must be able to run"), "{err}");
    }
}
