//! Awaiting locks, semaphores and barriers shared with other processes (feature `async`):
//! released, taken over from an owner that was killed, cancelled acquires that hold nothing,
//! a cancelled barrier wait that breaks the barrier, and condition waits.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use common::Guarded;
use multiproc::{Barrier, Condition, ErrorKind, Event, Lock, Process, RLock, Semaphore, Value};

const PATIENCE: Duration = Duration::from_secs(60);

/// Holds `lock` until `go` is set, telling `held` once it has it.
fn hold_until((lock, held, go): (Lock, Event, Event)) {
    let _g = lock.acquire().unwrap();
    held.set();
    go.wait();
}

/// Takes the lock, says so, and waits to be killed.
fn hold_for_ever((lock, held): (Lock, Event)) {
    let _g = lock.acquire().unwrap();
    held.set();
    loop {
        std::thread::park();
    }
}

/// Takes a slot, says so, and waits to be killed.
fn hold_slot_for_ever((sem, held): (Semaphore, Event)) {
    let g = sem.acquire().unwrap();
    std::mem::forget(g);
    held.set();
    loop {
        std::thread::park();
    }
}

/// A lock held by a child process until `go` is set; the lock, `go`, and the child.
fn held_by_another_process() -> (Lock, Event, Guarded<()>) {
    let (lock, held, go) = (
        Lock::new().unwrap(),
        Event::new().unwrap(),
        Event::new().unwrap(),
    );
    let holder = Guarded::new(
        Process::new(hold_until, (lock.clone(), held.clone(), go.clone()))
            .start()
            .unwrap(),
    );
    held.wait();
    (lock, go, holder)
}

struct Count(AtomicUsize);

impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

fn poll_with<F: Future + ?Sized>(f: Pin<&mut F>, w: &Arc<Count>) -> Poll<F::Output> {
    let waker = Waker::from(w.clone());
    f.poll(&mut Context::from_waker(&waker))
}

#[test]
fn tasks_take_a_lock_another_process_releases_in_turn() {
    let (lock, go, holder) = held_by_another_process();
    let inside = Arc::new(AtomicUsize::new(0));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let (lock, inside) = (lock.clone(), inside.clone());
                tokio::spawn(async move {
                    let g = lock.acquire_async().await.unwrap();
                    assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two inside");
                    inside.fetch_sub(1, Ordering::SeqCst);
                    drop(g);
                })
            })
            .collect();
        tokio::task::yield_now().await;
        assert!(lock.is_locked());
        go.set();
        for t in tasks {
            tokio::time::timeout(PATIENCE, t).await.unwrap().unwrap();
        }
    });
    holder.into_inner().join().unwrap();
    assert!(!lock.is_locked());
}

#[test]
fn an_awaited_lock_whose_owner_is_killed_is_taken_over() {
    let (lock, held) = (Lock::new().unwrap(), Event::new().unwrap());
    let owner = Guarded::new(
        Process::new(hold_for_ever, (lock.clone(), held.clone()))
            .start()
            .unwrap(),
    );
    held.wait();
    let mut waiting = Box::pin(lock.acquire_async());
    let w = Arc::new(Count(AtomicUsize::new(0)));
    assert!(poll_with(waiting.as_mut(), &w).is_pending());
    owner.kill().unwrap();
    let died = futures::executor::block_on(waiting).unwrap_err();
    assert_eq!(died.pid(), owner.pid() as u32);
    drop(died);
    assert!(!lock.is_locked(), "the guard in OwnerDied released it");
}

#[test]
fn a_cancelled_acquire_holds_nothing_and_passes_its_turn_on() {
    let (lock, go, holder) = held_by_another_process();
    let (wa, wb) = (
        Arc::new(Count(AtomicUsize::new(0))),
        Arc::new(Count(AtomicUsize::new(0))),
    );
    let mut a = Box::pin(lock.acquire_async());
    let mut b = Box::pin(lock.acquire_async());
    assert!(poll_with(a.as_mut(), &wa).is_pending());
    assert!(poll_with(b.as_mut(), &wb).is_pending());
    go.set();
    let woken = |w: &Arc<Count>| w.0.load(Ordering::Relaxed) > 0;
    let deadline = std::time::Instant::now() + PATIENCE;
    while !woken(&wa) && !woken(&wb) {
        assert!(std::time::Instant::now() < deadline, "nobody woken");
        std::thread::park_timeout(Duration::from_millis(1));
    }
    // Whichever was told goes away without taking the lock; the other gets it.
    let (told, mut other, other_w) = if woken(&wa) { (a, b, wb) } else { (b, a, wa) };
    drop(told);
    while !woken(&other_w) {
        assert!(
            std::time::Instant::now() < deadline,
            "the turn was not passed on"
        );
        std::thread::park_timeout(Duration::from_millis(1));
    }
    match poll_with(other.as_mut(), &other_w) {
        Poll::Ready(Ok(g)) => drop(g),
        Poll::Ready(Err(e)) => panic!("{e}"),
        Poll::Pending => panic!("woken but could not take the free lock"),
    }
    holder.into_inner().join().unwrap();
    assert!(!lock.is_locked());
}

#[test]
fn rlock_and_semaphore_are_awaited_too() {
    let rlock = RLock::new().unwrap();
    futures::executor::block_on(async {
        let outer = rlock.acquire_async().await.unwrap();
        // The polling thread holds it: a second hold counts, without waiting.
        let inner = rlock.acquire_async().await.unwrap();
        drop(inner);
        drop(outer);
    });
    // A slot held by a process that is killed comes back to an awaiting acquire.
    let (sem, held) = (Semaphore::new(1).unwrap(), Event::new().unwrap());
    let owner = Guarded::new(
        Process::new(hold_slot_for_ever, (sem.clone(), held.clone()))
            .start()
            .unwrap(),
    );
    held.wait();
    let pid = owner.pid() as u32;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let waiting = tokio::spawn({
            let sem = sem.clone();
            async move {
                let died = sem.acquire_async().await.map(|_| ()).unwrap_err();
                died.pid()
            }
        });
        tokio::task::yield_now().await;
        owner.kill().unwrap();
        let got = tokio::time::timeout(PATIENCE, waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, pid);
    });
}

fn meet(b: Barrier) -> Result<u32, String> {
    b.wait().map_err(|e| format!("{:?}", e.kind()))
}

#[test]
fn a_barrier_is_awaited_beside_blocking_parties_and_a_cancelled_wait_breaks_it() {
    let b = Barrier::new(3).unwrap();
    let parties: Vec<_> = (0..2)
        .map(|_| Guarded::new(Process::new(meet, b.clone()).start().unwrap()))
        .collect();
    let mine = futures::executor::block_on(b.wait_async()).unwrap();
    let mut all: Vec<u32> = parties
        .into_iter()
        .map(|p| p.into_inner().into_result().unwrap().unwrap())
        .collect();
    all.push(mine);
    all.sort_unstable();
    assert_eq!(all, [0, 1, 2]);

    // Two parties; this one arrives, then goes away: the other is told the barrier broke.
    let b = Barrier::new(2).unwrap();
    let mut waiting = Box::pin(b.wait_async());
    let w = Arc::new(Count(AtomicUsize::new(0)));
    assert!(poll_with(waiting.as_mut(), &w).is_pending());
    drop(waiting);
    let other = Guarded::new(Process::new(meet, b.clone()).start().unwrap());
    let got = other.into_inner().into_result().unwrap();
    assert_eq!(got, Err(format!("{:?}", ErrorKind::BrokenBarrier)));
}

fn set_and_notify((cond, ready, go): (Condition, Value<u32>, Event)) {
    go.wait();
    let _held = cond.acquire().unwrap();
    ready.set(1);
    cond.notify_all();
}

#[test]
fn a_condition_is_awaited_and_a_cancelled_wait_holds_nothing() {
    let (cond, ready, go) = (
        Condition::new().unwrap(),
        Value::new(0u32).unwrap(),
        Event::new().unwrap(),
    );
    let child = Guarded::new(
        Process::new(set_and_notify, (cond.clone(), ready.clone(), go.clone()))
            .start()
            .unwrap(),
    );
    futures::executor::block_on(async {
        let mut held = cond.acquire_async().await.unwrap();
        // The other process can only notify once this one waits (it needs the lock).
        go.set();
        while ready.get() == 0 {
            held = held.wait_async().await.unwrap();
        }
        drop(held);
    });
    child.into_inner().join().unwrap();

    // A wait dropped before it completes leaves the lock free.
    let held = cond.try_acquire().unwrap().expect("free");
    let waiting = held.wait_async();
    drop(waiting);
    assert!(
        cond.try_acquire().unwrap().is_some(),
        "the cancelled wait kept the lock"
    );
}
