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
//! The normal tasks may be spread over several streams (the queue's partitions: `<queue>`,
//! then `<queue>#1`, `<queue>#2`, …), each its own hash slot on a Redis Cluster. A task's
//! partition follows from its id, so that whoever has the id finds its record (kept beside
//! that stream) and, to cancel it, the task. The count is kept in the first stream's settings
//! (`<stream>:config`, field `partitions`), so that every pool and worker of the queue agree.
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
use crate::error::{Error, Result};
use crate::pool::Priority;
use crate::pool::worker::TaskFailure;
use crate::queue::{JoinableQueue, Queue, RedisQueue};
use crate::sync::IgnorePoison;

/// The stream of high-priority tasks of the queue `queue`.
fn high_name(queue: &str) -> String {
    format!("{queue}:high")
}

/// The stream of partition `k` of the queue `queue`'s normal tasks.
fn partition_name(queue: &str, k: usize) -> String {
    match k {
        0 => queue.to_string(),
        k => format!("{queue}#{k}"),
    }
}

/// The most partitions a queue may have.
const MAX_PARTITIONS: u32 = 256;

/// A broker pool's task streams.
pub(super) struct TaskQueues {
    /// The partitions of the normal tasks (at least one).
    pub(super) normal: Vec<JoinableQueue<TaskMessage>>,
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
    /// Connects to the task streams of `queue` at `url`, with `partitions` of normal tasks
    /// (unset: as many as the queue has).
    pub(super) fn open(
        url: &str,
        queue: &str,
        lease: Option<Duration>,
        partitions: Option<u32>,
    ) -> Result<TaskQueues> {
        let first = open_queue(url, queue, lease)?;
        let count = agree_partitions(first.leases()?, partitions)?;
        let mut normal = vec![first];
        for k in 1..count as usize {
            normal.push(open_queue(url, &partition_name(queue, k), lease)?);
        }
        Ok(TaskQueues {
            normal,
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

    /// The queue task `id` of pool `pool` goes to, by its priority (and id: its partition).
    pub(super) fn of(
        &self,
        priority: Priority,
        pool: &str,
        id: u64,
    ) -> &JoinableQueue<TaskMessage> {
        match priority {
            Priority::High => &self.high,
            // One partition: no id to make and digest.
            Priority::Normal if self.normal.len() == 1 => &self.normal[0],
            Priority::Normal => self.partition(&task_id(pool, id)),
        }
    }

    /// The partition of normal tasks the task `task_id` goes to: a digest of its id.
    pub(super) fn partition(&self, task_id: &str) -> &JoinableQueue<TaskMessage> {
        use sha2::Digest;
        if let [only] = self.normal.as_slice() {
            return only;
        }
        let digest = sha2::Sha256::digest(task_id.as_bytes());
        let n = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
        &self.normal[(n % self.normal.len() as u64) as usize]
    }

    /// The queue whose stream names the record of `task_id` (its partition, whatever its
    /// priority).
    pub(super) fn records(&self, task_id: &str) -> Result<&RedisQueue> {
        self.partition(task_id).leases()
    }

    /// The first partition, beside which what concerns a whole pool is kept (that it was
    /// terminated).
    pub(super) fn first(&self) -> &JoinableQueue<TaskMessage> {
        &self.normal[0]
    }

    /// Every stream read, the high one first.
    fn all(&self) -> impl Iterator<Item = &JoinableQueue<TaskMessage>> {
        std::iter::once(&self.high)
            .chain(&self.normal)
            .chain(&self.own_build)
    }

    /// The queue where a worker left task `task_id` for another worker (its record, verified
    /// with `authkey`, says so), if one did.
    pub(super) fn left_for(
        &self,
        task_id: &str,
        authkey: &[u8],
    ) -> Result<Option<JoinableQueue<TaskMessage>>> {
        match record::read(self.records(task_id)?, task_id, authkey)? {
            Some((_, _, Some(Outcome::Left { queue, .. }))) => Ok(Some(self.other(&queue)?)),
            _ => Ok(None),
        }
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

/// The number of partitions of the queue whose first stream is `first`: the one stored, or
/// `asked` (stored, if none is), or 1; an error if `asked` is not the stored one.
fn agree_partitions(first: &RedisQueue, asked: Option<u32>) -> Result<u32> {
    let what = || format!("broker pool on {}", first.stream());
    if let Some(n) = asked
        && !(1..=MAX_PARTITIONS).contains(&n)
    {
        return Err(Error::invalid(
            what(),
            format!("partitions must be 1 to {MAX_PARTITIONS}, not {n}"),
        ));
    }
    // The first to come fixes the count, asked or not: a worker started before any pool
    // must not read fewer partitions than a pool then writes to.
    let config = first.config_key();
    let mut set = redis::cmd("HSETNX");
    set.arg(config).arg("partitions").arg(asked.unwrap_or(1));
    first.query::<u32>(&set)?;
    let stored: String = first.query(redis::cmd("HGET").arg(config).arg("partitions"))?;
    let stored = stored
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=MAX_PARTITIONS).contains(n))
        .ok_or_else(|| {
            Error::protocol(
                what(),
                format!("{config}: field partitions is {stored:?}, not 1 to {MAX_PARTITIONS}"),
            )
        })?;
    match asked {
        Some(n) if n != stored => Err(Error::invalid(
            what(),
            format!(
                "the queue has {stored} partition(s), not {n}: every pool and worker of a queue \
                 uses the same (ask for none to take the queue's)"
            ),
        )),
        _ => Ok(stored),
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
    let queue = builder.build_joinable()?;
    queue.redis()?.write_postcard();
    Ok(queue)
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
            mac: Vec::new(),
        },
    ))
}

/// The results stream of the pool `pool` sending to `queue`.
pub(super) fn results_of(url: &str, queue: &str, pool: &str) -> Result<Queue<ResultMessage>> {
    let results = Queue::broker(url.to_string(), results_name(queue, pool)).build()?;
    results.redis()?.write_postcard();
    Ok(results)
}
