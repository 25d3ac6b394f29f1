//! The controller manager's shared pod informer: one watch of every Pod feeds a cache
//! indexed by controller owner, the triggers of every pod-owning controller, and the
//! expectations that keep a controller from acting on a cache that has not yet seen
//! its own writes (kube-controller-manager's shared informer plus
//! `ControllerExpectations`).
//!
//! Pods are cached without `managedFields` ([`super::trim_managed_fields`]) and without
//! the container details no reader looks at ([`super::slim_containers`]). The node
//! lifecycle and pod GC controllers read every pod from it too, instead of a watch or a
//! LIST of their own.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ObjectMeta};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// How long a controller waits for the cache to see its writes before acting anyway
/// (Kubernetes lets expectations expire after five minutes; a watch that lags this
/// long has been cut and is re-listing).
const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(30);

type Key = (String, String);

#[derive(Default)]
struct State {
    /// Ordered by (namespace, name), so that a namespace's pods are one range.
    pods: BTreeMap<Key, Arc<Pod>>,
    /// Controller owner uid → the pods it controls.
    by_owner: HashMap<String, HashSet<Key>>,
}

/// What an owner's last writes must look like in the cache before it acts again.
#[derive(Default)]
struct Expectation {
    /// The cache must have seen this revision (the newest of the owner's writes).
    rev: i64,
    /// These pods must be gone or terminating (deleted without a returned object).
    gone: Vec<Key>,
}

/// The shared pod cache. Cheap to share behind an `Arc`.
pub struct PodCache {
    state: RwLock<State>,
    /// (initial list done, newest revision seen).
    seen: watch::Sender<(bool, i64)>,
    subscribers: Mutex<Vec<mpsc::UnboundedSender<Pod>>>,
    expected: Mutex<HashMap<String, Expectation>>,
}

fn key(p: &Pod) -> Key {
    (p.metadata.namespace.clone().unwrap_or_default(), p.metadata.name.clone().unwrap_or_default())
}

fn rev(p: &Pod) -> i64 {
    p.metadata.resource_version.as_deref().and_then(|r| r.parse().ok()).unwrap_or(0)
}

fn controller_uid(p: &Pod) -> Option<&str> {
    p.metadata.owner_references.iter().flatten().find(|r| r.controller == Some(true)).map(|r| r.uid.as_str())
}

/// Re-allocates a decoded pod at its exact size: decoding grows each list by doubling
/// (five conditions take room for eight, one container status room for four), and the
/// slack stayed in the cache for as long as the pod lived (about 3 KiB a pod). A clone
/// allocates each list and string at its length.
fn compact(p: &mut Pod) {
    *p = p.clone();
}

/// What a trigger needs of a pod: its name, labels and owners.
fn trigger(p: &Pod) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: p.metadata.name.clone(),
            namespace: p.metadata.namespace.clone(),
            labels: p.metadata.labels.clone(),
            owner_references: p.metadata.owner_references.clone(),
            ..Default::default()
        },
        ..Default::default()
    }
}

impl State {
    fn insert(&mut self, p: Arc<Pod>) {
        let k = key(&p);
        let new_owner = controller_uid(&p).map(str::to_string);
        if let Some(old) = self.pods.insert(k.clone(), p)
            && let Some(o) = controller_uid(&old)
            && Some(o) != new_owner.as_deref()
        {
            self.unindex(o.to_string(), &k);
        }
        if let Some(o) = new_owner {
            self.by_owner.entry(o).or_default().insert(k);
        }
    }

    fn remove(&mut self, k: &Key) {
        if let Some(old) = self.pods.remove(k)
            && let Some(o) = controller_uid(&old)
        {
            self.unindex(o.to_string(), k);
        }
    }

    fn unindex(&mut self, owner: String, k: &Key) {
        if let Some(set) = self.by_owner.get_mut(&owner) {
            set.remove(k);
            if set.is_empty() {
                self.by_owner.remove(&owner);
            }
        }
    }
}

impl PodCache {
    pub fn new() -> Arc<PodCache> {
        Arc::new(PodCache {
            state: RwLock::default(),
            seen: watch::Sender::new((false, 0)),
            subscribers: Mutex::default(),
            expected: Mutex::default(),
        })
    }

    /// Keeps the cache current from a watch of every pod until `shutdown`.
    pub async fn run(self: Arc<Self>, client: kube::Client, shutdown: CancellationToken) {
        let mut events = watcher(Api::<Pod>::all(client), watcher::Config::default())
            .modify(super::trim_managed_fields)
            .modify(super::slim_containers)
            .modify(compact)
            .default_backoff()
            .boxed();
        let mut relist: Option<State> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = events.next() => match ev {
                    Some(Ok(ev)) => self.apply(ev, &mut relist),
                    Some(Err(e)) => tracing::debug!(error = %e, "pod cache watch failed; retrying"),
                    None => return,
                },
            }
        }
    }

    /// Takes one watch event into the cache; `relist` holds a re-list under way.
    fn apply(&self, ev: watcher::Event<Pod>, relist: &mut Option<State>) {
        let r = match &ev {
            watcher::Event::Apply(p) | watcher::Event::InitApply(p) | watcher::Event::Delete(p) => rev(p),
            _ => 0,
        };
        match ev {
            watcher::Event::Init => *relist = Some(State::default()),
            watcher::Event::InitApply(p) => {
                self.notify(&p);
                if let Some(s) = relist.as_mut() {
                    s.insert(Arc::new(p));
                }
            }
            watcher::Event::InitDone => {
                if let Some(s) = relist.take() {
                    // Pods gone while the watch was down trigger their owners too.
                    let old = std::mem::replace(&mut *self.state.write().unwrap(), s);
                    let now = self.state.read().unwrap();
                    for (k, p) in &old.pods {
                        if !now.pods.contains_key(k) {
                            self.notify(p);
                        }
                    }
                }
                self.seen.send_modify(|s| s.0 = true);
            }
            watcher::Event::Apply(p) => {
                let p = Arc::new(p);
                self.state.write().unwrap().insert(p.clone());
                self.notify(&p);
            }
            watcher::Event::Delete(p) => {
                self.state.write().unwrap().remove(&key(&p));
                self.notify(&p);
            }
        }
        if r > 0 {
            self.seen.send_modify(|s| s.1 = s.1.max(r));
        }
    }

    fn notify(&self, p: &Pod) {
        let t = trigger(p);
        self.subscribers.lock().unwrap().retain(|s| s.send(t.clone()).is_ok());
    }

    /// Every pod change from now on (name, labels and owners only), for
    /// `Controller::owns_stream` and `watches_stream`.
    pub fn subscribe(&self) -> impl futures::Stream<Item = Result<Pod, watcher::Error>> + Send + 'static {
        let (tx, rx) = mpsc::unbounded_channel();
        self.subscribers.lock().unwrap().push(tx);
        tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(Ok)
    }

    /// Records a write by `owner` that its next look at the cache must see: a pod it
    /// created or updated (`pod`'s revision), or one deleted outright (`gone`).
    pub fn expect(&self, owner: &str, pod: Option<&Pod>, gone: Option<Key>) {
        let mut all = self.expected.lock().unwrap();
        let e = all.entry(owner.to_string()).or_default();
        if let Some(p) = pod {
            e.rev = e.rev.max(rev(p));
        }
        e.gone.extend(gone);
    }

    fn satisfied(&self, e: &Expectation, seen: i64) -> bool {
        seen >= e.rev && {
            let s = self.state.read().unwrap();
            e.gone.iter().all(|k| s.pods.get(k).is_none_or(|p| p.metadata.deletion_timestamp.is_some()))
        }
    }

    /// The pods `owner` controls, once the cache has its first list and has seen the
    /// owner's recorded writes.
    pub async fn owned(&self, owner: &str) -> Vec<Arc<Pod>> {
        let mut rx = self.seen.subscribe();
        let e = self.expected.lock().unwrap().remove(owner).unwrap_or_default();
        let wait = rx.wait_for(|&(ready, seen)| ready && self.satisfied(&e, seen));
        if tokio::time::timeout(EXPECTATION_TIMEOUT, wait).await.is_err() {
            tracing::warn!(owner, "the pod cache has not caught up with the owner's writes; acting on it anyway");
        }
        let s = self.state.read().unwrap();
        s.by_owner.get(owner).into_iter().flatten().filter_map(|k| s.pods.get(k).cloned()).collect()
    }

    /// Records the answer to `owner`'s DELETE of pod `ns`/`name`: the pod still
    /// terminating (`returned`) must be seen at its new revision, a pod deleted
    /// outright must be gone.
    pub fn expect_delete(&self, owner: &str, ns: &str, name: &str, returned: Option<&Pod>) {
        match returned {
            Some(p) => self.expect(owner, Some(p), None),
            None => self.expect(owner, None, Some(Self::key_of(ns, name))),
        }
    }

    /// The pods of namespace `ns` that `keep` selects, once the first list is in; None
    /// if it is not in within [`EXPECTATION_TIMEOUT`] (the caller retries). This is the
    /// informer's namespace lister: no LIST through the API per reconcile.
    pub async fn in_namespace(&self, ns: &str, keep: impl Fn(&Pod) -> bool) -> Option<Vec<Arc<Pod>>> {
        let mut rx = self.seen.subscribe();
        if !matches!(tokio::time::timeout(EXPECTATION_TIMEOUT, rx.wait_for(|&(ready, _)| ready)).await, Ok(Ok(_))) {
            return None;
        }
        let s = self.state.read().unwrap();
        let from = (ns.to_string(), String::new());
        Some(
            s.pods
                .range(from..)
                .take_while(|((n, _), _)| n == ns)
                .filter(|(_, p)| keep(p))
                .map(|(_, p)| p.clone())
                .collect(),
        )
    }

    /// Every cached pod, once the first list is in (empty if the cache stops first).
    pub async fn all(&self) -> Vec<Arc<Pod>> {
        if self.seen.subscribe().wait_for(|&(ready, _)| ready).await.is_err() {
            return Vec::new();
        }
        self.snapshot()
    }

    /// Every cached pod now, without waiting for the first list.
    pub fn snapshot(&self) -> Vec<Arc<Pod>> {
        self.state.read().unwrap().pods.values().cloned().collect()
    }

    /// Changes each time the cache takes in an event or finishes a list; the value is
    /// (first list done, newest revision seen).
    pub fn changes(&self) -> watch::Receiver<(bool, i64)> {
        self.seen.subscribe()
    }

    /// Key of a pod, for [`PodCache::expect`].
    pub fn key_of(ns: &str, name: &str) -> Key {
        (ns.to_string(), name.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use serde_json::json;

    fn pod(name: &str, owner: &str, rev: u32) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "ns", "resourceVersion": rev.to_string(),
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": owner, "uid": owner,
                                 "controller": true}]}}))
        .unwrap()
    }

    fn names(pods: Vec<Arc<Pod>>) -> Vec<String> {
        let mut v: Vec<String> = pods.iter().map(|p| p.metadata.name.clone().unwrap()).collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn pods_are_indexed_by_controller_and_follow_a_change_of_owner() {
        let c = PodCache::new();
        let mut relist = None;
        assert!(c.owned("a").now_or_never().is_none(), "nothing before the first list");
        c.apply(watcher::Event::Init, &mut relist);
        c.apply(watcher::Event::InitApply(pod("p1", "a", 1)), &mut relist);
        c.apply(watcher::Event::InitDone, &mut relist);
        c.apply(watcher::Event::Apply(pod("p2", "a", 2)), &mut relist);
        assert_eq!(names(c.owned("a").now_or_never().unwrap()), ["p1", "p2"]);
        c.apply(watcher::Event::Apply(pod("p2", "b", 3)), &mut relist);
        assert_eq!(names(c.owned("a").now_or_never().unwrap()), ["p1"]);
        assert_eq!(names(c.owned("b").now_or_never().unwrap()), ["p2"]);
        c.apply(watcher::Event::Delete(pod("p1", "a", 4)), &mut relist);
        assert!(c.owned("a").now_or_never().unwrap().is_empty());
        assert!(!c.state.read().unwrap().by_owner.contains_key("a"), "empty owner entries are dropped");
    }

    #[tokio::test]
    async fn an_owner_waits_until_the_cache_has_seen_its_writes() {
        let c = PodCache::new();
        let mut relist = None;
        c.apply(watcher::Event::Init, &mut relist);
        c.apply(watcher::Event::InitDone, &mut relist);
        c.apply(watcher::Event::Apply(pod("p1", "a", 5)), &mut relist);
        // Created p2 (revision 7) and deleted p1 outright; the cache has seen neither.
        c.expect("a", Some(&pod("p2", "a", 7)), None);
        c.expect("a", None, Some(PodCache::key_of("ns", "p1")));
        let mut owned = Box::pin(c.owned("a"));
        assert!((&mut owned).now_or_never().is_none());
        c.apply(watcher::Event::Apply(pod("p2", "a", 7)), &mut relist);
        assert!((&mut owned).now_or_never().is_none(), "p1 is still there");
        c.apply(watcher::Event::Delete(pod("p1", "a", 8)), &mut relist);
        assert_eq!(names(owned.now_or_never().unwrap()), ["p2"]);
        // The expectation is used up: other owners and the next look do not wait.
        assert_eq!(names(c.owned("a").now_or_never().unwrap()), ["p2"]);
    }

    #[tokio::test]
    async fn a_relist_replaces_the_cache_and_triggers_owners_of_vanished_pods() {
        let c = PodCache::new();
        let mut relist = None;
        let mut triggers = Box::pin(c.subscribe());
        c.apply(watcher::Event::Init, &mut relist);
        c.apply(watcher::Event::InitApply(pod("p1", "a", 1)), &mut relist);
        c.apply(watcher::Event::InitDone, &mut relist);
        c.apply(watcher::Event::Init, &mut relist);
        c.apply(watcher::Event::InitApply(pod("p2", "b", 9)), &mut relist);
        c.apply(watcher::Event::InitDone, &mut relist);
        assert!(c.owned("a").now_or_never().unwrap().is_empty());
        let mut seen = Vec::new();
        while let Some(Some(Ok(p))) = triggers.next().now_or_never() {
            seen.push(p.metadata.name.unwrap());
        }
        assert_eq!(seen, ["p1", "p2", "p1"]);
    }
}
