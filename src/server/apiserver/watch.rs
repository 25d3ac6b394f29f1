//! Watch: a chunked stream of `{"type","object"}` frames, fed by the store's single
//! broadcaster, with selector transitions, bookmarks, timeouts and Table frames.
//!
//! Semantics follow the Kubernetes watch cache: `resourceVersion` unset or "0" (or
//! `sendInitialEvents=true`) starts with synthetic ADDED events for the current state;
//! an exact revision replays what came after it; a compacted one is an in-stream 410.
//! An object that stops matching the selectors is reported DELETED, one that starts
//! matching ADDED.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::ApiServer;
use super::handlers::{Call, storage_error};
use super::request::{Resp, Want};
use crate::api::meta;
use crate::api::selectors::{FieldSelector, LabelSelector};
use crate::api::status::ApiError;
use crate::embedded::{Event, EventKind};

/// How often a watch with `allowWatchBookmarks` gets a BOOKMARK.
const BOOKMARK_EVERY: Duration = Duration::from_secs(30);

struct Filter {
    ns: Option<String>,
    name: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    /// What of an object the test looks at.
    wanted: crate::api::sparse::Paths,
}

impl Filter {
    fn matches(&self, obj: &Value) -> bool {
        self.ns.as_deref().is_none_or(|n| meta::namespace(obj) == Some(n))
            && self.name.as_deref().is_none_or(|n| meta::name(obj) == n)
            && self.labels.matches_object(obj)
            && self.fields.matches(obj)
    }
}

struct Encoder {
    table: bool,
    headers_sent: bool,
}

impl ApiServer {
    /// Starts a watch; the response streams until timeout, error or disconnect.
    pub async fn watch(self: &Arc<Self>, call: Call) -> Result<Resp, ApiError> {
        let q = &call.query;
        let labels = LabelSelector::parse(q.get("labelSelector").unwrap_or("")).map_err(ApiError::bad_request)?;
        let fields = FieldSelector::parse(q.get("fieldSelector").unwrap_or(""), call.def.field_labels)
            .map_err(ApiError::bad_request)?;
        let name = call.name.clone().or_else(|| fields.exact_name().map(str::to_string));
        let wanted = crate::api::selectors::selected_paths(&labels, &fields);
        let filter = Filter { ns: call.ns.clone().filter(|_| call.def.namespaced), name, labels, fields, wanted };
        let bookmarks = q.flag("allowWatchBookmarks");
        let timeout = match q.int("timeoutSeconds")? {
            Some(t) if t > 0 => Duration::from_secs(t as u64),
            _ => {
                use rand::Rng;
                Duration::from_secs(rand::rng().random_range(1800..3600))
            }
        };
        let rv = q.get("resourceVersion").unwrap_or("");
        let send_initial = match q.get("sendInitialEvents") {
            Some("true") => true,
            Some("false") | None => rv.is_empty() || rv == "0",
            Some(v) => return Err(ApiError::bad_request(format!("invalid sendInitialEvents value {v:?}"))),
        };
        let explicit_initial = q.get("sendInitialEvents") == Some("true");
        if explicit_initial && !bookmarks {
            return Err(ApiError::invalid(
                call.def.group,
                call.def.kind,
                "",
                vec![crate::api::status::Cause::forbidden(
                    "allowWatchBookmarks",
                    "allowWatchBookmarks must be set to true when sendInitialEvents is specified",
                )],
            ));
        }
        let prefix = call.def.list_prefix(filter.ns.as_deref());
        let (tx, rx) = mpsc::channel::<Bytes>(128);
        let mut enc = Encoder { table: super::request::want(&call.headers) == Want::Table, headers_sent: false };

        // Initial state, then the stream from its revision.
        let mut initial = Vec::new();
        let start = if send_initial {
            let page = self.store.list(&prefix, None, 0, 0).await.map_err(|e| storage_error(call.target(""), e))?;
            for kv in &page.kvs {
                if filter.matches(&call.decode_for_match(kv, &filter.wanted)?) {
                    initial.push(call.decode(kv)?);
                }
            }
            page.rev
        } else {
            rv.parse::<i64>().map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))?
        };
        let stream = self.store.watch(&prefix, start);
        let me = self.clone();
        let token = self.shutdown.clone();
        tokio::spawn(async move {
            let call = call;
            let send = |enc: &mut Encoder, ty: &str, obj: &Value| {
                let frame = me.frame(&call, enc, ty, obj);
                let tx = tx.clone();
                async move { tx.send(frame).await.is_ok() }
            };
            let bookmark = |rev: i64, initial_end: bool| {
                let mut md = json!({"resourceVersion": rev.to_string()});
                if initial_end {
                    md["annotations"] = json!({"k8s.io/initial-events-end": "true"});
                }
                json!({"kind": call.def.kind, "apiVersion": call.def.api_version(), "metadata": md})
            };
            let mut stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    let err = storage_error(call.target(""), e);
                    let _ = tx.send(error_frame(&err)).await;
                    return;
                }
            };
            for obj in &initial {
                if !send(&mut enc, "ADDED", obj).await {
                    return;
                }
            }
            if explicit_initial && !send(&mut enc, "BOOKMARK", &bookmark(start, true)).await {
                return;
            }
            let mut last = start;
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + BOOKMARK_EVERY, BOOKMARK_EVERY);
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tx.closed() => return,
                    _ = &mut deadline => {
                        if bookmarks {
                            let _ = send(&mut enc, "BOOKMARK", &bookmark(last, false)).await;
                        }
                        return;
                    }
                    _ = tick.tick() => {
                        if bookmarks && !send(&mut enc, "BOOKMARK", &bookmark(last, false)).await {
                            return;
                        }
                    }
                    ev = stream.next() => match ev {
                        None => return,
                        Some(Err(e)) => {
                            let _ = tx.send(error_frame(&storage_error(call.target(""), e))).await;
                            return;
                        }
                        Some(Ok(ev)) => {
                            last = ev.kv.mod_rev;
                            let ty = match event_type(&call, &ev, &filter) {
                                Ok(Some(ty)) => ty,
                                Ok(None) => continue,
                                Err(e) => {
                                    let _ = tx.send(error_frame(&e)).await;
                                    return;
                                }
                            };
                            // Sent as stored where nothing is converted or tabled.
                            if !enc.table && !call.converts()
                                && let Some(obj) = super::wire::with_rv(&ev.kv.value, ev.kv.mod_rev)
                            {
                                if tx.send(envelope(ty, &obj)).await.is_err() {
                                    return;
                                }
                                continue;
                            }
                            match call.decode(&ev.kv) {
                                Ok(obj) => if !send(&mut enc, ty, &obj).await { return },
                                Err(e) => {
                                    let _ = tx.send(error_frame(&e)).await;
                                    return;
                                }
                            }
                        }
                    }
                }
            }
        });
        let body = StreamBody::new(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, std::io::Error>(Frame::data(b)), rx))
        }));
        let mut resp = Response::new(body.boxed_unsync());
        *resp.status_mut() = StatusCode::OK;
        resp.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        Ok(resp)
    }

    fn frame(&self, call: &Call, enc: &mut Encoder, ty: &str, obj: &Value) -> Bytes {
        let object = if enc.table && ty != "BOOKMARK" {
            let rv = meta::meta_str(obj, "resourceVersion").unwrap_or("").to_string();
            let t = self.table(call, std::slice::from_ref(obj), &rv, None, !enc.headers_sent);
            enc.headers_sent = true;
            serde_json::to_vec(&t)
        } else {
            serde_json::to_vec(obj)
        };
        envelope(ty, &object.expect("JSON values serialise"))
    }
}

/// One watch frame: `{"type":TYPE,"object":OBJECT}` and a newline, around an already
/// encoded object.
fn envelope(ty: &str, object: &[u8]) -> Bytes {
    let mut b = Vec::with_capacity(object.len() + 32);
    b.extend_from_slice(b"{\"type\":\"");
    b.extend_from_slice(ty.as_bytes());
    b.extend_from_slice(b"\",\"object\":");
    b.extend_from_slice(object);
    b.extend_from_slice(b"}\n");
    Bytes::from(b)
}

fn error_frame(e: &ApiError) -> Bytes {
    envelope("ERROR", &serde_json::to_vec(&e.to_status()).expect("JSON values serialise"))
}

/// The watch event type a store event becomes for this watcher, if any: only the
/// parts of the objects the filter looks at are parsed, and nothing without label or
/// field selectors (the store's prefix has the namespace, the key ends in the name).
fn event_type(call: &Call, ev: &Event, f: &Filter) -> Result<Option<&'static str>, ApiError> {
    if f.labels.is_empty() && f.fields.is_empty() {
        if f.name.as_deref().is_some_and(|name| ev.kv.key.rsplit('/').next() != Some(name)) {
            return Ok(None);
        }
        return Ok(Some(match (ev.kind, &ev.prev) {
            (EventKind::Delete, _) => "DELETED",
            (EventKind::Put, None) => "ADDED",
            (EventKind::Put, Some(_)) => "MODIFIED",
        }));
    }
    let matches = |kv| Ok::<_, ApiError>(f.matches(&call.decode_for_match(kv, &f.wanted)?));
    let prev_match = match &ev.prev {
        Some(p) => matches(p)?,
        None => false,
    };
    Ok(match ev.kind {
        EventKind::Delete => prev_match.then_some("DELETED"),
        EventKind::Put => match (prev_match, matches(&ev.kv)?) {
            (false, true) => Some("ADDED"),
            (true, true) => Some("MODIFIED"),
            (true, false) => Some("DELETED"),
            (false, false) => None,
        },
    })
}
