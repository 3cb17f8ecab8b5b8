//! The connections to the broker: made when first needed, made again with back-off when they
//! break, with the puts written on them and not yet confirmed.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use redis::{Connection, RedisError, Value};

use super::keys::has_group;
use super::resp::ReadConn;
use super::route::{Route, redirected};
use super::{COMMAND_TIMEOUT, GROUP, RECONNECT_FIRST, RECONNECT_MAX, RedisQueue};
use crate::error::{Error, Result};
use crate::sync::IgnorePoison;

/// A connection to the broker (made when first needed) and the puts written on it whose
/// replies have not been read.
///
/// A `put` writes its XADD and goes on: the entry is on its way to the broker (and visible to
/// consumers as soon as the broker reads it) without the producer waiting a round trip for
/// the reply. Replies are read in batches: once [`UNCONFIRMED_MAX`] are outstanding (the
/// older half, which have long arrived), before any other command on the connection, by
/// `flush` and on drop.
#[derive(Default)]
pub(super) struct Link {
    pub(super) conn: Option<Connection>,
    /// The packed XADDs written and not yet confirmed, oldest first. On a new connection
    /// they are written again: an entry whose reply was lost with the old connection may
    /// then be stored twice (at least once, as everywhere on a broker).
    /// Each with the caller's tag, if it gave one.
    pub(super) unconfirmed: VecDeque<(Vec<u8>, Option<PutTag>)>,
    /// Puts the broker refused, told by the next `put` or `flush` (the call that learnt of
    /// them may be another): how many, and the first reason.
    pub(super) refused: Option<(usize, String)>,
    /// Tagged puts the broker refused, with why: for the caller to collect
    /// ([`RedisQueue::take_refused_tags`]), never told by another call.
    pub(super) refused_tags: Vec<(PutTag, String)>,
    /// Whether a connection broke (and was dropped) since this was last cleared: a read
    /// under way then may have been delivered by the broker and lost.
    pub(super) broke: bool,
    /// How many replicas a put must reach before it counts as stored (on a cluster, 1 when
    /// the primary has a replica): the puts' replies are then followed by a `WAIT`.
    pub(super) replicas: usize,
}

/// The connection for blocking stream reads (see [`ReadConn`]), made when first needed.
#[derive(Default)]
pub(super) struct ReadLink {
    conn: Option<ReadConn>,
    /// As [`Link::broke`].
    pub(super) broke: bool,
}

/// A slot holding a connection, which a failure drops (the next call makes a new one).
pub(super) trait Reconnects {
    /// Drops the connection, noting that it broke: a read under way on it may have been
    /// delivered by the broker and lost.
    fn drop_connection(&mut self);
}

impl Reconnects for Link {
    fn drop_connection(&mut self) {
        self.conn = None;
        self.broke = true;
    }
}

impl Reconnects for ReadLink {
    fn drop_connection(&mut self) {
        self.conn = None;
        self.broke = true;
    }
}

/// How long a `WAIT` for a replica may take; a replica that does not answer by then is
/// taken as failed (the puts stand, confirmed by the primary alone).
const REPLICA_WAIT_MS: u64 = 1000;

/// The caller's name for one put (a broker pool's slot and task id), by which it learns that
/// the broker refused it.
pub(crate) type PutTag = (u32, u64);

/// A command as written on a connection (a put, or one that may run twice), with its tag if
/// it has one.
pub(crate) type Packed = (Vec<u8>, Option<PutTag>);

/// How many puts may wait for their replies; past it, the older half are read.
pub(super) const UNCONFIRMED_MAX: usize = 256;

/// Why a handle on a queue's old keys finds its stream gone (`XADD … NOMKSTREAM` answered nil,
/// or the group is missing).
pub(super) const GONE: &str = "the queue's old stream is gone (its keys were moved under the \
                                prefix, or deleted): connect again";

impl Link {
    /// The connection, made if there is none (writing the unconfirmed puts on it again).
    pub(super) fn connection(&mut self, route: &Route) -> redis::RedisResult<&mut Connection> {
        let c = match self.conn.take() {
            Some(c) => c,
            None => {
                let (mut c, replicas) = route.connect()?;
                self.replicas = replicas;
                c.set_read_timeout(Some(COMMAND_TIMEOUT))?;
                if !self.unconfirmed.is_empty() {
                    let again: Vec<u8> = self
                        .unconfirmed
                        .iter()
                        .flat_map(|(packed, _)| packed)
                        .copied()
                        .collect();
                    c.send_packed_command(&again)?;
                }
                c
            }
        };
        Ok(self.conn.insert(c))
    }

    /// Reads the replies of the puts written until at most `keep` are outstanding (none,
    /// when a replica must have them too: a `WAIT` then follows them). A put leaves the list
    /// only once its reply (and the `WAIT`'s) is read: should the connection break first, it
    /// is written again on the next.
    ///
    /// A replica that does not confirm within [`REPLICA_WAIT_MS`] is waited for again, as
    /// long as the cluster counts it (through `route`) as a healthy replica of the queue's
    /// primary; once it counts it as failed, the puts stand on the primary alone.
    pub(super) fn confirm(&mut self, keep: usize, route: &Route) -> redis::RedisResult<()> {
        let Some(c) = self.conn.as_mut() else {
            return Ok(());
        };
        if self.unconfirmed.is_empty() {
            return Ok(());
        }
        let wait = redis::cmd("WAIT")
            .arg(self.replicas)
            .arg(REPLICA_WAIT_MS)
            .get_packed_command();
        let count = if self.replicas > 0 {
            c.send_packed_command(&wait)?;
            self.unconfirmed.len()
        } else {
            self.unconfirmed.len().saturating_sub(keep)
        };
        let mut replies = Vec::with_capacity(count);
        for _ in 0..count {
            replies.push(c.recv_response()?);
        }
        while self.replicas > 0 {
            match c.recv_response()? {
                Value::Int(n) if n < 1 => {
                    self.replicas = route.replicas_seen_by(c)?.min(1);
                    if self.replicas == 0 {
                        tracing::warn!(
                            "the queue's primary has no healthy replica: puts are kept by the \
                             primary alone"
                        );
                        break;
                    }
                    c.send_packed_command(&wait)?;
                }
                _ => break,
            }
        }
        // A put the broker could not take for now (its slot moved, a failover is under way)
        // is kept, to be written again on the next connection, which this error makes.
        let mut again = VecDeque::new();
        let mut retry = None;
        for reply in replies {
            let put = self.unconfirmed.pop_front().expect("one put per reply");
            let refusal = match reply {
                Value::ServerError(e) => {
                    let e = RedisError::from(e);
                    if retriable(&e) {
                        again.push_back(put);
                        retry.get_or_insert(e);
                        continue;
                    }
                    Some(e.to_string())
                }
                // Only an `XADD … NOMKSTREAM` (a handle on old keys) answers nil.
                Value::Nil => Some(GONE.to_string()),
                _ => None,
            };
            match (refusal, put.1) {
                (Some(reason), Some(tag)) => self.refused_tags.push((tag, reason)),
                (Some(reason), None) => {
                    let refused = self.refused.get_or_insert((0, reason));
                    refused.0 += 1;
                }
                (None, _) => {}
            }
        }
        again.append(&mut self.unconfirmed);
        self.unconfirmed = again;
        match retry {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Takes the news of refused puts, as an error.
    pub(super) fn take_refused(&mut self, what: &str) -> Result<()> {
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

impl RedisQueue {
    /// Runs `op` on the connection, once the replies of the puts written on it are read,
    /// connecting again with back-off while the broker cannot be reached, until `deadline`.
    pub(super) fn with_conn<R>(
        &self,
        deadline: Option<Instant>,
        mut op: impl FnMut(&mut Connection) -> redis::RedisResult<R>,
    ) -> Result<R> {
        let mut link = self.conn.lock().ignore_poison();
        self.retrying(&mut *link, deadline, |link| {
            link.connection(&self.route)?;
            link.confirm(0, &self.route)?;
            op(link.conn.as_mut().expect("connected just above"))
        })
    }

    /// Runs `op` on the connection for blocking reads, connecting again with back-off while
    /// the broker cannot be reached, until `deadline`.
    pub(super) fn with_reader<R>(
        &self,
        deadline: Option<Instant>,
        mut op: impl FnMut(&mut ReadConn) -> redis::RedisResult<R>,
    ) -> Result<R> {
        let mut link = self.reader.lock().ignore_poison();
        self.retrying(&mut *link, deadline, |link| {
            if link.conn.is_none() {
                link.conn = Some(ReadConn::open(&self.route)?);
            }
            op(link.conn.as_mut().expect("connected just above"))
        })
    }

    /// Runs `op` on `link`, dropping its connection and trying again with back-off while the
    /// broker cannot be reached, until `deadline`.
    pub(super) fn retrying<L: Reconnects, R>(
        &self,
        link: &mut L,
        deadline: Option<Instant>,
        mut op: impl FnMut(&mut L) -> redis::RedisResult<R>,
    ) -> Result<R> {
        let mut backoff = RECONNECT_FIRST;
        loop {
            match op(link) {
                Ok(v) => return Ok(v),
                Err(e) if retriable(&e) => {
                    link.drop_connection();
                    self.route.lost();
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
                        link.drop_connection();
                    }
                    return Err(broker_error(&self.what(), "broker refused", e));
                }
            }
        }
    }
}

/// Creates the stream and its group unless they exist. The group starts at the stream's
/// beginning, so items put before any consumer came are delivered.
pub(super) fn create_group(c: &mut Connection, stream: &str) -> redis::RedisResult<()> {
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
        Err(e) if e.code() == Some("OOM") => match has_group(c, stream) {
            Ok(true) => Ok(()),
            _ => Err(e),
        },
        other => other.map(drop),
    }
}

/// Whether an error means the broker is (for now) out of reach, rather than a refusal.
pub(super) fn retriable(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(e.code(), Some("LOADING" | "TRYAGAIN" | "MASTERDOWN"))
        || redirected(e)
}

pub(super) fn broker_error(what: &str, doing: &str, e: RedisError) -> Error {
    Error::io(what, std::io::Error::other(format!("{doing}: {e}")))
}

/// `url` with any password replaced by `***`.
pub(super) fn redact(url: &str) -> String {
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
pub(super) fn consumer_name() -> String {
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
pub(super) fn pause_until(deadline: Option<Instant>, pause: Duration) -> bool {
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
}
