"""A worker in Python (redis-py) taking tasks that `multiproc submit -b redis://...` put.

It follows the entry format of docs/broker.md: the stream is the key prefix ("multiproc:" by
default, as `multiproc --prefix`) and the queue's name, read through the consumer group
"multiproc"; with the default prefix, a queue made before there were prefixes (a stream at the
bare name with that group, and none under the prefix) is used where it is, as multiproc does.
Each entry holds `codec` ("json") and `body`. A task's body is
{"id": ..., "task": ...}; the result it puts is {"id": ..., "task": ..., "result": ...}, which
`multiproc collect` prints (once per task id). A task is acknowledged and deleted only after
its result is put, so a worker that dies leaves its task to another (at least once).

    python3 redis_worker.py redis://127.0.0.1:6379/0 [--tasks task] [--results result]
        [--prefix multiproc:]
"""

import argparse
import json
import os
import socket

import redis

GROUP = "multiproc"
DEFAULT_PREFIX = "multiproc:"


def stream_key(r, prefix, name):
    """The key of queue `name`'s stream: under `prefix`, or its old key (see above)."""
    key = prefix + name
    if prefix != DEFAULT_PREFIX or r.exists(key) or r.type(name) != b"stream":
        return key
    for group in r.xinfo_groups(name):
        if group.get("name") in (GROUP, GROUP.encode()):
            return name
    return key


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--tasks", default="task")
    ap.add_argument("--results", default="result")
    ap.add_argument("--idle", type=float, default=3.0, help="stop after this long without a task")
    ap.add_argument("--prefix", default=os.environ.get("MULTIPROC_PREFIX", DEFAULT_PREFIX),
                    help="the prefix of the queues' keys (default: $MULTIPROC_PREFIX or multiproc:)")
    args = ap.parse_args()

    r = redis.Redis.from_url(args.url)
    tasks = stream_key(r, args.prefix, args.tasks)
    results = stream_key(r, args.prefix, args.results)
    try:
        r.xgroup_create(tasks, GROUP, id="0", mkstream=True)
    except redis.ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise
    consumer = f"{socket.gethostname()}-{os.getpid()}-py"
    done = 0
    while True:
        reply = r.xreadgroup(GROUP, consumer, {tasks: ">"}, count=1,
                             block=int(args.idle * 1000))
        if not reply:
            break
        _, entries = reply[0]
        for entry_id, fields in entries:
            if fields.get(b"codec", b"json") != b"json" or b"body" not in fields:
                continue  # not ours to judge: leave it to a multiproc worker's dead letters
            task = json.loads(fields[b"body"])
            n = task["task"]
            result = f"{n} * {n} = {n * n}" if isinstance(n, int) else str(n).upper()
            body = json.dumps({"id": task["id"], "task": n, "result": result})
            r.xadd(results, {"codec": "json", "body": body})
            pipe = r.pipeline(transaction=True)
            pipe.xack(tasks, GROUP, entry_id)
            pipe.xdel(tasks, entry_id)
            pipe.execute()
            print(f"task {n} -> {result}", flush=True)
            done += 1
    print(f"python worker: {done} tasks done", flush=True)


if __name__ == "__main__":
    main()
