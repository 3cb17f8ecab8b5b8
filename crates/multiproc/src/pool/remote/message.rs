//! What a broker pool's tasks and results are on the wire: entries of a Redis stream in
//! postcard (the queue's `postcard` codec), each signed with the pool's authkey.
//!
//! The signature is an HMAC-SHA256 over postcard's encoding of every field and of the stream
//! the entry was written to (which is what makes a task replayed into another queue, or a
//! result into another pool's stream, fail verification), under a domain string of its own
//! for tasks and for results. Someone who can write to Redis but lacks the authkey can neither
//! call a registered function nor forge a result.

use std::cell::RefCell;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::pool::worker::TaskFailure;

/// The format of the entries this build writes and reads (2 was JSON with base64 inside; an
/// entry of another format is refused with that said).
pub(super) const FORMAT: u32 = 3;

/// The longest pool id (a pool's results stream is named after it).
const MAX_POOL_ID: usize = 64;

/// A task as it travels in the pool's task stream.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct TaskMessage {
    /// [`FORMAT`].
    pub(super) v: u32,
    /// The submitting pool: its results go to the stream named after it.
    pub(super) pool: String,
    /// The pool's slot and task id, sent back with the result.
    pub(super) slot: u32,
    pub(super) id: u64,
    /// The registered name of the function.
    pub(super) function: String,
    /// The submitter's build: only an identical build runs it.
    pub(super) build: String,
    /// When it runs again: retries, first and longest wait (ms), jitter, whether a panic
    /// counts (see [`RetryPolicy`](crate::RetryPolicy)).
    pub(super) retry: (u32, u64, u64, bool, bool),
    /// The runs of it before this entry was written (a retry that waited is a new entry).
    pub(super) attempt: u32,
    /// How long its record stays after it was written, in seconds (0: no record).
    pub(super) record_ttl_s: u64,
    /// How long it may run, in milliseconds (the worker's own limit applies too).
    pub(super) timeout_ms: Option<u64>,
    /// The chunk of arguments.
    #[serde(with = "serde_bytes")]
    pub(super) items: Vec<u8>,
    /// The signature.
    #[serde(with = "serde_bytes")]
    pub(super) mac: Vec<u8>,
}

/// What a worker reports for a task.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Outcome {
    /// The chunk's results (its items' own failures inside).
    Done(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Why the task has no results.
    Failed(TaskFailure),
    /// Not run, and not over: a worker of another build left it on the stream of its own
    /// build's workers, the queue `queue`, saying `why` (a notice to the pool; a record's
    /// state).
    Left { queue: String, why: String },
}

/// A result as it travels in the submitting pool's results stream.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ResultMessage {
    /// [`FORMAT`].
    pub(super) v: u32,
    pub(super) slot: u32,
    pub(super) id: u64,
    /// The worker that ran it (`host:pid`), for messages.
    pub(super) worker: String,
    pub(super) outcome: Outcome,
    /// The signature.
    #[serde(with = "serde_bytes")]
    pub(super) mac: Vec<u8>,
}

/// The HMAC of `signed`'s encoding under `key`.
fn signature(key: &[u8], signed: &impl Serialize) -> Hmac<Sha256> {
    let mut mac = keyed(key);
    // postcard writes its encoding straight into the MAC (it encodes any of the tuples
    // below): no buffer.
    let _ = postcard::to_io(signed, MacWriter(&mut mac));
    mac
}

thread_local! {
    /// The MAC keyed with the key this thread used last: keying costs two SHA-256 blocks,
    /// and a pool or worker signs everything with one key.
    static KEYED: RefCell<Option<(Vec<u8>, Hmac<Sha256>)>> = const { RefCell::new(None) };
}

/// An HMAC-SHA256 keyed with `key`, nothing written yet.
fn keyed(key: &[u8]) -> Hmac<Sha256> {
    KEYED.with_borrow_mut(|cached| match cached {
        Some((k, mac)) if k.as_slice() == key => mac.clone(),
        _ => {
            // An HMAC takes a key of any length.
            let mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
            *cached = Some((key.to_vec(), mac.clone()));
            mac
        }
    })
}

/// Writes into a MAC.
struct MacWriter<'a>(&'a mut Hmac<Sha256>);

impl std::io::Write for MacWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Checks `mac` against `expected`.
fn verify(expected: Hmac<Sha256>, mac: &[u8]) -> Result<(), String> {
    expected.verify_slice(mac).map_err(|_| {
        "bad signature: not signed with this authkey, or meant for another stream".into()
    })
}

/// A signature's bytes.
fn mac_bytes(mac: Hmac<Sha256>) -> Vec<u8> {
    mac.finalize().into_bytes().to_vec()
}

impl TaskMessage {
    /// What the signature covers: every field, and the stream it goes to.
    fn signed<'a>(&'a self, stream: &'a str) -> impl Serialize + 'a {
        (
            "multiproc pool task",
            stream,
            self.v,
            &self.pool,
            self.slot,
            self.id,
            &self.function,
            &self.build,
            self.retry,
            self.attempt,
            self.record_ttl_s,
            self.timeout_ms,
            serde_bytes::Bytes::new(&self.items),
        )
    }

    /// A task for `stream`, signed with `key`.
    pub(super) fn new(key: &[u8], stream: &str, mut message: TaskMessage) -> TaskMessage {
        let mac = mac_bytes(signature(key, &message.signed(stream)));
        message.mac = mac;
        message
    }

    /// Checks its signature and format for `stream` (its arguments are then
    /// [`items`](Self::items)).
    pub(super) fn verify(&self, key: &[u8], stream: &str) -> Result<(), String> {
        if self.v != FORMAT {
            return Err(format!(
                "format version {} (this worker reads {FORMAT})",
                self.v
            ));
        }
        verify(signature(key, &self.signed(stream)), &self.mac)?;
        if self.pool.is_empty()
            || self.pool.len() > MAX_POOL_ID
            || !self
                .pool
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!("a malformed pool id {:?}", self.pool));
        }
        Ok(())
    }
}

impl ResultMessage {
    fn signed<'a>(&'a self, stream: &'a str) -> impl Serialize + 'a {
        (
            "multiproc pool result",
            stream,
            self.v,
            self.slot,
            self.id,
            &self.worker,
            &self.outcome,
        )
    }

    /// A result for `stream`, signed with `key`.
    pub(super) fn new(key: &[u8], stream: &str, mut message: ResultMessage) -> ResultMessage {
        let mac = mac_bytes(signature(key, &message.signed(stream)));
        message.mac = mac;
        message
    }

    /// Checks its signature and format for `stream`.
    pub(super) fn verify(&self, key: &[u8], stream: &str) -> Result<(), String> {
        if self.v != FORMAT {
            return Err(format!(
                "format version {} (this pool reads {FORMAT})",
                self.v
            ));
        }
        verify(signature(key, &self.signed(stream)), &self.mac)
    }
}

/// The signature of a task record (see `record.rs`): of its key, stage, worker and outcome.
pub(super) fn record_mac(key: &[u8], signed: &impl Serialize) -> Vec<u8> {
    mac_bytes(signature(key, &("multiproc pool task record", signed)))
}

/// Checks a task record's signature.
pub(super) fn verify_record(key: &[u8], signed: &impl Serialize, mac: &[u8]) -> Result<(), String> {
    verify(signature(key, &("multiproc pool task record", signed)), mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> TaskMessage {
        TaskMessage::new(
            b"key",
            "multiproc:jobs",
            TaskMessage {
                v: FORMAT,
                pool: "p1".into(),
                slot: 3,
                id: 7,
                function: "square".into(),
                build: "b".into(),
                retry: (0, 0, 0, true, false),
                attempt: 0,
                record_ttl_s: 60,
                timeout_ms: None,
                items: b"args".to_vec(),
                mac: Vec::new(),
            },
        )
    }

    #[test]
    fn a_signed_task_verifies_on_its_own_stream_only() {
        let t = task();
        assert!(t.verify(b"key", "multiproc:jobs").is_ok());
        assert!(t.verify(b"other key", "multiproc:jobs").is_err());
        assert!(
            t.verify(b"key", "multiproc:other").is_err(),
            "replayed elsewhere"
        );
    }

    #[test]
    fn a_signature_is_the_hmac_of_the_encoding_under_its_key() {
        let signed = ("multiproc pool task", "multiproc:jobs", 2u32, "p1", 7u64);
        let expected = |key: &[u8]| {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
            mac.update(&postcard::to_allocvec(&signed).unwrap());
            mac.finalize().into_bytes()
        };
        // Keyed afresh, keyed from the thread's cache, and with another key in between.
        for key in [&b"key"[..], b"key", b"other key", b"key"] {
            assert_eq!(
                signature(key, &signed).finalize().into_bytes(),
                expected(key)
            );
        }
    }

    #[test]
    fn any_field_changed_breaks_the_signature() {
        let changes: [fn(&mut TaskMessage); 11] = [
            |t| t.timeout_ms = Some(1),
            |t| t.record_ttl_s = 0,
            |t| t.function = "cube".into(),
            |t| t.id += 1,
            |t| t.slot += 1,
            |t| t.pool = "p2".into(),
            |t| t.build = "c".into(),
            |t| t.retry.0 = 9,
            |t| t.retry.1 = 1000,
            |t| t.attempt = 1,
            |t| t.items = b"argz".to_vec(),
        ];
        for change in changes {
            let mut t = task();
            change(&mut t);
            assert!(t.verify(b"key", "multiproc:jobs").is_err(), "{t:?}");
        }
    }

    #[test]
    fn results_are_signed_for_their_stream() {
        let r = ResultMessage::new(
            b"key",
            "multiproc:jobs:results:p1",
            ResultMessage {
                v: FORMAT,
                slot: 1,
                id: 2,
                worker: "h:1".into(),
                outcome: Outcome::Done(b"r".to_vec()),
                mac: Vec::new(),
            },
        );
        assert!(r.verify(b"key", "multiproc:jobs:results:p1").is_ok());
        assert!(r.verify(b"key", "multiproc:jobs:results:p2").is_err());
        assert!(r.verify(b"nope", "multiproc:jobs:results:p1").is_err());
    }
}
