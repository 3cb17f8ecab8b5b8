"""Seeds for the manager_calls fuzz target: proxy calls as CPython's clients pickle them.

Usage: python3 fuzz/seeds/manager_calls.py fuzz/corpus/manager_calls

Each file is a run of calls, each a little-endian u16 length and the pickled
(ident, method, args, kwds); the target serves a dict "1", a list "2", a
namespace "3", a value "4" and an array "5".
"""

import os
import struct
import sys
from multiprocessing.reduction import ForkingPickler

SEEDS = {
    "dict": [
        ("1", "__setitem__", ("k", 1), {}),
        ("1", "__setitem__", ((1, 2.0), [1, b"x"]), {}),
        ("1", "get", ("k", None), {}),
        ("1", "setdefault", (frozenset([1, 9]), {"a": 1}), {}),
        ("1", "update", ({"x": 1.5},), {"y": True}),
        ("1", "items", (), {}),
        ("1", "pop", ("missing",), {}),
        ("1", "popitem", (), {}),
        ("1", "#GETVALUE", (), {}),
    ],
    "list": [
        ("2", "append", (1,), {}),
        ("2", "extend", ([2, 3.0, "four"],), {}),
        ("2", "insert", (-1, None), {}),
        ("2", "__setitem__", (0, 7), {}),
        ("2", "__getitem__", (slice(0, 2, None),), {}),
        ("2", "index", (3,), {}),
        ("2", "sort", (), {"reverse": True}),
        ("2", "remove", (99,), {}),
        ("2", "pop", (), {}),
    ],
    "list_python": [
        ("2", "extend", (range(5),), {}),
        ("2", "extend", ("abc",), {}),
        ("2", "__setitem__", (slice(1, 3, None), [9, 8, 7]), {}),
        ("2", "__delitem__", (slice(None, None, 2),), {}),
        ("2", "__add__", ([1],), {}),
        ("2", "__mul__", (3,), {}),
        ("2", "__imul__", (2,), {}),
        ("2", "__reversed__", (), {}),
        ("2", "index", (8, 1, -1), {}),
        ("2", "__repr__", (), {}),
        ("1", "update", ([(1, 2), ("a", "b")],), {"z": 3}),
        ("1", "__iter__", (), {}),
        ("1", "__str__", (), {}),
    ],
    "namespace": [
        ("3", "__setattr__", ("x", 1), {}),
        ("3", "__getattribute__", ("x",), {}),
        ("3", "__delattr__", ("y",), {}),
    ],
    "value_array": [
        ("4", "set", (5,), {}),
        ("4", "get", (), {}),
        ("5", "__setitem__", (1, 9), {}),
        ("5", "__getitem__", (slice(None, None, 2),), {}),
        ("5", "__len__", (), {}),
        ("9", "get", (), {}),
    ],
}


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for name, calls in SEEDS.items():
        data = b""
        for call in calls:
            body = bytes(ForkingPickler.dumps(call))
            data += struct.pack("<H", len(body)) + body
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)


main()
