//! Hostile input: a corpus of more than 10,000 bad requests (oversized bodies and
//! objects, JSON nested a million deep, YAML alias bombs, invalid UTF-8, duplicate
//! keys, bad names, 64-character label values, 262,145 bytes of annotations, wrong
//! Content-Types, truncated bodies, garbage paths) sent while slow clients hold
//! connections open and ordinary traffic goes on. Every answer must be a 4xx, the
//! ordinary traffic must keep being served, and memory must stay bounded.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::{TestServer, code as send};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

const CMS: &str = "/api/v1/namespaces/default/configmaps";
const DEPLOYS: &str = "/apis/apps/v1/namespaces/default/deployments";

struct Bad {
    what: &'static str,
    method: &'static str,
    path: String,
    ct: String,
    body: Vec<u8>,
}

/// A small deterministic generator (no dependency, same corpus every run).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() as usize) % n
    }
}

fn cm(name: &str, extra: &str) -> Vec<u8> {
    format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}"{extra}}},"data":{{"a":"b"}}}}"#)
        .into_bytes()
}

fn corpus() -> Vec<Bad> {
    let mut rng = Rng(0x5eed);
    let mut out = Vec::new();
    let json = "application/json".to_string();
    let mut add = |what, method, path: &str, ct: &str, body: Vec<u8>| {
        out.push(Bad { what, method, path: path.to_string(), ct: ct.to_string(), body })
    };
    // Bodies over 3 MiB.
    for _ in 0..10 {
        let mut b = br#"{"metadata":{"name":"big"},"data":{"a":""#.to_vec();
        b.resize(3 * 1024 * 1024 + 100, b'x');
        b.extend_from_slice(b"\"}}");
        add("body over 3 MiB", "POST", CMS, &json, b);
    }
    // Objects over the store's limit (and ConfigMaps over their data limit).
    for i in 0..10 {
        let env: Vec<String> =
            (0..2000).map(|j| format!(r#"{{"name":"V{j}","value":"{}"}}"#, "v".repeat(800))).collect();
        let d = format!(
            r#"{{"apiVersion":"apps/v1","kind":"Deployment","metadata":{{"name":"huge-{i}"}},"spec":{{"selector":{{"matchLabels":{{"a":"b"}}}},"template":{{"metadata":{{"labels":{{"a":"b"}}}},"spec":{{"containers":[{{"name":"c","image":"x","env":[{}]}}]}}}}}}}}"#,
            env.join(",")
        );
        add("object over the store limit", "POST", DEPLOYS, &json, d.into_bytes());
        let big = format!(r#"{{"metadata":{{"name":"big-{i}"}},"data":{{"a":"{}"}}}}"#, "y".repeat(1_100_000));
        add("ConfigMap over 1 MiB of data", "POST", CMS, &json, big.into_bytes());
    }
    // JSON nested a million deep (2 MB, under the body limit).
    for _ in 0..5 {
        let deep =
            format!(r#"{{"metadata":{{"name":"deep"}},"data":{}{}}}"#, "[".repeat(1_000_000), "]".repeat(1_000_000));
        add("JSON a million deep", "POST", CMS, &json, deep.into_bytes());
    }
    // YAML alias bombs.
    for i in 0..50 {
        let mut y = String::from("a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
        let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
        for w in names.windows(2) {
            let refs = vec![format!("*{}", w[0]); 9].join(",");
            y.push_str(&format!("{}: &{} [{refs}]\n", w[1], w[1]));
        }
        y.push_str(&format!("metadata: {{name: bomb-{i}}}\n"));
        add("YAML alias bomb", "POST", CMS, "application/yaml", y.into_bytes());
    }
    // Invalid UTF-8.
    for i in 0..2000 {
        let mut b = cm(&format!("utf-{i}"), "");
        let at = 20 + rng.below(b.len() - 30);
        b.insert(at, [0xff, 0xc3, 0x80, 0xed][rng.below(4)]);
        if rng.below(2) == 0 {
            b.insert(at, 0xfe);
        }
        let ct = if i % 5 == 0 { "application/yaml" } else { "application/json" };
        add("invalid UTF-8", "POST", CMS, ct, b);
    }
    // Duplicate keys, refused under Strict (kubectl's default).
    for i in 0..2000 {
        let b = format!(r#"{{"metadata":{{"name":"dup-{i}","name":"dup-{i}"}},"data":{{"k":"1","k":"2"}}}}"#);
        add("duplicate keys", "POST", &format!("{CMS}?fieldValidation=Strict"), &json, b.into_bytes());
    }
    // Bad names.
    let bad_chars = ['_', 'A', '@', 'Z', '!', '~', '*'];
    for i in 0..2000 {
        let name = match i % 4 {
            0 => "x".repeat(254 + rng.below(50)),
            1 => format!("n{}{i}", bad_chars[rng.below(bad_chars.len())]),
            2 => format!("-lead-{i}"),
            _ => format!("trail-{i}-"),
        };
        add("bad name", "POST", CMS, &json, cm(&name, ""));
    }
    // Label values of 64 characters.
    for i in 0..1000 {
        let extra = format!(r#","labels":{{"app":"{}"}}"#, "v".repeat(64));
        add("64-character label value", "POST", CMS, &json, cm(&format!("label-{i}"), &extra));
    }
    // 262,145 bytes of annotations.
    for i in 0..20 {
        let extra = format!(r#","annotations":{{"a":"{}"}}"#, "z".repeat(262_145 - 1));
        add("262,145 bytes of annotations", "POST", CMS, &json, cm(&format!("ann-{i}"), &extra));
    }
    // Wrong Content-Types.
    let types = [
        "text/plain",
        "application/xml",
        "image/png",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "nonsense",
    ];
    for i in 0..2000 {
        let ct = types[rng.below(types.len())];
        add("wrong Content-Type", "POST", CMS, ct, cm(&format!("ct-{i}"), ""));
    }
    // Truncated bodies.
    for i in 0..1000 {
        let b = cm(&format!("cut-{i}"), "");
        let cut = 1 + rng.below(b.len() - 2);
        add("truncated body", "POST", CMS, &json, b[..cut].to_vec());
    }
    // Garbage paths.
    let segs =
        ["%ff", "..", "%2e%2e", "x", "namespaces", "api", "v1", "%00", "pods", "watch", "%2F", "status", "scale"];
    for _ in 0..500 {
        let n = 1 + rng.below(8);
        let p: Vec<&str> = (0..n).map(|_| segs[rng.below(segs.len())]).collect();
        let first = ["%ff", "%00", "..", "bogus", "%2e%2e"][rng.below(5)];
        add("garbage path", "GET", &format!("/api/v1/{first}/{}", p.join("/")), &json, vec![]);
    }
    out
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:").and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok()))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_corpus_gets_4xx_while_ordinary_traffic_goes_on() {
    let s = TestServer::api_only().await;
    let c = s.client().await;
    let corpus = corpus();
    assert!(corpus.len() >= 10_000, "{} requests", corpus.len());
    let rss_before = rss_kb();

    // Slow clients: connections that send nothing, or half a TLS ClientHello, and stay.
    let mut slow = Vec::new();
    for i in 0..100 {
        let mut t = tokio::net::TcpStream::connect(s.running.addr).await.unwrap();
        if i % 2 == 0 {
            t.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.unwrap();
        }
        slow.push(t);
    }

    // Ordinary traffic, all along.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let ordinary = {
        let (c, stop, ok, failed) = (c.clone(), stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("ordinary-{i}");
                let created = send(&c, "POST", CMS, "application/json", cm(&name, "")).await;
                let got = send(&c, "GET", &format!("{CMS}/{name}"), "", vec![]).await;
                if created == 201 && got == 200 {
                    ok.fetch_add(1, Ordering::Relaxed)
                } else {
                    failed.fetch_add(1, Ordering::Relaxed)
                };
                i += 1;
            }
        })
    };

    let t0 = std::time::Instant::now();
    let codes: Vec<(&'static str, u16)> = futures::stream::iter(corpus)
        .map(|b| {
            let c = c.clone();
            async move { (b.what, send(&c, b.method, &b.path, &b.ct, b.body).await) }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let elapsed = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    ordinary.await.unwrap();

    let mut by: BTreeMap<(&str, u16), usize> = BTreeMap::new();
    for (what, code) in &codes {
        *by.entry((what, *code)).or_default() += 1;
    }
    for ((what, code), n) in &by {
        println!("{n:>6}  {code}  {what}");
    }
    let rss_after = rss_kb();
    println!(
        "{} hostile requests in {:.1}s; ordinary traffic: {} ok, {} failed; RSS {} MB -> {} MB",
        codes.len(),
        elapsed.as_secs_f64(),
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        rss_before / 1024,
        rss_after / 1024
    );
    let not_4xx: Vec<_> = by.iter().filter(|((_, code), _)| !(400..500).contains(code)).collect();
    assert!(not_4xx.is_empty(), "answers that are not 4xx: {not_4xx:?}");
    assert_eq!(failed.load(Ordering::Relaxed), 0, "ordinary traffic failed");
    assert!(ok.load(Ordering::Relaxed) > 0, "ordinary traffic was served");
    assert_eq!(send(&c, "GET", "/readyz", "", vec![]).await, 200, "the server is alive");
    // Bounded: the corpus is ~100 MB of bodies; the server must not keep them.
    assert!(rss_after < rss_before + 600 * 1024, "RSS grew from {rss_before} kB to {rss_after} kB");
    drop(slow);
}

/// A TLS connection to the test server, ALPN as given, with the admin's client
/// certificate if `admin`.
async fn tls_connect(
    s: &TestServer,
    alpn: &[&[u8]],
    admin: bool,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(s.running.identity.ca.cert_pem.as_bytes()).unwrap())
        .unwrap();
    let c = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut c = if admin {
        let id = &s.running.identity.admin;
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(id.cert_pem.as_bytes()).map(|c| c.unwrap());
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).unwrap();
        c.with_client_auth_cert(certs.collect(), key).unwrap()
    } else {
        c.with_no_client_auth()
    };
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(s.running.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(c)).connect(name, tcp).await.expect("TLS handshake")
}

/// Slowloris after the TLS handshake: clients that send nothing, half an HTTP/2
/// preface, a request head a byte at a time, or a body that never completes. They do
/// not hold up anyone else, and the server cuts each of them off (a head must arrive
/// within 32 s, as kube-apiserver's ReadHeaderTimeout; a body within its 60 s request
/// timeout, answered 408).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_after_tls_are_cut_off() {
    use tokio::io::AsyncReadExt;
    let s = TestServer::api_only().await;
    let c = s.client().await;
    let rss_before = rss_kb();
    let mut slow = Vec::new();
    for i in 0..200 {
        let mut t = tls_connect(&s, if i % 4 == 1 { &[b"h2"] } else { &[b"http/1.1"] }, i % 2 == 1).await;
        match i % 4 {
            0 => {}
            1 => t.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap(),
            2 => t.write_all(b"GET /api/v1/namespaces HTTP/1.1\r\nHost: localhost\r\nX-Slow: ").await.unwrap(),
            _ => t
                .write_all(
                    format!(
                        "POST {CMS} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n{{\"apiVersion\":"
                    )
                    .as_bytes(),
                )
                .await
                .unwrap(),
        }
        t.flush().await.unwrap();
        slow.push((i % 4, t));
    }
    // One client keeps its head coming, a byte every second.
    let mut dribble = tls_connect(&s, &[b"http/1.1"], true).await;
    let dribbler = tokio::spawn(async move {
        let head = b"GET /api/v1/namespaces HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        for b in head {
            if dribble.write_all(&[*b]).await.is_err() || dribble.flush().await.is_err() {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        false
    });

    // Everyone else is served meanwhile.
    for i in 0..50 {
        let name = format!("meanwhile-{i}");
        assert_eq!(send(&c, "POST", CMS, "application/json", cm(&name, "")).await, 201);
        assert_eq!(send(&c, "GET", &format!("{CMS}/{name}"), "", vec![]).await, 200);
    }

    // Each slow connection is closed by the server; a slow body first gets its 408.
    let mut cut = BTreeMap::<usize, usize>::new();
    for (kind, mut t) in slow {
        let mut got = Vec::new();
        let r = tokio::time::timeout(std::time::Duration::from_secs(120), t.read_to_end(&mut got)).await;
        assert!(r.is_ok(), "slow client of kind {kind} still connected after 120 s");
        if kind == 3 {
            let text = String::from_utf8_lossy(&got);
            assert!(text.starts_with("HTTP/1.1 408"), "slow body answered: {text}");
            assert!(text.contains(r#""reason":"Timeout""#), "slow body answered: {text}");
        }
        *cut.entry(kind).or_default() += 1;
    }
    assert!(dribbler.await.unwrap(), "a head dribbled over 32 s was not cut off");
    println!("slow clients cut off, by kind (silent, h2 preface, head, body): {cut:?}");
    assert_eq!(send(&c, "GET", "/readyz", "", vec![]).await, 200, "the server is alive");
    let rss_after = rss_kb();
    println!("RSS {} MB -> {} MB", rss_before / 1024, rss_after / 1024);
    assert!(rss_after < rss_before + 200 * 1024, "RSS grew from {rss_before} kB to {rss_after} kB");
}
