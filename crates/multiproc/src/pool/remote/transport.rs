//! The submitting side of a broker pool: the [`Transport`] whose "workers" are slots of the
//! in-flight window. A task sent to a slot becomes a signed entry of the pool's task stream,
//! for whichever [`BrokerWorker`](super::BrokerWorker) takes it; its result comes back,
//! signed, on the pool's own results stream, naming the slot and task.
//!
//! A slot never dies: a worker that dies mid-task loses its lease, and the broker hands the
//! task to another worker (the worker that takes it one time too many reports `WorkerLost`).

use std::sync::Arc;
use std::time::Duration;

use super::message::{FORMAT, Outcome, ResultMessage, TaskMessage, decode_bytes, encode_bytes};
use super::registry::TaskRegistry;
use crate::error::{Error, ErrorKind, Result};
use crate::pool::task::TaskTargetId;
use crate::pool::transport::{Transport, WorkerLink};
use crate::pool::worker::{FromWorkerRef, TaskFailure, ToWorker};
use crate::queue::JoinableQueue;

/// What the slots and the report reader share.
pub(super) struct Shared {
    pub(super) tasks: JoinableQueue<TaskMessage>,
    pub(super) tasks_stream: String,
    /// Read as a joinable queue: each result is acknowledged with the next read, not with a
    /// round trip of its own.
    pub(super) results: JoinableQueue<ResultMessage>,
    pub(super) results_stream: String,
    pub(super) pool: String,
    pub(super) registry: TaskRegistry,
    pub(super) authkey: Vec<u8>,
    pub(super) build: String,
    pub(super) retries: u32,
    pub(super) record_ttl_s: u64,
    pub(super) timeout_ms: Option<u64>,
    /// Terminated: the workers are told to drop its tasks not yet started.
    pub(super) cancelled: std::sync::atomic::AtomicBool,
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
        let key = super::record::cancelled_key(&self.tasks_stream, &self.pool);
        let mut set = redis::cmd("SET");
        set.arg(&key).arg(1).arg("EX").arg(CANCELLED_FOR.as_secs());
        let sent = self
            .tasks
            .leases()
            .and_then(|q| q.send_unconfirmed(&set))
            .and_then(|()| self.tasks.flush());
        if let Err(e) = sent {
            tracing::warn!(pool = %self.pool, error = %e, "telling the workers the pool is terminated");
        }
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
}

impl BrokerTransport {
    /// Hands a verified report to `on_report`.
    fn deliver(&self, message: ResultMessage, on_report: &mut dyn FnMut(FromWorkerRef<'_>)) {
        let shared = &self.shared;
        if let Err(why) = message.verify(&shared.authkey, &shared.results_stream) {
            tracing::warn!(stream = %shared.results_stream, %why, "dropped a result that does not verify");
            return;
        }
        let (slot, id) = (message.slot, message.id);
        match message.outcome {
            Outcome::Done(text) => match decode_bytes(&text) {
                Ok(bytes) => on_report(FromWorkerRef {
                    slot,
                    id,
                    outcome: Ok(&bytes),
                }),
                Err(why) => on_report(FromWorkerRef {
                    slot,
                    id,
                    outcome: Err(TaskFailure::Broken(why)),
                }),
            },
            Outcome::Failed(failure) => on_report(FromWorkerRef {
                slot,
                id,
                outcome: Err(failure),
            }),
        }
    }
}

/// The id of task `id` of pool `pool`, as its record is named.
pub(super) fn task_id(pool: &str, id: u64) -> String {
    format!("{pool}-{id}")
}

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
        match self.shared.results.get_timeout(timeout) {
            Ok(message) => {
                if let Err(e) = self.shared.results.task_done() {
                    tracing::warn!(stream = %self.shared.results_stream, error = %e, "acknowledging a result");
                }
                self.deliver(message, on_report);
                true
            }
            Err(e) if e.kind() == ErrorKind::Timeout => false,
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

    fn task_key(&self, id: u64) -> Option<String> {
        Some(task_id(&self.shared.pool, id))
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
        let ToWorker::Task { id, target, items } = message else {
            return true;
        };
        let shared = &self.shared;
        let Some(function) = shared.registry.name_of(*target) else {
            // Checked when the task was submitted.
            tracing::error!(id, "a task whose function is not registered reached a slot");
            return false;
        };
        let task = TaskMessage::new(
            &shared.authkey,
            &shared.tasks_stream,
            TaskMessage {
                v: FORMAT,
                pool: shared.pool.clone(),
                slot: self.slot,
                id: *id,
                function: function.to_string(),
                build: shared.build.clone(),
                retries: shared.retries,
                record_ttl_s: shared.record_ttl_s,
                timeout_ms: shared.timeout_ms,
                items: encode_bytes(&items.0),
                mac: String::new(),
            },
        );
        match shared.tasks.put(task) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(stream = %shared.tasks_stream, error = %e, "sending a task");
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
