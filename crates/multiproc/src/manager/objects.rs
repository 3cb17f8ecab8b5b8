//! The objects a `SyncManager`-compatible server holds besides queues: `dict`, `list` and
//! `Lock`, with the methods CPython's `DictProxy`, `ListProxy` and `AcquirerProxy` call.
//!
//! Keys and items are pickle values compared structurally (`1` and `1.0` are different keys
//! here, unlike in Python).

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::pickle::{self, Value};

/// What a method call gives: a value, a Python exception, or a traceback text.
pub(crate) enum Reply {
    Return(Value),
    Error(Value),
    Traceback(String),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn exception(name: &str, args: Vec<Value>) -> Reply {
    Reply::Error(Value::reduce("builtins", name, args))
}

/// The methods `DictProxy` uses (3.11's `SyncManager`).
pub(crate) const DICT_EXPOSED: &[&str] = &[
    "__contains__",
    "__delitem__",
    "__getitem__",
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

/// The methods `ListProxy` uses.
pub(crate) const LIST_EXPOSED: &[&str] = &[
    "__contains__",
    "__delitem__",
    "__getitem__",
    "__len__",
    "__setitem__",
    "append",
    "count",
    "extend",
    "index",
    "insert",
    "pop",
    "remove",
    "reverse",
];

/// The methods `AcquirerProxy` uses.
pub(crate) const LOCK_EXPOSED: &[&str] = &["acquire", "release"];

/// A served `dict`: insertion-ordered pairs.
#[derive(Default)]
pub(crate) struct ServedDict {
    items: Mutex<Vec<(Value, Value)>>,
}

impl ServedDict {
    pub(crate) fn from_args(args: &[Value], kwds: &[(Value, Value)]) -> ServedDict {
        let mut items: Vec<(Value, Value)> = Vec::new();
        let mut set = |k: Value, v: Value| match items.iter().position(|(x, _)| pickle::same(x, &k))
        {
            Some(i) => items[i].1 = v,
            None => items.push((k, v)),
        };
        if let Some(Value::Dict(pairs)) = args.first() {
            for (k, v) in pairs {
                set(k.clone(), v.clone());
            }
        }
        for (k, v) in kwds {
            set(k.clone(), v.clone());
        }
        ServedDict {
            items: Mutex::new(items),
        }
    }

    pub(crate) fn call(&self, method: &str, args: &[Value]) -> Reply {
        let mut items = lock(&self.items);
        let find = |items: &[(Value, Value)], k: &Value| {
            items.iter().position(|(x, _)| pickle::same(x, k))
        };
        let key = args.first();
        let missing = |k: &Value| exception("KeyError", vec![k.clone()]);
        match (method, key) {
            ("__len__", _) => Reply::Return(Value::Int(items.len() as i64)),
            ("__contains__", Some(k)) => Reply::Return(Value::Bool(find(&items, k).is_some())),
            ("__getitem__", Some(k)) => match find(&items, k) {
                Some(i) => Reply::Return(items[i].1.clone()),
                None => missing(k),
            },
            ("get", Some(k)) => Reply::Return(
                find(&items, k)
                    .map(|i| items[i].1.clone())
                    .unwrap_or_else(|| args.get(1).cloned().unwrap_or(Value::None)),
            ),
            ("__setitem__", Some(k)) => {
                let v = args.get(1).cloned().unwrap_or(Value::None);
                match find(&items, k) {
                    Some(i) => items[i].1 = v,
                    None => items.push((k.clone(), v)),
                }
                Reply::Return(Value::None)
            }
            ("setdefault", Some(k)) => match find(&items, k) {
                Some(i) => Reply::Return(items[i].1.clone()),
                None => {
                    let v = args.get(1).cloned().unwrap_or(Value::None);
                    items.push((k.clone(), v.clone()));
                    Reply::Return(v)
                }
            },
            ("__delitem__", Some(k)) => match find(&items, k) {
                Some(i) => {
                    items.remove(i);
                    Reply::Return(Value::None)
                }
                None => missing(k),
            },
            ("pop", Some(k)) => match find(&items, k) {
                Some(i) => Reply::Return(items.remove(i).1),
                None => match args.get(1) {
                    Some(default) => Reply::Return(default.clone()),
                    None => missing(k),
                },
            },
            ("popitem", _) => match items.pop() {
                Some((k, v)) => Reply::Return(Value::Tuple(vec![k, v])),
                None => exception(
                    "KeyError",
                    vec![Value::str("popitem(): dictionary is empty")],
                ),
            },
            ("clear", _) => {
                items.clear();
                Reply::Return(Value::None)
            }
            ("copy", _) => Reply::Return(Value::Dict(items.clone())),
            ("keys", _) => {
                Reply::Return(Value::List(items.iter().map(|(k, _)| k.clone()).collect()))
            }
            ("values", _) => {
                Reply::Return(Value::List(items.iter().map(|(_, v)| v.clone()).collect()))
            }
            ("items", _) => Reply::Return(Value::List(
                items
                    .iter()
                    .map(|(k, v)| Value::Tuple(vec![k.clone(), v.clone()]))
                    .collect(),
            )),
            ("update", Some(Value::Dict(pairs))) => {
                for (k, v) in pairs {
                    match find(&items, k) {
                        Some(i) => items[i].1 = v.clone(),
                        None => items.push((k.clone(), v.clone())),
                    }
                }
                Reply::Return(Value::None)
            }
            (m, _) => Reply::Traceback(format!(
                "TypeError: dict.{m}() with these arguments is not supported"
            )),
        }
    }

    pub(crate) fn value(&self) -> Value {
        Value::Dict(lock(&self.items).clone())
    }
}

/// A served `list`.
#[derive(Default)]
pub(crate) struct ServedList {
    items: Mutex<Vec<Value>>,
}

impl ServedList {
    pub(crate) fn from_args(args: &[Value]) -> ServedList {
        let items = match args.first() {
            Some(Value::List(v) | Value::Tuple(v)) => v.clone(),
            _ => Vec::new(),
        };
        ServedList {
            items: Mutex::new(items),
        }
    }

    pub(crate) fn call(&self, method: &str, args: &[Value]) -> Reply {
        let mut items = lock(&self.items);
        let len = items.len() as i64;
        let index = |v: Option<&Value>| -> Option<usize> {
            let Some(Value::Int(i)) = v else { return None };
            let i = if *i < 0 { i + len } else { *i };
            (0..len).contains(&i).then_some(i as usize)
        };
        let out_of_range = || exception("IndexError", vec![Value::str("list index out of range")]);
        match method {
            "__len__" => Reply::Return(Value::Int(len)),
            "__contains__" => Reply::Return(Value::Bool(
                args.first()
                    .is_some_and(|x| items.iter().any(|v| pickle::same(v, x))),
            )),
            "__getitem__" => match index(args.first()) {
                Some(i) => Reply::Return(items[i].clone()),
                None => out_of_range(),
            },
            "__setitem__" => match index(args.first()) {
                Some(i) => {
                    items[i] = args.get(1).cloned().unwrap_or(Value::None);
                    Reply::Return(Value::None)
                }
                None => out_of_range(),
            },
            "__delitem__" => match index(args.first()) {
                Some(i) => {
                    items.remove(i);
                    Reply::Return(Value::None)
                }
                None => out_of_range(),
            },
            "append" => {
                items.push(args.first().cloned().unwrap_or(Value::None));
                Reply::Return(Value::None)
            }
            "extend" => match args.first() {
                Some(Value::List(v) | Value::Tuple(v)) => {
                    items.extend(v.iter().cloned());
                    Reply::Return(Value::None)
                }
                _ => Reply::Traceback("TypeError: extend() needs a list or tuple".into()),
            },
            "insert" => {
                let at = match args.first() {
                    Some(Value::Int(i)) => {
                        (if *i < 0 { i + len } else { *i }).clamp(0, len) as usize
                    }
                    _ => return Reply::Traceback("TypeError: insert() needs an index".into()),
                };
                items.insert(at, args.get(1).cloned().unwrap_or(Value::None));
                Reply::Return(Value::None)
            }
            "pop" => {
                let at = match args.first() {
                    None => (len > 0).then(|| (len - 1) as usize),
                    some => index(some),
                };
                match at {
                    Some(i) => Reply::Return(items.remove(i)),
                    None => exception("IndexError", vec![Value::str("pop index out of range")]),
                }
            }
            "count" => Reply::Return(Value::Int(
                args.first()
                    .map_or(0, |x| items.iter().filter(|v| pickle::same(v, x)).count())
                    as i64,
            )),
            "index" => match args
                .first()
                .and_then(|x| items.iter().position(|v| pickle::same(v, x)))
            {
                Some(i) => Reply::Return(Value::Int(i as i64)),
                None => exception("ValueError", vec![Value::str("value is not in list")]),
            },
            "remove" => match args
                .first()
                .and_then(|x| items.iter().position(|v| pickle::same(v, x)))
            {
                Some(i) => {
                    items.remove(i);
                    Reply::Return(Value::None)
                }
                None => exception(
                    "ValueError",
                    vec![Value::str("list.remove(x): x not in list")],
                ),
            },
            "reverse" => {
                items.reverse();
                Reply::Return(Value::None)
            }
            m => Reply::Traceback(format!("TypeError: list.{m}() is not supported")),
        }
    }

    pub(crate) fn value(&self) -> Value {
        Value::List(lock(&self.items).clone())
    }
}

/// A served `Lock`, owned by the connection that acquired it; released if that connection
/// ends (its client died) so that nobody waits for ever.
#[derive(Default)]
pub(crate) struct ServedLock {
    owner: Mutex<Option<u64>>,
    freed: Condvar,
}

impl ServedLock {
    /// `acquire(blocking=True, timeout=-1)` for connection `me`.
    pub(crate) fn acquire(&self, me: u64, blocking: bool, timeout: Option<Duration>) -> bool {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut owner = lock(&self.owner);
        loop {
            if owner.is_none() {
                *owner = Some(me);
                return true;
            }
            if !blocking {
                return false;
            }
            owner = match deadline {
                None => self.freed.wait(owner).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    self.freed
                        .wait_timeout(owner, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }

    /// `release()`; false if connection `me` does not hold it.
    pub(crate) fn release(&self, me: u64) -> bool {
        let mut owner = lock(&self.owner);
        if *owner != Some(me) {
            return false;
        }
        *owner = None;
        self.freed.notify_one();
        true
    }
}
