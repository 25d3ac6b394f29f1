//! LimitRanger, as Kubernetes's admission plugin does it
//! (plugin/pkg/admission/limitranger): a LimitRange's `Container` defaults fill in
//! the requests and limits a new pod's containers leave out (noted in the
//! `kubernetes.io/limit-ranger` annotation), and then `min`, `max` and
//! `maxLimitRequestRatio` of the `Container`, `Pod` and `PersistentVolumeClaim` items
//! are enforced with the upstream messages.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::server::scheduler::parse_quantity;

/// The annotation naming what LimitRanger set.
pub const ANNOTATION: &str = "kubernetes.io/limit-ranger";

/// `SetDefaults_LimitRangeItem`: for `Container` items, a missing default limit is
/// the max, a missing default request the default limit, else the min.
pub fn default_item(item: &mut Value) {
    if item["type"] != "Container" {
        return;
    }
    let get = |item: &Value, k: &str| item[k].as_object().cloned().unwrap_or_default();
    let (max, min) = (get(item, "max"), get(item, "min"));
    let mut default = get(item, "default");
    for (k, v) in &max {
        default.entry(k.clone()).or_insert_with(|| v.clone());
    }
    let mut request = get(item, "defaultRequest");
    for (k, v) in default.iter().chain(min.iter()) {
        request.entry(k.clone()).or_insert_with(|| v.clone());
    }
    item["default"] = Value::Object(default);
    item["defaultRequest"] = Value::Object(request);
}

/// Defaults every item of a LimitRange (`spec.limits`).
pub fn default_range(lr: &mut Value) {
    for item in lr["spec"]["limits"].as_array_mut().into_iter().flatten() {
        default_item(item);
    }
}

/// The items of `ranges` of one type, defaulted.
fn items<'a>(ranges: &'a [Value], ty: &'a str) -> impl Iterator<Item = Value> + 'a {
    ranges
        .iter()
        .flat_map(|r| r["spec"]["limits"].as_array().cloned().unwrap_or_default())
        .filter(move |i| i["type"] == ty)
        .map(|mut i| {
            default_item(&mut i);
            i
        })
}

type List = Map<String, Value>;

fn list(v: &Value) -> List {
    v.as_object().cloned().unwrap_or_default()
}

/// Fills a container's missing requests and limits from `default_requests` /
/// `default_limits`; returns the annotation parts (`cpu, memory request for container app`).
fn merge(c: &mut Value, limits: &List, requests: &List, what: &str, notes: &mut Vec<String>) {
    let name = c["name"].as_str().unwrap_or("").to_string();
    if !c["resources"].is_object() {
        c["resources"] = json!({});
    }
    let mut set = |field: &str, defaults: &List| -> Vec<String> {
        let mut done = Vec::new();
        if defaults.is_empty() {
            return done;
        }
        let r = &mut c["resources"];
        if !r[field].is_object() {
            r[field] = json!({});
        }
        let have = r[field].as_object_mut().expect("made an object above");
        for (k, v) in defaults {
            if !have.contains_key(k) {
                have.insert(k.clone(), v.clone());
                done.push(k.clone());
            }
        }
        done.sort();
        done
    };
    let set_limits = set("limits", limits);
    let set_requests = set("requests", requests);
    if !set_requests.is_empty() {
        notes.push(format!("{} request for {what} {name}", set_requests.join(", ")));
    }
    if !set_limits.is_empty() {
        notes.push(format!("{} limit for {what} {name}", set_limits.join(", ")));
    }
}

fn q(v: &Value) -> Option<f64> {
    v.as_str().and_then(parse_quantity).or_else(|| v.as_f64())
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Kubernetes's minConstraint.
fn min_constraint(ty: &str, res: &str, enforced: &Value, req: &List, lim: &List) -> Option<String> {
    let e = q(enforced)?;
    let Some(r) = req.get(res) else {
        return Some(format!("minimum {res} usage per {ty} is {}.  No request is specified", show(enforced)));
    };
    if q(r).is_some_and(|r| r < e) {
        return Some(format!("minimum {res} usage per {ty} is {}, but request is {}", show(enforced), show(r)));
    }
    if let Some(l) = lim.get(res)
        && q(l).is_some_and(|l| l < e)
    {
        return Some(format!("minimum {res} usage per {ty} is {}, but limit is {}", show(enforced), show(l)));
    }
    None
}

/// Kubernetes's maxConstraint.
fn max_constraint(ty: &str, res: &str, enforced: &Value, req: &List, lim: &List) -> Option<String> {
    let e = q(enforced)?;
    let Some(l) = lim.get(res) else {
        return Some(format!("maximum {res} usage per {ty} is {}.  No limit is specified", show(enforced)));
    };
    if q(l).is_some_and(|l| l > e) {
        return Some(format!("maximum {res} usage per {ty} is {}, but limit is {}", show(enforced), show(l)));
    }
    if let Some(r) = req.get(res)
        && q(r).is_some_and(|r| r > e)
    {
        return Some(format!("maximum {res} usage per {ty} is {}, but request is {}", show(enforced), show(r)));
    }
    None
}

/// Kubernetes's maxRequestConstraint (claims have requests, not limits, to hold to a max).
fn max_request_constraint(ty: &str, res: &str, enforced: &Value, req: &List) -> Option<String> {
    let e = q(enforced)?;
    let Some(r) = req.get(res) else {
        return Some(format!("maximum {res} usage per {ty} is {}.  No request is specified", show(enforced)));
    };
    q(r).is_some_and(|r| r > e)
        .then(|| format!("maximum {res} usage per {ty} is {}, but request is {}", show(enforced), show(r)))
}

/// Kubernetes's limitRequestRatioConstraint.
fn ratio_constraint(ty: &str, res: &str, enforced: &Value, req: &List, lim: &List) -> Option<String> {
    let e = q(enforced)?;
    let r = req.get(res).and_then(q).filter(|r| *r != 0.0);
    let Some(r) = r else {
        return Some(format!(
            "{res} max limit to request ratio per {ty} is {}, but no request is specified or request is 0",
            show(enforced)
        ));
    };
    let l = lim.get(res).and_then(q).filter(|l| *l != 0.0);
    let Some(l) = l else {
        return Some(format!(
            "{res} max limit to request ratio per {ty} is {}, but no limit is specified or limit is 0",
            show(enforced)
        ));
    };
    let ratio = l / r;
    (ratio > e + 1e-9).then(|| {
        format!("{res} max limit to request ratio per {ty} is {}, but provided ratio is {ratio:.6}", show(enforced))
    })
}

/// Every constraint of one item over one set of requests and limits.
fn check(item: &Value, ty: &str, req: &List, lim: &List, errs: &mut Vec<String>) {
    for (k, v) in list(&item["min"]) {
        errs.extend(min_constraint(ty, &k, &v, req, lim));
    }
    for (k, v) in list(&item["max"]) {
        errs.extend(max_constraint(ty, &k, &v, req, lim));
    }
    for (k, v) in list(&item["maxLimitRequestRatio"]) {
        errs.extend(ratio_constraint(ty, &k, &v, req, lim));
    }
}

/// The pod's total requests (or limits): its containers' sum, or an init
/// container's if larger; a limit counts only when every container sets it.
fn pod_total(spec: &Value, field: &str) -> List {
    let of = |c: &Value| list(&c["resources"][field]);
    let containers = spec["containers"].as_array().cloned().unwrap_or_default();
    let mut sum: BTreeMap<String, f64> = BTreeMap::new();
    for c in &containers {
        for (k, v) in of(c) {
            *sum.entry(k).or_default() += q(&v).unwrap_or(0.0);
        }
    }
    if field == "limits" {
        sum.retain(|k, _| containers.iter().all(|c| of(c).contains_key(k)));
    }
    for c in spec["initContainers"].as_array().into_iter().flatten() {
        for (k, v) in of(c) {
            let v = q(&v).unwrap_or(0.0);
            let e = sum.entry(k).or_default();
            if v > *e {
                *e = v;
            }
        }
    }
    sum.into_iter().map(|(k, v)| (k.clone(), json!(crate::api::quota::format(&k, v)))).collect()
}

/// LimitRanger on a new pod: defaults, then limits. The errors are Kubernetes's,
/// one per broken constraint.
pub fn admit_pod(ranges: &[Value], pod: &mut Value) -> Result<(), Vec<String>> {
    let containers: Vec<Value> = items(ranges, "Container").collect();
    if containers.is_empty() && items(ranges, "Pod").next().is_none() {
        return Ok(());
    }
    let mut notes = Vec::new();
    for item in &containers {
        let (limits, requests) = (list(&item["default"]), list(&item["defaultRequest"]));
        for (field, what) in [("initContainers", "init container"), ("containers", "container")] {
            for c in pod["spec"][field].as_array_mut().into_iter().flatten() {
                merge(c, &limits, &requests, what, &mut notes);
            }
        }
    }
    if !notes.is_empty() {
        let m = crate::api::meta::meta_mut(pod);
        let a = m.entry("annotations").or_insert_with(|| json!({}));
        if !a.is_object() {
            *a = json!({});
        }
        a[ANNOTATION] = json!(format!("LimitRanger plugin set: {}", notes.join("; ")));
    }
    let mut errs = Vec::new();
    for item in &containers {
        for field in ["initContainers", "containers"] {
            for c in pod["spec"][field].as_array().into_iter().flatten() {
                let (req, lim) = (list(&c["resources"]["requests"]), list(&c["resources"]["limits"]));
                check(item, "Container", &req, &lim, &mut errs);
            }
        }
    }
    for item in items(ranges, "Pod") {
        let (req, lim) = (pod_total(&pod["spec"], "requests"), pod_total(&pod["spec"], "limits"));
        check(&item, "Pod", &req, &lim, &mut errs);
    }
    if errs.is_empty() { Ok(()) } else { Err(errs) }
}

/// LimitRanger on a new PersistentVolumeClaim: its storage request and limit.
pub fn admit_claim(ranges: &[Value], pvc: &Value) -> Result<(), Vec<String>> {
    let mut errs = Vec::new();
    let (req, lim) = (list(&pvc["spec"]["resources"]["requests"]), list(&pvc["spec"]["resources"]["limits"]));
    let ty = "PersistentVolumeClaim";
    for item in items(ranges, ty) {
        for (k, v) in list(&item["min"]) {
            errs.extend(min_constraint(ty, &k, &v, &req, &lim));
        }
        for (k, v) in list(&item["max"]) {
            errs.extend(max_request_constraint(ty, &k, &v, &req));
        }
    }
    if errs.is_empty() { Ok(()) } else { Err(errs) }
}

/// Kubernetes's aggregate error text: one message alone, several in brackets.
pub fn aggregate(errs: &[String]) -> String {
    match errs {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(limits: Value) -> Vec<Value> {
        vec![json!({"metadata": {"name": "lr"}, "spec": {"limits": limits}})]
    }

    #[test]
    fn defaults_fill_what_containers_leave_out() {
        let ranges = range(json!([{"type": "Container", "default": {"cpu": "500m", "memory": "256Mi"},
                                   "defaultRequest": {"cpu": "100m"}}]));
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "app", "image": "x"},
            {"name": "side", "image": "x", "resources": {"limits": {"cpu": "1"}, "requests": {"cpu": "1", "memory": "64Mi"}}}]}});
        admit_pod(&ranges, &mut pod).unwrap();
        let app = &pod["spec"]["containers"][0]["resources"];
        assert_eq!(app["limits"], json!({"cpu": "500m", "memory": "256Mi"}));
        // The default request of memory is its default limit.
        assert_eq!(app["requests"], json!({"cpu": "100m", "memory": "256Mi"}));
        assert_eq!(
            pod["metadata"]["annotations"][ANNOTATION],
            "LimitRanger plugin set: cpu, memory request for container app; cpu, memory limit for container app; memory limit for container side"
        );
    }

    #[test]
    fn limits_are_enforced_with_upstream_messages() {
        let ranges = range(json!([{"type": "Container", "min": {"cpu": "100m"}, "max": {"memory": "1Gi"},
                                   "maxLimitRequestRatio": {"cpu": "2"}}]));
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "app", "resources": {
            "requests": {"cpu": "50m", "memory": "2Gi"}, "limits": {"cpu": "400m", "memory": "2Gi"}}}]}});
        let errs = admit_pod(&ranges, &mut pod).unwrap_err();
        assert_eq!(
            errs,
            vec![
                "minimum cpu usage per Container is 100m, but request is 50m",
                "maximum memory usage per Container is 1Gi, but limit is 2Gi",
                "cpu max limit to request ratio per Container is 2, but provided ratio is 8.000000",
            ]
        );
        // max also defaults the limit (SetDefaults_LimitRangeItem), so a pod that sets
        // none gets the max and passes.
        let mut ok = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "app",
            "resources": {"requests": {"cpu": "200m"}, "limits": {"cpu": "300m"}}}]}});
        admit_pod(&ranges, &mut ok).unwrap();
        assert_eq!(ok["spec"]["containers"][0]["resources"]["limits"]["memory"], "1Gi");
        assert_eq!(aggregate(&errs[..1]), errs[0]);
        assert!(aggregate(&errs).starts_with("[minimum cpu"));
    }

    #[test]
    fn pod_and_claim_items() {
        let ranges = range(json!([{"type": "Pod", "max": {"cpu": "1"}},
                                  {"type": "PersistentVolumeClaim", "min": {"storage": "1Gi"}, "max": {"storage": "5Gi"}}]));
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "resources": {"limits": {"cpu": "600m"}}},
            {"name": "b", "resources": {"limits": {"cpu": "600m"}}}]}});
        assert_eq!(
            admit_pod(&ranges, &mut pod).unwrap_err(),
            vec!["maximum cpu usage per Pod is 1, but limit is 1200m"]
        );
        let claim = |s: &str| json!({"spec": {"resources": {"requests": {"storage": s}}}});
        assert!(admit_claim(&ranges, &claim("2Gi")).is_ok());
        assert_eq!(
            admit_claim(&ranges, &claim("500Mi")).unwrap_err(),
            vec!["minimum storage usage per PersistentVolumeClaim is 1Gi, but request is 500Mi"]
        );
    }
}
