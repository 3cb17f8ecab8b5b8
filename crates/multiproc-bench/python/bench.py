#!/usr/bin/env python3
"""CPython reference side of the multiproc benchmarks.

Usage:
    python3 bench.py NAME [--quick]
    python3 bench.py list

Prints exactly ONE JSON line on stdout:
    {"name": NAME, "value": <float>, "unit": "<unit>"}
Everything else (diagnostics, anything a child process might print) goes to
stderr.  An unknown name exits non-zero with a message on stderr.

Each benchmark measures CPython's own multiprocessing (3.11) doing the job,
timed with time.perf_counter() after a short warm-up.  `--quick` divides the
iteration counts by ~10 for smoke tests.

Unless stated otherwise the "fork" start method is used explicitly
(multiprocessing.get_context("fork")), which is also the Linux default on
3.11.

Notes for anyone editing this file:
  * Keep the module top level light: forkserver/spawn children may
    re-import it as __mp_main__.  Heavier imports (concurrent.futures) are
    done lazily inside the benchmarks.
  * Worker functions must be top-level so that they can be pickled.
  * Cross-process timestamps use time.perf_counter(), which on Linux is
    CLOCK_MONOTONIC and therefore comparable between processes.
"""

import json
import multiprocessing
import os
import sys
import time

perf = time.perf_counter

QUICK_DIV = 10

# Write end of the *real* stdout.  main() moves the original stdout out of
# fd 1 and points fd 1 at stderr, so that nothing but the final JSON line can
# ever reach the caller's stdout (forked children flush sys.stdout on exit,
# pool workers may print, ...).
_RESULT_FD = None


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def _fork_ctx():
    return multiprocessing.get_context("fork")


# ---------------------------------------------------------------------------
# Top-level worker functions (picklable)
# ---------------------------------------------------------------------------

def identity(x):
    return x


def _pipe_echo_child(conn):
    # Echo every object back until None arrives.
    recv = conn.recv
    send = conn.send
    while True:
        x = recv()
        if x is None:
            break
        send(x)
    conn.close()


def _pipe_sink_child(conn):
    # Receive byte messages.  An empty message asks for an ack; a 1-byte
    # message means "stop".
    recv_bytes = conn.recv_bytes
    while True:
        b = recv_bytes()
        n = len(b)
        if n == 0:
            conn.send_bytes(b"ack")
        elif n == 1:
            break
    conn.close()


def _queue_producer(q, ready, go, count, kind):
    ready.release()
    go.wait()
    put = q.put
    if kind == "large":
        payload = b"\xab" * (64 * 1024)
        for _ in range(count):
            put(payload)
    else:
        for i in range(count):
            put(i)
    put(None)
    # Process exit joins the queue's feeder thread, flushing everything.


def _queue_consumer(q, ready, results):
    ready.release()
    get = q.get
    n = 0
    nbytes = 0
    while True:
        x = get()
        if x is None:
            break
        n += 1
        if type(x) is bytes:
            nbytes += len(x)
    results.put((n, nbytes, perf()))


def _lock_worker(lock, v, ready, go, count, results):
    ready.release()
    go.wait()
    for _ in range(count):
        with lock:
            v.value += 1
    results.put(perf())


def _event_child(e_ping, e_pong, rounds):
    for _ in range(rounds):
        e_ping.wait()
        e_ping.clear()
        e_pong.set()


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

def _n(full, quick):
    return max(1, full // QUICK_DIV) if quick else full


def _join_all(procs, timeout=120):
    for p in procs:
        p.join(timeout)
    for p in procs:
        if p.is_alive():
            p.terminate()
            p.join()
            raise RuntimeError("child %r did not exit" % (p,))
        if p.exitcode != 0:
            raise RuntimeError("child %r exited with %r" % (p, p.exitcode))


# ---------------------------------------------------------------------------
# Benchmarks.  Each returns (value, unit).
# ---------------------------------------------------------------------------

def _spawn_join_loop(ctx, n):
    # target=None: Process.run() does nothing, and nothing from __main__
    # has to be unpickled in the child.
    Process = ctx.Process
    t0 = perf()
    for _ in range(n):
        p = Process(target=None)
        p.start()
        p.join()
        if p.exitcode != 0:
            raise RuntimeError("child exited with %r" % p.exitcode)
    return perf() - t0


def bench_process_spawn_join(quick):
    n = _n(200, quick)
    ctx = _fork_ctx()
    _spawn_join_loop(ctx, 5)  # warm-up
    dt = _spawn_join_loop(ctx, n)
    return dt / n * 1e6, "us"


def bench_process_spawn_join_forkserver(quick):
    n = _n(100, quick)
    ctx = multiprocessing.get_context("forkserver")
    # No preloads: the server starts as a bare interpreter running
    # multiprocessing.forkserver.main.
    ctx.set_forkserver_preload([])
    # CPython's forkserver/spawn children re-run the parent's main script
    # (as __mp_main__) in every child, from source, because __main__.__file__
    # is sent in the preparation data (3.11's forkserver '__main__' preload
    # does not avoid this: it looks for a 'main_path' key that is never
    # sent).  That cost scales with the size of the main script -- ~5 ms for
    # this file -- and is an artefact of the harness, not of the forkserver.
    # Hide __file__ while measuring, so children behave as for a minimal
    # `python -c` main and we time the forkserver machinery itself.
    main = sys.modules["__main__"]
    saved_file = main.__dict__.pop("__file__", None)
    try:
        # Warm-up: the first start launches the forkserver itself (excluded).
        _spawn_join_loop(ctx, 5)
        dt = _spawn_join_loop(ctx, n)
    finally:
        if saved_file is not None:
            main.__file__ = saved_file
    return dt / n * 1e6, "us"


def bench_pipe_pingpong(quick):
    n = _n(20000, quick)
    ctx = _fork_ctx()
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_pipe_echo_child, args=(child,))
    p.start()
    child.close()
    send, recv = parent.send, parent.recv
    for i in range(500):  # warm-up
        send(i)
        if recv() != i:
            raise RuntimeError("bad echo")
    t0 = perf()
    for i in range(n):
        send(i)
        recv()
    dt = perf() - t0
    send(None)
    _join_all([p])
    parent.close()
    return n / dt, "rt/s"


def bench_pipe_throughput(quick):
    msg_size = 1 << 20
    total = (64 << 20) if quick else (1 << 30)
    count = total // msg_size
    ctx = _fork_ctx()
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_pipe_sink_child, args=(child,))
    p.start()
    child.close()
    payload = b"\x5a" * msg_size
    send_bytes, recv_bytes = parent.send_bytes, parent.recv_bytes
    # Warm-up: a few messages + ack round trip.
    for _ in range(8):
        send_bytes(payload)
    send_bytes(b"")
    recv_bytes()
    t0 = perf()
    for _ in range(count):
        send_bytes(payload)
    send_bytes(b"")
    if recv_bytes() != b"ack":
        raise RuntimeError("bad ack")
    dt = perf() - t0
    send_bytes(b"q")
    _join_all([p])
    parent.close()
    return count * msg_size / 1e6 / dt, "MB/s"


def _queue_run(n_prod, n_cons, total, kind):
    """Run producers/consumers over one multiprocessing.Queue.

    Returns (elapsed_seconds, items_received, bytes_received).  Timing starts
    when the parent releases the producers (all children already started)
    and ends at the latest consumer's finish timestamp.
    """
    ctx = _fork_ctx()
    q = ctx.Queue()
    ready = ctx.Semaphore(0)
    go = ctx.Event()
    results = ctx.SimpleQueue()
    per_prod = [total // n_prod] * n_prod
    per_prod[0] += total - sum(per_prod)
    procs = [ctx.Process(target=_queue_consumer, args=(q, ready, results))
             for _ in range(n_cons)]
    procs += [ctx.Process(target=_queue_producer,
                          args=(q, ready, go, per_prod[i], kind))
              for i in range(n_prod)]
    # Each producer sends exactly one None sentinel after its items and each
    # consumer stops at its first None, so n_prod must equal n_cons.
    assert n_prod == n_cons
    for p in procs:
        p.start()
    for _ in procs:
        if not ready.acquire(timeout=60):
            raise RuntimeError("children failed to start")
    t0 = perf()
    go.set()
    got = [results.get() for _ in range(n_cons)]
    _join_all(procs)
    q.close()
    q.join_thread()
    items = sum(g[0] for g in got)
    nbytes = sum(g[1] for g in got)
    if items != total:
        raise RuntimeError("received %d items, expected %d" % (items, total))
    t_end = max(g[2] for g in got)
    return t_end - t0, items, nbytes


def bench_queue_small(quick):
    n = _n(1_000_000, quick)
    _queue_run(1, 1, max(1000, n // 100), "small")  # warm-up
    dt, items, _ = _queue_run(1, 1, n, "small")
    return items / dt, "msg/s"


def bench_queue_large(quick):
    n = _n(16_000, quick)
    _queue_run(1, 1, 100, "large")  # warm-up
    dt, _, nbytes = _queue_run(1, 1, n, "large")
    return nbytes / 1e6 / dt, "MB/s"


def bench_queue_mpmc(quick):
    n = _n(500_000, quick)
    _queue_run(2, 2, max(1000, n // 100), "small")  # warm-up
    dt, items, _ = _queue_run(2, 2, n, "small")
    return items / dt, "msg/s"


def _lock_run(per_proc):
    ctx = _fork_ctx()
    lock = ctx.Lock()
    v = ctx.Value("q", 0, lock=False)
    ready = ctx.Semaphore(0)
    go = ctx.Event()
    results = ctx.SimpleQueue()
    procs = [ctx.Process(target=_lock_worker,
                         args=(lock, v, ready, go, per_proc, results))
             for _ in range(2)]
    for p in procs:
        p.start()
    for _ in procs:
        if not ready.acquire(timeout=60):
            raise RuntimeError("children failed to start")
    t0 = perf()
    go.set()
    ends = [results.get() for _ in procs]
    _join_all(procs)
    if v.value != 2 * per_proc:
        raise RuntimeError("counter %d != %d" % (v.value, 2 * per_proc))
    return max(ends) - t0, 2 * per_proc


def bench_lock_contention(quick):
    n = _n(100_000, quick)
    _lock_run(1000)  # warm-up
    dt, ops = _lock_run(n)
    return ops / dt, "op/s"


def bench_event_pingpong(quick):
    n = _n(10_000, quick)
    warm = 200
    ctx = _fork_ctx()
    e_ping, e_pong = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_event_child, args=(e_ping, e_pong, warm + n))
    p.start()

    def rounds(k):
        for _ in range(k):
            e_ping.set()
            e_pong.wait()
            e_pong.clear()

    rounds(warm)
    t0 = perf()
    rounds(n)
    dt = perf() - t0
    _join_all([p])
    return n / dt, "rt/s"


def bench_pool_map_small(quick):
    n = _n(100_000, quick)
    ctx = _fork_ctx()
    pool = ctx.Pool(2)
    try:
        pool.map(identity, range(1000))  # warm-up
        # The median of five maps, as the Rust side does.
        rates = []
        for _ in range(5):
            t0 = perf()
            out = pool.map(identity, range(n))
            dt = perf() - t0
            if len(out) != n or out[-1] != n - 1:
                raise RuntimeError("bad map result")
            rates.append(n / dt)
    finally:
        pool.close()
        pool.join()
    rates.sort()
    return rates[len(rates) // 2], "task/s"


def bench_pool_apply_roundtrip(quick):
    n = _n(5000, quick)
    ctx = _fork_ctx()
    pool = ctx.Pool(2)
    try:
        apply_async = pool.apply_async
        for i in range(100):  # warm-up
            apply_async(identity, (i,)).get()
        t0 = perf()
        for i in range(n):
            apply_async(identity, (i,)).get()
        dt = perf() - t0
    finally:
        pool.close()
        pool.join()
    return n / dt, "rt/s"


def _executor_loop(ex, n, warm):
    submit = ex.submit
    for i in range(warm):
        if submit(identity, i).result() != i:
            raise RuntimeError("bad result")
    t0 = perf()
    for i in range(n):
        submit(identity, i).result()
    return perf() - t0


def bench_executor_submit(quick):
    from concurrent.futures import ProcessPoolExecutor
    n = _n(10_000, quick)
    ex = ProcessPoolExecutor(max_workers=2, mp_context=_fork_ctx())
    try:
        dt = _executor_loop(ex, n, 100)
    finally:
        ex.shutdown(wait=True)
    return n / dt, "task/s"


def bench_thread_executor_submit(quick):
    from concurrent.futures import ThreadPoolExecutor
    n = _n(10_000, quick)
    ex = ThreadPoolExecutor(max_workers=2)
    try:
        dt = _executor_loop(ex, n, 100)
    finally:
        ex.shutdown(wait=True)
    return n / dt, "task/s"


# Manager benchmarks: a BaseManager server started in a child process (fork),
# serving one queue.Queue as `get_task_queue` on 127.0.0.1 over TCP.

_AUTHKEY = b"abc"


def _queue_manager_class():
    # Imported lazily: multiprocessing.managers pulls in pool, threading, ...
    import queue
    from multiprocessing.managers import BaseManager

    class QueueManager(BaseManager):
        pass

    q = queue.Queue()
    # The server forks from this process, so the lambda need not be pickled.
    QueueManager.register("get_task_queue", callable=lambda: q)
    return QueueManager


def _start_queue_manager():
    QueueManager = _queue_manager_class()
    server = QueueManager(address=("127.0.0.1", 0), authkey=_AUTHKEY,
                          ctx=_fork_ctx())
    server.start()  # the server runs in a child process
    return QueueManager, server


def bench_manager_tcp_queue(quick):
    n = _n(10_000, quick)
    QueueManager, server = _start_queue_manager()
    try:
        m = QueueManager(address=server.address, authkey=_AUTHKEY)
        m.connect()
        t = m.get_task_queue()
        put, get = t.put, t.get

        def rounds(lo, hi):
            for i in range(lo, hi):
                put(i)
                if get(timeout=5) != i:
                    raise RuntimeError("bad queue item")

        rounds(0, 100)  # warm-up
        t0 = perf()
        rounds(0, n)
        dt = perf() - t0
        del put, get, t, m
    finally:
        server.shutdown()
    return n / dt, "msg/s"


def _dict_caller(d, n, out):
    for i in range(100):  # warm-up
        d[i] = i
    t0 = perf()
    for i in range(n):
        d[i] = i
    out.put(n / (perf() - t0))


def bench_manager_dict_call(quick):
    """A child process's `d[i] = i` calls through a SyncManager dict proxy (the manager in
    its own process, as `Manager()` starts it)."""
    n = _n(10_000, quick)
    ctx = _fork_ctx()
    with ctx.Manager() as m:
        d = m.dict()
        out = ctx.Queue()
        p = ctx.Process(target=_dict_caller, args=(d, n, out))
        p.start()
        rate = out.get()
        p.join()
        if len(d) != max(n, 100):
            raise RuntimeError("lost dict items")
    return rate, "call/s"


def bench_manager_connect(quick):
    n = _n(200, quick)
    QueueManager, server = _start_queue_manager()
    address = server.address

    def once():
        m = QueueManager(address=address, authkey=_AUTHKEY)
        m.connect()
        t = m.get_task_queue()
        if t.qsize() != 0:
            raise RuntimeError("queue not empty")
        # Dropping the proxy (its decref and the close of its connection) is
        # timed too, as the Rust side's drop at the end of each iteration.
        del t, m

    try:
        for _ in range(5):  # warm-up
            once()
        t0 = perf()
        for _ in range(n):
            once()
        dt = perf() - t0
    finally:
        server.shutdown()
    return dt / n * 1e6, "us"


def _broker_worker(url, stream, ready, done_q):
    import redis
    r = redis.Redis.from_url(url)
    consumer = f"py-{os.getpid()}"
    ready.set()
    done = 0
    while True:
        reply = r.xreadgroup("multiproc", consumer, {stream: ">"}, count=1, block=30000)
        if not reply:
            break
        entry_id, fields = reply[0][1][0]
        n = json.loads(fields[b"body"])
        pipe = r.pipeline(transaction=True)
        pipe.xack(stream, "multiproc", entry_id)
        pipe.xdel(stream, entry_id)
        pipe.execute()
        if n == -1:
            break
        done += 1
    done_q.put(done)


def _broker_worker_batched(url, stream, ready, done_q):
    import redis
    r = redis.Redis.from_url(url)
    consumer = f"py-{os.getpid()}"
    ready.set()
    done = 0
    acks = []
    while True:
        pipe = r.pipeline(transaction=False)
        if acks:
            pipe.xack(stream, "multiproc", *acks)
            pipe.xdel(stream, *acks)
        pipe.xreadgroup("multiproc", consumer, {stream: ">"}, count=16, block=30000)
        reply = pipe.execute()[-1]
        if not reply:
            break
        acks = []
        entries = reply[0][1]
        for at, (entry_id, fields) in enumerate(entries):
            acks.append(entry_id)
            if json.loads(fields[b"body"]) == -1:
                # Stop; what was read after the mark goes back for the other worker.
                rest = entries[at + 1:]
                pipe = r.pipeline(transaction=True)
                for _, f in rest:
                    pipe.xadd(stream, f)
                ids = acks + [i for i, _ in rest]
                pipe.xack(stream, "multiproc", *ids)
                pipe.xdel(stream, *ids)
                pipe.execute()
                done_q.put(done)
                return
            done += 1
    done_q.put(done)


def bench_broker_queue_batched(quick):
    """The same job with redis-py written for speed, as ours works: XADDs sent 256 at a time
    in a pipeline; workers read up to 16 entries per XREADGROUP and acknowledge them with the
    next read."""
    return _bench_broker(quick, _broker_worker_batched, batch=256)


def bench_broker_queue(quick):
    """The same job as ours with redis-py: XADD per task; workers XREADGROUP one entry, decode
    it, then XACK + XDEL in one transaction. Needs MULTIPROC_BENCH_REDIS (set by the Rust side
    to the server it started)."""
    return _bench_broker(quick, _broker_worker, batch=1)


def _bench_broker(quick, worker, batch):
    import redis
    url = os.environ["MULTIPROC_BENCH_REDIS"]
    n = 2_000 if quick else 20_000
    # Where multiproc's queue of that name would be (keys under the prefix "multiproc:").
    stream = f"multiproc:pybench-{os.getpid()}-{batch}"
    r = redis.Redis.from_url(url)
    r.xgroup_create(stream, "multiproc", id="0", mkstream=True)
    ctx = _fork_ctx()
    done_q = ctx.Queue()
    readies = [ctx.Event() for _ in range(2)]
    workers = [ctx.Process(target=worker, args=(url, stream, e, done_q)) for e in readies]
    for w in workers:
        w.start()
    for e in readies:
        e.wait()
    t0 = perf()
    items = list(range(n)) + [-1] * len(workers)
    if batch == 1:
        for i in items:
            r.xadd(stream, {"codec": "json", "body": json.dumps(i)})
    else:
        pipe = r.pipeline(transaction=False)
        for i in items:
            pipe.xadd(stream, {"codec": "json", "body": json.dumps(i)})
            if len(pipe) >= batch:
                pipe.execute()
        pipe.execute()
    done = sum(done_q.get() for _ in workers)
    dt = perf() - t0
    for w in workers:
        w.join()
    r.delete(stream)
    if done != n:
        raise RuntimeError(f"{done} of {n} tasks done")
    return n / dt, "task/s"


BENCHMARKS = {
    "process_spawn_join": bench_process_spawn_join,
    "process_spawn_join_forkserver": bench_process_spawn_join_forkserver,
    "pipe_pingpong": bench_pipe_pingpong,
    "pipe_throughput": bench_pipe_throughput,
    "queue_small": bench_queue_small,
    "queue_large": bench_queue_large,
    "queue_mpmc": bench_queue_mpmc,
    "lock_contention": bench_lock_contention,
    "event_pingpong": bench_event_pingpong,
    "pool_map_small": bench_pool_map_small,
    "pool_apply_roundtrip": bench_pool_apply_roundtrip,
    "executor_submit": bench_executor_submit,
    "thread_executor_submit": bench_thread_executor_submit,
    "manager_tcp_queue": bench_manager_tcp_queue,
    "manager_dict_call": bench_manager_dict_call,
    "manager_connect": bench_manager_connect,
    "broker_queue": bench_broker_queue,
    "broker_queue_batched": bench_broker_queue_batched,
}


def _usage():
    return ("usage: bench.py NAME [--quick] | bench.py list\nnames: "
            + ", ".join(BENCHMARKS))


def _emit(text):
    data = text.encode()
    while data:
        data = data[os.write(_RESULT_FD, data):]


def main(argv):
    global _RESULT_FD
    args = [a for a in argv if a != "--quick"]
    quick = len(args) != len(argv)
    if len(args) != 1 or args[0].startswith("-"):
        log(_usage())
        return 2
    name = args[0]
    if name == "list":
        sys.stdout.write("".join(k + "\n" for k in BENCHMARKS))
        sys.stdout.flush()
        return 0
    fn = BENCHMARKS.get(name)
    if fn is None:
        log("bench.py: unknown benchmark %r" % name)
        log(_usage())
        return 2

    # Keep the real stdout for the result only; route fd 1 to stderr.
    sys.stdout.flush()
    _RESULT_FD = os.dup(1)  # non-inheritable across exec
    os.dup2(2, 1)

    log("bench.py: running %s%s" % (name, " (quick)" if quick else ""))
    value, unit = fn(quick)
    log("bench.py: %s = %.6g %s" % (name, value, unit))
    sys.stdout.flush()
    _emit(json.dumps({"name": name, "value": float(value), "unit": unit})
          + "\n")
    os.close(_RESULT_FD)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
