//! User snapshots of the store (`rk snapshot save|ls|restore|prune`, and the server's
//! scheduled ones), as k3s's etcd snapshots: files under
//! `<data-dir>/server/db/snapshots/`, named `<prefix>-<node>-<unix time>`.
//!
//! A snapshot is every live key at one revision, taken under the store's index lock
//! (consistent while the server runs). File layout:
//! `RKSNAP1\n`, header length (u32 LE), the JSON [`Header`], the records in the log's
//! own encoding ([`super::wal`]: puts, then a meta record with the revision), and the
//! SHA-256 of everything before it. Restore checks all of it before touching the
//! store, and keeps the store it replaces beside it.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::format;
use super::log_store::LogStore;
use super::wal;

const MAGIC: &[u8; 8] = b"RKSNAP1\n";
/// The snapshot file format this rk writes and reads.
pub const SNAPSHOT_FORMAT: u32 = 1;
/// Name prefix of scheduled snapshots (k3s: `etcd-snapshot`).
pub const SCHEDULED: &str = "rk-snapshot";
/// Name prefix of on-demand snapshots, as k3s's.
pub const ON_DEMAND: &str = "on-demand";

/// What a snapshot says about itself.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Header {
    /// [`SNAPSHOT_FORMAT`].
    pub format: u32,
    /// The store format it was taken from.
    pub store_format: u32,
    /// The store revision it holds.
    pub revision: i64,
    /// How many keys (objects) it holds.
    pub keys: u64,
    /// When it was taken (RFC 3339).
    pub created: String,
    /// The node that took it.
    pub node: String,
}

/// A snapshot file, as `ls` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Info {
    /// Its file name.
    pub name: String,
    /// Its path.
    pub path: PathBuf,
    /// Bytes.
    pub size: u64,
    /// Its header, or why it could not be read.
    pub header: Result<Header, String>,
}

/// Where snapshots go by default.
pub fn default_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("server").join("db").join("snapshots")
}

/// The store directory under a data dir.
pub fn db_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("server").join("db")
}

/// Encodes a snapshot file.
pub fn encode(header: &Header, records: &[u8]) -> Vec<u8> {
    let h = serde_json::to_vec(header).expect("a header serializes");
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + h.len() + records.len() + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(h.len() as u32).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(records);
    let sum = sha2::Sha256::digest(&out);
    out.extend_from_slice(&sum);
    out
}

/// Reads just the header (for `ls`); the checksum is not checked.
fn peek(bytes: &[u8]) -> Result<(Header, usize), String> {
    let Some(rest) = bytes.strip_prefix(MAGIC.as_slice()) else {
        return Err("not an rk snapshot".into());
    };
    let len = rest.get(..4).ok_or("truncated (no header)")?;
    let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
    let h = rest.get(4..4 + len).ok_or("truncated (in the header)")?;
    let header: Header = serde_json::from_slice(h).map_err(|e| format!("corrupt header: {e}"))?;
    if header.format > SNAPSHOT_FORMAT {
        return Err(format!("snapshot format {} is newer than this rk reads (up to {SNAPSHOT_FORMAT})", header.format));
    }
    Ok((header, MAGIC.len() + 4 + len))
}

/// Checks a whole snapshot file; returns its header and records.
pub fn decode(bytes: &[u8]) -> Result<(Header, &[u8]), String> {
    let (header, start) = peek(bytes)?;
    if bytes.len() < start + 32 {
        return Err("truncated (no checksum)".into());
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if sha2::Sha256::digest(body).as_slice() != sum {
        return Err("truncated or corrupt (checksum mismatch)".into());
    }
    let records = &body[start..];
    let (recs, valid) = wal::decode_all(records);
    let puts = recs.iter().filter(|r| r.kind == wal::KIND_PUT).count() as u64;
    let last_meta = recs.last().filter(|r| r.kind == wal::KIND_META).map(|r| r.rev);
    if valid != records.len() || puts != header.keys || last_meta != Some(header.revision) {
        return Err("corrupt (its records do not match its header)".into());
    }
    Ok((header, records))
}

/// A snapshot just written.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Saved {
    /// File name.
    pub name: String,
    /// Path.
    pub path: PathBuf,
    /// Bytes.
    pub size: u64,
    /// Store revision.
    pub revision: i64,
    /// Keys held.
    pub keys: u64,
}

/// Writes a snapshot of `store` into `dir` as `<prefix>-<node>-<unix time>`, durably
/// (a temporary file, fsynced, then renamed).
pub fn save(store: &LogStore, dir: &Path, prefix: &str, node: Option<&str>) -> Result<Saved, String> {
    check_prefix(prefix)?;
    let node = node.map(str::to_string).unwrap_or_else(crate::default_node_name);
    let (revision, keys, records) = store.export();
    let now = chrono::Utc::now();
    let header = Header {
        format: SNAPSHOT_FORMAT,
        store_format: format::STORE_FORMAT,
        revision,
        keys,
        created: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        node: node.clone(),
    };
    let bytes = encode(&header, &records);
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let mut name = format!("{prefix}-{node}-{}", now.timestamp());
    for n in 1.. {
        if !dir.join(&name).exists() {
            break;
        }
        name = format!("{prefix}-{node}-{}-{n}", now.timestamp());
    }
    let path = dir.join(&name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let write = || -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        wal::sync_dir(dir)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("write snapshot {}: {e}", path.display()));
    }
    tracing::info!(name = %name, revision, keys, bytes = bytes.len(), "saved a snapshot of the store");
    Ok(Saved { name, path, size: bytes.len() as u64, revision, keys })
}

fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
        return Err(format!("snapshot name {prefix:?} may hold only letters, digits, '-', '_' and '.'"));
    }
    Ok(())
}

/// Every snapshot in `dir`, oldest first.
pub fn list(dir: &Path) -> Result<Vec<Info>, String> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(format!("read {}: {e}", dir.display())),
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with('.') || !e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let path = e.path();
        let size = e.metadata().map(|m| m.len()).unwrap_or(0);
        let header = read_head(&path).and_then(|b| peek(&b).map(|(h, _)| h));
        out.push(Info { name, path, size, header });
    }
    out.sort_by(|a, b| {
        let key = |i: &Info| i.header.as_ref().map(|h| h.created.clone()).unwrap_or_default();
        key(a).cmp(&key(b)).then_with(|| a.name.cmp(&b.name))
    });
    Ok(out)
}

fn read_head(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut buf = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(64 << 10).read_to_end(&mut buf))
        .map_err(|e| format!("read {}: {e}", path.display()))?;
    Ok(buf)
}

/// Deletes the oldest snapshots named `<prefix>-…` beyond the newest `keep`; returns
/// the names deleted.
pub fn prune(dir: &Path, prefix: &str, keep: usize) -> Result<Vec<String>, String> {
    check_prefix(prefix)?;
    let mine: Vec<Info> =
        list(dir)?.into_iter().filter(|i| i.name.starts_with(&format!("{prefix}-")) && i.header.is_ok()).collect();
    let excess = mine.len().saturating_sub(keep);
    let mut gone = Vec::new();
    for i in mine.into_iter().take(excess) {
        std::fs::remove_file(&i.path).map_err(|e| format!("delete {}: {e}", i.path.display()))?;
        gone.push(i.name);
    }
    Ok(gone)
}

fn plain(e: super::StorageError) -> String {
    match e {
        super::StorageError::Backend(m) => m,
        e => e.to_string(),
    }
}

/// What a restore did.
#[derive(Clone, Debug)]
pub struct Restored {
    /// The snapshot's header.
    pub header: Header,
    /// Where the store it replaced was moved, if there was one.
    pub previous: Option<PathBuf>,
}

/// Restores the snapshot file `file` into the store in `db_dir`, which no process may
/// have open. The snapshot is checked whole first; the current store's log is moved
/// to `log.before-restore-<unix time>`, never deleted.
pub fn restore(db_dir: &Path, file: &Path) -> Result<Restored, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("read snapshot {}: {e}", file.display()))?;
    let (header, records) = decode(&bytes).map_err(|e| format!("snapshot {}: {e}", file.display()))?;
    let _lock = format::lock(db_dir, std::time::Duration::ZERO).map_err(plain)?;
    let log = db_dir.join("log");
    let staging = db_dir.join("log.restoring");
    let io = |what: &str, p: &Path| {
        let what = format!("{what} {}", p.display());
        move |e: std::io::Error| format!("{what}: {e}")
    };
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io("remove", &staging))?;
    }
    std::fs::create_dir_all(&staging).map_err(io("create", &staging))?;
    wal::install_snapshot(&staging, 1, records).map_err(io("write the restored store in", &staging))?;
    let has_old = std::fs::read_dir(&log).map(|mut d| d.next().is_some()).unwrap_or(false);
    let previous = if has_old {
        let aside = db_dir.join(format!("log.before-restore-{}", chrono::Utc::now().timestamp()));
        std::fs::rename(&log, &aside).map_err(io("move aside", &log))?;
        Some(aside)
    } else {
        let _ = std::fs::remove_dir_all(&log);
        None
    };
    std::fs::rename(&staging, &log).map_err(io("install", &log))?;
    format::write_version(db_dir).map_err(plain)?;
    wal::sync_dir(db_dir).map_err(io("sync", db_dir))?;
    Ok(Restored { header, previous })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::{LogStoreOptions, Storage};
    use bytes::Bytes;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn save_restore_round_trip_and_bad_files_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let snaps = dir.path().join("snaps");
        let (saved, rev) = {
            let s = LogStore::open(&db, LogStoreOptions::default()).unwrap();
            s.create("/a", Bytes::from_static(b"1")).await.unwrap();
            let r = s.create("/b", Bytes::from_static(b"2")).await.unwrap();
            s.delete("/b", Some(r)).await.unwrap();
            let saved = save(&s, &snaps, ON_DEMAND, Some("n1")).unwrap();
            assert_eq!(saved.keys, 1);
            // Written after the snapshot: gone after the restore.
            s.create("/later", Bytes::from_static(b"x")).await.unwrap();
            // A running store cannot be restored into.
            let e = restore(&db, &saved.path).unwrap_err();
            assert!(e.contains("in use by another rk"), "{e}");
            (saved, s.current_rev())
        };
        let ls = list(&snaps).unwrap();
        assert_eq!(ls.len(), 1);
        assert_eq!(ls[0].header.as_ref().unwrap().keys, 1);

        // Truncated and corrupted copies are refused whole, before anything changes.
        let bytes = std::fs::read(&saved.path).unwrap();
        let bad = dir.path().join("bad");
        for (mangled, want) in [
            (bytes[..bytes.len() - 5].to_vec(), "checksum"),
            (bytes[..10].to_vec(), "truncated"),
            (b"hello".to_vec(), "not an rk snapshot"),
            (
                {
                    let mut b = bytes.clone();
                    let n = b.len() - 40;
                    b[n] ^= 1;
                    b
                },
                "checksum",
            ),
        ] {
            std::fs::write(&bad, &mangled).unwrap();
            let e = restore(&db, &bad).unwrap_err();
            assert!(e.contains(want), "{want}: {e}");
        }
        {
            let s = LogStore::open(&db, LogStoreOptions::default()).unwrap();
            assert!(s.get("/later").await.unwrap().is_some(), "the store was left alone");
            assert_eq!(s.current_rev(), rev);
        }

        let r = restore(&db, &saved.path).unwrap();
        assert!(r.previous.as_ref().is_some_and(|p| p.exists()), "the old store is kept");
        let s = LogStore::open(&db, LogStoreOptions::default()).unwrap();
        assert_eq!(s.get("/a").await.unwrap().unwrap().value, Bytes::from_static(b"1"));
        assert!(s.get("/b").await.unwrap().is_none());
        assert!(s.get("/later").await.unwrap().is_none());
        assert_eq!(s.current_rev(), saved.revision);
        assert_eq!(s.compacted_rev(), saved.revision);
        let next = s.create("/c", Bytes::from_static(b"3")).await.unwrap();
        assert!(next > saved.revision);
        drop(s);

        // Prune keeps the newest of a prefix.
        let s = LogStore::open(&db, LogStoreOptions::default()).unwrap();
        for _ in 0..3 {
            save(&s, &snaps, SCHEDULED, Some("n1")).unwrap();
        }
        let gone = prune(&snaps, SCHEDULED, 1).unwrap();
        assert_eq!(gone.len(), 2, "{gone:?}");
        assert_eq!(list(&snaps).unwrap().len(), 2, "one on-demand, one scheduled");
        assert!(save(&s, &snaps, "../x", None).is_err());
    }
}
