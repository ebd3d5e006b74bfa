//! The agent's node credential on disk: `<work_dir>/node-credential.json`, owner-only, so a
//! restarted agent authenticates without its join token (which may have expired by then).
//! Containers never run as the agent's account in per-user mode, so they cannot read it.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use spindle_protocol::{NodeCredential, NodeId, NodeKeyring};

const FILE_NAME: &str = "node-credential.json";

pub(crate) fn path(work_dir: &Path) -> PathBuf {
    work_dir.join(FILE_NAME)
}

/// The saved keys of `node_id`, if there are any usable ones (a credential of another node id,
/// from a run on another port, is ignored).
pub(crate) fn load(work_dir: &Path, node_id: &NodeId) -> Option<NodeKeyring> {
    let path = path(work_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return None,
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "cannot read the saved node credential; registering with the join token");
            return None;
        }
    };
    let credential: NodeCredential = match serde_json::from_str(&text) {
        Ok(credential) => credential,
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "the saved node credential is not valid JSON; ignoring it");
            return None;
        }
    };
    if &credential.node_id != node_id {
        tracing::info!(saved = %credential.node_id, node_id = %node_id, "the saved node credential is another node's; registering with the join token");
        return None;
    }
    NodeKeyring::new(&credential)
        .inspect_err(|err| tracing::warn!(path = %path.display(), error = %err, "ignoring the saved node credential"))
        .ok()
}

/// Replaces the saved credential: a new 0600 file renamed over the old one.
pub(crate) fn save(work_dir: &Path, keyring: &NodeKeyring) -> std::io::Result<()> {
    let path = path(work_dir);
    let temporary = work_dir.join(format!(".{FILE_NAME}.tmp"));
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(serde_json::to_string_pretty(&keyring.to_credential())?.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, &path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    use spindle_protocol::{ClusterSecret, NodeAuthority};

    use super::*;

    #[test]
    fn a_saved_credential_loads_for_its_node_only() {
        let dir = tempfile::tempdir().unwrap();
        let node = NodeId("10.0.0.1:8042".into());
        assert!(load(dir.path(), &node).is_none());
        let authority = NodeAuthority::new(
            ClusterSecret::new("0123456789abcdef"),
            Duration::from_secs(60),
            Duration::from_secs(600),
        );
        let keyring = NodeKeyring::new(&authority.credential(&node, 1_000)).unwrap();
        save(dir.path(), &keyring).unwrap();
        save(dir.path(), &keyring).unwrap();
        let mode = std::fs::metadata(path(dir.path())).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load(dir.path(), &node).unwrap().bearer(), keyring.bearer());
        assert!(load(dir.path(), &NodeId("10.0.0.1:8043".into())).is_none());
        std::fs::write(path(dir.path()), "{").unwrap();
        assert!(load(dir.path(), &node).is_none());
    }
}
