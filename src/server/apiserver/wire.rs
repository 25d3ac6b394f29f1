//! The stored form of objects and the zero-parse read path.
//!
//! Objects are stored as compact JSON with the top-level keys `apiVersion`, `kind`,
//! `metadata` first and no `resourceVersion` (the store's revision is it). Because the
//! only keys before `metadata` hold plain strings, the first `"metadata":{` in the bytes
//! is the top-level one, so GET, LIST and watch can splice the resourceVersion in
//! without parsing the object.

use serde_json::{Map, Value};

/// Encodes an object for storage: canonical key order, resourceVersion removed.
pub fn encode(obj: &Value) -> Vec<u8> {
    let Some(o) = obj.as_object() else { return serde_json::to_vec(obj).expect("JSON values serialise") };
    let mut m = Map::with_capacity(o.len());
    for k in ["apiVersion", "kind", "metadata"] {
        if let Some(v) = o.get(k) {
            m.insert(k.to_string(), v.clone());
        }
    }
    if let Some(md) = m.get_mut("metadata").and_then(Value::as_object_mut) {
        md.remove("resourceVersion");
    }
    for (k, v) in o {
        if !matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            m.insert(k.clone(), v.clone());
        }
    }
    serde_json::to_vec(&Value::Object(m)).expect("JSON values serialise")
}

const META: &[u8] = b"\"metadata\":{";

/// Where the top-level metadata object opens (just past its `{`), if the bytes are in
/// the canonical form.
fn metadata_open(stored: &[u8]) -> Option<usize> {
    let at = stored.windows(META.len()).position(|w| w == META)?;
    // Only `{"apiVersion":"…","kind":"…",` may come before it: no nested object.
    if stored.first() != Some(&b'{') || stored[1..at].contains(&b'{') || stored[1..at].contains(&b'[') {
        return None;
    }
    Some(at + META.len())
}

fn rv_field(rev: i64, more: bool) -> String {
    format!("\"resourceVersion\":\"{rev}\"{}", if more { "," } else { "" })
}

/// The stored object with its resourceVersion, or None if not in canonical form.
pub fn with_rv(stored: &[u8], rev: i64) -> Option<Vec<u8>> {
    let open = metadata_open(stored)?;
    let more = stored.get(open) != Some(&b'}');
    let mut out = Vec::with_capacity(stored.len() + 32);
    out.extend_from_slice(&stored[..open]);
    out.extend_from_slice(rv_field(rev, more).as_bytes());
    out.extend_from_slice(&stored[open..]);
    Some(out)
}

/// As [`with_rv`], but without `apiVersion` and `kind`, as list items are served.
pub fn list_item(stored: &[u8], rev: i64, out: &mut Vec<u8>) -> bool {
    let Some(open) = metadata_open(stored) else { return false };
    let more = stored.get(open) != Some(&b'}');
    out.push(b'{');
    out.extend_from_slice(META);
    out.extend_from_slice(rv_field(rev, more).as_bytes());
    out.extend_from_slice(&stored[open..]);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn splices_resource_version() {
        let obj = json!({"data": {"metadata": "x"}, "kind": "ConfigMap", "metadata": {"name": "a", "resourceVersion": "9"}, "apiVersion": "v1"});
        let stored = encode(&obj);
        assert!(stored.starts_with(br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a"}"#));
        let v: Value = serde_json::from_slice(&with_rv(&stored, 42).unwrap()).unwrap();
        assert_eq!(v["metadata"], json!({"resourceVersion": "42", "name": "a"}));
        assert_eq!(v["data"]["metadata"], "x");
        let mut item = Vec::new();
        assert!(list_item(&stored, 7, &mut item));
        let v: Value = serde_json::from_slice(&item).unwrap();
        assert_eq!(v, json!({"metadata": {"resourceVersion": "7", "name": "a"}, "data": {"metadata": "x"}}));
        let empty = encode(&json!({"apiVersion": "v1", "kind": "X", "metadata": {}}));
        let v: Value = serde_json::from_slice(&with_rv(&empty, 1).unwrap()).unwrap();
        assert_eq!(v["metadata"], json!({"resourceVersion": "1"}));
        assert!(with_rv(br#"{"spec":{"metadata":{}}}"#, 1).is_none(), "non-canonical bytes are refused");
    }
}
