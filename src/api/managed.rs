//! Server-side apply and `metadata.managedFields`, after Kubernetes's
//! structured-merge-diff: every write records which manager set which fields (FieldsV1
//! sets), an apply merges the manager's configuration into the object (maps and structs
//! by field, lists by their keys, sets by value, atomic lists whole), removes the fields
//! the manager applied before and no longer applies (unless someone else owns them), and
//! refuses to change a field another manager owns unless forced.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::schema::{ListKind, Ty, TyRef, Types};

/// A set of field paths, shaped as FieldsV1: `f:<field>`, `k:<key object>`, `v:<value>`
/// and `i:<index>` path elements; `member` says the path itself is in the set (`.`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSet {
    member: bool,
    children: BTreeMap<String, FieldSet>,
}

impl FieldSet {
    fn child(&mut self, pe: &str) -> &mut FieldSet {
        if !self.children.contains_key(pe) {
            self.children.insert(pe.to_string(), FieldSet::default());
        }
        self.children.get_mut(pe).expect("just inserted")
    }

    /// Whether no path is in the set.
    pub fn is_empty(&self) -> bool {
        !self.member && self.children.values().all(FieldSet::is_empty)
    }

    fn prune(&mut self) {
        self.children.retain(|_, c| {
            c.prune();
            !c.is_empty()
        });
    }

    /// Adds every path of `o`.
    pub fn union(&mut self, o: &FieldSet) {
        self.member |= o.member;
        for (k, v) in &o.children {
            self.child(k).union(v);
        }
    }

    /// The paths of `self` not in `o`.
    pub fn difference(&self, o: &FieldSet) -> FieldSet {
        let empty = FieldSet::default();
        let mut out = FieldSet { member: self.member && !o.member, children: BTreeMap::new() };
        for (k, v) in &self.children {
            let d = v.difference(o.children.get(k).unwrap_or(&empty));
            if !d.is_empty() {
                out.children.insert(k.clone(), d);
            }
        }
        out
    }

    /// The paths in both.
    pub fn intersection(&self, o: &FieldSet) -> FieldSet {
        let mut out = FieldSet { member: self.member && o.member, children: BTreeMap::new() };
        for (k, v) in &self.children {
            if let Some(w) = o.children.get(k) {
                let i = v.intersection(w);
                if !i.is_empty() {
                    out.children.insert(k.clone(), i);
                }
            }
        }
        out
    }

    /// The FieldsV1 JSON of the set.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".into(), json!({}));
        }
        for (k, c) in &self.children {
            m.insert(k.clone(), c.to_json());
        }
        Value::Object(m)
    }

    /// A set from FieldsV1 JSON.
    pub fn from_json(v: &Value) -> FieldSet {
        let mut out = FieldSet::default();
        for (k, sub) in v.as_object().into_iter().flatten() {
            if k == "." {
                out.member = true;
                continue;
            }
            let mut c = FieldSet::from_json(sub);
            if sub.as_object().is_some_and(Map::is_empty) {
                c.member = true;
            }
            out.children.insert(k.clone(), c);
        }
        out
    }

    /// Every member path, as Kubernetes prints them (`.spec.containers[name="a"].image`).
    pub fn paths(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.collect_paths(String::new(), &mut out);
        out
    }

    fn collect_paths(&self, prefix: String, out: &mut Vec<String>) {
        if self.member {
            out.push(prefix.clone());
        }
        for (k, c) in &self.children {
            c.collect_paths(format!("{prefix}{}", show_element(k)), out);
        }
    }
}

fn show_element(pe: &str) -> String {
    let (kind, rest) = pe.split_at(pe.find(':').map(|i| i + 1).unwrap_or(0));
    match kind {
        "f:" => format!(".{rest}"),
        "k:" => {
            let m: Map<String, Value> = serde_json::from_str(rest).unwrap_or_default();
            let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("[{}]", parts.join(","))
        }
        "v:" => format!("[={rest}]"),
        "i:" => format!("[{rest}]"),
        _ => pe.to_string(),
    }
}

fn field_pe(name: &str) -> String {
    format!("f:{name}")
}

/// The path element of a keyed list item: its key fields in name order, with the
/// `protocol` Kubernetes defaults to TCP filled in. `None` if a key is missing.
fn key_pe(item: &Value, keys: &[String]) -> Option<String> {
    let mut sorted: Vec<&String> = keys.iter().collect();
    sorted.sort();
    let mut m = Map::new();
    for k in sorted {
        let v = match item.get(k) {
            Some(v) if !v.is_null() => v.clone(),
            _ if k == "protocol" => json!("TCP"),
            _ => return None,
        };
        m.insert(k.clone(), v);
    }
    Some(format!("k:{}", Value::Object(m)))
}

fn item_pe(kind: &ListKind, i: usize, item: &Value) -> String {
    match kind {
        ListKind::Map(keys) => key_pe(item, keys).unwrap_or_else(|| format!("i:{i}")),
        ListKind::Set => format!("v:{item}"),
        ListKind::Atomic => format!("i:{i}"),
    }
}

/// How a value of shape `ty` is walked.
enum Walk<'a> {
    /// Fields: declared ones with their shapes, others as map entries of `rest`.
    Fields(Option<&'a BTreeMap<String, TyRef>>, Option<&'a TyRef>),
    List(&'a TyRef, &'a ListKind),
    Leaf,
}

fn walk_of<'a>(types: &'a Types, ty: &'a TyRef, v: &Value) -> Walk<'a> {
    match (types.resolve(ty), v) {
        (Ty::Struct(f), Value::Object(_)) => Walk::Fields(Some(f), None),
        (Ty::Map(e), Value::Object(_)) => Walk::Fields(None, Some(e)),
        (Ty::Untyped, Value::Object(_)) => Walk::Fields(None, None),
        (Ty::List(e, k), Value::Array(_)) if *k != ListKind::Atomic => Walk::List(e, k),
        _ => Walk::Leaf,
    }
}

static UNTYPED: std::sync::LazyLock<TyRef> =
    std::sync::LazyLock::new(|| TyRef::Inline(std::sync::Arc::new(Ty::Untyped)));

/// The shape of field `k` and whether it is a map entry (not a declared field).
fn field_ty<'a>(fields: Option<&'a BTreeMap<String, TyRef>>, rest: Option<&'a TyRef>, k: &str) -> (&'a TyRef, bool) {
    match fields.and_then(|f| f.get(k)) {
        Some(t) => (t, false),
        None => (rest.unwrap_or(&UNTYPED), true),
    }
}

/// The set of fields `v` sets.
pub fn to_set(types: &Types, ty: &TyRef, v: &Value, out: &mut FieldSet) {
    match walk_of(types, ty, v) {
        Walk::Fields(fields, rest) => {
            for (k, cv) in v.as_object().into_iter().flatten() {
                let (cty, entry) = field_ty(fields, rest, k);
                let c = out.child(&field_pe(k));
                to_set(types, cty, cv, c);
                c.member |= entry;
            }
        }
        Walk::List(ety, kind) => {
            for (i, item) in v.as_array().into_iter().flatten().enumerate() {
                let c = out.child(&item_pe(kind, i, item));
                if *kind != ListKind::Set {
                    to_set(types, ety, item, c);
                }
                c.member = true;
            }
        }
        Walk::Leaf => out.member = true,
    }
}

/// What changed from `a` to `b`.
#[derive(Default, Debug)]
pub struct Comparison {
    pub added: FieldSet,
    pub modified: FieldSet,
    pub removed: FieldSet,
}

impl Comparison {
    fn attach(&mut self, pe: &str, c: Comparison) {
        for (mine, theirs) in
            [(&mut self.added, c.added), (&mut self.modified, c.modified), (&mut self.removed, c.removed)]
        {
            if !theirs.is_empty() {
                mine.children.insert(pe.to_string(), theirs);
            }
        }
    }
}

/// Compares two values of shape `ty`.
pub fn compare(types: &Types, ty: &TyRef, a: &Value, b: &Value) -> Comparison {
    let mut out = Comparison::default();
    match (walk_of(types, ty, a), walk_of(types, ty, b)) {
        (Walk::Fields(fields, rest), Walk::Fields(..)) => {
            let (am, bm) = (a.as_object().expect("object"), b.as_object().expect("object"));
            for k in am.keys().chain(bm.keys().filter(|k| !am.contains_key(*k))) {
                let (cty, entry) = field_ty(fields, rest, k);
                let pe = field_pe(k);
                let c = compare_present(types, cty, am.get(k), bm.get(k), entry);
                out.attach(&pe, c);
            }
        }
        (Walk::List(ety, kind), Walk::List(..)) => {
            let index = |v: &Value| -> Vec<(String, Value)> {
                v.as_array()
                    .into_iter()
                    .flatten()
                    .enumerate()
                    .map(|(i, item)| (item_pe(kind, i, item), item.clone()))
                    .collect()
            };
            let (ai, bi) = (index(a), index(b));
            let find = |l: &[(String, Value)], pe: &str| l.iter().find(|(p, _)| p == pe).map(|(_, v)| v.clone());
            let mut seen = std::collections::HashSet::new();
            for (pe, _) in ai.iter().chain(bi.iter()) {
                if !seen.insert(pe.clone()) {
                    continue;
                }
                let (x, y) = (find(&ai, pe), find(&bi, pe));
                let c = if *kind == ListKind::Set {
                    let mut c = Comparison::default();
                    match (x.is_some(), y.is_some()) {
                        (false, true) => c.added.member = true,
                        (true, false) => c.removed.member = true,
                        _ => {}
                    }
                    c
                } else {
                    compare_present(types, ety, x.as_ref(), y.as_ref(), true)
                };
                out.attach(pe, c);
            }
        }
        _ => {
            if a != b {
                out.modified.member = true;
            }
        }
    }
    out
}

fn compare_present(types: &Types, ty: &TyRef, a: Option<&Value>, b: Option<&Value>, entry: bool) -> Comparison {
    match (a, b) {
        (Some(x), Some(y)) => compare(types, ty, x, y),
        (None, Some(y)) => {
            let mut c = Comparison::default();
            to_set(types, ty, y, &mut c.added);
            c.added.member |= entry;
            c
        }
        (Some(x), None) => {
            let mut c = Comparison::default();
            to_set(types, ty, x, &mut c.removed);
            c.removed.member |= entry;
            c
        }
        (None, None) => Comparison::default(),
    }
}

/// Merges an applied configuration into a live value.
pub fn merge(types: &Types, ty: &TyRef, live: &Value, cfg: &Value) -> Value {
    match (walk_of(types, ty, live), walk_of(types, ty, cfg)) {
        (Walk::Fields(fields, rest), Walk::Fields(..)) => {
            let mut out = live.as_object().expect("object").clone();
            for (k, cv) in cfg.as_object().expect("object") {
                let (cty, _) = field_ty(fields, rest, k);
                let merged = match out.get(k) {
                    Some(lv) => merge(types, cty, lv, cv),
                    None => cv.clone(),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (Walk::List(ety, kind), Walk::List(..)) => {
            let mut out: Vec<Value> = live.as_array().expect("array").clone();
            for (i, item) in cfg.as_array().expect("array").iter().enumerate() {
                let pe = item_pe(kind, i, item);
                let pos = out.iter().enumerate().position(|(j, x)| item_pe(kind, j, x) == pe);
                match (pos, kind) {
                    (Some(_), ListKind::Set) => {}
                    (Some(j), _) => out[j] = merge(types, ety, &out[j], item),
                    (None, _) => out.push(item.clone()),
                }
            }
            Value::Array(out)
        }
        _ => cfg.clone(),
    }
}

/// Removes from `v` the member paths of `rm`, except where `keep` still has a path
/// (an object or list emptied by it goes too).
fn remove(types: &Types, ty: &TyRef, v: &mut Value, rm: &FieldSet, keep: &FieldSet) {
    let empty = FieldSet::default();
    match walk_of(types, ty, v) {
        Walk::Fields(fields, rest) => {
            let m = v.as_object_mut().expect("object");
            for (pe, r) in &rm.children {
                let Some(k) = pe.strip_prefix("f:") else { continue };
                let kp = keep.children.get(pe).unwrap_or(&empty);
                if r.member && kp.is_empty() {
                    m.remove(k);
                    continue;
                }
                let (cty, _) = field_ty(fields, rest, k);
                if let Some(cv) = m.get_mut(k) {
                    let was_empty = is_empty_container(cv);
                    remove(types, cty, cv, r, kp);
                    if !was_empty && is_empty_container(cv) && kp.is_empty() {
                        m.remove(k);
                    }
                }
            }
        }
        Walk::List(ety, kind) => {
            let kind = kind.clone();
            let items = v.as_array_mut().expect("array");
            let mut i = 0;
            let mut index = 0;
            while i < items.len() {
                let pe = item_pe(&kind, index, &items[i]);
                index += 1;
                if let Some(r) = rm.children.get(&pe) {
                    let kp = keep.children.get(&pe).unwrap_or(&empty);
                    if r.member && kp.is_empty() {
                        items.remove(i);
                        continue;
                    }
                    if kind != ListKind::Set {
                        remove(types, ety, &mut items[i], r, kp);
                    }
                }
                i += 1;
            }
        }
        Walk::Leaf => {}
    }
}

fn is_empty_container(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// One manager's entry of `metadata.managedFields`.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    pub api_version: String,
    pub time: Option<String>,
    pub subresource: Option<String>,
    pub set: FieldSet,
}

impl Entry {
    fn same_key(&self, manager: &str, operation: &str, sub: Option<&str>) -> bool {
        self.manager == manager && self.operation == operation && self.subresource.as_deref() == sub
    }

    /// How a conflict names the manager: `"kubectl" using apps/v1` for updates.
    fn shown(&self) -> String {
        if self.operation == "Update" {
            format!("{:?} using {}", self.manager, self.api_version)
        } else {
            format!("{:?}", self.manager)
        }
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("manager".into(), json!(self.manager));
        m.insert("operation".into(), json!(self.operation));
        m.insert("apiVersion".into(), json!(self.api_version));
        if let Some(t) = &self.time {
            m.insert("time".into(), json!(t));
        }
        m.insert("fieldsType".into(), json!("FieldsV1"));
        m.insert("fieldsV1".into(), self.set.to_json());
        if let Some(s) = &self.subresource {
            m.insert("subresource".into(), json!(s));
        }
        Value::Object(m)
    }
}

/// The managedFields entries of an object (entries without a manager are dropped, as a
/// client resetting them with `[{}]` means).
pub fn read(obj: &Value) -> Vec<Entry> {
    let list = obj.pointer("/metadata/managedFields").and_then(Value::as_array);
    list.into_iter()
        .flatten()
        .filter_map(|e| {
            Some(Entry {
                manager: e.get("manager")?.as_str()?.to_string(),
                operation: e.get("operation").and_then(Value::as_str).unwrap_or("Update").to_string(),
                api_version: e.get("apiVersion").and_then(Value::as_str).unwrap_or("").to_string(),
                time: e.get("time").and_then(Value::as_str).map(str::to_string),
                subresource: e.get("subresource").and_then(Value::as_str).map(str::to_string),
                set: FieldSet::from_json(e.get("fieldsV1").unwrap_or(&Value::Null)),
            })
        })
        .collect()
}

/// Whether the client sent managedFields of its own (which then replace the stored ones).
pub fn sent(obj: &Value) -> bool {
    obj.pointer("/metadata/managedFields").and_then(Value::as_array).is_some_and(|a| !a.is_empty())
}

/// Sets an object's managedFields to `entries` (none: the field goes).
pub fn write(obj: &mut Value, entries: &[Entry]) {
    let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) else { return };
    let list: Vec<Value> = entries.iter().filter(|e| !e.set.is_empty()).map(Entry::to_json).collect();
    if list.is_empty() {
        m.remove("managedFields");
    } else {
        m.insert("managedFields".into(), Value::Array(list));
    }
}

/// What one write is: which kind, which manager, which subresource.
pub struct Writer<'a> {
    pub types: &'a Types,
    pub root: TyRef,
    pub api_version: String,
    pub manager: &'a str,
    pub subresource: Option<&'a str>,
    /// Whether the kind has a `/status` subresource (status is then not the main
    /// resource's to own, and the main resource is not the status's).
    pub has_status: bool,
}

/// The metadata fields no manager owns.
const UNTRACKED_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
    "managedFields",
];

impl Writer<'_> {
    /// The part of an object its fields are tracked for.
    fn tracked(&self, obj: &Value) -> Value {
        let mut v = obj.clone();
        let Some(m) = v.as_object_mut() else { return v };
        m.remove("apiVersion");
        m.remove("kind");
        if self.has_status {
            if self.subresource == Some("status") {
                m.retain(|k, _| k == "status");
            } else {
                m.remove("status");
            }
        }
        if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in UNTRACKED_META {
                meta.remove(*k);
            }
            if meta.is_empty() {
                m.remove("metadata");
            }
        }
        v
    }

    /// Records a create, update or non-apply patch from `old` (None on create) to `new`
    /// in `new`'s managedFields. `base` are the entries to start from (the stored ones,
    /// or the client's when it sent its own).
    pub fn update(&self, old: Option<&Value>, new: &mut Value, mut base: Vec<Entry>) {
        let a = old.map(|o| self.tracked(o)).unwrap_or_else(|| json!({}));
        let b = self.tracked(new);
        let c = compare(self.types, &self.root, &a, &b);
        let mut changed = c.added.clone();
        changed.union(&c.modified);
        for e in base.iter_mut().filter(|e| !e.same_key(self.manager, "Update", self.subresource)) {
            e.set = e.set.difference(&changed).difference(&c.removed);
        }
        let pos = base.iter().position(|e| e.same_key(self.manager, "Update", self.subresource));
        let mut mine = match pos {
            Some(i) => base[i].clone(),
            None => Entry {
                manager: self.manager.to_string(),
                operation: "Update".into(),
                api_version: self.api_version.clone(),
                time: None,
                subresource: self.subresource.map(str::to_string),
                set: FieldSet::default(),
            },
        };
        let mut set = mine.set.difference(&c.removed);
        set.union(&changed);
        set.prune();
        if set != mine.set || mine.time.is_none() {
            mine.time = Some(super::meta::now_rfc3339());
        }
        mine.set = set;
        mine.api_version = self.api_version.clone();
        match pos {
            Some(i) => base[i] = mine,
            None => base.push(mine),
        }
        write(new, &base);
    }

    /// Applies `config` for this manager to `live` (None: the object is created). The
    /// result carries the new managedFields; conflicts with other managers are an error
    /// unless `force`.
    pub fn apply(&self, live: Option<&Value>, config: &Value, force: bool) -> Result<Value, Conflicts> {
        let mut base = live.map(read).unwrap_or_default();
        let cfg = strip_nulls(config);
        let mut merged = match live {
            Some(l) => merge(self.types, &self.root, l, &cfg),
            None => cfg.clone(),
        };
        let mut applied = FieldSet::default();
        to_set(self.types, &self.root, &self.tracked(&cfg), &mut applied);
        applied.prune();
        let pos = base.iter().position(|e| e.same_key(self.manager, "Apply", self.subresource));
        let last = pos.map(|i| base[i].clone());
        let mut owned = applied.clone();
        for (_, e) in base.iter().enumerate().filter(|(i, _)| Some(*i) != pos) {
            owned.union(&e.set);
        }
        let last_set = last.as_ref().map(|l| l.set.clone()).unwrap_or_default();
        let rm = last_set.difference(&owned);
        if !rm.is_empty() {
            remove(self.types, &self.root, &mut merged, &rm, &owned);
        }
        let before = live.map(|l| self.tracked(l)).unwrap_or_else(|| json!({}));
        let c = compare(self.types, &self.root, &before, &self.tracked(&merged));
        let mut changed = c.added.clone();
        changed.union(&c.modified);
        let mut conflicts = Vec::new();
        for (_, e) in base.iter().enumerate().filter(|(i, _)| Some(*i) != pos) {
            let clash = e.set.intersection(&changed);
            if !clash.is_empty() {
                conflicts.extend(clash.paths().into_iter().map(|p| (e.shown(), p)));
            }
        }
        if !conflicts.is_empty() && !force {
            return Err(Conflicts(conflicts));
        }
        for (_, e) in base.iter_mut().enumerate().filter(|(i, _)| Some(*i) != pos) {
            e.set = e.set.difference(&changed).difference(&c.removed);
        }
        let time = match &last {
            Some(l) if l.set == applied => l.time.clone(),
            _ => Some(super::meta::now_rfc3339()),
        };
        let mine = Entry {
            manager: self.manager.to_string(),
            operation: "Apply".into(),
            api_version: self.api_version.clone(),
            time,
            subresource: self.subresource.map(str::to_string),
            set: applied,
        };
        match pos {
            Some(i) => base[i] = mine,
            None => base.push(mine),
        }
        write(&mut merged, &base);
        Ok(merged)
    }
}

/// An applied configuration without its null fields (which set nothing).
fn strip_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            Value::Object(m.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), strip_nulls(v))).collect())
        }
        Value::Array(a) => Value::Array(a.iter().map(strip_nulls).collect()),
        v => v.clone(),
    }
}

/// Fields an apply would take from other managers: (manager as shown, field path).
#[derive(Debug)]
pub struct Conflicts(pub Vec<(String, String)>);

impl Conflicts {
    /// Kubernetes's message: `Apply failed with 1 conflict: conflict with "m": .a.b`.
    pub fn message(&self) -> String {
        let n = self.0.len();
        if let [(m, p)] = self.0.as_slice() {
            return format!("Apply failed with 1 conflict: conflict with {m}: {p}");
        }
        let mut by: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (m, p) in &self.0 {
            by.entry(m).or_default().push(p);
        }
        let mut lines = Vec::new();
        for (m, ps) in by {
            lines.push(format!("conflicts with {m}:"));
            lines.extend(ps.iter().map(|p| format!("- {p}")));
        }
        format!("Apply failed with {n} conflicts: {}", lines.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::registry::Registry;

    fn writer<'a>(kind: &str, manager: &'a str) -> Writer<'a> {
        let def = Registry::builtin().all().iter().find(|d| d.kind == kind).unwrap();
        let types = Types::builtin();
        Writer {
            types,
            root: types.root(def),
            api_version: def.api_version(),
            manager,
            subresource: None,
            has_status: def.has_status,
        }
    }

    fn deploy(image: &str, replicas: i64) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"app": "d"}},
               "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "d"}},
                        "template": {"metadata": {"labels": {"app": "d"}},
                                     "spec": {"containers": [{"name": "c", "image": image, "ports": [{"containerPort": 80}]}]}}}})
    }

    #[test]
    fn fields_v1_shape_and_round_trip() {
        let w = writer("Deployment", "m");
        let mut s = FieldSet::default();
        to_set(w.types, &w.root, &w.tracked(&deploy("i", 1)), &mut s);
        let j = s.to_json();
        assert_eq!(j["f:metadata"]["f:labels"], json!({"f:app": {}}));
        assert_eq!(j["f:spec"]["f:selector"], json!({}), "a LabelSelector is atomic");
        let c = &j["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"c\"}"];
        assert_eq!(c["."], json!({}));
        assert_eq!(c["f:ports"]["k:{\"containerPort\":80,\"protocol\":\"TCP\"}"]["f:containerPort"], json!({}));
        assert_eq!(FieldSet::from_json(&j), s);
        assert!(s.paths().contains(&".spec.template.spec.containers[name=\"c\"].image".to_string()));
    }

    #[test]
    fn apply_owns_conflicts_forces_and_removes() {
        let a = writer("Deployment", "alice");
        let created = a.apply(None, &deploy("i1", 1), false).unwrap();
        assert_eq!(read(&created).len(), 1);
        // bob changes replicas with an update: he now owns it, alice no longer does.
        let b = writer("Deployment", "bob");
        let mut scaled = created.clone();
        scaled["spec"]["replicas"] = json!(3);
        b.update(Some(&created), &mut scaled, read(&created));
        let entries = read(&scaled);
        assert!(entries.iter().any(|e| e.manager == "bob" && e.set.paths() == vec![".spec.replicas"]));
        // alice re-applies replicas 1: conflict with bob.
        let err = a.apply(Some(&scaled), &deploy("i1", 1), false).unwrap_err();
        assert_eq!(err.message(), "Apply failed with 1 conflict: conflict with \"bob\" using apps/v1: .spec.replicas");
        // the same value as live is no conflict: shared.
        let shared = a.apply(Some(&scaled), &deploy("i1", 3), false).unwrap();
        assert_eq!(shared["spec"]["replicas"], 3);
        // forced: alice takes it, bob's entry goes.
        let forced = a.apply(Some(&scaled), &deploy("i1", 1), true).unwrap();
        assert_eq!(forced["spec"]["replicas"], 1);
        assert!(read(&forced).iter().all(|e| e.manager != "bob"));
        // alice drops the label and the port: they are removed; replicas dropped too.
        let mut less = deploy("i2", 1);
        less["metadata"].as_object_mut().unwrap().remove("labels");
        less["spec"]["template"]["spec"]["containers"][0].as_object_mut().unwrap().remove("ports");
        less["spec"].as_object_mut().unwrap().remove("replicas");
        let out = a.apply(Some(&forced), &less, false).unwrap();
        assert!(out["metadata"].get("labels").is_none(), "{out}");
        assert!(out["spec"]["template"]["spec"]["containers"][0].get("ports").is_none());
        assert!(out["spec"].get("replicas").is_none());
        assert_eq!(out["spec"]["template"]["spec"]["containers"][0]["image"], "i2");
    }

    #[test]
    fn removal_keeps_what_others_own() {
        let a = writer("ConfigMap", "a");
        let cm = |d: Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": d});
        let one = a.apply(None, &cm(json!({"x": "1", "y": "2"})), false).unwrap();
        let b = writer("ConfigMap", "b");
        let two = b.apply(Some(&one), &cm(json!({"y": "2"})), false).unwrap();
        let three = a.apply(Some(&two), &cm(json!({})), false).unwrap();
        assert_eq!(three["data"], json!({"y": "2"}), "b still owns y");
    }
}
