//! Awaiting a manager's queue (features `async` and `manager`): gets, puts and joins on a
//! Rust manager server and on CPython's, with no thread per waiter; a get whose future is
//! dropped after its request went out leaves its item to the next get, or, if the handle goes
//! too, puts it back.

mod common;

use std::future::Future;
use std::io::BufRead;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Wake, Waker};
use std::time::Duration;

use common::pythons;
#[path = "common/task_master.rs"]
mod task_master;
use multiproc::{Address, JoinableQueue, ManagerClient, ManagerServer, RunningServer};
use task_master::start_task_master;

const PATIENCE: Duration = Duration::from_secs(60);

fn start() -> (RunningServer, JoinableQueue<i64>) {
    let mut server = ManagerServer::bind(&Address::tcp("127.0.0.1:0").unwrap(), b"k").unwrap();
    let q = server.register_queue("get_task_queue");
    (server.serve_in_background().unwrap(), q)
}

struct Count(AtomicUsize);

impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// Polls once, with a waker that only counts.
fn poll_once<F: Future>(f: std::pin::Pin<&mut F>) -> bool {
    let waker = Waker::from(Arc::new(Count(AtomicUsize::new(0))));
    f.poll(&mut Context::from_waker(&waker)).is_pending()
}

#[test]
fn awaited_gets_puts_and_join_on_a_rust_manager() {
    let (running, _served) = start();
    let m = ManagerClient::connect(running.address(), b"k").unwrap();
    let q = Arc::new(m.queue::<i64>("get_task_queue").unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let got = rt.block_on(async {
        let getters: Vec<_> = (0..10)
            .map(|_| {
                let q = q.clone();
                tokio::spawn(async move {
                    let v = q.get_async().await.unwrap();
                    q.task_done().unwrap();
                    v
                })
            })
            .collect();
        tokio::task::yield_now().await;
        // Another client puts, from a thread of its own.
        let address = running.address().clone();
        let putter = std::thread::spawn(move || {
            let m = ManagerClient::connect(&address, b"k").unwrap();
            let q = m.queue::<i64>("get_task_queue").unwrap();
            for n in 0..10 {
                q.put(n).unwrap();
            }
        });
        let mut got = Vec::new();
        for g in getters {
            got.push(tokio::time::timeout(PATIENCE, g).await.unwrap().unwrap());
        }
        putter.join().unwrap();
        tokio::time::timeout(PATIENCE, q.join_async())
            .await
            .unwrap()
            .unwrap();
        q.put_async(99).await.unwrap();
        assert_eq!(q.get_async().await.unwrap(), 99);
        got
    });
    let mut got = got;
    got.sort_unstable();
    assert_eq!(got, (0..10).collect::<Vec<_>>());
}

#[test]
fn a_dropped_get_leaves_its_item_to_the_next_get_or_puts_it_back() {
    let (running, _served) = start();
    let m = ManagerClient::connect(running.address(), b"k").unwrap();
    let other = ManagerClient::connect(running.address(), b"k").unwrap();
    let producer = other.queue::<i64>("get_task_queue").unwrap();

    // Asked, then dropped: the next blocking get takes the reply.
    let q = m.queue::<i64>("get_task_queue").unwrap();
    {
        let mut pending = Box::pin(q.get_async());
        assert!(poll_once(pending.as_mut()));
    }
    producer.put(1).unwrap();
    assert_eq!(q.get_timeout(PATIENCE).unwrap(), 1);

    // The same, the next get being awaited too.
    {
        let mut pending = Box::pin(q.get_async());
        assert!(poll_once(pending.as_mut()));
    }
    producer.put(2).unwrap();
    assert_eq!(futures::executor::block_on(q.get_async()).unwrap(), 2);

    // Asked, dropped, and the handle dropped too: the item goes back into the queue.
    {
        let mut pending = Box::pin(q.get_async());
        assert!(poll_once(pending.as_mut()));
    }
    drop(q);
    producer.put(3).unwrap();
    assert_eq!(producer.get_timeout(PATIENCE).unwrap(), 3);
}

#[test]
fn an_awaiting_rust_worker_on_a_cpython_master() {
    for python in pythons() {
        let (mut master, out, address) = start_task_master(&python);
        let manager = ManagerClient::connect(&address, b"abc").unwrap();
        let tasks = manager.queue::<i64>("get_task_queue").unwrap();
        let results = manager.queue::<String>("get_result_queue").unwrap();
        smol::block_on(async {
            for _ in 0..5 {
                let n = tasks.get_async().await.unwrap();
                results
                    .put_async(format!("{n} * {n} = {}", n * n))
                    .await
                    .unwrap();
            }
            // The master waits for a sixth line, a worker's.
            results.put_async("done".to_string()).await.unwrap();
        });
        let said: String = out.lines().map(|l| l.unwrap() + "\n").collect();
        assert!(master.wait().unwrap().success(), "{python:?}: {said}");
        assert_eq!(said.matches("Result: ").count(), 5, "{python:?}: {said}");
        assert!(
            said.contains("Result: 92 * 92 = 8464"),
            "{python:?}: {said}"
        );
    }
}

#[test]
fn the_serving_process_awaits_its_own_queue() {
    let (running, served) = start();
    let address = running.address().clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let waiting = {
            let served = served.clone();
            tokio::spawn(async move { served.get_async().await.unwrap() })
        };
        tokio::task::yield_now().await;
        // A client puts, then (once the serving process took it, so its own get does not
        // take it instead) takes what the serving process puts back and marks it done.
        let (taken, was_taken) = std::sync::mpsc::channel::<()>();
        let client = std::thread::spawn(move || {
            let m = ManagerClient::connect(&address, b"k").unwrap();
            let q = m.queue::<i64>("get_task_queue").unwrap();
            q.put(5).unwrap();
            was_taken.recv().unwrap();
            let back = q.get_timeout(PATIENCE).unwrap();
            q.task_done().unwrap();
            back
        });
        assert_eq!(
            tokio::time::timeout(PATIENCE, waiting)
                .await
                .unwrap()
                .unwrap(),
            5
        );
        taken.send(()).unwrap();
        served.task_done().unwrap();
        served.put_async(6).await.unwrap();
        tokio::time::timeout(PATIENCE, served.join_async())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(client.join().unwrap(), 6);
    });
}
