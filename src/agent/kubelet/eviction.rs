//! The kubelet's eviction manager (`pkg/kubelet/eviction`) and image garbage collector.
//!
//! Every 10 s it reads the node's signals (see [`super::pressure`]) and:
//! - keeps the node's pressure conditions (a condition stays for
//!   `--eviction-pressure-transition-period` after its threshold was last crossed, so
//!   the node does not flap), which the pod workers use to admit new pods and the node
//!   status reports;
//! - removes unused images, oldest use first, when the image file system is fuller than
//!   `--image-gc-high-threshold` (down to the low threshold) and, to reclaim the node's
//!   own resources before any pod's, when a disk threshold is crossed;
//! - soft thresholds (`--eviction-soft`) raise the condition at once but drive
//!   eviction only after staying crossed for their `--eviction-soft-grace-period`; a
//!   threshold that drove eviction stays crossed until its signal is
//!   `--eviction-minimum-reclaim` past it (see [`Tracker`]);
//! - while a threshold is still crossed, evicts one pod per pass: ranked as the kubelet
//!   ranks them (pods using more than they request first, then lower priority, then
//!   larger use above the request; for PIDs, priority then process count), never a
//!   critical pod (static, or priority of `system-cluster-critical` and above). The
//!   pod's worker kills it at once for a hard threshold (a soft one gives it its own
//!   grace period, up to `--eviction-max-pod-grace-period`) and reports
//!   it Failed with reason `Evicted`, the kubelet's message and a `DisruptionTarget`
//!   condition; an `Evicted` Warning event says the same.
//!
//! Before the thresholds, whatever the node's pressure, it enforces each pod's local
//! storage limits as the kubelet's `localStorageEviction` does: an emptyDir over its
//! `sizeLimit`, a pod whose ephemeral storage (its containers' writable layers and logs
//! and its disk-backed emptyDirs) is over the sum of its containers'
//! `ephemeral-storage` limits, or a container whose writable layer and logs are over
//! its own limit gets the pod evicted at once, with the kubelet's message and no
//! `DisruptionTarget` condition (the node is not short of anything).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use tokio::sync::watch;

use super::pod_worker::{NodeCtx, Termination};
use super::pressure::{Amount, Condition, GracePeriods, Met, MinimumReclaim, Observed, Signal, Thresholds};

/// The eviction and image GC flags shared by `rk server` (for its own agent) and
/// `rk agent`, named as the kubelet's.
#[derive(clap::Args, Debug, Clone)]
pub struct EvictionArgs {
    /// The kubelet's hard eviction thresholds, below which the node reports
    /// MemoryPressure, DiskPressure or PIDPressure (and gets the matching NoSchedule
    /// taint), frees unused images and evicts pods. Naming any replaces all the
    /// defaults; "" turns them off.
    #[arg(
        long,
        env = "RK_EVICTION_HARD",
        value_name = "SIGNAL<QUANTITY,...",
        default_value = "memory.available<100Mi,nodefs.available<10%,nodefs.inodesFree<5%,imagefs.available<15%"
    )]
    pub eviction_hard: Thresholds,
    /// Soft eviction thresholds: crossing one raises the node's pressure condition at
    /// once, but pods are evicted only after it stays crossed for its
    /// `--eviction-soft-grace-period`, and get up to `--eviction-max-pod-grace-period`
    /// to stop.
    #[arg(long, env = "RK_EVICTION_SOFT", value_name = "SIGNAL<QUANTITY,...", default_value = "")]
    pub eviction_soft: Thresholds,
    /// How long each soft threshold must stay crossed before pods are evicted for it
    /// (every soft threshold needs one).
    #[arg(long, env = "RK_EVICTION_SOFT_GRACE_PERIOD", value_name = "SIGNAL=DURATION,...", default_value = "")]
    pub eviction_soft_grace_period: GracePeriods,
    /// The most seconds a pod evicted for a soft threshold gets to stop (its own
    /// terminationGracePeriodSeconds if less).
    #[arg(long, env = "RK_EVICTION_MAX_POD_GRACE_PERIOD", value_name = "SECONDS", default_value_t = 0)]
    pub eviction_max_pod_grace_period: i64,
    /// How far past its threshold a signal must recover before the threshold counts as
    /// resolved (and eviction for it stops).
    #[arg(long, env = "RK_EVICTION_MINIMUM_RECLAIM", value_name = "SIGNAL=QUANTITY,...", default_value = "")]
    pub eviction_minimum_reclaim: MinimumReclaim,
    /// How long a pressure condition stays after its threshold was last crossed.
    #[arg(long, env = "RK_EVICTION_PRESSURE_TRANSITION_PERIOD", value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub eviction_pressure_transition_period: Duration,
    /// Unused images are removed when the image file system is fuller than this
    /// percentage (100 turns routine image GC off).
    #[arg(long, env = "RK_IMAGE_GC_HIGH_THRESHOLD", value_name = "PERCENT", default_value_t = 85, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub image_gc_high_threshold: u8,
    /// ... down to this percentage.
    #[arg(long, env = "RK_IMAGE_GC_LOW_THRESHOLD", value_name = "PERCENT", default_value_t = 80, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub image_gc_low_threshold: u8,
    /// An image must have been on the node this long before it may be removed.
    #[arg(long, env = "RK_IMAGE_MINIMUM_GC_AGE", value_name = "DURATION", default_value = "2m", value_parser = parse_duration)]
    pub image_minimum_gc_age: Duration,
}

impl Default for EvictionArgs {
    fn default() -> Self {
        EvictionArgs {
            eviction_hard: Thresholds::default(),
            eviction_soft: Thresholds(vec![]),
            eviction_soft_grace_period: GracePeriods::default(),
            eviction_max_pod_grace_period: 0,
            eviction_minimum_reclaim: MinimumReclaim::default(),
            eviction_pressure_transition_period: Duration::from_secs(300),
            image_gc_high_threshold: 85,
            image_gc_low_threshold: 80,
            image_minimum_gc_age: Duration::from_secs(120),
        }
    }
}

impl EvictionArgs {
    /// The kubelet's checks across flags: every soft threshold has a grace period.
    pub fn check(&self) -> Result<(), String> {
        for (s, _) in &self.eviction_soft.0 {
            if !self.eviction_soft_grace_period.0.iter().any(|(g, _)| g == s) {
                return Err(format!(
                    "--eviction-soft: grace period must be specified for the soft eviction threshold {}",
                    s.name()
                ));
            }
        }
        if self.eviction_max_pod_grace_period < 0 {
            return Err("--eviction-max-pod-grace-period must not be negative".into());
        }
        Ok(())
    }

    /// The conditions under pressure now, by hard and soft thresholds alike.
    pub fn pressure(&self, o: &Observed) -> Vec<Condition> {
        Tracker::new(self.thresholds()).observe(o, Instant::now()).0
    }

    /// Every threshold, hard then soft, with its grace period and minimum reclaim.
    fn thresholds(&self) -> Vec<Threshold> {
        let reclaim = |s: Signal| self.eviction_minimum_reclaim.0.iter().find(|(r, _)| *r == s).map(|r| r.1);
        let hard = self.eviction_hard.0.iter().map(|(s, a)| (*s, *a, None));
        let soft = self.eviction_soft.0.iter().map(|(s, a)| {
            let grace = self.eviction_soft_grace_period.0.iter().find(|(g, _)| g == s).map_or(Duration::ZERO, |g| g.1);
            (*s, *a, Some(grace))
        });
        hard.chain(soft)
            .map(|(signal, amount, grace)| Threshold { signal, amount, grace, min_reclaim: reclaim(signal) })
            .collect()
    }
}

/// One eviction threshold.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Threshold {
    /// The signal.
    pub signal: Signal,
    /// Too little of it.
    pub amount: Amount,
    /// None for a hard threshold; a soft one's grace period.
    pub grace: Option<Duration>,
    /// `--eviction-minimum-reclaim` for the signal.
    pub min_reclaim: Option<Amount>,
}

/// The kubelet's bookkeeping of thresholds across passes (`synchronize`): when each
/// was first seen crossed, and which drove eviction last time (those stay crossed until
/// the signal is their minimum reclaim past them).
#[derive(Debug, Default)]
pub struct Tracker {
    thresholds: Vec<Threshold>,
    first_observed: Vec<(Threshold, Instant)>,
    last: Vec<Threshold>,
}

impl Tracker {
    /// A tracker of `thresholds`.
    pub fn new(thresholds: Vec<Threshold>) -> Tracker {
        Tracker { thresholds, ..Default::default() }
    }

    fn crossed(t: &Threshold, o: &Observed, min_reclaim: bool) -> Option<Met> {
        let r = o.reading(t.signal)?;
        let quantity = t.amount.of(r.capacity);
        let margin = if min_reclaim { t.min_reclaim.map_or(0.0, |a| a.of(r.capacity)) } else { 0.0 };
        (r.available < quantity + margin).then_some(Met { signal: t.signal, quantity, available: r.available })
    }

    /// One pass: the thresholds crossed now (or not yet reclaimed past), which give the
    /// node's conditions, and of those the ones whose grace period is over, which
    /// drive eviction, in the kubelet's order (memory, then disk, then PIDs; hard first).
    pub fn observe(&mut self, o: &Observed, now: Instant) -> (Vec<Condition>, Vec<(Threshold, Met)>) {
        let met: Vec<(Threshold, Met)> = self
            .thresholds
            .iter()
            .filter_map(|t| Tracker::crossed(t, o, self.last.contains(t)).map(|m| (*t, m)))
            .collect();
        self.first_observed.retain(|(t, _)| met.iter().any(|(m, _)| m == t));
        for (t, _) in &met {
            if !self.first_observed.iter().any(|(f, _)| f == t) {
                self.first_observed.push((*t, now));
            }
        }
        let conditions = Condition::ALL.into_iter().filter(|c| met.iter().any(|(t, _)| t.signal.condition() == *c));
        let conditions = conditions.collect();
        let mut ready: Vec<(Threshold, Met)> = met
            .into_iter()
            .filter(|(t, _)| {
                let since = self.first_observed.iter().find(|(f, _)| f == t).map_or(now, |f| f.1);
                t.grace.is_none_or(|g| now.duration_since(since) >= g)
            })
            .collect();
        ready.sort_by_key(|(t, _)| (urgency(t.signal), t.grace.is_some()));
        self.last = ready.iter().map(|(t, _)| *t).collect();
        (conditions, ready)
    }

    /// Of `ready`, those still crossed by their minimum reclaim after the node freed
    /// what it could of its own (the kubelet's `reclaimNodeLevelResources`).
    pub fn unresolved(ready: &[(Threshold, Met)], o: &Observed) -> Vec<(Threshold, Met)> {
        ready.iter().filter_map(|(t, _)| Tracker::crossed(t, o, true).map(|m| (*t, m))).collect()
    }
}

/// Parses a Go duration as the kubelet's flags take it: `0`, `90s`, `5m`, `1h30m`, `500ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (e.g. 30s, 5m, 1h30m)");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = Duration::ZERO;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.').ok_or_else(bad)?;
        let n: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += Duration::from_secs_f64(n * secs);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

const MONITOR_EVERY: Duration = Duration::from_secs(10);

/// The resource an eviction reclaims, as the kubelet names it in its messages.
fn resource(s: Signal) -> &'static str {
    match s {
        Signal::MemoryAvailable => "memory",
        Signal::NodefsAvailable | Signal::ImagefsAvailable => "ephemeral-storage",
        Signal::NodefsInodesFree | Signal::ImagefsInodesFree => "inodes",
        Signal::PidAvailable => "pids",
    }
}

/// The order the kubelet reclaims in: memory, then disk, then PIDs.
fn urgency(s: Signal) -> u8 {
    match s.condition() {
        Condition::Memory => 0,
        Condition::Disk => 1,
        Condition::Pid => 2,
    }
}

/// `v` as a Kubernetes quantity prints it: the largest suffix that divides it exactly,
/// in steps of `base` (`100Mi`, `81848Ki`, `1000` in BinarySI; `5k` in DecimalSI).
fn si(v: f64, base: u64, suffixes: [&str; 7]) -> String {
    let mut v = v.max(0.0) as u64;
    let mut i = 0;
    while v != 0 && v % base == 0 && i + 1 < suffixes.len() {
        v /= base;
        i += 1;
    }
    format!("{v}{}", suffixes[i])
}

/// A byte count as a BinarySI quantity.
pub fn binary_si(v: f64) -> String {
    si(v, 1024, ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"])
}

/// A count as a DecimalSI quantity.
fn decimal_si(v: f64) -> String {
    si(v, 1000, ["", "k", "M", "G", "T", "P", "E"])
}

fn quantity(s: Signal, v: f64) -> String {
    match s {
        Signal::MemoryAvailable | Signal::NodefsAvailable | Signal::ImagefsAvailable => binary_si(v),
        _ => decimal_si(v),
    }
}

/// A critical pod, which the kubelet never evicts nor rejects: a static pod (or its
/// mirror) or one with a priority of `system-cluster-critical` (2e9) or more.
pub fn is_critical(pod: &Pod) -> bool {
    let a = pod.annotations();
    a.get(super::static_pods::SOURCE).is_some_and(|s| s != "api")
        || a.contains_key(super::static_pods::MIRROR)
        || pod.spec.as_ref().and_then(|s| s.priority).is_some_and(|p| p >= 2_000_000_000)
}

/// The kubelet's admission of a new pod under pressure (eviction manager `Admit`):
/// critical pods always; under memory pressure alone, pods that are not BestEffort or
/// that tolerate the memory-pressure taint; under any other pressure, none. Else the
/// message the pod is rejected with.
pub fn admit(pod: &Pod, under: &[Condition]) -> Result<(), String> {
    if under.is_empty() || is_critical(pod) {
        return Ok(());
    }
    if under == [Condition::Memory] {
        let tolerates = pod.spec.as_ref().and_then(|s| s.tolerations.as_ref()).is_some_and(|ts| {
            ts.iter().any(|t| {
                let key = t.key.as_deref().unwrap_or("");
                let exists = t.operator.as_deref() == Some("Exists");
                let key_ok = key == "node.kubernetes.io/memory-pressure" || (key.is_empty() && exists);
                let effect_ok = matches!(t.effect.as_deref(), None | Some("") | Some("NoSchedule"));
                let value_ok = exists || t.value.as_deref().unwrap_or("").is_empty();
                key_ok && effect_ok && value_ok
            })
        });
        if super::status::qos_class(pod) != "BestEffort" || tolerates {
            return Ok(());
        }
    }
    let names: Vec<&str> = under.iter().map(|c| c.name()).collect();
    Err(format!("The node had condition: [{}]. ", names.join(" ")))
}

/// What a pod uses, per container: (name, memory working set, disk), and in all:
/// its processes, and disk outside the containers (volumes, logs).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Usage {
    /// Per container: name, working set bytes, writable layer bytes.
    pub containers: Vec<(String, f64, f64)>,
    /// Bytes of the pod's volumes and logs.
    pub pod_disk: f64,
    /// Processes in the pod's cgroup.
    pub pids: f64,
}

impl Usage {
    fn memory(&self) -> f64 {
        self.containers.iter().map(|c| c.1).sum()
    }

    fn disk(&self) -> f64 {
        self.containers.iter().map(|c| c.2).sum::<f64>() + self.pod_disk
    }
}

/// What a pod uses of the node's disk, for its local storage limits.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StorageUsage {
    /// Bytes in each emptyDir volume, by volume name.
    pub empty_dirs: HashMap<String, f64>,
    /// Bytes of each container's writable layer and logs, by container name.
    pub containers: HashMap<String, f64>,
}

type Container = k8s_openapi::api::core::v1::Container;

/// A container's request (`limits` false) or limit of `resource`: its value and its
/// text as the spec writes it.
fn spec_quantity<'a>(c: &'a Container, resource: &str, limits: bool) -> Option<(f64, &'a str)> {
    let r = c.resources.as_ref()?;
    let q = if limits { r.limits.as_ref() } else { r.requests.as_ref() }?.get(resource)?;
    crate::server::scheduler::parse_quantity(&q.0).map(|v| (v, q.0.as_str()))
}

/// A container's limit of `resource`, when it sets one above 0.
fn limit<'a>(c: &'a Container, resource: &str) -> Option<(f64, &'a str)> {
    spec_quantity(c, resource, true).filter(|l| l.0 > 0.0)
}

/// The pod's `ephemeral-storage` limit as the kubelet sums it (`PodLimits`): its
/// containers' limits added up, or an init container's if larger; None when no
/// container sets one.
fn pod_storage_limit(pod: &Pod) -> Option<f64> {
    let spec = pod.spec.as_ref()?;
    let of =
        |cs: &[Container]| cs.iter().filter_map(|c| limit(c, "ephemeral-storage").map(|l| l.0)).collect::<Vec<_>>();
    let (limits, init) = (of(&spec.containers), of(spec.init_containers.as_deref().unwrap_or_default()));
    (!limits.is_empty() || !init.is_empty()).then(|| init.into_iter().fold(limits.iter().sum(), f64::max))
}

/// Whether the pod sets any local storage limit (only those pods are measured).
pub fn has_storage_limits(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else { return false };
    pod_storage_limit(pod).is_some()
        || spec.volumes.iter().flatten().any(|v| v.empty_dir.as_ref().is_some_and(|e| e.size_limit.is_some()))
}

/// The kubelet's `localStorageEviction` for one pod, in its order: an emptyDir over its
/// `sizeLimit`, the pod over its containers' summed limit, a container over its own.
/// The eviction message when one is exceeded.
pub fn storage_limit_exceeded(pod: &Pod, u: &StorageUsage) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    for v in spec.volumes.iter().flatten() {
        let Some(size) = v.empty_dir.as_ref().and_then(|e| e.size_limit.as_ref()) else { continue };
        let (Some(limit), Some(used)) = (crate::server::scheduler::parse_quantity(&size.0), u.empty_dirs.get(&v.name))
        else {
            continue;
        };
        if limit > 0.0 && *used > limit {
            return Some(format!("Usage of EmptyDir volume {:?} exceeds the limit {:?}. ", v.name, size.0));
        }
    }
    if let Some(limit) = pod_storage_limit(pod) {
        let memory = |name: &str| {
            spec.volumes
                .iter()
                .flatten()
                .any(|v| v.name == name && v.empty_dir.as_ref().and_then(|e| e.medium.as_deref()) == Some("Memory"))
        };
        let volumes: f64 = u.empty_dirs.iter().filter(|(n, _)| !memory(n)).map(|(_, b)| b).sum();
        let total = u.containers.values().sum::<f64>() + volumes;
        if total > limit {
            return Some(format!(
                "Pod ephemeral local storage usage exceeds the total limit of containers {}. ",
                binary_si(limit)
            ));
        }
    }
    for c in &spec.containers {
        if let (Some((limit, text)), Some(used)) = (limit(c, "ephemeral-storage"), u.containers.get(&c.name))
            && *used > limit
        {
            return Some(format!("Container {} exceeded its local ephemeral storage limit {text:?}. ", c.name));
        }
    }
    None
}

/// What a container requests of `resource` (0 when it does not say).
fn request(c: &Container, resource: &str) -> f64 {
    spec_quantity(c, resource, false).map_or(0.0, |q| q.0)
}

fn pod_request(pod: &Pod, resource: &str) -> f64 {
    pod.spec.as_ref().map(|s| s.containers.iter().map(|c| request(c, resource)).sum()).unwrap_or(0.0)
}

/// The pods in the order the kubelet would evict them for `signal`.
pub fn rank<'a>(pods: &'a [Pod], usage: &HashMap<String, Usage>, signal: Signal) -> Vec<&'a Pod> {
    let none = Usage::default();
    let key = |p: &Pod| {
        let u = usage.get(&p.uid().unwrap_or_default()).unwrap_or(&none);
        let prio = p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
        match signal.condition() {
            Condition::Pid => (false, prio, -u.pids),
            Condition::Memory => {
                let over = u.memory() - pod_request(p, "memory");
                (over <= 0.0, prio, -over)
            }
            Condition::Disk => {
                let over = u.disk() - pod_request(p, "ephemeral-storage");
                (over <= 0.0, prio, -over)
            }
        }
    };
    let mut out: Vec<&Pod> = pods.iter().collect();
    out.sort_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        ka.0.cmp(&kb.0).then(ka.1.cmp(&kb.1)).then(ka.2.total_cmp(&kb.2))
    });
    out
}

/// The kubelet's eviction message: the resource, the threshold and what was left, and
/// each container using more than it requests.
pub fn message(met: &Met, pod: &Pod, usage: Option<&Usage>) -> String {
    let res = resource(met.signal);
    let mut m = format!(
        "The node was low on resource: {res}. Threshold quantity: {}, available: {}. ",
        quantity(met.signal, met.quantity),
        quantity(met.signal, met.available)
    );
    let Some(u) = usage else { return m };
    for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        let Some((_, mem, disk)) = u.containers.iter().find(|(n, ..)| *n == c.name) else { continue };
        let used = match res {
            "memory" => *mem,
            "ephemeral-storage" => *disk,
            _ => continue,
        };
        let req = request(c, res);
        if used > req {
            let req_s = spec_quantity(c, res, false).map_or("0", |q| q.1);
            m += &format!(
                "Container {} was using {}, request is {req_s}, has larger consumption of {res}. ",
                c.name,
                binary_si(used)
            );
        }
    }
    m
}

/// The eviction manager of one node.
pub struct Manager {
    ctx: Arc<NodeCtx>,
    args: EvictionArgs,
    nodefs: PathBuf,
    imagefs: PathBuf,
    /// When each condition's threshold was last crossed.
    last_met: HashMap<Condition, Instant>,
    /// The thresholds across passes.
    tracker: Tracker,
    /// Per image ID: when this kubelet first saw it, and when it last saw it in use.
    images: HashMap<String, (Instant, Instant)>,
    pressure: watch::Sender<Vec<Condition>>,
}

impl Manager {
    /// A manager for the node of `ctx`, whose data dir is `nodefs` and image file
    /// system `imagefs`; it publishes the node's conditions on `pressure`.
    pub fn new(
        ctx: Arc<NodeCtx>,
        args: EvictionArgs,
        nodefs: PathBuf,
        imagefs: PathBuf,
        pressure: watch::Sender<Vec<Condition>>,
    ) -> Manager {
        let tracker = Tracker::new(args.thresholds());
        Manager { ctx, args, nodefs, imagefs, last_met: HashMap::new(), tracker, images: HashMap::new(), pressure }
    }

    /// Runs forever, one pass every 10 s.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(MONITOR_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.sync().await;
        }
    }

    async fn sync(&mut self) {
        let mut observed = super::pressure::observe(&self.nodefs, &self.imagefs);
        // Routine image GC: above the high threshold, down to the low one.
        let mut want = 0.0;
        if let Some((fs, _)) = observed.imagefs
            && self.args.image_gc_high_threshold < 100
            && fs.capacity > 0.0
        {
            let used = 100.0 * (1.0 - fs.available / fs.capacity);
            if used > f64::from(self.args.image_gc_high_threshold) {
                want = (used - f64::from(self.args.image_gc_low_threshold)) / 100.0 * fs.capacity;
            }
        }
        if self.free_images(want).await > 0.0 {
            observed = super::pressure::observe(&self.nodefs, &self.imagefs);
        }
        let now = Instant::now();
        let (crossed, mut ready) = self.tracker.observe(&observed, now);
        for c in crossed {
            self.last_met.insert(c, now);
        }
        let period = self.args.eviction_pressure_transition_period;
        let under: Vec<Condition> = Condition::ALL
            .into_iter()
            .filter(|c| self.last_met.get(c).is_some_and(|t| now.duration_since(*t) <= period))
            .collect();
        self.pressure.send_if_modified(|cur| {
            if *cur == under {
                return false;
            }
            tracing::info!(node = %self.ctx.node, conditions = ?under.iter().map(|c| c.name()).collect::<Vec<_>>(), "node pressure changed");
            *cur = under;
            true
        });
        // The node's own resources before any pod's: disk pressure frees unused images
        // (even while memory, evicted for first, is short too), and no pod goes for a
        // threshold that this resolves (past its minimum reclaim).
        if ready.iter().any(|(t, _)| t.signal.condition() == Condition::Disk)
            && self.free_images(f64::INFINITY).await > 0.0
        {
            observed = super::pressure::observe(&self.nodefs, &self.imagefs);
            ready = Tracker::unresolved(&ready, &observed);
        }
        if self.local_storage_eviction().await {
            return;
        }
        if let Some((t, m)) = ready.first() {
            self.evict_one(t, m).await;
        }
    }

    /// The pods on the node that are running or about to: not finished, not being
    /// deleted, not already chosen for eviction.
    fn active_pods(&self) -> Vec<Arc<Pod>> {
        let pending = self.ctx.evictions.lock().expect("evictions").keys().cloned().collect::<Vec<_>>();
        let pods = self.ctx.pods.lock().expect("pods").values().cloned().collect::<Vec<_>>();
        pods.into_iter()
            .filter(|p| {
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("");
                !matches!(phase, "Succeeded" | "Failed")
                    && p.metadata.deletion_timestamp.is_none()
                    && !pending.contains(&p.uid().unwrap_or_default())
            })
            .collect()
    }

    /// Evicts every pod over one of its local storage limits; whether any was.
    async fn local_storage_eviction(&self) -> bool {
        let pods: Vec<Arc<Pod>> = self.active_pods().into_iter().filter(|p| has_storage_limits(p)).collect();
        if pods.is_empty() {
            return false;
        }
        let layers = self.usage().await;
        let mut evicted = false;
        for pod in pods {
            let uid = pod.uid().unwrap_or_default();
            let mut u = StorageUsage::default();
            let dirs = self.ctx.pods_root.join(&uid).join("volumes").join("kubernetes.io~empty-dir");
            for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()).filter(|v| v.empty_dir.is_some()) {
                u.empty_dirs.insert(v.name.clone(), dir_size(&dirs.join(&v.name)));
            }
            let logs = self.ctx.log_dir(&pod.namespace().unwrap_or_default(), &pod.name_any(), &uid);
            for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
                let layer =
                    layers.get(&uid).and_then(|l| l.containers.iter().find(|x| x.0 == c.name)).map_or(0.0, |x| x.2);
                u.containers.insert(c.name.clone(), layer + dir_size(&logs.join(&c.name)));
            }
            let Some(msg) = storage_limit_exceeded(&pod, &u) else { continue };
            if is_critical(&pod) {
                tracing::warn!(pod = %pod.name_any(), message = %msg, "a critical pod is over its local storage limit; not evicting it");
                continue;
            }
            self.evict(&pod, msg, 0, false);
            evicted = true;
        }
        evicted
    }

    /// Hands `pod` to its worker to be killed (`grace` seconds after SIGTERM) and
    /// reported `Evicted` with `message`, with an `Evicted` event.
    fn evict(&self, pod: &Pod, message: String, grace: i64, disruption: bool) {
        tracing::info!(pod = %format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()), %message, "evicting a pod");
        super::pod_worker::pod_event(&self.ctx, pod, None, true, "Evicted", message.clone());
        let t = Termination { reason: "Evicted".into(), message, grace, disruption };
        self.ctx.evictions.lock().expect("evictions").insert(pod.uid().unwrap_or_default(), t);
        self.ctx.wake.send_replace(());
    }

    /// Removes unused images, least recently used first, until `want` bytes are
    /// freed; returns the bytes freed. With `want` 0 it only tracks the images.
    async fn free_images(&mut self, want: f64) -> f64 {
        let cri = &self.ctx.cri;
        let Ok(list) = cri.img().list_images(cri::ListImagesRequest { filter: None }).await else { return 0.0 };
        let Ok(containers) = cri.rt().list_containers(cri::ListContainersRequest { filter: None }).await else {
            return 0.0;
        };
        let mut in_use: std::collections::HashSet<String> = Default::default();
        for c in containers.into_inner().containers {
            in_use.insert(c.image_ref);
            if let Some(i) = c.image {
                in_use.insert(i.image);
            }
        }
        let now = Instant::now();
        let images = list.into_inner().images;
        self.images.retain(|id, _| images.iter().any(|i| &i.id == id));
        let mut candidates = Vec::new();
        for i in &images {
            let used = in_use.contains(&i.id)
                || i.repo_tags.iter().any(|t| in_use.contains(t))
                || i.repo_digests.iter().any(|d| in_use.contains(d));
            let seen = self.images.entry(i.id.clone()).or_insert((now, now));
            if used {
                seen.1 = now;
                continue;
            }
            let pinned = i.pinned || i.repo_tags.iter().any(|t| t == super::super::runtime::pause::PAUSE_IMAGE);
            if !pinned && now.duration_since(seen.0) >= self.args.image_minimum_gc_age {
                candidates.push((seen.1, i.id.clone(), i.repo_tags.clone(), i.size as f64));
            }
        }
        if want <= 0.0 {
            return 0.0;
        }
        candidates.sort_by_key(|c| c.0);
        let mut freed = 0.0;
        for (_, id, tags, size) in candidates {
            if freed >= want {
                break;
            }
            let spec = cri::ImageSpec { image: id.clone(), ..Default::default() };
            match cri.img().remove_image(cri::RemoveImageRequest { image: Some(spec) }).await {
                Ok(_) => {
                    tracing::info!(image = %id, ?tags, bytes = size, "removed an unused image");
                    self.images.remove(&id);
                    freed += size.max(1.0);
                }
                Err(e) => tracing::warn!(image = %id, error = %e.message(), "removing an unused image failed"),
            }
        }
        freed
    }

    /// What each pod on the node uses, by UID.
    async fn usage(&self) -> HashMap<String, Usage> {
        let mut out: HashMap<String, Usage> = HashMap::new();
        let stats = match self.ctx.cri.rt().list_container_stats(cri::ListContainerStatsRequest { filter: None }).await
        {
            Ok(r) => r.into_inner().stats,
            Err(_) => vec![],
        };
        let val = |v: &Option<cri::UInt64Value>| v.as_ref().map(|v| v.value as f64).unwrap_or(0.0);
        for st in stats {
            let Some(attr) = st.attributes else { continue };
            let Some(uid) = attr.labels.get("io.kubernetes.pod.uid") else { continue };
            let name = attr.metadata.map(|m| m.name).unwrap_or_default();
            let mem = st.memory.as_ref().map(|m| val(&m.working_set_bytes)).unwrap_or(0.0);
            let disk = st.writable_layer.as_ref().map(|w| val(&w.used_bytes)).unwrap_or(0.0);
            let u = out.entry(uid.clone()).or_default();
            match u.containers.iter_mut().find(|c| c.0 == name) {
                // An earlier run of the same container: count the larger.
                Some(c) => {
                    c.1 = c.1.max(mem);
                    c.2 = c.2.max(disk);
                }
                None => u.containers.push((name, mem, disk)),
            }
        }
        out
    }

    /// Evicts the first pod in the kubelet's order for `met` that may be evicted.
    async fn evict_one(&self, threshold: &Threshold, met: &Met) {
        let active: Vec<Pod> = self.active_pods().into_iter().map(Arc::unwrap_or_clone).collect();
        if active.is_empty() {
            return;
        }
        let mut usage = self.usage().await;
        for p in &active {
            let uid = p.uid().unwrap_or_default();
            let u = usage.entry(uid.clone()).or_default();
            u.pod_disk = dir_size(&self.ctx.pods_root.join(&uid));
            u.pod_disk += dir_size(&self.ctx.log_dir(&p.namespace().unwrap_or_default(), &p.name_any(), &uid));
            u.pids = std::fs::read_to_string(format!("/sys/fs/cgroup{}/pod{uid}/pids.current", self.ctx.cgroup_root))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0.0);
        }
        for pod in rank(&active, &usage, met.signal) {
            if is_critical(pod) {
                continue;
            }
            let msg = message(met, pod, usage.get(&pod.uid().unwrap_or_default()));
            // A hard threshold kills at once; a soft one gives the pod its own grace
            // period, up to --eviction-max-pod-grace-period.
            let grace = match threshold.grace {
                None => 0,
                Some(_) => {
                    let own = pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(30);
                    self.args.eviction_max_pod_grace_period.min(own)
                }
            };
            self.evict(pod, msg, grace, true);
            return;
        }
        tracing::warn!(signal = ?met.signal, "a threshold is crossed but no pod may be evicted");
    }
}

/// Bytes in the files under `p`.
fn dir_size(p: &Path) -> f64 {
    let mut total = 0.0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(md) = e.path().symlink_metadata() else { continue };
            if md.is_dir() {
                stack.push(e.path());
            } else {
                total += md.len() as f64;
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(uid: &str, v: serde_json::Value) -> Pod {
        let mut p: Pod = serde_json::from_value(v).unwrap();
        p.metadata.uid = Some(uid.into());
        p.metadata.name = Some(uid.into());
        p
    }

    fn usage(mem: f64) -> Usage {
        Usage { containers: vec![("c".into(), mem, 0.0)], pod_disk: 0.0, pids: 0.0 }
    }

    #[test]
    fn local_storage_limits_follow_the_kubelet() {
        let p = pod(
            "a",
            json!({"spec": {
                "containers": [
                    {"name": "app", "image": "x", "resources": {"limits": {"ephemeral-storage": "2Mi"}}},
                    {"name": "side", "image": "x", "resources": {"limits": {"ephemeral-storage": "1Mi"}}},
                    {"name": "free", "image": "x"}
                ],
                "initContainers": [{"name": "init", "image": "x", "resources": {"limits": {"ephemeral-storage": "1Mi"}}}],
                "volumes": [
                    {"name": "scratch", "emptyDir": {"sizeLimit": "1Mi"}},
                    {"name": "ram", "emptyDir": {"medium": "Memory"}},
                    {"name": "disk", "emptyDir": {}}
                ]
            }}),
        );
        assert!(has_storage_limits(&p));
        assert_eq!(pod_storage_limit(&p), Some(3.0 * 1048576.0));
        let mib = 1048576.0;
        let u = |scratch: f64, ram: f64, disk: f64, app: f64, side: f64| StorageUsage {
            empty_dirs: [("scratch", scratch), ("ram", ram), ("disk", disk)].map(|(k, v)| (k.to_string(), v)).into(),
            containers: [("app", app), ("side", side), ("free", 0.0)].map(|(k, v)| (k.to_string(), v)).into(),
        };
        assert_eq!(storage_limit_exceeded(&p, &u(mib, 0.0, 0.0, mib, 0.0)), None, "at the limits is within them");
        assert_eq!(
            storage_limit_exceeded(&p, &u(2.0 * mib, 0.0, 0.0, 0.0, 0.0)).as_deref(),
            Some("Usage of EmptyDir volume \"scratch\" exceeds the limit \"1Mi\". ")
        );
        assert_eq!(
            storage_limit_exceeded(&p, &u(0.0, 0.0, 2.5 * mib, mib, 0.0)).as_deref(),
            Some("Pod ephemeral local storage usage exceeds the total limit of containers 3Mi. ")
        );
        assert_eq!(storage_limit_exceeded(&p, &u(0.0, 64.0 * mib, 0.0, mib, 0.0)), None, "memory is not disk");
        assert_eq!(
            storage_limit_exceeded(&p, &u(0.0, 0.0, 0.0, 0.5 * mib, 1.5 * mib)).as_deref(),
            Some("Container side exceeded its local ephemeral storage limit \"1Mi\". ")
        );
        let plain = pod(
            "b",
            json!({"spec": {"containers": [{"name": "c", "image": "x"}], "volumes": [{"name": "v", "emptyDir": {}}]}}),
        );
        assert!(!has_storage_limits(&plain));
        assert_eq!(storage_limit_exceeded(&plain, &u(9e9, 9e9, 9e9, 9e9, 9e9)), None);
    }

    fn observed(mem_available: f64) -> Observed {
        Observed {
            memory: Some(super::super::pressure::Reading { available: mem_available, capacity: 1000.0 }),
            ..Default::default()
        }
    }

    #[test]
    fn soft_thresholds_wait_out_their_grace_and_reclaim_goes_past_the_threshold() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            e: EvictionArgs,
        }
        let f = Flags::try_parse_from([
            "rk",
            "--eviction-hard=memory.available<100",
            "--eviction-soft=memory.available<300",
            "--eviction-soft-grace-period=memory.available=1m30s",
            "--eviction-minimum-reclaim=memory.available=5%",
            "--eviction-max-pod-grace-period=20",
        ])
        .unwrap();
        f.e.check().unwrap();
        let mut t = Tracker::new(f.e.thresholds());
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Under the soft threshold: pressure at once, eviction only after 90 s of it.
        let (c, ready) = t.observe(&observed(250.0), at(0));
        assert_eq!((c, ready.len()), (vec![Condition::Memory], 0));
        assert_eq!(t.observe(&observed(250.0), at(60)).1.len(), 0);
        let (_, ready) = t.observe(&observed(250.0), at(90));
        assert_eq!(ready.len(), 1);
        assert_eq!(
            (ready[0].0.grace, ready[0].1.quantity, ready[0].1.available),
            (Some(Duration::from_secs(90)), 300.0, 250.0)
        );
        // Just above the threshold is not yet resolved: 5% of 1000 more is needed.
        let (c, ready) = t.observe(&observed(320.0), at(100));
        assert_eq!((c, ready.len()), (vec![Condition::Memory], 1));
        let (c, ready) = t.observe(&observed(360.0), at(110));
        assert_eq!((c.len(), ready.len()), (0, 0));
        // Crossing again starts the grace period over; the hard threshold has none, and
        // comes first.
        assert_eq!(t.observe(&observed(250.0), at(120)).1.len(), 0);
        let (_, ready) = t.observe(&observed(50.0), at(121));
        assert_eq!(ready.iter().map(|(t, _)| t.grace).collect::<Vec<_>>(), [None]);
        let (_, ready) = t.observe(&observed(50.0), at(210));
        assert_eq!(ready.iter().map(|(t, _)| t.grace.is_some()).collect::<Vec<_>>(), [false, true]);
        // After node-level reclaim, only what is still short by the minimum reclaim stays.
        assert_eq!(Tracker::unresolved(&ready, &observed(200.0)).len(), 1);
        assert_eq!(Tracker::unresolved(&ready, &observed(400.0)).len(), 0);

        let bad = Flags::try_parse_from(["rk", "--eviction-soft=memory.available<1Gi"]).unwrap();
        assert_eq!(
            bad.e.check().unwrap_err(),
            "--eviction-soft: grace period must be specified for the soft eviction threshold memory.available"
        );
        for args in [
            "--eviction-soft-grace-period=memory.available",
            "--eviction-soft-grace-period=memory.available=soon",
            "--eviction-minimum-reclaim=memory.free=1Mi",
            "--eviction-minimum-reclaim=memory.available=1Mi,memory.available=2Mi",
        ] {
            assert!(Flags::try_parse_from(["rk", args]).is_err(), "{args}");
        }
    }

    #[test]
    fn durations_parse_as_go_writes_them() {
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        for bad in ["", "5", "m", "5x", "-1s", "1h 2m"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn quantities_print_as_kubernetes_prints_them() {
        assert_eq!(binary_si(100.0 * 1024.0 * 1024.0), "100Mi");
        assert_eq!(binary_si(83_812_352.0), "81848Ki");
        assert_eq!(binary_si(1000.0), "1000");
        assert_eq!(binary_si(0.0), "0");
        assert_eq!(binary_si(1024f64.powi(5)), "1Pi");
        assert_eq!(decimal_si(5000.0), "5k");
        assert_eq!(decimal_si(32768.0), "32768");
    }

    #[test]
    fn pods_are_ranked_as_the_kubelet_ranks_them() {
        let pods = vec![
            pod(
                "guaranteed",
                json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"memory": "100Mi"}}}]}}),
            ),
            pod("besteffort-small", json!({"spec": {"containers": [{"name": "c"}]}})),
            pod("besteffort-big", json!({"spec": {"containers": [{"name": "c"}]}})),
            pod("important", json!({"spec": {"priority": 1000, "containers": [{"name": "c"}]}})),
        ];
        let u = HashMap::from([
            ("guaranteed".to_string(), usage(50e6)),
            ("besteffort-small".to_string(), usage(1e6)),
            ("besteffort-big".to_string(), usage(9e6)),
            ("important".to_string(), usage(90e6)),
        ]);
        let order: Vec<String> = rank(&pods, &u, Signal::MemoryAvailable).iter().map(|p| p.name_any()).collect();
        // Over their requests first (by priority, then by how far over), then the one within.
        assert_eq!(order, ["besteffort-big", "besteffort-small", "important", "guaranteed"]);
    }

    #[test]
    fn the_message_names_the_threshold_and_the_greedy_containers() {
        let p = pod(
            "p",
            json!({"spec": {"containers": [{"name": "app", "resources": {"requests": {"memory": "1Mi"}}}, {"name": "side"}]}}),
        );
        let u = Usage {
            containers: vec![("app".into(), 4.0 * 1048576.0, 0.0), ("side".into(), 0.0, 0.0)],
            ..Default::default()
        };
        let met = Met { signal: Signal::MemoryAvailable, quantity: 104857600.0, available: 83_812_352.0 };
        assert_eq!(
            message(&met, &p, Some(&u)),
            "The node was low on resource: memory. Threshold quantity: 100Mi, available: 81848Ki. \
             Container app was using 4Mi, request is 1Mi, has larger consumption of memory. "
        );
    }

    #[test]
    fn admission_under_pressure_follows_the_kubelet() {
        let be = pod("be", json!({"spec": {"containers": [{"name": "c"}]}}));
        let burst =
            pod("b", json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "10m"}}}]}}));
        let tol = pod(
            "t",
            json!({"spec": {"containers": [{"name": "c"}], "tolerations": [{"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"}]}}),
        );
        let critical = pod("k", json!({"spec": {"priority": 2000001000, "containers": [{"name": "c"}]}}));
        let mem = [Condition::Memory];
        assert_eq!(admit(&be, &[]), Ok(()));
        assert_eq!(admit(&be, &mem), Err("The node had condition: [MemoryPressure]. ".into()));
        assert_eq!(admit(&burst, &mem), Ok(()));
        assert_eq!(admit(&tol, &mem), Ok(()));
        let both = [Condition::Memory, Condition::Disk];
        assert_eq!(admit(&burst, &both), Err("The node had condition: [MemoryPressure DiskPressure]. ".into()));
        assert_eq!(admit(&critical, &both), Ok(()));
    }
}
