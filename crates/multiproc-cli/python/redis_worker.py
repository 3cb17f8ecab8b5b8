"""A worker in Python (redis-py) taking tasks that `multiproc submit -b redis://...` put.

It follows the entry format of docs/broker.md: the stream is the queue's name, read through
the consumer group "multiproc"; each entry holds `codec` ("json") and `body`. A task's body is
{"id": ..., "task": ...}; the result it puts is {"id": ..., "task": ..., "result": ...}, which
`multiproc collect` prints (once per task id). A task is acknowledged and deleted only after
its result is put, so a worker that dies leaves its task to another (at least once).

    python3 redis_worker.py redis://127.0.0.1:6379/0 [--tasks task] [--results result]
"""

import argparse
import json
import os
import socket

import redis

GROUP = "multiproc"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--tasks", default="task")
    ap.add_argument("--results", default="result")
    ap.add_argument("--idle", type=float, default=3.0, help="stop after this long without a task")
    args = ap.parse_args()

    r = redis.Redis.from_url(args.url)
    try:
        r.xgroup_create(args.tasks, GROUP, id="0", mkstream=True)
    except redis.ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise
    consumer = f"{socket.gethostname()}-{os.getpid()}-py"
    done = 0
    while True:
        reply = r.xreadgroup(GROUP, consumer, {args.tasks: ">"}, count=1,
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
            r.xadd(args.results, {"codec": "json", "body": body})
            pipe = r.pipeline(transaction=True)
            pipe.xack(args.tasks, GROUP, entry_id)
            pipe.xdel(args.tasks, entry_id)
            pipe.execute()
            print(f"task {n} -> {result}", flush=True)
            done += 1
    print(f"python worker: {done} tasks done", flush=True)


if __name__ == "__main__":
    main()
