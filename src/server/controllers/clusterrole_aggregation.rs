//! The ClusterRole aggregation controller: a ClusterRole with an `aggregationRule`
//! gets, as its rules, the union of the rules of the ClusterRoles its selectors pick
//! (so a CRD's `aggregate-to-view` role shows up in `view`), recomputed whenever any
//! ClusterRole changes.

use std::time::Duration;

use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::server::auth::policy;

pub(super) async fn run(client: kube::Client, shutdown: CancellationToken) {
    let api: Api<ClusterRole> = Api::all(client);
    let mut watched = super::Watched::new(api.clone(), None);
    let reader = watched.reader.clone();
    while watched.next(&shutdown).await.is_some() {
        // Let a burst of changes settle before recomputing.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let table: Vec<(String, Value, Vec<Value>)> = reader
            .state()
            .iter()
            .map(|r| {
                let labels = json!(r.metadata.labels.clone().unwrap_or_default());
                let rules = r.rules.iter().flatten().filter_map(|x| serde_json::to_value(x).ok()).collect();
                (r.metadata.name.clone().unwrap_or_default(), labels, rules)
            })
            .collect();
        for r in reader.state() {
            let Some(agg) = &r.aggregation_rule else { continue };
            let selectors: Vec<Value> =
                agg.cluster_role_selectors.iter().flatten().filter_map(|s| serde_json::to_value(s).ok()).collect();
            let name = r.metadata.name.clone().unwrap_or_default();
            // A role does not aggregate itself.
            let others: Vec<_> = table.iter().filter(|(n, ..)| *n != name).cloned().collect();
            let want = policy::aggregate(&selectors, &others);
            let have: Vec<Value> = r.rules.iter().flatten().filter_map(|x| serde_json::to_value(x).ok()).collect();
            if want == have {
                continue;
            }
            let patch = json!({"rules": want});
            if let Err(e) = api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                tracing::debug!(role = %name, error = %e, "aggregating a ClusterRole failed");
            }
        }
    }
}
