//! Linux: sockets with descriptor passing, pidfds, posix_spawn, fork, prctl.

use std::ffi::{CStr, CString, OsString};
use std::io::{self, IoSlice};
use std::mem::{self, MaybeUninit};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::ptr;
use std::time::{Duration, Instant};

pub(crate) const SIGTERM: i32 = libc::SIGTERM;
pub(crate) const SIGKILL: i32 = libc::SIGKILL;

/// The most descriptors one message may carry (the kernel's `SCM_MAX_FD`).
pub(crate) const MAX_FDS_PER_MESSAGE: usize = 253;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// How a child process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExitStatus {
    /// It called `exit(code)`.
    Exited(i32),
    /// A signal ended it.
    Signaled(i32),
}

impl ExitStatus {
    /// CPython's `exitcode`: the exit code, or minus the signal number.
    pub(crate) fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(code) => code,
            ExitStatus::Signaled(signal) => -signal,
        }
    }
}

pub(crate) fn getpid() -> i32 {
    std::process::id() as i32
}

pub(crate) fn getppid() -> i32 {
    // SAFETY: getppid has no preconditions and cannot fail.
    unsafe { libc::getppid() }
}

/// Whether the calling thread is the process's first thread (the one whose exit would fire a
/// child's `PR_SET_PDEATHSIG`; the signal follows the parent *thread*, not the process).
pub(crate) fn is_main_thread() -> bool {
    // SAFETY: gettid has no preconditions and cannot fail.
    let tid = unsafe { libc::gettid() };
    tid == getpid()
}

/// The number of threads of this process, from `/proc/self/stat`.
pub(crate) fn thread_count() -> io::Result<usize> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // The command name (field 2) is in parentheses and may hold spaces; count after its end.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    after
        .split_whitespace()
        .nth(17) // field 20 overall: num_threads
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "cannot parse /proc/self/stat"))
}

/// A connected pair of Unix stream sockets, both close-on-exec.
pub(crate) fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid out-array of two ints, as socketpair requires.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: socketpair succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sets or clears `FD_CLOEXEC`.
pub(crate) fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    // SAFETY: F_GETFD/F_SETFD on a descriptor the borrow keeps open.
    unsafe {
        let flags = cvt(libc::fcntl(fd.as_raw_fd(), libc::F_GETFD))?;
        let flags = if on {
            flags | libc::FD_CLOEXEC
        } else {
            flags & !libc::FD_CLOEXEC
        };
        cvt(libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, flags))?;
    }
    Ok(())
}

/// Shuts down one or both directions of a socket.
pub(crate) fn shutdown(fd: BorrowedFd<'_>, read: bool, write: bool) -> io::Result<()> {
    let how = match (read, write) {
        (true, true) => libc::SHUT_RDWR,
        (true, false) => libc::SHUT_RD,
        (false, true) => libc::SHUT_WR,
        (false, false) => return Ok(()),
    };
    // SAFETY: shutdown on a descriptor the borrow keeps open.
    cvt(unsafe { libc::shutdown(fd.as_raw_fd(), how) }).map(drop)
}

const CMSG_SPACE_MAX: usize = 8 * (MAX_FDS_PER_MESSAGE + 8);

/// `sendmsg` of `bufs`, with `fds` attached as `SCM_RIGHTS` when not empty. Never raises SIGPIPE.
/// Returns the bytes written (possibly fewer than offered; the descriptors go with the first byte).
pub(crate) fn send_with_fds(
    sock: BorrowedFd<'_>,
    bufs: &[IoSlice<'_>],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    assert!(
        fds.len() <= MAX_FDS_PER_MESSAGE,
        "caller bounds the descriptor count"
    );
    let mut cmsg_buf = [0u64; CMSG_SPACE_MAX / 8];
    // SAFETY: an all-zero msghdr is a valid empty message header.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec; // IoSlice is ABI-compatible with iovec
    msg.msg_iovlen = bufs.len();
    if !fds.is_empty() {
        let payload = mem::size_of_val(fds) as u32;
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
        msg.msg_control = cmsg_buf.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: msg_control points at `space` <= CMSG_SPACE_MAX zeroed, aligned bytes, so the
        // first header and its data area lie inside `cmsg_buf`.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as usize;
            let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
            for (i, fd) in fds.iter().enumerate() {
                data.add(i).write_unaligned(fd.as_raw_fd());
            }
        }
    }
    loop {
        // SAFETY: `msg` describes live buffers (`bufs`, `cmsg_buf`) for the whole call.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        match cvt_size(n) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// One `recvmsg` into `buf`; descriptors that arrive are appended to `fds` (close-on-exec).
/// `Ok(0)` is end of file. With `nonblocking`, returns `WouldBlock` when nothing is there.
pub(crate) fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [MaybeUninit<u8>],
    fds: &mut Vec<OwnedFd>,
    nonblocking: bool,
) -> io::Result<usize> {
    let mut cmsg_buf = [0u64; CMSG_SPACE_MAX / 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty message header.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg_buf.as_mut_ptr().cast();
    msg.msg_controllen = CMSG_SPACE_MAX;
    let flags = libc::MSG_CMSG_CLOEXEC | if nonblocking { libc::MSG_DONTWAIT } else { 0 };
    let n = loop {
        // SAFETY: `msg` describes `buf` and `cmsg_buf`, both live and writable for the call.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, flags) };
        match cvt_size(n) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => break other?,
        }
    };
    // SAFETY: the kernel filled msg_control with msg_controllen bytes of well-formed cmsg
    // headers; CMSG_FIRSTHDR/NXTHDR walk only within them.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let bytes = (*cmsg).cmsg_len - (data as usize - cmsg as usize);
                for i in 0..bytes / mem::size_of::<RawFd>() {
                    // The kernel installed these descriptors for us: we own them now.
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "too many descriptors in one message",
        ));
    }
    Ok(n)
}

/// Sends `bytes` on a stream socket without waiting for room (`WouldBlock` when the
/// socket buffer is full) and without raising SIGPIPE.
pub(crate) fn send_nonblocking(sock: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `bytes` is live and readable for its length for the whole call.
        let n = unsafe {
            libc::send(
                sock.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        match cvt_size(n) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// The next byte waiting on a socket, without waiting: `Ok(None)` at end of file,
/// `WouldBlock` when none is there. With `peek` the byte stays for the next read.
pub(crate) fn recv_byte(sock: BorrowedFd<'_>, peek: bool) -> io::Result<Option<u8>> {
    let mut byte = 0u8;
    let flags = libc::MSG_DONTWAIT | if peek { libc::MSG_PEEK } else { 0 };
    loop {
        // SAFETY: one writable byte, live for the call.
        let n = unsafe { libc::recv(sock.as_raw_fd(), (&raw mut byte).cast(), 1, flags) };
        match cvt_size(n) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(byte)),
        }
    }
}

/// Whether the other end of a connected socket is gone (every copy of it closed), without
/// waiting.
pub(crate) fn hung_up(sock: BorrowedFd<'_>) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    loop {
        // SAFETY: one live pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        match cvt(n) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
            Ok(_) => return Ok(pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0),
        }
    }
}

/// Waits until one of `fds` is readable (or hung up). Returns which are ready; all false on
/// timeout. `None` waits forever.
pub(crate) fn poll_readable(
    fds: &[BorrowedFd<'_>],
    timeout: Option<Duration>,
) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let ms = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                // Round up so that a short wait does not spin at 0 ms.
                left.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int
            }
        };
        // SAFETY: `pfds` is a live array of `pfds.len()` pollfd structs.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
        match cvt(n) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
            Ok(0) if deadline.is_some_and(|d| Instant::now() < d) => continue,
            Ok(_) => return Ok(pfds.iter().map(|p| p.revents != 0).collect()),
        }
    }
}

/// A pidfd for `pid`, which must be our child not yet reaped (or a process we know lives).
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends `signal` through a pidfd (no pid-reuse race). A process that already exited is not an
/// error.
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    // SAFETY: pidfd_send_signal with a null siginfo and no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            ptr::null::<u8>(),
            0,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}

/// Kills our child `pid` (if it still runs) and reaps it, so that it leaves no zombie.
pub(crate) fn kill_and_reap(pid: i32) {
    // SAFETY: kill takes a pid and a signal; `pid` is a child of ours not yet reaped (only
    // this call reaps it), so it cannot have been recycled.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &raw mut status, 0) };
        if r != -1 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return; // reaped, or someone else did (ECHILD)
        }
    }
}

/// Reaps the child behind `pidfd` if it has ended; `None` while it runs.
pub(crate) fn try_wait_pidfd(pidfd: BorrowedFd<'_>) -> io::Result<Option<ExitStatus>> {
    const P_PIDFD: libc::idtype_t = 3;
    // SAFETY: an all-zero siginfo_t is valid; waitid fills it.
    let mut info: libc::siginfo_t = unsafe { mem::zeroed() };
    loop {
        // SAFETY: `info` is a valid out-pointer; the pidfd is open for the call.
        let r = unsafe {
            libc::waitid(
                P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG,
            )
        };
        match cvt(r) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
            Ok(_) => break,
        }
    }
    // SAFETY: waitid succeeded, so si_pid/si_status are the fields it fills for SIGCHLD info.
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(match info.si_code {
        libc::CLD_EXITED => ExitStatus::Exited(status),
        _ => ExitStatus::Signaled(status),
    }))
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in argument"))
}

/// Variables every process started by [`spawn_self`] gets in its environment besides ours
/// (we never change our own environment: that is unsound once threads run).
static CHILD_ENV: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

/// Adds (or replaces) a variable for the environment of every child started from now on.
pub(crate) fn set_child_env(key: &str, value: &str) {
    let mut vars = CHILD_ENV
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    vars.retain(|(k, _)| k != key);
    vars.push((key.to_string(), value.to_string()));
}

/// Starts a fresh copy of this executable (`/proc/self/exe`) with `env` added to the
/// environment, `keep` inherited at the same descriptor number and stdin on `/dev/null`.
pub(crate) fn spawn_self(env: (&str, &str), keep: BorrowedFd<'_>) -> io::Result<i32> {
    let argv0 = std::env::args_os()
        .next()
        .unwrap_or_else(|| OsString::from("multiproc-child"));
    let argv_owned = [cstring(argv0.as_bytes())?, cstring(b"--multiproc-child")?];
    let mut argv: Vec<*mut libc::c_char> =
        argv_owned.iter().map(|a| a.as_ptr() as *mut _).collect();
    argv.push(ptr::null_mut());
    let mut env_owned = Vec::new();
    let extra = CHILD_ENV
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    for (k, v) in &extra {
        env_owned.push(cstring(format!("{k}={v}").as_bytes())?);
    }
    for (k, v) in std::env::vars_os() {
        if k.as_bytes() == env.0.as_bytes()
            || extra.iter().any(|(e, _)| e.as_bytes() == k.as_bytes())
        {
            continue;
        }
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        env_owned.push(cstring(&kv)?);
    }
    env_owned.push(cstring(format!("{}={}", env.0, env.1).as_bytes())?);
    let mut envp: Vec<*mut libc::c_char> = env_owned.iter().map(|a| a.as_ptr() as *mut _).collect();
    envp.push(ptr::null_mut());
    let exe: &CStr = c"/proc/self/exe";

    let mut actions = MaybeUninit::<libc::posix_spawn_file_actions_t>::uninit();
    let mut attr = MaybeUninit::<libc::posix_spawnattr_t>::uninit();
    // SAFETY: init functions fill the uninitialised structs; each is destroyed below exactly
    // once; every pointer handed to posix_spawn (exe, argv, envp) stays alive for the call.
    unsafe {
        check_spawn(libc::posix_spawn_file_actions_init(actions.as_mut_ptr()))?;
        let mut actions = SpawnActions(actions.assume_init());
        // dup2(fd, fd) clears FD_CLOEXEC in the child (glibc >= 2.29, musl).
        check_spawn(libc::posix_spawn_file_actions_adddup2(
            &mut actions.0,
            keep.as_raw_fd(),
            keep.as_raw_fd(),
        ))?;
        check_spawn(libc::posix_spawn_file_actions_addopen(
            &mut actions.0,
            0,
            c"/dev/null".as_ptr(),
            libc::O_RDONLY,
            0,
        ))?;
        check_spawn(libc::posix_spawnattr_init(attr.as_mut_ptr()))?;
        let mut attr = SpawnAttr(attr.assume_init());
        let mut empty: libc::sigset_t = mem::zeroed();
        libc::sigemptyset(&mut empty);
        check_spawn(libc::posix_spawnattr_setsigmask(&mut attr.0, &empty))?;
        check_spawn(libc::posix_spawnattr_setflags(
            &mut attr.0,
            libc::POSIX_SPAWN_SETSIGMASK as _,
        ))?;
        let mut pid: libc::pid_t = 0;
        check_spawn(libc::posix_spawn(
            &mut pid,
            exe.as_ptr(),
            &actions.0,
            &attr.0,
            argv.as_ptr(),
            envp.as_ptr(),
        ))?;
        Ok(pid)
    }
}

struct SpawnActions(libc::posix_spawn_file_actions_t);
impl Drop for SpawnActions {
    fn drop(&mut self) {
        // SAFETY: constructed only after a successful init.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut self.0) };
    }
}
struct SpawnAttr(libc::posix_spawnattr_t);
impl Drop for SpawnAttr {
    fn drop(&mut self) {
        // SAFETY: constructed only after a successful init.
        unsafe { libc::posix_spawnattr_destroy(&mut self.0) };
    }
}

fn check_spawn(code: libc::c_int) -> io::Result<()> {
    if code == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(code))
    }
}

/// What `fork` returned on this side.
pub(crate) enum Forked {
    /// We are the parent; the child has this pid.
    Parent(i32),
    /// We are the new child.
    Child,
}

/// `fork()`.
///
/// # Safety
/// The calling process must be single-threaded, or the child must restrict itself to
/// async-signal-safe calls until it execs: locks held by other threads stay locked forever in
/// the child.
pub(crate) unsafe fn fork() -> io::Result<Forked> {
    // SAFETY: the caller upholds the single-thread requirement stated above.
    match cvt(unsafe { libc::fork() })? {
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid)),
    }
}

/// `prctl(PR_SET_PDEATHSIG, signal)`: the kernel sends `signal` when the thread that created
/// this process ends.
pub(crate) fn set_parent_death_signal(signal: i32) -> io::Result<()> {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a plain integer argument.
    cvt(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) }).map(drop)
}

/// Ignores SIGPIPE, as the Rust runtime does before `main` (writes to a closed pipe then fail
/// with `EPIPE` instead of killing the process).
/// Tells the allocator of a process that keeps allocating and freeing the same large buffers
/// (a pool worker, chunk after chunk) to keep freed memory instead of giving it back to the
/// kernel at once: otherwise glibc trims the heap top past 128 KiB after each free, and every
/// chunk pays a page fault per 4 KiB to get the memory back. Memory stays with the process up
/// to 64 MiB above its peak. `warm` bytes are touched and freed at once, so that the first
/// chunks find their memory mapped already. Only glibc has these knobs; elsewhere this does
/// nothing.
pub(crate) fn keep_freed_memory(warm: usize) {
    #[cfg(target_env = "gnu")]
    {
        const KEEP: libc::c_int = 64 << 20;
        // SAFETY: mallopt only changes glibc's tuning parameters; any value is accepted, and
        // both are set before the worker allocates its chunks.
        unsafe {
            libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP);
            libc::mallopt(libc::M_MMAP_THRESHOLD, KEEP);
        }
        // Not zeroes: calloc'd fresh memory would not be touched.
        let touched = vec![1u8; warm];
        std::hint::black_box(&touched);
    }
    #[cfg(not(target_env = "gnu"))]
    let _ = warm;
}

pub(crate) fn ignore_sigpipe() {
    // SAFETY: installing SIG_IGN for SIGPIPE has no memory preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// Points fd 0 at `/dev/null`.
pub(crate) fn stdin_to_devnull() -> io::Result<()> {
    let null = std::fs::File::open("/dev/null")?;
    // SAFETY: dup2 onto fd 0 replaces stdin; `null` stays open for the call.
    cvt(unsafe { libc::dup2(null.as_raw_fd(), 0) }).map(drop)
}

/// Ends the process at once: no atexit handlers, no destructors, no stdio flush.
pub(crate) fn exit_immediately(code: i32) -> ! {
    // SAFETY: _exit never returns and has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Registers `f` to run at normal process exit (`exit()` or return from `main`).
pub(crate) fn at_exit(f: extern "C" fn()) -> io::Result<()> {
    // SAFETY: `f` is a plain function with the C ABI that lives for the whole program.
    cvt(unsafe { libc::atexit(f) }).map(drop)
}

/// The device, inode, size and modification time of the running executable: two processes
/// that print the same string run the same file.
pub(crate) fn exe_identity() -> io::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata("/proc/self/exe")?;
    Ok(format!(
        "{}:{}:{}:{}.{}",
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec()
    ))
}

/// Reads the descriptor number in environment variable `name` and removes the variable, so
/// that it does not leak into grandchildren.
///
/// # Safety
/// Must run while the process is single-threaded (from a constructor before `main`): it
/// modifies the environment.
pub(crate) unsafe fn take_env(name: &str) -> Option<String> {
    let value = std::env::var(name).ok()?;
    // SAFETY: the caller guarantees no other thread reads or writes the environment now.
    unsafe { std::env::remove_var(name) };
    Some(value)
}

/// Adopts descriptor `fd` handed down by the parent.
///
/// # Safety
/// `fd` must be open and owned by nobody else in this process.
pub(crate) unsafe fn adopt_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: guaranteed by the caller.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Whether `fd` is an open descriptor.
pub(crate) fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only queries the descriptor table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Defines `static $name`, a function pointer the loader calls before `main` (an
/// `.init_array` entry on ELF systems): what lets every binary linking the crate serve as a
/// child process. The caller keeps the static reachable (`black_box(&$name)`) so that the
/// linker keeps it.
macro_rules! run_before_main {
    ($name:ident = $f:path) => {
        #[used]
        #[unsafe(link_section = ".init_array")]
        pub(crate) static $name: extern "C" fn() = {
            extern "C" fn before_main() {
                $f();
            }
            before_main
        };
    };
}
pub(crate) use run_before_main;

/// What the fault handler of [`report_stack_overflow`] needs, set before it is installed.
mod overflow {
    use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicUsize};

    /// The addresses whose fault means the main thread ran off its stack.
    pub(super) static GUARD_LOW: AtomicUsize = AtomicUsize::new(0);
    pub(super) static GUARD_HIGH: AtomicUsize = AtomicUsize::new(0);
    /// Where the report goes, and the report (bytes that live for ever).
    pub(super) static REPORT_FD: AtomicI32 = AtomicI32::new(-1);
    pub(super) static REPORT: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
    pub(super) static REPORT_LEN: AtomicUsize = AtomicUsize::new(0);
    /// The line for standard error.
    pub(super) static MESSAGE: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
    pub(super) static MESSAGE_LEN: AtomicUsize = AtomicUsize::new(0);
}

/// Writes `bytes` whole to `fd`, from a signal handler (only `write` is called).
fn write_all_raw(fd: RawFd, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is a live slice; write is async-signal-safe.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

extern "C" fn on_fault(signal: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    use std::sync::atomic::Ordering::Relaxed;
    // SAFETY: the kernel passes a valid siginfo for SIGSEGV/SIGBUS handlers (SA_SIGINFO).
    let address = unsafe { (*info).si_addr() } as usize;
    let (low, high) = (
        overflow::GUARD_LOW.load(Relaxed),
        overflow::GUARD_HIGH.load(Relaxed),
    );
    if (low..high).contains(&address) {
        let message = overflow::MESSAGE.load(Relaxed);
        if !message.is_null() {
            // SAFETY: MESSAGE/MESSAGE_LEN describe leaked bytes that live for ever.
            let line =
                unsafe { std::slice::from_raw_parts(message, overflow::MESSAGE_LEN.load(Relaxed)) };
            write_all_raw(2, line);
        }
        let report = overflow::REPORT.load(Relaxed);
        let fd = overflow::REPORT_FD.load(Relaxed);
        if !report.is_null() && fd >= 0 {
            // SAFETY: as above, for REPORT/REPORT_LEN.
            let bytes =
                unsafe { std::slice::from_raw_parts(report, overflow::REPORT_LEN.load(Relaxed)) };
            write_all_raw(fd, bytes);
        }
        // As a Rust program does after a stack overflow.
        // SAFETY: abort has no preconditions and is async-signal-safe.
        unsafe { libc::abort() };
    }
    // Not a stack overflow: the default action, when the faulting instruction runs again.
    // SAFETY: restoring SIG_DFL for this signal has no memory preconditions.
    unsafe { libc::signal(signal, libc::SIG_DFL) };
}

/// Makes a stack overflow of the calling (main) thread print `message` on standard error,
/// write `report` to `fd`, and abort, instead of dying of SIGSEGV without a word. Rust's own
/// handler does this in `main`, but a process that stays in a constructor (a child) never
/// gets there. Other faults keep their default action.
pub(crate) fn report_stack_overflow(
    fd: BorrowedFd<'_>,
    report: &'static [u8],
    message: &'static [u8],
) -> io::Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    // The main thread's stack, as glibc sees it: its lowest address is where it may grow to.
    let (low, _size) = current_thread_stack()?;
    let page = page_size();
    // The kernel keeps a guard gap (1 MiB by default) below a growing stack.
    overflow::GUARD_LOW.store(low.saturating_sub(256 * page), Relaxed);
    overflow::GUARD_HIGH.store(low + page, Relaxed);
    overflow::REPORT_FD.store(fd.as_raw_fd(), Relaxed);
    overflow::REPORT.store(report.as_ptr().cast_mut(), Relaxed);
    overflow::REPORT_LEN.store(report.len(), Relaxed);
    overflow::MESSAGE.store(message.as_ptr().cast_mut(), Relaxed);
    overflow::MESSAGE_LEN.store(message.len(), Relaxed);
    // A stack of its own for the handler: the thread's own is used up when it runs.
    let size = (64 << 10).max(libc::SIGSTKSZ);
    // SAFETY: a fresh anonymous private mapping; nothing else refers to it.
    let stack = unsafe {
        libc::mmap(
            ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let alt = libc::stack_t {
        ss_sp: stack,
        ss_flags: 0,
        ss_size: size,
    };
    // SAFETY: `alt` describes the mapping above, which is never unmapped.
    cvt(unsafe { libc::sigaltstack(&alt, ptr::null_mut()) })?;
    // SAFETY: a zeroed sigaction is valid; the handler has the SA_SIGINFO signature and only
    // makes async-signal-safe calls.
    unsafe {
        let mut action: libc::sigaction = mem::zeroed();
        action.sa_sigaction = on_fault as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut action.sa_mask);
        cvt(libc::sigaction(libc::SIGSEGV, &action, ptr::null_mut()))?;
        cvt(libc::sigaction(libc::SIGBUS, &action, ptr::null_mut()))?;
    }
    Ok(())
}

/// The calling thread's stack: its lowest address and size.
fn current_thread_stack() -> io::Result<(usize, usize)> {
    // SAFETY: pthread_getattr_np fills the zeroed attribute, which is destroyed after use;
    // the out-pointers are live locals.
    unsafe {
        let mut attr: libc::pthread_attr_t = mem::zeroed();
        let e = libc::pthread_getattr_np(libc::pthread_self(), &mut attr);
        if e != 0 {
            return Err(io::Error::from_raw_os_error(e));
        }
        let mut addr: *mut libc::c_void = ptr::null_mut();
        let mut size: libc::size_t = 0;
        let e = libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        if e != 0 {
            return Err(io::Error::from_raw_os_error(e));
        }
        Ok((addr as usize, size))
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).unwrap_or(4096)
}

/// How many tasks are runnable on the whole system right now (running or waiting for a CPU):
/// the fourth field of `/proc/loadavg` (`2/86`: 2). `None` if it cannot be read.
pub(crate) fn runnable_tasks() -> Option<u32> {
    use std::os::unix::fs::FileExt;
    static LOADAVG: std::sync::OnceLock<Option<std::fs::File>> = std::sync::OnceLock::new();
    let file = LOADAVG
        .get_or_init(|| std::fs::File::open("/proc/loadavg").ok())
        .as_ref()?;
    let mut buf = [0u8; 128];
    let n = file.read_at(&mut buf, 0).ok()?;
    let text = std::str::from_utf8(&buf[..n]).ok()?;
    let field = text.split_ascii_whitespace().nth(3)?;
    field.split('/').next()?.parse().ok()
}

/// How many CPUs are online on the whole system.
pub(crate) fn online_cpus() -> u32 {
    // SAFETY: sysconf has no memory preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    u32::try_from(n).unwrap_or(1).max(1)
}
