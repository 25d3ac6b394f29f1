//! Secrets encryption at rest (`rk server --secrets-encryption`): Secrets are stored
//! AES-256-GCM encrypted, in Kubernetes's envelope form
//! `k8s:enc:aesgcm:v1:<key name>:<nonce><ciphertext+tag>`, with the keys in
//! `<data-dir>/server/cred/encryption-keys.json` (mode 0600; the first key encrypts,
//! all decrypt). It is a layer over the store, so every read path (get, list, watch)
//! sees plaintext and nothing else changes. `rk secrets-encrypt status|rotate-keys`
//! reports and rotates (a new key, every Secret re-encrypted, the old keys dropped).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::embedded::storage::{Event, KeyValue, ListResult, Rev, Storage, StorageError, WatchStream};

/// Where Secrets live in the store.
pub const SECRETS_PREFIX: &str = "/registry/secrets/";
const ENVELOPE: &str = "k8s:enc:aesgcm:v1:";

/// One key.
#[derive(Clone, Serialize, Deserialize)]
pub struct NamedKey {
    /// Its name, written into each value it encrypts.
    pub name: String,
    /// 32 bytes, base64.
    pub secret: String,
}

/// The key file.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct KeyFile {
    /// The first encrypts; all decrypt.
    pub keys: Vec<NamedKey>,
}

/// The keys in use and whether new writes are encrypted.
pub struct Keys {
    path: PathBuf,
    file: KeyFile,
    /// Whether writes are encrypted (the server flag).
    pub enabled: bool,
}

fn new_key(rng: &SystemRandom) -> Result<NamedKey, String> {
    let mut k = [0u8; 32];
    rng.fill(&mut k).map_err(|_| "no randomness".to_string())?;
    let name = format!("aesgcmkey-{}", chrono::Utc::now().format("%Y%m%d%H%M%S%3f"));
    Ok(NamedKey { name, secret: base64::engine::general_purpose::STANDARD.encode(k) })
}

fn cipher(k: &NamedKey) -> Result<LessSafeKey, String> {
    let raw =
        base64::engine::general_purpose::STANDARD.decode(&k.secret).map_err(|e| format!("key {}: {e}", k.name))?;
    let unbound = UnboundKey::new(&AES_256_GCM, &raw).map_err(|_| format!("key {} is not 32 bytes", k.name))?;
    Ok(LessSafeKey::new(unbound))
}

impl Keys {
    /// The key file at `path`: read if there, made (with one key) if `enabled` and not.
    pub fn load(path: &Path, enabled: bool) -> Result<Keys, String> {
        let file = match std::fs::read_to_string(path) {
            Ok(t) => serde_json::from_str(&t).map_err(|e| format!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => KeyFile::default(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let mut k = Keys { path: path.to_path_buf(), file, enabled };
        if enabled && k.file.keys.is_empty() {
            k.file.keys.push(new_key(&SystemRandom::new())?);
            k.save()?;
        }
        for key in &k.file.keys {
            cipher(key)?;
        }
        Ok(k)
    }

    fn save(&self) -> Result<(), String> {
        if let Some(d) = self.path.parent() {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        let text = serde_json::to_string_pretty(&self.file).expect("json");
        crate::server::tls::write_private(&self.path, &text, 0o600).map_err(|e| e.to_string())
    }

    /// The name of the key new writes use, if writes are encrypted.
    pub fn current(&self) -> Option<&str> {
        self.file.keys.first().filter(|_| self.enabled).map(|k| k.name.as_str())
    }

    /// The key names.
    pub fn names(&self) -> Vec<String> {
        self.file.keys.iter().map(|k| k.name.clone()).collect()
    }

    fn encrypt(&self, plain: &[u8]) -> Result<Bytes, StorageError> {
        let Some(k) = self.file.keys.first().filter(|_| self.enabled) else { return Ok(Bytes::copy_from_slice(plain)) };
        let c = cipher(k).map_err(StorageError::Backend)?;
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| StorageError::Backend("no randomness".into()))?;
        let mut buf = plain.to_vec();
        c.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(k.name.as_bytes()), &mut buf)
            .map_err(|_| StorageError::Backend("encryption failed".into()))?;
        let mut out = format!("{ENVELOPE}{}:", k.name).into_bytes();
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(Bytes::from(out))
    }

    fn decrypt(&self, stored: &Bytes) -> Result<Bytes, StorageError> {
        let Some(rest) = stored.strip_prefix(ENVELOPE.as_bytes()) else { return Ok(stored.clone()) };
        let colon = rest.iter().position(|b| *b == b':').ok_or_else(|| StorageError::Backend("bad envelope".into()))?;
        let name = std::str::from_utf8(&rest[..colon]).map_err(|_| StorageError::Backend("bad key name".into()))?;
        let body = &rest[colon + 1..];
        let k = self
            .file
            .keys
            .iter()
            .find(|k| k.name == name)
            .ok_or_else(|| StorageError::Backend(format!("no encryption key {name:?} to decrypt a Secret")))?;
        if body.len() < NONCE_LEN {
            return Err(StorageError::Backend("bad envelope".into()));
        }
        let (nonce, ct) = body.split_at(NONCE_LEN);
        let mut buf = ct.to_vec();
        let c = cipher(k).map_err(StorageError::Backend)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| StorageError::Backend("bad nonce".into()))?;
        let plain = c
            .open_in_place(nonce, Aad::from(k.name.as_bytes()), &mut buf)
            .map_err(|_| StorageError::Backend(format!("decrypting a Secret with key {name:?} failed")))?;
        Ok(Bytes::copy_from_slice(plain))
    }
}

/// Whether a stored value is encrypted.
pub fn is_encrypted(v: &[u8]) -> bool {
    v.starts_with(ENVELOPE.as_bytes())
}

/// The store with Secrets encrypted.
pub struct EncryptedStore {
    inner: Arc<dyn Storage>,
    keys: Arc<RwLock<Keys>>,
}

fn is_secret(key: &str) -> bool {
    key.starts_with(SECRETS_PREFIX)
}

impl EncryptedStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Storage>, keys: Keys) -> EncryptedStore {
        EncryptedStore { inner, keys: Arc::new(RwLock::new(keys)) }
    }

    fn keys(&self) -> std::sync::RwLockReadGuard<'_, Keys> {
        self.keys.read().unwrap_or_else(|e| e.into_inner())
    }

    fn open(&self, mut kv: KeyValue) -> Result<KeyValue, StorageError> {
        if is_secret(&kv.key) {
            kv.value = self.keys().decrypt(&kv.value)?;
        }
        Ok(kv)
    }

    fn seal(&self, key: &str, value: Bytes) -> Result<Bytes, StorageError> {
        if is_secret(key) { self.keys().encrypt(&value) } else { Ok(value) }
    }

    /// Rewrites every Secret whose stored form is not under the current key (or not
    /// encrypted while encryption is on); returns how many were rewritten.
    pub async fn reencrypt(&self) -> Result<usize, StorageError> {
        let want = self.keys().current().map(|n| format!("{ENVELOPE}{n}:").into_bytes());
        let mut done = 0;
        let mut after: Option<String> = None;
        loop {
            let page = self.inner.list(SECRETS_PREFIX, after.as_deref(), 500, 0).await?;
            for kv in &page.kvs {
                let ok = match &want {
                    Some(w) => kv.value.starts_with(w),
                    None => !is_encrypted(&kv.value),
                };
                if ok {
                    continue;
                }
                let plain = self.keys().decrypt(&kv.value)?;
                let sealed = self.seal(&kv.key, plain)?;
                match self.inner.update(&kv.key, sealed, kv.mod_rev).await {
                    Ok(_) => done += 1,
                    // Written meanwhile, through this layer, so already in the current form.
                    Err(StorageError::Conflict { .. } | StorageError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            if !page.more {
                return Ok(done);
            }
            after = page.kvs.last().map(|kv| kv.key.clone());
        }
    }

    /// A new current key; every Secret re-encrypted with it, then the old keys dropped.
    pub async fn rotate(&self) -> Result<usize, String> {
        {
            let mut k = self.keys.write().unwrap_or_else(|e| e.into_inner());
            if !k.enabled {
                return Err("secrets encryption is disabled (start rk server with --secrets-encryption)".into());
            }
            let key = new_key(&SystemRandom::new())?;
            k.file.keys.insert(0, key);
            k.save()?;
        }
        let n = self.reencrypt().await.map_err(|e| e.to_string())?;
        let mut k = self.keys.write().unwrap_or_else(|e| e.into_inner());
        k.file.keys.truncate(1);
        k.save()?;
        Ok(n)
    }

    /// `rk secrets-encrypt status`: the state, keys and how many Secrets are encrypted.
    pub async fn status(&self) -> Result<serde_json::Value, StorageError> {
        let (mut encrypted, mut plain, mut after) = (0usize, 0usize, None::<String>);
        loop {
            let page = self.inner.list(SECRETS_PREFIX, after.as_deref(), 500, 0).await?;
            for kv in &page.kvs {
                if is_encrypted(&kv.value) { encrypted += 1 } else { plain += 1 }
            }
            if !page.more {
                break;
            }
            after = page.kvs.last().map(|kv| kv.key.clone());
        }
        let k = self.keys();
        Ok(serde_json::json!({
            "enabled": k.enabled, "currentKey": k.current(), "keys": k.names(),
            "encryptedSecrets": encrypted, "plaintextSecrets": plain,
        }))
    }
}

#[async_trait::async_trait]
impl Storage for EncryptedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StorageError> {
        match self.inner.get(key).await? {
            Some(kv) => self.open(kv).map(Some),
            None => Ok(None),
        }
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        rev: Rev,
    ) -> Result<ListResult, StorageError> {
        let mut r = self.inner.list(prefix, start_after, limit, rev).await?;
        if is_secret(prefix) || SECRETS_PREFIX.starts_with(prefix) {
            r.kvs = r.kvs.into_iter().map(|kv| self.open(kv)).collect::<Result<_, _>>()?;
        }
        Ok(r)
    }

    async fn count(&self, prefix: &str) -> Result<usize, StorageError> {
        self.inner.count(prefix).await
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<Rev, StorageError> {
        let v = self.seal(key, value)?;
        self.inner.create(key, v).await
    }

    async fn update(&self, key: &str, value: Bytes, expected: Rev) -> Result<Rev, StorageError> {
        let v = self.seal(key, value)?;
        self.inner.update(key, v, expected).await
    }

    async fn delete(&self, key: &str, expected: Option<Rev>) -> Result<(Rev, KeyValue), StorageError> {
        let (rev, kv) = self.inner.delete(key, expected).await?;
        Ok((rev, self.open(kv)?))
    }

    fn watch(&self, prefix: &str, after: Rev) -> Result<WatchStream, StorageError> {
        let s = self.inner.watch(prefix, after)?;
        if !(is_secret(prefix) || SECRETS_PREFIX.starts_with(prefix)) {
            return Ok(s);
        }
        let keys = self.keys.clone();
        Ok(Box::pin(s.map(move |ev| {
            let ev = ev?;
            if !is_secret(&ev.kv.key) {
                return Ok(ev);
            }
            let k = keys.read().unwrap_or_else(|e| e.into_inner());
            let mut out = Event { kind: ev.kind, kv: ev.kv.clone(), prev: ev.prev.clone() };
            out.kv.value = k.decrypt(&out.kv.value)?;
            if let Some(p) = &mut out.prev {
                p.value = k.decrypt(&p.value)?;
            }
            Ok(Arc::new(out))
        })))
    }

    fn current_rev(&self) -> Rev {
        self.inner.current_rev()
    }

    fn compacted_rev(&self) -> Rev {
        self.inner.compacted_rev()
    }

    async fn compact(&self, rev: Rev) -> Result<(), StorageError> {
        self.inner.compact(rev).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let k = Keys::load(&path, true).unwrap();
        let sealed = k.encrypt(b"{\"data\":{\"password\":\"aHVudGVyMg==\"}}").unwrap();
        assert!(is_encrypted(&sealed));
        assert!(!sealed.windows(12).any(|w| w == b"aHVudGVyMg=="), "no plaintext in the sealed form");
        assert_eq!(&k.decrypt(&sealed).unwrap()[..], b"{\"data\":{\"password\":\"aHVudGVyMg==\"}}");
        let again = Keys::load(&path, false).unwrap();
        assert_eq!(again.current(), None, "disabled: new writes are plaintext");
        assert_eq!(&again.decrypt(&sealed).unwrap()[..], b"{\"data\":{\"password\":\"aHVudGVyMg==\"}}");
        assert_eq!(
            std::fs::metadata(&path)
                .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
                .unwrap(),
            0o600
        );
        let mut tampered = sealed.to_vec();
        let n = tampered.len();
        tampered[n - 1] ^= 1;
        assert!(k.decrypt(&Bytes::from(tampered)).is_err());
    }
}
