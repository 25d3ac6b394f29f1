//! Registry credentials for image pulls, from the pod's imagePullSecrets
//! (`kubernetes.io/dockerconfigjson` and `kubernetes.io/dockercfg` Secrets), matched
//! to the image as the kubelet's keyring matches them (`credentialprovider`): a key is
//! a registry host (with `*` globs per label and an optional port) and an optional
//! path prefix; Docker Hub images (`busybox`, `docker.io/...`) use the
//! `index.docker.io` key (`https://index.docker.io/v1/`).

use base64::Engine;
use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::ResourceExt;
use kube::api::Api;
use serde_json::Value;

const DOCKER_HUB: &str = "index.docker.io";

/// A key as the keyring stores it: scheme and Docker Hub's `/v1/` dropped.
fn normalize_key(key: &str) -> String {
    let k = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    let k = k.trim_end_matches('/');
    match k {
        "index.docker.io/v1" | "index.docker.io" | "docker.io" | "registry-1.docker.io" => DOCKER_HUB.into(),
        _ => k.to_string(),
    }
}

/// `host[:port]` and `/path` of a schemeless reference.
fn split(s: &str) -> (&str, &str) {
    match s.find('/') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    }
}

/// `*` and `?` globs within one label (Go's `filepath.Match` for these).
fn glob(pattern: &str, s: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), s.chars().collect());
    fn go(p: &[char], t: &[char]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some('*') => (0..=t.len()).any(|i| go(&p[1..], &t[i..])),
            Some('?') => !t.is_empty() && go(&p[1..], &t[1..]),
            Some(c) => t.first() == Some(c) && go(&p[1..], &t[1..]),
        }
    }
    go(&p, &t)
}

/// Whether keyring key `key` (normalized) covers repository `repo` (normalized, no tag).
fn matches(key: &str, repo: &str) -> bool {
    let (kh, kp) = split(key);
    let (rh, rp) = split(repo);
    let (khost, kport) = kh.split_once(':').unwrap_or((kh, ""));
    let (rhost, rport) = rh.split_once(':').unwrap_or((rh, ""));
    let (kl, rl): (Vec<&str>, Vec<&str>) = (khost.split('.').collect(), rhost.split('.').collect());
    kport == rport && kl.len() == rl.len() && kl.iter().zip(&rl).all(|(k, r)| glob(k, r)) && rp.starts_with(kp)
}

/// The repository an image pulls from, as the keyring looks it up: registry host
/// (Docker Hub as `index.docker.io`) and path, without tag or digest.
pub fn repository(image: &str) -> String {
    let full = crate::agent::runtime::image::normalize_name(image);
    let no_digest = full.split('@').next().unwrap_or(&full);
    let (host, path) = split(no_digest);
    let path = match path.rfind(':') {
        Some(i) if !path[i..].contains('/') => &path[..i],
        _ => path,
    };
    let host = if host == "docker.io" { DOCKER_HUB } else { host };
    format!("{host}{path}")
}

/// The credentials a Secret holds, by normalized key.
pub fn from_secret(secret: &Secret) -> Vec<(String, cri::AuthConfig)> {
    let data = secret.data.clone().unwrap_or_default();
    let (doc, nested) = match (data.get(".dockerconfigjson"), data.get(".dockercfg")) {
        (Some(b), _) => (serde_json::from_slice::<Value>(&b.0).ok(), true),
        (None, Some(b)) => (serde_json::from_slice::<Value>(&b.0).ok(), false),
        _ => (None, false),
    };
    let Some(doc) = doc else { return vec![] };
    let auths = if nested { &doc["auths"] } else { &doc };
    let mut out = Vec::new();
    for (key, e) in auths.as_object().into_iter().flatten() {
        let s = |f: &str| e[f].as_str().unwrap_or("").to_string();
        let (mut username, mut password, auth) = (s("username"), s("password"), s("auth"));
        if username.is_empty()
            && let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(auth.trim())
            && let Some((u, p)) = String::from_utf8_lossy(&raw).split_once(':')
        {
            (username, password) = (u.to_string(), p.to_string());
        }
        let cfg = cri::AuthConfig {
            username,
            password,
            auth,
            identity_token: s("identitytoken"),
            registry_token: s("registrytoken"),
            ..Default::default()
        };
        out.push((normalize_key(key), cfg));
    }
    out
}

/// The credentials to try, in order, for `image` out of `(key, credentials)` pairs:
/// those whose key covers the repository, else (Docker Hub images) Docker Hub's.
pub fn lookup(creds: &[(String, cri::AuthConfig)], image: &str) -> Vec<cri::AuthConfig> {
    let repo = repository(image);
    let hit: Vec<cri::AuthConfig> = creds.iter().filter(|(k, _)| matches(k, &repo)).map(|(_, c)| c.clone()).collect();
    if !hit.is_empty() {
        return hit;
    }
    if repo.starts_with(&format!("{DOCKER_HUB}/")) {
        return creds.iter().filter(|(k, _)| k == DOCKER_HUB).map(|(_, c)| c.clone()).collect();
    }
    vec![]
}

/// The pod's pull secrets' credentials, and the names of those that could not be read.
pub async fn for_pod(client: &kube::Client, pod: &Pod) -> (Vec<(String, cri::AuthConfig)>, Vec<String>) {
    let names: Vec<String> = pod
        .spec
        .iter()
        .flat_map(|s| s.image_pull_secrets.iter().flatten())
        .map(|r| r.name.clone())
        .filter(|n| !n.is_empty())
        .collect();
    let api: Api<Secret> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let (mut creds, mut missing) = (Vec::new(), Vec::new());
    for n in names {
        match api.get(&n).await {
            Ok(s) => creds.extend(from_secret(&s)),
            Err(_) => missing.push(n),
        }
    }
    (creds, missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(key: &str, doc: Value) -> Secret {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s"},
            "data": {key: base64::engine::general_purpose::STANDARD.encode(doc.to_string())},
        }))
        .unwrap()
    }

    #[test]
    fn repositories_are_named_as_the_keyring_names_them() {
        assert_eq!(repository("busybox"), "index.docker.io/library/busybox");
        assert_eq!(repository("docker.io/me/app:1"), "index.docker.io/me/app");
        assert_eq!(repository("127.0.0.1:5000/rk/hello:1"), "127.0.0.1:5000/rk/hello");
        assert_eq!(repository("reg.example.com/a/b@sha256:abc"), "reg.example.com/a/b");
    }

    #[test]
    fn keys_match_by_host_glob_port_and_path() {
        assert!(matches("reg.example.com", "reg.example.com/a/b"));
        assert!(matches("*.example.com", "reg.example.com/a"));
        assert!(!matches("*.example.com", "example.com/a"));
        assert!(!matches("reg.example.com", "reg.example.com:5000/a"));
        assert!(matches("reg.example.com:5000/team", "reg.example.com:5000/team/app"));
        assert!(!matches("reg.example.com/team", "reg.example.com/other/app"));
    }

    #[test]
    fn secrets_give_credentials_for_their_registries() {
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        let s = secret(
            ".dockerconfigjson",
            serde_json::json!({"auths": {
                "https://index.docker.io/v1/": {"auth": auth},
                "127.0.0.1:5000": {"username": "bob", "password": "pw"},
            }}),
        );
        let creds = from_secret(&s);
        let hub = lookup(&creds, "busybox:1.35");
        assert_eq!((hub.len(), hub[0].username.as_str(), hub[0].password.as_str()), (1, "alice", "s3cret"));
        let local = lookup(&creds, "127.0.0.1:5000/rk/hello:1");
        assert_eq!((local.len(), local[0].username.as_str()), (1, "bob"));
        assert!(lookup(&creds, "quay.io/x/y").is_empty());
        let old = secret(".dockercfg", serde_json::json!({"quay.io": {"username": "q", "password": "p"}}));
        assert_eq!(lookup(&from_secret(&old), "quay.io/x/y")[0].username, "q");
    }
}
