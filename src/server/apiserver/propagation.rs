//! The `orphan` and `foregroundDeletion` finalizers that `propagationPolicy` records on
//! delete: orphaning strips the owner reference from every dependent, foreground deletion
//! deletes the dependents first; then the finalizer goes and the owner with it. This is
//! the part of Kubernetes's garbage collector that a delete waits on; background cascade
//! belongs to the garbage-collector controller.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use serde_json::{Value, json};

use super::ApiServer;
use super::handlers::{Call, decode_kv, encode, storage_error};
use super::request::Query;
use crate::api::meta;
use crate::api::registry::ResourceDef;
use crate::api::status::{ApiError, Target};
use crate::embedded::StorageError;

/// The finalizer `propagationPolicy=Orphan` adds.
pub const ORPHAN: &str = "orphan";
/// The finalizer `propagationPolicy=Foreground` adds.
pub const FOREGROUND: &str = "foregroundDeletion";

impl ApiServer {
    /// Starts finishing the propagation finalizers of an object being deleted.
    pub(super) fn spawn_propagation(&self, def: &'static ResourceDef, ns: Option<String>, name: String) {
        let Some(me) = self.me.upgrade() else { return };
        let token = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                r = me.propagate(def, ns.as_deref(), &name) => if let Err(e) = r {
                    tracing::warn!(resource = def.plural, name, error = %e, "finishing a propagation policy failed");
                }
            }
        });
    }

    /// Every object (of any kind) whose ownerReferences name `uid`, as (def, object).
    async fn dependents(
        &self,
        owner_ns: Option<&str>,
        uid: &str,
    ) -> Result<Vec<(&'static ResourceDef, Value)>, ApiError> {
        let mut out = Vec::new();
        for def in self.reg().stored() {
            let prefix = def.list_prefix(owner_ns.filter(|_| def.namespaced));
            let page = self.store.list(&prefix, None, 0, 0).await.map_err(ApiError::internal)?;
            for kv in &page.kvs {
                let obj = decode_kv(kv)?;
                let owned = obj
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(|refs| refs.iter().any(|r| r.get("uid").and_then(Value::as_str) == Some(uid)));
                if owned {
                    out.push((def, obj));
                }
            }
        }
        Ok(out)
    }

    async fn propagate(
        self: &Arc<Self>,
        def: &'static ResourceDef,
        ns: Option<&str>,
        name: &str,
    ) -> Result<(), ApiError> {
        let key = def.key(ns, name);
        let t = Target { group: def.group, resource: def.plural, name };
        let mut delay = Duration::from_millis(50);
        loop {
            let Some(cur) = self.store.get(&key).await.map_err(|e| storage_error(t, e))? else { return Ok(()) };
            let obj = decode_kv(&cur)?;
            let uid = meta::meta_str(&obj, "uid").unwrap_or("").to_string();
            let fins = meta::finalizers(&obj);
            let done = if fins.iter().any(|f| f == ORPHAN) {
                for (d, dep) in self.dependents(ns, &uid).await? {
                    self.strip_owner(d, &dep, &uid).await?;
                }
                ORPHAN
            } else if fins.iter().any(|f| f == FOREGROUND) {
                let deps = self.dependents(ns, &uid).await?;
                if !deps.is_empty() {
                    for (d, dep) in deps.iter().filter(|(_, o)| !meta::is_deleting(o)) {
                        let call = internal_call(d, meta::namespace(dep));
                        let background = json!({"propagationPolicy": "Background"});
                        match self.delete_object(&call, meta::name(dep), &background, false).await {
                            Ok(_) => {}
                            Err(e) if e.code == 404 => {}
                            Err(e) => return Err(e),
                        }
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    continue;
                }
                FOREGROUND
            } else {
                return Ok(());
            };
            let mut next = obj.clone();
            let left: Vec<String> = fins.into_iter().filter(|f| f != done).collect();
            meta::meta_mut(&mut next).insert("finalizers".into(), json!(left));
            let res = if left.is_empty() {
                self.store.delete(&key, Some(cur.mod_rev)).await.map(|_| ())
            } else {
                self.store.update(&key, encode(&next), cur.mod_rev).await.map(|_| ())
            };
            match res {
                Ok(()) | Err(StorageError::Conflict { .. } | StorageError::NotFound(_)) => continue,
                Err(e) => return Err(storage_error(t, e)),
            }
        }
    }

    /// Deletes a dependent whose owners are gone, in the background (the garbage
    /// collector's cascade), if it is still the object with `uid`.
    pub(crate) async fn collect_dependent(
        &self,
        def: &'static ResourceDef,
        ns: Option<&str>,
        name: &str,
        uid: &str,
    ) -> Result<(), ApiError> {
        let call = internal_call(def, ns);
        let opts = json!({"propagationPolicy": "Background", "preconditions": {"uid": uid}});
        self.delete_object(&call, name, &opts, false).await.map(|_| ())
    }

    /// Removes references to owners that are gone (`uids`) from a dependent.
    pub(crate) async fn drop_owner_refs(
        &self,
        def: &'static ResourceDef,
        ns: Option<&str>,
        name: &str,
        uids: &[String],
    ) -> Result<(), ApiError> {
        let key = def.key(ns, name);
        loop {
            let Some(cur) = self.store.get(&key).await.map_err(ApiError::internal)? else { return Ok(()) };
            let mut obj = decode_kv(&cur)?;
            if let Some(refs) = obj.pointer_mut("/metadata/ownerReferences").and_then(Value::as_array_mut) {
                refs.retain(|r| !r.get("uid").and_then(Value::as_str).is_some_and(|u| uids.iter().any(|x| x == u)));
            }
            match self.store.update(&key, encode(&obj), cur.mod_rev).await {
                Ok(_) | Err(StorageError::NotFound(_)) => return Ok(()),
                Err(StorageError::Conflict { .. }) => continue,
                Err(e) => return Err(ApiError::internal(e)),
            }
        }
    }

    /// Removes the owner reference to `uid` from one dependent.
    async fn strip_owner(&self, def: &'static ResourceDef, dep: &Value, uid: &str) -> Result<(), ApiError> {
        let key = def.key(meta::namespace(dep), meta::name(dep));
        loop {
            let Some(cur) = self.store.get(&key).await.map_err(ApiError::internal)? else { return Ok(()) };
            let mut obj = decode_kv(&cur)?;
            if let Some(refs) = obj.pointer_mut("/metadata/ownerReferences").and_then(Value::as_array_mut) {
                refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(uid));
                if refs.is_empty() {
                    meta::meta_mut(&mut obj).remove("ownerReferences");
                }
            }
            match self.store.update(&key, encode(&obj), cur.mod_rev).await {
                Ok(_) | Err(StorageError::NotFound(_)) => return Ok(()),
                Err(StorageError::Conflict { .. }) => continue,
                Err(e) => return Err(ApiError::internal(e)),
            }
        }
    }

    /// Resumes propagation for objects left mid-deletion by a restart.
    pub(super) async fn resume_propagation(self: &Arc<Self>) -> Result<(), ApiError> {
        for def in self.reg().stored() {
            let page = self.store.list(&def.key_prefix(), None, 0, 0).await.map_err(ApiError::internal)?;
            for kv in &page.kvs {
                let obj = decode_kv(kv)?;
                if meta::is_deleting(&obj) && meta::finalizers(&obj).iter().any(|f| f == ORPHAN || f == FOREGROUND) {
                    self.spawn_propagation(
                        def,
                        meta::namespace(&obj).map(str::to_string),
                        meta::name(&obj).to_string(),
                    );
                }
            }
        }
        Ok(())
    }
}

/// A request context for rk's own calls through the handlers.
pub(super) fn internal_call(def: &'static ResourceDef, ns: Option<&str>) -> Call {
    Call {
        def,
        ns: ns.map(str::to_string),
        name: None,
        sub: None,
        query: Query::default(),
        headers: HeaderMap::new(),
        user: None,
        notes: None,
    }
}
