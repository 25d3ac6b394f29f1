//! The Node authorizer with NodeRestriction's limits, as Kubernetes has them for
//! `system:node:<name>` in `system:nodes`: a node reads Nodes, pods and Services, but
//! only the Secrets, ConfigMaps, claims and service-account tokens of pods bound to
//! it; it writes only its own Node, its own Lease and the pods bound to it.

use serde_json::Value;

use super::{Attrs, Decision};

/// What the Node authorizer needs to know about the cluster to decide.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Need {
    /// Decided without looking at anything.
    Decided(Decision),
    /// Allowed when a pod bound to the node refers to this object (kind as the
    /// pod refers to it: `secret`, `configmap`, `pvc`, `pv`, `serviceaccount`).
    Referenced { kind: &'static str, ns: String, name: String },
    /// Allowed when this pod is bound to the node.
    OwnPod { ns: String, name: String },
}

/// Why a node was refused an object no pod of its refers to, as Kubernetes says it.
pub fn no_relationship(node: &str) -> String {
    format!("no relationship found between node '{node}' and this object")
}

fn deny(msg: String) -> Need {
    Need::Decided(Decision::Deny(msg))
}

const ALLOW: Need = Need::Decided(Decision::Allow);

/// Judges `a` for the node `node`.
pub fn judge(node: &str, a: &Attrs) -> Need {
    let Some(r) = &a.resource else { return Need::Decided(Decision::NoOpinion) };
    let v = a.verb.as_str();
    let read = matches!(v, "get" | "list" | "watch");
    let refers = |kind: &'static str| {
        if v == "get" && !r.name.is_empty() {
            Need::Referenced { kind, ns: r.namespace.clone(), name: r.name.clone() }
        } else {
            deny(no_relationship(node))
        }
    };
    match (r.group.as_str(), r.resource.as_str(), r.subresource.as_str()) {
        ("", "secrets", "") => refers("secret"),
        ("", "configmaps", "") => refers("configmap"),
        ("", "persistentvolumeclaims", "") => refers("pvc"),
        ("", "persistentvolumes", "") => refers("pv"),
        ("", "serviceaccounts", "token") if v == "create" => {
            Need::Referenced { kind: "serviceaccount", ns: r.namespace.clone(), name: r.name.clone() }
        }
        ("", "nodes", "" | "status") if read => ALLOW,
        ("", "nodes", "") if v == "create" => ALLOW,
        ("", "nodes", "" | "status") if matches!(v, "update" | "patch" | "delete") => {
            if r.name == node {
                ALLOW
            } else {
                deny(format!("node {node:?} is not allowed to modify node {:?}", r.name))
            }
        }
        ("", "pods", "") if read => ALLOW,
        // Mirror pods for static pods.
        ("", "pods", "") if v == "create" => ALLOW,
        ("", "pods", "") if v == "delete" => Need::OwnPod { ns: r.namespace.clone(), name: r.name.clone() },
        ("", "pods", "status") if matches!(v, "update" | "patch") => {
            Need::OwnPod { ns: r.namespace.clone(), name: r.name.clone() }
        }
        ("", "pods", "eviction") if v == "create" => Need::OwnPod { ns: r.namespace.clone(), name: r.name.clone() },
        ("" | "events.k8s.io", "events", "") if matches!(v, "create" | "update" | "patch") => ALLOW,
        ("", "services" | "endpoints", "") if read => ALLOW,
        ("coordination.k8s.io", "leases", "") => {
            if r.namespace == "kube-node-lease" && (r.name == node || (v == "create" && r.name.is_empty())) {
                ALLOW
            } else {
                deny(format!("can only access node lease with the same name as the requesting node ({node})"))
            }
        }
        ("storage.k8s.io", "csidrivers" | "csinodes" | "volumeattachments", "") if read => ALLOW,
        ("node.k8s.io", "runtimeclasses", "") if read => ALLOW,
        ("authentication.k8s.io", "tokenreviews", "") if v == "create" => ALLOW,
        ("authorization.k8s.io", "subjectaccessreviews" | "localsubjectaccessreviews", "") if v == "create" => ALLOW,
        _ => Need::Decided(Decision::NoOpinion),
    }
}

fn names<'a>(v: &'a Value, path: &[&str]) -> impl Iterator<Item = &'a str> {
    let mut cur = Some(v);
    for p in path {
        cur = cur.and_then(|c| c.get(*p));
    }
    cur.and_then(Value::as_str).into_iter()
}

/// Whether `pod` refers to the object `kind`/`name` (in its namespace): volumes
/// (projected sources included), env and envFrom of every container, image pull
/// secrets, its service account.
pub fn pod_refers(pod: &Value, kind: &str, name: &str) -> bool {
    let spec = &pod["spec"];
    let empty = Vec::new();
    let arr = |v: &Value| v.as_array().unwrap_or(&empty).clone();
    match kind {
        "serviceaccount" => {
            let sa = spec["serviceAccountName"].as_str().filter(|s| !s.is_empty()).unwrap_or("default");
            sa == name
        }
        "pvc" => {
            arr(&spec["volumes"]).iter().any(|v| names(v, &["persistentVolumeClaim", "claimName"]).any(|n| n == name))
        }
        "secret" | "configmap" => {
            let (vol, vkey, proj, env_key, from_key) = if kind == "secret" {
                ("secret", "secretName", "secret", "secretKeyRef", "secretRef")
            } else {
                ("configMap", "name", "configMap", "configMapKeyRef", "configMapRef")
            };
            if kind == "secret" && arr(&spec["imagePullSecrets"]).iter().any(|s| s["name"] == name) {
                return true;
            }
            for v in arr(&spec["volumes"]) {
                if names(&v, &[vol, vkey]).any(|n| n == name) {
                    return true;
                }
                if arr(&v["projected"]["sources"]).iter().any(|s| names(s, &[proj, "name"]).any(|n| n == name)) {
                    return true;
                }
                // Volume plugins that name a Secret (CSI, iSCSI, ...) by secretRef.
                if kind == "secret"
                    && v.as_object()
                        .is_some_and(|o| o.values().any(|src| names(src, &["secretRef", "name"]).any(|n| n == name)))
                {
                    return true;
                }
            }
            let containers = ["containers", "initContainers", "ephemeralContainers"];
            containers.iter().flat_map(|c| arr(&spec[*c])).any(|c| {
                arr(&c["env"]).iter().any(|e| names(e, &["valueFrom", env_key, "name"]).any(|n| n == name))
                    || arr(&c["envFrom"]).iter().any(|e| names(e, &[from_key, "name"]).any(|n| n == name))
            })
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nodes_reach_only_their_own() {
        let get = |res: &str, ns: &str, name: &str| Attrs::resource("get", "", res, "", ns, name);
        assert_eq!(judge("a", &get("nodes", "", "b")), ALLOW);
        assert!(matches!(
            judge("a", &Attrs::resource("update", "", "nodes", "status", "", "b")),
            Need::Decided(Decision::Deny(m)) if m == r#"node "a" is not allowed to modify node "b""#
        ));
        assert_eq!(judge("a", &Attrs::resource("patch", "", "nodes", "status", "", "a")), ALLOW);
        assert!(matches!(judge("a", &get("secrets", "d", "s")), Need::Referenced { kind: "secret", .. }));
        assert!(matches!(
            judge("a", &Attrs::resource("list", "", "secrets", "", "d", "")),
            Need::Decided(Decision::Deny(_))
        ));
        assert!(matches!(judge("a", &Attrs::resource("update", "", "pods", "status", "d", "p")), Need::OwnPod { .. }));
        assert_eq!(
            judge("a", &Attrs::resource("update", "coordination.k8s.io", "leases", "", "kube-node-lease", "a")),
            ALLOW
        );
        assert!(matches!(
            judge("a", &Attrs::resource("update", "coordination.k8s.io", "leases", "", "kube-node-lease", "b")),
            Need::Decided(Decision::Deny(_))
        ));
        assert_eq!(
            judge("a", &Attrs::resource("list", "apps", "deployments", "", "", "")),
            Need::Decided(Decision::NoOpinion)
        );
    }

    #[test]
    fn pods_refer_to_what_they_mount_and_read() {
        let pod = json!({"spec": {
            "serviceAccountName": "builder",
            "imagePullSecrets": [{"name": "pull"}],
            "volumes": [{"name": "a", "secret": {"secretName": "vol"}},
                        {"name": "b", "projected": {"sources": [{"configMap": {"name": "proj"}}]}},
                        {"name": "c", "persistentVolumeClaim": {"claimName": "data"}}],
            "containers": [{"name": "c", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "env", "key": "k"}}}],
                            "envFrom": [{"configMapRef": {"name": "from"}}]}]}});
        for (k, n) in [
            ("secret", "vol"),
            ("secret", "pull"),
            ("secret", "env"),
            ("configmap", "proj"),
            ("configmap", "from"),
            ("pvc", "data"),
            ("serviceaccount", "builder"),
        ] {
            assert!(pod_refers(&pod, k, n), "{k} {n}");
        }
        assert!(!pod_refers(&pod, "secret", "other"));
        assert!(!pod_refers(&pod, "configmap", "vol"));
        assert!(pod_refers(&json!({"spec": {}}), "serviceaccount", "default"));
    }
}
