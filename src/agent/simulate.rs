//! Simulated nodes: `rk agent --simulate N` registers N nodes that renew their Leases,
//! report Ready with the configured capacity, and take the pods bound to them to
//! Running and Ready (with a pod IP from the node's podCIDR) without running a
//! container; pods with `restartPolicy: Never|OnFailure` Succeed after a set time. A
//! pod being deleted is finished as a kubelet would (deleted with grace 0). The rest of
//! the cluster cannot tell them from real nodes: this is how the control plane is
//! tested and benchmarked at scale, and how users plan capacity.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, NodeSpec, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::ObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// How many nodes.
    pub count: usize,
    /// Node names are `<prefix>-<i>`.
    pub prefix: String,
    /// Allocatable CPU per node (a quantity, e.g. "4").
    pub cpu: String,
    /// Allocatable memory per node (e.g. "8Gi").
    pub memory: String,
    /// Pods per node.
    pub pods: u32,
    /// How long a pod with restartPolicy Never or OnFailure runs before it Succeeds.
    pub run_for: Duration,
    /// The cluster's pod network, carved into a /24 per node when the node has none.
    pub cluster_cidr: ipnet::Ipv4Net,
}

impl SimConfig {
    fn names(&self) -> Vec<String> {
        (0..self.count).map(|i| format!("{}-{i}", self.prefix)).collect()
    }
}

const LEASE_EVERY: Duration = Duration::from_secs(10);

/// How many API calls the simulated nodes have under way at once: each real node's
/// kubelet works on its own, so the simulation must not queue every node behind one.
const CONCURRENCY: usize = 64;

pub(crate) fn now_time() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now())
}

/// The /24 a node at `index` gets when the node IPAM has not given it one.
fn fallback_cidr(cfg: &SimConfig, index: usize) -> ipnet::Ipv4Net {
    cfg.cluster_cidr.subnets(24).ok().and_then(|mut s| s.nth(index)).unwrap_or(cfg.cluster_cidr)
}

fn node_object(cfg: &SimConfig, name: &str, index: usize) -> Node {
    let cap = BTreeMap::from([
        ("cpu".to_string(), Quantity(cfg.cpu.clone())),
        ("memory".to_string(), Quantity(cfg.memory.clone())),
        ("pods".to_string(), Quantity(cfg.pods.to_string())),
        ("ephemeral-storage".to_string(), Quantity("100Gi".into())),
    ]);
    let now = now_time();
    let cond = |t: &str, s: &str, reason: &str, msg: &str| {
        json!({"type": t, "status": s, "reason": reason, "message": msg,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    let ip = format!("127.1.{}.{}", index / 250, index % 250 + 1);
    let status = json!({
        "capacity": cap, "allocatable": cap,
        "conditions": [
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
        ],
        "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
        "nodeInfo": {
            "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "simulated",
            "osImage": "rk simulated node", "containerRuntimeVersion": "simulated://1.0",
            "kubeletVersion": format!("v1.33.0-rk{}", env!("CARGO_PKG_VERSION")), "kubeProxyVersion": "",
            "operatingSystem": "linux", "architecture": "amd64",
        },
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
    });
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([
                ("kubernetes.io/hostname".to_string(), name.to_string()),
                ("kubernetes.io/os".to_string(), "linux".to_string()),
                ("kubernetes.io/arch".to_string(), "amd64".to_string()),
                ("node.kubernetes.io/instance-type".to_string(), "rk-simulated".to_string()),
            ])),
            ..Default::default()
        },
        spec: Some(NodeSpec::default()),
        status: serde_json::from_value(status).ok(),
    }
}

/// Registers the nodes (or takes over existing ones of the same name) and marks them Ready.
async fn register(client: &kube::Client, cfg: &SimConfig) -> Result<Vec<Node>, kube::Error> {
    let api: Api<Node> = Api::all(client.clone());
    let mut out = Vec::new();
    for (i, name) in cfg.names().iter().enumerate() {
        let want = node_object(cfg, name, i);
        let node = match api.create(&PostParams::default(), &want).await {
            Ok(n) => n,
            Err(kube::Error::Api(e)) if e.code == 409 => api.get(name).await?,
            Err(e) => return Err(e),
        };
        let patch = json!({"status": want.status});
        let node = api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap_or(node);
        out.push(node);
    }
    Ok(out)
}

/// Renews each node's Lease in `kube-node-lease`, several at a time (a kubelet per
/// node would renew them all in parallel).
pub(crate) async fn renew_leases(client: &kube::Client, names: &[String]) {
    let api: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    futures::stream::iter(names).for_each_concurrent(CONCURRENCY, |name| renew_lease(&api, name)).await;
}

async fn renew_lease(api: &Api<Lease>, name: &String) {
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    let patch = json!({"spec": {"renewTime": now, "holderIdentity": name, "leaseDurationSeconds": 40}});
    match api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(name.clone()), ..Default::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(name.clone()),
                    lease_duration_seconds: Some(40),
                    renew_time: Some(now),
                    ..Default::default()
                }),
            };
            if let Err(e) = api.create(&PostParams::default(), &lease).await {
                tracing::debug!(node = %name, error = %e, "creating a node lease failed");
            }
        }
        Err(e) => tracing::debug!(node = %name, error = %e, "renewing a node lease failed"),
    }
}

/// Per-node pod IP allocation within the podCIDR the node IPAM gave the node.
#[derive(Default)]
struct Ipam {
    next: HashMap<String, u32>,
    cidrs: HashMap<String, ipnet::Ipv4Net>,
    /// Pods (by uid) already reported Running: an older version of one seen later
    /// must not start it again with another IP.
    started: std::collections::HashSet<String>,
}

impl Ipam {
    /// The next pod IP on `node` (its podCIDR read from the API the first time).
    async fn next_ip(me: &Mutex<Ipam>, client: &kube::Client, cfg: &SimConfig, node: &Node) -> String {
        let name = node.name_any();
        let known = me.lock().unwrap_or_else(|e| e.into_inner()).cidrs.contains_key(&name);
        let given = if known {
            None
        } else {
            let fresh = Api::<Node>::all(client.clone()).get(&name).await.ok();
            fresh.and_then(|n| n.spec?.pod_cidr).and_then(|c| c.parse().ok())
        };
        let mut me = me.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = given {
            me.cidrs.insert(name.clone(), c);
        }
        let index = name.rsplit('-').next().and_then(|i| i.parse().ok()).unwrap_or(0);
        let cidr = me.cidrs.get(&name).copied().unwrap_or_else(|| fallback_cidr(cfg, index));
        let size = (1u32 << (32 - cidr.prefix_len())).saturating_sub(3).max(1);
        let n = me.next.entry(name).or_insert(0);
        let ip = u32::from(cidr.network()) + 2 + (*n % size);
        *n += 1;
        std::net::Ipv4Addr::from(ip).to_string()
    }
}

/// The status of each of a pod's containers, all `ready` (and started) or not, in `state`.
fn container_statuses(p: &Pod, ready: bool, state: serde_json::Value) -> Vec<serde_json::Value> {
    let containers = p.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default();
    containers
        .iter()
        .map(|c| {
            let image = c.image.clone().unwrap_or_default();
            json!({"name": c.name, "image": image, "imageID": format!("simulated://{image}"),
                   "containerID": format!("simulated://{}-{}", p.uid().unwrap_or_default(), c.name),
                   "ready": ready, "started": ready, "restartCount": 0, "state": state})
        })
        .collect()
}

/// Takes one pod on one of our nodes a step towards where a kubelet would have it.
async fn sync_pod(client: &kube::Client, cfg: &SimConfig, node: &Node, ipam: &Mutex<Ipam>, p: &Pod) {
    let ns = p.namespace().unwrap_or_default();
    let name = p.name_any();
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    if p.metadata.deletion_timestamp.is_some() {
        // The containers "stop" at once; finish the deletion as the kubelet does.
        let dp = DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
        ipam.lock().unwrap_or_else(|e| e.into_inner()).started.remove(&p.uid().unwrap_or_default());
        if let Err(e) = api.delete(&name, &dp).await {
            tracing::debug!(pod = %name, error = %e, "finishing a pod deletion failed");
        }
        return;
    }
    let status = p.status.clone().unwrap_or_default();
    let phase = status.phase.as_deref().unwrap_or("Pending");
    let spec = p.spec.clone().unwrap_or_default();
    let finite = matches!(spec.restart_policy.as_deref(), Some("Never" | "OnFailure"));
    let now = now_time();
    match phase {
        "Pending" | "" => {
            if !ipam.lock().unwrap_or_else(|e| e.into_inner()).started.insert(p.uid().unwrap_or_default()) {
                return;
            }
            let pod_ip = Ipam::next_ip(ipam, client, cfg, node).await;
            let host_ip = node
                .status
                .as_ref()
                .and_then(|s| s.addresses.as_ref())
                .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
                .map(|a| a.address.clone())
                .unwrap_or_default();
            let containers = container_statuses(p, true, json!({"running": {"startedAt": now}}));
            let cond = |t: &str| json!({"type": t, "status": "True", "lastProbeTime": null, "lastTransitionTime": now});
            let patch = json!({"status": {
                "phase": "Running", "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
                "podIP": pod_ip, "podIPs": [{"ip": pod_ip}], "startTime": now,
                "conditions": [cond("PodReadyToStartContainers"), cond("Initialized"), cond("Ready"),
                               cond("ContainersReady"), cond("PodScheduled")],
                "containerStatuses": containers, "qosClass": "BestEffort",
            }});
            if let Err(e) = api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                tracing::debug!(pod = %name, error = %e, "reporting a pod running failed");
                ipam.lock().unwrap_or_else(|e| e.into_inner()).started.remove(&p.uid().unwrap_or_default());
            }
        }
        "Running" if finite => {
            let started = status.start_time.as_ref().map(|t| t.0.as_second()).unwrap_or(0);
            let elapsed = k8s_openapi::jiff::Timestamp::now().as_second() - started;
            if elapsed < cfg.run_for.as_secs() as i64 {
                return;
            }
            let state = json!({"terminated": {"exitCode": 0, "reason": "Completed",
                                              "startedAt": status.start_time, "finishedAt": now}});
            let containers = container_statuses(p, false, state);
            let off = |t: &str, reason: &str| json!({"type": t, "status": "False", "reason": reason, "lastProbeTime": null, "lastTransitionTime": now});
            let patch = json!({"status": {
                "phase": "Succeeded",
                "conditions": [off("PodReadyToStartContainers", "PodCompleted"),
                               json!({"type": "Initialized", "status": "True", "reason": "PodCompleted", "lastProbeTime": null, "lastTransitionTime": now}),
                               off("Ready", "PodCompleted"), off("ContainersReady", "PodCompleted"),
                               json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now})],
                "containerStatuses": containers,
            }});
            if let Err(e) = api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                tracing::debug!(pod = %name, error = %e, "reporting a pod finished failed");
            }
        }
        _ => {}
    }
}

/// What every pod sync needs.
struct Sim {
    client: kube::Client,
    cfg: SimConfig,
    by_name: Arc<HashMap<String, Node>>,
    ipam: Mutex<Ipam>,
}

impl Sim {
    /// The simulated node the pod is bound to, if it is one of ours.
    fn node(&self, p: &Pod) -> Option<&Node> {
        p.spec.as_ref().and_then(|s| s.node_name.as_deref()).and_then(|n| self.by_name.get(n))
    }
}

/// The pod syncs under way: each pod is worked on by one task at a time (as a kubelet's
/// pod worker), with the newest version seen meanwhile taken up when it finishes, and
/// at most [`CONCURRENCY`] pods at once.
struct Workers {
    busy: Mutex<HashMap<String, Option<Pod>>>,
    slots: Arc<tokio::sync::Semaphore>,
}

impl Default for Workers {
    fn default() -> Self {
        Workers { busy: Mutex::default(), slots: Arc::new(tokio::sync::Semaphore::new(CONCURRENCY)) }
    }
}

impl Workers {
    fn sync(self: &Arc<Self>, sim: &Arc<Sim>, key: String, pod: Pod) {
        {
            let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(next) = busy.get_mut(&key) {
                *next = Some(pod);
                return;
            }
            busy.insert(key.clone(), None);
        }
        let (me, sim) = (self.clone(), sim.clone());
        tokio::spawn(async move {
            let Ok(_slot) = me.slots.clone().acquire_owned().await else { return };
            let mut pod = pod;
            loop {
                if let Some(node) = sim.node(&pod) {
                    sync_pod(&sim.client, &sim.cfg, node, &sim.ipam, &pod).await;
                }
                let mut busy = me.busy.lock().unwrap_or_else(|e| e.into_inner());
                match busy.get_mut(&key).and_then(Option::take) {
                    Some(next) => pod = next,
                    None => {
                        busy.remove(&key);
                        return;
                    }
                }
            }
        });
    }
}

/// Runs the simulated nodes until `shutdown`.
pub async fn run(client: kube::Client, cfg: SimConfig, shutdown: CancellationToken) -> Result<(), kube::Error> {
    let nodes = register(&client, &cfg).await?;
    let names = cfg.names();
    tracing::info!(count = cfg.count, prefix = %cfg.prefix, "simulated nodes registered");
    crate::notify_ready();
    let by_name: Arc<HashMap<String, Node>> = Arc::new(nodes.into_iter().map(|n| (n.name_any(), n)).collect());
    renew_leases(&client, &names).await;

    let leases = {
        let (client, names) = (client.clone(), names.clone());
        async move {
            let mut tick = tokio::time::interval(LEASE_EVERY);
            loop {
                tick.tick().await;
                renew_leases(&client, &names).await;
            }
        }
    };
    let pods = {
        let sim = Arc::new(Sim { client: client.clone(), cfg: cfg.clone(), by_name, ipam: Mutex::default() });
        async move {
            let api: Api<Pod> = Api::all(client.clone());
            // Finished pods are revisited on a timer, since nothing else changes them.
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut stream = watcher(api, watcher::Config::default()).default_backoff().applied_objects().boxed();
            let mut running: HashMap<String, Pod> = HashMap::new();
            let workers = Arc::new(Workers::default());
            loop {
                tokio::select! {
                    ev = stream.next() => match ev {
                        Some(Ok(p)) => {
                            if sim.node(&p).is_none() {
                                continue;
                            }
                            let key = format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any());
                            let finite = matches!(p.spec.as_ref().and_then(|s| s.restart_policy.as_deref()), Some("Never" | "OnFailure"));
                            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("");
                            if finite && p.metadata.deletion_timestamp.is_none() && phase == "Running" {
                                running.insert(key.clone(), p.clone());
                            } else {
                                running.remove(&key);
                            }
                            workers.sync(&sim, key, p);
                        }
                        Some(Err(e)) => tracing::debug!(error = %e, "pod watch error"),
                        None => return,
                    },
                    _ = tick.tick() => {
                        for (key, p) in &running {
                            workers.sync(&sim, key.clone(), p.clone());
                        }
                    }
                }
            }
        }
    };
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = leases => {}
        _ = pods => {}
    }
    Ok(())
}
