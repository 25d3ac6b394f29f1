//! Networking end to end: one `rk server` (with its agent) and two `rk agent`s, each on
//! its own lab host (network namespaces on one switch, no route out), real busybox
//! pods in real containerd. Pods reach each other across nodes; a ClusterIP Service
//! answers from pods on every node and spreads over its pods; a NodePort answers on
//! every node address; cluster DNS answers for Services (ClusterIP and headless), pods
//! and the `kubernetes` Service; scaling a Deployment changes who answers.

mod common;

use std::collections::BTreeSet;

use common::lab::{self, HOST_IPS, Lab, jsonpath, wait_for};

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
        command: ["sh", "-c", "mkdir -p /tmp/www/cgi-bin && echo $NODE > /tmp/www/index.html && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\nenv\\n' > /tmp/www/cgi-bin/env && chmod +x /tmp/www/cgi-bin/env && exec httpd -f -p 8080 -h /tmp/www"]
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
metadata: {name: web-local}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  sessionAffinity: ClientIP
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http, nodePort: 30081}]
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
kind: ConfigMap
metadata: {name: upg}
data:
  upg.sh: |
    while read -r l; do l=$(printf %s "$l" | tr -d '\r'); [ -z "$l" ] && break; done
    printf 'HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n'
    exec cat
---
apiVersion: v1
kind: Pod
metadata: {name: upg, labels: {app: upg}}
spec:
  nodeName: worker2
  containers:
  - {name: nc, image: busybox:1.35, command: ["nc", "-ll", "-p", "9000", "-e", "sh", "/cfg/upg.sh"], volumeMounts: [{name: cfg, mountPath: /cfg}]}
  volumes: [{name: cfg, configMap: {name: upg}}]
---
apiVersion: v1
kind: Service
metadata: {name: upg}
spec:
  selector: {app: upg}
  ports: [{port: 9000}]
---
apiVersion: v1
kind: Pod
metadata: {name: client-0, labels: {role: probe}}
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
    // An upstream resolver for names outside the cluster: a stub on host 2 answering
    // every A query with 192.0.2.7 (TTL 60), counting what reaches it.
    let upstream_queries = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    std::fs::write(lab.path("resolv.conf"), format!("nameserver {}\n", HOST_IPS[2])).unwrap();
    {
        let (ns, count) = (format!("/var/run/netns/{}", lab.hosts[2]), upstream_queries.clone());
        std::thread::spawn(move || {
            use hickory_server::proto::op::{Message, MessageType};
            use hickory_server::proto::rr::{RData, Record, RecordType, rdata::A};
            nix::sched::setns(std::fs::File::open(ns).unwrap(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let sock = std::net::UdpSocket::bind((HOST_IPS[2], 53)).unwrap();
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                let Ok(q) = Message::from_vec(&buf[..n]) else { continue };
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut r = Message::new(q.metadata.id, MessageType::Response, q.metadata.op_code);
                r.metadata.recursion_desired = true;
                r.metadata.recursion_available = true;
                for query in &q.queries {
                    r.add_query(query.clone());
                    if query.query_type() == RecordType::A {
                        r.answers.push(Record::from_rdata(
                            query.name().clone(),
                            60,
                            RData::A(A([192, 0, 2, 7].into())),
                        ));
                    }
                }
                let _ = sock.send_to(&r.to_vec().unwrap(), from);
            }
        });
    }
    let resolv = lab.path("resolv.conf");
    lab.spawn_server(&["--resolv-conf", resolv.to_str().unwrap()]);
    let token = lab.server_token();
    lab.spawn_agent(1, "worker", &token, &[]);
    lab.spawn_agent(2, "worker2", &token, &["--node-external-ip", HOST_IPS[2]]);
    wait_for("three nodes Ready", 90, || {
        let s = jsonpath(
            &lab,
            &["get", "nodes"],
            "{range .items[*]}{.metadata.name}={.status.conditions[?(@.type==\"Ready\")].status} {end}",
        );
        names.iter().all(|n| s.contains(&format!("{n}=True")))
    });
    let wide = lab.kubectl_ok(&["get", "node", "worker2", "-o", "wide"]);
    assert!(wide.matches(HOST_IPS[2]).count() == 2, "INTERNAL-IP and EXTERNAL-IP: {wide}");
    lab.kubectl_stdin(&["apply", "-f", "-"], Some(APPS));
    wait_for("the web pods and the clients running and ready", 120, || {
        let s = jsonpath(
            &lab,
            &["get", "pods"],
            "{range .items[*]}{.metadata.name}={.status.conditions[?(@.type==\"Ready\")].status} {end}",
        );
        s.matches("=True").count() == 7
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

    // externalTrafficPolicy Local: a node answers with its own pod only, and the pod
    // sees the client's own address. sessionAffinity ClientIP: one pod per client.
    for (i, addr) in HOST_IPS.iter().enumerate() {
        let out = lab
            .cmd(1, "timeout")
            .args(["5", "/bin/busybox", "wget", "-qO-", &format!("http://{addr}:30081/cgi-bin/env")])
            .output()
            .unwrap();
        let env = String::from_utf8_lossy(&out.stdout);
        assert!(
            env.contains(&format!("NODE={}", names[i]))
                && env.lines().any(|l| l.starts_with("REMOTE_ADDR=") && l.contains(HOST_IPS[1])),
            "Local policy on {addr}: {env}"
        );
    }
    let sticky = jsonpath(&lab, &["get", "svc", "web-local"], "{.spec.clusterIP}");
    let (ok, out) =
        exec(&lab, "client-0", &format!("for i in $(seq 15); do timeout 3 wget -qO- http://{sticky}/; done"));
    let seen: BTreeSet<&str> = out.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    assert!(ok && seen.len() == 1, "ClientIP affinity: {seen:?}");

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

    // Ingress: by Host header on every node's port 80, X-Forwarded-* to the backend,
    // 404 for an unknown host, TLS with the Secret's certificate chosen by SNI, h2 by
    // ALPN; status lists the nodes.
    let mut ca = rcgen::CertificateParams::new(vec![]).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "lab CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_cert.pem(), ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf =
        rcgen::CertificateParams::new(vec!["web.example".to_string()]).unwrap().signed_by(&leaf_key, &issuer).unwrap();
    std::fs::write(lab.path("web.crt"), leaf.pem()).unwrap();
    std::fs::write(lab.path("web.key"), leaf_key.serialize_pem()).unwrap();
    let (crt, key) = (lab.path("web.crt"), lab.path("web.key"));
    lab.kubectl_ok(&[
        "create",
        "secret",
        "tls",
        "web-tls",
        "--cert",
        crt.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    lab.kubectl_stdin(
        &["apply", "-f", "-"],
        Some("apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web}\nspec:\n  tls: [{hosts: [web.example], secretName: web-tls}]\n  rules:\n  - host: web.example\n    http:\n      paths:\n      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {name: http}}}}\n"),
    );
    let get = |from: usize, url: &str, host: &str| {
        let out = lab
            .cmd(from, "timeout")
            .args(["5", "/bin/busybox", "wget", "-qO-", "--header", &format!("Host: {host}"), url])
            .output()
            .unwrap();
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    wait_for("the Ingress routing web.example", 30, || get(1, &format!("http://{}/", HOST_IPS[0]), "web.example").0);
    for addr in HOST_IPS {
        let (ok, body) = get(1, &format!("http://{addr}/"), "web.example");
        assert!(ok && names.contains(&body.trim()), "Ingress on {addr}: {body}");
    }
    let (ok, env) = get(1, &format!("http://{}/cgi-bin/env", HOST_IPS[2]), "web.example");
    assert!(
        ok && env.contains(&format!("HTTP_X_FORWARDED_FOR={}", HOST_IPS[1]))
            && env.contains("HTTP_X_FORWARDED_PROTO=http")
            && env.contains("HTTP_X_FORWARDED_HOST=web.example"),
        "{env}"
    );
    let (ok, out) = get(1, &format!("http://{}/", HOST_IPS[0]), "nope.example");
    assert!(!ok && out.contains("404"), "unknown host: {out}");
    let ca_pem = ca_cert.pem();
    let host_ns = format!("/var/run/netns/{}", lab.hosts[1]);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let client = std::thread::spawn(move || {
        nix::sched::setns(std::fs::File::open(host_ns).unwrap(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async move {
            use rustls::pki_types::pem::PemObject;
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut roots = rustls::RootCertStore::empty();
            roots.add(rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap()).unwrap();
            let tls = |alpn: Vec<Vec<u8>>| {
                let mut c = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
                c.alpn_protocols = alpn;
                tokio_rustls::TlsConnector::from(std::sync::Arc::new(c))
            };
            let name = rustls::pki_types::ServerName::try_from("web.example").unwrap();
            let addr = format!("{}:443", HOST_IPS[0]);
            let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let mut s = tls(vec![b"http/1.1".to_vec()])
                .connect(name.clone(), tcp)
                .await
                .expect("TLS with the Ingress's certificate");
            s.write_all(b"GET / HTTP/1.1\r\nHost: web.example\r\nConnection: close\r\n\r\n").await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let s2 = tls(vec![b"h2".to_vec(), b"http/1.1".to_vec()]).connect(name, tcp).await.unwrap();
            let alpn = s2.get_ref().1.alpn_protocol().map(|p| String::from_utf8_lossy(p).to_string());
            // HTTP/2 requests on one connection, before and after the Ingress changes.
            let (mut h2, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(s2),
            )
            .await
            .unwrap();
            tokio::spawn(conn);
            let get = |h2: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>| {
                let req = http::Request::get("https://web.example/").body(http_body_util::Empty::new()).unwrap();
                let fut = h2.send_request(req);
                async move {
                    use http_body_util::BodyExt;
                    let resp = fut.await.map_err(|e| e.to_string())?;
                    let status = resp.status();
                    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
                    Ok::<_, String>(format!("{status} {}", String::from_utf8_lossy(&body).trim()))
                }
            };
            let h2_first = get(&mut h2).await;
            ready_tx.send(()).unwrap();
            let _ = go_rx.await;
            let h2_after = get(&mut h2).await;
            let status = out.lines().next().unwrap_or_default().to_string();
            let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
            (status, body, alpn, h2_first, h2_after)
        })
    });
    ready_rx.recv().unwrap();
    // Change the Ingress while that connection is open: a second host.
    lab.kubectl_stdin(
        &["apply", "-f", "-"],
        Some("apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web}\nspec:\n  tls: [{hosts: [web.example], secretName: web-tls}]\n  rules:\n  - host: web.example\n    http:\n      paths:\n      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {name: http}}}}\n  - host: other.example\n    http:\n      paths:\n      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}\n"),
    );
    wait_for("the changed Ingress", 15, || get(1, &format!("http://{}/", HOST_IPS[0]), "other.example").0);
    go_tx.send(()).unwrap();
    let (status, body, alpn, h2_first, h2_after) = client.join().unwrap();
    for r in [&h2_first, &h2_after] {
        assert!(
            r.as_ref().is_ok_and(|s| s.starts_with("200 OK") && names.iter().any(|n| s.ends_with(n))),
            "HTTP/2 through the Ingress: {r:?}"
        );
    }
    assert!(
        status.starts_with("HTTP/1.1 200") && names.iter().any(|n| body.contains(n)),
        "HTTPS through the Ingress: {status} {body}"
    );
    assert_eq!(alpn.as_deref(), Some("h2"));
    wait_for("the Ingress status", 30, || {
        jsonpath(&lab, &["get", "ingress", "web"], "{.status.loadBalancer.ingress[*].ip}").split_whitespace().count()
            == 3
    });
    // An Upgrade (as WebSocket does) passes through the Ingress: 101, then raw bytes both ways.
    lab.kubectl_stdin(
        &["apply", "-f", "-"],
        Some("apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: upg}\nspec:\n  rules:\n  - host: ws.example\n    http:\n      paths:\n      - {path: /, pathType: Prefix, backend: {service: {name: upg, port: {number: 9000}}}}\n"),
    );
    let host_ns = format!("/var/run/netns/{}", lab.hosts[1]);
    let upgraded = move || {
        let host_ns = host_ns.clone();
        std::thread::spawn(move || -> Result<String, String> {
            use std::io::{Read, Write};
            nix::sched::setns(std::fs::File::open(host_ns).unwrap(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let mut s = std::net::TcpStream::connect(format!("{}:80", HOST_IPS[0])).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
            s.write_all(b"GET /chat HTTP/1.1\r\nHost: ws.example\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
                .unwrap();
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if s.read(&mut b).map_err(|e| e.to_string())? == 0 {
                    return Err(format!("closed after {:?}", String::from_utf8_lossy(&head)));
                }
                head.push(b[0]);
            }
            let head = String::from_utf8_lossy(&head).to_string();
            if !head.starts_with("HTTP/1.1 101") {
                return Err(head);
            }
            s.write_all(b"ping\n").unwrap();
            let mut echo = [0u8; 5];
            s.read_exact(&mut echo).map_err(|e| e.to_string())?;
            Ok(String::from_utf8_lossy(&echo).to_string())
        })
        .join()
        .unwrap()
    };
    let mut last = Err(String::new());
    wait_for("an upgraded connection through the Ingress", 30, || {
        last = upgraded();
        last.as_deref() == Ok("ping\n")
    });
    let table = lab.kubectl_ok(&["get", "ingress", "web"]);
    assert!(
        table.contains("web.example") && table.contains(&HOST_IPS.join(",")) && table.contains("80, 443"),
        "{table}"
    );
    let ic = lab.kubectl_ok(&["get", "ingressclass"]);
    assert!(ic.contains("rk") && ic.contains("rk.io/ingress"), "{ic}");

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
    // Names outside the cluster go to the node's upstream (--resolv-conf), cached.
    let (ok, out) = exec(&lab, "client-0", "nslookup outside.example.");
    assert!(ok && out.contains("192.0.2.7"), "forwarded: {out}");
    let asked = upstream_queries.load(std::sync::atomic::Ordering::SeqCst);
    let (ok, out) = exec(&lab, "client-0", "nslookup outside.example.");
    assert!(ok && out.contains("192.0.2.7"), "forwarded again: {out}");
    assert_eq!(
        upstream_queries.load(std::sync::atomic::Ordering::SeqCst),
        asked,
        "the second answer comes from the cache"
    );
    // UDP through a ClusterIP, to a Service without a selector whose EndpointSlice is
    // made by hand: it points at the stub resolver on host 2.
    let manual = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: stub-dns}}\nspec:\n  ports: [{{name: dns, port: 53, protocol: UDP}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: stub-dns-1, labels: {{kubernetes.io/service-name: stub-dns}}}}\naddressType: IPv4\nendpoints: [{{addresses: [\"{}\"]}}]\nports: [{{name: dns, port: 53, protocol: UDP}}]\n",
        HOST_IPS[2]
    );
    lab.kubectl_stdin(&["apply", "-f", "-"], Some(&manual));
    let stub_ip = jsonpath(&lab, &["get", "svc", "stub-dns"], "{.spec.clusterIP}");
    wait_for("UDP through the stub-dns ClusterIP", 15, || {
        let (ok, out) = exec(&lab, "client-1", &format!("nslookup via.clusterip.example. {stub_ip}"));
        ok && out.contains("192.0.2.7")
    });
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
    // Egress: client-0 may reach the web pods on 8080 (also through their ClusterIP,
    // which is DNATed before the check), nothing else.
    let upg_ip = jsonpath(&lab, &["get", "pod", "upg"], "{.status.podIP}");
    let to_upg = |client: &str| exec(&lab, client, &format!("timeout 2 nc {upg_ip} 9000 </dev/null")).1.contains("101");
    assert!(to_upg("client-0"), "the nc backend answers before the egress policy");
    lab.kubectl_stdin(
        &["apply", "-f", "-"],
        Some("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: probe-egress}\nspec:\n  podSelector: {matchLabels: {role: probe}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{podSelector: {matchLabels: {app: web}}}]\n    ports: [{port: 8080}]\n"),
    );
    wait_for("the egress policy to block other destinations", 15, || !to_upg("client-0"));
    assert!(reach("client-0", &far_pod) && to_upg("client-1"), "allowed egress, and other pods untouched");
    let (ok, out) = exec(&lab, "client-0", &format!("timeout 3 wget -qO- http://{cip}/"));
    assert!(ok, "the web ClusterIP under the egress policy: {out}");
    lab.kubectl_ok(&["delete", "networkpolicy", "probe-egress"]);
    wait_for("egress restored", 15, || to_upg("client-0"));

    // Hairpin: a web pod calling its own Service, sometimes landing on itself.
    let own = jsonpath(
        &lab,
        &["get", "pods", "-l", "app=web", "--field-selector", "spec.nodeName=server"],
        "{.items[0].metadata.name}",
    );
    let (ok, out) =
        exec(&lab, &own, &format!("for i in $(seq 20); do timeout 3 wget -qO- http://{cip}/ || echo FAILED; done"));
    assert!(ok && !out.contains("FAILED") && out.lines().any(|l| l.trim() == "server"), "hairpin from {own}: {out}");

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

    // rk-killall.sh on worker2's host: rk, its containerd and its pods stop, and no rk
    // table, route, address or pod link is left there; the other hosts keep theirs.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/rk-killall.sh");
    let w2 = lab.path("worker2");
    let out = lab.cmd(2, "sh").arg(script).env("RK_DATA_DIR", &w2).output().unwrap();
    assert!(out.status.success(), "rk-killall.sh: {}", String::from_utf8_lossy(&out.stderr));
    let w2 = w2.to_string_lossy().to_string();
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).unwrap_or_default()).contains(&w2))
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    assert!(left.is_empty(), "processes left after rk-killall.sh: {left:?}");
    let run = |h: usize, prog: &str, args: &[&str]| {
        let o = lab.cmd(h, prog).args(args).output().unwrap();
        (o.status.success(), String::from_utf8_lossy(&o.stdout).to_string())
    };
    assert!(!run(2, "nft", &["list", "table", "ip", "rk"]).0, "rk's table is still there");
    assert_eq!(run(2, "ip", &["route", "show", "proto", "82"]).1.trim(), "", "rk's routes are still there");
    let addrs = run(2, "ip", &["-o", "addr"]).1;
    assert!(!addrs.contains("rk-dns") && !addrs.contains("10.43.0.10"), "{addrs}");
    let links = run(2, "ip", &["-o", "link"]).1;
    assert!(!links.contains("veth") && !links.contains("rk-"), "{links}");
    assert!(run(0, "nft", &["list", "table", "ip", "rk"]).0, "the server's table must stay");
}

/// `--pod-network vxlan`: the same pods reach each other and a ClusterIP across nodes
/// through rk-vxlan, pods get the smaller MTU.
#[test]
fn pods_across_nodes_over_vxlan() {
    if let Some(why) = lab::unavailable() {
        eprintln!("skipping the VXLAN test: {why}");
        return;
    }
    let mut lab = Lab::with_hosts(2);
    for n in ["server", "worker"] {
        lab::busybox_image(&lab.path(n).join("agent/images/busybox.tar"));
    }
    lab.spawn_server(&["--pod-network", "vxlan"]);
    let token = lab.server_token();
    lab.spawn_agent(1, "worker", &token, &["--pod-network", "vxlan"]);
    wait_for("two nodes Ready", 90, || {
        let s = jsonpath(
            &lab,
            &["get", "nodes"],
            "{range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status} {end}",
        );
        s.matches("True").count() == 2
    });
    let pods = r#"
apiVersion: v1
kind: Pod
metadata: {name: a, labels: {app: a}}
spec:
  nodeName: server
  containers: [{name: c, image: busybox:1.35, command: ["sh", "-c", "mkdir -p /tmp/w && echo a > /tmp/w/index.html && exec httpd -f -p 8080 -h /tmp/w"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: b, labels: {app: b}}
spec:
  nodeName: worker
  containers: [{name: c, image: busybox:1.35, command: ["sh", "-c", "mkdir -p /tmp/w && echo b > /tmp/w/index.html && exec httpd -f -p 8080 -h /tmp/w"]}]
---
apiVersion: v1
kind: Service
metadata: {name: b}
spec:
  selector: {app: b}
  ports: [{port: 80, targetPort: 8080}]
"#;
    lab.kubectl_stdin(&["apply", "-f", "-"], Some(pods));
    wait_for("both pods running", 60, || {
        jsonpath(&lab, &["get", "pods"], "{.items[*].status.phase}").matches("Running").count() == 2
    });
    let ip_of = |p: &str| jsonpath(&lab, &["get", "pod", p], "{.status.podIP}");
    let (a, b) = (ip_of("a"), ip_of("b"));
    wait_for("a reaching b over VXLAN", 30, || {
        exec(&lab, "a", &format!("timeout 2 wget -qO- http://{b}:8080/")).1.trim() == "b"
    });
    wait_for("b reaching a over VXLAN", 30, || {
        exec(&lab, "b", &format!("timeout 2 wget -qO- http://{a}:8080/")).1.trim() == "a"
    });
    wait_for("a reaching the Service b", 30, || {
        exec(&lab, "a", "timeout 2 wget -qO- http://b.default.svc.cluster.local/").1.trim() == "b"
    });
    let route = lab.cmd(0, "ip").args(["route", "show", "proto", "82"]).output().unwrap();
    let route = String::from_utf8_lossy(&route.stdout).to_string();
    assert!(route.contains("dev rk-vxlan"), "{route}");
    let (_, mtu) = exec(&lab, "a", "cat /sys/class/net/eth0/mtu");
    assert_eq!(mtu.trim(), "1450", "the pod's MTU leaves room for VXLAN");
}
