//! High availability: any number of RMs on one PostgreSQL database, one active and the others
//! standby, with no coordination service but the database.
//!
//! ```text
//!   standby ──try_lead (every lease/5)──► won: a new epoch ──► active: load state, serve,
//!      ▲                                                        renew every lease/4
//!      └──── lease lost, renewal late, fenced, database gone past the lease ◄──┘
//! ```
//!
//! The HTTP front (`front`) stays up through every change of role: while active it hands
//! requests to the API router of the current term; while standby it answers `/healthz` with
//! its role and everything else with 307 to the active (503 while none is known). An active
//! stops acting (and its writes are refused anyway: the epoch fences them) no later than its
//! lease could have run out on the database's clock, before any standby can take over.
//! On SQLite there is one RM: it always wins, and a lost term ends `run` with an error.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use spindle_protocol::{HealthReport, RmRole};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::config::RmConfig;
use crate::error::{ApiError, RmError};
use crate::launcher::HttpAmLauncher;
use crate::metrics::RmMetrics;
use crate::service::ResourceManager;
use crate::store::{Leadership, Store};

/// Set on every answer of a standby, so clients know to look for the active elsewhere.
pub const ROLE_HEADER: &str = "x-spindle-role";

/// What this RM is now, as the HTTP front sees it.
#[derive(Clone)]
pub enum Role {
    /// Leads in `epoch`: `api` serves the current term's RM.
    Active { api: Router, url: String, epoch: u64 },
    /// Waits; `leader` is the active's URL and epoch, if known.
    Standby { leader: Option<(String, u64)> },
}

impl Role {
    fn health(&self) -> HealthReport {
        let (role, leader) = match self {
            Role::Active { url, epoch, .. } => (RmRole::Active, Some((url.clone(), *epoch))),
            Role::Standby { leader } => (RmRole::Standby, leader.clone()),
        };
        HealthReport {
            status: "ok".to_owned(),
            role,
            active: leader.as_ref().map(|(url, _)| url.clone()),
            epoch: leader.map(|(_, epoch)| epoch),
        }
    }
}

/// The router the server runs for the RM's whole life, whatever its role.
pub fn front(roles: watch::Receiver<Role>) -> Router {
    Router::new()
        .route("/healthz", axum::routing::get(health))
        .fallback(forward)
        .with_state(roles)
}

async fn health(State(roles): State<watch::Receiver<Role>>) -> axum::Json<HealthReport> {
    axum::Json(roles.borrow().health())
}

async fn forward(State(roles): State<watch::Receiver<Role>>, request: Request) -> Response {
    let role = roles.borrow().clone();
    match role {
        Role::Active { api, .. } => match api.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        },
        Role::Standby { leader } => standby_answer(&request, leader),
    }
}

/// 307 to the same path on the active (the method and body are kept by clients), or 503
/// while no active is known. Clients of the URL list follow either by themselves.
fn standby_answer(request: &Request, leader: Option<(String, u64)>) -> Response {
    let mut response = match leader {
        Some((url, _)) => {
            let path = request.uri().path_and_query().map(|path| path.as_str()).unwrap_or("/");
            let location = format!("{url}{path}");
            let mut response = ApiError {
                status: StatusCode::TEMPORARY_REDIRECT,
                code: spindle_protocol::error_codes::STANDBY,
                message: format!("this resource manager is a standby; the active one is at {url}"),
            }
            .into_response();
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            response
        }
        None => {
            let mut response = ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: spindle_protocol::error_codes::NO_ACTIVE_RM,
                message: "no resource manager is active at the moment (one is taking over); retry in a moment".to_owned(),
            }
            .into_response();
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
    };
    response.headers_mut().insert(ROLE_HEADER, HeaderValue::from_static("standby"));
    response
}

/// How the election runs: who this RM is and how long a lease lasts.
struct Campaign {
    config: RmConfig,
    store: Store,
    url: String,
    roles: watch::Sender<Role>,
    shutdown: CancellationToken,
    /// The process's metrics, handed to each term.
    metrics: Arc<RmMetrics>,
}

/// Stands for leadership until `shutdown`: standby until the lease is won, active until it is
/// lost, then standby again. Returns at shutdown (giving the lease up), or with the error that
/// ended a term on SQLite or a failure that is not about leadership.
pub async fn campaign(
    config: RmConfig,
    store: Store,
    url: String,
    roles: watch::Sender<Role>,
    shutdown: CancellationToken,
    metrics: Arc<RmMetrics>,
) -> Result<(), RmError> {
    Campaign {
        config,
        store,
        url,
        roles,
        shutdown,
        metrics,
    }
    .run()
    .await
}

impl Campaign {
    fn lease(&self) -> Duration {
        self.config.leader_lease
    }

    async fn run(self) -> Result<(), RmError> {
        loop {
            let Some((epoch, valid_until)) = self.win().await? else {
                return Ok(());
            };
            let term = self.shutdown.child_token();
            let launcher = Arc::new(HttpAmLauncher::new(self.config.node_authority(), epoch));
            let rm = match ResourceManager::start(
                self.config.clone(),
                self.store.clone(),
                epoch,
                launcher,
                term.clone(),
                Arc::clone(&self.metrics),
            )
            .await
            {
                Ok(rm) => rm,
                Err(RmError::Store(err)) if self.store.elects_leader() && err.is_unavailable() => {
                    tracing::warn!(error = %err, epoch, "could not load the state after winning the lease; standing by");
                    self.roles.send_replace(Role::Standby { leader: None });
                    continue;
                }
                Err(err) => return Err(err),
            };
            tracing::info!(epoch, url = %self.url, store = %self.store.describe(), "this resource manager is active");
            self.roles.send_replace(Role::Active {
                api: crate::api::router(Arc::clone(&rm)),
                url: self.url.clone(),
                epoch,
            });
            rm.spawn_background();
            let lost = self.hold(epoch, valid_until, &term).await;
            term.cancel();
            self.roles.send_replace(Role::Standby { leader: None });
            rm.stop_background().await;
            if let Some(fatal) = rm.fatal_error() {
                if !(fatal.steps_down && self.store.elects_leader()) {
                    return Err(RmError::Stopped(fatal.reason));
                }
                tracing::warn!(epoch, reason = %fatal.reason, "stepping down to standby");
            } else if let Some(reason) = lost {
                tracing::warn!(epoch, %reason, "stepping down to standby");
            } else {
                // A clean stop: let a standby take over without waiting for the lease to expire.
                if let Err(err) = self.store.release_lease(epoch).await {
                    tracing::warn!(error = %err, "could not give the lease up; a standby takes over when it expires");
                }
                return Ok(());
            }
        }
    }

    /// Tries for the lease every fifth of its length until it is won: `Some((epoch, until
    /// when the lease is surely ours))`, or `None` at shutdown. While another RM holds it,
    /// the front redirects to that one.
    async fn win(&self) -> Result<Option<(u64, Instant)>, RmError> {
        let poll = (self.lease() / 5).clamp(Duration::from_millis(20), Duration::from_secs(1));
        loop {
            let asked_at = Instant::now();
            match tokio::time::timeout(self.lease(), self.store.try_lead(&self.url, self.lease())).await {
                Ok(Ok(Leadership::Won { epoch })) => return Ok(Some((epoch, asked_at + self.safe_lease()))),
                Ok(Ok(Leadership::Held { epoch, leader_url })) => {
                    let leader = Some((leader_url, epoch));
                    self.roles.send_if_modified(|role| match role {
                        Role::Standby { leader: known } if *known == leader => false,
                        _ => {
                            tracing::info!(active = %leader.as_ref().map_or("", |(url, _)| url), epoch, "standing by");
                            *role = Role::Standby { leader: leader.clone() };
                            true
                        }
                    });
                }
                Ok(Err(err)) if !self.store.elects_leader() => return Err(err.into()),
                Ok(Err(err)) => tracing::warn!(error = %err, "cannot reach the store to stand for leadership"),
                Err(_) => tracing::warn!(timeout_ms = self.lease().as_millis() as u64, "the store did not answer in time"),
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return Ok(None),
                () = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// How long after asking for (or renewing) the lease this RM may act on it: the lease
    /// less a tenth, for the clocks' rates and the time the answer took to arrive.
    fn safe_lease(&self) -> Duration {
        self.lease() - self.lease() / 10
    }

    /// Renews the lease every quarter of its length until the term ends (`None`) or the lease
    /// is lost or about to run out unrenewed (why).
    async fn hold(&self, epoch: u64, mut valid_until: Instant, term: &CancellationToken) -> Option<String> {
        let every = self.lease() / 4;
        loop {
            // Every quarter lease, or sooner when less than half of the lease is left (a lease
            // won through a slow database arrives nearly spent).
            let pause = every.min(valid_until.saturating_duration_since(Instant::now()) / 2);
            tokio::select! {
                () = term.cancelled() => return None,
                () = tokio::time::sleep_until(valid_until) => {
                    return Some("the lease ran out before the store renewed it".to_owned());
                }
                () = tokio::time::sleep(pause) => {}
            }
            let asked_at = Instant::now();
            match tokio::time::timeout_at(valid_until, self.store.renew_lease(epoch, self.lease())).await {
                Ok(Ok(true)) => valid_until = asked_at + self.safe_lease(),
                Ok(Ok(false)) => return Some("another resource manager has taken the lease".to_owned()),
                Ok(Err(err)) => tracing::warn!(error = %err, "renewing the lease failed; retrying"),
                Err(_) => return Some("the lease ran out before the store renewed it".to_owned()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;

    use super::*;

    fn request(path: &str) -> Request {
        Request::builder().uri(path).body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn a_standby_redirects_to_the_active_keeping_the_path_and_says_its_role() {
        let (_sender, roles) = watch::channel(Role::Standby {
            leader: Some(("http://rm2:8088".to_owned(), 7)),
        });
        let front = front(roles);
        let response = front.clone().oneshot(request("/v1/apps?state=RUNNING")).await.unwrap();
        assert_eq!(response.status(), StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(response.headers()[header::LOCATION], "http://rm2:8088/v1/apps?state=RUNNING");
        assert_eq!(response.headers()[ROLE_HEADER], "standby");

        let response = front.oneshot(request("/healthz")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = axum::body::to_bytes(response.into_body(), 4096).await.unwrap();
        let health: HealthReport = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (health.role, health.active.as_deref(), health.epoch),
            (RmRole::Standby, Some("http://rm2:8088"), Some(7))
        );
    }

    #[tokio::test]
    async fn a_standby_that_knows_no_active_asks_to_retry() {
        let (_sender, roles) = watch::channel(Role::Standby { leader: None });
        let response = front(roles).oneshot(request("/v1/apps")).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        assert_eq!(response.headers()[ROLE_HEADER], "standby");
    }
}
