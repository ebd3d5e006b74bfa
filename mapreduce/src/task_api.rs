//! The MapReduce AM's task API: task containers `POST /v1/tasks/{attempt}` their
//! [`TaskReport`]s here. The handler checks the bearer token (the app's shuffle token, which
//! only the app's containers get from their agents) and hands the report to the AM's loop
//! through a channel; all decisions stay in the loop.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::task_protocol::TaskReport;

/// Reports waiting for the AM's loop; a full queue makes tasks retry rather than grow memory.
const REPORT_QUEUE: usize = 1024;

#[derive(Clone)]
struct ApiState {
    token: String,
    reports: mpsc::Sender<TaskReport>,
}

/// The running task API: where tasks reach it, and the reports they sent.
pub struct TaskApi {
    /// `http://host:port`, for task assignments' `am_url`.
    pub url: String,
    pub reports: mpsc::Receiver<TaskReport>,
}

/// Serves the task API on `listener` until `shutdown`; `advertised_host` is the name other
/// nodes reach this one by (the AM's node id host).
pub fn serve(listener: TcpListener, advertised_host: &str, token: String, shutdown: CancellationToken) -> std::io::Result<TaskApi> {
    let port = listener.local_addr()?.port();
    let (sender, receiver) = mpsc::channel(REPORT_QUEUE);
    let router = Router::new()
        .route("/v1/tasks/{attempt}", post(receive_report))
        .with_state(ApiState { token, reports: sender });
    tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(err) = served {
            tracing::error!(error = %err, "the task API stopped");
        }
    });
    // An IPv6 literal needs brackets in a URL; a name or an IPv4 address goes as it is.
    let host = match advertised_host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
        _ => advertised_host.to_owned(),
    };
    Ok(TaskApi {
        url: format!("http://{host}:{port}"),
        reports: receiver,
    })
}

async fn receive_report(
    State(state): State<ApiState>,
    Path(attempt): Path<String>,
    headers: HeaderMap,
    Json(report): Json<TaskReport>,
) -> Result<StatusCode, (StatusCode, String)> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if !presented.is_some_and(|token| spindle_protocol::constant_time_eq(token.as_bytes(), state.token.as_bytes())) {
        return Err((StatusCode::UNAUTHORIZED, "a task report needs the app's shuffle token".to_owned()));
    }
    if report.attempt.to_string() != attempt {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("attempt: the path names {attempt}, the report {}", report.attempt),
        ));
    }
    state
        .reports
        .send(report)
        .await
        .map_err(|_| (StatusCode::SERVICE_UNAVAILABLE, "the application master is stopping".to_owned()))?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TaskCounters;
    use crate::task_protocol::{TaskAttemptId, TaskKind, TaskOutcome};

    fn report() -> TaskReport {
        TaskReport {
            attempt: TaskAttemptId {
                kind: TaskKind::Reduce,
                task: 3,
                attempt: 0,
            },
            progress: 1.0,
            counters: TaskCounters::default(),
            outcome: Some(TaskOutcome::Succeeded),
        }
    }

    #[tokio::test]
    async fn reports_with_the_token_reach_the_loop_and_others_are_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let shutdown = CancellationToken::new();
        let mut api = serve(listener, "127.0.0.1", "secret-token".into(), shutdown.clone()).unwrap();
        let client = spindle_protocol::tls::client_builder().build().expect("an HTTP client");
        let url = format!("{}/v1/tasks/r_000003_0", api.url);

        let refused = client.post(&url).bearer_auth("wrong").json(&report()).send().await.unwrap();
        assert_eq!(refused.status(), reqwest::StatusCode::UNAUTHORIZED);
        let mismatched = client
            .post(format!("{}/v1/tasks/m_000001_0", api.url))
            .bearer_auth("secret-token")
            .json(&report())
            .send()
            .await
            .unwrap();
        assert_eq!(mismatched.status(), reqwest::StatusCode::BAD_REQUEST);

        let accepted = client.post(&url).bearer_auth("secret-token").json(&report()).send().await.unwrap();
        assert_eq!(accepted.status(), reqwest::StatusCode::NO_CONTENT);
        assert_eq!(api.reports.recv().await.unwrap(), report());
        shutdown.cancel();
    }
}
