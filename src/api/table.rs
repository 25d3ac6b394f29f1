//! `meta.k8s.io/v1` Table output: the columns Kubernetes's printers give each kind
//! (kubernetes `pkg/printers/internalversion/printers.go`), `-o wide` ones at priority 1.

use serde_json::{Value, json};

use super::meta;
use super::meta::str_at;

/// A column: name, OpenAPI type, priority (0 = always shown, 1 = `-o wide`).
pub struct Col(pub &'static str, pub &'static str, pub u8);

const NAME: Col = Col("Name", "string", 0);
const AGE: Col = Col("Age", "string", 0);

/// The columns of a resource.
pub fn columns(group: &str, plural: &str) -> Vec<Col> {
    let s = |n| Col(n, "string", 0);
    let w = |n| Col(n, "string", 1);
    let i = |n| Col(n, "integer", 0);
    match (group, plural) {
        ("", "pods") => vec![
            NAME,
            s("Ready"),
            s("Status"),
            s("Restarts"),
            AGE,
            w("IP"),
            w("Node"),
            w("Nominated Node"),
            w("Readiness Gates"),
        ],
        ("apps", "deployments") => {
            vec![NAME, s("Ready"), i("Up-to-date"), i("Available"), AGE, w("Containers"), w("Images"), w("Selector")]
        }
        ("apps", "replicasets") | ("", "replicationcontrollers") => {
            vec![NAME, i("Desired"), i("Current"), i("Ready"), AGE, w("Containers"), w("Images"), w("Selector")]
        }
        ("apps", "statefulsets") => vec![NAME, s("Ready"), AGE, w("Containers"), w("Images")],
        ("apps", "daemonsets") => vec![
            NAME,
            i("Desired"),
            i("Current"),
            i("Ready"),
            i("Up-to-date"),
            i("Available"),
            s("Node Selector"),
            AGE,
            w("Containers"),
            w("Images"),
            w("Selector"),
        ],
        ("batch", "jobs") => {
            vec![NAME, s("Status"), s("Completions"), s("Duration"), AGE, w("Containers"), w("Images"), w("Selector")]
        }
        ("batch", "cronjobs") => vec![
            NAME,
            s("Schedule"),
            s("Timezone"),
            Col("Suspend", "boolean", 0),
            i("Active"),
            s("Last Schedule"),
            AGE,
            w("Containers"),
            w("Images"),
            w("Selector"),
        ],
        ("", "services") => {
            vec![NAME, s("Type"), s("Cluster-IP"), s("External-IP"), s("Port(s)"), AGE, w("Selector")]
        }
        ("", "endpoints") => vec![NAME, s("Endpoints"), AGE],
        ("networking.k8s.io", "ingresses") => vec![NAME, s("Class"), s("Hosts"), s("Address"), s("Ports"), AGE],
        ("networking.k8s.io", "ingressclasses") => vec![NAME, s("Controller"), s("Parameters"), AGE],
        ("networking.k8s.io", "networkpolicies") => vec![NAME, s("Pod-Selector"), AGE],
        ("policy", "poddisruptionbudgets") => {
            vec![NAME, s("Min Available"), s("Max Unavailable"), i("Allowed Disruptions"), AGE]
        }
        ("", "nodes") => vec![
            NAME,
            s("Status"),
            s("Roles"),
            AGE,
            s("Version"),
            w("Internal-IP"),
            w("External-IP"),
            w("OS-Image"),
            w("Kernel-Version"),
            w("Container-Runtime"),
        ],
        ("", "namespaces") => vec![NAME, s("Status"), AGE],
        ("", "configmaps") => vec![NAME, i("Data"), AGE],
        ("", "secrets") => vec![NAME, s("Type"), i("Data"), AGE],
        ("", "events") => vec![
            s("Last Seen"),
            s("Type"),
            s("Reason"),
            s("Object"),
            w("Subobject"),
            w("Source"),
            s("Message"),
            w("First Seen"),
            Col("Count", "integer", 1),
            Col("Name", "string", 1),
        ],
        ("", "serviceaccounts") => vec![NAME, i("Secrets"), AGE],
        ("", "persistentvolumes") => vec![
            NAME,
            s("Capacity"),
            s("Access Modes"),
            s("Reclaim Policy"),
            s("Status"),
            s("Claim"),
            s("StorageClass"),
            s("VolumeAttributesClass"),
            s("Reason"),
            AGE,
            w("VolumeMode"),
        ],
        ("", "persistentvolumeclaims") => vec![
            NAME,
            s("Status"),
            s("Volume"),
            s("Capacity"),
            s("Access Modes"),
            s("StorageClass"),
            s("VolumeAttributesClass"),
            AGE,
            w("VolumeMode"),
        ],
        ("apiextensions.k8s.io", "customresourcedefinitions") => vec![NAME, Col("Created At", "date", 0)],
        ("", "limitranges") => vec![NAME, Col("Created At", "date", 0)],
        ("", "resourcequotas") => vec![NAME, AGE, s("Request"), s("Limit")],
        ("scheduling.k8s.io", "priorityclasses") => {
            vec![NAME, i("Value"), Col("Global-Default", "boolean", 0), AGE, s("PreemptionPolicy")]
        }
        _ => vec![NAME, AGE],
    }
}

/// Kubernetes's `duration.HumanDuration`, as the AGE column prints it.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    if secs < 0 {
        return "0s".into();
    }
    if secs < 120 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        let s = secs % 60;
        return if s == 0 { format!("{minutes}m") } else { format!("{minutes}m{s}s") };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = secs / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 { format!("{hours}h") } else { format!("{hours}h{m}m") };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 { format!("{}d", hours / 24) } else { format!("{}d{h}h", hours / 24) };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 { format!("{}y", hours / 24 / 365) } else { format!("{}y{dy}d", hours / 24 / 365) };
    }
    format!("{}y", hours / 24 / 365)
}

fn since(ts: Option<&str>, now: i64) -> String {
    match ts.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()) {
        Some(t) => human_duration(now - t.timestamp()),
        None => "<unknown>".into(),
    }
}

fn age(obj: &Value, now: i64) -> Value {
    json!(since(meta::meta_str(obj, "creationTimestamp"), now))
}

fn int_at(obj: &Value, p: &str) -> i64 {
    obj.pointer(p).and_then(Value::as_i64).unwrap_or(0)
}

fn or_none(s: String) -> String {
    if s.is_empty() { "<none>".into() } else { s }
}

fn containers_images(spec: Option<&Value>) -> (String, String) {
    let cs = spec.and_then(|s| s.get("containers")).and_then(Value::as_array);
    let names: Vec<&str> = cs.map(|a| a.iter().filter_map(|c| c.get("name")?.as_str()).collect()).unwrap_or_default();
    let images: Vec<&str> = cs.map(|a| a.iter().filter_map(|c| c.get("image")?.as_str()).collect()).unwrap_or_default();
    (names.join(","), images.join(","))
}

fn selector_string(sel: Option<&Value>) -> String {
    or_none(sel.map(super::selectors::selector_string).unwrap_or_default())
}

fn pod_status(pod: &Value) -> (String, i64, usize, usize) {
    let mut reason = str_at(pod, "/status/reason").to_string().chars().collect::<String>().trim().to_string();
    if reason.is_empty() {
        reason = str_at(pod, "/status/phase").to_string();
    }
    let total = pod.pointer("/spec/containers").and_then(Value::as_array).map(Vec::len).unwrap_or(0);
    let mut ready = 0;
    let mut restarts = 0;
    let mut init_failed = false;
    if let Some(inits) = pod.pointer("/status/initContainerStatuses").and_then(Value::as_array) {
        let n = inits.len();
        for (i, c) in inits.iter().enumerate() {
            restarts += int_at(c, "/restartCount");
            if c.pointer("/state/terminated/exitCode").and_then(Value::as_i64) == Some(0) {
                continue;
            }
            if let Some(t) = c.pointer("/state/terminated") {
                let r = str_at(t, "/reason");
                reason = if r.is_empty() {
                    format!("Init:ExitCode:{}", int_at(t, "/exitCode"))
                } else {
                    format!("Init:{r}")
                };
                init_failed = true;
            } else if let Some(r) =
                c.pointer("/state/waiting/reason").and_then(Value::as_str).filter(|r| *r != "PodInitializing")
            {
                reason = format!("Init:{r}");
                init_failed = true;
            } else {
                reason = format!("Init:{i}/{n}");
                init_failed = true;
            }
            break;
        }
    }
    if !init_failed && let Some(cs) = pod.pointer("/status/containerStatuses").and_then(Value::as_array) {
        let mut has_running = false;
        for c in cs.iter().rev() {
            restarts += int_at(c, "/restartCount");
            if let Some(r) = c.pointer("/state/waiting/reason").and_then(Value::as_str).filter(|r| !r.is_empty()) {
                reason = r.to_string();
            } else if let Some(t) = c.pointer("/state/terminated") {
                let r = str_at(t, "/reason");
                reason = if !r.is_empty() {
                    r.to_string()
                } else if let Some(sig) = t.get("signal").and_then(Value::as_i64).filter(|s| *s != 0) {
                    format!("Signal:{sig}")
                } else {
                    format!("ExitCode:{}", int_at(t, "/exitCode"))
                };
            } else if c.pointer("/state/running").is_some() && c.get("ready") == Some(&json!(true)) {
                has_running = true;
                ready += 1;
            } else if c.pointer("/state/running").is_some() {
                has_running = true;
            }
        }
        if reason == "Completed" && has_running {
            reason = "Running".into();
        }
    }
    if meta::is_deleting(pod) {
        reason = if str_at(pod, "/status/reason") == "NodeLost" { "Unknown".into() } else { "Terminating".into() };
    }
    (reason, restarts, ready, total)
}

fn ports_string(svc: &Value) -> String {
    let parts: Vec<String> = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|p| {
                    let port = int_at(p, "/port");
                    let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                    match p.get("nodePort").and_then(Value::as_i64) {
                        Some(np) if np != 0 => format!("{port}:{np}/{proto}"),
                        _ => format!("{port}/{proto}"),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    or_none(parts.join(","))
}

fn external_ip(svc: &Value) -> String {
    let ty = str_at(svc, "/spec/type");
    let ext: Vec<&str> = svc
        .pointer("/spec/externalIPs")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    match ty {
        "ExternalName" => str_at(svc, "/spec/externalName").to_string(),
        "LoadBalancer" => {
            let mut all: Vec<String> = svc
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|i| i.get("ip").or(i.get("hostname")).and_then(Value::as_str).map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            all.extend(ext.iter().map(|s| s.to_string()));
            if all.is_empty() { "<pending>".into() } else { all.join(",") }
        }
        _ => or_none(ext.join(",")),
    }
}

fn endpoints_string(ep: &Value) -> String {
    let mut list = Vec::new();
    let mut total = 0;
    for sub in ep.get("subsets").and_then(Value::as_array).into_iter().flatten() {
        let ports: Vec<i64> = sub
            .get("ports")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|p| int_at(p, "/port")).collect())
            .unwrap_or_default();
        for a in sub.get("addresses").and_then(Value::as_array).into_iter().flatten() {
            let ip = str_at(a, "/ip");
            if ports.is_empty() {
                total += 1;
                if list.len() < 3 {
                    list.push(ip.to_string());
                }
            }
            for p in &ports {
                total += 1;
                if list.len() < 3 {
                    list.push(format!("{ip}:{p}"));
                }
            }
        }
    }
    let mut s = list.join(",");
    if total > 3 {
        s.push_str(&format!(" + {} more...", total - 3));
    }
    or_none(s)
}

fn node_status(node: &Value) -> String {
    let mut parts = Vec::new();
    let conds = node.pointer("/status/conditions").and_then(Value::as_array);
    match conds.and_then(|c| c.iter().find(|c| c.get("type") == Some(&json!("Ready")))) {
        Some(c) if c.get("status") == Some(&json!("True")) => parts.push("Ready".to_string()),
        _ => parts.push("NotReady".to_string()),
    }
    if node.pointer("/spec/unschedulable") == Some(&json!(true)) {
        parts.push("SchedulingDisabled".into());
    }
    parts.join(",")
}

fn node_roles(node: &Value) -> String {
    let mut roles: Vec<String> = meta::object_labels_iter(node)
        .filter_map(|(k, v)| {
            if let Some(r) = k.strip_prefix("node-role.kubernetes.io/") {
                Some(r.to_string())
            } else if k == "kubernetes.io/role" {
                Some(v.to_string())
            } else {
                None
            }
        })
        .filter(|r| !r.is_empty())
        .collect();
    roles.sort();
    roles.dedup();
    or_none(roles.join(","))
}

fn node_address(node: &Value, ty: &str) -> String {
    node.pointer("/status/addresses")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|x| x.get("type") == Some(&json!(ty))))
        .and_then(|x| x.get("address").and_then(Value::as_str))
        .map(str::to_string)
        .unwrap_or_else(|| "<none>".into())
}

fn access_modes(obj: &Value, p: &str) -> String {
    let modes: Vec<&str> = obj
        .pointer(p)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|m| match m {
                    "ReadWriteOnce" => "RWO",
                    "ReadOnlyMany" => "ROX",
                    "ReadWriteMany" => "RWX",
                    "ReadWriteOncePod" => "RWOP",
                    m => m,
                })
                .collect()
        })
        .unwrap_or_default();
    modes.join(",")
}

fn job_status(job: &Value) -> String {
    let conds = job.pointer("/status/conditions").and_then(Value::as_array);
    let has = |t: &str| {
        conds.is_some_and(|c| {
            c.iter().any(|c| c.get("type") == Some(&json!(t)) && c.get("status") == Some(&json!("True")))
        })
    };
    if has("Complete") {
        "Complete".into()
    } else if has("Failed") {
        "Failed".into()
    } else if meta::is_deleting(job) {
        "Terminating".into()
    } else if has("Suspended") {
        "Suspended".into()
    } else if has("FailureTarget") {
        "FailureTarget".into()
    } else if has("SuccessCriteriaMet") {
        "SuccessCriteriaMet".into()
    } else {
        "Running".into()
    }
}

fn seconds_between(a: &str, b: &str) -> Option<i64> {
    let a = chrono::DateTime::parse_from_rfc3339(a).ok()?;
    let b = chrono::DateTime::parse_from_rfc3339(b).ok()?;
    Some(b.timestamp() - a.timestamp())
}

/// The cells of one row.
pub fn cells(group: &str, plural: &str, obj: &Value, now: i64) -> Vec<Value> {
    let name = json!(meta::name(obj));
    match (group, plural) {
        ("", "pods") => {
            let (status, restarts, ready, total) = pod_status(obj);
            let gates = obj.pointer("/spec/readinessGates").and_then(Value::as_array).map(Vec::len).unwrap_or(0);
            let gates = if gates == 0 { "<none>".to_string() } else { format!("0/{gates}") };
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(status),
                json!(restarts.to_string()),
                age(obj, now),
                json!(or_none(str_at(obj, "/status/podIP").into())),
                json!(or_none(str_at(obj, "/spec/nodeName").into())),
                json!(or_none(str_at(obj, "/status/nominatedNodeName").into())),
                json!(gates),
            ]
        }
        ("apps", "deployments") => {
            let (c, i) = containers_images(obj.pointer("/spec/template/spec"));
            vec![
                name,
                json!(format!("{}/{}", int_at(obj, "/status/readyReplicas"), int_at(obj, "/spec/replicas"))),
                json!(int_at(obj, "/status/updatedReplicas")),
                json!(int_at(obj, "/status/availableReplicas")),
                age(obj, now),
                json!(c),
                json!(i),
                json!(selector_string(obj.pointer("/spec/selector"))),
            ]
        }
        ("apps", "replicasets") | ("", "replicationcontrollers") => {
            let (c, i) = containers_images(obj.pointer("/spec/template/spec"));
            let sel = selector_string(obj.pointer("/spec/selector"));
            vec![
                name,
                json!(int_at(obj, "/spec/replicas")),
                json!(int_at(obj, "/status/replicas")),
                json!(int_at(obj, "/status/readyReplicas")),
                age(obj, now),
                json!(c),
                json!(i),
                json!(sel),
            ]
        }
        ("apps", "statefulsets") => {
            let (c, i) = containers_images(obj.pointer("/spec/template/spec"));
            vec![
                name,
                json!(format!("{}/{}", int_at(obj, "/status/readyReplicas"), int_at(obj, "/spec/replicas"))),
                age(obj, now),
                json!(c),
                json!(i),
            ]
        }
        ("apps", "daemonsets") => {
            let (c, i) = containers_images(obj.pointer("/spec/template/spec"));
            vec![
                name,
                json!(int_at(obj, "/status/desiredNumberScheduled")),
                json!(int_at(obj, "/status/currentNumberScheduled")),
                json!(int_at(obj, "/status/numberReady")),
                json!(int_at(obj, "/status/updatedNumberScheduled")),
                json!(int_at(obj, "/status/numberAvailable")),
                json!(selector_string(obj.pointer("/spec/template/spec/nodeSelector"))),
                age(obj, now),
                json!(c),
                json!(i),
                json!(selector_string(obj.pointer("/spec/selector"))),
            ]
        }
        ("batch", "jobs") => {
            let (c, i) = containers_images(obj.pointer("/spec/template/spec"));
            let completions = match obj.pointer("/spec/completions").and_then(Value::as_i64) {
                Some(n) => format!("{}/{n}", int_at(obj, "/status/succeeded")),
                None => {
                    format!("{}/1 of {}", int_at(obj, "/status/succeeded"), int_at(obj, "/spec/parallelism").max(1))
                }
            };
            let start = str_at(obj, "/status/startTime");
            let duration = if start.is_empty() {
                String::new()
            } else {
                let end = str_at(obj, "/status/completionTime");
                let secs = if end.is_empty() {
                    chrono::DateTime::parse_from_rfc3339(start).map(|s| now - s.timestamp()).unwrap_or(0)
                } else {
                    seconds_between(start, end).unwrap_or(0)
                };
                human_duration(secs)
            };
            vec![
                name,
                json!(job_status(obj)),
                json!(completions),
                json!(duration),
                age(obj, now),
                json!(c),
                json!(i),
                json!(selector_string(obj.pointer("/spec/selector"))),
            ]
        }
        ("batch", "cronjobs") => {
            let (c, i) = containers_images(obj.pointer("/spec/jobTemplate/spec/template/spec"));
            let last = str_at(obj, "/status/lastScheduleTime");
            vec![
                name,
                json!(str_at(obj, "/spec/schedule")),
                json!(or_none(str_at(obj, "/spec/timeZone").into())),
                json!(obj.pointer("/spec/suspend").and_then(Value::as_bool).unwrap_or(false)),
                json!(obj.pointer("/status/active").and_then(Value::as_array).map(Vec::len).unwrap_or(0)),
                json!(if last.is_empty() { "<none>".into() } else { since(Some(last), now) }),
                age(obj, now),
                json!(c),
                json!(i),
                json!(selector_string(obj.pointer("/spec/jobTemplate/spec/selector"))),
            ]
        }
        ("policy", "poddisruptionbudgets") => {
            let v = |p: &str| match obj.pointer(p) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => "N/A".into(),
            };
            vec![
                name,
                json!(v("/spec/minAvailable")),
                json!(v("/spec/maxUnavailable")),
                json!(obj.pointer("/status/disruptionsAllowed").and_then(Value::as_i64).unwrap_or(0)),
                age(obj, now),
            ]
        }
        ("", "services") => vec![
            name,
            json!(str_at(obj, "/spec/type")),
            json!(or_none(str_at(obj, "/spec/clusterIP").into())),
            json!(external_ip(obj)),
            json!(ports_string(obj)),
            age(obj, now),
            json!(selector_string(obj.pointer("/spec/selector"))),
        ],
        ("", "endpoints") => vec![name, json!(endpoints_string(obj)), age(obj, now)],
        ("networking.k8s.io", "ingresses") => {
            // As kubectl's printer: hosts (first three, then "+ N more..."), addresses,
            // "80" or "80, 443" with TLS.
            let hosts: Vec<&str> = obj
                .pointer("/spec/rules")
                .and_then(Value::as_array)
                .map(|rs| rs.iter().filter_map(|r| r.get("host").and_then(Value::as_str)).collect())
                .unwrap_or_default();
            let hosts = match hosts.len() {
                0 => "*".to_string(),
                n if n > 3 => format!("{} + {} more...", hosts[..3].join(","), n - 3),
                _ => hosts.join(","),
            };
            let addrs: Vec<&str> = obj
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|i| i.get("ip").or(i.get("hostname")).and_then(Value::as_str)).collect())
                .unwrap_or_default();
            let tls = obj.pointer("/spec/tls").and_then(Value::as_array).is_some_and(|t| !t.is_empty());
            vec![
                name,
                json!(or_none(str_at(obj, "/spec/ingressClassName").into())),
                json!(hosts),
                json!(addrs.join(",")),
                json!(if tls { "80, 443" } else { "80" }),
                age(obj, now),
            ]
        }
        ("networking.k8s.io", "ingressclasses") => {
            let params = match obj.pointer("/spec/parameters") {
                Some(p) => {
                    let kind = str_at(p, "/kind");
                    let group = str_at(p, "/apiGroup");
                    let kind = if group.is_empty() { kind.to_string() } else { format!("{kind}.{group}") };
                    format!("{kind}/{}", str_at(p, "/name"))
                }
                None => "<none>".into(),
            };
            vec![name, json!(str_at(obj, "/spec/controller")), json!(params), age(obj, now)]
        }
        ("networking.k8s.io", "networkpolicies") => {
            vec![name, json!(selector_string(obj.pointer("/spec/podSelector"))), age(obj, now)]
        }
        ("", "nodes") => vec![
            name,
            json!(node_status(obj)),
            json!(node_roles(obj)),
            age(obj, now),
            json!(str_at(obj, "/status/nodeInfo/kubeletVersion")),
            json!(node_address(obj, "InternalIP")),
            json!(node_address(obj, "ExternalIP")),
            json!(or_none(str_at(obj, "/status/nodeInfo/osImage").into())),
            json!(or_none(str_at(obj, "/status/nodeInfo/kernelVersion").into())),
            json!(or_none(str_at(obj, "/status/nodeInfo/containerRuntimeVersion").into())),
        ],
        ("", "namespaces") => vec![name, json!(str_at(obj, "/status/phase")), age(obj, now)],
        ("", "configmaps") => {
            let n = obj.get("data").and_then(Value::as_object).map(|m| m.len()).unwrap_or(0)
                + obj.get("binaryData").and_then(Value::as_object).map(|m| m.len()).unwrap_or(0);
            vec![name, json!(n), age(obj, now)]
        }
        ("", "secrets") => {
            let n = obj.get("data").and_then(Value::as_object).map(|m| m.len()).unwrap_or(0)
                + obj.get("stringData").and_then(Value::as_object).map(|m| m.len()).unwrap_or(0);
            vec![name, json!(str_at(obj, "/type")), json!(n), age(obj, now)]
        }
        ("", "events") => {
            let last =
                [str_at(obj, "/lastTimestamp"), str_at(obj, "/eventTime"), str_at(obj, "/series/lastObservedTime")]
                    .into_iter()
                    .find(|s| !s.is_empty())
                    .or(meta::meta_str(obj, "creationTimestamp"));
            let first = Some(str_at(obj, "/firstTimestamp")).filter(|s| !s.is_empty()).or(last);
            let kind = str_at(obj, "/involvedObject/kind").to_lowercase();
            let source = str_at(obj, "/source/component");
            let host = str_at(obj, "/source/host");
            let source = if host.is_empty() { source.to_string() } else { format!("{source}, {host}") };
            vec![
                json!(since(last, now)),
                json!(str_at(obj, "/type")),
                json!(str_at(obj, "/reason")),
                json!(format!("{kind}/{}", str_at(obj, "/involvedObject/name"))),
                json!(str_at(obj, "/involvedObject/fieldPath")),
                json!(source),
                json!(str_at(obj, "/message").trim()),
                json!(since(first, now)),
                json!(int_at(obj, "/count")),
                name,
            ]
        }
        ("", "serviceaccounts") => {
            vec![name, json!(obj.get("secrets").and_then(Value::as_array).map(Vec::len).unwrap_or(0)), age(obj, now)]
        }
        ("", "persistentvolumes") => {
            let claim = match (str_at(obj, "/spec/claimRef/namespace"), str_at(obj, "/spec/claimRef/name")) {
                (_, "") => String::new(),
                (ns, n) => format!("{ns}/{n}"),
            };
            vec![
                name,
                json!(str_at(obj, "/spec/capacity/storage")),
                json!(access_modes(obj, "/spec/accessModes")),
                json!(str_at(obj, "/spec/persistentVolumeReclaimPolicy")),
                json!(str_at(obj, "/status/phase")),
                json!(claim),
                json!(str_at(obj, "/spec/storageClassName")),
                json!(or_none(str_at(obj, "/spec/volumeAttributesClassName").into())),
                json!(str_at(obj, "/status/reason")),
                age(obj, now),
                json!(or_none(str_at(obj, "/spec/volumeMode").into())),
            ]
        }
        ("", "persistentvolumeclaims") => {
            let bound = str_at(obj, "/status/phase") == "Bound";
            vec![
                name,
                json!(str_at(obj, "/status/phase")),
                json!(str_at(obj, "/spec/volumeName")),
                json!(if bound { str_at(obj, "/status/capacity/storage") } else { "" }),
                json!(if bound { access_modes(obj, "/status/accessModes") } else { String::new() }),
                json!(str_at(obj, "/spec/storageClassName")),
                json!(or_none(str_at(obj, "/spec/volumeAttributesClassName").into())),
                age(obj, now),
                json!(or_none(str_at(obj, "/spec/volumeMode").into())),
            ]
        }
        ("apiextensions.k8s.io", "customresourcedefinitions") | ("", "limitranges") => {
            vec![name, json!(str_at(obj, "/metadata/creationTimestamp"))]
        }
        ("", "resourcequotas") => {
            // "key: used/hard" for each hard limit, limits.* in their own column.
            let (mut req, mut lim) = (Vec::new(), Vec::new());
            if let Some(hard) = obj.pointer("/status/hard").and_then(Value::as_object) {
                let mut keys: Vec<&String> = hard.keys().collect();
                keys.sort();
                for k in keys {
                    let used = obj.pointer("/status/used").and_then(|u| u.get(k.as_str())).and_then(Value::as_str);
                    let cell = format!("{k}: {}/{}", used.unwrap_or("0"), hard[k.as_str()].as_str().unwrap_or(""));
                    if k.split('.').next() == Some("limits") && k.contains('.') {
                        lim.push(cell)
                    } else {
                        req.push(cell)
                    }
                }
            }
            vec![name, age(obj, now), json!(req.join(", ")), json!(lim.join(", "))]
        }
        ("scheduling.k8s.io", "priorityclasses") => vec![
            name,
            json!(obj.get("value").and_then(Value::as_i64).unwrap_or(0)),
            json!(obj.get("globalDefault").and_then(Value::as_bool).unwrap_or(false)),
            age(obj, now),
            json!(str_at(obj, "/preemptionPolicy")),
        ],
        _ => vec![name, age(obj, now)],
    }
}

/// Column definitions as a Table carries them.
pub fn column_definitions(group: &str, plural: &str) -> Vec<Value> {
    columns(group, plural)
        .into_iter()
        .map(|Col(n, t, p)| {
            let (format, description) = if n == "Name" && p == 0 {
                ("name", "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names")
            } else {
                ("", "")
            };
            json!({"name": n, "type": t, "format": format, "description": description, "priority": p})
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_print_like_kubectl() {
        for (s, want) in [
            (5, "5s"),
            (119, "119s"),
            (150, "2m30s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (9 * 3600, "9h"),
            (3 * 86400 + 3600, "3d1h"),
            (30 * 86400, "30d"),
        ] {
            assert_eq!(human_duration(s), want);
        }
    }

    #[test]
    fn pod_row() {
        let pod = json!({"metadata": {"name": "p", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.42.0.5", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 1, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        let c = cells("", "pods", &pod, 1577836800 + 60);
        assert_eq!(c[1], "1/2");
        assert_eq!(c[2], "CrashLoopBackOff");
        assert_eq!(c[3], "1");
        assert_eq!(c[4], "60s");
        assert_eq!(c[6], "n1");
    }
}
