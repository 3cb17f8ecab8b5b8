//! What a pool task runs: a target named by its chunk trampoline.
//!
//! A [`TaskTarget`] is a promise that its offset names a chunk trampoline of this very
//! executable: made by [`TaskTarget::of`] in this process, or by the `unsafe`
//! [`TaskTarget::trusting`], whose caller vouches for an id that came from another process of
//! the same build. What travels between processes is the plain [`TaskTargetId`], which
//! promises nothing. So [`TaskTarget::run`] is sound by its types, not by a convention about
//! who may deserialize what.

#![allow(unsafe_code)] // the pool's only unsafe code: naming and calling a trampoline

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::chunk::{self, ItemFailure};
use crate::process::{anchor_offset, assert_zero_sized, at_anchor_offset, conjure};

/// A chunk trampoline's offset from the anchor, as it travels between processes: data only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct TaskTargetId(isize);

/// A target this process may run over a chunk of arguments (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TaskTarget(isize);

/// The shape of every chunk trampoline: serialized `Vec<A>` in, serialized
/// `(Vec<(u32, ItemFailure)>, Vec<R>)` out (the failures with their indexes, then the values
/// of the items that succeeded, in order; the failures come first so that they can be read
/// without knowing `R`).
type ChunkTrampoline = fn(&[u8]) -> Result<Vec<u8>, String>;

impl TaskTarget {
    /// The target `f` taking an `A` and returning an `R`.
    pub(crate) fn of<F, A, R>(_f: &F) -> TaskTarget
    where
        F: Fn(A) -> R + Copy + 'static,
        A: DeserializeOwned + 'static,
        R: Serialize + 'static,
    {
        assert_zero_sized::<F>();
        let t: ChunkTrampoline = chunk_trampoline::<F, A, R>;
        TaskTarget(anchor_offset(t as usize))
    }

    /// What to send to a worker.
    pub(crate) fn id(self) -> TaskTargetId {
        TaskTargetId(self.0)
    }

    /// The target named by `id`.
    ///
    /// # Safety
    /// `id` must come from [`TaskTarget::id`] in a process running this same executable (a
    /// pool's worker, whose build fingerprint was checked when it started, receiving through
    /// queues the pool made).
    pub(crate) unsafe fn trusting(id: TaskTargetId) -> TaskTarget {
        TaskTarget(id.0)
    }

    /// Runs the target over a serialized chunk of arguments.
    pub(crate) fn run(self, items: &[u8]) -> Result<Vec<u8>, String> {
        let addr = at_anchor_offset(self.0);
        // SAFETY: a TaskTarget is made by `of`, from a ChunkTrampoline of this image, or by
        // `trusting`, whose caller guarantees the offset came from `of` in a process of this
        // same executable, where the image lies at the same distance from the anchor. So
        // `addr` is a ChunkTrampoline of this image.
        let trampoline = unsafe { std::mem::transmute::<usize, ChunkTrampoline>(addr) };
        trampoline(items)
    }
}

fn chunk_trampoline<F, A, R>(items: &[u8]) -> Result<Vec<u8>, String>
where
    F: Fn(A) -> R + Copy + 'static,
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    let mut args: Vec<A> = Vec::new();
    chunk::decode_items_appending("pool task arguments", items, &mut args)
        .map_err(|e| e.to_string())?;
    // SAFETY: `TaskTarget::of`, the only place naming this trampoline, checked `F`.
    let target: F = unsafe { conjure() };
    // Values in item order, skipping failed items, then the failures with their indexes: the
    // common all-good chunk decodes straight into a `Vec<R>`.
    let mut values: Vec<R> = Vec::with_capacity(args.len());
    let mut failures = Vec::new();
    for (i, a) in args.into_iter().enumerate() {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(a))) {
            Ok(v) => values.push(v),
            Err(payload) => {
                let (message, location) = crate::process::take_last_panic()
                    .unwrap_or_else(|| (crate::error::panic_message(&*payload), None));
                let pid = crate::platform::getpid();
                failures.push((
                    i as u32,
                    ItemFailure::Panicked {
                        message,
                        location,
                        pid,
                    },
                ));
            }
        }
    }
    chunk::encode_results(&failures, &values).map_err(|e| e.to_string())
}
