//! The StatefulSet controller: pods with stable names `<set>-<ordinal>` (hostname and
//! subdomain set), created in order and each only once those before it are Running and
//! Ready (OrderedReady; `Parallel` creates at once), removed from the highest ordinal
//! down; a PersistentVolumeClaim `<claim>-<set>-<ordinal>` per volumeClaimTemplate,
//! created before its pod and kept after it (the Retain policy); rolling updates from
//! the highest ordinal down to `partition`, one pod at a time. Revisions are named
//! `<set>-<pod-template-hash>`.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, Volume};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::ObjectMeta;
use kube::runtime::controller::Action;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::pod_cache::PodCache;
use super::{Ctx, pod_available, pod_ready, template_hash};

const REVISION: &str = "controller-revision-hash";
const POD_NAME: &str = "statefulset.kubernetes.io/pod-name";
const POD_INDEX: &str = "apps.kubernetes.io/pod-index";

pub(super) async fn run(ctx: Arc<Ctx>, pods: Arc<PodCache>, shutdown: CancellationToken) {
    super::run_owning_pods::<StatefulSet, _, _>(ctx, pods, shutdown, reconcile).await;
}

fn ordinal(set: &str, p: &Pod) -> Option<i32> {
    p.name_any().strip_prefix(set)?.strip_prefix('-')?.parse().ok()
}

fn running_ready(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") && pod_ready(p)
}

async fn reconcile(sts: Arc<StatefulSet>, ctx: Arc<Ctx>, cache: Arc<PodCache>) -> Result<Action, kube::Error> {
    if sts.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = sts.namespace().unwrap_or_default();
    let name = sts.name_any();
    let uid = sts.uid().unwrap_or_default();
    let spec = sts.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let parallel = spec.pod_management_policy.as_deref() == Some("Parallel");
    let on_delete = spec.update_strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("OnDelete");
    let partition =
        spec.update_strategy.as_ref().and_then(|s| s.rolling_update.as_ref()).and_then(|r| r.partition).unwrap_or(0);
    let update_rev = format!(
        "{name}-{}",
        template_hash(&spec.template, sts.status.as_ref().and_then(|s| s.collision_count).filter(|c| *c > 0))
    );
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    // The pods it controls that its selector matches, from the shared cache once that
    // has seen this set's last writes.
    let Some(selected) = super::pod_matcher(&spec.selector, &format!("{ns}/{name}")) else {
        return Ok(Action::await_change());
    };
    let mut pods: BTreeMap<i32, Arc<Pod>> = BTreeMap::new();
    for p in cache.owned(&uid).await {
        if selected(&p)
            && let Some(i) = ordinal(&name, &p)
        {
            pods.insert(i, p);
        }
    }

    let mut action_taken = false;
    // Create the missing ordinals below `replicas`, in order.
    for i in 0..replicas {
        if let Some(p) = pods.get(&i) {
            if p.metadata.deletion_timestamp.is_some() || (!parallel && !running_ready(p)) {
                if !parallel {
                    break;
                }
            }
            continue;
        }
        if !parallel && action_taken {
            break;
        }
        let pod_name = format!("{name}-{i}");
        // Claims first: `<template>-<set>-<ordinal>`, kept after the pod.
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
        let mut volumes: Vec<Volume> = Vec::new();
        for t in spec.volume_claim_templates.iter().flatten() {
            let claim = format!("{}-{pod_name}", t.name_any());
            if pvcs.get_opt(&claim).await?.is_none() {
                let mut labels = t.labels().clone();
                labels.extend(spec.selector.match_labels.clone().unwrap_or_default());
                let pvc = PersistentVolumeClaim {
                    metadata: ObjectMeta { name: Some(claim.clone()), labels: Some(labels), ..Default::default() },
                    spec: t.spec.clone(),
                    status: None,
                };
                match pvcs.create(&PostParams::default(), &pvc).await {
                    Ok(_) => ctx.event(
                        sts.as_ref(),
                        false,
                        "SuccessfulCreate",
                        format!("create Claim {claim} Pod {pod_name} in StatefulSet {name} success"),
                    ),
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => return Err(e),
                }
            }
            volumes.push(Volume {
                name: t.name_any(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource { claim_name: claim, read_only: None }),
                ..Default::default()
            });
        }
        let mut meta = spec.template.metadata.clone().unwrap_or_default();
        let labels = meta.labels.get_or_insert_with(BTreeMap::new);
        labels.insert(REVISION.into(), update_rev.clone());
        labels.insert(POD_NAME.into(), pod_name.clone());
        labels.insert(POD_INDEX.into(), i.to_string());
        let mut pspec = spec.template.spec.clone().unwrap_or_default();
        pspec.hostname = Some(pod_name.clone());
        if let Some(svc) = spec.service_name.clone().filter(|s| !s.is_empty()) {
            pspec.subdomain = Some(svc);
        }
        let mut vols = pspec.volumes.take().unwrap_or_default();
        vols.retain(|v| !volumes.iter().any(|c| c.name == v.name));
        vols.extend(volumes);
        pspec.volumes = (!vols.is_empty()).then_some(vols);
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(pod_name.clone()),
                namespace: Some(ns.clone()),
                labels: meta.labels,
                annotations: meta.annotations,
                owner_references: Some(vec![super::controller_ref(sts.as_ref())]),
                ..Default::default()
            },
            spec: Some(pspec),
            status: None,
        };
        match pods_api.create(&PostParams::default(), &pod).await {
            Ok(p) => {
                cache.expect(&uid, Some(&p), None);
                ctx.event(
                    sts.as_ref(),
                    false,
                    "SuccessfulCreate",
                    format!("create Pod {pod_name} in StatefulSet {name} successful"),
                );
                action_taken = true;
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }

    // Remove ordinals at or above `replicas`, highest first.
    let all_ready = pods.values().filter(|p| ordinal(&name, p).is_some_and(|i| i < replicas)).all(|p| running_ready(p));
    let surplus: Vec<(i32, String)> = pods
        .iter()
        .rev()
        .filter(|(i, p)| **i >= replicas && p.metadata.deletion_timestamp.is_none())
        .map(|(i, p)| (*i, p.name_any()))
        .collect();
    for (_, p) in surplus.iter().take(if parallel { usize::MAX } else { 1 }) {
        if !parallel && (action_taken || !all_ready || pods.values().any(|x| x.metadata.deletion_timestamp.is_some())) {
            break;
        }
        match pods_api.delete(p, &DeleteParams::default()).await {
            Ok(gone) => {
                cache.expect_delete(&uid, &ns, p, gone.left().as_ref());
                ctx.event(
                    sts.as_ref(),
                    false,
                    "SuccessfulDelete",
                    format!("delete Pod {p} in StatefulSet {name} successful"),
                );
                action_taken = true;
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }

    // Rolling update: the highest outdated ordinal at or above the partition, once all
    // pods are Running and Ready.
    let in_range = |i: i32| i < replicas;
    if !on_delete && !action_taken && all_ready && pods.values().all(|p| p.metadata.deletion_timestamp.is_none()) {
        if let Some((_, p)) = pods
            .iter()
            .rev()
            .find(|(i, p)| in_range(**i) && **i >= partition && p.labels().get(REVISION) != Some(&update_rev))
        {
            let pn = p.name_any();
            let gone = pods_api.delete(&pn, &DeleteParams::default()).await?;
            cache.expect_delete(&uid, &ns, &pn, gone.left().as_ref());
            ctx.event(
                sts.as_ref(),
                false,
                "SuccessfulDelete",
                format!("delete Pod {pn} in StatefulSet {name} successful"),
            );
        }
    }

    let now = k8s_openapi::jiff::Timestamp::now();
    let live: Vec<&Pod> =
        pods.values().map(|p| p.as_ref()).filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
    let updated = live.iter().filter(|p| p.labels().get(REVISION) == Some(&update_rev)).count() as i32;
    let old_rev = sts.status.as_ref().and_then(|s| s.current_revision.clone()).unwrap_or_else(|| update_rev.clone());
    let all_updated = updated == replicas && live.len() as i32 == replicas;
    let current_rev = if all_updated { update_rev.clone() } else { old_rev.clone() };
    let status = StatefulSetStatus {
        observed_generation: sts.metadata.generation,
        replicas: live.len() as i32,
        ready_replicas: Some(live.iter().filter(|p| pod_ready(p)).count() as i32),
        available_replicas: Some(
            live.iter().filter(|p| pod_available(p, spec.min_ready_seconds.unwrap_or(0), now)).count() as i32,
        ),
        current_replicas: Some(live.iter().filter(|p| p.labels().get(REVISION) == Some(&current_rev)).count() as i32),
        updated_replicas: Some(updated),
        current_revision: Some(current_rev),
        update_revision: Some(update_rev),
        collision_count: Some(sts.status.as_ref().and_then(|s| s.collision_count).unwrap_or(0)),
        conditions: sts.status.as_ref().and_then(|s| s.conditions.clone()),
    };
    if sts.status.as_ref() != Some(&status) {
        let api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&json!({"status": status}))).await?;
    }
    Ok(Action::await_change())
}
