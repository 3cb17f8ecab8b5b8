//! The tracker of named shared memory (CPython's `resource_tracker`): a small helper process
//! that unlinks the names a process tree created and did not unlink, once every process of the
//! tree is gone, also when they crashed.
//!
//! The first `SharedMemory::create` in a tree starts it: a re-exec of this executable that
//! listens on an abstract Unix socket (no file to clean up). Processes connect to it (children
//! find its address in their environment), send `R<name>` when they create a name and
//! `U<name>` when they unlink one, and keep the connection for their lifetime. When the last
//! connection closes, the tracker unlinks what is left and exits. It ignores SIGINT and
//! SIGTERM, so a Ctrl-C to the tree does not stop it before the others.

use std::collections::BTreeSet;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Mutex;

use crate::local_lock::IgnorePoison;
use crate::platform;

/// Marks the tracker process; the value is its listening descriptor.
pub(crate) const ENV: &str = "MULTIPROC_TRACKER";
/// Where a process finds the tracker of its tree.
const ADDR_ENV: &str = "MULTIPROC_TRACKER_ADDR";

static CONNECTION: Mutex<Option<OwnedFd>> = Mutex::new(None);

/// Tells the tracker that this process created `name`. Best effort: without a tracker the
/// name is only unlinked by `unlink`.
pub(crate) fn register(name: &str) {
    send(b'R', name);
}

/// Tells the tracker that `name` was unlinked.
pub(crate) fn unregister(name: &str) {
    send(b'U', name);
}

fn send(op: u8, name: &str) {
    let mut conn = CONNECTION.lock().ignore_poison();
    for _attempt in 0..2 {
        if conn.is_none() {
            *conn = connect();
        }
        let Some(fd) = conn.as_ref() else { return };
        let op = [op];
        let message = [IoSlice::new(&op), IoSlice::new(name.as_bytes())];
        if platform::send_with_fds(fd.as_fd(), &message, &[]).is_ok() {
            return;
        }
        // The tracker went away (killed?): start or find another once.
        *conn = None;
    }
}

fn connect() -> Option<OwnedFd> {
    if let Ok(addr) = std::env::var(ADDR_ENV)
        && let Ok(fd) = platform::seqpacket_connect(&addr)
    {
        return Some(fd);
    }
    start().ok()
}

fn start() -> std::io::Result<OwnedFd> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let addr = format!("multiproc-tracker-{}-{nanos:08x}", platform::getpid());
    let listener = platform::seqpacket_listen(&addr)?;
    let fd = listener.as_raw_fd().to_string();
    platform::spawn_self((ENV, &fd), listener.as_fd())?;
    // The tracker owns the listener now; ours closes, and the address lives on in the child.
    drop(listener);
    let conn = platform::seqpacket_connect(&addr)?;
    platform::set_child_env(ADDR_ENV, &addr);
    Ok(conn)
}

/// The tracker's main loop, entered from the constructor of a process started with [`ENV`].
pub(crate) fn serve(listener: OwnedFd) -> ! {
    platform::ignore_interrupts();
    let mut conns: Vec<OwnedFd> = Vec::new();
    let mut names = BTreeSet::new();
    let mut ever_connected = false;
    loop {
        if ever_connected && conns.is_empty() {
            break;
        }
        let mut fds = vec![listener.as_fd()];
        fds.extend(conns.iter().map(|c| c.as_fd()));
        let Ok(ready) = platform::poll_readable(&fds, None) else {
            break;
        };
        let mut closed = Vec::new();
        for (i, _) in ready.iter().enumerate().skip(1).filter(|(_, r)| **r) {
            let mut buf = [MaybeUninit::<u8>::uninit(); 512];
            let mut received = Vec::new();
            let conn = conns[i - 1].as_fd();
            match platform::recv_with_fds(conn, &mut buf, &mut received, true) {
                Ok(0) | Err(_) => closed.push(i - 1),
                Ok(n) => {
                    // SAFETY: recvmsg initialised the first `n` bytes.
                    let bytes: Vec<u8> = buf[..n]
                        .iter()
                        .map(|b| unsafe { b.assume_init() })
                        .collect();
                    let name = String::from_utf8_lossy(&bytes[1..]).into_owned();
                    match bytes[0] {
                        b'R' => {
                            names.insert(name);
                        }
                        b'U' => {
                            names.remove(&name);
                        }
                        _ => {}
                    }
                }
            }
        }
        for i in closed.into_iter().rev() {
            conns.remove(i);
        }
        if ready[0]
            && let Ok(conn) = platform::accept(listener.as_fd())
        {
            conns.push(conn);
            ever_connected = true;
        }
    }
    for name in &names {
        if platform::shm_unlink(name).is_ok() {
            tracing::warn!(name = ?name, "unlinked shared memory that its creator left behind");
        }
    }
    platform::exit_immediately(0)
}
