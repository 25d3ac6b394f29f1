//! The join endpoints agents use, k3s style: `GET /cacerts` (anonymous; the agent
//! checks the CA against the hash in its token before trusting it) and
//! `POST /v1-rk/node-credentials` (the token as a bearer credential), which answers
//! with a client certificate for `system:node:<name>` in `system:nodes`.
//!
//! As k3s does, a node name belongs to the host that first joined with it: the agent
//! sends a password it keeps in its data dir, the server keeps its hash in the Secret
//! `kube-system/<node>.node-password.rk`, and a join for that name with another
//! password is refused (delete the Secret to let a new host take the name).

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

/// The bootstrap token in a join token (`K10<hash>::<id>.<secret>`, or bare).
fn bootstrap_token(token: &str) -> Option<(&str, &str)> {
    crate::server::auth::bootstrap::parse(token)
}

/// Compares without an early exit on the first differing byte.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl ApiServer {
    pub(super) async fn node_credentials(
        self: &std::sync::Arc<Self>,
        method: &Method,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Resp, ApiError> {
        if method != Method::POST {
            return Err(ApiError::method_not_allowed(method.as_str(), "node credentials"));
        }
        let id = self.identity.get().ok_or_else(|| ApiError::unavailable("the cluster identity is not ready"))?;
        let token = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let given = token.map(token_secret).unwrap_or("");
        let server_token = !given.is_empty() && same(given.as_bytes(), token_secret(&id.token).as_bytes());
        if !server_token {
            // A bootstrap token (`rk token create`) is as good, while it lasts.
            let Some((tid, secret)) = token.and_then(bootstrap_token) else { return Err(ApiError::unauthorized()) };
            if let Err(why) = self.bootstrap_user(tid, secret).await {
                tracing::info!(%why, "refused a join");
                return Err(ApiError::unauthorized());
            }
        }
        let req: Value =
            serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("decoding the request: {e}")))?;
        let name = req.get("nodeName").and_then(Value::as_str).unwrap_or_default();
        if let Some(e) = crate::api::validation::dns1123_subdomain(name).first() {
            return Err(ApiError::bad_request(format!("nodeName {name:?}: {e}")));
        }
        let password = req.get("nodePassword").and_then(Value::as_str).unwrap_or_default();
        if password.is_empty() {
            return Err(ApiError::bad_request("nodePassword is required"));
        }
        let simulate = req.get("simulate").and_then(Value::as_bool).unwrap_or(false);
        self.check_node_password(name, password).await?;
        let cert = if simulate {
            // `rk agent --simulate` acts for many nodes at once, as its own user.
            tls::issue_client_cert(&id.ca, crate::server::auth::policy::SIMULATOR_USER, &[])
        } else {
            tls::issue_client_cert(&id.ca, &format!("system:node:{name}"), &[crate::server::auth::NODES])
        }
        .map_err(ApiError::internal)?;
        // The agent's network components (service proxy, DNS, ingress, network policy)
        // act as their own user, with the rights k3s gives its agent controller.
        let network = tls::issue_client_cert(&id.ca, crate::server::auth::policy::NETWORK_USER, &[])
            .map_err(ApiError::internal)?;
        tracing::info!(node = name, simulate, "issued node credentials");
        Ok(request::json(
            200,
            &json!({"ca": id.ca.cert_pem, "certificate": cert.cert_pem, "key": cert.key_pem,
                    "network": {"certificate": network.cert_pem, "key": network.key_pem}}),
        ))
    }

    /// Records the password of a new node name, or checks it against the recorded one.
    async fn check_node_password(self: &std::sync::Arc<Self>, node: &str, password: &str) -> Result<(), ApiError> {
        use base64::Engine;
        use sha2::Digest;
        let hash = format!("{:x}", sha2::Sha256::digest(password.as_bytes()));
        let secret = format!("{node}.node-password.rk");
        let def = self.reg().get("", "v1", "secrets").ok_or_else(ApiError::no_route)?;
        let existing = self
            .store
            .get(&def.key(Some("kube-system"), &secret))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let b64 = base64::engine::general_purpose::STANDARD;
        match existing {
            Some(kv) => {
                let v: Value = serde_json::from_slice(&kv.value).map_err(|e| ApiError::internal(e.to_string()))?;
                let stored = v["data"]["hash"].as_str().and_then(|h| b64.decode(h).ok()).unwrap_or_default();
                if !same(&stored, hash.as_bytes()) {
                    tracing::warn!(node, "refused a join: the node name belongs to another host");
                    return Err(ApiError::forbidden(
                        crate::api::status::Target { group: "", resource: "nodes", name: node },
                        format!(
                            "node password rejected: the node name {node:?} belongs to another host \
                             (delete secret kube-system/{secret} to give the name to a new host)"
                        ),
                    ));
                }
                Ok(())
            }
            None => {
                let obj = json!({
                    "metadata": {"name": secret, "namespace": "kube-system", "labels": {"rk.io/node-password": "true"}},
                    "type": "rk.io/node-password",
                    "immutable": true,
                    "data": {"hash": b64.encode(hash.as_bytes())},
                });
                self.ensure("", "secrets", Some("kube-system"), obj).await
            }
        }
    }
}
