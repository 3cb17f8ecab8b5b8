//! Locks, semaphores, events, conditions, barriers and shared values across processes and
//! threads, including owners that die holding them.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::Guarded;
use multiproc::{
    Array, Barrier, Condition, ErrorKind, Event, Lock, Pipe, Process, RLock, RawValue, Semaphore,
    SharedMemory, Value,
};

const LONG: Duration = Duration::from_secs(30);

/// Takes `lock`, says so through `held`, then waits for ever (until killed).
fn hold_lock_forever((lock, held, never): (Lock, Event, Event)) {
    let _guard = lock.acquire().unwrap();
    held.set();
    never.wait();
}

/// Takes `lock`, says so, and releases it when `release` is set.
fn hold_lock_until((lock, held, release): (Lock, Event, Event)) {
    let _guard = lock.acquire().unwrap();
    held.set();
    release.wait();
}

/// Adds 1 to `counter` `n` times with a read and a separate write, under `lock`: only mutual
/// exclusion keeps the total exact.
fn add_under_lock((lock, counter, n): (Lock, RawValue<u64>, u64)) {
    for _ in 0..n {
        let _g = lock.acquire().unwrap();
        let v = counter.get();
        counter.set(v + 1);
    }
}

#[test]
fn lock_excludes_across_processes_and_threads() {
    let lock = Lock::new().unwrap();
    let counter = RawValue::new(0u64).unwrap();
    let kids: Vec<_> = (0..3)
        .map(|_| {
            let args = (lock.clone(), counter.clone(), 3000u64);
            Guarded::new(Process::new(add_under_lock, args).start().unwrap())
        })
        .collect();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| add_under_lock((lock.clone(), counter.clone(), 3000)));
        }
    });
    for k in kids {
        k.into_inner().join().unwrap();
    }
    assert_eq!(counter.get(), 5 * 3000);
}

#[test]
fn lock_timeouts_are_honoured_and_release_is_seen() {
    let lock = Lock::new().unwrap();
    let (held, release) = (Event::new().unwrap(), Event::new().unwrap());
    let mut child = Guarded::new(
        Process::new(
            hold_lock_until,
            (lock.clone(), held.clone(), release.clone()),
        )
        .start()
        .unwrap(),
    );
    assert!(held.wait_timeout(LONG));
    assert!(lock.is_locked());
    assert!(lock.try_acquire().unwrap().is_none());
    let start = Instant::now();
    let timeout = Duration::from_millis(300);
    assert!(lock.acquire_timeout(timeout).unwrap().is_none());
    assert!(start.elapsed() >= timeout);
    release.set();
    // The child releases: we get it clean (no OwnerDied: the owner let go).
    let guard = lock.acquire_timeout(LONG).unwrap();
    assert!(guard.is_some());
    drop(guard);
    child.join().unwrap();
}

/// A child that holds `lock` (it has taken it when this returns) until killed.
fn held_by_a_child(lock: &Lock) -> Guarded<()> {
    let (held, never) = (Event::new().unwrap(), Event::new().unwrap());
    let holder = Guarded::new(
        Process::new(hold_lock_forever, (lock.clone(), held.clone(), never))
            .start()
            .unwrap(),
    );
    assert!(held.wait_timeout(LONG));
    holder
}

#[test]
fn a_lock_whose_holder_was_killed_goes_to_the_next_process_with_owner_died() {
    let lock = Lock::new().unwrap();
    let mut holder = held_by_a_child(&lock);
    let holder_pid = holder.pid() as u32;
    holder.kill().unwrap();
    // Another process (not the parent, which could reap the holder) waits at most a second:
    // the holder is a zombie until we join it, which must count as dead.
    let taker = Process::new(
        |lock: Lock| match lock.acquire_timeout(Duration::from_secs(1)) {
            Ok(Some(_)) => "clean".to_string(),
            Ok(None) => "timed out".to_string(),
            Err(died) => format!("owner died: {}", died.pid()),
        },
        lock.clone(),
    )
    .start()
    .unwrap();
    let said = Guarded::new(taker).into_inner().into_result().unwrap();
    assert_eq!(said, format!("owner died: {holder_pid}"));
    let _ = holder.join();
    // Once taken over and released, the lock is clean again.
    let guard = lock.acquire_timeout(LONG).unwrap();
    assert!(guard.is_some());
}

#[test]
fn a_killed_holder_is_known_at_once_even_to_try_acquire() {
    // The kernel marks the lock as the holder dies (it is in the holder's robust futex
    // list): no waiter has to notice, and a reused thread id cannot hide the death.
    let lock = Lock::new().unwrap();
    let mut holder = held_by_a_child(&lock);
    let holder_pid = holder.pid() as u32;
    assert!(lock.try_acquire().unwrap().is_none());
    holder.kill().unwrap();
    let _ = holder.join();
    assert!(!lock.is_locked(), "the kernel marked it");
    match lock.try_acquire() {
        Err(died) => {
            assert_eq!(died.pid(), holder_pid);
            assert!(died.into_inner().is_some());
        }
        Ok(got) => panic!("expected OwnerDied at once, got {:?}", got.is_some()),
    }
    assert!(lock.try_acquire().unwrap().is_some(), "clean once released");
}

#[test]
fn owner_died_converts_into_an_error_naming_the_lock() {
    let lock = Lock::new().unwrap();
    let mut holder = held_by_a_child(&lock);
    holder.kill().unwrap();
    let _ = holder.join();
    let take = || -> multiproc::Result<()> {
        let _g = lock.acquire()?;
        Ok(())
    };
    let err = take().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OwnerDied);
    assert!(err.to_string().starts_with("lock: its owner (pid"), "{err}");
}

#[test]
fn rlock_is_reentrant_and_excludes_other_processes() {
    let lock = RLock::new().unwrap();
    let outer = lock.acquire().unwrap();
    let inner = lock.try_acquire().unwrap().expect("reentrant");
    let probe = |lock: RLock| {
        lock.acquire_timeout(Duration::from_millis(100))
            .unwrap()
            .is_some()
    };
    let got = Process::new(probe, lock.clone()).start().unwrap();
    assert!(!Guarded::new(got).into_inner().into_result().unwrap());
    drop(inner);
    // Still held once.
    let got = Process::new(probe, lock.clone()).start().unwrap();
    assert!(!Guarded::new(got).into_inner().into_result().unwrap());
    drop(outer);
    let got = Process::new(probe, lock.clone()).start().unwrap();
    assert!(Guarded::new(got).into_inner().into_result().unwrap());
}

fn hold_slot_forever((sem, held, never): (Semaphore, Event, Event)) {
    let _slot = sem.acquire().unwrap();
    held.set();
    never.wait();
}

#[test]
fn semaphore_counts_slots_across_processes() {
    let sem = Semaphore::new(2).unwrap();
    let (held, never) = (Event::new().unwrap(), Event::new().unwrap());
    let mut holder = Guarded::new(
        Process::new(
            hold_slot_forever,
            (sem.clone(), held.clone(), never.clone()),
        )
        .start()
        .unwrap(),
    );
    assert!(held.wait_timeout(LONG));
    assert_eq!(sem.get_value(), 1);
    let mine = sem.acquire().unwrap();
    assert!(sem.try_acquire().unwrap().is_none());
    assert!(
        sem.acquire_timeout(Duration::from_millis(50))
            .unwrap()
            .is_none()
    );
    drop(mine);
    assert_eq!(sem.get_value(), 1);
    // The holder dies: a waiter gets its slot back and is told.
    let all = (sem.acquire().unwrap(), ());
    holder.kill().unwrap();
    let _ = holder.join();
    match sem.acquire_timeout(Duration::from_secs(1)) {
        Err(died) => assert!(died.into_inner().is_some()),
        Ok(got) => panic!("expected OwnerDied, got {:?}", got.is_some()),
    }
    drop(all);
}

/// Takes a slot of `sem`, counts itself in `held` (set once all have), waits for ever.
fn hold_one_of_many((sem, holding, all, never): (Semaphore, Semaphore, Event, Event)) {
    let _slot = sem.acquire().unwrap();
    holding.release().unwrap();
    if holding.get_value() == 200 {
        all.set();
    }
    never.wait();
}

#[test]
fn slots_of_two_hundred_holder_processes_killed_at_once_all_come_back() {
    const HOLDERS: u32 = 200;
    let sem = Semaphore::new(HOLDERS).unwrap();
    let holding = Semaphore::new(0).unwrap();
    let (all, never) = (Event::new().unwrap(), Event::new().unwrap());
    let mut holders: Vec<Guarded<()>> = (0..HOLDERS)
        .map(|_| {
            let args = (sem.clone(), holding.clone(), all.clone(), never.clone());
            Guarded::new(
                Process::new(hold_one_of_many, args)
                    .start_method(multiproc::StartMethod::ForkServer)
                    .start()
                    .unwrap(),
            )
        })
        .collect();
    assert!(all.wait_timeout(LONG), "{} holding", holding.get_value());
    assert_eq!(sem.get_value(), 0);
    for h in &mut holders {
        h.kill().unwrap();
    }
    for h in &mut holders {
        let _ = h.join();
    }
    // Every slot comes back: the first waiter that finds none free takes back the dead's.
    let mut got = 0;
    let mut told = false;
    while got < HOLDERS {
        match sem.acquire_timeout(Duration::from_secs(5)) {
            Ok(Some(slot)) => slot.forget(),
            Err(died) => {
                told = true;
                died.into_inner().unwrap().forget();
            }
            Ok(None) => panic!("only {got} of {HOLDERS} slots came back"),
        }
        got += 1;
    }
    assert!(told, "no OwnerDied");
    assert!(sem.try_acquire().unwrap().is_none());
}

#[test]
fn bounded_semaphore_refuses_extra_releases() {
    let sem = Semaphore::bounded(1).unwrap();
    assert_eq!(sem.release().unwrap_err().kind(), ErrorKind::InvalidState);
    let slot = sem.acquire().unwrap();
    slot.forget();
    assert_eq!(sem.get_value(), 0);
    sem.release().unwrap();
    assert_eq!(sem.get_value(), 1);
    // Unbounded: releases raise the count.
    let free = Semaphore::new(0).unwrap();
    free.release().unwrap();
    free.release().unwrap();
    assert_eq!(free.get_value(), 2);
}

#[test]
fn event_wakes_waiters_in_other_processes() {
    let (go, ready) = (Event::new().unwrap(), Event::new().unwrap());
    let waiter = |(go, ready): (Event, Event)| {
        ready.set();
        go.wait_timeout(Duration::from_secs(30))
    };
    let kids: Vec<_> = (0..3)
        .map(|_| {
            Guarded::new(
                Process::new(waiter, (go.clone(), ready.clone()))
                    .start()
                    .unwrap(),
            )
        })
        .collect();
    assert!(ready.wait_timeout(LONG));
    assert!(!go.wait_timeout(Duration::from_millis(20)));
    go.set();
    assert!(go.is_set());
    for k in kids {
        assert!(k.into_inner().into_result().unwrap());
    }
    go.clear();
    assert!(!go.is_set());
    let start = Instant::now();
    assert!(!go.wait_timeout(Duration::from_millis(100)));
    assert!(start.elapsed() >= Duration::from_millis(100));
}

#[test]
fn condition_notify_all_wakes_every_process() {
    let cond = Condition::new().unwrap();
    let state = Value::new(0u32).unwrap();
    let waiter = |(cond, state): (Condition, Value<u32>)| {
        let mut g = cond.acquire().unwrap();
        state.set(state.get() + 1); // arrived
        cond.notify_all();
        g.wait_for(|| state.get() >= 100, Some(Duration::from_secs(30)))
            .unwrap()
    };
    let kids: Vec<_> = (0..3)
        .map(|_| {
            Guarded::new(
                Process::new(waiter, (cond.clone(), state.clone()))
                    .start()
                    .unwrap(),
            )
        })
        .collect();
    {
        let mut g = cond.acquire().unwrap();
        assert!(g.wait_for(|| state.get() == 3, Some(LONG)).unwrap());
        state.set(100);
        cond.notify_all();
    }
    for k in kids {
        assert!(k.into_inner().into_result().unwrap());
    }
    // A wait nobody notifies times out.
    let mut g = cond.acquire().unwrap();
    assert!(!g.wait_timeout(Duration::from_millis(50)).unwrap());
}

#[test]
fn barrier_releases_all_parties_with_distinct_indexes() {
    let barrier = Barrier::new(4).unwrap();
    let kids: Vec<_> = (0..3)
        .map(|_| {
            Guarded::new(
                Process::new(|b: Barrier| b.wait().unwrap(), barrier.clone())
                    .start()
                    .unwrap(),
            )
        })
        .collect();
    let mut indexes = BTreeSet::from([barrier.wait().unwrap()]);
    for k in kids {
        indexes.insert(k.into_inner().into_result().unwrap());
    }
    assert_eq!(indexes, BTreeSet::from([0, 1, 2, 3]));
    // The barrier is reusable for a second round.
    let kids: Vec<_> = (0..3)
        .map(|_| {
            Guarded::new(
                Process::new(|b: Barrier| b.wait().unwrap(), barrier.clone())
                    .start()
                    .unwrap(),
            )
        })
        .collect();
    barrier.wait().unwrap();
    for k in kids {
        k.into_inner().join().unwrap();
    }
}

#[test]
fn barrier_abort_and_timeout_break_it_until_reset() {
    let barrier = Barrier::new(3).unwrap();
    let waiter = |b: Barrier| b.wait().map_err(|e| e.kind() == ErrorKind::BrokenBarrier);
    let kid = Guarded::new(Process::new(waiter, barrier.clone()).start().unwrap());
    // Wait until the child is in the barrier, then abort: it fails as broken.
    let deadline = Instant::now() + LONG;
    while barrier.n_waiting() == 0 && Instant::now() < deadline {
        std::hint::spin_loop();
    }
    barrier.abort();
    assert_eq!(kid.into_inner().into_result().unwrap(), Err(true));
    assert!(barrier.broken());
    assert_eq!(barrier.wait().unwrap_err().kind(), ErrorKind::BrokenBarrier);
    barrier.reset();
    assert!(!barrier.broken());
    // A lone wait that times out breaks the barrier too.
    let err = barrier.wait_timeout(Duration::from_millis(50)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BrokenBarrier);
    assert!(barrier.broken());
}

#[test]
fn a_hundred_processes_increment_a_value_exactly() {
    let counter = Value::new(0i64).unwrap();
    let kids: Vec<_> = (0..100)
        .map(|_| {
            Guarded::new(
                Process::new(
                    |v: Value<i64>| {
                        for _ in 0..10 {
                            *v.get_lock().unwrap() += 1;
                        }
                    },
                    counter.clone(),
                )
                .start()
                .unwrap(),
            )
        })
        .collect();
    for k in kids {
        k.into_inner().join().unwrap();
    }
    assert_eq!(counter.get(), 1000);
}

#[test]
fn arrays_and_named_shared_memory_are_seen_by_children() {
    let squares = Array::new(&[0u32; 8]).unwrap();
    let block = SharedMemory::create(None, 4096).unwrap();
    let child = Process::new(
        |(a, name): (Array<u32>, String)| {
            for i in 0..a.len() {
                a.set(i, (i * i) as u32);
            }
            let block = SharedMemory::open(&name).unwrap();
            block.write(100, b"from the child");
        },
        (squares.clone(), block.name().to_string()),
    )
    .start()
    .unwrap();
    Guarded::new(child).into_inner().join().unwrap();
    assert_eq!(squares.to_vec(), vec![0, 1, 4, 9, 16, 25, 36, 49]);
    let mut buf = [0u8; 14];
    block.read(100, &mut buf);
    assert_eq!(&buf, b"from the child");
    // Passed as an argument, the block works even after its name is gone.
    block.unlink().unwrap();
    assert_eq!(
        SharedMemory::open(block.name()).unwrap_err().kind(),
        ErrorKind::Io
    );
    let child = Process::new(
        |b: SharedMemory| {
            let mut buf = [0u8; 14];
            b.read(100, &mut buf);
            buf.to_vec()
        },
        block,
    )
    .start()
    .unwrap();
    let seen = Guarded::new(child).into_inner().into_result().unwrap();
    assert_eq!(&seen, b"from the child");
}

#[test]
fn every_primitive_works_between_threads_of_one_process() {
    let (event, barrier) = (Event::new().unwrap(), Barrier::new(3).unwrap());
    let (sem, cond) = (Semaphore::new(1).unwrap(), Condition::new().unwrap());
    let (inside, turns) = (Value::new(0u32).unwrap(), Value::new(0u32).unwrap());
    let rlock = RLock::new().unwrap();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                assert!(event.wait_timeout(LONG));
                for _ in 0..200 {
                    let _slot = sem.acquire().unwrap();
                    assert_eq!(inside.get(), 0, "two threads inside a 1-slot semaphore");
                    inside.set(1);
                    inside.set(0);
                }
                {
                    let _outer = rlock.acquire().unwrap();
                    let _inner = rlock.acquire().unwrap();
                    *turns.get_lock().unwrap() += 1;
                }
                {
                    let _g = cond.acquire().unwrap();
                    cond.notify_all();
                }
                barrier.wait_timeout(LONG).unwrap()
            });
        }
        let mut g = cond.acquire().unwrap();
        event.set();
        assert!(g.wait_for(|| turns.get() == 2, Some(LONG)).unwrap());
        drop(g);
        barrier.wait_timeout(LONG).unwrap();
    });
    assert_eq!(sem.get_value(), 1);
    assert!(rlock.try_acquire().unwrap().is_some());
}

#[test]
fn a_forgotten_guard_keeps_its_lock_mapped_for_the_threads_robust_list() {
    // A held lock is in its thread's robust futex list. A guard that is forgotten, and then
    // the last handle dropped, must not leave the list pointing into unmapped memory: the
    // next lock this thread takes is linked in front of it (a write into its entry), and
    // the kernel walks the list when the thread ends.
    std::thread::spawn(|| {
        let (lock, other) = (Lock::new().unwrap(), Lock::new().unwrap());
        std::mem::forget(lock.acquire().unwrap());
        drop(lock);
        drop(other.acquire().unwrap());
        let value = Value::new(7u64).unwrap();
        *value.get_lock().unwrap() += 1;
        assert_eq!(value.get(), 8);
    })
    .join()
    .unwrap();
}

/// The calling thread's CPU time so far.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the live timespec.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(r, 0);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[test]
fn idle_waiters_use_no_cpu() {
    // Each wait lasts its whole timeout (nothing comes); a waiter spins a few microseconds at
    // most, then sleeps in the kernel. A spinning one would use the whole 200 ms of CPU.
    const WAIT: Duration = Duration::from_millis(200);
    let event = Event::new().unwrap();
    let lock = Lock::new().unwrap();
    let queue: multiproc::Queue<u32> = multiproc::Queue::new().unwrap();
    let (ours, _theirs) = Pipe::new::<u32>(true).unwrap();
    let held = lock.acquire().unwrap();
    let used = std::thread::scope(|s| {
        s.spawn(|| {
            let before = thread_cpu_time();
            assert!(!event.wait_timeout(WAIT));
            assert!(lock.acquire_timeout(WAIT).unwrap().is_none());
            assert!(queue.get_timeout(WAIT).is_err());
            assert!(ours.recv_timeout(WAIT).is_err());
            thread_cpu_time() - before
        })
        .join()
        .unwrap()
    });
    drop(held);
    assert!(
        used < Duration::from_millis(40),
        "{used:?} of CPU for 800 ms of waiting"
    );
}

#[test]
fn every_blocking_acquire_and_wait_has_a_deadline_form() {
    let soon = || Instant::now() + Duration::from_millis(20);

    // RLock: kept by another thread until the deadline passes, then free.
    let r = RLock::new().unwrap();
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = {
        let r = r.clone();
        std::thread::spawn(move || {
            let _g = r.acquire().unwrap();
            held_tx.send(()).unwrap();
            release_rx.recv().unwrap();
        })
    };
    held_rx.recv().unwrap();
    assert!(r.acquire_deadline(soon()).unwrap().is_none());
    release_tx.send(()).unwrap();
    holder.join().unwrap();
    let outer = r.acquire_deadline(soon()).unwrap().expect("free now");
    assert!(r.acquire_deadline(soon()).unwrap().is_some(), "reentrant");
    drop(outer);

    // Semaphore: no slot until the deadline, then one.
    let s = Semaphore::new(1).unwrap();
    let slot = s.acquire().unwrap();
    assert!(s.acquire_deadline(soon()).unwrap().is_none());
    drop(slot);
    assert!(s.acquire_deadline(soon()).unwrap().is_some());

    // Condition: the lock by a deadline, and a wait that times out at it.
    let c = Condition::new().unwrap();
    let mut g = c.acquire_deadline(soon()).unwrap().expect("free");
    assert!(!g.wait_deadline(soon()).unwrap(), "nobody notified");
    drop(g);
    assert!(c.try_acquire().unwrap().is_some());

    // Barrier: a lone party's wait ends at the deadline and breaks the barrier.
    let b = Barrier::new(2).unwrap();
    let t = Instant::now();
    assert_eq!(
        b.wait_deadline(soon()).unwrap_err().kind(),
        ErrorKind::BrokenBarrier
    );
    assert!(t.elapsed() >= Duration::from_millis(15));
    assert!(b.broken());
}
