//! Framing on a Unix stream socket: a fixed header, the payload, descriptors beside it.
//!
//! | bytes  | field | meaning |
//! |--------|-------|---------|
//! | 0..2   | magic | `b"MP"` |
//! | 2      | version | `1` |
//! | 3      | kind  | [`FrameKind`]: a serialized value or raw bytes |
//! | 4..8   | nfds  | descriptors sent with this frame (`SCM_RIGHTS` on its first byte), ≤ 253 |
//! | 8..16  | len   | payload length in bytes, little-endian, ≤ the reader's limit |
//!
//! A reader reads ahead (up to 64 KiB) so that a small frame costs one system call, and reads a
//! large payload straight into its buffer. It keeps the state of a partly read frame, so a timeout in the middle of a frame loses
//! nothing: the next call carries on. A reader spins briefly on non-blocking reads before it
//! blocks in `poll` (a wake-up through the kernel costs tens of microseconds on small VMs, a
//! spin a few), as long as spinning pays on this machine (see `sync::spin`).

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use crate::platform;
use crate::sync::spin::spin_until_polling;

pub(crate) const HEADER_LEN: usize = 16;
const MAGIC: [u8; 2] = *b"MP";
const VERSION: u8 = 1;

/// A byte between frames that is not part of one: a shared-memory pipe's wake-up call (see
/// `connection::shared`). No frame starts with it (frames start with [`MAGIC`]).
pub(crate) const DOORBELL: u8 = 0;

/// Default bound on one frame's payload (it can be raised per connection).
pub(crate) const DEFAULT_MAX_FRAME: u64 = 4 << 30;

/// Bytes read at once when the next frame's size is unknown or small.
const READ_AHEAD: usize = 64 << 10;

/// What a frame's payload is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FrameKind {
    /// A serialized value.
    Value = 0,
    /// Bytes from `send_bytes`.
    Bytes = 1,
}

/// A complete frame.
pub(crate) struct Frame {
    pub(crate) kind: FrameKind,
    pub(crate) payload: Vec<u8>,
    pub(crate) fds: Vec<OwnedFd>,
}

/// Why a frame could not be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The peer closed cleanly between frames.
    Eof,
    /// The deadline passed; the partial frame is kept.
    Timeout,
    /// The bytes are not a valid frame (or the peer closed mid-frame). The stream is unusable.
    Protocol(String),
    /// The OS failed.
    Io(io::Error),
}

/// Writes one frame. Blocks while the socket buffer is full.
pub(crate) fn write_frame(
    sock: BorrowedFd<'_>,
    kind: FrameKind,
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let header = header(kind, payload.len(), fds.len());
    let total = HEADER_LEN + payload.len();
    let mut sent = 0;
    while sent < total {
        let n = if sent < HEADER_LEN {
            let bufs = [IoSlice::new(&header[sent..]), IoSlice::new(payload)];
            platform::send_with_fds(sock, &bufs, if sent == 0 { fds } else { &[] })?
        } else {
            platform::send_with_fds(sock, &[IoSlice::new(&payload[sent - HEADER_LEN..])], &[])?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        sent += n;
    }
    Ok(())
}

fn header(kind: FrameKind, payload: usize, fds: usize) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[0..2].copy_from_slice(&MAGIC);
    header[2] = VERSION;
    header[3] = kind as u8;
    header[4..8].copy_from_slice(&(fds as u32).to_le_bytes());
    header[8..16].copy_from_slice(&(payload as u64).to_le_bytes());
    header
}

/// A whole frame with no descriptors, as bytes to write later with a plain `write` (from a
/// signal handler, say).
pub(crate) fn frame_bytes(kind: FrameKind, payload: &[u8]) -> Vec<u8> {
    let mut bytes = header(kind, payload.len(), 0).to_vec();
    bytes.extend_from_slice(payload);
    bytes
}

/// The reading side of a framed socket: partial-frame state and the adaptive spin.
pub(crate) struct FrameReader {
    header: [u8; HEADER_LEN],
    header_len: usize,
    ahead: Vec<u8>,
    ahead_pos: usize,
    payload: Vec<u8>,
    want: usize,
    fds: Vec<OwnedFd>,
    max_len: u64,
    /// Reads no byte past the frame it reads, and skips [`DOORBELL`]s before it.
    exact: bool,
}

impl FrameReader {
    pub(crate) fn new(max_len: u64) -> Self {
        FrameReader {
            header: [0; HEADER_LEN],
            header_len: 0,
            ahead: Vec::new(),
            ahead_pos: 0,
            payload: Vec::new(),
            want: 0,
            fds: Vec::new(),
            max_len,
            exact: false,
        }
    }

    /// A reader for a socket that others read too (each holding the same lock while it reads
    /// a frame): it reads ahead nothing, so what follows the frame stays in the socket for
    /// them; [`DOORBELL`] bytes before a frame are skipped.
    pub(crate) fn exact(max_len: u64) -> Self {
        FrameReader {
            exact: true,
            ..FrameReader::new(max_len)
        }
    }

    /// Sets the largest payload accepted from now on.
    pub(crate) fn set_max_len(&mut self, bytes: u64) {
        self.max_len = bytes;
    }

    /// Whether part of a frame has been read.
    pub(crate) fn in_frame(&self) -> bool {
        self.header_len > 0 || self.ahead_pos < self.ahead.len()
    }

    /// Reads one frame, waiting until `deadline` (`None`: forever). `spin` allows a short busy
    /// wait before blocking.
    pub(crate) fn read(
        &mut self,
        sock: BorrowedFd<'_>,
        deadline: Option<Instant>,
        spin: bool,
    ) -> Result<Frame, ReadError> {
        if self.exact {
            return self.read_exact(sock, deadline);
        }
        while self.header_len < HEADER_LEN {
            if self.ahead_pos == self.ahead.len() {
                self.refill(sock, deadline, spin)?;
            }
            let take = (HEADER_LEN - self.header_len).min(self.ahead.len() - self.ahead_pos);
            self.header[self.header_len..self.header_len + take]
                .copy_from_slice(&self.ahead[self.ahead_pos..self.ahead_pos + take]);
            self.header_len += take;
            self.ahead_pos += take;
            if self.header_len == HEADER_LEN {
                self.start_payload()?;
            }
        }
        while self.payload.len() < self.want {
            let remaining = self.want - self.payload.len();
            if self.ahead_pos < self.ahead.len() {
                let take = remaining.min(self.ahead.len() - self.ahead_pos);
                self.payload
                    .extend_from_slice(&self.ahead[self.ahead_pos..self.ahead_pos + take]);
                self.ahead_pos += take;
                continue;
            }
            if remaining < READ_AHEAD {
                self.refill(sock, deadline, spin)?;
                continue;
            }
            // A large remainder goes straight into the payload, never past this frame's end.
            self.read_into_payload(sock, deadline, spin)?;
        }
        self.finish()
    }

    /// [`read`](Self::read) for a reader made with [`exact`](Self::exact): byte by byte up
    /// to the header (skipping doorbells), then exactly the header and the payload.
    fn read_exact(
        &mut self,
        sock: BorrowedFd<'_>,
        deadline: Option<Instant>,
    ) -> Result<Frame, ReadError> {
        while self.header_len < HEADER_LEN {
            let want = if self.header_len == 0 {
                1
            } else {
                HEADER_LEN - self.header_len
            };
            let mut buf = [MaybeUninit::<u8>::uninit(); HEADER_LEN];
            let n = self.recv(sock, &mut buf[..want], deadline, true)?;
            for (to, from) in self.header[self.header_len..].iter_mut().zip(&buf[..n]) {
                // SAFETY: recv initialised the first `n` bytes of `buf`.
                *to = unsafe { from.assume_init() };
            }
            if self.header_len == 0 && self.header[0] == DOORBELL {
                continue;
            }
            self.header_len += n;
            if self.header_len == HEADER_LEN {
                self.start_payload()?;
            }
        }
        while self.payload.len() < self.want {
            self.read_into_payload(sock, deadline, true)?;
        }
        self.finish()
    }

    /// One read of the rest of the payload straight into it.
    fn read_into_payload(
        &mut self,
        sock: BorrowedFd<'_>,
        deadline: Option<Instant>,
        spin: bool,
    ) -> Result<(), ReadError> {
        let have = self.payload.len();
        let remaining = self.want - have;
        if self.payload.capacity() == have {
            // Grow with the data, not with the header's claim: a lying header costs nothing.
            self.payload.reserve(remaining.min(have.max(1 << 20)));
        }
        let room = (self.payload.capacity() - have).min(remaining);
        let mut payload = std::mem::take(&mut self.payload);
        let result = self.recv(
            sock,
            &mut payload.spare_capacity_mut()[..room],
            deadline,
            spin,
        );
        if let Ok(n) = result {
            // SAFETY: recv initialised `n` bytes right after the current length.
            unsafe { payload.set_len(have + n) };
        }
        self.payload = payload;
        result.map(drop)
    }

    /// The frame whose header and payload have been read.
    fn finish(&mut self) -> Result<Frame, ReadError> {
        let nfds = u32::from_le_bytes(self.header[4..8].try_into().expect("4 bytes")) as usize;
        let kind = if self.header[3] == FrameKind::Bytes as u8 {
            FrameKind::Bytes
        } else {
            FrameKind::Value
        };
        self.header_len = 0;
        self.want = 0;
        let payload = std::mem::take(&mut self.payload);
        // Descriptors arrive with (or before) the first byte of their frame, in frame order.
        if self.fds.len() < nfds {
            return Err(ReadError::Protocol(format!(
                "frame announced {nfds} descriptors but carried {}",
                self.fds.len()
            )));
        }
        let fds = self.fds.drain(..nfds).collect();
        Ok(Frame { kind, payload, fds })
    }

    /// Reads whatever is available (at least one byte) into the empty read-ahead buffer.
    fn refill(
        &mut self,
        sock: BorrowedFd<'_>,
        deadline: Option<Instant>,
        spin: bool,
    ) -> Result<(), ReadError> {
        let mut ahead = std::mem::take(&mut self.ahead);
        ahead.clear();
        self.ahead_pos = 0;
        ahead.reserve(READ_AHEAD);
        let result = self.recv(
            sock,
            &mut ahead.spare_capacity_mut()[..READ_AHEAD],
            deadline,
            spin,
        );
        if let Ok(n) = result {
            // SAFETY: recv initialised the first `n` bytes of the spare capacity.
            unsafe { ahead.set_len(n) };
        }
        self.ahead = ahead;
        result.map(drop)
    }

    fn start_payload(&mut self) -> Result<(), ReadError> {
        let h = &self.header;
        if h[0..2] != MAGIC || h[2] != VERSION || h[3] > 1 {
            return Err(ReadError::Protocol(format!(
                "bad frame header {:02x?}",
                &h[..4]
            )));
        }
        let nfds = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes")) as usize;
        if nfds > platform::MAX_FDS_PER_MESSAGE {
            return Err(ReadError::Protocol(format!(
                "frame announces {nfds} descriptors"
            )));
        }
        let len = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
        if len > self.max_len || len > isize::MAX as u64 {
            return Err(ReadError::Protocol(format!(
                "frame of {len} bytes exceeds the limit of {} bytes",
                self.max_len
            )));
        }
        self.want = len as usize;
        self.payload = Vec::with_capacity(self.want.min(16 << 20));
        Ok(())
    }

    /// One read of at least one byte, spinning then blocking until `deadline`.
    fn recv(
        &mut self,
        sock: BorrowedFd<'_>,
        buf: &mut [MaybeUninit<u8>],
        deadline: Option<Instant>,
        spin: bool,
    ) -> Result<usize, ReadError> {
        let mut spinning = spin;
        loop {
            let got = match platform::recv_with_fds(sock, buf, &mut self.fds, true) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && spinning => {
                    // Look again for a while, as long as spinning pays (see `sync::spin`).
                    spinning = false;
                    let mut got = None;
                    let fds = &mut self.fds;
                    spin_until_polling(|| match platform::recv_with_fds(sock, buf, fds, true) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
                        other => {
                            got = Some(other);
                            true
                        }
                    });
                    match got {
                        Some(got) => got,
                        None => continue,
                    }
                }
                other => other,
            };
            match got {
                Ok(n) => {
                    return match n {
                        0 if !self.in_frame() => Err(ReadError::Eof),
                        0 => Err(ReadError::Protocol(
                            "connection closed in the middle of a frame".into(),
                        )),
                        n => Ok(n),
                    };
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(ReadError::Io(e)),
            }
            let timeout = match deadline {
                None => None,
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Err(ReadError::Timeout);
                    }
                    Some(d - now)
                }
            };
            let ready = platform::poll_readable(&[sock.as_fd()], timeout).map_err(ReadError::Io)?;
            if !ready[0] {
                return Err(ReadError::Timeout);
            }
        }
    }
}
