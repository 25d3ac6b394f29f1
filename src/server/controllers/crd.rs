//! The CustomResourceDefinition controller (apiextensions-apiserver's part): keeps the
//! served custom resources in step with the CRDs, gives each the names no other CRD of
//! its group holds and reports them `NamesAccepted` (or not, naming the clash) and
//! `Established`, and on deletion reports `Terminating` and removes every custom
//! object before letting the CRD go.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition as Crd;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::api::crd::CLEANUP_FINALIZER;
use crate::api::crd::naming::{self, Naming};
use crate::server::apiserver::ApiServer;

pub(super) async fn run(api: Arc<ApiServer>, client: kube::Client, shutdown: CancellationToken) {
    let crds: Api<Crd> = Api::all(client.clone());
    let mut watched = super::Watched::new(crds.clone(), Some(Duration::from_secs(1)));
    let reader = watched.reader.clone();
    while let Some(wake) = watched.next(&shutdown).await {
        let terminating = wake == super::Wake::Tick;
        let all = reader.state();
        let values: Vec<Value> = all.iter().filter_map(|c| serde_json::to_value(&**c).ok()).collect();
        if !terminating {
            api.serve_custom(&values);
        }
        let namings = naming::accept_names(&values);
        for (c, naming) in all.iter().zip(&namings) {
            let r = if c.metadata.deletion_timestamp.is_some() {
                cleanup(&client, &crds, c).await
            } else if terminating {
                Ok(())
            } else {
                establish(&crds, c, naming).await
            };
            if let Err(e) = r {
                tracing::debug!(crd = c.metadata.name.as_deref().unwrap_or(""), error = %e, "CRD reconcile failed");
            }
        }
    }
}

/// Sets the accepted names, the stored versions and the `NamesAccepted` and
/// `Established` conditions, when they differ. A CRD once established stays so when
/// a later change of its names clashes (it keeps serving its old names).
async fn establish(crds: &Api<Crd>, c: &Crd, naming: &Naming) -> Result<(), kube::Error> {
    let name = c.metadata.name.clone().unwrap_or_default();
    let storage = c.spec.versions.iter().find(|v| v.storage).map(|v| v.name.clone());
    let status = c.status.as_ref();
    let mut stored: Vec<String> = status.and_then(|s| s.stored_versions.clone()).unwrap_or_default();
    if let Some(s) = storage
        && !stored.contains(&s)
    {
        stored.push(s);
    }
    let old = conditions_of(c);
    let accepted = match &naming.conflict {
        None => ("True", "NoConflicts", "no conflicts found".to_string()),
        Some((reason, message)) => ("False", *reason, message.clone()),
    };
    let established = if accepted.0 == "True" {
        ("True", "InitialNamesAccepted", "the initial names have been accepted".to_string())
    } else {
        match old.iter().find(|x| x["type"] == "Established") {
            Some(e) => (
                if e["status"] == "True" { "True" } else { "False" },
                if e["status"] == "True" { "InitialNamesAccepted" } else { "NotAccepted" },
                e["message"].as_str().unwrap_or("").to_string(),
            ),
            None => ("False", "NotAccepted", "not all names are accepted".to_string()),
        }
    };
    let mut conditions = old.clone();
    set_condition(&mut conditions, "NamesAccepted", accepted);
    set_condition(&mut conditions, "Established", established);
    let have_names = status.and_then(|s| serde_json::to_value(&s.accepted_names).ok()).unwrap_or(Value::Null);
    if conditions == old
        && naming::tidy(&have_names) == naming.names
        && status.and_then(|s| s.stored_versions.as_ref()) == Some(&stored)
    {
        return Ok(());
    }
    let patch = json!({"status": {
        "acceptedNames": naming.names,
        "storedVersions": stored,
        "conditions": conditions,
    }});
    crds.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch)).await?;
    Ok(())
}

/// A CRD's status conditions, as JSON.
fn conditions_of(c: &Crd) -> Vec<Value> {
    let cs = c.status.as_ref().and_then(|s| s.conditions.as_ref());
    cs.map(|cs| cs.iter().filter_map(|x| serde_json::to_value(x).ok()).collect()).unwrap_or_default()
}

/// Puts a condition in a CRD's list, keeping its transition time while its status
/// stays the same.
fn set_condition(conditions: &mut Vec<Value>, ty: &str, (status, reason, message): (&str, &str, String)) {
    let same = |x: &Value| x["type"] == ty;
    let at = match conditions.iter().find(|x| same(x)) {
        Some(x) if x["status"] == status => x["lastTransitionTime"].clone(),
        _ => json!(crate::api::meta::now_rfc3339()),
    };
    let cond = json!({"type": ty, "status": status, "reason": reason, "message": message, "lastTransitionTime": at});
    match conditions.iter_mut().find(|x| same(x)) {
        Some(x) => *x = cond,
        None => conditions.push(cond),
    }
}

/// Deletes every object of a CRD being deleted; once none is left, drops the finalizer.
async fn cleanup(client: &kube::Client, crds: &Api<Crd>, c: &Crd) -> Result<(), kube::Error> {
    let name = c.metadata.name.clone().unwrap_or_default();
    if !c.metadata.finalizers.iter().flatten().any(|f| f == CLEANUP_FINALIZER) {
        return Ok(());
    }
    let old = conditions_of(c);
    let mut conditions = old.clone();
    let progress = ("True", "InstanceDeletionInProgress", "CustomResource deletion is in progress".to_string());
    set_condition(&mut conditions, "Terminating", progress);
    if conditions != old {
        let patch = json!({"status": {"conditions": conditions}});
        crds.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch)).await?;
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
