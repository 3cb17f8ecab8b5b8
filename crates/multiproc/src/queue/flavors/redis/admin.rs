//! Looking after a queue on a broker: how many items wait, who holds which, and the dead
//! letters (list, requeue, purge). What `multiproc status` and `multiproc dead` show.

use std::time::{Duration, Instant};

use redis::Value;

use super::entry::{as_string, as_u64, field_of, parse_entry};
use super::{BrokerSettings, COMMAND_TIMEOUT, GROUP, RedisQueue};
use crate::error::Result;

/// A queue on a broker, seen from outside: its state and its dead letters.
///
/// # Examples
///
/// ```no_run
/// let admin = multiproc::QueueAdmin::connect("redis://127.0.0.1:6379/0", "tasks")?;
/// let status = admin.status()?;
/// println!("{} waiting, {} taken, {} dead", status.waiting, status.pending, status.dead);
/// for letter in admin.dead_letters(10)? {
///     println!("{}: {}", letter.id, letter.reason);
/// }
/// admin.requeue_dead(None)?; // every dead letter back into the queue
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct QueueAdmin {
    queue: RedisQueue,
}

/// The state of a queue on a broker ([`QueueAdmin::status`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueStatus {
    /// Items no consumer has taken yet.
    pub waiting: u64,
    /// Items taken and not yet done.
    pub pending: u64,
    /// Items in the dead-letter stream.
    pub dead: u64,
    /// The consumers the broker knows, with what they hold.
    pub consumers: Vec<ConsumerStatus>,
}

/// One consumer of a queue on a broker.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerStatus {
    /// Its name: `host-pid-random`.
    pub name: String,
    /// Items it holds.
    pub pending: u64,
    /// Since its last read or renewal.
    pub idle: Duration,
    /// It holds items and has been silent for longer than `lease`: probably gone.
    pub dead: bool,
}

/// An item in a queue's dead-letter stream.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// Its id in the dead-letter stream.
    pub id: String,
    /// Its id in the queue before.
    pub original_id: String,
    /// Why it is here: its last error, or what was wrong with it.
    pub reason: String,
    /// How many times it was handed to a consumer: `max_deliveries` for one that failed (or
    /// whose consumer died) each time, 0 for one that could not be decoded.
    pub deliveries: u32,
    /// Its codec and body, as they were.
    pub codec: String,
    /// The item, in its codec (JSON text for `json`).
    pub body: String,
}

impl QueueAdmin {
    /// Connects to the queue `name` at `url`.
    ///
    /// # Errors
    /// A bad URL, or a broker that cannot be reached.
    pub fn connect(url: &str, name: &str) -> Result<QueueAdmin> {
        let queue = RedisQueue::connect(url, name, BrokerSettings::default())?;
        Ok(QueueAdmin { queue })
    }

    /// How many items wait, are taken, or are dead, and which consumers hold which; a
    /// consumer counts as dead when it holds items and was silent for longer than `lease`.
    ///
    /// # Errors
    /// A broker that cannot be reached.
    pub fn status_with_lease(&self, lease: Duration) -> Result<QueueStatus> {
        self.queue.status(lease)
    }

    /// [`status_with_lease`](Self::status_with_lease) with the queue's own lease.
    ///
    /// # Errors
    /// As for [`status_with_lease`](Self::status_with_lease).
    pub fn status(&self) -> Result<QueueStatus> {
        self.status_with_lease(self.queue.lease())
    }

    /// Up to `limit` dead letters, oldest first.
    ///
    /// # Errors
    /// A broker that cannot be reached.
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        self.queue.dead_letters(limit)
    }

    /// Puts dead letters back into the queue as new items (`ids`, or all of them) and
    /// removes them from the dead-letter stream; how many.
    ///
    /// # Errors
    /// A broker that cannot be reached.
    pub fn requeue_dead(&self, ids: Option<&[String]>) -> Result<usize> {
        self.queue.requeue_dead(ids)
    }

    /// Deletes the queue from the broker: its stream (with the items in it), its dead
    /// letters and its recorded errors.
    ///
    /// # Errors
    /// A broker that cannot be reached.
    pub fn destroy(self) -> Result<()> {
        self.queue.destroy()
    }

    /// Deletes every dead letter; how many there were.
    ///
    /// # Errors
    /// A broker that cannot be reached.
    pub fn purge_dead(&self) -> Result<u64> {
        self.queue.purge_dead()
    }
}

impl std::fmt::Debug for QueueAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueAdmin")
            .field("name", &self.queue.name())
            .field("broker", &self.queue.url())
            .finish()
    }
}

impl RedisQueue {
    /// See [`QueueAdmin::status_with_lease`](super::QueueAdmin::status_with_lease).
    pub(super) fn status(&self, lease: Duration) -> Result<super::QueueStatus> {
        let deadline = Some(Instant::now() + COMMAND_TIMEOUT);
        self.flush_acks(deadline)?;
        let (len, pending, dead, consumers): (u64, Value, u64, Value) =
            self.with_conn(deadline, |c| {
                redis::pipe()
                    .cmd("XLEN")
                    .arg(&self.keys.stream)
                    .cmd("XPENDING")
                    .arg(&self.keys.stream)
                    .arg(GROUP)
                    .cmd("XLEN")
                    .arg(&self.keys.dead)
                    .cmd("XINFO")
                    .arg("CONSUMERS")
                    .arg(&self.keys.stream)
                    .arg(GROUP)
                    .query(c)
            })?;
        let pending = match pending {
            Value::Array(v) => v.first().and_then(as_u64).unwrap_or(0),
            _ => 0,
        };
        let consumers = match consumers {
            Value::Array(rows) => rows
                .iter()
                .filter_map(|row| {
                    let get = |key: &str| field_of(row, key);
                    let name = get("name").as_ref().and_then(as_string)?;
                    let held = get("pending").as_ref().and_then(as_u64).unwrap_or(0);
                    let idle =
                        Duration::from_millis(get("idle").as_ref().and_then(as_u64).unwrap_or(0));
                    Some(super::ConsumerStatus {
                        name,
                        pending: held,
                        idle,
                        dead: held > 0 && idle > lease,
                    })
                })
                .collect(),
            _ => Vec::new(),
        };
        Ok(super::QueueStatus {
            waiting: len.saturating_sub(pending),
            pending,
            dead,
            consumers,
        })
    }

    /// See [`QueueAdmin::dead_letters`](super::QueueAdmin::dead_letters).
    pub(super) fn dead_letters(&self, limit: usize) -> Result<Vec<super::DeadLetter>> {
        let deadline = Some(Instant::now() + COMMAND_TIMEOUT);
        let entries: Value = self.with_conn(deadline, |c| {
            redis::cmd("XRANGE")
                .arg(&self.keys.dead)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(limit.max(1))
                .query(c)
        })?;
        let Value::Array(entries) = entries else {
            return Ok(Vec::new());
        };
        Ok(entries
            .iter()
            .filter_map(parse_entry)
            .map(|e| {
                let text = |k: &str| {
                    e.field(k)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default()
                };
                super::DeadLetter {
                    original_id: text("original_id"),
                    reason: text("reason"),
                    deliveries: text("deliveries").parse().unwrap_or(0),
                    codec: text("codec"),
                    body: text("body"),
                    id: e.id,
                }
            })
            .collect())
    }

    /// See [`QueueAdmin::requeue_dead`](super::QueueAdmin::requeue_dead).
    pub(super) fn requeue_dead(&self, ids: Option<&[String]>) -> Result<usize> {
        let mut moved = 0;
        loop {
            let letters = self.dead_letters(100)?;
            let chosen: Vec<_> = letters
                .into_iter()
                .filter(|l| ids.is_none_or(|ids| ids.contains(&l.id)))
                .collect();
            if chosen.is_empty() {
                return Ok(moved);
            }
            for letter in &chosen {
                self.with_conn(None, |c| {
                    redis::pipe()
                        .atomic()
                        .cmd("XADD")
                        .arg(&self.keys.stream)
                        .arg("*")
                        .arg("codec")
                        .arg(&letter.codec)
                        .arg("body")
                        .arg(&letter.body)
                        .cmd("XDEL")
                        .arg(&self.keys.dead)
                        .arg(&letter.id)
                        .query::<Value>(c)
                        .map(drop)
                })?;
            }
            moved += chosen.len();
            if ids.is_some() {
                return Ok(moved);
            }
        }
    }

    /// See [`QueueAdmin::destroy`](super::QueueAdmin::destroy).
    pub(super) fn destroy(&self) -> Result<()> {
        let deadline = Some(Instant::now() + COMMAND_TIMEOUT);
        self.with_conn(deadline, |c| {
            redis::cmd("DEL")
                .arg(&self.keys.stream)
                .arg(&self.keys.dead)
                .arg(&self.keys.errors)
                .arg(&self.keys.config)
                .query::<Value>(c)
                .map(drop)
        })
    }

    /// See [`QueueAdmin::purge_dead`](super::QueueAdmin::purge_dead).
    pub(super) fn purge_dead(&self) -> Result<u64> {
        let deadline = Some(Instant::now() + COMMAND_TIMEOUT);
        self.with_conn(deadline, |c| {
            let (len, _): (u64, Value) = redis::pipe()
                .atomic()
                .cmd("XLEN")
                .arg(&self.keys.dead)
                .cmd("DEL")
                .arg(&self.keys.dead)
                .query(c)?;
            Ok(len)
        })
    }
}
