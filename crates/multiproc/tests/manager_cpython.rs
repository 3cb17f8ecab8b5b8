//! A Rust manager server with CPython `BaseManager` workers: the seeds' distributed example,
//! with the master in Rust and the worker in every CPython found on the machine.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::pythons;
#[path = "common/task_master.rs"]
mod task_master;
use std::io::{BufRead, BufReader};
use task_master::start_task_master;

use multiproc::{Address, ErrorKind, ManagerClient, ManagerServer};

/// The seeds' `task_worker.py` (typos fixed), parameterised by port, authkey and task count.
const TASK_WORKER: &str = r#"
import queue, sys
from multiprocessing.managers import BaseManager

class QueueManager(BaseManager):
    pass

QueueManager.register('get_task_queue')
QueueManager.register('get_result_queue')

port, key, ntasks = int(sys.argv[1]), sys.argv[2].encode(), int(sys.argv[3])
m = QueueManager(address=('127.0.0.1', port), authkey=key)
m.connect()
task = m.get_task_queue()
result = m.get_result_queue()
for i in range(ntasks + 1):
    try:
        n = task.get(timeout=1)
        print('run task %d * %d...' % (n, n), flush=True)
        result.put('%d * %d = %d' % (n, n, n * n))
    except queue.Empty:
        print('task queue is empty.', flush=True)
print('worker done.', flush=True)
"#;

#[test]
fn cpython_workers_pull_tasks_from_a_rust_master() {
    for python in pythons() {
        let mut server =
            ManagerServer::bind(&Address::tcp("127.0.0.1:0").unwrap(), b"abc").unwrap();
        let tasks = server.register_queue::<i64>("get_task_queue");
        let results = server.register_queue::<String>("get_result_queue");
        let numbers = [3i64, 14, 15, 92, 65];
        for n in numbers {
            tasks.put(n).unwrap();
        }
        let running = server.serve_in_background().unwrap();
        let Address::Tcp(addr) = running.address().clone() else {
            unreachable!()
        };
        let out = Command::new(&python)
            .args([
                "-c",
                TASK_WORKER,
                &addr.port().to_string(),
                "abc",
                &numbers.len().to_string(),
            ])
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{python:?}: {said}");
        // The extra get found the queue empty: CPython caught `queue.Empty` from our reply.
        assert!(said.contains("task queue is empty."), "{python:?}: {said}");
        let mut got: Vec<String> = (0..numbers.len())
            .map(|_| results.get_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        got.sort();
        let mut want: Vec<String> = numbers
            .iter()
            .map(|n| format!("{n} * {n} = {}", n * n))
            .collect();
        want.sort();
        assert_eq!(got, want, "{python:?}");
        assert!(tasks.is_empty());
        running.shutdown();
    }
}

#[test]
fn a_cpython_worker_with_the_wrong_authkey_is_refused() {
    let Some(python) = pythons().into_iter().next() else {
        return;
    };
    let mut server = ManagerServer::bind(&Address::tcp("127.0.0.1:0").unwrap(), b"abc").unwrap();
    let tasks = server.register_queue::<i64>("get_task_queue");
    server.register_queue::<String>("get_result_queue");
    tasks.put(1).unwrap();
    let running = server.serve_in_background().unwrap();
    let Address::Tcp(addr) = running.address().clone() else {
        unreachable!()
    };
    let out = Command::new(&python)
        .args(["-c", TASK_WORKER, &addr.port().to_string(), "wrong", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("AuthenticationError"), "{err}");
    assert_eq!(tasks.len(), 1, "nothing was taken");
    running.shutdown();
}

#[test]
fn a_rust_worker_pulls_tasks_from_a_cpython_master() {
    for python in pythons() {
        let (mut master, out, address) = start_task_master(&python);
        assert_eq!(
            ManagerClient::connect(&address, b"wrong")
                .unwrap_err()
                .kind(),
            ErrorKind::AuthenticationFailed
        );
        let manager = ManagerClient::connect(&address, b"abc").unwrap();
        let tasks = manager.queue::<i64>("get_task_queue").unwrap();
        let results = manager.queue::<String>("get_result_queue").unwrap();
        let mut done = 0;
        loop {
            // The master puts its tasks after printing its port: wait longer for the first.
            let wait = if done == 0 { 10_000 } else { 500 };
            match tasks.get_timeout(Duration::from_millis(wait)) {
                Ok(n) => {
                    results.put(format!("{n} * {n} = {}", n * n)).unwrap();
                    done += 1;
                }
                // CPython's `queue.Empty`, raised in the master after the wait, arrives as our
                // Timeout, as a `get_timeout` that ran out says on every flavor.
                Err(e) if e.kind() == ErrorKind::Timeout => break,
                Err(e) => panic!("{python:?}: {e}"),
            }
        }
        assert_eq!(done, 5, "{python:?}");
        results.put("saw queue.Empty".to_string()).unwrap();
        let mut said = String::new();
        for line in out.lines() {
            said.push_str(&line.unwrap());
            said.push('\n');
        }
        assert!(master.wait().unwrap().success(), "{python:?}: {said}");
        assert!(
            said.contains("Result: 92 * 92 = 8464"),
            "{python:?}: {said}"
        );
        assert_eq!(said.matches("Result: ").count(), 5, "{python:?}: {said}");
        assert!(
            said.contains("Worker: saw queue.Empty"),
            "{python:?}: {said}"
        );
    }
}

const SYNC_CLIENT: &str = r#"
import sys
from multiprocessing.managers import SyncManager
m = SyncManager(address=('127.0.0.1', int(sys.argv[1])), authkey=b'abc')
m.connect()
d = m.dict()
d['a'] = 1
d['b'] = [1, 2]
print(d['a'], len(d), sorted(d.keys()), d.get('zz', 'dflt'))
try:
    d['missing']
except KeyError as e:
    print('KeyError', e)
l = m.list([1, 2])
l.append(3)
print(len(l), l[2], l[-1], 3 in l)
q = m.Queue()
q.put('x')
print(q.get(timeout=1))
lk = m.Lock()
print(lk.acquire(), lk.release())
e = m.Event()
print(e.is_set(), e.wait(0.05))
e.set()
print(e.is_set(), e.wait(5))
v = m.Value('i', 5)
v.value = v.value + 2
print(v.value)
ns = m.Namespace()
ns.x = 1
ns.y = 'two'
print(ns.x, ns.y, hasattr(ns, 'z'))
r = m.RLock()
print(r.acquire(), r.acquire(), r.release(), r.release())
s = m.BoundedSemaphore(2)
print(s.acquire(), s.acquire(), s.acquire(False), s.release(), s.release())
try:
    s.release()
except ValueError:
    print('ValueError')
print(list(d), [k for k in d])
n = m.dict()
n[1] = 'x'
n[1.0] = 'y'
n[(1, 2.0)] = 'z'
print(len(n), n[True], n[(True, 2)], list(n.keys()), m.list([1, 2.0, 1]).count(1.0))
# 1 and 9 share a slot of a small set: the first in takes it, so these two iterate (and
# pickle) in opposite orders; dicts pickle in insertion order.
f = m.dict()
f[frozenset([1, 9])] = 'fs'
print(f[frozenset([9, 1])], m.list([{1: 'a', 9: 'b'}]).count({9: 'b', 1: 'a'}),
      m.list([{1, 9}]).index(frozenset([9, 1])))
"#;

#[test]
fn cpython_sync_manager_clients_use_a_rust_servers_dict_list_queue_and_lock() {
    for python in pythons() {
        let (running, port) = sync_server();
        let said = run_python(&python, SYNC_CLIENT, &[&port]);
        assert_eq!(
            said,
            "1 2 ['a', 'b'] dflt\nKeyError 'missing'\n3 3 3 True\nx\nTrue None\n\
             False False\nTrue True\n7\n1 two False\nTrue True None None\n\
             True True False None None\nValueError\n['a', 'b'] ['a', 'b']\n\
             2 y z [1, (1, 2.0)] 2\nfs 1 0\n",
            "{python:?}"
        );
        running.shutdown();
    }
}

const SYNC_SERVER: &str = r#"
import sys
from multiprocessing.managers import SyncManager
m = SyncManager(address=('127.0.0.1', 0), authkey=b'abc')
m.start()
print(m.address[1], flush=True)
sys.stdin.read()
m.shutdown()
"#;

#[test]
fn a_rust_client_uses_a_cpython_sync_managers_dict_and_list() {
    for python in pythons() {
        let mut server = Command::new(&python)
            .args(["-c", SYNC_SERVER])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut port = String::new();
        BufReader::new(server.stdout.take().unwrap())
            .read_line(&mut port)
            .unwrap();
        let address = Address::tcp(format!("127.0.0.1:{}", port.trim())).unwrap();
        let m = ManagerClient::connect(&address, b"abc").unwrap();
        let d = m.dict::<String, i64>().unwrap();
        d.set(&"x".into(), &7).unwrap();
        d.set(&"y".into(), &8).unwrap();
        assert_eq!(d.get(&"x".into()).unwrap(), Some(7), "{python:?}");
        assert_eq!(d.len().unwrap(), 2);
        let mut items = d.items().unwrap();
        items.sort();
        assert_eq!(items, [("x".to_string(), 7), ("y".to_string(), 8)]);
        let l = m.list::<i64>().unwrap();
        l.append(&1).unwrap();
        l.append(&2).unwrap();
        assert_eq!(l.to_vec().unwrap(), [1, 2], "{python:?}");
        assert_eq!(l.get(-1).unwrap(), 2);
        let e = m.event().unwrap();
        assert!(!e.wait_timeout(Duration::from_millis(20)).unwrap());
        e.set().unwrap();
        assert!(e.is_set().unwrap());
        e.wait().unwrap();
        let v = m.value("i", &41i64).unwrap();
        v.set(&(v.get().unwrap() + 1)).unwrap();
        assert_eq!(v.get().unwrap(), 42, "{python:?}");
        let lock = m.lock().unwrap();
        lock.acquire().unwrap();
        lock.release().unwrap();
        drop(server.stdin.take());
        assert!(server.wait().unwrap().success());
    }
}

/// A user type served to CPython clients through `register`.
#[derive(Default)]
struct Counter(std::sync::Mutex<i64>);

impl multiproc::Managed for Counter {
    fn methods(&self) -> &'static [&'static str] {
        &["increment", "value", "fail"]
    }

    fn call(&self, method: &str, call: &mut multiproc::MethodCall<'_>) -> multiproc::Result<()> {
        let mut n = self.0.lock().unwrap();
        match method {
            "increment" => {
                *n += call.arg::<i64>(0, "by").unwrap_or(1);
                call.ret(&*n)
            }
            "value" => call.ret(&*n),
            _ => {
                call.raise("ValueError", "asked to fail");
                Ok(())
            }
        }
    }
}

const COUNTER_CLIENT: &str = r#"
import sys
from multiprocessing.managers import BaseManager
class M(BaseManager):
    pass
M.register('Counter')
m = M(address=('127.0.0.1', int(sys.argv[1])), authkey=b'abc')
m.connect()
c = m.Counter()
print(c.increment(5), c.increment(), c.increment(by=10), c.value())
try:
    c.fail()
except ValueError as e:
    print('ValueError', e)
other = m.Counter()
print(other.value())
"#;

#[test]
fn cpython_clients_call_methods_of_a_registered_rust_type() {
    for python in pythons() {
        let mut server =
            ManagerServer::bind(&Address::tcp("127.0.0.1:0").unwrap(), b"abc").unwrap();
        server.register("Counter", || std::sync::Arc::new(Counter::default()));
        let running = server.serve_in_background().unwrap();
        let Address::Tcp(addr) = running.address().clone() else {
            unreachable!()
        };
        let said = run_python(&python, COUNTER_CLIENT, &[&addr.port().to_string()]);
        // Each `m.Counter()` is a new object from the factory.
        assert_eq!(
            said, "5 6 16 16\nValueError asked to fail\n0\n",
            "{python:?}"
        );
        running.shutdown();
    }
}

/// A CPython child killed and reaped when the test ends, also when it fails.
struct PythonChild(std::process::Child);

impl Drop for PythonChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `python -c script args…` to its end (killed after two minutes: a hang fails the
/// test instead of stalling it); its stdout, after checking it succeeded.
fn run_python(python: &std::path::Path, script: &str, args: &[&str]) -> String {
    use std::io::Read;
    let mut child = PythonChild(
        Command::new(python)
            .arg("-c")
            .arg(script)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pidfd = common::pidfd(child.0.id() as i32).unwrap();
    let mut stdout = child.0.stdout.take().unwrap();
    let mut stderr = child.0.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let exited = common::wait_exit(&pidfd, Duration::from_secs(120));
    if !exited {
        let _ = child.0.kill();
    }
    let status = child.0.wait().unwrap();
    let said = out_reader.join().unwrap();
    let err = err_reader.join().unwrap();
    assert!(exited, "{python:?} hung; it said: {said}\n{err}");
    assert!(status.success(), "{python:?} failed: {said}\n{err}");
    said
}

/// Serves SyncManager's typeids on a free port; the server and its port.
fn sync_server() -> (multiproc::RunningServer, String) {
    let server = ManagerServer::bind(&Address::tcp("127.0.0.1:0").unwrap(), b"abc").unwrap();
    let running = server.serve_in_background().unwrap();
    let Address::Tcp(addr) = running.address().clone() else {
        unreachable!()
    };
    (running, addr.port().to_string())
}

const ARRAY_CLIENT: &str = r#"
import array, sys
from multiprocessing.managers import SyncManager
m = SyncManager(address=('127.0.0.1', int(sys.argv[1])), authkey=b'abc')
m.connect()
a = m.Array('i', [1, 2, 3])
print(len(a), a[0], a[-1], list(a))
a[1] = 20
print(a[1], a[0:2], a[::-1])
a[0:1] = array.array('i', [7, 8])
print(list(a), a._getvalue())
for bad in (lambda: a[10], lambda: a.__setitem__(0, 2 ** 40),
            lambda: a.__setitem__(0, 'x'), lambda: a.__setitem__(slice(0, 1), [1]),
            lambda: a.__setitem__(slice(None, None, 2), array.array('i', [1]))):
    try:
        bad()
        print('no error')
    except (IndexError, OverflowError, TypeError, ValueError) as e:
        print(type(e).__name__)
d = m.Array('d', [0.5, 2])
u = m.Array('u', 'h\u00e9')
b = m.Array('B', b'\x01\xff')
q = m.Array('Q', [2 ** 64 - 1])
print(d[0], d[1], u[1], len(u), list(b), q[0], list(a))
"#;

#[test]
fn cpython_clients_use_a_rust_servers_array() {
    for python in pythons() {
        let (running, port) = sync_server();
        let said = run_python(&python, ARRAY_CLIENT, &[&port]);
        assert_eq!(
            said,
            "3 1 3 [1, 2, 3]\n20 array('i', [1, 20]) array('i', [3, 20, 1])\n\
             [7, 8, 20, 3] array('i', [7, 8, 20, 3])\n\
             IndexError\nOverflowError\nTypeError\nTypeError\nValueError\n\
             0.5 2.0 \u{e9} 2 [1, 255] 18446744073709551615 [7, 8, 20, 3]\n",
            "{python:?}"
        );
        running.shutdown();
    }
}

const CONDITION_CLIENT: &str = r#"
import sys, threading, time
from multiprocessing.managers import SyncManager
m = SyncManager(address=('127.0.0.1', int(sys.argv[1])), authkey=b'abc')
m.connect()
c = m.Condition()
flag, results = [], []
def waiter():
    with c:
        results.append(c.wait_for(lambda: flag, 60))
t = threading.Thread(target=waiter)
t.start()
with c:
    flag.append(1)
    c.notify_all()
t.join(90)
print('wait_for', results, t.is_alive())
with c:
    print('timeout', c.wait(0.05), c.wait_for(lambda: False, 0.05))
for f in (c.notify, c.wait):
    try:
        f()
    except RuntimeError:
        print('RuntimeError')
# notify(2) wakes two of three waiters, in the order they came.
waiting, woke = [0], []
def sleeper(i):
    with c:
        waiting[0] += 1
        woke.append((i, c.wait(60)))
ts = [threading.Thread(target=sleeper, args=(i,)) for i in range(3)]
for t in ts:
    t.start()
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    with c:
        if waiting[0] == 3:
            c.notify(2)
            break
    time.sleep(0.01)
while len(woke) < 2 and time.monotonic() < deadline:
    time.sleep(0.01)
print('after notify(2)', len(woke))
with c:
    c.notify()
for t in ts:
    t.join(90)
print('all', sorted(ok for _, ok in woke))
# A condition over a manager lock shares that lock.
lk = m.Lock()
c2 = m.Condition(lk)
with c2:
    print('shared lock', lk.acquire(False))
print('free again', lk.acquire(False))
lk.release()
r = m.Condition()
with r:
    with r:
        print('reentrant', r.wait(0.01))
"#;

#[test]
fn cpython_clients_use_a_rust_servers_condition() {
    for python in pythons() {
        let (running, port) = sync_server();
        let said = run_python(&python, CONDITION_CLIENT, &[&port]);
        assert_eq!(
            said,
            "wait_for [[1]] False\ntimeout False False\nRuntimeError\nRuntimeError\n\
             after notify(2) 2\nall [True, True, True]\nshared lock False\nfree again True\n\
             reentrant False\n",
            "{python:?}"
        );
        running.shutdown();
    }
}

const BARRIER_CLIENT: &str = r#"
import sys, threading, time
from multiprocessing.managers import SyncManager
m = SyncManager(address=('127.0.0.1', int(sys.argv[1])), authkey=b'abc')
m.connect()
b = m.Barrier(3)
print(b.parties, b.n_waiting, b.broken)
idx = []
ts = [threading.Thread(target=lambda: idx.append(b.wait(60))) for _ in range(3)]
for t in ts:
    t.start()
for t in ts:
    t.join(90)
print(sorted(idx))
b.abort()
print(b.broken, b.n_waiting)
try:
    b.wait(5)
except threading.BrokenBarrierError:
    print('BrokenBarrierError')
b.reset()
print(b.broken)
b2 = m.Barrier(2)
try:
    b2.wait(0.05)
except threading.BrokenBarrierError:
    print('timed out, broken:', b2.broken)
b3 = m.Barrier(2)
out = []
def w():
    try:
        b3.wait(60)
        out.append('passed')
    except threading.BrokenBarrierError:
        out.append('broken')
t = threading.Thread(target=w)
t.start()
deadline = time.monotonic() + 60
while b3.n_waiting != 1 and time.monotonic() < deadline:
    time.sleep(0.01)
print('waiting', b3.n_waiting)
b3.reset()
t.join(90)
print(out, b3.broken)
"#;

#[test]
fn cpython_clients_use_a_rust_servers_barrier() {
    for python in pythons() {
        let (running, port) = sync_server();
        let said = run_python(&python, BARRIER_CLIENT, &[&port]);
        assert_eq!(
            said,
            "3 0 False\n[0, 1, 2]\nTrue 0\nBrokenBarrierError\nFalse\n\
             timed out, broken: True\nwaiting 1\n['broken'] False\n",
            "{python:?}"
        );
        running.shutdown();
    }
}

const JOINABLE_QUEUE_CLIENT: &str = r#"
import sys, threading
from multiprocessing.managers import SyncManager
m = SyncManager(address=('127.0.0.1', int(sys.argv[1])), authkey=b'abc')
m.connect()
q = m.JoinableQueue()
for i in range(3):
    q.put(i)
done = []
def joiner():
    q.join()
    done.append('joined')
t = threading.Thread(target=joiner)
t.start()
# The joiner's connection blocks in join; this thread's connection goes on.
print(q.get(), q.get(), q.get(), q.qsize())
q.task_done()
q.task_done()
print('joined before the last task_done:', not t.is_alive())
q.task_done()
t.join(60)
print(done, t.is_alive())
try:
    q.task_done()
except ValueError as e:
    print('ValueError', e)
q.join()
print('join with nothing pending returns')
"#;

#[test]
fn cpython_clients_join_a_rust_servers_joinable_queue() {
    for python in pythons() {
        let (running, port) = sync_server();
        let said = run_python(&python, JOINABLE_QUEUE_CLIENT, &[&port]);
        assert_eq!(
            said,
            "0 1 2 0\njoined before the last task_done: False\n['joined'] False\n\
             ValueError task_done() called too many times\njoin with nothing pending returns\n",
            "{python:?}"
        );
        running.shutdown();
    }
}
