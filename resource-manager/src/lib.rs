//! The Spindle resource manager: the cluster state machine, the scheduler interface, the
//! durable store, and the REST API that serves users, agents and application masters.

pub mod api;
pub mod app_history;
pub mod app_logs;
pub mod cluster;
pub mod config;
pub mod error;
pub mod ha;
pub mod launcher;
pub mod memory;
pub mod metrics;
pub mod records;
pub mod scheduler;
pub mod service;
pub mod sim;
pub mod store;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{ApiUser, RmConfig};
pub use error::RmError;
pub use service::ResourceManager;

/// How long a fail-stopped RM lets requests in flight finish before it exits anyway.
const FATAL_STOP_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs the RM on an already-bound listener until `shutdown` is cancelled (or a store failure
/// stops it). Opens the store named in the config and serves; on PostgreSQL it stands for
/// leadership among the RMs of the database (`ha`) and serves as a standby until it leads, on
/// SQLite it leads at once. At shutdown, requests in flight get `http.shutdown_timeout` to
/// finish; then the RM stops anyway.
pub async fn run(config: RmConfig, listener: TcpListener, shutdown: CancellationToken) -> Result<(), RmError> {
    config.validate()?;
    let tls = match (&config.tls.cert_file, &config.tls.key_file, &config.tls.ca_file) {
        (Some(cert), Some(key), Some(ca)) => {
            // Before any client exists: the launcher's and the log proxy's check agents with it.
            spindle_protocol::tls::trust_ca_file(ca).map_err(RmError::Tls)?;
            Some(spindle_http_server::tls::acceptor(cert, key).map_err(RmError::Tls)?)
        }
        _ => None,
    };
    let store = store::Store::connect_with(&config.db, config.store_options()).await?;
    let address = listener.local_addr()?;
    let url = config.advertise_url(address);
    tracing::info!(%address, %url, tls = tls.is_some(), store = %store.describe(), "resource manager listening");
    let (roles, mut watch_roles) = tokio::sync::watch::channel(ha::Role::Standby { leader: None });
    let limits = config.http.server_limits();
    let server_stop = shutdown.child_token();
    let mut campaign = tokio::spawn(ha::campaign(config, store, url, roles, shutdown.clone(), metrics::RmMetrics::new()));
    // Serve once the first try at leadership has settled the role (on SQLite: active), so a
    // `/healthz` that answers means the RM knows what it is.
    let ended_early = tokio::select! {
        _ = watch_roles.changed() => None,
        ended = &mut campaign => Some(ended),
    };
    if let Some(ended) = ended_early {
        return joined(ended);
    }
    let serving = tokio::spawn(spindle_http_server::serve(
        listener,
        ha::front(watch_roles),
        limits,
        tls,
        server_stop.clone().cancelled_owned(),
    ));
    let outcome = joined(campaign.await);
    server_stop.cancel();
    match &outcome {
        Ok(()) => {
            let _ = serving.await;
        }
        // A fail-stopped RM can answer nothing useful any more: it does not wait the whole
        // graceful bound for clients, but exits soon so a supervisor restarts it.
        Err(_) => {
            if tokio::time::timeout(FATAL_STOP_DRAIN, serving).await.is_err() {
                tracing::warn!(
                    drain_s = FATAL_STOP_DRAIN.as_secs(),
                    "stopping with connections still open after a fatal error"
                );
            }
        }
    }
    shutdown.cancel();
    outcome
}

/// The campaign task's outcome; a panic in it (a bug) is an error too, so a supervisor restarts.
fn joined(ended: Result<Result<(), RmError>, tokio::task::JoinError>) -> Result<(), RmError> {
    ended.unwrap_or_else(|panic| Err(RmError::Stopped(format!("the election task failed: {panic}"))))
}

/// SIGHUP reloads the queues from the config file, as `spindle queues reload` does; a refused
/// reload is logged and changes nothing.
pub(crate) async fn reload_on_sighup(rm: Arc<ResourceManager>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: reload the queues with `spindle queues reload`");
            return;
        };
        loop {
            tokio::select! {
                _ = rm.shutdown.cancelled() => return,
                received = hangups.recv() => if received.is_none() { return },
            }
            match rm.reload_queues().await {
                Ok(_) => tracing::info!("SIGHUP: queues reloaded"),
                Err(err) => tracing::error!(error = %err, "SIGHUP: queue reload refused; the old queues stay"),
            }
        }
    }
}
