//! API and store benchmark: prints a table of rk's figures beside etcd 3.4 measured in
//! the same run, on the same disk, alternating rounds (the machine is noisy).
//!
//! `cargo bench --bench api` (set `RK_BENCH_QUICK=1` for a short run). etcd is Debian's
//! `etcd-server`, driven over its HTTP/JSON gateway on 127.0.0.1 with 1 KiB values; rk
//! is driven over HTTPS with kube-rs, creating ConfigMaps holding 1 KiB. Both ack only
//! durable writes. No asserts: this prints figures.

mod common;

use common::rss_mib;
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use kube::core::ObjectMeta;
use rk::embedded::Storage;
use rk::server::{self, ServerConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

fn quick() -> bool {
    std::env::var_os("RK_BENCH_QUICK").is_some()
}

fn cm(name: String) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta { name: Some(name), ..Default::default() },
        data: Some(BTreeMap::from([("v".to_string(), "x".repeat(1024))])),
        ..Default::default()
    }
}

/// Runs `total` operations over `conc` tasks; returns operations per second.
async fn rate<F, Fut>(conc: usize, total: usize, op: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let tasks: Vec<_> = (0..conc)
        .map(|_| {
            let (op, next) = (op.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return;
                    }
                    op(i).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    total as f64 / t.elapsed().as_secs_f64()
}

/// One keep-alive HTTPS (HTTP/1.1) connection to rk with the admin certificate: the same
/// minimal client shape etcd gets, so client overhead does not decide the comparison.
struct RkConn(tokio::sync::Mutex<hyper::client::conn::http1::SendRequest<Full<Bytes>>>);

fn rk_tls(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<_> = CertificateDer::pem_slice_iter(cert_pem.as_bytes()).map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    Arc::new(cfg)
}

impl RkConn {
    async fn new(addr: std::net::SocketAddr, tls: Arc<rustls::ClientConfig>) -> RkConn {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let s = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s)).await.unwrap();
        tokio::spawn(conn);
        RkConn(tokio::sync::Mutex::new(send))
    }

    async fn call(&self, method: &str, path: &str, body: Bytes) -> u16 {
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "127.0.0.1")
            .header("content-type", "application/json")
            .body(Full::new(body))
            .unwrap();
        let mut s = self.0.lock().await;
        let r = s.send_request(req).await.unwrap();
        let code = r.status().as_u16();
        let _ = r.into_body().collect().await;
        code
    }
}

async fn rk_conns(running: &rk::server::Running, n: usize) -> Arc<Vec<RkConn>> {
    let id = &running.identity;
    let tls = rk_tls(&id.ca.cert_pem, &id.admin.cert_pem, &id.admin.key_pem);
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(RkConn::new(running.addr, tls.clone()).await);
    }
    Arc::new(v)
}

/// GETs/s of one object, 64 in flight over `conns`.
async fn gets_per_s(conns: Arc<Vec<RkConn>>, gets: usize) -> f64 {
    rate(64, gets, move |i| {
        let conns = conns.clone();
        async move {
            assert_eq!(
                conns[i % conns.len()].call("GET", "/api/v1/namespaces/default/configmaps/s0-0", Bytes::new()).await,
                200
            );
        }
    })
    .await
}

fn cm_body(name: &str) -> Bytes {
    Bytes::from(serde_json::to_vec(&cm(name.to_string())).unwrap())
}

/// Durable creates/s through rk's HTTPS API.
async fn rk_create_rate(running: &rk::server::Running, ns: &str, conc: usize, total: usize, tag: String) -> f64 {
    let conns = rk_conns(running, conc).await;
    let path = format!("/api/v1/namespaces/{ns}/configmaps");
    rate(conc, total, move |i| {
        let (conns, path, tag) = (conns.clone(), path.clone(), tag.clone());
        async move {
            let code = conns[i % conns.len()].call("POST", &path, cm_body(&format!("{tag}-{i}"))).await;
            assert_eq!(code, 201, "create failed");
        }
    })
    .await
}

struct Etcd {
    child: Child,
    _dir: tempfile::TempDir,
    port: u16,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn start_etcd(base: &std::path::Path) -> Option<Etcd> {
    let dir = tempfile::tempdir_in(base).ok()?;
    let (port, peer) = (free_port(), free_port());
    let child = Command::new("etcd")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen-client-urls", &format!("http://127.0.0.1:{port}")])
        .args(["--advertise-client-urls", &format!("http://127.0.0.1:{port}")])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args(["--initial-cluster", &format!("default=http://127.0.0.1:{peer}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let e = Etcd { child, _dir: dir, port };
    for _ in 0..100 {
        if let Ok(c) = EtcdConn::new(e.port).await
            && etcd_put(&c, "probe", &[0]).await
        {
            return Some(e);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// One keep-alive HTTP/1.1 connection to etcd's gateway.
struct EtcdConn(tokio::sync::Mutex<hyper::client::conn::http1::SendRequest<Full<Bytes>>>);

impl EtcdConn {
    async fn new(port: u16) -> std::io::Result<EtcdConn> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        tcp.set_nodelay(true)?;
        let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok(EtcdConn(tokio::sync::Mutex::new(send)))
    }
}

async fn etcd_put(c: &EtcdConn, key: &str, value: &[u8]) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD;
    let body = serde_json::json!({"key": b64.encode(key), "value": b64.encode(value)}).to_string();
    let req = http::Request::post("/v3/kv/put").header("host", "127.0.0.1").body(Full::new(Bytes::from(body))).unwrap();
    let mut s = c.0.lock().await;
    match s.send_request(req).await {
        Ok(r) => {
            let ok = r.status().is_success();
            let _ = r.into_body().collect().await;
            ok
        }
        Err(_) => false,
    }
}

async fn etcd_rate(port: u16, conc: usize, total: usize, round: usize) -> f64 {
    let mut conns = Vec::new();
    for _ in 0..conc {
        conns.push(Arc::new(EtcdConn::new(port).await.unwrap()));
    }
    let conns = Arc::new(conns);
    let value = vec![b'x'; 1024];
    rate(conc, total, move |i| {
        let (conns, value) = (conns.clone(), value.clone());
        async move {
            let c = &conns[i % conns.len()];
            assert!(etcd_put(c, &format!("/bench/{round}/{i}"), &value).await, "etcd put failed");
        }
    })
    .await
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Idle RSS of a fresh `rk server` process (the release binary next to this bench).
async fn idle_rss(base: &std::path::Path) -> Option<f64> {
    let exe = std::env::current_exe().ok()?.parent()?.parent()?.join("rk");
    let dir = tempfile::tempdir_in(base).ok()?;
    let kc = dir.path().join("kc.yaml");
    let mut child = Command::new(exe)
        .args([
            "server",
            "--disable-agent",
            "--bind-address",
            "127.0.0.1",
            "--https-listen-port",
            "0",
            "--config",
            "/dev/null",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--write-kubeconfig")
        .arg(&kc)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    for _ in 0..100 {
        if kc.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = rss_mib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    Some(rss)
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let base = std::env::var("RK_BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(|_| std::env::temp_dir());
    let rounds = if quick() { 1 } else { 3 };
    let (n1, n64) = if quick() { (300, 3000) } else { (1500, 12000) };

    let dir = tempfile::tempdir_in(&base).unwrap();
    let cfg = ServerConfig::loopback(dir.path());
    let shutdown = CancellationToken::new();
    let running = server::start(&cfg, shutdown.clone(), &TaskTracker::new()).await.unwrap();
    let kc = kube::config::Kubeconfig::from_yaml(&running.kubeconfig).unwrap();
    let kcfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
    let client = kube::Client::try_from(kcfg).unwrap();
    if std::env::var_os("RK_BENCH_PROFILE").is_some() {
        // Only the 64-client create load, for a profiler to watch.
        let conc: usize = std::env::var("RK_BENCH_CONC").ok().and_then(|c| c.parse().ok()).unwrap_or(64);
        let total = if conc == 1 { 3000 } else { 40_000 };
        let r = rk_create_rate(&running, "default", conc, total, "p".into()).await;
        println!("durable creates/s, {conc} clients: {r:.0}");
        let store = running.store.clone();
        let v = Bytes::from(vec![b'x'; 1024]);
        let r = rate(conc, total, move |i| {
            let (store, v) = (store.clone(), v.clone());
            async move {
                store.create(&format!("/bench/p/{i}"), v).await.unwrap();
            }
        })
        .await;
        println!("durable puts/s, store only, {conc} writers: {r:.0}");
        return;
    }
    let etcd = start_etcd(&base).await;
    if etcd.is_none() {
        eprintln!("etcd not found or did not start: baseline column left empty (apt-get install etcd-server)");
    }

    let mut rk1 = Vec::new();
    let mut rk64 = Vec::new();
    let mut et1 = Vec::new();
    let mut et64 = Vec::new();
    let mut st1 = Vec::new();
    let mut st64 = Vec::new();
    for round in 0..rounds {
        // Alternate rk and etcd within each round.
        rk1.push(rk_create_rate(&running, "default", 1, n1, format!("s{round}")).await);
        if let Some(e) = &etcd {
            et1.push(etcd_rate(e.port, 1, n1, round * 2).await);
        }
        rk64.push(rk_create_rate(&running, "default", 64, n64, format!("c{round}")).await);
        if let Some(e) = &etcd {
            et64.push(etcd_rate(e.port, 64, n64, round * 2 + 1).await);
        }
        // The store alone, without HTTP: what the durable write path itself does.
        let store = running.store.clone();
        let v = Bytes::from(vec![b'x'; 1024]);
        st1.push(
            rate(1, n1, {
                let (store, v) = (store.clone(), v.clone());
                move |i| {
                    let (store, v) = (store.clone(), v.clone());
                    async move {
                        store.create(&format!("/bench/s1/{round}/{i}"), v).await.unwrap();
                    }
                }
            })
            .await,
        );
        st64.push(
            rate(64, n64, move |i| {
                let (store, v) = (store.clone(), v.clone());
                async move {
                    store.create(&format!("/bench/s64/{round}/{i}"), v).await.unwrap();
                }
            })
            .await,
        );
    }

    // GET throughput on one object, 64 in flight over 16 connections.
    let conns = rk_conns(&running, 16).await;
    let gets = if quick() { 10000 } else { 60000 };
    let get_rate = gets_per_s(conns, gets).await;

    // The same GETs as a user RBAC authorizes (view, through a RoleBinding), beside
    // the admin's (system:masters, no RBAC lookup): what authorization costs.
    let rb = Bytes::from_static(
        br#"{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"RoleBinding","metadata":{"name":"bench-view"},
             "roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"view"},
             "subjects":[{"apiGroup":"rbac.authorization.k8s.io","kind":"User","name":"bench-viewer"}]}"#,
    );
    let admin1 = rk_conns(&running, 1).await;
    assert_eq!(
        admin1[0].call("POST", "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings", rb).await,
        201
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let viewer = rk::server::tls::issue_client_cert(&running.identity.ca, "bench-viewer", &[]).unwrap();
    let vtls = rk_tls(&running.identity.ca.cert_pem, &viewer.cert_pem, &viewer.key_pem);
    let mut vconns = Vec::new();
    for _ in 0..16 {
        vconns.push(RkConn::new(running.addr, vtls.clone()).await);
    }
    let vconns = Arc::new(vconns);
    let viewer_get_rate = gets_per_s(vconns, gets).await;

    // The same admin GETs against a second server that writes every request to an
    // audit log at Metadata level: what auditing costs.
    let adir = tempfile::tempdir_in(&base).unwrap();
    let mut acfg = ServerConfig::loopback(adir.path());
    acfg.audit = Some(rk::server::audit::AuditConfig {
        path: adir.path().join("audit.log"),
        policy: Arc::new(rk::server::audit::Policy::metadata_for_all()),
        max_age_days: 0,
        max_backups: 0,
        max_size_mb: 0,
    });
    let ashutdown = CancellationToken::new();
    let audited = server::start(&acfg, ashutdown.clone(), &TaskTracker::new()).await.unwrap();
    rk_create_rate(&audited, "default", 1, 1, "s0".into()).await;
    let audited_get_rate = gets_per_s(rk_conns(&audited, 16).await, gets).await;
    let plain_get_rate = gets_per_s(rk_conns(&running, 16).await, gets).await;
    let audit_lines = std::fs::read_to_string(adir.path().join("audit.log")).map(|t| t.lines().count()).unwrap_or(0);
    ashutdown.cancel();

    // LIST latency of 10,000 objects in their own namespace.
    let nsb = Bytes::from_static(br#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"list"}}"#);
    rk_conns(&running, 1).await[0].call("POST", "/api/v1/namespaces", nsb).await;
    rk_create_rate(&running, "list", 64, 10_000, "l".into()).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "list");
    let count = api.list(&ListParams::default()).await.unwrap().items.len();
    let mut lat = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let l = api.list(&ListParams::default()).await.unwrap();
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(l.items.len(), count);
    }

    // Watch fan-out: 1,000 watchers, 50 writes; time until every watcher has all.
    let watchers = if quick() { 200 } else { 1000 };
    let writes = 50;
    let wns = "default";
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), wns);
    let start_rv = api.list(&ListParams::default().limit(1)).await.unwrap().metadata.resource_version.unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..watchers {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), wns);
        let (rv, done) = (start_rv.clone(), done.clone());
        let mut s = api.watch(&WatchParams::default().labels("fan=out").timeout(120), &rv).await.unwrap().boxed();
        handles.push(tokio::spawn(async move {
            let mut n = 0;
            while let Some(Ok(ev)) = s.next().await {
                if let WatchEvent::Added(_) = ev {
                    n += 1;
                    if n == writes {
                        done.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        }));
    }
    let t = Instant::now();
    for i in 0..writes {
        let mut c = cm(format!("fan-{i}"));
        c.metadata.labels = Some(BTreeMap::from([("fan".to_string(), "out".to_string())]));
        api.create(&PostParams::default(), &c).await.unwrap();
    }
    for h in handles {
        let _ = tokio::time::timeout(Duration::from_secs(60), h).await;
    }
    let fan = t.elapsed().as_secs_f64();
    let delivered = done.load(Ordering::Relaxed);

    let rss = idle_rss(&base).await;
    shutdown.cancel();

    let fmt_e = |v: &Vec<f64>| if v.is_empty() { "-".to_string() } else { format!("{:.0}", median(v.clone())) };
    let ratio = |a: &Vec<f64>, b: &Vec<f64>| {
        if b.is_empty() { "-".to_string() } else { format!("{:.2}x", median(a.clone()) / median(b.clone())) }
    };
    println!();
    println!("| figure (median of {rounds} alternating rounds) | rk | etcd 3.4 (same run) | rk / etcd |");
    println!("|---|---|---|---|");
    println!(
        "| durable creates/s, 1 client (HTTPS API vs etcd gateway) | {} | {} | {} |",
        fmt_e(&rk1),
        fmt_e(&et1),
        ratio(&rk1, &et1)
    );
    println!("| durable creates/s, 64 clients | {} | {} | {} |", fmt_e(&rk64), fmt_e(&et64), ratio(&rk64, &et64));
    println!("| durable puts/s, store only, 1 writer | {} | {} | {} |", fmt_e(&st1), fmt_e(&et1), ratio(&st1, &et1));
    println!(
        "| durable puts/s, store only, 64 writers | {} | {} | {} |",
        fmt_e(&st64),
        fmt_e(&et64),
        ratio(&st64, &et64)
    );
    println!("| GETs/s, 64 in flight | {get_rate:.0} | | |");
    println!(
        "| GETs/s, 64 in flight, as a user RBAC authorizes (admin's above, same run) | {viewer_get_rate:.0} | | {:.2}x of admin |",
        viewer_get_rate / get_rate
    );
    println!(
        "| GETs/s, 64 in flight, audit log at Metadata ({audit_lines} Events; unaudited {plain_get_rate:.0} just after) | {audited_get_rate:.0} | | {:.2}x of unaudited |",
        audited_get_rate / plain_get_rate
    );
    println!("| LIST of {count} objects, median ms | {:.1} | | |", median(lat));
    println!(
        "| watch fan-out: {writes} writes to {watchers} watchers, s until all delivered ({delivered} complete) | {fan:.2} | | |"
    );
    if let Some(r) = rss {
        println!("| idle server RSS, MiB (fresh process, release build) | {r:.1} | | |");
    }
}
