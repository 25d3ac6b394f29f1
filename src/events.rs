//! The event recorder of rk's components (controllers, scheduler, kubelet): writes
//! `events.k8s.io/v1` Events and folds repeats of the same event into a `series`, as
//! client-go's recorder does.
//!
//! It takes kube-runtime's `Event`, `EventType` and `Reporter`, but keeps its own
//! cache of recent events: kube-runtime's `Recorder` scans its whole cache on every
//! publish, so a controller that records one event per pod slows down with the number
//! of pods (a tenth of the server's CPU at 30,000 pods). This cache is bounded like
//! client-go's (an LRU of 4,096) and forgets events not seen for six minutes, in
//! constant time per publish.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
pub use kube::runtime::events::{Event, EventType, Reporter};
use serde_json::json;

/// Events remembered at most (client-go's `maxLruCacheEntries`).
const CAPACITY: usize = 4096;
/// How long an event is remembered after it was last seen.
const TTL: Duration = Duration::from_secs(6 * 60);

/// What the recorder remembers of an event it wrote.
struct Seen {
    namespace: String,
    name: String,
    count: i32,
    /// The number of its newest entry in `Cache::order`.
    seq: u64,
}

#[derive(Default)]
struct Cache {
    events: HashMap<String, Seen>,
    /// (when seen, number, key), oldest first; entries whose event was seen again
    /// later (under a newer number) are stale.
    order: VecDeque<(Instant, u64, String)>,
    next: u64,
}

impl Cache {
    /// Forgets events not seen within [`TTL`] and the least recently seen beyond
    /// [`CAPACITY`].
    fn trim(&mut self, now: Instant) {
        while let Some((at, seq, key)) = self.order.front() {
            let current = self.events.get(key).is_some_and(|s| s.seq == *seq);
            let expired = now.duration_since(*at) >= TTL;
            if current && !expired && self.events.len() <= CAPACITY {
                break;
            }
            if current {
                self.events.remove(key);
            }
            self.order.pop_front();
        }
    }

    /// Records that `key` was seen at `now`; returns the series count and name to
    /// patch when it was seen before.
    fn repeat(&mut self, key: &str, now: Instant) -> Option<(String, String, i32)> {
        self.trim(now);
        let s = self.events.get_mut(key)?;
        s.count += 1;
        s.seq = self.next;
        self.order.push_back((now, self.next, key.to_string()));
        self.next += 1;
        Some((s.namespace.clone(), s.name.clone(), s.count))
    }

    fn insert(&mut self, key: String, namespace: String, name: String, now: Instant) {
        self.order.push_back((now, self.next, key.clone()));
        self.events.insert(key, Seen { namespace, name, count: 1, seq: self.next });
        self.next += 1;
        self.trim(now);
    }
}

/// Publishes events for one reporting component. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    reporter: Reporter,
    cache: Arc<Mutex<Cache>>,
}

fn key(ev: &Event, r: &ObjectReference) -> String {
    let object = |r: &ObjectReference| {
        [&r.api_version, &r.kind, &r.namespace, &r.name, &r.uid, &r.field_path]
            .map(|f| f.as_deref().unwrap_or(""))
            .join("\u{1}")
    };
    let ty = match ev.type_ {
        EventType::Normal => "Normal",
        EventType::Warning => "Warning",
    };
    let related = ev.secondary.as_ref().map(object).unwrap_or_default();
    [ty, &ev.action, &ev.reason, &object(r), &related].join("\u{0}")
}

impl Recorder {
    pub fn new(client: kube::Client, reporter: Reporter) -> Recorder {
        Recorder { client, reporter, cache: Arc::default() }
    }

    /// Writes `ev` about `regarding`, or counts it into the series of the same event
    /// written before. Events of cluster-scoped objects go to `default`.
    pub async fn publish(&self, ev: &Event, regarding: &ObjectReference) -> Result<(), kube::Error> {
        let key = key(ev, regarding);
        let now = k8s_openapi::jiff::Timestamp::now();
        let repeat = self.cache.lock().unwrap().repeat(&key, Instant::now());
        if let Some((ns, name, count)) = repeat {
            let series = EventSeries { count, last_observed_time: MicroTime(now) };
            let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &ns);
            api.patch(&name, &PatchParams::default(), &Patch::Merge(json!({"series": series}))).await?;
            return Ok(());
        }
        let ns = regarding.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into());
        let name =
            format!("{}.{:x}", regarding.name.as_deref().unwrap_or(&self.reporter.controller), now.as_nanosecond());
        let event = K8sEvent {
            action: Some(ev.action.clone()),
            reason: Some(ev.reason.clone()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            related: ev.secondary.clone(),
            note: ev.note.clone(),
            metadata: ObjectMeta { namespace: Some(ns.clone()), name: Some(name.clone()), ..Default::default() },
            reporting_controller: Some(self.reporter.controller.clone()),
            reporting_instance: Some(
                self.reporter.instance.clone().unwrap_or_else(|| self.reporter.controller.clone()),
            ),
            type_: Some(match ev.type_ {
                EventType::Normal => "Normal".into(),
                EventType::Warning => "Warning".into(),
            }),
            ..Default::default()
        };
        Api::<K8sEvent>::namespaced(self.client.clone(), &ns).create(&PostParams::default(), &event).await?;
        self.cache.lock().unwrap().insert(key, ns, name, Instant::now());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_counted_until_forgotten() {
        let mut c = Cache::default();
        let t0 = Instant::now();
        assert!(c.repeat("a", t0).is_none());
        c.insert("a".into(), "ns".into(), "a.1".into(), t0);
        assert_eq!(c.repeat("a", t0 + Duration::from_secs(1)), Some(("ns".into(), "a.1".into(), 2)));
        assert_eq!(c.repeat("a", t0 + Duration::from_secs(300)), Some(("ns".into(), "a.1".into(), 3)));
        // Six minutes after it was last seen, not after it was first written.
        assert!(c.repeat("a", t0 + Duration::from_secs(300) + TTL).is_none());
        assert!(c.events.is_empty() && c.order.is_empty());
    }

    #[test]
    fn the_least_recently_seen_go_beyond_capacity() {
        let mut c = Cache::default();
        let t0 = Instant::now();
        for i in 0..CAPACITY {
            c.insert(format!("e{i}"), "ns".into(), format!("n{i}"), t0);
        }
        // e0 is seen again, so e1 is the one to go.
        assert!(c.repeat("e0", t0).is_some());
        c.insert("new".into(), "ns".into(), "new".into(), t0);
        assert_eq!(c.events.len(), CAPACITY);
        assert!(c.events.contains_key("e0") && !c.events.contains_key("e1"));
    }
}
