//! Queues on a broker (Redis Streams): the same `Queue`/`JoinableQueue` API, at-least-once
//! delivery, redelivery after a consumer dies, dead letters, malformed entries, a broker that
//! restarts, and one that cannot be reached. Each test runs its own `redis-server`.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::Guarded;
use common::redis::{RedisServer, free_port};
use multiproc::{ErrorKind, JoinableQueue, Process, Queue, QueueAdmin};

const LONG: Duration = Duration::from_secs(30);

#[test]
fn items_travel_as_json_entries_that_any_client_can_read() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    for url in [redis.url(), redis.unix_url()] {
        let q: Queue<(u32, String)> = Queue::connect(&url, "words").unwrap();
        q.put((1, "one".to_string())).unwrap();
        // A put does not wait for the broker's reply; `flush` does.
        q.flush().unwrap();
        let raw = redis.cli_text(&["XRANGE", "multiproc:words", "-", "+"]);
        assert!(raw.contains("codec\njson\nbody\n[1,\"one\"]"), "{raw}");
        assert_eq!(q.len(), 1);
        assert_eq!(q.get_timeout(LONG).unwrap(), (1, "one".to_string()));
        assert_eq!(q.len(), 0);
        assert_eq!(q.try_get().unwrap_err().kind(), ErrorKind::Empty);
    }
    // An item another client put is read the same way.
    redis.cli(&[
        "XADD",
        "multiproc:words",
        "*",
        "codec",
        "json",
        "body",
        "[2,\"two\"]",
    ]);
    let q: Queue<(u32, String)> = Queue::connect(&redis.url(), "words").unwrap();
    assert_eq!(q.get_timeout(LONG).unwrap(), (2, "two".to_string()));
}

#[test]
fn a_queue_reads_as_the_user_the_url_names_from_the_database_it_names() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let user = [
        "ACL", "SETUSER", "pool", "on", ">s3cret", "~*", "&*", "+@all",
    ];
    assert_eq!(redis.cli_text(&user), "OK");
    // Nobody may read without a password from now on.
    assert_eq!(redis.cli_text(&["ACL", "SETUSER", "default", "off"]), "OK");
    let port = redis
        .url()
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches("/0")
        .to_string();
    let socket = redis.socket();
    let urls = [
        format!("redis://pool:s3cret@127.0.0.1:{port}/3"),
        format!(
            "redis+unix://{}?db=3&user=pool&pass=s3cret",
            socket.display()
        ),
    ];
    let as_pool = [
        "--user",
        "pool",
        "--pass",
        "s3cret",
        "--no-auth-warning",
        "-n",
        "3",
    ];
    for (n, url) in urls.iter().enumerate() {
        let q: Queue<u64> = Queue::connect(url, "auth").unwrap();
        // Put by another client into database 3: only a reader there finds it.
        let put = [
            &as_pool[..],
            &["XADD", "multiproc:auth", "*", "codec", "json", "body"],
        ];
        let body = n.to_string();
        let added = redis.cli_text(&[&put.concat()[..], &[body.as_str()]].concat());
        assert!(added.contains('-'), "{added}");
        assert_eq!(q.get_timeout(LONG).unwrap(), n as u64);
    }
    // A password that is not the user's is refused by name, not waited on.
    let wrong = format!("redis://pool:wrong@127.0.0.1:{port}/3");
    let e = Queue::<u64>::connect(&wrong, "auth").unwrap_err();
    assert!(e.to_string().contains("authentication failed"), "{e}");
}

fn double_all((tasks, results): (JoinableQueue<u64>, Queue<u64>)) {
    while let Ok(n) = tasks.get_timeout(Duration::from_secs(2)) {
        results.put(n * 2).unwrap();
        tasks.task_done().unwrap();
    }
}

#[test]
fn a_broker_queue_passes_to_child_processes_and_join_waits_for_them() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let tasks: JoinableQueue<u64> = JoinableQueue::connect(&redis.url(), "tasks").unwrap();
    let results: Queue<u64> = Queue::connect(&redis.url(), "results").unwrap();
    for n in 0..50 {
        tasks.put(n).unwrap();
    }
    let workers: Vec<_> = (0..2)
        .map(|_| {
            Guarded::new(
                Process::new(double_all, (tasks.clone(), results.clone()))
                    .start()
                    .unwrap(),
            )
        })
        .collect();
    tasks.join_timeout(LONG).unwrap();
    assert_eq!(tasks.unfinished().unwrap(), 0);
    let mut got: Vec<u64> = (0..50)
        .map(|_| results.get_timeout(LONG).unwrap())
        .collect();
    got.sort_unstable();
    assert_eq!(got, (0..50).map(|n| n * 2).collect::<Vec<_>>());
    for mut w in workers {
        w.join_timeout(LONG).unwrap();
        assert_eq!(w.exitcode(), Some(0));
    }
}

/// Takes one task, says which, and never finishes it.
fn take_and_hang((tasks, told): (JoinableQueue<u64>, Queue<u64>)) {
    let n = tasks.get().unwrap();
    told.put(n).unwrap();
    loop {
        std::thread::park();
    }
}

#[test]
fn a_killed_consumers_task_is_delivered_again_and_done_once() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let lease = Duration::from_millis(500);
    let tasks: JoinableQueue<u64> = Queue::broker(redis.url(), "leased")
        .lease(lease)
        .build_joinable()
        .unwrap();
    let told: Queue<u64> = Queue::connect(&redis.url(), "told").unwrap();
    for n in 0..5 {
        tasks.put(n).unwrap();
    }
    let mut hung = Guarded::new(
        Process::new(take_and_hang, (tasks.clone(), told.clone()))
            .start()
            .unwrap(),
    );
    let stuck = told.get_timeout(LONG).unwrap();
    hung.kill().unwrap();
    let _ = hung.join_timeout(LONG);
    assert_eq!(hung.exitcode(), Some(-9));
    // The broker still counts the dead consumer's task as taken, and soon the consumer as dead.
    let admin = QueueAdmin::connect(&redis.url(), "leased").unwrap();
    assert!(common::eventually(LONG, || {
        let status = admin.status_with_lease(lease).unwrap();
        status.pending == 1 && status.consumers.iter().any(|c| c.dead && c.pending == 1)
    }));
    // This consumer gets the other four at once, and the stuck one when its lease runs out.
    let mut done: BTreeMap<u64, u32> = BTreeMap::new();
    while done.len() < 5 {
        let n = tasks.get_timeout(LONG).unwrap();
        *done.entry(n).or_default() += 1;
        tasks.task_done().unwrap();
    }
    assert_eq!(
        done.values().copied().collect::<Vec<_>>(),
        [1; 5],
        "{done:?}"
    );
    assert!(done.contains_key(&stuck));
    assert_eq!(tasks.unfinished().unwrap(), 0);
    assert_eq!(tasks.try_get().unwrap_err().kind(), ErrorKind::Empty);
}

#[test]
fn a_live_consumer_keeps_its_lease_while_it_works() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let lease = Duration::from_millis(300);
    let open = |name: &str| -> JoinableQueue<u32> {
        Queue::broker(redis.url(), name)
            .lease(lease)
            .build_joinable()
            .unwrap()
    };
    let slow = open("renewed");
    let other = open("renewed");
    slow.put(7).unwrap();
    assert_eq!(slow.get_timeout(LONG).unwrap(), 7);
    // Four leases' time later the item is still the slow consumer's: nobody else gets it.
    assert_eq!(
        other.get_timeout(lease * 4).unwrap_err().kind(),
        ErrorKind::Timeout
    );
    slow.task_done().unwrap();
    assert_eq!(slow.unfinished().unwrap(), 0);
}

#[test]
fn how_long_done_items_took_is_counted_for_the_queue() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let q: JoinableQueue<u32> = Queue::broker(redis.url(), "timed")
        .build_joinable()
        .unwrap();
    for n in 0..3 {
        q.put(n).unwrap();
    }
    q.flush().unwrap();
    let admin = QueueAdmin::connect(&redis.url(), "timed").unwrap();
    assert!(
        admin.status().unwrap().durations.is_empty(),
        "none done yet"
    );
    let from = Instant::now();
    for _ in 0..2 {
        q.get().unwrap();
        q.task_done().unwrap();
    }
    // A failed item is given back, not done: it has no duration.
    q.get().unwrap();
    q.task_failed("not now").unwrap();
    // Sends the acknowledgements waiting here (the durations go with them).
    assert_eq!(q.unfinished().unwrap(), 1);
    let took = from.elapsed();
    let status = admin.status().unwrap();
    let counts = &status.durations;
    assert_eq!(
        counts.len(),
        multiproc::DURATION_BUCKETS.len() + 1,
        "{status:?}"
    );
    assert_eq!(counts.last(), Some(&2), "{status:?}");
    assert!(
        counts.windows(2).all(|w| w[0] <= w[1]),
        "cumulative: {counts:?}"
    );
    assert!(
        status.duration_sum <= took,
        "{:?} > {took:?}",
        status.duration_sum
    );
}

#[test]
fn a_poison_task_goes_to_the_dead_letter_stream_with_its_last_error() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let q: JoinableQueue<String> = Queue::broker(redis.url(), "poison")
        .max_deliveries(2)
        .build_joinable()
        .unwrap();
    q.put("bad".to_string()).unwrap();
    q.put("good".to_string()).unwrap();
    let mut attempts = 0;
    let mut good = 0;
    while let Ok(item) = q.get_timeout(Duration::from_secs(2)) {
        if item == "bad" {
            attempts += 1;
            q.task_failed(&format!("boom {attempts}")).unwrap();
        } else {
            good += 1;
            q.task_done().unwrap();
        }
    }
    assert_eq!((attempts, good), (2, 1));
    assert_eq!(q.unfinished().unwrap(), 0);
    let dead = redis.cli_text(&["XRANGE", "multiproc:poison:dead", "-", "+"]);
    assert!(dead.contains("\"bad\""), "{dead}");
    assert!(dead.contains("reason\nboom 2"), "{dead}");
    // Handed out twice, as max_deliveries says (the third delivery was not).
    assert!(dead.contains("deliveries\n2"), "{dead}");

    // What `multiproc status` and `multiproc dead` show and do.
    let admin = QueueAdmin::connect(&redis.url(), "poison").unwrap();
    let status = admin.status().unwrap();
    assert_eq!((status.waiting, status.pending, status.dead), (0, 0, 1));
    let letters = admin.dead_letters(10).unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        (
            letters[0].reason.as_str(),
            letters[0].body.as_str(),
            letters[0].deliveries
        ),
        ("boom 2", "\"bad\"", 2)
    );
    assert_eq!(admin.requeue_dead(None).unwrap(), 1);
    assert_eq!(admin.status().unwrap().dead, 0);
    assert_eq!(
        q.get_timeout(LONG).unwrap(),
        "bad",
        "a requeued item is delivered again"
    );
    q.task_failed("still bad").unwrap();
    q.put("worse".to_string()).unwrap();
    let n = q.get_timeout(LONG).unwrap();
    q.task_failed("x").unwrap();
    assert!(n == "bad" || n == "worse");
    assert_eq!(admin.purge_dead().unwrap(), 0);
}

#[test]
fn a_rejected_task_goes_to_the_dead_letters_at_once_and_to_no_other_consumer() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let q: JoinableQueue<String> = Queue::broker(redis.url(), "reject")
        .max_deliveries(5)
        .build_joinable()
        .unwrap();
    let other: JoinableQueue<String> = JoinableQueue::connect(&redis.url(), "reject").unwrap();
    q.put("forged".to_string()).unwrap();
    q.put("fine".to_string()).unwrap();
    assert_eq!(q.get_timeout(LONG).unwrap(), "forged");
    q.task_rejected("bad signature").unwrap();
    // One delivery, not max_deliveries: the next taker anywhere gets the next item.
    assert_eq!(other.get_timeout(LONG).unwrap(), "fine");
    other.task_done().unwrap();
    drop(other); // Its acknowledgement goes with it.
    assert!(q.get_timeout(Duration::from_millis(300)).is_err());
    let admin = QueueAdmin::connect(&redis.url(), "reject").unwrap();
    let letters = admin.dead_letters(10).unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        (
            letters[0].reason.as_str(),
            letters[0].body.as_str(),
            letters[0].deliveries
        ),
        ("bad signature", "\"forged\"", 1)
    );
    assert_eq!(q.unfinished().unwrap(), 0);
    // More rejections than items taken is a caller's error, as for task_done.
    assert!(q.task_rejected("again").is_err());
}

#[test]
fn malformed_entries_are_dead_lettered_and_never_reach_the_consumer() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let q: Queue<u32> = Queue::connect(&redis.url(), "mixed").unwrap();
    redis.cli(&[
        "XADD",
        "multiproc:mixed",
        "*",
        "codec",
        "pickle",
        "body",
        "x",
    ]);
    redis.cli(&[
        "XADD",
        "multiproc:mixed",
        "*",
        "codec",
        "json",
        "body",
        "\"seven\"",
    ]);
    redis.cli(&["XADD", "multiproc:mixed", "*", "nothing", "here"]);
    q.put(7).unwrap();
    assert_eq!(q.get_timeout(LONG).unwrap(), 7);
    let dead = redis.cli_text(&["XRANGE", "multiproc:mixed:dead", "-", "+"]);
    assert!(dead.contains("unknown codec"), "{dead}");
    assert!(dead.contains("does not decode"), "{dead}");
    assert!(dead.contains("no body"), "{dead}");
    assert_eq!(redis.cli_text(&["XLEN", "multiproc:mixed:dead"]), "3");
}

#[test]
fn an_unreachable_broker_is_a_prompt_error_naming_its_url() {
    let url = format!("redis://127.0.0.1:{}/0", free_port());
    let start = Instant::now();
    let err = Queue::<u32>::connect(&url, "nowhere").unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(err.to_string().contains(&url), "{err}");
    let err = Queue::<u32>::connect("http://example.com", "x").unwrap_err();
    assert!(err.to_string().contains("bad broker URL"), "{err}");
    assert!(err.to_string().contains("http://example.com"), "{err}");
    let err = Queue::<u32>::broker(url, "").build().unwrap_err();
    assert!(err.to_string().contains("1 to 1024 bytes"), "{err}");
}

#[test]
fn a_read_cut_off_by_a_broken_connection_costs_neither_a_lease_nor_a_delivery() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // The default lease (30 s) is longer than this test waits.
    let q: JoinableQueue<u32> = JoinableQueue::connect(&redis.url(), "cut").unwrap();
    q.put(1).unwrap();
    assert_eq!(q.get_timeout(LONG).unwrap(), 1);
    q.task_done().unwrap();
    let consumers = redis.cli_text(&["XINFO", "CONSUMERS", "multiproc:cut", "multiproc"]);
    let consumer = consumers.lines().nth(1).expect("one consumer").to_string();
    q.put(2).unwrap();
    q.flush().unwrap();
    // The broker delivers the entry to the handle's consumer, and the reply never reaches
    // it: as when the connection breaks with a read's reply on its way.
    let read = redis.cli_text(&[
        "XREADGROUP",
        "GROUP",
        "multiproc",
        &consumer,
        "COUNT",
        "1",
        "STREAMS",
        "multiproc:cut",
        ">",
    ]);
    assert_eq!(read.lines().last(), Some("2"), "{read}");
    redis.cli(&["CLIENT", "KILL", "TYPE", "normal"]);
    // Given back at once, not after the lease, and delivered once as far as counts go.
    assert_eq!(q.get_timeout(Duration::from_secs(10)).unwrap(), 2);
    let pending = redis.cli_text(&["XPENDING", "multiproc:cut", "multiproc", "-", "+", "10"]);
    assert_eq!(pending.lines().last(), Some("1"), "{pending}");
    q.task_done().unwrap();
}

#[test]
fn a_broker_restart_loses_no_item() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let q: JoinableQueue<u32> = JoinableQueue::connect(&redis.url(), "durable").unwrap();
    for n in 0..100 {
        q.put(n).unwrap();
    }
    let mut got: Vec<u32> = (0..30)
        .map(|_| {
            let n = q.get_timeout(LONG).unwrap();
            q.task_done().unwrap();
            n
        })
        .collect();
    redis.restart(|| {
        // While the broker is down the entries read ahead are still handed out (their
        // acknowledgements wait), then a blocking get waits for it instead of failing.
        for _ in 0..=16 {
            match q.get_timeout(Duration::from_millis(300)) {
                Ok(n) => {
                    got.push(n);
                    q.task_done().unwrap();
                }
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
                    return;
                }
            }
        }
        panic!("more entries handed out than a read takes");
    });
    while got.len() < 100 {
        got.push(q.get_timeout(LONG).unwrap());
        q.task_done().unwrap();
    }
    got.sort_unstable();
    assert_eq!(got, (0..100).collect::<Vec<_>>());
    assert_eq!(q.unfinished().unwrap(), 0);
}

#[test]
fn a_bounded_broker_queue_refuses_past_maxsize() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let q: Queue<u8> = Queue::broker(redis.url(), "small")
        .maxsize(2)
        .build()
        .unwrap();
    q.put(1).unwrap();
    q.put(2).unwrap();
    assert!(q.is_full());
    assert_eq!(q.try_put(3).unwrap_err().kind(), ErrorKind::Full);
    assert_eq!(
        q.put_timeout(3, Duration::from_millis(100))
            .unwrap_err()
            .kind(),
        ErrorKind::Timeout
    );
    assert_eq!(q.get_timeout(LONG).unwrap(), 1);
}

#[test]
fn acknowledgements_reach_the_broker_with_the_next_read_or_when_the_handle_goes() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let producer: JoinableQueue<u8> = JoinableQueue::connect(&redis.url(), "acks").unwrap();
    for n in 0..3 {
        producer.put(n).unwrap();
    }
    let consumer: JoinableQueue<u8> = JoinableQueue::connect(&redis.url(), "acks").unwrap();
    assert_eq!(consumer.get_timeout(LONG).unwrap(), 0);
    consumer.task_done().unwrap();
    // The next read carries the first acknowledgement.
    assert_eq!(consumer.get_timeout(LONG).unwrap(), 1);
    assert_eq!(redis.cli_text(&["XLEN", "multiproc:acks"]), "2");
    consumer.task_done().unwrap();
    // Asking the broker anything through the handle sends it too.
    assert_eq!(consumer.unfinished().unwrap(), 1);
    assert_eq!(consumer.get_timeout(LONG).unwrap(), 2);
    consumer.task_done().unwrap();
    // The last one goes when the handle is dropped.
    drop(consumer);
    producer.join_timeout(LONG).unwrap();
    assert_eq!(producer.unfinished().unwrap(), 0);
}

#[test]
fn puts_go_without_waiting_and_an_item_the_broker_refused_is_reported() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let producer: Queue<u32> = Queue::connect(&redis.url(), "fast").unwrap();
    let consumer: Queue<u32> = Queue::connect(&redis.url(), "fast").unwrap();
    // More puts than may wait for their replies: the older ones are confirmed on the way.
    for n in 0..1000 {
        producer.put(n).unwrap();
    }
    let got: Vec<u32> = (0..1000)
        .map(|_| consumer.get_timeout(LONG).unwrap())
        .collect();
    assert_eq!(got, (0..1000).collect::<Vec<_>>());
    producer.flush().unwrap();

    // Out of memory: the broker refuses the write, and the producer hears of it.
    redis.cli(&["CONFIG", "SET", "maxmemory", "1"]);
    producer.put(1000).unwrap();
    let refused = producer.flush().unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Remote, "{refused}");
    assert!(refused.to_string().contains("OOM"), "{refused}");
    // A consumer may still connect to the queue (to drain it) while the broker is full.
    let late: Queue<u32> = Queue::connect(&redis.url(), "fast").unwrap();
    assert_eq!(late.try_get().unwrap_err().kind(), ErrorKind::Empty);
    redis.cli(&["CONFIG", "SET", "maxmemory", "0"]);
    producer.put(1001).unwrap();
    producer.flush().unwrap();
    assert_eq!(consumer.get_timeout(LONG).unwrap(), 1001);
    assert_eq!(consumer.try_get().unwrap_err().kind(), ErrorKind::Empty);
}

#[test]
fn puts_whose_connection_broke_before_their_reply_are_written_again() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let q: Queue<u32> = Queue::connect(&redis.url(), "again").unwrap();
    for n in 0..10 {
        q.put(n).unwrap();
    }
    // Every client connection is cut, ours with ten replies unread.
    redis.cli(&["CLIENT", "KILL", "TYPE", "normal"]);
    for n in 10..20 {
        q.put(n).unwrap();
    }
    q.flush().unwrap();
    // At least once: each item is there, some perhaps twice.
    let mut got = BTreeMap::<u32, u32>::new();
    while let Ok(n) = q.try_get() {
        *got.entry(n).or_default() += 1;
    }
    assert_eq!(
        got.keys().copied().collect::<Vec<_>>(),
        (0..20).collect::<Vec<_>>()
    );
    assert!(got.values().all(|&times| times <= 2), "{got:?}");
}

#[test]
fn a_quick_consumer_reads_ahead_and_gives_back_what_it_did_not_take() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let producer: Queue<u32> = Queue::connect(&redis.url(), "ahead").unwrap();
    for n in 0..40 {
        producer.put(n).unwrap();
    }
    producer.flush().unwrap();
    // A long lease: what is given back must not wait for it to run out. At most one
    // delivery: a given-back entry whose delivery counted would be dead-lettered.
    let consumer = || {
        Queue::<u32>::broker(redis.url(), "ahead")
            .lease(Duration::from_secs(60))
            .max_deliveries(1)
            .build_joinable()
            .unwrap()
    };
    let quick = consumer();
    for n in 0..4 {
        assert_eq!(quick.get_timeout(LONG).unwrap(), n);
        quick.task_done().unwrap();
    }
    // It took more from the broker than it handed out.
    let pending = redis.cli_text(&["XPENDING", "multiproc:ahead", "multiproc"]);
    let held: u32 = pending.lines().next().unwrap().parse().unwrap();
    assert!(held > 1, "nothing was read ahead: {pending}");
    drop(quick);
    // The rest go to the next consumer at once, their delivery not counted: none is
    // dead-lettered.
    let next = consumer();
    let mut rest: Vec<u32> = (4..40)
        .map(|_| {
            let n = next.get_timeout(Duration::from_secs(10)).unwrap();
            next.task_done().unwrap();
            n
        })
        .collect();
    rest.sort_unstable();
    assert_eq!(rest, (4..40).collect::<Vec<_>>());
    assert_eq!(redis.cli_text(&["XLEN", "multiproc:ahead:dead"]), "0");
}

#[test]
fn a_queues_lease_and_max_deliveries_are_shared_by_its_handles() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let builder = || Queue::<u32>::broker(&url, "shared");
    // A handle that asks for nothing stores nothing.
    let producer = builder().build().unwrap();
    assert_eq!(redis.cli_text(&["EXISTS", "multiproc:shared:config"]), "0");
    let _first = builder()
        .lease(Duration::from_secs(2))
        .max_deliveries(2)
        .build_joinable()
        .unwrap();
    // One asking for nothing takes the queue's settings.
    let other = builder().build_joinable().unwrap();
    producer.put(7).unwrap();
    producer.flush().unwrap();
    assert_eq!(other.get_timeout(LONG).unwrap(), 7);
    // Given back with an idle time of one lease: the queue's 2 s, not the default 30 s.
    other.task_failed("no").unwrap();
    let pending = redis.cli_text(&["XPENDING", "multiproc:shared", "multiproc", "-", "+", "10"]);
    let idle: u64 = pending.lines().nth(2).unwrap().parse().unwrap();
    assert!((2_000..29_000).contains(&idle), "{pending}");
    assert_eq!(other.get_timeout(LONG).unwrap(), 7);
    other.task_failed("no").unwrap();
    // Its third delivery is past the queue's max_deliveries (2, not the default 5).
    assert!(other.get_timeout(Duration::from_millis(300)).is_err());
    assert_eq!(redis.cli_text(&["XLEN", "multiproc:shared:dead"]), "1");
    // Asking for other values is refused, with the queue's; the same ones are fine.
    let refused = builder()
        .lease(Duration::from_secs(5))
        .build_joinable()
        .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::InvalidState, "{refused}");
    assert!(refused.to_string().contains("2s"), "{refused}");
    let refused = builder().max_deliveries(3).build().unwrap_err();
    assert!(
        refused.to_string().contains("max_deliveries is 2"),
        "{refused}"
    );
    builder()
        .lease(Duration::from_millis(2000))
        .max_deliveries(2)
        .build()
        .unwrap();
    // The queue's status reads its lease too; destroying the queue forgets the settings.
    QueueAdmin::connect(&url, "shared")
        .unwrap()
        .destroy()
        .unwrap();
    assert_eq!(redis.cli_text(&["EXISTS", "multiproc:shared:config"]), "0");
}

#[test]
fn the_key_prefix_comes_from_the_builder_or_the_url_and_goes_with_a_handle() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let app_url = format!("{url}?prefix=app%3A");
    let tasks: JoinableQueue<u64> = Queue::broker(&url, "t")
        .prefix("app:")
        .build_joinable()
        .unwrap();
    let results: Queue<u64> = Queue::connect(&app_url, "r").unwrap();
    for n in 0..10 {
        tasks.put(n).unwrap();
    }
    // A child process connects again under the same prefix.
    let mut worker = Guarded::new(
        Process::new(double_all, (tasks.clone(), results.clone()))
            .start()
            .unwrap(),
    );
    tasks.join_timeout(LONG).unwrap();
    let mut got: Vec<u64> = (0..10)
        .map(|_| results.get_timeout(LONG).unwrap())
        .collect();
    got.sort_unstable();
    assert_eq!(got, (0..10).map(|n| n * 2).collect::<Vec<_>>());
    worker.join_timeout(LONG).unwrap();
    assert_eq!(worker.exitcode(), Some(0));
    assert_eq!(redis.cli_text(&["EXISTS", "app:t", "app:r"]), "2");
    assert_eq!(redis.cli_text(&["KEYS", "multiproc:*"]), "");
    let admin = QueueAdmin::connect(&app_url, "t").unwrap();
    assert_eq!(admin.stream_key(), "app:t");
    assert!(!admin.uses_old_keys());
    // The default is `multiproc:`; "" is the bare name.
    let default: Queue<u8> = Queue::connect(&url, "d").unwrap();
    default.put(1).unwrap();
    default.flush().unwrap();
    assert_eq!(redis.cli_text(&["XLEN", "multiproc:d"]), "1");
    let bare: Queue<u8> = Queue::broker(&url, "bare").prefix("").build().unwrap();
    bare.put(1).unwrap();
    bare.flush().unwrap();
    assert_eq!(redis.cli_text(&["XLEN", "bare"]), "1");
    // Two prefixes that disagree, one too long: clear errors, the URL shown without them.
    let err = Queue::<u8>::broker(&app_url, "t")
        .prefix("other:")
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidState, "{err}");
    assert!(err.to_string().contains("not the URL's"), "{err}");
    assert!(
        err.to_string().contains(&url) && !err.to_string().contains("prefix="),
        "{err}"
    );
    let err = Queue::<u8>::broker(&url, "t")
        .prefix("p".repeat(257))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("at most 256 bytes"), "{err}");
    let err = QueueAdmin::connect(&format!("{url}?prefix=a&prefix=b"), "t").unwrap_err();
    assert!(err.to_string().contains("two key prefixes"), "{err}");
}

#[test]
fn a_queue_made_before_prefixes_is_used_under_its_old_keys_and_nothing_is_lost() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    // A queue as an earlier multiproc made it: its keys at the bare name.
    let old_layout = || {
        Queue::<u32>::broker(&url, "legacy")
            .prefix("")
            .lease(Duration::from_millis(500))
    };
    let producer = old_layout().build().unwrap();
    for n in 0..20 {
        producer.put(n).unwrap();
    }
    producer.flush().unwrap();
    // A consumer took one item and went away: its lease runs out.
    let gone = old_layout().build_joinable().unwrap();
    let held = gone.get_timeout(LONG).unwrap();
    drop(gone);
    assert_eq!(redis.cli_text(&["XLEN", "legacy"]), "20");
    // With the default prefix the queue is found where it is.
    let admin = QueueAdmin::connect(&url, "legacy").unwrap();
    assert!(admin.uses_old_keys());
    assert_eq!(admin.stream_key(), "legacy");
    let status = admin.status().unwrap();
    assert_eq!((status.waiting, status.pending), (19, 1));
    let consumer: JoinableQueue<u32> = JoinableQueue::connect(&url, "legacy").unwrap();
    consumer.put(20).unwrap();
    // Every item once, the held one too (the queue's lease, 500 ms, was kept).
    let mut got = BTreeMap::<u32, u32>::new();
    while got.len() < 21 {
        let n = consumer.get_timeout(LONG).unwrap();
        *got.entry(n).or_default() += 1;
        consumer.task_done().unwrap();
    }
    assert!(got.values().all(|&times| times == 1), "{got:?}");
    assert_eq!(
        got.keys().copied().collect::<Vec<_>>(),
        (0..21).collect::<Vec<_>>()
    );
    assert!(got.contains_key(&held));
    assert_eq!(consumer.unfinished().unwrap(), 0);
    // Nothing was made under the prefix.
    assert_eq!(redis.cli_text(&["KEYS", "multiproc:*"]), "");
}

#[test]
fn migrate_keys_moves_an_old_queue_under_the_prefix_with_its_items_leases_and_dead_letters() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let old_layout = || {
        Queue::<u32>::broker(&url, "jobs")
            .prefix("")
            .lease(Duration::from_secs(60))
    };
    let producer = old_layout().build().unwrap();
    for n in 0..10 {
        producer.put(n).unwrap();
    }
    producer.flush().unwrap();
    // 0 goes to the dead letters; 1 is held, given back with an error recorded.
    let taker = old_layout().build_joinable().unwrap();
    assert_eq!(taker.get_timeout(LONG).unwrap(), 0);
    taker.task_rejected("forged").unwrap();
    drop(taker);
    let taker = old_layout().build_joinable().unwrap();
    assert_eq!(taker.get_timeout(LONG).unwrap(), 1);
    taker.task_failed("flaky").unwrap();
    drop(taker);
    // A handle left running on the old keys while they move (it should have been stopped).
    let stale: Queue<u32> = Queue::connect(&url, "jobs").unwrap();

    let moved = QueueAdmin::migrate_keys(&url, "jobs").unwrap();
    let keys = ["jobs", "jobs:dead", "jobs:errors", "jobs:config"];
    let want: Vec<(String, String)> = keys
        .iter()
        .map(|k| (k.to_string(), format!("multiproc:{k}")))
        .collect();
    assert_eq!(moved, want);
    for key in keys {
        assert_eq!(redis.cli_text(&["EXISTS", key]), "0", "{key}");
        let new = format!("multiproc:{key}");
        assert_eq!(redis.cli_text(&["EXISTS", &new]), "1", "{new}");
    }
    // Everything is still there: items, the held one, the dead letter, the settings.
    let admin = QueueAdmin::connect(&url, "jobs").unwrap();
    assert!(!admin.uses_old_keys());
    assert_eq!(admin.stream_key(), "multiproc:jobs");
    let status = admin.status().unwrap();
    assert_eq!((status.waiting, status.pending, status.dead), (8, 1, 1));
    let letters = admin.dead_letters(10).unwrap();
    assert_eq!(
        (
            letters.len(),
            letters[0].reason.as_str(),
            letters[0].body.as_str()
        ),
        (1, "forged", "0")
    );
    assert_eq!(
        redis.cli_text(&["HGET", "multiproc:jobs:config", "lease_ms"]),
        "60000"
    );
    let consumer: JoinableQueue<u32> = JoinableQueue::connect(&url, "jobs").unwrap();
    let mut got: Vec<u32> = (0..9)
        .map(|_| {
            let n = consumer.get_timeout(LONG).unwrap();
            consumer.task_done().unwrap();
            n
        })
        .collect();
    got.sort_unstable();
    assert_eq!(got, (1..10).collect::<Vec<_>>());
    assert_eq!(consumer.unfinished().unwrap(), 0);
    // The handle left on the old keys is told, and does not make them again.
    stale.put(99).unwrap();
    let err = stale.flush().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Remote, "{err}");
    assert!(err.to_string().contains("old stream is gone"), "{err}");
    let err = stale.try_get().unwrap_err();
    assert!(err.to_string().contains("old stream is gone"), "{err}");
    assert_eq!(redis.cli_text(&["EXISTS", "jobs"]), "0");
    // Moved already: nothing to do.
    assert_eq!(QueueAdmin::migrate_keys(&url, "jobs").unwrap(), []);

    // Refusals say why, and move nothing.
    let refused = |url: &str, name: &str, why: &str| {
        let err = QueueAdmin::migrate_keys(url, name).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidState, "{err}");
        assert!(err.to_string().contains(why), "{name}: {err}");
    };
    refused(&url, "nothing", "no such queue");
    // Old keys, and new ones made meanwhile: not merged.
    Queue::<u8>::broker(&url, "both")
        .prefix("")
        .build()
        .unwrap();
    redis.cli(&[
        "XGROUP",
        "CREATE",
        "multiproc:both",
        "multiproc",
        "0",
        "MKSTREAM",
    ]);
    refused(&url, "both", "multiproc:both exist(s) already");
    assert_eq!(redis.cli_text(&["EXISTS", "both"]), "1");
    redis.cli(&["SET", "plain", "x"]);
    refused(&url, "plain", "not a stream");
    redis.cli(&["XADD", "foreign", "*", "a", "b"]);
    refused(&url, "foreign", "no consumer group");
    refused(&format!("{url}?prefix="), "both", "prefix is empty");
    // Under another prefix, from the URL.
    Queue::<u8>::broker(&url, "other")
        .prefix("")
        .build()
        .unwrap();
    let moved = QueueAdmin::migrate_keys(&format!("{url}?prefix=app%3A"), "other").unwrap();
    assert_eq!(moved, [("other".to_string(), "app:other".to_string())]);
}
