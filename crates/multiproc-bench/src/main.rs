//! Benchmarks of multiproc against CPython's multiprocessing doing the same job, in the same
//! run. Prints `<name> <ours> <cpython> <unit> <ratio>`, where ratio > 1 means multiproc is
//! better (faster, or more throughput).
//!
//! ```text
//! cargo run --release -p multiproc-bench -- all
//! cargo run --release -p multiproc-bench -- pipe_pingpong --quick --json out.json
//! ```

#![forbid(unsafe_code)]

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use multiproc::{Connection, Pipe, Process, StartMethod};
use serde::Serialize;

#[derive(Parser)]
#[command(about = "multiproc against CPython's multiprocessing, side by side")]
struct Args {
    /// A benchmark name, or `all`, or `list`.
    name: String,
    /// Run about a tenth of the iterations (a smoke test).
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// The CPython interpreter to compare with.
    #[arg(long, default_value = "python3")]
    python: String,
}

/// Whether a larger or a smaller figure is better.
#[derive(Clone, Copy)]
enum Better {
    Higher,
    Lower,
}

struct Bench {
    name: &'static str,
    unit: &'static str,
    better: Better,
    run: fn(quick: bool) -> anyhow::Result<f64>,
}

const BENCHES: &[Bench] = &[
    Bench {
        name: "process_spawn_join",
        unit: "us",
        better: Better::Lower,
        run: spawn_join_default,
    },
    Bench {
        name: "process_spawn_join_forkserver",
        unit: "us",
        better: Better::Lower,
        run: spawn_join_forkserver,
    },
    Bench {
        name: "pipe_pingpong",
        unit: "rt/s",
        better: Better::Higher,
        run: pipe_pingpong,
    },
    Bench {
        name: "pipe_throughput",
        unit: "MB/s",
        better: Better::Higher,
        run: pipe_throughput,
    },
];

#[derive(Serialize)]
struct Outcome {
    name: &'static str,
    ours: f64,
    cpython: f64,
    unit: &'static str,
    ratio: f64,
}

fn main() {
    multiproc::init();
    if let Err(e) = run() {
        eprintln!("multiproc-bench: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.name == "list" {
        for b in BENCHES {
            println!("{}", b.name);
        }
        return Ok(());
    }
    let chosen: Vec<&Bench> = if args.name == "all" {
        BENCHES.iter().collect()
    } else {
        let b = BENCHES.iter().find(|b| b.name == args.name);
        vec![b.with_context(|| format!("unknown benchmark {:?} (try `list`)", args.name))?]
    };
    println!(
        "# machine: {} CPUs; ratio > 1 means multiproc is better",
        multiproc::cpu_count()
    );
    println!(
        "{:<32} {:>14} {:>14} {:<6} {:>8}",
        "# name", "ours", "cpython", "unit", "ratio"
    );
    let mut outcomes = Vec::new();
    for b in chosen {
        let ours = (b.run)(args.quick).with_context(|| format!("{}: ours", b.name))?;
        let cpython = cpython(&args.python, b.name, args.quick)?;
        let ratio = match b.better {
            Better::Higher => ours / cpython,
            Better::Lower => cpython / ours,
        };
        println!(
            "{:<32} {:>14.1} {:>14.1} {:<6} {:>8.2}",
            b.name, ours, cpython, b.unit, ratio
        );
        outcomes.push(Outcome {
            name: b.name,
            ours,
            cpython,
            unit: b.unit,
            ratio,
        });
    }
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&outcomes)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Runs the same benchmark in CPython (`python/bench.py`) and reads its JSON line.
fn cpython(python: &str, name: &str, quick: bool) -> anyhow::Result<f64> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/bench.py");
    let mut cmd = Command::new(python);
    cmd.arg(script).arg(name);
    if quick {
        cmd.arg("--quick");
    }
    let out = cmd
        .output()
        .with_context(|| format!("running {python} {script}"))?;
    if !out.status.success() {
        bail!(
            "{name}: cpython side failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    #[derive(serde::Deserialize)]
    struct Line {
        value: f64,
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line: Line = serde_json::from_str(text.trim())
        .with_context(|| format!("{name}: cpython printed {text:?}"))?;
    Ok(line.value)
}

fn scaled(n: usize, quick: bool) -> usize {
    if quick { (n / 10).max(1) } else { n }
}

fn spawn_join(method: StartMethod, n: usize) -> anyhow::Result<f64> {
    for _ in 0..5 {
        Process::new(|()| (), ())
            .start_method(method)
            .start()?
            .into_result()?;
    }
    let t = Instant::now();
    for _ in 0..n {
        let mut p = Process::new(|()| (), ()).start_method(method).start()?;
        p.join(None)?;
    }
    Ok(t.elapsed().as_secs_f64() * 1e6 / n as f64)
}

fn spawn_join_default(quick: bool) -> anyhow::Result<f64> {
    spawn_join(StartMethod::Spawn, scaled(200, quick))
}

fn spawn_join_forkserver(quick: bool) -> anyhow::Result<f64> {
    spawn_join(StartMethod::ForkServer, scaled(200, quick))
}

fn echo(conn: Connection<u64>) {
    while let Ok(x) = conn.recv() {
        if conn.send(&x).is_err() {
            break;
        }
    }
}

fn pipe_pingpong(quick: bool) -> anyhow::Result<f64> {
    let n = scaled(20_000, quick);
    let (ours, theirs) = Pipe::new::<u64>(true)?;
    let child = Process::new(echo, theirs).start()?;
    for i in 0..1000 {
        ours.send(&i)?;
        ours.recv()?;
    }
    let t = Instant::now();
    for i in 0..n as u64 {
        ours.send(&i)?;
        let back = ours.recv()?;
        anyhow::ensure!(back == i, "echo mismatch");
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    drop(ours);
    child.into_result()?;
    Ok(rate)
}

fn sink(conn: Connection<u64>) {
    let mut total = 0u64;
    while let Ok(b) = conn.recv_bytes() {
        if b.is_empty() {
            break;
        }
        total += b.len() as u64;
    }
    let _ = conn.send(&total);
}

fn pipe_throughput(quick: bool) -> anyhow::Result<f64> {
    let total: usize = if quick { 64 << 20 } else { 1 << 30 };
    let chunk = vec![0x5au8; 1 << 20];
    let (ours, theirs) = Pipe::new::<u64>(true)?;
    let child = Process::new(sink, theirs).start()?;
    for _ in 0..16 {
        ours.send_bytes(&chunk)?; // warm-up
    }
    let t = Instant::now();
    for _ in 0..total / chunk.len() {
        ours.send_bytes(&chunk)?;
    }
    ours.send_bytes(&[])?;
    let got = ours.recv()?;
    let secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        got as usize == total + 16 * chunk.len(),
        "sink counted {got} bytes"
    );
    child.into_result()?;
    Ok(total as f64 / secs / 1e6)
}
