//! Authentication and authorization, proven with real clients (kube-rs over HTTPS and
//! kubectl): a matrix of users over every verb of a few resources, `kubectl auth
//! can-i` agreeing with what the API then does, service-account tokens (TokenRequest,
//! bound to a pod, dead once it is gone), the Node authorizer, impersonation and
//! RBAC escalation checks.

mod common;

use common::{TestServer, client_from_yaml};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec};
use kube::api::{Api, PostParams};
use rk::server::tls::{self, CertKey};
use serde_json::{Value, json};

fn server_url(s: &TestServer) -> String {
    format!("https://{}", s.running.addr)
}

/// A kubeconfig (JSON, which is YAML) for `user` (a kubeconfig `user` entry).
fn kubeconfig(s: &TestServer, user: Value) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(&s.running.identity.ca.cert_pem);
    json!({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": server_url(s), "certificate-authority-data": ca}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
    })
    .to_string()
}

fn cert_user(c: &CertKey) -> Value {
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD;
    json!({"client-certificate-data": b.encode(&c.cert_pem), "client-key-data": b.encode(&c.key_pem)})
}

async fn cert_client(s: &TestServer, c: &CertKey) -> kube::Client {
    client_from_yaml(&kubeconfig(s, cert_user(c))).await
}

async fn token_client(s: &TestServer, token: &str) -> kube::Client {
    client_from_yaml(&kubeconfig(s, json!({"token": token}))).await
}

/// The HTTP status of one request.
async fn status(c: &kube::Client, method: &str, path: &str, body: Option<&Value>) -> u16 {
    let ct = if method == "PATCH" { "application/merge-patch+json" } else { "application/json" };
    common::code(c, method, path, ct, body.map(|v| serde_json::to_vec(v).unwrap()).unwrap_or_default()).await
}

/// One resource of the matrix: its collection path, an existing object's name, and a
/// new object to create.
struct Res {
    group: &'static str,
    plural: &'static str,
    namespaced: bool,
    collection: String,
    name: &'static str,
    new: Value,
}

fn resources() -> Vec<Res> {
    vec![
        Res {
            group: "",
            plural: "configmaps",
            namespaced: true,
            collection: "/api/v1/namespaces/team/configmaps".into(),
            name: "c1",
            new: json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c-new"}}),
        },
        Res {
            group: "apps",
            plural: "deployments",
            namespaced: true,
            collection: "/apis/apps/v1/namespaces/team/deployments".into(),
            name: "d1",
            new: json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d-new"},
                        "spec": {"selector": {"matchLabels": {"a": "b"}},
                                 "template": {"metadata": {"labels": {"a": "b"}},
                                              "spec": {"containers": [{"name": "c", "image": "x"}]}}}}),
        },
        Res {
            group: "",
            plural: "secrets",
            namespaced: true,
            collection: "/api/v1/namespaces/team/secrets".into(),
            name: "s1",
            new: json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s-new"}}),
        },
        Res {
            group: "rbac.authorization.k8s.io",
            plural: "clusterroles",
            namespaced: false,
            collection: "/apis/rbac.authorization.k8s.io/v1/clusterroles".into(),
            name: "custom",
            new: json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "r-new"}}),
        },
    ]
}

const VERBS: &[&str] = &["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"];

/// The status of `verb` on `r` for a client.
async fn attempt(c: &kube::Client, r: &Res, verb: &str) -> u16 {
    let one = format!("{}/{}", r.collection, r.name);
    let mut existing = r.new.clone();
    existing["metadata"]["name"] = json!(r.name);
    match verb {
        "get" => status(c, "GET", &one, None).await,
        "list" => status(c, "GET", &r.collection, None).await,
        "watch" => status(c, "GET", &format!("{}?watch=1&timeoutSeconds=1", r.collection), None).await,
        "create" => status(c, "POST", &format!("{}?dryRun=All", r.collection), Some(&r.new)).await,
        "update" => status(c, "PUT", &format!("{one}?dryRun=All"), Some(&existing)).await,
        "patch" => {
            status(c, "PATCH", &format!("{one}?dryRun=All"), Some(&json!({"metadata": {"labels": {"x": "y"}}}))).await
        }
        "delete" => status(c, "DELETE", &format!("{one}?dryRun=All"), None).await,
        "deletecollection" => status(c, "DELETE", &format!("{}?labelSelector=none%3Dhere", r.collection), None).await,
        v => panic!("verb {v}"),
    }
}

async fn ssar(c: &kube::Client, r: &Res, verb: &str) -> bool {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(r.group.into()),
                resource: Some(r.plural.into()),
                namespace: r.namespaced.then(|| "team".to_string()),
                name: (!matches!(verb, "list" | "watch" | "create" | "deletecollection")).then(|| r.name.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let out = Api::<SelfSubjectAccessReview>::all(c.clone()).create(&PostParams::default(), &review).await.unwrap();
    out.status.unwrap().allowed
}

async fn setup(s: &TestServer) {
    s.kubectl_ok(&["create", "namespace", "team"]).await;
    s.kubectl_ok(&["-n", "team", "create", "configmap", "c1", "--from-literal=a=b"]).await;
    s.kubectl_ok(&["-n", "team", "create", "secret", "generic", "s1", "--from-literal=password=hunter2"]).await;
    s.kubectl_ok(&["-n", "team", "create", "deployment", "d1", "--image=x", "--replicas=0"]).await;
    s.kubectl_ok(&["create", "clusterrole", "custom", "--verb=get", "--resource=pods"]).await;
    s.kubectl_ok(&["-n", "team", "create", "rolebinding", "jane-view", "--clusterrole=view", "--user=jane"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authn_authz_matrix_and_can_i() {
    let s = TestServer::api_only().await;
    setup(&s).await;
    let ca = &s.running.identity.ca;
    let admin = s.client().await;
    let jane = cert_client(&s, &tls::issue_client_cert(ca, "jane", &["devs"]).unwrap()).await;
    let nobody = client_from_yaml(&kubeconfig(&s, json!({}))).await;
    let foreign_ca = tls::foreign_ca().unwrap();
    let foreign =
        cert_client(&s, &tls::issue_client_cert(&foreign_ca, "system:admin", &["system:masters"]).unwrap()).await;
    let expired =
        cert_client(&s, &tls::issue_client_cert_for_days(ca, "system:admin", &["system:masters"], -1).unwrap()).await;
    let garbage = token_client(&s, "not-a-token").await;
    let forged = token_client(&s, "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln").await;
    // The token of a service account that has since been deleted.
    s.kubectl_ok(&["-n", "team", "create", "serviceaccount", "gone"]).await;
    let t = s.kubectl_ok(&["-n", "team", "create", "token", "gone"]).await;
    s.kubectl_ok(&["-n", "team", "delete", "serviceaccount", "gone"]).await;
    let deleted_sa = token_client(&s, t.trim()).await;

    let unauthenticated = [
        ("no credentials", &nobody),
        ("a certificate from another CA", &foreign),
        ("an expired certificate", &expired),
        ("a bad bearer token", &garbage),
        ("a forged JWT", &forged),
        ("the token of a deleted service account", &deleted_sa),
    ];
    for r in resources() {
        for verb in VERBS {
            for (who, c) in &unauthenticated {
                assert_eq!(attempt(c, &r, verb).await, 401, "{who}: {verb} {}", r.plural);
            }
            let code = attempt(&admin, &r, verb).await;
            assert!(!matches!(code, 401 | 403), "admin: {verb} {} gave {code}", r.plural);
            // jane views the team namespace: reads of what `view` covers, nothing else.
            let code = attempt(&jane, &r, verb).await;
            let may = r.namespaced && r.plural != "secrets" && matches!(*verb, "get" | "list" | "watch");
            if may {
                assert!(!matches!(code, 401 | 403), "jane: {verb} {} gave {code}", r.plural);
            } else {
                assert_eq!(code, 403, "jane: {verb} {}", r.plural);
            }
            // What the API does is what SelfSubjectAccessReview (kubectl auth can-i) says.
            assert_eq!(ssar(&jane, &r, verb).await, code != 403, "can-i for jane: {verb} {}", r.plural);
        }
    }
    for (who, c) in &unauthenticated {
        assert_eq!(status(c, "GET", "/api", None).await, 401, "{who} reads /api");
    }
    // Anonymous requests reach only the public paths (a bad token is a 401 anywhere).
    assert_eq!(status(&nobody, "GET", "/healthz", None).await, 200);
    assert_eq!(status(&nobody, "GET", "/version", None).await, 200);
    assert_eq!(status(&garbage, "GET", "/healthz", None).await, 401);
    assert_eq!(status(&jane, "GET", "/apis", None).await, 200, "discovery is for everyone authenticated");

    // kubectl auth can-i, through impersonation by the admin, agrees.
    for (args, want) in [
        (vec!["get", "configmaps", "-n", "team"], "yes"),
        (vec!["delete", "configmaps", "-n", "team"], "no"),
        (vec!["get", "secrets", "-n", "team"], "no"),
        (vec!["list", "deployments.apps", "-n", "team"], "yes"),
        (vec!["list", "deployments.apps", "-n", "default"], "no"),
    ] {
        let mut a = vec!["auth", "can-i", "--as", "jane"];
        a.extend(args.iter().copied());
        let out = s.kubectl(&a).await;
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), want, "kubectl {a:?}");
    }
    let list = s.kubectl_ok(&["auth", "can-i", "--list", "--as", "jane", "-n", "team"]).await;
    assert!(list.contains("configmaps") && list.contains("[get list watch]"), "{list}");
    let whoami = s.kubectl_ok(&["auth", "whoami", "--as", "jane", "--as-group", "devs"]).await;
    assert!(whoami.contains("jane") && whoami.contains("devs"), "{whoami}");
    // jane may not impersonate.
    let jane_kc = s.dir.path().join("jane.yaml");
    std::fs::write(&jane_kc, kubeconfig(&s, cert_user(&tls::issue_client_cert(ca, "jane", &[]).unwrap()))).unwrap();
    let kc = jane_kc.to_str().unwrap();
    let out = s.kubectl(&["--kubeconfig", kc, "get", "pods", "-n", "team", "--as", "system:admin"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"users "system:admin" is forbidden: User "jane" cannot impersonate resource "users" in API group "" at the cluster scope"#),
        "{err}"
    );
    let out = s.kubectl(&["--kubeconfig", kc, "get", "secrets", "-n", "team"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"secrets is forbidden: User "jane" cannot list resource "secrets" in API group "" in the namespace "team""#),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_tokens_nodes_and_escalation() {
    let s = TestServer::api_only().await;
    setup(&s).await;
    let ca = &s.running.identity.ca;

    // A token bound to a pod works while the pod lives, and not after.
    s.kubectl_ok(&["-n", "team", "create", "serviceaccount", "robot"]).await;
    s.kubectl_ok(&[
        "-n",
        "team",
        "create",
        "rolebinding",
        "robot-view",
        "--clusterrole=view",
        "--serviceaccount=team:robot",
    ])
    .await;
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "team"},
                     "spec": {"nodeName": "node-b", "serviceAccountName": "robot",
                              "containers": [{"name": "c", "image": "x", "envFrom": [{"secretRef": {"name": "s1"}}]}]}});
    // The account's pull secrets go to its pods (ServiceAccount admission).
    s.kubectl_ok(&[
        "-n",
        "team",
        "patch",
        "serviceaccount",
        "robot",
        "-p",
        r#"{"imagePullSecrets":[{"name":"regcred"}]}"#,
    ])
    .await;
    s.kubectl_stdin(&["create", "-f", "-"], Some(&pod.to_string())).await;
    let pulls =
        s.kubectl_ok(&["-n", "team", "get", "pod", "p", "-o", "jsonpath={.spec.imagePullSecrets[*].name}"]).await;
    assert_eq!(pulls, "regcred");
    let token = s
        .kubectl_ok(&[
            "-n",
            "team",
            "create",
            "token",
            "robot",
            "--bound-object-kind=Pod",
            "--bound-object-name=p",
            "--duration=15m",
        ])
        .await;
    let robot = token_client(&s, token.trim()).await;
    assert_eq!(status(&robot, "GET", "/api/v1/namespaces/team/configmaps/c1", None).await, 200);
    assert_eq!(status(&robot, "GET", "/api/v1/namespaces/team/secrets/s1", None).await, 403);
    // TokenReview, as the admin: the token's user, with the pod it is bound to.
    let review =
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token.trim()}});
    let out = s.kubectl_stdin(&["create", "-o", "json", "-f", "-"], Some(&review.to_string())).await;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"]["authenticated"], json!(true), "{v}");
    assert_eq!(v["status"]["user"]["username"], json!("system:serviceaccount:team:robot"));
    assert_eq!(v["status"]["user"]["extra"]["authentication.kubernetes.io/pod-name"], json!(["p"]));
    // Too short a token is refused with the upstream message.
    let out = s.kubectl(&["-n", "team", "create", "token", "robot", "--duration=1m"]).await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("may not specify a duration less than 10 minutes"));

    // Nodes: node-b reads the Secret its pod uses; node-a does not, nor writes node-b.
    for n in ["node-a", "node-b"] {
        s.kubectl_stdin(
            &["create", "-f", "-"],
            Some(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}}).to_string()),
        )
        .await;
    }
    let node_a = cert_client(&s, &tls::issue_client_cert(ca, "system:node:node-a", &["system:nodes"]).unwrap()).await;
    let node_b = cert_client(&s, &tls::issue_client_cert(ca, "system:node:node-b", &["system:nodes"]).unwrap()).await;
    assert_eq!(status(&node_b, "GET", "/api/v1/namespaces/team/secrets/s1", None).await, 200);
    assert_eq!(status(&node_a, "GET", "/api/v1/namespaces/team/secrets/s1", None).await, 403);
    assert_eq!(status(&node_b, "GET", "/api/v1/namespaces/team/secrets", None).await, 403, "no listing Secrets");
    assert_eq!(status(&node_a, "GET", "/api/v1/namespaces/team/configmaps/c1", None).await, 403);
    let label = json!({"metadata": {"labels": {"x": "y"}}});
    assert_eq!(status(&node_a, "PATCH", "/api/v1/nodes/node-b", Some(&label)).await, 403);
    assert_eq!(status(&node_a, "PATCH", "/api/v1/nodes/node-b/status", Some(&label)).await, 403);
    assert_eq!(status(&node_a, "PATCH", "/api/v1/nodes/node-a", Some(&label)).await, 200);
    assert_eq!(status(&node_a, "GET", "/api/v1/nodes/node-b", None).await, 200, "nodes read other Nodes");
    assert_eq!(status(&node_a, "PATCH", "/api/v1/namespaces/team/pods/p/status", Some(&label)).await, 403);
    assert_eq!(status(&node_b, "PATCH", "/api/v1/namespaces/team/pods/p/status", Some(&label)).await, 200);
    // NodeRestriction: no role labels or taint changes on itself; only mirror pods,
    // bound to itself and using no Secrets.
    let role = json!({"metadata": {"labels": {"node-role.kubernetes.io/control-plane": "true"}}});
    assert_eq!(status(&node_a, "PATCH", "/api/v1/nodes/node-a", Some(&role)).await, 403);
    let zone = json!({"metadata": {"labels": {"topology.kubernetes.io/zone": "z1", "node.kubernetes.io/x": "1"}}});
    assert_eq!(status(&node_a, "PATCH", "/api/v1/nodes/node-a", Some(&zone)).await, 200);
    let taint = json!({"spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]}});
    assert_eq!(status(&node_a, "PATCH", "/api/v1/nodes/node-a", Some(&taint)).await, 403);
    let mirror = |node: &str, extra: Value| {
        let mut p = json!({"apiVersion": "v1", "kind": "Pod",
                           "metadata": {"name": format!("static-{node}"), "annotations": {"kubernetes.io/config.mirror": "h"}},
                           "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]}});
        if let Some(v) = extra.get("volumes") {
            p["spec"]["volumes"] = v.clone();
        }
        if extra.get("plain").is_some() {
            p["metadata"]["annotations"] = json!({});
        }
        p
    };
    let pods = "/api/v1/namespaces/team/pods";
    assert_eq!(status(&node_a, "POST", pods, Some(&mirror("node-a", json!({})))).await, 201);
    assert_eq!(status(&node_a, "POST", pods, Some(&mirror("node-b", json!({})))).await, 403);
    assert_eq!(status(&node_a, "POST", pods, Some(&mirror("node-a", json!({"plain": true})))).await, 403);
    let secret_vol = json!({"volumes": [{"name": "v", "secret": {"secretName": "s1"}}]});
    let mut with_secret = mirror("node-a", secret_vol);
    with_secret["metadata"]["name"] = json!("static-s");
    assert_eq!(status(&node_a, "POST", pods, Some(&with_secret)).await, 403);
    let admin = s.client().await;
    let r = admin
        .request_text(
            http::Request::post(pods)
                .header("content-type", "application/json")
                .header("impersonate-user", "system:node:node-a")
                .header("impersonate-group", "system:nodes")
                .body(serde_json::to_vec(&mirror("node-a", json!({"plain": true}))).unwrap())
                .unwrap(),
        )
        .await
        .unwrap_err();
    assert!(
        r.to_string().contains(
            r#"pod does not have "kubernetes.io/config.mirror" annotation, node "node-a" can only create mirror pods"#
        ),
        "{r}"
    );
    // A node asks for tokens only for its own pods.
    let tr = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                    "spec": {"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "p"}}});
    let path = "/api/v1/namespaces/team/serviceaccounts/robot/token";
    assert_eq!(status(&node_a, "POST", path, Some(&tr)).await, 403);
    assert_eq!(status(&node_b, "POST", path, Some(&tr)).await, 201);

    // The pod goes, its token with it.
    s.kubectl_ok(&["-n", "team", "delete", "pod", "p", "--grace-period=0", "--force"]).await;
    assert_eq!(status(&robot, "GET", "/api/v1/namespaces/team/configmaps/c1", None).await, 401);

    // Escalation: an admin of the namespace cannot bind cluster-admin there, but can
    // bind what they hold.
    s.kubectl_ok(&["-n", "team", "create", "rolebinding", "jane-admin", "--clusterrole=admin", "--user=jane"]).await;
    let jane_kc = s.dir.path().join("jane.yaml");
    std::fs::write(&jane_kc, kubeconfig(&s, cert_user(&tls::issue_client_cert(ca, "jane", &[]).unwrap()))).unwrap();
    let kc = jane_kc.to_str().unwrap();
    let out = s
        .kubectl(&[
            "--kubeconfig",
            kc,
            "-n",
            "team",
            "create",
            "rolebinding",
            "x",
            "--clusterrole=cluster-admin",
            "--user=bob",
        ])
        .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"rolebindings.rbac.authorization.k8s.io "x" is forbidden: user "jane""#)
            && err.contains("is attempting to grant RBAC permissions not currently held"),
        "{err}"
    );
    s.kubectl_ok(&["--kubeconfig", kc, "-n", "team", "create", "rolebinding", "y", "--clusterrole=view", "--user=bob"])
        .await;
    let out =
        s.kubectl(&["--kubeconfig", kc, "-n", "team", "create", "role", "r", "--verb=get", "--resource=nodes"]).await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("not currently held"), "a Role with more than jane has");
    s.kubectl_ok(&["--kubeconfig", kc, "-n", "team", "create", "role", "r2", "--verb=get", "--resource=configmaps"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_pod_security_and_quota() {
    let s = TestServer::start().await;
    s.kubectl_ok(&["create", "namespace", "locked"]).await;
    s.kubectl_ok(&["label", "namespace", "locked", "pod-security.kubernetes.io/enforce=restricted"]).await;
    let out = s.kubectl(&["-n", "locked", "run", "p", "--image=x", "--privileged"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"pods "p" is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false (container "p" must set securityContext.allowPrivilegeEscalation=false)"#)
            && err.contains(r#"privileged (container "p" must not set securityContext.privileged=true)"#),
        "{err}"
    );
    // A pod that follows the restricted profile is let in.
    let good = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ok", "namespace": "locked"},
                      "spec": {"securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
                               "containers": [{"name": "c", "image": "x",
                                               "securityContext": {"allowPrivilegeEscalation": false,
                                                                   "capabilities": {"drop": ["ALL"]}}}]}});
    s.kubectl_stdin(&["create", "-f", "-"], Some(&good.to_string())).await;
    s.kubectl_ok(&["-n", "locked", "get", "pod", "ok"]).await;
    // warn: the pod goes in, with the upstream warning.
    s.kubectl_ok(&["create", "namespace", "loose"]).await;
    s.kubectl_ok(&["label", "namespace", "loose", "pod-security.kubernetes.io/warn=baseline"]).await;
    let out = s.kubectl(&["-n", "loose", "run", "p", "--image=x", "--privileged"]).await;
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(r#"Warning: would violate PodSecurity "baseline:latest": privileged"#), "{err}");

    // Quota: the pod over it is refused, and the quota's status counts.
    s.kubectl_ok(&["create", "namespace", "q"]).await;
    s.kubectl_ok(&["-n", "q", "create", "quota", "q1", "--hard=pods=2,requests.cpu=1"]).await;
    let pod = |name: &str, cpu: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "q"},
               "spec": {"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": cpu}}}]}})
        .to_string()
    };
    let out = s.kubectl_stdin(&["create", "-f", "-"], Some(&pod("a", "500m"))).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = s.kubectl_stdin(&["create", "-f", "-"], Some(&pod("b", "600m"))).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"pods "b" is forbidden: exceeded quota: q1, requested: requests.cpu=600m, used: requests.cpu=500m, limited: requests.cpu=1"#),
        "{err}"
    );
    let out = s.kubectl(&["-n", "q", "run", "nocpu", "--image=x"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"pods "nocpu" is forbidden: failed quota: q1: must specify requests.cpu for: nocpu"#),
        "{err}"
    );
    s.kubectl_stdin(&["create", "-f", "-"], Some(&pod("c", "500m"))).await;
    let out = s.kubectl_stdin(&["create", "-f", "-"], Some(&pod("d", "100m"))).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("exceeded quota: q1, requested: pods=1,requests.cpu=100m, used: pods=2,requests.cpu=1"),
        "{err}"
    );
    let mut described = String::new();
    for _ in 0..50 {
        described = s.kubectl_ok(&["-n", "q", "describe", "quota", "q1"]).await;
        if described.contains("requests.cpu  1 ") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(described.contains("pods          2     2"), "{described}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_limit_ranges_and_priority() {
    let s = TestServer::start().await;
    let apply = |doc: Value| {
        let s = &s;
        async move {
            let out = s.kubectl_stdin(&["apply", "-f", "-"], Some(&doc.to_string())).await;
            (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
        }
    };
    // LimitRanger: defaults land in the pod (with the annotation), limits are held.
    s.kubectl_ok(&["create", "namespace", "lim"]).await;
    let lr = json!({"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "lr", "namespace": "lim"},
                    "spec": {"limits": [{"type": "Container", "default": {"cpu": "500m", "memory": "128Mi"},
                                         "defaultRequest": {"cpu": "100m"}, "max": {"cpu": "1"},
                                         "min": {"cpu": "50m"}},
                                        {"type": "PersistentVolumeClaim", "max": {"storage": "2Gi"}}]}});
    let (ok, err) = apply(lr).await;
    assert!(ok, "{err}");
    let stored = s.kubectl_ok(&["-n", "lim", "get", "limitrange", "lr", "-o", "json"]).await;
    let stored: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored["spec"]["limits"][0]["defaultRequest"], json!({"cpu": "100m", "memory": "128Mi"}));
    s.kubectl_ok(&["-n", "lim", "run", "plain", "--image=x"]).await;
    let pod: Value =
        serde_json::from_str(&s.kubectl_ok(&["-n", "lim", "get", "pod", "plain", "-o", "json"]).await).unwrap();
    let res = &pod["spec"]["containers"][0]["resources"];
    assert_eq!(res["limits"], json!({"cpu": "500m", "memory": "128Mi"}));
    assert_eq!(res["requests"], json!({"cpu": "100m", "memory": "128Mi"}));
    assert_eq!(
        pod["metadata"]["annotations"]["kubernetes.io/limit-ranger"],
        "LimitRanger plugin set: cpu, memory request for container plain; cpu, memory limit for container plain"
    );
    assert_eq!(pod["status"]["qosClass"], "Burstable");
    let big = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "big", "namespace": "lim"},
                     "spec": {"containers": [{"name": "c", "image": "x",
                                              "resources": {"requests": {"cpu": "10m"}, "limits": {"cpu": "2"}}}]}});
    let (ok, err) = apply(big).await;
    assert!(!ok);
    assert!(
        err.contains(r#"pods "big" is forbidden: [minimum cpu usage per Container is 50m, but request is 10m, maximum cpu usage per Container is 1, but limit is 2]"#),
        "{err}"
    );
    let pvc = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "c", "namespace": "lim"},
                     "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Gi"}}}});
    let (ok, err) = apply(pvc).await;
    assert!(!ok);
    assert!(
        err.contains(r#"persistentvolumeclaims "c" is forbidden: maximum storage usage per PersistentVolumeClaim is 2Gi, but request is 5Gi"#),
        "{err}"
    );
    // A pod whose requests equal its limits is Guaranteed.
    let g = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "g", "namespace": "lim"},
                   "spec": {"containers": [{"name": "c", "image": "x",
                                            "resources": {"limits": {"cpu": "200m", "memory": "64Mi"}}}]}});
    assert!(apply(g).await.0);
    assert_eq!(
        s.kubectl_ok(&["-n", "lim", "get", "pod", "g", "-o", "jsonpath={.status.qosClass}"]).await,
        "Guaranteed"
    );

    // Priority: the system classes exist; a pod gets its class's value, or the
    // default class's; unknown classes and hand-set values are refused.
    let classes = s.kubectl_ok(&["get", "priorityclasses"]).await;
    assert!(classes.contains("system-node-critical") && classes.contains("2000001000"), "{classes}");
    let pc = |name: &str, value: i64, default: bool| {
        json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": name},
               "value": value, "globalDefault": default})
    };
    assert!(apply(pc("high", 1000, false)).await.0);
    assert!(apply(pc("low", 10, true)).await.0);
    let (ok, err) = apply(pc("other", 5, true)).await;
    assert!(!ok);
    assert!(err.contains("PriorityClass low is already marked as default. Only one default can exist"), "{err}");
    let (ok, err) = apply(pc("huge", 2_000_000_000, false)).await;
    assert!(!ok && err.contains("maximum allowed value of a user defined priority is 1000000000"), "{err}");
    let (ok, err) = apply(pc("system-mine", 1, false)).await;
    assert!(
        !ok && err.contains("priority class names with 'system-' prefix are reserved for system use only"),
        "{err}"
    );
    let pod = |name: &str, extra: Value| {
        let mut p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
                           "spec": {"containers": [{"name": "c", "image": "x"}]}});
        for (k, v) in extra.as_object().unwrap() {
            p["spec"][k] = v.clone();
        }
        p
    };
    assert!(apply(pod("hi", json!({"priorityClassName": "high"}))).await.0);
    assert!(apply(pod("dflt", json!({}))).await.0);
    let got = |n: &str| {
        let s = &s;
        let n = n.to_string();
        async move {
            s.kubectl_ok(&[
                "get",
                "pod",
                &n,
                "-o",
                "jsonpath={.spec.priorityClassName}/{.spec.priority}/{.spec.preemptionPolicy}",
            ])
            .await
        }
    };
    assert_eq!(got("hi").await, "high/1000/PreemptLowerPriority");
    assert_eq!(got("dflt").await, "low/10/PreemptLowerPriority");
    let (ok, err) = apply(pod("nope", json!({"priorityClassName": "missing"}))).await;
    assert!(!ok && err.contains(r#"pods "nope" is forbidden: no PriorityClass with name missing was found"#), "{err}");
    let (ok, err) = apply(pod("forced", json!({"priorityClassName": "high", "priority": 5}))).await;
    assert!(!ok);
    assert!(
        err.contains("the integer value of priority (5) must not be provided in pod spec; priority admission controller computed 1000 from the given PriorityClass name"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validating_admission_policies_with_cel() {
    let s = TestServer::start().await;
    let policy = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: replica-limit}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - apiGroups: ["apps"]
      apiVersions: ["v1"]
      operations: ["CREATE", "UPDATE"]
      resources: ["deployments"]
  variables:
  - name: images
    expression: "object.spec.template.spec.containers.map(c, c.image)"
  validations:
  - expression: "object.spec.replicas <= 5"
  - expression: "variables.images.all(i, !i.endsWith(':latest'))"
    messageExpression: "'latest tags are not allowed: ' + object.metadata.name"
    reason: Forbidden
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: replica-limit-prod}
spec:
  policyName: replica-limit
  validationActions: [Deny]
  matchResources:
    namespaceSelector:
      matchLabels: {env: prod}
"#;
    let out = s.kubectl_stdin(&["apply", "-f", "-"], Some(policy)).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    s.kubectl_ok(&["create", "namespace", "prod"]).await;
    s.kubectl_ok(&["label", "namespace", "prod", "env=prod"]).await;
    s.kubectl_ok(&["create", "namespace", "dev"]).await;
    let out = s.kubectl(&["-n", "prod", "create", "deployment", "web", "--image=nginx:1.27", "--replicas=7"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    // Worded as upstream's (and its docs' example of this very policy).
    assert!(
        err.contains(r#"error: failed to create deployment: deployments.apps "web" is forbidden: ValidatingAdmissionPolicy 'replica-limit' with binding 'replica-limit-prod' denied request: failed expression: object.spec.replicas <= 5"#),
        "{err}"
    );
    let out = s.kubectl(&["-n", "prod", "create", "deployment", "web", "--image=nginx:latest"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"deployments.apps "web" is forbidden: ValidatingAdmissionPolicy 'replica-limit' with binding 'replica-limit-prod' denied request: latest tags are not allowed: web"#),
        "{err}"
    );
    // Within the policy, and outside the bound namespaces, writes go through.
    s.kubectl_ok(&["-n", "prod", "create", "deployment", "web", "--image=nginx:1.27", "--replicas=3"]).await;
    s.kubectl_ok(&["-n", "dev", "create", "deployment", "web", "--image=nginx:latest", "--replicas=9"]).await;
    // Updates are judged too: scaling past the limit is refused.
    let out = s.kubectl(&["-n", "prod", "patch", "deployment", "web", "-p", r#"{"spec":{"replicas":8}}"#]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("object.spec.replicas <= 5"));
    // Warn: the write goes in with the warning.
    s.kubectl_ok(&[
        "patch",
        "validatingadmissionpolicybinding",
        "replica-limit-prod",
        "--type=merge",
        "-p",
        r#"{"spec":{"validationActions":["Warn"]}}"#,
    ])
    .await;
    let out = s.kubectl(&["-n", "prod", "create", "deployment", "big", "--image=nginx:1.27", "--replicas=6"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Warning: Validation failed for ValidatingAdmissionPolicy 'replica-limit' with binding 'replica-limit-prod': failed expression: object.spec.replicas <= 5"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A policy with params: the binding's paramRef names a ConfigMap in the
    // request's namespace; none there is a denial (parameterNotFoundAction: Deny).
    let with_params = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: max-replicas}
spec:
  failurePolicy: Fail
  paramKind: {apiVersion: v1, kind: ConfigMap}
  matchConstraints:
    resourceRules:
    - {apiGroups: ["apps"], apiVersions: ["v1"], operations: ["CREATE", "UPDATE"], resources: ["deployments"]}
  validations:
  - expression: "object.spec.replicas <= int(params.data.maxReplicas)"
    messageExpression: "'at most ' + params.data.maxReplicas + ' replicas in ' + params.metadata.namespace"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: max-replicas-staging}
spec:
  policyName: max-replicas
  validationActions: [Deny]
  paramRef: {name: limits, parameterNotFoundAction: Deny}
  matchResources:
    namespaceSelector:
      matchLabels: {tier: staging}
"#;
    let out = s.kubectl_stdin(&["apply", "-f", "-"], Some(with_params)).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    s.kubectl_ok(&["create", "namespace", "staging"]).await;
    s.kubectl_ok(&["label", "namespace", "staging", "tier=staging"]).await;
    let out = s.kubectl(&["-n", "staging", "create", "deployment", "api", "--image=nginx:1.27"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ValidatingAdmissionPolicy 'max-replicas' with binding 'max-replicas-staging' denied request: failed to configure binding: no params found for policy binding with `Deny` parameterNotFoundAction"),
        "{err}"
    );
    s.kubectl_ok(&["-n", "staging", "create", "configmap", "limits", "--from-literal=maxReplicas=2"]).await;
    let out = s.kubectl(&["-n", "staging", "create", "deployment", "api", "--image=nginx:1.27", "--replicas=3"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("denied request: at most 2 replicas in staging"), "{err}");
    s.kubectl_ok(&["-n", "staging", "create", "deployment", "api", "--image=nginx:1.27", "--replicas=2"]).await;

    // DELETE is judged too, with the object as oldObject.
    let keep = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: keep-protected}
spec:
  matchConstraints:
    resourceRules:
    - {apiGroups: [""], apiVersions: ["v1"], operations: ["DELETE"], resources: ["configmaps"]}
  validations:
  - expression: "oldObject.metadata.?labels.?protected.orValue('') != 'true'"
    message: protected objects stay
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: keep-protected}
spec: {policyName: keep-protected, validationActions: [Deny]}
"#;
    let out = s.kubectl_stdin(&["apply", "-f", "-"], Some(keep)).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    s.kubectl_ok(&["-n", "staging", "label", "configmap", "limits", "protected=true"]).await;
    let out = s.kubectl(&["-n", "staging", "delete", "configmap", "limits"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("denied request: protected objects stay"), "{err}");
    s.kubectl_ok(&["-n", "staging", "label", "configmap", "limits", "protected-"]).await;
    s.kubectl_ok(&["-n", "staging", "delete", "configmap", "limits"]).await;

    // The authorizer: only who may delete ConfigMaps may give one an owner, and the
    // namespace's default service account is asked about too.
    let owners = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: owner-label}
spec:
  matchConstraints:
    resourceRules:
    - {apiGroups: [""], apiVersions: ["v1"], operations: ["CREATE", "UPDATE"], resources: ["configmaps"]}
  validations:
  - expression: "!('owner' in object.metadata.?labels.orValue({})) || authorizer.requestResource.check('delete').allowed()"
    messageExpression: "'only who may delete configmaps may set an owner; ' + request.userInfo.username + ' may not'"
  - expression: "!authorizer.serviceAccount(request.namespace, 'default').group('').resource('configmaps').namespace(request.namespace).check('create').allowed()"
    message: the default service account must not write configmaps
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: owner-label}
spec: {policyName: owner-label, validationActions: [Deny]}
"#;
    let out = s.kubectl_stdin(&["apply", "-f", "-"], Some(owners)).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    s.kubectl_ok(&["-n", "staging", "create", "role", "cm-writer", "--verb=create,get", "--resource=configmaps"]).await;
    s.kubectl_ok(&["-n", "staging", "create", "rolebinding", "jane-cm", "--role=cm-writer", "--user=jane"]).await;
    for _ in 0..50 {
        let out = s.kubectl(&["-n", "staging", "auth", "can-i", "--as", "jane", "create", "configmaps"]).await;
        if out.status.success() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let jane_owned = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: janes, labels: {owner: jane}}\n";
    let out = s.kubectl_stdin(&["-n", "staging", "create", "--as", "jane", "-f", "-"], Some(jane_owned)).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("denied request: only who may delete configmaps may set an owner; jane may not"), "{err}");
    s.kubectl_ok(&["-n", "staging", "create", "--as", "jane", "configmap", "plain"]).await;
    s.kubectl_stdin(&["-n", "staging", "create", "-f", "-"], Some(jane_owned)).await;
    s.kubectl_ok(&["-n", "staging", "get", "configmap", "janes"]).await;
    // Once the default service account may write ConfigMaps, the second rule refuses.
    s.kubectl_ok(&[
        "-n",
        "staging",
        "create",
        "rolebinding",
        "sa-cm",
        "--role=cm-writer",
        "--serviceaccount=staging:default",
    ])
    .await;
    // (RBAC is read from a watch: the new binding may take a moment to count.)
    let mut err = String::new();
    for _ in 0..50 {
        let out = s.kubectl(&["-n", "staging", "create", "configmap", "after", "--dry-run=server"]).await;
        err = String::from_utf8_lossy(&out.stderr).to_string();
        if !out.status.success() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(err.contains("denied request: the default service account must not write configmaps"), "{err}");
}

/// Every file under `dir`, read whole.
fn files_under(dir: &std::path::Path, out: &mut Vec<(std::path::PathBuf, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else if let Ok(b) = std::fs::read(&p) {
            out.push((p, b));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_encrypted_at_rest() {
    use base64::Engine;
    let s = TestServer::start_with(|c| c.secrets_encryption = true).await;
    let value = "correct-horse-battery-staple-4f1d";
    s.kubectl_ok(&["create", "secret", "generic", "s1", &format!("--from-literal=password={value}")]).await;
    let got = s.kubectl_ok(&["get", "secret", "s1", "-o", "jsonpath={.data.password}"]).await;
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(got.trim()).unwrap(), value.as_bytes());
    let rk = env!("CARGO_BIN_EXE_rk");
    let kc = s.kubeconfig.to_str().unwrap().to_string();
    let status =
        std::process::Command::new(rk).args(["secrets-encrypt", "status", "--kubeconfig", &kc]).output().unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("Encryption Status: Enabled") && text.contains("0 plaintext"), "{text}");
    let rotated =
        std::process::Command::new(rk).args(["secrets-encrypt", "rotate-keys", "--kubeconfig", &kc]).output().unwrap();
    assert!(rotated.status.success(), "{}", String::from_utf8_lossy(&rotated.stderr));
    let got = s.kubectl_ok(&["get", "secret", "s1", "-o", "jsonpath={.data.password}"]).await;
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(got.trim()).unwrap(), value.as_bytes());
    // No file of the store holds the value, plain or base64.
    let b64 = base64::engine::general_purpose::STANDARD.encode(value);
    let mut files = Vec::new();
    files_under(&s.dir.path().join("data"), &mut files);
    assert!(files.iter().any(|(p, _)| p.to_string_lossy().contains("db")), "the store files are scanned");
    for (p, bytes) in &files {
        for needle in [value.as_bytes(), b64.as_bytes()] {
            assert!(!bytes.windows(needle.len()).any(|w| w == needle), "{} holds the Secret value", p.display());
        }
    }
}

/// The audit log's Events, once the lines matching `want` are there.
async fn audit_events(path: &std::path::Path, want: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    for _ in 0..100 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let evs: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("each line is JSON")).collect();
        if want(&evs) {
            return evs;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the audit log never had the Events wanted:\n{}", std::fs::read_to_string(path).unwrap_or_default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_follows_its_policy() {
    use rk::server::audit::{AuditConfig, Policy};
    let policy = r#"
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: None
    nonResourceURLs: ["/healthz*", "/readyz*", "/livez*"]
  - level: None
    userGroups: ["system:masters"]
    users: ["system:apiserver", "system:kube-controller-manager", "system:kube-scheduler"]
  - level: None
    users: ["system:apiserver", "system:kube-controller-manager", "system:kube-scheduler"]
  - level: RequestResponse
    omitManagedFields: true
    resources: [{group: "", resources: ["configmaps"]}]
  - level: Request
    resources: [{group: "", resources: ["secrets"]}]
  - level: Metadata
"#;
    let mut log = std::path::PathBuf::new();
    let s = TestServer::start_with(|c| {
        log = c.data_dir.parent().unwrap().join("audit").join("audit.log");
        c.audit = Some(AuditConfig {
            path: log.clone(),
            policy: std::sync::Arc::new(Policy::parse(policy).unwrap()),
            max_age_days: 0,
            max_backups: 0,
            max_size_mb: 0,
        });
    })
    .await;
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&log).unwrap().permissions().mode() & 0o777, 0o600);
    s.kubectl_ok(&["create", "configmap", "c1", "--from-literal=k=v"]).await;
    s.kubectl_ok(&["create", "secret", "generic", "s1", "--from-literal=p=hunter2"]).await;
    s.kubectl_ok(&["get", "secrets"]).await;
    let denied = s.kubectl(&["get", "secrets", "--as", "jane", "--as-group", "devs"]).await;
    assert!(!denied.status.success());
    let bad = token_client(&s, "not-a-token").await;
    assert_eq!(status(&bad, "GET", "/api/v1/namespaces/default/pods", None).await, 401);
    let admin = s.client().await;
    assert_eq!(status(&admin, "GET", "/healthz", None).await, 200);
    // PodSecurity's audit mode: the pod goes in, its violations go into the Event.
    s.kubectl_ok(&["create", "namespace", "watched"]).await;
    s.kubectl_ok(&["label", "namespace", "watched", "pod-security.kubernetes.io/audit=baseline"]).await;
    s.kubectl_ok(&["-n", "watched", "run", "priv", "--image=x", "--privileged"]).await;
    // A watch: ResponseStarted when it begins, ResponseComplete when it ends.
    let _ = s.kubectl(&["get", "configmaps", "--watch", "--request-timeout=1s"]).await;
    let evs = audit_events(&log, |evs| {
        evs.iter().any(|e| e["verb"] == "watch" && e["stage"] == "ResponseComplete")
            && evs.iter().any(|e| e["responseStatus"]["code"] == 401)
    })
    .await;
    let find = |verb: &str, res: &str| -> Vec<&Value> {
        evs.iter().filter(|e| e["verb"] == verb && e["objectRef"]["resource"] == res).collect()
    };
    for e in &evs {
        assert_eq!((&e["kind"], &e["apiVersion"]), (&json!("Event"), &json!("audit.k8s.io/v1")));
        assert_ne!(e["stage"], "RequestReceived", "omitted by the policy");
        assert!(!e["requestURI"].as_str().unwrap().starts_with("/healthz"), "level None");
        assert!(e["user"]["username"] != "system:apiserver", "level None: {e}");
        assert!(e["requestReceivedTimestamp"].as_str().unwrap().ends_with('Z'));
    }
    // RequestResponse for configmaps, without managedFields.
    let cm = find("create", "configmaps");
    assert_eq!(cm.len(), 1, "{cm:?}");
    let cm = cm[0];
    assert_eq!(cm["level"], "RequestResponse");
    assert_eq!(
        cm["objectRef"],
        json!({"resource": "configmaps", "namespace": "default", "name": "c1", "apiVersion": "v1"})
    );
    assert_eq!(cm["responseStatus"]["code"], 201);
    assert_eq!(cm["requestObject"]["data"]["k"], "v");
    assert_eq!(cm["responseObject"]["metadata"]["name"], "c1");
    assert!(cm["responseObject"]["metadata"].get("managedFields").is_none());
    assert_eq!(cm["user"]["username"], "system:admin");
    assert_eq!(cm["annotations"]["authorization.k8s.io/decision"], "allow");
    // Request for secrets: the request body, not the response.
    let sec = find("create", "secrets")[0];
    assert_eq!(sec["level"], "Request");
    assert!(sec["requestObject"]["data"]["p"].is_string() && sec.get("responseObject").is_none());
    // Metadata for the rest: no bodies; a refusal says who was impersonated and why.
    let lists = find("list", "secrets");
    let forbid = lists.iter().find(|e| e["responseStatus"]["code"] == 403).expect("the refused list");
    assert_eq!(forbid["level"], "Request");
    assert_eq!(forbid["impersonatedUser"]["username"], "jane");
    assert_eq!(forbid["user"]["username"], "system:admin");
    assert_eq!(forbid["annotations"]["authorization.k8s.io/decision"], "forbid");
    assert_eq!(forbid["responseStatus"]["reason"], "Forbidden");
    let pods = find("list", "pods");
    let unauth = pods.iter().find(|e| e["responseStatus"]["code"] == 401).expect("the 401");
    assert_eq!(unauth["user"], json!({}));
    assert_eq!(unauth["level"], "Metadata");
    assert!(unauth.get("requestObject").is_none());
    let watch = find("watch", "configmaps");
    let started = watch.iter().find(|e| e["stage"] == "ResponseStarted").expect("ResponseStarted");
    let done = watch.iter().find(|e| e["stage"] == "ResponseComplete").expect("ResponseComplete");
    assert_eq!(started["auditID"], done["auditID"]);
    assert!(done["stageTimestamp"].as_str() >= started["stageTimestamp"].as_str());
    let priv_pod = find("create", "pods");
    let priv_pod = priv_pod.iter().find(|e| e["objectRef"]["namespace"] == "watched").expect("the pod's Event");
    assert_eq!(
        priv_pod["annotations"]["pod-security.kubernetes.io/audit-violations"],
        r#"would violate PodSecurity "baseline:latest": privileged (container "priv" must not set securityContext.privileged=true)"#
    );
    // Every response carries its Audit-Id.
    let req = http::Request::get("/version").body(kube::client::Body::empty()).unwrap();
    let resp = admin.send(req).await.unwrap();
    let id = resp.headers().get("audit-id").expect("Audit-Id header").to_str().unwrap().to_string();
    audit_events(&log, |evs| evs.iter().any(|e| e["auditID"] == id.as_str() && e["requestURI"] == "/version")).await;
}
