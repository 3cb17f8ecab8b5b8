//! A `Pool` on a broker (feature `broker`), on a real redis-server: its tasks run on
//! `BrokerWorker`s (runs of this test binary, each with worker processes of its own) and come
//! back with the local pool's failure semantics; a worker that dies costs a lease; tasks that
//! are forged or replayed into another queue go to the dead letters.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use common::redis::RedisServer;
use multiproc::{
    BrokerWorker, ErrorKind, Pool, Priority, Process, ProcessPoolExecutor, Queue, QueueAdmin,
    RetryPolicy, TaskRecords, TaskRegistry, TaskStatus,
};

const KEY: &[u8] = b"pool secret";
const PATIENCE: Duration = Duration::from_secs(60);

fn square(x: u64) -> u64 {
    x * x
}

fn fail_on_three(x: u64) -> u64 {
    assert!(x != 3, "three is not allowed");
    x
}

fn abort(_: ()) {
    std::process::abort();
}

/// Never returns (its process is killed for running too long).
fn hang(_: ()) {
    loop {
        std::thread::park();
    }
}

/// Crashes its worker process the first time (a marker file in `dir` says it ran), then
/// answers 42.
fn crash_once(dir: PathBuf) -> u32 {
    if std::fs::File::create_new(dir.join("ran")).is_ok() {
        std::process::abort();
    }
    42
}

/// The first time, says it started on the queue `started` and never ends (its worker is killed
/// under it); after that, answers 7.
fn hang_once((dir, url): (PathBuf, String)) -> u32 {
    if std::fs::File::create_new(dir.join("ran")).is_ok() {
        let started: Queue<u32> = Queue::broker(url, "started").build().unwrap();
        started.put(1).unwrap();
        started.flush().unwrap();
        loop {
            std::thread::park();
        }
    }
    7
}

/// Says it ran, on the queue `ran`.
fn note_run((n, url): (u64, String)) -> u64 {
    let ran: Queue<u64> = Queue::broker(url, "ran").build().unwrap();
    ran.put(n).unwrap();
    ran.flush().unwrap();
    n
}

/// The time it runs, in milliseconds since the epoch.
fn ran_at(_: ()) -> u64 {
    now_ms()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Crashes its worker process the first time, noting when in `dir`; then answers how many
/// milliseconds have passed since.
fn crash_once_timed(dir: PathBuf) -> u64 {
    let note = dir.join("first run");
    match std::fs::read_to_string(&note) {
        Ok(first) => now_ms() - first.parse::<u64>().unwrap(),
        Err(_) => {
            std::fs::write(&note, now_ms().to_string()).unwrap();
            std::process::abort();
        }
    }
}

/// Panics the first time (a marker file in `dir` says it ran); then answers 5.
fn panic_once(dir: PathBuf) -> u32 {
    if std::fs::File::create_new(dir.join("ran")).is_ok() {
        panic!("the first run fails");
    }
    5
}

/// Works a while (the task's own work, 30 ms), then answers `n`.
fn work_a_while(n: u64) -> u64 {
    let until = std::time::Instant::now() + Duration::from_millis(30);
    while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
        std::thread::park_timeout(left);
    }
    n
}

/// Waits for a word on the queue `go`, then says it ran, on the queue `ran`.
fn note_run_when_told((n, url): (u64, String)) -> u64 {
    let go: Queue<u32> = Queue::broker(url.clone(), "go").build().unwrap();
    go.get_timeout(PATIENCE).unwrap();
    note_run((n, url))
}

static GREETING: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// A worker process's initializer.
fn set_greeting(greeting: String) {
    let _ = GREETING.set(greeting);
}

/// What this process's initializer set, and its pid.
fn greeting_and_pid(_: ()) -> (String, u32) {
    let greeting = GREETING.get().cloned().unwrap_or_default();
    (greeting, std::process::id())
}

/// Says it started, on the queue `started`, then waits for a word on the queue `go`.
fn wait_for_go(url: String) -> u32 {
    let started: Queue<u32> = Queue::broker(url.clone(), "started").build().unwrap();
    started.put(1).unwrap();
    started.flush().unwrap();
    let go: Queue<u32> = Queue::broker(url, "go").build().unwrap();
    go.get().unwrap()
}

fn tasks() -> TaskRegistry {
    TaskRegistry::new()
        .register("wait_for_go", wait_for_go)
        .register("greeting_and_pid", greeting_and_pid)
        .register("ran_at", ran_at)
        .register("crash_once_timed", crash_once_timed)
        .register("panic_once", panic_once)
        .register("note_run_when_told", note_run_when_told)
        .register("work_a_while", work_a_while)
        .register("note_run", note_run)
        .register("square", square)
        .register("fail_on_three", fail_on_three)
        .register("abort", abort)
        .register("hang", hang)
        .register("crash_once", crash_once)
        .register("hang_once", hang_once)
}

/// A worker: a run of this binary serving `queue` with two processes.
fn serve((url, queue, lease_ms): (String, String, u64)) {
    BrokerWorker::new(url, queue)
        .authkey(KEY.to_vec())
        .tasks(tasks())
        .processes(2)
        .lease(Duration::from_millis(lease_ms))
        .run()
        .unwrap();
}

/// A worker whose processes run an initializer, each for one task only.
fn serve_configured((url, queue): (String, String)) {
    BrokerWorker::new(url, queue)
        .authkey(KEY.to_vec())
        .tasks(tasks())
        .processes(1)
        .local_pool(|pool| {
            pool.initializer(set_greeting, "hello".to_string())
                .max_tasks_per_child(1)
        })
        .run()
        .unwrap();
}

/// Worker processes, killed and reaped when the test ends, also when it fails.
struct Workers(Vec<Process<()>>);

impl Workers {
    fn start(n: usize, redis: &RedisServer, queue: &str, lease: Duration) -> Workers {
        Workers(
            (0..n)
                .map(|_| {
                    let args = (redis.url(), queue.to_string(), lease.as_millis() as u64);
                    Process::new(serve, args).start().unwrap()
                })
                .collect(),
        )
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for w in &mut self.0 {
            let _ = w.kill();
            let _ = w.join();
        }
    }
}

/// Looks with `look` (a round trip to the server: what it waits for happens in another
/// process, with nothing to wait on) until `done` holds of what it saw, or `PATIENCE` has
/// passed; the last thing it saw.
fn look_until<T>(mut look: impl FnMut() -> T, done: impl Fn(&T) -> bool) -> T {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let seen = look();
        if done(&seen) || std::time::Instant::now() > deadline {
            return seen;
        }
        std::thread::park_timeout(Duration::from_millis(5));
    }
}

fn broker_pool(redis: &RedisServer, queue: &str) -> multiproc::BrokerPoolBuilder {
    Pool::broker(redis.url(), queue)
        .authkey(KEY.to_vec())
        .tasks(tasks())
}

#[test]
fn map_apply_and_imap_run_on_broker_workers() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mut workers = Workers::start(2, &redis, "squares", Duration::from_secs(30));
    let pool = broker_pool(&redis, "squares").build().unwrap();
    assert_eq!(
        pool.map(square, 0..200).unwrap(),
        (0..200).map(|x| x * x).collect::<Vec<_>>()
    );
    assert_eq!(pool.apply(square, 12).unwrap(), 144);
    let called = Arc::new(AtomicUsize::new(0));
    let seen = called.clone();
    let pending = pool
        .apply_async_with(
            square,
            5,
            move |v| {
                seen.store(*v as usize, Ordering::SeqCst);
            },
            |_| {},
        )
        .unwrap();
    assert_eq!(pending.get_timeout(PATIENCE).unwrap(), 25);
    assert_eq!(called.load(Ordering::SeqCst), 25, "the callback ran first");
    let mut unordered: Vec<u64> = pool
        .imap_unordered(square, 0..50, None)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    unordered.sort_unstable();
    assert_eq!(unordered, (0..50).map(|x| x * x).collect::<Vec<_>>());
    // A function the pool did not register never leaves it.
    let err = pool.apply(|x: u64| x + 1, 1).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidState);
    assert!(err.to_string().contains("TaskRegistry"), "{err}");
    pool.close();
    pool.join().unwrap();
    // SIGTERM: the workers stop taking tasks and exit cleanly.
    for w in &mut workers.0 {
        w.terminate().unwrap();
        w.join_timeout(PATIENCE).unwrap();
    }
}

#[test]
fn panics_and_crashed_processes_come_back_as_errors() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let _workers = Workers::start(1, &redis, "failing", Duration::from_secs(30));
    let pool = broker_pool(&redis, "failing").build().unwrap();
    let results: Vec<_> = pool
        .imap(fail_on_three, 0..6, Some(1))
        .unwrap()
        .collect::<Vec<_>>();
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(v) => assert_eq!(*v, i as u64),
            Err(e) => {
                assert_eq!(i, 3, "{e}");
                assert_eq!(e.kind(), ErrorKind::Panicked);
                assert!(e.to_string().contains("three is not allowed"), "{e}");
            }
        }
    }
    assert!(results[3].is_err());
    let err = pool.apply(abort, ()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WorkerLost, "{err}");
    // The worker carries on.
    assert_eq!(pool.apply(square, 3).unwrap(), 9);

    // With a retry, a task whose process crashed once runs again.
    let dir = tempfile::tempdir().unwrap();
    let retrying = broker_pool(&redis, "failing").retries(1).build().unwrap();
    assert_eq!(
        retrying
            .apply(crash_once, dir.path().to_path_buf())
            .unwrap(),
        42
    );
}

#[test]
fn a_worker_that_dies_costs_its_lease_then_the_task_runs_elsewhere_or_fails() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let lease = Duration::from_millis(1500);
    let started: Queue<u32> = Queue::broker(redis.url(), "started").build().unwrap();
    for (retries, expect_lost) in [(1, false), (0, true)] {
        let queue = format!("hanging{retries}");
        let dir = tempfile::tempdir().unwrap();
        let mut first = Workers::start(1, &redis, &queue, lease);
        let pool = broker_pool(&redis, &queue)
            .retries(retries)
            .lease(lease)
            .build()
            .unwrap();
        let pending = pool
            .apply_async(hang_once, (dir.path().to_path_buf(), redis.url()))
            .unwrap();
        // The task runs; its worker (and the worker's processes with it) is killed.
        started.get_timeout(PATIENCE).unwrap();
        first.0[0].kill().unwrap();
        first.0[0].join().unwrap_err();
        let _second = Workers::start(1, &redis, &queue, lease);
        let got = pending.get_timeout(PATIENCE);
        if expect_lost {
            let err = got.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::WorkerLost, "{err}");
        } else {
            assert_eq!(got.unwrap(), 7, "run again by the second worker");
        }
    }
}

/// A task entry as a pool writes it (format 3: postcard, the fields in this order; a byte
/// string there is encoded as a sequence of bytes is).
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct RawTask {
    v: u32,
    pool: String,
    slot: u32,
    id: u64,
    function: String,
    build: String,
    retry: (u32, u64, u64, bool, bool),
    attempt: u32,
    record_ttl_s: u64,
    timeout_ms: Option<u64>,
    items: Vec<u8>,
    mac: Vec<u8>,
}

#[test]
fn forged_and_replayed_tasks_go_to_the_dead_letters() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // A genuine task, signed for queue "a", where no worker runs.
    let pool_a = broker_pool(&redis, "a").build().unwrap();
    let _pending = pool_a.apply_async(square, 4).unwrap();
    let raw_a: Queue<RawTask> = Queue::broker(redis.url(), "a").build().unwrap();
    let genuine = raw_a.get_timeout(PATIENCE).unwrap();
    assert_eq!((genuine.v, genuine.function.as_str()), (3, "square"));
    // Replayed into queue "b" (in JSON, which a worker reads too), and a forgery beside it.
    let raw_b: Queue<RawTask> = Queue::broker(redis.url(), "b").build().unwrap();
    raw_b.put(genuine.clone()).unwrap();
    let mut forged = genuine.clone();
    forged.items = vec![0; 16];
    raw_b.put(forged).unwrap();
    raw_b.flush().unwrap();
    // And bytes that are no task at all (nor text).
    let garbage = "return redis.call('XADD', KEYS[1], '*', 'codec', 'postcard', 'body', \
                   string.char(255, 0, 7))";
    redis.cli(&["EVAL", garbage, "1", "multiproc:b"]);
    let _workers = Workers::start(1, &redis, "b", Duration::from_secs(30));
    // A genuine task for "b" is run after them: the worker has seen them all by then.
    let pool_b = broker_pool(&redis, "b").build().unwrap();
    assert_eq!(pool_b.apply(square, 6).unwrap(), 36);
    let admin = QueueAdmin::connect(&redis.url(), "b").unwrap();
    let dead = admin.dead_letters(10).unwrap();
    assert_eq!(dead.len(), 3, "{dead:?}");
    let (signed, undecoded): (Vec<_>, Vec<_>) = dead.iter().partition(|d| d.codec == "json");
    assert_eq!(signed.len(), 2, "{dead:?}");
    for d in signed {
        assert!(d.reason.contains("bad signature"), "{d:?}");
    }
    // A binary body is shown in base64, and requeued byte for byte.
    let bytes = undecoded[0];
    assert!(bytes.reason.contains("does not decode"), "{bytes:?}");
    assert_eq!(
        (bytes.codec.as_str(), bytes.body.as_str()),
        ("postcard", "/wAH")
    );
    assert_eq!(
        admin.requeue_dead(Some(&[bytes.id.clone()][..])).unwrap(),
        1
    );
    assert_eq!(pool_b.apply(square, 7).unwrap(), 49);
    let again = admin.dead_letters(10).unwrap();
    assert_eq!(again.len(), 3, "{again:?}");
    assert!(
        again
            .iter()
            .any(|d| d.body == "/wAH" && d.id != bytes.id && d.original_id != bytes.original_id),
        "{again:?}"
    );
}

#[test]
fn a_forged_result_is_dropped_and_the_real_one_delivered() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let executor =
        multiproc::ProcessPoolExecutor::from_pool(broker_pool(&redis, "forged").build().unwrap());
    let future = executor.submit(square, 9).unwrap();
    // The pool's results stream, and a result for its task that was not signed with the key.
    let keys = redis.cli_text(&["KEYS", "multiproc:forged:results:*"]);
    let stream = keys
        .lines()
        .next()
        .expect("the pool made its results stream");
    let body = r#"{"v":3,"slot":0,"id":0,"worker":"mallory","outcome":{"Done":[0,0,0,0,0,0,0,0]},"mac":[1,2,3,4]}"#;
    redis.cli(&["XADD", stream, "*", "codec", "json", "body", body]);
    let _workers = Workers::start(1, &redis, "forged", Duration::from_secs(30));
    assert_eq!(future.result_timeout(PATIENCE).unwrap(), 81);
    drop((future, executor));
    assert_eq!(
        redis.cli_text(&["EXISTS", stream]),
        "0",
        "a finished pool's results stream is deleted"
    );
}

#[test]
fn results_read_leave_their_stream_and_a_malformed_one_goes_to_the_dead_letters() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let pool = broker_pool(&redis, "trimmed").build().unwrap();
    let keys = redis.cli_text(&["KEYS", "multiproc:trimmed:results:*"]);
    let stream = keys
        .lines()
        .next()
        .expect("the pool made its results stream")
        .to_string();
    redis.cli(&["XADD", &stream, "*", "codec", "json", "body", "{not json"]);
    let _workers = Workers::start(1, &redis, "trimmed", Duration::from_secs(30));
    assert_eq!(
        pool.map(square, 0..300).unwrap(),
        (0..300).map(|x| x * x).collect::<Vec<_>>()
    );
    let dead = format!("{stream}:dead");
    assert_eq!(
        redis.cli_text(&["XLEN", &dead]),
        "1",
        "the malformed result"
    );
    let reason = redis.cli_text(&["XRANGE", &dead, "-", "+"]);
    assert!(reason.contains("does not decode"), "{reason}");
    // What the pool read is trimmed with its next read (which it makes at once).
    assert!(
        common::eventually(PATIENCE, || redis.cli_text(&["XLEN", &stream]) == "0"),
        "results stay on the stream once read: {} entries",
        redis.cli_text(&["XLEN", &stream])
    );
}

#[test]
fn a_task_is_followed_and_its_result_fetched_by_id() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let _workers = Workers::start(1, &redis, "records", Duration::from_secs(30));
    let pool = broker_pool(&redis, "records").build().unwrap();
    let pending = pool.apply_async(square, 11).unwrap();
    let id = pending
        .task_id()
        .expect("a broker task has an id")
        .to_string();
    assert_eq!(pending.get_timeout(PATIENCE).unwrap(), 121);
    let records = TaskRecords::connect(redis.url(), "records", KEY.to_vec()).unwrap();
    // The record is written before the result is sent, so it is there now.
    assert!(
        matches!(records.status(&id).unwrap(), TaskStatus::Succeeded),
        "{:?}",
        records.status(&id)
    );
    assert_eq!(records.result::<u64>(&id).unwrap(), Some(121));
    let key = format!("multiproc:records:task:{id}");
    // A task that runs a while is seen running, on its worker.
    let long = pool.apply_async(wait_for_go, redis.url()).unwrap();
    let long_id = long.task_id().unwrap().to_string();
    let started: Queue<u32> = Queue::broker(redis.url(), "started").build().unwrap();
    started.get_timeout(PATIENCE).unwrap();
    let status = look_until(
        || records.status(&long_id).unwrap(),
        |s| matches!(s, TaskStatus::Started { .. }),
    );
    match status {
        TaskStatus::Started { worker } => assert!(!worker.is_empty()),
        other => panic!("{other:?}"),
    }
    let go: Queue<u32> = Queue::broker(redis.url(), "go").build().unwrap();
    go.put(5).unwrap();
    assert_eq!(long.get_timeout(PATIENCE).unwrap(), 5);
    assert!(matches!(
        records.status(&long_id).unwrap(),
        TaskStatus::Succeeded
    ));
    let ttl: i64 = redis.cli_text(&["PTTL", &key]).parse().unwrap();
    assert!(ttl > 0 && ttl <= 24 * 3600 * 1000, "{ttl}");
    // The pool's results stream lives a week past its last result, should the pool not
    // delete it (the worker's EXPIRE follows the result on the same connection).
    let results = redis.cli_text(&["KEYS", "multiproc:records:results:*"]);
    let results = results
        .lines()
        .next()
        .expect("the pool's results stream")
        .to_string();
    let ttl = look_until(
        || redis.cli_text(&["TTL", &results]).parse::<i64>().unwrap(),
        |ttl| *ttl > 0,
    );
    assert!(ttl > 0 && ttl <= 7 * 24 * 3600, "{ttl}");

    // A failure is kept as the pool's call got it.
    let failing = pool.apply_async(fail_on_three, 3).unwrap();
    let failed_id = failing.task_id().unwrap().to_string();
    assert_eq!(
        failing.get_timeout(PATIENCE).unwrap_err().kind(),
        ErrorKind::Panicked
    );
    match records.status(&failed_id).unwrap() {
        TaskStatus::Failed(e) => assert_eq!(e.kind(), ErrorKind::Panicked, "{e}"),
        other => panic!("{other:?}"),
    }
    let err = records.result::<u64>(&failed_id).unwrap_err();
    assert!(err.to_string().contains("three is not allowed"), "{err}");

    // Unknown ids are pending (or forgotten); a record not signed with the key is refused.
    assert!(matches!(
        records.status("0000000000000000-9").unwrap(),
        TaskStatus::Pending
    ));
    let stranger = TaskRecords::connect(redis.url(), "records", b"not the key".to_vec()).unwrap();
    assert_eq!(
        stranger.status(&id).unwrap_err().kind(),
        ErrorKind::Protocol
    );
    // A record rewritten by someone without the key: its result changed (the last byte of a
    // record is the last of its outcome, here the result's).
    let flip = "local v = redis.call('GET', KEYS[1]) \
                return redis.call('SET', KEYS[1], \
                    string.sub(v, 1, -2) .. string.char((string.byte(v, -1) + 1) % 256))";
    assert_eq!(redis.cli_text(&["EVAL", flip, "1", &key]), "OK");
    assert_eq!(
        records.result::<u64>(&id).unwrap_err().kind(),
        ErrorKind::Protocol
    );

    // Without records, and on a local pool, there is nothing to follow.
    let unrecorded = broker_pool(&redis, "records")
        .result_ttl(Duration::ZERO)
        .build()
        .unwrap();
    let quiet = unrecorded.apply_async(square, 2).unwrap();
    assert_eq!(quiet.get_timeout(PATIENCE).unwrap(), 4);
    assert!(matches!(
        records.status(quiet.task_id().unwrap()).unwrap(),
        TaskStatus::Pending
    ));
    let local = Pool::new(1).unwrap();
    assert_eq!(local.apply_async(square, 2).unwrap().task_id(), None);
}

/// A worker of "another build" (its build id salted) with only `fail_on_three`.
fn serve_other((url, queue, salted): (String, String, bool)) {
    if salted {
        // SAFETY: set first thing in this child, before anything reads the environment.
        unsafe { std::env::set_var("MULTIPROC_TEST_BUILD_SALT", "-other") };
    }
    BrokerWorker::new(url, queue)
        .authkey(KEY.to_vec())
        .tasks(TaskRegistry::new().register("fail_on_three", fail_on_three))
        .processes(1)
        .run()
        .unwrap();
}

#[test]
fn a_task_waits_for_a_worker_of_its_build_and_one_with_its_function() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // Only a worker of another build serves the queue: it leaves the tasks for this build's
    // workers, and says why.
    let queue = "upgrading";
    let other = Process::new(serve_other, (redis.url(), queue.to_string(), true))
        .start()
        .unwrap();
    let _other = Workers(vec![other]);
    let pool = broker_pool(&redis, queue).build().unwrap();
    let records = TaskRecords::connect(redis.url(), queue, KEY.to_vec()).unwrap();
    let waiting = pool.apply_async(square, 2).unwrap();
    let cancelled = pool.apply_async(square, 3).unwrap();
    for task in [&waiting, &cancelled] {
        let status = look_until(
            || records.status(task.task_id().unwrap()).unwrap(),
            |s| matches!(s, TaskStatus::Waiting { .. }),
        );
        match status {
            TaskStatus::Waiting { why } => assert!(why.contains("needs build"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
    // One is cancelled where it waits; a worker of this build comes and runs the other.
    assert!(records.cancel(cancelled.task_id().unwrap()).unwrap());
    let err = cancelled.get_timeout(PATIENCE).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    let _ours = Workers::start(1, &redis, queue, Duration::from_secs(30));
    assert_eq!(waiting.get_timeout(PATIENCE).unwrap(), 4);
    let admin = QueueAdmin::connect(&redis.url(), queue).unwrap();
    assert!(admin.dead_letters(10).unwrap().is_empty());

    // A worker of this very build without the function leaves the task for one that has
    // it, and says why; one that has it comes and runs it.
    let queue = "lacking";
    let lacking = Process::new(serve_other, (redis.url(), queue.to_string(), false))
        .start()
        .unwrap();
    let _lacking = Workers(vec![lacking]);
    let pool = broker_pool(&redis, queue).build().unwrap();
    let records = TaskRecords::connect(redis.url(), queue, KEY.to_vec()).unwrap();
    let left = pool.apply_async(square, 5).unwrap();
    let status = look_until(
        || records.status(left.task_id().unwrap()).unwrap(),
        |s| matches!(s, TaskStatus::Waiting { .. }),
    );
    match status {
        TaskStatus::Waiting { why } => {
            assert!(why.contains("has no function \"square\""), "{why}")
        }
        other => panic!("{other:?}"),
    }
    // The worker that lacks it still runs what it has.
    assert_eq!(pool.apply(fail_on_three, 4).unwrap(), 4);
    let _ours = Workers::start(1, &redis, queue, Duration::from_secs(30));
    assert_eq!(left.get_timeout(PATIENCE).unwrap(), 25);
    let admin = QueueAdmin::connect(&redis.url(), queue).unwrap();
    assert!(admin.dead_letters(10).unwrap().is_empty());
}

#[test]
fn terminating_the_pool_drops_its_tasks_not_yet_started() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let pool = broker_pool(&redis, "cancelling").build().unwrap();
    let mut pending: Vec<_> = (0..5)
        .map(|n| pool.apply_async(note_run, (n, redis.url())).unwrap())
        .collect();
    // Delayed ones too: one soon, one in two days.
    for delay in [
        Duration::from_millis(300),
        Duration::from_secs(2 * 24 * 3600),
    ] {
        let delayed = pool.task(note_run, (7, redis.url())).start_after(delay);
        pending.push(delayed.submit().unwrap());
    }
    let pool_id = pending[0]
        .task_id()
        .unwrap()
        .rsplit_once('-')
        .unwrap()
        .0
        .to_string();
    // No worker has started any of them yet.
    pool.terminate();
    // The workers are told for as long as one may come: a day past the last delayed one.
    let told = redis.cli_text(&["TTL", &format!("multiproc:cancelling:cancelled:{pool_id}")]);
    let told: u64 = told.parse().unwrap();
    assert!(told > 3 * 24 * 3600 - 60, "{told}");
    for p in &pending {
        assert_eq!(
            p.get_timeout(PATIENCE).unwrap_err().kind(),
            ErrorKind::InvalidState
        );
    }
    let _workers = Workers::start(1, &redis, "cancelling", Duration::from_secs(30));
    // The worker takes them and drops them: the queue empties and nothing ran.
    let admin = QueueAdmin::connect(&redis.url(), "cancelling").unwrap();
    let status = look_until(
        || {
            let due = redis.cli_text(&["ZCARD", "multiproc:cancelling:scheduled"]);
            (admin.status().unwrap(), due)
        },
        |(s, due)| s.waiting == 0 && s.pending == 0 && due == "1",
    );
    assert!(status.0.waiting == 0 && status.0.pending == 0, "{status:?}");
    assert_eq!(status.1, "1", "only the task two days off is still to come");
    let ran: Queue<u64> = Queue::broker(redis.url(), "ran").build().unwrap();
    assert_eq!(ran.try_get().unwrap_err().kind(), ErrorKind::Empty);
    // A pool after it is served as usual.
    let next = broker_pool(&redis, "cancelling").build().unwrap();
    assert_eq!(next.apply(note_run, (9, redis.url())).unwrap(), 9);
    assert_eq!(ran.get_timeout(PATIENCE).unwrap(), 9);
}

#[test]
fn a_task_past_the_pools_timeout_is_killed_and_fails_with_timeout() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let _workers = Workers::start(1, &redis, "timing", Duration::from_secs(30));
    let pool = broker_pool(&redis, "timing")
        .task_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = pool.apply(hang, ()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    // The worker carries on with a fresh process.
    assert_eq!(pool.apply(square, 5).unwrap(), 25);
}

#[test]
fn a_delayed_task_waits_for_its_time_and_can_be_cancelled_meanwhile() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let _workers = Workers::start(1, &redis, "later", Duration::from_secs(30));
    let pool = broker_pool(&redis, "later").build().unwrap();
    let records = TaskRecords::connect(redis.url(), "later", KEY.to_vec()).unwrap();
    let sent = now_ms();
    let delayed = pool
        .task(ran_at, ())
        .start_after(Duration::from_millis(400))
        .submit()
        .unwrap();
    let id = delayed.task_id().unwrap().to_string();
    // Its record says so before it is kept for later.
    assert!(
        matches!(records.status(&id).unwrap(), TaskStatus::Scheduled),
        "{:?}",
        records.status(&id)
    );
    let ran = delayed.get_timeout(PATIENCE).unwrap();
    assert!(ran >= sent + 400, "ran {} ms after it was sent", ran - sent);
    assert!(matches!(
        records.status(&id).unwrap(),
        TaskStatus::Succeeded
    ));
    // A time already past starts it at once.
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    let past = pool.task(square, 3).start_at(hour_ago).submit().unwrap();
    assert_eq!(past.get_timeout(PATIENCE).unwrap(), 9);

    // Cancelled while it waits: it never runs, its pool is told, its record says so.
    let far = pool
        .task(note_run, (1, redis.url()))
        .start_after(Duration::from_secs(3600))
        .submit()
        .unwrap();
    let far_id = far.task_id().unwrap().to_string();
    assert!(records.cancel(&far_id).unwrap());
    let err = far.get_timeout(PATIENCE).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    assert!(matches!(
        records.status(&far_id).unwrap(),
        TaskStatus::Cancelled
    ));
    assert!(!records.cancel(&far_id).unwrap(), "nothing left to cancel");
    assert!(
        !records.cancel(&id).unwrap(),
        "a finished task stays finished"
    );
    assert_eq!(redis.cli_text(&["ZCARD", "multiproc:later:scheduled"]), "0");
    assert_eq!(
        redis.cli_text(&["HLEN", "multiproc:later:scheduled:items"]),
        "0"
    );
    // Someone without the key cancels nothing.
    let other = pool
        .task(square, 4)
        .start_after(Duration::from_secs(3600))
        .submit()
        .unwrap();
    let stranger = TaskRecords::connect(redis.url(), "later", b"not the key".to_vec()).unwrap();
    assert!(!stranger.cancel(other.task_id().unwrap()).unwrap());
    assert_eq!(redis.cli_text(&["ZCARD", "multiproc:later:scheduled"]), "1");
    let ran: Queue<u64> = Queue::broker(redis.url(), "ran").build().unwrap();
    assert_eq!(ran.try_get().unwrap_err().kind(), ErrorKind::Empty);
}

#[test]
fn a_queued_task_is_cancelled_by_id_until_a_worker_takes_it() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // No worker yet: the three tasks wait in the queue.
    let pool = broker_pool(&redis, "queued").build().unwrap();
    let pending: Vec<_> = (1..=3)
        .map(|n| pool.apply_async(note_run, (n, redis.url())).unwrap())
        .collect();
    // They are on the broker (sent on the pool's connection, looked for on another).
    let admin = QueueAdmin::connect(&redis.url(), "queued").unwrap();
    let status = look_until(|| admin.status().unwrap(), |s| s.waiting == 3);
    assert_eq!(status.waiting, 3, "{status:?}");
    let records = TaskRecords::connect(redis.url(), "queued", KEY.to_vec()).unwrap();
    assert!(records.cancel(pending[1].task_id().unwrap()).unwrap());
    // An executor's future is cancelled through its pool.
    let executor = ProcessPoolExecutor::from_pool(broker_pool(&redis, "queued").build().unwrap());
    let future = executor.submit(square, 8).unwrap();
    assert!(future.cancel());
    assert!(future.cancelled());

    let _workers = Workers::start(1, &redis, "queued", Duration::from_secs(30));
    assert_eq!(pending[0].get_timeout(PATIENCE).unwrap(), 1);
    assert_eq!(pending[2].get_timeout(PATIENCE).unwrap(), 3);
    let err = pending[1].get_timeout(PATIENCE).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    // Only the two ran.
    let ran: Queue<u64> = Queue::broker(redis.url(), "ran").build().unwrap();
    let mut seen = [
        ran.get_timeout(PATIENCE).unwrap(),
        ran.get_timeout(PATIENCE).unwrap(),
    ];
    seen.sort_unstable();
    assert_eq!(seen, [1, 3]);
    assert_eq!(ran.try_get().unwrap_err().kind(), ErrorKind::Empty);
    // A task a worker took is not cancelled.
    assert!(!records.cancel(pending[0].task_id().unwrap()).unwrap());
    assert!(matches!(
        records.status(pending[0].task_id().unwrap()).unwrap(),
        TaskStatus::Succeeded
    ));
}

#[test]
fn high_priority_tasks_go_ahead_of_the_normal_ones_waiting() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let pool = broker_pool(&redis, "urgent").build().unwrap();
    let normal: Vec<_> = (0..12)
        .map(|n| {
            pool.apply_async(note_run_when_told, (n, redis.url()))
                .unwrap()
        })
        .collect();
    let urgent = pool
        .task(note_run, (100, redis.url()))
        .priority(Priority::High)
        .submit()
        .unwrap();
    // One worker with two processes: it holds two tasks a process (none can end before the
    // word to go) when it takes the high one, which then goes ahead of every normal task
    // still waiting.
    let _workers = Workers::start(1, &redis, "urgent", Duration::from_secs(30));
    // Delivered to the worker (whether it waits in its local pool or ran at once, on a
    // process that was still free).
    let taken = || {
        let info = redis.cli_text(&["XINFO", "GROUPS", "multiproc:urgent:high"]);
        let lines: Vec<&str> = info.lines().collect();
        lines
            .windows(2)
            .any(|w| w[0] == "entries-read" && w[1] == "1")
    };
    assert!(
        common::eventually(PATIENCE, taken),
        "the worker did not take the high task"
    );
    let go: Queue<u32> = Queue::broker(redis.url(), "go").build().unwrap();
    for _ in 0..12 {
        go.put(1).unwrap();
    }
    go.flush().unwrap();
    assert_eq!(urgent.get_timeout(PATIENCE).unwrap(), 100);
    for (n, p) in normal.iter().enumerate() {
        assert_eq!(p.get_timeout(PATIENCE).unwrap(), n as u64);
    }
    let ran: Queue<u64> = Queue::broker(redis.url(), "ran").build().unwrap();
    let order: Vec<u64> = (0..13)
        .map(|_| ran.get_timeout(PATIENCE).unwrap())
        .collect();
    let at = order.iter().position(|n| *n == 100).unwrap();
    assert!(at <= 4, "the high task ran {at}th: {order:?}");
}

#[test]
fn retries_wait_with_backoff_and_panics_are_retried_when_asked() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let _workers = Workers::start(1, &redis, "backoff", Duration::from_secs(30));
    let policy = RetryPolicy::new(2)
        .backoff(Duration::from_millis(300), Duration::from_secs(5))
        .jitter(false);
    let pool = broker_pool(&redis, "backoff")
        .retry(policy)
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let waited = pool
        .apply(crash_once_timed, dir.path().to_path_buf())
        .unwrap();
    assert!(waited >= 300, "retried {waited} ms after the crash");

    // A panic is the task's answer, unless its retries take panics too.
    let dir = tempfile::tempdir().unwrap();
    let err = pool
        .apply(panic_once, dir.path().to_path_buf())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Panicked, "{err}");
    let dir = tempfile::tempdir().unwrap();
    let again = pool
        .task(panic_once, dir.path().to_path_buf())
        .retry(RetryPolicy::new(1).on_panic(true))
        .submit()
        .unwrap();
    assert_eq!(again.get_timeout(PATIENCE).unwrap(), 5);
    // Out of retries, the last failure stands.
    let always = pool
        .task(abort, ())
        .retry(RetryPolicy::new(1).backoff(Duration::from_millis(10), Duration::from_millis(10)))
        .submit()
        .unwrap();
    let id = always.task_id().unwrap().to_string();
    assert_eq!(
        always.get_timeout(PATIENCE).unwrap_err().kind(),
        ErrorKind::WorkerLost
    );
    let records = TaskRecords::connect(redis.url(), "backoff", KEY.to_vec()).unwrap();
    match records.status(&id).unwrap() {
        TaskStatus::Failed(e) => assert_eq!(e.kind(), ErrorKind::WorkerLost, "{e}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_broker_restart_mid_map_delays_the_map_and_loses_nothing() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    // No retries, and a lease longer than the test: a read whose reply the restart cut off
    // (the broker counted it delivered) must cost neither a retry nor a lease.
    let lease = Duration::from_secs(120);
    let _workers = Workers::start(1, &redis, "restarting", lease);
    let pool = broker_pool(&redis, "restarting")
        .lease(lease)
        .retries(0)
        .build()
        .unwrap();
    let mut results = pool.imap(work_a_while, 0..40, Some(1)).unwrap();
    for n in 0..5 {
        assert_eq!(results.next().unwrap().unwrap(), n);
    }
    // Down (killed, as a crash) and up again on the same port and data: the pool, the
    // worker and the tasks' own connections come back.
    redis.restart(|| {});
    let rest: Vec<u64> = results.map(Result::unwrap).collect();
    assert_eq!(rest, (5..40).collect::<Vec<_>>());
    assert_eq!(pool.apply(square, 7).unwrap(), 49);
}

#[test]
fn a_broker_out_of_memory_fails_the_submitters_tasks_with_its_reason() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let _workers = Workers::start(1, &redis, "full", Duration::from_secs(30));
    let pool = broker_pool(&redis, "full").build().unwrap();
    assert_eq!(pool.apply(square, 2).unwrap(), 4);
    // The server refuses every write from here on (its policy is noeviction).
    redis.cli(&["CONFIG", "SET", "maxmemory", "1"]);
    let refused = pool.apply_async(square, 3).unwrap();
    let err = refused.get_timeout(PATIENCE).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Remote, "{err}");
    assert!(err.to_string().contains("OOM"), "{err}");
    let pending: Vec<_> = (0..5)
        .map(|n| pool.apply_async(square, n).unwrap())
        .collect();
    for p in pending {
        assert_eq!(
            p.get_timeout(PATIENCE).unwrap_err().kind(),
            ErrorKind::Remote
        );
    }
    let later = pool
        .task(square, 3)
        .start_after(Duration::from_secs(1))
        .submit();
    assert!(later.unwrap_err().to_string().contains("OOM"));
    // Room again: the same pool goes on.
    redis.cli(&["CONFIG", "SET", "maxmemory", "0"]);
    assert_eq!(pool.apply(square, 5).unwrap(), 25);
}

#[test]
fn a_workers_processes_run_its_initializer_and_its_task_limit() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let worker = Process::new(serve_configured, (redis.url(), "configured".to_string()))
        .start()
        .unwrap();
    let _workers = Workers(vec![worker]);
    let pool = broker_pool(&redis, "configured").build().unwrap();
    let mut pids = std::collections::BTreeSet::new();
    for _ in 0..3 {
        let (greeting, pid) = pool.apply(greeting_and_pid, ()).unwrap();
        assert_eq!(greeting, "hello");
        pids.insert(pid);
    }
    assert_eq!(pids.len(), 3, "a fresh process for each task: {pids:?}");
}
