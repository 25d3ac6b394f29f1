//! The join endpoints agents use, k3s style: `GET /cacerts` (anonymous; the agent
//! checks the CA against the hash in its token before trusting it) and
//! `POST /v1-rk/node-credentials` (the token as a bearer credential), which answers
//! with a client certificate for `system:node:<name>` in `system:nodes`.

use http::{HeaderMap, Method};
use serde_json::{Value, json};

use super::ApiServer;
use super::request::{self, Resp};
use crate::api::status::ApiError;
use crate::server::tls;

/// The secret part of a join token (`K10<hash>::server:<secret>`, or a bare secret).
pub fn token_secret(token: &str) -> &str {
    token.rsplit_once("::server:").map(|(_, s)| s).unwrap_or(token)
}

/// Compares without an early exit on the first differing byte.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl ApiServer {
    pub(super) fn node_credentials(&self, method: &Method, headers: &HeaderMap, body: &[u8]) -> Result<Resp, ApiError> {
        if method != Method::POST {
            return Err(ApiError::method_not_allowed(method.as_str(), "node credentials"));
        }
        let id = self.identity.get().ok_or_else(|| ApiError::unavailable("the cluster identity is not ready"))?;
        let given = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(token_secret)
            .unwrap_or("");
        if given.is_empty() || !same(given.as_bytes(), token_secret(&id.token).as_bytes()) {
            return Err(ApiError::unauthorized());
        }
        let req: Value =
            serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("decoding the request: {e}")))?;
        let name = req.get("nodeName").and_then(Value::as_str).unwrap_or_default();
        if let Some(e) = crate::api::validation::dns1123_subdomain(name).first() {
            return Err(ApiError::bad_request(format!("nodeName {name:?}: {e}")));
        }
        let cert = tls::issue_client_cert(&id.ca, &format!("system:node:{name}"), &["system:nodes"])
            .map_err(ApiError::internal)?;
        tracing::info!(node = name, "issued node credentials");
        Ok(request::json(200, &json!({"ca": id.ca.cert_pem, "certificate": cert.cert_pem, "key": cert.key_pem})))
    }
}
