//! Pod garbage collection, as kube-controller-manager's podgc: pods bound to a node that
//! no longer exists are deleted at once (grace 0: no kubelet is left to finish them),
//! and finished pods beyond `--terminated-pod-gc-threshold` (12,500) go oldest first.
//! Pods are read from the shared pod cache: a LIST of every pod each pass cost a
//! transient copy of them all (hundreds of MiB at 30,000 pods).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};
use tokio_util::sync::CancellationToken;

use super::pod_cache::PodCache;

/// Kubernetes's default `--terminated-pod-gc-threshold`.
pub const TERMINATED_THRESHOLD: usize = 12_500;
const EVERY: Duration = Duration::from_secs(20);

async fn pass(client: &kube::Client, cache: &PodCache) -> Result<(), kube::Error> {
    let nodes: HashSet<String> = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|n| n.name_any())
        .collect();
    let pods = cache.all().await;
    let force = DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
    for p in &pods {
        let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()).filter(|n| !n.is_empty()) else {
            continue;
        };
        if !nodes.contains(node) {
            let api: Api<Pod> = Api::namespaced(client.clone(), &p.namespace().unwrap_or_default());
            tracing::info!(pod = %p.name_any(), node, "deleting a pod of a node that is gone");
            let _ = api.delete(&p.name_any(), &force).await;
        }
    }
    let mut done: Vec<&Arc<Pod>> = pods
        .iter()
        .filter(|p| matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")))
        .collect();
    if done.len() > TERMINATED_THRESHOLD {
        done.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()).unwrap_or(0));
        for p in &done[..done.len() - TERMINATED_THRESHOLD] {
            let api: Api<Pod> = Api::namespaced(client.clone(), &p.namespace().unwrap_or_default());
            let _ = api.delete(&p.name_any(), &force).await;
        }
    }
    Ok(())
}

pub(super) async fn run(client: kube::Client, pods: Arc<PodCache>, shutdown: CancellationToken) {
    super::every(EVERY, "pod garbage collection", shutdown, || pass(&client, &pods)).await
}
