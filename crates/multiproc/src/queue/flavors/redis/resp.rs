//! The connection the blocking stream reads go through (XREADGROUP for a consumer, XREAD for a
//! sole reader), with a reply reader of its own.
//!
//! A read's reply is the bulk of what a quick consumer receives, and redis-rs parses it into a
//! tree of values first, at several times the cost of the rest of the read (`perf` put its
//! parser at a quarter of a broker pool's reading threads). This connection speaks RESP2 over
//! plain TCP or a Unix socket itself and reads a read's reply straight into entries: one pass,
//! no tree. Other replies (those of the commands sent before a read, of the handshake) are
//! only checked for an error. A `rediss://` broker is read through redis-rs as before.
//!
//! The broker's replies are untrusted: every length is bounded ([`MAX_BODY`] for a string,
//! [`MAX_ITEMS`] for an array, [`MAX_LINE`] for a line, [`MAX_DEPTH`] for nesting), and a reply
//! that is not what the command answers is an error that drops the connection, never a panic.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
#[cfg(unix)]
use std::os::unix::net::UnixStream;
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, ErrorKind, RedisError, RedisResult};

use super::entry::{Entry, parse_read};
use super::route::Route;
use super::{COMMAND_TIMEOUT, CONNECT_TIMEOUT, MAX_BODY};

/// The longest line (a reply's header, a simple string or an error) taken.
const MAX_LINE: usize = 64 << 10;
/// The most elements an array of a reply may have.
const MAX_ITEMS: usize = 1 << 20;
/// How deep a reply that is only checked may nest.
const MAX_DEPTH: usize = 8;
/// The reading buffer's size (a bulk string longer than what is left of it is read past it).
const BUFFER: usize = 64 << 10;

/// A connection for blocking stream reads.
pub(super) enum ReadConn {
    /// Plain TCP or a Unix socket, read here.
    Own(Box<OwnConn>),
    /// Anything else (TLS), read through redis-rs.
    Client(redis::Connection),
}

/// A stream read to run: `XREAD` or `XREADGROUP … COUNT n` (without `BLOCK` and `STREAMS`),
/// of `stream` after the id `from`.
pub(super) struct StreamRead<'a> {
    pub(super) cmd: redis::Cmd,
    pub(super) stream: &'a str,
    pub(super) from: &'a str,
    /// How long the broker may wait for an entry (not at all for zero).
    pub(super) block: Duration,
    /// Commands sent in the same round trip, before the read.
    pub(super) before: Option<redis::Pipeline>,
}

impl ReadConn {
    /// Connects to the node `route` leads to.
    pub(super) fn open(route: &Route) -> RedisResult<ReadConn> {
        let client = route.client()?;
        let opened = match OwnConn::open(client.get_connection_info()) {
            Some(own) => own.map(|own| ReadConn::Own(Box::new(own))),
            None => client
                .get_connection_with_timeout(CONNECT_TIMEOUT)
                .and_then(|c| c.set_read_timeout(Some(COMMAND_TIMEOUT)).map(|()| c))
                .map(ReadConn::Client),
        };
        if opened.is_err() {
            route.lost();
        }
        opened
    }

    /// Runs `read`; its entries (`Err` inside for an error the broker answered, to any of the
    /// commands: the first).
    pub(super) fn read(&mut self, read: StreamRead<'_>) -> RedisResult<RedisResult<Vec<Entry>>> {
        let StreamRead {
            mut cmd,
            stream,
            from,
            block,
            before,
        } = read;
        if !block.is_zero() {
            cmd.arg("BLOCK").arg(block.as_millis().max(1) as u64);
        }
        cmd.arg("STREAMS").arg(stream).arg(from);
        // The reply comes within the block, or something is wrong with the broker. Whole
        // seconds, so that a run of reads sets it once.
        let timeout = Duration::from_secs((block + COMMAND_TIMEOUT).as_secs() + 1);
        match self {
            ReadConn::Own(own) => {
                own.set_read_timeout(timeout)?;
                own.run_read(&cmd, before.as_ref())
            }
            ReadConn::Client(c) => {
                c.set_read_timeout(Some(timeout))?;
                let reply = match before {
                    None => cmd.query(c),
                    Some(mut pipe) => pipe
                        .add_command(cmd)
                        .query::<(redis::Value,)>(c)
                        .map(|(v,)| v),
                };
                c.set_read_timeout(Some(COMMAND_TIMEOUT))?;
                Ok(reply.map(parse_read))
            }
        }
    }
}

/// The socket of an [`OwnConn`].
enum Socket {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
}

impl Socket {
    fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.set_read_timeout(Some(timeout)),
            #[cfg(unix)]
            Socket::Unix(s) => s.set_read_timeout(Some(timeout)),
        }
    }

    fn set_write_timeout(&self, timeout: Duration) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.set_write_timeout(Some(timeout)),
            #[cfg(unix)]
            Socket::Unix(s) => s.set_write_timeout(Some(timeout)),
        }
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.read(buf),
            #[cfg(unix)]
            Socket::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.write(buf),
            #[cfg(unix)]
            Socket::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A RESP2 connection read here, and what was received and not yet taken.
pub(super) struct OwnConn {
    socket: Socket,
    /// The socket's read timeout, as last set (only reads go on this connection: it is set
    /// when it changes).
    read_timeout: Duration,
    buf: Box<[u8]>,
    /// `buf[at..end]` was received and is not taken yet.
    at: usize,
    end: usize,
}

/// A reply's first line: its type byte and the rest of the line.
enum Head {
    /// `+…` or `:…`: nothing more follows.
    Plain,
    /// `-…`: the broker's error.
    Error(RedisError),
    /// `$n` (`None` for -1, the nil string).
    Bulk(Option<usize>),
    /// `*n` (`None` for -1, the nil array).
    Array(Option<usize>),
}

/// A reply that is not what the broker would send.
fn garbled(detail: impl Into<String>) -> RedisError {
    RedisError::from((
        ErrorKind::Parse,
        "a reply from the broker that does not parse",
        detail.into(),
    ))
}

/// The length in a header line: a decimal from -1 up to `most`.
fn length(digits: &[u8], most: usize) -> RedisResult<Option<usize>> {
    if digits == b"-1" {
        return Ok(None);
    }
    let n = std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse::<usize>().ok())
        .ok_or_else(|| garbled(format!("a length of {:?}", String::from_utf8_lossy(digits))))?;
    if n > most {
        return Err(garbled(format!(
            "a length of {n}, over the limit of {most}"
        )));
    }
    Ok(Some(n))
}

impl OwnConn {
    /// Connects and authenticates as `info` says; `None` for an address not read here (TLS).
    fn open(info: &ConnectionInfo) -> Option<RedisResult<OwnConn>> {
        let socket = match info.addr() {
            ConnectionAddr::Tcp(host, port) => tcp(host, *port).map(Socket::Tcp),
            #[cfg(unix)]
            ConnectionAddr::Unix(path) => UnixStream::connect(path).map(Socket::Unix),
            _ => return None,
        };
        Some(socket.map_err(RedisError::from).and_then(|socket| {
            let mut conn = OwnConn::over(socket)?;
            conn.hello(info.redis_settings())?;
            Ok(conn)
        }))
    }

    /// A connection on `socket`, with its timeouts [`COMMAND_TIMEOUT`].
    fn over(socket: Socket) -> io::Result<OwnConn> {
        socket.set_read_timeout(COMMAND_TIMEOUT)?;
        socket.set_write_timeout(COMMAND_TIMEOUT)?;
        Ok(OwnConn {
            socket,
            read_timeout: COMMAND_TIMEOUT,
            buf: vec![0; BUFFER].into_boxed_slice(),
            at: 0,
            end: 0,
        })
    }

    fn set_read_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        if timeout != self.read_timeout {
            self.socket.set_read_timeout(timeout)?;
            self.read_timeout = timeout;
        }
        Ok(())
    }

    /// Authenticates and selects the database, as the URL says.
    fn hello(&mut self, settings: &redis::RedisConnectionInfo) -> RedisResult<()> {
        let mut pipe = redis::pipe();
        if let Some(password) = settings.password() {
            let auth = pipe.cmd("AUTH");
            if let Some(user) = settings.username() {
                auth.arg(user);
            }
            auth.arg(password);
        }
        if settings.db() != 0 {
            pipe.cmd("SELECT").arg(settings.db());
        }
        if pipe.is_empty() {
            return Ok(());
        }
        self.socket.write_all(&pipe.get_packed_pipeline())?;
        self.skip_replies(pipe.len())?.map_or(Ok(()), Err)
    }

    /// Sends `before` and `read` in one write and reads their replies.
    fn run_read(
        &mut self,
        read: &redis::Cmd,
        before: Option<&redis::Pipeline>,
    ) -> RedisResult<RedisResult<Vec<Entry>>> {
        let mut packed = before.map(|p| p.get_packed_pipeline()).unwrap_or_default();
        read.write_packed_command(&mut packed);
        self.socket.write_all(&packed)?;
        let refused = self.skip_replies(before.map_or(0, |p| p.len()))?;
        let entries = self.read_reply()?;
        Ok(match refused {
            Some(e) => Err(e),
            None => entries,
        })
    }

    /// Reads `n` replies and passes over them; the broker's first error among them, if any.
    fn skip_replies(&mut self, n: usize) -> RedisResult<Option<RedisError>> {
        let mut refused = None;
        for _ in 0..n {
            if let Some(e) = self.skip_reply(0)? {
                refused.get_or_insert(e);
            }
        }
        Ok(refused)
    }

    /// Makes sure `buf[at..]` holds at least one byte more than it does now, unless the
    /// buffer is full.
    fn fill(&mut self) -> RedisResult<()> {
        if self.at == self.end {
            (self.at, self.end) = (0, 0);
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.at..self.end, 0);
            (self.at, self.end) = (0, self.end - self.at);
        }
        if self.end == self.buf.len() {
            return Err(garbled(format!("a line over {MAX_LINE} bytes")));
        }
        let n = loop {
            match self.socket.read(&mut self.buf[self.end..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        self.end += n;
        Ok(())
    }

    /// The next line, without its CRLF (where it is in `buf`).
    fn line(&mut self) -> RedisResult<std::ops::Range<usize>> {
        let mut looked = self.at;
        loop {
            if let Some(i) = self.buf[looked..self.end].iter().position(|&b| b == b'\n') {
                let nl = looked + i;
                if nl == self.at || self.buf[nl - 1] != b'\r' {
                    return Err(garbled("a line that does not end in CRLF"));
                }
                let line = self.at..nl - 1;
                self.at = nl + 1;
                return Ok(line);
            }
            if self.end - self.at > MAX_LINE {
                return Err(garbled(format!("a line over {MAX_LINE} bytes")));
            }
            looked = self.end;
            let before = self.at;
            self.fill()?;
            // The bytes may have moved to the buffer's start.
            looked -= before - self.at;
        }
    }

    /// The next reply's first line.
    fn head(&mut self) -> RedisResult<Head> {
        let line = self.line()?;
        let (kind, rest) = match self.buf[line.clone()].split_first() {
            Some((&kind, rest)) => (kind, rest),
            None => return Err(garbled("an empty line")),
        };
        Ok(match kind {
            b'+' | b':' => Head::Plain,
            b'$' => Head::Bulk(length(rest, MAX_BODY)?),
            b'*' => Head::Array(length(rest, MAX_ITEMS)?),
            b'-' => Head::Error(server_error(rest)),
            other => {
                return Err(garbled(format!(
                    "a reply of type {:?}",
                    char::from(other).escape_default()
                )));
            }
        })
    }

    /// The `n` bytes of a bulk string and its CRLF.
    fn bulk(&mut self, n: usize) -> RedisResult<Vec<u8>> {
        let ready = (self.end - self.at).min(n);
        let mut out = self.buf[self.at..self.at + ready].to_vec();
        self.at += ready;
        if ready < n {
            // The rest straight from the socket, past the buffer (the buffer is empty now),
            // growing as it comes: a length alone allocates nothing.
            let rest = (n - ready) as u64;
            (&mut self.socket).take(rest).read_to_end(&mut out)?;
            if out.len() < n {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
        }
        self.crlf()?;
        Ok(out)
    }

    /// Passes over `n` bytes of a bulk string and its CRLF.
    fn skip_bulk(&mut self, mut n: usize) -> RedisResult<()> {
        while n > 0 {
            if self.at == self.end {
                self.fill()?;
            }
            let ready = (self.end - self.at).min(n);
            self.at += ready;
            n -= ready;
        }
        self.crlf()
    }

    fn crlf(&mut self) -> RedisResult<()> {
        while self.end - self.at < 2 {
            self.fill()?;
        }
        if &self.buf[self.at..self.at + 2] != b"\r\n" {
            return Err(garbled("a string not followed by CRLF"));
        }
        self.at += 2;
        Ok(())
    }

    /// Reads a reply of any type and passes over it; the broker's error, if it is one.
    fn skip_reply(&mut self, depth: usize) -> RedisResult<Option<RedisError>> {
        if depth > MAX_DEPTH {
            return Err(garbled(format!("a reply nested over {MAX_DEPTH} deep")));
        }
        match self.head()? {
            Head::Plain | Head::Bulk(None) | Head::Array(None) => Ok(None),
            Head::Error(e) => Ok(Some(e)),
            Head::Bulk(Some(n)) => self.skip_bulk(n).map(|()| None),
            Head::Array(Some(n)) => {
                for _ in 0..n {
                    self.skip_reply(depth + 1)?;
                }
                Ok(None)
            }
        }
    }

    /// A bulk string (nil for the nil string).
    fn string(&mut self) -> RedisResult<Option<Vec<u8>>> {
        match self.head()? {
            Head::Bulk(Some(n)) => self.bulk(n).map(Some),
            Head::Bulk(None) => Ok(None),
            _ => Err(garbled("a string expected")),
        }
    }

    /// An array's length (0 for the nil array).
    fn array(&mut self) -> RedisResult<usize> {
        match self.head()? {
            Head::Array(n) => Ok(n.unwrap_or(0)),
            _ => Err(garbled("an array expected")),
        }
    }

    /// XREAD's (or XREADGROUP's) reply, `[[stream, [[id, [field, value…]]…]]]` or nil: the
    /// first stream's entries.
    fn read_reply(&mut self) -> RedisResult<RedisResult<Vec<Entry>>> {
        let streams = match self.head()? {
            Head::Error(e) => return Ok(Err(e)),
            Head::Array(n) => n.unwrap_or(0),
            _ => return Err(garbled("a stream read's reply is not an array")),
        };
        let mut entries = Vec::new();
        for i in 0..streams {
            if i > 0 {
                self.skip_reply(1)?;
                continue;
            }
            if self.array()? != 2 {
                return Err(garbled("a stream in a read's reply is not [name, entries]"));
            }
            self.skip_reply(2)?;
            let n = self.array()?;
            entries.reserve(n.min(1024));
            for _ in 0..n {
                entries.push(self.entry()?);
            }
        }
        Ok(Ok(entries))
    }

    /// `[id, [field, value…]]` (the fields nil for an entry deleted since it was read).
    fn entry(&mut self) -> RedisResult<Entry> {
        if self.array()? != 2 {
            return Err(garbled("an entry is not [id, fields]"));
        }
        let id = self
            .string()?
            .and_then(|id| String::from_utf8(id).ok())
            .ok_or_else(|| garbled("an entry's id is not a string"))?;
        let n = self.array()?;
        let mut fields = Vec::with_capacity(n.min(64) / 2);
        for _ in 0..n / 2 {
            if let (Some(k), Some(v)) = (self.string()?, self.string()?) {
                fields.push((k, v));
            }
        }
        if n % 2 == 1 {
            self.skip_reply(3)?;
        }
        Ok(Entry { id, fields })
    }
}

/// The broker's error in an error line (without its `-`): redis-rs's, with its code.
fn server_error(line: &[u8]) -> RedisError {
    let mut reply = Vec::with_capacity(line.len() + 3);
    reply.push(b'-');
    reply.extend_from_slice(line);
    reply.extend_from_slice(b"\r\n");
    match redis::parse_redis_value(&reply) {
        Ok(redis::Value::ServerError(e)) => e.into(),
        Ok(_) => garbled("an error line that is not one"),
        Err(e) => e,
    }
}

/// A TCP connection to the first address of `host` that answers, without Nagle's delay (a
/// read and the commands before it are one small write, whose reply is waited for).
fn tcp(host: &str, port: u16) -> io::Result<TcpStream> {
    let mut failed = None;
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) => failed = Some(e),
        }
    }
    Err(failed.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address")))
}

#[cfg(all(test, unix))]
mod tests {
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    use proptest::prelude::*;

    use super::*;

    /// An entry's id and fields.
    type RawEntry = (String, Vec<(Vec<u8>, Vec<u8>)>);

    /// A connection, and the other end of its socket.
    fn pair() -> (OwnConn, UnixStream) {
        let (ours, theirs) = UnixStream::pair().expect("a socket pair");
        (OwnConn::over(Socket::Unix(ours)).unwrap(), theirs)
    }

    fn bulk(b: &[u8]) -> Vec<u8> {
        let mut out = format!("${}\r\n", b.len()).into_bytes();
        out.extend_from_slice(b);
        out.extend_from_slice(b"\r\n");
        out
    }

    /// XREADGROUP's reply with `entries` in stream `s`.
    fn read_reply(entries: &[RawEntry]) -> Vec<u8> {
        let mut out = b"*1\r\n*2\r\n".to_vec();
        out.extend(bulk(b"s"));
        out.extend(format!("*{}\r\n", entries.len()).into_bytes());
        for (id, fields) in entries {
            out.extend(b"*2\r\n");
            out.extend(bulk(id.as_bytes()));
            out.extend(format!("*{}\r\n", fields.len() * 2).into_bytes());
            for (k, v) in fields {
                out.extend(bulk(k));
                out.extend(bulk(v));
            }
        }
        out
    }

    /// What redis-rs makes of the same bytes.
    fn as_redis_rs_reads(bytes: &[u8]) -> Vec<RawEntry> {
        parse_read(redis::parse_redis_value(bytes).expect("redis-rs parses it"))
            .into_iter()
            .map(|e| (e.id, e.fields))
            .collect()
    }

    /// The reply `bytes` read, written by another thread (more than a socket's buffer
    /// holds), then the connection closed.
    fn read_all(bytes: &[u8]) -> RedisResult<RedisResult<Vec<Entry>>> {
        let (mut conn, mut theirs) = pair();
        std::thread::scope(|s| {
            s.spawn(move || {
                // The reader may stop early (an error), closing its end.
                let _ = theirs.write_all(bytes);
            });
            let reply = conn.read_reply();
            drop(conn);
            reply
        })
    }

    #[test]
    fn a_read_reads_as_redis_rs_reads_it_across_the_buffer() {
        // Bodies past the buffer, and enough entries that lines straddle its end.
        let big = vec![7u8; BUFFER * 2 + 3];
        let mut entries: Vec<_> = (0..3000)
            .map(|i| {
                let fields = vec![
                    (b"codec".to_vec(), b"json".to_vec()),
                    (b"body".to_vec(), i.to_string().into_bytes()),
                ];
                (format!("{i}-0"), fields)
            })
            .collect();
        entries[17].1[1].1 = big.clone();
        entries[2999].1[1].1 = big;
        let bytes = read_reply(&entries);
        let ours: Vec<_> = read_all(&bytes)
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|e| (e.id, e.fields))
            .collect();
        assert_eq!(ours.len(), 3000);
        assert_eq!(ours, as_redis_rs_reads(&bytes));
    }

    #[test]
    fn nothing_read_is_no_entries_and_an_error_keeps_its_code() {
        assert!(read_all(b"*-1\r\n").unwrap().unwrap().is_empty());
        let e = read_all(b"-NOGROUP No such key 's' or consumer group\r\n")
            .unwrap()
            .unwrap_err();
        assert_eq!(e.code(), Some("NOGROUP"));
        let e = read_all(b"-MOVED 3999 127.0.0.1:6381\r\n")
            .unwrap()
            .unwrap_err();
        assert_eq!(e.code(), Some("MOVED"));
    }

    #[test]
    fn the_commands_before_are_skipped_and_their_first_error_told() {
        let (mut conn, mut theirs) = pair();
        let mut replies =
            b":1\r\n-ERR first\r\n*2\r\n$1\r\na\r\n*1\r\n:5\r\n-ERR second\r\n".to_vec();
        replies.extend(read_reply(&[(
            "1-1".into(),
            vec![(b"body".to_vec(), b"x".to_vec())],
        )]));
        theirs.write_all(&replies).unwrap();
        let mut pipe = redis::pipe();
        for _ in 0..4 {
            pipe.cmd("PING");
        }
        let reply = conn.run_read(&redis::cmd("XREAD"), Some(&pipe)).unwrap();
        assert_eq!(reply.unwrap_err().detail(), Some("first"));
        // What was sent: the four commands, then the read.
        let mut expected = b"*1\r\n$4\r\nPING\r\n".repeat(4);
        expected.extend_from_slice(b"*1\r\n$5\r\nXREAD\r\n");
        let mut sent = vec![0; expected.len()];
        std::io::Read::read_exact(&mut theirs, &mut sent).unwrap();
        assert_eq!(sent, expected);
    }

    #[test]
    fn garbage_and_lengths_past_the_limits_are_errors() {
        let deep = "*1\r\n".repeat(MAX_DEPTH + 3);
        let cases: Vec<Vec<u8>> = vec![
            b"hello\r\n".to_vec(),
            b"*1\n".to_vec(),
            b"\r\n".to_vec(),
            format!("*1\r\n*2\r\n${}\r\n", MAX_BODY + 1).into_bytes(),
            format!("*{}\r\n", MAX_ITEMS + 1).into_bytes(),
            b"*18446744073709551617\r\n".to_vec(),
            b"*-2\r\n".to_vec(),
            format!("*2\r\n{deep}").into_bytes(),
            b"*1\r\n*2\r\n$1\r\nsXX".to_vec(),
            b"*1\r\n*2\r\n:1\r\n*1\r\n*2\r\n:7\r\n".to_vec(),
            vec![b'a'; MAX_LINE * 2],
            // Cut off.
            b"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-".to_vec(),
        ];
        for case in cases {
            let shown = String::from_utf8_lossy(&case[..case.len().min(60)]).into_owned();
            assert!(read_all(&case).is_err(), "{shown:?} was taken");
        }
    }

    proptest! {
        #[test]
        fn any_bytes_are_an_error_or_a_read_never_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = read_all(&bytes);
        }

        #[test]
        fn any_entries_read_as_redis_rs_reads_them(
            entries in proptest::collection::vec(
                ("[0-9]{1,5}-[0-9]{1,3}", proptest::collection::vec(
                    (proptest::collection::vec(any::<u8>(), 0..12), proptest::collection::vec(any::<u8>(), 0..40)),
                    0..4,
                )),
                0..20,
            )
        ) {
            let bytes = read_reply(&entries);
            let ours: Vec<_> = read_all(&bytes).unwrap().unwrap().into_iter().map(|e| (e.id, e.fields)).collect();
            prop_assert_eq!(&ours, &entries);
            prop_assert_eq!(ours, as_redis_rs_reads(&bytes));
        }
    }
}
