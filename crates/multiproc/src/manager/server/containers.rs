//! The containers a `SyncManager`-compatible server holds: `dict` and `list` with every
//! method CPython's `DictProxy` and `ListProxy` call, and the iterator `iter(dict_proxy)`
//! gets. Values are compared and ordered as Python does ([`py_eq`], [`python::lt`]).
//!
//! A proxy stored inside a container (`d['pets'] = manager.dict()`) keeps its object alive
//! while it is stored, as in CPython: see `stored.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::objects::{Reply, ServedObject, exception};
use super::python::{self, PyErr, PyResult, Slice, type_name};
use super::stored::{ProxyRefs, Stored, call_stored, stored_proxies};
use crate::pickle::{self, Value, py_eq};
use crate::sync::lock;

/// What `DictProxy` calls (CPython 3.8–3.13).
pub(crate) const DICT_EXPOSED: &[&str] = &[
    "__contains__",
    "__delitem__",
    "__getitem__",
    "__iter__",
    "__len__",
    "__setitem__",
    "clear",
    "copy",
    "get",
    "items",
    "keys",
    "pop",
    "popitem",
    "setdefault",
    "update",
    "values",
];

/// What `ListProxy` calls (CPython 3.8–3.13).
pub(crate) const LIST_EXPOSED: &[&str] = &[
    "__add__",
    "__contains__",
    "__delitem__",
    "__getitem__",
    "__len__",
    "__mul__",
    "__reversed__",
    "__rmul__",
    "__setitem__",
    "append",
    "count",
    "extend",
    "index",
    "insert",
    "pop",
    "remove",
    "reverse",
    "sort",
    "__imul__",
];

pub(crate) fn py_error(e: PyErr) -> Reply {
    exception(e.kind, e.args)
}

/// A call's result as a reply: its value, or its exception.
fn to_reply(result: PyResult<Value>) -> Reply {
    match result {
        Ok(v) => Reply::Return(v),
        Err(e) => py_error(e),
    }
}

/// A key Python refuses: a list, dict, set or bytearray, or a tuple holding one.
fn unhashable(k: &Value) -> Option<&'static str> {
    match k {
        Value::List(_) | Value::Dict(_) | Value::Set(_) | Value::ByteArray(_) => {
            Some(k.type_name())
        }
        Value::Tuple(items) => items.iter().find_map(unhashable),
        _ => None,
    }
}

fn check_key(k: &Value) -> PyResult<()> {
    match unhashable(k) {
        Some(t) => Err(PyErr::type_error(format!("unhashable type: '{t}'"))),
        None => Ok(()),
    }
}

/// A served `dict`: insertion-ordered pairs.
#[derive(Default)]
pub(crate) struct ServedDict {
    items: Mutex<Stored<DictItems>>,
}

/// What a dict stores: its keys and values.
fn dict_values(d: &DictItems, f: &mut dyn FnMut(&Value)) {
    d.items.iter().for_each(|(k, v)| {
        f(k);
        f(v);
    });
}

/// A dict's items in insertion order, with an index by [`pickle::py_hash`] (keys are any
/// value, compared as [`py_eq`] does), so a lookup does not scan every key.
#[derive(Default)]
struct DictItems {
    items: Vec<(Value, Value)>,
    /// Hash of a key → the positions of the keys with that hash.
    index: HashMap<u64, Vec<usize>>,
    /// Keyed per dict: a client cannot choose keys that all collide.
    hasher: std::hash::RandomState,
    /// Bumped when a key comes or goes (not when a value changes): iterators check it.
    version: u64,
}

impl DictItems {
    fn hash(&self, k: &Value) -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = self.hasher.build_hasher();
        pickle::py_hash(k, &mut h);
        h.finish()
    }

    fn find(&self, k: &Value) -> Option<usize> {
        self.index
            .get(&self.hash(k))?
            .iter()
            .copied()
            .find(|&i| py_eq(&self.items[i].0, k))
    }

    fn get(&self, k: &Value) -> Option<&Value> {
        self.find(k).map(|i| &self.items[i].1)
    }

    fn set(&mut self, k: Value, v: Value) {
        match self.find(&k) {
            Some(i) => self.items[i].1 = v,
            None => {
                let h = self.hash(&k);
                self.index.entry(h).or_default().push(self.items.len());
                self.items.push((k, v));
                self.version += 1;
            }
        }
    }

    /// Removes the item at `i`, keeping the order of the rest.
    fn remove_at(&mut self, i: usize) -> (Value, Value) {
        let item = self.items.remove(i);
        self.version += 1;
        if i == self.items.len() {
            let h = self.hash(&item.0);
            if let Some(slots) = self.index.get_mut(&h) {
                slots.retain(|&j| j != i);
                if slots.is_empty() {
                    self.index.remove(&h);
                }
            }
        } else {
            self.reindex();
        }
        item
    }

    fn reindex(&mut self) {
        let mut index: HashMap<u64, Vec<usize>> = HashMap::with_capacity(self.items.len());
        for (i, (k, _)) in self.items.iter().enumerate() {
            index.entry(self.hash(k)).or_default().push(i);
        }
        self.index = index;
    }

    fn clear(&mut self) {
        self.items.clear();
        self.index.clear();
        self.version += 1;
    }

    /// `dict.update(other)`: a dict's items, or pairs from any iterable.
    fn update_from(&mut self, other: &Value) -> PyResult<()> {
        if let Value::Dict(pairs) = other {
            for (k, _) in pairs {
                check_key(k)?;
            }
            for (k, v) in pairs {
                self.set(k.clone(), v.clone());
            }
            return Ok(());
        }
        let seq = python::iterate(other).map_err(|_| {
            PyErr::type_error(format!("'{}' object is not iterable", type_name(other)))
        })?;
        let mut pairs = Vec::with_capacity(seq.len());
        for (i, element) in seq.iter().enumerate() {
            let pair = python::iterate(element).map_err(|_| {
                PyErr::type_error(format!(
                    "cannot convert dictionary update sequence element #{i} to a sequence"
                ))
            })?;
            let [k, v] = <[Value; 2]>::try_from(pair).map_err(|p| {
                PyErr::new(
                    "ValueError",
                    format!(
                        "dictionary update sequence element #{i} has length {}; 2 is required",
                        p.len()
                    ),
                )
            })?;
            check_key(&k)?;
            pairs.push((k, v));
        }
        for (k, v) in pairs {
            self.set(k, v);
        }
        Ok(())
    }
}

impl ServedDict {
    /// `dict(*args, **kwds)`.
    pub(crate) fn new(args: &[Value], kwds: &[(Value, Value)]) -> PyResult<ServedDict> {
        if args.len() > 1 {
            return Err(PyErr::type_error(format!(
                "dict expected at most 1 argument, got {}",
                args.len()
            )));
        }
        let mut items = DictItems::default();
        if let Some(other) = args.first() {
            items.update_from(other)?;
        }
        for (k, v) in kwds {
            items.set(k.clone(), v.clone());
        }
        Ok(ServedDict {
            items: Stored::new(items),
        })
    }

    fn apply(
        d: &mut DictItems,
        method: &str,
        args: &[Value],
        kwds: &[(Value, Value)],
    ) -> PyResult<Value> {
        let key = || {
            args.first().ok_or_else(|| {
                PyErr::type_error(format!("{method}() takes at least 1 argument (0 given)"))
            })
        };
        let missing = |k: &Value| PyErr {
            kind: "KeyError",
            args: vec![k.clone()],
        };
        Ok(match method {
            "__len__" => Value::Int(d.items.len() as i64),
            "__contains__" => {
                let k = key()?;
                check_key(k)?;
                Value::Bool(d.find(k).is_some())
            }
            "__getitem__" => {
                let k = key()?;
                check_key(k)?;
                d.get(k).cloned().ok_or_else(|| missing(k))?
            }
            "get" => {
                let k = key()?;
                check_key(k)?;
                d.get(k)
                    .cloned()
                    .unwrap_or_else(|| args.get(1).cloned().unwrap_or(Value::None))
            }
            "__setitem__" => {
                let k = key()?;
                check_key(k)?;
                let v = args
                    .get(1)
                    .ok_or_else(|| PyErr::type_error("__setitem__ expected 2 arguments"))?;
                d.set(k.clone(), v.clone());
                Value::None
            }
            "setdefault" => {
                let k = key()?;
                check_key(k)?;
                match d.get(k) {
                    Some(v) => v.clone(),
                    None => {
                        let v = args.get(1).cloned().unwrap_or(Value::None);
                        d.set(k.clone(), v.clone());
                        v
                    }
                }
            }
            "__delitem__" => {
                let k = key()?;
                check_key(k)?;
                let i = d.find(k).ok_or_else(|| missing(k))?;
                d.remove_at(i);
                Value::None
            }
            "pop" => {
                let k = key()?;
                check_key(k)?;
                match (d.find(k), args.get(1)) {
                    (Some(i), _) => d.remove_at(i).1,
                    (None, Some(default)) => default.clone(),
                    (None, None) => return Err(missing(k)),
                }
            }
            "popitem" => match d.items.len().checked_sub(1) {
                Some(last) => {
                    let (k, v) = d.remove_at(last);
                    Value::Tuple(vec![k, v])
                }
                None => {
                    return Err(PyErr::new("KeyError", "popitem(): dictionary is empty"));
                }
            },
            "clear" => {
                d.clear();
                Value::None
            }
            "copy" => Value::Dict(d.items.clone()),
            "keys" => Value::List(d.items.iter().map(|(k, _)| k.clone()).collect()),
            "values" => Value::List(d.items.iter().map(|(_, v)| v.clone()).collect()),
            "items" => Value::List(
                d.items
                    .iter()
                    .map(|(k, v)| Value::Tuple(vec![k.clone(), v.clone()]))
                    .collect(),
            ),
            "update" => {
                if args.len() > 1 {
                    return Err(PyErr::type_error(format!(
                        "update expected at most 1 argument, got {}",
                        args.len()
                    )));
                }
                if let Some(other) = args.first() {
                    d.update_from(other)?;
                }
                for (k, v) in kwds {
                    d.set(k.clone(), v.clone());
                }
                Value::None
            }
            m => {
                return Err(PyErr::new(
                    "AttributeError",
                    format!("'dict' object has no attribute '{m}'"),
                ));
            }
        })
    }
}

impl ServedObject for ServedDict {
    fn exposed(&self) -> &'static [&'static str] {
        DICT_EXPOSED
    }

    fn call(&self, method: &str, args: &[Value], kwds: &[(Value, Value)]) -> Reply {
        to_reply(Self::apply(
            &mut lock(&self.items).value,
            method,
            args,
            kwds,
        ))
    }

    fn call_storing(
        &self,
        _conn: u64,
        refs: &mut dyn ProxyRefs,
        method: &str,
        args: &[Value],
        kwds: &[(Value, Value)],
    ) -> Reply {
        to_reply(call_stored(
            &self.items,
            refs,
            args,
            kwds,
            dict_values,
            |d| Self::apply(d, method, args, kwds),
        ))
    }

    fn value(&self) -> Option<Value> {
        Some(Value::Dict(lock(&self.items).value.items.clone()))
    }

    fn stored_proxies(&self, refs: &dyn ProxyRefs) -> Vec<String> {
        stored_proxies(&self.items, refs, dict_values)
    }

    fn iterator(self: Arc<Self>) -> Option<Arc<dyn ServedObject>> {
        let state = lock(&self.items);
        let at = IterState {
            next: 0,
            len: state.value.items.len(),
            version: state.value.version,
            failed: None,
        };
        drop(state);
        Some(Arc::new(DictIterator {
            dict: self,
            at: Mutex::new(at),
        }))
    }

    fn repr(&self) -> String {
        Value::Dict(lock(&self.items).value.items.clone()).to_string()
    }
}

/// Where an iterator over a dict is.
struct IterState {
    next: usize,
    len: usize,
    version: u64,
    /// The error it raised once, raised again ever after (as CPython's does).
    failed: Option<&'static str>,
}

/// `iter(dict_proxy)`: the keys of the live dict, in order; a dict that gains or loses a key
/// meanwhile makes it raise `RuntimeError`, as Python's does.
pub(crate) struct DictIterator {
    dict: Arc<ServedDict>,
    at: Mutex<IterState>,
}

impl ServedObject for DictIterator {
    fn exposed(&self) -> &'static [&'static str] {
        &["__next__", "send", "throw", "close"]
    }

    fn call(&self, method: &str, _args: &[Value], _kwds: &[(Value, Value)]) -> Reply {
        let mut at = lock(&self.at);
        match method {
            "__next__" | "send" => {
                if let Some(message) = at.failed {
                    return exception("RuntimeError", vec![Value::str(message)]);
                }
                let state = lock(&self.dict.items);
                let d = &state.value;
                if d.version != at.version {
                    let message = if d.items.len() != at.len {
                        "dictionary changed size during iteration"
                    } else {
                        "dictionary keys changed during iteration"
                    };
                    at.failed = Some(message);
                    return exception("RuntimeError", vec![Value::str(message)]);
                }
                match d.items.get(at.next) {
                    Some((k, _)) => {
                        at.next += 1;
                        Reply::Return(k.clone())
                    }
                    None => {
                        at.next = usize::MAX;
                        exception("StopIteration", Vec::new())
                    }
                }
            }
            "close" => {
                at.next = usize::MAX;
                Reply::Return(Value::None)
            }
            m => Reply::Traceback(format!("AttributeError: an iterator has no method {m:?}")),
        }
    }

    fn repr(&self) -> String {
        "<dict_keyiterator object>".into()
    }
}

/// A served `list`.
#[derive(Default)]
pub(crate) struct ServedList {
    items: Mutex<Stored<Vec<Value>>>,
}

/// What a list stores: its items.
// `&Vec`: it is `call_stored`'s `Fn(&T, …)` with `T` the stored `Vec`.
#[allow(clippy::ptr_arg)]
fn list_values(items: &Vec<Value>, f: &mut dyn FnMut(&Value)) {
    items.iter().for_each(f);
}

/// `n` copies of `items`, refused beyond [`python::max_items`].
fn repeated(items: &[Value], n: &Value) -> PyResult<Vec<Value>> {
    let n = python::as_int(n).ok_or_else(|| {
        PyErr::type_error(format!(
            "can't multiply sequence by non-int of type '{}'",
            type_name(n)
        ))
    })?;
    let n = n.max(0) as u64;
    if items.is_empty() {
        // `[] * 10**18` is empty at once: no loop over `n`.
        return Ok(Vec::new());
    }
    let total = (items.len() as u64).saturating_mul(n);
    if total > python::max_items() {
        return Err(python::too_many(total));
    }
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..n {
        out.extend_from_slice(items);
    }
    Ok(out)
}

/// The position of the first item equal to `x` in `items[start:stop]`.
fn position(items: &[Value], x: &Value, start: usize, stop: usize) -> Option<usize> {
    let stop = stop.min(items.len());
    (start..stop).find(|&i| py_eq(&items[i], x))
}

/// `list.index`'s optional bounds, clamped as Python clamps them.
fn bound(v: Option<&Value>, len: usize, default: usize) -> PyResult<usize> {
    match v {
        None | Some(Value::None) => Ok(default),
        Some(v) => {
            let i = python::as_int(v).ok_or_else(|| {
                PyErr::type_error("slice indices must be integers or have an __index__ method")
            })?;
            let len = len as i64;
            Ok((if i < 0 { (i + len).max(0) } else { i.min(len) }) as usize)
        }
    }
}

impl ServedList {
    /// `list(iterable=())`.
    pub(crate) fn new(args: &[Value]) -> PyResult<ServedList> {
        let items = match args {
            [] => Vec::new(),
            [iterable] => python::iterate(iterable)?,
            _ => {
                return Err(PyErr::type_error(format!(
                    "list expected at most 1 argument, got {}",
                    args.len()
                )));
            }
        };
        Ok(ServedList {
            items: Stored::new(items),
        })
    }

    fn apply(
        items: &mut Vec<Value>,
        method: &str,
        args: &[Value],
        kwds: &[(Value, Value)],
    ) -> PyResult<Value> {
        let len = items.len();
        let first = || {
            args.first().ok_or_else(|| {
                PyErr::type_error(format!("{method}() takes at least 1 argument (0 given)"))
            })
        };
        let out_of_range = || PyErr::new("IndexError", "list index out of range");
        let assignment_out_of_range =
            || PyErr::new("IndexError", "list assignment index out of range");
        Ok(match method {
            "__len__" => Value::Int(len as i64),
            "__contains__" => {
                let x = first()?;
                Value::Bool(items.iter().any(|v| py_eq(v, x)))
            }
            "__getitem__" => {
                let at = first()?;
                if let Some(slice) = Slice::of(at, len)? {
                    Value::List(slice.positions().map(|i| items[i].clone()).collect())
                } else {
                    let i = python::index(at, len, "list")?.ok_or_else(out_of_range)?;
                    items[i].clone()
                }
            }
            "__setitem__" => {
                let at = first()?;
                let value = args
                    .get(1)
                    .ok_or_else(|| PyErr::type_error("__setitem__ expected 2 arguments"))?;
                if let Some(slice) = Slice::of(at, len)? {
                    let new = python::iterate(value)
                        .map_err(|_| PyErr::type_error("can only assign an iterable"))?;
                    if slice.step == 1 {
                        let start = slice.start.clamp(0, len as i64) as usize;
                        let stop = (slice.stop.max(slice.start)).clamp(0, len as i64) as usize;
                        items.splice(start..stop, new);
                    } else {
                        let positions: Vec<usize> = slice.positions().collect();
                        if positions.len() != new.len() {
                            return Err(PyErr::new(
                                "ValueError",
                                format!(
                                    "attempt to assign sequence of size {} to extended slice of size {}",
                                    new.len(),
                                    positions.len()
                                ),
                            ));
                        }
                        for (i, v) in positions.into_iter().zip(new) {
                            items[i] = v;
                        }
                    }
                } else {
                    let i = python::index(at, len, "list")?.ok_or_else(assignment_out_of_range)?;
                    items[i] = value.clone();
                }
                Value::None
            }
            "__delitem__" => {
                let at = first()?;
                if let Some(slice) = Slice::of(at, len)? {
                    let mut drop = vec![false; len];
                    slice.positions().for_each(|i| drop[i] = true);
                    let mut i = 0;
                    items.retain(|_| {
                        i += 1;
                        !drop[i - 1]
                    });
                } else {
                    let i = python::index(at, len, "list")?.ok_or_else(assignment_out_of_range)?;
                    items.remove(i);
                }
                Value::None
            }
            "__add__" => match first()? {
                Value::List(other) => {
                    let mut out = items.clone();
                    out.extend(other.iter().cloned());
                    Value::List(out)
                }
                other => {
                    return Err(PyErr::type_error(format!(
                        "can only concatenate list (not \"{}\") to list",
                        type_name(other)
                    )));
                }
            },
            "__mul__" | "__rmul__" => Value::List(repeated(items, first()?)?),
            "__imul__" => {
                *items = repeated(items, first()?)?;
                Value::None
            }
            "__reversed__" => {
                // What `reversed(list)` pickles as: the client gets an iterator over a copy.
                Value::reduce("builtins", "reversed", vec![Value::List(items.clone())])
            }
            "append" => {
                items.push(first()?.clone());
                Value::None
            }
            "extend" => {
                let new = python::iterate(first()?)?;
                items.extend(new);
                Value::None
            }
            "insert" => {
                let (Some(at), Some(x)) = (args.first(), args.get(1)) else {
                    return Err(PyErr::type_error(format!(
                        "insert expected 2 arguments, got {}",
                        args.len()
                    )));
                };
                let i = python::as_int(at).ok_or_else(|| {
                    PyErr::type_error(format!(
                        "'{}' object cannot be interpreted as an integer",
                        type_name(at)
                    ))
                })?;
                let n = len as i64;
                let i = (if i < 0 { i + n } else { i }).clamp(0, n) as usize;
                items.insert(i, x.clone());
                Value::None
            }
            "pop" => {
                if items.is_empty() {
                    return Err(PyErr::new("IndexError", "pop from empty list"));
                }
                let i = match args.first() {
                    None => Some(len - 1),
                    Some(at) => python::index(at, len, "list")?,
                };
                let i = i.ok_or_else(|| PyErr::new("IndexError", "pop index out of range"))?;
                items.remove(i)
            }
            "count" => {
                let x = first()?;
                Value::Int(items.iter().filter(|v| py_eq(v, x)).count() as i64)
            }
            "index" => {
                let x = first()?;
                let start = bound(args.get(1), len, 0)?;
                let stop = bound(args.get(2), len, len)?;
                match position(items, x, start, stop) {
                    Some(i) => Value::Int(i as i64),
                    None => return Err(PyErr::new("ValueError", format!("{x} is not in list"))),
                }
            }
            "remove" => {
                let x = first()?;
                let i = position(items, x, 0, len)
                    .ok_or_else(|| PyErr::new("ValueError", "list.remove(x): x not in list"))?;
                items.remove(i);
                Value::None
            }
            "reverse" => {
                items.reverse();
                Value::None
            }
            "sort" => {
                if !args.is_empty() {
                    return Err(PyErr::type_error("sort() takes no positional arguments"));
                }
                let mut reverse = false;
                for (k, v) in kwds {
                    match (k.as_str(), v) {
                        (Some("key"), Value::None) => {}
                        (Some("key"), _) => {
                            return Err(PyErr::type_error(
                                "sort(key=…) cannot run in multiproc's manager server (it \
                                 would run Python code): sort a copy in the client",
                            ));
                        }
                        (Some("reverse"), v) => reverse = super::objects::truthy(Some(v), false),
                        (k, _) => {
                            return Err(PyErr::type_error(format!(
                                "sort() got an unexpected keyword argument {}",
                                k.map_or("?".to_string(), |k| format!("'{k}'"))
                            )));
                        }
                    }
                }
                python::sort(items, reverse)?;
                Value::None
            }
            m => {
                return Err(PyErr::new(
                    "AttributeError",
                    format!("'list' object has no attribute '{m}'"),
                ));
            }
        })
    }
}

impl ServedObject for ServedList {
    fn exposed(&self) -> &'static [&'static str] {
        LIST_EXPOSED
    }

    fn call(&self, method: &str, args: &[Value], kwds: &[(Value, Value)]) -> Reply {
        to_reply(Self::apply(
            &mut lock(&self.items).value,
            method,
            args,
            kwds,
        ))
    }

    fn call_storing(
        &self,
        _conn: u64,
        refs: &mut dyn ProxyRefs,
        method: &str,
        args: &[Value],
        kwds: &[(Value, Value)],
    ) -> Reply {
        to_reply(call_stored(
            &self.items,
            refs,
            args,
            kwds,
            list_values,
            |items| Self::apply(items, method, args, kwds),
        ))
    }

    fn value(&self) -> Option<Value> {
        Some(Value::List(lock(&self.items).value.clone()))
    }

    fn stored_proxies(&self, refs: &dyn ProxyRefs) -> Vec<String> {
        stored_proxies(&self.items, refs, list_values)
    }

    fn repr(&self) -> String {
        Value::List(lock(&self.items).value.clone()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pickle::{Object, ObjectKind, same};

    fn ok(r: Reply) -> Value {
        match r {
            Reply::Return(v) => v,
            Reply::Error(e) => panic!("error {e}"),
            Reply::Traceback(t) => panic!("traceback {t}"),
        }
    }

    fn err(r: Reply) -> String {
        match r {
            Reply::Error(e) => e.to_string(),
            Reply::Return(v) => panic!("returned {v}"),
            Reply::Traceback(t) => t,
        }
    }

    fn ints(v: &[i64]) -> Value {
        Value::List(v.iter().map(|&n| Value::Int(n)).collect())
    }

    fn slice(a: Value, b: Value, c: Value) -> Value {
        Value::Object(Box::new(Object::new(
            Value::global("builtins", "slice"),
            ObjectKind::Reduce,
            vec![a, b, c],
        )))
    }

    #[test]
    fn an_empty_list_times_a_huge_number_is_empty_at_once() {
        // Found by the proxy-call property test: `[] * 10**18` looped 10**18 times.
        let empty = Value::List(vec![]);
        assert!(same(
            &ok(list_call(&empty, "__mul__", Value::Int(1 << 60))),
            &ints(&[])
        ));
        let e = err(list_call(&ints(&[1]), "__mul__", Value::Int(1 << 60)));
        assert!(e.contains("MemoryError") || e.contains("items"), "{e}");
    }

    fn list_call(items: &Value, method: &str, arg: Value) -> Reply {
        ServedList::new(std::slice::from_ref(items))
            .unwrap()
            .call(method, &[arg], &[])
    }

    #[test]
    fn lists_and_dicts_are_made_from_any_iterable() {
        let range = Value::reduce("builtins", "range", vec![Value::Int(3)]);
        let l = ServedList::new(&[range]).unwrap();
        assert!(same(&l.value().unwrap(), &ints(&[0, 1, 2])));
        let l = ServedList::new(&[Value::str("ab")]).unwrap();
        assert_eq!(l.repr(), "['a', 'b']");
        let pairs = Value::List(vec![Value::Tuple(vec![Value::Int(1), Value::Int(2)])]);
        let d = ServedDict::new(&[pairs], &[(Value::str("x"), Value::Int(1))]).unwrap();
        assert_eq!(d.repr(), "{1: 2, 'x': 1}");
        let bad = Value::List(vec![ints(&[1, 2, 3])]);
        let e = ServedDict::new(&[bad], &[]).err().unwrap();
        assert!(e.message().contains("has length 3; 2 is required"), "{e:?}");
        ok(d.call(
            "update",
            &[Value::Dict(vec![])],
            &[(Value::str("y"), Value::Int(2))],
        ));
        assert_eq!(d.repr(), "{1: 2, 'x': 1, 'y': 2}");
        assert!(err(d.call("__setitem__", &[ints(&[1]), Value::None], &[])).contains("unhashable"));
    }

    #[test]
    fn list_slices_sort_and_arithmetic() {
        let l = ServedList::new(&[ints(&[5, 3, 1, 4])]).unwrap();
        let none = Value::None;
        let all = slice(none.clone(), none.clone(), none.clone());
        assert!(same(
            &ok(l.call("__getitem__", &[all], &[])),
            &ints(&[5, 3, 1, 4])
        ));
        let mid = slice(Value::Int(1), Value::Int(3), none.clone());
        ok(l.call("__setitem__", &[mid, ints(&[7, 8, 9])], &[]));
        assert_eq!(l.repr(), "[5, 7, 8, 9, 4]");
        let evens = slice(none.clone(), none.clone(), Value::Int(2));
        ok(l.call("__delitem__", &[evens], &[]));
        assert_eq!(l.repr(), "[7, 9]");
        ok(l.call("__imul__", &[Value::Int(2)], &[]));
        ok(l.call("sort", &[], &[(Value::str("reverse"), Value::Bool(true))]));
        assert_eq!(l.repr(), "[9, 9, 7, 7]");
        assert_eq!(
            ok(l.call("__add__", &[ints(&[1])], &[])).to_string(),
            "[9, 9, 7, 7, 1]"
        );
        assert_eq!(
            ok(l.call("__rmul__", &[Value::Int(0)], &[])).to_string(),
            "[]"
        );
        assert!(err(l.call("__add__", &[Value::Tuple(vec![])], &[])).contains("not \"tuple\""));
        assert!(err(l.call("index", &[Value::Int(5)], &[])).contains("5 is not in list"));
        assert!(
            err(l.call("sort", &[], &[(Value::str("key"), Value::str("f"))]))
                .contains("Python code")
        );
        let rev = ok(l.call("__reversed__", &[], &[]));
        assert_eq!(
            python::iterate(&rev)
                .unwrap()
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>(),
            ["7", "7", "9", "9"]
        );
        let e = ServedList::new(&[]).unwrap();
        assert!(err(e.call("pop", &[], &[])).contains("pop from empty list"));
    }

    #[test]
    fn a_dict_iterator_fails_once_the_dict_changes_size() {
        let d = Arc::new(ServedDict::new(&[], &[(Value::str("a"), Value::Int(1))]).unwrap());
        ok(d.call("__setitem__", &[Value::str("b"), Value::Int(2)], &[]));
        let it = d.clone().iterator().unwrap();
        assert_eq!(ok(it.call("__next__", &[], &[])).to_string(), "'a'");
        ok(d.call("__setitem__", &[Value::str("a"), Value::Int(5)], &[]));
        assert_eq!(ok(it.call("__next__", &[], &[])).to_string(), "'b'");
        assert!(err(it.call("__next__", &[], &[])).contains("StopIteration"));
        let it = d.clone().iterator().unwrap();
        ok(d.call("__setitem__", &[Value::str("c"), Value::Int(3)], &[]));
        assert!(err(it.call("__next__", &[], &[])).contains("changed size"));
        assert!(err(it.call("__next__", &[], &[])).contains("changed size"));
    }

    /// Counts references as a server would, for proxies made by [`proxy`].
    #[derive(Default)]
    struct Counts(HashMap<String, i64>);

    impl ProxyRefs for Counts {
        fn ident_of(&self, v: &Value) -> Option<String> {
            match v {
                Value::Object(o) if o.global() == Some(("test", "Proxy")) => {
                    o.args[0].as_str().map(str::to_string)
                }
                _ => None,
            }
        }
        fn changed(&mut self, before: Vec<String>, after: Vec<String>) {
            for i in before {
                *self.0.entry(i).or_default() -= 1;
            }
            for i in after {
                *self.0.entry(i).or_default() += 1;
            }
        }
    }

    fn proxy(ident: &str) -> Value {
        Value::reduce("test", "Proxy", vec![Value::str(ident)])
    }

    #[test]
    fn stored_proxies_are_counted_while_stored() {
        let mut refs = Counts::default();
        let d = ServedDict::new(&[], &[]).unwrap();
        let nested = Value::Tuple(vec![proxy("a"), proxy("b")]);
        ok(d.call_storing(1, &mut refs, "__setitem__", &[Value::str("k"), nested], &[]));
        ok(d.call_storing(
            1,
            &mut refs,
            "__setitem__",
            &[Value::str("j"), proxy("a")],
            &[],
        ));
        assert_eq!((refs.0["a"], refs.0["b"]), (2, 1));
        let mut found = d.stored_proxies(&refs);
        found.sort();
        assert_eq!(found, ["a", "a", "b"]);
        ok(d.call_storing(1, &mut refs, "pop", &[Value::str("k")], &[]));
        assert_eq!((refs.0["a"], refs.0["b"]), (1, 0));
        ok(d.call_storing(1, &mut refs, "clear", &[], &[]));
        assert_eq!(refs.0["a"], 0);
        assert!(d.stored_proxies(&refs).is_empty());
        let l = ServedList::new(&[]).unwrap();
        ok(l.call_storing(
            1,
            &mut refs,
            "extend",
            &[Value::List(vec![proxy("c"), proxy("c")])],
            &[],
        ));
        ok(l.call_storing(1, &mut refs, "__delitem__", &[Value::Int(0)], &[]));
        assert_eq!(refs.0["c"], 1);
    }
}
