//! The token cleaner, as kube-controller-manager's: bootstrap token Secrets
//! (`kube-system/bootstrap-token-<id>`) are deleted once their expiration has passed.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};
use tokio_util::sync::CancellationToken;

use crate::server::auth::bootstrap;

const EVERY: Duration = Duration::from_secs(30);

async fn pass(api: &Api<Secret>) -> Result<(), kube::Error> {
    let lp = ListParams::default().fields(&format!("type={}", bootstrap::SECRET_TYPE));
    let now = chrono::Utc::now();
    for s in api.list(&lp).await?.items {
        let Ok(v) = serde_json::to_value(&s) else { continue };
        if bootstrap::expiration(&v).is_some_and(|e| e <= now) {
            tracing::info!(secret = %s.name_any(), "deleting an expired bootstrap token");
            let _ = api.delete(&s.name_any(), &DeleteParams::default()).await;
        }
    }
    Ok(())
}

pub(super) async fn run(client: kube::Client, shutdown: CancellationToken) {
    let api: Api<Secret> = Api::namespaced(client, bootstrap::NAMESPACE);
    super::every(EVERY, "token cleaner", shutdown, || pass(&api)).await
}
