//! The ResourceQuota controller: keeps each quota's `status.hard` and `status.used`
//! current (what `kubectl describe quota` shows), recounting every couple of seconds
//! and whenever a quota changes. Enforcement is admission's (see the API server).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ResourceQuota;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::server::apiserver::ApiServer;

pub(super) async fn run(api: Arc<ApiServer>, client: kube::Client, shutdown: CancellationToken) {
    let quotas: Api<ResourceQuota> = Api::all(client.clone());
    let mut watched = super::Watched::new(quotas, Some(Duration::from_secs(2)));
    let reader = watched.reader.clone();
    while watched.next(&shutdown).await.is_some() {
        for q in reader.state() {
            let (Some(ns), Some(name)) = (q.metadata.namespace.as_deref(), q.metadata.name.as_deref()) else {
                continue;
            };
            let hard: BTreeMap<String, String> = q
                .spec
                .as_ref()
                .and_then(|s| s.hard.as_ref())
                .map(|h| h.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect())
                .unwrap_or_default();
            let keys: Vec<String> = hard.keys().cloned().collect();
            let Ok(used) = api.quota_used(ns, &keys).await else { continue };
            let used: BTreeMap<String, String> =
                used.iter().map(|(k, v)| (k.clone(), crate::api::quota::format(k, *v))).collect();
            let status = q.status.as_ref();
            let have_hard: BTreeMap<String, String> = status
                .and_then(|s| s.hard.as_ref())
                .map(|h| h.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect())
                .unwrap_or_default();
            let have_used: BTreeMap<String, String> = status
                .and_then(|s| s.used.as_ref())
                .map(|h| h.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect())
                .unwrap_or_default();
            if have_hard == hard && have_used == used {
                continue;
            }
            let patch = json!({"status": {"hard": hard, "used": used}});
            let api_ns: Api<ResourceQuota> = Api::namespaced(client.clone(), ns);
            if let Err(e) = api_ns.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                tracing::debug!(quota = name, error = %e, "updating quota status failed");
            }
        }
    }
}
