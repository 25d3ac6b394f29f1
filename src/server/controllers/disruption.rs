//! The disruption controller: PodDisruptionBudget status (expected, current and desired
//! healthy pods, disruptionsAllowed, the DisruptionAllowed condition), which the
//! `pods/eviction` subresource reads, so `kubectl drain` respects budgets.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::pod_cache::PodCache;
use super::{Ctx, pod_active, pod_ready, retry_soon};

pub(super) async fn run(ctx: Arc<Ctx>, pods: Arc<PodCache>, shutdown: CancellationToken) {
    let client = ctx.client.clone();
    let ctrl = Controller::new(Api::<PodDisruptionBudget>::all(client.clone()), watcher::Config::default());
    let store = ctrl.store();
    let cache = pods.clone();
    ctrl.watches_stream(pods.subscribe(), move |pod: Pod| {
        store
            .state()
            .iter()
            .filter(|b| b.namespace() == pod.namespace())
            .map(|b| ObjectRef::from_obj(b.as_ref()))
            .collect::<Vec<_>>()
    })
    .graceful_shutdown_on(async move { shutdown.cancelled().await })
    .run(move |pdb, ctx| reconcile(pdb, ctx, cache.clone()), |_, _, _| retry_soon(), ctx)
    .for_each(|_| async {})
    .await;
}

fn scaled(v: &IntOrString, total: i32, round_up: bool) -> i32 {
    match v {
        IntOrString::Int(i) => *i,
        IntOrString::String(s) => {
            let x = s.trim_end_matches('%').parse::<f64>().unwrap_or(0.0) * f64::from(total) / 100.0;
            (if round_up { x.ceil() } else { x.floor() }) as i32
        }
    }
}

async fn reconcile(pdb: Arc<PodDisruptionBudget>, ctx: Arc<Ctx>, cache: Arc<PodCache>) -> Result<Action, kube::Error> {
    let ns = pdb.namespace().unwrap_or_default();
    let spec = pdb.spec.clone().unwrap_or_default();
    // A null selector selects nothing, an empty one every pod of the namespace.
    let pods = match &spec.selector {
        Some(sel) => {
            let Some(selected) = super::pod_matcher(sel, &format!("{ns}/{}", pdb.name_any())) else {
                return Ok(Action::await_change());
            };
            match cache.in_namespace(&ns, |p| pod_active(p) && selected(p)).await {
                Some(pods) => pods,
                None => return Ok(retry_soon()),
            }
        }
        None => Vec::new(),
    };
    let expected = pods.len() as i32;
    let healthy = pods.iter().filter(|p| pod_ready(p)).count() as i32;
    let desired = match (&spec.min_available, &spec.max_unavailable) {
        (Some(m), _) => scaled(m, expected, true),
        (None, Some(m)) => (expected - scaled(m, expected, true)).max(0),
        (None, None) => expected,
    };
    let allowed = (healthy - desired).max(0);
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let old = pdb.status.clone().unwrap_or_default();
    let old_cond = old.conditions.as_ref().and_then(|c| c.iter().find(|c| c.type_ == "DisruptionAllowed"));
    let (cstatus, reason) = if allowed > 0 { ("True", "SufficientPods") } else { ("False", "InsufficientPods") };
    let since = old_cond
        .filter(|c| c.status == cstatus)
        .and_then(|c| serde_json::to_value(&c.last_transition_time).ok())
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or(now);
    let unchanged = old.current_healthy == healthy
        && old.desired_healthy == desired
        && old.expected_pods == expected
        && old.disruptions_allowed == allowed
        && old.observed_generation == pdb.metadata.generation
        && old_cond.is_some_and(|c| c.status == cstatus);
    if !unchanged {
        let status = json!({
            "currentHealthy": healthy, "desiredHealthy": desired, "expectedPods": expected,
            "disruptionsAllowed": allowed, "observedGeneration": pdb.metadata.generation,
            "conditions": [{"type": "DisruptionAllowed", "status": cstatus, "reason": reason, "message": "",
                            "lastTransitionTime": since, "observedGeneration": pdb.metadata.generation}],
        });
        Api::<PodDisruptionBudget>::namespaced(ctx.client.clone(), &ns)
            .patch_status(&pdb.name_any(), &PatchParams::default(), &Patch::Merge(&json!({"status": status})))
            .await?;
    }
    Ok(Action::await_change())
}
