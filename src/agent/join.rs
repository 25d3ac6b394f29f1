//! Joining a cluster with a token, k3s style, failing closed.
//!
//! The agent downloads the server CA over an unverified connection, trusts it only if
//! its SHA-256 matches the hash in the `K10<hash>::server:<secret>` token (a token
//! without a hash needs `--ca-file`), and only then sends the token, over a connection
//! verified against that CA, to get its own client certificate (`system:node:<name>`).
//! The resulting kubeconfig is kept under `<data-dir>/agent/` for restarts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use crate::server::tls::{self, CertKey};

/// Accepts any server certificate: used only to fetch the CA, which is then checked
/// against the token before anything is sent.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn insecure_tls() -> anyhow::Result<rustls::ClientConfig> {
    let p = provider();
    Ok(rustls::ClientConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(p)))
        .with_no_client_auth())
}

fn trusting(ca_pem: &str) -> anyhow::Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.context("reading the server CA")?)?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// One HTTPS request; returns the status and body.
async fn https(
    tls: rustls::ClientConfig,
    url: &http::Uri,
    method: http::Method,
    path: &str,
    bearer: Option<&str>,
    body: Bytes,
) -> anyhow::Result<(u16, Bytes)> {
    let host = url.host().context("the server URL has no host")?.trim_matches(['[', ']']).to_string();
    let port = url.port_u16().unwrap_or(6443);
    let tcp =
        tokio::net::TcpStream::connect((host.as_str(), port)).await.with_context(|| format!("connecting to {url}"))?;
    let name = ServerName::try_from(host.clone()).context("the server host name")?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .with_context(|| format!("TLS with {url}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .header("content-type", "application/json");
    if let Some(t) = bearer {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = send.send_request(req.body(Full::new(body))?).await?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((status, bytes))
}

/// The CA hash a `K10` token carries.
pub fn token_ca_hash(token: &str) -> Option<&str> {
    token.strip_prefix("K10")?.split_once("::").map(|(h, _)| h).filter(|h| !h.is_empty())
}

/// Where the agent keeps its kubeconfig (the node's, or with `--simulate` the
/// simulator's).
pub fn kubeconfig_path(data_dir: &Path) -> PathBuf {
    data_dir.join("agent").join("kubeconfig.yaml")
}

/// Where the agent keeps the kubeconfig of its network components.
pub fn network_kubeconfig_path(data_dir: &Path) -> PathBuf {
    data_dir.join("agent").join("network-kubeconfig.yaml")
}

/// An agent's credentials, as kubeconfig texts.
pub struct Credentials {
    /// The node's (`system:node:<name>`), or the simulator's.
    pub node: String,
    /// The network components' (`system:rk-network`).
    pub network: String,
}

/// Joins (or, on restart, reuses the credentials from a previous join, renewing them
/// when they are within 90 days of expiry).
pub async fn join(cfg: &crate::agent::AgentConfig) -> anyhow::Result<Credentials> {
    let path = kubeconfig_path(&cfg.data_dir);
    let net_path = network_kubeconfig_path(&cfg.data_dir);
    let kept = match (std::fs::read_to_string(&path), std::fs::read_to_string(&net_path)) {
        (Ok(node), Ok(network)) => {
            if !tls::kubeconfig_needs_renewal(&node) && !tls::kubeconfig_needs_renewal(&network) {
                return Ok(Credentials { node, network });
            }
            tracing::info!("the node's certificates expire within 90 days (or have): renewing them");
            Some(Credentials { node, network })
        }
        _ => None,
    };
    match fetch_credentials(cfg).await {
        Ok(c) => Ok(c),
        // Renewal can wait for the server if the old credentials still work.
        Err(e) if kept.as_ref().is_some_and(|k| still_valid(&k.node) && still_valid(&k.network)) => {
            tracing::warn!(error = %format!("{e:#}"), "renewing the node's certificates failed; using the old ones");
            Ok(kept.expect("checked above"))
        }
        Err(e) => Err(e),
    }
}

fn still_valid(kubeconfig: &str) -> bool {
    tls::kubeconfig_cert(kubeconfig).is_some_and(|pem| tls::seconds_left(&pem).is_some_and(|s| s > 0))
}

/// Joins the server: fetches and checks its CA, then gets node credentials.
async fn fetch_credentials(cfg: &crate::agent::AgentConfig) -> anyhow::Result<Credentials> {
    let (server, token, node_name, data_dir) = (cfg.server.as_str(), cfg.token.as_str(), &cfg.node_name, &cfg.data_dir);
    let (ca_file, simulate) = (cfg.ca_file.as_deref(), cfg.simulate > 0);
    let path = kubeconfig_path(data_dir);
    let net_path = network_kubeconfig_path(data_dir);
    let url: http::Uri = server.parse().with_context(|| format!("server URL {server:?}"))?;
    if url.scheme_str() != Some("https") {
        bail!("server URL {server:?} must start with https://");
    }
    let hash = token_ca_hash(token);
    let ca_pem = match ca_file {
        Some(f) => std::fs::read_to_string(f).with_context(|| format!("reading --ca-file {}", f.display()))?,
        None => {
            if hash.is_none() {
                bail!("the token carries no CA hash (K10<hash>::server:<secret>): give the server CA with --ca-file");
            }
            tracing::info!(server, "joining: fetching the server's CA");
            let (code, body) = https(insecure_tls()?, &url, http::Method::GET, "/cacerts", None, Bytes::new()).await?;
            if code != 200 {
                bail!("fetching the server CA from {server}: HTTP {code}");
            }
            String::from_utf8(body.to_vec()).context("the server CA is not text")?
        }
    };
    if let Some(h) = hash
        && tls::ca_hash(&ca_pem) != h
    {
        bail!("the server's CA does not match the hash in the token: not joining {server}");
    }
    tracing::info!(server, node = node_name, "joining: the server's CA checks out; asking for node credentials");
    let password = node_password(data_dir)?;
    let body = Bytes::from(serde_json::to_vec(
        &serde_json::json!({"nodeName": node_name, "nodePassword": password, "simulate": simulate}),
    )?);
    let (code, resp) =
        https(trusting(&ca_pem)?, &url, http::Method::POST, "/v1-rk/node-credentials", Some(token), body).await?;
    match code {
        200 => {}
        401 => bail!("the server refused the token"),
        403 => {
            let msg = serde_json::from_slice::<serde_json::Value>(&resp)
                .ok()
                .and_then(|v| v["message"].as_str().map(String::from))
                .unwrap_or_else(|| String::from_utf8_lossy(&resp).to_string());
            bail!("the server refused node name {node_name:?}: {msg}")
        }
        c => bail!("getting node credentials from {server}: HTTP {c}: {}", String::from_utf8_lossy(&resp)),
    }
    let v: serde_json::Value = serde_json::from_slice(&resp).context("decoding node credentials")?;
    let cert = CertKey {
        cert_pem: v["certificate"].as_str().unwrap_or_default().to_string(),
        key_pem: v["key"].as_str().unwrap_or_default().to_string(),
    };
    let net = CertKey {
        cert_pem: v["network"]["certificate"].as_str().unwrap_or_default().to_string(),
        key_pem: v["network"]["key"].as_str().unwrap_or_default().to_string(),
    };
    if cert.cert_pem.is_empty() || net.cert_pem.is_empty() {
        bail!("the server's node credentials lack a certificate");
    }
    let server_url = format!("https://{}", url.authority().map(|a| a.as_str()).unwrap_or_default());
    let kubeconfig = tls::kubeconfig(&server_url, &ca_pem, &cert);
    let network = tls::kubeconfig(&server_url, &ca_pem, &net);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    tls::write_kubeconfig(&path, &kubeconfig, 0o600).context("writing the agent kubeconfig")?;
    tls::write_kubeconfig(&net_path, &network, 0o600).context("writing the network kubeconfig")?;
    tracing::info!(server, node = node_name, "joined the cluster");
    Ok(Credentials { node: kubeconfig, network })
}

/// This host's node password (`<data-dir>/agent/node-password`, made at first join):
/// it proves to the server that a node name is still this host's.
fn node_password(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("agent").join("node-password");
    if let Ok(p) = std::fs::read_to_string(&path)
        && !p.trim().is_empty()
    {
        return Ok(p.trim().to_string());
    }
    let p: String = {
        use rand::Rng;
        let mut rng = rand::rng();
        (0..32).map(|_| format!("{:x}", rng.random_range(0..16u8))).collect()
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    tls::write_private(&path, &p, 0o600).context("writing the node password")?;
    Ok(p)
}

/// A client from a kubeconfig's text.
pub async fn client(kubeconfig: &str) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::from_yaml(kubeconfig)?;
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await?;
    // The field manager Kubernetes records for the kubelet's writes.
    cfg.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(concat!("kubelet/rk-", env!("CARGO_PKG_VERSION"))),
    ));
    Ok(kube::Client::try_from(cfg)?)
}
