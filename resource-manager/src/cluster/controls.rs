//! App controls and what AMs report, kept without knowing any framework: a control (such as a
//! stream operator's parallelism) is applied to the stored spec through the spec's own rules and
//! handed to the AM in every allocate reply; so is a request (such as a savepoint), checked by
//! the spec and stored beside it under a new id; a job detail is bounded and stored as sent.

use std::collections::BTreeMap;

use spindle_protocol::{AppId, AppState, ControlError, JobDetail, JobKind, MetricFamily, SpecError};

use super::{AppError, Caller, Cluster};

/// The largest detail document an AM may report (JSON bytes of its sections and metrics): it
/// rides along in every app report and `/metrics`.
pub const MAX_DETAIL_BYTES: usize = 512 * 1024;
/// Samples over all of an app's metric families.
pub const MAX_METRIC_SAMPLES: usize = 8192;
const MAX_METRIC_FAMILIES: usize = 64;
const MAX_LABEL_BYTES: usize = 128;

/// Requests kept per app: the newest (an AM acts on a request as soon as it hears of it, so
/// older ones only keep their place in its report).
pub const MAX_APP_REQUESTS: usize = 16;

/// What a control changed.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlChange {
    pub previous: serde_json::Value,
}

impl Cluster {
    /// Sets control `key` of app `app_id` to `value`: a durable change of its stored spec, which
    /// its AM hears of at once (a waiting allocate returns) and a later AM attempt starts from.
    pub fn control_app(&mut self, caller: &Caller, app_id: AppId, key: &str, value: &serde_json::Value) -> Result<ControlChange, AppError> {
        self.check_may_control(caller, app_id)?;
        let app = self.apps.get_mut(&app_id).expect("checked above");
        let previous = app
            .record
            .spec
            .apply_control(key, value)
            .map_err(|err| control_refused(app_id, err))?;
        if previous != *value {
            app.controls_news = true;
            self.mark_app(app_id);
            self.outbox.wake.insert(app_id);
        }
        Ok(ControlChange { previous })
    }

    /// Makes request `kind` (such as `savepoints`) of the running app `app_id` with body `value`:
    /// the spec checks it, the RM stores it as `<kind>/<id>` under a new id (returned) and its
    /// AM hears of it at once. Only a RUNNING app takes requests: they need its AM.
    pub fn request_app(&mut self, caller: &Caller, app_id: AppId, kind: &str, value: &serde_json::Value) -> Result<u64, AppError> {
        self.check_may_control(caller, app_id)?;
        let app = self.apps.get_mut(&app_id).expect("checked above");
        let stored = app
            .record
            .spec
            .check_request(kind, value)
            .map_err(|err| control_refused(app_id, err))?;
        if app.record.state != AppState::Running {
            return Err(AppError::Conflict(format!(
                "{app_id} is {}: its application master is not running yet; ask again once the app is RUNNING",
                app.record.state.as_str()
            )));
        }
        app.record.last_request += 1;
        let id = app.record.last_request;
        app.record.requests.insert(format!("{kind}/{id}"), stored);
        while app.record.requests.len() > MAX_APP_REQUESTS {
            let oldest = app
                .record
                .requests
                .keys()
                .min_by_key(|key| request_id(key))
                .cloned()
                .expect("more than the limit, so not empty");
            app.record.requests.remove(&oldest);
        }
        app.controls_news = true;
        self.mark_app(app_id);
        self.outbox.wake.insert(app_id);
        Ok(id)
    }

    /// Refuses callers who may not act on the app (as for kill) and apps that ended.
    fn check_may_control(&self, caller: &Caller, app_id: AppId) -> Result<(), AppError> {
        let app = self.apps.get(&app_id).ok_or(AppError::NotFound(app_id))?;
        if !self.may_administer_app(caller, &app.record.user, &app.record.spec.queue) {
            return Err(AppError::Forbidden(format!(
                "user {} may not change {app_id}: it belongs to {}; only its owner, an admin of queue `{}` or a cluster admin may",
                caller.user, app.record.user, app.record.spec.queue
            )));
        }
        if app.record.state.is_terminal() {
            return Err(AppError::Conflict(format!(
                "{app_id} already ended as {}: there is nothing to change",
                app.record.state.as_str()
            )));
        }
        Ok(())
    }

    /// The controls of app `app_id`: its stored spec's, and the requests kept (empty for
    /// unknown apps).
    pub(super) fn app_controls(&self, app_id: AppId) -> BTreeMap<String, serde_json::Value> {
        let Some(app) = self.apps.get(&app_id) else {
            return BTreeMap::new();
        };
        let mut controls = app.record.spec.controls();
        controls.extend(app.record.requests.iter().map(|(key, value)| (key.clone(), value.clone())));
        controls
    }

    /// The metric families every live app's AM reported last (for `/metrics`), with its kind.
    pub fn app_metrics(&self) -> Vec<(AppId, JobKind, Vec<MetricFamily>)> {
        self.apps
            .values()
            .filter(|app| !app.record.state.is_terminal())
            .filter_map(|app| {
                let metrics = &app.detail.as_ref()?.metrics;
                (!metrics.is_empty()).then(|| (app.record.app_id, app.record.spec.kind, metrics.clone()))
            })
            .collect()
    }
}

fn control_refused(app_id: AppId, err: ControlError) -> AppError {
    match err {
        ControlError::NotSupported(reason) => AppError::Conflict(format!("app {app_id}: {reason}")),
        ControlError::UnknownTarget(err) => AppError::ControlTargetNotFound(format!("{app_id}: {}", err.reason)),
        ControlError::Invalid(err) => AppError::InvalidRequest(err),
    }
}

/// The id of request key `<kind>/<id>` (0 if garbled: removed first).
fn request_id(key: &str) -> u64 {
    key.rsplit_once('/').and_then(|(_, id)| id.parse().ok()).unwrap_or(0)
}

/// Bounds a detail before it is stored: counts and names of stages and counters, the size of
/// its sections, and well-formed metrics named after the app's kind (an AM must not pass its
/// figures off as the RM's).
pub(super) fn validate_detail(detail: &JobDetail, kind: JobKind) -> Result<(), SpecError> {
    let invalid = |field: &str, reason: String| SpecError {
        field: format!("detail.{field}"),
        reason,
    };
    let too_many = |field: &str, count: usize, max: usize| invalid(field, format!("{count} entries; at most {max}"));
    let max = spindle_protocol::MAX_DETAIL_ENTRIES;
    if detail.stages.len() > max {
        return Err(too_many("stages", detail.stages.len(), max));
    }
    if detail.counters.len() > max {
        return Err(too_many("counters", detail.counters.len(), max));
    }
    let long_name = detail
        .stages
        .iter()
        .map(|stage| stage.name.as_str())
        .chain(detail.counters.keys().map(String::as_str))
        .find(|name| name.is_empty() || name.len() > 64);
    if let Some(name) = long_name {
        return Err(SpecError {
            field: "detail".to_owned(),
            reason: format!("stage and counter names must be 1 to 64 bytes, not `{name}`"),
        });
    }
    let bytes = serde_json::to_vec(&detail.sections).map_or(usize::MAX, |json| json.len())
        + serde_json::to_vec(&detail.metrics).map_or(usize::MAX, |json| json.len());
    if bytes > MAX_DETAIL_BYTES {
        return Err(invalid("sections", format!("{bytes} bytes of JSON; at most {MAX_DETAIL_BYTES}")));
    }
    validate_metrics(&detail.metrics, kind)
}

fn validate_metrics(families: &[MetricFamily], kind: JobKind) -> Result<(), SpecError> {
    let field = |index: usize| format!("detail.metrics[{index}]");
    let invalid = |field: String, reason: String| SpecError { field, reason };
    if families.len() > MAX_METRIC_FAMILIES {
        return Err(invalid(
            "detail.metrics".to_owned(),
            format!("{} families; at most {MAX_METRIC_FAMILIES}", families.len()),
        ));
    }
    let samples: usize = families.iter().map(|family| family.samples.len()).sum();
    if samples > MAX_METRIC_SAMPLES {
        return Err(invalid(
            "detail.metrics".to_owned(),
            format!("{samples} samples; at most {MAX_METRIC_SAMPLES}"),
        ));
    }
    let prefix = format!("spindle_{}_", kind.as_str());
    for (index, family) in families.iter().enumerate() {
        if !family.name.starts_with(&prefix) || !is_metric_name(&family.name) || family.name.len() > 128 {
            return Err(invalid(
                field(index),
                format!(
                    "name `{}` must start with `{prefix}` and hold only [a-z0-9_] (at most 128 bytes)",
                    family.name
                ),
            ));
        }
        if !matches!(family.kind.as_str(), "gauge" | "counter") {
            return Err(invalid(
                field(index),
                format!("kind `{}` must be `gauge` or `counter`", family.kind),
            ));
        }
        if family.help.len() > 256 || family.help.contains('\n') {
            return Err(invalid(field(index), "help must be one line of at most 256 bytes".to_owned()));
        }
        for sample in &family.samples {
            if !sample.value.is_finite() {
                return Err(invalid(field(index), "values must be finite numbers".to_owned()));
            }
            for (name, value) in &sample.labels {
                if name == "app" || !is_metric_name(name) || name.len() > 64 || value.len() > MAX_LABEL_BYTES {
                    return Err(invalid(
                        field(index),
                        format!(
                            "label `{name}` must be [a-z0-9_], not `app` (the RM sets it), with a value of at most {MAX_LABEL_BYTES} bytes"
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

fn is_metric_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}
