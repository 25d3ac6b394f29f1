//! What the fuzz targets drive (`fuzz/`, run with `cargo +nightly fuzz run <target>`),
//! one function per target: each takes arbitrary bytes and must return, never panic,
//! never hang. The unit tests below run every target over seeds and a few thousand
//! mutations of them on stable Rust, so CI keeps them honest between fuzzing runs.

use std::sync::OnceLock;

use serde_json::{Value, json};

use crate::api::patch::{self, PatchType};
use crate::api::selectors::{FieldSelector, LabelSelector};
use crate::server::apiserver::request;

/// Object bodies: JSON (with duplicate-key detection), YAML and Kubernetes protobuf.
pub fn decode(data: &[u8]) {
    for ct in ["application/json", "application/yaml", crate::api::protobuf::MEDIA_TYPE] {
        if let Ok((v, _)) = request::decode_object(ct, data) {
            // What is decoded must encode again, and validate without panicking.
            let _ = serde_json::to_vec(&v);
            let _ = crate::api::validation::metadata_causes(&v);
        }
    }
}

fn pod() -> &'static Value {
    static POD: OnceLock<Value> = OnceLock::new();
    POD.get_or_init(|| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a": "b"}},
               "spec": {"containers": [{"name": "c", "image": "x", "env": [{"name": "E", "value": "1"}],
                                        "ports": [{"containerPort": 80}]}],
                        "volumes": [{"name": "v", "emptyDir": {}}], "finalizers": ["x", "y"]}})
    })
}

/// The patch engines: the first byte picks JSON, merge, strategic merge or apply; the
/// rest is the patch (applied to a pod), or `doc NUL patch`.
pub fn patch(data: &[u8]) {
    let Some((&kind, rest)) = data.split_first() else { return };
    let pt = match kind % 4 {
        0 => PatchType::Json,
        1 => PatchType::Merge,
        2 => PatchType::Strategic,
        _ => PatchType::Apply,
    };
    let (doc, body) = match rest.iter().position(|b| *b == 0) {
        Some(i) => match serde_json::from_slice::<Value>(&rest[..i]) {
            Ok(d) => (d, &rest[i + 1..]),
            Err(_) => return,
        },
        None => (pod().clone(), rest),
    };
    let parsed: Option<Value> =
        if pt == PatchType::Apply { serde_norway::from_slice(body).ok() } else { serde_json::from_slice(body).ok() };
    if let Some(p) = parsed {
        let _ = patch::apply(pt, &doc, &p);
    }
}

/// Label and field selectors, in their string and LabelSelector (JSON) forms.
pub fn selectors(data: &[u8]) {
    let obj = pod();
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(l) = LabelSelector::parse(s) {
            let _ = l.matches_object(obj);
        }
        if let Ok(f) = FieldSelector::parse(s, &["metadata.name", "metadata.namespace", "spec.nodeName"]) {
            let _ = f.matches(obj);
            let _ = f.exact_name();
        }
    }
    if let Ok(v) = serde_json::from_slice::<Value>(data) {
        if let Ok(l) = LabelSelector::from_label_selector(&v) {
            let _ = l.matches_object(obj);
        }
        let _ = crate::api::selectors::selector_string(&v);
    }
}

/// Quantities (`500m`, `1Gi`, `1e3`) and what is computed from them: quota usage,
/// LimitRange checks, the QoS class.
pub fn quantity(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Some(q) = crate::server::scheduler::parse_quantity(s) {
        let _ = crate::api::quota::format("memory", q);
        let _ = crate::api::quota::format("cpu", q);
    }
    let _ = crate::quantity_invalid(s);
    let ranges = [json!({"spec": {"limits": [
        {"type": "Container", "min": {"cpu": s}, "max": {"memory": s}, "maxLimitRequestRatio": {"cpu": s}},
        {"type": "Pod", "max": {"cpu": s}}, {"type": "PersistentVolumeClaim", "max": {"storage": s}}]}})];
    let mut p = json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": s, "memory": s},
                                                                          "limits": {"cpu": "1", "memory": s}}}]}});
    let _ = crate::api::limitrange::admit_pod(&ranges, &mut p);
    let _ = crate::api::limitrange::admit_claim(&ranges, &json!({"spec": {"resources": {"requests": {"storage": s}}}}));
    let _ = crate::api::defaults::qos_class(&p["spec"]);
}

fn signer() -> &'static crate::server::auth::token::Signer {
    static SIGNER: OnceLock<crate::server::auth::token::Signer> = OnceLock::new();
    SIGNER.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("rk-fuzz-{}.key", std::process::id()));
        let s =
            crate::server::auth::token::Signer::load_or_create(&path, "https://kubernetes.default.svc.cluster.local")
                .expect("a signing key");
        let _ = std::fs::remove_file(path);
        s
    })
}

/// Bearer tokens: service-account JWTs (verified against a key), bootstrap tokens,
/// join tokens.
pub fn token(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let _ = crate::server::auth::token::looks_like_jwt(s);
    let _ = signer().verify(s, &["https://kubernetes.default.svc.cluster.local".to_string()]);
    let _ = crate::server::auth::bootstrap::parse(s);
    let _ = crate::server::apiserver::join_token_secret(s);
    let _ = crate::agent::join::token_ca_hash(s);
}

/// The URL router: a path (and `?query`) routed and turned into authorization
/// attributes for every method.
pub fn route(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let (path, query) = s.split_once('?').unwrap_or((s, ""));
    crate::server::apiserver::fuzz_route(path, query);
}

/// The targets, by name (as `fuzz/fuzz_targets/<name>.rs` calls them).
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("decode", decode),
    ("patch", patch),
    ("selectors", selectors),
    ("quantity", quantity),
    ("token", token),
    ("route", route),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Seeds per target: what real clients send, and the edges.
    fn seeds(name: &str) -> Vec<Vec<u8>> {
        let s = |v: &[&str]| v.iter().map(|x| x.as_bytes().to_vec()).collect::<Vec<_>>();
        match name {
            "decode" => s(&[
                r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a","labels":{"x":"y"}},"data":{"k":"v"}}"#,
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: c\n    image: x\n",
                "a: &a [1]\nb: *a\n",
                r#"{"a":1,"a":2}"#,
            ]),
            "patch" => s(&[
                "\u{0}[{\"op\":\"add\",\"path\":\"/metadata/labels/x\",\"value\":\"y\"},{\"op\":\"remove\",\"path\":\"/spec/volumes/0\"}]",
                "\u{1}{\"metadata\":{\"labels\":{\"a\":null}}}",
                "\u{2}{\"spec\":{\"containers\":[{\"name\":\"c\",\"image\":\"y\"}],\"$setElementOrder/containers\":[{\"name\":\"c\"}]}}",
                "\u{2}{\"spec\":{\"volumes\":[{\"$patch\":\"delete\",\"name\":\"v\"}],\"$deleteFromPrimitiveList/finalizers\":[\"x\"]}}",
                "\u{3}apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n",
            ]),
            "selectors" => s(&[
                "a=b,c!=d",
                "x in (a,b),!y",
                "env notin (prod)",
                "metadata.name=p",
                r#"{"matchExpressions":[{"key":"a","operator":"In","values":["b"]}]}"#,
            ]),
            "quantity" => s(&["500m", "1Gi", "1.5", "1e3", "2Ki", "-1", "0.0001m", "9999999999999999999999E"]),
            "token" => s(&[
                "abcdef.0123456789abcdef",
                "K10abc::server:secret",
                "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
                "a.b.c",
            ]),
            _ => s(&[
                "/api/v1/namespaces/default/pods/p/log?follow=true",
                "/apis/apps/v1/namespaces/d/deployments/x/scale",
                "/api/v1/nodes/n1/proxy/metrics",
                "/apis/rbac.authorization.k8s.io/v1/clusterroles?watch=1",
                "/openapi/v3/apis/apps/v1?hash=x",
            ]),
        }
    }

    /// A tiny deterministic mutator (xorshift): flips, inserts, deletes, repeats
    /// and splices bytes.
    fn mutate(seed: &[u8], rng: &mut u64, pool: &[Vec<u8>]) -> Vec<u8> {
        let mut next = || {
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            *rng
        };
        let mut v = seed.to_vec();
        for _ in 0..1 + next() % 4 {
            let at = if v.is_empty() { 0 } else { (next() as usize) % v.len() };
            match next() % 6 {
                0 if !v.is_empty() => v[at] ^= 1 << (next() % 8),
                1 => v.insert(at, next() as u8),
                2 if !v.is_empty() => {
                    v.remove(at);
                }
                3 => {
                    let b = b"{}[]()\",:=!.-*&\n ".get((next() as usize) % 18).copied().unwrap_or(b'x');
                    v.insert(at, b);
                }
                4 if !v.is_empty() => {
                    let end = (at + 1 + (next() as usize) % 16).min(v.len());
                    let chunk = v[at..end].to_vec();
                    v.splice(at..at, chunk);
                }
                _ => {
                    let other = &pool[(next() as usize) % pool.len()];
                    let cut = if other.is_empty() { 0 } else { (next() as usize) % other.len() };
                    v.truncate(at);
                    v.extend_from_slice(&other[cut..]);
                }
            }
        }
        v
    }

    #[test]
    fn every_target_survives_seeds_and_mutations() {
        for (name, f) in TARGETS {
            let pool = seeds(name);
            let mut rng = 0x9E37_79B9_7F4A_7C15u64;
            for s in &pool {
                f(s);
            }
            for i in 0..3000 {
                let input = mutate(&pool[i % pool.len()], &mut rng, &pool);
                f(&input);
            }
        }
    }
}
