//! `rk agent`: a node of the cluster. Joining (`join`) and simulated nodes
//! (`simulate`) are built; the kubelet that runs real pods through containerd is not
//! yet, so `rk agent` runs only with `--simulate N` for now, and `rk server` runs the
//! control plane only.

pub mod join;
pub mod simulate;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use tokio_util::sync::CancellationToken;

/// Validated configuration of `rk agent`.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The server URL (`https://SERVER:6443`).
    pub server: String,
    /// The join token.
    pub token: String,
    /// The server CA, for tokens without a CA hash.
    pub ca_file: Option<PathBuf>,
    /// Where the agent keeps its state.
    pub data_dir: PathBuf,
    /// The node name (with `--simulate`, the prefix of the simulated nodes' names).
    pub node_name: String,
    /// Simulated nodes to run (0: a real node).
    pub simulate: usize,
    /// Simulated nodes' allocatable CPU, memory and pod count.
    pub simulate_cpu: String,
    /// See `simulate_cpu`.
    pub simulate_memory: String,
    /// See `simulate_cpu`.
    pub simulate_pods: u32,
    /// How long simulated run-to-completion pods run.
    pub simulate_run_for: Duration,
    /// The cluster's pod network.
    pub cluster_cidr: ipnet::Ipv4Net,
}

/// Runs the agent until `shutdown`.
pub async fn run(cfg: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    if cfg.simulate == 0 {
        bail!("the kubelet is not built yet: `rk agent` runs simulated nodes only (--simulate N)");
    }
    let kubeconfig = join::join(&cfg.server, &cfg.token, cfg.ca_file.as_deref(), &cfg.node_name, &cfg.data_dir).await?;
    let client = join::client(&kubeconfig).await?;
    let sim = simulate::SimConfig {
        count: cfg.simulate,
        prefix: cfg.node_name.clone(),
        cpu: cfg.simulate_cpu.clone(),
        memory: cfg.simulate_memory.clone(),
        pods: cfg.simulate_pods,
        run_for: cfg.simulate_run_for,
        cluster_cidr: cfg.cluster_cidr,
    };
    simulate::run(client, sim, shutdown).await?;
    Ok(())
}
