//! The default ClusterRoles and ClusterRoleBindings every cluster starts with: the
//! ones Kubernetes ships (cluster-admin, admin/edit/view aggregated from
//! `system:aggregate-to-*`, the discovery and self-review roles, the node, scheduler
//! and controller-manager roles) and rk's own (its agents' network components and
//! the node simulator). Written at start with `rbac.authorization.kubernetes.io/autoupdate`
//! so a newer rk brings them up to date; a role with autoupdate "false" is left alone.

use serde_json::{Value, json};

/// The user the agents' network components (service proxy, DNS, ingress, network
/// policy, routes) act as, as k3s's `system:k3s-controller`.
pub const NETWORK_USER: &str = "system:rk-network";
/// The user `rk agent --simulate` acts as.
pub const SIMULATOR_USER: &str = "system:rk-simulator";
/// The label the defaults carry, as Kubernetes's do.
pub const BOOTSTRAP_LABEL: &str = "kubernetes.io/bootstrapping";

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];

fn r(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Value {
    json!({"verbs": verbs, "apiGroups": groups, "resources": resources})
}

fn paths(verbs: &[&str], urls: &[&str]) -> Value {
    json!({"verbs": verbs, "nonResourceURLs": urls})
}

fn meta(name: &str, labels: Value) -> Value {
    let mut l = json!({BOOTSTRAP_LABEL: "rbac-defaults"});
    if let Some(m) = labels.as_object() {
        for (k, v) in m {
            l[k] = v.clone();
        }
    }
    json!({"name": name, "labels": l, "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}})
}

fn role(name: &str, rules: Vec<Value>) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": meta(name, json!({})), "rules": rules})
}

fn aggregate_to(name: &str, to: &str, rules: Vec<Value>) -> Value {
    let mut v = role(name, rules);
    v["metadata"] = meta(name, json!({format!("rbac.authorization.k8s.io/aggregate-to-{to}"): "true"}));
    v
}

fn aggregated(name: &str, selectors: &[&str], extra_labels: Value) -> Value {
    let sel: Vec<Value> = selectors
        .iter()
        .map(|s| json!({"matchLabels": {format!("rbac.authorization.k8s.io/aggregate-to-{s}"): "true"}}))
        .collect();
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": meta(name, extra_labels),
           "aggregationRule": {"clusterRoleSelectors": sel}, "rules": []})
}

/// The default ClusterRoles.
pub fn cluster_roles() -> Vec<Value> {
    let core = &[""];
    let view_core = &[
        "pods",
        "pods/log",
        "pods/status",
        "configmaps",
        "endpoints",
        "persistentvolumeclaims",
        "persistentvolumeclaims/status",
        "replicationcontrollers",
        "replicationcontrollers/scale",
        "replicationcontrollers/status",
        "serviceaccounts",
        "services",
        "services/status",
        "bindings",
        "events",
        "limitranges",
        "resourcequotas",
        "resourcequotas/status",
        "namespaces",
        "namespaces/status",
    ];
    let apps = &[
        "controllerrevisions",
        "daemonsets",
        "daemonsets/status",
        "deployments",
        "deployments/scale",
        "deployments/status",
        "replicasets",
        "replicasets/scale",
        "replicasets/status",
        "statefulsets",
        "statefulsets/scale",
        "statefulsets/status",
    ];
    let events_write = r(&["create", "patch", "update"], &["", "events.k8s.io"], &["events"]);
    vec![
        role("cluster-admin", vec![r(&["*"], &["*"], &["*"]), paths(&["*"], &["*"])]),
        role(
            "system:discovery",
            vec![paths(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            )],
        ),
        role(
            "system:public-info-viewer",
            vec![paths(&["get"], &["/healthz", "/livez", "/readyz", "/version", "/version/"])],
        ),
        role(
            "system:basic-user",
            vec![
                r(&["create"], &["authorization.k8s.io"], &["selfsubjectaccessreviews", "selfsubjectrulesreviews"]),
                r(&["create"], &["authentication.k8s.io"], &["selfsubjectreviews"]),
            ],
        ),
        role(
            "system:service-account-issuer-discovery",
            vec![paths(
                &["get"],
                &[
                    "/.well-known/openid-configuration",
                    "/.well-known/openid-configuration/",
                    "/openid/v1/jwks",
                    "/openid/v1/jwks/",
                ],
            )],
        ),
        role(
            "system:auth-delegator",
            vec![
                r(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                r(&["create"], &["authorization.k8s.io"], &["subjectaccessreviews"]),
            ],
        ),
        aggregated("admin", &["admin"], json!({"rbac.authorization.k8s.io/aggregate-to-cluster-admin": "true"})),
        aggregated("edit", &["edit"], json!({"rbac.authorization.k8s.io/aggregate-to-admin": "true"})),
        aggregated("view", &["view"], json!({"rbac.authorization.k8s.io/aggregate-to-edit": "true"})),
        aggregate_to(
            "system:aggregate-to-admin",
            "admin",
            vec![
                r(
                    &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
                    &["rbac.authorization.k8s.io"],
                    &["rolebindings", "roles"],
                ),
                r(&["create"], &["authorization.k8s.io"], &["localsubjectaccessreviews"]),
            ],
        ),
        aggregate_to(
            "system:aggregate-to-edit",
            "edit",
            vec![
                r(&["impersonate"], core, &["serviceaccounts"]),
                r(WRITE, core, &["pods", "pods/attach", "pods/proxy", "pods/exec", "pods/portforward"]),
                r(&["create"], core, &["pods/eviction"]),
                r(
                    WRITE,
                    core,
                    &[
                        "configmaps",
                        "events",
                        "persistentvolumeclaims",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "secrets",
                        "serviceaccounts",
                        "services",
                        "services/proxy",
                    ],
                ),
                r(&["create"], core, &["serviceaccounts/token"]),
                r(
                    WRITE,
                    &["apps"],
                    &[
                        "daemonsets",
                        "deployments",
                        "deployments/rollback",
                        "deployments/scale",
                        "replicasets",
                        "replicasets/scale",
                        "statefulsets",
                        "statefulsets/scale",
                    ],
                ),
                r(WRITE, &["autoscaling"], &["horizontalpodautoscalers"]),
                r(WRITE, &["batch"], &["cronjobs", "jobs"]),
                r(WRITE, &["policy"], &["poddisruptionbudgets"]),
                r(WRITE, &["networking.k8s.io"], &["ingresses", "networkpolicies"]),
                r(WRITE, &["coordination.k8s.io"], &["leases"]),
            ],
        ),
        aggregate_to(
            "system:aggregate-to-view",
            "view",
            vec![
                r(READ, core, view_core),
                r(READ, &["discovery.k8s.io"], &["endpointslices"]),
                r(READ, &["apps"], apps),
                r(READ, &["autoscaling"], &["horizontalpodautoscalers", "horizontalpodautoscalers/status"]),
                r(READ, &["batch"], &["cronjobs", "cronjobs/status", "jobs", "jobs/status"]),
                r(READ, &["policy"], &["poddisruptionbudgets", "poddisruptionbudgets/status"]),
                r(READ, &["networking.k8s.io"], &["ingresses", "ingresses/status", "networkpolicies"]),
                r(READ, &["coordination.k8s.io"], &["leases"]),
            ],
        ),
        // What the edit role reads beyond view (Secrets, the connect subresources).
        aggregate_to(
            "system:aggregate-to-edit-read",
            "edit",
            vec![r(
                READ,
                core,
                &["pods/attach", "pods/exec", "pods/portforward", "pods/proxy", "secrets", "services/proxy"],
            )],
        ),
        role(
            "system:node",
            vec![
                r(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                r(&["create"], &["authorization.k8s.io"], &["localsubjectaccessreviews", "subjectaccessreviews"]),
                r(READ, core, &["services", "endpoints"]),
                r(&["create", "get", "list", "watch", "update", "patch", "delete"], core, &["nodes"]),
                r(&["patch", "update"], core, &["nodes/status"]),
                events_write.clone(),
                r(&["get", "list", "watch", "create", "delete"], core, &["pods"]),
                r(&["patch", "update"], core, &["pods/status"]),
                r(&["create"], core, &["pods/eviction"]),
                r(&["get"], core, &["secrets", "configmaps", "persistentvolumeclaims", "persistentvolumes"]),
                r(&["create"], core, &["serviceaccounts/token"]),
                r(&["get", "list", "watch"], &["storage.k8s.io"], &["csidrivers", "csinodes", "volumeattachments"]),
                r(&["get", "list", "watch"], &["node.k8s.io"], &["runtimeclasses"]),
                r(&["create", "delete", "get", "patch", "update"], &["coordination.k8s.io"], &["leases"]),
            ],
        ),
        role(
            "system:node-proxier",
            vec![
                r(&["list", "watch"], core, &["services", "endpoints"]),
                r(&["get", "list", "watch"], core, &["nodes"]),
                r(&["list", "watch"], &["discovery.k8s.io"], &["endpointslices"]),
                events_write.clone(),
            ],
        ),
        role(
            "system:kube-scheduler",
            vec![
                events_write.clone(),
                r(&["create"], &["coordination.k8s.io"], &["leases"]),
                r(&["get", "update"], &["coordination.k8s.io"], &["leases"]),
                r(
                    READ,
                    core,
                    &[
                        "nodes",
                        "namespaces",
                        "services",
                        "replicationcontrollers",
                        "persistentvolumeclaims",
                        "persistentvolumes",
                    ],
                ),
                r(&["delete", "get", "list", "watch"], core, &["pods"]),
                r(&["create"], core, &["bindings", "pods/binding"]),
                r(&["patch", "update"], core, &["pods/status"]),
                r(READ, &["apps"], &["replicasets", "statefulsets"]),
                r(READ, &["policy"], &["poddisruptionbudgets"]),
                r(
                    READ,
                    &["storage.k8s.io"],
                    &["csidrivers", "csinodes", "csistoragecapacities", "storageclasses", "volumeattachments"],
                ),
                r(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                r(&["create"], &["authorization.k8s.io"], &["subjectaccessreviews"]),
                r(READ, core, &["configmaps"]),
            ],
        ),
        // rk runs every controller under this one identity, so its role is the union of
        // the per-controller roles Kubernetes has (the garbage collector's included,
        // which may read and delete anything), short of RBAC's escalate/bind/impersonate.
        role(
            "system:kube-controller-manager",
            vec![
                r(&["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"], &["*"], &["*"]),
                r(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                r(&["create"], &["authorization.k8s.io"], &["subjectaccessreviews"]),
            ],
        ),
        role(
            NETWORK_USER,
            vec![
                r(READ, core, &["nodes", "namespaces", "pods", "services", "endpoints"]),
                r(READ, &["discovery.k8s.io"], &["endpointslices"]),
                r(READ, &["networking.k8s.io"], &["ingresses", "ingressclasses", "networkpolicies"]),
                r(&["patch", "update"], &["networking.k8s.io"], &["ingresses/status"]),
                r(&["patch", "update"], core, &["services/status"]),
                // The native ingress controller serves TLS from Secrets in any namespace,
                // as Traefik's role in k3s allows.
                r(READ, core, &["secrets"]),
                events_write.clone(),
            ],
        ),
        role(
            SIMULATOR_USER,
            vec![
                r(&["create", "get", "list", "watch", "update", "patch", "delete"], core, &["nodes", "nodes/status"]),
                r(&["get", "list", "watch", "delete"], core, &["pods"]),
                r(&["patch", "update"], core, &["pods/status"]),
                r(
                    &["create", "delete", "get", "list", "watch", "patch", "update"],
                    &["coordination.k8s.io"],
                    &["leases"],
                ),
                events_write,
            ],
        ),
    ]
}

fn binding(name: &str, role: &str, subjects: Value) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": meta(name, json!({})),
           "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
           "subjects": subjects})
}

fn group(name: &str) -> Value {
    json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": name})
}

fn user(name: &str) -> Value {
    json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": name})
}

/// The default ClusterRoleBindings. `system:node` is not bound: nodes are judged by
/// the Node authorizer, as in Kubernetes.
pub fn cluster_role_bindings() -> Vec<Value> {
    vec![
        binding("cluster-admin", "cluster-admin", json!([group(super::MASTERS)])),
        binding("system:discovery", "system:discovery", json!([group(super::AUTHENTICATED)])),
        binding("system:basic-user", "system:basic-user", json!([group(super::AUTHENTICATED)])),
        binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            json!([group(super::AUTHENTICATED), group("system:unauthenticated")]),
        ),
        binding(
            "system:service-account-issuer-discovery",
            "system:service-account-issuer-discovery",
            json!([group(super::SERVICE_ACCOUNTS)]),
        ),
        binding("system:node-proxier", "system:node-proxier", json!([user("system:kube-proxy")])),
        binding("system:kube-scheduler", "system:kube-scheduler", json!([user("system:kube-scheduler")])),
        binding(
            "system:kube-controller-manager",
            "system:kube-controller-manager",
            json!([user("system:kube-controller-manager")]),
        ),
        binding(NETWORK_USER, NETWORK_USER, json!([user(NETWORK_USER)])),
        binding(SIMULATOR_USER, SIMULATOR_USER, json!([user(SIMULATOR_USER)])),
    ]
}

/// The rules of an aggregated ClusterRole: the union (without repeats) of the rules
/// of the roles its selectors pick, in name order, as the aggregation controller
/// writes them.
pub fn aggregate(selectors: &[Value], roles: &[(String, Value, Vec<Value>)]) -> Vec<Value> {
    let mut picked: Vec<&(String, Value, Vec<Value>)> = roles
        .iter()
        .filter(|(_, labels, _)| {
            let labels: std::collections::BTreeMap<&str, &str> = labels
                .as_object()
                .map(|m| m.iter().filter_map(|(k, v)| Some((k.as_str(), v.as_str()?))).collect())
                .unwrap_or_default();
            selectors.iter().any(|s| {
                crate::api::selectors::LabelSelector::from_label_selector(s).is_ok_and(|sel| sel.matches(&labels))
            })
        })
        .collect();
    picked.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out: Vec<Value> = Vec::new();
    for (_, _, rules) in picked {
        for r in rules {
            if !out.contains(r) {
                out.push(r.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_well_formed_and_aggregate() {
        let roles = cluster_roles();
        for r in &roles {
            serde_json::from_value::<k8s_openapi::api::rbac::v1::ClusterRole>(r.clone()).expect("a ClusterRole");
        }
        for b in cluster_role_bindings() {
            let b: k8s_openapi::api::rbac::v1::ClusterRoleBinding = serde_json::from_value(b).unwrap();
            assert!(roles.iter().any(|r| r["metadata"]["name"] == b.role_ref.name), "{} is defined", b.role_ref.name);
        }
        let table: Vec<(String, Value, Vec<Value>)> = roles
            .iter()
            .map(|r| {
                let rules = r["rules"].as_array().cloned().unwrap_or_default();
                (r["metadata"]["name"].as_str().unwrap().to_string(), r["metadata"]["labels"].clone(), rules)
            })
            .collect();
        let view = roles.iter().find(|r| r["metadata"]["name"] == "view").unwrap();
        let sel = view["aggregationRule"]["clusterRoleSelectors"].as_array().unwrap();
        let rules = aggregate(sel, &table);
        assert!(rules.iter().any(|r| r["resources"].as_array().unwrap().contains(&json!("pods/log"))));
        assert!(
            !rules.iter().any(|r| r["resources"].as_array().unwrap().contains(&json!("secrets"))),
            "view reads no Secrets"
        );
    }
}
