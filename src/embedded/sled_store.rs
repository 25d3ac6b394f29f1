//! The sled backend of [`Storage`]: an MVCC keyspace in one sled tree, a revision log,
//! group-committed durable writes and incremental compaction.
//!
//! Layout (one tree, so every write is one atomic `apply_batch`):
//! - `k<key>\0<rev:8 BE>` → record: `[kind:1][create_rev:8 BE][value]`, one per version
//! - `r<rev:8 BE>` → key: the revision log, for watch replay and compaction
//! - `mrev` → the newest revision; `mcompact` → the compacted revision
//!
//! Durability: sled 0.34's `flush()` ends in `sync_file_range`, which neither flushes
//! the drive cache nor covers file metadata, and its blob files (large values) are never
//! synced at all. So writes are made durable by rk's own write-ahead log ([`super::wal`]):
//! the first waiting writer appends every pending write to it with one `fdatasync`, and
//! writers arriving meanwhile wait for the next such batch, so concurrent writers share
//! one sync (group commit) and a lone writer pays no thread handoff. sled is checkpointed in the background (`flush()`, then
//! `fdatasync` of its `db` file and `fsync` of new blob files), after which the log
//! segments it covers are deleted; on open, logged writes newer than sled's revision are
//! replayed. Watch events are published only once durable, in revision order.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{broadcast, watch};

use super::storage::{Event, EventKind, KeyValue, ListResult, Rev, Storage, StorageError, WatchStream};
use super::wal::{self, Wal};

const KIND_PUT: u8 = 0;
const KIND_DELETE: u8 = 1;
const META_REV: &[u8] = b"mrev";
const META_COMPACT: &[u8] = b"mcompact";
/// Log entries removed per compaction batch, so a batch stays short.
const COMPACT_BATCH: usize = 500;
/// How often sled is checkpointed (and covered log segments deleted).
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
/// A log segment this large is checkpointed early.
const CHECKPOINT_BYTES: u64 = 64 << 20;

/// Tuning for [`SledStore::open`].
#[derive(Clone, Debug)]
pub struct SledStoreOptions {
    /// sled's page cache bound in bytes (sled's default is 1 GiB).
    pub cache_bytes: u64,
    /// Events kept for slow watchers before they are told to re-list.
    pub watch_buffer: usize,
}

impl Default for SledStoreOptions {
    fn default() -> Self {
        SledStoreOptions { cache_bytes: 16 << 20, watch_buffer: 16 * 1024 }
    }
}

/// The sled-backed store. Cheap to clone.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

struct Inner {
    tree: sled::Db,
    /// Serialises writers: revision assignment, the CAS check and the batch.
    write: Mutex<Rev>,
    /// Events applied to sled but not yet durable, in revision order.
    pending: Mutex<Vec<Arc<Event>>>,
    /// The log; whoever holds this lock is the group commit's leader.
    wal: Mutex<WalState>,
    /// (durable revision, first log error), as published by each leader.
    durable: watch::Sender<(Rev, Option<String>)>,
    events: broadcast::Sender<Arc<Event>>,
    current: AtomicI64,
    compacted: AtomicI64,
}

struct WalState {
    wal: Wal,
    buf: Vec<u8>,
    last_checkpoint: std::time::Instant,
    /// Closed segments go to the checkpointer thread.
    checkpoints: std::sync::mpsc::Sender<PathBuf>,
}

fn be(rev: Rev) -> [u8; 8] {
    (rev as u64).to_be_bytes()
}

fn from_be(b: &[u8]) -> Rev {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a) as Rev
}

fn version_key(key: &str, rev: Rev) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 10);
    k.push(b'k');
    k.extend_from_slice(key.as_bytes());
    k.push(0);
    k.extend_from_slice(&be(rev));
    k
}

fn versions_prefix(key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 2);
    k.push(b'k');
    k.extend_from_slice(key.as_bytes());
    k.push(0);
    k
}

fn log_key(rev: Rev) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'r';
    k[1..].copy_from_slice(&be(rev));
    k
}

/// Splits a version key into (user key, revision).
fn split_version_key(k: &[u8]) -> Option<(&str, Rev)> {
    if k.len() < 10 || k[0] != b'k' || k[k.len() - 9] != 0 {
        return None;
    }
    let key = std::str::from_utf8(&k[1..k.len() - 9]).ok()?;
    Some((key, from_be(&k[k.len() - 8..])))
}

struct Record {
    kind: u8,
    create_rev: Rev,
    value: Bytes,
}

fn encode_record(kind: u8, create_rev: Rev, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(value.len() + 9);
    v.push(kind);
    v.extend_from_slice(&be(create_rev));
    v.extend_from_slice(value);
    v
}

fn decode_record(v: &[u8]) -> Result<Record, StorageError> {
    if v.len() < 9 {
        return Err(StorageError::Backend("corrupt record: shorter than its header".into()));
    }
    Ok(Record { kind: v[0], create_rev: from_be(&v[1..9]), value: Bytes::copy_from_slice(&v[9..]) })
}

fn backend(e: sled::Error) -> StorageError {
    StorageError::Backend(e.to_string())
}

fn check_key(key: &str) -> Result<(), StorageError> {
    if key.as_bytes().contains(&0) {
        return Err(StorageError::Backend(format!("key {key:?} contains a NUL byte")));
    }
    Ok(())
}

impl SledStore {
    /// Opens (or creates) the store in `dir` (sled in `dir/sled`, the log in `dir/wal`),
    /// replaying logged writes sled had not persisted.
    pub fn open(dir: &Path, opts: SledStoreOptions) -> Result<SledStore, StorageError> {
        let io = |what: &str, p: &Path| {
            let p = p.display().to_string();
            let what = what.to_string();
            move |e: std::io::Error| StorageError::Backend(format!("{what} {p}: {e}"))
        };
        let sled_dir = dir.join("sled");
        let wal_dir = dir.join("wal");
        std::fs::create_dir_all(&sled_dir).map_err(io("create", &sled_dir))?;
        let db = sled::Config::new()
            .path(&sled_dir)
            .cache_capacity(opts.cache_bytes)
            .mode(sled::Mode::LowSpace)
            // The write-ahead log makes writes durable; sled is checkpointed by rk.
            .flush_every_ms(None)
            .open()
            .map_err(backend)?;
        let mut current = db.get(META_REV).map_err(backend)?.map(|v| from_be(&v)).unwrap_or(0);
        let compacted = db.get(META_COMPACT).map_err(backend)?.map(|v| from_be(&v)).unwrap_or(0);
        let db_file = File::open(sled_dir.join("db")).map_err(io("open", &sled_dir.join("db")))?;
        for d in [dir, sled_dir.as_path()] {
            File::open(d).and_then(|f| f.sync_all()).map_err(io("sync", d))?;
        }
        let (wal, records, old_segments) = Wal::open(&wal_dir).map_err(io("open write-ahead log", &wal_dir))?;
        let mut replayed = 0;
        let sled_rev = current;
        for r in records.iter().filter(|r| r.rev > sled_rev) {
            let mut batch = sled::Batch::default();
            batch.insert(version_key(&r.key, r.rev), encode_record(r.kind, r.create_rev, &r.value));
            batch.insert(&log_key(r.rev)[..], r.key.as_bytes());
            batch.insert(META_REV, &be(r.rev)[..]);
            db.apply_batch(batch).map_err(backend)?;
            current = r.rev;
            replayed += 1;
        }
        let mut synced_blobs = HashSet::new();
        if !old_segments.is_empty() {
            checkpoint(&db, &db_file, &sled_dir.join("blobs"), &mut synced_blobs).map_err(StorageError::Backend)?;
            Wal::remove(&wal_dir, &old_segments).map_err(io("remove log segments in", &wal_dir))?;
        }
        if replayed > 0 {
            tracing::info!(replayed, revision = current, "replayed the write-ahead log");
        }

        let (durable, _) = watch::channel((current, None));
        let (events, _) = broadcast::channel(opts.watch_buffer.max(16));
        let (cp_tx, cp_rx) = std::sync::mpsc::channel();
        let inner = Arc::new(Inner {
            tree: db,
            write: Mutex::new(current),
            pending: Mutex::new(Vec::new()),
            wal: Mutex::new(WalState {
                wal,
                buf: Vec::new(),
                last_checkpoint: std::time::Instant::now(),
                checkpoints: cp_tx,
            }),
            durable,
            events,
            current: AtomicI64::new(current),
            compacted: AtomicI64::new(compacted),
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("rk-store-checkpoint".into())
            .spawn(move || checkpointer(weak, cp_rx, db_file, sled_dir.join("blobs"), wal_dir, synced_blobs))
            .map_err(|e| StorageError::Backend(format!("spawn checkpointer: {e}")))?;
        Ok(SledStore { inner })
    }

    /// Bytes the store's files take on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.inner.tree.size_on_disk().unwrap_or(0)
    }

    /// The newest version of a key, unless it is a delete.
    fn live(&self, key: &str) -> Result<Option<KeyValue>, StorageError> {
        let Some(r) = self.inner.tree.scan_prefix(versions_prefix(key)).next_back() else { return Ok(None) };
        let (k, v) = r.map_err(backend)?;
        let rev = split_version_key(&k).map(|(_, r)| r).unwrap_or(0);
        let rec = decode_record(&v)?;
        Ok((rec.kind == KIND_PUT).then(|| KeyValue {
            key: key.to_string(),
            value: rec.value,
            create_rev: rec.create_rev,
            mod_rev: rev,
        }))
    }

    /// Applies one write under the writer lock; `decide` sees the live value and
    /// returns the record to write. Returns the event once it is durable.
    async fn write(
        &self,
        key: &str,
        decide: impl FnOnce(Option<&KeyValue>, Rev) -> Result<(EventKind, Rev, Bytes), StorageError>,
    ) -> Result<Arc<Event>, StorageError> {
        check_key(key)?;
        let ev = {
            let mut cur = self.inner.write.lock().unwrap_or_else(|e| e.into_inner());
            let prev = self.live(key)?;
            let rev = *cur + 1;
            let (kind, create_rev, value) = decide(prev.as_ref(), rev)?;
            let code = if kind == EventKind::Put { KIND_PUT } else { KIND_DELETE };
            let mut batch = sled::Batch::default();
            batch.insert(version_key(key, rev), encode_record(code, create_rev, &value));
            batch.insert(&log_key(rev)[..], key.as_bytes());
            batch.insert(META_REV, &be(rev)[..]);
            self.inner.tree.apply_batch(batch).map_err(backend)?;
            *cur = rev;
            self.inner.current.store(rev, Ordering::Release);
            let ev =
                Arc::new(Event { kind, kv: KeyValue { key: key.to_string(), value, create_rev, mod_rev: rev }, prev });
            self.inner.pending.lock().unwrap_or_else(|e| e.into_inner()).push(ev.clone());
            ev
        };
        self.wait_durable(ev.kv.mod_rev).await?;
        Ok(ev)
    }

    /// Waits until `rev` is durable. The first writer to find no commit in progress
    /// leads one: it logs every pending write with a single fdatasync, on its own
    /// thread, so a lone writer pays no thread handoff; writers arriving meanwhile are
    /// covered by the next leader, one of themselves.
    async fn wait_durable(&self, rev: Rev) -> Result<(), StorageError> {
        let mut rx = self.inner.durable.subscribe();
        loop {
            let (d, err) = rx.borrow_and_update().clone();
            if let Some(e) = err {
                return Err(StorageError::Backend(format!("store is not durable: {e}")));
            }
            if d >= rev {
                return Ok(());
            }
            if let Ok(mut st) = self.inner.wal.try_lock() {
                let multi = tokio::runtime::Handle::try_current()
                    .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
                if multi {
                    tokio::task::block_in_place(|| self.inner.commit(&mut st));
                } else {
                    self.inner.commit(&mut st);
                }
                drop(st);
                // A writer that found the log locked while this commit ran, after its
                // last publish, waits for a change: make one so it leads the next.
                if !self.inner.pending.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
                    self.inner.durable.send_modify(|_| {});
                }
                continue;
            }
            if rx.changed().await.is_err() {
                return Err(StorageError::Backend("store closed".into()));
            }
        }
    }

    /// Reads the history event at `rev` if its key is under `prefix`.
    fn history_event(&self, rev: Rev, key: &str) -> Result<Option<Event>, StorageError> {
        let Some(v) = self.inner.tree.get(version_key(key, rev)).map_err(backend)? else {
            return Ok(None);
        };
        let rec = decode_record(&v)?;
        let prev = match self.inner.tree.range(versions_prefix(key)..version_key(key, rev)).next_back() {
            Some(r) => {
                let (k, v) = r.map_err(backend)?;
                let prev_rev = split_version_key(&k).map(|(_, r)| r).unwrap_or(0);
                let p = decode_record(&v)?;
                (p.kind == KIND_PUT).then(|| KeyValue {
                    key: key.to_string(),
                    value: p.value,
                    create_rev: p.create_rev,
                    mod_rev: prev_rev,
                })
            }
            None => None,
        };
        let kind = if rec.kind == KIND_PUT { EventKind::Put } else { EventKind::Delete };
        Ok(Some(Event {
            kind,
            kv: KeyValue { key: key.to_string(), value: rec.value, create_rev: rec.create_rev, mod_rev: rev },
            prev,
        }))
    }

    /// Removes the history below `upto` in bounded batches; returns versions removed.
    fn compact_batch(&self, upto: Rev) -> Result<(usize, bool), StorageError> {
        let tree = &self.inner.tree;
        let mut batch = sled::Batch::default();
        let mut n = 0;
        let mut removed = 0;
        let mut done = true;
        for r in tree.range(&log_key(0)[..]..&log_key(upto + 1)[..]) {
            let (lk, key) = r.map_err(backend)?;
            if n == COMPACT_BATCH {
                done = false;
                break;
            }
            n += 1;
            let rev = from_be(&lk[1..]);
            let key = String::from_utf8_lossy(&key).into_owned();
            batch.remove(lk);
            let this = version_key(&key, rev);
            let newer = tree.range(version_key(&key, rev + 1)..version_key(&key, Rev::MAX)).next();
            let superseded = match newer {
                Some(x) => {
                    let (nk, _) = x.map_err(backend)?;
                    split_version_key(&nk).map(|(_, nr)| nr <= upto).unwrap_or(false)
                }
                None => false,
            };
            let is_delete = tree.get(&this).map_err(backend)?.map(|v| v.first() == Some(&KIND_DELETE)).unwrap_or(false);
            if superseded || is_delete {
                batch.remove(this);
                removed += 1;
            }
        }
        tree.apply_batch(batch).map_err(backend)?;
        Ok((removed, done))
    }
}

impl Inner {
    /// One group commit, by the holder of the log lock: append every pending write
    /// with one fdatasync, publish the durable revision and the events it covers, and
    /// hand a full or old log segment to the checkpointer.
    fn commit(&self, st: &mut WalState) {
        if self.durable.borrow().1.is_some() {
            return;
        }
        let batch: Vec<Arc<Event>> = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        let Some(target) = batch.last().map(|e| e.kv.mod_rev) else { return };
        st.buf.clear();
        for ev in &batch {
            let kind = if ev.kind == EventKind::Put { KIND_PUT } else { KIND_DELETE };
            let r = wal::Record {
                kind,
                rev: ev.kv.mod_rev,
                create_rev: ev.kv.create_rev,
                key: ev.kv.key.clone(),
                value: ev.kv.value.clone(),
            };
            wal::encode(&r, &mut st.buf);
        }
        if let Err(e) = st.wal.append(&st.buf) {
            let e = format!("appending to the write-ahead log: {e}");
            tracing::error!(error = %e, "store write failed; refusing further writes");
            self.durable.send_modify(|d| d.1 = Some(e));
            return;
        }
        // Durable first: a watcher that subscribes, then reads the durable revision,
        // finds each event either in history or in its receiver.
        self.durable.send_modify(|d| d.0 = target);
        for ev in batch {
            let _ = self.events.send(ev);
        }
        if (st.last_checkpoint.elapsed() >= CHECKPOINT_EVERY || st.wal.len() >= CHECKPOINT_BYTES) && !st.wal.is_empty()
        {
            match st.wal.rotate() {
                Ok(old) => {
                    let _ = st.checkpoints.send(old);
                }
                Err(e) => tracing::warn!(error = %e, "rotating the write-ahead log failed"),
            }
            st.last_checkpoint = std::time::Instant::now();
        }
    }
}

/// Makes everything applied to sled so far durable in sled's own files.
fn checkpoint(
    tree: &sled::Db,
    db_file: &File,
    blobs: &Path,
    synced: &mut HashSet<std::ffi::OsString>,
) -> Result<(), String> {
    tree.flush().map_err(|e| format!("flushing sled: {e}"))?;
    db_file.sync_data().map_err(|e| format!("fdatasync sled db: {e}"))?;
    sync_new_blobs(blobs, synced)
}

/// Checkpoints sled for each closed log segment, then deletes the segments covered.
fn checkpointer(
    inner: std::sync::Weak<Inner>,
    rx: std::sync::mpsc::Receiver<PathBuf>,
    db_file: File,
    blobs: PathBuf,
    wal_dir: PathBuf,
    mut synced: HashSet<std::ffi::OsString>,
) {
    while let Ok(first) = rx.recv() {
        let mut segs = vec![first];
        segs.extend(rx.try_iter());
        let Some(inner) = inner.upgrade() else { return };
        // Every record in these segments was applied to sled before the segment closed,
        // so this flush covers them all.
        match checkpoint(&inner.tree, &db_file, &blobs, &mut synced) {
            Ok(()) => {
                if let Err(e) = Wal::remove(&wal_dir, &segs) {
                    tracing::warn!(error = %e, "removing checkpointed log segments failed");
                }
            }
            // The segments stay and are replayed at the next start.
            Err(e) => tracing::warn!(error = %e, "checkpointing the store failed"),
        }
    }
}

/// fsyncs blob files (values sled keeps outside its log) not synced before, and the
/// blobs directory itself when it gained entries.
fn sync_new_blobs(blobs: &Path, synced: &mut HashSet<std::ffi::OsString>) -> Result<(), String> {
    let rd = match std::fs::read_dir(blobs) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("read {}: {e}", blobs.display())),
    };
    let mut seen = HashSet::new();
    let mut added = false;
    for ent in rd.flatten() {
        let name = ent.file_name();
        if !synced.contains(&name) {
            File::open(ent.path()).and_then(|f| f.sync_data()).map_err(|e| format!("fsync blob {:?}: {e}", name))?;
            added = true;
        }
        seen.insert(name);
    }
    if added {
        File::open(blobs).and_then(|d| d.sync_all()).map_err(|e| format!("fsync {}: {e}", blobs.display()))?;
    }
    *synced = seen;
    Ok(())
}

#[async_trait::async_trait]
impl Storage for SledStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StorageError> {
        self.live(key)
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        rev: Rev,
    ) -> Result<ListResult, StorageError> {
        let current = self.current_rev();
        let rev = if rev <= 0 { current } else { rev };
        let compacted = self.compacted_rev();
        if rev < compacted {
            return Err(StorageError::Compacted { requested: rev, compacted });
        }
        if rev > current {
            return Err(StorageError::FutureRevision { requested: rev, current });
        }
        let mut lo = vec![b'k'];
        match start_after {
            Some(s) => {
                lo.extend_from_slice(s.as_bytes());
                lo.push(1);
            }
            None => lo.extend_from_slice(prefix.as_bytes()),
        }
        let mut pfx = vec![b'k'];
        pfx.extend_from_slice(prefix.as_bytes());
        let mut kvs = Vec::new();
        let mut more = false;
        // The newest version at or below `rev` of the key being scanned.
        let mut cand: Option<(String, Rev, Record)> = None;
        let flush = |cand: Option<(String, Rev, Record)>, kvs: &mut Vec<KeyValue>, more: &mut bool| -> bool {
            if let Some((key, r, rec)) = cand
                && rec.kind == KIND_PUT
            {
                if limit > 0 && kvs.len() == limit {
                    *more = true;
                    return true;
                }
                kvs.push(KeyValue { key, value: rec.value, create_rev: rec.create_rev, mod_rev: r });
            }
            false
        };
        for item in self.inner.tree.range(lo..) {
            let (k, v) = item.map_err(backend)?;
            if !k.starts_with(&pfx) {
                break;
            }
            let Some((key, vrev)) = split_version_key(&k) else {
                continue;
            };
            if cand.as_ref().is_some_and(|c| c.0 != key) && flush(cand.take(), &mut kvs, &mut more) {
                break;
            }
            if vrev <= rev {
                cand = Some((key.to_string(), vrev, decode_record(&v)?));
            }
        }
        if !more {
            flush(cand.take(), &mut kvs, &mut more);
        }
        Ok(ListResult { kvs, rev, more })
    }

    async fn count(&self, prefix: &str) -> Result<usize, StorageError> {
        Ok(self.list(prefix, None, 0, 0).await?.kvs.len())
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<Rev, StorageError> {
        let ev = self
            .write(key, |prev, rev| match prev {
                Some(_) => Err(StorageError::AlreadyExists(key.to_string())),
                None => Ok((EventKind::Put, rev, value)),
            })
            .await?;
        Ok(ev.kv.mod_rev)
    }

    async fn update(&self, key: &str, value: Bytes, expected: Rev) -> Result<Rev, StorageError> {
        let ev = self
            .write(key, |prev, _| match prev {
                Some(p) if p.mod_rev == expected => Ok((EventKind::Put, p.create_rev, value)),
                Some(p) => Err(StorageError::Conflict { key: key.to_string(), expected, found: p.mod_rev }),
                None => Err(StorageError::NotFound(key.to_string())),
            })
            .await?;
        Ok(ev.kv.mod_rev)
    }

    async fn delete(&self, key: &str, expected: Option<Rev>) -> Result<(Rev, KeyValue), StorageError> {
        let ev = self
            .write(key, |prev, _| match prev {
                Some(p) if expected.is_none_or(|e| e == p.mod_rev) => {
                    Ok((EventKind::Delete, p.create_rev, p.value.clone()))
                }
                Some(p) => Err(StorageError::Conflict {
                    key: key.to_string(),
                    expected: expected.unwrap_or(0),
                    found: p.mod_rev,
                }),
                None => Err(StorageError::NotFound(key.to_string())),
            })
            .await?;
        Ok((ev.kv.mod_rev, ev.kv.clone()))
    }

    fn watch(&self, prefix: &str, after: Rev) -> Result<WatchStream, StorageError> {
        // Subscribe first so nothing falls between the history read and the live feed.
        let rx = self.inner.events.subscribe();
        let compacted = self.compacted_rev();
        if after < compacted {
            return Err(StorageError::Compacted { requested: after, compacted });
        }
        let durable = self.inner.durable.borrow().0;
        let mut history = Vec::new();
        for r in self.inner.tree.range(&log_key(after + 1)[..]..=&log_key(durable)[..]) {
            let (lk, key) = r.map_err(backend)?;
            let key = String::from_utf8_lossy(&key);
            if !key.starts_with(prefix) {
                continue;
            }
            if let Some(ev) = self.history_event(from_be(&lk[1..]), &key)? {
                history.push(Ok(Arc::new(ev)));
            }
        }
        let last = durable.max(after);
        let prefix = prefix.to_string();
        let live = futures::stream::unfold((rx, false), move |(mut rx, ended)| {
            let prefix = prefix.clone();
            async move {
                if ended {
                    return None;
                }
                loop {
                    match rx.recv().await {
                        Ok(ev) if ev.kv.mod_rev > last && ev.kv.key.starts_with(&prefix) => {
                            return Some((Ok(ev), (rx, false)));
                        }
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            return Some((Err(StorageError::Lagged(n)), (rx, true)));
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        });
        Ok(futures::stream::iter(history).chain(live).boxed())
    }

    fn current_rev(&self) -> Rev {
        self.inner.current.load(Ordering::Acquire)
    }

    fn compacted_rev(&self) -> Rev {
        self.inner.compacted.load(Ordering::Acquire)
    }

    async fn compact(&self, rev: Rev) -> Result<(), StorageError> {
        let current = self.current_rev();
        if rev > current {
            return Err(StorageError::FutureRevision { requested: rev, current });
        }
        if rev <= self.compacted_rev() {
            return Ok(());
        }
        // Refuse reads below `rev` first, then remove history batch by batch.
        self.inner.tree.insert(META_COMPACT, &be(rev)[..]).map_err(backend)?;
        self.inner.compacted.store(rev, Ordering::Release);
        let mut total = 0;
        loop {
            let this = self.clone();
            let (removed, done) = tokio::task::spawn_blocking(move || this.compact_batch(rev))
                .await
                .map_err(|e| StorageError::Backend(format!("compaction task: {e}")))??;
            total += removed;
            if done {
                break;
            }
            tokio::task::yield_now().await;
        }
        tracing::debug!(rev, removed = total, "compacted store");
        // Make the compaction marker durable with the next flush.
        let _ = self.inner.tree.flush_async().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::conformance;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sled_passes_conformance() {
        let dir = tempfile::tempdir().unwrap();
        let n = std::sync::atomic::AtomicUsize::new(0);
        conformance::run_all(|| {
            let p = dir.path().join(n.fetch_add(1, Ordering::SeqCst).to_string());
            async move { SledStore::open(&p, SledStoreOptions::default()).unwrap() }
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn revision_survives_restart_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let last = {
            let s = SledStore::open(dir.path(), SledStoreOptions::default()).unwrap();
            let r = s.create("/a", Bytes::from_static(b"1")).await.unwrap();
            s.delete("/a", Some(r)).await.unwrap();
            let last = s.create("/b", Bytes::from_static(b"2")).await.unwrap();
            s.compact(last).await.unwrap();
            last
        };
        // The flusher thread lets go of the files once the store is dropped.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let s = SledStore::open(dir.path(), SledStoreOptions::default()).unwrap();
        assert_eq!(s.current_rev(), last);
        assert_eq!(s.compacted_rev(), last);
        let r = s.create("/c", Bytes::from_static(b"3")).await.unwrap();
        assert!(r > last, "revision never goes backwards across restart");
        assert_eq!(s.get("/b").await.unwrap().unwrap().value, Bytes::from_static(b"2"));
        assert!(s.get("/a").await.unwrap().is_none());
    }
}
