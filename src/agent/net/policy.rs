//! NetworkPolicy, enforced in rk's nftables table on the node where the pod runs.
//! Pods talk through the node (CNI ptp), so every packet to or from a local pod
//! crosses the node's `forward` hook, where:
//!
//! - replies (`ct state established,related`) pass;
//! - a local pod selected by a policy with `Egress` jumps to its egress chain, which
//!   `return`s for allowed destinations and drops the rest;
//! - a local pod selected by a policy with `Ingress` jumps to its ingress chain,
//!   which accepts allowed sources and drops the rest.
//!
//! Allowed peers are the union over the policies selecting the pod (as Kubernetes
//! defines): pod selectors (in the policy's namespace), namespace selectors, both
//! together, and ipBlocks with exceptions, each with its ports (numbers, named ports
//! resolved against the pods that have them, `endPort` ranges). Traffic from the node
//! itself (probes) reaches the node's pods without crossing `forward`, so it is
//! always allowed, as Kubernetes requires. Not enforced: DNS to the node-local cluster
//! DNS (it is an address of the node, not a pod).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::proxy::Ruleset;

/// The maps from a local pod's address to its policy chain (declared in `proxy`).
const MAPS: [&str; 2] = ["policy-ingress", "policy-egress"];

fn matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let v = serde_json::to_value(sel).unwrap_or_default();
    match crate::api::selectors::LabelSelector::from_label_selector(&v) {
        Ok(p) => p.matches(&labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()),
        Err(_) => false,
    }
}

fn labels(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

fn pod_ip(p: &Pod) -> Option<std::net::Ipv4Addr> {
    let st = p.status.as_ref()?;
    if matches!(st.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    if p.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        return None;
    }
    st.pod_ip.as_deref()?.parse().ok()
}

fn named_port(p: &Pod, name: &str, proto: &str) -> Option<i32> {
    p.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|cp| cp.name.as_deref() == Some(name) && cp.protocol.as_deref().unwrap_or("TCP") == proto)
        .map(|cp| cp.container_port)
}

/// `meta l4proto tcp th dport 80-90`-style matches for a rule's ports, resolved
/// against `pod` (the pod whose ports they are); `[""]` when any port is allowed.
fn port_matches(ports: Option<&Vec<NetworkPolicyPort>>, pod: Option<&Pod>) -> Vec<String> {
    let Some(ports) = ports.filter(|p| !p.is_empty()) else { return vec![String::new()] };
    let mut out = Vec::new();
    for p in ports {
        let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
        let l4 = proto.to_ascii_lowercase();
        match &p.port {
            None => out.push(format!("meta l4proto {l4}")),
            Some(IntOrString::Int(n)) => match p.end_port {
                Some(end) if end > *n => out.push(format!("meta l4proto {l4} th dport {n}-{end}")),
                _ => out.push(format!("meta l4proto {l4} th dport {n}")),
            },
            Some(IntOrString::String(name)) => {
                if let Some(n) = pod.and_then(|pod| named_port(pod, name, &proto)) {
                    out.push(format!("meta l4proto {l4} th dport {n}"));
                }
            }
        }
    }
    out
}

struct World<'a> {
    pods: &'a [Arc<Pod>],
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
}

impl World<'_> {
    /// The pods a peer names (None: the peer is an ipBlock).
    fn peer_pods(&self, policy_ns: &str, peer: &NetworkPolicyPeer) -> Option<Vec<&Pod>> {
        if peer.ip_block.is_some() {
            return None;
        }
        let ns_ok = |ns: &str| match &peer.namespace_selector {
            None => ns == policy_ns,
            Some(sel) => self.namespaces.get(ns).is_some_and(|l| matches(sel, l)),
        };
        Some(
            self.pods
                .iter()
                .filter(|p| ns_ok(p.metadata.namespace.as_deref().unwrap_or("")))
                .filter(|p| peer.pod_selector.as_ref().is_none_or(|sel| matches(sel, &labels(&p.metadata))))
                .filter(|p| pod_ip(p).is_some())
                .map(|p| p.as_ref())
                .collect(),
        )
    }
}

fn ip_block(dir: &str, peer: &NetworkPolicyPeer) -> Option<String> {
    let b = peer.ip_block.as_ref()?;
    let cidr: ipnet::Ipv4Net = b.cidr.parse().ok()?;
    let except: Vec<String> =
        b.except.iter().flatten().filter_map(|e| e.parse::<ipnet::Ipv4Net>().ok()).map(|e| e.to_string()).collect();
    Some(if except.is_empty() {
        format!("ip {dir} {cidr}")
    } else {
        format!("ip {dir} {cidr} ip {dir} != {{ {} }}", except.join(", "))
    })
}

/// Adds the policy chains and map elements for the pods on `node` to `rs`.
pub fn build(
    rs: &mut Ruleset,
    node: &str,
    pods: &[Arc<Pod>],
    namespaces: &[Arc<Namespace>],
    policies: &[Arc<NetworkPolicy>],
) {
    for m in MAPS {
        rs.maps.entry(m).or_default();
    }
    let world = World {
        pods,
        namespaces: namespaces
            .iter()
            .filter_map(|n| {
                let name = n.metadata.name.clone()?;
                let mut l = labels(&n.metadata);
                l.entry("kubernetes.io/metadata.name".into()).or_insert_with(|| name.clone());
                Some((name, l))
            })
            .collect(),
    };
    for pod in pods {
        if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(node) {
            continue;
        }
        let Some(ip) = pod_ip(pod) else { continue };
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let pl = labels(&pod.metadata);
        let selecting: Vec<&NetworkPolicy> = policies
            .iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()))
            .filter(|p| p.spec.as_ref().is_some_and(|s| matches(&s.pod_selector.clone().unwrap_or_default(), &pl)))
            .map(|p| p.as_ref())
            .collect();
        let types = |p: &NetworkPolicy| -> (bool, bool) {
            let spec = p.spec.clone().unwrap_or_default();
            match &spec.policy_types {
                Some(t) => (t.iter().any(|x| x == "Ingress"), t.iter().any(|x| x == "Egress")),
                None => (true, spec.egress.is_some()),
            }
        };
        let id = format!("{ns}/{}", pod.metadata.name.clone().unwrap_or_default());
        // Ingress.
        let ing: Vec<&NetworkPolicy> = selecting.iter().copied().filter(|p| types(p).0).collect();
        if !ing.is_empty() {
            let mut rules = Vec::new();
            for p in &ing {
                for r in p.spec.as_ref().and_then(|s| s.ingress.as_ref()).into_iter().flatten() {
                    let ports = port_matches(r.ports.as_ref(), Some(pod));
                    let sources: Vec<String> = match &r.from {
                        None => vec![String::new()],
                        Some(from) if from.is_empty() => vec![String::new()],
                        Some(from) => from
                            .iter()
                            .flat_map(|peer| match world.peer_pods(&ns, peer) {
                                Some(ps) => {
                                    let ips: BTreeSet<String> =
                                        ps.iter().filter_map(|p| pod_ip(p)).map(|i| i.to_string()).collect();
                                    if ips.is_empty() {
                                        vec![]
                                    } else {
                                        vec![format!(
                                            "ip saddr {{ {} }}",
                                            ips.into_iter().collect::<Vec<_>>().join(", ")
                                        )]
                                    }
                                }
                                None => ip_block("saddr", peer).into_iter().collect(),
                            })
                            .collect(),
                    };
                    for src in &sources {
                        for port in &ports {
                            rules.push(format!("{src} {port} accept").trim().to_string());
                        }
                    }
                }
            }
            rules.push("drop".into());
            let chain = super::proxy::chain_name("pol-in", &id);
            rs.chains.insert(chain.clone(), rules);
            rs.maps.entry("policy-ingress").or_default().insert(ip.to_string(), format!("jump {chain}"));
        }
        // Egress.
        let eg: Vec<&NetworkPolicy> = selecting.iter().copied().filter(|p| types(p).1).collect();
        if !eg.is_empty() {
            let mut rules = Vec::new();
            for p in &eg {
                for r in p.spec.as_ref().and_then(|s| s.egress.as_ref()).into_iter().flatten() {
                    let to_any = r.to.as_ref().is_none_or(|t| t.is_empty());
                    if to_any {
                        for port in port_matches(r.ports.as_ref(), None) {
                            rules.push(format!("{port} return").trim().to_string());
                        }
                        continue;
                    }
                    for peer in r.to.iter().flatten() {
                        match world.peer_pods(&ns, peer) {
                            // Named ports resolve against each destination pod.
                            Some(ps) => {
                                for dst in ps {
                                    let Some(dip) = pod_ip(dst) else { continue };
                                    for port in port_matches(r.ports.as_ref(), Some(dst)) {
                                        rules.push(format!("ip daddr {dip} {port} return").trim().to_string());
                                    }
                                }
                            }
                            None => {
                                if let Some(m) = ip_block("daddr", peer) {
                                    for port in port_matches(r.ports.as_ref(), None) {
                                        rules.push(format!("{m} {port} return").trim().to_string());
                                    }
                                }
                            }
                        }
                    }
                }
            }
            rules.push("drop".into());
            let chain = super::proxy::chain_name("pol-out", &id);
            rs.chains.insert(chain.clone(), rules);
            rs.maps.entry("policy-egress").or_default().insert(ip.to_string(), format!("jump {chain}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ns: &str, node: &str, ip: &str, labels: serde_json::Value) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": ns, "labels": labels},
                "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
                "status": {"phase": "Running", "podIP": ip},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn ingress_from_selected_pods_and_namespaces() {
        let pods = [
            pod("web", "default", "n1", "10.42.0.5", serde_json::json!({"app": "web"})),
            pod("client", "default", "n2", "10.42.1.5", serde_json::json!({"role": "client"})),
            pod("other", "default", "n2", "10.42.1.6", serde_json::json!({})),
            pod("mon", "monitoring", "n2", "10.42.1.7", serde_json::json!({})),
        ];
        let nss: Vec<Arc<Namespace>> = ["default", "monitoring"]
            .iter()
            .map(|n| Arc::new(serde_json::from_value(serde_json::json!({"metadata": {"name": n}})).unwrap()))
            .collect();
        let pol: Arc<NetworkPolicy> = Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "web", "namespace": "default"},
                "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                         "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}},
                                               {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
                                               {"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}}],
                                      "ports": [{"port": "http"}]}]},
            }))
            .unwrap(),
        );
        let mut rs = Ruleset::default();
        build(&mut rs, "n1", &pods, &nss, &[pol.clone()]);
        let chain = rs.maps["policy-ingress"]["10.42.0.5"].strip_prefix("jump ").unwrap().to_string();
        let rules = &rs.chains[&chain];
        assert_eq!(rules[0], "ip saddr { 10.42.1.5 } meta l4proto tcp th dport 8080 accept");
        assert_eq!(rules[1], "ip saddr { 10.42.1.7 } meta l4proto tcp th dport 8080 accept");
        assert_eq!(
            rules[2],
            "ip saddr 192.168.0.0/16 ip saddr != { 192.168.1.0/24 } meta l4proto tcp th dport 8080 accept"
        );
        assert_eq!(rules.last().unwrap(), "drop");
        assert!(rs.maps["policy-egress"].is_empty());
        // On the other node, only that node's pods are its business.
        let mut rs2 = Ruleset::default();
        build(&mut rs2, "n2", &pods, &nss, &[pol]);
        assert!(rs2.chains.is_empty());
    }

    #[test]
    fn deny_all_and_egress() {
        let pods = [
            pod("a", "default", "n1", "10.42.0.5", serde_json::json!({})),
            pod("b", "default", "n1", "10.42.0.6", serde_json::json!({"x": "y"})),
        ];
        let deny: Arc<NetworkPolicy> = Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "deny", "namespace": "default"},
                "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                         "egress": [{"to": [{"podSelector": {"matchLabels": {"x": "y"}}}], "ports": [{"port": 53, "protocol": "UDP"}]}]},
            }))
            .unwrap(),
        );
        let mut rs = Ruleset::default();
        build(&mut rs, "n1", &pods, &[], &[deny]);
        assert_eq!(rs.maps["policy-ingress"].len(), 2);
        let out = rs.maps["policy-egress"]["10.42.0.5"].strip_prefix("jump ").unwrap().to_string();
        assert_eq!(rs.chains[&out], ["ip daddr 10.42.0.6 meta l4proto udp th dport 53 return", "drop"]);
    }
}
