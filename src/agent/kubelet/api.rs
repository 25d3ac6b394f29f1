//! The kubelet API, served to the API server over the agent's tunnel (see
//! `server/apiserver/tunnel.rs`): `GET /containerLogs/<ns>/<pod>/<container>` with
//! the kubelet's options (follow, previous, tailLines, sinceSeconds, sinceTime,
//! timestamps, limitBytes), read from the CRI log files containerd writes.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{Read, Seek, SeekFrom};

use futures::StreamExt;
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
pub async fn handle<B>(ctx: Arc<NodeCtx>, req: Request<B>) -> Result<Response<Body>, Infallible>
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display + Send + Sync + 'static,
{
    let path = req.uri().path().to_string();
    let pairs: Vec<(String, String)> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()).into_owned().collect();
    let q: HashMap<String, String> = pairs.iter().cloned().collect();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    Ok(match segs.as_slice() {
        ["containerLogs", ns, pod, container] => container_logs(&ctx, ns, pod, container, &q).await,
        ["exec" | "attach", ns, pod, container] => {
            let kind = segs[0].to_string();
            let (ns, pod, container) = (ns.to_string(), pod.to_string(), container.to_string());
            stream(&ctx, &kind, &ns, &pod, Some(&container), &pairs, req).await
        }
        ["portForward", ns, pod] => {
            let (ns, pod) = (ns.to_string(), pod.to_string());
            stream(&ctx, "portForward", &ns, &pod, None, &pairs, req).await
        }
        ["healthz"] => text(StatusCode::OK, "ok"),
        ["stats", "summary"] => summary(&ctx).await,
        _ => text(StatusCode::NOT_FOUND, format!("404 page not found: {path}")),
    })
}

/// CPU time the node has used (ns), from /proc/stat.
fn node_cpu_ns() -> u64 {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else { return 0 };
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    let busy: u64 = v.iter().enumerate().filter(|(i, _)| !matches!(i, 3 | 4) && *i < 8).map(|(_, x)| *x).sum();
    busy * (1_000_000_000 / 100)
}

/// The node's CPU rate in nanocores since the previous call (or over 100 ms).
async fn node_nano_cores() -> (u64, u64) {
    static LAST: std::sync::Mutex<Option<(std::time::Instant, u64)>> = std::sync::Mutex::new(None);
    let prev = *LAST.lock().expect("cpu sample");
    let (t0, c0) = match prev {
        Some(p) if p.0.elapsed() < Duration::from_secs(300) => p,
        _ => {
            let p = (std::time::Instant::now(), node_cpu_ns());
            tokio::time::sleep(Duration::from_millis(100)).await;
            p
        }
    };
    let c1 = node_cpu_ns();
    let t1 = std::time::Instant::now();
    *LAST.lock().expect("cpu sample") = Some((t1, c1));
    let dt = t1.duration_since(t0).as_nanos().max(1) as f64;
    (((c1.saturating_sub(c0)) as f64 / dt * 1e9) as u64, c1)
}

/// `/stats/summary`: the kubelet's Summary API (node and per pod and container CPU,
/// memory and writable-layer use), from containerd's CRI stats and /proc.
async fn summary(ctx: &NodeCtx) -> Response<Body> {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let stats = match ctx.cri.rt().list_container_stats(cri::ListContainerStatsRequest { filter: None }).await {
        Ok(r) => r.into_inner().stats,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("reading container stats: {}", e.message())),
    };
    let val = |v: &Option<cri::UInt64Value>| v.as_ref().map(|v| v.value).unwrap_or(0);
    let mut pods: std::collections::BTreeMap<(String, String, String), Vec<serde_json::Value>> = Default::default();
    for st in stats {
        let Some(attr) = st.attributes else { continue };
        let l = &attr.labels;
        let key = (
            l.get("io.kubernetes.pod.namespace").cloned().unwrap_or_default(),
            l.get("io.kubernetes.pod.name").cloned().unwrap_or_default(),
            l.get("io.kubernetes.pod.uid").cloned().unwrap_or_default(),
        );
        if key.2.is_empty() {
            continue;
        }
        let cpu = st.cpu.as_ref();
        let mem = st.memory.as_ref();
        pods.entry(key).or_default().push(serde_json::json!({
            "name": attr.metadata.map(|m| m.name).unwrap_or_default(),
            "cpu": {"time": now, "usageNanoCores": cpu.map(|c| val(&c.usage_nano_cores)).unwrap_or(0),
                    "usageCoreNanoSeconds": cpu.map(|c| val(&c.usage_core_nano_seconds)).unwrap_or(0)},
            "memory": {"time": now, "workingSetBytes": mem.map(|m| val(&m.working_set_bytes)).unwrap_or(0),
                       "usageBytes": mem.map(|m| val(&m.usage_bytes)).unwrap_or(0),
                       "rssBytes": mem.map(|m| val(&m.rss_bytes)).unwrap_or(0)},
            "rootfs": {"time": now, "usedBytes": st.writable_layer.as_ref().map(|w| val(&w.used_bytes)).unwrap_or(0)},
        }));
    }
    let pods: Vec<serde_json::Value> = pods
        .into_iter()
        .map(|((ns, name, uid), containers)| {
            let sum = |f: &dyn Fn(&serde_json::Value) -> u64| containers.iter().map(f).sum::<u64>();
            serde_json::json!({
                "podRef": {"name": name, "namespace": ns, "uid": uid},
                "containers": containers,
                "cpu": {"time": now, "usageNanoCores": sum(&|c| c["cpu"]["usageNanoCores"].as_u64().unwrap_or(0)),
                        "usageCoreNanoSeconds": sum(&|c| c["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap_or(0))},
                "memory": {"time": now, "workingSetBytes": sum(&|c| c["memory"]["workingSetBytes"].as_u64().unwrap_or(0))},
            })
        })
        .collect();
    let (nano, total) = node_nano_cores().await;
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kb = |k: &str| -> u64 {
        meminfo
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
            * 1024
    };
    let (total_mem, avail) = (kb("MemTotal:"), kb("MemAvailable:"));
    let body = serde_json::json!({
        "node": {
            "nodeName": ctx.node,
            "cpu": {"time": now, "usageNanoCores": nano, "usageCoreNanoSeconds": total},
            "memory": {"time": now, "availableBytes": avail, "usageBytes": total_mem - avail, "workingSetBytes": total_mem - avail},
        },
        "pods": pods,
    });
    let mut r =
        Response::new(Full::new(Bytes::from(body.to_string())).map_err(|n: Infallible| match n {}).boxed_unsync());
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
}

/// The sandbox labels that pick pod `ns/pod` (and, when known, that pod UID: a pod
/// of the same name may have come before).
fn pod_labels(ns: &str, pod: &str, uid: Option<&String>) -> HashMap<String, String> {
    let mut labels = HashMap::from([
        ("io.kubernetes.pod.name".to_string(), pod.to_string()),
        ("io.kubernetes.pod.namespace".to_string(), ns.to_string()),
    ]);
    if let Some(uid) = uid.filter(|u| !u.is_empty()) {
        labels.insert("io.kubernetes.pod.uid".into(), uid.clone());
    }
    labels
}

/// The pod's ready sandbox and, if `container` is given, that container's running run.
async fn find(
    ctx: &NodeCtx,
    ns: &str,
    pod: &str,
    uid: Option<&String>,
    container: Option<&str>,
) -> Result<(String, Option<String>), String> {
    let filter = cri::PodSandboxFilter {
        label_selector: pod_labels(ns, pod, uid),
        state: Some(cri::PodSandboxStateValue { state: cri::PodSandboxState::SandboxReady as i32 }),
        ..Default::default()
    };
    let sandbox = ctx
        .cri
        .rt()
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: Some(filter) })
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner()
        .items
        .into_iter()
        .max_by_key(|s| s.created_at)
        .ok_or_else(|| format!("pod {ns}/{pod} is not running on this node"))?;
    let Some(name) = container else { return Ok((sandbox.id, None)) };
    let filter = cri::ContainerFilter {
        pod_sandbox_id: sandbox.id.clone(),
        state: Some(cri::ContainerStateValue { state: cri::ContainerState::ContainerRunning as i32 }),
        ..Default::default()
    };
    let c = ctx
        .cri
        .rt()
        .list_containers(cri::ListContainersRequest { filter: Some(filter) })
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner()
        .containers
        .into_iter()
        .find(|c| c.metadata.as_ref().is_some_and(|m| m.name == name))
        .ok_or_else(|| format!("container {name} is not running in pod {pod}"))?;
    Ok((sandbox.id, Some(c.id)))
}

/// exec, attach and port-forward: ask the runtime for a streaming URL, send the
/// client's upgrade request there, and pipe the bytes after the upgrade both ways.
async fn stream<B>(
    ctx: &NodeCtx,
    kind: &str,
    ns: &str,
    pod: &str,
    container: Option<&str>,
    q: &[(String, String)],
    req: Request<B>,
) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display + Send + Sync + 'static,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let meta_name = crate::server::apiserver::tunnel::UPGRADE_META;
    let meta: serde_json::Value = req
        .headers()
        .get(meta_name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or(serde_json::Value::Null);
    let get = |k: &str| q.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone());
    let flag = |k: &str| get(k).is_some_and(|v| v == "true" || v == "1");
    let uid = get("podUID");
    let (sandbox, cid) = match find(ctx, ns, pod, uid.as_ref(), container).await {
        Ok(x) => x,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let cid = cid.unwrap_or_default();
    let url = match kind {
        "exec" => ctx
            .cri
            .rt()
            .exec(cri::ExecRequest {
                container_id: cid,
                cmd: q.iter().filter(|(k, _)| k == "command").map(|(_, v)| v.clone()).collect(),
                tty: flag("tty"),
                stdin: flag("stdin"),
                stdout: flag("stdout"),
                stderr: flag("stderr"),
            })
            .await
            .map(|r| r.into_inner().url),
        "attach" => ctx
            .cri
            .rt()
            .attach(cri::AttachRequest {
                container_id: cid,
                stdin: flag("stdin"),
                tty: flag("tty"),
                stdout: flag("stdout"),
                stderr: flag("stderr"),
            })
            .await
            .map(|r| r.into_inner().url),
        _ => ctx
            .cri
            .rt()
            .port_forward(cri::PortForwardRequest { pod_sandbox_id: sandbox, port: vec![] })
            .await
            .map(|r| r.into_inner().url),
    };
    let url: http::Uri = match url.map(|u| u.parse()) {
        Ok(Ok(u)) => u,
        Ok(Err(e)) => {
            return text(StatusCode::INTERNAL_SERVER_ERROR, format!("the runtime gave a bad stream URL: {e}"));
        }
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.message().to_string()),
    };
    let authority = url.authority().map(|a| a.to_string()).unwrap_or_default();
    let mut tcp = match tokio::net::TcpStream::connect(authority.as_str()).await {
        Ok(t) => t,
        Err(e) => {
            return text(StatusCode::INTERNAL_SERVER_ERROR, format!("connecting to the runtime's stream server: {e}"));
        }
    };
    let method = meta["method"].as_str().unwrap_or("GET");
    let mut head = format!(
        "{method} {} HTTP/1.1\r\nHost: {authority}\r\n",
        url.path_and_query().map(|p| p.as_str()).unwrap_or("/")
    );
    for h in meta["headers"].as_array().into_iter().flatten() {
        if let (Some(k), Some(v)) = (h[0].as_str(), h[1].as_str()) {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    if method == "POST" {
        head.push_str("Content-Length: 0\r\n");
    }
    head.push_str("\r\n");
    if let Err(e) = tcp.write_all(head.as_bytes()).await {
        return text(StatusCode::INTERNAL_SERVER_ERROR, format!("writing to the runtime's stream server: {e}"));
    }
    // The answer's head, read by hand: what follows it is the stream itself.
    let mut buf = Vec::new();
    let end = loop {
        let mut chunk = [0u8; 4096];
        let n = match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                return text(StatusCode::BAD_GATEWAY, "the runtime's stream server closed the connection");
            }
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 << 10 {
            return text(StatusCode::BAD_GATEWAY, "the runtime's stream server sent an oversized answer");
        }
    };
    let head_text = String::from_utf8_lossy(&buf[..end]).to_string();
    let rest = buf[end..].to_vec();
    let mut lines = head_text.split("\r\n");
    let status: u16 = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).unwrap_or(502);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string())))
        .collect();
    let answer = serde_json::json!({"status": status, "headers": headers}).to_string();
    let (rd, mut wr) = tcp.into_split();
    if status == 101 {
        let mut body = req.into_body();
        tokio::spawn(async move {
            while let Some(f) = body.frame().await {
                let Ok(f) = f else { break };
                if let Ok(d) = f.into_data()
                    && wr.write_all(&d).await.is_err()
                {
                    break;
                }
            }
            let _ = wr.shutdown().await;
        });
    }
    let first = futures::stream::iter((!rest.is_empty()).then(|| Ok(hyper::body::Frame::data(Bytes::from(rest)))));
    let limit = if status == 101 { u64::MAX } else { 1 << 20 };
    let more = futures::stream::unfold((rd, limit), |(mut rd, left)| async move {
        if left == 0 {
            return None;
        }
        let mut b = vec![0u8; 32 << 10];
        match rd.read(&mut b).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                b.truncate(n);
                Some((Ok(hyper::body::Frame::data(Bytes::from(b))), (rd, left.saturating_sub(n as u64))))
            }
        }
    });
    let mut r = Response::new(StreamBody::new(first.chain(more)).boxed_unsync());
    if let Ok(v) = http::HeaderValue::from_str(&answer) {
        r.headers_mut().insert(meta_name, v);
    }
    r
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

async fn container_logs(
    ctx: &NodeCtx,
    ns: &str,
    pod: &str,
    container: &str,
    q: &HashMap<String, String>,
) -> Response<Body> {
    let flag = |k: &str| q.get(k).is_some_and(|v| v == "true" || v == "1");
    let labels = pod_labels(ns, pod, q.get("podUID"));
    let sandboxes = ctx
        .cri
        .rt()
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter { label_selector: labels, ..Default::default() }),
        })
        .await
        .map(|r| r.into_inner().items)
        .unwrap_or_default();
    let mut runs = Vec::new();
    for s in sandboxes {
        let filter = cri::ContainerFilter { pod_sandbox_id: s.id.clone(), ..Default::default() };
        let list = ctx
            .cri
            .rt()
            .list_containers(cri::ListContainersRequest { filter: Some(filter) })
            .await
            .map(|r| r.into_inner().containers)
            .unwrap_or_default();
        runs.extend(list.into_iter().filter(|c| c.metadata.as_ref().is_some_and(|m| m.name == container)));
    }
    runs.sort_by_key(|c| std::cmp::Reverse((c.metadata.as_ref().map(|m| m.attempt).unwrap_or(0), c.created_at)));
    let previous = flag("previous");
    let Some(run) = runs.get(usize::from(previous)).cloned() else {
        let what = if previous { "previous terminated container" } else { "container" };
        return text(StatusCode::NOT_FOUND, format!("{what} \"{container}\" in pod \"{pod}\" not found"));
    };
    let Ok(status) = ctx
        .cri
        .rt()
        .container_status(cri::ContainerStatusRequest { container_id: run.id.clone(), verbose: false })
        .await
    else {
        return text(StatusCode::NOT_FOUND, format!("container \"{container}\" in pod \"{pod}\" not found"));
    };
    let log_path = status.into_inner().status.map(|s| s.log_path).unwrap_or_default();
    let since = q
        .get("sinceTime")
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .or_else(|| {
            q.get("sinceSeconds")
                .and_then(|s| s.parse::<i64>().ok())
                .map(|s| chrono::Utc::now() - chrono::Duration::seconds(s))
        });
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
    let stream =
        futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|b| (Ok(hyper::body::Frame::data(b)), rx)) },
        );
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
        let o = Opts {
            timestamps: true,
            since: chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:02Z").ok().map(|t| t.into()),
            tail: None,
            limit: None,
        };
        assert_eq!(render(&lines, &o, &mut carry), vec!["2026-01-01T00:00:02Z partial\n", "2026-01-01T00:00:03Z \n"]);
    }
}
