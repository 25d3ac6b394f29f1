//! The conformance suite every [`Storage`] backend passes.
//!
//! Each `check_*` takes a fresh, empty store and panics with a message on a violation,
//! as kubernetes/apiserver's `pkg/storage/testing/store_tests.go` does for its backends.
//! Backends call [`run_all`] from their tests; restart behaviour needs a reopen and lives
//! with each backend.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use super::storage::{EventKind, Storage, StorageError};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Runs every check, each on a fresh store from `fresh`.
pub async fn run_all<S: Storage + Clone, F, Fut>(fresh: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = S>,
{
    check_create_get(&fresh().await).await;
    check_cas_update_delete(&fresh().await).await;
    check_list_paging_at_revision(&fresh().await).await;
    check_watch_history_then_live(&fresh().await).await;
    check_compaction(&fresh().await).await;
    check_concurrent_writers(&fresh().await).await;
}

/// Create, get, and the revision rules around them.
pub async fn check_create_get(s: &impl Storage) {
    assert_eq!(s.current_rev(), 0, "a new store starts at revision 0");
    assert!(s.get("/a").await.unwrap().is_none());
    let r1 = s.create("/a", b("1")).await.unwrap();
    assert!(r1 > 0);
    let kv = s.get("/a").await.unwrap().expect("created key is readable");
    assert_eq!((kv.value, kv.create_rev, kv.mod_rev), (b("1"), r1, r1));
    match s.create("/a", b("2")).await {
        Err(StorageError::AlreadyExists(_)) => {}
        other => panic!("second create must fail with AlreadyExists, got {other:?}"),
    }
    assert_eq!(s.current_rev(), r1, "a failed write takes no revision");
    let r2 = s.create("/b", b("2")).await.unwrap();
    assert!(r2 > r1, "revisions increase");
}

/// Compare-and-swap update and delete.
pub async fn check_cas_update_delete(s: &impl Storage) {
    let r1 = s.create("/k", b("v1")).await.unwrap();
    let r2 = s.update("/k", b("v2"), r1).await.unwrap();
    assert!(r2 > r1);
    match s.update("/k", b("v3"), r1).await {
        Err(StorageError::Conflict { found, .. }) => assert_eq!(found, r2),
        other => panic!("stale update must conflict, got {other:?}"),
    }
    let kv = s.get("/k").await.unwrap().unwrap();
    assert_eq!((kv.value, kv.create_rev, kv.mod_rev), (b("v2"), r1, r2));
    match s.delete("/k", Some(r1)).await {
        Err(StorageError::Conflict { .. }) => {}
        other => panic!("stale delete must conflict, got {other:?}"),
    }
    let (rd, last) = s.delete("/k", Some(r2)).await.unwrap();
    assert!(rd > r2);
    assert_eq!(last.value, b("v2"));
    assert!(s.get("/k").await.unwrap().is_none());
    match s.update("/k", b("v"), rd).await {
        Err(StorageError::NotFound(_)) => {}
        other => panic!("update of a deleted key must be NotFound, got {other:?}"),
    }
    match s.delete("/k", None).await {
        Err(StorageError::NotFound(_)) => {}
        other => panic!("delete of a deleted key must be NotFound, got {other:?}"),
    }
    // Re-creating starts a new incarnation.
    let r3 = s.create("/k", b("again")).await.unwrap();
    assert_eq!(s.get("/k").await.unwrap().unwrap().create_rev, r3);
}

/// Lists by prefix with limit and continue, consistent at the first page's revision.
pub async fn check_list_paging_at_revision(s: &impl Storage) {
    for i in 0..10 {
        s.create(&format!("/p/{i:02}"), b(&i.to_string())).await.unwrap();
    }
    s.create("/pother", b("x")).await.unwrap();
    s.create("/q/0", b("x")).await.unwrap();
    let page1 = s.list("/p/", None, 4, 0).await.unwrap();
    assert_eq!(page1.kvs.len(), 4);
    assert!(page1.more);
    let at = page1.rev;
    // Changes after the first page must not show in later pages read at its revision.
    s.delete("/p/05", None).await.unwrap();
    s.create("/p/055", b("new")).await.unwrap();
    let kv7 = s.get("/p/07").await.unwrap().unwrap();
    s.update("/p/07", b("changed"), kv7.mod_rev).await.unwrap();
    let mut keys: Vec<String> = page1.kvs.iter().map(|k| k.key.clone()).collect();
    let mut last = keys.last().cloned();
    loop {
        let page = s.list("/p/", last.as_deref(), 4, at).await.unwrap();
        assert_eq!(page.rev, at);
        for kv in &page.kvs {
            if kv.key == "/p/07" {
                assert_eq!(kv.value, b("7"), "a list at a revision shows values as of then");
            }
        }
        keys.extend(page.kvs.iter().map(|k| k.key.clone()));
        last = keys.last().cloned();
        if !page.more {
            break;
        }
    }
    let want: Vec<String> = (0..10).map(|i| format!("/p/{i:02}")).collect();
    assert_eq!(keys, want, "paged list at a revision is that revision's full list");
    let now = s.list("/p/", None, 0, 0).await.unwrap();
    assert_eq!(now.kvs.len(), 10);
    assert!(now.kvs.iter().any(|k| k.key == "/p/055"));
    assert!(!now.kvs.iter().any(|k| k.key == "/p/05"));
    assert_eq!(s.count("/p/").await.unwrap(), 10);
    match s.list("/p/", None, 0, s.current_rev() + 100).await {
        Err(StorageError::FutureRevision { .. }) => {}
        other => panic!("list in the future must fail, got {:?}", other.map(|r| r.rev)),
    }
}

/// Watch from a revision replays history, then follows live writes, in order.
pub async fn check_watch_history_then_live(s: &impl Storage) {
    let r0 = s.current_rev();
    let r1 = s.create("/w/a", b("1")).await.unwrap();
    s.create("/x/ignored", b("x")).await.unwrap();
    let r2 = s.update("/w/a", b("2"), r1).await.unwrap();
    let mut w = s.watch("/w/", r0).unwrap();
    let e1 = next_event(&mut w).await;
    assert_eq!((e1.kind, e1.kv.mod_rev, e1.prev.is_none()), (EventKind::Put, r1, true));
    let e2 = next_event(&mut w).await;
    assert_eq!((e2.kind, e2.kv.mod_rev), (EventKind::Put, r2));
    assert_eq!(e2.prev.as_ref().map(|p| p.value.clone()), Some(b("1")));
    let (rd, _) = s.delete("/w/a", None).await.unwrap();
    let r3 = s.create("/w/b", b("3")).await.unwrap();
    let e3 = next_event(&mut w).await;
    assert_eq!((e3.kind, e3.kv.mod_rev, e3.kv.value.clone()), (EventKind::Delete, rd, b("2")));
    let e4 = next_event(&mut w).await;
    assert_eq!((e4.kind, e4.kv.mod_rev), (EventKind::Put, r3));
    // A watch from the current revision sees only what follows.
    let mut w2 = s.watch("/w/", s.current_rev()).unwrap();
    let r4 = s.create("/w/c", b("4")).await.unwrap();
    assert_eq!(next_event(&mut w2).await.kv.mod_rev, r4);
}

/// Compaction removes history: reads and watches below it are refused, latest values stay.
pub async fn check_compaction(s: &impl Storage) {
    let r1 = s.create("/c/a", b("1")).await.unwrap();
    let r2 = s.update("/c/a", b("2"), r1).await.unwrap();
    s.create("/c/gone", b("g")).await.unwrap();
    s.delete("/c/gone", None).await.unwrap();
    let r3 = s.create("/c/b", b("3")).await.unwrap();
    s.compact(r3).await.unwrap();
    assert_eq!(s.compacted_rev(), r3);
    match s.watch("/c/", r1) {
        Err(StorageError::Compacted { compacted, .. }) => assert_eq!(compacted, r3),
        Err(e) => panic!("watch below compaction must be Compacted, got {e}"),
        Ok(_) => panic!("watch below compaction must be Compacted, got a stream"),
    }
    match s.list("/c/", None, 0, r2).await {
        Err(StorageError::Compacted { .. }) => {}
        other => panic!("list below compaction must be Compacted, got {:?}", other.map(|r| r.rev)),
    }
    let now = s.list("/c/", None, 0, r3).await.unwrap();
    let vals: Vec<_> = now.kvs.iter().map(|k| (k.key.as_str(), k.value.clone())).collect();
    assert_eq!(vals, vec![("/c/a", b("2")), ("/c/b", b("3"))]);
    // Writes go on, revisions keep growing.
    let r4 = s.update("/c/a", b("4"), r2).await.unwrap();
    assert!(r4 > r3);
    assert_eq!(s.watch("/c/", r3).unwrap().next().await.unwrap().unwrap().kv.mod_rev, r4);
}

/// Many concurrent writers: every write lands once, revisions are unique.
pub async fn check_concurrent_writers(s: &(impl Storage + Clone)) {
    let mut tasks = Vec::new();
    for t in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..25 {
                revs.push(s.create(&format!("/cc/{t}/{i}"), b("x")).await.unwrap());
            }
            revs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "every write gets its own revision");
    assert_eq!(s.count("/cc/").await.unwrap(), 200);
}

async fn next_event(w: &mut super::storage::WatchStream) -> std::sync::Arc<super::storage::Event> {
    tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("watch event in time")
        .expect("stream open")
        .expect("no error")
}
