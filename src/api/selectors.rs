//! Label and field selectors, parsed and matched as Kubernetes does
//! (apimachinery `pkg/labels/selector.go`, `pkg/fields/selector.go`).

use std::collections::BTreeMap;

use serde_json::Value;

/// One label requirement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// `k=v`, `k==v`
    Eq(String, String),
    /// `k!=v`
    NotEq(String, String),
    /// `k in (a,b)`
    In(String, Vec<String>),
    /// `k notin (a,b)`
    NotIn(String, Vec<String>),
    /// `k`
    Exists(String),
    /// `!k`
    NotExists(String),
}

/// A parsed label selector; empty matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(pub Vec<Requirement>);

/// Splits on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn check_key(k: &str) -> Result<String, String> {
    let k = k.trim();
    if k.is_empty() {
        return Err("found '', expected: identifier".into());
    }
    let errs = super::validation::qualified_name(k);
    if let Some(e) = errs.first() {
        return Err(format!("key: Invalid value: {k:?}: {e}"));
    }
    Ok(k.to_string())
}

fn check_value(v: &str) -> Result<String, String> {
    let v = v.trim();
    if let Some(e) = super::validation::label_value(v).first() {
        return Err(format!("values[0]: Invalid value: {v:?}: {e}"));
    }
    Ok(v.to_string())
}

fn parse_set(rest: &str) -> Result<Vec<String>, String> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("found '{rest}', expected: '('"))?;
    inner.split(',').map(check_value).collect()
}

impl LabelSelector {
    /// Parses `a=b,c!=d,e in (x,y),f notin (z),g,!h`.
    pub fn parse(s: &str) -> Result<LabelSelector, String> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(LabelSelector(reqs));
        }
        for part in split_top(s) {
            let p = part.trim();
            if p.is_empty() {
                return Err(format!("unable to parse requirement: found '', expected: identifier in {s:?}"));
            }
            let r = if let Some(k) = p.strip_prefix('!') {
                Requirement::NotExists(check_key(k)?)
            } else if let Some((k, v)) = p.split_once("!=") {
                Requirement::NotEq(check_key(k)?, check_value(v)?)
            } else if let Some((k, v)) = p.split_once("==") {
                Requirement::Eq(check_key(k)?, check_value(v)?)
            } else if let Some((k, v)) = p.split_once('=') {
                Requirement::Eq(check_key(k)?, check_value(v)?)
            } else if let Some(i) = p.find(" notin ") {
                Requirement::NotIn(check_key(&p[..i])?, parse_set(&p[i + 7..])?)
            } else if let Some(i) = p.find(" in ") {
                Requirement::In(check_key(&p[..i])?, parse_set(&p[i + 4..])?)
            } else if p.contains(['(', ')', ' ', '<', '>']) {
                return Err(format!("unable to parse requirement: {p:?}"));
            } else {
                Requirement::Exists(check_key(p)?)
            };
            reqs.push(r);
        }
        Ok(LabelSelector(reqs))
    }

    /// Builds the selector of a `matchLabels`/`matchExpressions` object.
    pub fn from_label_selector(sel: &Value) -> Result<LabelSelector, String> {
        let mut reqs = Vec::new();
        if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in m {
                reqs.push(Requirement::Eq(k.clone(), v.as_str().unwrap_or_default().to_string()));
            }
        }
        if let Some(exprs) = sel.get("matchExpressions").and_then(Value::as_array) {
            for e in exprs {
                let key = e.get("key").and_then(Value::as_str).unwrap_or_default().to_string();
                let vals: Vec<String> = e
                    .get("values")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                    .unwrap_or_default();
                reqs.push(match e.get("operator").and_then(Value::as_str) {
                    Some("In") => Requirement::In(key, vals),
                    Some("NotIn") => Requirement::NotIn(key, vals),
                    Some("Exists") => Requirement::Exists(key),
                    Some("DoesNotExist") => Requirement::NotExists(key),
                    other => return Err(format!("{other:?} is not a valid label selector operator")),
                });
            }
        }
        Ok(LabelSelector(reqs))
    }

    /// True when nothing is required.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Matches a label map.
    pub fn matches(&self, labels: &BTreeMap<&str, &str>) -> bool {
        self.matches_fn(|k| labels.get(k).copied())
    }

    /// Matches labels looked up by `get` (no map is built).
    pub fn matches_fn<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Eq(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEq(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|l| !vs.iter().any(|v| v == l)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
        })
    }

    /// Matches an object's `metadata.labels`.
    pub fn matches_object(&self, obj: &Value) -> bool {
        if self.0.is_empty() {
            return true;
        }
        self.matches(&object_labels(obj))
    }
}

/// The string form of a `matchLabels`/`matchExpressions` selector (`a=b,c in (x)`), or
/// of a plain label map, as kubectl prints and Scale reports it.
pub fn selector_string(sel: &Value) -> String {
    let is_structured = sel.get("matchLabels").is_some() || sel.get("matchExpressions").is_some();
    let labels = if is_structured { sel.get("matchLabels") } else { Some(sel) };
    let mut parts: Vec<String> = labels
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect())
        .unwrap_or_default();
    for e in sel.get("matchExpressions").and_then(Value::as_array).into_iter().flatten() {
        let k = e.get("key").and_then(Value::as_str).unwrap_or("");
        let vals: Vec<&str> = e
            .get("values")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        match e.get("operator").and_then(Value::as_str) {
            Some("In") => parts.push(format!("{k} in ({})", vals.join(","))),
            Some("NotIn") => parts.push(format!("{k} notin ({})", vals.join(","))),
            Some("Exists") => parts.push(k.to_string()),
            Some("DoesNotExist") => parts.push(format!("!{k}")),
            _ => {}
        }
    }
    parts.join(",")
}

/// An object's labels as a map.
pub fn object_labels(obj: &Value) -> BTreeMap<&str, &str> {
    obj.get("metadata")
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.as_str(), v))).collect())
        .unwrap_or_default()
}

/// A parsed field selector: `a=b,c!=d`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector(pub Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parses a field selector and checks each field is one the kind supports.
    pub fn parse(s: &str, supported: &[&str]) -> Result<FieldSelector, String> {
        let mut out = Vec::new();
        if s.trim().is_empty() {
            return Ok(FieldSelector(out));
        }
        for part in s.split(',') {
            let p = part.trim();
            let (k, eq, v) = if let Some((k, v)) = p.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = p.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = p.split_once('=') {
                (k, true, v)
            } else {
                return Err(format!("invalid selector: '{s}'; can't understand '{p}'"));
            };
            let k = k.trim();
            if k != "metadata.name" && k != "metadata.namespace" && !supported.contains(&k) {
                return Err(format!("field label not supported: {k}"));
            }
            out.push((k.to_string(), eq, v.trim().to_string()));
        }
        Ok(FieldSelector(out))
    }

    /// The name this selector pins with `metadata.name=`, if any.
    pub fn exact_name(&self) -> Option<&str> {
        self.0.iter().find(|(k, eq, _)| k == "metadata.name" && *eq).map(|(_, _, v)| v.as_str())
    }

    /// True when nothing is required.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Matches an object.
    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(k, eq, v)| (field_value(obj, k) == *v) == *eq)
    }
}

/// What of a stored object [`LabelSelector::matches_object`] and
/// [`FieldSelector::matches`] look at (plus the name and namespace), for
/// [`super::sparse::Paths::parse`].
pub fn selected_paths(labels: &LabelSelector, fields: &FieldSelector) -> super::sparse::Paths {
    let mut paths = vec!["metadata.name", "metadata.namespace"];
    if !labels.is_empty() {
        paths.push("metadata.labels");
    }
    paths.extend(fields.0.iter().map(|(k, _, _)| field_path(k)));
    super::sparse::Paths::new(paths)
}

fn field_path(key: &str) -> &str {
    match key {
        "source" => "source.component",
        k => k,
    }
}

/// The string value of a field label, as Kubernetes's per-kind field-label functions
/// compute it (missing = "", booleans as "true"/"false").
fn field_value(obj: &Value, key: &str) -> String {
    match super::meta::path(obj, field_path(key)) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        None if key == "spec.hostNetwork" || key == "spec.unschedulable" => "false".into(),
        None if key == "status.replicas" || key == "status.successful" => "0".into(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors_parse_and_match() {
        let obj = json!({"metadata": {"labels": {"app": "web", "tier": "front"}}});
        for (sel, want) in [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app in (web,db)", true),
            ("app notin (web)", false),
            ("tier", true),
            ("!tier", false),
            ("!missing", true),
            ("app=web,tier=back", false),
            ("app in (db, web),tier", true),
            ("", true),
        ] {
            assert_eq!(LabelSelector::parse(sel).unwrap().matches_object(&obj), want, "{sel}");
        }
        assert!(LabelSelector::parse("a=b=c").is_err());
        assert!(LabelSelector::parse("a in b").is_err());
    }

    #[test]
    fn field_selectors() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let f =
            FieldSelector::parse("spec.nodeName=n1,status.phase!=Failed", &["spec.nodeName", "status.phase"]).unwrap();
        assert!(f.matches(&pod));
        assert!(FieldSelector::parse("spec.nodeName=", &["spec.nodeName"]).unwrap().matches(&json!({})));
        assert_eq!(FieldSelector::parse("spec.bogus=1", &[]).unwrap_err(), "field label not supported: spec.bogus");
        assert_eq!(FieldSelector::parse("metadata.name=x", &[]).unwrap().exact_name(), Some("x"));
    }
}
