//! The registry of served kinds: group, version, kind, plural, scope, short names,
//! categories, subresources and field labels, taken from `k8s-openapi` where it knows
//! them and from the Kubernetes registry code where it does not.

use std::any::TypeId;
use std::collections::BTreeMap;
use std::sync::OnceLock;

use k8s_openapi::api;
use k8s_openapi::{NamespaceResourceScope, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The verbs of a full read-write resource.
pub const ALL_VERBS: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

/// One served resource.
#[derive(Debug)]
pub struct ResourceDef {
    /// API group, "" for core.
    pub group: &'static str,
    /// Version, `v1`.
    pub version: &'static str,
    /// Kind, `ConfigMap`.
    pub kind: &'static str,
    /// Plural resource name, `configmaps`.
    pub plural: &'static str,
    /// Singular resource name, `configmap`.
    pub singular: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Short names (discovery is kubectl's only source for them).
    pub short_names: &'static [&'static str],
    /// Categories, `all`.
    pub categories: &'static [&'static str],
    /// Whether `/status` is a subresource with the spec/status split.
    pub has_status: bool,
    /// Field labels beyond metadata.name / metadata.namespace.
    pub field_labels: &'static [&'static str],
    /// Decodes into the typed object and back (strict decoding and type checks).
    pub roundtrip: fn(&Value) -> Result<Value, String>,
    /// Adds the kind's OpenAPI schema (and those it refers to) to a generator and
    /// returns its definition name, `io.k8s.api.core.v1.ConfigMap`.
    pub schema: fn(&mut schemars::SchemaGenerator) -> String,
    /// For custom resources: what their CustomResourceDefinition says.
    pub custom: Option<Box<super::crd::Custom>>,
}

impl ResourceDef {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_string() } else { format!("{}/{}", self.group, self.version) }
    }

    /// Whether objects are stored in the core/v1 Event form (events.k8s.io/v1 Events).
    pub fn stored_as_core_event(&self) -> bool {
        self.group == "events.k8s.io" && self.plural == "events"
    }

    /// The storage key prefix for this resource (ends in `/`).
    pub fn key_prefix(&self) -> String {
        if self.stored_as_core_event() {
            return "/registry/events/".to_string();
        }
        if self.group.is_empty() {
            format!("/registry/{}/", self.plural)
        } else {
            format!("/registry/{}/{}/", self.group, self.plural)
        }
    }

    /// The storage key for an object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/{name}", self.key_prefix()),
            _ => format!("{}{name}", self.key_prefix()),
        }
    }

    /// The storage prefix for a list (all namespaces, or one).
    pub fn list_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/", self.key_prefix()),
            _ => self.key_prefix(),
        }
    }

    /// The subresources served for this kind.
    pub fn subresources(&self) -> Vec<&'static str> {
        let mut s = Vec::new();
        if self.has_status {
            s.push("status");
        }
        if self.has_scale() {
            s.push("scale");
        }
        if self.group.is_empty() && self.plural == "nodes" {
            s.push("proxy");
        }
        if self.group.is_empty() && self.plural == "serviceaccounts" {
            s.push("token");
        }
        if self.group.is_empty() && self.plural == "pods" {
            s.extend(["binding", "eviction", "log", "exec", "attach", "portforward"]);
        }
        s
    }

    /// Whether `/scale` is served (the autoscaling/v1 Scale view of `spec.replicas`).
    pub fn has_scale(&self) -> bool {
        self.custom.as_ref().is_some_and(|c| c.scale.is_some())
            || matches!(
                (self.group, self.plural),
                ("apps", "deployments" | "replicasets" | "statefulsets") | ("", "replicationcontrollers")
            )
    }

    /// Whether objects of this kind carry `metadata.generation` bumped on spec changes.
    pub fn tracks_generation(&self) -> bool {
        !matches!(
            self.plural,
            "configmaps"
                | "secrets"
                | "endpoints"
                | "events"
                | "serviceaccounts"
                | "leases"
                | "endpointslices"
                | "namespaces"
        )
    }

    /// Whether an update of a missing object creates it (Kubernetes's AllowCreateOnUpdate).
    pub fn create_on_update(&self) -> bool {
        matches!(self.plural, "endpoints" | "events" | "leases" | "endpointslices")
    }

    /// How Kubernetes validates this kind's object names.
    pub fn name_rule(&self) -> NameRule {
        match (self.group, self.plural) {
            ("rbac.authorization.k8s.io", _) => NameRule::PathSegment,
            ("", "services") => NameRule::Dns1035Label,
            ("", "namespaces") => NameRule::Dns1123Label,
            _ => NameRule::Dns1123Subdomain,
        }
    }
}

/// The rule an object name must follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameRule {
    /// Most kinds: `my-app.example`.
    Dns1123Subdomain,
    /// Namespaces: no dots.
    Dns1123Label,
    /// Services: no dots, starting with a letter.
    Dns1035Label,
    /// RBAC objects: anything but `/`, `%`, `.` and `..` (`system:node`).
    PathSegment,
}

fn roundtrip<K: DeserializeOwned + Serialize>(v: &Value) -> Result<Value, String> {
    let k: K = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(&k).map_err(|e| e.to_string())
}

fn schema_of<K: schemars::JsonSchema>(g: &mut schemars::SchemaGenerator) -> String {
    g.subschema_for::<K>();
    K::schema_name().into_owned()
}

fn def<K>(
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    has_status: bool,
    field_labels: &'static [&'static str],
) -> ResourceDef
where
    K: Resource + DeserializeOwned + Serialize + schemars::JsonSchema + 'static,
{
    ResourceDef {
        group: K::GROUP,
        version: K::VERSION,
        kind: K::KIND,
        plural: K::URL_PATH_SEGMENT,
        singular: K::KIND.to_lowercase(),
        namespaced: TypeId::of::<K::Scope>() == TypeId::of::<NamespaceResourceScope>(),
        short_names,
        categories,
        has_status,
        field_labels,
        roundtrip: roundtrip::<K>,
        schema: schema_of::<K>,
        custom: None,
    }
}

const ALL: &[&str] = &["all"];
const NONE: &[&str] = &[];
const POD_FIELDS: &[&str] = &[
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
];
const EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

fn build() -> Vec<ResourceDef> {
    use api::admissionregistration::v1 as adm;
    use api::apps::v1 as apps;
    use api::autoscaling::v2 as autoscaling;
    use api::batch::v1 as batch;
    use api::coordination::v1 as coord;
    use api::core::v1 as core;
    use api::discovery::v1 as disc;
    use api::events::v1 as events;
    use api::networking::v1 as net;
    use api::node::v1 as node;
    use api::policy::v1 as policy;
    use api::rbac::v1 as rbac;
    use api::scheduling::v1 as sched;
    use api::storage::v1 as storage;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
    vec![
        def::<core::ConfigMap>(&["cm"], NONE, false, NONE),
        def::<core::Endpoints>(&["ep"], NONE, false, NONE),
        def::<core::Event>(&["ev"], NONE, false, EVENT_FIELDS),
        def::<core::LimitRange>(&["limits"], NONE, false, NONE),
        def::<core::Namespace>(&["ns"], NONE, true, &["status.phase"]),
        def::<core::Node>(&["no"], NONE, true, &["spec.unschedulable"]),
        def::<core::PersistentVolumeClaim>(&["pvc"], NONE, true, NONE),
        def::<core::PersistentVolume>(&["pv"], NONE, true, NONE),
        def::<core::Pod>(&["po"], ALL, true, POD_FIELDS),
        def::<core::PodTemplate>(NONE, NONE, false, NONE),
        def::<core::ReplicationController>(&["rc"], ALL, true, &["status.replicas"]),
        def::<core::ResourceQuota>(&["quota"], NONE, true, NONE),
        def::<core::Secret>(NONE, NONE, false, &["type"]),
        def::<core::ServiceAccount>(&["sa"], NONE, false, NONE),
        def::<core::Service>(&["svc"], ALL, true, &["spec.clusterIP", "spec.type"]),
        def::<apps::ControllerRevision>(NONE, NONE, false, NONE),
        def::<apps::DaemonSet>(&["ds"], ALL, true, NONE),
        def::<apps::Deployment>(&["deploy"], ALL, true, NONE),
        def::<apps::ReplicaSet>(&["rs"], ALL, true, &["status.replicas"]),
        def::<apps::StatefulSet>(&["sts"], ALL, true, NONE),
        def::<batch::CronJob>(&["cj"], ALL, true, NONE),
        def::<batch::Job>(NONE, ALL, true, &["status.successful"]),
        def::<autoscaling::HorizontalPodAutoscaler>(&["hpa"], ALL, true, NONE),
        def::<policy::PodDisruptionBudget>(&["pdb"], NONE, true, NONE),
        def::<net::Ingress>(&["ing"], NONE, true, NONE),
        def::<net::IngressClass>(NONE, NONE, false, NONE),
        def::<net::NetworkPolicy>(&["netpol"], NONE, false, NONE),
        def::<net::IPAddress>(&["ip"], NONE, false, NONE),
        def::<net::ServiceCIDR>(NONE, NONE, true, NONE),
        def::<disc::EndpointSlice>(NONE, NONE, false, &["addressType"]),
        def::<coord::Lease>(NONE, NONE, false, NONE),
        def::<events::Event>(&["ev"], NONE, false, NONE),
        def::<rbac::ClusterRole>(NONE, NONE, false, NONE),
        def::<rbac::ClusterRoleBinding>(NONE, NONE, false, NONE),
        def::<rbac::Role>(NONE, NONE, false, NONE),
        def::<rbac::RoleBinding>(NONE, NONE, false, NONE),
        def::<storage::CSIDriver>(NONE, NONE, false, NONE),
        def::<storage::CSINode>(NONE, NONE, false, NONE),
        def::<storage::CSIStorageCapacity>(NONE, NONE, false, NONE),
        def::<storage::StorageClass>(&["sc"], NONE, false, NONE),
        def::<storage::VolumeAttachment>(NONE, NONE, true, NONE),
        def::<sched::PriorityClass>(&["pc"], NONE, false, NONE),
        def::<node::RuntimeClass>(NONE, NONE, false, NONE),
        def::<apiext::CustomResourceDefinition>(&["crd", "crds"], &["api-extensions"], true, NONE),
        def::<adm::MutatingWebhookConfiguration>(NONE, &["api-extensions"], false, NONE),
        def::<adm::ValidatingWebhookConfiguration>(NONE, &["api-extensions"], false, NONE),
        def::<adm::ValidatingAdmissionPolicy>(NONE, &["api-extensions"], true, NONE),
        def::<adm::ValidatingAdmissionPolicyBinding>(NONE, &["api-extensions"], false, NONE),
    ]
}

/// The review kinds (TokenReview, SubjectAccessReview, ...): create-only, never
/// stored, so not in the registry; listed in discovery and OpenAPI from here.
pub fn reviews() -> &'static [ResourceDef] {
    use api::authentication::v1 as authn;
    use api::authorization::v1 as authz;
    static R: OnceLock<Vec<ResourceDef>> = OnceLock::new();
    R.get_or_init(|| {
        vec![
            def::<authn::SelfSubjectReview>(NONE, NONE, false, NONE),
            def::<authn::TokenReview>(NONE, NONE, false, NONE),
            def::<authz::LocalSubjectAccessReview>(NONE, NONE, false, NONE),
            def::<authz::SelfSubjectAccessReview>(NONE, NONE, false, NONE),
            def::<authz::SelfSubjectRulesReview>(NONE, NONE, false, NONE),
            def::<authz::SubjectAccessReview>(NONE, NONE, false, NONE),
        ]
    })
}

/// The registry: every served resource, and lookups by group/version/plural.
pub struct Registry {
    defs: Vec<&'static ResourceDef>,
    by_path: BTreeMap<(String, String, String), usize>,
    /// The first resource of each storage prefix.
    stored: Vec<usize>,
}

impl Registry {
    /// The process-wide registry of built-in kinds.
    pub fn builtin() -> &'static Registry {
        static R: OnceLock<Registry> = OnceLock::new();
        R.get_or_init(|| Registry::of(build().into_iter().map(|d| &*Box::leak(Box::new(d))).collect()))
    }

    fn of(defs: Vec<&'static ResourceDef>) -> Registry {
        let by_path = defs
            .iter()
            .enumerate()
            .map(|(i, d)| ((d.group.to_string(), d.version.to_string(), d.plural.to_string()), i))
            .collect();
        let mut stored: Vec<usize> = Vec::new();
        for (i, d) in defs.iter().enumerate() {
            if !stored.iter().any(|&j| defs[j].key_prefix() == d.key_prefix()) {
                stored.push(i);
            }
        }
        Registry { defs, by_path, stored }
    }

    /// The built-in kinds plus `extra` (custom resources); a built-in wins a clash.
    pub fn with(&self, extra: &[&'static ResourceDef]) -> Registry {
        let mut defs = self.defs.clone();
        for d in extra {
            if !defs.iter().any(|b| b.group == d.group && b.version == d.version && b.plural == d.plural) {
                defs.push(d);
            }
        }
        Registry::of(defs)
    }

    /// All resources, in registration order.
    pub fn all(&self) -> &[&'static ResourceDef] {
        &self.defs
    }

    /// The resource served at `group/version/plural`.
    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<&'static ResourceDef> {
        self.by_path.get(&(group.to_string(), version.to_string(), plural.to_string())).map(|&i| self.defs[i])
    }

    /// One resource per storage prefix: what scans of everything stored walk, so a
    /// resource served in two versions from one store (Events) is visited once.
    pub fn stored(&self) -> impl Iterator<Item = &'static ResourceDef> + '_ {
        self.stored.iter().map(|&i| self.defs[i])
    }

    /// The resource for a kind (first match).
    pub fn by_kind(&self, group: &str, kind: &str) -> Option<&'static ResourceDef> {
        self.defs.iter().find(|d| d.group == group && d.kind == kind).copied()
    }

    /// Groups in discovery order, each with its versions (preferred first).
    pub fn groups(&self) -> Vec<(&'static str, Vec<&'static str>)> {
        let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
        for d in self.defs.iter() {
            match out.iter_mut().find(|(g, _)| *g == d.group) {
                Some((_, vs)) => {
                    if !vs.contains(&d.version) {
                        vs.push(d.version)
                    }
                }
                None => out.push((d.group, vec![d.version])),
            }
        }
        out
    }

    /// The resources of one group-version.
    pub fn in_group_version<'a>(
        &'a self,
        group: &'a str,
        version: &'a str,
    ) -> impl Iterator<Item = &'static ResourceDef> + 'a {
        self.defs.iter().copied().filter(move |d| d.group == group && d.version == version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_knows_scope_and_plurals() {
        let r = Registry::builtin();
        let pods = r.get("", "v1", "pods").unwrap();
        assert!(pods.namespaced);
        assert_eq!(pods.kind, "Pod");
        assert_eq!(pods.key(Some("default"), "p"), "/registry/pods/default/p");
        let ns = r.get("", "v1", "namespaces").unwrap();
        assert!(!ns.namespaced);
        let dep = r.get("apps", "v1", "deployments").unwrap();
        assert_eq!(dep.key(Some("a"), "b"), "/registry/apps/deployments/a/b");
        assert!(r.get("networking.k8s.io", "v1", "ingresses").is_some());
        assert_eq!(r.by_kind("rbac.authorization.k8s.io", "ClusterRole").unwrap().plural, "clusterroles");
        let event_stores = r.stored().filter(|d| d.key_prefix() == "/registry/events/").count();
        assert_eq!(event_stores, 1, "core and events.k8s.io Events share one store");
        assert_eq!(r.stored().count(), r.all().len() - 1);
    }
}
