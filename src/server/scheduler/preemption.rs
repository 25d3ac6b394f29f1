//! Priority-based preemption, as kube-scheduler's DefaultPreemption plugin does it:
//! when a pod fits nowhere, find the node where removing pods of lower priority makes
//! it fit, removing as few and as unimportant pods as possible, and evict them; the
//! pod is nominated to that node and scheduled once they are gone.
//!
//! Candidate nodes are those that failed only for reasons removing pods can cure
//! (CPU, memory, pod count, host ports). On each, every lower-priority pod is removed
//! and then, from the most important down, pods are given back ("reprieved") while
//! the pod still fits; what is left are the victims. The node chosen has the lowest
//! highest-victim priority, then the lowest sum of victim priorities, then the fewest
//! victims. Not honoured: PodDisruptionBudgets (kube-scheduler prefers victims that
//! break none).

use super::topology::Placed;
use super::{NodeInfo, Request, Usage};

/// The pods to evict on a node.
pub(super) struct Victims {
    /// Index into the pass's nodes.
    pub node: usize,
    /// Indexes into the pass's placed pods.
    pub pods: Vec<usize>,
}

fn fits(req: &Request, n: &NodeInfo, used: &Usage) -> bool {
    used.pods + 1.0 <= n.pods
        && (req.cpu <= 0.0 || used.cpu + req.cpu <= n.cpu)
        && (req.mem <= 0.0 || used.mem + req.mem <= n.mem)
        && !req.ports.iter().any(|p| used.ports.contains(p))
}

/// Chooses victims for a pod of `priority` asking for `req` among `candidates` (node
/// indexes), or None when no eviction makes room. `still_fits` checks what resources
/// alone cannot (affinity, spreading) with the victims gone.
pub(super) fn select(
    priority: i32,
    req: &Request,
    candidates: &[usize],
    placed: &[Placed],
    nodes: &[NodeInfo],
    still_fits: &(dyn Fn(&Victims) -> bool + Sync),
) -> Option<Victims> {
    let mut on_node: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (i, p) in placed.iter().enumerate() {
        on_node[p.node].push(i);
    }
    let mut best: Option<((i32, i64, usize), Victims)> = None;
    for &n in candidates {
        let (mut kept, mut pool): (Vec<usize>, Vec<usize>) =
            on_node[n].iter().partition(|&&i| placed[i].terminating || placed[i].priority >= priority);
        if pool.is_empty() {
            continue;
        }
        let mut used = Usage::default();
        for &i in &kept {
            used.add(&placed[i].req);
        }
        if !fits(req, &nodes[n], &used) {
            continue;
        }
        // The most important pods get the first chance to stay; among equals, the
        // longest-running.
        pool.sort_by_key(|&i| {
            let p = &placed[i].pod;
            (std::cmp::Reverse(placed[i].priority), p.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()))
        });
        let mut victims = Vec::new();
        for i in pool {
            let mut with = used.clone();
            with.add(&placed[i].req);
            if fits(req, &nodes[n], &with) {
                used = with;
                kept.push(i);
            } else {
                victims.push(i);
            }
        }
        if victims.is_empty() {
            // It fits without evicting anything: the filters said otherwise only
            // because of pods this pass has just assumed; nothing to do here.
            continue;
        }
        let v = Victims { node: n, pods: victims };
        if !still_fits(&v) {
            continue;
        }
        let victims = v.pods;
        let key = (
            victims.iter().map(|&i| placed[i].priority).max().unwrap_or(i32::MIN),
            victims.iter().map(|&i| i64::from(placed[i].priority)).sum::<i64>(),
            victims.len(),
        );
        if best.as_ref().is_none_or(|(k, _)| key < *k) {
            best = Some((key, Victims { node: n, pods: victims }));
        }
    }
    best.map(|(_, v)| v)
}
