//! Linux: anonymous shared memory (memfd + `mmap`), futex waits on shared words, thread
//! identities and liveness, datagram sockets for descriptors that must outlive their sender.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::{self, NonNull};
use std::sync::atomic::AtomicU32;
use std::time::Instant;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A new anonymous memory file of `len` bytes (zero-filled, pages allocated on first touch),
/// close-on-exec; it is freed when the last descriptor and mapping of it go.
pub(crate) fn memfd_create(name: &str, len: usize) -> io::Result<OwnedFd> {
    let name = CString::new(name.replace('\0', "?")).unwrap_or_default();
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    let fd = cvt(unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) })?;
    // SAFETY: memfd_create returned a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    set_len(fd.as_fd(), len)?;
    Ok(fd)
}

/// Opens (or creates) a POSIX shared-memory object `/dev/shm/<name>` like `shm_open`.
pub(crate) fn shm_open(name: &str, create: bool, len: usize) -> io::Result<OwnedFd> {
    if name.is_empty() || name.contains('/') || name.contains('\0') || name.len() > 250 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a shared memory name is 1 to 250 characters without '/' or NUL",
        ));
    }
    let path = CString::new(format!("/dev/shm/{name}")).map_err(io::Error::other)?;
    let flags = libc::O_RDWR
        | libc::O_CLOEXEC
        | libc::O_NOFOLLOW
        | if create {
            libc::O_CREAT | libc::O_EXCL
        } else {
            0
        };
    // SAFETY: `path` is a valid NUL-terminated string; mode is a plain integer.
    let fd = cvt(unsafe { libc::open(path.as_ptr(), flags, 0o600 as libc::c_uint) })?;
    // SAFETY: open returned a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if create && let Err(e) = set_len(fd.as_fd(), len) {
        let _ = shm_unlink(name);
        return Err(e);
    }
    Ok(fd)
}

/// Removes the name `/dev/shm/<name>`; mappings and descriptors stay valid.
pub(crate) fn shm_unlink(name: &str) -> io::Result<()> {
    if name.is_empty() || name.contains('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad shared memory name",
        ));
    }
    std::fs::remove_file(format!("/dev/shm/{name}"))
}

fn set_len(fd: BorrowedFd<'_>, len: usize) -> io::Result<()> {
    let len = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "size too large"))?;
    // SAFETY: ftruncate on a descriptor the borrow keeps open.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), len) }).map(drop)
}

/// The size in bytes of the file behind `fd`.
pub(crate) fn file_len(fd: BorrowedFd<'_>) -> io::Result<usize> {
    // SAFETY: an all-zero `stat` is a valid out-value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer; the borrow keeps `fd` open.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    usize::try_from(st.st_size).map_err(io::Error::other)
}

/// Maps `len` bytes of `fd` shared and read-write. The mapping stays valid after `fd` closes.
/// With `populate` every page is mapped now, in one call, instead of one fault at a time on
/// first touch.
pub(crate) fn map_shared(
    fd: BorrowedFd<'_>,
    len: usize,
    populate: bool,
) -> io::Result<NonNull<u8>> {
    if len == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "cannot map 0 bytes",
        ));
    }
    // SAFETY: a fresh mapping chosen by the kernel; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | if populate { libc::MAP_POPULATE } else { 0 },
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned null"))
}

/// Maps every page of a live mapping of ours now, writable, instead of one fault at a time on
/// first touch. Only a hint: a kernel without `MADV_POPULATE_WRITE` (before 5.14) declines.
pub(crate) fn populate(ptr: NonNull<u8>, len: usize) {
    /// `MADV_POPULATE_WRITE`, which the libc crate does not name yet.
    const MADV_POPULATE_WRITE: libc::c_int = 23;
    // SAFETY: madvise only changes which pages are present; `(ptr, len)` is a mapping of ours
    // (the callers pass a whole segment), so no one else's memory is touched.
    unsafe { libc::madvise(ptr.as_ptr().cast(), len, MADV_POPULATE_WRITE) };
}

/// Unmaps a mapping made by [`map_shared`].
///
/// # Safety
/// `(ptr, len)` must be exactly a live mapping from [`map_shared`] that nothing uses anymore.
pub(crate) unsafe fn unmap(ptr: NonNull<u8>, len: usize) {
    // SAFETY: guaranteed by the caller.
    unsafe { libc::munmap(ptr.as_ptr().cast(), len) };
}

/// How a futex wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FutexWait {
    /// Woken, interrupted, or the word no longer held the expected value: look again.
    Woken,
    /// The deadline passed.
    TimedOut,
}

/// Sleeps while `word` holds `expected`, until woken or `deadline` (`CLOCK_MONOTONIC`, as
/// `Instant` is). The futex is process-shared: the word may live in shared memory.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, deadline: Option<Instant>) -> FutexWait {
    let timeout = match deadline {
        None => None,
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return FutexWait::TimedOut;
            }
            Some(libc::timespec {
                tv_sec: left.as_secs().min(i64::MAX as u64) as libc::time_t,
                tv_nsec: left.subsec_nanos() as libc::c_long,
            })
        }
    };
    let ts = timeout
        .as_ref()
        .map_or(ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a live, aligned 32-bit atomic; `ts` is null or points to a timespec on
    // this frame. FUTEX_WAIT (not _PRIVATE) keys on the physical page, so it works across
    // processes mapping the same memory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts,
            ptr::null::<u32>(),
            0u32,
        )
    };
    if r == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::ETIMEDOUT) {
        FutexWait::TimedOut
    } else {
        FutexWait::Woken
    }
}

/// Wakes up to `count` threads (in any process) sleeping on `word`.
pub(crate) fn futex_wake(word: &AtomicU32, count: u32) {
    let count = count.min(i32::MAX as u32);
    // SAFETY: `word` is a live, aligned 32-bit atomic; FUTEX_WAKE only reads its address.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            count,
            ptr::null::<libc::timespec>(),
            ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Bumped in the child of every `fork` (by an atfork handler), so that ids cached before the
/// fork are not trusted after it.
static FORK_GENERATION: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

extern "C" fn after_fork_in_child() {
    // An atomic add: async-signal-safe, as a forked child of a threaded parent requires.
    FORK_GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// `(pid, tid)` of the calling thread, cached: lock words record them on every acquire, and
/// `getpid`/`gettid` are system calls.
#[inline]
pub(crate) fn current_ids() -> (u32, u32) {
    use std::cell::Cell;
    thread_local! {
        /// `(fork generation, pid, tid)`; generation `u32::MAX` means not yet known.
        static IDS: Cell<(u32, u32, u32)> = const { Cell::new((u32::MAX, 0, 0)) };
    }
    let generation = FORK_GENERATION.load(std::sync::atomic::Ordering::Relaxed);
    IDS.with(|ids| {
        let (g, pid, tid) = ids.get();
        if g == generation {
            return (pid, tid);
        }
        static REGISTER: std::sync::Once = std::sync::Once::new();
        REGISTER.call_once(|| {
            // SAFETY: registers a handler that only does an atomic add; it stays valid for
            // the life of the program (a plain function).
            unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
        });
        // SAFETY: getpid and gettid have no preconditions and cannot fail.
        let fresh = unsafe { (libc::getpid() as u32, libc::gettid() as u32) };
        ids.set((
            FORK_GENERATION.load(std::sync::atomic::Ordering::Relaxed),
            fresh.0,
            fresh.1,
        ));
        fresh
    })
}

/// The calling thread's id (unique across the system while the thread lives).
#[inline]
pub(crate) fn gettid() -> u32 {
    current_ids().1
}

/// The calling process's id, cached.
#[inline]
pub(crate) fn getpid_cached() -> u32 {
    current_ids().0
}

/// Whether thread (or process) `tid` still runs: it exists and is neither a zombie nor dead.
/// A thread of a killed process that its parent has not reaped yet counts as dead.
pub(crate) fn thread_alive(tid: u32) -> bool {
    if tid == 0 {
        return false;
    }
    // /proc/<tid> resolves any thread id, not only process leaders.
    match std::fs::read_to_string(format!("/proc/{tid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .unwrap_or("?");
            !matches!(state, "Z" | "X" | "x")
        }
        // Not found: it is gone. Anything else (no /proc?): assume it lives; never steal.
        Err(e) => e.kind() != io::ErrorKind::NotFound,
    }
}

/// A connected pair of Unix seqpacket sockets (close-on-exec): messages keep their boundaries
/// and the descriptors they carry stay in the kernel until someone receives them.
pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid out-array of two ints, as socketpair requires.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: socketpair succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Makes socket operations on `fd` (and on every duplicate of it, in any process) non-blocking.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor the borrow keeps open.
    unsafe {
        let flags = cvt(libc::fcntl(fd.as_raw_fd(), libc::F_GETFL))?;
        cvt(libc::fcntl(
            fd.as_raw_fd(),
            libc::F_SETFL,
            flags | libc::O_NONBLOCK,
        ))?;
    }
    Ok(())
}

/// Waits until `fd` can be written, or `deadline`; whether it can.
pub(crate) fn poll_writable(fd: BorrowedFd<'_>, deadline: Option<Instant>) -> io::Result<bool> {
    loop {
        let ms = match deadline {
            None => -1,
            Some(d) => d
                .saturating_duration_since(Instant::now())
                .as_micros()
                .div_ceil(1000)
                .min(i32::MAX as u128) as libc::c_int,
        };
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one live pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n > 0 {
            return Ok(true);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(false);
        }
    }
}

fn abstract_addr(name: &str) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = name.as_bytes();
    // Abstract namespace: a leading NUL, then the name (no file, gone with the socket).
    if bytes.len() + 1 > addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket name too long",
        ));
    }
    for (dst, src) in addr.sun_path[1..].iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + 1 + bytes.len();
    Ok((addr, len as libc::socklen_t))
}

fn seqpacket_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket takes plain integers and returns a new descriptor or -1.
    let fd =
        cvt(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A seqpacket socket listening on the abstract Unix address `name`.
pub(crate) fn seqpacket_listen(name: &str) -> io::Result<OwnedFd> {
    let fd = seqpacket_socket()?;
    let (addr, len) = abstract_addr(name)?;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes; the descriptor is open.
    cvt(unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len) })?;
    // SAFETY: listen on an open, bound socket.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), 64) })?;
    Ok(fd)
}

/// Connects a seqpacket socket to the abstract Unix address `name`.
pub(crate) fn seqpacket_connect(name: &str) -> io::Result<OwnedFd> {
    let fd = seqpacket_socket()?;
    let (addr, len) = abstract_addr(name)?;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes; the descriptor is open.
    cvt(unsafe { libc::connect(fd.as_raw_fd(), (&raw const addr).cast(), len) })?;
    Ok(fd)
}

/// Accepts one connection on a listening socket.
pub(crate) fn accept(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: accept4 with null address pointers on an open listening socket.
    let fd = cvt(unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            ptr::null_mut(),
            ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    })?;
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes SIGINT and SIGTERM ignored (a helper process that must outlive a Ctrl-C).
pub(crate) fn ignore_interrupts() {
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
    }
}

#[cfg(feature = "manager")]
/// Asks the kernel to acknowledge the next received data at once instead of delaying the ACK
/// (not sticky: it applies until the kernel decides otherwise). A CPython peer sends two small
/// writes in a row without `TCP_NODELAY`; without this its second write waits ~40 ms.
pub(crate) fn set_quick_ack(sock: BorrowedFd<'_>) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live int; the borrow keeps
    // the socket open.
    cvt(unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

#[cfg(feature = "manager")]
/// Makes a listening socket's queue of connections not yet accepted as long as the system
/// allows (`net.core.somaxconn`, 4096 on current kernels; std listens with 128). Calling
/// `listen` again on a listening socket only changes its backlog.
pub(crate) fn listen_deepest(sock: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: listen on a socket the borrow keeps open; the kernel caps the backlog at
    // somaxconn.
    cvt(unsafe { libc::listen(sock.as_raw_fd(), libc::c_int::MAX) }).map(drop)
}

#[cfg(feature = "manager")]
/// One `recv` that does not wait (`MSG_DONTWAIT`): `WouldBlock` when nothing is there.
pub(crate) fn recv_nonblocking(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a live, writable buffer of `buf.len()` bytes; the borrow keeps the
    // socket open.
    let n = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
