//! Awaiting a manager's proxies (features `async` and `manager`): locks, semaphores, events,
//! conditions, barriers and objects of registered types, against our server and every
//! CPython's `SyncManager`. A call dropped mid-flight holds nothing afterwards (what it takes
//! is released), a dropped barrier wait breaks the barrier, and a server that dies resolves
//! pending calls with the blocking call's error.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Wake, Waker};

#[path = "common/manager_servers.rs"]
mod manager_servers;
use manager_servers::{LONG, against_each_server, cpython, eventually};
use multiproc::{ErrorKind, ManagerClient};

struct Count(AtomicUsize);

impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// Polls once (so a call's request goes out); whether it is still pending.
fn poll_once<F: Future>(f: Pin<&mut F>) -> bool {
    let waker = Waker::from(Arc::new(Count(AtomicUsize::new(0))));
    f.poll(&mut Context::from_waker(&waker)).is_pending()
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

#[test]
fn awaited_acquires_hold_what_the_blocking_calls_release() {
    against_each_server(|m, server| {
        // An RLock taken twice by awaiting, released twice by the blocking call: the same
        // holder for the server.
        let r = m.rlock().unwrap();
        let other = r.try_clone().unwrap();
        futures::executor::block_on(async {
            r.acquire_async().await.unwrap();
            r.acquire_async().await.unwrap();
        });
        assert!(!other.try_acquire().unwrap(), "{server}: held by r");
        r.release().unwrap();
        assert!(!other.try_acquire().unwrap(), "{server}: r took it twice");
        r.release().unwrap();
        assert!(other.try_acquire().unwrap(), "{server}");
        other.release().unwrap();

        // A semaphore's slots, awaited on tokio while another proxy gives one back.
        let s = m.semaphore(1).unwrap();
        let giver = s.try_clone().unwrap();
        s.acquire().unwrap();
        current_thread().block_on(async {
            let waiting = s.acquire_async();
            let release = std::thread::spawn(move || giver.release());
            tokio::time::timeout(LONG, waiting)
                .await
                .unwrap_or_else(|_| panic!("{server}: the released slot never came"))
                .unwrap();
            release.join().unwrap().unwrap();
        });
        assert!(!s.try_acquire().unwrap(), "{server}: the one slot is taken");
    });
}

#[test]
fn a_dropped_acquire_holds_nothing() {
    against_each_server(|m, server| {
        for (what, holder, waiter, third) in [
            {
                let l = m.lock().unwrap();
                ("lock", l.try_clone().unwrap(), l.try_clone().unwrap(), l)
            },
            {
                let l = m.rlock().unwrap();
                ("rlock", l.try_clone().unwrap(), l.try_clone().unwrap(), l)
            },
        ] {
            holder.acquire().unwrap();
            {
                let mut pending = Box::pin(waiter.acquire_async());
                assert!(
                    poll_once(pending.as_mut()),
                    "{server} {what}: held elsewhere"
                );
            }
            holder.release().unwrap();
            // The dropped acquire's request takes the lock when it is free, and gives it back.
            assert!(
                third.acquire_timeout(LONG).unwrap(),
                "{server} {what}: the dropped acquire kept it"
            );
            third.release().unwrap();
            // The waiter's proxy goes on, on a new connection; the dropped request, if it
            // took the lock after `third`, gives it back meanwhile.
            assert!(
                eventually(|| waiter.try_acquire().unwrap()),
                "{server} {what}"
            );
            waiter.release().unwrap();
        }
        let s = m.semaphore(1).unwrap();
        let waiter = s.try_clone().unwrap();
        s.acquire().unwrap();
        drop({
            let mut pending = Box::pin(waiter.acquire_async());
            assert!(poll_once(pending.as_mut()), "{server}: no slot is free");
            pending
        });
        s.release().unwrap();
        assert!(
            s.acquire_timeout(LONG).unwrap(),
            "{server}: the dropped acquire kept the slot"
        );
    });
}

#[test]
fn awaited_event_and_condition_waits() {
    against_each_server(|m, server| {
        let e = m.event().unwrap();
        let setter = e.try_clone().unwrap();
        let set = current_thread().block_on(async {
            let waiting = tokio::spawn({
                let e = e.try_clone().unwrap();
                async move { e.wait_async().await }
            });
            tokio::task::yield_now().await;
            let set = std::thread::spawn(move || setter.set());
            tokio::time::timeout(LONG, waiting)
                .await
                .unwrap_or_else(|_| panic!("{server}: the event was set, the wait goes on"))
                .unwrap()
                .unwrap();
            set
        });
        set.join().unwrap().unwrap();

        // A condition: the waiter gives the lock up while it waits, and has it again after.
        let c = m.condition().unwrap();
        let notifier = c.try_clone().unwrap();
        c.acquire().unwrap();
        let mut waiting = Box::pin(c.wait_async());
        assert!(poll_once(waiting.as_mut()), "{server}: nobody notified");
        let notify = std::thread::spawn(move || {
            // Free only once the waiter waits.
            notifier.acquire().unwrap();
            notifier.notify(1).unwrap();
            notifier.release().unwrap();
        });
        smol::block_on(waiting).unwrap();
        notify.join().unwrap();
        c.release().expect("the waiter holds the lock again");
    });
}

#[test]
fn a_dropped_condition_wait_gives_the_lock_up() {
    against_each_server(|m, server| {
        let c = m.condition().unwrap();
        let notifier = c.try_clone().unwrap();
        c.acquire().unwrap();
        {
            let mut waiting = Box::pin(c.wait_async());
            assert!(poll_once(waiting.as_mut()), "{server}");
        }
        notifier.acquire().unwrap();
        notifier.notify_all().unwrap();
        notifier.release().unwrap();
        // The wait, woken, took the lock again and gave it back.
        assert!(
            notifier.acquire_timeout(LONG).unwrap(),
            "{server}: the dropped wait kept the lock"
        );
        notifier.release().unwrap();
        assert_eq!(
            c.release().unwrap_err().kind(),
            ErrorKind::Remote,
            "{server}: c holds nothing after its wait was dropped"
        );
    });
}

#[test]
fn awaited_barrier_waits_and_a_dropped_one_breaks_it() {
    against_each_server(|m, server| {
        let b = m.barrier(2).unwrap();
        let other = b.try_clone().unwrap();
        let arrived = std::thread::spawn(move || other.wait_timeout(LONG));
        let mine = futures::executor::block_on(b.wait_async()).unwrap();
        let theirs = arrived.join().unwrap().unwrap();
        let mut both = [mine, theirs];
        both.sort_unstable();
        assert_eq!(both, [0, 1], "{server}");

        let other = b.try_clone().unwrap();
        {
            let mut waiting = Box::pin(b.wait_async());
            assert!(poll_once(waiting.as_mut()), "{server}: one party of two");
        }
        assert!(
            eventually(|| other.broken().unwrap()),
            "{server}: a dropped wait leaves the barrier whole"
        );
        assert_eq!(
            other.wait_timeout(LONG).unwrap_err().kind(),
            ErrorKind::BrokenBarrier,
            "{server}"
        );
    });
}

#[test]
fn awaited_calls_on_one_proxy_take_turns() {
    against_each_server(|m, server| {
        let c = m.create("Counter", &(0,)).unwrap();
        let (a, b, v) = futures::executor::block_on(async {
            futures::join!(
                c.call_async::<i64>("add", &(1,)),
                c.call_async::<i64>("add", &(2,)),
                c.call_with_kwargs_async::<i64>(
                    "add",
                    &(),
                    &[("by", 4)]
                        .into_iter()
                        .collect::<std::collections::BTreeMap<_, _>>()
                ),
            )
        });
        let mut seen = [a.unwrap(), b.unwrap(), v.unwrap()];
        seen.sort_unstable();
        assert_eq!(seen[2], 7, "{server}: every call ran once");
        // A call dropped after its request went out still runs; the proxy goes on.
        {
            let mut pending = Box::pin(c.call_async::<i64>("add", &(10,)));
            let _ = poll_once(pending.as_mut());
        }
        assert!(
            eventually(|| c.call::<i64>("value", &()).unwrap() == 17),
            "{server}"
        );
        let err = futures::executor::block_on(c.call_async::<()>("fail", &())).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Remote, "{server}");
        assert!(err.to_string().contains("asked to fail"), "{server}: {err}");
    });
}

#[test]
fn a_server_that_dies_ends_pending_waits_with_the_blocking_error() {
    let Some(python) = common::pythons().into_iter().next() else {
        return;
    };
    let (server, address) = cpython(&python);
    let manager_servers::Server::CPython(mut child) = server else {
        unreachable!("cpython() starts a CPython");
    };
    let m = ManagerClient::connect(&address, b"abc").unwrap();
    // Three parties, two waiting (one awaiting, one blocking): neither wait can end but by
    // the server's going.
    let b = m.barrier(3).unwrap();
    let blocking = b.try_clone().unwrap();
    let mut waiting = Box::pin(b.wait_async());
    assert!(poll_once(waiting.as_mut()));
    let blocked = std::thread::spawn(move || blocking.wait());
    let counter = b.try_clone().unwrap();
    assert!(eventually(|| counter.n_waiting().unwrap() == 2));
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let awaited = futures::executor::block_on(waiting).unwrap_err();
    let blocked = blocked.join().unwrap().unwrap_err();
    assert_eq!(awaited.kind(), blocked.kind(), "{awaited} / {blocked}");
}

#[test]
fn the_quick_calls_awaited() {
    against_each_server(|m, server| {
        current_thread().block_on(async {
            let d = m.dict::<String, i64>().unwrap();
            d.set_async(&"a".into(), &1).await.unwrap();
            assert_eq!(d.get_async(&"a".into()).await.unwrap(), Some(1), "{server}");
            assert_eq!(d.len_async().await.unwrap(), 1, "{server}");
            assert_eq!(
                d.items_async().await.unwrap(),
                [("a".into(), 1)],
                "{server}"
            );
            assert!(d.remove_async(&"a".into()).await.unwrap(), "{server}");
            assert!(
                !d.remove_async(&"a".into()).await.unwrap(),
                "{server}: gone"
            );
            assert!(d.is_empty_async().await.unwrap(), "{server}");

            let l = m.list::<i64>().unwrap();
            l.append_async(&5).await.unwrap();
            l.append_async(&6).await.unwrap();
            assert_eq!(l.get_async(-1).await.unwrap(), 6, "{server}");
            assert_eq!(l.len_async().await.unwrap(), 2, "{server}");
            assert!(!l.is_empty_async().await.unwrap(), "{server}");
            assert_eq!(l.to_vec_async().await.unwrap(), [5, 6], "{server}");
            assert_eq!(
                l.get_async(9).await.unwrap_err().kind(),
                ErrorKind::Remote,
                "{server}: IndexError"
            );

            let ns = m.namespace().unwrap();
            ns.set_async("epoch", &3).await.unwrap();
            assert_eq!(ns.get_async::<i64>("epoch").await.unwrap(), Some(3));
            assert!(ns.remove_async("epoch").await.unwrap(), "{server}");
            assert_eq!(ns.get_async::<i64>("epoch").await.unwrap(), None);
            assert!(!ns.remove_async("epoch").await.unwrap(), "{server}");

            let v = m.value("i", &1).unwrap();
            v.set_async(&9).await.unwrap();
            assert_eq!(v.get_async().await.unwrap(), 9, "{server}");

            let a = m.array::<i64>("i", &[1, 2, 3]).unwrap();
            a.set_async(1, &20).await.unwrap();
            assert_eq!(a.get_async(1).await.unwrap(), 20, "{server}");
            a.set_slice_async(0, 1, &[7, 8]).await.unwrap();
            assert_eq!(a.get_slice_async(0, 2).await.unwrap(), [7, 8], "{server}");
            assert_eq!(a.to_vec_async().await.unwrap(), [7, 8, 20, 3], "{server}");
            assert_eq!(a.len_async().await.unwrap(), 4, "{server}");
            assert!(!a.is_empty_async().await.unwrap(), "{server}");

            let e = m.event().unwrap();
            assert!(!e.is_set_async().await.unwrap(), "{server}");
            e.set_async().await.unwrap();
            assert!(e.is_set_async().await.unwrap(), "{server}");
            e.clear_async().await.unwrap();
            assert!(!e.is_set().unwrap(), "{server}");

            let l = m.lock().unwrap();
            assert!(l.try_acquire_async().await.unwrap(), "{server}");
            assert!(!l.try_clone().unwrap().try_acquire().unwrap(), "{server}");
            l.release_async().await.unwrap();
            let s = m.semaphore(1).unwrap();
            s.acquire_async().await.unwrap();
            assert!(!s.try_acquire_async().await.unwrap(), "{server}");
            s.release_async().await.unwrap();
            assert!(s.try_acquire().unwrap(), "{server}");

            let c = m.condition().unwrap();
            c.acquire_async().await.unwrap();
            c.notify_async(1).await.unwrap();
            c.notify_all_async().await.unwrap();
            c.release_async().await.unwrap();
            assert_eq!(
                c.notify_async(1).await.unwrap_err().kind(),
                ErrorKind::Remote,
                "{server}: notify without the lock"
            );

            let b = m.barrier(2).unwrap();
            assert_eq!(b.parties_async().await.unwrap(), 2, "{server}");
            assert_eq!(b.n_waiting_async().await.unwrap(), 0, "{server}");
            b.abort_async().await.unwrap();
            assert!(b.broken_async().await.unwrap(), "{server}");
            b.reset_async().await.unwrap();
            assert!(!b.broken_async().await.unwrap(), "{server}");
        });
    });
}
