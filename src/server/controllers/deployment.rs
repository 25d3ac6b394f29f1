//! The Deployment controller: one ReplicaSet per pod template (named by its
//! `pod-template-hash`), rolled from old to new with `maxSurge` / `maxUnavailable` or
//! by Recreate, revision annotations that `kubectl rollout history|undo` read,
//! `revisionHistoryLimit`, pause, and the Available / Progressing conditions.
//! Follows kubernetes `pkg/controller/deployment` (rolling.go, sync.go, recreate.go).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::ObjectMeta;
use kube::runtime::controller::Action;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{Ctx, controlled_by, selector_query, template_hash};

const REVISION: &str = "deployment.kubernetes.io/revision";
const DESIRED: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
const HASH: &str = "pod-template-hash";

pub(super) async fn run(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    super::run_owning::<Deployment, ReplicaSet, _, _>(ctx, shutdown, reconcile).await;
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.annotations().get(REVISION).and_then(|r| r.parse().ok()).unwrap_or(0)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn status_of(rs: &ReplicaSet) -> (i32, i32, i32) {
    let s = rs.status.clone().unwrap_or_default();
    (s.replicas, s.ready_replicas.unwrap_or(0), s.available_replicas.unwrap_or(0))
}

/// An int-or-percent of `total`: percentages round up for surge, down for unavailable.
fn resolve(v: Option<&IntOrString>, total: i32, round_up: bool) -> i32 {
    match v {
        Some(IntOrString::Int(i)) => *i,
        Some(IntOrString::String(s)) => {
            let pct: f64 = s.trim_end_matches('%').parse().unwrap_or(25.0);
            let x = pct * f64::from(total) / 100.0;
            (if round_up { x.ceil() } else { x.floor() }) as i32
        }
        None => {
            let x = 25.0 * f64::from(total) / 100.0;
            (if round_up { x.ceil() } else { x.floor() }) as i32
        }
    }
}

/// The template without the `pod-template-hash` label, for comparison.
fn without_hash(t: &PodTemplateSpec) -> serde_json::Value {
    let mut t = t.clone();
    if let Some(l) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        l.remove(HASH);
    }
    serde_json::to_value(t).unwrap_or_default()
}

fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    old: Option<&DeploymentCondition>,
) -> DeploymentCondition {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let same = old.is_some_and(|o| o.status == status);
    let unchanged =
        same && old.is_some_and(|o| o.reason.as_deref() == Some(reason) && o.message.as_deref() == Some(&message));
    DeploymentCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message),
        last_transition_time: if same { old.and_then(|o| o.last_transition_time.clone()) } else { Some(now.clone()) },
        last_update_time: if unchanged { old.and_then(|o| o.last_update_time.clone()) } else { Some(now) },
    }
}

struct Scaler<'a> {
    api: Api<ReplicaSet>,
    ctx: &'a Ctx,
    d: &'a Deployment,
    replicas: i32,
    surge: i32,
}

impl Scaler<'_> {
    /// Sets an RS's replicas (and the annotations Kubernetes keeps beside them).
    async fn scale(&self, rs: &mut ReplicaSet, to: i32) -> Result<(), kube::Error> {
        let from = spec_replicas(rs);
        let desired = self.replicas.to_string();
        let max = (self.replicas + self.surge).to_string();
        if from == to && rs.annotations().get(DESIRED) == Some(&desired) {
            return Ok(());
        }
        let patch = json!({
            "metadata": {"annotations": {DESIRED: desired, MAX_REPLICAS: max}},
            "spec": {"replicas": to},
        });
        *rs = self.api.patch(&rs.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
        if from != to {
            let dir = if to > from { "up" } else { "down" };
            let msg = format!("Scaled {dir} replica set {} from {from} to {to}", rs.name_any());
            self.ctx.event(self.d, false, "ScalingReplicaSet", msg);
        }
        Ok(())
    }
}

async fn reconcile(d: Arc<Deployment>, ctx: Arc<Ctx>) -> Result<Action, kube::Error> {
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = d.namespace().unwrap_or_default();
    let name = d.name_any();
    let uid = d.uid().unwrap_or_default();
    let spec = d.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1);
    let paused = spec.paused.unwrap_or(false);
    let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
    let rolling = spec.strategy.as_ref().and_then(|s| s.rolling_update.clone()).unwrap_or_default();
    let surge = if recreate { 0 } else { resolve(rolling.max_surge.as_ref(), replicas, true) };
    let mut unavail = if recreate { 0 } else { resolve(rolling.max_unavailable.as_ref(), replicas, false) };
    if surge == 0 && unavail == 0 && !recreate {
        unavail = 1;
    }

    let rs_api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let mut all: Vec<ReplicaSet> = rs_api
        .list(&ListParams::default().labels(&selector_query(&spec.selector)))
        .await?
        .items
        .into_iter()
        .filter(|r| controlled_by(&r.metadata, &uid))
        .collect();
    all.sort_by_key(revision);
    let collisions = d.status.as_ref().and_then(|s| s.collision_count);
    let hash = template_hash(&spec.template, collisions);
    let want_t = without_hash(&spec.template);
    let new_idx = all.iter().position(|r| r.labels().get(HASH) == Some(&hash)).or_else(|| {
        all.iter()
            .position(|r| r.spec.as_ref().and_then(|s| s.template.as_ref()).map(without_hash) == Some(want_t.clone()))
    });
    let max_old_rev =
        all.iter().enumerate().filter(|(i, _)| Some(*i) != new_idx).map(|(_, r)| revision(r)).max().unwrap_or(0);
    let scaler = Scaler { api: rs_api.clone(), ctx: &ctx, d: &d, replicas, surge };
    let mut created_new = false;

    let mut new_rs = match new_idx {
        Some(i) => {
            let mut r = all.remove(i);
            if revision(&r) <= max_old_rev && !paused {
                let patch = json!({"metadata": {"annotations": {REVISION: (max_old_rev + 1).to_string()}}});
                r = rs_api.patch(&r.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
            }
            Some(r)
        }
        None if paused => None,
        None => {
            let mut template = spec.template.clone();
            let tmeta = template.metadata.get_or_insert_with(Default::default);
            tmeta.labels.get_or_insert_with(BTreeMap::new).insert(HASH.into(), hash.clone());
            let mut selector = spec.selector.clone();
            selector.match_labels.get_or_insert_with(BTreeMap::new).insert(HASH.into(), hash.clone());
            let old_total: i32 = all.iter().map(spec_replicas).sum();
            let start = if recreate {
                if old_total > 0 { 0 } else { replicas }
            } else if old_total == 0 {
                replicas
            } else {
                (replicas + surge - old_total).clamp(0, replicas)
            };
            let rs = ReplicaSet {
                metadata: ObjectMeta {
                    name: Some(format!("{name}-{hash}")),
                    namespace: Some(ns.clone()),
                    labels: tmeta.labels.clone(),
                    annotations: Some(BTreeMap::from([
                        (REVISION.to_string(), (max_old_rev + 1).to_string()),
                        (DESIRED.to_string(), replicas.to_string()),
                        (MAX_REPLICAS.to_string(), (replicas + surge).to_string()),
                    ])),
                    owner_references: Some(vec![super::controller_ref(d.as_ref())]),
                    ..Default::default()
                },
                spec: Some(ReplicaSetSpec {
                    replicas: Some(start),
                    min_ready_seconds: spec.min_ready_seconds,
                    selector,
                    template: Some(template),
                }),
                status: None,
            };
            match rs_api.create(&PostParams::default(), &rs).await {
                Ok(r) => {
                    created_new = true;
                    let msg = format!("Scaled up replica set {} from 0 to {start}", r.name_any());
                    ctx.event(d.as_ref(), false, "ScalingReplicaSet", msg);
                    Some(r)
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    // A ReplicaSet of that name with another template: count the
                    // collision so the next hash differs, as Kubernetes does.
                    let c = collisions.unwrap_or(0) + 1;
                    let dapi: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
                    dapi.patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(&json!({"status": {"collisionCount": c}})),
                    )
                    .await?;
                    return Ok(Action::await_change());
                }
                Err(e) => return Err(e),
            }
        }
    };
    let mut olds = all;

    if !paused && let Some(new) = new_rs.as_mut() {
        if recreate {
            for o in olds.iter_mut() {
                scaler.scale(o, 0).await?;
            }
            let old_pods: i32 = olds.iter().map(|o| status_of(o).0).sum();
            if old_pods == 0 {
                scaler.scale(new, replicas).await?;
            }
        } else {
            // reconcileNewReplicaSet
            let cur = spec_replicas(new);
            if cur > replicas {
                scaler.scale(new, replicas).await?;
            } else if cur < replicas {
                let total: i32 = olds.iter().map(spec_replicas).sum::<i32>() + cur;
                let max_total = replicas + surge;
                if total < max_total {
                    let up = (max_total - total).min(replicas - cur);
                    scaler.scale(new, cur + up).await?;
                }
            }
            // reconcileOldReplicaSets
            let old_total: i32 = olds.iter().map(spec_replicas).sum();
            if old_total > 0 {
                let all_total = old_total + spec_replicas(new);
                let min_available = replicas - unavail;
                let new_unavailable = spec_replicas(new) - status_of(new).2;
                let mut budget = all_total - min_available - new_unavailable;
                // First the old pods that are not available anyway.
                for o in olds.iter_mut() {
                    if budget <= 0 {
                        break;
                    }
                    let unhealthy = spec_replicas(o) - status_of(o).2;
                    let down = unhealthy.min(budget).max(0);
                    if down > 0 {
                        let to = spec_replicas(o) - down;
                        scaler.scale(o, to).await?;
                        budget -= down;
                    }
                }
                // Then available ones, as far as availability allows.
                let available: i32 =
                    olds.iter().map(|o| status_of(o).2.min(spec_replicas(o))).sum::<i32>() + status_of(new).2;
                let mut down_total = (available - min_available).min(budget.max(0));
                for o in olds.iter_mut() {
                    if down_total <= 0 {
                        break;
                    }
                    let down = spec_replicas(o).min(down_total);
                    if down > 0 {
                        let to = spec_replicas(o) - down;
                        scaler.scale(o, to).await?;
                        down_total -= down;
                    }
                }
            }
        }
        // revisionHistoryLimit: drop the oldest fully scaled-down ReplicaSets.
        let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
        let idle: Vec<&ReplicaSet> = olds.iter().filter(|o| spec_replicas(o) == 0 && status_of(o).0 == 0).collect();
        if idle.len() > limit {
            for o in &idle[..idle.len() - limit] {
                match rs_api.delete(&o.name_any(), &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    if paused && let Some(new) = new_rs.as_mut() {
        // A paused Deployment still scales its current ReplicaSet.
        if olds.iter().all(|o| spec_replicas(o) == 0) && spec_replicas(new) != replicas {
            scaler.scale(new, replicas).await?;
        }
    }

    // The Deployment's revision follows its new ReplicaSet.
    if let Some(new) = &new_rs {
        let rev = revision(new).max(max_old_rev + 1).to_string();
        let rev = new.annotations().get(REVISION).cloned().unwrap_or(rev);
        if d.annotations().get(REVISION) != Some(&rev) {
            let dapi: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
            let patch = json!({"metadata": {"annotations": {REVISION: rev}}});
            dapi.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        }
    }

    // Status.
    let every: Vec<&ReplicaSet> = olds.iter().chain(new_rs.iter()).collect();
    let total: i32 = every.iter().map(|r| status_of(r).0).sum();
    let ready: i32 = every.iter().map(|r| status_of(r).1).sum();
    let available: i32 = every.iter().map(|r| status_of(r).2).sum();
    let updated = new_rs.as_ref().map(|r| status_of(r).0).unwrap_or(0);
    let old_conds = d.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    let find = |t: &str| old_conds.iter().find(|c| c.type_ == t);
    let avail_cond = if available >= replicas - unavail {
        condition(
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
            find("Available"),
        )
    } else {
        condition(
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
            find("Available"),
        )
    };
    let new_name = new_rs.as_ref().map(|r| r.name_any()).unwrap_or_default();
    let complete = updated == replicas && available == replicas && total == replicas;
    // Progress as Kubernetes's `DeploymentProgressing` sees it: more pods updated, ready
    // or available, or fewer old ones.
    let before = d.status.clone().unwrap_or_default();
    let old_pods = |total: i32, updated: i32| total - updated;
    let progressed = updated > before.updated_replicas.unwrap_or(0)
        || ready > before.ready_replicas.unwrap_or(0)
        || available > before.available_replicas.unwrap_or(0)
        || old_pods(total, updated) < old_pods(before.replicas.unwrap_or(0), before.updated_replicas.unwrap_or(0));
    let old_prog = find("Progressing");
    let old_reason = old_prog.and_then(|c| c.reason.as_deref()).unwrap_or("");
    let deadline = spec.progress_deadline_seconds.filter(|s| *s > 0).map(|s| Duration::from_secs(s as u64));
    let now = k8s_openapi::jiff::Timestamp::now();
    // How long the rollout has until its deadline, from the last recorded progress.
    let left = |c: &DeploymentCondition| {
        let since = c.last_update_time.as_ref().map(|t| t.0).unwrap_or(now);
        let elapsed = Duration::try_from(now.duration_since(since)).unwrap_or_default();
        deadline.map(|d| d.saturating_sub(elapsed))
    };
    let prog_cond = if paused {
        condition("Progressing", "Unknown", "DeploymentPaused", "Deployment is paused".into(), old_prog)
    } else if created_new {
        condition(
            "Progressing",
            "True",
            "NewReplicaSetCreated",
            format!("Created new replica set {new_name:?}"),
            old_prog,
        )
    } else if complete {
        condition(
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            format!("ReplicaSet {new_name:?} has successfully progressed."),
            old_prog,
        )
    } else if progressed || old_prog.is_none() || old_reason == "DeploymentPaused" {
        let mut c = condition(
            "Progressing",
            "True",
            "ReplicaSetUpdated",
            format!("ReplicaSet {new_name:?} is progressing."),
            old_prog,
        );
        c.last_update_time = Some(Time(now));
        c
    } else if let Some(old) = old_prog.filter(|_| old_reason != "ProgressDeadlineExceeded")
        && left(old) == Some(Duration::ZERO)
    {
        condition(
            "Progressing",
            "False",
            "ProgressDeadlineExceeded",
            format!("ReplicaSet {new_name:?} has timed out progressing."),
            Some(old),
        )
    } else {
        old_prog.cloned().expect("checked above")
    };
    // Come back when the deadline passes, if nothing else happens first.
    let requeue = if paused || complete || prog_cond.reason.as_deref() == Some("ProgressDeadlineExceeded") {
        None
    } else {
        left(&prog_cond).map(|l| l + Duration::from_secs(1))
    };
    let status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(total),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        unavailable_replicas: Some((replicas - available).max(0)),
        conditions: Some(vec![avail_cond, prog_cond]),
        collision_count: collisions,
        terminating_replicas: None,
    };
    let unchanged = d.status.as_ref().is_some_and(|s| {
        let strip = |s: &DeploymentStatus| {
            let mut s = s.clone();
            for c in s.conditions.iter_mut().flatten() {
                c.last_update_time = None;
                c.last_transition_time = None;
            }
            s.conditions.iter_mut().for_each(|cs| cs.sort_by(|a, b| a.type_.cmp(&b.type_)));
            s
        };
        strip(s) == strip(&status)
    });
    if !unchanged {
        let dapi: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
        dapi.patch_status(&name, &PatchParams::default(), &Patch::Merge(&json!({"status": status}))).await?;
    }
    Ok(requeue.map(Action::requeue).unwrap_or_else(Action::await_change))
}
