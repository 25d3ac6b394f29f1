//! The cluster DNS, native and node-local: every node answers at the cluster DNS
//! address (on a dummy interface, `rk-dns`) from its own caches of Services and
//! EndpointSlices, as CoreDNS's `kubernetes` plugin answers:
//!
//! - `<svc>.<ns>.svc.<domain>`: A with the ClusterIP; for a headless Service the ready
//!   endpoints' addresses; for an ExternalName Service a CNAME;
//! - `<hostname>.<svc>.<ns>.svc.<domain>` and `<a-b-c-d>.<svc>.<ns>.svc.<domain>`: one
//!   endpoint of a headless Service;
//! - `_<port>._<proto>.<svc>.<ns>.svc.<domain>`: SRV for a named port;
//! - `<a-b-c-d>.<ns>.pod.<domain>`: A `a.b.c.d`;
//! - other names in the domain: NXDOMAIN; names outside it are forwarded to the
//!   node's own resolvers (`/etc/resolv.conf`), with the answers cached for their TTL.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Message, Metadata, OpCode, Query, ResponseCode};
use hickory_server::proto::rr::rdata::{A, CNAME, SOA, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{ObjectRef, Store};

use super::NetConfig;

/// TTL of cluster records (CoreDNS's `kubernetes` plugin default).
const TTL: u32 = 5;
/// The dummy interface carrying the cluster DNS address.
pub const DNS_LINK: &str = "rk-dns";

/// Where answers come from.
pub struct Sources {
    pub services: Store<Service>,
    pub slices: Store<EndpointSlice>,
}

/// What a name in the cluster domain resolves to.
#[derive(Debug, PartialEq)]
pub enum Answer {
    /// These records (possibly none: the name exists without that type).
    Records(Vec<Record>, Vec<Record>),
    /// No such name.
    NxDomain,
    /// Not ours: ask upstream.
    Forward,
}

fn name(s: &str) -> Option<Name> {
    Name::from_ascii(if s.ends_with('.') { s.to_string() } else { format!("{s}.") }).ok()
}

fn a(owner: &str, ip: Ipv4Addr) -> Option<Record> {
    Some(Record::from_rdata(name(owner)?, TTL, RData::A(A(ip))))
}

fn dashed(ip: &str) -> String {
    ip.replace('.', "-")
}

impl Sources {
    fn service(&self, ns: &str, svc: &str) -> Option<Arc<Service>> {
        self.services.get(&ObjectRef::new(svc).within(ns))
    }

    /// The ready endpoints of a Service: (address, hostname, ports by name/protocol).
    fn endpoints(&self, ns: &str, svc: &str, all: bool) -> Vec<(Ipv4Addr, Option<String>, Vec<(String, String, i32)>)> {
        let mut out = Vec::new();
        for s in super::slices_of(&self.slices, ns, svc) {
            if s.address_type != "IPv4" {
                continue;
            }
            let ports: Vec<(String, String, i32)> = s
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    Some((
                        p.name.clone().unwrap_or_default(),
                        p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        p.port?,
                    ))
                })
                .collect();
            for e in &s.endpoints {
                let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                if !ready && !all {
                    continue;
                }
                for addr in &e.addresses {
                    if let Ok(ip) = addr.parse() {
                        out.push((ip, e.hostname.clone(), ports.clone()));
                    }
                }
            }
        }
        out.sort_by_key(|x| x.0);
        out.dedup_by_key(|x| x.0);
        out
    }

    /// Answers `qname` (lowercase, without the final dot) of type `qtype`.
    pub fn answer(&self, domain: &str, qname: &str, qtype: RecordType) -> Answer {
        let Some(rest) = qname.strip_suffix(domain).and_then(|r| r.strip_suffix('.').or((r.is_empty()).then_some(r)))
        else {
            return Answer::Forward;
        };
        let labels: Vec<&str> = if rest.is_empty() { vec![] } else { rest.split('.').collect() };
        let want_a = matches!(qtype, RecordType::A | RecordType::ANY);
        let none = || Answer::Records(vec![], vec![]);
        match labels.as_slice() {
            [] | ["svc"] | ["pod"] | [_, "svc"] | [_, "pod"] => none(),
            [ip, _ns, "pod"] => match ip.replace('-', ".").parse::<Ipv4Addr>() {
                Ok(addr) if want_a => Answer::Records(a(qname, addr).into_iter().collect(), vec![]),
                Ok(_) => none(),
                Err(_) => Answer::NxDomain,
            },
            [svc, ns, "svc"] => {
                let Some(s) = self.service(ns, svc) else { return Answer::NxDomain };
                let spec = s.spec.clone().unwrap_or_default();
                if spec.type_.as_deref() == Some("ExternalName") {
                    let Some(target) = spec.external_name.as_deref().and_then(name) else { return Answer::NxDomain };
                    let Some(owner) = name(qname) else { return Answer::NxDomain };
                    return Answer::Records(vec![Record::from_rdata(owner, TTL, RData::CNAME(CNAME(target)))], vec![]);
                }
                if !want_a {
                    return none();
                }
                match spec.cluster_ip.as_deref() {
                    Some("None") | None => {
                        let all = spec.publish_not_ready_addresses.unwrap_or(false);
                        let recs =
                            self.endpoints(ns, svc, all).into_iter().filter_map(|(ip, _, _)| a(qname, ip)).collect();
                        Answer::Records(recs, vec![])
                    }
                    Some(ip) => {
                        Answer::Records(ip.parse().ok().and_then(|ip| a(qname, ip)).into_iter().collect(), vec![])
                    }
                }
            }
            [host, svc, ns, "svc"] if !host.starts_with('_') => {
                let all =
                    self.service(ns, svc).and_then(|s| s.spec.as_ref()?.publish_not_ready_addresses).unwrap_or(false);
                let hit: Vec<Ipv4Addr> = self
                    .endpoints(ns, svc, all)
                    .into_iter()
                    .filter(|(ip, h, _)| h.as_deref() == Some(*host) || dashed(&ip.to_string()) == *host)
                    .map(|(ip, _, _)| ip)
                    .collect();
                if hit.is_empty() {
                    Answer::NxDomain
                } else if want_a {
                    Answer::Records(hit.into_iter().filter_map(|ip| a(qname, ip)).collect(), vec![])
                } else {
                    none()
                }
            }
            [port, proto, svc, ns, "svc"] => {
                let (Some(port), Some(proto)) = (port.strip_prefix('_'), proto.strip_prefix('_')) else {
                    return Answer::NxDomain;
                };
                let Some(s) = self.service(ns, svc) else { return Answer::NxDomain };
                let spec = s.spec.clone().unwrap_or_default();
                let proto = proto.to_ascii_uppercase();
                let base = format!("{svc}.{ns}.svc.{domain}");
                let mut answers = Vec::new();
                let mut extra = Vec::new();
                if matches!(spec.cluster_ip.as_deref(), Some("None") | None) {
                    let all = spec.publish_not_ready_addresses.unwrap_or(false);
                    for (ip, host, ports) in self.endpoints(ns, svc, all) {
                        let Some((_, _, p)) = ports.iter().find(|(n, pr, _)| n == port && *pr == proto) else {
                            continue;
                        };
                        let target = format!("{}.{base}", host.unwrap_or_else(|| dashed(&ip.to_string())));
                        if let Some(t) = name(&target) {
                            answers.push(srv(qname, *p, t));
                            extra.extend(a(&target, ip));
                        }
                    }
                } else {
                    let cip = spec.cluster_ip.as_deref().and_then(|ip| ip.parse::<Ipv4Addr>().ok());
                    for p in spec.ports.iter().flatten() {
                        if p.name.as_deref() == Some(port) && p.protocol.as_deref().unwrap_or("TCP") == proto {
                            if let Some(t) = name(&base) {
                                answers.push(srv(qname, p.port, t));
                            }
                            extra.extend(cip.and_then(|ip| a(&base, ip)));
                        }
                    }
                }
                if answers.is_empty() {
                    return Answer::NxDomain;
                }
                let answers = answers.into_iter().flatten().collect();
                if qtype == RecordType::SRV || qtype == RecordType::ANY {
                    Answer::Records(answers, extra)
                } else {
                    none()
                }
            }
            _ => Answer::NxDomain,
        }
    }
}

fn srv(owner: &str, port: i32, target: Name) -> Option<Record> {
    let port = u16::try_from(port).ok()?;
    Some(Record::from_rdata(name(owner)?, TTL, RData::SRV(SRV::new(0, 100, port, target))))
}

fn soa(domain: &str) -> Option<Record> {
    let zone = name(domain)?;
    let rdata =
        SOA::new(name(&format!("ns.dns.{domain}"))?, name(&format!("hostmaster.{domain}"))?, 1, 7200, 1800, 86400, TTL);
    Some(Record::from_rdata(zone, TTL, RData::SOA(rdata)))
}

/// What a resolv.conf says: its servers, search list and options.
#[derive(Debug, Default, PartialEq)]
pub struct ResolvConf {
    pub nameservers: Vec<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

impl ResolvConf {
    pub fn parse(text: &str) -> ResolvConf {
        let mut r = ResolvConf::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => r.nameservers.extend(words.next().map(String::from)),
                Some("search" | "domain") => r.search = words.map(String::from).collect(),
                Some("options") => r.options.extend(words.map(String::from)),
                _ => {}
            }
        }
        r
    }
}

/// The node's own resolvers, from its resolv.conf (the cluster DNS address left out).
pub fn upstreams(resolv_conf: &str, dns_ip: Ipv4Addr) -> Vec<SocketAddr> {
    ResolvConf::parse(resolv_conf)
        .nameservers
        .iter()
        .filter_map(|ip| ip.parse::<std::net::IpAddr>().ok())
        .filter(|ip| *ip != std::net::IpAddr::V4(dns_ip))
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

struct Cached {
    until: Instant,
    code: ResponseCode,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
}

/// The DNS request handler.
pub struct Handler {
    sources: Arc<Sources>,
    domain: String,
    upstreams: Vec<SocketAddr>,
    cache: Mutex<HashMap<(String, RecordType), Arc<Cached>>>,
}

const CACHE_MAX: usize = 10_000;

impl Handler {
    /// A handler answering for `domain` from `sources`, forwarding the rest to `upstreams`.
    pub fn new(sources: Arc<Sources>, domain: &str, upstreams: Vec<SocketAddr>) -> Handler {
        Handler {
            sources,
            domain: domain.trim_end_matches('.').to_string(),
            upstreams,
            cache: Mutex::new(HashMap::new()),
        }
    }

    async fn forward(&self, q: &Query) -> Option<Arc<Cached>> {
        let key = (q.name().to_ascii().to_ascii_lowercase(), q.query_type());
        if let Some(c) = self.cache.lock().ok()?.get(&key).filter(|c| c.until > Instant::now()) {
            return Some(c.clone());
        }
        let mut msg = Message::query();
        msg.metadata.id = rand::random();
        msg.metadata.recursion_desired = true;
        msg.add_query(q.clone());
        let bytes = msg.to_vec().ok()?;
        for up in &self.upstreams {
            let bind: SocketAddr = if up.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                ("::".parse::<std::net::IpAddr>().ok()?, 0).into()
            };
            let Ok(sock) = tokio::net::UdpSocket::bind(bind).await else { continue };
            if sock.send_to(&bytes, up).await.is_err() {
                continue;
            }
            let mut buf = vec![0u8; 4096];
            let Ok(Ok((n, _))) = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf)).await else {
                continue;
            };
            let Ok(resp) = Message::from_vec(&buf[..n]) else { continue };
            if resp.metadata.id != msg.metadata.id {
                continue;
            }
            let code = resp.metadata.response_code;
            let ttl = resp.answers.iter().chain(resp.authorities.iter()).map(|r| r.ttl).min().unwrap_or(30).min(300);
            let c = Arc::new(Cached {
                until: Instant::now() + Duration::from_secs(u64::from(ttl)),
                code,
                answers: resp.answers,
                authorities: resp.authorities,
                additionals: resp.additionals.into_iter().filter(|r| r.record_type() != RecordType::OPT).collect(),
            });
            if matches!(code, ResponseCode::NoError | ResponseCode::NXDomain) {
                if let Ok(mut cache) = self.cache.lock() {
                    if cache.len() >= CACHE_MAX {
                        let now = Instant::now();
                        cache.retain(|_, v| v.until > now);
                        if cache.len() >= CACHE_MAX {
                            cache.clear();
                        }
                    }
                    cache.insert(key, c.clone());
                }
            }
            return Some(c);
        }
        None
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, mut response: R) -> ResponseInfo {
        let fail = |code| {
            let mut m = Metadata::response_from_request(&request.metadata);
            m.response_code = code;
            ResponseInfo::from(hickory_server::proto::op::Header { metadata: m, counts: Default::default() })
        };
        let builder = MessageResponseBuilder::from_message_request(request);
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.recursion_available = true;
        let Some(q) = request.queries.queries().first().filter(|_| request.metadata.op_code == OpCode::Query) else {
            meta.response_code = ResponseCode::NotImp;
            return response
                .send_response(builder.build_no_records(meta))
                .await
                .unwrap_or_else(|_| fail(ResponseCode::ServFail));
        };
        let qname = q.name().to_string().trim_end_matches('.').to_ascii_lowercase();
        match self.sources.answer(&self.domain, &qname, q.query_type()) {
            Answer::Records(answers, extra) => {
                meta.authoritative = true;
                let soa: Vec<Record> =
                    if answers.is_empty() { soa(&self.domain).into_iter().collect() } else { vec![] };
                let r = builder.build(meta, answers.iter(), std::iter::empty(), soa.iter(), extra.iter());
                response.send_response(r).await.unwrap_or_else(|_| fail(ResponseCode::ServFail))
            }
            Answer::NxDomain => {
                meta.authoritative = true;
                meta.response_code = ResponseCode::NXDomain;
                let soa: Vec<Record> = soa(&self.domain).into_iter().collect();
                let r = builder.build(meta, std::iter::empty(), std::iter::empty(), soa.iter(), std::iter::empty());
                response.send_response(r).await.unwrap_or_else(|_| fail(ResponseCode::ServFail))
            }
            Answer::Forward => match self.forward(q.original()).await {
                Some(c) => {
                    meta.response_code = c.code;
                    let r = builder.build(
                        meta,
                        c.answers.iter(),
                        c.authorities.iter(),
                        std::iter::empty(),
                        c.additionals.iter(),
                    );
                    response.send_response(r).await.unwrap_or_else(|_| fail(ResponseCode::ServFail))
                }
                None => {
                    meta.response_code = ResponseCode::ServFail;
                    response
                        .send_response(builder.build_no_records(meta))
                        .await
                        .unwrap_or_else(|_| fail(ResponseCode::ServFail))
                }
            },
        }
    }
}

async fn ip(args: &[&str]) -> bool {
    super::routes::ip(args).await.is_ok()
}

/// Puts the cluster DNS address on the node: on a dummy link `rk-dns`, or where the
/// kernel has no dummy links, on `lo` (labelled `lo:rk-dns`).
async fn ensure_address(dns_ip: Ipv4Addr) -> bool {
    let addr = format!("{dns_ip}/32");
    let _ = ip(&["link", "add", DNS_LINK, "type", "dummy"]).await;
    if ip(&["addr", "replace", &addr, "dev", DNS_LINK]).await {
        return ip(&["link", "set", DNS_LINK, "up"]).await;
    }
    let label = format!("lo:{DNS_LINK}");
    ip(&["addr", "replace", &addr, "dev", "lo", "label", &label]).await
}

/// Serves the cluster DNS at `cfg.dns_ip:53` (UDP and TCP) until the future is dropped.
pub async fn run(cfg: NetConfig, sources: Arc<Sources>) {
    let upstreams = upstreams(&std::fs::read_to_string(&cfg.resolv_conf).unwrap_or_default(), cfg.dns_ip);
    tracing::debug!(?upstreams, file = %cfg.resolv_conf.display(), "cluster DNS upstreams");
    let handler = Handler::new(sources, &cfg.domain, upstreams);
    let addr = SocketAddr::from((cfg.dns_ip, 53));
    let (udp, tcp) = loop {
        if !ensure_address(cfg.dns_ip).await {
            tracing::warn!(address = %cfg.dns_ip, "cannot put the cluster DNS address on {DNS_LINK}; retrying");
        } else {
            match (tokio::net::UdpSocket::bind(addr).await, tokio::net::TcpListener::bind(addr).await) {
                (Ok(u), Ok(t)) => break (u, t),
                (Err(e), _) | (_, Err(e)) => tracing::warn!(%addr, error = %e, "cannot serve cluster DNS; retrying"),
            }
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    };
    tracing::info!(%addr, "cluster DNS serving");
    crate::component_ready("dns");
    serve(handler, udp, tcp).await;
}

/// Serves DNS with `handler` on these sockets until the future is dropped.
pub async fn serve(handler: Handler, udp: tokio::net::UdpSocket, tcp: tokio::net::TcpListener) {
    let mut server = hickory_server::Server::new(handler);
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(10), 64 * 1024);
    let _ = server.block_until_done().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(svcs: Vec<serde_json::Value>, slices: Vec<serde_json::Value>) -> Sources {
        let (services, mut w1) = kube::runtime::reflector::store::<Service>();
        for s in svcs {
            w1.apply_watcher_event(&kube::runtime::watcher::Event::Apply(serde_json::from_value(s).unwrap()));
        }
        let (sl, mut w2) = kube::runtime::reflector::store::<EndpointSlice>();
        for s in slices {
            w2.apply_watcher_event(&kube::runtime::watcher::Event::Apply(serde_json::from_value(s).unwrap()));
        }
        Sources { services, slices: sl }
    }

    fn ips(a: Answer) -> Vec<String> {
        match a {
            Answer::Records(r, _) => r.iter().map(|r| r.data.to_string()).collect(),
            other => vec![format!("{other:?}")],
        }
    }

    #[test]
    fn answers_like_coredns() {
        let s = sources(
            vec![
                serde_json::json!({"metadata": {"name": "web", "namespace": "default"},
                    "spec": {"clusterIP": "10.43.0.20", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}),
                serde_json::json!({"metadata": {"name": "db", "namespace": "default"},
                    "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}}),
                serde_json::json!({"metadata": {"name": "ext", "namespace": "default"},
                    "spec": {"type": "ExternalName", "externalName": "example.com"}}),
            ],
            vec![serde_json::json!({"metadata": {"name": "db-1", "namespace": "default",
                    "labels": {"kubernetes.io/service-name": "db"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.42.0.7"], "hostname": "db-0", "conditions": {"ready": true}},
                              {"addresses": ["10.42.1.8"], "conditions": {"ready": true}},
                              {"addresses": ["10.42.1.9"], "conditions": {"ready": false}}],
                "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]})],
        );
        let d = "cluster.local";
        assert_eq!(ips(s.answer(d, "web.default.svc.cluster.local", RecordType::A)), ["10.43.0.20"]);
        assert_eq!(ips(s.answer(d, "web.default.svc.cluster.local", RecordType::AAAA)), Vec::<String>::new());
        assert_eq!(ips(s.answer(d, "db.default.svc.cluster.local", RecordType::A)), ["10.42.0.7", "10.42.1.8"]);
        assert_eq!(ips(s.answer(d, "db-0.db.default.svc.cluster.local", RecordType::A)), ["10.42.0.7"]);
        assert_eq!(ips(s.answer(d, "10-42-1-8.db.default.svc.cluster.local", RecordType::A)), ["10.42.1.8"]);
        assert_eq!(ips(s.answer(d, "10-42-0-9.default.pod.cluster.local", RecordType::A)), ["10.42.0.9"]);
        assert_eq!(ips(s.answer(d, "ext.default.svc.cluster.local", RecordType::A)), ["example.com."]);
        assert_eq!(s.answer(d, "nope.default.svc.cluster.local", RecordType::A), Answer::NxDomain);
        assert_eq!(s.answer(d, "web.other.svc.cluster.local", RecordType::A), Answer::NxDomain);
        assert_eq!(s.answer(d, "example.com", RecordType::A), Answer::Forward);
        assert_eq!(s.answer(d, "notcluster.local", RecordType::A), Answer::Forward);
        let srv = ips(s.answer(d, "_http._tcp.web.default.svc.cluster.local", RecordType::SRV));
        assert_eq!(srv, ["0 100 80 web.default.svc.cluster.local."]);
        let srv = ips(s.answer(d, "_pg._tcp.db.default.svc.cluster.local", RecordType::SRV));
        assert_eq!(
            srv,
            ["0 100 5432 db-0.db.default.svc.cluster.local.", "0 100 5432 10-42-1-8.db.default.svc.cluster.local."]
        );
    }

    #[test]
    fn upstreams_skip_the_cluster_dns() {
        let u = upstreams("search x\nnameserver 10.43.0.10\nnameserver 192.0.2.53\n", "10.43.0.10".parse().unwrap());
        assert_eq!(u, vec!["192.0.2.53:53".parse().unwrap()]);
    }
}
