//! Zombies and orphans (僵尸进程与孤儿进程): `join` reaps a finished child, and a daemon is
//! killed with its parent instead of being orphaned.
//!
//! Run with `cargo run --example zombie_orphan -p multiproc`.

use std::time::{Duration, Instant};

use multiproc::{Connection, Pipe, Process};

/// `def run_task(i): print(f"{i} 进程{os.getpid()}正在 运行")`
fn run_task(i: u32) {
    println!("  {i}: process {} is running", std::process::id());
}

/// A child that ends at once; `_alive` closes when it exits.
fn short_task(_alive: Connection<()>) {
    println!("  process {} is running", std::process::id());
}

/// A daemon that would loop forever.
fn forever(_: ()) {
    loop {
        std::thread::park();
    }
}

/// An ordinary child that runs until the main process says so.
fn worker(conn: Connection<()>) {
    let _ = conn.recv();
}

/// Starts a daemon and an ordinary child, reports their pids, and ends when told to. On the way
/// out it terminates the daemon and joins the worker, as a Python process does.
fn middle((conn, worker_conn): (Connection<(i32, i32)>, Connection<()>)) -> Result<(), String> {
    let run = || -> multiproc::Result<()> {
        let daemon = Process::new(forever, ()).daemon(true).start()?;
        let worker = Process::new(worker, worker_conn).start()?;
        conn.send(&(daemon.pid(), worker.pid()))?;
        conn.recv()?; // the go-ahead to end
        Ok(())
    };
    run().map_err(|e| e.to_string())
}

/// State letter and parent pid from `/proc/<pid>/stat`, `None` once the pid is gone.
fn proc_stat(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.next()?.parse().ok()?))
}

fn describe(pid: i32) -> String {
    match proc_stat(pid) {
        None => "gone".to_string(),
        Some(('Z', ppid)) => format!("zombie (Z), parent {ppid}"),
        Some((state, ppid)) => format!("state {state}, parent {ppid}"),
    }
}

fn main() -> multiproc::Result<()> {
    multiproc::init();

    // 所有的进程都会变成僵尸进程: every process is a zombie from its end until its parent
    // collects it; p.join() does.
    println!("== a finished child is a zombie until join() reaps it ==");
    let (done, alive) = Pipe::new::<()>(false)?;
    let mut p = Process::new(short_task, alive).start()?;
    let _ = done.recv(); // `Closed` once the child has exited
    // The kernel marks the child a zombie right after closing its files: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(1);
    while proc_stat(p.pid()).is_some_and(|(s, _)| s != 'Z') && Instant::now() < deadline {
        std::thread::yield_now();
    }
    println!("  child {} has ended: {}", p.pid(), describe(p.pid()));
    p.join()?;
    println!("  after join: {}", describe(p.pid()));
    assert_eq!(proc_stat(p.pid()), None);

    // 对开启的子进程使用join: for i in range(1, 5): p = Process(...); p.start() ... p.join()
    // (start() also reaps children that ended meanwhile, as Python's does.)
    println!("\n== join every child: no zombie is left ==");
    let mut children = Vec::new();
    for i in 1..=4 {
        children.push(Process::new(run_task, i).start()?);
    }
    for p in &mut children {
        p.join()?;
        println!("  joined {}: {}", p.pid(), describe(p.pid()));
        assert_eq!(proc_stat(p.pid()), None);
    }

    // 孤儿进程: an orphan is a child whose parent ended first; init adopts it.
    // A multiproc parent never leaves one behind: at its end it terminates its daemons and
    // joins the others, and a daemon is killed by the kernel even if its parent is SIGKILLed.
    println!("\n== a parent with children ends: who becomes an orphan? ==");
    let (ours, theirs) = Pipe::new::<(i32, i32)>(true)?;
    let (to_worker, worker_conn) = Pipe::new::<()>(true)?;
    let mut parent = Process::new(middle, (theirs, worker_conn))
        .name("middle")
        .start()?;
    let (daemon_pid, worker_pid) = ours.recv()?;
    println!("  middle {} started:", parent.pid());
    println!("    daemon {daemon_pid}: {}", describe(daemon_pid));
    println!("    worker {worker_pid}: {}", describe(worker_pid));
    ours.send(&(0, 0))?; // the middle ends now...
    to_worker.send(&())?; // ...once its worker has finished
    parent.join()?;
    println!("  middle ended (exit code {:?})", parent.exitcode());
    println!(
        "    daemon {daemon_pid}: {}: terminated by its parent",
        describe(daemon_pid)
    );
    println!(
        "    worker {worker_pid}: {}: joined by its parent",
        describe(worker_pid)
    );
    assert_eq!(parent.exitcode(), Some(0));
    assert_eq!(proc_stat(daemon_pid), None, "the daemon was orphaned");
    assert_eq!(proc_stat(worker_pid), None, "the worker was orphaned");
    println!("  neither was left to init as an orphan");
    Ok(())
}
