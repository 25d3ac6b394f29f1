//! One worker per pod UID (kubelet `pod_workers.go`): it receives the newest version
//! of its pod (updates that arrive while it is busy coalesce), and each pass of
//! `sync` is idempotent: look at what the runtime has, take one step towards the
//! spec (sandbox → volumes → init containers in order → containers, restarts with
//! CrashLoopBackOff, probes), report the status the runtime implies, and say when
//! to look again. A deleted pod is stopped with its grace period and then removed.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::events::{Event, EventType, Recorder};
use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::status::{CState, Observed, PodObservation};
use crate::agent::runtime::Cri;

/// What every pod worker of a node shares.
pub struct NodeCtx {
    /// The node's API client.
    pub client: kube::Client,
    /// The runtime.
    pub cri: Cri,
    /// This node's name.
    pub node: String,
    /// This node's IP (status.hostIP).
    pub host_ip: String,
    /// `<data-dir>/agent/pods`: volumes.
    pub pods_root: PathBuf,
    /// Where pod log directories go.
    pub logs_root: PathBuf,
    /// The cluster DNS Service IP.
    pub cluster_dns: String,
    /// `--resolv-conf`, for `dnsPolicy: Default`.
    pub resolv_conf: Option<std::path::PathBuf>,
    /// The cluster domain.
    pub cluster_domain: String,
    /// Records Events as `kubelet` on this node.
    pub recorder: Recorder,
    /// The node's allocatable resources, for resourceFieldRef defaults.
    pub node_alloc: BTreeMap<String, f64>,
    /// Pod cgroups go under this parent.
    pub cgroup_root: String,
    /// True once the pod network (CNI config) is in place.
    pub network_ready: watch::Receiver<bool>,
    /// The node's pressure conditions (see `eviction`), for admitting new pods.
    pub pressure: watch::Receiver<Vec<super::pressure::Condition>>,
    /// Pods the eviction manager chose, by UID, for their workers to kill.
    pub evictions: std::sync::Mutex<HashMap<String, Termination>>,
    /// Wakes every worker to look at `evictions`.
    pub wake: watch::Sender<()>,
    /// The pods bound to this node as the kubelet's watch last saw them, by UID.
    pub pods: std::sync::Mutex<HashMap<String, Arc<Pod>>>,
}

impl NodeCtx {
    /// A pod's log directory, `<logs-root>/<namespace>_<name>_<uid>`, as the kubelet
    /// names it.
    pub fn log_dir(&self, namespace: &str, name: &str, uid: &str) -> PathBuf {
        self.logs_root.join(format!("{namespace}_{name}_{uid}"))
    }
}

/// Why the kubelet ends a pod that is not being deleted, as its status will say.
#[derive(Clone, Debug, PartialEq)]
pub struct Termination {
    /// `status.reason` (`Evicted`, `DeadlineExceeded`).
    pub reason: String,
    /// `status.message`.
    pub message: String,
    /// Seconds the containers get between SIGTERM and SIGKILL.
    pub grace: i64,
    /// Adds the `DisruptionTarget` condition (reason `TerminationByKubelet`).
    pub disruption: bool,
}

/// Marks the sandboxes this node's kubelet made, so it only ever removes its own.
pub const NODE_LABEL: &str = "io.rk.node";

const BACKOFF_START: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// When to try again after the runtime did not answer.
const RUNTIME_RETRY: Duration = Duration::from_secs(1);
/// How often a settled pod is looked at again (volumes refreshed, status checked).
const RESYNC: Duration = Duration::from_secs(5);

/// Probe bookkeeping for one run of one container.
#[derive(Default)]
struct ProbeState {
    started: bool,
    ready: bool,
    live_fails: i32,
    ready_fails: i32,
    ready_succ: i32,
    start_fails: i32,
    next_live: Option<Instant>,
    next_ready: Option<Instant>,
    next_start: Option<Instant>,
}

/// Runs the worker of one pod until the pod is gone (its `rx` carries `None`) or shutdown.
pub async fn run(
    ctx: Arc<NodeCtx>,
    uid: String,
    mut rx: watch::Receiver<Option<Arc<Pod>>>,
    shutdown: CancellationToken,
) {
    let mut wake = ctx.wake.subscribe();
    let mut w = Worker {
        ctx,
        backoff: HashMap::new(),
        probes: HashMap::new(),
        last_status: None,
        pulled: HashMap::new(),
        admitted: false,
        ended: None,
    };
    loop {
        let pod = rx.borrow_and_update().clone();
        let next = match pod {
            Some(p) => w.sync(&p).await,
            None => {
                // The object is gone: make sure nothing of it is left on the node.
                remove_pod(&w.ctx, &uid).await;
                return;
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
            _ = wake.changed() => {}
            _ = tokio::time::sleep(next) => {}
        }
    }
}

struct Worker {
    ctx: Arc<NodeCtx>,
    /// Per container name: (current back-off, the exit time it applies to).
    backoff: HashMap<String, (Duration, i64)>,
    /// Per container ID.
    probes: HashMap<String, ProbeState>,
    last_status: Option<Value>,
    /// Images this worker saw present, so "Pulled" is said once.
    pulled: HashMap<String, bool>,
    /// The pod passed the kubelet's admission (or was already running).
    admitted: bool,
    /// The kubelet ended the pod (evicted, rejected, past its deadline): its containers
    /// are stopped and its status must say why.
    ended: Option<Termination>,
}

fn pod_key(p: &Pod) -> String {
    format!("{}_{}({})", p.name_any(), p.namespace().unwrap_or_default(), p.uid().unwrap_or_default())
}

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

fn now_str() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Records an event about `pod` (or one of its containers) as this node's kubelet.
pub fn pod_event(ctx: &NodeCtx, pod: &Pod, container: Option<&str>, warning: bool, reason: &str, note: String) {
    let mut r = kube::Resource::object_ref(pod, &());
    if let Some(c) = container {
        r.field_path = Some(format!("spec.containers{{{c}}}"));
    }
    let action: String = note.chars().take(128).collect();
    let ev = Event {
        type_: if warning { EventType::Warning } else { EventType::Normal },
        reason: reason.into(),
        note: Some(note),
        action,
        secondary: None,
    };
    emit(&ctx.recorder, ev, r);
}

impl Worker {
    fn event(&self, pod: &Pod, container: Option<&str>, warning: bool, reason: &str, note: String) {
        pod_event(&self.ctx, pod, container, warning, reason, note);
    }

    /// Whether the kubelet ends this pod now: chosen for eviction, past its
    /// activeDeadlineSeconds, or (a pod not yet started) refused by admission because
    /// the node is under pressure.
    fn must_end(&mut self, pod: &Pod, uid: &str, sandboxes: &[cri::PodSandbox]) -> Option<Termination> {
        if let Some(t) = &self.ended {
            return Some(t.clone());
        }
        if let Some(t) = self.ctx.evictions.lock().expect("evictions").remove(uid) {
            return Some(t);
        }
        if deadline_left(pod) == Some(Duration::ZERO) {
            let message = "Pod was active on the node longer than the specified deadline".to_string();
            self.event(pod, None, false, "DeadlineExceeded", message.clone());
            return Some(Termination {
                reason: "DeadlineExceeded".into(),
                message,
                grace: grace(pod),
                disruption: false,
            });
        }
        if !self.admitted {
            self.admitted = true;
            if sandboxes.is_empty() {
                let under = self.ctx.pressure.borrow().clone();
                if let Err(why) = super::eviction::admit(pod, &under) {
                    self.event(pod, None, true, "Evicted", why.clone());
                    let message = format!("Pod was rejected: {why}");
                    return Some(Termination { reason: "Evicted".into(), message, grace: 0, disruption: false });
                }
            }
        }
        None
    }

    /// Kills what runs of the pod (once) and reports it Failed with `t`'s reason. When
    /// the runtime cannot answer, the next pass tries again.
    async fn end(&mut self, pod: &Pod, sandboxes: &[cri::PodSandbox], t: Termination) {
        let mut obs = PodObservation::default();
        let again = |t: Termination| {
            self.ctx.evictions.lock().expect("evictions").insert(pod.uid().unwrap_or_default(), t);
        };
        if self.ended.is_none() {
            for s in sandboxes {
                let Ok(runs) = self.containers(&s.id).await else { return again(t) };
                let stops = runs.iter().filter(|r| r.state == CState::Running).map(|r| {
                    self.event(pod, Some(&r.name), false, "Killing", format!("Stopping container {}", r.name));
                    let req = cri::StopContainerRequest { container_id: r.id.clone(), timeout: t.grace };
                    let mut rt = self.ctx.cri.rt();
                    async move { rt.stop_container(req).await }
                });
                futures::future::join_all(stops.collect::<Vec<_>>()).await;
                let req = cri::StopPodSandboxRequest { pod_sandbox_id: s.id.clone() };
                if self.ctx.cri.rt().stop_pod_sandbox(req).await.is_err() {
                    return again(t);
                }
            }
            self.ended = Some(t.clone());
        }
        if let Some(s) = sandboxes.first() {
            obs.containers = self.containers(&s.id).await.unwrap_or_default();
        }
        obs.ended = Some(t);
        self.report(pod, &obs).await;
    }

    /// The pod's sandboxes, newest first. An error means the runtime could not
    /// answer (containerd restarting): the caller must not act on "none".
    async fn sandboxes(&self, uid: &str) -> Result<Vec<cri::PodSandbox>, tonic::Status> {
        pod_sandboxes(&self.ctx.cri, uid).await
    }

    /// The containers of a sandbox, newest run first; an error as for `sandboxes`.
    async fn containers(&self, sandbox_id: &str) -> Result<Vec<Observed>, tonic::Status> {
        let filter = cri::ContainerFilter { pod_sandbox_id: sandbox_id.into(), ..Default::default() };
        let list = self
            .ctx
            .cri
            .rt()
            .list_containers(cri::ListContainersRequest { filter: Some(filter) })
            .await?
            .into_inner()
            .containers;
        let mut out = Vec::new();
        for c in list {
            let st = match self
                .ctx
                .cri
                .rt()
                .container_status(cri::ContainerStatusRequest { container_id: c.id.clone(), verbose: false })
                .await
            {
                Ok(st) => st,
                // Removed since it was listed.
                Err(e) if e.code() == tonic::Code::NotFound => continue,
                Err(e) => return Err(e),
            };
            let Some(s) = st.into_inner().status else { continue };
            let md = s.metadata.clone().unwrap_or_default();
            let state = match cri::ContainerState::try_from(s.state) {
                Ok(cri::ContainerState::ContainerCreated) => CState::Created,
                Ok(cri::ContainerState::ContainerRunning) => CState::Running,
                Ok(cri::ContainerState::ContainerExited) => CState::Exited,
                _ => CState::Unknown,
            };
            out.push(Observed {
                id: s.id,
                name: md.name,
                attempt: md.attempt,
                state,
                created_at: s.created_at,
                started_at: s.started_at,
                finished_at: s.finished_at,
                exit_code: s.exit_code,
                reason: s.reason,
                message: s.message,
                image_ref: s.image_ref,
            });
        }
        out.sort_by_key(|c| std::cmp::Reverse((c.attempt, c.created_at)));
        Ok(out)
    }

    /// One pass; returns when to look again.
    async fn sync(&mut self, pod: &Pod) -> Duration {
        let uid = pod.uid().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
        if pod.metadata.deletion_timestamp.is_some() {
            self.terminate(pod, &uid).await;
            return Duration::from_secs(2);
        }
        let Ok(sandboxes) = self.sandboxes(&uid).await else { return RUNTIME_RETRY };
        if !matches!(phase.as_str(), "Succeeded" | "Failed")
            && let Some(t) = self.must_end(pod, &uid, &sandboxes)
        {
            self.end(pod, &sandboxes, t).await;
            return Duration::from_secs(10);
        }
        self.admitted = true;
        if matches!(phase.as_str(), "Succeeded" | "Failed") {
            // A finished pod keeps its containers (for logs) but not its sandbox.
            for s in sandboxes.iter().filter(|s| s.state == cri::PodSandboxState::SandboxReady as i32) {
                let _ = self
                    .ctx
                    .cri
                    .rt()
                    .stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: s.id.clone() })
                    .await;
            }
            return Duration::from_secs(60);
        }
        let host_network = spec.host_network == Some(true);
        if !host_network && !*self.ctx.network_ready.borrow() {
            // A pod already running (rk restarted) keeps the status it has until the
            // network is back; only a pod with no sandbox yet reports that it waits.
            if !sandboxes.iter().any(|s| s.state == cri::PodSandboxState::SandboxReady as i32) {
                self.report(pod, &PodObservation::default()).await;
            }
            return Duration::from_secs(1);
        }
        let mut obs = PodObservation::default();
        let ctx = self.ctx.clone();
        let vctx = super::volumes::VolumeCtx {
            client: &ctx.client,
            root: &ctx.pods_root,
            node: &ctx.node,
            host_ip: &ctx.host_ip,
        };
        // Volumes made while a new sandbox starts (they do not need its IP: a downwardAPI
        // volume cannot name status fields), so neither waits for the other.
        let mut early_volumes = None;
        let ready = sandboxes.iter().find(|s| s.state == cri::PodSandboxState::SandboxReady as i32).cloned();
        let sandbox_id = match ready {
            Some(s) => s.id,
            None => {
                let attempt = sandboxes.first().and_then(|s| s.metadata.as_ref()).map(|m| m.attempt + 1).unwrap_or(0);
                // A sandbox that died (node reboot, killed pause) takes its containers with it.
                let never = spec.restart_policy.as_deref() == Some("Never");
                if !sandboxes.is_empty() && never {
                    let Ok(old) = self.containers(&sandboxes[0].id).await else { return RUNTIME_RETRY };
                    if !old.is_empty() {
                        obs.containers = old;
                        self.report(pod, &obs).await;
                        return Duration::from_secs(60);
                    }
                }
                for s in &sandboxes {
                    let _ = self
                        .ctx
                        .cri
                        .rt()
                        .stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: s.id.clone() })
                        .await;
                }
                let cfg = self.sandbox_config(pod, attempt);
                if let Err(e) = std::fs::create_dir_all(&cfg.log_directory) {
                    tracing::warn!(error = %e, "creating the pod log directory failed");
                }
                let req = cri::RunPodSandboxRequest { config: Some(cfg), runtime_handler: String::new() };
                let mut rt = ctx.cri.rt();
                let (created, volumes) = tokio::join!(rt.run_pod_sandbox(req), super::volumes::setup(&vctx, pod));
                early_volumes = Some(volumes);
                match created {
                    Ok(r) => r.into_inner().pod_sandbox_id,
                    Err(e) => {
                        self.event(
                            pod,
                            None,
                            true,
                            "FailedCreatePodSandBox",
                            format!("Failed to create pod sandbox: {}", e.message()),
                        );
                        self.report(pod, &obs).await;
                        return Duration::from_secs(10);
                    }
                }
            }
        };
        obs.sandbox_ready = true;
        if let Ok(st) = self
            .ctx
            .cri
            .rt()
            .pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: sandbox_id.clone(), verbose: false })
            .await
        {
            obs.pod_ip = st.into_inner().status.and_then(|s| s.network).map(|n| n.ip).filter(|ip| !ip.is_empty());
        }
        let pod_ip = obs.pod_ip.clone().unwrap_or_else(|| self.ctx.host_ip.clone());
        // The pod as the containers see it: with its IP, for env and the downward API.
        let mut seen = pod.clone();
        {
            let st = seen.status.get_or_insert_with(Default::default);
            st.pod_ip = Some(pod_ip.clone());
            st.pod_ips = Some(vec![k8s_openapi::api::core::v1::PodIP { ip: pod_ip.clone() }]);
        }
        let volumes = match early_volumes {
            Some(v) => v,
            None => super::volumes::setup(&vctx, &seen).await,
        };
        let volumes = match volumes {
            Ok(v) => v,
            Err(e) => {
                self.event(pod, None, true, "FailedMount", format!("MountVolume.SetUp failed: {e}"));
                self.report(pod, &obs).await;
                return Duration::from_secs(10);
            }
        };
        let Ok(runs) = self.containers(&sandbox_id).await else { return RUNTIME_RETRY };
        obs.containers = runs;
        self.prune_old(&obs.containers).await;
        let mut next = RESYNC;

        // Init containers, in order: each must exit 0 before the next starts.
        let mut inits_done = true;
        for c in spec.init_containers.iter().flatten() {
            let (cur, _) = obs.runs(&c.name);
            match cur.map(|c| (c.state, c.exit_code)) {
                Some((CState::Exited, 0)) => continue,
                Some((CState::Running | CState::Created | CState::Unknown, _)) => {
                    inits_done = false;
                    break;
                }
                Some((CState::Exited, _)) if spec.restart_policy.as_deref() == Some("Never") => {
                    inits_done = false;
                    break;
                }
                _ => {
                    let cur = cur.cloned();
                    if let Some(wait) =
                        self.start_or_backoff(pod, &seen, c, cur.as_ref(), &sandbox_id, &volumes, &mut obs).await
                    {
                        next = next.min(wait);
                    }
                    inits_done = false;
                    break;
                }
            }
        }
        if inits_done {
            let policy = spec.restart_policy.clone().unwrap_or_else(|| "Always".into());
            for c in &spec.containers {
                let (cur, _) = obs.runs(&c.name);
                let cur = cur.cloned();
                let start = match cur.as_ref().map(|c| (c.state, c.exit_code)) {
                    None => true,
                    Some((CState::Exited, code)) => policy == "Always" || (policy == "OnFailure" && code != 0),
                    Some((CState::Created, _)) => {
                        // Created but never started (rk stopped in between): start it.
                        if let Some(id) = cur.as_ref().map(|c| c.id.clone()) {
                            let _ = self
                                .ctx
                                .cri
                                .rt()
                                .start_container(cri::StartContainerRequest { container_id: id })
                                .await;
                        }
                        false
                    }
                    _ => false,
                };
                if start
                    && let Some(wait) =
                        self.start_or_backoff(pod, &seen, c, cur.as_ref(), &sandbox_id, &volumes, &mut obs).await
                {
                    next = next.min(wait);
                }
            }
            let Ok(runs) = self.containers(&sandbox_id).await else { return RUNTIME_RETRY };
            obs.containers = runs;
            if let Some(wait) = self.probe_all(pod, &spec.containers, &mut obs, &pod_ip).await {
                next = next.min(wait);
            }
        } else {
            let Ok(runs) = self.containers(&sandbox_id).await else { return RUNTIME_RETRY };
            obs.containers = runs;
        }
        self.report(pod, &obs).await;
        if let Some(left) = deadline_left(pod) {
            next = next.min(left);
        }
        next.max(Duration::from_millis(100))
    }

    fn sandbox_config(&self, pod: &Pod, attempt: u32) -> cri::PodSandboxConfig {
        let spec = pod.spec.clone().unwrap_or_default();
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let uid = pod.uid().unwrap_or_default();
        let mut labels: HashMap<String, String> = pod.labels().clone().into_iter().collect();
        labels.insert("io.kubernetes.pod.name".into(), name.clone());
        labels.insert("io.kubernetes.pod.namespace".into(), ns.clone());
        labels.insert("io.kubernetes.pod.uid".into(), uid.clone());
        labels.insert(NODE_LABEL.into(), self.ctx.node.clone());
        let annotations: HashMap<String, String> = pod.annotations().clone().into_iter().collect();
        let host_network = spec.host_network == Some(true);
        let dns = match spec.dns_policy.as_deref().unwrap_or("ClusterFirst") {
            "Default" => self.ctx.resolv_conf.as_deref().map(host_dns),
            "ClusterFirst" if host_network => None,
            "None" => Some(cri::DnsConfig::default()),
            _ => Some(cri::DnsConfig {
                servers: vec![self.ctx.cluster_dns.clone()],
                searches: vec![
                    format!("{ns}.svc.{}", self.ctx.cluster_domain),
                    format!("svc.{}", self.ctx.cluster_domain),
                    self.ctx.cluster_domain.clone(),
                ],
                options: vec!["ndots:5".into()],
            }),
        };
        let dns = dns.map(|mut d| {
            if let Some(c) = &spec.dns_config {
                d.servers.extend(c.nameservers.clone().unwrap_or_default());
                d.searches.extend(c.searches.clone().unwrap_or_default());
                for o in c.options.iter().flatten() {
                    let opt = match &o.value {
                        Some(v) => format!("{}:{v}", o.name.clone().unwrap_or_default()),
                        None => o.name.clone().unwrap_or_default(),
                    };
                    d.options.retain(|x| x.split(':').next() != opt.split(':').next());
                    d.options.push(opt);
                }
            }
            d
        });
        let mut ports = Vec::new();
        for c in &spec.containers {
            for p in c.ports.iter().flatten() {
                if let Some(hp) = p.host_port.filter(|h| *h > 0) {
                    let proto = match p.protocol.as_deref() {
                        Some("UDP") => cri::Protocol::Udp,
                        Some("SCTP") => cri::Protocol::Sctp,
                        _ => cri::Protocol::Tcp,
                    };
                    ports.push(cri::PortMapping {
                        protocol: proto as i32,
                        container_port: p.container_port,
                        host_port: hp,
                        host_ip: p.host_ip.clone().unwrap_or_default(),
                    });
                }
            }
        }
        let ns_opts = namespace_options(&spec);
        let psc = spec.security_context.clone().unwrap_or_default();
        let hostname = spec.hostname.clone().unwrap_or_else(|| name.clone());
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.clone(),
                uid: uid.clone(),
                namespace: ns.clone(),
                attempt,
            }),
            hostname: if host_network { String::new() } else { hostname },
            log_directory: self.ctx.log_dir(&ns, &name, &uid).display().to_string(),
            dns_config: dns,
            port_mappings: ports,
            labels,
            annotations,
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: format!("{}/pod{uid}", self.ctx.cgroup_root),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(ns_opts),
                    run_as_user: psc.run_as_user.map(|v| cri::Int64Value { value: v }),
                    run_as_group: psc.run_as_group.map(|v| cri::Int64Value { value: v }),
                    supplemental_groups: psc.supplemental_groups.clone().unwrap_or_default(),
                    ..Default::default()
                }),
                sysctls: psc.sysctls.iter().flatten().map(|s| (s.name.clone(), s.value.clone())).collect(),
                ..Default::default()
            }),
            windows: None,
        }
    }

    /// Starts `c` (a new run), unless it is backing off; returns when to look again.
    #[allow(clippy::too_many_arguments)]
    async fn start_or_backoff(
        &mut self,
        pod: &Pod,
        seen: &Pod,
        c: &Container,
        cur: Option<&Observed>,
        sandbox_id: &str,
        volumes: &BTreeMap<String, PathBuf>,
        obs: &mut PodObservation,
    ) -> Option<Duration> {
        let key = pod_key(pod);
        if let Some(prev) = cur.filter(|p| p.state == CState::Exited) {
            // kubelet: the first restart is immediate; each later one waits a back-off
            // (10 s doubling to 5 min) counted from the last exit; a run of 10 min resets it.
            let ran = (prev.finished_at - prev.started_at) / 1_000_000_000;
            if ran >= 600 {
                self.backoff.remove(&c.name);
            }
            if let Some(&(delay, since)) = self.backoff.get(&c.name) {
                let waited = Duration::from_nanos((now_ns() - prev.finished_at).max(0) as u64);
                if since == prev.finished_at || waited < delay {
                    let left = delay.saturating_sub(waited);
                    if !left.is_zero() {
                        let msg =
                            format!("back-off {}s restarting failed container={} pod={key}", delay.as_secs(), c.name);
                        if obs.waiting.insert(c.name.clone(), ("CrashLoopBackOff".into(), msg.clone())).is_none()
                            && !self.last_waiting_was(&c.name, "CrashLoopBackOff")
                        {
                            self.event(
                                pod,
                                Some(&c.name),
                                true,
                                "BackOff",
                                format!("Back-off restarting failed container {} in pod {key}", c.name),
                            );
                        }
                        return Some(left.min(RESYNC));
                    }
                }
                self.backoff.insert(c.name.clone(), ((delay * 2).min(BACKOFF_MAX), prev.finished_at));
            } else {
                self.backoff.insert(c.name.clone(), (BACKOFF_START, prev.finished_at));
            }
        }
        let attempt = cur.map(|c| c.attempt + 1).unwrap_or(0);
        if let Err((reason, msg)) = self.ensure_image(pod, c).await {
            obs.waiting.insert(c.name.clone(), (reason, msg));
            return Some(Duration::from_secs(10));
        }
        let config = match self.container_config(seen, c, attempt, volumes).await {
            Ok(cfg) => cfg,
            Err(msg) => {
                if !self.last_waiting_was(&c.name, "CreateContainerConfigError") {
                    self.event(pod, Some(&c.name), true, "Failed", format!("Error: {msg}"));
                }
                obs.waiting.insert(c.name.clone(), ("CreateContainerConfigError".into(), msg));
                return Some(Duration::from_secs(10));
            }
        };
        let sandbox_config = self.sandbox_config(pod, 0);
        let created = self
            .ctx
            .cri
            .rt()
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: sandbox_id.into(),
                config: Some(config),
                sandbox_config: Some(sandbox_config),
            })
            .await;
        let id = match created {
            Ok(r) => r.into_inner().container_id,
            Err(e) => {
                let msg = e.message().to_string();
                self.event(pod, Some(&c.name), true, "Failed", format!("Error: {msg}"));
                obs.waiting.insert(c.name.clone(), ("CreateContainerError".into(), msg));
                return Some(Duration::from_secs(10));
            }
        };
        self.event(pod, Some(&c.name), false, "Created", format!("Created container {}", c.name));
        if let Err(e) = self.ctx.cri.rt().start_container(cri::StartContainerRequest { container_id: id.clone() }).await
        {
            let msg = e.message().to_string();
            self.event(pod, Some(&c.name), true, "Failed", format!("Error: {msg}"));
            return Some(Duration::from_secs(1));
        }
        self.event(pod, Some(&c.name), false, "Started", format!("Started container {}", c.name));
        if let Some(h) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref())
            && let Some(cmd) = h.exec.as_ref().and_then(|e| e.command.clone())
        {
            let r =
                self.ctx.cri.rt().exec_sync(cri::ExecSyncRequest { container_id: id.clone(), cmd, timeout: 30 }).await;
            let failed = match r {
                Ok(r) => r.into_inner().exit_code != 0,
                Err(_) => true,
            };
            if failed {
                self.event(
                    pod,
                    Some(&c.name),
                    true,
                    "FailedPostStartHook",
                    format!("PostStartHook failed for container {}", c.name),
                );
                let _ = self
                    .ctx
                    .cri
                    .rt()
                    .stop_container(cri::StopContainerRequest { container_id: id.clone(), timeout: grace(pod) })
                    .await;
            }
        }
        None
    }

    fn last_waiting_was(&self, container: &str, reason: &str) -> bool {
        let Some(last) = &self.last_status else { return false };
        last["containerStatuses"]
            .as_array()
            .into_iter()
            .chain(last["initContainerStatuses"].as_array())
            .flatten()
            .any(|s| s["name"] == container && s["state"]["waiting"]["reason"] == reason)
    }

    /// Makes sure `c`'s image is present, pulling per imagePullPolicy.
    async fn ensure_image(&mut self, pod: &Pod, c: &Container) -> Result<(), (String, String)> {
        let image = c.image.clone().unwrap_or_default();
        if image.is_empty() {
            return Err(("InvalidImageName".into(), "the container has no image".into()));
        }
        let spec = cri::ImageSpec { image: image.clone(), ..Default::default() };
        let present = self
            .ctx
            .cri
            .img()
            .image_status(cri::ImageStatusRequest { image: Some(spec.clone()), verbose: false })
            .await
            .ok()
            .and_then(|r| r.into_inner().image)
            .is_some();
        let tag_latest = {
            let last = image.rsplit('/').next().unwrap_or(&image);
            !image.contains('@') && (!last.contains(':') || last.ends_with(":latest"))
        };
        let policy = c
            .image_pull_policy
            .clone()
            .unwrap_or_else(|| if tag_latest { "Always".into() } else { "IfNotPresent".into() });
        let pull = match policy.as_str() {
            "Never" if !present => {
                let msg = format!("Container image \"{image}\" is not present with pull policy of Never");
                if !self.last_waiting_was(&c.name, "ErrImageNeverPull") {
                    self.event(pod, Some(&c.name), true, "ErrImageNeverPull", msg.clone());
                }
                return Err(("ErrImageNeverPull".into(), msg));
            }
            "Always" => true,
            _ => !present,
        };
        if !pull {
            if self.pulled.insert(image.clone(), true).is_none() {
                self.event(
                    pod,
                    Some(&c.name),
                    false,
                    "Pulled",
                    format!("Container image \"{image}\" already present on machine"),
                );
            }
            return Ok(());
        }
        let key = format!("pull:{image}");
        if let Some(&(delay, since)) = self.backoff.get(&key)
            && now_ns() - since < delay.as_nanos() as i64
        {
            return Err(("ImagePullBackOff".into(), format!("Back-off pulling image \"{image}\"")));
        }
        // The pod's pull secrets that cover the image, tried in turn (none: anonymous).
        let (creds, missing) = super::credentials::for_pod(&self.ctx.client, pod).await;
        if !missing.is_empty() {
            let msg = format!(
                "Unable to retrieve some image pull secrets ({}); attempting to pull the image may not succeed.",
                missing.join(", ")
            );
            self.event(pod, None, true, "FailedToRetrieveImagePullSecret", msg);
        }
        let auths = super::credentials::lookup(&creds, &image);
        let attempts: Vec<Option<cri::AuthConfig>> =
            if auths.is_empty() { vec![None] } else { auths.into_iter().map(Some).collect() };
        self.event(pod, Some(&c.name), false, "Pulling", format!("Pulling image \"{image}\""));
        let t0 = std::time::Instant::now();
        let mut result = Err(tonic::Status::unknown("no pull attempted"));
        for auth in attempts {
            let req = cri::PullImageRequest { image: Some(spec.clone()), auth, sandbox_config: None };
            result = self.ctx.cri.img().pull_image(req).await;
            if result.is_ok() {
                break;
            }
        }
        match result {
            Ok(_) => {
                self.backoff.remove(&key);
                self.event(
                    pod,
                    Some(&c.name),
                    false,
                    "Pulled",
                    format!("Successfully pulled image \"{image}\" in {:.3}s", t0.elapsed().as_secs_f64()),
                );
                Ok(())
            }
            Err(e) => {
                let delay = self.backoff.get(&key).map(|(d, _)| (*d * 2).min(BACKOFF_MAX)).unwrap_or(BACKOFF_START);
                self.backoff.insert(key, (delay, now_ns()));
                let msg = format!("Failed to pull image \"{image}\": {}", e.message());
                self.event(pod, Some(&c.name), true, "Failed", msg.clone());
                Err(("ErrImagePull".into(), msg))
            }
        }
    }

    async fn container_config(
        &self,
        pod: &Pod,
        c: &Container,
        attempt: u32,
        volumes: &BTreeMap<String, PathBuf>,
    ) -> Result<cri::ContainerConfig, String> {
        let env = super::env::container_env(
            &self.ctx.client,
            pod,
            c,
            &self.ctx.node,
            &self.ctx.host_ip,
            &self.ctx.node_alloc,
        )
        .await
        .map_err(|e| e.0)?;
        let vars: BTreeMap<String, String> = env.iter().cloned().collect();
        let spec = pod.spec.clone().unwrap_or_default();
        let mut mounts = Vec::new();
        for m in c.volume_mounts.iter().flatten() {
            let Some(host) = volumes.get(&m.name) else {
                return Err(format!("cannot find volume \"{}\" to mount into container \"{}\"", m.name, c.name));
            };
            let sub = m
                .sub_path
                .clone()
                .filter(|s| !s.is_empty())
                .or_else(|| m.sub_path_expr.as_ref().map(|e| super::env::expand(e, &vars)));
            let host = match sub {
                Some(s) if s.starts_with('/') || s.split('/').any(|p| p == "..") => {
                    return Err(format!("invalid subPath {s:?} of volume \"{}\"", m.name));
                }
                Some(s) => {
                    let p = host.join(&s);
                    if !p.exists() {
                        let _ = std::fs::create_dir_all(&p);
                    }
                    p
                }
                None => host.clone(),
            };
            mounts.push(cri::Mount {
                container_path: m.mount_path.clone(),
                host_path: host.display().to_string(),
                readonly: m.read_only == Some(true),
                ..Default::default()
            });
        }
        // The termination message file, read back when the container exits.
        let term_dir = self.ctx.pods_root.join(pod.uid().unwrap_or_default()).join("containers").join(&c.name);
        let _ = std::fs::create_dir_all(&term_dir);
        let term_file = term_dir.join(format!("termination-{attempt}"));
        let _ = std::fs::write(&term_file, b"");
        let term_path = c.termination_message_path.clone().unwrap_or_else(|| "/dev/termination-log".into());
        if !mounts.iter().any(|m| m.container_path == term_path) {
            mounts.push(cri::Mount {
                container_path: term_path,
                host_path: term_file.display().to_string(),
                ..Default::default()
            });
        }
        let sc = c.security_context.clone().unwrap_or_default();
        let psc = spec.security_context.clone().unwrap_or_default();
        let run_as_user = sc.run_as_user.or(psc.run_as_user);
        let run_as_group = sc.run_as_group.or(psc.run_as_group);
        let non_root = sc.run_as_non_root.or(psc.run_as_non_root) == Some(true);
        let key = format!("pod: \"{}\", container: {}", pod_key(pod), c.name);
        if non_root {
            match run_as_user {
                Some(0) => return Err(format!("container's runAsUser breaks non-root policy ({key})")),
                Some(_) => {}
                None => {
                    let img = self
                        .ctx
                        .cri
                        .img()
                        .image_status(cri::ImageStatusRequest {
                            image: Some(cri::ImageSpec {
                                image: c.image.clone().unwrap_or_default(),
                                ..Default::default()
                            }),
                            verbose: false,
                        })
                        .await
                        .ok()
                        .and_then(|r| r.into_inner().image);
                    let uid = img.as_ref().and_then(|i| i.uid.as_ref()).map(|u| u.value);
                    let uname = img.as_ref().map(|i| i.username.clone()).unwrap_or_default();
                    if uid == Some(0) || (uid.is_none() && (uname.is_empty() || uname == "root")) {
                        return Err(format!("container has runAsNonRoot and image will run as root ({key})"));
                    }
                }
            }
        }
        let privileged = sc.privileged == Some(true);
        if privileged && sc.allow_privilege_escalation == Some(false) {
            return Err("cannot set allowPrivilegeEscalation to false and privileged to true".into());
        }
        let caps = sc.capabilities.clone().unwrap_or_default();
        let ns_opts = namespace_options(&spec);
        let (masked, readonly) = if privileged {
            (vec![], vec![])
        } else {
            (
                [
                    "/proc/asound",
                    "/proc/acpi",
                    "/proc/kcore",
                    "/proc/keys",
                    "/proc/latency_stats",
                    "/proc/timer_list",
                    "/proc/timer_stats",
                    "/proc/sched_debug",
                    "/proc/scsi",
                    "/sys/firmware",
                ]
                .map(String::from)
                .to_vec(),
                ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"].map(String::from).to_vec(),
            )
        };
        let resources = linux_resources(pod, c);
        let mut labels = HashMap::from([
            ("io.kubernetes.container.name".to_string(), c.name.clone()),
            ("io.kubernetes.pod.name".to_string(), pod.name_any()),
            ("io.kubernetes.pod.namespace".to_string(), pod.namespace().unwrap_or_default()),
            ("io.kubernetes.pod.uid".to_string(), pod.uid().unwrap_or_default()),
        ]);
        labels.retain(|_, v| !v.is_empty());
        let annotations = HashMap::from([
            ("io.kubernetes.container.restartCount".to_string(), attempt.to_string()),
            ("io.kubernetes.container.terminationMessagePath".to_string(), term_file.display().to_string()),
        ]);
        Ok(cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata { name: c.name.clone(), attempt }),
            image: Some(cri::ImageSpec { image: c.image.clone().unwrap_or_default(), ..Default::default() }),
            command: c.command.iter().flatten().map(|s| super::env::expand(s, &vars)).collect(),
            args: c.args.iter().flatten().map(|s| super::env::expand(s, &vars)).collect(),
            working_dir: c.working_dir.clone().unwrap_or_default(),
            envs: env.into_iter().map(|(key, value)| cri::KeyValue { key, value }).collect(),
            mounts,
            labels,
            annotations,
            log_path: format!("{}/{attempt}.log", c.name),
            stdin: c.stdin == Some(true),
            stdin_once: c.stdin_once == Some(true),
            tty: c.tty == Some(true),
            linux: Some(cri::LinuxContainerConfig {
                resources: Some(resources),
                security_context: Some(cri::LinuxContainerSecurityContext {
                    capabilities: Some(cri::Capability {
                        add_capabilities: caps.add.clone().unwrap_or_default(),
                        drop_capabilities: caps.drop.clone().unwrap_or_default(),
                        ..Default::default()
                    }),
                    privileged,
                    namespace_options: Some(ns_opts),
                    run_as_user: run_as_user.map(|v| cri::Int64Value { value: v }),
                    run_as_group: run_as_group.map(|v| cri::Int64Value { value: v }),
                    readonly_rootfs: sc.read_only_root_filesystem == Some(true),
                    supplemental_groups: psc.supplemental_groups.clone().unwrap_or_default(),
                    no_new_privs: sc.allow_privilege_escalation == Some(false),
                    masked_paths: masked,
                    readonly_paths: readonly,
                    ..Default::default()
                }),
            }),
            ..Default::default()
        })
    }

    /// Runs the probes that are due; returns when the next one is.
    async fn probe_all(
        &mut self,
        pod: &Pod,
        containers: &[Container],
        obs: &mut PodObservation,
        pod_ip: &str,
    ) -> Option<Duration> {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let mut live_ids = Vec::new();
        for c in containers {
            let (cur, _) = obs.runs(&c.name);
            let Some(cur) = cur.filter(|r| r.state == CState::Running).cloned() else { continue };
            live_ids.push(cur.id.clone());
            let started_at = Instant::now() - Duration::from_nanos((now_ns() - cur.started_at).max(0) as u64);
            let st = self.probes.entry(cur.id.clone()).or_insert_with(|| ProbeState {
                started: c.startup_probe.is_none(),
                ready: c.readiness_probe.is_none(),
                ..Default::default()
            });
            let due = |p: &Probe, last: Option<Instant>| {
                last.unwrap_or(started_at + Duration::from_secs(p.initial_delay_seconds.unwrap_or(0).max(0) as u64))
            };
            let period = |p: &Probe| Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64);
            let mut kill: Option<String> = None;
            if !st.started
                && let Some(p) = &c.startup_probe
            {
                let at = due(p, st.next_start);
                if at <= now {
                    let r = run_probe(&self.ctx.cri, &cur.id, p, c, pod_ip).await;
                    st.next_start = Some(now + period(p));
                    match r {
                        Ok(()) => st.started = true,
                        Err(msg) => {
                            st.start_fails += 1;
                            let ev = format!("Startup probe failed: {msg}");
                            emit(&self.ctx.recorder, warn_ev("Unhealthy", &ev), container_ref(pod, &c.name));
                            if st.start_fails >= p.failure_threshold.unwrap_or(3) {
                                kill = Some(format!("Container {} failed startup probe, will be restarted", c.name));
                            }
                        }
                    }
                }
                next = Some(next.map_or(st.next_start.unwrap_or(at), |n| n.min(st.next_start.unwrap_or(at))));
            }
            if st.started && kill.is_none() {
                if let Some(p) = &c.liveness_probe {
                    let at = due(p, st.next_live);
                    if at <= now {
                        let r = run_probe(&self.ctx.cri, &cur.id, p, c, pod_ip).await;
                        st.next_live = Some(now + period(p));
                        match r {
                            Ok(()) => st.live_fails = 0,
                            Err(msg) => {
                                st.live_fails += 1;
                                let ev = format!("Liveness probe failed: {msg}");
                                emit(&self.ctx.recorder, warn_ev("Unhealthy", &ev), container_ref(pod, &c.name));
                                if st.live_fails >= p.failure_threshold.unwrap_or(3) {
                                    kill =
                                        Some(format!("Container {} failed liveness probe, will be restarted", c.name));
                                }
                            }
                        }
                    }
                    let n = st.next_live.unwrap_or(at);
                    next = Some(next.map_or(n, |x| x.min(n)));
                }
                if let Some(p) = &c.readiness_probe {
                    let at = due(p, st.next_ready);
                    if at <= now {
                        let r = run_probe(&self.ctx.cri, &cur.id, p, c, pod_ip).await;
                        st.next_ready = Some(now + period(p));
                        match r {
                            Ok(()) => {
                                st.ready_fails = 0;
                                st.ready_succ += 1;
                                if st.ready_succ >= p.success_threshold.unwrap_or(1) {
                                    st.ready = true;
                                }
                            }
                            Err(msg) => {
                                st.ready_succ = 0;
                                st.ready_fails += 1;
                                let ev = format!("Readiness probe failed: {msg}");
                                emit(&self.ctx.recorder, warn_ev("Unhealthy", &ev), container_ref(pod, &c.name));
                                if st.ready_fails >= p.failure_threshold.unwrap_or(3) {
                                    st.ready = false;
                                }
                            }
                        }
                    }
                    let n = st.next_ready.unwrap_or(at);
                    next = Some(next.map_or(n, |x| x.min(n)));
                }
            }
            obs.started.insert(c.name.clone(), st.started);
            obs.ready.insert(c.name.clone(), st.ready && st.started);
            if let Some(msg) = kill {
                self.event(pod, Some(&c.name), false, "Killing", msg);
                let _ = self
                    .ctx
                    .cri
                    .rt()
                    .stop_container(cri::StopContainerRequest { container_id: cur.id.clone(), timeout: grace(pod) })
                    .await;
                obs.ready.insert(c.name.clone(), false);
            }
        }
        self.probes.retain(|id, _| live_ids.contains(id));
        next.map(|n| n.saturating_duration_since(Instant::now()))
    }

    /// Keeps the newest two runs of each container (the current one and the one
    /// `kubectl logs --previous` shows).
    async fn prune_old(&self, runs: &[Observed]) {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for r in runs {
            let n = seen.entry(r.name.as_str()).or_default();
            *n += 1;
            if *n > 2 && r.state == CState::Exited {
                let _ = self
                    .ctx
                    .cri
                    .rt()
                    .remove_container(cri::RemoveContainerRequest { container_id: r.id.clone() })
                    .await;
            }
        }
    }

    /// Patches the pod's status if it changed.
    async fn report(&mut self, pod: &Pod, obs: &PodObservation) {
        let mut obs = obs.clone();
        // Termination messages written by the containers.
        for c in obs.containers.iter_mut().filter(|c| c.state == CState::Exited && c.message.is_empty()) {
            let f = self
                .ctx
                .pods_root
                .join(pod.uid().unwrap_or_default())
                .join("containers")
                .join(&c.name)
                .join(format!("termination-{}", c.attempt));
            if let Ok(m) = std::fs::read_to_string(f) {
                c.message = m.chars().take(4096).collect();
            }
        }
        let mut status = super::status::pod_status(pod, &obs, &self.ctx.host_ip, &now_str());
        // Conditions other components own (DisruptionTarget, readiness gates) are kept.
        if let Some(old) = pod.status.as_ref().and_then(|s| s.conditions.as_ref()) {
            let mine = ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"];
            let arr = status["conditions"].as_array_mut().expect("conditions is a list");
            for c in old.iter().filter(|c| !mine.contains(&c.type_.as_str())) {
                if !arr.iter().any(|n| n["type"] == c.type_.as_str()) {
                    arr.push(serde_json::to_value(c).unwrap_or(Value::Null));
                }
            }
        }
        let current = pod.status.as_ref().and_then(|s| serde_json::to_value(s).ok()).unwrap_or(Value::Null);
        let unchanged = status.as_object().is_some_and(|m| m.iter().all(|(k, v)| current.get(k) == Some(v)));
        let tagged = status.clone();
        if unchanged {
            self.last_status = Some(tagged);
            return;
        }
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &pod.namespace().unwrap_or_default());
        let patch = json!({"status": status});
        match api.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => self.last_status = Some(tagged),
            Err(e) => {
                self.last_status = Some(tagged);
                tracing::debug!(pod = %pod.name_any(), error = %e, "reporting pod status failed");
            }
        }
    }

    /// Graceful deletion: preStop hooks, SIGTERM, SIGKILL after the grace period, then
    /// the final status and the removal of the object (kubelet's `DeleteOptions{grace 0}`).
    async fn terminate(&mut self, pod: &Pod, uid: &str) {
        let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or_else(|| grace(pod));
        let Ok(sandboxes) = self.sandboxes(uid).await else { return };
        let mut obs = PodObservation::default();
        for s in &sandboxes {
            let Ok(runs) = self.containers(&s.id).await else { return };
            let running: Vec<Observed> = runs.iter().filter(|r| r.state == CState::Running).cloned().collect();
            let spec = pod.spec.clone().unwrap_or_default();
            let stops = running.iter().map(|r| {
                let cri = self.ctx.cri.clone();
                let pre = spec
                    .containers
                    .iter()
                    .find(|c| c.name == r.name)
                    .and_then(|c| c.lifecycle.as_ref()?.pre_stop.as_ref()?.exec.as_ref()?.command.clone());
                let id = r.id.clone();
                async move {
                    let t0 = std::time::Instant::now();
                    if let Some(cmd) = pre {
                        let _ = tokio::time::timeout(
                            Duration::from_secs(grace.max(1) as u64),
                            cri.rt().exec_sync(cri::ExecSyncRequest {
                                container_id: id.clone(),
                                cmd,
                                timeout: grace.max(1),
                            }),
                        )
                        .await;
                    }
                    let left = (grace - t0.elapsed().as_secs() as i64).max(0);
                    let _ =
                        cri.rt().stop_container(cri::StopContainerRequest { container_id: id, timeout: left }).await;
                }
            });
            for r in &running {
                self.event(pod, Some(&r.name), false, "Killing", format!("Stopping container {}", r.name));
            }
            futures::future::join_all(stops).await;
            let _ =
                self.ctx.cri.rt().stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: s.id.clone() }).await;
            if obs.containers.is_empty() {
                let Ok(runs) = self.containers(&s.id).await else { return };
                obs.containers = runs;
            }
        }
        self.report(pod, &obs).await;
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &pod.namespace().unwrap_or_default());
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions { uid: Some(uid.to_string()), resource_version: None }),
            ..Default::default()
        };
        match api.delete(&pod.name_any(), &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => tracing::warn!(pod = %pod.name_any(), error = %e, "deleting a terminated pod failed"),
        }
    }
}

/// The sandboxes of the pod with `uid`, newest first.
async fn pod_sandboxes(cri_: &Cri, uid: &str) -> Result<Vec<cri::PodSandbox>, tonic::Status> {
    let filter = cri::PodSandboxFilter {
        label_selector: HashMap::from([("io.kubernetes.pod.uid".to_string(), uid.to_string())]),
        ..Default::default()
    };
    let mut list =
        cri_.rt().list_pod_sandbox(cri::ListPodSandboxRequest { filter: Some(filter) }).await?.into_inner().items;
    list.sort_by_key(|s| std::cmp::Reverse(s.created_at));
    Ok(list)
}

/// Stops and removes a pod's sandboxes (and so its containers), volumes and logs.
pub async fn remove_pod(ctx: &NodeCtx, uid: &str) {
    let list = pod_sandboxes(&ctx.cri, uid).await.unwrap_or_default();
    for s in list {
        let _ = ctx.cri.rt().stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: s.id.clone() }).await;
        if let Err(e) =
            ctx.cri.rt().remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: s.id.clone() }).await
        {
            tracing::warn!(pod = uid, error = %e, "removing a sandbox failed");
        }
        if let Some(md) = s.metadata {
            let _ = std::fs::remove_dir_all(ctx.log_dir(&md.namespace, &md.name, &md.uid));
        }
    }
    super::volumes::teardown(&ctx.pods_root, uid);
}

/// The namespaces a pod's sandbox and containers share with the node or each other.
fn namespace_options(spec: &k8s_openapi::api::core::v1::PodSpec) -> cri::NamespaceOption {
    let node_or = |on: Option<bool>, otherwise: cri::NamespaceMode| {
        if on == Some(true) { cri::NamespaceMode::Node } else { otherwise }
    };
    let pid = if spec.share_process_namespace == Some(true) {
        cri::NamespaceMode::Pod
    } else {
        cri::NamespaceMode::Container
    };
    cri::NamespaceOption {
        network: node_or(spec.host_network, cri::NamespaceMode::Pod) as i32,
        pid: node_or(spec.host_pid, pid) as i32,
        ipc: node_or(spec.host_ipc, cri::NamespaceMode::Pod) as i32,
        ..Default::default()
    }
}

/// How long the pod may still run under its activeDeadlineSeconds (counted from its
/// startTime, as the kubelet counts), if it has one.
fn deadline_left(pod: &Pod) -> Option<Duration> {
    let secs = pod.spec.as_ref()?.active_deadline_seconds?;
    let start_ms = pod.status.as_ref()?.start_time.as_ref()?.0.as_millisecond();
    let left_ms = start_ms.saturating_add(secs.saturating_mul(1000)) - chrono::Utc::now().timestamp_millis();
    Some(Duration::from_millis(left_ms.max(0) as u64))
}

fn grace(pod: &Pod) -> i64 {
    pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(30)
}

/// Records an event without holding up the pod (the kubelet's recorder is
/// asynchronous too); failures are logged.
fn emit(recorder: &Recorder, ev: Event, r: k8s_openapi::api::core::v1::ObjectReference) {
    let recorder = recorder.clone();
    tokio::spawn(async move {
        if let Err(e) = recorder.publish(&ev, &r).await {
            tracing::debug!(error = %e, reason = %ev.reason, "recording an event failed");
        }
    });
}

fn warn_ev(reason: &str, note: &str) -> Event {
    Event {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(note.into()),
        action: note.chars().take(128).collect(),
        secondary: None,
    }
}

fn container_ref(pod: &Pod, c: &str) -> k8s_openapi::api::core::v1::ObjectReference {
    let mut r = kube::Resource::object_ref(pod, &());
    r.field_path = Some(format!("spec.containers{{{c}}}"));
    r
}

/// CPU shares, quota and memory limit from the container's requests and limits
/// (kubelet `generateLinuxContainerResources`), and the QoS oom_score_adj.
fn linux_resources(pod: &Pod, c: &Container) -> cri::LinuxContainerResources {
    let q = |m: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>, k: &str| {
        m.and_then(|m| m.get(k)).and_then(|q| crate::server::scheduler::parse_quantity(&q.0))
    };
    let r = c.resources.as_ref();
    let lim = r.and_then(|r| r.limits.as_ref());
    let req = r.and_then(|r| r.requests.as_ref());
    let cpu_req = q(req, "cpu").or(q(lim, "cpu"));
    let cpu_lim = q(lim, "cpu");
    let mem_lim = q(lim, "memory");
    let mut out = cri::LinuxContainerResources {
        cpu_shares: cpu_req.map(|c| ((c * 1024.0).round() as i64).max(2)).unwrap_or(2),
        ..Default::default()
    };
    if let Some(l) = cpu_lim {
        out.cpu_period = 100_000;
        out.cpu_quota = ((l * 100_000.0).round() as i64).max(1000);
    }
    if let Some(m) = mem_lim {
        out.memory_limit_in_bytes = m as i64;
    }
    out.oom_score_adj = match super::status::qos_class(pod) {
        "Guaranteed" => -997,
        "BestEffort" => 1000,
        _ => {
            // Burstable: 1000 - 1000 * request / capacity, within [3, 999].
            let mem_req = q(req, "memory").unwrap_or(0.0);
            let cap = super::node::memory_capacity().max(1) as f64;
            (1000 - (1000.0 * mem_req / cap) as i64).clamp(3, 999)
        }
    };
    out
}

/// Runs one probe; `Err` carries the failure as the kubelet words it.
async fn run_probe(cri_: &Cri, id: &str, p: &Probe, c: &Container, pod_ip: &str) -> Result<(), String> {
    let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1) as u64);
    let port_of = |port: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString| -> Result<u16, String> {
        match port {
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => Ok(*n as u16),
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => c
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))
                .map(|p| p.container_port as u16)
                .ok_or_else(|| format!("port {name:?} not found")),
        }
    };
    if let Some(e) = &p.exec {
        let cmd = e.command.clone().unwrap_or_default();
        let r = cri_
            .rt()
            .exec_sync(cri::ExecSyncRequest { container_id: id.into(), cmd, timeout: timeout.as_secs() as i64 })
            .await
            .map_err(|e| e.message().to_string())?
            .into_inner();
        if r.exit_code == 0 {
            return Ok(());
        }
        let out = String::from_utf8_lossy(&[r.stdout, r.stderr].concat()).trim().to_string();
        return Err(if out.is_empty() { format!("command exited with code {}", r.exit_code) } else { out });
    }
    if let Some(h) = &p.http_get {
        let port = port_of(&h.port)?;
        let host = h.host.clone().unwrap_or_else(|| pod_ip.to_string());
        let path = h.path.clone().unwrap_or_else(|| "/".into());
        let scheme = h.scheme.clone().unwrap_or_else(|| "HTTP".into());
        if scheme == "HTTPS" {
            // HTTPS probes skip verification in Kubernetes; a TCP connect is the closest
            // rk does without a TLS client that accepts any certificate.
            return tcp_probe(&host, port, timeout).await;
        }
        let url = format!("http://{host}:{port}{path}");
        let fut = async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| format!("Get \"{url}\": {e}"))?;
            let mut req = format!(
                "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n"
            );
            for hd in h.http_headers.iter().flatten() {
                req.push_str(&format!("{}: {}\r\n", hd.name, hd.value));
            }
            req.push_str("\r\n");
            s.write_all(req.as_bytes()).await.map_err(|e| format!("Get \"{url}\": {e}"))?;
            let mut buf = vec![0u8; 1024];
            let n = s.read(&mut buf).await.map_err(|e| format!("Get \"{url}\": {e}"))?;
            let line = String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or("").to_string();
            let code: u16 = line
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("Get \"{url}\": malformed HTTP response"))?;
            if (200..400).contains(&code) { Ok(()) } else { Err(format!("HTTP probe failed with statuscode: {code}")) }
        };
        return tokio::time::timeout(timeout, fut).await.unwrap_or_else(|_| {
            Err(format!("Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"))
        });
    }
    if let Some(t) = &p.tcp_socket {
        let port = port_of(&t.port)?;
        let host = t.host.clone().unwrap_or_else(|| pod_ip.to_string());
        return tcp_probe(&host, port, timeout).await;
    }
    if let Some(g) = &p.grpc {
        // A gRPC health check needs a connection to the port; the serving check itself
        // is done with the standard health protocol over tonic.
        return grpc_probe(pod_ip, g.port as u16, g.service.clone().unwrap_or_default(), timeout).await;
    }
    Ok(())
}

async fn tcp_probe(host: &str, port: u16, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("dial tcp {host}:{port}: {e}")),
        Err(_) => Err(format!("dial tcp {host}:{port}: i/o timeout")),
    }
}

async fn grpc_probe(host: &str, port: u16, service: String, timeout: Duration) -> Result<(), String> {
    // grpc.health.v1.Health/Check, encoded by hand: HealthCheckRequest{service=1}.
    let fut = async {
        let ep = tonic::transport::Endpoint::from_shared(format!("http://{host}:{port}")).map_err(|e| e.to_string())?;
        let ch = ep
            .connect()
            .await
            .map_err(|e| format!("failed to connect service \"{host}:{port}\" within {}s: {e}", timeout.as_secs()))?;
        let mut grpc = tonic::client::Grpc::new(ch);
        grpc.ready().await.map_err(|e| e.to_string())?;
        let path = http::uri::PathAndQuery::from_static("/grpc.health.v1.Health/Check");
        let codec = tonic_prost::ProstCodec::<HealthCheckRequest, HealthCheckResponse>::default();
        let r = grpc
            .unary(tonic::Request::new(HealthCheckRequest { service }), path, codec)
            .await
            .map_err(|e| e.message().to_string())?;
        if r.into_inner().status == 1 {
            Ok(())
        } else {
            Err("service unhealthy (responded with \"NOT_SERVING\")".to_string())
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| Err(format!("timeout: health rpc did not complete within {}s", timeout.as_secs())))
}

#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

/// A resolv.conf as CRI's DNS config (`dnsPolicy: Default` with `--resolv-conf`).
fn host_dns(path: &std::path::Path) -> cri::DnsConfig {
    let r = crate::agent::net::dns::ResolvConf::parse(&std::fs::read_to_string(path).unwrap_or_default());
    cri::DnsConfig { servers: r.nameservers, searches: r.search, options: r.options }
}
