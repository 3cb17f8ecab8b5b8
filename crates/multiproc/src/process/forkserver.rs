//! The fork server: a single-threaded copy of this executable that forks children on request.
//!
//! It is started (by re-exec, so it is clean and single-threaded) the first time a process with
//! [`StartMethod::ForkServer`](crate::StartMethod::ForkServer) starts, and serves every later one.
//! A request carries the child's control socket and a status socket; the server forks, the child
//! enters the ordinary child entry point on its control socket, and the server answers with the
//! child's pid and a pidfd. When the child ends the server reaps it and writes its exit status
//! to the status socket. The server exits when its parent closes the request socket (the parent
//! exited or died), so it never outlives the program.
//!
//! Status message on the status socket: 8 bytes, `[kind, 0, 0, 0, value: i32 le]` with kind 0 =
//! exited with code `value`, 1 = killed by signal `value`.

use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::connection::frame::{self, FrameKind, FrameReader};
use crate::error::{Error, Result};
use crate::platform::{self, ChildHandle, ExitStatus, Forked};
use crate::sync::lock;

pub(crate) const ENV: &str = "MULTIPROC_FORKSERVER";

#[derive(Serialize, Deserialize)]
struct Request {
    /// Reserved for options; the descriptors (control, status) ride with the frame.
    version: u32,
}

#[derive(Serialize, Deserialize)]
enum Reply {
    /// Forked: the pidfd rides with the frame.
    Started { pid: i32 },
    /// fork or pidfd_open failed.
    Failed { message: String },
}

struct Client {
    sock: OwnedFd,
    reader: FrameReader,
    /// The server's pid: reaped here if it dies while we live (otherwise the kernel's init
    /// reaps it once we exit).
    pid: i32,
}

static SERVER: Mutex<Option<Client>> = Mutex::new(None);

/// Forgets the server connection (in a freshly forked child: the server is its parent's).
pub(crate) fn forget() {
    *lock(&SERVER) = None;
}

/// Asks the server (starting it if needed) for a child running on `control`. Returns its pid,
/// a pidfd, and the socket its exit status will arrive on.
pub(crate) fn start_child(control: &OwnedFd) -> Result<(i32, ChildHandle, OwnedFd)> {
    let mut server = lock(&SERVER);
    for attempt in 0..2 {
        if server.is_none() {
            *server = Some(launch()?);
        }
        let client = server.as_mut().expect("just set");
        match request(client, control) {
            Ok(started) => return Ok(started),
            // The server died (killed by someone): reap it, and start a new one once.
            Err(e) if attempt == 0 && e.kind() == crate::ErrorKind::Closed => {
                if let Some(dead) = server.take() {
                    platform::kill_and_reap(dead.pid);
                }
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("the loop returns on its second attempt")
}

fn launch() -> Result<Client> {
    let (ours, theirs) =
        platform::socketpair().map_err(|e| Error::io("fork server: socketpair", e))?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&theirs).to_string();
    let pid = platform::spawn_self((ENV, &fd), theirs.as_fd())
        .map_err(|e| Error::io("fork server: spawn", e))?;
    // While we live the server lives (it exits when `ours` closes); a server that dies
    // before is reaped when it is found dead.
    Ok(Client {
        sock: ours,
        reader: FrameReader::new(1 << 20),
        pid,
    })
}

fn request(client: &mut Client, control: &OwnedFd) -> Result<(i32, ChildHandle, OwnedFd)> {
    const WHAT: &str = "fork server";
    let (status_ours, status_theirs) =
        platform::socketpair().map_err(|e| Error::io("fork server: socketpair", e))?;
    let payload = postcard::to_allocvec(&Request { version: 1 })
        .map_err(|e| Error::serialization(WHAT, e))?;
    frame::write_frame(
        client.sock.as_fd(),
        FrameKind::Value,
        &payload,
        &[control.as_fd(), status_theirs.as_fd()],
    )
    .map_err(|e| match e.kind() {
        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => {
            Error::Closed { what: WHAT.into() }
        }
        _ => Error::io("fork server: request", e),
    })?;
    drop(status_theirs);
    let mut reply = client
        .reader
        .read(client.sock.as_fd(), None, true)
        .map_err(|e| match e {
            // A server killed with our request unread resets the connection.
            frame::ReadError::Eof => Error::Closed { what: WHAT.into() },
            frame::ReadError::Io(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                Error::Closed { what: WHAT.into() }
            }
            other => Error::protocol(WHAT, format!("{other:?}")),
        })?;
    match postcard::from_bytes::<Reply>(&reply.payload)
        .map_err(|e| Error::serialization(WHAT, e))?
    {
        Reply::Started { pid } => {
            let pidfd = reply
                .fds
                .pop()
                .ok_or_else(|| Error::protocol(WHAT, "reply without a pidfd"))?;
            Ok((pid, ChildHandle::from_fd(pidfd), status_ours))
        }
        Reply::Failed { message } => Err(Error::io(
            "fork server: fork",
            std::io::Error::other(message),
        )),
    }
}

/// Reads the exit status a fork server wrote, without blocking. End of file without a status
/// (the server died) reads as exit code 255.
pub(crate) fn try_read_status(sock: BorrowedFd<'_>) -> std::io::Result<Option<ExitStatus>> {
    let mut buf = [MaybeUninit::<u8>::uninit(); 8];
    match platform::recv_with_fds(sock, &mut buf, &mut Vec::new(), true) {
        Ok(8) => {
            // SAFETY: recv initialised all 8 bytes.
            let b: [u8; 8] = buf.map(|b| unsafe { b.assume_init() });
            let value = i32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            Ok(Some(if b[0] == 0 {
                ExitStatus::Exited(value)
            } else {
                ExitStatus::Signaled(value)
            }))
        }
        Ok(_) => Ok(Some(ExitStatus::Exited(255))),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

struct Served {
    child: ChildHandle,
    status: OwnedFd,
}

/// The server's main loop, entered from the constructor of a process started with [`ENV`].
/// Each forked child goes on in `child_main` with its control socket.
pub(crate) fn serve(sock: OwnedFd, child_main: fn(OwnedFd) -> !) -> ! {
    platform::ignore_sigpipe();
    let _ = platform::stdin_to_devnull();
    let mut reader = FrameReader::new(1 << 20);
    let mut children: Vec<Served> = Vec::new();
    loop {
        let mut fds = vec![sock.as_fd()];
        fds.extend(children.iter().map(|c| c.child.as_fd()));
        let ready = match platform::poll_readable(&fds, None) {
            Ok(r) => r,
            Err(_) => platform::exit_immediately(1),
        };
        // Reap first so that finished children's descriptors are closed before forking.
        let mut i = children.len();
        while i > 0 {
            i -= 1;
            if !ready[i + 1] {
                continue;
            }
            if let Ok(Some(status)) = children[i].child.try_wait() {
                let child = children.swap_remove(i);
                let (kind, value) = match status {
                    ExitStatus::Exited(c) => (0u8, c),
                    ExitStatus::Signaled(s) => (1u8, s),
                };
                let mut msg = [kind, 0, 0, 0, 0, 0, 0, 0];
                msg[4..].copy_from_slice(&value.to_le_bytes());
                let _ = platform::send_with_fds(child.status.as_fd(), &[IoSlice::new(&msg)], &[]);
            }
        }
        if !ready[0] {
            continue;
        }
        let mut request = match reader.read(sock.as_fd(), None, false) {
            Ok(frame) => frame,
            // The parent is gone (or talks nonsense): leave. Daemon children follow through
            // their own lifelines.
            Err(_) => platform::exit_immediately(0),
        };
        if request.fds.len() != 2 {
            platform::exit_immediately(1);
        }
        let status = request.fds.pop().expect("two descriptors");
        let control = request.fds.pop().expect("two descriptors");
        // SAFETY: the server is single-threaded (it runs from a constructor before `main` and
        // never starts a thread), so the child inherits no lock held by another thread.
        match unsafe { platform::fork() } {
            Ok(Forked::Child) => {
                drop(children);
                drop(sock);
                drop(status);
                child_main(control);
            }
            Ok(Forked::Parent(pid)) => {
                drop(control);
                let reply = ChildHandle::open(pid);
                let (msg, child) = match reply {
                    Ok(child) => (Reply::Started { pid }, Some(child)),
                    Err(e) => (
                        Reply::Failed {
                            message: e.to_string(),
                        },
                        None,
                    ),
                };
                let payload = postcard::to_allocvec(&msg).unwrap_or_default();
                let dup = child
                    .as_ref()
                    .and_then(|c| c.as_fd().try_clone_to_owned().ok());
                let fds: Vec<BorrowedFd<'_>> = dup.iter().map(|f| f.as_fd()).collect();
                if frame::write_frame(sock.as_fd(), FrameKind::Value, &payload, &fds).is_err() {
                    platform::exit_immediately(0);
                }
                if let Some(child) = child {
                    children.push(Served { child, status });
                }
            }
            Err(e) => {
                let payload = postcard::to_allocvec(&Reply::Failed {
                    message: e.to_string(),
                })
                .unwrap_or_default();
                if frame::write_frame(sock.as_fd(), FrameKind::Value, &payload, &[]).is_err() {
                    platform::exit_immediately(0);
                }
            }
        }
    }
}
