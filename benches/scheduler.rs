//! Control-plane benchmark on simulated nodes: how fast a Deployment's pods are created,
//! scheduled and reported Running, at several cluster sizes, and the process's memory
//! at the end. rk runs in-process (API, store, controllers, scheduler) with the
//! simulated nodes in the same process, talking to it over HTTPS as `rk agent
//! --simulate` does.
//!
//! `cargo bench --bench scheduler` (`RK_BENCH_QUICK=1` for 100 nodes only;
//! `RK_BENCH_NODES=100,1000,5000` and `RK_BENCH_PODS=3000` to choose). The anchor is
//! kube-scheduler's published ~100 pods/s at 5,000 nodes (no Kubernetes can run here to
//! measure it in the same run).

mod common;

use common::rss_mib;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use rk::agent::simulate::{self, SimConfig};
use rk::server::{self, ServerConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

async fn client(yaml: &str) -> kube::Client {
    let kc = kube::config::Kubeconfig::from_yaml(yaml).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
    kube::Client::try_from(cfg).unwrap()
}

fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "c", "image": "busybox",
                                        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}}
    }))
    .unwrap()
}

/// Polls until `want` pods of `app` satisfy `pred`; returns the elapsed time.
async fn until(pods: &Api<Pod>, app: &str, want: usize, t0: Instant, pred: impl Fn(&Pod) -> bool) -> Duration {
    loop {
        let l = pods.list(&ListParams::default().labels(&format!("app={app}"))).await.unwrap();
        if l.items.iter().filter(|p| pred(p)).count() >= want {
            return t0.elapsed();
        }
        if t0.elapsed() > Duration::from_secs(600) {
            panic!("{app}: not done after 600 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let quick = std::env::var_os("RK_BENCH_QUICK").is_some();
    let sizes: Vec<usize> = std::env::var("RK_BENCH_NODES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| if quick { vec![100] } else { vec![100, 1000] });
    let pods_n: i32 =
        std::env::var("RK_BENCH_PODS").ok().and_then(|p| p.parse().ok()).unwrap_or(if quick { 1000 } else { 3000 });
    let base = std::env::var("RK_BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(|_| std::env::temp_dir());

    println!(
        "| nodes | pods | nodes Ready, s | pods scheduled, s | scheduling pods/s | all Running, s | process RSS, MiB |"
    );
    println!("|---|---|---|---|---|---|---|");
    for &n in &sizes {
        let dir = tempfile::tempdir_in(&base).unwrap();
        let cfg = ServerConfig::loopback(dir.path());
        let shutdown = CancellationToken::new();
        let running = server::start(&cfg, shutdown.clone(), &TaskTracker::new()).await.unwrap();
        let c = client(&running.kubeconfig).await;

        let t0 = Instant::now();
        let sim = SimConfig {
            count: n,
            prefix: "sim".into(),
            cpu: "8".into(),
            memory: "32Gi".into(),
            pods: 110,
            run_for: Duration::from_secs(5),
            cluster_cidr: cfg.cluster_cidr,
        };
        let sim_client = client(&running.kubeconfig).await;
        let stop = shutdown.clone();
        tokio::spawn(async move { simulate::run(sim_client, sim, stop).await });
        let nodes: Api<Node> = Api::all(c.clone());
        loop {
            if nodes.list(&ListParams::default()).await.unwrap().items.len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let ready = t0.elapsed();

        let deps: Api<Deployment> = Api::namespaced(c.clone(), "default");
        let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
        let t1 = Instant::now();
        deps.create(&PostParams::default(), &deployment("bench", pods_n)).await.unwrap();
        let want = pods_n as usize;
        let sched =
            until(&pods, "bench", want, t1, |p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()).await;
        let run =
            until(&pods, "bench", want, t1, |p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .await;
        println!(
            "| {n} | {pods_n} | {:.1} | {:.1} | {:.0} | {:.1} | {:.0} |",
            ready.as_secs_f64(),
            sched.as_secs_f64(),
            f64::from(pods_n) / sched.as_secs_f64(),
            run.as_secs_f64(),
            rss_mib(std::process::id())
        );
        shutdown.cancel();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("\nAnchor: kube-scheduler publishes ~100 pods/s at 5,000 nodes.");
}
