//! Everything that talks to the operating system directly.
//!
//! The rest of the crate is written against the names exported here (an explicit list, by
//! capability) and never calls `libc` itself; nothing here calls into the rest of the crate.
//! Linux is the implemented platform; another one provides the same names, as `README.md`
//! beside this file describes.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
#[cfg_attr(loom, allow(dead_code))]
mod linux_mem;
#[cfg(target_os = "linux")]
mod robust;

// What a backend provides, by capability (see `README.md` beside this file). The list is
// explicit so that a second backend knows what it owes and the crate what it may use.

// Processes: ids, start and end, child handles (pidfds), the executable's identity.
#[cfg(target_os = "linux")]
pub(crate) use linux::{
    ExitStatus, Forked, SIGKILL, SIGTERM, adopt_fd, at_exit, exe_identity, exit_immediately,
    fd_is_open, fork, getpid, getppid, ignore_sigpipe, is_main_thread, keep_freed_memory,
    kill_and_reap, pidfd_open, pidfd_send_signal, report_stack_overflow, run_before_main,
    set_child_env, set_parent_death_signal, spawn_self, stdin_to_devnull, take_env, thread_count,
    try_wait_pidfd,
};
// Descriptor passing and sockets.
#[cfg(target_os = "linux")]
pub(crate) use linux::{
    MAX_FDS_PER_MESSAGE, hung_up, poll_readable, recv_byte, recv_with_fds, send_nonblocking,
    send_with_fds, set_cloexec, shutdown, socketpair,
};
#[cfg(target_os = "linux")]
pub(crate) use linux_mem::{
    accept, ignore_interrupts, poll_writable, seqpacket_connect, seqpacket_listen, seqpacket_pair,
    set_nonblocking,
};
#[cfg(all(target_os = "linux", feature = "manager"))]
pub(crate) use linux_mem::{listen_deepest, recv_nonblocking, set_quick_ack};
// The machine's load, for the spin governor.
#[cfg(target_os = "linux")]
pub(crate) use linux::{online_cpus, runnable_tasks};
// Shared-memory files and mappings.
#[cfg(target_os = "linux")]
pub(crate) use linux_mem::{
    file_len, map_shared, memfd_create, populate, shm_open, shm_unlink, unmap,
};
// Futex waits and thread identity.
#[cfg(target_os = "linux")]
pub(crate) use linux_mem::{
    FutexWait, futex_wait, futex_wake, getpid_cached, gettid, thread_alive,
};
// Robust futex lists: a lock held by a thread that dies is marked by the kernel.
#[cfg(all(target_os = "linux", test))]
pub(crate) use robust::robust_list_available;
#[cfg(target_os = "linux")]
pub(crate) use robust::{
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
