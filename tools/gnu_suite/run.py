#!/usr/bin/env python3
"""Run GNU parallel's own local test cases against GNU parallel and against
`multiproc run`, and classify each case.

A *case* is a shell function named `par_*` in a testsuite/tests-to-run/*local*.sh
file of GNU parallel 20221122 that ends with the suite's usual driver
(`compgen -A function | grep par_ | sort | parallel ... '{} 2>&1' | filters`).

Each case is run on its own, twice, with bash, in fresh directories:

  * "gnu":  `parallel` on PATH is the real GNU parallel (/usr/bin/parallel);
  * "ours": `parallel` on PATH is a shim that execs `multiproc run "$@"`.

The script of a run is the test file as GNU wrote it up to its driver (so its
preamble, helper functions and every par_* definition are there) followed by
the file's own driver pipeline with `compgen ... | sort` replaced by the one
case's name; the OUTER parallel of that driver is always GNU parallel (as in
GNU's suite, where GNU runs its own tests), so only the `parallel` that the
case itself calls differs between the two runs.  Output lines are prefixed
"par_name<TAB>" by the driver's --tag, exactly as in wanted-results/.

Only the standard library is used.  See README.md for how to run it.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEFAULT_SRC = HERE / "parallel-20221122"
DEFAULT_BIN = REPO / "target" / "release" / "multiproc"
GNU_PARALLEL = "/usr/bin/parallel"
MARK = "@@GNU_SUITE_CASE_START@@"

# --------------------------------------------------------------------------
# Cases that need something other than `parallel` itself.  They are not run
# with the shim (nor with GNU): "out of scope: needs X".  The patterns are
# matched against the case's body with comments removed.
# --------------------------------------------------------------------------
OUT_OF_SCOPE = [
    ("ssh/remote hosts", re.compile(
        r"\bssh\b|--sshlogin|--slf\b|--sshloginfile|--nonall|--onall|--filter-hosts"
        r"|--transfer|--trc\b|--return\b|--basefile|--bf\b|--controlmaster|sshpass"
        r"|\$SERVER\d|parallel-server|@lo\b|\bvagrant\b"
        r"|parallel\b[^\n|;]*\s-[a-zA-Z]*S\s*\S|\s'?-S\s*(?:lo\b|:|\d+/|localhost|\$)")),
    ("sem", re.compile(r"\bsem\b|--semaphore")),
    ("sql", re.compile(r"\bsql\b|--sql|sqlite3:|pg://|mysql://|csv:///|\$(SQLITE|PG|MYSQL|CSV)\b|\bp_wrapper\b")),
    ("niceload", re.compile(r"\bniceload\b")),
    ("parset", re.compile(r"\bparset\b")),
    ("env_parallel", re.compile(r"env_parallel")),
    ("parsort", re.compile(r"\bparsort\b")),
    ("parcat", re.compile(r"\bparcat\b")),
    ("GNU parallel's perl source (`which parallel` run with perl 5.14)",
     re.compile(r"perl5\.14parallel|perl\d*\s+`which parallel`|perl\s+\$\(which parallel\)")),
]

UNEXPECTED = re.compile(r"error: unexpected argument '([^']*)' found")
INVALID_VALUE = re.compile(r"error: invalid value '([^']*)' for '([^' ]*)")
OURS_BAD = re.compile(r"^(?:[^\t\n]*\t)?parallel: bad (\S+) \"([^\"\n]*)\"", re.M)


# --------------------------------------------------------------------------
# Parsing the test files
# --------------------------------------------------------------------------
FUNC_START = re.compile(r"^(par_[A-Za-z0-9_.:+-]+)\s*\(\)")
DRIVER_START = re.compile(r"^compgen -A function \| e?grep .*par_")


def strip_comments(text: str) -> str:
    return "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#"))


def split_pipeline(text: str) -> list[str]:
    """Split a shell pipeline at top-level `|` (not `||`, not inside quotes)."""
    segs, cur, i, q = [], [], 0, None
    while i < len(text):
        c = text[i]
        if q:
            cur.append(c)
            if c == "\\" and q == '"' and i + 1 < len(text):
                cur.append(text[i + 1])
                i += 1
            elif c == q:
                q = None
        elif c in "'\"":
            q = c
            cur.append(c)
        elif c == "\\" and i + 1 < len(text):
            cur.append(c)
            cur.append(text[i + 1])
            i += 1
        elif c == "|" and text[i + 1:i + 2] != "|" and (not cur or cur[-1] != "|") and text[i - 1:i] != "|":
            segs.append("".join(cur).strip())
            cur = []
        else:
            cur.append(c)
        i += 1
    segs.append("".join(cur).strip())
    return segs


def parse_file(path: Path):
    """Return (prefix_text, driver_segments, cases) or None if no driver."""
    lines = path.read_text(errors="surrogateescape").splitlines()
    drv = next((i for i, l in enumerate(lines) if DRIVER_START.match(l)), None)
    if drv is None:
        return None
    # The driver pipeline: continue while the previous code line ends in '|'
    # or '\'; comment lines inside it are skipped.
    body, j = [], drv
    while j < len(lines):
        l = lines[j]
        if l.lstrip().startswith("#"):
            j += 1
            continue
        body.append(l)
        j += 1
        s = l.rstrip()
        if not (s.endswith("|") or s.endswith("\\")):
            # the next code line may start with '|'
            k = j
            while k < len(lines) and lines[k].lstrip().startswith("#"):
                k += 1
            if k < len(lines) and lines[k].lstrip().startswith("|"):
                j = k
                continue
            break
    segs = split_pipeline(" ".join(x.rstrip().rstrip("\\") for x in body))
    cases: dict[str, str] = {}
    i = 0
    while i < drv:
        m = FUNC_START.match(lines[i])
        if m:
            k = i + 1
            while k < drv and not lines[k].startswith("}"):
                k += 1
            cases[m.group(1)] = "\n".join(lines[i:k + 1])
            i = k + 1
        else:
            i += 1
    prefix = "\n".join(lines[:drv])
    return prefix, segs, cases


def make_driver(segs: list[str]) -> str | None:
    """Rewrite the file's driver for one case: feed only "$GNU_SUITE_CASE" to
    the outer GNU parallel, keep its options and the filters after it."""
    k = next((i for i, s in enumerate(segs)
              if re.match(r"^(stdout\s+)?parallel\b", s)), None)
    if k is None:
        return None
    outer = re.sub(r"^(stdout\s+)?parallel\b", r'\1"$GNU_SUITE_OUTER"', segs[k])
    outer = outer.replace("/tmp/jl-", "$TMPDIR/jl-")
    feed = "printf '%s\\n' \"$GNU_SUITE_CASE\""
    return " |\n    ".join([feed, outer] + segs[k + 1:])


ANY_FUNC = re.compile(r"^([A-Za-z_][A-Za-z0-9_.:+-]*)\s*\(\)", re.M)


def helpers_of(prefix: str) -> dict[str, str]:
    """Top-level shell functions of a test file other than par_* (helpers)."""
    lines = prefix.splitlines()
    out, i = {}, 0
    while i < len(lines):
        m = ANY_FUNC.match(lines[i])
        if m and not m.group(1).startswith("par_"):
            k = i + 1
            while k < len(lines) and not lines[k].startswith("}"):
                k += 1
            out[m.group(1)] = "\n".join(lines[i:k + 1])
            i = k + 1
        else:
            i += 1
    return out


def with_helpers(body: str, helpers: dict[str, str]) -> str:
    """The body plus (transitively) the bodies of the file's helpers it calls."""
    seen, todo, parts = set(), [body], [body]
    while todo:
        code = strip_comments(todo.pop())
        for name, hb in helpers.items():
            if name not in seen and re.search(r"(?<![\w.-])" + re.escape(name) + r"(?![\w.-])", code):
                seen.add(name)
                parts.append(hb)
                todo.append(hb)
    return "\n".join(parts)


def out_of_scope(body: str) -> str | None:
    code = strip_comments(body)
    needs = [what for what, rx in OUT_OF_SCOPE if rx.search(code)]
    return ", ".join(needs) if needs else None


# --------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------
def kill_session(sid: int) -> None:
    """Kill every process still in the session we started (only those)."""
    for _ in range(3):
        pids = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat", "rb") as f:
                    st = f.read().decode(errors="replace")
                fields = st[st.rindex(")") + 2:].split()
                if int(fields[3]) == sid:  # field 6 of stat: session id
                    pids.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
        if not pids:
            return
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.05)


# Each run happens in a private mount namespace (util-linux `unshare`, needs
# root): /tmp and /dev/shm are empty private directories, the case's working
# directory, HOME and script are bound at fixed paths under MNT, and the rest
# of / is read-only.  GNU's tests do things like `rm -f /tmp/*.{log,par,...}`,
# `sudo mount`, `sudo mv /usr/share/perl5/...`; none of it can reach the
# machine.  The fixed paths also make the two runs' paths identical.
# /tmp and /dev/shm are size-limited tmpfs (2 GB, 1 GB) and each process gets
# RLIMIT_FSIZE 2 GB and RLIMIT_AS 6 GB: par_tmp_full runs `cat /dev/zero`
# into --tmpdir (GNU fills the disk; we hold output in memory).
MNT = Path("/var/tmp/gnu_suite.mnt")
NS_SETUP = r"""
set -e
mount -t tmpfs -o size=2g gnu_suite_tmp /tmp
mount -t tmpfs -o size=1g gnu_suite_shm /dev/shm
for d in cwd home script; do mount --bind "$R/$d" "$M/$d"; done
mount -o remount,bind,ro /
mkdir -p "$TMPDIR"
cd "$M/cwd"
set +e
exec bash "$M/script/case.sh"
"""


def run_script(script: str, rundir: Path, tool: str, env_base: dict, timeout: float,
               shimdir: Path, helperdir: Path, src: Path, base: str):
    for d in ("cwd", "home/.parallel", "script", "tmp", "shm"):
        (rundir / d).mkdir(parents=True, exist_ok=True)
    (rundir / "home" / ".parallel" / "will-cite").touch()  # no citation notice
    (rundir / "cwd" / "input-files").symlink_to(src / "testsuite" / "input-files")
    (rundir / "script" / "case.sh").write_text(script, errors="surrogateescape")
    # TMPDIR as GNU's Start.sh sets it.
    env = dict(env_base, HOME=str(MNT / "home"), TMPDIR=f"/tmp/{base}-tmpdir",
               R=str(rundir), M=str(MNT))
    # The shim goes first for "ours"; the helpers go last (an installed one wins).
    env["PATH"] = (f"{shimdir}:" if tool == "ours" else "") + f"{env_base['PATH']}:{helperdir}"
    if tool == "ours":
        env["GNU_SUITE_ARGV_LOG"] = str(MNT / "script" / "argv.log")
    # A pseudo-terminal as the session's controlling terminal, as GNU's
    # Start.sh gives its tests one (`parallel --tty`): /dev/tty opens (GNU runs
    # `tput` on it), while stdin stays /dev/null and stdout/stderr pipes.
    # What is written to it is drained and kept apart (not compared).
    master, slave = os.openpty()
    slave_name = os.ttyname(slave)
    tty_out = bytearray()

    def drain():
        while True:
            try:
                b = os.read(master, 65536)
            except OSError:
                return
            if not b:
                return
            tty_out.extend(b)
    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()

    def become_session_leader():
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 30, 2 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
        os.setsid()
        os.close(os.open(slave_name, os.O_RDWR))  # first tty opened: controlling terminal

    t0 = time.monotonic()
    p = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--",
                          "bash", "-c", NS_SETUP],
                         cwd="/", env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, preexec_fn=become_session_leader)
    timed_out = False
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        kill_session(p.pid)
        try:
            out, err = p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            out, err = b"", b"(harness: output pipes still open after kill)\n"
    secs = time.monotonic() - t0
    kill_session(p.pid)  # leftovers started in the background by the case
    os.close(slave)
    drainer.join(timeout=5)
    os.close(master)
    (rundir / "tty").write_bytes(bytes(tty_out))
    (rundir / "stdout").write_bytes(out)
    (rundir / "stderr").write_bytes(err)
    out = out.decode("utf-8", "replace")
    err = err.decode("utf-8", "replace")
    return dict(out=out, err=err, rc=p.returncode, timed_out=timed_out, secs=secs,
                home=str(MNT / "home"))


def read_argv_log(path: Path) -> list[tuple[bytes, list[bytes]]]:
    """The shim's log: per call, N:len:bytes... ($PARALLEL first, then argv)."""
    try:
        data = path.read_bytes()
    except OSError:
        return []
    calls, i = [], 0
    try:
        while i < len(data):
            j = data.index(b":", i)
            n, i, fields = int(data[i:j]), j + 1, []
            for _ in range(n):
                j = data.index(b":", i)
                ln = int(data[i:j])
                fields.append(data[j + 1:j + 1 + ln])
                i = j + 1 + ln
            i += 1  # newline
            calls.append((fields[0], fields[1:]))
    except (ValueError, IndexError):
        pass
    return calls


CLAP_MULTI = re.compile(r"error: the argument '([^']*)' cannot be used multiple times")


def replay_rejections(binary: Path, calls) -> tuple[list[str], list[str]]:
    """Parse each logged call again with `--dry-run` (nothing is run; stdin is
    /dev/null) and collect what our option parser rejects: unknown options,
    and values or repetitions it refuses."""
    unknown, refused, seen = [], [], set()
    for env_parallel, argv in calls:
        key = (env_parallel, tuple(argv))
        if key in seen or len(seen) >= 300:
            continue
        seen.add(key)
        env = dict(os.environ, PARALLEL=env_parallel.decode("utf-8", "surrogateescape"))
        if not env_parallel:
            env.pop("PARALLEL")
        try:
            r = subprocess.run([str(binary), "run", "--dry-run", *argv], env=env, cwd="/",
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=3,
                               start_new_session=True)
            err = r.stderr.decode("utf-8", "replace")
        except subprocess.TimeoutExpired:
            continue
        unknown += UNEXPECTED.findall(err)
        refused += [f"{opt} {val!r}" for val, opt in INVALID_VALUE.findall(err)]
        refused += [f"{opt} given twice" for opt in CLAP_MULTI.findall(err)]
    return list(dict.fromkeys(unknown)), list(dict.fromkeys(refused))


# --------------------------------------------------------------------------
# Normalisation: ONLY what legitimately differs between two runs or two
# programs.  Every rule is listed in README.md.
# --------------------------------------------------------------------------
def normalise(text: str, run: dict) -> str:
    # 1. HOME -> '~', as GNU's Start.sh does (HOME is the same path in both
    #    runs, so this only matters for the comparison with wanted-results).
    text = text.replace(run["home"], "~")
    # 2. Program name in messages: "multiproc: ..." is our "parallel: ...".
    text = re.sub(r"(^|\t)multiproc: ", r"\1parallel: ", text, flags=re.M)
    # 3. Random temporary file names: GNU's parXXXXX.<ext>, mktemp's
    #    tmp.XXXXXXXXXX.
    text = re.sub(r"\bpar[A-Za-z0-9_]{5}\.(par|tmp|tmx|arg|all|log|swp|loa|ssh|df|pip|tmb|chr|tms|pac)\b",
                  r"parXXXXX.\1", text)
    text = re.sub(r"\btmp\.[A-Za-z0-9]{10}\b", "tmp.XXXXXXXXXX", text)
    # 4. Process names in `pstree` drawings (lines with ---): our process is
    #    called multiproc where GNU's is called parallel.
    text = re.sub(r"^(.*---.*)$", lambda m: re.sub(r"\bmultiproc\b", "parallel", m.group(1)),
                  text, flags=re.M)
    # 5. Version banners.
    text = re.sub(r"^(\S*\t)?GNU parallel 20221122$", r"\1<VERSION>", text, flags=re.M)
    text = re.sub(r"^(\S*\t)?multiproc run \d+\.\d+\.\d+ \(GNU parallel's options\)$",
                  r"\1<VERSION>", text, flags=re.M)
    return text


def split_mark(out: str):
    if MARK + "\n" in out:
        pre, case = out.split(MARK + "\n", 1)
    else:
        pre, case = out, ""
    return pre, case


def short_diff(a: str, b: str, la="gnu", lb="ours", n=8) -> list[str]:
    d = list(difflib.unified_diff(a.splitlines(), b.splitlines(), la, lb, n=0, lineterm=""))
    d = [x for x in d if not x.startswith(("---", "+++"))]
    if len(d) > n:
        d = d[:n] + [f"... ({len(d) - n} more diff lines)"]
    return [x[:200] for x in d]


def build_script(prefix: str, driver: str) -> str:
    return (prefix + "\n"
            + f"echo '{MARK}'\n"
            + driver + "\n")


# --------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default=os.environ.get("GNU_PARALLEL_SRC", str(DEFAULT_SRC)),
                    help="GNU parallel 20221122 source tree (with testsuite/); default %(default)s")
    ap.add_argument("--bin", default=str(DEFAULT_BIN), help="multiproc binary (copied at start); default %(default)s")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds per run of a case (default 20)")
    ap.add_argument("--long-timeout", type=float, default=0,
                    help="rerun a case whose GNU run timed out with this many seconds (default: no rerun)")
    ap.add_argument("--merge", action="store_true",
                    help="update the cases run in an existing --out file, keep the others")
    ap.add_argument("--filter", default="", help="regex: only cases whose FILE:NAME matches")
    ap.add_argument("--out", default=str(HERE / "results.json"), help="results file (default %(default)s)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (full outputs)")
    ap.add_argument("--list", action="store_true", help="only list the cases and their scope")
    ap.add_argument("--no-rerun", action="store_true",
                    help="do not rerun GNU for cases that differ (the stability check)")
    args = ap.parse_args()

    src = Path(args.src).resolve()
    tests = src / "testsuite" / "tests-to-run"
    wanted_dir = src / "testsuite" / "wanted-results"
    if not tests.is_dir():
        print(f"no {tests}: get GNU parallel 20221122's source first (see README.md)", file=sys.stderr)
        return 2
    if not Path(GNU_PARALLEL).exists():
        print(f"{GNU_PARALLEL} is missing (apt-get install parallel)", file=sys.stderr)
        return 2

    files = sorted(p for p in tests.glob("*local*.sh"))
    work = Path(tempfile.mkdtemp(prefix="gnu_suite.", dir="/var/tmp"))
    for d in ("cwd", "home", "script"):
        (MNT / d).mkdir(parents=True, exist_ok=True)  # mount points only, stay empty
    shimdir, helperdir = work / "shim", work / "helpers"
    shimdir.mkdir()
    helperdir.mkdir()
    binpath = Path(args.bin).resolve()
    if not args.list:
        if not binpath.exists():
            print(f"no {binpath}: cargo build --release -p multiproc-cli", file=sys.stderr)
            return 2
        # A private copy, so a rebuild by someone else mid-run does not mix two versions.
        shutil.copy2(binpath, work / "multiproc")
    bin_mtime = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(binpath.stat().st_mtime)) if binpath.exists() else None
    git_head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
    git_dirty = bool(subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "crates"],
                                    capture_output=True, text=True).stdout.strip())
    shim = shimdir / "parallel"
    # Perl, not /bin/sh: dash drops environment variables whose names are not
    # shell identifiers, such as bash's exported functions (BASH_FUNC_f%%), and
    # the cases export functions for their jobs.  GNU parallel is itself a perl
    # script, so this adds no dependency.
    # It also appends its arguments (and $PARALLEL) to $GNU_SUITE_ARGV_LOG,
    # so that options we reject are found even where a case hides the error
    # (`... 2>/dev/null`, `| grep ...`): see replay_rejections().
    shim.write_text("#!/usr/bin/perl\n"
                    "if (defined $ENV{GNU_SUITE_ARGV_LOG} and open(my $l, '>>', $ENV{GNU_SUITE_ARGV_LOG})) {\n"
                    "    my @f = ($ENV{PARALLEL} // '', @ARGV);\n"
                    "    print $l scalar(@f), ':', map({ length($_) . ':' . $_ } @f), \"\\n\";\n"
                    "    close $l;\n"
                    "}\n"
                    f'exec {{ "{work / "multiproc"}" }} "multiproc", "run", @ARGV;\n'
                    'die "parallel shim: exec: $!\\n";\n')
    shim.chmod(0o755)
    # Helpers from Ole Tange's "tangetools" that the suite expects on PATH
    # (appended to PATH, so an installed one wins).
    (helperdir / "stdout").write_text('#!/bin/bash\n"$@" 2>&1\n')
    (helperdir / "field").write_text(
        "#!/usr/bin/perl\n# field N[,M...]: print whitespace-separated fields (1-based)\n"
        "my @f = map { /^(\\d+)-(\\d+)$/ ? ($1..$2) : $_ } split /,/, join(',', @ARGV);\n"
        "while (<STDIN>) { chomp; s/^\\s+//; my @c = split /\\s+/; print join(' ', map { $c[$_-1] // '' } @f), \"\\n\"; }\n")
    # `sudo` as plain exec: we are root already, and / is read-only in the
    # namespace, so only the namespace's own mounts (a tmpfs) can happen.
    (helperdir / "sudo").write_text('#!/bin/sh\nexec "$@"\n')
    for h in helperdir.iterdir():
        h.chmod(0o755)

    env_base = {k: v for k, v in os.environ.items()
                if not k.startswith(("PARALLEL", "LC_", "MULTIPROC")) and k not in ("LANG", "OLDPWD")}
    env_base.update(LANG="C", LC_ALL="C", SHELL="/bin/bash", TIMEOUT="900",
                    GNU_SUITE_OUTER=GNU_PARALLEL)

    results = []
    t_start = time.monotonic()
    all_cases = []
    for f in files:
        parsed = parse_file(f)
        if parsed is None:
            continue
        prefix, segs, cases = parsed
        driver = make_driver(segs)
        helpers = helpers_of(prefix)
        # A driver that runs the cases through p_wrapper (the sql files) needs sql.
        file_needs = "sql" if "p_wrapper" in " ".join(segs) else None
        for name, body in cases.items():
            body = with_helpers(body, helpers)
            if file_needs:
                body += "\n# needs sql: $SQLITE"
            key = f"{f.name}:{name}"
            if args.filter and not re.search(args.filter, key):
                continue
            all_cases.append((f, prefix, driver, name, body))

    if args.list:
        for f, _, _, name, body in all_cases:
            print(f"{f.name}:{name}\t{out_of_scope(body) or 'run'}")
        shutil.rmtree(work)
        return 0

    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "bash", "-c",
                            f"mount --bind {work} /tmp && mount -o remount,bind,ro / && echo ok"],
                           capture_output=True, text=True)
    if probe.stdout.strip() != "ok":
        print("cannot make a private mount namespace (needs root and util-linux unshare):\n"
              + probe.stderr, file=sys.stderr)
        return 2
    print(f"{len(all_cases)} cases; work dir {work}", file=sys.stderr)
    for idx, (f, prefix, driver, name, body) in enumerate(all_cases, 1):
        rec = dict(file=f.name, name=name)
        oos = out_of_scope(body)
        base = f.name[:-3]
        if oos:
            rec.update(cls="out of scope", cause=f"needs {oos}")
            results.append(rec)
            continue
        if driver is None:
            rec.update(cls="harness error", cause="could not rewrite the file's driver")
            results.append(rec)
            continue
        script = build_script(prefix, driver)
        env_base["GNU_SUITE_CASE"] = name
        cdir = work / "runs" / base / name

        timeout = args.timeout

        def one(tool, tag):
            r = run_script(script, cdir / tag, tool, env_base, timeout, shimdir, helperdir, src, base)
            pre, case = split_mark(normalise(r["out"], r))
            r["pre"], r["case"], r["nerr"] = pre, case, normalise(r["err"], r)
            return r

        g = one("gnu", "gnu")
        if g["timed_out"] and args.long_timeout > timeout:
            timeout = args.long_timeout
            shutil.rmtree(cdir / "gnu", ignore_errors=True)
            g = one("gnu", "gnu")
        o = one("ours", "ours")
        rec["timeout"] = timeout
        rec["secs"] = dict(gnu=round(g["secs"], 2), ours=round(o["secs"], 2))
        # GNU against wanted-results (stdout lines tagged with this case).
        wf = wanted_dir / base
        if wf.exists():
            wl = [l for l in wf.read_text(errors="replace").splitlines() if l.startswith(name + "\t")]
            gl = [l for l in g["case"].splitlines() if l.startswith(name + "\t")]
            rec["gnu_matches_wanted"] = (wl == gl)
            if wl != gl:
                rec["wanted_diff"] = short_diff("\n".join(wl), "\n".join(gl), "wanted", "gnu", n=4)
        g_all = g["case"] + ("\n--stderr--\n" + g["nerr"] if g["nerr"] else "")
        o_all = o["case"] + ("\n--stderr--\n" + o["nerr"] if o["nerr"] else "")
        ours_text = o["case"] + o["nerr"]
        calls = read_argv_log(cdir / "ours" / "script" / "argv.log")
        rec["calls"] = len(calls)
        r_unknown, r_refused = replay_rejections(work / "multiproc", calls)
        unsupported = list(dict.fromkeys(UNEXPECTED.findall(ours_text) + r_unknown))
        badvals = list(dict.fromkeys(
            [f"{opt} {val!r}" for val, opt in INVALID_VALUE.findall(ours_text)]
            + [f"{opt} given twice" for opt in CLAP_MULTI.findall(ours_text)]
            + r_refused
            # our own "bad VALUE" messages, where GNU took the value without an error
            + ([f"{m[0]} {m[1]!r}" for m in OURS_BAD.findall(ours_text)]
               if "parallel: Error:" not in g["case"] else [])))
        if unsupported:
            rec["unsupported"] = unsupported
        if badvals:
            rec["rejected_values"] = badvals
        if g["pre"] != o["pre"]:
            rec["preamble_differs"] = short_diff(g["pre"], o["pre"], n=4)
        same = (g_all == o_all) and not g["timed_out"] and not o["timed_out"]
        unstable = False
        if not same and not g["timed_out"] and not args.no_rerun and not unsupported and not badvals:
            g2 = one("gnu", "gnu2")
            g2_all = g2["case"] + ("\n--stderr--\n" + g2["nerr"] if g2["nerr"] else "")
            if g2_all == o_all and not g2["timed_out"] and not o["timed_out"]:
                same = True
            elif g2_all != g_all:
                unstable = True
        if same:
            rec.update(cls="same")
        elif unsupported:
            rec.update(cls="unsupported option", cause=unsupported[0])
        elif badvals:
            rec.update(cls="rejected value", cause=badvals[0])
        elif g["timed_out"]:
            rec.update(cls="timeout (GNU too)" if o["timed_out"] else "GNU timed out",
                       cause=f"GNU's run took over {timeout:g}s")
        elif o["timed_out"]:
            rec.update(cls="timeout", cause=f"ours took over {timeout:g}s (GNU {g['secs']:.1f}s)")
        elif unstable:
            rec.update(cls="unstable", cause="GNU's own output differs between two runs")
        else:
            rec.update(cls="differs")
        if not same:
            rec["diff"] = short_diff(g_all, o_all)
        results.append(rec)
        print(f"[{idx}/{len(all_cases)}] {f.name}:{name}: {rec['cls']}"
              + (f" ({rec.get('cause')})" if rec.get("cause") else "")
              + f"  gnu {g['secs']:.1f}s ours {o['secs']:.1f}s", file=sys.stderr, flush=True)
        if not args.keep:
            shutil.rmtree(cdir, ignore_errors=True)
        # What is done so far, should the run be stopped.
        Path(args.out + ".partial").write_text(json.dumps(dict(cases=results)) + "\n")

    total = time.monotonic() - t_start
    if args.merge and Path(args.out).exists():
        old = json.loads(Path(args.out).read_text())
        new = {(r["file"], r["name"]): r for r in results}
        results = [new.pop((r["file"], r["name"]), r) for r in old["cases"]] + list(new.values())
        merged_from = old["meta"]
    else:
        merged_from = None
    counts: dict[str, int] = {}
    for r in results:
        counts[r["cls"]] = counts.get(r["cls"], 0) + 1
    meta = dict(
        gnu_parallel=GNU_PARALLEL, src=str(src), multiproc=str(binpath),
        multiproc_mtime=bin_mtime, git_head=git_head, crates_modified_at_start=git_dirty,
        timeout=args.timeout, long_timeout=args.long_timeout, filter=args.filter,
        seconds=round(total), counts=counts)
    if merged_from:
        meta["merged_into"] = {k: merged_from.get(k) for k in ("git_head", "multiproc_mtime", "seconds", "timeout", "filter")}
    Path(args.out).write_text(json.dumps(dict(meta=meta, cases=results), indent=1) + "\n")
    Path(args.out + ".partial").unlink(missing_ok=True)
    print(json.dumps(counts, indent=1), file=sys.stderr)
    print(f"total {total:.0f}s; results in {args.out}" + (f"; outputs in {work}" if args.keep else ""),
          file=sys.stderr)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
