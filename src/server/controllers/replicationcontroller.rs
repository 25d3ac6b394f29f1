//! The ReplicationController controller: the ReplicaSet logic ([`super::replicaset`])
//! over a ReplicationController's map selector, with its own status shape.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::ReplicaSetSpec;
use k8s_openapi::api::core::v1::{ReplicationController, ReplicationControllerStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::Ctx;
use super::pod_cache::PodCache;

pub(super) async fn run(ctx: Arc<Ctx>, pods: Arc<PodCache>, shutdown: CancellationToken) {
    super::run_owning_pods::<ReplicationController, _, _>(ctx, pods, shutdown, reconcile).await;
}

async fn reconcile(rc: Arc<ReplicationController>, ctx: Arc<Ctx>, pods: Arc<PodCache>) -> Result<Action, kube::Error> {
    if rc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let spec = rc.spec.clone().unwrap_or_default();
    // Without a selector, an RC selects its template's labels (as Kubernetes defaults it).
    let labels = spec
        .selector
        .clone()
        .filter(|s| !s.is_empty())
        .or_else(|| spec.template.as_ref().and_then(|t| t.metadata.as_ref()).and_then(|m| m.labels.clone()));
    let Some(labels) = labels.filter(|l| !l.is_empty()) else { return Ok(Action::await_change()) };
    let rs_spec = ReplicaSetSpec {
        replicas: spec.replicas,
        min_ready_seconds: spec.min_ready_seconds,
        selector: LabelSelector { match_labels: Some(labels), match_expressions: None },
        template: spec.template.clone(),
    };
    let Some((st, action)) = super::replicaset::sync_pods(rc.as_ref(), &rs_spec, &ctx, &pods).await? else {
        return Ok(Action::await_change());
    };
    let status = ReplicationControllerStatus {
        replicas: st.replicas,
        fully_labeled_replicas: st.fully_labeled_replicas,
        ready_replicas: st.ready_replicas,
        available_replicas: st.available_replicas,
        observed_generation: rc.metadata.generation,
        conditions: rc.status.as_ref().and_then(|s| s.conditions.clone()),
    };
    if rc.status.as_ref() != Some(&status) {
        let api: Api<ReplicationController> = Api::namespaced(ctx.client.clone(), &rc.namespace().unwrap_or_default());
        api.patch_status(&rc.name_any(), &PatchParams::default(), &Patch::Merge(&json!({"status": status}))).await?;
    }
    Ok(action)
}
