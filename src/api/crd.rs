//! CustomResourceDefinitions: checking a definition (names, versions, structural
//! schema), the resources it serves, and what its schema does to custom objects:
//! defaulting, pruning of unknown fields and validation, with Kubernetes's messages;
//! printer columns by JSONPath.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::meta::str_at as s;
use super::registry::ResourceDef;
use super::schema::{Ty, TyRef};
use super::status::Cause;

pub mod formats;
pub mod naming;

/// The finalizer that holds a CRD until its objects are gone.
pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

/// What a served version of a CRD adds to its [`ResourceDef`].
#[derive(Debug)]
pub struct Custom {
    /// The version's `openAPIV3Schema`.
    pub schema: Value,
    /// Its shape, for server-side apply.
    pub ty: TyRef,
    /// `additionalPrinterColumns` (Age when none are given).
    pub columns: Vec<Column>,
    /// The `scale` subresource's paths.
    pub scale: Option<ScalePaths>,
    /// The version objects are stored in.
    pub storage_version: &'static str,
    /// The CRD's `metadata.name`.
    pub crd: String,
}

/// One printer column.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub ty: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub json_path: String,
}

/// JSON paths of the scale subresource.
#[derive(Debug, Clone)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

fn untyped(v: &Value) -> Result<Value, String> {
    Ok(v.clone())
}

fn no_schema(_: &mut schemars::SchemaGenerator) -> String {
    String::new()
}

/// The resources a CRD serves under its accepted `names`, one per served version
/// (leaked: a definition lives as long as the process, and a changed CRD makes new
/// ones).
pub fn defs_of(crd: &Value, names: &Value) -> Vec<&'static ResourceDef> {
    let spec = &crd["spec"];
    let storage = spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["storage"] == json!(true))
        .map(|v| s(v, "/name"))
        .unwrap_or("");
    let storage = leak(storage);
    let strs = |p: &str| -> &'static [&'static str] {
        let v: Vec<&'static str> = names
            .pointer(p)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(leak)
            .collect();
        Box::leak(v.into_boxed_slice())
    };
    let (group, kind, plural) = (leak(s(spec, "/group")), leak(s(names, "/kind")), leak(s(names, "/plural")));
    let singular = match s(names, "/singular") {
        "" => kind.to_lowercase(),
        x => x.to_string(),
    };
    let (short_names, categories) = (strs("/shortNames"), strs("/categories"));
    let mut out = Vec::new();
    let mut versions: Vec<&Value> =
        spec["versions"].as_array().into_iter().flatten().filter(|v| v["served"] == json!(true)).collect();
    versions.sort_by_key(|v| version_rank(s(v, "/name")));
    for v in versions {
        let schema = v.pointer("/schema/openAPIV3Schema").cloned().unwrap_or(json!({"type": "object"}));
        let columns = match v.get("additionalPrinterColumns").and_then(Value::as_array) {
            Some(cols) => cols
                .iter()
                .map(|c| Column {
                    name: s(c, "/name").to_string(),
                    ty: s(c, "/type").to_string(),
                    format: s(c, "/format").to_string(),
                    description: s(c, "/description").to_string(),
                    priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                    json_path: s(c, "/jsonPath").to_string(),
                })
                .collect(),
            None => vec![Column {
                name: "Age".into(),
                ty: "date".into(),
                format: String::new(),
                description: String::new(),
                priority: 0,
                json_path: ".metadata.creationTimestamp".into(),
            }],
        };
        let scale = v.pointer("/subresources/scale").map(|sc| ScalePaths {
            spec_replicas: s(sc, "/specReplicasPath").to_string(),
            status_replicas: s(sc, "/statusReplicasPath").to_string(),
            label_selector: sc.get("labelSelectorPath").and_then(Value::as_str).map(str::to_string),
        });
        // Field selectors take the version's selectableFields, as `spec.color`.
        let selectable: Vec<&'static str> = v
            .get("selectableFields")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|f| f.get("jsonPath").and_then(Value::as_str))
            .map(|p| leak(p.trim_start_matches('.')))
            .collect();
        let selectable: &'static [&'static str] = Box::leak(selectable.into_boxed_slice());
        let custom = Custom {
            ty: root_ty(&schema),
            schema,
            columns,
            scale,
            storage_version: storage,
            crd: crate::api::meta::name(crd).to_string(),
        };
        out.push(&*Box::leak(Box::new(ResourceDef {
            group,
            version: leak(s(v, "/name")),
            kind,
            plural,
            singular: singular.clone(),
            namespaced: s(spec, "/scope") != "Cluster",
            short_names,
            categories,
            has_status: v.pointer("/subresources/status").is_some(),
            field_labels: selectable,
            roundtrip: untyped,
            schema: no_schema,
            custom: Some(Box::new(custom)),
        })));
    }
    out
}

/// Whether a CRD's status says `Established=True`.
pub fn is_established(crd: &Value) -> bool {
    crd.pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Established" && c["status"] == "True")
}

/// Kubernetes's version order (GA before beta before alpha, higher first, others last
/// by name): discovery's preferred version is the first.
fn version_rank(v: &str) -> (u8, std::cmp::Reverse<u64>, std::cmp::Reverse<u64>, String) {
    let parse = || -> Option<(u8, u64, u64)> {
        let rest = v.strip_prefix('v')?;
        let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let major: u64 = rest[..end].parse().ok()?;
        match &rest[end..] {
            "" => Some((0, major, 0)),
            t => {
                let (kind, n) =
                    if let Some(n) = t.strip_prefix("beta") { (1, n) } else { (2, t.strip_prefix("alpha")?) };
                Some((kind, major, n.parse().ok()?))
            }
        }
    };
    match parse() {
        Some((k, major, minor)) => (k, std::cmp::Reverse(major), std::cmp::Reverse(minor), String::new()),
        None => (3, std::cmp::Reverse(0), std::cmp::Reverse(0), v.to_string()),
    }
}

/// The shape of a custom object: its schema, with `metadata` as ObjectMeta.
fn root_ty(schema: &Value) -> TyRef {
    let mut root = super::schema::parse(schema, "");
    if let TyRef::Inline(t) = &root
        && let Ty::Struct(fields) = &**t
    {
        let mut f = fields.clone();
        f.insert("metadata".into(), TyRef::Named("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta".into()));
        root = TyRef::Inline(Arc::new(Ty::Struct(f)));
    }
    root
}

/// Kubernetes's defaults for a CRD: singular and listKind names, `None` conversion.
pub fn default_definition(crd: &mut Value) {
    let Some(spec) = crd.get_mut("spec").and_then(Value::as_object_mut) else { return };
    if let Some(names) = spec.get_mut("names").and_then(Value::as_object_mut) {
        let kind = names.get("kind").and_then(Value::as_str).unwrap_or("").to_string();
        if names.get("singular").and_then(Value::as_str).unwrap_or("").is_empty() && !kind.is_empty() {
            names.insert("singular".into(), json!(kind.to_lowercase()));
        }
        if names.get("listKind").and_then(Value::as_str).unwrap_or("").is_empty() && !kind.is_empty() {
            names.insert("listKind".into(), json!(format!("{kind}List")));
        }
    }
    spec.entry("conversion").or_insert_with(|| json!({"strategy": "None"}));
}

/// Problems of a CustomResourceDefinition, as 422 causes.
pub fn check_definition(crd: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    let spec = &crd["spec"];
    let group = s(spec, "/group");
    let plural = s(spec, "/names/plural");
    if group.is_empty() {
        out.push(Cause::required("spec.group", ""));
    } else if !group.contains('.') {
        out.push(Cause::invalid("spec.group", &json!(group), "should be a domain with at least one dot"));
    }
    for (f, v) in [("plural", plural), ("kind", s(spec, "/names/kind")), ("listKind", s(spec, "/names/listKind"))] {
        if v.is_empty() && f != "listKind" {
            out.push(Cause::required(format!("spec.names.{f}"), ""));
        }
    }
    if !plural.is_empty() && plural.chars().any(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')) {
        out.push(Cause::invalid(
            "spec.names.plural",
            &json!(plural),
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'",
        ));
    }
    let name = crate::api::meta::name(crd);
    if !plural.is_empty() && !group.is_empty() && name != format!("{plural}.{group}") {
        out.push(Cause::invalid("metadata.name", &json!(name), "must be spec.names.plural+\".\"+spec.group"));
    }
    match s(spec, "/scope") {
        "Namespaced" | "Cluster" => {}
        "" => out.push(Cause::required("spec.scope", "")),
        x => out.push(Cause {
            reason: "FieldValueNotSupported",
            field: "spec.scope".into(),
            message: format!("Unsupported value: {x:?}: supported values: \"Cluster\", \"Namespaced\""),
        }),
    }
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        out.push(Cause::invalid(
            "spec.versions",
            &json!(null),
            "must have exactly one version marked as storage version",
        ));
    }
    let storage = versions.iter().filter(|v| v["storage"] == json!(true)).count();
    if !versions.is_empty() && storage != 1 {
        out.push(Cause::invalid(
            "spec.versions",
            &Value::Array(versions.clone()),
            format!("must have exactly one version marked as storage version, status.storedVersions[{storage}]"),
        ));
    }
    for (i, v) in versions.iter().enumerate() {
        let at = format!("spec.versions[{i}]");
        if s(v, "/name").is_empty() {
            out.push(Cause::required(format!("{at}.name"), ""));
        }
        match v.pointer("/schema/openAPIV3Schema") {
            None => out.push(Cause::required(format!("{at}.schema.openAPIV3Schema"), "schemas are required")),
            Some(sc) => {
                if sc.get("type").and_then(Value::as_str) != Some("object") {
                    out.push(Cause::invalid(
                        format!("{at}.schema.openAPIV3Schema.type"),
                        &sc.get("type").cloned().unwrap_or(json!("")),
                        "must be object at the root",
                    ));
                }
                structural(sc, &format!("{at}.schema.openAPIV3Schema"), &mut out);
                selectable_fields(v, sc, &at, &mut out);
            }
        }
    }
    out
}

/// At most this many `selectableFields` per version.
const MAX_SELECTABLE_FIELDS: usize = 8;

/// A version's `selectableFields`: simple paths (no array notation, not in
/// metadata) to a string, integer or boolean field of its schema, each once.
fn selectable_fields(v: &Value, sc: &Value, at: &str, out: &mut Vec<Cause>) {
    let fields = v.get("selectableFields").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
    if fields.len() > MAX_SELECTABLE_FIELDS {
        out.push(Cause {
            reason: "FieldValueTooMany",
            field: format!("{at}.selectableFields"),
            message: format!("Too many: {}: must have at most {MAX_SELECTABLE_FIELDS} items", fields.len()),
        });
    }
    let mut seen = Vec::new();
    for (i, f) in fields.iter().enumerate() {
        let here = format!("{at}.selectableFields[{i}].jsonPath");
        let path = s(f, "/jsonPath");
        if path.is_empty() {
            out.push(Cause::required(here, ""));
            continue;
        }
        let parts: Vec<&str> = path.strip_prefix('.').map(|p| p.split('.').collect()).unwrap_or_default();
        if parts.is_empty() || parts.iter().any(|p| p.is_empty() || p.contains(['[', ']', '*', '@', '$', ' '])) {
            out.push(Cause::invalid(here, &json!(path), "must be a simple JSON path without array notation"));
            continue;
        }
        if parts[0] == "metadata" {
            out.push(Cause::invalid(here, &json!(path), "must not point to a field in metadata"));
            continue;
        }
        let mut node = Some(sc);
        for p in &parts {
            node = node.and_then(|n| {
                n.pointer(&format!("/properties/{p}"))
                    .or_else(|| n.get("additionalProperties").filter(|a| a.is_object()))
            });
        }
        match node.and_then(|n| n.get("type")).and_then(Value::as_str) {
            None => out.push(Cause::invalid(&here, &json!(path), "is not a field of the schema")),
            Some("string" | "integer" | "boolean") => {}
            Some(_) => out.push(Cause::invalid(
                &here,
                &json!(path),
                "must point to a field of type string, boolean or integer",
            )),
        }
        if seen.contains(&path) {
            out.push(Cause {
                reason: "FieldValueDuplicate",
                field: here,
                message: format!("Duplicate value: {path:?}"),
            });
        }
        seen.push(path);
    }
}

/// Whether a schema is structural: every node says its type (unless it is
/// int-or-string or keeps unknown fields), and no node has both properties and
/// additionalProperties.
fn structural(sc: &Value, at: &str, out: &mut Vec<Cause>) {
    let free = sc.get("x-kubernetes-int-or-string") == Some(&json!(true))
        || sc.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
    if sc.get("type").and_then(Value::as_str).unwrap_or("").is_empty() && !free {
        out.push(Cause::required(format!("{at}.type"), "must not be empty for specified object fields"));
    }
    if sc.get("properties").is_some() && sc.get("additionalProperties").is_some_and(|a| a != &json!(false)) {
        out.push(Cause::forbidden(
            format!("{at}.additionalProperties"),
            "additionalProperties and properties are mutual exclusive",
        ));
    }
    for (k, p) in sc.get("properties").and_then(Value::as_object).into_iter().flatten() {
        structural(p, &format!("{at}.properties[{k}]"), out);
    }
    if let Some(i) = sc.get("items") {
        structural(i, &format!("{at}.items"), out);
    }
    if let Some(a) = sc.get("additionalProperties").filter(|a| a.is_object()) {
        structural(a, &format!("{at}.additionalProperties"), out);
    }
    if sc.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("map")
        && sc.get("x-kubernetes-list-map-keys").and_then(Value::as_array).is_none_or(Vec::is_empty)
    {
        out.push(Cause::required(
            format!("{at}.x-kubernetes-list-map-keys"),
            "must not be empty if x-kubernetes-list-type is map",
        ));
    }
    for (i, r) in sc.get("x-kubernetes-validations").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let here = format!("{at}.x-kubernetes-validations[{i}]");
        let Some(rule) = r.get("rule").and_then(Value::as_str).filter(|s| !s.trim().is_empty()) else {
            out.push(Cause::required(format!("{here}.rule"), ""));
            continue;
        };
        for (what, expr) in
            [("rule", Some(rule)), ("messageExpression", r.get("messageExpression").and_then(Value::as_str))]
        {
            if let Some(e) = expr
                && let Err(err) = cel_compiles(e)
            {
                out.push(Cause::invalid(format!("{here}.{what}"), &json!(e), format!("compilation failed: {err}")));
            }
        }
        if let Some(reason) = r.get("reason").and_then(Value::as_str)
            && !matches!(
                reason,
                "FieldValueInvalid" | "FieldValueForbidden" | "FieldValueRequired" | "FieldValueDuplicate"
            )
        {
            out.push(Cause {
                reason: "FieldValueNotSupported",
                field: format!("{here}.reason"),
                message: format!("Unsupported value: {reason:?}: supported values: \"FieldValueDuplicate\", \"FieldValueForbidden\", \"FieldValueInvalid\", \"FieldValueRequired\""),
            });
        }
    }
}

fn preserves(sc: &Value) -> bool {
    sc.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true))
}

/// Fills in schema defaults where fields are missing.
pub fn default(sc: &Value, v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(props) = sc.get("properties").and_then(Value::as_object) {
                for (k, p) in props {
                    if !m.contains_key(k)
                        && let Some(d) = p.get("default")
                    {
                        m.insert(k.clone(), d.clone());
                    }
                    if let Some(c) = m.get_mut(k) {
                        default(p, c);
                    }
                }
            } else if let Some(ap) = sc.get("additionalProperties").filter(|a| a.is_object()) {
                for c in m.values_mut() {
                    default(ap, c);
                }
            }
        }
        Value::Array(a) => {
            if let Some(i) = sc.get("items") {
                for c in a {
                    default(i, c);
                }
            }
        }
        _ => {}
    }
}

/// Drops fields the schema does not know (and nulls where the schema does not allow
/// them), returning the unknown fields' paths. `metadata`, `apiVersion` and `kind` at
/// the root are left to the generic checks.
pub fn prune(sc: &Value, v: &mut Value, at: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if preserves(sc) && sc.get("properties").is_none() {
                return;
            }
            if let Some(props) = sc.get("properties").and_then(Value::as_object) {
                let keep_unknown = preserves(sc);
                m.retain(|k, c| {
                    if at.is_empty() && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                        return true;
                    }
                    match props.get(k) {
                        Some(p) => !(c.is_null() && p.get("nullable") != Some(&json!(true))),
                        None => {
                            if !keep_unknown {
                                out.push(join(at, k));
                            }
                            keep_unknown
                        }
                    }
                });
                for (k, c) in m.iter_mut() {
                    if let Some(p) = props.get(k) {
                        prune(p, c, &join(at, k), out);
                    }
                }
            } else if let Some(ap) = sc.get("additionalProperties").filter(|a| a.is_object()) {
                for (k, c) in m.iter_mut() {
                    prune(ap, c, &join(at, k), out);
                }
            } else if sc.get("type").and_then(Value::as_str) == Some("object") && !preserves(sc) {
                // An object with neither: every field is unknown.
                for k in m.keys() {
                    out.push(join(at, k));
                }
                m.clear();
            }
        }
        Value::Array(a) => {
            if let Some(i) = sc.get("items") {
                for (n, c) in a.iter_mut().enumerate() {
                    prune(i, c, &format!("{at}[{n}]"), out);
                }
            }
        }
        _ => {}
    }
}

fn join(at: &str, k: &str) -> String {
    if at.is_empty() { k.to_string() } else { format!("{at}.{k}") }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// Checks a custom object against its schema (after defaulting and pruning). On an
/// update, `old` is the value the stored object has at the same place: transition
/// rules (`oldSelf`) are judged against it, and a value left unchanged is not judged
/// again (Kubernetes's validation ratcheting), so a schema made stricter does not
/// lock its existing objects.
pub fn validate(sc: &Value, v: &Value, old: Option<&Value>, at: &str, out: &mut Vec<Cause>) {
    if !at.is_empty() && old == Some(v) {
        return;
    }
    let field = if at.is_empty() { "<root>" } else { at };
    let int_or_string = sc.get("x-kubernetes-int-or-string") == Some(&json!(true));
    if let Some(t) = sc.get("type").and_then(Value::as_str) {
        let actual = type_name(v);
        let ok = actual == t
            || (t == "number" && actual == "integer")
            || (v.is_null() && sc.get("nullable") == Some(&json!(true)));
        if !ok {
            out.push(Cause::invalid(
                field,
                &json!(shown(v)),
                format!("{field} in body must be of type {t}: {:?}", actual),
            ));
            return;
        }
    } else if int_or_string && !matches!(type_name(v), "integer" | "string") {
        out.push(Cause::invalid(
            field,
            &json!(shown(v)),
            format!("{field} in body must be of type integer,string: {:?}", type_name(v)),
        ));
        return;
    }
    if let Some(e) = sc.get("enum").and_then(Value::as_array)
        && !e.contains(v)
    {
        let list: Vec<String> = e.iter().map(|x| x.to_string()).collect();
        out.push(Cause {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!("Unsupported value: {}: supported values: {}", v, list.join(", ")),
        });
    }
    match v {
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            let excl = |k: &str| sc.get(k) == Some(&json!(true));
            if let Some(min) = sc.get("minimum").and_then(Value::as_f64) {
                if excl("exclusiveMinimum") && x <= min {
                    out.push(Cause::invalid(field, v, format!("{field} in body should be greater than {min}")));
                } else if x < min {
                    out.push(Cause::invalid(
                        field,
                        v,
                        format!("{field} in body should be greater than or equal to {min}"),
                    ));
                }
            }
            if let Some(max) = sc.get("maximum").and_then(Value::as_f64) {
                if excl("exclusiveMaximum") && x >= max {
                    out.push(Cause::invalid(field, v, format!("{field} in body should be less than {max}")));
                } else if x > max {
                    out.push(Cause::invalid(
                        field,
                        v,
                        format!("{field} in body should be less than or equal to {max}"),
                    ));
                }
            }
            if let Some(m) = sc.get("multipleOf").and_then(Value::as_f64).filter(|m| *m > 0.0)
                && (x / m).fract() != 0.0
            {
                out.push(Cause::invalid(field, v, format!("{field} in body should be a multiple of {m}")));
            }
        }
        Value::String(st) => {
            let n = st.chars().count() as u64;
            if let Some(max) = sc.get("maxLength").and_then(Value::as_u64)
                && n > max
            {
                out.push(Cause {
                    reason: "FieldValueTooLong",
                    field: field.into(),
                    message: format!("Too long: may not be more than {max} bytes"),
                });
            }
            if let Some(min) = sc.get("minLength").and_then(Value::as_u64)
                && n < min
            {
                out.push(Cause::invalid(field, v, format!("{field} in body should be at least {min} chars long")));
            }
            if let Some(p) = sc.get("pattern").and_then(Value::as_str) {
                match regex::Regex::new(p) {
                    Ok(re) if !re.is_match(st) => {
                        out.push(Cause::invalid(field, v, format!("{field} in body should match '{p}'")))
                    }
                    _ => {}
                }
            }
            if let Some(f) = sc.get("format").and_then(Value::as_str)
                && formats::check(f, st) == Some(false)
            {
                out.push(Cause::invalid(field, v, format!("{field} in body must be of type {f}: {st:?}")));
            }
        }
        Value::Array(a) => {
            if let Some(max) = sc.get("maxItems").and_then(Value::as_u64)
                && a.len() as u64 > max
            {
                out.push(Cause {
                    reason: "FieldValueTooMany",
                    field: field.into(),
                    message: format!("Too many: {}: must have at most {max} items", a.len()),
                });
            }
            if let Some(min) = sc.get("minItems").and_then(Value::as_u64)
                && (a.len() as u64) < min
            {
                out.push(Cause::invalid(field, v, format!("{field} in body should have at least {min} items")));
            }
            if sc.get("uniqueItems") == Some(&json!(true)) {
                for (i, x) in a.iter().enumerate() {
                    if a[..i].contains(x) {
                        out.push(Cause {
                            reason: "FieldValueDuplicate",
                            field: format!("{field}[{i}]"),
                            message: format!("Duplicate value: {x}"),
                        });
                    }
                }
            }
            if let Some(i) = sc.get("items") {
                let olds = old.and_then(Value::as_array);
                for (n, c) in a.iter().enumerate() {
                    let was = olds.and_then(|o| correlated(sc, o, c));
                    validate(i, c, was, &format!("{at}[{n}]"), out);
                }
            }
        }
        Value::Object(m) => {
            for r in sc.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
                if !m.contains_key(r) {
                    out.push(Cause::required(join(at, r), ""));
                }
            }
            if let Some(max) = sc.get("maxProperties").and_then(Value::as_u64)
                && m.len() as u64 > max
            {
                out.push(Cause {
                    reason: "FieldValueTooMany",
                    field: field.into(),
                    message: format!("Too many: {}: must have at most {max} items", m.len()),
                });
            }
            if let Some(min) = sc.get("minProperties").and_then(Value::as_u64)
                && (m.len() as u64) < min
            {
                out.push(Cause::invalid(
                    field,
                    &json!(m.len()),
                    format!("{field} in body should have at least {min} properties"),
                ));
            }
            let props = sc.get("properties").and_then(Value::as_object);
            let ap = sc.get("additionalProperties").filter(|a| a.is_object());
            for (k, c) in m {
                if at.is_empty() && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let was = old.and_then(|o| o.get(k));
                match (props.and_then(|p| p.get(k)), ap) {
                    (Some(p), _) => validate(p, c, was, &join(at, k), out),
                    (None, Some(a)) => validate(a, c, was, &join(at, k), out),
                    _ => {}
                }
            }
        }
        _ => {}
    }
    cel_rules(sc, v, old, at, out);
}

/// The element of the old list that an element of the new one is the same item as:
/// only lists of `x-kubernetes-list-type: map` correlate, by their keys (the items
/// of atomic lists and sets have no identity across versions).
fn correlated<'a>(sc: &Value, old: &'a [Value], item: &Value) -> Option<&'a Value> {
    if sc.get("x-kubernetes-list-type").and_then(Value::as_str) != Some("map") {
        return None;
    }
    let keys: Vec<&str> = sc.get("x-kubernetes-list-map-keys")?.as_array()?.iter().filter_map(Value::as_str).collect();
    old.iter().find(|o| keys.iter().all(|k| o.get(k) == item.get(k)))
}

/// A transition rule of `x-kubernetes-validations`: one that reads `oldSelf`, judged
/// only where an old value exists (on updates, at a correlated place).
fn is_transition(rule: &str) -> bool {
    rule.contains("oldSelf")
}

/// Compiles a CEL expression, for the definition check.
fn cel_compiles(expr: &str) -> Result<(), String> {
    super::cel::compile(expr).map(|_| ())
}

/// Evaluates a CEL expression with `self` bound to `v` (and `oldSelf` to `old`, as
/// an optional value when the rule says `optionalOldSelf`).
fn cel_eval(expr: &str, v: &Value, old: Option<&Value>, optional: bool) -> Result<Value, String> {
    match old {
        _ if optional => super::cel::eval_with_optional(expr, &[("self", v)], Some(("oldSelf", old))),
        Some(o) => super::cel::eval(expr, &[("self", v), ("oldSelf", o)]),
        None => super::cel::eval(expr, &[("self", v)]),
    }
}

/// `x-kubernetes-validations` at this node: each rule must be true of `self` (the
/// value here), else the rule's message (or `messageExpression`, or `failed rule:
/// <rule>`) at the field (plus the rule's `fieldPath`), with the rule's `reason`.
fn cel_rules(sc: &Value, v: &Value, old: Option<&Value>, at: &str, out: &mut Vec<Cause>) {
    for r in sc.get("x-kubernetes-validations").and_then(Value::as_array).into_iter().flatten() {
        let Some(rule) = r.get("rule").and_then(Value::as_str) else { continue };
        let optional = r.get("optionalOldSelf") == Some(&json!(true));
        if is_transition(rule) && old.is_none() && !optional {
            continue;
        }
        let mut field = at.to_string();
        if let Some(p) = r.get("fieldPath").and_then(Value::as_str) {
            field.push_str(p);
        }
        let field = if field.is_empty() { "<root>".to_string() } else { field };
        let message = match cel_eval(rule, v, old, optional) {
            Ok(Value::Bool(true)) => continue,
            Ok(Value::Bool(false)) => r
                .get("messageExpression")
                .and_then(Value::as_str)
                .and_then(|m| cel_eval(m, v, old, optional).ok())
                .and_then(|m| m.as_str().map(String::from))
                .filter(|m| !m.is_empty())
                .or_else(|| r.get("message").and_then(Value::as_str).map(String::from))
                .unwrap_or_else(|| format!("failed rule: {rule}")),
            Ok(other) => format!("rule did not evaluate to a bool: {other}"),
            Err(e) => format!("rule evaluation error: {e}"),
        };
        let shown = json!(type_name(v));
        out.push(match r.get("reason").and_then(Value::as_str) {
            Some("FieldValueForbidden") => Cause::forbidden(field, &message),
            Some("FieldValueRequired") => Cause::required(field, &message),
            Some("FieldValueDuplicate") => {
                Cause { reason: "FieldValueDuplicate", field, message: format!("Duplicate value: {shown}: {message}") }
            }
            _ => Cause::invalid(field, &shown, message),
        });
    }
}

/// Evaluates a printer column's JSONPath (`.a.b`, `[n]`, `[?(@.k=="v")]`) on an object.
pub fn json_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = obj;
    let mut rest = path.trim().trim_start_matches('{').trim_end_matches('}').trim_start_matches('$');
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            cur = cur.get(&r[..end])?;
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let inner = &r[..end];
            rest = &r[end + 1..];
            if let Some(f) = inner.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')')) {
                let (k, want) = f.split_once("==")?;
                let want = want.trim().trim_matches(['"', '\'']);
                cur = cur.as_array()?.iter().find(|i| i.get(k.trim()).map(shown).as_deref() == Some(want))?;
            } else {
                cur = cur.get(inner.parse::<usize>().ok()?)?;
            }
        } else {
            return None;
        }
    }
    Some(cur)
}

/// The Table cell of a column: dates as ages, the rest as values or text.
pub fn cell(c: &Column, obj: &Value, now: i64) -> Value {
    let Some(v) = json_path(obj, &c.json_path) else { return Value::Null };
    match (c.ty.as_str(), v) {
        ("date", Value::String(t)) => match chrono::DateTime::parse_from_rfc3339(t) {
            Ok(t) => json!(super::table::human_duration(now - t.timestamp())),
            Err(_) => json!(t),
        },
        ("string", v) if !v.is_string() => json!(shown(v)),
        (_, v) => v.clone(),
    }
}

/// Column definitions as a Table carries them, Name first.
pub fn column_definitions(cols: &[Column]) -> Vec<Value> {
    let mut out = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}),
    ];
    for c in cols {
        let mut m = Map::new();
        m.insert("name".into(), json!(c.name));
        m.insert("type".into(), json!(c.ty));
        m.insert("format".into(), json!(c.format));
        m.insert("description".into(), json!(c.description));
        m.insert("priority".into(), json!(c.priority));
        out.push(Value::Object(m));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["size"], "properties": {
                "size": {"type": "integer", "minimum": 1, "maximum": 10},
                "color": {"type": "string", "enum": ["red", "blue"], "default": "red"},
                "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 5},
                "port": {"x-kubernetes-int-or-string": true},
                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2}}},
            "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}}})
    }

    #[test]
    fn defaults_prunes_and_validates() {
        let sc = schema();
        let mut obj = json!({"apiVersion": "x/v1", "kind": "W", "metadata": {"name": "w"},
            "spec": {"size": 3, "bogus": 1, "extra": {"anything": [1]}, "port": "http"}});
        default(&sc, &mut obj);
        assert_eq!(obj["spec"]["color"], "red");
        let mut unknown = vec![];
        prune(&sc, &mut obj, "", &mut unknown);
        assert_eq!(unknown, vec!["spec.bogus"]);
        assert_eq!(obj["spec"]["extra"]["anything"], json!([1]));
        let mut causes = vec![];
        validate(&sc, &obj, None, "", &mut causes);
        assert!(causes.is_empty(), "{causes:?}");

        let bad = json!({"spec": {"size": "big", "color": "pink", "name": "ABCDEFG", "tags": ["a", "b", "c"]}});
        let mut causes = vec![];
        validate(&sc, &bad, None, "", &mut causes);
        let msgs: Vec<String> = causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
        assert!(
            msgs.contains(
                &"spec.size: Invalid value: \"big\": spec.size in body must be of type integer: \"string\"".to_string()
            ),
            "{msgs:?}"
        );
        assert!(
            msgs.contains(&"spec.color: Unsupported value: \"pink\": supported values: \"red\", \"blue\"".to_string()),
            "{msgs:?}"
        );
        assert!(msgs.iter().any(|m| m.starts_with("spec.name: Too long")), "{msgs:?}");
        assert!(msgs.iter().any(|m| m.contains("should match '^[a-z]+$'")), "{msgs:?}");
        assert!(msgs.iter().any(|m| m.starts_with("spec.tags: Too many: 3")), "{msgs:?}");
        let mut causes = vec![];
        validate(&sc, &json!({"spec": {}}), None, "", &mut causes);
        assert_eq!(causes[0].field, "spec.size");
        assert_eq!(causes[0].message, "Required value");
    }

    #[test]
    fn cel_validation_rules() {
        let sc = json!({"type": "object", "properties": {"spec": {
            "type": "object",
            "x-kubernetes-validations": [
                {"rule": "self.minReplicas <= self.maxReplicas", "message": "minReplicas cannot be larger than maxReplicas"},
                {"rule": "self.name.startsWith('x')", "messageExpression": "'name ' + self.name + ' must start with x'", "fieldPath": ".name"},
                {"rule": "self.name != 'forbidden'", "reason": "FieldValueForbidden"},
                {"rule": "self.minReplicas == oldSelf.minReplicas"}
            ],
            "properties": {
                "minReplicas": {"type": "integer"}, "maxReplicas": {"type": "integer"},
                "name": {"type": "string", "x-kubernetes-validations": [{"rule": "size(self) < 10"}]}
            }
        }}});
        let mut out = Vec::new();
        validate(&sc, &json!({"spec": {"minReplicas": 1, "maxReplicas": 3, "name": "xok"}}), None, "", &mut out);
        assert!(out.is_empty(), "{out:?}");
        validate(
            &sc,
            &json!({"spec": {"minReplicas": 5, "maxReplicas": 3, "name": "forbidden-long"}}),
            None,
            "",
            &mut out,
        );
        let msgs: Vec<String> = out.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
        assert_eq!(
            msgs,
            [
                "spec.name: Invalid value: \"string\": failed rule: size(self) < 10",
                "spec: Invalid value: \"object\": minReplicas cannot be larger than maxReplicas",
                "spec.name: Invalid value: \"object\": name forbidden-long must start with x",
            ]
            .map(String::from),
            "the forbidden-name rule holds here; transition rules are skipped on create"
        );
        // A rule that does not compile is refused with the definition.
        let mut causes = Vec::new();
        structural(
            &json!({"type": "object", "x-kubernetes-validations": [{"rule": "self.a >"}, {"rule": "true", "reason": "Nope"}]}),
            "spec.validation.openAPIV3Schema",
            &mut causes,
        );
        assert_eq!(causes.len(), 2, "{causes:?}");
        assert!(causes[0].message.contains("compilation failed"), "{causes:?}");
    }

    #[test]
    fn transition_rules_ratcheting_and_formats() {
        let sc = json!({"type": "object", "properties": {"spec": {"type": "object",
        "x-kubernetes-validations": [{"rule": "self.size >= oldSelf.size", "message": "size may only grow"}],
        "properties": {
            "size": {"type": "integer"},
            "owner": {"type": "string", "format": "email"},
            "ports": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                "items": {"type": "object", "properties": {"name": {"type": "string"}, "port": {"type": "integer",
                    "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "port is immutable"}]}}}}
        }}}});
        let msgs = |out: Vec<Cause>| out.iter().map(|c| format!("{}: {}", c.field, c.message)).collect::<Vec<_>>();
        let old = json!({"spec": {"size": 2, "owner": "not-an-email", "ports": [{"name": "a", "port": 1}]}});
        // On create there is no old value: transition rules are skipped, formats checked.
        let mut out = Vec::new();
        validate(&sc, &old, None, "", &mut out);
        assert_eq!(
            msgs(out),
            ["spec.owner: Invalid value: \"not-an-email\": spec.owner in body must be of type email: \"not-an-email\""]
        );
        // On update: the old bad email is unchanged, so not judged again; the rules
        // see oldSelf, per list item by its key (a new item has none).
        let mut out = Vec::new();
        let new = json!({"spec": {"size": 1, "owner": "not-an-email", "ports": [{"name": "a", "port": 2}, {"name": "b", "port": 3}]}});
        validate(&sc, &new, Some(&old), "", &mut out);
        assert_eq!(
            msgs(out),
            [
                "spec.ports[0].port: Invalid value: \"integer\": port is immutable",
                "spec: Invalid value: \"object\": size may only grow"
            ]
        );
        // optionalOldSelf: judged on create too, with oldSelf an optional.
        let opt = json!({"type": "object", "x-kubernetes-validations": [{"rule": "!oldSelf.hasValue() || self.n >= oldSelf.value().n",
            "optionalOldSelf": true, "message": "n may only grow"}, {"rule": "oldSelf.hasValue() || self.n == 0",
            "optionalOldSelf": true, "message": "n starts at 0"}], "properties": {"n": {"type": "integer"}}});
        let mut out = Vec::new();
        validate(&opt, &json!({"n": 1}), None, "", &mut out);
        assert_eq!(msgs(out), ["<root>: Invalid value: \"object\": n starts at 0"]);
        let mut out = Vec::new();
        validate(&opt, &json!({"n": 1}), Some(&json!({"n": 2})), "", &mut out);
        assert_eq!(msgs(out), ["<root>: Invalid value: \"object\": n may only grow"]);
        let mut out = Vec::new();
        let new = json!({"spec": {"size": 3, "owner": "still bad", "ports": [{"name": "a", "port": 1}]}});
        validate(&sc, &new, Some(&old), "", &mut out);
        assert_eq!(
            msgs(out),
            ["spec.owner: Invalid value: \"still bad\": spec.owner in body must be of type email: \"still bad\""]
        );
    }

    #[test]
    fn definitions_are_checked() {
        let mut crd = json!({"metadata": {"name": "widgets.example.com"}, "spec": {
            "group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                          "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"properties": {}}}}}}]}});
        let c = check_definition(&crd);
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(c[0].field, "spec.versions[0].schema.openAPIV3Schema.properties[spec].type");
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["type"] = json!("object");
        assert!(check_definition(&crd).is_empty());
        crd["metadata"]["name"] = json!("other");
        assert_eq!(check_definition(&crd)[0].field, "metadata.name");
    }

    #[test]
    fn version_order() {
        let mut v = vec!["v1alpha1", "foo", "v1beta1", "v2", "v1", "v1beta2", "v10"];
        v.sort_by_key(|x| version_rank(x));
        assert_eq!(v, ["v10", "v2", "v1", "v1beta2", "v1beta1", "v1alpha1", "foo"]);
    }

    #[test]
    fn printer_columns() {
        let obj = json!({"status": {"conditions": [{"type": "A", "status": "False"}, {"type": "Ready", "status": "True"}]}, "spec": {"n": 3}});
        assert_eq!(json_path(&obj, ".status.conditions[?(@.type==\"Ready\")].status"), Some(&json!("True")));
        assert_eq!(json_path(&obj, ".spec.n"), Some(&json!(3)));
        assert_eq!(json_path(&obj, ".status.conditions[0].type"), Some(&json!("A")));
        assert_eq!(json_path(&obj, ".spec.missing"), None);
    }
}
