//! `rk agent`: a node of the cluster. It joins (`join`), then runs the kubelet
//! (`kubelet`) over containerd (`runtime`), or with `--simulate N` registers simulated
//! nodes that run no containers (`simulate`). `rk server` runs the same agent
//! in-process for its own node.

pub mod join;
pub mod kubelet;
pub mod net;
pub mod runtime;
pub mod simulate;
pub mod tunnel;

use std::path::PathBuf;
use std::time::Duration;

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
    /// `--node-ip`.
    pub node_ip: Option<std::net::IpAddr>,
    /// `--node-external-ip`.
    pub node_external_ip: Option<std::net::IpAddr>,
    /// `--resolv-conf`.
    pub resolv_conf: Option<PathBuf>,
    /// `--pod-network`.
    pub pod_network: net::routes::PodNetwork,
    /// `--node-label`.
    pub node_labels: std::collections::BTreeMap<String, String>,
    /// `--node-taint`.
    pub node_taints: Vec<k8s_openapi::api::core::v1::Taint>,
    /// `--eviction-hard` and the other eviction and image GC flags.
    pub eviction: kubelet::eviction::EvictionArgs,
    /// `--container-runtime-endpoint`: use this containerd instead of starting one.
    pub runtime_endpoint: Option<PathBuf>,
    /// `--private-registry`: mirrors, credentials and TLS for rk's containerd.
    pub registries: runtime::registries::Registries,
    /// The cluster DNS Service IP given to pods.
    pub cluster_dns: String,
    /// The cluster domain.
    pub cluster_domain: String,
}

/// Runs the agent until `shutdown`.
pub async fn run(cfg: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let creds = join::join(&cfg).await?;
    let kubeconfig = creds.node;
    let client = join::client(&kubeconfig).await?;
    if cfg.simulate == 0 {
        let kcfg = kubelet::KubeletConfig {
            node: kubelet::node::NodeConfig {
                name: cfg.node_name.clone(),
                ip: cfg.node_ip,
                external_ip: cfg.node_external_ip,
                labels: cfg.node_labels.clone(),
                taints: cfg.node_taints.clone(),
                eviction: cfg.eviction.clone(),
            },
            data_dir: cfg.data_dir.clone(),
            cluster_dns: cfg.cluster_dns.clone(),
            resolv_conf: cfg.resolv_conf.clone(),
            vxlan: cfg.pod_network == net::routes::PodNetwork::Vxlan,
            cluster_domain: cfg.cluster_domain.clone(),
            runtime_endpoint: cfg.runtime_endpoint.clone(),
            registries: cfg.registries.clone(),
            kubeconfig: kubeconfig.clone(),
        };
        let ncfg = net::NetConfig {
            node: cfg.node_name.clone(),
            cluster_cidr: cfg.cluster_cidr,
            dns_ip: cfg
                .cluster_dns
                .parse()
                .map_err(|_| anyhow::anyhow!("--cluster-dns {:?} is not an IPv4 address", cfg.cluster_dns))?,
            domain: cfg.cluster_domain.clone(),
            resolv_conf: cfg.resolv_conf.clone().unwrap_or_else(|| PathBuf::from("/etc/resolv.conf")),
            pod_network: cfg.pod_network,
        };
        let net_client = join::client(&creds.network).await?;
        tokio::spawn(cert_monitor(client.clone(), cfg.node_name.clone(), cfg.data_dir.clone(), shutdown.clone()));
        return tokio::select! {
            r = kubelet::run(client.clone(), kcfg, shutdown.clone()) => r,
            () = net::run(net_client, client, ncfg, shutdown) => Ok(()),
        };
    }
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

/// How often the agent looks at its certificates' expiry.
const CERT_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

/// Warns (a `CertificateExpirationWarning` Event on the Node, as k3s gives) when the
/// node's certificates are within 90 days of expiry: the agent renews them when it
/// next starts.
async fn cert_monitor(client: kube::Client, node: String, data_dir: PathBuf, shutdown: CancellationToken) {
    use crate::events::{Event, EventType, Recorder, Reporter};
    let recorder =
        Recorder::new(client.clone(), Reporter { controller: "rk-agent".into(), instance: Some(node.clone()) });
    let mut wait = std::time::Duration::from_secs(10);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = CERT_CHECK_EVERY;
        let due: Vec<String> = crate::server::tls::check_all(&data_dir)
            .into_iter()
            .filter(|c| c.file.starts_with(data_dir.join("agent")) && c.status != "OK")
            .map(|c| {
                let at = chrono::DateTime::from_timestamp(c.not_after, 0).map(|t| t.to_rfc3339()).unwrap_or_default();
                format!("{}: certificate {} will expire within 90 days at {at}", c.file.display(), c.subject)
            })
            .collect();
        if due.is_empty() {
            continue;
        }
        let note = format!(
            "Node certificates require attention - restart rk on this node to trigger automatic rotation: {}",
            due.join(", ")
        );
        tracing::warn!(%note, "certificates expire soon");
        let uid = kube::Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
            .get(&node)
            .await
            .ok()
            .and_then(|n| n.metadata.uid);
        let r = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.clone()),
            uid,
            ..Default::default()
        };
        let ev = Event {
            type_: EventType::Warning,
            reason: "CertificateExpirationWarning".into(),
            note: Some(note.chars().take(1024).collect()),
            action: "CheckCertificates".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&ev, &r).await {
            tracing::debug!(error = %e, "recording the certificate warning failed");
        }
    }
}
