//! The shared-memory flavor of a queue: a ring of frames in a memory file (see `sync/ring.rs` and
//! `README.md`), with a seqpacket side channel for messages too big for the ring or carrying
//! handles.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[cfg(all(feature = "async", not(loom)))]
mod awaiting;
mod builder;
mod typed;

pub use builder::QueueBuilder;
pub(crate) use typed::ShmQueueOf;

use super::QueueFlavor;
use crate::error::{Error, Result};
use crate::platform;
use crate::share::{self, FdIn, FdOut, with_scratch};
use crate::shm::{Segment, Shared};
use crate::sync::IgnorePoison;
use crate::sync::deadline_after;
use crate::sync::process_counts::ProcessCounts;
use crate::sync::ring::{self, Corrupt, Ring, RingLayout, WaitFailed, frame_len};
use crate::sync::shim::{Ordering, fence, futex_wait, futex_wake, process_id};

/// A frame whose payload is the message.
const INLINE: u32 = 0;

/// What a consumer found in the ring.
enum Taken<R> {
    /// An inline item, decoded.
    Item(Result<R>),
    /// The id of a side message.
    Side(u64),
    /// A frame of no kind we write.
    Unknown(u32),
}
/// A frame whose payload is an id: the message went through the side channel.
const SIDE: u32 = 1;

/// Ring size when none is asked for.
const DEFAULT_RING_BYTES: usize = 1 << 20;
const MIN_RING_BYTES: usize = 4096;
const MAX_RING_BYTES: usize = 1 << 30;

/// How long a non-blocking call may wait for another thread's short hold of the ring.
const NONBLOCKING_LOCK_WAIT: Duration = Duration::from_millis(1);

fn type_hash<T>() -> u64 {
    // FNV-1a of the type's name: the same binary on both sides gives the same name.
    std::any::type_name::<T>()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// The shared-memory flavor of [`Queue`](crate::Queue): a ring in a memory file, and a
/// seqpacket side channel.
pub(in crate::queue) struct ShmQueue {
    shared: Shared<RingLayout>,
    /// Both ends of a seqpacket pair every handle holds: producers send on one, consumers
    /// receive on the other, the kernel keeps what is in flight.
    side_tx: Arc<OwnedFd>,
    side_rx: OwnedFd,
    what: String,
    closed: super::Closed,
    /// Items an unbounded queue's `put` could not place in the full ring, in order; a feeder
    /// thread moves them in as room comes (CPython's `put` never waits either: its feeder
    /// thread buffers).
    backlog: Arc<Backlog>,
}

/// The items of one handle waiting for room in the ring, and whether a feeder thread runs.
#[derive(Default)]
struct Backlog {
    /// How many items wait (as `state.items.len()`, readable without the lock).
    queued: AtomicUsize,
    state: Mutex<BacklogState>,
    /// Signalled whenever the feeder moved an item in or stopped.
    moved: Condvar,
}

#[derive(Default)]
struct BacklogState {
    items: VecDeque<(Vec<u8>, Vec<OwnedFd>)>,
    feeding: bool,
}

impl Backlog {
    fn lock(&self) -> MutexGuard<'_, BacklogState> {
        self.state.lock().ignore_poison()
    }
}

/// How long dropping a handle waits for its backlog without the ring draining at all before
/// it gives up on the rest (with an error in the log): nobody is taking items.
const BACKLOG_PATIENCE: Duration = Duration::from_secs(30);
/// How often `join` looks again while items wait in a backlog.
const BACKLOG_POLL: Duration = Duration::from_millis(5);
/// How long an unbounded queue's `put` waits for room before it leaves the item to the
/// feeder thread: consumers at work make room sooner, and the common case stays one copy.
const BACKLOG_AFTER: Duration = Duration::from_millis(10);

/// The ring of `shared`.
fn ring_of(shared: &Shared<RingLayout>) -> Ring<'_> {
    // SAFETY: the extra bytes of the segment are the ring data, `capacity` long; the
    // capacity was checked to be a power of two ≥ 64 that fits, at creation or on receipt.
    unsafe { Ring::new(shared.layout(), shared.extra_ptr()) }
}

/// How long `publish` may wait.
#[derive(Clone, Copy)]
enum Wait {
    /// Until a deadline (or for ever).
    Until(Option<Instant>),
    /// For this long from the first time it has to sleep (no clock read when there is room).
    For(Duration),
    /// Not at all, not even for the producer lock (an awaiting `put`'s attempt); taking it as
    /// a waiter that slept on it when `as_waiter`.
    #[cfg(all(feature = "async", not(loom)))]
    Not { as_waiter: bool },
}

impl Wait {
    fn deadline(self) -> Option<Instant> {
        match self {
            Wait::Until(deadline) => deadline,
            Wait::For(patience) => deadline_after(patience),
            #[cfg(all(feature = "async", not(loom)))]
            Wait::Not { .. } => Some(Instant::now()),
        }
    }
}

/// Puts the encoded item `buf` (with the descriptors it carries) in the ring of `shared`,
/// or beside it through `side_tx` if it is big or carries descriptors. `Ok(Err(_))` is a
/// wait that failed (no room, or a full side channel, by the deadline or at once).
fn publish(
    shared: &Shared<RingLayout>,
    side_tx: BorrowedFd<'_>,
    what: &str,
    buf: &[u8],
    fds: &[OwnedFd],
    wait: Wait,
    block: bool,
) -> Result<std::result::Result<(), WaitFailed>> {
    let ring = ring_of(shared);
    let side = !fds.is_empty() || buf.len() > ring.capacity() as usize / 4;
    // A big message is copied into its memory file before the ring is locked.
    let side_file = if side {
        Some(side_file(what, buf)?)
    } else {
        None
    };
    let payload_len = if side { 8 } else { buf.len() };
    let frame = frame_len(payload_len).expect("inline frames are small");
    // Other producers hold the lock only to copy a frame in.
    let producer = match wait {
        Wait::Until(deadline) => ring.producer(deadline),
        Wait::For(_) => ring.producer(None),
        #[cfg(all(feature = "async", not(loom)))]
        Wait::Not { as_waiter } => ring.try_producer(as_waiter),
    };
    let Some(mut producer) = producer else {
        return Ok(Err(WaitFailed::TimedOut));
    };
    if let Err(why) = producer.wait_room_until(frame, || wait.deadline(), block) {
        return Ok(Err(why));
    }
    match side_file {
        None => producer.publish(INLINE, buf),
        Some(file) => {
            let id = producer.next_side_id();
            let deadline = wait.deadline();
            if let Err(why) = send_side(side_tx, what, id, buf.len(), &file, fds, deadline, block)?
            {
                // The id is skipped: consumers only ask for the ids of published frames.
                return Ok(Err(why));
            }
            producer.publish(SIDE, &id.to_le_bytes());
        }
    }
    Ok(Ok(()))
}

/// A memory file holding `bytes`.
fn side_file(what: &str, bytes: &[u8]) -> Result<Arc<Segment>> {
    let segment = Segment::create(what, bytes.len().max(1), true)?;
    // SAFETY: the segment was just created and nobody else has it yet.
    unsafe { segment.as_mut_slice()[..bytes.len()].copy_from_slice(bytes) };
    Ok(segment)
}

/// Sends side message `id` (`len` bytes in `file`, with `fds`) through `side_tx`.
#[allow(clippy::too_many_arguments)]
fn send_side(
    side_tx: BorrowedFd<'_>,
    what: &str,
    id: u64,
    len: usize,
    file: &Segment,
    fds: &[OwnedFd],
    deadline: Option<Instant>,
    block: bool,
) -> Result<std::result::Result<(), WaitFailed>> {
    let mut header = [0u8; 16];
    header[..8].copy_from_slice(&id.to_le_bytes());
    header[8..].copy_from_slice(&(len as u64).to_le_bytes());
    let mut all: Vec<BorrowedFd<'_>> = vec![file.fd()];
    all.extend(fds.iter().map(|f| f.as_fd()));
    loop {
        match platform::send_with_fds(side_tx, &[IoSlice::new(&header)], &all) {
            Ok(_) => return Ok(Ok(())),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if !block {
                    return Ok(Err(WaitFailed::WouldBlock));
                }
                let ready = platform::poll_writable(side_tx, deadline)
                    .map_err(|e| Error::io(format!("{what}: side channel"), e))?;
                if !ready {
                    return Ok(Err(WaitFailed::TimedOut));
                }
            }
            Err(e) => {
                return Err(Error::io(
                    format!("{what}: cannot send through side channel"),
                    e,
                ));
            }
        }
    }
}

/// The feeder thread of a handle: moves its backlog into the ring, oldest first, waiting
/// for room as long as it takes, then stops.
fn feed(shared: Shared<RingLayout>, side_tx: Arc<OwnedFd>, what: String, backlog: Arc<Backlog>) {
    let backlogged = ProcessCounts(&shared.layout().sleepers.backlogged);
    loop {
        let mut state = backlog.lock();
        let Some((buf, fds)) = state
            .items
            .front_mut()
            .map(|(b, f)| (std::mem::take(b), std::mem::take(f)))
        else {
            state.feeding = false;
            drop(state);
            backlog.moved.notify_all();
            return;
        };
        drop(state);
        let placed = publish(
            &shared,
            side_tx.as_fd(),
            &what,
            &buf,
            &fds,
            Wait::Until(None),
            true,
        );
        // Only now is it out of the backlog: a `put` meanwhile still queues behind it.
        let mut state = backlog.lock();
        state.items.pop_front();
        backlog.queued.fetch_sub(1, Ordering::Release);
        drop(state);
        backlogged.sub(process_id());
        if !matches!(placed, Ok(Ok(()))) {
            tracing::error!(queue = %what, "an item put earlier could not be placed in the queue");
        }
        backlog.moved.notify_all();
    }
}

impl ShmQueue {
    fn ring(&self) -> Ring<'_> {
        ring_of(&self.shared)
    }

    /// A new ring of `ring_bytes` (rounded up to a power of two in bounds) for items of type
    /// `T`.
    pub(in crate::queue) fn create<T>(
        what: String,
        ring_bytes: usize,
        maxsize: u32,
        preallocate: bool,
    ) -> Result<ShmQueue> {
        let capacity = ring_bytes
            .clamp(MIN_RING_BYTES, MAX_RING_BYTES)
            .next_power_of_two();
        let shared = Shared::create_populated(capacity, preallocate, |l: &RingLayout, _| {
            l.capacity.store(capacity as u32, Ordering::Relaxed);
            l.maxsize.store(maxsize, Ordering::Relaxed);
            if preallocate {
                l.flags.store(ring::PREALLOCATED, Ordering::Relaxed);
            }
            l.type_hash.store(type_hash::<T>(), Ordering::Relaxed);
        })?;
        let (side_tx, side_rx) = platform::seqpacket_pair()
            .map_err(|e| Error::io(format!("{what}: cannot create side channel"), e))?;
        for fd in [&side_tx, &side_rx] {
            platform::set_nonblocking(fd.as_fd())
                .map_err(|e| Error::io(format!("{what}: cannot set up side channel"), e))?;
        }
        Ok(ShmQueue::from_parts(shared, side_tx, side_rx, what))
    }

    fn from_parts(
        shared: Shared<RingLayout>,
        side_tx: OwnedFd,
        side_rx: OwnedFd,
        what: String,
    ) -> ShmQueue {
        ShmQueue {
            shared,
            side_tx: Arc::new(side_tx),
            side_rx,
            what,
            closed: super::Closed::default(),
            backlog: Arc::default(),
        }
    }

    /// What goes to another process: the segment, both side-channel ends, the name.
    pub(in crate::queue) fn serialize<S: Serializer>(
        &self,
        s: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        (
            &self.shared,
            FdOut(self.side_tx.as_fd()),
            FdOut(self.side_rx.as_fd()),
            &self.what,
        )
            .serialize(s)
    }

    /// A queue of `T` received from another process, checked.
    pub(in crate::queue) fn deserialize<'de, T, D: Deserializer<'de>>(
        d: D,
    ) -> std::result::Result<ShmQueue, D::Error> {
        let (shared, FdIn(side_tx), FdIn(side_rx), what) =
            <(Shared<RingLayout>, FdIn, FdIn, String)>::deserialize(d)?;
        let l = shared.layout();
        let capacity = l.capacity.load(Ordering::Relaxed) as usize;
        if !capacity.is_power_of_two() || capacity < 64 || capacity > shared.extra_len() {
            return Err(share::handle_error_de(format!(
                "{what}: ring of {capacity} bytes in a segment of {}",
                shared.extra_len()
            )));
        }
        if l.type_hash.load(Ordering::Relaxed) != type_hash::<T>() {
            return Err(share::handle_error_de(format!(
                "{what}: received as a queue of {}, which it is not",
                std::any::type_name::<T>()
            )));
        }
        if l.flags.load(Ordering::Relaxed) & crate::sync::ring::PREALLOCATED != 0 {
            shared.populate();
        }
        Ok(ShmQueue::from_parts(shared, side_tx, side_rx, what))
    }

    pub(in crate::queue) fn check_open(&self) -> Result<()> {
        self.closed.check(|| self.what.clone())
    }

    pub(in crate::queue) fn failed(&self, why: WaitFailed, block: bool, waited: Duration) -> Error {
        let what = self.what.clone();
        match (why, block) {
            (WaitFailed::WouldBlock, _) => Error::Full { what },
            (WaitFailed::TimedOut, false) => Error::Full { what },
            (WaitFailed::TimedOut, true) => Error::timeout(what, waited),
        }
    }

    /// Leaves an item of an unbounded queue's `put` to the feeder thread (started if none
    /// runs).
    #[cold]
    #[inline(never)]
    fn put_in_backlog(&self, buf: &[u8], fds: Vec<OwnedFd>) -> Result<()> {
        let mut state = self.backlog.lock();
        if !self.count_backlogged() {
            // More producer processes have backlogs than the ring can count: wait for room,
            // behind this handle's earlier items.
            while state.feeding {
                state = self.backlog.moved.wait(state).ignore_poison();
            }
            drop(state);
            return publish(
                &self.shared,
                self.side_tx.as_fd(),
                &self.what,
                buf,
                &fds,
                Wait::Until(None),
                true,
            )?
            .map_err(|why| self.failed(why, true, Duration::MAX));
        }
        state.items.push_back((buf.to_vec(), fds));
        self.backlog.queued.fetch_add(1, Ordering::Release);
        if !state.feeding {
            let (shared, side_tx) = (self.shared.clone(), self.side_tx.clone());
            let (what, backlog) = (self.what.clone(), self.backlog.clone());
            std::thread::Builder::new()
                .name("multiproc-feeder".into())
                .spawn(move || feed(shared, side_tx, what, backlog))
                .map_err(|e| {
                    Error::io(format!("{}: cannot start a feeder thread", self.what), e)
                })?;
            state.feeding = true;
        }
        Ok(())
    }

    /// Counts one more item of this process as waiting in its memory; false if the ring
    /// counts as many processes as it can.
    fn count_backlogged(&self) -> bool {
        let counts = ProcessCounts(&self.shared.layout().sleepers.backlogged);
        counts.add(process_id()) || {
            counts.take_dead(|_, _| {});
            counts.add(process_id())
        }
    }

    /// Items waiting in producers' memory, of producers that still live (a dead producer's
    /// are gone and no longer count: `join` would wait for them for ever).
    fn backlogged(&self) -> u64 {
        let counts = ProcessCounts(&self.shared.layout().sleepers.backlogged);
        let total = counts.total();
        if total == 0 {
            return 0;
        }
        let mut lost = 0;
        counts.take_dead(|pid, n| {
            lost += u64::from(n);
            tracing::warn!(
                queue = %self.what,
                pid,
                items = n,
                "a producer died with items not yet in the queue: they are lost"
            );
        });
        if lost == 0 { total } else { counts.total() }
    }

    /// Waits until this handle's backlog is in the ring; gives up (logging what is lost)
    /// after [`BACKLOG_PATIENCE`] without any of it moving.
    fn drain_backlog(&self) {
        let mut state = self.backlog.lock();
        let mut left = state.items.len();
        while state.feeding {
            let (next, timeout) = self
                .backlog
                .moved
                .wait_timeout(state, BACKLOG_PATIENCE)
                .ignore_poison();
            state = next;
            if timeout.timed_out() && state.items.len() == left {
                tracing::error!(
                    queue = %self.what,
                    items = left,
                    "nobody took items from the queue for {BACKLOG_PATIENCE:?}: the items put \
                     and not yet in it are given up"
                );
                // They no longer count as unfinished: all but the one the feeder holds, which
                // counts until it goes in or this process ends.
                let counts = ProcessCounts(&self.shared.layout().sleepers.backlogged);
                let pid = process_id();
                while state.items.len() > 1 {
                    state.items.pop_back();
                    self.backlog.queued.fetch_sub(1, Ordering::Release);
                    counts.sub(pid);
                }
                return;
            }
            left = state.items.len();
        }
    }

    /// Takes the next message and hands its bytes (and descriptors) to `decode`, without
    /// copying them out of the receive buffer first.
    pub(in crate::queue) fn get_until_with<R>(
        &self,
        deadline: Option<Instant>,
        block: bool,
        waited: Duration,
        decode: impl FnOnce(&str, &[u8], Vec<OwnedFd>) -> Result<R>,
    ) -> Result<R> {
        self.check_open()?;
        let empty = |why| match (why, block) {
            (WaitFailed::TimedOut, true) => Error::timeout(self.what.clone(), waited),
            _ => Error::Empty {
                what: self.what.clone(),
            },
        };
        let ring = self.ring();
        let mut consumer = ring
            .consumer(deadline)
            .ok_or_else(|| empty(WaitFailed::TimedOut))?;
        consumer.wait_frame(deadline, block).map_err(empty)?;
        self.take_from(consumer, decode)
    }

    /// Takes the frame `consumer` (holding the consumer lock) found, and hands its bytes to
    /// `decode`.
    fn take_from<R>(
        &self,
        mut consumer: ring::Consumer<'_, '_>,
        decode: impl FnOnce(&str, &[u8], Vec<OwnedFd>) -> Result<R>,
    ) -> Result<R> {
        with_scratch(|buf| {
            // An inline item is decoded straight from the ring (a copy saved), holding the
            // consumer lock for as long as that takes.
            let mut decode = Some(decode);
            let taken = consumer
                .take_with(buf, |kind, bytes| match kind {
                    INLINE => match decode.take() {
                        Some(decode) => Taken::Item(decode(&self.what, bytes, Vec::new())),
                        None => Taken::Unknown(kind),
                    },
                    SIDE => bytes.try_into().map_or(Taken::Unknown(kind), |id| {
                        Taken::Side(u64::from_le_bytes(id))
                    }),
                    other => Taken::Unknown(other),
                })
                .map_err(|Corrupt(e)| {
                    Error::protocol(self.what.as_str(), format!("corrupt ring: {e}"))
                })?;
            match (taken, decode) {
                (Taken::Item(item), _) => item,
                (Taken::Side(id), Some(decode)) => {
                    // Received while the consumer lock is held, so side messages are taken
                    // in ring order.
                    let (file, len, fds) = self.recv_side(id)?;
                    drop(consumer);
                    // SAFETY: the memory file came to us alone: its sender closed it after
                    // sending, and we did not share it.
                    let bytes = unsafe { file.as_slice() };
                    let bytes = bytes
                        .get(..len)
                        .ok_or_else(|| self.corrupt("side message longer than its file"))?;
                    decode(&self.what, bytes, fds)
                }
                (Taken::Unknown(kind), _) => Err(self.corrupt(&format!(
                    "unknown frame kind {kind} (or a side frame without an id)"
                ))),
                (Taken::Side(_), None) => Err(self.corrupt("side frame taken twice")),
            }
        })
    }

    /// Like [`get_timeout`](Self::get_timeout), but waits for an item without holding the
    /// queue's consumer side, so that other threads may take items with `try_get` meanwhile
    /// (a pool's waiters take their own results while its handler thread waits here), and
    /// without spinning: the waiter sleeps at once, leaving the CPU to those who work.
    pub(in crate::queue) fn get_timeout_shared_with<R>(
        &self,
        timeout: Duration,
        mut decode: impl FnMut(&str, &[u8], Vec<OwnedFd>) -> Result<R>,
    ) -> Result<R> {
        let deadline = deadline_after(timeout);
        loop {
            if self.ring().wait_readable(deadline, false).is_err() {
                return Err(Error::timeout(self.what.clone(), timeout));
            }
            match self.get_until_with(deadline, false, timeout, &mut decode) {
                Err(e) if e.kind() == crate::ErrorKind::Empty => continue,
                other => return other,
            }
        }
    }

    fn corrupt(&self, detail: &str) -> Error {
        Error::protocol(self.what.as_str(), detail)
    }

    fn recv_side(&self, want: u64) -> Result<(Arc<Segment>, usize, Vec<OwnedFd>)> {
        loop {
            let mut buf = [MaybeUninit::<u8>::uninit(); 16];
            let mut fds = Vec::new();
            let n = platform::recv_with_fds(self.side_rx.as_fd(), &mut buf, &mut fds, true)
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::WouldBlock => self.corrupt("side message missing"),
                    _ => Error::io(format!("{}: side channel", self.what), e),
                })?;
            if n != 16 || fds.is_empty() {
                return Err(self.corrupt("malformed side message"));
            }
            // SAFETY: recvmsg initialised the first `n` (= 16) bytes.
            let bytes: [u8; 16] = std::array::from_fn(|i| unsafe { buf[i].assume_init() });
            let id = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
            let len = u64::from_le_bytes(bytes[8..].try_into().expect("8 bytes"));
            if id < want {
                // Left by a producer that died before publishing its frame, or by a
                // consumer that died after taking the frame: nobody will ask for it.
                continue;
            }
            if id > want {
                return Err(self.corrupt(&format!("side message {id} where {want} was due")));
            }
            let file = fds.remove(0);
            let file = Segment::from_fd(&self.what, file)?;
            let len = usize::try_from(len).map_err(|_| self.corrupt("side message too long"))?;
            return Ok((file, len, fds));
        }
    }

    fn unfinished_count(&self) -> u32 {
        let inner = self;
        let sleepers = &inner.shared.layout().sleepers;
        let done = sleepers.done.load(Ordering::Acquire);
        let waiting = u32::try_from(inner.backlogged()).unwrap_or(u32::MAX);
        inner
            .ring()
            .put_count()
            .wrapping_sub(done)
            .saturating_add(waiting)
    }
}

impl QueueFlavor for ShmQueue {
    fn put_until<T: Serialize>(
        &self,
        item: &T,
        deadline: Option<Instant>,
        block: bool,
        waited: Duration,
    ) -> Result<()> {
        self.check_open()?;
        with_scratch(|buf| {
            let fds = share::encode_into(&self.what, item, buf)?;
            if self.maxsize() == 0 && block {
                // Unbounded: into the ring if room comes within `BACKLOG_AFTER` (and no earlier
                // item of this handle waits in the backlog), else into the backlog.
                if self.backlog.queued.load(Ordering::Acquire) == 0 {
                    let soon = Wait::For(BACKLOG_AFTER);
                    let placed = publish(
                        &self.shared,
                        self.side_tx.as_fd(),
                        &self.what,
                        buf,
                        &fds,
                        soon,
                        true,
                    )?;
                    if placed.is_ok() {
                        return Ok(());
                    }
                }
                return self.put_in_backlog(buf, fds);
            }
            let wait = Wait::Until(deadline);
            publish(
                &self.shared,
                self.side_tx.as_fd(),
                &self.what,
                buf,
                &fds,
                wait,
                block,
            )?
            .map_err(|why| self.failed(why, block, waited))
        })
    }

    fn get_until<T: DeserializeOwned>(
        &self,
        deadline: Option<Instant>,
        block: bool,
        waited: Duration,
    ) -> Result<T> {
        self.get_until_with(deadline, block, waited, |what, bytes, fds| {
            share::decode(what, bytes, fds)
        })
    }

    /// The number of frames in the ring now.
    fn len(&self) -> usize {
        self.ring().len() as usize
    }

    /// Whether a small item would not fit now.
    fn is_full(&self) -> bool {
        self.ring().is_full(ring::HEADER + 8)
    }

    fn maxsize(&self) -> u32 {
        self.shared.layout().maxsize.load(Ordering::Relaxed)
    }

    fn close(&self) {
        self.closed.close();
    }

    fn task_done(&self) -> Result<()> {
        let inner = self;
        let ring = inner.ring();
        let sleepers = &inner.shared.layout().sleepers;
        let mut done = sleepers.done.load(Ordering::Acquire);
        loop {
            let put = ring.put_count();
            if done == put {
                return Err(Error::invalid(
                    inner.what.as_str(),
                    "task_done() called more times than items were put",
                ));
            }
            match sleepers.done.compare_exchange_weak(
                done,
                done.wrapping_add(1),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => done = now,
            }
        }
        // Pairs with the fence in `join_until`: either we see the joiner, or it sees `done`.
        fence(Ordering::SeqCst);
        if sleepers.joiners.load(Ordering::Relaxed) > 0 {
            futex_wake(&sleepers.done, u32::MAX);
        }
        Ok(())
    }

    fn join_until(&self, deadline: Option<Instant>, waited: Duration) -> Result<()> {
        let inner = self;
        let sleepers = &inner.shared.layout().sleepers;
        loop {
            let done = sleepers.done.load(Ordering::Acquire);
            let backlogged = inner.backlogged();
            if done == inner.ring().put_count() && backlogged == 0 {
                return Ok(());
            }
            // A backlog moving into the ring changes no word a joiner could sleep on: while
            // there is one, look again every few milliseconds.
            let nap = match (backlogged, deadline) {
                (0, d) => d,
                (_, None) => Some(Instant::now() + BACKLOG_POLL),
                (_, Some(d)) => Some(d.min(Instant::now() + BACKLOG_POLL)),
            };
            sleepers.joiners.fetch_add(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if sleepers.done.load(Ordering::Acquire) == done {
                futex_wait(&sleepers.done, done, nap);
            }
            sleepers.joiners.fetch_sub(1, Ordering::Relaxed);
            if deadline.is_some_and(|d| Instant::now() >= d) && inner.unfinished_count() != 0 {
                return Err(Error::timeout(inner.what.clone(), waited));
            }
        }
    }

    fn unfinished(&self) -> Result<u64> {
        Ok(u64::from(self.unfinished_count()))
    }

    fn describe(&self, f: &mut std::fmt::DebugStruct<'_, '_>) {
        f.field("name", &self.what).field("len", &self.len());
    }
}

impl Drop for ShmQueue {
    fn drop(&mut self) {
        // Items put through this handle are delivered before it goes, as CPython's queue
        // joins its feeder thread when the process ends.
        self.drain_backlog();
    }
}
