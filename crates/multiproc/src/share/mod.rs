//! Serialization of values between processes, with file descriptors riding alongside.
//!
//! Values travel as `postcard` bytes. A shareable handle (a [`Connection`](crate::Connection),
//! later queues, locks and shared memory) cannot be copied into bytes: while a value is encoded
//! the handle puts a duplicate of its descriptor into a side table and writes only the index.
//! The table goes with the message as `SCM_RIGHTS`; on the other side the decoder is given the
//! received descriptors and the handle takes its own back by index. A bad index is an error,
//! never a panic.

use std::cell::RefCell;
use std::os::fd::{BorrowedFd, OwnedFd};

use serde::de::{DeserializeOwned, DeserializeSeed};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::platform::MAX_FDS_PER_MESSAGE;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static OUTGOING: RefCell<Option<Vec<OwnedFd>>> = const { RefCell::new(None) };
    static INCOMING: RefCell<Option<Vec<Option<OwnedFd>>>> = const { RefCell::new(None) };
    /// The message of the last handle error: postcard keeps only "custom error".
    static HANDLE_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Runs `f` with a reusable buffer for a message's bytes (a fresh one if the thread's is in
/// use); a buffer grown past 1 MiB is not kept.
pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            let r = f(&mut buf);
            if buf.capacity() > 1 << 20 {
                *buf = Vec::new();
            }
            r
        }
        Err(_) => f(&mut Vec::new()),
    })
}

fn handle_error(message: String) -> String {
    HANDLE_ERROR.with(|e| *e.borrow_mut() = Some(message.clone()));
    message
}

/// A deserialization error whose message survives postcard (for handles that fail to open).
pub(crate) fn handle_error_de<E: serde::de::Error>(message: String) -> E {
    E::custom(handle_error(message))
}

fn explain(e: postcard::Error) -> String {
    HANDLE_ERROR
        .with(|h| h.borrow_mut().take())
        .unwrap_or_else(|| e.to_string())
}

#[cfg(feature = "manager")]
/// Whether the serializer running on this thread is the crate's own, for another process of
/// ours (process arguments, queues, connections), rather than any other.
pub(crate) fn encoding_for_our_processes() -> bool {
    OUTGOING.with(|t| t.borrow().is_some())
}

/// Encodes `value` after whatever `buf` already holds; returns the descriptors it carries.
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    what: &str,
    value: &T,
    buf: &mut Vec<u8>,
) -> Result<Vec<OwnedFd>> {
    HANDLE_ERROR.with(|e| e.borrow_mut().take());
    let saved = OUTGOING.with(|t| t.borrow_mut().replace(Vec::new()));
    // `to_extend` is the fastest postcard flavor for a Vec (2.5× `to_io` on integers).
    let result = postcard::to_extend(value, std::mem::take(buf)).map(|filled| *buf = filled);
    let fds = OUTGOING
        .with(|t| std::mem::replace(&mut *t.borrow_mut(), saved))
        .unwrap_or_default();
    result.map_err(|e| Error::serialization(what, format!("cannot serialize: {}", explain(e))))?;
    if fds.len() > MAX_FDS_PER_MESSAGE {
        return Err(Error::serialization(
            what,
            format!(
                "a message can carry at most {MAX_FDS_PER_MESSAGE} shared handles, not {}",
                fds.len()
            ),
        ));
    }
    Ok(fds)
}

/// Decodes a `T` from `bytes`, giving shareable handles inside it the descriptors `fds`.
pub(crate) fn decode<T: DeserializeOwned>(
    what: &str,
    bytes: &[u8],
    fds: Vec<OwnedFd>,
) -> Result<T> {
    HANDLE_ERROR.with(|e| e.borrow_mut().take());
    let table = fds.into_iter().map(Some).collect();
    let saved = INCOMING.with(|t| t.borrow_mut().replace(table));
    let result = postcard::from_bytes(bytes);
    INCOMING.with(|t| *t.borrow_mut() = saved);
    result.map_err(|e| Error::serialization(what, format!("cannot deserialize: {}", explain(e))))
}

/// Decodes `bytes` (which carry no descriptors) with a `seed`, e.g. one that decodes into
/// place.
pub(crate) fn decode_seed<'de, S: DeserializeSeed<'de>>(
    what: &str,
    bytes: &'de [u8],
    seed: S,
) -> Result<S::Value> {
    HANDLE_ERROR.with(|e| e.borrow_mut().take());
    let mut de = postcard::Deserializer::from_bytes(bytes);
    seed.deserialize(&mut de)
        .map_err(|e| Error::serialization(what, format!("cannot deserialize: {}", explain(e))))
}

/// Serializes a descriptor as an index into the outgoing side table (for shareable handles).
pub(crate) fn serialize_fd<S: Serializer>(
    fd: BorrowedFd<'_>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::Error as _;
    let index = OUTGOING.with(|t| {
        let mut table = t.borrow_mut();
        let table = table.as_mut().ok_or_else(|| {
            S::Error::custom(
                "a shareable handle can only be sent to another process through multiproc",
            )
        })?;
        let dup = fd.try_clone_to_owned().map_err(|e| {
            S::Error::custom(handle_error(format!("cannot duplicate descriptor: {e}")))
        })?;
        table.push(dup);
        Ok(table.len() - 1)
    })?;
    (index as u32).serialize(serializer)
}

/// Deserializes a descriptor written by [`serialize_fd`], taking it out of the incoming table.
pub(crate) fn deserialize_fd<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<OwnedFd, D::Error> {
    use serde::de::Error as _;
    let index = u32::deserialize(deserializer)? as usize;
    INCOMING.with(|t| {
        let mut table = t.borrow_mut();
        let table = table.as_mut().ok_or_else(|| {
            D::Error::custom("a shareable handle can only be received through multiproc")
        })?;
        let count = table.len();
        table
            .get_mut(index)
            .ok_or_else(|| {
                D::Error::custom(handle_error(format!(
                    "descriptor index {index} out of range ({count} received)"
                )))
            })?
            .take()
            .ok_or_else(|| {
                D::Error::custom(handle_error(format!("descriptor index {index} used twice")))
            })
    })
}

/// Any open file descriptor, passed to another process as itself (CPython's `DupFd`
/// reduction): a socket, a file, a pipe. It travels like the crate's own handles, in process
/// arguments or through queues and connections; the receiver gets a descriptor to the same
/// open file.
///
/// # Examples
///
/// ```
/// use std::io::{Read, Write};
/// use std::os::unix::net::UnixStream;
/// use multiproc::{Descriptor, Process};
///
/// fn greet(d: Descriptor) {
///     let mut s = UnixStream::from(d.into_inner());
///     s.write_all(b"hi from the child").unwrap();
/// }
///
/// let (mut mine, theirs) = UnixStream::pair().unwrap();
/// let mut child = Process::new(greet, Descriptor::from(std::os::fd::OwnedFd::from(theirs))).start()?;
/// child.join()?;
/// let mut got = String::new();
/// mine.read_to_string(&mut got).unwrap();
/// assert_eq!(got, "hi from the child");
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Debug)]
pub struct Descriptor(OwnedFd);

impl Descriptor {
    /// The descriptor.
    pub fn into_inner(self) -> OwnedFd {
        self.0
    }
}

impl From<OwnedFd> for Descriptor {
    fn from(fd: OwnedFd) -> Self {
        Descriptor(fd)
    }
}

impl std::os::fd::AsFd for Descriptor {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl Serialize for Descriptor {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use std::os::fd::AsFd;
        serialize_fd(self.0.as_fd(), s)
    }
}

impl<'de> Deserialize<'de> for Descriptor {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_fd(d).map(Descriptor)
    }
}

/// Serializes a borrowed descriptor through the side table (a field of a handle).
pub(crate) struct FdOut<'a>(pub(crate) BorrowedFd<'a>);

impl Serialize for FdOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_fd(self.0, s)
    }
}

/// Deserializes a descriptor from the side table (a field of a handle).
pub(crate) struct FdIn(pub(crate) OwnedFd);

impl<'de> Deserialize<'de> for FdIn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_fd(d).map(FdIn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[derive(Debug)]
    struct Handle(OwnedFd);
    impl Serialize for Handle {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            serialize_fd(self.0.as_fd(), s)
        }
    }
    impl<'de> Deserialize<'de> for Handle {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            deserialize_fd(d).map(Handle)
        }
    }

    #[test]
    fn handles_travel_in_the_side_table() {
        let (a, b) = crate::platform::socketpair().unwrap();
        let mut buf = Vec::new();
        let fds = encode_into("test", &(1u8, Handle(a), "x", Handle(b)), &mut buf).unwrap();
        assert_eq!(fds.len(), 2);
        let (n, _ha, s, _hb): (u8, Handle, String, Handle) = decode("test", &buf, fds).unwrap();
        assert_eq!((n, s.as_str()), (1, "x"));
    }

    #[test]
    fn a_bad_index_is_an_error() {
        let mut buf = Vec::new();
        postcard::to_io(&7u32, &mut buf).unwrap();
        let err = decode::<Handle>("test", &buf, Vec::new()).unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
    }

    #[test]
    fn a_handle_outside_multiproc_is_an_error() {
        let (a, _b) = crate::platform::socketpair().unwrap();
        assert!(postcard::to_allocvec(&Handle(a)).is_err());
    }
}
