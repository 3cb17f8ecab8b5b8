//! `multiproc demo`: the seeds' distributed example end to end (a master serving a task and a
//! result queue over TCP with an authkey, worker processes that connect, take the tasks and
//! square them, results collected under a progress bar), on a manager or (`--broker`) on
//! Redis. `--tour` runs a tour of the whole process API first: pids, return values, pipes,
//! daemons, data isolation, a task queue, a lock, a pool.

use std::fmt;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use multiproc::{
    Address, Connection, ErrorKind, JoinableQueue, ManagerClient, ManagerServer, Pipe, Pool,
    Process, Queue, QueueAdmin, Value, current_process,
};

/// Why the demo stopped.
#[derive(Debug)]
pub(crate) enum DemoError {
    /// The library failed.
    Multiproc(multiproc::Error),
    /// A child reported a failure of its own.
    Child(String),
    /// Something the demo shows did not hold.
    Check(String),
}

impl fmt::Display for DemoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DemoError::Multiproc(e) => e.fmt(f),
            DemoError::Child(message) => write!(f, "child failed: {message}"),
            DemoError::Check(message) => write!(f, "unexpected result: {message}"),
        }
    }
}

impl std::error::Error for DemoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DemoError::Multiproc(e) => e.source(),
            DemoError::Child(_) | DemoError::Check(_) => None,
        }
    }
}

impl From<multiproc::Error> for DemoError {
    fn from(e: multiproc::Error) -> Self {
        DemoError::Multiproc(e)
    }
}

type Result<T, E = DemoError> = std::result::Result<T, E>;

/// `multiproc demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Run the master's queues on this Redis broker (redis://HOST:PORT/DB) instead of a
    /// manager over TCP.
    #[arg(long, conflicts_with = "tour")]
    broker: Option<String>,
    /// With --broker: the prefix of the queues' keys (default `multiproc:`; see `multiproc
    /// worker --help`).
    #[arg(long, env = "MULTIPROC_PREFIX", value_name = "PREFIX")]
    prefix: Option<String>,
    /// First tour the process API (eight short scenes), then run the master and workers.
    #[arg(long)]
    tour: bool,
}

/// Runs the demo: the master and workers over TCP (after the tour if asked), or on a broker.
pub(crate) fn main(args: DemoArgs) -> Result<()> {
    match args.broker {
        Some(url) => match &args.prefix {
            Some(prefix) => broker_scene(&crate::access::with_prefix(&url, prefix)),
            None => broker_scene(&url),
        },
        None if args.tour => run(),
        None => {
            section(1, "the seeds' distributed master and workers over TCP");
            distributed_scene()?;
            println!("\ndone: every worker was joined");
            Ok(())
        }
    }
}

/// Runs every section in order.
pub(crate) fn run() -> Result<()> {
    section(1, "four children print their pids");
    children()?;
    section(2, "a child returns a value");
    returned_value()?;
    section(3, "a pipe round trip");
    pipe_round_trip()?;
    section(4, "a daemon dies with its parent");
    daemon()?;
    section(5, "data isolation");
    data_isolation()?;
    section(6, "a task queue served by worker processes");
    queue_scene()?;
    section(7, "a shared counter under a lock");
    lock_scene()?;
    section(8, "a pool of workers, with a progress bar");
    pool_scene()?;
    section(9, "a distributed master and workers over TCP");
    distributed_scene()?;
    println!("\ndone: every child was joined");
    Ok(())
}

fn section(n: u32, title: &str) {
    if n > 1 {
        println!();
    }
    println!("== {n}. {title} ==");
}

/// Target of section 1.
fn report(i: u32) {
    let me = current_process();
    println!(
        "  child {i}: {} pid {} (parent {})",
        me.name(),
        me.pid(),
        std::os::unix::process::parent_id()
    );
}

fn children() -> Result<()> {
    println!("  main process pid {}", std::process::id());
    let mut children = (1..=4)
        .map(|i| Process::new(report, i).start())
        .collect::<multiproc::Result<Vec<_>>>()?;
    for p in &mut children {
        p.join()?;
    }
    println!("  all 4 joined");
    Ok(())
}

/// Target of section 2.
fn square(x: u64) -> (u64, u32) {
    (x * x, std::process::id())
}

fn returned_value() -> Result<()> {
    let (value, pid) = Process::new(square, 7)
        .name("squarer")
        .start()?
        .into_result()?;
    println!("  square(7) in pid {pid} returned {value}");
    check(value == 49, "square(7) should be 49")
}

/// Target of section 3: answers one message.
fn shout(conn: Connection<String>) -> Result<(), String> {
    let word = conn.recv().map_err(|e| e.to_string())?;
    conn.send(&word.to_uppercase()).map_err(|e| e.to_string())
}

fn pipe_round_trip() -> Result<()> {
    let (ours, theirs) = Pipe::new::<String>(true)?;
    let p = Process::new(shout, theirs).start()?;
    ours.send(&"hello".to_string())?;
    let reply = ours.recv_timeout(Duration::from_secs(10))?;
    p.into_result()?.map_err(DemoError::Child)?;
    println!("  parent sent \"hello\", child replied {reply:?}");
    check(reply == "HELLO", "the child should reply HELLO")
}

/// A daemon that would loop forever.
fn forever(_: ()) {
    loop {
        std::thread::park();
    }
}

/// Starts a daemon grandchild, reports its pid, and ends when told to.
fn middle(conn: Connection<i32>) -> Result<(), String> {
    let run = || -> multiproc::Result<()> {
        let daemon = Process::new(forever, ()).daemon(true).start()?;
        conn.send(&daemon.pid())?;
        conn.recv()?;
        Ok(())
    };
    run().map_err(|e| e.to_string())
}

/// Whether `/proc/<pid>` shows a process that has not ended (a zombie has ended).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
    })
}

fn alive(pid: i32) -> &'static str {
    if running(pid) { "alive" } else { "gone" }
}

fn daemon() -> Result<()> {
    let (ours, theirs) = Pipe::new::<i32>(true)?;
    let mut parent = Process::new(middle, theirs).name("middle").start()?;
    let daemon = ours.recv_timeout(Duration::from_secs(10))?;
    println!(
        "  middle child {} started daemon grandchild {daemon}: {}",
        parent.pid(),
        alive(daemon)
    );
    ours.send(&0)?; // let the middle child return
    parent.join()?;
    println!(
        "  middle child ended (exit code {}); daemon {daemon}: {}",
        parent.exitcode().map_or("?".into(), |c| c.to_string()),
        alive(daemon)
    );
    check(
        parent.exitcode() == Some(0),
        "the middle child should exit with 0",
    )?;
    check(!running(daemon), "the daemon should be gone")
}

/// A global that the child of section 5 changes.
static COUNTER: AtomicI32 = AtomicI32::new(100);

/// Target of section 5.
fn increment(_: ()) -> i32 {
    COUNTER.fetch_add(1, Ordering::SeqCst) + 1
}

fn data_isolation() -> Result<()> {
    println!("  parent: COUNTER = {}", COUNTER.load(Ordering::SeqCst));
    let child = Process::new(increment, ()).start()?.into_result()?;
    let ours = COUNTER.load(Ordering::SeqCst);
    println!("  child:  COUNTER += 1 -> {child}");
    println!("  parent: COUNTER is still {ours}");
    check(
        child == 101 && ours == 100,
        "the child's change must stay in the child",
    )
}

/// Workers of section 6.
const WORKERS: u32 = 3;
/// Tasks of section 6: the numbers `1..=TASKS`.
const TASKS: u64 = 10;

/// Target of section 6: squares numbers until the `None` stop sign; returns how many it did.
fn square_worker((tasks, results): (Queue<Option<u64>>, Queue<(u64, u64)>)) -> Result<u32, String> {
    let mut done = 0;
    while let Some(n) = tasks.get().map_err(|e| e.to_string())? {
        results.put((n, n * n)).map_err(|e| e.to_string())?;
        done += 1;
    }
    Ok(done)
}

fn queue_scene() -> Result<()> {
    let tasks = Queue::new()?;
    let results = Queue::new()?;
    let workers = (0..WORKERS)
        .map(|_| Process::new(square_worker, (tasks.clone(), results.clone())).start())
        .collect::<multiproc::Result<Vec<_>>>()?;
    for n in 1..=TASKS {
        tasks.put(Some(n))?;
    }
    for _ in 0..WORKERS {
        tasks.put(None)?; // one stop sign per worker
    }
    println!("  master put {TASKS} tasks and {WORKERS} stop signs");
    let mut squares = (0..TASKS)
        .map(|_| results.get_timeout(Duration::from_secs(10)))
        .collect::<multiproc::Result<Vec<_>>>()?;
    squares.sort_unstable();
    let mut done = 0;
    for w in workers {
        done += w.into_result()?.map_err(DemoError::Child)?;
    }
    let shown: Vec<String> = squares.iter().map(|(_, sq)| sq.to_string()).collect();
    let sum: u64 = squares.iter().map(|(_, sq)| sq).sum();
    println!(
        "  {WORKERS} workers did {done} tasks; results: {}",
        shown.join(" ")
    );
    println!("  sum of squares: {sum}");
    check(
        u64::from(done) == TASKS
            && squares.iter().map(|&(n, _)| n).eq(1..=TASKS)
            && squares.iter().all(|&(n, sq)| sq == n * n),
        "the workers should square 1 to 10 once each",
    )
}

/// Processes of section 7.
const ADDERS: u32 = 4;
/// Increments each process of section 7 makes.
const INCREMENTS: u32 = 250;

/// Target of section 7: adds one `times` times, each under the value's lock.
fn add_under_lock((total, times): (Value<u64>, u32)) -> Result<(), String> {
    for _ in 0..times {
        *total.get_lock().map_err(|e| e.to_string())? += 1;
    }
    Ok(())
}

fn lock_scene() -> Result<()> {
    let total = Value::new(0u64)?;
    let adders = (0..ADDERS)
        .map(|_| Process::new(add_under_lock, (total.clone(), INCREMENTS)).start())
        .collect::<multiproc::Result<Vec<_>>>()?;
    for p in adders {
        p.into_result()?.map_err(DemoError::Child)?;
    }
    let total = total.get();
    println!("  {ADDERS} processes x {INCREMENTS} increments under the lock: total {total}");
    check(
        total == u64::from(ADDERS * INCREMENTS),
        "no increment should be lost",
    )
}

/// Workers of section 8.
const POOL_WORKERS: usize = 4;
/// Tasks of section 8: the numbers `1..=POOL_TASKS`.
const POOL_TASKS: u64 = 40;
/// How long each task of section 8 works, so that the bar has time to move.
const POOL_TASK_TIME: Duration = Duration::from_millis(25);

/// Target of section 8: works a moment, then hands its number back.
fn pool_task(n: u64) -> u64 {
    let deadline = Instant::now() + POOL_TASK_TIME;
    // Nothing unparks this thread: `park_timeout` runs out (in a loop, as it may return early).
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return n;
        }
        std::thread::park_timeout(left);
    }
}

/// The bar of section 8. It draws on stderr, and only when stderr is a terminal: piped output,
/// as in the tests, has no trace of it.
fn progress_bar(len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template("  {bar:40} {pos}/{len} tasks") {
        bar.set_style(style);
    }
    bar
}

fn pool_scene() -> Result<()> {
    let pool = Pool::new(POOL_WORKERS)?;
    println!("  {POOL_WORKERS} workers take {POOL_TASKS} tasks through imap_unordered");
    let bar = progress_bar(POOL_TASKS);
    let mut sum = 0;
    let mut done = 0;
    for result in pool.imap_unordered(pool_task, 1..=POOL_TASKS, None)? {
        sum += result?;
        done += 1;
        bar.inc(1);
    }
    bar.finish_and_clear();
    pool.close();
    pool.join()?;
    println!("  pool: {done} tasks on {POOL_WORKERS} workers, sum {sum}");
    check(
        done == POOL_TASKS && sum == POOL_TASKS * (POOL_TASKS + 1) / 2,
        "the pool should return each of 1 to 40 once",
    )
}

/// The seeds' distributed example: the key workers and master share.
const AUTHKEY: &[u8] = b"multiproc demo";
const DISTRIBUTED_WORKERS: usize = 3;
const DISTRIBUTED_TASKS: usize = 10;

/// Target of section 9: the seeds' `task_worker.py` — connects to the master over TCP, takes
/// tasks until the task queue stays empty, puts `n * n = ...` results back.
fn tcp_worker(address: String) -> Result<u32, String> {
    let address = Address::tcp(address.as_str()).map_err(|e| e.to_string())?;
    let manager = ManagerClient::connect(&address, AUTHKEY).map_err(|e| e.to_string())?;
    let tasks = manager
        .queue::<i64>("get_task_queue")
        .map_err(|e| e.to_string())?;
    let results = manager
        .queue::<String>("get_result_queue")
        .map_err(|e| e.to_string())?;
    let mut done = 0;
    loop {
        match tasks.get_timeout(Duration::from_millis(300)) {
            Ok(n) => {
                results
                    .put(format!("{n} * {n} = {}", n * n))
                    .map_err(|e| e.to_string())?;
                done += 1;
            }
            Err(e) if e.kind() == ErrorKind::Timeout => return Ok(done),
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn distributed_scene() -> Result<()> {
    let mut server = ManagerServer::bind(&Address::tcp("127.0.0.1:0")?, AUTHKEY)?;
    let tasks = server.register_queue::<i64>("get_task_queue");
    let results = server.register_queue::<String>("get_result_queue");
    let running = server.serve_in_background()?;
    println!(
        "  master serves get_task_queue and get_result_queue on {} (authkey required)",
        running.address()
    );
    let numbers = seed_tasks();
    for n in &numbers {
        tasks.put(n)?;
    }
    let workers: Vec<_> = (0..DISTRIBUTED_WORKERS)
        .map(|_| Process::new(tcp_worker, running.address().to_string()).start())
        .collect::<Result<_, _>>()?;
    println!("  {DISTRIBUTED_WORKERS} worker processes connect over TCP and square the tasks");
    let got = collect_results(|| Ok(results.get_timeout(Duration::from_secs(30))?))?;
    let done = join_workers(workers)?;
    running.shutdown();
    report_squares(&numbers, got, done, "")
}

/// Ten "random" tasks, the same on every run.
fn seed_tasks() -> Vec<i64> {
    (0..DISTRIBUTED_TASKS as i64)
        .map(|i| (i * 7919 + 13) % 100)
        .collect()
}

/// Takes the ten results with `next`, under a progress bar.
fn collect_results(mut next: impl FnMut() -> Result<String>) -> Result<Vec<String>> {
    let bar = progress_bar(DISTRIBUTED_TASKS as u64);
    let mut got = Vec::new();
    for _ in 0..DISTRIBUTED_TASKS {
        got.push(next()?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(got)
}

/// Joins the workers; how many tasks they did in all.
fn join_workers(workers: Vec<Process<Result<u32, String>>>) -> Result<u32> {
    let mut done = 0;
    for w in workers {
        done += w.into_result()?.map_err(DemoError::Child)?;
    }
    Ok(done)
}

/// Prints the results in task order and checks that each task came back squared once.
fn report_squares(numbers: &[i64], mut got: Vec<String>, done: u32, note: &str) -> Result<()> {
    let by_number = |s: &String| {
        s.split(' ')
            .next()
            .and_then(|n| n.parse::<i64>().ok())
            .unwrap_or(i64::MAX)
    };
    let mut want: Vec<String> = numbers
        .iter()
        .map(|n| format!("{n} * {n} = {}", n * n))
        .collect();
    got.sort_by_key(by_number);
    want.sort_by_key(by_number);
    println!("  results: {}", got.join(", "));
    println!("  workers did {done} tasks in all{note}");
    check(
        got == want && done as usize == DISTRIBUTED_TASKS,
        "every task should come back squared exactly once",
    )
}

/// A worker of the broker scene: the queues came as arguments (each connects again in the
/// child); takes tasks until none comes for a while, acknowledging each once its result is put.
fn broker_worker((tasks, results): (JoinableQueue<i64>, Queue<String>)) -> Result<u32, String> {
    let mut done = 0;
    loop {
        match tasks.get_timeout(Duration::from_millis(500)) {
            Ok(n) => {
                results
                    .put(format!("{n} * {n} = {}", n * n))
                    .and_then(|()| results.flush())
                    .map_err(|e| e.to_string())?;
                tasks.task_done().map_err(|e| e.to_string())?;
                done += 1;
            }
            Err(e) if matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Empty) => {
                return Ok(done);
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// The seeds' master and workers with the queues on a Redis broker: the same code as over
/// the manager, the queues made with `Queue::connect`.
fn broker_scene(url: &str) -> Result<()> {
    section(1, "the seeds' master and workers on a Redis broker");
    let name = format!("demo-{}", std::process::id());
    let (task_name, result_name) = (format!("{name}:task"), format!("{name}:result"));
    let tasks: JoinableQueue<i64> = JoinableQueue::connect(url, &task_name)?;
    let results: Queue<String> = Queue::connect(url, &result_name)?;
    let admins = [
        QueueAdmin::connect(url, &task_name)?,
        QueueAdmin::connect(url, &result_name)?,
    ];
    println!(
        "  master uses the streams {} and {} on the broker",
        admins[0].stream_key(),
        admins[1].stream_key()
    );
    let numbers = seed_tasks();
    for n in &numbers {
        tasks.put(n)?;
    }
    tasks.flush()?; // every task is on the broker
    let workers: Vec<_> = (0..DISTRIBUTED_WORKERS)
        .map(|_| Process::new(broker_worker, (tasks.clone(), results.clone())).start())
        .collect::<Result<_, _>>()?;
    println!("  {DISTRIBUTED_WORKERS} worker processes take the tasks from the broker");
    let got = collect_results(|| Ok(results.get_timeout(Duration::from_secs(30))?))?;
    tasks.join_timeout(Duration::from_secs(30))?;
    let done = join_workers(workers)?;
    for admin in admins {
        admin.destroy()?;
    }
    report_squares(&numbers, got, done, "; every task acknowledged")
}

fn check(ok: bool, what: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(DemoError::Check(what.to_string()))
    }
}
