//! The async rows: multiproc's awaitable waits against what a tokio service would do without
//! them, in the same run. The other side's figure stands in the `cpython` column:
//!
//! - `async_queue_pingpong_vs_tokio_process`: two processes awaiting gets on two queues,
//!   against a child (`cat`) driven through `tokio::process::Command` with stdin/stdout pipes.
//! - `async_queue_pingpong_vs_blocking`: the same, against our own blocking ping-pong.
//! - `async_pool_submit`: 1,000 concurrent tokio tasks each awaiting a process executor's
//!   future, against the same work through `spawn_blocking` around the blocking `result()`.
//! - `async_idle_cpu`: the CPU time (percent of one core) of this process while 10,000 gets
//!   are pending for a while; no other side.

use std::time::{Duration, Instant};

use anyhow::Context;
use multiproc::{Process, ProcessPoolExecutor, Queue};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::scaled;

/// What ends the echo process.
const STOP: u64 = u64::MAX;

fn current_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The other process of the async ping-pong: awaits each ping and answers it.
fn async_echo((ping, pong): (Queue<u64>, Queue<u64>)) -> Result<(), String> {
    let rt = current_thread().map_err(|e| e.to_string())?;
    rt.block_on(async {
        loop {
            let x = ping.get_async().await.map_err(|e| e.to_string())?;
            if x == STOP {
                return Ok(());
            }
            pong.put_async(x).await.map_err(|e| e.to_string())?;
        }
    })
}

/// The other process of the blocking ping-pong.
fn blocking_echo((ping, pong): (Queue<u64>, Queue<u64>)) -> Result<(), String> {
    loop {
        let x = ping.get().map_err(|e| e.to_string())?;
        if x == STOP {
            return Ok(());
        }
        pong.put(x).map_err(|e| e.to_string())?;
    }
}

/// Round trips per second of the async queue ping-pong.
fn async_pingpong(n: usize) -> anyhow::Result<f64> {
    let (ping, pong) = (Queue::new()?, Queue::new()?);
    let child = Process::new(async_echo, (ping.clone(), pong.clone())).start()?;
    let rt = current_thread()?;
    let rate = rt.block_on(async {
        for i in 0..1000 {
            ping.put_async(i).await?;
            pong.get_async().await?;
        }
        let t = Instant::now();
        for i in 0..n as u64 {
            ping.put_async(i).await?;
            anyhow::ensure!(pong.get_async().await? == i, "echo mismatch");
        }
        let rate = n as f64 / t.elapsed().as_secs_f64();
        ping.put_async(STOP).await?;
        anyhow::Ok(rate)
    })?;
    child.into_result()?.map_err(anyhow::Error::msg)?;
    Ok(rate)
}

/// Round trips per second of the blocking queue ping-pong.
fn blocking_pingpong(n: usize) -> anyhow::Result<f64> {
    let (ping, pong) = (Queue::new()?, Queue::new()?);
    let child = Process::new(blocking_echo, (ping.clone(), pong.clone())).start()?;
    for i in 0..1000 {
        ping.put(i)?;
        pong.get()?;
    }
    let t = Instant::now();
    for i in 0..n as u64 {
        ping.put(i)?;
        anyhow::ensure!(pong.get()? == i, "echo mismatch");
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    ping.put(STOP)?;
    child.into_result()?.map_err(anyhow::Error::msg)?;
    Ok(rate)
}

/// Round trips per second through `cat` driven by `tokio::process`: a line out, a line back.
fn tokio_process_pingpong(n: usize) -> anyhow::Result<f64> {
    let rt = current_thread()?;
    rt.block_on(async {
        let mut child = tokio::process::Command::new("cat")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start cat")?;
        let mut stdin = child.stdin.take().context("stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
        let mut line = String::new();
        let mut round = async |i: u64| -> anyhow::Result<()> {
            stdin.write_all(format!("{i}\n").as_bytes()).await?;
            line.clear();
            stdout.read_line(&mut line).await?;
            anyhow::ensure!(line.trim() == i.to_string(), "echo mismatch");
            Ok(())
        };
        for i in 0..1000 {
            round(i).await?;
        }
        let t = Instant::now();
        for i in 0..n as u64 {
            round(i).await?;
        }
        Ok(n as f64 / t.elapsed().as_secs_f64())
    })
}

pub(crate) fn pingpong_vs_tokio_process(quick: bool) -> anyhow::Result<f64> {
    let n = scaled(20_000, quick);
    let theirs = tokio_process_pingpong(n)?;
    crate::run_overhead::record_other("async_queue_pingpong_vs_tokio_process", theirs);
    async_pingpong(n)
}

pub(crate) fn pingpong_vs_blocking(quick: bool) -> anyhow::Result<f64> {
    let n = scaled(20_000, quick);
    let theirs = blocking_pingpong(n)?;
    crate::run_overhead::record_other("async_queue_pingpong_vs_blocking", theirs);
    async_pingpong(n)
}

fn double(x: u64) -> u64 {
    x * 2
}

/// Tasks per second: `tasks` tokio tasks at once, each submitting to `ex` and waiting for its
/// future, awaited (`blocking` false) or through `spawn_blocking`.
fn pool_submit(
    ex: &std::sync::Arc<ProcessPoolExecutor>,
    tasks: usize,
    blocking: bool,
) -> anyhow::Result<f64> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let t = Instant::now();
        let handles: Vec<_> = (0..tasks as u64)
            .map(|i| {
                let ex = ex.clone();
                tokio::spawn(async move {
                    let fut = ex.submit(double, i)?;
                    let got = if blocking {
                        tokio::task::spawn_blocking(move || fut.result()).await??
                    } else {
                        fut.await?
                    };
                    anyhow::ensure!(got == 2 * i, "wrong result");
                    anyhow::Ok(())
                })
            })
            .collect();
        for h in handles {
            h.await??;
        }
        Ok(tasks as f64 / t.elapsed().as_secs_f64())
    })
}

pub(crate) fn pool_submit_vs_spawn_blocking(quick: bool) -> anyhow::Result<f64> {
    let tasks = scaled(1000, quick).max(100);
    let ex = std::sync::Arc::new(ProcessPoolExecutor::new(2)?);
    pool_submit(&ex, 100, false)?; // warm-up
    let theirs = pool_submit(&ex, tasks, true)?;
    crate::run_overhead::record_other("async_pool_submit", theirs);
    pool_submit(&ex, tasks, false)
}

/// This process's CPU time (user + system).
fn cpu_time() -> Duration {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .expect("getrusage");
    let tv =
        |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    tv(usage.user_time()) + tv(usage.system_time())
}

pub(crate) fn idle_cpu(quick: bool) -> anyhow::Result<f64> {
    const PENDING: usize = 10_000;
    let hold = if quick {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(5)
    };
    let q: std::sync::Arc<Queue<u64>> = std::sync::Arc::new(Queue::new()?);
    let rt = current_thread()?;
    rt.block_on(async {
        let tasks: Vec<_> = (0..PENDING)
            .map(|_| {
                let q = q.clone();
                tokio::spawn(async move { q.get_async().await })
            })
            .collect();
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        let (cpu, wall) = (cpu_time(), Instant::now());
        tokio::time::sleep(hold).await;
        let pct = (cpu_time() - cpu).as_secs_f64() / wall.elapsed().as_secs_f64() * 100.0;
        for i in 0..PENDING as u64 {
            q.put(i)?;
        }
        for t in tasks {
            t.await??;
        }
        Ok(pct)
    })
}
