//! The seeds' first `Queue` snippets: a child puts a list, processes get what others put.
//!
//! Mirrors seed 003's `进程 Queue`:
//!
//! ```python
//! def ChildProcess(Q): Q.put(['Hello', None, 'World'])
//! q = Queue(); p = Process(target=ChildProcess, args=(q,)); p.start(); print(q.get()); p.join()
//! ```
//!
//! and seed 002's IPC snippet, where the main process and one child put, another child gets:
//!
//! ```python
//! def task1_put(queue):
//!     print(queue.get()); print(queue.get()); print(queue.empty()); print(queue.get())
//! def task2_get(queue):
//!     queue.put('我是子进程放入的消息'); print(queue.full())
//! queue = Queue()  # Queue(n) holds at most n messages
//! queue.put('主进程存放数据')
//! ```
//!
//! The seed's third `get` waits for ever (nobody puts a third message); here it times out.
//!
//! Run with `cargo run --example queue_basics -p multiproc`.

use std::time::Duration;

use multiproc::{ErrorKind, Process, Queue};

/// `def ChildProcess(Q)`
fn child_process(q: Queue<Vec<Option<String>>>) -> Result<(), String> {
    let list = vec![Some("Hello".into()), None, Some("World".into())];
    q.put(list).map_err(|e| e.to_string())
}

/// `def task1_put(queue)` (which gets): two messages, `empty()`, then a third get that times
/// out.
fn task1_put(queue: Queue<String>) -> Result<Vec<String>, String> {
    let mut got = Vec::new();
    for _ in 0..2 {
        let message = queue.get().map_err(|e| e.to_string())?;
        println!("  task1: {message}");
        got.push(message);
    }
    println!("  task1: empty() = {}", queue.is_empty());
    match queue.get_timeout(Duration::from_millis(500)) {
        Err(e) if e.kind() == ErrorKind::Timeout => println!("  task1: third get: {e}"),
        other => return Err(format!("expected a timeout, got {other:?}")),
    }
    Ok(got)
}

/// `def task2_get(queue)` (which puts)
fn task2_get(queue: Queue<String>) -> Result<(), String> {
    queue
        .put("message put by a child process".to_string())
        .map_err(|e| e.to_string())?;
    println!("  task2: full() = {}", queue.is_full());
    Ok(())
}

fn main() -> multiproc::Result<()> {
    multiproc::init();

    println!("== 1. a child puts a list ==");
    let q = Queue::new()?;
    let mut p = Process::new(child_process, q.clone()).start()?;
    let list = q.get()?;
    let shown: Vec<String> = list
        .iter()
        .map(|item| item.as_ref().map_or("None".into(), |s| format!("'{s}'")))
        .collect();
    println!("  [{}]", shown.join(", "));
    p.join()?;
    assert_eq!(list, [Some("Hello".into()), None, Some("World".into())]);

    println!("\n== 2. main and task2 put, task1 gets ==");
    let queue = Queue::new()?;
    queue.put("data put by the main process".to_string())?;
    let p1 = Process::new(task1_put, queue.clone()).start()?;
    let p2 = Process::new(task2_get, queue.clone()).start()?;
    p2.into_result()?.expect("task2 puts its message");
    let got = p1.into_result()?.expect("task1 gets both messages");
    assert_eq!(
        got,
        [
            "data put by the main process",
            "message put by a child process"
        ]
    );

    // Queue(2): at most two messages; a put that finds no room waits, put_nowait fails.
    println!("\n== 3. a bounded queue ==");
    let small = Queue::bounded(2)?;
    small.put(1u32)?;
    small.put(2u32)?;
    let err = small.try_put(3u32).expect_err("no room for a third");
    println!("  full() = {}; put_nowait(3): {err}", small.is_full());
    assert_eq!(err.kind(), ErrorKind::Full);
    Ok(())
}
