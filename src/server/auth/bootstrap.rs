//! Bootstrap tokens, as Kubernetes has them: `<id>.<secret>` (6 and 16 characters of
//! `[a-z0-9]`), each a Secret `kube-system/bootstrap-token-<id>` of type
//! `bootstrap.kubernetes.io/token` with an optional expiration. Such a token
//! authenticates as `system:bootstrap:<id>` in `system:bootstrappers`, which RBAC
//! gives nothing beyond discovery; rk accepts it where agents join (`rk agent
//! --token K10<CA hash>::<id>.<secret>`), so a short-lived token can be handed out
//! instead of the server's own.

use base64::Engine;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

/// Where bootstrap token Secrets live.
pub const NAMESPACE: &str = "kube-system";
/// Their Secret type.
pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
/// The group every bootstrap token user is in.
pub const GROUP: &str = "system:bootstrappers";

/// The Secret name of a token id.
pub fn secret_name(id: &str) -> String {
    format!("bootstrap-token-{id}")
}

fn token_chars(s: &str, n: usize) -> bool {
    s.len() == n && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Splits `<id>.<secret>` (a `K10<hash>::` prefix allowed), or None if it is not one.
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let t = token.rsplit_once("::").map(|(_, t)| t).unwrap_or(token);
    let (id, secret) = t.split_once('.')?;
    (token_chars(id, 6) && token_chars(secret, 16)).then_some((id, secret))
}

/// A new random token, `<id>.<secret>`.
pub fn generate() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let mut part = |n: usize| -> String { (0..n).map(|_| CHARS[rng.random_range(0..CHARS.len())] as char).collect() };
    let id = part(6);
    format!("{id}.{}", part(16))
}

fn data<'a>(secret: &'a Value, key: &str) -> Option<String> {
    let v = secret["data"][key].as_str()?;
    let b = base64::engine::general_purpose::STANDARD.decode(v).ok()?;
    String::from_utf8(b).ok()
}

/// When the token of `secret` expires, if it does.
pub fn expiration(secret: &Value) -> Option<DateTime<Utc>> {
    data(secret, "expiration").and_then(|e| DateTime::parse_from_rfc3339(&e).ok()).map(|t| t.with_timezone(&Utc))
}

/// Checks `<id>.<secret>` against its Secret as Kubernetes's bootstrap authenticator
/// does; the user's groups on success.
pub fn check(stored: Option<&Value>, id: &str, secret: &str, now: DateTime<Utc>) -> Result<Vec<String>, String> {
    let s = stored.ok_or_else(|| format!("no bootstrap token with id {id:?}"))?;
    if s["type"] != SECRET_TYPE {
        return Err(format!("secret {} is not of type {SECRET_TYPE}", secret_name(id)));
    }
    if s["metadata"]["deletionTimestamp"].is_string() {
        return Err(format!("bootstrap token {id:?} is being deleted"));
    }
    let want = data(s, "token-secret").unwrap_or_default();
    let same = want.len() == secret.len() && want.bytes().zip(secret.bytes()).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0;
    if !same || data(s, "token-id").is_some_and(|t| t != id) {
        return Err(format!("bootstrap token {id:?} does not match"));
    }
    if expiration(s).is_some_and(|e| e <= now) {
        return Err(format!("bootstrap token {id:?} has expired"));
    }
    if data(s, "usage-bootstrap-authentication").as_deref() != Some("true") {
        return Err(format!("bootstrap token {id:?} is not for authentication"));
    }
    let mut groups = vec![GROUP.to_string()];
    for g in data(s, "auth-extra-groups").unwrap_or_default().split(',').map(str::trim).filter(|g| !g.is_empty()) {
        if !g.starts_with("system:bootstrappers:") {
            return Err(format!("bootstrap token {id:?} has an extra group outside system:bootstrappers: {g:?}"));
        }
        groups.push(g.to_string());
    }
    Ok(groups)
}

/// The Secret of a new token (`ttl` None: it never expires).
pub fn secret(
    token: &str,
    ttl: Option<std::time::Duration>,
    description: &str,
    groups: &[String],
    now: DateTime<Utc>,
) -> Value {
    let (id, secret) = parse(token).expect("a bootstrap token");
    let b = |s: &str| json!(base64::engine::general_purpose::STANDARD.encode(s));
    let mut d = json!({
        "token-id": b(id),
        "token-secret": b(secret),
        "usage-bootstrap-authentication": b("true"),
        "usage-bootstrap-signing": b("true"),
    });
    if let Some(ttl) = ttl {
        let exp = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::days(1));
        d["expiration"] = b(&exp.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    }
    if !description.is_empty() {
        d["description"] = b(description);
    }
    if !groups.is_empty() {
        d["auth-extra-groups"] = b(&groups.join(","));
    }
    json!({"apiVersion": "v1", "kind": "Secret", "type": SECRET_TYPE,
           "metadata": {"name": secret_name(id), "namespace": NAMESPACE}, "data": d})
}

/// A token's row for `rk token list`: token, TTL, expires, usages, description, groups.
pub fn row(secret: &Value, now: DateTime<Utc>) -> Option<[String; 6]> {
    let id = data(secret, "token-id")?;
    let (ttl, expires) = match expiration(secret) {
        None => ("<forever>".to_string(), "<never>".to_string()),
        Some(e) if e <= now => ("<invalid>".to_string(), e.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        Some(e) => {
            let left = (e - now).num_seconds();
            let ttl = if left >= 3600 { format!("{}h", left / 3600) } else { format!("{}m", left.max(60) / 60) };
            (ttl, e.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        }
    };
    let usages: Vec<&str> = ["authentication", "signing"]
        .into_iter()
        .filter(|u| data(secret, &format!("usage-bootstrap-{u}")).as_deref() == Some("true"))
        .collect();
    let or_none = |s: Option<String>| s.filter(|s| !s.is_empty()).unwrap_or_else(|| "<none>".into());
    Some([
        format!("{id}.<secret>"),
        ttl,
        expires,
        usages.join(","),
        or_none(data(secret, "description")),
        or_none(data(secret, "auth-extra-groups")),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_and_check_as_kubernetes_does() {
        // Whole seconds, as expirations are stored.
        let now = DateTime::parse_from_rfc3339("2026-11-30T12:00:00Z").unwrap().with_timezone(&Utc);
        let t = generate();
        let (id, sec) = parse(&t).unwrap();
        assert_eq!(parse(&format!("K10abc::{t}")), Some((id, sec)));
        for bad in ["abc.def", "ABCDEF.0123456789abcdef", "abcdef.0123456789abcde", "abcdef0123456789abcdef", ""] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        let groups = vec!["system:bootstrappers:rk:agents".to_string()];
        let s = secret(&t, Some(std::time::Duration::from_secs(3600)), "for n2", &groups, now);
        assert_eq!(s["metadata"]["name"], format!("bootstrap-token-{id}"));
        assert_eq!(check(Some(&s), id, sec, now).unwrap(), vec![GROUP.to_string(), groups[0].clone()]);
        assert!(check(Some(&s), id, "0000000000000000", now).unwrap_err().contains("does not match"));
        assert!(check(Some(&s), id, sec, now + chrono::Duration::hours(2)).unwrap_err().contains("expired"));
        assert!(check(None, id, sec, now).is_err());
        let mut wrong = s.clone();
        wrong["type"] = json!("Opaque");
        assert!(check(Some(&wrong), id, sec, now).is_err());
        let forever = secret(&t, None, "", &[], now);
        assert!(check(Some(&forever), id, sec, now + chrono::Duration::days(1000)).is_ok());
        let r = row(&s, now).unwrap();
        assert_eq!(r[0], format!("{id}.<secret>"));
        assert_eq!((r[1].as_str(), r[3].as_str(), r[4].as_str()), ("1h", "authentication,signing", "for n2"));
        assert_eq!(row(&forever, now).unwrap()[1], "<forever>");
    }
}
