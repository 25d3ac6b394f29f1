//! What a pod's placement depends on other pods for: inter-pod affinity and
//! anti-affinity (required and preferred, with the symmetric rule that an existing
//! pod's required anti-affinity keeps matching pods away from its topology domain), and
//! topology spread constraints (`DoNotSchedule` as a filter, `ScheduleAnyway` as a
//! score). As kube-scheduler's InterPodAffinity and PodTopologySpread plugins do, a
//! domain is the set of nodes sharing the value of the term's `topologyKey` label.
//!
//! Everything is computed per pending pod from the pass's list of placed pods (bound,
//! or assumed earlier in the pass), and only for pods that have such constraints or
//! when a placed pod has required anti-affinity, so plain pods pay nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, PodAffinityTerm, TopologySpreadConstraint};
use kube::ResourceExt;
use serde_json::{Value, json};

use super::NodeInfo;
use crate::api::selectors::LabelSelector;

/// Namespace labels, for `namespaceSelector`.
pub(super) type Namespaces = HashMap<String, BTreeMap<String, String>>;

/// A pod that occupies a node in this pass: bound, or assumed by this scheduler.
#[derive(Clone)]
pub(super) struct Placed {
    pub pod: Arc<Pod>,
    /// Index into the pass's nodes.
    pub node: usize,
    pub priority: i32,
    pub req: super::Request,
    /// Being deleted: still using the node, but neither a preemption victim nor counted
    /// for spreading.
    pub terminating: bool,
}

enum NsSet {
    All,
    Only(HashSet<String>),
}

/// A compiled `PodAffinityTerm`.
pub(super) struct Term {
    /// None: a term without `labelSelector` matches no pod.
    selector: Option<LabelSelector>,
    namespaces: NsSet,
    key: String,
    /// For preferred terms: the weight, negative for anti-affinity.
    weight: i64,
}

fn labels_of<'a>(p: &'a Pod) -> impl Fn(&str) -> Option<&'a str> + 'a {
    move |k| p.metadata.labels.as_ref().and_then(|l| l.get(k)).map(String::as_str)
}

/// `selector` plus `key in (owner's value)` for each of `match_keys` and `key notin
/// (owner's value)` for each of `mismatch_keys` the owner has (matchLabelKeys).
fn selector_with_keys(
    selector: Option<&Value>,
    owner: &Pod,
    match_keys: &[String],
    mismatch_keys: &[String],
) -> Option<LabelSelector> {
    let mut sel = selector?.clone();
    let own = owner.labels();
    let mut extra = Vec::new();
    for (keys, op) in [(match_keys, "In"), (mismatch_keys, "NotIn")] {
        for k in keys {
            if let Some(v) = own.get(k) {
                extra.push(json!({"key": k, "operator": op, "values": [v]}));
            }
        }
    }
    if !extra.is_empty() {
        let exprs = sel.as_object_mut()?.entry("matchExpressions").or_insert_with(|| json!([]));
        exprs.as_array_mut()?.extend(extra);
    }
    LabelSelector::from_label_selector(&sel).ok()
}

impl Term {
    /// Compiles `t` as written in `owner`'s spec (namespaces default to the owner's).
    fn new(t: &PodAffinityTerm, owner: &Pod, namespaces: &Namespaces, weight: i64) -> Term {
        let sel = t.label_selector.as_ref().and_then(|s| serde_json::to_value(s).ok());
        let selector = selector_with_keys(
            sel.as_ref(),
            owner,
            t.match_label_keys.as_deref().unwrap_or_default(),
            t.mismatch_label_keys.as_deref().unwrap_or_default(),
        );
        let mut set: HashSet<String> = t.namespaces.iter().flatten().cloned().collect();
        let ns_sel = t
            .namespace_selector
            .as_ref()
            .and_then(|s| serde_json::to_value(s).ok())
            .and_then(|v| LabelSelector::from_label_selector(&v).ok());
        let all = match ns_sel {
            // An empty namespaceSelector ({}) selects every namespace.
            Some(s) if s.is_empty() => true,
            Some(s) => {
                for (ns, labels) in namespaces {
                    if s.matches_fn(|k| labels.get(k).map(String::as_str)) {
                        set.insert(ns.clone());
                    }
                }
                false
            }
            None => {
                if set.is_empty() {
                    set.insert(owner.namespace().unwrap_or_default());
                }
                false
            }
        };
        Term {
            selector,
            namespaces: if all { NsSet::All } else { NsSet::Only(set) },
            key: t.topology_key.clone(),
            weight,
        }
    }

    fn matches(&self, p: &Pod) -> bool {
        let Some(sel) = &self.selector else { return false };
        let in_ns = match &self.namespaces {
            NsSet::All => true,
            NsSet::Only(s) => p.metadata.namespace.as_ref().is_some_and(|ns| s.contains(ns)),
        };
        in_ns && sel.matches_fn(labels_of(p))
    }
}

fn domain<'a>(n: &'a NodeInfo, key: &str) -> Option<&'a str> {
    n.node.metadata.labels.as_ref().and_then(|l| l.get(key)).map(String::as_str)
}

/// The required anti-affinity terms of a placed pod, which keep matching pods out of
/// its domains.
pub(super) struct AntiHolder {
    placed: usize,
    terms: Vec<Term>,
}

/// The placed pod's required anti-affinity, if it has any.
pub(super) fn anti_holder(placed: &[Placed], index: usize, namespaces: &Namespaces) -> Option<AntiHolder> {
    let pod = &placed[index].pod;
    let terms: Vec<Term> = pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref())?
        .iter()
        .map(|t| Term::new(t, pod, namespaces, 0))
        .collect();
    (!terms.is_empty()).then_some(AntiHolder { placed: index, terms })
}

struct Spread {
    key: String,
    max_skew: i64,
    /// Matching pods per domain; every eligible domain is present, if with 0.
    counts: HashMap<String, i64>,
    /// The smallest count, or 0 when there are fewer domains than `minDomains`.
    min: i64,
    /// 1 when the pod matches its own selector (placing it adds to the count).
    own: i64,
}

/// What placing one pending pod depends on, computed once per pod and pass.
#[derive(Default)]
pub(super) struct Placement {
    required: Vec<(Term, HashMap<String, usize>)>,
    /// No placed pod matches any required affinity term and the pod matches all of
    /// them itself: the first pod of a group that wants to be together may go anywhere.
    required_self: bool,
    anti: Vec<(Term, HashSet<String>)>,
    /// (topologyKey, value) pairs placed pods' anti-affinity forbids for this pod.
    forbidden: HashSet<(String, String)>,
    hard: Vec<Spread>,
    soft: Vec<Spread>,
    preferred: Vec<(Term, HashMap<String, usize>)>,
}

/// Counts the placed pods `term` matches, per value of its topology key.
fn count_by_domain(term: &Term, placed: &[Placed], nodes: &[NodeInfo]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for p in placed {
        if term.matches(&p.pod)
            && let Some(v) = domain(&nodes[p.node], &term.key)
        {
            *counts.entry(v.to_string()).or_default() += 1;
        }
    }
    counts
}

fn spread(
    c: &TopologySpreadConstraint,
    pod: &Pod,
    placed: &[Placed],
    nodes: &[NodeInfo],
    eligible: &dyn Fn(&NodeInfo) -> bool,
) -> Spread {
    let honor_affinity = c.node_affinity_policy.as_deref() != Some("Ignore");
    let honor_taints = c.node_taints_policy.as_deref() == Some("Honor");
    let sel = c.label_selector.as_ref().and_then(|s| serde_json::to_value(s).ok());
    let selector = selector_with_keys(sel.as_ref(), pod, c.match_label_keys.as_deref().unwrap_or_default(), &[]);
    let ns = pod.namespace();
    let matches = |p: &Pod| p.namespace() == ns && selector.as_ref().is_some_and(|s| s.matches_fn(labels_of(p)));
    let counted: Vec<bool> = nodes
        .iter()
        .map(|n| {
            domain(n, &c.topology_key).is_some()
                && (!honor_affinity || super::affinity_matches(pod, &n.node))
                && (!honor_taints || eligible(n))
        })
        .collect();
    let mut counts: HashMap<String, i64> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        if counted[i] {
            counts.entry(domain(n, &c.topology_key).unwrap_or_default().to_string()).or_default();
        }
    }
    for p in placed {
        if counted[p.node] && !p.terminating && matches(&p.pod) {
            *counts.entry(domain(&nodes[p.node], &c.topology_key).unwrap_or_default().to_string()).or_default() += 1;
        }
    }
    let min_domains = c.min_domains.unwrap_or(1).max(1) as usize;
    let min = if counts.len() < min_domains { 0 } else { counts.values().copied().min().unwrap_or(0) };
    Spread {
        key: c.topology_key.clone(),
        max_skew: c.max_skew.max(1) as i64,
        counts,
        min,
        own: i64::from(matches(pod)),
    }
}

impl Placement {
    /// Whether `pod` needs a [`Placement`] at all in a pass with `holders`.
    pub(super) fn needed(pod: &Pod, holders: &[AntiHolder]) -> bool {
        let spec = pod.spec.as_ref();
        let a = spec.and_then(|s| s.affinity.as_ref());
        !holders.is_empty()
            || a.is_some_and(|a| a.pod_affinity.is_some() || a.pod_anti_affinity.is_some())
            || spec.and_then(|s| s.topology_spread_constraints.as_ref()).is_some_and(|c| !c.is_empty())
    }

    /// Computes what `pod` depends on. `tolerated` says whether the pod tolerates a
    /// node's taints (for `nodeTaintsPolicy: Honor`).
    pub(super) fn new(
        pod: &Pod,
        placed: &[Placed],
        holders: &[AntiHolder],
        nodes: &[NodeInfo],
        namespaces: &Namespaces,
        tolerated: &dyn Fn(&NodeInfo) -> bool,
    ) -> Placement {
        let mut out = Placement::default();
        let spec = pod.spec.as_ref();
        let affinity = spec.and_then(|s| s.affinity.as_ref());
        let pa = affinity.and_then(|a| a.pod_affinity.as_ref());
        let anti = affinity.and_then(|a| a.pod_anti_affinity.as_ref());
        for t in pa.and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref()).into_iter().flatten() {
            let term = Term::new(t, pod, namespaces, 0);
            let counts = count_by_domain(&term, placed, nodes);
            out.required.push((term, counts));
        }
        out.required_self = !out.required.is_empty()
            && out.required.iter().all(|(_, c)| c.is_empty())
            && out.required.iter().all(|(t, _)| t.matches(pod));
        for t in anti.and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref()).into_iter().flatten()
        {
            let term = Term::new(t, pod, namespaces, 0);
            let domains = count_by_domain(&term, placed, nodes).into_keys().collect();
            out.anti.push((term, domains));
        }
        for h in holders {
            let p = &placed[h.placed];
            for t in &h.terms {
                if t.matches(pod)
                    && let Some(v) = domain(&nodes[p.node], &t.key)
                {
                    out.forbidden.insert((t.key.clone(), v.to_string()));
                }
            }
        }
        let preferred = pa
            .and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_ref())
            .into_iter()
            .flatten()
            .map(|w| (w, 1))
            .chain(
                anti.and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_ref())
                    .into_iter()
                    .flatten()
                    .map(|w| (w, -1)),
            );
        for (w, sign) in preferred {
            let term = Term::new(&w.pod_affinity_term, pod, namespaces, sign * i64::from(w.weight));
            let counts = count_by_domain(&term, placed, nodes);
            out.preferred.push((term, counts));
        }
        for c in spec.and_then(|s| s.topology_spread_constraints.as_ref()).into_iter().flatten() {
            let s = spread(c, pod, placed, nodes, tolerated);
            if c.when_unsatisfiable == "ScheduleAnyway" {
                out.soft.push(s);
            } else {
                out.hard.push(s);
            }
        }
        out
    }

    /// Why `n` is out, in kube-scheduler's words, and whether evicting pods could
    /// cure it (kube-scheduler's `Unschedulable` rather than
    /// `UnschedulableAndUnresolvable`). PodTopologySpread runs first, then
    /// InterPodAffinity, as its filter plugins do.
    pub(super) fn filter(&self, n: &NodeInfo) -> Result<(), (&'static str, bool)> {
        for s in &self.hard {
            let Some(v) = domain(n, &s.key) else {
                return Err(("node(s) didn't match pod topology spread constraints (missing required label)", false));
            };
            let count = s.counts.get(v).copied().unwrap_or(0);
            if count + s.own - s.min > s.max_skew {
                return Err(("node(s) didn't match pod topology spread constraints", true));
            }
        }
        if !self.required_self
            && !self
                .required
                .iter()
                .all(|(t, counts)| domain(n, &t.key).is_some_and(|v| counts.get(v).is_some_and(|c| *c > 0)))
        {
            return Err(("node(s) didn't match pod affinity rules", false));
        }
        if self.anti.iter().any(|(t, domains)| domain(n, &t.key).is_some_and(|v| domains.contains(v))) {
            return Err(("node(s) didn't match pod anti-affinity rules", true));
        }
        if self.forbidden.iter().any(|(k, v)| domain(n, k) == Some(v.as_str())) {
            return Err(("node(s) didn't satisfy existing pods anti-affinity rules", true));
        }
        Ok(())
    }

    /// Whether [`Placement::scores`] has anything to say.
    pub(super) fn scores_anything(&self) -> bool {
        !self.preferred.is_empty() || !self.soft.is_empty()
    }

    /// Inter-pod affinity and spreading scores of the candidate nodes, each normalized
    /// to 0..=100 over the candidates and weighted 2, as kube-scheduler's default
    /// profile weighs InterPodAffinity and PodTopologySpread.
    pub(super) fn scores(&self, candidates: &[usize], nodes: &[NodeInfo]) -> Vec<f64> {
        let mut out = vec![0.0; candidates.len()];
        if !self.preferred.is_empty() {
            let raw: Vec<f64> = candidates
                .iter()
                .map(|&i| {
                    self.preferred
                        .iter()
                        .map(|(t, counts)| {
                            let c = domain(&nodes[i], &t.key).and_then(|v| counts.get(v)).copied().unwrap_or(0);
                            (t.weight * c as i64) as f64
                        })
                        .sum()
                })
                .collect();
            let (lo, hi) = min_max(&raw);
            if hi > lo {
                for (o, r) in out.iter_mut().zip(&raw) {
                    *o += 2.0 * 100.0 * (r - lo) / (hi - lo);
                }
            }
        }
        if !self.soft.is_empty() {
            // Fewer matching pods in the node's domains is better; a node without the
            // key counts as the most crowded.
            let raw: Vec<f64> = candidates
                .iter()
                .map(|&i| {
                    self.soft
                        .iter()
                        .map(|s| match domain(&nodes[i], &s.key) {
                            Some(v) => s.counts.get(v).copied().unwrap_or(0) as f64,
                            None => s.counts.values().copied().max().unwrap_or(0) as f64 + 1.0,
                        })
                        .sum()
                })
                .collect();
            let (lo, hi) = min_max(&raw);
            for (o, r) in out.iter_mut().zip(&raw) {
                *o += 2.0 * if hi > lo { 100.0 * (hi - r) / (hi - lo) } else { 100.0 };
            }
        }
        out
    }
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| (lo.min(*x), hi.max(*x)))
}
