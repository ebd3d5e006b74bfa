//! App controls: what users change on a running app (for example a stream operator's
//! parallelism), in one generic form the RM stores and hands to the AM without giving it
//! meaning. The job spec says which controls its kind has and checks their values; the RM
//! authorizes the caller, applies the control to the stored spec (so a later AM attempt starts
//! from it) and sends the spec's controls with every allocate reply.
//!
//! Keys mirror the REST path that sets them: `PUT /v1/apps/{id}/operators/{name}` sets
//! `operators/{name}` to `{"parallelism": n}`.
//!
//! Besides these settings of the spec, an app takes *requests*: one-shot asks (a stream job's
//! savepoints) that the spec checks here and the RM stores beside it, numbered per app, under
//! `<kind>/<id>` (`POST /v1/apps/{id}/savepoints` makes `savepoints/<id>`). They travel with the
//! controls; the AM acts on each id once.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::savepoints::{SAVEPOINT_REQUEST_KIND, SavepointRequest, savepoint_location};
use crate::{JobKind, JobSpec, SpecError};

/// Prefix of a stream operator's control key.
pub const OPERATOR_CONTROL_PREFIX: &str = "operators/";

/// Why a control was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ControlError {
    /// The app's kind has no controls of this sort.
    #[error("{0}")]
    NotSupported(String),
    /// The key names nothing in the job (such as an operator it does not have).
    #[error("{0}")]
    UnknownTarget(SpecError),
    /// The value is not one the job accepts.
    #[error("{0}")]
    Invalid(SpecError),
}

/// The key of operator `name`'s parallelism control.
pub fn operator_control_key(name: &str) -> String {
    format!("{OPERATOR_CONTROL_PREFIX}{name}")
}

impl JobSpec {
    /// Every control of the job with its current value.
    pub fn controls(&self) -> BTreeMap<String, Value> {
        let Some(stream) = &self.stream else { return BTreeMap::new() };
        stream
            .operators
            .iter()
            .map(|operator| (operator_control_key(&operator.name), json!({ "parallelism": operator.parallelism })))
            .collect()
    }

    /// Applies control `key` = `value` to the spec; returns the value it had. Changes nothing
    /// when refused.
    pub fn apply_control(&mut self, key: &str, value: &Value) -> Result<Value, ControlError> {
        let kind = self.kind;
        let not_supported = || ControlError::NotSupported(format!("a {} job has no control `{key}`", kind.as_str()));
        let Some(name) = key.strip_prefix(OPERATOR_CONTROL_PREFIX) else {
            return Err(not_supported());
        };
        let Some(stream) = self.stream.as_mut() else {
            return Err(ControlError::NotSupported(format!(
                "this is a {} job: only stream jobs have operators",
                kind.as_str()
            )));
        };
        let parallelism = value
            .get("parallelism")
            .and_then(Value::as_u64)
            .and_then(|p| u32::try_from(p).ok())
            .ok_or_else(|| {
                ControlError::Invalid(SpecError {
                    field: "parallelism".to_owned(),
                    reason: "expected a whole number from 1".to_owned(),
                })
            })?;
        let unknown = stream.operator(name).is_none();
        let previous = stream.set_parallelism(name, parallelism).map_err(|err| {
            if unknown {
                ControlError::UnknownTarget(err)
            } else {
                ControlError::Invalid(err)
            }
        })?;
        Ok(json!({ "parallelism": previous }))
    }

    /// Checks a request of kind `kind` (the first part of its key) with body `value`; returns
    /// the value to store (normalized: a `file://` directory as a path).
    pub fn check_request(&self, kind: &str, value: &Value) -> Result<Value, ControlError> {
        if kind != SAVEPOINT_REQUEST_KIND {
            return Err(ControlError::NotSupported(format!("there are no `{kind}` requests")));
        }
        if self.kind != JobKind::Stream {
            return Err(ControlError::NotSupported(format!(
                "this is a {} job: only stream jobs take savepoints",
                self.kind.as_str()
            )));
        }
        let mut request: SavepointRequest = serde_json::from_value(value.clone()).map_err(|err| {
            ControlError::Invalid(SpecError {
                field: "body".to_owned(),
                reason: format!("{err}: expected {{\"dir\": \"/absolute/path\", \"stop\": false}}, both optional"),
            })
        })?;
        if let Some(dir) = &request.dir {
            request.dir = Some(savepoint_location("dir", dir).map_err(ControlError::Invalid)?);
        }
        Ok(serde_json::to_value(request).expect("a request serializes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_job() -> JobSpec {
        toml::from_str::<JobSpec>(include_str!("../../examples/stream-window-count.toml")).expect("the example parses")
    }

    #[test]
    fn an_operator_parallelism_round_trips_through_the_spec() {
        let mut spec = stream_job();
        let key = operator_control_key("count");
        assert_eq!(spec.controls()[&key], json!({"parallelism": 2}));
        let previous = spec.apply_control(&key, &json!({"parallelism": 4})).unwrap();
        assert_eq!(previous, json!({"parallelism": 2}));
        assert_eq!(spec.controls()[&key], json!({"parallelism": 4}));
    }

    #[test]
    fn refusals_say_why_and_change_nothing() {
        let mut spec = stream_job();
        let before = spec.clone();
        let unknown = spec.apply_control("operators/nope", &json!({"parallelism": 2}));
        assert!(matches!(unknown, Err(ControlError::UnknownTarget(_))), "{unknown:?}");
        let zero = spec.apply_control("operators/count", &json!({"parallelism": 0}));
        assert!(matches!(zero, Err(ControlError::Invalid(_))), "{zero:?}");
        let garbled = spec.apply_control("operators/count", &json!("four"));
        assert!(matches!(garbled, Err(ControlError::Invalid(_))), "{garbled:?}");
        let other = spec.apply_control("replicas", &json!(3));
        assert!(matches!(other, Err(ControlError::NotSupported(_))), "{other:?}");
        assert_eq!(spec, before);
    }

    #[test]
    fn savepoint_requests_are_checked_and_normalized_for_stream_jobs_only() {
        let spec = stream_job();
        assert_eq!(
            spec.check_request("savepoints", &json!({"dir": "file:///data/sp", "stop": true}))
                .unwrap(),
            json!({"dir": "/data/sp", "stop": true})
        );
        assert_eq!(spec.check_request("savepoints", &json!({})).unwrap(), json!({"stop": false}));
        for (value, field) in [
            (json!({"dir": "sp"}), "dir"),
            (json!({"dir": "/data/../etc"}), "dir"),
            (json!({"stop": "yes"}), "body"),
            (json!({"dirs": "/x"}), "body"),
        ] {
            let err = spec.check_request("savepoints", &value);
            assert!(
                matches!(&err, Err(ControlError::Invalid(e)) if e.field == field),
                "{value}: {err:?}"
            );
        }
        let other = spec.check_request("snapshots", &json!({}));
        assert!(matches!(other, Err(ControlError::NotSupported(_))), "{other:?}");
        let shell: JobSpec = serde_json::from_value(json!({"name": "x", "kind": "shell", "shell": {"command": ["true"]}})).unwrap();
        let refused = shell.check_request("savepoints", &json!({}));
        assert!(
            matches!(&refused, Err(ControlError::NotSupported(reason)) if reason.contains("only stream jobs")),
            "{refused:?}"
        );
    }
}
