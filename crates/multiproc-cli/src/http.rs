//! The small HTTP/1.1 server behind `multiproc dashboard` and `worker --metrics-bind`.
//!
//! Whoever reaches the port is a stranger until the handler has checked its token, so
//! everything read before that is bounded: a request's head (its line and headers) is at most
//! [`MAX_HEAD`] bytes and [`MAX_HEADERS`] headers, and must arrive within [`READ_TIME`]; a
//! body is read (and dropped: no handler takes one) only up to [`MAX_BODY`]; at most
//! [`MAX_CONNECTIONS`] connections are served at once, each on a thread of its own, and one
//! more is answered 503 at once. Parsing is `httparse`'s. Each connection carries one request
//! and is closed after the answer.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The longest request head read.
pub(crate) const MAX_HEAD: usize = 16 * 1024;
/// The most headers a request may have.
pub(crate) const MAX_HEADERS: usize = 64;
/// The longest body read (and dropped).
pub(crate) const MAX_BODY: usize = 64 * 1024;
/// How long a request may take to arrive, head and body.
pub(crate) const READ_TIME: Duration = Duration::from_secs(10);
/// How long writing an answer may take.
const WRITE_TIME: Duration = Duration::from_secs(10);
/// How long a closing connection is read from, at most, after the answer.
const LINGER: Duration = Duration::from_secs(2);
/// How much a closing connection is read, at most, after the answer.
const MAX_LINGER_READ: usize = 1024 * 1024;
/// The most connections served at once.
pub(crate) const MAX_CONNECTIONS: usize = 64;

/// A request, as the handler sees it.
pub(crate) struct Request {
    pub(crate) method: String,
    /// The path, with its query if any.
    pub(crate) target: String,
    headers: Vec<(String, String)>,
}

impl Request {
    /// The first header called `name` (in any case), if it is text.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An answer.
pub(crate) struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Reply {
    pub(crate) fn new(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// `value` must not hold a line break (it is ours, never a request's).
    pub(crate) fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        let value = value.into();
        debug_assert!(!value.contains(['\r', '\n']), "a header value on one line");
        self.headers.push((name, value));
        self
    }

    fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        let mut head = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {}\r\n", value.replace(['\r', '\n'], " ")));
        }
        head.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.body.len()
        ));
        out.write_all(head.as_bytes())?;
        out.write_all(&self.body)?;
        out.flush()
    }
}

/// A listening server.
pub(crate) struct Server {
    listener: TcpListener,
}

impl Server {
    pub(crate) fn bind(addr: SocketAddr) -> io::Result<Server> {
        Ok(Server {
            listener: TcpListener::bind(addr)?,
        })
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Answers every request with `handler`, until the process ends.
    pub(crate) fn serve<H>(self, handler: H)
    where
        H: Fn(&Request) -> Reply + Send + Sync + 'static,
    {
        let handler = Arc::new(handler);
        let open = Arc::new(AtomicUsize::new(0));
        for stream in self.listener.incoming() {
            let Ok(stream) = stream else {
                // A connection that went before it was accepted, or no file descriptor left
                // for now: the next one is taken.
                continue;
            };
            if open.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                open.fetch_sub(1, Ordering::AcqRel);
                let mut stream = stream;
                let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                let _ = Reply::new(503, "too many connections\n").write_to(&mut stream);
                continue;
            }
            let (handler, open) = (handler.clone(), open.clone());
            let spawned = std::thread::Builder::new()
                .name("multiproc-http".into())
                .spawn(move || {
                    let _closed = Closed(&open);
                    if let Err(e) = answer(stream, &*handler) {
                        tracing::debug!(error = %e, "an HTTP connection");
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "no thread for an HTTP connection");
            }
        }
    }
}

/// Counts a connection out when its thread ends, however it ends.
struct Closed<'a>(&'a AtomicUsize);

impl Drop for Closed<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Reads one request from `stream`, answers it and closes the connection.
fn answer(mut stream: TcpStream, handler: &dyn Fn(&Request) -> Reply) -> io::Result<()> {
    stream.set_write_timeout(Some(WRITE_TIME))?;
    let reply = match read_request(&mut stream, Instant::now() + READ_TIME) {
        Ok(request) => handler(&request),
        Err(Refused::Io(e)) => return Err(e),
        Err(Refused::Answer(reply)) => reply,
    };
    reply.write_to(&mut stream)?;
    stream.shutdown(Shutdown::Write)?;
    // What the client still sends (the rest of a head refused as too long) is read and
    // dropped for a moment, so closing does not reset the connection before the client has
    // read the answer.
    let deadline = Instant::now() + LINGER;
    let mut chunk = [0u8; 4096];
    let mut read = 0;
    while read < MAX_LINGER_READ {
        match read_by(&mut stream, &mut chunk, deadline) {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n,
        }
    }
    Ok(())
}

/// Why a request is not handed to the handler.
enum Refused {
    /// The connection failed or the time ran out: nothing to answer.
    Io(io::Error),
    /// A request that is answered with this.
    Answer(Reply),
}

impl From<io::Error> for Refused {
    fn from(e: io::Error) -> Refused {
        Refused::Io(e)
    }
}

fn refuse(status: u16, why: &str) -> Refused {
    Refused::Answer(Reply::new(status, format!("{why}\n")))
}

/// Reads a request's head and body, within the bounds, by `deadline`.
fn read_request(stream: &mut TcpStream, deadline: Instant) -> Result<Request, Refused> {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let room = MAX_HEAD - buffer.len();
        let n = read_by(stream, &mut chunk[..room.min(4096)], deadline)?;
        if n == 0 {
            return Err(Refused::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        buffer.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&buffer) {
            Ok(httparse::Status::Complete(head_len)) => {
                let request = Request {
                    method: parsed.method.unwrap_or_default().to_string(),
                    target: parsed.path.unwrap_or_default().to_string(),
                    headers: parsed
                        .headers
                        .iter()
                        .filter_map(|h| {
                            let value = std::str::from_utf8(h.value).ok()?;
                            Some((h.name.to_string(), value.to_string()))
                        })
                        .collect(),
                };
                let already = buffer.len() - head_len;
                drain_body(stream, &request, already, deadline)?;
                return Ok(request);
            }
            Ok(httparse::Status::Partial) if buffer.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return Err(refuse(431, "the request's head is too long"));
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(refuse(431, "the request has too many headers"));
            }
            Err(e) => return Err(refuse(400, &format!("a malformed request: {e}"))),
        }
    }
}

/// Reads and drops the body the request announces, `already` bytes of which are read.
fn drain_body(
    stream: &mut TcpStream,
    request: &Request,
    already: usize,
    deadline: Instant,
) -> Result<(), Refused> {
    if request.header("Transfer-Encoding").is_some() {
        return Err(refuse(411, "a body must come with a Content-Length"));
    }
    let length = match request.header("Content-Length") {
        None => 0,
        Some(text) => match text.trim().parse::<usize>() {
            Ok(n) => n,
            Err(_) => return Err(refuse(400, "a bad Content-Length")),
        },
    };
    if length > MAX_BODY {
        return Err(refuse(413, "the request's body is too long"));
    }
    let mut left = length.saturating_sub(already);
    let mut chunk = [0u8; 4096];
    while left > 0 {
        let n = read_by(stream, &mut chunk[..left.min(4096)], deadline)?;
        if n == 0 {
            return Err(Refused::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        left -= n;
    }
    Ok(())
}

/// One read, given up at `deadline`.
fn read_by(stream: &mut TcpStream, into: &mut [u8], deadline: Instant) -> io::Result<usize> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    stream.set_read_timeout(Some(left))?;
    loop {
        match stream.read(into) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            done => return done,
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        303 => "See Other",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "",
    }
}
