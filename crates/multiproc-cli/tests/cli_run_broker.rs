//! `multiproc run --broker` with `multiproc worker --run-jobs` on a real redis-server: the jobs
//! give what they give here (output, order, tags, exit status, joblog); a forged job, a job
//! replayed into another queue and a job given to a worker not started with `--run-jobs` go
//! to the dead letters and never run; a worker killed mid-job leaves the job to another, and
//! each job's output comes once.

#[path = "../../multiproc/tests/common/redis.rs"]
mod redis_server;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use multiproc::Queue;
use redis_server::RedisServer;

mod common;
use common::group::Group;

const BIN: &str = env!("CARGO_BIN_EXE_multiproc");
const KEY: &str = "the shared authkey";
/// How long anything may take before a test calls it a hang.
const PATIENCE: Duration = Duration::from_secs(60);

/// `multiproc worker --run-jobs` on `queue`, signing with `key`.
fn worker(redis: &RedisServer, queue: &str, key: &str, extra: &[&str]) -> Group {
    Group::spawn(
        Command::new(BIN)
            .args(["worker", "--run-jobs", "--idle", "60", "--tasks", queue])
            .args(extra)
            .args(["-b", &redis.url()])
            .env("MULTIPROC_AUTHKEY", key)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

/// `multiproc run --broker … ARGS` in the background, its output piped.
fn run_remote(redis: &RedisServer, queue: &str, key: &str, args: &[&str]) -> Group {
    Group::spawn(
        Command::new(BIN)
            .args(["run", "--broker", &redis.url(), "--broker-queue", queue])
            .args(args)
            .env("MULTIPROC_AUTHKEY", key)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
}

/// `multiproc run ARGS` here.
fn run_here(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("run")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run")
}

/// Polls `cond` until it holds, at most [`PATIENCE`].
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::park_timeout(Duration::from_millis(20));
    }
}

/// The dead letters of `queue`, as `multiproc dead ls --json` lists them.
fn dead_letters(redis: &RedisServer, queue: &str) -> Vec<serde_json::Value> {
    let out = Command::new(BIN)
        .args(["dead", "-b", &redis.url(), "ls", queue, "--json"])
        .output()
        .expect("dead ls");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

#[test]
fn jobs_run_on_broker_workers_give_what_they_give_here() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let _workers = [
        worker(&redis, "run", KEY, &[]),
        worker(&redis, "run", KEY, &[]),
    ];
    let log = redis.dir().join("joblog");
    let args = [
        "-k",
        "--tag",
        "echo out-{}; echo err-{} >&2; exit {}",
        ":::",
        "0",
        "1",
        "2",
        "0",
    ];
    let mut remote_args = vec!["--joblog", log.to_str().expect("utf-8")];
    remote_args.extend_from_slice(&args);
    let there = run_remote(&redis, "run", KEY, &remote_args).finish();
    let here = run_here(&args);
    assert_eq!(
        String::from_utf8_lossy(&there.stdout),
        String::from_utf8_lossy(&here.stdout)
    );
    assert_eq!(
        there.status.code(),
        here.status.code(),
        "{}",
        String::from_utf8_lossy(&there.stderr)
    );
    assert_eq!(there.status.code(), Some(2), "two jobs failed");
    let stderr = String::from_utf8_lossy(&there.stderr);
    for n in ["0", "1", "2"] {
        assert!(stderr.contains(&format!("{n}\terr-{n}")), "{stderr}");
    }
    // The joblog is written here, with the worker's host in its Host column.
    let text = std::fs::read_to_string(&log).expect("joblog");
    let rows: Vec<Vec<&str>> = text
        .lines()
        .skip(1)
        .map(|l| l.split('\t').collect())
        .collect();
    assert_eq!(rows.len(), 4, "{text}");
    let host = nix::unistd::gethostname().expect("hostname");
    for row in &rows {
        assert_eq!(row[1], host.to_str().expect("utf-8"), "{text}");
    }
    let mut exits: Vec<&str> = rows.iter().map(|r| r[6]).collect();
    exits.sort_unstable();
    assert_eq!(exits, ["0", "0", "1", "2"]);
    // The run's outcome queue is gone with it.
    assert_eq!(redis.cli_text(&["KEYS", "*outcomes*"]), "");
}

#[test]
fn a_forged_replayed_or_unasked_for_job_goes_to_the_dead_letters_unrun() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let dir = redis.dir().to_path_buf();
    let mark = |name: &str| dir.join(name);
    let touch = |name: &str| format!("touch {}", mark(name).display());
    // Each job touches the file its argument names.
    let touch_arg = format!("touch {}/{{}}", dir.display());
    // A genuine job on q1, copied as it is into q2 and q3 before any worker takes it.
    let genuine = run_remote(&redis, "q1", KEY, &[&touch_arg, ":::", "ran-q1"]);
    let q1: Queue<serde_json::Value> = Queue::connect(&redis.url(), "q1").expect("q1");
    let job = q1.get_timeout(PATIENCE).expect("the job in q1");
    q1.put(&job).expect("back into q1");
    q1.flush().expect("flush");
    for other in ["q2", "q3"] {
        let q: Queue<serde_json::Value> = Queue::connect(&redis.url(), other).expect("queue");
        q.put(&job).expect("copy");
        q.flush().expect("flush");
    }
    // The same command signed with another key, on q4.
    let _forger = run_remote(&redis, "q4", "not the key", &[&touch_arg, ":::", "ran-q4"]);
    // Workers with the key on q2 (replayed) and q4 (forged); a plain worker on q3, which
    // runs its own command only, and never a job's.
    let _w2 = worker(&redis, "q2", KEY, &[]);
    let _w4 = worker(&redis, "q4", KEY, &[]);
    let plain = Group::spawn(
        Command::new(BIN)
            .args([
                "worker",
                "--idle",
                "60",
                "--tasks",
                "q3",
                "-b",
                &redis.url(),
            ])
            .args(["--", "sh", "-c", &touch("ran-q3-plain")])
            .env("MULTIPROC_AUTHKEY", KEY)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    for (queue, reason) in [
        ("q2", "replayed"),
        ("q4", "bad signature"),
        ("q3", "decode"),
    ] {
        wait_for(&format!("the dead letter in {queue}"), || {
            !dead_letters(&redis, queue).is_empty()
        });
        let letters = dead_letters(&redis, queue);
        assert_eq!(letters.len(), 1, "{queue}: {letters:?}");
        let why = letters[0]["reason"].as_str().unwrap_or_default();
        assert!(why.contains(reason), "{queue}: {why}");
    }
    drop(plain);
    // The genuine job runs where it was sent.
    let _w1 = worker(&redis, "q1", KEY, &[]);
    let out = genuine.finish();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(mark("ran-q1").exists());
    for never in ["ran-q4", "ran-q3-plain"] {
        assert!(!mark(never).exists(), "{never} ran");
    }
}

#[test]
fn a_worker_killed_mid_job_leaves_it_to_another_and_each_output_comes_once() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let dir = redis.dir().to_path_buf();
    let go = dir.join("go");
    // Each job records its process group, then waits for the gate.
    let job = format!(
        "echo $$ > {dir}/pgid-{{}}; while [ ! -e {go} ]; do sleep 0.02; done; echo done-{{}}",
        dir = dir.display(),
        go = go.display()
    );
    // The first worker sets the queue's lease (1 s); it takes the first job.
    let mut first = worker(&redis, "run", KEY, &["--lease", "1"]);
    let run = run_remote(&redis, "run", KEY, &["-j1", "-k", &job, ":::", "a", "b"]);
    let pgid = dir.join("pgid-a");
    wait_for("the first job to start", || {
        std::fs::read_to_string(&pgid).is_ok_and(|s| s.trim().parse::<i32>().is_ok())
    });
    // The worker dies, and its job with it.
    let job_group: i32 = std::fs::read_to_string(&pgid)
        .expect("pgid")
        .trim()
        .parse()
        .expect("a pid");
    first.kill();
    // SAFETY: killpg takes a process-group id and a signal; the group is the job's.
    unsafe { libc::killpg(job_group, libc::SIGKILL) };
    std::fs::write(&go, b"").expect("open the gate");
    let _second = worker(&redis, "run", KEY, &[]);
    let out = run.finish();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "done-a\ndone-b\n");
    assert!(Path::new(&dir.join("pgid-b")).exists());
}

#[test]
fn pipe_blocks_travel_to_broker_workers() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let _worker = worker(&redis, "run", KEY, &[]);
    let input: String = (1..=1000).map(|i| format!("{i}\n")).collect();
    let args = ["--pipe", "--block", "1k", "-k", "wc", "-l"];
    let mut there = Command::new(BIN);
    there
        .args(["run", "--broker", &redis.url()])
        .args(args)
        .env("MULTIPROC_AUTHKEY", KEY)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = Group::spawn(&mut there);
    {
        use std::io::Write;
        let mut stdin = child.child().stdin.take().expect("stdin");
        stdin.write_all(input.as_bytes()).expect("write");
    }
    let there = child.finish();
    let mut here = Command::new(BIN)
        .arg("run")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run");
    {
        use std::io::Write;
        let mut stdin = here.stdin.take().expect("stdin");
        stdin.write_all(input.as_bytes()).expect("write");
    }
    let here = here.wait_with_output().expect("output");
    assert!(
        there.status.success(),
        "{}",
        String::from_utf8_lossy(&there.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&there.stdout),
        String::from_utf8_lossy(&here.stdout)
    );
    let counts: u32 = String::from_utf8_lossy(&there.stdout)
        .lines()
        .map(|l| l.trim().parse::<u32>().expect("a count"))
        .sum();
    assert_eq!(counts, 1000, "every line once");
}
