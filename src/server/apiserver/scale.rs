//! The `scale` subresource: an autoscaling/v1 `Scale` view of `spec.replicas`, as
//! `kubectl scale` and autoscalers use it.

use bytes::Bytes;
use http::Method;
use serde_json::{Value, json};

use super::ApiServer;
use super::handlers::{Call, storage_error};
use super::request::{self, Resp};
use crate::api::meta;
use crate::api::patch::{self, PatchType};
use crate::api::registry::ResourceDef;
use crate::api::status::{ApiError, Cause};
use crate::embedded::StorageError;

/// Where a kind keeps its replicas: JSON pointers to spec and status replicas, and
/// the label selector (a pointer to a LabelSelector for built-ins, to a string for
/// custom resources).
fn paths(def: &ResourceDef) -> (String, String, Option<String>) {
    let ptr = |p: &str| p.trim().replace('.', "/");
    match def.custom.as_ref().and_then(|c| c.scale.as_ref()) {
        Some(sc) => (ptr(&sc.spec_replicas), ptr(&sc.status_replicas), sc.label_selector.as_deref().map(ptr)),
        None => ("/spec/replicas".into(), "/status/replicas".into(), None),
    }
}

fn scale_of(def: &ResourceDef, obj: &Value) -> Value {
    let md = obj.get("metadata").cloned().unwrap_or(json!({}));
    let mut m = serde_json::Map::new();
    for k in ["name", "namespace", "uid", "resourceVersion", "creationTimestamp"] {
        if let Some(v) = md.get(k) {
            m.insert(k.into(), v.clone());
        }
    }
    let (spec, status, sel) = paths(def);
    let selector = match (&def.custom, sel) {
        (Some(_), Some(p)) => obj.pointer(&p).and_then(Value::as_str).unwrap_or("").to_string(),
        (Some(_), None) => String::new(),
        (None, _) => obj.pointer("/spec/selector").map(crate::api::selectors::selector_string).unwrap_or_default(),
    };
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": m,
        "spec": {"replicas": obj.pointer(&spec).and_then(Value::as_i64).unwrap_or(0)},
        "status": {"replicas": obj.pointer(&status).and_then(Value::as_i64).unwrap_or(0), "selector": selector},
    })
}

/// Sets the value at a JSON pointer, making the objects on the way.
fn set_at(obj: &mut Value, ptr: &str, v: Value) {
    let mut cur = obj;
    let parts: Vec<&str> = ptr.trim_start_matches('/').split('/').collect();
    for (i, p) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = json!({});
        }
        let m = cur.as_object_mut().expect("object");
        if i + 1 == parts.len() {
            m.insert(p.to_string(), v);
            return;
        }
        cur = m.entry(p.to_string()).or_insert_with(|| json!({}));
    }
}

impl ApiServer {
    /// GET, PUT or PATCH of `<resource>/<name>/scale`.
    pub(super) async fn scale(&self, method: &Method, call: &Call, body: Bytes) -> Result<Resp, ApiError> {
        let name = call.name.clone().unwrap_or_default();
        let t = call.target(&name);
        for _ in 0..8 {
            let cur =
                self.store.get(&call.def.key(call.ns.as_deref(), &name)).await.map_err(|e| storage_error(t, e))?;
            let cur = cur.ok_or_else(|| ApiError::not_found(t))?;
            let obj = call.decode(&cur)?;
            let view = scale_of(call.def, &obj);
            let wanted = match *method {
                Method::GET => return Ok(request::json(200, &view)),
                Method::PUT => request::decode_object(&request::content_type(&call.headers), &body)?.0,
                _ => {
                    let ct = request::content_type(&call.headers);
                    let pt = PatchType::from_content_type(&ct)
                        .filter(|p| *p != PatchType::Apply)
                        .ok_or_else(|| ApiError::unsupported_media_type(&ct, PatchType::ACCEPTED))?;
                    let p: Value = serde_json::from_slice(&body)
                        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
                    patch::apply(pt, &view, &p).map_err(|e| {
                        ApiError::invalid("autoscaling", "Scale", &name, vec![Cause::invalid("patch", &json!(""), e)])
                    })?
                }
            };
            if let Some(rv) = meta::meta_str(&wanted, "resourceVersion").filter(|r| !r.is_empty())
                && rv != cur.mod_rev.to_string()
            {
                return Err(ApiError::stale(t));
            }
            let replicas = wanted.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0);
            if replicas < 0 {
                return Err(ApiError::invalid(
                    "autoscaling",
                    "Scale",
                    &name,
                    vec![Cause::invalid("spec.replicas", &json!(replicas), "must be greater than or equal to 0")],
                ));
            }
            let mut new = obj.clone();
            set_at(&mut new, &paths(call.def).0, json!(replicas));
            if new == obj {
                return Ok(request::json(200, &view));
            }
            let g = obj.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0) + 1;
            meta::meta_mut(&mut new).insert("generation".into(), json!(g));
            call.writer(&call.manager()?).update(Some(&obj), &mut new, crate::api::managed::read(&obj));
            match self.store.update(&cur.key, call.encode(&new), cur.mod_rev).await {
                Ok(rev) => {
                    meta::meta_mut(&mut new).insert("resourceVersion".into(), json!(rev.to_string()));
                    return Ok(request::json(200, &scale_of(call.def, &new)));
                }
                Err(StorageError::Conflict { .. }) => continue,
                Err(e) => return Err(storage_error(t, e)),
            }
        }
        Err(ApiError::conflict(t, "too many concurrent updates; please try again"))
    }
}
