//! Futex waits on shared words, and thread identity and liveness (ids that survive `fork`).

use std::io;
use std::ptr;
use std::sync::atomic::AtomicU32;
use std::time::Instant;

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
    futex_wait_at(word.as_ptr() as usize, expected, deadline)
}

/// [`futex_wait`] on a word given by its address, which may no longer be mapped: the kernel
/// then reports a fault (the call returns [`FutexWait::Woken`]); nothing here reads it.
pub(crate) fn futex_wait_at(addr: usize, expected: u32, deadline: Option<Instant>) -> FutexWait {
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
    // SAFETY: the kernel reads `addr` itself (a bad address is EFAULT, not a fault here);
    // `ts` is null or points to a timespec on this frame. FUTEX_WAIT (not _PRIVATE) keys on the
    // physical page, so it works across processes mapping the same memory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            addr as *const u32,
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
    futex_wake_at(word.as_ptr() as usize, count)
}

/// [`futex_wake`] on a word given by its address (the low half of a 64-bit word, say);
/// nothing reads it.
pub(crate) fn futex_wake_at(addr: usize, count: u32) {
    let count = count.min(i32::MAX as u32);
    // SAFETY: FUTEX_WAKE only uses the address as a key (a bad one is EFAULT).
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            addr as *const u32,
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

/// How a [`futex_waitv`] ended.
#[cfg(feature = "async")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WaitvEnded {
    /// Woken through the word at this index (others may have been woken or changed too).
    Woken(usize),
    /// A word no longer held its expected value, a signal came, or an address could not be
    /// read (its memory went away): look at the words again.
    LookAgain,
    /// The kernel has no `futex_waitv` (before Linux 5.16).
    Unsupported,
}

/// Sleeps until one of `words` (`(address, expected value)`, at most 128) is woken or does not
/// hold its value. The words may lie in shared memory (the waits are not process-private), so
/// [`futex_wake`] from any process wakes the sleeper. An address whose memory has gone makes
/// the call return [`WaitvEnded::LookAgain`]: the kernel reads it, never we. At `deadline`
/// (`CLOCK_MONOTONIC`, as `Instant` is) it returns `LookAgain` too.
#[cfg(feature = "async")]
pub(crate) fn futex_waitv(words: &[(usize, u32)], deadline: Option<Instant>) -> WaitvEnded {
    /// The kernel's `struct futex_waitv`.
    #[repr(C)]
    struct FutexWaitv {
        val: u64,
        uaddr: u64,
        flags: u32,
        reserved: u32,
    }
    /// `FUTEX2_SIZE_U32`: a 32-bit word, shared between processes.
    const SIZE_U32: u32 = 0x02;
    let waiters: Vec<FutexWaitv> = words
        .iter()
        .map(|&(addr, val)| FutexWaitv {
            val: u64::from(val),
            uaddr: addr as u64,
            flags: SIZE_U32,
            reserved: 0,
        })
        .collect();
    // futex_waitv takes an absolute time on the clock it is given.
    let timeout = deadline.map(|d| {
        let left = d.saturating_duration_since(Instant::now());
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `now` is a live timespec; CLOCK_MONOTONIC always exists.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
        let nanos = now.tv_nsec as u64 + u64::from(left.subsec_nanos());
        libc::timespec {
            tv_sec: now
                .tv_sec
                .saturating_add(left.as_secs().min(i32::MAX as u64) as libc::time_t)
                .saturating_add((nanos / 1_000_000_000) as libc::time_t),
            tv_nsec: (nanos % 1_000_000_000) as libc::c_long,
        }
    });
    let ts = timeout
        .as_ref()
        .map_or(ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `waiters` is a live array of `waiters.len()` kernel structs; `ts` is null (wait
    // for ever) or a timespec on this frame. The kernel only reads the words' addresses (a
    // bad one is EFAULT).
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex_waitv,
            waiters.as_ptr(),
            waiters.len() as libc::c_uint,
            0u32,
            ts,
            libc::CLOCK_MONOTONIC,
        )
    };
    if r >= 0 {
        return WaitvEnded::Woken(r as usize);
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::ENOSYS) => WaitvEnded::Unsupported,
        _ => WaitvEnded::LookAgain,
    }
}
