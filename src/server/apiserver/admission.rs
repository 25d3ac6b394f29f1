//! Admission beyond validation: PodSecurity (namespace labels
//! `pod-security.kubernetes.io/enforce|warn`, baseline and restricted, with the
//! upstream messages) and ResourceQuota (a write that would take a namespace over a
//! quota is refused with Kubernetes's `exceeded quota` message).

use std::collections::BTreeMap;

use serde_json::Value;

use super::ApiServer;
use super::handlers::Call;
use crate::api::limitrange;
use crate::api::podsecurity::{self, Level};
use crate::api::quota;
use crate::api::status::ApiError;

/// The pod spec inside an object: the pod's own, or a workload's template.
fn pod_spec<'a>(group: &str, plural: &str, obj: &'a Value) -> Option<&'a Value> {
    match (group, plural) {
        ("", "pods") => Some(&obj["spec"]),
        ("", "replicationcontrollers" | "podtemplates")
        | ("apps", "deployments" | "replicasets" | "statefulsets" | "daemonsets")
        | ("batch", "jobs") => Some(&obj["spec"]["template"]["spec"]).filter(|s| s.is_object()),
        ("batch", "cronjobs") => {
            Some(&obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]).filter(|s| s.is_object())
        }
        _ => None,
    }
}

impl ApiServer {
    async fn namespace_labels(&self, ns: &str) -> Result<BTreeMap<String, String>, ApiError> {
        let v = self.stored("namespaces", None, ns).await.map_err(ApiError::internal)?;
        Ok(v.and_then(|v| serde_json::from_value(v["metadata"]["labels"].clone()).ok()).unwrap_or_default())
    }

    /// PodSecurity for a create (old None) or an update of a pod or pod template:
    /// refuses a pod its namespace's `enforce` level forbids; returns the warnings
    /// its `warn` level asks for.
    pub(super) async fn admit_pod_security(
        &self,
        call: &Call,
        obj: &Value,
        old: Option<&Value>,
    ) -> Result<Vec<String>, ApiError> {
        let (Some(ns), None) = (call.ns.as_deref(), call.sub.as_deref()) else { return Ok(vec![]) };
        let Some(spec) = pod_spec(call.def.group, call.def.plural, obj) else { return Ok(vec![]) };
        // Updates that leave the pod spec alone (labels, status) are not re-judged.
        if let Some(o) = old
            && pod_spec(call.def.group, call.def.plural, o) == Some(spec)
        {
            return Ok(vec![]);
        }
        let labels = self.namespace_labels(ns).await?;
        let level = |mode: &str| {
            let l = labels.get(&format!("pod-security.kubernetes.io/{mode}")).and_then(|l| Level::parse(l))?;
            let v = labels.get(&format!("pod-security.kubernetes.io/{mode}-version")).cloned();
            Some((l, v.unwrap_or_else(|| "latest".to_string())))
        };
        let is_pod = call.def.group.is_empty() && call.def.plural == "pods";
        if is_pod && let Some((l, v)) = level("enforce") {
            let bad = podsecurity::check(l, spec);
            if !bad.is_empty() {
                return Err(Self::refused(call, obj, &podsecurity::message(l, &v, &bad)));
            }
        }
        // What the audit and warn modes report: "would violate PodSecurity ...".
        let would = |mode: &str| {
            let (l, v) = level(mode)?;
            let bad = podsecurity::check(l, spec);
            (!bad.is_empty())
                .then(|| format!("would {}", podsecurity::message(l, &v, &bad).replacen("violates", "violate", 1)))
        };
        if let Some(text) = would("audit") {
            call.note("pod-security.kubernetes.io/audit-violations", text);
        }
        let warnings: Vec<String> = would("warn").into_iter().collect();
        Ok(warnings)
    }

    /// The live objects of a kind in a namespace (all of a cluster-scoped kind), decoded.
    pub(super) async fn objects_in(&self, group: &str, plural: &str, ns: &str) -> Result<Vec<Value>, ApiError> {
        let reg = self.reg();
        let Some(def) = reg.all().iter().find(|d| d.group == group && d.plural == plural) else { return Ok(vec![]) };
        let prefix = def.list_prefix(Some(ns));
        let page = self.store.list(&prefix, None, 0, 0).await.map_err(ApiError::internal)?;
        Ok(page.kvs.iter().filter_map(|kv| serde_json::from_slice(&kv.value).ok()).collect())
    }

    /// What a namespace uses of each of `keys`.
    pub(crate) async fn quota_used(&self, ns: &str, keys: &[String]) -> Result<BTreeMap<String, f64>, ApiError> {
        let mut cache: BTreeMap<(String, String), Vec<Value>> = BTreeMap::new();
        let mut used = BTreeMap::new();
        for k in keys {
            let Some(kind) = quota::kind_of(k) else { continue };
            if !cache.contains_key(&kind) {
                let objs = self.objects_in(&kind.0, &kind.1, ns).await?;
                cache.insert(kind.clone(), objs);
            }
            used.insert(k.clone(), cache[&kind].iter().map(|o| quota::usage(k, o)).sum());
        }
        Ok(used)
    }

    /// ResourceQuota for a create: refuses `obj` if it would take its namespace over
    /// a quota, or if a quota on compute resources finds a container that sets none.
    /// The guard it returns serialises quota'd creates until the caller has stored.
    pub(super) async fn admit_quota(
        &self,
        call: &Call,
        obj: &Value,
    ) -> Result<Option<tokio::sync::MutexGuard<'_, ()>>, ApiError> {
        let Some(ns) = call.ns.as_deref() else { return Ok(None) };
        if call.sub.is_some() {
            return Ok(None);
        }
        let quotas = self.objects_in("", "resourcequotas", ns).await?;
        if quotas.is_empty() {
            return Ok(None);
        }
        let serial = self.quota_lock.lock().await;
        let forbidden = |msg: String| Self::refused(call, obj, &msg);
        for q in &quotas {
            let qname = crate::api::meta::name(q);
            let hard: BTreeMap<String, String> = serde_json::from_value(q["spec"]["hard"].clone()).unwrap_or_default();
            let keys: Vec<String> = hard
                .keys()
                .filter(|k| quota::kind_of(k).is_some_and(|(g, p)| g == call.def.group && p == call.def.plural))
                .cloned()
                .collect();
            if keys.is_empty() {
                continue;
            }
            let is_pod = call.def.group.is_empty() && call.def.plural == "pods";
            if is_pod {
                let missing: Vec<String> = keys
                    .iter()
                    .filter_map(|k| {
                        let m = quota::missing(obj, k);
                        (!m.is_empty()).then(|| format!("{k} for: {}", m.join(",")))
                    })
                    .collect();
                if !missing.is_empty() {
                    return Err(forbidden(format!("failed quota: {qname}: must specify {}", missing.join("; "))));
                }
            }
            let used = self.quota_used(ns, &keys).await?;
            // The exceeded resources, as `key=value` for what is asked, used and allowed.
            let (mut requested, mut in_use, mut limited) = (Vec::new(), Vec::new(), Vec::new());
            for k in &keys {
                let limit = hard[k].as_str();
                let Some(limit_v) = crate::server::scheduler::parse_quantity(limit) else { continue };
                let want = quota::usage(k, obj);
                let have = used.get(k).copied().unwrap_or(0.0);
                if want > 0.0 && have + want > limit_v + 1e-9 {
                    requested.push(format!("{k}={}", quota::format(k, want)));
                    in_use.push(format!("{k}={}", quota::format(k, have)));
                    limited.push(format!("{k}={limit}"));
                }
            }
            if !requested.is_empty() {
                return Err(forbidden(format!(
                    "exceeded quota: {qname}, requested: {}, used: {}, limited: {}",
                    requested.join(","),
                    in_use.join(","),
                    limited.join(","),
                )));
            }
        }
        Ok(Some(serial))
    }
}

/// Where the ServiceAccount admission plugin mounts a pod's API credentials.
pub const SA_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

impl ApiServer {
    /// The ServiceAccount admission plugin (mutating, on pod create): the pod runs as
    /// `default` unless it names an account, and, unless it or its account opts out
    /// with `automountServiceAccountToken: false`, gets Kubernetes's
    /// `kube-api-access-<suffix>` projected volume (a bound token the kubelet keeps
    /// fresh, `ca.crt`, `namespace`) mounted in every container. A pod without
    /// imagePullSecrets gets its account's.
    pub(super) async fn admit_service_account(&self, call: &Call, obj: &mut Value) -> Result<(), ApiError> {
        if !(call.def.group.is_empty() && call.def.plural == "pods") || call.sub.is_some() {
            return Ok(());
        }
        // Mirror pods (static pods) get nothing, as in Kubernetes.
        if obj["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_string() {
            return Ok(());
        }
        let ns = call.ns.clone().unwrap_or_default();
        let spec = &mut obj["spec"];
        let sa = spec["serviceAccountName"]
            .as_str()
            .or(spec["serviceAccount"].as_str())
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
            .to_string();
        spec["serviceAccountName"] = Value::String(sa.clone());
        let account = self.stored("serviceaccounts", Some(&ns), &sa).await.map_err(ApiError::internal)?;
        // A pod that names no pull secrets gets its account's.
        let own = spec["imagePullSecrets"].as_array().is_some_and(|a| !a.is_empty());
        if let Some(pull) = account.as_ref().map(|a| &a["imagePullSecrets"]).filter(|p| !own && p.is_array()) {
            spec["imagePullSecrets"] = pull.clone();
        }
        let automount = match spec["automountServiceAccountToken"].as_bool() {
            Some(b) => b,
            None => account.and_then(|v| v["automountServiceAccountToken"].as_bool()).unwrap_or(true),
        };
        if !automount {
            return Ok(());
        }
        let kinds = ["initContainers", "containers"];
        let mounted = kinds
            .iter()
            .flat_map(|k| spec[*k].as_array().cloned().unwrap_or_default())
            .any(|c| c["volumeMounts"].as_array().is_some_and(|m| m.iter().any(|m| m["mountPath"] == SA_MOUNT)));
        if mounted {
            return Ok(());
        }
        let suffix: String = {
            use rand::Rng;
            const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
            let mut rng = rand::rng();
            (0..5).map(|_| ALPHA[rng.random_range(0..ALPHA.len())] as char).collect()
        };
        let name = format!("kube-api-access-{suffix}");
        let volume = serde_json::json!({"name": name, "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace",
                                        "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}});
        match spec["volumes"].as_array_mut() {
            Some(v) => v.push(volume),
            None => spec["volumes"] = serde_json::json!([volume]),
        }
        let mount = serde_json::json!({"name": name, "readOnly": true, "mountPath": SA_MOUNT});
        for k in kinds {
            for c in spec[k].as_array_mut().into_iter().flatten() {
                match c["volumeMounts"].as_array_mut() {
                    Some(m) => m.push(mount.clone()),
                    None => c["volumeMounts"] = serde_json::json!([mount.clone()]),
                }
            }
        }
        Ok(())
    }
}

/// The PriorityClasses every cluster has, with their values and descriptions.
pub const SYSTEM_PRIORITY_CLASSES: [(&str, i64, &str); 2] = [
    (
        "system-node-critical",
        2_000_001_000,
        "Used for system critical pods that must not be moved from their current node.",
    ),
    (
        "system-cluster-critical",
        2_000_000_000,
        "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
    ),
];

/// The highest priority a user's PriorityClass may have.
const MAX_USER_PRIORITY: i64 = 1_000_000_000;

impl ApiServer {
    /// A 403 for `obj` with Kubernetes's admission wording.
    fn refused(call: &Call, obj: &Value, why: &str) -> ApiError {
        let name = crate::api::meta::name(obj);
        ApiError::forbidden(
            call.target(name),
            format!("{} {name:?} is forbidden: {why}", call.target(name).qualified()),
        )
    }

    /// NodeRestriction: what a node (`system:node:<name>`) may write of Nodes and pods
    /// beyond what the Node authorizer lets it touch (see [`crate::server::auth::node`]).
    pub(super) fn admit_node_restriction(&self, call: &Call, obj: &Value, old: Option<&Value>) -> Result<(), ApiError> {
        use crate::server::auth::node;
        let Some(n) = call.user.as_ref().and_then(|u| u.node()) else { return Ok(()) };
        if call.sub.is_some() || !call.def.group.is_empty() {
            return Ok(());
        }
        let r = match call.def.plural {
            "nodes" => node::restrict_node_write(n, obj, old),
            "pods" if old.is_none() => node::restrict_pod_create(n, obj),
            _ => Ok(()),
        };
        r.map_err(|why| Self::refused(call, obj, &why))
    }

    /// The params of each binding whose policy has a `paramKind`: the object its
    /// `paramRef` names, or those its selector picks, in the paramRef's namespace (or
    /// the request's, for a namespaced param kind).
    async fn policy_params(
        &self,
        policies: &[Value],
        bindings: &[Value],
        request_ns: &str,
    ) -> Result<crate::api::vap::Params, ApiError> {
        let mut out = crate::api::vap::Params::new();
        for b in bindings {
            let pname = b["spec"]["policyName"].as_str().unwrap_or("");
            let Some(p) = policies.iter().find(|p| p["metadata"]["name"] == pname) else { continue };
            let kind = &p["spec"]["paramKind"];
            if kind.is_null() {
                continue;
            }
            let bname = b["metadata"]["name"].as_str().unwrap_or("").to_string();
            let api_version = kind["apiVersion"].as_str().unwrap_or("");
            let (group, _) = api_version.rsplit_once('/').unwrap_or(("", api_version));
            let kind_name = kind["kind"].as_str().unwrap_or("");
            let reg = self.reg();
            let Some(def) = reg.by_kind(group, kind_name) else {
                out.insert(
                    bname,
                    Err(format!(
                        "failed to configure binding: paramKind {api_version}, Kind={kind_name} is not served"
                    )),
                );
                continue;
            };
            let r = &b["spec"]["paramRef"];
            if r.is_null() {
                out.insert(bname, Err("failed to configure binding: no paramRef specified".to_string()));
                continue;
            }
            let ns = match r["namespace"].as_str().filter(|n| !n.is_empty()) {
                Some(n) => n,
                None if def.namespaced && request_ns.is_empty() => {
                    out.insert(
                        bname,
                        Err("failed to configure binding: cannot use namespaced paramRef in policy binding that matches cluster-scoped resources".to_string()),
                    );
                    continue;
                }
                None => request_ns,
            };
            let ns = def.namespaced.then_some(ns);
            let found = match r["name"].as_str().filter(|n| !n.is_empty()) {
                Some(name) => match self.store.get(&def.key(ns, name)).await.map_err(ApiError::internal)? {
                    Some(kv) => vec![super::handlers::decode_kv(&kv)?],
                    None => vec![],
                },
                None => {
                    let sel = crate::api::selectors::LabelSelector::from_label_selector(&r["selector"])
                        .map_err(ApiError::bad_request)?;
                    let page = self.store.list(&def.list_prefix(ns), None, 0, 0).await.map_err(ApiError::internal)?;
                    let mut objs = Vec::new();
                    for kv in &page.kvs {
                        let o = super::handlers::decode_kv(kv)?;
                        if sel.matches_object(&o) {
                            objs.push(o);
                        }
                    }
                    objs
                }
            };
            out.insert(bname, Ok(found));
        }
        Ok(out)
    }

    /// ValidatingAdmissionPolicy (see [`crate::api::vap`]): refuses a write a bound
    /// policy's validation fails with a Deny action; returns the Warn actions' warnings.
    pub(super) async fn admit_policies(
        &self,
        call: &Call,
        obj: Option<&Value>,
        old: Option<&Value>,
        operation: &str,
    ) -> Result<Vec<String>, ApiError> {
        const GROUP: &str = "admissionregistration.k8s.io";
        let bindings = self.objects_in(GROUP, "validatingadmissionpolicybindings", "").await?;
        if bindings.is_empty() {
            return Ok(vec![]);
        }
        let policies = self.objects_in(GROUP, "validatingadmissionpolicies", "").await?;
        let ns = call.ns.as_deref().unwrap_or("");
        let ns_obj =
            if ns.is_empty() { None } else { self.stored("namespaces", None, ns).await.map_err(ApiError::internal)? };
        let r = crate::api::vap::Request {
            operation,
            group: call.def.group,
            version: call.def.version,
            kind: call.def.kind,
            resource: call.def.plural,
            subresource: call.sub.as_deref().unwrap_or(""),
            namespace: ns,
            name: obj.or(old).map(crate::api::meta::name).unwrap_or(""),
            object: obj,
            old_object: old,
            namespace_object: ns_obj.as_ref(),
            user_info: call.user.as_ref().map(|u| u.user_info()).unwrap_or_else(|| serde_json::json!({})),
            dry_run: call.dry_run()?,
            authorizer: call.user.as_ref().map(|u| self.cel_authorizer(u)),
        };
        let params = self.policy_params(&policies, &bindings, ns).await?;
        let v = crate::api::vap::judge(&policies, &bindings, &params, &r);
        for (k, value) in v.audit {
            call.note(&k, value);
        }
        if !v.audit_failures.is_empty() {
            let failures = serde_json::to_string(&v.audit_failures).unwrap_or_default();
            call.note("validation.policy.admission.k8s.io/validation_failure", failures);
        }
        match v.denied {
            // As upstream: the admission "is forbidden" wording, the validation's reason
            // and code, and the message again as a cause.
            Some((code, msg)) => {
                let forbidden = Self::refused(call, obj.or(old).unwrap_or(&Value::Null), &msg);
                let mut e = ApiError::with_code(code, forbidden.message);
                let mut details = forbidden.details.unwrap_or_default();
                details["causes"] = serde_json::json!([{"message": msg}]);
                e.details = Some(details);
                Err(e)
            }
            None => Ok(v.warnings),
        }
    }

    /// LimitRanger on create: a pod's containers get the defaults of their
    /// namespace's LimitRanges, then pods and claims are held to the ranges' limits.
    pub(super) async fn admit_limits(&self, call: &Call, obj: &mut Value) -> Result<(), ApiError> {
        let (Some(ns), None, "") = (call.ns.as_deref(), call.sub.as_deref(), call.def.group) else { return Ok(()) };
        if !matches!(call.def.plural, "pods" | "persistentvolumeclaims") {
            return Ok(());
        }
        let ranges = self.objects_in("", "limitranges", ns).await?;
        if ranges.is_empty() {
            return Ok(());
        }
        let r = if call.def.plural == "pods" {
            limitrange::admit_pod(&ranges, obj)
        } else {
            limitrange::admit_claim(&ranges, obj)
        };
        r.map_err(|errs| Self::refused(call, obj, &limitrange::aggregate(&errs)))
    }

    /// The Priority plugin on create. A pod gets the value (and preemption policy) of
    /// its PriorityClass, or of the cluster's default class, or 0; a class that does
    /// not exist, or a value the pod sets itself that differs, is refused. A new
    /// PriorityClass may not be a second default, take a `system-` name or exceed the
    /// highest user priority.
    pub(super) async fn admit_priority(&self, call: &Call, obj: &mut Value) -> Result<(), ApiError> {
        if call.sub.is_some() {
            return Ok(());
        }
        match (call.def.group, call.def.plural) {
            ("", "pods") => self.admit_pod_priority(call, obj).await,
            ("scheduling.k8s.io", "priorityclasses") => self.admit_priority_class(call, obj, None).await,
            _ => Ok(()),
        }
    }

    async fn admit_pod_priority(&self, call: &Call, obj: &mut Value) -> Result<(), ApiError> {
        let classes = self.objects_in("scheduling.k8s.io", "priorityclasses", "").await?;
        let asked = obj["spec"]["priorityClassName"].as_str().filter(|n| !n.is_empty()).map(String::from);
        let class = match &asked {
            Some(n) => match classes.iter().find(|c| crate::api::meta::name(c) == n) {
                Some(c) => Some(c),
                None => return Err(Self::refused(call, obj, &format!("no PriorityClass with name {n} was found"))),
            },
            // The default class; with several (a race), the lowest, as upstream.
            None => {
                classes.iter().filter(|c| c["globalDefault"] == true).min_by_key(|c| c["value"].as_i64().unwrap_or(0))
            }
        };
        let value = class.and_then(|c| c["value"].as_i64()).unwrap_or(0);
        let policy = class.and_then(|c| c["preemptionPolicy"].as_str()).unwrap_or("PreemptLowerPriority").to_string();
        if let Some(p) = obj["spec"]["priority"].as_i64()
            && p != value
        {
            return Err(Self::refused(
                call,
                obj,
                &format!(
                    "the integer value of priority ({p}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"
                ),
            ));
        }
        if let Some(p) = obj["spec"]["preemptionPolicy"].as_str()
            && p != policy
        {
            return Err(Self::refused(
                call,
                obj,
                &format!(
                    "the string value of PreemptionPolicy ({p}) must not be provided in pod spec; priority admission controller computed {policy} from the given PriorityClass name"
                ),
            ));
        }
        let spec = &mut obj["spec"];
        if let Some(c) = class {
            spec["priorityClassName"] = Value::String(crate::api::meta::name(c).to_string());
        }
        spec["priority"] = Value::from(value);
        spec["preemptionPolicy"] = Value::String(policy);
        Ok(())
    }

    /// Checks a PriorityClass being created (old None) or updated.
    pub(super) async fn admit_priority_class(
        &self,
        call: &Call,
        pc: &Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        use crate::api::status::Cause;
        let name = crate::api::meta::name(pc);
        let value = pc["value"].as_i64().unwrap_or(0);
        let system = SYSTEM_PRIORITY_CLASSES.iter().find(|(n, _, _)| *n == name);
        let mut causes = Vec::new();
        match system {
            Some((_, v, _)) if *v != value => causes.push(Cause::invalid(
                "value",
                &pc["value"],
                format!("value of system priority class {name} must be {v}"),
            )),
            Some(_) => {}
            None if name.starts_with("system-") => causes.push(Cause::invalid(
                "metadata.name",
                &Value::String(name.to_string()),
                "priority class names with 'system-' prefix are reserved for system use only",
            )),
            None if value > MAX_USER_PRIORITY => causes.push(Cause::forbidden(
                "value",
                &format!("maximum allowed value of a user defined priority is {MAX_USER_PRIORITY}"),
            )),
            None => {}
        }
        if let Some(o) = old
            && o["value"] != pc["value"]
        {
            causes.push(Cause::forbidden("value", "may not be changed in an update."));
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(call.def.group, call.def.kind, name, causes));
        }
        if pc["globalDefault"] == true {
            let classes = self.objects_in("scheduling.k8s.io", "priorityclasses", "").await?;
            if let Some(d) = classes.iter().find(|c| c["globalDefault"] == true && crate::api::meta::name(c) != name) {
                let why = format!(
                    "PriorityClass {} is already marked as default. Only one default can exist",
                    crate::api::meta::name(d)
                );
                return Err(Self::refused(call, pc, &why));
            }
        }
        Ok(())
    }
}
