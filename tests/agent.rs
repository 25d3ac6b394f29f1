//! `rk agent --join URL --token TOKEN --simulate N` as a user runs it: the real binary
//! joins an rk server (checking the CA against the token first), registers simulated
//! nodes, and a Deployment becomes Available on them. Bad tokens fail closed.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::TestServer;

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn agent(s: &TestServer, dir: &std::path::Path, token: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rk"));
    c.args(["agent", "--config", "/dev/null", "--node-name", "sim"])
        .arg("--join")
        .arg(format!("https://127.0.0.1:{}", s.running.addr.port()))
        .arg("--token")
        .arg(token)
        .arg("--data-dir")
        .arg(dir)
        .args(extra)
        .env_remove("RK_URL")
        .env_remove("RK_TOKEN");
    c
}

/// Starts `c` with its output discarded, killed when dropped.
fn quiet(mut c: Command) -> KillOnDrop {
    KillOnDrop(c.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap())
}

/// Runs a join that must fail; returns its stderr.
fn failed_join(s: &TestServer, token: &str, extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut child = agent(s, dir.path(), token, extra).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    // A join that wrongly succeeded would run on: give up after a while.
    for _ in 0..300 {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "the join must fail");
    assert!(!dir.path().join("agent/kubeconfig.yaml").exists(), "no credentials kept");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_agent_joins_with_the_token_and_runs_a_deployment() {
    let s = TestServer::start().await;
    let token = s.running.identity.token.clone();
    let dir = tempfile::tempdir().unwrap();
    let _child = quiet(agent(&s, dir.path(), &token, &["--simulate", "3"]));
    let mut nodes = String::new();
    for _ in 0..150 {
        nodes = String::from_utf8_lossy(&s.kubectl(&["get", "nodes"]).await.stdout).into_owned();
        if nodes.matches(" Ready ").count() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(nodes.matches(" Ready ").count(), 3, "{nodes}");
    assert!(nodes.contains("sim-0") && nodes.contains("sim-2"), "{nodes}");
    let kc = std::fs::read_to_string(dir.path().join("agent/kubeconfig.yaml")).unwrap();
    assert!(kc.contains("client-certificate-data"));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("agent/kubeconfig.yaml")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let leases = s.kubectl_ok(&["get", "leases", "-n", "kube-node-lease"]).await;
    assert!(leases.contains("sim-1"), "{leases}");

    s.kubectl_ok(&["create", "deployment", "web", "--image=nginx", "--replicas=3"]).await;
    s.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=60s"]).await;
    let d = s.kubectl_ok(&["get", "deployment", "web"]).await;
    assert!(d.contains("3/3"), "{d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_fail_closed() {
    let s = TestServer::start().await;
    let token = s.running.identity.token.clone();
    let (_, secret) = token.split_once("::server:").unwrap();

    let wrong_hash = format!("K10{}::server:{secret}", "0".repeat(64));
    let sim = ["--simulate", "1"];
    let e = failed_join(&s, &wrong_hash, &sim);
    assert!(e.contains("does not match the hash in the token"), "{e}");

    let hash = token.strip_prefix("K10").unwrap().split_once("::").unwrap().0;
    let wrong_secret = format!("K10{hash}::server:not-the-secret");
    let e = failed_join(&s, &wrong_secret, &sim);
    assert!(e.contains("refused the token"), "{e}");

    let e = failed_join(&s, secret, &sim);
    assert!(e.contains("--ca-file"), "{e}");

    // A node name belongs to the host that joined with it first (its node password).
    let first = tempfile::tempdir().unwrap();
    let child = quiet(agent(&s, first.path(), &token, &sim));
    for _ in 0..200 {
        if first.path().join("agent/kubeconfig.yaml").exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(child);
    assert!(first.path().join("agent/node-password").exists());
    let e = failed_join(&s, &token, &sim);
    assert!(e.contains("belongs to another host"), "another host taking the name: {e}");

    let e = failed_join(&s, &token, &["--node-taint", "dedicated=gpu"]);
    assert!(e.contains("--node-taint") && e.contains("key=value:Effect"), "a bad taint is a one-line error: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_tokens_join_and_then_expire_or_go() {
    let s = TestServer::start().await;
    let rk = |args: &[&str]| {
        let out =
            Command::new(env!("CARGO_BIN_EXE_rk")).args(args).arg("--kubeconfig").arg(&s.kubeconfig).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, token, err) = rk(&["token", "create", "--description", "for sim", "--ttl", "1h"]);
    assert!(ok, "{err}");
    let hash = s.running.identity.token.strip_prefix("K10").unwrap().split_once("::").unwrap().0;
    assert!(token.starts_with(&format!("K10{hash}::")), "{token}");
    let (_, list, _) = rk(&["token", "list"]);
    let id = token.split("::").nth(1).unwrap().split('.').next().unwrap().to_string();
    assert!(list.contains(&format!("{id}.<secret>")) && list.contains("for sim"), "{list}");

    // An agent joins with it.
    let dir = tempfile::tempdir().unwrap();
    let _child = quiet(agent(&s, dir.path(), &token, &["--simulate", "1"]));
    for _ in 0..200 {
        if dir.path().join("agent/kubeconfig.yaml").exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(dir.path().join("agent/kubeconfig.yaml").exists(), "joined with the bootstrap token");

    // As an API credential it is system:bootstrap:<id>, with no rights beyond discovery.
    let bare = token.split("::").nth(1).unwrap();
    let kc = common::client_from_yaml(&format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters: [{{name: c, cluster: {{server: 'https://{}', insecure-skip-tls-verify: true}}}}]\nusers: [{{name: u, user: {{token: {bare}}}}}]\ncontexts: [{{name: c, context: {{cluster: c, user: u}}}}]\n",
        s.running.addr
    ))
    .await;
    assert_eq!(common::code(&kc, "GET", "/api/v1/namespaces/kube-system/secrets", "", vec![]).await, 403);
    assert_eq!(common::code(&kc, "GET", "/api", "", vec![]).await, 200);

    // Deleted, it joins nothing more; an expired one neither.
    let (ok, _, err) = rk(&["token", "delete", &id]);
    assert!(ok, "{err}");
    let e = failed_join(&s, &token, &["--simulate", "1"]);
    assert!(e.contains("refused the token"), "{e}");
    let (ok, short, err) = rk(&["token", "create", "--ttl", "1s"]);
    assert!(ok, "{err}");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let e = failed_join(&s, &short, &["--simulate", "1"]);
    assert!(e.contains("refused the token"), "{e}");
    // Listed as invalid until the token cleaner (every 30 s) deletes it.
    let (_, list, _) = rk(&["token", "list"]);
    let short_id = short.split("::").nth(1).unwrap().split('.').next().unwrap();
    assert!(list.contains("<invalid>") || !list.contains(short_id), "{list}");
    let (ok, _, err) = rk(&["token", "create", "Not.A-Token"]);
    assert!(!ok && err.lines().count() == 1 && err.contains("is not of the form"), "{err}");
}

/// An agent whose certificates are within 90 days of expiry (or past it) gets new ones
/// from the server at start, with the same node password; the old files are replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_renews_expiring_certificates_at_start() {
    use rk::server::tls;
    let s = TestServer::start().await;
    let token = s.running.identity.token.clone();
    let dir = tempfile::tempdir().unwrap();
    let kc_path = dir.path().join("agent/kubeconfig.yaml");
    let wait_for_kubeconfig = |want_fresh: bool| {
        for _ in 0..300 {
            if std::fs::read_to_string(&kc_path).is_ok_and(|t| !want_fresh || !tls::kubeconfig_needs_renewal(&t)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    };
    {
        let _child = quiet(agent(&s, dir.path(), &token, &["--simulate", "1"]));
        assert!(wait_for_kubeconfig(true), "joined");
    }
    // Both of its certificates: one expiring in 30 days, one expired yesterday.
    let url = format!("https://127.0.0.1:{}", s.running.addr.port());
    let ca = &s.running.identity.ca;
    let soon = tls::issue_client_cert_for_days(ca, rk::server::auth::policy::SIMULATOR_USER, &[], 30).unwrap();
    let gone = tls::issue_client_cert_for_days(ca, rk::server::auth::policy::NETWORK_USER, &[], -1).unwrap();
    std::fs::write(&kc_path, tls::kubeconfig(&url, &ca.cert_pem, &soon)).unwrap();
    let net_path = dir.path().join("agent/network-kubeconfig.yaml");
    std::fs::write(&net_path, tls::kubeconfig(&url, &ca.cert_pem, &gone)).unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_rk"))
        .args(["certificate", "check", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(out.contains("EXPIRED") && out.contains("renews it at its next start"), "{out}");

    let _child = quiet(agent(&s, dir.path(), &token, &["--simulate", "1"]));
    assert!(wait_for_kubeconfig(true), "renewed at start");
    for _ in 0..300 {
        if std::fs::read_to_string(&net_path).is_ok_and(|t| !tls::kubeconfig_needs_renewal(&t)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let net = std::fs::read_to_string(&net_path).unwrap();
    assert!(!tls::kubeconfig_needs_renewal(&net), "the network credentials too");
}
