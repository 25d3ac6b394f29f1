//! `rk check-config`: whether this machine has what rk needs below it, each problem
//! with the command that fixes it (as k3s's check-config, for rk's parts).

use std::path::Path;

use crate::agent::runtime::containerd::{cni_bin_dir, which};

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Fine.
    Ok,
    /// Works, with less (a feature off, a port taken that only some parts use).
    Warn,
    /// rk will not work until it is fixed.
    Fail,
}

/// One check.
#[derive(Clone, Debug)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// The outcome.
    pub outcome: Outcome,
    /// What was found.
    pub detail: String,
    /// How to fix it (empty when fine).
    pub fix: String,
}

fn check(name: &'static str, outcome: Outcome, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check { name, outcome, detail: detail.into(), fix: fix.into() }
}

fn tool(name: &'static str, binary: &str, package: &str) -> Check {
    match which(binary) {
        Some(p) => check(name, Outcome::Ok, p.display().to_string(), ""),
        None => check(name, Outcome::Fail, format!("{binary} is not on PATH"), format!("apt-get install -y {package}")),
    }
}

fn kernel_has(module: &str, proc_list: Option<(&str, &str)>) -> bool {
    if Path::new("/sys/module").join(module).exists() {
        return true;
    }
    if let Some((file, word)) = proc_list
        && std::fs::read_to_string(file).is_ok_and(|t| t.split_whitespace().any(|w| w == word))
    {
        return true;
    }
    // Not loaded, but loadable or built in?
    let release = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    ["modules.dep", "modules.builtin"].iter().any(|f| {
        std::fs::read_to_string(format!("/lib/modules/{release}/{f}"))
            .is_ok_and(|t| t.lines().any(|l| l.split(':').next().is_some_and(|p| p.contains(&format!("/{module}.ko")))))
    })
}

fn module(name: &'static str, module: &str, proc_list: Option<(&str, &str)>, outcome_if_missing: Outcome) -> Check {
    if kernel_has(module, proc_list) {
        check(name, Outcome::Ok, format!("{module} available"), "")
    } else {
        check(name, outcome_if_missing, format!("the kernel has no {module}"), format!("modprobe {module}"))
    }
}

fn port(name: &'static str, port: u16, outcome_if_taken: Outcome, used_for: &str) -> Check {
    match std::net::TcpListener::bind(("0.0.0.0", port)) {
        Ok(_) => check(name, Outcome::Ok, format!("{port}/tcp is free"), ""),
        Err(e) => check(
            name,
            outcome_if_taken,
            format!("{port}/tcp: {e}"),
            format!("stop what listens on {port} ({used_for}); `ss -ltnp 'sport = :{port}'` shows it"),
        ),
    }
}

/// Runs every check.
pub fn run(data_dir: &Path, api_port: u16) -> Vec<Check> {
    let mut out = Vec::new();
    let root = nix::unistd::geteuid().is_root();
    out.push(if root {
        check("root", Outcome::Ok, "running as root", "")
    } else {
        check("root", Outcome::Fail, "not running as root", "run rk (and this check) as root, e.g. with sudo")
    });

    let release = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    let version: Vec<u32> = release.split(['.', '-']).take(2).filter_map(|p| p.parse().ok()).collect();
    out.push(if version.as_slice() >= [4, 19].as_slice() {
        check("kernel", Outcome::Ok, format!("Linux {release}"), "")
    } else {
        check("kernel", Outcome::Fail, format!("Linux {release}"), "upgrade to Linux 4.19 or newer")
    });

    // Enabled controllers, from /proc/cgroups (v1 and v2 alike).
    let table = std::fs::read_to_string("/proc/cgroups").unwrap_or_default();
    let have: Vec<&str> = table
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4 && f[3] == "1").then_some(f[0])
        })
        .collect();
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let missing: Vec<&str> = ["cpu", "memory", "pids"].into_iter().filter(|c| !have.contains(c)).collect();
    out.push(if have.is_empty() {
        check("cgroups", Outcome::Fail, "no cgroups (/proc/cgroups is empty)", "mount cgroup2 on /sys/fs/cgroup")
    } else if !missing.is_empty() {
        check(
            "cgroups",
            Outcome::Fail,
            format!("cgroup v2 lacks the {} controller(s)", missing.join(", ")),
            "enable them on the kernel command line (e.g. cgroup_enable=memory)",
        )
    } else {
        let mode = if v2 { "cgroup v2" } else { "cgroup v1" };
        check("cgroups", Outcome::Ok, format!("{mode}: {}", have.join(" ")), "")
    });

    out.push(module("overlay filesystem", "overlay", Some(("/proc/filesystems", "overlay")), Outcome::Fail));
    // nf_tables is often built in (no module to see): ask nft.
    let nft_works = which("nft").is_some_and(|nft| {
        std::process::Command::new(nft)
            .args(["list", "tables"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    out.push(if nft_works {
        check("nf_tables", Outcome::Ok, "nft lists tables", "")
    } else {
        module("nf_tables", "nf_tables", None, Outcome::Fail)
    });
    out.push(module("VXLAN (for --pod-network vxlan)", "vxlan", None, Outcome::Warn));
    out.push(module("bridge", "bridge", None, Outcome::Fail));
    out.push(if std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").is_ok_and(|v| v.trim() == "1") || root {
        check("IP forwarding", Outcome::Ok, "net.ipv4.ip_forward is on, or rk turns it on", "")
    } else {
        check("IP forwarding", Outcome::Warn, "net.ipv4.ip_forward is off", "sysctl -w net.ipv4.ip_forward=1")
    });

    out.push(tool("containerd", "containerd", "containerd"));
    out.push(tool("runc", "runc", "runc"));
    out.push(tool("nft", "nft", "nftables"));
    out.push(tool("conntrack (UDP Services)", "conntrack", "conntrack"));
    if let Some(c) = out.last_mut().filter(|c| c.outcome == Outcome::Fail) {
        c.outcome = Outcome::Warn;
    }
    let cni = cni_bin_dir();
    let plugins = ["bridge", "host-local", "loopback", "portmap"];
    let absent: Vec<&str> = plugins.into_iter().filter(|p| !cni.join(p).exists()).collect();
    out.push(if absent.is_empty() {
        check("CNI plugins", Outcome::Ok, cni.display().to_string(), "")
    } else {
        check(
            "CNI plugins",
            Outcome::Fail,
            format!("{} lacks {}", cni.display(), absent.join(", ")),
            "apt-get install -y containernetworking-plugins",
        )
    });

    out.push(port("API port", api_port, Outcome::Fail, "rk server's API, --https-listen-port"));
    out.push(port("ingress HTTP port", 80, Outcome::Warn, "rk's ingress"));
    out.push(port("ingress HTTPS port", 443, Outcome::Warn, "rk's ingress"));

    let probe = data_dir.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    out.push(match nix::sys::statvfs::statvfs(probe) {
        Ok(s) => {
            let free = s.blocks_available() * s.fragment_size();
            let gb = free as f64 / 1e9;
            if free < 2_000_000_000 {
                check(
                    "disk space",
                    Outcome::Warn,
                    format!("{gb:.1} GB free at {}", probe.display()),
                    "free some space: images and pod logs need a few GB",
                )
            } else {
                check("disk space", Outcome::Ok, format!("{gb:.1} GB free at {}", probe.display()), "")
            }
        }
        Err(e) => check("disk space", Outcome::Warn, format!("{}: {e}", probe.display()), ""),
    });
    out
}
