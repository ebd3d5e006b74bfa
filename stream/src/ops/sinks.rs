//! Sinks: `file` (exactly-once rolling files), `stdout` (at-least-once), `discard` (benchmarks).
//!
//! The file sink stages lines in `<path>/.staging/<operator>-<index>-e<epoch>-<seq>.inprogress`
//! (the epoch keeps a restarted instance from touching an earlier attempt's files). At a
//! checkpoint barrier it syncs what it wrote and hands the AM a `Commit` of renames to
//! `<path>/part-<operator>-<index>-<checkpoint:08>-<n>`; the AM runs them (`run_file_commit`)
//! once the checkpoint is complete, and again after restoring from it, so output appears exactly
//! once: files of a checkpoint that never completed stay in `.staging` and are never published.
//!
//! On an object store (`path = "s3://bucket/prefix"`), as Flink's recoverable S3 writer: the
//! lines are staged in the worker's scratch directory; at the barrier each staged file becomes a
//! multipart upload of `<prefix>/part-<operator>-<index>-<checkpoint:08>-<n>` whose parts are
//! uploaded but which is not completed: the `Commit` carries its id and parts, and the AM
//! completes it once the checkpoint is complete (again after restoring from it: completing is
//! idempotent). An upload of a checkpoint that never completes is never completed, so nothing
//! of it is visible; the AM aborts it when a restart drops the checkpoint (`abort_uploads`).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use spindle_protocol::{DataUrl, OperatorSpec};
use spindle_storage::{ObjectUrl, S3Settings, block_on};

use crate::operator::{Commit, InstanceContext, OperatorError, Sink, UploadCommit};
use crate::record::Batch;

/// Roll to a new file within a checkpoint after this many MB when the spec does not say.
pub const DEFAULT_ROLL_MB: u64 = 128;

struct Staged {
    path: PathBuf,
    writer: BufWriter<File>,
    bytes: u64,
}

/// Where committed files go.
enum Target {
    Dir(PathBuf),
    Object(ObjectUrl),
}

/// A `file` sink instance.
pub struct FileSink {
    target: Target,
    staging: PathBuf,
    prefix: String,
    operator: String,
    index: u32,
    roll_bytes: u64,
    next_seq: u64,
    current: Option<Staged>,
    /// Staged files complete and synced since the last `prepare_commit`.
    finished: Vec<PathBuf>,
}

impl FileSink {
    pub fn new(spec: &OperatorSpec, context: &InstanceContext) -> Result<FileSink, OperatorError> {
        let path = spec
            .path
            .as_deref()
            .ok_or_else(|| OperatorError::failed(format!("operator {}: file sink needs `path`", spec.name)))?;
        let url = DataUrl::parse(path).map_err(|error| OperatorError::failed(format!("operator {}: path: {error}", spec.name)))?;
        let (target, staging) = match ObjectUrl::open(&url, &S3Settings::from_env(&context.env))
            .map_err(|error| OperatorError::failed(format!("operator {}: {error}", spec.name)))?
        {
            // Staged on this worker only: what a checkpoint needs is uploaded at its barrier.
            Some(object) => (
                Target::Object(object),
                context.work_dir.join(format!("staging-{}-{}", spec.name, context.index)),
            ),
            None => {
                let dir = PathBuf::from(url.to_string());
                (Target::Dir(dir.clone()), dir.join(".staging"))
            }
        };
        std::fs::create_dir_all(&staging)?;
        Ok(FileSink {
            target,
            staging,
            prefix: format!("{}{}", staged_prefix(&context.operator, context.index), context.epoch),
            operator: context.operator.clone(),
            index: context.index,
            roll_bytes: spec.roll_mb.unwrap_or(DEFAULT_ROLL_MB).max(1) << 20,
            next_seq: 0,
            current: None,
            finished: Vec::new(),
        })
    }

    fn open(&mut self) -> Result<&mut Staged, OperatorError> {
        if self.current.is_none() {
            let path = self.staging.join(format!("{}-{}.inprogress", self.prefix, self.next_seq));
            self.next_seq += 1;
            // `create_new`: a name is never reused, so an existing file is a bug worth stopping for.
            let file = OpenOptions::new().write(true).create_new(true).open(&path)?;
            self.current = Some(Staged {
                path,
                writer: BufWriter::with_capacity(1 << 20, file),
                bytes: 0,
            });
        }
        Ok(self.current.as_mut().expect("opened above"))
    }

    /// Flushes and syncs the current file and queues it for the next commit.
    fn close_current(&mut self) -> Result<(), OperatorError> {
        if let Some(staged) = self.current.take() {
            let file = staged.writer.into_inner().map_err(|error| error.into_error())?;
            file.sync_all()?;
            self.finished.push(staged.path);
        }
        Ok(())
    }
}

impl Sink for FileSink {
    fn write(&mut self, batch: &Batch) -> Result<(), OperatorError> {
        for record in batch {
            let roll_bytes = self.roll_bytes;
            let staged = self.open()?;
            staged.writer.write_all(record.value)?;
            staged.writer.write_all(b"\n")?;
            staged.bytes += record.value.len() as u64 + 1;
            if staged.bytes >= roll_bytes {
                self.close_current()?;
            }
        }
        Ok(())
    }

    fn prepare_commit(&mut self, checkpoint: u64) -> Result<Commit, OperatorError> {
        self.close_current()?;
        if self.finished.is_empty() {
            return Ok(Commit::default());
        }
        let names = (0..self.finished.len()).map(|n| format!("part-{}-{}-{checkpoint:08}-{n}", self.operator, self.index));
        let staged: Vec<(PathBuf, String)> = self.finished.drain(..).zip(names).collect();
        match &self.target {
            Target::Dir(dir) => {
                sync_dir(&self.staging)?;
                let renames = staged.into_iter().map(|(file, name)| (file, dir.join(name))).collect();
                Ok(Commit {
                    renames,
                    ..Commit::default()
                })
            }
            Target::Object(prefix) => {
                let mut uploads = Vec::with_capacity(staged.len());
                for (file, name) in staged {
                    uploads.push(stage_upload(&prefix.child(&name), &file)?);
                    std::fs::remove_file(&file)?;
                }
                Ok(Commit {
                    uploads,
                    ..Commit::default()
                })
            }
        }
    }
}

/// Uploads `file` as the parts of a new multipart upload of `object`, not completed.
fn stage_upload(object: &ObjectUrl, file: &Path) -> Result<UploadCommit, OperatorError> {
    let (url, staging) = (object.to_string(), object.clone());
    let (upload_id, parts) =
        block_on(async move { staging.stage_file(file).await }).map_err(|error| OperatorError::failed(format!("file sink: {error}")))?;
    Ok(UploadCommit { url, upload_id, parts })
}

/// Aborts staged uploads that will never be completed (the AM, after a restart dropped the
/// checkpoints they were for); failures are only logged.
pub fn abort_uploads(uploads: &[UploadCommit], s3: &S3Settings) {
    for upload in uploads {
        let aborted =
            ObjectUrl::parse(&upload.url, s3).and_then(|object| block_on(async move { object.abort_upload(&upload.upload_id).await }));
        if let Err(error) = aborted {
            tracing::warn!(url = %upload.url, %error, "cannot abort a staged upload (the bucket's lifecycle rule will)");
        }
    }
}

/// Completes a sink's staged uploads (the AM, at commit).
pub fn run_upload_commit(commit: &Commit, s3: &S3Settings) -> Result<(), String> {
    for upload in &commit.uploads {
        ObjectUrl::parse(&upload.url, s3)
            .and_then(|object| block_on(async move { object.complete_upload(&upload.upload_id, &upload.parts).await }))
            .map_err(|error| error.to_string())?;
    }
    Ok(())
}

/// The start of the staged files' names of instance `index` of file sink `operator`, before
/// the epoch: what a restart of that instance alone cleans.
pub fn staged_prefix(operator: &str, index: u32) -> String {
    format!("{operator}-{index}-e")
}

/// Publishes a file sink's output: renames each staged file to its final name. Idempotent: a
/// staged file already gone whose final name exists was committed before.
pub fn run_file_commit(commit: &Commit) -> std::io::Result<()> {
    let mut dirs: Vec<&Path> = Vec::new();
    for (staged, target) in &commit.renames {
        if staged.exists() {
            std::fs::rename(staged, target)?;
            if let Some(dir) = target.parent().filter(|dir| !dirs.contains(dir)) {
                dirs.push(dir);
            }
        } else if !target.exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "cannot commit {}: neither it nor its final name {} exists",
                    staged.display(),
                    target.display()
                ),
            ));
        }
    }
    for dir in dirs {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Makes renames and creations in `dir` durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A `stdout` sink: lines on the worker's stdout, flushed at every checkpoint (at-least-once:
/// lines written after the last checkpoint are written again after a restore).
pub struct StdoutSink {
    out: BufWriter<std::io::Stdout>,
}

impl StdoutSink {
    pub fn new() -> StdoutSink {
        StdoutSink {
            out: BufWriter::with_capacity(1 << 16, std::io::stdout()),
        }
    }
}

impl Default for StdoutSink {
    fn default() -> StdoutSink {
        StdoutSink::new()
    }
}

impl Sink for StdoutSink {
    fn write(&mut self, batch: &Batch) -> Result<(), OperatorError> {
        for record in batch {
            self.out.write_all(record.value)?;
            self.out.write_all(b"\n")?;
        }
        Ok(())
    }

    fn prepare_commit(&mut self, _checkpoint: u64) -> Result<Commit, OperatorError> {
        self.out.flush()?;
        Ok(Commit::default())
    }
}

/// A `discard` sink: counts what it drops.
#[derive(Debug, Default)]
pub struct DiscardSink {
    records: u64,
    bytes: u64,
}

impl DiscardSink {
    pub fn new() -> DiscardSink {
        DiscardSink::default()
    }

    pub fn records(&self) -> u64 {
        self.records
    }

    /// Bytes of the records' values.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Sink for DiscardSink {
    fn write(&mut self, batch: &Batch) -> Result<(), OperatorError> {
        self.records += batch.len() as u64;
        self.bytes += batch.byte_len() as u64;
        Ok(())
    }

    fn prepare_commit(&mut self, _checkpoint: u64) -> Result<Commit, OperatorError> {
        Ok(Commit::default())
    }
}

#[cfg(test)]
mod tests {
    use spindle_protocol::OperatorKind;

    use super::*;
    use crate::ops::test_context;

    fn sink(dir: &Path, roll_mb: Option<u64>) -> FileSink {
        let spec = OperatorSpec {
            name: "out".into(),
            kind: Some(OperatorKind::FileSink),
            path: Some(dir.display().to_string()),
            roll_mb,
            ..OperatorSpec::default()
        };
        let mut context = test_context(2, 3);
        context.operator = "out".into();
        FileSink::new(&spec, &context).unwrap()
    }

    fn batch(lines: &[&str]) -> Batch {
        let mut batch = Batch::new();
        for line in lines {
            batch.push(0, b"", line.as_bytes());
        }
        batch
    }

    fn visible(dir: &Path) -> Vec<(String, String)> {
        let mut files: Vec<(String, String)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap())
            .filter(|entry| entry.file_type().unwrap().is_file())
            .map(|entry| {
                (
                    entry.file_name().into_string().unwrap(),
                    std::fs::read_to_string(entry.path()).unwrap(),
                )
            })
            .collect();
        files.sort();
        files
    }

    #[test]
    fn output_appears_only_when_committed_and_commits_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = sink(dir.path(), None);
        sink.write(&batch(&["a", "b"])).unwrap();
        let commit = sink.prepare_commit(7).unwrap();
        assert!(visible(dir.path()).is_empty(), "nothing is visible before the commit runs");
        assert_eq!(commit.renames.len(), 1);
        run_file_commit(&commit).unwrap();
        run_file_commit(&commit).unwrap();
        assert_eq!(visible(dir.path()), vec![("part-out-2-00000007-0".into(), "a\nb\n".into())]);

        assert!(sink.prepare_commit(8).unwrap().is_empty(), "no files when nothing was written");
        sink.write(&batch(&["c"])).unwrap();
        let uncommitted = sink.prepare_commit(9).unwrap();
        std::fs::remove_file(&uncommitted.renames[0].0).unwrap();
        let error = run_file_commit(&uncommitted).unwrap_err();
        assert!(error.to_string().contains("part-out-2-00000009-0"), "{error}");
    }

    #[test]
    fn files_roll_within_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = sink(dir.path(), Some(1));
        let line = "x".repeat(700 * 1024);
        sink.write(&batch(&[&line, &line, &line])).unwrap();
        let commit = sink.prepare_commit(1).unwrap();
        assert_eq!(commit.renames.len(), 2);
        run_file_commit(&commit).unwrap();
        let files = visible(dir.path());
        assert_eq!(
            files.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>(),
            vec!["part-out-2-00000001-0", "part-out-2-00000001-1"]
        );
        assert_eq!(files[0].1.len(), 2 * (line.len() + 1));
    }

    #[test]
    fn discard_counts() {
        let mut sink = DiscardSink::new();
        sink.write(&batch(&["a", "b"])).unwrap();
        assert_eq!(sink.records(), 2);
        assert!(sink.prepare_commit(1).unwrap().is_empty());
    }
}
