//! `multiproc worker | submit | collect | status | dead` on a Redis broker: the same commands as
//! on a manager with `-b redis://…`, a Python worker (redis-py) taking our tasks, a worker
//! killed mid-task, tasks that keep failing, and a broker that is not there.

#[path = "../../multiproc/tests/common/redis.rs"]
mod redis_server;

use std::collections::BTreeSet;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use redis_server::{RedisServer, free_port};

mod common;
use common::group::Group;
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
    // Under another key prefix, given to both.
    lines(&multiproc(&redis, &["submit", "--prefix", "py:", "6"]));
    let py = Command::new("python3")
        .args([script, &redis.url(), "--idle", "0.5", "--prefix", "py:"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&py.stdout);
    assert!(said.contains("python worker: 1 tasks done"), "{said}");
    assert_eq!(
        lines(&multiproc(
            &redis,
            &["collect", "--prefix", "py:", "--count", "1"]
        )),
        squares([6])
    );
    assert_eq!(redis.cli_text(&["EXISTS", "py:task", "py:result"]), "2");
    // A queue under its old keys (made before prefixes) is found there with the default.
    lines(&multiproc(
        &redis,
        &["submit", "--prefix", "", "--queue", "legacy", "7"],
    ));
    let py = Command::new("python3")
        .args([script, &redis.url(), "--idle", "0.5", "--tasks", "legacy"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&py.stdout);
    assert!(said.contains("python worker: 1 tasks done"), "{said}");
    assert_eq!(
        lines(&multiproc(&redis, &["collect", "--count", "1"])),
        squares([7])
    );
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
        .cli_text(&["XPENDING", "multiproc:task", "multiproc"])
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
            .args(["XADD", "multiproc:task", "*", "codec", "json", "body"])
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

/// The lines a child writes on its standard output, as they come (read by a thread of their
/// own, so that the test waits for them with a deadline).
struct Lines(std::sync::mpsc::Receiver<String>);

impl Lines {
    fn of(child: &mut Child) -> Lines {
        use std::io::BufRead;
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines(rx)
    }

    /// The next line; fails the test if none comes within 30 s.
    fn next(&self) -> String {
        self.0
            .recv_timeout(Duration::from_secs(30))
            .expect("a line within 30 s")
    }

    /// Lines until one for which `pick` says something, which it returns; fails the test if
    /// none comes within 60 s.
    fn until<T>(&self, what: &str, mut pick: impl FnMut(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.0.recv_timeout(left) {
                Ok(line) => match pick(&line) {
                    Some(v) => return v,
                    None => seen.push(line),
                },
                Err(_) => panic!("no {what} in 60 s; got:\n{}", seen.join("\n")),
            }
        }
    }
}

/// `multiproc status --watch …` on `redis`, its standard output piped.
fn watcher(redis: &RedisServer, args: &[&str]) -> Group {
    Group::spawn(
        Command::new(BIN)
            .arg("status")
            .args(args)
            .env("MULTIPROC_BROKER", redis.url())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    )
}

/// Sends SIGINT to the watcher and waits for its exit status (at most 30 s).
fn interrupt(watcher: &mut Group) -> std::process::ExitStatus {
    // SAFETY: kill takes a pid and a signal; the pid is our child's, not yet waited for.
    unsafe { libc::kill(watcher.child().id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = watcher.child().try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "status --watch did not stop on SIGINT"
        );
        std::thread::park_timeout(Duration::from_millis(20));
    }
}

#[test]
fn status_watch_prints_a_json_line_per_interval_with_rates_until_ctrl_c() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mut watch = watcher(&redis, &["--watch", "0.2", "--json", "task"]);
    let out = Lines::of(watch.child());
    let first: serde_json::Value = serde_json::from_str(&out.next()).expect("JSON");
    let queue = &first["queues"][0];
    assert_eq!(queue["queue"], "task", "{first}");
    assert_eq!(queue["waiting"], 0, "{first}");
    assert_eq!(queue["stream"], "multiproc:task", "{first}");
    assert!(
        first["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{first}"
    );
    // No rate before there are two readings.
    assert!(queue["put_per_second"].is_null(), "{first}");
    lines(&multiproc(&redis, &["submit", "1", "2", "3"]));
    // Every line is one JSON document; one of them shows the three tasks, put at some rate.
    let later = out.until("line with 3 tasks waiting", |line| {
        let doc: serde_json::Value = serde_json::from_str(line).expect("each line is JSON");
        (doc["queues"][0]["waiting"] == 3).then_some(doc)
    });
    let queue = &later["queues"][0];
    assert_eq!(queue["added"], 3, "{later}");
    assert!(
        queue["put_per_second"].as_f64().is_some_and(|r| r > 0.0),
        "{later}"
    );
    assert_eq!(queue["done_per_second"].as_f64(), Some(0.0), "{later}");
    let status = interrupt(&mut watch);
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn status_watch_shows_an_error_line_while_the_broker_is_down_and_keeps_watching() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    // Standard output is no terminal: each table after a blank line and a timestamp.
    let mut watch = watcher(&redis, &["task", "--watch", "0.2"]);
    let out = Lines::of(watch.child());
    assert!(out.next().starts_with("# "));
    let header = out.next();
    assert!(
        header.starts_with("queue") && header.contains("put/s") && header.contains("done/s"),
        "{header}"
    );
    let row = out.next();
    assert_eq!(row.split_whitespace().next(), Some("task"), "{row}");
    assert_eq!(out.next(), "", "a blank line between tables");
    redis.restart(|| {
        let error = out.until("error line", |line| {
            line.starts_with("task ")
                .then_some(line)
                .filter(|l| l.contains("error:"))
                .map(str::to_string)
        });
        assert!(error.contains(&redis_url_of(&error)), "{error}");
        // Still watching: more tables come.
        out.until("timestamp", |line| line.starts_with("# ").then_some(()));
        assert!(
            watch.child().try_wait().unwrap().is_none(),
            "the watcher ended"
        );
    });
    // Back: rows with numbers again.
    out.until("row with numbers", |line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        (words.first() == Some(&"task") && words.get(1) == Some(&"0")).then_some(())
    });
    let status = interrupt(&mut watch);
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// The `redis://…` URL an error line names (the library names the broker it could not reach).
fn redis_url_of(line: &str) -> String {
    line.split_whitespace()
        .find(|w| w.starts_with("redis://"))
        .map(|w| w.trim_end_matches(':').to_string())
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
}

#[test]
fn status_marks_a_queue_under_its_old_keys_and_migrate_keys_moves_it_whole() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // The subcommand, then its arguments with `--prefix ""`.
    let old = |args: &[&str]| {
        let mut all = vec![args[0], "--prefix", ""];
        all.extend(&args[1..]);
        multiproc(&redis, &all)
    };
    // A queue as an earlier multiproc left it: a dead letter and two tasks, at the bare name.
    lines(&old(&["submit", "doomed"]));
    let failing = old(&[
        "worker",
        "--idle",
        "0.5",
        "--max-deliveries",
        "1",
        "--",
        "sh",
        "-c",
        "exit 1",
    ]);
    assert!(!failing.status.success());
    lines(&old(&["submit", "2", "3"]));
    assert_eq!(redis.cli_text(&["XLEN", "task:dead"]), "1");
    // With the default prefix it is found there, marked, and the warning says how to move it.
    let out = multiproc(&redis, &["status", "task"]);
    let shown = String::from_utf8_lossy(&out.stdout);
    let row = shown.lines().find(|l| l.starts_with("task*")).unwrap_or("");
    assert_eq!(row.split_whitespace().nth(1), Some("2"), "{shown}");
    assert!(shown.contains("--migrate-keys"), "{shown}");
    let warned = String::from_utf8_lossy(&out.stderr);
    assert_eq!(warned.matches("old keys").count(), 1, "{warned}");
    assert!(warned.contains("--migrate-keys task"), "{warned}");
    let json: serde_json::Value =
        serde_json::from_slice(&multiproc(&redis, &["status", "--json", "-q", "task"]).stdout)
            .unwrap();
    assert_eq!(
        (&json[0]["old_keys"], &json[0]["stream"]),
        (&true.into(), &"task".into()),
        "{json}"
    );
    assert_eq!(redis.cli_text(&["KEYS", "multiproc:*"]), "");

    let moved = lines(&multiproc(&redis, &["status", "--migrate-keys", "task"]));
    let moved = moved.iter().next().unwrap();
    assert!(
        moved.starts_with("task: moved task -> multiproc:task,")
            && moved.contains("task:dead -> multiproc:task:dead"),
        "{moved}"
    );
    assert_eq!(redis.cli_text(&["EXISTS", "task", "task:dead"]), "0");
    assert_eq!(redis.cli_text(&["XLEN", "multiproc:task"]), "2");
    assert_eq!(redis.cli_text(&["XLEN", "multiproc:task:dead"]), "1");
    let out = multiproc(&redis, &["status", "task"]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(!shown.contains('*') && out.stderr.is_empty(), "{shown}");
    assert_eq!(lines(&multiproc(&redis, &["dead", "ls", "task"])).len(), 1);
    // Again: nothing to move. A queue that is not there: said so, exit 1.
    let again = lines(&multiproc(&redis, &["status", "--migrate-keys", "task"]));
    assert!(
        again.iter().all(|l| l.contains("nothing to move")),
        "{again:?}"
    );
    let out = multiproc(&redis, &["status", "--migrate-keys", "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no such queue"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The tasks are done under the new keys.
    lines(&multiproc(&redis, &["worker", "--square", "--idle", "0.5"]));
    assert_eq!(
        lines(&multiproc(&redis, &["collect", "--count", "2"])),
        squares([2, 3])
    );
}

#[test]
fn every_broker_command_takes_the_prefix_from_the_flag_or_the_environment() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    lines(&multiproc(
        &redis,
        &["submit", "--prefix", "app:", "4", "5"],
    ));
    assert_eq!(redis.cli_text(&["XLEN", "app:task"]), "2");
    let with_env = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env("MULTIPROC_BROKER", redis.url())
            .env("MULTIPROC_PREFIX", "app:")
            .output()
            .unwrap()
    };
    lines(&with_env(&["worker", "--square", "--idle", "0.5"]));
    let status: serde_json::Value =
        serde_json::from_slice(&with_env(&["status", "--json", "task", "result"]).stdout).unwrap();
    assert_eq!(status[0]["stream"], "app:task", "{status}");
    assert_eq!(status[1]["waiting"], 2, "{status}");
    assert_eq!(
        lines(&multiproc(
            &redis,
            &["collect", "--prefix", "app:", "--count", "2"]
        )),
        squares([4, 5])
    );
    assert_eq!(redis.cli_text(&["KEYS", "multiproc:*"]), "");
    // The demo too: its queues under the prefix, gone afterwards.
    let out = with_env(&["demo", "--broker", &redis.url()]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("streams app:demo-"), "{said}");
    assert_eq!(redis.cli_text(&["KEYS", "app:demo-*"]), "");
    // A prefix the URL gives too, another one: refused, naming both.
    let out = multiproc(
        &redis,
        &[
            "submit",
            "-b",
            &format!("{}?prefix=x", redis.url()),
            "--prefix",
            "y",
            "1",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("two key prefixes"), "{err}");
}

#[test]
fn status_shows_the_queues_a_broker_pool_keeps_beside_one() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // A pool's high-priority stream and a stream of tasks waiting for their build's workers;
    // beside them keys that are not queues of its own.
    for key in [
        "multiproc:jobs:high",
        "multiproc:jobs@0123456789abcdef",
        "multiproc:jobs@0123456789abcdef:dead",
        "multiproc:jobsmore",
    ] {
        redis.cli(&["XADD", key, "*", "codec", "json", "body", "1"]);
    }
    let out = multiproc(&redis, &["status", "--json", "jobs"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let names: Vec<&str> = status
        .as_array()
        .expect("an array")
        .iter()
        .map(|q| q["queue"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        names,
        ["jobs", "jobs:high", "jobs@0123456789abcdef"],
        "{status}"
    );
    assert_eq!(status[1]["waiting"], 1, "{status}");
    assert_eq!(status[2]["waiting"], 1, "{status}");
}
