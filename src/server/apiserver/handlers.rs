//! The generic REST handlers: get, list, create, update, patch, delete and
//! deletecollection for every registered resource, with Kubernetes's object semantics
//! (uid, generateName, generation, resourceVersion preconditions, finalizers,
//! spec/status split, strict field validation).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::HeaderMap;
use serde_json::{Value, json};

use super::ApiServer;
use super::propagation::{FOREGROUND, ORPHAN, internal_call};
use super::request::{self, Query, Resp, Want};
use crate::api::patch::{self, PatchType};
use crate::api::registry::{NameRule, ResourceDef};
use crate::api::schema::Types;
use crate::api::selectors::{FieldSelector, LabelSelector};
use crate::api::status::{ApiError, Cause, Target};
use crate::api::{crd, defaults, managed, meta, table, validation};
use crate::embedded::{KeyValue, StorageError};

/// Namespaces that cannot be deleted, as in Kubernetes.
const PROTECTED_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

/// One request against a resource.
pub struct Call {
    /// The resource.
    pub def: &'static ResourceDef,
    /// The namespace from the path.
    pub ns: Option<String>,
    /// The object name from the path.
    pub name: Option<String>,
    /// The subresource from the path.
    pub sub: Option<String>,
    /// Query parameters.
    pub query: Query,
    /// Request headers.
    pub headers: HeaderMap,
    /// Who asks; None for the server's own internal calls.
    pub user: Option<std::sync::Arc<crate::server::auth::User>>,
    /// Annotations for the request's audit Event, when it is audited.
    pub notes: Option<AuditNotes>,
}

/// Audit annotations admission adds (`pod-security.kubernetes.io/audit-violations`).
pub type AuditNotes = std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>;

impl Call {
    /// Adds an annotation to the request's audit Event (nothing when not audited).
    pub(super) fn note(&self, key: &str, value: String) {
        if let Some(n) = &self.notes {
            n.lock().unwrap_or_else(|e| e.into_inner()).push((key.to_string(), value));
        }
    }

    pub(super) fn target<'a>(&'a self, name: &'a str) -> Target<'a> {
        Target { group: self.def.group, resource: self.def.plural, name }
    }

    fn key(&self, name: &str) -> String {
        self.def.key(self.ns.as_deref(), name)
    }

    /// Whether objects are stored in another version's form (see [`crate::api::events`]),
    /// so the zero-parse read paths do not apply.
    pub(super) fn converts(&self) -> bool {
        self.def.stored_as_core_event() || self.def.custom.is_some()
    }

    /// A stored object in this resource's version, with its resourceVersion. Custom
    /// objects convert between versions as the `None` strategy does: by apiVersion.
    pub(super) fn decode(&self, kv: &KeyValue) -> Result<Value, ApiError> {
        let mut v = decode_kv(kv)?;
        if self.def.custom.is_some() {
            v["apiVersion"] = json!(self.def.api_version());
            return Ok(v);
        }
        Ok(if self.def.stored_as_core_event() { crate::api::events::from_core(&v) } else { v })
    }

    /// Enough of a stored object to test it against `paths` (see
    /// [`crate::api::sparse`]); the whole converted object where conversion renames
    /// fields.
    pub(super) fn decode_for_match(&self, kv: &KeyValue, paths: &crate::api::sparse::Paths) -> Result<Value, ApiError> {
        if self.def.stored_as_core_event() {
            return self.decode(kv);
        }
        paths.parse(&kv.value).map_err(|e| ApiError::internal(format!("decoding {}: {e}", kv.key)))
    }

    /// An object in the stored form.
    pub(super) fn encode(&self, obj: &Value) -> Bytes {
        if let Some(c) = &self.def.custom {
            let mut o = obj.clone();
            o["apiVersion"] = json!(format!("{}/{}", self.def.group, c.storage_version));
            return encode(&o);
        }
        if self.def.stored_as_core_event() { encode(&crate::api::events::to_core(obj)) } else { encode(obj) }
    }

    /// The stored form, or 413 when it is over what the store takes.
    fn encode_within_limit(&self, obj: &Value) -> Result<Bytes, ApiError> {
        let b = self.encode(obj);
        if b.len() > MAX_OBJECT_BYTES {
            return Err(ApiError::object_too_large(b.len(), MAX_OBJECT_BYTES));
        }
        Ok(b)
    }

    pub(super) fn dry_run(&self) -> Result<bool, ApiError> {
        match self.query.get("dryRun") {
            None | Some("") => Ok(false),
            Some("All") => Ok(true),
            Some(v) => Err(ApiError::bad_request(format!("Invalid dryRun value {v:?}: supported values are \"All\""))),
        }
    }

    /// The field manager: `fieldManager`, or the User-Agent up to its first `/`, as
    /// Kubernetes defaults it.
    pub(super) fn manager(&self) -> Result<String, ApiError> {
        let m = match self.query.get("fieldManager").filter(|m| !m.is_empty()) {
            Some(m) => m.to_string(),
            None => {
                let ua = self.headers.get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("");
                ua.split('/').next().unwrap_or("").chars().take(128).collect()
            }
        };
        if m.chars().count() > 128 {
            return Err(ApiError::invalid(
                "meta.k8s.io",
                "PatchOptions",
                "",
                vec![Cause::invalid("fieldManager", &json!(m), "must be no more than 128 characters")],
            ));
        }
        Ok(m)
    }

    /// What managedFields bookkeeping a write by `manager` needs.
    pub(super) fn writer<'a>(&'a self, manager: &'a str) -> managed::Writer<'a> {
        let types = Types::builtin();
        managed::Writer {
            types,
            root: match &self.def.custom {
                Some(c) => c.ty.clone(),
                None => types.root(self.def),
            },
            api_version: self.def.api_version(),
            manager,
            subresource: self.sub.as_deref(),
            has_status: self.def.has_status,
        }
    }

    fn field_validation(&self) -> Result<FieldValidation, ApiError> {
        match self.query.get("fieldValidation") {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some(v) => Err(ApiError::bad_request(format!(
                "fieldValidation {v:?} is not a valid value: must be one of Ignore, Warn or Strict"
            ))),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FieldValidation {
    Strict,
    Warn,
    Ignore,
}

/// Maps a storage error to its API error.
pub fn storage_error(t: Target<'_>, e: StorageError) -> ApiError {
    match e {
        StorageError::NotFound(_) => ApiError::not_found(t),
        StorageError::AlreadyExists(_) => ApiError::already_exists(t),
        StorageError::Conflict { .. } => ApiError::stale(t),
        StorageError::Compacted { requested, compacted } => {
            ApiError::expired(format!("too old resource version: {requested} ({compacted})"))
        }
        StorageError::FutureRevision { requested, current } => {
            ApiError::timeout(format!("Too large resource version: {requested}, current: {current}"), 1)
        }
        StorageError::Lagged(n) => ApiError::expired(format!("watch fell behind by {n} events")),
        StorageError::Backend(m) => ApiError::internal(m),
    }
}

/// Decodes a stored object and stamps its resourceVersion.
pub fn decode_kv(kv: &KeyValue) -> Result<Value, ApiError> {
    let v: Value =
        serde_json::from_slice(&kv.value).map_err(|e| ApiError::internal(format!("decoding {}: {e}", kv.key)))?;
    Ok(with_rv(v, kv.mod_rev))
}

/// Encodes an object for storage (see [`super::wire`]), in an allocation of its exact
/// length: the encoder's buffer grows by doubling, and the store keeps every value it
/// is given (at 30,000 pods the slack was about a third of the store's memory).
pub(super) fn encode(obj: &Value) -> Bytes {
    Bytes::copy_from_slice(&super::wire::encode(obj))
}

fn with_rv(mut obj: Value, rev: i64) -> Value {
    meta::meta_mut(&mut obj).insert("resourceVersion".into(), json!(rev.to_string()));
    obj
}

/// Checks `apiVersion`/`kind` of a body against the endpoint and fills them if absent.
fn check_type(def: &ResourceDef, obj: &mut Value) -> Result<(), ApiError> {
    let av = def.api_version();
    match obj.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => obj["apiVersion"] = json!(av),
        Some(a) if a == av => {}
        Some(a) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({a}) does not match the expected API version ({av})"
            )));
        }
    }
    match obj.get("kind").and_then(Value::as_str) {
        None | Some("") => obj["kind"] = json!(def.kind),
        Some(k) if k == def.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({}) of this endpoint",
                def.kind
            )));
        }
    }
    Ok(())
}

fn name_causes(def: &ResourceDef, name: &str) -> Vec<Cause> {
    let errs = match def.name_rule() {
        NameRule::PathSegment => validation::path_segment(name),
        NameRule::Dns1035Label => validation::dns1035_label(name),
        NameRule::Dns1123Label => validation::dns1123_label(name),
        NameRule::Dns1123Subdomain => validation::dns1123_subdomain(name),
    };
    errs.into_iter().map(|m| Cause::invalid("metadata.name", &json!(name), m)).collect()
}

/// Kind-specific validation beyond what decoding checks.
/// The largest object the store takes, as etcd's default request limit.
pub const MAX_OBJECT_BYTES: usize = 1536 * 1024;
/// ConfigMaps and Secrets hold at most this much data, as in Kubernetes.
const MAX_CONFIG_DATA: usize = 1024 * 1024;

fn kind_causes(def: &ResourceDef, obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    if matches!(def.plural, "configmaps" | "secrets") && def.group.is_empty() {
        let secret = def.plural == "secrets";
        let mut total = 0usize;
        for field in ["data", "binaryData", "stringData"] {
            for (k, v) in obj.get(field).and_then(Value::as_object).into_iter().flatten() {
                let len = v.as_str().map(str::len).unwrap_or(0);
                let base64 = field == "binaryData" || (secret && field == "data");
                total += if secret { 0 } else { k.len() } + if base64 { len / 4 * 3 } else { len };
            }
        }
        if total > MAX_CONFIG_DATA {
            let field = if secret { "data" } else { "[]" };
            causes.push(Cause {
                reason: "FieldValueTooLong",
                field: field.into(),
                message: format!("Too long: must have at most {MAX_CONFIG_DATA} bytes"),
            });
        }
        for field in ["data", "binaryData", "stringData"] {
            if let Some(m) = obj.get(field).and_then(Value::as_object) {
                for k in m.keys() {
                    for e in validation::config_key(k) {
                        causes.push(Cause::invalid(format!("{field}[{k}]"), &json!(k), e));
                    }
                }
            }
        }
    }
    causes
}

fn is_crd(def: &ResourceDef) -> bool {
    def.group == "apiextensions.k8s.io" && def.plural == "customresourcedefinitions"
}

fn is_service(def: &ResourceDef) -> bool {
    def.group.is_empty() && def.plural == "services"
}

impl ApiServer {
    /// For a Service spec update: takes the allocation lock and re-checks IPs and ports.
    async fn service_update_lock(
        &self,
        call: &Call,
        old: &Value,
        new: &mut Value,
    ) -> Result<Option<tokio::sync::MutexGuard<'_, ()>>, ApiError> {
        if !is_service(call.def) || call.sub.is_some() {
            return Ok(None);
        }
        let g = self.svc_lock.lock().await;
        self.allocate_service(Some(old), new).await?;
        Ok(Some(g))
    }

    fn validate(
        &self,
        call: &Call,
        obj: &Value,
        fv: FieldValidation,
        patch: bool,
        before: &[String],
    ) -> Result<Vec<String>, ApiError> {
        let def = call.def;
        let name = meta::name(obj).to_string();
        let mut causes = name_causes(def, &name);
        causes.extend(validation::metadata_causes(obj));
        causes.extend(kind_causes(def, obj));
        if !causes.is_empty() {
            return Err(ApiError::invalid(def.group, def.kind, &name, causes));
        }
        let typed = (def.roundtrip)(obj).map_err(|e| {
            ApiError::bad_request(format!(
                "{} in version {:?} cannot be handled as a {}: {e}",
                def.kind, def.version, def.kind
            ))
        })?;
        let unknown: Vec<String> = validation::unknown_fields(obj, &typed)
            .into_iter()
            .filter(|f| !before.contains(f))
            .map(|f| format!("unknown field {f:?}"))
            .collect();
        self.field_problems(call, unknown, fv, patch)
    }

    /// What a custom resource's schema does to an object: defaults, then prunes unknown
    /// fields (reported as field validation says), then validates (against `old`, the
    /// stored object, on an update). Also checks CustomResourceDefinitions themselves.
    fn schema_checks(
        &self,
        call: &Call,
        obj: &mut Value,
        old: Option<&Value>,
        fv: FieldValidation,
        patch: bool,
    ) -> Result<Vec<String>, ApiError> {
        if is_crd(call.def) {
            crd::default_definition(obj);
            let causes = crd::check_definition(obj);
            if !causes.is_empty() {
                return Err(ApiError::invalid(call.def.group, call.def.kind, meta::name(obj), causes));
            }
            return Ok(vec![]);
        }
        let Some(c) = &call.def.custom else { return Ok(vec![]) };
        crd::default(&c.schema, obj);
        let mut unknown = Vec::new();
        crd::prune(&c.schema, obj, "", &mut unknown);
        let warnings =
            self.field_problems(call, unknown.iter().map(|f| format!("unknown field {f:?}")).collect(), fv, patch)?;
        let mut causes = Vec::new();
        crd::validate(&c.schema, obj, old, "", &mut causes);
        if !causes.is_empty() {
            return Err(ApiError::invalid(call.def.group, call.def.kind, meta::name(obj), causes));
        }
        Ok(warnings)
    }

    fn field_problems(
        &self,
        call: &Call,
        problems: Vec<String>,
        fv: FieldValidation,
        patch: bool,
    ) -> Result<Vec<String>, ApiError> {
        if problems.is_empty() || fv == FieldValidation::Ignore {
            return Ok(vec![]);
        }
        if fv == FieldValidation::Warn {
            return Ok(problems);
        }
        let msg = format!("strict decoding error: {}", problems.join(", "));
        if patch {
            let name = call.name.as_deref().unwrap_or("");
            return Err(ApiError::invalid(
                call.def.group,
                call.def.kind,
                name,
                vec![Cause::invalid("patch", &json!(""), msg)],
            ));
        }
        let def = call.def;
        Err(ApiError::bad_request(format!(
            "{} in version {:?} cannot be handled as a {}: {msg}",
            def.kind, def.version, def.kind
        )))
    }

    /// Refuses writes into a missing or terminating namespace.
    async fn check_namespace(&self, call: &Call, name: &str) -> Result<(), ApiError> {
        let Some(ns) = call.ns.as_deref().filter(|_| call.def.namespaced) else { return Ok(()) };
        let key = format!("/registry/namespaces/{ns}");
        match self.store.get(&key).await.map_err(|e| storage_error(call.target(name), e))? {
            None => Err(ApiError::not_found(Target { group: "", resource: "namespaces", name: ns })),
            Some(kv) if meta::is_deleting(&decode_kv(&kv)?) => Err(ApiError::forbidden(
                call.target(name),
                format!(
                    "{} {name:?} is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                    call.target(name).qualified()
                ),
            )),
            Some(_) => Ok(()),
        }
    }

    /// GET of one object, answered from the stored bytes when JSON is wanted.
    pub async fn get_response(&self, call: &Call, name: &str) -> Result<Resp, ApiError> {
        let kv = self.store.get(&call.key(name)).await.map_err(|e| storage_error(call.target(name), e))?;
        let kv = kv.ok_or_else(|| ApiError::not_found(call.target(name)))?;
        if request::want(&call.headers) == Want::Object
            && !call.converts()
            && let Some(b) = super::wire::with_rv(&kv.value, kv.mod_rev)
        {
            return Ok(request::bytes_response(200, "application/json", Bytes::from(b)));
        }
        Ok(self.render(call, call.decode(&kv)?, 200))
    }

    /// Renders one object as asked (JSON or a one-row Table).
    pub fn render(&self, call: &Call, obj: Value, code: u16) -> Resp {
        match request::want(&call.headers) {
            Want::Table => {
                let rv = meta::meta_str(&obj, "resourceVersion").unwrap_or("").to_string();
                request::json(code, &self.table(call, std::slice::from_ref(&obj), &rv, None, true))
            }
            Want::Object => request::json(code, &obj),
        }
    }

    /// A Table of `items`.
    pub fn table(&self, call: &Call, items: &[Value], rv: &str, cont: Option<&str>, headers: bool) -> Value {
        let now = chrono::Utc::now().timestamp();
        let (g, p) = (call.def.group, call.def.plural);
        let custom = call.def.custom.as_deref();
        let cells = |o: &Value| match custom {
            Some(c) => {
                let mut row = vec![json!(meta::name(o))];
                row.extend(c.columns.iter().map(|col| crd::cell(col, o, now)));
                row
            }
            None => table::cells(g, p, o, now),
        };
        let include = call.query.get("includeObject").unwrap_or("Metadata");
        let rows: Vec<Value> = items
            .iter()
            .map(|o| {
                let object = match include {
                    "Object" => o.clone(),
                    "None" => Value::Null,
                    _ => json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata")}),
                };
                json!({"cells": cells(o), "object": object})
            })
            .collect();
        let mut md = json!({"resourceVersion": rv});
        if let Some(c) = cont {
            md["continue"] = json!(c);
        }
        let cols = match (headers, custom) {
            (false, _) => vec![],
            (true, Some(c)) => crd::column_definitions(&c.columns),
            (true, None) => table::column_definitions(g, p),
        };
        json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": md, "columnDefinitions": cols, "rows": rows})
    }

    /// LIST with selectors, limit/continue and resourceVersion semantics.
    pub async fn list(&self, call: &Call) -> Result<Resp, ApiError> {
        let q = &call.query;
        let include = q.get("includeObject");
        if !matches!(include, None | Some("Object" | "Metadata" | "None")) {
            return Err(ApiError::bad_request(format!("includeObject {:?} is not supported", include.unwrap_or(""))));
        }
        let labels = LabelSelector::parse(q.get("labelSelector").unwrap_or("")).map_err(ApiError::bad_request)?;
        let fields = FieldSelector::parse(q.get("fieldSelector").unwrap_or(""), call.def.field_labels)
            .map_err(ApiError::bad_request)?;
        let limit = q.int("limit")?.unwrap_or(0).max(0) as usize;
        let mut start = None::<String>;
        let mut rev;
        if let Some(tok) = q.get("continue").filter(|c| !c.is_empty()) {
            let (r, s) = decode_continue(tok)?;
            if r < self.store.compacted_rev() {
                return Err(ApiError::expired(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                ));
            }
            rev = r;
            start = Some(s);
        } else {
            rev = self.list_revision(q).await?;
        }
        let prefix = call.def.list_prefix(call.ns.as_deref());
        let filtered = !labels.is_empty() || !fields.is_empty();
        let wanted = filtered.then(|| crate::api::selectors::selected_paths(&labels, &fields));
        let batch = if limit == 0 {
            0
        } else if filtered {
            limit.max(500)
        } else {
            limit
        };
        let mut items: Vec<KeyValue> = Vec::new();
        let mut cont = None;
        'pages: loop {
            let page = self
                .store
                .list(&prefix, start.as_deref(), batch, rev)
                .await
                .map_err(|e| storage_error(call.target(""), e))?;
            rev = page.rev;
            let n = page.kvs.len();
            let more = page.more;
            let last_key = page.kvs.last().map(|kv| kv.key.clone());
            for (i, kv) in page.kvs.into_iter().enumerate() {
                if let Some(wanted) = &wanted {
                    let obj = call.decode_for_match(&kv, wanted)?;
                    if !labels.matches_object(&obj) || !fields.matches(&obj) {
                        continue;
                    }
                }
                let key = kv.key.clone();
                items.push(kv);
                if limit > 0 && items.len() == limit {
                    if i + 1 < n || more {
                        cont = Some(encode_continue(rev, &key));
                    }
                    break 'pages;
                }
            }
            match last_key {
                Some(last) if more => start = Some(last),
                _ => break,
            }
        }
        let rv = rev.to_string();
        if request::want(&call.headers) == Want::Table {
            let objs = items.iter().map(|kv| call.decode(kv)).collect::<Result<Vec<_>, _>>()?;
            return Ok(request::json(200, &self.table(call, &objs, &rv, cont.as_deref(), true)));
        }
        // The list is written around the stored bytes of its items.
        let mut md = json!({"resourceVersion": rv});
        if let Some(c) = &cont {
            md["continue"] = json!(c);
        }
        let head =
            json!({"kind": format!("{}List", call.def.kind), "apiVersion": call.def.api_version(), "metadata": md});
        let mut out = serde_json::to_vec(&head).expect("JSON values serialise");
        out.pop();
        out.extend_from_slice(b",\"items\":[");
        for (i, kv) in items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            if call.converts() || !super::wire::list_item(&kv.value, kv.mod_rev, &mut out) {
                let mut obj = call.decode(kv)?;
                if let Some(o) = obj.as_object_mut() {
                    o.remove("apiVersion");
                    o.remove("kind");
                }
                out.extend_from_slice(&serde_json::to_vec(&obj).expect("JSON values serialise"));
            }
        }
        out.extend_from_slice(b"]}");
        Ok(request::bytes_response(200, "application/json", Bytes::from(out)))
    }

    /// The revision a list without `continue` reads at (0 = current), following
    /// `resourceVersion` and `resourceVersionMatch`.
    async fn list_revision(&self, q: &Query) -> Result<i64, ApiError> {
        let rv = q.get("resourceVersion").unwrap_or("");
        let rvm = q.get("resourceVersionMatch").unwrap_or("");
        if rv.is_empty() || rv == "0" {
            if !rvm.is_empty() && rvm != "NotOlderThan" {
                return Err(ApiError::bad_request(format!(
                    "resourceVersionMatch: Forbidden: resourceVersionMatch {rvm:?} requires a resourceVersion other than 0"
                )));
            }
            return Ok(0);
        }
        let n: i64 = rv.parse().map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))?;
        match rvm {
            "Exact" => Ok(n),
            "" | "NotOlderThan" => {
                // Not older than n: the current state once the store has reached n.
                for _ in 0..30 {
                    if self.store.current_rev() >= n {
                        return Ok(0);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(ApiError::timeout(
                    format!("Too large resource version: {n}, current: {}", self.store.current_rev()),
                    1,
                ))
            }
            other => Err(ApiError::bad_request(format!(
                "resourceVersionMatch: Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\""
            ))),
        }
    }

    /// POST: create.
    pub async fn create(&self, call: &Call, body: Bytes) -> Result<Resp, ApiError> {
        let ct = request::content_type(&call.headers);
        let (obj, dups) = request::decode_object(&ct, &body)?;
        self.refuse_while_terminating(call.def).await?;
        self.create_object(call, obj, &dups, None).await
    }

    /// Creates `obj`; `applied` says it comes from a server-side apply (and already
    /// carries its managedFields).
    async fn create_object(
        &self,
        call: &Call,
        mut obj: Value,
        dups: &[String],
        applied: Option<&str>,
    ) -> Result<Resp, ApiError> {
        let fv = call.field_validation()?;
        let manager = match applied {
            Some(m) => m.to_string(),
            None => call.manager()?,
        };
        check_type(call.def, &mut obj)?;
        self.set_namespace(call, &mut obj)?;
        let m = meta::meta_mut(&mut obj);
        if m.get("name").and_then(Value::as_str).unwrap_or("").is_empty() {
            match m.get("generateName").and_then(Value::as_str).filter(|g| !g.is_empty()) {
                Some(g) => {
                    let n = meta::generate_name(g);
                    m.insert("name".into(), json!(n));
                }
                None => {
                    return Err(ApiError::invalid(
                        call.def.group,
                        call.def.kind,
                        "",
                        vec![Cause::required("metadata.name", "name or generateName is required")],
                    ));
                }
            }
        }
        let name = meta::name(&obj).to_string();
        defaults::apply(call.def.group, call.def.plural, &mut obj);
        if call.def.group.is_empty() && call.def.plural == "pods" {
            defaults::default_toleration_seconds(&mut obj);
        }
        self.admit_limits(call, &mut obj).await?;
        self.admit_service_account(call, &mut obj).await?;
        self.admit_priority(call, &mut obj).await?;
        let mut warnings = self.field_problems(
            call,
            dups.iter().map(|d| format!("duplicate field {d:?}")).collect(),
            fv,
            applied.is_some(),
        )?;
        warnings.extend(self.schema_checks(call, &mut obj, None, fv, applied.is_some())?);
        warnings.extend(self.validate(call, &obj, fv, applied.is_some(), &[])?);
        self.check_escalation(call, &obj).await?;
        self.admit_node_restriction(call, &obj, None)?;
        warnings.extend(self.admit_pod_security(call, &obj, None).await?);
        warnings.extend(self.admit_policies(call, Some(&obj), None, "CREATE").await?);
        if is_crd(call.def) {
            let m = meta::meta_mut(&mut obj);
            let f = m.entry("finalizers").or_insert_with(|| json!([]));
            if let Some(a) = f.as_array_mut()
                && !a.contains(&json!(crd::CLEANUP_FINALIZER))
            {
                a.push(json!(crd::CLEANUP_FINALIZER));
            }
        }
        self.check_namespace(call, &name).await?;
        let m = meta::meta_mut(&mut obj);
        for k in ["resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"] {
            m.remove(k);
        }
        m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        m.insert("creationTimestamp".into(), json!(meta::now_rfc3339()));
        if call.def.tracks_generation() && obj.get("spec").is_some() {
            meta::meta_mut(&mut obj).insert("generation".into(), json!(1));
        }
        if call.def.custom.is_some() {
            // A custom object's status is written through /status only.
            if call.def.has_status
                && let Some(o) = obj.as_object_mut()
            {
                o.remove("status");
            }
        } else if call.def.has_status {
            defaults::initial_status(call.def.group, call.def.plural, &mut obj);
        }
        if call.def.group == "batch" && call.def.plural == "jobs" {
            defaults::job_selector(&mut obj);
        }
        let _svc = if is_service(call.def) {
            let g = self.svc_lock.lock().await;
            self.allocate_service(None, &mut obj).await?;
            Some(g)
        } else {
            None
        };
        if applied.is_none() {
            let base = managed::read(&obj);
            call.writer(&manager).update(None, &mut obj, base);
        }
        let _quota = self.admit_quota(call, &obj).await?;
        let encoded = call.encode_within_limit(&obj)?;
        if call.dry_run()? {
            return Ok(request::with_warnings(self.render(call, obj, 201), &warnings));
        }
        let rev =
            self.store.create(&call.key(&name), encoded).await.map_err(|e| storage_error(call.target(&name), e))?;
        Ok(request::with_warnings(self.render(call, with_rv(obj, rev), 201), &warnings))
    }

    fn set_namespace(&self, call: &Call, obj: &mut Value) -> Result<(), ApiError> {
        let m = meta::meta_mut(obj);
        if call.def.namespaced {
            let ns = call.ns.as_deref().unwrap_or("");
            match m.get("namespace").and_then(Value::as_str) {
                Some(n) if !n.is_empty() && n != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => {
                    m.insert("namespace".into(), json!(ns));
                }
            }
        } else {
            m.remove("namespace");
        }
        Ok(())
    }

    /// Builds the object an update stores from the old one and the client's new one.
    fn prepare_update(&self, call: &Call, old: &Value, mut new: Value) -> Result<Value, ApiError> {
        let status_only = call.sub.as_deref() == Some("status");
        if status_only {
            let mut out = old.clone();
            match new.get_mut("status").map(Value::take) {
                Some(s) if !s.is_null() => out["status"] = s,
                _ => {
                    if let Some(o) = out.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
            if let Some(rv) = meta::meta_str(&new, "resourceVersion") {
                meta::meta_mut(&mut out).insert("resourceVersion".into(), json!(rv));
            }
            return Ok(out);
        }
        let om = old.get("metadata").cloned().unwrap_or(json!({}));
        {
            let m = meta::meta_mut(&mut new);
            for k in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "namespace",
                "name",
            ] {
                match om.get(k) {
                    Some(v) => m.insert(k.into(), v.clone()),
                    None => m.remove(k),
                };
            }
        }
        if call.def.has_status {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(o) = new.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
        }
        defaults::apply(call.def.group, call.def.plural, &mut new);
        if meta::is_deleting(old) {
            let before = meta::finalizers(old);
            if let Some(f) = meta::finalizers(&new).into_iter().find(|f| !before.contains(f)) {
                return Err(ApiError::invalid(
                    call.def.group,
                    call.def.kind,
                    meta::name(old),
                    vec![Cause::forbidden(
                        "metadata.finalizers",
                        &format!(
                            "no new finalizers can be added if the object is being deleted, found new finalizers [{f:?}]"
                        ),
                    )],
                ));
            }
        }
        if call.def.tracks_generation() && new.get("spec").is_some() && new.get("spec") != old.get("spec") {
            let g = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0) + 1;
            meta::meta_mut(&mut new).insert("generation".into(), json!(g));
        }
        Ok(new)
    }

    /// The write both update and patch end in: build the stored object from `old` (the
    /// decoded `cur`) and the client's `new`, validate it, allocate Service addresses, and
    /// commit it. Returns the object and the field-validation warnings.
    async fn write_update(
        &self,
        call: &Call,
        cur: &KeyValue,
        old: &Value,
        new: Value,
        fv: FieldValidation,
        patch: bool,
        applied: bool,
    ) -> Result<(Value, Vec<String>), ApiError> {
        // The entries the request carries (an apply's result, or a client's own), taken
        // before the status path rebuilds the object from the stored one.
        let theirs = managed::sent(&new).then(|| managed::read(&new));
        let mut new = self.prepare_update(call, old, new)?;
        if applied {
            managed::write(&mut new, &theirs.unwrap_or_default());
        } else {
            let base = theirs.unwrap_or_else(|| managed::read(old));
            call.writer(&call.manager()?).update(Some(old), &mut new, base);
        }
        let before = if patch || call.sub.is_some() { unknown_of(call.def, old) } else { vec![] };
        let mut warnings = self.schema_checks(call, &mut new, Some(old), fv, patch)?;
        warnings.extend(self.validate(call, &new, fv, patch, &before)?);
        self.check_escalation(call, &new).await?;
        self.admit_node_restriction(call, &new, Some(old))?;
        warnings.extend(self.admit_pod_security(call, &new, Some(old)).await?);
        if call.def.group == "scheduling.k8s.io" && call.def.plural == "priorityclasses" {
            self.admit_priority_class(call, &new, Some(old)).await?;
        }
        warnings.extend(self.admit_policies(call, Some(&new), Some(old), "UPDATE").await?);
        let _svc = self.service_update_lock(call, old, &mut new).await?;
        Ok((self.commit_update(call, cur, old, new).await?, warnings))
    }

    /// Stores an updated object (CAS on `cur`), or removes it when it is being deleted
    /// and its last finalizer is gone.
    async fn commit_update(&self, call: &Call, cur: &KeyValue, old: &Value, obj: Value) -> Result<Value, ApiError> {
        let name = meta::name(&obj).to_string();
        let t = call.target(&name);
        let mut a = obj.clone();
        let mut b = old.clone();
        for x in [&mut a, &mut b] {
            meta::meta_mut(x).remove("resourceVersion");
        }
        if a == b {
            return Ok(with_rv(obj, cur.mod_rev));
        }
        if call.dry_run()? {
            return Ok(obj);
        }
        if meta::is_deleting(&obj) && meta::finalizers(&obj).is_empty() {
            // A terminating CRD's last finalizer went (its objects are gone): its
            // resources stop being served before it leaves the store, so no client sees
            // the CRD gone and its resources still there.
            if is_crd(call.def) {
                self.stop_serving(&obj);
            }
            let (rev, _) = self.store.delete(&cur.key, Some(cur.mod_rev)).await.map_err(|e| storage_error(t, e))?;
            return Ok(with_rv(obj, rev));
        }
        let encoded = call.encode_within_limit(&obj)?;
        let rev = self.store.update(&cur.key, encoded, cur.mod_rev).await.map_err(|e| storage_error(t, e))?;
        Ok(with_rv(obj, rev))
    }

    /// PUT: update (or `/status` update).
    pub async fn update(&self, call: &Call, body: Bytes) -> Result<Resp, ApiError> {
        let name = call.name.clone().unwrap_or_default();
        let ct = request::content_type(&call.headers);
        let (mut obj, _) = request::decode_object(&ct, &body)?;
        let fv = call.field_validation()?;
        check_type(call.def, &mut obj)?;
        self.set_namespace(call, &mut obj)?;
        match meta::meta_str(&obj, "name") {
            None | Some("") => {
                meta::meta_mut(&mut obj).insert("name".into(), json!(name));
            }
            Some(n) if n != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            _ => {}
        }
        let want_rv = meta::meta_str(&obj, "resourceVersion").filter(|r| !r.is_empty()).map(str::to_string);
        loop {
            let cur = self.store.get(&call.key(&name)).await.map_err(|e| storage_error(call.target(&name), e))?;
            let Some(cur) = cur else {
                if call.def.create_on_update() && call.sub.is_none() {
                    return self.create(call, body).await;
                }
                return Err(ApiError::not_found(call.target(&name)));
            };
            if let Some(rv) = &want_rv
                && *rv != cur.mod_rev.to_string()
            {
                return Err(ApiError::stale(call.target(&name)));
            }
            let old = call.decode(&cur)?;
            match self.write_update(call, &cur, &old, obj.clone(), fv, false, false).await {
                Err(e) if e.reason == "Conflict" && want_rv.is_none() => continue,
                Err(e) => return Err(e),
                Ok((o, warnings)) => return Ok(request::with_warnings(self.render(call, o, 200), &warnings)),
            }
        }
    }

    /// PATCH: JSON patch, merge patch or strategic merge patch.
    pub async fn patch(&self, call: &Call, body: Bytes) -> Result<Resp, ApiError> {
        let name = call.name.clone().unwrap_or_default();
        let ct = request::content_type(&call.headers);
        let pt = PatchType::from_content_type(&ct)
            .ok_or_else(|| ApiError::unsupported_media_type(&ct, PatchType::ACCEPTED))?;
        if pt == PatchType::Apply {
            return self.apply(call, &body).await;
        }
        if call.query.get("force").is_some() {
            return Err(ApiError::invalid(
                "meta.k8s.io",
                "PatchOptions",
                "",
                vec![Cause::forbidden("force", "may not be specified for non-apply patch")],
            ));
        }
        let fv = call.field_validation()?;
        let (p, dups) =
            validation::parse_json(&body).map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
        if pt == PatchType::Json {
            self.field_problems(call, dups.iter().map(|d| format!("duplicate field {d:?}")).collect(), fv, true)?;
        }
        for _ in 0..8 {
            let cur = self.store.get(&call.key(&name)).await.map_err(|e| storage_error(call.target(&name), e))?;
            let cur = cur.ok_or_else(|| ApiError::not_found(call.target(&name)))?;
            let old = call.decode(&cur)?;
            let mut patched = patch::apply(pt, &old, &p).map_err(|e| {
                ApiError::invalid(call.def.group, call.def.kind, &name, vec![Cause::invalid("patch", &json!(""), e)])
            })?;
            if !patched.is_object() {
                return Err(ApiError::bad_request("the patch produced something that is not an object"));
            }
            let explicit_rv = meta::meta_str(&patched, "resourceVersion").map(str::to_string);
            if explicit_rv.as_deref().is_some_and(|r| r != cur.mod_rev.to_string()) {
                return Err(ApiError::stale(call.target(&name)));
            }
            check_type(call.def, &mut patched)?;
            match self.write_update(call, &cur, &old, patched, fv, true, false).await {
                Err(e) if e.reason == "Conflict" => continue,
                Err(e) => return Err(e),
                Ok((o, warnings)) => return Ok(request::with_warnings(self.render(call, o, 200), &warnings)),
            }
        }
        Err(ApiError::conflict(call.target(&name), "too many concurrent updates; please try again"))
    }

    /// PATCH with `application/apply-patch+yaml`: server-side apply. Creates the object
    /// when it is missing (201), else merges the manager's configuration into it.
    async fn apply(&self, call: &Call, body: &[u8]) -> Result<Resp, ApiError> {
        let name = call.name.clone().unwrap_or_default();
        let manager = match call.query.get("fieldManager").filter(|m| !m.is_empty()) {
            Some(_) => call.manager()?,
            None => {
                return Err(ApiError::invalid(
                    "meta.k8s.io",
                    "PatchOptions",
                    "",
                    vec![Cause::required("fieldManager", "is required for apply patch")],
                ));
            }
        };
        let force = match call.query.get("force") {
            None | Some("" | "false") => false,
            Some("true") => true,
            Some(v) => return Err(ApiError::bad_request(format!("invalid value for force: {v:?}"))),
        };
        let fv = call.field_validation()?;
        let (mut config, dups) = if body.trim_ascii_start().starts_with(b"{") {
            validation::parse_json(body).map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?
        } else {
            let v: Value = serde_norway::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
            (v, vec![])
        };
        if !config.is_object() {
            return Err(ApiError::bad_request("the applied configuration must be an object"));
        }
        for (field, what) in [("apiVersion", call.def.api_version()), ("kind", call.def.kind.to_string())] {
            match config.get(field).and_then(Value::as_str) {
                None | Some("") => return Err(ApiError::bad_request(format!("{field} must be set"))),
                Some(v) if v != what => {
                    return Err(ApiError::bad_request(format!(
                        "the {field} of the applied configuration ({v}) does not match the resource ({what})"
                    )));
                }
                _ => {}
            }
        }
        match meta::meta_str(&config, "name") {
            None | Some("") => {
                meta::meta_mut(&mut config).insert("name".into(), json!(name));
            }
            Some(n) if n != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            _ => {}
        }
        if meta::meta_mut(&mut config).remove("managedFields").is_some_and(|m| !m.is_null()) {
            return Err(ApiError::bad_request("metadata.managedFields must be nil"));
        }
        self.set_namespace(call, &mut config)?;
        let writer = call.writer(&manager);
        let conflict = |c: managed::Conflicts| {
            let causes: Vec<Value> = c
                .0
                .iter()
                .map(|(m, p)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with {m}"), "field": p}))
                .collect();
            let mut e = ApiError::conflict(call.target(&name), "");
            e.message = c.message();
            e.details = Some(json!({"causes": causes}));
            e
        };
        for _ in 0..8 {
            let cur = self.store.get(&call.key(&name)).await.map_err(|e| storage_error(call.target(&name), e))?;
            let Some(cur) = cur else {
                if call.sub.is_some() {
                    return Err(ApiError::not_found(call.target(&name)));
                }
                let obj = writer.apply(None, &config, force).map_err(conflict)?;
                match self.create_object(call, obj, &dups, Some(&manager)).await {
                    Err(e) if e.reason == "AlreadyExists" => continue,
                    r => return r,
                }
            };
            let old = call.decode(&cur)?;
            if let Some(rv) = meta::meta_str(&config, "resourceVersion")
                && rv != cur.mod_rev.to_string()
            {
                return Err(ApiError::stale(call.target(&name)));
            }
            let mut obj = writer.apply(Some(&old), &config, force).map_err(conflict)?;
            check_type(call.def, &mut obj)?;
            match self.write_update(call, &cur, &old, obj, fv, true, true).await {
                Err(e) if e.reason == "Conflict" => continue,
                Err(e) => return Err(e),
                Ok((o, warnings)) => return Ok(request::with_warnings(self.render(call, o, 200), &warnings)),
            }
        }
        Err(ApiError::conflict(call.target(&name), "too many concurrent updates; please try again"))
    }

    /// DELETE of one object.
    pub async fn delete(&self, call: &Call, body: Bytes) -> Result<Resp, ApiError> {
        let name = call.name.clone().unwrap_or_default();
        let opts = delete_options(call, &body)?;
        let obj = self.delete_object(call, &name, &opts, call.dry_run()?).await?;
        Ok(self.render(call, obj, 200))
    }

    /// Deletes (or marks for deletion) one object; with `dry`, only says what would be.
    pub(super) async fn delete_object(
        &self,
        call: &Call,
        name: &str,
        opts: &Value,
        dry: bool,
    ) -> Result<Value, ApiError> {
        let t = call.target(name);
        if call.def.plural == "namespaces" && call.def.group.is_empty() && PROTECTED_NAMESPACES.contains(&name) {
            return Err(ApiError::forbidden(
                t,
                format!("namespaces {name:?} is forbidden: this namespace may not be deleted"),
            ));
        }
        loop {
            let cur = self.store.get(&call.key(name)).await.map_err(|e| storage_error(t, e))?;
            let cur = cur.ok_or_else(|| ApiError::not_found(t))?;
            let obj = call.decode(&cur)?;
            if let Some(uid) = opts.pointer("/preconditions/uid").and_then(Value::as_str) {
                let have = meta::meta_str(&obj, "uid").unwrap_or("");
                if uid != have {
                    return Err(ApiError::conflict(
                        t,
                        &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {have}"),
                    ));
                }
            }
            if let Some(rv) = opts.pointer("/preconditions/resourceVersion").and_then(Value::as_str) {
                let have = cur.mod_rev.to_string();
                if rv != have {
                    return Err(ApiError::conflict(
                        t,
                        &format!(
                            "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {have}"
                        ),
                    ));
                }
            }
            self.admit_policies(call, None, Some(&obj), "DELETE").await?;
            let mut fins = meta::finalizers(&obj);
            match opts.get("propagationPolicy").and_then(Value::as_str) {
                Some("Orphan") if !fins.iter().any(|f| f == ORPHAN) => fins.push(ORPHAN.into()),
                Some("Foreground") if !fins.iter().any(|f| f == FOREGROUND) => fins.push(FOREGROUND.into()),
                None if opts.get("orphanDependents") == Some(&json!(true)) && !fins.iter().any(|f| f == ORPHAN) => {
                    fins.push(ORPHAN.into())
                }
                Some(p) if !matches!(p, "Orphan" | "Foreground" | "Background") => {
                    return Err(ApiError::bad_request(format!("propagationPolicy {p:?} is not supported")));
                }
                _ => {}
            }
            let is_ns = call.def.plural == "namespaces" && call.def.group.is_empty();
            let graceful_pod = call.def.plural == "pods"
                && call.def.group.is_empty()
                && obj.pointer("/spec/nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty())
                && !matches!(obj.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed"));
            let grace = opts
                .get("gracePeriodSeconds")
                .and_then(Value::as_i64)
                .or_else(|| obj.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_i64))
                .unwrap_or(30);
            if fins.is_empty() && !is_ns && !(graceful_pod && grace > 0) {
                if dry {
                    return Ok(obj);
                }
                match self.store.delete(&cur.key, Some(cur.mod_rev)).await {
                    Ok(_) => {
                        if is_crd(call.def) {
                            self.stop_serving(&obj);
                        }
                        return Ok(obj);
                    }
                    Err(StorageError::Conflict { .. }) => continue,
                    Err(e) => return Err(storage_error(t, e)),
                }
            }
            if meta::is_deleting(&obj) && fins == meta::finalizers(&obj) {
                return Ok(obj);
            }
            let mut marked = obj.clone();
            let m = meta::meta_mut(&mut marked);
            if !m.contains_key("deletionTimestamp") {
                let when = if graceful_pod {
                    chrono::Utc::now() + chrono::Duration::seconds(grace)
                } else {
                    chrono::Utc::now()
                };
                m.insert("deletionTimestamp".into(), json!(when.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)));
                m.insert("deletionGracePeriodSeconds".into(), json!(if graceful_pod { grace } else { 0 }));
            }
            if !fins.is_empty() {
                m.insert("finalizers".into(), json!(fins));
            }
            if is_ns {
                marked["status"]["phase"] = json!("Terminating");
            }
            if dry {
                return Ok(marked);
            }
            match self.store.update(&cur.key, call.encode(&marked), cur.mod_rev).await {
                Ok(rev) => {
                    if is_ns {
                        self.spawn_namespace_cleanup(name.to_string());
                    }
                    if fins.iter().any(|f| f == ORPHAN || f == FOREGROUND) {
                        self.spawn_propagation(call.def, call.ns.clone(), name.to_string());
                    }
                    return Ok(with_rv(marked, rev));
                }
                Err(StorageError::Conflict { .. }) => continue,
                Err(e) => return Err(storage_error(t, e)),
            }
        }
    }

    /// DELETE of a collection: every object the selectors match.
    pub async fn delete_collection(&self, call: &Call, body: Bytes) -> Result<Resp, ApiError> {
        let opts = delete_options(call, &body)?;
        let dry = call.dry_run()?;
        let labels =
            LabelSelector::parse(call.query.get("labelSelector").unwrap_or("")).map_err(ApiError::bad_request)?;
        let fields = FieldSelector::parse(call.query.get("fieldSelector").unwrap_or(""), call.def.field_labels)
            .map_err(ApiError::bad_request)?;
        let page = self
            .store
            .list(&call.def.list_prefix(call.ns.as_deref()), None, 0, 0)
            .await
            .map_err(|e| storage_error(call.target(""), e))?;
        let mut deleted = Vec::new();
        for kv in &page.kvs {
            let obj = call.decode(kv)?;
            if !labels.matches_object(&obj) || !fields.matches(&obj) {
                continue;
            }
            let sub = internal_call(call.def, meta::namespace(&obj));
            match self.delete_object(&sub, meta::name(&obj), &opts, dry).await {
                Ok(o) => deleted.push(o),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(request::json(
            200,
            &json!({"kind": format!("{}List", call.def.kind), "apiVersion": call.def.api_version(),
                    "metadata": {"resourceVersion": self.store.current_rev().to_string()}, "items": deleted}),
        ))
    }

    /// Empties a namespace being deleted, then removes it (the work of Kubernetes's
    /// namespace controller, until rk's controller takes it over).
    pub(super) fn spawn_namespace_cleanup(&self, ns: String) {
        let Some(me) = self.me.upgrade() else { return };
        let token = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                r = me.cleanup_namespace(&ns) => if let Err(e) = r {
                    tracing::warn!(namespace = %ns, error = %e, "namespace cleanup failed");
                }
            }
        });
    }

    async fn cleanup_namespace(self: &Arc<Self>, ns: &str) -> Result<(), ApiError> {
        let mut delay = Duration::from_millis(50);
        loop {
            let mut remaining = 0;
            for def in self.reg().stored().filter(|d| d.namespaced) {
                let page = self
                    .store
                    .list(&def.list_prefix(Some(ns)), None, 0, 0)
                    .await
                    .map_err(|e| storage_error(Target { group: def.group, resource: def.plural, name: "" }, e))?;
                for kv in &page.kvs {
                    remaining += 1;
                    let obj = decode_kv(kv)?;
                    if meta::is_deleting(&obj) {
                        continue;
                    }
                    let call = internal_call(def, Some(ns));
                    let background = json!({"propagationPolicy": "Background"});
                    match self.delete_object(&call, meta::name(&obj), &background, false).await {
                        Ok(_) => {}
                        Err(e) if e.code == 404 => {}
                        Err(e) => tracing::debug!(namespace = ns, error = %e, "deleting namespace content"),
                    }
                }
            }
            if remaining == 0 {
                break;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        let key = format!("/registry/namespaces/{ns}");
        loop {
            let Some(cur) = self.store.get(&key).await.map_err(ApiError::internal)? else { return Ok(()) };
            let mut obj = decode_kv(&cur)?;
            if let Some(f) = obj.pointer_mut("/spec/finalizers").and_then(Value::as_array_mut) {
                f.retain(|x| x != "kubernetes");
            }
            let spec_empty = obj.pointer("/spec/finalizers").and_then(Value::as_array).is_none_or(Vec::is_empty);
            let res = if spec_empty && meta::finalizers(&obj).is_empty() {
                self.store.delete(&key, Some(cur.mod_rev)).await.map(|_| ())
            } else {
                self.store.update(&key, encode(&obj), cur.mod_rev).await.map(|_| ())
            };
            match res {
                Ok(()) => return Ok(()),
                Err(StorageError::Conflict { .. }) => continue,
                Err(e) => return Err(ApiError::internal(e)),
            }
        }
    }
}

/// Unknown fields an object already has, so a later strict write is not blamed for them.
fn unknown_of(def: &ResourceDef, obj: &Value) -> Vec<String> {
    match (def.roundtrip)(obj) {
        Ok(t) => validation::unknown_fields(obj, &t),
        Err(_) => vec![],
    }
}

/// DeleteOptions from the body and the query string.
fn delete_options(call: &Call, body: &[u8]) -> Result<Value, ApiError> {
    let mut opts = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        let ct = request::content_type(&call.headers);
        request::decode_object(if ct.is_empty() { "application/json" } else { &ct }, body)?.0
    };
    if let Some(p) = call.query.get("propagationPolicy") {
        opts["propagationPolicy"] = json!(p);
    }
    if let Some(g) = call.query.int("gracePeriodSeconds")? {
        opts["gracePeriodSeconds"] = json!(g);
    }
    if call.query.get("orphanDependents").is_some() {
        opts["orphanDependents"] = json!(call.query.flag("orphanDependents"));
    }
    Ok(opts)
}

fn encode_continue(rev: i64, key: &str) -> String {
    let v = json!({"v": "meta.k8s.io/v1", "rv": rev, "start": key});
    base64::engine::general_purpose::URL_SAFE.encode(v.to_string())
}

fn decode_continue(tok: &str) -> Result<(i64, String), ApiError> {
    let bad = || ApiError::bad_request("continue key is not valid: the continue token is malformed");
    let raw = base64::engine::general_purpose::URL_SAFE
        .decode(tok)
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(tok))
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rev = v.get("rv").and_then(Value::as_i64).ok_or_else(bad)?;
    let start = v.get("start").and_then(Value::as_str).ok_or_else(bad)?;
    Ok((rev, start.to_string()))
}
