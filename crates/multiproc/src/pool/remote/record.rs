//! Each broker task's record: a Redis string (JSON) beside the task stream
//! (`<stream>:task:<task id>`), written when the task is kept for later, and by the worker once
//! the task has run a few milliseconds, when it is retried, and when it ends, and kept for a while (the records' time to live, a
//! day by default) so that any process that has the task's id and the authkey can look at its
//! state and fetch its result later (`lookup.rs`). Every record is signed as results are.

use std::time::Duration;

use super::message::{Outcome, record_mac, verify_record};
use crate::error::{Error, Result};
use crate::queue::RedisQueue;

/// How long a record stays once written, by default.
pub(super) const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);

/// The key of task `task_id`'s record, beside the task stream `stream`.
pub(super) fn key(stream: &str, task_id: &str) -> String {
    format!("{stream}:task:{task_id}")
}

/// The key that says the pool `pool` was terminated: its tasks not yet started are dropped.
pub(super) fn cancelled_key(stream: &str, pool: &str) -> String {
    format!("{stream}:cancelled:{pool}")
}

/// The hash of the functions whose tasks wait on a queue of their own for a worker that has
/// them (function name → that queue), beside the stream `stream` (the first partition's).
pub(super) fn wanted_key(stream: &str) -> String {
    format!("{stream}:wanted")
}

/// Where a task is, as its record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// Sent to start later (kept by the broker until then).
    Scheduled,
    Started,
    Retrying,
    /// Left by a worker of another build for a worker of its own.
    Waiting,
    Ended,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Scheduled => "scheduled",
            Stage::Started => "started",
            Stage::Retrying => "retrying",
            Stage::Waiting => "waiting",
            Stage::Ended => "ended",
        }
    }
}

/// Writes a record through `queue`'s connection (not waiting for the reply, as a `put`).
pub(super) fn write(
    queue: &RedisQueue,
    key: &str,
    authkey: &[u8],
    (stage, worker, outcome): (Stage, &str, Option<&Outcome>),
    ttl: Duration,
) -> Result<()> {
    queue.send_unconfirmed(&command(key, authkey, (stage, worker, outcome), ttl)?)
}

/// The command that writes a record, signed with `authkey`, kept `ttl`.
pub(super) fn command(
    key: &str,
    authkey: &[u8],
    (stage, worker, outcome): (Stage, &str, Option<&Outcome>),
    ttl: Duration,
) -> Result<redis::Cmd> {
    let outcome = match outcome {
        Some(o) => serde_json::to_string(o)
            .map_err(|e| Error::serialization("task record", e.to_string()))?,
        None => String::new(),
    };
    let record = Record {
        state: stage.name().to_string(),
        worker: worker.to_string(),
        mac: record_mac(authkey, key, stage.name(), worker, &outcome),
        outcome,
    };
    let text = serde_json::to_string(&record)
        .map_err(|e| Error::serialization("task record", e.to_string()))?;
    // One command, the time to live with it.
    let mut set = redis::cmd("SET");
    set.arg(key)
        .arg(text)
        .arg("PX")
        .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1));
    Ok(set)
}

/// A record as stored: a JSON object (the outcome itself JSON, inside).
#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    state: String,
    worker: String,
    outcome: String,
    mac: String,
}

/// The record of `task_id` beside `queue`'s stream, verified with `authkey`: its stage,
/// worker and outcome; `None` if there is none.
pub(super) fn read(
    queue: &RedisQueue,
    task_id: &str,
    authkey: &[u8],
) -> Result<Option<(String, String, Option<Outcome>)>> {
    let key = key(queue.stream(), task_id);
    let text: Option<String> = queue.query(redis::cmd("GET").arg(&key))?;
    let Some(text) = text else {
        return Ok(None);
    };
    let bad = |why: String| Error::protocol(format!("task record {task_id}"), why);
    let Record {
        state: stage,
        worker,
        outcome,
        mac,
    } = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    verify_record(authkey, &key, &stage, &worker, &outcome, &mac).map_err(bad)?;
    let outcome = if outcome.is_empty() {
        None
    } else {
        Some(serde_json::from_str(&outcome).map_err(|e| bad(e.to_string()))?)
    };
    Ok(Some((stage, worker, outcome)))
}
