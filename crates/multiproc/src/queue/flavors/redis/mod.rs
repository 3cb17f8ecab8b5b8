//! The broker flavor of a queue: a Redis stream with a consumer group.
//!
//! # Keys and entries
//! A queue named `N` is the stream `PN`, where `P` is the key prefix (`multiproc:` unless the
//! builder or the URL's `prefix=` gives another; see [`keys`]), read through the consumer group
//! `multiproc`. Each entry has two fields: `codec` (`json`) and `body` (the item in that
//! codec), so any language with a Redis client can put and take items. Items that could not be
//! done go to the stream `PN:dead` with the fields `codec`, `body`, `reason`, `deliveries` and
//! `original_id`. The last error reported for an entry waits in the hash `PN:errors` until the
//! entry is done. A queue made before there were prefixes, under `N`, is used there (with the
//! default prefix) until its keys are moved.
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
//! # Reads
//! A `get` that waits, and a broker pool's results reader, read on a connection of their own
//! (so that they hold up no `put` on the same handle), which reads the replies of its stream
//! reads itself, straight into entries, rather than through redis-rs (see [`resp`]).
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

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use redis::{Client, Value};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::QueueFlavor;
use crate::error::{Error, Result};
use crate::sync::IgnorePoison;

mod admin;
#[cfg(all(feature = "async", not(loom)))]
mod awaiting;
mod entry;
mod keys;
mod leases;
mod link;
mod pack;
mod resp;
mod route;
mod scheduled;
mod settings;
mod sole;
mod took;

pub use admin::{ConsumerStatus, DeadLetter, QueueAdmin, QueueStatus};
pub(crate) use scheduled::Due;
pub use settings::BrokerQueueBuilder;

use entry::{Entry, as_u64, decode, parse_autoclaim};
use keys::{Keys, find_keys, resolve_prefix, split_url, warn_old_keys};
use link::{
    GONE, Link, ReadLink, UNCONFIRMED_MAX, broker_error, consumer_name, create_group, pause_until,
    redact,
};
pub(crate) use link::{Packed, PutTag};
pub(crate) use pack::pack;
use resp::StreamRead;
use route::Route;
use settings::{Asked, BrokerSettings};

/// The consumer group every multiproc queue is read through.
const GROUP: &str = "multiproc";
/// The codec of the items written, unless told otherwise (any language reads it).
const CODEC_JSON: &str = "json";
/// The codec of the library's own streams (a broker pool's tasks and results): postcard,
/// compact and quick, for multiproc to read.
const CODEC_POSTCARD: &str = "postcard";
/// How long the first connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a command (other than a blocking read) may take before the broker counts as gone.
pub(in crate::queue) const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest single blocking read: between two, leases that ran out are looked for.
const READ_SLICE: Duration = Duration::from_secs(1);
/// Back-off between reconnection attempts.
const RECONNECT_FIRST: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// How often `join` and a full bounded `put` look again.
const POLL: Duration = Duration::from_millis(20);
/// The field of a queue's settings hash that counts its redeliveries.
const REDELIVERED: &str = "redelivered";
/// The largest item accepted from the broker (a bound on untrusted input).
const MAX_BODY: usize = 512 << 20;

/// What a handle sent to another process carries: enough to connect again.
#[derive(Serialize, Deserialize)]
pub(in crate::queue) struct BrokerHandle {
    /// The URL without its `prefix=`.
    url: String,
    name: String,
    /// The key prefix the handle used (its old keys are found again the same way).
    prefix: String,
    lease_ms: u64,
    max_deliveries: u32,
    maxsize: u32,
    joinable: bool,
}

/// Entry ids a handle took and has not finished, oldest first.
type Leases = Arc<Mutex<VecDeque<String>>>;
/// Entry ids a handle finished and has not acknowledged to the broker yet, with how long
/// they took.
type Acks = Arc<Mutex<took::AckList>>;
/// Entries a handle read ahead and has not handed out yet, oldest first.
type Prefetched = Arc<Mutex<VecDeque<Entry>>>;

/// The most entries one read takes at the caller's pace.
const PREFETCH_MAX: usize = 16;
/// The most entries one read takes for a caller that says how many it can start.
const READ_MOST: usize = 128;
/// How long, at the caller's pace, the entries read ahead may wait here: a caller that takes
/// 100 µs per item gets 10 at a time, one that takes 1 ms or more gets one.
const PREFETCH_WINDOW: Duration = Duration::from_millis(1);

/// Whether a take reads new entries from the stream, and how many at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reading {
    /// No: only entries read ahead before, and those whose lease ran out.
    No,
    /// As many as the caller's pace calls for (see [`Pace`]).
    Paced,
    /// Up to this many (at most [`READ_MOST`]): for a caller that knows how many it can
    /// start now (a pool worker with room for them), whose pace says nothing, since it
    /// comes back only when there is room.
    UpTo(usize),
}

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

/// An item taken from the stream, with its entry's id (its lease, for a joinable queue) and
/// how many times it was delivered, this time included.
pub(crate) struct Leased<T> {
    pub(crate) item: T,
    pub(crate) id: String,
    pub(crate) deliveries: u32,
}

/// A queue on a Redis stream.
pub(crate) struct RedisQueue {
    /// Where its connections go (shared with the lease-renewing thread).
    route: Arc<Route>,
    /// The URL without its `prefix=`.
    url: String,
    name: String,
    /// The key prefix asked for (or the default); `keys` may be the old ones instead.
    prefix: String,
    keys: Keys,
    consumer: String,
    settings: BrokerSettings,
    conn: Mutex<Link>,
    /// A second connection for blocking reads, so that a thread waiting in `get` does not
    /// hold up another thread's `put` or `task_done` on the same handle.
    reader: Mutex<ReadLink>,
    /// Entries this handle took and has not finished, oldest first.
    leases: Leases,
    /// Entries finished here whose acknowledgement goes with the next read (or any other
    /// call to the broker on this handle): one round trip per item instead of two. Their
    /// leases are renewed meanwhile.
    acks: Acks,
    /// When each entry leased here was handed out: its duration is counted when it is done.
    handed_at: Mutex<HashMap<String, Instant>>,
    /// Entries a read took beyond the one it handed out (see [`Pace`]): leased to this handle
    /// (and renewed) until a later `get` hands them out, or given back when it is dropped.
    prefetched: Prefetched,
    pace: Mutex<Pace>,
    closed: super::Closed,
    /// Dropping the sender stops the lease-renewing thread; a message asks it to send the
    /// acknowledgements waiting.
    renewer: Mutex<Option<mpsc::Sender<()>>>,
    /// Whether the renewing thread was asked to send the acknowledgements and has not yet:
    /// it is asked once per burst, not once per acknowledgement.
    acks_asked: Arc<std::sync::atomic::AtomicBool>,
    /// When `get` last looked for entries whose lease ran out (it does so every quarter
    /// lease, and whenever no new entry came, not before every read).
    last_claim: Mutex<Option<Instant>>,
    /// Where [`read_sole`](Self::read_sole) is in the stream.
    sole: Mutex<sole::SoleRead>,
    /// Items are written in postcard, not JSON (see [`write_postcard`](Self::write_postcard)).
    postcard: std::sync::atomic::AtomicBool,
    /// Futures of this handle waiting for entries (feature `async`).
    #[cfg(all(feature = "async", not(loom)))]
    awaiting: awaiting::Awaiting,
}

impl RedisQueue {
    /// Connects to the queue `name` at `url`, creating its stream and group if needed.
    fn connect(url: &str, name: &str, settings: BrokerSettings) -> Result<RedisQueue> {
        let (url, in_url) = split_url(url)
            .map_err(|e| Error::invalid(format!("queue {name:?} at {}", redact(url)), e))?;
        let what = format!("queue {name:?} at {}", redact(&url));
        if name.is_empty() || name.len() > 1024 {
            return Err(Error::invalid(what, "a queue name must be 1 to 1024 bytes"));
        }
        let prefix = resolve_prefix(settings.prefix.as_deref(), in_url.as_deref())
            .map_err(|e| Error::invalid(what.clone(), e))?;
        let (client, mut conn, seeds) = open(&url, &what)?;
        let cluster =
            in_cluster(&mut conn).map_err(|e| broker_error(&what, "cannot connect", e))?;
        let (route, keys, conn) = if cluster {
            if [name, &prefix].iter().any(|s| s.contains(['{', '}'])) {
                return Err(Error::invalid(
                    what,
                    "on a Redis Cluster, a queue's name and key prefix cannot hold { or }: the \
                     name is the hash tag of the queue's keys",
                ));
            }
            let keys = Keys::tagged(&prefix, name);
            let route = Route::find(client, &mut conn, &keys.stream, seeds)
                .map_err(|e| broker_error(&what, "cannot find the queue's node", e))?;
            // The first connection may be to another node than the queue's.
            (route, keys, None)
        } else if let Some((host, port)) = seeds.first() {
            return Err(Error::invalid(
                what,
                format!(
                    "the URL names several hosts, which must be nodes of a Redis Cluster; the \
                     one that answered is not (also {host}:{port})"
                ),
            ));
        } else {
            (Route::Single(client), Keys::new(&prefix, name), Some(conn))
        };
        let mut queue = RedisQueue {
            route: Arc::new(route),
            url,
            name: name.to_string(),
            keys,
            prefix,
            consumer: consumer_name(),
            settings,
            conn: Mutex::new(Link {
                conn,
                ..Link::default()
            }),
            reader: Mutex::default(),
            leases: Arc::new(Mutex::new(VecDeque::new())),
            acks: Arc::default(),
            handed_at: Mutex::default(),
            prefetched: Arc::new(Mutex::new(VecDeque::new())),
            pace: Mutex::new(Pace::default()),
            closed: super::Closed::default(),
            renewer: Mutex::new(None),
            acks_asked: Arc::default(),
            last_claim: Mutex::new(None),
            sole: Mutex::default(),
            postcard: Default::default(),
            #[cfg(all(feature = "async", not(loom)))]
            awaiting: awaiting::Awaiting::default(),
        };
        let deadline = Some(Instant::now() + COMMAND_TIMEOUT);
        if !cluster {
            let keys = queue.with_conn(deadline, |c| find_keys(c, &queue.prefix, name))?;
            if keys.old {
                warn_old_keys(&queue.url(), name);
            }
            queue.keys = keys;
        }
        queue.with_conn(deadline, |c| create_group(c, &queue.keys.stream))?;
        queue.settings = queue.agree_settings(deadline)?;
        Ok(queue)
    }

    /// The lease every consumer of this queue uses.
    pub(in crate::queue) fn lease(&self) -> Duration {
        self.settings.lease
    }

    /// Connects again from a handle sent by another process.
    pub(in crate::queue) fn reopen(handle: BrokerHandle) -> Result<RedisQueue> {
        // What the queue had then; the queue's own settings (read again) are what counts.
        let settings = BrokerSettings {
            lease: Duration::from_millis(handle.lease_ms),
            max_deliveries: handle.max_deliveries.max(1),
            asked: Asked::default(),
            maxsize: handle.maxsize,
            joinable: handle.joinable,
            prefix: Some(handle.prefix),
        };
        RedisQueue::connect(&handle.url, &handle.name, settings)
    }

    pub(in crate::queue) fn handle(&self) -> BrokerHandle {
        BrokerHandle {
            url: self.url.clone(),
            name: self.name.clone(),
            prefix: self.prefix.clone(),
            lease_ms: self.settings.lease.as_millis() as u64,
            max_deliveries: self.settings.max_deliveries,
            maxsize: self.settings.maxsize,
            joinable: self.settings.joinable,
        }
    }

    pub(in crate::queue) fn name(&self) -> &str {
        &self.name
    }

    /// The URL without its password.
    pub(in crate::queue) fn url(&self) -> String {
        redact(&self.url)
    }

    fn what(&self) -> String {
        format!("queue {:?} at {}", self.name, self.url())
    }

    /// The stream's key (the name with the prefix).
    pub(crate) fn stream(&self) -> &str {
        &self.keys.stream
    }

    /// The key of the queue's settings (a hash), where a broker pool keeps its own too.
    pub(crate) fn config_key(&self) -> &str {
        &self.keys.config
    }

    /// This handle's consumer name (host, pid and a random part).
    pub(crate) fn consumer(&self) -> &str {
        &self.consumer
    }

    fn check_open(&self) -> Result<()> {
        self.closed.check(|| self.what())
    }

    /// Writes the put `packed` without waiting for its reply (see [`Link`]); tells of puts
    /// refused earlier.
    fn send_put(&self, packed: Vec<u8>, deadline: Option<Instant>) -> Result<()> {
        self.send_tagged(packed, None, deadline)?;
        self.conn.lock().ignore_poison().take_refused(&self.what())
    }

    /// Writes the put `packed` (tagged `tag`) without waiting for its reply.
    fn send_tagged(
        &self,
        packed: Vec<u8>,
        tag: Option<PutTag>,
        deadline: Option<Instant>,
    ) -> Result<()> {
        self.write_unconfirmed(vec![(packed, tag)], deadline)
    }

    /// Writes the packed commands `packed` in one go, and leaves their replies to the link
    /// (reading the older half once too many wait).
    fn write_unconfirmed(&self, packed: Vec<Packed>, deadline: Option<Instant>) -> Result<()> {
        let mut packed = Some(packed);
        let mut link = self.conn.lock().ignore_poison();
        self.retrying(&mut *link, deadline, |link| {
            let Some(all) = packed.as_ref() else {
                return Ok(());
            };
            let c = link.connection(&self.route)?;
            match all.as_slice() {
                [(one, _)] => c.send_packed_command(one)?,
                _ => {
                    let mut joined = Vec::with_capacity(all.iter().map(|(p, _)| p.len()).sum());
                    for (p, _) in all {
                        joined.extend_from_slice(p);
                    }
                    c.send_packed_command(&joined)?;
                }
            }
            // Written: from here on they are the link's to confirm (or to write again).
            link.unconfirmed.extend(packed.take().into_iter().flatten());
            Ok(())
        })?;
        if link.unconfirmed.len() >= UNCONFIRMED_MAX {
            self.retrying(&mut *link, deadline, |link| {
                link.connection(&self.route)?;
                link.confirm(UNCONFIRMED_MAX / 2, &self.route)
            })?;
        }
        Ok(())
    }

    /// Puts `item` as a `put` does (not waiting for the reply), tagged `tag`: should the
    /// broker refuse it, [`take_refused_tags`](Self::take_refused_tags) says so, and no other
    /// call does. For an unbounded queue only.
    pub(crate) fn put_tagged<T: Serialize>(&self, item: &T, tag: PutTag) -> Result<()> {
        self.send_tagged(self.packed_put(item)?, Some(tag), None)
    }

    /// The tagged puts the broker refused, with why, once the replies written so far are read
    /// (those not yet arrived are waited for, until `deadline`).
    pub(crate) fn take_refused_tags(
        &self,
        deadline: Option<Instant>,
    ) -> Result<Vec<(PutTag, String)>> {
        let mut link = self.conn.lock().ignore_poison();
        if !link.unconfirmed.is_empty() {
            self.retrying(&mut *link, deadline, |link| {
                link.connection(&self.route)?;
                link.confirm(0, &self.route)
            })?;
        }
        Ok(std::mem::take(&mut link.refused_tags))
    }

    /// Writes its items in postcard from now on, not in JSON: for the library's own streams,
    /// read by multiproc alone (their types are fixed, and postcard is several times quicker
    /// and smaller). Reading takes either codec, by the entry's `codec` field.
    pub(crate) fn write_postcard(&self) {
        self.postcard
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The XADD of an entry with `body` (in the codec its items are written in), packed.
    fn packed_xadd(&self, body: &[u8]) -> Vec<u8> {
        let stream = self.keys.stream.as_bytes();
        let fields: [&[u8]; 4] = [b"codec", self.codec().as_bytes(), b"body", body];
        match self.keys.old {
            true => pack(&[&[b"XADD", stream, b"NOMKSTREAM", b"*"], &fields[..]].concat()),
            false => pack(&[&[b"XADD", stream, b"*"], &fields[..]].concat()),
        }
    }

    /// The codec its items are written in.
    fn codec(&self) -> &'static str {
        match self.postcard.load(std::sync::atomic::Ordering::Relaxed) {
            true => CODEC_POSTCARD,
            false => CODEC_JSON,
        }
    }

    /// `item` in the codec its items are written in.
    fn encode<T: Serialize>(&self, item: &T) -> Result<Vec<u8>> {
        let body = match self.codec() {
            CODEC_POSTCARD => postcard::to_stdvec(item).map_err(|e| e.to_string()),
            _ => serde_json::to_vec(item).map_err(|e| e.to_string()),
        };
        body.map_err(|e| Error::serialization(self.what(), format!("cannot serialize: {e}")))
    }

    /// The put of `item` as written on the connection (an XADD), for
    /// [`send_all`](Self::send_all). For an unbounded queue only.
    pub(crate) fn packed_put<T: Serialize>(&self, item: &T) -> Result<Vec<u8>> {
        self.check_open()?;
        let body = self.encode(item)?;
        Ok(self.packed_xadd(&body))
    }

    /// Writes the packed commands `packed` (puts, or commands that may run twice) in one go,
    /// without waiting for their replies, each tagged as given (see
    /// [`put_tagged`](Self::put_tagged)): one system call and one wake-up of the broker for
    /// many. Tells of puts refused earlier, as a `put` does, unless all are tagged.
    pub(crate) fn send_all(&self, packed: Vec<Packed>) -> Result<()> {
        if packed.is_empty() {
            return Ok(());
        }
        let tagged = packed.iter().all(|(_, tag)| tag.is_some());
        self.write_unconfirmed(packed, None)?;
        match tagged {
            true => Ok(()),
            false => self.conn.lock().ignore_poison().take_refused(&self.what()),
        }
    }

    /// Writes `cmd` without waiting for its reply, as a `put` is written (written again if
    /// the connection breaks first, so it must do the same twice): the broker pool's task
    /// records.
    pub(crate) fn send_unconfirmed(&self, cmd: &redis::Cmd) -> Result<()> {
        self.send_packed(cmd.get_packed_command())
    }

    /// [`send_unconfirmed`](Self::send_unconfirmed) of a command already packed.
    pub(crate) fn send_packed(&self, packed: Vec<u8>) -> Result<()> {
        self.send_put(packed, None)
    }

    /// Runs `cmd` and reads its reply (after the replies of what was written before it).
    pub(crate) fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T> {
        let deadline = Some(Instant::now() + COMMAND_TIMEOUT);
        self.with_conn(deadline, |c| cmd.query(c))
    }

    /// Waits until the broker has stored every item put through this handle; an item it
    /// refused is an error.
    pub(in crate::queue) fn flush_until(&self, deadline: Option<Instant>) -> Result<()> {
        self.with_conn(deadline, |_| Ok(()))?;
        self.conn.lock().ignore_poison().take_refused(&self.what())
    }

    /// `get_until`, and (`read` false) without reading new entries: only those read ahead
    /// and those whose lease ran out (for awaiting gets, whose handle's reading thread reads).
    pub(super) fn take_until<T: DeserializeOwned>(
        &self,
        deadline: Option<Instant>,
        block: bool,
        waited: Duration,
        reading: Reading,
    ) -> Result<T> {
        self.take_leased(deadline, block, waited, reading)
            .map(|taken| taken.item)
    }

    /// [`take_until`](Self::take_until), with the entry's id and deliveries (for a pool
    /// worker, which finishes its entries out of turn with
    /// [`finish_lease`](Self::finish_lease)).
    pub(crate) fn take_leased<T: DeserializeOwned>(
        &self,
        deadline: Option<Instant>,
        block: bool,
        waited: Duration,
        reading: Reading,
    ) -> Result<Leased<T>> {
        self.lock_pace().asked();
        let read = reading != Reading::No;
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
            // Without reading, a claim is the only way to find an entry.
            let claim = !read || self.claim_due();
            let claimed = if claim {
                let reply = self.with_conn(deadline, |c| {
                    let reply = redis::cmd("XAUTOCLAIM")
                        .arg(&self.keys.stream)
                        .arg(GROUP)
                        .arg(&self.consumer)
                        .arg(lease_ms)
                        .arg("0-0")
                        .arg("COUNT")
                        .arg(1)
                        .query::<Value>(c);
                    match reply {
                        // Old keys that are gone were moved (or deleted).
                        Err(e) if e.code() == Some("NOGROUP") && self.keys.old => Ok(None),
                        other => other.map(Some),
                    }
                })?;
                let reply = reply.ok_or_else(|| self.gone())?;
                parse_autoclaim(reply)
            } else {
                None
            };
            let (entry, deliveries) = match claimed {
                Some(entry) => {
                    // There may be more: the next `get` looks again before reading new ones.
                    *self.last_claim.lock().ignore_poison() = None;
                    let deliveries = self.redelivered(&entry.id, deadline)?;
                    (Some(entry), deliveries)
                }
                // Entries a cut-off read left leased here are claimed before new ones.
                None if read && self.give_back_if_cut_off(None, deadline)? => continue,
                None if read => (self.read_new(deadline, block, reading)?, 1),
                None => (None, 1),
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

    /// Reads new entries (waiting up to a slice of `deadline` if `block`), as many as
    /// `reading` says: the first, the rest kept ahead for the next `get`s.
    fn read_new(
        &self,
        deadline: Option<Instant>,
        block: bool,
        reading: Reading,
    ) -> Result<Option<Entry>> {
        let slice = match deadline {
            _ if !block => None,
            None => Some(READ_SLICE),
            Some(d) => Some(d.saturating_duration_since(Instant::now()).min(READ_SLICE)),
        };
        // Acknowledgements waiting here go in the same round trip as the read.
        let acks = std::mem::take(&mut *self.acks.lock().ignore_poison());
        let batch = match reading {
            Reading::UpTo(n) => n.clamp(1, READ_MOST),
            Reading::No | Reading::Paced => self.lock_pace().batch(),
        };
        let read = self.with_reader(deadline, |c| {
            let before = (!acks.is_empty()).then(|| {
                let mut pipe = redis::pipe();
                self.add_acks(&mut pipe, &acks);
                pipe
            });
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP")
                .arg(GROUP)
                .arg(&self.consumer)
                .arg("COUNT")
                .arg(batch);
            let read = StreamRead {
                cmd,
                stream: &self.keys.stream,
                from: ">",
                block: slice.unwrap_or_default(),
                before,
            };
            match c.read(read)? {
                Err(e) if e.code() == Some("NOGROUP") => Ok(None),
                other => other.map(Some),
            }
        });
        let read = match read {
            Ok(Some(entries)) => Ok(entries),
            // Old keys that are gone were moved (or deleted): not made again.
            Ok(None) if self.keys.old => Err(self.gone()),
            // The broker lost the group (restarted without persistence).
            Ok(None) => self
                .with_conn(deadline, |c| create_group(c, &self.keys.stream))
                .map(|()| Vec::new()),
            Err(e) => Err(e),
        };
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
                self.acks.lock().ignore_poison().merge(acks);
                return Err(e);
            }
        };
        if entry.is_none() {
            // Nothing new: look for expired leases on the next round.
            *self.last_claim.lock().ignore_poison() = None;
        }
        // The read went through on a new connection: an earlier one may have been cut off.
        self.give_back_if_cut_off(entry.as_ref().map(|e| e.id.as_str()), deadline)?;
        Ok(entry)
    }

    /// If a connection broke since this was last looked at, gives back what a read
    /// cut off left leased here ([`give_back_cut_off`](Self::give_back_cut_off)); whether it
    /// gave back any.
    fn give_back_if_cut_off(
        &self,
        in_hand: Option<&str>,
        deadline: Option<Instant>,
    ) -> Result<bool> {
        // Either connection: a claim's reply may be cut off too.
        let reader = std::mem::take(&mut self.reader.lock().ignore_poison().broke);
        let conn = std::mem::take(&mut self.conn.lock().ignore_poison().broke);
        if !(reader || conn) {
            return Ok(false);
        }
        match self.give_back_cut_off(in_hand, deadline) {
            Ok(n) => Ok(n > 0),
            Err(e) => {
                // Looked at again on the next read.
                self.reader.lock().ignore_poison().broke = true;
                Err(e)
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
    ) -> Result<Option<Leased<T>>> {
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
                let id = entry.id;
                if self.settings.joinable {
                    self.take_lease(id.clone());
                } else {
                    self.finish(&id, deadline)?;
                }
                self.lock_pace().handed();
                Ok(Some(Leased {
                    item,
                    id,
                    deliveries,
                }))
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

    /// Entries read and not handed out yet: the next `take_leased` hands the first out
    /// without a round trip.
    pub(crate) fn read_ahead(&self) -> usize {
        self.lock_prefetched().len()
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
                let mut add = self.xadd();
                for (k, v) in &entry.fields {
                    add.arg(k).arg(v);
                }
                pipe.add_command(add).ignore();
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

    /// Items not yet taken by any consumer.
    pub(in crate::queue) fn waiting(&self) -> Result<usize> {
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

    fn is_full_until(&self, deadline: Option<Instant>) -> Result<bool> {
        if self.settings.maxsize == 0 {
            return Ok(false);
        }
        let len: u64 = self.with_conn(deadline, |c| {
            redis::cmd("XLEN").arg(&self.keys.stream).query(c)
        })?;
        Ok(len >= u64::from(self.settings.maxsize))
    }

    /// The error of a `get` on old keys that are gone.
    fn gone(&self) -> Error {
        Error::invalid(self.what(), format!("cannot read: {GONE}"))
    }

    /// `XADD stream *`, without making the stream when it is the queue's old one (a producer
    /// left running while the keys are moved is then told, and loses nothing unknowingly).
    fn xadd(&self) -> redis::Cmd {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.keys.stream);
        if self.keys.old {
            cmd.arg("NOMKSTREAM");
        }
        cmd.arg("*");
        cmd
    }
}

/// Whether the broker at the end of `conn` is a node of a Redis Cluster.
pub(super) fn in_cluster(conn: &mut redis::Connection) -> redis::RedisResult<bool> {
    match redis::cmd("INFO").arg("cluster").query::<String>(conn) {
        Ok(info) => Ok(info.lines().any(|l| l.trim() == "cluster_enabled:1")),
        // A broker that refuses INFO (some hosted ones rename it) is taken as a single one.
        Err(e) if e.code().is_some() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Opens the first connection to `url`, to the first of the hosts it names that answers
/// (several are nodes of a cluster; not retried: an unreachable broker is an error); with the
/// hosts it names after the first.
fn open(url: &str, what: &str) -> Result<(Client, redis::Connection, Vec<route::Node>)> {
    // rustls picks its crypto provider from its crate features (ring, the only one we turn
    // on) unless the application installed another first.
    #[cfg(not(feature = "tls"))]
    if url.starts_with("rediss://") {
        return Err(Error::invalid(
            what,
            "rediss:// needs multiproc's `tls` feature, which this build does not have",
        ));
    }
    let bad = |e: String| Error::invalid(what, format!("bad broker URL: {e}"));
    let (first, others) = route::split_hosts(url).map_err(bad)?;
    let client = Client::open(first).map_err(|e| bad(e.to_string()))?;
    let mut clients = vec![client.clone()];
    for node in &others {
        clients.push(
            route::client_at(client.get_connection_info(), node).map_err(|e| bad(e.to_string()))?,
        );
    }
    let mut failed = None;
    for client in clients {
        let conn = client
            .get_connection_with_timeout(CONNECT_TIMEOUT)
            .and_then(|c| c.set_read_timeout(Some(COMMAND_TIMEOUT)).map(|()| c));
        match conn {
            Ok(conn) => return Ok((client, conn, others)),
            Err(e) => failed = Some(e),
        }
    }
    let e = failed.expect("one client at least");
    Err(broker_error(what, "cannot connect", e))
}

impl QueueFlavor for RedisQueue {
    fn put_until<T: Serialize>(
        &self,
        item: &T,
        deadline: Option<Instant>,
        block: bool,
        waited: Duration,
    ) -> Result<()> {
        self.check_open()?;
        let body = self.encode(item)?;
        if self.settings.maxsize == 0 {
            return self.send_put(self.packed_xadd(&body), deadline);
        }
        let mut xadd = self.xadd();
        xadd.arg("codec").arg(self.codec()).arg("body").arg(&body);
        loop {
            // A bounded queue's put waits for its reply: the next one looks at the length.
            if !self.is_full_until(deadline)? {
                let reply = self.with_conn(deadline, |c| xadd.query::<Value>(c))?;
                if reply == Value::Nil {
                    return Err(Error::Remote {
                        what: self.what(),
                        detail: format!("the broker refused the put: {GONE}"),
                    });
                }
                return Ok(());
            }
            if !block {
                return Err(Error::Full { what: self.what() });
            }
            if !pause_until(deadline, POLL) {
                return Err(Error::timeout(self.what(), waited));
            }
        }
    }

    fn get_until<T: DeserializeOwned>(
        &self,
        deadline: Option<Instant>,
        block: bool,
        waited: Duration,
    ) -> Result<T> {
        self.take_until(deadline, block, waited, Reading::Paced)
    }

    fn close(&self) {
        self.closed.close();
    }

    fn maxsize(&self) -> u32 {
        self.settings.maxsize
    }

    fn is_full(&self) -> bool {
        self.is_full_until(Some(Instant::now() + COMMAND_TIMEOUT))
            .unwrap_or(false)
    }

    fn join_until(&self, deadline: Option<Instant>, waited: Duration) -> Result<()> {
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

    /// Entries in the stream: not taken, or taken and not finished.
    fn unfinished(&self) -> Result<u64> {
        let deadline = Some(Instant::now() + COMMAND_TIMEOUT);
        self.flush_acks(deadline)?;
        self.with_conn(deadline, |c| {
            redis::cmd("XLEN").arg(&self.keys.stream).query(c)
        })
    }

    fn flush(&self) -> Result<()> {
        self.flush_until(Some(Instant::now() + COMMAND_TIMEOUT))
    }

    fn len(&self) -> usize {
        self.waiting().unwrap_or(0)
    }

    fn task_done(&self) -> Result<()> {
        self.ack_oldest()
    }

    fn task_failed(&self, reason: &str) -> Result<()> {
        self.fail_oldest(reason)
    }

    fn task_rejected(&self, reason: &str) -> Result<()> {
        self.reject_oldest(reason)
    }

    fn describe(&self, f: &mut std::fmt::DebugStruct<'_, '_>) {
        f.field("name", &self.name)
            .field("broker", &self.url())
            .field("stream", &self.keys.stream);
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
            .and_then(|()| self.flush_until(deadline));
        if let Err(e) = flushed {
            tracing::error!(queue = %self.name, error = %e, "dropping a broker queue handle");
        }
        // Ends the renewer; leases still held run out and their items go to other consumers.
        self.renewer.lock().ignore_poison().take();
    }
}
