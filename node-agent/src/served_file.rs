//! Opening files a container could have tampered with (its logs, its map output) for serving.
//! The agent reads them with its own rights, so it must never be led elsewhere: no symlinks, no
//! FIFOs or devices that would block or leak, no hard links to files outside the container.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Opens `path` for reading if it is a regular file with one link, reached without following a
/// symlink in its last component. The dirs above it belong to the agent (0711, root-owned), so
/// a container cannot swap them. Anything else is `PermissionDenied`, naming the reason.
pub(crate) async fn open_served_file(path: &Path) -> std::io::Result<tokio::fs::File> {
    // O_NONBLOCK: opening a FIFO a container planted would otherwise wait for a writer.
    let file = tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .await
        .map_err(|err| match err.raw_os_error() {
            // O_NOFOLLOW on a symlink.
            Some(libc::ELOOP) => refused(path, "is a symbolic link"),
            _ => err,
        })?;
    let metadata = file.metadata().await?;
    if !metadata.is_file() {
        return Err(refused(path, "is not a regular file"));
    }
    if metadata.nlink() != 1 {
        return Err(refused(path, "has other hard links"));
    }
    Ok(file)
}

fn refused(path: &Path, why: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        format!("{} {why}: the agent serves only plain files a container wrote", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_plain_files_are_served() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("stdout");
        std::fs::write(&plain, "hello").unwrap();
        assert!(open_served_file(&plain).await.is_ok());

        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cret").unwrap();
        let link = dir.path().join("stderr");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        let err = open_served_file(&link).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("symbolic link"), "{err}");

        let hard = dir.path().join("hard");
        std::fs::hard_link(&secret, &hard).unwrap();
        assert!(open_served_file(&hard).await.unwrap_err().to_string().contains("hard links"));

        let fifo = dir.path().join("fifo");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        assert!(
            open_served_file(&fifo)
                .await
                .unwrap_err()
                .to_string()
                .contains("not a regular file")
        );
        assert!(open_served_file(dir.path()).await.is_err());
    }
}
