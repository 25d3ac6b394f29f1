//! install.sh as users run it: into a throwaway root (BIN_DIR and SYSTEMD_DIR in a
//! temp dir) with a local binary or a download from a release server on loopback,
//! checked with shellcheck and `systemd-analyze verify`; and on a lab host (a network
//! namespace with no route out) through to a running server that `kubectl get nodes`
//! answers.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const RK: &str = env!("CARGO_BIN_EXE_rk");
const INSTALL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/install.sh");

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o777
}

/// Runs install.sh with only PATH and `env` in its environment.
fn install(env: &[(&str, &str)]) -> Output {
    let mut c = Command::new("sh");
    c.arg(INSTALL).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    if let Ok(home) = std::env::var("HOME") {
        c.env("HOME", home);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

struct Root {
    _dir: tempfile::TempDir,
    bin: PathBuf,
    systemd: PathBuf,
}

impl Root {
    fn new() -> Root {
        let dir = tempfile::tempdir().unwrap();
        let (bin, systemd) = (dir.path().join("bin"), dir.path().join("systemd"));
        Root { _dir: dir, bin, systemd }
    }

    fn env<'a>(&'a self, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut v = vec![
            ("INSTALL_RK_BIN_DIR", self.bin.to_str().unwrap()),
            ("INSTALL_RK_SYSTEMD_DIR", self.systemd.to_str().unwrap()),
            ("INSTALL_RK_SKIP_START", "true"),
            ("INSTALL_RK_SKIP_ENABLE", "true"),
        ];
        v.extend_from_slice(extra);
        v
    }

    /// The unit as packaged (packaging/), with this root's dirs in place of the real ones.
    fn packaged(&self, name: &str) -> String {
        let text = std::fs::read_to_string(format!("{}/packaging/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        text.replace("/usr/local/bin", self.bin.to_str().unwrap())
            .replace("/etc/systemd/system", self.systemd.to_str().unwrap())
    }
}

fn ok(o: &Output) -> String {
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "install.sh failed:\n{out}\n{err}");
    out.into_owned()
}

fn shellcheck(files: &[&Path]) {
    let o = Command::new("shellcheck").args(files).output().expect("shellcheck is installed (scripts/deps.sh)");
    assert!(o.status.success(), "shellcheck: {}", String::from_utf8_lossy(&o.stdout));
}

#[test]
fn install_into_a_throwaway_root_with_a_local_binary() {
    let root = Root::new();
    std::fs::create_dir_all(&root.bin).unwrap();
    std::fs::copy(RK, root.bin.join("rk")).unwrap();

    // A server: binary, scripts, unit and env file, with the right modes.
    let out = ok(&install(&root.env(&[
        ("INSTALL_RK_SKIP_DOWNLOAD", "true"),
        ("RK_TOKEN", "it's a secret"),
        ("RK_NODE_NAME", "n1"),
        ("NOT_RK", "x"),
    ])));
    assert!(out.contains("Skipping the download"), "{out}");
    for (f, m) in [("rk", 0o755), ("rk-killall.sh", 0o755), ("rk-uninstall.sh", 0o755)] {
        assert_eq!(mode(&root.bin.join(f)), m, "{f}");
    }
    let unit = root.systemd.join("rk.service");
    let env = root.systemd.join("rk.service.env");
    assert_eq!(mode(&unit), 0o644);
    assert_eq!(mode(&env), 0o600, "the env file holds the token");
    assert_eq!(std::fs::read_to_string(&unit).unwrap(), root.packaged("rk.service"));
    let env_text = std::fs::read_to_string(&env).unwrap();
    assert_eq!(env_text, "RK_NODE_NAME='n1'\nRK_TOKEN='it'\\''s a secret'\n");
    // What systemd (and the no-systemd start, through sh) reads back.
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!("set -a; . '{}'; printf %s \"$RK_TOKEN\"", env.display()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "it's a secret");

    // An agent: RK_URL makes it one, and then RK_TOKEN is required.
    let before: Vec<_> = std::fs::read_dir(&root.systemd).unwrap().flatten().map(|e| e.file_name()).collect();
    let o = install(&root.env(&[("INSTALL_RK_SKIP_DOWNLOAD", "true"), ("RK_URL", "https://10.0.0.1:6443")]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("RK_TOKEN is required") && err.lines().count() == 1, "{err}");
    let o = install(&root.env(&[("RK_URL", "http://10.0.0.1:6443"), ("RK_TOKEN", "t")]));
    assert!(String::from_utf8_lossy(&o.stderr).contains("must start with https://"));
    let after: Vec<_> = std::fs::read_dir(&root.systemd).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(before, after, "a refused install writes nothing");
    ok(&install(&root.env(&[
        ("INSTALL_RK_SKIP_DOWNLOAD", "true"),
        ("RK_URL", "https://10.0.0.1:6443"),
        ("RK_TOKEN", "K10abc::server:s"),
        ("INSTALL_RK_SYMLINK", "force"),
    ])));
    let agent_unit = root.systemd.join("rk-agent.service");
    assert_eq!(std::fs::read_to_string(&agent_unit).unwrap(), root.packaged("rk-agent.service"));
    assert_eq!(mode(&root.systemd.join("rk-agent.service.env")), 0o600);
    assert_eq!(std::fs::read_link(root.bin.join("kubectl")).unwrap(), Path::new("rk"));

    // INSTALL_RK_EXEC: bare flags get the command in front; NAME names the service.
    ok(&install(&root.env(&[
        ("INSTALL_RK_SKIP_DOWNLOAD", "true"),
        ("INSTALL_RK_EXEC", "--disable-agent --tls-san rk.example"),
        ("INSTALL_RK_NAME", "cp"),
    ])));
    let cp = std::fs::read_to_string(root.systemd.join("rk-cp.service")).unwrap();
    assert!(cp.contains(&format!("ExecStart={}/rk server --disable-agent --tls-san rk.example", root.bin.display())));

    // The checks users and packagers run.
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .args([&unit, &agent_unit, &root.systemd.join("rk-cp.service")])
        .output()
        .expect("systemd-analyze is installed (scripts/deps.sh)");
    assert!(o.status.success(), "systemd-analyze verify: {}", String::from_utf8_lossy(&o.stderr));
    shellcheck(&[
        Path::new(INSTALL),
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/rk-killall.sh")),
        &root.bin.join("rk-uninstall.sh"),
    ]);
    let un = std::fs::read_to_string(root.bin.join("rk-uninstall.sh")).unwrap();
    assert!(un.contains("rk-killall.sh") && un.contains("/var/lib/rk") && un.contains("rk-cp.service"), "{un}");

    // From a checkout, it builds rk (cargo stands in here: a release build takes
    // minutes), showing each crate compiled; a failed build installs nothing.
    let fake = tempfile::tempdir().unwrap();
    let target = fake.path().join("target");
    let cargo = fake.path().join("cargo");
    std::fs::write(
        &cargo,
        format!(
            "#!/bin/sh\necho '   Compiling rk v0.1.0'\n[ -n \"$FAIL\" ] && {{ echo 'error: it broke'; exit 101; }}\nmkdir -p '{t}/release' && cp '{RK}' '{t}/release/rk'\necho '    Finished release'\n",
            t = target.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&cargo, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", fake.path().display(), std::env::var("PATH").unwrap_or_default());
    let built = Root::new();
    let tdir = target.to_str().unwrap();
    let out =
        ok(&install(&built.env(&[("PATH", &path), ("CARGO_TARGET_DIR", tdir), ("INSTALL_RK_SKIP_DEPS", "true")])));
    assert!(out.contains("Building rk from") && out.contains("Compiling rk") && out.contains("Finished"), "{out}");
    assert_eq!(std::fs::read(built.bin.join("rk")).unwrap(), std::fs::read(RK).unwrap());
    let failing = Root::new();
    let o = install(&failing.env(&[("PATH", &path), ("CARGO_TARGET_DIR", tdir), ("FAIL", "1")]));
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(!o.status.success() && out.contains("error: it broke") && err.contains("the build failed"), "{out}{err}");
    assert!(!failing.bin.join("rk").exists());

    // SKIP_DOWNLOAD with nothing in BIN_DIR is one line.
    let empty = Root::new();
    let o = install(&empty.env(&[("INSTALL_RK_SKIP_DOWNLOAD", "true")]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("no executable") && err.lines().count() == 1, "{err}");
}

/// Serves `files` over HTTP on loopback until the test ends.
fn release_server(files: Vec<(String, Vec<u8>)>) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let path = req.split_whitespace().nth(1).unwrap_or("").to_string();
            match files.iter().find(|(p, _)| *p == path) {
                Some((_, body)) => {
                    let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                    let _ = s.write_all(body);
                }
                None => {
                    let _ = write!(s, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                }
            }
        }
    });
    port
}

#[test]
fn install_downloads_and_verifies_a_release() {
    use sha2::Digest;
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    };
    let binary = std::fs::read(RK).unwrap();
    let sum: String = sha2::Sha256::digest(&binary).iter().map(|b| format!("{b:02x}")).collect();
    let killall = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/rk-killall.sh")).unwrap();
    let good = format!("/rk/download/v9.9.9/rk-{arch}");
    let bad = format!("/rk/download/v0.0.1/rk-{arch}");
    let port = release_server(vec![
        (good.clone(), binary.clone()),
        (format!("{good}.sha256"), format!("{sum}  rk-{arch}\n").into_bytes()),
        ("/rk/download/v9.9.9/rk-killall.sh".into(), killall.clone()),
        (bad.clone(), b"#!/bin/sh\necho tampered\n".to_vec()),
        (format!("{bad}.sha256"), format!("{sum}  rk-{arch}\n").into_bytes()),
        ("/rk/download/v0.0.1/rk-killall.sh".into(), killall.clone()),
        (format!("/rk/latest/download/rk-{arch}"), binary.clone()),
        (format!("/rk/latest/download/rk-{arch}.sha256"), format!("{sum}  rk-{arch}\n").into_bytes()),
        ("/rk/latest/download/rk-killall.sh".into(), killall),
    ]);
    let url = format!("http://127.0.0.1:{port}/rk");
    let root = Root::new();
    let out = ok(&install(&root.env(&[("INSTALL_RK_DOWNLOAD_URL", &url), ("INSTALL_RK_VERSION", "v9.9.9")])));
    assert!(out.contains("Verified the sha256"), "{out}");
    assert_eq!(std::fs::read(root.bin.join("rk")).unwrap(), binary);
    assert_eq!(mode(&root.bin.join("rk")), 0o755);

    // A binary that does not match its checksum is refused; the installed one stays.
    let o = install(&root.env(&[("INSTALL_RK_DOWNLOAD_URL", &url), ("INSTALL_RK_VERSION", "v0.0.1")]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("checksum mismatch"), "{err}");
    assert_eq!(std::fs::read(root.bin.join("rk")).unwrap(), binary, "unchanged");
    // A release that does not exist.
    let o = install(&root.env(&[("INSTALL_RK_DOWNLOAD_URL", &url), ("INSTALL_RK_VERSION", "v404")]));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no rk release at"));

    // `curl -sfL .../install.sh | sh -`: no checkout, so the latest release.
    let piped = Root::new();
    let mut c = Command::new("sh");
    c.arg("-").env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in piped.env(&[("INSTALL_RK_DOWNLOAD_URL", &url)]) {
        c.env(k, v);
    }
    let mut child = c.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(&std::fs::read(INSTALL).unwrap()).unwrap();
    let out = ok(&child.wait_with_output().unwrap());
    assert!(out.contains("/rk/latest/download/rk-"), "{out}");
    assert_eq!(std::fs::read(piped.bin.join("rk")).unwrap(), binary);
}

#[test]
fn install_sh_ends_with_a_running_server_that_kubectl_answers() {
    use common::lab::{self, Lab, wait_for};
    if let Some(why) = lab::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let lab = Lab::with_hosts(1);
    let bin = lab.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(RK, bin.join("rk")).unwrap();
    let run = || {
        let mut c = lab.cmd(0, "sh");
        c.arg(INSTALL).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in [
            ("INSTALL_RK_SKIP_DOWNLOAD", "true".to_string()),
            ("INSTALL_RK_BIN_DIR", bin.display().to_string()),
            ("INSTALL_RK_SYSTEMD_DIR", lab.path("systemd").display().to_string()),
            ("INSTALL_RK_LOG", lab.path("server.log").display().to_string()),
            ("INSTALL_RK_EXEC", format!("server --node-name server --node-ip {}", lab::HOST_IPS[0])),
            ("RK_DATA_DIR", lab.path("server").display().to_string()),
            ("RK_WRITE_KUBECONFIG", lab.path("kubeconfig.yaml").display().to_string()),
            ("RK_CONFIG", "/dev/null".to_string()),
        ] {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let out = ok(&run());
    assert!(out.contains("No systemd here") || out.contains("is running"), "{out}");
    assert!(out.contains("rk is running (pid"), "{out}");
    wait_for("the server's node Ready", 60, || {
        String::from_utf8_lossy(&lab.kubectl(&["get", "nodes"]).stdout).contains(" Ready ")
    });
    let first_pid = std::fs::read_to_string(lab.path("server/rk.pid")).unwrap();

    // Re-running upgrades in place: the old rk stops, a new one serves the same cluster.
    let out = ok(&run());
    assert!(out.contains(&format!("Stopping the rk started earlier (pid {})", first_pid.trim())), "{out}");
    let second_pid = std::fs::read_to_string(lab.path("server/rk.pid")).unwrap();
    assert_ne!(first_pid, second_pid);
    let nodes = String::from_utf8_lossy(&lab.kubectl(&["get", "nodes"]).stdout).into_owned();
    assert!(nodes.contains("server"), "{nodes}");
    wait_for("the node Ready after the upgrade", 60, || {
        String::from_utf8_lossy(&lab.kubectl(&["get", "nodes"]).stdout).contains(" Ready ")
    });

    // rk-uninstall.sh (on the lab host) stops rk and removes everything it installed.
    let o = lab.cmd(0, "sh").arg(bin.join("rk-uninstall.sh")).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pid = nix::unistd::Pid::from_raw(second_pid.trim().parse().unwrap());
    wait_for("rk to exit", 20, || nix::sys::signal::kill(pid, None).is_err());
    for gone in ["server", "kubeconfig.yaml", "systemd/rk.service", "systemd/rk.service.env", "bin/rk", "server.log"] {
        assert!(!lab.path(gone).exists(), "{gone} is left");
    }
    assert!(!bin.join("rk-killall.sh").exists() && !bin.join("rk-uninstall.sh").exists());
}
