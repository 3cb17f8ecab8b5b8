//! Looking after a queue on a broker: how many items wait, who holds which, and the dead
//! letters (list, requeue, purge). What `multiproc status` and `multiproc dead` show.

use std::time::Duration;

use super::redis::{BrokerSettings, RedisQueue};
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
