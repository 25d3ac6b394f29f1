//! Per-namespace defaults: the `default` ServiceAccount and the `kube-root-ca.crt`
//! ConfigMap (the cluster CA, for in-cluster clients), in every namespace, recreated if
//! deleted and corrected if changed, as kube-controller-manager's serviceaccount and
//! root-ca-cert-publisher controllers do.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::core::ObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{Ctx, retry_soon};

/// The ConfigMap holding the cluster CA in every namespace.
pub const ROOT_CA: &str = "kube-root-ca.crt";

struct Data {
    ctx: Arc<Ctx>,
    ca_pem: String,
}

pub(super) async fn run(ctx: Arc<Ctx>, ca_pem: String, shutdown: CancellationToken) {
    let client = ctx.client.clone();
    let to_ns = |o: &dyn Fn() -> Option<String>| o().map(|ns| ObjectRef::<Namespace>::new(&ns));
    Controller::new(Api::<Namespace>::all(client.clone()), watcher::Config::default())
        .watches(
            Api::<ServiceAccount>::all(client.clone()),
            watcher::Config::default().fields("metadata.name=default"),
            move |sa| to_ns(&|| sa.namespace()),
        )
        .watches(
            Api::<ConfigMap>::all(client),
            watcher::Config::default().fields(&format!("metadata.name={ROOT_CA}")),
            move |cm| cm.namespace().map(|ns| ObjectRef::<Namespace>::new(&ns)),
        )
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, |_, _, _| retry_soon(), Arc::new(Data { ctx, ca_pem }))
        .for_each(|_| async {})
        .await;
}

async fn reconcile(ns: Arc<Namespace>, d: Arc<Data>) -> Result<Action, kube::Error> {
    let terminating = ns.metadata.deletion_timestamp.is_some()
        || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
    if terminating {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let sas: Api<ServiceAccount> = Api::namespaced(d.ctx.client.clone(), &name);
    if sas.get_opt("default").await?.is_none() {
        let sa = ServiceAccount {
            metadata: ObjectMeta { name: Some("default".into()), ..Default::default() },
            ..Default::default()
        };
        match sas.create(&PostParams::default(), &sa).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            // The namespace went away meanwhile.
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 403 => return Ok(Action::await_change()),
            Err(e) => return Err(e),
        }
    }
    let cms: Api<ConfigMap> = Api::namespaced(d.ctx.client.clone(), &name);
    let want = BTreeMap::from([("ca.crt".to_string(), d.ca_pem.clone())]);
    match cms.get_opt(ROOT_CA).await? {
        None => {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(ROOT_CA.into()),
                    annotations: Some(BTreeMap::from([(
                        "kubernetes.io/description".to_string(),
                        "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.".to_string(),
                    )])),
                    ..Default::default()
                },
                data: Some(want),
                ..Default::default()
            };
            match cms.create(&PostParams::default(), &cm).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if matches!(e.code, 409 | 404 | 403) => {}
                Err(e) => return Err(e),
            }
        }
        Some(cm) if cm.data.as_ref() != Some(&want) => {
            cms.patch(ROOT_CA, &PatchParams::default(), &Patch::Merge(&json!({"data": want}))).await?;
        }
        Some(_) => {}
    }
    Ok(Action::await_change())
}
