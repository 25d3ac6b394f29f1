//! The shape of every served kind, from k8s-openapi's OpenAPI schemas: which fields an
//! object has, which are maps, and which lists merge by key, as a set, or atomically.
//! Server-side apply and managedFields ([`super::managed`]) walk objects with it; the
//! OpenAPI v3 documents are built from the same definitions.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use serde_json::{Map, Value};

use super::registry::{Registry, ResourceDef};

/// The shape of a value.
#[derive(Debug)]
pub enum Ty {
    /// A scalar, or anything replaced as a whole (atomic lists and maps).
    Scalar,
    /// An object with declared fields.
    Struct(BTreeMap<String, TyRef>),
    /// A map from strings to values of one shape.
    Map(TyRef),
    /// A list, with how its items are told apart.
    List(TyRef, ListKind),
    /// No schema: objects merge by key, lists are atomic (as structured-merge-diff's
    /// "deduced" type).
    Untyped,
}

/// How a list merges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListKind {
    /// Replaced as a whole.
    Atomic,
    /// A set of scalars.
    Set,
    /// Items identified by these fields.
    Map(Vec<String>),
}

/// A shape by definition name or inline.
#[derive(Clone, Debug)]
pub enum TyRef {
    /// A named definition (`io.k8s.api.core.v1.Container`).
    Named(Arc<str>),
    /// An inline shape.
    Inline(Arc<Ty>),
}

static UNTYPED: Ty = Ty::Untyped;

/// Named shapes.
#[derive(Debug, Default)]
pub struct Types {
    named: HashMap<Arc<str>, Ty>,
    roots: HashMap<(String, String), TyRef>,
}

/// Structs Kubernetes marks `x-kubernetes-map-type: atomic`, which k8s-openapi's schemas
/// do not say.
const ATOMIC_STRUCTS: &[&str] = &[
    "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector",
    "io.k8s.api.core.v1.NodeSelector",
    "io.k8s.api.core.v1.NodeSelectorTerm",
    "io.k8s.api.core.v1.LocalObjectReference",
    "io.k8s.api.core.v1.ObjectReference",
    "io.k8s.api.core.v1.TypedLocalObjectReference",
    "io.k8s.api.core.v1.ConfigMapKeySelector",
    "io.k8s.api.core.v1.SecretKeySelector",
    "io.k8s.api.core.v1.ObjectFieldSelector",
    "io.k8s.api.core.v1.ResourceFieldSelector",
    "io.k8s.api.core.v1.ConfigMapEnvSource",
    "io.k8s.api.core.v1.SecretEnvSource",
    "io.k8s.api.core.v1.TopologySelectorTerm",
];

/// The list-map keys Kubernetes declares (`x-kubernetes-list-map-keys`) for built-in
/// lists, by item definition (and field name where one type serves several lists).
fn builtin_list_kind(field: &str, item: Option<&str>) -> ListKind {
    let keys = |k: &[&str]| ListKind::Map(k.iter().map(|s| s.to_string()).collect());
    let Some(item) = item else {
        return if matches!(field, "finalizers" | "podCIDRs") { ListKind::Set } else { ListKind::Atomic };
    };
    let short = item.rsplit('.').next().unwrap_or(item);
    match short {
        "Container" | "EphemeralContainer" | "EnvVar" | "Volume" | "PodResourceClaim" | "PodSchedulingGate" => {
            keys(&["name"])
        }
        "LocalObjectReference" if field == "imagePullSecrets" => keys(&["name"]),
        "ContainerPort" => keys(&["containerPort", "protocol"]),
        "ServicePort" => keys(&["port", "protocol"]),
        "VolumeMount" => keys(&["mountPath"]),
        "VolumeDevice" => keys(&["devicePath"]),
        "HostAlias" => keys(&["ip"]),
        "OwnerReference" => keys(&["uid"]),
        "TopologySpreadConstraint" => keys(&["topologyKey", "whenUnsatisfiable"]),
        "NodeAddress" => keys(&["type"]),
        "ContainerResizePolicy" => keys(&["resourceName"]),
        s if s.ends_with("Condition") && field == "conditions" => keys(&["type"]),
        _ => ListKind::Atomic,
    }
}

fn def_name(r: &str) -> &str {
    r.rsplit('/').next().unwrap_or(r)
}

/// The shape of one schema (a definition's, a property's or an item's).
pub fn parse(v: &Value, field: &str) -> TyRef {
    TyRef::Inline(Arc::new(parse_ty(v, field)))
}

fn parse_ref(v: &Value, field: &str) -> TyRef {
    if let Some(r) = v.get("$ref").and_then(Value::as_str) {
        return TyRef::Named(def_name(r).into());
    }
    if let Some([one]) = v.get("allOf").and_then(Value::as_array).map(Vec::as_slice) {
        return parse_ref(one, field);
    }
    TyRef::Inline(Arc::new(parse_ty(v, field)))
}

fn parse_ty(v: &Value, field: &str) -> Ty {
    if v.get("$ref").is_some() || v.get("allOf").is_some() {
        // A reference inline where a shape is wanted: only happens for wrappers.
        return match parse_ref(v, field) {
            TyRef::Inline(t) => Arc::try_unwrap(t).unwrap_or(Ty::Untyped),
            TyRef::Named(_) => Ty::Untyped,
        };
    }
    if v.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
        || v.get("x-kubernetes-map-type").and_then(Value::as_str) == Some("atomic")
    {
        return Ty::Scalar;
    }
    match v.get("type").and_then(Value::as_str) {
        Some("object") => {
            if let Some(props) = v.get("properties").and_then(Value::as_object) {
                Ty::Struct(props.iter().map(|(k, p)| (k.clone(), parse_ref(p, k))).collect())
            } else if let Some(ap) = v.get("additionalProperties").filter(|a| a.is_object()) {
                Ty::Map(parse_ref(ap, field))
            } else {
                Ty::Untyped
            }
        }
        Some("array") => {
            let items = v.get("items").cloned().unwrap_or(Value::Null);
            let item_name = items.get("$ref").and_then(Value::as_str).map(def_name);
            let kind = match v.get("x-kubernetes-list-type").and_then(Value::as_str) {
                Some("map") => ListKind::Map(
                    v.get("x-kubernetes-list-map-keys")
                        .and_then(Value::as_array)
                        .map(|k| k.iter().filter_map(Value::as_str).map(str::to_string).collect())
                        .unwrap_or_default(),
                ),
                Some("set") => ListKind::Set,
                Some(_) => ListKind::Atomic,
                None => builtin_list_kind(field, item_name),
            };
            Ty::List(parse_ref(&items, field), kind)
        }
        Some(_) => Ty::Scalar,
        None => Ty::Untyped,
    }
}

impl Types {
    /// The shapes of every built-in kind, made once.
    pub fn builtin() -> &'static Types {
        static T: OnceLock<Types> = OnceLock::new();
        T.get_or_init(|| {
            let (defs, roots) = definitions(Registry::builtin());
            let mut t = Types::from_definitions(&defs);
            t.roots = roots.into_iter().map(|(k, n)| (k, TyRef::Named(n.into()))).collect();
            t
        })
    }

    /// Shapes from OpenAPI definitions.
    pub fn from_definitions(defs: &Map<String, Value>) -> Types {
        let named = defs
            .iter()
            .map(|(name, v)| {
                let ty = if ATOMIC_STRUCTS.contains(&name.as_str()) { Ty::Scalar } else { parse_ty(v, "") };
                (Arc::from(name.as_str()), ty)
            })
            .collect();
        Types { named, roots: HashMap::new() }
    }

    /// The shape a reference names.
    pub fn resolve<'a>(&'a self, r: &'a TyRef) -> &'a Ty {
        match r {
            TyRef::Inline(t) => t,
            TyRef::Named(n) => self.named.get(n).unwrap_or(&UNTYPED),
        }
    }

    /// The shape of a built-in kind's objects.
    pub fn root(&self, def: &ResourceDef) -> TyRef {
        self.roots
            .get(&(def.api_version(), def.kind.to_string()))
            .cloned()
            .unwrap_or_else(|| TyRef::Inline(Arc::new(Ty::Untyped)))
    }
}

/// A generator of OpenAPI v3 definitions (`#/components/schemas/...` references).
fn generator() -> schemars::SchemaGenerator {
    schemars::generate::SchemaSettings::openapi3().with(|s| s.meta_schema = None).into_generator()
}

/// The OpenAPI v3 definitions of every kind in a registry (with every type they refer
/// to), and each kind's definition name by (apiVersion, kind).
pub fn definitions(reg: &Registry) -> (Map<String, Value>, HashMap<(String, String), String>) {
    let mut g = generator();
    let mut roots = HashMap::new();
    for d in reg.all() {
        let name = (d.schema)(&mut g);
        roots.insert((d.api_version(), d.kind.to_string()), name);
    }
    (g.take_definitions(true), roots)
}

/// The `components.schemas` of an OpenAPI v3 document serving `kinds`: their
/// definitions and everything they refer to, shaped as Kubernetes publishes them (a
/// described reference wrapped in `allOf`, each kind's `x-kubernetes-group-version-kind`).
pub fn openapi_schemas(kinds: &[&ResourceDef]) -> Map<String, Value> {
    let mut g = generator();
    let mut roots = Vec::new();
    for d in kinds {
        let name = (d.schema)(&mut g);
        roots.push((name, d));
    }
    let mut defs = g.take_definitions(true);
    for v in defs.values_mut() {
        wrap_refs(v);
    }
    for (name, d) in roots {
        if let Some(Value::Object(o)) = defs.get_mut(&name) {
            let gvk = serde_json::json!([{"group": d.group, "kind": d.kind, "version": d.version}]);
            o.insert("x-kubernetes-group-version-kind".into(), gvk);
            // k8s-openapi's structs make metadata required; Kubernetes's schemas do not.
            if let Some(Value::Array(req)) = o.get_mut("required") {
                req.retain(|r| r != "metadata");
                if req.is_empty() {
                    o.remove("required");
                }
            }
        }
    }
    defs
}

/// The `components.schemas` for custom resources: each kind's schema from its CRD
/// (named as Kubernetes names them, `com.example.v1.Widget`), with ObjectMeta and what
/// it refers to.
pub fn custom_openapi_schemas(kinds: &[&ResourceDef]) -> Map<String, Value> {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    let mut g = generator();
    g.subschema_for::<ObjectMeta>();
    let mut defs = g.take_definitions(true);
    for v in defs.values_mut() {
        wrap_refs(v);
    }
    for d in kinds {
        let Some(c) = &d.custom else { continue };
        let mut sc = c.schema.clone();
        if let Some(o) = sc.as_object_mut() {
            let props = o.entry("properties").or_insert_with(|| serde_json::json!({}));
            if let Some(p) = props.as_object_mut() {
                p.insert("apiVersion".into(), serde_json::json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}));
                p.insert("kind".into(), serde_json::json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}));
                p.insert("metadata".into(), serde_json::json!({"allOf": [{"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}], "description": "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"}));
            }
            let gvk = serde_json::json!([{"group": d.group, "kind": d.kind, "version": d.version}]);
            o.insert("x-kubernetes-group-version-kind".into(), gvk);
        }
        defs.insert(custom_schema_name(d), sc);
    }
    defs
}

/// `com.example.v1.Widget` for group example.com, version v1, kind Widget.
pub fn custom_schema_name(d: &ResourceDef) -> String {
    let rev: Vec<&str> = d.group.split('.').rev().collect();
    format!("{}.{}.{}", rev.join("."), d.version, d.kind)
}

fn wrap_refs(v: &mut Value) {
    let Some(o) = v.as_object_mut() else { return };
    if let Some(props) = o.get_mut("properties").and_then(Value::as_object_mut) {
        for p in props.values_mut() {
            if let Some(po) = p.as_object_mut()
                && po.len() > 1
                && let Some(r) = po.remove("$ref")
            {
                po.insert("allOf".into(), serde_json::json!([{"$ref": r}]));
            }
            wrap_refs(p);
        }
    }
    for k in ["items", "additionalProperties"] {
        if let Some(i) = o.get_mut(k) {
            wrap_refs(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_shapes() {
        let t = Types::builtin();
        let reg = Registry::builtin();
        let deploy = reg.all().iter().find(|d| d.kind == "Deployment").unwrap();
        let root = t.root(deploy);
        let Ty::Struct(f) = t.resolve(&root) else { panic!("Deployment is a struct") };
        let Ty::Struct(spec) = t.resolve(&f["spec"]) else { panic!("spec") };
        assert!(matches!(t.resolve(&spec["selector"]), Ty::Scalar), "LabelSelector is atomic");
        let Ty::Struct(tmpl) = t.resolve(&spec["template"]) else { panic!("template") };
        let Ty::Struct(ps) = t.resolve(&tmpl["spec"]) else { panic!("pod spec") };
        let Ty::List(c, ListKind::Map(k)) = t.resolve(&ps["containers"]) else { panic!("containers") };
        assert_eq!(k, &["name"]);
        let Ty::Struct(cf) = t.resolve(c) else { panic!("container") };
        assert!(matches!(t.resolve(&cf["ports"]), Ty::List(_, ListKind::Map(k)) if k.len() == 2));
        assert!(matches!(t.resolve(&cf["args"]), Ty::List(_, ListKind::Atomic)));
        let Ty::Struct(m) = t.resolve(&f["metadata"]) else { panic!("metadata") };
        assert!(matches!(t.resolve(&m["labels"]), Ty::Map(_)));
        assert!(matches!(t.resolve(&m["finalizers"]), Ty::List(_, ListKind::Set)));
    }
}
