//! Networking end to end: one `rk server` (with its agent) and two `rk agent`s, each on
//! its own lab host (network namespaces on one switch, no route out), real busybox
//! pods in real containerd. Pods reach each other across nodes; a ClusterIP Service
//! answers from pods on every node and spreads over its pods; a NodePort answers on
//! every node address; cluster DNS answers for Services (ClusterIP and headless), pods
//! and the `kubernetes` Service; scaling a Deployment changes who answers.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::lab::{self, HOST_IPS, Lab};

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return t0.elapsed();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {secs}s waiting for {what}");
}

fn jsonpath(lab: &Lab, args: &[&str], path: &str) -> String {
    let jp = format!("jsonpath={path}");
    let mut a: Vec<&str> = args.to_vec();
    a.extend(["-o", jp.as_str()]);
    String::from_utf8_lossy(&lab.kubectl(&a).stdout).to_string()
}

/// `sh -c SCRIPT` in a pod; (success, stdout + stderr).
fn exec(lab: &Lab, pod: &str, script: &str) -> (bool, String) {
    let out = lab.kubectl(&["exec", pod, "--", "sh", "-c", script]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

const APPS: &str = r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      hostname: web
      subdomain: web-h
      containers:
      - name: httpd
        image: busybox:1.35
        command: ["sh", "-c", "mkdir -p /tmp/www && echo $NODE > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"]
        env: [{name: NODE, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}]
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http, nodePort: 30080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-h}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-lb}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports: [{name: http, port: 8088, targetPort: http}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo}
spec:
  replicas: 1
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: busybox:1.35
        command: ["sh", "-c", "mkdir -p /tmp/www && hostname > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"]
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client-0}
spec:
  nodeName: server
  containers: [{name: sh, image: busybox:1.35, command: ["sleep", "3600"]}]
  terminationGracePeriodSeconds: 0
---
apiVersion: v1
kind: Pod
metadata: {name: client-1, labels: {role: client}}
spec:
  nodeName: worker
  containers: [{name: sh, image: busybox:1.35, command: ["sleep", "3600"]}]
  terminationGracePeriodSeconds: 0
"#;

#[test]
fn services_dns_and_pods_across_nodes() {
    if let Some(why) = lab::unavailable() {
        eprintln!("skipping the network test: {why}");
        return;
    }
    let mut lab = Lab::with_hosts(3);
    let names = ["server", "worker", "worker2"];
    for n in names {
        lab::busybox_image(&lab.path(n).join("agent/images/busybox.tar"));
    }
    let server_dir = lab.path("server");
    let kubeconfig = lab.path("kubeconfig.yaml");
    let server_args = [
        "server",
        "--data-dir",
        server_dir.to_str().unwrap(),
        "--write-kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--node-name",
        "server",
        "--node-ip",
        HOST_IPS[0],
    ];
    lab.spawn_rk(0, &server_args, "server.log");
    let token = lab.server_token();
    lab.spawn_agent(1, "worker", &token);
    lab.spawn_agent(2, "worker2", &token);
    wait_for("three nodes Ready", 90, || {
        let s = jsonpath(
            &lab,
            &["get", "nodes"],
            "{range .items[*]}{.metadata.name}={.status.conditions[?(@.type==\"Ready\")].status} {end}",
        );
        names.iter().all(|n| s.contains(&format!("{n}=True")))
    });
    lab.kubectl_stdin(&["apply", "-f", "-"], Some(APPS));
    wait_for("the web pods and the clients running and ready", 120, || {
        let s = jsonpath(
            &lab,
            &["get", "pods"],
            "{range .items[*]}{.metadata.name}={.status.conditions[?(@.type==\"Ready\")].status} {end}",
        );
        s.matches("=True").count() == 6
    });
    let pod_ips: Vec<(String, String)> =
        jsonpath(&lab, &["get", "pods", "-l", "app=web"], "{range .items[*]}{.spec.nodeName}={.status.podIP} {end}")
            .split_whitespace()
            .filter_map(|kv| kv.split_once('=').map(|(a, b)| (a.to_string(), b.to_string())))
            .collect();
    assert_eq!(pod_ips.len(), 3, "{pod_ips:?}");

    // Pod to pod, across nodes and on the same node, from pods on two nodes.
    for client in ["client-0", "client-1"] {
        for (node, ip) in &pod_ips {
            let (ok, out) = exec(&lab, client, &format!("timeout 5 wget -qO- http://{ip}:8080/ 2>&1"));
            assert!(
                ok && out.trim() == node,
                "{client} -> {node}'s pod {ip}: {out}\n{}",
                lab.kubectl_ok(&["get", "nodes,pods", "-o", "wide"])
            );
        }
    }

    // ClusterIP, from pods on two nodes, spread over the three pods.
    let cip = jsonpath(&lab, &["get", "svc", "web"], "{.spec.clusterIP}");
    for client in ["client-0", "client-1"] {
        let (ok, out) = exec(&lab, client, &format!("for i in $(seq 30); do timeout 3 wget -qO- http://{cip}/; done"));
        let seen: BTreeSet<&str> = out.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        assert!(ok && seen.len() == 3, "{client} -> ClusterIP {cip} answered by {seen:?}: {out}");
    }

    // NodePort on every node address, from another host (not a pod), and from a pod.
    for (i, addr) in HOST_IPS.iter().enumerate() {
        let from = (i + 1) % 3;
        let out = lab
            .cmd(from, "timeout")
            .args(["5", "/bin/busybox", "wget", "-qO-", &format!("http://{addr}:30080/")])
            .output()
            .unwrap();
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && names.contains(&body.trim()),
            "NodePort {addr}:30080 from host {from}: {body} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (ok, out) = exec(&lab, "client-1", &format!("timeout 5 wget -qO- http://{}:30080/", HOST_IPS[2]));
    assert!(ok, "NodePort from a pod: {out}");

    // LoadBalancer: every node carries it and answers on its address; a second one on
    // the same port has nowhere to go and stays Pending, with an event.
    wait_for("the load balancer's addresses", 30, || {
        jsonpath(&lab, &["get", "svc", "web-lb"], "{.status.loadBalancer.ingress[*].ip}").split_whitespace().count()
            == 3
    });
    let table = lab.kubectl_ok(&["get", "svc", "web-lb"]);
    assert!(table.contains(&HOST_IPS.join(",")), "{table}");
    for addr in HOST_IPS {
        let out = lab
            .cmd(1, "timeout")
            .args(["5", "/bin/busybox", "wget", "-qO-", &format!("http://{addr}:8088/")])
            .output()
            .unwrap();
        assert!(out.status.success(), "LoadBalancer at {addr}:8088: {}", String::from_utf8_lossy(&out.stderr));
    }
    lab.kubectl_stdin(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: Service\nmetadata: {name: web-lb2}\nspec:\n  type: LoadBalancer\n  selector: {app: web}\n  ports: [{port: 8088, targetPort: 8080}]\n"),
    );
    wait_for("an event on the pending load balancer", 30, || {
        lab.kubectl_ok(&["get", "events", "--field-selector", "involvedObject.name=web-lb2"]).contains("Pending")
    });
    let table = lab.kubectl_ok(&["get", "svc", "web-lb2"]);
    assert!(table.contains("<pending>"), "{table}");

    // Cluster DNS, node-local, from pods on two nodes.
    let (ok, rc) = exec(&lab, "client-1", "cat /etc/resolv.conf");
    assert!(
        ok && rc.contains("nameserver 10.43.0.10")
            && rc.contains("search default.svc.cluster.local svc.cluster.local cluster.local")
            && rc.contains("ndots:5"),
        "{rc}"
    );
    for client in ["client-0", "client-1"] {
        let (ok, out) = exec(&lab, client, "nslookup kubernetes.default.svc.cluster.local");
        assert!(ok && out.contains("10.43.0.1"), "{client}: {out}");
        let (ok, out) = exec(&lab, client, "timeout 5 wget -qO- http://web/");
        assert!(ok && names.contains(&out.trim()), "{client} -> http://web/: {out}");
        let (ok, out) = exec(&lab, client, "timeout 5 wget -qO- http://web.default:80/");
        assert!(ok && names.contains(&out.trim()), "{client} -> http://web.default/: {out}");
    }
    // busybox's nslookup sends names with a dot as they are (no search list), so the
    // short name goes through the libc resolver, which applies resolv.conf's search.
    let (_, out) = exec(&lab, "client-0", "ping -c 1 -W 1 kubernetes.default");
    assert!(out.contains("(10.43.0.1)"), "kubernetes.default through the search list: {out}");
    let (ok, out) = exec(&lab, "client-0", "nslookup web-h.default.svc.cluster.local");
    assert!(ok && pod_ips.iter().all(|(_, ip)| out.contains(ip.as_str())), "headless: {out}");
    let (ok, out) = exec(&lab, "client-0", "nslookup nope.default.svc.cluster.local");
    assert!(!ok || out.contains("NXDOMAIN"), "a missing Service: {out}");
    let dashed = pod_ips[0].1.replace('.', "-");
    let (ok, out) = exec(&lab, "client-1", &format!("nslookup {dashed}.default.pod.cluster.local"));
    assert!(ok && out.contains(&pod_ips[0].1), "pod record: {out}");

    // NetworkPolicy: deny all ingress to the web pods, then allow role=client, then
    // remove both; pods on other nodes and on the same node as a web pod.
    let server_pod = pod_ips.iter().find(|(n, _)| n == "server").map(|(_, ip)| ip.clone()).unwrap();
    let far_pod = pod_ips.iter().find(|(n, _)| n == "worker2").map(|(_, ip)| ip.clone()).unwrap();
    let reach = |client: &str, ip: &str| exec(&lab, client, &format!("timeout 2 wget -qO- http://{ip}:8080/")).0;
    lab.kubectl_stdin(
        &["apply", "-f", "-"],
        Some("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-web}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Ingress]\n"),
    );
    wait_for("the deny policy to block", 15, || !reach("client-1", &far_pod) && !reach("client-0", &server_pod));
    lab.kubectl_stdin(
        &["apply", "-f", "-"],
        Some("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-clients}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {role: client}}}]\n    ports: [{port: http}]\n"),
    );
    wait_for("role=client let in", 15, || reach("client-1", &far_pod) && reach("client-1", &server_pod));
    assert!(!reach("client-0", &far_pod), "client-0 has no role=client label and must stay out");
    lab.kubectl_ok(&["delete", "networkpolicy", "deny-web", "allow-clients"]);
    wait_for("traffic restored without policies", 15, || reach("client-0", &far_pod) && reach("client-0", &server_pod));

    // Scaling: who answers follows the Deployment.
    let (ok, out) = exec(&lab, "client-0", "timeout 5 wget -qO- http://echo/");
    assert!(ok, "echo with one replica: {out}");
    lab.kubectl_ok(&["scale", "deployment/echo", "--replicas=0"]);
    let gone = wait_for("echo refused once scaled to 0", 30, || {
        let (ok, out) = exec(&lab, "client-0", "timeout 3 wget -qO- http://echo/ 2>&1");
        !ok && out.contains("refused")
    });
    lab.kubectl_ok(&["scale", "deployment/echo", "--replicas=2"]);
    let back = wait_for("echo answering from two pods", 60, || {
        let (_, out) = exec(&lab, "client-1", "for i in $(seq 12); do timeout 3 wget -qO- http://echo/; done");
        out.lines().filter(|l| l.starts_with("echo-")).collect::<BTreeSet<_>>().len() == 2
    });
    eprintln!("scaled to 0: refused after {gone:?}; scaled to 2: both answering after {back:?} (pod start included)");

    // rk's table is there on every node.
    for h in 0..3 {
        let out = lab.cmd(h, "nft").args(["list", "table", "ip", "rk"]).output().unwrap();
        assert!(out.status.success(), "host {h}: {}", String::from_utf8_lossy(&out.stderr));
    }
}
