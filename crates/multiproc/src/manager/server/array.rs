//! `SyncManager.Array(typecode, sequence)`: an `array.array` served to CPython's `ArrayProxy`
//! (`__len__`, `__getitem__`, `__setitem__`, with ints and slices).

use std::sync::Mutex;

use super::objects::{Reply, ServedObject, exception};
use super::python::Slice;
use crate::manager::typecode::{Kind, MAX_ARRAY_BYTES, Raise, Typecode, parse_array, too_big};
use crate::pickle::Value;
use crate::sync::lock;

impl From<Raise> for Reply {
    fn from(r: Raise) -> Reply {
        exception(r.0, vec![Value::Str(r.1)])
    }
}

/// A slice key's `(start, step, count)` over `len` items, if `key` is a slice.
fn slice_of(key: &Value, len: usize) -> Option<Result<(i64, i64, usize), Raise>> {
    match Slice::of(key, len) {
        Ok(None) => None,
        Ok(Some(s)) => Some(Ok((s.start, s.step, s.positions().count()))),
        Err(e) => Some(Err(Raise::new(e.kind, e.message()))),
    }
}

/// A served `array.array`.
pub(crate) struct ServedArray {
    typecode: Typecode,
    data: Mutex<Vec<u8>>,
}

impl ServedArray {
    /// From `create('Array', typecode, sequence)`'s arguments (a list or tuple of items, a
    /// `str` for `u`/`w`, `bytes`, or another array).
    pub(crate) fn from_args(args: &[Value]) -> Result<ServedArray, String> {
        let traceback = |r: Raise| format!("{}: {}", r.name(), r.message());
        let typecode = match args.first() {
            Some(Value::Str(code)) => Typecode::parse(code).ok_or_else(|| {
                "ValueError: bad typecode (must be b, B, u, w, h, H, i, I, l, L, q, Q, f or d)"
                    .to_string()
            })?,
            _ => return Err("TypeError: Array() needs a typecode str".into()),
        };
        let data = match args.get(1) {
            None | Some(Value::None) => Vec::new(),
            Some(Value::List(items) | Value::Tuple(items)) => {
                typecode.encode(items).map_err(traceback)?
            }
            Some(Value::Str(s)) if typecode.kind == Kind::Char => {
                let chars: Vec<Value> = s.chars().map(|c| Value::Str(c.to_string())).collect();
                typecode.encode(&chars).map_err(traceback)?
            }
            Some(Value::Bytes(b) | Value::ByteArray(b)) if typecode.kind != Kind::Char => {
                typecode.check_bytes(b).map_err(traceback)?;
                b.clone()
            }
            Some(other) => match parse_array(other) {
                Some(Ok((tc, bytes))) if tc == typecode => bytes,
                Some(Ok((tc, bytes)))
                    if (tc.kind == Kind::Char) == (typecode.kind == Kind::Char) =>
                {
                    typecode.encode(&tc.items(&bytes)).map_err(traceback)?
                }
                Some(Err(r)) => return Err(traceback(r)),
                _ => {
                    return Err(format!(
                        "TypeError: cannot make an array of typecode '{}' from a {}",
                        typecode.code,
                        other.type_name()
                    ));
                }
            },
        };
        Ok(ServedArray {
            typecode,
            data: Mutex::new(data),
        })
    }

    fn index(&self, len: usize, index: &Value, what: &str) -> Result<usize, Raise> {
        let i = match index {
            Value::Int(i) => *i,
            Value::Bool(b) => i64::from(*b),
            Value::BigInt(_) => i64::MAX,
            other => {
                return Err(Raise::new(
                    "TypeError",
                    format!("array indices must be integers, not {}", other.type_name()),
                ));
            }
        };
        let i = if i < 0 {
            i.saturating_add(len as i64)
        } else {
            i
        };
        if (0..len as i64).contains(&i) {
            Ok(i as usize)
        } else {
            Err(Raise::new(
                "IndexError",
                format!("array {what} out of range"),
            ))
        }
    }

    fn get(&self, key: &Value) -> Result<Value, Raise> {
        let data = lock(&self.data);
        let size = self.typecode.size;
        let len = data.len() / size;
        match slice_of(key, len) {
            Some(bounds) => {
                let (start, step, count) = bounds?;
                let mut out = Vec::with_capacity(count * size);
                for k in 0..count as i64 {
                    let at = (start + k * step) as usize * size;
                    out.extend_from_slice(&data[at..at + size]);
                }
                Ok(self.typecode.to_value(out))
            }
            None => {
                let i = self.index(len, key, "index")?;
                Ok(self.typecode.read(&data[i * size..(i + 1) * size]))
            }
        }
    }

    fn set(&self, key: &Value, value: &Value) -> Result<(), Raise> {
        let mut data = lock(&self.data);
        let size = self.typecode.size;
        let len = data.len() / size;
        let Some(bounds) = slice_of(key, len) else {
            let i = self.index(len, key, "assignment index")?;
            let mut item = Vec::with_capacity(size);
            self.typecode.write(value, &mut item)?;
            data[i * size..(i + 1) * size].copy_from_slice(&item);
            return Ok(());
        };
        let (start, step, count) = bounds?;
        let new = match parse_array(value) {
            Some(Ok((tc, bytes))) if tc == self.typecode => bytes,
            Some(Ok(_)) => {
                return Err(Raise::new(
                    "TypeError",
                    "bad argument type for built-in operation",
                ));
            }
            Some(Err(r)) => return Err(r),
            None => {
                return Err(Raise::new(
                    "TypeError",
                    format!(
                        "can only assign array (not \"{}\") to array slice",
                        value.type_name()
                    ),
                ));
            }
        };
        if step == 1 {
            let from = start as usize * size;
            let to = from + count * size;
            if data.len() - (to - from) + new.len() > MAX_ARRAY_BYTES {
                return Err(too_big());
            }
            data.splice(from..to, new);
            return Ok(());
        }
        if new.len() / size != count {
            return Err(Raise::new(
                "ValueError",
                format!(
                    "attempt to assign array of size {} to extended slice of size {count}",
                    new.len() / size
                ),
            ));
        }
        for (k, item) in new.chunks_exact(size).enumerate() {
            let at = (start + k as i64 * step) as usize * size;
            data[at..at + size].copy_from_slice(item);
        }
        Ok(())
    }
}

impl ServedObject for ServedArray {
    fn exposed(&self) -> &'static [&'static str] {
        &["__len__", "__getitem__", "__setitem__"]
    }

    fn call(&self, method: &str, args: &[Value], _kwds: &[(Value, Value)]) -> Reply {
        let missing = || exception("TypeError", vec![Value::str("missing argument")]);
        match (method, args) {
            ("__len__", _) => Reply::Return(Value::Int(
                (lock(&self.data).len() / self.typecode.size) as i64,
            )),
            ("__getitem__", [key, ..]) => match self.get(key) {
                Ok(v) => Reply::Return(v),
                Err(r) => r.into(),
            },
            ("__setitem__", [key, value, ..]) => match self.set(key, value) {
                Ok(()) => Reply::Return(Value::None),
                Err(r) => r.into(),
            },
            ("__getitem__" | "__setitem__", _) => missing(),
            (m, _) => Reply::Traceback(format!("AttributeError: an array has no method {m:?}")),
        }
    }

    fn value(&self) -> Option<Value> {
        Some(self.typecode.to_value(lock(&self.data).clone()))
    }

    fn repr(&self) -> String {
        let items = Value::List(self.typecode.items(&lock(&self.data)));
        format!("array('{}', {items})", self.typecode.code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(a: Option<i64>, b: Option<i64>, c: Option<i64>) -> Value {
        let v = |x: Option<i64>| x.map_or(Value::None, Value::Int);
        Value::reduce("builtins", "slice", vec![v(a), v(b), v(c)])
    }

    fn ints(array: &ServedArray, key: &Value) -> Vec<Value> {
        let v = array.get(key).ok().unwrap();
        let (tc, bytes) = parse_array(&v).unwrap().ok().unwrap();
        tc.items(&bytes)
    }

    fn int_list(items: &[i64]) -> Vec<Value> {
        items.iter().map(|i| Value::Int(*i)).collect()
    }

    #[test]
    fn slices_follow_python() {
        let a = ServedArray::from_args(&[Value::str("i"), Value::List(int_list(&[0, 1, 2, 3, 4]))])
            .unwrap();
        assert_eq!(ints(&a, &slice(Some(1), Some(3), None)), int_list(&[1, 2]));
        assert_eq!(
            ints(&a, &slice(None, None, Some(-1))),
            int_list(&[4, 3, 2, 1, 0])
        );
        assert_eq!(ints(&a, &slice(Some(-2), None, None)), int_list(&[3, 4]));
        assert_eq!(ints(&a, &slice(None, None, Some(2))), int_list(&[0, 2, 4]));
        assert_eq!(ints(&a, &slice(Some(10), Some(20), None)), int_list(&[]));
        assert_eq!(
            ints(&a, &slice(Some(3), Some(1), Some(-1))),
            int_list(&[3, 2])
        );
        assert!(a.get(&slice(None, None, Some(0))).is_err());
        let three = Typecode::parse("i").unwrap().to_value(
            Typecode::parse("i")
                .unwrap()
                .encode(&int_list(&[7, 8, 9]))
                .ok()
                .unwrap(),
        );
        a.set(&slice(Some(1), Some(2), None), &three).ok().unwrap();
        assert_eq!(
            ints(&a, &slice(None, None, None)),
            int_list(&[0, 7, 8, 9, 2, 3, 4])
        );
        assert!(a.set(&slice(None, None, Some(2)), &three).is_err());
        assert!(a.set(&Value::Int(7), &Value::Int(1)).is_err());
        assert_eq!(a.get(&Value::Int(-1)).ok(), Some(Value::Int(4)));
    }

    #[test]
    fn bytes_from_a_peer_are_checked() {
        let u = Typecode::parse("u").unwrap();
        let bad = Typecode::parse("i")
            .unwrap()
            .to_value(0xd800u32.to_ne_bytes().to_vec());
        let bad = Value::reduce(
            "array",
            "array",
            vec![Value::str("u"), bad.as_object().unwrap().args[1].clone()],
        );
        assert!(parse_array(&bad).unwrap().is_err(), "a lone surrogate");
        let fffd = u.to_value(0xfffdu32.to_ne_bytes().to_vec());
        assert!(parse_array(&fffd).unwrap().is_ok(), "U+FFFD is a character");
        let odd = Value::reduce(
            "array",
            "array",
            vec![Value::str("i"), Value::Bytes(vec![0; 6])],
        );
        assert!(parse_array(&odd).unwrap().is_err(), "not whole items");
        assert!(ServedArray::from_args(&[Value::str("i"), Value::Bytes(vec![0; 6])]).is_err());
        assert!(ServedArray::from_args(&[Value::str("i"), Value::Int(3)]).is_err());
        assert!(ServedArray::from_args(&[Value::Int(3)]).is_err());
    }

    fn small_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let bound = prop_oneof![Just(Value::None), any::<i64>().prop_map(Value::Int)];
        prop_oneof![
            any::<i64>().prop_map(Value::Int),
            (-10i64..10).prop_map(Value::Int),
            any::<f64>().prop_map(Value::Float),
            ".{0,2}".prop_map(Value::Str),
            (bound.clone(), bound.clone(), bound).prop_map(|(a, b, c)| Value::reduce(
                "builtins",
                "slice",
                vec![a, b, c]
            )),
            (
                prop_oneof![Just("i"), Just("u"), Just("d"), Just("x")],
                any::<Vec<u8>>()
            )
                .prop_map(|(tc, b)| Value::reduce(
                    "array",
                    "array",
                    vec![Value::str(tc), Value::Bytes(b)]
                )),
        ]
    }

    proptest::proptest! {
        /// Whatever a client sends, an array answers (a value or an exception), never panics,
        /// and stays whole items.
        #[test]
        fn arbitrary_calls_never_panic(
            code in proptest::prop_oneof![
                proptest::strategy::Just("b"),
                proptest::strategy::Just("Q"),
                proptest::strategy::Just("f"),
                proptest::strategy::Just("u"),
            ],
            calls in proptest::collection::vec((0..3usize, small_value(), small_value()), 0..20),
        ) {
            let init = Value::List(vec![Value::Int(1), Value::Int(2), Value::Int(3)]);
            let init = if code == "u" { Value::str("abc") } else { init };
            let a = ServedArray::from_args(&[Value::str(code), init]).unwrap();
            for (m, key, value) in calls {
                let method = ["__len__", "__getitem__", "__setitem__"][m];
                let _ = a.call(method, &[key, value], &[]);
                let len = lock(&a.data).len();
                proptest::prop_assert_eq!(len % a.typecode.size, 0);
            }
        }
    }

    #[test]
    fn items_are_range_checked_and_round_trip() {
        for (code, good, bad) in [
            ("b", Value::Int(-128), Value::Int(128)),
            ("B", Value::Int(255), Value::Int(-1)),
            ("H", Value::Int(65535), Value::Int(65536)),
            ("q", Value::Int(i64::MIN), Value::str("x")),
            (
                "Q",
                Value::from_u128(u64::MAX.into()),
                Value::from_u128(1 << 64),
            ),
            ("d", Value::Float(1.5), Value::str("x")),
            ("u", Value::str("é"), Value::str("ab")),
        ] {
            let tc = Typecode::parse(code).unwrap();
            let mut out = Vec::new();
            tc.write(&good, &mut out).ok().unwrap();
            assert_eq!(tc.read(&out), good, "{code}");
            assert!(tc.write(&bad, &mut Vec::new()).is_err(), "{code}");
        }
        assert!(Typecode::parse("x").is_none());
        let f = Typecode::parse("f").unwrap();
        let mut out = Vec::new();
        f.write(&Value::Int(3), &mut out).ok().unwrap();
        assert_eq!(f.read(&out), Value::Float(3.0));
    }
}
