//! Rust values to [`Value`]: a serde `Serializer`, and `Serialize` for `Value` itself.
//!
//! The mapping (and its inverse in `de.rs`):
//!
//! | serde | `Value` |
//! |---|---|
//! | `bool`, integers, floats | `Bool`, `Int` (`BigInt` beyond `i64`), `Float` |
//! | `char`, `str` | `Str` |
//! | bytes (`serde_bytes`) | `Bytes` |
//! | `None`, `()`, unit struct | `None` |
//! | `Some(x)`, newtype struct | `x` (transparent) |
//! | sequence | `List` |
//! | tuple, tuple struct | `Tuple` |
//! | map, struct | `Dict` (struct fields as `Str` keys) |
//! | enum | externally tagged: unit variant `'Name'`; other variants `{'Name': content}` with a tuple or dict content |
//! | [`Value`] | itself, losslessly (globals and objects included) |

use std::cell::Cell;

use serde::ser::{self, Serialize};

use super::error::PickleError;
use super::value::Value;

/// The newtype name under which a [`Value`] passes itself through serde unchanged.
pub(super) const RAW_VALUE: &str = "\0multiproc::pickle::Value";

thread_local! {
    /// Set by our serializer just before it serializes a [`RAW_VALUE`] newtype.
    static RAW_REQUESTED: Cell<bool> = const { Cell::new(false) };
    /// Where a `Value` hands itself to our serializer or deserializer.
    pub(super) static RAW_SLOT: Cell<Option<Value>> = const { Cell::new(None) };
}

/// Converts any `Serialize` type to a [`Value`]; see the module docs for the mapping.
///
/// # Errors
/// [`PickleError::Convert`] when the type's `Serialize` fails.
pub(crate) fn to_value<T: Serialize + ?Sized>(value: &T) -> Result<Value, PickleError> {
    value.serialize(ValueSerializer)
}

/// `Serialize` for [`Value`]: exact through [`to_value`]; for other serializers, the natural
/// data (`Tuple`/`Set`/`FrozenSet` as sequences, `BigInt` as `i128`/`u128` when it fits), and an
/// error for globals and objects.
impl Serialize for Value {
    fn serialize<S: ser::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_newtype_struct(RAW_VALUE, &Natural(self))
    }
}

/// A `Value` serialized as plain serde data, unless our serializer asked for it raw.
struct Natural<'a>(&'a Value);

impl Serialize for Natural<'_> {
    fn serialize<S: ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use ser::{Error as _, SerializeMap, SerializeSeq, SerializeTuple};
        if RAW_REQUESTED.with(|r| r.replace(false)) {
            RAW_SLOT.with(|slot| slot.set(Some(self.0.clone())));
            return s.serialize_unit();
        }
        match self.0 {
            Value::None => s.serialize_none(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::BigInt(b) => match (b.to_i128(), b.to_u128()) {
                (Some(i), _) => s.serialize_i128(i),
                (_, Some(u)) => s.serialize_u128(u),
                _ => Err(S::Error::custom("int too large for this serializer")),
            },
            Value::Float(x) => s.serialize_f64(*x),
            Value::Str(v) => s.serialize_str(v),
            Value::Bytes(b) | Value::ByteArray(b) => s.serialize_bytes(b),
            Value::Tuple(items) => {
                let mut t = s.serialize_tuple(items.len())?;
                for v in items {
                    t.serialize_element(&Natural(v))?;
                }
                t.end()
            }
            Value::List(items) | Value::Set(items) | Value::FrozenSet(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for v in items {
                    seq.serialize_element(&Natural(v))?;
                }
                seq.end()
            }
            Value::Dict(pairs) => {
                let mut map = s.serialize_map(Some(pairs.len()))?;
                for (k, v) in pairs {
                    map.serialize_entry(&Natural(k), &Natural(v))?;
                }
                map.end()
            }
            Value::Global { .. } | Value::Object(_) => Err(S::Error::custom(format_args!(
                "{} can only be serialized as a pickle",
                self.0
            ))),
        }
    }
}

/// Builds a [`Value`] from serde calls.
struct ValueSerializer;

/// Caps preallocation from untrusted or careless size hints.
fn capacity(hint: Option<usize>) -> usize {
    hint.unwrap_or(0).min(4096)
}

impl ser::Serializer for ValueSerializer {
    type Ok = Value;
    type Error = PickleError;
    type SerializeSeq = SeqBuilder;
    type SerializeTuple = SeqBuilder;
    type SerializeTupleStruct = SeqBuilder;
    type SerializeTupleVariant = VariantBuilder<SeqBuilder>;
    type SerializeMap = MapBuilder;
    type SerializeStruct = MapBuilder;
    type SerializeStructVariant = VariantBuilder<MapBuilder>;

    fn serialize_bool(self, v: bool) -> Result<Value, PickleError> {
        Ok(Value::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> Result<Value, PickleError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_i16(self, v: i16) -> Result<Value, PickleError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_i32(self, v: i32) -> Result<Value, PickleError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_i64(self, v: i64) -> Result<Value, PickleError> {
        Ok(Value::Int(v))
    }
    fn serialize_i128(self, v: i128) -> Result<Value, PickleError> {
        Ok(Value::from_i128(v))
    }
    fn serialize_u8(self, v: u8) -> Result<Value, PickleError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_u16(self, v: u16) -> Result<Value, PickleError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_u32(self, v: u32) -> Result<Value, PickleError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_u64(self, v: u64) -> Result<Value, PickleError> {
        Ok(Value::from_u128(v.into()))
    }
    fn serialize_u128(self, v: u128) -> Result<Value, PickleError> {
        Ok(Value::from_u128(v))
    }
    fn serialize_f32(self, v: f32) -> Result<Value, PickleError> {
        Ok(Value::Float(v.into()))
    }
    fn serialize_f64(self, v: f64) -> Result<Value, PickleError> {
        Ok(Value::Float(v))
    }
    fn serialize_char(self, v: char) -> Result<Value, PickleError> {
        Ok(Value::Str(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> Result<Value, PickleError> {
        Ok(Value::Str(v.to_owned()))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<Value, PickleError> {
        Ok(Value::Bytes(v.to_vec()))
    }
    fn serialize_none(self) -> Result<Value, PickleError> {
        Ok(Value::None)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Value, PickleError> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<Value, PickleError> {
        Ok(Value::None)
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<Value, PickleError> {
        Ok(Value::None)
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<Value, PickleError> {
        Ok(Value::str(variant))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<Value, PickleError> {
        if name != RAW_VALUE {
            return value.serialize(self);
        }
        RAW_REQUESTED.with(|r| r.set(true));
        let result = value.serialize(ValueSerializer);
        RAW_REQUESTED.with(|r| r.set(false));
        match RAW_SLOT.with(Cell::take) {
            Some(v) => Ok(v),
            None => result,
        }
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<Value, PickleError> {
        Ok(Value::Dict(vec![(
            Value::str(variant),
            value.serialize(self)?,
        )]))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<SeqBuilder, PickleError> {
        Ok(SeqBuilder {
            items: Vec::with_capacity(capacity(len)),
            tuple: false,
        })
    }
    fn serialize_tuple(self, len: usize) -> Result<SeqBuilder, PickleError> {
        Ok(SeqBuilder {
            items: Vec::with_capacity(capacity(Some(len))),
            tuple: true,
        })
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<SeqBuilder, PickleError> {
        self.serialize_tuple(len)
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<VariantBuilder<SeqBuilder>, PickleError> {
        Ok(VariantBuilder {
            variant,
            inner: self.serialize_tuple(len)?,
        })
    }
    fn serialize_map(self, len: Option<usize>) -> Result<MapBuilder, PickleError> {
        Ok(MapBuilder {
            pairs: Vec::with_capacity(capacity(len)),
            key: None,
        })
    }
    fn serialize_struct(self, _name: &'static str, len: usize) -> Result<MapBuilder, PickleError> {
        self.serialize_map(Some(len))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<VariantBuilder<MapBuilder>, PickleError> {
        Ok(VariantBuilder {
            variant,
            inner: self.serialize_map(Some(len))?,
        })
    }
}

struct SeqBuilder {
    items: Vec<Value>,
    tuple: bool,
}

impl SeqBuilder {
    fn push<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), PickleError> {
        self.items.push(value.serialize(ValueSerializer)?);
        Ok(())
    }
    fn finish(self) -> Value {
        if self.tuple {
            Value::Tuple(self.items)
        } else {
            Value::List(self.items)
        }
    }
}

impl ser::SerializeSeq for SeqBuilder {
    type Ok = Value;
    type Error = PickleError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), PickleError> {
        self.push(value)
    }
    fn end(self) -> Result<Value, PickleError> {
        Ok(self.finish())
    }
}

impl ser::SerializeTuple for SeqBuilder {
    type Ok = Value;
    type Error = PickleError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), PickleError> {
        self.push(value)
    }
    fn end(self) -> Result<Value, PickleError> {
        Ok(self.finish())
    }
}

impl ser::SerializeTupleStruct for SeqBuilder {
    type Ok = Value;
    type Error = PickleError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), PickleError> {
        self.push(value)
    }
    fn end(self) -> Result<Value, PickleError> {
        Ok(self.finish())
    }
}

struct MapBuilder {
    pairs: Vec<(Value, Value)>,
    key: Option<Value>,
}

impl ser::SerializeMap for MapBuilder {
    type Ok = Value;
    type Error = PickleError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), PickleError> {
        self.key = Some(key.serialize(ValueSerializer)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), PickleError> {
        let key = self
            .key
            .take()
            .ok_or_else(|| PickleError::Convert("map value without a key".into()))?;
        self.pairs.push((key, value.serialize(ValueSerializer)?));
        Ok(())
    }
    fn end(self) -> Result<Value, PickleError> {
        Ok(Value::Dict(self.pairs))
    }
}

impl ser::SerializeStruct for MapBuilder {
    type Ok = Value;
    type Error = PickleError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), PickleError> {
        self.pairs
            .push((Value::str(key), value.serialize(ValueSerializer)?));
        Ok(())
    }
    fn end(self) -> Result<Value, PickleError> {
        Ok(Value::Dict(self.pairs))
    }
}

/// `{variant: content}`.
struct VariantBuilder<B> {
    variant: &'static str,
    inner: B,
}

impl ser::SerializeTupleVariant for VariantBuilder<SeqBuilder> {
    type Ok = Value;
    type Error = PickleError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), PickleError> {
        self.inner.push(value)
    }
    fn end(self) -> Result<Value, PickleError> {
        Ok(Value::Dict(vec![(
            Value::str(self.variant),
            self.inner.finish(),
        )]))
    }
}

impl ser::SerializeStructVariant for VariantBuilder<MapBuilder> {
    type Ok = Value;
    type Error = PickleError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), PickleError> {
        ser::SerializeStruct::serialize_field(&mut self.inner, key, value)
    }
    fn end(self) -> Result<Value, PickleError> {
        Ok(Value::Dict(vec![(
            Value::str(self.variant),
            Value::Dict(self.inner.pairs),
        )]))
    }
}
