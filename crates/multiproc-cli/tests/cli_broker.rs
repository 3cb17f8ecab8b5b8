//! `multiproc worker | submit | collect | status | dead` on a Redis broker: the same commands as
//! on a manager with `-b redis://…`, a Python worker (redis-py) taking our tasks, a worker
//! killed mid-task, tasks that keep failing, and a broker that is not there.

#[path = "../../multiproc/tests/common/redis.rs"]
mod redis_server;

use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use redis_server::{RedisServer, free_port};

mod common;
use common::hostile::{HOSTILE, WorkDir};

const BIN: &str = env!("CARGO_BIN_EXE_multiproc");

fn multiproc(redis: &RedisServer, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("MULTIPROC_BROKER", redis.url())
        .output()
        .expect("run multiproc")
}

fn lines(out: &Output) -> BTreeSet<String> {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn squares(ns: impl IntoIterator<Item = i64>) -> BTreeSet<String> {
    ns.into_iter()
        .map(|n| format!("{n} * {n} = {}", n * n))
        .collect()
}

/// A child in its own process group, killed with the whole group when the test ends.
struct Group(Child);

impl Group {
    fn spawn(cmd: &mut Command) -> Group {
        Group(cmd.process_group(0).spawn().expect("spawn"))
    }

    fn kill(&mut self) {
        // SAFETY: killpg takes a process-group id and a signal; the group is our child's.
        unsafe { libc::killpg(self.0.id() as i32, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn workers_submit_and_collect_run_the_seed_on_redis() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let tasks: Vec<String> = (1..=12).map(|n| n.to_string()).collect();
    let mut submit = vec!["submit"];
    submit.extend(tasks.iter().map(String::as_str));
    lines(&multiproc(&redis, &submit));
    let workers: Vec<Group> = (0..2)
        .map(|_| {
            Group::spawn(
                Command::new(BIN)
                    .args(["worker", "--square", "--idle", "1", "-b", &redis.url()])
                    .stdout(Stdio::null()),
            )
        })
        .collect();
    let got = lines(&multiproc(&redis, &["collect", "--count", "12"]));
    assert_eq!(got, squares(1..=12));
    drop(workers);
    let status = lines(&multiproc(&redis, &["status", "task", "result"]));
    let task_row = status.iter().find(|l| l.starts_with("task ")).unwrap();
    let numbers: Vec<&str> = task_row.split_whitespace().collect();
    assert_eq!(&numbers[1..4], ["0", "0", "0"], "{task_row}");
}

#[test]
fn a_python_worker_takes_tasks_that_multiproc_submitted() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let has_redis_py = Command::new("python3")
        .args(["-c", "import redis"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_redis_py {
        assert!(
            std::env::var_os("CI").is_none(),
            "redis-py is not installed (.ci/run installs it)"
        );
        eprintln!("skipped: python3 with redis-py is not installed");
        return;
    }
    lines(&multiproc(&redis, &["submit", "3", "4", "five"]));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/redis_worker.py");
    let py = Command::new("python3")
        .args([script, &redis.url(), "--idle", "0.5"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&py.stdout);
    assert!(
        py.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&py.stderr)
    );
    assert!(said.contains("python worker: 3 tasks done"), "{said}");
    let got = lines(&multiproc(&redis, &["collect", "--count", "3"]));
    let want: BTreeSet<String> = ["3 * 3 = 9", "4 * 4 = 16", "FIVE"].map(String::from).into();
    assert_eq!(got, want);
}

#[test]
fn a_worker_killed_mid_task_leaves_it_to_another_and_each_result_comes_once() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let flag = redis.dir().join("go");
    lines(&multiproc(&redis, &["submit", "1", "2", "3"]));
    // Hangs on every task until the flag exists, then echoes it.
    let body = format!(
        "while [ ! -e {} ]; do sleep 0.05; done; echo done-$0",
        flag.display()
    );
    // The first worker sets the queue's lease (0.5 s), the second asks for the same.
    let worker = || {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "worker",
            "--lease",
            "0.5",
            "--idle",
            "2",
            "-b",
            &redis.url(),
        ])
        .args(["--", "sh", "-c", &body, "{}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        cmd
    };
    let mut stuck = Group::spawn(&mut worker());
    // Wait until it holds a task, then kill it (and the command it runs).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !redis
        .cli_text(&["XPENDING", "task", "multiproc"])
        .starts_with('1')
    {
        assert!(Instant::now() < deadline, "the worker took no task");
        std::thread::park_timeout(Duration::from_millis(20));
    }
    stuck.kill();
    std::fs::write(&flag, b"").unwrap();
    let _other = Group::spawn(&mut worker());
    let got = lines(&multiproc(&redis, &["collect", "--count", "3"]));
    let want: BTreeSet<String> = ["done-1", "done-2", "done-3"].map(String::from).into();
    assert_eq!(got, want);
}

#[test]
fn failing_tasks_end_in_the_dead_letters_and_can_be_requeued() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    lines(&multiproc(&redis, &["submit", "x", "y"]));
    let worker = |cmd: &[&str]| {
        let mut args = vec!["worker", "--idle", "0.5", "--max-deliveries", "2", "--"];
        args.extend(cmd);
        multiproc(&redis, &args)
    };
    // A worker whose tasks failed says how many and exits non-zero: two tasks, two tries each.
    let failing = worker(&["sh", "-c", "echo no way >&2; exit 3"]);
    assert!(!failing.status.success());
    let err = String::from_utf8_lossy(&failing.stderr);
    assert!(err.contains("multiproc: 4 tasks failed"), "{err}");
    let dead = lines(&multiproc(&redis, &["dead", "ls", "task"]));
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(
        dead.iter()
            .all(|l| l.contains("no way") && l.contains("\t2\t")),
        "{dead:?}"
    );
    // The same as JSON, for scripts.
    let json = |args: &[&str]| -> serde_json::Value {
        let out = multiproc(&redis, args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON")
    };
    let letters = json(&["dead", "ls", "--json", "task"]);
    let letters = letters.as_array().expect("an array");
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(
        letters
            .iter()
            .all(|l| l["deliveries"] == 2
                && l["reason"].as_str().is_some_and(|r| r.contains("no way"))),
        "{letters:?}"
    );
    let status = json(&["status", "--json", "task"]);
    assert_eq!(status[0]["queue"], "task", "{status}");
    assert_eq!(status[0]["dead"], 2, "{status}");
    assert_eq!(status[0]["waiting"], 0, "{status}");
    let status = lines(&multiproc(&redis, &["status", "task"]));
    assert!(
        status
            .iter()
            .any(|l| l.split_whitespace().nth(3) == Some("2")),
        "{status:?}"
    );
    assert_eq!(
        lines(&multiproc(&redis, &["dead", "requeue", "task"])),
        BTreeSet::from(["requeued 2".to_string()])
    );
    lines(&worker(&["echo", "fixed-{}"]));
    let got = lines(&multiproc(&redis, &["collect", "--count", "2"]));
    assert_eq!(got, BTreeSet::from(["fixed-x".into(), "fixed-y".into()]));
    assert_eq!(
        lines(&multiproc(&redis, &["dead", "purge", "task"])),
        BTreeSet::from(["purged 0".to_string()])
    );
}

#[test]
fn an_unreachable_broker_is_a_clear_error() {
    let url = format!("redis://127.0.0.1:{}/0", free_port());
    let out = Command::new(BIN)
        .args(["submit", "-b", &url, "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&url) && err.contains("cannot connect"),
        "{err}"
    );
    let out = Command::new(BIN)
        .args(["dead", "-b", "127.0.0.1:5000", "ls"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a Redis broker"));
}

#[test]
fn tasks_the_broker_refuses_make_submit_fail() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    lines(&multiproc(&redis, &["submit", "0"]));
    // Out of memory under noeviction: every write is refused, the puts' too.
    redis.cli(&["CONFIG", "SET", "maxmemory", "1"]);
    let out = multiproc(&redis, &["submit", "1", "2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("OOM") && err.contains("refused"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("submitted"));
}

#[test]
fn the_demo_runs_the_seed_on_a_broker_and_cleans_up() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let out = Command::new(BIN)
        .args(["demo", "--broker", &redis.url()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("3 worker processes take the tasks from the broker"),
        "{said}"
    );
    assert!(
        said.contains("workers did 10 tasks in all; every task acknowledged"),
        "{said}"
    );
    assert_eq!(
        redis.cli_text(&["DBSIZE"]),
        "0",
        "the demo left keys behind"
    );
}

#[test]
fn a_tls_broker_is_used_with_its_certificate_checked() {
    let Some(redis) = RedisServer::start_tls() else {
        return;
    };
    let url = redis.tls_url().unwrap();
    let with_ca = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env("MULTIPROC_BROKER", &url)
            .env("SSL_CERT_FILE", redis.ca_file())
            .output()
            .unwrap()
    };
    lines(&with_ca(&["submit", "6", "7"]));
    let worker = with_ca(&["worker", "--square", "--idle", "0.5"]);
    lines(&worker);
    assert_eq!(
        lines(&with_ca(&["collect", "--count", "2"])),
        squares([6, 7])
    );
    // Without the CA the server's certificate is not trusted: a clear error, not a hang.
    let out = Command::new(BIN)
        .args(["submit", "-b", &url, "1"])
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&url) && err.contains("certificate"), "{err}");
}

/// A worker in `dir`, running `command` on the broker's tasks.
fn worker_in(redis: &RedisServer, dir: &WorkDir, command: &[&str]) -> Output {
    Command::new(BIN)
        .args(["worker", "--idle", "0.5", "--"])
        .args(command)
        .env("MULTIPROC_BROKER", redis.url())
        .current_dir(&dir.0)
        .output()
        .unwrap()
}

#[test]
fn hostile_task_texts_reach_the_command_as_data_never_as_code() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let dir = WorkDir::new("hostile-broker");
    let mut submit = vec!["submit"];
    submit.extend(HOSTILE);
    lines(&multiproc(&redis, &submit));
    lines(&worker_in(&redis, &dir, &["sh", "-c", "printf '<%s>' {}"]));
    let count = HOSTILE.len().to_string();
    let collected = multiproc(&redis, &["collect", "--count", &count]);
    lines(&collected);
    let expected: String = HOSTILE.iter().map(|t| format!("<{t}>\n")).collect();
    assert_eq!(String::from_utf8_lossy(&collected.stdout), expected);
    assert!(dir.entries().is_empty(), "{:?}", dir.entries());
}

#[test]
fn an_entry_that_is_not_utf8_goes_to_the_dead_letters_unrun_and_is_listed_escaped() {
    use std::os::unix::ffi::OsStrExt;
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let dir = WorkDir::new("bytes-broker");
    // Entries another producer wrote: a body that is not UTF-8, and one whose task holds an
    // escape sequence for the terminal.
    for body in [
        &b"{\"id\": 1, \"task\": \"\xff$(touch pwned6)\"}"[..],
        b"{\"id\": 2, \"task\": 9, \"junk\": \"\x1b[2J\"}x",
    ] {
        let out = Command::new("redis-cli")
            .arg("-s")
            .arg(redis.socket())
            .args(["XADD", "task", "*", "codec", "json", "body"])
            .arg(std::ffi::OsStr::from_bytes(body))
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    let log = lines(&worker_in(&redis, &dir, &["sh", "-c", "printf '<%s>' {}"]));
    assert!(
        log.contains("worker: 0 tasks done, 0 failed, none left"),
        "{log:?}"
    );
    assert!(dir.entries().is_empty(), "{:?}", dir.entries());
    let dead = multiproc(&redis, &["dead", "ls", "task"]);
    let listed = String::from_utf8(dead.stdout.clone()).expect("dead ls prints UTF-8");
    assert_eq!(lines(&dead).len(), 2, "{listed}");
    assert!(!listed.contains('\x1b'), "{listed:?}");
    assert!(listed.contains("\\u{1b}[2J"), "{listed}");
    // Never handed to a worker.
    assert!(
        listed.lines().all(|l| l.split('\t').nth(1) == Some("0")),
        "{listed}"
    );
}

#[test]
fn dead_ls_cuts_a_long_task_unless_asked_for_all_of_it() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let long = "z".repeat(100_000);
    lines(&multiproc(&redis, &["submit", &long]));
    let out = multiproc(
        &redis,
        &[
            "worker",
            "--idle",
            "0.5",
            "--max-deliveries",
            "1",
            "--",
            "sh",
            "-c",
            "cat >&2; exit 1",
        ],
    );
    // The worker's log names the failed task in a line and keeps the end of its error (4 KiB
    // at most), not 100 kB twice over; it ends non-zero, saying a task failed.
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 task failed"));
    assert!(
        out.stderr.len() < 5_000,
        "{} bytes of log",
        out.stderr.len()
    );
    let short = multiproc(&redis, &["dead", "ls", "task"]);
    let text = String::from_utf8_lossy(&short.stdout);
    assert!(text.len() < 1_000 && text.contains("bytes)"), "{text}");
    let full = multiproc(&redis, &["dead", "ls", "--full", "task"]);
    assert!(String::from_utf8_lossy(&full.stdout).contains(&long));
}
