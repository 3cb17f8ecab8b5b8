//! The submitting side of a broker pool: the [`Transport`] whose "workers" are slots of the
//! in-flight window. A task sent to a slot becomes a signed entry of the pool's task stream,
//! for whichever [`BrokerWorker`](super::BrokerWorker) takes it; its result comes back,
//! signed, on the pool's own results stream, naming the slot and task.
//!
//! A slot never dies: a worker that dies mid-task loses its lease, and the broker hands the
//! task to another worker (the worker that takes it one time too many reports `WorkerLost`).

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::message::{FORMAT, Outcome, ResultMessage, TaskMessage};
use super::record::Stage;
use super::registry::TaskRegistry;
use super::schedule::{TaskQueues, report_cancelled};
use super::task_id;
use crate::error::{Error, Result};
use crate::pool::RetryPolicy;
use crate::pool::options::{Start, TaskOptions};
use crate::pool::task::TaskTargetId;
use crate::pool::transport::{Transport, WorkerLink};
use crate::pool::worker::{FromWorkerRef, TaskFailure, ToWorker};
use crate::queue::Due;
use crate::queue::{JoinableQueue, Packed, Queue};
use crate::sync::IgnorePoison;

/// What the slots and the report reader share.
pub(super) struct Shared {
    pub(super) tasks: TaskQueues,
    /// Read by this pool alone, without a consumer group (see `RedisQueue::read_sole`).
    pub(super) results: Queue<ResultMessage>,
    pub(super) results_stream: String,
    pub(super) pool: String,
    pub(super) registry: TaskRegistry,
    pub(super) authkey: Vec<u8>,
    pub(super) build: String,
    pub(super) retry: RetryPolicy,
    pub(super) record_ttl_s: u64,
    pub(super) timeout_ms: Option<u64>,
    /// Terminated: the workers are told to drop its tasks not yet started.
    pub(super) cancelled: std::sync::atomic::AtomicBool,
    /// When its last delayed task starts.
    pub(super) latest_start: std::sync::Mutex<Option<SystemTime>>,
    /// Where workers of other builds leave this pool's tasks.
    pub(super) left_queue: String,
    /// When the report reader last looked for tasks the broker refused.
    pub(super) refusals_seen: std::sync::Mutex<Instant>,
    /// Tasks the report reader sent while it delivered a batch of results, by stream:
    /// written together once the batch is delivered (see [`HOLDING`]).
    pub(super) held: std::sync::Mutex<HashMap<String, Vec<Packed>>>,
}

thread_local! {
    /// Whether this thread is the report reader delivering a batch of results: the tasks
    /// that take their slots are held and written together after it, one write for many.
    static HOLDING: Cell<bool> = const { Cell::new(false) };
}

impl Shared {
    /// Tells the workers that the pool is terminated (once): what they have not started of
    /// its tasks, they drop.
    fn cancel(&self) {
        if self
            .cancelled
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        // Told for as long as a task of its may still come: a day, or a day past the last
        // delayed one.
        let later = self
            .latest_start
            .lock()
            .ignore_poison()
            .map_or(Duration::ZERO, |t| {
                t.duration_since(SystemTime::now()).unwrap_or_default()
            });
        let told_for = (CANCELLED_FOR + later).as_secs();
        let first = self.tasks.first();
        let sent = first.leases().and_then(|q| {
            let key = super::record::cancelled_key(q.stream(), &self.pool);
            let mut set = redis::cmd("SET");
            set.arg(&key).arg(1).arg("EX").arg(told_for);
            q.send_unconfirmed(&set)?;
            first.flush()
        });
        if let Err(e) = sent {
            tracing::warn!(pool = %self.pool, error = %e, "telling the workers the pool is terminated");
        }
    }
}

/// The slot of a task that starts later: none of the window's.
const NO_SLOT: u32 = u32::MAX;

impl Shared {
    /// `message` as a signed task of slot `slot`, and the stream it goes to (`None` for a
    /// message that is not a task).
    fn task_message(
        &self,
        slot: u32,
        message: &ToWorker,
    ) -> Option<(TaskMessage, &JoinableQueue<TaskMessage>)> {
        let ToWorker::Task {
            id,
            target,
            items,
            options,
        } = message
        else {
            return None;
        };
        // Checked when the task was submitted.
        let function = self.registry.name_of(*target)?;
        let queue = self.tasks.of(options.priority, &self.pool, *id);
        let stream = queue.leases().ok()?.stream().to_string();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
        let timeout_ms = match (options.timeout.map(ms), self.timeout_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let task = TaskMessage::new(
            &self.authkey,
            &stream,
            TaskMessage {
                v: FORMAT,
                pool: self.pool.clone(),
                slot,
                id: *id,
                function: function.to_string(),
                build: self.build.clone(),
                retry: options.retry.unwrap_or(self.retry).parts(),
                attempt: 0,
                record_ttl_s: self.record_ttl_s,
                timeout_ms,
                items: items.0.to_vec(),
                mac: Vec::new(),
            },
        );
        Some((task, queue))
    }
}

/// How long the workers are told a terminated pool's tasks are to be dropped.
const CANCELLED_FOR: Duration = Duration::from_secs(24 * 3600);

impl Drop for Shared {
    fn drop(&mut self) {
        // The pool is gone: so is its results stream (a result still on its way makes it
        // again, with that one entry).
        if let Err(e) = self.results.redis().and_then(|q| q.destroy()) {
            tracing::warn!(stream = %self.results_stream, error = %e, "deleting a finished pool's results");
        }
    }
}

pub(crate) struct BrokerTransport {
    pub(super) shared: Arc<Shared>,
    /// Tasks in flight per slot of the window.
    pub(super) ahead: usize,
}

impl BrokerTransport {
    /// Fails the tasks the broker refused (out of memory, say) with why; whether there were
    /// any.
    fn refused(&self, on_report: &mut dyn FnMut(FromWorkerRef<'_>)) -> bool {
        {
            let mut last = self.shared.refusals_seen.lock().ignore_poison();
            if last.elapsed() < REFUSALS_EVERY {
                return false;
            }
            *last = Instant::now();
        }
        let mut any = false;
        let tasks = &self.shared.tasks;
        for queue in tasks.normal.iter().chain([&tasks.high]) {
            let refused = queue
                .leases()
                .and_then(|q| q.take_refused_tags(Some(Instant::now() + REFUSALS_WAIT)));
            let refused = match refused {
                Ok(refused) => refused,
                Err(e) => {
                    // The broker is away: the results reader says so (once a look).
                    tracing::debug!(pool = %self.shared.pool, error = %e, "reading the broker's answers to the tasks sent");
                    continue;
                }
            };
            for ((slot, id), why) in refused {
                any = true;
                on_report(FromWorkerRef {
                    slot,
                    id,
                    outcome: Err(TaskFailure::BrokerRefused(why)),
                });
            }
        }
        any
    }

    /// Writes the tasks held while a batch of results was delivered.
    fn send_held(&self) {
        let mut held = std::mem::take(&mut *self.shared.held.lock().ignore_poison());
        if held.is_empty() {
            return;
        }
        let tasks = &self.shared.tasks;
        for queue in tasks.normal.iter().chain([&tasks.high]) {
            let Ok(redis) = queue.leases() else { continue };
            let Some(packed) = held.remove(redis.stream()) else {
                continue;
            };
            if let Err(e) = redis.send_all(packed) {
                tracing::warn!(pool = %self.shared.pool, error = %e, "sending tasks");
            }
        }
    }

    /// Hands a verified report to `on_report`.
    fn deliver(&self, message: ResultMessage, on_report: &mut dyn FnMut(FromWorkerRef<'_>)) {
        let shared = &self.shared;
        if let Err(why) = message.verify(&shared.authkey, &shared.results_stream) {
            tracing::warn!(stream = %shared.results_stream, %why, "dropped a result that does not verify");
            return;
        }
        let (slot, id) = (message.slot, message.id);
        match message.outcome {
            Outcome::Done(bytes) => on_report(FromWorkerRef {
                slot,
                id,
                outcome: Ok(&bytes),
            }),
            Outcome::Left { queue, why } => {
                // Not over: it runs when a worker of this build takes it from there.
                tracing::warn!(pool = %shared.pool, task = id, queue = %queue, "{why}");
            }
            Outcome::Failed(failure) => on_report(FromWorkerRef {
                slot,
                id,
                outcome: Err(failure),
            }),
        }
    }
}

/// The most results read and delivered in one batch.
const BATCH_MOST: usize = 128;

/// How often the report reader looks for tasks the broker refused.
const REFUSALS_EVERY: Duration = Duration::from_millis(10);

/// How long the report reader waits for the broker's answers to the tasks sent (they have
/// arrived long before, as a rule).
const REFUSALS_WAIT: Duration = Duration::from_secs(1);

/// How long the report reader rests after the broker failed it (it is being reconnected).
const AFTER_FAILURE: Duration = Duration::from_millis(100);

impl Transport for BrokerTransport {
    fn start_worker(&self, slot: u32) -> Result<Box<dyn WorkerLink>> {
        Ok(Box::new(Slot {
            slot,
            name: format!("slot {slot} of broker pool {}", self.shared.pool),
            shared: self.shared.clone(),
        }))
    }

    fn wait_report(&self, timeout: Duration, on_report: &mut dyn FnMut(FromWorkerRef<'_>)) -> bool {
        if self.refused(on_report) {
            return true;
        }
        let deadline = Some(Instant::now() + timeout);
        let read = self
            .shared
            .results
            .redis()
            .and_then(|q| q.read_sole::<ResultMessage>(deadline, BATCH_MOST));
        match read {
            Ok(results) if results.is_empty() => false,
            Ok(results) => {
                // The tasks that take the slots of these results are written together after
                // them.
                HOLDING.set(true);
                for message in results {
                    self.deliver(message, on_report);
                }
                HOLDING.set(false);
                self.send_held();
                true
            }
            Err(e) => {
                tracing::warn!(stream = %self.shared.results_stream, error = %e, "reading the pool's results");
                std::thread::park_timeout(AFTER_FAILURE.min(timeout));
                false
            }
        }
    }

    fn try_report(&self, _on_report: &mut dyn FnMut(FromWorkerRef<'_>)) -> bool {
        // Results are a round trip away: the handler thread reads them.
        false
    }

    fn reports_are_near(&self) -> bool {
        false
    }

    fn tasks_ahead(&self) -> usize {
        self.ahead
    }

    fn task_key(&self, id: u64) -> Option<String> {
        Some(task_id(&self.shared.pool, id))
    }

    fn check_options(&self, _options: &TaskOptions) -> Result<()> {
        Ok(())
    }

    fn send_later(&self, message: &ToWorker) -> Result<()> {
        let ToWorker::Task {
            id,
            options: TaskOptions {
                start: Some(start), ..
            },
            ..
        } = message
        else {
            return Err(Error::invalid(
                "broker pool",
                "a task to send later without its time",
            ));
        };
        let shared = &self.shared;
        let (task, queue) = shared.task_message(NO_SLOT, message).ok_or_else(|| {
            Error::invalid(
                "broker pool",
                "the function is not in the pool's TaskRegistry",
            )
        })?;
        let (due, starts) = match *start {
            Start::After(d) => (Due::In(d), SystemTime::now() + d),
            Start::At(t) => (Due::At(t), t),
        };
        {
            let mut latest = shared.latest_start.lock().ignore_poison();
            if latest.is_none_or(|l| l < starts) {
                *latest = Some(starts);
            }
        }
        let queue = queue.leases()?;
        let key = task_id(&shared.pool, *id);
        // The record first: a task due at once may start (and write its own) right away.
        if shared.record_ttl_s > 0 {
            let partition = shared.tasks.partition(&key);
            let records = partition.leases()?;
            let record = super::record::key(records.stream(), &key);
            // Kept until it starts, and the pool's time to live after that.
            let until = starts.duration_since(SystemTime::now()).unwrap_or_default();
            let ttl = Duration::from_secs(shared.record_ttl_s) + until;
            let stage = (Stage::Scheduled, "", None);
            super::record::write(records, &record, &shared.authkey, stage, ttl)?;
            partition.flush()?;
        }
        queue.schedule(&key, &task, due)?;
        Ok(())
    }

    fn cancel(&self, id: u64) -> bool {
        let shared = &self.shared;
        let key = task_id(&shared.pool, id);
        // A worker may have left it for another: its record says where (a worker of another
        // build leaves it on this build's queue).
        let left = match shared.tasks.left_for(&key, &shared.authkey) {
            Ok(Some(left)) => Ok(left),
            _ => shared.tasks.other(&shared.left_queue),
        };
        let taken =
            left.and_then(|left| shared.tasks.take_back(&key, &shared.authkey, Some(&left)));
        let cancelled = taken.and_then(|taken| {
            let Some(task) = taken else {
                return Ok(false);
            };
            report_cancelled(
                &task,
                shared.tasks.records(&key)?,
                &shared.results_stream,
                &shared.authkey,
                |r| {
                    shared.results.put(r)?;
                    shared.results.flush()
                },
            )?;
            Ok(true)
        });
        cancelled.unwrap_or_else(|e| {
            tracing::warn!(pool = %shared.pool, task = %key, error = %e, "cancelling a task");
            false
        })
    }

    fn check_target(&self, target: TaskTargetId) -> Result<()> {
        match self.shared.registry.name_of(target) {
            Some(_) => Ok(()),
            None => Err(Error::invalid(
                "broker pool",
                "the function is not in the pool's TaskRegistry: register it under a name, on \
                 the pool and on its workers",
            )),
        }
    }
}

/// One slot of the in-flight window.
struct Slot {
    slot: u32,
    name: String,
    shared: Arc<Shared>,
}

impl WorkerLink for Slot {
    fn name(&self) -> &str {
        &self.name
    }

    fn pid(&self) -> i32 {
        0
    }

    fn try_send(&self, message: &ToWorker) -> bool {
        let Some((task, queue)) = self.shared.task_message(self.slot, message) else {
            return true;
        };
        // Tagged: should the broker refuse it, the report reader fails this very task.
        let tag = (task.slot, task.id);
        let sent = queue.leases().and_then(|q| {
            if !HOLDING.get() {
                return q.put_tagged(&task, tag);
            }
            let packed = q.packed_put(&task)?;
            let mut held = self.shared.held.lock().ignore_poison();
            let stream = held.entry(q.stream().to_string()).or_default();
            stream.push((packed, Some(tag)));
            Ok(())
        });
        match sent {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(pool = %self.shared.pool, error = %e, "sending a task");
                false
            }
        }
    }

    fn is_alive(&self) -> bool {
        true
    }

    /// The pool is terminated (a broker pool has no task timeout of its own, the only
    /// other reason to kill a slot).
    fn kill(&self) {
        self.shared.cancel();
    }

    fn join(&mut self) -> Result<()> {
        Ok(())
    }

    fn join_timeout(&mut self, _timeout: Duration) -> Result<()> {
        Ok(())
    }
}
