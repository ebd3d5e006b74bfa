//! TEMPORARY: stand-ins with the agreed signatures for library pieces not written yet, so this
//! crate's tests run meanwhile. Remove once spindle_resource_manager::run,
//! spindle_node_agent::{AgentConfig, run} exist.
#![allow(dead_code, unused_variables)]

pub mod resource_manager {
    pub use spindle_resource_manager::*;
    pub async fn run(
        config: config::RmConfig,
        listener: tokio::net::TcpListener,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<()> {
        anyhow::bail!("spindle_resource_manager::run is not written yet")
    }
}

pub mod node_agent {
    use std::path::PathBuf;
    pub struct AgentConfig {
        pub advertise_host: Option<String>,
        pub capacity: Option<spindle_protocol::Resources>,
        pub rack: String,
        pub labels: Vec<String>,
        pub spindle_bin: PathBuf,
    }
    impl AgentConfig {
        pub fn new(rm_urls: Vec<String>, cluster_secret: spindle_protocol::ClusterSecret, work_dir: PathBuf) -> Self {
            AgentConfig { advertise_host: None, capacity: None, rack: String::new(), labels: Vec::new(), spindle_bin: PathBuf::new() }
        }
    }
    pub async fn run(
        config: AgentConfig,
        listener: tokio::net::TcpListener,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<()> {
        anyhow::bail!("spindle_node_agent::run is not written yet")
    }
}
