//! The scheduler: places each pod without a node on a feasible node and binds it
//! through `pods/binding`, as kube-scheduler does.
//!
//! Caches of nodes and pods (kube-runtime reflectors) feed passes that run whenever
//! either changes. Filters: cordoned nodes, node readiness (as the `not-ready` taint
//! would), taints and tolerations, `nodeSelector` and required node affinity, CPU /
//! memory / pod-count requests against allocatable minus what is bound, host ports.
//! Score: least allocated plus balanced allocation, ties broken round-robin. A pod
//! that fits nowhere gets `PodScheduled=False` with reason `Unschedulable` and a
//! `FailedScheduling` event in kube-scheduler's words, and is retried whenever a node
//! or pod changes. Bound pods are "assumed" until the cache shows the binding, so a
//! burst never overcommits a node.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement, Pod, Taint, Toleration};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The scheduler's name, which pods ask for in `spec.schedulerName`.
pub const NAME: &str = "default-scheduler";

/// Parses a Kubernetes quantity ("100m", "1.5", "128Mi", "2G", "1e3") to base units.
pub fn parse_quantity(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+')).unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let (num, suffix) = if suffix.starts_with(['e', 'E']) && suffix.len() > 1 { (s, "") } else { (num, suffix) };
    let n: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0_f64.powi(2),
        "Gi" => 1024.0_f64.powi(3),
        "Ti" => 1024.0_f64.powi(4),
        "Pi" => 1024.0_f64.powi(5),
        "Ei" => 1024.0_f64.powi(6),
        _ => return None,
    };
    Some(n * mult)
}

/// What a pod asks for: CPU in millicores, memory in bytes, host ports.
#[derive(Clone, Debug, Default)]
struct Request {
    cpu: f64,
    mem: f64,
    ports: Vec<(String, i32)>,
}

fn container_requests(c: &k8s_openapi::api::core::v1::Container) -> (f64, f64) {
    let r = c.resources.as_ref();
    let get = |name: &str| {
        r.and_then(|r| {
            r.requests.as_ref().and_then(|m| m.get(name)).or_else(|| r.limits.as_ref().and_then(|m| m.get(name)))
        })
        .and_then(|q| parse_quantity(&q.0))
        .unwrap_or(0.0)
    };
    (get("cpu") * 1000.0, get("memory"))
}

fn pod_request(p: &Pod) -> Request {
    let Some(spec) = p.spec.as_ref() else { return Request::default() };
    let (mut cpu, mut mem) = (0.0, 0.0);
    let mut ports = Vec::new();
    for c in &spec.containers {
        let (c_cpu, c_mem) = container_requests(c);
        cpu += c_cpu;
        mem += c_mem;
        for p in c.ports.iter().flatten() {
            if let Some(hp) = p.host_port.filter(|hp| *hp > 0) {
                ports.push((p.protocol.clone().unwrap_or_else(|| "TCP".into()), hp));
            }
        }
    }
    for c in spec.init_containers.iter().flatten() {
        let (c_cpu, c_mem) = container_requests(c);
        cpu = cpu.max(c_cpu);
        mem = mem.max(c_mem);
    }
    Request { cpu, mem, ports }
}

fn node_alloc(n: &Node) -> (f64, f64, f64) {
    let a = n.status.as_ref().and_then(|s| s.allocatable.clone()).unwrap_or_default();
    let q = |k: &str| a.get(k).and_then(|q| parse_quantity(&q.0));
    (q("cpu").map(|c| c * 1000.0).unwrap_or(0.0), q("memory").unwrap_or(0.0), q("pods").unwrap_or(110.0))
}

fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub(crate) fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if t.effect.as_deref().is_some_and(|e| !e.is_empty() && e != taint.effect) {
        return false;
    }
    let exists = t.operator.as_deref() == Some("Exists");
    match t.key.as_deref() {
        None | Some("") => exists,
        Some(k) if k != taint.key => false,
        Some(_) => exists || t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
    }
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let vals = r.values.clone().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| vals.iter().any(|x| x == v)),
        "NotIn" => !value.is_some_and(|v| vals.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(x)) =
                (value.and_then(|v| v.parse::<i64>().ok()), vals.first().and_then(|x| x.parse::<i64>().ok()))
            else {
                return false;
            };
            if r.operator == "Gt" { v > x } else { v < x }
        }
        _ => false,
    }
}

pub(crate) fn affinity_matches(p: &Pod, n: &Node) -> bool {
    let spec = p.spec.as_ref();
    let labels = n.labels();
    if let Some(sel) = spec.and_then(|s| s.node_selector.as_ref())
        && !sel.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    let required = spec
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| na.required_during_scheduling_ignored_during_execution.as_ref());
    let Some(req) = required else { return true };
    let name = n.name_any();
    req.node_selector_terms.iter().any(|term| {
        let exprs_ok = term
            .match_expressions
            .iter()
            .flatten()
            .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)));
        let fields_ok = term
            .match_fields
            .iter()
            .flatten()
            .all(|r| requirement_matches(r, (r.key == "metadata.name").then_some(name.as_str())));
        let empty = term.match_expressions.as_ref().is_none_or(Vec::is_empty)
            && term.match_fields.as_ref().is_none_or(Vec::is_empty);
        !empty && exprs_ok && fields_ok
    })
}

/// What is bound to a node.
#[derive(Default, Clone)]
struct Usage {
    cpu: f64,
    mem: f64,
    pods: f64,
    ports: HashSet<(String, i32)>,
    /// Requests as scoring counts them (kube-scheduler's non-zero defaults).
    score_cpu: f64,
    score_mem: f64,
}

/// For scoring, a pod without a CPU request counts as 100m and without a memory
/// request as 200 MiB, as kube-scheduler's `GetNonzeroRequests` does, so pods that ask
/// for nothing still spread.
fn nonzero_cpu(r: &Request) -> f64 {
    if r.cpu > 0.0 { r.cpu } else { 100.0 }
}

fn nonzero_mem(r: &Request) -> f64 {
    if r.mem > 0.0 { r.mem } else { 200.0 * 1024.0 * 1024.0 }
}

impl Usage {
    fn add(&mut self, r: &Request) {
        self.cpu += r.cpu;
        self.mem += r.mem;
        self.score_cpu += nonzero_cpu(r);
        self.score_mem += nonzero_mem(r);
        self.pods += 1.0;
        self.ports.extend(r.ports.iter().cloned());
    }
}

/// A node as one pass sees it, parsed once.
struct NodeInfo {
    node: Arc<Node>,
    name: String,
    cpu: f64,
    mem: f64,
    pods: f64,
    unschedulable: bool,
    /// NoSchedule and NoExecute taints, with `not-ready` for a node not Ready.
    taints: Vec<Taint>,
}

impl NodeInfo {
    fn new(node: Arc<Node>) -> NodeInfo {
        let (cpu, mem, pods) = node_alloc(&node);
        let mut taints: Vec<Taint> = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
            .collect();
        if !node_ready(&node) && !taints.iter().any(|t| t.key.starts_with("node.kubernetes.io/")) {
            taints.push(Taint {
                key: "node.kubernetes.io/not-ready".into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            });
        }
        NodeInfo {
            name: node.name_any(),
            unschedulable: node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true),
            node,
            cpu,
            mem,
            pods,
            taints,
        }
    }
}

/// kube-scheduler's `numFeasibleNodesToFind`: every node under 100, else an adaptive
/// percentage (50 - nodes/125, at least 5) and at least 100 nodes.
fn feasible_to_find(nodes: usize) -> usize {
    if nodes < 100 {
        return nodes;
    }
    let pct = (50 - (nodes as i64) / 125).max(5) as usize;
    (nodes * pct / 100).max(100)
}

/// Why a node was filtered out, in kube-scheduler's words.
fn filter(
    p: &Pod,
    tolerations: &[Toleration],
    req: &Request,
    n: &NodeInfo,
    used: Option<&Usage>,
) -> Result<(), Vec<String>> {
    if n.unschedulable {
        let t =
            Taint { key: "node.kubernetes.io/unschedulable".into(), effect: "NoSchedule".into(), ..Default::default() };
        if !tolerations.iter().any(|tol| tolerates(tol, &t)) {
            return Err(vec!["node(s) were unschedulable".into()]);
        }
    }
    if let Some(t) = n.taints.iter().find(|t| !tolerations.iter().any(|tol| tolerates(tol, t))) {
        return Err(vec![format!("node(s) had untolerated taint {{{}: {}}}", t.key, t.value.as_deref().unwrap_or(""))]);
    }
    if !affinity_matches(p, &n.node) {
        return Err(vec!["node(s) didn't match Pod's node affinity/selector".into()]);
    }
    let (ucpu, umem, upods) = used.map(|u| (u.cpu, u.mem, u.pods)).unwrap_or_default();
    let mut why = Vec::new();
    if upods + 1.0 > n.pods {
        why.push("Too many pods".to_string());
    }
    if req.cpu > 0.0 && ucpu + req.cpu > n.cpu {
        why.push("Insufficient cpu".to_string());
    }
    if req.mem > 0.0 && umem + req.mem > n.mem {
        why.push("Insufficient memory".to_string());
    }
    if used.is_some_and(|u| req.ports.iter().any(|p| u.ports.contains(p))) {
        why.push("node(s) didn't have free ports for the requested pod ports".to_string());
    }
    if why.is_empty() { Ok(()) } else { Err(why) }
}

/// Least-allocated plus balanced-allocation score, 0..=200.
fn score(req: &Request, n: &NodeInfo, used: Option<&Usage>) -> f64 {
    let (ucpu, umem) = used.map(|u| (u.score_cpu, u.score_mem)).unwrap_or_default();
    let frac = |u: f64, a: f64| if a <= 0.0 { 1.0 } else { (u / a).min(1.0) };
    let fc = frac(ucpu + nonzero_cpu(req), n.cpu);
    let fm = frac(umem + nonzero_mem(req), n.mem);
    let least = ((1.0 - fc) + (1.0 - fm)) * 50.0;
    let balanced = (1.0 - (fc - fm).abs()) * 100.0;
    least + balanced
}

fn is_pending(p: &Pod) -> bool {
    let spec = p.spec.as_ref();
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("");
    spec.and_then(|s| s.node_name.as_deref()).is_none_or(str::is_empty)
        && spec.and_then(|s| s.scheduler_name.as_deref()).is_none_or(|n| n == NAME)
        && p.metadata.deletion_timestamp.is_none()
        && phase != "Succeeded"
        && phase != "Failed"
}

struct Scheduler {
    client: kube::Client,
    nodes: Store<Node>,
    pods: Store<Pod>,
    recorder: Recorder,
    /// Pods bound by this scheduler whose binding the cache may not show yet.
    assumed: HashMap<String, (String, Request)>,
    /// Round-robin start among equally good nodes.
    next: usize,
}

impl Scheduler {
    async fn event(&self, p: &Pod, warning: bool, reason: &str, note: String) {
        let ev = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.into(),
            note: Some(note),
            action: if warning { "Scheduling".into() } else { "Binding".into() },
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &p.object_ref(&())).await {
            tracing::debug!(error = %e, "recording a scheduler event failed");
        }
    }

    /// One pass over every pending pod.
    async fn pass(&mut self) {
        let nodes = self.nodes.state();
        let pods = self.pods.state();
        // Forget assumptions the cache has caught up with.
        let bound: HashSet<String> = pods.iter().filter(|p| !is_pending(p)).filter_map(|p| p.uid()).collect();
        let live: HashSet<String> = pods.iter().filter_map(|p| p.uid()).collect();
        self.assumed.retain(|uid, _| live.contains(uid) && !bound.contains(uid));

        let mut usage: HashMap<String, Usage> = HashMap::new();
        for p in pods.iter() {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("");
            if let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()).filter(|n| !n.is_empty())
                && phase != "Succeeded"
                && phase != "Failed"
            {
                usage.entry(n.to_string()).or_default().add(&pod_request(p));
            }
        }
        for (node, req) in self.assumed.values() {
            usage.entry(node.clone()).or_default().add(req);
        }
        let mut pending: Vec<Arc<Pod>> = pods
            .iter()
            .filter(|p| is_pending(p) && !self.assumed.contains_key(&p.uid().unwrap_or_default()))
            .cloned()
            .collect();
        pending.sort_by_key(|p| {
            let prio = p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
            (std::cmp::Reverse(prio), p.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()).unwrap_or(0))
        });
        let mut infos: Vec<NodeInfo> = nodes.into_iter().map(NodeInfo::new).collect();
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        let index: HashMap<String, usize> = infos.iter().enumerate().map(|(i, n)| (n.name.clone(), i)).collect();
        let mut used: Vec<Option<Usage>> = (0..infos.len()).map(|_| None).collect();
        for (name, u) in usage {
            if let Some(&i) = index.get(&name) {
                used[i] = Some(u);
            }
        }
        let count = infos.len();
        let to_find = feasible_to_find(count);
        let mut binds: Vec<(Arc<Pod>, String)> = Vec::new();
        for p in pending {
            let req = pod_request(&p);
            let tolerations = p.spec.as_ref().and_then(|s| s.tolerations.clone()).unwrap_or_default();
            let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
            let mut best: Option<(f64, usize)> = None;
            let mut feasible = 0;
            let mut visited = 0;
            for k in 0..count {
                let i = (self.next + k) % count;
                visited = k + 1;
                match filter(&p, &tolerations, &req, &infos[i], used[i].as_ref()) {
                    Ok(()) => {
                        let s = score(&req, &infos[i], used[i].as_ref());
                        if best.is_none_or(|(b, _)| s > b) {
                            best = Some((s, i));
                        }
                        feasible += 1;
                        if feasible >= to_find {
                            break;
                        }
                    }
                    Err(why) => {
                        for w in why {
                            *reasons.entry(w).or_default() += 1;
                        }
                    }
                }
            }
            match best {
                Some((_, i)) => {
                    // The next pod starts where this search stopped, as kube-scheduler does.
                    self.next = if visited == count { (i + 1) % count } else { (self.next + visited) % count };
                    used[i].get_or_insert_with(Usage::default).add(&req);
                    self.assumed.insert(p.uid().unwrap_or_default(), (infos[i].name.clone(), req));
                    binds.push((p, infos[i].name.clone()));
                }
                None => self.unschedulable(&p, count, &reasons).await,
            }
        }
        // Binding is asynchronous in kube-scheduler too: decisions are made, then bound.
        let this = &*self;
        let failed: Vec<String> = futures::stream::iter(binds)
            .map(|(p, node)| async move { (!this.bind(&p, &node).await).then(|| p.uid().unwrap_or_default()) })
            .buffer_unordered(64)
            .filter_map(futures::future::ready)
            .collect()
            .await;
        for uid in failed {
            self.assumed.remove(&uid);
        }
    }

    async fn bind(&self, p: &Pod, node: &str) -> bool {
        let ns = p.namespace().unwrap_or_default();
        let name = p.name_any();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let binding = json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": name, "namespace": ns, "uid": p.uid()},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        });
        match api.create_subresource::<_, serde_json::Value>("binding", &name, &PostParams::default(), &binding).await {
            Ok(_) => {
                self.event(p, false, "Scheduled", format!("Successfully assigned {ns}/{name} to {node}")).await;
                true
            }
            Err(e) => {
                tracing::debug!(pod = %name, %node, error = %e, "binding failed");
                false
            }
        }
    }

    async fn unschedulable(&self, p: &Pod, nodes: usize, reasons: &BTreeMap<String, usize>) {
        let mut msg = format!("0/{nodes} nodes are available");
        if !reasons.is_empty() {
            let parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
            msg.push_str(&format!(": {}", parts.join(", ")));
        }
        msg.push_str(&format!(
            ". preemption: 0/{nodes} nodes are available: {nodes} Preemption is not helpful for scheduling."
        ));
        let current = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"))
            .and_then(|c| c.message.clone());
        if current.as_deref() == Some(msg.as_str()) {
            return;
        }
        let ns = p.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let mut conds: Vec<serde_json::Value> = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .map(|cs| {
                cs.iter().filter(|c| c.type_ != "PodScheduled").filter_map(|c| serde_json::to_value(c).ok()).collect()
            })
            .unwrap_or_default();
        conds.push(json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": msg,
                          "lastProbeTime": null, "lastTransitionTime": now}));
        let patch = json!({"status": {"phase": "Pending", "conditions": conds}});
        if let Err(e) = api.patch_status(&p.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
            tracing::debug!(error = %e, "marking a pod unschedulable failed");
        }
        self.event(p, true, "FailedScheduling", msg).await;
    }
}

/// Runs the scheduler until `shutdown`.
pub async fn run(client: kube::Client, shutdown: CancellationToken) {
    let wake = Arc::new(Notify::new());
    let (nodes, nodes_w) = reflector::store::<Node>();
    let (pods, pods_w) = reflector::store::<Pod>();
    let feed_nodes = {
        let wake = wake.clone();
        reflector::reflector(nodes_w, watcher(Api::<Node>::all(client.clone()), watcher::Config::default()))
            .default_backoff()
            .for_each(move |_| {
                wake.notify_one();
                futures::future::ready(())
            })
    };
    let feed_pods = {
        let wake = wake.clone();
        reflector::reflector(pods_w, watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()))
            .default_backoff()
            .for_each(move |_| {
                wake.notify_one();
                futures::future::ready(())
            })
    };
    let reporter = Reporter { controller: NAME.into(), instance: None };
    let mut s = Scheduler {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        nodes: nodes.clone(),
        pods: pods.clone(),
        assumed: HashMap::new(),
        next: 0,
    };
    let main = async {
        if nodes.wait_until_ready().await.is_err() || pods.wait_until_ready().await.is_err() {
            return;
        }
        crate::component_ready("scheduler");
        loop {
            wake.notified().await;
            // Let a burst of changes settle into one pass.
            tokio::time::sleep(Duration::from_millis(5)).await;
            s.pass().await;
        }
    };
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = feed_nodes => {}
        _ = feed_pods => {}
        _ = main => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse() {
        assert_eq!(parse_quantity("100m"), Some(0.1));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("128Mi"), Some(128.0 * 1024.0 * 1024.0));
        assert_eq!(parse_quantity("1G"), Some(1e9));
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
        assert_eq!(parse_quantity("1.5"), Some(1.5));
        assert_eq!(parse_quantity("12x"), None);
    }

    #[test]
    fn tolerations_match_taints() {
        let taint =
            Taint { key: "k".into(), value: Some("v".into()), effect: "NoSchedule".into(), ..Default::default() };
        let eq = Toleration { key: Some("k".into()), value: Some("v".into()), ..Default::default() };
        let other = Toleration { key: Some("k".into()), value: Some("w".into()), ..Default::default() };
        let exists = Toleration { operator: Some("Exists".into()), ..Default::default() };
        let wrong_effect = Toleration {
            key: Some("k".into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            ..Default::default()
        };
        assert!(tolerates(&eq, &taint));
        assert!(!tolerates(&other, &taint));
        assert!(tolerates(&exists, &taint));
        assert!(!tolerates(&wrong_effect, &taint));
    }
}
