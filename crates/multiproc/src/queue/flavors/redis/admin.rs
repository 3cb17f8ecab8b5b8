//! Looking after a queue on a broker: how many items wait, who holds which, and the dead
//! letters (list, requeue, purge). What `multiproc status` and `multiproc dead` show.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redis::Value;

use super::entry::{Entry, as_string, as_u64, field_of, parse_entry};
use super::keys::{Migration, has_group, migrate, resolve_prefix, split_url};
use super::link::{broker_error, redact};
use super::route::Route;
use super::{BrokerSettings, COMMAND_TIMEOUT, CONNECT_TIMEOUT, GROUP, RedisQueue, open};
use crate::error::{Error, Result};

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
    /// How many entries were ever added to the queue's stream (the broker's `entries-added`,
    /// Redis 7 and later; `None` before): between two statuses, the items put is the change
    /// in `added`, and the items that left the stream (done, or dead) that less the change in
    /// `waiting + pending`. Items given back by a handle that read ahead count as added again.
    pub added: Option<u64>,
    /// How many entries the queue's consumers were handed (the group's `entries-read`,
    /// Redis 7 and later; `None` before), redeliveries not included.
    pub delivered: Option<u64>,
    /// How many times an entry was handed out again after its lease ran out or it was given
    /// back (counted by the consumers that took it over).
    pub redelivered: u64,
    /// How long the item that has waited longest for a consumer has waited, by the broker's
    /// clock: the queue's latency (`None` when no item waits, or the broker is older than
    /// Redis 6.2).
    pub latency: Option<Duration>,
    /// How many items took at most each bound of [`DURATION_BUCKETS`](crate::DURATION_BUCKETS),
    /// then all of them (`+Inf`), from being handed out to being done (`task_done`): every
    /// consumer of the queue adds its items' with its acknowledgements. Empty while none was
    /// counted.
    pub durations: Vec<u64>,
    /// The sum of those durations.
    pub duration_sum: Duration,
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
    /// The id of the item it has held longest, if it holds any (the part before the `-` is
    /// when the item was queued, in milliseconds since the epoch).
    pub oldest: Option<String>,
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
    /// Its codec: `json`, or `postcard` for a broker pool's tasks and results.
    pub codec: String,
    /// The item, in its codec: JSON text for `json`, base64 for `postcard`.
    pub body: String,
}

impl QueueAdmin {
    /// Connects to the queue `name` at `url`, under the key prefix the URL's `prefix=` gives
    /// (`multiproc:` without one; see
    /// [`BrokerQueueBuilder::prefix`](crate::BrokerQueueBuilder::prefix)), or under its old
    /// keys for a queue made before there were prefixes.
    ///
    /// # Errors
    /// A bad URL or prefix, or a broker that cannot be reached.
    pub fn connect(url: &str, name: &str) -> Result<QueueAdmin> {
        let queue = RedisQueue::connect(url, name, BrokerSettings::default())?;
        Ok(QueueAdmin { queue })
    }

    /// Moves the queue `name` made before there were key prefixes (the stream `name`, read
    /// through the group `multiproc`, with `name:dead`, `name:errors` and `name:config`) under
    /// the prefix the URL's `prefix=` gives (`multiproc:` without one): each key is renamed in
    /// one transaction (MULTI/EXEC, watched while it is looked at), with its items, the
    /// entries its consumers hold, its dead letters and its settings. Returns the renames
    /// made, old name and new; none if the queue is already under the prefix.
    ///
    /// Stop the queue's producers and consumers first: a handle still on the old keys is told
    /// that they moved (its puts and gets fail) rather than making them again.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState), nothing renamed, when there
    /// is no such queue, when the old key is not a multiproc queue, when any of the new keys
    /// exists already (the queue was used under the prefix meanwhile: merging is not done), or
    /// when the prefix is empty; a bad URL, or a broker that cannot be reached.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// for (old, new) in multiproc::QueueAdmin::migrate_keys("redis://127.0.0.1:6379/0", "tasks")? {
    ///     println!("{old} -> {new}");
    /// }
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn migrate_keys(url: &str, name: &str) -> Result<Vec<(String, String)>> {
        let (url, in_url) = split_url(url)
            .map_err(|e| Error::invalid(format!("queue {name:?} at {}", redact(url)), e))?;
        let what = format!("queue {name:?} at {}", redact(&url));
        if name.is_empty() || name.len() > 1024 {
            return Err(Error::invalid(what, "a queue name must be 1 to 1024 bytes"));
        }
        let prefix =
            resolve_prefix(None, in_url.as_deref()).map_err(|e| Error::invalid(&what, e))?;
        if prefix.is_empty() {
            return Err(Error::invalid(
                what,
                "the key prefix is empty: the old keys are the queue's keys, nothing to move",
            ));
        }
        let (_, mut conn, _) = open(&url, &what)?;
        let migration = migrate(&mut conn, &prefix, name)
            .map_err(|e| super::link::broker_error(&what, "cannot move the keys", e))?;
        let refusal = match migration {
            Migration::Moved(moves) => return Ok(moves),
            Migration::AlreadyMoved => return Ok(Vec::new()),
            Migration::NoQueue => {
                let new = format!("{prefix}{name}");
                format!("no such queue: neither the stream {name:?} nor {new:?} exists")
            }
            Migration::NotOurs(why) => format!("{why}: not a multiproc queue"),
            Migration::Taken(keys) => format!(
                "{} exist(s) already: the queue was used under the prefix meanwhile, and \
                 merging is not done",
                keys.join(", ")
            ),
            Migration::Busy => "its keys kept changing while they were looked at: stop its \
                                producers and consumers, then try again"
                .to_string(),
        };
        Err(Error::invalid(what, format!("{refusal}; nothing moved")))
    }

    /// The queues at `url` under its key prefix (the URL's `prefix=`, or `multiproc:`): the
    /// streams read through multiproc's consumer group, by name, sorted, at most
    /// [`LIST_MAX`](Self::LIST_MAX). A broker pool's results streams (`<queue>:results:<pool
    /// id>`) are left out; on a Redis Cluster every primary is looked at. Nothing is made.
    ///
    /// # Errors
    /// A bad URL or prefix, or a broker that cannot be reached.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// for name in multiproc::QueueAdmin::list("redis://127.0.0.1:6379/0")? {
    ///     println!("{name}");
    /// }
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn list(url: &str) -> Result<Vec<String>> {
        let (url, in_url) = split_url(url).map_err(|e| Error::invalid(redact(url), e))?;
        let what = format!("the queues at {}", redact(&url));
        let prefix =
            resolve_prefix(None, in_url.as_deref()).map_err(|e| Error::invalid(&what, e))?;
        let (client, mut conn, seeds) = open(&url, &what)?;
        let route = if super::in_cluster(&mut conn)
            .map_err(|e| broker_error(&what, "cannot connect", e))?
        {
            // Any key will do: only the cluster's primaries are wanted.
            Route::find(client, &mut conn, &prefix, seeds)
                .map_err(|e| broker_error(&what, "cannot read the cluster's nodes", e))?
        } else {
            Route::Single(client)
        };
        let clients = route
            .primaries()
            .map_err(|e| broker_error(&what, "cannot read the cluster's nodes", e))?;
        let mut names = Vec::new();
        for client in clients {
            let mut c = client
                .get_connection_with_timeout(CONNECT_TIMEOUT)
                .and_then(|c| c.set_read_timeout(Some(COMMAND_TIMEOUT)).map(|()| c))
                .map_err(|e| broker_error(&what, "cannot connect", e))?;
            let pattern = format!("{}*", glob_escape(&prefix));
            let keys = scan_streams(&mut c, &pattern)
                .map_err(|e| broker_error(&what, "cannot list keys", e))?;
            for key in keys {
                let Some(name) = key.strip_prefix(prefix.as_str()) else {
                    continue;
                };
                let name = match route.is_cluster() {
                    true => match name.strip_prefix('{').and_then(|n| n.strip_suffix('}')) {
                        Some(n) => n,
                        None => continue,
                    },
                    false => name,
                };
                if is_results_stream(name) {
                    continue;
                }
                let ours = has_group(&mut c, &key)
                    .map_err(|e| broker_error(&what, "cannot read a stream's groups", e))?;
                if ours && names.len() < Self::LIST_MAX {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// How long the broker at `url` takes to answer a `PING` on a new connection (made once,
    /// not retried: a broker that is away is an error at once).
    ///
    /// # Errors
    /// A bad URL, or a broker that cannot be reached.
    pub fn ping(url: &str) -> Result<Duration> {
        let (url, _) = split_url(url).map_err(|e| Error::invalid(redact(url), e))?;
        let what = format!("the broker at {}", redact(&url));
        let (_, mut conn, _) = open(&url, &what)?;
        let start = Instant::now();
        redis::cmd("PING")
            .query::<String>(&mut conn)
            .map_err(|e| broker_error(&what, "no answer to PING", e))?;
        Ok(start.elapsed())
    }

    /// The most queues [`list`](Self::list) returns.
    pub const LIST_MAX: usize = 10_000;

    /// The key of the queue's stream: `<prefix><name>`, or the bare name for a queue found
    /// under its old keys.
    pub fn stream_key(&self) -> &str {
        &self.queue.keys.stream
    }

    /// The queues a broker pool keeps beside this one (feature `broker`), by name: its
    /// high-priority stream `<name>:high` and the streams `<name>@<build digest>` where tasks
    /// wait for a worker of their build; those that exist, sorted.
    ///
    /// # Errors
    /// A broker that cannot be reached.
    pub fn pool_queues(&self) -> Result<Vec<String>> {
        self.queue.pool_queues()
    }

    /// Whether the queue was found under its old keys (made before there were prefixes; see
    /// [`migrate_keys`](Self::migrate_keys)) and is used there.
    pub fn uses_old_keys(&self) -> bool {
        self.queue.keys.old
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

    /// Up to `limit` items that failed and wait to be tried again, with the error each last
    /// reported (`task_failed`), cut to 2000 characters.
    ///
    /// # Errors
    /// A broker that cannot be reached.
    pub fn errors(&self, limit: usize) -> Result<Vec<(String, String)>> {
        self.queue.errors(limit)
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

/// `text` with the characters a `SCAN … MATCH` pattern gives a meaning escaped.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The most consumers whose oldest entry `status` looks up.
const OLDEST_LOOKED_AT: usize = 256;
/// The most characters of an error `errors` returns.
const ERROR_SHOWN: usize = 2000;

/// How many keys one `SCAN` step looks at.
const SCAN_COUNT: usize = 1000;

/// The most keys one [`scan_streams`] returns (a bound on what a broker can make us keep).
const SCAN_MAX: usize = 100_000;

/// The streams on the node at the end of `c` whose keys match `pattern`.
fn scan_streams(c: &mut redis::Connection, pattern: &str) -> redis::RedisResult<Vec<String>> {
    let mut found = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .arg("TYPE")
            .arg("stream")
            .query(c)?;
        found.extend(keys);
        cursor = next;
        if cursor == 0 || found.len() >= SCAN_MAX {
            found.truncate(SCAN_MAX);
            return Ok(found);
        }
    }
}

/// Whether `name` is a broker pool's results stream: `<queue>:results:<16 hex digits>`.
fn is_results_stream(name: &str) -> bool {
    name.rsplit_once(":results:")
        .is_some_and(|(_, pool)| pool.len() == 16 && pool.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl RedisQueue {
    /// See [`QueueAdmin::pool_queues`](super::QueueAdmin::pool_queues). On a cluster each of
    /// those queues is in a slot of its own, so every primary is looked at.
    pub(super) fn pool_queues(&self) -> Result<Vec<String>> {
        let cluster = self.route.is_cluster();
        let key_prefix = if self.keys.old { "" } else { &self.prefix };
        // A stream key's queue name, if it is under this queue's prefix.
        let name_of = |key: &str| -> Option<String> {
            let name = key.strip_prefix(key_prefix)?;
            let name = match cluster {
                true => name.strip_prefix('{')?.strip_suffix('}')?,
                false => name,
            };
            Some(name.to_string())
        };
        let (open, close) = if cluster { ("{", "}") } else { ("", "") };
        let prefix = glob_escape(key_prefix);
        let name = glob_escape(&self.name);
        let patterns = [
            format!("{prefix}{open}{name}:high{close}"),
            format!("{prefix}{open}{name}@*{close}"),
        ];
        let clients = self
            .route
            .primaries()
            .map_err(|e| broker_error(&self.what(), "cannot list the cluster's nodes", e))?;
        let mut found = Vec::new();
        for client in clients {
            let mut c = client
                .get_connection_with_timeout(CONNECT_TIMEOUT)
                .and_then(|c| c.set_read_timeout(Some(COMMAND_TIMEOUT)).map(|()| c))
                .map_err(|e| broker_error(&self.what(), "cannot connect", e))?;
            for pattern in &patterns {
                let keys = scan_streams(&mut c, pattern)
                    .map_err(|e| broker_error(&self.what(), "cannot list keys", e))?;
                found.extend(keys.iter().filter_map(|k| name_of(k)).filter(|name| {
                    // `<name>@<digest>` itself, not its dead letters and other keys.
                    let Some(rest) = name.strip_prefix(self.name.as_str()) else {
                        return false;
                    };
                    rest == ":high"
                        || rest.strip_prefix('@').is_some_and(|d| {
                            !d.is_empty() && d.bytes().all(|b| b.is_ascii_hexdigit())
                        })
                }));
            }
        }
        found.sort();
        found.dedup();
        Ok(found)
    }

    /// See [`QueueAdmin::status_with_lease`](super::QueueAdmin::status_with_lease).
    pub(super) fn status(&self, lease: Duration) -> Result<super::QueueStatus> {
        let deadline = Some(Instant::now() + COMMAND_TIMEOUT);
        self.flush_acks(deadline)?;
        type Replies = (u64, Value, u64, Value, Value, Value, Vec<Option<String>>);
        // Only the fields read: a settings hash someone filled is not read whole.
        let fields: Vec<String> = std::iter::once(super::REDELIVERED.to_string())
            .chain(super::took::fields())
            .collect();
        let (len, pending, dead, consumers, stream, groups, values): Replies =
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
                    .cmd("XINFO")
                    .arg("STREAM")
                    .arg(&self.keys.stream)
                    .cmd("XINFO")
                    .arg("GROUPS")
                    .arg(&self.keys.stream)
                    .cmd("HMGET")
                    .arg(&self.keys.config)
                    .arg(&fields)
                    .query(c)
            })?;
        let group = match &groups {
            Value::Array(rows) => rows.iter().find(|row| {
                field_of(row, "name").and_then(|v| as_string(&v)).as_deref() == Some(GROUP)
            }),
            _ => None,
        };
        let delivered = group
            .and_then(|row| field_of(row, "entries-read"))
            .and_then(|v| as_u64(&v));
        let last_delivered = group
            .and_then(|row| field_of(row, "last-delivered-id"))
            .and_then(|v| as_string(&v));
        let added = field_of(&stream, "entries-added").as_ref().and_then(as_u64);
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
                        oldest: None,
                    })
                })
                .collect(),
            _ => Vec::new(),
        };
        let mut consumers: Vec<super::ConsumerStatus> = consumers;
        self.find_oldest(&mut consumers, deadline)?;
        let waiting = len.saturating_sub(pending);
        let latency = match (waiting, last_delivered) {
            (0, _) | (_, None) => None,
            (_, Some(last)) => self.oldest_waiting_age(&last, deadline)?,
        };
        let config: HashMap<String, String> = fields
            .into_iter()
            .zip(values)
            .filter_map(|(field, value)| Some((field, value?)))
            .collect();
        let redelivered = config
            .get(super::REDELIVERED)
            .and_then(|v| v.parse::<u64>().ok());
        let (durations, duration_sum) = super::took::read(&config);
        Ok(super::QueueStatus {
            durations,
            duration_sum,
            latency,
            waiting,
            pending,
            dead,
            consumers,
            added,
            delivered,
            redelivered: redelivered.unwrap_or(0),
        })
    }

    /// Notes in each consumer that holds entries the one it has held longest (one round trip
    /// for all, for the first [`OLDEST_LOOKED_AT`] consumers that hold any).
    /// How long the first entry after `last_delivered` (the oldest no consumer has been
    /// handed) has been in the stream, by the broker's clock; `None` if there is none, or the
    /// broker does not know the exclusive range (before Redis 6.2).
    fn oldest_waiting_age(
        &self,
        last_delivered: &str,
        deadline: Option<Instant>,
    ) -> Result<Option<Duration>> {
        let replies: Option<(Value, (String, String))> = self.with_conn(deadline, |c| {
            let reply = redis::pipe()
                .cmd("XRANGE")
                .arg(&self.keys.stream)
                .arg(format!("({last_delivered}"))
                .arg("+")
                .arg("COUNT")
                .arg(1)
                .cmd("TIME")
                .query(c);
            match reply {
                Err(e) if e.code().is_some() => Ok(None),
                other => other.map(Some),
            }
        })?;
        let Some((first, (secs, micros))) = replies else {
            return Ok(None);
        };
        let queued_ms = match first {
            Value::Array(rows) => rows.first().and_then(|row| match row {
                Value::Array(parts) => parts.first().and_then(as_string),
                _ => None,
            }),
            _ => None,
        }
        .and_then(|id| id.split('-').next()?.parse::<u64>().ok());
        let now_ms = secs.parse::<u64>().ok().zip(micros.parse::<u64>().ok());
        Ok(queued_ms.zip(now_ms).map(|(queued, (s, us))| {
            let now = s.saturating_mul(1000).saturating_add(us / 1000);
            Duration::from_millis(now.saturating_sub(queued))
        }))
    }

    fn find_oldest(
        &self,
        consumers: &mut [super::ConsumerStatus],
        deadline: Option<Instant>,
    ) -> Result<()> {
        let holding: Vec<usize> = (0..consumers.len())
            .filter(|&i| consumers[i].pending > 0)
            .take(OLDEST_LOOKED_AT)
            .collect();
        if holding.is_empty() {
            return Ok(());
        }
        let rows: Vec<Value> = self.with_conn(deadline, |c| {
            let mut pipe = redis::pipe();
            for &i in &holding {
                pipe.cmd("XPENDING")
                    .arg(&self.keys.stream)
                    .arg(GROUP)
                    .arg("-")
                    .arg("+")
                    .arg(1)
                    .arg(&consumers[i].name);
            }
            pipe.query(c)
        })?;
        for (i, row) in holding.into_iter().zip(rows) {
            consumers[i].oldest = super::entry::pending_ids(row).into_iter().next();
        }
        Ok(())
    }

    /// See [`QueueAdmin::errors`](super::QueueAdmin::errors).
    pub(super) fn errors(&self, limit: usize) -> Result<Vec<(String, String)>> {
        let deadline = Some(Instant::now() + COMMAND_TIMEOUT);
        // One step of HSCAN: about `limit` of them, not necessarily the latest.
        let (_, flat): (u64, Vec<Vec<u8>>) = self.with_conn(deadline, |c| {
            redis::cmd("HSCAN")
                .arg(&self.keys.errors)
                .arg(0)
                .arg("COUNT")
                .arg(limit.max(1))
                .query(c)
        })?;
        Ok(flat
            .chunks_exact(2)
            .take(limit)
            .map(|pair| {
                let id = String::from_utf8_lossy(&pair[0]).into_owned();
                let error = String::from_utf8_lossy(&pair[1]);
                (id, error.chars().take(ERROR_SHOWN).collect())
            })
            .collect())
    }

    /// See [`QueueAdmin::dead_letters`](super::QueueAdmin::dead_letters).
    pub(super) fn dead_letters(&self, limit: usize) -> Result<Vec<super::DeadLetter>> {
        Ok(self
            .dead_entries(limit)?
            .into_iter()
            .map(|e| {
                let text = |k: &str| {
                    e.field(k)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default()
                };
                let codec = text("codec");
                let body = e.field("body").unwrap_or_default();
                let body = match codec.as_str() {
                    // A binary codec's body, as base64.
                    super::CODEC_POSTCARD => {
                        use base64::Engine;
                        base64::engine::general_purpose::STANDARD.encode(body)
                    }
                    _ => String::from_utf8_lossy(body).into_owned(),
                };
                super::DeadLetter {
                    original_id: text("original_id"),
                    reason: text("reason"),
                    deliveries: text("deliveries").parse().unwrap_or(0),
                    codec,
                    body,
                    id: e.id,
                }
            })
            .collect())
    }

    /// The first `limit` entries of the dead-letter stream, as they are.
    fn dead_entries(&self, limit: usize) -> Result<Vec<Entry>> {
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
        Ok(entries.iter().filter_map(parse_entry).collect())
    }

    /// See [`QueueAdmin::requeue_dead`](super::QueueAdmin::requeue_dead).
    pub(super) fn requeue_dead(&self, ids: Option<&[String]>) -> Result<usize> {
        let mut moved = 0;
        loop {
            let chosen: Vec<_> = self
                .dead_entries(100)?
                .into_iter()
                .filter(|e| ids.is_none_or(|ids| ids.contains(&e.id)))
                .collect();
            if chosen.is_empty() {
                return Ok(moved);
            }
            for letter in &chosen {
                // Its codec and body as they were (a binary body is not text).
                let field = |k: &str| letter.field(k).unwrap_or_default();
                self.with_conn(None, |c| {
                    redis::pipe()
                        .atomic()
                        .cmd("XADD")
                        .arg(&self.keys.stream)
                        .arg("*")
                        .arg("codec")
                        .arg(field("codec"))
                        .arg("body")
                        .arg(field("body"))
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
    pub(crate) fn destroy(&self) -> Result<()> {
        let deadline = Some(Instant::now() + COMMAND_TIMEOUT);
        self.with_conn(deadline, |c| {
            redis::cmd("DEL")
                .arg(&self.keys.stream)
                .arg(&self.keys.dead)
                .arg(&self.keys.errors)
                .arg(&self.keys.config)
                .arg(format!("{}:scheduled", self.keys.stream))
                .arg(format!("{}:scheduled:items", self.keys.stream))
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
