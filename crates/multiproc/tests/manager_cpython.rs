//! A Rust manager server with CPython `BaseManager` workers: the seeds' distributed example,
//! with the master in Rust and the worker in every CPython found on the machine.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::pythons;
use multiproc::{Address, ManagerServer};

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
        let tasks = server.register_queue("get_task_queue");
        let results = server.register_queue("get_result_queue");
        let numbers = [3i64, 14, 15, 92, 65];
        for n in numbers {
            tasks.put(&n).unwrap();
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
    let tasks = server.register_queue("get_task_queue");
    server.register_queue("get_result_queue");
    tasks.put(&1).unwrap();
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
