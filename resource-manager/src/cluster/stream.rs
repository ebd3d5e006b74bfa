//! What the RM does for streaming jobs: stores the parallelism users ask of operators (the
//! AM converges on it, learning it from every allocate reply) and bounds what AMs report.

use std::collections::BTreeMap;

use spindle_protocol::{AppId, JobKind, MAX_OPERATORS, MAX_PARALLELISM, ScaleReply, SpecError, StreamDetail};

use super::{AppError, Caller, Cluster};

/// Longest operator or kind name a stream detail may carry (spec names are at most 64; the
/// slack is for AMs that decorate them).
const MAX_DETAIL_NAME_LEN: usize = 128;

impl Cluster {
    /// Sets the parallelism of operator `operator` of stream app `app_id`: a durable change of
    /// its stored spec, which its AM hears of at once (a waiting allocate returns) and an AM
    /// started later reads from the spec it is given.
    pub fn scale_operator(&mut self, caller: &Caller, app_id: AppId, operator: &str, parallelism: u32) -> Result<ScaleReply, AppError> {
        let app = self.apps.get(&app_id).ok_or(AppError::NotFound(app_id))?;
        if !self.may_administer_app(caller, &app.record.user, &app.record.spec.queue) {
            return Err(AppError::Forbidden(format!(
                "user {} may not scale {app_id}: it belongs to {}; only its owner, an admin of queue `{}` or a cluster admin may",
                caller.user, app.record.user, app.record.spec.queue
            )));
        }
        let kind = app.record.spec.kind;
        let (JobKind::Stream, Some(_)) = (kind, &app.record.spec.stream) else {
            return Err(AppError::Conflict(format!(
                "app {app_id} is a {} job: only stream jobs have operators",
                kind.as_str()
            )));
        };
        if app.record.state.is_terminal() {
            return Err(AppError::Conflict(format!(
                "{app_id} already ended as {}: there is nothing to rescale",
                app.record.state.as_str()
            )));
        }
        let app = self.apps.get_mut(&app_id).expect("checked above");
        let stream = app.record.spec.stream.as_mut().expect("checked above");
        let unknown = stream.operator(operator).is_none();
        let previous = stream.set_parallelism(operator, parallelism).map_err(|err| {
            if unknown {
                AppError::OperatorNotFound(format!("{app_id}: {}", err.reason))
            } else {
                AppError::InvalidRequest(err)
            }
        })?;
        if previous != parallelism {
            app.operators_news = true;
            self.mark_app(app_id);
            self.outbox.wake.insert(app_id);
        }
        Ok(ScaleReply {
            app_id,
            operator: operator.to_owned(),
            parallelism,
            previous,
        })
    }

    /// The latest stream detail of every live app whose AM reported one (for `/metrics`).
    pub fn stream_details(&self) -> Vec<(AppId, StreamDetail)> {
        self.apps
            .values()
            .filter(|app| !app.record.state.is_terminal())
            .filter_map(|app| Some((app.record.app_id, app.detail.as_ref()?.stream.clone()?)))
            .collect()
    }

    /// The parallelism every operator of a stream app should have (empty for other apps).
    pub(super) fn operator_parallelism(&self, app_id: AppId) -> BTreeMap<String, u32> {
        let Some(stream) = self.apps.get(&app_id).and_then(|app| app.record.spec.stream.as_ref()) else {
            return BTreeMap::new();
        };
        stream
            .operators
            .iter()
            .map(|operator| (operator.name.clone(), operator.parallelism))
            .collect()
    }
}

/// A stream detail must stay small (it rides along in every app report and `/metrics`) and
/// hold only finite figures (JSON has no NaN: a report carrying one could not be read back).
pub(super) fn validate_stream_detail(detail: &StreamDetail) -> Result<(), SpecError> {
    let invalid = |field: String, reason: String| SpecError { field, reason };
    if detail.operators.len() > MAX_OPERATORS {
        return Err(invalid(
            "detail.stream.operators".to_owned(),
            format!("{} entries; at most {MAX_OPERATORS}", detail.operators.len()),
        ));
    }
    let long_name = detail
        .operators
        .iter()
        .flat_map(|operator| [operator.name.as_str(), operator.kind.as_str()])
        .chain(detail.last_rescale.iter().map(|rescale| rescale.operator.as_str()))
        .find(|name| name.len() > MAX_DETAIL_NAME_LEN);
    if let Some(name) = long_name {
        return Err(invalid(
            "detail.stream".to_owned(),
            format!("operator and kind names must be at most {MAX_DETAIL_NAME_LEN} bytes, not `{name}`"),
        ));
    }
    for (index, operator) in detail.operators.iter().enumerate() {
        if operator.instances.len() > MAX_PARALLELISM as usize {
            return Err(invalid(
                format!("detail.stream.operators[{index}].instances"),
                format!("{} entries; at most {MAX_PARALLELISM}", operator.instances.len()),
            ));
        }
        let not_finite = operator.instances.iter().any(|instance| {
            [
                instance.records_in_per_s,
                instance.records_out_per_s,
                instance.busy,
                instance.backpressured,
            ]
            .iter()
            .any(|figure| !figure.is_finite())
        });
        if not_finite {
            return Err(invalid(
                format!("detail.stream.operators[{index}].instances"),
                "rates and fractions must be finite numbers".to_owned(),
            ));
        }
    }
    Ok(())
}
