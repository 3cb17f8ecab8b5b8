//! Broker queues and a broker `Pool` on a real Redis Cluster (3 primaries, each with a
//! replica, on loopback ports): each queue lives in one hash slot (its name is the keys' hash
//! tag), a pool's tasks spread over partitions on several primaries, and a primary killed
//! mid-stream fails over to its replica without losing an acknowledged item.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::redis_cluster::RedisCluster;
use multiproc::{BrokerWorker, ErrorKind, Pool, Process, Queue, QueueAdmin, TaskRegistry};

const KEY: &[u8] = b"cluster secret";
const PATIENCE: Duration = Duration::from_secs(60);

/// Works a moment (so that a map is still running when a primary is killed), then answers.
fn slow_square(x: u64) -> u64 {
    let until = std::time::Instant::now() + Duration::from_millis(5);
    while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
        std::thread::park_timeout(left);
    }
    x * x
}

fn tasks() -> TaskRegistry {
    TaskRegistry::new().register("slow_square", slow_square)
}

/// A worker: a run of this binary serving `queue` with two processes.
fn serve((url, queue): (String, String)) {
    BrokerWorker::new(url, queue)
        .authkey(KEY.to_vec())
        .tasks(tasks())
        .processes(2)
        .run()
        .unwrap();
}

/// Worker processes, killed and reaped when the test ends, also when it fails.
struct Workers(Vec<Process<()>>);

impl Drop for Workers {
    fn drop(&mut self) {
        for w in &mut self.0 {
            let _ = w.kill();
            let _ = w.join();
        }
    }
}

#[test]
fn a_queue_lives_in_one_slot_and_its_primary_fails_over_without_losing_an_item() {
    let Some(mut cluster) = RedisCluster::start(3, 1) else {
        return;
    };
    let url = cluster.url();
    let queue: multiproc::JoinableQueue<u32> = Queue::broker(url.clone(), "jobs")
        .lease(Duration::from_secs(2))
        .build_joinable()
        .unwrap();
    // Every key of the queue has its name as hash tag: one slot, one primary.
    let stream = "multiproc:{jobs}";
    let primary = cluster.primary_of_key(stream);
    for key in [stream, "multiproc:{jobs}:config"] {
        assert_eq!(cluster.cli_text(primary, &["EXISTS", key]), "1", "{key}");
    }
    // A producer on its own handle, putting all the while.
    const N: u32 = 3000;
    let producer = std::thread::spawn({
        let url = url.clone();
        move || {
            let q: Queue<u32> = Queue::broker(url, "jobs").build().unwrap();
            for n in 0..N {
                q.put(n).unwrap();
            }
            q.flush().unwrap();
        }
    });
    let mut seen = BTreeSet::new();
    let mut killed = false;
    while seen.len() < N as usize {
        let n = match queue.get_timeout(PATIENCE) {
            Ok(n) => n,
            Err(e) => panic!("{} of {N} items came, then: {e}", seen.len()),
        };
        seen.insert(n);
        queue.task_done().unwrap();
        if !killed && seen.len() == 500 {
            // Down as a crash, with puts and reads under way: its replica takes over.
            cluster.kill(primary);
            killed = true;
        }
    }
    producer.join().unwrap();
    assert!(killed);
    assert_ne!(cluster.primary_of_key(stream), primary, "failed over");
    assert_eq!(seen, (0..N).collect::<BTreeSet<_>>());
}

#[test]
fn a_put_counts_as_stored_only_once_a_replica_has_it() {
    let Some(mut cluster) = RedisCluster::start(3, 1) else {
        return;
    };
    // Every node, so that the consumer below connects while the first is down.
    let url = cluster.url_all();
    let stream = "multiproc:{durable}";
    let q: Queue<u32> = Queue::broker(url.clone(), "durable").build().unwrap();
    let primary = cluster.primary_of_key(stream);
    let replica = cluster.replicas_of(primary)[0];
    for n in 0..100 {
        q.put(n).unwrap();
    }
    q.flush().unwrap();
    // The replica stops, and its link to the primary is cut (so nothing more waits for it
    // in a socket's buffer): the primary stores the next puts, which it alone has.
    cluster.pause(replica);
    let cut = cluster.cli_text(primary, &["CLIENT", "KILL", "TYPE", "replica"]);
    assert_eq!(cut, "1", "the replica's link");
    let producer = std::thread::spawn(move || {
        for n in 100..200 {
            q.put(n).unwrap();
        }
        // Waits for a replica to have them: through the failover below.
        q.flush().unwrap();
    });
    let xlen = || cluster.cli_text(primary, &["XLEN", stream]);
    let deadline = std::time::Instant::now() + PATIENCE;
    while xlen() != "200" {
        assert!(std::time::Instant::now() < deadline, "XLEN {}", xlen());
        std::thread::park_timeout(Duration::from_millis(5));
    }
    // The primary dies with puts the replica never saw; the replica takes over.
    cluster.kill(primary);
    cluster.resume(replica);
    cluster.wait_failover(primary);
    producer.join().unwrap();
    let consumer: Queue<u32> = Queue::broker(url, "durable").build().unwrap();
    let mut seen = BTreeSet::new();
    while seen.len() < 200 {
        match consumer.get_timeout(Duration::from_secs(10)) {
            Ok(n) => seen.insert(n),
            Err(e) => panic!("{} of 200 items are there, then: {e}", seen.len()),
        };
    }
    assert_eq!(seen, (0..200).collect::<BTreeSet<_>>());
}

#[test]
fn a_pool_spreads_its_tasks_over_partitions_and_completes_its_map_through_a_failover() {
    let Some(mut cluster) = RedisCluster::start(3, 1) else {
        return;
    };
    let url = cluster.url();
    let queue = "squares";
    let pool = Pool::broker(url.clone(), queue)
        .authkey(KEY.to_vec())
        .tasks(tasks())
        .partitions(6)
        .lease(Duration::from_secs(2))
        .retries(2)
        .build()
        .unwrap();
    let _workers = Workers(
        (0..2)
            .map(|_| {
                Process::new(serve, (url.clone(), queue.to_string()))
                    .start()
                    .unwrap()
            })
            .collect(),
    );
    assert_eq!(pool.map(slow_square, 0..60).unwrap().len(), 60);
    // The partitions are streams of their own, on more than one primary.
    let partitions: Vec<String> = (0..6)
        .map(|k| match k {
            0 => format!("multiproc:{{{queue}}}"),
            k => format!("multiproc:{{{queue}#{k}}}"),
        })
        .collect();
    let primaries: BTreeSet<u16> = partitions
        .iter()
        .map(|p| cluster.primary_of_key(p))
        .collect();
    assert!(primaries.len() > 1, "{primaries:?}");
    // Each got tasks: the count of entries ever added to each stream.
    for p in &partitions {
        let node = cluster.primary_of_key(p);
        let info = cluster.cli_text(node, &["XINFO", "STREAM", p]);
        let added = info
            .lines()
            .skip_while(|l| *l != "entries-added")
            .nth(1)
            .and_then(|v| v.trim().parse::<u64>().ok());
        assert!(added.is_some_and(|n| n > 0), "{p}: {info}");
    }
    // Another handle must use the queue's count.
    let other = Pool::broker(url.clone(), queue)
        .authkey(KEY.to_vec())
        .tasks(tasks())
        .partitions(2)
        .build();
    let err = other.expect_err("a pool with another count is refused");
    assert_eq!(err.kind(), ErrorKind::InvalidState, "{err}");

    // A map under way when the primary of a partition dies.
    let victim = cluster.primary_of_key(&partitions[0]);
    let mut results = pool.imap(slow_square, 0..400, Some(1)).unwrap();
    for n in 0..50u64 {
        assert_eq!(results.next().unwrap().unwrap(), n * n);
    }
    cluster.kill(victim);
    let rest: Vec<u64> = results.map(|r| r.unwrap()).collect();
    assert_eq!(rest, (50..400u64).map(|n| n * n).collect::<Vec<_>>());
    // The queues beside it are found on every primary.
    pool.task(slow_square, 2)
        .priority(multiproc::Priority::High)
        .submit()
        .unwrap()
        .get_timeout(PATIENCE)
        .unwrap();
    // The URL's first node may be the one killed: the others are tried.
    let admin = QueueAdmin::connect(&cluster.url_all(), queue).unwrap();
    let beside = admin.pool_queues().unwrap();
    assert!(beside.contains(&format!("{queue}:high")), "{beside:?}");
}

#[test]
fn names_that_would_split_a_queue_over_slots_are_refused() {
    let Some(cluster) = RedisCluster::start(3, 0) else {
        return;
    };
    let err = Queue::<u32>::broker(cluster.url(), "a}b")
        .build()
        .expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::InvalidState, "{err}");
    assert!(err.to_string().contains("hash tag"), "{err}");
    // Without replicas, puts are confirmed by the primary alone (no WAIT that would time out).
    let q: Queue<u32> = Queue::broker(cluster.url(), "plain").build().unwrap();
    for n in 0..100 {
        q.put(n).unwrap();
    }
    q.flush().unwrap();
    let got: Vec<u32> = (0..100).map(|_| q.get().unwrap()).collect();
    assert_eq!(got, (0..100).collect::<Vec<_>>());
}
