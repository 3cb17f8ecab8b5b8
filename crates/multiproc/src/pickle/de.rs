//! [`Value`] to Rust values: a serde `Deserializer`, and `Deserialize` for `Value` itself. The
//! mapping is the inverse of the table in `ser.rs`, and a little more lenient: any of
//! `Tuple`/`List`/`Set`/`FrozenSet` reads as a sequence, `Bytes`/`ByteArray` as bytes or a
//! sequence of ints, an `Int` as a float, a `Dict` or a sequence as a struct, `()` as unit.

use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer as _, IntoDeserializer as _, Unexpected,
    Visitor,
};
use serde::{Deserialize, forward_to_deserialize_any};

use super::error::PickleError;
use super::ser::{RAW_SLOT, RAW_VALUE};
use super::value::Value;

/// Converts a [`Value`] to any `Deserialize` type; see `ser.rs` for the mapping.
///
/// # Errors
/// [`PickleError::Convert`] when the value does not have the shape `T` expects.
pub(crate) fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, PickleError> {
    T::deserialize(ValueDeserializer(value))
}

/// `Deserialize` for [`Value`]: exact through [`from_value`]; from other deserializers, the
/// natural mapping (sequences to `List`, maps to `Dict`, unit to `None`).
impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        d.deserialize_newtype_struct(RAW_VALUE, ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
        Ok(Value::from_i128(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from_u128(v.into()))
    }
    fn visit_u128<E>(self, v: u128) -> Result<Value, E> {
        Ok(Value::from_u128(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::str(v))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Bytes(v.to_vec()))
    }
    fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Value, E> {
        Ok(Value::Bytes(v))
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::None)
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::None)
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_newtype_struct<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        // Our deserializer left the value in the slot; any other one gets the natural mapping.
        match RAW_SLOT.with(|slot| slot.take()) {
            Some(v) => Ok(v),
            None => d.deserialize_any(ValueVisitor),
        }
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(v) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::List(items))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(0).min(4096));
        while let Some(kv) = map.next_entry()? {
            pairs.push(kv);
        }
        Ok(Value::Dict(pairs))
    }
}

/// Reads a [`Value`] (owned) through serde.
struct ValueDeserializer(Value);

impl Value {
    fn unexpected(&self) -> Unexpected<'_> {
        match self {
            Value::None => Unexpected::Unit,
            Value::Bool(b) => Unexpected::Bool(*b),
            Value::Int(i) => Unexpected::Signed(*i),
            Value::Float(x) => Unexpected::Float(*x),
            Value::Str(s) => Unexpected::Str(s),
            Value::Bytes(b) | Value::ByteArray(b) => Unexpected::Bytes(b),
            Value::Tuple(_) | Value::List(_) | Value::Set(_) | Value::FrozenSet(_) => {
                Unexpected::Seq
            }
            Value::Dict(_) => Unexpected::Map,
            _ => Unexpected::Other(self.type_name()),
        }
    }
}

fn invalid_type<T>(v: &Value, exp: &dyn de::Expected) -> Result<T, PickleError> {
    Err(de::Error::invalid_type(v.unexpected(), exp))
}

/// Visits `items` as a sequence and insists that the visitor took them all.
fn visit_seq<'de, V: Visitor<'de>>(items: Vec<Value>, visitor: V) -> Result<V::Value, PickleError> {
    let len = items.len();
    let mut access = SeqAccess(items.into_iter());
    let out = visitor.visit_seq(&mut access)?;
    match access.0.len() {
        0 => Ok(out),
        left => Err(de::Error::invalid_length(
            len,
            &format!("{} elements", len - left).as_str(),
        )),
    }
}

fn visit_map<'de, V: Visitor<'de>>(
    pairs: Vec<(Value, Value)>,
    visitor: V,
) -> Result<V::Value, PickleError> {
    let len = pairs.len();
    let mut access = MapAccess {
        iter: pairs.into_iter(),
        value: None,
    };
    let out = visitor.visit_map(&mut access)?;
    match access.iter.len() {
        0 => Ok(out),
        left => Err(de::Error::invalid_length(
            len,
            &format!("{} entries", len - left).as_str(),
        )),
    }
}

fn bytes_as_ints(b: Vec<u8>) -> Vec<Value> {
    b.into_iter().map(|x| Value::Int(x.into())).collect()
}

impl<'de> de::Deserializer<'de> for ValueDeserializer {
    type Error = PickleError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PickleError> {
        match self.0 {
            Value::None => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(b),
            Value::Int(i) => visitor.visit_i64(i),
            Value::BigInt(b) => match (b.to_u128(), b.to_i128()) {
                (Some(u), _) => match u64::try_from(u) {
                    Ok(u) => visitor.visit_u64(u),
                    Err(_) => visitor.visit_u128(u),
                },
                (_, Some(i)) => visitor.visit_i128(i),
                _ => Err(de::Error::custom("int too large (more than 128 bits)")),
            },
            Value::Float(x) => visitor.visit_f64(x),
            Value::Str(s) => visitor.visit_string(s),
            Value::Bytes(b) | Value::ByteArray(b) => visitor.visit_byte_buf(b),
            Value::Tuple(v) | Value::List(v) | Value::Set(v) | Value::FrozenSet(v) => {
                visit_seq(v, visitor)
            }
            Value::Dict(pairs) => visit_map(pairs, visitor),
            v @ (Value::Global { .. } | Value::Object(_)) => Err(de::Error::custom(format_args!(
                "{v} is not plain data; read it as a Value"
            ))),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PickleError> {
        match self.0 {
            Value::None => visitor.visit_none(),
            v => visitor.visit_some(ValueDeserializer(v)),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PickleError> {
        match self.0 {
            Value::None => visitor.visit_unit(),
            Value::Tuple(t) if t.is_empty() => visitor.visit_unit(),
            v => invalid_type(&v, &visitor),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, PickleError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, PickleError> {
        if name != RAW_VALUE {
            return visitor.visit_newtype_struct(self);
        }
        RAW_SLOT.with(|slot| slot.set(Some(self.0)));
        let out = visitor.visit_newtype_struct(ValueDeserializer(Value::None));
        RAW_SLOT.with(|slot| slot.set(None));
        out
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PickleError> {
        match self.0 {
            Value::Tuple(v) | Value::List(v) | Value::Set(v) | Value::FrozenSet(v) => {
                visit_seq(v, visitor)
            }
            Value::Bytes(b) | Value::ByteArray(b) => visit_seq(bytes_as_ints(b), visitor),
            v => invalid_type(&v, &visitor),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, PickleError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, PickleError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PickleError> {
        match self.0 {
            Value::Dict(pairs) => visit_map(pairs, visitor),
            v => invalid_type(&v, &visitor),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, PickleError> {
        match self.0 {
            Value::Dict(pairs) => visit_map(pairs, visitor),
            Value::Tuple(v) | Value::List(v) => visit_seq(v, visitor),
            v => invalid_type(&v, &visitor),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, PickleError> {
        match self.0 {
            Value::Str(s) => visitor.visit_enum(s.into_deserializer()),
            Value::Dict(mut pairs) if pairs.len() == 1 => {
                let (variant, content) = pairs.pop().unwrap_or((Value::None, Value::None));
                visitor.visit_enum(EnumAccess { variant, content })
            }
            v => invalid_type(&v, &"a str or a dict with one entry"),
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PickleError> {
        match self.0 {
            Value::Str(s) => visitor.visit_string(s),
            Value::Int(i) if i >= 0 => visitor.visit_u64(i as u64),
            Value::Bytes(b) => visitor.visit_byte_buf(b),
            v => invalid_type(&v, &visitor),
        }
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PickleError> {
        match self.0 {
            Value::Bytes(b) | Value::ByteArray(b) => visitor.visit_byte_buf(b),
            Value::Str(s) => visitor.visit_string(s),
            Value::Tuple(v) | Value::List(v) => visit_seq(v, visitor),
            v => invalid_type(&v, &visitor),
        }
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PickleError> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PickleError> {
        visitor.visit_unit()
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
    }
}

struct SeqAccess(std::vec::IntoIter<Value>);

impl<'de> de::SeqAccess<'de> for SeqAccess {
    type Error = PickleError;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, PickleError> {
        self.0
            .next()
            .map(|v| seed.deserialize(ValueDeserializer(v)))
            .transpose()
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct MapAccess {
    iter: std::vec::IntoIter<(Value, Value)>,
    value: Option<Value>,
}

impl<'de> de::MapAccess<'de> for MapAccess {
    type Error = PickleError;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, PickleError> {
        match self.iter.next() {
            Some((k, v)) => {
                self.value = Some(v);
                seed.deserialize(ValueDeserializer(k)).map(Some)
            }
            None => Ok(None),
        }
    }
    fn next_value_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<S::Value, PickleError> {
        let v = self
            .value
            .take()
            .ok_or_else(|| PickleError::Convert("map value asked before its key".into()))?;
        seed.deserialize(ValueDeserializer(v))
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

/// `{variant: content}`.
struct EnumAccess {
    variant: Value,
    content: Value,
}

impl<'de> de::EnumAccess<'de> for EnumAccess {
    type Error = PickleError;
    type Variant = ValueDeserializer;
    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, ValueDeserializer), PickleError> {
        let v = seed.deserialize(ValueDeserializer(self.variant))?;
        Ok((v, ValueDeserializer(self.content)))
    }
}

impl<'de> de::VariantAccess<'de> for ValueDeserializer {
    type Error = PickleError;
    fn unit_variant(self) -> Result<(), PickleError> {
        match self.0 {
            Value::None => Ok(()),
            Value::Tuple(t) if t.is_empty() => Ok(()),
            v => invalid_type(&v, &"a unit variant"),
        }
    }
    fn newtype_variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<S::Value, PickleError> {
        seed.deserialize(self)
    }
    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, PickleError> {
        self.deserialize_seq(visitor)
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, PickleError> {
        self.deserialize_struct("", fields, visitor)
    }
}
