//! The audit log (`--audit-log-path`, `--audit-policy-file`): for each request the
//! policy's first matching rule picks a level (None, Metadata, Request,
//! RequestResponse), and the request's `audit.k8s.io/v1` Events are written as JSON
//! lines, as kube-apiserver's log backend writes them: `RequestReceived` and
//! `ResponseComplete` for every request, `ResponseStarted` in between for long-running
//! ones (watches, exec, attach, port-forward, followed logs), minus the stages the
//! policy omits. The file is rotated by size (`--audit-log-maxsize` MB) into
//! `<name>-<UTC time>.<ext>` backups, of which `--audit-log-maxbackup` are kept and
//! none older than `--audit-log-maxage` days, as Kubernetes's (lumberjack) rotation
//! names and prunes them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{HeaderValue, Request};
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::server::apiserver::request::{self, Resp};
use crate::server::auth::{Attrs, User};

/// How much of a request the log keeps.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Nothing.
    None,
    /// Who, what, when and the outcome; no bodies.
    Metadata,
    /// Metadata plus the request body.
    Request,
    /// Metadata plus the request and response bodies.
    RequestResponse,
}

/// A point in a request's life an Event is written at.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum Stage {
    /// As soon as the request is read.
    RequestReceived,
    /// When a long-running request's response headers are sent.
    ResponseStarted,
    /// When the response is complete.
    ResponseComplete,
    /// When handling it panicked.
    Panic,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::RequestReceived => "RequestReceived",
            Stage::ResponseStarted => "ResponseStarted",
            Stage::ResponseComplete => "ResponseComplete",
            Stage::Panic => "Panic",
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GroupResources {
    #[serde(default)]
    group: String,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    resource_names: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Rule {
    level: Level,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    user_groups: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    resources: Vec<GroupResources>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default, rename = "nonResourceURLs")]
    non_resource_urls: Vec<String>,
    #[serde(default)]
    omit_stages: Vec<Stage>,
    omit_managed_fields: Option<bool>,
}

/// An `audit.k8s.io/v1` Policy.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    api_version: String,
    kind: String,
    #[serde(default)]
    #[allow(dead_code)]
    metadata: Option<Value>,
    #[serde(default)]
    rules: Vec<Rule>,
    #[serde(default)]
    omit_stages: Vec<Stage>,
    #[serde(default)]
    omit_managed_fields: bool,
}

/// What the policy decides for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decided {
    /// The level.
    pub level: Level,
    /// Stages not written.
    pub omit_stages: Vec<Stage>,
    /// Whether `metadata.managedFields` is left out of logged objects.
    pub omit_managed_fields: bool,
}

impl Policy {
    /// Everything at Metadata: what `--audit-log-path` alone logs.
    pub fn metadata_for_all() -> Policy {
        Policy {
            api_version: "audit.k8s.io/v1".into(),
            kind: "Policy".into(),
            metadata: None,
            rules: vec![Rule {
                level: Level::Metadata,
                users: vec![],
                user_groups: vec![],
                verbs: vec![],
                resources: vec![],
                namespaces: vec![],
                non_resource_urls: vec![],
                omit_stages: vec![],
                omit_managed_fields: None,
            }],
            omit_stages: vec![],
            omit_managed_fields: false,
        }
    }

    /// Reads a policy file (YAML or JSON); a problem is one line naming the file.
    pub fn load(path: &Path) -> Result<Policy, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("audit policy {}: {e}", path.display()))?;
        Policy::parse(&text).map_err(|e| format!("audit policy {}: {e}", path.display()))
    }

    /// Parses and validates a policy.
    pub fn parse(text: &str) -> Result<Policy, String> {
        let p: Policy = serde_norway::from_str(text).map_err(|e| e.to_string())?;
        if p.kind != "Policy" {
            return Err(format!("kind must be Policy, not {:?}", p.kind));
        }
        if p.api_version != "audit.k8s.io/v1" {
            return Err(format!("apiVersion must be audit.k8s.io/v1, not {:?}", p.api_version));
        }
        for (i, r) in p.rules.iter().enumerate() {
            if !r.non_resource_urls.is_empty() && (!r.resources.is_empty() || !r.namespaces.is_empty()) {
                return Err(format!("rules[{i}]: rules cannot apply to both regular resources and non-resource URLs"));
            }
            for u in &r.non_resource_urls {
                let bad = !(u == "*" || u.starts_with('/')) || u.trim_end_matches('*').contains('*');
                if bad {
                    return Err(format!(
                        "rules[{i}].nonResourceURLs: {u:?}: must start with / and may end with a single *"
                    ));
                }
            }
            for (j, g) in r.resources.iter().enumerate() {
                if !g.resource_names.is_empty() && g.resources.is_empty() {
                    return Err(format!("rules[{i}].resources[{j}].resourceNames: resourceNames require resources"));
                }
            }
        }
        Ok(p)
    }

    /// The first matching rule's decision; None when no rule matches.
    pub fn decide(&self, user: &User, a: &Attrs) -> Decided {
        let Some(r) = self.rules.iter().find(|r| r.matches(user, a)) else {
            return Decided { level: Level::None, omit_stages: vec![], omit_managed_fields: false };
        };
        let mut omit = self.omit_stages.clone();
        omit.extend(r.omit_stages.iter().copied());
        Decided {
            level: r.level,
            omit_stages: omit,
            omit_managed_fields: r.omit_managed_fields.unwrap_or(self.omit_managed_fields),
        }
    }
}

impl Rule {
    /// Kubernetes's rule matching (staging/src/k8s.io/apiserver/pkg/audit/policy/checker.go).
    fn matches(&self, user: &User, a: &Attrs) -> bool {
        if !self.users.is_empty() && !self.users.contains(&user.name) {
            return false;
        }
        if !self.user_groups.is_empty() && !user.groups.iter().any(|g| self.user_groups.contains(g)) {
            return false;
        }
        if !self.verbs.is_empty() && !self.verbs.contains(&a.verb) {
            return false;
        }
        match &a.resource {
            Some(r) => {
                if !self.non_resource_urls.is_empty() {
                    return false;
                }
                if !self.namespaces.is_empty() && !self.namespaces.contains(&r.namespace) {
                    return false;
                }
                self.resources.is_empty() || self.resources.iter().any(|g| g.matches(r))
            }
            None => {
                if !self.namespaces.is_empty() || !self.resources.is_empty() {
                    return false;
                }
                self.non_resource_urls.is_empty() || self.non_resource_urls.iter().any(|s| path_matches(&a.path, s))
            }
        }
    }
}

impl GroupResources {
    fn matches(&self, r: &crate::server::auth::ResourceAttrs) -> bool {
        if self.group != r.group {
            return false;
        }
        if self.resources.is_empty() {
            return true;
        }
        let combined =
            if r.subresource.is_empty() { r.resource.clone() } else { format!("{}/{}", r.resource, r.subresource) };
        if !self.resource_names.is_empty() && !self.resource_names.contains(&r.name) {
            return false;
        }
        self.resources.iter().any(|res| {
            res == &combined
                || res == "*"
                || (!r.subresource.is_empty() && res.strip_prefix("*/") == Some(r.subresource.as_str()))
                || res.strip_suffix("/*") == Some(r.resource.as_str())
        })
    }
}

fn path_matches(path: &str, spec: &str) -> bool {
    spec == "*" || spec == path || spec.strip_suffix('*').is_some_and(|p| path.starts_with(p))
}

/// Where and how the log is written.
#[derive(Clone, Debug)]
pub struct AuditConfig {
    /// The log file; `-` is standard output.
    pub path: PathBuf,
    /// The policy.
    pub policy: Arc<Policy>,
    /// Days a rotated file is kept (0: no limit).
    pub max_age_days: u64,
    /// Rotated files kept (0: no limit).
    pub max_backups: usize,
    /// Size in MB at which the file is rotated (0: never).
    pub max_size_mb: u64,
}

/// Lines queued for the writer; when it falls behind this far, requests wait
/// (Kubernetes's "blocking" mode) rather than losing Events or growing without bound.
const QUEUE: usize = 10_000;

/// The running log: the policy and the writer thread's queue.
pub struct AuditLog {
    policy: Arc<Policy>,
    tx: mpsc::Sender<String>,
}

impl AuditLog {
    /// Opens (creating, mode 0600) the log file and starts its writer thread.
    pub fn open(cfg: &AuditConfig) -> Result<AuditLog, String> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let sink = Sink::open(cfg)?;
        std::thread::Builder::new()
            .name("rk-audit".into())
            .spawn(move || sink.run(rx))
            .map_err(|e| format!("starting the audit writer: {e}"))?;
        Ok(AuditLog { policy: cfg.policy.clone(), tx })
    }

    /// Writes the Events of a finished (or, when long-running, started) request and
    /// returns its response with the `Audit-Id` header.
    pub async fn finish(&self, t: Trail, mut resp: Resp) -> Resp {
        let Some((ev, d, mut lines)) = self.begin(t, &mut resp) else { return resp };
        let code = resp.status().as_u16();
        let ok = Status::Code { metadata: Empty {}, code };
        if ev.rec.long_running && code < 300 {
            if !d.omit_stages.contains(&Stage::ResponseStarted) {
                push_line(&mut lines, ev.line(Stage::ResponseStarted, Utc::now(), Some(&ok), None));
            }
            self.send(lines).await;
            if d.omit_stages.contains(&Stage::ResponseComplete) {
                return resp;
            }
            let (parts, body) = resp.into_parts();
            let body = OnEnd { inner: body, at_end: Some((self.tx.clone(), ev, code)) };
            return Resp::from_parts(parts, BodyExt::boxed_unsync(body));
        }
        if d.omit_stages.contains(&Stage::ResponseComplete) {
            self.send(lines).await;
            return resp;
        }
        // Bodies are read whole to log them; handlers' non-streaming answers are
        // already in memory, so this copies nothing but the pointer.
        let want_body = code >= 300 || d.level == Level::RequestResponse;
        let (parts, body) = resp.into_parts();
        let (bytes, body) = if want_body {
            match body.collect().await {
                Ok(c) => {
                    let b = c.to_bytes();
                    (Some(b.clone()), http_body_util::Full::new(b).map_err(|never| match never {}).boxed_unsync())
                }
                Err(e) => {
                    tracing::debug!(error = %e, "reading a response to audit it");
                    (None, http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync())
                }
            }
        } else {
            (None, body)
        };
        let ct = parts.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let decoded = bytes.as_ref().and_then(|b| decode(ct, b));
        let failure = match &decoded {
            Some(v) if code >= 300 && v["kind"] == "Status" => {
                let mut s = v.clone();
                if let Some(m) = s.as_object_mut() {
                    m.shift_remove("kind");
                    m.shift_remove("apiVersion");
                }
                Some(s)
            }
            _ => None,
        };
        let status = failure.as_ref().map(Status::Full).unwrap_or(ok);
        let response_object = if d.level == Level::RequestResponse { decoded.map(|v| ev.strip(v)) } else { None };
        push_line(&mut lines, ev.line(Stage::ResponseComplete, Utc::now(), Some(&status), response_object.as_ref()));
        self.send(lines).await;
        Resp::from_parts(parts, body)
    }

    /// Writes the Events of a request whose handler panicked, as kube-apiserver's audit
    /// filter does: RequestReceived, then Panic with a 500 InternalError status
    /// saying `APIServer panic'd: <message>`. Returns `resp` with the `Audit-Id` header.
    pub async fn panicked(&self, t: Trail, message: &str, mut resp: Resp) -> Resp {
        let Some((ev, d, mut lines)) = self.begin(t, &mut resp) else { return resp };
        if !d.omit_stages.contains(&Stage::Panic) {
            let status = serde_json::json!({"metadata": {}, "status": "Failure",
                "message": format!("APIServer panic'd: {message}"), "reason": "InternalError", "code": 500});
            push_line(&mut lines, ev.line(Stage::Panic, Utc::now(), Some(&Status::Full(&status)), None));
        }
        self.send(lines).await;
        resp
    }

    /// What every request's Events start with: the `Audit-Id` header on `resp`, the
    /// policy's decision, and the RequestReceived line unless omitted. None when the
    /// request is not audited. A request's Events go to the writer together, one
    /// queue slot for all.
    fn begin(&self, t: Trail, resp: &mut Resp) -> Option<(Event, Decided, String)> {
        let mut rec = t.0?;
        if let Ok(v) = HeaderValue::from_str(&rec.id) {
            resp.headers_mut().insert("audit-id", v);
        }
        let attrs = rec.attrs.take().unwrap_or_else(|| Attrs::path(&rec.method.to_ascii_lowercase(), &rec.path));
        let d = self.policy.decide(rec.who(), &attrs);
        rec.attrs = Some(attrs);
        if d.level == Level::None {
            return None;
        }
        let mut ev = Event { rec, level: d.level, strip: d.omit_managed_fields, request_object: None };
        if d.level >= Level::Request {
            ev.request_object = ev.rec.request_object().map(|v| ev.strip(v));
        }
        let mut lines = String::new();
        if !d.omit_stages.contains(&Stage::RequestReceived) {
            lines = ev.line(Stage::RequestReceived, ev.rec.received, None, None);
        }
        Some((ev, d, lines))
    }

    /// Queues lines (newline-separated, none at the end) for the writer.
    async fn send(&self, lines: String) {
        if !lines.is_empty() {
            let _ = self.tx.send(lines).await;
        }
    }
}

fn push_line(lines: &mut String, line: String) {
    if lines.is_empty() {
        *lines = line;
    } else {
        lines.push('\n');
        lines.push_str(&line);
    }
}

/// How long the writer lets Events gather after waking, so that under load it wakes
/// (and writes) a few hundred times a second rather than once per request.
const GATHER: std::time::Duration = std::time::Duration::from_millis(2);

/// A body that queues one last Event when it ends or is dropped (a watch closed by
/// either side): a long-running request's ResponseComplete.
struct OnEnd {
    inner: request::Body,
    at_end: Option<(mpsc::Sender<String>, Event, u16)>,
}

impl OnEnd {
    fn end(&mut self) {
        if let Some((tx, ev, code)) = self.at_end.take() {
            let line =
                ev.line(Stage::ResponseComplete, Utc::now(), Some(&Status::Code { metadata: Empty {}, code }), None);
            if let Err(mpsc::error::TrySendError::Full(line)) = tx.try_send(line)
                && let Ok(h) = tokio::runtime::Handle::try_current()
            {
                h.spawn(async move {
                    let _ = tx.send(line).await;
                });
            }
        }
    }
}

impl hyper::body::Body for OnEnd {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = r {
            self.end();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for OnEnd {
    fn drop(&mut self) {
        self.end();
    }
}

/// Kubernetes's MicroTime.
fn micro(t: DateTime<Utc>) -> String {
    use chrono::{Datelike, Timelike};
    let us = (t.nanosecond() / 1000).min(999_999);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{us:06}Z",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A JSON, YAML or protobuf body as JSON.
fn decode(ct: &str, b: &[u8]) -> Option<Value> {
    let ct = ct.split(';').next().unwrap_or("").trim();
    let v: Value = if ct == crate::api::protobuf::MEDIA_TYPE {
        crate::api::protobuf::decode(b).ok()?
    } else if ct.ends_with("yaml") {
        serde_norway::from_slice(b).ok()?
    } else if ct.is_empty() || ct.ends_with("json") {
        serde_json::from_slice(b).ok()?
    } else {
        return None;
    };
    v.is_object().then_some(v)
}

/// What one request's Events say, gathered as it is served.
struct Record {
    id: String,
    received: DateTime<Utc>,
    uri: String,
    path: String,
    method: String,
    user_agent: Option<String>,
    source_ips: Vec<String>,
    user: Option<Arc<User>>,
    authn_failed: bool,
    impersonated: Option<User>,
    attrs: Option<Attrs>,
    api_version: String,
    decision: Option<(bool, String)>,
    request: Option<(String, Bytes)>,
    long_running: bool,
    annotations: Vec<(String, String)>,
}

impl Record {
    fn request_object(&self) -> Option<Value> {
        let (ct, b) = self.request.as_ref()?;
        if b.is_empty() {
            return None;
        }
        decode(ct, b)
    }
}

/// One request's audit record while it is served; does nothing when auditing is off.
#[derive(Default)]
pub struct Trail(Option<Box<Record>>);

impl Trail {
    /// No auditing.
    pub fn off() -> Trail {
        Trail(None)
    }

    /// Starts a record for `req` (`peer`: the connection's address, from the
    /// request's extensions).
    pub fn start<B>(req: &Request<B>) -> Trail {
        let h = req.headers();
        let mut ips: Vec<String> = h
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        if let Some(p) = req.extensions().get::<std::net::SocketAddr>() {
            let ip = p.ip().to_string();
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        Trail(Some(Box::new(Record {
            id: uuid::Uuid::new_v4().to_string(),
            received: Utc::now(),
            uri: req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into()),
            path: req.uri().path().to_string(),
            method: req.method().as_str().to_string(),
            user_agent: h.get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()).map(String::from),
            source_ips: ips,
            user: None,
            authn_failed: false,
            impersonated: None,
            attrs: None,
            api_version: String::new(),
            decision: None,
            request: None,
            long_running: false,
            annotations: Vec::new(),
        })))
    }

    /// Whether a record is being kept.
    pub fn on(&self) -> bool {
        self.0.is_some()
    }

    /// The authenticated user (None: anonymous).
    pub fn user(&mut self, u: Option<&Arc<User>>) {
        if let Some(r) = &mut self.0 {
            r.user = u.cloned();
        }
    }

    /// Authentication failed (a 401).
    pub fn authn_failed(&mut self) {
        if let Some(r) = &mut self.0 {
            r.authn_failed = true;
        }
    }

    /// The user impersonated.
    pub fn impersonated(&mut self, u: &User) {
        if let Some(r) = &mut self.0 {
            r.impersonated = Some(u.clone());
        }
    }

    /// What the request asks (`version`: the API version of a resource request).
    pub fn attrs(&mut self, a: &Attrs, version: &str, query: &request::Query) {
        if let Some(r) = &mut self.0 {
            let sub = a.resource.as_ref().map(|r| r.subresource.as_str()).unwrap_or("");
            r.long_running = a.verb == "watch"
                || matches!(sub, "exec" | "attach" | "portforward" | "proxy")
                || (sub == "log" && query.flag("follow"));
            r.attrs = Some(a.clone());
            r.api_version = version.to_string();
        }
    }

    /// The authorizer's answer.
    pub fn decision(&mut self, allowed: bool, reason: &str) {
        if let Some(r) = &mut self.0 {
            r.decision = Some((allowed, reason.to_string()));
        }
    }

    /// Annotations admission added (PodSecurity's audit violations).
    pub fn annotate(&mut self, notes: Vec<(String, String)>) {
        if let Some(r) = &mut self.0 {
            r.annotations.extend(notes);
        }
    }

    /// The request body and its media type.
    pub fn body(&mut self, ct: &str, b: &Bytes) {
        if let Some(r) = &mut self.0 {
            r.request = Some((ct.to_string(), b.clone()));
        }
    }
}

/// An Event's `responseStatus`: the code alone for a success, else the Status.
#[derive(Serialize)]
#[serde(untagged)]
enum Status<'a> {
    Code { metadata: Empty, code: u16 },
    Full(&'a Value),
}

#[derive(Serialize)]
struct Empty {}

fn is_empty(s: &str) -> bool {
    s.is_empty()
}

#[derive(Serialize)]
struct UserOut<'a> {
    #[serde(skip_serializing_if = "is_empty")]
    username: &'a str,
    #[serde(skip_serializing_if = "is_empty")]
    uid: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    groups: &'a [String],
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    extra: &'a std::collections::BTreeMap<String, Vec<String>>,
}

impl<'a> From<&'a User> for UserOut<'a> {
    fn from(u: &'a User) -> Self {
        UserOut { username: &u.name, uid: &u.uid, groups: &u.groups, extra: &u.extra }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ObjectRef<'a> {
    resource: &'a str,
    #[serde(skip_serializing_if = "is_empty")]
    namespace: &'a str,
    #[serde(skip_serializing_if = "is_empty")]
    name: &'a str,
    #[serde(skip_serializing_if = "is_empty")]
    api_group: &'a str,
    #[serde(skip_serializing_if = "is_empty")]
    api_version: &'a str,
    #[serde(skip_serializing_if = "is_empty")]
    subresource: &'a str,
}

/// An `audit.k8s.io/v1` Event, as Kubernetes orders its fields.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventOut<'a> {
    kind: &'static str,
    api_version: &'static str,
    level: Level,
    #[serde(rename = "auditID")]
    audit_id: &'a str,
    stage: &'static str,
    #[serde(rename = "requestURI")]
    request_uri: &'a str,
    verb: &'a str,
    user: UserOut<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    impersonated_user: Option<UserOut<'a>>,
    #[serde(rename = "sourceIPs")]
    source_ips: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    user_agent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    object_ref: Option<ObjectRef<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_status: Option<&'a Status<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_object: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_object: Option<&'a Value>,
    request_received_timestamp: String,
    stage_timestamp: String,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    annotations: std::collections::BTreeMap<&'a str, &'a str>,
}

static ANONYMOUS: std::sync::LazyLock<User> = std::sync::LazyLock::new(|| User {
    name: "system:anonymous".into(),
    groups: vec!["system:unauthenticated".into()],
    ..Default::default()
});
static NOBODY: std::sync::LazyLock<User> = std::sync::LazyLock::new(User::default);

impl Record {
    /// Who the policy judges: the authenticated user, anonymous without
    /// credentials, nobody (`{}`) when authentication failed.
    fn who(&self) -> &User {
        match (&self.user, self.authn_failed) {
            (Some(u), _) => u,
            (None, true) => &NOBODY,
            (None, false) => &ANONYMOUS,
        }
    }
}

/// One request's record and what the policy decided for it: its Events.
struct Event {
    rec: Box<Record>,
    level: Level,
    strip: bool,
    request_object: Option<Value>,
}

impl Event {
    fn strip(&self, mut v: Value) -> Value {
        if self.strip {
            if let Some(m) = v["metadata"].as_object_mut() {
                m.shift_remove("managedFields");
            }
            if let Some(items) = v["items"].as_array_mut() {
                for i in items {
                    if let Some(m) = i["metadata"].as_object_mut() {
                        m.shift_remove("managedFields");
                    }
                }
            }
        }
        v
    }

    /// One Event as a JSON line.
    fn line(
        &self,
        stage: Stage,
        at: DateTime<Utc>,
        status: Option<&Status>,
        response_object: Option<&Value>,
    ) -> String {
        let r = &self.rec;
        let attrs = r.attrs.as_ref().expect("attributes set before Events are made");
        let request_object = self.request_object.as_ref();
        let object_ref = attrs.resource.as_ref().map(|a| ObjectRef {
            resource: &a.resource,
            namespace: &a.namespace,
            name: if a.name.is_empty() {
                request_object.and_then(|v| v["metadata"]["name"].as_str()).unwrap_or("")
            } else {
                &a.name
            },
            api_group: &a.group,
            api_version: &r.api_version,
            subresource: &a.subresource,
        });
        let e = EventOut {
            kind: "Event",
            api_version: "audit.k8s.io/v1",
            level: self.level,
            audit_id: &r.id,
            stage: stage.name(),
            request_uri: &r.uri,
            verb: &attrs.verb,
            user: r.who().into(),
            impersonated_user: r.impersonated.as_ref().map(UserOut::from),
            source_ips: &r.source_ips,
            user_agent: r.user_agent.as_deref(),
            object_ref,
            response_status: status,
            request_object,
            response_object,
            request_received_timestamp: micro(r.received),
            stage_timestamp: micro(at),
            annotations: {
                let mut a: std::collections::BTreeMap<&str, &str> =
                    r.annotations.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                if let Some((allowed, reason)) = &r.decision {
                    a.insert("authorization.k8s.io/decision", if *allowed { "allow" } else { "forbid" });
                    a.insert("authorization.k8s.io/reason", reason);
                }
                a
            },
        };
        serde_json::to_string(&e).unwrap_or_default()
    }
}

/// The writer's end: a file it rotates, or standard output.
struct Sink {
    cfg: AuditConfig,
    out: Option<std::io::BufWriter<std::fs::File>>,
    size: u64,
}

impl Sink {
    fn open(cfg: &AuditConfig) -> Result<Sink, String> {
        let mut s = Sink { cfg: cfg.clone(), out: None, size: 0 };
        if !s.stdout() {
            s.reopen().map_err(|e| format!("audit log {}: {e}", cfg.path.display()))?;
        }
        Ok(s)
    }

    fn stdout(&self) -> bool {
        self.cfg.path.as_os_str() == "-"
    }

    fn reopen(&mut self) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(d) = self.cfg.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(d)?;
        }
        let f = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&self.cfg.path)?;
        self.size = f.metadata()?.len();
        self.out = Some(std::io::BufWriter::new(f));
        Ok(())
    }

    fn run(mut self, mut rx: mpsc::Receiver<String>) {
        while let Some(line) = rx.blocking_recv() {
            std::thread::sleep(GATHER);
            self.write(&line);
            while let Ok(line) = rx.try_recv() {
                self.write(&line);
            }
            self.flush();
        }
        self.flush();
    }

    fn write(&mut self, line: &str) {
        if self.stdout() {
            let mut o = std::io::stdout().lock();
            let _ = writeln!(o, "{line}");
            return;
        }
        let n = line.len() as u64 + 1;
        let max = self.cfg.max_size_mb * 1024 * 1024;
        if max > 0 && self.size + n > max && self.size > 0 {
            if let Err(e) = self.rotate() {
                tracing::warn!(error = %e, "rotating the audit log failed");
            }
        }
        if let Some(o) = &mut self.out {
            match writeln!(o, "{line}") {
                Ok(()) => self.size += n,
                Err(e) => tracing::warn!(error = %e, "writing the audit log failed"),
            }
        }
    }

    fn flush(&mut self) {
        if let Some(o) = &mut self.out {
            let _ = o.flush();
        }
        if self.stdout() {
            let _ = std::io::stdout().flush();
        }
    }

    /// Renames the file to `<stem>-<UTC time>.<ext>`, opens a new one and prunes backups.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.flush();
        self.out = None;
        let backup = backup_name(&self.cfg.path, Utc::now());
        std::fs::rename(&self.cfg.path, &backup)?;
        self.reopen()?;
        self.prune();
        Ok(())
    }

    fn prune(&self) {
        let mut backups = backups(&self.cfg.path);
        backups.sort_by(|a, b| b.0.cmp(&a.0));
        let cutoff =
            (self.cfg.max_age_days > 0).then(|| Utc::now() - chrono::Duration::days(self.cfg.max_age_days as i64));
        for (i, (t, p)) in backups.iter().enumerate() {
            let too_many = self.cfg.max_backups > 0 && i >= self.cfg.max_backups;
            let too_old = cutoff.is_some_and(|c| *t < c);
            if too_many || too_old {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

const BACKUP_TIME: &str = "%Y-%m-%dT%H-%M-%S%.3f";

fn split_name(path: &Path) -> (String, String) {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    match name.rfind('.') {
        Some(i) if i > 0 => (name[..i].to_string(), name[i..].to_string()),
        _ => (name, String::new()),
    }
}

fn backup_name(path: &Path, t: DateTime<Utc>) -> PathBuf {
    let (stem, ext) = split_name(path);
    path.with_file_name(format!("{stem}-{}{ext}", t.format(BACKUP_TIME)))
}

/// The rotated files of `path`, with their times.
fn backups(path: &Path) -> Vec<(DateTime<Utc>, PathBuf)> {
    let (stem, ext) = split_name(path);
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let Ok(rd) = std::fs::read_dir(dir) else { return vec![] };
    rd.flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let t = n.strip_prefix(&format!("{stem}-"))?.strip_suffix(ext.as_str())?;
            let t = chrono::NaiveDateTime::parse_from_str(t, BACKUP_TIME).ok()?.and_utc();
            Some((t, e.path()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, groups: &[&str]) -> User {
        User::new(name, groups)
    }

    const POLICY: &str = r#"
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: None
    users: ["system:kube-proxy"]
    verbs: ["watch"]
  - level: None
    nonResourceURLs: ["/healthz*", "/version"]
  - level: RequestResponse
    resources:
      - group: ""
        resources: ["pods/log", "configmaps"]
        resourceNames: ["special"]
  - level: Request
    resources:
      - group: ""
        resources: ["*/status"]
  - level: Metadata
    resources:
      - group: "apps"
  - level: Metadata
    userGroups: ["team"]
    namespaces: ["prod"]
    omitStages: [ResponseStarted]
    omitManagedFields: true
"#;

    #[test]
    fn rules_match_as_kubernetes_does() {
        let p = Policy::parse(POLICY).unwrap();
        let level = |u: &User, a: &Attrs| p.decide(u, a).level;
        let proxy = user("system:kube-proxy", &[]);
        let jane = user("jane", &["team"]);
        assert_eq!(level(&proxy, &Attrs::resource("watch", "", "pods", "", "x", "")), Level::None);
        assert_eq!(level(&jane, &Attrs::path("get", "/healthz/ready")), Level::None);
        assert_eq!(level(&jane, &Attrs::path("get", "/version")), Level::None);
        assert_eq!(level(&jane, &Attrs::path("get", "/versionx")), Level::None, "no rule matches");
        let special = Attrs::resource("get", "", "configmaps", "", "a", "special");
        assert_eq!(level(&jane, &special), Level::RequestResponse);
        let other = Attrs::resource("get", "", "configmaps", "", "a", "other");
        assert_eq!(level(&jane, &other), Level::None);
        assert_eq!(level(&jane, &Attrs::resource("update", "", "nodes", "status", "", "n")), Level::Request);
        assert_eq!(level(&jane, &Attrs::resource("list", "apps", "deployments", "", "x", "")), Level::Metadata);
        let prod = Attrs::resource("get", "", "secrets", "", "prod", "s");
        let d = p.decide(&jane, &prod);
        assert_eq!(d.level, Level::Metadata);
        assert_eq!(d.omit_stages, vec![Stage::RequestReceived, Stage::ResponseStarted]);
        assert!(d.omit_managed_fields);
        assert_eq!(level(&user("bob", &[]), &prod), Level::None);
        let wild = Policy::parse(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Metadata\n  resources:\n  - group: ''\n    resources: ['pods/*']\n",
        )
        .unwrap();
        assert_eq!(wild.decide(&jane, &Attrs::resource("create", "", "pods", "exec", "d", "p")).level, Level::Metadata);
        // As upstream, "pods/*" covers the pods themselves too.
        assert_eq!(wild.decide(&jane, &Attrs::resource("get", "", "pods", "", "d", "p")).level, Level::Metadata);
        assert_eq!(wild.decide(&jane, &Attrs::resource("get", "", "podtemplates", "", "d", "p")).level, Level::None);
    }

    #[test]
    fn bad_policies_are_refused_with_the_reason() {
        for (text, want) in [
            ("apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Loud\n", "unknown variant `Loud`"),
            ("apiVersion: audit.k8s.io/v1beta1\nkind: Policy\n", "apiVersion must be audit.k8s.io/v1"),
            ("apiVersion: audit.k8s.io/v1\nkind: Pod\n", "kind must be Policy"),
            ("apiVersion: audit.k8s.io/v1\nkind: Policy\nrulez: []\n", "unknown field `rulez`"),
            (
                "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: None\n  nonResourceURLs: ['/a']\n  namespaces: [x]\n",
                "both regular resources and non-resource URLs",
            ),
            (
                "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: None\n  nonResourceURLs: ['a*b']\n",
                "must start with /",
            ),
        ] {
            let e = Policy::parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    /// Metadata for all, into `path`: rotated at 1 MB, two backups kept for 30 days.
    fn config(path: &std::path::Path) -> AuditConfig {
        AuditConfig {
            path: path.to_path_buf(),
            policy: Arc::new(Policy::metadata_for_all()),
            max_age_days: 30,
            max_backups: 2,
            max_size_mb: 1,
        }
    }

    #[tokio::test]
    async fn a_panic_is_logged_at_the_panic_stage() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("audit.log");
        let cfg = AuditConfig { max_backups: 0, max_size_mb: 0, ..config(&path) };
        let log = AuditLog::open(&cfg).unwrap();
        let req = Request::get("/api/v1/namespaces/default/pods").body(()).unwrap();
        let resp = crate::server::apiserver::request::bytes_response(500, "text/plain", Bytes::from_static(b"x"));
        let resp = log.panicked(Trail::start(&req), "index out of bounds", resp).await;
        assert!(resp.headers().contains_key("audit-id"));
        let mut lines = Vec::new();
        for _ in 0..200 {
            lines = std::fs::read_to_string(&path).unwrap_or_default().lines().map(String::from).collect();
            if lines.len() == 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let evs: Vec<Value> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(evs.len(), 2, "{lines:?}");
        assert_eq!(evs[0]["stage"], "RequestReceived");
        assert_eq!(evs[1]["stage"], "Panic");
        assert_eq!(evs[1]["auditID"], evs[0]["auditID"]);
        assert_eq!(
            evs[1]["responseStatus"],
            serde_json::json!({"metadata": {}, "status": "Failure", "message": "APIServer panic'd: index out of bounds",
                               "reason": "InternalError", "code": 500})
        );
    }

    #[test]
    fn the_file_rotates_by_size_and_keeps_max_backups() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("audit.log");
        let cfg = config(&path);
        let mut sink = Sink::open(&cfg).unwrap();
        let line = "x".repeat(1023);
        let mut rotations = 0;
        for _ in 0..4 * 1024 + 10 {
            let before = sink.size;
            sink.write(&line);
            if sink.size < before {
                rotations += 1;
                // Backups are named to the millisecond.
                std::thread::sleep(std::time::Duration::from_millis(3));
            }
        }
        sink.flush();
        assert_eq!(rotations, 4);
        assert_eq!(backups(&path).len(), 2);
        let len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(len, sink.size);
        assert!(len <= 1024 * 1024, "{len}");
    }

    #[test]
    fn backups_are_named_and_found_as_lumberjack_does() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("audit.log");
        let t = DateTime::parse_from_rfc3339("2026-11-30T14:22:01.123Z").unwrap().with_timezone(&Utc);
        let b = backup_name(&p, t);
        assert_eq!(b.file_name().unwrap(), "audit-2026-11-30T14-22-01.123.log");
        std::fs::write(&b, "x").unwrap();
        std::fs::write(d.path().join("audit-junk.log"), "x").unwrap();
        assert_eq!(backups(&p), vec![(t, b)]);
    }
}
