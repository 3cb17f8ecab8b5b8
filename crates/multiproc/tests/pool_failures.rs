//! `Pool`: results, callbacks, iterators, and failures that must never hang the pool.

mod common;

use std::collections::BTreeSet;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{pidfd, wait_exit};
use multiproc::{ErrorKind, Pool, Priority, RetryPolicy, SharedMemory};

const LONG: Duration = Duration::from_secs(30);

fn square(x: u64) -> u64 {
    x * x
}

fn pid_of(_: u32) -> u32 {
    std::process::id()
}

fn die_at((x, at): (u64, u64)) -> u64 {
    if x == at {
        // SAFETY: raise has no preconditions; SIGKILL ends this worker at once.
        unsafe { libc::raise(libc::SIGKILL) };
    }
    x * 2
}

/// Waits (yielding) until byte 0 of the named block is non-zero: a task that runs until the
/// test lets it finish.
fn wait_for_flag((name, x): (String, u64)) -> u64 {
    let block = SharedMemory::open(&name).unwrap();
    let mut b = [0u8];
    loop {
        block.read(0, &mut b);
        if b[0] != 0 {
            return x;
        }
        std::thread::yield_now();
    }
}

fn forever(_: u32) -> u32 {
    loop {
        std::thread::park_timeout(Duration::from_secs(1));
    }
}

#[test]
fn map_apply_and_starmap_give_every_result_in_order() {
    let pool = Pool::new(2).unwrap();
    let want: Vec<u64> = (0..1000).map(|x| x * x).collect();
    assert_eq!(pool.map(square, 0..1000).unwrap(), want);
    assert_eq!(pool.map_chunked(square, 0..1000, 7).unwrap(), want);
    assert_eq!(
        pool.map(square, std::iter::empty()).unwrap(),
        Vec::<u64>::new()
    );
    let sums = pool
        .starmap(|(a, b): (u32, u32)| a + b, [(1, 2), (3, 4)])
        .unwrap();
    assert_eq!(sums, [3, 7]);
    assert_eq!(pool.apply(square, 12).unwrap(), 144);
    let pending = pool.apply_async(square, 5).unwrap();
    assert!(pending.wait_timeout(LONG));
    assert!(pending.ready());
    assert!(pending.successful().unwrap());
    assert_eq!(pending.get().unwrap(), 25);
    assert_eq!(pending.get().unwrap_err().kind(), ErrorKind::InvalidState);
    pool.close();
    pool.join().unwrap();
}

/// Yields `actual` numbers while claiming to know it will yield exactly `claimed`.
struct Misstated {
    next: u64,
    actual: u64,
    claimed: usize,
}

impl Iterator for Misstated {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        (self.next < self.actual).then(|| {
            self.next += 1;
            self.next - 1
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.claimed, Some(self.claimed))
    }
}

#[test]
fn map_trusts_the_items_not_the_length_an_iterator_claims() {
    let pool = Pool::new(2).unwrap();
    for (actual, claimed) in [(10, 100), (100, 10), (0, 5), (5, 0)] {
        let items = Misstated {
            next: 0,
            actual,
            claimed,
        };
        let got = pool.map(square, items).unwrap();
        assert_eq!(got, (0..actual).map(square).collect::<Vec<_>>());
    }
    // An iterator with no exact length is counted first.
    let odd = pool.map(square, (0..50u64).filter(|x| x % 2 == 1)).unwrap();
    assert_eq!(
        odd,
        (0..50u64)
            .filter(|x| x % 2 == 1)
            .map(square)
            .collect::<Vec<_>>()
    );
}

fn halve(x: f64) -> f64 {
    x / 2.0
}

fn describe(x: i8) -> String {
    format!("<{x}>")
}

fn fail_on_seven(x: u16) -> u16 {
    assert!(x != 7, "seven is not welcome");
    x + 1
}

#[test]
fn map_carries_numbers_strings_and_failures_inside_a_chunk() {
    let pool = Pool::new(2).unwrap();
    let floats = [1.0, -0.5, f64::INFINITY, 3.25];
    assert_eq!(pool.map(halve, floats).unwrap(), floats.map(halve));
    assert_eq!(
        pool.map_chunked(describe, [-128i8, 0, 127], 2).unwrap(),
        ["<-128>", "<0>", "<127>"]
    );
    let err = pool.map_chunked(fail_on_seven, 0..20, 10).unwrap_err();
    assert!(err.to_string().contains("seven is not welcome"), "{err}");
    let mut each = pool.imap(fail_on_seven, 5..9, Some(4)).unwrap();
    assert_eq!(each.next().unwrap().unwrap(), 6);
    assert_eq!(each.next().unwrap().unwrap(), 7);
    assert!(each.next().unwrap().is_err());
    assert_eq!(each.next().unwrap().unwrap(), 9);
    assert!(each.next().is_none());
}

/// A result that cannot be serialized when it is 13: the worker cannot send its chunk back.
#[derive(Debug, serde::Deserialize)]
struct Unlucky(u8);

impl serde::Serialize for Unlucky {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == 13 {
            return Err(serde::ser::Error::custom("13 does not travel"));
        }
        s.serialize_u8(self.0)
    }
}

fn unlucky(x: u8) -> Unlucky {
    Unlucky(x)
}

#[test]
fn a_chunk_wide_failure_reaches_every_item_of_the_chunk_with_its_kind() {
    let pool = Pool::new(1).unwrap();
    let got: Vec<_> = pool.imap(unlucky, 10..16, Some(6)).unwrap().collect();
    assert_eq!(got.len(), 6);
    for r in &got {
        let err = r.as_ref().unwrap_err();
        // Each item gets the chunk's own error, not a stand-in of another kind. (Its message
        // is postcard's: postcard keeps no custom serializer message.)
        assert_eq!(err.kind(), ErrorKind::Serialization, "{err}");
        assert!(err.to_string().contains("pool task results"), "{err}");
    }
}

#[test]
fn a_panicking_task_fails_alone_and_the_worker_carries_on() {
    let pool = Pool::new(1).unwrap();
    let pids = pool.worker_pids();
    let err = pool
        .apply(|x: u32| -> u32 { panic!("task {x} gave up") }, 7)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Panicked);
    assert!(err.to_string().contains("task 7 gave up"), "{err}");
    assert_eq!(pool.apply(square, 3).unwrap(), 9);
    assert_eq!(pool.worker_pids(), pids, "the worker was replaced");
}

#[test]
fn callbacks_run_and_a_panicking_callback_does_not_kill_the_pool() {
    let pool = Pool::new(2).unwrap();
    let (tx, rx) = mpsc::channel();
    let tx2 = tx.clone();
    pool.apply_async_with(
        square,
        9,
        move |v: &u64| tx.send(format!("value {v}")).unwrap(),
        |_| {},
    )
    .unwrap();
    assert_eq!(rx.recv_timeout(LONG).unwrap(), "value 81");
    pool.apply_async_with(
        |x: u32| -> u32 { panic!("no {x}") },
        1,
        |_: &u32| {},
        move |e| {
            tx2.send(format!("error {}", e.kind() == ErrorKind::Panicked))
                .unwrap()
        },
    )
    .unwrap();
    assert_eq!(rx.recv_timeout(LONG).unwrap(), "error true");
    let r = pool
        .apply_async_with(square, 2, |_: &u64| panic!("callback bug"), |_| {})
        .unwrap();
    // The task's value stands; the callback's panic is reported on stderr.
    assert_eq!(r.get_timeout(LONG).unwrap(), 4);
    assert_eq!(pool.apply(square, 4).unwrap(), 16);
}

#[test]
fn imap_yields_the_first_result_before_the_last_task_finishes() {
    let flag = SharedMemory::create(None, 64).unwrap();
    let pool = Pool::new(2).unwrap();
    let items = (0..4u64).map(|x| {
        (
            if x == 3 {
                flag.name().to_string()
            } else {
                String::new()
            },
            x,
        )
    });
    let mut results = pool
        .imap(
            |(name, x): (String, u64)| {
                if name.is_empty() {
                    x
                } else {
                    wait_for_flag((name, x))
                }
            },
            items,
            None,
        )
        .unwrap();
    // The first three come while the fourth is still blocked.
    for want in 0..3 {
        assert_eq!(results.next_timeout(LONG).unwrap().unwrap(), want);
    }
    assert_eq!(
        results
            .next_timeout(Duration::from_millis(50))
            .unwrap()
            .unwrap_err()
            .kind(),
        ErrorKind::Timeout
    );
    flag.write(0, &[1]);
    assert_eq!(results.next_timeout(LONG).unwrap().unwrap(), 3);
    assert!(results.next().is_none());
    let unordered: BTreeSet<u64> = pool
        .imap_unordered(square, 0..20, Some(3))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(unordered, (0..20).map(|x| x * x).collect());
    flag.unlink().unwrap();
}

#[test]
fn a_worker_killed_mid_map_fails_only_its_task() {
    let pool = Pool::new(2).unwrap();
    let before = pool.worker_pids();
    let results: Vec<_> = pool
        .imap(die_at, (0..1000).map(|x| (x, 500)), Some(1))
        .unwrap()
        .collect();
    assert_eq!(results.len(), 1000);
    for (x, r) in results.into_iter().enumerate() {
        match r {
            Ok(v) => assert_eq!(v, 2 * x as u64),
            Err(e) => {
                assert_eq!(x, 500, "item {x} failed: {e}");
                assert_eq!(e.kind(), ErrorKind::WorkerLost);
                assert!(e.to_string().contains("SIGKILL"), "{e}");
            }
        }
    }
    // Replaced, and still working.
    let after = pool.worker_pids();
    assert_eq!(after.len(), 2);
    assert_ne!(before, after);
    assert_eq!(pool.map(square, 0..10).unwrap()[9], 81);
    // No process of the pool survives it.
    let fds: Vec<_> = after.iter().map(|&p| pidfd(p).unwrap()).collect();
    drop(pool);
    assert!(fds.iter().all(|fd| wait_exit(fd, LONG)));
}

#[test]
fn a_task_past_its_timeout_fails_and_the_pool_goes_on() {
    let timeout = Duration::from_millis(300);
    let pool = Pool::builder()
        .processes(1)
        .task_timeout(timeout)
        .build()
        .unwrap();
    let started = Instant::now();
    let err = pool.apply(forever, 0).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(started.elapsed() >= timeout);
    assert!(started.elapsed() < timeout + Duration::from_secs(5));
    assert_eq!(pool.apply(square, 6).unwrap(), 36);
}

#[test]
fn retries_run_a_lost_task_again() {
    let marker = SharedMemory::create(None, 64).unwrap();
    let pool = Pool::builder().processes(1).retries(1).build().unwrap();
    let survived = pool.apply(die_once, marker.name().to_string()).unwrap();
    assert_eq!(survived, 2, "the second run answers");
    marker.unlink().unwrap();
}

#[test]
fn max_tasks_per_child_runs_each_task_in_a_fresh_process() {
    let pool = Pool::builder()
        .processes(2)
        .max_tasks_per_child(1)
        .build()
        .unwrap();
    let pids = pool.map_chunked(pid_of, 0..6, 1).unwrap();
    let distinct: BTreeSet<_> = pids.iter().collect();
    assert_eq!(distinct.len(), 6, "{pids:?}");
}

#[test]
fn terminate_during_a_busy_map_returns_promptly_and_leaves_no_child() {
    let pool = Pool::new(2).unwrap();
    let fds: Vec<_> = pool
        .worker_pids()
        .iter()
        .map(|&p| pidfd(p).unwrap())
        .collect();
    let busy = pool.map_async(forever, 0..100, Some(1)).unwrap();
    let started = Instant::now();
    pool.terminate();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(fds.iter().all(|fd| wait_exit(fd, Duration::from_secs(1))));
    assert_eq!(busy.get().unwrap_err().kind(), ErrorKind::InvalidState);
}

#[test]
fn a_closed_pool_refuses_work_and_join_needs_close() {
    let pool = Pool::new(1).unwrap();
    assert_eq!(pool.join().unwrap_err().kind(), ErrorKind::InvalidState);
    let pending = pool.apply_async(square, 2).unwrap();
    pool.close();
    assert_eq!(
        pool.apply_async(square, 3).unwrap_err().kind(),
        ErrorKind::InvalidState
    );
    pool.join().unwrap();
    // Tasks queued before close still ran.
    assert_eq!(pending.get().unwrap(), 4);
}

static INITIALIZED_IN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn note_initializer(tag: u32) {
    INITIALIZED_IN.store(
        std::process::id() + tag,
        std::sync::atomic::Ordering::SeqCst,
    );
}

/// Whether this worker's initializer ran (with tag 0) before this task.
fn initializer_ran(_: u32) -> bool {
    INITIALIZED_IN.load(std::sync::atomic::Ordering::SeqCst) == std::process::id()
}

#[test]
fn the_initializer_runs_in_every_worker_before_its_tasks() {
    let pool = Pool::builder()
        .processes(2)
        .initializer(note_initializer, 0)
        .build()
        .unwrap();
    let seen = pool.map_chunked(initializer_ran, 0..20, 1).unwrap();
    assert!(seen.iter().all(|ran| *ran), "{seen:?}");
}

#[test]
fn a_failing_initializer_fails_the_tasks_instead_of_hanging() {
    let pool = Pool::builder()
        .processes(2)
        .initializer(|_: u32| -> u32 { panic!("no database") }, 0)
        .build()
        .unwrap();
    let pending = pool.apply_async(square, 2).unwrap();
    let err = pending.get_timeout(LONG).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidState, "{err}");
    assert!(err.to_string().contains("no database"), "{err}");
    // The pool knows it is broken: no worker is restarted, new tasks are refused.
    let err = pool.apply_async(square, 3).unwrap_err();
    assert!(err.to_string().contains("initializer failed"), "{err}");
}

fn tag(x: u64) -> u64 {
    x
}

/// Kills its worker the first time (byte 0 of the named block says it ran); then 2.
fn die_once(name: String) -> u64 {
    let block = SharedMemory::open(&name).unwrap();
    let mut b = [0u8];
    block.read(0, &mut b);
    if b[0] == 0 {
        block.write(0, &[1]);
        // SAFETY: raise has no preconditions; the first run dies.
        unsafe { libc::raise(libc::SIGKILL) };
    }
    2
}

#[test]
fn a_high_priority_task_goes_ahead_of_the_normal_ones_waiting() {
    let flag = SharedMemory::create(None, 64).unwrap();
    let pool = Pool::new(1).unwrap();
    let (tx, rx) = mpsc::channel();
    let note = |tx: &mpsc::Sender<u64>| {
        let tx = tx.clone();
        move |v: &u64| {
            let _ = tx.send(*v);
        }
    };
    // The one worker holds two tasks at a time: the first blocks until the flag is set, the
    // second waits behind it; the rest wait in the pool, where a high one goes first.
    let blocked = (flag.name().to_string(), 0);
    pool.task(wait_for_flag, blocked)
        .submit_with(note(&tx), |_| {})
        .unwrap();
    for n in 1..=3 {
        pool.task(tag, n).submit_with(note(&tx), |_| {}).unwrap();
    }
    pool.task(tag, 9)
        .priority(Priority::High)
        .submit_with(note(&tx), |_| {})
        .unwrap();
    flag.write(0, &[1]);
    let order: Vec<u64> = (0..5).map(|_| rx.recv_timeout(LONG).unwrap()).collect();
    assert_eq!(order, [0, 1, 9, 2, 3]);

    // What a local pool cannot do is refused, not ignored.
    let later = pool
        .task(tag, 1)
        .start_after(Duration::from_secs(1))
        .submit();
    assert_eq!(later.unwrap_err().kind(), ErrorKind::Unsupported);
    let backoff = RetryPolicy::new(2).backoff(Duration::from_millis(10), Duration::from_secs(1));
    let waiting = pool.task(tag, 1).retry(backoff).submit();
    assert_eq!(waiting.unwrap_err().kind(), ErrorKind::Unsupported);
    let on_panic = pool
        .task(tag, 1)
        .retry(RetryPolicy::new(1).on_panic(true))
        .submit();
    assert_eq!(on_panic.unwrap_err().kind(), ErrorKind::Unsupported);
    // A retry at once, and a timeout of its own, it honours.
    let marker = SharedMemory::create(None, 64).unwrap();
    let name = marker.name().to_string();
    let once = pool.task(die_once, name.clone()).submit().unwrap();
    assert_eq!(
        once.get_timeout(LONG).unwrap_err().kind(),
        ErrorKind::WorkerLost
    );
    marker.write(0, &[0]);
    let retried = pool
        .task(die_once, name)
        .retry(RetryPolicy::new(1))
        .submit()
        .unwrap();
    assert_eq!(retried.get_timeout(LONG).unwrap(), 2);
    marker.unlink().unwrap();
    let timed = pool
        .task(forever, 0)
        .timeout(Duration::from_millis(200))
        .submit()
        .unwrap();
    assert_eq!(
        timed.get_timeout(LONG).unwrap_err().kind(),
        ErrorKind::Timeout
    );
    assert_eq!(pool.task(tag, 5).submit().unwrap().get().unwrap(), 5);
}

#[test]
fn a_pools_metrics_count_what_it_did_and_read_as_prometheus_text() {
    let pool = Pool::new(2).unwrap();
    for n in 0..5 {
        assert_eq!(pool.apply(square, n).unwrap(), n * n);
    }
    // A panic, and a worker killed under its task: two failures, one worker replaced.
    assert!(pool.apply(fail_on_seven, 7).is_err());
    let lost = pool.apply(die_at, (1, 1)).unwrap_err();
    assert_eq!(lost.kind(), ErrorKind::WorkerLost, "{lost}");
    let m = pool.metrics();
    assert_eq!((m.submitted, m.succeeded, m.failed), (7, 5, 2), "{m:?}");
    assert_eq!(m.workers_replaced, 1, "{m:?}");
    assert_eq!((m.waiting, m.running, m.workers), (0, 0, 2), "{m:?}");
    // Every task that reached a worker has its duration counted.
    assert_eq!(m.durations.last(), Some(&7), "{m:?}");
    assert!(m.duration_sum > Duration::ZERO);
    let text = m.to_prometheus(&[("pool", "squares")]);
    for line in [
        "multiproc_pool_tasks_failed_total{pool=\"squares\"} 2\n",
        "multiproc_pool_workers_replaced_total{pool=\"squares\"} 1\n",
        "# TYPE multiproc_pool_task_duration_seconds histogram\n",
        "multiproc_pool_task_duration_seconds_bucket{pool=\"squares\",le=\"+Inf\"} 7\n",
        "multiproc_pool_task_duration_seconds_count{pool=\"squares\"} 7\n",
    ] {
        assert!(text.contains(line), "no {line:?} in\n{text}");
    }
}
