//! Operating rk as users do, with the `rk` binary and kubectl: snapshots (save while
//! running, restore into a stopped server, bad snapshots refused), store format
//! versions, certificate check/rotate and renewal of expired certificates at start,
//! config drop-ins, check-config, completion and `rk kubectl`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

const RK: &str = env!("CARGO_BIN_EXE_rk");

/// An `rk server` process (no agent) on a loopback port, stopped by PID on drop.
struct Server {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Server {
    fn new(dir: &Path) -> Server {
        Server { dir: dir.to_path_buf(), port: free_port(), child: None }
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kc.yaml")
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn args(&self) -> Vec<String> {
        vec![
            "server".into(),
            "--config".into(),
            "/dev/null".into(),
            "--disable-agent".into(),
            "--bind-address".into(),
            "127.0.0.1".into(),
            "--https-listen-port".into(),
            self.port.to_string(),
            "--data-dir".into(),
            self.data().display().to_string(),
            "--write-kubeconfig".into(),
            self.kubeconfig().display().to_string(),
        ]
    }

    /// Starts the server and waits until kubectl gets an answer.
    fn start(&mut self) {
        let log = std::fs::File::create(self.dir.join("server.log")).unwrap();
        let child = Command::new(RK)
            .args(self.args())
            .env_remove("RK_CONFIG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        for _ in 0..300 {
            if self.kubeconfig().exists() && self.kubectl(&["get", "--raw", "/readyz"]).status.success() {
                return;
            }
            if let Some(s) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("rk server exited ({s}): {}", std::fs::read_to_string(self.dir.join("server.log")).unwrap());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("rk server did not answer: {}", std::fs::read_to_string(self.dir.join("server.log")).unwrap());
    }

    /// SIGTERM, then waits for the exit.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = c.wait();
        }
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl").args(args).env("KUBECONFIG", self.kubeconfig()).env("HOME", &self.dir).output().unwrap()
    }

    fn kubectl_ok(&self, args: &[&str]) -> String {
        let o = self.kubectl(args);
        assert!(o.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `rk <args> --data-dir <data>`, with the server's kubeconfig.
    fn rk(&self, args: &[&str]) -> (bool, String, String) {
        let o = Command::new(RK)
            .args(args)
            .arg("--data-dir")
            .arg(self.data())
            .env("RK_KUBECONFIG", self.kubeconfig())
            .output()
            .unwrap();
        (o.status.success(), String::from_utf8_lossy(&o.stdout).into(), String::from_utf8_lossy(&o.stderr).into())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn configmaps(s: &Server) -> String {
    s.kubectl_ok(&[
        "get",
        "configmaps",
        "-n",
        "snap",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.data.v} {end}",
    ])
}

#[test]
fn snapshot_save_then_restore_brings_back_exactly_the_saved_objects() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::new(dir.path());
    s.start();
    s.kubectl_ok(&["create", "namespace", "snap"]);
    for i in 0..5 {
        s.kubectl_ok(&["create", "configmap", &format!("cm{i}"), "-n", "snap", &format!("--from-literal=v={i}")]);
    }
    let saved_set = configmaps(&s);

    // Saved through the running server.
    let (ok, out, err) = s.rk(&["snapshot", "save", "--name", "before"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("Snapshot before-") && out.contains("saved"), "{out}");
    let name = out.split_whitespace().nth(1).unwrap().to_string();
    let (ok, ls, _) = s.rk(&["snapshot", "ls"]);
    assert!(ok && ls.contains(&name) && ls.lines().next().unwrap().starts_with("Name"), "{ls}");

    // Changes after the snapshot: an edit, a delete, an addition.
    s.kubectl_ok(&["patch", "configmap", "cm0", "-n", "snap", "-p", r#"{"data":{"v":"changed"}}"#]);
    s.kubectl_ok(&["delete", "configmap", "cm1", "-n", "snap"]);
    s.kubectl_ok(&["create", "configmap", "late", "-n", "snap", "--from-literal=v=x"]);
    assert_ne!(configmaps(&s), saved_set);

    // Restore refuses a running server, and changes nothing.
    let (ok, _, err) = s.rk(&["snapshot", "restore", &name]);
    assert!(!ok && err.contains("in use by another rk") && err.trim().lines().count() <= 2, "{err}");
    s.stop();

    // Corrupt and truncated snapshots are refused in one line, the store untouched.
    let snap_dir = s.data().join("server/db/snapshots");
    let bytes = std::fs::read(snap_dir.join(&name)).unwrap();
    let bad = dir.path().join("bad-snapshot");
    for (b, want) in [
        (bytes[..bytes.len() / 2].to_vec(), "checksum"),
        (b"garbage".to_vec(), "not an rk snapshot"),
        (Vec::new(), "not an rk snapshot"),
    ] {
        std::fs::write(&bad, b).unwrap();
        let (ok, _, err) = s.rk(&["snapshot", "restore", bad.to_str().unwrap()]);
        let last = err.trim().lines().last().unwrap_or("");
        assert!(!ok && last.starts_with("rk: error:") && last.contains(want), "{want}: {err}");
    }
    let db = s.data().join("server/db");
    assert!(!std::fs::read_dir(&db).unwrap().flatten().any(|e| e.file_name().to_string_lossy().contains("restore")));

    let (ok, out, err) = s.rk(&["snapshot", "restore", &name]);
    assert!(ok, "{err}");
    assert!(out.contains("Restored snapshot") && out.contains("kept in"), "{out}");
    s.start();
    assert_eq!(configmaps(&s), saved_set, "exactly the saved objects");
    // The cluster works on: writes after a restore succeed.
    s.kubectl_ok(&["create", "configmap", "after", "-n", "snap", "--from-literal=v=y"]);

    // Saved while stopped, straight from the store; prune keeps the newest.
    s.stop();
    for _ in 0..3 {
        let (ok, _, err) = s.rk(&["snapshot", "save"]);
        assert!(ok, "{err}");
    }
    let (ok, out, _) = s.rk(&["snapshot", "prune", "--snapshot-retention", "1"]);
    assert!(ok && out.matches("deleted").count() == 2, "{out}");
    let (ok, ls, _) = s.rk(&["snapshot", "ls"]);
    assert!(ok && ls.lines().count() == 3, "header, before-, one on-demand: {ls}");
    let (ok, _, err) = s.rk(&["snapshot", "delete", "no-such-snapshot"]);
    assert!(!ok && err.contains("no snapshot"), "{err}");
}

#[test]
fn a_store_of_a_newer_format_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::new(dir.path());
    s.start();
    s.stop();
    let version = s.data().join("server/db/VERSION");
    assert_eq!(std::fs::read_to_string(&version).unwrap().trim(), "1");
    // A store from before the VERSION file is migrated forward.
    std::fs::remove_file(&version).unwrap();
    s.start();
    s.stop();
    assert_eq!(std::fs::read_to_string(&version).unwrap().trim(), "1");

    std::fs::write(&version, "2\n").unwrap();
    let o = Command::new(RK).args(s.args()).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    let last = err.trim().lines().last().unwrap_or("");
    assert!(!o.status.success(), "{err}");
    assert!(last.contains("has format 2, written by a newer rk") && last.starts_with("rk: error:"), "{err}");
    assert_eq!(std::fs::read_to_string(&version).unwrap(), "2\n", "unchanged");
}

fn serving_cert_serial(port: u16) -> Vec<u8> {
    // The certificate the server presents, fetched without trusting it.
    let o = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    let start = text.find("-----BEGIN CERTIFICATE-----").expect("a certificate");
    let end = text.find("-----END CERTIFICATE-----").unwrap() + 25;
    text[start..end].as_bytes().to_vec()
}

#[test]
fn certificates_rotate_live_and_expired_ones_renew_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::new(dir.path());
    s.start();
    let (ok, out, _) = s.rk(&["certificate", "check", "-o", "table"]);
    assert!(ok && out.contains("RESIDUAL TIME") && out.contains("CN=kube-apiserver"), "{out}");
    assert!(out.lines().skip(1).all(|l| l.trim_end().ends_with("OK")), "{out}");

    let before = serving_cert_serial(s.port);
    let old_kc = std::fs::read_to_string(s.kubeconfig()).unwrap();
    let (ok, out, err) = s.rk(&["certificate", "rotate"]);
    assert!(ok && out.contains("renewed the API serving certificate"), "{out} {err}");
    // The running server serves the new certificate and rewrites the kubeconfig.
    let mut served = false;
    for _ in 0..300 {
        if serving_cert_serial(s.port) != before && std::fs::read_to_string(s.kubeconfig()).unwrap() != old_kc {
            served = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(served, "the rotated certificate is served without a restart");
    assert!(s.kubectl(&["get", "ns"]).status.success());
    // The old admin credentials still work (same CA): nothing in flight breaks.
    std::fs::write(dir.path().join("old.yaml"), &old_kc).unwrap();
    let o = Command::new("kubectl").args(["get", "ns"]).env("KUBECONFIG", dir.path().join("old.yaml")).output();
    assert!(o.unwrap().status.success());
    s.stop();

    // Expired leaf certificates are renewed at start.
    let tls = s.data().join("server/tls");
    let ca = rk::server::tls::CertKey {
        cert_pem: std::fs::read_to_string(tls.join("server-ca.crt")).unwrap(),
        key_pem: std::fs::read_to_string(tls.join("server-ca.key")).unwrap(),
    };
    let expired = rk::server::tls::issue_client_cert_for_days(&ca, "system:admin", &["system:masters"], -1).unwrap();
    std::fs::write(tls.join("client-admin.crt"), &expired.cert_pem).unwrap();
    std::fs::write(tls.join("client-admin.key"), &expired.key_pem).unwrap();
    let (_, out, _) = s.rk(&["certificate", "check"]);
    assert!(out.contains("EXPIRED"), "{out}");
    s.start();
    let (_, out, _) = s.rk(&["certificate", "check", "-o", "table"]);
    assert!(!out.contains("EXPIRED"), "renewed at start: {out}");
    assert!(s.kubectl(&["get", "ns"]).status.success(), "the new admin kubeconfig works");
}

#[test]
fn config_drop_ins_apply_in_order_after_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("config.yaml");
    let d = dir.path().join("config.yaml.d");
    std::fs::create_dir_all(&d).unwrap();
    // Each value overlaps the service CIDR, so the error names the winner and nothing starts.
    std::fs::write(&f, "cluster-cidr: 10.43.0.0/24\nservice-cidr: 10.43.0.0/16\n").unwrap();
    std::fs::write(d.join("20-b.yaml"), "cluster-cidr: 10.43.2.0/24\n").unwrap();
    std::fs::write(d.join("10-a.yaml"), "cluster-cidr: 10.43.1.0/24\n").unwrap();
    std::fs::write(d.join("ignored.txt"), "cluster-cidr: 10.43.9.0/24\n").unwrap();
    let o = Command::new(RK)
        .args(["server", "--config", f.to_str().unwrap(), "--data-dir", dir.path().join("data").to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--cluster-cidr 10.43.2.0/24"), "the last drop-in wins: {err}");
    std::fs::write(d.join("30-bad.yaml"), "no-such-key: 1\n").unwrap();
    let o = Command::new(RK).args(["server", "--config", f.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("30-bad.yaml") && err.contains("no-such-key") && err.lines().count() == 1, "{err}");
}

#[test]
fn check_config_completion_and_kubectl_wrapper() {
    let o = Command::new(RK).args(["check-config", "--data-dir", "/nonexistent", "--https-listen-port", "0"]).output();
    let out = String::from_utf8_lossy(&o.unwrap().stdout).into_owned();
    for name in ["cgroups", "containerd", "nf_tables", "CNI plugins", "API port"] {
        assert!(out.contains(name), "{name}: {out}");
    }
    assert!(out.lines().filter(|l| l.starts_with("[FAIL]")).all(|l| l.contains("(fix: ")), "{out}");

    let o = Command::new(RK).args(["completion", "bash"]).output().unwrap();
    let script = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && script.contains("_rk()") && script.contains("snapshot"));
    let o = Command::new(RK).args(["completion", "tcsh"]).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).lines().count() == 1);

    // `rk kubectl` runs kubectl with rk's kubeconfig; linked as `kubectl`, rk does the same.
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kc.yaml");
    std::fs::write(&kc, "apiVersion: v1\nkind: Config\ncurrent-context: rk\ncontexts:\n- name: rk\n  context: {cluster: c, user: u}\nclusters:\n- name: c\n  cluster: {server: https://127.0.0.1:1}\nusers:\n- name: u\n  user: {}\n").unwrap();
    let o = Command::new(RK)
        .args(["kubectl", "config", "current-context"])
        .env_remove("KUBECONFIG")
        .env("RK_KUBECONFIG", &kc)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "rk", "{}", String::from_utf8_lossy(&o.stderr));
    let link = dir.path().join("kubectl");
    std::os::unix::fs::symlink(RK, &link).unwrap();
    let path = format!("{}:{}", dir.path().display(), std::env::var("PATH").unwrap_or_default());
    let o = Command::new(&link)
        .args(["config", "current-context"])
        .env_remove("KUBECONFIG")
        .env("RK_KUBECONFIG", &kc)
        .env("PATH", &path)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "rk", "{}", String::from_utf8_lossy(&o.stderr));
    // Without a real kubectl, one line saying how to get one.
    let o = Command::new(&link).args(["get", "pods"]).env("PATH", dir.path()).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("kubectl is not installed") && err.lines().count() == 1, "{err}");
}
