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

/// The resources made for each CRD, by name, with the (uid, generation) they were
/// made from, so an unchanged CRD keeps its definitions.
#[derive(Default)]
pub struct CustomDefs(std::sync::Mutex<HashMap<String, Made>>);

/// The (uid, generation) of a CRD and the resources made from it.
type Made = ((String, i64), Vec<&'static ResourceDef>);

const CRD_PREFIX: &str = "/registry/apiextensions.k8s.io/customresourcedefinitions/";

impl ApiServer {
    /// Serves exactly the custom resources of `crds`.
    pub(crate) fn serve_custom(&self, crds: &[Value]) {
        let mut cache = self.custom.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut extra = Vec::new();
        let mut keep = std::collections::HashSet::new();
        for c in crds {
            let name = crate::api::meta::name(c).to_string();
            let id = (
                crate::api::meta::meta_str(c, "uid").unwrap_or("").to_string(),
                c.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0),
            );
            let defs = match cache.get(&name) {
                Some((have, defs)) if *have == id => defs.clone(),
                _ => {
                    let defs = crd::defs_of(c);
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

    /// Serves the custom resources of the CRDs in the store (at start).
    pub(crate) async fn load_custom(&self) -> Result<(), ApiError> {
        let page = self.store.list(CRD_PREFIX, None, 0, 0).await.map_err(ApiError::internal)?;
        let crds = page.kvs.iter().map(decode_kv).collect::<Result<Vec<_>, _>>()?;
        self.serve_custom(&crds);
        Ok(())
    }
}
