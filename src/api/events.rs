//! events.k8s.io/v1 Events and core/v1 Events are one resource in two versions, stored
//! once in the core/v1 form, as Kubernetes does (pkg/apis/events/v1/conversion.go):
//! what a controller records through events.k8s.io shows in `kubectl get events` and
//! `kubectl describe`, and the other way round.

use serde_json::{Map, Value, json};

/// (events.k8s.io/v1 field, core/v1 field) pairs that only change name.
const RENAMES: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn rename(obj: &Value, api_version: &str, to_core: bool) -> Value {
    let Some(o) = obj.as_object() else { return obj.clone() };
    let mut out = Map::with_capacity(o.len());
    for (k, v) in o {
        let k = RENAMES
            .iter()
            .find(|(new, old)| if to_core { new == k } else { old == k })
            .map(|(new, old)| if to_core { *old } else { *new })
            .unwrap_or(k.as_str());
        out.insert(k.to_string(), v.clone());
    }
    out.insert("apiVersion".into(), json!(api_version));
    out.insert("kind".into(), json!("Event"));
    Value::Object(out)
}

/// The stored (core/v1) form of an events.k8s.io/v1 Event.
pub fn to_core(v1: &Value) -> Value {
    rename(v1, "v1", true)
}

/// The events.k8s.io/v1 form of a stored (core/v1) Event.
pub fn from_core(core: &Value) -> Value {
    rename(core, "events.k8s.io/v1", false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let v1 = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"},
            "regarding": {"kind": "Pod", "name": "p"}, "note": "pulled", "reason": "Pulled", "type": "Normal",
            "reportingController": "kubelet", "reportingInstance": "n1", "action": "Pull", "eventTime": "2026-01-01T00:00:00.000000Z"});
        let core = to_core(&v1);
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core["involvedObject"]["name"], "p");
        assert_eq!(core["message"], "pulled");
        assert_eq!(core["reportingComponent"], "kubelet");
        assert_eq!(from_core(&core), v1);
    }
}
