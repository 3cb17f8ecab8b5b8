//! [`TaskRecords`]: a broker task's state and result, looked up by its id from any process
//! that has the authkey, and cancelling a task by id.

use serde::de::DeserializeOwned;

use super::RESULTS_TTL;
use super::message::Outcome;
use super::record;
use super::schedule::{TaskQueues, report_cancelled, results_of};
use crate::error::{Error, Result};
use crate::pool::chunk::decode_failures;
use crate::pool::result::single;
use crate::pool::worker::TaskFailure;

/// The longest task id looked up.
const MAX_TASK_ID: usize = 128;

/// Refuses what cannot be a task id.
fn check_task_id(task_id: &str) -> Result<()> {
    if task_id.is_empty() || task_id.len() > MAX_TASK_ID {
        return Err(Error::invalid(
            "task records",
            format!("no such task id {task_id:?}"),
        ));
    }
    Ok(())
}

/// A broker task's state, from its record.
#[derive(Debug)]
#[non_exhaustive]
pub enum TaskStatus {
    /// No record: not started yet (waiting in the queue), or unknown, or its record's time
    /// ran out.
    Pending,
    /// Waiting for its time to start (sent with a delay, or a retry that waits).
    Scheduled,
    /// Taken by a worker of another build, and left for a worker of the build that sent it
    /// (it waits until one comes): why.
    Waiting {
        /// Which worker left it, and what build it waits for.
        why: String,
    },
    /// Running on `worker` (`host-pid-…`).
    Started {
        /// The worker that took it.
        worker: String,
    },
    /// Its run failed (its worker died, it ran out of time, it panicked with retries on
    /// panics), and it waits to run again.
    Retrying {
        /// The worker it was on.
        worker: String,
    },
    /// Done: its result is there ([`TaskRecords::result`]).
    Succeeded,
    /// Failed with this error (the one the pool's call got).
    Failed(Error),
    /// Cancelled before it started ([`TaskRecords::cancel`]).
    Cancelled,
}

/// The records of the tasks of one broker queue, looked up by task id
/// ([`AsyncResult::task_id`](crate::AsyncResult::task_id)) from any process that has the
/// authkey: a task's state and, once it succeeded, its result.
///
/// # Examples
///
/// ```no_run
/// use multiproc::{TaskRecords, TaskStatus};
///
/// let records = TaskRecords::connect("redis://127.0.0.1:6379/0", "renders", b"key".to_vec())?;
/// match records.status("4f1c2a9e0b7d6c35-17")? {
///     TaskStatus::Succeeded => println!("{:?}", records.result::<String>("4f1c2a9e0b7d6c35-17")?),
///     other => println!("{other:?}"),
/// }
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct TaskRecords {
    tasks: TaskQueues,
    url: String,
    queue: String,
    authkey: Vec<u8>,
}

impl std::fmt::Debug for TaskRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskRecords")
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl TaskRecords {
    /// The records of the queue `queue` on the broker at `url`, signed with `authkey`.
    ///
    /// # Errors
    /// A bad URL or name, a broker that cannot be reached.
    pub fn connect(
        url: impl Into<String>,
        queue: impl Into<String>,
        authkey: impl Into<Vec<u8>>,
    ) -> Result<TaskRecords> {
        let (url, queue) = (url.into(), queue.into());
        Ok(TaskRecords {
            tasks: TaskQueues::open(&url, &queue, None, None)?,
            url,
            queue,
            authkey: authkey.into(),
        })
    }

    /// Cancels `task_id` if no worker has taken it yet (it waits for its time to start, or
    /// in the queue): it never runs, its pool's call fails with
    /// [`ErrorKind::Cancelled`](crate::ErrorKind::Cancelled), and its status becomes
    /// [`TaskStatus::Cancelled`]. Whether it did; `false` for a task that a worker has taken
    /// (it runs, or ran), and for an unknown one.
    ///
    /// A task waiting for its time is found at once; one in the queue is looked for among
    /// the entries not yet read, which takes longer the longer the queue. One that a worker
    /// of another build left for a worker of its own ([`TaskStatus::Waiting`]) is looked for
    /// where it was left.
    ///
    /// # Errors
    /// A broker that cannot be reached.
    pub fn cancel(&self, task_id: &str) -> Result<bool> {
        check_task_id(task_id)?;
        let left = self.tasks.left_for(task_id, &self.authkey).unwrap_or(None);
        let Some(task) = self
            .tasks
            .take_back(task_id, &self.authkey, left.as_ref())?
        else {
            return Ok(false);
        };
        let results = results_of(&self.url, &self.queue, &task.pool)?;
        let redis = results.redis()?;
        let stream = redis.stream().to_string();
        report_cancelled(
            &task,
            self.tasks.records(task_id)?,
            &stream,
            &self.authkey,
            |r| {
                results.put(r)?;
                // Should the pool be gone, the stream this made goes in time, as a worker's does.
                let mut expire = redis::cmd("EXPIRE");
                expire.arg(&stream).arg(RESULTS_TTL.as_secs()).arg("NX");
                redis.send_unconfirmed(&expire)?;
                results.flush()
            },
        )?;
        Ok(true)
    }

    /// The record of `task_id`, verified: its stage, worker and outcome; `None` if none.
    fn read(&self, task_id: &str) -> Result<Option<(String, String, Option<Outcome>)>> {
        check_task_id(task_id)?;
        record::read(self.tasks.records(task_id)?, task_id, &self.authkey)
    }

    /// The state of `task_id`.
    ///
    /// # Errors
    /// A broker that cannot be reached; a record that does not verify (not signed with this
    /// authkey) or does not decode.
    pub fn status(&self, task_id: &str) -> Result<TaskStatus> {
        Ok(match self.read(task_id)? {
            None => TaskStatus::Pending,
            Some((stage, worker, outcome)) => match (stage.as_str(), outcome) {
                ("retrying", _) => TaskStatus::Retrying { worker },
                ("scheduled", _) => TaskStatus::Scheduled,
                (_, Some(Outcome::Left { why, .. })) => TaskStatus::Waiting { why },
                (_, Some(Outcome::Failed(TaskFailure::Cancelled(_)))) => TaskStatus::Cancelled,
                (_, Some(Outcome::Done(bytes))) => {
                    // A task's results carry its items' own failures (a panic) first.
                    let (failures, _) = decode_failures(&bytes)?;
                    match failures.into_iter().next() {
                        Some((_, failure)) => TaskStatus::Failed(failure.into_error()),
                        None => TaskStatus::Succeeded,
                    }
                }
                (_, Some(Outcome::Failed(failure))) => TaskStatus::Failed(failure.into_error()),
                (_, None) => TaskStatus::Started { worker },
            },
        })
    }

    /// The result of `task_id` (a task of `apply_async`): `None` while it has none.
    ///
    /// # Errors
    /// The task's own error if it failed; a result that is not an `R`; as for
    /// [`status`](Self::status).
    pub fn result<R: DeserializeOwned + 'static>(&self, task_id: &str) -> Result<Option<R>> {
        match self.read(task_id)? {
            Some((_, _, Some(Outcome::Done(bytes)))) => single(Ok(&bytes)).map(Some),
            Some((_, _, Some(Outcome::Failed(failure)))) => Err(failure.into_error()),
            _ => Ok(None),
        }
    }
}
