//! `worker`, `submit` and `collect` on a Redis broker, and `status` and `dead`, which look
//! after broker queues. Tasks and results are JSON objects any language can read and write
//! (see `docs/broker.md`): a task `{"id": 7, "task": 3}`, its result
//! `{"id": 7, "task": 3, "result": "3 * 3 = 9"}`.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use multiproc::{ErrorKind, JoinableQueue, Queue, QueueAdmin};
use serde::{Deserialize, Serialize};

use crate::queues::{BrokerArg, Collect, Item, Submit, TaskRunner, Worker};

/// A task on a broker: its id (unique per submission) and the task.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Task {
    pub(crate) id: u64,
    pub(crate) task: Item,
}

/// A result on a broker: the task's id and the task, and what came of it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Outcome {
    pub(crate) id: u64,
    pub(crate) task: Item,
    pub(crate) result: Item,
}

fn seconds(s: f64, what: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("bad {what}: {s}"))
}

pub(crate) fn worker(url: &str, args: &Worker) -> anyhow::Result<()> {
    let runner = TaskRunner::new(args)?;
    let mut tasks = Queue::broker(url, &args.tasks);
    if let Some(lease) = args.lease {
        tasks = tasks.lease(seconds(lease, "--lease")?);
    }
    if let Some(n) = args.max_deliveries {
        tasks = tasks.max_deliveries(n);
    }
    let tasks: JoinableQueue<Task> = tasks.build_joinable()?;
    let results: Queue<Outcome> = Queue::connect(url, &args.results)?;
    let idle = seconds(args.idle.max(0.0), "--idle")?;
    let (mut done, mut failed) = (0u64, 0u64);
    loop {
        let task = match tasks.get_timeout(idle) {
            Ok(t) => t,
            Err(e) if matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Empty) => break,
            Err(e) => return Err(e.into()),
        };
        match runner.run(&task.task) {
            Ok(result) => {
                println!("task {} -> {}", task.task.brief(), result.brief());
                results.put(Outcome {
                    id: task.id,
                    task: task.task,
                    result,
                })?;
                // The result is stored before the task is acknowledged: a worker that dies in
                // between leaves the task to run again, never a task done without its result.
                results.flush()?;
                tasks.task_done()?;
                done += 1;
            }
            Err(e) => {
                eprintln!("task {} failed: {e:#}", task.task.brief());
                tasks.task_failed(&format!("{e:#}"))?;
                failed += 1;
            }
        }
    }
    println!("worker: {done} tasks done, {failed} failed, none left");
    Ok(())
}

pub(crate) fn submit(url: &str, args: &Submit) -> anyhow::Result<()> {
    let queue: Queue<Task> = Queue::connect(url, &args.queue)?;
    // Ids unique across submissions: a random batch number, then the position.
    let batch = u64::from(random_u32()) << 32;
    for (i, item) in args.items.iter().enumerate() {
        queue.put(Task {
            id: batch | i as u64,
            task: Item::parse(item),
        })?;
    }
    // Puts go without waiting for the broker's replies: these say every task is stored.
    queue.flush()?;
    println!("submitted {} tasks", args.items.len());
    Ok(())
}

pub(crate) fn collect(url: &str, args: &Collect) -> anyhow::Result<()> {
    let queue: Queue<Outcome> = Queue::connect(url, &args.queue)?;
    let wait = seconds(args.timeout.max(0.0), "--timeout")?;
    let mut seen = HashSet::new();
    while seen.len() < args.count {
        match queue.get_timeout(wait) {
            Ok(outcome) => {
                if seen.insert(outcome.id) {
                    println!("{}", outcome.result);
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Empty) => bail!(
                "only {} of {} results came within {:?}",
                seen.len(),
                args.count,
                wait
            ),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn random_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish() as u32
}

/// `multiproc status`.
#[derive(Debug, Args)]
pub(crate) struct Status {
    #[command(flatten)]
    broker: BrokerArg,
    /// Seconds of silence after which a consumer holding tasks counts as dead (default: the
    /// queue's lease).
    #[arg(long)]
    lease: Option<f64>,
    /// The queues to show.
    #[arg(default_values_t = ["task".to_string(), "result".to_string()])]
    queues: Vec<String>,
}

pub(crate) fn status(args: Status) -> anyhow::Result<()> {
    let url = redis_only(&args.broker, "status")?;
    let lease = args.lease.map(|s| seconds(s, "--lease")).transpose()?;
    println!(
        "{:<16} {:>8} {:>8} {:>6} {:>10} {:>9} {:>6}",
        "queue", "waiting", "pending", "dead", "consumers", "idle max", "lost"
    );
    for name in &args.queues {
        let admin = QueueAdmin::connect(url, name)?;
        let s = match lease {
            Some(lease) => admin.status_with_lease(lease)?,
            None => admin.status()?,
        };
        let idle = s.consumers.iter().map(|c| c.idle).max().unwrap_or_default();
        let lost = s.consumers.iter().filter(|c| c.dead).count();
        println!(
            "{:<16} {:>8} {:>8} {:>6} {:>10} {:>8.1}s {:>6}",
            name,
            s.waiting,
            s.pending,
            s.dead,
            s.consumers.len(),
            idle.as_secs_f64(),
            lost
        );
    }
    Ok(())
}

/// `multiproc dead`.
#[derive(Debug, Args)]
pub(crate) struct Dead {
    #[command(flatten)]
    broker: BrokerArg,
    #[command(subcommand)]
    action: DeadAction,
}

/// What to do with dead letters.
#[derive(Debug, Subcommand)]
enum DeadAction {
    /// List them, one a line: id, times handed to a worker (as --max-deliveries counts),
    /// reason, task. Control characters are escaped; a long reason or task is cut (see --full).
    Ls {
        /// The queue.
        #[arg(default_value = "task")]
        queue: String,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Show reasons and tasks whole (still escaped).
        #[arg(long)]
        full: bool,
    },
    /// Put them back into the queue (those named, or all).
    Requeue {
        /// The queue.
        queue: String,
        /// Dead-letter ids (default: all).
        ids: Vec<String>,
    },
    /// Delete them all.
    Purge {
        /// The queue.
        queue: String,
    },
}

pub(crate) fn dead(args: Dead) -> anyhow::Result<()> {
    let url = redis_only(&args.broker, "dead")?;
    match args.action {
        DeadAction::Ls { queue, limit, full } => {
            let max = if full { usize::MAX } else { DEAD_CHARS };
            for l in QueueAdmin::connect(url, &queue)?.dead_letters(limit)? {
                println!(
                    "{}\t{}\t{}\t{}",
                    printable(&l.id, max),
                    l.deliveries,
                    printable(&l.reason, max),
                    printable(&l.body, max)
                );
            }
        }
        DeadAction::Requeue { queue, ids } => {
            let admin = QueueAdmin::connect(url, &queue)?;
            let n = admin.requeue_dead((!ids.is_empty()).then_some(ids.as_slice()))?;
            println!("requeued {n}");
        }
        DeadAction::Purge { queue } => {
            let n = QueueAdmin::connect(url, &queue)?.purge_dead()?;
            println!("purged {n}");
        }
    }
    Ok(())
}

/// How much of a dead letter's reason and task `dead ls` shows without `--full`.
const DEAD_CHARS: usize = 200;

/// `text` safe for a terminal and one line: control characters (tabs and newlines too)
/// escaped, cut after `max` characters with the full length said.
fn printable(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == max {
            out.push_str(&format!("… ({} bytes)", text.len()));
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn redis_only<'a>(broker: &'a BrokerArg, command: &str) -> anyhow::Result<&'a str> {
    broker.redis().with_context(|| {
        format!(
            "`{command}` needs a Redis broker (-b redis://…), not the manager at {}",
            broker.broker
        )
    })
}
