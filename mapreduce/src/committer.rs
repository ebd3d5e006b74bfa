//! The job's output on the shared file system: refuse an existing output (unless `overwrite`),
//! give each reduce attempt a directory of its own, and publish the winners' part files
//! atomically, so a failed or killed job never leaves output that looks complete.
//!
//! ```text
//! <parent>/.<name>.spindle-<app_id>/            hidden: input expansion skips it
//!     r_000003_0/part-r-00003                 each reduce attempt writes here
//!     final/part-r-00000 … _SUCCESS           assembled at commit
//! <parent>/<name>                             ← rename(final) at commit: appears whole
//! ```

use std::path::{Path, PathBuf};

use spindle_protocol::AppId;

use super::part_file_name;
use super::task_protocol::TaskAttemptId;
use crate::TaskError;

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TaskError {
    TaskError::io(action, path)
}

/// The output of one job attempt.
#[derive(Debug, Clone)]
pub struct OutputCommitter {
    output: PathBuf,
    /// Hidden sibling of `output` holding attempts' files until commit.
    staging: PathBuf,
    overwrite: bool,
}

impl OutputCommitter {
    /// Checks the output and creates the staging directory (a fresh one: a previous AM
    /// attempt's leftovers are removed).
    pub fn setup(output: &Path, overwrite: bool, app_id: AppId) -> Result<OutputCommitter, TaskError> {
        let output = output.to_owned();
        if output.exists() && !overwrite {
            return Err(TaskError::OutputExists(output));
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
            output,
            staging,
            overwrite,
        })
    }

    /// The hidden staging directory (reduce attempts write under it).
    pub fn staging_dir(&self) -> &Path {
        &self.staging
    }

    /// Where a reduce attempt writes its part file (created by the task runtime).
    pub fn attempt_dir(&self, attempt: TaskAttemptId) -> PathBuf {
        self.staging.join(attempt.to_string())
    }

    /// Publishes the part files of the winning attempt of every partition, in partition order,
    /// plus `_SUCCESS`, as the output directory in one rename; an existing output is replaced
    /// only with `overwrite`.
    pub fn commit(&self, winners: &[TaskAttemptId]) -> Result<(), TaskError> {
        let assembled = self.staging.join("final");
        std::fs::create_dir_all(&assembled).map_err(io("cannot create", &assembled))?;
        for attempt in winners {
            let name = part_file_name(attempt.task);
            let from = self.attempt_dir(*attempt).join(&name);
            std::fs::rename(&from, assembled.join(&name)).map_err(io("cannot move the part file", &from))?;
        }
        let marker = assembled.join("_SUCCESS");
        std::fs::write(&marker, b"").map_err(io("cannot write", &marker))?;
        let replaced = self.staging.join("replaced");
        if self.output.exists() {
            if !self.overwrite {
                return Err(TaskError::OutputExists(self.output.clone()));
            }
            std::fs::rename(&self.output, &replaced).map_err(io("cannot move the old output aside", &self.output))?;
        }
        std::fs::rename(&assembled, &self.output).map_err(io("cannot publish the output", &self.output))?;
        self.abort();
        Ok(())
    }

    /// Removes the staging directory (after a commit, or when the job fails or is killed).
    pub fn abort(&self) {
        if let Err(err) = std::fs::remove_dir_all(&self.staging)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(staging = %self.staging.display(), error = %err, "cannot remove the staging directory");
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
        let committer = OutputCommitter::setup(&output, false, app).unwrap();
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
        let error = OutputCommitter::setup(&output, false, app).unwrap_err().to_string();
        assert!(error.contains("already exists") && error.contains("overwrite = true"), "{error}");

        let committer = OutputCommitter::setup(&output, true, app).unwrap();
        write_part(&committer, reduce(0, 0), "new\n");
        committer.commit(&[reduce(0, 0)]).unwrap();
        assert_eq!(listing(&output), ["_SUCCESS", "part-r-00000"], "the old output is replaced");

        let fresh = dir.path().join("fresh");
        let aborted = OutputCommitter::setup(&fresh, false, app).unwrap();
        write_part(&aborted, reduce(0, 0), "partial\n");
        aborted.abort();
        assert!(!fresh.exists());
        assert_eq!(listing(dir.path()), ["out"]);
    }
}
