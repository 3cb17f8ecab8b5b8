//! `SharedMemory`: a block of shared memory that other processes can attach by name (Python's
//! `multiprocessing.shared_memory.SharedMemory`), kept in `/dev/shm` like POSIX `shm_open`.

use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::platform;
use crate::share::{FdIn, FdOut};

/// A named block of shared memory.
///
/// [`create`](Self::create) makes it (under a given or a fresh name), [`open`](Self::open)
/// attaches to an existing one, [`unlink`](Self::unlink) removes the name; the memory itself
/// lives until the last process that maps it lets go. Names are those of Python's
/// `SharedMemory` (files in `/dev/shm`), so Python programs can attach to ours and the other
/// way round. Passing a `SharedMemory` to a child hands over the mapping itself, which keeps
/// working even after the name was unlinked.
///
/// The bytes are shared with other processes that may write them at any moment, so they are
/// read and written by copy ([`read`](Self::read), [`write`](Self::write)); direct slices are
/// `unsafe` ([`as_slice`](Self::as_slice)).
///
/// # Examples
///
/// ```
/// use multiproc::SharedMemory;
///
/// let block = SharedMemory::create(None, 4096)?;
/// block.write(0, b"hello");
/// let other = SharedMemory::open(block.name())?; // as another process would
/// let mut buf = [0u8; 5];
/// other.read(0, &mut buf);
/// assert_eq!(&buf, b"hello");
/// block.unlink()?;
/// # Ok::<(), multiproc::Error>(())
/// ```
///
/// # Caveats
/// Unlink what you create. A name its creator did not unlink is unlinked (with a message on
/// stderr) by a tracker process once every process of the tree that created it has exited,
/// crashed or not, as CPython's resource tracker does.
pub struct SharedMemory {
    name: String,
    ptr: NonNull<u8>,
    len: usize,
    fd: OwnedFd,
}

// SAFETY: the mapping is shared memory accessed only by atomic copies or through the unsafe
// slice methods whose callers take responsibility; the handle itself holds no thread state.
unsafe impl Send for SharedMemory {}
// SAFETY: as for `Send`.
unsafe impl Sync for SharedMemory {}

fn fresh_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("mp_{:x}_{n:x}_{t:08x}", platform::getpid())
}

impl SharedMemory {
    /// Creates a block of `size` bytes (zero-filled) named `name`, or a fresh name if `None`.
    ///
    /// # Errors
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) if the name exists already or is not valid (1
    /// to 250 characters, no `/`), or `size` is 0.
    pub fn create(name: Option<&str>, size: usize) -> Result<SharedMemory> {
        let name = name.map_or_else(fresh_name, str::to_string);
        let what = || format!("shared memory {name:?}");
        if size == 0 {
            return Err(Error::invalid(what(), "size must be positive"));
        }
        let fd = platform::shm_open(&name, true, size)
            .map_err(|e| Error::io(format!("{}: cannot create", what()), e))?;
        let block = SharedMemory::map(name.clone(), fd).inspect_err(|_| {
            let _ = platform::shm_unlink(&name);
        })?;
        super::tracker::register(&name);
        Ok(block)
    }

    /// Attaches to the existing block `name`.
    ///
    /// # Errors
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) if there is no such block.
    pub fn open(name: &str) -> Result<SharedMemory> {
        let fd = platform::shm_open(name, false, 0)
            .map_err(|e| Error::io(format!("shared memory {name:?}: cannot open"), e))?;
        SharedMemory::map(name.to_string(), fd)
    }

    fn map(name: String, fd: OwnedFd) -> Result<SharedMemory> {
        let what = || format!("shared memory {name:?}");
        let len = platform::file_len(fd.as_fd())
            .map_err(|e| Error::io(format!("{}: cannot inspect", what()), e))?;
        if len == 0 {
            return Err(Error::invalid(what(), "is empty"));
        }
        let ptr = platform::map_shared(fd.as_fd(), len, false)
            .map_err(|e| Error::io(format!("{}: cannot map", what()), e))?;
        Ok(SharedMemory { name, ptr, len, fd })
    }

    /// The name other processes open it by.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its size in bytes.
    pub fn size(&self) -> usize {
        self.len
    }

    /// Removes the name; processes that have it mapped keep using it.
    ///
    /// # Errors
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) if the name is already gone.
    pub fn unlink(&self) -> Result<()> {
        platform::shm_unlink(&self.name)
            .map_err(|e| Error::io(format!("shared memory {:?}: cannot unlink", self.name), e))?;
        super::tracker::unregister(&self.name);
        Ok(())
    }

    fn bytes(&self) -> &[AtomicU8] {
        // SAFETY: the mapping is `len` bytes and lives as long as `self`; AtomicU8 has the
        // layout of u8 and every safe access to these bytes is atomic.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<AtomicU8>(), self.len) }
    }

    /// Copies bytes from `offset` into `buf`.
    ///
    /// # Panics
    /// If `offset + buf.len()` exceeds [`size`](Self::size).
    pub fn read(&self, offset: usize, buf: &mut [u8]) {
        let src = &self.bytes()[offset..offset + buf.len()];
        for (d, s) in buf.iter_mut().zip(src) {
            *d = s.load(Ordering::Relaxed);
        }
    }

    /// Copies `data` into the block at `offset`.
    ///
    /// # Panics
    /// If `offset + data.len()` exceeds [`size`](Self::size).
    pub fn write(&self, offset: usize, data: &[u8]) {
        let dst = &self.bytes()[offset..offset + data.len()];
        for (d, s) in dst.iter().zip(data) {
            d.store(*s, Ordering::Relaxed);
        }
    }

    /// The whole block as a slice.
    ///
    /// # Safety
    /// No thread in any process may write the block while the slice lives.
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is `len` bytes; the caller guarantees no concurrent writes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The whole block as a mutable slice.
    ///
    /// # Safety
    /// No other thread in any process may read or write the block while the slice lives.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn as_mut_slice(&self) -> &mut [u8] {
        // SAFETY: the mapping is `len` bytes; the caller guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        // SAFETY: `(ptr, len)` is this handle's own mapping, unused once it drops.
        unsafe { platform::unmap(self.ptr, self.len) };
    }
}

impl fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedMemory")
            .field("name", &self.name)
            .field("size", &self.len)
            .finish()
    }
}

impl Serialize for SharedMemory {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&self.name)?;
        t.serialize_element(&FdOut(self.fd.as_fd()))?;
        t.end()
    }
}

impl<'de> Deserialize<'de> for SharedMemory {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let (name, FdIn(fd)) = <(String, FdIn)>::deserialize(d)?;
        SharedMemory::map(name, fd).map_err(|e| crate::share::handle_error_de(e.to_string()))
    }
}
