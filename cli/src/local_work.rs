//! Where a local cluster's agents keep their containers: outside the data dir, which holds the
//! database and `local.toml` (secrets) and is private to the cluster's owner. A cluster started
//! as root runs jobs as the unprivileged fallback account, which must reach the containers'
//! dirs and run the `spindle` binary, but nothing in the data dir.

use std::hash::{Hash, Hasher};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Others may pass through, not list (as the agent's own work dirs).
const PASSAGE_MODE: u32 = 0o711;

/// `<temp dir>/spindle-local-<hash of the data dir>`: one per data dir, so two local clusters
/// never share one, and the same cluster finds its own again after a restart. Created 0711 and
/// refused unless it is a real dir of this process's user (another user may have planted a
/// symlink or a dir of their own there beforehand).
pub fn work_root(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    data_dir.hash(&mut hasher);
    let root = std::env::temp_dir().join(format!("spindle-local-{:016x}", hasher.finish()));
    match std::fs::DirBuilder::new().mode(PASSAGE_MODE).create(&root) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(err).with_context(|| format!("cannot create the containers' dir {}", root.display())),
    }
    let metadata = std::fs::symlink_metadata(&root).with_context(|| format!("cannot read {}", root.display()))?;
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    if !metadata.is_dir() || metadata.uid() != euid {
        bail!(
            "{} is not a directory of this user (uid {euid}): someone else created it; remove it and start again",
            root.display()
        );
    }
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(PASSAGE_MODE))?;
    Ok(root)
}

/// The `spindle` binary containers run: `binary` itself if every account can run it, else (a
/// cluster started as root from a build under /root) a copy in `<work root>/bin`, refreshed
/// when the binary changes.
pub fn runnable_binary(binary: &Path, work_root: &Path) -> anyhow::Result<PathBuf> {
    // SAFETY: geteuid cannot fail.
    let is_root = unsafe { libc::geteuid() } == 0;
    if !is_root || spindle_node_agent::runnable_by_others(binary) {
        return Ok(binary.to_path_buf());
    }
    let bin_dir = work_root.join("bin");
    std::fs::create_dir_all(&bin_dir)?;
    std::fs::set_permissions(&bin_dir, std::fs::Permissions::from_mode(0o755))?;
    let copy = bin_dir.join("spindle");
    let source = std::fs::metadata(binary).with_context(|| format!("cannot read {}", binary.display()))?;
    let current = std::fs::metadata(&copy).is_ok_and(|existing| existing.len() == source.len() && existing.mtime() >= source.mtime());
    if !current {
        let staged = bin_dir.join(format!("spindle.{}", std::process::id()));
        std::fs::copy(binary, &staged).with_context(|| format!("cannot copy {} for the containers", binary.display()))?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&staged, &copy)?;
    }
    Ok(copy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_data_dir_has_its_own_work_root() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let root_a = work_root(a.path()).unwrap();
        assert_eq!(root_a, work_root(a.path()).unwrap());
        assert_ne!(root_a, work_root(b.path()).unwrap());
        assert!(!root_a.starts_with(a.path()), "outside the data dir");
        assert_eq!(std::fs::metadata(&root_a).unwrap().permissions().mode() & 0o777, 0o711);
        for data_dir in [a.path(), b.path()] {
            std::fs::remove_dir(work_root(data_dir).unwrap()).unwrap();
        }
    }
}
