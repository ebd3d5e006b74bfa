//! The stream AM's committer: runs sinks' commits one batch at a time, in checkpoint order (a
//! checkpoint is pruned only after its commits ran), cleans what failed attempts staged, and
//! copies checkpoints into savepoints (in the same order, so before any prune of their files).

use std::path::PathBuf;
use std::time::Duration;

use spindle_storage::S3Settings;
use tokio::sync::{mpsc, oneshot};

use crate::checkpoints::Storage;
use crate::location::Location;
use crate::operator::{Commit, UploadCommit};
use crate::savepoint::{FileCopy, SavepointMeta};

/// Commits to run (or, with no commits, staging dirs to clean of files older than an epoch, or
/// a savepoint to write).
pub(super) struct CommitJob {
    pub commits: Vec<Commit>,
    /// Staging dirs, the epoch, and the name prefixes to clean (none: every file).
    pub clean: Option<(Vec<PathBuf>, u64, Vec<String>)>,
    pub savepoint: Option<SavepointWrite>,
    /// Multipart uploads staged for checkpoints that will never complete: aborted.
    pub abort: Vec<UploadCommit>,
    pub done: Option<oneshot::Sender<Result<(), String>>>,
}

/// A savepoint to write: its directory, metadata and the files to copy into it.
pub(super) struct SavepointWrite {
    pub dir: Location,
    pub meta: SavepointMeta,
    pub copies: Vec<FileCopy>,
}

/// Runs commits one batch at a time, in order, then prunes old checkpoints.
/// `s3`: how to reach the object stores file sinks stage uploads on (from the job's env).
pub(super) fn spawn_committer(storage: Storage, keep: usize, s3: S3Settings) -> mpsc::UnboundedSender<CommitJob> {
    let (tx, mut rx) = mpsc::unbounded_channel::<CommitJob>();
    tokio::spawn(async move {
        while let Some(CommitJob {
            commits,
            clean,
            savepoint,
            abort,
            done,
        }) = rx.recv().await
        {
            let (storage, s3) = (storage.clone(), s3.clone());
            let result = tokio::task::spawn_blocking(move || {
                if let Some(SavepointWrite { dir, meta, copies }) = savepoint {
                    return crate::savepoint::write(&dir, meta, &copies, &s3);
                }
                if !abort.is_empty() {
                    crate::ops::sinks::abort_uploads(&abort, &s3);
                    return Ok(());
                }
                if let Some((dirs, epoch, prefixes)) = clean {
                    clean_staging(&dirs, epoch, &prefixes);
                    return Ok(());
                }
                let mut last = Ok(());
                for attempt in 0..3 {
                    last = commits.iter().try_for_each(|commit| commit_one(commit, &s3));
                    if last.is_ok() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(200 << attempt));
                }
                if last.is_ok() {
                    storage.prune(keep);
                }
                last
            })
            .await
            .unwrap_or_else(|join| Err(format!("the commit panicked: {join}")));
            if let Some(done) = done {
                let _ = done.send(result);
            }
        }
    });
    tx
}

/// Deletes staged files of epochs before `epoch` (`<operator>-<index>-e<epoch>-<seq>…`): the
/// attempt that wrote them failed and the checkpoints that covered them never completed, or they
/// were committed (renamed away) already.
fn clean_staging(dirs: &[PathBuf], epoch: u64, prefixes: &[String]) {
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !prefixes.is_empty() && !prefixes.iter().any(|prefix| name.starts_with(prefix.as_str())) {
                continue;
            }
            let staged_epoch = name
                .split('-')
                .find_map(|part| part.strip_prefix('e').and_then(|digits| digits.parse::<u64>().ok()));
            if staged_epoch.is_some_and(|staged| staged < epoch) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

fn commit_one(commit: &Commit, s3: &S3Settings) -> Result<(), String> {
    if !commit.renames.is_empty() {
        crate::ops::sinks::run_file_commit(commit).map_err(|error| error.to_string())?;
    }
    if !commit.uploads.is_empty() {
        crate::ops::sinks::run_upload_commit(commit, s3)?;
    }
    if let Some(nats) = &commit.nats {
        crate::ops::nats::run_nats_commit(nats).map_err(|error| error.to_string())?;
    }
    Ok(())
}

pub(super) async fn run_commits(commits: &mpsc::UnboundedSender<CommitJob>, batch: Vec<Commit>) -> Result<(), String> {
    let (done_tx, done_rx) = oneshot::channel();
    commits
        .send(CommitJob {
            commits: batch,
            clean: None,
            savepoint: None,
            abort: Vec::new(),
            done: Some(done_tx),
        })
        .map_err(|_| "the committer stopped".to_owned())?;
    done_rx.await.unwrap_or_else(|_| Err("the committer stopped".to_owned()))
}
