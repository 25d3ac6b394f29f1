//! The API driven by kube-rs over HTTPS: CRUD, conflicts, selectors, paging, watch,
//! finalizers, the status split and namespace lifecycle.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::TestServer;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::core::ObjectMeta;
use serde_json::json;

fn cm(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("k".to_string(), "v".to_string())])),
        ..Default::default()
    }
}

fn status_code(e: kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_crud_and_conflicts() {
    let srv = TestServer::api_only().await;
    let cms: Api<ConfigMap> = Api::namespaced(srv.client().await, "default");
    let created = cms.create(&PostParams::default(), &cm("a", &[("app", "x")])).await.unwrap();
    let uid = created.metadata.uid.clone().unwrap();
    let rv1 = created.metadata.resource_version.clone().unwrap();
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(status_code(cms.create(&PostParams::default(), &cm("a", &[])).await.unwrap_err()), 409);

    let got = cms.get("a").await.unwrap();
    assert_eq!(got.metadata.uid.as_deref(), Some(uid.as_str()));
    assert_eq!(got.data.as_ref().unwrap()["k"], "v");

    // Update with the current resourceVersion works; with a stale one it is 409.
    let mut upd = got.clone();
    upd.data = Some(BTreeMap::from([("k".to_string(), "v2".to_string())]));
    let after = cms.replace("a", &PostParams::default(), &upd).await.unwrap();
    assert_ne!(after.metadata.resource_version.as_deref(), Some(rv1.as_str()));
    assert_eq!(after.metadata.uid.as_deref(), Some(uid.as_str()), "uid survives updates");
    assert_eq!(status_code(cms.replace("a", &PostParams::default(), &upd).await.unwrap_err()), 409);

    // Merge and JSON patches.
    let p =
        cms.patch("a", &PatchParams::default(), &Patch::Merge(json!({"data": {"n": "1", "k": null}}))).await.unwrap();
    assert_eq!(p.data.unwrap(), BTreeMap::from([("n".to_string(), "1".to_string())]));
    let jp: json_patch::Patch =
        serde_json::from_value(json!([{"op": "add", "path": "/data/j", "value": "2"}])).unwrap();
    let p = cms.patch("a", &PatchParams::default(), &Patch::<()>::Json(jp)).await.unwrap();
    assert_eq!(p.data.unwrap()["j"], "2");
    let sp = cms.patch("a", &PatchParams::default(), &Patch::Strategic(json!({"data": {"s": "3"}}))).await.unwrap();
    assert_eq!(sp.data.unwrap()["s"], "3");

    // Delete; then it is gone.
    cms.delete("a", &DeleteParams::default()).await.unwrap();
    assert_eq!(status_code(cms.get("a").await.unwrap_err()), 404);
    assert_eq!(status_code(cms.delete("a", &DeleteParams::default()).await.unwrap_err()), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_selectors_and_paging() {
    let srv = TestServer::api_only().await;
    let cms: Api<ConfigMap> = Api::namespaced(srv.client().await, "default");
    for i in 0..25 {
        let tier = if i % 2 == 0 { "even" } else { "odd" };
        cms.create(&PostParams::default(), &cm(&format!("c{i:02}"), &[("tier", tier)])).await.unwrap();
    }
    let even = cms.list(&ListParams::default().labels("tier=even")).await.unwrap();
    assert_eq!(even.items.len(), 13);
    let notin = cms.list(&ListParams::default().labels("tier notin (even)")).await.unwrap();
    assert_eq!(notin.items.len(), 12);
    let byname = cms.list(&ListParams::default().fields("metadata.name=c03")).await.unwrap();
    assert_eq!(byname.items.len(), 1);
    assert_eq!(status_code(cms.list(&ListParams::default().fields("spec.bogus=1")).await.unwrap_err()), 400);

    // Paging: pages of 10 at the first page's revision, even with writes in between.
    let first = cms.list(&ListParams::default().limit(10)).await.unwrap();
    assert_eq!(first.items.len(), 10);
    let token = first.metadata.continue_.clone().expect("continue token");
    cms.create(&PostParams::default(), &cm("zz-new", &[])).await.unwrap();
    let second = cms.list(&ListParams::default().limit(10).continue_token(&token)).await.unwrap();
    let third = cms
        .list(&ListParams::default().limit(10).continue_token(second.metadata.continue_.as_deref().unwrap()))
        .await
        .unwrap();
    assert_eq!(third.items.len(), 5);
    assert!(third.metadata.continue_.as_deref().unwrap_or("").is_empty());
    assert!(third.items.iter().all(|c| c.metadata.name.as_deref() != Some("zz-new")), "paged list is consistent");
    assert_eq!(second.metadata.resource_version, first.metadata.resource_version);

    // Cluster-wide list sees every namespace.
    let all: Api<ConfigMap> = Api::all(srv.client().await);
    assert_eq!(all.list(&ListParams::default()).await.unwrap().items.len(), 26);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_list_revision_with_selector_transitions() {
    let srv = TestServer::api_only().await;
    let cms: Api<ConfigMap> = Api::namespaced(srv.client().await, "default");
    cms.create(&PostParams::default(), &cm("before", &[("w", "yes")])).await.unwrap();
    let list = cms.list(&ListParams::default().labels("w=yes")).await.unwrap();
    let rv = list.metadata.resource_version.unwrap();
    let mut stream = cms.watch(&WatchParams::default().labels("w=yes").timeout(10), &rv).await.unwrap().boxed();
    cms.create(&PostParams::default(), &cm("a", &[("w", "yes")])).await.unwrap();
    cms.create(&PostParams::default(), &cm("ignored", &[("w", "no")])).await.unwrap();
    cms.patch("a", &PatchParams::default(), &Patch::Merge(json!({"data": {"x": "1"}}))).await.unwrap();
    // Leaving the selector is a DELETED event, entering it an ADDED one.
    cms.patch("a", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"w": "no"}}}))).await.unwrap();
    cms.patch("ignored", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"w": "yes"}}})))
        .await
        .unwrap();
    cms.delete("ignored", &DeleteParams::default()).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let ev = tokio::time::timeout(Duration::from_secs(10), stream.try_next()).await.unwrap().unwrap().unwrap();
        seen.push(match ev {
            WatchEvent::Added(c) => format!("ADDED {}", c.metadata.name.unwrap()),
            WatchEvent::Modified(c) => format!("MODIFIED {}", c.metadata.name.unwrap()),
            WatchEvent::Deleted(c) => format!("DELETED {}", c.metadata.name.unwrap()),
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(e) => panic!("watch error {e:?}"),
        });
    }
    assert_eq!(seen, ["ADDED a", "MODIFIED a", "DELETED a", "ADDED ignored", "DELETED ignored"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_bookmark_at_timeout_and_expired_after_compaction() {
    let srv = TestServer::api_only().await;
    let cms: Api<ConfigMap> = Api::namespaced(srv.client().await, "default");
    let c = cms.create(&PostParams::default(), &cm("x", &[])).await.unwrap();
    let rv = c.metadata.resource_version.unwrap();
    let mut s = cms.watch(&WatchParams::default().timeout(1), &rv).await.unwrap().boxed();
    match tokio::time::timeout(Duration::from_secs(10), s.try_next()).await.unwrap().unwrap() {
        Some(WatchEvent::Bookmark(b)) => assert_eq!(b.metadata.resource_version, rv),
        other => panic!("expected a bookmark before the timeout ends the watch, got {other:?}"),
    }
    // Compact past rv: a watch from rv is answered with 410 Expired in the stream.
    let c2 = cms.patch("x", &PatchParams::default(), &Patch::Merge(json!({"data": {"a": "b"}}))).await.unwrap();
    let now: i64 = c2.metadata.resource_version.unwrap().parse().unwrap();
    use rk::embedded::Storage;
    srv.running.store.compact(now).await.unwrap();
    let mut s = cms.watch(&WatchParams::default(), &rv).await.unwrap().boxed();
    match tokio::time::timeout(Duration::from_secs(10), s.try_next()).await.unwrap().unwrap() {
        Some(WatchEvent::Error(e)) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410, got {other:?}"),
    }
    let e = cms
        .list(
            &ListParams::default().limit(1).continue_token("eyJ2IjoibWV0YS5rOHMuaW8vdjEiLCJydiI6Miwic3RhcnQiOiIvIn0="),
        )
        .await
        .unwrap_err();
    assert_eq!(status_code(e), 410);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalizers_generation_status_and_generate_name() {
    let srv = TestServer::api_only().await;
    let client = srv.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut f = cm("held", &[]);
    f.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    cms.create(&PostParams::default(), &f).await.unwrap();
    cms.delete("held", &DeleteParams::default()).await.unwrap();
    let held = cms.get("held").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some(), "an object with finalizers is only marked");
    let p = Patch::Merge(json!({"metadata": {"finalizers": ["example.com/other"]}}));
    assert_eq!(status_code(cms.patch("held", &PatchParams::default(), &p).await.unwrap_err()), 422);
    cms.patch("held", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}}))).await.unwrap();
    assert_eq!(status_code(cms.get("held").await.unwrap_err()), 404, "removed with its last finalizer");

    let mut g = cm("", &[]);
    g.metadata.name = None;
    g.metadata.generate_name = Some("gen-".into());
    let made = cms.create(&PostParams::default(), &g).await.unwrap();
    let name = made.metadata.name.unwrap();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");

    let deps: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}
    })).unwrap();
    let d = deps.create(&PostParams::default(), &d).await.unwrap();
    assert_eq!(d.metadata.generation, Some(1));
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(1), "defaulted");
    let d2 = deps.patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 3}}))).await.unwrap();
    assert_eq!(d2.metadata.generation, Some(2), "spec change bumps generation");
    let d3 = deps
        .patch("web", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})))
        .await
        .unwrap();
    assert_eq!(d3.metadata.generation, Some(2), "metadata change does not");
    // Status is ignored on the main resource and written only through /status.
    let d4 =
        deps.patch("web", &PatchParams::default(), &Patch::Merge(json!({"status": {"replicas": 7}}))).await.unwrap();
    // (The deployment controller writes real counts to status; never 7.)
    assert_ne!(d4.status.as_ref().and_then(|s| s.replicas), Some(7));
    let d5 = deps
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"replicas": 7}, "spec": {"replicas": 9}})),
        )
        .await
        .unwrap();
    assert_eq!(d5.status.unwrap().replicas, Some(7));
    assert_eq!(d5.spec.unwrap().replicas, Some(3), "spec is ignored through /status");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_lifecycle_and_services() {
    let srv = TestServer::api_only().await;
    let client = srv.client().await;
    let nss: Api<Namespace> = Api::all(client.clone());
    let names: Vec<String> =
        nss.list(&ListParams::default()).await.unwrap().items.into_iter().filter_map(|n| n.metadata.name).collect();
    for want in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(names.iter().any(|n| n == want), "{want} exists");
    }
    let missing: Api<ConfigMap> = Api::namespaced(client.clone(), "nope");
    assert_eq!(status_code(missing.create(&PostParams::default(), &cm("a", &[])).await.unwrap_err()), 404);

    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap();
    let ns = nss.create(&PostParams::default(), &ns).await.unwrap();
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Active"));
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "team");
    cms.create(&PostParams::default(), &cm("a", &[])).await.unwrap();
    nss.delete("team", &DeleteParams::default()).await.unwrap();
    let mut gone = false;
    for _ in 0..100 {
        if nss.get_opt("team").await.unwrap().is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "a deleted namespace is emptied and removed");
    assert!(cms.get_opt("a").await.unwrap().is_none());
    assert_eq!(status_code(nss.delete("default", &DeleteParams::default()).await.unwrap_err()), 403);

    // Services get a ClusterIP from the service CIDR; a taken one is 422.
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let k = svcs.get("kubernetes").await.unwrap();
    assert_eq!(k.spec.unwrap().cluster_ip.as_deref(), Some("10.43.0.1"));
    let s: Service = serde_json::from_value(
        json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}}),
    )
    .unwrap();
    let s = svcs.create(&PostParams::default(), &s).await.unwrap();
    let spec = s.spec.unwrap();
    assert!(spec.cluster_ip.unwrap().starts_with("10.43."));
    let np = spec.ports.unwrap()[0].node_port.unwrap();
    assert!((30000..=32767).contains(&np));
    let dup: Service = serde_json::from_value(
        json!({"metadata": {"name": "dup"}, "spec": {"clusterIP": "10.43.0.1", "ports": [{"port": 80}]}}),
    )
    .unwrap();
    assert_eq!(status_code(svcs.create(&PostParams::default(), &dup).await.unwrap_err()), 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_and_foreground_propagation() {
    let srv = TestServer::api_only().await;
    let cms: Api<ConfigMap> = Api::namespaced(srv.client().await, "default");
    async fn owned(cms: &Api<ConfigMap>, owner: &str, dep: &str) {
        let o = cms.create(&PostParams::default(), &cm(owner, &[])).await.unwrap();
        let mut d = cm(dep, &[]);
        d.metadata.owner_references = Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: owner.into(),
            uid: o.metadata.uid.unwrap(),
            block_owner_deletion: Some(true),
            ..Default::default()
        }]);
        cms.create(&PostParams::default(), &d).await.unwrap();
    }
    async fn gone(cms: &Api<ConfigMap>, name: &str) -> bool {
        for _ in 0..100 {
            if cms.get_opt(name).await.unwrap().is_none() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
    owned(&cms, "o1", "d1").await;
    cms.delete("o1", &DeleteParams::orphan()).await.unwrap();
    assert!(gone(&cms, "o1").await, "orphaned owner is removed");
    let d1 = cms.get("d1").await.unwrap();
    assert!(d1.metadata.owner_references.unwrap_or_default().is_empty(), "the dependent lost its owner reference");

    owned(&cms, "o2", "d2").await;
    cms.delete("o2", &DeleteParams::foreground()).await.unwrap();
    assert!(gone(&cms, "o2").await, "foreground-deleted owner is removed");
    assert!(cms.get_opt("d2").await.unwrap().is_none(), "its dependent went first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_collection_and_resource_version_match() {
    let srv = TestServer::api_only().await;
    let cms: Api<ConfigMap> = Api::namespaced(srv.client().await, "default");
    let mut first_rv = String::new();
    for i in 0..6 {
        let c = cms
            .create(&PostParams::default(), &cm(&format!("x{i}"), &[("batch", if i < 4 { "a" } else { "b" })]))
            .await
            .unwrap();
        if i == 0 {
            first_rv = c.metadata.resource_version.unwrap();
        }
    }
    // (Lists select the test's own ConfigMaps: the namespace also holds kube-root-ca.crt.)
    // An exact list at an old revision shows the state of then.
    let then = cms
        .list(&ListParams::default().labels("batch").at(&first_rv).matching(kube::api::VersionMatch::Exact))
        .await
        .unwrap();
    assert_eq!(then.items.len(), 1);
    assert_eq!(then.metadata.resource_version.as_deref(), Some(first_rv.as_str()));
    let later = cms
        .list(&ListParams::default().labels("batch").at(&first_rv).matching(kube::api::VersionMatch::NotOlderThan))
        .await
        .unwrap();
    assert_eq!(later.items.len(), 6);
    let any = cms.list(&ListParams::default().labels("batch").at("0")).await.unwrap();
    assert_eq!(any.items.len(), 6);

    let gone = cms.delete_collection(&DeleteParams::default(), &ListParams::default().labels("batch=a")).await.unwrap();
    assert_eq!(gone.left().map(|l| l.items.len()), Some(4));
    let left: Vec<String> = cms
        .list(&ListParams::default().labels("batch"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    assert_eq!(left, ["x4", "x5"]);

    // A streaming list: initial ADDED events, then a bookmark marking their end.
    let mut wp = WatchParams::default().labels("batch").timeout(5);
    wp.send_initial_events = true;
    wp.bookmarks = true;
    let mut s = cms.watch(&wp, "").await.unwrap().boxed();
    let mut added = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.try_next()).await.unwrap().unwrap().unwrap() {
            WatchEvent::Added(_) => added += 1,
            WatchEvent::Bookmark(b) => {
                assert_eq!(b.metadata.annotations.get("k8s.io/initial-events-end").map(String::as_str), Some("true"));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(added, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_one_resource_in_two_versions() {
    use k8s_openapi::api::core::v1::Event as CoreEvent;
    use k8s_openapi::api::events::v1::Event as NewEvent;
    let srv = TestServer::api_only().await;
    let client = srv.client().await;
    let new: Api<NewEvent> = Api::namespaced(client.clone(), "default");
    let core: Api<CoreEvent> = Api::namespaced(client.clone(), "default");
    let e: NewEvent = serde_json::from_value(json!({
        "metadata": {"name": "web.1"},
        "eventTime": "2026-11-22T00:00:00.000000Z",
        "regarding": {"kind": "Pod", "name": "web", "namespace": "default"},
        "reason": "Started", "note": "started container", "type": "Normal", "action": "Start",
        "reportingController": "rk/kubelet", "reportingInstance": "node-1",
    }))
    .unwrap();
    new.create(&PostParams::default(), &e).await.unwrap();
    let c = core.get("web.1").await.unwrap();
    assert_eq!(c.message.as_deref(), Some("started container"));
    assert_eq!(c.involved_object.name.as_deref(), Some("web"));
    assert_eq!(c.reporting_component.as_deref(), Some("rk/kubelet"));
    let by_object = core.list(&ListParams::default().fields("involvedObject.name=web")).await.unwrap();
    assert_eq!(by_object.items.len(), 1, "describe's field selector finds it");

    let old: CoreEvent = serde_json::from_value(json!({
        "metadata": {"name": "web.2"}, "involvedObject": {"kind": "Pod", "name": "web"},
        "reason": "Killing", "message": "stopping", "type": "Normal", "count": 2,
    }))
    .unwrap();
    core.create(&PostParams::default(), &old).await.unwrap();
    let n = new.get("web.2").await.unwrap();
    assert_eq!(n.note.as_deref(), Some("stopping"));
    assert_eq!(n.deprecated_count, Some(2));
    assert_eq!(n.regarding.unwrap().name.as_deref(), Some("web"));
    assert_eq!(new.list(&ListParams::default()).await.unwrap().items.len(), 2);
    let table = srv.kubectl_ok(&["get", "events", "--no-headers"]).await;
    assert!(table.contains("started container") && table.contains("stopping"), "{table}");
    new.delete("web.2", &DeleteParams::default()).await.unwrap();
    assert!(core.get_opt("web.2").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_managers_conflicts_and_force() {
    let srv = TestServer::api_only().await;
    let deps: Api<Deployment> = Api::namespaced(srv.client().await, "default");
    let manifest = |image: &str, replicas: Option<i64>, env: serde_json::Value| {
        let mut spec = json!({
            "selector": {"matchLabels": {"app": "w"}},
            "template": {"metadata": {"labels": {"app": "w"}},
                         "spec": {"containers": [{"name": "c", "image": image, "env": env}]}},
        });
        if let Some(r) = replicas {
            spec["replicas"] = json!(r);
        }
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "w"}, "spec": spec})
    };
    let alice = PatchParams::apply("alice");
    // Apply creates, with alice's fields recorded.
    let env = json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]);
    let d = deps.patch("w", &alice, &Patch::Apply(manifest("i:1", Some(2), env.clone()))).await.unwrap();
    let mf = d.metadata.managed_fields.clone().unwrap();
    assert_eq!((mf[0].manager.as_deref(), mf[0].operation.as_deref()), (Some("alice"), Some("Apply")));
    let f = &mf[0].fields_v1.as_ref().unwrap().0;
    assert!(
        f["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"c\"}"]["f:env"]["k:{\"name\":\"B\"}"]
            .is_object()
    );
    // bob applies the image: a conflict; with force he takes it.
    let bob = PatchParams::apply("bob");
    let bobs = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "w"},
        "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i:2"}]}}}});
    let e = deps.patch("w", &bob, &Patch::Apply(bobs.clone())).await.unwrap_err();
    let kube::Error::Api(s) = e else { panic!("expected a Status") };
    assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        s.message,
        "Apply failed with 1 conflict: conflict with \"alice\": .spec.template.spec.containers[name=\"c\"].image"
    );
    let d = deps.patch("w", &bob.clone().force(), &Patch::Apply(bobs)).await.unwrap();
    assert_eq!(d.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].image.as_deref(), Some("i:2"));
    // carol updates replicas with a merge patch: an Update manager.
    let carol = PatchParams { field_manager: Some("carol".into()), ..Default::default() };
    deps.patch("w", &carol, &Patch::Merge(json!({"spec": {"replicas": 5}}))).await.unwrap();
    // alice drops replicas, env B and her claim on the image (now bob's): B goes,
    // replicas stays (carol owns it), the image stays bob's.
    let d = deps
        .patch("w", &alice, &Patch::Apply(manifest("i:2", None, json!([{"name": "A", "value": "1"}]))))
        .await
        .unwrap();
    let spec = d.spec.unwrap();
    assert_eq!(spec.replicas, Some(5));
    let c = &spec.template.spec.unwrap().containers[0];
    assert_eq!(c.env.as_ref().unwrap().iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["A"]);
    assert_eq!(c.image.as_deref(), Some("i:2"));
    let managers: Vec<(String, String)> = d
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .map(|m| (m.manager.unwrap_or_default(), m.operation.unwrap_or_default()))
        .collect();
    for want in [("alice", "Apply"), ("bob", "Apply"), ("carol", "Update")] {
        assert!(managers.iter().any(|(m, o)| (m.as_str(), o.as_str()) == want), "{managers:?}");
    }
    // A no-op apply changes nothing, not even the resourceVersion.
    let rv = deps.get("w").await.unwrap().metadata.resource_version;
    let again = deps
        .patch("w", &alice, &Patch::Apply(manifest("i:2", None, json!([{"name": "A", "value": "1"}]))))
        .await
        .unwrap();
    assert_eq!(again.metadata.resource_version, rv);
    // Bad applies: no field manager, a wrong kind, force on a merge patch; nothing changes.
    let none = PatchParams::default();
    let e = deps.patch("w", &none, &Patch::Apply(manifest("i:9", None, json!([])))).await.unwrap_err();
    assert_eq!(status_code(e), 422);
    let wrong = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "w"}});
    assert_eq!(status_code(deps.patch("w", &alice, &Patch::Apply(wrong)).await.unwrap_err()), 400);
    // (kube-rs refuses force on a merge patch itself; send it raw)
    let req = http::Request::patch("/apis/apps/v1/namespaces/default/deployments/w?force=true&fieldManager=x")
        .header("content-type", "application/merge-patch+json")
        .body(br#"{"spec":{"replicas":1}}"#.to_vec())
        .unwrap();
    assert_eq!(status_code(srv.client().await.request_text(req).await.unwrap_err()), 422);
    assert_eq!(deps.get("w").await.unwrap().metadata.resource_version, rv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resources_with_kube_rs() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{ApiResource, DynamicObject};
    let srv = TestServer::api_only().await;
    let client = srv.client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "backups.ops.example.org"},
        "spec": {"group": "ops.example.org", "scope": "Cluster",
                 "names": {"plural": "backups", "kind": "Backup"},
                 "versions": [{"name": "v1", "served": true, "storage": true,
                     "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                         "spec": {"type": "object", "properties": {
                             "schedule": {"type": "string"},
                             "keep": {"type": "integer", "minimum": 0}}}}}}}]}
    }))
    .unwrap();
    crds.create(&PostParams::default(), &crd).await.unwrap();
    // Served at once, established soon after.
    let established = || async {
        let c = crds.get("backups.ops.example.org").await.unwrap();
        c.status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
    };
    let mut tries = 0;
    while !established().await {
        tries += 1;
        assert!(tries < 100, "the CRD never became Established");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ar = ApiResource {
        group: "ops.example.org".into(),
        version: "v1".into(),
        api_version: "ops.example.org/v1".into(),
        kind: "Backup".into(),
        plural: "backups".into(),
    };
    let backups: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let obj = |name: &str, keep: i64, team: &str| -> DynamicObject {
        serde_json::from_value(json!({"apiVersion": "ops.example.org/v1", "kind": "Backup",
            "metadata": {"name": name, "labels": {"team": team}}, "spec": {"schedule": "@daily", "keep": keep}}))
        .unwrap()
    };
    backups.create(&PostParams::default(), &obj("a", 3, "x")).await.unwrap();
    backups.create(&PostParams::default(), &obj("b", 5, "y")).await.unwrap();
    let e = backups.create(&PostParams::default(), &obj("c", -1, "y")).await.unwrap_err();
    assert_eq!(status_code(e), 422);
    let listed = backups.list(&ListParams::default().labels("team=y")).await.unwrap();
    assert_eq!(listed.items.iter().map(|o| o.metadata.name.clone().unwrap()).collect::<Vec<_>>(), ["b"]);
    let rv = listed.metadata.resource_version.unwrap();

    // Watch sees a server-side apply; a second manager conflicts, then forces.
    let mut stream = backups.watch(&WatchParams::default(), &rv).await.unwrap().boxed();
    let p =
        json!({"apiVersion": "ops.example.org/v1", "kind": "Backup", "metadata": {"name": "b"}, "spec": {"keep": 7}});
    // The creator (kube-rs sends no User-Agent: manager "") owns keep=5.
    let e = backups.patch("b", &PatchParams::apply("ops"), &Patch::Apply(&p)).await.unwrap_err();
    assert_eq!(status_code(e), 409);
    backups.patch("b", &PatchParams::apply("ops").force(), &Patch::Apply(&p)).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), stream.try_next()).await.unwrap().unwrap().unwrap();
    let WatchEvent::Modified(o) = ev else { panic!("expected Modified, got {ev:?}") };
    assert_eq!(o.data["spec"]["keep"], 7);
    let p2 =
        json!({"apiVersion": "ops.example.org/v1", "kind": "Backup", "metadata": {"name": "b"}, "spec": {"keep": 9}});
    let e = backups.patch("b", &PatchParams::apply("other"), &Patch::Apply(&p2)).await.unwrap_err();
    assert_eq!(status_code(e), 409);
    let o = backups.patch("b", &PatchParams::apply("other").force(), &Patch::Apply(&p2)).await.unwrap();
    assert_eq!(o.data["spec"]["keep"], 9);
    assert_eq!(o.data["spec"]["schedule"], "@daily");

    // Deleting the CRD takes the objects with it.
    crds.delete("backups.ops.example.org", &DeleteParams::default()).await.unwrap();
    let mut tries = 0;
    while crds.get_opt("backups.ops.example.org").await.unwrap().is_some() {
        tries += 1;
        assert!(tries < 100, "the CRD was never removed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status_code(backups.list(&ListParams::default()).await.unwrap_err()), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crd_names_selectable_fields_formats_transitions_and_termination() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{ApiResource, DynamicObject};
    let srv = TestServer::api_only().await;
    let client = srv.client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let definition = |plural: &str, kind: &str, selectable: serde_json::Value| -> CustomResourceDefinition {
        serde_json::from_value(json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": format!("{plural}.shop.example.com")},
            "spec": {"group": "shop.example.com", "scope": "Namespaced",
                     "names": {"plural": plural, "kind": kind},
                     "versions": [{"name": "v1", "served": true, "storage": true,
                         "selectableFields": selectable,
                         "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                             "spec": {"type": "object", "properties": {
                                 "color": {"type": "string"},
                                 "tags": {"type": "array", "items": {"type": "string"}},
                                 "owner": {"type": "string", "format": "email"},
                                 "size": {"type": "integer", "x-kubernetes-validations": [
                                     {"rule": "self >= oldSelf", "message": "size may only grow"}]}}}}}}}]}
        }))
        .unwrap()
    };
    // A selectable field must be a scalar of the schema.
    let e = crds
        .create(&PostParams::default(), &definition("widgets", "Widget", json!([{"jsonPath": ".spec.tags"}])))
        .await
        .unwrap_err();
    let kube::Error::Api(s) = e else { panic!("{e:?}") };
    assert_eq!(s.code, 422);
    assert!(s.message.contains("must point to a field of type string, boolean or integer"), "{}", s.message);

    crds.create(&PostParams::default(), &definition("widgets", "Widget", json!([{"jsonPath": ".spec.color"}])))
        .await
        .unwrap();
    let condition = |name: &'static str, ty: &'static str| {
        let crds = crds.clone();
        async move {
            let c = crds.get(name).await.unwrap();
            let cs = c.status.and_then(|s| s.conditions).unwrap_or_default();
            cs.into_iter()
                .find(|c| c.type_ == ty)
                .map(|c| (c.status, c.reason.unwrap_or_default(), c.message.unwrap_or_default()))
        }
    };
    let mut tries = 0;
    while condition("widgets.shop.example.com", "Established").await.map(|c| c.0).as_deref() != Some("True") {
        tries += 1;
        assert!(tries < 100, "widgets never became Established");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A second CRD of the group asking for the same kind is not given it, and not served.
    crds.create(&PostParams::default(), &definition("gizmos", "Widget", json!([]))).await.unwrap();
    let mut tries = 0;
    let accepted = loop {
        if let Some(c) = condition("gizmos.shop.example.com", "NamesAccepted").await {
            break c;
        }
        tries += 1;
        assert!(tries < 100, "gizmos never got a NamesAccepted condition");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(accepted, ("False".into(), "ListKindConflict".into(), "\"WidgetList\" is already in use".into()));
    let established = condition("gizmos.shop.example.com", "Established").await.unwrap();
    assert_eq!((established.0.as_str(), established.1.as_str()), ("False", "NotAccepted"));
    let gizmo_ar = ApiResource {
        group: "shop.example.com".into(),
        version: "v1".into(),
        api_version: "shop.example.com/v1".into(),
        kind: "Widget".into(),
        plural: "gizmos".into(),
    };
    let gizmos: Api<DynamicObject> = Api::default_namespaced_with(client.clone(), &gizmo_ar);
    assert_eq!(status_code(gizmos.list(&ListParams::default()).await.unwrap_err()), 404);
    // Once the holder of the names is gone, the second CRD gets them (checked below).

    let ar = ApiResource { plural: "widgets".into(), ..gizmo_ar.clone() };
    let widgets: Api<DynamicObject> = Api::default_namespaced_with(client.clone(), &ar);
    let widget = |name: &str, spec: serde_json::Value| -> DynamicObject {
        serde_json::from_value(json!({"apiVersion": "shop.example.com/v1", "kind": "Widget",
            "metadata": {"name": name}, "spec": spec}))
        .unwrap()
    };
    widgets
        .create(&PostParams::default(), &widget("w1", json!({"color": "red", "owner": "ops@example.com", "size": 1})))
        .await
        .unwrap();
    widgets.create(&PostParams::default(), &widget("w2", json!({"color": "blue", "size": 1}))).await.unwrap();
    // format: email.
    let e = widgets.create(&PostParams::default(), &widget("w3", json!({"owner": "nobody"}))).await.unwrap_err();
    let kube::Error::Api(s) = e else { panic!("{e:?}") };
    assert_eq!(s.code, 422);
    assert!(s.message.contains("spec.owner in body must be of type email: \"nobody\""), "{}", s.message);

    // Field selectors on the selectable field; others are refused.
    let names = |l: kube::core::ObjectList<DynamicObject>| -> Vec<String> {
        l.items.into_iter().map(|o| o.metadata.name.unwrap()).collect()
    };
    let red = widgets.list(&ListParams::default().fields("spec.color=red")).await.unwrap();
    assert_eq!(names(red), ["w1"]);
    let not_red = widgets.list(&ListParams::default().fields("spec.color!=red")).await.unwrap();
    assert_eq!(names(not_red), ["w2"]);
    let e = widgets.list(&ListParams::default().fields("spec.size=1")).await.unwrap_err();
    let kube::Error::Api(s) = e else { panic!("{e:?}") };
    assert_eq!((s.code, s.message.as_str()), (400, "field label not supported: spec.size"));

    // A transition rule sees the old value on update.
    let shrink = json!({"spec": {"size": 0}});
    let e = widgets.patch("w1", &PatchParams::default(), &Patch::Merge(&shrink)).await.unwrap_err();
    let kube::Error::Api(s) = e else { panic!("{e:?}") };
    assert_eq!(s.code, 422);
    assert!(s.message.contains("size may only grow"), "{}", s.message);
    let grow = json!({"spec": {"size": 2}});
    widgets.patch("w1", &PatchParams::default(), &Patch::Merge(&grow)).await.unwrap();

    // While the CRD is terminating (w1 holds a finalizer), creates are refused.
    let hold = json!({"metadata": {"finalizers": ["example.com/hold"]}});
    widgets.patch("w1", &PatchParams::default(), &Patch::Merge(&hold)).await.unwrap();
    crds.delete("widgets.shop.example.com", &DeleteParams::default()).await.unwrap();
    let mut tries = 0;
    while condition("widgets.shop.example.com", "Terminating").await.map(|c| c.0).as_deref() != Some("True") {
        tries += 1;
        assert!(tries < 100, "widgets never reported Terminating");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let e = widgets.create(&PostParams::default(), &widget("w4", json!({}))).await.unwrap_err();
    let kube::Error::Api(s) = e else { panic!("{e:?}") };
    assert_eq!(
        (s.code, s.reason.as_str(), s.message.as_str()),
        (405, "MethodNotAllowed", "create not allowed while custom resource definition is terminating")
    );
    let release = json!({"metadata": {"finalizers": null}});
    widgets.patch("w1", &PatchParams::default(), &Patch::Merge(&release)).await.unwrap();
    let mut tries = 0;
    while crds.get_opt("widgets.shop.example.com").await.unwrap().is_some() {
        tries += 1;
        assert!(tries < 100, "widgets was never removed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The names are free now: gizmos takes them and is served.
    let mut tries = 0;
    while condition("gizmos.shop.example.com", "Established").await.map(|c| c.0).as_deref() != Some("True") {
        tries += 1;
        assert!(tries < 100, "gizmos never became Established");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gizmos.list(&ListParams::default()).await.unwrap().items.is_empty());
}
