//! ResourceQuota accounting, as Kubernetes's quota evaluators count: object counts
//! (`pods`, `services`, `count/deployments.apps`, ...), the compute requests and
//! limits of pods that have not finished, and the storage claims ask for.

use serde_json::Value;

/// The kind (group, plural) a quota key is counted over, or None for keys rk does
/// not know (those are not enforced).
pub fn kind_of(key: &str) -> Option<(String, String)> {
    let core = |p: &str| Some((String::new(), p.to_string()));
    match key {
        "pods" | "cpu" | "memory" | "ephemeral-storage" => core("pods"),
        k if k.starts_with("requests.") && k != "requests.storage" && !k.ends_with(".storage") => core("pods"),
        k if k.starts_with("limits.") => core("pods"),
        "services" | "services.loadbalancers" | "services.nodeports" => core("services"),
        "configmaps" | "secrets" | "replicationcontrollers" | "resourcequotas" => core(key),
        "persistentvolumeclaims" | "requests.storage" => core("persistentvolumeclaims"),
        k => {
            let rest = k.strip_prefix("count/")?;
            match rest.split_once('.') {
                Some((plural, group)) => Some((group.to_string(), plural.to_string())),
                None => core(rest),
            }
        }
    }
}

fn terminal(pod: &Value) -> bool {
    matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
}

/// The pod's effective request or limit of `resource` (`cpu`, `memory`, ...): the sum
/// over its containers, or the largest init container's if that is more.
pub fn pod_amount(pod: &Value, section: &str, resource: &str) -> f64 {
    let get = |c: &Value| {
        c["resources"][section][resource].as_str().and_then(crate::server::scheduler::parse_quantity).unwrap_or(0.0)
    };
    let empty = Vec::new();
    let sum: f64 = pod["spec"]["containers"].as_array().unwrap_or(&empty).iter().map(get).sum();
    let init = pod["spec"]["initContainers"].as_array().unwrap_or(&empty).iter().map(get).fold(0.0, f64::max);
    sum.max(init)
}

/// How much of `key` one object uses.
pub fn usage(key: &str, obj: &Value) -> f64 {
    let Some((group, plural)) = kind_of(key) else { return 0.0 };
    if group.is_empty() && plural == "pods" {
        if terminal(obj) {
            return 0.0;
        }
        return match key {
            "pods" | "count/pods" => 1.0,
            "cpu" | "memory" | "ephemeral-storage" => pod_amount(obj, "requests", key),
            k => match k.split_once('.') {
                Some(("requests", r)) => pod_amount(obj, "requests", r),
                Some(("limits", r)) => pod_amount(obj, "limits", r),
                _ => 0.0,
            },
        };
    }
    match key {
        "services.loadbalancers" => (obj["spec"]["type"] == "LoadBalancer") as u8 as f64,
        "services.nodeports" => {
            if matches!(obj["spec"]["type"].as_str(), Some("NodePort" | "LoadBalancer")) {
                obj["spec"]["ports"].as_array().map(|p| p.len()).unwrap_or(0) as f64
            } else {
                0.0
            }
        }
        "requests.storage" => obj["spec"]["resources"]["requests"]["storage"]
            .as_str()
            .and_then(crate::server::scheduler::parse_quantity)
            .unwrap_or(0.0),
        _ => 1.0,
    }
}

/// The containers of a pod that set no `section.resource` (for "must specify").
pub fn missing(pod: &Value, key: &str) -> Vec<String> {
    let (section, resource) = match key {
        "cpu" | "memory" => ("requests", key),
        k => match k.split_once('.') {
            Some(("requests" | "limits", r)) if matches!(r, "cpu" | "memory") => (k.split_once('.').unwrap().0, r),
            _ => return vec![],
        },
    };
    let empty = Vec::new();
    pod["spec"]["containers"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .filter(|c| c["resources"][section][resource].is_null())
        .map(|c| c["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// A quantity as Kubernetes prints it: `2`, `500m`, `64Mi`.
pub fn format(key: &str, v: f64) -> String {
    let bytes = key.contains("memory") || key.contains("storage");
    if bytes {
        let n = v.round() as i64;
        for (unit, size) in [("Ti", 1i64 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
            if n != 0 && n % size == 0 {
                return format!("{}{unit}", n / size);
            }
        }
        return n.to_string();
    }
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round() as i64)
    } else {
        format!("{}m", (v * 1000.0).round() as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pods_count_their_requests_and_limits() {
        let pod = json!({"spec": {"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "1"}}},
            {"name": "b", "resources": {"requests": {"cpu": "250m"}}}]}});
        assert_eq!(usage("pods", &pod), 1.0);
        assert_eq!(usage("requests.cpu", &pod), 0.5);
        assert_eq!(usage("cpu", &pod), 0.5);
        assert_eq!(usage("limits.cpu", &pod), 1.0);
        assert_eq!(format("requests.memory", usage("requests.memory", &pod)), "64Mi");
        assert_eq!(format("requests.cpu", 0.5), "500m");
        assert_eq!(missing(&pod, "limits.cpu"), vec!["b".to_string()]);
        let done = json!({"spec": {}, "status": {"phase": "Succeeded"}});
        assert_eq!(usage("pods", &done), 0.0);
        assert_eq!(kind_of("count/deployments.apps"), Some(("apps".into(), "deployments".into())));
        assert_eq!(kind_of("requests.storage"), Some(("".into(), "persistentvolumeclaims".into())));
    }
}
