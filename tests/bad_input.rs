//! Bad input gets the right Status code, loses nothing, and leaves the server up.

mod common;

use common::TestServer;
use http::Request;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams};
use serde_json::Value;

struct Reply {
    code: u16,
    warning: Option<String>,
    body: Value,
}

async fn send(c: &kube::Client, method: &str, path: &str, ct: &str, body: Vec<u8>) -> Reply {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", ct)
        .body(kube::client::Body::from(body))
        .unwrap();
    let resp = c.send(req).await.expect("request sent");
    let code = resp.status().as_u16();
    let warning = resp.headers().get("warning").map(|w| w.to_str().unwrap().to_string());
    use http_body_util::BodyExt;
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
    Reply { code, warning, body }
}

const CMS: &str = "/api/v1/namespaces/default/configmaps";

fn status(r: &Reply) -> (u16, &str) {
    assert_eq!(r.body["kind"], "Status", "{}", r.body);
    assert_eq!(r.body["code"], r.code);
    (r.code, r.body["reason"].as_str().unwrap_or(""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_get_the_right_status() {
    let srv = TestServer::api_only().await;
    let c = srv.client().await;
    let json = "application/json";

    let r = send(&c, "POST", CMS, json, b"{\"metadata\": {\"name\": ".to_vec()).await;
    assert_eq!(status(&r), (400, "BadRequest"));
    let r = send(&c, "POST", CMS, "application/yaml", b"metadata: [unclosed".to_vec()).await;
    assert_eq!(status(&r), (400, "BadRequest"));
    let r = send(
        &c,
        "POST",
        CMS,
        json,
        br#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"x"}}"#.to_vec(),
    )
    .await;
    assert_eq!(status(&r), (400, "BadRequest"));
    let r =
        send(&c, "POST", CMS, json, br#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"x"}}"#.to_vec()).await;
    assert_eq!(status(&r), (400, "BadRequest"));

    // 3 MiB + 1 byte is refused before parsing.
    let mut big = br#"{"metadata":{"name":"big"},"data":{"a":""#.to_vec();
    big.resize(3 * 1024 * 1024 + 1 - 3, b'x');
    big.extend_from_slice(b"\"}}");
    assert_eq!(big.len(), 3 * 1024 * 1024 + 1);
    let r = send(&c, "POST", CMS, json, big).await;
    assert_eq!(status(&r), (413, "RequestEntityTooLarge"));

    // JSON nested 10,000 deep.
    let deep = format!("{{\"metadata\":{{\"name\":\"deep\"}},\"data\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
    let r = send(&c, "POST", CMS, json, deep.into_bytes()).await;
    assert_eq!(status(&r), (400, "BadRequest"));
    let deep_yaml = format!("metadata: {{name: deep}}\ndata: {}{}\n", "[".repeat(10_000), "]".repeat(10_000));
    let r = send(&c, "POST", CMS, "application/yaml", deep_yaml.into_bytes()).await;
    assert_eq!(status(&r), (400, "BadRequest"));

    // Invalid names are 422 with a field cause.
    let r = send(&c, "POST", CMS, json, br#"{"metadata":{"name":"Bad_Name"}}"#.to_vec()).await;
    assert_eq!(status(&r), (422, "Invalid"));
    assert_eq!(r.body["details"]["causes"][0]["field"], "metadata.name");
    let r = send(&c, "POST", CMS, json, br#"{"metadata":{"name":"ok","labels":{"bad key":"v"}}}"#.to_vec()).await;
    assert_eq!(status(&r), (422, "Invalid"));
    let r = send(&c, "POST", CMS, json, br#"{"metadata":{}}"#.to_vec()).await;
    assert_eq!(status(&r), (422, "Invalid"));

    // Unknown and duplicate fields: Strict refuses, Warn accepts with a Warning header.
    let body = br#"{"metadata":{"name":"strict"},"bogus":1}"#.to_vec();
    let r = send(&c, "POST", &format!("{CMS}?fieldValidation=Strict"), json, body.clone()).await;
    assert_eq!(status(&r), (400, "BadRequest"));
    assert!(r.body["message"].as_str().unwrap().contains("unknown field \"bogus\""), "{}", r.body);
    let r = send(
        &c,
        "POST",
        &format!("{CMS}?fieldValidation=Strict"),
        json,
        br#"{"metadata":{"name":"d","name":"d"}}"#.to_vec(),
    )
    .await;
    assert_eq!(status(&r), (400, "BadRequest"));
    assert!(r.body["message"].as_str().unwrap().contains("duplicate field \"metadata.name\""), "{}", r.body);
    let r = send(&c, "POST", &format!("{CMS}?fieldValidation=Warn"), json, body).await;
    assert_eq!(r.code, 201);
    assert!(r.warning.unwrap_or_default().contains("unknown field"), "a Warning header is sent");
    let r = send(
        &c,
        "PATCH",
        &format!("{CMS}/strict?fieldValidation=Strict"),
        "application/merge-patch+json",
        br#"{"spec":{"x":1}}"#.to_vec(),
    )
    .await;
    assert_eq!(status(&r), (422, "Invalid"));
    let r =
        send(&c, "POST", &format!("{CMS}?fieldValidation=Loud"), json, br#"{"metadata":{"name":"x"}}"#.to_vec()).await;
    assert_eq!(status(&r), (400, "BadRequest"));

    // Wrong types are 400; a stale resourceVersion is 409; bad media types 415.
    let r = send(&c, "POST", CMS, json, br#"{"metadata":{"name":"t"},"data":{"a":5}}"#.to_vec()).await;
    assert_eq!(status(&r), (400, "BadRequest"));
    let r = send(
        &c,
        "PUT",
        &format!("{CMS}/strict"),
        json,
        br#"{"metadata":{"name":"strict","resourceVersion":"1"}}"#.to_vec(),
    )
    .await;
    assert_eq!(status(&r), (409, "Conflict"));
    let r = send(&c, "POST", CMS, "text/plain", b"hello".to_vec()).await;
    assert_eq!(status(&r), (415, "UnsupportedMediaType"));
    let r = send(&c, "PATCH", &format!("{CMS}/strict"), "application/json", b"{}".to_vec()).await;
    assert_eq!(status(&r), (415, "UnsupportedMediaType"));
    let r = send(
        &c,
        "PATCH",
        &format!("{CMS}/strict"),
        "application/json-patch+json",
        br#"[{"op":"remove","path":"/nope"}]"#.to_vec(),
    )
    .await;
    assert_eq!(status(&r), (422, "Invalid"));
    let r = send(&c, "PUT", CMS, json, b"{}".to_vec()).await;
    assert_eq!(status(&r), (405, "MethodNotAllowed"));
    let r = send(&c, "GET", "/api/v1/nothings", json, vec![]).await;
    assert_eq!(status(&r), (404, "NotFound"));
    let r = send(&c, "GET", &format!("{CMS}?labelSelector=a%20in%20b"), json, vec![]).await;
    assert_eq!(status(&r), (400, "BadRequest"));
    let r = send(&c, "GET", &format!("{CMS}?continue=garbage&limit=1"), json, vec![]).await;
    assert_eq!(status(&r), (400, "BadRequest"));

    // Nothing half-written: only the two objects that were accepted exist.
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    let mut names: Vec<String> =
        cms.list(&ListParams::default()).await.unwrap().items.into_iter().filter_map(|c| c.metadata.name).collect();
    names.sort();
    assert_eq!(names, ["strict"]);
    let r = send(&c, "GET", "/readyz", json, vec![]).await;
    assert_eq!(r.code, 200, "the server is still up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication() {
    let srv = TestServer::api_only().await;
    // No credentials: only the public health and version paths answer.
    let anon_yaml =
        srv.running.kubeconfig.split("users:").next().unwrap().to_string() + "users:\n- name: default\n  user: {}\n";
    let anon = common::client_from_yaml(&anon_yaml).await;
    assert_eq!(send(&anon, "GET", "/version", "", vec![]).await.code, 200);
    assert_eq!(send(&anon, "GET", "/healthz", "", vec![]).await.code, 200);
    let r = send(&anon, "GET", CMS, "", vec![]).await;
    assert_eq!(status(&r), (401, "Unauthorized"));
    let r = send(&anon, "GET", "/api", "", vec![]).await;
    assert_eq!(r.code, 401);

    // A certificate from another CA, even one naming system:masters, is 401.
    let other = rk::server::tls::foreign_ca().unwrap();
    let stranger = rk::server::tls::issue_client_cert(&other, "system:admin", &["system:masters"]).unwrap();
    let yaml = rk::server::tls::kubeconfig(
        &format!("https://{}", srv.running.addr),
        &srv.running.identity.ca.cert_pem,
        &stranger,
    );
    let c = common::client_from_yaml(&yaml).await;
    let r = send(&c, "GET", CMS, "", vec![]).await;
    assert_eq!(status(&r), (401, "Unauthorized"));

    // The admin certificate works.
    let admin = srv.client().await;
    assert_eq!(send(&admin, "GET", CMS, "", vec![]).await.code, 200);
    let r = send(&admin, "GET", "/readyz?verbose", "", vec![]).await;
    assert!(r.body.as_str().unwrap().contains("readyz check passed"));
}
