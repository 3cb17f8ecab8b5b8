//! The bytes of a pool chunk: its arguments going to a worker, its results coming back.
//!
//! Items: one tag byte, then either postcard's encoding of the `Vec` ([`POSTCARD`]) or, for
//! primitive numbers, their native bytes one after another ([`PLAIN`]): a `map` over integers
//! or floats then costs a copy instead of a per-item encoding (about 6× less on both sides).
//! Both ends are the same executable, so native byte order and sizes agree.
//!
//! Results: postcard's encoding of the failures, `Vec<(index, ItemFailure)>`, then the values
//! of the items that succeeded, as items. The failures come first so that they can be read
//! without knowing the value type (the initializer's report).

use std::any::{Any, TypeId};
use std::fmt;

use serde::de::{DeserializeOwned, DeserializeSeed, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{Error, Result};

/// Why one item of a pool task has no value.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ItemFailure {
    /// The target panicked on it.
    Panicked {
        message: String,
        location: Option<String>,
        pid: i32,
    },
}

impl ItemFailure {
    pub(crate) fn into_error(self) -> crate::Error {
        match self {
            ItemFailure::Panicked {
                message,
                location,
                pid,
            } => crate::Error::Panicked {
                name: "pool task".into(),
                pid,
                message,
                location,
            },
        }
    }
}

/// Items as postcard's encoding of a `Vec`.
const POSTCARD: u8 = 0;
/// Items as their native bytes, for primitive numbers.
const PLAIN: u8 = 1;

/// The failures of a chunk: the index of each failed item and why.
pub(crate) type Failures = Vec<(u32, ItemFailure)>;

/// Runs `$body` with `$t` bound to `A` if `A` is a primitive number type.
macro_rules! if_plain {
    ($a:ty, $t:ident => $body:block) => {
        if_plain!(@each $a, $t, $body,
            u8 u16 u32 u64 u128 usize i8 i16 i32 i64 i128 isize f32 f64)
    };
    (@each $a:ty, $t:ident, $body:block, $($ty:ident)*) => {
        $(
            if TypeId::of::<$a>() == TypeId::of::<$ty>() {
                #[allow(dead_code)]
                type $t = $ty;
                $body
            }
        )*
    };
}

/// Appends the encoding of `items` to `out`.
///
/// # Errors
/// An item that cannot be serialized, or one that holds a shared handle (pool tasks cannot
/// carry descriptors).
pub(crate) fn encode_items<A: Serialize + 'static>(
    what: &str,
    items: &[A],
    out: &mut Vec<u8>,
) -> Result<()> {
    if_plain!(A, P => {
        out.push(PLAIN);
        let start = out.len();
        out.resize(start + size_of_val(items), 0);
        for (to, item) in out[start..].chunks_exact_mut(size_of::<P>()).zip(items) {
            // Always some: `A` is `P`. The check folds away once the types are known.
            if let Some(v) = (item as &dyn Any).downcast_ref::<P>() {
                to.copy_from_slice(&v.to_ne_bytes());
            }
        }
        return Ok(());
    });
    out.push(POSTCARD);
    let fds = crate::share::encode_into(what, items, out)?;
    if !fds.is_empty() {
        return Err(Error::serialization(
            what,
            "cannot carry shared handles (queues, locks, pipes); pass them to the workers with \
             the initializer",
        ));
    }
    Ok(())
}

/// Decodes items written by [`encode_items`], appending them to `out`.
///
/// # Errors
/// Bytes that are not such an encoding.
pub(crate) fn decode_items_appending<A: DeserializeOwned + 'static>(
    what: &str,
    bytes: &[u8],
    out: &mut Vec<A>,
) -> Result<()> {
    let (&tag, body) = bytes
        .split_first()
        .ok_or_else(|| Error::protocol(what, "an empty chunk"))?;
    match tag {
        PLAIN => {
            if_plain!(A, P => {
                let Some(out) = (out as &mut dyn Any).downcast_mut::<Vec<P>>() else {
                    return Err(Error::protocol(what, "a plain chunk of another type"));
                };
                let size = size_of::<P>();
                if body.len() % size != 0 {
                    return Err(Error::protocol(what, "a plain chunk of partial items"));
                }
                out.extend(body.chunks_exact(size).map(|b| {
                    let mut v = [0u8; size_of::<P>()];
                    v.copy_from_slice(b);
                    P::from_ne_bytes(v)
                }));
                return Ok(());
            });
            Err(Error::protocol(what, "a plain chunk of a non-numeric type"))
        }
        POSTCARD => crate::share::decode_seed(what, body, Appending(out)),
        other => Err(Error::protocol(what, format!("unknown chunk kind {other}"))),
    }
}

/// Encodes a chunk's results: its failures, then the values of the items that succeeded.
///
/// # Errors
/// A value that cannot be serialized or holds a shared handle.
pub(crate) fn encode_results<R: Serialize + 'static>(
    failures: &Failures,
    values: &[R],
) -> Result<Vec<u8>> {
    const WHAT: &str = "pool task results";
    let mut out = Vec::new();
    let fds = crate::share::encode_into(WHAT, failures, &mut out)?;
    debug_assert!(fds.is_empty(), "failures hold no handles");
    encode_items(WHAT, values, &mut out)?;
    Ok(out)
}

/// Decodes the failures of a chunk's results, and the bytes of its values.
///
/// # Errors
/// Bytes that are not an encoding of results.
pub(crate) fn decode_failures(bytes: &[u8]) -> Result<(Failures, &[u8])> {
    postcard::take_from_bytes(bytes)
        .map_err(|e| Error::serialization("pool task results", format!("cannot deserialize: {e}")))
}

/// Decodes a chunk's results, appending the values to `out`; the failures.
///
/// # Errors
/// Bytes that are not an encoding of results.
pub(crate) fn decode_results_appending<R: DeserializeOwned + 'static>(
    bytes: &[u8],
    out: &mut Vec<R>,
) -> Result<Failures> {
    let (failures, values) = decode_failures(bytes)?;
    decode_items_appending("pool task results", values, out)?;
    Ok(failures)
}

/// Deserializes a sequence by pushing its elements onto a vector.
struct Appending<'a, A>(&'a mut Vec<A>);

impl<'de, A: Deserialize<'de>> DeserializeSeed<'de> for Appending<'_, A> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, A: Deserialize<'de>> Visitor<'de> for Appending<'_, A> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence of items")
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> std::result::Result<(), S::Error> {
        while let Some(item) = seq.next_element()? {
            self.0.push(item);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<A: Serialize + DeserializeOwned + 'static + PartialEq + fmt::Debug + Clone>(
        items: &[A],
    ) -> u8 {
        let mut bytes = Vec::new();
        encode_items("test", items, &mut bytes).unwrap();
        let mut back = vec![items[0].clone()];
        decode_items_appending("test", &bytes, &mut back).unwrap();
        assert_eq!(&back[1..], items);
        bytes[0]
    }

    #[test]
    fn numbers_travel_plain_and_the_rest_through_postcard() {
        assert_eq!(round_trip(&[1u64, u64::MAX, 0]), PLAIN);
        assert_eq!(round_trip(&[-1i8, 7]), PLAIN);
        assert_eq!(round_trip(&[1.5f64, f64::NAN.min(2.0), -0.0]), PLAIN);
        assert_eq!(round_trip(&[u128::MAX]), PLAIN);
        assert_eq!(round_trip(&[true, false]), POSTCARD);
        assert_eq!(round_trip(&["a".to_string()]), POSTCARD);
        assert_eq!(round_trip(&[(1u64, 2u64)]), POSTCARD);
    }

    #[test]
    fn results_keep_failures_first() {
        let failures = vec![(
            1,
            ItemFailure::Panicked {
                message: "boom".into(),
                location: None,
                pid: 7,
            },
        )];
        let bytes = encode_results(&failures, &[3u32, 4]).unwrap();
        let (read, _) = decode_failures(&bytes).unwrap();
        assert_eq!(read.len(), 1);
        let mut values = Vec::new();
        let read = decode_results_appending::<u32>(&bytes, &mut values).unwrap();
        assert_eq!((read[0].0, values), (1, vec![3, 4]));
    }

    #[test]
    fn bad_bytes_are_errors() {
        let mut out: Vec<u64> = Vec::new();
        for bad in [
            &[][..],
            &[PLAIN, 1, 2, 3][..],
            &[9, 0][..],
            &[POSTCARD, 5, 1][..],
        ] {
            assert!(
                decode_items_appending("test", bad, &mut out).is_err(),
                "{bad:?}"
            );
        }
        let mut strings: Vec<String> = Vec::new();
        assert!(decode_items_appending("test", &[PLAIN, 0, 0, 0, 0], &mut strings).is_err());
    }
}
