//! The control loops: kube-runtime `Controller`s (watch → cache → keyed queue →
//! reconcile) over the in-process client, one file each, started after the API is up.
//! Each acts only once its caches have synced (kube-runtime's guarantee) and records
//! Events as kube-controller-manager does.

mod clusterrole_aggregation;
mod crd;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod garbage_collector;
pub mod job;
pub mod node_ipam;
pub mod node_lifecycle;
pub mod pod_cache;
pub mod podgc;
pub mod replicaset;
pub mod replicationcontroller;
mod resourcequota;
pub mod serviceaccount;
pub mod servicelb;
pub mod statefulset;
mod tokencleaner;

use std::sync::Arc;

use futures::StreamExt;
use std::time::Duration;

use crate::events::{Event, EventType, Recorder, Reporter};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use kube::Resource;
use kube::runtime::controller::Action;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What every reconciler gets.
pub struct Ctx {
    /// The in-process client, as `system:kube-controller-manager`.
    pub client: kube::Client,
    /// Records Events for `kubectl describe`.
    pub recorder: Recorder,
}

impl Ctx {
    fn new(client: kube::Client, controller: &str) -> Arc<Ctx> {
        let reporter = Reporter { controller: controller.to_string(), instance: None };
        Arc::new(Ctx { recorder: Recorder::new(client.clone(), reporter), client })
    }

    /// Records an Event about `obj` in the background, as client-go's recorder does: a
    /// controller never waits on its events (a ReplicaSet creating 500 pods would
    /// otherwise wait for 500 event writes one after another). Failures are logged.
    pub fn event<K: Resource<DynamicType = ()>>(&self, obj: &K, warning: bool, reason: &str, note: String) {
        // The recorder folds events with the same reason and action into one series;
        // Kubernetes keeps events with different messages apart, so the message goes
        // into the (otherwise unseen) action.
        let action: String = note.chars().take(128).collect();
        let ev = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.to_string(),
            note: Some(note),
            action,
            secondary: None,
        };
        let (recorder, reference) = (self.recorder.clone(), obj.object_ref(&()));
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&ev, &reference).await {
                tracing::debug!(error = %e, reason = %ev.reason, "recording an event failed");
            }
        });
    }
}

/// What the controllers need to know of the cluster.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// The cluster CA (PEM), published in every namespace.
    pub ca_pem: String,
    /// The pod network, carved into a /24 per node.
    pub cluster_cidr: ipnet::Ipv4Net,
    /// How long a node may stay silent before it is marked unreachable.
    pub node_monitor_grace: Duration,
    /// Run the controllers.
    pub controllers: bool,
    /// Run the scheduler.
    pub scheduler: bool,
    /// How the scheduler searches and retries (`--scheduler-config`).
    pub scheduler_config: super::scheduler::SchedulerConfig,
}

/// Starts the controllers and the scheduler on `tracker` until `shutdown`.
/// Runs `pass` every `period` until `shutdown` (the first right away); a failed pass
/// is logged and the next one tried.
async fn every<F, Fut>(period: std::time::Duration, what: &str, shutdown: CancellationToken, mut pass: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), kube::Error>>,
{
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // A pass may wait on a cache that will never fill once shutdown has begun.
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = pass() => if let Err(e) = r {
                tracing::debug!(error = %e, "{what} pass failed");
            },
        }
    }
}

/// Why a [`Watched`] loop woke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wake {
    /// The cache changed (or finished its first list).
    Changed,
    /// The period passed.
    Tick,
}

/// A cache of every `K` and the wake-ups of a loop over it: for loops that look at
/// the whole cache on each change (or period) rather than reconcile one key.
struct Watched<K: Resource<DynamicType = ()> + Clone + 'static> {
    reader: kube::runtime::reflector::Store<K>,
    events:
        futures::stream::BoxStream<'static, Result<kube::runtime::watcher::Event<K>, kube::runtime::watcher::Error>>,
    tick: Option<tokio::time::Interval>,
    ready: bool,
}

impl<K> Watched<K>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    /// Watches every `K`; with `period`, also wakes that often.
    fn new(api: kube::Api<K>, period: Option<Duration>) -> Watched<K> {
        use kube::runtime::{WatchStreamExt, reflector, watcher};
        let (reader, writer) = reflector::store();
        let watch = watcher(api, watcher::Config::default()).modify(trim_managed_fields);
        let events = reflector::reflector(writer, watch.default_backoff()).boxed();
        Watched { reader, events, tick: period.map(tokio::time::interval), ready: false }
    }

    /// The next wake-up once the cache has its first list (changes while a re-list is
    /// under way wake once it is done); None at shutdown or when the watch ends.
    async fn next(&mut self, shutdown: &CancellationToken) -> Option<Wake> {
        use kube::runtime::watcher::Event as E;
        loop {
            let tick = async {
                match &mut self.tick {
                    Some(t) => t.tick().await,
                    None => std::future::pending().await,
                }
            };
            let wake = tokio::select! {
                _ = shutdown.cancelled() => return None,
                ev = self.events.next() => match ev? {
                    Ok(E::InitDone) => {
                        self.ready = true;
                        Wake::Changed
                    }
                    Ok(E::Init | E::InitApply(_)) => continue,
                    _ => Wake::Changed,
                },
                _ = tick => Wake::Tick,
            };
            if self.ready {
                return Some(wake);
            }
        }
    }
}

pub fn start(
    api: Arc<super::apiserver::ApiServer>,
    client: kube::Client,
    cfg: ControllerConfig,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) {
    // One watch of every pod serves the scheduler and every controller that reads pods
    // (two caches of 30,000 pods were a third of the server's memory). It runs as the
    // controller manager, or as the scheduler when only the scheduler runs.
    let pods = pod_cache::PodCache::new();
    if cfg.controllers {
        tracker.spawn(pods.clone().run(client.clone(), shutdown.clone()));
    }
    if cfg.scheduler {
        let sched = super::client::in_process(api.clone(), "system:kube-scheduler", &[]);
        if !cfg.controllers {
            tracker.spawn(pods.clone().run(sched.clone(), shutdown.clone()));
        }
        tracker.spawn(super::scheduler::run(sched, cfg.scheduler_config.clone(), pods.clone(), shutdown.clone()));
    }
    // Part of the API server (apiextensions), so it runs without the controller manager,
    // as the API server's own user.
    let apiserver = super::client::in_process(api.clone(), "system:apiserver", &[crate::server::auth::MASTERS]);
    tracker.spawn(crd::run(api.clone(), apiserver, shutdown.clone()));
    // Aggregated ClusterRoles (admin, edit, view) are what RBAC judges by.
    tracker.spawn(clusterrole_aggregation::run(client.clone(), shutdown.clone()));
    if !cfg.controllers {
        return;
    }
    tracker.spawn(resourcequota::run(api.clone(), client.clone(), shutdown.clone()));
    tracker.spawn(garbage_collector::run(api, shutdown.clone()));
    tracker.spawn(serviceaccount::run(
        Ctx::new(client.clone(), "serviceaccount-controller"),
        cfg.ca_pem,
        shutdown.clone(),
    ));
    tracker.spawn(node_ipam::run(Ctx::new(client.clone(), "node-ipam-controller"), cfg.cluster_cidr, shutdown.clone()));
    tracker.spawn(node_lifecycle::run(
        Ctx::new(client.clone(), "node-lifecycle-controller"),
        cfg.node_monitor_grace,
        pods.clone(),
        shutdown.clone(),
    ));
    tracker.spawn(replicaset::run(Ctx::new(client.clone(), "replicaset-controller"), pods.clone(), shutdown.clone()));
    tracker.spawn(deployment::run(Ctx::new(client.clone(), "deployment-controller"), shutdown.clone()));
    tracker.spawn(daemonset::run(Ctx::new(client.clone(), "daemonset-controller"), pods.clone(), shutdown.clone()));
    tracker.spawn(statefulset::run(Ctx::new(client.clone(), "statefulset-controller"), pods.clone(), shutdown.clone()));
    tracker.spawn(cronjob::run(Ctx::new(client.clone(), "cronjob-controller"), shutdown.clone()));
    tracker.spawn(disruption::run(Ctx::new(client.clone(), "disruption-controller"), pods.clone(), shutdown.clone()));
    tracker.spawn(podgc::run(client.clone(), pods.clone(), shutdown.clone()));
    tracker.spawn(tokencleaner::run(client.clone(), shutdown.clone()));
    tracker.spawn(replicationcontroller::run(
        Ctx::new(client.clone(), "replication-controller"),
        pods.clone(),
        shutdown.clone(),
    ));
    tracker.spawn(job::run(Ctx::new(client.clone(), "job-controller"), pods.clone(), shutdown.clone()));
    tracker.spawn(endpoints::run(Ctx::new(client.clone(), "endpoint-controller"), pods.clone(), shutdown.clone()));
    tracker.spawn(servicelb::run(Ctx::new(client.clone(), "service-lb-controller"), shutdown.clone()));
    tracker
        .spawn(servicelb::run_ingress_status(Ctx::new(client.clone(), "ingress-status-controller"), shutdown.clone()));
}

/// Runs the usual controller shape: `K` reconciled on its own changes and on those of
/// the `Child` objects it controls, until `shutdown`.
pub(crate) async fn run_owning<K, Child, F, Fut>(ctx: Arc<Ctx>, shutdown: CancellationToken, reconcile: F)
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    Child: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    F: FnMut(Arc<K>, Arc<Ctx>) -> Fut,
    Fut: std::future::Future<Output = Result<Action, kube::Error>> + Send + 'static,
{
    kube::runtime::Controller::new(kube::Api::<K>::all(ctx.client.clone()), kube::runtime::watcher::Config::default())
        .owns(kube::Api::<Child>::all(ctx.client.clone()), kube::runtime::watcher::Config::default())
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, |_, _, _| retry_soon(), ctx)
        .for_each(|_| async {})
        .await;
}

/// [`run_owning`] for controllers of pods: triggered by, and reading, the shared pod
/// cache rather than a watch of their own.
pub(crate) async fn run_owning_pods<K, F, Fut>(
    ctx: Arc<Ctx>,
    pods: Arc<pod_cache::PodCache>,
    shutdown: CancellationToken,
    mut reconcile: F,
) where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    F: FnMut(Arc<K>, Arc<Ctx>, Arc<pod_cache::PodCache>) -> Fut,
    Fut: std::future::Future<Output = Result<Action, kube::Error>> + Send + 'static,
{
    kube::runtime::Controller::new(kube::Api::<K>::all(ctx.client.clone()), kube::runtime::watcher::Config::default())
        .owns_stream(pods.subscribe())
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(move |obj, ctx| reconcile(obj, ctx, pods.clone()), |_, _, _| retry_soon(), ctx)
        .for_each(|_| async {})
        .await;
}

/// Drops an object's managedFields before it enters a cache, as kube-controller-manager
/// and kube-scheduler trim their informers: nothing reads them there, and they are
/// often half of an object's size.
pub(crate) fn trim_managed_fields<K: Resource>(o: &mut K) {
    o.meta_mut().managed_fields = None;
}

/// Drops what no controller or the scheduler reads of a cached pod's spec: volumes and
/// each container's env, command, args, mounts, probes, hooks, securityContext and
/// workingDir (names, images, ports and resources stay), and ephemeral containers.
pub(crate) fn slim_containers(p: &mut Pod) {
    if let Some(spec) = p.spec.as_mut() {
        spec.volumes = None;
        for c in spec.containers.iter_mut().chain(spec.init_containers.iter_mut().flatten()) {
            c.env = None;
            c.env_from = None;
            c.command = None;
            c.args = None;
            c.volume_mounts = None;
            c.volume_devices = None;
            c.liveness_probe = None;
            c.readiness_probe = None;
            c.startup_probe = None;
            c.lifecycle = None;
            c.security_context = None;
            c.working_dir = None;
        }
        spec.ephemeral_containers = None;
    }
}

/// Requeue after an error, as the controller-manager's rate limiter would.
pub fn retry_soon() -> Action {
    Action::requeue(Duration::from_secs(1))
}

/// The controller owner reference naming `owner`.
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    let mut r = owner.controller_owner_ref(&()).expect("owner has name and uid");
    r.block_owner_deletion = Some(true);
    r
}

/// Whether `obj` is controlled by the object with `uid`.
pub fn controlled_by(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, uid: &str) -> bool {
    meta.owner_references.iter().flatten().any(|r| r.controller == Some(true) && r.uid == uid)
}

/// A label selector as a test of a (cached) pod's labels. An invalid one (validation
/// refuses them) is None, after a warning naming `owner`: the owner is left alone, as
/// Kubernetes's controllers leave it.
pub fn pod_matcher(sel: &LabelSelector, owner: &str) -> Option<impl Fn(&Pod) -> bool + use<>> {
    let sel = serde_json::to_value(sel).unwrap_or_default();
    match crate::api::selectors::LabelSelector::from_label_selector(&sel) {
        Ok(m) => {
            Some(move |p: &Pod| m.matches_fn(|k| p.metadata.labels.as_ref().and_then(|l| l.get(k)).map(String::as_str)))
        }
        Err(e) => {
            tracing::warn!(owner, error = %e, "invalid pod selector; not syncing");
            None
        }
    }
}

/// A label selector as the `labelSelector` query string.
pub fn selector_query(sel: &LabelSelector) -> String {
    crate::api::selectors::selector_string(&serde_json::to_value(sel).unwrap_or_default())
}

/// Whether the pod is Ready.
pub fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Whether the pod has been Ready for `min_ready` seconds at `now`.
pub fn pod_available(p: &Pod, min_ready: i32, now: k8s_openapi::jiff::Timestamp) -> bool {
    let Some(c) = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready" && c.status == "True"))
    else {
        return false;
    };
    if min_ready <= 0 {
        return true;
    }
    c.last_transition_time.as_ref().is_some_and(|t| now.as_second() - t.0.as_second() >= i64::from(min_ready))
}

/// Whether the pod counts toward its owner: not being deleted and not finished.
pub fn pod_active(p: &Pod) -> bool {
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("");
    p.metadata.deletion_timestamp.is_none() && phase != "Succeeded" && phase != "Failed"
}

/// Kubernetes's `pod-template-hash`: FNV-32a of the template (and the collision
/// count), written with the alphabet Kubernetes uses for generated names.
pub fn template_hash(t: &PodTemplateSpec, collisions: Option<i32>) -> String {
    let mut h: u32 = 0x811c_9dc5;
    let mut feed = |b: &[u8]| {
        for x in b {
            h ^= u32::from(*x);
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    feed(serde_json::to_string(t).unwrap_or_default().as_bytes());
    if let Some(c) = collisions {
        feed(c.to_string().as_bytes());
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string().bytes().map(|b| ALPHABET[b as usize % ALPHABET.len()] as char).collect()
}
