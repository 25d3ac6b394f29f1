//! The agent's end of the kubelet tunnel: dial the server with the node's
//! credentials, upgrade to `rk-tunnel`, then serve the kubelet API as an HTTP/2
//! server on that connection; redial with a back-off whenever it drops.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_util::sync::CancellationToken;

use super::kubelet::pod_worker::NodeCtx;

/// Server URL and TLS settings from an agent kubeconfig.
fn from_kubeconfig(kubeconfig: &str) -> anyhow::Result<(http::Uri, rustls::ClientConfig)> {
    let v: serde_norway::Value = serde_norway::from_str(kubeconfig).context("reading the agent kubeconfig")?;
    let field = |path: &[&str]| -> anyhow::Result<String> {
        let mut cur = &v;
        for p in path {
            cur = match p.parse::<usize>() {
                Ok(i) => cur.get(i),
                Err(_) => cur.get(*p),
            }
            .with_context(|| format!("the agent kubeconfig has no {}", path.join(".")))?;
        }
        cur.as_str().map(String::from).with_context(|| format!("{} is not a string", path.join(".")))
    };
    let b64 = |s: String| {
        base64::engine::general_purpose::STANDARD.decode(s.trim()).context("base64 in the agent kubeconfig")
    };
    let server: http::Uri = field(&["clusters", "0", "cluster", "server"])?.parse()?;
    let ca = b64(field(&["clusters", "0", "cluster", "certificate-authority-data"])?)?;
    let cert = b64(field(&["users", "0", "user", "client-certificate-data"])?)?;
    let key = b64(field(&["users", "0", "user", "client-key-data"])?)?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&ca) {
        roots.add(c?)?;
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert).collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(&key).context("the node key")?;
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    Ok((server, tls))
}

/// Keeps the tunnel up until `shutdown`.
pub async fn run(kubeconfig: String, ctx: Arc<NodeCtx>, shutdown: CancellationToken) {
    let (server, tls) = match from_kubeconfig(&kubeconfig) {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "the kubelet tunnel cannot start");
            return;
        }
    };
    let tls = Arc::new(tls);
    let mut backoff = Duration::from_millis(200);
    loop {
        let t0 = std::time::Instant::now();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = dial(&server, tls.clone(), ctx.clone()) => match r {
                Ok(()) => tracing::info!("kubelet tunnel closed; redialling"),
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "kubelet tunnel failed; redialling"),
            },
        }
        if t0.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(200);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

async fn dial(server: &http::Uri, tls: Arc<rustls::ClientConfig>, ctx: Arc<NodeCtx>) -> anyhow::Result<()> {
    let host = server.host().context("the server URL has no host")?.trim_matches(['[', ']']).to_string();
    let port = server.port_u16().unwrap_or(6443);
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .with_context(|| format!("connecting to {server}"))?;
    let _ = tcp.set_nodelay(true);
    let stream = tokio_rustls::TlsConnector::from(tls).connect(ServerName::try_from(host.clone())?, tcp).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let req = http::Request::builder()
        .uri("/v1-rk/tunnel")
        .header(http::header::HOST, host)
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, crate::server::apiserver::tunnel::PROTOCOL)
        .body(Empty::new())?;
    let resp = send.send_request(req).await?;
    if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        bail!("the server refused the tunnel: HTTP {}", resp.status());
    }
    let upgraded = hyper::upgrade::on(resp).await?;
    tracing::info!("kubelet tunnel up");
    let svc = hyper::service::service_fn(move |req| super::kubelet::api::handle(ctx.clone(), req));
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(15))
        .keep_alive_timeout(Duration::from_secs(20))
        .serve_connection(upgraded, svc)
        .await?;
    Ok(())
}
