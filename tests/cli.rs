//! The `rk` command line as users run it: version, flag > env > file precedence, and
//! one-line errors before anything starts.

use std::process::Command;

fn rk(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rk"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    for (k, _) in std::env::vars() {
        if k.starts_with("RK_") {
            c.env_remove(k);
        }
    }
    c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = c.spawn().expect("rk runs");
    // These invocations must fail before starting; a server that starts is a failure.
    for _ in 0..200 {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            return (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into(),
                String::from_utf8_lossy(&out.stderr).into(),
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("rk {args:?} did not exit");
}

/// Flags that keep an accidental start away from the system's paths and ports.
fn private(dir: &std::path::Path) -> Vec<String> {
    vec![
        "--data-dir".into(),
        dir.join("data").display().to_string(),
        "--write-kubeconfig".into(),
        dir.join("kc.yaml").display().to_string(),
        "--bind-address".into(),
        "127.0.0.1".into(),
        "--https-listen-port".into(),
        "0".into(),
    ]
}

#[test]
fn version() {
    let (code, out, _) = rk(&["--version"], &[]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), format!("rk {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn flag_beats_env_beats_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("config.yaml");
    // An overlapping --cluster-cidr is refused with its value in the message, which
    // shows which source won. Every case overlaps, so none starts a server.
    std::fs::write(&f, "cluster-cidr: 10.43.0.0/24\nservice-cidr: 10.43.0.0/16\n").unwrap();
    let cfg = f.to_str().unwrap().to_string();
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec!["server".to_string(), "--config".into(), cfg.clone()];
        args.extend(private(dir.path()));
        args.extend(extra.iter().map(|s| s.to_string()));
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        rk(&a, env)
    };
    let (code, _, err) = run(&[], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("--cluster-cidr 10.43.0.0/24"), "file value used: {err}");
    let (_, _, err) = run(&[], &[("RK_CLUSTER_CIDR", "10.43.1.0/24")]);
    assert!(err.contains("--cluster-cidr 10.43.1.0/24"), "env beats file: {err}");
    let (_, _, err) = run(&["--cluster-cidr", "10.43.2.0/24"], &[("RK_CLUSTER_CIDR", "10.43.1.0/24")]);
    assert!(err.contains("--cluster-cidr 10.43.2.0/24"), "flag beats env: {err}");
    let (_, _, err) = run(&[], &[("RK_SERVICE_CIDR", "10.43.0.0/23")]);
    assert!(err.contains("--service-cidr 10.43.0.0/23"), "env beats file: {err}");
    let mut args = vec!["server".to_string()];
    args.extend(private(dir.path()));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_, _, err) = rk(&a, &[("RK_CONFIG", &cfg)]);
    assert!(err.contains("--cluster-cidr 10.43.0.0/24"), "RK_CONFIG names the file: {err}");
}

#[test]
fn bad_input_is_one_line_before_start() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("config.yaml");
    let data = dir.path().join("data");
    let p = private(dir.path());
    for (file, want) in [
        ("bogus-key: 1\n", "unknown key \"bogus-key\""),
        ("service-cidr: not-a-cidr\n", "key \"service-cidr\""),
        ("write-kubeconfig-mode: 999\n", "key \"write-kubeconfig-mode\""),
        ("disable-agent: maybe\n", "key \"disable-agent\""),
        ("tls-san: {a: b}\n", "key \"tls-san\""),
        ("- not\n- a map\n", "expected a mapping"),
    ] {
        std::fs::write(&f, file).unwrap();
        let mut a = vec!["server", "--config", f.to_str().unwrap()];
        a.extend(p.iter().map(String::as_str));
        let (code, out, err) = rk(&a, &[]);
        assert_eq!(code, 2, "{file}: {err}");
        assert!(out.is_empty());
        assert_eq!(err.lines().count(), 1, "one line for {file}: {err}");
        assert!(err.contains(want) && err.contains("config.yaml"), "{file}: {err}");
    }
    for args in [
        &["server", "--config", "/dev/null", "--https-listen-port", "http"][..],
        &["server", "--config", "/dev/null", "--bind-address", "nowhere"],
        &["server", "--config", "/dev/null", "--cluster-cidr", "10.0.0.0/33"],
        &["server", "--config", "/dev/null", "--node-name", "Bad_Name"],
        &["server", "--config", "/dev/null", "--log-level", "loud"],
        &["server", "--config", "/nonexistent/config.yaml"],
        &["server", "--config", "/dev/null", "--node-label", "node-role.kubernetes.io/worker=true"],
        &["server", "--config", "/dev/null", "--audit-policy-file", "/dev/null"],
        &["server", "--config", "/dev/null", "--audit-log-path", "/tmp/x.log", "--audit-policy-file", "/nonexistent"],
        &["server", "--no-such-flag"],
        &["server", "--config", "/dev/null", "--scheduler-config", "/nonexistent/sched.yaml"],
        &["server", "--config", "/dev/null", "--scheduler-config", "/etc/hostname"],
    ] {
        let mut a: Vec<&str> = p.iter().map(String::as_str).collect::<Vec<_>>();
        a.splice(0..0, args.iter().copied());
        let (code, _, err) = rk(&a, &[]);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "one line for {args:?}: {err}");
    }
    std::fs::write(
        &f,
        "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\npercentageOfNodesToScore: 120\n",
    )
    .unwrap();
    let mut a = vec!["server", "--config", "/dev/null", "--scheduler-config", f.to_str().unwrap()];
    a.extend(p.iter().map(String::as_str));
    let (code, _, err) = rk(&a, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("config.yaml: percentageOfNodesToScore: Invalid value: 120: not in valid range [0-100]"),
        "{err}"
    );
    // registries.yaml: a named file that is missing, or a bad one, stops the start.
    std::fs::write(&f, "mirrors:\n  docker.io:\n    endpoint: [\"ftp://mirror\"]\n").unwrap();
    for (file, want) in [
        ("/nonexistent/registries.yaml", "--private-registry /nonexistent/registries.yaml: No such file"),
        (
            f.to_str().unwrap(),
            "config.yaml: mirrors.\"docker.io\": endpoint \"ftp://mirror\" has scheme \"ftp\" (http or https)",
        ),
    ] {
        for cmd in [&["server"][..], &["agent", "--join", "https://127.0.0.1:1", "--token", "K10abc::server:def"]] {
            let mut a: Vec<&str> = cmd.to_vec();
            a.extend(["--config", "/dev/null", "--private-registry", file]);
            match cmd[0] {
                "server" => a.extend(p.iter().map(String::as_str)),
                _ => a.extend(["--data-dir", data.to_str().unwrap()]),
            }
            let (code, _, err) = rk(&a, &[]);
            assert_eq!(code, 2, "{cmd:?} {file}: {err}");
            assert_eq!(err.lines().count(), 1, "one line: {err}");
            assert!(err.contains(want), "{cmd:?}: {err}");
        }
    }
    assert!(!data.exists(), "nothing was started or written");
}

#[test]
fn server_writes_identity_files_with_private_modes() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("rk.yaml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rk"))
        .args([
            "server",
            "--config",
            "/dev/null",
            "--bind-address",
            "127.0.0.1",
            "--https-listen-port",
            "0",
            "--disable-agent",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--write-kubeconfig")
        .arg(&kc)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if kc.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // SIGTERM: a clean stop.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {stderr}");
    assert_eq!(std::fs::metadata(&kc).unwrap().permissions().mode() & 0o777, 0o600);
    let token_path = dir.path().join("data/server/token");
    assert_eq!(std::fs::metadata(&token_path).unwrap().permissions().mode() & 0o777, 0o600);
    let token = std::fs::read_to_string(&token_path).unwrap();
    let ca = std::fs::read_to_string(dir.path().join("data/server/tls/server-ca.crt")).unwrap();
    assert!(token.trim().starts_with(&format!("K10{}::server:", rk::server::tls::ca_hash(&ca))), "{token}");
    let key_mode = std::fs::metadata(dir.path().join("data/server/tls/server-ca.key")).unwrap().permissions().mode();
    assert_eq!(key_mode & 0o777, 0o600);
}
