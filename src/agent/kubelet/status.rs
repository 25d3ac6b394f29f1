//! Pod status as a pure function of what the runtime reports (plus the kubelet's own
//! waiting reasons and probe results), computed as the kubelet does
//! (`kubelet_pods.go`: `getPhase`, `convertToAPIContainerStatuses`, pod conditions).

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{Value, json};

/// A container's runtime state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CState {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Exited.
    Exited,
    /// The runtime does not know.
    Unknown,
}

/// One container as the runtime reports it.
#[derive(Clone, Debug)]
pub struct Observed {
    /// The runtime's container ID.
    pub id: String,
    /// The container's name in the pod spec.
    pub name: String,
    /// Which restart this is (0 for the first run).
    pub attempt: u32,
    /// Its state.
    pub state: CState,
    /// Creation time, ns since the epoch.
    pub created_at: i64,
    /// Start time, ns since the epoch (0 if never started).
    pub started_at: i64,
    /// Exit time, ns since the epoch.
    pub finished_at: i64,
    /// Exit code.
    pub exit_code: i32,
    /// The runtime's reason (`OOMKilled`, `Completed`, `Error`).
    pub reason: String,
    /// The runtime's message (or the termination message).
    pub message: String,
    /// The image's digest reference.
    pub image_ref: String,
}

/// What the pod worker observed of one pod.
#[derive(Clone, Debug, Default)]
pub struct PodObservation {
    /// The sandbox exists and is ready.
    pub sandbox_ready: bool,
    /// The pod's IP (from the sandbox's network status).
    pub pod_ip: Option<String>,
    /// Every container of the current sandbox, newest attempt first per name.
    pub containers: Vec<Observed>,
    /// Why a container is waiting, by name: (reason, message).
    pub waiting: HashMap<String, (String, String)>,
    /// Readiness probe results by container name; no entry: no probe (ready once running).
    pub ready: HashMap<String, bool>,
    /// Startup probe results by container name; no entry: no probe (started once running).
    pub started: HashMap<String, bool>,
    /// The kubelet ended the pod (evicted, rejected, past its deadline): it is Failed.
    pub ended: Option<super::pod_worker::Termination>,
}

impl PodObservation {
    /// The newest run of container `name`, and the one before it.
    pub fn runs(&self, name: &str) -> (Option<&Observed>, Option<&Observed>) {
        let mut it = self.containers.iter().filter(|c| c.name == name);
        (it.next(), it.next())
    }
}

fn time(ns: i64) -> Value {
    if ns <= 0 {
        return Value::Null;
    }
    let t = chrono::DateTime::from_timestamp(ns / 1_000_000_000, (ns % 1_000_000_000) as u32).unwrap_or_default();
    json!(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

fn terminated(o: &Observed) -> Value {
    let reason = if !o.reason.is_empty() {
        o.reason.clone()
    } else if o.exit_code == 0 {
        "Completed".into()
    } else {
        "Error".into()
    };
    let mut t = json!({"exitCode": o.exit_code, "reason": reason, "startedAt": time(o.started_at),
                       "finishedAt": time(o.finished_at), "containerID": format!("containerd://{}", o.id)});
    if !o.message.is_empty() {
        t["message"] = json!(o.message);
    }
    t
}

/// One entry of containerStatuses / initContainerStatuses.
fn container_status(c: &Container, obs: &PodObservation, init: bool) -> (Value, bool) {
    let (cur, prev) = obs.runs(&c.name);
    let image = c.image.clone().unwrap_or_default();
    let mut st = json!({"name": c.name, "image": image, "imageID": "", "ready": false, "restartCount": 0,
                        "started": false, "state": {"waiting": {"reason": "ContainerCreating"}}, "lastState": {}});
    let waiting = obs.waiting.get(&c.name);
    let mut ready = false;
    if let Some(cur) = cur {
        st["restartCount"] = json!(cur.attempt);
        st["imageID"] = json!(cur.image_ref);
        st["containerID"] = json!(format!("containerd://{}", cur.id));
        match cur.state {
            CState::Running => {
                st["state"] = json!({"running": {"startedAt": time(cur.started_at)}});
                let started = obs.started.get(&c.name).copied().unwrap_or(true);
                st["started"] = json!(started);
                ready = !init && started && obs.ready.get(&c.name).copied().unwrap_or(true);
            }
            CState::Exited => {
                st["state"] = json!({"terminated": terminated(cur)});
                if init {
                    ready = cur.exit_code == 0;
                }
            }
            CState::Created | CState::Unknown => {
                st["state"] = json!({"waiting": {"reason": "ContainerCreating"}});
            }
        }
        if let Some(prev) = prev.filter(|p| p.state == CState::Exited) {
            st["lastState"] = json!({"terminated": terminated(prev)});
        }
    }
    if let Some((reason, message)) = waiting {
        // A container waiting to be restarted shows its last run in lastState.
        if let Some(cur) = cur.filter(|c| c.state == CState::Exited) {
            st["lastState"] = json!({"terminated": terminated(cur)});
        }
        let mut w = json!({"reason": reason});
        if !message.is_empty() {
            w["message"] = json!(message);
        }
        st["state"] = json!({"waiting": w});
    }
    st["ready"] = json!(ready);
    (st, ready)
}

/// The pod's phase (kubelet `getPhase`).
fn phase(pod: &Pod, obs: &PodObservation, statuses: &[Value], init_statuses: &[Value]) -> &'static str {
    if obs.ended.is_some() {
        return "Failed";
    }
    let spec = pod.spec.as_ref();
    let policy = spec.and_then(|s| s.restart_policy.as_deref()).unwrap_or("Always");
    let inits = spec.and_then(|s| s.init_containers.as_ref()).map(|v| v.len()).unwrap_or(0);
    let mut init_done = 0;
    for s in init_statuses {
        if let Some(t) = s["state"].get("terminated") {
            if t["exitCode"] == 0 {
                init_done += 1;
            } else if policy == "Never" {
                return "Failed";
            }
        } else if s["state"].get("waiting").is_some() && s["lastState"].get("terminated").is_some() && policy == "Never"
        {
            return "Failed";
        }
    }
    if init_done < inits {
        return "Pending";
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for s in statuses {
        if s["state"].get("running").is_some() {
            running += 1;
        } else if let Some(t) = s["state"].get("terminated") {
            stopped += 1;
            if t["exitCode"] == 0 {
                succeeded += 1;
            }
        } else if s["lastState"].get("terminated").is_some() {
            stopped += 1;
        } else {
            waiting += 1;
        }
    }
    if waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        match policy {
            "Always" => "Running",
            _ if stopped == succeeded => "Succeeded",
            "Never" => "Failed",
            _ => "Running",
        }
    } else {
        "Pending"
    }
}

/// The QoS class Kubernetes gives a pod (see [`crate::api::defaults::qos_class`]).
pub fn qos_class(pod: &Pod) -> &'static str {
    let spec = pod.spec.as_ref().and_then(|s| serde_json::to_value(s).ok()).unwrap_or_default();
    crate::api::defaults::qos_class(&spec)
}

/// The pod's status: phase, conditions, container statuses, IPs, QoS class.
/// `now` stamps conditions whose status changed; unchanged ones keep their time.
pub fn pod_status(pod: &Pod, obs: &PodObservation, host_ip: &str, now: &str) -> Value {
    let spec = pod.spec.clone().unwrap_or_default();
    let mut init_statuses = Vec::new();
    let mut inits_ok = true;
    for c in spec.init_containers.iter().flatten() {
        let (st, done) = container_status(c, obs, true);
        inits_ok &= done;
        init_statuses.push(st);
    }
    let mut statuses = Vec::new();
    let mut all_ready = true;
    for c in &spec.containers {
        let (st, ready) = container_status(c, obs, false);
        all_ready &= ready;
        statuses.push(st);
    }
    let phase = phase(pod, obs, &statuses, &init_statuses);
    let old = pod.status.as_ref();
    let prev_conditions = old.and_then(|s| s.conditions.clone()).unwrap_or_default();
    let finished = matches!(phase, "Succeeded" | "Failed");
    let cond = |t: &str, ok: bool, reason: Option<&str>| {
        let s = if ok { "True" } else { "False" };
        let since = prev_conditions
            .iter()
            .find(|c| c.type_ == t && c.status == s)
            .and_then(|c| c.last_transition_time.as_ref())
            .map(|t| json!(t))
            .unwrap_or_else(|| json!(now));
        let mut c = json!({"type": t, "status": s, "lastProbeTime": null, "lastTransitionTime": since});
        if let Some(r) = reason {
            c["reason"] = json!(r);
        }
        c
    };
    let not_ready_reason = if finished { Some("PodCompleted") } else { Some("ContainersNotReady") };
    let ready = all_ready && !finished;
    let mut conditions = vec![
        cond("PodReadyToStartContainers", obs.sandbox_ready, None),
        cond(
            "Initialized",
            inits_ok || finished,
            if inits_ok || finished { None } else { Some("ContainersNotInitialized") },
        ),
        cond("Ready", ready, if ready { None } else { not_ready_reason }),
        cond("ContainersReady", ready, if ready { None } else { not_ready_reason }),
        cond("PodScheduled", true, None),
    ];
    if let Some(t) = obs.ended.as_ref().filter(|t| t.disruption) {
        let mut c = cond("DisruptionTarget", true, Some("TerminationByKubelet"));
        c["message"] = json!(t.message);
        conditions.push(c);
    }
    let start_time = old.and_then(|s| s.start_time.as_ref()).map(|t| json!(t)).unwrap_or_else(|| json!(now));
    let mut status = json!({
        "phase": phase, "conditions": conditions, "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
        "startTime": start_time, "containerStatuses": statuses, "qosClass": qos_class(pod),
    });
    if !init_statuses.is_empty() {
        status["initContainerStatuses"] = json!(init_statuses);
    }
    if let Some(t) = &obs.ended {
        status["reason"] = json!(t.reason);
        status["message"] = json!(t.message);
    }
    let ip = if spec.host_network == Some(true) { Some(host_ip.to_string()) } else { obs.pod_ip.clone() };
    if let Some(ip) = ip.or_else(|| old.and_then(|s| s.pod_ip.clone())) {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(policy: &str, containers: &[&str]) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u"},
            "spec": {"restartPolicy": policy, "containers": containers.iter().map(|n| json!({"name": n, "image": "busybox"})).collect::<Vec<_>>()},
        }))
        .unwrap()
    }

    fn run(name: &str, attempt: u32, state: CState, exit: i32) -> Observed {
        Observed {
            id: format!("{name}{attempt}"),
            name: name.into(),
            attempt,
            state,
            created_at: 1,
            started_at: 1_700_000_000_000_000_000,
            finished_at: if state == CState::Exited { 1_700_000_010_000_000_000 } else { 0 },
            exit_code: exit,
            reason: String::new(),
            message: String::new(),
            image_ref: "sha256:x".into(),
        }
    }

    fn obs(cs: Vec<Observed>) -> PodObservation {
        PodObservation { sandbox_ready: true, pod_ip: Some("10.42.0.5".into()), containers: cs, ..Default::default() }
    }

    #[test]
    fn running_and_ready() {
        let p = pod("Always", &["a"]);
        let s = pod_status(&p, &obs(vec![run("a", 0, CState::Running, 0)]), "10.0.0.1", "2026-01-01T00:00:00Z");
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["podIP"], "10.42.0.5");
        assert_eq!(s["containerStatuses"][0]["ready"], true);
        assert_eq!(s["conditions"][2]["type"], "Ready");
        assert_eq!(s["conditions"][2]["status"], "True");
        assert_eq!(s["qosClass"], "BestEffort");
    }

    #[test]
    fn crash_loop_shows_last_state_and_stays_running() {
        let p = pod("Always", &["a"]);
        let mut o = obs(vec![run("a", 2, CState::Exited, 1), run("a", 1, CState::Exited, 1)]);
        o.waiting.insert(
            "a".into(),
            ("CrashLoopBackOff".into(), "back-off 20s restarting failed container=a pod=p_default(u)".into()),
        );
        let s = pod_status(&p, &o, "10.0.0.1", "now");
        assert_eq!(s["phase"], "Running");
        let c = &s["containerStatuses"][0];
        assert_eq!(c["state"]["waiting"]["reason"], "CrashLoopBackOff");
        assert_eq!(c["lastState"]["terminated"]["exitCode"], 1);
        assert_eq!(c["restartCount"], 2);
        assert_eq!(c["ready"], false);
    }

    #[test]
    fn never_policy_ends_succeeded_or_failed() {
        let p = pod("Never", &["a", "b"]);
        let s = pod_status(&p, &obs(vec![run("a", 0, CState::Exited, 0), run("b", 0, CState::Exited, 0)]), "h", "now");
        assert_eq!(s["phase"], "Succeeded");
        assert_eq!(s["conditions"][2]["reason"], "PodCompleted");
        let s = pod_status(&p, &obs(vec![run("a", 0, CState::Exited, 0), run("b", 0, CState::Exited, 3)]), "h", "now");
        assert_eq!(s["phase"], "Failed");
        assert_eq!(s["containerStatuses"][1]["state"]["terminated"]["reason"], "Error");
    }

    #[test]
    fn pending_until_created_and_readiness_probe_gates_ready() {
        let p = pod("Always", &["a"]);
        let s = pod_status(&p, &obs(vec![]), "h", "now");
        assert_eq!(s["phase"], "Pending");
        assert_eq!(s["containerStatuses"][0]["state"]["waiting"]["reason"], "ContainerCreating");
        let mut o = obs(vec![run("a", 0, CState::Running, 0)]);
        o.ready.insert("a".into(), false);
        let s = pod_status(&p, &o, "h", "now");
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["conditions"][2]["status"], "False");
        assert_eq!(s["conditions"][2]["reason"], "ContainersNotReady");
    }
}
