//! Linux, capability by capability (see `../README.md`).

pub(super) mod child;
pub(super) mod fds;
pub(super) mod futex;
pub(super) mod load;
pub(super) mod memory;
#[cfg(feature = "async")]
pub(super) mod poller;
pub(super) mod process;
pub(super) mod robust;
pub(super) mod signals;

use std::io;

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
