//! Pod start latency on a real node: `rk server --disable-agent` on one lab host and
//! `rk agent` on another (network namespaces with no route out, as the e2e test),
//! each pod a busybox container in the agent's containerd. Printed beside `ctr run -d`
//! of the same image on the same containerd, measured in the same run. Also the idle
//! agent's RSS (containerd not counted). Needs root; `RK_BENCH_QUICK=1` runs fewer pods.

mod common;
#[path = "../tests/common/lab.rs"]
#[allow(dead_code)]
mod lab;

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"bench": "pods"}},
        "spec": {"nodeName": "worker", "terminationGracePeriodSeconds": 0,
                 "containers": [{"name": "c", "image": "busybox:1.35", "command": ["sleep", "3600"]}]},
    }))
    .unwrap()
}

/// Creates the pods named, all at once, and returns each one's create→Running time (ms).
async fn start_pods(api: &Api<Pod>, names: &[String]) -> Vec<f64> {
    let mut stream = watcher(api.clone(), watcher::Config::default().labels("bench=pods")).applied_objects().boxed();
    let mut started = std::collections::HashMap::new();
    let creates = names.iter().map(|n| {
        let api = api.clone();
        let p = pod(n);
        async move {
            let t = Instant::now();
            api.create(&PostParams::default(), &p).await.expect("create");
            (p.metadata.name.unwrap(), t)
        }
    });
    for (n, t) in futures::future::join_all(creates).await {
        started.insert(n, t);
    }
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while seen.len() < names.len() && Instant::now() < deadline {
        let Some(Ok(p)) = stream.next().await else { continue };
        let n = p.metadata.name.clone().unwrap_or_default();
        let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        if running
            && let Some(t) = started.get(&n)
            && seen.insert(n.clone())
        {
            out.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    out
}

/// `ctr run -d` of the bench image as container `id` on the agent's containerd.
fn ctr_run(sock: &str, id: &str) -> std::process::Command {
    let mut c = std::process::Command::new("ctr");
    c.args([
        "-a",
        sock,
        "-n",
        "k8s.io",
        "run",
        "-d",
        "--null-io",
        "docker.io/library/busybox:1.35",
        id,
        "sleep",
        "3600",
    ]);
    c
}

/// Kills and removes the containers `<prefix>-0..n` made with `ctr run`.
fn ctr_remove(sock: &str, prefix: &str, n: usize) {
    let ctr = |args: &[&str]| {
        let _ = std::process::Command::new("ctr").args(["-a", sock, "-n", "k8s.io"]).args(args).output();
    };
    for i in 0..n {
        let id = format!("{prefix}-{i}");
        ctr(&["task", "kill", "-s", "KILL", &id]);
        std::thread::sleep(Duration::from_millis(50));
        ctr(&["task", "delete", &id]);
        ctr(&["container", "delete", &id]);
    }
}

fn main() {
    if let Some(why) = lab::unavailable() {
        eprintln!("pods bench skipped: {why}");
        return;
    }
    let quick = std::env::var("RK_BENCH_QUICK").is_ok();
    let serial = if quick { 20 } else { 100 };
    let burst = 20;
    let mut lab = lab::Lab::new();
    lab::busybox_image(&lab.path("worker").join("agent/images/busybox.tar"));
    let kubeconfig = lab.path("kubeconfig.yaml");
    lab.spawn_server(&["--disable-agent"]);
    let token = lab.server_token();
    let worker_dir = lab.path("worker");
    let spawned = Instant::now();
    let agent = lab.spawn_worker(&token);
    // This process joins host 0's network namespace (threads made after this inherit it).
    let ns = std::fs::File::open(format!("/var/run/netns/{}", lab.hosts[0])).unwrap();
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("entering the lab namespace");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
        let client = kube::Client::try_from(cfg).unwrap();
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
        loop {
            let ready = nodes
                .get_opt("worker")
                .await
                .ok()
                .flatten()
                .and_then(|n| n.status?.conditions)
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            if ready || spawned.elapsed() > Duration::from_secs(60) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let join_to_ready = spawned.elapsed();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let idle_rss = common::rss_mib(agent);
        let (anon, file) = (common::status_mib(agent, "RssAnon:"), common::status_mib(agent, "RssFile:"));

        // Baseline: ctr run -d of the same image on the agent's containerd.
        let sock = worker_dir.join("run/containerd/containerd.sock");
        let sock = sock.to_str().unwrap().to_string();
        let mut ctr = Vec::new();
        for i in 0..burst {
            let id = format!("bench-ctr-{i}");
            let t = Instant::now();
            let out = ctr_run(&sock, &id).output().unwrap();
            assert!(out.status.success(), "ctr run: {}", String::from_utf8_lossy(&out.stderr));
            ctr.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        ctr_remove(&sock, "bench-ctr", burst);

        // The same, all at once: the baseline for pods created at once.
        let t = Instant::now();
        let mut children: Vec<_> = (0..burst)
            .map(|i| {
                ctr_run(&sock, &format!("bench-ctrb-{i}"))
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut ctr_burst = vec![0.0; burst];
        let mut left: Vec<usize> = (0..burst).collect();
        while !left.is_empty() {
            left.retain(|&i| match children[i].try_wait() {
                Ok(Some(_)) => {
                    ctr_burst[i] = t.elapsed().as_secs_f64() * 1000.0;
                    false
                }
                _ => true,
            });
            std::thread::sleep(Duration::from_millis(2));
        }
        ctr_remove(&sock, "bench-ctrb", burst);

        let api: Api<Pod> = Api::namespaced(client.clone(), "default");
        // One at a time, each deleted once Running, so every pod starts on the same
        // (near-empty) node as the ctr baseline's containers.
        let gone = |api: Api<Pod>| async move {
            let _ = api
                .delete_collection(&DeleteParams::default(), &kube::api::ListParams::default().labels("bench=pods"))
                .await;
            for _ in 0..600 {
                if api
                    .list(&kube::api::ListParams::default().labels("bench=pods"))
                    .await
                    .map(|l| l.items.is_empty())
                    .unwrap_or(false)
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let mut one_by_one = Vec::new();
        for i in 0..serial {
            one_by_one.extend(start_pods(&api, &[format!("serial-{i}")]).await);
            gone(api.clone()).await;
        }
        let names: Vec<String> = (0..burst).map(|i| format!("burst-{i}")).collect();
        let mut at_once = start_pods(&api, &names).await;
        gone(api.clone()).await;

        if one_by_one.is_empty() || at_once.is_empty() {
            for f in ["server.log", "worker.log"] {
                let text = std::fs::read_to_string(lab.path(f)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                eprintln!("== {f}\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            }
            panic!("no pod reached Running ({} one by one, {} at once)", one_by_one.len(), at_once.len());
        }
        let (c50, c99) = (pct(&mut ctr, 0.5), pct(&mut ctr, 0.99));
        let (s50, s99) = (pct(&mut one_by_one, 0.5), pct(&mut one_by_one, 0.99));
        let (b50, b99) = (pct(&mut at_once, 0.5), pct(&mut at_once, 0.99));
        let (cb50, cb99) = (pct(&mut ctr_burst, 0.5), pct(&mut ctr_burst, 0.99));
        println!("\npod start latency: create → Running seen through a watch (ms)");
        println!("| case | pods | p50 | p99 | p50 / ctr | p99 / ctr p99 |");
        println!("|---|---|---|---|---|---|");
        println!("| `ctr run -d` (baseline, same containerd) | {burst} | {c50:.0} | {c99:.0} | 1.00x | 1.00x |");
        println!(
            "| rk, one at a time | {} | {s50:.0} | {s99:.0} | {:.2}x | {:.2}x |",
            one_by_one.len(),
            s50 / c50,
            s99 / c99
        );
        println!("| `ctr run -d`, {burst} at once (baseline) | {burst} | {cb50:.0} | {cb99:.0} | 1.00x | 1.00x |");
        println!(
            "| rk, {burst} created at once | {} | {b50:.0} | {b99:.0} | {:.2}x | {:.2}x |",
            at_once.len(),
            b50 / cb50,
            b99 / cb99
        );
        println!(
            "\nagent join → node Ready: {:.2} s; idle `rk agent` RSS: {idle_rss:.1} MiB ({anon:.1} MiB anonymous, {file:.1} MiB file-backed; containerd not counted)",
            join_to_ready.as_secs_f64()
        );
    });
}
