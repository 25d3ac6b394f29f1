//! Service-account tokens: JWTs (ES256) signed by the server's own key, with the
//! claims Kubernetes puts in them (`kubernetes.io`: namespace, service account, and
//! the pod, secret or node the token is bound to), and the public side of the key as
//! a JWKS for `/openid/v1/jwks`.

use std::path::Path;

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Digest;

/// A reference to an object a token names (`{name, uid}`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjRef {
    /// The object's name.
    pub name: String,
    /// The object's UID.
    pub uid: String,
}

/// The `kubernetes.io` claim.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeClaims {
    /// The service account's namespace.
    pub namespace: String,
    /// The service account.
    pub serviceaccount: ObjRef,
    /// The pod the token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjRef>,
    /// The secret the token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<ObjRef>,
    /// The node the token is bound to (or the node of its pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<ObjRef>,
}

/// The claims of a service-account token.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Audiences.
    pub aud: Vec<String>,
    /// Expiry (seconds since the epoch); None for tokens bound to a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// Issued at.
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Issuer.
    pub iss: String,
    /// A unique ID.
    pub jti: String,
    /// `system:serviceaccount:<ns>:<name>`.
    pub sub: String,
    /// What Kubernetes adds.
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubeClaims,
}

/// The signing key and what verifies its tokens.
pub struct Signer {
    enc: EncodingKey,
    dec: DecodingKey,
    kid: String,
    x: String,
    y: String,
    /// The issuer (`iss`), also the default audience.
    pub issuer: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("kid", &self.kid).field("issuer", &self.issuer).finish()
    }
}

/// Why a token was not accepted (never shown to the client, which gets a plain 401).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT of ours, a bad signature, expired, or the wrong issuer.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// For none of the API's audiences.
    #[error("token audiences {0:?} do not include the API's")]
    Audience(Vec<String>),
}

impl Signer {
    /// Loads the key at `path` (PKCS#8 PEM), or makes one there (mode 0600).
    pub fn load_or_create(path: &Path, issuer: &str) -> Result<Signer, String> {
        let pem = match std::fs::read_to_string(path) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let kp = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
                let pem = kp.serialize_pem();
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
                }
                crate::server::tls::write_private(path, &pem, 0o600).map_err(|e| e.to_string())?;
                pem
            }
            Err(e) => return Err(format!("reading {}: {e}", path.display())),
        };
        Signer::from_pem(&pem, issuer)
    }

    fn from_pem(pem: &str, issuer: &str) -> Result<Signer, String> {
        let kp = rcgen::KeyPair::from_pem(pem).map_err(|e| format!("the service-account key: {e}"))?;
        if kp.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err("the service-account key is not an ECDSA P-256 key".into());
        }
        let raw = kp.public_key_raw();
        if raw.len() != 65 || raw[0] != 4 {
            return Err("the service-account key's public point is not uncompressed P-256".into());
        }
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        Ok(Signer {
            enc: EncodingKey::from_ec_der(&kp.serialize_der()),
            dec: DecodingKey::from_ec_der(raw),
            kid: b64.encode(sha2::Sha256::digest(raw)),
            x: b64.encode(&raw[1..33]),
            y: b64.encode(&raw[33..]),
            issuer: issuer.to_string(),
        })
    }

    /// Signs `claims`.
    pub fn sign(&self, claims: &Claims) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &self.enc).expect("ES256 signing with a valid key does not fail")
    }

    /// The claims of a token this key signed, checked for signature, issuer, expiry
    /// and audience (one of `audiences`).
    pub fn verify(&self, token: &str, audiences: &[String]) -> Result<Claims, TokenError> {
        let mut v = Validation::new(Algorithm::ES256);
        v.set_issuer(&[&self.issuer]);
        v.set_required_spec_claims(&["iss", "sub"]);
        v.validate_aud = false;
        v.validate_nbf = true;
        v.leeway = 60;
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.dec, &v).map_err(|e| TokenError::Invalid(e.to_string()))?;
        let c = data.claims;
        if !c.aud.iter().any(|a| audiences.contains(a)) {
            return Err(TokenError::Audience(c.aud));
        }
        Ok(c)
    }

    /// The public key as a JSON Web Key Set.
    pub fn jwks(&self) -> Value {
        json!({"keys": [{"use": "sig", "kty": "EC", "kid": self.kid, "crv": "P-256", "alg": "ES256",
                         "x": self.x, "y": self.y}]})
    }

    /// The OpenID discovery document (`/.well-known/openid-configuration`).
    pub fn openid_configuration(&self) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}/openid/v1/jwks", self.issuer),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }
}

/// Whether `s` looks like a JWT (three base64url parts), so other bearer tokens can
/// be told apart before any signature work.
pub fn looks_like_jwt(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: Option<i64>) -> Claims {
        let now = chrono::Utc::now().timestamp();
        Claims {
            aud: vec!["https://kubernetes.default.svc.cluster.local".into()],
            exp,
            iat: now,
            nbf: now,
            iss: "https://kubernetes.default.svc.cluster.local".into(),
            jti: "j1".into(),
            sub: "system:serviceaccount:default:builder".into(),
            kubernetes: KubeClaims {
                namespace: "default".into(),
                serviceaccount: ObjRef { name: "builder".into(), uid: "u1".into() },
                ..Default::default()
            },
        }
    }

    #[test]
    fn tokens_verify_under_their_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let iss = "https://kubernetes.default.svc.cluster.local";
        let s = Signer::load_or_create(&dir.path().join("sa.key"), iss).unwrap();
        let again = Signer::load_or_create(&dir.path().join("sa.key"), iss).unwrap();
        assert_eq!(s.kid, again.kid, "the key is kept");
        let auds = vec![iss.to_string()];
        let now = chrono::Utc::now().timestamp();
        let c = claims(Some(now + 600));
        let t = s.sign(&c);
        assert!(looks_like_jwt(&t));
        assert_eq!(again.verify(&t, &auds).unwrap(), c);
        assert!(matches!(s.verify(&t, &["other".to_string()]), Err(TokenError::Audience(_))));
        assert!(s.verify(&s.sign(&claims(Some(now - 3600))), &auds).is_err(), "expired");
        assert!(s.verify(&s.sign(&claims(None)), &auds).is_ok(), "secret-bound tokens have no expiry");
        let other = Signer::load_or_create(&dir.path().join("other.key"), iss).unwrap();
        assert!(other.verify(&t, &auds).is_err(), "another key's token");
        let mut parts: Vec<String> = t.split('.').map(String::from).collect();
        parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&claims(Some(now + 99999))).unwrap());
        assert!(s.verify(&parts.join("."), &auds).is_err(), "a changed payload");
        assert!(!looks_like_jwt("K10abc::server:def"));
        assert_eq!(s.jwks()["keys"][0]["kid"], json!(s.kid));
    }
}
