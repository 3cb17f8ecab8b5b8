//! The seeds' first thread examples, with `multiproc::Thread`: names, `current_thread`,
//! `active_count`, a thread written as a type, the three ways to join 50 threads, and a
//! process that starts a thread of its own.
//!
//! Mirrors seed 000's `LoopThread`:
//!
//! ```python
//! def loop():
//!     print('thread %s is running...' % threading.current_thread().name)
//!     n = 0
//!     while n < 5:
//!         n = n + 1
//!         print('thread %s >>> %s' % (threading.current_thread().name, n))
//!         time.sleep(1)
//!     print('thread %s ended.' % threading.current_thread().name)
//! print('thread %s is running...' % threading.current_thread().name)
//! t = threading.Thread(target=loop, name='LoopThread'); t.start(); t.join()
//! print('thread %s ended.' % threading.current_thread().name)
//! ```
//!
//! seed 001's four threads printing `f"{i}子线程{os.getpid()}正在运行!"` (one pid for all), and
//! seed 003's `class MyThreading(threading.Thread)` with `run`, `for i in range(50)` with no
//! join, `t.join()` in the loop and a join of all with the time taken,
//! `threading.current_thread()` in a thread and in the main thread, `threading.active_count()`,
//! and `在进程内启动一个线程` (a thread started inside a `Process`).
//!
//! The seeds sleep for seconds; the pauses here last milliseconds.
//!
//! Run with `cargo run --example threads_basics -p multiproc`.

#![allow(clippy::disallowed_methods)] // its sleeps stand for the seed's `time.sleep`
#![forbid(unsafe_code)]

use std::error::Error;
use std::sync::mpsc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use multiproc::{
    Process, Thread, ThreadBuilder, active_count, current_process, current_thread, join_non_daemon,
};

const THREADS: u32 = 50;
/// The seed's `time.sleep(1)` (or 2) in each of the 50 tasks.
const TASK_PAUSE: Duration = Duration::from_millis(3);

/// `def run_task(i): print(f"{i}子线程{os.getpid()}正在运行!")`; returns the pid it saw.
fn run_task(i: u32) -> u32 {
    let pid = std::process::id();
    println!(
        "  {i}: thread {} of process {pid} is running",
        current_thread().name()
    );
    pid
}

/// Seed 000's `def loop()`.
fn loop_thread() {
    let name = current_thread().name().to_string();
    println!("  thread {name} is running...");
    for n in 1..=5 {
        println!("  thread {name} >>> {n}");
        sleep(Duration::from_millis(10));
    }
    println!("  thread {name} ended.");
}

/// ```python
/// class MyThreading(threading.Thread):
///     def __init__(self, conn): super(MyThreading, self).__init__(); self.conn = conn
///     def run(self): print('run task', self.conn); print('我是子线程： ', threading.current_thread())
/// ```
/// Threads have no `Run` trait (processes do): a thread type is a struct with a `run(self)`
/// method and a `start` that hands it to a [`ThreadBuilder`].
struct MyThreading {
    conn: String,
}

impl MyThreading {
    fn run(self) -> String {
        let me = current_thread();
        println!(
            "  run task {}: I am the child thread {} (ident {})",
            self.conn,
            me.name(),
            me.ident()
        );
        me.name().to_string()
    }

    /// `t.start()`: the thread is named after the task, as `threading.Thread(name=...)` would.
    fn start(self) -> multiproc::Result<Thread<String>> {
        ThreadBuilder::new()
            .name(format!("MyThreading-{}", self.conn))
            .spawn(move || self.run())
    }
}

/// `def Princ(String): print('task', String); time.sleep(1)`, without the print: 50 lines
/// three times over would drown the rest, so each way of joining prints its time instead.
fn princ() {
    sleep(TASK_PAUSE);
}

/// `def Thread(String): print(String)`: runs in a thread of the child process.
fn thread_in_child(s: String) -> String {
    let line = format!(
        "{s}: thread {} of process {} ({})",
        current_thread().name(),
        current_process().name(),
        std::process::id()
    );
    println!("    {line}");
    line
}

/// `def Proces(String)`: prints, then starts a thread inside the child process.
///
/// Python's child waits for its non-daemon threads before it exits; a Rust process does not,
/// so the thread is joined here. (A target's error type must be serde: the error travels as
/// its message.)
fn process_with_thread(s: String) -> Result<String, String> {
    println!(
        "    hello {s}, from {} of process {} ({})",
        current_thread().name(),
        current_process().name(),
        std::process::id()
    );
    let arg = format!("Thread {s}");
    let t = Thread::builder()
        .name("ThreadInChild")
        .spawn(move || thread_in_child(arg))
        .map_err(|e| e.to_string())?;
    t.join().map_err(|e| e.to_string())
}

fn main() -> Result<(), Box<dyn Error>> {
    multiproc::init();
    let main_pid = std::process::id();

    // for i in range(1, 5): p = threading.Thread(target=run_task, args=(i,)); p.start() ...
    println!("== 1. four threads, one process id ==");
    let threads = (1..=4)
        .map(|i| Thread::spawn(move || run_task(i)))
        .collect::<multiproc::Result<Vec<_>>>()?;
    for t in threads {
        assert_eq!(t.join()?, main_pid, "a thread runs in its parent's process");
    }
    println!("  main process {main_pid} ends: every thread saw this pid");

    println!("\n== 2. seed 000: LoopThread ==");
    println!("  thread {} is running...", current_thread().name());
    let t = Thread::builder().name("LoopThread").spawn(loop_thread)?;
    assert_eq!(t.name(), "LoopThread");
    t.join()?;
    println!("  thread {} ended.", current_thread().name());

    // t = MyThreading(); t.start(); print('我是主线程： ', threading.current_thread())
    println!("\n== 3. a thread written as a type; current_thread() here and there ==");
    let t1 = MyThreading { conn: "t1".into() }.start()?;
    let t2 = MyThreading { conn: "t2".into() }.start()?;
    assert_eq!(t1.join()?, "MyThreading-t1");
    assert_eq!(t2.join()?, "MyThreading-t2");
    let me = current_thread();
    println!(
        "  I am the main thread: {} (ident {})",
        me.name(),
        me.ident()
    );
    assert_eq!(me, multiproc::main_thread());

    println!("\n== 4. {THREADS} threads: no join, join in the loop, join all ==");
    // for i in range(50): t = threading.Thread(target=Princ, ...); t.start()
    let start = Instant::now();
    for _ in 0..THREADS {
        drop(Thread::spawn(princ)?); // dropped: detached
    }
    println!(
        "  no join: the loop ended after {:.1} ms, {} threads still listed",
        start.elapsed().as_secs_f64() * 1e3,
        active_count() - 1
    );
    // Python would wait for them when the program ends; Rust does not, so wait here.
    join_non_daemon();
    println!(
        "  ...all done after {:.1} ms",
        start.elapsed().as_secs_f64() * 1e3
    );

    // for i in range(50): t = ...; t.start(); t.join()   # "又成为串行执行": serial again
    let start = Instant::now();
    for _ in 0..THREADS {
        Thread::spawn(princ)?.join()?;
    }
    let serial = start.elapsed();
    println!(
        "  join in the loop: {:.1} ms (one after the other)",
        serial.as_secs_f64() * 1e3
    );

    // t_objs.append(t) ... for t in t_objs: t.join(); print(time.time() - start_time)
    let start = Instant::now();
    let t_objs = (0..THREADS)
        .map(|_| Thread::spawn(princ))
        .collect::<multiproc::Result<Vec<_>>>()?;
    for t in t_objs {
        t.join()?;
    }
    let concurrent = start.elapsed();
    println!(
        "  start all, then join all: {:.1} ms (at the same time)",
        concurrent.as_secs_f64() * 1e3
    );
    assert!(serial >= TASK_PAUSE * THREADS);
    assert!(serial > concurrent);

    // t = MyThreading(); t.start(); print('线程个数： ', threading.active_count())
    println!("\n== 5. active_count() while a thread runs ==");
    let before = active_count();
    let (go, wait) = mpsc::channel::<()>();
    let t = Thread::builder().name("www").spawn(move || {
        println!("  www.anshengme.com");
        let _ = wait.recv(); // runs until main has counted
    })?;
    let during = active_count();
    println!("  number of threads: {during} (the main thread and www)");
    let _ = go.send(());
    t.join()?;
    println!("  after join: {}", active_count());
    assert_eq!((during, active_count()), (before + 1, before));

    // p = Process(target=Proces, args=('World',)); p.start(); p.join()
    println!("\n== 6. a process that starts a thread ==");
    let p = Process::new(process_with_thread, "World".to_string())
        .name("Proces")
        .start()?;
    let line = p.into_result()??; // the child's own error arrives as its message
    assert!(line.starts_with("Thread World: thread ThreadInChild of process Proces"));
    Ok(())
}
