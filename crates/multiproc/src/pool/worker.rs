//! What travels between a pool and its workers, and the worker's loop.

use std::panic::{self, AssertUnwindSafe};

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::process::{TargetId, TargetOutcome, take_last_panic};
use crate::queue::Queue;

/// A message to one worker.
#[derive(Serialize, Deserialize)]
pub(crate) enum ToWorker {
    /// Run `target` on each of `items` (serialized arguments) and report.
    Task {
        id: u64,
        target: TargetId,
        items: Vec<ByteBuf>,
    },
    /// Finish: exit once the queue has been read up to here.
    Stop,
}

/// A worker's report of one task.
#[derive(Serialize, Deserialize)]
pub(crate) struct FromWorker {
    pub(crate) slot: u32,
    pub(crate) id: u64,
    pub(crate) outcomes: Vec<ItemOutcome>,
}

/// What one item of a task gave.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) enum ItemOutcome {
    /// The serialized return value.
    Value(ByteBuf),
    /// The target panicked.
    Panicked {
        message: String,
        location: Option<String>,
        pid: i32,
    },
    /// The arguments did not decode or the result did not encode.
    Broken(String),
}

/// Everything a worker process is started with.
#[derive(Serialize, Deserialize)]
pub(crate) struct WorkerArgs {
    pub(crate) tasks: Queue<ToWorker>,
    pub(crate) results: Queue<FromWorker>,
    pub(crate) slot: u32,
    pub(crate) initializer: Option<(TargetId, ByteBuf)>,
    /// Tasks to run before exiting (0: no limit), CPython's `maxtasksperchild`.
    pub(crate) max_tasks: u64,
}

/// Runs one item, catching a panic.
fn run_item(target: TargetId, args: &[u8]) -> ItemOutcome {
    match panic::catch_unwind(AssertUnwindSafe(|| target.run(args, Vec::new()))) {
        Ok(TargetOutcome::Returned { value, fds, .. }) if fds.is_empty() => {
            ItemOutcome::Value(ByteBuf::from(value))
        }
        Ok(TargetOutcome::Returned { .. }) => {
            ItemOutcome::Broken("a pool task's result cannot carry shared handles".into())
        }
        Ok(TargetOutcome::Broken(why)) => ItemOutcome::Broken(why),
        Err(payload) => {
            let (message, location) = take_last_panic().unwrap_or_else(|| {
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "Box<dyn Any>".into());
                (message, None)
            });
            ItemOutcome::Panicked {
                message,
                location,
                pid: crate::platform::getpid(),
            }
        }
    }
}

/// The worker process's target: runs tasks until told to stop, or until `max_tasks`.
pub(crate) fn worker_main(args: WorkerArgs) {
    if let Some((target, init_args)) = &args.initializer {
        match run_item(*target, init_args) {
            ItemOutcome::Value(_) => {}
            ItemOutcome::Panicked { message, .. } => panic!("pool initializer panicked: {message}"),
            ItemOutcome::Broken(why) => panic!("pool initializer failed: {why}"),
        }
    }
    let mut done = 0u64;
    while let Ok(ToWorker::Task { id, target, items }) = args.tasks.get() {
        let outcomes = items.iter().map(|a| run_item(target, a)).collect();
        let report = FromWorker {
            slot: args.slot,
            id,
            outcomes,
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
