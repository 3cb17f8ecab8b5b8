//! The `array.array` values that cross the wire as `REDUCE(array.array, (typecode, bytes))`:
//! multiprocessing's own reducer, items in the machine's byte order (as CPython sends them).
//! The server's `SyncManager.Array` and the client's `ArrayProxy` both read and write them.

use crate::pickle::Value;

/// The largest array served, in bytes: every copy of it fits a message.
pub(crate) const MAX_ARRAY_BYTES: usize = crate::connection::wire::DEFAULT_MAX_MESSAGE;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::manager) enum Kind {
    Signed,
    Unsigned,
    Float,
    Char,
}

/// An `array` typecode: `b B h H i I l L q Q f d u w`, with this machine's item sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Typecode {
    pub(in crate::manager) code: &'static str,
    pub(in crate::manager) size: usize,
    pub(in crate::manager) kind: Kind,
}

/// A Python exception: its built-in type name and message.
pub(crate) struct Raise(
    pub(in crate::manager) &'static str,
    pub(in crate::manager) String,
);

impl Raise {
    pub(in crate::manager) fn new(name: &'static str, message: impl Into<String>) -> Raise {
        Raise(name, message.into())
    }

    pub(crate) fn name(&self) -> &'static str {
        self.0
    }

    pub(crate) fn message(&self) -> &str {
        &self.1
    }
}

/// A typecode travels as its code.
impl serde::Serialize for Typecode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

impl<'de> serde::Deserialize<'de> for Typecode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let code = String::deserialize(d)?;
        Typecode::parse(&code)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown array typecode {code:?}")))
    }
}

impl Typecode {
    /// The typecode `code` names, if any.
    pub(crate) fn parse(code: &str) -> Option<Typecode> {
        const LONG: usize = std::mem::size_of::<std::ffi::c_long>();
        let (code, size, kind) = match code {
            "b" => ("b", 1, Kind::Signed),
            "B" => ("B", 1, Kind::Unsigned),
            "h" => ("h", 2, Kind::Signed),
            "H" => ("H", 2, Kind::Unsigned),
            "i" => ("i", 4, Kind::Signed),
            "I" => ("I", 4, Kind::Unsigned),
            "l" => ("l", LONG, Kind::Signed),
            "L" => ("L", LONG, Kind::Unsigned),
            "q" => ("q", 8, Kind::Signed),
            "Q" => ("Q", 8, Kind::Unsigned),
            "f" => ("f", 4, Kind::Float),
            "d" => ("d", 8, Kind::Float),
            // `wchar_t` is 4 bytes on the Unixes this crate runs on; `w` is `Py_UCS4`.
            "u" => ("u", 4, Kind::Char),
            "w" => ("w", 4, Kind::Char),
            _ => return None,
        };
        Some(Typecode { code, size, kind })
    }

    /// The code (`"i"`).
    pub(crate) fn code(&self) -> &'static str {
        self.code
    }

    /// The bits of the item stored in the first `size` bytes of `bytes`.
    pub(in crate::manager) fn raw(&self, bytes: &[u8]) -> u64 {
        let mut buf = [0u8; 8];
        buf[..self.size].copy_from_slice(&bytes[..self.size]);
        let wide = u64::from_ne_bytes(buf);
        // Native order: on a big-endian machine the item sits in the high bytes.
        if cfg!(target_endian = "big") {
            wide >> (8 * (8 - self.size))
        } else {
            wide
        }
    }

    /// The item stored in the first `size` bytes of `bytes`.
    pub(crate) fn read(&self, bytes: &[u8]) -> Value {
        let raw = self.raw(bytes);
        let bits = 8 * self.size as u32;
        match self.kind {
            Kind::Signed => {
                let shift = 64 - bits;
                Value::Int(((raw << shift) as i64) >> shift)
            }
            Kind::Unsigned => match i64::try_from(raw) {
                Ok(v) => Value::Int(v),
                Err(_) => Value::from_u128(u128::from(raw)),
            },
            Kind::Float if self.size == 4 => Value::Float(f64::from(f32::from_bits(raw as u32))),
            Kind::Float => Value::Float(f64::from_bits(raw)),
            Kind::Char => Value::Str(
                char::from_u32(raw as u32)
                    .unwrap_or(char::REPLACEMENT_CHARACTER)
                    .to_string(),
            ),
        }
    }

    pub(in crate::manager) fn store(&self, raw: u64, out: &mut Vec<u8>) {
        let wide = if cfg!(target_endian = "big") {
            raw << (8 * (8 - self.size))
        } else {
            raw
        };
        out.extend_from_slice(&wide.to_ne_bytes()[..self.size]);
    }

    /// Appends `value` as an item, or says which exception Python would raise.
    pub(crate) fn write(&self, value: &Value, out: &mut Vec<u8>) -> Result<(), Raise> {
        match self.kind {
            Kind::Signed | Kind::Unsigned => {
                let n: i128 = match value {
                    Value::Int(n) => i128::from(*n),
                    Value::Bool(b) => i128::from(*b),
                    Value::BigInt(b) => b.to_i128().unwrap_or(if b.is_negative() {
                        i128::MIN
                    } else {
                        i128::MAX
                    }),
                    other => {
                        return Err(Raise::new(
                            "TypeError",
                            format!(
                                "'{}' object cannot be interpreted as an integer",
                                other.type_name()
                            ),
                        ));
                    }
                };
                let bits = 8 * self.size as u32;
                let (min, max) = if self.kind == Kind::Signed {
                    (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
                } else {
                    (0, (1i128 << bits) - 1)
                };
                if n < min {
                    return Err(Raise::new(
                        "OverflowError",
                        format!("{n} is less than the minimum of typecode '{}'", self.code),
                    ));
                }
                if n > max {
                    return Err(Raise::new(
                        "OverflowError",
                        format!(
                            "{n} is greater than the maximum of typecode '{}'",
                            self.code
                        ),
                    ));
                }
                self.store(n as u64, out);
            }
            Kind::Float => {
                let x = match value {
                    Value::Float(x) => *x,
                    Value::Int(n) => *n as f64,
                    Value::Bool(b) => f64::from(u8::from(*b)),
                    other => {
                        return Err(Raise::new(
                            "TypeError",
                            format!("must be real number, not {}", other.type_name()),
                        ));
                    }
                };
                if self.size == 4 {
                    self.store(u64::from((x as f32).to_bits()), out);
                } else {
                    self.store(x.to_bits(), out);
                }
            }
            Kind::Char => {
                let mut chars = value.as_str().map(str::chars);
                match chars.as_mut().map(|c| (c.next(), c.next())) {
                    Some((Some(c), None)) => self.store(u64::from(u32::from(c)), out),
                    _ => {
                        return Err(Raise::new(
                            "TypeError",
                            "array item must be unicode character",
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks raw item bytes from a peer: not too many, whole items, and characters that are
    /// characters.
    pub(in crate::manager) fn check_bytes(&self, bytes: &[u8]) -> Result<(), Raise> {
        if bytes.len() > MAX_ARRAY_BYTES {
            return Err(too_big());
        }
        if !bytes.len().is_multiple_of(self.size) {
            return Err(Raise::new(
                "ValueError",
                "bytes length not a multiple of item size",
            ));
        }
        if self.kind == Kind::Char
            && bytes
                .chunks_exact(self.size)
                .any(|c| char::from_u32(self.raw(c) as u32).is_none())
        {
            return Err(Raise::new("ValueError", "not a unicode character"));
        }
        Ok(())
    }

    /// Every item of `bytes`.
    pub(crate) fn items(&self, bytes: &[u8]) -> Vec<Value> {
        bytes
            .chunks_exact(self.size)
            .map(|c| self.read(c))
            .collect()
    }

    /// The items as an `array.array` value (what `#GETVALUE` and slices return).
    pub(crate) fn to_value(self, bytes: Vec<u8>) -> Value {
        Value::reduce(
            "array",
            "array",
            vec![Value::str(self.code), Value::Bytes(bytes)],
        )
    }

    /// Encodes `items` as raw item bytes.
    pub(crate) fn encode(&self, items: &[Value]) -> Result<Vec<u8>, Raise> {
        let mut out = Vec::with_capacity(items.len().saturating_mul(self.size));
        for v in items {
            self.write(v, &mut out)?;
            if out.len() > MAX_ARRAY_BYTES {
                return Err(too_big());
            }
        }
        Ok(out)
    }
}

pub(in crate::manager) fn too_big() -> Raise {
    Raise::new(
        "MemoryError",
        format!("an array may hold at most {MAX_ARRAY_BYTES} bytes here"),
    )
}

/// `(typecode, item bytes)` of an `array.array` value: `REDUCE(array.array, (code, bytes))`
/// as multiprocessing pickles it, or `(code, [items])` as older picklers do.
pub(crate) fn parse_array(value: &Value) -> Option<Result<(Typecode, Vec<u8>), Raise>> {
    let object = value.as_object()?;
    if object.global() != Some(("array", "array")) {
        return None;
    }
    let Some(tc) = object
        .args
        .first()
        .and_then(Value::as_str)
        .and_then(Typecode::parse)
    else {
        return Some(Err(Raise::new("ValueError", "bad typecode")));
    };
    Some(match object.args.get(1) {
        Some(Value::Bytes(b) | Value::ByteArray(b)) => tc.check_bytes(b).map(|()| (tc, b.clone())),
        Some(Value::List(items)) => tc.encode(items).map(|b| (tc, b)),
        None => Ok((tc, Vec::new())),
        Some(_) => Err(Raise::new("TypeError", "bad array initializer")),
    })
}
