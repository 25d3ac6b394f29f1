//! Parsing only the parts of a stored object a selector looks at.
//!
//! A list or watch with a label or field selector must test every stored object, and
//! most fail the test. Building a full `serde_json::Value` of each (every string, map
//! and array allocated, then freed) is what made such requests costly; a [`Paths`]
//! parse keeps only the wanted members (`metadata.labels`, `spec.nodeName`, ...) and
//! skips the rest of the bytes without allocating.

use std::collections::HashMap;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// The members to keep, as a tree of dotted paths.
#[derive(Debug)]
pub enum Paths {
    /// The whole value (a path ends here).
    Whole,
    /// Only these members of an object.
    Members(HashMap<String, Paths>),
}

impl Paths {
    /// The tree of the given dotted paths (`metadata.labels`, `status.phase`).
    pub fn new<'a>(paths: impl IntoIterator<Item = &'a str>) -> Paths {
        let mut root = Paths::Members(HashMap::new());
        for p in paths {
            let mut at = &mut root;
            let mut segments = p.split('.').peekable();
            while let Some(s) = segments.next() {
                // Under a path kept whole there is nothing to prune by.
                let Paths::Members(members) = at else { break };
                let child = members.entry(s.to_string()).or_insert_with(|| Paths::Members(HashMap::new()));
                if segments.peek().is_none() {
                    *child = Paths::Whole;
                }
                at = child;
            }
        }
        root
    }

    /// The wanted members of the JSON document `bytes` (objects along the paths keep
    /// only the members on them; values at the paths are kept whole).
    pub fn parse(&self, bytes: &[u8]) -> serde_json::Result<Value> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let v = self.deserialize(&mut de)?;
        de.end()?;
        Ok(v)
    }
}

impl<'de> DeserializeSeed<'de> for &Paths {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        match self {
            Paths::Whole => serde::Deserialize::deserialize(d),
            Paths::Members(m) => d.deserialize_any(Sparse(m)),
        }
    }
}

struct Sparse<'a>(&'a HashMap<String, Paths>);

impl<'de> Visitor<'de> for Sparse<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            match self.0.get(&key) {
                Some(want) => {
                    let v = map.next_value_seed(want)?;
                    out.insert(key, v);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }

    // A value where an object was expected holds nothing on the paths.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_only_the_wanted_paths() {
        let obj = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "a", "namespace": "ns", "labels": {"app": "web", "t": "x"},
                         "annotations": {"big": "y"}, "managedFields": [{"manager": "m"}]},
            "spec": {"nodeName": "n1", "containers": [{"name": "c"}], "hostNetwork": true},
            "status": {"phase": "Running", "conditions": [{"type": "Ready"}]},
        });
        let bytes = serde_json::to_vec(&obj).unwrap();
        let p = Paths::new(["metadata.labels", "metadata.name", "spec.nodeName", "spec.hostNetwork", "status.phase"]);
        assert_eq!(
            p.parse(&bytes).unwrap(),
            json!({"metadata": {"name": "a", "labels": {"app": "web", "t": "x"}},
                   "spec": {"nodeName": "n1", "hostNetwork": true}, "status": {"phase": "Running"}})
        );
        // A wider path wins over a narrower one, in either order.
        for paths in [["metadata", "metadata.name"], ["metadata.name", "metadata"]] {
            assert_eq!(Paths::new(paths).parse(&bytes).unwrap()["metadata"], obj["metadata"]);
        }
        // Values of another type than expected on the way do not break the parse.
        let odd = br#"{"metadata": [1, 2], "spec": "x", "status": {"phase": null}}"#;
        assert_eq!(p.parse(odd).unwrap(), json!({"metadata": null, "spec": "x", "status": {"phase": null}}));
        assert!(p.parse(b"{\"metadata\": {").is_err());
    }
}
