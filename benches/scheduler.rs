//! Control-plane benchmark on simulated nodes: how fast a Deployment's pods are created,
//! scheduled and reported Running, at several cluster sizes, and the server's memory at
//! the end. rk's server runs in this process (API, store, controllers, scheduler); the
//! simulated nodes are the real `rk agent --simulate N` in a child process, joined
//! with the server's token over HTTPS. Progress is followed through a watch, as a
//! controller would, so the measuring costs the server one event stream.
//!
//! `cargo bench --bench scheduler` (`RK_BENCH_QUICK=1` for 100 nodes only;
//! `RK_BENCH_RUNS=100:3000,1000:30000` chooses nodes:pods per run). The anchor is
//! kube-scheduler's published ~100 pods/s at 5,000 nodes (no Kubernetes can run here to
//! measure it in the same run).

mod common;

use common::rss_mib;
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use rk::server::{self, ServerConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

async fn client(yaml: &str) -> kube::Client {
    let kc = kube::config::Kubeconfig::from_yaml(yaml).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
    kube::Client::try_from(cfg).unwrap()
}

fn deployment(name: &str, replicas: usize) -> Deployment {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "c", "image": "busybox",
                                        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}}
    }))
    .unwrap()
}

/// The simulated nodes' process, ended when dropped.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The pod network: a /24 for each of up to 16,384 nodes, clear of the Service range.
const CLUSTER_CIDR: &str = "10.64.0.0/10";

fn simulated_nodes(addr: std::net::SocketAddr, token: &str, dir: &std::path::Path, n: usize) -> Agent {
    let child = Command::new(env!("CARGO_BIN_EXE_rk"))
        .args(["agent", "--config", "/dev/null", "--node-name", "sim", "--cluster-cidr", CLUSTER_CIDR])
        .args(["--simulate-cpu", "8", "--simulate-memory", "32Gi", "--simulate-pods", "110"])
        .arg("--simulate")
        .arg(n.to_string())
        .arg("--join")
        .arg(format!("https://{addr}"))
        .arg("--token")
        .arg(token)
        .arg("--data-dir")
        .arg(dir)
        .env_remove("RK_URL")
        .env_remove("RK_TOKEN")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.with_extension("log")).expect("the agent's log file"))
        .spawn()
        .expect("starting rk agent --simulate");
    Agent(child)
}

/// When all `want` pods of `app` were first seen bound, and then Running, by a watch.
async fn follow(pods: Api<Pod>, app: &str, want: usize, t0: Instant) -> (Duration, Duration) {
    let cfg = watcher::Config::default().labels(&format!("app={app}"));
    let mut stream = watcher(pods, cfg).default_backoff().applied_objects().boxed();
    let mut seen: HashMap<String, (bool, bool)> = HashMap::new();
    let mut bound_at = None;
    let (mut n_bound, mut n_running) = (0usize, 0usize);
    while let Some(ev) = stream.next().await {
        let Ok(p) = ev else { continue };
        let bound = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
        let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        // Counted as they change: a count over every pod per event would load the
        // process that also runs the server.
        let was = seen.insert(p.metadata.name.unwrap_or_default(), (bound, running)).unwrap_or((false, false));
        n_bound = n_bound + usize::from(bound) - usize::from(was.0);
        n_running = n_running + usize::from(running) - usize::from(was.1);
        if bound_at.is_none() && n_bound >= want {
            bound_at = Some(t0.elapsed());
        }
        if let Some(b) = bound_at
            && n_running >= want
        {
            return (b, t0.elapsed());
        }
        assert!(t0.elapsed() < Duration::from_secs(1800), "{app}: not done after 1800 s");
    }
    panic!("{app}: the watch ended");
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let quick = std::env::var_os("RK_BENCH_QUICK").is_some();
    let runs: Vec<(usize, usize)> = std::env::var("RK_BENCH_RUNS")
        .ok()
        .map(|s| {
            s.split(',')
                .filter_map(|r| {
                    let (n, p) = r.trim().split_once(':')?;
                    Some((n.parse().ok()?, p.parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_else(|| if quick { vec![(100, 1000)] } else { vec![(100, 3000), (1000, 3000), (1000, 30000)] });
    let base = std::env::var("RK_BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(|_| std::env::temp_dir());

    println!(
        "| nodes | pods | nodes Ready, s | pods scheduled, s | scheduling pods/s | all Running, s | server RSS, MiB | simulated nodes RSS, MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for &(n, pods_n) in &runs {
        let dir = tempfile::tempdir_in(&base).unwrap();
        let mut cfg = ServerConfig::loopback(dir.path());
        cfg.cluster_cidr = CLUSTER_CIDR.parse().unwrap();
        let shutdown = CancellationToken::new();
        let running = server::start(&cfg, shutdown.clone(), &TaskTracker::new()).await.unwrap();
        let c = client(&running.kubeconfig).await;

        let t0 = Instant::now();
        let agent_dir = dir.path().join("agent");
        let mut agent = simulated_nodes(running.addr, &running.identity.token, &agent_dir, n);
        let nodes: Api<Node> = Api::all(c.clone());
        loop {
            if let Ok(Some(st)) = agent.0.try_wait() {
                let log = std::fs::read_to_string(agent_dir.with_extension("log")).unwrap_or_default();
                panic!("rk agent --simulate ended ({st}):\n{log}");
            }
            if nodes.list(&ListParams::default()).await.unwrap().items.len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ready = t0.elapsed();

        let deps: Api<Deployment> = Api::namespaced(c.clone(), "default");
        let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
        let t1 = Instant::now();
        let progress = tokio::spawn(follow(pods, "bench", pods_n, t1));
        deps.create(&PostParams::default(), &deployment("bench", pods_n)).await.unwrap();
        let (sched, run) = progress.await.unwrap();
        println!(
            "| {n} | {pods_n} | {:.1} | {:.1} | {:.0} | {:.1} | {:.0} | {:.0} |",
            ready.as_secs_f64(),
            sched.as_secs_f64(),
            pods_n as f64 / sched.as_secs_f64(),
            run.as_secs_f64(),
            rss_mib(std::process::id()),
            rss_mib(agent.0.id()),
        );
        drop(agent);
        shutdown.cancel();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("\nAnchor: kube-scheduler publishes ~100 pods/s at 5,000 nodes.");
}
