//! The kubelet API, served to the API server over the agent's tunnel (see
//! `server/apiserver/tunnel.rs`): `GET /containerLogs/<ns>/<pod>/<container>` with
//! the kubelet's options (follow, previous, tailLines, sinceSeconds, sinceTime,
//! timestamps, limitBytes), read from the CRI log files containerd writes.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use k8s_cri::v1 as cri;

use super::pod_worker::NodeCtx;

/// A response body.
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

fn text(code: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(msg.into())).map_err(|n: Infallible| match n {}).boxed_unsync());
    *r.status_mut() = code;
    r
}

/// Serves one request of the kubelet API.
pub async fn handle<B>(ctx: Arc<NodeCtx>, req: Request<B>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let q: HashMap<String, String> = form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()).into_owned().collect();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    Ok(match segs.as_slice() {
        ["containerLogs", ns, pod, container] => container_logs(&ctx, ns, pod, container, &q).await,
        ["healthz"] => text(StatusCode::OK, "ok"),
        _ => text(StatusCode::NOT_FOUND, format!("404 page not found: {path}")),
    })
}

/// One line of a CRI log file: `<RFC3339Nano> <stdout|stderr> <P|F> <message>`.
#[derive(Debug, PartialEq)]
struct LogLine<'a> {
    ts: &'a str,
    partial: bool,
    msg: &'a str,
}

fn parse_line(l: &str) -> Option<LogLine<'_>> {
    let mut it = l.splitn(4, ' ');
    let ts = it.next()?;
    let _stream = it.next()?;
    let tag = it.next()?;
    let msg = it.next().unwrap_or("");
    Some(LogLine { ts, partial: tag == "P", msg })
}

/// The options of one log request.
struct Opts {
    timestamps: bool,
    since: Option<chrono::DateTime<chrono::Utc>>,
    tail: Option<usize>,
    limit: Option<usize>,
}

/// Turns complete CRI lines into what `kubectl logs` prints (partials joined).
fn render(lines: &[&str], o: &Opts, carry: &mut String) -> Vec<String> {
    let mut out = Vec::new();
    for l in lines {
        let Some(p) = parse_line(l) else { continue };
        if let Some(since) = o.since
            && chrono::DateTime::parse_from_rfc3339(p.ts).is_ok_and(|t| t < since)
        {
            continue;
        }
        if carry.is_empty() && o.timestamps {
            carry.push_str(p.ts);
            carry.push(' ');
        }
        carry.push_str(p.msg);
        if !p.partial {
            carry.push('\n');
            out.push(std::mem::take(carry));
        }
    }
    out
}

async fn container_logs(ctx: &NodeCtx, ns: &str, pod: &str, container: &str, q: &HashMap<String, String>) -> Response<Body> {
    let flag = |k: &str| q.get(k).is_some_and(|v| v == "true" || v == "1");
    let mut labels = HashMap::from([
        ("io.kubernetes.pod.name".to_string(), pod.to_string()),
        ("io.kubernetes.pod.namespace".to_string(), ns.to_string()),
    ]);
    if let Some(uid) = q.get("podUID").filter(|u| !u.is_empty()) {
        labels.insert("io.kubernetes.pod.uid".into(), uid.clone());
    }
    let sandboxes = ctx
        .cri
        .rt()
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: Some(cri::PodSandboxFilter { label_selector: labels, ..Default::default() }) })
        .await
        .map(|r| r.into_inner().items)
        .unwrap_or_default();
    let mut runs = Vec::new();
    for s in sandboxes {
        let filter = cri::ContainerFilter { pod_sandbox_id: s.id.clone(), ..Default::default() };
        let list = ctx.cri.rt().list_containers(cri::ListContainersRequest { filter: Some(filter) }).await.map(|r| r.into_inner().containers).unwrap_or_default();
        runs.extend(list.into_iter().filter(|c| c.metadata.as_ref().is_some_and(|m| m.name == container)));
    }
    runs.sort_by_key(|c| std::cmp::Reverse((c.metadata.as_ref().map(|m| m.attempt).unwrap_or(0), c.created_at)));
    let previous = flag("previous");
    let Some(run) = runs.get(usize::from(previous)).cloned() else {
        let what = if previous { "previous terminated container" } else { "container" };
        return text(StatusCode::NOT_FOUND, format!("{what} \"{container}\" in pod \"{pod}\" not found"));
    };
    let Ok(status) = ctx.cri.rt().container_status(cri::ContainerStatusRequest { container_id: run.id.clone(), verbose: false }).await else {
        return text(StatusCode::NOT_FOUND, format!("container \"{container}\" in pod \"{pod}\" not found"));
    };
    let log_path = status.into_inner().status.map(|s| s.log_path).unwrap_or_default();
    let since = q
        .get("sinceTime")
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .or_else(|| q.get("sinceSeconds").and_then(|s| s.parse::<i64>().ok()).map(|s| chrono::Utc::now() - chrono::Duration::seconds(s)));
    let opts = Opts {
        timestamps: flag("timestamps"),
        since,
        tail: q.get("tailLines").and_then(|t| t.parse().ok()),
        limit: q.get("limitBytes").and_then(|t| t.parse().ok()),
    };
    let follow = flag("follow") && !previous;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let cri_ = ctx.cri.clone();
    let id = run.id.clone();
    tokio::spawn(async move {
        let mut file = match std::fs::File::open(&log_path) {
            Ok(f) => f,
            Err(_) => return,
        };
        let mut buf = Vec::new();
        let _ = file.read_to_end(&mut buf);
        let mut offset = buf.len() as u64;
        // Only whole lines now; a line being written is picked up when following.
        let cut = buf.iter().rposition(|b| *b == b'\n').map(|i| i + 1).unwrap_or(0);
        let mut pending = buf.split_off(cut);
        let text = String::from_utf8_lossy(&buf).to_string();
        let lines: Vec<&str> = text.lines().collect();
        let mut carry = String::new();
        let mut out = render(&lines, &opts, &mut carry);
        if let Some(n) = opts.tail {
            let skip = out.len().saturating_sub(n);
            out.drain(..skip);
        }
        let mut budget = opts.limit.unwrap_or(usize::MAX);
        let send = |s: String, budget: &mut usize| {
            let mut b = s.into_bytes();
            b.truncate(*budget);
            *budget -= b.len();
            Bytes::from(b)
        };
        for l in out {
            if budget == 0 || tx.send(send(l, &mut budget)).await.is_err() {
                return;
            }
        }
        if !follow {
            return;
        }
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut more = Vec::new();
            if file.seek(SeekFrom::Start(offset)).is_ok() {
                let _ = file.read_to_end(&mut more);
            }
            offset += more.len() as u64;
            if more.is_empty() {
                if tx.is_closed() || budget == 0 {
                    return;
                }
                let running = cri_
                    .rt()
                    .container_status(cri::ContainerStatusRequest { container_id: id.clone(), verbose: false })
                    .await
                    .ok()
                    .and_then(|r| r.into_inner().status)
                    .is_some_and(|s| s.state == cri::ContainerState::ContainerRunning as i32);
                if !running {
                    return;
                }
                continue;
            }
            pending.extend_from_slice(&more);
            let cut = pending.iter().rposition(|b| *b == b'\n').map(|i| i + 1).unwrap_or(0);
            let rest = pending.split_off(cut);
            let text = String::from_utf8_lossy(&pending).to_string();
            pending = rest;
            let lines: Vec<&str> = text.lines().collect();
            for l in render(&lines, &opts, &mut carry) {
                if budget == 0 || tx.send(send(l, &mut budget)).await.is_err() {
                    return;
                }
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok(hyper::body::Frame::data(b)), rx)) });
    let mut r = Response::new(StreamBody::new(stream).boxed_unsync());
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_lines_render_as_kubectl_prints_them() {
        let lines = [
            "2026-01-01T00:00:01.5Z stdout F hello",
            "2026-01-01T00:00:02Z stderr P par",
            "2026-01-01T00:00:02Z stderr F tial",
            "2026-01-01T00:00:03Z stdout F ",
        ];
        let o = Opts { timestamps: false, since: None, tail: None, limit: None };
        let mut carry = String::new();
        assert_eq!(render(&lines, &o, &mut carry), vec!["hello\n", "partial\n", "\n"]);
        let o = Opts { timestamps: true, since: chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:02Z").ok().map(|t| t.into()), tail: None, limit: None };
        assert_eq!(render(&lines, &o, &mut carry), vec!["2026-01-01T00:00:02Z partial\n", "2026-01-01T00:00:03Z \n"]);
    }
}
