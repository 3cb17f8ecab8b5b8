//! The broker flavor of a queue: a Redis stream with a consumer group.
//!
//! # Keys and entries
//! A queue named `N` is the stream `N`, read through the consumer group `multiproc`. Each
//! entry has two fields: `codec` (`json`) and `body` (the item in that codec), so any language
//! with a Redis client can put and take items. Items that could not be done go to the stream
//! `N:dead` with the fields `codec`, `body`, `reason`, `deliveries` and `original_id`. The
//! last error reported for an entry waits in the hash `N:errors` until the entry is done.
//!
//! # Delivery
//! At least once. `get` claims an entry whose lease ran out (XAUTOCLAIM; its consumer died or
//! gave it back) before reading a new one (XREADGROUP); the entry is then leased to this handle
//! until `task_done` (XACK + XDEL) or `task_failed` (its idle time is set past the lease, so the
//! next `get` anywhere claims it again). A thread renews this handle's leases while they are
//! held. An entry delivered more than `max_deliveries` times, or one that does not decode, goes
//! to the dead-letter stream instead of to the caller.
//!
//! # Round trips
//! A `put` writes its XADD and does not wait for the reply (replies are read in batches, see
//! [`Link`]); a quick consumer's `get` takes several entries per read (see [`Pace`]); a
//! `task_done` goes with the next command. A steady stream costs well under one round trip
//! per item on either side.
//!
//! # TLS
//! `rediss://` connects with rustls, checking the server's certificate against the system's
//! roots (`SSL_CERT_FILE`/`SSL_CERT_DIR` point elsewhere, as for OpenSSL).
//!
//! # Failures
//! A connection that breaks is opened again with back-off until the call's deadline (for ever
//! for a call without one), so a broker that restarts (with `appendonly yes`, nothing is lost)
//! only delays its clients. The first connection is not retried: an unreachable broker is an
//! error naming its URL.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use redis::{Client, Connection, RedisError, Value};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::sync::IgnorePoison;

/// The consumer group every multiproc queue is read through.
const GROUP: &str = "multiproc";
/// The one codec written today.
const CODEC_JSON: &str = "json";
/// How long the first connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a command (other than a blocking read) may take before the broker counts as gone.
pub(super) const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest single blocking read: between two, leases that ran out are looked for.
const READ_SLICE: Duration = Duration::from_secs(1);
/// Back-off between reconnection attempts.
const RECONNECT_FIRST: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// How often `join` and a full bounded `put` look again.
const POLL: Duration = Duration::from_millis(20);
/// The largest item accepted from the broker (a bound on untrusted input).
const MAX_BODY: usize = 512 << 20;

/// Broker settings of a queue.
#[derive(Clone, Debug)]
pub(super) struct BrokerSettings {
    pub(super) lease: Duration,
    pub(super) max_deliveries: u32,
    /// Whether `lease` and `max_deliveries` were asked for (rather than left to the queue):
    /// an asked value must be the queue's.
    pub(super) asked: Asked,
    pub(super) maxsize: u32,
    /// Items are leased until `task_done` (a `JoinableQueue`), rather than removed by `get`.
    pub(super) joinable: bool,
}

/// Which of a queue's settings a handle asked for.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Asked {
    pub(super) lease: bool,
    pub(super) max_deliveries: bool,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            lease: Duration::from_secs(30),
            max_deliveries: 5,
            asked: Asked::default(),
            maxsize: 0,
            joinable: false,
        }
    }
}

/// What a handle sent to another process carries: enough to connect again.
#[derive(Serialize, Deserialize)]
pub(super) struct BrokerHandle {
    url: String,
    name: String,
    lease_ms: u64,
    max_deliveries: u32,
    maxsize: u32,
    joinable: bool,
}

/// The key names of one queue.
struct Keys {
    stream: String,
    dead: String,
    errors: String,
    /// The queue's settings, which every handle shares: `lease_ms`, `max_deliveries`.
    config: String,
}

/// Entry ids a handle took and has not finished, oldest first.
type Leases = Arc<Mutex<VecDeque<String>>>;
/// Entry ids a handle finished and has not acknowledged to the broker yet.
type Acks = Arc<Mutex<Vec<String>>>;
/// Entries a handle read ahead and has not handed out yet, oldest first.
type Prefetched = Arc<Mutex<VecDeque<Entry>>>;

/// The most entries one read takes.
const PREFETCH_MAX: usize = 16;
/// How long, at the caller's pace, the entries read ahead may wait here: a caller that takes
/// 100 µs per item gets 10 at a time, one that takes 1 ms or more gets one.
const PREFETCH_WINDOW: Duration = Duration::from_millis(1);

/// How quickly the caller comes back for the next item, which decides how many entries a
/// read takes: many when items are done quickly (one round trip for several), one at a time
/// when they take long (no entry waits here behind a long task while another consumer is
/// idle).
#[derive(Default)]
struct Pace {
    /// When the last item was handed out.
    handed: Option<Instant>,
    /// A moving average of the time from handing an item out to the next `get`.
    busy: Option<Duration>,
}

impl Pace {
    /// Notes a `get`: the time since the last item was handed out is how long it took.
    fn asked(&mut self) {
        if let Some(handed) = self.handed.take() {
            let took = handed.elapsed();
            self.busy = Some(self.busy.map_or(took, |b| (b * 3 + took) / 4));
        }
    }

    /// Notes that an item was handed out.
    fn handed(&mut self) {
        self.handed = Some(Instant::now());
    }

    /// How many entries the next read may take.
    fn batch(&self) -> usize {
        self.busy.map_or(1, |busy| {
            let n = PREFETCH_WINDOW.as_nanos() / busy.as_nanos().max(1);
            usize::try_from(n)
                .unwrap_or(usize::MAX)
                .clamp(1, PREFETCH_MAX)
        })
    }
}

/// A queue on a Redis stream.
pub(super) struct RedisQueue {
    client: Client,
    url: String,
    name: String,
    keys: Keys,
    consumer: String,
    settings: BrokerSettings,
    conn: Mutex<Link>,
    /// A second connection for blocking reads, so that a thread waiting in `get` does not
    /// hold up another thread's `put` or `task_done` on the same handle.
    reader: Mutex<Link>,
    /// Entries this handle took and has not finished, oldest first.
    leases: Leases,
    /// Entries finished here whose acknowledgement goes with the next read (or any other
    /// call to the broker on this handle): one round trip per item instead of two. Their
    /// leases are renewed meanwhile.
    acks: Acks,
    /// Entries a read took beyond the one it handed out (see [`Pace`]): leased to this handle
    /// (and renewed) until a later `get` hands them out, or given back when it is dropped.
    prefetched: Prefetched,
    pace: Mutex<Pace>,
    closed: super::Closed,
    /// Dropping the sender stops the lease-renewing thread.
    renewer: Mutex<Option<mpsc::Sender<()>>>,
    /// When `get` last looked for entries whose lease ran out (it does so every quarter
    /// lease, and whenever no new entry came, not before every read).
    last_claim: Mutex<Option<Instant>>,
}

/// A connection to the broker (made when first needed) and the puts written on it whose
/// replies have not been read.
///
/// A `put` writes its XADD and goes on: the entry is on its way to the broker (and visible to
/// consumers as soon as the broker reads it) without the producer waiting a round trip for
/// the reply. Replies are read in batches: once [`UNCONFIRMED_MAX`] are outstanding (the
/// older half, which have long arrived), before any other command on the connection, by
/// `flush` and on drop.
#[derive(Default)]
struct Link {
    conn: Option<Connection>,
    /// The packed XADDs written and not yet confirmed, oldest first. On a new connection
    /// they are written again: an entry whose reply was lost with the old connection may
    /// then be stored twice (at least once, as everywhere on a broker).
    unconfirmed: VecDeque<Vec<u8>>,
    /// Puts the broker refused, told by the next `put` or `flush` (the call that learnt of
    /// them may be another): how many, and the first reason.
    refused: Option<(usize, String)>,
}

/// How many puts may wait for their replies; past it, the older half are read.
const UNCONFIRMED_MAX: usize = 256;

impl Link {
    /// The connection, made if there is none (writing the unconfirmed puts on it again).
    fn connection(&mut self, client: &Client) -> redis::RedisResult<&mut Connection> {
        let c = match self.conn.take() {
            Some(c) => c,
            None => {
                let mut c = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
                c.set_read_timeout(Some(COMMAND_TIMEOUT))?;
                if !self.unconfirmed.is_empty() {
                    let again: Vec<u8> = self.unconfirmed.iter().flatten().copied().collect();
                    c.send_packed_command(&again)?;
                }
                c
            }
        };
        Ok(self.conn.insert(c))
    }

    /// Reads the replies of the puts written until at most `keep` are outstanding.
    fn confirm(&mut self, keep: usize) -> redis::RedisResult<()> {
        let Some(c) = self.conn.as_mut() else {
            return Ok(());
        };
        while self.unconfirmed.len() > keep {
            if let Value::ServerError(e) = c.recv_response()? {
                let refused = self.refused.get_or_insert_with(|| (0, e.to_string()));
                refused.0 += 1;
            }
            self.unconfirmed.pop_front();
        }
        Ok(())
    }

    /// Takes the news of refused puts, as an error.
    fn take_refused(&mut self, what: &str) -> Result<()> {
        match self.refused.take() {
            None => Ok(()),
            Some((n, reason)) => Err(Error::Remote {
                what: what.to_string(),
                detail: format!(
                    "the broker refused {n} earlier put(s), whose items are not queued: {reason}"
                ),
            }),
        }
    }
}

/// An entry read from the stream.
struct Entry {
    id: String,
    fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Entry {
    fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(k, _)| k == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    }
}

impl RedisQueue {
    /// Connects to the queue `name` at `url`, creating its stream and group if needed.
    pub(super) fn connect(url: &str, name: &str, settings: BrokerSettings) -> Result<RedisQueue> {
        let what = format!("queue {name:?} at {}", redact(url));
        if name.is_empty() || name.len() > 1024 {
            return Err(Error::invalid(what, "a queue name must be 1 to 1024 bytes"));
        }
        // rustls picks its crypto provider from its crate features (ring, the only one we
        // turn on) unless the application installed another first.
        #[cfg(not(feature = "tls"))]
        if url.starts_with("rediss://") {
            return Err(Error::invalid(
                what,
                "rediss:// needs multiproc's `tls` feature, which this build does not have",
            ));
        }
        let client = Client::open(url)
            .map_err(|e| Error::invalid(what.clone(), format!("bad broker URL: {e}")))?;
        let conn = client
            .get_connection_with_timeout(CONNECT_TIMEOUT)
            .and_then(|c| c.set_read_timeout(Some(COMMAND_TIMEOUT)).map(|()| c))
            .map_err(|e| broker_error(&what, "cannot connect", e))?;
        let mut queue = RedisQueue {
            client,
            url: url.to_string(),
            name: name.to_string(),
            keys: Keys {
                stream: name.to_string(),
                dead: format!("{name}:dead"),
                errors: format!("{name}:errors"),
                config: format!("{name}:config"),
            },
            consumer: consumer_name(),
            settings,
            conn: Mutex::new(Link {
                conn: Some(conn),
                ..Link::default()
            }),
            reader: Mutex::new(Link::default()),
            leases: Arc::new(Mutex::new(VecDeque::new())),
            acks: Arc::new(Mutex::new(Vec::new())),
            prefetched: Arc::new(Mutex::new(VecDeque::new())),
            pace: Mutex::new(Pace::default()),
            closed: super::Closed::default(),
            renewer: Mutex::new(None),
            last_claim: Mutex::new(None),
        };
        let deadline = Some(Instant::now() + COMMAND_TIMEOUT);
        queue.with_conn(deadline, |c| create_group(c, &queue.keys.stream))?;
        queue.settings = queue.agree_settings(deadline)?;
        Ok(queue)
    }

    /// The queue's lease and `max_deliveries`, which every handle shares (a consumer takes
    /// over entries idle longer than its lease, so consumers with different leases would
    /// take each other's): the first handle that asks for a value stores it in `N:config`,
    /// the handles that ask for none take it from there (or the default while none is
    /// stored), and a handle that asks for another value is refused.
    fn agree_settings(&self, deadline: Option<Instant>) -> Result<BrokerSettings> {
        let mine = &self.settings;
        let lease_ms = u64::try_from(mine.lease.as_millis()).unwrap_or(u64::MAX);
        let (stored_lease, stored_max): (Option<String>, Option<String>) =
            self.with_conn(deadline, |c| {
                let mut pipe = redis::pipe();
                if mine.asked.lease {
                    pipe.cmd("HSETNX")
                        .arg(&self.keys.config)
                        .arg("lease_ms")
                        .arg(lease_ms)
                        .ignore();
                }
                if mine.asked.max_deliveries {
                    pipe.cmd("HSETNX")
                        .arg(&self.keys.config)
                        .arg("max_deliveries")
                        .arg(mine.max_deliveries)
                        .ignore();
                }
                let ((lease, max),) = pipe
                    .cmd("HMGET")
                    .arg(&self.keys.config)
                    .arg("lease_ms")
                    .arg("max_deliveries")
                    .query(c)?;
                Ok((lease, max))
            })?;
        let malformed = |field: &str, v: &str| {
            Error::protocol(
                self.what(),
                format!(
                    "{}: field {field} is {v:?}, not a positive integer",
                    self.keys.config
                ),
            )
        };
        let lease = match stored_lease.as_deref() {
            None => mine.lease,
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|&ms| ms > 0)
                .map(Duration::from_millis)
                .ok_or_else(|| malformed("lease_ms", v))?,
        };
        let max_deliveries = match stored_max.as_deref() {
            None => mine.max_deliveries,
            Some(v) => v
                .parse::<u32>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| malformed("max_deliveries", v))?,
        };
        if mine.asked.lease && lease != mine.lease {
            return Err(Error::invalid(
                self.what(),
                format!(
                    "the queue's lease is {lease:?}, not {:?}: every consumer of a queue uses \
                     the same (ask for none to take the queue's)",
                    mine.lease
                ),
            ));
        }
        if mine.asked.max_deliveries && max_deliveries != mine.max_deliveries {
            return Err(Error::invalid(
                self.what(),
                format!(
                    "the queue's max_deliveries is {max_deliveries}, not {} (ask for none to \
                     take the queue's)",
                    mine.max_deliveries
                ),
            ));
        }
        Ok(BrokerSettings {
            lease,
            max_deliveries,
            ..mine.clone()
        })
    }

    /// The lease every consumer of this queue uses.
    pub(super) fn lease(&self) -> Duration {
        self.settings.lease
    }

    /// Connects again from a handle sent by another process.
    pub(super) fn reopen(handle: BrokerHandle) -> Result<RedisQueue> {
        // What the queue had then; the queue's own settings (read again) are what counts.
        let settings = BrokerSettings {
            lease: Duration::from_millis(handle.lease_ms),
            max_deliveries: handle.max_deliveries.max(1),
            asked: Asked::default(),
            maxsize: handle.maxsize,
            joinable: handle.joinable,
        };
        RedisQueue::connect(&handle.url, &handle.name, settings)
    }

    pub(super) fn handle(&self) -> BrokerHandle {
        BrokerHandle {
            url: self.url.clone(),
            name: self.name.clone(),
            lease_ms: self.settings.lease.as_millis() as u64,
            max_deliveries: self.settings.max_deliveries,
            maxsize: self.settings.maxsize,
            joinable: self.settings.joinable,
        }
    }

    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// The URL without its password.
    pub(super) fn url(&self) -> String {
        redact(&self.url)
    }

    fn what(&self) -> String {
        format!("queue {:?} at {}", self.name, self.url())
    }

    pub(super) fn close(&self) {
        self.closed.close();
    }

    fn check_open(&self) -> Result<()> {
        self.closed.check(|| self.what())
    }

    pub(super) fn maxsize(&self) -> u32 {
        self.settings.maxsize
    }

    pub(super) fn put_until<T: Serialize>(
        &self,
        item: &T,
        deadline: Option<Instant>,
        block: bool,
        waited: Duration,
    ) -> Result<()> {
        self.check_open()?;
        let body = serde_json::to_vec(item)
            .map_err(|e| Error::serialization(self.what(), format!("cannot serialize: {e}")))?;
        let mut xadd = redis::cmd("XADD");
        xadd.arg(&self.keys.stream)
            .arg("*")
            .arg("codec")
            .arg(CODEC_JSON)
            .arg("body")
            .arg(&body);
        if self.settings.maxsize == 0 {
            return self.send_put(xadd.get_packed_command(), deadline);
        }
        loop {
            // A bounded queue's put waits for its reply: the next one looks at the length.
            if !self.is_full_until(deadline)? {
                return self.with_conn(deadline, |c| xadd.query::<Value>(c).map(drop));
            }
            if !block {
                return Err(Error::Full { what: self.what() });
            }
            if !pause_until(deadline, POLL) {
                return Err(Error::timeout(self.what(), waited));
            }
        }
    }

    /// Writes the put `packed` without waiting for its reply (see [`Link`]); tells of puts
    /// refused earlier.
    fn send_put(&self, mut packed: Vec<u8>, deadline: Option<Instant>) -> Result<()> {
        let mut link = self.conn.lock().ignore_poison();
        self.retrying(&mut link, deadline, |link| {
            link.connection(&self.client)?
                .send_packed_command(&packed)?;
            // Written: from here on it is the link's to confirm (or to write again).
            link.unconfirmed.push_back(std::mem::take(&mut packed));
            Ok(())
        })?;
        if link.unconfirmed.len() >= UNCONFIRMED_MAX {
            self.retrying(&mut link, deadline, |link| {
                link.connection(&self.client)?;
                link.confirm(UNCONFIRMED_MAX / 2)
            })?;
        }
        link.take_refused(&self.what())
    }

    /// Waits until the broker has stored every item put through this handle; an item it
    /// refused is an error.
    pub(super) fn flush(&self, deadline: Option<Instant>) -> Result<()> {
        self.with_conn(deadline, |_| Ok(()))?;
        self.conn.lock().ignore_poison().take_refused(&self.what())
    }

    pub(super) fn get_until<T: DeserializeOwned>(
        &self,
        deadline: Option<Instant>,
        block: bool,
        waited: Duration,
    ) -> Result<T> {
        self.lock_pace().asked();
        loop {
            self.check_open()?;
            let ahead = self.lock_prefetched().pop_front();
            if let Some(entry) = ahead {
                match self.hand_out(entry, 1, deadline)? {
                    Some(item) => return Ok(item),
                    None => continue,
                }
            }
            let lease_ms = self.settings.lease.as_millis() as u64;
            // First an entry whose lease ran out (now and then), then new ones.
            let claim = self.claim_due();
            let claimed = if claim {
                self.with_conn(deadline, |c| {
                    let reply: Value = redis::cmd("XAUTOCLAIM")
                        .arg(&self.keys.stream)
                        .arg(GROUP)
                        .arg(&self.consumer)
                        .arg(lease_ms)
                        .arg("0-0")
                        .arg("COUNT")
                        .arg(1)
                        .query(c)?;
                    Ok(parse_autoclaim(reply))
                })?
            } else {
                None
            };
            let (entry, deliveries) = match claimed {
                Some(entry) => {
                    // There may be more: the next `get` looks again before reading new ones.
                    *self.last_claim.lock().ignore_poison() = None;
                    let deliveries = self.deliveries(&entry.id, deadline)?;
                    (Some(entry), deliveries)
                }
                None => {
                    let slice = match deadline {
                        _ if !block => None,
                        None => Some(READ_SLICE),
                        Some(d) => {
                            Some(d.saturating_duration_since(Instant::now()).min(READ_SLICE))
                        }
                    };
                    // Acknowledgements waiting here go in the same round trip as the read.
                    let acks = std::mem::take(&mut *self.acks.lock().ignore_poison());
                    let batch = self.lock_pace().batch();
                    let read = self.with_conn_on(&self.reader, deadline, |c| {
                        let mut cmd = redis::cmd("XREADGROUP");
                        cmd.arg("GROUP")
                            .arg(GROUP)
                            .arg(&self.consumer)
                            .arg("COUNT")
                            .arg(batch);
                        if let Some(slice) = slice.filter(|s| !s.is_zero()) {
                            cmd.arg("BLOCK").arg(slice.as_millis().max(1) as u64);
                            c.set_read_timeout(Some(slice + COMMAND_TIMEOUT))?;
                        }
                        cmd.arg("STREAMS").arg(&self.keys.stream).arg(">");
                        let reply = if acks.is_empty() {
                            cmd.query::<Value>(c)
                        } else {
                            let mut pipe = redis::pipe();
                            self.add_acks(&mut pipe, &acks);
                            pipe.add_command(cmd);
                            pipe.query::<(Value,)>(c).map(|(v,)| v)
                        };
                        c.set_read_timeout(Some(COMMAND_TIMEOUT))?;
                        match reply {
                            Err(e) if e.code() == Some("NOGROUP") => {
                                // The broker lost the group (restarted without persistence).
                                create_group(c, &self.keys.stream)?;
                                Ok(Vec::new())
                            }
                            other => Ok(parse_read(other?)),
                        }
                    });
                    let entry = match read {
                        Ok(entries) => {
                            let mut entries = entries.into_iter();
                            let first = entries.next();
                            let mut ahead = self.lock_prefetched();
                            ahead.extend(entries);
                            if !ahead.is_empty() {
                                drop(ahead);
                                self.start_renewer();
                            }
                            first
                        }
                        Err(e) => {
                            self.acks.lock().ignore_poison().extend(acks);
                            return Err(e);
                        }
                    };
                    if entry.is_none() {
                        // Nothing new: look for expired leases on the next round.
                        *self.last_claim.lock().ignore_poison() = None;
                    }
                    (entry, 1)
                }
            };
            if let Some(entry) = entry
                && let Some(item) = self.hand_out(entry, deliveries, deadline)?
            {
                return Ok(item);
            }
            // Before giving up, one look for entries given back or left by the dead.
            if !claim {
                continue;
            }
            if !block || deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(if block {
                    Error::timeout(self.what(), waited)
                } else {
                    Error::Empty { what: self.what() }
                });
            }
        }
    }

    /// The item of `entry`, delivered `deliveries` times, taken (leased or finished); `None`
    /// if it went to the dead-letter stream instead.
    fn hand_out<T: DeserializeOwned>(
        &self,
        entry: Entry,
        deliveries: u32,
        deadline: Option<Instant>,
    ) -> Result<Option<T>> {
        // This delivery is not handed out: the dead letter counts those that were, as
        // `max_deliveries` does.
        let handed_out = deliveries.saturating_sub(1);
        if deliveries > self.settings.max_deliveries {
            let reason = self
                .last_error(&entry.id, deadline)?
                .unwrap_or_else(|| "its lease ran out each time (consumers died?)".into());
            self.dead_letter(&entry, &reason, handed_out, deadline)?;
            return Ok(None);
        }
        match decode(&entry) {
            Ok(item) => {
                if self.settings.joinable {
                    self.take_lease(entry.id);
                } else {
                    self.finish(&entry.id, deadline)?;
                }
                self.lock_pace().handed();
                Ok(Some(item))
            }
            Err(reason) => {
                tracing::warn!(queue = %self.name, id = %entry.id, %reason, "dead-lettered a malformed entry");
                self.dead_letter(&entry, &reason, handed_out, deadline)?;
                Ok(None)
            }
        }
    }

    fn lock_pace(&self) -> MutexGuard<'_, Pace> {
        self.pace.lock().ignore_poison()
    }

    fn lock_prefetched(&self) -> MutexGuard<'_, VecDeque<Entry>> {
        self.prefetched.lock().ignore_poison()
    }

    /// Gives back the entries read ahead and not handed out: in one transaction each goes
    /// back to the end of the stream as a new entry (consumers waiting for one wake at once,
    /// which an entry left for XAUTOCLAIM would not do) and the original is acknowledged.
    /// None of them was ever handed out, so nothing of their history is lost.
    fn give_back_prefetched(&self, deadline: Option<Instant>) -> Result<()> {
        // An entry with no fields (none Redis would store) stays pending here: its lease runs
        // out and the next consumer dead-letters it.
        let entries: Vec<Entry> = self
            .lock_prefetched()
            .drain(..)
            .filter(|e| !e.fields.is_empty())
            .collect();
        if entries.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        self.with_conn(deadline, |c| {
            let mut pipe = redis::pipe();
            pipe.atomic();
            for entry in &entries {
                let add = pipe.cmd("XADD").arg(&self.keys.stream).arg("*");
                for (k, v) in &entry.fields {
                    add.arg(k).arg(v);
                }
                add.ignore();
            }
            pipe.cmd("XACK")
                .arg(&self.keys.stream)
                .arg(GROUP)
                .arg(&ids)
                .ignore();
            pipe.cmd("XDEL").arg(&self.keys.stream).arg(&ids).ignore();
            pipe.query::<()>(c)
        })
    }

    /// Whether it is time to look for entries whose lease ran out (and notes that it is).
    fn claim_due(&self) -> bool {
        let mut last = self.last_claim.lock().ignore_poison();
        let due = last.is_none_or(|t| t.elapsed() >= self.settings.lease / 4);
        if due {
            *last = Some(Instant::now());
        }
        due
    }

    /// How many times entry `id` was delivered.
    fn deliveries(&self, id: &str, deadline: Option<Instant>) -> Result<u32> {
        self.with_conn(deadline, |c| {
            let reply: Value = redis::cmd("XPENDING")
                .arg(&self.keys.stream)
                .arg(GROUP)
                .arg(id)
                .arg(id)
                .arg(1)
                .query(c)?;
            Ok(parse_pending_count(reply).unwrap_or(1))
        })
    }

    fn last_error(&self, id: &str, deadline: Option<Instant>) -> Result<Option<String>> {
        self.with_conn(deadline, |c| {
            let reason: Option<Vec<u8>> =
                redis::cmd("HGET").arg(&self.keys.errors).arg(id).query(c)?;
            Ok(reason.map(|r| String::from_utf8_lossy(&r).into_owned()))
        })
    }

    /// Moves `entry` to the dead-letter stream, in one transaction.
    fn dead_letter(
        &self,
        entry: &Entry,
        reason: &str,
        deliveries: u32,
        deadline: Option<Instant>,
    ) -> Result<()> {
        self.with_conn(deadline, |c| {
            let mut add = redis::cmd("XADD");
            add.arg(&self.keys.dead).arg("*");
            for (k, v) in &entry.fields {
                if !matches!(k.as_slice(), b"reason" | b"deliveries" | b"original_id") {
                    add.arg(k).arg(v);
                }
            }
            add.arg("reason")
                .arg(reason)
                .arg("deliveries")
                .arg(deliveries)
                .arg("original_id")
                .arg(&entry.id);
            redis::pipe()
                .atomic()
                .add_command(add)
                .cmd("XACK")
                .arg(&self.keys.stream)
                .arg(GROUP)
                .arg(&entry.id)
                .cmd("XDEL")
                .arg(&self.keys.stream)
                .arg(&entry.id)
                .cmd("HDEL")
                .arg(&self.keys.errors)
                .arg(&entry.id)
                .query::<Value>(c)
                .map(drop)
        })
    }

    fn take_lease(&self, id: String) {
        self.lock_leases().push_back(id);
        self.start_renewer();
    }

    fn lock_leases(&self) -> MutexGuard<'_, VecDeque<String>> {
        self.leases.lock().ignore_poison()
    }

    /// The oldest lease, or an error if there is none.
    fn oldest_lease(&self, what: &str) -> Result<String> {
        self.lock_leases().pop_front().ok_or_else(|| {
            Error::invalid(
                self.what(),
                format!("{what}() called more times than items were taken"),
            )
        })
    }

    pub(super) fn task_done(&self) -> Result<()> {
        let id = self.oldest_lease("task_done")?;
        self.acks.lock().ignore_poison().push(id);
        Ok(())
    }

    /// Sends the acknowledgements waiting in `acks`.
    fn flush_acks(&self, deadline: Option<Instant>) -> Result<()> {
        let ids = std::mem::take(&mut *self.acks.lock().ignore_poison());
        if ids.is_empty() {
            return Ok(());
        }
        let sent = self.with_conn(deadline, |c| {
            let mut pipe = redis::pipe();
            self.add_acks(&mut pipe, &ids);
            pipe.query::<()>(c)
        });
        if sent.is_err() {
            // Not lost: sent with the next call, or the entries come back to someone.
            self.acks.lock().ignore_poison().extend(ids);
        }
        sent
    }

    /// Adds to `pipe` what finishes entries `ids`: deleted first, then acknowledged, so that
    /// an interruption between the two leaves a pending entry the broker knows is gone (the
    /// next XAUTOCLAIM drops it) rather than an acknowledged one left in the stream for ever.
    fn add_acks(&self, pipe: &mut redis::Pipeline, ids: &[String]) {
        pipe.cmd("XDEL").arg(&self.keys.stream).arg(ids).ignore();
        pipe.cmd("XACK")
            .arg(&self.keys.stream)
            .arg(GROUP)
            .arg(ids)
            .ignore();
        pipe.cmd("HDEL").arg(&self.keys.errors).arg(ids).ignore();
    }

    /// Acknowledges entry `id` and removes it (and its recorded error).
    fn finish(&self, id: &str, deadline: Option<Instant>) -> Result<()> {
        self.with_conn(deadline, |c| {
            redis::pipe()
                .atomic()
                .cmd("XACK")
                .arg(&self.keys.stream)
                .arg(GROUP)
                .arg(id)
                .cmd("XDEL")
                .arg(&self.keys.stream)
                .arg(id)
                .cmd("HDEL")
                .arg(&self.keys.errors)
                .arg(id)
                .query::<Value>(c)
                .map(drop)
        })
    }

    pub(super) fn task_failed(&self, reason: &str) -> Result<()> {
        let id = self.oldest_lease("task_failed")?;
        let lease_ms = self.settings.lease.as_millis() as u64;
        self.with_conn(None, |c| {
            // Recorded for the dead-letter stream, then given back: an idle time past the
            // lease makes the next XAUTOCLAIM anywhere take it.
            redis::pipe()
                .atomic()
                .cmd("HSET")
                .arg(&self.keys.errors)
                .arg(&id)
                .arg(reason)
                .cmd("XCLAIM")
                .arg(&self.keys.stream)
                .arg(GROUP)
                .arg(&self.consumer)
                .arg(0)
                .arg(&id)
                .arg("IDLE")
                .arg(lease_ms)
                .arg("JUSTID")
                .query::<Value>(c)
                .map(drop)
        })
    }

    /// Items not yet taken by any consumer.
    pub(super) fn waiting(&self) -> Result<usize> {
        let deadline = Some(Instant::now() + COMMAND_TIMEOUT);
        self.flush_acks(deadline)?;
        self.with_conn(deadline, |c| {
            let (len, pending): (usize, Value) = redis::pipe()
                .cmd("XLEN")
                .arg(&self.keys.stream)
                .cmd("XPENDING")
                .arg(&self.keys.stream)
                .arg(GROUP)
                .query(c)?;
            let pending = match pending {
                Value::Array(v) => v.first().and_then(as_u64).unwrap_or(0) as usize,
                _ => 0,
            };
            Ok(len.saturating_sub(pending))
        })
    }

    /// Entries in the stream: not taken, or taken and not finished.
    pub(super) fn unfinished(&self) -> Result<u64> {
        let deadline = Some(Instant::now() + COMMAND_TIMEOUT);
        self.flush_acks(deadline)?;
        self.with_conn(deadline, |c| {
            redis::cmd("XLEN").arg(&self.keys.stream).query(c)
        })
    }

    pub(super) fn is_full(&self) -> bool {
        self.is_full_until(Some(Instant::now() + COMMAND_TIMEOUT))
            .unwrap_or(false)
    }

    fn is_full_until(&self, deadline: Option<Instant>) -> Result<bool> {
        if self.settings.maxsize == 0 {
            return Ok(false);
        }
        let len: u64 = self.with_conn(deadline, |c| {
            redis::cmd("XLEN").arg(&self.keys.stream).query(c)
        })?;
        Ok(len >= u64::from(self.settings.maxsize))
    }

    pub(super) fn join_until(&self, deadline: Option<Instant>, waited: Duration) -> Result<()> {
        self.flush_acks(deadline)?;
        loop {
            let left: u64 = self.with_conn(deadline, |c| {
                redis::cmd("XLEN").arg(&self.keys.stream).query(c)
            })?;
            if left == 0 {
                return Ok(());
            }
            if !pause_until(deadline, POLL) {
                return Err(Error::timeout(self.what(), waited));
            }
        }
    }

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

    /// Runs `op` on the connection, connecting again with back-off while the broker cannot
    /// be reached, until `deadline`.
    fn with_conn<R>(
        &self,
        deadline: Option<Instant>,
        op: impl FnMut(&mut Connection) -> redis::RedisResult<R>,
    ) -> Result<R> {
        self.with_conn_on(&self.conn, deadline, op)
    }

    /// [`with_conn`](Self::with_conn) on the connection in `slot`, once the replies of the
    /// puts written on it are read.
    fn with_conn_on<R>(
        &self,
        slot: &Mutex<Link>,
        deadline: Option<Instant>,
        mut op: impl FnMut(&mut Connection) -> redis::RedisResult<R>,
    ) -> Result<R> {
        let mut link = slot.lock().ignore_poison();
        self.retrying(&mut link, deadline, |link| {
            link.connection(&self.client)?;
            link.confirm(0)?;
            op(link.conn.as_mut().expect("connected just above"))
        })
    }

    /// Runs `op` on `link`, dropping its connection and trying again with back-off while the
    /// broker cannot be reached, until `deadline`.
    fn retrying<R>(
        &self,
        link: &mut Link,
        deadline: Option<Instant>,
        mut op: impl FnMut(&mut Link) -> redis::RedisResult<R>,
    ) -> Result<R> {
        let mut backoff = RECONNECT_FIRST;
        loop {
            match op(link) {
                Ok(v) => return Ok(v),
                Err(e) if retriable(&e) => {
                    link.conn = None;
                    tracing::warn!(queue = %self.name, error = %e, "broker unreachable; retrying");
                    if !pause_until(deadline, backoff) {
                        return Err(broker_error(&self.what(), "broker unreachable", e));
                    }
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                }
                Err(e) => {
                    // An error the broker did not send (a reply that does not parse…) leaves
                    // the connection in an unknown state: the next call makes a new one.
                    if e.code().is_none() {
                        link.conn = None;
                    }
                    return Err(broker_error(&self.what(), "broker refused", e));
                }
            }
        }
    }

    /// Starts the thread that renews this handle's leases, if it is not running.
    fn start_renewer(&self) {
        let mut renewer = self.renewer.lock().ignore_poison();
        if renewer.is_some() {
            return;
        }
        let (stop, stopped) = mpsc::channel::<()>();
        let leases = self.leases.clone();
        let acks = self.acks.clone();
        let prefetched = self.prefetched.clone();
        let client = self.client.clone();
        let stream = self.keys.stream.clone();
        let consumer = self.consumer.clone();
        let every = self.settings.lease / 3;
        let spawned = std::thread::Builder::new()
            .name("multiproc-lease".into())
            .spawn(move || {
                renew_leases(
                    client,
                    stream,
                    consumer,
                    (leases, acks, prefetched),
                    every,
                    stopped,
                )
            });
        if spawned.is_ok() {
            *renewer = Some(stop);
        }
    }
}

impl Drop for RedisQueue {
    fn drop(&mut self) {
        // Best effort: unsent acknowledgements otherwise come back as redeliveries, and
        // unconfirmed puts may still have to be written again.
        let deadline = Some(Instant::now() + COMMAND_TIMEOUT);
        let flushed = self
            .give_back_prefetched(deadline)
            .and_then(|()| self.flush_acks(deadline))
            .and_then(|()| self.flush(deadline));
        if let Err(e) = flushed {
            tracing::error!(queue = %self.name, error = %e, "dropping a broker queue handle");
        }
        // Ends the renewer; leases still held run out and their items go to other consumers.
        self.renewer.lock().ignore_poison().take();
    }
}

/// The renewing thread: every `every`, resets the idle time of the leased entries this
/// consumer still owns, until told to stop.
fn renew_leases(
    client: Client,
    stream: String,
    consumer: String,
    (leases, acks, prefetched): (Leases, Acks, Prefetched),
    every: Duration,
    stopped: mpsc::Receiver<()>,
) {
    let mut conn: Option<Connection> = None;
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
        let mut ids: Vec<String> = leases.lock().ignore_poison().iter().cloned().collect();
        ids.extend(acks.lock().ignore_poison().iter().cloned());
        ids.extend(
            prefetched
                .lock()
                .ignore_poison()
                .iter()
                .map(|e| e.id.clone()),
        );
        if ids.is_empty() {
            continue;
        }
        if conn.is_none() {
            conn = client.get_connection_with_timeout(CONNECT_TIMEOUT).ok();
        }
        let Some(c) = conn.as_mut() else { continue };
        let _ = c.set_read_timeout(Some(COMMAND_TIMEOUT));
        // Only entries still ours: one whose lease ran out may have gone to another consumer.
        let owned: redis::RedisResult<Value> = redis::cmd("XPENDING")
            .arg(&stream)
            .arg(GROUP)
            .arg("-")
            .arg("+")
            .arg(ids.len().max(1) * 4)
            .arg(&consumer)
            .query(c);
        let owned = match owned {
            Ok(v) => pending_ids(v),
            Err(_) => {
                conn = None;
                continue;
            }
        };
        let renew: Vec<&String> = ids.iter().filter(|id| owned.contains(id)).collect();
        if renew.is_empty() {
            continue;
        }
        let mut claim = redis::cmd("XCLAIM");
        claim.arg(&stream).arg(GROUP).arg(&consumer).arg(0);
        for id in renew {
            claim.arg(id);
        }
        claim.arg("JUSTID");
        if claim.query::<Value>(c).is_err() {
            conn = None;
        }
    }
}

/// Creates the stream and its group unless they exist. The group starts at the stream's
/// beginning, so items put before any consumer came are delivered.
fn create_group(c: &mut Connection, stream: &str) -> redis::RedisResult<()> {
    let created: redis::RedisResult<Value> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query(c);
    match created {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        // A broker out of memory refuses the creation even of a group that exists: then a
        // consumer may still connect (and drain the queue), as long as the group is there.
        Err(e) if e.code() == Some("OOM") => {
            let groups: redis::RedisResult<Value> =
                redis::cmd("XINFO").arg("GROUPS").arg(stream).query(c);
            let ours = |row: &Value| {
                field_of(row, "name").and_then(|v| as_string(&v)).as_deref() == Some(GROUP)
            };
            match groups {
                Ok(Value::Array(rows)) if rows.iter().any(ours) => Ok(()),
                _ => Err(e),
            }
        }
        other => other.map(drop),
    }
}

/// Whether an error means the broker is (for now) out of reach, rather than a refusal.
fn retriable(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(e.code(), Some("LOADING" | "TRYAGAIN" | "MASTERDOWN"))
}

fn broker_error(what: &str, doing: &str, e: RedisError) -> Error {
    Error::io(what, std::io::Error::other(format!("{doing}: {e}")))
}

/// `url` with any password replaced by `***`.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => format!("{}***{}", &url[..scheme + 3], &url[at..]),
            }
        }
        _ => url.to_string(),
    }
}

/// A consumer name unique to this handle: host, pid and a random part.
fn consumer_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let mut random = [0u8; 4];
    let _ = getrandom::fill(&mut random);
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        u32::from_le_bytes(random)
    )
}

/// Waits `pause` (less if `deadline` comes first); false if the deadline has passed.
fn pause_until(deadline: Option<Instant>, pause: Duration) -> bool {
    let now = Instant::now();
    let until = match deadline {
        Some(d) if d <= now => return false,
        Some(d) => d.min(now + pause),
        None => now + pause,
    };
    // A parked thread is woken only by its deadline here: nothing else unparks it.
    while Instant::now() < until {
        std::thread::park_timeout(until.saturating_duration_since(Instant::now()));
    }
    true
}

/// Decodes an entry's item, or says why it cannot be.
fn decode<T: DeserializeOwned>(entry: &Entry) -> std::result::Result<T, String> {
    let codec = entry.field("codec").unwrap_or(CODEC_JSON.as_bytes());
    if codec != CODEC_JSON.as_bytes() {
        return Err(format!(
            "unknown codec {:?}",
            String::from_utf8_lossy(&codec[..codec.len().min(64)])
        ));
    }
    let body = entry
        .field("body")
        .ok_or_else(|| "no body field".to_string())?;
    if body.len() > MAX_BODY {
        return Err(format!("body of {} bytes is over the limit", body.len()));
    }
    serde_json::from_slice(body).map_err(|e| format!("body does not decode: {e}"))
}

fn as_bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.as_bytes().to_vec()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

fn as_string(v: &Value) -> Option<String> {
    as_bytes(v).and_then(|b| String::from_utf8(b).ok())
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => as_string(other)?.parse().ok(),
    }
}

/// The value of `key` in a reply row that is a map or a flat `[key, value, ...]` array.
fn field_of(row: &Value, key: &str) -> Option<Value> {
    match row {
        Value::Array(kv) => kv
            .chunks_exact(2)
            .find(|p| as_string(&p[0]).as_deref() == Some(key))
            .map(|p| p[1].clone()),
        Value::Map(kv) => kv
            .iter()
            .find(|(k, _)| as_string(k).as_deref() == Some(key))
            .map(|(_, v)| v.clone()),
        _ => None,
    }
}

/// `[id, [field, value, ...]]`.
fn parse_entry(v: &Value) -> Option<Entry> {
    let Value::Array(parts) = v else { return None };
    let id = as_string(parts.first()?)?;
    let fields = match parts.get(1)? {
        Value::Array(kv) => kv
            .chunks_exact(2)
            .filter_map(|p| Some((as_bytes(&p[0])?, as_bytes(&p[1])?)))
            .collect(),
        Value::Map(kv) => kv
            .iter()
            .filter_map(|(k, v)| Some((as_bytes(k)?, as_bytes(v)?)))
            .collect(),
        _ => Vec::new(),
    };
    Some(Entry { id, fields })
}

/// XREADGROUP's reply: `[[stream, [entry…]]]`, or nil.
fn parse_read(v: Value) -> Vec<Entry> {
    let streams = match v {
        Value::Array(s) => s,
        Value::Map(m) => m
            .into_iter()
            .map(|(k, v)| Value::Array(vec![k, v]))
            .collect(),
        _ => return Vec::new(),
    };
    let entries = streams.first().and_then(|stream| match stream {
        Value::Array(stream) => match stream.get(1)? {
            Value::Array(entries) => Some(entries),
            _ => None,
        },
        _ => None,
    });
    entries
        .map(|entries| entries.iter().filter_map(parse_entry).collect())
        .unwrap_or_default()
}

/// XAUTOCLAIM's reply: `[cursor, [entry], [deleted ids]]`.
fn parse_autoclaim(v: Value) -> Option<Entry> {
    let Value::Array(parts) = v else { return None };
    let Value::Array(entries) = parts.get(1)? else {
        return None;
    };
    entries.first().and_then(parse_entry)
}

/// The delivery count in XPENDING's extended reply: `[[id, consumer, idle, count]]`.
fn parse_pending_count(v: Value) -> Option<u32> {
    let Value::Array(rows) = v else { return None };
    let Value::Array(row) = rows.first()? else {
        return None;
    };
    as_u64(row.get(3)?).and_then(|n| u32::try_from(n).ok())
}

/// The ids in XPENDING's extended reply.
fn pending_ids(v: Value) -> Vec<String> {
    let Value::Array(rows) = v else {
        return Vec::new();
    };
    rows.iter()
        .filter_map(|row| match row {
            Value::Array(r) => r.first().and_then(as_string),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(redact("redis://:s3cret@h:6379/0"), "redis://:***@h:6379/0");
        assert_eq!(redact("redis://me:s3cret@h/"), "redis://me:***@h/");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
        assert_eq!(
            redact("redis+unix:///tmp/r.sock"),
            "redis+unix:///tmp/r.sock"
        );
    }

    fn entry(fields: &[(&str, &[u8])]) -> Entry {
        Entry {
            id: "1-0".into(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec()))
                .collect(),
        }
    }

    #[test]
    fn malformed_entries_say_why() {
        assert_eq!(
            decode::<u32>(&entry(&[("codec", b"json"), ("body", b"7")])),
            Ok(7)
        );
        let why = |e: Entry| decode::<u32>(&e).unwrap_err();
        assert!(why(entry(&[("codec", b"pickle"), ("body", b"7")])).contains("unknown codec"));
        assert!(why(entry(&[("codec", b"json")])).contains("no body"));
        assert!(why(entry(&[("body", b"\"seven\"")])).contains("does not decode"));
    }

    #[test]
    fn replies_parse_and_garbage_does_not_panic() {
        let e = Value::Array(vec![
            Value::BulkString(b"5-1".to_vec()),
            Value::Array(vec![
                Value::BulkString(b"body".to_vec()),
                Value::BulkString(b"1".to_vec()),
            ]),
        ]);
        let read = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"q".to_vec()),
            Value::Array(vec![e.clone(), Value::Nil, e.clone()]),
        ])]);
        let ids: Vec<String> = parse_read(read).into_iter().map(|e| e.id).collect();
        assert_eq!(ids, ["5-1", "5-1"]);
        let claim = Value::Array(vec![
            Value::BulkString(b"0-0".to_vec()),
            Value::Array(vec![e]),
            Value::Array(vec![]),
        ]);
        assert_eq!(parse_autoclaim(claim).unwrap().id, "5-1");
        for garbage in [Value::Nil, Value::Int(3), Value::Array(vec![Value::Nil])] {
            assert!(parse_read(garbage.clone()).is_empty());
            assert!(parse_autoclaim(garbage.clone()).is_none());
            assert!(parse_pending_count(garbage).is_none());
        }
    }
}
