//! The ClusterRole aggregation controller: a ClusterRole with an `aggregationRule`
//! gets, as its rules, the union of the rules of the ClusterRoles its selectors pick
//! (so a CRD's `aggregate-to-view` role shows up in `view`), recomputed whenever any
//! ClusterRole changes.

use std::pin::pin;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::server::auth::policy;

pub(super) async fn run(client: kube::Client, shutdown: CancellationToken) {
    let api: Api<ClusterRole> = Api::all(client);
    let (reader, writer) = reflector::store();
    let mut events = pin!(reflector(writer, watcher(api.clone(), watcher::Config::default()).default_backoff()));
    let mut ready = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = events.next() => match ev {
                None => return,
                Some(Ok(watcher::Event::InitDone)) => ready = true,
                Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => continue,
                Some(_) => {}
            },
        }
        if !ready {
            continue;
        }
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
