//! CPython's pickle format, as data: the codec behind the manager protocol.
//!
//! - [`Value`] is pickle's data model (None, bool, int, float, str, bytes, bytearray, tuple,
//!   list, dict, set, frozenset) plus [`Value::Global`] and [`Object`] for the few objects the
//!   manager protocol carries (exceptions such as `queue.Empty`, `Token`, `RebuildProxy`).
//! - [`decode()`] reads protocols 0–5 from untrusted bytes. It never imports or calls anything,
//!   bounds every length and the memory it uses ([`Limits`]), does not recurse, and does not
//!   panic. See `decode.rs` for how.
//! - [`encode()`] writes protocol 4 without frames or memo, which CPython 3.4+ reads.
//! - [`to_value`] / [`from_value`] convert between `Value` and serde types (mapping in
//!   `ser.rs`).
//!
//! Not supported (decoding fails with a clear error): `PERSID`/`BINPERSID`, `EXT1/2/4`,
//! `INST`/`OBJ`, protocol-0/1 byte strings (`STRING`, `BINSTRING`, `SHORT_BINSTRING`: Python 2
//! `str`), out-of-band buffers (`NEXT_BUFFER`, `READONLY_BUFFER`), strings holding lone
//! surrogates (valid in Python, not in a Rust `String`), and structures that contain
//! themselves.
//!
//! Reference: `docs/cpython-manager-protocol.md` §5.

#![forbid(unsafe_code)]
// Crate-private and not yet used: the manager (server and proxies) will use it.
#![allow(dead_code, unused_imports)]

mod de;
mod decode;
mod encode;
mod error;
mod opcodes;
mod ser;
mod value;

pub(crate) use de::from_value;
pub(crate) use decode::{Limits, decode, decode_with};
pub(crate) use encode::{PROTOCOL, encode, encode_into};
pub(crate) use error::PickleError;
pub(crate) use ser::to_value;
pub(crate) use value::{
    BigInt, Object, ObjectKind, Value, float_repr, is_printable, parse_decimal,
};

/// Encodes any serde value as a pickle ([`to_value`] then [`encode()`]).
///
/// # Errors
/// As [`to_value`] and [`encode()`].
pub(crate) fn to_vec<T: serde::Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, PickleError> {
    encode(&to_value(value)?)
}

/// Decodes a pickle into any serde type ([`decode()`] then [`from_value`]).
///
/// # Errors
/// As [`decode()`] and [`from_value`].
pub(crate) fn from_slice<T: serde::de::DeserializeOwned>(data: &[u8]) -> Result<T, PickleError> {
    from_value(decode(data)?)
}

/// The fuzz target's body (`fuzz/fuzz_targets/pickle_decode.rs`): decoding must not panic, and
/// whatever decodes must survive an encode/decode round trip unchanged.
///
/// # Panics
/// When that property fails: that is what the fuzzer looks for.
pub(crate) fn fuzz_decode(data: &[u8]) {
    let limits = Limits {
        max_memory: 64 << 20,
        ..Limits::default()
    };
    let Ok(value) = decode_with(data, &limits) else {
        return;
    };
    let bytes = encode(&value).expect("a decoded value encodes");
    match decode_with(&bytes, &limits) {
        Ok(again) => assert!(
            same(&value, &again),
            "round trip changed {value} into {again}"
        ),
        Err(PickleError::LimitExceeded { .. }) => {}
        Err(e) => panic!("re-decoding {value} failed: {e}"),
    }
    let _ = from_value::<Value>(value);
}

/// A hash that agrees with [`same`]: values that are `same` hash alike (for dict keys).
pub(crate) fn hash_value<H: std::hash::Hasher>(v: &Value, h: &mut H) {
    use std::hash::Hash;
    std::mem::discriminant(v).hash(h);
    match v {
        Value::Bool(b) => b.hash(h),
        Value::Int(i) => i.hash(h),
        Value::BigInt(b) => b.hash(h),
        Value::Float(f) => f.to_bits().hash(h),
        Value::Str(s) => s.hash(h),
        Value::Bytes(b) | Value::ByteArray(b) => b.hash(h),
        Value::Tuple(x) | Value::List(x) | Value::Set(x) | Value::FrozenSet(x) => {
            x.len().hash(h);
            x.iter().for_each(|e| hash_value(e, h));
        }
        Value::Dict(pairs) => {
            pairs.len().hash(h);
            for (k, v) in pairs {
                hash_value(k, h);
                hash_value(v, h);
            }
        }
        Value::Global { module, name } => (module, name).hash(h),
        // The discriminant is enough to agree with `same` for the rest.
        Value::None | Value::Object(_) => {}
    }
}

/// A number as Python compares it: `True == 1 == 1.0`, `0.0 == -0.0`.
#[derive(PartialEq, Eq, Hash)]
enum Number<'a> {
    /// An integral value (bools, ints, integral floats within `i128`).
    Integral(i128),
    /// A float that is not integral (or beyond `i128`), by its bits (`-0.0` is `Integral`).
    Float(u64),
    /// An int beyond `i128`, by its bytes.
    Big(&'a [u8]),
}

/// `v` as a [`Number`], if it is one.
fn number(v: &Value) -> Option<Number<'_>> {
    Some(match v {
        Value::Bool(b) => Number::Integral(i128::from(*b)),
        Value::Int(i) => Number::Integral(i128::from(*i)),
        Value::BigInt(b) => b
            .to_i128()
            .map_or(Number::Big(b.to_le_bytes()), Number::Integral),
        Value::Float(f) => {
            // 2^127: every integral float below it in magnitude converts exactly.
            const LIMIT: f64 = 170_141_183_460_469_231_731_687_303_715_884_105_728.0;
            if f.fract() == 0.0 && f.abs() < LIMIT {
                Number::Integral(*f as i128)
            } else {
                Number::Float(f.to_bits())
            }
        }
        _ => return None,
    })
}

/// Hashes `v` so that values equal under [`py_eq`] hash alike.
pub(crate) fn py_hash<H: std::hash::Hasher>(v: &Value, h: &mut H) {
    use std::hash::Hash;
    match (number(v), v) {
        (Some(n), _) => n.hash(h),
        (None, Value::Tuple(x) | Value::List(x)) => {
            std::mem::discriminant(v).hash(h);
            x.len().hash(h);
            x.iter().for_each(|e| py_hash(e, h));
        }
        (None, Value::Set(x) | Value::FrozenSet(x)) => {
            // One tag for both (`{1} == frozenset({1})`), and an order-free sum of the items'.
            "set".hash(h);
            x.len().hash(h);
            h.write_u64(x.iter().fold(0, |sum, e| sum.wrapping_add(alone(e))));
        }
        (None, Value::Dict(pairs)) => {
            std::mem::discriminant(v).hash(h);
            pairs.len().hash(h);
            let sum = pairs.iter().fold(0u64, |sum, (k, e)| {
                sum.wrapping_add(alone(k).rotate_left(1) ^ alone(e))
            });
            h.write_u64(sum);
        }
        (None, _) => hash_value(v, h),
    }
}

/// Whether every item of `items` is [`py_eq`] to one of `set`'s.
fn contains_all(set: &[Value], items: &[Value]) -> bool {
    if set.len() <= 8 {
        return items.iter().all(|p| set.iter().any(|q| py_eq(p, q)));
    }
    let mut by_hash: std::collections::HashMap<u64, Vec<&Value>> = Default::default();
    for q in set {
        by_hash.entry(alone(q)).or_default().push(q);
    }
    items.iter().all(|p| {
        by_hash
            .get(&alone(p))
            .is_some_and(|qs| qs.iter().any(|q| py_eq(p, q)))
    })
}

/// [`py_hash`] of `v` on its own, to combine without regard to order.
fn alone(v: &Value) -> u64 {
    use std::hash::Hasher;
    // SipHash with fixed keys: the same value gives the same figure every time.
    let mut h = std::hash::DefaultHasher::new();
    py_hash(v, &mut h);
    h.finish()
}

/// Equality as Python's `==` has it for dict keys and list searches: numbers by value
/// (`True == 1 == 1.0`, `0.0 == -0.0`), tuples and lists element by element under the same
/// rule, sets and frozensets (one equal to the other) and dicts whatever their order;
/// everything else structurally, as [`same`] (a `NaN` equals itself, as the very same object
/// does in CPython's dicts).
pub(crate) fn py_eq(a: &Value, b: &Value) -> bool {
    match (number(a), number(b)) {
        (Some(x), Some(y)) => x == y,
        (Some(_), None) | (None, Some(_)) => false,
        (None, None) => match (a, b) {
            (Value::Tuple(x), Value::Tuple(y)) | (Value::List(x), Value::List(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(p, q)| py_eq(p, q))
            }
            (Value::Set(x) | Value::FrozenSet(x), Value::Set(y) | Value::FrozenSet(y)) => {
                // A set holds no two equal items: same size and each found is equality.
                x.len() == y.len() && contains_all(y, x)
            }
            (Value::Dict(x), Value::Dict(y)) => {
                x.len() == y.len()
                    && x.iter().all(|(k, v)| {
                        y.iter()
                            .find(|(k2, _)| py_eq(k, k2))
                            .is_some_and(|(_, v2)| py_eq(v, v2))
                    })
            }
            _ => same(a, b),
        },
    }
}

/// Structural equality with floats compared bit for bit (so a `NaN` equals itself).
pub(crate) fn same(a: &Value, b: &Value) -> bool {
    fn all(a: &[Value], b: &[Value]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y))
    }
    fn pairs(a: &[(Value, Value)], b: &[(Value, Value)]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|((k1, v1), (k2, v2))| same(k1, k2) && same(v1, v2))
    }
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
        (Value::Tuple(x), Value::Tuple(y))
        | (Value::List(x), Value::List(y))
        | (Value::Set(x), Value::Set(y))
        | (Value::FrozenSet(x), Value::FrozenSet(y)) => all(x, y),
        (Value::Dict(x), Value::Dict(y)) => pairs(x, y),
        (Value::Object(x), Value::Object(y)) => {
            let kinds = match (&x.kind, &y.kind) {
                (ObjectKind::NewObjEx { kwargs: k1 }, ObjectKind::NewObjEx { kwargs: k2 }) => {
                    pairs(k1, k2)
                }
                (k1, k2) => std::mem::discriminant(k1) == std::mem::discriminant(k2),
            };
            kinds
                && same(&x.callable, &y.callable)
                && all(&x.args, &y.args)
                && all(&x.list_items, &y.list_items)
                && pairs(&x.dict_items, &y.dict_items)
                && match (&x.state, &y.state) {
                    (Some(s1), Some(s2)) => same(s1, s2),
                    (None, None) => true,
                    _ => false,
                }
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests;
