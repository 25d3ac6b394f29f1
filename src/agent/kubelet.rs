//! The kubelet: registers this node, keeps its Lease, sets up the pod network once
//! the node has a podCIDR, and runs one worker per pod bound to the node (see
//! `pod_worker`), all through containerd.

pub mod api;
pub mod cni;
pub mod credentials;
pub mod env;
pub mod eviction;
pub mod node;
pub mod pod_worker;
pub mod pressure;
pub mod static_pods;
pub mod status;
pub mod volumes;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::events::{Recorder, Reporter};
use futures::StreamExt;
use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::agent::runtime::{self, containerd::ContainerdPaths};

/// What the kubelet needs.
#[derive(Clone, Debug)]
pub struct KubeletConfig {
    /// The node.
    pub node: NodeConfigOwned,
    /// The agent's data dir.
    pub data_dir: PathBuf,
    /// The cluster DNS Service IP pods are given.
    pub cluster_dns: String,
    /// `--resolv-conf`: what pods with `dnsPolicy: Default` get (else the runtime's).
    pub resolv_conf: Option<PathBuf>,
    /// Every other node is reached over VXLAN: pods get its smaller MTU.
    pub vxlan: bool,
    /// The cluster domain.
    pub cluster_domain: String,
    /// An existing containerd socket (`--container-runtime-endpoint`); else rk runs its own.
    pub runtime_endpoint: Option<PathBuf>,
    /// `--private-registry`, for rk's own containerd.
    pub registries: runtime::registries::Registries,
    /// The node's kubeconfig (server URL and credentials), for the kubelet tunnel.
    pub kubeconfig: String,
}

/// See [`node::NodeConfig`].
pub type NodeConfigOwned = node::NodeConfig;

const LEASE_EVERY: Duration = Duration::from_secs(10);
const STATUS_EVERY: Duration = Duration::from_secs(60);

/// Runs the kubelet until `shutdown`.
pub async fn run(client: kube::Client, cfg: KubeletConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let agent_dir = cfg.data_dir.join("agent");
    let paths = ContainerdPaths::new(&cfg.data_dir);
    let (cri, socket) = match &cfg.runtime_endpoint {
        Some(sock) => {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            let cri = loop {
                match runtime::connect_cri(sock).await {
                    Ok(c) => break c,
                    Err(e) if tokio::time::Instant::now() > deadline => return Err(e.into()),
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            };
            tracing::info!(socket = %sock.display(), "using the given containerd (its sandbox_image should be {})", runtime::pause::PAUSE_IMAGE);
            if cfg.registries != Default::default() {
                tracing::warn!(
                    "registries.yaml applies to rk's own containerd; configure the given containerd's registries yourself"
                );
            }
            (cri, sock.clone())
        }
        None => {
            let sup =
                runtime::containerd::start(&paths, runtime::pause::PAUSE_IMAGE, &cfg.registries, shutdown.clone())
                    .await?;
            let cri = runtime::connect_cri(&sup.socket).await?;
            (cri, sup.socket.clone())
        }
    };
    runtime::ensure_pause_image(&cri).await?;
    runtime::import_dir(&cri, &agent_dir.join("images")).await;
    let version = cri.rt().version(cri::VersionRequest { version: "v1".into() }).await?.into_inner();
    let runtime_version = format!("{}://{}", version.runtime_name, version.runtime_version);

    let ncfg = cfg.node.clone();
    let imagefs = node::imagefs(&cfg.data_dir);
    let under = ncfg.eviction.pressure(&pressure::observe(&cfg.data_dir, &imagefs));
    let (pressure_tx, pressure_rx) = watch::channel(under.clone());
    let st = node::status(
        &ncfg,
        &cfg.data_dir,
        &runtime_version,
        (false, "container runtime network not ready: cni config uninitialized"),
        &under,
    );
    node::register(&client, &ncfg, st).await?;
    let host_ip = node::node_ip(ncfg.ip).to_string();
    tracing::info!(node = %ncfg.name, ip = %host_ip, runtime = %runtime_version, socket = %socket.display(), "node registered");
    crate::component_ready("kubelet");
    crate::agent::simulate::renew_leases(&client, std::slice::from_ref(&ncfg.name)).await;

    let (net_tx, net_rx) = watch::channel(false);
    let alloc: BTreeMap<String, f64> = node::capacity(&cfg.data_dir)
        .into_iter()
        .filter_map(|(k, v)| crate::server::scheduler::parse_quantity(&v).map(|q| (k, q)))
        .collect();
    let logs_root = if cfg.data_dir == std::path::Path::new("/var/lib/rk") {
        PathBuf::from("/var/log/pods")
    } else {
        agent_dir.join("pod-logs")
    };
    let ctx = Arc::new(pod_worker::NodeCtx {
        client: client.clone(),
        cri: cri.clone(),
        node: ncfg.name.clone(),
        host_ip: host_ip.clone(),
        pods_root: agent_dir.join("pods"),
        logs_root,
        cluster_dns: cfg.cluster_dns.clone(),
        resolv_conf: cfg.resolv_conf.clone(),
        cluster_domain: cfg.cluster_domain.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter { controller: "kubelet".into(), instance: Some(ncfg.name.clone()) },
        ),
        node_alloc: alloc,
        cgroup_root: "/rk".into(),
        network_ready: net_rx,
        pressure: pressure_rx.clone(),
        evictions: Default::default(),
        wake: watch::channel(()).0,
        pods: Default::default(),
    });
    let evictions =
        eviction::Manager::new(ctx.clone(), ncfg.eviction.clone(), cfg.data_dir.clone(), imagefs, pressure_tx).run();

    let network = {
        let (client, ncfg, paths, data_dir, rv, pressure) = (
            client.clone(),
            ncfg.clone(),
            paths.clone(),
            cfg.data_dir.clone(),
            runtime_version.clone(),
            pressure_rx.clone(),
        );
        let vxlan = cfg.vxlan;
        async move {
            let api: Api<Node> = Api::all(client.clone());
            let ipam_dir = paths.state.join("cni-ipam");
            loop {
                let cidr = api
                    .get(&ncfg.name)
                    .await
                    .ok()
                    .and_then(|n| n.spec?.pod_cidr)
                    .and_then(|c| c.parse::<ipnet::Ipv4Net>().ok());
                if let Some(cidr) = cidr {
                    let mtu = if vxlan {
                        let link = crate::agent::net::routes::link_mtu(node::node_ip(ncfg.ip)).await;
                        Some(link.saturating_sub(crate::agent::net::routes::VXLAN_OVERHEAD))
                    } else {
                        None
                    };
                    match cni::write(&paths.cni_conf_dir, &cidr, &ipam_dir, mtu) {
                        Ok(()) => {
                            tracing::info!(%cidr, "pod network configured");
                            let _ = net_tx.send(true);
                            // Written again if the pressure changed meanwhile: the
                            // heartbeat's update for that change may have landed first.
                            loop {
                                let under = pressure.borrow().clone();
                                let st = node::status(&ncfg, &data_dir, &rv, (true, ""), &under);
                                let _ = node::register(&client, &ncfg, st).await;
                                if *pressure.borrow() == under {
                                    return;
                                }
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "writing the CNI config failed"),
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let heartbeat = {
        let (client, ncfg, data_dir, rv, ready, mut pressure) = (
            client.clone(),
            ncfg.clone(),
            cfg.data_dir.clone(),
            runtime_version.clone(),
            ctx.network_ready.clone(),
            pressure_rx,
        );
        async move {
            let mut lease = tokio::time::interval(LEASE_EVERY);
            let mut status = tokio::time::interval(STATUS_EVERY);
            loop {
                // The status every minute, and at once when the pressure conditions change.
                tokio::select! {
                    _ = lease.tick() => {
                        crate::agent::simulate::renew_leases(&client, std::slice::from_ref(&ncfg.name)).await;
                        continue;
                    }
                    _ = status.tick() => {}
                    r = pressure.changed() => if r.is_err() { return },
                }
                let ok = *ready.borrow();
                let under = pressure.borrow_and_update().clone();
                let st = node::status(
                    &ncfg,
                    &data_dir,
                    &rv,
                    (ok, "container runtime network not ready: cni config uninitialized"),
                    &under,
                );
                let api: Api<Node> = Api::all(client.clone());
                let patch = serde_json::json!({"status": st});
                if let Err(e) =
                    api.patch_status(&ncfg.name, &Default::default(), &kube::api::Patch::Merge(&patch)).await
                {
                    tracing::debug!(error = %e, "node status update failed");
                }
            }
        }
    };
    let tunnel = crate::agent::tunnel::run(cfg.kubeconfig.clone(), ctx.clone(), shutdown.clone());
    let statics = static_pods::run(client.clone(), ncfg.name.clone(), agent_dir.join("pod-manifests"));
    crate::notify_ready();
    tokio::select! {
        _ = tunnel => {}
        _ = statics => {}
        _ = shutdown.cancelled() => {}
        _ = async { network.await; std::future::pending::<()>().await } => {}
        _ = heartbeat => {}
        _ = evictions => {}
        r = dispatch(ctx, shutdown.clone()) => r?,
    }
    Ok(())
}

/// Watches the pods bound to this node and hands each to its worker.
async fn dispatch(ctx: Arc<pod_worker::NodeCtx>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let wc = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.node));
    let mut stream = watcher(api, wc).default_backoff().boxed();
    let mut workers: HashMap<String, watch::Sender<Option<Arc<Pod>>>> = HashMap::new();
    let mut init: Option<HashSet<String>> = None;
    let mut first_sync = true;
    let send = |workers: &mut HashMap<String, watch::Sender<Option<Arc<Pod>>>>, p: Pod| {
        let uid = p.uid().unwrap_or_default();
        let p = Arc::new(p);
        ctx.pods.lock().expect("pods").insert(uid.clone(), p.clone());
        match workers.get(&uid) {
            Some(tx) if !tx.is_closed() => {
                let _ = tx.send(Some(p));
            }
            _ => {
                let (tx, rx) = watch::channel(Some(p));
                tokio::spawn(pod_worker::run(ctx.clone(), uid.clone(), rx, shutdown.clone()));
                workers.insert(uid, tx);
            }
        }
    };
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::Init) => init = Some(HashSet::new()),
            Ok(watcher::Event::InitApply(p)) => {
                if let Some(s) = init.as_mut() {
                    s.insert(p.uid().unwrap_or_default());
                }
                send(&mut workers, p);
            }
            Ok(watcher::Event::InitDone) => {
                let live = init.take().unwrap_or_default();
                // Pods deleted while we were not watching.
                workers.retain(|uid, tx| {
                    if live.contains(uid) {
                        true
                    } else {
                        let _ = tx.send(None);
                        false
                    }
                });
                if first_sync {
                    first_sync = false;
                    remove_orphans(&ctx, &live).await;
                }
            }
            Ok(watcher::Event::Apply(p)) => send(&mut workers, p),
            Ok(watcher::Event::Delete(p)) => {
                if let Some(tx) = workers.remove(&p.uid().unwrap_or_default()) {
                    let _ = tx.send(None);
                }
            }
            Err(e) => tracing::debug!(error = %e, "pod watch error"),
        }
        workers.retain(|_, tx| !tx.is_closed());
        ctx.pods.lock().expect("pods").retain(|uid, _| workers.contains_key(uid));
    }
    Ok(())
}

/// Sandboxes of pods the API no longer has (deleted while the agent was down).
async fn remove_orphans(ctx: &pod_worker::NodeCtx, live: &HashSet<String>) {
    let list = match ctx.cri.rt().list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }).await {
        Ok(r) => r.into_inner().items,
        Err(_) => return,
    };
    let orphans: HashSet<String> = list
        .into_iter()
        .filter(|s| s.labels.get(pod_worker::NODE_LABEL) == Some(&ctx.node))
        .filter_map(|s| s.metadata.map(|m| m.uid))
        .filter(|uid| !uid.is_empty() && !live.contains(uid))
        .collect();
    for uid in orphans {
        tracing::info!(pod = %uid, "removing the sandbox of a pod that no longer exists");
        pod_worker::remove_pod(ctx, &uid).await;
    }
}
