//! The apalis side of multiproc-bench's `broker_pool_vs_apalis` row: no-op jobs per second end
//! to end through apalis 0.7 on Redis (`apalis-redis`).
//!
//! ```text
//! apalis-ref --url redis://127.0.0.1:PORT/N --tasks N [--quick] [--poll-ms MS] [--buffer N]
//! ```
//!
//! A producer (this process) pushes N no-op jobs one by one, each its own `push` (one round
//! trip, as the broker pool sends each task on its own); an apalis worker with concurrency 2 runs
//! them in a separate process (this program again, with `--worker`), as the broker pool's tasks
//! cross a process boundary too. The clock runs from the first push until every job's result
//! is in the producer's hands: apalis-redis records a finished job in its done set (`NS:done`)
//! and its result in `NS:data::result` in one script, after the handler returned, so the
//! producer waits for the done set to hold every job, then reads every result back and checks
//! it. That is the same point as the other side's `get()` of every result, where counting in
//! the handler (an `INCR`) would stop the clock before apalis had stored and acknowledged the
//! jobs. A warm-up of a few jobs, done before the clock starts, sees that the worker is up.
//!
//! Prints one JSON line on stdout: `{"tasks_per_sec": X}`; anything else goes to stderr. Every
//! key it makes starts with a namespace of its own (`apalis-ref-PID-NANOS:`), deleted at the
//! end, on errors and on SIGINT/SIGTERM as well; the worker process is killed at the end, and
//! exits by itself when its stdin (a pipe from the producer) closes, should the producer die.

#![forbid(unsafe_code)]

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use apalis::prelude::*;
use apalis_redis::{Config, ConnectionManager, RedisStorage};

/// How long the done count may stand still before the run is given up.
const STALL: Duration = Duration::from_secs(60);

/// How often the producer looks at the done count once every job is pushed.
const CHECK_EVERY: Duration = Duration::from_millis(1);

struct Args {
    url: String,
    tasks: Option<u64>,
    quick: bool,
    worker: bool,
    namespace: Option<String>,
    poll_ms: u64,
    buffer: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        url: String::new(),
        tasks: None,
        quick: false,
        worker: false,
        namespace: None,
        // apalis-redis' worker fetches jobs on a timer, `buffer` at a time: by default every
        // 100 ms, 10 at a time, which caps it at 100 jobs per second. A throughput test tunes
        // that, as anyone would who wants throughput: 1 ms and 10 at a time.
        poll_ms: 1,
        buffer: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} wants a value"));
        match arg.as_str() {
            "--url" => a.url = value()?,
            "--tasks" => a.tasks = Some(value()?.parse().context("--tasks")?),
            "--quick" => a.quick = true,
            "--worker" => a.worker = true,
            "--namespace" => a.namespace = Some(value()?),
            "--poll-ms" => a.poll_ms = value()?.parse().context("--poll-ms")?,
            "--buffer" => a.buffer = value()?.parse().context("--buffer")?,
            other => bail!(
                "unknown argument {other:?} \
                 (usage: apalis-ref --url redis://HOST:PORT/DB --tasks N [--quick])"
            ),
        }
    }
    ensure!(!a.url.is_empty(), "--url redis://HOST:PORT/DB is needed");
    ensure!(a.buffer > 0, "--buffer must be at least 1");
    Ok(a)
}

fn config(a: &Args, namespace: &str) -> Config {
    Config::default()
        .set_namespace(namespace)
        .set_poll_interval(Duration::from_millis(a.poll_ms))
        .set_buffer_size(a.buffer)
}

/// The job: nothing but its argument back.
async fn noop(x: u64) -> u64 {
    x
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    if a.worker {
        let namespace = a.namespace.clone().context("--worker wants --namespace")?;
        return worker(&a, &namespace).await;
    }
    let namespace = format!(
        "apalis-ref-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    );
    let conn = apalis_redis::connect(a.url.as_str())
        .await
        .with_context(|| format!("connecting to {}", a.url))?;
    let measured = {
        let mut worker = WorkerProcess::start(&a, &namespace)?;
        let run = measure(&a, &namespace, conn.clone(), &mut worker);
        let result = tokio::select! {
            r = run => r,
            r = interrupted() => r.and_then(|()| bail!("interrupted")),
        };
        drop(worker); // killed before its keys go, so that it makes no new ones
        result
    };
    let cleaned = delete_keys(conn, &namespace).await;
    let rate = measured?;
    cleaned.context("deleting the run's keys")?;
    println!("{}", serde_json::json!({ "tasks_per_sec": rate }));
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn interrupted() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// The worker process (this program with `--worker`), killed when dropped.
struct WorkerProcess(Child);

impl WorkerProcess {
    fn start(a: &Args, namespace: &str) -> anyhow::Result<WorkerProcess> {
        let exe = std::env::current_exe().context("finding this program")?;
        let child = Command::new(exe)
            .args(["--worker", "--url", &a.url, "--namespace", namespace])
            .args(["--poll-ms", &a.poll_ms.to_string()])
            .args(["--buffer", &a.buffer.to_string()])
            // Its stdin is how it notices that we are gone.
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .context("starting the worker process")?;
        Ok(WorkerProcess(child))
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.0.try_wait()? {
            Some(status) => bail!("the worker process exited ({status})"),
            None => Ok(()),
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The worker side: one apalis worker, concurrency 2, until killed or its stdin closes.
async fn worker(a: &Args, namespace: &str) -> anyhow::Result<()> {
    std::thread::spawn(|| {
        let mut sink = [0u8; 64];
        while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
    let conn = apalis_redis::connect(a.url.as_str())
        .await
        .with_context(|| format!("connecting to {}", a.url))?;
    let storage: RedisStorage<u64> = RedisStorage::new_with_config(conn, config(a, namespace));
    WorkerBuilder::new(format!("{namespace}-worker"))
        .concurrency(2)
        .backend(storage)
        .build_fn(noop)
        .on_event(|e| {
            if let Event::Error(err) = e.inner() {
                eprintln!("apalis-ref worker: {err}");
            }
        })
        .run()
        .await;
    Ok(())
}

/// Jobs per second, from the first push to every result read back.
async fn measure(
    a: &Args,
    namespace: &str,
    conn: ConnectionManager,
    worker: &mut WorkerProcess,
) -> anyhow::Result<f64> {
    let n = a.tasks.unwrap_or(if a.quick { 2_000 } else { 20_000 });
    ensure!(n > 0, "--tasks must be at least 1");
    let warmup: u64 = if a.quick { 20 } else { 100 };
    let mut storage: RedisStorage<u64> =
        RedisStorage::new_with_config(conn.clone(), config(a, namespace));
    let keys = Keys::new(namespace);

    // Warm-up: the worker is up, connected and has run jobs.
    let mut ids = Vec::with_capacity(warmup as usize);
    for i in 0..warmup {
        ids.push((storage.push(i).await?.task_id.to_string(), i));
    }
    wait_done(&keys, conn.clone(), worker, warmup, Duration::from_secs(60)).await?;
    check_results(&keys, conn.clone(), &ids).await?;

    let t = Instant::now();
    let mut ids = Vec::with_capacity(n as usize);
    for i in 0..n {
        ids.push((storage.push(i).await?.task_id.to_string(), i));
    }
    let pushed = t.elapsed();
    wait_done(&keys, conn.clone(), worker, warmup + n, STALL).await?;
    let done = t.elapsed();
    check_results(&keys, conn, &ids).await?;
    let all = t.elapsed();
    eprintln!(
        "apalis-ref: {n} jobs (poll {} ms, buffer {}): pushed in {:.3} s, done at {:.3} s, \
         results read at {:.3} s",
        a.poll_ms,
        a.buffer,
        pushed.as_secs_f64(),
        done.as_secs_f64(),
        all.as_secs_f64()
    );
    Ok(n as f64 / all.as_secs_f64())
}

/// apalis-redis' key names for a namespace (as its `Config` makes them).
struct Keys {
    done: String,
    failed: String,
    dead: String,
    results: String,
}

impl Keys {
    fn new(namespace: &str) -> Keys {
        let c = Config::default().set_namespace(namespace);
        Keys {
            done: c.done_jobs_set(),
            failed: c.failed_jobs_set(),
            dead: c.dead_jobs_set(),
            // done_job.lua: HMSET KEYS[3] .. "::result", where KEYS[3] is the job data hash.
            results: format!("{}::result", c.job_data_hash()),
        }
    }
}

/// Waits until the done set holds `total` jobs; fails on a failed or dead job, or when the
/// count stands still for `stall`.
async fn wait_done(
    keys: &Keys,
    mut conn: ConnectionManager,
    worker: &mut WorkerProcess,
    total: u64,
    stall: Duration,
) -> anyhow::Result<()> {
    let mut last = (0, Instant::now());
    loop {
        worker.check_alive()?;
        let (done, failed, dead): (u64, u64, u64) = redis::pipe()
            .zcard(&keys.done)
            .zcard(&keys.failed)
            .zcard(&keys.dead)
            .query_async(&mut conn)
            .await?;
        ensure!(
            failed == 0 && dead == 0,
            "{failed} jobs failed, {dead} dead"
        );
        if done >= total {
            return Ok(());
        }
        if done != last.0 {
            last = (done, Instant::now());
        } else if last.1.elapsed() > stall {
            bail!(
                "{done} of {total} jobs done, none more in {} s (is the worker running?)",
                stall.as_secs()
            );
        }
        tokio::time::sleep(CHECK_EVERY).await;
    }
}

/// Reads every job's result and checks it.
async fn check_results(
    keys: &Keys,
    mut conn: ConnectionManager,
    ids: &[(String, u64)],
) -> anyhow::Result<()> {
    for chunk in ids.chunks(1_000) {
        let got: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
            .arg(&keys.results)
            .arg(chunk.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>())
            .query_async(&mut conn)
            .await?;
        for ((id, want), got) in chunk.iter().zip(got) {
            let got = got.with_context(|| format!("job {id} has no result"))?;
            // Encoded twice: the ack layer encodes the result (JSON bytes), and done_job's
            // caller encodes those bytes again (a JSON array of numbers).
            let got: u64 = serde_json::from_slice::<Vec<u8>>(&got)
                .and_then(|bytes| serde_json::from_slice(&bytes))
                .with_context(|| {
                    format!("job {id}'s result {:?}", String::from_utf8_lossy(&got))
                })?;
            ensure!(got == *want, "job {id}: {got}, not {want}");
        }
    }
    Ok(())
}

/// Deletes every key of the run's namespace.
async fn delete_keys(mut conn: ConnectionManager, namespace: &str) -> anyhow::Result<()> {
    let pattern = format!("{namespace}:*");
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1_000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            let _: u64 = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}
