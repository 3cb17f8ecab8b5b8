//! Everything that talks to the operating system directly.
//!
//! The rest of the crate is written against the functions re-exported here and never calls
//! `libc` itself. Linux is the implemented platform; another one provides the same names.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(crate) use linux::*;
#[cfg(target_os = "linux")]
#[cfg_attr(loom, allow(dead_code))]
mod linux_mem;
#[cfg(target_os = "linux")]
pub(crate) use linux_mem::*;
#[cfg(target_os = "linux")]
mod robust;
#[cfg(target_os = "linux")]
pub(crate) use robust::*;

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
