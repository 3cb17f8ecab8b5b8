#!/usr/bin/env python3
"""Print the markdown tables of tools/gnu_suite/README.md from results.json.

    python3 tools/gnu_suite/summary.py [results.json] [causes.json]

causes.json (hand-kept) names the cause of each "differs" case:
{"causes": {KEY: {"what": ..., "repro": ...}}, "cases": {"par_name": KEY}}.
A case that differs and is not in it is listed as "not yet classified".
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["same", "differs", "unsupported option", "rejected value", "timeout",
         "GNU timed out", "timeout (GNU too)", "unstable", "harness error", "out of scope"]


def main() -> int:
    res = json.loads(Path(sys.argv[1] if len(sys.argv) > 1 else HERE / "results.json").read_text())
    cpath = Path(sys.argv[2] if len(sys.argv) > 2 else HERE / "causes.json")
    causes = json.loads(cpath.read_text()) if cpath.exists() else {"causes": {}, "cases": {}}
    cases = res["cases"]
    meta = res["meta"]
    counts = defaultdict(int)
    for c in cases:
        counts[c["cls"]] += 1
    run = [c for c in cases if c["cls"] != "out of scope"]
    print(f"Binary: `{meta['multiproc']}` built {meta['multiproc_mtime']} at commit {meta['git_head']}; "
          f"timeout {meta['timeout']:g}s per run"
          + (f" ({meta['long_timeout']:g}s for cases where GNU took longer)" if meta.get("long_timeout") else "")
          + f"; whole run {meta['seconds'] // 60} min.\n")
    print("| class | cases | of which GNU's own run matched wanted-results |")
    print("|---|---:|---:|")
    for k in ORDER + sorted(set(counts) - set(ORDER)):
        if counts.get(k):
            w = sum(1 for c in cases if c["cls"] == k and c.get("gnu_matches_wanted"))
            print(f"| {k} | {counts[k]} | {'' if k == 'out of scope' else w} |")
    print(f"| **all local par_\\* cases** | **{len(cases)}** | |")
    print(f"\nRun (not out of scope): {len(run)}; same: {counts['same']} "
          f"({100 * counts['same'] / max(1, len(run)):.0f}%).\n")

    # Unsupported options: every case that hits one (a case may hit several).
    by_opt = defaultdict(list)
    for c in run:
        if c["cls"] != "same":
            for o in c.get("unsupported", []):
                by_opt[o].append(c["name"])
    print("### Options we reject (cases that differ and pass them to `parallel`)\n")
    print("A case is counted under every such option it uses; the class is by the first one.\n")
    print("| option | cases | which |")
    print("|---|---:|---|")
    for o, names in sorted(by_opt.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        print(f"| `{o}` | {len(names)} | {', '.join(names)} |")

    by_val = defaultdict(list)
    for c in run:
        if c["cls"] != "same":
            for v in c.get("rejected_values", []):
                by_val[v].append(c["name"])
    if by_val:
        print("\n### Values or repetitions we refuse where GNU takes them\n")
        print("| what | cases |")
        print("|---|---|")
        for v, names in sorted(by_val.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            print(f"| `{v}` | {', '.join(names)} |")

    print("\n### Cases whose output differs, by cause\n")
    groups = defaultdict(list)
    for c in run:
        if c["cls"] in ("differs", "timeout", "unstable"):
            groups[causes["cases"].get(c["name"], "?")].append(c)
    print("| cause | cases | which |")
    print("|---|---:|---|")
    for key, cs in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        what = causes["causes"].get(key, {}).get("what", "not yet classified")
        names = ", ".join(c["name"] + ("" if c["cls"] == "differs" else " (" + c["cls"] + ")") for c in cs)
        print(f"| {what} | {len(cs)} | {names} |")

    t = [c for c in run if "timed out" in c["cls"] or "GNU too" in c["cls"]]
    if t:
        print("\n### Not compared: GNU's own run did not finish in time\n")
        print(", ".join(f"{c['name']} ({c['file']})" for c in t))

    oos = defaultdict(list)
    for c in cases:
        if c["cls"] == "out of scope":
            oos[c["cause"]].append(c["name"])
    print("\n### Out of scope (not run)\n")
    print("| needs | cases |")
    print("|---|---:|")
    for k, v in sorted(oos.items(), key=lambda kv: -len(kv[1])):
        print(f"| {k.removeprefix('needs ')} | {len(v)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
