//! Leases: what a handle took and has not finished, renewed by a thread while held, acknowledged
//! in batches, given back on failure, and dead-lettered after too many deliveries.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use redis::{Connection, Value};

use super::entry::{Entry, parse_pending_count, pending_counts, pending_ids};
use super::route::Route;
use super::took::AckList;
use super::{Acks, COMMAND_TIMEOUT, GROUP, Leases, Prefetched, RedisQueue};
use crate::error::{Error, Result};
use crate::sync::IgnorePoison;

/// The most entries a cut-off read may have left with a consumer that are looked at once
/// (a read takes at most [`PREFETCH_MAX`](super::PREFETCH_MAX)).
const CUT_OFF_MAX: usize = 1000;

impl RedisQueue {
    /// Whether it is time to look for entries whose lease ran out (and notes that it is).
    pub(super) fn claim_due(&self) -> bool {
        let mut last = self.last_claim.lock().ignore_poison();
        let due = last.is_none_or(|t| t.elapsed() >= self.settings.lease / 4);
        if due {
            *last = Some(Instant::now());
        }
        due
    }

    /// How many times entry `id`, taken over from another consumer (or given back), was
    /// delivered; the takeover is counted beside the queue's settings
    /// (`QueueStatus::redelivered`), as far as the broker takes the write (a broker out of
    /// memory refuses it, and the count is left).
    pub(super) fn redelivered(&self, id: &str, deadline: Option<Instant>) -> Result<u32> {
        self.with_conn(deadline, |c| {
            let replies: Vec<redis::RedisResult<Value>> = redis::pipe()
                .ignore_errors()
                .cmd("XPENDING")
                .arg(&self.keys.stream)
                .arg(GROUP)
                .arg(id)
                .arg(id)
                .arg(1)
                .cmd("HINCRBY")
                .arg(&self.keys.config)
                .arg(super::REDELIVERED)
                .arg(1)
                .query(c)?;
            let pending = replies.into_iter().next().transpose()?;
            Ok(pending.and_then(parse_pending_count).unwrap_or(1))
        })
    }

    /// How many times entry `id` was delivered.
    pub(super) fn deliveries(&self, id: &str, deadline: Option<Instant>) -> Result<u32> {
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

    /// Gives back the entries that a read cut off by a broken connection left leased to
    /// this consumer: the broker counted them delivered, but they never arrived. Each becomes
    /// claimable at once (its idle time set to the lease), its delivery count as it was
    /// before that read, so the lost read costs neither a lease nor a retry.
    /// `in_hand` is an entry read and not yet handed out. How many it gave back.
    pub(super) fn give_back_cut_off(
        &self,
        in_hand: Option<&str>,
        deadline: Option<Instant>,
    ) -> Result<usize> {
        let mut held: HashSet<String> = self.lock_leases().iter().cloned().collect();
        held.extend(in_hand.map(str::to_string));
        held.extend(self.acks.lock().ignore_poison().ids.iter().cloned());
        held.extend(self.lock_prefetched().iter().map(|e| e.id.clone()));
        let pending = self.with_conn(deadline, |c| {
            redis::cmd("XPENDING")
                .arg(&self.keys.stream)
                .arg(GROUP)
                .arg("-")
                .arg("+")
                .arg(CUT_OFF_MAX)
                .arg(&self.consumer)
                .query::<Value>(c)
        })?;
        let lost: Vec<(String, u64)> = pending_counts(pending)
            .into_iter()
            .filter(|(id, _)| !held.contains(id))
            .collect();
        if lost.is_empty() {
            return Ok(0);
        }
        tracing::debug!(queue = %self.name, entries = lost.len(), "giving back entries a cut-off read left with this consumer");
        self.with_conn(deadline, |c| {
            let mut pipe = redis::pipe();
            for (id, count) in &lost {
                pipe.add_command(self.give_back_cmd(id, Some(count.saturating_sub(1))))
                    .ignore();
            }
            pipe.query::<()>(c)
        })?;
        // Claimed by the next `get` here (or anywhere).
        *self.last_claim.lock().ignore_poison() = None;
        Ok(lost.len())
    }

    pub(super) fn last_error(&self, id: &str, deadline: Option<Instant>) -> Result<Option<String>> {
        self.with_conn(deadline, |c| {
            let reason: Option<Vec<u8>> =
                redis::cmd("HGET").arg(&self.keys.errors).arg(id).query(c)?;
            Ok(reason.map(|r| String::from_utf8_lossy(&r).into_owned()))
        })
    }

    /// Moves `entry` to the dead-letter stream, in one transaction.
    pub(super) fn dead_letter(
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

    pub(super) fn take_lease(&self, id: String) {
        self.lock_handed_at().insert(id.clone(), Instant::now());
        self.lock_leases().push_back(id);
        self.start_renewer();
    }

    fn lock_handed_at(&self) -> MutexGuard<'_, HashMap<String, Instant>> {
        self.handed_at.lock().ignore_poison()
    }

    pub(super) fn lock_leases(&self) -> MutexGuard<'_, VecDeque<String>> {
        self.leases.lock().ignore_poison()
    }

    /// The oldest lease, or an error if there is none.
    pub(super) fn oldest_lease(&self, what: &str) -> Result<String> {
        self.lock_leases().pop_front().ok_or_else(|| {
            Error::invalid(
                self.what(),
                format!("{what}() called more times than items were taken"),
            )
        })
    }

    pub(super) fn ack_oldest(&self) -> Result<()> {
        let id = self.oldest_lease("task_done")?;
        self.ack(id);
        Ok(())
    }

    /// Gives up the lease `id` (taken with [`take_leased`](Self::take_leased)), whichever
    /// lease is oldest.
    pub(crate) fn release_lease(&self, id: &str) -> Result<()> {
        let mut leases = self.lock_leases();
        let pos = leases.iter().position(|l| l == id).ok_or_else(|| {
            Error::invalid(
                self.what(),
                format!("entry {id} is not leased to this handle"),
            )
        })?;
        leases.remove(pos);
        Ok(())
    }

    /// Finishes the leased entry `id` out of turn (a pool worker's tasks end in any order).
    pub(crate) fn finish_lease(&self, id: &str) -> Result<()> {
        self.release_lease(id)?;
        self.ack(id.to_string());
        Ok(())
    }

    /// Queues the acknowledgement of `id`, sent with the handle's next call, or soon.
    fn ack(&self, id: String) {
        let took = self.lock_handed_at().remove(&id).map(|at| at.elapsed());
        {
            let mut acks = self.acks.lock().ignore_poison();
            acks.ids.push(id);
            if let Some(took) = took {
                acks.took.observe(took);
            }
        }
        // Acknowledgements wait to ride with the handle's next call; with no lease left in
        // hand that call may be far off (or never come), and a `join` elsewhere would wait
        // for it: the renewing thread sends them soon (asked once until it has: a burst of
        // acknowledgements wakes it once).
        if self.lock_leases().is_empty()
            && let Some(renewer) = self.renewer.lock().ignore_poison().as_ref()
            && !self.acks_asked.swap(true, Ordering::AcqRel)
        {
            let _ = renewer.send(());
        }
    }

    /// Sends the acknowledgements waiting in `acks`.
    pub(super) fn flush_acks(&self, deadline: Option<Instant>) -> Result<()> {
        let acks = std::mem::take(&mut *self.acks.lock().ignore_poison());
        if acks.is_empty() {
            return Ok(());
        }
        let sent = self.with_conn(deadline, |c| {
            let mut pipe = redis::pipe();
            self.add_acks(&mut pipe, &acks);
            pipe.query::<()>(c)
        });
        if sent.is_err() {
            // Not lost: sent with the next call, or the entries come back to someone.
            self.acks.lock().ignore_poison().merge(acks);
        }
        sent
    }

    /// Adds to `pipe` what finishes entries `ids`: deleted first, then acknowledged, so that
    /// an interruption between the two leaves a pending entry the broker knows is gone (the
    /// next XAUTOCLAIM drops it) rather than an acknowledged one left in the stream for ever.
    pub(super) fn add_acks(&self, pipe: &mut redis::Pipeline, acks: &AckList) {
        let keys = (&*self.keys.stream, &*self.keys.errors, &*self.keys.config);
        add_acks(pipe, keys, acks);
    }

    /// Acknowledges entry `id` and removes it (and its recorded error).
    pub(super) fn finish(&self, id: &str, deadline: Option<Instant>) -> Result<()> {
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

    pub(super) fn fail_oldest(&self, reason: &str) -> Result<()> {
        let id = self.oldest_lease("task_failed")?;
        self.give_back(&id, reason)
    }

    /// Gives the leased entry `id` back with `reason` (recorded for its dead letter, if it
    /// comes to that): the next `get` anywhere may take it.
    pub(crate) fn fail_lease(&self, id: &str, reason: &str) -> Result<()> {
        self.release_lease(id)?;
        self.give_back(id, reason)
    }

    fn give_back(&self, id: &str, reason: &str) -> Result<()> {
        // Not done: no duration.
        self.lock_handed_at().remove(id);
        self.with_conn(None, |c| {
            // Recorded for the dead-letter stream, then given back.
            redis::pipe()
                .atomic()
                .cmd("HSET")
                .arg(&self.keys.errors)
                .arg(id)
                .arg(reason)
                .add_command(self.give_back_cmd(id, None))
                .query::<Value>(c)
                .map(drop)
        })
    }

    /// The command that gives the entry `id` back: its idle time past the lease makes the next
    /// XAUTOCLAIM anywhere take it. With `deliveries`, its delivery count is set to that.
    fn give_back_cmd(&self, id: &str, deliveries: Option<u64>) -> redis::Cmd {
        let mut cmd = redis::cmd("XCLAIM");
        cmd.arg(&self.keys.stream)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(0)
            .arg(id)
            .arg("IDLE")
            .arg(self.settings.lease.as_millis() as u64);
        if let Some(n) = deliveries {
            cmd.arg("RETRYCOUNT").arg(n);
        }
        cmd.arg("JUSTID");
        cmd
    }

    /// Sends the oldest leased entry to the dead letters with `reason`, whatever its
    /// deliveries (an entry that must never be handed out again).
    pub(super) fn reject_oldest(&self, reason: &str) -> Result<()> {
        let id = self.oldest_lease("task_rejected")?;
        self.reject(id, reason)
    }

    /// Sends the leased entry `id` to the dead letters with `reason`, whatever its
    /// deliveries.
    pub(crate) fn reject_lease(&self, id: &str, reason: &str) -> Result<()> {
        self.release_lease(id)?;
        self.reject(id.to_string(), reason)
    }

    fn reject(&self, id: String, reason: &str) -> Result<()> {
        self.lock_handed_at().remove(&id);
        let deadline = Some(Instant::now() + COMMAND_TIMEOUT);
        let entry = self.with_conn(deadline, |c| {
            let reply: Value = redis::cmd("XRANGE")
                .arg(&self.keys.stream)
                .arg(&id)
                .arg(&id)
                .query(c)?;
            Ok(match reply {
                Value::Array(entries) => entries.first().and_then(super::entry::parse_entry),
                _ => None,
            })
        })?;
        let deliveries = self.deliveries(&id, deadline)?;
        match entry {
            Some(entry) => self.dead_letter(&entry, reason, deliveries, deadline),
            // Gone already (deleted by an administrator): nothing to keep.
            None => {
                self.acks.lock().ignore_poison().ids.push(id);
                Ok(())
            }
        }
    }

    /// Starts the thread that renews this handle's leases, if it is not running.
    pub(super) fn start_renewer(&self) {
        let mut renewer = self.renewer.lock().ignore_poison();
        if renewer.is_some() {
            return;
        }
        let (stop, stopped) = mpsc::channel::<()>();
        let leases = self.leases.clone();
        let acks = self.acks.clone();
        let prefetched = self.prefetched.clone();
        let route = self.route.clone();
        let keys = (
            self.keys.stream.clone(),
            self.keys.errors.clone(),
            self.keys.config.clone(),
        );
        let consumer = self.consumer.clone();
        let every = self.settings.lease / 3;
        let asked = self.acks_asked.clone();
        let spawned = std::thread::Builder::new()
            .name("multiproc-lease".into())
            .spawn(move || {
                renew_leases(
                    route,
                    keys,
                    consumer,
                    (leases, acks, prefetched),
                    every,
                    (stopped, asked),
                )
            });
        if spawned.is_ok() {
            *renewer = Some(stop);
        }
    }
}

/// How long acknowledgements wait for the handle's next call before the renewing thread
/// sends them.
const ACK_DELAY: Duration = Duration::from_millis(2);

/// The renewing thread: every `every`, resets the idle time of the leased entries this
/// consumer still owns; told to (a message on `nudged`), sends the acknowledgements waiting
/// [`ACK_DELAY`] later (unless the handle's own next call carried them), and clears `asked`
/// so that the next acknowledgement asks again; ends when the handle drops its end.
pub(super) fn renew_leases(
    route: Arc<Route>,
    (stream, errors, config): (String, String, String),
    consumer: String,
    (leases, acks, prefetched): (Leases, Acks, Prefetched),
    every: Duration,
    (nudged, asked): (mpsc::Receiver<()>, Arc<AtomicBool>),
) {
    let mut conn: Option<Connection> = None;
    loop {
        match nudged.recv_timeout(every) {
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Ok(()) => {
                // A moment for the handle's own next call to carry them.
                let until = Instant::now() + ACK_DELAY;
                loop {
                    let left = until.saturating_duration_since(Instant::now());
                    match nudged.recv_timeout(left) {
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                        Err(mpsc::RecvTimeoutError::Timeout) => break,
                        Ok(()) => {}
                    }
                }
                asked.store(false, Ordering::Release);
                send_acks(&route, &mut conn, (&stream, &errors, &config), &acks);
                continue;
            }
        }
        let mut ids: Vec<String> = leases.lock().ignore_poison().iter().cloned().collect();
        ids.extend(acks.lock().ignore_poison().ids.iter().cloned());
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
            conn = connect(&route);
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
                route.lost();
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
            route.lost();
        }
    }
}

/// Sends the acknowledgements waiting in `acks` on the renewing thread's connection; kept
/// for the handle's next call if that fails. The list stays locked until they are sent, so
/// that a call of the handle that flushes acknowledgements first (`join`, `unfinished`) sees
/// their effect.
fn send_acks(route: &Route, conn: &mut Option<Connection>, keys: (&str, &str, &str), acks: &Acks) {
    let mut waiting = acks.lock().ignore_poison();
    if waiting.is_empty() {
        return;
    }
    let taken = std::mem::take(&mut *waiting);
    if conn.is_none() {
        *conn = connect(route);
    }
    let sent = conn.as_mut().is_some_and(|c| {
        let _ = c.set_read_timeout(Some(COMMAND_TIMEOUT));
        let mut pipe = redis::pipe();
        add_acks(&mut pipe, keys, &taken);
        pipe.query::<()>(c).is_ok()
    });
    if !sent {
        *conn = None;
        route.lost();
        waiting.merge(taken);
    }
}

/// A connection for the renewing thread, if the broker can be reached.
fn connect(route: &Route) -> Option<Connection> {
    route.connect().ok().map(|(c, _)| c)
}

/// Acknowledges and removes the entries of `acks` from `stream`, with their recorded
/// errors, and adds how long they took to the queue's settings hash `config`.
fn add_acks(
    pipe: &mut redis::Pipeline,
    (stream, errors, config): (&str, &str, &str),
    acks: &AckList,
) {
    let ids = &acks.ids;
    if !ids.is_empty() {
        pipe.cmd("XDEL").arg(stream).arg(ids).ignore();
        pipe.cmd("XACK").arg(stream).arg(GROUP).arg(ids).ignore();
        pipe.cmd("HDEL").arg(errors).arg(ids).ignore();
    }
    acks.took.add_to(pipe, config);
}
