//! Shared-memory files and mappings: memfds, POSIX shared memory, `mmap`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::{self, NonNull};

use super::cvt;

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
