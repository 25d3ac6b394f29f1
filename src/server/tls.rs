//! Cluster identity: the CA, the API serving certificate, the admin client certificate,
//! the admin kubeconfig and the join token; and the TLS configuration that serves them.
//!
//! Files live under `<data-dir>/server/tls/`; a restart reuses them, and a leaf
//! certificate within 90 days of expiry (or whose SANs no longer match) is reissued.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::auth::User;
use sha2::Digest;
use time::{Duration, OffsetDateTime};

/// Lifetime of leaf certificates.
const LEAF_DAYS: i64 = 365;
/// Renew leaf certificates that expire within this window.
const RENEW_BEFORE: Duration = Duration::days(90);

/// Why setting up cluster identity failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading or writing a file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Generating or parsing a certificate failed.
    #[error("certificate {what}: {msg}")]
    Cert {
        /// Which certificate.
        what: &'static str,
        /// The cause.
        msg: String,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> TlsError + 'a {
    move |source| TlsError::Io { action, path: path.to_path_buf(), source }
}

fn cert_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> TlsError {
    move |e| TlsError::Cert { what, msg: e.to_string() }
}

/// A PEM certificate and its PEM private key.
#[derive(Clone)]
pub struct CertKey {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PEM (PKCS#8).
    pub key_pem: String,
}

impl fmt::Debug for CertKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertKey").finish_non_exhaustive()
    }
}

/// What the server's identity is made from.
#[derive(Clone, Debug)]
pub struct IdentitySpec {
    /// `<data-dir>/server`.
    pub server_dir: PathBuf,
    /// Extra SANs for the serving certificate (`--tls-san`).
    pub tls_sans: Vec<String>,
    /// The node's addresses.
    pub node_ips: Vec<IpAddr>,
    /// The first IP of the service CIDR (the `kubernetes` Service).
    pub service_ip: IpAddr,
    /// The cluster domain.
    pub cluster_domain: String,
    /// A token secret given by the user (`--token`), else one is generated once.
    pub token: Option<String>,
}

/// The server's identity, loaded or created.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The cluster CA.
    pub ca: CertKey,
    /// The API serving certificate.
    pub serving: CertKey,
    /// The admin client certificate (O=system:masters).
    pub admin: CertKey,
    /// The join token, `K10<sha256 of CA PEM>::server:<secret>`.
    pub token: String,
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// Writes a file only its owner can read (mode `mode`), atomically.
pub fn write_private(path: &Path, contents: &str, mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    }
    // Write to a temporary file and rename, so a crash never leaves half a key.
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err("create", &tmp))?;
    f.write_all(contents.as_bytes()).map_err(io_err("write", &tmp))?;
    f.sync_all().map_err(io_err("sync", &tmp))?;
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(mode))
        .map_err(io_err("chmod", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err("rename", path))?;
    Ok(())
}

fn read_pair(dir: &Path, name: &str) -> Result<Option<CertKey>, TlsError> {
    let c = dir.join(format!("{name}.crt"));
    let k = dir.join(format!("{name}.key"));
    if !c.exists() || !k.exists() {
        return Ok(None);
    }
    Ok(Some(CertKey {
        cert_pem: std::fs::read_to_string(&c).map_err(io_err("read", &c))?,
        key_pem: std::fs::read_to_string(&k).map_err(io_err("read", &k))?,
    }))
}

fn write_pair(dir: &Path, name: &str, ck: &CertKey) -> Result<(), TlsError> {
    write_private(&dir.join(format!("{name}.key")), &ck.key_pem, 0o600)?;
    write_private(&dir.join(format!("{name}.crt")), &ck.cert_pem, 0o644)
}

/// Expiry and SANs of a PEM certificate.
fn inspect(pem: &str) -> Option<(i64, Vec<String>)> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = p.parse_x509().ok()?;
    let not_after = cert.validity().not_after.timestamp();
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for n in &ext.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => sans.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                    4 => sans.push(IpAddr::from(<[u8; 4]>::try_from(*b).ok()?).to_string()),
                    16 => sans.push(IpAddr::from(<[u8; 16]>::try_from(*b).ok()?).to_string()),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    sans.sort();
    Some((not_after, sans))
}

/// Seconds until a PEM certificate expires (negative once it has), if it parses.
pub fn seconds_left(pem: &str) -> Option<i64> {
    inspect(pem).map(|(not_after, _)| not_after - now().unix_timestamp())
}

fn needs_renewal(pem: &str, want_sans: Option<&[String]>) -> bool {
    match inspect(pem) {
        None => true,
        Some((not_after, sans)) => {
            not_after - now().unix_timestamp() < RENEW_BEFORE.whole_seconds() || want_sans.is_some_and(|w| w != sans)
        }
    }
}

fn new_ca() -> Result<CertKey, TlsError> {
    let key = KeyPair::generate().map_err(cert_err("ca key"))?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("rk-server-ca@{}", now().unix_timestamp()));
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p.not_before = now() - Duration::hours(1);
    p.not_after = now() + Duration::days(3650);
    let cert = p.self_signed(&key).map_err(cert_err("ca"))?;
    Ok(CertKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

fn issue_leaf(
    ca: &CertKey,
    cn: &str,
    orgs: &[&str],
    sans: &[String],
    server: bool,
    days: i64,
) -> Result<CertKey, TlsError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(cert_err("ca key"))?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(cert_err("ca"))?;
    let key = KeyPair::generate().map_err(cert_err("leaf key"))?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    for o in orgs {
        dn.push(DnType::OrganizationName, *o);
    }
    p.distinguished_name = dn;
    p.subject_alt_names = sans
        .iter()
        .map(|s| match s.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => s.clone().try_into().map(SanType::DnsName),
        })
        .collect::<Result<_, _>>()
        .map_err(cert_err("san"))?;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    p.extended_key_usages =
        vec![if server { ExtendedKeyUsagePurpose::ServerAuth } else { ExtendedKeyUsagePurpose::ClientAuth }];
    p.use_authority_key_identifier_extension = true;
    p.not_before = now() - Duration::hours(1);
    p.not_after = now() + Duration::days(days);
    let cert = p.signed_by(&key, &issuer).map_err(cert_err("leaf"))?;
    Ok(CertKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// Signs a client certificate for `cn` in `orgs` with the cluster CA.
pub fn issue_client_cert(ca: &CertKey, cn: &str, orgs: &[&str]) -> Result<CertKey, TlsError> {
    issue_leaf(ca, cn, orgs, &[], false, LEAF_DAYS)
}

/// Signs the admin client certificate (`system:admin` in `system:masters`).
fn issue_admin_cert(ca: &CertKey) -> Result<CertKey, TlsError> {
    issue_client_cert(ca, "system:admin", &[super::auth::MASTERS])
}

/// Signs a client certificate valid for `days` from now; negative is already expired
/// (for tests of expiry).
pub fn issue_client_cert_for_days(ca: &CertKey, cn: &str, orgs: &[&str], days: i64) -> Result<CertKey, TlsError> {
    issue_leaf(ca, cn, orgs, &[], false, days)
}

/// Creates a throwaway CA, for tests that need a certificate the cluster does not trust.
pub fn foreign_ca() -> Result<CertKey, TlsError> {
    new_ca()
}

fn serving_sans(spec: &IdentitySpec) -> Vec<String> {
    let mut s: Vec<String> = vec![
        "127.0.0.1".into(),
        "::1".into(),
        "localhost".into(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        format!("kubernetes.default.svc.{}", spec.cluster_domain),
        spec.service_ip.to_string(),
    ];
    if let Ok(h) = hostname::get() {
        s.push(h.to_string_lossy().to_lowercase());
    }
    s.extend(spec.node_ips.iter().map(|i| i.to_string()));
    s.extend(spec.tls_sans.iter().cloned());
    s.sort();
    s.dedup();
    s
}

/// The SHA-256 of the CA PEM, hex, as used in `K10` tokens.
pub fn ca_hash(ca_pem: &str) -> String {
    sha2::Sha256::digest(ca_pem.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

impl Identity {
    /// Loads the identity from `spec.server_dir`, creating or renewing what is missing
    /// or about to expire.
    pub fn load_or_create(spec: &IdentitySpec) -> Result<Identity, TlsError> {
        let dir = spec.server_dir.join("tls");
        let ca = match read_pair(&dir, "server-ca")? {
            Some(ca) => ca,
            None => {
                let ca = new_ca()?;
                write_pair(&dir, "server-ca", &ca)?;
                ca
            }
        };
        let sans = serving_sans(spec);
        let serving = match read_pair(&dir, "serving-kube-apiserver")? {
            Some(s) if !needs_renewal(&s.cert_pem, Some(&sans)) => s,
            _ => {
                let s = issue_leaf(&ca, "kube-apiserver", &[], &sans, true, LEAF_DAYS)?;
                write_pair(&dir, "serving-kube-apiserver", &s)?;
                s
            }
        };
        let admin = match read_pair(&dir, "client-admin")? {
            Some(a) if !needs_renewal(&a.cert_pem, None) => a,
            _ => {
                let a = issue_admin_cert(&ca)?;
                write_pair(&dir, "client-admin", &a)?;
                a
            }
        };
        let token_path = spec.server_dir.join("token");
        let secret = match &spec.token {
            Some(t) => t.rsplit("::server:").next().unwrap_or(t).to_string(),
            None => match std::fs::read_to_string(&token_path) {
                Ok(t) => t.trim().rsplit("::server:").next().unwrap_or("").to_string(),
                Err(_) => {
                    use rand::Rng;
                    let mut b = [0u8; 16];
                    rand::rng().fill(&mut b);
                    b.iter().map(|x| format!("{x:02x}")).collect()
                }
            },
        };
        let token = format!("K10{}::server:{}", ca_hash(&ca.cert_pem), secret);
        if std::fs::read_to_string(&token_path).ok().as_deref().map(str::trim) != Some(token.as_str()) {
            write_private(&token_path, &format!("{token}\n"), 0o600)?;
        }
        Ok(Identity { ca, serving, admin, token })
    }

    /// The admin kubeconfig pointing at `server`.
    pub fn admin_kubeconfig(&self, server: &str) -> String {
        kubeconfig(server, &self.ca.cert_pem, &self.admin)
    }

    /// The rustls server configuration: the serving chain, HTTP/2 and HTTP/1.1, and
    /// client certificates requested but checked later (see [`ClientCerts`]).
    pub fn server_config(&self) -> Result<ServerTls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let serving = Arc::new(ServingCert { current: std::sync::RwLock::new(self.certified()?) });
        let client_certs = Arc::new(ClientCerts::new(&self.ca.cert_pem, provider.clone())?);
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Cert { what: "tls versions", msg: e.to_string() })?
            .with_client_cert_verifier(client_certs.clone())
            .with_cert_resolver(serving.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok((Arc::new(cfg), client_certs, serving))
    }

    /// The serving chain (leaf, CA) and key, for rustls.
    fn certified(&self) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
        let mut chain = pem_certs(&self.serving.cert_pem)?;
        chain.extend(pem_certs(&self.ca.cert_pem)?);
        let key = PrivateKeyDer::from_pem_slice(self.serving.key_pem.as_bytes())
            .map_err(|e| TlsError::Cert { what: "serving key", msg: e.to_string() })?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| TlsError::Cert { what: "serving key", msg: e.to_string() })?;
        Ok(Arc::new(rustls::sign::CertifiedKey::new(chain, signer)))
    }
}

/// The API server's TLS: the rustls configuration, the client-certificate checker, and
/// the swappable serving certificate.
pub type ServerTls = (Arc<rustls::ServerConfig>, Arc<ClientCerts>, Arc<ServingCert>);

/// The API's serving certificate, swappable while the server runs: new connections
/// get the one set last (`rk certificate rotate`, or renewal before expiry).
pub struct ServingCert {
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServingCert")
    }
}

impl ServingCert {
    /// Serves `id`'s certificate from now on.
    pub fn set(&self, id: &Identity) -> Result<(), TlsError> {
        let c = id.certified()?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = c;
        Ok(())
    }
}

impl rustls::server::ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// One certificate rk keeps, as `rk certificate check` shows it.
#[derive(Clone, Debug)]
pub struct CertStatus {
    /// The file (a PEM file, or a kubeconfig holding a client certificate).
    pub file: PathBuf,
    /// `CN=...,O=...`.
    pub subject: String,
    /// `CertSign`, `ServerAuth`, `ClientAuth`.
    pub usages: String,
    /// Expiry, Unix seconds.
    pub not_after: i64,
    /// `OK`, `WARNING` (within the renewal window), `EXPIRED`, or `UNREADABLE`.
    pub status: &'static str,
}

fn describe(file: &Path, pem: &str) -> CertStatus {
    let parsed = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok().and_then(|(_, p)| {
        let c = p.parse_x509().ok()?;
        let mut subject = Vec::new();
        for cn in c.subject().iter_common_name().filter_map(|a| a.as_str().ok()) {
            subject.push(format!("CN={cn}"));
        }
        for o in c.subject().iter_organization().filter_map(|a| a.as_str().ok()) {
            subject.push(format!("O={o}"));
        }
        let mut usages = Vec::new();
        if c.is_ca() {
            usages.push("CertSign");
        }
        if let Ok(Some(eku)) = c.extended_key_usage() {
            if eku.value.server_auth {
                usages.push("ServerAuth");
            }
            if eku.value.client_auth {
                usages.push("ClientAuth");
            }
        }
        Some((subject.join(","), usages.join(","), c.validity().not_after.timestamp()))
    });
    match parsed {
        Some((subject, usages, not_after)) => {
            let left = not_after - now().unix_timestamp();
            let status = if left <= 0 {
                "EXPIRED"
            } else if left < RENEW_BEFORE.whole_seconds() {
                "WARNING"
            } else {
                "OK"
            };
            CertStatus { file: file.to_path_buf(), subject, usages, not_after, status }
        }
        None => CertStatus {
            file: file.to_path_buf(),
            subject: String::new(),
            usages: String::new(),
            not_after: 0,
            status: "UNREADABLE",
        },
    }
}

/// The client certificate (PEM) inside a kubeconfig's text.
pub fn kubeconfig_cert(text: &str) -> Option<String> {
    let v: serde_norway::Value = serde_norway::from_str(text).ok()?;
    let data = v.get("users")?.get(0)?.get("user")?.get("client-certificate-data")?.as_str()?;
    let pem = base64::engine::general_purpose::STANDARD.decode(data).ok()?;
    String::from_utf8(pem).ok()
}

/// Whether a kubeconfig's client certificate should be renewed now: unreadable,
/// expired, or within the renewal window.
pub fn kubeconfig_needs_renewal(text: &str) -> bool {
    kubeconfig_cert(text).is_none_or(|pem| needs_renewal(&pem, None))
}

/// The agent's kubeconfigs under a data dir (they hold its client certificates).
fn agent_kubeconfigs(data_dir: &Path) -> [PathBuf; 2] {
    let agent = data_dir.join("agent");
    [agent.join("kubeconfig.yaml"), agent.join("network-kubeconfig.yaml")]
}

/// Every certificate under `data_dir`: the server's (`server/tls/*.crt`) and the
/// agent's client certificates.
pub fn check_all(data_dir: &Path) -> Vec<CertStatus> {
    let mut out = Vec::new();
    let tls = data_dir.join("server").join("tls");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&tls)
        .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "crt")).collect())
        .unwrap_or_default();
    files.sort();
    for f in files {
        if let Ok(pem) = std::fs::read_to_string(&f) {
            out.push(describe(&f, &pem));
        }
    }
    for f in agent_kubeconfigs(data_dir) {
        if let Ok(text) = std::fs::read_to_string(&f) {
            out.push(describe(&f, &kubeconfig_cert(&text).unwrap_or_default()));
        }
    }
    out
}

/// Renews every leaf certificate under `data_dir` with the same subject and SANs (the
/// CA stays, so everything it signed stays trusted): the server's are reissued from
/// its CA, after the old files are copied to `server/tls-<unix time>/`; the agent's
/// kubeconfigs are moved aside, so it fetches new credentials at its next start.
/// Returns one line per change.
pub fn rotate(data_dir: &Path) -> Result<Vec<String>, TlsError> {
    let mut done = Vec::new();
    let stamp = now().unix_timestamp();
    let tls = data_dir.join("server").join("tls");
    if let Some(ca) = read_pair(&tls, "server-ca")? {
        let backup = data_dir.join("server").join(format!("tls-{stamp}"));
        std::fs::create_dir_all(&backup).map_err(io_err("create", &backup))?;
        for e in std::fs::read_dir(&tls).map_err(io_err("read", &tls))?.flatten() {
            let to = backup.join(e.file_name());
            std::fs::copy(e.path(), &to).map_err(io_err("back up to", &to))?;
        }
        done.push(format!("backed up {} to {}", tls.display(), backup.display()));
        if let Some(old) = read_pair(&tls, "serving-kube-apiserver")? {
            let sans = inspect(&old.cert_pem).map(|(_, s)| s).unwrap_or_default();
            let s = issue_leaf(&ca, "kube-apiserver", &[], &sans, true, LEAF_DAYS)?;
            write_pair(&tls, "serving-kube-apiserver", &s)?;
            done.push("renewed the API serving certificate (kube-apiserver)".into());
        }
        let a = issue_admin_cert(&ca)?;
        write_pair(&tls, "client-admin", &a)?;
        done.push("renewed the admin client certificate (system:admin)".into());
    }
    for f in agent_kubeconfigs(data_dir) {
        if f.exists() {
            let aside = f.with_extension(format!("yaml.{stamp}.bak"));
            std::fs::rename(&f, &aside).map_err(io_err("move aside", &f))?;
            done.push(format!("moved {} aside: the agent gets a new certificate at its next start", f.display()));
        }
    }
    Ok(done)
}

use rustls::pki_types::pem::PemObject;

fn pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Cert { what: "pem", msg: e.to_string() })
}

/// A kubeconfig for `user` at `server`, trusting `ca_pem`.
pub fn kubeconfig(server: &str, ca_pem: &str, user: &CertKey) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: {}\n  name: default\ncontexts:\n- context:\n    cluster: default\n    user: default\n  name: default\ncurrent-context: default\npreferences: {{}}\nusers:\n- name: default\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
        b64(ca_pem),
        server,
        b64(&user.cert_pem),
        b64(&user.key_pem)
    )
}

/// Writes a kubeconfig file with `mode`, atomically.
pub fn write_kubeconfig(path: &Path, contents: &str, mode: u32) -> Result<(), TlsError> {
    write_private(path, contents, mode)
}

/// Client-certificate authentication, split in two as the Kubernetes API server does:
/// the TLS handshake asks for a certificate and checks the client holds its key, but
/// accepts any issuer, so that a certificate from another CA becomes a 401 from the
/// API rather than a handshake failure; [`ClientCerts::authenticate`] then checks the
/// chain against the cluster CA.
pub struct ClientCerts {
    inner: Arc<dyn ClientCertVerifier>,
}

impl fmt::Debug for ClientCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientCerts")
    }
}

impl ClientCerts {
    fn new(ca_pem: &str, provider: Arc<rustls::crypto::CryptoProvider>) -> Result<ClientCerts, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for c in pem_certs(ca_pem)? {
            roots.add(c).map_err(|e| TlsError::Cert { what: "ca", msg: e.to_string() })?;
        }
        let inner = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Cert { what: "client verifier", msg: e.to_string() })?;
        Ok(ClientCerts { inner })
    }

    /// The user named by a verified client certificate chain (subject CN, and O as
    /// groups), or None.
    pub fn authenticate(&self, chain: &[CertificateDer<'_>]) -> Option<User> {
        let (leaf, rest) = chain.split_first()?;
        self.inner.verify_client_cert(leaf, rest, UnixTime::now()).ok()?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
        let subject = cert.subject();
        let name = subject.iter_common_name().next()?.as_str().ok()?.to_string();
        let groups: Vec<&str> = subject.iter_organization().filter_map(|o| o.as_str().ok()).collect();
        Some(User::new(name, &groups))
    }
}

impl ClientCertVerifier for ClientCerts {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // The chain is judged per request by `authenticate`; see the type's docs.
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &Path) -> IdentitySpec {
        IdentitySpec {
            server_dir: dir.to_path_buf(),
            tls_sans: vec!["rk.example.com".into()],
            node_ips: vec![],
            service_ip: "10.43.0.1".parse().unwrap(),
            cluster_domain: "cluster.local".into(),
            token: None,
        }
    }

    #[test]
    fn identity_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(&spec(dir.path())).unwrap();
        let b = Identity::load_or_create(&spec(dir.path())).unwrap();
        assert_eq!(a.ca.cert_pem, b.ca.cert_pem);
        assert_eq!(a.serving.cert_pem, b.serving.cert_pem);
        assert_eq!(a.token, b.token);
        assert!(a.token.starts_with(&format!("K10{}::server:", ca_hash(&a.ca.cert_pem))));
        let (_, sans) = inspect(&a.serving.cert_pem).unwrap();
        for want in ["127.0.0.1", "10.43.0.1", "kubernetes.default.svc.cluster.local", "rk.example.com", "localhost"] {
            assert!(sans.iter().any(|s| s == want), "serving cert lacks SAN {want}: {sans:?}");
        }
        // A new SAN reissues the serving certificate under the same CA.
        let mut s2 = spec(dir.path());
        s2.tls_sans.push("10.9.9.9".into());
        let c = Identity::load_or_create(&s2).unwrap();
        assert_eq!(c.ca.cert_pem, a.ca.cert_pem);
        assert_ne!(c.serving.cert_pem, a.serving.cert_pem);
    }

    #[test]
    fn leaf_certificates_near_expiry_are_renewed() {
        let ca = new_ca().unwrap();
        let soon = issue_leaf(&ca, "x", &[], &["a".into()], true, 30).unwrap();
        assert!(needs_renewal(&soon.cert_pem, None), "30 days left is within the 90-day window");
        let fresh = issue_leaf(&ca, "x", &[], &["a".into()], true, 365).unwrap();
        assert!(!needs_renewal(&fresh.cert_pem, Some(&["a".to_string()])));
        assert!(needs_renewal(&fresh.cert_pem, Some(&["a".to_string(), "b".to_string()])), "SAN change reissues");
        // On disk: an admin certificate about to expire is replaced at start.
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::load_or_create(&spec(dir.path())).unwrap();
        let short = issue_leaf(&id.ca, "system:admin", &["system:masters"], &[], false, 10).unwrap();
        write_pair(&dir.path().join("tls"), "client-admin", &short).unwrap();
        let again = Identity::load_or_create(&spec(dir.path())).unwrap();
        assert_ne!(again.admin.cert_pem, short.cert_pem);
        assert_eq!(again.ca.cert_pem, id.ca.cert_pem);
    }

    #[test]
    fn client_certs_from_the_cluster_ca_authenticate_others_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::load_or_create(&spec(dir.path())).unwrap();
        let (_, certs, _) = id.server_config().unwrap();
        let admin = pem_certs(&id.admin.cert_pem).unwrap();
        assert_eq!(certs.authenticate(&admin), Some(User::new("system:admin", &["system:masters"])));
        let other = foreign_ca().unwrap();
        let stranger = issue_client_cert(&other, "system:admin", &["system:masters"]).unwrap();
        assert_eq!(certs.authenticate(&pem_certs(&stranger.cert_pem).unwrap()), None);
    }
}
