#!/usr/bin/env python3
"""CPython's own manager tests, run against `multiproc serve` instead of CPython's server.

Usage:
    cpython_manager_suite.py BINARY START_METHOD [FILTER ...] [--unix]
        [--test-timeout SECONDS] [--run-timeout SECONDS]

BINARY is the multiproc executable, START_METHOD one of fork, spawn, forkserver (the start
method of the tests' own child processes: the manager server is always our binary). Each
FILTER selects tests as unittest's -k does: a substring of `__main__.Class.test_name`, or
a pattern with `*` matched against all of it (`*Containers.test_list*`). `--unix` starts
the servers of managers that ask for no address on a Unix socket, as CPython does on
Linux, instead of on 127.0.0.1:0. A test still running after --test-timeout seconds (120)
fails with a traceback of where it waited; after --run-timeout seconds (default: none)
the run prints every thread's stack and exits.

The tests are those of the interpreter's `test/_test_multiprocessing.py` (CPython 3.8 to
3.13) that use a manager: every `WithManagerTest*` class that `install_tests_in_module_dict`
builds, and the plain classes in `PLAIN_MANAGER_CLASSES`. `BaseManager.start` is replaced so
that a manager's server is `BINARY serve` run as a subprocess; everything else (proxies,
connections, the tests' child processes) is CPython's. Tests that need the server to run
Python code are skipped with their reason (`EXCLUDED`).

unittest's output goes to stderr; one line goes to stdout at the end:
    SUMMARY python=3.11.7 method=spawn ran=N failures=F errors=E skipped=S servers=M seconds=T
(servers: how many `multiproc serve` this run started). The exit status is 0 when every
test that ran passed and some server of ours was started, 1 otherwise, 2 on bad arguments.

Child processes (spawn, forkserver) import this file again as `__mp_main__`, which builds
the test classes (to unpickle their targets) and patches `BaseManager.start`: nothing else
may happen at import.
"""

import argparse
import atexit
import faulthandler
import inspect
import os
import platform
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
import unittest

import multiprocessing
import multiprocessing.connection
from multiprocessing import util
from multiprocessing.managers import BaseManager, State, SyncManager

import test._test_multiprocessing as cpython_tests

# CPython raises KeyboardInterrupt on SIGINT only if SIGINT was not ignored when it started;
# a harness started in the background (`cmd &` without job control) inherits it ignored, and
# `test_shared_memory_SharedMemoryServer_ignores_sigint` expects the interrupt in this process.
signal.signal(signal.SIGINT, signal.default_int_handler)

# The binary that manager servers are started from; set by `main` and inherited by the
# tests' child processes, so that a manager started there is ours too.
BINARY_ENV = "MULTIPROC_SUITE_BINARY"

# Whether managers without an address listen on a Unix socket (`--unix`), also inherited.
UNIX_ENV = "MULTIPROC_SUITE_UNIX"

# How long a server may take to print its address.
SERVER_START_TIMEOUT = 30.0

# How many of the slowest tests are listed after the run.
SLOWEST_SHOWN = 10

# Plain `unittest.TestCase` classes of `_test_multiprocessing` that start a manager (the
# `WithManagerTest*` classes are found by their name). Those a version lacks are ignored.
PLAIN_MANAGER_CLASSES = (
    "TestSyncManagerTypes",  # every SyncManager type shared with a child process
    "TestManagerExceptions",  # not in every version: no reference cycles through exceptions
    "TestInitializers",  # its setUp starts a Manager for a Namespace
)

# Tests that need the server to run Python code, which `multiproc serve` cannot do. Keys
# are a class, or `Class.test_name`; each is reported as skipped with its reason.
EXCLUDED = {
    "WithManagerTestPool": "manager.Pool() runs its worker processes in the server",
    "WithManagerTestMyManager": "registers Python callables (FooBar, baz) for the server",
    "WithManagerTestBarrier.test_action": "a barrier action is a Python callable for the server",
    "TestSyncManagerTypes.test_pool": "manager.Pool() runs its worker processes in the server",
    "TestInitializers.test_manager_initializer": "start(initializer) runs Python in the server",
}

# Tests of other classes that start a manager: `_TestSharedMemory`'s SharedMemoryManager
# tests (its server tracks segments and unlinks them at shutdown). The class is built for
# the 'processes' type only; these tests are taken from it.
SHARED_MEMORY_CLASS = "WithProcessesTestSharedMemory"
SHARED_MEMORY_MANAGER_TESTS = (
    "test_shared_memory_SharedMemoryManager_basics",
    "test_shared_memory_SharedMemoryManager_reuses_resource_tracker",
    "test_shared_memory_SharedMemoryServer_ignores_sigint",
)


# --- Our server behind BaseManager.start -------------------------------------------------

class ServerProcess:
    """`multiproc serve` as the `multiprocessing.Process` a started manager keeps.

    `BaseManager.join`, `_finalize_manager` and the tests use `is_alive`, `join(timeout)`,
    `terminate`, `kill`, `exitcode`, `pid` and `name`. The server's stderr goes to an
    anonymous file that is copied to our stderr once the server has ended (reading it while
    the server writes would move its write offset).
    """

    def __init__(self, popen, name, stderr_file):
        self._popen = popen
        self.name = name
        self.daemon = False
        self._stderr_file = stderr_file
        self._creator = os.getpid()

    @property
    def pid(self):
        return self._popen.pid

    @property
    def exitcode(self):
        # Popen's returncode is -N for a signal, as multiprocessing's exitcode.
        if self._popen.poll() is None:
            return None
        self._release()
        return self._popen.returncode

    def is_alive(self):
        return self.exitcode is None

    def join(self, timeout=None):
        try:
            self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return
        self._release()

    def terminate(self):
        if self._popen.poll() is None:
            self._popen.terminate()

    def kill(self):
        if self._popen.poll() is None:
            self._popen.kill()

    def stderr_text(self):
        """What the server wrote to its stderr; only once it has ended."""
        self._stderr_file.seek(0)
        return self._stderr_file.read().decode("utf-8", "replace")

    def _release(self):
        """Once the server has ended: its stderr copied to ours, its pipe and file closed."""
        if self._stderr_file.closed or os.getpid() != self._creator:
            return
        text = self.stderr_text()
        if text.strip():
            sys.stderr.write("[multiproc serve, pid %d, exit %s]\n%s" % (
                self.pid, self._popen.returncode, text if text.endswith("\n") else text + "\n"))
        self._stderr_file.close()
        self._popen.stdout.close()

    def __repr__(self):
        return "<ServerProcess %s pid=%d exitcode=%s>" % (self.name, self.pid, self.exitcode)


# Every server this process started: killed at exit if a test left one running.
_servers = []


@atexit.register
def _kill_leftover_servers():
    for server in _servers:
        if server._creator != os.getpid() or not server.is_alive():
            continue
        sys.stderr.write("harness: %r still running at exit; killed\n" % (server,))
        server.kill()
        server.join()


def _served_callable_arguments(registry):
    """`serve` arguments for the typeids `registry` maps to a callable that is not SyncManager's.

    Our server serves SyncManager's typeids always (`Pool` excepted) and a shared queue under
    any typeid given with `--queue-typeid`; other Python callables it cannot run.
    """
    arguments = []
    for typeid, (func, *_rest) in sorted(registry.items()):
        if func is None:  # registered on the client side only, as QueueManager2's get_queue
            continue
        if SyncManager._registry.get(typeid, (None,))[0] is func:
            continue
        if func is cpython_tests.get_queue:  # returns the module's one queue.Queue
            arguments += ["--queue-typeid", typeid]
            continue
        raise NotImplementedError(
            "typeid %r is served by the Python callable %r, which multiproc serve cannot run "
            "(add the test to EXCLUDED)" % (typeid, func))
    return arguments


def _bind_argument(address):
    """`--bind` for a manager's requested address: a TCP (host, port) or a Unix socket path."""
    if address is None:
        if os.environ.get(UNIX_ENV):
            # What CPython's Listener picks for address=None on Linux.
            return multiprocessing.connection.arbitrary_address("AF_UNIX")
        return "127.0.0.1:0"
    if isinstance(address, str):
        # `serve` takes a path for anything with a '/'.
        return address if "/" in address else os.path.abspath(address)
    host, port = address
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def _parse_address(text):
    """The address `serve` printed, in the form CPython's Listener reports it."""
    if "/" in text:
        return text
    host, port = text.rsplit(":", 1)
    return (host.strip("[]"), int(port))


def _read_address_line(popen, stderr_file, key_path):
    """Waits (at most SERVER_START_TIMEOUT) for `serving … on ADDRESS` and returns ADDRESS.

    A server that exits or stays silent is killed and reported as an OSError with its
    stderr, and with the errno its error names (`… (os error 98)`: a test retries on
    EADDRINUSE).
    """
    ready, _, _ = select.select([popen.stdout], [], [], SERVER_START_TIMEOUT)
    line = popen.stdout.readline() if ready else b""
    os.unlink(key_path)  # the server has read it (or is gone)
    text = line.decode("utf-8", "replace").strip()
    if text.startswith("serving ") and " on " in text:
        return text.rsplit(" on ", 1)[1]
    if popen.poll() is None:
        popen.kill()
    popen.wait()
    stderr_file.seek(0)
    stderr = stderr_file.read().decode("utf-8", "replace").strip()
    reason = "printed %r" % (text,) if text else "printed no address"
    message = "multiproc serve %s (exit %s): %s" % (reason, popen.returncode, stderr)
    os_error = re.search(r"\(os error (\d+)\)", stderr)
    if os_error:
        raise OSError(int(os_error.group(1)), message)
    raise OSError(message)


def _start_multiproc_server(self, initializer=None, initargs=()):
    """`BaseManager.start`, with `multiproc serve` as the server process.

    Mirrors CPython's start: the same state checks, then `_address`, `_state`, `_process`
    and the `shutdown` finalizer set as CPython sets them.
    """
    if self._state.value != State.INITIAL:
        if self._state.value == State.STARTED:
            raise multiprocessing.ProcessError("Already started server")
        elif self._state.value == State.SHUTDOWN:
            raise multiprocessing.ProcessError("Manager has shut down")
        raise multiprocessing.ProcessError("Unknown state {!r}".format(self._state.value))
    if initializer is not None:
        if not callable(initializer):
            raise TypeError("initializer must be a callable")
        raise NotImplementedError("multiproc serve cannot run an initializer")

    # A manager's server ignores SIGINT (bpo-36368): a Ctrl-C is for the program.
    command = [os.environ[BINARY_ENV], "serve", "--ignore-sigint",
               "--bind", _bind_argument(self._address)]
    command += _served_callable_arguments(self._registry)

    # `serve` removes one final newline from the key file: one is added, so that any key,
    # also one ending in b"\n" (os.urandom(32) gives one in 256 runs), arrives unchanged.
    fd, key_path = tempfile.mkstemp(prefix="authkey-", dir=util.get_temp_dir())
    with os.fdopen(fd, "wb") as key_file:
        key_file.write(bytes(self._authkey) + b"\n")
    command += ["--authkey-file", key_path]

    stderr_file = tempfile.TemporaryFile()
    try:
        popen = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr_file)
    except BaseException:
        os.unlink(key_path)
        stderr_file.close()
        raise
    # The stdout pipe stays open (unread) until the server ends: it prints one line only.
    self._address = _parse_address(_read_address_line(popen, stderr_file, key_path))
    self._process = ServerProcess(popen, "%s-multiproc" % type(self).__name__, stderr_file)
    _servers.append(self._process)

    self._state.value = State.STARTED
    # The finalizer's arguments differ between versions (3.11 added shutdown_timeout): they
    # are taken by name from its signature.
    available = {
        "process": self._process,
        "address": self._address,
        "authkey": self._authkey,
        "state": self._state,
        "_Client": self._Client,
        "shutdown_timeout": getattr(self, "_shutdown_timeout", None),
    }
    parameters = inspect.signature(type(self)._finalize_manager).parameters
    self.shutdown = util.Finalize(
        self, type(self)._finalize_manager,
        args=tuple(available[name] for name in parameters),
        exitpriority=0)


# --- The tests ---------------------------------------------------------------------------

def _install_tests(module_globals, start_method):
    """Puts the manager test classes and the module fixtures into `module_globals`.

    `install_tests_in_module_dict` builds every class (3.8-3.10 have no `only_type`); those
    that use a manager are kept, with the `setUpModule`/`tearDownModule` it made, which set
    `start_method` for the run. Returns the names of the classes.
    """
    built = {"__name__": module_globals["__name__"]}
    cpython_tests.install_tests_in_module_dict(built, start_method)
    names = [n for n in built if n.startswith("WithManager") or n in PLAIN_MANAGER_CLASSES]
    if SHARED_MEMORY_CLASS in built:
        names.append(SHARED_MEMORY_CLASS)
    for name in names + ["setUpModule", "tearDownModule"]:
        module_globals[name] = built[name]
    return sorted(names)


def _load(loader, module_globals, name):
    """The tests of class `name` to run: all of them, or for the shared-memory class only
    those that start a manager."""
    tests = loader.loadTestsFromTestCase(module_globals[name])
    if name != SHARED_MEMORY_CLASS:
        return tests
    return unittest.TestSuite(
        t for t in tests if t.id().rsplit(".", 1)[-1] in SHARED_MEMORY_MANAGER_TESTS)


if __name__ != "__main__":
    # A child process started by spawn or forkserver imports this file as __mp_main__: it
    # needs the classes to unpickle its target (a classmethod of one of them), and our
    # start in case it starts a manager. (The start method given here is not used there.)
    _install_tests(globals(), "fork")
    if os.environ.get(BINARY_ENV):
        BaseManager.start = _start_multiproc_server


def _apply_exclusions(module_globals, out):
    """Marks the `EXCLUDED` tests skipped; notes entries this version does not have."""
    for key, reason in EXCLUDED.items():
        class_name, _, test_name = key.partition(".")
        cls = module_globals.get(class_name)
        if cls is not None and not test_name:
            module_globals[class_name] = unittest.skip(reason)(cls)
        elif cls is not None and hasattr(cls, test_name):
            setattr(cls, test_name, unittest.skip(reason)(getattr(cls, test_name)))
        else:
            out.write("harness: excluded test %s does not exist in this version\n" % key)


class _TestTimeout(Exception):
    """Raised in a test that ran longer than --test-timeout."""


class TimeoutResult(unittest.TextTestResult):
    """A TextTestResult that fails a test running longer than `test_timeout` seconds, and
    keeps each test's duration.

    SIGALRM interrupts whatever the test waits for (a proxy call the server never answers),
    so that one hang costs one test, not the run. Class fixtures are not covered: a
    manager's start has its own timeout, its shutdown CPython's.
    """

    test_timeout = 0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.durations = []
        self._running = (None, 0.0)

    def startTest(self, test):
        super().startTest(test)
        self._running = (test, time.monotonic())
        signal.alarm(self.test_timeout)

    def stopTest(self, test):
        signal.alarm(0)
        # 3.12.1 stops the tests of a skipped class without starting them.
        running, started = self._running
        if running is test:
            self.durations.append((time.monotonic() - started, test.id()))
        self._running = (None, 0.0)
        super().stopTest(test)


def _on_alarm(signum, frame):
    raise _TestTimeout("test still running after %d seconds" % TimeoutResult.test_timeout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("binary", help="the multiproc executable")
    parser.add_argument("start_method", choices=("fork", "spawn", "forkserver"))
    parser.add_argument("filters", nargs="*", help="unittest -k patterns")
    parser.add_argument("--unix", action="store_true",
                        help="managers without an address listen on a Unix socket")
    parser.add_argument("--test-timeout", type=int, default=120, metavar="SECONDS",
                        help="fail a test that runs longer (default %(default)s, 0: never)")
    parser.add_argument("--run-timeout", type=int, default=0, metavar="SECONDS",
                        help="after this long, print every thread's traceback and exit "
                             "(a hang in a class fixture; default 0: never)")
    args = parser.parse_args()

    os.environ[BINARY_ENV] = os.path.abspath(args.binary)
    if args.unix:
        os.environ[UNIX_ENV] = "1"
    BaseManager.start = _start_multiproc_server

    module_globals = globals()
    class_names = _install_tests(module_globals, args.start_method)
    _apply_exclusions(module_globals, sys.stderr)
    loader = unittest.TestLoader()
    if args.filters:
        loader.testNamePatterns = [p if "*" in p else "*%s*" % p for p in args.filters]
    suite = unittest.TestSuite(_load(loader, module_globals, name) for name in class_names)

    TimeoutResult.test_timeout = args.test_timeout
    signal.signal(signal.SIGALRM, _on_alarm)
    if args.run_timeout:
        faulthandler.dump_traceback_later(args.run_timeout, exit=True)

    started = time.monotonic()
    runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=2, resultclass=TimeoutResult)
    result = runner.run(suite)
    seconds = time.monotonic() - started
    faulthandler.cancel_dump_traceback_later()

    sys.stderr.write("slowest tests:\n")
    for duration, test_id in sorted(result.durations, reverse=True)[:SLOWEST_SHOWN]:
        sys.stderr.write("  %6.2fs %s\n" % (duration, test_id))

    # A run whose tests started no server of ours tested CPython's (the patch did not take).
    no_server = result.testsRun > len(result.skipped) and not _servers
    if no_server:
        sys.stderr.write("harness: tests ran but no multiproc server was started\n")
    print("SUMMARY python=%s method=%s ran=%d failures=%d errors=%d skipped=%d servers=%d "
          "seconds=%.1f" % (
              platform.python_version(), args.start_method, result.testsRun,
              len(result.failures) + len(result.unexpectedSuccesses), len(result.errors),
              len(result.skipped), len(_servers), seconds), flush=True)
    return 0 if result.wasSuccessful() and not no_server else 1


if __name__ == "__main__":
    sys.exit(main())
