#!/usr/bin/env python3
"""Counts the items of a crate's public API from rustdoc's JSON (the architecture issue's
before/after measure): items reachable from the crate root through public modules and
re-exports, with the inherent methods of public types.

    cargo +nightly rustdoc -p multiproc --all-features -- -Z unstable-options --output-format json
    python3 tools/public_api_count.py target/doc/multiproc.json
"""
import json,sys
d=json.load(open(sys.argv[1]))
idx=d['index']
# walk from root through public modules and re-exports, counting reachable public items
root=d['root']
seen=set(); count={}
def visit(i):
    if i in seen or i not in idx: return
    seen.add(i)
    it=idx[i]
    if it.get('crate_id',0)!=0: return
    inner=it['inner']; kind=list(inner.keys())[0]
    if it.get('visibility')!='public' and kind not in ('impl',): return
    count[kind]=count.get(kind,0)+1
    v=inner[kind]
    if kind=='module':
        for c in v["items"]: visit(str(c))
    elif kind=='use':
        if v.get('id') is not None: visit(str(v["id"]))
    elif kind in ('struct','enum','trait','union'):
        for imp in v.get('impls',[]):
            im=idx.get(str(imp))
            if im and im['inner']['impl'].get('trait') is None:
                for c in im["inner"]["impl"]["items"]: visit(str(c))
        if kind=='enum':
            for c in v.get("variants",[]): visit(str(c))
        if kind=='trait':
            for c in v.get("items",[]): visit(str(c))
visit(str(root))
print(sum(count.values()), dict(sorted(count.items())))
