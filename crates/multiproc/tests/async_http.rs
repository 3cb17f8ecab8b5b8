//! The real use of the awaitable waits: `examples/async_http_pool.rs`, an axum service that
//! hands each request's work to a `Pool` and awaits it, under load from a real HTTP client
//! (curl): concurrent requests are answered right, a request whose worker is killed gets
//! `502` naming `WorkerLost`, and the service goes on serving.
//!
//! Needs curl (the CI installs it); without it the test says so and passes.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The example's binary, built beside this test by `cargo test`.
fn example() -> PathBuf {
    let deps = std::env::current_exe().unwrap();
    deps.parent()
        .and_then(|d| d.parent())
        .map(|p| p.join("examples").join("async_http_pool"))
        .unwrap()
}

/// The server, in a process group of its own, killed with its workers at the end.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: killpg takes a process-group id and a signal; the group is our child's.
        unsafe { libc::killpg(self.0.id() as i32, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// `curl URL`: the status code and the body.
fn curl(url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "60", "-w", "\n%{http_code}", url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap_or(0), body.trim().to_string())
}

fn fib(n: u32) -> u64 {
    if n < 2 {
        n as u64
    } else {
        fib(n - 1) + fib(n - 2)
    }
}

#[test]
fn the_service_answers_concurrent_requests_and_survives_a_crashed_worker() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("SKIPPED: no curl");
        return;
    }
    let exe = example();
    assert!(
        exe.exists(),
        "{exe:?} not built: cargo build -p multiproc --features async --examples"
    );
    let mut child = Command::new(&exe)
        .args(["--serve", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let server = Server(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    let base = format!("http://{addr}");
    // Twenty requests at once, and a crash among them.
    let clients: Vec<_> = (15..35u32)
        .map(|n| {
            let url = format!("{base}/fib/{n}");
            std::thread::spawn(move || (n, curl(&url)))
        })
        .collect();
    let (code, body) = curl(&format!("{base}/crash"));
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("WorkerLost"), "{body}");
    for c in clients {
        let (n, (code, body)) = c.join().unwrap();
        assert_eq!((code, body), (200, fib(n).to_string()), "fib({n})");
    }
    // Still serving, crash after crash.
    for _ in 0..3 {
        assert_eq!(curl(&format!("{base}/crash")).0, 502);
        assert_eq!(curl(&format!("{base}/fib/25")), (200, fib(25).to_string()));
    }
    assert_eq!(curl(&format!("{base}/fib/99")).0, 400);
    drop(server);
}
