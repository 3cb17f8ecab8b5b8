//! A broker pool's two task streams, one per [`Priority`], with the tasks each keeps for
//! later (delayed tasks, retries that wait), and the cancelling of a task by id.
//!
//! Normal tasks go to the queue's stream `<queue>`, high-priority ones to `<queue>:high`,
//! which every worker reads on a thread of its own. A task that starts later waits in the
//! stream's scheduled set (see the broker queue's `scheduled.rs`) under its task id, and the
//! workers move it into the stream when it is due. Cancelling a task by id takes it out of a
//! scheduled set, or out of a stream if no worker has read it yet, and then answers its pool
//! with a `Cancelled` failure and writes that into its record.
//!
//! A worker also reads the queue `<queue>@<digest of its build>`, where workers of other
//! builds leave the tasks of its build (a task runs only on a worker of the build that sent
//! it: during a rolling upgrade, old and new workers serve one queue).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::message::{FORMAT, Outcome, ResultMessage, TaskMessage};
use super::record::{self, Stage};
use super::{MAX_DELIVERIES, results_name, task_id};
use crate::error::Result;
use crate::pool::Priority;
use crate::pool::worker::TaskFailure;
use crate::queue::{JoinableQueue, Queue, RedisQueue};
use crate::sync::IgnorePoison;

/// The stream of high-priority tasks of the queue `queue`.
fn high_name(queue: &str) -> String {
    format!("{queue}:high")
}

/// A broker pool's task streams.
pub(super) struct TaskQueues {
    pub(super) normal: JoinableQueue<TaskMessage>,
    pub(super) high: JoinableQueue<TaskMessage>,
    /// A worker's: the tasks that workers of other builds left for this one.
    pub(super) own_build: Option<JoinableQueue<TaskMessage>>,
    url: String,
    lease: Option<Duration>,
    /// The queues of other builds this handle left tasks on, by name.
    others: Mutex<HashMap<String, JoinableQueue<TaskMessage>>>,
}

/// The most queues of other builds a worker keeps a connection to.
const OTHER_BUILDS: usize = 8;

impl TaskQueues {
    /// Connects to the task streams of `queue` at `url`.
    pub(super) fn open(url: &str, queue: &str, lease: Option<Duration>) -> Result<TaskQueues> {
        Ok(TaskQueues {
            normal: open_queue(url, queue, lease)?,
            high: open_queue(url, &high_name(queue), lease)?,
            own_build: None,
            url: url.to_string(),
            lease,
            others: Mutex::new(HashMap::new()),
        })
    }

    /// Connects to the task queue `name`, with the pool's settings.
    pub(super) fn open_queue(&self, name: &str) -> Result<JoinableQueue<TaskMessage>> {
        open_queue(&self.url, name, self.lease)
    }

    /// The task queue `name` of another build (a connection kept for the next time).
    pub(super) fn other(&self, name: &str) -> Result<JoinableQueue<TaskMessage>> {
        let mut others = self.others.lock().ignore_poison();
        if let Some(q) = others.get(name) {
            return Ok(q.clone());
        }
        if others.len() >= OTHER_BUILDS {
            others.clear();
        }
        let q = self.open_queue(name)?;
        others.insert(name.to_string(), q.clone());
        Ok(q)
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

    /// Every stream read, the high one first.
    fn all(&self) -> impl Iterator<Item = &JoinableQueue<TaskMessage>> {
        [&self.high, &self.normal]
            .into_iter()
            .chain(&self.own_build)
    }

    /// Moves the scheduled tasks that are due into their streams; how long until the next
    /// is due (`None`: none waits).
    pub(super) fn move_due(&self) -> Result<Option<Duration>> {
        let mut next: Option<Duration> = None;
        for queue in self.all() {
            if let Some(wait) = queue.leases()?.move_due()? {
                next = Some(next.map_or(wait, |n| n.min(wait)));
            }
        }
        Ok(next)
    }

    /// Takes task `id` back if no worker has it yet (it waits for its time, or in a stream
    /// unread, or on `left`, where a worker of another build left it). Only a task that
    /// verifies under `authkey` is taken.
    pub(super) fn take_back(
        &self,
        id: &str,
        authkey: &[u8],
        left: Option<&JoinableQueue<TaskMessage>>,
    ) -> Result<Option<TaskMessage>> {
        for undelivered in [false, true] {
            for queue in self.all().chain(left) {
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

/// Connects to the task queue `name` at `url`.
fn open_queue(
    url: &str,
    name: &str,
    lease: Option<Duration>,
) -> Result<JoinableQueue<TaskMessage>> {
    let mut builder =
        Queue::broker(url.to_string(), name.to_string()).max_deliveries(MAX_DELIVERIES);
    if let Some(lease) = lease {
        builder = builder.lease(lease);
    }
    builder.build_joinable()
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
