//! Controllers and scheduler, proven with kubectl on simulated nodes: a Deployment
//! rolls out, scales, rolls a new template and back; a ReplicaSet replaces a deleted
//! pod; a pod too big for every node stays Pending as Unschedulable.

mod common;

use std::time::Duration;

use common::TestServer;
use rk::agent::simulate::{self, SimConfig};
use tokio_util::sync::CancellationToken;

async fn with_nodes(count: usize) -> (TestServer, CancellationToken) {
    with_nodes_on(TestServer::start().await, count)
}

fn with_nodes_on(s: TestServer, count: usize) -> (TestServer, CancellationToken) {
    let stop = CancellationToken::new();
    simulate_nodes(&s, "sim", count, "2", "4Gi", stop.clone());
    (s, stop)
}

/// Runs `count` simulated nodes `<prefix>-<i>` of that size against `s` until `stop`.
fn simulate_nodes(s: &TestServer, prefix: &str, count: usize, cpu: &str, memory: &str, stop: CancellationToken) {
    let cfg = SimConfig {
        count,
        prefix: prefix.into(),
        cpu: cpu.into(),
        memory: memory.into(),
        pods: 110,
        run_for: Duration::from_secs(1),
        cluster_cidr: "10.42.0.0/16".parse().unwrap(),
    };
    let yaml = s.running.kubeconfig.clone();
    tokio::spawn(async move { simulate::run(common::client_from_yaml(&yaml).await, cfg, stop).await });
}

/// Polls kubectl until `pred` holds on its output (or fails after 60 s).
async fn eventually(s: &TestServer, args: &[&str], pred: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    for _ in 0..300 {
        let out = s.kubectl(args).await;
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && pred(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("kubectl {args:?} never satisfied the condition; last output:\n{last}");
}

fn running_pods(out: &str) -> usize {
    out.lines().filter(|l| l.contains("Running") && !l.contains("Terminating")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_rolls_out_scales_and_undoes_on_simulated_nodes() {
    let (s, _stop) = with_nodes(3).await;
    eventually(&s, &["get", "nodes"], |o| o.matches(" Ready ").count() == 3).await;

    s.kubectl_ok(&["create", "deployment", "web", "--image=nginx:1.25", "--replicas=3"]).await;
    s.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=60s"]).await;
    let pods = s.kubectl_ok(&["get", "pods", "-l", "app=web", "-o", "wide"]).await;
    assert_eq!(running_pods(&pods), 3, "{pods}");
    let nodes: std::collections::HashSet<&str> =
        pods.lines().skip(1).filter_map(|l| l.split_whitespace().nth(6)).collect();
    assert_eq!(nodes.len(), 3, "spread over the three nodes: {pods}");
    let d = s.kubectl_ok(&["get", "deployment", "web"]).await;
    assert!(d.contains("3/3     3            3"), "{d}");

    // Scale up and back down.
    s.kubectl_ok(&["scale", "deployment/web", "--replicas=5"]).await;
    eventually(&s, &["get", "deployment", "web"], |o| o.contains("5/5")).await;
    s.kubectl_ok(&["scale", "deployment/web", "--replicas=3"]).await;
    eventually(&s, &["get", "pods", "-l", "app=web"], |o| running_pods(o) == 3 && o.lines().count() == 4).await;

    // A new template rolls out; undo brings the old one back.
    s.kubectl_ok(&["set", "image", "deployment/web", "nginx=nginx:1.27"]).await;
    s.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=60s"]).await;
    let rs = s.kubectl_ok(&["get", "rs", "-l", "app=web"]).await;
    assert_eq!(rs.lines().count(), 3, "old and new ReplicaSets: {rs}");
    let img =
        s.kubectl_ok(&["get", "deployment", "web", "-o", "jsonpath={.spec.template.spec.containers[0].image}"]).await;
    assert_eq!(img, "nginx:1.27");
    let history = s.kubectl_ok(&["rollout", "history", "deployment/web"]).await;
    assert!(history.contains("1 ") && history.contains("2 "), "{history}");
    s.kubectl_ok(&["rollout", "undo", "deployment/web"]).await;
    s.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=60s"]).await;
    let img =
        s.kubectl_ok(&["get", "deployment", "web", "-o", "jsonpath={.spec.template.spec.containers[0].image}"]).await;
    assert_eq!(img, "nginx:1.25");
    let pods =
        eventually(&s, &["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].spec.containers[0].image}"], |o| {
            o.split_whitespace().count() == 3 && o.split_whitespace().all(|i| i == "nginx:1.25")
        })
        .await;
    assert!(!pods.contains("1.27"));

    // Deleting a pod of the ReplicaSet brings a new one.
    let first = s.kubectl_ok(&["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[0].metadata.name}"]).await;
    s.kubectl_ok(&["delete", "pod", &first, "--wait=false"]).await;
    let after =
        eventually(&s, &["get", "pods", "-l", "app=web"], |o| running_pods(o) == 3 && !o.contains(&first)).await;
    assert!(!after.contains(&first));
    // A Service's Endpoints and EndpointSlices list exactly its ready pods.
    s.kubectl_ok(&["expose", "deployment", "web", "--port=80", "--target-port=8080"]).await;
    let ips = s.kubectl_ok(&["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].status.podIP}"]).await;
    let mut ips: Vec<&str> = ips.split_whitespace().collect();
    ips.sort();
    let eps = eventually(&s, &["get", "endpoints", "web", "-o", "jsonpath={.subsets[*].addresses[*].ip}"], |o| {
        o.split_whitespace().count() == 3
    })
    .await;
    let mut got: Vec<&str> = eps.split_whitespace().collect();
    got.sort();
    assert_eq!(got, ips);
    let wide = s.kubectl_ok(&["get", "endpoints", "web"]).await;
    assert!(wide.contains(":8080"), "{wide}");
    let slice = s
        .kubectl_ok(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "jsonpath={.items[0].endpoints[*].addresses[0]}",
        ])
        .await;
    let mut got: Vec<&str> = slice.split_whitespace().collect();
    got.sort();
    assert_eq!(got, ips);
    s.kubectl_ok(&["delete", "service", "web"]).await;
    eventually(&s, &["get", "endpoints,endpointslices", "-l", "app=web", "-o", "name"], |o| o.trim().is_empty()).await;

    // Deleting the owner deletes its dependents (background cascade), down to the pods;
    // orphaning leaves them.
    s.kubectl_ok(&["create", "deployment", "keep", "--image=nginx", "--replicas=2"]).await;
    s.kubectl_ok(&["rollout", "status", "deployment/keep", "--timeout=60s"]).await;
    s.kubectl_ok(&["delete", "deployment", "keep", "--cascade=orphan"]).await;
    s.kubectl_ok(&["delete", "deployment", "web"]).await;
    eventually(&s, &["get", "rs,pods", "-l", "app=web", "-o", "name"], |o| o.trim().is_empty()).await;
    let kept = eventually(&s, &["get", "rs,pods", "-l", "app=keep", "-o", "name"], |o| o.lines().count() == 3).await;
    assert!(kept.contains("replicaset.apps/keep-"), "{kept}");

    let events = s.kubectl_ok(&["get", "events"]).await;
    assert!(
        events.contains("ScalingReplicaSet") && events.contains("SuccessfulCreate") && events.contains("Scheduled"),
        "{events}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_too_big_for_every_node_stays_pending_as_unschedulable() {
    let (s, _stop) = with_nodes(2).await;
    eventually(&s, &["get", "nodes"], |o| o.matches(" Ready ").count() == 2).await;
    let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"big"},
      "spec":{"containers":[{"name":"c","image":"busybox","resources":{"requests":{"cpu":"16"}}}]}}"#;
    s.kubectl_stdin(&["create", "-f", "-"], Some(pod)).await;
    let cond = eventually(
        &s,
        &["get", "pod", "big", "-o", "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].reason}"],
        |o| o == "Unschedulable",
    )
    .await;
    assert_eq!(cond, "Unschedulable");
    let describe = s.kubectl_ok(&["describe", "pod", "big"]).await;
    assert!(describe.contains("0/2 nodes are available: 2 Insufficient cpu"), "{describe}");
    let get = s.kubectl_ok(&["get", "pod", "big"]).await;
    assert!(get.contains("Pending"), "{get}");

    // A ReplicationController keeps its replicas too.
    let rc = r#"{"apiVersion":"v1","kind":"ReplicationController","metadata":{"name":"old"},
      "spec":{"replicas":2,"selector":{"app":"old"},"template":{"metadata":{"labels":{"app":"old"}},
        "spec":{"containers":[{"name":"c","image":"nginx"}]}}}}"#;
    s.kubectl_stdin(&["create", "-f", "-"], Some(rc)).await;
    eventually(&s, &["get", "rc", "old"], |o| o.contains("old    2         2         2")).await;

    // It runs as soon as a node big enough joins.
    simulate_nodes(&s, "big", 1, "32", "64Gi", _stop.clone());
    let placed = eventually(&s, &["get", "pod", "big", "-o", "wide", "--no-headers"], |o| o.contains("Running")).await;
    assert!(placed.contains("big-0"), "{placed}");

    // A small pod is placed and runs.
    s.kubectl_ok(&["run", "small", "--image=busybox", "--restart=Never"]).await;
    eventually(&s, &["get", "pod", "small"], |o| o.contains("Running") || o.contains("Completed")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_nodes_turn_unknown_and_their_pods_are_evicted_after_toleration_seconds() {
    let s = TestServer::start_with(|c| c.node_monitor_grace = Duration::from_secs(3)).await;
    let (s, stop) = with_nodes_on(s, 2);
    eventually(&s, &["get", "nodes"], |o| o.matches(" Ready ").count() == 2).await;
    // Node IPAM gives each node its own /24.
    let cidrs = eventually(&s, &["get", "nodes", "-o", "jsonpath={.items[*].spec.podCIDR}"], |o| {
        o.split_whitespace().count() == 2
    })
    .await;
    let cidrs: std::collections::HashSet<&str> = cidrs.split_whitespace().collect();
    assert_eq!(cidrs.len(), 2, "distinct podCIDRs: {cidrs:?}");
    // Every namespace gets the default ServiceAccount and the root CA ConfigMap.
    s.kubectl_ok(&["create", "namespace", "team"]).await;
    eventually(&s, &["-n", "team", "get", "serviceaccount", "default"], |_| true).await;
    let ca = eventually(
        &s,
        &["-n", "team", "get", "configmap", "kube-root-ca.crt", "-o", "jsonpath={.data.ca\\.crt}"],
        |o| !o.is_empty(),
    )
    .await;
    assert!(ca.contains("BEGIN CERTIFICATE"));

    let short = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"short"},
      "spec":{"containers":[{"name":"c","image":"busybox"}],
              "tolerations":[{"key":"node.kubernetes.io/unreachable","operator":"Exists","effect":"NoExecute","tolerationSeconds":2}]}}"#;
    s.kubectl_stdin(&["create", "-f", "-"], Some(short)).await;
    s.kubectl_ok(&["run", "long", "--image=busybox"]).await;
    eventually(&s, &["get", "pods"], |o| running_pods(o) == 2).await;
    let tols = s.kubectl_ok(&["get", "pod", "long", "-o", "jsonpath={.spec.tolerations[*].tolerationSeconds}"]).await;
    assert_eq!(tols, "300 300", "DefaultTolerationSeconds");

    stop.cancel();
    eventually(&s, &["get", "nodes"], |o| o.matches("NotReady").count() == 2).await;
    let taints = s.kubectl_ok(&["get", "nodes", "-o", "jsonpath={.items[0].spec.taints[*].key}"]).await;
    assert!(taints.contains("node.kubernetes.io/unreachable"), "{taints}");
    eventually(&s, &["get", "pod", "short", "-o", "jsonpath={.metadata.deletionTimestamp}"], |o| !o.is_empty()).await;
    let long = s.kubectl_ok(&["get", "pod", "long", "-o", "jsonpath={.metadata.deletionTimestamp}"]).await;
    assert!(long.is_empty(), "a pod tolerating for 300 s stays for now");
    // Pods of a node that is gone are collected (pod GC passes every 20 s).
    s.kubectl_ok(&["delete", "nodes", "sim-0", "sim-1"]).await;
    eventually(&s, &["get", "pods", "-o", "name"], |o| o.trim().is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_complete_and_cordon_and_drain_work() {
    let (s, _stop) = with_nodes(2).await;
    eventually(&s, &["get", "nodes"], |o| o.matches(" Ready ").count() == 2).await;

    // A Job of 3 completions, 2 at a time, completes (simulated pods succeed after 1 s).
    let job = r#"{"apiVersion":"batch/v1","kind":"Job","metadata":{"name":"work"},
      "spec":{"completions":3,"parallelism":2,"template":{"spec":{"restartPolicy":"Never",
        "containers":[{"name":"c","image":"busybox","command":["true"]}]}}}}"#;
    s.kubectl_stdin(&["create", "-f", "-"], Some(job)).await;
    s.kubectl_ok(&["wait", "--for=condition=complete", "job/work", "--timeout=60s"]).await;
    let j = s.kubectl_ok(&["get", "job", "work"]).await;
    assert!(j.contains("Complete") && j.contains("3/3"), "{j}");
    let pods = s.kubectl_ok(&["get", "pods", "-l", "job-name=work", "--no-headers"]).await;
    assert_eq!(pods.lines().filter(|l| l.contains("Completed")).count(), 3, "{pods}");

    // An Indexed Job reports its completed indexes.
    s.kubectl_stdin(
        &["create", "-f", "-"],
        Some(
            &job.replace("\"work\"", "\"idx\"")
                .replace("\"parallelism\":2", "\"parallelism\":3,\"completionMode\":\"Indexed\""),
        ),
    )
    .await;
    s.kubectl_ok(&["wait", "--for=condition=complete", "job/idx", "--timeout=60s"]).await;
    let idx = s.kubectl_ok(&["get", "job", "idx", "-o", "jsonpath={.status.completedIndexes}"]).await;
    assert_eq!(idx, "0-2");

    // A DaemonSet runs one pod per node; a new template rolls over every node.
    let ds = r#"{"apiVersion":"apps/v1","kind":"DaemonSet","metadata":{"name":"agent"},
      "spec":{"selector":{"matchLabels":{"app":"agent"}},"template":{"metadata":{"labels":{"app":"agent"}},
        "spec":{"containers":[{"name":"c","image":"busybox:1"}]}}}}"#;
    s.kubectl_stdin(&["create", "-f", "-"], Some(ds)).await;
    s.kubectl_ok(&["rollout", "status", "daemonset/agent", "--timeout=60s"]).await;
    let wide = eventually(&s, &["get", "pods", "-l", "app=agent", "-o", "wide", "--no-headers"], |o| {
        o.lines().filter(|l| l.contains("Running")).count() == 2
    })
    .await;
    assert!(wide.contains(" sim-0 ") && wide.contains(" sim-1 "), "{wide}");
    let get = s.kubectl_ok(&["get", "ds", "agent"]).await;
    assert!(get.contains("agent   2         2         2       2            2"), "{get}");
    s.kubectl_ok(&["set", "image", "daemonset/agent", "c=busybox:2"]).await;
    s.kubectl_ok(&["rollout", "status", "daemonset/agent", "--timeout=60s"]).await;
    eventually(&s, &["get", "pods", "-l", "app=agent", "-o", "jsonpath={.items[*].spec.containers[0].image}"], |o| {
        o.split_whitespace().count() == 2 && o.split_whitespace().all(|i| i == "busybox:2")
    })
    .await;

    // cordon keeps new pods off a node; drain evicts what runs there.
    s.kubectl_ok(&["create", "deployment", "web", "--image=nginx", "--replicas=4"]).await;
    s.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=60s"]).await;
    s.kubectl_ok(&["cordon", "sim-0"]).await;
    let nodes = s.kubectl_ok(&["get", "nodes"]).await;
    assert!(nodes.contains("SchedulingDisabled"), "{nodes}");
    s.kubectl_ok(&["drain", "sim-0", "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=60s"]).await;
    let on0 = eventually(&s, &["get", "pods", "-l", "app=web", "-o", "wide", "--no-headers"], |o| {
        o.lines().filter(|l| l.contains("Running")).count() == 4
            && !o.lines().any(|l| l.contains("Running") && l.contains(" sim-0 "))
    })
    .await;
    assert!(!on0.lines().any(|l| l.contains("Running") && l.contains(" sim-0 ")), "{on0}");
    s.kubectl_ok(&["uncordon", "sim-0"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_creates_in_order_with_claims_and_scales_down_from_the_top() {
    let (s, _stop) = with_nodes(2).await;
    eventually(&s, &["get", "nodes"], |o| o.matches(" Ready ").count() == 2).await;
    let sts = r#"{"apiVersion":"apps/v1","kind":"StatefulSet","metadata":{"name":"web"},
      "spec":{"serviceName":"web","replicas":3,"selector":{"matchLabels":{"app":"web"}},
        "template":{"metadata":{"labels":{"app":"web"}},"spec":{"containers":[{"name":"c","image":"nginx:1"}]}},
        "volumeClaimTemplates":[{"metadata":{"name":"data"},
          "spec":{"accessModes":["ReadWriteOnce"],"resources":{"requests":{"storage":"1Gi"}}}}]}}"#;
    s.kubectl_stdin(&["create", "-f", "-"], Some(sts)).await;
    s.kubectl_ok(&["rollout", "status", "statefulset/web", "--timeout=60s"]).await;
    let pods = s.kubectl_ok(&["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].metadata.name}"]).await;
    assert_eq!(pods, "web-0 web-1 web-2");
    let host = s.kubectl_ok(&["get", "pod", "web-1", "-o", "jsonpath={.spec.hostname}.{.spec.subdomain}"]).await;
    assert_eq!(host, "web-1.web");
    let pvcs = s.kubectl_ok(&["get", "pvc", "-o", "jsonpath={.items[*].metadata.name}"]).await;
    assert_eq!(pvcs, "data-web-0 data-web-1 data-web-2");
    // Created in order: each pod's creation event after the one before.
    let events = s
        .kubectl_ok(&["get", "events", "--sort-by=.metadata.creationTimestamp", "-o", "jsonpath={.items[*].message}"])
        .await;
    let at = |p: &str| events.find(&format!("create Pod {p} ")).unwrap_or_else(|| panic!("no event for {p}: {events}"));
    assert!(at("web-0") < at("web-1") && at("web-1") < at("web-2"), "{events}");

    // A new template rolls from the top; scaling down removes the highest ordinals.
    s.kubectl_ok(&["set", "image", "statefulset/web", "c=nginx:2"]).await;
    s.kubectl_ok(&["rollout", "status", "statefulset/web", "--timeout=60s"]).await;
    eventually(&s, &["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].spec.containers[0].image}"], |o| {
        o == "nginx:2 nginx:2 nginx:2"
    })
    .await;
    s.kubectl_ok(&["scale", "statefulset/web", "--replicas=1"]).await;
    eventually(&s, &["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].metadata.name}"], |o| o == "web-0")
        .await;
    let pvcs = s.kubectl_ok(&["get", "pvc", "-o", "jsonpath={.items[*].metadata.name}"]).await;
    assert_eq!(pvcs, "data-web-0 data-web-1 data-web-2", "claims are kept");
}

/// Waits up to the next minute boundary: schedules have minute granularity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cronjob_creates_jobs_on_schedule() {
    let (s, _stop) = with_nodes(1).await;
    eventually(&s, &["get", "nodes"], |o| o.matches(" Ready ").count() == 1).await;
    s.kubectl_ok(&["create", "cronjob", "tick", "--image=busybox", "--schedule=* * * * *", "--", "true"]).await;
    let mut jobs = String::new();
    for _ in 0..150 {
        jobs = s.kubectl_ok(&["get", "jobs", "-o", "jsonpath={.items[*].metadata.name}"]).await;
        if !jobs.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(jobs.starts_with("tick-"), "a Job was created on schedule: {jobs:?}");
    s.kubectl_ok(&["wait", "--for=condition=complete", &format!("job/{jobs}"), "--timeout=60s"]).await;
    let last = eventually(
        &s,
        &["get", "cronjob", "tick", "-o", "jsonpath={.status.lastScheduleTime} {.status.lastSuccessfulTime}"],
        |o| o.split_whitespace().count() == 2,
    )
    .await;
    assert!(last.contains('T'), "{last}");
    let events = s.kubectl_ok(&["get", "events", "--field-selector", "involvedObject.kind=CronJob"]).await;
    assert!(events.contains("SuccessfulCreate"), "{events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_respects_pod_disruption_budgets() {
    let (s, _stop) = with_nodes(2).await;
    eventually(&s, &["get", "nodes"], |o| o.matches(" Ready ").count() == 2).await;
    s.kubectl_ok(&["create", "deployment", "db", "--image=postgres", "--replicas=2"]).await;
    s.kubectl_ok(&["rollout", "status", "deployment/db", "--timeout=60s"]).await;
    s.kubectl_ok(&["create", "pdb", "db", "--selector=app=db", "--min-available=2"]).await;
    eventually(&s, &["get", "pdb", "db"], |o| o.contains("db     2               N/A               0 ")).await;
    let out = s.kubectl(&["drain", "sim-0", "--timeout=3s"]).await;
    assert!(!out.status.success(), "drain must not break the budget");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("disruption budget"), "{err}");
    s.kubectl_ok(&["uncordon", "sim-0"]).await;

    s.kubectl_ok(&["patch", "pdb", "db", "--type=merge", "-p", r#"{"spec":{"minAvailable":1}}"#]).await;
    eventually(&s, &["get", "pdb", "db"], |o| o.contains("db     1               N/A               1 ")).await;
    s.kubectl_ok(&["drain", "sim-0", "--timeout=60s"]).await;
}

/// `kubectl apply -f -` that must succeed.
async fn apply(s: &TestServer, text: &str) {
    let out = s.kubectl_stdin(&["apply", "-f", "-"], Some(text)).await;
    assert!(out.status.success(), "kubectl apply failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Pods of `app` per node, from `kubectl get pods -o wide`.
fn pods_per_node(out: &str, app: &str) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for l in out.lines().filter(|l| l.starts_with(app) && l.contains("Running")) {
        if let Some(node) = l.split_whitespace().nth(6) {
            *m.entry(node.to_string()).or_default() += 1;
        }
    }
    m
}

/// The one Pending pod of `app` (as `pod/<name>`), once there is exactly one.
async fn the_pending_pod(s: &TestServer, app: &str) -> String {
    let label = format!("app={app}");
    let out =
        eventually(s, &["get", "pods", "-l", &label, "--field-selector=status.phase=Pending", "-o", "name"], |o| {
            o.lines().count() == 1
        })
        .await;
    out.trim().to_string()
}

/// The scheduler's message on a pod's `PodScheduled` condition, once there is one.
async fn scheduling_message(s: &TestServer, pod: &str) -> String {
    eventually(s, &["get", pod, "-o", "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].message}"], |o| {
        !o.is_empty()
    })
    .await
}

fn deployment(name: &str, replicas: u32, spec_extra: &str, cpu: &str) -> String {
    format!(
        r#"{{"apiVersion":"apps/v1","kind":"Deployment","metadata":{{"name":"{name}"}},
          "spec":{{"replicas":{replicas},"selector":{{"matchLabels":{{"app":"{name}"}}}},
            "template":{{"metadata":{{"labels":{{"app":"{name}"}}}},
              "spec":{{{spec_extra}"containers":[{{"name":"c","image":"busybox",
                "resources":{{"requests":{{"cpu":"{cpu}"}}}}}}]}}}}}}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_honours_pod_affinity_anti_affinity_and_topology_spread() {
    let (s, _stop) = with_nodes(3).await;
    eventually(&s, &["get", "nodes"], |o| o.matches(" Ready ").count() == 3).await;
    for (node, zone) in [("sim-0", "a"), ("sim-1", "a"), ("sim-2", "b")] {
        s.kubectl_ok(&["label", "node", node, &format!("topology.kubernetes.io/zone={zone}")]).await;
    }

    // Required anti-affinity per host: three run, the fourth has nowhere to go.
    let anti = r#""affinity":{"podAntiAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":[
        {"labelSelector":{"matchLabels":{"app":"solo"}},"topologyKey":"kubernetes.io/hostname"}]}},"#;
    apply(&s, &deployment("solo", 4, anti, "10m")).await;
    let wide = eventually(&s, &["get", "pods", "-o", "wide", "-l", "app=solo"], |o| running_pods(o) == 3).await;
    assert_eq!(pods_per_node(&wide, "solo").values().max(), Some(&1), "{wide}");
    let pending = the_pending_pod(&s, "solo").await;
    let msg = scheduling_message(&s, &pending).await;
    assert_eq!(
        msg,
        "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules. preemption: 0/3 nodes are \
         available: 3 No preemption victims found for incoming pod.."
    );

    // Required affinity by zone: a pod that wants to be with the database goes to the
    // database's zone, b, which has one node.
    let db = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"db","labels":{"role":"db"}},
      "spec":{"nodeSelector":{"kubernetes.io/hostname":"sim-2"},"containers":[{"name":"c","image":"busybox"}]}}"#;
    apply(&s, db).await;
    let near = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"near"},
      "spec":{"affinity":{"podAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":[
        {"labelSelector":{"matchLabels":{"role":"db"}},"topologyKey":"topology.kubernetes.io/zone"}]}},
        "containers":[{"name":"c","image":"busybox"}]}}"#;
    apply(&s, near).await;
    let node = eventually(&s, &["get", "pod", "near", "-o", "jsonpath={.spec.nodeName}"], |o| !o.is_empty()).await;
    assert_eq!(node, "sim-2");
    // Affinity to pods that exist nowhere: Pending, in kube-scheduler's words.
    let lonely = near.replace("\"near\"", "\"lonely\"").replace("\"db\"", "\"cache\"");
    apply(&s, &lonely).await;
    let msg = scheduling_message(&s, "pod/lonely").await;
    assert!(msg.starts_with("0/3 nodes are available: 3 node(s) didn't match pod affinity rules."), "{msg}");

    // Spread over zones with maxSkew 1: zone b (one node) gets as many as zone a (two).
    let spread = r#""topologySpreadConstraints":[{"maxSkew":1,"topologyKey":"topology.kubernetes.io/zone",
        "whenUnsatisfiable":"DoNotSchedule","labelSelector":{"matchLabels":{"app":"spread"}}}],"#;
    apply(&s, &deployment("spread", 4, spread, "10m")).await;
    let wide = eventually(&s, &["get", "pods", "-o", "wide", "-l", "app=spread"], |o| running_pods(o) == 4).await;
    let per = pods_per_node(&wide, "spread");
    assert_eq!(per.get("sim-2"), Some(&2), "zone b holds half: {wide}");
    // Preferred node affinity outweighs the busier node's lower resource score.
    let prefers = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"prefers-b"},
      "spec":{"affinity":{"nodeAffinity":{"preferredDuringSchedulingIgnoredDuringExecution":[{"weight":50,
        "preference":{"matchExpressions":[{"key":"topology.kubernetes.io/zone","operator":"In","values":["b"]}]}}]}},
        "containers":[{"name":"c","image":"busybox"}]}}"#;
    apply(&s, prefers).await;
    let node = eventually(&s, &["get", "pod", "prefers-b", "-o", "jsonpath={.spec.nodeName}"], |o| !o.is_empty()).await;
    assert_eq!(node, "sim-2");
    // A node without the key cannot take part.
    s.kubectl_ok(&["label", "node", "sim-2", "topology.kubernetes.io/zone-"]).await;
    s.kubectl_ok(&["label", "node", "sim-0", "sim-1", "topology.kubernetes.io/zone-"]).await;
    s.kubectl_ok(&["scale", "deployment", "spread", "--replicas=5"]).await;
    let pending = the_pending_pod(&s, "spread").await;
    let msg = scheduling_message(&s, &pending).await;
    assert!(msg.contains("3 node(s) didn't match pod topology spread constraints (missing required label)"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_higher_priority_pod_preempts_and_profiles_and_backoff_come_from_the_config_file() {
    let cfg = rk::server::scheduler::SchedulerConfig::parse(
        "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\npodMaxBackoffSeconds: 2\n\
         profiles:\n- schedulerName: default-scheduler\n- schedulerName: batch-scheduler\n",
    )
    .unwrap();
    let s = TestServer::start_with(|c| c.scheduler_config = cfg).await;
    let (s, _stop) = with_nodes_on(s, 2);
    eventually(&s, &["get", "nodes"], |o| o.matches(" Ready ").count() == 2).await;

    // Two nodes of 2 CPUs, each full with one 1500m pod.
    apply(&s, &deployment("filler", 2, "", "1500m")).await;
    eventually(&s, &["get", "pods", "-l", "app=filler"], |o| running_pods(o) == 2).await;

    // Without priority: no victims.
    apply(&s, &deployment("plain", 1, "", "1500m")).await;
    let pending = the_pending_pod(&s, "plain").await;
    let msg = scheduling_message(&s, &pending).await;
    assert_eq!(
        msg,
        "0/2 nodes are available: 2 Insufficient cpu. preemption: 0/2 nodes are available: 2 No preemption \
         victims found for incoming pod.."
    );
    s.kubectl_ok(&["delete", "deployment", "plain"]).await;

    // preemptionPolicy Never: waits rather than evicts.
    let classes = r#"{"apiVersion":"v1","kind":"List","items":[
      {"apiVersion":"scheduling.k8s.io/v1","kind":"PriorityClass","metadata":{"name":"high"},"value":1000},
      {"apiVersion":"scheduling.k8s.io/v1","kind":"PriorityClass","metadata":{"name":"polite"},"value":1000,
       "preemptionPolicy":"Never"}]}"#;
    apply(&s, classes).await;
    let pod = |name: &str, class: &str| {
        format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}"}},
              "spec":{{"priorityClassName":"{class}","containers":[{{"name":"c","image":"busybox",
                "resources":{{"requests":{{"cpu":"1500m"}}}}}}]}}}}"#
        )
    };
    apply(&s, &pod("polite", "polite")).await;
    let msg = scheduling_message(&s, "pod/polite").await;
    assert!(msg.ends_with("preemption: not eligible due to preemptionPolicy=Never."), "{msg}");
    s.kubectl_ok(&["delete", "pod", "polite"]).await;

    // Priority 1000 evicts one filler pod, is nominated, and runs there; the filler's
    // replacement (priority 0) is the one left Pending.
    apply(&s, &pod("vip", "high")).await;
    let node = eventually(&s, &["get", "pod", "vip", "-o", "jsonpath={.status.phase} {.spec.nodeName}"], |o| {
        o.starts_with("Running ")
    })
    .await;
    let node = node.split_whitespace().nth(1).unwrap().to_string();
    let nominated = s.kubectl_ok(&["get", "pod", "vip", "-o", "jsonpath={.status.nominatedNodeName}"]).await;
    assert_eq!(nominated, node);
    let events =
        eventually(&s, &["get", "events", "--field-selector", "reason=Preempted"], |o| o.contains("Preempted by pod"))
            .await;
    assert!(events.contains(&format!("on node {node}")), "{events}");
    let filler = eventually(&s, &["get", "pods", "-l", "app=filler", "--no-headers"], |o| {
        running_pods(o) == 1 && o.contains("Pending")
    })
    .await;
    assert_eq!(filler.lines().count(), 2, "{filler}");

    // A second profile from the config file schedules the pods that name it, and its
    // events say so.
    let batch = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"batch"},
      "spec":{"schedulerName":"batch-scheduler","containers":[{"name":"c","image":"busybox"}]}}"#;
    apply(&s, batch).await;
    eventually(&s, &["get", "pod", "batch"], |o| o.contains("Running")).await;
    let describe = s.kubectl_ok(&["describe", "pod", "batch"]).await;
    assert!(describe.contains("batch-scheduler  Successfully assigned default/batch"), "{describe}");
    // A pod for a scheduler nobody runs stays Pending, untouched.
    let other = batch.replace("\"batch\"", "\"other\"").replace("batch-scheduler", "someone-else");
    apply(&s, &other).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cond = s.kubectl_ok(&["get", "pod", "other", "-o", "jsonpath={.spec.nodeName}{.status.conditions}"]).await;
    assert_eq!(cond, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_rollout_exceeds_its_progress_deadline_and_recovers() {
    let (s, _stop) = with_nodes(1).await;
    eventually(&s, &["get", "nodes"], |o| o.matches(" Ready ").count() == 1).await;
    let slow =
        deployment("slow", 2, "", "64").replace(r#""replicas":2,"#, r#""replicas":2,"progressDeadlineSeconds":2,"#);
    apply(&s, &slow).await;
    let reason = eventually(
        &s,
        &["get", "deployment", "slow", "-o", "jsonpath={.status.conditions[?(@.type==\"Progressing\")].reason}"],
        |o| o == "ProgressDeadlineExceeded",
    )
    .await;
    assert_eq!(reason, "ProgressDeadlineExceeded");
    let out = s.kubectl(&["rollout", "status", "deployment/slow", "--timeout=20s"]).await;
    assert!(!out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), "error: deployment \"slow\" exceeded its progress deadline\n");
    let describe = s.kubectl_ok(&["describe", "deployment", "slow"]).await;
    assert!(describe.contains("Progressing    False   ProgressDeadlineExceeded"), "{describe}");
    // A template that fits rolls out, and the condition says so.
    s.kubectl_ok(&["set", "resources", "deployment/slow", "--requests=cpu=10m"]).await;
    s.kubectl_ok(&["rollout", "status", "deployment/slow", "--timeout=60s"]).await;
    let cond = s
        .kubectl_ok(&[
            "get",
            "deployment",
            "slow",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Progressing\")].status}/{.status.conditions[?(@.type==\"Progressing\")].reason}",
        ])
        .await;
    assert_eq!(cond, "True/NewReplicaSetAvailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_conditions_and_cordon_become_taints() {
    let (s, _stop) = with_nodes(2).await;
    eventually(&s, &["get", "nodes"], |o| o.matches(" Ready ").count() == 2).await;
    let taints = |node: &'static str| {
        let s = &s;
        async move {
            s.kubectl_ok(&["get", "node", node, "-o", "jsonpath={range .spec.taints[*]}{.key}:{.effect} {end}"]).await
        }
    };
    let pressure = |status: &str| {
        format!(
            r#"{{"status":{{"conditions":[{{"type":"MemoryPressure","status":"{status}","reason":"KubeletHasInsufficientMemory",
              "message":"kubelet has insufficient memory available"}}]}}}}"#
        )
    };
    // What a kubelet under memory pressure reports (the agent's own readings are unit-tested).
    s.kubectl_ok(&["patch", "node", "sim-0", "--subresource=status", "-p", &pressure("True")]).await;
    eventually(&s, &["get", "node", "sim-0", "-o", "jsonpath={.spec.taints[*].key}"], |o| {
        o.contains("node.kubernetes.io/memory-pressure")
    })
    .await;
    assert_eq!(taints("sim-0").await.trim(), "node.kubernetes.io/memory-pressure:NoSchedule");
    // New pods go to the other node.
    apply(&s, &deployment("fresh", 3, "", "10m")).await;
    let wide = eventually(&s, &["get", "pods", "-o", "wide", "-l", "app=fresh"], |o| running_pods(o) == 3).await;
    assert_eq!(pods_per_node(&wide, "fresh").keys().collect::<Vec<_>>(), ["sim-1"], "{wide}");
    s.kubectl_ok(&["patch", "node", "sim-0", "--subresource=status", "-p", &pressure("False")]).await;
    eventually(&s, &["get", "node", "sim-0", "-o", "jsonpath={.spec.taints}"], |o| o.is_empty()).await;

    // A cordoned node carries the unschedulable taint, as in Kubernetes.
    s.kubectl_ok(&["cordon", "sim-1"]).await;
    eventually(&s, &["get", "node", "sim-1", "-o", "jsonpath={.spec.taints[*].key}"], |o| {
        o == "node.kubernetes.io/unschedulable"
    })
    .await;
    let describe = s.kubectl_ok(&["describe", "node", "sim-1"]).await;
    assert!(describe.contains("Taints:             node.kubernetes.io/unschedulable:NoSchedule"), "{describe}");
    s.kubectl_ok(&["uncordon", "sim-1"]).await;
    eventually(&s, &["get", "node", "sim-1", "-o", "jsonpath={.spec.taints}"], |o| o.is_empty()).await;
}
