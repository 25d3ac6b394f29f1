//! The scheduler: places each pod without a node on a feasible node and binds it
//! through `pods/binding`, as kube-scheduler does.
//!
//! Caches of nodes and namespaces (kube-runtime reflectors) and the controller
//! manager's shared pod cache feed passes that run whenever one changes or a backoff
//! expires. Filters, in kube-scheduler's plugin order: cordoned nodes, node readiness
//! (as the `not-ready` taint would), taints and tolerations, `nodeSelector` and
//! required node affinity, host ports, CPU / memory / pod-count requests against
//! allocatable minus what is bound, topology spread (`DoNotSchedule`), inter-pod
//! affinity and anti-affinity (also existing pods' anti-affinity). Scores, weighted as
//! kube-scheduler's default profile: least allocated and balanced allocation (1 each),
//! preferred node affinity, preferred inter-pod affinity and `ScheduleAnyway` spreading
//! (2 each), `PreferNoSchedule` taints (3); ties broken round-robin. Only a share of
//! the nodes is searched on big clusters
//! ([`config::SchedulerConfig::feasible_to_find`]).
//!
//! A pod that fits nowhere may preempt pods of lower priority ([`preemption`]);
//! otherwise it gets `PodScheduled=False` with reason `Unschedulable` and a
//! `FailedScheduling` event in kube-scheduler's words, and is retried after a backoff
//! (1 s doubling to 10 s by default) on the next change. Bound pods are "assumed" until
//! the cache shows the binding, so a burst never overcommits a node.

mod config;
mod preemption;
mod topology;

pub use config::{ConfigError, Profile, SchedulerConfig};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::controllers::pod_cache::PodCache;
use crate::events::{Event, EventType, Recorder, Reporter};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, Taint, Toleration};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
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

/// Whether a node matches one `NodeSelectorTerm` (an empty term matches nothing).
fn node_term_matches(term: &NodeSelectorTerm, n: &Node) -> bool {
    let labels = n.labels();
    let exprs_ok =
        term.match_expressions.iter().flatten().all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)));
    let fields_ok = term.match_fields.iter().flatten().all(|r| {
        requirement_matches(r, (r.key == "metadata.name").then_some(n.metadata.name.as_deref().unwrap_or("")))
    });
    let empty = term.match_expressions.as_ref().is_none_or(Vec::is_empty)
        && term.match_fields.as_ref().is_none_or(Vec::is_empty);
    !empty && exprs_ok && fields_ok
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
    req.node_selector_terms.iter().any(|term| node_term_matches(term, n))
}

/// The summed weights of the preferred node-affinity terms a node matches.
fn preferred_node_affinity(p: &Pod, n: &Node) -> f64 {
    p.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| na.preferred_during_scheduling_ignored_during_execution.as_ref())
        .into_iter()
        .flatten()
        .filter(|t| node_term_matches(&t.preference, n))
        .map(|t| f64::from(t.weight))
        .sum()
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
    /// PreferNoSchedule taints, which only lower the score.
    soft_taints: Vec<Taint>,
}

impl NodeInfo {
    fn new(node: Arc<Node>) -> NodeInfo {
        let (cpu, mem, pods) = node_alloc(&node);
        let all = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
        let (soft_taints, mut taints): (Vec<Taint>, Vec<Taint>) = all
            .into_iter()
            .filter(|t| matches!(t.effect.as_str(), "NoSchedule" | "NoExecute" | "PreferNoSchedule"))
            .partition(|t| t.effect == "PreferNoSchedule");
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
            soft_taints,
        }
    }

    fn tolerated_by(&self, tolerations: &[Toleration]) -> bool {
        self.taints.iter().all(|t| tolerations.iter().any(|tol| tolerates(tol, t)))
    }
}

/// Why a node is out: kube-scheduler's reasons, and whether evicting pods could help
/// (the node failed only on resources or host ports).
type Rejection = (Vec<String>, bool);

/// Runs the filters that depend on the node and its usage alone.
fn filter(p: &Pod, tolerations: &[Toleration], req: &Request, n: &NodeInfo, used: &Usage) -> Result<(), Rejection> {
    if n.unschedulable {
        let t =
            Taint { key: "node.kubernetes.io/unschedulable".into(), effect: "NoSchedule".into(), ..Default::default() };
        if !tolerations.iter().any(|tol| tolerates(tol, &t)) {
            return Err((vec!["node(s) were unschedulable".into()], false));
        }
    }
    if let Some(t) = n.taints.iter().find(|t| !tolerations.iter().any(|tol| tolerates(tol, t))) {
        let why = format!("node(s) had untolerated taint {{{}: {}}}", t.key, t.value.as_deref().unwrap_or(""));
        return Err((vec![why], false));
    }
    if !affinity_matches(p, &n.node) {
        return Err((vec!["node(s) didn't match Pod's node affinity/selector".into()], false));
    }
    if req.ports.iter().any(|p| used.ports.contains(p)) {
        return Err((vec!["node(s) didn't have free ports for the requested pod ports".to_string()], true));
    }
    let mut why = Vec::new();
    if used.pods + 1.0 > n.pods {
        why.push("Too many pods".to_string());
    }
    if req.cpu > 0.0 && used.cpu + req.cpu > n.cpu {
        why.push("Insufficient cpu".to_string());
    }
    if req.mem > 0.0 && used.mem + req.mem > n.mem {
        why.push("Insufficient memory".to_string());
    }
    if why.is_empty() { Ok(()) } else { Err((why, true)) }
}

/// Least-allocated plus balanced-allocation score, 0..=200.
fn score(req: &Request, n: &NodeInfo, used: &Usage) -> f64 {
    let frac = |u: f64, a: f64| if a <= 0.0 { 1.0 } else { (u / a).min(1.0) };
    let fc = frac(used.score_cpu + nonzero_cpu(req), n.cpu);
    let fm = frac(used.score_mem + nonzero_mem(req), n.mem);
    let least = ((1.0 - fc) + (1.0 - fm)) * 50.0;
    let balanced = (1.0 - (fc - fm).abs()) * 100.0;
    least + balanced
}

fn priority(p: &Pod) -> i32 {
    p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

fn terminal(p: &Pod) -> bool {
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("");
    phase == "Succeeded" || phase == "Failed"
}

/// A pod this scheduler (one of its profiles) has to place.
fn is_pending(p: &Pod, cfg: &SchedulerConfig) -> bool {
    let spec = p.spec.as_ref();
    spec.and_then(|s| s.node_name.as_deref()).is_none_or(str::is_empty)
        && cfg.profile(spec.and_then(|s| s.scheduler_name.as_deref())).is_some()
        && p.metadata.deletion_timestamp.is_none()
        && !terminal(p)
}

/// Keeps the earlier of `wake` and `at`.
fn earliest(wake: &mut Option<Instant>, at: Instant) {
    *wake = Some(wake.map_or(at, |w| w.min(at)));
}

/// kube-scheduler's message for a pod that fits nowhere: each reason with the number
/// of nodes it applies to, sorted as strings (as `sortReasonsHistogram` does).
fn histogram(reasons: &BTreeMap<String, usize>) -> String {
    let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    parts.join(", ")
}

struct Scheduler {
    client: kube::Client,
    cfg: Arc<SchedulerConfig>,
    nodes: Store<Node>,
    /// The controller manager's shared pod cache.
    pods: Arc<PodCache>,
    namespaces: Store<Namespace>,
    /// One event recorder per profile, reporting as its scheduler name.
    recorders: HashMap<String, Recorder>,
    /// Pods bound by this scheduler whose binding the cache may not show yet.
    assumed: HashMap<String, (String, Request)>,
    /// Failed attempts per pod UID and when it may be tried again.
    backoff: HashMap<String, (u32, Instant)>,
    /// Round-robin start among equally good nodes.
    next: usize,
}

/// A pod's pick among the candidates (node index, base score): the best total score,
/// the first of equals in search order.
fn choose(
    p: &Pod,
    tolerations: &[Toleration],
    candidates: &[(usize, f64)],
    placement: Option<&topology::Placement>,
    nodes: &[NodeInfo],
) -> Option<usize> {
    let first_best = |scores: &mut dyn Iterator<Item = (usize, f64)>| {
        let mut best: Option<(f64, usize)> = None;
        for (i, s) in scores {
            if best.is_none_or(|(b, _)| s > b) {
                best = Some((s, i));
            }
        }
        best.map(|(_, i)| i)
    };
    let preferred_nodes = p
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .is_some_and(|na| na.preferred_during_scheduling_ignored_during_execution.is_some());
    let soft_taints = candidates.iter().any(|&(i, _)| !nodes[i].soft_taints.is_empty());
    let placed_scores = placement.is_some_and(|pl| pl.scores_anything());
    if !preferred_nodes && !soft_taints && !placed_scores {
        return first_best(&mut candidates.iter().copied());
    }
    let mut totals: Vec<f64> = candidates.iter().map(|c| c.1).collect();
    let idx: Vec<usize> = candidates.iter().map(|c| c.0).collect();
    if preferred_nodes {
        let raw: Vec<f64> = idx.iter().map(|&i| preferred_node_affinity(p, &nodes[i].node)).collect();
        let max = raw.iter().copied().fold(0.0, f64::max);
        if max > 0.0 {
            totals.iter_mut().zip(&raw).for_each(|(t, r)| *t += 2.0 * 100.0 * r / max);
        }
    }
    if soft_taints {
        let raw: Vec<f64> = idx
            .iter()
            .map(|&i| {
                nodes[i].soft_taints.iter().filter(|t| !tolerations.iter().any(|tol| tolerates(tol, t))).count() as f64
            })
            .collect();
        let max = raw.iter().copied().fold(0.0, f64::max);
        if max > 0.0 {
            totals.iter_mut().zip(&raw).for_each(|(t, r)| *t += 3.0 * 100.0 * (max - r) / max);
        }
    }
    if let Some(pl) = placement.filter(|pl| pl.scores_anything()) {
        totals.iter_mut().zip(pl.scores(&idx, nodes)).for_each(|(t, s)| *t += s);
    }
    first_best(&mut idx.iter().copied().zip(totals))
}

impl Scheduler {
    async fn event(&self, p: &Pod, warning: bool, reason: &str, action: &str, note: String) {
        let ev = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        let profile = self.cfg.profile(p.spec.as_ref().and_then(|s| s.scheduler_name.as_deref()));
        let Some(recorder) = profile.and_then(|pr| self.recorders.get(&pr.scheduler_name)) else { return };
        if let Err(e) = recorder.publish(&ev, &p.object_ref(&())).await {
            tracing::debug!(error = %e, "recording a scheduler event failed");
        }
    }

    /// Records a failed attempt; the pod is next tried after its backoff.
    fn back_off(&mut self, uid: &str) -> Instant {
        let now = Instant::now();
        let e = self.backoff.entry(uid.to_string()).or_insert((0, now));
        e.0 += 1;
        let wait = self.cfg.initial_backoff.saturating_mul(1 << (e.0 - 1).min(16)).min(self.cfg.max_backoff);
        e.1 = now + wait;
        e.1
    }

    /// One pass over every pending pod; returns when the next backoff expires.
    async fn pass(&mut self) -> Option<Instant> {
        let cfg = self.cfg.clone();
        let pods = self.pods.snapshot();
        // Pods without a node, including those assumed bound: an assumption the cache
        // has caught up with (bound, or gone) is forgotten.
        let unbound: HashSet<&str> =
            pods.iter().filter(|p| is_pending(p, &cfg)).filter_map(|p| p.metadata.uid.as_deref()).collect();
        self.assumed.retain(|uid, _| unbound.contains(uid.as_str()));
        self.backoff.retain(|uid, _| unbound.contains(uid.as_str()) && !self.assumed.contains_key(uid));
        let now = Instant::now();
        let mut wake: Option<Instant> = None;
        let mut pending: Vec<Arc<Pod>> = Vec::new();
        for p in pods.iter().filter(|p| is_pending(p, &cfg)) {
            let uid = p.metadata.uid.as_deref().unwrap_or_default();
            if self.assumed.contains_key(uid) {
                continue;
            }
            match self.backoff.get(uid) {
                Some((_, at)) if *at > now => earliest(&mut wake, *at),
                _ => pending.push(p.clone()),
            }
        }
        // Nothing to place (the usual case once pods run): no need to look further.
        if pending.is_empty() {
            return wake;
        }
        drop(unbound);

        let namespaces: topology::Namespaces =
            self.namespaces.state().iter().map(|n| (n.name_any(), n.labels().clone())).collect();
        let mut infos: Vec<NodeInfo> = self.nodes.state().into_iter().map(NodeInfo::new).collect();
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        let index: HashMap<String, usize> = infos.iter().enumerate().map(|(i, n)| (n.name.clone(), i)).collect();

        let mut placed: Vec<topology::Placed> = Vec::new();
        for p in pods.iter() {
            let node = p.spec.as_ref().and_then(|s| s.node_name.as_deref()).filter(|n| !n.is_empty());
            let assumed =
                node.is_none().then(|| self.assumed.get(p.metadata.uid.as_deref().unwrap_or_default())).flatten();
            let at = node.or(assumed.map(|a| a.0.as_str())).and_then(|n| index.get(n).copied());
            if let Some(at) = at
                && !terminal(p)
            {
                let req = assumed.map(|a| a.1.clone()).unwrap_or_else(|| pod_request(p));
                let terminating = p.metadata.deletion_timestamp.is_some();
                placed.push(topology::Placed { pod: p.clone(), node: at, priority: priority(p), req, terminating });
            }
        }
        pending.sort_by_key(|p| {
            (
                std::cmp::Reverse(priority(p)),
                p.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()).unwrap_or(0),
            )
        });

        let mut used = vec![Usage::default(); infos.len()];
        for p in &placed {
            used[p.node].add(&p.req);
        }
        let mut holders: Vec<topology::AntiHolder> =
            (0..placed.len()).filter_map(|i| topology::anti_holder(&placed, i, &namespaces)).collect();
        // Pods nominated to a node by a preemption hold its room against pods of no
        // higher priority until they are placed.
        let mut nominated: HashMap<usize, Vec<(i32, String, Request)>> = HashMap::new();
        for p in pods.iter().filter(|p| is_pending(p, &cfg)) {
            if let Some(&i) =
                p.status.as_ref().and_then(|s| s.nominated_node_name.as_ref()).and_then(|n| index.get(n.as_str()))
            {
                nominated.entry(i).or_default().push((priority(p), p.uid().unwrap_or_default(), pod_request(p)));
            }
        }

        let count = infos.len();
        let mut binds: Vec<(Arc<Pod>, String)> = Vec::new();
        let mut candidates: Vec<(usize, f64)> = Vec::new();
        for p in pending {
            let uid = p.uid().unwrap_or_default();
            let prio = priority(&p);
            let Some(profile) = cfg.profile(p.spec.as_ref().and_then(|s| s.scheduler_name.as_deref())) else {
                continue;
            };
            let to_find = cfg.feasible_to_find(profile, count);
            let req = pod_request(&p);
            let tolerations = p.spec.as_ref().and_then(|s| s.tolerations.clone()).unwrap_or_default();
            let placement = topology::Placement::needed(&p, &holders).then(|| {
                topology::Placement::new(&p, &placed, &holders, &infos, &namespaces, &|n| n.tolerated_by(&tolerations))
            });
            let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
            let mut resolvable: Vec<usize> = Vec::new();
            candidates.clear();
            let mut visited = 0;
            for k in 0..count {
                let i = (self.next + k) % count;
                visited = k + 1;
                let reserved: Vec<&Request> = if nominated.is_empty() {
                    Vec::new()
                } else {
                    nominated
                        .get(&i)
                        .into_iter()
                        .flatten()
                        .filter(|(np, nuid, _)| *np >= prio && *nuid != uid)
                        .map(|(_, _, r)| r)
                        .collect()
                };
                let with_reserved;
                let u = if reserved.is_empty() {
                    &used[i]
                } else {
                    let mut u = used[i].clone();
                    reserved.iter().for_each(|r| u.add(r));
                    with_reserved = u;
                    &with_reserved
                };
                let verdict = filter(&p, &tolerations, &req, &infos[i], u).and_then(|()| match &placement {
                    Some(pl) => pl.filter(&infos[i]).map_err(|(w, cure)| (vec![w.to_string()], cure)),
                    None => Ok(()),
                });
                match verdict {
                    Ok(()) => {
                        candidates.push((i, score(&req, &infos[i], u)));
                        if candidates.len() >= to_find {
                            break;
                        }
                    }
                    Err((why, cure)) => {
                        for w in why {
                            *reasons.entry(w).or_default() += 1;
                        }
                        if cure {
                            resolvable.push(i);
                        }
                    }
                }
            }
            if let Some(i) = choose(&p, &tolerations, &candidates, placement.as_ref(), &infos) {
                // The next pod starts where this search stopped, as kube-scheduler does.
                self.next = if visited == count { (i + 1) % count } else { (self.next + visited) % count };
                used[i].add(&req);
                for list in nominated.values_mut() {
                    list.retain(|(_, nuid, _)| *nuid != uid);
                }
                placed.push(topology::Placed {
                    pod: p.clone(),
                    node: i,
                    priority: prio,
                    req: req.clone(),
                    terminating: false,
                });
                if let Some(h) = topology::anti_holder(&placed, placed.len() - 1, &namespaces) {
                    holders.push(h);
                }
                self.assumed.insert(uid, (infos[i].name.clone(), req));
                binds.push((p, infos[i].name.clone()));
                continue;
            }
            // Evicting must cure more than resources: the pod's affinity and spreading
            // are checked again without the victims.
            let still_fits = |v: &preemption::Victims| {
                if !topology::Placement::needed(&p, &holders) {
                    return true;
                }
                let rest: Vec<topology::Placed> =
                    placed.iter().enumerate().filter(|(i, _)| !v.pods.contains(i)).map(|(_, x)| x.clone()).collect();
                let rest_holders: Vec<topology::AntiHolder> =
                    (0..rest.len()).filter_map(|i| topology::anti_holder(&rest, i, &namespaces)).collect();
                let tolerated = |n: &NodeInfo| n.tolerated_by(&tolerations);
                let pl = topology::Placement::new(&p, &rest, &rest_holders, &infos, &namespaces, &tolerated);
                pl.filter(&infos[v.node]).is_ok()
            };
            let post = self.post_filter(&p, prio, &req, &resolvable, count, &placed, &infos, &still_fits).await;
            for &v in &post.victims {
                placed[v].terminating = true;
            }
            if let Some(node) = &post.nominate {
                nominated.entry(*node).or_default().push((prio, uid.clone(), req.clone()));
            }
            let mut msg = if count == 0 {
                "no nodes available to schedule pods".to_string()
            } else {
                format!("0/{count} nodes are available: {}.", histogram(&reasons))
            };
            if !post.message.is_empty() {
                msg.push(' ');
                msg.push_str(&post.message);
            }
            self.unschedulable(&p, msg).await;
            let at = self.back_off(&uid);
            earliest(&mut wake, at);
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
            let at = self.back_off(&uid);
            earliest(&mut wake, at);
        }
        wake
    }

    /// What follows a failed search: preemption, if the pod may and it helps.
    #[allow(clippy::too_many_arguments)]
    async fn post_filter(
        &self,
        p: &Pod,
        prio: i32,
        req: &Request,
        resolvable: &[usize],
        count: usize,
        placed: &[topology::Placed],
        infos: &[NodeInfo],
        still_fits: &(dyn Fn(&preemption::Victims) -> bool + Sync),
    ) -> PostFilter {
        let spec = p.spec.as_ref();
        if spec.and_then(|s| s.preemption_policy.as_deref()) == Some("Never") {
            return PostFilter::message("preemption: not eligible due to preemptionPolicy=Never.");
        }
        // A pod whose earlier preemption is still under way waits for it.
        let nominated = p.status.as_ref().and_then(|s| s.nominated_node_name.as_deref());
        if let Some(n) = nominated.and_then(|n| infos.iter().position(|i| i.name == n))
            && placed.iter().any(|v| v.node == n && v.terminating && v.priority < prio)
        {
            return PostFilter::message("preemption: not eligible due to a terminating pod on the nominated node.");
        }
        let lower = placed.iter().any(|v| !v.terminating && v.priority < prio);
        let victims = if lower { preemption::select(prio, req, resolvable, placed, infos, still_fits) } else { None };
        let Some(victims) = victims else {
            let mut parts = Vec::new();
            if !resolvable.is_empty() {
                parts.push(format!("{} No preemption victims found for incoming pod.", resolvable.len()));
            }
            if count > resolvable.len() {
                parts.push(format!("{} Preemption is not helpful for scheduling.", count - resolvable.len()));
            }
            parts.sort();
            if count == 0 {
                return PostFilter::message("");
            }
            return PostFilter::message(&format!("preemption: 0/{count} nodes are available: {}.", parts.join(", ")));
        };
        let node = &infos[victims.node].name;
        let ns = p.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let patch = json!({"status": {"nominatedNodeName": node}});
        if let Err(e) = api.patch_status(&p.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
            tracing::debug!(error = %e, "nominating a preemptor failed");
        }
        for &v in &victims.pods {
            self.evict(&placed[v].pod, p, node).await;
        }
        tracing::info!(pod = %p.name_any(), %node, victims = victims.pods.len(), "preempting lower-priority pods");
        PostFilter { message: String::new(), nominate: Some(victims.node), victims: victims.pods }
    }

    /// Evicts a preemption victim: a `DisruptionTarget` condition, then deletion with
    /// the pod's grace period, and a `Preempted` event.
    async fn evict(&self, victim: &Pod, by: &Pod, node: &str) {
        let ns = victim.namespace().unwrap_or_default();
        let name = victim.name_any();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let profile = by.spec.as_ref().and_then(|s| s.scheduler_name.clone()).unwrap_or_else(|| NAME.into());
        let cond = json!({"status": {"conditions": [{
            "type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
            "message": format!("{profile}: preempting to accommodate a higher priority pod"),
            "lastTransitionTime": now,
        }]}});
        if let Err(e) = api.patch_status(&name, &PatchParams::default(), &Patch::Strategic(&cond)).await {
            tracing::debug!(pod = %name, error = %e, "marking a preemption victim failed");
        }
        let dp = DeleteParams { preconditions: None, ..Default::default() };
        match api.delete(&name, &dp).await {
            Ok(_) => {
                let note = format!("Preempted by pod {} on node {node}", by.uid().unwrap_or_default());
                let ev = Event {
                    type_: EventType::Normal,
                    reason: "Preempted".into(),
                    note: Some(note),
                    action: "Preempting".into(),
                    secondary: Some(by.object_ref(&())),
                };
                let recorder = self.recorders.get(&profile).or_else(|| self.recorders.values().next());
                if let Some(r) = recorder
                    && let Err(e) = r.publish(&ev, &victim.object_ref(&())).await
                {
                    tracing::debug!(error = %e, "recording a preemption event failed");
                }
            }
            Err(e) => tracing::debug!(pod = %name, error = %e, "deleting a preemption victim failed"),
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
                let msg = format!("Successfully assigned {ns}/{name} to {node}");
                self.event(p, false, "Scheduled", "Binding", msg).await;
                true
            }
            Err(e) => {
                tracing::debug!(pod = %name, %node, error = %e, "binding failed");
                false
            }
        }
    }

    async fn unschedulable(&self, p: &Pod, msg: String) {
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
        self.event(p, true, "FailedScheduling", "Scheduling", msg).await;
    }
}

/// The outcome of [`Scheduler::post_filter`].
struct PostFilter {
    /// Appended to the FailedScheduling message (empty when preemption went ahead).
    message: String,
    /// The node the pod now waits for.
    nominate: Option<usize>,
    /// The placed pods being evicted for it.
    victims: Vec<usize>,
}

impl PostFilter {
    fn message(m: &str) -> PostFilter {
        PostFilter { message: m.to_string(), nominate: None, victims: Vec::new() }
    }
}

fn wake_on_change<K>(
    client: &kube::Client,
    writer: reflector::store::Writer<K>,
    wake: Arc<Notify>,
) -> impl std::future::Future<Output = ()> + use<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let events = watcher(Api::<K>::all(client.clone()), watcher::Config::default())
        .modify(super::controllers::trim_managed_fields)
        .default_backoff();
    reflector::reflector(writer, events).for_each(move |_| {
        wake.notify_one();
        futures::future::ready(())
    })
}

/// Runs the scheduler until `shutdown`.
pub async fn run(client: kube::Client, cfg: SchedulerConfig, pods: Arc<PodCache>, shutdown: CancellationToken) {
    let wake = Arc::new(Notify::new());
    let (nodes, nodes_w) = reflector::store::<Node>();
    let (namespaces, namespaces_w) = reflector::store::<Namespace>();
    let feed_nodes = wake_on_change(&client, nodes_w, wake.clone());
    let feed_namespaces = wake_on_change(&client, namespaces_w, wake.clone());
    let mut pod_changes = pods.changes();
    let feed_pods = {
        let wake = wake.clone();
        async move {
            while pod_changes.changed().await.is_ok() {
                wake.notify_one();
            }
        }
    };
    let recorders = cfg
        .profiles
        .iter()
        .map(|p| {
            let reporter = Reporter { controller: p.scheduler_name.clone(), instance: None };
            (p.scheduler_name.clone(), Recorder::new(client.clone(), reporter))
        })
        .collect();
    let mut s = Scheduler {
        recorders,
        client,
        cfg: Arc::new(cfg),
        nodes: nodes.clone(),
        pods: pods.clone(),
        namespaces: namespaces.clone(),
        assumed: HashMap::new(),
        backoff: HashMap::new(),
        next: 0,
    };
    let main = async {
        if nodes.wait_until_ready().await.is_err()
            || pods.changes().wait_for(|&(listed, _)| listed).await.is_err()
            || namespaces.wait_until_ready().await.is_err()
        {
            return;
        }
        crate::component_ready("scheduler");
        let mut retry: Option<Instant> = None;
        loop {
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep_until(retry.unwrap_or(far)) => {}
            }
            // Let a burst of changes settle into one pass.
            tokio::time::sleep(Duration::from_millis(5)).await;
            retry = s.pass().await;
        }
    };
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = feed_nodes => {}
        _ = feed_pods => {}
        _ = feed_namespaces => {}
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
