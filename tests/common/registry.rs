//! A small OCI distribution registry for tests: it serves one image (from an OCI
//! layout archive) under one repository and tag, on 127.0.0.1 inside a lab host's
//! network namespace, behind HTTP basic auth, as a private registry does: `GET /v2/`,
//! `GET|HEAD /v2/<repo>/manifests/<tag|digest>` and `GET|HEAD /v2/<repo>/blobs/<digest>`,
//! 401 with a Basic challenge without the right credentials.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;

pub struct Registry {
    /// The port on the lab host's loopback.
    pub port: u16,
    /// Requests refused for want of credentials.
    pub refused: Arc<AtomicUsize>,
    /// Manifests served.
    pub served: Arc<AtomicUsize>,
}

struct Content {
    repo: String,
    tag: String,
    manifest: (String, String),
    /// digest → (media type, bytes).
    blobs: HashMap<String, (String, Vec<u8>)>,
    auth: String,
}

impl Registry {
    /// Serves the image in `archive` (an OCI layout tar) as `<repo>:<tag>` to clients
    /// presenting `user`/`password`, inside network namespace `netns`, on `port` of its
    /// loopback (0: one the kernel picks).
    pub fn start(
        netns: &str,
        port: u16,
        archive: &[u8],
        repo: &str,
        tag: &str,
        (user, password): (&str, &str),
    ) -> Registry {
        let mut files: HashMap<String, Vec<u8>> = HashMap::new();
        let mut ar = tar::Archive::new(archive);
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().trim_start_matches("./").to_string();
            let mut data = vec![];
            e.read_to_end(&mut data).unwrap();
            files.insert(name, data);
        }
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let m = &index["manifests"][0];
        let manifest = (m["digest"].as_str().unwrap().to_string(), m["mediaType"].as_str().unwrap().to_string());
        let blobs = files
            .into_iter()
            .filter_map(|(name, data)| {
                let hex = name.strip_prefix("blobs/sha256/")?;
                Some((format!("sha256:{hex}"), ("application/octet-stream".to_string(), data)))
            })
            .collect();
        let auth = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")));
        let content = Arc::new(Content { repo: repo.into(), tag: tag.into(), manifest, blobs, auth });
        // The socket is made in the lab host's namespace (a thread of its own enters it)
        // and stays there.
        let ns = std::fs::File::open(format!("/var/run/netns/{netns}")).unwrap();
        let listener = std::thread::spawn(move || {
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("entering the lab host's netns");
            TcpListener::bind(("127.0.0.1", port)).unwrap()
        })
        .join()
        .unwrap();
        let port = listener.local_addr().unwrap().port();
        let (refused, served) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (r, s) = (refused.clone(), served.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (c, r, s) = (content.clone(), r.clone(), s.clone());
                std::thread::spawn(move || serve(conn, &c, &r, &s));
            }
        });
        Registry { port, refused, served }
    }
}

/// Answers the requests of one connection (keep-alive) until it closes.
fn serve(conn: TcpStream, c: &Content, refused: &AtomicUsize, served: &AtomicUsize) {
    let mut out = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        // A mirror is asked with `?ns=<registry>` (containerd's way); the query is not the path.
        let path = parts.next().unwrap_or("").split('?').next().unwrap_or("").to_string();
        let mut authorization = String::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("authorization")
            {
                authorization = v.trim().to_string();
            }
        }
        let (status, ctype, extra, body): (&str, String, String, Vec<u8>) = if authorization != c.auth {
            refused.fetch_add(1, Ordering::SeqCst);
            (
                "401 Unauthorized",
                "application/json".into(),
                "WWW-Authenticate: Basic realm=\"rk-test\"\r\n".into(),
                br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#.to_vec(),
            )
        } else if path == "/v2/" || path == "/v2" {
            ("200 OK", "application/json".into(), String::new(), b"{}".to_vec())
        } else if let Some(r) = path.strip_prefix(&format!("/v2/{}/manifests/", c.repo))
            && (r == c.tag || r == c.manifest.0)
        {
            served.fetch_add(1, Ordering::SeqCst);
            let data = c.blobs[&c.manifest.0].1.clone();
            ("200 OK", c.manifest.1.clone(), format!("Docker-Content-Digest: {}\r\n", c.manifest.0), data)
        } else if let Some(d) = path.strip_prefix(&format!("/v2/{}/blobs/", c.repo))
            && let Some((t, data)) = c.blobs.get(d)
        {
            ("200 OK", t.clone(), format!("Docker-Content-Digest: {d}\r\n"), data.clone())
        } else {
            (
                "404 Not Found",
                "application/json".into(),
                String::new(),
                br#"{"errors":[{"code":"NAME_UNKNOWN","message":"not here"}]}"#.to_vec(),
            )
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\
             Docker-Distribution-API-Version: registry/2.0\r\n{extra}\r\n",
            body.len()
        );
        if out.write_all(head.as_bytes()).is_err() {
            return;
        }
        if method != "HEAD" && out.write_all(&body).is_err() {
            return;
        }
    }
}
