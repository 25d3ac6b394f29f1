//! Discovery (`/api`, `/apis`, per group-version, and the aggregated v2 format),
//! `/version`, and the OpenAPI v3 documents kubectl needs to validate and patch.

use std::sync::OnceLock;

use http::{HeaderMap, HeaderValue, header};
use serde_json::{Value, json};
use sha2::Digest;

use super::request::{Resp, bytes_response, json};
use crate::api::registry::{ALL_VERBS, Registry, ResourceDef};

/// The Kubernetes version rk serves (k8s-openapi's `v1_33` types). kubectl's version
/// dispatcher on these machines picks its client by this minor.
pub const KUBE_MAJOR: &str = "1";
/// See [`KUBE_MAJOR`].
pub const KUBE_MINOR: &str = "33";

/// `/version`.
pub fn version() -> Value {
    json!({
        "major": KUBE_MAJOR,
        "minor": KUBE_MINOR,
        "emulationMajor": KUBE_MAJOR,
        "emulationMinor": KUBE_MINOR,
        "gitVersion": format!("v{KUBE_MAJOR}.{KUBE_MINOR}.0+rk.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": option_env!("RK_GIT_COMMIT").unwrap_or("unknown"),
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "n/a (rust)",
        "compiler": "rustc",
        "platform": format!("linux/{}", match std::env::consts::ARCH { "x86_64" => "amd64", "aarch64" => "arm64", a => a }),
    })
}

/// The group, version and kind a subresource answers with.
fn subresource_kind(d: &ResourceDef, sub: &str) -> (&'static str, &'static str, &'static str) {
    match sub {
        "scale" => ("autoscaling", "v1", "Scale"),
        "binding" => ("", "v1", "Binding"),
        "eviction" => ("policy", "v1", "Eviction"),
        "token" => ("authentication.k8s.io", "v1", "TokenRequest"),
        _ => (d.group, d.version, d.kind),
    }
}

/// The verbs a subresource answers.
fn subresource_verbs(sub: &str) -> &'static [&'static str] {
    match sub {
        "binding" | "eviction" | "token" => &["create"],
        _ => &["get", "patch", "update"],
    }
}

fn resource_entry(d: &ResourceDef) -> Vec<Value> {
    let mut out = vec![json!({
        "name": d.plural, "singularName": d.singular, "namespaced": d.namespaced, "kind": d.kind,
        "verbs": ALL_VERBS, "shortNames": d.short_names, "categories": d.categories,
    })];
    for sub in d.subresources() {
        let (group, version, kind) = subresource_kind(d, sub);
        let mut e = json!({
            "name": format!("{}/{sub}", d.plural), "singularName": "", "namespaced": d.namespaced,
            "kind": kind, "verbs": subresource_verbs(sub),
        });
        if group != d.group || version != d.version {
            e["group"] = json!(group);
            e["version"] = json!(version);
        }
        out.push(e);
    }
    for v in &mut out {
        let o = v.as_object_mut().expect("object");
        o.retain(|_, v| !(v.as_array().is_some_and(Vec::is_empty)));
    }
    out
}

/// `/api`.
pub fn api_versions(server_addr: &str) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"],
           "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_addr}]})
}

fn group_entry(name: &str, versions: &[&str]) -> Value {
    let gvs: Vec<Value> =
        versions.iter().map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v})).collect();
    json!({"name": name, "versions": gvs, "preferredVersion": gvs[0]})
}

/// The served groups and their versions, the review APIs' groups included.
fn all_groups(reg: &Registry) -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out = reg.groups();
    for d in crate::api::registry::reviews() {
        if !out.iter().any(|(x, _)| *x == d.group) {
            out.push((d.group, vec![d.version]));
        }
    }
    out
}

/// The review kinds of a group-version (create only, never stored).
fn reviews_in<'a>(group: &'a str, version: &'a str) -> impl Iterator<Item = &'static ResourceDef> + 'a {
    crate::api::registry::reviews().iter().filter(move |d| d.group == group && d.version == version)
}

/// `/apis`.
pub fn api_groups(reg: &Registry) -> Value {
    let groups: Vec<Value> =
        all_groups(reg).into_iter().filter(|(g, _)| !g.is_empty()).map(|(g, vs)| group_entry(g, &vs)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`.
pub fn api_group(reg: &Registry, group: &str) -> Option<Value> {
    let (g, vs) = all_groups(reg).into_iter().find(|(g, _)| *g == group && !g.is_empty())?;
    let mut v = group_entry(g, &vs);
    v["kind"] = json!("APIGroup");
    v["apiVersion"] = json!("v1");
    Some(v)
}

/// `/api/v1`, `/apis/<group>/<version>`.
pub fn resource_list(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let mut resources: Vec<Value> = reg.in_group_version(group, version).flat_map(resource_entry).collect();
    resources.extend(reviews_in(group, version).map(|d| {
        json!({"name": d.plural, "singularName": "", "namespaced": d.namespaced, "kind": d.kind, "verbs": ["create"]})
    }));
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}))
}

/// Which aggregated discovery version the client accepts, if any.
pub fn aggregated_version(headers: &HeaderMap) -> Option<&'static str> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok())?;
    let mut best = None;
    for part in accept.split(',') {
        let params: Vec<&str> = part.split(';').map(str::trim).collect();
        if params.contains(&"as=APIGroupDiscoveryList") && params.contains(&"g=apidiscovery.k8s.io") {
            if params.contains(&"v=v2") {
                return Some("v2");
            }
            if params.contains(&"v=v2beta1") {
                best = Some("v2beta1");
            }
        }
    }
    best
}

/// The aggregated discovery document for `/api` (core) or `/apis` (groups).
pub fn aggregated(reg: &Registry, core: bool, ver: &str) -> Resp {
    let items: Vec<Value> = all_groups(reg)
        .into_iter()
        .filter(|(g, _)| g.is_empty() == core)
        .map(|(g, vs)| {
            let versions: Vec<Value> = vs
                .iter()
                .map(|v| {
                    let reviews = reviews_in(g, v).map(|d| {
                        json!({"resource": d.plural, "singularResource": "",
                               "scope": if d.namespaced { "Namespaced" } else { "Cluster" },
                               "responseKind": {"group": d.group, "version": d.version, "kind": d.kind},
                               "verbs": ["create"]})
                    });
                    let resources: Vec<Value> = reg
                        .in_group_version(g, v)
                        .map(|d| {
                            let subs: Vec<Value> = d
                                .subresources()
                                .into_iter()
                                .map(|s| {
                                    let (group, version, kind) = subresource_kind(d, s);
                                    json!({"subresource": s,
                                           "responseKind": {"group": group, "version": version, "kind": kind},
                                           "verbs": subresource_verbs(s)})
                                })
                                .collect();
                            let mut r = json!({
                                "resource": d.plural, "singularResource": d.singular,
                                "scope": if d.namespaced { "Namespaced" } else { "Cluster" },
                                "responseKind": {"group": d.group, "version": d.version, "kind": d.kind},
                                "verbs": ALL_VERBS,
                            });
                            if !d.short_names.is_empty() {
                                r["shortNames"] = json!(d.short_names);
                            }
                            if !d.categories.is_empty() {
                                r["categories"] = json!(d.categories);
                            }
                            if !subs.is_empty() {
                                r["subresources"] = json!(subs);
                            }
                            r
                        })
                        .chain(reviews)
                        .collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            json!({"metadata": {"name": g}, "versions": versions})
        })
        .collect();
    let body = json!({"kind": "APIGroupDiscoveryList", "apiVersion": format!("apidiscovery.k8s.io/{ver}"),
                      "metadata": {}, "items": items});
    let mut r = json(200, &body);
    let ct = format!("application/json;g=apidiscovery.k8s.io;v={ver};as=APIGroupDiscoveryList");
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_str(&ct).expect("valid header"));
    r.headers_mut().insert(header::VARY, HeaderValue::from_static("Accept"));
    r
}

/// OpenAPI v3: the index and one document per group-version. Documents (with their
/// schemas, several MB in all) are made when asked for and not kept; only their hashes
/// are, from one pass when the index is first asked for.
pub struct OpenApi {
    index: Value,
    docs: Vec<(String, String, &'static str, &'static str)>,
}

fn hash_of(body: &[u8]) -> String {
    sha2::Sha512::digest(body).iter().take(32).map(|b| format!("{b:02X}")).collect()
}

/// The hash of a custom group-version's document, from what the document is made of
/// (its kinds and their CRD schemas; the rest is fixed for a build), so the index need
/// not build the documents.
fn custom_hash(reg: &Registry, group: &str, version: &str) -> String {
    let parts: Vec<Value> = reg
        .in_group_version(group, version)
        .map(|d| json!([d.kind, d.plural, d.namespaced, d.custom.as_ref().map(|c| &c.schema)]))
        .collect();
    let seed = format!("{}{}", env!("CARGO_PKG_VERSION"), Value::Array(parts));
    hash_of(seed.as_bytes())
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") }
}

fn gv_doc(reg: &Registry, group: &str, version: &str) -> Value {
    let mut paths = serde_json::Map::new();
    for d in reg.in_group_version(group, version) {
        let base = format!("/{}", gv_path(group, version));
        let item = if d.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", d.plural)
        } else {
            format!("{base}/{}/{{name}}", d.plural)
        };
        let gvk = json!({"group": group, "version": version, "kind": d.kind});
        // Strategic merge patch is served but left out here: kubectl then computes its
        // client-side apply patches from its own compiled-in types, exactly as against
        // Kubernetes, instead of from patch metadata these schemas do not carry.
        let media: Value =
            ["application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml"]
                .iter()
                .map(|m| (m.to_string(), json!({"schema": {"type": "object"}})))
                .collect::<serde_json::Map<_, _>>()
                .into();
        let params = json!([
            {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}},
        ]);
        paths.insert(
            item,
            json!({"patch": {
                "description": format!("partially update the specified {}", d.kind),
                "operationId": format!("patch{}", d.kind),
                "parameters": params,
                "requestBody": {"content": media, "required": true},
                "responses": {"200": {"description": "OK"}, "201": {"description": "Created"}},
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": gvk,
            }}),
        );
    }
    let mut kinds: Vec<&ResourceDef> = reg.in_group_version(group, version).collect();
    // The review kinds have no PATCH; their schemas are there for kubectl's validation.
    kinds.extend(reviews_in(group, version));
    let schemas = if kinds.iter().any(|d| d.custom.is_some()) {
        crate::api::schema::custom_openapi_schemas(&kinds)
    } else {
        crate::api::schema::openapi_schemas(&kinds)
    };
    json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": format!("v{KUBE_MAJOR}.{KUBE_MINOR}.0")},
           "paths": paths, "components": {"schemas": schemas}})
}

impl OpenApi {
    /// The documents for the built-in registry.
    pub fn get() -> &'static OpenApi {
        static O: OnceLock<OpenApi> = OnceLock::new();
        O.get_or_init(|| {
            let reg = Registry::builtin();
            let mut index = serde_json::Map::new();
            let mut docs = Vec::new();
            for (g, vs) in all_groups(reg) {
                for v in vs {
                    let body = serde_json::to_vec(&gv_doc(reg, g, v)).expect("serialisable");
                    let p = gv_path(g, v);
                    let hash = hash_of(&body);
                    index.insert(p.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash}")}));
                    docs.push((p, hash, g, v));
                }
            }
            OpenApi { index: json!({"paths": index}), docs }
        })
    }

    /// `/openapi/v3`: the built-in group-versions and those of custom resources.
    pub fn index(&self, reg: &Registry) -> Resp {
        let mut index = self.index.clone();
        for (g, vs) in reg.groups() {
            for v in vs {
                let p = gv_path(g, v);
                if index["paths"].get(&p).is_some() {
                    continue;
                }
                let url = format!("/openapi/v3/{p}?hash={}", custom_hash(reg, g, v));
                index["paths"][p] = json!({"serverRelativeURL": url});
            }
        }
        json(200, &index)
    }

    /// `/openapi/v3/<gv path>` of a custom resource's group-version.
    pub fn custom_doc(&self, reg: &Registry, path: &str, hash: Option<&str>) -> Option<Resp> {
        let (g, v) = reg
            .groups()
            .into_iter()
            .find_map(|(g, vs)| vs.into_iter().find(|v| gv_path(g, v) == path).map(|v| (g, v)))?;
        let h = custom_hash(reg, g, v);
        if hash.is_some_and(|asked| asked != h) {
            return Some(Self::answer(path, &h, hash, vec![]));
        }
        let body = serde_json::to_vec(&gv_doc(reg, g, v)).expect("serialisable");
        Some(Self::answer(path, &h, hash, body))
    }

    /// `/openapi/v3/<gv path>`, redirecting a stale `hash` as Kubernetes does.
    pub fn doc(&self, path: &str, hash: Option<&str>) -> Option<Resp> {
        let (p, h, g, v) = self.docs.iter().find(|(p, ..)| p == path)?;
        if hash.is_some_and(|asked| asked != h) {
            return Some(Self::answer(p, h, hash, vec![]));
        }
        let body = serde_json::to_vec(&gv_doc(Registry::builtin(), g, v)).expect("serialisable");
        Some(Self::answer(p, h, hash, body))
    }

    /// A document, or a redirect to its current hash.
    fn answer(p: &str, h: &str, hash: Option<&str>, body: Vec<u8>) -> Resp {
        if let Some(asked) = hash
            && asked != h
        {
            let mut r = bytes_response(301, "text/plain", bytes::Bytes::new());
            let loc = format!("/openapi/v3/{p}?hash={h}");
            r.headers_mut().insert(header::LOCATION, HeaderValue::from_str(&loc).expect("valid header"));
            return r;
        }
        let mut r = bytes_response(200, "application/json", bytes::Bytes::from(body));
        if hash.is_some() {
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, immutable"));
        }
        r.headers_mut().insert(header::ETAG, HeaderValue::from_str(&format!("\"{h}\"")).expect("valid header"));
        r
    }
}

/// The protobuf form of `/openapi/v2` kubectl asks for.
const OPENAPI_V2_PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// `/openapi/v2` as kubectl reads it: a gnostic `openapi.v2.Document` (swagger,
/// info, empty paths, and the definitions of [`openapi_v2`]'s JSON), so `kubectl
/// explain --output=plaintext-openapiv2` and the v2 fallbacks of `kubectl apply`
/// find the kinds.
mod v2_protobuf {
    use serde_json::Value;

    fn key(out: &mut Vec<u8>, tag: u32, wire: u8) {
        varint(out, u64::from(tag << 3 | u32::from(wire)));
    }

    fn varint(out: &mut Vec<u8>, mut n: u64) {
        while n >= 0x80 {
            out.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }

    pub fn bytes(out: &mut Vec<u8>, tag: u32, b: &[u8]) {
        key(out, tag, 2);
        varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }

    fn int(out: &mut Vec<u8>, tag: u32, n: u64) {
        key(out, tag, 0);
        varint(out, n);
    }

    fn double(out: &mut Vec<u8>, tag: u32, x: f64) {
        key(out, tag, 1);
        out.extend_from_slice(&x.to_le_bytes());
    }

    /// An `Any` holding a value as YAML (JSON is YAML).
    fn any(out: &mut Vec<u8>, tag: u32, v: &Value) {
        let mut a = Vec::new();
        bytes(&mut a, 2, v.to_string().as_bytes());
        bytes(out, tag, &a);
    }

    fn named(name: &str, value: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut n = Vec::new();
        bytes(&mut n, 1, name.as_bytes());
        value(&mut n);
        n
    }

    /// A JSON schema as an `openapi.v2.Schema`.
    pub fn schema(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, x) in v.as_object().into_iter().flatten() {
            match (k.as_str(), x) {
                ("$ref", Value::String(s)) => bytes(&mut out, 1, s.as_bytes()),
                ("format", Value::String(s)) => bytes(&mut out, 2, s.as_bytes()),
                ("title", Value::String(s)) => bytes(&mut out, 3, s.as_bytes()),
                ("description", Value::String(s)) => bytes(&mut out, 4, s.as_bytes()),
                ("default", x) => any(&mut out, 5, x),
                ("multipleOf", Value::Number(n)) => double(&mut out, 6, n.as_f64().unwrap_or(0.0)),
                ("maximum", Value::Number(n)) => double(&mut out, 7, n.as_f64().unwrap_or(0.0)),
                ("exclusiveMaximum", Value::Bool(b)) => int(&mut out, 8, u64::from(*b)),
                ("minimum", Value::Number(n)) => double(&mut out, 9, n.as_f64().unwrap_or(0.0)),
                ("exclusiveMinimum", Value::Bool(b)) => int(&mut out, 10, u64::from(*b)),
                ("maxLength", Value::Number(n)) => int(&mut out, 11, n.as_u64().unwrap_or(0)),
                ("minLength", Value::Number(n)) => int(&mut out, 12, n.as_u64().unwrap_or(0)),
                ("pattern", Value::String(s)) => bytes(&mut out, 13, s.as_bytes()),
                ("maxItems", Value::Number(n)) => int(&mut out, 14, n.as_u64().unwrap_or(0)),
                ("minItems", Value::Number(n)) => int(&mut out, 15, n.as_u64().unwrap_or(0)),
                ("uniqueItems", Value::Bool(b)) => int(&mut out, 16, u64::from(*b)),
                ("maxProperties", Value::Number(n)) => int(&mut out, 17, n.as_u64().unwrap_or(0)),
                ("minProperties", Value::Number(n)) => int(&mut out, 18, n.as_u64().unwrap_or(0)),
                ("required", Value::Array(a)) => {
                    for r in a.iter().filter_map(Value::as_str) {
                        bytes(&mut out, 19, r.as_bytes());
                    }
                }
                ("enum", Value::Array(a)) => a.iter().for_each(|e| any(&mut out, 20, e)),
                ("additionalProperties", x) => {
                    let mut item = Vec::new();
                    match x {
                        Value::Bool(b) => int(&mut item, 2, u64::from(*b)),
                        x => bytes(&mut item, 1, &schema(x)),
                    }
                    bytes(&mut out, 21, &item);
                }
                ("type", x) => {
                    let mut t = Vec::new();
                    let types: Vec<&str> = match x {
                        Value::String(s) => vec![s.as_str()],
                        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                        _ => vec![],
                    };
                    types.iter().for_each(|ty| bytes(&mut t, 1, ty.as_bytes()));
                    bytes(&mut out, 22, &t);
                }
                ("items", x) => {
                    let mut items = Vec::new();
                    match x {
                        Value::Array(a) => a.iter().for_each(|i| bytes(&mut items, 1, &schema(i))),
                        x => bytes(&mut items, 1, &schema(x)),
                    }
                    bytes(&mut out, 23, &items);
                }
                ("allOf", Value::Array(a)) => a.iter().for_each(|i| bytes(&mut out, 24, &schema(i))),
                ("properties", Value::Object(m)) => {
                    let mut props = Vec::new();
                    for (name, p) in m {
                        bytes(&mut props, 1, &named(name, |n| bytes(n, 2, &schema(p))));
                    }
                    bytes(&mut out, 25, &props);
                }
                ("readOnly", Value::Bool(b)) => int(&mut out, 27, u64::from(*b)),
                ("example", x) => any(&mut out, 30, x),
                (k, x) if k.starts_with("x-") => {
                    bytes(&mut out, 31, &named(k, |n| any(n, 2, x)));
                }
                _ => {}
            }
        }
        out
    }

    /// The whole document.
    pub fn document(version: &str, definitions: &serde_json::Map<String, Value>) -> Vec<u8> {
        let mut info = Vec::new();
        bytes(&mut info, 1, b"Kubernetes");
        bytes(&mut info, 2, version.as_bytes());
        let mut defs = Vec::new();
        for (name, sc) in definitions {
            bytes(&mut defs, 1, &named(name, |n| bytes(n, 2, &schema(sc))));
        }
        let mut doc = Vec::new();
        bytes(&mut doc, 1, b"2.0");
        bytes(&mut doc, 2, &info);
        bytes(&mut doc, 8, &[]);
        bytes(&mut doc, 9, &defs);
        doc
    }
}

/// Swagger 2.0's form of references: `#/definitions/<name>` for OpenAPI 3's
/// `#/components/schemas/<name>`, and a described reference as `{"$ref",
/// "description"}` where OpenAPI 3 wraps it in `allOf` (kubectl's v2 reader follows
/// only the former).
fn v2_refs(v: &mut Value) {
    match v {
        Value::Object(m) => {
            let single =
                m.get("allOf").and_then(Value::as_array).filter(|a| a.len() == 1).and_then(|a| a[0].get("$ref"));
            if let Some(r) = single.cloned() {
                m.remove("allOf");
                m.insert("$ref".into(), r);
            }
            if let Some(Value::String(r)) = m.get_mut("$ref")
                && let Some(name) = r.strip_prefix("#/components/schemas/")
            {
                *r = format!("#/definitions/{name}");
            }
            m.values_mut().for_each(v2_refs);
        }
        Value::Array(a) => a.iter_mut().for_each(v2_refs),
        _ => {}
    }
}

/// The last `/openapi/v2` made, with the definitions it was made from (the served
/// custom resources' addresses): both forms are made once per set of CRDs.
static V2_CACHE: std::sync::Mutex<Option<(Vec<usize>, bytes::Bytes, bytes::Bytes)>> = std::sync::Mutex::new(None);

/// `/openapi/v2`: Swagger 2.0 definitions of every kind, built-in and custom, as JSON
/// or in the protobuf form kubectl asks for. (kubectl reads v3 for everything it can,
/// and v2 for `explain --output=plaintext-openapiv2` and what v3 cannot say, such as
/// a `kind: List`.)
pub fn openapi_v2(reg: &Registry, headers: &HeaderMap) -> Result<Resp, crate::api::status::ApiError> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let protobuf = accept.contains("protobuf");
    if !protobuf && !accept.is_empty() && !accept.contains("json") && !accept.contains("*/*") {
        return Err(crate::api::status::ApiError::no_route());
    }
    let custom: Vec<&ResourceDef> = reg.all().iter().copied().filter(|d| d.custom.is_some()).collect();
    let made_from: Vec<usize> = custom.iter().map(|d| std::ptr::from_ref(*d) as usize).collect();
    let mut cache = V2_CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let (json_body, proto_body) = match &*cache {
        Some((from, j, p)) if *from == made_from => (j.clone(), p.clone()),
        _ => {
            let builtin: Vec<&ResourceDef> = reg.all().iter().copied().filter(|d| d.custom.is_none()).collect();
            let mut defs = crate::api::schema::openapi_schemas(&builtin);
            defs.extend(crate::api::schema::custom_openapi_schemas(&custom));
            let version = format!("v{KUBE_MAJOR}.{KUBE_MINOR}.0");
            let mut defs = Value::Object(defs);
            v2_refs(&mut defs);
            let Value::Object(defs) = defs else { unreachable!("an object stays one") };
            let proto = v2_protobuf::document(&version, &defs);
            let body = json!({
                "swagger": "2.0",
                "info": {"title": "Kubernetes", "version": version},
                "paths": {},
                "definitions": defs,
            })
            .to_string();
            let made = (bytes::Bytes::from(body), bytes::Bytes::from(proto));
            *cache = Some((made_from, made.0.clone(), made.1.clone()));
            made
        }
    };
    drop(cache);
    Ok(if protobuf {
        bytes_response(200, OPENAPI_V2_PROTOBUF, proto_body)
    } else {
        bytes_response(200, "application/json", json_body)
    })
}
