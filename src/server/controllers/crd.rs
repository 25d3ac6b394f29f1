//! The CustomResourceDefinition controller (apiextensions-apiserver's part): keeps the
//! served custom resources in step with the CRDs, reports them `NamesAccepted` and
//! `Established`, and on deletion removes every custom object before letting the CRD go.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition as Crd;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::api::crd::CLEANUP_FINALIZER;
use crate::server::apiserver::ApiServer;

pub(super) async fn run(api: Arc<ApiServer>, client: kube::Client, shutdown: CancellationToken) {
    let crds: Api<Crd> = Api::all(client.clone());
    let mut watched = super::Watched::new(crds.clone(), Some(Duration::from_secs(1)));
    let reader = watched.reader.clone();
    while let Some(wake) = watched.next(&shutdown).await {
        let terminating = wake == super::Wake::Tick;
        let all = reader.state();
        if !terminating {
            let values: Vec<Value> = all.iter().filter_map(|c| serde_json::to_value(&**c).ok()).collect();
            api.serve_custom(&values);
        }
        for c in &all {
            let r = if c.metadata.deletion_timestamp.is_some() {
                cleanup(&client, &crds, c).await
            } else if terminating {
                Ok(())
            } else {
                establish(&crds, c).await
            };
            if let Err(e) = r {
                tracing::debug!(crd = c.metadata.name.as_deref().unwrap_or(""), error = %e, "CRD reconcile failed");
            }
        }
    }
}

/// Sets the accepted names, the stored versions and the conditions, when they differ.
async fn establish(crds: &Api<Crd>, c: &Crd) -> Result<(), kube::Error> {
    let name = c.metadata.name.clone().unwrap_or_default();
    let names = serde_json::to_value(&c.spec.names).unwrap_or(json!({}));
    let storage = c.spec.versions.iter().find(|v| v.storage).map(|v| v.name.clone());
    let status = c.status.as_ref();
    let mut stored: Vec<String> = status.and_then(|s| s.stored_versions.clone()).unwrap_or_default();
    if let Some(s) = storage
        && !stored.contains(&s)
    {
        stored.push(s);
    }
    let has = |t: &str| {
        status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|x| x.type_ == t && x.status == "True"))
    };
    let accepted = status.and_then(|s| serde_json::to_value(&s.accepted_names).ok()).unwrap_or(Value::Null);
    if has("NamesAccepted")
        && has("Established")
        && accepted == names
        && status.and_then(|s| s.stored_versions.as_ref()) == Some(&stored)
    {
        return Ok(());
    }
    let now = crate::api::meta::now_rfc3339();
    let patch = json!({"status": {
    "acceptedNames": names,
    "storedVersions": stored,
    "conditions": [
        {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
        {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
    ]}});
    crds.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch)).await?;
    Ok(())
}

/// Deletes every object of a CRD being deleted; once none is left, drops the finalizer.
async fn cleanup(client: &kube::Client, crds: &Api<Crd>, c: &Crd) -> Result<(), kube::Error> {
    let name = c.metadata.name.clone().unwrap_or_default();
    if !c.metadata.finalizers.iter().flatten().any(|f| f == CLEANUP_FINALIZER) {
        return Ok(());
    }
    if let Some(v) = c.spec.versions.iter().find(|v| v.served) {
        let ar = ApiResource {
            group: c.spec.group.clone(),
            version: v.name.clone(),
            api_version: format!("{}/{}", c.spec.group, v.name),
            kind: c.spec.names.kind.clone(),
            plural: c.spec.names.plural.clone(),
        };
        let objs: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        let left = match objs.list(&ListParams::default()).await {
            Ok(l) => l.items,
            Err(kube::Error::Api(e)) if e.code == 404 => vec![],
            Err(e) => return Err(e),
        };
        if !left.is_empty() {
            for o in left.iter().filter(|o| o.metadata.deletion_timestamp.is_none()) {
                let api: Api<DynamicObject> = match &o.metadata.namespace {
                    Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
                    None => Api::all_with(client.clone(), &ar),
                };
                let _ = api.delete(o.metadata.name.as_deref().unwrap_or(""), &DeleteParams::default()).await;
            }
            return Ok(());
        }
    }
    let keep: Vec<&String> = c.metadata.finalizers.iter().flatten().filter(|f| *f != CLEANUP_FINALIZER).collect();
    let rv = c.metadata.resource_version.clone();
    let patch = json!({"metadata": {"finalizers": keep, "resourceVersion": rv}});
    crds.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await?;
    Ok(())
}
