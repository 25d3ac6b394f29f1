//! Pod subresources that act rather than view: `pods/binding` (how the scheduler
//! assigns a pod to a node) and `pods/eviction` (a delete that respects
//! PodDisruptionBudgets, as `kubectl drain` uses it).

use bytes::Bytes;
use serde_json::{Value, json};

use super::ApiServer;
use super::handlers::{Call, decode_kv, encode, storage_error};
use super::request::{self, Resp};
use crate::api::meta;
use crate::api::selectors::LabelSelector;
use crate::api::status::{ApiError, Cause, Target};
use crate::embedded::StorageError;

fn created() -> Resp {
    request::json(201, &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}))
}

/// Sets (or replaces) a condition of a status `conditions` list.
pub fn set_condition(status: &mut Value, cond: Value) {
    if !status.is_object() {
        *status = json!({});
    }
    let list = status.as_object_mut().expect("object").entry("conditions").or_insert_with(|| json!([]));
    if !list.is_array() {
        *list = json!([]);
    }
    let arr = list.as_array_mut().expect("array");
    let ty = cond.get("type").cloned();
    match arr.iter_mut().find(|c| c.get("type") == ty.as_ref()) {
        Some(c) => {
            let same_status = c.get("status") == cond.get("status");
            let keep_time = c.get("lastTransitionTime").cloned();
            *c = cond;
            if same_status && let Some(t) = keep_time {
                c["lastTransitionTime"] = t;
            }
        }
        None => arr.push(cond),
    }
}

impl ApiServer {
    /// POST `pods/<name>/binding`: assigns a pod that has no node yet.
    pub(super) async fn bind(&self, call: &Call, body: Bytes) -> Result<Resp, ApiError> {
        let name = call.name.clone().unwrap_or_default();
        let t = Target { group: "", resource: "pods/binding", name: &name };
        let (b, _) = request::decode_object(&request::content_type(&call.headers), &body)?;
        let node = b.pointer("/target/name").and_then(Value::as_str).unwrap_or_default().to_string();
        if node.is_empty() {
            return Err(ApiError::invalid(
                "",
                "Binding",
                &name,
                vec![Cause::required("target.name", "Required value")],
            ));
        }
        if let Some(n) = meta::meta_str(&b, "name").filter(|n| !n.is_empty() && *n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the binding ({n}) does not match the pod ({name})"
            )));
        }
        let key = call.def.key(call.ns.as_deref(), &name);
        for _ in 0..8 {
            let cur = self.store.get(&key).await.map_err(|e| storage_error(call.target(&name), e))?;
            let cur = cur.ok_or_else(|| ApiError::not_found(call.target(&name)))?;
            let mut pod = decode_kv(&cur)?;
            if meta::meta_str(&pod, "deletionTimestamp").is_some() {
                return Err(ApiError::conflict(
                    t,
                    &format!("pod {name} is being deleted, cannot be assigned to a host"),
                ));
            }
            if let Some(n) = pod.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty()) {
                return Err(ApiError::conflict(t, &format!("pod {name} is already assigned to node {n:?}")));
            }
            pod["spec"]["nodeName"] = json!(node);
            let now = meta::now_rfc3339();
            set_condition(
                &mut pod["status"],
                json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now}),
            );
            match self.store.update(&key, encode(&pod), cur.mod_rev).await {
                Ok(_) => return Ok(created()),
                Err(StorageError::Conflict { .. }) => continue,
                Err(e) => return Err(storage_error(call.target(&name), e)),
            }
        }
        Err(ApiError::conflict(t, "too many concurrent updates; please try again"))
    }

    /// POST `pods/<name>/eviction`: deletes the pod unless a PodDisruptionBudget
    /// selecting it allows no disruption now (429, as Kubernetes answers).
    pub(super) async fn evict(&self, call: &Call, body: Bytes) -> Result<Resp, ApiError> {
        let name = call.name.clone().unwrap_or_default();
        let (ev, _) = request::decode_object(&request::content_type(&call.headers), &body)?;
        let key = call.def.key(call.ns.as_deref(), &name);
        let cur = self.store.get(&key).await.map_err(|e| storage_error(call.target(&name), e))?;
        let pod = decode_kv(&cur.ok_or_else(|| ApiError::not_found(call.target(&name)))?)?;
        let phase = pod.pointer("/status/phase").and_then(Value::as_str).unwrap_or("");
        let terminal = matches!(phase, "Succeeded" | "Failed");
        if !terminal && meta::meta_str(&pod, "deletionTimestamp").is_none() {
            let ns = call.ns.clone().unwrap_or_default();
            let prefix = self
                .reg()
                .by_kind("policy", "PodDisruptionBudget")
                .map(|d| d.list_prefix(Some(&ns)))
                .ok_or_else(|| ApiError::internal("PodDisruptionBudgets are not registered"))?;
            let pdbs = self.store.list(&prefix, None, 0, 0).await;
            let pdbs = pdbs.map_err(|e| storage_error(call.target(&name), e))?;
            let mut matching = Vec::new();
            for kv in &pdbs.kvs {
                let pdb = decode_kv(kv)?;
                let sel = pdb.pointer("/spec/selector").cloned().unwrap_or(Value::Null);
                let Ok(sel) = LabelSelector::from_label_selector(&sel) else { continue };
                if sel.matches_object(&pod) {
                    matching.push((kv, pdb));
                }
            }
            if matching.len() > 1 {
                return Err(ApiError::internal(
                    "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                ));
            }
            if let Some((kv, pdb)) = matching.first() {
                let allowed = pdb.pointer("/status/disruptionsAllowed").and_then(Value::as_i64).unwrap_or(0);
                if allowed <= 0 {
                    let pdb_name = meta::meta_str(pdb, "name").unwrap_or_default();
                    return Err(ApiError::too_many_requests(format!(
                        "Cannot evict pod as it would violate the pod's disruption budget. The disruption budget {pdb_name} needs {} healthy pods and has {} currently",
                        pdb.pointer("/status/desiredHealthy").and_then(Value::as_i64).unwrap_or(0),
                        pdb.pointer("/status/currentHealthy").and_then(Value::as_i64).unwrap_or(0),
                    )));
                }
                // Take one disruption from the budget before deleting, as Kubernetes
                // does, so concurrent evictions cannot all pass on the same count.
                if !call.dry_run()? {
                    let mut next = pdb.clone();
                    next["status"]["disruptionsAllowed"] = json!(allowed - 1);
                    match self.store.update(&kv.key, encode(&next), kv.mod_rev).await {
                        Ok(_) => {}
                        Err(StorageError::Conflict { .. }) => {
                            return Err(ApiError::too_many_requests(
                                "the disruption budget changed meanwhile; please try again",
                            ));
                        }
                        Err(e) => return Err(storage_error(call.target(&name), e)),
                    }
                }
            }
        }
        let opts = ev.get("deleteOptions").cloned().unwrap_or(json!({}));
        self.delete_object(call, &name, &opts, call.dry_run()?).await?;
        Ok(created())
    }
}
