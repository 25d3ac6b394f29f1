//! Node pressure, as the kubelet's eviction manager judges it: eviction thresholds
//! (`--eviction-hard`, kubelet's defaults `memory.available<100Mi`,
//! `nodefs.available<10%`, `nodefs.inodesFree<5%`, `imagefs.available<15%`, and
//! `--eviction-soft`; the other eviction flags' per-signal values are here too) against
//! what the node has left, giving the MemoryPressure, DiskPressure and PIDPressure
//! conditions. The node lifecycle controller turns them into the
//! `node.kubernetes.io/*-pressure` NoSchedule taints, so new pods go elsewhere.
//!
//! Signals: `memory.available` is MemAvailable from /proc/meminfo; `nodefs.*` is the
//! file system of the data dir, `imagefs.*` that of the containerd root; `pid.available`
//! is `kernel.pid_max` minus the processes running.

use std::path::Path;

/// A signal the thresholds can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// `memory.available`.
    MemoryAvailable,
    /// `nodefs.available`.
    NodefsAvailable,
    /// `nodefs.inodesFree`.
    NodefsInodesFree,
    /// `imagefs.available`.
    ImagefsAvailable,
    /// `imagefs.inodesFree`.
    ImagefsInodesFree,
    /// `pid.available`.
    PidAvailable,
}

impl Signal {
    /// The signal's name as the kubelet's flags write it.
    pub fn name(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory.available",
            Signal::NodefsAvailable => "nodefs.available",
            Signal::NodefsInodesFree => "nodefs.inodesFree",
            Signal::ImagefsAvailable => "imagefs.available",
            Signal::ImagefsInodesFree => "imagefs.inodesFree",
            Signal::PidAvailable => "pid.available",
        }
    }

    fn parse(s: &str) -> Option<Signal> {
        Some(match s {
            "memory.available" => Signal::MemoryAvailable,
            "nodefs.available" => Signal::NodefsAvailable,
            "nodefs.inodesFree" => Signal::NodefsInodesFree,
            "imagefs.available" => Signal::ImagefsAvailable,
            "imagefs.inodesFree" => Signal::ImagefsInodesFree,
            "pid.available" => Signal::PidAvailable,
            _ => return None,
        })
    }

    /// The node condition the signal feeds.
    pub fn condition(self) -> Condition {
        match self {
            Signal::MemoryAvailable => Condition::Memory,
            Signal::PidAvailable => Condition::Pid,
            _ => Condition::Disk,
        }
    }
}

/// A node pressure condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Condition {
    /// MemoryPressure.
    Memory,
    /// DiskPressure.
    Disk,
    /// PIDPressure.
    Pid,
}

impl Condition {
    /// Every pressure condition, in the order the kubelet reports them.
    pub const ALL: [Condition; 3] = [Condition::Memory, Condition::Disk, Condition::Pid];

    /// The node condition type.
    pub fn name(self) -> &'static str {
        match self {
            Condition::Memory => "MemoryPressure",
            Condition::Disk => "DiskPressure",
            Condition::Pid => "PIDPressure",
        }
    }
}

/// How little of a signal is too little.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Amount {
    /// An absolute quantity (bytes, inodes, processes).
    Quantity(f64),
    /// A share of the capacity, 0..=1.
    Fraction(f64),
}

impl Amount {
    /// The amount as a quantity of a signal whose whole is `capacity`.
    pub fn of(self, capacity: f64) -> f64 {
        match self {
            Amount::Quantity(q) => q,
            Amount::Fraction(f) => f * capacity,
        }
    }

    /// `100Mi` or `10%`, as the kubelet's flags write amounts.
    fn parse(part: &str, value: &str) -> Result<Amount, String> {
        let value = value.trim();
        match value.strip_suffix('%') {
            Some(p) => match p.parse::<f64>() {
                Ok(p) if (0.0..=100.0).contains(&p) => Ok(Amount::Fraction(p / 100.0)),
                _ => Err(format!("{part:?}: {value:?} is not a percentage from 0% to 100%")),
            },
            None => match crate::server::scheduler::parse_quantity(value) {
                Some(q) if q >= 0.0 => Ok(Amount::Quantity(q)),
                _ => Err(format!("{part:?}: {value:?} is not a quantity")),
            },
        }
    }
}

fn signal(name: &str) -> Result<Signal, String> {
    Signal::parse(name.trim()).ok_or_else(|| {
        format!(
            "{name:?} is not an eviction signal (memory.available, nodefs.available, nodefs.inodesFree, \
             imagefs.available, imagefs.inodesFree, pid.available)"
        )
    })
}

/// `signal=value,...` (the kubelet's map flags), each signal at most once.
fn per_signal<T>(s: &str, value: impl Fn(&str, &str) -> Result<T, String>) -> Result<Vec<(Signal, T)>, String> {
    let mut out: Vec<(Signal, T)> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, v) = part.split_once('=').ok_or_else(|| format!("{part:?}: expected signal=value"))?;
        let sig = signal(name)?;
        if out.iter().any(|(s, _)| *s == sig) {
            return Err(format!("{name:?} is given twice"));
        }
        out.push((sig, value(part, v)?));
    }
    Ok(out)
}

/// `--eviction-soft-grace-period`: how long each soft threshold must stay crossed
/// before pods are evicted for it (`memory.available=1m30s,...`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GracePeriods(pub Vec<(Signal, std::time::Duration)>);

impl std::str::FromStr for GracePeriods {
    type Err = String;

    fn from_str(s: &str) -> Result<GracePeriods, String> {
        per_signal(s, |part, v| super::eviction::parse_duration(v.trim()).map_err(|e| format!("{part:?}: {e}")))
            .map(GracePeriods)
    }
}

/// `--eviction-minimum-reclaim`: how far past its threshold a signal must recover
/// before an eviction threshold counts as resolved (`nodefs.available=500Mi,...`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MinimumReclaim(pub Vec<(Signal, Amount)>);

impl std::str::FromStr for MinimumReclaim {
    type Err = String;

    fn from_str(s: &str) -> Result<MinimumReclaim, String> {
        per_signal(s, Amount::parse).map(MinimumReclaim)
    }
}

/// The hard (or soft) eviction thresholds.
#[derive(Clone, Debug, PartialEq)]
pub struct Thresholds(pub Vec<(Signal, Amount)>);

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds(vec![
            (Signal::MemoryAvailable, Amount::Quantity(100.0 * 1024.0 * 1024.0)),
            (Signal::NodefsAvailable, Amount::Fraction(0.10)),
            (Signal::NodefsInodesFree, Amount::Fraction(0.05)),
            (Signal::ImagefsAvailable, Amount::Fraction(0.15)),
        ])
    }
}

impl std::str::FromStr for Thresholds {
    type Err = String;

    /// Parses kubelet's `--eviction-hard` form: `signal<quantity` or `signal<N%`,
    /// comma-separated. As with the kubelet, naming any threshold replaces all the
    /// defaults; an empty string turns them all off.
    fn from_str(s: &str) -> Result<Thresholds, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('<')
                .ok_or_else(|| format!("{part:?}: expected signal<quantity, e.g. memory.available<100Mi"))?;
            let signal = signal(name)?;
            let amount = Amount::parse(part, value)?;
            if out.iter().any(|(s, _)| *s == signal) {
                return Err(format!("{name:?} is given twice"));
            }
            out.push((signal, amount));
        }
        Ok(Thresholds(out))
    }
}

/// A threshold crossed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Met {
    /// The signal.
    pub signal: Signal,
    /// The threshold, as a quantity (a percentage applied to the capacity).
    pub quantity: f64,
    /// What is available.
    pub available: f64,
}

/// One signal's reading: what is left, out of how much.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Reading {
    /// Available now.
    pub available: f64,
    /// The whole.
    pub capacity: f64,
}

/// The readings of every signal (None when it could not be read).
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// memory.available.
    pub memory: Option<Reading>,
    /// nodefs.available and nodefs.inodesFree.
    pub nodefs: Option<(Reading, Reading)>,
    /// imagefs.available and imagefs.inodesFree.
    pub imagefs: Option<(Reading, Reading)>,
    /// pid.available.
    pub pids: Option<Reading>,
}

/// A /proc/meminfo field (e.g. `"MemTotal:"`) in bytes.
pub fn meminfo(field: &str) -> Option<f64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let v = s.lines().find_map(|l| l.strip_prefix(field))?;
    Some(v.trim().trim_end_matches("kB").trim().parse::<f64>().ok()? * 1024.0)
}

fn fs(path: &Path) -> Option<(Reading, Reading)> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    let frag = s.fragment_size() as f64;
    Some((
        Reading { available: s.blocks_available() as f64 * frag, capacity: s.blocks() as f64 * frag },
        Reading { available: s.files_available() as f64, capacity: s.files() as f64 },
    ))
}

/// Reads the signals now; `nodefs` and `imagefs` are directories on those file systems.
pub fn observe(nodefs: &Path, imagefs: &Path) -> Observed {
    let pids = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|m| m.trim().parse::<f64>().ok())
        .zip(nix::sys::sysinfo::sysinfo().ok().map(|i| i.process_count() as f64))
        .map(|(max, running)| Reading { available: (max - running).max(0.0), capacity: max });
    Observed {
        memory: meminfo("MemTotal:")
            .zip(meminfo("MemAvailable:"))
            .map(|(capacity, available)| Reading { available, capacity }),
        nodefs: fs(nodefs),
        imagefs: fs(imagefs),
        pids,
    }
}

impl Observed {
    /// One signal's reading.
    pub fn reading(&self, s: Signal) -> Option<Reading> {
        match s {
            Signal::MemoryAvailable => self.memory,
            Signal::NodefsAvailable => self.nodefs.map(|f| f.0),
            Signal::NodefsInodesFree => self.nodefs.map(|f| f.1),
            Signal::ImagefsAvailable => self.imagefs.map(|f| f.0),
            Signal::ImagefsInodesFree => self.imagefs.map(|f| f.1),
            Signal::PidAvailable => self.pids,
        }
    }
}

impl Thresholds {
    /// The memory the kubelet keeps back from allocatable (the `memory.available`
    /// threshold, as kubelet's allocatable subtracts it).
    pub fn memory_reserve(&self, capacity: f64) -> f64 {
        self.0.iter().find(|(s, _)| *s == Signal::MemoryAvailable).map(|(_, a)| a.of(capacity)).unwrap_or(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_parse_as_the_kubelet_writes_them() {
        let t: Thresholds = "memory.available<1Gi, nodefs.available<5%,pid.available<1000".parse().unwrap();
        assert_eq!(
            t.0,
            vec![
                (Signal::MemoryAvailable, Amount::Quantity(1024.0 * 1024.0 * 1024.0)),
                (Signal::NodefsAvailable, Amount::Fraction(0.05)),
                (Signal::PidAvailable, Amount::Quantity(1000.0)),
            ]
        );
        assert_eq!("".parse::<Thresholds>().unwrap().0, vec![]);
        for bad in [
            "memory.available>1Gi",
            "memory.free<1Gi",
            "nodefs.available<150%",
            "memory.available<lots",
            "pid.available<1,pid.available<2",
        ] {
            assert!(bad.parse::<Thresholds>().is_err(), "{bad}");
        }
    }

    fn hard(t: Thresholds) -> super::super::eviction::EvictionArgs {
        super::super::eviction::EvictionArgs { eviction_hard: t, ..Default::default() }
    }

    #[test]
    fn crossing_a_threshold_raises_its_condition() {
        let o = Observed {
            memory: Some(Reading { available: 50e6, capacity: 8e9 }),
            nodefs: Some((Reading { available: 50e9, capacity: 100e9 }, Reading { available: 1e3, capacity: 1e6 })),
            imagefs: Some((Reading { available: 50e9, capacity: 100e9 }, Reading { available: 5e5, capacity: 1e6 })),
            pids: Some(Reading { available: 30000.0, capacity: 32768.0 }),
        };
        // 50 MB left is under 100Mi; 0.1% of inodes is under 5%.
        assert_eq!(hard(Thresholds::default()).pressure(&o), vec![Condition::Memory, Condition::Disk]);
        assert_eq!(hard("pid.available<31000".parse().unwrap()).pressure(&o), vec![Condition::Pid]);
        assert_eq!(hard(Thresholds(vec![])).pressure(&o), vec![]);
    }

    #[test]
    fn this_machine_can_be_observed() {
        let o = observe(Path::new("/"), Path::new("/"));
        assert!(o.memory.is_some_and(|m| m.capacity > 0.0 && m.available > 0.0));
        assert!(o.nodefs.is_some() && o.pids.is_some());
        // Asking for more free memory than the machine has is pressure.
        assert_eq!(hard("memory.available<1Pi".parse().unwrap()).pressure(&o), vec![Condition::Memory]);
    }
}
