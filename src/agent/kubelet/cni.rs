//! The pod network on one node: CNI `ptp` (a veth pair per pod, routed by the node,
//! so every packet between pods, same node or not, crosses the node's netfilter and
//! the service proxy sees it without `br_netfilter`) with `host-local` IPAM on the
//! node's podCIDR, plus `portmap` for hostPort, written where rk's containerd reads
//! its CNI config. containerd picks up the file on its own. Masquerade is the service
//! proxy's (`agent::net::proxy`), not the plugin's.

use std::path::Path;

use serde_json::json;

/// The CNI network config for a node whose podCIDR is `cidr`.
pub fn conflist(cidr: &ipnet::Ipv4Net, ipam_dir: &Path, mtu: Option<u32>) -> String {
    let v = json!({
        "cniVersion": "1.0.0",
        "name": "rk-pod-network",
        "plugins": [
            {"type": "ptp", "ipMasq": false,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": cidr.to_string()}]],
                      "routes": [{"dst": "0.0.0.0/0"}], "dataDir": ipam_dir.display().to_string()}},
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
        ],
    });
    let mut v = v;
    if let Some(mtu) = mtu {
        v["plugins"][0]["mtu"] = json!(mtu);
    }
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

/// Writes the config (atomically) if it differs from what is there.
pub fn write(conf_dir: &Path, cidr: &ipnet::Ipv4Net, ipam_dir: &Path, mtu: Option<u32>) -> std::io::Result<()> {
    std::fs::create_dir_all(conf_dir)?;
    let path = conf_dir.join("10-rk.conflist");
    let text = conflist(cidr, ipam_dir, mtu);
    if std::fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    let tmp = conf_dir.join(".10-rk.conflist.tmp");
    std::fs::write(&tmp, &text)?;
    std::fs::rename(tmp, path)
}
