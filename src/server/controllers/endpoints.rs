//! Endpoints and EndpointSlices: for every Service with a selector, the addresses of
//! the pods it selects (ready ones as `addresses` / `ready: true`, the others as
//! `notReadyAddresses` / `ready: false`, terminating ones marked so in slices), with
//! named target ports resolved per pod, as the endpoints and endpointslice controllers
//! of kube-controller-manager keep them. Services without a selector are left to their
//! users; a deleted Service's Endpoints go with it (its slices, owned, go through the
//! garbage collector).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service, ServicePort,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::core::ObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use tokio_util::sync::CancellationToken;

use super::pod_cache::PodCache;
use super::{Ctx, pod_ready, retry_soon};

/// The label naming a slice's Service.
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";
const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const CONTROLLER: &str = "endpointslice-controller.k8s.io";
/// Endpoints per slice, as Kubernetes's default `--max-endpoints-per-slice`.
const PER_SLICE: usize = 100;

fn selects(svc: &Service, pod: &Pod) -> bool {
    let Some(sel) = svc.spec.as_ref().and_then(|s| s.selector.as_ref()).filter(|s| !s.is_empty()) else {
        return false;
    };
    svc.namespace() == pod.namespace() && sel.iter().all(|(k, v)| pod.labels().get(k) == Some(v))
}

pub(super) async fn run(ctx: Arc<Ctx>, pods: Arc<PodCache>, shutdown: CancellationToken) {
    let client = ctx.client.clone();
    let ctrl = Controller::new(Api::<Service>::all(client.clone()), watcher::Config::default());
    let services = ctrl.store();
    let cleanup = {
        let ctx = ctx.clone();
        async move {
            // A Service gone: its Endpoints go too, once a reconcile that was under way
            // when it went has finished (checked against the API, not a cache).
            let mut w =
                watcher(Api::<Service>::all(ctx.client.clone()), watcher::Config::default()).default_backoff().boxed();
            while let Some(ev) = w.next().await {
                if let Ok(watcher::Event::Delete(svc)) = ev {
                    let client = ctx.client.clone();
                    tokio::spawn(async move {
                        let ns = svc.namespace().unwrap_or_default();
                        let name = svc.name_any();
                        for _ in 0..3 {
                            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                            if !matches!(Api::<Service>::namespaced(client.clone(), &ns).get_opt(&name).await, Ok(None))
                            {
                                return;
                            }
                            let _ = Api::<Endpoints>::namespaced(client.clone(), &ns)
                                .delete(&name, &DeleteParams::default())
                                .await;
                        }
                    });
                }
            }
        }
    };
    let cache = pods.clone();
    let main = ctrl
        .watches_stream(pods.subscribe(), move |pod: Pod| {
            services
                .state()
                .iter()
                .filter(|s| selects(s, &pod))
                .map(|s| ObjectRef::from_obj(s.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(move |svc, ctx| reconcile(svc, ctx, cache.clone()), |_, _, _| retry_soon(), ctx)
        .for_each(|_| async {});
    tokio::select! {
        _ = main => {}
        _ = cleanup => {}
    }
}

/// A service port resolved against one pod: (name, port, protocol).
fn resolve(sp: &ServicePort, pod: &Pod) -> Option<(String, i32, String)> {
    let proto = sp.protocol.clone().unwrap_or_else(|| "TCP".into());
    let port = match sp.target_port.as_ref() {
        None => sp.port,
        Some(IntOrString::Int(p)) => *p,
        Some(IntOrString::String(name)) => match name.parse::<i32>() {
            Ok(p) => p,
            Err(_) => {
                pod.spec
                    .as_ref()?
                    .containers
                    .iter()
                    .flat_map(|c| c.ports.iter().flatten())
                    .find(|cp| cp.name.as_deref() == Some(name) && cp.protocol.as_deref().unwrap_or("TCP") == proto)?
                    .container_port
            }
        },
    };
    Some((sp.name.clone().unwrap_or_default(), port, proto))
}

struct Member {
    ip: String,
    ready: bool,
    serving: bool,
    terminating: bool,
    node: Option<String>,
    hostname: Option<String>,
    target: ObjectReference,
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>, cache: Arc<PodCache>) -> Result<Action, kube::Error> {
    let spec = svc.spec.clone().unwrap_or_default();
    if spec.selector.as_ref().is_none_or(|s| s.is_empty()) {
        return Ok(Action::await_change());
    }
    if svc.metadata.deletion_timestamp.is_some() || spec.type_.as_deref() == Some("ExternalName") {
        return Ok(Action::await_change());
    }
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    // The selected pods from the shared cache, which has taken in the pod change that
    // triggered this pass before passing it on.
    let Some(pods) = cache.in_namespace(&ns, |p| selects(&svc, p)).await else { return Ok(retry_soon()) };
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let ports = spec.ports.clone().unwrap_or_default();

    // Pods grouped by their resolved port set, as Kubernetes packs subsets and slices.
    let mut groups: BTreeMap<Vec<(String, i32, String)>, Vec<Member>> = BTreeMap::new();
    for p in pods.iter().map(|p| p.as_ref()) {
        let status = p.status.clone().unwrap_or_default();
        let phase = status.phase.as_deref().unwrap_or("");
        let Some(ip) = status.pod_ip.clone().filter(|ip| !ip.is_empty()) else { continue };
        if phase == "Succeeded" || phase == "Failed" {
            continue;
        }
        let resolved: Vec<(String, i32, String)> = ports.iter().filter_map(|sp| resolve(sp, p)).collect();
        if resolved.is_empty() && !ports.is_empty() {
            continue;
        }
        let terminating = p.metadata.deletion_timestamp.is_some();
        groups.entry(resolved).or_default().push(Member {
            ip,
            ready: (pod_ready(p) || publish_not_ready) && (!terminating || publish_not_ready),
            // As kube-controller-manager: a terminating pod still serves while it is ready.
            serving: pod_ready(p) || publish_not_ready,
            terminating,
            node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
            // A pod with a hostname in a subdomain named like this Service gets a DNS
            // name of its own (`<hostname>.<service>.<ns>.svc`).
            hostname: p
                .spec
                .as_ref()
                .filter(|s| s.subdomain.as_deref() == Some(name.as_str()))
                .and_then(|s| s.hostname.clone()),
            target: ObjectReference {
                kind: Some("Pod".into()),
                namespace: Some(ns.clone()),
                name: Some(p.name_any()),
                uid: p.uid(),
                ..Default::default()
            },
        });
    }
    for members in groups.values_mut() {
        members.sort_by(|a, b| a.ip.cmp(&b.ip));
    }

    // Endpoints: terminating pods are left out, as the endpoints controller does.
    let subsets: Vec<EndpointSubset> = groups
        .iter()
        .filter_map(|(ports, members)| {
            let addr = |m: &Member| EndpointAddress {
                ip: m.ip.clone(),
                node_name: m.node.clone(),
                target_ref: Some(m.target.clone()),
                hostname: m.hostname.clone(),
            };
            let ready: Vec<EndpointAddress> = members.iter().filter(|m| !m.terminating && m.ready).map(addr).collect();
            let not_ready: Vec<EndpointAddress> =
                members.iter().filter(|m| !m.terminating && !m.ready).map(addr).collect();
            if ready.is_empty() && not_ready.is_empty() {
                return None;
            }
            Some(EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, p, proto)| EndpointPort {
                            name: (!n.is_empty()).then(|| n.clone()),
                            port: *p,
                            protocol: Some(proto.clone()),
                            app_protocol: None,
                        })
                        .collect(),
                ),
            })
        })
        .collect();
    let eps_api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), &ns);
    let want = Endpoints {
        metadata: ObjectMeta { name: Some(name.clone()), labels: svc.metadata.labels.clone(), ..Default::default() },
        subsets: (!subsets.is_empty()).then_some(subsets),
    };
    match eps_api.get_opt(&name).await? {
        None => match eps_api.create(&PostParams::default(), &want).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {
                return Ok(Action::requeue(std::time::Duration::from_millis(100)));
            }
            Err(e) => return Err(e),
        },
        Some(cur) if cur.subsets != want.subsets || cur.metadata.labels != want.metadata.labels => {
            let mut next = want.clone();
            next.metadata.resource_version = cur.metadata.resource_version.clone();
            next.metadata.annotations = cur.metadata.annotations.clone();
            eps_api.replace(&name, &PostParams::default(), &next).await?;
        }
        Some(_) => {}
    }

    // EndpointSlices, owned by the Service.
    let slice_meta = || {
        let mut labels = svc.metadata.labels.clone().unwrap_or_default();
        labels.insert(SERVICE_NAME.into(), name.clone());
        labels.insert(MANAGED_BY.into(), CONTROLLER.into());
        ObjectMeta {
            generate_name: Some(format!("{name}-")),
            namespace: Some(ns.clone()),
            labels: Some(labels),
            owner_references: Some(vec![super::controller_ref(svc.as_ref())]),
            ..Default::default()
        }
    };
    let mut desired: Vec<EndpointSlice> = Vec::new();
    for (ports, members) in &groups {
        for chunk in members.chunks(PER_SLICE) {
            desired.push(EndpointSlice {
                metadata: slice_meta(),
                address_type: "IPv4".into(),
                endpoints: chunk
                    .iter()
                    .map(|m| Endpoint {
                        addresses: vec![m.ip.clone()],
                        conditions: Some(EndpointConditions {
                            ready: Some(m.ready),
                            serving: Some(m.serving),
                            terminating: Some(m.terminating),
                        }),
                        node_name: m.node.clone(),
                        hostname: m.hostname.clone(),
                        target_ref: Some(m.target.clone()),
                        ..Default::default()
                    })
                    .collect(),
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, p, proto)| SlicePort {
                            name: Some(n.clone()),
                            port: Some(*p),
                            protocol: Some(proto.clone()),
                            app_protocol: None,
                        })
                        .collect(),
                ),
            });
        }
    }
    if desired.is_empty() {
        // Kubernetes keeps one empty slice per Service (its ports, no endpoints).
        desired.push(EndpointSlice {
            metadata: slice_meta(),
            address_type: "IPv4".into(),
            endpoints: vec![],
            ports: Some(vec![]),
        });
    }
    let slices: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    let mut existing = slices
        .list(&ListParams::default().labels(&format!("{SERVICE_NAME}={name},{MANAGED_BY}={CONTROLLER}")))
        .await?
        .items;
    existing.sort_by_key(|s| s.name_any());
    for (i, mut want) in desired.into_iter().enumerate() {
        match existing.get(i) {
            Some(cur) => {
                if cur.endpoints != want.endpoints
                    || cur.ports != want.ports
                    || cur.metadata.labels != want.metadata.labels
                {
                    want.metadata.name = cur.metadata.name.clone();
                    want.metadata.generate_name = None;
                    want.metadata.resource_version = cur.metadata.resource_version.clone();
                    slices.replace(&cur.name_any(), &PostParams::default(), &want).await?;
                }
            }
            None => {
                slices.create(&PostParams::default(), &want).await?;
            }
        }
        if let Some(s) = existing.get_mut(i) {
            s.metadata.name = None;
        }
    }
    for s in existing.iter().filter(|s| s.metadata.name.is_some()) {
        let _ = slices.delete(&s.name_any(), &DeleteParams::default()).await;
    }
    Ok(Action::await_change())
}

/// Points the `kubernetes` Service at this API server (`ip:port`): its Endpoints and
/// EndpointSlice, as kube-apiserver's endpoint reconciler keeps them.
pub async fn publish_apiserver(client: &kube::Client, ip: std::net::IpAddr, port: u16) -> Result<(), kube::Error> {
    let ns = "default";
    let labels: BTreeMap<String, String> =
        [("endpointslice.kubernetes.io/skip-mirror".to_string(), "true".to_string())].into();
    let want = Endpoints {
        metadata: ObjectMeta { name: Some("kubernetes".into()), labels: Some(labels), ..Default::default() },
        subsets: Some(vec![EndpointSubset {
            addresses: Some(vec![EndpointAddress { ip: ip.to_string(), ..Default::default() }]),
            not_ready_addresses: None,
            ports: Some(vec![EndpointPort {
                name: Some("https".into()),
                port: port.into(),
                protocol: Some("TCP".into()),
                app_protocol: None,
            }]),
        }]),
    };
    put(&Api::namespaced(client.clone(), ns), want, |cur, want| cur.subsets == want.subsets).await?;
    let slice_labels: BTreeMap<String, String> =
        [(SERVICE_NAME.to_string(), "kubernetes".to_string()), (MANAGED_BY.to_string(), "rk-apiserver".to_string())]
            .into();
    let want = EndpointSlice {
        metadata: ObjectMeta { name: Some("kubernetes".into()), labels: Some(slice_labels), ..Default::default() },
        address_type: if ip.is_ipv4() { "IPv4" } else { "IPv6" }.into(),
        endpoints: vec![Endpoint {
            addresses: vec![ip.to_string()],
            conditions: Some(EndpointConditions { ready: Some(true), serving: Some(true), terminating: Some(false) }),
            ..Default::default()
        }],
        ports: Some(vec![SlicePort {
            name: Some("https".into()),
            port: Some(port.into()),
            protocol: Some("TCP".into()),
            app_protocol: None,
        }]),
    };
    put(&Api::namespaced(client.clone(), ns), want, |cur: &EndpointSlice, want| {
        cur.endpoints == want.endpoints && cur.ports == want.ports
    })
    .await?;
    Ok(())
}

/// Creates `want`, or replaces the object of its name unless `same` says it already is.
async fn put<K>(api: &Api<K>, want: K, same: impl Fn(&K, &K) -> bool) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = want.meta().name.clone().unwrap_or_default();
    match api.get_opt(&name).await? {
        None => {
            api.create(&PostParams::default(), &want).await?;
        }
        Some(cur) if !same(&cur, &want) => {
            let mut next = want;
            next.meta_mut().resource_version = cur.meta().resource_version.clone();
            api.replace(&name, &PostParams::default(), &next).await?;
        }
        Some(_) => {}
    }
    Ok(())
}
