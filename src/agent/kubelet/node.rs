//! This node's Node object: registration with capacity and allocatable, addresses,
//! nodeInfo, labels and taints, and the conditions the kubelet reports.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Node, Taint};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// How this node presents itself.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The node name.
    pub name: String,
    /// `--node-ip` (else the first address of an up, non-loopback interface).
    pub ip: Option<IpAddr>,
    /// `--node-external-ip`.
    pub external_ip: Option<IpAddr>,
    /// `--node-label key=value`.
    pub labels: BTreeMap<String, String>,
    /// `--node-taint key=value:Effect`, applied at registration.
    pub taints: Vec<Taint>,
    /// `--eviction-hard` and the other eviction and image GC flags.
    pub eviction: super::eviction::EvictionArgs,
}

/// Bytes of memory on this machine.
pub fn memory_capacity() -> u64 {
    super::pressure::meminfo("MemTotal:").unwrap_or(0.0) as u64
}

/// The node's InternalIP: the one given, else the first IPv4 of an up, non-loopback
/// interface that is not one of the pod network's.
pub fn node_ip(given: Option<IpAddr>) -> IpAddr {
    if let Some(ip) = given {
        return ip;
    }
    let skip = |name: &str| {
        name == "rk0"
            || name.starts_with("rk-")
            || name.starts_with("veth")
            || name.starts_with("cni")
            || name.starts_with("flannel")
    };
    nix::ifaddrs::getifaddrs()
        .ok()
        .and_then(|mut it| {
            it.find(|a| {
                a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP)
                    && !a.flags.contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK)
                    && !skip(&a.interface_name)
                    && a.address.as_ref().and_then(|s| s.as_sockaddr_in()).is_some_and(|v4| !v4.ip().is_loopback())
            })
            .and_then(|a| a.address.and_then(|s| s.as_sockaddr_in().map(|v4| IpAddr::V4(v4.ip()))))
        })
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string())))
        .unwrap_or_else(|| "Linux".into())
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_default()
}

/// The node's capacity (allocatable is the same: rk reserves nothing, as k3s).
pub fn capacity(data_dir: &std::path::Path) -> BTreeMap<String, String> {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let disk = nix::sys::statvfs::statvfs(data_dir).map(|s| s.blocks() * s.fragment_size()).unwrap_or(0);
    BTreeMap::from([
        ("cpu".to_string(), cpus.to_string()),
        ("memory".to_string(), format!("{}Ki", memory_capacity() / 1024)),
        ("pods".to_string(), "110".to_string()),
        ("ephemeral-storage".to_string(), format!("{}Ki", disk / 1024)),
    ])
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    }
}

/// The file system images live on: rk's own containerd root, else containerd's
/// default, else the data dir's.
pub fn imagefs(data_dir: &std::path::Path) -> std::path::PathBuf {
    [data_dir.join("agent/containerd"), std::path::PathBuf::from("/var/lib/containerd")]
        .into_iter()
        .find(|p| p.is_dir())
        .unwrap_or_else(|| data_dir.to_path_buf())
}

/// The node's status: capacity and allocatable (capacity less the memory eviction
/// threshold, as the kubelet reserves it), addresses, nodeInfo, the pressure
/// conditions (`under`, from the eviction manager), and Ready (`ready` or not yet).
pub fn status(
    cfg: &NodeConfig,
    data_dir: &std::path::Path,
    runtime_version: &str,
    ready: (bool, &str),
    under: &[super::pressure::Condition],
) -> Value {
    use super::pressure::Condition;
    let cap = capacity(data_dir);
    let mut alloc = cap.clone();
    let mem = memory_capacity() as f64;
    let reserve = cfg.eviction.eviction_hard.memory_reserve(mem);
    if reserve > 0.0 {
        alloc.insert("memory".into(), format!("{}Ki", ((mem - reserve).max(0.0) / 1024.0) as u64));
    }
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let cond = |t: &str, s: &str, reason: &str, msg: &str| json!({"type": t, "status": s, "reason": reason, "message": msg, "lastHeartbeatTime": now, "lastTransitionTime": now});
    let uname = nix::sys::utsname::uname().ok();
    let kernel = uname.map(|u| u.release().to_string_lossy().to_string()).unwrap_or_default();
    let ip = node_ip(cfg.ip);
    let (ok, why) = ready;
    let mut addresses = vec![json!({"type": "InternalIP", "address": ip.to_string()})];
    if let Some(ext) = cfg.external_ip {
        addresses.push(json!({"type": "ExternalIP", "address": ext.to_string()}));
    }
    addresses.push(json!({"type": "Hostname", "address": cfg.name}));
    // The kubelet's words for each pressure condition: (type, under pressure, not).
    let pressures = [
        (
            Condition::Memory,
            "MemoryPressure",
            ("KubeletHasInsufficientMemory", "kubelet has insufficient memory available"),
            ("KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        ),
        (
            Condition::Disk,
            "DiskPressure",
            ("KubeletHasDiskPressure", "kubelet has disk pressure"),
            ("KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ),
        (
            Condition::Pid,
            "PIDPressure",
            ("KubeletHasInsufficientPID", "kubelet has insufficient PID available"),
            ("KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        ),
    ];
    let mut conditions: Vec<Value> = pressures
        .iter()
        .map(
            |(c, type_, yes, no)| {
                if under.contains(c) { cond(type_, "True", yes.0, yes.1) } else { cond(type_, "False", no.0, no.1) }
            },
        )
        .collect();
    conditions.push(if ok {
        cond("Ready", "True", "KubeletReady", "kubelet is posting ready status")
    } else {
        cond("Ready", "False", "KubeletNotReady", why)
    });
    json!({
        "capacity": cap, "allocatable": alloc,
        "conditions": conditions,
        "addresses": addresses,
        "nodeInfo": {
            "machineID": read_trim("/etc/machine-id"), "systemUUID": read_trim("/sys/class/dmi/id/product_uuid"),
            "bootID": read_trim("/proc/sys/kernel/random/boot_id"), "kernelVersion": kernel,
            "osImage": os_image(), "containerRuntimeVersion": runtime_version,
            "kubeletVersion": format!("v1.33.0+rk{}", env!("CARGO_PKG_VERSION")), "kubeProxyVersion": "",
            "operatingSystem": "linux", "architecture": arch(),
        },
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
    })
}

/// Registers the node, or takes over the object of the same name (labels merged,
/// taints given at registration only, as the kubelet does).
pub async fn register(client: &kube::Client, cfg: &NodeConfig, status: Value) -> Result<Node, kube::Error> {
    let api: Api<Node> = Api::all(client.clone());
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), cfg.name.clone()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), arch().to_string()),
        ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
        ("beta.kubernetes.io/arch".to_string(), arch().to_string()),
        ("node.kubernetes.io/instance-type".to_string(), "rk".to_string()),
    ]);
    labels.extend(cfg.labels.clone());
    let want: Node = serde_json::from_value(json!({
        "metadata": {"name": cfg.name, "labels": labels},
        "spec": if cfg.taints.is_empty() { json!({}) } else { json!({"taints": cfg.taints}) },
    }))
    .map_err(kube::Error::SerdeError)?;
    match api.create(&PostParams::default(), &want).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {
            api.patch(&cfg.name, &PatchParams::default(), &Patch::Merge(&json!({"metadata": {"labels": labels}})))
                .await?;
        }
        Err(e) => return Err(e),
    }
    api.patch_status(&cfg.name, &PatchParams::default(), &Patch::Merge(&json!({"status": status}))).await
}

/// Parses `key=value:Effect` (or `key:Effect`).
pub fn parse_taint(s: &str) -> Result<Taint, String> {
    let (kv, effect) = s.rsplit_once(':').ok_or_else(|| format!("taint {s:?} is not key=value:Effect"))?;
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return Err(format!("taint {s:?}: effect must be NoSchedule, PreferNoSchedule or NoExecute"));
    }
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k.to_string(), Some(v.to_string())),
        None => (kv.to_string(), None),
    };
    if key.is_empty() {
        return Err(format!("taint {s:?} has no key"));
    }
    Ok(Taint { key, value, effect: effect.into(), time_added: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taints_parse_as_kubectl_writes_them() {
        let t = parse_taint("dedicated=gpu:NoSchedule").unwrap();
        assert_eq!((t.key.as_str(), t.value.as_deref(), t.effect.as_str()), ("dedicated", Some("gpu"), "NoSchedule"));
        assert_eq!(parse_taint("k:NoExecute").unwrap().value, None);
        assert!(parse_taint("k=v").is_err());
        assert!(parse_taint("k=v:Sometimes").is_err());
    }
}
