//! Checks of a `[stream]` section, and the one change the RM makes to a stored one while the
//! job runs: an operator's parallelism (`spindle scale`).
//!
//! Split along what is checked: job-wide settings here, each operator's own fields in
//! `fields`, the DAG between operators in `graph`.

mod fields;
mod graph;
#[cfg(test)]
mod tests;

use crate::DataUrl;
use crate::job::{SpecError, validate_command, validate_resources};
use crate::savepoints::savepoint_location;
use crate::stream::{MAX_KEY_GROUPS, MAX_PARALLELISM, OperatorKind, OperatorSpec, StreamSpec};

/// Most operators one job may have (so the AM's report of them always fits the RM's bound).
pub const MAX_OPERATORS: usize = 64;
/// Shortest checkpoint interval: below it the barrier traffic would crowd out records.
const MIN_CHECKPOINT_INTERVAL_MS: u64 = 50;
const MAX_CHECKPOINT_INTERVAL_MS: u64 = 60 * 60 * 1000;
const MAX_KEEP_CHECKPOINTS: u32 = 100;
const MAX_RESTARTS: u32 = 1000;

impl StreamSpec {
    /// Checks everything that can be checked without running the job.
    pub fn validate(&self) -> Result<(), SpecError> {
        self.validate_job_settings()?;
        graph::check_names_and_kinds(self)?;
        for (index, operator) in self.operators.iter().enumerate() {
            fields::check(index, operator)?;
            self.check_parallelism(index, operator)?;
        }
        graph::check_edges(self)
    }

    /// The operator named `name`.
    pub fn operator(&self, name: &str) -> Option<&OperatorSpec> {
        self.operators.iter().find(|operator| operator.name == name)
    }

    /// Sets the parallelism of operator `name` to `parallelism` and returns the one it had;
    /// changes nothing when refused (unknown or not rescalable operator, out of bounds).
    pub fn set_parallelism(&mut self, name: &str, parallelism: u32) -> Result<u32, SpecError> {
        let Some(operator) = self.operator(name) else {
            return Err(invalid(
                "operator",
                format!("the job has no operator `{name}`; {}", self.rescalable_list()),
            ));
        };
        if !operator.is_rescalable() {
            let why = if operator.kind().is_source() {
                "a source's parallelism is its number of partitions, fixed for the job's life"
            } else {
                "it runs fused into the edge from its input and takes its input's parallelism"
            };
            return Err(invalid(
                "operator",
                format!(
                    "`{name}` ({}) cannot be rescaled: {why}; {}",
                    operator.kind().as_str(),
                    self.rescalable_list()
                ),
            ));
        }
        if !(1..=MAX_PARALLELISM).contains(&parallelism) {
            return Err(invalid(
                "parallelism",
                format!("{parallelism} is out of range: use 1 to {MAX_PARALLELISM}"),
            ));
        }
        if operator.is_keyed() && parallelism > self.key_groups {
            return Err(invalid(
                "parallelism",
                format!(
                    "{parallelism} is more than the job's key_groups ({}): each instance of keyed `{name}` owns at least one key group",
                    self.key_groups
                ),
            ));
        }
        if let Some(autoscale) = &self.autoscale
            && !(autoscale.min..=autoscale.max).contains(&parallelism)
        {
            return Err(invalid(
                "parallelism",
                format!(
                    "{parallelism} is outside the job's autoscale bounds {}..={}: the autoscaler keeps every operator within them",
                    autoscale.min, autoscale.max
                ),
            ));
        }
        let operator = self
            .operators
            .iter_mut()
            .find(|operator| operator.name == name)
            .expect("found above");
        Ok(std::mem::replace(&mut operator.parallelism, parallelism))
    }

    /// "rescalable operators: `a`, `b`" (or that there are none), for error messages.
    fn rescalable_list(&self) -> String {
        let names: Vec<String> = self
            .operators
            .iter()
            .filter(|operator| operator.is_rescalable())
            .map(|operator| format!("`{}`", operator.name))
            .collect();
        if names.is_empty() {
            "it has no rescalable operators (sources and fused transforms are not)".to_owned()
        } else {
            format!("rescalable operators: {}", names.join(", "))
        }
    }

    fn validate_job_settings(&self) -> Result<(), SpecError> {
        if !(1..=MAX_KEY_GROUPS).contains(&self.key_groups) {
            return Err(invalid(
                "stream.key_groups",
                format!("{} is out of range: use 1 to {MAX_KEY_GROUPS}", self.key_groups),
            ));
        }
        if !(MIN_CHECKPOINT_INTERVAL_MS..=MAX_CHECKPOINT_INTERVAL_MS).contains(&self.checkpoint_interval_ms) {
            return Err(invalid(
                "stream.checkpoint_interval_ms",
                format!(
                    "{} is out of range: use {MIN_CHECKPOINT_INTERVAL_MS} to {MAX_CHECKPOINT_INTERVAL_MS} (an hour)",
                    self.checkpoint_interval_ms
                ),
            ));
        }
        if let Some(dir) = &self.checkpoint_dir {
            if dir.starts_with("s3://") {
                DataUrl::parse(dir).map_err(|error| invalid("stream.checkpoint_dir", error.to_string()))?;
                if let Some(sink) = self.operators.iter().find(|op| op.kind() == OperatorKind::NatsSink) {
                    return Err(invalid(
                        "stream.checkpoint_dir",
                        format!(
                            "`{dir}`: nats_sink `{}` stages its output in the checkpoint dir for the AM to publish, which an object store cannot hold yet; use a directory every node sees",
                            sink.name
                        ),
                    ));
                }
            } else if !dir.starts_with('/') {
                return Err(invalid(
                    "stream.checkpoint_dir",
                    format!("`{dir}` must be an absolute path (workers run on other nodes, in other directories)"),
                ));
            }
        }
        if let Some(dir) = &self.savepoint_dir {
            savepoint_location("stream.savepoint_dir", dir)?;
        }
        // Only the path's shape: whether a savepoint is there, and whether this job can start
        // from it, the AM finds out as the app's account (the RM reads no user's files), and
        // `spindle submit` beforehand where it can read it.
        if let Some(savepoint) = &self.from_savepoint {
            savepoint_location("stream.from_savepoint", savepoint)?;
        } else if self.allow_dropped_state {
            return Err(invalid(
                "stream.allow_dropped_state",
                "applies only to a job started from a savepoint: set from_savepoint, or remove it",
            ));
        }
        if !(1..=MAX_KEEP_CHECKPOINTS).contains(&self.keep_checkpoints) {
            return Err(invalid(
                "stream.keep_checkpoints",
                format!("{} is out of range: use 1 to {MAX_KEEP_CHECKPOINTS}", self.keep_checkpoints),
            ));
        }
        validate_resources("stream.worker", &self.worker)?;
        if let Some(command) = &self.worker_command {
            validate_command("stream.worker_command", command)?;
        }
        if self.max_restarts > MAX_RESTARTS {
            return Err(invalid(
                "stream.max_restarts",
                format!("{} is more than the limit of {MAX_RESTARTS}", self.max_restarts),
            ));
        }
        if let Some(name) = self.env.keys().find(|name| name.is_empty() || name.contains(['=', '\0'])) {
            return Err(invalid(
                "stream.env",
                format!("`{name}` is not a usable variable name: it must be non-empty, without `=`"),
            ));
        }
        if let Some(autoscale) = &self.autoscale {
            if autoscale.min == 0 {
                return Err(invalid("stream.autoscale.min", "must be at least 1"));
            }
            if autoscale.min > autoscale.max {
                return Err(invalid(
                    "stream.autoscale.max",
                    format!("{} is less than min ({})", autoscale.max, autoscale.min),
                ));
            }
            if autoscale.max > MAX_PARALLELISM {
                return Err(invalid(
                    "stream.autoscale.max",
                    format!("{} is more than the limit of {MAX_PARALLELISM}", autoscale.max),
                ));
            }
            if autoscale.max > self.key_groups {
                return Err(invalid(
                    "stream.autoscale.max",
                    format!(
                        "{} is more than key_groups ({}): a keyed instance owns at least one key group; raise key_groups or lower max",
                        autoscale.max, self.key_groups
                    ),
                ));
            }
            // Written this way round so NaN is refused too.
            if !(autoscale.target_utilization > 0.0 && autoscale.target_utilization <= 1.0) {
                return Err(invalid(
                    "stream.autoscale.target_utilization",
                    format!(
                        "{} is out of range: use a fraction above 0 and at most 1 (e.g. 0.7)",
                        autoscale.target_utilization
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_parallelism(&self, index: usize, operator: &OperatorSpec) -> Result<(), SpecError> {
        let field = at(index, "parallelism");
        let parallelism = operator.parallelism;
        let kind = operator.kind();
        if operator.is_fused() && parallelism != 1 {
            return Err(invalid(
                field,
                format!(
                    "a {} runs fused into the edge from its input and takes its input's parallelism: remove `parallelism`",
                    kind.as_str()
                ),
            ));
        }
        if !(1..=MAX_PARALLELISM).contains(&parallelism) {
            return Err(invalid(field, format!("{parallelism} is out of range: use 1 to {MAX_PARALLELISM}")));
        }
        if operator.is_keyed() && parallelism > self.key_groups {
            return Err(invalid(
                field,
                format!(
                    "{parallelism} is more than key_groups ({}): each instance of a keyed operator owns at least one key group; raise key_groups or lower parallelism",
                    self.key_groups
                ),
            ));
        }
        let single_reader = match kind {
            OperatorKind::TcpSource => Some("reads one TCP connection"),
            OperatorKind::NatsSource => Some("reads one ordered JetStream consumer"),
            _ => None,
        };
        if let Some(why) = single_reader
            && parallelism != 1
        {
            return Err(invalid(
                field,
                format!(
                    "a {} {why}: parallelism must be 1 (scale the operators after it instead)",
                    kind.as_str()
                ),
            ));
        }
        Ok(())
    }
}

/// `stream.operators[index].field`: how errors name an operator's field.
fn at(index: usize, field: &str) -> String {
    format!("stream.operators[{index}].{field}")
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        reason: reason.into(),
    }
}
