//! The service proxy: Services and EndpointSlices become one nftables table, `ip rk`,
//! laid out as kube-proxy's nftables mode lays out its own:
//!
//! - verdict maps from `clusterIP . protocol . port` (and LoadBalancer / external IPs)
//!   and from `protocol . nodePort` (on local addresses) to one chain per Service port;
//! - that chain picks an endpoint with `numgen random mod N` (even spreading), or the
//!   endpoint a client was pinned to for `sessionAffinity: ClientIP`;
//! - one chain per endpoint DNATs to it (and marks hairpin traffic for masquerade);
//! - Service ports without endpoints are rejected (prerouting and output), so clients see
//!   "connection refused" at once, as Kubernetes does;
//! - traffic from pods to outside the cluster CIDR is masqueraded, as is NodePort,
//!   external and hairpin traffic.
//!
//! The whole desired ruleset is computed from the API objects ([`Ruleset::build`]); what
//! is sent to the kernel is only the difference from what was last applied
//! ([`Ruleset::diff`]), one `nft -f` transaction, so a change to one EndpointSlice
//! touches one Service's chains, never the rest.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use sha2::Digest;

/// The table rk owns (family `ip`).
pub const TABLE: &str = "rk";
/// The packet mark asking for masquerade in postrouting.
const MASQ_MARK: u32 = 0x4000;
/// How long a ClientIP affinity lasts unless the Service says (Kubernetes's default).
const DEFAULT_AFFINITY_SECONDS: i32 = 10800;

/// What the proxy needs to know about its node and cluster.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// This node's name (for `internalTrafficPolicy` / `externalTrafficPolicy: Local`).
    pub node: String,
    /// The cluster's pod network.
    pub cluster_cidr: ipnet::Ipv4Net,
    /// ClusterIPs the proxy leaves alone (the node-local cluster DNS address).
    pub skip_ips: Vec<Ipv4Addr>,
}

/// One endpoint of a Service port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Backend {
    ip: Ipv4Addr,
    port: i32,
    local: bool,
}

/// The desired (or applied) state of rk's table: per-Service chains and map elements.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ruleset {
    /// Chain name → its rules.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Map name → key → verdict.
    pub maps: BTreeMap<&'static str, BTreeMap<String, String>>,
    /// Affinity sets (name → timeout seconds).
    pub sets: BTreeMap<String, i32>,
    /// UDP Service addresses (`ip:port`) → the endpoint addresses behind them, so that
    /// conntrack entries to an endpoint that went can be flushed (UDP has no close).
    pub udp: BTreeMap<(Ipv4Addr, i32), BTreeSet<Ipv4Addr>>,
}

const MAPS: [(&str, &str); 6] = [
    ("service-ips", "ipv4_addr . inet_proto . inet_service"),
    ("service-nodeports", "inet_proto . inet_service"),
    ("no-endpoint-services", "ipv4_addr . inet_proto . inet_service"),
    ("no-endpoint-nodeports", "inet_proto . inet_service"),
    // NetworkPolicy (see `policy`): a local pod's address to its chain.
    ("policy-ingress", "ipv4_addr"),
    ("policy-egress", "ipv4_addr"),
];

fn short_hash(s: &str) -> String {
    let d = sha2::Sha256::digest(s.as_bytes());
    d.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// A chain name: a hash (for uniqueness within nft's length limit) and a readable tail.
pub(super) fn chain_name(kind: &str, readable: &str) -> String {
    let mut tail: String =
        readable.chars().map(|c| if c.is_ascii_alphanumeric() || "/_.-".contains(c) { c } else { '_' }).collect();
    tail.truncate(180);
    format!("{kind}-{}-{tail}", short_hash(readable))
}

fn proto(p: Option<&str>) -> Option<&'static str> {
    match p.unwrap_or("TCP") {
        "TCP" => Some("tcp"),
        "UDP" => Some("udp"),
        "SCTP" => Some("sctp"),
        _ => None,
    }
}

impl Ruleset {
    /// The rules for these Services and EndpointSlices on this node.
    pub fn build(
        cfg: &ProxyConfig,
        services: &[std::sync::Arc<Service>],
        slices: &[std::sync::Arc<EndpointSlice>],
    ) -> Ruleset {
        let mut rs = Ruleset::default();
        for (m, _) in MAPS {
            rs.maps.insert(m, BTreeMap::new());
        }
        // Slices by (namespace, service).
        let mut by_svc: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
        for s in slices {
            if s.address_type != "IPv4" {
                continue;
            }
            let Some(svc) = s.metadata.labels.as_ref().and_then(|l| l.get("kubernetes.io/service-name")) else {
                continue;
            };
            by_svc.entry((s.metadata.namespace.clone().unwrap_or_default(), svc.clone())).or_default().push(s);
        }
        let cluster = cfg.cluster_cidr.to_string();
        for svc in services {
            let (Some(ns), Some(name), Some(spec)) = (&svc.metadata.namespace, &svc.metadata.name, &svc.spec) else {
                continue;
            };
            let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
            if ty == "ExternalName" {
                continue;
            }
            let Some(cip) = spec.cluster_ip.as_deref().and_then(|ip| ip.parse::<Ipv4Addr>().ok()) else {
                continue; // headless, or not IPv4
            };
            if cfg.skip_ips.contains(&cip) {
                continue;
            }
            let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
                spec.session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds)
                    .unwrap_or(DEFAULT_AFFINITY_SECONDS)
            });
            let ext_local = spec.external_traffic_policy.as_deref() == Some("Local");
            let int_local = spec.internal_traffic_policy.as_deref() == Some("Local");
            let mut external_ips: Vec<Ipv4Addr> =
                spec.external_ips.iter().flatten().filter_map(|ip| ip.parse().ok()).collect();
            if ty == "LoadBalancer" {
                let ing = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|l| l.ingress.as_ref());
                external_ips
                    .extend(ing.into_iter().flatten().filter_map(|i| i.ip.as_deref()?.parse::<Ipv4Addr>().ok()));
            }
            let slices = by_svc.get(&(ns.clone(), name.clone())).map(Vec::as_slice).unwrap_or(&[]);
            for sp in spec.ports.iter().flatten() {
                let Some(pr) = proto(sp.protocol.as_deref()) else { continue };
                let pname = sp.name.clone().unwrap_or_default();
                let id = format!("{ns}/{name}/{pr}/{pname}");
                let backends = backends(cfg, slices, &pname, sp.protocol.as_deref().unwrap_or("TCP"));
                let cluster_backends: Vec<&Backend> = backends.iter().filter(|b| !int_local || b.local).collect();
                let ext_backends: Vec<&Backend> = backends.iter().filter(|b| !ext_local || b.local).collect();
                let svc_chain = chain_name("svc", &id);
                if pr == "udp" {
                    let eps: BTreeSet<Ipv4Addr> = backends.iter().map(|b| b.ip).collect();
                    for vip in std::iter::once(cip).chain(external_ips.iter().copied()) {
                        rs.udp.insert((vip, sp.port), eps.clone());
                    }
                }
                let key = format!("{cip} . {pr} . {}", sp.port);
                let has_external = !external_ips.is_empty() || sp.node_port.is_some() && ty != "ClusterIP";

                // The endpoint chains.
                let sep_name = |b: &Backend| chain_name("sep", &format!("{id}__{}/{}", b.ip, b.port));
                for b in &backends {
                    let sep = sep_name(b);
                    let mut rules = vec![format!("ip saddr {} jump mark-for-masquerade", b.ip)];
                    if let Some(timeout) = affinity {
                        rules.push(format!("update @{} {{ ip saddr }}", affinity_set(&sep)));
                        rs.sets.insert(affinity_set(&sep), timeout);
                    }
                    rules.push(format!("meta l4proto {pr} dnat to {}:{}", b.ip, b.port));
                    rs.chains.insert(sep, rules);
                }
                let pick = |chosen: &[&Backend]| -> Vec<String> {
                    let seps: Vec<String> = chosen.iter().map(|b| sep_name(b)).collect();
                    let mut rules = Vec::new();
                    if affinity.is_some() {
                        for s in &seps {
                            rules.push(format!("ip saddr @{} goto {s}", affinity_set(s)));
                        }
                    }
                    match seps.len() {
                        0 => {}
                        1 => rules.push(format!("goto {}", seps[0])),
                        n => {
                            let arms: Vec<String> =
                                seps.iter().enumerate().map(|(i, s)| format!("{i} : goto {s}")).collect();
                            rules.push(format!("numgen random mod {n} vmap {{ {} }}", arms.join(", ")));
                        }
                    }
                    rules
                };

                // ClusterIP.
                if cluster_backends.is_empty() {
                    rs.map("no-endpoint-services").insert(key, "goto reject-chain".into());
                } else {
                    let mut rules = vec![format!(
                        "ip daddr {cip} {pr} dport {} ip saddr != {cluster} jump mark-for-masquerade",
                        sp.port
                    )];
                    rules.extend(pick(&cluster_backends));
                    rs.chains.insert(svc_chain.clone(), rules);
                    rs.map("service-ips").insert(key, format!("goto {svc_chain}"));
                }

                // NodePort, LoadBalancer and external IPs.
                if has_external {
                    let ext_chain = chain_name("ext", &id);
                    // Something answers: a (local, with Local) endpoint, or with Local
                    // at least pods of this node going the Cluster way.
                    let usable = !ext_backends.is_empty() || (ext_local && !cluster_backends.is_empty());
                    if usable {
                        let mut rules = Vec::new();
                        if ext_local {
                            // Pods on this node keep Cluster semantics; outside clients
                            // only reach local endpoints, with their source address kept.
                            if !cluster_backends.is_empty() {
                                rules.push(format!("ip saddr {cluster} goto {svc_chain}"));
                            }
                            rules.extend(pick(&ext_backends));
                            if ext_backends.is_empty() {
                                rules.push("drop".into());
                            }
                        } else {
                            rules.push("jump mark-for-masquerade".into());
                            rules.push(format!("goto {svc_chain}"));
                        }
                        rs.chains.insert(ext_chain.clone(), rules);
                    }
                    for ip in &external_ips {
                        let k = format!("{ip} . {pr} . {}", sp.port);
                        if usable {
                            rs.map("service-ips").insert(k, format!("goto {ext_chain}"));
                        } else {
                            rs.map("no-endpoint-services").insert(k, "goto reject-chain".into());
                        }
                    }
                    if let Some(np) = sp.node_port.filter(|_| ty != "ClusterIP") {
                        let k = format!("{pr} . {np}");
                        if usable {
                            rs.map("service-nodeports").insert(k, format!("goto {ext_chain}"));
                        } else {
                            rs.map("no-endpoint-nodeports").insert(k, "goto reject-chain".into());
                        }
                    }
                }
            }
        }
        rs
    }

    fn map(&mut self, name: &'static str) -> &mut BTreeMap<String, String> {
        self.maps.entry(name).or_default()
    }

    /// The whole table, replacing whatever is there, in one transaction.
    pub fn full(&self, cfg: &ProxyConfig) -> String {
        let cluster = cfg.cluster_cidr;
        let mut s = String::new();
        let _ = writeln!(s, "add table ip {TABLE}\ndelete table ip {TABLE}\nadd table ip {TABLE}");
        for (m, ty) in MAPS {
            let _ = writeln!(s, "add map ip {TABLE} {m} {{ type {ty} : verdict ; }}");
        }
        let base: [(&str, &str, &[String]); 9] = [
            ("nat-prerouting", "type nat hook prerouting priority dstnat ; policy accept ;", &["jump services".into()]),
            ("nat-output", "type nat hook output priority -100 ; policy accept ;", &["jump services".into()]),
            (
                "nat-postrouting",
                "type nat hook postrouting priority srcnat ; policy accept ;",
                &[
                    format!(
                        "meta mark & {MASQ_MARK:#x} == {MASQ_MARK:#x} meta mark set meta mark ^ {MASQ_MARK:#x} masquerade fully-random"
                    ),
                    format!("ip saddr {cluster} ip daddr != {cluster} masquerade fully-random"),
                ],
            ),
            (
                // Before routing, so a Service without endpoints is refused even where
                // its address has no route; covers what the node receives and forwards.
                "filter-prerouting",
                "type filter hook prerouting priority -110 ; policy accept ;",
                &["ct state new jump endpoints-check".into()],
            ),
            (
                "filter-output",
                "type filter hook output priority -110 ; policy accept ;",
                &["ct state new jump endpoints-check".into()],
            ),
            (
                "services",
                "",
                &[
                    "ip daddr . meta l4proto . th dport vmap @service-ips".into(),
                    "fib daddr type local meta l4proto . th dport vmap @service-nodeports".into(),
                ],
            ),
            (
                "endpoints-check",
                "",
                &[
                    "ip daddr . meta l4proto . th dport vmap @no-endpoint-services".into(),
                    "fib daddr type local meta l4proto . th dport vmap @no-endpoint-nodeports".into(),
                ],
            ),
            ("mark-for-masquerade", "", &[format!("meta mark set meta mark | {MASQ_MARK:#x}")]),
            (
                // NetworkPolicy, for pods on this node (see `policy`): the egress chain
                // of the source returns when allowed, the ingress chain of the
                // destination accepts when allowed; both drop the rest.
                "policy-forward",
                "type filter hook forward priority 0 ; policy accept ;",
                &[
                    "ct state established,related accept".into(),
                    "ip saddr vmap @policy-egress".into(),
                    "ip daddr vmap @policy-ingress".into(),
                ],
            ),
        ];
        // Regular chains first (rules refer to them), then the Service chains and map
        // elements, then the hooks that lead into them.
        let _ = writeln!(s, "add chain ip {TABLE} reject-chain\nadd rule ip {TABLE} reject-chain reject");
        for (name, hook, _) in &base {
            if hook.is_empty() {
                let _ = writeln!(s, "add chain ip {TABLE} {name}");
            }
        }
        let mut empty = Ruleset::default();
        for (m, _) in MAPS {
            empty.maps.insert(m, BTreeMap::new());
        }
        s.push_str(&empty.diff(self));
        for (name, hook, rules) in &base {
            if !hook.is_empty() {
                let _ = writeln!(s, "add chain ip {TABLE} {name} {{ {hook} }}");
            }
            for r in rules.iter() {
                let _ = writeln!(s, "add rule ip {TABLE} {name} {r}");
            }
        }
        s
    }

    /// The nft commands that turn `self` (applied) into `next`, in an order the
    /// kernel accepts in one transaction: new sets and chains, rewritten chains, map
    /// elements, then what is gone.
    pub fn diff(&self, next: &Ruleset) -> String {
        let mut s = String::new();
        for (name, timeout) in &next.sets {
            if self.sets.get(name) != Some(timeout) {
                if self.sets.contains_key(name) {
                    let _ = writeln!(s, "delete set ip {TABLE} {name}");
                }
                let _ = writeln!(
                    s,
                    "add set ip {TABLE} {name} {{ type ipv4_addr ; flags dynamic,timeout ; timeout {timeout}s ; }}"
                );
            }
        }
        for name in next.chains.keys() {
            if !self.chains.contains_key(name) {
                let _ = writeln!(s, "add chain ip {TABLE} {name}");
            }
        }
        for (name, rules) in &next.chains {
            match self.chains.get(name) {
                Some(old) if old == rules => continue,
                Some(_) => {
                    let _ = writeln!(s, "flush chain ip {TABLE} {name}");
                }
                None => {}
            }
            for r in rules {
                let _ = writeln!(s, "add rule ip {TABLE} {name} {r}");
            }
        }
        let empty = BTreeMap::new();
        for (m, elems) in &next.maps {
            let old = self.maps.get(m).unwrap_or(&empty);
            let gone: Vec<&String> = old.iter().filter(|(k, v)| elems.get(*k) != Some(v)).map(|(k, _)| k).collect();
            if !gone.is_empty() {
                let keys: Vec<&str> = gone.iter().map(|k| k.as_str()).collect();
                let _ = writeln!(s, "delete element ip {TABLE} {m} {{ {} }}", keys.join(", "));
            }
            let added: Vec<String> =
                elems.iter().filter(|(k, v)| old.get(*k) != Some(v)).map(|(k, v)| format!("{k} : {v}")).collect();
            if !added.is_empty() {
                let _ = writeln!(s, "add element ip {TABLE} {m} {{ {} }}", added.join(", "));
            }
        }
        for (m, old) in &self.maps {
            if !next.maps.contains_key(m) && !old.is_empty() {
                let keys: Vec<&str> = old.keys().map(String::as_str).collect();
                let _ = writeln!(s, "delete element ip {TABLE} {m} {{ {} }}", keys.join(", "));
            }
        }
        // Chains that go: first emptied (so nothing refers to one another), then deleted.
        let gone: Vec<&String> = self.chains.keys().filter(|c| !next.chains.contains_key(*c)).collect();
        for c in &gone {
            let _ = writeln!(s, "flush chain ip {TABLE} {c}");
        }
        for c in &gone {
            let _ = writeln!(s, "delete chain ip {TABLE} {c}");
        }
        for name in self.sets.keys().filter(|n| !next.sets.contains_key(*n)) {
            let _ = writeln!(s, "delete set ip {TABLE} {name}");
        }
        s
    }
}

/// The UDP flows to flush after going from `old` to `new`: (service address, port,
/// endpoint) for every endpoint no longer behind that address.
pub fn stale_udp(old: &Ruleset, new: &Ruleset) -> Vec<(Ipv4Addr, i32, Ipv4Addr)> {
    let mut out = Vec::new();
    for ((vip, port), eps) in &old.udp {
        let now = new.udp.get(&(*vip, *port));
        for ep in eps {
            if now.is_none_or(|n| !n.contains(ep)) {
                out.push((*vip, *port, *ep));
            }
        }
    }
    out
}

/// Deletes the conntrack entries of UDP flows to `vip:port` DNATed to `ep`, as
/// kube-proxy does, with the `conntrack` tool (skipped, with a note, where it is
/// missing).
pub async fn flush_udp(vip: Ipv4Addr, port: i32, ep: Ipv4Addr) {
    let r = tokio::process::Command::new("conntrack")
        .args(["-D", "-p", "udp", "--orig-dst", &vip.to_string(), "--orig-port-dst", &port.to_string()])
        .args(["--dst-nat", &ep.to_string()])
        .output()
        .await;
    match r {
        // Exit 1 means there was nothing to delete.
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "conntrack is not installed; stale UDP flows expire on their own"),
    }
}

fn affinity_set(sep: &str) -> String {
    // Sets share the chain's hash; their names must stay short.
    format!("aff-{}", sep.split('-').nth(1).unwrap_or_default())
}

/// The endpoints of one Service port: ready ones, or if none is ready the serving
/// terminating ones (as kube-proxy does), deduplicated.
fn backends(cfg: &ProxyConfig, slices: &[&EndpointSlice], port_name: &str, protocol: &str) -> Vec<Backend> {
    let mut ready = BTreeSet::new();
    let mut serving = BTreeSet::new();
    for s in slices {
        let Some(port) = s
            .ports
            .iter()
            .flatten()
            .find(|p| {
                p.name.as_deref().unwrap_or("") == port_name && p.protocol.as_deref().unwrap_or("TCP") == protocol
            })
            .and_then(|p| p.port)
        else {
            continue;
        };
        for e in &s.endpoints {
            let c = e.conditions.clone().unwrap_or_default();
            let is_ready = c.ready.unwrap_or(true);
            let is_serving = c.serving.unwrap_or(is_ready);
            let local = e.node_name.as_deref() == Some(cfg.node.as_str());
            for a in &e.addresses {
                let Ok(ip) = a.parse::<Ipv4Addr>() else { continue };
                let b = Backend { ip, port, local };
                if is_ready {
                    ready.insert(b);
                } else if is_serving && c.terminating == Some(true) {
                    serving.insert(b);
                }
            }
        }
    }
    if ready.is_empty() { serving.into_iter().collect() } else { ready.into_iter().collect() }
}

/// Runs `nft -f -` with `script`.
pub async fn nft(script: &str) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| anyhow::anyhow!("running nft: {e} (is nftables installed?)"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).await?;
    }
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        anyhow::bail!("nft: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Removes rk's table (at shutdown of the network, or by `rk-killall.sh`'s equivalent).
pub async fn remove_table() -> anyhow::Result<()> {
    nft(&format!("add table ip {TABLE}\ndelete table ip {TABLE}\n")).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn cfg() -> ProxyConfig {
        ProxyConfig { node: "n1".into(), cluster_cidr: "10.42.0.0/16".parse().unwrap(), skip_ips: vec![] }
    }

    fn svc(v: serde_json::Value) -> Arc<Service> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn slice(ips: &[(&str, &str, bool)]) -> Arc<EndpointSlice> {
        let eps: Vec<serde_json::Value> = ips
            .iter()
            .map(|(ip, node, ready)| serde_json::json!({"addresses": [ip], "nodeName": node, "conditions": {"ready": ready}}))
            .collect();
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "web-abc", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4", "endpoints": eps,
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            }))
            .unwrap(),
        )
    }

    fn web(ty: &str) -> Arc<Service> {
        svc(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"type": ty, "clusterIP": "10.43.0.20",
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}]},
        }))
    }

    #[test]
    fn cluster_ip_spreads_over_ready_endpoints() {
        let rs = Ruleset::build(
            &cfg(),
            &[web("ClusterIP")],
            &[slice(&[("10.42.0.5", "n1", true), ("10.42.1.5", "n2", true), ("10.42.1.6", "n2", false)])],
        );
        let svc_chain = rs.maps["service-ips"]["10.43.0.20 . tcp . 80"].strip_prefix("goto ").unwrap().to_string();
        let rules = &rs.chains[&svc_chain];
        assert!(rules[1].starts_with("numgen random mod 2 vmap"), "{rules:?}");
        assert_eq!(rs.chains.keys().filter(|c| c.starts_with("sep-")).count(), 2);
        assert!(rs.maps["service-nodeports"].is_empty());
        assert!(rs.chains.values().flatten().any(|r| r == "meta l4proto tcp dnat to 10.42.1.5:8080"));
    }

    #[test]
    fn no_endpoints_rejects_and_nodeport_is_mapped() {
        let rs = Ruleset::build(&cfg(), &[web("NodePort")], &[slice(&[])]);
        assert_eq!(rs.maps["no-endpoint-services"]["10.43.0.20 . tcp . 80"], "goto reject-chain");
        assert_eq!(rs.maps["no-endpoint-nodeports"]["tcp . 30080"], "goto reject-chain");
        assert!(rs.chains.is_empty());
        let rs = Ruleset::build(&cfg(), &[web("NodePort")], &[slice(&[("10.42.1.5", "n2", true)])]);
        let ext = rs.maps["service-nodeports"]["tcp . 30080"].strip_prefix("goto ").unwrap().to_string();
        assert_eq!(rs.chains[&ext][0], "jump mark-for-masquerade");
    }

    #[test]
    fn headless_external_name_and_skipped_ips_get_no_rules() {
        let headless = svc(serde_json::json!({"metadata": {"name": "h", "namespace": "default"},
            "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}));
        let ext = svc(serde_json::json!({"metadata": {"name": "e", "namespace": "default"},
            "spec": {"type": "ExternalName", "externalName": "example.com"}}));
        let dns = svc(serde_json::json!({"metadata": {"name": "kube-dns", "namespace": "kube-system"},
            "spec": {"clusterIP": "10.43.0.10", "ports": [{"port": 53, "protocol": "UDP"}]}}));
        let mut c = cfg();
        c.skip_ips = vec!["10.43.0.10".parse().unwrap()];
        let rs = Ruleset::build(&c, &[headless, ext, dns], &[]);
        assert!(rs.chains.is_empty());
        assert!(rs.maps.values().all(|m| m.is_empty()));
    }

    #[test]
    fn one_endpoint_change_touches_one_service() {
        let other = svc(serde_json::json!({"metadata": {"name": "other", "namespace": "default"},
            "spec": {"clusterIP": "10.43.0.30", "ports": [{"name": "http", "port": 80}]}}));
        let other_slice = Arc::new(
            serde_json::from_value::<EndpointSlice>(serde_json::json!({
                "metadata": {"name": "other-x", "namespace": "default", "labels": {"kubernetes.io/service-name": "other"}},
                "addressType": "IPv4", "endpoints": [{"addresses": ["10.42.0.9"]}],
                "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
            }))
            .unwrap(),
        );
        let a = Ruleset::build(
            &cfg(),
            &[web("ClusterIP"), other.clone()],
            &[slice(&[("10.42.0.5", "n1", true)]), other_slice.clone()],
        );
        let b = Ruleset::build(
            &cfg(),
            &[web("ClusterIP"), other],
            &[slice(&[("10.42.0.5", "n1", true), ("10.42.0.6", "n1", true)]), other_slice],
        );
        let d = a.diff(&b);
        assert!(!d.contains("10.42.0.9"), "{d}");
        assert!(!d.contains("other"), "{d}");
        assert_eq!(d.matches("flush chain").count(), 1, "{d}");
        assert!(d.contains("add chain ip rk sep-"), "{d}");
        assert_eq!(b.diff(&b), "");
        // And back: the endpoint's chain goes.
        let back = b.diff(&a);
        assert!(back.contains("delete chain ip rk sep-"), "{back}");
    }

    #[test]
    fn udp_endpoints_that_go_are_flushed() {
        let dns = svc(serde_json::json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.43.0.20", "ports": [{"name": "http", "port": 53, "protocol": "UDP"}]}}));
        let udp_slice = |ips: &[&str]| {
            let eps: Vec<serde_json::Value> = ips.iter().map(|ip| serde_json::json!({"addresses": [ip]})).collect();
            Arc::new(
                serde_json::from_value::<EndpointSlice>(serde_json::json!({
                    "metadata": {"name": "web-u", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
                    "addressType": "IPv4", "endpoints": eps, "ports": [{"name": "http", "port": 5353, "protocol": "UDP"}],
                }))
                .unwrap(),
            )
        };
        let a = Ruleset::build(&cfg(), &[dns.clone()], &[udp_slice(&["10.42.0.5", "10.42.1.5"])]);
        let b = Ruleset::build(&cfg(), &[dns], &[udp_slice(&["10.42.1.5"])]);
        assert_eq!(stale_udp(&a, &b), vec![("10.43.0.20".parse().unwrap(), 53, "10.42.0.5".parse().unwrap())]);
        assert!(stale_udp(&b, &a).is_empty());
    }

    #[test]
    fn affinity_uses_sets_and_local_policy_keeps_local_endpoints() {
        let s = svc(serde_json::json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"type": "NodePort", "clusterIP": "10.43.0.20", "sessionAffinity": "ClientIP",
                     "externalTrafficPolicy": "Local",
                     "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}}));
        let rs = Ruleset::build(&cfg(), &[s], &[slice(&[("10.42.0.5", "n1", true), ("10.42.1.5", "n2", true)])]);
        assert_eq!(rs.sets.len(), 2);
        let ext = rs.maps["service-nodeports"]["tcp . 30080"].strip_prefix("goto ").unwrap().to_string();
        let rules = rs.chains[&ext].join("\n");
        assert!(rules.contains("10.42.0.5"), "{rules}");
        assert!(!rules.contains("mark-for-masquerade"), "{rules}");
        let full = rs.full(&cfg());
        assert!(full.contains("add set ip rk aff-"), "{full}");
    }

    /// The kernel accepts the table and a later diff (`nft -c`: checked, never committed).
    #[tokio::test]
    async fn nft_accepts_the_rules() {
        let has_nft =
            std::env::var("PATH").unwrap_or_default().split(':').any(|d| std::path::Path::new(d).join("nft").exists());
        if !nix::unistd::Uid::effective().is_root() || !has_nft {
            eprintln!("skipped: needs root and nft");
            return;
        }
        let s = svc(serde_json::json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.43.0.20", "sessionAffinity": "ClientIP",
                     "ports": [{"name": "http", "port": 80, "nodePort": 30080}, {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}}));
        let a = Ruleset::build(
            &cfg(),
            &[s.clone(), web("NodePort")],
            &[slice(&[("10.42.0.5", "n1", true), ("10.42.1.5", "n2", true)])],
        );
        let b = Ruleset::build(&cfg(), &[s], &[slice(&[("10.42.0.5", "n1", true)])]);
        let script = format!("{}{}", a.full(&cfg()), a.diff(&b));
        let mut child = tokio::process::Command::new("nft")
            .args(["-c", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use tokio::io::AsyncWriteExt;
        child.stdin.take().unwrap().write_all(script.as_bytes()).await.unwrap();
        let out = child.wait_with_output().await.unwrap();
        assert!(out.status.success(), "{}\n{script}", String::from_utf8_lossy(&out.stderr));
    }
}
