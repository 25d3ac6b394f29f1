//! The embedded datastore: the [`Storage`] contract that every backend implements, the
//! in-process log-structured store that stands in for etcd, and the conformance suite every backend passes.

pub mod conformance;
pub mod format;
pub mod log_store;
pub mod snapshot;
pub mod storage;
pub mod wal;

pub use log_store::{LogStore, LogStoreOptions};
pub use storage::{Event, EventKind, KeyValue, ListResult, Rev, Storage, StorageError, WatchStream};
