//! Process start, join, exit codes, signals, daemons and reaping, across the start methods.

mod common;

use std::time::{Duration, Instant};

use common::{Guarded, eventually, is_our_process, pidfd, wait_exit};
use multiproc::{
    Connection, ErrorKind, Pipe, Process, StartMethod, current_process, parent_process,
};

fn square(x: u64) -> u64 {
    x * x
}

/// Blocks until the connection yields something or closes: a child that runs until told.
fn wait_for_word(conn: Connection<String>) -> String {
    conn.recv().unwrap_or_else(|e| format!("closed: {e}"))
}

#[test]
fn returns_a_value_with_each_start_method() {
    for method in [StartMethod::Spawn, StartMethod::ForkServer] {
        let p = Process::new(square, 12)
            .start_method(method)
            .start()
            .unwrap();
        let pid = p.pid();
        assert!(pid > 0);
        assert_eq!(p.into_result().unwrap(), 144, "{method:?}");
    }
}

#[test]
fn fifty_children_at_once() {
    let procs: Vec<_> = (0..50u64)
        .map(|i| Guarded::new(Process::new(square, i).start().unwrap()))
        .collect();
    let pids: Vec<i32> = procs.iter().map(|p| p.pid()).collect();
    let mut sum = 0;
    for p in procs {
        sum += p.into_inner().into_result().unwrap();
    }
    assert_eq!(sum, (0..50u64).map(|i| i * i).sum::<u64>());
    // Every child has been reaped: none is left as a zombie of ours.
    assert!(pids.iter().all(|&pid| !is_our_process(pid)), "zombies left");
}

/// Recurses until the stack runs out.
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let frame = [depth; 32];
    std::hint::black_box(&frame);
    recurse(depth + 1) + frame[1]
}

#[test]
fn a_stack_overflow_is_reported_as_such() {
    for method in [StartMethod::Spawn, StartMethod::ForkServer] {
        let mut p = Process::new(recurse, 0)
            .name("deep")
            .start_method(method)
            .start()
            .unwrap();
        let err = p.join().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ProcessFailed, "{method:?}: {err}");
        assert!(
            matches!(err, multiproc::Error::StackOverflow { .. }),
            "{method:?}: {err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("\"deep\"") && msg.contains("overflowed its stack"),
            "{msg}"
        );
        // Aborted, as a Rust program is (not SIGSEGV).
        assert_eq!(p.exitcode(), Some(-6), "{method:?}");
    }
}

#[test]
fn a_panic_comes_back_with_its_message() {
    let mut p = Process::new(|n: u32| -> u32 { panic!("the child gave up at {n}") }, 7)
        .name("quitter")
        .start()
        .unwrap();
    let err = p.join().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Panicked);
    let msg = err.to_string();
    assert!(msg.contains("the child gave up at 7"), "{msg}");
    assert!(
        msg.contains("quitter") && msg.contains("process_lifecycle.rs"),
        "{msg}"
    );
    assert_eq!(p.exitcode(), Some(1));
    // Joining again gives the same answer.
    assert!(p.join().unwrap_err().to_string().contains("gave up"));
}

#[test]
fn an_err_return_exits_with_code_1_and_comes_back() {
    let mut p = Process::new(
        |x: i32| {
            if x < 0 {
                Err(format!("{x} is negative"))
            } else {
                Ok(x)
            }
        },
        -4,
    )
    .start()
    .unwrap();
    p.join().unwrap();
    assert_eq!(p.exitcode(), Some(1));
    assert_eq!(p.into_result().unwrap(), Err("-4 is negative".to_string()));
}

#[test]
fn kill_and_terminate_give_negative_signal_codes() {
    for (signal, expected) in [("kill", -9), ("terminate", -15)] {
        let (keep, child_end) = Pipe::new::<String>(true).unwrap();
        let mut p = Guarded::new(Process::new(wait_for_word, child_end).start().unwrap());
        assert!(p.is_alive());
        if signal == "kill" {
            p.kill().unwrap()
        } else {
            p.terminate().unwrap()
        }
        let err = p.join_timeout(Duration::from_secs(10)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ProcessFailed, "{err}");
        assert_eq!(p.exitcode(), Some(expected));
        assert!(!p.is_alive());
        drop(keep);
    }
}

#[test]
fn join_with_a_timeout_leaves_the_child_running() {
    let (keep, child_end) = Pipe::new::<String>(true).unwrap();
    let mut p = Guarded::new(Process::new(wait_for_word, child_end).start().unwrap());
    let t = Instant::now();
    let err = p.join_timeout(Duration::from_millis(100)).unwrap_err();
    let waited = t.elapsed();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(
        waited >= Duration::from_millis(100) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    assert!(p.is_alive());
    assert_eq!(p.exitcode(), None);
    keep.send(&"go".into()).unwrap();
    p.join_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(p.0.take().unwrap().into_result().unwrap(), "go");
}

#[test]
fn names_and_identities() {
    let p = Process::new(
        |()| {
            (
                current_process().name().to_string(),
                parent_process().map(|p| p.pid()),
            )
        },
        (),
    )
    .name("task_1")
    .start()
    .unwrap();
    let me = std::process::id() as i32;
    assert_eq!(p.name(), "task_1");
    assert_eq!(p.into_result().unwrap(), ("task_1".to_string(), Some(me)));

    let p = Process::new(|()| (), ()).start().unwrap();
    assert!(p.name().starts_with("Process-"), "{}", p.name());
    p.into_result().unwrap();

    // A grandchild is named after its parent's identity, like CPython's `Process-1:1`.
    fn grandchild_name(_: ()) -> String {
        Process::new(|()| current_process().name().to_string(), ())
            .start()
            .unwrap()
            .into_result()
            .unwrap()
    }
    let outer = Process::new(grandchild_name, ()).start().unwrap();
    let outer_name = outer.name().to_string();
    let inner = outer.into_result().unwrap();
    assert_eq!(inner, format!("{outer_name}:1"));
}

#[test]
fn active_children_lists_running_children_and_reaps_ended_ones() {
    let (keep, child_end) = Pipe::new::<String>(true).unwrap();
    let p = Guarded::new(
        Process::new(wait_for_word, child_end)
            .name("listed")
            .start()
            .unwrap(),
    );
    let pid = p.pid();
    assert!(
        multiproc::active_children()
            .iter()
            .any(|c| c.pid() == pid && c.name() == "listed")
    );
    keep.send(&"done".into()).unwrap();
    let fd = pidfd(pid).unwrap();
    assert!(wait_exit(&fd, Duration::from_secs(10)));
    assert!(!multiproc::active_children().iter().any(|c| c.pid() == pid));
    assert!(!is_our_process(pid), "active_children reaped it");
}

#[test]
fn a_dropped_running_child_is_reaped_in_the_background() {
    let (keep, child_end) = Pipe::new::<String>(true).unwrap();
    let p = Process::new(wait_for_word, child_end).start().unwrap();
    let pid = p.pid();
    drop(p);
    assert!(is_our_process(pid));
    drop(keep); // the child sees end of file and exits
    assert!(
        eventually(Duration::from_secs(10), || !is_our_process(pid)),
        "zombie {pid} left behind"
    );
}

/// Starts a daemon grandchild (from the main thread or another thread), reports its pid, and
/// blocks until killed.
fn start_daemon_then_block((report, from_thread): (Connection<i32>, bool)) {
    let start = move || {
        let (keep, daemon_end) = Pipe::new::<String>(true).unwrap();
        let daemon = Process::new(wait_for_word, daemon_end)
            .daemon(true)
            .start()
            .unwrap();
        let pid = daemon.pid();
        // Neither the handle nor the other end may close: the daemon must run until killed.
        std::mem::forget((daemon, keep));
        pid
    };
    let pid = if from_thread {
        std::thread::spawn(start).join().unwrap()
    } else {
        start()
    };
    report.send(&pid).unwrap();
    let (_keep, block) = Pipe::new::<String>(true).unwrap();
    let _ = block.recv();
}

#[test]
fn a_daemon_dies_with_its_parent_even_on_sigkill() {
    for from_thread in [false, true] {
        let (ours, theirs) = Pipe::new::<i32>(true).unwrap();
        let mut parent = Guarded::new(
            Process::new(start_daemon_then_block, (theirs, from_thread))
                .start()
                .unwrap(),
        );
        let daemon_pid = ours.recv_timeout(Duration::from_secs(10)).unwrap();
        let daemon = pidfd(daemon_pid).unwrap();
        assert!(
            !wait_exit(&daemon, Duration::ZERO),
            "daemon alive while its parent lives"
        );
        parent.kill().unwrap();
        assert!(parent.join_timeout(Duration::from_secs(10)).is_err());
        assert!(
            wait_exit(&daemon, Duration::from_secs(1)),
            "daemon outlived its parent (thread: {from_thread})"
        );
    }
}

#[test]
fn fork_is_refused_in_a_multithreaded_process_and_works_in_a_single_threaded_one() {
    // The test harness runs tests on threads, so this process has several.
    let err = Process::new(square, 3)
        .start_method(StartMethod::Fork)
        .start()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ForkUnsafe, "{err}");

    // A spawned child is single-threaded: it may fork.
    fn fork_inside(x: u64) -> (u64, bool) {
        let p = Process::new(square, x)
            .start_method(StartMethod::Fork)
            .start()
            .unwrap();
        let pid = p.pid();
        (p.into_result().unwrap(), pid != std::process::id() as i32)
    }
    assert_eq!(
        Process::new(fork_inside, 9)
            .start()
            .unwrap()
            .into_result()
            .unwrap(),
        (81, true)
    );
}

#[test]
fn children_get_stdin_from_dev_null() {
    let p = Process::new(
        |()| {
            let mut s = String::new();
            std::io::stdin().read_line(&mut s).unwrap()
        },
        (),
    )
    .start()
    .unwrap();
    assert_eq!(p.into_result().unwrap(), 0);
}

#[test]
fn a_run_struct_is_a_process() {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Adder {
        items: Vec<i64>,
    }
    impl multiproc::Run for Adder {
        type Output = i64;
        fn run(self) -> i64 {
            self.items.iter().sum()
        }
    }
    let p = Process::from_run(Adder {
        items: vec![1, 2, 3, 4],
    })
    .start_method(StartMethod::ForkServer)
    .start()
    .unwrap();
    assert_eq!(p.into_result().unwrap(), 10);
}

#[test]
fn fork_server_children_report_signals_and_panics() {
    let (keep, child_end) = Pipe::new::<String>(true).unwrap();
    let mut p = Guarded::new(
        Process::new(wait_for_word, child_end)
            .start_method(StartMethod::ForkServer)
            .start()
            .unwrap(),
    );
    p.terminate().unwrap();
    assert_eq!(
        p.join_timeout(Duration::from_secs(10)).unwrap_err().kind(),
        ErrorKind::ProcessFailed
    );
    assert_eq!(p.exitcode(), Some(-15));
    drop(keep);

    let mut p = Process::new(|()| -> () { panic!("forked and failed") }, ())
        .start_method(StartMethod::ForkServer)
        .start()
        .unwrap();
    assert!(
        p.join()
            .unwrap_err()
            .to_string()
            .contains("forked and failed")
    );
    assert_eq!(p.exitcode(), Some(1));
}

/// Run by `a_child_of_another_build_is_refused` in a copy of this binary whose children see
/// a different build fingerprint.
#[test]
#[ignore = "a helper, run by another test"]
fn helper_starts_a_mismatched_child() {
    if std::env::var_os("MULTIPROC_TEST_FINGERPRINT_SALT").is_none() {
        return;
    }
    let mut p = Process::new(square, 3).start().unwrap();
    let err = p.join().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BinaryMismatch, "{err}");
    assert!(err.to_string().contains("not the same executable"), "{err}");
    println!("REFUSED {err}");
}

#[test]
fn a_child_of_another_build_is_refused() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_starts_a_mismatched_child",
            "--ignored",
            "--nocapture",
        ])
        .env("MULTIPROC_TEST_FINGERPRINT_SALT", "-other-build")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("REFUSED"), "{stdout}");
}

#[test]
fn join_comes_in_four_forms() {
    let (parent_end, child_end) = Pipe::new::<String>(true).unwrap();
    let mut p = Guarded::new(Process::new(wait_for_word, child_end).start().unwrap());
    // Running: the forms that wait less say so, with what they waited.
    let err = p.try_join().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    let err = p.join_timeout(Duration::from_millis(20)).unwrap_err();
    assert!(err.to_string().contains("20ms"), "{err}");
    let soon = Instant::now() + Duration::from_millis(20);
    assert_eq!(
        p.join_deadline(soon).unwrap_err().kind(),
        ErrorKind::Timeout
    );
    assert!(Instant::now() >= soon);
    // Told to finish: join waits for it, and every form then agrees.
    parent_end.send(&"bye".to_string()).unwrap();
    p.join().unwrap();
    p.try_join().unwrap();
    p.join_deadline(Instant::now()).unwrap();
    assert_eq!(p.0.take().unwrap().into_result().unwrap(), "bye");
}
