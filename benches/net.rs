//! Network benchmark (root): the service proxy and the cluster DNS, each beside a
//! baseline measured in the same run, in network namespaces this bench creates
//! (no route out) and removes:
//!
//!   client ns (10.42.1.2) ── node ns (rk's nft table, 10.42.1.1 / 10.42.2.1) ── pod ns (10.42.2.2)
//!
//! 1. Requests through a ClusterIP against the pod IP directly: short TCP connections
//!    (connect, request, response, close) per second and their latency, and bulk
//!    throughput, with 1,000 Services x 10 endpoints in the table.
//! 2. Rule sync: one endpoint change applied as a diff, against rebuilding the table.
//! 3. DNS: queries per second answered by rk's DNS, against a UDP echo on the same
//!    path (the floor of the transport).
//!
//! `cargo bench --bench net` (root). `RK_BENCH_QUICK=1` for a short run.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use rk::agent::net::dns;
use rk::agent::net::proxy::{ProxyConfig, Ruleset};

const SERVICES: usize = 1000;
const ENDPOINTS: usize = 10;

fn quick() -> bool {
    std::env::var("RK_BENCH_QUICK").is_ok()
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

struct Netns {
    names: Vec<String>,
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// Runs `f` on a thread inside namespace `ns`.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(path).unwrap();
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn service(i: usize) -> Arc<Service> {
    let ip = format!("10.43.{}.{}", 1 + i / 250, 1 + i % 250);
    Arc::new(
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("svc-{i}"), "namespace": "default"},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
        }))
        .unwrap(),
    )
}

fn slice(i: usize, ips: &[String], port: i32) -> Arc<EndpointSlice> {
    let eps: Vec<serde_json::Value> =
        ips.iter().map(|ip| serde_json::json!({"addresses": [ip], "conditions": {"ready": true}})).collect();
    Arc::new(
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("svc-{i}-x"), "namespace": "default",
                         "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
            "addressType": "IPv4", "endpoints": eps,
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        }))
        .unwrap(),
    )
}

/// Services 1..N point at made-up pods; service 0 at the real one.
fn world(extra_endpoint: bool) -> (Vec<Arc<Service>>, Vec<Arc<EndpointSlice>>) {
    let services: Vec<Arc<Service>> = (0..SERVICES).map(service).collect();
    let mut slices = vec![slice(0, &["10.42.2.2".to_string()], 8080)];
    for i in 1..SERVICES {
        let mut ips: Vec<String> =
            (0..ENDPOINTS).map(|e| format!("10.42.{}.{}", 10 + i / 200, 1 + (i % 200) + e)).collect();
        if extra_endpoint && i == SERVICES / 2 {
            ips.push("10.42.250.250".into());
        }
        slices.push(slice(i, &ips, 8080));
    }
    (services, slices)
}

fn nft(script: &str) {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "nft: {}", String::from_utf8_lossy(&out.stderr));
}

/// Short connections to `addr` from the client namespace: (per second, p50 ms, p99 ms).
fn requests(client: &str, addr: SocketAddr, n: usize) -> (f64, f64, f64) {
    in_ns(client, move || {
        let mut lat = Vec::with_capacity(n);
        let t0 = Instant::now();
        for _ in 0..n {
            let t = Instant::now();
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
            s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).unwrap();
            assert!(buf.starts_with(b"HTTP/1.0 200"));
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let rate = n as f64 / t0.elapsed().as_secs_f64();
        (rate, pct(&mut lat, 0.5), pct(&mut lat, 0.99))
    })
    .join()
    .unwrap()
}

/// Bulk download of `mib` MiB from `addr`: MiB/s.
fn bulk(client: &str, addr: SocketAddr, mib: usize) -> f64 {
    in_ns(client, move || {
        let t0 = Instant::now();
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(format!("BULK {mib}\n").as_bytes()).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0usize;
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            total += n;
        }
        assert_eq!(total, mib << 20);
        mib as f64 / t0.elapsed().as_secs_f64()
    })
    .join()
    .unwrap()
}

/// UDP queries from the client namespace, `window` in flight, for `secs`: answers/s.
fn udp_rate(client: &str, to: SocketAddr, query: Vec<u8>, secs: f64, window: usize) -> f64 {
    in_ns(client, move || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.connect(to).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let mut buf = [0u8; 1500];
        for _ in 0..window {
            sock.send(&query).unwrap();
        }
        let t0 = Instant::now();
        let mut answered = 0usize;
        while t0.elapsed().as_secs_f64() < secs {
            match sock.recv(&mut buf) {
                Ok(_) => {
                    answered += 1;
                    sock.send(&query).unwrap();
                }
                Err(_) => {
                    // A lost datagram: top the window up again.
                    for _ in 0..window {
                        sock.send(&query).unwrap();
                    }
                }
            }
        }
        answered as f64 / t0.elapsed().as_secs_f64()
    })
    .join()
    .unwrap()
}

fn main() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("the network benchmark needs root (network namespaces, nftables); skipped");
        return;
    }
    let tag = format!("rkbn{}", std::process::id());
    let (c, n, p) = (format!("{tag}-c"), format!("{tag}-n"), format!("{tag}-p"));
    let _guard = Netns { names: vec![c.clone(), n.clone(), p.clone()] };
    for ns in [&c, &n, &p] {
        ip(&["netns", "add", ns]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }
    ip(&[
        "link",
        "add",
        &format!("{tag}c"),
        "netns",
        &c,
        "type",
        "veth",
        "peer",
        "name",
        &format!("{tag}n1"),
        "netns",
        &n,
    ]);
    ip(&[
        "link",
        "add",
        &format!("{tag}p"),
        "netns",
        &p,
        "type",
        "veth",
        "peer",
        "name",
        &format!("{tag}n2"),
        "netns",
        &n,
    ]);
    let dev_c = format!("{tag}c");
    let dev_p = format!("{tag}p");
    let dev_n1 = format!("{tag}n1");
    let dev_n2 = format!("{tag}n2");
    for (ns, dev, addr) in [
        (&c, &dev_c, "10.42.1.2/24"),
        (&n, &dev_n1, "10.42.1.1/24"),
        (&n, &dev_n2, "10.42.2.1/24"),
        (&p, &dev_p, "10.42.2.2/24"),
    ] {
        ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
        ip(&["-n", ns, "link", "set", dev, "up"]);
    }
    ip(&["-n", &c, "route", "add", "10.42.0.0/16", "via", "10.42.1.1"]);
    ip(&["-n", &c, "route", "add", "10.43.0.0/16", "via", "10.42.1.1"]);
    ip(&["-n", &p, "route", "add", "10.42.0.0/16", "via", "10.42.2.1"]);
    in_ns(&n, || std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap()).join().unwrap();

    // The "pod": a tiny HTTP responder and bulk sender on :8080.
    in_ns(&p, || {
        let l = TcpListener::bind("0.0.0.0:8080").unwrap();
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 256];
                let n = s.read(&mut buf).unwrap_or(0);
                if let Some(rest) = buf[..n].strip_prefix(b"BULK ") {
                    let mib: usize = String::from_utf8_lossy(rest).trim().parse().unwrap_or(0);
                    let chunk = vec![7u8; 1 << 20];
                    for _ in 0..mib {
                        if s.write_all(&chunk).is_err() {
                            return;
                        }
                    }
                } else {
                    let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
                }
            });
        }
    });

    let cfg = ProxyConfig {
        node: "n".into(),
        cluster_cidr: "10.42.0.0/16".parse().unwrap(),
        skip_ips: vec!["10.43.0.10".parse().unwrap()],
    };
    let (services, slices) = world(false);
    let base = Ruleset::build(&cfg, &services, &slices);
    let (services2, slices2) = world(true);
    let changed = Ruleset::build(&cfg, &services2, &slices2);

    // 2. Sync: the full table, then one endpoint added and removed as diffs.
    let rounds = if quick() { 5 } else { 20 };
    let (full_ms, diff_ms, diff_lines, compute_ms) = {
        let (cfg, base, changed) = (cfg.clone(), base.clone(), changed.clone());
        in_ns(&n, move || {
            let mut full = Vec::new();
            let mut diff = Vec::new();
            let mut lines = 0;
            let mut compute = Vec::new();
            for _ in 0..rounds {
                // Baseline: the whole table, as a rebuild on every change would.
                let t = Instant::now();
                nft(&base.full(&cfg));
                full.push(t.elapsed().as_secs_f64() * 1000.0);
                // rk: recompute the rules from the objects and apply the difference, as
                // the agent does on an EndpointSlice change.
                let (svcs, sls) = world(true);
                let t = Instant::now();
                let want = Ruleset::build(&cfg, &svcs, &sls);
                let script = base.diff(&want);
                compute.push(t.elapsed().as_secs_f64() * 1000.0);
                lines = script.lines().count();
                nft(&script);
                diff.push(t.elapsed().as_secs_f64() * 1000.0);
                assert_eq!(want, changed);
            }
            (pct(&mut full, 0.5), pct(&mut diff, 0.5), lines, pct(&mut compute, 0.5))
        })
        .join()
        .unwrap()
    };
    println!(
        "rule sync, {SERVICES} Services x {ENDPOINTS} endpoints ({} chains): one endpoint change as a diff ({diff_lines} nft lines) p50 {diff_ms:.1} ms (of which recomputing the rules {compute_ms:.1} ms); baseline full rebuild p50 {full_ms:.1} ms ({:.1}x)",
        base.chains.len(),
        full_ms / diff_ms
    );

    // 1. Requests: direct to the pod, and through the ClusterIP, with the table loaded.
    {
        let (cfg, base) = (cfg.clone(), base.clone());
        in_ns(&n, move || nft(&base.full(&cfg))).join().unwrap();
    }
    let nreq = if quick() { 500 } else { 5000 };
    let direct: SocketAddr = "10.42.2.2:8080".parse().unwrap();
    let cip: SocketAddr = "10.43.1.1:80".parse().unwrap();
    // Warm up both paths, then alternate so noise hits both.
    let _ = requests(&c, direct, 100);
    let _ = requests(&c, cip, 100);
    let mut d = Vec::new();
    let mut s = Vec::new();
    for _ in 0..3 {
        d.push(requests(&c, direct, nreq / 3));
        s.push(requests(&c, cip, nreq / 3));
    }
    let best = |v: &[(f64, f64, f64)]| {
        v.iter().cloned().fold((0.0f64, f64::MAX, f64::MAX), |a, b| (a.0.max(b.0), a.1.min(b.1), a.2.min(b.2)))
    };
    let (dr, dp50, dp99) = best(&d);
    let (sr, sp50, sp99) = best(&s);
    println!(
        "short connections: through the ClusterIP {sr:.0}/s (p50 {sp50:.3} ms, p99 {sp99:.3} ms); baseline direct to the pod {dr:.0}/s (p50 {dp50:.3} ms, p99 {dp99:.3} ms): {:.1}% of direct",
        100.0 * sr / dr
    );
    let mib = if quick() { 256 } else { 2048 };
    let bd = bulk(&c, direct, mib);
    let bs = bulk(&c, cip, mib);
    let bd2 = bulk(&c, direct, mib);
    let bs2 = bulk(&c, cip, mib);
    let (bd, bs) = (bd.max(bd2), bs.max(bs2));
    println!(
        "bulk: through the ClusterIP {bs:.0} MiB/s; baseline direct {bd:.0} MiB/s: {:.1}% of direct",
        100.0 * bs / bd
    );

    // 3. DNS: rk's handler at 10.43.0.10 in the node namespace (1,000 Services in its
    //    cache), and a UDP echo at 10.43.0.11 on the same path.
    let (svc_store, mut w1) = kube::runtime::reflector::store::<Service>();
    for s in &services {
        w1.apply_watcher_event(&kube::runtime::watcher::Event::Apply((**s).clone()));
    }
    let (slice_store, mut w2) = kube::runtime::reflector::store::<EndpointSlice>();
    for s in &slices {
        w2.apply_watcher_event(&kube::runtime::watcher::Event::Apply((**s).clone()));
    }
    let sources = Arc::new(dns::Sources { services: svc_store, slices: slice_store });
    ip(&["-n", &n, "addr", "add", "10.43.0.10/32", "dev", "lo"]);
    ip(&["-n", &n, "addr", "add", "10.43.0.11/32", "dev", "lo"]);
    in_ns(&n, move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let udp = tokio::net::UdpSocket::bind("10.43.0.10:53").await.unwrap();
            let tcp = tokio::net::TcpListener::bind("10.43.0.10:53").await.unwrap();
            dns::serve(dns::Handler::new(sources, "cluster.local", vec![]), udp, tcp).await;
        })
    });
    in_ns(&n, || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let sock = tokio::net::UdpSocket::bind("10.43.0.11:53").await.unwrap();
            let mut buf = [0u8; 1500];
            loop {
                if let Ok((n, from)) = sock.recv_from(&mut buf).await {
                    let _ = sock.send_to(&buf[..n], from).await;
                }
            }
        })
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut q = hickory_server::proto::op::Message::query();
    q.metadata.id = 7;
    q.metadata.recursion_desired = true;
    q.add_query(hickory_server::proto::op::Query::query(
        hickory_server::proto::rr::Name::from_ascii("svc-500.default.svc.cluster.local.").unwrap(),
        hickory_server::proto::rr::RecordType::A,
    ));
    let query = q.to_vec().unwrap();
    let secs = if quick() { 1.0 } else { 3.0 };
    let mut dq = Vec::new();
    let mut eq = Vec::new();
    for _ in 0..2 {
        dq.push(udp_rate(&c, "10.43.0.10:53".parse().unwrap(), query.clone(), secs, 32));
        eq.push(udp_rate(&c, "10.43.0.11:53".parse().unwrap(), query.clone(), secs, 32));
    }
    let dq = dq.into_iter().fold(0.0, f64::max);
    let eq = eq.into_iter().fold(0.0, f64::max);
    println!(
        "DNS: rk answered {dq:.0} queries/s (A of a Service, {SERVICES} Services cached, 32 in flight); baseline UDP echo on the same path {eq:.0}/s: {:.1}% of the transport's rate",
        100.0 * dq / eq
    );
}
