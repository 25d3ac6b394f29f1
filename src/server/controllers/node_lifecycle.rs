//! Node lifecycle: a node whose kubelet stops renewing its Lease (and posting status)
//! for the grace period (50 s, as kube-controller-manager's `node-monitor-grace-period`)
//! gets Ready=Unknown and the `node.kubernetes.io/unreachable` NoSchedule and NoExecute
//! taints (`not-ready` ones for Ready=False); when it comes back they go. Pods on a
//! node with a NoExecute taint they do not tolerate are evicted, at once or after
//! their `tolerationSeconds` (300 s by default, from DefaultTolerationSeconds).
//!
//! As kube-controller-manager's TaintNodesByCondition, the conditions a kubelet
//! reports also become NoSchedule taints (`memory-pressure`, `disk-pressure`,
//! `pid-pressure`, `network-unavailable`), and a cordoned node gets
//! `node.kubernetes.io/unschedulable`; they go when the condition clears.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::Ctx;
use super::pod_cache::PodCache;

const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
const NOT_READY: &str = "node.kubernetes.io/not-ready";
const UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

/// Conditions that, True, taint a node NoSchedule.
const CONDITION_TAINTS: [(&str, &str); 4] = [
    ("MemoryPressure", "node.kubernetes.io/memory-pressure"),
    ("DiskPressure", "node.kubernetes.io/disk-pressure"),
    ("PIDPressure", "node.kubernetes.io/pid-pressure"),
    ("NetworkUnavailable", "node.kubernetes.io/network-unavailable"),
];

/// Every taint key this controller manages.
fn managed(key: &str) -> bool {
    [UNREACHABLE, NOT_READY, UNSCHEDULABLE].contains(&key) || CONDITION_TAINTS.iter().any(|(_, k)| *k == key)
}

fn condition<'a>(n: &'a Node, type_: &str) -> Option<&'a NodeCondition> {
    n.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == type_)
}

fn ready(n: &Node) -> Option<&NodeCondition> {
    condition(n, "Ready")
}

/// The taints (key, effect) a node's conditions and cordon call for.
fn wanted_taints(n: &Node) -> Vec<(&'static str, &'static str)> {
    let mut out = match ready(n).map(|c| c.status.as_str()) {
        Some("True") => vec![],
        Some("False") => vec![(NOT_READY, "NoSchedule"), (NOT_READY, "NoExecute")],
        _ => vec![(UNREACHABLE, "NoSchedule"), (UNREACHABLE, "NoExecute")],
    };
    for (cond, key) in CONDITION_TAINTS {
        if condition(n, cond).is_some_and(|c| c.status == "True") {
            out.push((key, "NoSchedule"));
        }
    }
    if n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        out.push((UNSCHEDULABLE, "NoSchedule"));
    }
    out
}

fn tolerated_for(p: &Pod, taint: &Taint) -> Option<Option<i64>> {
    let tols = p.spec.as_ref()?.tolerations.as_ref()?;
    tols.iter().filter(|t| crate::server::scheduler::tolerates(t, taint)).map(|t| t.toleration_seconds).fold(
        None,
        |acc: Option<Option<i64>>, s| match (acc, s) {
            (None, s) => Some(s),
            (Some(None), _) | (_, None) => Some(None),
            (Some(Some(a)), Some(b)) => Some(Some(a.max(b))),
        },
    )
}

struct Monitor {
    ctx: Arc<Ctx>,
    grace: Duration,
    nodes: Store<Node>,
    leases: Store<Lease>,
    pods: Arc<PodCache>,
}

impl Monitor {
    async fn pass(&self) {
        let now = Timestamp::now();
        let leases: HashMap<String, Arc<Lease>> = self.leases.state().into_iter().map(|l| (l.name_any(), l)).collect();
        for n in self.nodes.state() {
            if let Err(e) = self.check_node(&n, leases.get(&n.name_any()), now).await {
                tracing::debug!(node = %n.name_any(), error = %e, "node lifecycle update failed");
            }
        }
        self.evict(now).await;
    }

    async fn check_node(&self, n: &Node, lease: Option<&Arc<Lease>>, now: Timestamp) -> Result<(), kube::Error> {
        let name = n.name_any();
        let api: Api<Node> = Api::all(self.ctx.client.clone());
        let renewed = lease.and_then(|l| l.spec.as_ref()?.renew_time.as_ref().map(|t| t.0));
        let posted = ready(n).and_then(|c| c.last_heartbeat_time.as_ref().map(|t| t.0));
        let created = n.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let last = [renewed, posted, created].into_iter().flatten().max();
        let silent = last.is_some_and(|l| now.as_second() - l.as_second() > self.grace.as_secs() as i64);
        let mut node = n.clone();
        if silent && ready(n).is_some_and(|c| c.status != "Unknown") {
            let t = Time(now);
            let conds: Vec<NodeCondition> = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|mut c| {
                    if c.status != "Unknown" {
                        c.status = "Unknown".into();
                        c.reason = Some("NodeStatusUnknown".into());
                        c.message = Some("Kubelet stopped posting node status.".into());
                        c.last_transition_time = Some(t.clone());
                    }
                    c
                })
                .collect();
            node = api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&json!({"status": {"conditions": conds}})))
                .await?;
            self.ctx.event(&node, false, "NodeNotReady", format!("Node {name} status is now: NodeNotReady"));
        }
        let wanted = wanted_taints(&node);
        let taints = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
        let mut next: Vec<Taint> = taints
            .iter()
            .filter(|t| !managed(&t.key) || wanted.contains(&(t.key.as_str(), t.effect.as_str())))
            .cloned()
            .collect();
        for (key, effect) in &wanted {
            if !next.iter().any(|t| t.key == *key && t.effect == *effect) {
                next.push(Taint {
                    key: key.to_string(),
                    effect: effect.to_string(),
                    time_added: (*effect == "NoExecute").then(|| Time(now)),
                    value: None,
                });
            }
        }
        if next != taints {
            // No taints left: the field goes, as Go's omitempty would drop it.
            let value = if next.is_empty() { serde_json::Value::Null } else { json!(next) };
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&json!({"spec": {"taints": value}}))).await?;
        }
        Ok(())
    }

    /// Evicts pods from nodes with NoExecute taints they do not tolerate (long enough).
    async fn evict(&self, now: Timestamp) {
        let tainted: HashMap<String, Vec<Taint>> = self
            .nodes
            .state()
            .iter()
            .filter_map(|n| {
                let t: Vec<Taint> =
                    n.spec.as_ref()?.taints.as_ref()?.iter().filter(|t| t.effect == "NoExecute").cloned().collect();
                (!t.is_empty()).then(|| (n.name_any(), t))
            })
            .collect();
        if tainted.is_empty() {
            return;
        }
        for p in self.pods.all().await {
            if p.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let Some(taints) = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).and_then(|n| tainted.get(n)) else {
                continue;
            };
            let due = taints.iter().any(|t| match tolerated_for(&p, t) {
                None => true,
                Some(None) => false,
                Some(Some(secs)) => {
                    let added = t.time_added.as_ref().map(|x| x.0.as_second()).unwrap_or(now.as_second());
                    now.as_second() >= added + secs
                }
            });
            if !due {
                continue;
            }
            let ns = p.namespace().unwrap_or_default();
            let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &ns);
            match api.delete(&p.name_any(), &DeleteParams::default()).await {
                Ok(_) => self.ctx.event(
                    p.as_ref(),
                    false,
                    "TaintManagerEviction",
                    format!("Marking for deletion Pod {ns}/{}", p.name_any()),
                ),
                Err(e) => tracing::debug!(pod = %p.name_any(), error = %e, "evicting a pod failed"),
            }
        }
    }
}

fn feed<K>(api: Api<K>, w: reflector::store::Writer<K>) -> impl std::future::Future<Output = ()>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let events = watcher(api, watcher::Config::default()).modify(super::trim_managed_fields);
    reflector::reflector(w, events).default_backoff().for_each(|_| futures::future::ready(()))
}

pub(super) async fn run(ctx: Arc<Ctx>, grace: Duration, pods: Arc<PodCache>, shutdown: CancellationToken) {
    let (nodes, nw) = reflector::store::<Node>();
    let (leases, lw) = reflector::store::<Lease>();
    let feeds = futures::future::join(
        feed(Api::<Node>::all(ctx.client.clone()), nw),
        feed(Api::<Lease>::namespaced(ctx.client.clone(), "kube-node-lease"), lw),
    );
    let m = Monitor { ctx, grace, nodes: nodes.clone(), leases: leases.clone(), pods: pods.clone() };
    let period = (grace / 5).clamp(Duration::from_millis(200), Duration::from_secs(5));
    let main = async {
        if nodes.wait_until_ready().await.is_err() || leases.wait_until_ready().await.is_err() {
            return;
        }
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            m.pass().await;
        }
    };
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = feeds => {}
        _ = main => {}
    }
}
