//! Python's semantics over pickled values, as the served containers need them: what `list(x)`
//! iterates over, `a < b` for sorting, indices and slices. Everything works on data: no
//! Python code runs, and what would need some (a `key=` function, iterating a user object)
//! is a clear `TypeError`.

use std::cmp::Ordering;

use crate::pickle::{Value, py_eq};

/// A Python exception to raise: its built-in type and arguments (a message, or for a
/// `KeyError` the key).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PyErr {
    pub(crate) kind: &'static str,
    pub(crate) args: Vec<Value>,
}

impl PyErr {
    pub(crate) fn new(kind: &'static str, message: impl Into<String>) -> PyErr {
        PyErr {
            kind,
            args: vec![Value::Str(message.into())],
        }
    }

    pub(crate) fn type_error(message: impl Into<String>) -> PyErr {
        PyErr::new("TypeError", message)
    }

    /// The message, as `str(exception)` shows a one-argument exception.
    pub(crate) fn message(&self) -> String {
        match self.args.as_slice() {
            [Value::Str(s)] => s.clone(),
            [v] => v.to_string(),
            _ => String::new(),
        }
    }
}

pub(crate) type PyResult<T> = std::result::Result<T, PyErr>;

/// The most items one call may make out of a `range` (or repeat a list to), 4 Mi unless
/// lowered: beyond it the server says `MemoryError` rather than try.
static MAX_ITEMS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(4 << 20);

/// See [`MAX_ITEMS`].
pub(crate) fn max_items() -> u64 {
    MAX_ITEMS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Lowers [`MAX_ITEMS`] for the fuzz harness, whose calls multiply lists again and again.
pub(crate) fn lower_max_items(n: u64) {
    MAX_ITEMS.fetch_min(n, std::sync::atomic::Ordering::Relaxed);
}

/// The name Python gives the type of `v` in messages (`'int'`, `'range'`, …).
pub(crate) fn type_name(v: &Value) -> String {
    match v {
        Value::Object(o) => match o.global() {
            Some((_, name)) => name.rsplit('.').next().unwrap_or(name).to_string(),
            None => "object".into(),
        },
        Value::Global { .. } => "type".into(),
        other => other.type_name().into(),
    }
}

/// `v` as an integer that fits an `i64`, if it is an int (or a bool).
pub(crate) fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        Value::Bool(b) => Some(i64::from(*b)),
        _ => None,
    }
}

/// The items `list(v)` would have: a list's, tuple's or set's items, a dict's keys, a str's
/// characters, the ints of bytes, a `range`, or what a pickled built-in iterator has left.
///
/// # Errors
/// `TypeError` for what is not iterable, or needs Python code to iterate;
/// `MemoryError` for a range beyond [`max_items`].
pub(crate) fn iterate(v: &Value) -> PyResult<Vec<Value>> {
    match v {
        Value::List(x) | Value::Tuple(x) | Value::Set(x) | Value::FrozenSet(x) => Ok(x.clone()),
        Value::Dict(pairs) => Ok(pairs.iter().map(|(k, _)| k.clone()).collect()),
        Value::Str(s) => Ok(s.chars().map(|c| Value::Str(c.to_string())).collect()),
        Value::Bytes(b) | Value::ByteArray(b) => {
            Ok(b.iter().map(|&b| Value::Int(i64::from(b))).collect())
        }
        Value::Object(o) => match (o.global(), o.args.as_slice()) {
            (Some(("builtins", "range")), _) => {
                let (start, stop, step) = range_args(&o.args)?;
                range_items(start, stop, step)
            }
            // `iter(seq)` pickles as `iter, (seq,)` with the position as its state;
            // `reversed(list)` as `reversed, (list,)`, position counting from the end.
            (Some(("builtins", "iter")), [seq]) => {
                let items = iterate(seq)?;
                let from = o.state.as_ref().and_then(as_int).unwrap_or(0).max(0) as usize;
                Ok(items.into_iter().skip(from).collect())
            }
            (Some(("builtins", "reversed")), [seq]) => {
                let mut items = iterate(seq)?;
                let last = o
                    .state
                    .as_ref()
                    .and_then(as_int)
                    .unwrap_or(items.len() as i64 - 1);
                items.truncate((last + 1).clamp(0, items.len() as i64) as usize);
                items.reverse();
                Ok(items)
            }
            _ => Err(not_iterable(v)),
        },
        _ => Err(not_iterable(v)),
    }
}

fn not_iterable(v: &Value) -> PyErr {
    let name = type_name(v);
    match v {
        Value::Object(_) => PyErr::type_error(format!(
            "'{name}' object cannot be iterated by multiproc's manager server (it would run \
             Python code); pass a list"
        )),
        _ => PyErr::type_error(format!("'{name}' object is not iterable")),
    }
}

fn range_args(args: &[Value]) -> PyResult<(i64, i64, i64)> {
    let int = |v: &Value| {
        as_int(v).ok_or_else(|| {
            PyErr::type_error(format!(
                "'{}' object cannot be interpreted as an integer",
                type_name(v)
            ))
        })
    };
    match args {
        [stop] => Ok((0, int(stop)?, 1)),
        [start, stop] => Ok((int(start)?, int(stop)?, 1)),
        [start, stop, step] => Ok((int(start)?, int(stop)?, int(step)?)),
        _ => Err(PyErr::type_error("range expected 1 to 3 arguments")),
    }
}

fn range_items(start: i64, stop: i64, step: i64) -> PyResult<Vec<Value>> {
    if step == 0 {
        return Err(PyErr::new("ValueError", "range() arg 3 must not be zero"));
    }
    let (start, stop, step) = (i128::from(start), i128::from(stop), i128::from(step));
    let len = if step > 0 && start < stop {
        (stop - start + step - 1) / step
    } else if step < 0 && start > stop {
        (start - stop - step - 1) / -step
    } else {
        0
    };
    if len > i128::from(max_items()) {
        return Err(too_many(len));
    }
    Ok((0..len)
        .map(|i| Value::from_i128(start + i * step))
        .collect())
}

pub(crate) fn too_many(n: impl std::fmt::Display) -> PyErr {
    PyErr::new(
        "MemoryError",
        format!("{n} items are more than multiproc's manager server makes in one call"),
    )
}

/// A list index as `list[i]` takes it: negative from the end; `None` if out of range.
///
/// # Errors
/// `TypeError` for what is not an int (nor a bool), `IndexError` for an int beyond `i64`.
pub(crate) fn index(v: &Value, len: usize, what: &str) -> PyResult<Option<usize>> {
    let i = match v {
        Value::BigInt(_) => {
            return Err(PyErr::new(
                "IndexError",
                "cannot fit 'int' into an index-sized integer",
            ));
        }
        v => as_int(v).ok_or_else(|| {
            PyErr::type_error(format!(
                "{what} indices must be integers or slices, not {}",
                type_name(v)
            ))
        })?,
    };
    let len = len as i64;
    let i = if i < 0 { i + len } else { i };
    Ok((0..len).contains(&i).then_some(i as usize))
}

/// A `slice(start, stop, step)` applied to a sequence of `len` items, as
/// `slice.indices(len)` gives it: the positions it selects, in order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Slice {
    pub(crate) start: i64,
    pub(crate) stop: i64,
    pub(crate) step: i64,
}

impl Slice {
    /// The slice `v` denotes, if it is one (`builtins.slice(start, stop, step)`).
    ///
    /// # Errors
    /// `TypeError` for bounds that are not ints or None, `ValueError` for a zero step.
    pub(crate) fn of(v: &Value, len: usize) -> PyResult<Option<Slice>> {
        let Value::Object(o) = v else { return Ok(None) };
        if o.global() != Some(("builtins", "slice")) {
            return Ok(None);
        }
        let bound = |i: usize| -> PyResult<Option<i64>> {
            match o.args.get(i) {
                None | Some(Value::None) => Ok(None),
                // Beyond i64 either way: as far as a list can go.
                Some(Value::BigInt(b)) => Ok(Some(if b.is_negative() {
                    i64::MIN / 2
                } else {
                    i64::MAX / 2
                })),
                Some(v) => as_int(v).map(Some).ok_or_else(|| {
                    PyErr::type_error(
                        "slice indices must be integers or None or have an __index__ method",
                    )
                }),
            }
        };
        let (start, stop, step) = match o.args.len() {
            1 => (None, bound(0)?, None),
            2 => (bound(0)?, bound(1)?, None),
            _ => (bound(0)?, bound(1)?, bound(2)?),
        };
        let step = step.unwrap_or(1);
        if step == 0 {
            return Err(PyErr::new("ValueError", "slice step cannot be zero"));
        }
        let len = len as i64;
        let clamp = |v: Option<i64>, default: i64| -> i64 {
            match v {
                None => default,
                Some(v) if v < 0 => {
                    let v = v.saturating_add(len);
                    if v < 0 {
                        if step < 0 { -1 } else { 0 }
                    } else {
                        v
                    }
                }
                Some(v) if v >= len => {
                    if step < 0 {
                        len - 1
                    } else {
                        len
                    }
                }
                Some(v) => v,
            }
        };
        let (start, stop) = if step > 0 {
            (clamp(start, 0), clamp(stop, len))
        } else {
            (clamp(start, len - 1), clamp(stop, -1))
        };
        Ok(Some(Slice { start, stop, step }))
    }

    /// The positions selected.
    pub(crate) fn positions(&self) -> impl Iterator<Item = usize> + '_ {
        let mut i = self.start;
        std::iter::from_fn(move || {
            let inside = if self.step > 0 {
                i < self.stop
            } else {
                i > self.stop
            };
            if !inside {
                return None;
            }
            let at = i as usize;
            i += self.step;
            Some(at)
        })
    }
}

/// `a < b` as Python has it for the built-in types: numbers by value, str, bytes, tuples and
/// lists item by item, sets by inclusion.
///
/// # Errors
/// `TypeError` where Python raises one (`1 < 'a'`, `None < None`, dicts).
pub(crate) fn lt(a: &Value, b: &Value) -> PyResult<bool> {
    if let (Some(x), Some(y)) = (number(a), number(b)) {
        return Ok(x.partial_cmp(&y) == Some(Ordering::Less));
    }
    match (a, b) {
        (Value::Str(x), Value::Str(y)) => Ok(x < y),
        (Value::Bytes(x) | Value::ByteArray(x), Value::Bytes(y) | Value::ByteArray(y)) => Ok(x < y),
        (Value::Tuple(x), Value::Tuple(y)) | (Value::List(x), Value::List(y)) => {
            match x.iter().zip(y).find(|(p, q)| !py_eq(p, q)) {
                Some((p, q)) => lt(p, q),
                None => Ok(x.len() < y.len()),
            }
        }
        (Value::Set(x) | Value::FrozenSet(x), Value::Set(y) | Value::FrozenSet(y)) => {
            Ok(x.len() < y.len() && x.iter().all(|p| y.iter().any(|q| py_eq(p, q))))
        }
        _ => Err(PyErr::type_error(format!(
            "'<' not supported between instances of '{}' and '{}'",
            type_name(a),
            type_name(b)
        ))),
    }
}

/// A number for ordering: exact for ints within `i128`, `f64` beyond.
enum Num {
    Int(i128),
    Float(f64),
}

fn number(v: &Value) -> Option<NumOrd> {
    Some(match v {
        Value::Bool(b) => NumOrd(Num::Int(i128::from(*b))),
        Value::Int(i) => NumOrd(Num::Int(i128::from(*i))),
        Value::BigInt(b) => NumOrd(match b.to_i128() {
            Some(i) => Num::Int(i),
            None if b.is_negative() => Num::Float(f64::NEG_INFINITY),
            None => Num::Float(f64::INFINITY),
        }),
        Value::Float(f) => NumOrd(Num::Float(*f)),
        _ => return None,
    })
}

/// Ordering between an int and a float compares exactly where it can.
struct NumOrd(Num);

impl PartialEq for NumOrd {
    fn eq(&self, other: &NumOrd) -> bool {
        self.partial_cmp(other) == Some(Ordering::Equal)
    }
}

impl PartialOrd for NumOrd {
    fn partial_cmp(&self, other: &NumOrd) -> Option<Ordering> {
        match (&self.0, &other.0) {
            (Num::Int(a), Num::Int(b)) => a.partial_cmp(b),
            (Num::Float(a), Num::Float(b)) => a.partial_cmp(b),
            (Num::Int(a), Num::Float(b)) => int_float(*a, *b),
            (Num::Float(a), Num::Int(b)) => int_float(*b, *a).map(Ordering::reverse),
        }
    }
}

/// `a` against `b` exactly (an `i128` does not always convert to `f64` exactly).
fn int_float(a: i128, b: f64) -> Option<Ordering> {
    if b.is_nan() {
        return None;
    }
    if b >= 1.7e38 {
        return Some(Ordering::Less);
    }
    if b <= -1.7e38 {
        return Some(Ordering::Greater);
    }
    let floor = b.floor();
    match a.cmp(&(floor as i128)) {
        Ordering::Equal if b > floor => Some(Ordering::Less),
        other => Some(other),
    }
}

/// Sorts `items` as `list.sort(reverse=…)` does: stable, with `<` only (so an order that is
/// not total, as with NaNs or sets, gives some order rather than a panic).
///
/// # Errors
/// The first `TypeError` a comparison raises; `items` is then left in some order, as
/// Python's is.
pub(crate) fn sort(items: &mut Vec<Value>, reverse: bool) -> PyResult<()> {
    // Python reverses, sorts stably, and reverses again, so equal items keep their order.
    if reverse {
        items.reverse();
    }
    let mut error = None;
    let taken = std::mem::take(items);
    *items = merge_sort(taken, &mut |a, b| {
        if error.is_some() {
            return false;
        }
        lt(a, b).unwrap_or_else(|e| {
            error = Some(e);
            false
        })
    });
    if reverse {
        items.reverse();
    }
    match error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A stable merge sort that asks only `less(a, b)`.
fn merge_sort(mut items: Vec<Value>, less: &mut dyn FnMut(&Value, &Value) -> bool) -> Vec<Value> {
    if items.len() <= 1 {
        return items;
    }
    let right = items.split_off(items.len() / 2);
    let left = merge_sort(items, less);
    let right = merge_sort(right, less);
    let mut out = Vec::with_capacity(left.len() + right.len());
    let (mut l, mut r) = (left.into_iter().peekable(), right.into_iter().peekable());
    while let (Some(a), Some(b)) = (l.peek(), r.peek()) {
        // Take from the right only when strictly less: stable.
        if less(b, a) {
            out.extend(r.next());
        } else {
            out.extend(l.next());
        }
    }
    out.extend(l);
    out.extend(r);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pickle::{Object, ObjectKind, same};

    fn call(name: &str, args: Vec<Value>) -> Value {
        Value::Object(Box::new(Object::new(
            Value::global("builtins", name),
            ObjectKind::Reduce,
            args,
        )))
    }

    fn ints(v: &[i64]) -> Vec<Value> {
        v.iter().map(|&n| Value::Int(n)).collect()
    }

    fn all_same(a: &[Value], b: &[Value]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y))
    }

    #[test]
    fn iterates_like_list_does() {
        let range = call("range", ints(&[3]));
        assert!(all_same(&iterate(&range).unwrap(), &ints(&[0, 1, 2])));
        let range = call("range", ints(&[10, 0, -3]));
        assert!(all_same(&iterate(&range).unwrap(), &ints(&[10, 7, 4, 1])));
        assert!(iterate(&call("range", ints(&[5, 1]))).unwrap().is_empty());
        let chars = iterate(&Value::str("abc")).unwrap();
        assert!(all_same(
            &chars,
            &[Value::str("a"), Value::str("b"), Value::str("c")]
        ));
        let dict = Value::Dict(vec![(Value::Int(1), Value::Int(2))]);
        assert!(all_same(&iterate(&dict).unwrap(), &ints(&[1])));
        assert!(all_same(
            &iterate(&Value::Bytes(b"AB".to_vec())).unwrap(),
            &ints(&[65, 66])
        ));
        let mut it = Object::new(
            Value::global("builtins", "iter"),
            ObjectKind::Reduce,
            vec![Value::List(ints(&[1, 2, 3]))],
        );
        it.state = Some(Value::Int(1));
        assert!(all_same(
            &iterate(&Value::Object(Box::new(it))).unwrap(),
            &ints(&[2, 3])
        ));
        assert_eq!(iterate(&Value::Int(3)).unwrap_err().kind, "TypeError");
        let huge = call("range", ints(&[i64::MAX]));
        assert_eq!(iterate(&huge).unwrap_err().kind, "MemoryError");
    }

    #[test]
    fn slices_select_as_python_does() {
        let s = |args: Vec<Value>, len: usize| -> Vec<usize> {
            Slice::of(&call("slice", args), len)
                .unwrap()
                .unwrap()
                .positions()
                .collect()
        };
        let none = || Value::None;
        assert_eq!(s(vec![none(), none(), none()], 4), [0, 1, 2, 3]);
        assert_eq!(s(vec![Value::Int(1), Value::Int(3), none()], 5), [1, 2]);
        assert_eq!(s(vec![none(), none(), Value::Int(2)], 5), [0, 2, 4]);
        assert_eq!(s(vec![none(), none(), Value::Int(-1)], 3), [2, 1, 0]);
        assert_eq!(s(vec![Value::Int(-2), none(), none()], 5), [3, 4]);
        assert_eq!(
            s(vec![Value::Int(-100), Value::Int(100), none()], 3),
            [0, 1, 2]
        );
        assert_eq!(
            s(vec![Value::Int(5), Value::Int(1), Value::Int(-2)], 10),
            [5, 3]
        );
        let zero = Slice::of(&call("slice", vec![none(), none(), Value::Int(0)]), 3);
        assert_eq!(zero.unwrap_err().kind, "ValueError");
    }

    #[test]
    fn sorts_stably_with_less_than_only() {
        let mut v = vec![
            Value::Float(2.5),
            Value::Int(1),
            Value::Bool(true),
            Value::Int(-3),
            Value::Float(1.0),
        ];
        sort(&mut v, false).unwrap();
        // 1, True and 1.0 are equal: they keep their order.
        let want = [
            Value::Int(-3),
            Value::Int(1),
            Value::Bool(true),
            Value::Float(1.0),
            Value::Float(2.5),
        ];
        assert!(all_same(&v, &want), "{v:?}");
        sort(&mut v, true).unwrap();
        let want = [
            Value::Float(2.5),
            Value::Int(1),
            Value::Bool(true),
            Value::Float(1.0),
            Value::Int(-3),
        ];
        assert!(all_same(&v, &want), "{v:?}");
        let mut mixed = vec![Value::Int(1), Value::str("a")];
        assert_eq!(sort(&mut mixed, false).unwrap_err().kind, "TypeError");
        let mut tuples = vec![
            Value::Tuple(vec![Value::Int(1), Value::str("b")]),
            Value::Tuple(vec![Value::Int(1), Value::str("a")]),
            Value::Tuple(vec![Value::Int(0)]),
        ];
        sort(&mut tuples, false).unwrap();
        assert!(same(&tuples[0], &Value::Tuple(vec![Value::Int(0)])));
        assert!(same(
            &tuples[1],
            &Value::Tuple(vec![Value::Int(1), Value::str("a")])
        ));
        // NaNs: some order, no panic.
        let mut nans: Vec<Value> = (0..50)
            .map(|i| Value::Float(if i % 3 == 0 { f64::NAN } else { f64::from(i) }))
            .collect();
        sort(&mut nans, false).unwrap();
    }

    #[test]
    fn ints_and_floats_compare_exactly() {
        let big = Value::Int(9_007_199_254_740_993); // 2^53 + 1
        assert!(lt(&Value::Float(9_007_199_254_740_992.0), &big).unwrap());
        assert!(!lt(&big, &Value::Float(9_007_199_254_740_992.0)).unwrap());
        assert!(lt(&Value::Int(1), &Value::Float(1.5)).unwrap());
        assert!(!lt(&Value::Float(f64::NAN), &Value::Int(1)).unwrap());
    }
}
