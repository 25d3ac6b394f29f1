//! Durability: every write acknowledged before a `kill -9` is there after restart, and
//! the revision never goes backwards.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams};
use kube::core::ObjectMeta;

/// Starts the rk binary on a free port; returns it and its admin kubeconfig.
async fn start_rk(dir: &Path) -> (Child, String) {
    let kc = dir.join("kubeconfig.yaml");
    let _ = std::fs::remove_file(&kc);
    let child = Command::new(env!("CARGO_BIN_EXE_rk"))
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
        .arg(dir.join("data"))
        .arg("--write-kubeconfig")
        .arg(&kc)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("rk starts");
    for _ in 0..200 {
        if let Ok(y) = std::fs::read_to_string(&kc) {
            return (child, y);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("rk wrote no kubeconfig");
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let (child, yaml) = start_rk(dir.path()).await;
    let mut child = KillOnDrop(child);
    let client = common::client_from_yaml(&yaml).await;
    let acked: Arc<Mutex<Vec<(String, i64)>>> = Default::default();
    let mut writers = Vec::new();
    for w in 0..16 {
        let (client, acked) = (client.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            let api: Api<ConfigMap> = Api::namespaced(client, "default");
            for i in 0.. {
                let cm = ConfigMap {
                    metadata: ObjectMeta { name: Some(format!("w{w}-{i}")), ..Default::default() },
                    data: Some(BTreeMap::from([("payload".to_string(), "x".repeat(512))])),
                    ..Default::default()
                };
                match api.create(&PostParams::default(), &cm).await {
                    Ok(c) => acked
                        .lock()
                        .unwrap()
                        .push((format!("w{w}-{i}"), c.metadata.resource_version.unwrap().parse().unwrap())),
                    Err(_) => return,
                }
            }
        }));
    }
    // Writers run for a while, then the server dies mid-write.
    tokio::time::sleep(Duration::from_millis(2600)).await;
    child.0.kill().unwrap(); // SIGKILL, mid-write
    child.0.wait().unwrap();
    for w in writers {
        let _ = w.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 50, "the writers got going ({} writes)", acked.len());
    let max_rev = acked.iter().map(|(_, r)| *r).max().unwrap();
    eprintln!("{} writes acknowledged before kill -9", acked.len());

    let (child, yaml) = start_rk(dir.path()).await;
    let _child = KillOnDrop(child);
    let client = common::client_from_yaml(&yaml).await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let list = api.list(&ListParams::default()).await.unwrap();
    let present: std::collections::HashSet<String> =
        list.items.iter().filter_map(|c| c.metadata.name.clone()).collect();
    let lost: Vec<&String> = acked.iter().map(|(n, _)| n).filter(|n| !present.contains(*n)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    let rv: i64 = list.metadata.resource_version.unwrap().parse().unwrap();
    assert!(rv >= max_rev, "revision went backwards: {rv} < {max_rev}");
    let after = api
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta { name: Some("after".into()), ..Default::default() },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(after.metadata.resource_version.unwrap().parse::<i64>().unwrap() > rv);
}
