//! `multiproc status` and `multiproc dead`: looking after queues on a Redis broker (how many
//! tasks wait, who holds which, the dead letters).

use anyhow::Context;
use clap::{Args, Subcommand};
use multiproc::QueueAdmin;

use crate::queues::{BrokerArg, seconds};

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
    /// Print JSON instead of a table: an object per queue, with its consumers.
    #[arg(long)]
    json: bool,
}

pub(crate) fn status(args: Status) -> anyhow::Result<()> {
    let url = redis_only(&args.broker, "status")?;
    let lease = args.lease.map(|s| seconds(s, "--lease")).transpose()?;
    if args.json {
        let mut queues = Vec::new();
        for name in &args.queues {
            let admin = QueueAdmin::connect(url, name)?;
            let s = match lease {
                Some(lease) => admin.status_with_lease(lease)?,
                None => admin.status()?,
            };
            let consumers: Vec<_> = s
                .consumers
                .iter()
                .map(|c| {
                    serde_json::json!({
                        "name": c.name,
                        "pending": c.pending,
                        "idle_seconds": c.idle.as_secs_f64(),
                        "dead": c.dead,
                    })
                })
                .collect();
            queues.push(serde_json::json!({
                "queue": name,
                "waiting": s.waiting,
                "pending": s.pending,
                "dead": s.dead,
                "consumers": consumers,
            }));
        }
        println!("{}", serde_json::Value::Array(queues));
        return Ok(());
    }
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
        /// Print a JSON array instead, each letter whole: id, original_id, deliveries, reason,
        /// codec, body.
        #[arg(long)]
        json: bool,
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
        DeadAction::Ls {
            queue,
            limit,
            full,
            json,
        } => {
            let letters = QueueAdmin::connect(url, &queue)?.dead_letters(limit)?;
            if json {
                let letters: Vec<_> = letters
                    .iter()
                    .map(|l| {
                        serde_json::json!({
                            "id": l.id,
                            "original_id": l.original_id,
                            "deliveries": l.deliveries,
                            "reason": l.reason,
                            "codec": l.codec,
                            "body": l.body,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(letters));
                return Ok(());
            }
            let max = if full { usize::MAX } else { DEAD_CHARS };
            for l in letters {
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
    if !broker.given() {
        anyhow::bail!(
            "`{command}` needs a Redis broker: give it with -b redis://HOST:PORT/DB or in \
             MULTIPROC_BROKER"
        );
    }
    broker.redis().with_context(|| {
        format!(
            "`{command}` needs a Redis broker (-b redis://…), not the manager at {}",
            broker.address()
        )
    })
}
