//! The official Kubernetes Python client (`kubernetes` from PyPI, installed by
//! scripts/deps.sh into a venv) drives rk: create, list, patch and watch on built-in and
//! custom resources.

mod common;

use common::TestServer;

/// Where scripts/deps.sh puts the venv with the client.
fn python() -> std::path::PathBuf {
    let dir = std::env::var_os("RK_PYENV").map(std::path::PathBuf::from).unwrap_or_else(|| {
        std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/rk/pyclient")
    });
    dir.join("bin/python")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_works() {
    let py = python();
    assert!(py.exists(), "{} is missing: run scripts/deps.sh", py.display());
    let srv = TestServer::start().await;
    let crd = include_str!("python/widget-crd.yaml");
    srv.kubectl_stdin(&["apply", "-f", "-"], Some(crd)).await;
    srv.kubectl_ok(&["wait", "--for=condition=established", "crd/widgets.example.com", "--timeout=10s"]).await;
    let out = tokio::process::Command::new(&py)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/client.py"))
        .arg(&srv.kubeconfig)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout, "configmap ok\ndeployment ok\ncustom ok\n");
}
