#!/usr/bin/env python3
"""Reference task-queue systems (Celery, RQ) on a local Redis, for comparison rows.

Usage:
    python3 task_queues.py --setup-venv DIR
        Create a venv at DIR (if missing), pip-install PACKAGES into it and
        print the venv's python path (one line on stdout; pip output goes to
        stderr).  Needs the stdlib venv + ensurepip (Debian: python3-venv).

    DIR/bin/python task_queues.py --redis-url redis://127.0.0.1:PORT/0 \
        --system celery|rq --tasks N [--workers 2] [--latency-samples M]
        Prints exactly ONE JSON line on stdout:
        {"system", "version", "tasks", "workers", "seconds", "tasks_per_sec",
         "latency_samples", "p50_us", "p99_us"}
        Everything else (worker logs, warnings) goes to stderr.

What is measured (time.perf_counter, client side):
  * throughput: N no-op tasks submitted one by one, then every result
    collected; "seconds" runs from the first submit to the last result in hand.
  * latency: M sequential round trips (submit one task, wait for its result),
    p50/p99 by nearest rank, in microseconds.
  Both follow a warm-up (WARMUP sequential round trips plus one batch of
  WARMUP_BATCH tasks) so that worker imports and connections are settled.

The Redis DB named by --redis-url is FLUSHDB'd before the run, so it must be
dedicated to the benchmark; queue and worker names also carry a per-run id.

Celery (5.x): Redis is broker and result backend; one worker started as
`python -m celery -A <module> worker --pool=prefork --concurrency=W
--loglevel=WARNING --without-gossip --without-mingle --without-heartbeat`
(the three --without flags only drop start-up/background broker chatter).
All task/result settings are Celery defaults (prefetch multiplier 4, early
ack, JSON, results stored); only broker_connection_retry_on_startup is set, to
silence a warning.  Submit with .delay(), collect with AsyncResult.get(): the
Redis backend delivers results over pub/sub, so nothing polls.

RQ (>= 1.16): W separate `rq worker` processes (default worker class, which
forks a work horse per job; --rq-worker-class rq.SimpleWorker runs jobs
in-process instead).  Results are awaited with job.latest_result(timeout),
which blocks in Redis (XREAD BLOCK on the job's result stream) - an event, no
sleeping.  --rq-wait poll instead polls job status every POLL_INTERVAL (1 ms)
as one would with older RQ.  Either way results are collected in submission
order.

Workers run in their own sessions and are always stopped by this script
(SIGTERM = warm shutdown, SIGKILL to the group after STOP_TIMEOUT), on errors
and on SIGTERM/SIGINT to this script as well.  A Celery worker stopped with a
backlog in its queue sits out billiard's 30 s "messages consumed" wait and so
gets the SIGKILL.  Should this script itself be SIGKILLed, the kernel kills the
workers (PR_SET_PDEATHSIG).
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid

PACKAGES = ["celery[redis]>=5.3,<6", "rq>=1.16", "redis>=5"]

WARMUP = 20
WARMUP_BATCH = 100
POLL_INTERVAL = 0.001      # RQ --rq-wait poll only
RESULT_TIMEOUT = 60        # seconds, per awaited result
READY_TIMEOUT = 60         # seconds, for workers to come up
STOP_TIMEOUT = 15          # seconds, for a warm shutdown before SIGKILL

perf = time.perf_counter

CELERY_MODULE = '''\
import os
from celery import Celery

app = Celery("tq_celery_tasks",
             broker=os.environ["TQ_REDIS_URL"],
             backend=os.environ["TQ_REDIS_URL"])
app.conf.update(
    task_default_queue=os.environ["TQ_QUEUE"],
    broker_connection_retry_on_startup=True,
)


@app.task
def noop():
    return None
'''

RQ_MODULE = '''\
def noop():
    return None
'''


def log(*args):
    print("task_queues.py:", *args, file=sys.stderr, flush=True)


def _sigterm(signum, frame):
    # Turn SIGTERM into SystemExit so that the finally blocks stop the workers.
    raise SystemExit(128 + signum)


# ---------------------------------------------------------------------------
# venv set-up
# ---------------------------------------------------------------------------

def setup_venv(path):
    import venv
    path = os.path.abspath(path)
    py = os.path.join(path, "bin", "python")
    if not os.path.exists(py):
        try:
            venv.EnvBuilder(with_pip=True).create(path)
        except (subprocess.CalledProcessError, OSError) as e:
            log("creating the venv failed (%s); on Debian install python3-venv" % e)
            return 2
    subprocess.run([py, "-m", "pip", "install", "--disable-pip-version-check",
                    "-q", *PACKAGES], stdout=sys.stderr, check=True)
    print(py, flush=True)
    return 0


# ---------------------------------------------------------------------------
# Worker processes
# ---------------------------------------------------------------------------

def _die_with_parent():
    # Returns a function for Popen(preexec_fn=...), run in the forked child
    # before exec: have the kernel kill the worker if this script dies without
    # cleaning up (e.g. SIGKILL from a harness).  SIGKILL, because a warm
    # shutdown can hang (seen with an RQ worker that got SIGTERM mid-job);
    # Celery's pool children and RQ's work horse go too (prefork sets
    # PDEATHSIG itself, a horse ends after its job).
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    prctl = ctypes.CDLL(None).prctl     # resolved before fork
    parent = os.getpid()
    PR_SET_PDEATHSIG = 1

    def setup():
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() != parent:
            os._exit(1)
    return setup


class Workers:
    """Worker subprocesses, each in its own process group (= session)."""

    def __init__(self):
        self.procs = []

    def start(self, argv, cwd, env):
        log("starting", " ".join(argv))
        # stdout -> our stderr: fd 1 already points there (see main()).
        self.procs.append(subprocess.Popen(argv, cwd=cwd, env=env,
                                           stdin=subprocess.DEVNULL,
                                           start_new_session=True,
                                           preexec_fn=_die_with_parent()))

    def check_alive(self):
        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeError("worker %d exited early with %s" % (p.pid, p.returncode))

    def stop(self):
        # Do not let a second SIGTERM / Ctrl-C cut the clean-up short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)   # warm shutdown for celery and rq
        t0 = time.monotonic()
        deadline = t0 + STOP_TIMEOUT
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                # The leader is not reaped yet, so its pid is still our group.
                log("worker %d did not stop in time, killing its group" % p.pid)
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        log("workers stopped after %.2fs" % (time.monotonic() - t0))
        self.procs = []


def _wait_ready(what, ready, workers):
    # Neither system offers a "ready" event to the client, so poll (before
    # any timing starts).
    deadline = time.monotonic() + READY_TIMEOUT
    while not ready():
        workers.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError("%s workers not ready after %ds" % (what, READY_TIMEOUT))
        time.sleep(0.01)
    log("%s workers ready" % what)


# ---------------------------------------------------------------------------
# Systems: each returns (version, submit, wait, close)
# ---------------------------------------------------------------------------

def celery_system(args, run_id, tmpdir, env, workers):
    import celery
    queue = "tq-celery-" + run_id
    node = "tq-%s@%%h" % run_id
    env["TQ_REDIS_URL"] = os.environ["TQ_REDIS_URL"] = args.redis_url
    env["TQ_QUEUE"] = os.environ["TQ_QUEUE"] = queue
    with open(os.path.join(tmpdir, "tq_celery_tasks.py"), "w") as f:
        f.write(CELERY_MODULE)
    sys.path.insert(0, tmpdir)
    import tq_celery_tasks

    workers.start([sys.executable, "-m", "celery", "-A", "tq_celery_tasks", "worker",
                   "--pool=prefork", "--concurrency=%d" % args.workers,
                   "--loglevel=WARNING", "-n", node, "-Q", queue,
                   "--without-gossip", "--without-mingle", "--without-heartbeat"],
                  cwd=tmpdir, env=env)
    app = tq_celery_tasks.app
    prefix = "tq-%s@" % run_id

    def ready():
        replies = app.control.ping(timeout=0.5)
        return any(k.startswith(prefix) for r in replies for k in r)

    _wait_ready("celery", ready, workers)

    noop = tq_celery_tasks.noop

    def submit():
        return noop.delay()

    def wait(res):
        return res.get(timeout=RESULT_TIMEOUT)

    def close():
        app.close()

    return celery.__version__, submit, wait, close


def rq_system(args, run_id, tmpdir, env, workers):
    import rq
    from redis import Redis
    from rq import Queue, Worker
    from rq.job import JobStatus
    from rq.results import Result

    with open(os.path.join(tmpdir, "tq_rq_tasks.py"), "w") as f:
        f.write(RQ_MODULE)
    conn = Redis.from_url(args.redis_url)
    queue = Queue("tq-rq-" + run_id, connection=conn)
    for i in range(args.workers):
        workers.start([sys.executable, "-m", "rq.cli", "worker", "--url", args.redis_url,
                       "--path", tmpdir, "-w", args.rq_worker_class,
                       "-n", "tq-%s-%d" % (run_id, i), "--logging_level", "WARNING",
                       queue.name], cwd=tmpdir, env=env)
    _wait_ready("rq", lambda: len(Worker.all(queue=queue)) >= args.workers, workers)

    def submit():
        return queue.enqueue("tq_rq_tasks.noop")

    def check(result, job):
        if result is None:
            raise RuntimeError("no result for job %s within %ds" % (job.id, RESULT_TIMEOUT))
        if result.type != Result.Type.SUCCESSFUL:
            raise RuntimeError("job %s failed: %s" % (job.id, result.exc_string))
        return result.return_value

    if args.rq_wait == "block":
        def wait(job):
            return check(job.latest_result(timeout=RESULT_TIMEOUT), job)
    else:
        done = (JobStatus.FINISHED, JobStatus.FAILED)

        def wait(job):
            deadline = time.monotonic() + RESULT_TIMEOUT
            while job.get_status(refresh=True) not in done:
                if time.monotonic() > deadline:
                    break
                time.sleep(POLL_INTERVAL)
            return check(job.latest_result(), job)

    return rq.__version__, submit, wait, conn.close


# ---------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------

def percentile_us(sorted_ns, p):
    if not sorted_ns:
        return None
    k = max(0, -(-len(sorted_ns) * p // 100) - 1)     # nearest rank
    return round(sorted_ns[k] / 1000.0, 1)


def measure(args, submit, wait):
    for _ in range(WARMUP):
        wait(submit())
    batch = [submit() for _ in range(WARMUP_BATCH)]
    for h in batch:
        wait(h)

    t0 = perf()
    handles = [submit() for _ in range(args.tasks)]
    t1 = perf()
    for h in handles:       # in submission order; most are done by the time we get there
        wait(h)
    seconds = perf() - t0
    log("submitting took %.3fs of %.3fs" % (t1 - t0, seconds))

    lat = []
    for _ in range(args.latency_samples):
        t = time.perf_counter_ns()
        wait(submit())
        lat.append(time.perf_counter_ns() - t)
    lat.sort()
    return seconds, percentile_us(lat, 50), percentile_us(lat, 99)


def run(args):
    from redis import Redis

    run_id = uuid.uuid4().hex[:12]
    r = Redis.from_url(args.redis_url)
    r.flushdb()
    r.close()

    env = dict(os.environ)
    workers = Workers()
    close = None
    with tempfile.TemporaryDirectory(prefix="tq-") as tmpdir:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [tmpdir, env.get("PYTHONPATH")]))
        try:
            system = celery_system if args.system == "celery" else rq_system
            version, submit, wait, close = system(args, run_id, tmpdir, env, workers)
            seconds, p50, p99 = measure(args, submit, wait)
        finally:
            workers.stop()
            if close is not None:
                close()
    return {
        "system": args.system,
        "version": version,
        "tasks": args.tasks,
        "workers": args.workers,
        "seconds": round(seconds, 6),
        "tasks_per_sec": round(args.tasks / seconds, 1),
        "latency_samples": args.latency_samples,
        "p50_us": p50,
        "p99_us": p99,
    }


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--setup-venv", metavar="DIR")
    ap.add_argument("--redis-url")
    ap.add_argument("--system", choices=["celery", "rq"])
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--latency-samples", type=int, default=200)
    ap.add_argument("--rq-wait", choices=["block", "poll"], default="block")
    ap.add_argument("--rq-worker-class", default="rq.Worker")
    args = ap.parse_args(argv)

    if args.setup_venv:
        return setup_venv(args.setup_venv)
    if not args.redis_url or not args.system:
        ap.error("--redis-url and --system are required (or --setup-venv DIR)")
    if args.tasks < 1 or args.workers < 1 or args.latency_samples < 0:
        ap.error("--tasks and --workers must be >= 1, --latency-samples >= 0")

    signal.signal(signal.SIGTERM, _sigterm)
    # Keep the real stdout for the result line only; fd 1 (inherited by the
    # workers) now points at stderr.
    result_fd = os.dup(1)
    os.dup2(2, 1)
    result = run(args)
    os.write(result_fd, (json.dumps(result) + "\n").encode())
    os.close(result_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
