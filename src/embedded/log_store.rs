//! The embedded backend of [`Storage`]: an in-memory MVCC index over an append-only,
//! group-committed log ([`super::wal`]), with incremental compaction and snapshots
//! that give disk space back.
//!
//! - Every version the store keeps (each key's live value plus history back to the
//!   compacted revision) is in memory, as the Kubernetes watch cache keeps objects:
//!   reads never touch the disk. `revs` maps each revision still in history to its key,
//!   for watch replay and compaction.
//! - Writers are serialised on the index lock, which assigns revisions and checks
//!   preconditions; the first waiting writer then appends every pending write to the
//!   log with one `fdatasync` (group commit) and publishes the durable revision.
//!   Readers see only durable revisions, and watch events go out only once durable,
//!   in revision order.
//! - Compaction drops superseded versions in bounded batches under the index lock, so
//!   writers wait at most one batch. When the log files outgrow twice the data kept
//!   (and a floor), a background thread writes a snapshot of the index and deletes
//!   the files it replaces.
//!
//! This replaces sled 0.34: under 64 concurrent writers sled deadlocked (its I/O
//! thread pool starves the file truncation that `SegmentAccountant::bump_tip` waits on
//! while holding the lock those threads need; sled issue #1412), and its file never
//! shrank after compaction.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{broadcast, watch};

use super::storage::{Event, EventKind, KeyValue, ListResult, Rev, Storage, StorageError, WatchStream};
use super::wal::{self, KIND_DELETE, KIND_META, KIND_PUT, Wal};

/// Revisions compacted per batch of the index lock.
const COMPACT_BATCH: usize = 1000;
/// Above this many writes a second the log is snapshotted only once it is 8 times the
/// data kept (not twice): writing and syncing a snapshot of the whole store competes
/// with the writes' own syncs, so it waits for a lull unless the log runs away.
const BUSY_WRITES_PER_SEC: f64 = 200.0;

/// Tuning for [`LogStore::open`].
#[derive(Clone, Debug)]
pub struct LogStoreOptions {
    /// Events kept for slow watchers before they are told to re-list.
    pub watch_buffer: usize,
    /// Log files smaller than this are never snapshotted.
    pub snapshot_min_bytes: u64,
    /// How often the snapshot thread looks at the log's size.
    pub snapshot_check: Duration,
}

impl Default for LogStoreOptions {
    fn default() -> Self {
        LogStoreOptions {
            watch_buffer: 16 * 1024,
            snapshot_min_bytes: 32 << 20,
            snapshot_check: Duration::from_secs(5),
        }
    }
}

/// The embedded store. Cheap to clone.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Version {
    rev: Rev,
    create_rev: Rev,
    put: bool,
    value: Bytes,
}

#[derive(Default)]
struct Index {
    /// Each key's versions, oldest first.
    keys: BTreeMap<Arc<str>, Vec<Version>>,
    /// Revision → key, for every revision still in history.
    revs: BTreeMap<Rev, Arc<str>>,
    /// The last revision assigned (writes not yet durable included).
    last: Rev,
    /// What the versions held would take as log records.
    bytes: u64,
}

fn record_bytes(key: &str, v: &Version) -> u64 {
    (8 + 21 + key.len() + v.value.len()) as u64
}

/// The newest version at or below `rev`.
fn at_rev(vs: &[Version], rev: Rev) -> Option<&Version> {
    let n = vs.partition_point(|v| v.rev <= rev);
    n.checked_sub(1).map(|i| &vs[i])
}

fn kv(key: &str, v: &Version) -> KeyValue {
    KeyValue { key: key.to_string(), value: v.value.clone(), create_rev: v.create_rev, mod_rev: v.rev }
}

impl Index {
    /// Adds a version newer than every version of its key.
    fn push(&mut self, key: &str, v: Version) {
        let key: Arc<str> = match self.keys.get_key_value(key) {
            Some((k, _)) => k.clone(),
            None => Arc::from(key),
        };
        self.bytes += record_bytes(&key, &v);
        self.revs.insert(v.rev, key.clone());
        self.keys.entry(key).or_default().push(v);
    }

    /// Builds the index from replayed records, in any order, duplicates allowed.
    fn from_records(records: Vec<wal::Record>) -> (Index, Rev, Rev) {
        let (mut current, mut compacted) = (0, 0);
        let mut idx = Index::default();
        for r in records {
            current = current.max(r.rev);
            match r.kind {
                KIND_META => compacted = compacted.max(r.create_rev),
                KIND_PUT | KIND_DELETE => {
                    let key: Arc<str> = match idx.keys.get_key_value(r.key.as_str()) {
                        Some((k, _)) => k.clone(),
                        None => Arc::from(r.key.as_str()),
                    };
                    let v = Version { rev: r.rev, create_rev: r.create_rev, put: r.kind == KIND_PUT, value: r.value };
                    idx.keys.entry(key).or_default().push(v);
                }
                _ => {}
            }
        }
        for (key, vs) in idx.keys.iter_mut() {
            vs.sort_by_key(|v| v.rev);
            vs.dedup_by_key(|v| v.rev);
            for v in vs.iter() {
                idx.bytes += record_bytes(key, v);
                idx.revs.insert(v.rev, key.clone());
            }
        }
        idx.last = current;
        (idx, current, compacted)
    }

    /// Drops history at or below `upto`, at most `max` revisions of it; returns the
    /// versions removed and whether history below `upto` is gone. A version goes when
    /// a newer one at or below `upto` supersedes it, or when it is a delete.
    fn compact(&mut self, upto: Rev, max: usize) -> (usize, bool) {
        let batch: Vec<(Rev, Arc<str>)> = self.revs.range(..=upto).take(max).map(|(r, k)| (*r, k.clone())).collect();
        let done = batch.len() < max;
        let mut removed = 0;
        for (rev, key) in batch {
            self.revs.remove(&rev);
            let Some(vs) = self.keys.get_mut(&key) else { continue };
            let Ok(i) = vs.binary_search_by_key(&rev, |v| v.rev) else { continue };
            let superseded = vs.get(i + 1).is_some_and(|n| n.rev <= upto);
            if superseded || !vs[i].put {
                let v = vs.remove(i);
                self.bytes -= record_bytes(&key, &v);
                removed += 1;
                if vs.is_empty() {
                    self.keys.remove(&key);
                }
            }
        }
        (removed, done)
    }

    /// The history event at `rev` (which must be in `revs`) for `key`.
    fn event(&self, key: &str, rev: Rev) -> Option<Event> {
        let vs = self.keys.get(key)?;
        let i = vs.binary_search_by_key(&rev, |v| v.rev).ok()?;
        let v = &vs[i];
        let prev = i.checked_sub(1).map(|p| &vs[p]).filter(|p| p.put).map(|p| kv(key, p));
        Some(Event { kind: if v.put { EventKind::Put } else { EventKind::Delete }, kv: kv(key, v), prev })
    }
}

struct Inner {
    dir: PathBuf,
    index: RwLock<Index>,
    /// Events assigned a revision but not yet durable, in revision order.
    pending: Mutex<Vec<Arc<Event>>>,
    /// The log; whoever holds this lock is the group commit's leader.
    wal: Mutex<LogState>,
    /// (durable revision, first log error), as published by each leader.
    durable: watch::Sender<(Rev, Option<String>)>,
    events: broadcast::Sender<Arc<Event>>,
    /// The durable revision: what readers see.
    current: AtomicI64,
    compacted: AtomicI64,
    /// Bytes the log files take (kept up to date approximately).
    disk: AtomicU64,
    /// Wakes the snapshot thread.
    snapshots: Mutex<std::sync::mpsc::Sender<()>>,
    /// This process's hold on the directory.
    _lock: super::format::DirLock,
}

struct LogState {
    wal: Wal,
    buf: Vec<u8>,
}

fn check_key(key: &str) -> Result<(), StorageError> {
    if key.is_empty() {
        return Err(StorageError::Backend("empty key".into()));
    }
    Ok(())
}

fn io_err(what: &str, p: &Path) -> impl FnOnce(std::io::Error) -> StorageError {
    let msg = format!("{what} {}", p.display());
    move |e| StorageError::Backend(format!("{msg}: {e}"))
}

impl LogStore {
    /// Opens (or creates) the store in `dir` (its files in `dir/log`), replaying them.
    /// Takes the directory for this process (see [`super::format`]) and checks its
    /// format first: a store another rk has open, or of a newer format, is refused
    /// with nothing read or changed.
    pub fn open(dir: &Path, opts: LogStoreOptions) -> Result<LogStore, StorageError> {
        let lock = super::format::lock(dir, Duration::from_secs(3))?;
        super::format::check_and_migrate(dir)?;
        let log_dir = dir.join("log");
        let contents = wal::read(&log_dir).map_err(io_err("read the store's log in", &log_dir))?;
        let records = contents.records.len();
        let (mut index, current, compacted) = Index::from_records(contents.records);
        while !index.compact(compacted, usize::MAX).1 {}
        let wal = Wal::create(&log_dir, contents.next_seq).map_err(io_err("start a log segment in", &log_dir))?;
        if records > 0 {
            tracing::info!(records, revision = current, keys = index.keys.len(), "replayed the store's log");
        }
        let (durable, _) = watch::channel((current, None));
        let (events, _) = broadcast::channel(opts.watch_buffer.max(16));
        let (snap_tx, snap_rx) = std::sync::mpsc::channel();
        let inner = Arc::new(Inner {
            dir: log_dir,
            index: RwLock::new(index),
            pending: Mutex::new(Vec::new()),
            wal: Mutex::new(LogState { wal, buf: Vec::new() }),
            durable,
            events,
            current: AtomicI64::new(current),
            compacted: AtomicI64::new(compacted),
            disk: AtomicU64::new(contents.bytes),
            snapshots: Mutex::new(snap_tx),
            _lock: lock,
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("rk-store-snapshot".into())
            .spawn(move || snapshotter(weak, snap_rx, opts))
            .map_err(|e| StorageError::Backend(format!("spawn the snapshot thread: {e}")))?;
        Ok(LogStore { inner })
    }

    /// Every live key at the durable revision, as log records (puts, then a meta
    /// record), for a user snapshot: `(revision, keys, records)`. Consistent: taken
    /// under the index lock at one revision.
    pub fn export(&self) -> (Rev, u64, Vec<u8>) {
        let idx = self.read_index();
        let rev = self.current_rev();
        let mut buf = Vec::with_capacity(idx.bytes as usize / 2 + 64);
        let mut keys = 0;
        for (key, vs) in &idx.keys {
            if let Some(v) = at_rev(vs, rev).filter(|v| v.put) {
                wal::encode(KIND_PUT, v.rev, v.create_rev, key, &v.value, &mut buf);
                keys += 1;
            }
        }
        // History before the snapshot is not in it: restored, it is compacted away.
        wal::encode(KIND_META, rev, rev, "", &[], &mut buf);
        (rev, keys, buf)
    }

    /// Bytes the store's files take on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.inner.disk.load(Ordering::Relaxed)
    }

    fn read_index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.inner.index.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies one write under the index lock; `decide` sees the newest value (durable
    /// or not) and the revision to be assigned, and returns the version to write.
    /// Returns the event once it is durable.
    async fn write(
        &self,
        key: &str,
        decide: impl FnOnce(Option<KeyValue>, Rev) -> Result<(EventKind, Rev, Bytes), StorageError>,
    ) -> Result<Arc<Event>, StorageError> {
        check_key(key)?;
        if let Some(e) = &self.inner.durable.borrow().1 {
            return Err(StorageError::Backend(format!("store is not durable: {e}")));
        }
        let decided = {
            let mut idx = self.inner.index.write().unwrap_or_else(|e| e.into_inner());
            let newest = idx.keys.get(key).and_then(|vs| vs.last());
            let newest_rev = newest.map(|v| v.rev).unwrap_or(0);
            let prev = newest.filter(|v| v.put).map(|v| kv(key, v));
            let rev = idx.last + 1;
            match decide(prev.clone(), rev) {
                Err(e) => Err((e, newest_rev)),
                Ok((kind, create_rev, value)) => {
                    idx.push(key, Version { rev, create_rev, put: kind == EventKind::Put, value: value.clone() });
                    idx.last = rev;
                    let ev = Arc::new(Event {
                        kind,
                        kv: KeyValue { key: key.to_string(), value, create_rev, mod_rev: rev },
                        prev,
                    });
                    self.inner.pending.lock().unwrap_or_else(|e| e.into_inner()).push(ev.clone());
                    Ok(ev)
                }
            }
        };
        match decided {
            Ok(ev) => {
                self.wait_durable(ev.kv.mod_rev).await?;
                Ok(ev)
            }
            Err((e, newest)) => {
                // Refused because of a write not yet durable: answer once it is, so the
                // caller's next read sees what it conflicted with.
                if newest > self.current_rev() {
                    self.wait_durable(newest).await?;
                }
                Err(e)
            }
        }
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
                // A lone write syncs right here (a worker thread blocked for one
                // fdatasync); a batch hands this worker's other tasks to a fresh thread
                // first, so requests keep being served and gather into the next batch.
                let batch = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner()).len();
                let multi = tokio::runtime::Handle::try_current()
                    .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
                if multi && batch > 1 {
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

    /// Compacts synchronously (on a blocking thread).
    fn compact_blocking(&self, rev: Rev) -> Result<(), StorageError> {
        // The marker first: once compaction is visible, a restart must keep it.
        let current = self.current_rev();
        self.inner.with_log(|st| {
            st.buf.clear();
            wal::encode(KIND_META, current, rev, "", &[], &mut st.buf);
            st.wal.append(&st.buf).map_err(io_err("append to the log in", &self.inner.dir))
        })?;
        self.inner.compacted.fetch_max(rev, Ordering::AcqRel);
        let mut total = 0;
        loop {
            let (removed, done) =
                self.inner.index.write().unwrap_or_else(|e| e.into_inner()).compact(rev, COMPACT_BATCH);
            total += removed;
            if done {
                break;
            }
            std::thread::yield_now();
        }
        tracing::debug!(rev, removed = total, "compacted store");
        let _ = self.inner.snapshots.lock().unwrap_or_else(|e| e.into_inner()).send(());
        Ok(())
    }
}

impl Inner {
    /// One group commit, by the holder of the log lock: append every pending write
    /// with one fdatasync, then publish the durable revision and the events it covers.
    fn commit(&self, st: &mut LogState) {
        if self.durable.borrow().1.is_some() {
            return;
        }
        let batch: Vec<Arc<Event>> = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        let Some(target) = batch.last().map(|e| e.kv.mod_rev) else { return };
        st.buf.clear();
        for ev in &batch {
            let kind = if ev.kind == EventKind::Put { KIND_PUT } else { KIND_DELETE };
            wal::encode(kind, ev.kv.mod_rev, ev.kv.create_rev, &ev.kv.key, &ev.kv.value, &mut st.buf);
        }
        if let Err(e) = st.wal.append(&st.buf) {
            let e = format!("appending to the log in {}: {e}", self.dir.display());
            tracing::error!(error = %e, "store write failed; refusing further writes");
            self.durable.send_modify(|d| d.1 = Some(e));
            return;
        }
        self.disk.fetch_add(st.buf.len() as u64, Ordering::Relaxed);
        // Durable first: a watcher that subscribes, then reads the durable revision,
        // finds each event either in history or in its receiver.
        self.current.store(target, Ordering::Release);
        self.durable.send_modify(|d| d.0 = target);
        for ev in batch {
            let _ = self.events.send(ev);
        }
    }

    /// Runs `f` holding the log lock (committing whatever is pending first), then wakes
    /// writers that found the log busy meanwhile, so one of them leads the next commit.
    fn with_log<T>(&self, f: impl FnOnce(&mut LogState) -> T) -> T {
        let mut st = self.wal.lock().unwrap_or_else(|e| e.into_inner());
        self.commit(&mut st);
        let out = f(&mut st);
        drop(st);
        self.durable.send_modify(|_| {});
        out
    }

    /// Writes a snapshot when the log files outgrow `factor` times the data kept.
    fn maybe_snapshot(&self, min_bytes: u64, factor: u64) -> Result<(), StorageError> {
        let disk = self.disk.load(Ordering::Relaxed);
        let kept = self.index.read().unwrap_or_else(|e| e.into_inner()).bytes;
        if disk < min_bytes || disk < factor * kept {
            return Ok(());
        }
        let t = std::time::Instant::now();
        // Everything at or below the durable revision is in the segments closed here.
        let (seq, upto) = self.with_log(|st| {
            let seq = st.wal.rotate().map_err(io_err("start a log segment in", &self.dir))?;
            Ok::<_, StorageError>((seq, self.durable.borrow().0))
        })?;
        // The versions are taken under the index lock by reference (values are shared
        // buffers) and encoded after it, so writers wait only for the copy of the index.
        let (versions, bytes) = {
            let idx = self.index.read().unwrap_or_else(|e| e.into_inner());
            let versions: Vec<(Arc<str>, Version)> = idx
                .keys
                .iter()
                .flat_map(|(key, vs)| vs.iter().filter(|v| v.rev <= upto).map(|v| (key.clone(), v.clone())))
                .collect();
            (versions, idx.bytes)
        };
        let mut buf = Vec::with_capacity(bytes as usize + 64);
        for (key, v) in versions {
            let kind = if v.put { KIND_PUT } else { KIND_DELETE };
            wal::encode(kind, v.rev, v.create_rev, &key, &v.value, &mut buf);
        }
        let compacted = self.compacted.load(Ordering::Acquire);
        wal::encode(KIND_META, upto, compacted, "", &[], &mut buf);
        let after = wal::install_snapshot(&self.dir, seq, &buf).map_err(io_err("write a snapshot in", &self.dir))?;
        self.disk.store(after, Ordering::Relaxed);
        tracing::info!(
            before_bytes = disk,
            after_bytes = after,
            revision = upto,
            elapsed_ms = t.elapsed().as_millis() as u64,
            "snapshotted the store's log"
        );
        Ok(())
    }
}

/// Snapshots the log when it has grown enough, checking on a timer and after each
/// compaction; ends with the store.
fn snapshotter(inner: std::sync::Weak<Inner>, rx: std::sync::mpsc::Receiver<()>, opts: LogStoreOptions) {
    // (when, revision) at the previous look; none before the first.
    let mut last: Option<(std::time::Instant, Rev)> = None;
    loop {
        if let Err(std::sync::mpsc::RecvTimeoutError::Disconnected) = rx.recv_timeout(opts.snapshot_check) {
            return;
        }
        let Some(inner) = inner.upgrade() else { return };
        let now = (std::time::Instant::now(), inner.current.load(Ordering::Acquire));
        let rate = last.map_or(0.0, |(t, r)| (now.1 - r) as f64 / now.0.duration_since(t).as_secs_f64().max(1e-3));
        last = Some(now);
        let factor = if rate > BUSY_WRITES_PER_SEC { 8 } else { 2 };
        if let Err(e) = inner.maybe_snapshot(opts.snapshot_min_bytes, factor) {
            tracing::warn!(error = %e, "snapshotting the store failed; the log is kept as it is");
        }
    }
}

#[async_trait::async_trait]
impl Storage for LogStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StorageError> {
        let current = self.current_rev();
        let idx = self.read_index();
        Ok(idx.keys.get(key).and_then(|vs| at_rev(vs, current)).filter(|v| v.put).map(|v| kv(key, v)))
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
        let lower = match start_after {
            Some(s) if s >= prefix => Bound::Excluded(s),
            _ => Bound::Included(prefix),
        };
        let mut kvs = Vec::new();
        let mut more = false;
        let idx = self.read_index();
        for (key, vs) in idx.keys.range::<str, _>((lower, Bound::Unbounded)) {
            if !key.starts_with(prefix) {
                break;
            }
            if let Some(v) = at_rev(vs, rev).filter(|v| v.put) {
                if limit > 0 && kvs.len() == limit {
                    more = true;
                    break;
                }
                kvs.push(kv(key, v));
            }
        }
        Ok(ListResult { kvs, rev, more })
    }

    async fn count(&self, prefix: &str) -> Result<usize, StorageError> {
        let current = self.current_rev();
        let idx = self.read_index();
        Ok(idx
            .keys
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, vs)| at_rev(vs, current).is_some_and(|v| v.put))
            .count())
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
                Some(p) if expected.is_none_or(|e| e == p.mod_rev) => Ok((EventKind::Delete, p.create_rev, p.value)),
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
        let history: Vec<_> = if after >= durable {
            Vec::new()
        } else {
            let idx = self.read_index();
            idx.revs
                .range(after + 1..=durable)
                .filter(|(_, key)| key.starts_with(prefix))
                .filter_map(|(rev, key)| idx.event(key, *rev))
                .map(|ev| Ok(Arc::new(ev)))
                .collect()
        };
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
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.compact_blocking(rev))
            .await
            .map_err(|e| StorageError::Backend(format!("compaction task: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::conformance;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn log_store_passes_conformance() {
        let dir = tempfile::tempdir().unwrap();
        let n = std::sync::atomic::AtomicUsize::new(0);
        conformance::run_all(|| {
            let p = dir.path().join(n.fetch_add(1, Ordering::SeqCst).to_string());
            async move { LogStore::open(&p, LogStoreOptions::default()).unwrap() }
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn revision_survives_restart_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let last = {
            let s = LogStore::open(dir.path(), LogStoreOptions::default()).unwrap();
            let r = s.create("/a", Bytes::from_static(b"1")).await.unwrap();
            s.delete("/a", Some(r)).await.unwrap();
            let last = s.create("/b", Bytes::from_static(b"2")).await.unwrap();
            s.compact(last).await.unwrap();
            last
        };
        let s = LogStore::open(dir.path(), LogStoreOptions::default()).unwrap();
        assert_eq!(s.current_rev(), last);
        assert_eq!(s.compacted_rev(), last);
        let r = s.create("/c", Bytes::from_static(b"3")).await.unwrap();
        assert!(r > last, "revision never goes backwards across restart");
        assert_eq!(s.get("/b").await.unwrap().unwrap().value, Bytes::from_static(b"2"));
        assert!(s.get("/a").await.unwrap().is_none());
    }

    /// Compaction gives disk space back: a snapshot replaces the log, and what a
    /// restart reads from it is the same data, with deleted keys staying deleted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compaction_gives_disk_space_back() {
        let dir = tempfile::tempdir().unwrap();
        let opts = LogStoreOptions {
            snapshot_min_bytes: 256 << 10,
            snapshot_check: Duration::from_millis(20),
            ..Default::default()
        };
        let value = Bytes::from(vec![b'x'; 8 << 10]);
        let (grown, last) = {
            let s = LogStore::open(dir.path(), opts.clone()).unwrap();
            let mut rev = s.create("/k/kept", value.clone()).await.unwrap();
            for _ in 0..200 {
                rev = s.update("/k/kept", value.clone(), rev).await.unwrap();
            }
            let gone = s.create("/k/gone", value.clone()).await.unwrap();
            s.delete("/k/gone", Some(gone)).await.unwrap();
            let grown = s.disk_bytes();
            assert!(grown > 1 << 20, "the log grew: {grown}");
            let last = s.current_rev();
            s.compact(last).await.unwrap();
            let mut waited = 0;
            while s.disk_bytes() > 64 << 10 && waited < 500 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                waited += 1;
            }
            let after = s.disk_bytes();
            assert!(after < 64 << 10, "the snapshot gave space back: {grown} -> {after} bytes");
            (grown, last)
        };
        let on_disk: u64 =
            std::fs::read_dir(dir.path().join("log")).unwrap().flatten().map(|e| e.metadata().unwrap().len()).sum();
        assert!(on_disk < grown / 10, "files on disk: {on_disk}");
        let s = LogStore::open(dir.path(), opts).unwrap();
        assert_eq!(s.current_rev(), last);
        assert_eq!(s.compacted_rev(), last);
        assert_eq!(s.get("/k/kept").await.unwrap().unwrap().value, value);
        assert!(s.get("/k/gone").await.unwrap().is_none());
        assert_eq!(s.count("/k/").await.unwrap(), 1);
    }

    /// Many concurrent writers on a multi-threaded runtime finish (the workload under
    /// which sled 0.34 deadlocked), and every write is readable afterwards.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_all_complete() {
        let dir = tempfile::tempdir().unwrap();
        let s = LogStore::open(dir.path(), LogStoreOptions::default()).unwrap();
        let mut tasks = Vec::new();
        for w in 0..64 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..50 {
                    s.create(&format!("/c/{w}/{i}"), Bytes::from(vec![b'v'; 1024])).await.unwrap();
                }
            }));
        }
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(60), t).await.expect("writers finish").unwrap();
        }
        assert_eq!(s.count("/c/").await.unwrap(), 64 * 50);
        assert_eq!(s.current_rev(), 64 * 50);
    }
}
