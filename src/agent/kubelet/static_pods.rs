//! Static pods: manifests in `<data-dir>/agent/pod-manifests/*.yaml` (or `.yml`,
//! `.json`) are the node's own pods. The kubelet publishes each as a mirror pod named
//! `<name>-<node>` bound to this node (annotations `kubernetes.io/config.source: file`,
//! `kubernetes.io/config.hash`, `kubernetes.io/config.mirror`, owned by the Node), and
//! the pod workers run it like any other pod. The directory is read at start and every
//! 20 s (the kubelet's file check period): a changed manifest replaces its mirror pod,
//! a removed one deletes it, and a deleted mirror pod is created again.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use sha2::Digest;

pub(super) const SOURCE: &str = "kubernetes.io/config.source";
const HASH: &str = "kubernetes.io/config.hash";
pub(super) const MIRROR: &str = "kubernetes.io/config.mirror";
const CHECK_EVERY: Duration = Duration::from_secs(20);

/// The mirror pods the manifests in `dir` stand for, by namespace/name.
fn desired(dir: &Path, node: &Node) -> BTreeMap<(String, String), Pod> {
    let mut out = BTreeMap::new();
    let node_name = node.name_any();
    let Ok(rd) = std::fs::read_dir(dir) else { return out };
    let mut files: Vec<_> = rd.flatten().map(|e| e.path()).collect();
    files.sort();
    for f in files.into_iter().filter(|f| f.extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "json")) {
        let Ok(text) = std::fs::read_to_string(&f) else { continue };
        let mut pod: Pod = match serde_norway::from_str(&text) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(file = %f.display(), error = %e, "skipping a static pod manifest that is not a Pod");
                continue;
            }
        };
        let Some(name) = pod.metadata.name.clone().filter(|n| !n.is_empty()) else {
            tracing::warn!(file = %f.display(), "skipping a static pod manifest without metadata.name");
            continue;
        };
        let hash = format!("{:x}", sha2::Sha256::digest(text.as_bytes()))[..32].to_string();
        let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let full = format!("{name}-{node_name}");
        pod.metadata.name = Some(full.clone());
        pod.metadata.namespace = Some(ns.clone());
        let ann = pod.metadata.annotations.get_or_insert_with(Default::default);
        ann.insert(SOURCE.into(), "file".into());
        ann.insert(HASH.into(), hash.clone());
        ann.insert(MIRROR.into(), hash);
        pod.metadata.owner_references = Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: node_name.clone(),
            uid: node.uid().unwrap_or_default(),
            controller: Some(true),
            ..Default::default()
        }]);
        let spec = pod.spec.get_or_insert_with(Default::default);
        spec.node_name = Some(node_name.clone());
        pod.status = None;
        out.insert((ns, full), pod);
    }
    out
}

/// Keeps the mirror pods in line with the manifests until the future is dropped.
pub async fn run(client: kube::Client, node_name: String, dir: std::path::PathBuf) {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut tick = tokio::time::interval(CHECK_EVERY);
    loop {
        tick.tick().await;
        let Ok(node) = nodes.get(&node_name).await else { continue };
        let want = desired(&dir, &node);
        let all: Api<Pod> = Api::all(client.clone());
        let lp = ListParams::default().fields(&format!("spec.nodeName={node_name}"));
        let Ok(have) = all.list(&lp).await else { continue };
        let mirrors: BTreeMap<(String, String), Pod> = have
            .items
            .into_iter()
            .filter(|p| p.annotations().get(SOURCE).map(String::as_str) == Some("file"))
            .map(|p| ((p.namespace().unwrap_or_default(), p.name_any()), p))
            .collect();
        for (key, pod) in &want {
            let api: Api<Pod> = Api::namespaced(client.clone(), &key.0);
            let hash = pod.annotations().get(HASH).cloned();
            match mirrors.get(key) {
                Some(cur) if cur.annotations().get(HASH) == hash.as_ref() => {}
                Some(cur) if cur.metadata.deletion_timestamp.is_some() => {}
                Some(_) => {
                    tracing::info!(pod = %key.1, "static pod manifest changed: replacing its pod");
                    let _ = api.delete(&key.1, &DeleteParams::default()).await;
                }
                None => match api.create(&PostParams::default(), pod).await {
                    Ok(_) => tracing::info!(pod = %key.1, namespace = %key.0, "static pod created"),
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => tracing::warn!(pod = %key.1, error = %e, "creating a static pod failed"),
                },
            }
        }
        for (key, pod) in &mirrors {
            if !want.contains_key(key) && pod.metadata.deletion_timestamp.is_none() {
                tracing::info!(pod = %key.1, "static pod manifest removed: deleting its pod");
                let api: Api<Pod> = Api::namespaced(client.clone(), &key.0);
                let _ = api.delete(&key.1, &DeleteParams::default()).await;
            }
        }
    }
}
