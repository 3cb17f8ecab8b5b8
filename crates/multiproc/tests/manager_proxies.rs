//! The Rust proxies of `ManagerClient` (namespace, rlock, semaphores, condition, barrier,
//! array, joinable queue, objects of registered types), each against our server and against
//! the `SyncManager` of every CPython found on the machine.

mod common;

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::Duration;

#[path = "common/manager_servers.rs"]
mod manager_servers;
use manager_servers::{LONG, against_each_server, each_server, eventually, ours};
use multiproc::{ErrorKind, ManagerClient};

#[test]
fn namespace_attributes_by_name() {
    against_each_server(|m, server| {
        let ns = m.namespace().unwrap();
        assert_eq!(ns.get::<i64>("x").unwrap(), None, "{server}");
        ns.set("x", &1).unwrap();
        ns.set("label", "first").unwrap();
        ns.set("list", &vec![1.5, 2.5]).unwrap();
        let other = ns.try_clone().unwrap();
        assert_eq!(other.get::<i64>("x").unwrap(), Some(1), "{server}");
        assert_eq!(
            other.get::<String>("label").unwrap().as_deref(),
            Some("first")
        );
        assert_eq!(other.get::<Vec<f64>>("list").unwrap(), Some(vec![1.5, 2.5]));
        other.set("x", &2).unwrap();
        assert_eq!(ns.get::<i64>("x").unwrap(), Some(2), "{server}");
        assert_eq!(
            ns.get::<i64>("label").unwrap_err().kind(),
            ErrorKind::Serialization,
            "{server}"
        );
        assert!(ns.remove("x").unwrap(), "{server}");
        assert!(!ns.remove("x").unwrap(), "{server}");
        assert_eq!(ns.get::<i64>("x").unwrap(), None, "{server}");
        // Both proxies give their references back: the namespace goes.
        let before = m.number_of_objects().unwrap();
        drop((ns, other));
        assert_eq!(m.number_of_objects().unwrap(), before - 1, "{server}");
    });
}

#[test]
fn rlock_is_reentrant_for_its_holder_only() {
    against_each_server(|m, server| {
        let lock = m.rlock().unwrap();
        let other = lock.try_clone().unwrap();
        lock.acquire().unwrap();
        assert!(lock.acquire_timeout(LONG).unwrap(), "{server}: reentrant");
        assert!(
            !other.acquire_timeout(Duration::from_millis(10)).unwrap(),
            "{server}: held by the first proxy"
        );
        assert_eq!(other.release().unwrap_err().kind(), ErrorKind::Remote);
        lock.release().unwrap();
        assert!(!other.acquire_timeout(Duration::from_millis(10)).unwrap());
        // The other proxy waits on the server while the holder releases its last hold.
        let waiter = std::thread::spawn(move || (other.acquire_timeout(LONG).unwrap(), other));
        lock.release().unwrap();
        let (got, other) = waiter.join().unwrap();
        assert!(got, "{server}");
        assert_eq!(lock.release().unwrap_err().kind(), ErrorKind::Remote);
        other.release().unwrap();
        // A plain lock is not reentrant.
        let plain = m.lock().unwrap();
        plain.acquire().unwrap();
        assert!(
            !plain.acquire_timeout(Duration::from_millis(10)).unwrap(),
            "{server}"
        );
    });
}

#[test]
fn semaphores_count_slots() {
    against_each_server(|m, server| {
        let s = m.semaphore(2).unwrap();
        assert!(
            s.try_acquire().unwrap() && s.try_acquire().unwrap(),
            "{server}"
        );
        assert!(!s.try_acquire().unwrap(), "{server}");
        assert!(
            !s.acquire_timeout(Duration::from_millis(10)).unwrap(),
            "{server}"
        );
        let other = s.try_clone().unwrap();
        let waiter = std::thread::spawn(move || other.acquire_timeout(LONG).unwrap());
        s.release().unwrap();
        assert!(waiter.join().unwrap(), "{server}");
        // An unbounded semaphore takes more releases than acquires.
        for _ in 0..3 {
            s.release().unwrap();
        }
        assert!(s.try_acquire().unwrap());
        let b = m.bounded_semaphore(1).unwrap();
        assert!(b.acquire_timeout(LONG).unwrap());
        assert!(!b.try_acquire().unwrap());
        b.release().unwrap();
        let err = b.release().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Remote, "{server}");
        assert!(err.to_string().contains("ValueError"), "{server}: {err}");
    });
}

#[test]
fn condition_waits_and_notifies() {
    against_each_server(|m, server| {
        let cond = m.condition().unwrap();
        // wait and notify need the lock.
        assert_eq!(cond.wait().unwrap_err().kind(), ErrorKind::Remote);
        assert_eq!(cond.notify(1).unwrap_err().kind(), ErrorKind::Remote);
        cond.acquire().unwrap();
        assert!(
            !cond.wait_timeout(Duration::from_millis(10)).unwrap(),
            "{server}"
        );
        assert!(
            !cond
                .wait_for_timeout(|| Ok(false), Duration::from_millis(10))
                .unwrap()
        );
        cond.release().unwrap();

        let flag = m.value("i", &0).unwrap();
        let (cond2, flag2) = (cond.try_clone().unwrap(), flag.try_clone().unwrap());
        let waiter = std::thread::spawn(move || {
            assert!(cond2.acquire_timeout(LONG).unwrap());
            let seen = cond2.wait_for_timeout(|| Ok(flag2.get()? == 1), LONG);
            cond2.release().unwrap();
            seen.unwrap()
        });
        assert!(cond.acquire_timeout(LONG).unwrap());
        flag.set(&1).unwrap();
        cond.notify_all().unwrap();
        cond.release().unwrap();
        assert!(waiter.join().unwrap(), "{server}");

        // notify(1) wakes one waiter at a time.
        let waiting = m.value("i", &0).unwrap();
        let (tx, rx) = mpsc::channel();
        for _ in 0..2 {
            let (c, w, tx) = (
                cond.try_clone().unwrap(),
                waiting.try_clone().unwrap(),
                tx.clone(),
            );
            std::thread::spawn(move || {
                assert!(c.acquire_timeout(LONG).unwrap());
                w.set(&(w.get().unwrap() + 1)).unwrap();
                let woken = c.wait_timeout(LONG).unwrap();
                c.release().unwrap();
                tx.send(woken).unwrap();
            });
        }
        // Both are waiting once the count is 2 under the lock (they leave it only in wait).
        assert!(eventually(|| {
            assert!(cond.acquire_timeout(LONG).unwrap());
            let both = waiting.get().unwrap() == 2;
            if both {
                cond.notify(1).unwrap();
            }
            cond.release().unwrap();
            both
        }));
        assert!(rx.recv_timeout(LONG).unwrap(), "{server}");
        assert!(rx.try_recv().is_err(), "{server}: notify(1) woke both");
        assert!(cond.acquire_timeout(LONG).unwrap());
        cond.notify(1).unwrap();
        cond.release().unwrap();
        assert!(rx.recv_timeout(LONG).unwrap(), "{server}");
    });
}

#[test]
fn barrier_passes_breaks_and_resets() {
    against_each_server(|m, server| {
        let b = m.barrier(3).unwrap();
        assert_eq!(b.parties().unwrap(), 3, "{server}");
        assert_eq!(b.n_waiting().unwrap(), 0);
        assert!(!b.broken().unwrap());
        let parties: Vec<_> = (0..3)
            .map(|_| {
                let p = b.try_clone().unwrap();
                std::thread::spawn(move || p.wait_timeout(LONG).unwrap())
            })
            .collect();
        let mut indices: Vec<u32> = parties.into_iter().map(|t| t.join().unwrap()).collect();
        indices.sort();
        assert_eq!(indices, [0, 1, 2], "{server}");

        b.abort().unwrap();
        assert!(b.broken().unwrap(), "{server}");
        assert_eq!(
            b.wait_timeout(LONG).unwrap_err().kind(),
            ErrorKind::BrokenBarrier
        );
        b.reset().unwrap();
        assert!(!b.broken().unwrap(), "{server}");

        // A wait that times out breaks the barrier.
        let two = m.barrier(2).unwrap();
        let err = two.wait_timeout(Duration::from_millis(10)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BrokenBarrier, "{server}: {err}");
        assert!(two.broken().unwrap(), "{server}");

        // A reset fails the waiters and leaves the barrier usable.
        two.reset().unwrap();
        let p = two.try_clone().unwrap();
        let waiter = std::thread::spawn(move || p.wait_timeout(LONG).map_err(|e| e.kind()));
        assert!(eventually(|| two.n_waiting().unwrap() == 1), "{server}");
        two.reset().unwrap();
        assert_eq!(waiter.join().unwrap(), Err(ErrorKind::BrokenBarrier));
        assert!(!two.broken().unwrap(), "{server}");
        assert_eq!(m.barrier(0).unwrap_err().kind(), ErrorKind::InvalidState);
    });
}

#[test]
fn arrays_of_several_typecodes() {
    against_each_server(|m, server| {
        let a = m.array::<i64>("i", &[1, 2, 3]).unwrap();
        assert_eq!(a.typecode(), "i");
        assert_eq!(a.len().unwrap(), 3, "{server}");
        assert_eq!((a.get(0).unwrap(), a.get(-1).unwrap()), (1, 3), "{server}");
        a.set(1, &20).unwrap();
        assert_eq!(a.get_slice(0, 2).unwrap(), [1, 20], "{server}");
        assert_eq!(a.get_slice(-2, 100).unwrap(), [20, 3], "{server}");
        a.set_slice(0, 1, &[7, 8]).unwrap();
        assert_eq!(a.to_vec().unwrap(), [7, 8, 20, 3], "{server}");
        a.set_slice(1, 3, &[]).unwrap();
        assert_eq!(a.try_clone().unwrap().to_vec().unwrap(), [7, 3], "{server}");
        assert_eq!(a.get(10).unwrap_err().kind(), ErrorKind::Remote, "{server}");
        let err = a.set(0, &(1 << 40)).unwrap_err();
        assert!(err.to_string().contains("OverflowError"), "{server}: {err}");
        assert_eq!(
            a.set_slice(0, 1, &[1 << 40]).unwrap_err().kind(),
            ErrorKind::Serialization
        );
        assert_eq!(a.to_vec().unwrap(), [7, 3], "{server}: unchanged");

        let d = m.array("d", &[0.5, -2.25]).unwrap();
        d.set(0, &1e300).unwrap();
        assert_eq!(d.to_vec().unwrap(), [1e300, -2.25], "{server}");
        let bytes = m.array::<u8>("B", &[0, 255]).unwrap();
        assert_eq!(bytes.to_vec().unwrap(), [0, 255], "{server}");
        let wide = m.array::<u64>("Q", &[u64::MAX, 1]).unwrap();
        assert_eq!(wide.get(0).unwrap(), u64::MAX, "{server}");
        assert_eq!(wide.to_vec().unwrap(), [u64::MAX, 1], "{server}");
        let text = m.array::<char>("u", &['h', '\u{e9}']).unwrap();
        assert_eq!(text.get(1).unwrap(), '\u{e9}', "{server}");
        assert_eq!(text.to_vec().unwrap(), ['h', '\u{e9}'], "{server}");
        assert_eq!(
            m.array("x", &[1]).unwrap_err().kind(),
            ErrorKind::InvalidState
        );
        assert_eq!(
            m.array("b", &[300]).unwrap_err().kind(),
            ErrorKind::Remote,
            "{server}: 300 does not fit a signed char"
        );
    });
}

#[test]
fn joinable_queue_join_waits_for_every_task_done() {
    against_each_server(|m, server| {
        let q = m.joinable_queue::<i64>().unwrap();
        q.put(1).unwrap();
        q.put(2).unwrap();
        let joiner = q.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || tx.send(joiner.join().map_err(|e| e.kind())));
        // The joining thread's connection blocks in join; this thread's calls go on another
        // connection of the same handle.
        assert_eq!(q.get_timeout(LONG).unwrap(), 1);
        assert_eq!(q.get_timeout(LONG).unwrap(), 2);
        q.task_done().unwrap();
        assert!(rx.try_recv().is_err(), "{server}: join returned early");
        q.task_done().unwrap();
        assert_eq!(rx.recv_timeout(LONG).unwrap(), Ok(()), "{server}");
        let err = q.task_done().unwrap_err();
        assert!(err.to_string().contains("ValueError"), "{server}: {err}");
        q.join().unwrap();
    });
}

#[test]
fn objects_of_a_registered_type() {
    against_each_server(|m, server| {
        let c = m.create("Counter", &(5,)).unwrap();
        assert_eq!(c.typeid(), "Counter");
        assert_eq!(c.methods(), ["add", "fail", "value"], "{server}");
        assert_eq!(c.call::<i64>("add", &()).unwrap(), 6, "{server}");
        let by = BTreeMap::from([("by", 10)]);
        assert_eq!(
            c.call_with_kwargs::<i64>("add", &(), &by).unwrap(),
            16,
            "{server}"
        );
        assert_eq!(
            c.try_clone().unwrap().call::<i64>("value", &()).unwrap(),
            16
        );
        let err = c.call::<()>("fail", &()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Remote);
        assert!(err.to_string().contains("asked to fail"), "{server}: {err}");
        assert_eq!(
            c.call::<()>("nope", &()).unwrap_err().kind(),
            ErrorKind::Remote,
            "{server}"
        );
        assert_eq!(
            c.call::<i64>("add", &5).unwrap_err().kind(),
            ErrorKind::InvalidState,
            "arguments must be a tuple"
        );
        let stepped = m
            .create_with_kwargs("Counter", &(), &BTreeMap::from([("start", 1), ("step", 2)]))
            .unwrap();
        assert_eq!(stepped.call::<i64>("add", &()).unwrap(), 3, "{server}");
        assert_eq!(stepped.call::<i64>("add", &(4,)).unwrap(), 7, "{server}");
        assert_eq!(
            m.create("NoSuchType", &()).unwrap_err().kind(),
            ErrorKind::Remote
        );
    });
}

#[test]
fn a_bounded_queue_refuses_past_maxsize_and_a_waiting_put_gets_room() {
    against_each_server(|m, server| {
        let q = m.bounded_queue::<u32>(2).unwrap();
        q.put(1).unwrap();
        q.put(2).unwrap();
        assert!(q.is_full(), "{server}");
        assert_eq!(
            q.try_put(3).unwrap_err().kind(),
            ErrorKind::Full,
            "{server}"
        );
        assert_eq!(
            q.put_timeout(3, Duration::from_millis(50))
                .unwrap_err()
                .kind(),
            ErrorKind::Timeout,
            "{server}"
        );
        // A put that waits gets in once a consumer takes an item.
        let putter = q.clone();
        let t = std::thread::spawn(move || putter.put_timeout(3, LONG));
        assert!(eventually(|| q.is_full()));
        assert_eq!(q.get_timeout(LONG).unwrap(), 1, "{server}");
        t.join().unwrap().unwrap();
        assert_eq!(q.get_timeout(LONG).unwrap(), 2);
        assert_eq!(q.get_timeout(LONG).unwrap(), 3);
        assert!(!q.is_full());
        let unbounded = m.queue::<u32>("Queue").unwrap();
        assert!(!unbounded.is_full());
    });
}

/// Takes three items from a queue it was given as an argument, returns their sum.
fn sum_three(q: multiproc::Queue<i64>) -> i64 {
    (0..3).map(|_| q.get_timeout(LONG).unwrap()).sum()
}

#[test]
fn a_queue_on_a_manager_is_the_same_queue_type_and_passes_to_a_child() {
    for (name, server, address) in each_server() {
        // SyncManager's "Queue" typeid: a new queue on the server for this handle.
        let q: multiproc::Queue<i64> =
            multiproc::Queue::connect_manager(&address, b"abc", "Queue").unwrap();
        assert_eq!(q.try_get().unwrap_err().kind(), ErrorKind::Empty, "{name}");
        assert_eq!(
            q.get_timeout(Duration::from_millis(50)).unwrap_err().kind(),
            ErrorKind::Timeout,
            "{name}"
        );
        for n in [1, 2, 3] {
            q.put(n).unwrap();
        }
        assert_eq!(q.len(), 3, "{name}");
        assert!(!q.is_full(), "{name}");
        // The handle goes to a child, which connects to the same queue.
        let child = multiproc::Process::new(sum_three, q.clone())
            .start()
            .unwrap();
        assert_eq!(child.into_result().unwrap(), 6, "{name}");
        assert!(q.is_empty(), "{name}");
        drop(q);
        drop(server);
    }
}

#[test]
fn a_joinable_queue_on_a_manager_joins_with_a_timeout() {
    let short = Duration::from_millis(50);
    for (name, server, address) in each_server() {
        let q: multiproc::JoinableQueue<i64> =
            multiproc::JoinableQueue::connect_manager(&address, b"abc", "JoinableQueue").unwrap();
        q.put(1).unwrap();
        q.put(2).unwrap();
        let waited = q.join_timeout(short).unwrap_err();
        assert_eq!(waited.kind(), ErrorKind::Timeout, "{name}: {waited}");
        // The join left waiting is asked again: one item is still unfinished.
        assert_eq!(q.get_timeout(LONG).unwrap(), 1, "{name}");
        q.task_done().unwrap();
        assert_eq!(
            q.join_timeout(short).unwrap_err().kind(),
            ErrorKind::Timeout,
            "{name}"
        );
        assert_eq!(q.get_timeout(LONG).unwrap(), 2, "{name}");
        q.task_done().unwrap();
        q.join_timeout(LONG).unwrap();
        // Nothing unfinished: a new join returns at once, with or without a timeout.
        q.join_timeout(LONG).unwrap();
        q.join().unwrap();
        drop(q);
        drop(server);
    }
}

/// What seed 003's child does with `Manager().dict()` and `.list()`: writes its key, appends
/// its pid; and takes a lock and bumps a namespace counter under it.
fn use_proxies(
    (n, d, l, lock, ns): (
        u32,
        multiproc::DictProxy<String, u32>,
        multiproc::ListProxy<u32>,
        multiproc::LockProxy,
        multiproc::NamespaceProxy,
    ),
) -> u32 {
    d.set(&format!("k{n}"), &n).unwrap();
    l.append(&std::process::id()).unwrap();
    lock.acquire().unwrap();
    let count: i64 = ns.get("count").unwrap().unwrap();
    ns.set("count", &(count + 1)).unwrap();
    lock.release().unwrap();
    std::process::id()
}

#[test]
fn proxies_travel_to_child_processes_as_in_cpython() {
    for (name, server, address) in each_server() {
        let m = ManagerClient::connect(&address, b"abc").unwrap();
        let d = m.dict::<String, u32>().unwrap();
        let l = m.list::<u32>().unwrap();
        let lock = m.lock().unwrap();
        let ns = m.namespace().unwrap();
        ns.set("count", &0i64).unwrap();
        let children: Vec<_> = (0..4)
            .map(|n| {
                let args = (
                    n,
                    d.try_clone().unwrap(),
                    l.try_clone().unwrap(),
                    lock.try_clone().unwrap(),
                    ns.try_clone().unwrap(),
                );
                multiproc::Process::new(use_proxies, args).start().unwrap()
            })
            .collect();
        let mut pids: Vec<u32> = children
            .into_iter()
            .map(|c| c.into_result().unwrap())
            .collect();
        let mut items = d.items().unwrap();
        items.sort();
        let want: Vec<(String, u32)> = (0..4).map(|n| (format!("k{n}"), n)).collect();
        assert_eq!(items, want, "{name}");
        let mut appended = l.to_vec().unwrap();
        appended.sort_unstable();
        pids.sort_unstable();
        assert_eq!(appended, pids, "{name}");
        assert_eq!(ns.get::<i64>("count").unwrap(), Some(4), "{name}");
        drop((d, l, lock, ns));
        drop(server);
    }
}

#[test]
fn a_proxy_does_not_leave_through_other_serializers() {
    let (_server, address) = ours();
    let m = ManagerClient::connect(&address, b"abc").unwrap();
    let d = m.dict::<String, u32>().unwrap();
    let refused = serde_json::to_string(&d).unwrap_err().to_string();
    assert!(refused.contains("authkey"), "{refused}");
}
