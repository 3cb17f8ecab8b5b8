//! Shared memory segments: the one mechanism under every cross-process object.
//!
//! A [`Segment`] is an anonymous memory file (memfd) mapped `MAP_SHARED`. Handing it to another
//! process means handing over its descriptor (the `share` side table does that when a handle
//! is serialized); the other side maps it again. The memory is freed by the kernel when the last
//! descriptor and mapping go, so a crashed process leaks nothing that outlives the tree.
//!
//! [`Shared<L>`] is a typed view: a segment that begins with a layout `L` (a `#[repr(C)]` struct of
//! atomics whose first word is `L::MAGIC`), followed by `extra` bytes the layout describes.

mod named;
pub(crate) mod tracker;

pub use named::SharedMemory;

use std::fmt;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::platform;

/// Segments up to this size are always mapped at once (a lock, an event, a small value).
const POPULATE_ALWAYS: usize = 64 << 10;

/// A shared mapping of a memory file. Dropping the last handle in a process unmaps it.
pub(crate) struct Segment {
    ptr: NonNull<u8>,
    len: usize,
    fd: OwnedFd,
}

// SAFETY: the mapping is plain shared memory; every access to it goes through atomics or
// through types that synchronise themselves, so handing the handle to other threads is sound.
unsafe impl Send for Segment {}
// SAFETY: as for `Send`: `&Segment` only exposes the base pointer and the descriptor.
unsafe impl Sync for Segment {}

impl Segment {
    /// A new zero-filled segment of `len` bytes. Its pages are mapped when first touched,
    /// except for a small segment, or with `populate`: then all of them now, which costs less
    /// than a fault per page when they will all be used soon (a pool's queues, a big message).
    pub(crate) fn create(what: &str, len: usize, populate: bool) -> Result<Arc<Segment>> {
        let fd = platform::memfd_create(&format!("multiproc:{what}"), len)
            .map_err(|e| Error::io(format!("{what}: cannot create shared memory"), e))?;
        Segment::map(what, fd, len, populate || len <= POPULATE_ALWAYS)
    }

    /// Maps the whole of the memory file `fd` (as received from another process).
    pub(crate) fn from_fd(what: &str, fd: OwnedFd) -> Result<Arc<Segment>> {
        let len = platform::file_len(fd.as_fd())
            .map_err(|e| Error::io(format!("{what}: cannot inspect shared memory"), e))?;
        Segment::map(what, fd, len, false)
    }

    fn map(what: &str, fd: OwnedFd, len: usize, populate: bool) -> Result<Arc<Segment>> {
        let ptr = platform::map_shared(fd.as_fd(), len, populate)
            .map_err(|e| Error::io(format!("{what}: cannot map shared memory"), e))?;
        Ok(Arc::new(Segment { ptr, len, fd }))
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The whole segment as bytes.
    ///
    /// # Safety
    /// Nobody (in any process) writes the segment while the slice lives.
    pub(crate) unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is `len` bytes for as long as `self` lives; the caller rules
        // out writers.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The whole segment as mutable bytes.
    ///
    /// # Safety
    /// Nobody else (in any process) reads or writes the segment while the slice lives.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn as_mut_slice(&self) -> &mut [u8] {
        // SAFETY: as for `as_slice`, with exclusive access guaranteed by the caller.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: `(ptr, len)` is the mapping made in `map`; the last handle to it is going.
        unsafe { platform::unmap(self.ptr, self.len) };
    }
}

impl fmt::Debug for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segment").field("len", &self.len).finish()
    }
}

/// A fixed shared-memory layout.
///
/// # Safety
/// The type is `#[repr(C)]`, starts with an `AtomicU32` holding [`MAGIC`](Self::MAGIC) once
/// initialised, is valid when all its bytes are zero, and is only ever accessed through shared
/// references (atomics, or fields written before the segment is shared and never again).
pub(crate) unsafe trait Layout: Sync + Sized {
    /// Identifies the layout and its version (`b"LCK1"` as a little-endian u32, say).
    const MAGIC: u32;
    /// What the object is called in error messages (`"lock"`).
    const WHAT: &'static str;

    /// Whether a thread of this process holds a lock in it. Its mapping then stays when the
    /// last handle goes (a guard that was forgotten): the lock is in the thread's robust
    /// futex list, which points into the mapping.
    fn held_here(&self) -> bool {
        false
    }
}

/// A segment that holds an `L` at offset 0 followed by `extra` bytes.
pub(crate) struct Shared<L: Layout> {
    segment: Arc<Segment>,
    _layout: PhantomData<L>,
}

impl<L: Layout> Clone for Shared<L> {
    fn clone(&self) -> Self {
        Shared {
            segment: self.segment.clone(),
            _layout: PhantomData,
        }
    }
}

impl<L: Layout> Shared<L> {
    /// Creates the segment and lets `init` fill the zeroed layout (and the extra bytes) before
    /// the magic word is written and anyone else can see it.
    pub(crate) fn create(extra: usize, init: impl FnOnce(&L, *mut u8)) -> Result<Self> {
        Shared::create_populated(extra, false, init)
    }

    /// [`create`](Self::create), mapping every page now if `populate` (see [`Segment::create`]).
    pub(crate) fn create_populated(
        extra: usize,
        populate: bool,
        init: impl FnOnce(&L, *mut u8),
    ) -> Result<Self> {
        let len = std::mem::size_of::<L>()
            .checked_add(extra)
            .ok_or_else(|| Error::invalid(L::WHAT, "size too large"))?;
        let segment = Segment::create(L::WHAT, len, populate)?;
        let shared = Shared {
            segment,
            _layout: PhantomData,
        };
        init(shared.layout(), shared.extra_ptr());
        shared.magic().store(L::MAGIC, Ordering::Release);
        Ok(shared)
    }

    /// Maps a segment received from another process and checks that it holds an `L`.
    pub(crate) fn from_fd(fd: OwnedFd) -> Result<Self> {
        let segment = Segment::from_fd(L::WHAT, fd)?;
        if segment.len() < std::mem::size_of::<L>() {
            return Err(Error::protocol(
                L::WHAT,
                format!("shared segment of {} bytes is too small", segment.len()),
            ));
        }
        let shared = Shared {
            segment,
            _layout: PhantomData,
        };
        let magic = shared.magic().load(Ordering::Acquire);
        if magic != L::MAGIC {
            return Err(Error::protocol(
                L::WHAT,
                format!(
                    "shared segment holds layout {magic:#010x}, not {:#010x}",
                    L::MAGIC
                ),
            ));
        }
        Ok(shared)
    }

    fn magic(&self) -> &AtomicU32 {
        // SAFETY: `L: Layout` starts with an AtomicU32 and the segment is at least that large
        // (checked at creation and when mapping); the mapping is page-aligned.
        unsafe { &*self.segment.as_ptr().cast::<AtomicU32>() }
    }

    /// The layout at the start of the segment.
    /// A reference that keeps the mapping (and so every word in it) alive, for the async
    /// reactor to go on watching a word after its waiters went.
    #[cfg(all(feature = "async", not(loom)))]
    pub(crate) fn keep_alive(&self) -> Arc<dyn std::any::Any + Send + Sync> {
        self.segment.clone()
    }

    pub(crate) fn layout(&self) -> &L {
        // SAFETY: the segment holds at least `size_of::<L>()` bytes, page-aligned; `L` is valid
        // for any bytes our code writes (all-zero included) and is only accessed through `&L`.
        unsafe { &*self.segment.as_ptr().cast::<L>() }
    }

    /// The bytes after the layout.
    pub(crate) fn extra_ptr(&self) -> *mut u8 {
        // SAFETY: the segment is at least `size_of::<L>()` long, so the offset stays in it (or
        // one past its end when there are no extra bytes).
        unsafe { self.segment.as_ptr().add(std::mem::size_of::<L>()) }
    }

    /// How many bytes follow the layout.
    pub(crate) fn extra_len(&self) -> usize {
        self.segment.len() - std::mem::size_of::<L>()
    }

    /// Maps every page of the segment in this process now (see [`Segment::create`]).
    pub(crate) fn populate(&self) {
        platform::populate(self.segment.ptr, self.segment.len);
    }
}

impl<L: Layout> Drop for Shared<L> {
    fn drop(&mut self) {
        // The last handle of this process, over a lock a thread of ours still holds: the
        // mapping is kept (leaked) rather than unmapped under the thread's robust list.
        if Arc::strong_count(&self.segment) == 1 && self.layout().held_here() {
            std::mem::forget(self.segment.clone());
        }
    }
}

impl<L: Layout> Serialize for Shared<L> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        crate::share::serialize_fd(self.segment.fd(), serializer)
    }
}

impl<'de, L: Layout> Deserialize<'de> for Shared<L> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let fd = crate::share::deserialize_fd(deserializer)?;
        Shared::from_fd(fd).map_err(|e| crate::share::handle_error_de(e.to_string()))
    }
}

impl<L: Layout> fmt::Debug for Shared<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(L::WHAT)
            .field("len", &self.segment.len())
            .finish()
    }
}
