//! Runs `multiproc demo` and checks what it shows.

use std::process::Command;

#[test]
fn demo_runs_the_seeds_master_and_workers() {
    let out = Command::new(env!("CARGO_BIN_EXE_multiproc"))
        .arg("demo")
        .output()
        .expect("run multiproc demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "== 1. the seeds' distributed master and workers over TCP ==",
        "master serves get_task_queue and get_result_queue on 127.0.0.1:",
        "3 worker processes connect over TCP and square the tasks",
        "workers did 10 tasks in all",
        "done: every worker was joined",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    let results = stdout
        .lines()
        .find(|l| l.contains("results: "))
        .expect("a results line");
    assert_eq!(results.matches(" = ").count(), 10, "{results}");
    assert!(
        !stdout.contains("four children"),
        "the tour ran without --tour"
    );
}

#[test]
fn demo_tour_runs_and_shows_each_section() {
    let out = Command::new(env!("CARGO_BIN_EXE_multiproc"))
        .args(["demo", "--tour"])
        .output()
        .expect("run multiproc demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        out.status
    );
    for line in [
        "== 1. four children print their pids ==",
        "== 5. data isolation ==",
        "returned 49",
        "child replied \"HELLO\"",
        "COUNTER is still 100",
        "== 6. a task queue served by worker processes ==",
        "master put 10 tasks and 3 stop signs",
        "3 workers did 10 tasks; results: 1 4 9 16 25 36 49 64 81 100",
        "sum of squares: 385",
        "== 7. a shared counter under a lock ==",
        "4 processes x 250 increments under the lock: total 1000",
        "== 8. a pool of workers, with a progress bar ==",
        "4 workers take 40 tasks through imap_unordered",
        "  pool: 40 tasks on 4 workers, sum 820\n",
        "== 9. a distributed master and workers over TCP ==",
        "3 worker processes connect over TCP and square the tasks",
        "workers did 10 tasks in all",
        "done: every child was joined",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    // Not a terminal: the pool's progress bar stays hidden, the output the same on every run.
    assert!(!stderr.contains("/40 tasks"), "a bar was drawn:\n{stderr}");
    for i in 1..=4 {
        assert!(stdout.contains(&format!("child {i}: Process-")), "{stdout}");
    }
    let daemon = stdout
        .lines()
        .find(|l| l.contains("middle child ended"))
        .expect("daemon section");
    assert!(daemon.ends_with("gone"), "{daemon}");
}

#[test]
fn unknown_subcommand_fails() {
    let out = Command::new(env!("CARGO_BIN_EXE_multiproc"))
        .arg("no-such-command")
        .output()
        .expect("run multiproc");
    assert!(!out.status.success());
}
