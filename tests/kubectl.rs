//! What users type: kubectl against an in-process rk server.

mod common;

use std::time::Duration;

use common::TestServer;

const MANIFEST: &str = r#"apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: shop
  labels: {app: web}
data:
  color: blue
---
apiVersion: v1
kind: Secret
metadata:
  name: creds
  namespace: shop
stringData:
  password: hunter2
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector: {app: web}
  ports:
  - port: 80
    targetPort: 8080
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_discovery_and_resources() {
    let srv = TestServer::start().await;
    let v = srv.kubectl_ok(&["version"]).await;
    assert!(v.contains("Server Version: v1.33"), "{v}");
    let r = srv.kubectl_ok(&["api-resources"]).await;
    for line in ["pods ", "deployments ", "ingresses ", "clusterroles ", "leases ", "endpointslices "] {
        assert!(r.contains(line), "api-resources lacks {line}: {r}");
    }
    assert!(
        r.lines().any(|l| l.starts_with("pods") && l.contains(" po ") && l.contains("true") && l.contains("Pod")),
        "{r}"
    );
    let av = srv.kubectl_ok(&["api-versions"]).await;
    for gv in [
        "v1",
        "apps/v1",
        "batch/v1",
        "autoscaling/v2",
        "policy/v1",
        "networking.k8s.io/v1",
        "rbac.authorization.k8s.io/v1",
    ] {
        assert!(av.lines().any(|l| l == gv), "api-versions lacks {gv}: {av}");
    }
    let ns = srv.kubectl_ok(&["get", "ns"]).await;
    assert!(ns.starts_with("NAME") && ns.contains("STATUS"), "{ns}");
    assert!(ns.lines().any(|l| l.split_whitespace().take(2).eq(["kube-system", "Active"])), "{ns}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_get_label_annotate_delete() {
    let srv = TestServer::start().await;
    let path = srv.dir.path().join("m.yaml");
    std::fs::write(&path, MANIFEST).unwrap();
    let p = path.to_str().unwrap();
    let out = srv.kubectl_ok(&["apply", "-f", p]).await;
    assert_eq!(out, "namespace/shop created\nconfigmap/settings created\nsecret/creds created\nservice/web created\n");
    let out = srv.kubectl_ok(&["apply", "-f", p]).await;
    assert!(out.contains("configmap/settings unchanged"), "{out}");
    std::fs::write(&path, MANIFEST.replace("color: blue", "color: red\n  size: big")).unwrap();
    let out = srv.kubectl_ok(&["apply", "-f", p]).await;
    assert!(out.contains("configmap/settings configured") && out.contains("service/web unchanged"), "{out}");

    let y = srv.kubectl_ok(&["-n", "shop", "get", "cm", "settings", "-o", "yaml"]).await;
    assert!(y.contains("color: red") && y.contains("size: big") && y.contains("last-applied-configuration"), "{y}");
    let j = srv.kubectl_ok(&["-n", "shop", "get", "secret", "creds", "-o", "jsonpath={.data.password}"]).await;
    assert_eq!(j, "aHVudGVyMg==", "stringData is stored base64 in data");
    let js = srv.kubectl_ok(&["-n", "shop", "get", "svc", "web", "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_str(&js).unwrap();
    assert_eq!(v["spec"]["ports"][0]["targetPort"], 8080);

    let table = srv.kubectl_ok(&["-n", "shop", "get", "svc", "-o", "wide"]).await;
    let mut lines = table.lines();
    let head: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(head, ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE", "SELECTOR"]);
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!((row[0], row[1], row[3], row[4], row[6]), ("web", "ClusterIP", "<none>", "80/TCP", "app=web"));
    assert!(row[2].starts_with("10.43."), "{table}");

    srv.kubectl_ok(&["-n", "shop", "label", "cm", "settings", "tier=front"]).await;
    let e = srv.kubectl(&["-n", "shop", "label", "cm", "settings", "tier=back"]).await;
    assert!(!e.status.success(), "label without --overwrite must refuse");
    srv.kubectl_ok(&["-n", "shop", "label", "cm", "settings", "tier=back", "--overwrite"]).await;
    srv.kubectl_ok(&["-n", "shop", "annotate", "cm", "settings", "owner=team-a"]).await;
    let got = srv
        .kubectl_ok(&[
            "-n",
            "shop",
            "get",
            "cm",
            "-l",
            "tier=back",
            "-o",
            "jsonpath={.items[*].metadata.annotations.owner}",
        ])
        .await;
    assert_eq!(got, "team-a");
    let none = srv.kubectl(&["-n", "shop", "get", "cm", "-l", "tier=front"]).await;
    assert!(String::from_utf8_lossy(&none.stderr).contains("No resources found in shop namespace."));
    let f = srv.kubectl_ok(&["get", "cm", "-A", "--field-selector", "metadata.name=settings", "--no-headers"]).await;
    assert!(f.starts_with("shop") && f.contains("settings"), "{f}");
    let all = srv.kubectl_ok(&["-n", "shop", "get", "all"]).await;
    assert!(all.contains("service/web"), "{all}");

    let out = srv.kubectl_ok(&["-n", "shop", "delete", "cm", "settings"]).await;
    assert_eq!(out, "configmap \"settings\" deleted\n");
    let e = srv.kubectl(&["-n", "shop", "get", "cm", "settings"]).await;
    assert_eq!(String::from_utf8_lossy(&e.stderr), "Error from server (NotFound): configmaps \"settings\" not found\n");
    let out = srv.kubectl_ok(&["delete", "ns", "shop", "--timeout=30s"]).await;
    assert_eq!(out, "namespace \"shop\" deleted\n");
    let e = srv.kubectl(&["get", "ns", "shop"]).await;
    assert!(!e.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_prints_changes() {
    let srv = TestServer::start().await;
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: w1\ndata:\n  a: b\n";
    let out = srv.kubectl_stdin(&["apply", "-f", "-"], Some(cm)).await;
    assert!(out.status.success());
    let watcher = {
        let kc = srv.kubeconfig.clone();
        let cache = srv.dir.path().join("kubecache");
        tokio::process::Command::new("kubectl")
            .args(["get", "cm", "-w", "--output-watch-events", "--request-timeout=4s"])
            .env("KUBECONFIG", kc)
            .env("KUBECACHEDIR", cache)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cm2 = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: w2\n";
    assert!(srv.kubectl_stdin(&["apply", "-f", "-"], Some(cm2)).await.status.success());
    srv.kubectl_ok(&["delete", "cm", "w2"]).await;
    let out = tokio::time::timeout(Duration::from_secs(20), watcher.wait_with_output()).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let events: Vec<(String, String)> = text
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), f[1].to_string())
        })
        .collect();
    assert!(events.contains(&("ADDED".into(), "w1".into())), "{text}");
    assert!(events.contains(&("ADDED".into(), "w2".into())), "{text}");
    assert!(events.contains(&("DELETED".into(), "w2".into())), "{text}");
}

/// `kubectl create <kind>`, `run`, `expose` and `scale` send protobuf bodies (client-go's
/// typed clients) and use the scale subresource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_generators_run_expose_scale() {
    let srv = TestServer::start().await;
    let cmds: &[&[&str]] = &[
        &["create", "namespace", "gen"],
        &["-n", "gen", "create", "configmap", "c1", "--from-literal=a=b"],
        &["-n", "gen", "create", "secret", "generic", "s1", "--from-literal=pw=hunter2"],
        &["-n", "gen", "create", "deployment", "web", "--image=busybox:1.36", "--replicas=2", "--port=80"],
        &["-n", "gen", "create", "service", "nodeport", "np", "--tcp=80:8080"],
        &["-n", "gen", "create", "serviceaccount", "bot"],
        &["-n", "gen", "create", "role", "r", "--verb=get", "--resource=pods"],
        &["-n", "gen", "create", "rolebinding", "rb", "--role=r", "--serviceaccount=gen:bot"],
        &["-n", "gen", "create", "job", "j", "--image=busybox", "--", "echo", "hi"],
        &["-n", "gen", "create", "cronjob", "cj", "--image=busybox", "--schedule=*/5 * * * *"],
        &["-n", "gen", "run", "p", "--image=busybox", "--restart=Never", "--", "sleep", "1"],
        &["-n", "gen", "expose", "deployment", "web", "--port=80", "--name=web"],
        &["-n", "gen", "scale", "deployment", "web", "--replicas=5"],
    ];
    for c in cmds {
        srv.kubectl_ok(c).await;
    }
    let pw = srv.kubectl_ok(&["-n", "gen", "get", "secret", "s1", "-o", "jsonpath={.data.pw}"]).await;
    assert_eq!(pw, "aHVudGVyMg==");
    let d = srv.kubectl_ok(&["-n", "gen", "get", "deploy", "web", "-o", "json"]).await;
    let d: serde_json::Value = serde_json::from_str(&d).unwrap();
    assert_eq!(d["spec"]["replicas"], 5, "scaled");
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["image"], "busybox:1.36");
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"], 80);
    assert!(d["status"].get("replicas").is_none_or(|r| r != 99), "status is not taken from create");
    let np = srv
        .kubectl_ok(&["-n", "gen", "get", "svc", "np", "-o", "jsonpath={.spec.type} {.spec.ports[0].nodePort}"])
        .await;
    let (ty, port) = np.split_once(' ').unwrap();
    assert_eq!(ty, "NodePort");
    assert!((30000..=32767).contains(&port.parse::<i64>().unwrap()), "{np}");
    let rb = srv
        .kubectl_ok(&["-n", "gen", "get", "rolebinding", "rb", "-o", "jsonpath={.roleRef.name} {.subjects[0].name}"])
        .await;
    assert_eq!(rb, "r bot");
    let pod = srv
        .kubectl_ok(&[
            "-n",
            "gen",
            "get",
            "pod",
            "p",
            "-o",
            "jsonpath={.spec.restartPolicy} {.spec.containers[0].args}",
        ])
        .await;
    assert_eq!(pod, "Never [\"sleep\",\"1\"]");
    let cj = srv.kubectl_ok(&["-n", "gen", "get", "cronjob", "cj", "-o", "jsonpath={.spec.schedule}"]).await;
    assert_eq!(cj, "*/5 * * * *");
    let wide = srv.kubectl_ok(&["-n", "gen", "get", "deploy", "-o", "wide"]).await;
    assert!(
        wide.lines().nth(1).unwrap().split_whitespace().eq([
            "web",
            "0/5",
            "0",
            "0",
            "0s",
            "busybox",
            "busybox:1.36",
            "app=web"
        ]) || wide.contains("app=web"),
        "{wide}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_diff_and_server_dry_run() {
    let srv = TestServer::api_only().await;
    let path = srv.dir.path().join("d.yaml");
    let p = path.to_str().unwrap();
    let manifest = |replicas: u32, extra_label: bool| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  labels:\n    app: web\n{}spec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      containers: [{{name: c, image: 'nginx:1'}}]\n",
            if extra_label { "    tier: fe\n" } else { "" }
        )
    };
    std::fs::write(&path, manifest(2, true)).unwrap();
    assert_eq!(srv.kubectl_ok(&["apply", "--server-side", "-f", p]).await, "deployment.apps/web serverside-applied\n");
    srv.kubectl_ok(&["scale", "deploy", "web", "--replicas=4"]).await;
    // kubectl scale took replicas (an Update through /scale): applying 2 conflicts.
    let out = srv.kubectl(&["apply", "--server-side", "-f", p]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(
            "error: Apply failed with 1 conflict: conflict with \"kubectl\" using apps/v1: .spec.replicas\n"
        ),
        "{err}"
    );
    let mf = srv.kubectl_ok(&["get", "deploy", "web", "-o", "yaml", "--show-managed-fields"]).await;
    assert!(mf.contains("subresource: scale"), "{mf}");
    // A server dry run of a changed manifest answers the result and stores nothing.
    std::fs::write(&path, manifest(4, false)).unwrap();
    let dry = srv
        .kubectl_ok(&["apply", "--server-side", "--dry-run=server", "-f", p, "-o", "jsonpath={.metadata.labels}"])
        .await;
    assert_eq!(dry, r#"{"app":"web"}"#);
    let live = srv.kubectl_ok(&["get", "deploy", "web", "-o", "jsonpath={.metadata.labels}"]).await;
    assert_eq!(live, r#"{"app":"web","tier":"fe"}"#);
    // kubectl diff shows the label that would go, and exits 1.
    let out = srv.kubectl(&["diff", "--server-side", "-f", p]).await;
    let diff = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{diff}");
    assert!(diff.lines().any(|l| l.trim() == "-    tier: fe"), "{diff}");
    // The same replicas as live is no conflict: the apply shares the field and drops the label.
    assert_eq!(srv.kubectl_ok(&["apply", "--server-side", "-f", p]).await, "deployment.apps/web serverside-applied\n");
    let live = srv.kubectl_ok(&["get", "deploy", "web", "-o", "jsonpath={.metadata.labels}"]).await;
    assert_eq!(live, r#"{"app":"web"}"#);
    // Forced: replicas 1 wins over kubectl scale's.
    std::fs::write(&path, manifest(1, false)).unwrap();
    srv.kubectl_ok(&["apply", "--server-side", "--force-conflicts", "-f", p]).await;
    assert_eq!(srv.kubectl_ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]).await, "1");
    // Client-side apply with --dry-run=server stores nothing either.
    let cm = srv.dir.path().join("cm.yaml");
    std::fs::write(&cm, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: '1'}\n").unwrap();
    srv.kubectl_ok(&["apply", "--dry-run=server", "-f", cm.to_str().unwrap()]).await;
    assert!(!srv.kubectl(&["get", "cm", "c"]).await.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_reads_the_openapi_schemas() {
    let srv = TestServer::api_only().await;
    let out = srv.kubectl_ok(&["explain", "deployment.spec.strategy"]).await;
    assert!(out.starts_with("GROUP:      apps\nKIND:       Deployment\nVERSION:    v1\n"), "{out}");
    assert!(out.contains("FIELD: strategy <DeploymentStrategy>"), "{out}");
    assert!(out.contains("  rollingUpdate\t<RollingUpdateDeployment>"), "{out}");
    let out = srv.kubectl_ok(&["explain", "pods.spec.containers.ports"]).await;
    assert!(
        out.contains("FIELD: ports <[]ContainerPort>") && out.contains("containerPort\t<integer> -required-"),
        "{out}"
    );
    let out = srv.kubectl_ok(&["explain", "cm"]).await;
    assert!(out.contains("  data\t<map[string]string>") && out.contains("  metadata\t<ObjectMeta>\n"), "{out}");
    let e = srv.kubectl(&["explain", "deployment.spec.nope"]).await;
    assert_eq!(String::from_utf8_lossy(&e.stderr), "error: field \"nope\" does not exist\n");
    // OpenAPI v2 as JSON, for clients that read it.
    let v2: serde_json::Value = serde_json::from_str(&srv.kubectl_ok(&["get", "--raw", "/openapi/v2"]).await).unwrap();
    assert_eq!(v2["swagger"], "2.0");
    let d = &v2["definitions"]["io.k8s.api.apps.v1.Deployment"];
    assert_eq!(d["x-kubernetes-group-version-kind"][0]["kind"], "Deployment");
    assert_eq!(d["properties"]["spec"]["$ref"], "#/definitions/io.k8s.api.apps.v1.DeploymentSpec");
    // kubectl's v2 explain reads the protobuf form.
    let out = srv.kubectl_ok(&["explain", "deployment.spec.strategy", "--output=plaintext-openapiv2"]).await;
    assert!(out.starts_with("KIND:     Deployment\nVERSION:  apps/v1\n"), "{out}");
    assert!(out.contains("RESOURCE: strategy <Object>") && out.contains("   rollingUpdate\t<Object>"), "{out}");
    // kubectl reads v2 where v3 cannot answer, as for `kind: List`: its items are
    // validated against the v2 definitions before anything is sent, as against
    // Kubernetes; a good List goes in.
    let list = r#"{"apiVersion":"v1","kind":"List","items":[
      {"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"listed"},"data":{"a":"b"}},
      {"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"bogus"},"data":{"a":"b"},"bogus":1}]}"#;
    let out = srv.kubectl_stdin(&["apply", "-f", "-"], Some(list)).await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "error validating data: ValidationError(ConfigMap): unknown field \"bogus\" in io.k8s.api.core.v1.ConfigMap"
        ),
        "{out:?}"
    );
    assert!(srv.kubectl(&["get", "cm", "listed"]).await.stderr.ends_with(b"not found\n"), "nothing was applied");
    let good = list.replace(r#","bogus":1"#, "");
    let out = srv.kubectl_stdin(&["apply", "-f", "-"], Some(&good)).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "configmap/listed created\nconfigmap/bogus created\n");
}

const WIDGET_CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1beta1
    served: true
    storage: false
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale: {specReplicasPath: .spec.replicas, statusReplicasPath: .status.replicas}
    selectableFields:
    - {jsonPath: .spec.color}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    - {name: Color, type: string, jsonPath: .spec.color}
    - {name: Ready, type: string, jsonPath: '.status.conditions[?(@.type=="Ready")].status'}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            description: What the widget should be.
            required: [size]
            x-kubernetes-validations:
            - {rule: "self.replicas <= self.size * 2", message: replicas must be at most twice the size}
            properties:
              size: {type: integer, minimum: 1, maximum: 10, description: How big.}
              color: {type: string, enum: [red, blue], default: red}
              replicas: {type: integer, default: 1}
          status:
            type: object
            properties:
              replicas: {type: integer}
              conditions:
                type: array
                items: {type: object, properties: {type: {type: string}, status: {type: string}}}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resources_from_a_crd() {
    let srv = TestServer::api_only().await;
    let dir = srv.dir.path();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let crd = write("crd.yaml", WIDGET_CRD);
    srv.kubectl_ok(&["apply", "-f", &crd]).await;
    srv.kubectl_ok(&["wait", "--for=condition=established", "crd/widgets.example.com", "--timeout=10s"]).await;
    let crds = srv.kubectl_ok(&["get", "crd"]).await;
    assert!(crds.starts_with("NAME                  CREATED AT\nwidgets.example.com   "), "{crds}");

    // A custom object: defaulted, listed with the printer columns, found by short name.
    let w1 = write("w1.yaml", "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: 3}\n");
    assert_eq!(srv.kubectl_ok(&["apply", "-f", &w1]).await, "widget.example.com/w1 created\n");
    let table = srv.kubectl_ok(&["get", "wd"]).await;
    let rows: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0], ["NAME", "SIZE", "COLOR", "READY"], "{table}");
    assert_eq!(rows[1], ["w1", "3", "red"], "{table}");
    assert_eq!(srv.kubectl_ok(&["get", "widget", "w1", "-o", "jsonpath={.spec.replicas}"]).await, "1");

    // Schema violations are 422 naming the fields; an unknown field is refused (Strict).
    let bad = write(
        "bad.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w2}\nspec: {size: 30, color: pink}\n",
    );
    let out = srv.kubectl(&["apply", "-f", &bad]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("The Widget \"w2\" is invalid: \n* spec.color: Unsupported value: \"pink\": supported values: \"red\", \"blue\"\n* spec.size: Invalid value: 30: spec.size in body should be less than or equal to 10"), "{err}");
    let unknown =
        write("u.yaml", "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w3}\nspec: {size: 2, bogus: 1}\n");
    let out = srv.kubectl(&["create", "-f", &unknown]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("strict decoding error: unknown field \"spec.bogus\""), "{err}");
    // CEL rules (x-kubernetes-validations) as Kubernetes words them.
    let greedy = write(
        "greedy.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w4}\nspec: {size: 1, replicas: 5}\n",
    );
    let out = srv.kubectl(&["apply", "-f", &greedy]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "The Widget \"w4\" is invalid: spec: Invalid value: \"object\": replicas must be at most twice the size"
        ),
        "{err}"
    );
    let missing = srv.kubectl(&["get", "wd", "w2"]).await;
    assert!(!missing.status.success(), "nothing was stored");

    // status and scale subresources; the Ready column follows status.
    srv.kubectl_ok(&["scale", "wd", "w1", "--replicas=4"]).await;
    assert_eq!(srv.kubectl_ok(&["get", "wd", "w1", "-o", "jsonpath={.spec.replicas}"]).await, "4");
    srv.kubectl_ok(&[
        "patch",
        "wd",
        "w1",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"replicas":4,"conditions":[{"type":"Ready","status":"True"}]}}"#,
    ])
    .await;
    let row = srv.kubectl_ok(&["get", "wd", "w1", "--no-headers"]).await;
    assert_eq!(row.split_whitespace().take(4).collect::<Vec<_>>(), ["w1", "3", "red", "True"], "{row}");
    // A spec write through the main resource leaves status alone.
    srv.kubectl_ok(&["patch", "wd", "w1", "--type=merge", "-p", r#"{"spec":{"size":5},"status":{"replicas":9}}"#])
        .await;
    assert_eq!(srv.kubectl_ok(&["get", "wd", "w1", "-o", "jsonpath={.spec.size}/{.status.replicas}"]).await, "5/4");

    // The same object in the other served version.
    let v1beta1 = srv.kubectl_ok(&["get", "widgets.v1beta1.example.com", "w1", "-o", "jsonpath={.apiVersion}"]).await;
    assert_eq!(v1beta1, "example.com/v1beta1");

    // explain reads the CRD's schema.
    let ex = srv.kubectl_ok(&["explain", "widget.spec"]).await;
    assert!(ex.contains("What the widget should be.") && ex.contains("size\t<integer> -required-"), "{ex}");

    // Server-side apply on a custom object.
    let ssa = write(
        "ssa.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w4}\nspec: {size: 2, color: blue}\n",
    );
    srv.kubectl_ok(&["apply", "--server-side", "-f", &ssa]).await;
    assert_eq!(srv.kubectl_ok(&["get", "wd", "w4", "-o", "jsonpath={.spec.color}"]).await, "blue");
    // selectableFields: field selectors on the custom resource.
    let blue = srv.kubectl_ok(&["get", "wd", "--field-selector", "spec.color=blue", "-o", "name"]).await;
    assert_eq!(blue, "widget.example.com/w4\n");
    let out = srv.kubectl(&["get", "wd", "--field-selector", "spec.size=2"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("field label not supported: spec.size"), "{err}");

    // Deleting the CRD deletes its objects; a new CRD of the same name starts empty.
    srv.kubectl_ok(&["delete", "crd", "widgets.example.com", "--timeout=30s"]).await;
    assert!(srv.kubectl_ok(&["get", "crd", "-o", "name"]).await.is_empty());
    srv.kubectl_ok(&["apply", "-f", &crd]).await;
    srv.kubectl_ok(&["wait", "--for=condition=established", "crd/widgets.example.com", "--timeout=10s"]).await;
    let none = srv.kubectl(&["get", "widgets", "-A"]).await;
    assert!(String::from_utf8_lossy(&none.stderr).contains("No resources found"), "{none:?}");

    // A CRD whose schema is not structural is refused.
    let ns = write(
        "ns.yaml",
        &WIDGET_CRD
            .replace("widgets", "gadgets")
            .replace("Widget", "Gadget")
            .replace("widget, ", "gadget, ")
            .replace("[wd]", "[gd]")
            .replace("size: {type: integer, minimum: 1", "size: {minimum: 1"),
    );
    let out = srv.kubectl(&["apply", "-f", &ns]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("spec.versions[1].schema.openAPIV3Schema.properties[spec].properties[size].type: Required value: must not be empty for specified object fields"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_side_apply_edit_patch_set_and_restart() {
    let srv = TestServer::api_only().await;
    let path = srv.dir.path().join("d.yaml");
    let p = path.to_str().unwrap();
    let manifest = |env: &str, sidecar: bool| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app\nspec:\n  selector: {{matchLabels: {{app: app}}}}\n  template:\n    metadata: {{labels: {{app: app}}}}\n    spec:\n      containers:\n      - name: main\n        image: 'busybox:1'\n        env: [{env}]\n{}",
            if sidecar { "      - name: side\n        image: 'busybox:1'\n" } else { "" }
        )
    };
    std::fs::write(&path, manifest("{name: A, value: '1'}, {name: B, value: '2'}", true)).unwrap();
    srv.kubectl_ok(&["apply", "-f", p]).await;
    // A field added by someone else survives the next apply (three-way merge).
    srv.kubectl_ok(&["set", "env", "deployment/app", "-c", "main", "C=3"]).await;
    // Remove env B and the sidecar from the manifest: both go, C stays.
    std::fs::write(&path, manifest("{name: A, value: '1'}", false)).unwrap();
    assert_eq!(srv.kubectl_ok(&["apply", "-f", p]).await, "deployment.apps/app configured\n");
    let env = srv
        .kubectl_ok(&["get", "deploy", "app", "-o", "jsonpath={.spec.template.spec.containers[*].env[*].name}"])
        .await;
    assert_eq!(env, "A C");
    let names =
        srv.kubectl_ok(&["get", "deploy", "app", "-o", "jsonpath={.spec.template.spec.containers[*].name}"]).await;
    assert_eq!(names, "main");

    // set image, a JSON patch, a strategic patch deleting a list item by key.
    srv.kubectl_ok(&["set", "image", "deployment/app", "main=busybox:2"]).await;
    srv.kubectl_ok(&[
        "patch",
        "deploy",
        "app",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/revisionHistoryLimit","value":3}]"#,
    ])
    .await;
    srv.kubectl_ok(&[
        "patch",
        "deploy",
        "app",
        "--type=strategic",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"main","env":[{"name":"C","$patch":"delete"}]}]}}}}"#,
    ])
    .await;
    let got = srv
        .kubectl_ok(&[
            "get", "deploy", "app", "-o",
            "jsonpath={.spec.template.spec.containers[0].image} {.spec.revisionHistoryLimit} {.spec.template.spec.containers[0].env[*].name}",
        ])
        .await;
    assert_eq!(got, "busybox:2 3 A");

    // rollout restart stamps the template; edit through an EDITOR script.
    srv.kubectl_ok(&["rollout", "restart", "deployment/app"]).await;
    let ann = srv.kubectl_ok(&["get", "deploy", "app", "-o", "jsonpath={.spec.template.metadata.annotations}"]).await;
    assert!(ann.contains("kubectl.kubernetes.io/restartedAt"), "{ann}");
    let editor = srv.dir.path().join("editor.sh");
    std::fs::write(&editor, "#!/bin/sh\nsed -i 's/busybox:2/busybox:3/' \"$1\"\n").unwrap();
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = tokio::process::Command::new("kubectl")
        .args(["edit", "deployment/app"])
        .env("KUBECONFIG", &srv.kubeconfig)
        .env("HOME", srv.dir.path())
        .env("KUBE_EDITOR", &editor)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "deployment.apps/app edited\n");
    let img =
        srv.kubectl_ok(&["get", "deploy", "app", "-o", "jsonpath={.spec.template.spec.containers[0].image}"]).await;
    assert_eq!(img, "busybox:3");

    // Bad patches change nothing: malformed JSON, a JSON patch sent as merge, a patch
    // making the object invalid.
    let rv = srv.kubectl_ok(&["get", "deploy", "app", "-o", "jsonpath={.metadata.resourceVersion}"]).await;
    for (ty, body) in [
        ("merge", "{not json"),
        ("merge", r#"[{"op":"remove","path":"/spec"}]"#),
        ("json", r#"[{"op":"remove","path":"/spec/nothing"}]"#),
        ("merge", r#"{"spec":{"replicas":"many"}}"#),
    ] {
        let out = srv.kubectl(&["patch", "deploy", "app", "--type", ty, "-p", body]).await;
        assert!(!out.status.success(), "{ty} {body} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    let after = srv.kubectl_ok(&["get", "deploy", "app", "-o", "jsonpath={.metadata.resourceVersion}"]).await;
    assert_eq!(rv, after);
}
