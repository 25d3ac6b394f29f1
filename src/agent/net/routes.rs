//! The pod network between nodes. Every other node's podCIDR is routed either
//! directly via that node's InternalIP (`host-gw`, flannel's name: nodes on one L2
//! segment) or through VXLAN (`vxlan`: a `rk-vxlan` device, VNI 1, UDP 8472, its MAC
//! published on the Node as `rk.io/vtep-mac`; per remote node a route via that
//! node's VTEP address, a permanent neighbour entry and an FDB entry to its IP).
//! `--pod-network auto` (the default) picks host-gw for nodes whose address is on a
//! directly connected network and VXLAN for the rest. rk's routes carry their own
//! protocol number, so they are told apart from everyone else's and removed when their
//! node goes.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Node;

/// The routing protocol number on rk's routes (`ip route ... proto 82`).
pub const RK_PROTO: &str = "82";
/// The VXLAN device.
pub const VXLAN_LINK: &str = "rk-vxlan";
/// The Node annotation carrying the node's VTEP MAC.
pub const VTEP_ANNOTATION: &str = "rk.io/vtep-mac";
/// VXLAN's overhead on the underlying MTU.
pub const VXLAN_OVERHEAD: u32 = 50;

/// How pods on other nodes are reached (`--pod-network`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum PodNetwork {
    /// host-gw for nodes on a directly connected network, VXLAN for the others.
    #[default]
    Auto,
    /// Direct routes only (nodes on one L2 segment).
    HostGw,
    /// VXLAN to every node.
    Vxlan,
}

/// Another node's pods, as far as routing goes.
#[derive(Clone, Debug, PartialEq)]
pub struct Peer {
    pub cidr: ipnet::Ipv4Net,
    pub node_ip: Ipv4Addr,
    pub vtep_mac: Option<String>,
}

/// The other nodes with a podCIDR and an InternalIP.
pub fn peers(me: &str, nodes: &[std::sync::Arc<Node>]) -> Vec<Peer> {
    let mut out = Vec::new();
    for n in nodes {
        if n.metadata.name.as_deref() == Some(me) {
            continue;
        }
        let Some(cidr) = n.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()).and_then(|c| c.parse().ok()) else {
            continue;
        };
        let Some(node_ip) = internal_ip(n) else { continue };
        let vtep_mac = n.metadata.annotations.as_ref().and_then(|a| a.get(VTEP_ANNOTATION)).cloned();
        out.push(Peer { cidr, node_ip, vtep_mac });
    }
    out
}

/// A node's InternalIP (IPv4).
pub fn internal_ip(n: &Node) -> Option<Ipv4Addr> {
    n.status.as_ref()?.addresses.as_ref()?.iter().find(|a| a.type_ == "InternalIP").and_then(|a| a.address.parse().ok())
}

/// The VTEP address of a node: the network address of its podCIDR (as flannel).
pub fn vtep_ip(cidr: &ipnet::Ipv4Net) -> Ipv4Addr {
    cidr.network()
}

/// Runs an iproute2 tool (`ip`, `bridge`); its stdout, or its stderr as the error.
async fn iproute2(tool: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(tool)
        .args(args)
        .output()
        .await
        .map_err(|e| anyhow::anyhow!("running {tool}: {e} (is iproute2 installed?)"))?;
    if !out.status.success() {
        anyhow::bail!("{tool} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip ARGS`.
pub(super) async fn ip(args: &[&str]) -> anyhow::Result<String> {
    iproute2("ip", args).await
}

/// rk's routes as they are now: destination → gateway.
pub async fn current() -> anyhow::Result<BTreeMap<String, String>> {
    let text = ip(&["-j", "-4", "route", "show", "proto", RK_PROTO]).await?;
    let v: Vec<serde_json::Value> = serde_json::from_str(text.trim()).unwrap_or_default();
    Ok(v.iter()
        .filter_map(|r| Some((r["dst"].as_str()?.to_string(), r["gateway"].as_str().unwrap_or("").to_string())))
        .collect())
}

/// Whether `addr` is on a directly connected network (no gateway on the way).
async fn on_link(addr: Ipv4Addr) -> bool {
    let Ok(text) = ip(&["-j", "route", "get", &addr.to_string()]).await else { return false };
    let v: Vec<serde_json::Value> = serde_json::from_str(text.trim()).unwrap_or_default();
    v.first().is_some_and(|r| r.get("gateway").is_none())
}

/// The MTU of the link carrying `addr` (1500 if unknown). Asked of `ip`, not read
/// from /sys, which shows the interfaces of the namespace it was mounted in.
pub async fn link_mtu(addr: std::net::IpAddr) -> u32 {
    let Ok(text) = ip(&["-j", "addr", "show"]).await else { return 1500 };
    let links: Vec<serde_json::Value> = serde_json::from_str(text.trim()).unwrap_or_default();
    links
        .iter()
        .find(|l| {
            l["addr_info"].as_array().is_some_and(|a| a.iter().any(|i| i["local"].as_str() == Some(&addr.to_string())))
        })
        .and_then(|l| l["mtu"].as_u64())
        .map_or(1500, |m| m as u32)
}

/// Creates (or keeps) this node's VXLAN device for `node_ip` and its podCIDR; returns
/// its MAC address.
pub async fn setup_vxlan(node_ip: Ipv4Addr, cidr: &ipnet::Ipv4Net) -> anyhow::Result<String> {
    let local = node_ip.to_string();
    if ip(&["link", "show", "dev", VXLAN_LINK]).await.is_err() {
        ip(&["link", "add", VXLAN_LINK, "type", "vxlan", "id", "1", "local", &local, "dstport", "8472", "nolearning"])
            .await?;
    }
    let mtu = link_mtu(std::net::IpAddr::V4(node_ip)).await.saturating_sub(VXLAN_OVERHEAD).to_string();
    ip(&["link", "set", VXLAN_LINK, "mtu", &mtu]).await?;
    ip(&["addr", "replace", &format!("{}/32", vtep_ip(cidr)), "dev", VXLAN_LINK]).await?;
    ip(&["link", "set", VXLAN_LINK, "up"]).await?;
    let text = ip(&["-j", "link", "show", "dev", VXLAN_LINK]).await?;
    let v: Vec<serde_json::Value> = serde_json::from_str(text.trim())?;
    v.first()
        .and_then(|l| l["address"].as_str())
        .map(String::from)
        .ok_or_else(|| anyhow::anyhow!("{VXLAN_LINK} has no MAC address"))
}

/// Makes rk's routes (and VXLAN entries) match `peers` under `mode`.
pub async fn sync(mode: PodNetwork, peers: &[Peer]) {
    let have = match current().await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "listing routes failed");
            return;
        }
    };
    let mut want = BTreeMap::new();
    for p in peers {
        let cidr = p.cidr.to_string();
        let direct = match mode {
            PodNetwork::HostGw => true,
            PodNetwork::Vxlan => false,
            PodNetwork::Auto => on_link(p.node_ip).await,
        };
        if direct {
            let via = p.node_ip.to_string();
            if have.get(&cidr) != Some(&via) {
                match ip(&["route", "replace", &cidr, "via", &via, "proto", RK_PROTO]).await {
                    Ok(_) => tracing::info!(%cidr, %via, "route to a node's pods"),
                    Err(e) => tracing::warn!(
                        %cidr, %via, error = %e,
                        "cannot route to that node's pods directly (host-gw needs the nodes on one L2 segment; --pod-network vxlan does not)"
                    ),
                }
            }
            want.insert(cidr, via);
            continue;
        }
        let Some(mac) = &p.vtep_mac else {
            tracing::debug!(%cidr, "that node has not published its VTEP yet");
            continue;
        };
        let vtep = vtep_ip(&p.cidr).to_string();
        let (node_ip, vtep_s) = (p.node_ip.to_string(), vtep.clone());
        if have.get(&cidr) != Some(&vtep) {
            let r = async {
                ip(&["neigh", "replace", &vtep_s, "lladdr", mac, "dev", VXLAN_LINK, "nud", "permanent"]).await?;
                iproute2("bridge", &["fdb", "replace", mac, "dev", VXLAN_LINK, "dst", &node_ip, "self", "permanent"])
                    .await?;
                ip(&["route", "replace", &cidr, "via", &vtep_s, "dev", VXLAN_LINK, "onlink", "proto", RK_PROTO]).await
            }
            .await;
            match r {
                Ok(_) => tracing::info!(%cidr, node = %p.node_ip, "route to a node's pods over VXLAN"),
                Err(e) => tracing::warn!(%cidr, error = %e, "cannot route to that node's pods over VXLAN"),
            }
        }
        want.insert(cidr, vtep);
    }
    for cidr in have.keys().filter(|c| !want.contains_key(*c)) {
        if let Err(e) = ip(&["route", "del", cidr, "proto", RK_PROTO]).await {
            tracing::warn!(%cidr, error = %e, "removing a stale pod route failed");
        }
    }
}

/// Turns on IPv4 forwarding (needed to route pod traffic).
pub fn enable_forwarding() {
    if let Err(e) = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1") {
        tracing::warn!(error = %e, "cannot enable IPv4 forwarding; pods will not reach other nodes");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_to_other_nodes_only() {
        let node = |name: &str, cidr: Option<&str>, ip: &str| {
            std::sync::Arc::new(
                serde_json::from_value::<Node>(serde_json::json!({
                    "metadata": {"name": name},
                    "spec": {"podCIDR": cidr},
                    "status": {"addresses": [{"type": "Hostname", "address": name}, {"type": "InternalIP", "address": ip}]},
                }))
                .unwrap(),
            )
        };
        let nodes = [
            node("a", Some("10.42.0.0/24"), "192.168.1.1"),
            node("b", Some("10.42.1.0/24"), "192.168.1.2"),
            node("c", None, "192.168.1.3"),
        ];
        let p = peers("a", &nodes);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].cidr.to_string(), "10.42.1.0/24");
        assert_eq!(p[0].node_ip.to_string(), "192.168.1.2");
        assert_eq!(vtep_ip(&p[0].cidr).to_string(), "10.42.1.0");
    }
}
