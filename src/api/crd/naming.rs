//! Which names each CRD may have: apiextensions's naming controller, as one pure
//! function of all CRDs. Within a group, a plural, singular or short name is one
//! resource name space and a kind or list kind another; a name another CRD already
//! holds is not given to a second one, which then reports `NamesAccepted=False` with
//! the clash and, unless it was established before, is not served.

use serde_json::{Map, Value, json};

use crate::api::meta::str_at as s;

/// The names a CRD is given and, when some of its requested names clash, the
/// `NamesAccepted=False` reason and message.
#[derive(Debug, Clone, PartialEq)]
pub struct Naming {
    /// `status.acceptedNames`: the requested names where they are free, the names
    /// accepted before where they are not.
    pub names: Value,
    /// `(reason, message)`, e.g. `("KindConflict", "\"Widget\" is already in use")`.
    pub conflict: Option<(&'static str, String)>,
}

/// The names of a `CustomResourceDefinitionNames` object, with empty ones dropped
/// (as the API serialises them).
pub fn tidy(names: &Value) -> Value {
    let mut out = Map::new();
    for (k, v) in names.as_object().into_iter().flatten() {
        let empty = match v {
            Value::String(x) => x.is_empty(),
            Value::Array(a) => a.is_empty(),
            Value::Null => true,
            _ => false,
        };
        if !empty {
            out.insert(k.clone(), v.clone());
        }
    }
    Value::Object(out)
}

fn list<'a>(names: &'a Value, key: &str) -> Vec<&'a str> {
    names.get(key).and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect()
}

/// The names a CRD holds: its accepted names once it has any, otherwise (for one
/// created before the CRD being judged) the names it asks for.
fn held(crd: &Value, earlier: bool) -> Option<&Value> {
    let accepted = crd.pointer("/status/acceptedNames").filter(|n| !s(n, "/kind").is_empty());
    accepted.or(if earlier { crd.pointer("/spec/names") } else { None })
}

/// Accepted names and conflicts for every CRD of `crds`, in the same order. A CRD
/// created earlier (by creationTimestamp, then by resourceVersion, which orders
/// CRDs created in the same second, as by one `kubectl apply` of a file) wins a
/// name both ask for.
pub fn accept_names(crds: &[Value]) -> Vec<Naming> {
    let order = |c: &Value| {
        (
            crate::api::meta::meta_str(c, "creationTimestamp").unwrap_or("").to_string(),
            crate::api::meta::meta_str(c, "resourceVersion").and_then(|r| r.parse::<u64>().ok()).unwrap_or(0),
            crate::api::meta::name(c).to_string(),
        )
    };
    crds.iter()
        .enumerate()
        .map(|(i, x)| {
            let group = s(x, "/spec/group");
            let mut resources = Vec::new();
            let mut kinds = Vec::new();
            for (j, y) in crds.iter().enumerate() {
                if j == i || s(y, "/spec/group") != group {
                    continue;
                }
                let Some(n) = held(y, order(y) < order(x)) else { continue };
                resources.extend([s(n, "/plural"), s(n, "/singular")]);
                resources.extend(list(n, "shortNames"));
                kinds.extend([s(n, "/kind"), s(n, "/listKind")]);
            }
            resources.retain(|r| !r.is_empty());
            kinds.retain(|k| !k.is_empty());
            judge(x, &resources, &kinds)
        })
        .collect()
}

/// The naming controller's field-by-field check of one CRD against the names others
/// hold: each requested name is taken if it is already this CRD's or nobody's.
fn judge(crd: &Value, resources: &[&str], kinds: &[&str]) -> Naming {
    let requested = crd.pointer("/spec/names").cloned().unwrap_or(json!({}));
    let accepted = crd.pointer("/status/acceptedNames").cloned().unwrap_or(json!({}));
    let mut names = accepted.as_object().cloned().unwrap_or_default();
    let mut conflict = None;
    let fresh = |want: &str, have: &str, used: &[&str]| want == have || !used.contains(&want);
    for (key, used, reason) in [
        ("plural", resources, "PluralConflict"),
        ("singular", resources, "SingularConflict"),
        ("kind", kinds, "KindConflict"),
        ("listKind", kinds, "ListKindConflict"),
    ] {
        let want = s(&requested, &format!("/{key}"));
        if fresh(want, s(&accepted, &format!("/{key}")), used) {
            names.insert(key.into(), json!(want));
        } else {
            conflict = Some((reason, format!("{want:?} is already in use")));
        }
        if key == "singular" {
            // Short names are judged between singular and kind, as upstream does.
            let have = list(&accepted, "shortNames");
            let want = list(&requested, "shortNames");
            let clashes: Vec<String> = want
                .iter()
                .filter(|n| !have.contains(n) && resources.contains(n))
                .map(|n| format!("{n:?} is already in use"))
                .collect();
            match clashes.len() {
                0 => {
                    names.insert("shortNames".into(), json!(want));
                }
                1 => conflict = Some(("ShortNamesConflict", clashes[0].clone())),
                _ => conflict = Some(("ShortNamesConflict", format!("[{}]", clashes.join(", ")))),
            }
        }
    }
    names.insert("categories".into(), requested.get("categories").cloned().unwrap_or(json!([])));
    Naming { names: tidy(&Value::Object(names)), conflict }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd(name: &str, created: &str, kind: &str, short: &[&str], accepted: Option<&str>) -> Value {
        let (plural, group) = name.split_once('.').unwrap();
        let names = json!({"plural": plural, "singular": plural.trim_end_matches('s'), "kind": kind,
                           "listKind": format!("{kind}List"), "shortNames": short});
        let rv = created.len().to_string();
        let mut c = json!({"metadata": {"name": name, "creationTimestamp": created, "resourceVersion": rv},
                           "spec": {"group": group, "names": names}});
        if let Some(k) = accepted {
            let mut a = names.clone();
            a["kind"] = json!(k);
            a["listKind"] = json!(format!("{k}List"));
            c["status"] = json!({"acceptedNames": a});
        }
        c
    }

    #[test]
    fn the_first_crd_keeps_a_name_both_ask_for() {
        let a = crd("widgets.example.com", "2026-01-01T00:00:00Z", "Widget", &["w"], None);
        let b = crd("gadgets.example.com", "2026-01-02T00:00:00Z", "Widget", &["g"], None);
        let c = crd("things.example.com", "2026-01-03T00:00:00Z", "Thing", &["w", "t"], None);
        let other = crd("widgets.other.org", "2026-01-04T00:00:00Z", "Widget", &["w"], None);
        let n = accept_names(&[b.clone(), a.clone(), c, other]);
        assert_eq!(n[1].conflict, None);
        assert_eq!(n[1].names["kind"], "Widget");
        assert_eq!(n[0].conflict, Some(("ListKindConflict", "\"WidgetList\" is already in use".to_string())));
        assert_eq!(n[0].names.get("kind"), None, "a clashing name is not given");
        assert_eq!(n[0].names["plural"], "gadgets", "the free names are");
        assert_eq!(n[2].conflict, Some(("ShortNamesConflict", "\"w\" is already in use".to_string())));
        assert_eq!(n[2].names.get("shortNames"), None);
        assert_eq!(n[3].conflict, None, "another group is another name space");

        // A CRD that already holds a name keeps it, whatever its age.
        let b_held = crd("gadgets.example.com", "2026-01-02T00:00:00Z", "Widget", &["g"], Some("Widget"));
        let a_new = crd("widgets.example.com", "2026-01-03T00:00:00Z", "Widget", &["w"], None);
        let n = accept_names(&[a_new, b_held]);
        assert_eq!(n[1].conflict, None);
        assert_eq!(n[0].conflict.as_ref().map(|c| c.0), Some("ListKindConflict"));
        // Once the holder is gone, the name is free.
        assert_eq!(accept_names(&[a])[0].conflict, None);
        // Created in the same second (one `kubectl apply` of a file): the first
        // written wins, whatever the names.
        let mut z = crd("zebras.example.com", "2026-01-05T00:00:00Z", "Zebra", &[], None);
        let mut b = crd("bees.example.com", "2026-01-05T00:00:00Z", "Zebra", &[], None);
        z["metadata"]["resourceVersion"] = json!("9");
        b["metadata"]["resourceVersion"] = json!("10");
        let n = accept_names(&[b, z]);
        assert_eq!((n[0].conflict.is_some(), n[1].conflict.is_none()), (true, true));
    }
}
