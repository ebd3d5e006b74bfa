//! Who this application master is: read from the environment its node agent set, or built by
//! hand in tests.

use spindle_protocol::{AppId, ContainerId, JobSpec, NodeId, Resources, env};

use crate::error::AmError;
use crate::rm::RetryPolicy;

/// Everything an AM needs to know about itself before it talks to the RM.
#[derive(Debug, Clone)]
pub struct AmContext {
    /// The app this AM runs; sent with every call to the RM.
    pub app_id: AppId,
    /// The AM attempt: the RM accepts calls only from the current one.
    pub attempt: u32,
    /// The AM's own container, so it never mistakes itself for a task container after an RM
    /// restart (the RM lists it among the attempt's live containers). `None` in tests.
    pub container_id: Option<ContainerId>,
    /// One or more RM URLs; the client tries them in order (RM high availability).
    pub rm_urls: Vec<String>,
    /// Bearer token of the AM protocol, bound to app and attempt.
    pub am_token: String,
    /// The job to run.
    pub spec: JobSpec,
    /// The node the AM runs on, for logs.
    pub node_id: Option<NodeId>,
    /// The AM container's size, for logs.
    pub resources: Option<Resources>,
    /// How long and how often to retry the RM while it is unreachable or restarting.
    pub rm_retry: RetryPolicy,
}

impl AmContext {
    /// A context with the required fields; the rest default (no own container, default retries).
    pub fn new(app_id: AppId, attempt: u32, rm_urls: Vec<String>, am_token: impl Into<String>, spec: JobSpec) -> Self {
        AmContext {
            app_id,
            attempt,
            container_id: None,
            rm_urls,
            am_token: am_token.into(),
            spec,
            node_id: None,
            resources: None,
            rm_retry: RetryPolicy::default(),
        }
    }

    /// Reads the variables the node agent sets in an AM container (see `protocol::env`).
    pub fn from_env() -> Result<Self, AmError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like `from_env`, with the variables looked up by `lookup`, so tests need no process env.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, AmError> {
        let required = |name: &'static str| {
            lookup(name)
                .filter(|value| !value.trim().is_empty())
                .ok_or(AmError::MissingEnv { name })
        };
        let invalid = |name: &'static str, reason: String| AmError::InvalidEnv { name, reason };

        let app_id: AppId = required(env::APP_ID)?
            .trim()
            .parse()
            .map_err(|err: spindle_protocol::IdParseError| invalid(env::APP_ID, err.to_string()))?;
        let attempt: u32 = required(env::ATTEMPT)?
            .trim()
            .parse()
            .map_err(|_| invalid(env::ATTEMPT, "expected a positive whole number such as 1".into()))?;
        let rm_urls: Vec<String> = required(env::RM)?
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(str::to_owned)
            .collect();
        if rm_urls.is_empty() {
            return Err(invalid(env::RM, "expected one or more comma-separated RM URLs".into()));
        }
        let am_token = required(env::AM_TOKEN)?;
        // The RM writes the spec into a file of the AM's working dir; an inline spec in the
        // environment is for AMs started by hand or in tests.
        let (spec_source, spec_text) = match lookup(env::JOB_SPEC_FILE).filter(|path| !path.trim().is_empty()) {
            Some(path) => (
                env::JOB_SPEC_FILE,
                std::fs::read_to_string(&path).map_err(|err| invalid(env::JOB_SPEC_FILE, format!("cannot read `{path}`: {err}")))?,
            ),
            None => (env::JOB_SPEC, required(env::JOB_SPEC)?),
        };
        let spec: JobSpec =
            serde_json::from_str(&spec_text).map_err(|err| invalid(spec_source, format!("not a job spec in JSON: {err}")))?;
        spec.validate()?;

        let container_id = match lookup(env::CONTAINER_ID) {
            Some(text) => Some(
                text.trim()
                    .parse()
                    .map_err(|err: spindle_protocol::IdParseError| invalid(env::CONTAINER_ID, err.to_string()))?,
            ),
            None => None,
        };
        let number = |name: &'static str| -> Result<Option<u64>, AmError> {
            lookup(name)
                .map(|text| {
                    text.trim()
                        .parse::<u64>()
                        .map_err(|_| invalid(name, format!("`{text}` is not a whole number")))
                })
                .transpose()
        };
        let resources = match (number(env::VCORES)?, number(env::MEMORY_MB)?) {
            (Some(vcores), Some(memory_mb)) => Some(Resources::new(u32::try_from(vcores).unwrap_or(u32::MAX), memory_mb)),
            _ => None,
        };

        Ok(AmContext {
            app_id,
            attempt,
            container_id,
            rm_urls,
            am_token,
            spec,
            node_id: lookup(env::NODE_ID).map(NodeId),
            resources,
            rm_retry: RetryPolicy::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn variables() -> HashMap<&'static str, String> {
        HashMap::from([
            (env::APP_ID, "application_1700000000000_0003".to_owned()),
            (env::ATTEMPT, "2".to_owned()),
            (env::CONTAINER_ID, "container_e01_1700000000000_0003_02_000001".to_owned()),
            (env::RM, "127.0.0.1:8088, 10.0.0.2:8088".to_owned()),
            (env::AM_TOKEN, "t0k3n".to_owned()),
            (
                env::JOB_SPEC,
                r#"{"name":"hello","kind":"shell","shell":{"command":["true"],"containers":3}}"#.to_owned(),
            ),
            (env::VCORES, "1".to_owned()),
            (env::MEMORY_MB, "256".to_owned()),
        ])
    }

    #[test]
    fn reads_the_agent_environment() {
        let vars = variables();
        let context = AmContext::from_lookup(|name| vars.get(name).cloned()).unwrap();
        assert_eq!(context.app_id.seq, 3);
        assert_eq!(context.attempt, 2);
        assert_eq!(context.rm_urls, ["127.0.0.1:8088", "10.0.0.2:8088"]);
        assert_eq!(context.spec.shell.unwrap().containers, 3);
        assert_eq!(context.container_id.unwrap().seq, 1);
        assert_eq!(context.resources, Some(Resources::new(1, 256)));
    }

    #[test]
    fn names_the_missing_or_bad_variable() {
        let mut vars = variables();
        vars.remove(env::AM_TOKEN);
        let err = AmContext::from_lookup(|name| vars.get(name).cloned()).unwrap_err();
        assert!(err.to_string().contains("SPINDLE_AM_TOKEN"), "{err}");

        let mut vars = variables();
        vars.insert(env::JOB_SPEC, "{".to_owned());
        let err = AmContext::from_lookup(|name| vars.get(name).cloned()).unwrap_err();
        assert!(err.to_string().contains("SPINDLE_JOB_SPEC"), "{err}");
    }

    #[test]
    fn reads_the_spec_from_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job-spec.json");
        let mut vars = variables();
        std::fs::write(&path, vars.remove(env::JOB_SPEC).unwrap()).unwrap();
        vars.insert(env::JOB_SPEC_FILE, path.display().to_string());
        let context = AmContext::from_lookup(|name| vars.get(name).cloned()).unwrap();
        assert_eq!(context.spec.name, "hello");

        vars.insert(env::JOB_SPEC_FILE, dir.path().join("missing").display().to_string());
        let err = AmContext::from_lookup(|name| vars.get(name).cloned()).unwrap_err();
        assert!(err.to_string().contains("SPINDLE_JOB_SPEC_FILE"), "{err}");
    }
}
