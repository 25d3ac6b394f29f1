//! The Kubernetes API server: routing, authentication, the HTTPS listener and the
//! objects every cluster starts with.

mod admission;
mod authn;
mod binding;
mod custom;
pub mod discovery;
pub mod handlers;
mod join;
mod propagation;
pub mod request;
mod scale;
mod services;
pub mod tunnel;
pub mod watch;
mod wire;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::handlers::Call;
pub use self::join::token_secret as join_token_secret;
use self::request::{Query, Resp};
use crate::api::registry::{Registry, ResourceDef};
use crate::api::status::ApiError;
use crate::embedded::Storage;
use crate::server::audit::Trail;
use crate::server::auth::{self, Attrs, User};
use crate::server::tls::ClientCerts;

/// How long a client has to send a request's head, as kube-apiserver's
/// `ReadHeaderTimeout` ("just shy of" its 34 s request-timeout upper bound).
const READ_HEADER_TIMEOUT: Duration = Duration::from_secs(32);

/// Paths anyone may read without credentials, as Kubernetes's
/// `system:public-info-viewer` allows.
const PUBLIC_PATHS: &[&str] = &["/healthz", "/livez", "/readyz", "/version", "/cacerts", "/v1-rk"];

/// The API server: stateless over its store, shared by every connection.
pub struct ApiServer {
    pub(crate) store: Arc<dyn Storage>,
    /// The served kinds: the built-in ones and the custom resources of established CRDs.
    reg: std::sync::RwLock<Arc<Registry>>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) me: Weak<ApiServer>,
    ready: AtomicBool,
    server_addr: String,
    /// The service network, for ClusterIP allocation.
    pub(crate) service_cidr: ipnet::Ipv4Net,
    /// Serialises Service writes, so two cannot take the same IP or port.
    pub(crate) svc_lock: tokio::sync::Mutex<()>,
    /// Serialises creates in namespaces with quotas, so two cannot both take the last unit.
    pub(crate) quota_lock: tokio::sync::Mutex<()>,
    /// The cluster identity, for the join endpoints (set once the server has it).
    pub(crate) identity: std::sync::OnceLock<Arc<super::tls::Identity>>,
    /// Connections to the kubelets, opened by the agents.
    pub(crate) tunnels: tunnel::Tunnels,
    /// The resources made from CustomResourceDefinitions.
    custom: custom::CustomDefs,
    /// The key service-account tokens are signed with (set once the server has it).
    pub(crate) signer: std::sync::OnceLock<Arc<auth::token::Signer>>,
    /// The RBAC caches (set once their reflectors run).
    pub(crate) rbac: std::sync::OnceLock<auth::rbac::Rbac>,
    /// The secrets-encryption layer of the store, when there is one.
    pub secrets: std::sync::OnceLock<Arc<crate::server::secrets_encryption::EncryptedStore>>,
    /// The audit log, when `--audit-log-path` is given.
    pub audit: std::sync::OnceLock<crate::server::audit::AuditLog>,
    /// The raw store and the snapshot directory, for `rk snapshot save` while running.
    pub snapshots: std::sync::OnceLock<(crate::embedded::LogStore, std::path::PathBuf, String)>,
}

/// Where a request goes.
enum Route {
    /// The cluster CA, for agents to check against their join token.
    CaCerts,
    /// Node credentials for an agent holding the join token.
    NodeCredentials,
    /// `rk secrets-encrypt`: GET the state, POST `?action=rotate-keys`.
    SecretsEncrypt,
    /// `rk snapshot`: GET lists, POST `?name=<prefix>` saves one.
    Snapshots,
    Version,
    Health(&'static str),
    Api,
    Apis,
    Group(String),
    GroupVersion(String, String),
    OpenApiV2,
    OpenApiV3,
    OpenApiV3Doc(String),
    /// `/.well-known/openid-configuration`, for service-account token issuer discovery.
    OpenIdConfig,
    /// `/openid/v1/jwks`: the public key tokens are signed with.
    Jwks,
    /// One of the review APIs (and the namespace of a LocalSubjectAccessReview).
    Review(&'static ResourceDef, Option<String>),
    Resource {
        def: &'static ResourceDef,
        ns: Option<String>,
        name: Option<String>,
        sub: Option<String>,
        watch: bool,
    },
}

/// `/api/v1/namespaces/<ns>/pods/<name>/exec|attach|portforward`: the streaming
/// subresources, handled before the body is read (they upgrade the connection).
fn stream_target(path: &str) -> Option<(String, String, String)> {
    let s: Vec<&str> = path.trim_matches('/').split('/').collect();
    match s.as_slice() {
        ["api", "v1", "namespaces", ns, "pods", name, sub] if matches!(*sub, "exec" | "attach" | "portforward") => {
            Some((ns.to_string(), name.to_string(), sub.to_string()))
        }
        _ => None,
    }
}

/// rk's own operations (`/v1-rk/...`, outside RBAC's resources) are for cluster
/// admins: members of `system:masters`.
fn cluster_admin(user: Option<&User>) -> Result<(), ApiError> {
    match user {
        None => Err(ApiError::unauthorized()),
        Some(u) if u.groups.iter().any(|g| g == crate::server::auth::MASTERS) => Ok(()),
        Some(u) => Err(ApiError::with_code(
            403,
            format!("User \"{}\" cannot use rk's admin operations: they are for system:masters", u.name),
        )),
    }
}

fn route(reg: &Registry, path: &str) -> Result<Route, ApiError> {
    let segs: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let (group, version, rest): (&str, &str, &[&str]) = match s.as_slice() {
        ["version"] => return Ok(Route::Version),
        ["cacerts"] => return Ok(Route::CaCerts),
        ["v1-rk", "node-credentials"] => return Ok(Route::NodeCredentials),
        ["v1-rk", "secrets-encrypt"] => return Ok(Route::SecretsEncrypt),
        ["v1-rk", "snapshots"] => return Ok(Route::Snapshots),
        ["healthz", ..] => return Ok(Route::Health("healthz")),
        ["livez", ..] => return Ok(Route::Health("livez")),
        ["readyz", ..] => return Ok(Route::Health("readyz")),
        ["openapi", "v2"] => return Ok(Route::OpenApiV2),
        ["openapi", "v3"] => return Ok(Route::OpenApiV3),
        ["openapi", "v3", rest @ ..] => return Ok(Route::OpenApiV3Doc(rest.join("/"))),
        [".well-known", "openid-configuration"] => return Ok(Route::OpenIdConfig),
        ["openid", "v1", "jwks"] => return Ok(Route::Jwks),
        ["apis", g, v, p] if authn::review_at(g, v, p).is_some_and(|d| !d.namespaced) => {
            return Ok(Route::Review(authn::review_at(g, v, p).expect("matched"), None));
        }
        ["apis", g, v, "namespaces", ns, p] if authn::review_at(g, v, p).is_some_and(|d| d.namespaced) => {
            return Ok(Route::Review(authn::review_at(g, v, p).expect("matched"), Some(ns.to_string())));
        }
        ["api"] => return Ok(Route::Api),
        ["apis"] => return Ok(Route::Apis),
        ["api", "v1"] => return Ok(Route::GroupVersion(String::new(), "v1".into())),
        ["apis", g] => return Ok(Route::Group(g.to_string())),
        ["apis", g, v] => return Ok(Route::GroupVersion(g.to_string(), v.to_string())),
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::no_route()),
    };
    let (watch, rest) = match rest {
        ["watch", r @ ..] => (true, r),
        r => (false, r),
    };
    let (ns, rest) = match rest {
        ["namespaces", ns, r @ ..] if !r.is_empty() && !(r.len() == 1 && matches!(r[0], "status" | "finalize")) => {
            (Some(ns.to_string()), r)
        }
        r => (None, r),
    };
    let (plural, name, sub) = match rest {
        [p] => (*p, None, None),
        [p, n] => (*p, Some(n.to_string()), None),
        [p, n, s] => (*p, Some(n.to_string()), Some(s.to_string())),
        _ => return Err(ApiError::no_route()),
    };
    let def = reg.get(group, version, plural).ok_or_else(ApiError::no_route)?;
    if ns.is_some() && !def.namespaced {
        return Err(ApiError::no_route());
    }
    if let Some(s) = &sub
        && !def.subresources().contains(&s.as_str())
    {
        return Err(ApiError::no_route());
    }
    Ok(Route::Resource { def, ns, name, sub, watch })
}

/// The attributes a routed request is authorized under; None for the join endpoints
/// (which check the join token themselves).
fn attributes(r: &Route, method: &Method, query: &Query, path: &str) -> Option<Attrs> {
    match r {
        Route::CaCerts | Route::NodeCredentials => None,
        Route::Resource { def, ns, name, sub, watch } => {
            let sub = sub.as_deref().unwrap_or("");
            let verb = auth::resource_verb(method, name.is_some(), *watch || query.flag("watch"), sub);
            let name = name.as_deref().unwrap_or("");
            // A namespace's own requests are in that namespace, as Kubernetes has it.
            let ns = match ns {
                Some(n) => n.as_str(),
                None if def.group.is_empty() && def.plural == "namespaces" => name,
                None => "",
            };
            Some(Attrs::resource(verb, def.group, def.plural, sub, ns, name))
        }
        Route::Review(def, ns) => {
            Some(Attrs::resource("create", def.group, def.plural, "", ns.as_deref().unwrap_or(""), ""))
        }
        _ => Some(Attrs::path(&auth::path_verb(method), path)),
    }
}

/// Routes `path` and derives its authorization attributes for every method: the
/// URL router as the fuzz targets drive it.
#[doc(hidden)]
pub fn fuzz_route(path: &str, query: &str) {
    let q = Query::parse(Some(query));
    let reg = Registry::builtin();
    if let Ok(r) = route(reg, path) {
        for m in [Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            let _ = attributes(&r, &m, &q, path);
        }
    }
    let _ = stream_target(path);
}

/// The API version a route is to, for the audit log.
fn route_version(r: &Route) -> &'static str {
    match r {
        Route::Resource { def, .. } | Route::Review(def, _) => def.version,
        _ => "",
    }
}

impl ApiServer {
    /// A server over `store`; `server_addr` is what discovery reports (`host:port`).
    pub fn new(
        store: Arc<dyn Storage>,
        shutdown: CancellationToken,
        server_addr: String,
        service_cidr: ipnet::Ipv4Net,
    ) -> Arc<ApiServer> {
        Arc::new_cyclic(|me| ApiServer {
            store,
            reg: std::sync::RwLock::new(Arc::new(Registry::builtin().with(&[]))),
            shutdown,
            me: me.clone(),
            ready: AtomicBool::new(false),
            server_addr,
            service_cidr,
            svc_lock: tokio::sync::Mutex::new(()),
            quota_lock: tokio::sync::Mutex::new(()),
            identity: std::sync::OnceLock::new(),
            tunnels: tunnel::Tunnels::default(),
            custom: custom::CustomDefs::default(),
            signer: std::sync::OnceLock::new(),
            rbac: std::sync::OnceLock::new(),
            secrets: std::sync::OnceLock::new(),
            audit: std::sync::OnceLock::new(),
            snapshots: std::sync::OnceLock::new(),
        })
    }

    /// The served kinds, as of now.
    pub(crate) fn reg(&self) -> Arc<Registry> {
        self.reg.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the served kinds (when the CustomResourceDefinitions change).
    pub(crate) fn set_reg(&self, reg: Registry) {
        *self.reg.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(reg);
    }

    /// Marks the server ready (`/readyz` answers ok).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Handles one request; `user` is who its connection's client certificate (or the
    /// in-process client) proves it is from; otherwise its bearer token decides.
    pub async fn handle<B>(self: &Arc<Self>, req: Request<B>, user: Option<&User>) -> Resp
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        use futures::FutureExt;
        let Some(log) = self.audit.get() else {
            let mut off = Trail::off();
            let served = std::panic::AssertUnwindSafe(self.serve_request(req, user, &mut off));
            return served.catch_unwind().await.unwrap_or_else(|p| panicked(p.as_ref()).1);
        };
        let mut trail = Trail::start(&req);
        match std::panic::AssertUnwindSafe(self.serve_request(req, user, &mut trail)).catch_unwind().await {
            Ok(resp) => log.finish(trail, resp).await,
            Err(p) => {
                let (message, resp) = panicked(p.as_ref());
                log.panicked(trail, &message, resp).await
            }
        }
    }

    /// 403 unless `user` may do `a`; the decision goes into the audit record.
    async fn guard(&self, user: &User, a: &Attrs, trail: &mut Trail) -> Result<(), ApiError> {
        let d = self.authorize(user, a).await;
        match &d {
            auth::Decision::Allow => trail.decision(true, ""),
            auth::Decision::Deny(why) => trail.decision(false, why),
            auth::Decision::NoOpinion => trail.decision(false, ""),
        }
        a.outcome(user, d)
    }

    async fn serve_request<B>(self: &Arc<Self>, mut req: Request<B>, user: Option<&User>, trail: &mut Trail) -> Resp
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // The join endpoint takes the join token as its bearer credential and checks it
        // itself; it is good for nothing else.
        let joining = req.uri().path() == "/v1-rk/node-credentials";
        let user = match self.authenticate(user, req.headers()).await {
            Ok(u) => u,
            Err(_) if joining => None,
            Err(e) => {
                if trail.on() {
                    // Logged with what it asked for, as Kubernetes's failed-authentication Events are.
                    let q = Query::parse(req.uri().query());
                    let path = req.uri().path();
                    if let Ok(r) = route(&self.reg(), path)
                        && let Some(a) = attributes(&r, req.method(), &q, path)
                    {
                        trail.attrs(&a, route_version(&r), &q);
                    }
                    trail.authn_failed();
                }
                return request::error(&e);
            }
        };
        let user = user.map(Arc::new);
        trail.user(user.as_ref());
        let user = match user {
            Some(u) if req.headers().keys().any(|k| k.as_str().starts_with("impersonate-")) => {
                match self.impersonate(u.as_ref().clone(), req.headers()).await {
                    Ok(u) => {
                        trail.impersonated(&u);
                        Some(Arc::new(u))
                    }
                    Err(e) => return request::error(&e),
                }
            }
            u => u,
        };
        if req.uri().path() == "/v1-rk/tunnel" {
            return self.accept_tunnel(&mut req, user.as_deref());
        }
        if let Some(u) = &user
            && let Some(rest) = req.uri().path().strip_prefix("/api/v1/nodes/")
            && let Some((node, path)) = rest.split_once("/proxy")
        {
            let (node, path) = (node.to_string(), format!("/{}", path.trim_start_matches('/')));
            let verb = auth::resource_verb(req.method(), true, false, "proxy");
            let a = Attrs::resource(verb, "", "nodes", "proxy", "", &node);
            trail.attrs(&a, "v1", &Query::parse(req.uri().query()));
            if let Err(e) = self.guard(u, &a, trail).await {
                return request::error(&e);
            }
            let q = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
            if req.method() != Method::GET {
                return request::error(&ApiError::method_not_allowed(req.method().as_str(), "nodes/proxy"));
            }
            return self.node_proxy(&node, &format!("{path}{q}")).await.unwrap_or_else(|e| request::error(&e));
        }
        if let Some(u) = &user
            && let Some((ns, name, sub)) = stream_target(req.uri().path())
        {
            let a = Attrs::resource("create", "", "pods", &sub, &ns, &name);
            trail.attrs(&a, "v1", &Query::parse(req.uri().query()));
            if let Err(e) = self.guard(u, &a, trail).await {
                return request::error(&e);
            }
            return self.pod_stream(&mut req, &sub, &ns, &name).await.unwrap_or_else(|e| request::error(&e));
        }
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().to_string();
        if user.is_none() && !PUBLIC_PATHS.iter().any(|p| path == *p || path.starts_with(&format!("{p}/"))) {
            return request::error(&ApiError::unauthorized());
        }
        let query = Query::parse(parts.uri.query());
        let reg = self.reg();
        let r = match route(&reg, &path) {
            Ok(r) => r,
            Err(e) => return request::error(&e),
        };
        let attrs = attributes(&r, &parts.method, &query, &path);
        if let Some(a) = &attrs {
            trail.attrs(a, route_version(&r), &query);
        }
        if let Some(u) = &user
            && let Some(a) = &attrs
            && let Err(e) = self.guard(u, a, trail).await
        {
            return request::error(&e);
        }
        let res = match r {
            Route::Version => Ok(request::json(200, &discovery::version())),
            Route::CaCerts => match self.identity.get() {
                Some(id) => Ok(request::bytes_response(200, "text/plain", Bytes::from(id.ca.cert_pem.clone()))),
                None => Err(ApiError::unavailable("the cluster identity is not ready")),
            },
            Route::NodeCredentials => {
                let body = match request::read_body(&parts.headers, body).await {
                    Ok(b) => b,
                    Err(e) => return request::error(&e),
                };
                self.node_credentials(&parts.method, &parts.headers, &body).await
            }
            Route::Health(which) => Ok(self.health(which, &query)),
            Route::Api => Ok(match discovery::aggregated_version(&parts.headers) {
                Some(v) => discovery::aggregated(&reg, true, v),
                None => request::json(200, &discovery::api_versions(&self.server_addr)),
            }),
            Route::Apis => Ok(match discovery::aggregated_version(&parts.headers) {
                Some(v) => discovery::aggregated(&reg, false, v),
                None => request::json(200, &discovery::api_groups(&reg)),
            }),
            Route::Group(g) => {
                discovery::api_group(&reg, &g).map(|v| request::json(200, &v)).ok_or_else(ApiError::no_route)
            }
            Route::GroupVersion(g, v) => {
                discovery::resource_list(&reg, &g, &v).map(|v| request::json(200, &v)).ok_or_else(ApiError::no_route)
            }
            Route::OpenApiV2 => discovery::openapi_v2(&reg, &parts.headers),
            Route::OpenApiV3 => Ok(discovery::OpenApi::get().index(&reg)),
            Route::OpenApiV3Doc(p) => {
                let o = discovery::OpenApi::get();
                o.doc(&p, query.get("hash"))
                    .or_else(|| o.custom_doc(&reg, &p, query.get("hash")))
                    .ok_or_else(ApiError::no_route)
            }
            Route::Snapshots => {
                async {
                    cluster_admin(user.as_deref())?;
                    let (store, dir, node) = self.snapshots.get().ok_or_else(ApiError::no_route)?;
                    let snapshot = crate::embedded::snapshot::ON_DEMAND;
                    if parts.method == Method::POST {
                        let prefix = query.get("name").unwrap_or(snapshot).to_string();
                        let (store, dir, node) = (store.clone(), dir.clone(), node.clone());
                        let saved = tokio::task::spawn_blocking(move || {
                            crate::embedded::snapshot::save(&store, &dir, &prefix, Some(&node))
                        })
                        .await
                        .map_err(ApiError::internal)?
                        .map_err(ApiError::bad_request)?;
                        Ok(request::json(200, &json!(saved)))
                    } else {
                        let list = crate::embedded::snapshot::list(dir).map_err(ApiError::internal)?;
                        Ok(request::json(200, &json!({"dir": dir, "snapshots": list})))
                    }
                }
                .await
            }
            Route::SecretsEncrypt => match (cluster_admin(user.as_deref()), self.secrets.get()) {
                (Err(e), _) => Err(e),
                (Ok(_), None) => Ok(request::json(
                    200,
                    &json!({"enabled": false, "currentKey": null, "keys": [], "encryptedSecrets": 0}),
                )),
                (Ok(_), Some(e)) => {
                    let rotate = parts.method == Method::POST && query.get("action") == Some("rotate-keys");
                    if parts.method == Method::POST && !rotate {
                        Err(ApiError::bad_request("action must be rotate-keys"))
                    } else if rotate {
                        match e.rotate().await {
                            Ok(n) => e.status().await.map_err(ApiError::internal).map(|mut s| {
                                s["reencrypted"] = json!(n);
                                request::json(200, &s)
                            }),
                            Err(m) => Err(ApiError::bad_request(m)),
                        }
                    } else {
                        e.status().await.map_err(ApiError::internal).map(|s| request::json(200, &s))
                    }
                }
            },
            Route::OpenIdConfig | Route::Jwks => match self.signer.get() {
                Some(s) if matches!(r, Route::Jwks) => {
                    let body = Bytes::from(serde_json::to_vec(&s.jwks()).expect("json"));
                    Ok(request::bytes_response(200, "application/jwk-set+json", body))
                }
                Some(s) => Ok(request::json(200, &s.openid_configuration())),
                None => Err(ApiError::unavailable("the service-account signing key is not ready")),
            },
            Route::Review(def, ns) => {
                let body = match request::read_body(&parts.headers, body).await {
                    Ok(b) => b,
                    Err(e) => return request::error(&e),
                };
                trail.body(&request::content_type(&parts.headers), &body);
                match (&parts.method, &user) {
                    (&Method::POST, Some(u)) => self.review(def, u, ns.as_deref(), &parts.headers, &body).await,
                    (m, _) => Err(ApiError::method_not_allowed(m.as_str(), def.plural)),
                }
            }
            Route::Resource { def, ns, name, sub, watch } => {
                let body = match request::read_body(&parts.headers, body).await {
                    Ok(b) => b,
                    Err(e) => return request::error(&e),
                };
                trail.body(&request::content_type(&parts.headers), &body);
                let notes: Option<handlers::AuditNotes> = trail.on().then(Default::default);
                let call = Call { def, ns, name, sub, query, headers: parts.headers, user, notes: notes.clone() };
                let res = self.dispatch(parts.method, call, body, watch).await;
                if let Some(n) = notes {
                    trail.annotate(std::mem::take(&mut *n.lock().unwrap_or_else(|e| e.into_inner())));
                }
                res
            }
        };
        res.unwrap_or_else(|e| request::error(&e))
    }

    async fn dispatch(
        self: &Arc<Self>,
        method: Method,
        call: Call,
        body: Bytes,
        watch: bool,
    ) -> Result<Resp, ApiError> {
        let def = call.def;
        let needs_ns = def.namespaced && call.ns.is_none();
        let what = if call.name.is_some() { format!("{} {}", def.plural, "object") } else { def.plural.to_string() };
        let is_watch = watch || call.query.flag("watch");
        match (&method, call.name.as_deref()) {
            (&Method::GET, None) if is_watch => self.watch(call).await,
            (&Method::GET, None) => self.list(&call).await,
            (&Method::GET, Some(_)) if is_watch => self.watch(call).await,
            (_, Some(_)) if needs_ns => Err(ApiError::no_route()),
            (&Method::GET | &Method::PUT | &Method::PATCH, Some(_)) if call.sub.as_deref() == Some("scale") => {
                self.scale(&method, &call, body).await
            }
            (&Method::GET, Some(_)) if call.sub.as_deref() == Some("log") => self.pod_log(&call).await,
            (_, Some(_)) if call.sub.as_deref() == Some("log") => {
                Err(ApiError::method_not_allowed(method.as_str(), &what))
            }
            (&Method::POST, Some(_)) if call.sub.as_deref() == Some("binding") => self.bind(&call, body).await,
            (&Method::POST, Some(_)) if call.sub.as_deref() == Some("eviction") => self.evict(&call, body).await,
            (&Method::POST, Some(_)) if call.sub.as_deref() == Some("token") => self.token_request(&call, body).await,
            (_, Some(_)) if matches!(call.sub.as_deref(), Some("binding" | "eviction" | "token")) => {
                Err(ApiError::method_not_allowed(method.as_str(), &what))
            }
            (&Method::GET, Some(n)) => {
                let n = n.to_string();
                self.get_response(&call, &n).await
            }
            (&Method::POST, None) if needs_ns => Err(ApiError::method_not_allowed("POST", &what)),
            (&Method::POST, None) => self.create(&call, body).await,
            (&Method::PUT, Some(_)) => self.update(&call, body).await,
            (&Method::PATCH, Some(_)) => self.patch(&call, body).await,
            (&Method::DELETE, Some(_)) if call.sub.is_none() => self.delete(&call, body).await,
            (&Method::DELETE, None) => self.delete_collection(&call, body).await,
            (m, _) => Err(ApiError::method_not_allowed(m.as_str(), &what)),
        }
    }

    fn health(&self, which: &str, q: &Query) -> Resp {
        let ready = which != "readyz" || self.ready.load(Ordering::Acquire);
        let checks: Vec<(&str, bool)> = match which {
            "readyz" => vec![
                ("ping", true),
                ("log", true),
                ("etcd", true),
                ("informer-sync", ready),
                ("shutdown", !self.shutdown.is_cancelled()),
            ],
            _ => vec![("ping", true), ("log", true), ("etcd", true)],
        };
        let ok = checks.iter().all(|(_, ok)| *ok);
        let body = if q.get("verbose").is_some() {
            let mut s = String::new();
            for (name, ok) in &checks {
                s.push_str(&format!(
                    "[{}]{name} {}\n",
                    if *ok { "+" } else { "-" },
                    if *ok { "ok" } else { "failed: reason withheld" }
                ));
            }
            s.push_str(&format!("{which} check {}\n", if ok { "passed" } else { "failed" }));
            s
        } else if ok {
            "ok".into()
        } else {
            format!("[-]informer-sync failed: reason withheld\n{which} check failed\n")
        };
        request::bytes_response(if ok { 200 } else { 500 }, "text/plain; charset=utf-8", Bytes::from(body))
    }

    /// Creates an object through the full create path unless it exists.
    pub async fn ensure(
        self: &Arc<Self>,
        group: &str,
        plural: &str,
        ns: Option<&str>,
        obj: Value,
    ) -> Result<(), ApiError> {
        let def = self.reg().get(group, "v1", plural).ok_or_else(ApiError::no_route)?;
        let call = propagation::internal_call(def, ns);
        match self.create(&call, Bytes::from(serde_json::to_vec(&obj).expect("json"))).await {
            Ok(_) => Ok(()),
            Err(e) if e.reason == "AlreadyExists" => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Creates what every cluster has: the four namespaces, the `kubernetes` Service
    /// and the cluster DNS Service `kube-system/kube-dns` (answered on every node by
    /// the agent, so it has no selector); resumes the cleanup of namespaces left
    /// terminating.
    pub async fn bootstrap(self: &Arc<Self>, service_ip: &str, dns_ip: &str, https_port: u16) -> Result<(), ApiError> {
        self.ensure_policy().await?;
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            self.ensure("", "namespaces", None, json!({"metadata": {"name": ns}})).await?;
        }
        self.ensure(
            "",
            "services",
            Some("default"),
            json!({"metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
                   "spec": {"type": "ClusterIP", "clusterIP": service_ip, "clusterIPs": [service_ip],
                            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                            "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": https_port}]}}),
        )
        .await?;
        if let Err(e) = self
            .ensure(
                "",
                "services",
                Some("kube-system"),
                json!({"metadata": {"name": "kube-dns",
                                "labels": {"k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true",
                                           "kubernetes.io/name": "rk-dns"}},
                   "spec": {"type": "ClusterIP", "clusterIP": dns_ip, "clusterIPs": [dns_ip],
                            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                            "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                                      {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]}}),
            )
            .await
        {
            tracing::warn!(error = %e.message, "creating the kube-dns Service failed");
        }
        for (name, value, description) in admission::SYSTEM_PRIORITY_CLASSES {
            self.ensure(
                "scheduling.k8s.io",
                "priorityclasses",
                None,
                json!({"metadata": {"name": name}, "value": value, "description": description}),
            )
            .await?;
        }
        if let Err(e) = self
            .ensure(
                "networking.k8s.io",
                "ingressclasses",
                None,
                json!({"metadata": {"name": "rk", "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}},
                       "spec": {"controller": "rk.io/ingress"}}),
            )
            .await
        {
            tracing::warn!(error = %e.message, "creating the rk IngressClass failed");
        }
        let page = self.store.list("/registry/namespaces/", None, 0, 0).await.map_err(ApiError::internal)?;
        for kv in &page.kvs {
            let obj = handlers::decode_kv(kv)?;
            if crate::api::meta::is_deleting(&obj) {
                self.spawn_namespace_cleanup(crate::api::meta::name(&obj).to_string());
            }
        }
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.resume_propagation().await {
                tracing::warn!(error = %e, "resuming propagation policies failed");
            }
        });
        Ok(())
    }

    /// Serves HTTPS on `listener` until `token` is cancelled.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        certs: Arc<ClientCerts>,
        token: CancellationToken,
        tracker: TaskTracker,
    ) {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        loop {
            let (tcp, peer) = tokio::select! {
                _ = token.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let (api, acceptor, certs, token) = (self.clone(), acceptor.clone(), certs.clone(), token.clone());
            tracker.spawn(async move { api.connection(tcp, peer, acceptor, certs, token).await });
        }
    }

    async fn connection(
        self: Arc<Self>,
        tcp: tokio::net::TcpStream,
        peer: SocketAddr,
        acceptor: tokio_rustls::TlsAcceptor,
        certs: Arc<ClientCerts>,
        token: CancellationToken,
    ) {
        let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => return,
        };
        let user = tls.get_ref().1.peer_certificates().and_then(|c| certs.authenticate(c));
        let user = Arc::new(user);
        let started = Arc::new(AtomicBool::new(false));
        let first = started.clone();
        let svc = service_fn(move |mut req: Request<hyper::body::Incoming>| {
            let (api, user) = (self.clone(), user.clone());
            first.store(true, Ordering::Relaxed);
            req.extensions_mut().insert(peer);
            async move { Ok::<_, Infallible>(api.handle(req, user.as_ref().as_ref()).await) }
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        // One buffer per response: over TLS, vectored writes would become a TLS record
        // (and a TCP segment) for the head and another for the body. A request's head
        // must arrive within READ_HEADER_TIMEOUT. hyper also applies it to an idle
        // HTTP/1 keep-alive connection (Go's server keeps those), which clients' pools
        // see closed and replace.
        builder.http1().writev(false).timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(READ_HEADER_TIMEOUT);
        builder.http2().timer(hyper_util::rt::TokioTimer::new());
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
        tokio::pin!(conn);
        // A client that completes TLS and then sends nothing (or only part of the HTTP/2
        // preface) never reaches hyper's header timeout: the protocol is not chosen yet.
        let silent = async {
            tokio::time::sleep(READ_HEADER_TIMEOUT).await;
            if started.load(Ordering::Relaxed) {
                std::future::pending::<()>().await
            }
        };
        tokio::select! {
            r = conn.as_mut() => if let Err(e) = r { tracing::debug!(%peer, error = %e, "connection ended with an error") },
            _ = silent => tracing::debug!(%peer, "no request within {READ_HEADER_TIMEOUT:?}; connection closed"),
            _ = token.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
            }
        }
    }
}

/// A handler's panic, caught: its message, and the 500 kube-apiserver's panic
/// recovery answers with.
fn panicked(payload: &(dyn std::any::Any + Send)) -> (String, Resp) {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string());
    tracing::error!(panic = %message, "a request handler panicked");
    let text = "This request caused apiserver to panic. Look in the logs for details.\n";
    let resp = request::bytes_response(500, "text/plain; charset=utf-8", Bytes::from_static(text.as_bytes()));
    (message, resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let reg = Registry::builtin();
        match route(reg, "/api/v1/namespaces/default/configmaps/x").unwrap() {
            Route::Resource { def, ns, name, .. } => {
                assert_eq!((def.plural, ns.as_deref(), name.as_deref()), ("configmaps", Some("default"), Some("x")))
            }
            _ => panic!("wrong route"),
        }
        match route(reg, "/api/v1/namespaces/default").unwrap() {
            Route::Resource { def, ns, name, .. } => {
                assert_eq!((def.plural, ns, name.as_deref()), ("namespaces", None, Some("default")))
            }
            _ => panic!("wrong route"),
        }
        match route(reg, "/api/v1/namespaces/x/status").unwrap() {
            Route::Resource { def, name, sub, .. } => {
                assert_eq!((def.plural, name.as_deref(), sub.as_deref()), ("namespaces", Some("x"), Some("status")))
            }
            _ => panic!("wrong route"),
        }
        assert!(matches!(route(reg, "/apis/apps/v1/deployments").unwrap(), Route::Resource { ns: None, .. }));
        assert!(route(reg, "/api/v1/namespaces/default/nodes").is_err());
        assert!(route(reg, "/api/v1/bogus").is_err());
        assert!(route(reg, "/api/v1/namespaces/d/configmaps/x/status").is_err());
    }
}
