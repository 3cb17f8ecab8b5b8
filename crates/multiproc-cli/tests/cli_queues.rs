//! `multiproc serve`, `worker`, `submit` and `collect`, between themselves and with CPython.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

mod common;
use common::hostile::{HOSTILE, WorkDir};

const BIN: &str = env!("CARGO_BIN_EXE_multiproc");

/// `multiproc serve` on a free port, killed when the test ends.
struct Server {
    child: Child,
    address: String,
}

impl Server {
    fn start() -> Server {
        let child = Command::new(BIN)
            .args([
                "serve",
                "--bind",
                "127.0.0.1:0",
                "--queue",
                "task",
                "--queue",
                "result",
            ])
            .env("MULTIPROC_AUTHKEY", "abc")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start multiproc serve");
        Server::from_child(child)
    }

    /// A started `serve`, once it says where it listens.
    fn from_child(mut child: Child) -> Server {
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let address = first
            .trim()
            .rsplit(' ')
            .next()
            .expect("serving ... on ADDRESS")
            .to_string();
        Server { child, address }
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut all = vec![args[0], "--connect", &self.address];
        all.extend(&args[1..]);
        Command::new(BIN)
            .args(&all)
            .env("MULTIPROC_AUTHKEY", "abc")
            .output()
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn submit_worker_collect_through_a_served_queue() {
    let server = Server::start();
    assert_eq!(
        stdout(&server.run(&["submit", "3", "4", "5"])),
        "submitted 3 tasks\n"
    );
    let worked = stdout(&server.run(&["worker", "--square", "--idle", "0.5"]));
    assert!(worked.contains("task 4 -> 4 * 4 = 16"), "{worked}");
    assert!(
        worked.contains("worker: 3 tasks done, 0 failed, none left"),
        "{worked}"
    );
    stdout(&server.run(&["submit", "hello"]));
    let worked = stdout(&server.run(&["worker", "--idle", "0.5", "--", "echo", "got", "{}"]));
    assert!(worked.contains("task hello -> got hello"), "{worked}");
    let collected = stdout(&server.run(&["collect", "--count", "4", "--timeout", "5"]));
    assert_eq!(collected, "3 * 3 = 9\n4 * 4 = 16\n5 * 5 = 25\ngot hello\n");
    // Workers mark their tasks done, so a master's `join` on the task queue returns.
    let address = multiproc::Address::tcp(server.address.as_str()).unwrap();
    let manager = multiproc::ManagerClient::connect(&address, b"abc").unwrap();
    let tasks = manager.queue::<i64>("get_task_queue").unwrap();
    tasks
        .join_timeout(std::time::Duration::from_secs(10))
        .expect("every task marked done");
    // Nothing more: collect says so instead of waiting for ever.
    let more = server.run(&["collect", "--count", "1", "--timeout", "0.2"]);
    assert!(!more.status.success());
    assert!(String::from_utf8_lossy(&more.stderr).contains("only 0 of 1 results"));
}

#[test]
fn a_missing_or_wrong_authkey_is_a_clear_error() {
    let out = Command::new(BIN)
        .args(["submit", "1"])
        .env_remove("MULTIPROC_AUTHKEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("set MULTIPROC_AUTHKEY or pass --authkey-file"),
        "{err}"
    );
    let server = Server::start();
    let out = Command::new(BIN)
        .args(["submit", "--connect", &server.address, "1"])
        .env("MULTIPROC_AUTHKEY", "wrong")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("authentication failed"), "{err}");
}

/// The seeds' `task_worker.py`, run by CPython against `multiproc serve`.
const TASK_WORKER: &str = r#"
import queue, sys
from multiprocessing.managers import BaseManager
class QueueManager(BaseManager):
    pass
QueueManager.register('get_task_queue')
QueueManager.register('get_result_queue')
host, port = sys.argv[1].rsplit(':', 1)
m = QueueManager(address=(host, int(port)), authkey=b'abc')
m.connect()
task = m.get_task_queue()
result = m.get_result_queue()
while True:
    try:
        n = task.get(timeout=1)
        result.put('%d * %d = %d' % (n, n, n * n))
    except queue.Empty:
        print('task queue is empty.', flush=True)
        break
"#;

#[test]
fn a_cpython_worker_serves_tasks_from_multiproc_serve() {
    if Command::new("python3").arg("-V").output().is_err() {
        eprintln!("note: python3 not found; skipped");
        return;
    }
    let server = Server::start();
    stdout(&server.run(&["submit", "6", "7"]));
    let out = Command::new("python3")
        .args(["-c", TASK_WORKER, &server.address])
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "task queue is empty.\n");
    let collected = stdout(&server.run(&["collect", "--count", "2", "--timeout", "5"]));
    assert_eq!(collected, "6 * 6 = 36\n7 * 7 = 49\n");
}

#[test]
fn hostile_task_texts_reach_the_command_as_data_never_as_code() {
    let server = Server::start();
    let dir = WorkDir::new("hostile-manager");
    // The task inside a shell's script (quoted for it), as a whole argument, on stdin.
    let commands: [&[&str]; 3] = [
        &["sh", "-c", "printf '<%s>' {}"],
        &["printf", "<%s>", "{}"],
        &["sh", "-c", "printf '<%s>' \"$(cat)\""],
    ];
    for command in commands {
        let mut submit = vec!["submit"];
        submit.extend(HOSTILE);
        stdout(&server.run(&submit));
        let mut worker = vec![
            "worker",
            "--connect",
            &server.address,
            "--idle",
            "0.5",
            "--",
        ];
        worker.extend(command);
        let out = Command::new(BIN)
            .args(&worker)
            .current_dir(&dir.0)
            .env("MULTIPROC_AUTHKEY", "abc")
            .output()
            .unwrap();
        stdout(&out);
        let count = HOSTILE.len().to_string();
        let collected = stdout(&server.run(&["collect", "--count", &count, "--timeout", "5"]));
        let expected: String = HOSTILE.iter().map(|t| format!("<{t}>\n")).collect();
        assert_eq!(collected, expected, "{command:?}");
        assert!(dir.entries().is_empty(), "{command:?}: {:?}", dir.entries());
    }
}

#[test]
fn a_placeholder_in_another_interpreters_code_is_refused_before_any_task() {
    let server = Server::start();
    stdout(&server.run(&["submit", "1"]));
    let out = server.run(&[
        "worker",
        "--idle",
        "0.5",
        "--",
        "python3",
        "-c",
        "print({})",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("argument of its own"), "{err}");
    // The task is still there.
    assert_eq!(
        stdout(&server.run(&["collect", "--queue", "task", "--count", "1"])),
        "1\n"
    );
}

/// A CPython client puts bytes that are not UTF-8 and reads the result back.
const BYTES_CLIENT: &str = r#"
import sys
from multiprocessing.managers import BaseManager
class QueueManager(BaseManager):
    pass
QueueManager.register('get_task_queue')
QueueManager.register('get_result_queue')
host, port = sys.argv[2].rsplit(':', 1)
m = QueueManager(address=(host, int(port)), authkey=b'abc')
m.connect()
task = b'\xff\xfe$(touch pwned6)\n'
if sys.argv[1] == 'put':
    m.get_task_queue().put(task)
else:
    got = m.get_result_queue().get(timeout=5)
    assert got == b'<' + task + b'>', got
    print('ok')
"#;

#[test]
fn task_bytes_that_are_not_utf8_pass_through_whole() {
    if Command::new("python3").arg("-V").output().is_err() {
        eprintln!("note: python3 not found; skipped");
        return;
    }
    let server = Server::start();
    let dir = WorkDir::new("bytes-manager");
    let python = |what: &str| {
        Command::new("python3")
            .args(["-c", BYTES_CLIENT, what, &server.address])
            .output()
            .unwrap()
    };
    stdout(&python("put"));
    let out = Command::new(BIN)
        .args([
            "worker",
            "--connect",
            &server.address,
            "--idle",
            "0.5",
            "--",
        ])
        .args(["sh", "-c", "printf '<%s>' {}"])
        .current_dir(&dir.0)
        .env("MULTIPROC_AUTHKEY", "abc")
        .output()
        .unwrap();
    let log = stdout(&out);
    // The log line shows the task escaped, not raw.
    assert!(log.contains(r#"b"\xff\xfe$(touch pwned6)\n""#), "{log}");
    assert_eq!(stdout(&python("get")), "ok\n");
    assert!(dir.entries().is_empty(), "{:?}", dir.entries());
}

#[test]
fn serve_ignore_sigint_survives_a_ctrl_c_and_plain_serve_does_not() {
    use nix::sys::signal::{SigHandler, Signal, kill, signal};
    use nix::unistd::Pid;
    use std::os::unix::process::CommandExt;
    // The servers start with SIGINT at its default, whatever this test inherited (a shell
    // running us in the background ignores it).
    let start = |extra: &[&str]| {
        let mut command = Command::new(BIN);
        command
            .args([
                "serve",
                "--bind",
                "127.0.0.1:0",
                "--queue",
                "task",
                "--queue",
                "result",
            ])
            .args(extra)
            .env("MULTIPROC_AUTHKEY", "abc")
            .stdout(Stdio::piped());
        // SAFETY: between fork and exec only `signal`, which is async-signal-safe, runs.
        unsafe {
            command.pre_exec(|| {
                signal(Signal::SIGINT, SigHandler::SigDfl)
                    .map(drop)
                    .map_err(std::io::Error::from)
            });
        }
        Server::from_child(command.spawn().expect("start multiproc serve"))
    };
    let mut stubborn = start(&["--ignore-sigint"]);
    kill(Pid::from_raw(stubborn.child.id() as i32), Signal::SIGINT).unwrap();
    // Still serving after the signal: a submit and a worker go through.
    stdout(&stubborn.run(&["submit", "7"]));
    let worked = stdout(&stubborn.run(&["worker", "--square", "--idle", "0.2"]));
    assert!(worked.contains("7 * 7 = 49"), "{worked}");
    assert!(stubborn.child.try_wait().unwrap().is_none());
    // Without the flag SIGINT ends it, as it ends any program.
    let mut plain = start(&[]);
    kill(Pid::from_raw(plain.child.id() as i32), Signal::SIGINT).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = plain.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "SIGINT did not end plain serve"
        );
        std::thread::park_timeout(std::time::Duration::from_millis(10));
    };
    assert!(!status.success(), "{status:?}");
}

#[test]
fn submit_reads_standard_input_and_a_worker_with_failures_exits_non_zero() {
    use std::io::Write;
    let server = Server::start();
    assert_eq!(stdout(&server.run(&["submit", "9"])), "submitted 1 task\n");
    let mut submit = Command::new(BIN)
        .args(["submit", "--connect", &server.address, "-"])
        .env("MULTIPROC_AUTHKEY", "abc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    submit
        .stdin
        .take()
        .unwrap()
        .write_all(b"two words\n3\n")
        .unwrap();
    let out = submit.wait_with_output().unwrap();
    assert_eq!(stdout(&out), "submitted 2 tasks\n");
    // --square fails on the text task: its error is its result, and the worker says so.
    let out = server.run(&["worker", "--square", "--idle", "0.5"]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("worker: 2 tasks done, 1 failed"), "{said}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("multiproc: 1 task failed"), "{err}");
    let collected = stdout(&server.run(&["collect", "--count", "3", "--timeout", "5"]));
    assert_eq!(
        collected,
        "9 * 9 = 81\nerror: --square needs integer tasks, got two words\n3 * 3 = 9\n"
    );
}

#[test]
fn status_and_dead_without_a_broker_say_how_to_give_one() {
    for args in [&["status"][..], &["dead", "ls"]] {
        let out = Command::new(BIN)
            .args(args)
            .env_remove("MULTIPROC_BROKER")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("-b redis://") && err.contains("MULTIPROC_BROKER"),
            "{err}"
        );
    }
}
