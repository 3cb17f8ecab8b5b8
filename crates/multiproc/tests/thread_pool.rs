//! `ThreadPool`: the `Pool` API on threads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use multiproc::{ErrorKind, ThreadPool};

const LONG: Duration = Duration::from_secs(30);

/// A task body that holds until `release` sends (or goes away).
fn gate() -> (mpsc::Sender<()>, Mutex<mpsc::Receiver<()>>) {
    let (release, gate) = mpsc::channel();
    (release, Mutex::new(gate))
}

#[test]
fn apply_and_apply_async_run_capturing_closures() {
    let pool = ThreadPool::new(2).unwrap();
    let name = String::from("ada");
    assert_eq!(pool.apply(move || format!("hi {name}")).unwrap(), "hi ada");
    let data = Arc::new(vec![1, 2, 3]);
    let futures: Vec<_> = (0..3)
        .map(|i| {
            let data = data.clone();
            pool.apply_async(move || data[i] * 10).unwrap()
        })
        .collect();
    let got: Vec<i32> = futures
        .iter()
        .map(|f| f.result_timeout(LONG).unwrap())
        .collect();
    assert_eq!(got, [10, 20, 30]);
    assert!(futures.iter().all(|f| f.done()));
}

#[test]
fn map_and_starmap_keep_item_order() {
    let pool = ThreadPool::new(3).unwrap();
    let base = 1000;
    let out = pool.map(move |x: u32| base + x, 0..20).unwrap();
    assert_eq!(out, (1000..1020).collect::<Vec<_>>());
    let prods = pool
        .starmap(|(a, b): (u32, u32)| a * b, [(2, 3), (4, 5), (6, 7)])
        .unwrap();
    assert_eq!(prods, [6, 20, 42]);
    assert!(pool.map(|x: u8| x, Vec::new()).unwrap().is_empty());
}

#[test]
fn a_panicking_task_fails_alone() {
    let pool = ThreadPool::new(2).unwrap();
    let err = pool
        .map(
            |x: u32| {
                if x == 3 || x == 5 {
                    panic!("bad item {x}");
                }
                x
            },
            0..8,
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Panicked);
    assert!(
        err.to_string().contains("bad item 3"),
        "first in item order: {err}"
    );

    let failed = pool.apply_async(|| -> u32 { panic!("oops") }).unwrap();
    let fine = pool.apply_async(|| 7).unwrap();
    assert!(
        failed
            .result_timeout(LONG)
            .unwrap_err()
            .to_string()
            .contains("oops")
    );
    assert_eq!(fine.result_timeout(LONG).unwrap(), 7);

    let items: Vec<_> = pool
        .imap(|x: u32| if x == 1 { panic!("one") } else { x }, 0..3)
        .unwrap()
        .collect();
    assert_eq!(items.len(), 3);
    assert_eq!(*items[0].as_ref().unwrap(), 0);
    assert!(items[1].as_ref().unwrap_err().to_string().contains("one"));
    assert_eq!(*items[2].as_ref().unwrap(), 2);

    let mut unordered: Vec<_> = pool
        .imap_unordered(|x: u32| if x == 2 { panic!("two") } else { x }, 0..4)
        .unwrap()
        .filter_map(Result::ok)
        .collect();
    unordered.sort();
    assert_eq!(unordered, [0, 1, 3]);
    assert_eq!(pool.apply(|| "still working").unwrap(), "still working");
}

#[test]
fn callbacks_run_for_values_and_failures() {
    let pool = ThreadPool::new(2).unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let (ok_tx, err_tx) = (tx.clone(), tx.clone());
    let f = pool
        .apply_async_with(
            || 5,
            move |v: &i32| ok_tx.send(format!("value {v}")).unwrap(),
            |_| panic!("not for a value"),
        )
        .unwrap();
    assert_eq!(f.result_timeout(LONG).unwrap(), 5);
    assert_eq!(rx.try_recv().unwrap(), "value 5", "ran before the result");

    let f = pool
        .apply_async_with(
            || -> i32 { panic!("task failed") },
            |_| panic!("not for a failure"),
            move |e| err_tx.send(format!("error {e}")).unwrap(),
        )
        .unwrap();
    assert!(f.result_timeout(LONG).is_err());
    assert!(rx.try_recv().unwrap().contains("task failed"));

    // A panicking callback is reported; the task's value stands.
    let f = pool
        .apply_async_with(|| 9, |_| panic!("callback broke"), |_| {})
        .unwrap();
    assert_eq!(f.result_timeout(LONG).unwrap(), 9);
    drop(tx);
}

#[test]
fn imap_yields_the_first_result_before_the_last_task_finishes() {
    let pool = ThreadPool::new(2).unwrap();
    let (release, held) = gate();
    let mut it = pool
        .imap(
            move |x: u32| {
                if x == 1 {
                    let _ = held.lock().unwrap().recv_timeout(LONG);
                }
                x * 10
            },
            0..2,
        )
        .unwrap();
    assert_eq!(it.size_hint(), (2, Some(2)));
    assert_eq!(it.next().unwrap().unwrap(), 0);
    assert_eq!(
        it.next_timeout(Duration::from_millis(50))
            .unwrap()
            .unwrap_err()
            .kind(),
        ErrorKind::Timeout,
        "the last task is still held"
    );
    release.send(()).unwrap();
    assert_eq!(it.next_timeout(LONG).unwrap().unwrap(), 10);
    assert!(it.next().is_none());
}

#[test]
fn imap_unordered_yields_in_finishing_order() {
    let pool = ThreadPool::new(2).unwrap();
    let (release, held) = gate();
    let mut it = pool
        .imap_unordered(
            move |x: u32| {
                if x == 0 {
                    let _ = held.lock().unwrap().recv_timeout(LONG);
                }
                x
            },
            0..2,
        )
        .unwrap();
    assert_eq!(it.next().unwrap().unwrap(), 1, "item 1 finishes first");
    assert_eq!(
        it.next_timeout(Duration::from_millis(50))
            .unwrap()
            .unwrap_err()
            .kind(),
        ErrorKind::Timeout
    );
    release.send(()).unwrap();
    assert_eq!(it.next().unwrap().unwrap(), 0);
    assert!(it.next().is_none());
}

#[test]
fn join_needs_close_and_close_refuses_new_tasks() {
    let pool = ThreadPool::new(2).unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let futures: Vec<_> = (0..10)
        .map(|_| {
            let ran = ran.clone();
            pool.apply_async(move || ran.fetch_add(1, Ordering::SeqCst))
                .unwrap()
        })
        .collect();
    assert_eq!(pool.join().unwrap_err().kind(), ErrorKind::InvalidState);
    pool.close();
    assert_eq!(
        pool.apply(|| 1).unwrap_err().kind(),
        ErrorKind::InvalidState
    );
    assert_eq!(
        pool.apply_async(|| 1).unwrap_err().kind(),
        ErrorKind::InvalidState
    );
    assert_eq!(
        pool.map(|x: u8| x, [1]).unwrap_err().kind(),
        ErrorKind::InvalidState
    );
    assert!(pool.imap(|x: u8| x, [1]).is_err());
    pool.join().unwrap();
    assert_eq!(
        ran.load(Ordering::SeqCst),
        10,
        "join waits for queued tasks"
    );
    assert!(futures.iter().all(|f| f.done() && !f.cancelled()));
    pool.join().unwrap();
}

#[test]
fn terminate_cancels_queued_tasks_and_waits_for_running_ones() {
    let pool = ThreadPool::new(1).unwrap();
    let (started_tx, started) = mpsc::channel();
    let (release, held) = mpsc::channel::<()>();
    let running = pool
        .apply_async(move || {
            started_tx.send(()).unwrap();
            held.recv_timeout(LONG).is_err()
        })
        .unwrap();
    started.recv_timeout(LONG).unwrap();
    // The only sender rides with a queued task: cancelling it lets the running one end.
    let queued = pool
        .apply_async(move || {
            drop(release);
            2
        })
        .unwrap();
    let also_queued = pool.imap(|x: u8| x, [1, 2]).unwrap();
    pool.terminate();
    assert!(running.done(), "terminate waited for the running task");
    assert!(running.result().unwrap(), "ended by the cancelled sender");
    assert!(queued.cancelled());
    assert_eq!(queued.result().unwrap_err().kind(), ErrorKind::InvalidState);
    let rest: Vec<_> = also_queued.collect();
    assert!(
        rest.iter()
            .all(|r| r.as_ref().unwrap_err().kind() == ErrorKind::InvalidState)
    );
    assert_eq!(
        pool.apply(|| 1).unwrap_err().kind(),
        ErrorKind::InvalidState
    );
    pool.join().unwrap();
}

#[test]
fn dropping_the_pool_terminates_it() {
    let (started_tx, started) = mpsc::channel();
    let (release, held) = mpsc::channel::<()>();
    let (running, queued) = {
        let pool = ThreadPool::new(1).unwrap();
        let running = pool
            .apply_async(move || {
                started_tx.send(()).unwrap();
                held.recv_timeout(LONG).is_err()
            })
            .unwrap();
        started.recv_timeout(LONG).unwrap();
        let queued = pool
            .apply_async(move || {
                drop(release);
                2
            })
            .unwrap();
        (running, queued)
    };
    assert!(running.done() && running.result().unwrap());
    assert!(queued.cancelled());
}

#[test]
fn zero_threads_is_refused() {
    assert_eq!(
        ThreadPool::new(0).unwrap_err().kind(),
        ErrorKind::InvalidState
    );
}
