//! The pod network between nodes, `host-gw` style (flannel's name): every other
//! node's podCIDR is routed via that node's InternalIP, which works when the nodes
//! share an L2 segment. rk's routes carry their own protocol number, so they are told
//! apart from everyone else's and removed when their node goes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;

/// The routing protocol number on rk's routes (`ip route ... proto 82`).
pub const RK_PROTO: &str = "82";

/// The routes to other nodes' pods: podCIDR → that node's InternalIP.
pub fn desired(me: &str, nodes: &[std::sync::Arc<Node>]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for n in nodes {
        if n.metadata.name.as_deref() == Some(me) {
            continue;
        }
        let Some(cidr) = n.spec.as_ref().and_then(|s| s.pod_cidr.clone()) else { continue };
        let Some(ip) = n
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .map(|a| a.address.clone())
        else {
            continue;
        };
        if cidr.parse::<ipnet::Ipv4Net>().is_ok() && ip.parse::<std::net::Ipv4Addr>().is_ok() {
            out.insert(cidr, ip);
        }
    }
    out
}

async fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await
        .map_err(|e| anyhow::anyhow!("running ip: {e} (is iproute2 installed?)"))?;
    if !out.status.success() {
        anyhow::bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// rk's routes as they are now.
pub async fn current() -> anyhow::Result<BTreeMap<String, String>> {
    let text = ip(&["-j", "-4", "route", "show", "proto", RK_PROTO]).await?;
    let v: Vec<serde_json::Value> = serde_json::from_str(text.trim()).unwrap_or_default();
    Ok(v.iter()
        .filter_map(|r| Some((r["dst"].as_str()?.to_string(), r["gateway"].as_str().unwrap_or("").to_string())))
        .collect())
}

/// Makes rk's routes what `want` says.
pub async fn sync(want: &BTreeMap<String, String>) {
    let have = match current().await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "listing routes failed");
            return;
        }
    };
    for (cidr, via) in want {
        if have.get(cidr) == Some(via) {
            continue;
        }
        match ip(&["route", "replace", cidr, "via", via, "proto", RK_PROTO]).await {
            Ok(_) => tracing::info!(%cidr, %via, "route to a node's pods"),
            Err(e) => tracing::warn!(
                %cidr, %via, error = %e,
                "cannot route to that node's pods: host-gw needs the nodes on one L2 segment"
            ),
        }
    }
    for cidr in have.keys().filter(|c| !want.contains_key(*c)) {
        if let Err(e) = ip(&["route", "del", cidr, "proto", RK_PROTO]).await {
            tracing::warn!(%cidr, error = %e, "removing a stale pod route failed");
        }
    }
}

/// Removes every rk route.
pub async fn remove_all() {
    sync(&BTreeMap::new()).await;
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
        let d = desired("a", &nodes);
        assert_eq!(d.len(), 1);
        assert_eq!(d["10.42.1.0/24"], "192.168.1.2");
    }
}
