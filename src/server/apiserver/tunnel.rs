//! Reaching kubelets: each agent dials the server (`GET /v1-rk/tunnel`, upgraded,
//! authenticated by its node certificate) and then serves its kubelet API as an
//! HTTP/2 server over that connection, with the API server as the HTTP/2 client. So
//! the server reaches every node, even one it could not dial (NAT, firewalls), as
//! k3s's remotedialer tunnel does; and only the API server ever talks to the kubelet
//! API this way. `pods/log` (and later exec, attach, port-forward) go through it.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::ApiServer;
use super::handlers::Call;
use super::request::{self, Resp};
use crate::api::status::{ApiError, Target};
use crate::server::auth::User;

/// The header carrying an upgrade request's headers to the kubelet, and the
/// runtime's answer back.
pub const UPGRADE_META: &str = "x-rk-upgrade";

/// The upgrade token agents ask for.
pub const PROTOCOL: &str = "rk-tunnel";

/// Open tunnels, by node name.
#[derive(Default)]
pub struct Tunnels {
    nodes: Mutex<HashMap<String, (u64, SendRequest<request::Body>)>>,
    next: std::sync::atomic::AtomicU64,
}

impl Tunnels {
    fn get(&self, node: &str) -> Option<SendRequest<request::Body>> {
        self.nodes.lock().expect("tunnel map").get(node).map(|(_, s)| s.clone()).filter(|s| !s.is_closed())
    }
}

/// The node a certificate user is, if it is one (`system:node:<name>` in `system:nodes`).
fn node_of(user: Option<&User>) -> Option<String> {
    user?.node().map(String::from)
}

impl ApiServer {
    /// `GET /v1-rk/tunnel`: takes over the connection of an agent.
    pub(super) fn accept_tunnel<B>(&self, req: &mut Request<B>, user: Option<&User>) -> Resp {
        let Some(node) = node_of(user) else {
            return request::error(&ApiError::forbidden(
                Target { group: "", resource: "nodes/proxy", name: "" },
                "only nodes may open a tunnel",
            ));
        };
        let asks = req.headers().get(http::header::UPGRADE).and_then(|v| v.to_str().ok()) == Some(PROTOCOL);
        if !asks {
            return request::error(&ApiError::bad_request(format!("expected Upgrade: {PROTOCOL}")));
        }
        let on_upgrade = hyper::upgrade::on(req);
        let Some(api) = self.me.upgrade() else {
            return request::error(&ApiError::unavailable("shutting down"));
        };
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(node, error = %e, "tunnel upgrade failed");
                    return;
                }
            };
            let (send, conn) = match hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(hyper_util::rt::TokioTimer::new())
                .keep_alive_interval(std::time::Duration::from_secs(15))
                .keep_alive_timeout(std::time::Duration::from_secs(20))
                .handshake::<_, request::Body>(upgraded)
                .await
            {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(node, error = %e, "tunnel handshake failed");
                    return;
                }
            };
            let id = api.tunnels.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            api.tunnels.nodes.lock().expect("tunnel map").insert(node.clone(), (id, send));
            tracing::info!(node, "kubelet tunnel open");
            if let Err(e) = conn.await {
                tracing::debug!(node, error = %e, "kubelet tunnel closed");
            }
            let mut map = api.tunnels.nodes.lock().expect("tunnel map");
            if map.get(&node).is_some_and(|(i, _)| *i == id) {
                map.remove(&node);
            }
        });
        let mut resp = request::bytes_response(101, "text/plain", Bytes::new());
        resp.headers_mut().remove(http::header::CONTENT_TYPE);
        resp.headers_mut().insert(http::header::UPGRADE, http::HeaderValue::from_static(PROTOCOL));
        resp.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("Upgrade"));
        resp
    }

    /// Sends a GET to a node's kubelet API and streams the answer back.
    async fn kubelet_get(&self, node: &str, path_and_query: &str) -> Result<Resp, ApiError> {
        let empty = Empty::new().map_err(|n| match n {}).boxed_unsync();
        let resp = self.kubelet_send(node, http::Method::GET, path_and_query, vec![], empty).await?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let msg = String::from_utf8_lossy(&text).trim().to_string();
            return Err(match status.as_u16() {
                404 => ApiError::bad_request(msg),
                400 => ApiError::bad_request(msg),
                _ => ApiError::internal(msg),
            });
        }
        let ct = resp.headers().get(http::header::CONTENT_TYPE).cloned();
        let body = resp.into_body().map_err(std::io::Error::other).boxed_unsync();
        let mut out = Response::new(body);
        if let Some(ct) = ct {
            out.headers_mut().insert(http::header::CONTENT_TYPE, ct);
        }
        Ok(out)
    }

    /// GET `nodes/<name>/proxy/<path>`: the node's kubelet API (`/stats/summary`, ...).
    pub(super) async fn node_proxy(&self, node: &str, path_and_query: &str) -> Result<Resp, ApiError> {
        let def = self.reg().get("", "v1", "nodes").ok_or_else(ApiError::no_route)?;
        let exists =
            self.store.get(&def.key(None, node)).await.map_err(|e| ApiError::internal(e.to_string()))?.is_some();
        if !exists {
            return Err(ApiError::not_found(Target { group: "", resource: "nodes", name: node }));
        }
        self.kubelet_get(node, path_and_query).await
    }

    /// Sends a request to a node's kubelet API.
    async fn kubelet_send(
        &self,
        node: &str,
        method: http::Method,
        path_and_query: &str,
        headers: Vec<(http::HeaderName, http::HeaderValue)>,
        body: request::Body,
    ) -> Result<Response<hyper::body::Incoming>, ApiError> {
        let mut send = self
            .tunnels
            .get(node)
            .ok_or_else(|| ApiError::unavailable(format!("no connection to the kubelet of node {node:?}")))?;
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://kubelet{path_and_query}"))
            .body(body)
            .map_err(|e| ApiError::internal(format!("building the kubelet request: {e}")))?;
        req.headers_mut().extend(headers);
        send.send_request(req)
            .await
            .map_err(|e| ApiError::unavailable(format!("the kubelet of node {node:?} did not answer: {e}")))
    }

    /// `pods/<name>/exec|attach|portforward`: the upgrade kubectl asks for (WebSocket,
    /// or SPDY on its fallback) is carried through the tunnel to the kubelet, which
    /// hands it to the runtime's streaming server; the bytes after the upgrade are
    /// piped both ways untouched, as kube-apiserver's upgrade-aware proxy does.
    pub(super) async fn pod_stream<B>(
        &self,
        req: &mut Request<B>,
        sub: &str,
        ns: &str,
        name: &str,
    ) -> Result<Resp, ApiError> {
        let def = self.reg().get("", "v1", "pods").ok_or_else(ApiError::no_route)?;
        let kv = self
            .store
            .get(&def.key(Some(ns), name))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .ok_or_else(|| ApiError::not_found(Target { group: "", resource: "pods", name }))?;
        let pod: Value = serde_json::from_slice(&kv.value).map_err(|e| ApiError::internal(e.to_string()))?;
        let Some(node) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()).map(String::from) else {
            return Err(ApiError::bad_request(format!("pod {name} does not have a host assigned")));
        };
        let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
        if matches!(phase, "Succeeded" | "Failed") {
            return Err(ApiError::bad_request(format!(
                "cannot exec into a container in a completed pod; current phase is {phase}"
            )));
        }
        let query: Vec<(String, String)> =
            form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()).into_owned().collect();
        let uid = pod["metadata"]["uid"].as_str().unwrap_or_default().to_string();
        let path = if sub == "portforward" {
            format!("/portForward/{ns}/{name}")
        } else {
            let containers: Vec<String> = pod["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(pod["spec"]["initContainers"].as_array().into_iter().flatten())
                .filter_map(|c| c["name"].as_str().map(String::from))
                .collect();
            let container = match query.iter().find(|(k, _)| k == "container").map(|(_, v)| v.clone()) {
                Some(c) => c,
                None => containers.first().cloned().unwrap_or_default(),
            };
            if !containers.contains(&container) {
                return Err(ApiError::bad_request(format!("container {container} is not valid for pod {name}")));
            }
            if sub == "exec" && !query.iter().any(|(k, _)| k == "command") {
                return Err(ApiError::bad_request("you must specify at least 1 command"));
            }
            format!("/{sub}/{ns}/{name}/{container}")
        };
        let qs = {
            let mut q = form_urlencoded::Serializer::new(String::new());
            for (k, v) in &query {
                q.append_pair(k, v);
            }
            q.append_pair("podUID", &uid);
            q.finish()
        };
        let path = format!("{path}?{qs}");
        // The upgrade request's own headers travel as one JSON header: HTTP/2 cannot
        // carry Connection or Upgrade.
        let fwd: Vec<(String, String)> = req
            .headers()
            .iter()
            .filter(|(k, _)| {
                let k = k.as_str();
                k == "connection"
                    || k == "upgrade"
                    || k.starts_with("sec-websocket")
                    || k.starts_with("x-stream-protocol")
            })
            .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.to_string(), v.to_string())))
            .collect();
        let meta = serde_json::to_string(&serde_json::json!({"method": req.method().as_str(), "headers": fwd}))
            .unwrap_or_default();
        let header =
            http::HeaderValue::from_str(&meta).map_err(|_| ApiError::bad_request("invalid upgrade headers"))?;
        let on_upgrade = hyper::upgrade::on(&mut *req);
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
        let up = StreamBody::new(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, std::io::Error>(hyper::body::Frame::data(b)), rx))
        }))
        .boxed_unsync();
        let resp = self
            .kubelet_send(
                &node,
                http::Method::POST,
                &path,
                vec![(http::HeaderName::from_static(UPGRADE_META), header)],
                up,
            )
            .await?;
        let answer: Value = resp
            .headers()
            .get(UPGRADE_META)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| serde_json::from_str(v).ok())
            .unwrap_or(Value::Null);
        let code = answer["status"].as_u64().unwrap_or(resp.status().as_u16() as u64) as u16;
        let mut out_headers = http::HeaderMap::new();
        for h in answer["headers"].as_array().into_iter().flatten() {
            if let (Some(k), Some(v)) = (h[0].as_str(), h[1].as_str())
                && let (Ok(k), Ok(v)) = (http::HeaderName::from_bytes(k.as_bytes()), http::HeaderValue::from_str(v))
            {
                out_headers.append(k, v);
            }
        }
        if code != 101 {
            let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let ct = out_headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("text/plain")
                .to_string();
            let mut r = request::bytes_response(code, &ct, body);
            for (k, v) in out_headers.iter().filter(|(k, _)| k.as_str().starts_with("x-")) {
                r.headers_mut().append(k.clone(), v.clone());
            }
            return Ok(r);
        }
        let down = resp.into_body();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let Ok(upgraded) = on_upgrade.await else { return };
            let io = hyper_util::rt::TokioIo::new(upgraded);
            let (mut rd, mut wr) = tokio::io::split(io);
            let upstream = async move {
                let mut buf = vec![0u8; 32 << 10];
                loop {
                    match rd.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            };
            let downstream = async move {
                let mut down = down;
                while let Some(f) = down.frame().await {
                    let Ok(f) = f else { break };
                    if let Ok(d) = f.into_data()
                        && wr.write_all(&d).await.is_err()
                    {
                        break;
                    }
                }
                let _ = wr.shutdown().await;
            };
            // The session ends when the runtime side ends (it sends its close frames).
            tokio::select! {
                _ = downstream => {}
                _ = async { upstream.await; std::future::pending::<()>().await } => {}
            }
        });
        let mut r = request::bytes_response(101, "text/plain", Bytes::new());
        r.headers_mut().remove(http::header::CONTENT_TYPE);
        for (k, v) in out_headers.iter() {
            r.headers_mut().append(k.clone(), v.clone());
        }
        Ok(r)
    }

    /// GET `pods/<name>/log`: checked here as the API server does, then read from the kubelet.
    pub(super) async fn pod_log(&self, call: &Call) -> Result<Resp, ApiError> {
        let name = call.name.clone().unwrap_or_default();
        let ns = call.ns.clone().unwrap_or_default();
        let kv = self
            .store
            .get(&call.def.key(Some(&ns), &name))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .ok_or_else(|| ApiError::not_found(Target { group: "", resource: "pods", name: &name }))?;
        let pod: Value = serde_json::from_slice(&kv.value).map_err(|e| ApiError::internal(e.to_string()))?;
        let names = |key: &str| -> Vec<String> {
            pod["spec"][key]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["name"].as_str().map(String::from))
                .collect()
        };
        let (containers, inits) = (names("containers"), names("initContainers"));
        let container = match call.query.get("container").filter(|c| !c.is_empty()) {
            Some(c) => c.to_string(),
            None if containers.len() == 1 => containers[0].clone(),
            None => {
                let mut msg = format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    containers.join(" ")
                );
                if !inits.is_empty() {
                    msg.push_str(&format!(" or one of the init containers: [{}]", inits.join(" ")));
                }
                return Err(ApiError::bad_request(msg));
            }
        };
        if !containers.contains(&container) && !inits.contains(&container) {
            return Err(ApiError::bad_request(format!("container {container} is not valid for pod {name}")));
        }
        let Some(node) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) else {
            return Err(ApiError::bad_request(format!("pod {name} does not have a host assigned")));
        };
        let previous = call.query.flag("previous");
        let st = pod["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .chain(pod["status"]["initContainerStatuses"].as_array())
            .flatten()
            .find(|s| s["name"] == container.as_str())
            .cloned()
            .unwrap_or(Value::Null);
        if previous {
            if st["lastState"].get("terminated").is_none() {
                return Err(ApiError::bad_request(format!(
                    "previous terminated container \"{container}\" in pod \"{name}\" not found"
                )));
            }
        } else if let Some(w) = st["state"].get("waiting")
            && st["lastState"].get("terminated").is_none()
        {
            let reason = w["reason"].as_str().unwrap_or("ContainerCreating");
            return Err(ApiError::bad_request(format!(
                "container \"{container}\" in pod \"{name}\" is waiting to start: {reason}"
            )));
        } else if st.is_null() {
            return Err(ApiError::bad_request(format!(
                "container \"{container}\" in pod \"{name}\" is waiting to start: ContainerCreating"
            )));
        }
        let query = {
            let mut q = form_urlencoded::Serializer::new(String::new());
            for k in ["follow", "previous", "timestamps", "tailLines", "sinceSeconds", "sinceTime", "limitBytes"] {
                if let Some(v) = call.query.get(k) {
                    q.append_pair(k, v);
                }
            }
            q.append_pair("podUID", pod["metadata"]["uid"].as_str().unwrap_or_default());
            q.finish()
        };
        let path = format!("/containerLogs/{ns}/{name}/{container}?{query}");
        let mut resp = self.kubelet_get(node, &path).await?;
        resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
        Ok(resp)
    }
}
