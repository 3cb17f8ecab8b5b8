//! CPython's `multiprocessing.connection` on the wire: 4-byte big-endian frames (with the
//! 8-byte escape) over TCP or Unix sockets, and the mutual HMAC challenge handshake, as CPython
//! 3.8–3.13 speak them. See `docs/cpython-manager-protocol.md` §1–2.

use std::fmt;
use std::io::{self, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};

use crate::error::{Error, Result};
use crate::platform;
use crate::sync::spin::spin_until_polling;

const CHALLENGE: &[u8] = b"#CHALLENGE#";
const WELCOME: &[u8] = b"#WELCOME#";
const FAILURE: &[u8] = b"#FAILURE#";
/// CPython reads every handshake message with `recv_bytes(256)`.
const HANDSHAKE_MAX: usize = 256;
/// Random bytes in the challenges we send (what CPython 3.12+ sends).
const CHALLENGE_RANDOM: usize = 40;
/// How long a peer may take over each handshake step before it is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest message accepted after the handshake unless set otherwise.
pub(crate) const DEFAULT_MAX_MESSAGE: usize = 64 << 20;
/// Header and payload go out in one write up to this size.
const ONE_WRITE: usize = 64 << 10;
/// Bytes a connection reads at once when it can (a larger payload is read straight into its
/// buffer).
const READ_AHEAD: usize = 16 << 10;

/// Where a listener listens or a client connects: TCP or a Unix socket path.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Address {
    /// A TCP address (`127.0.0.1:5000`).
    Tcp(SocketAddr),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl Address {
    /// A TCP address from anything `ToSocketAddrs` resolves (the first result).
    ///
    /// # Errors
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) if it does not resolve.
    pub fn tcp(addr: impl ToSocketAddrs) -> Result<Address> {
        addr.to_socket_addrs()
            .map_err(|e| Error::io("address", e))?
            .next()
            .map(Address::Tcp)
            .ok_or_else(|| Error::invalid("address", "resolves to nothing"))
    }

    /// A Unix socket path.
    pub fn unix(path: impl Into<PathBuf>) -> Address {
        Address::Unix(path.into())
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(a) => write!(f, "{a}"),
            Address::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
        }
    }

    /// Before reading a CPython peer's second small write in a row (see `set_quick_ack`).
    fn quick_ack(&self) {
        if let Stream::Tcp(s) = self {
            let _ = platform::set_quick_ack(s.as_fd());
        }
    }
}

impl Read for Stream {
    /// Reads without blocking first, spinning a little while spinning pays (a peer on another
    /// core usually answers within microseconds, a wake-up costs tens; see `sync::spin`),
    /// then blocks.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let fd = match &*self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        };
        let mut got = None;
        let mut attempt = || loop {
            match platform::recv_nonblocking(fd, buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                other => {
                    got = Some(other);
                    return true;
                }
            }
        };
        if attempt() || spin_until_polling(&mut attempt) {
            return got.unwrap_or(Ok(0));
        }
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An authenticated connection speaking CPython's framing: byte messages in both directions
/// (CPython's `Connection.send_bytes`/`recv_bytes`).
pub struct WireConnection {
    /// Reads ahead, so that a small message (header and payload) costs one system call.
    stream: BufReader<Stream>,
    what: String,
    max_message: usize,
    /// A read timed out (the error it gave says "stalled").
    stalled: bool,
}

impl fmt::Debug for WireConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WireConnection")
            .field("peer", &self.what)
            .finish()
    }
}

impl WireConnection {
    fn new(stream: Stream, what: String) -> Self {
        WireConnection {
            stream: BufReader::with_capacity(READ_AHEAD, stream),
            what,
            max_message: DEFAULT_MAX_MESSAGE,
            stalled: false,
        }
    }

    /// Sets the largest message accepted (default 64 MiB); a longer one fails the receive
    /// with [`ErrorKind::Protocol`](crate::ErrorKind::Protocol) and the connection should
    /// be dropped.
    pub fn set_max_message_size(&mut self, bytes: usize) {
        self.max_message = bytes;
    }

    /// Whether a message (or the end of the stream) can be read now without waiting: bytes
    /// already read ahead, or a readable socket.
    #[cfg(all(feature = "async", not(loom)))]
    pub(crate) fn readable_now(&self) -> std::io::Result<bool> {
        if !self.stream.buffer().is_empty() {
            return Ok(true);
        }
        crate::platform::poll_readable(&[self.fd()], Some(Duration::ZERO)).map(|r| r[0])
    }

    /// The socket, for a reactor to watch.
    #[cfg(all(feature = "async", not(loom)))]
    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        match self.stream.get_ref() {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }

    /// Sends one message.
    ///
    /// # Errors
    /// [`ErrorKind::Closed`](crate::ErrorKind::Closed) if the peer is gone.
    pub fn send_bytes(&mut self, payload: &[u8]) -> Result<()> {
        let mut header = Vec::with_capacity(12);
        match i32::try_from(payload.len()) {
            Ok(n) => header.extend_from_slice(&n.to_be_bytes()),
            Err(_) => {
                header.extend_from_slice(&(-1i32).to_be_bytes());
                header.extend_from_slice(&(payload.len() as u64).to_be_bytes());
            }
        }
        let result = if payload.len() <= ONE_WRITE {
            header.extend_from_slice(payload);
            self.stream.get_mut().write_all(&header)
        } else {
            let stream = self.stream.get_mut();
            stream
                .write_all(&header)
                .and_then(|()| stream.write_all(payload))
        };
        result.map_err(|e| self.io_error("send", e))
    }

    /// Receives one message.
    ///
    /// # Errors
    /// [`ErrorKind::Closed`](crate::ErrorKind::Closed) at end of stream before a message;
    /// [`ErrorKind::Protocol`](crate::ErrorKind::Protocol) for a malformed or oversized frame
    /// or end of stream inside one.
    pub fn recv_bytes(&mut self) -> Result<Vec<u8>> {
        self.recv_bounded(self.max_message)
    }

    fn recv_bounded(&mut self, max: usize) -> Result<Vec<u8>> {
        let mut head = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match self.stream.read(&mut head[got..]) {
                Ok(0) if got == 0 => {
                    return Err(Error::Closed {
                        what: self.what.clone(),
                    });
                }
                Ok(0) => return Err(self.protocol("end of stream inside a frame header")),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_error("receive", e)),
            }
        }
        let len = match i32::from_be_bytes(head) {
            -1 => {
                let mut long = [0u8; 8];
                self.read_exact_frame(&mut long)?;
                u64::from_be_bytes(long)
            }
            n if n < 0 => return Err(self.protocol(&format!("negative frame length {n}"))),
            n => n as u64,
        };
        if len > max as u64 {
            return Err(self.protocol(&format!("frame of {len} bytes exceeds the limit of {max}")));
        }
        // Grow with the data, not with the claim (`len` is bounded by `max` anyway).
        let mut payload = Vec::with_capacity((len as usize).min(1 << 20));
        let read = (&mut self.stream)
            .take(len)
            .read_to_end(&mut payload)
            .map_err(|e| self.io_error("receive", e))?;
        if read as u64 != len {
            return Err(self.protocol("end of stream inside a frame"));
        }
        Ok(payload)
    }

    fn read_exact_frame(&mut self, buf: &mut [u8]) -> Result<()> {
        self.stream.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                self.protocol("end of stream inside a frame header")
            } else {
                self.io_error("receive", e)
            }
        })
    }

    fn protocol(&self, detail: &str) -> Error {
        Error::protocol(self.what.as_str(), detail)
    }

    fn io_error(&mut self, op: &str, e: io::Error) -> Error {
        match e.kind() {
            io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted => Error::Closed {
                what: self.what.clone(),
            },
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                self.stalled = true;
                self.protocol(&format!("{op} stalled"))
            }
            _ => Error::io(format!("{}: {op}", self.what), e),
        }
    }

    fn auth_failed(&self, detail: &str) -> Error {
        Error::AuthenticationFailed {
            what: self.what.clone(),
            detail: detail.to_string(),
        }
    }

    /// Sends a challenge and checks the answer (CPython's `deliver_challenge`).
    fn deliver_challenge(&mut self, authkey: &[u8]) -> Result<()> {
        let mut random = [0u8; CHALLENGE_RANDOM];
        getrandom::fill(&mut random)
            .map_err(|e| Error::io("handshake: random bytes", io::Error::other(e.to_string())))?;
        let mut message = b"{sha256}".to_vec();
        message.extend_from_slice(&random);
        let mut frame = CHALLENGE.to_vec();
        frame.extend_from_slice(&message);
        self.send_bytes(&frame)?;
        let response = self.recv_bounded(HANDSHAKE_MAX)?;
        if verify_response(authkey, &message, &response) {
            self.send_bytes(WELCOME)
        } else {
            let _ = self.send_bytes(FAILURE);
            Err(self.auth_failed("the peer's digest is wrong (different authkey?)"))
        }
    }

    /// Answers the peer's challenge (CPython's `answer_challenge`).
    fn answer_challenge(&mut self, authkey: &[u8]) -> Result<()> {
        let frame = self.recv_bounded(HANDSHAKE_MAX)?;
        self.answer_challenge_frame(authkey, &frame)
    }

    /// Answers the challenge `frame` the peer sent.
    fn answer_challenge_frame(&mut self, authkey: &[u8], frame: &[u8]) -> Result<()> {
        let Some(body) = frame.strip_prefix(CHALLENGE) else {
            return Err(self.auth_failed("the peer did not send a challenge"));
        };
        let response = answer(authkey, body).map_err(|d| self.auth_failed(d))?;
        self.send_bytes(&response)?;
        // A CPython peer writes its verdict right after reading our digest.
        self.stream.get_ref().quick_ack();
        let verdict = self.recv_bounded(HANDSHAKE_MAX)?;
        if verdict == WELCOME {
            Ok(())
        } else {
            Err(self.auth_failed("the peer rejected our digest (different authkey?)"))
        }
    }

    /// Runs the server side of the handshake on a connection from
    /// [`Listener::accept_unauthenticated`].
    pub(crate) fn authenticate_as_server(
        &mut self,
        authkey: &[u8],
        timeout: Duration,
    ) -> Result<()> {
        self.handshake(authkey, true, timeout)
    }

    fn handshake(&mut self, authkey: &[u8], server: bool, timeout: Duration) -> Result<()> {
        self.stream
            .get_ref()
            .set_read_timeout(Some(timeout))
            .map_err(|e| self.io_error("set timeout", e))?;
        if server {
            self.deliver_challenge(authkey)?;
            self.stream.get_ref().quick_ack();
            self.answer_challenge(authkey)?;
        } else {
            self.answer_challenge(authkey)?;
            self.deliver_challenge(authkey)?;
        }
        self.stream
            .get_ref()
            .set_read_timeout(None)
            .map_err(|e| self.io_error("set timeout", e))
    }
}

fn hmac_of<M: Mac + hmac::digest::KeyInit>(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

fn digest(name: &str, key: &[u8], message: &[u8]) -> Option<Vec<u8>> {
    match name {
        "md5" => Some(hmac_of::<Hmac<md5::Md5>>(key, message)),
        "sha256" => Some(hmac_of::<Hmac<sha2::Sha256>>(key, message)),
        "sha384" => Some(hmac_of::<Hmac<sha2::Sha384>>(key, message)),
        _ => None,
    }
}

/// Splits `{name}rest` into `(name, rest)`; the `}` must come within the first 10 bytes.
fn digest_prefix(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let rest = bytes.strip_prefix(b"{")?;
    let end = rest.iter().take(9).position(|b| *b == b'}')?;
    let name = std::str::from_utf8(&rest[..end]).ok()?;
    Some((name, &rest[end + 1..]))
}

/// Constant-time equality.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks a response to our challenge `message` (CPython 3.12's `_verify_challenge`: a 16- or
/// 20-byte response is a legacy raw HMAC-MD5, anything else names its digest).
fn verify_response(key: &[u8], message: &[u8], response: &[u8]) -> bool {
    let (name, mac) = if response.len() == 16 || response.len() == 20 {
        ("md5", response)
    } else {
        match digest_prefix(response) {
            Some(split) => split,
            None => return false,
        }
    };
    digest(name, key, message).is_some_and(|expected| same(&expected, mac))
}

/// Our answer to a challenge body (CPython 3.12's `answer_challenge`).
fn answer(key: &[u8], body: &[u8]) -> std::result::Result<Vec<u8>, &'static str> {
    if body.len() < 20 {
        return Err("challenge too short");
    }
    if body.len() == 20 {
        return Ok(digest("md5", key, body).expect("md5 is known"));
    }
    let (name, _) = digest_prefix(body).ok_or("challenge without a digest name")?;
    let mac = digest(name, key, body).ok_or("challenge names an unsupported digest")?;
    let mut response = format!("{{{name}}}").into_bytes();
    response.extend_from_slice(&mac);
    Ok(response)
}

/// Accepts connections and authenticates them (CPython's `multiprocessing.connection.Listener`
/// with an authkey).
///
/// # Examples
///
/// ```
/// use multiproc::{Address, Client, Listener};
///
/// let listener = Listener::bind(&Address::tcp("127.0.0.1:0")?, b"secret")?;
/// let addr = listener.address().clone();
/// let client = std::thread::spawn(move || -> multiproc::Result<Vec<u8>> {
///     let mut c = Client::connect(&addr, b"secret")?;
///     c.send_bytes(b"ping")?;
///     c.recv_bytes()
/// });
/// let mut server_side = listener.accept()?;
/// assert_eq!(server_side.recv_bytes()?, b"ping");
/// server_side.send_bytes(b"pong")?;
/// assert_eq!(client.join().unwrap()?, b"pong");
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct Listener {
    inner: ListenerKind,
    address: Address,
    authkey: Vec<u8>,
    handshake_timeout: Duration,
}

enum ListenerKind {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// Listens on `address` (a TCP port 0 picks a free port: see [`address`](Self::address)).
    ///
    /// # Errors
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) if it cannot bind.
    pub fn bind(address: &Address, authkey: &[u8]) -> Result<Listener> {
        let what = format!("listener on {address}");
        let (inner, address) = match address {
            Address::Tcp(a) => {
                let l = TcpListener::bind(a).map_err(|e| Error::io(&what, e))?;
                let bound = l.local_addr().map_err(|e| Error::io(&what, e))?;
                (ListenerKind::Tcp(l), Address::Tcp(bound))
            }
            Address::Unix(p) => {
                let l = UnixListener::bind(p).map_err(|e| Error::io(&what, e))?;
                (ListenerKind::Unix(l), Address::Unix(p.clone()))
            }
        };
        // Hundreds of clients connecting at once would overflow std's 128 and have the kernel
        // drop handshakes, retried only after 1, 2, 4… s.
        let fd = match &inner {
            ListenerKind::Tcp(l) => l.as_fd(),
            ListenerKind::Unix(l) => l.as_fd(),
        };
        platform::listen_deepest(fd).map_err(|e| Error::io(&what, e))?;
        Ok(Listener {
            inner,
            address,
            authkey: authkey.to_vec(),
            handshake_timeout: HANDSHAKE_TIMEOUT,
        })
    }

    /// How long a peer may stall in each handshake step before it is dropped (default 10 s).
    pub fn set_handshake_timeout(&mut self, timeout: Duration) {
        self.handshake_timeout = timeout;
    }

    /// The address it listens on.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Waits for a peer and runs the handshake with it.
    ///
    /// # Errors
    /// [`ErrorKind::AuthenticationFailed`](crate::ErrorKind::AuthenticationFailed) if the peer
    /// does not know the authkey; [`ErrorKind::Protocol`](crate::ErrorKind::Protocol) if it
    /// sends garbage or stalls. The listener stays usable: call `accept` again.
    pub fn accept(&self) -> Result<WireConnection> {
        let mut conn = self.accept_unauthenticated()?;
        conn.authenticate_as_server(&self.authkey, self.handshake_timeout)?;
        Ok(conn)
    }

    /// Accepts a peer without the handshake: the caller runs
    /// [`WireConnection::authenticate_as_server`] (on the connection's own thread, so that a
    /// stalling peer does not hold up the others).
    pub(crate) fn accept_unauthenticated(&self) -> Result<WireConnection> {
        let (stream, peer) = match &self.inner {
            ListenerKind::Tcp(l) => {
                let (s, peer) = l
                    .accept()
                    .map_err(|e| Error::io(format!("listener on {}", self.address), e))?;
                let _ = s.set_nodelay(true);
                (Stream::Tcp(s), peer.to_string())
            }
            ListenerKind::Unix(l) => {
                let (s, _) = l
                    .accept()
                    .map_err(|e| Error::io(format!("listener on {}", self.address), e))?;
                (Stream::Unix(s), "a unix socket peer".to_string())
            }
        };
        Ok(WireConnection::new(
            stream,
            format!("connection from {peer}"),
        ))
    }

    /// The authkey peers must prove they know, and the handshake timeout.
    pub(crate) fn credentials(&self) -> (Vec<u8>, Duration) {
        (self.authkey.clone(), self.handshake_timeout)
    }
}

/// Connects to a [`Listener`] (ours or CPython's) and authenticates (CPython's
/// `multiprocessing.connection.Client`).
#[derive(Debug)]
pub struct Client(());

impl Client {
    /// Connects to `address` and runs the handshake, trying again within 10 s if the server
    /// never speaks (a server whose queue of new connections overflowed drops the handshake).
    ///
    /// # Errors
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) if it cannot connect;
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) if the server did not answer in
    /// time; [`ErrorKind::AuthenticationFailed`](crate::ErrorKind::AuthenticationFailed) if
    /// the authkeys differ.
    #[allow(clippy::new_ret_no_self)]
    pub fn connect(address: &Address, authkey: &[u8]) -> Result<WireConnection> {
        Client::connect_within(address, authkey, HANDSHAKE_TIMEOUT)
    }

    pub(crate) fn connect_within(
        address: &Address,
        authkey: &[u8],
        timeout: Duration,
    ) -> Result<WireConnection> {
        let what = format!("connection to {address}");
        let started = Instant::now();
        let timed_out = || Error::timeout(what.clone(), timeout);
        // How long to wait for the server's first word before connecting again: doubled each
        // time, so that a server that is merely slow is not swamped.
        let mut patience = FIRST_WORD_PATIENCE;
        loop {
            let left = timeout
                .checked_sub(started.elapsed())
                .ok_or_else(timed_out)?;
            let stream = match address {
                Address::Tcp(a) => {
                    let s = match TcpStream::connect_timeout(a, left) {
                        Ok(s) => s,
                        Err(e) if e.kind() == io::ErrorKind::TimedOut => return Err(timed_out()),
                        Err(e) => return Err(Error::io(&what, e)),
                    };
                    let _ = s.set_nodelay(true);
                    Stream::Tcp(s)
                }
                Address::Unix(p) => {
                    Stream::Unix(UnixStream::connect(p).map_err(|e| Error::io(&what, e))?)
                }
            };
            let mut conn = WireConnection::new(stream, what.clone());
            let wait = patience.min(left);
            conn.stream
                .get_ref()
                .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
                .map_err(|e| conn.io_error("set timeout", e))?;
            // The server speaks first: its challenge.
            let challenge = match conn.recv_bounded(HANDSHAKE_MAX) {
                Ok(frame) => frame,
                Err(e) if e.kind() == crate::ErrorKind::Protocol && conn.stalled => {
                    patience = patience.saturating_mul(2);
                    continue;
                }
                Err(e) if e.kind() == crate::ErrorKind::Closed => {
                    return Err(Error::Closed {
                        what: format!(
                            "{what} (before any handshake: the server at its limit of \
                             connections?)"
                        ),
                    });
                }
                Err(e) => return Err(e),
            };
            let left = timeout
                .checked_sub(started.elapsed())
                .ok_or_else(timed_out)?;
            conn.stream
                .get_ref()
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .map_err(|e| conn.io_error("set timeout", e))?;
            conn.answer_challenge_frame(authkey, &challenge)?;
            conn.deliver_challenge(authkey)?;
            conn.stream
                .get_ref()
                .set_read_timeout(None)
                .map_err(|e| conn.io_error("set timeout", e))?;
            return Ok(conn);
        }
    }
}

/// How long a client first waits for the server's challenge before it connects again.
const FIRST_WORD_PATIENCE: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn legacy_md5_vectors_from_the_captures() {
        let body = hex("4b1bf4dd4b8bdf32b1fe728889d0bdb048b5acdd");
        assert_eq!(
            answer(b"abc", &body).unwrap(),
            hex("8a4eb1479436070e2ddf6eebbe4ebfbe")
        );
        let body = hex("04b0f8ca67c96313ebe0d281151fbd449c07cb3a");
        assert_eq!(
            answer(b"abc", &body).unwrap(),
            hex("07b12c77950c390f97e3ad5e4f7555c9")
        );
    }

    #[test]
    fn modern_sha256_vector_and_the_legacy_answer_to_it() {
        let body = hex(
            "7b7368613235367d5a0c5506c43b6a0c22b987406bba3fd1b800a0c433aa225aa4fd6cb945722c96d9637daa811496a5",
        );
        let modern =
            hex("7b7368613235367d7373abd3cf3e6eb297af98f1c3e7d858338143f28ab2c4ba079c5d21d4fe4bc0");
        assert_eq!(answer(b"abc", &body).unwrap(), modern);
        assert!(verify_response(b"abc", &body, &modern));
        // A 3.11 client answers a {sha256} challenge with raw MD5 over all of it: accepted.
        assert!(verify_response(
            b"abc",
            &body,
            &hex("105d5d601b8be0a20dd44bfc8a48ccd8")
        ));
        assert!(!verify_response(b"abd", &body, &modern));
    }

    #[test]
    fn bad_challenges_are_refused() {
        assert!(answer(b"k", &[0; 19]).is_err());
        assert!(answer(b"k", b"{whirlpool}0123456789012345678901234567890").is_err());
        assert!(answer(b"k", b"no prefix at all but long enough to pass").is_err());
        assert!(!verify_response(b"k", b"m", b"{sha256}short"));
    }
}

/// For the fuzz targets: frames read from `data` as a peer would send them (must end with an
/// error or end of stream, never a panic), and a server handshake against `data`.
pub(crate) mod fuzz {
    use super::*;

    /// A connection whose peer sent `data` and then closed its sending side (it still
    /// receives, so our replies do not fail), returned with that peer.
    pub(crate) fn connection_fed(data: &[u8]) -> Option<(WireConnection, UnixStream)> {
        let (mine, mut theirs) = UnixStream::pair().ok()?;
        // Small inputs fit the socket buffer; the rest is cut (the reader sees end of stream).
        let _ = theirs.set_nonblocking(true);
        let _ = theirs.write(data);
        let _ = theirs.shutdown(std::net::Shutdown::Write);
        let mut conn = WireConnection::new(Stream::Unix(mine), "fuzz".into());
        conn.set_max_message_size(1 << 20);
        Some((conn, theirs))
    }

    /// Reads frames until the input runs out or is refused.
    pub(crate) fn frames(data: &[u8]) {
        if let Some((mut conn, _peer)) = connection_fed(data) {
            while conn.recv_bytes().is_ok() {}
        }
    }

    /// Runs the server side of the handshake against `data` as the client's messages.
    pub(crate) fn handshake(data: &[u8]) {
        if let Some((mut conn, _peer)) = connection_fed(data) {
            let _ = conn.authenticate_as_server(b"key", Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod fuzz_tests {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any bytes from a peer end in an error or end of stream, never a panic or a hang.
        #[test]
        fn arbitrary_frames_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            super::fuzz::frames(&data);
        }

        #[test]
        fn arbitrary_handshakes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            super::fuzz::handshake(&data);
        }

        /// A correct digest for a wrong key, then garbage: refused, never a panic.
        #[test]
        fn handshake_replies_are_checked(tail in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut data = 16u32.to_be_bytes().to_vec();
            data.extend([7u8; 16]);
            data.extend(&tail);
            super::fuzz::handshake(&data);
        }

        /// Well-framed garbage too (a valid length prefix, random payload).
        #[test]
        fn framed_garbage_never_panics(payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut data = (payload.len() as u32).to_be_bytes().to_vec();
            data.extend(&payload);
            super::fuzz::frames(&data);
            super::fuzz::handshake(&data);
        }
    }
}
