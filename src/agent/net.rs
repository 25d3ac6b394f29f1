//! Node networking beyond one pod: routes to other nodes' pods (`routes`), the
//! service proxy and NetworkPolicy in nftables (`proxy`, `policy`), the node-local
//! cluster DNS (`dns`) and the Ingress controller (`ingress`), all fed by one watch
//! per kind of object per node.

pub mod dns;
pub mod ingress;
pub mod policy;
pub mod proxy;
pub mod routes;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use kube::api::Api;
use kube::runtime::reflector::{self, Store, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the node's network components need.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// This node.
    pub node: String,
    /// The cluster's pod network.
    pub cluster_cidr: ipnet::Ipv4Net,
    /// The cluster DNS address every node answers on.
    pub dns_ip: std::net::Ipv4Addr,
    /// The cluster domain.
    pub domain: String,
    /// The resolv.conf naming the upstream servers.
    pub resolv_conf: std::path::PathBuf,
    /// How other nodes' pods are reached.
    pub pod_network: routes::PodNetwork,
}

/// A cache of one kind of object, and a counter that moves on every change.
pub struct Cache<K: kube::Resource + Clone + 'static>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    pub store: Store<K>,
    pub changed: watch::Receiver<u64>,
}

fn cache<K>(
    client: &kube::Client,
    wc: watcher::Config,
) -> (Cache<K>, impl std::future::Future<Output = ()> + Send + 'static)
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + serde::de::DeserializeOwned + 'static,
{
    let (store, writer) = reflector::store();
    let (tx, rx) = watch::channel(0u64);
    let api: Api<K> = Api::all(client.clone());
    let run = async move {
        let mut s = reflector(writer, watcher(api, wc)).default_backoff().boxed();
        while let Some(ev) = s.next().await {
            match ev {
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Ok(_) => tx.send_modify(|n| *n += 1),
                Err(e) => tracing::debug!(error = %e, "network watch error"),
            }
        }
    };
    (Cache { store, changed: rx }, run)
}

/// The EndpointSlices of Service `ns/svc`.
pub fn slices_of(slices: &Store<EndpointSlice>, ns: &str, svc: &str) -> Vec<Arc<EndpointSlice>> {
    slices
        .state()
        .into_iter()
        .filter(|s| {
            s.metadata.namespace.as_deref() == Some(ns)
                && s.metadata.labels.as_ref().and_then(|l| l.get("kubernetes.io/service-name")).map(String::as_str)
                    == Some(svc)
        })
        .collect()
}

/// Waits for a change, then a short quiet spell so bursts coalesce.
async fn next_change(rx: &mut [&mut watch::Receiver<u64>]) -> bool {
    let futs: Vec<_> = rx.iter_mut().map(|r| Box::pin(r.changed())).collect();
    let (r, _, _) = futures::future::select_all(futs).await;
    if r.is_err() {
        return false;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    for r in rx.iter_mut() {
        r.mark_unchanged();
    }
    true
}

/// Sets up this node's VXLAN device once its podCIDR and address are known and puts
/// its MAC on the Node; true when done (or, with `auto`, when VXLAN is not available
/// here and host-gw must do).
async fn publish_vtep(client: &kube::Client, me: &str, nodes: &[Arc<Node>], mode: routes::PodNetwork) -> bool {
    let Some(node) = nodes.iter().find(|n| n.metadata.name.as_deref() == Some(me)) else { return false };
    let cidr = node.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()).and_then(|c| c.parse::<ipnet::Ipv4Net>().ok());
    let ip = routes::internal_ip(node);
    let (Some(cidr), Some(ip)) = (cidr, ip) else { return false };
    let mac = match routes::setup_vxlan(ip, &cidr).await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "cannot set up VXLAN; only nodes on this node's networks are reachable");
            return mode == routes::PodNetwork::Auto;
        }
    };
    if node.metadata.annotations.as_ref().and_then(|a| a.get(routes::VTEP_ANNOTATION)) == Some(&mac) {
        return true;
    }
    let patch = serde_json::json!({"metadata": {"annotations": {routes::VTEP_ANNOTATION: mac}}});
    match Api::<Node>::all(client.clone()).patch(me, &Default::default(), &kube::api::Patch::Merge(&patch)).await {
        Ok(_) => {
            tracing::info!(%mac, "VXLAN ready");
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "publishing the VTEP failed");
            false
        }
    }
}

/// Runs routes, proxy and DNS for this node until `shutdown`. The rules and routes
/// stay when rk stops, so running pods keep their network across a restart (the
/// killall script removes them).
///
/// `client` is the network components' (`system:rk-network`); `node_client` the
/// node's, for what only the node may write (its own Node's VTEP annotation).
pub async fn run(client: kube::Client, node_client: kube::Client, cfg: NetConfig, shutdown: CancellationToken) {
    routes::enable_forwarding();
    let (nodes, nodes_run) = cache::<Node>(&client, watcher::Config::default());
    let (services, services_run) = cache::<Service>(&client, watcher::Config::default());
    let (slices, slices_run) = cache::<EndpointSlice>(&client, watcher::Config::default());
    let (pods, pods_run) = cache::<Pod>(&client, watcher::Config::default());
    let (namespaces, namespaces_run) = cache::<Namespace>(&client, watcher::Config::default());
    let (policies, policies_run) = cache::<NetworkPolicy>(&client, watcher::Config::default());
    let (ingresses, ingresses_run) = cache::<Ingress>(&client, watcher::Config::default());
    let (secrets, secrets_run) = cache::<Secret>(
        &client,
        // Only what the Ingress controller can use: the node keeps no other Secret.
        watcher::Config::default().fields("type=kubernetes.io/tls"),
    );
    let feeders = async {
        tokio::join!(
            nodes_run,
            services_run,
            slices_run,
            pods_run,
            namespaces_run,
            policies_run,
            ingresses_run,
            secrets_run
        );
    };

    let route_loop = {
        let mut changed = nodes.changed.clone();
        let store = nodes.store.clone();
        let me = cfg.node.clone();
        let (node_client, mode) = (node_client.clone(), cfg.pod_network);
        async move {
            if store.wait_until_ready().await.is_err() {
                return;
            }
            let mut vtep_ready = mode == routes::PodNetwork::HostGw;
            loop {
                let state = store.state();
                if !vtep_ready {
                    vtep_ready = publish_vtep(&node_client, &me, &state, mode).await;
                }
                routes::sync(mode, &routes::peers(&me, &state)).await;
                let mut rx = [&mut changed];
                tokio::select! {
                    ok = next_change(&mut rx) => if !ok { return },
                    // Now and then, in case someone removed a route.
                    _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                }
            }
        }
    };

    let pcfg =
        proxy::ProxyConfig { node: cfg.node.clone(), cluster_cidr: cfg.cluster_cidr, skip_ips: vec![cfg.dns_ip] };
    let proxy_loop = {
        let (mut c1, mut c2) = (services.changed.clone(), slices.changed.clone());
        let (mut c3, mut c4, mut c5) = (pods.changed.clone(), namespaces.changed.clone(), policies.changed.clone());
        let (sv, sl) = (services.store.clone(), slices.store.clone());
        let (po, nss, pols) = (pods.store.clone(), namespaces.store.clone(), policies.store.clone());
        async move {
            let ready = sv.wait_until_ready().await.is_ok()
                && sl.wait_until_ready().await.is_ok()
                && po.wait_until_ready().await.is_ok()
                && nss.wait_until_ready().await.is_ok()
                && pols.wait_until_ready().await.is_ok();
            if !ready {
                return;
            }
            let mut applied: Option<proxy::Ruleset> = None;
            loop {
                let mut want = proxy::Ruleset::build(&pcfg, &sv.state(), &sl.state());
                let policies = pols.state();
                if !policies.is_empty() {
                    policy::build(&mut want, &pcfg.node, &po.state(), &nss.state(), &policies);
                }
                let t0 = std::time::Instant::now();
                let (script, full) = match &applied {
                    Some(a) => (a.diff(&want), false),
                    None => (want.full(&pcfg), true),
                };
                if !script.is_empty() {
                    match proxy::nft(&script).await {
                        Ok(()) => {
                            tracing::debug!(full, chains = want.chains.len(), took = ?t0.elapsed(), "service rules applied");
                            if let Some(old) = &applied {
                                for (vip, port, ep) in proxy::stale_udp(old, &want) {
                                    tokio::spawn(proxy::flush_udp(vip, port, ep));
                                }
                            }
                            if applied.is_none() {
                                crate::component_ready("service-proxy");
                            }
                            applied = Some(want);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, full, "applying service rules failed; rebuilding the table");
                            applied = None;
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                    }
                }
                // Pod and namespace changes matter only while there are policies.
                let watching_pods = !pols.is_empty();
                let changed = if watching_pods {
                    next_change(&mut [&mut c1, &mut c2, &mut c3, &mut c4, &mut c5]).await
                } else {
                    c3.mark_unchanged();
                    c4.mark_unchanged();
                    next_change(&mut [&mut c1, &mut c2, &mut c5]).await
                };
                if !changed {
                    return;
                }
            }
        }
    };

    let dns_loop = dns::run(
        cfg.clone(),
        Arc::new(dns::Sources { services: services.store.clone(), slices: slices.store.clone() }),
    );

    let ingress_loop = ingress::run(
        Arc::new(ingress::Sources {
            ingresses: ingresses.store.clone(),
            services: services.store.clone(),
            slices: slices.store.clone(),
            secrets: secrets.store.clone(),
        }),
        vec![ingresses.changed.clone(), services.changed.clone(), slices.changed.clone(), secrets.changed.clone()],
    );

    tokio::select! {
        _ = feeders => {}
        _ = ingress_loop => {}
        _ = route_loop => {}
        _ = proxy_loop => {}
        _ = dns_loop => {}
        _ = shutdown.cancelled() => {}
    }
}
