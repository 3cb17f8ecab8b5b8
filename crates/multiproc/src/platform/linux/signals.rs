//! Signals: SIGPIPE, and the fault handler that reports a child's stack overflow.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::ptr;

use super::cvt;

pub(crate) fn ignore_sigpipe() {
    // SAFETY: installing SIG_IGN for SIGPIPE has no memory preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

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
