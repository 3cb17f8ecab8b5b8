//! Queues between processes: exactly-once delivery with many producers and consumers, limits
//! and timeouts, huge messages, handles inside messages, and processes killed mid-stream.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::Guarded;
use multiproc::{
    Connection, ErrorKind, Event, JoinableQueue, Lock, Pipe, Process, Queue, SimpleQueue,
};

const LONG: Duration = Duration::from_secs(30);

/// `(producer, sequence)`, or `None` to tell a consumer to stop.
type Item = Option<(u32, u64)>;

fn produce((q, me, n): (Queue<Item>, u32, u64)) {
    for seq in 0..n {
        q.put(Some((me, seq))).unwrap();
    }
}

/// Gets until `None`; returns what it got, after checking each producer's items came in order.
fn consume(q: Queue<Item>) -> Vec<(u32, u64)> {
    let mut got = Vec::new();
    let mut last: std::collections::HashMap<u32, u64> = Default::default();
    while let Some((p, seq)) = q.get().unwrap() {
        if let Some(prev) = last.insert(p, seq) {
            assert!(seq > prev, "producer {p}: {seq} after {prev}");
        }
        got.push((p, seq));
    }
    got
}

#[test]
fn four_producers_four_consumers_deliver_every_item_exactly_once() {
    const PER_PRODUCER: u64 = 20_000;
    // A small ring so that producers wait for room and consumers for items, many times over.
    let q: Queue<Item> = Queue::builder().ring_bytes(4096).build().unwrap();
    let consumers: Vec<_> = (0..4)
        .map(|_| Guarded::new(Process::new(consume, q.clone()).start().unwrap()))
        .collect();
    let producers: Vec<_> = (0..4)
        .map(|me| {
            Guarded::new(
                Process::new(produce, (q.clone(), me, PER_PRODUCER))
                    .start()
                    .unwrap(),
            )
        })
        .collect();
    for p in producers {
        p.into_inner().join().unwrap();
    }
    for _ in 0..4 {
        q.put(None).unwrap();
    }
    let mut all = Vec::new();
    for c in consumers {
        all.extend(c.into_inner().into_result().unwrap());
    }
    assert_eq!(all.len() as u64, 4 * PER_PRODUCER);
    let distinct: BTreeSet<_> = all.iter().copied().collect();
    assert_eq!(distinct.len(), all.len(), "an item arrived twice");
    let checksum: u64 = all.iter().map(|(p, s)| u64::from(*p) * 1_000_000 + s).sum();
    let expected: u64 = (0..4u64)
        .map(|p| (0..PER_PRODUCER).map(|s| p * 1_000_000 + s).sum::<u64>())
        .sum();
    assert_eq!(checksum, expected);
    assert!(q.is_empty());
}

#[test]
fn threads_share_a_queue_too() {
    let q: Queue<Item> = Queue::new().unwrap();
    let all = std::thread::scope(|s| {
        let consumers: Vec<_> = (0..2).map(|_| s.spawn(|| consume(q.clone()))).collect();
        let producers: Vec<_> = (0..2)
            .map(|me| {
                let q = q.clone();
                s.spawn(move || produce((q, me, 5000)))
            })
            .collect();
        producers.into_iter().for_each(|p| p.join().unwrap());
        q.put(None).unwrap();
        q.put(None).unwrap();
        consumers
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect::<BTreeSet<_>>()
    });
    assert_eq!(all.len(), 10_000);
}

#[test]
fn bounded_queue_limits_timeouts_and_nowait_forms() {
    let q: Queue<u32> = Queue::bounded(2).unwrap();
    assert_eq!(q.maxsize(), 2);
    assert!(q.is_empty() && !q.is_full());
    assert_eq!(q.try_get().unwrap_err().kind(), ErrorKind::Empty);
    let start = Instant::now();
    let err = q.get_timeout(Duration::from_millis(100)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(start.elapsed() >= Duration::from_millis(100));
    assert!(
        err.to_string().starts_with("queue: timed out after"),
        "{err}"
    );
    q.put(1).unwrap();
    q.try_put(2).unwrap();
    assert!(q.is_full());
    assert_eq!(q.len(), 2);
    assert_eq!(q.try_put(3).unwrap_err().kind(), ErrorKind::Full);
    let start = Instant::now();
    let err = q.put_timeout(3, Duration::from_millis(100)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(start.elapsed() >= Duration::from_millis(100));
    // A consumer in another process makes room: a blocked put goes through.
    let child = Process::new(|q: Queue<u32>| q.get().unwrap(), q.clone())
        .start()
        .unwrap();
    q.put_timeout(3, LONG).unwrap();
    assert_eq!(Guarded::new(child).into_inner().into_result().unwrap(), 1);
    assert_eq!((q.get().unwrap(), q.get().unwrap()), (2, 3));
}

#[test]
fn closed_handles_refuse_work() {
    let q: SimpleQueue<String> = Queue::builder().name("jobs").build().unwrap();
    q.put("a".to_string()).unwrap();
    let other = q.clone();
    q.close();
    let err = other.put("b".to_string()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidState);
    assert_eq!(err.to_string(), "queue \"jobs\": closed");
}

fn echo_len((q, back): (Queue<Vec<u8>>, Queue<(usize, u64)>)) {
    loop {
        let m = q.get().unwrap();
        if m.is_empty() {
            return;
        }
        let sum = m.iter().map(|&b| u64::from(b)).sum();
        back.put((m.len(), sum)).unwrap();
    }
}

#[test]
fn messages_of_every_size_go_through_including_64_mib() {
    let q: Queue<Vec<u8>> = Queue::builder().ring_bytes(64 << 10).build().unwrap();
    let back: Queue<(usize, u64)> = Queue::new().unwrap();
    let child = Guarded::new(
        Process::new(echo_len, (q.clone(), back.clone()))
            .start()
            .unwrap(),
    );
    // Around the side-channel threshold (a quarter of the ring), and far beyond the ring.
    let sizes = [
        1,
        100,
        16 << 10,
        (16 << 10) + 1,
        40 << 10,
        1 << 20,
        64 << 20,
    ];
    for (i, &size) in sizes.iter().enumerate() {
        let m: Vec<u8> = (0..size).map(|j| (j * 31 + i) as u8).collect();
        let sum = m.iter().map(|&b| u64::from(b)).sum();
        q.put(&m).unwrap();
        assert_eq!(back.get_timeout(LONG).unwrap(), (size, sum), "size {size}");
    }
    q.put(Vec::new()).unwrap();
    child.into_inner().join().unwrap();
}

#[test]
fn handles_travel_inside_messages() {
    let q: Queue<(Lock, Connection<String>)> = Queue::new().unwrap();
    let (mine, theirs) = Pipe::new(true).unwrap();
    let lock = Lock::new().unwrap();
    let child = Process::new(
        |q: Queue<(Lock, Connection<String>)>| {
            let (lock, conn) = q.get().unwrap();
            let held = lock.try_acquire().unwrap().is_some();
            conn.send(&format!("lock free: {held}")).unwrap();
        },
        q.clone(),
    )
    .start()
    .unwrap();
    q.put((lock.clone(), theirs)).unwrap();
    assert_eq!(mine.recv().unwrap(), "lock free: true");
    Guarded::new(child).into_inner().join().unwrap();
}

#[test]
fn joinable_queue_join_waits_for_every_task_done() {
    let q: JoinableQueue<u32> = JoinableQueue::new().unwrap();
    assert_eq!(q.task_done().unwrap_err().kind(), ErrorKind::InvalidState);
    for n in 0..50 {
        q.put(n).unwrap();
    }
    assert_eq!(q.unfinished().unwrap(), 50);
    assert_eq!(
        q.join_timeout(Duration::from_millis(20))
            .unwrap_err()
            .kind(),
        ErrorKind::Timeout
    );
    done_by_a_child(&q, 50);
}

/// A child takes `n` items and marks each done; `join` returns once it has.
fn done_by_a_child(q: &JoinableQueue<u32>, n: u32) {
    let worker = |(q, n): (JoinableQueue<u32>, u32)| {
        for _ in 0..n {
            q.get().unwrap();
            q.task_done().unwrap();
        }
    };
    let child = Guarded::new(Process::new(worker, (q.clone(), n)).start().unwrap());
    q.join_timeout(LONG).unwrap();
    assert_eq!(q.unfinished().unwrap(), 0);
    child.into_inner().join_timeout(LONG).unwrap();
}

/// Gets items and reports each through `report` as soon as it has it.
fn get_and_report((q, report, stop_after): (Queue<u64>, Connection<u64>, u64)) {
    for _ in 0..stop_after {
        let item = q.get().unwrap();
        report.send(&item).unwrap();
    }
    // Then waits inside `get`, holding the queue's consumer side, until killed.
    let _ = q.get();
}

#[test]
fn a_consumer_killed_inside_get_leaves_the_queue_usable() {
    let q: Queue<u64> = Queue::new().unwrap();
    let (reports, report) = Pipe::new(false).unwrap();
    let mut victim = Guarded::new(
        Process::new(get_and_report, (q.clone(), report, 100))
            .start()
            .unwrap(),
    );
    for i in 0..100 {
        q.put(i).unwrap();
    }
    let handed: Vec<u64> = (0..100).map(|_| reports.recv().unwrap()).collect();
    assert_eq!(handed, (0..100).collect::<Vec<_>>());
    victim.kill().unwrap();
    let _ = victim.join();
    // The dead consumer held the consumer side while it waited: the next consumer takes over
    // and gets everything put afterwards.
    for i in 100..200 {
        q.put(i).unwrap();
    }
    let rest: Vec<u64> = (0..100).map(|_| q.get_timeout(LONG).unwrap()).collect();
    assert_eq!(rest, (100..200).collect::<Vec<_>>());
}

#[test]
fn a_consumer_killed_mid_stream_loses_at_most_the_item_in_its_hands() {
    const TOTAL: u64 = 200_000;
    let q: Queue<u64> = Queue::builder().ring_bytes(4096).build().unwrap();
    let (reports, report) = Pipe::new(false).unwrap();
    let mut victim = Guarded::new(
        Process::new(get_and_report, (q.clone(), report, u64::MAX))
            .start()
            .unwrap(),
    );
    let producer = Guarded::new(
        Process::new(
            |(q, n): (Queue<u64>, u64)| (0..n).for_each(|i| q.put(i).unwrap()),
            (q.clone(), TOTAL),
        )
        .start()
        .unwrap(),
    );
    // Let the victim take some items, then kill it in the middle of the stream.
    let mut by_victim = BTreeSet::new();
    while by_victim.len() < 1000 {
        by_victim.insert(reports.recv().unwrap());
    }
    victim.kill().unwrap();
    let _ = victim.join();
    while let Ok(Some(item)) = reports.recv_timeout(Duration::ZERO).map(Some) {
        by_victim.insert(item);
    }
    let mut by_us = BTreeSet::new();
    let expected_rest = TOTAL as usize - by_victim.len();
    while by_us.len() < expected_rest {
        match q.get_timeout(Duration::from_secs(3)) {
            Ok(item) => assert!(by_us.insert(item), "item {item} twice"),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Timeout);
                break;
            }
        }
    }
    producer.into_inner().join().unwrap();
    assert!(by_us.is_disjoint(&by_victim), "an item went to both");
    let missing = TOTAL as usize - by_us.len() - by_victim.len();
    assert!(missing <= 1, "{missing} items lost");
}

fn put_forever((q, started): (Queue<u64>, Event)) {
    started.set();
    let mut i = 0u64;
    loop {
        q.put(i).unwrap();
        i += 1;
    }
}

#[test]
fn a_producer_killed_mid_put_corrupts_nothing() {
    let q: Queue<u64> = Queue::builder().ring_bytes(4096).build().unwrap();
    let started = Event::new().unwrap();
    let mut victim = Guarded::new(
        Process::new(put_forever, (q.clone(), started.clone()))
            .start()
            .unwrap(),
    );
    assert!(started.wait_timeout(LONG));
    // Take a few items so that the producer is busy putting when it dies.
    for expect in 0..1000 {
        assert_eq!(q.get_timeout(LONG).unwrap(), expect);
    }
    victim.kill().unwrap();
    let _ = victim.join();
    // What it managed to put is intact and in order.
    let mut next = 1000;
    while let Ok(item) = q.try_get() {
        assert_eq!(item, next);
        next += 1;
    }
    // Another producer takes over (the dead one may have held the producer side).
    q.put_timeout(u64::MAX, LONG).unwrap();
    assert_eq!(q.get_timeout(LONG).unwrap(), u64::MAX);
}

/// A small ring: 4 KiB hold a few hundred small items.
fn small_ring<T: serde::Serialize + serde::de::DeserializeOwned>() -> multiproc::QueueBuilder<T> {
    Queue::builder().ring_bytes(4096)
}

/// Puts `0..n` from another thread and checks that it did not wait for a consumer (a
/// failure, not a hang, if it does).
fn put_without_waiting(q: &Queue<u32>, n: u32) {
    let (done, finished) = std::sync::mpsc::channel();
    let q = q.clone();
    std::thread::spawn(move || {
        for i in 0..n {
            q.put(i).unwrap();
        }
        let _ = done.send(());
    });
    finished
        .recv_timeout(LONG)
        .expect("an unbounded queue's put waited for room");
}

/// Takes `n` items and returns them.
fn take_all((q, n): (Queue<u32>, u32)) -> Vec<u32> {
    (0..n).map(|_| q.get_timeout(LONG).unwrap()).collect()
}

#[test]
fn an_unbounded_queue_takes_far_more_than_its_ring_before_anyone_reads() {
    // As in CPython, where `put` never waits: the producer goes on, the rest waits in its
    // memory and comes in order as consumers make room.
    let q: Queue<u32> = small_ring().build().unwrap();
    put_without_waiting(&q, 20_000);
    // A non-blocking put still says the ring is full (a pool uses that to hold work back).
    assert_eq!(q.try_put(0).unwrap_err().kind(), ErrorKind::Full);
    let child = Guarded::new(Process::new(take_all, (q.clone(), 20_000)).start().unwrap());
    let got = child.into_inner().into_result().unwrap();
    assert_eq!(got, (0..20_000).collect::<Vec<_>>());
}

/// Puts `n` numbers through a small ring and returns at once: the handle, dropped as the
/// process ends, waits for the backlog to go in.
fn put_and_leave((q, n): (Queue<u64>, u64)) {
    for i in 0..n {
        q.put(i).unwrap();
    }
}

#[test]
fn a_producer_that_ends_first_delivers_its_backlog() {
    let q: Queue<u64> = small_ring().build().unwrap();
    let child = Guarded::new(
        Process::new(put_and_leave, (q.clone(), 10_000))
            .start()
            .unwrap(),
    );
    let got: Vec<u64> = (0..10_000).map(|_| q.get_timeout(LONG).unwrap()).collect();
    assert_eq!(got, (0..10_000).collect::<Vec<_>>());
    child.into_inner().join_timeout(LONG).unwrap();
}

#[test]
fn a_joinable_queue_counts_its_backlog_as_unfinished() {
    let q: JoinableQueue<u32> = small_ring().build_joinable().unwrap();
    put_without_waiting(&q, 5_000);
    assert_eq!(q.unfinished().unwrap(), 5_000);
    assert_eq!(
        q.join_timeout(Duration::from_millis(20))
            .unwrap_err()
            .kind(),
        ErrorKind::Timeout
    );
    done_by_a_child(&q, 5_000);
}

#[test]
fn big_items_and_handles_wait_in_the_backlog_too() {
    // Items past a quarter of the ring, and handles, travel beside it: they queue up as well.
    let q: Queue<(Vec<u8>, Option<Lock>)> = small_ring().build().unwrap();
    let lock = Lock::new().unwrap();
    for n in 0..200u8 {
        let handle = (n % 50 == 0).then(|| lock.clone());
        q.put((vec![n; 3000], handle)).unwrap();
    }
    let reader = |q: Queue<(Vec<u8>, Option<Lock>)>| -> (u32, u32) {
        let (mut ok, mut locks) = (0, 0);
        for n in 0..200u8 {
            let (bytes, handle) = q.get_timeout(LONG).unwrap();
            ok += u32::from(bytes.len() == 3000 && bytes.iter().all(|&b| b == n));
            locks += u32::from(handle.is_some());
        }
        (ok, locks)
    };
    let child = Guarded::new(Process::new(reader, q.clone()).start().unwrap());
    assert_eq!(child.into_inner().into_result().unwrap(), (200, 4));
}

/// Puts `n` numbers into a joinable queue's small ring (most wait in this process's memory),
/// says so, and waits to be killed.
fn put_then_hang((q, n, put, never): (JoinableQueue<u32>, u32, Event, Event)) {
    for i in 0..n {
        q.put(i).unwrap();
    }
    put.set();
    never.wait();
}

#[test]
fn a_producer_killed_with_a_backlog_leaves_join_waiting_only_for_what_came_in() {
    let q: JoinableQueue<u32> = small_ring().build_joinable().unwrap();
    let (put, never) = (Event::new().unwrap(), Event::new().unwrap());
    let mut producer = Guarded::new(
        Process::new(
            put_then_hang,
            (q.clone(), 5_000, put.clone(), never.clone()),
        )
        .start()
        .unwrap(),
    );
    assert!(put.wait_timeout(LONG));
    assert_eq!(q.unfinished().unwrap(), 5_000);
    producer.kill().unwrap();
    let _ = producer.join();
    // What reached the ring is still there to take and finish; the rest died with the
    // producer and no longer counts, so `join` returns instead of waiting for ever.
    let in_ring = q.len();
    assert!(in_ring > 0 && in_ring < 5_000, "{in_ring} in the ring");
    assert_eq!(q.unfinished().unwrap(), in_ring as u64);
    for i in 0..in_ring as u32 {
        assert_eq!(q.get_timeout(LONG).unwrap(), i);
        q.task_done().unwrap();
    }
    q.join_timeout(LONG).unwrap();
}
