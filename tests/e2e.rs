//! End to end: real `rk server` (with its agent) and a second `rk agent` joined with
//! the token, each on its own lab host (a network namespace with no route out), each
//! with the containerd rk starts, running real busybox containers; driven by kubectl.

mod common;

use std::time::{Duration, Instant};

use common::lab::{self, HOST_IPS, Lab, jsonpath, wait_for};
use nix::sys::signal::Signal;

fn logs(lab: &Lab) -> String {
    ["server.log", "worker.log"]
        .iter()
        .map(|f| format!("== {f}\n{}", std::fs::read_to_string(lab.path(f)).unwrap_or_default()))
        .collect::<Vec<_>>()
        .join("\n")
}

const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: hello}
spec:
  nodeName: worker
  containers:
  - name: main
    image: busybox:1.35
    command: ["sh", "-c", "echo hello from $(POD_NAME) on $NODE; trap 'echo got SIGTERM; exit 0' TERM; while true; do sleep 1; done"]
    env:
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: NODE, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
---
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  nodeName: worker
  containers:
  - {name: httpd, image: busybox:1.35, command: ["httpd", "-f", "-p", "8080", "-h", "/etc"]}
---
apiVersion: v1
kind: Pod
metadata: {name: crash}
spec:
  nodeName: server
  containers:
  - {name: main, image: busybox:1.35, command: ["sh", "-c", "echo dying; exit 3"]}
---
apiVersion: v1
kind: Pod
metadata: {name: probes}
spec:
  nodeName: server
  containers:
  - name: live
    image: busybox:1.35
    command: ["sh", "-c", "touch /tmp/healthy; sleep 2; rm /tmp/healthy; sleep 3600"]
    livenessProbe: {exec: {command: ["cat", "/tmp/healthy"]}, periodSeconds: 1, failureThreshold: 1}
  - name: unready
    image: busybox:1.35
    command: ["sleep", "3600"]
    readinessProbe: {exec: {command: ["false"]}, periodSeconds: 1}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: conf}
data: {greeting: one}
---
apiVersion: v1
kind: Pod
metadata: {name: vols}
spec:
  nodeName: worker
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: busybox:1.35
    command: ["sleep", "3600"]
    volumeMounts: [{name: conf, mountPath: /conf}, {name: scratch, mountPath: /scratch}]
  volumes:
  - {name: conf, configMap: {name: conf}}
  - {name: scratch, emptyDir: {}}
---
apiVersion: v1
kind: Pod
metadata: {name: bad-image}
spec:
  nodeName: server
  containers: [{name: main, image: "nothere:1", imagePullPolicy: Never}]
---
apiVersion: v1
kind: Pod
metadata: {name: bad-volume}
spec:
  nodeName: server
  containers: [{name: main, image: busybox:1.35, command: ["true"], volumeMounts: [{name: v, mountPath: /v}]}]
  volumes: [{name: v, configMap: {name: missing}}]
---
apiVersion: v1
kind: Pod
metadata: {name: bad-security}
spec:
  nodeName: server
  containers: [{name: main, image: busybox:1.35, command: ["true"], securityContext: {runAsNonRoot: true}}]
"#;

#[test]
fn real_pods_on_two_nodes() {
    if let Some(why) = lab::unavailable() {
        eprintln!("skipping the end-to-end test: {why}");
        return;
    }
    let mut lab = Lab::new();
    for host in ["server", "worker"] {
        lab::busybox_image(&lab.path(host).join("agent/images/busybox.tar"));
    }
    // A static pod on the server's node.
    let manifests = lab.path("server/agent/pod-manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(
        manifests.join("static-web.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: static-web, namespace: kube-system}\nspec:\n  containers:\n  - {name: httpd, image: busybox:1.35, command: [httpd, -f, -p, '8081']}\n",
    )
    .unwrap();
    // A registry mirror (registries.yaml): `registry.rk.test` is served by a registry
    // on the server host's loopback, port 5000, whose credentials are in the file.
    let archive = lab.path("hello-image.tar");
    lab::busybox_image(&archive);
    let mirror = common::registry::Registry::start(
        &lab.hosts[0],
        5000,
        &std::fs::read(&archive).unwrap(),
        "rk/hello",
        "1",
        ("mirror", "m1rr0r"),
    );
    let registries = lab.path("registries.yaml");
    std::fs::write(
        &registries,
        "mirrors:\n  registry.rk.test:\n    endpoint: [\"http://127.0.0.1:5000\"]\n\
         configs:\n  \"127.0.0.1:5000\":\n    auth: {username: mirror, password: m1rr0r}\n",
    )
    .unwrap();
    let server_flags = ["--private-registry", registries.to_str().unwrap()];
    let mut server = lab.spawn_server(&server_flags);
    let token = lab.server_token();

    // A second node, joined with the token over the lab link.
    let worker_dir = lab.path("worker");
    lab.spawn_worker(&token);
    wait_for("both nodes Ready", 60, || {
        let s = jsonpath(
            &lab,
            &["get", "nodes"],
            "{range .items[*]}{.metadata.name}={.status.conditions[?(@.type==\"Ready\")].status} {end}",
        );
        s.contains("server=True") && s.contains("worker=True")
    });
    let wide = lab.kubectl_ok(&["get", "nodes", "-o", "wide"]);
    assert!(wide.contains("containerd://") && wide.contains(HOST_IPS[1]), "{wide}");
    assert!(wide.contains("control-plane"), "{wide}");

    // The static pod runs, mirrored as <name>-<node> and owned by the Node.
    wait_for("the static pod Running", 60, || {
        jsonpath(&lab, &["get", "pod", "-n", "kube-system", "static-web-server"], "{.status.phase}") == "Running"
    });
    let owner = jsonpath(
        &lab,
        &["get", "pod", "-n", "kube-system", "static-web-server"],
        "{.metadata.ownerReferences[0].kind} {.metadata.annotations.kubernetes\\.io/config\\.source}",
    );
    assert_eq!(owner, "Node file");

    let out = lab.kubectl_stdin(&["apply", "-f", "-"], Some(PODS));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // A pod on the worker runs; its output reaches kubectl through the worker's tunnel.
    wait_for("hello Running", 60, || jsonpath(&lab, &["get", "pod", "hello"], "{.status.phase}") == "Running");
    wait_for("hello's log", 20, || {
        String::from_utf8_lossy(&lab.kubectl(&["logs", "hello"]).stdout).contains("hello from hello on worker")
    });
    // The worker's Summary API, through nodes/proxy.
    let summary = lab.kubectl_ok(&["get", "--raw", "/api/v1/nodes/worker/proxy/stats/summary"]);
    let v: serde_json::Value = serde_json::from_str(&summary).expect("summary is JSON");
    assert_eq!(v["node"]["nodeName"], "worker");
    let pod =
        v["pods"].as_array().unwrap().iter().find(|p| p["podRef"]["name"] == "hello").cloned().unwrap_or_default();
    assert!(pod["containers"][0]["memory"]["workingSetBytes"].as_u64().is_some_and(|b| b > 0), "{summary}");
    let ip = jsonpath(&lab, &["get", "pod", "hello"], "{.status.podIP}");
    assert!(ip.starts_with("10.42."), "pod IP {ip:?} from the node's podCIDR");

    // exec (exit code, stdin), cp both ways, port-forward: through the worker's tunnel.
    let out = lab.kubectl(&["exec", "hello", "--", "sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    let out = lab.kubectl_stdin(&["exec", "-i", "hello", "--", "cat"], Some("ping\n"));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ping\n", "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(lab.path("up.txt"), "copied up\n").unwrap();
    let up = lab.path("up.txt");
    lab.kubectl_ok(&["cp", up.to_str().unwrap(), "hello:/tmp/up.txt"]);
    assert_eq!(lab.kubectl_ok(&["exec", "hello", "--", "cat", "/tmp/up.txt"]), "copied up\n");
    // The pod's API credentials (ServiceAccount admission, the kubelet's bound token):
    // the token authenticates as the pod's account, the CA and namespace are there, and
    // the API's Service is in the environment.
    let sa = "/var/run/secrets/kubernetes.io/serviceaccount";
    let token = lab.kubectl_ok(&["exec", "hello", "--", "cat", &format!("{sa}/token")]);
    assert_eq!(lab.kubectl_ok(&["exec", "hello", "--", "cat", &format!("{sa}/namespace")]), "default");
    assert!(lab.kubectl_ok(&["exec", "hello", "--", "cat", &format!("{sa}/ca.crt")]).contains("BEGIN CERTIFICATE"));
    let env = lab.kubectl_ok(&["exec", "hello", "--", "env"]);
    assert!(env.contains("KUBERNETES_SERVICE_HOST=10.43.0.1") && env.contains("KUBERNETES_SERVICE_PORT=443"), "{env}");
    let review = format!(
        r#"{{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{{"token":"{}"}}}}"#,
        token.trim()
    );
    let out = lab.kubectl_stdin(&["create", "-o", "json", "-f", "-"], Some(&review));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a TokenReview");
    assert_eq!(v["status"]["user"]["username"], "system:serviceaccount:default:default", "{v}");
    assert_eq!(v["status"]["user"]["extra"]["authentication.kubernetes.io/pod-name"], serde_json::json!(["hello"]));
    let down = lab.path("down.txt");
    lab.kubectl_ok(&["cp", "hello:/tmp/up.txt", down.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&down).unwrap(), "copied up\n");
    wait_for("web Running", 60, || jsonpath(&lab, &["get", "pod", "web"], "{.status.phase}") == "Running");
    let mut pf = lab
        .cmd(0, "kubectl")
        .args(["port-forward", "pod/web", "18080:8080"])
        .env("KUBECONFIG", lab.path("kubeconfig.yaml"))
        .env("KUBECACHEDIR", lab.path("kubecache"))
        .env("HOME", lab.dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut body = String::new();
    wait_for("httpd through port-forward", 30, || {
        let out = lab
            .cmd(0, "/bin/busybox")
            .args(["wget", "-q", "-O", "-", "http://127.0.0.1:18080/hostname"])
            .output()
            .unwrap();
        body = String::from_utf8_lossy(&out.stdout).to_string();
        body == "web\n"
    });
    let _ = pf.kill();
    let _ = pf.wait();

    // A crashing container backs off as Kubernetes does: restart 1 at once, then 10 s.
    wait_for("crash in CrashLoopBackOff", 60, || {
        let st = jsonpath(
            &lab,
            &["get", "pod", "crash"],
            "{.status.containerStatuses[0].state.waiting.reason} {.status.containerStatuses[0].restartCount}",
        );
        st.starts_with("CrashLoopBackOff")
            && st.split(' ').nth(1).and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| n >= 1)
    });
    let prev = lab.kubectl_ok(&["logs", "crash", "--previous"]);
    assert!(prev.contains("dying"), "{prev}");
    let last = jsonpath(&lab, &["get", "pod", "crash"], "{.status.containerStatuses[0].lastState.terminated.exitCode}");
    assert_eq!(last, "3");

    // A failing liveness probe restarts its container; a failing readiness probe clears Ready.
    wait_for("the liveness restart", 60, || {
        jsonpath(&lab, &["get", "pod", "probes"], "{.status.containerStatuses[?(@.name==\"live\")].restartCount}")
            .parse::<u32>()
            .is_ok_and(|n| n >= 1)
    });
    let st = jsonpath(
        &lab,
        &["get", "pod", "probes"],
        "{.status.phase} {.status.conditions[?(@.type==\"Ready\")].status} {.status.containerStatuses[?(@.name==\"unready\")].ready}",
    );
    assert_eq!(st, "Running False false", "{}", logs(&lab));
    let ev = lab.kubectl_ok(&["get", "events", "--field-selector", "involvedObject.name=probes"]);
    assert!(ev.contains("Liveness probe failed") && ev.contains("Readiness probe failed"), "{ev}");

    // configMap volumes follow their ConfigMap.
    wait_for("vols Running", 60, || jsonpath(&lab, &["get", "pod", "vols"], "{.status.phase}") == "Running");
    lab.kubectl_ok(&["patch", "configmap", "conf", "-p", r#"{"data":{"greeting":"two"}}"#]);
    wait_for("the configMap volume to update", 60, || {
        let f = worker_dir.join("agent/pods");
        std::fs::read_dir(&f).into_iter().flatten().flatten().any(|e| {
            std::fs::read_to_string(e.path().join("volumes/kubernetes.io~configmap/conf/greeting"))
                .is_ok_and(|s| s == "two")
        })
    });

    // Bad specs end as the status and events Kubernetes shows, never as a crash.
    wait_for("the bad pods' reasons", 60, || {
        let r = |p: &str| jsonpath(&lab, &["get", "pod", p], "{.status.containerStatuses[0].state.waiting.reason}");
        r("bad-image") == "ErrImageNeverPull" && r("bad-security") == "CreateContainerConfigError"
    });
    let msg = jsonpath(&lab, &["get", "pod", "bad-security"], "{.status.containerStatuses[0].state.waiting.message}");
    assert!(msg.contains("runAsNonRoot and image will run as root"), "{msg}");
    wait_for("FailedMount", 30, || {
        lab.kubectl_ok(&["get", "events", "--field-selector", "involvedObject.name=bad-volume"]).contains("FailedMount")
    });
    assert_eq!(jsonpath(&lab, &["get", "pod", "bad-volume"], "{.status.phase}"), "Pending");

    // Pulling from a private registry (a small one the test serves on the server
    // host's loopback, behind basic auth): with the pod's pull secret, made by
    // `kubectl create secret docker-registry`, the image is pulled and runs; without
    // it the pull fails with the registry's 401 and backs off.
    let reg = common::registry::Registry::start(
        &lab.hosts[0],
        0,
        &std::fs::read(&archive).unwrap(),
        "rk/hello",
        "1",
        ("puller", "s3cret"),
    );
    let image = format!("127.0.0.1:{}/rk/hello:1", reg.port);
    lab.kubectl_ok(&[
        "create",
        "secret",
        "docker-registry",
        "regcred",
        &format!("--docker-server=127.0.0.1:{}", reg.port),
        "--docker-username=puller",
        "--docker-password=s3cret",
    ]);
    let pods = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: pulled}}
spec:
  nodeName: server
  imagePullSecrets: [{{name: regcred}}]
  containers: [{{name: main, image: "{image}", command: [sleep, "3600"]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: denied}}
spec:
  nodeName: server
  containers: [{{name: main, image: "{image}", imagePullPolicy: Always, command: [sleep, "3600"]}}]
"#
    );
    let out = lab.kubectl_stdin(&["apply", "-f", "-"], Some(&pods));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for("the pulled pod Running", 60, || {
        jsonpath(&lab, &["get", "pod", "pulled"], "{.status.phase}") == "Running"
    });
    let ev = lab.kubectl_ok(&["get", "events", "--field-selector", "involvedObject.name=pulled"]);
    assert!(ev.contains(&format!("Successfully pulled image \"{image}\"")), "{ev}");
    wait_for("the denied pod's pull to fail", 60, || {
        let r = jsonpath(&lab, &["get", "pod", "denied"], "{.status.containerStatuses[0].state.waiting.reason}");
        r == "ErrImagePull" || r == "ImagePullBackOff"
    });
    let ev = lab.kubectl_ok(&["get", "events", "--field-selector", "involvedObject.name=denied"]);
    assert!(ev.contains("Failed to pull image") && ev.contains("401"), "{ev}");
    assert!(reg.served.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert!(reg.refused.load(std::sync::atomic::Ordering::SeqCst) >= 1);

    // Through the mirror, with its credentials from registries.yaml: no pull secret.
    let out = lab.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: mirrored}\nspec:\n  nodeName: server\n  \
             containers: [{name: main, image: registry.rk.test/rk/hello:1, command: [sleep, '3600']}]\n",
        ),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for("the mirrored pod Running", 60, || {
        jsonpath(&lab, &["get", "pod", "mirrored"], "{.status.phase}") == "Running"
    });
    assert!(mirror.served.load(std::sync::atomic::Ordering::SeqCst) >= 1);

    // kill -9 rk: containers keep running; after a restart the pods are unchanged.
    let before =
        jsonpath(&lab, &["get", "pod", "probes"], "{.status.containerStatuses[?(@.name==\"unready\")].containerID}");
    assert!(before.starts_with("containerd://"), "{before:?}");
    lab.signal(server, Signal::SIGKILL);
    lab.reap(server);
    server = lab.spawn_server(&server_flags);
    wait_for("the API after restart", 30, || lab.kubectl(&["get", "--raw", "/readyz"]).status.success());
    wait_for("the server node Ready again", 30, || {
        jsonpath(&lab, &["get", "node", "server"], "{.status.conditions[?(@.type==\"Ready\")].status}") == "True"
    });
    std::thread::sleep(Duration::from_secs(3));
    let after = jsonpath(
        &lab,
        &["get", "pod", "probes"],
        "{.status.containerStatuses[?(@.name==\"unready\")].containerID} {.status.containerStatuses[?(@.name==\"unready\")].restartCount}",
    );
    assert_eq!(after, format!("{before} 0"), "{}", logs(&lab));

    // Killing containerd: rk starts it again and the pods stay as they were.
    let containerd = children(server).into_iter().find(|p| comm(*p) == "containerd").expect("rk's containerd");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(containerd), Signal::SIGKILL);
    wait_for("a new containerd", 30, || {
        children(server).into_iter().any(|p| comm(p) == "containerd" && p != containerd)
    });
    std::thread::sleep(Duration::from_secs(3));
    let again = jsonpath(
        &lab,
        &["get", "pod", "probes"],
        "{.status.containerStatuses[?(@.name==\"unready\")].containerID} {.status.containerStatuses[?(@.name==\"unready\")].restartCount}",
    );
    assert_eq!(again, after);

    // Deleting a pod sends SIGTERM (the container's trap runs) and finishes at once;
    // one that ignores SIGTERM is killed after its grace period (2 s).
    let t0 = Instant::now();
    lab.kubectl_ok(&["delete", "pod", "hello", "--wait=true", "--timeout=60s"]);
    assert!(t0.elapsed() < Duration::from_secs(20), "hello took {:?} to stop", t0.elapsed());
    let t0 = Instant::now();
    lab.kubectl_ok(&["delete", "pod", "vols", "--wait=true", "--timeout=60s"]);
    let took = t0.elapsed();
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(20), "vols took {took:?}");
    lab.kubectl_ok(&["delete", "pod", "web", "--wait=true", "--timeout=60s"]);
    wait_for("the worker to clean up its pods", 30, || {
        std::fs::read_dir(worker_dir.join("agent/pods")).map(|d| d.count() == 0).unwrap_or(true)
    });
}

/// Child processes of `pid`.
fn children(pid: u32) -> Vec<i32> {
    let mut out = vec![];
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let s = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
    }
    out
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string()
}

const PRESSURE_PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: besteffort}
spec:
  nodeName: server
  containers: [{name: main, image: busybox:1.35, command: [sleep, "3600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: burstable}
spec:
  nodeName: server
  containers: [{name: main, image: busybox:1.35, command: [sleep, "3600"], resources: {requests: {memory: 1Mi}}}]
---
apiVersion: v1
kind: Pod
metadata: {name: critical, namespace: kube-system}
spec:
  nodeName: server
  priorityClassName: system-node-critical
  containers: [{name: main, image: busybox:1.35, command: [sleep, "3600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: deadline, namespace: kube-system}
spec:
  nodeName: server
  priorityClassName: system-node-critical
  activeDeadlineSeconds: 5
  containers: [{name: main, image: busybox:1.35, command: [sleep, "3600"]}]
"#;

/// Node-pressure eviction with real containers, as the kubelet does it: under memory
/// pressure a new BestEffort pod is rejected, a running pod is evicted (Failed,
/// `Evicted`, the kubelet's message, a DisruptionTarget condition, an event), and a
/// critical pod runs on; under disk pressure unused images are removed first, and the
/// condition goes once the disk is freed. A pod past its activeDeadlineSeconds fails.
#[test]
fn node_pressure_rejects_evicts_and_frees_images() {
    if let Some(why) = lab::unavailable() {
        eprintln!("skipping the end-to-end test: {why}");
        return;
    }
    let mut lab = Lab::with_hosts(1);
    // The node's image file system is a small tmpfs, which the test fills to make disk
    // pressure (the lab unmounts it at the end).
    let imagefs = lab.path("server/agent/containerd");
    std::fs::create_dir_all(&imagefs).unwrap();
    nix::mount::mount(Some("tmpfs"), &imagefs, Some("tmpfs"), nix::mount::MsFlags::empty(), Some("size=256m"))
        .expect("mounting a tmpfs");
    lab::busybox_image(&lab.path("server/agent/images/busybox.tar"));
    lab::tiny_image(&lab.path("server/agent/images/spare.tar"), "docker.io/library/spare:1");
    // Asking for more free memory than any machine has: memory pressure from the start.
    lab.spawn_server(&[
        "--eviction-hard=memory.available<1Pi,imagefs.available<50%",
        "--eviction-pressure-transition-period=0s",
        "--image-minimum-gc-age=0s",
    ]);
    lab.server_token();
    let cond = |t: &str| {
        jsonpath(&lab, &["get", "node", "server"], &format!("{{.status.conditions[?(@.type==\"{t}\")].status}}"))
    };
    wait_for("the node Ready under memory pressure", 60, || {
        cond("Ready") == "True" && cond("MemoryPressure") == "True"
    });
    assert_eq!(cond("DiskPressure"), "False");
    let data_dir = lab.path("server");
    let images = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rk"))
            .args(["images", "ls", "--data-dir", data_dir.to_str().unwrap()])
            .output()
            .expect("rk images ls runs");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    wait_for("the spare image imported", 30, || images().contains("docker.io/library/spare:1"));

    let out = lab.kubectl_stdin(&["apply", "-f", "-"], Some(PRESSURE_PODS));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let field = |ns: &str, pod: &str, path: &str| jsonpath(&lab, &["get", "pod", "-n", ns, pod], path);
    wait_for("the BestEffort pod rejected", 60, || field("default", "besteffort", "{.status.phase}") == "Failed");
    assert_eq!(
        field("default", "besteffort", "{.status.reason}|{.status.message}"),
        "Evicted|Pod was rejected: The node had condition: [MemoryPressure]. "
    );
    wait_for("the Burstable pod evicted", 60, || field("default", "burstable", "{.status.phase}") == "Failed");
    let msg = field("default", "burstable", "{.status.message}");
    assert!(msg.starts_with("The node was low on resource: memory. Threshold quantity: 1Pi, available: "), "{msg}");
    assert_eq!(
        field("default", "burstable", "{.status.reason} {.status.conditions[?(@.type==\"DisruptionTarget\")].reason}"),
        "Evicted TerminationByKubelet"
    );
    wait_for("the Evicted events", 30, || {
        let ev = jsonpath(&lab, &["get", "events"], "{range .items[*]}{.involvedObject.name}={.reason} {end}");
        ev.contains("burstable=Evicted") && ev.contains("besteffort=Evicted")
    });
    wait_for("the critical pod Running", 60, || field("kube-system", "critical", "{.status.phase}") == "Running");
    // A pod past its activeDeadlineSeconds is ended by its kubelet.
    wait_for("the deadline pod Failed", 60, || field("kube-system", "deadline", "{.status.phase}") == "Failed");
    assert_eq!(
        field("kube-system", "deadline", "{.status.reason}|{.status.message}"),
        "DeadlineExceeded|Pod was active on the node longer than the specified deadline"
    );

    // Disk pressure: the unused image goes; the ones in use and the pause image stay.
    std::fs::write(imagefs.join("filler"), vec![0u8; 160 << 20]).unwrap();
    wait_for("DiskPressure", 40, || cond("DiskPressure") == "True");
    wait_for("the unused image removed", 30, || !images().contains("spare:1"));
    let ls = images();
    assert!(ls.contains("busybox:1.35") && ls.contains("rk.local/pause:1"), "{ls}");
    assert_eq!(field("kube-system", "critical", "{.status.phase}"), "Running");
    std::fs::remove_file(imagefs.join("filler")).unwrap();
    wait_for("DiskPressure gone", 40, || cond("DiskPressure") == "False");
    assert_eq!(cond("MemoryPressure"), "True");
    assert_eq!(field("kube-system", "critical", "{.status.phase}"), "Running");
}

/// A one-host lab running `rk server` (with its agent and the busybox image) with
/// `flags`, its join token written; None (and a note) where the lab cannot run.
fn one_node(flags: &[&str]) -> Option<Lab> {
    if let Some(why) = lab::unavailable() {
        eprintln!("skipping the end-to-end test: {why}");
        return None;
    }
    let mut lab = Lab::with_hosts(1);
    lab::busybox_image(&lab.path("server/agent/images/busybox.tar"));
    lab.spawn_server(flags);
    lab.server_token();
    Some(lab)
}

const STORAGE_PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: emptydir-hog}
spec:
  nodeName: server
  volumes: [{name: scratch, emptyDir: {sizeLimit: 1Mi}}]
  containers:
  - name: main
    image: busybox:1.35
    command: [sh, -c, "dd if=/dev/zero of=/scratch/f bs=1048576 count=3 && sleep 3600"]
    volumeMounts: [{name: scratch, mountPath: /scratch}]
---
apiVersion: v1
kind: Pod
metadata: {name: layer-hog}
spec:
  nodeName: server
  containers:
  - name: main
    image: busybox:1.35
    command: [sh, -c, "dd if=/dev/zero of=/tmp/f bs=1048576 count=4 && sleep 3600"]
    resources: {limits: {ephemeral-storage: 2Mi}}
  - name: side
    image: busybox:1.35
    command: [sleep, "3600"]
    resources: {limits: {ephemeral-storage: 10Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: pod-hog}
spec:
  nodeName: server
  volumes: [{name: disk, emptyDir: {}}]
  containers:
  - name: main
    image: busybox:1.35
    command: [sh, -c, "dd if=/dev/zero of=/disk/f bs=1048576 count=3 && sleep 3600"]
    resources: {limits: {ephemeral-storage: 2Mi}}
    volumeMounts: [{name: disk, mountPath: /disk}]
---
apiVersion: v1
kind: Pod
metadata: {name: modest}
spec:
  nodeName: server
  volumes: [{name: scratch, emptyDir: {sizeLimit: 8Mi}}]
  containers:
  - name: main
    image: busybox:1.35
    command: [sh, -c, "dd if=/dev/zero of=/tmp/f bs=1048576 count=1 && dd if=/dev/zero of=/scratch/f bs=1048576 count=1 && sleep 3600"]
    resources: {limits: {ephemeral-storage: 20Mi}}
    volumeMounts: [{name: scratch, mountPath: /scratch}]
"#;

/// Local storage limits, enforced as the kubelet does whatever the node's pressure: an
/// emptyDir over its sizeLimit, a container whose writable layer is over its
/// ephemeral-storage limit (the pod's sum not reached), and a pod whose emptyDir puts
/// it over its containers' limits are evicted with the kubelet's messages and events; a pod within its limits
/// runs on.
#[test]
fn local_storage_limits_evict_pods() {
    let Some(lab) = one_node(&[]) else { return };
    wait_for("the node Ready", 60, || {
        jsonpath(&lab, &["get", "node", "server"], "{.status.conditions[?(@.type==\"Ready\")].status}") == "True"
    });
    let out = lab.kubectl_stdin(&["apply", "-f", "-"], Some(STORAGE_PODS));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let field = |pod: &str, path: &str| jsonpath(&lab, &["get", "pod", pod], path);
    for (pod, msg) in [
        ("emptydir-hog", "Usage of EmptyDir volume \"scratch\" exceeds the limit \"1Mi\". "),
        ("layer-hog", "Container main exceeded its local ephemeral storage limit \"2Mi\". "),
        ("pod-hog", "Pod ephemeral local storage usage exceeds the total limit of containers 2Mi. "),
    ] {
        wait_for(&format!("{pod} evicted"), 90, || field(pod, "{.status.phase}") == "Failed");
        assert_eq!(field(pod, "{.status.reason}|{.status.message}"), format!("Evicted|{msg}"));
        assert_eq!(field(pod, "{.status.conditions[?(@.type==\"DisruptionTarget\")].reason}"), "");
    }
    wait_for("the Evicted events", 30, || {
        let ev = jsonpath(&lab, &["get", "events"], "{range .items[*]}{.involvedObject.name}={.reason} {end}");
        ["emptydir-hog", "layer-hog", "pod-hog"].iter().all(|p| ev.contains(&format!("{p}=Evicted")))
    });
    assert_eq!(field("modest", "{.status.phase}"), "Running");
    let ev = jsonpath(&lab, &["get", "events"], "{range .items[*]}{.involvedObject.name}={.reason} {end}");
    assert!(!ev.contains("modest=Evicted"), "{ev}");
}

/// A soft eviction threshold: the node reports MemoryPressure at once, but the pod is
/// evicted only once the threshold has stayed crossed for its grace period, and gets
/// `--eviction-max-pod-grace-period` (not its own 60 s) to stop.
#[test]
fn soft_eviction_waits_out_its_grace_period() {
    let Some(lab) = one_node(&[
        "--eviction-soft=memory.available<1Pi",
        "--eviction-soft-grace-period=memory.available=20s",
        "--eviction-max-pod-grace-period=2",
        "--eviction-pressure-transition-period=0s",
    ]) else {
        return;
    };
    let cond = |t: &str, f: &str| {
        jsonpath(&lab, &["get", "node", "server"], &format!("{{.status.conditions[?(@.type==\"{t}\")].{f}}}"))
    };
    wait_for("the node Ready under memory pressure", 60, || {
        cond("Ready", "status") == "True" && cond("MemoryPressure", "status") == "True"
    });
    let pressure_since = cond("MemoryPressure", "lastTransitionTime");
    let pod = r#"
apiVersion: v1
kind: Pod
metadata: {name: stubborn}
spec:
  nodeName: server
  terminationGracePeriodSeconds: 600
  containers:
  - name: main
    image: busybox:1.35
    command: [sh, -c, "trap '' TERM; while true; do sleep 1; done"]
    resources: {requests: {memory: 1Mi}}
"#;
    let out = lab.kubectl_stdin(&["apply", "-f", "-"], Some(pod));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for("the pod evicted, its grace period cut to 2 s", 90, || {
        jsonpath(&lab, &["get", "pod", "stubborn"], "{.status.phase}") == "Failed"
    });
    let msg = jsonpath(&lab, &["get", "pod", "stubborn"], "{.status.reason}|{.status.message}");
    assert!(
        msg.starts_with("Evicted|The node was low on resource: memory. Threshold quantity: 1Pi, available: "),
        "{msg}"
    );
    let event = |f: &str| {
        let sel = ["get", "events", "--field-selector", "involvedObject.name=stubborn,reason=Evicted"];
        jsonpath(&lab, &sel, &format!("{{.items[0].{f}}}"))
    };
    let evicted_at =
        [event("eventTime"), event("lastTimestamp")].into_iter().find(|t| !t.is_empty()).unwrap_or_default();
    let secs = |t: &str| {
        let out = std::process::Command::new("date").args(["-d", t, "+%s"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse::<i64>().unwrap_or_else(|_| panic!("a time: {t:?}"))
    };
    assert!(
        secs(&evicted_at) - secs(&pressure_since) >= 20,
        "evicted at {evicted_at}, under pressure since {pressure_since}"
    );
}
