//! Defaulting, as Kubernetes's `SetDefaults_*` functions do for the fields users see
//! in `kubectl get -o yaml` (pkg/apis/*/v1/defaults.go).

use serde_json::{Value, json};

fn set(obj: &mut Value, path: &[&str], v: Value) {
    let mut cur = obj;
    for (i, k) in path.iter().enumerate() {
        if !cur.is_object() {
            return;
        }
        if i == path.len() - 1 {
            if cur.get(*k).is_none_or(Value::is_null) {
                cur[*k] = v;
            }
            return;
        }
        if cur.get(*k).is_none_or(Value::is_null) {
            cur[*k] = json!({});
        }
        cur = &mut cur[*k];
    }
}

fn each(obj: &mut Value, path: &[&str], f: impl Fn(&mut Value)) {
    let mut cur = obj;
    for k in path {
        match cur.get_mut(*k) {
            Some(v) => cur = v,
            None => return,
        }
    }
    if let Some(a) = cur.as_array_mut() {
        a.iter_mut().for_each(f);
    }
}

fn container(c: &mut Value) {
    set(c, &["terminationMessagePath"], json!("/dev/termination-log"));
    set(c, &["terminationMessagePolicy"], json!("File"));
    set(c, &["resources"], json!({}));
    let image = c.get("image").and_then(Value::as_str).unwrap_or("").to_string();
    let last = image.rsplit('/').next().unwrap_or("");
    let pinned = image.contains('@') || last.split_once(':').is_some_and(|(_, t)| t != "latest");
    set(c, &["imagePullPolicy"], json!(if pinned { "IfNotPresent" } else { "Always" }));
    each(c, &["ports"], |p| set(p, &["protocol"], json!("TCP")));
}

/// Defaults of a PodSpec.
pub fn pod_spec(spec: &mut Value) {
    set(spec, &["restartPolicy"], json!("Always"));
    set(spec, &["terminationGracePeriodSeconds"], json!(30));
    set(spec, &["dnsPolicy"], json!("ClusterFirst"));
    set(spec, &["securityContext"], json!({}));
    set(spec, &["schedulerName"], json!("default-scheduler"));
    set(spec, &["enableServiceLinks"], json!(true));
    each(spec, &["containers"], container);
    each(spec, &["initContainers"], container);
}

fn template(obj: &mut Value) {
    if let Some(spec) = obj.pointer_mut("/spec/template/spec") {
        pod_spec(spec);
    }
}

/// The DefaultTolerationSeconds admission plugin: a new pod that does not tolerate the
/// `not-ready` / `unreachable` NoExecute taints tolerates them for 300 s, so it is
/// evicted from a lost node five minutes after the node is marked.
pub fn default_toleration_seconds(pod: &mut Value) {
    for key in ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"] {
        let tols = pod.pointer("/spec/tolerations").and_then(Value::as_array).cloned().unwrap_or_default();
        let covered = tols.iter().any(|t| {
            let k = t.get("key").and_then(Value::as_str).unwrap_or("");
            let effect = t.get("effect").and_then(Value::as_str).unwrap_or("");
            let exists = t.get("operator").and_then(Value::as_str) == Some("Exists");
            (k == key || (k.is_empty() && exists)) && (effect.is_empty() || effect == "NoExecute")
        });
        if !covered && let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) {
            let list = spec.entry("tolerations").or_insert_with(|| json!([]));
            if let Some(a) = list.as_array_mut() {
                a.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
            }
        }
    }
}

/// A new Job's generated selector (unless `spec.manualSelector`): its pods carry the
/// Job's uid and name as labels, and the selector matches the uid, as Kubernetes's Job
/// strategy does on create.
pub fn job_selector(job: &mut Value) {
    if job.pointer("/spec/manualSelector") == Some(&json!(true)) {
        return;
    }
    let uid = job.pointer("/metadata/uid").cloned().unwrap_or(Value::Null);
    let name = job.pointer("/metadata/name").cloned().unwrap_or(Value::Null);
    let labels = json!({
        "batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": name,
        "controller-uid": uid, "job-name": name,
    });
    set(job, &["spec", "selector"], json!({}));
    job["spec"]["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
    set(job, &["spec", "template", "metadata", "labels"], json!({}));
    if let (Some(l), Some(add)) =
        (job.pointer_mut("/spec/template/metadata/labels").and_then(Value::as_object_mut), labels.as_object())
    {
        for (k, v) in add {
            l.insert(k.clone(), v.clone());
        }
    }
    set(job, &["metadata", "labels"], json!({}));
    if let (Some(l), Some(add)) =
        (job.pointer_mut("/metadata/labels").and_then(Value::as_object_mut), labels.as_object())
    {
        for (k, v) in add.iter().filter(|(k, _)| !k.contains("controller-uid")) {
            l.entry(k.clone()).or_insert(v.clone());
        }
    }
}

/// Applies the defaults of `plural` (in `group`) to a new or updated object.
pub fn apply(group: &str, plural: &str, obj: &mut Value) {
    match (group, plural) {
        ("", "namespaces") => {
            set(obj, &["spec", "finalizers"], json!(["kubernetes"]));
            // Kubernetes labels every namespace with its own name, and keeps it so.
            let name = obj.pointer("/metadata/name").cloned().unwrap_or(Value::Null);
            if name.is_string() {
                set(obj, &["metadata", "labels"], json!({}));
                if let Some(l) = obj.pointer_mut("/metadata/labels").and_then(Value::as_object_mut) {
                    l.insert("kubernetes.io/metadata.name".into(), name);
                }
            }
        }
        ("", "secrets") => {
            set(obj, &["type"], json!("Opaque"));
            // stringData is write-only: merged into data, base64-encoded, then dropped.
            if let Some(sd) = obj.as_object_mut().and_then(|o| o.remove("stringData")) {
                use base64::Engine;
                if let Some(m) = sd.as_object() {
                    for (k, v) in m {
                        let b = base64::engine::general_purpose::STANDARD.encode(v.as_str().unwrap_or_default());
                        set(obj, &["data"], json!({}));
                        obj["data"][k] = json!(b);
                    }
                }
            }
        }
        ("", "services") => {
            let external = obj.pointer("/spec/type").and_then(Value::as_str) == Some("ExternalName");
            set(obj, &["spec", "type"], json!("ClusterIP"));
            set(obj, &["spec", "sessionAffinity"], json!("None"));
            if !external {
                set(obj, &["spec", "internalTrafficPolicy"], json!("Cluster"));
            }
            each(obj, &["spec", "ports"], |p| {
                set(p, &["protocol"], json!("TCP"));
                if let Some(port) = p.get("port").cloned() {
                    set(p, &["targetPort"], port);
                }
            });
        }
        ("", "pods") => {
            if let Some(spec) = obj.get_mut("spec") {
                pod_spec(spec);
                // SetDefaults_Pod: a container's limits are its requests where it sets none.
                for field in ["containers", "initContainers"] {
                    each(spec, &[field], |c| {
                        let Some(limits) = c.pointer("/resources/limits").and_then(Value::as_object).cloned() else {
                            return;
                        };
                        for (k, v) in limits {
                            set(c, &["resources", "requests", &k], v);
                        }
                    });
                }
            }
        }
        ("", "limitranges") => crate::api::limitrange::default_range(obj),
        ("scheduling.k8s.io", "priorityclasses") => set(obj, &["preemptionPolicy"], json!("PreemptLowerPriority")),
        ("", "replicationcontrollers") => {
            set(obj, &["spec", "replicas"], json!(1));
            template(obj);
        }
        ("apps", "deployments") => {
            set(obj, &["spec", "replicas"], json!(1));
            set(obj, &["spec", "revisionHistoryLimit"], json!(10));
            set(obj, &["spec", "progressDeadlineSeconds"], json!(600));
            if obj.pointer("/spec/strategy/type").is_none_or(|t| t == "RollingUpdate") {
                set(obj, &["spec", "strategy", "type"], json!("RollingUpdate"));
                set(obj, &["spec", "strategy", "rollingUpdate", "maxUnavailable"], json!("25%"));
                set(obj, &["spec", "strategy", "rollingUpdate", "maxSurge"], json!("25%"));
            }
            template(obj);
        }
        ("apps", "replicasets") => {
            set(obj, &["spec", "replicas"], json!(1));
            template(obj);
        }
        ("apps", "statefulsets") => {
            set(obj, &["spec", "replicas"], json!(1));
            set(obj, &["spec", "podManagementPolicy"], json!("OrderedReady"));
            set(obj, &["spec", "revisionHistoryLimit"], json!(10));
            if obj.pointer("/spec/updateStrategy/type").is_none_or(|t| t == "RollingUpdate") {
                set(obj, &["spec", "updateStrategy", "type"], json!("RollingUpdate"));
                set(obj, &["spec", "updateStrategy", "rollingUpdate", "partition"], json!(0));
            }
            template(obj);
        }
        ("apps", "daemonsets") => {
            set(obj, &["spec", "revisionHistoryLimit"], json!(10));
            if obj.pointer("/spec/updateStrategy/type").is_none_or(|t| t == "RollingUpdate") {
                set(obj, &["spec", "updateStrategy", "type"], json!("RollingUpdate"));
                set(obj, &["spec", "updateStrategy", "rollingUpdate", "maxUnavailable"], json!(1));
                set(obj, &["spec", "updateStrategy", "rollingUpdate", "maxSurge"], json!(0));
            }
            template(obj);
        }
        ("batch", "jobs") => {
            set(obj, &["spec", "parallelism"], json!(1));
            set(obj, &["spec", "backoffLimit"], json!(6));
            set(obj, &["spec", "completionMode"], json!("NonIndexed"));
            set(obj, &["spec", "suspend"], json!(false));
            if obj.pointer("/spec/completions").is_none() && obj.pointer("/spec/parallelism") == Some(&json!(1)) {
                set(obj, &["spec", "completions"], json!(1));
            }
            template(obj);
        }
        ("batch", "cronjobs") => {
            set(obj, &["spec", "concurrencyPolicy"], json!("Allow"));
            set(obj, &["spec", "suspend"], json!(false));
            set(obj, &["spec", "successfulJobsHistoryLimit"], json!(3));
            set(obj, &["spec", "failedJobsHistoryLimit"], json!(1));
            if let Some(spec) = obj.pointer_mut("/spec/jobTemplate/spec/template/spec") {
                pod_spec(spec);
            }
        }
        _ => {}
    }
}

/// The QoS class Kubernetes gives a pod from its containers' cpu and memory requests
/// and limits: Guaranteed when every container limits both and requests what it
/// limits, BestEffort when none asks for either, else Burstable.
pub fn qos_class(spec: &Value) -> &'static str {
    let containers =
        ["containers", "initContainers"].into_iter().flat_map(|f| spec[f].as_array().into_iter().flatten());
    let (mut any, mut guaranteed) = (false, true);
    let num = |v: &Value| v.as_str().and_then(crate::server::scheduler::parse_quantity).or(v.as_f64());
    for c in containers {
        let (req, lim) = (&c["resources"]["requests"], &c["resources"]["limits"]);
        for res in ["cpu", "memory"] {
            let (r, l) = (num(&req[res]), num(&lim[res]));
            if r.is_some_and(|r| r != 0.0) || l.is_some_and(|l| l != 0.0) {
                any = true;
            }
            if l.is_none_or(|l| l == 0.0) || r.is_some_and(|r| Some(r) != l) {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// The status a new object starts with: Kubernetes's create strategies reset what the
/// client sent (nodes keep theirs).
pub fn initial_status(group: &str, plural: &str, obj: &mut Value) {
    obj["status"] = match (group, plural) {
        ("", "nodes") => return,
        ("", "pods") => json!({"phase": "Pending", "qosClass": qos_class(&obj["spec"])}),
        ("", "namespaces") => json!({"phase": "Active"}),
        ("", "services") => json!({"loadBalancer": {}}),
        ("", "persistentvolumeclaims" | "persistentvolumes") => json!({"phase": "Pending"}),
        _ => json!({}),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_labelled_with_their_name() {
        let mut ns = json!({"metadata": {"name": "team", "labels": {"kubernetes.io/metadata.name": "other"}}});
        apply("", "namespaces", &mut ns);
        assert_eq!(ns["metadata"]["labels"]["kubernetes.io/metadata.name"], "team");
        assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
    }

    #[test]
    fn pod_and_service_defaults() {
        let mut pod =
            json!({"spec": {"containers": [{"name": "c", "image": "busybox"}, {"name": "d", "image": "x:1.0"}]}});
        apply("", "pods", &mut pod);
        assert_eq!(pod["spec"]["restartPolicy"], "Always");
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(pod["spec"]["containers"][1]["imagePullPolicy"], "IfNotPresent");
        let mut svc = json!({"spec": {"ports": [{"port": 80}]}});
        apply("", "services", &mut svc);
        initial_status("", "services", &mut svc);
        assert_eq!(svc["status"], json!({"loadBalancer": {}}));
        assert_eq!(svc["spec"]["type"], "ClusterIP");
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(svc["spec"]["ports"][0]["protocol"], "TCP");
    }
}
