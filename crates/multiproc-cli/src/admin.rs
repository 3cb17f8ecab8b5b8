//! `multiproc status` and `multiproc dead`: looking after queues on a Redis broker (how many
//! tasks wait, who holds which, the dead letters), `status --watch` to follow them, and
//! `status --migrate-keys` to move queues made before key prefixes under the prefix.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use clap::{Args, Subcommand};
use multiproc::{QueueAdmin, QueueStatus};

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
    /// The queues to show, each with the queues a broker pool keeps beside it
    /// (`NAME:high`, `NAME@<build digest>`). A queue still under its old keys (made before
    /// there were key prefixes) is marked `*`.
    #[arg(default_values_t = ["task".to_string(), "result".to_string()])]
    queues: Vec<String>,
    /// Print JSON instead of a table: an object per queue, with its consumers.
    #[arg(long)]
    json: bool,
    /// Show the queues again every SECONDS (default 2) until Ctrl-C, with what each did
    /// since the last time: items put and done per second. On a terminal the table is redrawn
    /// in place; otherwise each one follows the last after a blank line and the time, and
    /// with --json each is one JSON object a line. A broker out of reach is an error line,
    /// and tried again. Give SECONDS or put the queue names first (`status task --watch`).
    #[arg(
        long,
        value_name = "SECONDS",
        num_args = 0..=1,
        default_missing_value = "2"
    )]
    watch: Option<f64>,
    /// Instead of showing the queues, move those made before there were key prefixes (the
    /// stream at the queue's bare name) under the prefix (--prefix, default `multiproc:`): each
    /// queue's keys are renamed in one transaction, with its items, the tasks its workers hold,
    /// its dead letters and settings; refused if any of the new keys exists. Stop the queue's
    /// workers and producers first.
    #[arg(long, conflicts_with_all = ["watch", "json", "lease"])]
    migrate_keys: bool,
}

pub(crate) fn status(args: Status) -> anyhow::Result<()> {
    let url = redis_only(&args.broker, "status")?;
    if args.migrate_keys {
        return migrate_keys(url, &args.queues);
    }
    let lease = args.lease.map(|s| seconds(s, "--lease")).transpose()?;
    if let Some(every) = args.watch {
        return watch(url, &args, lease, every);
    }
    let mut rows = Vec::new();
    for name in with_pool_queues(url, &args.queues)? {
        rows.push(Row::read(url, &name, lease)?);
    }
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        let queues = rows.iter().map(|r| r.json(None)).collect();
        writeln!(out, "{}", serde_json::Value::Array(queues))
    } else {
        let rows: Vec<_> = rows.into_iter().map(|r| (r.name.clone(), Ok(r))).collect();
        write_table(&mut out, &rows, None, "")
    };
    quiet_on_broken_pipe(written)
}

/// `names`, each followed by the queues a broker pool keeps beside it (`<name>:high`,
/// `<name>@<build digest>`) that exist.
fn with_pool_queues(url: &str, names: &[String]) -> anyhow::Result<Vec<String>> {
    let mut all: Vec<String> = Vec::new();
    for name in names {
        let related = QueueAdmin::connect(url, name)?.pool_queues()?;
        for name in std::iter::once(name.clone()).chain(related) {
            if !all.contains(&name) {
                all.push(name);
            }
        }
    }
    Ok(all)
}

/// One queue's state, as `status` shows it.
struct Row {
    /// The queue's name.
    name: String,
    /// What the broker said of it.
    status: QueueStatus,
    /// The key of its stream.
    stream: String,
    /// It is under its old keys.
    old_keys: bool,
    /// When it was read.
    at: Instant,
}

/// Items put and done per second between two [`Row`]s of one queue.
#[derive(Clone, Copy)]
struct Rates {
    /// Items put per second.
    put: f64,
    /// Items done per second: those that left the stream, less those that went to the dead
    /// letters.
    done: f64,
}

impl Row {
    /// Reads queue `name` at `url`; `lease` says when a consumer counts as lost.
    fn read(url: &str, name: &str, lease: Option<Duration>) -> anyhow::Result<Row> {
        let admin = QueueAdmin::connect(url, name)?;
        let status = match lease {
            Some(lease) => admin.status_with_lease(lease)?,
            None => admin.status()?,
        };
        Ok(Row {
            name: name.to_string(),
            status,
            stream: admin.stream_key().to_string(),
            old_keys: admin.uses_old_keys(),
            at: Instant::now(),
        })
    }

    /// The rates since `before`, the same queue read earlier: `None` where the broker does
    /// not count the entries added (before Redis 7), or when the queue was made anew since.
    fn rates_since(&self, before: &Row) -> Option<Rates> {
        let (now, then) = (&self.status, &before.status);
        let secs = self.at.duration_since(before.at).as_secs_f64();
        let put = now.added?.checked_sub(then.added?)?;
        if secs <= 0.0 || self.stream != before.stream {
            return None;
        }
        // What left the stream (done, or dead) is what came in less what it grew by.
        let len = |s: &QueueStatus| (s.waiting + s.pending) as f64;
        let left = (put as f64 - (len(now) - len(then))).max(0.0);
        let died = now.dead.saturating_sub(then.dead) as f64;
        Some(Rates {
            put: put as f64 / secs,
            done: (left - died).max(0.0) / secs,
        })
    }

    /// The JSON object of the queue, with its rates in watch mode (`Some`: `None` inside for
    /// the first time or where unknown).
    fn json(&self, rates: Option<Option<Rates>>) -> serde_json::Value {
        let s = &self.status;
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
        let mut object = serde_json::json!({
            "queue": self.name,
            "waiting": s.waiting,
            "pending": s.pending,
            "dead": s.dead,
            "consumers": consumers,
            "stream": self.stream,
            "old_keys": self.old_keys,
            "added": s.added,
        });
        if let Some(rates) = rates {
            object["put_per_second"] = rates.map(|r| r.put).into();
            object["done_per_second"] = rates.map(|r| r.done).into();
        }
        object
    }
}

/// Writes the table of `rows` (a queue's state, or why it could not be read), with the rates
/// columns in watch mode (`rates` given, per queue name); each line ends with `eol` (an ANSI
/// erase-to-end-of-line when redrawing in place).
fn write_table(
    out: &mut impl Write,
    rows: &[(String, anyhow::Result<Row>)],
    rates: Option<&HashMap<String, Rates>>,
    eol: &str,
) -> std::io::Result<()> {
    write!(
        out,
        "{:<16} {:>8} {:>8} {:>6} {:>10} {:>9} {:>6}",
        "queue", "waiting", "pending", "dead", "consumers", "idle max", "lost"
    )?;
    if rates.is_some() {
        write!(out, " {:>8} {:>8}", "put/s", "done/s")?;
    }
    writeln!(out, "{eol}")?;
    let mut old = false;
    for (name, row) in rows {
        let row = match row {
            Ok(row) => row,
            Err(e) => {
                let error = printable(&multiproc_run::describe(e), DEAD_CHARS);
                writeln!(out, "{:<16} error: {error}{eol}", printable(name, 64))?;
                continue;
            }
        };
        let s = &row.status;
        let idle = s.consumers.iter().map(|c| c.idle).max().unwrap_or_default();
        let lost = s.consumers.iter().filter(|c| c.dead).count();
        let mut shown = printable(name, 64);
        if row.old_keys {
            shown.push('*');
            old = true;
        }
        write!(
            out,
            "{:<16} {:>8} {:>8} {:>6} {:>10} {:>8.1}s {:>6}",
            shown,
            s.waiting,
            s.pending,
            s.dead,
            s.consumers.len(),
            idle.as_secs_f64(),
            lost
        )?;
        if let Some(rates) = rates {
            match rates.get(name) {
                Some(r) => write!(out, " {:>8.1} {:>8.1}", r.put, r.done)?,
                None => write!(out, " {:>8} {:>8}", "-", "-")?,
            }
        }
        writeln!(out, "{eol}")?;
    }
    if old {
        writeln!(
            out,
            "* under its old keys (made before key prefixes): `multiproc status \
             --migrate-keys QUEUE` moves them{eol}"
        )?;
    }
    out.flush()
}

/// The shortest `--watch` interval.
const WATCH_MIN: Duration = Duration::from_millis(100);

/// What the watching loop waits for.
enum Event {
    /// The queues were read (each, or why not).
    Read(Vec<(String, anyhow::Result<Row>)>),
    /// Ctrl-C.
    Interrupted,
}

/// `status --watch`: reads the queues every `every` seconds and shows them, until SIGINT.
fn watch(url: &str, args: &Status, lease: Option<Duration>, every: f64) -> anyhow::Result<()> {
    let every = seconds(every, "--watch")?;
    if every < WATCH_MIN {
        anyhow::bail!("--watch needs at least {} seconds", WATCH_MIN.as_secs_f64());
    }
    let (tx, rx) = mpsc::channel();
    on_sigint(tx.clone())?;
    let tty = !args.json && std::io::stdout().is_terminal();
    let mut last: HashMap<String, Row> = HashMap::new();
    let mut first = true;
    let mut next = Instant::now();
    loop {
        // Read in a thread of its own: a broker that does not answer does not hold up Ctrl-C.
        let (url, names, read) = (url.to_string(), args.queues.clone(), tx.clone());
        std::thread::Builder::new()
            .name("status-read".into())
            .spawn(move || {
                // A broker out of reach: the rows say so.
                let names = with_pool_queues(&url, &names).unwrap_or(names);
                let rows = names
                    .into_iter()
                    .map(|name| {
                        let row = Row::read(&url, &name, lease);
                        (name, row)
                    })
                    .collect();
                let _ = read.send(Event::Read(rows));
            })
            .context("cannot start a thread")?;
        // The reading thread above is the only one that sends `Read`: this is its answer.
        let rows = match rx.recv() {
            Ok(Event::Read(rows)) => rows,
            Ok(Event::Interrupted) | Err(_) => return Ok(()),
        };
        let mut rates = HashMap::new();
        for (name, row) in &rows {
            if let Ok(row) = row
                && let Some(r) = last.get(name).and_then(|before| row.rates_since(before))
            {
                rates.insert(name.clone(), r);
            }
        }
        let time = utc_time(SystemTime::now());
        let mut out = std::io::stdout().lock();
        let written = if args.json {
            let queues: Vec<_> = rows
                .iter()
                .map(|(name, row)| match row {
                    Ok(row) => row.json(Some(rates.get(name).copied())),
                    Err(e) => {
                        serde_json::json!({"queue": name, "error": multiproc_run::describe(e)})
                    }
                })
                .collect();
            writeln!(
                out,
                "{}",
                serde_json::json!({"time": time, "queues": queues})
            )
            .and_then(|()| out.flush())
        } else if tty {
            // The screen cleared the first time; then home, the table over the last one (each
            // line's rest erased), and the rest of the screen erased.
            let clear = if first { "\x1b[2J" } else { "" };
            write!(out, "{clear}\x1b[H")
                .and_then(|()| {
                    write!(
                        out,
                        "Every {}s: multiproc status    {time}\x1b[K\n\x1b[K\n",
                        every.as_secs_f64()
                    )
                })
                .and_then(|()| write_table(&mut out, &rows, Some(&rates), "\x1b[K"))
                .and_then(|()| write!(out, "\x1b[J"))
                .and_then(|()| out.flush())
        } else {
            let gap = if first { "" } else { "\n" };
            writeln!(out, "{gap}# {time}")
                .and_then(|()| write_table(&mut out, &rows, Some(&rates), ""))
        };
        drop(out);
        if let Err(e) = written {
            return quiet_on_broken_pipe(Err(e));
        }
        first = false;
        for (name, row) in rows {
            match row {
                Ok(row) => {
                    last.insert(name, row);
                }
                // Rates start again once it can be read.
                Err(_) => {
                    last.remove(&name);
                }
            }
        }
        next = (next + every).max(Instant::now());
        loop {
            match rx.recv_timeout(next.saturating_duration_since(Instant::now())) {
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Ok(Event::Interrupted) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Ok(());
                }
                Ok(Event::Read(_)) => {}
            }
        }
    }
}

/// Sends [`Event::Interrupted`] on `tx` at SIGINT, which then no longer ends the process:
/// SIGINT is blocked in this thread (and so in every thread started after) and waited for by
/// one thread of its own.
fn on_sigint(tx: mpsc::Sender<Event>) -> anyhow::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let set = SigSet::from(Signal::SIGINT);
    set.thread_block().context("cannot block SIGINT")?;
    std::thread::Builder::new()
        .name("status-sigint".into())
        .spawn(move || {
            if set.wait().is_ok() {
                let _ = tx.send(Event::Interrupted);
            }
        })
        .context("cannot start a thread")?;
    Ok(())
}

/// `result`, with a closed standard output (`status --watch | head`) taken as the end.
fn quiet_on_broken_pipe(result: std::io::Result<()>) -> anyhow::Result<()> {
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write to standard output"),
    }
}

/// `time` in UTC as `2024-05-17T09:30:05.250Z`.
fn utc_time(time: SystemTime) -> String {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's days-to-civil, for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60,
        since.subsec_millis()
    )
}

/// `status --migrate-keys`: moves each queue's old keys under the prefix, saying what it did;
/// an error at the end if any could not be moved.
fn migrate_keys(url: &str, queues: &[String]) -> anyhow::Result<()> {
    let mut failed = 0;
    for name in queues {
        match QueueAdmin::migrate_keys(url, name) {
            Ok(moves) if moves.is_empty() => {
                println!(
                    "{}: nothing to move, its keys are under the prefix",
                    printable(name, 64)
                );
            }
            Ok(moves) => {
                let moves: Vec<String> = moves
                    .iter()
                    .map(|(old, new)| {
                        format!("{} -> {}", printable(old, 1100), printable(new, 1400))
                    })
                    .collect();
                println!("{}: moved {}", printable(name, 64), moves.join(", "));
            }
            Err(e) => {
                eprintln!("multiproc: {}", printable(&e.to_string(), usize::MAX));
                failed += 1;
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} queue(s) not moved", queues.len());
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

pub(crate) fn redis_only<'a>(broker: &'a BrokerArg, command: &str) -> anyhow::Result<&'a str> {
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
