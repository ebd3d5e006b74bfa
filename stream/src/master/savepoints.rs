//! Savepoints as the coordinator takes them: a request (from the RM's app requests, checked
//! and its directory made by the I/O) is queued, taken as the next checkpoint at once, and once
//! that checkpoint is complete its files are copied into the savepoint (by the committer, before
//! the checkpoint's commits run and before any later prune). A stop request also tells the
//! sources to stop at its barrier: nothing after it is read, the sinks commit what came before,
//! and the job ends SUCCEEDED once the savepoint is written.
//!
//! ```text
//! Queued ──(no rescale, no checkpoint in flight)──► Triggered(n) ──(n complete)──► Writing(n)
//!   ▲                                                   │                               │
//!   └──── n abandoned (a restart cleared it) ───────────┘        written ──► Completed ◄┘
//!                                                                failed  ──► Failed
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use spindle_protocol::{SavepointState, SavepointStatus, now_ms, parse_savepoint_request, savepoint_location};
use spindle_storage::S3Settings;

use super::coordinator::{Coordinator, Effect, Phase};
use crate::checkpoints::CheckpointMeta;
use crate::location::Location;
use crate::savepoint::{SavepointMeta, Taken};

/// A savepoint request as the AM's I/O found it.
#[derive(Debug)]
pub struct SavepointAsk {
    pub id: u64,
    /// The savepoint's directory.
    pub path: Location,
    pub stop: bool,
    /// Its directory is ready (`Ok(None)`), holds the savepoint already (an earlier attempt
    /// took it), or cannot be used (why).
    pub found: Result<Option<SavepointMeta>, String>,
}

/// Where one savepoint is.
#[derive(Debug, Clone, PartialEq)]
enum Stage {
    Queued,
    Triggered(u64),
    Writing(u64),
    Completed { checkpoint: u64, at_ms: u64 },
    Failed { checkpoint: Option<u64>, error: String },
}

#[derive(Debug, Clone)]
struct Entry {
    path: Location,
    stop: bool,
    stage: Stage,
}

/// The savepoints asked of this job, by request id.
#[derive(Debug, Default)]
pub struct Savepoints {
    entries: BTreeMap<u64, Entry>,
}

impl Savepoints {
    /// Whether request `id` was handed over already (the RM repeats requests in every reply).
    pub fn knows(&self, id: u64) -> bool {
        self.entries.contains_key(&id)
    }

    /// A stop is under way: its barrier went out, so no other checkpoint or rescale starts.
    pub fn stopping(&self) -> bool {
        self.entries
            .values()
            .any(|entry| entry.stop && matches!(entry.stage, Stage::Triggered(_) | Stage::Writing(_)))
    }

    /// A savepoint waits for its turn or a stop is under way: no rescale starts before them.
    pub fn holds_rescales(&self) -> bool {
        self.stopping() || self.entries.values().any(|entry| entry.stage == Stage::Queued)
    }

    /// Whether checkpoint `checkpoint` is a stop's: its sources stop after its barrier.
    pub fn stops_at(&self, checkpoint: u64) -> bool {
        self.entries
            .values()
            .any(|entry| entry.stop && entry.stage == Stage::Triggered(checkpoint))
    }

    /// What the app report shows of each.
    pub fn statuses(&self) -> Vec<SavepointStatus> {
        self.entries
            .iter()
            .map(|(&id, entry)| {
                let (state, checkpoint, completed_at_ms, error) = match &entry.stage {
                    Stage::Queued => (SavepointState::InProgress, None, None, None),
                    Stage::Triggered(n) | Stage::Writing(n) => (SavepointState::InProgress, Some(*n), None, None),
                    Stage::Completed { checkpoint, at_ms } => (SavepointState::Completed, Some(*checkpoint), Some(*at_ms), None),
                    Stage::Failed { checkpoint, error } => (SavepointState::Failed, *checkpoint, None, Some(error.clone())),
                };
                SavepointStatus {
                    id,
                    state,
                    path: entry.path.to_string(),
                    stop: entry.stop,
                    checkpoint,
                    completed_at_ms,
                    error,
                }
            })
            .collect()
    }
}

/// The savepoint requests among the app's controls that the coordinator does not know yet,
/// each with its directory made (or found holding the savepoint already): the I/O the stream
/// AM does when a request arrives. The RM checked the directory's shape; it is checked again
/// here, where it is used.
pub(super) fn asks_from_controls(
    controls: &BTreeMap<String, serde_json::Value>,
    known: &Savepoints,
    default_dir: &Location,
    app_id: &str,
    s3: &S3Settings,
) -> Vec<SavepointAsk> {
    controls
        .iter()
        .filter_map(|(key, value)| parse_savepoint_request(key, value))
        .filter(|(id, _)| !known.knows(*id))
        .map(|(id, request)| {
            let base = match &request.dir {
                Some(dir) => savepoint_location("dir", dir)
                    .map_err(|err| err.to_string())
                    .and_then(|dir| Location::open(&dir, s3).map_err(|err| format!("dir: {err}"))),
                None => Ok(default_dir.clone()),
            };
            let (path, found) = match base {
                Ok(base) => {
                    let path = crate::savepoint::savepoint_path(&base, app_id, id);
                    let found = crate::savepoint::prepare(&path, s3);
                    (path, found)
                }
                Err(error) => (Location::Dir(PathBuf::from(request.dir.clone().unwrap_or_default())), Err(error)),
            };
            SavepointAsk {
                id,
                path,
                stop: request.stop,
                found,
            }
        })
        .collect()
}

impl Coordinator {
    /// New savepoint requests (each id once).
    pub fn on_savepoint_asks(&mut self, asks: Vec<SavepointAsk>, now: Instant) {
        self.now = now;
        for ask in asks {
            if self.savepoints.knows(ask.id) {
                continue;
            }
            let stage = match ask.found {
                Ok(None) => Stage::Queued,
                Err(error) => Stage::Failed { checkpoint: None, error },
                Ok(Some(meta)) => {
                    tracing::info!(savepoint = ask.id, path = %ask.path, "the savepoint was taken by an earlier attempt");
                    if ask.stop {
                        self.end_stopped(&ask.path, meta.checkpoint, meta.commits.clone());
                    }
                    Stage::Completed {
                        checkpoint: meta.checkpoint,
                        at_ms: meta.taken_at_ms,
                    }
                }
            };
            tracing::info!(savepoint = ask.id, path = %ask.path, stop = ask.stop, ?stage, "savepoint requested");
            self.savepoints.entries.insert(
                ask.id,
                Entry {
                    path: ask.path,
                    stop: ask.stop,
                    stage,
                },
            );
        }
    }

    /// Triggers the oldest queued savepoint when nothing else is in flight. `true` while a
    /// savepoint holds regular checkpoints back (it was just triggered, or a stop is under way).
    pub(super) fn maybe_trigger_savepoint(&mut self) -> bool {
        // A restart clears checkpoints in flight: their savepoints wait for the next one.
        for entry in self.savepoints.entries.values_mut() {
            if let Stage::Triggered(n) = entry.stage
                && !self.pending.contains_key(&n)
            {
                entry.stage = Stage::Queued;
            }
        }
        if self.sources_done {
            for entry in self.savepoints.entries.values_mut() {
                if entry.stage == Stage::Queued {
                    entry.stage = Stage::Failed {
                        checkpoint: None,
                        error: "the job's sources ended before the savepoint could be taken".to_owned(),
                    };
                }
            }
            return false;
        }
        if self.rescale.is_some() || !self.pending.is_empty() {
            return self.savepoints.stopping();
        }
        let Some((&id, _)) = self.savepoints.entries.iter().find(|(_, entry)| entry.stage == Stage::Queued) else {
            return self.savepoints.stopping();
        };
        let checkpoint = self.next_checkpoint;
        self.next_checkpoint += 1;
        let entry = self.savepoints.entries.get_mut(&id).expect("found above");
        entry.stage = Stage::Triggered(checkpoint);
        tracing::info!(savepoint = id, checkpoint, stop = entry.stop, "taking a savepoint");
        self.trigger(checkpoint);
        true
    }

    /// Checkpoint `meta` is complete: a savepoint triggered with it is copied out of it (queued
    /// before the checkpoint's commits, so before any prune can remove its files).
    pub(super) fn savepoint_on_complete(&mut self, meta: &CheckpointMeta) {
        let Some((&id, entry)) = self
            .savepoints
            .entries
            .iter_mut()
            .find(|(_, entry)| entry.stage == Stage::Triggered(meta.id))
        else {
            return;
        };
        entry.stage = Stage::Writing(meta.id);
        let taken = Taken {
            app_id: self.app_id.clone(),
            savepoint_id: id,
            stopped: entry.stop,
            taken_at_ms: now_ms(),
        };
        let (savepoint, copies) = SavepointMeta::of_checkpoint(&self.spec, meta, taken);
        self.effects.push(Effect::WriteSavepoint {
            id,
            dir: entry.path.clone(),
            meta: Box::new(savepoint),
            copies,
        });
    }

    /// The committer wrote savepoint `id` (or could not).
    pub fn on_savepoint_written(&mut self, id: u64, result: Result<(), String>, now: Instant) {
        self.now = now;
        let Some(entry) = self.savepoints.entries.get_mut(&id) else {
            return;
        };
        let Stage::Writing(checkpoint) = entry.stage else { return };
        let (path, stop) = (entry.path.clone(), entry.stop);
        match result {
            Ok(()) => {
                tracing::info!(savepoint = id, checkpoint, path = %path, "savepoint complete");
                entry.stage = Stage::Completed {
                    checkpoint,
                    at_ms: now_ms(),
                };
                if stop {
                    // Its checkpoint's commits were queued with it: the job ends after them.
                    self.end_stopped(&path, checkpoint, Vec::new());
                }
            }
            Err(error) => {
                tracing::warn!(savepoint = id, checkpoint, %error, "savepoint failed");
                entry.stage = Stage::Failed {
                    checkpoint: Some(checkpoint),
                    error: error.clone(),
                };
                if stop {
                    // The sources stopped at its barrier: start them again from there.
                    self.restart(&format!("the stop's savepoint could not be written ({error}); the job goes on"));
                }
            }
        }
    }

    /// The job ends after a stop's savepoint at `checkpoint`, once `commits` (and those queued
    /// before) ran.
    fn end_stopped(&mut self, path: &Location, checkpoint: u64, commits: Vec<crate::operator::Commit>) {
        if self.phase == Phase::Finishing {
            return;
        }
        self.phase = Phase::Finishing;
        self.effects.push(Effect::Commit(commits));
        self.effects.push(Effect::Finish {
            succeeded: true,
            diagnostics: format!("stopped with a savepoint at {path} (checkpoint {checkpoint}); its output is committed"),
        });
    }

    /// Savepoints that were not taken and now never will be.
    pub(super) fn fail_unstarted_savepoints(&mut self, why: &str) {
        for entry in self.savepoints.entries.values_mut() {
            if matches!(entry.stage, Stage::Queued | Stage::Triggered(_)) {
                entry.stage = Stage::Failed {
                    checkpoint: None,
                    error: why.to_owned(),
                };
            }
        }
    }

    /// The job starts from a savepoint (`from_savepoint`, having no checkpoint of its own): it
    /// restores from `point` and numbers its checkpoints and epochs after it.
    pub fn restore_from_savepoint(&mut self, point: CheckpointMeta) {
        debug_assert!(self.last_complete.is_none(), "own checkpoints come before a savepoint");
        self.next_checkpoint = self.next_checkpoint.max(point.id + 1);
        self.epoch = epoch_after(self.epoch, Some(point.epoch));
        self.next_id = self.epoch;
        self.last_complete = Some(point);
    }
}

/// The epoch of a deployment whose own would be `epoch`, restoring a checkpoint taken in
/// `restored`: in the attempt after that one's at least, so sink files it stages never take the
/// names of files an earlier attempt (or the job a savepoint came from) staged.
pub(super) fn epoch_after(epoch: u64, restored: Option<u64>) -> u64 {
    let after = restored.map_or(0, |restored| ((restored >> 32) + 1) << 32);
    epoch.max(after)
}
