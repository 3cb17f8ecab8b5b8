//! Everything that talks to the operating system directly.
//!
//! The rest of the crate is written against the names exported here (an explicit list, by
//! capability) and never calls `libc` itself; nothing here calls into the rest of the crate.
//! Linux is the implemented platform; another one provides the same names, as `README.md`
//! beside this file describes.

#[cfg(target_os = "linux")]
#[cfg_attr(loom, allow(dead_code))]
mod linux;

// What a backend provides, by capability, each a small module of `linux/` (see `README.md`
// beside this file). The list is explicit so that a second backend knows what it owes and
// the crate what it may use.

// Processes: ids, spawning this executable again, fork, start-up and exit, its identity.
#[cfg(target_os = "linux")]
#[cfg(feature = "broker")]
pub(crate) use linux::process::gnu_build_id;
pub(crate) use linux::process::{
    ExitStatus, Forked, SIGKILL, SIGTERM, adopt_fd, at_exit, exe_identity, exit_immediately,
    fd_is_open, fork, getpid, getppid, is_main_thread, keep_freed_memory, run_before_main,
    set_child_env, set_parent_death_signal, spawn_self, stdin_to_devnull, take_env, thread_count,
};
// Child handles (pidfds): signalled, waited for and reaped without pid-reuse races.
#[cfg(target_os = "linux")]
pub(crate) use linux::child::{ChildHandle, kill_and_reap};
// Signals: SIGPIPE, a child's stack overflow.
#[cfg(target_os = "linux")]
#[cfg(feature = "broker")]
pub(crate) use linux::signals::TerminationFlag;
pub(crate) use linux::signals::{ignore_sigpipe, report_stack_overflow};
// Descriptor passing and sockets.
#[cfg(target_os = "linux")]
pub(crate) use linux::fds::{
    MAX_FDS_PER_MESSAGE, accept, hung_up, ignore_interrupts, poll_readable, poll_writable,
    recv_byte, recv_with_fds, send_nonblocking, send_with_fds, seqpacket_connect, seqpacket_listen,
    seqpacket_pair, set_cloexec, set_nonblocking, shutdown, socketpair,
};
#[cfg(all(target_os = "linux", feature = "manager"))]
pub(crate) use linux::fds::{listen_deepest, recv_nonblocking, set_quick_ack};
// The machine's load, for the spin governor.
#[cfg(target_os = "linux")]
#[cfg_attr(loom, allow(unused_imports))]
pub(crate) use linux::load::{online_cpus, runnable_tasks};
// Shared-memory files and mappings.
#[cfg(target_os = "linux")]
pub(crate) use linux::memory::{
    file_len, map_shared, memfd_create, populate, shm_open, shm_unlink, unmap,
};
// Futex waits and thread identity.
#[cfg(target_os = "linux")]
#[cfg_attr(loom, allow(unused_imports))]
pub(crate) use linux::futex::{
    FutexWait, futex_wait, futex_wake, getpid_cached, gettid, thread_alive,
};
// Many futex words waited for at once, for the async waits.
#[cfg(all(target_os = "linux", feature = "async", not(loom)))]
pub(crate) use linux::futex::{WaitvEnded, futex_wait_at, futex_waitv, futex_wake_at};
// Readiness of many descriptors at once (epoll), for the async waits on descriptors.
#[cfg(all(target_os = "linux", feature = "async", not(loom)))]
pub(crate) use linux::poller::Poller;
// Robust futex lists: a lock held by a thread that dies is marked by the kernel.
#[cfg(all(target_os = "linux", test))]
pub(crate) use linux::robust::robust_list_available;
#[cfg(target_os = "linux")]
#[cfg_attr(loom, allow(unused_imports))]
pub(crate) use linux::robust::{
    NEXT_AFTER_WORD, RobustEntry, robust_done, robust_link, robust_pending, robust_unlink,
};

#[cfg(not(target_os = "linux"))]
compile_error!("multiproc supports Linux for now; the platform layer is where another OS plugs in");

/// A short name for a signal number (`SIGKILL`), or `"unknown signal"`.
pub(crate) fn signal_name(signal: i32) -> &'static str {
    match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => "unknown signal",
    }
}
