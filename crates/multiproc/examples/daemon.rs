//! Daemon processes die with their parent.
//!
//! Run with `cargo run --example daemon -p multiproc`.

use std::time::Duration;

use multiproc::{Connection, Pipe, Process};

/// A daemon that would loop forever: only its parent's end stops it.
fn forever(_: ()) {
    loop {
        std::thread::park();
    }
}

/// A child that starts the daemon, reports its pid, and ends when told to. (A target's error
/// type must be serde, so `multiproc::Error` travels as its message.)
fn middle(conn: Connection<i32>) -> Result<(), String> {
    let run = || -> multiproc::Result<()> {
        let daemon = Process::new(forever, ())
            .name("forever")
            .daemon(true)
            .start()?;
        conn.send(&daemon.pid())?;
        conn.recv()?; // wait for the go-ahead, then return: this process ends, and so does the daemon
        Ok(())
    };
    run().map_err(|e| e.to_string())
}

/// `def task(name): print('德邦总管:%s' % name); time.sleep(3); print('德邦总管:%s' % name)`
#[allow(clippy::disallowed_methods)] // simulates three seconds of work, as the seed's time.sleep(3)
fn task((name, ready): (String, Connection<bool>)) {
    println!("  daemon: {name} starts");
    let _ = ready.send(&true);
    std::thread::sleep(Duration::from_secs(3));
    println!("  daemon: {name} finishes"); // never printed: the main process ends first
}

/// The state letter of `/proc/<pid>/stat` (`S` sleeping, `R` running, `Z` zombie), `None` once
/// the process is gone.
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn describe(pid: i32) -> String {
    proc_state(pid).map_or("gone".into(), |s| format!("alive (state {s})"))
}

fn main() -> multiproc::Result<()> {
    multiproc::init();

    println!("== a daemon that loops forever dies with its parent ==");
    let (ours, theirs) = Pipe::new::<i32>(true)?;
    let mut parent = Process::new(middle, theirs).name("middle").start()?;
    let daemon_pid = ours.recv()?;
    println!(
        "  {} ({}) started daemon {daemon_pid}: {}",
        parent.name(),
        parent.pid(),
        describe(daemon_pid)
    );
    ours.send(&0)?; // let the middle process end
    parent.join()?;
    println!(
        "  {} ended (exit code {:?}); daemon {daemon_pid}: {}",
        parent.name(),
        parent.exitcode(),
        describe(daemon_pid)
    );
    assert_eq!(parent.exitcode(), Some(0));
    assert_eq!(proc_state(daemon_pid), None, "the daemon should be gone");
    println!("  the daemon is gone: its parent terminated it on the way out");

    // p1 = Process(target=task, args=('大张红',)); p1.daemon = True; p1.start()
    // time.sleep(1); print('恕瑞玛皇帝:小吴勇嗝屁了')
    // (Setting `daemon` after `start` is a compile error here, not an AssertionError.)
    println!("\n== the seed's daemon: it never finishes its task ==");
    let (ready_rx, ready_tx) = Pipe::new::<bool>(false)?;
    let p = Process::new(task, ("task-1".to_string(), ready_tx))
        .daemon(true)
        .start()?;
    ready_rx.recv()?; // instead of time.sleep(1): wait until the daemon has started
    println!("  main: daemon alive: {}", p.is_alive());
    println!("  main: ends now; init()'s exit hook terminates the daemon mid-task");
    Ok(())
}
