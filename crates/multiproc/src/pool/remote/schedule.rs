//! A broker pool's two task streams, one per [`Priority`], with the tasks each keeps for
//! later (delayed tasks, retries that wait), and the cancelling of a task by id.
//!
//! Normal tasks go to the queue's stream `<queue>`, high-priority ones to `<queue>:high`,
//! which every worker reads on a thread of its own. A task that starts later waits in the
//! stream's scheduled set (see the broker queue's `scheduled.rs`) under its task id, and the
//! workers move it into the stream when it is due. Cancelling a task by id takes it out of a
//! scheduled set, or out of a stream if no worker has read it yet, and then answers its pool
//! with a `Cancelled` failure and writes that into its record.

use std::time::Duration;

use super::message::{FORMAT, Outcome, ResultMessage, TaskMessage};
use super::record::{self, Stage};
use super::{MAX_DELIVERIES, results_name, task_id};
use crate::error::Result;
use crate::pool::Priority;
use crate::pool::worker::TaskFailure;
use crate::queue::{JoinableQueue, Queue, RedisQueue};

/// The stream of high-priority tasks of the queue `queue`.
fn high_name(queue: &str) -> String {
    format!("{queue}:high")
}

/// A broker pool's task streams.
pub(super) struct TaskQueues {
    pub(super) normal: JoinableQueue<TaskMessage>,
    pub(super) high: JoinableQueue<TaskMessage>,
}

impl TaskQueues {
    /// Connects to the task streams of `queue` at `url`.
    pub(super) fn open(url: &str, queue: &str, lease: Option<Duration>) -> Result<TaskQueues> {
        let open = |name: String| {
            let mut builder = Queue::broker(url.to_string(), name).max_deliveries(MAX_DELIVERIES);
            if let Some(lease) = lease {
                builder = builder.lease(lease);
            }
            builder.build_joinable()
        };
        Ok(TaskQueues {
            normal: open(queue.to_string())?,
            high: open(high_name(queue))?,
        })
    }

    /// The stream of `priority`'s tasks.
    pub(super) fn of(&self, priority: Priority) -> &JoinableQueue<TaskMessage> {
        match priority {
            Priority::Normal => &self.normal,
            Priority::High => &self.high,
        }
    }

    /// The queue whose stream names the tasks' records (the normal one, for both).
    pub(super) fn records(&self) -> Result<&RedisQueue> {
        self.normal.leases()
    }

    /// Both streams, the high one first.
    fn both(&self) -> [&JoinableQueue<TaskMessage>; 2] {
        [&self.high, &self.normal]
    }

    /// Moves the scheduled tasks that are due into their streams; how long until the next
    /// is due (`None`: none waits).
    pub(super) fn move_due(&self) -> Result<Option<Duration>> {
        let mut next: Option<Duration> = None;
        for queue in self.both() {
            if let Some(wait) = queue.leases()?.move_due()? {
                next = Some(next.map_or(wait, |n| n.min(wait)));
            }
        }
        Ok(next)
    }

    /// Takes task `id` back if no worker has it yet (it waits for its time, or in a stream
    /// unread). Only a task that verifies under
    /// `authkey` is taken.
    pub(super) fn take_back(&self, id: &str, authkey: &[u8]) -> Result<Option<TaskMessage>> {
        for undelivered in [false, true] {
            for queue in self.both() {
                let queue = queue.leases()?;
                let stream = queue.stream().to_string();
                let wanted = |task: &TaskMessage| {
                    task_id(&task.pool, task.id) == id && task.verify(authkey, &stream).is_ok()
                };
                let taken = if undelivered {
                    queue.take_back_undelivered(wanted)?
                } else {
                    queue.unschedule(id, wanted)?
                };
                if taken.is_some() {
                    return Ok(taken);
                }
            }
        }
        Ok(None)
    }
}

/// Tells `task`'s pool (through `post`, to its results stream `results`) and its record
/// (through `records`) that it was cancelled.
pub(super) fn report_cancelled(
    task: &TaskMessage,
    records: &RedisQueue,
    results: &str,
    authkey: &[u8],
    post: impl FnOnce(ResultMessage) -> Result<()>,
) -> Result<()> {
    let id = task_id(&task.pool, task.id);
    let outcome = Outcome::Failed(TaskFailure::Cancelled(id.clone()));
    if task.record_ttl_s > 0 {
        let key = record::key(records.stream(), &id);
        let ttl = Duration::from_secs(task.record_ttl_s);
        record::write(
            records,
            &key,
            authkey,
            (Stage::Ended, "", Some(&outcome)),
            ttl,
        )?;
    }
    post(ResultMessage::new(
        authkey,
        results,
        ResultMessage {
            v: FORMAT,
            slot: task.slot,
            id: task.id,
            worker: String::new(),
            outcome,
            mac: String::new(),
        },
    ))
}

/// The results stream of the pool `pool`, from a process that is not the pool.
pub(super) fn results_of(url: &str, queue: &str, pool: &str) -> Result<Queue<ResultMessage>> {
    Queue::broker(url.to_string(), results_name(queue, pool)).build()
}
