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

/// A label's namespace (the part before `/`), lower-cased.
fn label_namespace(label: &str) -> String {
    label.split_once('/').map(|(ns, _)| ns.to_ascii_lowercase()).unwrap_or_default()
}

/// The labels the kubelet may set on its Node (Kubernetes's kubeletapis.IsKubeletLabel).
pub fn is_kubelet_label(label: &str) -> bool {
    const LABELS: [&str; 11] = [
        "kubernetes.io/hostname",
        "kubernetes.io/os",
        "kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/arch",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "topology.kubernetes.io/region",
        "topology.kubernetes.io/zone",
        "failure-domain.beta.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
    ];
    if LABELS.contains(&label) {
        return true;
    }
    let ns = label_namespace(label);
    ["kubelet.kubernetes.io", "node.kubernetes.io"].iter().any(|a| ns == *a || ns.ends_with(&format!(".{a}")))
}

/// Labels a node may not set on itself: `node-restriction.kubernetes.io/` ones, and
/// `kubernetes.io` / `k8s.io` ones outside the kubelet's set (so a node cannot steer
/// workloads meant for others to itself).
pub fn forbidden_labels<'a>(labels: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut bad: Vec<String> = labels
        .filter(|l| {
            let ns = label_namespace(l);
            let restricted = ns == "node-restriction.kubernetes.io" || ns.ends_with(".node-restriction.kubernetes.io");
            let kube = ["kubernetes.io", "k8s.io"].iter().any(|d| ns == *d || ns.ends_with(&format!(".{d}")));
            restricted || (kube && !is_kubelet_label(l))
        })
        .cloned()
        .collect();
    bad.sort();
    bad.dedup();
    bad
}

/// NodeRestriction on a node's write of a Node (`old` None for a create): only its
/// own, with no labels outside the allowed set and, after registering, no taint
/// changes. The message is Kubernetes's.
pub fn restrict_node_write(node: &str, obj: &Value, old: Option<&Value>) -> Result<(), String> {
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    if name != node {
        return Err(format!("node {node:?} is not allowed to modify node {name:?}"));
    }
    let labels = |v: &Value| -> std::collections::BTreeMap<String, String> {
        serde_json::from_value(v["metadata"]["labels"].clone()).unwrap_or_default()
    };
    let new = labels(obj);
    let Some(old) = old else {
        let bad = forbidden_labels(new.keys());
        if !bad.is_empty() {
            return Err(format!("node {node:?} is not allowed to set the following labels: {}", bad.join(", ")));
        }
        return Ok(());
    };
    let taints = |v: &Value| v["spec"]["taints"].as_array().cloned().unwrap_or_default();
    if taints(obj) != taints(old) {
        return Err(format!("node {node:?} is not allowed to modify taints"));
    }
    let before = labels(old);
    let changed = new
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(v))
        .map(|(k, _)| k)
        .chain(before.keys().filter(|k| !new.contains_key(*k)));
    let bad = forbidden_labels(changed);
    if !bad.is_empty() {
        return Err(format!("is not allowed to modify labels: {}", bad.join(", ")));
    }
    Ok(())
}

/// NodeRestriction on a pod a node creates: only a mirror pod (of a static pod),
/// bound to that node, owned by nothing but the Node, using no service account and
/// no Secret, ConfigMap or claim. The messages are Kubernetes's.
pub fn restrict_pod_create(node: &str, pod: &Value) -> Result<(), String> {
    if !pod["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_string() {
        return Err(format!(
            "pod does not have \"kubernetes.io/config.mirror\" annotation, node {node:?} can only create mirror pods"
        ));
    }
    if pod["spec"]["nodeName"].as_str() != Some(node) {
        return Err(format!("node {node:?} can only create pods with spec.nodeName set to itself"));
    }
    let owners = pod["metadata"]["ownerReferences"].as_array().cloned().unwrap_or_default();
    if owners.len() > 1
        || owners.first().is_some_and(|o| o["apiVersion"] != "v1" || o["kind"] != "Node" || o["name"] != node)
    {
        return Err(format!("node {node:?} can only create pods with an owner reference set to itself"));
    }
    if pod["spec"]["serviceAccountName"].as_str().is_some_and(|s| !s.is_empty()) {
        return Err(format!("node {node:?} can not create pods that use service accounts"));
    }
    for (kind, plural) in [("secret", "secrets"), ("configmap", "configmaps"), ("pvc", "persistentvolumeclaims")] {
        if pod_uses(pod, kind) {
            return Err(format!("node {node:?} can not create pods that reference {plural}"));
        }
    }
    Ok(())
}

/// Whether a pod refers to any object of `kind` (`secret`, `configmap`, `pvc`).
fn pod_uses(pod: &Value, kind: &str) -> bool {
    let spec = &pod["spec"];
    let all = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let (vol, env, from) = match kind {
        "secret" => ("secret", "secretKeyRef", "secretRef"),
        "configmap" => ("configMap", "configMapKeyRef", "configMapRef"),
        _ => {
            return all(&spec["volumes"])
                .iter()
                .any(|v| v["persistentVolumeClaim"].is_object() || v["ephemeral"].is_object());
        }
    };
    if kind == "secret" && !all(&spec["imagePullSecrets"]).is_empty() {
        return true;
    }
    let in_volumes = all(&spec["volumes"])
        .iter()
        .any(|v| v[vol].is_object() || all(&v["projected"]["sources"]).iter().any(|s| s[vol].is_object()));
    let in_containers = ["containers", "initContainers", "ephemeralContainers"].iter().any(|f| {
        all(&spec[*f]).iter().any(|c| {
            all(&c["env"]).iter().any(|e| e["valueFrom"][env].is_object())
                || all(&c["envFrom"]).iter().any(|e| e[from].is_object())
        })
    });
    in_volumes || in_containers
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
