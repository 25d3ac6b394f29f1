//! The Storage contract: a bytes-level, revisioned key-value store with etcd semantics.
//!
//! One global, monotonic revision numbers every write; it is every object's
//! `resourceVersion`. See kine `pkg/server/types.go` and kubernetes/apiserver
//! `pkg/storage/interfaces.go` for the shapes this follows.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;

/// A store revision (etcd's `mod_revision`), the source of every `resourceVersion`.
pub type Rev = i64;

/// One stored key at one revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The full key, for example `/registry/configmaps/default/cm1`.
    pub key: String,
    /// The value as written.
    pub value: Bytes,
    /// The revision that created the key (its current incarnation).
    pub create_rev: Rev,
    /// The revision of the last write to the key.
    pub mod_rev: Rev,
}

/// What a watch event reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A create or an update.
    Put,
    /// A delete; the event's value is the last value the key held.
    Delete,
}

/// One change, as delivered to watchers.
#[derive(Clone, Debug)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change; for a delete, the last value with `mod_rev` set to the
    /// deleting revision (as etcd and the Kubernetes watch cache report it).
    pub kv: KeyValue,
    /// The value before the change, if there was one.
    pub prev: Option<KeyValue>,
}

/// A page of a list.
#[derive(Clone, Debug)]
pub struct ListResult {
    /// The keys found, in key order.
    pub kvs: Vec<KeyValue>,
    /// The revision the list was read at.
    pub rev: Rev,
    /// True when more keys follow the last one returned.
    pub more: bool,
}

/// A stream of watch events; an error ends it.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Arc<Event>, StorageError>> + Send>>;

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The key does not exist.
    #[error("key {0} not found")]
    NotFound(String),
    /// A create found the key present.
    #[error("key {0} already exists")]
    AlreadyExists(String),
    /// An update or delete expected another revision of the key.
    #[error("key {key} was modified: expected revision {expected}, found {found}")]
    Conflict {
        /// The key.
        key: String,
        /// The revision the caller expected.
        expected: Rev,
        /// The revision found (0 when the key is gone).
        found: Rev,
    },
    /// The requested revision has been compacted away.
    #[error("required revision {requested} has been compacted (compacted revision {compacted})")]
    Compacted {
        /// The revision asked for.
        requested: Rev,
        /// The store's compacted revision.
        compacted: Rev,
    },
    /// The requested revision is newer than the store.
    #[error("revision {requested} is in the future (current revision {current})")]
    FutureRevision {
        /// The revision asked for.
        requested: Rev,
        /// The current revision.
        current: Rev,
    },
    /// A watcher fell too far behind the event stream.
    #[error("watcher fell behind by {0} events")]
    Lagged(u64),
    /// The backend failed.
    #[error("storage backend: {0}")]
    Backend(String),
}

/// The storage contract every backend implements (the embedded log store here; etcd later).
///
/// Writes return only once durable. `update` and `delete` are compare-and-swap on the
/// key's `mod_rev`.
#[async_trait::async_trait]
pub trait Storage: Send + Sync + 'static {
    /// The latest value of a key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StorageError>;

    /// Keys with `prefix`, in order, starting strictly after `start_after` if given, at
    /// revision `rev` (0 = current), at most `limit` (0 = no limit).
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        rev: Rev,
    ) -> Result<ListResult, StorageError>;

    /// Number of live keys under `prefix` at the current revision.
    async fn count(&self, prefix: &str) -> Result<usize, StorageError>;

    /// Create a key that must not exist; returns the new revision.
    async fn create(&self, key: &str, value: Bytes) -> Result<Rev, StorageError>;

    /// Replace a key whose current `mod_rev` is `expected`; returns the new revision.
    async fn update(&self, key: &str, value: Bytes, expected: Rev) -> Result<Rev, StorageError>;

    /// Delete a key, guarded by `expected` (its `mod_rev`) when given; returns the
    /// deleting revision and the last value.
    async fn delete(&self, key: &str, expected: Option<Rev>) -> Result<(Rev, KeyValue), StorageError>;

    /// Events for keys under `prefix` with revision greater than `after`: history first,
    /// then live. A compacted `after` is [`StorageError::Compacted`].
    fn watch(&self, prefix: &str, after: Rev) -> Result<WatchStream, StorageError>;

    /// The newest revision.
    fn current_rev(&self) -> Rev;

    /// The compacted revision: reads and watches below it fail.
    fn compacted_rev(&self) -> Rev;

    /// Drop history older than `rev` (keeping each key's value as of `rev`).
    async fn compact(&self, rev: Rev) -> Result<(), StorageError>;
}
