//! Manager servers to test clients against: ours with a registered `Counter`, and the
//! `SyncManager` of each CPython on the machine with the same class registered.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::common::pythons;
use multiproc::{Address, Managed, ManagerClient, ManagerServer, MethodCall, RunningServer};

/// A CPython child killed and reaped when the test ends, also when it fails.
pub(crate) struct PythonChild(pub(crate) std::process::Child);

impl Drop for PythonChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPython's `SyncManager` with a registered `Counter` class, served in the foreground (no
/// fork); prints its port.
const CPYTHON_SERVER: &str = r#"
import sys
from multiprocessing.managers import SyncManager

class Counter:
    def __init__(self, start=0, step=1):
        self.n = start
        self.step = step
    def add(self, by=None):
        self.n += self.step if by is None else by
        return self.n
    def value(self):
        return self.n
    def fail(self):
        raise ValueError('asked to fail')

class M(SyncManager):
    pass

M.register('Counter', Counter)
server = M(address=('127.0.0.1', 0), authkey=b'abc').get_server()
print(server.address[1], flush=True)
server.serve_forever()
"#;

/// The same `Counter` in Rust, for our server.
struct Counter {
    n: Mutex<i64>,
    step: i64,
}

impl Managed for Counter {
    fn methods(&self) -> &'static [&'static str] {
        &["add", "fail", "value"]
    }

    fn call(&self, method: &str, call: &mut MethodCall<'_>) -> multiproc::Result<()> {
        let mut n = self.n.lock().unwrap();
        match method {
            "add" => {
                *n += call
                    .arg::<Option<i64>>(0, "by")
                    .unwrap_or(None)
                    .unwrap_or(self.step);
                call.ret(&*n)
            }
            "value" => call.ret(&*n),
            _ => {
                call.raise("ValueError", "asked to fail");
                Ok(())
            }
        }
    }
}

/// A server to test against: ours, or a CPython child.
pub(crate) enum Server {
    Ours(#[allow(dead_code)] RunningServer),
    CPython(#[allow(dead_code)] PythonChild),
}

pub(crate) fn ours() -> (Server, Address) {
    let mut server = ManagerServer::bind(&Address::tcp("127.0.0.1:0").unwrap(), b"abc").unwrap();
    server.register_with_args("Counter", |args: &MethodCall<'_>| {
        Ok(Arc::new(Counter {
            n: Mutex::new(
                args.arg::<Option<i64>>(0, "start")
                    .unwrap_or(None)
                    .unwrap_or(0),
            ),
            step: args
                .arg::<Option<i64>>(1, "step")
                .unwrap_or(None)
                .unwrap_or(1),
        }))
    });
    let running = server.serve_in_background().unwrap();
    let address = running.address().clone();
    (Server::Ours(running), address)
}

pub(crate) fn cpython(python: &Path) -> (Server, Address) {
    let mut child = PythonChild(
        Command::new(python)
            .args(["-c", CPYTHON_SERVER])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut port = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let address = Address::tcp(format!("127.0.0.1:{}", port.trim()))
        .unwrap_or_else(|e| panic!("{python:?} did not start a manager ({port:?}): {e}"));
    (Server::CPython(child), address)
}

/// Our server, then every CPython's `SyncManager`: (name, server, address).
pub(crate) fn each_server() -> impl Iterator<Item = (String, Server, Address)> {
    let ours = std::iter::once_with(|| {
        let (server, address) = ours();
        ("ours".to_string(), server, address)
    });
    ours.chain(pythons().into_iter().map(|python| {
        let (server, address) = cpython(&python);
        (format!("{python:?}"), server, address)
    }))
}

/// Runs `check` against our server, then against every CPython's `SyncManager`.
pub(crate) fn against_each_server(check: impl Fn(&ManagerClient, &str)) {
    for (name, server, address) in each_server() {
        let manager = ManagerClient::connect(&address, b"abc").unwrap();
        check(&manager, &name);
        drop(server);
    }
}

/// Long enough for anything that is meant to happen; only reached when something is wrong.
pub(crate) const LONG: Duration = Duration::from_secs(30);

/// Calls `cond` until it holds (each call a round trip to the server: what it waits for
/// happens on the server or on a thread of the library, with nothing to wait on); false after
/// `LONG`.
pub(crate) fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + LONG;
    while !cond() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::park_timeout(Duration::from_millis(5));
    }
    true
}
