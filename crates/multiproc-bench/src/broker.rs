//! `broker_queue`: small tasks through a Redis stream (put, get, ack), one producer and two
//! workers, against the same loop in redis-py; and `limit_redis_xadd`, `redis-benchmark`'s raw
//! XADD rate on the same server, which bounds what any client can do.

use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use multiproc::{Barrier, JoinableQueue, Process};

/// The benchmarks' Redis server: started on first use, stopped at exit.
struct Server {
    child: Mutex<Child>,
    port: u16,
    dir: std::path::PathBuf,
}

static SERVER: OnceLock<Server> = OnceLock::new();

/// Stops the server (called once the benchmarks are done).
pub(crate) fn stop() {
    if let Some(s) = SERVER.get() {
        let mut child = s.child.lock().unwrap_or_else(|p| p.into_inner());
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&s.dir);
    }
}

/// The URL of the running benchmark server, if one was started (for the Python side).
pub(crate) fn url_if_started() -> Option<String> {
    SERVER.get().map(|s| url(s.port))
}

/// The URL of the benchmarks' server, started if it is not.
pub(crate) fn bench_url() -> anyhow::Result<String> {
    Ok(url(server()?.port))
}

fn url(port: u16) -> String {
    format!("redis://127.0.0.1:{port}/0")
}

fn server() -> anyhow::Result<&'static Server> {
    if let Some(s) = SERVER.get() {
        return Ok(s);
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir = std::env::temp_dir().join(format!("multiproc-bench-redis-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "yes", "--maxmemory-policy", "noeviction"])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .spawn()
        .context("starting redis-server (install it: apt-get install redis-server)")?;
    let s = SERVER.get_or_init(|| Server {
        child: Mutex::new(child),
        port,
        dir,
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("redis-server did not come up");
        }
        std::thread::park_timeout(Duration::from_millis(20));
    }
    Ok(s)
}

/// Takes tasks until the stop mark, acknowledging each (ready once `start` opens).
fn work((tasks, start): (JoinableQueue<u64>, Barrier)) -> u64 {
    start.wait().expect("start");
    let mut done = 0;
    while let Ok(n) = tasks.get_timeout(Duration::from_secs(30)) {
        tasks.task_done().expect("ack");
        if n == u64::MAX {
            break;
        }
        done += 1;
    }
    done
}

/// Tasks per second through put + get + ack, one producer, two worker processes.
pub(crate) fn broker_queue(quick: bool) -> anyhow::Result<f64> {
    let s = server()?;
    let n = if quick { 2_000 } else { 20_000 };
    let name = format!("bench-{}-{}", std::process::id(), n);
    let tasks: JoinableQueue<u64> = JoinableQueue::connect(&url(s.port), &name)?;
    let start = Barrier::new(3)?;
    let workers: Vec<_> = (0..2)
        .map(|_| Process::new(work, (tasks.clone(), start.clone())).start())
        .collect::<Result<_, _>>()?;
    start.wait()?;
    let t0 = Instant::now();
    for i in 0..n {
        tasks.put(i)?;
    }
    for _ in &workers {
        tasks.put(u64::MAX)?;
    }
    let mut done = 0;
    for w in workers {
        done += w.into_result()?;
    }
    let dt = t0.elapsed().as_secs_f64();
    if done != n {
        bail!("{done} of {n} tasks done");
    }
    Ok(n as f64 / dt)
}

/// `redis-benchmark`'s XADD requests per second on the same server (3 clients, as the job
/// above has).
pub(crate) fn limit_redis_xadd(quick: bool) -> anyhow::Result<f64> {
    let s = server()?;
    let n = if quick { 10_000 } else { 100_000 };
    let out = Command::new("redis-benchmark")
        .args([
            "-p",
            &s.port.to_string(),
            "-c",
            "3",
            "-n",
            &n.to_string(),
            "-q",
        ])
        .args([
            "XADD",
            "multiproc:bench-raw",
            "*",
            "codec",
            "json",
            "body",
            "1",
        ])
        .output()
        .context("running redis-benchmark (apt-get install redis-tools)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "XADD multiproc:bench-raw * ...: 51546.39 requests per second, p50=..." (the last
    // report line)
    let rate = text
        .rsplit(':')
        .find_map(|part| {
            let words: Vec<&str> = part.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "requests")?;
            words.get(at.checked_sub(1)?)?.parse::<f64>().ok()
        })
        .with_context(|| format!("cannot read redis-benchmark's output: {text:?}"))?;
    Ok(rate)
}
