//! App and attempt lifecycle: submit, kill, the AM's register and finish (allocate has a file
//! of its own), and what happens when an AM container ends.

use std::collections::BTreeMap;

use spindle_protocol::{
    AppId, AppState, ContainerGrant, ContainerId, ContainerStatus, ExitReason, FinalStatus, JobKind, JobSpec, LaunchRequest, LaunchSpec,
    RegisterAmReply, RegisterAmRequest, Resources, SpecError, env,
};

use super::transitions;
use super::{AmLaunch, App, Cluster};
use crate::records::{AppRecord, AttemptRecord};

/// Who is asking: the user an API token maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user: String,
    pub admin: bool,
    /// The Unix account the user's containers run as (`RmConfig::unix_account`); `None`: the
    /// user may not run anything.
    pub unix_user: Option<String>,
}

/// Why an app operation was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    InvalidSpec(#[from] SpecError),
    #[error("application {0} not found")]
    NotFound(AppId),
    #[error("container {0} not found")]
    ContainerNotFound(ContainerId),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    /// A control names nothing the app has (such as an operator; the message lists those it has).
    #[error("{0}")]
    ControlTargetNotFound(String),
    /// A request that is not a job spec named a bad field (e.g. a scale's `parallelism`).
    #[error(transparent)]
    InvalidRequest(SpecError),
}

/// The AM container's copy of its job spec, in its working dir.
const AM_JOB_SPEC_FILE: &str = "job-spec.json";

/// Ids reserved by `new-application` and not used yet, at most (an abandoned one costs nothing
/// but memory).
const MAX_RESERVED_IDS: usize = 10_000;

/// More AM attempts than this are never made, even when failures do not count (a node that
/// keeps dying under the AM must not loop forever).
const ATTEMPT_HARD_LIMIT_EXTRA: u32 = 10;

impl Cluster {
    /// Accepts a job: checks it against the cluster, gives it an id, queues its AM container.
    pub fn submit(&mut self, caller: &Caller, spec: JobSpec, now_ms: u64) -> Result<AppId, AppError> {
        self.submit_once(caller, spec, None, now_ms)
    }

    /// Submits, unless this user already submitted with idempotency `key`: then the app that
    /// submission made, unchanged (the spec is not compared: the key is the client's promise
    /// that it is the same submission).
    pub fn submit_once(&mut self, caller: &Caller, spec: JobSpec, key: Option<String>, now_ms: u64) -> Result<AppId, AppError> {
        self.submit_as(caller, spec, key, None, now_ms)
    }

    /// Hands out an app id for a later `submit_reserved` (YARN's `new-application`). At most
    /// `MAX_RESERVED_IDS` wait at once; the oldest are forgotten first.
    pub fn reserve_app_id(&mut self, caller: &Caller) -> AppId {
        let app_id = AppId {
            cluster_ts: self.started_at_ms,
            seq: self.next_app_seq,
        };
        self.next_app_seq += 1;
        self.reserved_app_ids.insert(app_id, caller.user.clone());
        while self.reserved_app_ids.len() > MAX_RESERVED_IDS {
            self.reserved_app_ids.pop_first();
        }
        app_id
    }

    /// Submits under an id `reserve_app_id` gave this caller.
    pub fn submit_reserved(&mut self, caller: &Caller, spec: JobSpec, app_id: AppId, now_ms: u64) -> Result<AppId, AppError> {
        if self.reserved_app_ids.get(&app_id) != Some(&caller.user) {
            return Err(AppError::InvalidRequest(SpecError {
                field: "application-id".to_owned(),
                reason: format!(
                    "{app_id} was not handed out to {} by new-application (or the RM restarted since): ask for a new one",
                    caller.user
                ),
            }));
        }
        let submitted = self.submit_as(caller, spec, None, Some(app_id), now_ms)?;
        self.reserved_app_ids.remove(&app_id);
        Ok(submitted)
    }

    fn submit_as(
        &mut self,
        caller: &Caller,
        spec: JobSpec,
        key: Option<String>,
        reserved: Option<AppId>,
        now_ms: u64,
    ) -> Result<AppId, AppError> {
        if let Some(key) = &key
            && let Some(app_id) = self.submission_keys.get(&(caller.user.clone(), key.clone()))
        {
            return Ok(*app_id);
        }
        spec.validate()?;
        let Some(unix_user) = caller.unix_user.clone() else {
            return Err(AppError::InvalidSpec(SpecError {
                field: "user".to_owned(),
                reason: format!(
                    "user {} maps to no Unix account to run containers as: give it `unix_user` in the RM config, or set `default_unix_user`",
                    caller.user
                ),
            }));
        };
        self.check_queue_access(caller, &spec.queue)?;
        self.check_fits_some_node("am", spec.am)?;
        for (field, shape) in spec.container_shapes() {
            self.check_fits_some_node(field, shape)?;
        }
        let app_id = reserved.unwrap_or_else(|| {
            self.next_app_seq += 1;
            AppId {
                cluster_ts: self.started_at_ms,
                seq: self.next_app_seq - 1,
            }
        });
        let mut record = AppRecord {
            app_id,
            user: caller.user.clone(),
            unix_user,
            spec,
            state: AppState::New,
            final_status: FinalStatus::Undefined,
            diagnostics: String::new(),
            progress: 0.0,
            attempts: Vec::new(),
            submitted_at_ms: now_ms,
            started_at_ms: None,
            finished_at_ms: None,
            submission_key: key.clone(),
            requests: Default::default(),
            last_request: 0,
        };
        if let Some(key) = key {
            self.submission_keys.insert((caller.user.clone(), key), app_id);
        }
        for next in [AppState::Submitted, AppState::Accepted] {
            transitions::transition(&record.app_id, &mut record.state, next);
        }
        record.diagnostics = "waiting for a container for the application master".to_owned();
        self.apps.insert(app_id, App::new(record));
        self.start_attempt(app_id, now_ms);
        self.schedule_soon(now_ms);
        Ok(app_id)
    }

    /// The queue must be a leaf of the current tree, and the caller allowed to submit to it
    /// (listed in its `submit_users`, an admin of it or of a parent, or a cluster admin).
    fn check_queue_access(&self, caller: &Caller, queue: &str) -> Result<(), AppError> {
        let queues = &self.settings.queues;
        let Some(leaf) = queues.leaf(queue) else {
            let leaves: Vec<&str> = queues.leaf_names().collect();
            return Err(AppError::InvalidSpec(SpecError {
                field: "queue".to_owned(),
                reason: format!("`{queue}` is not a leaf queue of this cluster; leaf queues: {}", leaves.join(", ")),
            }));
        };
        if caller.admin || queues.can_submit(leaf, &caller.user) {
            return Ok(());
        }
        Err(AppError::Forbidden(format!(
            "user {} may not submit to queue `{queue}`: not in its submit_users and not an admin of it",
            caller.user
        )))
    }

    /// Whether `caller` may act on an app of `owner` in `queue`: its owner, an admin of the
    /// queue (or a parent), or a cluster admin.
    pub fn may_administer_app(&self, caller: &Caller, owner: &str, queue: &str) -> bool {
        caller.admin
            || caller.user == owner
            || self
                .settings
                .queues
                .leaf(queue)
                .is_some_and(|leaf| self.settings.queues.can_administer(leaf, &caller.user))
    }

    /// Refuses a container size (of spec section `field`) that no node could hold even empty.
    /// With no nodes yet the job waits for one, as YARN does.
    fn check_fits_some_node(&self, field: &str, ask: Resources) -> Result<(), AppError> {
        let mut capacities = self
            .nodes
            .values()
            .filter(|node| node.record.state.is_active())
            .map(|node| node.record.capacity)
            .peekable();
        if capacities.peek().is_none() || capacities.any(|capacity| capacity.fits(&ask)) {
            return Ok(());
        }
        let largest = self.max_container();
        let (field, reason) = if ask.vcores > largest.vcores {
            (
                format!("{field}.vcores"),
                format!("{} is more than any node has (largest: {})", ask.vcores, largest.vcores),
            )
        } else if ask.memory_mb > largest.memory_mb {
            (
                format!("{field}.memory_mb"),
                format!("{} is more than any node has (largest: {})", ask.memory_mb, largest.memory_mb),
            )
        } else {
            (
                field.to_owned(),
                format!("no node has room for a container of {ask}: some have the vcores, others the memory"),
            )
        };
        Err(AppError::InvalidSpec(SpecError { field, reason }))
    }

    /// Kills an app: it is KILLED at once; its containers are stopped by their agents.
    pub fn kill_app(&mut self, caller: &Caller, app_id: AppId, now_ms: u64) -> Result<(), AppError> {
        let app = self.apps.get(&app_id).ok_or(AppError::NotFound(app_id))?;
        if let Some(refused) = self.kill_refusal(caller, &app.record) {
            return Err(refused);
        }
        self.end_app(
            app_id,
            AppState::Killed,
            FinalStatus::Killed,
            format!("killed by user {}", caller.user),
            None,
            now_ms,
        );
        Ok(())
    }

    /// Why `caller` may not kill the app of `record` (in memory, or read back from the store
    /// after it left memory), if it may not: not its owner nor an admin, or it already ended.
    pub fn kill_refusal(&self, caller: &Caller, record: &AppRecord) -> Option<AppError> {
        let app_id = record.app_id;
        if !self.may_administer_app(caller, &record.user, &record.spec.queue) {
            return Some(AppError::Forbidden(format!(
                "user {} may not kill {app_id}: it belongs to {}; only its owner, an admin of queue `{}` or a cluster admin may",
                caller.user, record.user, record.spec.queue
            )));
        }
        record
            .state
            .is_terminal()
            .then(|| AppError::Conflict(format!("{app_id} already ended as {}", record.state.as_str())))
    }

    /// Moves an app to a terminal state and stops everything it still runs but `keep` (the AM
    /// container of an AM that finished the app, which exits by itself).
    pub(super) fn end_app(
        &mut self,
        app_id: AppId,
        state: AppState,
        final_status: FinalStatus,
        diagnostics: String,
        keep: Option<ContainerId>,
        now_ms: u64,
    ) {
        let Some(app) = self.apps.get_mut(&app_id) else { return };
        transitions::transition(&app.record.app_id, &mut app.record.state, state);
        app.record.final_status = final_status;
        app.record.diagnostics = diagnostics.clone();
        app.record.finished_at_ms = Some(now_ms);
        if final_status == FinalStatus::Succeeded {
            app.record.progress = 1.0;
        }
        if let Some(attempt) = app.record.attempts.last_mut()
            && attempt.finished_at_ms.is_none()
        {
            attempt.finished_at_ms = Some(now_ms);
        }
        app.asks.clear();
        let live: Vec<ContainerId> = app.live.iter().copied().filter(|id| Some(*id) != keep).collect();
        self.mark_app(app_id);
        self.outbox.wake.insert(app_id);
        self.outbox.ended.push(app_id);
        self.ended.push_back(app_id);
        let reason = if state == AppState::Killed {
            "application killed"
        } else {
            "application ended"
        };
        for container_id in live {
            self.kill_container(container_id, ExitReason::KilledByRm, reason.to_owned(), now_ms);
        }
    }

    /// Opens the next AM attempt; its AM container is placed by the next scheduling round.
    fn start_attempt(&mut self, app_id: AppId, now_ms: u64) {
        let Some(app) = self.apps.get_mut(&app_id) else { return };
        let attempt = app.record.attempts.len() as u32 + 1;
        app.record.attempts.push(AttemptRecord {
            attempt,
            am_container: None,
            node_id: None,
            registered: false,
            started_at_ms: now_ms,
            finished_at_ms: None,
            diagnostics: String::new(),
            counts_as_failure: false,
        });
        app.asks.clear();
        app.undelivered.clear();
        app.completions.clear();
        app.last_reply = None;
        self.mark_app(app_id);
        // A new attempt wants an AM container.
        self.round_due = true;
    }

    /// The current attempt number, if the app is live.
    pub(super) fn current_attempt(&self, app_id: AppId) -> Option<u32> {
        let app = self.apps.get(&app_id)?;
        if app.record.state.is_terminal() {
            return None;
        }
        app.record.attempts.last().map(|attempt| attempt.attempt)
    }

    /// The launch of an AM container: `spindle app-master` for built-in kinds, the user's
    /// command for `custom`. The AM learns its job and its token from the environment.
    pub(super) fn am_launch(&self, app_id: AppId, container_id: ContainerId, node_address: String) -> Option<AmLaunch> {
        let app = self.apps.get(&app_id)?;
        let container = self.containers.get(&container_id)?;
        let spec = &app.record.spec;
        let (command, mut launch_env) = match (&spec.kind, &spec.custom) {
            (JobKind::Custom, Some(custom)) => (custom.command.clone(), custom.env.clone()),
            _ => (vec!["spindle".to_owned(), "app-master".to_owned()], Default::default()),
        };
        launch_env.insert(
            env::AM_TOKEN.to_owned(),
            self.settings.authority.secret().am_token(app_id, container_id.attempt),
        );
        // In a file, not the environment: one variable is limited to 128 KiB by the kernel.
        launch_env.insert(env::JOB_SPEC_FILE.to_owned(), AM_JOB_SPEC_FILE.to_owned());
        let files = BTreeMap::from([(
            AM_JOB_SPEC_FILE.to_owned(),
            serde_json::to_string(spec).expect("job specs serialize"),
        )]);
        let token = self.settings.authority.sign_container(
            ContainerGrant {
                container_id,
                node_id: container.record.node_id.clone(),
                resources: container.record.resources,
                user: app.record.unix_user.clone(),
            },
            container.record.launch_deadline_ms,
        );
        Some(AmLaunch {
            node_address,
            request: LaunchRequest {
                token,
                launch: LaunchSpec {
                    command,
                    env: launch_env,
                    files,
                },
            },
        })
    }

    /// The AM has started: the app is RUNNING.
    pub fn register_am(&mut self, request: &RegisterAmRequest, now_ms: u64) -> Result<RegisterAmReply, AppError> {
        self.check_attempt(request.app_id, request.attempt)?;
        let max_container = self.max_container();
        let app = self.apps.get_mut(&request.app_id).expect("checked above");
        let attempt = app.record.attempts.last_mut().expect("a live app has an attempt");
        if !attempt.registered {
            attempt.registered = true;
            if app.record.state == AppState::Accepted {
                transitions::transition(&app.record.app_id, &mut app.record.state, AppState::Running);
            }
            app.record.started_at_ms.get_or_insert(now_ms);
            app.record.diagnostics.clear();
            self.dirty.apps.insert(request.app_id);
        }
        let live_containers = app.live.iter().copied().filter(|id| id.attempt == request.attempt).collect();
        Ok(RegisterAmReply {
            queue: app.record.spec.queue.clone(),
            max_container,
            live_containers,
        })
    }

    /// Refuses calls from an AM attempt that is not the app's current one.
    pub(super) fn check_attempt(&self, app_id: AppId, attempt: u32) -> Result<(), AppError> {
        let app = self.apps.get(&app_id).ok_or(AppError::NotFound(app_id))?;
        match self.current_attempt(app_id) {
            Some(current) if current == attempt => Ok(()),
            Some(current) => Err(AppError::Conflict(format!(
                "attempt {attempt} of {app_id} is not current (current: {current})"
            ))),
            None => Err(AppError::Conflict(format!(
                "{app_id} already ended as {}",
                app.record.state.as_str()
            ))),
        }
    }

    /// The AM reports the end of the app.
    pub fn finish_am(&mut self, request: &spindle_protocol::FinishAmRequest, now_ms: u64) -> Result<(), AppError> {
        self.check_attempt(request.app_id, request.attempt)?;
        let (state, final_status) = match request.final_status {
            FinalStatus::Succeeded => (AppState::Finished, FinalStatus::Succeeded),
            FinalStatus::Killed => (AppState::Killed, FinalStatus::Killed),
            FinalStatus::Failed | FinalStatus::Undefined => (AppState::Failed, FinalStatus::Failed),
        };
        let state = if state == AppState::Finished && self.apps[&request.app_id].record.state == AppState::Accepted {
            // An AM that finishes without registering still ends the app; pass through RUNNING.
            let app = self.apps.get_mut(&request.app_id).expect("checked above");
            transitions::transition(&app.record.app_id, &mut app.record.state, AppState::Running);
            state
        } else {
            state
        };
        let am_container = self.apps[&request.app_id]
            .record
            .attempts
            .last()
            .and_then(|attempt| attempt.am_container);
        self.end_app(
            request.app_id,
            state,
            final_status,
            request.diagnostics.clone(),
            am_container,
            now_ms,
        );
        Ok(())
    }

    /// The AM container of the current attempt ended. Unless the AM finished the app first,
    /// that attempt failed: start another, or fail the app when attempts run out.
    pub(super) fn am_container_ended(&mut self, app_id: AppId, status: &ContainerStatus, now_ms: u64) {
        let Some(app) = self.apps.get_mut(&app_id) else { return };
        let is_current = app.record.attempts.last().and_then(|attempt| attempt.am_container) == Some(status.container_id);
        if app.record.state.is_terminal() || !is_current {
            return;
        }
        let reason = status.exit_reason.unwrap_or(ExitReason::Failed);
        let counts = !matches!(
            reason,
            ExitReason::NodeLost | ExitReason::Preempted | ExitReason::Expired | ExitReason::KilledByRm
        );
        let code = status.exit_code.map(|code| format!(" with code {code}")).unwrap_or_default();
        let diagnostics = format!(
            "AM container {} exited{code} ({reason:?}) before the application finished: {}",
            status.container_id,
            status.diagnostics.trim()
        );
        let attempt = app.record.attempts.last_mut().expect("checked above");
        attempt.finished_at_ms = Some(now_ms);
        attempt.diagnostics = diagnostics.clone();
        attempt.counts_as_failure = counts;
        let failures = app.record.attempts.iter().filter(|attempt| attempt.counts_as_failure).count() as u32;
        let total = app.record.attempts.len() as u32;
        let max_attempts = app.record.spec.max_attempts;
        self.dirty.apps.insert(app_id);
        if failures >= max_attempts || total >= max_attempts + ATTEMPT_HARD_LIMIT_EXTRA {
            let summary = format!("application master failed {total} time(s) (max_attempts = {max_attempts}); last: {diagnostics}");
            self.end_app(app_id, AppState::Failed, FinalStatus::Failed, summary, None, now_ms);
            return;
        }
        // As YARN does by default, a new attempt starts clean: the old attempt's containers go.
        let leftovers: Vec<ContainerId> = self.apps[&app_id].live.iter().copied().collect();
        for container_id in leftovers {
            self.kill_container(
                container_id,
                ExitReason::KilledByRm,
                "its application master attempt failed".to_owned(),
                now_ms,
            );
        }
        let app = self.apps.get_mut(&app_id).expect("checked above");
        transitions::transition(&app.record.app_id, &mut app.record.state, AppState::Accepted);
        app.record.diagnostics = format!("attempt {total} failed; starting attempt {}: {diagnostics}", total + 1);
        self.start_attempt(app_id, now_ms);
    }

    /// Whether the app exists and who owns it (for access checks on reads).
    pub fn app_owner(&self, app_id: AppId) -> Option<&str> {
        self.apps.get(&app_id).map(|app| app.record.user.as_str())
    }
}
