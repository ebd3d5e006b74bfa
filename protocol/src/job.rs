//! The job spec: TOML for the CLI, the same structure as JSON for REST.
//! Unknown fields are refused everywhere, so a typo never silently falls back to a default.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::Resources;
use crate::mapreduce::MapReduceSpec;
use crate::stream::StreamSpec;

/// Largest container any spec may ask for, whatever the nodes are: a guard against typos
/// (`memory_mb = 10000000`) before the RM compares the ask with real node sizes.
pub const MAX_VCORES: u32 = 1024;
pub const MAX_MEMORY_MB: u64 = 16 * 1024 * 1024;
/// Most containers one shell job may ask for.
pub const MAX_SHELL_CONTAINERS: u32 = 1_000_000;

/// A job as a user submits it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// A name for people; need not be unique.
    pub name: String,
    /// Leaf queue to run in.
    #[serde(default = "default_queue")]
    pub queue: String,
    pub kind: JobKind,
    /// How many AM attempts before the app FAILS.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Higher runs first among one user's apps.
    #[serde(default)]
    pub priority: i32,
    /// Resources of the application master's container.
    #[serde(default = "default_am_resources")]
    pub am: Resources,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<ShellSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<CustomSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapreduce: Option<MapReduceSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamSpec>,
}

/// The kinds of job; each has its own section in the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Shell,
    Mapreduce,
    Stream,
    Custom,
}

impl JobKind {
    /// The name as written in a spec (`kind = "stream"`).
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Shell => "shell",
            JobKind::Mapreduce => "mapreduce",
            JobKind::Stream => "stream",
            JobKind::Custom => "custom",
        }
    }
}

/// YARN's DistributedShell: N containers of one command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShellSpec {
    /// argv of the command; run as is, not through a shell (use `["sh", "-c", "…"]` for one).
    pub command: Vec<String>,
    #[serde(default = "one")]
    pub containers: u32,
    #[serde(default = "one")]
    pub vcores: u32,
    #[serde(default = "default_task_memory")]
    pub memory_mb: u64,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// How many times a failed or lost container is run again before the job fails.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// A node label the task containers require (the job's queue must be allowed to use it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_label: Option<String>,
}

/// The user's own application master command, speaking the AM protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomSpec {
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// A spec field that is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SpecError {
    pub field: String,
    pub reason: String,
}

fn default_queue() -> String {
    "default".to_owned()
}
fn default_max_attempts() -> u32 {
    2
}
fn default_am_resources() -> Resources {
    Resources::new(1, 256)
}
fn one() -> u32 {
    1
}
fn default_task_memory() -> u64 {
    128
}
fn default_max_retries() -> u32 {
    3
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Checks a container size against the hard limits every cluster has.
pub fn validate_resources(field: &str, resources: &Resources) -> Result<(), SpecError> {
    if resources.vcores == 0 {
        return Err(invalid(format!("{field}.vcores"), "must be at least 1"));
    }
    if resources.vcores > MAX_VCORES {
        return Err(invalid(
            format!("{field}.vcores"),
            format!("{} is more than the limit of {MAX_VCORES}", resources.vcores),
        ));
    }
    if resources.memory_mb == 0 {
        return Err(invalid(format!("{field}.memory_mb"), "must be at least 1"));
    }
    if resources.memory_mb > MAX_MEMORY_MB {
        return Err(invalid(
            format!("{field}.memory_mb"),
            format!("{} is more than the limit of {MAX_MEMORY_MB}", resources.memory_mb),
        ));
    }
    Ok(())
}

/// Names and values an OS can put in an environment: a name non-empty, without `=` or NUL, and
/// not `SPINDLE_*` (the agent sets those; a job cannot override them); values without NUL.
pub(crate) fn validate_env(field: &str, env: &BTreeMap<String, String>) -> Result<(), SpecError> {
    for (name, value) in env {
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(invalid(
                field,
                format!(
                    "`{}` is not a variable name: names are non-empty, without `=` or NUL",
                    name.escape_debug()
                ),
            ));
        }
        if name.starts_with("SPINDLE_") {
            return Err(invalid(
                format!("{field}.{name}"),
                "SPINDLE_* variables are set by the node agent; choose another name",
            ));
        }
        if value.contains('\0') {
            return Err(invalid(format!("{field}.{name}"), "contains a NUL byte"));
        }
    }
    Ok(())
}

/// Largest job spec, as JSON, the RM accepts: it travels to the AM in its launch request,
/// whose body an agent takes up to 1 MiB.
pub const MAX_SPEC_BYTES: usize = 256 * 1024;

pub(crate) fn validate_command(field: &str, command: &[String]) -> Result<(), SpecError> {
    match command.first() {
        None => Err(invalid(field, "must name a program: it is empty")),
        Some(program) if program.trim().is_empty() => Err(invalid(field, "the program name is blank")),
        Some(_) => Ok(()),
    }
}

impl ShellSpec {
    /// The size of each of the job's task containers.
    pub fn resources(&self) -> Resources {
        Resources::new(self.vcores, self.memory_mb)
    }
}

impl JobSpec {
    /// The container shapes the job's AM will ask for besides its own (`am`), by the spec field
    /// that sets them: each must fit some node, or the job could never run.
    pub fn container_shapes(&self) -> Vec<(&'static str, Resources)> {
        let mut shapes = Vec::new();
        if let Some(shell) = &self.shell {
            shapes.push(("shell", shell.resources()));
        }
        if let Some(mapreduce) = &self.mapreduce {
            shapes.push(("mapreduce.map", mapreduce.map));
            shapes.push(("mapreduce.reduce", mapreduce.reduce));
        }
        if let Some(stream) = &self.stream {
            shapes.push(("stream.worker", stream.worker));
        }
        shapes
    }

    /// Checks everything that can be checked without knowing the cluster.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.name.trim().is_empty() {
            return Err(invalid("name", "must not be empty"));
        }
        if self.name.len() > 256 {
            return Err(invalid("name", "must be at most 256 bytes"));
        }
        if self.queue.trim().is_empty() {
            return Err(invalid("queue", "must not be empty"));
        }
        if !(1..=10).contains(&self.max_attempts) {
            return Err(invalid(
                "max_attempts",
                format!("{} is out of range: use 1 to 10", self.max_attempts),
            ));
        }
        validate_resources("am", &self.am)?;
        match self.kind {
            JobKind::Shell => {
                let Some(shell) = &self.shell else {
                    return Err(invalid("shell", "kind = \"shell\" needs a [shell] section"));
                };
                validate_command("shell.command", &shell.command)?;
                validate_env("shell.env", &shell.env)?;
                if shell.containers == 0 {
                    return Err(invalid("shell.containers", "must be at least 1"));
                }
                if shell.containers > MAX_SHELL_CONTAINERS {
                    return Err(invalid(
                        "shell.containers",
                        format!("{} is more than the limit of {MAX_SHELL_CONTAINERS}", shell.containers),
                    ));
                }
                validate_resources("shell", &shell.resources())?;
                if shell.max_retries > 100 {
                    return Err(invalid("shell.max_retries", "must be at most 100"));
                }
                if shell.node_label.as_deref().is_some_and(|label| label.trim().is_empty()) {
                    return Err(invalid("shell.node_label", "must not be empty (leave it out for no label)"));
                }
            }
            JobKind::Custom => {
                let Some(custom) = &self.custom else {
                    return Err(invalid("custom", "kind = \"custom\" needs a [custom] section"));
                };
                validate_command("custom.command", &custom.command)?;
                validate_env("custom.env", &custom.env)?;
            }
            JobKind::Mapreduce => {
                let Some(mapreduce) = &self.mapreduce else {
                    return Err(invalid("mapreduce", "kind = \"mapreduce\" needs a [mapreduce] section"));
                };
                mapreduce.validate()?;
                validate_env("mapreduce.env", &mapreduce.env)?;
            }
            JobKind::Stream => {
                let Some(stream) = &self.stream else {
                    return Err(invalid("stream", "kind = \"stream\" needs a [stream] section"));
                };
                stream.validate()?;
                validate_env("stream.env", &stream.env)?;
            }
        }
        if self.kind != JobKind::Shell && self.shell.is_some() {
            return Err(invalid("shell", "a [shell] section needs kind = \"shell\""));
        }
        if self.kind != JobKind::Custom && self.custom.is_some() {
            return Err(invalid("custom", "a [custom] section needs kind = \"custom\""));
        }
        if self.kind != JobKind::Mapreduce && self.mapreduce.is_some() {
            return Err(invalid("mapreduce", "a [mapreduce] section needs kind = \"mapreduce\""));
        }
        if self.kind != JobKind::Stream && self.stream.is_some() {
            return Err(invalid("stream", "a [stream] section needs kind = \"stream\""));
        }
        let size = serde_json::to_vec(self).map_or(usize::MAX, |json| json.len());
        if size > MAX_SPEC_BYTES {
            return Err(invalid(
                "(spec)",
                format!("is {size} bytes as JSON, more than the limit of {MAX_SPEC_BYTES}: keep large data in files the job reads"),
            ));
        }
        Ok(())
    }

    /// The largest container the job will ask for: the RM refuses a job no node can hold.
    pub fn largest_container(&self) -> Resources {
        let task = match (&self.shell, &self.mapreduce, &self.stream) {
            (Some(shell), _, _) => shell.resources(),
            (_, Some(mapreduce), _) => mapreduce.largest_task(),
            (_, _, Some(stream)) => stream.worker,
            _ => Resources::ZERO,
        };
        Resources::new(self.am.vcores.max(task.vcores), self.am.memory_mb.max(task.memory_mb))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> JobSpec {
        serde_json::from_value(serde_json::json!({
            "name": "hello", "kind": "shell",
            "shell": {"command": ["true"], "containers": 2}
        }))
        .unwrap()
    }

    #[test]
    fn defaults_fill_in() {
        let spec = hello();
        assert_eq!(spec.queue, "default");
        assert_eq!(spec.max_attempts, 2);
        assert_eq!(spec.shell.as_ref().unwrap().memory_mb, 128);
        spec.validate().unwrap();
    }

    #[test]
    fn env_names_and_spec_size_are_checked_at_submit() {
        let with_env = |name: &str, value: &str| {
            let mut spec = hello();
            spec.shell.as_mut().unwrap().env.insert(name.to_owned(), value.to_owned());
            spec.validate()
        };
        assert!(with_env("GREETING", "hi").is_ok());
        assert_eq!(with_env("A=B", "x").unwrap_err().field, "shell.env");
        assert_eq!(with_env("", "x").unwrap_err().field, "shell.env");
        assert_eq!(with_env("X", "a\0b").unwrap_err().field, "shell.env.X");
        assert_eq!(
            with_env("SPINDLE_SHUFFLE_TOKEN", "x").unwrap_err().field,
            "shell.env.SPINDLE_SHUFFLE_TOKEN"
        );
        let huge = with_env("BIG", &"x".repeat(MAX_SPEC_BYTES)).unwrap_err();
        assert_eq!(huge.field, "(spec)");
        assert!(huge.reason.contains("limit"), "{}", huge.reason);
    }

    #[test]
    fn bad_fields_are_named() {
        let mut spec = hello();
        spec.shell.as_mut().unwrap().vcores = 0;
        assert_eq!(spec.validate().unwrap_err().field, "shell.vcores");
        let mut spec = hello();
        spec.shell.as_mut().unwrap().memory_mb = u64::MAX;
        assert_eq!(spec.validate().unwrap_err().field, "shell.memory_mb");
        let mut spec = hello();
        spec.shell.as_mut().unwrap().command.clear();
        assert_eq!(spec.validate().unwrap_err().field, "shell.command");
        let mut spec = hello();
        spec.shell = None;
        assert_eq!(spec.validate().unwrap_err().field, "shell");
        let mut spec = hello();
        spec.max_attempts = 0;
        assert_eq!(spec.validate().unwrap_err().field, "max_attempts");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_value::<JobSpec>(serde_json::json!({
            "name": "x", "kind": "shell", "shel": {}
        }))
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `shel`"), "{err}");
    }
}
