//! The awaitable waits (feature `async`) with real processes on the other side: under tokio
//! (current-thread and multi-thread), `futures::executor` and smol; 10,000 pending gets with
//! a bounded number of threads; cancelled futures that lose nothing (a property test); and
//! blocking waiters in other processes beside awaiting ones, none of them left asleep.

mod common;

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use common::Guarded;
use multiproc::{ErrorKind, Event, JoinableQueue, Process, Queue};
use proptest::prelude::*;

/// How long any wait here may take before the test calls it a hang.
const PATIENCE: Duration = Duration::from_secs(60);

fn put_range((q, from, to): (Queue<u64>, u64, u64)) {
    for n in from..to {
        q.put(n).unwrap();
    }
}

/// Takes `n` items with blocking gets.
fn take_blocking((q, n): (Queue<u64>, usize)) -> Vec<u64> {
    (0..n).map(|_| q.get().unwrap()).collect()
}

/// `tasks` tokio tasks, each taking `each` items with `get_async`.
fn getters(q: &Queue<u64>, tasks: usize, each: usize) -> Vec<tokio::task::JoinHandle<Vec<u64>>> {
    (0..tasks)
        .map(|_| {
            let q = q.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                for _ in 0..each {
                    got.push(q.get_async().await.unwrap());
                }
                got
            })
        })
        .collect()
}

/// The threads of this process now.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn gets_complete_under_tokio_current_thread() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let q: Queue<u64> = Queue::new().unwrap();
    let got = rt.block_on(async {
        let waiting = {
            let q = q.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                for _ in 0..100 {
                    got.push(q.get_async().await.unwrap());
                }
                got
            })
        };
        // Produced by another process while the task awaits.
        let child = Guarded::new(
            Process::new(put_range, (q.clone(), 0, 100))
                .start()
                .unwrap(),
        );
        let got = tokio::time::timeout(PATIENCE, waiting)
            .await
            .unwrap()
            .unwrap();
        child.into_inner().join().unwrap();
        got
    });
    assert_eq!(got, (0..100).collect::<Vec<_>>());
}

#[test]
fn many_tasks_share_the_items_under_tokio_multi_thread() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(3)
        .enable_time()
        .build()
        .unwrap();
    let q: Queue<u64> = Queue::builder().ring_bytes(4096).build().unwrap();
    let all: BTreeSet<u64> = rt.block_on(async {
        let tasks = getters(&q, 20, 250);
        let producers: Vec<_> = (0..2)
            .map(|p| {
                let range = (q.clone(), p * 2500, (p + 1) * 2500);
                Guarded::new(Process::new(put_range, range).start().unwrap())
            })
            .collect();
        let mut all = BTreeSet::new();
        for t in tasks {
            let got = tokio::time::timeout(PATIENCE, t).await.unwrap().unwrap();
            for n in got {
                assert!(all.insert(n), "{n} taken twice");
            }
        }
        for p in producers {
            p.into_inner().join().unwrap();
        }
        all
    });
    assert_eq!(all, (0..5000).collect());
}

#[test]
fn gets_and_puts_complete_under_futures_executor_and_smol() {
    let q: Queue<u64> = Queue::bounded(2).unwrap();
    let child = Guarded::new(
        Process::new(take_blocking, (q.clone(), 20))
            .start()
            .unwrap(),
    );
    // A bounded queue: the puts wait for the child to make room.
    futures::executor::block_on(async {
        for n in 0..10 {
            q.put_async(n).await.unwrap();
        }
    });
    smol::block_on(async {
        for n in 10..20 {
            q.put_async(n).await.unwrap();
        }
    });
    let got = child.into_inner().into_result().unwrap();
    assert_eq!(got, (0..20).collect::<Vec<_>>());

    let back = Guarded::new(Process::new(put_range, (q.clone(), 0, 4)).start().unwrap());
    let a = futures::executor::block_on(async { (q.get_async().await, q.get_async().await) });
    let b = smol::block_on(async { (q.get_async().await, q.get_async().await) });
    back.into_inner().join().unwrap();
    let got = [a.0, a.1, b.0, b.1].map(Result::unwrap);
    assert_eq!(got, [0, 1, 2, 3]);
}

#[test]
fn ten_thousand_pending_gets_use_a_bounded_number_of_threads() {
    const N: usize = 10_000;
    let before = threads();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let q: Arc<Queue<u64>> = Arc::new(Queue::new().unwrap());
    let parked = Arc::new(AtomicUsize::new(0));
    let got = rt.block_on(async {
        let tasks: Vec<_> = (0..N)
            .map(|_| {
                let (q, parked) = (q.clone(), parked.clone());
                tokio::spawn(async move {
                    parked.fetch_add(1, Ordering::Relaxed);
                    q.get_async().await.unwrap()
                })
            })
            .collect();
        // Every task has run up to its await once this task runs again twice.
        while parked.load(Ordering::Relaxed) < N {
            tokio::task::yield_now().await;
        }
        tokio::task::yield_now().await;
        let during = threads();
        assert!(
            during <= before + 4,
            "{N} pending gets use {} threads beyond the {before} before",
            during - before
        );
        let producer = Guarded::new(
            Process::new(put_range, ((*q).clone(), 0, N as u64))
                .start()
                .unwrap(),
        );
        let mut got = BTreeSet::new();
        for t in tasks {
            got.insert(t.await.unwrap());
        }
        producer.into_inner().join().unwrap();
        got
    });
    assert_eq!(got, (0..N as u64).collect());
}

#[test]
fn awaiting_and_blocking_consumers_in_other_processes_share_every_item() {
    // Two processes take with blocking gets while this one awaits: each wake a producer sends
    // reaches someone who takes an item, or is passed on; nobody is left asleep with items
    // there.
    let q: Queue<u64> = Queue::builder().ring_bytes(1024).build().unwrap();
    let blocking: Vec<_> = (0..2)
        .map(|_| {
            Guarded::new(
                Process::new(take_blocking, (q.clone(), 1000))
                    .start()
                    .unwrap(),
            )
        })
        .collect();
    let producer = Guarded::new(
        Process::new(put_range, (q.clone(), 0, 3000))
            .start()
            .unwrap(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let mine: Vec<u64> = rt.block_on(async {
        let tasks = getters(&q, 4, 250);
        let mut mine = Vec::new();
        for t in tasks {
            mine.extend(tokio::time::timeout(PATIENCE, t).await.unwrap().unwrap());
        }
        mine
    });
    producer.into_inner().join().unwrap();
    let mut all: Vec<u64> = mine;
    for b in blocking {
        all.extend(b.into_inner().into_result().unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (0..3000).collect::<Vec<_>>());
}

#[test]
fn an_event_set_by_another_process_wakes_every_awaiting_task() {
    let ev = Event::new().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let waiters: Vec<_> = (0..50)
            .map(|_| {
                let ev = ev.clone();
                tokio::spawn(async move { ev.wait_async().await })
            })
            .collect();
        tokio::task::yield_now().await;
        let child = Guarded::new(
            Process::new(|e: Event| e.set(), ev.clone())
                .start()
                .unwrap(),
        );
        for w in waiters {
            tokio::time::timeout(PATIENCE, w).await.unwrap().unwrap();
        }
        child.into_inner().join().unwrap();
    });
    assert!(ev.is_set());
}

#[test]
fn join_async_waits_for_every_item_done() {
    fn work(q: JoinableQueue<u64>) {
        for _ in 0..10 {
            q.get().unwrap();
            q.task_done().unwrap();
        }
    }
    let q: JoinableQueue<u64> = JoinableQueue::new().unwrap();
    for n in 0..10 {
        q.put(n).unwrap();
    }
    let mut joined = Box::pin(q.join_async());
    assert!(
        poll_once(joined.as_mut()).is_pending(),
        "joined before any item was done"
    );
    let worker = Guarded::new(Process::new(work, q.clone()).start().unwrap());
    futures::executor::block_on(joined).unwrap();
    assert_eq!(q.unfinished().unwrap(), 0);
    worker.into_inner().join().unwrap();
}

#[test]
fn a_closed_queue_fails_its_awaiting_calls() {
    let q: Queue<u64> = Queue::new().unwrap();
    q.close();
    let err = futures::executor::block_on(q.get_async()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidState);
}

/// A waker that counts its wakes.
struct Count(AtomicUsize);

impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// Polls once with a waker that does nothing.
fn poll_once<F: Future + ?Sized>(f: Pin<&mut F>) -> Poll<F::Output> {
    let waker = Waker::from(Arc::new(Count(AtomicUsize::new(0))));
    f.poll(&mut Context::from_waker(&waker))
}

/// What a step of the cancellation test does.
#[derive(Clone, Debug)]
enum Step {
    /// Make a new get future and poll it once.
    Start,
    /// Poll the future at this index (modulo how many there are).
    Poll(usize),
    /// Drop it.
    Drop(usize),
    /// Put the next item.
    Put,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => Just(Step::Start),
        3 => any::<usize>().prop_map(Step::Poll),
        2 => any::<usize>().prop_map(Step::Drop),
        3 => Just(Step::Put),
    ]
}

type GetFuture<'a> = Pin<Box<dyn Future<Output = multiproc::Result<u64>> + Send + 'a>>;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Gets dropped at any point lose nothing: every item put is got by a future or still in
    /// the queue, once, and a future that could take an item after a put did.
    #[test]
    fn cancelled_gets_lose_no_item(steps in prop::collection::vec(step(), 1..80)) {
        let q: Queue<u64> = Queue::new().unwrap();
        let mut futures: Vec<GetFuture<'_>> = Vec::new();
        let mut got = Vec::new();
        let mut put = 0u64;
        for s in steps {
            match s {
                Step::Start => {
                    let mut f: GetFuture<'_> = Box::pin(q.get_async());
                    match poll_once(f.as_mut()) {
                        Poll::Ready(v) => got.push(v.unwrap()),
                        Poll::Pending => futures.push(f),
                    }
                }
                Step::Poll(i) if !futures.is_empty() => {
                    let i = i % futures.len();
                    if let Poll::Ready(v) = poll_once(futures[i].as_mut()) {
                        got.push(v.unwrap());
                        drop(futures.remove(i));
                    }
                }
                Step::Drop(i) if !futures.is_empty() => {
                    let i = i % futures.len();
                    drop(futures.remove(i));
                }
                Step::Put => {
                    q.put(put).unwrap();
                    put += 1;
                }
                _ => {}
            }
        }
        drop(futures);
        while let Ok(v) = q.try_get() {
            got.push(v);
        }
        got.sort_unstable();
        prop_assert_eq!(got, (0..put).collect::<Vec<_>>());
    }
}

/// Polls `f` with `waker`.
fn poll_with<F: Future + ?Sized>(f: Pin<&mut F>, waker: &Arc<Count>) -> Poll<F::Output> {
    let waker = Waker::from(waker.clone());
    f.poll(&mut Context::from_waker(&waker))
}

/// Waits (at most [`PATIENCE`]) until `cond` holds.
fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::park_timeout(Duration::from_millis(1));
    }
}

#[test]
fn a_notified_get_that_is_dropped_passes_the_item_on() {
    let q: Queue<u64> = Queue::new().unwrap();
    let (wa, wb) = (
        Arc::new(Count(AtomicUsize::new(0))),
        Arc::new(Count(AtomicUsize::new(0))),
    );
    let mut a: GetFuture<'_> = Box::pin(q.get_async());
    let mut b: GetFuture<'_> = Box::pin(q.get_async());
    assert!(poll_with(a.as_mut(), &wa).is_pending());
    assert!(poll_with(b.as_mut(), &wb).is_pending());
    q.put(42).unwrap();
    // One of them is told (one item, one wake); the other is not, yet.
    let woken = |w: &Arc<Count>| w.0.load(Ordering::Relaxed) > 0;
    wait_until("a wake", || woken(&wa) || woken(&wb));
    let (told, mut other, other_waker) = if woken(&wa) { (a, b, wb) } else { (b, a, wa) };
    assert!(!woken(&other_waker), "both woken for one item");
    // Cancelled before it acted: the wake goes to the other, which takes the item.
    drop(told);
    wait_until("the wake passed on", || woken(&other_waker));
    match poll_with(other.as_mut(), &other_waker) {
        Poll::Ready(Ok(v)) => assert_eq!(v, 42),
        other => panic!("the other get gave {other:?}"),
    }
}

#[test]
fn the_waits_work_without_futex_waitv() {
    // Linux before 5.16 has no futex_waitv: the same tests, in a child process of this test
    // binary that uses the older way.
    let exe = std::env::current_exe().unwrap();
    for test in [
        "many_tasks_share_the_items_under_tokio_multi_thread",
        "awaiting_and_blocking_consumers_in_other_processes_share_every_item",
        "a_notified_get_that_is_dropped_passes_the_item_on",
        "an_event_set_by_another_process_wakes_every_awaiting_task",
    ] {
        let out = std::process::Command::new(&exe)
            .args(["--exact", test, "--test-threads=1"])
            .env("MULTIPROC_FUTEX_WAITV", "0")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{test}: {text}");
        assert!(text.contains("1 passed"), "{test} did not run: {text}");
    }
}

fn wait_then_return((go, x): (Event, u64)) -> u64 {
    go.wait();
    x
}

fn fail(kind: u8) {
    match kind {
        0 => panic!("on purpose"),
        _ => {
            // SAFETY: kill with our own pid and a valid signal.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
    }
}

#[test]
fn two_hundred_children_are_awaited_by_one_thread() {
    let go = Event::new().unwrap();
    let mut children: Vec<_> = (0..200u64)
        .map(|x| {
            Guarded::new(
                Process::new(wait_then_return, (go.clone(), x))
                    .start()
                    .unwrap(),
            )
        })
        .collect();
    let before = threads();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let sum: u64 = rt.block_on(async {
        let mut joins: Vec<_> = children
            .iter_mut()
            .map(|c| Box::pin(c.join_async()))
            .collect();
        // Each join polled once: all are watched.
        for j in &mut joins {
            assert!(futures::poll!(j.as_mut()).is_pending());
        }
        let during = threads();
        assert!(
            during <= before + 2,
            "{} threads to await 200 children",
            during - before
        );
        go.set();
        for j in joins {
            tokio::time::timeout(PATIENCE, j).await.unwrap().unwrap();
        }
        children.iter_mut().map(|c| c.take_result().unwrap()).sum()
    });
    assert_eq!(sum, (0..200u64).sum::<u64>());
}

#[test]
fn an_awaited_join_reports_a_panic_a_kill_and_a_large_result() {
    let mut panicked = Guarded::new(Process::new(fail, 0).start().unwrap());
    let err = futures::executor::block_on(panicked.join_async()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Panicked, "{err}");
    let mut killed = Guarded::new(Process::new(fail, 1).start().unwrap());
    let err = smol::block_on(killed.join_async()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ProcessFailed, "{err}");
    assert!(err.to_string().contains("SIGKILL"), "{err}");
    // A result larger than a socket buffer: the join reads it as it comes.
    let mut big = Guarded::new(
        Process::new(|n: usize| vec![7u8; n], 8 << 20)
            .start()
            .unwrap(),
    );
    futures::executor::block_on(big.join_async()).unwrap();
    let v = big.take_result().unwrap();
    assert!(v.len() == 8 << 20 && v.iter().all(|&b| b == 7));
}
