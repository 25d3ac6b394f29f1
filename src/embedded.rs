//! The embedded datastore: the [`Storage`] contract that every backend implements, the
//! sled store that stands in for etcd, and the conformance suite every backend passes.

pub mod conformance;
pub mod sled_store;
pub mod storage;
pub mod wal;

pub use sled_store::{SledStore, SledStoreOptions};
pub use storage::{Event, EventKind, KeyValue, ListResult, Rev, Storage, StorageError, WatchStream};
