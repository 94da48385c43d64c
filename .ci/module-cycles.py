#!/usr/bin/env python3
"""Fails if a crate's modules import each other in a cycle.

A module (one source file) depends on another when it names a path into it:
`use crate::a::b`, `use super::x`, `crate::a::f(...)`, `super::x::y`, or a
path through a `use`d module (`use super::conn;` then `conn::f`). Each path
resolves to the deepest module file it names, following re-exports
(`pub use sqlite::SqliteStore;` in `store` sends `store::SqliteStore` on to
`store::sqlite`).

A module and its own submodules are one unit: the parent declares them,
re-exports them and may hold the types they share, so edges between a
module and its ancestors or descendants do not count. Cycles between
siblings, or across branches, do: `store::url` <-> `store::sqlite`, or
`cmd` <-> `serve`.

Usage: module-cycles.py CRATE_SRC_DIR... ; prints each cycle, exits 1 if any.
       module-cycles.py --self-test ; checks that it finds the cycles it should.
"""

import os
import re
import sys

USE_RE = re.compile(r"\b((?:crate|super|self)(?:::\w+)+|(?:crate|super)\b(?:::\{[^;]*?\})?)")


def modules(src):
    """Module path (tuple) -> file, for every .rs file under src."""
    out = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            rel = os.path.relpath(path, src)[:-3].split(os.sep)
            if rel[-1] in ("mod", "lib", "main"):
                rel = rel[:-1]
            out[tuple(rel)] = path
    return out


def strip(text):
    """The source without comments, string and char literals, and
    `#[cfg(test)]` modules (unit tests may reach anywhere in their crate)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif c in "rb" and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")) and re.match(r'(?:br|r|b)?#*"', text[i:]):
            m = re.match(r'(b?r)(#*)"', text[i:])
            if m:  # raw string: ends at the quote followed by as many #
                end = text.find('"' + m.group(2), i + len(m.group(0)))
                i = n if end < 0 else end + 1 + len(m.group(2))
                out.append('""')
            else:  # b"..."
                out.append(c)
                i += 1
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            out.append('""')
        elif c == "'" and re.match(r"'(?:\\.|[^\\'])'", text[i:]):
            m = re.match(r"'(?:\\[^']*|[^\\'])'", text[i:])
            i += len(m.group(0)) if m else 1
            out.append("' '")
        else:
            out.append(c)
            i += 1
    text = "".join(out)
    text = re.sub(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{.*", "", text, flags=re.S)
    text = re.sub(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*;", "", text)
    return text


def expand_braces(path):
    """`a::{b, c::d}` -> ['a::b', 'a::c::d'] (one level is enough here)."""
    m = re.match(r"^(.*?)::\{(.*)\}$", path, flags=re.S)
    if not m:
        return [path]
    head, body = m.group(1), m.group(2)
    parts, depth, cur = [], 0, ""
    for ch in body:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    out = []
    for p in parts:
        p = p.strip()
        if not p or p == "self":
            out.append(head)
        else:
            out.extend(expand_braces(head + "::" + re.sub(r"\s+as\s+\w+$", "", p)))
    return out


REEXPORTS = {}


def resolve(path, here, mods, depth=0):
    """The deepest module that `path` (written in module `here`) names."""
    segs = [s for s in path.split("::") if s]
    base = list(here)
    if segs[0] == "crate":
        base, segs = [], segs[1:]
    while segs and segs[0] in ("super", "self"):
        if segs[0] == "super":
            base = base[:-1]
        segs = segs[1:]
    target = tuple(base)
    rest = list(segs)
    while rest and target + (rest[0],) in mods:
        target = target + (rest.pop(0),)
    if target not in mods:
        return None
    # A name the target re-exports from deeper down.
    if rest and depth < 8:
        again = REEXPORTS.get(target, {}).get(rest[0])
        if again is not None:
            return resolve("::".join(("crate",) + again + tuple(rest[1:])), (), mods, depth + 1) or target
    return target


def reexports(mods):
    """For each module: name -> the module path it re-exports it from."""
    for here, path in mods.items():
        text = strip(open(path, encoding="utf-8").read())
        names = {}
        for stmt in re.finditer(r"\bpub(?:\([^)]*\))?\s+use\s+([^;]+);", text):
            for p in expand_braces(re.sub(r"\s+", "", stmt.group(1))):
                m = re.match(r"^(.*)::(\w+)(?:as(\w+))?$", p)
                if not m:
                    continue
                source, name, alias = m.group(1), m.group(2), m.group(3)
                if source.split("::")[0] not in ("crate", "super", "self"):
                    source = "self::" + source
                target = resolve(source, here, mods)
                if target is not None and target != here:
                    names[alias or name] = target
        REEXPORTS[here] = names


def related(a, b):
    """True if one module is the other's ancestor (or the same)."""
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def graph(src):
    mods = modules(src)
    REEXPORTS.clear()
    reexports(mods)
    edges = {m: set() for m in mods}
    for here, path in mods.items():
        text = strip(open(path, encoding="utf-8").read())
        aliases = {}
        for stmt in re.finditer(r"\b(pub(?:\([^)]*\))?\s+)?use\s+([^;]+);", text):
            facade = stmt.group(1) is not None
            for p in expand_braces(re.sub(r"\s+", "", stmt.group(2))):
                alias = p.split("::")[-1]
                target = resolve(p, here, mods)
                if target is None:
                    continue
                if target[:-1] == here[: len(target) - 1] and target[-1:] and alias == target[-1]:
                    aliases[alias] = target
                is_child = target[: len(here)] == here and len(target) > len(here)
                if facade and is_child:
                    continue
                if target != here:
                    edges[here].add(target)
        body = re.sub(r"\b(pub(?:\([^)]*\))?\s+)?use\s+[^;]+;", "", text)
        for m in re.finditer(r"\b(?:crate|super)(?:::\w+)+", body):
            target = resolve(m.group(0), here, mods)
            if target is not None and target != here:
                edges[here].add(target)
        for alias, target in aliases.items():
            if re.search(rf"(?<![\w:]){alias}::\w", body) and target != here:
                edges[here].add(target)
        # Paths into child modules declared here (`schema::migrate(...)`).
        for m in re.finditer(r"(?<![\w:])(\w+)::\w", body):
            child = here + (m.group(1),)
            if child in mods:
                edges[here].add(child)
    return {m: {t for t in ts if not related(m, t)} for m, ts in edges.items()}


def cycles(edges):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            visit(v)
    return out


def self_test():
    """Trees with and without cycles, as the kinds this check must tell apart."""
    import tempfile

    def tree(files):
        root = tempfile.mkdtemp()
        for name, text in files.items():
            path = os.path.join(root, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        return graph(root)

    facade = {
        "lib.rs": "mod store; mod job; pub use store::Store;",
        "store/mod.rs": "mod url; mod sqlite; pub use sqlite::Sqlite; pub struct Store;",
        "store/sqlite.rs": "use super::url::parse; pub struct Sqlite; fn f() { let s = super::Store; }",
        "job.rs": "use crate::store::Store; // crate::job::x in a comment\nconst S: &str = \"crate::job\";",
    }
    clean = dict(facade, **{"store/url.rs": "pub fn parse() {}"})
    assert cycles(tree(clean)) == [], "parent and child referring to each other is no cycle"
    # url dispatching to a backend that imports url's helpers: a cycle,
    # found through the re-export `store::Sqlite` -> `store::sqlite`.
    cyclic = dict(facade, **{"store/url.rs": "pub fn parse() {} fn open() { super::Sqlite::new(); }"})
    assert cycles(tree(cyclic)) == [[("store", "sqlite"), ("store", "url")]], cycles(tree(cyclic))
    across = {
        "main.rs": "mod cmd; mod serve;",
        "cmd/mod.rs": "mod run; pub fn open() {} fn d() { crate::serve::serve(); }",
        "cmd/run.rs": "use crate::serve::metrics;",
        "serve/mod.rs": "pub mod metrics; pub fn serve() { crate::cmd::open(); }",
        "serve/metrics.rs": "",
    }
    assert [("cmd",), ("serve",)] in cycles(tree(across)), cycles(tree(across))
    print("self-test passed")


def main():
    if sys.argv[1:] == ["--self-test"]:
        self_test()
        return
    found = False
    for src in sys.argv[1:]:
        edges = graph(src)
        for comp in cycles(edges):
            found = True
            names = ["::".join(m) or "(root)" for m in comp]
            print(f"{src}: import cycle among: {', '.join(names)}")
            for m in comp:
                for t in sorted(edges[m]):
                    if t in comp:
                        print(f"    {'::'.join(m) or '(root)'} -> {'::'.join(t) or '(root)'}")
    if found:
        sys.exit(1)
    print("no import cycles in", ", ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
