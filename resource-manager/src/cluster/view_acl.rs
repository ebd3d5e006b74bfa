//! Who may see what of an app (YARN's view ACL).
//!
//! Everyone with an API token sees every app's state, queue, user, name, resources, progress and
//! timing: people who share a cluster need to see who holds what and why theirs waits. Only the
//! app's *viewers* — its owner, an admin of its queue (or a parent) and cluster admins, the same
//! people who may kill it — see the text that can carry its secrets: diagnostics (they quote AM
//! errors, commands and containers' stderr), the counters its AM names, and container logs.
//! The job spec (commands, env) is in no report at all, for anyone.
//!
//! How a report reads for anyone else: a hidden text is [`HIDDEN`] (an empty one stays empty,
//! so "no diagnostics" still reads as such); the AM's counters are left out (their names are
//! the AM's free text); stage and stream figures stay (they are progress, and `/metrics` shows
//! the stream figures to every token holder anyway).

use spindle_protocol::{AppId, AppReport, ContainerId, ContainerReport};

use super::{AppError, Caller, Cluster};

/// What a hidden text reads as for a caller who may not see it.
pub const HIDDEN: &str = "<hidden>";

/// Where a container runs: what the log proxy needs once the caller may read its logs.
#[derive(Debug, Clone)]
pub struct ContainerLocation {
    /// The owner of the container's app (for the proxy's log line).
    pub owner: String,
    pub node_id: spindle_protocol::NodeId,
    pub node_address: String,
}

/// A container of an app and where its node is (for log aggregation).
#[derive(Debug, Clone)]
pub struct ContainerPlace {
    pub container_id: ContainerId,
    pub node_id: spindle_protocol::NodeId,
    pub node_address: String,
    pub state: spindle_protocol::ContainerState,
}

/// Why `caller` may not read a container's logs, naming who may.
pub(super) fn logs_forbidden(caller: &Caller, container_id: ContainerId, app: &crate::records::AppRecord) -> AppError {
    AppError::Forbidden(format!(
        "user {} may not read the logs of {container_id}: its app belongs to {}; only its owner, an admin of queue `{}` or a cluster admin may",
        caller.user, app.user, app.spec.queue
    ))
}

impl Cluster {
    /// Every container of `app_id` the RM still knows, in id order, with its node.
    pub fn app_container_locations(&self, app_id: spindle_protocol::AppId) -> Vec<ContainerPlace> {
        self.containers_of(app_id)
            .map(|container| ContainerPlace {
                container_id: container.record.container_id,
                node_id: container.record.node_id.clone(),
                node_address: container.record.node_address.clone(),
                state: container.record.state,
            })
            .collect()
    }

    /// Whether `caller` may see the private parts of an app's reports and its containers' logs
    /// (false for an unknown app). The same people may act on it: see `may_administer_app`.
    pub(crate) fn may_view_app(&self, caller: &Caller, app_id: AppId) -> bool {
        self.apps
            .get(&app_id)
            .is_some_and(|app| self.may_administer_app(caller, &app.record.user, &app.record.spec.queue))
    }

    /// Where the logs of `container_id` are, if `caller` may read them: 404 for an unknown
    /// container, 403 (saying who may) for a caller who is not a viewer of its app.
    pub fn container_logs_location(&self, caller: &Caller, container_id: ContainerId) -> Result<ContainerLocation, AppError> {
        let not_found = || AppError::ContainerNotFound(container_id);
        let container = self.containers.get(&container_id).ok_or_else(not_found)?;
        let app = self.apps.get(&container_id.app).ok_or_else(not_found)?;
        if !self.may_view_app(caller, container_id.app) {
            return Err(logs_forbidden(caller, container_id, &app.record));
        }
        Ok(ContainerLocation {
            owner: app.record.user.clone(),
            node_id: container.record.node_id.clone(),
            node_address: container.record.node_address.clone(),
        })
    }
}

/// Hides what only the app's viewers may see of its report.
pub(super) fn redact_app_report(report: &mut AppReport) {
    hide(&mut report.diagnostics);
    for attempt in &mut report.attempts {
        hide(&mut attempt.diagnostics);
    }
    if let Some(detail) = &mut report.detail {
        detail.counters.clear();
    }
}

/// Hides what only the app's viewers may see of a container's report: its diagnostics, which
/// carry the tail of its stderr.
pub(super) fn redact_container_report(report: &mut ContainerReport) {
    hide(&mut report.diagnostics);
}

fn hide(text: &mut String) {
    if !text.is_empty() {
        HIDDEN.clone_into(text);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use spindle_protocol::{
        AppState, AttemptReport, ContainerState, ExitReason, FinalStatus, JobDetail, JobKind, NodeId, Resources, StageStatus, StreamDetail,
    };

    use super::*;

    fn app_report() -> AppReport {
        AppReport {
            app_id: AppId { cluster_ts: 1, seq: 1 },
            name: "wordcount".to_owned(),
            queue: "batch".to_owned(),
            user: "alice".to_owned(),
            kind: JobKind::Mapreduce,
            priority: 3,
            state: AppState::Failed,
            final_status: FinalStatus::Failed,
            diagnostics: "mapper `grep hunter2` failed: stderr: password rejected".to_owned(),
            progress: 0.5,
            max_attempts: 2,
            attempts: vec![
                AttemptReport {
                    attempt: 1,
                    am_container: None,
                    node_id: Some(NodeId("n1:8042".to_owned())),
                    started_at_ms: 10,
                    finished_at_ms: Some(20),
                    diagnostics: "AM container exited with code 1: hunter2".to_owned(),
                },
                AttemptReport {
                    attempt: 2,
                    am_container: None,
                    node_id: None,
                    started_at_ms: 30,
                    finished_at_ms: None,
                    diagnostics: String::new(),
                },
            ],
            allocated: Resources { vcores: 2, memory_mb: 512 },
            running_containers: 2,
            submitted_at_ms: 5,
            started_at_ms: Some(10),
            finished_at_ms: Some(40),
            detail: Some(
                JobDetail {
                    stages: vec![StageStatus {
                        name: "map".to_owned(),
                        total: 4,
                        running: 1,
                        succeeded: 2,
                    }],
                    counters: BTreeMap::from([("command `grep hunter2` lines".to_owned(), 7)]),
                    ..JobDetail::default()
                }
                .with_section(
                    spindle_protocol::STREAM_SECTION,
                    &StreamDetail {
                        restarts: 1,
                        ..StreamDetail::default()
                    },
                ),
            ),
        }
    }

    #[test]
    fn others_see_state_and_progress_but_no_diagnostics_or_counters() {
        let full = app_report();
        let mut redacted = full.clone();
        redact_app_report(&mut redacted);

        assert_eq!(redacted.diagnostics, HIDDEN);
        assert_eq!(redacted.attempts[0].diagnostics, HIDDEN);
        assert_eq!(redacted.attempts[1].diagnostics, "", "an empty text stays empty");
        let detail = redacted.detail.as_ref().expect("the detail stays");
        assert!(detail.counters.is_empty(), "counter names are the AM's free text");
        assert_eq!(detail.stages, full.detail.as_ref().unwrap().stages, "stages are progress");
        assert_eq!(
            detail.sections,
            full.detail.as_ref().unwrap().sections,
            "framework sections are progress"
        );
        let json = serde_json::to_string(&redacted).unwrap();
        assert!(!json.contains("hunter2"), "{json}");

        // Everything else is as the viewers see it.
        let restore = |mut report: AppReport| {
            report.diagnostics = String::new();
            report.attempts.iter_mut().for_each(|attempt| attempt.diagnostics = String::new());
            report.detail.iter_mut().for_each(|detail| detail.counters.clear());
            report
        };
        assert_eq!(restore(redacted), restore(full));
    }

    #[test]
    fn a_report_without_detail_or_diagnostics_is_unchanged() {
        let mut report = AppReport {
            diagnostics: String::new(),
            attempts: Vec::new(),
            detail: None,
            ..app_report()
        };
        let before = report.clone();
        redact_app_report(&mut report);
        assert_eq!(report, before);
    }

    #[test]
    fn others_see_a_containers_state_and_exit_but_not_its_stderr() {
        let full = ContainerReport {
            container_id: "container_e01_1_0001_01_000002".parse().unwrap(),
            node_id: NodeId("n1:8042".to_owned()),
            node_address: "n1:8042".to_owned(),
            resources: Resources { vcores: 1, memory_mb: 128 },
            state: ContainerState::Complete,
            is_am: false,
            exit_code: Some(1),
            exit_reason: Some(ExitReason::Failed),
            diagnostics: "exited with code 1; stderr tail: token=hunter2".to_owned(),
            allocated_at_ms: 1,
            started_at_ms: Some(2),
            finished_at_ms: Some(3),
        };
        let mut redacted = full.clone();
        redact_container_report(&mut redacted);
        assert_eq!(
            redacted,
            ContainerReport {
                diagnostics: HIDDEN.to_owned(),
                ..full
            }
        );
    }
}
