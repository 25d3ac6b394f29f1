//! The garbage collector: when an owner goes, its dependents go too (background
//! cascade, the default `propagationPolicy` of `kubectl delete`), and dependents whose
//! owners are all gone are collected, as kube-controller-manager's garbage collector
//! does. (Orphan and foreground propagation, which a delete waits on, are finished by
//! the API server itself: see `apiserver/propagation.rs`.)
//!
//! It keeps an index owner uid → dependents, built from one list of every stored kind
//! and kept current from one watch of the whole store (it runs inside the server, so it
//! reads the store directly rather than watching ~50 kinds through the API). Before
//! acting it re-reads the dependent and looks its owners up by kind and name, checking
//! uids, so a stale index never deletes the wrong object.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::api::registry::ResourceDef;
use crate::embedded::{EventKind, KeyValue, Rev, StorageError};
use crate::server::apiserver::ApiServer;

#[derive(Deserialize, Default)]
struct Head {
    #[serde(default)]
    metadata: HeadMeta,
}

#[derive(Deserialize, Default)]
struct HeadMeta {
    #[serde(default)]
    uid: String,
    #[serde(default, rename = "ownerReferences")]
    owner_references: Vec<OwnerRef>,
}

#[derive(Deserialize, Clone, Debug)]
struct OwnerRef {
    #[serde(rename = "apiVersion", default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    uid: String,
}

fn head(value: &[u8]) -> HeadMeta {
    serde_json::from_slice::<Head>(value).map(|h| h.metadata).unwrap_or_default()
}

/// A dependent in the index: its storage key and uid.
#[derive(Clone, Hash, PartialEq, Eq, Debug)]
struct Dep {
    key: String,
    uid: String,
}

#[derive(Default)]
struct Graph {
    /// owner uid → dependents.
    owners: HashMap<String, HashSet<Dep>>,
    /// dependent key → (its uid, its owners' uids), to undo its entries on change.
    deps: HashMap<String, (String, Vec<String>)>,
}

impl Graph {
    fn forget(&mut self, key: &str) {
        if let Some((uid, owners)) = self.deps.remove(key) {
            let dep = Dep { key: key.to_string(), uid };
            for o in owners {
                if let Some(set) = self.owners.get_mut(&o) {
                    set.remove(&dep);
                    if set.is_empty() {
                        self.owners.remove(&o);
                    }
                }
            }
        }
    }

    fn put(&mut self, kv: &KeyValue) {
        self.forget(&kv.key);
        let h = head(&kv.value);
        if h.owner_references.is_empty() {
            return;
        }
        let owners: Vec<String> = h.owner_references.iter().map(|r| r.uid.clone()).collect();
        let dep = Dep { key: kv.key.clone(), uid: h.uid.clone() };
        for o in &owners {
            self.owners.entry(o.clone()).or_default().insert(dep.clone());
        }
        self.deps.insert(kv.key.clone(), (h.uid, owners));
    }
}

/// The resource and (namespace, name) a storage key belongs to.
fn locate<'a>(defs: &[&'static ResourceDef], key: &'a str) -> Option<(&'static ResourceDef, Option<&'a str>, &'a str)> {
    let def = defs.iter().filter(|d| key.starts_with(&d.key_prefix())).max_by_key(|d| d.key_prefix().len())?;
    let rest = &key[def.key_prefix().len()..];
    if def.namespaced {
        let (ns, name) = rest.split_once('/')?;
        Some((def, Some(ns), name))
    } else {
        Some((def, None, rest))
    }
}

struct Gc {
    api: Arc<ApiServer>,
}

impl Gc {
    /// The stored kinds as of now (custom resources come and go with their CRDs).
    fn defs(&self) -> Vec<&'static ResourceDef> {
        self.api.reg().stored().collect()
    }

    /// Whether the owner a reference names exists (same uid).
    async fn owner_exists(&self, dep_ns: Option<&str>, r: &OwnerRef) -> bool {
        let group = r.api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
        let Some(def) = self.api.reg().by_kind(group, &r.kind) else {
            // An owner of a kind rk does not serve is never collected against.
            return true;
        };
        let key = def.key(dep_ns.filter(|_| def.namespaced), &r.name);
        match self.api.store.get(&key).await {
            Ok(Some(kv)) => head(&kv.value).uid == r.uid,
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// Collects one dependent if all its owners are gone, or drops references to the
    /// owners that are gone if some remain.
    async fn check(&self, dep: &Dep) {
        let Some((def, ns, name)) = locate(&self.defs(), &dep.key) else { return };
        let Ok(Some(kv)) = self.api.store.get(&dep.key).await else { return };
        let h = head(&kv.value);
        if h.uid != dep.uid || h.owner_references.is_empty() {
            return;
        }
        let mut gone = Vec::new();
        for r in &h.owner_references {
            if !self.owner_exists(ns, r).await {
                gone.push(r.uid.clone());
            }
        }
        if gone.is_empty() {
            return;
        }
        let res = if gone.len() == h.owner_references.len() {
            tracing::debug!(resource = def.plural, ?ns, name, "collecting a dependent whose owners are gone");
            self.api.collect_dependent(def, ns, name, &dep.uid).await
        } else {
            self.api.drop_owner_refs(def, ns, name, &gone).await
        };
        if let Err(e) = res
            && e.code != 404
            && e.code != 409
        {
            tracing::warn!(resource = def.plural, ?ns, name, error = %e, "garbage collection failed");
        }
    }

    async fn check_all(&self, deps: Vec<Dep>) {
        futures::stream::iter(deps).for_each_concurrent(32, |d| async move { self.check(&d).await }).await;
    }

    /// Lists everything, sweeps dangling dependents, then follows the store's changes.
    async fn run_once(&self) -> Result<(), StorageError> {
        let store = self.api.store.clone();
        let rev: Rev = store.current_rev();
        let mut g = Graph::default();
        for def in self.defs() {
            if def.stored_as_core_event() {
                continue;
            }
            let page = store.list(&def.list_prefix(None), None, 0, rev).await?;
            for kv in &page.kvs {
                g.put(kv);
            }
        }
        let all: Vec<Dep> = g.deps.iter().map(|(k, (uid, _))| Dep { key: k.clone(), uid: uid.clone() }).collect();
        self.check_all(all).await;
        let mut w = store.watch("/registry/", rev)?;
        while let Some(ev) = w.next().await {
            let ev = ev?;
            match ev.kind {
                EventKind::Put => {
                    g.put(&ev.kv);
                    // A dependent written with an owner that is already gone.
                    let h = head(&ev.kv.value);
                    if !h.owner_references.is_empty() && ev.prev.is_none() {
                        let dep = Dep { key: ev.kv.key.clone(), uid: h.uid };
                        let me_ns = locate(&self.defs(), &dep.key).and_then(|(_, ns, _)| ns.map(str::to_string));
                        let mut all_gone = true;
                        for r in &h.owner_references {
                            if self.owner_exists(me_ns.as_deref(), r).await {
                                all_gone = false;
                                break;
                            }
                        }
                        if all_gone {
                            self.check(&dep).await;
                        }
                    }
                }
                EventKind::Delete => {
                    g.forget(&ev.kv.key);
                    let uid = head(&ev.kv.value).uid;
                    if let Some(deps) = g.owners.remove(&uid) {
                        self.check_all(deps.into_iter().collect()).await;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Runs the garbage collector until `shutdown`, starting over after a watch error.
pub async fn run(api: Arc<ApiServer>, shutdown: CancellationToken) {
    let gc = Gc { api };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = gc.run_once() => if let Err(e) = r {
                tracing::debug!(error = %e, "garbage collector restarting");
            },
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}
