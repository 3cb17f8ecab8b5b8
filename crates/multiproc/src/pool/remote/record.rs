//! Each broker task's record: a Redis string (postcard) beside the task stream
//! (`<stream>:task:<task id>`), written when the task is kept for later, and by the worker once
//! the task has run a few milliseconds, when it is retried, and when it ends, and kept for a while (the records' time to live, a
//! day by default) so that any process that has the task's id and the authkey can look at its
//! state and fetch its result later (`lookup.rs`). Every record is signed as results are.

use std::time::Duration;

use super::message::{Outcome, record_mac, verify_record};
use crate::error::{Error, Result};
use crate::queue::{RedisQueue, pack};

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
    queue.send_packed(command(key, authkey, (stage, worker, outcome), ttl)?)
}

/// The command that writes a record, signed with `authkey`, kept `ttl`, packed.
pub(super) fn command(
    key: &str,
    authkey: &[u8],
    (stage, worker, outcome): (Stage, &str, Option<&Outcome>),
    ttl: Duration,
) -> Result<Vec<u8>> {
    let stage = stage.name();
    let record = Record {
        mac: record_mac(authkey, &(key, stage, worker, outcome)),
        state: stage,
        worker,
        outcome,
    };
    let bytes = postcard::to_stdvec(&record)
        .map_err(|e| Error::serialization("task record", e.to_string()))?;
    // One command, the time to live with it.
    let ms = u64::try_from(ttl.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
        .to_string();
    Ok(pack(&[
        b"SET",
        key.as_bytes(),
        &bytes,
        b"PX",
        ms.as_bytes(),
    ]))
}

/// A record as stored, in postcard: its signature first (over its key and the rest), then the
/// task's stage, its worker and its outcome.
#[derive(serde::Serialize)]
struct Record<'a> {
    #[serde(with = "serde_bytes")]
    mac: Vec<u8>,
    state: &'a str,
    worker: &'a str,
    outcome: Option<&'a Outcome>,
}

/// A record as read back.
#[derive(serde::Deserialize)]
struct ReadRecord {
    #[serde(with = "serde_bytes")]
    mac: Vec<u8>,
    state: String,
    worker: String,
    outcome: Option<Outcome>,
}

/// The longest record read (a bound on what the broker sends back).
const MAX_RECORD: usize = 512 << 20;

/// The record of `task_id` beside `queue`'s stream, verified with `authkey`: its stage,
/// worker and outcome; `None` if there is none.
pub(super) fn read(
    queue: &RedisQueue,
    task_id: &str,
    authkey: &[u8],
) -> Result<Option<(String, String, Option<Outcome>)>> {
    let key = key(queue.stream(), task_id);
    let bytes: Option<Vec<u8>> = queue.query(redis::cmd("GET").arg(&key))?;
    let Some(bytes) = bytes else {
        return Ok(None);
    };
    let bad = |why: String| Error::protocol(format!("task record {task_id}"), why);
    if bytes.len() > MAX_RECORD {
        return Err(bad(format!("{} bytes, over the limit", bytes.len())));
    }
    let ReadRecord {
        mac,
        state,
        worker,
        outcome,
    } = postcard::from_bytes(&bytes).map_err(|e| bad(format!("does not decode: {e}")))?;
    let signed = (
        key.as_str(),
        state.as_str(),
        worker.as_str(),
        outcome.as_ref(),
    );
    verify_record(authkey, &signed, &mac).map_err(bad)?;
    Ok(Some((state, worker, outcome)))
}
