//! ServiceLB, k3s's idea without its pods: a `LoadBalancer` Service is served on the
//! addresses of the nodes that carry it (every node's proxy maps those addresses and
//! the Service's ports to the Service), and its `status.loadBalancer.ingress` lists
//! them. Which nodes: the Ready ones, or if any node is labelled
//! `svccontroller.rk.io/enablelb=true`, only those labelled so. A node carries a
//! Service only if no older LoadBalancer Service already uses one of its ports there;
//! a Service no node can carry stays Pending, with an event saying why. Services with
//! a `loadBalancerClass` belong to another controller and are left alone.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{Ctx, retry_soon};

/// The node label choosing the nodes that carry LoadBalancer Services.
pub const ENABLE_LB: &str = "svccontroller.rk.io/enablelb";

struct Data {
    ctx: Arc<Ctx>,
    services: Store<Service>,
    nodes: Store<Node>,
}

pub(super) async fn run(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    let client = ctx.client.clone();
    let ctrl = Controller::new(Api::<Service>::all(client.clone()), watcher::Config::default());
    let services = ctrl.store();
    let (nodes, feed) = node_cache(&client);
    let svc_for_nodes = services.clone();
    let data = Arc::new(Data { ctx, services, nodes });
    let main = ctrl
        .watches(Api::<Node>::all(client), watcher::Config::default(), move |_node: Node| {
            svc_for_nodes
                .state()
                .iter()
                .filter(|s| is_ours(s))
                .map(|s| ObjectRef::from_obj(s.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, |_, _, _| retry_soon(), data)
        .for_each(|_| async {});
    tokio::select! {
        _ = main => {}
        _ = feed => {}
    }
}

/// A cache of the Nodes, and the future that keeps it filled.
fn node_cache(client: &kube::Client) -> (Store<Node>, impl std::future::Future<Output = ()> + use<>) {
    let (nodes, writer) = kube::runtime::reflector::store();
    // With back-off: a watch failing at once (the API shutting down) must not spin.
    let feed = kube::runtime::reflector(writer, watcher(Api::<Node>::all(client.clone()), watcher::Config::default()))
        .default_backoff()
        .for_each(|_| async {});
    (nodes, feed)
}

fn is_ours(s: &Service) -> bool {
    s.spec.as_ref().is_some_and(|sp| sp.type_.as_deref() == Some("LoadBalancer") && sp.load_balancer_class.is_none())
}

fn ports(s: &Service) -> BTreeSet<(String, i32)> {
    s.spec
        .as_ref()
        .and_then(|sp| sp.ports.as_ref())
        .into_iter()
        .flatten()
        .map(|p| (p.protocol.clone().unwrap_or_else(|| "TCP".into()), p.port))
        .collect()
}

fn ingress_ips(s: &Service) -> Vec<String> {
    s.status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.clone())
        .collect()
}

/// The address a node is reached on: its ExternalIP if it has one, else InternalIP.
fn node_address(n: &Node) -> Option<String> {
    let addrs = n.status.as_ref()?.addresses.as_ref()?;
    addrs
        .iter()
        .find(|a| a.type_ == "ExternalIP")
        .or_else(|| addrs.iter().find(|a| a.type_ == "InternalIP"))
        .map(|a| a.address.clone())
}

fn ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The addresses of the nodes that can carry `svc`, given the other Services.
pub fn placement(svc: &Service, others: &[Arc<Service>], nodes: &[Arc<Node>]) -> Vec<String> {
    let labelled = nodes.iter().any(|n| n.labels().get(ENABLE_LB).map(String::as_str) == Some("true"));
    let mine = ports(svc);
    let key = |s: &Service| (s.metadata.creation_timestamp.clone(), s.namespace(), s.name_any());
    let mut out: Vec<String> = nodes
        .iter()
        .filter(|n| ready(n) && n.spec.as_ref().and_then(|s| s.unschedulable) != Some(true))
        .filter(|n| !labelled || n.labels().get(ENABLE_LB).map(String::as_str) == Some("true"))
        .filter_map(|n| node_address(n))
        .filter(|addr| {
            // Older Services keep the ports they hold on this node.
            !others.iter().any(|o| {
                o.uid() != svc.uid()
                    && is_ours(o)
                    && key(o) < key(svc)
                    && ingress_ips(o).contains(addr)
                    && !ports(o).is_disjoint(&mine)
            })
        })
        .collect();
    out.sort();
    out
}

async fn reconcile(svc: Arc<Service>, d: Arc<Data>) -> Result<Action, kube::Error> {
    let api: Api<Service> = Api::namespaced(d.ctx.client.clone(), &svc.namespace().unwrap_or_default());
    let have = ingress_ips(&svc);
    if !is_ours(&svc) {
        // No longer a LoadBalancer of ours: its addresses go.
        let is_lb = svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer");
        if !is_lb && !have.is_empty() {
            let patch = json!({"status": {"loadBalancer": {"ingress": null}}});
            api.patch_status(&svc.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
        }
        return Ok(Action::await_change());
    }
    if svc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let want = placement(&svc, &d.services.state(), &d.nodes.state());
    if want.is_empty() {
        d.ctx
            .event(
                svc.as_ref(),
                true,
                "Pending",
                "no node can carry this load balancer: none is Ready (with svccontroller.rk.io/enablelb=true where nodes are labelled) with its ports free".into(),
            );
    }
    if want != have {
        let ingress: Vec<serde_json::Value> = want.iter().map(|ip| json!({"ip": ip, "ipMode": "VIP"})).collect();
        let patch = json!({"status": {"loadBalancer": {"ingress": if ingress.is_empty() { serde_json::Value::Null } else { ingress.into() }}}});
        api.patch_status(&svc.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
        if !want.is_empty() {
            d.ctx.event(
                svc.as_ref(),
                false,
                "UpdatedLoadBalancer",
                format!("Updated LoadBalancer with new IPs: {have:?} -> {want:?}"),
            );
        }
    }
    Ok(if want.is_empty() { Action::requeue(std::time::Duration::from_secs(30)) } else { Action::await_change() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ip: &str, labels: serde_json::Value) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "labels": labels},
                "status": {"addresses": [{"type": "InternalIP", "address": ip}],
                           "conditions": [{"type": "Ready", "status": "True"}]},
            }))
            .unwrap(),
        )
    }

    fn lb(name: &str, created: &str, port: i32, ips: &[&str]) -> Arc<Service> {
        let ingress: Vec<serde_json::Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default", "uid": name, "creationTimestamp": created},
                "spec": {"type": "LoadBalancer", "ports": [{"port": port}]},
                "status": {"loadBalancer": {"ingress": ingress}},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn nodes_ports_and_labels() {
        let nodes = [node("a", "192.0.2.1", json!({})), node("b", "192.0.2.2", json!({}))];
        let first = lb("first", "2026-01-01T00:00:00Z", 80, &["192.0.2.1", "192.0.2.2"]);
        let second = lb("second", "2026-01-02T00:00:00Z", 80, &[]);
        let other_port = lb("third", "2026-01-03T00:00:00Z", 8080, &[]);
        let all = [first.clone(), second.clone(), other_port.clone()];
        assert_eq!(placement(&first, &all, &nodes), ["192.0.2.1", "192.0.2.2"]);
        assert!(placement(&second, &all, &nodes).is_empty(), "port 80 is taken on every node");
        assert_eq!(placement(&other_port, &all, &nodes).len(), 2);
        let labelled = [node("a", "192.0.2.1", json!({ENABLE_LB: "true"})), node("b", "192.0.2.2", json!({}))];
        assert_eq!(placement(&other_port, &all, &labelled), ["192.0.2.1"]);
    }
}

/// Ingress status: every Ready node serves the Ingresses of class `rk` (the agent's
/// Ingress controller), so their `status.loadBalancer.ingress` is those nodes'
/// addresses.
pub(super) async fn run_ingress_status(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    use k8s_openapi::api::networking::v1::Ingress;
    let client = ctx.client.clone();
    let ctrl = Controller::new(Api::<Ingress>::all(client.clone()), watcher::Config::default());
    let ingresses = ctrl.store();
    let (nodes, feed) = node_cache(&client);
    let all = ingresses.clone();
    let data = Arc::new((ctx, nodes));
    let main = ctrl
        .watches(Api::<Node>::all(client), watcher::Config::default(), move |_node: Node| {
            all.state().iter().map(|i| ObjectRef::from_obj(i.as_ref())).collect::<Vec<_>>()
        })
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(
            |ing: Arc<Ingress>, d: Arc<(Arc<Ctx>, Store<Node>)>| async move {
                let class = ing.spec.as_ref().and_then(|s| s.ingress_class_name.as_deref());
                if class.is_some_and(|c| c != "rk") || ing.metadata.deletion_timestamp.is_some() {
                    return Ok::<_, kube::Error>(Action::await_change());
                }
                let mut want: Vec<String> =
                    d.1.state().iter().filter(|n| ready(n)).filter_map(|n| node_address(n)).collect();
                want.sort();
                let have: Vec<String> = ing
                    .status
                    .as_ref()
                    .and_then(|s| s.load_balancer.as_ref())
                    .and_then(|l| l.ingress.as_ref())
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i.ip.clone())
                    .collect();
                if want != have {
                    let api: Api<Ingress> = Api::namespaced(d.0.client.clone(), &ing.namespace().unwrap_or_default());
                    let list: Vec<serde_json::Value> = want.iter().map(|ip| json!({"ip": ip})).collect();
                    let patch = json!({"status": {"loadBalancer": {"ingress": list}}});
                    api.patch_status(&ing.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
                }
                Ok(Action::await_change())
            },
            |_, _, _| retry_soon(),
            data,
        )
        .for_each(|_| async {});
    tokio::select! {
        _ = main => {}
        _ = feed => {}
    }
}
