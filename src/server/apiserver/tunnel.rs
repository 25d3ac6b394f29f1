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
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::ApiServer;
use super::handlers::Call;
use super::request::{self, Resp};
use crate::api::status::{ApiError, Target};
use crate::server::tls::CertUser;

/// The upgrade token agents ask for.
pub const PROTOCOL: &str = "rk-tunnel";

/// Open tunnels, by node name.
#[derive(Default)]
pub struct Tunnels {
    nodes: Mutex<HashMap<String, (u64, SendRequest<Empty<Bytes>>)>>,
    next: std::sync::atomic::AtomicU64,
}

impl Tunnels {
    fn get(&self, node: &str) -> Option<SendRequest<Empty<Bytes>>> {
        self.nodes.lock().expect("tunnel map").get(node).map(|(_, s)| s.clone()).filter(|s| !s.is_closed())
    }
}

/// The node a certificate user is, if it is one (`system:node:<name>` in `system:nodes`).
fn node_of(user: Option<&CertUser>) -> Option<String> {
    let u = user?;
    if !u.groups.iter().any(|g| g == "system:nodes") {
        return None;
    }
    u.name.strip_prefix("system:node:").map(String::from)
}

impl ApiServer {
    /// `GET /v1-rk/tunnel`: takes over the connection of an agent.
    pub(super) fn accept_tunnel<B>(&self, req: &mut Request<B>, user: Option<&CertUser>) -> Resp {
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
                .handshake::<_, Empty<Bytes>>(upgraded)
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
        let mut send = self
            .tunnels
            .get(node)
            .ok_or_else(|| ApiError::unavailable(format!("no connection to the kubelet of node {node:?}")))?;
        let req = Request::builder()
            .uri(format!("http://kubelet{path_and_query}"))
            .body(Empty::new())
            .map_err(|e| ApiError::internal(format!("building the kubelet request: {e}")))?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| ApiError::unavailable(format!("the kubelet of node {node:?} did not answer: {e}")))?;
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
            pod["spec"][key].as_array().into_iter().flatten().filter_map(|c| c["name"].as_str().map(String::from)).collect()
        };
        let (containers, inits) = (names("containers"), names("initContainers"));
        let container = match call.query.get("container").filter(|c| !c.is_empty()) {
            Some(c) => c.to_string(),
            None if containers.len() == 1 => containers[0].clone(),
            None => {
                let mut msg = format!("a container name must be specified for pod {name}, choose one of: [{}]", containers.join(" "));
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
                return Err(ApiError::bad_request(format!("previous terminated container \"{container}\" in pod \"{name}\" not found")));
            }
        } else if let Some(w) = st["state"].get("waiting")
            && st["lastState"].get("terminated").is_none()
        {
            let reason = w["reason"].as_str().unwrap_or("ContainerCreating");
            return Err(ApiError::bad_request(format!("container \"{container}\" in pod \"{name}\" is waiting to start: {reason}")));
        } else if st.is_null() {
            return Err(ApiError::bad_request(format!("container \"{container}\" in pod \"{name}\" is waiting to start: ContainerCreating")));
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
