//! Validation with Kubernetes's rules and messages: names, labels, keys, and strict
//! decoding (unknown and duplicate fields).

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::status::Cause;

const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
const LABEL_NAME_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const CONFIG_KEY_MSG: &str = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";

fn is_label(s: &str) -> bool {
    is_label_bytes(s.as_bytes())
}

/// [`is_label`] over bytes, so a prefix can be judged without cutting a character.
fn is_label_bytes(b: &[u8]) -> bool {
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Errors for a DNS-1123 subdomain (most object names).
pub fn dns1123_subdomain(s: &str) -> Vec<String> {
    let mut e = Vec::new();
    if s.len() > 253 {
        e.push("must be no more than 253 characters".to_string());
    }
    if !s.split('.').all(is_label) {
        e.push(DNS1123_SUBDOMAIN_MSG.to_string());
    }
    e
}

/// Errors for a DNS-1123 label (namespace names).
pub fn dns1123_label(s: &str) -> Vec<String> {
    let mut e = Vec::new();
    if s.len() > 63 {
        e.push("must be no more than 63 characters".to_string());
    }
    if !is_label_bytes(&s.as_bytes()[..s.len().min(63)]) || s.is_empty() {
        e.push(DNS1123_LABEL_MSG.to_string());
    }
    e
}

/// Errors for a DNS-1035 label (Service names).
pub fn dns1035_label(s: &str) -> Vec<String> {
    let mut e = Vec::new();
    if s.len() > 63 {
        e.push("must be no more than 63 characters".to_string());
    }
    if !is_label_bytes(&s.as_bytes()[..s.len().min(63)]) || !s.as_bytes().first().is_some_and(u8::is_ascii_lowercase) {
        e.push(DNS1035_LABEL_MSG.to_string());
    }
    e
}

/// Errors for a path-segment name (RBAC objects).
pub fn path_segment(s: &str) -> Vec<String> {
    let mut e = Vec::new();
    if s == "." || s == ".." {
        e.push(format!("may not be '{s}'"));
    }
    for bad in ["/", "%"] {
        if s.contains(bad) {
            e.push(format!("may not contain '{bad}'"));
        }
    }
    e
}

fn is_qualified_part(s: &str) -> bool {
    is_qualified_bytes(s.as_bytes())
}

/// [`is_qualified_part`] over bytes, so a prefix can be judged without cutting a character.
fn is_qualified_bytes(b: &[u8]) -> bool {
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Errors for a label or annotation key (`prefix/name`).
pub fn qualified_name(s: &str) -> Vec<String> {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let mut e = Vec::new();
    if let Some(p) = prefix {
        if p.is_empty() {
            e.push("prefix part must be non-empty".to_string());
        } else {
            e.extend(dns1123_subdomain(p).into_iter().map(|m| format!("prefix part {m}")));
        }
    }
    if name.len() > 63 {
        e.push("name part must be no more than 63 characters".to_string());
    } else if !is_qualified_part(name) {
        e.push(LABEL_NAME_MSG.to_string());
    }
    e
}

/// Errors for a label value.
pub fn label_value(s: &str) -> Vec<String> {
    if s.is_empty() {
        return vec![];
    }
    let mut e = Vec::new();
    if s.len() > 63 {
        e.push("must be no more than 63 characters".to_string());
    }
    if !is_qualified_bytes(&s.as_bytes()[..s.len().min(63)]) {
        e.push(LABEL_VALUE_MSG.to_string());
    }
    e
}

#[cfg(test)]
mod char_boundaries {
    /// Found by the `selectors` fuzz target: a long value with a multi-byte character
    /// across byte 63 panicked when cut there.
    #[test]
    fn long_values_with_multibyte_characters_are_errors_not_panics() {
        let v = format!("{}\u{53d}x", "a".repeat(62));
        assert_eq!(super::label_value(&v).len(), 2);
        assert_eq!(super::dns1123_label(&v).len(), 2);
        assert_eq!(super::dns1035_label(&v).len(), 2);
        assert!(crate::api::selectors::LabelSelector::parse(&format!("k={v}")).is_err());
    }
}

/// Errors for a ConfigMap or Secret data key.
pub fn config_key(s: &str) -> Vec<String> {
    let mut e = Vec::new();
    if s.len() > 253 {
        e.push("must be no more than 253 characters".to_string());
    }
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')) {
        e.push(CONFIG_KEY_MSG.to_string());
    }
    if s == "." || s == ".." || s.starts_with("..") {
        e.push("must not be '.' or '..' or start with '..'".to_string());
    }
    e
}

/// Causes for invalid labels and annotations of an object.
pub fn metadata_causes(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let Some(meta) = obj.get("metadata") else { return causes };
    if let Some(labels) = meta.get("labels").and_then(Value::as_object) {
        for (k, v) in labels {
            for m in qualified_name(k) {
                causes.push(Cause::invalid("metadata.labels", &Value::String(k.clone()), m));
            }
            match v.as_str() {
                Some(s) => {
                    for m in label_value(s) {
                        causes.push(Cause::invalid("metadata.labels", v, m));
                    }
                }
                None => causes.push(Cause::invalid("metadata.labels", v, "label values must be strings")),
            }
        }
    }
    if let Some(ann) = meta.get("annotations").and_then(Value::as_object) {
        let mut total = 0;
        for (k, v) in ann {
            for m in qualified_name(k) {
                causes.push(Cause::invalid("metadata.annotations", &Value::String(k.clone()), m));
            }
            total += k.len() + v.as_str().map(str::len).unwrap_or(0);
        }
        if total > 256 * 1024 {
            causes.push(Cause {
                reason: "FieldValueTooLong",
                field: "metadata.annotations".into(),
                message: "Too long: must have at most 262144 bytes".into(),
            });
        }
    }
    causes
}

/// Fields present in `input` that the typed round trip dropped: unknown fields, as
/// dotted paths (`spec.containers[0].foo`).
pub fn unknown_fields(input: &Value, typed: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk_unknown(input, typed, String::new(), &mut out);
    out
}

fn walk_unknown(input: &Value, typed: &Value, path: String, out: &mut Vec<String>) {
    match (input, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match b.get(k) {
                    Some(tv) => walk_unknown(v, tv, p, out),
                    None if v.is_null() => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (v, tv)) in a.iter().zip(b.iter()).enumerate() {
                walk_unknown(v, tv, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Parses JSON into a value in one pass, also reporting duplicate object keys (by
/// dotted path) as Kubernetes's strict decoding does; serde_json alone keeps the last
/// value silently.
pub fn parse_json(body: &[u8]) -> Result<(Value, Vec<String>), serde_json::Error> {
    let mut dups = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(body);
    let v = DupSeed { path: String::new(), dups: &mut dups }.deserialize(&mut de)?;
    de.end()?;
    Ok((v, dups))
}

struct DupSeed<'a> {
    path: String,
    dups: &'a mut Vec<String>,
}

impl<'de> DeserializeSeed<'de> for DupSeed<'_> {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for DupSeed<'_> {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
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
        Ok(serde_json::Number::from_f64(v).map(Value::Number).unwrap_or(Value::Null))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) =
            seq.next_element_seed(DupSeed { path: format!("{}[{}]", self.path, out.len()), dups: self.dups })?
        {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(k) = map.next_key::<String>()? {
            let p = if self.path.is_empty() { k.clone() } else { format!("{}.{k}", self.path) };
            let v = map.next_value_seed(DupSeed { path: p.clone(), dups: self.dups })?;
            if out.insert(k, v).is_some() {
                self.dups.push(p);
            }
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names() {
        assert!(dns1123_subdomain("my-app.example").is_empty());
        assert!(!dns1123_subdomain("Bad_Name").is_empty());
        assert!(!dns1123_subdomain(&"a".repeat(254)).is_empty());
        assert!(dns1123_label("kube-system").is_empty());
        assert!(!dns1123_label("a.b").is_empty());
        assert!(!dns1035_label("1abc").is_empty());
        assert!(path_segment("system:node").is_empty());
        assert!(!path_segment("a/b").is_empty());
    }

    #[test]
    fn labels() {
        assert!(qualified_name("app.kubernetes.io/name").is_empty());
        assert!(!qualified_name("bad key").is_empty());
        assert!(label_value("").is_empty());
        assert!(!label_value("-x").is_empty());
    }

    #[test]
    fn unknown_and_duplicate_fields() {
        let input = json!({"spec": {"a": 1, "zzz": 2, "list": [{"x": 1, "y": 2}]}, "gone": null});
        let typed = json!({"spec": {"a": 1, "list": [{"x": 1}]}});
        assert_eq!(unknown_fields(&input, &typed), vec!["spec.zzz", "spec.list[0].y"]);
        let (v, d) = parse_json(br#"{"a":1,"b":{"c":1,"c":2},"a":3}"#).unwrap();
        assert_eq!(d, vec!["b.c", "a"]);
        assert_eq!(v, json!({"a": 3, "b": {"c": 2}}), "the last value wins, as in Kubernetes");
        assert!(parse_json(b"{").is_err());
    }
}
