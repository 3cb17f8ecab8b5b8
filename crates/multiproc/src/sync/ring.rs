//! The shared ring under [`Queue`](crate::Queue) and [`Pipe`](crate::Pipe): variable-size
//! frames, many producers and many consumers, in any processes. See `queue/README.md` for the
//! algorithm.

use std::time::Instant;

use crate::sync::raw_lock::RawLock;
use crate::sync::shim::{
    AtomicU32, AtomicU64, FutexWait, Ordering, fence, futex_wait_low, futex_wake_low,
};
use crate::sync::spin::spin_until_batching;

/// Bytes of a frame header: payload length (u32) and kind (u32).
pub(crate) const HEADER: u32 = 8;

/// The ring size in bytes of a frame carrying `payload` bytes, if it can be represented.
pub(crate) fn frame_len(payload: usize) -> Option<u32> {
    let padded = u32::try_from(payload).ok()?.checked_add(7)? & !7;
    padded.checked_add(HEADER)
}

fn pos(word: u64) -> u32 {
    word as u32
}

fn count(word: u64) -> u32 {
    (word >> 32) as u32
}

fn word(pos: u32, count: u32) -> u64 {
    (u64::from(count) << 32) | u64::from(pos)
}

/// Written by producers, under the producer lock.
#[repr(C, align(64))]
#[derive(Default)]
pub(crate) struct ProducerSide {
    lock: RawLock,
    /// Low half: byte position of the next frame to write; high half: frames ever written.
    tail: AtomicU64,
    /// Identifies frames whose message travels beside the ring.
    next_side_id: AtomicU64,
    /// The head as a producer last read it: room it shows is surely there, and reading it
    /// costs no cache miss (the consumers' line is only read when it shows too little).
    head_hint: AtomicU64,
}

/// Written by consumers, under the consumer lock.
#[repr(C, align(64))]
#[derive(Default)]
pub(crate) struct ConsumerSide {
    lock: RawLock,
    /// Low half: byte position of the next frame to read; high half: frames ever read.
    head: AtomicU64,
    /// The tail as a consumer last read it: frames before it are surely published.
    tail_hint: AtomicU64,
}

/// Who sleeps, and `JoinableQueue`'s counter.
#[repr(C, align(64))]
pub(crate) struct Sleepers {
    /// Consumers asleep (or about to be) on the tail's low half.
    consumers: AtomicU32,
    /// Producers asleep (or about to be) on the head's low half.
    producers: AtomicU32,
    /// Frames marked done by `task_done`; the futex word `join` sleeps on.
    pub(crate) done: AtomicU32,
    /// Threads in `join`.
    pub(crate) joiners: AtomicU32,
    /// Items put and waiting in their producers' memory for room in the ring (an unbounded
    /// queue's `put` does not wait), by producer process (a [`ProcessCounts`] table): they
    /// count as unfinished while their producer lives.
    ///
    /// [`ProcessCounts`]: crate::sync::process_counts::ProcessCounts
    pub(crate) backlogged: [AtomicU64; BACKLOG_PROCESSES],
}

/// How many processes can have items waiting for room in one ring at once; another one's
/// `put` waits for room instead.
pub(crate) const BACKLOG_PROCESSES: usize = 128;

impl Default for Sleepers {
    fn default() -> Sleepers {
        Sleepers {
            consumers: AtomicU32::new(0),
            producers: AtomicU32::new(0),
            done: AtomicU32::new(0),
            joiners: AtomicU32::new(0),
            backlogged: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// # Layout
///
/// | field        | meaning                                                              |
/// |--------------|----------------------------------------------------------------------|
/// | `magic`      | `b"QUE2"`                                                            |
/// | `capacity`   | ring bytes, a power of two; written before sharing                   |
/// | `maxsize`    | most frames the ring may hold, 0 for no limit; written before sharing|
/// | `flags`      | [`PREALLOCATED`]: receivers map every page at once                   |
/// | `type_hash`  | a hash of the item type's name, checked when a handle is received    |
/// | `producer`   | producer lock, tail (position + count), side-channel ids (own line)  |
/// | `consumer`   | consumer lock, head (position + count) (own line)                    |
/// | `sleepers`   | sleeper counts, `JoinableQueue`'s `done`, items backlogged by process  |
/// | then         | `capacity` bytes of frames                                           |
#[repr(C)]
#[derive(Default)]
pub(crate) struct RingLayout {
    magic: AtomicU32,
    pub(crate) capacity: AtomicU32,
    pub(crate) maxsize: AtomicU32,
    pub(crate) flags: AtomicU32,
    pub(crate) type_hash: AtomicU64,
    producer: ProducerSide,
    consumer: ConsumerSide,
    pub(crate) sleepers: Sleepers,
}

// SAFETY: repr(C) of atomics, magic first, valid all-zero, accessed only through `&`.
unsafe impl crate::shm::Layout for RingLayout {
    const MAGIC: u32 = u32::from_le_bytes(*b"QUE2");
    const WHAT: &'static str = "queue";
}

/// A `flags` bit: the ring's pages were all allocated at creation, and whoever maps it
/// should map them all at once too.
pub(crate) const PREALLOCATED: u32 = 1;

/// Why a wait ended without success.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WaitFailed {
    /// Non-blocking, and there was no room / no frame.
    WouldBlock,
    /// The deadline passed.
    TimedOut,
}

/// A frame in the ring is malformed (which only a bug or memory corruption can cause).
#[derive(Debug)]
pub(crate) struct Corrupt(pub(crate) String);

/// A view of a ring: its layout and its data bytes.
pub(crate) struct Ring<'a> {
    layout: &'a RingLayout,
    data: *mut u8,
    capacity: u32,
}

impl<'a> Ring<'a> {
    /// # Safety
    /// `data` points to `layout.capacity` bytes that live as long as `'a`, that only ring
    /// code touches, and `layout.capacity` is a power of two of at least 64.
    pub(crate) unsafe fn new(layout: &'a RingLayout, data: *mut u8) -> Ring<'a> {
        let capacity = layout.capacity.load(Ordering::Relaxed);
        debug_assert!(capacity.is_power_of_two() && capacity >= 64);
        Ring {
            layout,
            data,
            capacity,
        }
    }

    pub(crate) fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Frames in the ring now.
    pub(crate) fn len(&self) -> u32 {
        let head = self.layout.consumer.head.load(Ordering::Acquire);
        let tail = self.layout.producer.tail.load(Ordering::Acquire);
        count(tail).wrapping_sub(count(head))
    }

    /// Whether the ring holds no frame now.
    pub(crate) fn is_empty(&self) -> bool {
        let head = self.layout.consumer.head.load(Ordering::Acquire);
        let tail = self.layout.producer.tail.load(Ordering::Acquire);
        pos(tail) == pos(head)
    }

    /// The count of consumers asleep (or about to be). A consumer that sleeps elsewhere than
    /// on the ring's futex counts itself here, then (after a `SeqCst` fence) looks at the
    /// ring once more before it sleeps; see [`Producer::publish_unwoken`].
    pub(crate) fn consumer_sleepers(&self) -> &AtomicU32 {
        &self.layout.sleepers.consumers
    }

    /// Frames ever written.
    pub(crate) fn put_count(&self) -> u32 {
        count(self.layout.producer.tail.load(Ordering::Acquire))
    }

    /// Whether no frame of `frame` bytes would fit now.
    pub(crate) fn is_full(&self, frame: u32) -> bool {
        let head = self.layout.consumer.head.load(Ordering::Acquire);
        let tail = self.layout.producer.tail.load(Ordering::Acquire);
        !self.has_room(head, tail, frame)
    }

    fn has_room(&self, head: u64, tail: u64, frame: u32) -> bool {
        let used = pos(tail).wrapping_sub(pos(head));
        let maxsize = self.layout.maxsize.load(Ordering::Relaxed);
        self.capacity.saturating_sub(used) >= frame
            && (maxsize == 0 || count(tail).wrapping_sub(count(head)) < maxsize)
    }

    /// Waits, without holding the consumer lock, until the ring seems to hold a frame. Another
    /// consumer may take it first: callers then look again. Without `spin` it sleeps at once
    /// (for a background thread that should leave the CPU to others).
    pub(crate) fn wait_readable(
        &self,
        deadline: Option<Instant>,
        spin: bool,
    ) -> Result<(), WaitFailed> {
        let producer = &self.layout.producer;
        let consumer = &self.layout.consumer;
        let sleepers = &self.layout.sleepers;
        let empty = || {
            pos(producer.tail.load(Ordering::Acquire)) == pos(consumer.head.load(Ordering::Acquire))
        };
        if !empty() || (spin && spin_until_batching(|| !empty())) {
            return Ok(());
        }
        loop {
            let tail = producer.tail.load(Ordering::Acquire);
            sleepers.consumers.fetch_add(1, Ordering::Relaxed);
            // Pairs with the fence in `Producer::publish`.
            fence(Ordering::SeqCst);
            let waited = if empty() {
                futex_wait_low(&producer.tail, pos(tail), deadline)
            } else {
                FutexWait::Woken
            };
            sleepers.consumers.fetch_sub(1, Ordering::Relaxed);
            if !empty() {
                return Ok(());
            }
            if waited == FutexWait::TimedOut {
                return Err(WaitFailed::TimedOut);
            }
        }
    }

    /// What an awaiting consumer waits on (feature `async`): the tail (it moves when a
    /// frame is published), the count of sleeping consumers, and the consumer lock.
    #[cfg(all(feature = "async", not(loom)))]
    pub(crate) fn consumer_waits(&self) -> (&'a AtomicU64, &'a AtomicU32, &'a RawLock) {
        let l = self.layout;
        (&l.producer.tail, &l.sleepers.consumers, &l.consumer.lock)
    }

    /// What an awaiting producer waits on (feature `async`): the head (it moves when a frame
    /// is taken), the count of sleeping producers, and the producer lock.
    #[cfg(all(feature = "async", not(loom)))]
    pub(crate) fn producer_waits(&self) -> (&'a AtomicU64, &'a AtomicU32, &'a RawLock) {
        let l = self.layout;
        (&l.consumer.head, &l.sleepers.producers, &l.producer.lock)
    }

    /// Takes the consumer lock without waiting, as a waiter that slept (keeping `WAITERS`)
    /// when `as_waiter`; `None` if it is held.
    #[cfg(all(feature = "async", not(loom)))]
    pub(crate) fn try_consumer(&self, as_waiter: bool) -> Option<Consumer<'_, 'a>> {
        let lock = &self.layout.consumer.lock;
        match as_waiter {
            true => lock.try_lock_as_waiter()?,
            false => lock.try_lock()?,
        };
        Some(Consumer {
            ring: self,
            head: self.layout.consumer.head.load(Ordering::Relaxed),
        })
    }

    /// Takes the producer lock without waiting, as [`try_consumer`](Self::try_consumer).
    #[cfg(all(feature = "async", not(loom)))]
    pub(crate) fn try_producer(&self, as_waiter: bool) -> Option<Producer<'_, 'a>> {
        let lock = &self.layout.producer.lock;
        match as_waiter {
            true => lock.try_lock_as_waiter()?,
            false => lock.try_lock()?,
        };
        Some(Producer {
            ring: self,
            tail: self.layout.producer.tail.load(Ordering::Relaxed),
        })
    }

    /// Takes the producer lock (until `deadline`); `None` on timeout.
    pub(crate) fn producer(&self, deadline: Option<Instant>) -> Option<Producer<'_, 'a>> {
        self.layout.producer.lock.lock_deadline(deadline)?;
        Some(Producer {
            ring: self,
            tail: self.layout.producer.tail.load(Ordering::Relaxed),
        })
    }

    /// Takes the consumer lock (until `deadline`); `None` on timeout.
    pub(crate) fn consumer(&self, deadline: Option<Instant>) -> Option<Consumer<'_, 'a>> {
        self.layout.consumer.lock.lock_deadline(deadline)?;
        Some(Consumer {
            ring: self,
            head: self.layout.consumer.head.load(Ordering::Relaxed),
        })
    }

    fn offset(&self, position: u32) -> usize {
        (position & (self.capacity - 1)) as usize
    }

    /// Copies `bytes` into the ring at `position`, wrapping at the end.
    #[inline]
    fn copy_in(&self, position: u32, bytes: &[u8]) {
        let at = self.offset(position);
        let first = bytes.len().min(self.capacity as usize - at);
        // SAFETY: `at + first <= capacity` and the rest (< capacity) goes to the start; the
        // producer lock and the published head make these bytes ours until we publish.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.data.add(at), first);
            if first < bytes.len() {
                std::ptr::copy_nonoverlapping(
                    bytes.as_ptr().add(first),
                    self.data,
                    bytes.len() - first,
                );
            }
        }
    }

    /// Copies ring bytes at `position` into `out`, wrapping at the end.
    #[inline]
    fn copy_out(&self, position: u32, out: &mut [u8]) {
        let at = self.offset(position);
        let first = out.len().min(self.capacity as usize - at);
        // SAFETY: as in `copy_in`, for bytes published by a producer and not yet consumed,
        // which the consumer lock makes ours to read.
        unsafe {
            std::ptr::copy_nonoverlapping(self.data.add(at), out.as_mut_ptr(), first);
            if first < out.len() {
                std::ptr::copy_nonoverlapping(
                    self.data,
                    out.as_mut_ptr().add(first),
                    out.len() - first,
                );
            }
        }
    }

    /// Writes a frame header at `position` (8-aligned, so it never wraps).
    #[inline]
    fn write_header(&self, position: u32, len: u32, kind: u32) {
        let word = u64::from(len) | (u64::from(kind) << 32);
        // SAFETY: positions of frames are multiples of 8 and the capacity is too, so the 8
        // bytes lie inside the ring, 8-aligned (the ring starts on a cache line); they are
        // ours as in `copy_in`.
        unsafe {
            self.data
                .add(self.offset(position))
                .cast::<u64>()
                .write(word.to_le())
        };
    }

    /// Reads the frame header at `position`: `(len, kind)`.
    #[inline]
    fn read_header(&self, position: u32) -> (u32, u32) {
        // SAFETY: as in `write_header`, for a published frame the consumer lock makes ours.
        let word =
            u64::from_le(unsafe { self.data.add(self.offset(position)).cast::<u64>().read() });
        (word as u32, (word >> 32) as u32)
    }
}

/// Holds the producer lock.
pub(crate) struct Producer<'r, 'a> {
    ring: &'r Ring<'a>,
    tail: u64,
}

impl Producer<'_, '_> {
    /// Waits until a frame of `frame` bytes fits (and the item limit allows one more), until
    /// the deadline `deadline` gives, asked only once it has to sleep (so that a deadline
    /// relative to then costs no clock read when there is room).
    pub(crate) fn wait_room_until(
        &mut self,
        frame: u32,
        deadline: impl FnOnce() -> Option<Instant>,
        block: bool,
    ) -> Result<(), WaitFailed> {
        let mut deadline = Some(deadline);
        let mut asked = None;
        let ring = self.ring;
        let consumer = &ring.layout.consumer;
        let sleepers = &ring.layout.sleepers;
        let hint = &ring.layout.producer.head_hint;
        if ring.has_room(hint.load(Ordering::Relaxed), self.tail, frame) {
            return Ok(());
        }
        let mut spun = false;
        loop {
            let head = consumer.head.load(Ordering::Acquire);
            hint.store(head, Ordering::Relaxed);
            if ring.has_room(head, self.tail, frame) {
                return Ok(());
            }
            if !block {
                return Err(WaitFailed::WouldBlock);
            }
            if !spun {
                spun = true;
                if spin_until_batching(|| consumer.head.load(Ordering::Relaxed) != head) {
                    continue;
                }
            }
            let deadline = match deadline.take() {
                Some(ask) => *asked.insert(ask()),
                None => asked.flatten(),
            };
            sleepers.producers.fetch_add(1, Ordering::Relaxed);
            // Pairs with the fence in `Consumer::take`: either it sees us asleep, or we see
            // its new head.
            fence(Ordering::SeqCst);
            let waited = if consumer.head.load(Ordering::Relaxed) == head {
                futex_wait_low(&consumer.head, pos(head), deadline)
            } else {
                FutexWait::Woken
            };
            sleepers.producers.fetch_sub(1, Ordering::Relaxed);
            if waited == FutexWait::TimedOut
                && !ring.has_room(consumer.head.load(Ordering::Acquire), self.tail, frame)
            {
                return Err(WaitFailed::TimedOut);
            }
        }
    }

    /// A fresh id for a frame whose message goes beside the ring.
    pub(crate) fn next_side_id(&self) -> u64 {
        self.ring
            .layout
            .producer
            .next_side_id
            .fetch_add(1, Ordering::Relaxed)
    }

    /// Writes a frame and makes it visible to consumers, waking one that sleeps on the
    /// futex. The caller has waited for room for `frame_len(payload.len())` bytes.
    pub(crate) fn publish(&mut self, kind: u32, payload: &[u8]) {
        if self.publish_unwoken(kind, payload) {
            futex_wake_low(&self.ring.layout.producer.tail, 1);
        }
    }

    /// [`publish`](Self::publish) for consumers that sleep elsewhere than on the futex (a
    /// pipe's, in `poll`): returns whether any consumer counted itself asleep (or about to
    /// be) in [`Ring::consumer_sleepers`] after the frame became visible; the caller wakes it.
    pub(crate) fn publish_unwoken(&mut self, kind: u32, payload: &[u8]) -> bool {
        let ring = self.ring;
        let len = frame_len(payload.len()).expect("caller checked the frame size");
        let at = pos(self.tail);
        ring.write_header(at, payload.len() as u32, kind);
        ring.copy_in(at.wrapping_add(HEADER), payload);
        self.tail = word(at.wrapping_add(len), count(self.tail).wrapping_add(1));
        ring.layout
            .producer
            .tail
            .store(self.tail, Ordering::Release);
        // Pairs with the fence in `Consumer::wait_frame` (or the pipe's wait): either we see
        // the consumer asleep, or it sees this frame.
        fence(Ordering::SeqCst);
        ring.layout.sleepers.consumers.load(Ordering::Relaxed) > 0
    }
}

impl Drop for Producer<'_, '_> {
    fn drop(&mut self) {
        // SAFETY: a `Producer` exists only while this thread holds the producer lock.
        unsafe { self.ring.layout.producer.lock.unlock() };
    }
}

/// Holds the consumer lock.
pub(crate) struct Consumer<'r, 'a> {
    ring: &'r Ring<'a>,
    head: u64,
}

impl Consumer<'_, '_> {
    /// Waits until a frame is there.
    pub(crate) fn wait_frame(
        &mut self,
        deadline: Option<Instant>,
        block: bool,
    ) -> Result<(), WaitFailed> {
        let ring = self.ring;
        let producer = &ring.layout.producer;
        let sleepers = &ring.layout.sleepers;
        let empty = |tail: u64| pos(tail) == pos(self.head);
        let hint = &ring.layout.consumer.tail_hint;
        if !empty(hint.load(Ordering::Relaxed)) {
            return Ok(());
        }
        let mut spun = false;
        loop {
            let tail = producer.tail.load(Ordering::Acquire);
            hint.store(tail, Ordering::Relaxed);
            if !empty(tail) {
                return Ok(());
            }
            if !block {
                return Err(WaitFailed::WouldBlock);
            }
            if !spun {
                spun = true;
                if spin_until_batching(|| !empty(producer.tail.load(Ordering::Relaxed))) {
                    continue;
                }
            }
            sleepers.consumers.fetch_add(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            let waited = if empty(producer.tail.load(Ordering::Acquire)) {
                futex_wait_low(&producer.tail, pos(self.head), deadline)
            } else {
                FutexWait::Woken
            };
            sleepers.consumers.fetch_sub(1, Ordering::Relaxed);
            if waited == FutexWait::TimedOut && empty(producer.tail.load(Ordering::Acquire)) {
                return Err(WaitFailed::TimedOut);
            }
        }
    }

    /// Takes the next frame (`wait_frame` must have found it): its payload goes into `out` (replacing what
    /// was there), the frame is released to producers, and its kind is returned.
    #[cfg(test)]
    pub(crate) fn take(&mut self, out: &mut Vec<u8>) -> Result<u32, Corrupt> {
        self.take_with(&mut Vec::new(), |kind, payload| {
            out.clear();
            out.extend_from_slice(payload);
            kind
        })
    }

    /// Takes the next frame (`wait_frame` must have found it) and hands its kind and payload
    /// to `read` while it is still in the ring (copied into `spare` first only if it wraps
    /// around the ring's end); then releases it to producers. Saves a copy of a large payload
    /// that `read` decodes anyway.
    pub(crate) fn take_with<R>(
        &mut self,
        spare: &mut Vec<u8>,
        read: impl FnOnce(u32, &[u8]) -> R,
    ) -> Result<R, Corrupt> {
        let ring = self.ring;
        let tail = ring.layout.consumer.tail_hint.load(Ordering::Relaxed);
        let at = pos(self.head);
        let available = pos(tail).wrapping_sub(at);
        if available < HEADER || available > ring.capacity || !at.is_multiple_of(8) {
            return Err(Corrupt(format!(
                "{available} bytes available at position {at}"
            )));
        }
        let (len, kind) = ring.read_header(at);
        let frame = frame_len(len as usize).filter(|f| *f <= available);
        let Some(frame) = frame else {
            return Err(Corrupt(format!(
                "frame of {len} bytes in {available} bytes"
            )));
        };
        let start = at.wrapping_add(HEADER);
        let offset = ring.offset(start);
        let result = if offset + len as usize <= ring.capacity as usize {
            // SAFETY: the payload lies inside the ring (checked just above) in one piece; it
            // is published (before `tail`) and not yet released (after `head`), so no
            // producer writes it while the consumer lock makes it ours, until `head` moves
            // below, after `read` is done with it.
            let payload =
                unsafe { std::slice::from_raw_parts(ring.data.add(offset), len as usize) };
            read(kind, payload)
        } else {
            spare.clear();
            spare.resize(len as usize, 0);
            ring.copy_out(start, spare);
            read(kind, spare)
        };
        self.head = word(at.wrapping_add(frame), count(self.head).wrapping_add(1));
        ring.layout
            .consumer
            .head
            .store(self.head, Ordering::Release);
        // Pairs with the fence in `Producer::wait_room` (see `Producer::publish`).
        fence(Ordering::SeqCst);
        if ring.layout.sleepers.producers.load(Ordering::Relaxed) > 0 {
            futex_wake_low(&ring.layout.consumer.head, 1);
        }
        Ok(result)
    }
}

impl Drop for Consumer<'_, '_> {
    fn drop(&mut self) {
        // SAFETY: a `Consumer` exists only while this thread holds the consumer lock.
        unsafe { self.ring.layout.consumer.lock.unlock() };
    }
}

/// A ring on the heap, for tests and model checks.
#[cfg(test)]
pub(crate) struct HeapRing {
    layout: Box<RingLayout>,
    /// Words, so that the bytes are 8-aligned as in shared memory.
    data: Box<[std::cell::UnsafeCell<u64>]>,
}

// SAFETY: the data bytes are only touched through `Ring`, whose locks and published indexes
// order every access (the property the tests check).
#[cfg(test)]
unsafe impl Sync for HeapRing {}

#[cfg(test)]
impl HeapRing {
    pub(crate) fn new(capacity: u32, maxsize: u32) -> HeapRing {
        let layout = Box::<RingLayout>::default();
        layout.capacity.store(capacity, Ordering::Relaxed);
        layout.maxsize.store(maxsize, Ordering::Relaxed);
        let data = (0..capacity)
            .map(|_| std::cell::UnsafeCell::new(0))
            .collect();
        HeapRing { layout, data }
    }

    pub(crate) fn ring(&self) -> Ring<'_> {
        // SAFETY: `data` holds `capacity` bytes, 8-aligned, living as long as `self`.
        unsafe { Ring::new(&self.layout, self.data.as_ptr() as *mut u8) }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn put(ring: &Ring<'_>, payload: &[u8]) -> Result<(), WaitFailed> {
        let mut p = ring.producer(None).unwrap();
        p.wait_room_until(frame_len(payload.len()).unwrap(), || None, false)?;
        p.publish(7, payload);
        Ok(())
    }

    fn get(ring: &Ring<'_>) -> Option<Vec<u8>> {
        let mut c = ring.consumer(None).unwrap();
        c.wait_frame(None, false).ok()?;
        let mut out = Vec::new();
        assert_eq!(c.take(&mut out).unwrap(), 7);
        Some(out)
    }

    proptest! {
        /// Any interleaving of puts and gets of any sizes behaves like a FIFO with the same
        /// capacity rule, across many wraps of the ring.
        #[test]
        fn ring_is_a_fifo(ops in proptest::collection::vec((any::<bool>(), 0usize..300), 1..400)) {
            let heap = HeapRing::new(512, 0);
            let ring = heap.ring();
            let mut model = std::collections::VecDeque::new();
            let mut used = 0u32;
            let mut n = 0u8;
            for (is_put, size) in ops {
                if is_put {
                    n = n.wrapping_add(1);
                    let payload = vec![n; size];
                    let frame = frame_len(size).unwrap();
                    let fits = 512 - used >= frame;
                    prop_assert_eq!(put(&ring, &payload).is_ok(), fits);
                    if fits {
                        used += frame;
                        model.push_back(payload);
                    }
                } else {
                    let got = get(&ring);
                    let want = model.pop_front();
                    if let Some(w) = &want {
                        used -= frame_len(w.len()).unwrap();
                    }
                    prop_assert_eq!(got, want);
                }
                prop_assert_eq!(ring.len() as usize, model.len());
            }
        }
    }

    #[test]
    fn maxsize_limits_frames_not_bytes() {
        let heap = HeapRing::new(4096, 2);
        let ring = heap.ring();
        put(&ring, b"a").unwrap();
        put(&ring, b"b").unwrap();
        assert_eq!(put(&ring, b"c"), Err(WaitFailed::WouldBlock));
        assert_eq!(get(&ring).unwrap(), b"a");
        put(&ring, b"c").unwrap();
    }

    #[test]
    fn a_corrupt_header_is_an_error_not_a_panic() {
        let heap = HeapRing::new(64, 0);
        let ring = heap.ring();
        put(&ring, b"hello").unwrap();
        // Claim a payload far larger than what was published.
        ring.copy_in(0, &1000u32.to_le_bytes());
        let mut c = ring.consumer(None).unwrap();
        assert!(c.take(&mut Vec::new()).is_err());
    }
}

/// Model checks (run with `RUSTFLAGS="--cfg loom" cargo test -p multiproc --lib --release loom`).
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::sync::shim::bounded_model;
    use loom::sync::Arc;

    fn put(ring: &Ring<'_>, payload: &[u8]) {
        let mut p = ring.producer(None).unwrap();
        p.wait_room_until(frame_len(payload.len()).unwrap(), || None, true)
            .unwrap();
        p.publish(0, payload);
    }

    fn get(ring: &Ring<'_>) -> Vec<u8> {
        let mut c = ring.consumer(None).unwrap();
        c.wait_frame(None, true).unwrap();
        let mut out = Vec::new();
        c.take(&mut out).unwrap();
        out
    }

    /// Two producers and a consumer on a ring with room for two frames: every frame arrives
    /// once, intact, each producer's in order, whatever the interleaving; nobody sleeps for
    /// ever (loom reports a deadlock otherwise).
    #[test]
    fn loom_ring_two_producers_one_consumer() {
        bounded_model(|| {
            let heap = Arc::new(HeapRing::new(64, 2));
            let producers: Vec<_> = (0..2u8)
                .map(|p| {
                    let heap = heap.clone();
                    loom::thread::spawn(move || {
                        let ring = heap.ring();
                        put(&ring, &[p, 0, 0, 0, 0, 0, 0, 0, 0]);
                        put(&ring, &[p, 1]);
                    })
                })
                .collect();
            let ring = heap.ring();
            let mut got: Vec<Vec<u8>> = (0..4).map(|_| get(&ring)).collect();
            producers.into_iter().for_each(|t| t.join().unwrap());
            for p in 0..2u8 {
                let mine: Vec<_> = got.iter().filter(|m| m[0] == p).collect();
                assert_eq!(mine.len(), 2);
                assert_eq!(mine[0].len(), 9);
                assert_eq!(mine[1].as_slice(), &[p, 1]);
            }
            got.clear();
        });
    }
}
