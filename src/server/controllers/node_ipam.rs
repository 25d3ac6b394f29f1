//! Node IPAM: every node gets a /24 of `--cluster-cidr` as its `spec.podCIDR` (the
//! lowest one no other node holds), as kube-controller-manager's range allocator does.

use std::collections::HashSet;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{Ctx, retry_soon};

struct Data {
    ctx: Arc<Ctx>,
    cidr: ipnet::Ipv4Net,
    /// One allocation at a time, so two nodes never get the same range.
    lock: tokio::sync::Mutex<()>,
}

pub(super) async fn run(ctx: Arc<Ctx>, cidr: ipnet::Ipv4Net, shutdown: CancellationToken) {
    let api = Api::<Node>::all(ctx.client.clone());
    Controller::new(api, watcher::Config::default())
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, |_, _, _| retry_soon(), Arc::new(Data { ctx, cidr, lock: Default::default() }))
        .for_each(|_| async {})
        .await;
}

async fn reconcile(node: Arc<Node>, d: Arc<Data>) -> Result<Action, kube::Error> {
    if node.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()).is_some_and(|c| !c.is_empty()) {
        return Ok(Action::await_change());
    }
    let _g = d.lock.lock().await;
    let api = Api::<Node>::all(d.ctx.client.clone());
    // The cache can lag behind the CIDR this controller just gave the node: a podCIDR,
    // once set, is never changed, so look at the node itself.
    match api.get_opt(&node.name_any()).await? {
        Some(n) if n.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()).is_some_and(|c| !c.is_empty()) => {
            return Ok(Action::await_change());
        }
        None => return Ok(Action::await_change()),
        Some(_) => {}
    }
    let taken: HashSet<String> = api
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter_map(|n| n.spec.and_then(|s| s.pod_cidr))
        .collect();
    let Some(free) = d.cidr.subnets(24).ok().and_then(|mut s| s.find(|c| !taken.contains(&c.to_string()))) else {
        d.ctx.event(
            node.as_ref(),
            true,
            "CIDRNotAvailable",
            format!("Node {} status is now: CIDRNotAvailable", node.name_any()),
        );
        return Ok(Action::requeue(std::time::Duration::from_secs(30)));
    };
    let patch = json!({"spec": {"podCIDR": free.to_string(), "podCIDRs": [free.to_string()]}});
    api.patch(&node.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(Action::await_change())
}
