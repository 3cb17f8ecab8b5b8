#!/usr/bin/env python3
"""Regenerates fixtures.rs and captures.rs next to this file (run once; the tests do not need Python).

    python3 gen_fixtures.py [CAPTURE_DIR]

fixtures.rs: what CPython's ForkingPickler (the pickler multiprocessing uses) writes for each case at
protocols 0-5; the expected decoded values are written by hand in tests/mod.rs.
captures.rs: every distinct pickled message of the manager captures (shared/reference/capture), with
the value decode_log.py printed for it.
"""
import array, collections, glob, os, pickle, queue, re, sys, types
from multiprocessing import managers
from multiprocessing.reduction import ForkingPickler

HERE = os.path.dirname(os.path.abspath(__file__))
CAPTURES = sys.argv[1] if len(sys.argv) > 1 else "/work/shared/reference/capture"


class Proxy:
    """Pickles exactly as BaseProxy.__reduce__ does on a manager connection."""
    def __init__(self, cls, token, kwds):
        self.cls, self.token, self.kwds = cls, token, kwds

    def __reduce__(self):
        return (managers.RebuildProxy, (self.cls, self.token, "pickle", self.kwds))


def note(e, text):
    e.add_note(text)
    return e


shared = [1, 2]
recursive = []
recursive.append(recursive)
token = managers.Token("Iterator", ("127.0.0.1", 5011), "7fecc3e7cef0")

# (case, protocols, value): the data cases are checked at every protocol (the two big ones at a few);
# objects at 2-5 (protocols 0 and 1 build some through copyreg._reconstructor instead of NEWOBJ).
DATA = range(0, 6)
OBJ = range(2, 6)
CASES = [
    ("none", DATA, None),
    ("true", DATA, True),
    ("false", DATA, False),
    ("int_0", DATA, 0),
    ("int_255", DATA, 255),
    ("int_256", DATA, 256),
    ("int_65535", DATA, 65535),
    ("int_65536", DATA, 65536),
    ("int_neg1", DATA, -1),
    ("int_i32_min", DATA, -2**31),
    ("int_2_31", DATA, 2**31),
    ("int_i64_max", DATA, 2**63 - 1),
    ("int_i64_min", DATA, -2**63),
    ("big_2_63", DATA, 2**63),
    ("big_neg_2_63_minus1", DATA, -2**63 - 1),
    ("big_2_64", DATA, 2**64),
    ("big_2_1000", DATA, 2**1000),
    ("big_neg_2_1000", DATA, -2**1000),
    ("float_1_5", DATA, 1.5),
    ("float_neg_zero", DATA, -0.0),
    ("float_inf", DATA, float("inf")),
    ("float_nan", DATA, float("nan")),
    ("float_subnormal", DATA, 5e-324),
    ("str_empty", DATA, ""),
    ("str_ascii", DATA, "get"),
    ("str_unicode", DATA, "h\u00e9llo \u2713 \U0001f40d"),
    ("str_escapes", DATA, "a\nb\\c\r\x00'\""),
    ("str_300", DATA, "x" * 300),
    ("bytes_empty", DATA, b""),
    ("bytes_small", DATA, b"\x00\xff ab"),
    ("bytes_512", (2, 3, 5), bytes(range(256)) * 2),
    ("bytearray_empty", DATA, bytearray()),
    ("bytearray_small", DATA, bytearray(b"\x00\xffab")),
    ("tuple_0", DATA, ()),
    ("tuple_1", DATA, (1,)),
    ("tuple_2", DATA, (1, "a")),
    ("tuple_3", DATA, (1, 2, 3)),
    ("tuple_4", DATA, (1, 2, 3, 4)),
    ("tuple_nested", DATA, ((1,), (2, (3,)), ())),
    ("list_empty", DATA, []),
    ("list_one", DATA, [1]),
    ("list_1001", (1, 4), list(range(1001))),
    ("dict_empty", DATA, {}),
    ("dict_one", DATA, {"timeout": 1}),
    ("dict_mixed", DATA, {1: "x", (1, 2): None, None: [1.5], "k": {"n": b"b"}}),
    ("set_empty", DATA, set()),
    ("set_ints", DATA, {1, 2, 3}),
    ("frozenset_empty", DATA, frozenset()),
    ("frozenset_ints", DATA, frozenset({3, 4})),
    ("shared", DATA, ("shared", (shared, shared))),
    ("recursive", DATA, recursive),
    ("request", DATA, (None, "get", (), {"timeout": 1.5})),
    ("global_len", DATA, len),
    ("dict_keys", OBJ, {1: 2, 3: 4}.keys()),
    ("key_error", OBJ, KeyError("missing")),
    ("queue_empty", OBJ, queue.Empty()),
    ("queue_full", OBJ, queue.Full()),
    ("value_error_note", OBJ, note(ValueError("bad value", 42), "a note")),
    ("stop_iteration", OBJ, StopIteration()),
    ("error_reply", OBJ, ("#ERROR", queue.Empty())),
    ("token", OBJ, token),
    ("proxy_reply", OBJ, ("#PROXY", (("__next__", "send", "throw", "close"), token))),
    ("rebuild_dict_proxy", OBJ,
     Proxy(managers.DictProxy, managers.Token("dict", ("127.0.0.1", 5011), "7f01"), {})),
    ("rebuild_auto_proxy", OBJ,
     Proxy(managers.AutoProxy, managers.Token("Queue", ("127.0.0.1", 5011), "7f02"),
           {"exposed": ("get", "put")})),
    ("namespace", OBJ, managers.Namespace(a=1)),
    ("array", OBJ, array.array("i", [1, 2])),
    ("ordered_dict", OBJ, collections.OrderedDict([(1, 2), (3, 4)])),
    ("simple_namespace", OBJ, types.SimpleNamespace(a=1)),
    ("complex", OBJ, 1 + 2j),
]


def rust_bytes(b, indent):
    """A Rust byte-string literal, wrapped with line continuations (a chunk never starts with a space)."""
    out, line = [], ""
    for i, c in enumerate(b):
        if 0x20 <= c < 0x7F and c not in (0x22, 0x5C) and not (c == 0x20 and line == ""):
            s = chr(c)
        else:
            s = "\\x%02x" % c
        line += s
        if len(line) >= 76:
            out.append(line)
            line = ""
    if line or not out:
        out.append(line)
    return 'b"' + ("\\\n" + " " * indent).join(out) + '"'


def fixtures():
    lines = [
        "//! Generated by `gen_fixtures.py` with CPython %s: what `ForkingPickler` writes per case and"
        % sys.version.split()[0],
        "//! protocol. Do not edit.",
        "",
        "/// (case, protocol, pickle)",
        "pub(super) const FIXTURES: &[(&str, u8, &[u8])] = &[",
    ]
    for name, protos, value in CASES:
        for p in protos:
            data = bytes(ForkingPickler.dumps(value, p))
            lines.append('    ("%s", %d, %s),' % (name, p, rust_bytes(data, 8)))
    lines.append("];")
    return "\n".join(lines) + "\n"


def captures():
    seen = {}
    for path in sorted(glob.glob(os.path.join(CAPTURES, "out/*/transcript.txt"))
                       + glob.glob(os.path.join(CAPTURES, "ref/out/*/transcript.txt"))):
        text = open(path).read()
        for block in text.split("\n- [conn ")[1:]:
            head = block.split("\n", 1)[0]
            if "AUTH" in head or "=> value:" not in block:
                continue
            n = int(re.search(r"\(= (\d+) bytes\)", head).group(1))
            data = bytearray()
            for line in block.split("\n")[1:]:
                m = re.match(r"    [0-9a-f]{4}  ((?:[0-9a-f]{2} ?)+)", line)
                if not m:
                    break
                data += bytes.fromhex(m.group(1))
            assert len(data) == n, (path, head)
            value = re.search(r"=> value: (.*)", block).group(1)
            rel = os.path.relpath(path, CAPTURES)
            seen.setdefault(bytes(data), (value, rel))
    lines = [
        "//! Generated by `gen_fixtures.py`: every distinct pickled manager message in",
        "//! `shared/reference/capture/{out,ref/out}/*/transcript.txt`, with the value `decode_log.py`",
        "//! printed for it (it shows `queue.Empty()` and `_queue.Empty()` as `Empty()`). Do not edit.",
        "",
        "/// (transcript, value as Python prints it, payload)",
        "pub(super) const CAPTURES: &[(&str, &str, &[u8])] = &[",
    ]
    for data, (value, rel) in seen.items():
        lines.append('    (\n        "%s",\n        "%s",\n        %s,\n    ),'
                     % (rel, value.replace("\\", "\\\\").replace('"', '\\"'), rust_bytes(data, 8)))
    lines.append("];")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    with open(os.path.join(HERE, "fixtures.rs"), "w") as f:
        f.write(fixtures())
    with open(os.path.join(HERE, "captures.rs"), "w") as f:
        f.write(captures())
