//! End-to-end lab: "hosts" that are network namespaces this test creates, joined by
//! veth pairs to a bridge in a "switch" namespace (one L2 segment), with no route out (no default route; blackhole routes for the cluster
//! and service CIDRs). rk, its containerd and the pods run inside them. Dropping the
//! lab ends every process it started (rk, containerd, shims, containers: found by
//! PID, by the lab's own paths and by the pods' cgroups), unmounts what containerd
//! mounted under the lab dir, removes the pods' cgroups and deletes the namespaces,
//! also when the test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The lab hosts' addresses on the segment between them.
pub const HOST_IPS: [&str; 3] = ["192.168.250.1", "192.168.250.2", "192.168.250.3"];

pub struct Lab {
    pub dir: tempfile::TempDir,
    pub hosts: Vec<String>,
    switch: String,
    procs: Vec<Child>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// Why the lab cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("not root".into());
    }
    for bin in ["containerd", "runc", "nsenter", "ip", "nft"] {
        if !std::env::var("PATH").unwrap_or_default().split(':').any(|d| Path::new(d).join(bin).exists()) {
            return Some(format!("{bin} is not installed (scripts/deps.sh installs it)"));
        }
    }
    None
}

/// Turn the kubelet's hard eviction thresholds and routine image GC off (see
/// [`Lab::spawn_rk`]), unless the test gives those flags itself.
const NO_EVICTION: [&str; 2] = ["--eviction-hard=", "--image-gc-high-threshold=100"];

/// The lab's node flags: [`NO_EVICTION`] less what `extra` sets, then `extra`.
fn node_flags<'a>(mut args: Vec<&'a str>, extra: &[&'a str]) -> Vec<&'a str> {
    for d in NO_EVICTION {
        let name = d.split('=').next().unwrap();
        if !extra.iter().any(|e| e.split('=').next() == Some(name)) {
            args.push(d);
        }
    }
    args.extend_from_slice(extra);
    args
}

impl Lab {
    /// Two hosts, `host0` (192.168.250.1) and `host1` (192.168.250.2).
    pub fn new() -> Lab {
        Lab::with_hosts(2)
    }

    /// `n` hosts (at most 3), host `i` at `HOST_IPS[i]`, on one switch.
    pub fn with_hosts(n: usize) -> Lab {
        assert!(n <= HOST_IPS.len());
        let dir = tempfile::Builder::new().prefix("rk-e2e-").tempdir_in("/tmp").unwrap();
        let tag = format!("rke2e{}", std::process::id());
        let hosts: Vec<String> = (0..n).map(|i| format!("{tag}-{i}")).collect();
        let switch = format!("{tag}-sw");
        let lab = Lab { dir, hosts: hosts.clone(), switch: switch.clone(), procs: vec![] };
        ip(&["netns", "add", &switch]);
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &switch, "link", "set", "br0", "up"]);
        for (i, h) in hosts.iter().enumerate() {
            ip(&["netns", "add", h]);
            ip(&["-n", h, "link", "set", "lo", "up"]);
            let (dev, port) = (format!("{tag}h{i}"), format!("{tag}s{i}"));
            ip(&["link", "add", &dev, "netns", h, "type", "veth", "peer", "name", &port, "netns", &switch]);
            ip(&["-n", &switch, "link", "set", &port, "master", "br0"]);
            ip(&["-n", &switch, "link", "set", &port, "up"]);
            ip(&["-n", h, "addr", "add", &format!("{}/24", HOST_IPS[i]), "dev", &dev]);
            ip(&["-n", h, "link", "set", &dev, "up"]);
            for cidr in ["10.42.0.0/16", "10.43.0.0/16"] {
                ip(&["-n", h, "route", "add", "blackhole", cidr]);
            }
        }
        lab
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// A command run inside host `h`.
    pub fn cmd(&self, h: usize, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/var/run/netns/{}", self.hosts[h])).arg(program);
        c
    }

    /// Starts `rk ARGS` on host `h` with its log in the lab dir; returns its PID.
    ///
    /// Lab nodes run without eviction thresholds or image GC: they share the host's
    /// disk, and a host whose disk is over 90% full (CI machines often are) would
    /// rightly report DiskPressure on every node and taint them all, so no new pod
    /// would schedule, and would remove the test images while no pod uses them.
    pub fn spawn_rk(&mut self, h: usize, args: &[&str], log: &str) -> u32 {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(self.path(log)).unwrap();
        let child = self
            .cmd(h, env!("CARGO_BIN_EXE_rk"))
            .args(args)
            .env("RK_CONFIG", self.path("empty-config.yaml"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("rk starts");
        let _ = std::fs::write(self.path("empty-config.yaml"), "");
        let pid = child.id();
        self.procs.push(child);
        pid
    }

    /// Starts `rk server` on host 0 as node `server` at `HOST_IPS[0]` (data in
    /// `<lab>/server`, admin kubeconfig `<lab>/kubeconfig.yaml`, log `server.log`), with
    /// `extra` flags; returns its PID.
    pub fn spawn_server(&mut self, extra: &[&str]) -> u32 {
        let server_dir = self.path("server");
        let kubeconfig = self.path("kubeconfig.yaml");
        let args = vec![
            "server",
            "--data-dir",
            server_dir.to_str().unwrap(),
            "--write-kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--node-name",
            "server",
            "--node-ip",
            HOST_IPS[0],
        ];
        self.spawn_rk(0, &node_flags(args, extra), "server.log")
    }

    /// Waits (up to 30 s) for the server on host 0 to write `kubeconfig.yaml` into the
    /// lab dir, then returns its join token (from `<lab>/server/server/token`).
    pub fn server_token(&self) -> String {
        let t0 = std::time::Instant::now();
        while !self.path("kubeconfig.yaml").exists() && t0.elapsed() < std::time::Duration::from_secs(30) {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        std::fs::read_to_string(self.path("server/server/token")).expect("the server's token file").trim().to_string()
    }

    /// Starts `rk agent` as node `worker` on host 1 (data in `<lab>/worker`), joining
    /// the server on host 0 with `token`; returns its PID.
    pub fn spawn_worker(&mut self, token: &str) -> u32 {
        self.spawn_agent(1, "worker", token, &[])
    }

    /// Starts `rk agent` as node `name` on host `h` (data in `<lab>/<name>`, log in
    /// `<lab>/<name>.log`), joining the server on host 0 with `token`, with `extra`
    /// flags; returns its PID.
    pub fn spawn_agent(&mut self, h: usize, name: &str, token: &str, extra: &[&str]) -> u32 {
        let url = format!("https://{}:6443", HOST_IPS[0]);
        let dir = self.path(name);
        let dir = dir.to_str().unwrap().to_string();
        let args = vec!["agent", "--join", &url, "--token", token, "--node-name", name, "--data-dir", &dir];
        self.spawn_rk(h, &node_flags(args, extra), &format!("{name}.log"))
    }

    /// The node dirs and logs the lab's rk processes use.
    fn node_names(&self) -> Vec<String> {
        let mut names = vec!["server".to_string()];
        for e in std::fs::read_dir(self.dir.path()).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if let Some(stem) = n.strip_suffix(".log") {
                if stem != "server" {
                    names.push(stem.to_string());
                }
            }
        }
        names
    }

    /// kubectl on host 0 with the lab's admin kubeconfig.
    pub fn kubectl(&self, args: &[&str]) -> std::process::Output {
        self.kubectl_stdin(args, None)
    }

    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        use std::io::Write;
        let mut child = self
            .cmd(0, "kubectl")
            .args(args)
            .env("KUBECONFIG", self.path("kubeconfig.yaml"))
            .env("KUBECACHEDIR", self.path("kubecache"))
            .env("HOME", self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        let mut sin = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            sin.write_all(s.as_bytes()).unwrap();
        }
        drop(sin);
        child.wait_with_output().unwrap()
    }

    /// kubectl that must succeed; returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(out.status.success(), "kubectl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Sends `sig` to a process this lab started.
    pub fn signal(&self, pid: u32, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
    }

    /// Waits for a process this lab started to exit.
    pub fn reap(&mut self, pid: u32) {
        if let Some(i) = self.procs.iter().position(|c| c.id() == pid) {
            let mut c = self.procs.remove(i);
            let _ = c.wait();
        }
    }

    /// Every process whose command line mentions the lab dir (containerd, shims).
    fn lab_processes(&self) -> Vec<i32> {
        let needle = self.dir.path().to_string_lossy().to_string();
        let me = std::process::id() as i32;
        let mut out = vec![];
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            if pid == me {
                continue;
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&needle) {
                out.push(pid);
            }
        }
        out
    }

    /// The UIDs of the pods the lab's kubelets ran: their volume dirs, and their log
    /// dirs (`<ns>_<name>_<uid>`, made before each sandbox, also for pods that never
    /// got a container).
    fn pod_uids(&self) -> Vec<String> {
        let mut uids = vec![];
        for host in self.node_names() {
            let d = self.path(&host).join("agent").join("pods");
            for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
                uids.push(e.file_name().to_string_lossy().to_string());
            }
            let d = self.path(&host).join("agent").join("pod-logs");
            for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
                if let Some(uid) = e.file_name().to_string_lossy().rsplit('_').next() {
                    uids.push(uid.to_string());
                }
            }
        }
        uids.sort();
        uids.dedup();
        uids
    }

    /// Processes in the cgroups of the lab's pods (the containers).
    fn container_processes(&self, uids: &[String]) -> Vec<i32> {
        let mut out = vec![];
        if uids.is_empty() {
            return out;
        }
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            if uids.iter().any(|u| cg.contains(&format!("/rk/pod{u}"))) {
                out.push(pid);
            }
        }
        out
    }
}

/// Polls `f` every 100 ms until it holds; panics naming `what` after `secs`. Returns
/// how long it took.
pub fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) -> std::time::Duration {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < std::time::Duration::from_secs(secs) {
        if f() {
            return t0.elapsed();
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("timed out after {secs}s waiting for {what}");
}

/// `kubectl ARGS -o jsonpath=PATH` on the lab; stdout (stderr printed on failure).
pub fn jsonpath(lab: &Lab, args: &[&str], path: &str) -> String {
    let jp = format!("jsonpath={path}");
    let mut a: Vec<&str> = args.to_vec();
    a.extend(["-o", jp.as_str()]);
    let out = lab.kubectl(&a);
    if !out.status.success() {
        eprintln!("kubectl {}: {}", a.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn remove_cgroup_tree(p: &Path) {
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(p);
}

impl Drop for Lab {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        if std::thread::panicking() {
            // What rk said, for a failure seen only in CI.
            for name in self.node_names() {
                let f = format!("{name}.log");
                let text = std::fs::read_to_string(self.path(&f)).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!("== last lines of {f}\n{}", lines[lines.len().saturating_sub(40)..].join("\n"));
            }
        }
        use nix::unistd::Pid;
        for c in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
        let uids = self.pod_uids();
        for _ in 0..3 {
            for pid in self.container_processes(&uids).into_iter().chain(self.lab_processes()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        // What containerd mounted (rootfs overlays, shm, pod netns) under the lab dir.
        let base = self.dir.path().to_string_lossy().to_string();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(String::from))
            .filter(|m| m.starts_with(&base))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        for u in &uids {
            for e in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
                remove_cgroup_tree(&e.path().join("rk").join(format!("pod{u}")));
            }
            remove_cgroup_tree(&Path::new("/sys/fs/cgroup/rk").join(format!("pod{u}")));
        }
        // The parent too, if nothing else (another rk) uses it.
        for e in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
            let _ = std::fs::remove_dir(e.path().join("rk"));
        }
        for h in self.hosts.iter().chain([&self.switch]) {
            let _ = Command::new("ip").args(["netns", "del", h]).output();
        }
    }
}

/// A one-file image named `name` (an image no pod needs).
pub fn tiny_image(out: &Path, name: &str) {
    use rk::agent::runtime::image::{FileEntry, ImageSpec, oci_archive};
    let spec = ImageSpec {
        name: name.into(),
        files: vec![FileEntry::file("hello.txt", 0o644, format!("{name}\n").into_bytes())],
        entrypoint: vec![],
        cmd: vec!["/hello".into()],
        env: vec![],
    };
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    std::fs::write(out, oci_archive(&spec).unwrap()).unwrap();
}

/// A busybox image (`docker.io/library/busybox:1.35`) built from the host's
/// busybox-static: /bin/busybox, its applet links, /etc/passwd and /etc/group.
pub fn busybox_image(out: &Path) {
    use rk::agent::runtime::image::{FileEntry, ImageSpec, oci_archive};
    let bb = std::fs::read("/bin/busybox").expect("busybox-static is installed (/bin/busybox)");
    let list = Command::new("/bin/busybox").arg("--list").output().expect("busybox runs");
    let mut files = vec![
        FileEntry::dir("bin", 0o755),
        FileEntry::dir("etc", 0o755),
        FileEntry::dir("tmp", 0o1777),
        FileEntry::dir("var", 0o755),
        FileEntry::dir("var/www", 0o755),
        FileEntry::file("bin/busybox", 0o755, bb),
        FileEntry::file(
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n".to_vec(),
        ),
        FileEntry::file("etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n".to_vec()),
    ];
    for a in String::from_utf8_lossy(&list.stdout).split_whitespace().filter(|a| *a != "busybox") {
        files.push(FileEntry::symlink(&format!("bin/{a}"), "busybox"));
    }
    let spec = ImageSpec {
        name: "docker.io/library/busybox:1.35".into(),
        files,
        entrypoint: vec![],
        cmd: vec!["sh".into()],
        env: vec!["PATH=/bin".into()],
    };
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    std::fs::write(out, oci_archive(&spec).unwrap()).unwrap();
}
