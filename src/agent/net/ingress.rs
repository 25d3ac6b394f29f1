//! The Ingress controller, native and on every node: HTTP on port 80 and HTTPS on
//! 443 for the Ingresses of class `rk` (the default class; Ingresses without a class
//! are ours too), proxied straight to the ready endpoints of the backend Service.
//!
//! - Rules by host (exact, then `*.domain` wildcards for one label, then rules without
//!   a host) and path (`Exact`, `Prefix` element-wise, `ImplementationSpecific` as
//!   Prefix); the longest path wins, Exact before Prefix; then `defaultBackend`;
//!   else 404. A backend without ready endpoints answers 503.
//! - TLS from the Secrets the Ingresses name, chosen by SNI (a self-signed default
//!   certificate otherwise), ALPN h2 and http/1.1.
//! - `X-Forwarded-For` / `-Proto` / `-Host` / `-Port` and `X-Real-IP` to the backend;
//!   WebSocket (and any HTTP/1.1 Upgrade) is passed through.
//! - The routing table is rebuilt on every change and swapped in; connections already
//!   open keep going.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};
use kube::runtime::reflector::{ObjectRef, Store};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// The IngressClass rk serves.
pub const CLASS: &str = "rk";
/// Its controller name.
pub const CONTROLLER: &str = "rk.io/ingress";

type Body = BoxBody<Bytes, hyper::Error>;

/// Where the controller reads from.
pub struct Sources {
    pub ingresses: Store<Ingress>,
    pub services: Store<Service>,
    pub slices: Store<EndpointSlice>,
    pub secrets: Store<Secret>,
}

#[derive(Clone, Debug, PartialEq)]
enum PathKind {
    Exact,
    Prefix,
}

#[derive(Clone, Debug)]
struct Route {
    host: String,
    path: String,
    kind: PathKind,
    ns: String,
    backend: IngressBackend,
}

/// The routing table: routes, the default backend, the TLS certificates by host, and
/// the ready endpoints of every backend the routes name (resolved when the table is
/// built, not per request).
#[derive(Default)]
pub struct Table {
    routes: Vec<Route>,
    default: Option<(String, IngressBackend)>,
    certs: HashMap<String, Arc<CertifiedKey>>,
    endpoints: HashMap<(String, String), Vec<SocketAddr>>,
}

/// The key of a backend in `Table::endpoints`: namespace and `service:port`.
fn backend_key(ns: &str, b: &IngressBackend) -> Option<(String, String)> {
    let sb = b.service.as_ref()?;
    let port = sb.port.as_ref()?;
    let p = port.number.map(|n| n.to_string()).or_else(|| port.name.clone())?;
    Some((ns.to_string(), format!("{}:{p}", sb.name)))
}

fn ours(i: &Ingress) -> bool {
    match i.spec.as_ref().and_then(|s| s.ingress_class_name.as_deref()) {
        None => i
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("kubernetes.io/ingress.class"))
            .is_none_or(|c| c == CLASS),
        Some(c) => c == CLASS,
    }
}

fn certified(secret: &Secret) -> Option<Arc<CertifiedKey>> {
    let data = secret.data.as_ref()?;
    let crt = &data.get("tls.crt")?.0;
    let key = &data.get("tls.key")?.0;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(crt).collect::<Result<_, _>>().ok()?;
    let key = PrivateKeyDer::from_pem_slice(key).ok()?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).ok()?;
    Some(Arc::new(CertifiedKey::new(chain, signer)))
}

impl Table {
    /// The table for the Ingresses of class `rk`, oldest first.
    pub fn build(s: &Sources) -> Table {
        let mut ings: Vec<Arc<Ingress>> = s.ingresses.state().into_iter().filter(|i| ours(i)).collect();
        ings.sort_by(|a, b| {
            (a.metadata.creation_timestamp.as_ref().map(|t| t.0), &a.metadata.namespace, &a.metadata.name).cmp(&(
                b.metadata.creation_timestamp.as_ref().map(|t| t.0),
                &b.metadata.namespace,
                &b.metadata.name,
            ))
        });
        let mut t = Table::default();
        for ing in &ings {
            let ns = ing.metadata.namespace.clone().unwrap_or_default();
            let Some(spec) = &ing.spec else { continue };
            if t.default.is_none() {
                t.default = spec.default_backend.clone().map(|b| (ns.clone(), b));
            }
            for tls in spec.tls.iter().flatten() {
                let Some(name) = &tls.secret_name else { continue };
                let Some(secret) = s.secrets.get(&ObjectRef::new(name).within(&ns)) else { continue };
                let Some(ck) = certified(&secret) else {
                    tracing::warn!(secret = %format!("{ns}/{name}"), "the Ingress TLS Secret has no usable tls.crt/tls.key");
                    continue;
                };
                for h in tls.hosts.iter().flatten() {
                    t.certs.entry(h.to_ascii_lowercase()).or_insert_with(|| ck.clone());
                }
            }
            for rule in spec.rules.iter().flatten() {
                let host = rule.host.clone().unwrap_or_default().to_ascii_lowercase();
                for p in rule.http.iter().flat_map(|h| h.paths.iter()) {
                    let kind = if p.path_type == "Exact" { PathKind::Exact } else { PathKind::Prefix };
                    let path = p.path.clone().unwrap_or_else(|| "/".into());
                    t.routes.push(Route { host: host.clone(), path, kind, ns: ns.clone(), backend: p.backend.clone() });
                }
            }
        }
        let backends: Vec<(String, IngressBackend)> =
            t.routes.iter().map(|r| (r.ns.clone(), r.backend.clone())).chain(t.default.clone()).collect();
        for (ns, b) in backends {
            if let Some(key) = backend_key(&ns, &b) {
                if !t.endpoints.contains_key(&key) {
                    t.endpoints.insert(key, endpoints(s, &ns, &b));
                }
            }
        }
        t
    }

    /// A ready endpoint of a backend, chosen at random.
    fn endpoint(&self, ns: &str, b: &IngressBackend) -> Option<SocketAddr> {
        let addrs = self.endpoints.get(&backend_key(ns, b)?)?;
        (!addrs.is_empty()).then(|| addrs[rand::random_range(0..addrs.len())])
    }

    fn route(&self, host: &str, path: &str) -> Option<(&str, &IngressBackend)> {
        let host = host.to_ascii_lowercase();
        let wildcard =
            |h: &str| h.strip_prefix("*.").is_some_and(|d| host.split_once('.').is_some_and(|(_, rest)| rest == d));
        let groups: [&dyn Fn(&str) -> bool; 3] = [&|h| h == host, &|h| wildcard(h), &|h| h.is_empty()];
        for g in groups {
            let best = self
                .routes
                .iter()
                .filter(|r| g(&r.host))
                .filter(|r| path_matches(r, path))
                .max_by_key(|r| (r.path.trim_end_matches('/').len(), r.kind == PathKind::Exact));
            if let Some(r) = best {
                return Some((&r.ns, &r.backend));
            }
        }
        self.default.as_ref().map(|(ns, b)| (ns.as_str(), b))
    }

    fn cert(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let sni = sni?.to_ascii_lowercase();
        if let Some(c) = self.certs.get(&sni) {
            return Some(c.clone());
        }
        let (_, rest) = sni.split_once('.')?;
        self.certs.get(&format!("*.{rest}")).cloned()
    }
}

fn path_matches(r: &Route, path: &str) -> bool {
    match r.kind {
        PathKind::Exact => path == r.path,
        PathKind::Prefix => {
            let p = r.path.trim_end_matches('/');
            p.is_empty() || path == p || path.strip_prefix(p).is_some_and(|rest| rest.starts_with('/'))
        }
    }
}

/// The ready endpoints of the backend's Service port.
fn endpoints(s: &Sources, ns: &str, b: &IngressBackend) -> Vec<SocketAddr> {
    resolve(s, ns, b).unwrap_or_default()
}

fn resolve(s: &Sources, ns: &str, b: &IngressBackend) -> Option<Vec<SocketAddr>> {
    let sb = b.service.as_ref()?;
    let svc = s.services.get(&ObjectRef::new(&sb.name).within(ns))?;
    let port = sb.port.as_ref()?;
    let sp = svc.spec.as_ref()?.ports.as_ref()?.iter().find(|p| match (&port.number, &port.name) {
        (Some(n), _) => p.port == *n,
        (None, Some(name)) => p.name.as_deref() == Some(name.as_str()),
        _ => false,
    })?;
    let pname = sp.name.clone().unwrap_or_default();
    let mut addrs = Vec::new();
    for sl in super::slices_of(&s.slices, ns, &sb.name) {
        let Some(tp) =
            sl.ports.iter().flatten().find(|p| p.name.as_deref().unwrap_or("") == pname).and_then(|p| p.port)
        else {
            continue;
        };
        for e in &sl.endpoints {
            if e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true) {
                addrs.extend(
                    e.addresses
                        .iter()
                        .filter_map(|a| a.parse::<std::net::IpAddr>().ok())
                        .map(|ip| SocketAddr::new(ip, tp as u16)),
                );
            }
        }
    }
    Some(addrs)
}

struct Resolver {
    table: Arc<RwLock<Arc<Table>>>,
    fallback: Arc<CertifiedKey>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ingress cert resolver")
    }
}

impl rustls::server::ResolvesServerCert for Resolver {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let t = self.table.read().ok()?.clone();
        t.cert(hello.server_name()).or_else(|| Some(self.fallback.clone()))
    }
}

fn fallback_cert() -> anyhow::Result<Arc<CertifiedKey>> {
    let ck = rcgen::generate_simple_self_signed(vec!["rk-ingress-default".to_string()])?;
    let key = PrivateKeyDer::from_pem_slice(ck.signing_key.serialize_pem().as_bytes())?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)?;
    Ok(Arc::new(CertifiedKey::new(vec![ck.cert.der().clone()], signer)))
}

fn text(status: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{msg}\n"))).map_err(|never| match never {}).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

const HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

struct Conn {
    table: Arc<RwLock<Arc<Table>>>,
    peer: SocketAddr,
    local_port: u16,
    tls: bool,
}

async fn handle(mut req: Request<Incoming>, c: Arc<Conn>) -> Result<Response<Body>, Infallible> {
    let host_header = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).map(String::from))
        .unwrap_or_default();
    let host =
        host_header.rsplit_once(':').filter(|(_, p)| p.parse::<u16>().is_ok()).map_or(host_header.as_str(), |(h, _)| h);
    let table = c.table.read().map(|t| t.clone()).unwrap_or_default();
    let Some((ns, backend)) = table.route(host, req.uri().path()) else {
        return Ok(text(StatusCode::NOT_FOUND, "404 page not found"));
    };
    let Some(addr) = table.endpoint(ns, backend) else {
        return Ok(text(StatusCode::SERVICE_UNAVAILABLE, "503 no endpoints available for the backend service"));
    };
    let upgrade = req.headers().get(http::header::UPGRADE).cloned();
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));

    // The request to the backend: HTTP/1.1, origin-form, hop-by-hop headers dropped.
    let (parts, body) = req.into_parts();
    let pq = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
    let mut up = Request::builder().method(parts.method.clone()).uri(pq).version(http::Version::HTTP_11);
    let headers = up.headers_mut().expect("builder");
    for (k, v) in &parts.headers {
        if !HOP.contains(&k.as_str()) {
            headers.append(k, v.clone());
        }
    }
    if let Some(u) = &upgrade {
        headers.insert(http::header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(http::header::UPGRADE, u.clone());
    }
    if let Ok(v) = HeaderValue::from_str(&host_header) {
        headers.insert(http::header::HOST, v.clone());
        headers.insert("x-forwarded-host", v);
    }
    let peer_ip = c.peer.ip().to_string();
    let xff = match parts.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {peer_ip}"),
        None => peer_ip.clone(),
    };
    for (k, v) in [
        ("x-forwarded-for", xff),
        ("x-real-ip", peer_ip),
        ("x-forwarded-proto", if c.tls { "https" } else { "http" }.to_string()),
        ("x-forwarded-port", c.local_port.to_string()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&v) {
            headers.insert(k, v);
        }
    }
    let Ok(up) = up.body(body) else { return Ok(text(StatusCode::BAD_REQUEST, "400 bad request")) };

    let stream = match tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        _ => return Ok(text(StatusCode::BAD_GATEWAY, "502 bad gateway")),
    };
    let _ = stream.set_nodelay(true);
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(stream)).await
    else {
        return Ok(text(StatusCode::BAD_GATEWAY, "502 bad gateway"));
    };
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let mut resp = match sender.send_request(up).await {
        Ok(r) => r,
        Err(_) => return Ok(text(StatusCode::BAD_GATEWAY, "502 bad gateway")),
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let backend_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                if let (Ok(a), Ok(b)) = (client_upgrade.await, backend_upgrade.await) {
                    let (mut a, mut b) = (TokioIo::new(a), TokioIo::new(b));
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                }
            });
        }
        let (parts, _) = resp.into_parts();
        return Ok(Response::from_parts(parts, Full::new(Bytes::new()).map_err(|never| match never {}).boxed()));
    }
    let (mut parts, body) = resp.into_parts();
    for h in HOP {
        parts.headers.remove(h);
    }
    Ok(Response::from_parts(parts, body.boxed()))
}

async fn serve_conn<S>(io: S, c: Arc<Conn>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| handle(req, c.clone()));
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(io), svc)
        .await;
}

async fn bind(port: u16) -> tokio::net::TcpListener {
    let addr = SocketAddr::from(([0, 0, 0, 0], port));
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) => {
                tracing::warn!(%addr, error = %e, "the ingress cannot listen; retrying");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }
}

/// Serves ports 80 and 443 until dropped, rebuilding the table on every `changed` tick.
pub async fn run(sources: Arc<Sources>, mut changed: Vec<tokio::sync::watch::Receiver<u64>>) {
    let table = Arc::new(RwLock::new(Arc::new(Table::default())));
    let fallback = match fallback_cert() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "the ingress has no default certificate; HTTPS is off");
            return;
        }
    };
    let resolver = Arc::new(Resolver { table: table.clone(), fallback });
    let mut tls = match rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
    {
        Ok(b) => b.with_no_client_auth().with_cert_resolver(resolver),
        Err(e) => {
            tracing::warn!(error = %e, "the ingress TLS setup failed");
            return;
        }
    };
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

    let refresh = {
        let (table, sources) = (table.clone(), sources.clone());
        async move {
            let _ = sources.ingresses.wait_until_ready().await;
            let _ = sources.services.wait_until_ready().await;
            let _ = sources.slices.wait_until_ready().await;
            let _ = sources.secrets.wait_until_ready().await;
            loop {
                let t = Arc::new(Table::build(&sources));
                if let Ok(mut w) = table.write() {
                    *w = t;
                }
                let mut rx: Vec<&mut tokio::sync::watch::Receiver<u64>> = changed.iter_mut().collect();
                if !super::next_change(&mut rx).await {
                    return;
                }
            }
        }
    };
    let (http, https) = (bind(80).await, bind(443).await);
    tracing::info!("ingress serving on :80 and :443");
    crate::component_ready("ingress");
    let serve = |l: tokio::net::TcpListener, secure: bool| {
        let (table, acceptor) = (table.clone(), acceptor.clone());
        async move {
            loop {
                let Ok((tcp, peer)) = l.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let local_port = if secure { 443 } else { 80 };
                let c = Arc::new(Conn { table: table.clone(), peer, local_port, tls: secure });
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if secure {
                        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                            serve_conn(s, c).await;
                        }
                    } else {
                        serve_conn(tcp, c).await;
                    }
                });
            }
        }
    };
    tokio::select! {
        _ = refresh => {}
        _ = serve(http, false) => {}
        _ = serve(https, true) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(ings: Vec<serde_json::Value>) -> Sources {
        let (ingresses, mut w) = kube::runtime::reflector::store::<Ingress>();
        for i in ings {
            w.apply_watcher_event(&kube::runtime::watcher::Event::Apply(serde_json::from_value(i).unwrap()));
        }
        Sources {
            ingresses,
            services: kube::runtime::reflector::store().0,
            slices: kube::runtime::reflector::store().0,
            secrets: kube::runtime::reflector::store().0,
        }
    }

    fn backend(svc: &str) -> serde_json::Value {
        serde_json::json!({"service": {"name": svc, "port": {"number": 80}}})
    }

    #[test]
    fn routes_by_host_then_path() {
        let s = sources(vec![
            serde_json::json!({"metadata": {"name": "a", "namespace": "default"}, "spec": {
                "defaultBackend": backend("fallback"),
                "rules": [
                    {"host": "web.example", "http": {"paths": [
                        {"path": "/", "pathType": "Prefix", "backend": backend("root")},
                        {"path": "/api", "pathType": "Prefix", "backend": backend("api")},
                        {"path": "/api/v2", "pathType": "Exact", "backend": backend("v2")}]}},
                    {"host": "*.example", "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend("wild")}]}},
                    {"http": {"paths": [{"path": "/any", "pathType": "ImplementationSpecific", "backend": backend("hostless")}]}}]}}),
            serde_json::json!({"metadata": {"name": "other-class", "namespace": "default"}, "spec": {
                "ingressClassName": "nginx",
                "rules": [{"host": "web.example", "http": {"paths": [{"path": "/x", "pathType": "Prefix", "backend": backend("nginx")}]}}]}}),
        ]);
        let t = Table::build(&s);
        let svc = |host: &str, path: &str| t.route(host, path).map(|(_, b)| b.service.as_ref().unwrap().name.clone());
        assert_eq!(svc("web.example", "/").as_deref(), Some("root"));
        assert_eq!(svc("WEB.example", "/api").as_deref(), Some("api"));
        assert_eq!(svc("web.example", "/api/x").as_deref(), Some("api"));
        assert_eq!(svc("web.example", "/apix").as_deref(), Some("root"));
        assert_eq!(svc("web.example", "/api/v2").as_deref(), Some("v2"));
        assert_eq!(svc("web.example", "/x").as_deref(), Some("root"), "another class's rules are not ours");
        assert_eq!(svc("a.example", "/z").as_deref(), Some("wild"));
        assert_eq!(svc("a.b.example", "/any/thing").as_deref(), Some("hostless"));
        assert_eq!(svc("other", "/nothing").as_deref(), Some("fallback"));
    }
}
