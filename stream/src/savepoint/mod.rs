//! Savepoints: checkpoints the user owns (Flink's savepoints). One is a directory (or an
//! object-store prefix) `<dir>/savepoint-<app_id>-<id>/` holding a copy of every instance's snapshot file of one
//! complete checkpoint (`<operator>-<n>.state`, the snapshot format of `state.rs`) and
//! `_metadata.json`, a stable, versioned description of them: the operator graph (names, kinds,
//! parallelism, inputs), `key_groups`, each operator's files with the key groups they hold
//! (sources' files hold their offsets), and the sink commits of that checkpoint. Nothing ever
//! deletes it: checkpoint retention only prunes `<checkpoint_dir>/<app_id>/chk-*`.
//!
//! A job started from one (`from_savepoint`) maps state by operator *name*: operators it adds
//! start empty; a keyed operator may have any parallelism (its key groups are split anew, so
//! `key_groups` must not change); a source keeps its parallelism (its offsets are per
//! partition); state the job would drop (an operator removed, changed to another kind, or a
//! non-keyed one shrunk) is refused unless `allow_dropped_state`. This module is the format and
//! that mapping, pure; `files` reads and writes savepoints as the AM's account.

mod files;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use spindle_protocol::{OperatorKind, SpecError, StreamSpec};

use crate::checkpoints::{CheckpointMeta, SnapshotFile};
use crate::control::Range;
use crate::counts::RecordCounts;
use crate::location::Location;
use crate::operator::Commit;

pub use files::{inspect, prepare, read, write};

/// The version of `_metadata.json` this build writes and the only one it reads. Raise it when a
/// reader of the previous version could misread a new savepoint.
pub const FORMAT_VERSION: u32 = 1;
/// The metadata file of a savepoint.
pub const METADATA: &str = "_metadata.json";

/// `_metadata.json` of a savepoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavepointMeta {
    pub format_version: u32,
    /// The job it was taken of.
    pub app_id: String,
    /// The request's id (`spindle savepoint` prints the path it makes of it).
    pub savepoint_id: u64,
    /// The checkpoint it is a copy of: a job started from it numbers its checkpoints after it.
    pub checkpoint: u64,
    /// The deployment epoch of that checkpoint: a job started from it stages sink files under
    /// later epochs (and cleans what earlier ones left).
    pub epoch: u64,
    pub taken_at_ms: u64,
    /// Taken by a stop: the job ended with it, its sinks committed through it.
    pub stopped: bool,
    pub key_groups: u32,
    /// Every operator of the job, in spec order (fused transforms too: they have no state).
    pub operators: Vec<SavepointOperator>,
    /// The sink commits of its checkpoint: a job started from it runs them again first
    /// (idempotent), in case the job it came from ended before they ran.
    pub commits: Vec<Commit>,
    /// The operators' totals at its checkpoint (for the record: a job started from it counts
    /// from 0, as a new job).
    #[serde(default)]
    pub counters: BTreeMap<String, RecordCounts>,
}

/// One operator of the job a savepoint was taken of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavepointOperator {
    pub name: String,
    pub kind: OperatorKind,
    pub parallelism: u32,
    /// Its state is split by key group.
    pub keyed: bool,
    /// Runs fused into the edge from its input: no instances of its own, no state.
    pub fused: bool,
    #[serde(default)]
    pub input: Vec<String>,
    /// One snapshot file per instance.
    #[serde(default)]
    pub state: Vec<SavepointFile>,
}

/// One instance's snapshot file in a savepoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavepointFile {
    /// The instance's index (a source's partition).
    pub index: u32,
    /// The key groups it holds, `[start, end)` (all of them for operators that are not keyed).
    pub key_groups: Range,
    /// Its name in the savepoint's directory.
    pub file: String,
    /// Bytes of state in it (0: the instance had none).
    pub bytes: u64,
}

/// A snapshot file of a checkpoint to copy into a savepoint under a name.
#[derive(Debug, Clone, PartialEq)]
pub struct FileCopy {
    /// The checkpoint's file: a path or an `s3://` URL.
    pub from: String,
    pub name: String,
}

/// Who asked for a savepoint and how.
#[derive(Debug, Clone)]
pub struct Taken {
    pub app_id: String,
    pub savepoint_id: u64,
    pub stopped: bool,
    pub taken_at_ms: u64,
}

impl SavepointMeta {
    /// The savepoint of job `spec` at complete checkpoint `meta`, and the files to copy into
    /// it (`bytes` are filled in as they are copied).
    pub fn of_checkpoint(spec: &StreamSpec, meta: &CheckpointMeta, taken: Taken) -> (SavepointMeta, Vec<FileCopy>) {
        let mut copies = Vec::new();
        let operators = spec
            .operators
            .iter()
            .map(|operator| {
                let mut files: Vec<&SnapshotFile> = meta.stages.get(&operator.name).into_iter().flatten().collect();
                files.sort_by_key(|file| (file.index, file.range));
                let state = files
                    .into_iter()
                    .enumerate()
                    .map(|(n, file)| {
                        let name = format!("{}-{n}.state", operator.name);
                        copies.push(FileCopy {
                            from: file.path.clone(),
                            name: name.clone(),
                        });
                        SavepointFile {
                            index: file.index,
                            key_groups: file.range,
                            file: name,
                            bytes: 0,
                        }
                    })
                    .collect();
                SavepointOperator {
                    name: operator.name.clone(),
                    kind: operator.kind(),
                    parallelism: meta.parallelism.get(&operator.name).copied().unwrap_or(operator.parallelism),
                    keyed: operator.is_keyed(),
                    fused: operator.is_fused(),
                    input: operator.input.clone(),
                    state,
                }
            })
            .collect();
        let savepoint = SavepointMeta {
            format_version: FORMAT_VERSION,
            app_id: taken.app_id,
            savepoint_id: taken.savepoint_id,
            checkpoint: meta.id,
            epoch: meta.epoch,
            taken_at_ms: taken.taken_at_ms,
            stopped: taken.stopped,
            key_groups: spec.key_groups,
            operators,
            commits: meta.commits.clone(),
            counters: meta.counters.clone(),
        };
        (savepoint, copies)
    }

    /// What job `spec` restores from when it starts from this savepoint (in `dir`): a
    /// checkpoint of the savepoint's files mapped onto its operators by name, or why it cannot
    /// start from it (the field of `spec` to change, and why).
    pub fn restore_point(&self, dir: &Location, spec: &StreamSpec) -> Result<CheckpointMeta, SpecError> {
        let refuse = |field: String, reason: String| SpecError { field, reason };
        if self.format_version != FORMAT_VERSION {
            return Err(refuse(
                "stream.from_savepoint".to_owned(),
                format!(
                    "savepoint format version {} is not understood by this Spindle, which reads version {FORMAT_VERSION}",
                    self.format_version
                ),
            ));
        }
        if self.key_groups != spec.key_groups {
            return Err(refuse(
                "stream.key_groups".to_owned(),
                format!(
                    "{} differs from the savepoint's {}: keyed state is split by key group, so key_groups must stay as it was (set key_groups = {})",
                    spec.key_groups, self.key_groups, self.key_groups
                ),
            ));
        }
        let mut stages: BTreeMap<String, Vec<SnapshotFile>> = BTreeMap::new();
        for saved in &self.operators {
            let kept = self.mapped_files(saved, dir, spec)?;
            if !kept.is_empty() {
                stages.insert(saved.name.clone(), kept);
            }
        }
        let parallelism = spec
            .operators
            .iter()
            .filter(|operator| !operator.is_fused())
            .map(|operator| (operator.name.clone(), operator.parallelism))
            .collect();
        Ok(CheckpointMeta {
            id: self.checkpoint,
            completed_at_ms: self.taken_at_ms,
            duration_ms: 0,
            size_bytes: self.operators.iter().flat_map(|op| &op.state).map(|file| file.bytes).sum(),
            parallelism,
            stages,
            commits: self.commits.clone(),
            last: false,
            // A new job counts from 0.
            counters: BTreeMap::new(),
            epoch: self.epoch,
        })
    }

    /// The files of `saved` that operator of the same name in `spec` restores from; refuses
    /// state that would be dropped (unless the spec allows it) or misread.
    fn mapped_files(&self, saved: &SavepointOperator, dir: &Location, spec: &StreamSpec) -> Result<Vec<SnapshotFile>, SpecError> {
        let mut files = Vec::with_capacity(saved.state.len());
        for file in &saved.state {
            let corrupt = |what: String| SpecError {
                field: "stream.from_savepoint".to_owned(),
                reason: format!("the savepoint's metadata is corrupt: operator `{}`: {what}", saved.name),
            };
            let plain = Path::new(&file.file).file_name().is_some_and(|name| name == file.file.as_str());
            if !plain {
                return Err(corrupt(format!("`{}` is not a file name inside the savepoint", file.file)));
            }
            if file.key_groups.0 >= file.key_groups.1 || file.key_groups.1 > self.key_groups {
                return Err(corrupt(format!("key groups {:?} out of 0..{}", file.key_groups, self.key_groups)));
            }
        }
        let stateful = saved.state.iter().any(|file| file.bytes > 0);
        let state_bytes: u64 = saved.state.iter().map(|file| file.bytes).sum();
        let position = spec.operators.iter().position(|operator| operator.name == saved.name);
        let dropped = |field: String, why: String| -> Result<Vec<SnapshotFile>, SpecError> {
            if spec.allow_dropped_state {
                tracing::warn!(operator = %saved.name, bytes = state_bytes, "dropping the savepoint's state of an operator (allow_dropped_state)");
                return Ok(Vec::new());
            }
            Err(SpecError {
                field,
                reason: format!(
                    "{why}: its {state_bytes} bytes of state in the savepoint would be dropped; set allow_dropped_state = true to start without them"
                ),
            })
        };
        let Some(position) = position else {
            if !stateful {
                return Ok(files);
            }
            return dropped(
                "stream.operators".to_owned(),
                format!(
                    "the savepoint's operator `{}` ({}) is not in this job (state is mapped by operator name)",
                    saved.name,
                    saved.kind.as_str()
                ),
            );
        };
        let operator = &spec.operators[position];
        let at = |field: &str| format!("stream.operators[{position}].{field}");
        if operator.kind() != saved.kind || operator.is_keyed() != saved.keyed || operator.is_fused() {
            if !stateful {
                return Ok(files);
            }
            let now = if operator.is_fused() {
                format!("a {} fused into its input's edge", operator.kind().as_str())
            } else {
                format!("{} {}", if operator.is_keyed() { "a keyed" } else { "a" }, operator.kind().as_str())
            };
            return dropped(
                at("kind"),
                format!(
                    "`{}` was {} {} in the savepoint and is {now} now, which cannot read that state (give it another name to start it empty)",
                    saved.name,
                    if saved.keyed { "a keyed" } else { "a" },
                    saved.kind.as_str()
                ),
            );
        }
        if saved.kind.is_source() && stateful && operator.parallelism != saved.parallelism {
            return Err(SpecError {
                field: at("parallelism"),
                reason: format!(
                    "{} differs from the savepoint's {}: a source's parallelism is its number of partitions and its offsets are per partition (set parallelism = {})",
                    operator.parallelism, saved.parallelism, saved.parallelism
                ),
            });
        }
        let lost: u64 = saved
            .state
            .iter()
            .filter(|file| !saved.keyed && file.index >= operator.parallelism)
            .map(|file| file.bytes)
            .sum();
        if lost > 0 && !spec.allow_dropped_state {
            return Err(SpecError {
                field: at("parallelism"),
                reason: format!(
                    "{} is less than the savepoint's {}: `{}` is not keyed, so the state of its instances {}.. would be dropped ({lost} bytes); keep parallelism = {} or set allow_dropped_state = true",
                    operator.parallelism, saved.parallelism, saved.name, operator.parallelism, saved.parallelism
                ),
            });
        }
        files.extend(
            saved
                .state
                .iter()
                .filter(|file| saved.keyed || file.index < operator.parallelism)
                .map(|file| SnapshotFile {
                    index: file.index,
                    range: file.key_groups,
                    path: dir.child(&file.file).to_string(),
                    // `bytes` counts state, not the file's size: only its presence is checked.
                    bytes: 0,
                }),
        );
        Ok(files)
    }
}

/// The directory of savepoint `id` of app `app_id` under `dir`.
pub fn savepoint_path(dir: &Location, app_id: &str, id: u64) -> Location {
    dir.child(&format!("savepoint-{app_id}-{id}"))
}
