//! What travels between a pool and its workers, and the worker's loop.

#![allow(unsafe_code)] // one block: trusting the targets the pool sent

use std::panic::{self, AssertUnwindSafe};

use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_bytes::ByteBuf;

use super::chunk::ItemFailure;
use super::options::TaskOptions;
use super::task::{TaskTarget, TaskTargetId};
use crate::queue::ShmQueueOf;

/// A message to one worker.
#[derive(Serialize, Deserialize)]
pub(crate) enum ToWorker {
    /// Run `target` on each argument of `items` (a chunk of arguments) and report.
    Task {
        id: u64,
        target: TaskTargetId,
        items: TaskBytes,
        /// For the transport (a broker's task carries its priority, start and retries); a
        /// local worker is not sent them.
        #[serde(skip)]
        options: TaskOptions,
    },
    /// Finish: exit once the queue has been read up to here.
    Stop,
}

/// A task's encoded arguments, shared between the pool's record of the task (kept for a
/// retry) and the message that takes them to a worker: sending is then one copy, into the
/// queue.
#[derive(Clone)]
pub(crate) struct TaskBytes(pub(crate) Arc<Vec<u8>>);

impl Serialize for TaskBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for TaskBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ByteBuf::deserialize(d).map(|b| TaskBytes(Arc::new(b.into_vec())))
    }
}

/// A worker's report of one task: a serialized `Vec<Result<R, ItemFailure>>`, or why the
/// chunk could not run at all.
#[derive(Serialize, Deserialize)]
pub(crate) struct FromWorker {
    pub(crate) slot: u32,
    pub(crate) id: u64,
    pub(crate) outcome: Result<ByteBuf, TaskFailure>,
}

/// Why a task has no results at all (one item's failure travels in the results instead).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum TaskFailure {
    /// The results could not be encoded, or the initializer failed: why.
    Broken(String),
    /// A broker pool's task whose worker was lost (killed, or gone with its machine) as many
    /// times as the pool allows.
    WorkerLost {
        name: String,
        pid: i32,
        detail: String,
    },
    /// A broker pool's task that ran past the task timeout and was killed.
    TimedOut { what: String, after_ms: u64 },
    /// A broker pool's task a worker will not run: why.
    Refused(String),
    /// A broker pool's task cancelled by id before it started: its id.
    Cancelled(String),
    /// A broker pool's task the broker would not take (out of memory, say): why.
    BrokerRefused(String),
}

impl TaskFailure {
    pub(crate) fn into_error(self) -> crate::error::Error {
        use crate::error::Error;
        match self {
            TaskFailure::Broken(why) => Error::serialization("pool task", why),
            TaskFailure::WorkerLost { name, pid, detail } => {
                Error::WorkerLost { name, pid, detail }
            }
            TaskFailure::TimedOut { what, after_ms } => {
                Error::timeout(what, std::time::Duration::from_millis(after_ms))
            }
            TaskFailure::Refused(why) => Error::invalid("pool task", why),
            TaskFailure::BrokerRefused(why) => Error::Remote {
                what: "broker pool".into(),
                detail: format!("the broker refused the task, which is not queued: {why}"),
            },
            TaskFailure::Cancelled(id) => Error::Cancelled {
                what: format!("pool task {id}"),
            },
        }
    }

    /// What went wrong, in words.
    pub(crate) fn why(self) -> String {
        match self {
            TaskFailure::Broken(why) => why,
            other => other.into_error().to_string(),
        }
    }
}

/// A [`FromWorker`] read in place: its outcome borrows the receive buffer (the same bytes on
/// the wire).
#[derive(Deserialize)]
pub(crate) struct FromWorkerRef<'a> {
    pub(crate) slot: u32,
    pub(crate) id: u64,
    #[serde(borrow)]
    pub(crate) outcome: Result<&'a [u8], TaskFailure>,
}

impl<'a> FromWorkerRef<'a> {
    /// Decodes a report from the bytes of a result-queue message.
    pub(crate) fn decode(what: &str, bytes: &'a [u8]) -> crate::error::Result<Self> {
        postcard::from_bytes(bytes).map_err(|e| {
            crate::error::Error::serialization(what, format!("cannot deserialize: {e}"))
        })
    }
}

/// Everything a worker process is started with.
#[derive(Serialize, Deserialize)]
pub(crate) struct WorkerArgs {
    pub(crate) tasks: ShmQueueOf<ToWorker>,
    pub(crate) results: ShmQueueOf<FromWorker>,
    pub(crate) slot: u32,
    /// The initializer and its argument, as a chunk of one.
    pub(crate) initializer: Option<(TaskTargetId, TaskBytes)>,
    /// Tasks to run before exiting (0: no limit), CPython's `maxtasksperchild`.
    pub(crate) max_tasks: u64,
}

/// Runs a chunk; panics are caught per item inside, this catches anything else.
fn run_chunk(target: TaskTarget, items: &[u8]) -> Result<ByteBuf, TaskFailure> {
    match panic::catch_unwind(AssertUnwindSafe(|| target.run(items))) {
        Ok(outcome) => outcome.map(ByteBuf::from).map_err(TaskFailure::Broken),
        Err(_) => Err(TaskFailure::Broken(
            "the task's results could not be encoded".into(),
        )),
    }
}

/// The worker process's target: runs tasks until told to stop, or until `max_tasks`.
/// The report id that says the worker's initializer failed (the outcome holds why).
pub(crate) const INITIALIZER_FAILED: u64 = u64::MAX;

/// Runs the initializer; why it failed, if it did.
fn initialize(target: TaskTarget, args: &[u8]) -> Option<String> {
    let blob = match run_chunk(target, args) {
        Ok(blob) => blob,
        Err(failure) => return Some(failure.why()),
    };
    // The failures come first in a chunk's results: readable without the value type.
    let failures: Vec<(u32, ItemFailure)> =
        crate::share::decode("pool initializer", &blob, Vec::new()).unwrap_or_default();
    failures
        .into_iter()
        .next()
        .map(|(_, failure)| failure.into_error().to_string())
}

/// Heap a worker maps at start: room for the buffers of a few large chunks.
const WARM_HEAP: usize = 4 << 20;

pub(crate) fn worker_main(args: WorkerArgs) {
    crate::platform::keep_freed_memory(WARM_HEAP);
    // SAFETY: the pool that started this worker made these ids with `TaskTarget::id` and
    // sent them through the queues it made and handed to us alone; it started us from its
    // own executable, and the build fingerprint was checked before this code ran.
    let trust = |id| unsafe { TaskTarget::trusting(id) };
    if let Some((target, init_args)) = &args.initializer
        && let Some(why) = initialize(trust(*target), &init_args.0)
    {
        // Tell the pool, which then fails its tasks instead of starting workers for ever.
        let _ = args.results.put(&FromWorker {
            slot: args.slot,
            id: INITIALIZER_FAILED,
            outcome: Err(TaskFailure::Broken(why)),
        });
        return;
    }
    let mut done = 0u64;
    while let Ok(ToWorker::Task {
        id, target, items, ..
    }) = args.tasks.get()
    {
        let report = FromWorker {
            slot: args.slot,
            id,
            outcome: run_chunk(trust(target), &items.0),
        };
        if args.results.put(&report).is_err() {
            return;
        }
        done += 1;
        if args.max_tasks != 0 && done >= args.max_tasks {
            return;
        }
    }
}
