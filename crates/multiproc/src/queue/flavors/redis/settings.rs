//! A broker queue's settings: asked for through [`BrokerQueueBuilder`], agreed with the queue's
//! stored ones (`<prefix><name>:config`).

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::RedisQueue;
use crate::error::{Error, Result};
use crate::queue::{Flavor, JoinableQueue, Queue};

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
    /// The key prefix asked for; `None` for the URL's `prefix=`, or the default.
    pub(super) prefix: Option<String>,
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
            prefix: None,
        }
    }
}

impl RedisQueue {
    /// The queue's lease and `max_deliveries`, which every handle shares (a consumer takes
    /// over entries idle longer than its lease, so consumers with different leases would
    /// take each other's): the first handle that asks for a value stores it in `N:config`,
    /// the handles that ask for none take it from there (or the default while none is
    /// stored), and a handle that asks for another value is refused.
    pub(super) fn agree_settings(&self, deadline: Option<Instant>) -> Result<BrokerSettings> {
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
}

/// Sets up a [`Queue`] or [`JoinableQueue`] on a broker (from [`Queue::broker`]): a Redis
/// stream that processes on other machines use too, with at-least-once delivery (see
/// [`JoinableQueue`]).
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use multiproc::JoinableQueue;
///
/// let jobs: JoinableQueue<String> = multiproc::Queue::broker("redis://127.0.0.1:6379/0", "jobs")
///     .prefix("photos:") // the stream `photos:jobs`, not `multiproc:jobs`
///     .lease(Duration::from_secs(60))
///     .max_deliveries(3)
///     .build_joinable()?;
/// jobs.put("resize photo 17".to_string())?;
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until built"]
pub struct BrokerQueueBuilder<T> {
    url: String,
    name: String,
    settings: BrokerSettings,
    _item: PhantomData<fn(T) -> T>,
}

impl<T: Serialize + DeserializeOwned> BrokerQueueBuilder<T> {
    pub(in crate::queue) fn new(url: String, name: String) -> BrokerQueueBuilder<T> {
        BrokerQueueBuilder {
            url,
            name,
            settings: BrokerSettings::default(),
            _item: PhantomData,
        }
    }

    /// At most `maxsize` items at a time (0: no limit on items); `put` waits while it is full.
    pub fn maxsize(mut self, maxsize: u32) -> Self {
        self.settings.maxsize = maxsize;
        self
    }

    /// Where the queue's keys are on the broker: the queue `name` is the stream
    /// `<prefix><name>`, with `<prefix><name>:dead`, `:errors` and `:config` beside it
    /// (`docs/broker.md`). Default `multiproc:`, so that the queues keep to themselves on a
    /// Redis that other applications use too; `""` puts them at the bare name, as before
    /// there were prefixes. At most 256 bytes (longer is an error when the queue is built).
    ///
    /// A URL's query parameter `prefix` says the same (`redis://host/0?prefix=photos%3A`,
    /// decoded as a form value), for callers of [`Queue::connect`],
    /// [`JoinableQueue::connect`] and [`QueueAdmin::connect`](crate::QueueAdmin::connect);
    /// a prefix here and another in the URL are an error.
    ///
    /// With the default prefix, a queue made before there were prefixes (a stream at the
    /// bare name read through the group `multiproc`, and no stream under the prefix) is used
    /// where it is, so nothing in it is lost, and a warning says how to move it:
    /// [`QueueAdmin::migrate_keys`](crate::QueueAdmin::migrate_keys), or `multiproc status
    /// --migrate-keys NAME`. Every producer and consumer of a queue must use the same prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.settings.prefix = Some(prefix.into());
        self
    }

    /// How long a taken item stays leased to its consumer before another may take it
    /// (default 30 s). A live consumer's leases are renewed while it works; a dead one's run
    /// out and its items are delivered again.
    ///
    /// It is the queue's setting, shared by every handle (consumers with different leases
    /// would take each other's items): the first handle to connect stores it with the queue
    /// (`<prefix><name>:config`), later handles take it from there, and one that asks for
    /// another value is refused. Leave it unset to take the queue's.
    pub fn lease(mut self, lease: Duration) -> Self {
        // Stored in whole milliseconds: a handle asking for the same again must match.
        let ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX).max(1);
        self.settings.lease = Duration::from_millis(ms);
        self.settings.asked.lease = true;
        self
    }

    /// After this many deliveries (default 5), an item that never got done goes to the
    /// dead-letter stream (`<prefix><name>:dead`) with its last error. The queue's setting,
    /// shared as [`lease`](Self::lease) is.
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.settings.max_deliveries = n.max(1);
        self.settings.asked.max_deliveries = true;
        self
    }

    /// Connects to the queue, creating it on the broker if it does not exist. A plain
    /// queue's `get` removes the item at once.
    ///
    /// # Errors
    /// A bad URL, name or [`prefix`](Self::prefix), a broker that cannot be reached (the
    /// error names the URL), or a [`lease`](Self::lease) or
    /// [`max_deliveries`](Self::max_deliveries) other than the queue's.
    pub fn build(self) -> Result<Queue<T>> {
        self.connect(false).map(Queue::of)
    }

    /// Connects to the queue as a [`JoinableQueue`]: `get` leases the item until
    /// `task_done`.
    ///
    /// # Errors
    /// As for [`build`](Self::build).
    pub fn build_joinable(self) -> Result<JoinableQueue<T>> {
        self.connect(true)
            .map(|flavor| JoinableQueue::of(Queue::of(flavor)))
    }

    fn connect(mut self, joinable: bool) -> Result<Flavor> {
        self.settings.joinable = joinable;
        let queue = RedisQueue::connect(&self.url, &self.name, self.settings)?;
        Ok(Flavor::Redis(Arc::new(queue)))
    }
}
