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

#[cfg(feature = "broker")]
pub(crate) use termination::TerminationFlag;

/// SIGTERM and SIGINT as a flag, for a broker worker that stops gracefully.
#[cfg(feature = "broker")]
mod termination {
    use std::mem;
    use std::ptr;

    /// The flags SIGTERM and SIGINT set while a [`TerminationFlag`] watches (one watcher at a
    /// time; a second waits its turn by taking the slot when the first is gone).
    static TERMINATION: std::sync::atomic::AtomicPtr<std::sync::atomic::AtomicBool> =
        std::sync::atomic::AtomicPtr::new(ptr::null_mut());

    extern "C" fn on_termination(_: libc::c_int) {
        let flag = TERMINATION.load(std::sync::atomic::Ordering::SeqCst);
        // SAFETY: a non-null TERMINATION points into an `Arc` the watching `TerminationFlag`
        // keeps alive until after it has put the old handlers back and cleared the pointer.
        if let Some(flag) = unsafe { flag.as_ref() } {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// While it lives, SIGTERM and SIGINT set a flag instead of ending the process (a worker that
    /// stops gracefully); dropped, the handlers from before are back.
    pub(crate) struct TerminationFlag {
        flag: std::sync::Arc<std::sync::atomic::AtomicBool>,
        before: Option<[libc::sigaction; 2]>,
    }

    const TERMINATING: [libc::c_int; 2] = [libc::SIGTERM, libc::SIGINT];

    impl TerminationFlag {
        /// Makes SIGTERM and SIGINT set `flag`. If another watcher is active, the signals keep
        /// its flag (and their effect on this one is left to the caller's own stop).
        pub(crate) fn watch(
            flag: &std::sync::Arc<std::sync::atomic::AtomicBool>,
        ) -> TerminationFlag {
            use std::sync::atomic::Ordering::SeqCst;
            let flag = flag.clone();
            let raw = std::sync::Arc::as_ptr(&flag).cast_mut();
            if TERMINATION
                .compare_exchange(ptr::null_mut(), raw, SeqCst, SeqCst)
                .is_err()
            {
                return TerminationFlag { flag, before: None };
            }
            // SAFETY: zeroed is a valid sigaction (no handler, empty mask); every field we rely
            // on is set below.
            let mut action: libc::sigaction = unsafe { mem::zeroed() };
            action.sa_sigaction = on_termination as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = libc::SA_RESTART;
            // SAFETY: sa_mask is a valid sigset_t to empty.
            unsafe { libc::sigemptyset(&mut action.sa_mask) };
            // SAFETY: zeroed sigactions are valid places for the old handlers.
            let mut before: [libc::sigaction; 2] = unsafe { mem::zeroed() };
            for (signal, old) in TERMINATING.iter().zip(before.iter_mut()) {
                // SAFETY: `action` and `old` are valid sigaction structs; the handler only
                // touches an atomic.
                unsafe { libc::sigaction(*signal, &action, old) };
            }
            TerminationFlag {
                flag,
                before: Some(before),
            }
        }
    }

    impl Drop for TerminationFlag {
        fn drop(&mut self) {
            let Some(before) = self.before else { return };
            for (signal, old) in TERMINATING.iter().zip(before.iter()) {
                // SAFETY: `old` is the sigaction the kernel gave back when ours was installed.
                unsafe { libc::sigaction(*signal, old, ptr::null_mut()) };
            }
            TERMINATION.store(ptr::null_mut(), std::sync::atomic::Ordering::SeqCst);
            // The Arc in `self.flag` outlives the pointer's last use by a handler: the handlers
            // are gone before the pointer is cleared, and the Arc only after that.
            let _ = &self.flag;
        }
    }
}
