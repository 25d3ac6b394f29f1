//! `rk server`: staged start of the control plane.
//!
//! store open → identity (CA, certificates, kubeconfig, token) → API serving →
//! bootstrap objects → ready. Each stage waits on the one before, never on a sleep.

pub mod apiserver;
pub mod audit;
pub mod auth;
pub mod client;
pub mod controllers;
pub mod scheduler;
pub mod secrets_encryption;
pub mod tls;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::embedded::{LogStore, LogStoreOptions, Storage};

/// How long history is kept before compaction (Kubernetes compacts etcd every 5 min).
const HISTORY: Duration = Duration::from_secs(300);
/// kube-controller-manager's `node-monitor-grace-period`.
pub const NODE_MONITOR_GRACE: Duration = Duration::from_secs(50);
/// How often the compactor looks at the history.
const COMPACT_EVERY: Duration = Duration::from_secs(5);
/// History longer than this many revisions is compacted before it is [`HISTORY`] old
/// (a burst of writes, say 30,000 pods created, bound and started, would otherwise
/// keep every superseded version in memory for five minutes)...
const HISTORY_MAX_REVS: i64 = 40_000;
/// ...down to the newest this many: more than a watcher can fall behind before its
/// event buffer drops it (`LogStoreOptions::watch_buffer`), so no live watch loses
/// its place. kine, k3s's store shim, keeps only 1,000 past each compaction.
const HISTORY_KEEP_REVS: i64 = 20_000;

/// Validated configuration of `rk server`.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where state lives (`/var/lib/rk`).
    pub data_dir: PathBuf,
    /// The address the API listens on.
    pub bind_address: IpAddr,
    /// The API port (6443).
    pub https_listen_port: u16,
    /// Where to write the admin kubeconfig.
    pub write_kubeconfig: PathBuf,
    /// The kubeconfig's file mode.
    pub write_kubeconfig_mode: u32,
    /// A join token secret given by the user.
    pub token: Option<String>,
    /// Extra SANs for the serving certificate.
    pub tls_san: Vec<String>,
    /// The pod network.
    pub cluster_cidr: ipnet::Ipv4Net,
    /// The service network.
    pub service_cidr: ipnet::Ipv4Net,
    /// The cluster DNS domain.
    pub cluster_domain: String,
    /// This node's name.
    pub node_name: String,
    /// Run no agent in this process.
    pub disable_agent: bool,
    /// How long a node may go without a heartbeat before it is marked unreachable.
    pub node_monitor_grace: Duration,
    /// Run no controllers (`--disable-controller-manager`).
    pub disable_controller_manager: bool,
    /// Run no scheduler (`--disable-scheduler`).
    pub disable_scheduler: bool,
    /// The scheduler's configuration (`--scheduler-config`).
    pub scheduler_config: scheduler::SchedulerConfig,
    /// Store Secrets encrypted (`--secrets-encryption`).
    pub secrets_encryption: bool,
    /// The own agent's `--node-ip`.
    pub node_ip: Option<IpAddr>,
    /// `--node-external-ip` for its own node.
    pub node_external_ip: Option<IpAddr>,
    /// `--resolv-conf` for its own node.
    pub resolv_conf: Option<PathBuf>,
    /// `--pod-network` for its own node.
    pub pod_network: crate::agent::net::routes::PodNetwork,
    /// The own agent's `--node-label`s.
    pub node_labels: std::collections::BTreeMap<String, String>,
    /// The own agent's `--node-taint`s.
    pub node_taints: Vec<k8s_openapi::api::core::v1::Taint>,
    /// The own agent's `--eviction-hard` and the other eviction and image GC flags.
    pub eviction: crate::agent::kubelet::eviction::EvictionArgs,
    /// The own agent's `--container-runtime-endpoint`.
    pub runtime_endpoint: Option<PathBuf>,
    /// The own agent's `--private-registry`.
    pub registries: crate::agent::runtime::registries::Registries,
    /// The audit log, when `--audit-log-path` is given.
    pub audit: Option<audit::AuditConfig>,
    /// Snapshots of the store.
    pub snapshots: SnapshotConfig,
}

/// Where and how often the server snapshots its store.
#[derive(Clone, Debug)]
pub struct SnapshotConfig {
    /// The snapshot directory.
    pub dir: PathBuf,
    /// How often to take scheduled snapshots; None for never.
    pub interval: Option<Duration>,
    /// Scheduled snapshots kept.
    pub retention: usize,
}

impl ServerConfig {
    /// A server on 127.0.0.1 with a port the OS picks, all state (data, kubeconfig)
    /// under `dir`, default networks and no agent: what tests and benchmarks run.
    pub fn loopback(dir: &std::path::Path) -> ServerConfig {
        ServerConfig {
            data_dir: dir.join("data"),
            bind_address: IpAddr::from([127, 0, 0, 1]),
            https_listen_port: 0,
            write_kubeconfig: dir.join("kubeconfig.yaml"),
            write_kubeconfig_mode: 0o600,
            token: None,
            tls_san: vec![],
            cluster_cidr: "10.42.0.0/16".parse().expect("valid CIDR"),
            service_cidr: "10.43.0.0/16".parse().expect("valid CIDR"),
            cluster_domain: "cluster.local".into(),
            node_name: "rk-test".into(),
            disable_agent: true,
            node_monitor_grace: NODE_MONITOR_GRACE,
            disable_controller_manager: false,
            disable_scheduler: false,
            scheduler_config: Default::default(),
            secrets_encryption: false,
            node_ip: None,
            node_external_ip: None,
            resolv_conf: None,
            pod_network: Default::default(),
            node_labels: Default::default(),
            node_taints: vec![],
            eviction: Default::default(),
            runtime_endpoint: None,
            registries: Default::default(),
            audit: None,
            snapshots: SnapshotConfig {
                dir: crate::embedded::snapshot::default_dir(&dir.join("data")),
                interval: None,
                retention: 5,
            },
        }
    }

    /// The cluster DNS Service IP: the tenth address of the service CIDR.
    pub fn dns_ip(&self) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::from(u32::from(self.service_cidr.network()) + 10)
    }

    /// The configuration of the server's own agent: the same join a remote agent
    /// does, over loopback with the server's token.
    pub fn agent_config(&self, addr: SocketAddr, token: &str) -> crate::agent::AgentConfig {
        crate::agent::AgentConfig {
            server: format!("https://127.0.0.1:{}", addr.port()),
            token: token.to_string(),
            ca_file: None,
            data_dir: self.data_dir.clone(),
            node_name: self.node_name.clone(),
            simulate: 0,
            simulate_cpu: String::new(),
            simulate_memory: String::new(),
            simulate_pods: 0,
            simulate_run_for: Duration::ZERO,
            cluster_cidr: self.cluster_cidr,
            node_ip: self.node_ip,
            node_external_ip: self.node_external_ip,
            resolv_conf: self.resolv_conf.clone(),
            pod_network: self.pod_network,
            node_labels: self.node_labels.clone(),
            node_taints: self.node_taints.clone(),
            eviction: self.eviction.clone(),
            runtime_endpoint: self.runtime_endpoint.clone(),
            registries: self.registries.clone(),
            cluster_dns: self.dns_ip().to_string(),
            cluster_domain: self.cluster_domain.clone(),
        }
    }

    /// The `kubernetes` Service IP: the first address of the service CIDR.
    pub fn service_ip(&self) -> std::net::Ipv4Addr {
        let n = u32::from(self.service_cidr.network());
        std::net::Ipv4Addr::from(n + 1)
    }
}

/// Why the server failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The datastore could not be opened.
    #[error("opening the datastore at {path}")]
    Store {
        /// The store directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: crate::embedded::StorageError,
    },
    /// Certificates, kubeconfig or token could not be set up.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The API port could not be bound.
    #[error("listening on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The server's own agent failed.
    #[error("the agent of this server: {0}")]
    Agent(String),
    /// Creating the bootstrap objects failed.
    #[error("creating bootstrap objects: {0}")]
    Bootstrap(#[from] crate::api::status::ApiError),
    /// A key (service-account signing, secrets encryption) could not be read or made.
    #[error("keys: {0}")]
    SigningKey(String),
    /// The audit log could not be opened.
    #[error("{0}")]
    Audit(String),
}

/// A running server, for tests and for the in-process agent.
pub struct Running {
    /// The address the API listens on.
    pub addr: SocketAddr,
    /// The admin kubeconfig contents.
    pub kubeconfig: String,
    /// The cluster identity.
    pub identity: tls::Identity,
    /// The API server.
    pub api: Arc<apiserver::ApiServer>,
    /// The store.
    pub store: LogStore,
}

/// Starts the server and returns once the API answers; tasks run on `tracker` until
/// `shutdown` is cancelled.
pub async fn start(
    cfg: &ServerConfig,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Result<Running, ServerError> {
    let t0 = std::time::Instant::now();
    // The kinds' shapes (for managedFields) take a few ms to build; every write needs
    // them, so build them while the store opens rather than in the first write.
    std::thread::spawn(|| {
        crate::api::schema::Types::builtin();
    });
    let server_dir = cfg.data_dir.join("server");
    let db_dir = server_dir.join("db");
    let store = LogStore::open(&db_dir, LogStoreOptions::default())
        .map_err(|source| ServerError::Store { path: db_dir.clone(), source })?;
    tracing::info!(path = %db_dir.display(), revision = store.current_rev(), "datastore open");
    crate::component_ready("datastore");

    let node_ips = local_ips();
    let id_spec = tls::IdentitySpec {
        server_dir: server_dir.clone(),
        tls_sans: cfg.tls_san.clone(),
        node_ips,
        service_ip: IpAddr::V4(cfg.service_ip()),
        cluster_domain: cfg.cluster_domain.clone(),
        token: cfg.token.clone(),
    };
    let identity = tls::Identity::load_or_create(&id_spec)?;
    let (tls_cfg, certs, serving) = identity.server_config()?;

    let addr = SocketAddr::new(cfg.bind_address, cfg.https_listen_port);
    let listener = TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { addr, source })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Bind { addr, source })?;
    // Secrets encryption is a layer over the store; it stays (to read what it wrote)
    // when the flag is later dropped, and then writes plaintext.
    let keys_path = server_dir.join("cred").join("encryption-keys.json");
    let mut api_store: Arc<dyn Storage> = Arc::new(store.clone());
    let mut encrypted = None;
    if cfg.secrets_encryption || keys_path.exists() {
        let keys =
            secrets_encryption::Keys::load(&keys_path, cfg.secrets_encryption).map_err(ServerError::SigningKey)?;
        let e = Arc::new(secrets_encryption::EncryptedStore::new(api_store.clone(), keys));
        if cfg.secrets_encryption {
            let n = e.reencrypt().await.map_err(|e| ServerError::SigningKey(e.to_string()))?;
            tracing::info!(rewritten = n, "secrets encryption on");
        }
        api_store = e.clone();
        encrypted = Some(e);
    }
    let api = apiserver::ApiServer::new(api_store, shutdown.clone(), addr.to_string(), cfg.service_cidr);
    if let Some(e) = encrypted {
        let _ = api.secrets.set(e);
    }
    let _ = api.identity.set(Arc::new(identity.clone()));
    if let Some(a) = &cfg.audit {
        let log = audit::AuditLog::open(a).map_err(ServerError::Audit)?;
        tracing::info!(path = %a.path.display(), "audit log on");
        let _ = api.audit.set(log);
    }
    let issuer = format!("https://kubernetes.default.svc.{}", cfg.cluster_domain);
    let key = server_dir.join("tls").join("service-account.key");
    let signer = auth::token::Signer::load_or_create(&key, &issuer).map_err(ServerError::SigningKey)?;
    let _ = api.signer.set(Arc::new(signer));
    api.load_custom().await?;
    // RBAC's caches, kept by the API server's own (system:masters) client.
    let publisher = client::in_process(api.clone(), "system:apiserver", &["system:masters"]);
    let rbac = auth::rbac::Rbac::start(&publisher, &shutdown);
    let _ = api.rbac.set(rbac.clone());
    api.bootstrap(&cfg.service_ip().to_string(), &cfg.dns_ip().to_string(), addr.port()).await?;
    if tokio::time::timeout(Duration::from_secs(30), rbac.ready()).await.is_err() {
        tracing::warn!("the RBAC caches did not fill within 30s; serving anyway");
    }
    tracker.spawn(api.clone().serve(listener, tls_cfg, certs, shutdown.clone(), tracker.clone()));
    tracing::info!(%addr, "API server listening");
    crate::component_ready("apiserver");

    let advertise = match (cfg.node_ip, cfg.bind_address) {
        (Some(ip), _) => ip,
        (None, b) if !b.is_unspecified() && !b.is_loopback() => b,
        _ => crate::agent::kubelet::node::node_ip(None),
    };
    if let Err(e) = controllers::endpoints::publish_apiserver(&publisher, advertise, addr.port()).await {
        tracing::warn!(error = %e, "publishing the kubernetes Service's endpoints failed");
    }
    let host = if cfg.bind_address.is_unspecified() || cfg.bind_address.is_loopback() {
        "127.0.0.1".to_string()
    } else {
        cfg.bind_address.to_string()
    };
    let server_url = format!("https://{host}:{}", addr.port());
    let kubeconfig = identity.admin_kubeconfig(&server_url);
    tls::write_kubeconfig(&cfg.write_kubeconfig, &kubeconfig, cfg.write_kubeconfig_mode)?;
    tracing::info!(path = %cfg.write_kubeconfig.display(), "wrote admin kubeconfig");
    tracker.spawn(cert_keeper(id_spec, serving, cfg.clone(), server_url, shutdown.clone()));

    tracker.spawn(compactor(store.clone(), shutdown.clone()));
    let _ = api.snapshots.set((store.clone(), cfg.snapshots.dir.clone(), cfg.node_name.clone()));
    if let Some(every) = cfg.snapshots.interval {
        tracker.spawn(scheduled_snapshots(
            store.clone(),
            cfg.snapshots.clone(),
            cfg.node_name.clone(),
            every,
            shutdown.clone(),
        ));
    }
    let cm = client::in_process(api.clone(), "system:kube-controller-manager", &[]);
    let ccfg = controllers::ControllerConfig {
        ca_pem: identity.ca.cert_pem.clone(),
        cluster_cidr: cfg.cluster_cidr,
        node_monitor_grace: cfg.node_monitor_grace,
        controllers: !cfg.disable_controller_manager,
        scheduler: !cfg.disable_scheduler,
        scheduler_config: cfg.scheduler_config.clone(),
    };
    controllers::start(api.clone(), cm, ccfg, tracker, shutdown.clone());
    if !cfg.disable_controller_manager {
        crate::component_ready("controller-manager");
    }
    api.set_ready();
    tracing::info!(elapsed_ms = t0.elapsed().as_millis() as u64, "rk server is ready");
    Ok(Running { addr, kubeconfig, identity, api, store })
}

/// Labels the server's own Node `node-role.kubernetes.io/control-plane` and `master`
/// once it exists, as k3s does for its servers.
async fn label_control_plane(client: kube::Client, node: String, shutdown: CancellationToken) {
    use k8s_openapi::api::core::v1::Node;
    use kube::api::{Api, Patch, PatchParams};
    let api: Api<Node> = Api::all(client);
    let labels = serde_json::json!({"metadata": {"labels": {
        "node-role.kubernetes.io/control-plane": "true",
        "node-role.kubernetes.io/master": "true",
    }}});
    loop {
        if let Ok(Some(_)) = api.get_opt(&node).await
            && api.patch(&node, &PatchParams::default(), &Patch::Merge(&labels)).await.is_ok()
        {
            return;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// Runs `rk server` until `shutdown`.
pub async fn run(cfg: ServerConfig, shutdown: CancellationToken) -> Result<(), ServerError> {
    let tracker = TaskTracker::new();
    let running = start(&cfg, shutdown.clone(), &tracker).await?;
    crate::notify_ready();
    if cfg.disable_agent {
        shutdown.cancelled().await;
    } else {
        let acfg = cfg.agent_config(running.addr, &running.identity.token);
        // The control-plane role labels are the server's to give (NodeRestriction keeps
        // a node from labelling itself so), once its agent has registered the Node.
        let admin = client::in_process(running.api.clone(), "system:apiserver", &["system:masters"]);
        tracker.spawn(label_control_plane(admin, cfg.node_name.clone(), shutdown.clone()));
        tokio::select! {
            _ = shutdown.cancelled() => {}
            r = crate::agent::run(acfg, shutdown.clone()) => {
                if let Err(e) = r {
                    // The node failing takes the server down with it, as a critical task should.
                    tracing::error!(error = %format!("{e:#}"), "the server's agent failed");
                    shutdown.cancel();
                    tracker.close();
                    let _ = tokio::time::timeout(Duration::from_secs(10), tracker.wait()).await;
                    return Err(ServerError::Agent(format!("{e:#}")));
                }
            }
        }
    }
    tracing::info!("shutting down");
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(10), tracker.wait()).await.is_err() {
        tracing::warn!("some tasks did not stop within 10s");
    }
    drop(running);
    Ok(())
}

/// Compacts history older than [`HISTORY`], or beyond [`HISTORY_MAX_REVS`] revisions,
/// looking every [`COMPACT_EVERY`]; the store compacts in bounded batches.
async fn compactor(store: LogStore, shutdown: CancellationToken) {
    let mut plan = CompactionPlan::default();
    let mut tick = tokio::time::interval(COMPACT_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = tokio::time::Instant::now();
        if let Some(r) = plan.target(now, store.current_rev(), store.compacted_rev())
            && let Err(e) = store.compact(r).await
        {
            tracing::warn!(revision = r, error = %e, "compaction failed");
        }
    }
}

/// Which revision to compact to: the one current [`HISTORY`] ago, or, where more than
/// [`HISTORY_MAX_REVS`] revisions are kept, the newest [`HISTORY_KEEP_REVS`] only.
#[derive(Default)]
struct CompactionPlan {
    /// The current revision at each look, oldest first.
    seen: std::collections::VecDeque<(tokio::time::Instant, i64)>,
}

impl CompactionPlan {
    fn target(&mut self, now: tokio::time::Instant, current: i64, compacted: i64) -> Option<i64> {
        self.seen.push_back((now, current));
        let mut target = None;
        while let Some(&(t, r)) = self.seen.front() {
            if now.duration_since(t) < HISTORY {
                break;
            }
            target = Some(r);
            self.seen.pop_front();
        }
        if current - compacted > HISTORY_MAX_REVS {
            target = target.max(Some(current - HISTORY_KEEP_REVS));
        }
        target.filter(|&r| r > compacted)
    }
}

/// How often the server looks for changed certificate files.
const CERT_RELOAD_EVERY: Duration = Duration::from_secs(10);
/// How often it renews what is near expiry (besides at start).
const CERT_RENEW_EVERY: Duration = Duration::from_secs(12 * 3600);

/// Keeps the server's certificates current while it runs: new files on disk (`rk
/// certificate rotate`) are served to new connections within seconds, and certificates
/// within 90 days of expiry are renewed every 12 h, without a restart; the admin
/// kubeconfig is rewritten to match.
async fn cert_keeper(
    spec: tls::IdentitySpec,
    serving: Arc<tls::ServingCert>,
    cfg: ServerConfig,
    server_url: String,
    shutdown: CancellationToken,
) {
    let tls_dir = spec.server_dir.join("tls");
    let stamp = || {
        ["serving-kube-apiserver.crt", "client-admin.crt"]
            .map(|f| std::fs::metadata(tls_dir.join(f)).and_then(|m| m.modified()).ok())
    };
    let mut seen = stamp();
    let mut last_renew = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(CERT_RELOAD_EVERY) => {}
        }
        let renew = last_renew.elapsed() >= CERT_RENEW_EVERY;
        if stamp() == seen && !renew {
            continue;
        }
        last_renew = tokio::time::Instant::now();
        let spec = spec.clone();
        let loaded = tokio::task::spawn_blocking(move || tls::Identity::load_or_create(&spec)).await;
        let id = match loaded {
            Ok(Ok(id)) => id,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reloading the server's certificates failed; serving the old ones");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "the certificate reload task failed");
                continue;
            }
        };
        let now = stamp();
        if now == seen {
            continue;
        }
        seen = now;
        if let Err(e) = serving.set(&id) {
            tracing::warn!(error = %e, "the new serving certificate is unusable; serving the old one");
            continue;
        }
        let kc = id.admin_kubeconfig(&server_url);
        if let Err(e) = tls::write_kubeconfig(&cfg.write_kubeconfig, &kc, cfg.write_kubeconfig_mode) {
            tracing::warn!(error = %e, "rewriting the admin kubeconfig failed");
        }
        tracing::info!("loaded renewed certificates; new connections get the new serving certificate");
    }
}

/// Takes a snapshot at every multiple of `every` since the epoch (so `12h` is 00:00
/// and 12:00 UTC, as k3s's default cron), keeping the newest `retention`.
async fn scheduled_snapshots(
    store: LogStore,
    cfg: SnapshotConfig,
    node: String,
    every: Duration,
    shutdown: CancellationToken,
) {
    use crate::embedded::snapshot;
    let every_ms = (every.as_millis() as u64).max(1000);
    loop {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let wait = Duration::from_millis(every_ms - now_ms % every_ms);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let (store, cfg, node) = (store.clone(), cfg.clone(), node.clone());
        let done = tokio::task::spawn_blocking(move || {
            snapshot::save(&store, &cfg.dir, snapshot::SCHEDULED, Some(&node))?;
            snapshot::prune(&cfg.dir, snapshot::SCHEDULED, cfg.retention)
        })
        .await;
        match done {
            Ok(Ok(pruned)) if !pruned.is_empty() => tracing::info!(?pruned, "pruned old snapshots"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the scheduled snapshot failed"),
            Err(e) => tracing::warn!(error = %e, "the scheduled snapshot task failed"),
        }
    }
}

/// The host's non-loopback addresses, for the serving certificate.
fn local_ips() -> Vec<IpAddr> {
    nix::ifaddrs::getifaddrs()
        .map(|it| {
            it.filter_map(|a| a.address)
                .filter_map(|s| {
                    s.as_sockaddr_in()
                        .map(|v4| IpAddr::V4(v4.ip()))
                        .or_else(|| s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
                })
                .filter(|ip| {
                    !ip.is_loopback() && !matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_is_compacted_by_age_and_by_length() {
        let mut plan = CompactionPlan::default();
        let t0 = tokio::time::Instant::now();
        // Young history of ordinary length stays.
        assert_eq!(plan.target(t0, 100, 0), None);
        assert_eq!(plan.target(t0 + COMPACT_EVERY, 200, 0), None);
        // Five minutes on, what was current then goes.
        assert_eq!(plan.target(t0 + HISTORY, 300, 0), Some(100));
        assert_eq!(plan.target(t0 + HISTORY + COMPACT_EVERY, 300, 100), Some(200));
        // A burst: only the newest HISTORY_KEEP_REVS are kept, at once.
        let burst = 200 + HISTORY_MAX_REVS + 1;
        let at = t0 + HISTORY + 2 * COMPACT_EVERY;
        assert_eq!(plan.target(at, burst, 200), Some(burst - HISTORY_KEEP_REVS));
        // Nothing to do once compacted there, until the age rule catches up.
        assert_eq!(plan.target(at + COMPACT_EVERY, burst, burst - HISTORY_KEEP_REVS), None);
    }
}
