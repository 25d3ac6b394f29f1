//! Test harness: an in-process `rk server` on 127.0.0.1 with a temp data dir, driven
//! through real clients (kube-rs over HTTPS, and the kubectl binary).
#![allow(dead_code)]

pub mod lab;
pub mod registry;

use std::path::PathBuf;
use std::process::Output;

use kube::config::{KubeConfigOptions, Kubeconfig};
use rk::server::{self, Running, ServerConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A running server for one test; stops when dropped.
pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub running: Running,
    pub kubeconfig: PathBuf,
    shutdown: CancellationToken,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    /// The API server alone, without controllers or scheduler (as kube-apiserver
    /// alone): for tests of API semantics that count objects.
    pub async fn api_only() -> TestServer {
        TestServer::start_with(|c| {
            c.disable_controller_manager = true;
            c.disable_scheduler = true;
        })
        .await
    }

    /// A server with some of its configuration changed.
    pub async fn start_with(f: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ServerConfig::loopback(dir.path());
        f(&mut cfg);
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let running = server::start(&cfg, shutdown.clone(), &tracker).await.expect("server starts");
        TestServer { kubeconfig: cfg.write_kubeconfig.clone(), dir, running, shutdown }
    }

    /// A kube-rs client with the admin credentials.
    pub async fn client(&self) -> kube::Client {
        client_from_yaml(&self.running.kubeconfig).await
    }

    /// Runs kubectl with the admin kubeconfig and a private cache dir.
    pub async fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_stdin(args, None).await
    }

    pub async fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use tokio::io::AsyncWriteExt;
        let mut cmd = tokio::process::Command::new("kubectl");
        cmd.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("KUBECACHEDIR", self.dir.path().join("kubecache"))
            .env("HOME", self.dir.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("kubectl runs");
        let mut sin = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            sin.write_all(s.as_bytes()).await.unwrap();
        }
        drop(sin);
        tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("kubectl finishes")
            .unwrap()
    }

    /// kubectl that must succeed; returns stdout.
    pub async fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args).await;
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn client_from_yaml(yaml: &str) -> kube::Client {
    let kc = Kubeconfig::from_yaml(yaml).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.unwrap();
    kube::Client::try_from(cfg).unwrap()
}

/// The HTTP status of one raw request (the body is sent as is, with `ct`).
pub async fn code(c: &kube::Client, method: &str, path: &str, ct: &str, body: Vec<u8>) -> u16 {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::CONTENT_TYPE, ct)
        .body(kube::client::Body::from(body))
        .unwrap();
    match c.send(req).await {
        Ok(r) => r.status().as_u16(),
        Err(kube::Error::Api(s)) => s.code,
        Err(e) => panic!("{method} {path}: {e}"),
    }
}
