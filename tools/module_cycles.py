#!/usr/bin/env python3
"""Lists the import cycles between the modules of a crate (the architecture issue's check).

    python3 tools/module_cycles.py [--files] [SRC_DIR]

SRC_DIR defaults to crates/multiproc/src. A module here is a top-level module (`process`,
`platform`, ...); with --files, each file is its own node (`process/child.rs`). An edge
A -> B means some file of A names `crate::B`, a `super::` path that leads to B, or (in a
module's own file) its child module B, in a `use` or in a path, outside `#[cfg(test)]`
modules and test files. Exits 1 if there is a cycle, after
printing each strongly connected component with the references that make it.

With --files, a module and the modules inside it are one unit as Rust makes them (a child sees
its parent's private items, a parent re-exports its children): edges between a file and its
own ancestors or descendants do not count. What is left are cycles between siblings and
cousins, such as two files of one folder that import each other.
"""
import os
import re
import sys


def module_of(path, src, files):
    rel = os.path.relpath(path, src)
    parts = rel[:-3].split(os.sep)  # drop .rs
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    if files:
        return "/".join(parts) or "lib"
    return parts[0] if parts else "lib"


def file_module_path(path, src):
    rel = os.path.relpath(path, src)
    parts = rel[:-3].split(os.sep)
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return parts


def strip_tests(text):
    # Drop `#[cfg(test)] mod x { ... }` blocks (and loom ones) by brace matching.
    out, i = [], 0
    pat = re.compile(r"#\[cfg\((?:all\()?test[^\]]*\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{")
    while True:
        m = pat.search(text, i)
        if not m:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i : m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j


def references(text, here):
    """Top-level paths this file names: crate::x and super:: chains resolved from `here`."""
    text = re.sub(r"//[^\n]*", "", text)
    found = set()
    for m in re.finditer(r"\bcrate::(\w+)((?:::\w+)*)", text):
        found.add(tuple([m.group(1)] + [p for p in m.group(2).split("::") if p]))
    # In a module's own file, `child::x` names its child module `child`.
    for m in re.finditer(r"(?<![:\w])(\w+)::(\w+)", text):
        if m.group(1) not in ("crate", "super", "self", "std", "core", "alloc"):
            found.add(tuple(here + [m.group(1), m.group(2)]))
    for m in re.finditer(r"\b((?:super::)+)(\w+)((?:::\w+)*)", text):
        ups = m.group(1).count("super::")
        base = here[: max(len(here) - ups, 0)]
        found.add(tuple(base + [m.group(2)] + [p for p in m.group(3).split("::") if p]))
    # `use crate::{a, b::c}` groups
    for m in re.finditer(r"\buse\s+crate::\{([^;]*)\};", text, re.S):
        for item in re.split(r",(?![^{]*\})", m.group(1)):
            name = item.strip().split("::")[0].strip("{} \n")
            if name:
                found.add((name,))
    return found


def related(a, b):
    """Whether one of the modules `a`, `b` (slash paths) contains the other."""
    if a == "lib" or b == "lib":
        return True
    return a.startswith(b + "/") or b.startswith(a + "/")


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    files = "--files" in sys.argv
    src = args[0] if args else "crates/multiproc/src"
    nodes, edges, why = set(), {}, {}
    paths = []
    for root, _, names in os.walk(src):
        for n in names:
            if n.endswith(".rs"):
                paths.append(os.path.join(root, n))
    known = {module_of(p, src, files) for p in paths}
    for p in sorted(paths):
        if os.sep + "tests" + os.sep in p or p.endswith(os.sep + "tests.rs"):
            continue
        a = module_of(p, src, files)
        here = file_module_path(p, src)
        nodes.add(a)
        text = strip_tests(open(p, encoding="utf-8").read())
        for ref in references(text, here):
            # the longest known module prefix of the reference
            b = None
            for k in range(len(ref), 0, -1):
                cand = "/".join(ref[:k]) if files else ref[0]
                if cand in known:
                    b = cand
                    break
            if b is None or b == a:
                continue
            if files and related(a, b):
                continue
            edges.setdefault(a, set()).add(b)
            why.setdefault((a, b), set()).add(os.path.relpath(p, src))
    # Tarjan's strongly connected components.
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
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
                sccs.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    if not sccs:
        print(f"no import cycles among {len(nodes)} modules of {src}")
        return 0
    for comp in sccs:
        print("cycle: " + " <-> ".join(comp))
        for a in comp:
            for b in sorted(edges.get(a, ())):
                if b in comp:
                    print(f"  {a} -> {b}: {', '.join(sorted(why[(a, b)]))}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
