//! The `scale` subresource: an autoscaling/v1 `Scale` view of `spec.replicas`, as
//! `kubectl scale` and autoscalers use it.

use bytes::Bytes;
use http::Method;
use serde_json::{Value, json};

use super::ApiServer;
use super::handlers::{Call, decode_kv, encode, storage_error};
use super::request::{self, Resp};
use crate::api::meta;
use crate::api::patch::{self, PatchType};
use crate::api::status::{ApiError, Cause};
use crate::embedded::StorageError;

fn scale_of(obj: &Value) -> Value {
    let md = obj.get("metadata").cloned().unwrap_or(json!({}));
    let mut m = serde_json::Map::new();
    for k in ["name", "namespace", "uid", "resourceVersion", "creationTimestamp"] {
        if let Some(v) = md.get(k) {
            m.insert(k.into(), v.clone());
        }
    }
    let selector = obj.pointer("/spec/selector").map(crate::api::selectors::selector_string).unwrap_or_default();
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": m,
        "spec": {"replicas": obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0)},
        "status": {"replicas": obj.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0), "selector": selector},
    })
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
            let obj = decode_kv(&cur)?;
            let view = scale_of(&obj);
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
            new["spec"]["replicas"] = json!(replicas);
            if new == obj {
                return Ok(request::json(200, &view));
            }
            let g = obj.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0) + 1;
            meta::meta_mut(&mut new).insert("generation".into(), json!(g));
            call.writer(&call.manager()?).update(Some(&obj), &mut new, crate::api::managed::read(&obj));
            match self.store.update(&cur.key, encode(&new), cur.mod_rev).await {
                Ok(rev) => {
                    meta::meta_mut(&mut new).insert("resourceVersion".into(), json!(rev.to_string()));
                    return Ok(request::json(200, &scale_of(&new)));
                }
                Err(StorageError::Conflict { .. }) => continue,
                Err(e) => return Err(storage_error(t, e)),
            }
        }
        Err(ApiError::conflict(t, "too many concurrent updates; please try again"))
    }
}
