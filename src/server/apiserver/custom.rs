//! Serving custom resources: the registry follows the stored
//! CustomResourceDefinitions (read at start, then on every change the CRD controller
//! sees), so a new CRD is served as soon as it is stored.

use std::collections::HashMap;

use serde_json::Value;

use super::ApiServer;
use super::handlers::decode_kv;
use crate::api::crd;
use crate::api::registry::{Registry, ResourceDef};
use crate::api::status::ApiError;

/// The resources made for each CRD, by name, with the (uid, generation, accepted
/// names) they were made from, so an unchanged CRD keeps its definitions; and the
/// UIDs of the CRDs this server removed from the store, never served again (a look
/// at the CRDs taken before the removal may still list one).
#[derive(Default)]
pub struct CustomDefs(std::sync::Mutex<(HashMap<String, Made>, std::collections::HashSet<String>)>);

/// The (uid, generation, accepted names) of a CRD and the resources made from it.
type Made = ((String, i64, String), Vec<&'static ResourceDef>);

const CRD_PREFIX: &str = "/registry/apiextensions.k8s.io/customresourcedefinitions/";

impl ApiServer {
    /// Serves exactly the custom resources of `crds`, under the names each is given
    /// (see [`crd::naming`]): a CRD whose names clash with another's is served only
    /// if it was established before the clash.
    pub(crate) fn serve_custom(&self, crds: &[Value]) {
        let namings = crd::naming::accept_names(crds);
        let mut guard = self.custom.0.lock().unwrap_or_else(|e| e.into_inner());
        let (cache, gone) = &mut *guard;
        let mut extra = Vec::new();
        let mut keep = std::collections::HashSet::new();
        for (c, naming) in crds.iter().zip(&namings) {
            if naming.conflict.is_some() && !crd::is_established(c) {
                continue;
            }
            if gone.contains(crate::api::meta::meta_str(c, "uid").unwrap_or("")) {
                continue;
            }
            let name = crate::api::meta::name(c).to_string();
            let id = (
                crate::api::meta::meta_str(c, "uid").unwrap_or("").to_string(),
                c.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0),
                naming.names.to_string(),
            );
            let defs = match cache.get(&name) {
                Some((have, defs)) if *have == id => defs.clone(),
                _ => {
                    let defs = crd::defs_of(c, &naming.names);
                    cache.insert(name.clone(), (id, defs.clone()));
                    defs
                }
            };
            extra.extend(defs);
            keep.insert(name);
        }
        cache.retain(|n, _| keep.contains(n));
        let next = Registry::builtin().with(&extra);
        let changed = {
            let cur = self.reg();
            cur.all().len() != next.all().len() || cur.all().iter().zip(next.all()).any(|(a, b)| !std::ptr::eq(*a, *b))
        };
        if changed {
            self.set_reg(next);
        }
    }

    /// Stops serving a CRD's resources as the CRD leaves the store, so that once a
    /// client sees the CRD gone its resources are gone too (the CRD controller would
    /// otherwise drop them only when its watch catches up).
    pub(crate) fn stop_serving(&self, removed: &Value) {
        let mut guard = self.custom.0.lock().unwrap_or_else(|e| e.into_inner());
        let (cache, gone) = &mut *guard;
        let name = crate::api::meta::name(removed);
        gone.insert(crate::api::meta::meta_str(removed, "uid").unwrap_or("").to_string());
        cache.remove(name);
        let reg = self.reg();
        let extra: Vec<&'static ResourceDef> =
            reg.all().iter().copied().filter(|d| d.custom.as_ref().is_some_and(|c| c.crd != name)).collect();
        self.set_reg(Registry::builtin().with(&extra));
    }

    /// Refuses a create of a custom object while its CRD is being deleted (its
    /// objects are being removed), with Kubernetes's 405.
    pub(crate) async fn refuse_while_terminating(&self, def: &ResourceDef) -> Result<(), ApiError> {
        let Some(c) = &def.custom else { return Ok(()) };
        let key = format!("{CRD_PREFIX}{}", c.crd);
        let Some(kv) = self.store.get(&key).await.map_err(ApiError::internal)? else { return Ok(()) };
        if !crate::api::meta::is_deleting(&decode_kv(&kv)?) {
            return Ok(());
        }
        let mut e = ApiError::method_not_allowed("create", def.plural);
        e.message = "create not allowed while custom resource definition is terminating".into();
        e.details = Some(serde_json::json!({"group": def.group, "kind": def.plural}));
        Err(e)
    }

    /// Serves the custom resources of the CRDs in the store (at start).
    pub(crate) async fn load_custom(&self) -> Result<(), ApiError> {
        let page = self.store.list(CRD_PREFIX, None, 0, 0).await.map_err(ApiError::internal)?;
        let crds = page.kvs.iter().map(decode_kv).collect::<Result<Vec<_>, _>>()?;
        self.serve_custom(&crds);
        Ok(())
    }
}
