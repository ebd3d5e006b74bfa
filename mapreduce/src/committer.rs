//! The job's output: refuse an existing output (unless `overwrite`), give each reduce attempt
//! a place of its own, and publish the winners' part files so that a failed or killed job
//! never leaves output that looks complete.
//!
//! On a file system, one rename publishes everything:
//!
//! ```text
//! <parent>/.<name>.spindle-<app_id>/            hidden: input expansion skips it
//!     r_000003_0/part-r-00003                 each reduce attempt writes here
//!     final/part-r-00000 … _SUCCESS           assembled at commit
//! <parent>/<name>                             ← rename(final) at commit: appears whole
//! ```
//!
//! S3 has no rename (Hadoop's S3A committers and Flink's S3 writer work around it the same
//! way): attempts upload under an attempt-scoped prefix, the commit copies the winners' parts
//! into place on the server and writes `_SUCCESS` last, listing them; readers of `_SUCCESS`
//! (and of `_`-hidden names: input expansion skips `_temporary`) see all of the output or none.
//!
//! ```text
//! s3://b/out/_temporary/<app_id>/r_000003_0/part-r-00003   each reduce attempt uploads here
//! s3://b/out/part-r-00000 …                                copied from the winners at commit
//! s3://b/out/_SUCCESS                                      last: {"parts": [{name, size}, …]}
//! ```

use std::path::{Path, PathBuf};

use spindle_protocol::{AppId, DataUrl};
use spindle_storage::{ObjectUrl, S3Settings, block_on};

use super::part_file_name;
use super::task_protocol::TaskAttemptId;
use crate::TaskError;

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TaskError {
    TaskError::io(action, path)
}

fn object_error(error: spindle_storage::StorageError) -> TaskError {
    TaskError::Output(error.to_string())
}

/// Where attempts' output waits and the job's output goes.
#[derive(Debug, Clone)]
enum Target {
    Local {
        output: PathBuf,
        /// Hidden sibling of `output` holding attempts' files until commit.
        staging: PathBuf,
    },
    Object {
        output: ObjectUrl,
        /// `<output>/_temporary/<app_id>`.
        staging: ObjectUrl,
    },
}

/// The output of one job attempt.
#[derive(Debug, Clone)]
pub struct OutputCommitter {
    target: Target,
    overwrite: bool,
}

impl OutputCommitter {
    /// Checks the output and creates the staging directory (a fresh one: a previous AM
    /// attempt's leftovers are removed).
    pub fn setup(output: &str, overwrite: bool, app_id: AppId, s3: &S3Settings) -> Result<OutputCommitter, TaskError> {
        let url = DataUrl::parse(output).map_err(|error| TaskError::Output(error.to_string()))?;
        if let Some(output) = ObjectUrl::open(&url, s3).map_err(object_error)? {
            return Self::setup_object(output, overwrite, app_id);
        }
        let output = PathBuf::from(url.to_string().trim_end_matches('/'));
        if output.exists() && !overwrite {
            return Err(TaskError::OutputExists(output.display().to_string()));
        }
        let (Some(parent), Some(name)) = (output.parent(), output.file_name()) else {
            return Err(TaskError::NoOutputParent(output));
        };
        if !parent.is_dir() {
            return Err(TaskError::NoOutputParent(output));
        }
        let staging = parent.join(format!(".{}.spindle-{app_id}", name.to_string_lossy()));
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(io("cannot clear the staging directory", &staging))?;
        }
        std::fs::create_dir_all(&staging).map_err(io("cannot create the staging directory", &staging))?;
        Ok(OutputCommitter {
            target: Target::Local { output, staging },
            overwrite,
        })
    }

    fn setup_object(output: ObjectUrl, overwrite: bool, app_id: AppId) -> Result<OutputCommitter, TaskError> {
        let staging = output.child(&format!("_temporary/{app_id}"));
        let temporary = format!("{}/_temporary/", output.key());
        let existing = block_on(output.list()).map_err(object_error)?;
        if !overwrite && existing.iter().any(|entry| !entry.key.starts_with(&temporary)) {
            return Err(TaskError::OutputExists(output.to_string()));
        }
        block_on(staging.delete_all()).map_err(object_error)?;
        Ok(OutputCommitter {
            target: Target::Object { output, staging },
            overwrite,
        })
    }

    /// Where reduce attempts write: a hidden directory, or an `s3://` prefix.
    pub fn staging_location(&self) -> String {
        match &self.target {
            Target::Local { staging, .. } => staging.display().to_string(),
            Target::Object { staging, .. } => staging.to_string(),
        }
    }

    /// Where a reduce attempt writes its part file (a local staging directory).
    #[cfg(test)]
    fn attempt_dir(&self, attempt: TaskAttemptId) -> PathBuf {
        PathBuf::from(self.staging_location()).join(attempt.to_string())
    }

    /// Publishes the part files of the winning attempt of every partition, in partition order,
    /// plus `_SUCCESS`; an existing output is replaced only with `overwrite`.
    pub fn commit(&self, winners: &[TaskAttemptId]) -> Result<(), TaskError> {
        match &self.target {
            Target::Local { output, staging } => self.commit_local(output, staging, winners),
            Target::Object { output, staging } => block_on(self.commit_object(output, staging, winners)),
        }
    }

    /// As the output directory, in one rename.
    fn commit_local(&self, output: &Path, staging: &Path, winners: &[TaskAttemptId]) -> Result<(), TaskError> {
        let assembled = staging.join("final");
        std::fs::create_dir_all(&assembled).map_err(io("cannot create", &assembled))?;
        for attempt in winners {
            let name = part_file_name(attempt.task);
            let from = staging.join(attempt.to_string()).join(&name);
            std::fs::rename(&from, assembled.join(&name)).map_err(io("cannot move the part file", &from))?;
        }
        let marker = assembled.join("_SUCCESS");
        std::fs::write(&marker, b"").map_err(io("cannot write", &marker))?;
        let replaced = staging.join("replaced");
        if output.exists() {
            if !self.overwrite {
                return Err(TaskError::OutputExists(output.display().to_string()));
            }
            std::fs::rename(output, &replaced).map_err(io("cannot move the old output aside", output))?;
        }
        std::fs::rename(&assembled, output).map_err(io("cannot publish the output", output))?;
        self.abort();
        Ok(())
    }

    /// Copies on the server, `_SUCCESS` last. An old output (with `overwrite`) loses its
    /// `_SUCCESS` first, so no reader takes a mix of old and new parts for a whole output.
    async fn commit_object(&self, output: &ObjectUrl, staging: &ObjectUrl, winners: &[TaskAttemptId]) -> Result<(), TaskError> {
        let temporary = format!("{}/_temporary/", output.key());
        let success = output.child("_SUCCESS");
        let existing = output.list().await.map_err(object_error)?;
        let old: Vec<_> = existing.iter().filter(|entry| !entry.key.starts_with(&temporary)).collect();
        if !old.is_empty() {
            if !self.overwrite {
                return Err(TaskError::OutputExists(output.to_string()));
            }
            success.delete().await.map_err(object_error)?;
            for entry in old {
                output.at(&entry.key).delete().await.map_err(object_error)?;
            }
        }
        let mut parts = Vec::with_capacity(winners.len());
        for attempt in winners {
            let name = part_file_name(attempt.task);
            let from = staging.child(&format!("{attempt}/{name}"));
            let to = output.child(&name);
            from.copy_to(&to).await.map_err(object_error)?;
            let size = to.size().await.map_err(object_error)?.unwrap_or(0);
            parts.push(format!("{{\"name\":\"{name}\",\"size\":{size}}}"));
        }
        success
            .put(format!("{{\"parts\":[{}]}}\n", parts.join(",")))
            .await
            .map_err(object_error)?;
        if let Err(error) = staging.delete_all().await {
            tracing::warn!(staging = %staging, %error, "cannot remove the staging prefix");
        }
        Ok(())
    }

    /// Removes the staging directory or prefix (after a commit, or when the job fails or is
    /// killed): failed and speculative attempts' output goes with it.
    pub fn abort(&self) {
        match &self.target {
            Target::Local { staging, .. } => {
                if let Err(err) = std::fs::remove_dir_all(staging)
                    && err.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(staging = %staging.display(), error = %err, "cannot remove the staging directory");
                }
            }
            Target::Object { staging, .. } => {
                if let Err(error) = block_on(staging.delete_all()) {
                    tracing::warn!(staging = %staging, %error, "cannot remove the staging prefix");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task_protocol::TaskKind;

    fn reduce(task: u32, attempt: u32) -> TaskAttemptId {
        TaskAttemptId {
            kind: TaskKind::Reduce,
            task,
            attempt,
        }
    }

    fn write_part(committer: &OutputCommitter, attempt: TaskAttemptId, text: &str) {
        let dir = committer.attempt_dir(attempt);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(part_file_name(attempt.task)), text).unwrap();
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_winners_appear_whole_with_success_and_nothing_else_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("out");
        let app: AppId = "application_1_0007".parse().unwrap();
        let committer = OutputCommitter::setup(&output.display().to_string(), false, app, &S3Settings::default()).unwrap();
        write_part(&committer, reduce(0, 0), "a\t1\n");
        write_part(&committer, reduce(1, 0), "loser\n");
        write_part(&committer, reduce(1, 1), "b\t2\n");
        assert!(!output.exists(), "nothing is visible before the commit");
        committer.commit(&[reduce(0, 0), reduce(1, 1)]).unwrap();
        assert_eq!(listing(&output), ["_SUCCESS", "part-r-00000", "part-r-00001"]);
        assert_eq!(std::fs::read_to_string(output.join("part-r-00001")).unwrap(), "b\t2\n");
        assert_eq!(listing(dir.path()), ["out"], "the staging directory is gone");
    }

    #[test]
    fn an_existing_output_is_refused_unless_overwrite_and_abort_leaves_no_output() {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("out");
        std::fs::create_dir(&output).unwrap();
        std::fs::write(output.join("old"), "x").unwrap();
        let app: AppId = "application_1_0007".parse().unwrap();
        let error = OutputCommitter::setup(&output.display().to_string(), false, app, &S3Settings::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("already exists") && error.contains("overwrite = true"), "{error}");

        let committer = OutputCommitter::setup(&output.display().to_string(), true, app, &S3Settings::default()).unwrap();
        write_part(&committer, reduce(0, 0), "new\n");
        committer.commit(&[reduce(0, 0)]).unwrap();
        assert_eq!(listing(&output), ["_SUCCESS", "part-r-00000"], "the old output is replaced");

        let fresh = dir.path().join("fresh");
        let aborted = OutputCommitter::setup(&fresh.display().to_string(), false, app, &S3Settings::default()).unwrap();
        write_part(&aborted, reduce(0, 0), "partial\n");
        aborted.abort();
        assert!(!fresh.exists());
        assert_eq!(listing(dir.path()), ["out"]);
    }
}
