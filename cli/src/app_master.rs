//! `spindle app-master`: the built-in AM of each job kind, all on the one AM driver. The RM
//! knows no framework; this is the only place that maps a job kind to its framework crate.

use spindle_app_master::{AmContext, AmError, AmExit, ShellMaster};
use spindle_protocol::JobKind;
use tokio_util::sync::CancellationToken;

/// Runs the built-in AM of the context's job kind.
pub async fn run_built_in(context: AmContext, shutdown: CancellationToken) -> Result<AmExit, AmError> {
    match context.spec.kind {
        JobKind::Shell => ShellMaster::new(context)?.run(shutdown).await,
        JobKind::Mapreduce => spindle_mapreduce::MapReduceMaster::new(context)?.run(shutdown).await,
        JobKind::Stream => spindle_stream::StreamMaster::new(context)?.run(shutdown).await,
        other => Err(AmError::UnsupportedKind {
            kind: other.as_str().to_owned(),
        }),
    }
}

/// The entry point of `spindle app-master`: reads the AM container's environment (see
/// `spindle_protocol::env`) and runs the job's AM. `Ok` once the job's end is recorded, or the
/// RM or `shutdown` said stop; an error makes the attempt fail, so the RM may start another.
pub async fn run_from_env(shutdown: CancellationToken) -> anyhow::Result<()> {
    let context = AmContext::from_env()?;
    let exit = run_built_in(context, shutdown).await?;
    tracing::debug!(?exit, "application master exiting");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use spindle_protocol::{AppId, CustomSpec, JobSpec};

    use super::*;

    #[tokio::test]
    async fn custom_jobs_have_no_built_in_am() {
        let spec: JobSpec = serde_json::from_value(serde_json::json!({
            "name": "mine", "kind": "custom", "custom": { "command": ["my-am"] }
        }))
        .expect("a custom job spec");
        assert_eq!(
            spec.custom,
            Some(CustomSpec {
                command: vec!["my-am".into()],
                env: BTreeMap::new()
            })
        );
        let context = AmContext::new(AppId { cluster_ts: 1, seq: 1 }, 1, vec!["http://127.0.0.1:9".into()], "token", spec);
        let error = run_built_in(context, CancellationToken::new()).await.unwrap_err();
        assert!(error.to_string().contains("no built-in application master"), "{error}");
    }
}
