//! The ReplicaSet controller: keeps `spec.replicas` active pods matching the selector,
//! creating from the template (in slow-start batches, as Kubernetes does) or deleting
//! the least useful first, and reports the counts in `status`.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::ObjectMeta;
use kube::runtime::controller::Action;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::pod_cache::PodCache;
use super::{Ctx, pod_active, pod_available, pod_ready};

/// Pods created per reconcile at most; the rest follow on the next pass.
const BURST: usize = 500;

pub(super) async fn run(ctx: Arc<Ctx>, pods: Arc<PodCache>, shutdown: CancellationToken) {
    super::run_owning_pods::<ReplicaSet, _, _>(ctx, pods, shutdown, reconcile).await;
}

/// The order Kubernetes deletes surplus pods in: unscheduled, then pending, then not
/// ready, then the most restarted, then the newest.
fn deletion_rank(p: &Pod) -> (u8, u8, u8, i64, std::cmp::Reverse<i64>) {
    let scheduled = p.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_some_and(|n| !n.is_empty());
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("");
    let restarts: i64 = p
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| i64::from(c.restart_count)).sum())
        .unwrap_or(0);
    let created = p.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()).unwrap_or(0);
    (
        u8::from(scheduled),
        match phase {
            "Pending" => 0,
            "Unknown" => 1,
            _ => 2,
        },
        u8::from(pod_ready(p)),
        -restarts,
        std::cmp::Reverse(created),
    )
}

async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Ctx>, pods: Arc<PodCache>) -> Result<Action, kube::Error> {
    if rs.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let spec = rs.spec.clone().unwrap_or_default();
    let Some((mut status, action)) = sync_pods(rs.as_ref(), &spec, &ctx, &pods).await? else {
        return Ok(Action::await_change());
    };
    status.observed_generation = rs.metadata.generation;
    status.conditions = rs.status.as_ref().and_then(|s| s.conditions.clone());
    if rs.status.as_ref() != Some(&status) {
        let rss: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &rs.namespace().unwrap_or_default());
        let patch = json!({"status": status});
        rss.patch_status(&rs.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    }
    Ok(action)
}

/// Brings an owner's pods to `spec.replicas` (the ReplicaSet logic, shared with
/// ReplicationControllers); returns the counts for its status and when to look again,
/// or None when its selector is invalid.
pub(super) async fn sync_pods<K>(
    owner: &K,
    spec: &k8s_openapi::api::apps::v1::ReplicaSetSpec,
    ctx: &Ctx,
    cache: &PodCache,
) -> Result<Option<(ReplicaSetStatus, Action)>, kube::Error>
where
    K: kube::Resource<DynamicType = ()>,
{
    let rs = owner;
    let ns = rs.meta().namespace.clone().unwrap_or_default();
    let name = rs.meta().name.clone().unwrap_or_default();
    let uid = rs.meta().uid.clone().unwrap_or_default();
    let spec = spec.clone();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    // The pods it controls that its selector still matches, from the shared cache once
    // that has seen this owner's last writes (Kubernetes's informer and expectations).
    // An invalid selector (validation refuses one) leaves the owner alone, as
    // Kubernetes's ReplicaSet controller does.
    let Some(selected) = super::pod_matcher(&spec.selector, &format!("{ns}/{name}")) else { return Ok(None) };
    let mine: Vec<Arc<Pod>> = cache.owned(&uid).await.into_iter().filter(|p| selected(p)).collect();
    let mut active: Vec<&Pod> = mine.iter().map(|p| p.as_ref()).filter(|p| pod_active(p)).collect();
    let want = spec.replicas.unwrap_or(1).max(0) as usize;

    if active.len() < want {
        let template = spec.template.clone().unwrap_or_default();
        let tmeta = template.metadata.clone().unwrap_or_default();
        let pod = Pod {
            metadata: ObjectMeta {
                generate_name: Some(format!("{name}-")),
                namespace: Some(ns.clone()),
                labels: tmeta.labels,
                annotations: tmeta.annotations,
                owner_references: Some(vec![super::controller_ref(rs)]),
                ..Default::default()
            },
            spec: template.spec,
            status: None,
        };
        let mut left = (want - active.len()).min(BURST);
        let mut batch = 1;
        let mut created = 0;
        while left > 0 {
            let n = batch.min(left);
            let pp = PostParams::default();
            let results = futures::future::join_all((0..n).map(|_| pods.create(&pp, &pod))).await;
            let mut failed = None;
            for r in results {
                match r {
                    Ok(p) => {
                        cache.expect(&uid, Some(&p), None);
                        created += 1;
                        ctx.event(rs, false, "SuccessfulCreate", format!("Created pod: {}", p.name_any()));
                    }
                    Err(e) => failed = Some(e),
                }
            }
            if let Some(e) = failed {
                ctx.event(rs, true, "FailedCreate", format!("Error creating: {e}"));
                return Err(e);
            }
            left -= n;
            batch *= 2;
        }
        tracing::debug!(rs = %name, ns = %ns, created, "replicaset scaled up");
    } else if active.len() > want {
        active.sort_by_key(|p| deletion_rank(p));
        let surplus: Vec<String> = active[..active.len() - want].iter().map(|p| p.name_any()).collect();
        for p in surplus {
            match pods.delete(&p, &DeleteParams::default()).await {
                Ok(gone) => {
                    cache.expect_delete(&uid, &ns, &p, gone.left().as_ref());
                    ctx.event(rs, false, "SuccessfulDelete", format!("Deleted pod: {p}"))
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
    }

    // Status, from the pods as observed at the start of this pass; the pods created or
    // deleted above trigger the next one.
    let now = k8s_openapi::jiff::Timestamp::now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let tlabels =
        spec.template.as_ref().and_then(|t| t.metadata.as_ref()).and_then(|m| m.labels.clone()).unwrap_or_default();
    let active: Vec<&Pod> = mine.iter().map(|p| p.as_ref()).filter(|p| pod_active(p)).collect();
    let status = ReplicaSetStatus {
        replicas: active.len() as i32,
        fully_labeled_replicas: Some(
            active.iter().filter(|p| tlabels.iter().all(|(k, v)| p.labels().get(k) == Some(v))).count() as i32,
        ),
        ready_replicas: Some(active.iter().filter(|p| pod_ready(p)).count() as i32),
        available_replicas: Some(active.iter().filter(|p| pod_available(p, min_ready, now)).count() as i32),
        observed_generation: None,
        conditions: None,
        terminating_replicas: None,
    };
    // Pods turn available after minReadySeconds without an event to say so.
    let waiting = min_ready > 0 && active.iter().any(|p| pod_ready(p) && !pod_available(p, min_ready, now));
    let action = if waiting {
        Action::requeue(std::time::Duration::from_secs(min_ready as u64))
    } else {
        Action::await_change()
    };
    Ok(Some((status, action)))
}
