//! The DaemonSet controller: one pod on every eligible node (its nodeSelector and
//! node affinity match, its NoSchedule/NoExecute taints are tolerated), placed by the
//! scheduler through node affinity on the node's name as Kubernetes does, with the
//! tolerations Kubernetes adds to daemon pods; a changed template rolls out at most
//! `maxUnavailable` nodes at a time. Status as `kubectl get ds` prints it.
//!
//! Pods come from the shared pod cache and nodes from this controller's own node
//! cache, so a pass lists nothing through the API; a node change wakes the DaemonSets
//! only when what eligibility reads (labels, taints) changed or the node came or went,
//! not on every status heartbeat.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{Node, Pod, Toleration};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::ObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::pod_cache::PodCache;
use super::{Ctx, pod_active, pod_available, pod_ready, retry_soon};
use crate::server::scheduler::{affinity_matches, tolerates};

const GENERATION: &str = "pod-template-generation";

pub(super) async fn run(ctx: Arc<Ctx>, pods: Arc<PodCache>, shutdown: CancellationToken) {
    let client = ctx.client.clone();
    let ctrl = Controller::new(Api::<DaemonSet>::all(client.clone()), watcher::Config::default());
    let store = ctrl.store();
    let (nodes, writer) = reflector::store::<Node>();
    // What eligibility reads of each node, to pass on only the changes that matter.
    let mut shapes: HashMap<String, u64> = HashMap::new();
    let node_changes = reflector::reflector(
        writer,
        watcher(Api::<Node>::all(client), watcher::Config::default())
            .modify(super::trim_managed_fields)
            .default_backoff(),
    )
    .filter_map(move |ev| {
        let changed = match ev {
            Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n)) => {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                n.metadata.labels.hash(&mut h);
                serde_json::to_string(&n.spec.as_ref().map(|s| &s.taints)).unwrap_or_default().hash(&mut h);
                (shapes.insert(n.name_any(), h.finish()) != Some(h.finish())).then_some(n)
            }
            Ok(watcher::Event::Delete(n)) => {
                shapes.remove(&n.name_any());
                Some(n)
            }
            _ => None,
        };
        std::future::ready(changed.map(Ok::<_, watcher::Error>))
    });
    let run_pods = pods.clone();
    ctrl.owns_stream(pods.subscribe())
        .watches_stream(node_changes, move |_| {
            store.state().iter().map(|d| ObjectRef::from_obj(d.as_ref())).collect::<Vec<_>>()
        })
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(move |ds, ctx| reconcile(ds, ctx, run_pods.clone(), nodes.clone()), |_, _, _| retry_soon(), ctx)
        .for_each(|_| async {})
        .await;
}

/// The tolerations Kubernetes gives every daemon pod.
fn daemon_tolerations() -> Vec<Toleration> {
    let t = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    };
    vec![
        t("node.kubernetes.io/not-ready", "NoExecute"),
        t("node.kubernetes.io/unreachable", "NoExecute"),
        t("node.kubernetes.io/disk-pressure", "NoSchedule"),
        t("node.kubernetes.io/memory-pressure", "NoSchedule"),
        t("node.kubernetes.io/pid-pressure", "NoSchedule"),
        t("node.kubernetes.io/unschedulable", "NoSchedule"),
    ]
}

fn node_of(p: &Pod) -> Option<String> {
    p.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty()).or_else(|| {
        // Not yet scheduled: the node its affinity names.
        let terms = &p
            .spec
            .as_ref()?
            .affinity
            .as_ref()?
            .node_affinity
            .as_ref()?
            .required_during_scheduling_ignored_during_execution
            .as_ref()?
            .node_selector_terms;
        terms
            .iter()
            .flat_map(|t| t.match_fields.iter().flatten())
            .find(|f| f.key == "metadata.name")?
            .values
            .as_ref()?
            .first()
            .cloned()
    })
}

async fn reconcile(
    ds: Arc<DaemonSet>,
    ctx: Arc<Ctx>,
    cache: Arc<PodCache>,
    node_cache: Store<Node>,
) -> Result<Action, kube::Error> {
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = ds.namespace().unwrap_or_default();
    let name = ds.name_any();
    let uid = ds.uid().unwrap_or_default();
    let spec = ds.spec.clone().unwrap_or_default();
    let generation = ds.metadata.generation.unwrap_or(1).to_string();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    // The live pods it controls that its selector matches, from the shared cache once
    // that has seen this DaemonSet's last writes.
    let Some(selected) = super::pod_matcher(&spec.selector, &format!("{ns}/{name}")) else {
        return Ok(Action::await_change());
    };
    let owned = cache.owned(&uid).await;
    let pods: Vec<&Pod> = owned.iter().map(|p| p.as_ref()).filter(|p| selected(p) && pod_active(p)).collect();
    if node_cache.wait_until_ready().await.is_err() {
        return Ok(retry_soon());
    }
    let mut nodes = node_cache.state();
    nodes.sort_by_key(|n| n.name_any());

    // A pod built from the template, to test each node against.
    let mut template = spec.template.clone();
    let mut probe_spec = template.spec.clone().unwrap_or_default();
    let mut tols = probe_spec.tolerations.clone().unwrap_or_default();
    tols.extend(daemon_tolerations());
    probe_spec.tolerations = Some(tols);
    template.spec = Some(probe_spec.clone());
    let probe = Pod { metadata: ObjectMeta::default(), spec: Some(probe_spec), status: None };
    let eligible = |n: &Node| {
        let taints = n.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
        let tols = probe.spec.as_ref().and_then(|s| s.tolerations.clone()).unwrap_or_default();
        affinity_matches(&probe, n)
            && taints
                .iter()
                .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
                .all(|t| tols.iter().any(|tol| tolerates(tol, t)))
    };

    let mut by_node: HashMap<String, Vec<&Pod>> = HashMap::new();
    for p in &pods {
        if let Some(n) = node_of(p) {
            by_node.entry(n).or_default().push(p);
        }
    }
    let mut desired = 0;
    let mut to_create: Vec<String> = Vec::new();
    let mut to_delete: Vec<String> = Vec::new();
    let mut outdated: Vec<&Pod> = Vec::new();
    for n in &nodes {
        let nn = n.name_any();
        let here = by_node.remove(&nn).unwrap_or_default();
        if eligible(n) {
            desired += 1;
            match here.split_first() {
                None => to_create.push(nn),
                Some((first, extra)) => {
                    to_delete.extend(extra.iter().map(|p| p.name_any()));
                    if first.labels().get(GENERATION) != Some(&generation) {
                        outdated.push(first);
                    }
                }
            }
        } else {
            to_delete.extend(here.iter().map(|p| p.name_any()));
        }
    }
    // Pods on nodes that no longer exist.
    to_delete.extend(by_node.values().flatten().map(|p| p.name_any()));

    // Rolling update: replace outdated pods, at most maxUnavailable nodes at a time.
    let total = nodes.len() as i32;
    let max_unavailable = match spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.max_unavailable.as_ref())
    {
        Some(IntOrString::Int(i)) => *i,
        Some(IntOrString::String(s)) => {
            (s.trim_end_matches('%').parse::<f64>().unwrap_or(0.0) * f64::from(total) / 100.0).floor() as i32
        }
        None => 1,
    }
    .max(1);
    let on_delete = spec.update_strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("OnDelete");
    if !on_delete {
        let unavailable = pods.iter().filter(|p| !pod_ready(p)).count() as i32 + to_create.len() as i32;
        let budget = (max_unavailable - unavailable).max(0) as usize;
        to_delete.extend(outdated.iter().take(budget).map(|p| p.name_any()));
    }

    for node in &to_create {
        let mut meta = template.metadata.clone().unwrap_or_default();
        meta.labels.get_or_insert_with(BTreeMap::new).insert(GENERATION.into(), generation.clone());
        let mut pspec = template.spec.clone().unwrap_or_default();
        let aff = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]}}});
        pspec.affinity = serde_json::from_value(aff).ok();
        let pod = Pod {
            metadata: ObjectMeta {
                generate_name: Some(format!("{name}-")),
                namespace: Some(ns.clone()),
                labels: meta.labels,
                annotations: meta.annotations,
                owner_references: Some(vec![super::controller_ref(ds.as_ref())]),
                ..Default::default()
            },
            spec: Some(pspec),
            status: None,
        };
        match pods_api.create(&PostParams::default(), &pod).await {
            Ok(p) => {
                cache.expect(&uid, Some(&p), None);
                ctx.event(ds.as_ref(), false, "SuccessfulCreate", format!("Created pod: {}", p.name_any()))
            }
            Err(e) => {
                ctx.event(ds.as_ref(), true, "FailedCreate", format!("Error creating: {e}"));
                return Err(e);
            }
        }
    }
    for p in &to_delete {
        match pods_api.delete(p, &DeleteParams::default()).await {
            Ok(gone) => {
                cache.expect_delete(&uid, &ns, p, gone.left().as_ref());
                ctx.event(ds.as_ref(), false, "SuccessfulDelete", format!("Deleted pod: {p}"))
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }

    let now = k8s_openapi::jiff::Timestamp::now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let scheduled: Vec<&Pod> =
        pods.iter().copied().filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()).collect();
    let ready = scheduled.iter().filter(|p| pod_ready(p)).count() as i32;
    let available = scheduled.iter().filter(|p| pod_available(p, min_ready, now)).count() as i32;
    let updated = pods.iter().filter(|p| p.labels().get(GENERATION) == Some(&generation)).count() as i32;
    let status = DaemonSetStatus {
        desired_number_scheduled: desired,
        current_number_scheduled: (pods.len() - to_delete.len().min(pods.len())) as i32,
        number_misscheduled: 0,
        number_ready: ready,
        number_available: Some(available),
        number_unavailable: Some((desired - available).max(0)),
        updated_number_scheduled: Some(updated),
        observed_generation: ds.metadata.generation,
        collision_count: None,
        conditions: None,
    };
    if ds.status.as_ref() != Some(&status) {
        let api: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &ns);
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&json!({"status": status}))).await?;
    }
    Ok(Action::await_change())
}
