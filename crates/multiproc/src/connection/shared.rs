//! The pipe under [`Connection`](super::Connection): two rings in shared memory and a socket
//! pair.
//!
//! A pipe is one memory file holding two rings, one per direction (the queue's ring, see
//! `sync/ring.rs`), and a connected pair of Unix stream sockets, one per end. Messages go
//! through the rings: a send copies the message in and a receive copies it out, with no
//! system call while the receiver is awake. The sockets do what memory cannot:
//!
//! - **End of file.** The kernel closes an end's socket when its last copy goes (dropped, or
//!   its process died): the other end's socket hangs up. A receiver that finds its ring empty
//!   and the socket hung up has read everything; a sender looks whether the socket hung up
//!   before its first send, then at most every [`PEER_CHECK`], and while it waits for room.
//! - **Wake-ups.** A receiver that finds its ring empty spins a little (while spinning pays,
//!   see `sync::spin`), then counts itself asleep in the ring's consumer count and, after a
//!   `SeqCst` fence and one more look, sleeps in `poll` on its socket. A sender that publishes a
//!   frame, fences, and sees a sleeper counted sends one [`DOORBELL`] byte. Either the sender
//!   sees the sleeper or the sleeper sees the frame: no wake-up is lost.
//! - **Side messages.** A message that carries descriptors, or is larger than a quarter of a
//!   ring, goes as a frame on the socket (`frame.rs`), after a marker in the ring that keeps
//!   its place in line. The receiver that takes the marker reads the frame whole, still
//!   holding the ring's consumer lock.
//!
//! What is on a socket, and who reads it: doorbells and side frames, both read only under
//! the ring's consumer lock. A side frame is written after its marker is published, so while
//! a receiver holds the lock and sees the ring empty, the socket holds nothing but doorbells
//! (anything else is garbage from someone who is not a pipe end). A woken receiver reads at
//! most one doorbell; each doorbell stands for one frame published while someone slept, so a
//! doorbell one receiver reads was never the last one another sleeper needs. Doorbells no
//! receiver read (it found the frame without sleeping) cost the next sleeper one extra look.
//!
//! The consumer count is not undone when a receiver dies asleep; senders then ring a doorbell
//! on every send (a system call each) for as long as the pipe lives.

use std::io::ErrorKind as IoErrorKind;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::frame::{self, DOORBELL, Frame, FrameKind, FrameReader, ReadError};
use crate::error::{Error, Result};
use crate::platform;
use crate::share::{self, FdIn, FdOut};
use crate::shm::{Layout, Shared};
use crate::sync::ring::{Consumer, Ring, RingLayout, frame_len};
use crate::sync::shim::{AtomicU32, Ordering, fence};
use crate::sync::spin::spin_until_polling as spin_until;

const WHAT: &str = "connection";

/// Bytes of each direction's ring.
const RING_BYTES: u32 = 64 << 10;

/// A ring frame's kind: bit 0 is the message's [`FrameKind`]; [`ON_SOCKET`] marks a marker
/// whose message follows on the socket.
const ON_SOCKET: u32 = 2;

/// How often a sender looks whether the receiving end is gone, at most.
const PEER_CHECK: Duration = Duration::from_millis(1);

/// How long a sender waiting for room sleeps before it looks whether the receiver is gone.
const ROOM_CHECK: Duration = Duration::from_millis(20);

/// # Layout
///
/// | field      | meaning                                                            |
/// |------------|--------------------------------------------------------------------|
/// | `magic`    | `b"PIP1"`                                                          |
/// | `capacity` | bytes of each ring, a power of two; written before sharing         |
/// | `rings`    | the ring to end 0 and the ring to end 1 (each with its own locks)   |
/// | then       | `capacity` bytes of ring 0's frames, then ring 1's                 |
#[repr(C)]
#[derive(Default)]
pub(crate) struct PipeLayout {
    magic: AtomicU32,
    capacity: AtomicU32,
    rings: [RingLayout; 2],
}

// SAFETY: repr(C) of atomics (the rings are too), magic first, valid all-zero, accessed only
// through `&`.
unsafe impl Layout for PipeLayout {
    const MAGIC: u32 = u32::from_le_bytes(*b"PIP1");
    const WHAT: &'static str = "pipe";
}

/// One end of a pipe.
pub(super) struct PipeEnd {
    sock: OwnedFd,
    shared: Shared<PipeLayout>,
    /// Which end: frames to it arrive in ring `end`, and it sends into the other.
    end: usize,
    /// Reads side frames; locked only under the inbound ring's consumer lock.
    reader: Mutex<FrameReader>,
    /// The largest message received.
    max_len: AtomicU64,
    /// When this handle last looked whether the other end is gone, in nanoseconds after
    /// [`epoch`] (0: never).
    peer_checked: AtomicU64,
}

/// A message's bytes: in the thread's scratch buffer (a message from the ring) or its own.
pub(super) enum Body<'a> {
    Borrowed(&'a [u8]),
    Owned(Vec<u8>),
}

impl Body<'_> {
    pub(super) fn as_slice(&self) -> &[u8] {
        match self {
            Body::Borrowed(b) => b,
            Body::Owned(v) => v,
        }
    }

    pub(super) fn into_vec(self) -> Vec<u8> {
        match self {
            Body::Borrowed(b) => b.to_vec(),
            Body::Owned(v) => v,
        }
    }
}

/// Why a receiver stopped waiting without a frame.
enum WaitEnd {
    /// The other end is gone and every message was read.
    Eof,
    Timeout,
    Failed(Error),
}

impl From<Error> for WaitEnd {
    fn from(e: Error) -> WaitEnd {
        WaitEnd::Failed(e)
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn io_error(what: &str, e: std::io::Error) -> Error {
    Error::io(format!("{WHAT}: {what}"), e)
}

/// The error of a send on a socket whose other end may be gone.
pub(super) fn send_error(e: std::io::Error) -> Error {
    match e.kind() {
        IoErrorKind::BrokenPipe | IoErrorKind::ConnectionReset => {
            Error::Closed { what: WHAT.into() }
        }
        _ => io_error("send", e),
    }
}

fn closed() -> Error {
    Error::Closed { what: WHAT.into() }
}

impl PipeEnd {
    /// A new pipe: its two ends.
    pub(super) fn pair() -> Result<(PipeEnd, PipeEnd)> {
        let shared = Shared::create(2 * RING_BYTES as usize, |l: &PipeLayout, _| {
            l.capacity.store(RING_BYTES, Ordering::Relaxed);
            for ring in &l.rings {
                ring.capacity.store(RING_BYTES, Ordering::Relaxed);
            }
        })?;
        let (a, b) = platform::socketpair().map_err(|e| io_error("socketpair", e))?;
        Ok((
            PipeEnd::from_parts(a, shared.clone(), 0),
            PipeEnd::from_parts(b, shared, 1),
        ))
    }

    fn from_parts(sock: OwnedFd, shared: Shared<PipeLayout>, end: usize) -> PipeEnd {
        PipeEnd {
            sock,
            shared,
            end,
            reader: Mutex::new(FrameReader::exact(frame::DEFAULT_MAX_FRAME)),
            max_len: AtomicU64::new(frame::DEFAULT_MAX_FRAME),
            peer_checked: AtomicU64::new(0),
        }
    }

    /// A second handle on the same end.
    pub(super) fn try_clone(&self) -> Result<PipeEnd> {
        let sock = self.sock.try_clone().map_err(|e| io_error("dup", e))?;
        let end = PipeEnd::from_parts(sock, self.shared.clone(), self.end);
        end.set_max_len(self.max_len.load(Ordering::Relaxed));
        Ok(end)
    }

    pub(super) fn socket(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    pub(super) fn set_max_len(&self, bytes: u64) {
        self.max_len.store(bytes, Ordering::Relaxed);
    }

    fn ring(&self, index: usize) -> Ring<'_> {
        let layout = self.shared.layout();
        let capacity = layout.capacity.load(Ordering::Relaxed) as usize;
        // SAFETY: the segment's extra bytes are the two rings' data, `capacity` each (checked
        // when the segment was received; `capacity` is a power of two ≥ 64), ring 0's first;
        // `index` is 0 or 1.
        unsafe {
            Ring::new(
                &layout.rings[index],
                self.shared.extra_ptr().add(index * capacity),
            )
        }
    }

    fn inbound(&self) -> Ring<'_> {
        self.ring(self.end)
    }

    fn outbound(&self) -> Ring<'_> {
        self.ring(1 - self.end)
    }

    /// Whether the other end is gone, looked at no more often than every [`PEER_CHECK`]
    /// (a look is a system call).
    fn peer_gone_lately(&self) -> Result<bool> {
        let now = epoch().elapsed().as_nanos() as u64 + 1;
        let last = self.peer_checked.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < PEER_CHECK.as_nanos() as u64 {
            return Ok(false);
        }
        self.peer_checked.store(now, Ordering::Relaxed);
        platform::hung_up(self.sock.as_fd()).map_err(|e| io_error("poll", e))
    }

    /// Sends one message: through the ring, or beside it on the socket if it carries
    /// descriptors or is large.
    pub(super) fn send(&self, kind: FrameKind, payload: &[u8], fds: &[OwnedFd]) -> Result<()> {
        if self.peer_gone_lately()? {
            return Err(closed());
        }
        let ring = self.outbound();
        let frame = Self::frame_for(&ring, payload, fds);
        let mut producer = ring
            .producer(None)
            .ok_or_else(|| Error::timeout(WHAT, Duration::MAX))?;
        // The receiver may be slow, or gone: look which, now and then.
        while producer
            .wait_room_until(frame, || Instant::now().checked_add(ROOM_CHECK), true)
            .is_err()
        {
            if platform::hung_up(self.sock.as_fd()).map_err(|e| io_error("poll", e))? {
                return Err(closed());
            }
        }
        self.publish(producer, kind, payload, fds)
    }

    /// Sends one message, holding the producer lock with room made for it (`send`'s second
    /// half).
    fn publish(
        &self,
        mut producer: crate::sync::ring::Producer<'_, '_>,
        kind: FrameKind,
        payload: &[u8],
        fds: &[OwnedFd],
    ) -> Result<()> {
        let on_socket = Self::on_socket(&self.outbound(), payload, fds);
        let inline: &[u8] = if on_socket { &[] } else { payload };
        let ring_kind = kind as u32 | if on_socket { ON_SOCKET } else { 0 };
        let asleep = producer.publish_unwoken(ring_kind, inline);
        if on_socket {
            // After its marker: whoever takes the marker reads this whole. Its bytes wake a
            // sleeping receiver as a doorbell would.
            let fds: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
            return frame::write_frame(self.sock.as_fd(), kind, payload, &fds).map_err(send_error);
        }
        if asleep {
            self.sock.as_fd().ring().map_err(send_error)?;
        }
        Ok(())
    }

    /// Whether a message goes on the socket (it carries descriptors or is large), its marker
    /// in the ring.
    fn on_socket(ring: &Ring<'_>, payload: &[u8], fds: &[OwnedFd]) -> bool {
        !fds.is_empty() || payload.len() > ring.capacity() as usize / 4
    }

    /// The ring bytes a message takes.
    fn frame_for(ring: &Ring<'_>, payload: &[u8], fds: &[OwnedFd]) -> u32 {
        let inline = if Self::on_socket(ring, payload, fds) {
            0
        } else {
            payload.len()
        };
        frame_len(inline).expect("inline messages are small")
    }

    /// Receives one message and hands it to `decode` (outside the ring's lock).
    pub(super) fn recv<R>(
        &self,
        deadline: Option<Instant>,
        decode: impl FnOnce(FrameKind, Body<'_>, Vec<OwnedFd>) -> Result<R>,
    ) -> Result<R> {
        let started = Instant::now();
        let ring = self.inbound();
        let consumer =
            wait_frame(&ring, &self.sock.as_fd(), deadline).map_err(|end| match end {
                WaitEnd::Eof => closed(),
                WaitEnd::Timeout => Error::timeout(
                    WHAT,
                    deadline.map_or(Duration::ZERO, |d| d.saturating_duration_since(started)),
                ),
                WaitEnd::Failed(e) => e,
            })?;
        self.take(consumer, decode)
    }

    /// Takes the message `consumer` (holding the consumer lock) found, and hands it to
    /// `decode` (outside the ring's lock).
    fn take<R>(
        &self,
        mut consumer: Consumer<'_, '_>,
        decode: impl FnOnce(FrameKind, Body<'_>, Vec<OwnedFd>) -> Result<R>,
    ) -> Result<R> {
        let max_len = self.max_len.load(Ordering::Relaxed);
        // A message in the ring is handed to `decode` where it lies (a copy saved), holding
        // the consumer lock for as long as that takes.
        let mut decode = Some(decode);
        let taken = share::with_scratch(|spare| {
            consumer.take_with(spare, |ring_kind, bytes| {
                let kind = match ring_kind & !ON_SOCKET {
                    0 => FrameKind::Value,
                    1 => FrameKind::Bytes,
                    other => {
                        return Err(Error::protocol(WHAT, format!("unknown frame kind {other}")));
                    }
                };
                if ring_kind & ON_SOCKET != 0 {
                    return Ok((kind, None));
                }
                if bytes.len() as u64 > max_len {
                    return Err(too_long(bytes.len() as u64, max_len));
                }
                match decode.take() {
                    Some(decode) => {
                        Ok((kind, Some(decode(kind, Body::Borrowed(bytes), Vec::new()))))
                    }
                    None => Err(Error::protocol(WHAT, "message taken twice")),
                }
            })
        })
        .map_err(|e| Error::protocol(WHAT, format!("corrupt pipe: {}", e.0)))??;
        match (taken, decode) {
            ((_, Some(item)), _) => item,
            ((kind, None), Some(decode)) => {
                let frame = self.read_side_frame(max_len)?;
                drop(consumer);
                if frame.kind != kind {
                    return Err(Error::protocol(
                        WHAT,
                        "side message of another kind than its marker",
                    ));
                }
                decode(kind, Body::Owned(frame.payload), frame.fds)
            }
            ((_, None), None) => Err(Error::protocol(WHAT, "message taken twice")),
        }
    }

    /// Reads the side frame whose marker the caller took (holding the consumer lock).
    fn read_side_frame(&self, max_len: u64) -> Result<Frame> {
        let mut reader = crate::sync::lock(&self.reader);
        reader.set_max_len(max_len);
        // No deadline: the frame is on its way, and half of it read could not be put back.
        reader
            .read(self.sock.as_fd(), None, false)
            .map_err(|e| match e {
                ReadError::Eof => {
                    Error::protocol(WHAT, "the sender went away in the middle of a message")
                }
                ReadError::Timeout => Error::timeout(WHAT, Duration::MAX),
                ReadError::Protocol(detail) => Error::protocol(WHAT, detail),
                ReadError::Io(e) => io_error("recv", e),
            })
    }

    /// Whether a message (or the end of the stream) can be read, waiting until `deadline`.
    pub(super) fn poll(&self, deadline: Option<Instant>) -> Result<bool> {
        let ring = self.inbound();
        match wait_frame(&ring, &self.sock.as_fd(), deadline) {
            Ok(_) | Err(WaitEnd::Eof) => Ok(true),
            Err(WaitEnd::Timeout) => Ok(false),
            Err(WaitEnd::Failed(e)) => Err(e),
        }
    }
}

/// What the pipe's wait protocol needs of an end's socket; a model stands in for it in the
/// loom tests.
pub(crate) trait Bell {
    /// Sends one doorbell, unless the socket is full (of doorbells not yet read: the
    /// sleeper wakes anyway).
    fn ring(&self) -> std::io::Result<()>;
    /// Sleeps until something can be read (or the other end is gone), at most `timeout`;
    /// false if it timed out.
    fn sleep(&self, timeout: Option<Duration>) -> std::io::Result<bool>;
    /// The next byte without waiting (`Ok(None)`: the other end is gone; `WouldBlock`:
    /// nothing there); with `peek` it stays.
    fn next_byte(&self, peek: bool) -> std::io::Result<Option<u8>>;
}

impl Bell for BorrowedFd<'_> {
    fn ring(&self) -> std::io::Result<()> {
        match platform::send_nonblocking(*self, &[DOORBELL]) {
            Err(e) if e.kind() == IoErrorKind::WouldBlock => Ok(()),
            other => other.map(drop),
        }
    }

    fn sleep(&self, timeout: Option<Duration>) -> std::io::Result<bool> {
        platform::poll_readable(&[*self], timeout).map(|ready| ready[0])
    }

    fn next_byte(&self, peek: bool) -> std::io::Result<Option<u8>> {
        platform::recv_byte(*self, peek)
    }
}

/// Waits until `ring` (an end's inbound ring) holds a frame and returns holding its consumer
/// lock; `bell` is the end's socket. See the module's notes for the protocol.
fn wait_frame<'r, 'a>(
    ring: &'r Ring<'a>,
    bell: &impl Bell,
    deadline: Option<Instant>,
) -> std::result::Result<Consumer<'r, 'a>, WaitEnd> {
    let may_wait = || deadline.is_none_or(|d| Instant::now() < d);
    let mut spin = may_wait();
    loop {
        if !ring.is_empty() {
            let mut consumer = ring.consumer(deadline).ok_or(WaitEnd::Timeout)?;
            if consumer.wait_frame(None, false).is_ok() {
                return Ok(consumer);
            }
            continue; // another receiver took it
        }
        if spin {
            spin = false;
            if spin_until(|| !ring.is_empty()) {
                continue;
            }
        }
        let sleepers = ring.consumer_sleepers();
        sleepers.fetch_add(1, Ordering::Relaxed);
        // Pairs with the fence in `Producer::publish_unwoken`.
        fence(Ordering::SeqCst);
        let woken = if ring.is_empty() {
            Some(bell.sleep(deadline.map(|d| d.saturating_duration_since(Instant::now()))))
        } else {
            None
        };
        sleepers.fetch_sub(1, Ordering::Relaxed);
        match woken {
            None => continue,
            Some(Err(e)) => return Err(io_error("poll", e).into()),
            Some(Ok(false)) => {
                if ring.is_empty() {
                    return Err(WaitEnd::Timeout);
                }
            }
            Some(Ok(true)) => {
                let consumer = ring.consumer(deadline).ok_or(WaitEnd::Timeout)?;
                take_doorbell(ring, bell)?;
                drop(consumer);
                if !may_wait() && ring.is_empty() {
                    return Err(WaitEnd::Timeout);
                }
            }
        }
    }
}

/// After a wake-up, holding the consumer lock: reads one doorbell if one is next on the
/// socket. `Eof` if the other end is gone and the ring is empty.
fn take_doorbell(ring: &Ring<'_>, bell: &impl Bell) -> std::result::Result<(), WaitEnd> {
    match bell.next_byte(true) {
        Ok(Some(DOORBELL)) => match bell.next_byte(false) {
            Ok(_) => Ok(()),
            Err(e) => Err(io_error("recv", e).into()),
        },
        // Read after the peek, the ring tells: a frame's marker is published before the
        // frame is written, so a frame on the socket with an empty ring is not ours.
        Ok(Some(_)) if ring.is_empty() => {
            Err(Error::protocol(WHAT, "bytes on the pipe's socket that no pipe end wrote").into())
        }
        Ok(Some(_)) => Ok(()),
        Ok(None) if ring.is_empty() => Err(WaitEnd::Eof),
        Ok(None) => Ok(()),
        Err(e) if e.kind() == IoErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(io_error("recv", e).into()),
    }
}

fn too_long(len: u64, max: u64) -> Error {
    Error::protocol(
        WHAT,
        format!("message of {len} bytes exceeds the limit of {max} bytes"),
    )
}

impl Serialize for PipeEnd {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        (FdOut(self.sock.as_fd()), &self.shared, self.end as u8).serialize(s)
    }
}

impl<'de> Deserialize<'de> for PipeEnd {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let (FdIn(sock), shared, end) = <(FdIn, Shared<PipeLayout>, u8)>::deserialize(d)?;
        let capacity = shared.layout().capacity.load(Ordering::Relaxed) as usize;
        let fits = capacity.is_power_of_two()
            && capacity >= 64
            && capacity
                .checked_mul(2)
                .is_some_and(|n| n <= shared.extra_len());
        let rings_agree = shared
            .layout()
            .rings
            .iter()
            .all(|r| r.capacity.load(Ordering::Relaxed) as usize == capacity);
        if !fits || !rings_agree || end > 1 {
            return Err(share::handle_error_de(format!(
                "{WHAT}: pipe end {end} with rings of {capacity} bytes in a segment of {}",
                shared.extra_len()
            )));
        }
        Ok(PipeEnd::from_parts(sock, shared, usize::from(end)))
    }
}

/// Model checks of the wait protocol (run with
/// `RUSTFLAGS="--cfg loom" cargo test -p multiproc --lib --release loom`): the ring is the real
/// one, the socket a model with the same rules (bytes in order, readable when one waits or
/// the other end is gone).
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::sync::ring::HeapRing;
    use crate::sync::shim::bounded_model;
    use loom::sync::{Arc, Condvar, Mutex as LoomMutex};
    use std::collections::VecDeque;

    #[derive(Default)]
    struct ModelSocket {
        bytes: LoomMutex<(VecDeque<u8>, bool)>,
        readable: Condvar,
    }

    impl ModelSocket {
        fn hang_up(&self) {
            self.bytes.lock().unwrap().1 = true;
            self.readable.notify_all();
        }
    }

    impl Bell for ModelSocket {
        fn ring(&self) -> std::io::Result<()> {
            self.bytes.lock().unwrap().0.push_back(DOORBELL);
            self.readable.notify_all();
            Ok(())
        }

        fn sleep(&self, _timeout: Option<Duration>) -> std::io::Result<bool> {
            let mut state = self.bytes.lock().unwrap();
            while state.0.is_empty() && !state.1 {
                state = self.readable.wait(state).unwrap();
            }
            Ok(true)
        }

        fn next_byte(&self, peek: bool) -> std::io::Result<Option<u8>> {
            let mut state = self.bytes.lock().unwrap();
            match state.0.front().copied() {
                Some(b) => {
                    if !peek {
                        state.0.pop_front();
                    }
                    Ok(Some(b))
                }
                None if state.1 => Ok(None),
                None => Err(IoErrorKind::WouldBlock.into()),
            }
        }
    }

    fn send(ring: &Ring<'_>, bell: &ModelSocket, n: u8) {
        let mut producer = ring.producer(None).unwrap();
        producer
            .wait_room_until(frame_len(1).unwrap(), || None, true)
            .unwrap();
        if producer.publish_unwoken(0, &[n]) {
            bell.ring().unwrap();
        }
    }

    fn recv(ring: &Ring<'_>, bell: &ModelSocket) -> Option<u8> {
        match wait_frame(ring, bell, None) {
            Ok(mut consumer) => {
                let mut out = Vec::new();
                consumer.take(&mut out).unwrap();
                Some(out[0])
            }
            Err(WaitEnd::Eof) => None,
            Err(_) => panic!("no deadline, no other failure"),
        }
    }

    /// Two receivers sleep (or not) while two frames are published: each gets one, nobody
    /// sleeps for ever (loom reports a deadlock otherwise).
    #[test]
    fn loom_pipe_two_receivers_are_both_woken() {
        bounded_model(|| {
            let heap = Arc::new(HeapRing::new(64, 0));
            let bell = Arc::new(ModelSocket::default());
            let receivers: Vec<_> = (0..2)
                .map(|_| {
                    let (heap, bell) = (heap.clone(), bell.clone());
                    loom::thread::spawn(move || recv(&heap.ring(), &bell))
                })
                .collect();
            let ring = heap.ring();
            send(&ring, &bell, 1);
            send(&ring, &bell, 2);
            let mut got: Vec<_> = receivers.into_iter().map(|t| t.join().unwrap()).collect();
            got.sort();
            assert_eq!(got, [Some(1), Some(2)]);
        });
    }

    /// A receiver gets what was sent before the other end went, then the end of file.
    #[test]
    fn loom_pipe_end_of_file_after_the_last_frame() {
        bounded_model(|| {
            let heap = Arc::new(HeapRing::new(64, 0));
            let bell = Arc::new(ModelSocket::default());
            let sender = {
                let (heap, bell) = (heap.clone(), bell.clone());
                loom::thread::spawn(move || {
                    send(&heap.ring(), &bell, 7);
                    bell.hang_up();
                })
            };
            let ring = heap.ring();
            assert_eq!(recv(&ring, &bell), Some(7));
            assert_eq!(recv(&ring, &bell), None);
            sender.join().unwrap();
        });
    }
}

/// The awaitable waits of a pipe end (feature `async`): attempts that receive or send without
/// waiting, and otherwise say what to wait on (see `crate::aio`). The protocol is the blocking
/// one's: a receiver with an empty ring counts itself asleep and waits for its socket to
/// become readable (in the process's epoll thread instead of `poll`), then reads one doorbell
/// under the consumer lock. A doorbell is read only in the same hold of the lock as the frame
/// it may stand for, so a cancelled receive never swallows another sleeper's wake-up.
#[cfg(all(feature = "async", not(loom)))]
mod awaiting {
    use std::os::fd::AsFd;
    use std::time::Instant;

    use super::{
        Body, FrameKind, PipeEnd, ROOM_CHECK, WaitEnd, closed, io_error, send_error, take_doorbell,
    };
    use crate::aio::{Attempt, Park, Sleeper, Word};
    use crate::error::Result;
    use crate::platform;
    use crate::sync::raw_lock::{LIVENESS_SLICE, RawLock};
    use crate::sync::spin::spin_until_polling;

    /// Waits for a side's lock, held by another thread for a moment.
    fn wait_for_lock(lock: &RawLock) -> Option<Park<'_>> {
        let expected = lock.mark_waited_for()?;
        let mut park = Park::one(Word::U32(lock.word()), expected, None);
        park.recheck = Some(Instant::now() + LIVENESS_SLICE);
        Some(park)
    }

    impl PipeEnd {
        /// One try at receiving. `as_waiter`: the last try waited for the consumer lock;
        /// `spun`: a try already spun; `decode` is taken when a message is.
        pub(in crate::connection) fn recv_attempt<R, D>(
            &self,
            as_waiter: &mut bool,
            spun: &mut bool,
            decode: &mut Option<D>,
        ) -> Attempt<'_, Result<R>>
        where
            D: FnOnce(FrameKind, Body<'_>, Vec<std::os::fd::OwnedFd>) -> Result<R>,
        {
            let ring = self.inbound();
            let (_, sleepers, lock) = ring.consumer_waits();
            let sock = self.sock.as_fd();
            loop {
                let socket_readable = || {
                    platform::poll_readable(&[sock], Some(std::time::Duration::ZERO)).map(|r| r[0])
                };
                let readable = if ring.is_empty() {
                    match socket_readable() {
                        Ok(r) => r,
                        Err(e) => return Attempt::Done(Err(io_error("poll", e))),
                    }
                } else {
                    false
                };
                if !ring.is_empty() || readable {
                    let Some(mut consumer) = ring.try_consumer(std::mem::take(as_waiter)) else {
                        if let Some(park) = wait_for_lock(lock) {
                            *as_waiter = true;
                            return Attempt::Wait(park);
                        }
                        continue;
                    };
                    if readable {
                        // A doorbell (maybe left by a receiver that did not sleep), the end
                        // of the stream, or a frame's bytes after its marker.
                        match take_doorbell(&ring, &sock) {
                            Ok(()) => {}
                            Err(WaitEnd::Eof) => return Attempt::Done(Err(closed())),
                            Err(WaitEnd::Failed(e)) => return Attempt::Done(Err(e)),
                            Err(WaitEnd::Timeout) => {}
                        }
                    }
                    if consumer.wait_frame(None, false).is_ok() {
                        let decode = decode.take().expect("a message is taken once");
                        return Attempt::Done(self.take(consumer, decode));
                    }
                    continue;
                }
                if !*spun {
                    *spun = true;
                    if spin_until_polling(|| !ring.is_empty()) {
                        continue;
                    }
                }
                let sleeper = Sleeper::count(sleepers);
                if !ring.is_empty() {
                    continue;
                }
                return match sock.try_clone_to_owned() {
                    Ok(fd) => Attempt::WaitReadable(fd, Some(sleeper)),
                    Err(e) => Attempt::Done(Err(io_error("dup", e))),
                };
            }
        }

        /// One try at sending `payload` (with `fds`): as [`recv_attempt`](Self::recv_attempt),
        /// for room in the ring. A message that goes on the socket is written there whole.
        pub(in crate::connection) fn send_attempt(
            &self,
            kind: FrameKind,
            payload: &[u8],
            fds: &[std::os::fd::OwnedFd],
            as_waiter: &mut bool,
            spun: &mut bool,
        ) -> Attempt<'_, Result<()>> {
            match self.peer_gone_lately() {
                Ok(true) => return Attempt::Done(Err(closed())),
                Ok(false) => {}
                Err(e) => return Attempt::Done(Err(e)),
            }
            let ring = self.outbound();
            let (head, sleepers, lock) = ring.producer_waits();
            let head = Word::Low(head);
            let frame = Self::frame_for(&ring, payload, fds);
            loop {
                let Some(mut producer) = ring.try_producer(std::mem::take(as_waiter)) else {
                    if let Some(park) = wait_for_lock(lock) {
                        *as_waiter = true;
                        return Attempt::Wait(park);
                    }
                    continue;
                };
                if producer.wait_room_until(frame, || None, false).is_ok() {
                    return Attempt::Done(self.publish(producer, kind, payload, fds));
                }
                drop(producer);
                match platform::hung_up(self.sock.as_fd()) {
                    Ok(true) => return Attempt::Done(Err(closed())),
                    Ok(false) => {}
                    Err(e) => return Attempt::Done(Err(send_error(e))),
                }
                if !*spun {
                    *spun = true;
                    if spin_until_polling(|| !ring.is_full(frame)) {
                        continue;
                    }
                }
                let sleeper = Sleeper::count(sleepers);
                let seen = head.load();
                if !ring.is_full(frame) {
                    continue;
                }
                let mut park = Park::one(head, seen, Some(sleeper));
                // The receiving end may go away meanwhile: look now and then.
                park.recheck = Some(Instant::now() + ROOM_CHECK);
                park.keep = Some(self.shared.keep_alive());
                return Attempt::Wait(park);
            }
        }
    }
}
