#!/usr/bin/env python3
"""Generates src/api/protobuf/schema.rs: for every Kubernetes protobuf message, each
field's tag, JSON name and type, so rk can decode `application/vnd.kubernetes.protobuf`
request bodies (what client-go's typed clients and kubectl's `create <kind>` send).

Field tags and types come from the prost bindings of the k8s-pb crate; JSON names from
the serde code of the k8s-openapi crate (both dependencies of rk, read from cargo's
registry). Run after changing either version:

    scripts/gen-protobuf-schema.py > src/api/protobuf/schema.rs
"""
import glob
import os
import re
import sys

HOME = os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo"))


def crate_dir(name):
    found = sorted(glob.glob(f"{HOME}/registry/src/*/{name}"))
    if not found:
        sys.exit(f"gen-protobuf-schema: {name} not in cargo's registry; run `cargo fetch` first")
    return found[-1]


PB = crate_dir("k8s-pb-0.9.0") + "/src"
OA = crate_dir("k8s-openapi-0.29.0") + "/src/v1_33"


def norm(s):
    return s.replace("r#", "").replace("_", "").lower()


# JSON names per (package path, lowercased struct name): {normalised rust field: json}.
json_names = {}
for path in glob.glob(f"{OA}/**/*.rs", recursive=True):
    rel = os.path.relpath(os.path.dirname(path), OA)
    text = open(path).read()
    for m in re.finditer(r"pub struct (\w+)", text):
        key = (rel, m.group(1).lower())
        fields = json_names.setdefault(key, {})
        for jm in re.finditer(r'"([^"]+)" => Field::Key_(\w+),', text):
            fields[norm(jm.group(2))] = jm.group(1)

# Known renames where the Rust names differ beyond case and underscores.
SPECIAL = {"ref": "$ref", "schema": "$schema"}

ATTR = re.compile(r"#\[prost\(([^]]*)\)\]")
FIELD = re.compile(r"pub (r#)?(\w+):\s*([^;]*?),\s*$")


def parse_module(path):
    rel = os.path.relpath(os.path.dirname(path), PB)
    pkg = rel.replace("/", ".")
    msgs = []
    cur = None
    attr = None
    buf = ""
    for line in open(path):
        s = line.strip()
        m = re.match(r"pub struct (\w+) \{", s)
        if m:
            cur = (m.group(1), [])
            msgs.append(cur)
            continue
        if cur is None:
            continue
        if s == "}":
            cur = None
            continue
        am = ATTR.search(s)
        if am:
            attr = am.group(1)
            buf = ""
            continue
        if attr is not None and (s.startswith("pub ") or buf):
            buf += " " + s
            fm = FIELD.search(buf.strip())
            if fm and fm.group(3).count("<") == fm.group(3).count(">"):
                cur[1].append((attr, fm.group(2), fm.group(3)))
                attr = None
                buf = ""
    return rel, pkg, msgs


def resolve(pkg, ty):
    """Resolves a Rust type path (super::super::x::Y) relative to pkg."""
    ty = re.sub(r"\s+", "", ty).rstrip(",")
    ty = re.sub(r"::prost::alloc::boxed::Box<(.*)>", r"\1", ty)
    parts = ty.split("::")
    base = pkg.split(".")
    while parts and parts[0] == "super":
        parts.pop(0)
        base.pop()
    return ".".join(base + parts)


modules = [parse_module(p) for p in sorted(glob.glob(f"{PB}/**/mod.rs", recursive=True))]
names = sorted(f"{pkg}.{n}" for _, pkg, msgs in modules for n, _ in msgs)
index = {n: i for i, n in enumerate(names)}

scalar = {"string": "Str", "bool": "Bool", "int32": "Int", "int64": "Int", "double": "Float"}


def inner(ty, wrapper):
    ty = re.sub(r"\s+", "", ty).rstrip(",")
    m = re.match(rf"{wrapper}<(.*?),?>$", ty)
    return m.group(1) if m else ty


out = {}
for rel, pkg, msgs in modules:
    for name, fields in msgs:
        full = f"{pkg}.{name}"
        jn = json_names.get((rel, name.lower()), {})
        rows = []
        for attr, fname, fty in fields:
            tag = int(re.search(r'tag = "(\d+)"', attr).group(1))
            kind = attr.split(",")[0].strip()
            repeated = "repeated" in attr
            if kind.startswith("btree_map"):
                v = re.search(r'btree_map = "string, (\w+)"', attr).group(1)
                if v == "message":
                    vt = re.search(r"BTreeMap<[^,]+,\s*(.*)>$", fty.replace("\n", " ")).group(1).strip()
                    ty = f"Ty::MapMsg({index[resolve(pkg, vt)]})"
                elif v == "bytes":
                    ty = "Ty::MapBytes"
                else:
                    ty = "Ty::MapStr"
            elif kind == "message":
                t = inner(inner(fty, r"::core::option::Option"), r"::prost::alloc::vec::Vec")
                ty = f"Ty::Msg({index[resolve(pkg, t)]})"
            elif kind.startswith("bytes"):
                ty = "Ty::Bytes"
            else:
                ty = f"Ty::{scalar[kind]}"
            key = norm(fname)
            # Go structs embedded with `json:",inline"`: the field is named after its type
            # and has no JSON name; its fields belong to the parent object.
            if kind == "message" and key not in jn and jn:
                tname = ty[len("Ty::Msg("):-1]
                if norm(names[int(tname)].split(".")[-1]) == key or f"{full}.{fname}" == "api.core.v1.Probe.handler":
                    ty = f"Ty::Inline({tname})"
            if key not in jn and jn and os.environ.get("DEBUG"):
                print(f"no JSON name for {full}.{fname}", file=sys.stderr)
            json = jn.get(key) or SPECIAL.get(key) or re.sub(r"_(\w)", lambda m: m.group(1).upper(), fname)
            rows.append((tag, json, ty, repeated))
        out[full] = sorted(rows)

print("// @generated by scripts/gen-protobuf-schema.py from the k8s-pb and k8s-openapi crates; do not edit.")
print("//! Kubernetes protobuf messages: per field, its tag, JSON name and type.")
print()
print("use super::{Field, Msg, Ty};")
print()
print("/// Every message, sorted by full name (`api.core.v1.ConfigMap`).")
print("pub static MESSAGES: &[Msg] = &[")
for n in names:
    print(f'    Msg {{ name: "{n}", fields: &[')
    for tag, json, ty, rep in out[n]:
        print(f'        Field {{ tag: {tag}, json: "{json}", ty: {ty}, repeated: {str(rep).lower()} }},')
    print("    ] },")
print("];")
