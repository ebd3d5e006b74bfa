//! An RM inside the test process, for tests of its HTTP API.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use spindle_protocol::RmClient;
use spindle_resource_manager::config::{ApiUser, RmConfig};
use tokio_util::sync::CancellationToken;

use super::{
    ADMIN, ADMIN_TOKEN, CONTAINER_LAUNCH_EXPIRY_S, HEARTBEAT_INTERVAL_MS, NODE_EXPIRY_S, SECRET, STARTUP_TIMEOUT, USER, USER_TOKEN,
    wait_until,
};

/// An RM in this process on an ephemeral port, with its store in a temporary directory.
pub struct InProcessRm {
    pub url: String,
    pub dir: tempfile::TempDir,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl InProcessRm {
    /// The same users and timings as the process clusters'.
    pub async fn start() -> InProcessRm {
        InProcessRm::start_with(|_| {}).await
    }

    /// Like `start`, with the config changed by `customize` first.
    pub async fn start_with(customize: impl FnOnce(&mut RmConfig)) -> InProcessRm {
        let dir = crate::support::shared_tempdir("spindle-e2e-rm-");
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind the RM's port");
        let address: SocketAddr = listener.local_addr().expect("the RM's address");
        let config = RmConfig {
            listen: address,
            db: format!("sqlite://{}", dir.path().join("rm.db").display()),
            cluster_secret: SECRET.to_owned(),
            users: vec![
                ApiUser {
                    name: ADMIN.to_owned(),
                    token: ADMIN_TOKEN.to_owned(),
                    admin: true,
                    unix_user: None,
                },
                ApiUser {
                    name: USER.to_owned(),
                    token: USER_TOKEN.to_owned(),
                    admin: false,
                    unix_user: None,
                },
            ],
            node_expiry: Duration::from_secs(NODE_EXPIRY_S),
            heartbeat_interval: Duration::from_millis(HEARTBEAT_INTERVAL_MS),
            container_launch_expiry: Duration::from_secs(CONTAINER_LAUNCH_EXPIRY_S),
            ..RmConfig::default()
        };
        let mut config = config;
        customize(&mut config);
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            if let Err(error) = spindle_resource_manager::run(config, listener, stop).await {
                panic!("the in-process RM failed: {error}");
            }
        });
        let rm = InProcessRm {
            url: format!("http://{address}"),
            dir,
            shutdown,
            task: Some(task),
        };
        let health = format!("{}/healthz", rm.url);
        let http = spindle_protocol::tls::client_builder().build().expect("an HTTP client");
        wait_until(STARTUP_TIMEOUT, "the in-process RM to answer", || async {
            http.get(&health).send().await.is_ok_and(|response| response.status().is_success())
        })
        .await;
        rm
    }

    pub fn admin(&self) -> RmClient {
        RmClient::new(std::slice::from_ref(&self.url), Some(ADMIN_TOKEN.to_owned()))
    }

    pub fn user(&self) -> RmClient {
        RmClient::new(std::slice::from_ref(&self.url), Some(USER_TOKEN.to_owned()))
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("the in-process RM stopped cleanly");
        }
    }
}

impl Drop for InProcessRm {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
