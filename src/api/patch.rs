//! Patches: JSON patch (RFC 6902), JSON merge patch (RFC 7386) and strategic merge patch.
//!
//! The strategic merge here knows the merge keys of the common built-in list fields by
//! name and honours the `$patch`, `$setElementOrder`, `$retainKeys` and
//! `$deleteFromPrimitiveList` directives; lists without a known merge key are replaced,
//! as Kubernetes does for atomic lists.

use serde_json::{Map, Value};

/// The patch types the API accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json`
    Json,
    /// `application/merge-patch+json`
    Merge,
    /// `application/strategic-merge-patch+json`
    Strategic,
    /// `application/apply-patch+yaml`
    Apply,
}

impl PatchType {
    /// The patch type of a Content-Type.
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        match ct.split(';').next().unwrap_or("").trim() {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Some(PatchType::Apply),
            _ => None,
        }
    }

    /// The accepted Content-Types, for 415 messages.
    pub const ACCEPTED: &'static [&'static str] = &[
        "application/json-patch+json",
        "application/merge-patch+json",
        "application/strategic-merge-patch+json",
        "application/apply-patch+yaml",
    ];
}

/// Applies `patch` of type `pt` to `doc`.
pub fn apply(pt: PatchType, doc: &Value, patch: &Value) -> Result<Value, String> {
    let mut out = doc.clone();
    match pt {
        PatchType::Json => {
            let p: json_patch::Patch = serde_json::from_value(patch.clone()).map_err(|e| e.to_string())?;
            json_patch::patch(&mut out, &p).map_err(|e| e.to_string())?;
        }
        PatchType::Merge => {
            if !patch.is_object() {
                return Err("a merge patch must be a JSON object".into());
            }
            json_patch::merge(&mut out, patch)
        }
        PatchType::Strategic => {
            if !patch.is_object() {
                return Err("a strategic merge patch must be a JSON object".into());
            }
            out = strategic(doc, patch, "")?;
        }
        PatchType::Apply => return Err("server-side apply is not supported yet".into()),
    }
    Ok(out)
}

/// The merge key of a list field, by field name (and, for `ports`, by element shape).
fn merge_key(field: &str, sample: Option<&Value>) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates"
        | "readinessGates" => {
            if field == "readinessGates" {
                "conditionType"
            } else {
                "name"
            }
        }
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "hostAliases" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "ports" => {
            if sample.is_some_and(|s| s.get("containerPort").is_some()) {
                "containerPort"
            } else {
                "port"
            }
        }
        _ => return None,
    })
}

/// Primitive lists that merge (union) instead of being replaced.
fn merges_primitives(field: &str) -> bool {
    field == "finalizers"
}

fn strategic(doc: &Value, patch: &Value, field: &str) -> Result<Value, String> {
    let (Some(d), Some(p)) = (doc.as_object(), patch.as_object()) else {
        return Ok(strip_directives(patch));
    };
    if let Some(dir) = p.get("$patch").and_then(Value::as_str) {
        match dir {
            "replace" => {
                let mut m = p.clone();
                m.remove("$patch");
                return Ok(strip_directives(&Value::Object(m)));
            }
            "delete" => return Ok(Value::Null),
            "merge" => {}
            other => return Err(format!("unknown patch directive {other:?} at {field:?}")),
        }
    }
    let mut out: Map<String, Value> = d.clone();
    if let Some(keep) = p.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        out.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (k, pv) in p {
        if k.starts_with('$') {
            continue;
        }
        if let Some(list) = k.strip_prefix("$setElementOrder/") {
            let _ = list;
            continue;
        }
        if let Some(list) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(cur), Some(del)) = (out.get_mut(list).and_then(Value::as_array_mut), pv.as_array()) {
                cur.retain(|v| !del.contains(v));
            }
            continue;
        }
        if pv.is_null() {
            out.remove(k);
            continue;
        }
        let merged = match (out.get(k), pv) {
            (Some(Value::Object(_)), Value::Object(_)) => strategic(&out[k], pv, k)?,
            (Some(Value::Array(cur)), Value::Array(new)) => {
                merge_list(k, cur, new, p.get(&format!("$setElementOrder/{k}")))?
            }
            (None, v) => strip_directives(v),
            (_, v) => strip_directives(v),
        };
        if merged.is_null() {
            out.remove(k);
        } else {
            out.insert(k.clone(), merged);
        }
    }
    Ok(Value::Object(out))
}

fn merge_list(field: &str, cur: &[Value], new: &[Value], order: Option<&Value>) -> Result<Value, String> {
    if merges_primitives(field) && new.iter().all(|v| !v.is_object()) {
        let mut out = cur.to_vec();
        for v in new {
            if !out.contains(v) {
                out.push(v.clone());
            }
        }
        return Ok(Value::Array(out));
    }
    let Some(key) = merge_key(field, new.first().or(cur.first())) else {
        // Atomic list: the patch replaces it, unless it only says `$patch: replace`.
        return Ok(Value::Array(new.iter().filter(|v| v.get("$patch").is_none()).map(strip_directives).collect()));
    };
    if new.iter().any(|v| v.get("$patch").and_then(Value::as_str) == Some("replace")) {
        return Ok(Value::Array(new.iter().filter(|v| v.get("$patch").is_none()).map(strip_directives).collect()));
    }
    let mut out: Vec<Value> = cur.to_vec();
    for item in new {
        let id = item.get(key);
        let pos = id.and_then(|id| out.iter().position(|c| c.get(key) == Some(id)));
        let is_delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, is_delete) {
            (Some(i), true) => {
                out.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => out[i] = strategic(&out[i], item, field)?,
            (None, false) => out.push(strip_directives(item)),
        }
    }
    if let Some(order) = order.and_then(Value::as_array) {
        let rank = |v: &Value| order.iter().position(|o| o.get(key) == v.get(key)).unwrap_or(usize::MAX);
        out.sort_by_key(rank);
    }
    Ok(Value::Array(out))
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter().filter(|(k, _)| !k.starts_with('$')).map(|(k, v)| (k.clone(), strip_directives(v))).collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        v => v.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merges_by_key_and_deletes_null() {
        let doc = json!({"data": {"a": "1", "old": "x"}, "spec": {"containers": [{"name": "a", "image": "i1"}, {"name": "b", "image": "i2"}]}});
        let patch = json!({"data": {"a": "2", "old": null}, "spec": {"containers": [{"name": "b", "image": "i3"}, {"name": "c", "image": "i4"}]}});
        let out = apply(PatchType::Strategic, &doc, &patch).unwrap();
        assert_eq!(out["data"], json!({"a": "2"}));
        let names: Vec<_> = out["spec"]["containers"].as_array().unwrap().iter().map(|c| c["image"].clone()).collect();
        assert_eq!(names, vec![json!("i1"), json!("i3"), json!("i4")]);
        let del = json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}]}});
        let out = apply(PatchType::Strategic, &out, &del).unwrap();
        assert_eq!(out["spec"]["containers"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn merge_and_json_patch() {
        let doc = json!({"metadata": {"labels": {"a": "1"}}});
        let out = apply(PatchType::Merge, &doc, &json!({"metadata": {"labels": {"a": null, "b": "2"}}})).unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"b": "2"}));
        let out =
            apply(PatchType::Json, &doc, &json!([{"op": "add", "path": "/metadata/labels/c", "value": "3"}])).unwrap();
        assert_eq!(out["metadata"]["labels"]["c"], "3");
        assert!(apply(PatchType::Json, &doc, &json!([{"op": "remove", "path": "/nope"}])).is_err());
    }
}
