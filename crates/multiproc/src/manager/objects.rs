//! The objects a `SyncManager`-compatible server holds besides queues: `dict`, `list`,
//! `Lock`/`RLock`, `Event`, `Value`, `Namespace`, semaphores and dict iterators, with the
//! methods CPython's proxies for them call (`Array` is in `array.rs`, `Condition` and
//! `Barrier` in `sync_objects.rs`).
//!
//! Keys and items are pickle values compared structurally (`1` and `1.0` are different keys
//! here, unlike in Python).

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::pickle::{self, Value};
use crate::sync::wait_until;

/// What a method call gives: a value, a Python exception, or a traceback text.
pub(crate) enum Reply {
    Return(Value),
    Error(Value),
    Traceback(String),
}

/// Locks `m`, also after a panic elsewhere poisoned it (the state stays consistent: every
/// update is a single step).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `#ERROR` with the built-in exception `name(*args)`.
pub(crate) fn exception(name: &str, args: Vec<Value>) -> Reply {
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
    items: Mutex<DictItems>,
}

/// A dict's items in insertion order, with an index by structural hash (keys are any value,
/// compared as [`pickle::same`] does), so a lookup does not scan every key.
#[derive(Default)]
struct DictItems {
    items: Vec<(Value, Value)>,
    /// Hash of a key → the positions of the keys with that hash.
    index: HashMap<u64, Vec<usize>>,
    /// Keyed per dict: a client cannot choose keys that all collide.
    hasher: std::hash::RandomState,
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
            .find(|&i| pickle::py_eq(&self.items[i].0, k))
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
            }
        }
    }

    /// Removes the item at `i`, keeping the order of the rest.
    fn remove_at(&mut self, i: usize) -> (Value, Value) {
        let item = self.items.remove(i);
        if i == self.items.len() {
            let h = self.hash(&item.0);
            self.forget(h, i);
        } else {
            self.reindex();
        }
        item
    }

    fn forget(&mut self, h: u64, at: usize) {
        if let Some(slots) = self.index.get_mut(&h) {
            slots.retain(|&j| j != at);
            if slots.is_empty() {
                self.index.remove(&h);
            }
        }
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
    }
}

impl ServedDict {
    pub(crate) fn from_args(args: &[Value], kwds: &[(Value, Value)]) -> ServedDict {
        let mut items = DictItems::default();
        if let Some(Value::Dict(pairs)) = args.first() {
            for (k, v) in pairs {
                items.set(k.clone(), v.clone());
            }
        }
        for (k, v) in kwds {
            items.set(k.clone(), v.clone());
        }
        ServedDict {
            items: Mutex::new(items),
        }
    }

    pub(crate) fn call(&self, method: &str, args: &[Value]) -> Reply {
        let mut d = lock(&self.items);
        let key = args.first();
        let missing = |k: &Value| exception("KeyError", vec![k.clone()]);
        match (method, key) {
            ("__len__", _) => Reply::Return(Value::Int(d.items.len() as i64)),
            ("__contains__", Some(k)) => Reply::Return(Value::Bool(d.find(k).is_some())),
            ("__getitem__", Some(k)) => match d.get(k) {
                Some(v) => Reply::Return(v.clone()),
                None => missing(k),
            },
            ("get", Some(k)) => Reply::Return(
                d.get(k)
                    .cloned()
                    .unwrap_or_else(|| args.get(1).cloned().unwrap_or(Value::None)),
            ),
            ("__setitem__", Some(k)) => {
                d.set(k.clone(), args.get(1).cloned().unwrap_or(Value::None));
                Reply::Return(Value::None)
            }
            ("setdefault", Some(k)) => match d.get(k) {
                Some(v) => Reply::Return(v.clone()),
                None => {
                    let v = args.get(1).cloned().unwrap_or(Value::None);
                    d.set(k.clone(), v.clone());
                    Reply::Return(v)
                }
            },
            ("__delitem__", Some(k)) => match d.find(k) {
                Some(i) => {
                    d.remove_at(i);
                    Reply::Return(Value::None)
                }
                None => missing(k),
            },
            ("pop", Some(k)) => match d.find(k) {
                Some(i) => Reply::Return(d.remove_at(i).1),
                None => match args.get(1) {
                    Some(default) => Reply::Return(default.clone()),
                    None => missing(k),
                },
            },
            ("popitem", _) => match d.items.len().checked_sub(1) {
                Some(last) => {
                    let (k, v) = d.remove_at(last);
                    Reply::Return(Value::Tuple(vec![k, v]))
                }
                None => exception(
                    "KeyError",
                    vec![Value::str("popitem(): dictionary is empty")],
                ),
            },
            ("clear", _) => {
                d.clear();
                Reply::Return(Value::None)
            }
            ("copy", _) => Reply::Return(Value::Dict(d.items.clone())),
            ("keys", _) => Reply::Return(Value::List(
                d.items.iter().map(|(k, _)| k.clone()).collect(),
            )),
            ("values", _) => Reply::Return(Value::List(
                d.items.iter().map(|(_, v)| v.clone()).collect(),
            )),
            ("items", _) => Reply::Return(Value::List(
                d.items
                    .iter()
                    .map(|(k, v)| Value::Tuple(vec![k.clone(), v.clone()]))
                    .collect(),
            )),
            ("update", Some(Value::Dict(pairs))) => {
                for (k, v) in pairs {
                    d.set(k.clone(), v.clone());
                }
                Reply::Return(Value::None)
            }
            (m, _) => Reply::Traceback(format!(
                "TypeError: dict.{m}() with these arguments is not supported"
            )),
        }
    }

    pub(crate) fn value(&self) -> Value {
        Value::Dict(lock(&self.items).items.clone())
    }

    /// The keys, in order (for an iterator).
    pub(crate) fn keys(&self) -> Vec<Value> {
        lock(&self.items)
            .items
            .iter()
            .map(|(k, _)| k.clone())
            .collect()
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
                    .is_some_and(|x| items.iter().any(|v| pickle::py_eq(v, x))),
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
                    .map_or(0, |x| items.iter().filter(|v| pickle::py_eq(v, x)).count())
                    as i64,
            )),
            "index" => match args
                .first()
                .and_then(|x| items.iter().position(|v| pickle::py_eq(v, x)))
            {
                Some(i) => Reply::Return(Value::Int(i as i64)),
                None => exception("ValueError", vec![Value::str("value is not in list")]),
            },
            "remove" => match args
                .first()
                .and_then(|x| items.iter().position(|v| pickle::py_eq(v, x)))
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
    /// The holding connection and how many times it holds the lock.
    owner: Mutex<Option<(u64, u32)>>,
    freed: Condvar,
    /// An `RLock`: its holder may acquire it again.
    reentrant: bool,
}

impl ServedLock {
    /// An `RLock`.
    pub(crate) fn reentrant() -> ServedLock {
        ServedLock {
            reentrant: true,
            ..ServedLock::default()
        }
    }

    /// `acquire(blocking=True, timeout=-1)` for connection `me`.
    pub(crate) fn acquire(&self, me: u64, blocking: bool, timeout: Option<Duration>) -> bool {
        let deadline = if blocking {
            timeout.and_then(|t| Instant::now().checked_add(t))
        } else {
            Some(Instant::now())
        };
        let take = |owner: &mut Option<(u64, u32)>| match *owner {
            None => {
                *owner = Some((me, 1));
                true
            }
            Some((holder, depth)) if self.reentrant && holder == me => {
                *owner = Some((me, depth + 1));
                true
            }
            Some(_) => false,
        };
        wait_until(&self.freed, lock(&self.owner), deadline, take).1
    }

    /// `release()`; false if connection `me` does not hold it.
    pub(crate) fn release(&self, me: u64) -> bool {
        let mut owner = lock(&self.owner);
        match *owner {
            Some((holder, depth)) if holder == me && depth > 1 => {
                *owner = Some((me, depth - 1));
                true
            }
            Some((holder, _)) if holder == me => {
                *owner = None;
                self.freed.notify_one();
                true
            }
            _ => false,
        }
    }

    /// Releases every hold of connection `me` (its client went away); how many it had.
    pub(crate) fn release_all(&self, me: u64) -> u32 {
        let mut owner = lock(&self.owner);
        match *owner {
            Some((holder, depth)) if holder == me => {
                *owner = None;
                self.freed.notify_one();
                depth
            }
            _ => 0,
        }
    }

    /// Whether connection `me` holds it.
    pub(crate) fn is_owned_by(&self, me: u64) -> bool {
        lock(&self.owner).is_some_and(|(holder, _)| holder == me)
    }

    /// Takes it for connection `me` with a hold count of `depth`, waiting as long as it takes
    /// (what a condition's `wait` does after it has waited: CPython's `_acquire_restore`).
    pub(crate) fn acquire_restore(&self, me: u64, depth: u32) {
        let take = |owner: &mut Option<(u64, u32)>| {
            let free = owner.is_none();
            if free {
                *owner = Some((me, depth.max(1)));
            }
            free
        };
        drop(wait_until(&self.freed, lock(&self.owner), None, take));
    }
}

impl ServedObject for ServedLock {
    fn exposed(&self) -> &'static [&'static str] {
        LOCK_EXPOSED
    }

    fn call(&self, method: &str, args: &[Value], kwds: &[(Value, Value)]) -> Reply {
        // No connection is number 0: it holds nothing.
        self.call_from(0, method, args, kwds)
    }

    fn call_from(&self, me: u64, method: &str, args: &[Value], kwds: &[(Value, Value)]) -> Reply {
        match method {
            "acquire" => {
                let blocking = truthy(arg(args, kwds, 0, "blocking"), true);
                // CPython's `timeout=-1` (any negative number here) means no timeout.
                let timeout = match arg(args, kwds, 1, "timeout") {
                    Some(Value::Int(n)) if *n < 0 => None,
                    Some(Value::Float(f)) if *f < 0.0 => None,
                    t => match timeout_arg(t) {
                        Ok(t) => t,
                        Err(e) => return e,
                    },
                };
                Reply::Return(Value::Bool(self.acquire(me, blocking, timeout)))
            }
            "release" => {
                if self.release(me) {
                    Reply::Return(Value::None)
                } else {
                    exception(
                        "RuntimeError",
                        vec![Value::str("cannot release un-acquired lock")],
                    )
                }
            }
            m => Reply::Traceback(format!("AttributeError: a lock has no method {m:?}")),
        }
    }

    fn held_by(&self, conn: u64) -> bool {
        self.is_owned_by(conn)
    }

    fn connection_closed(&self, conn: u64) {
        self.release_all(conn);
    }
}

/// Argument `i` or keyword `name`, bound as Python would.
pub(crate) fn arg<'a>(
    args: &'a [Value],
    kwds: &'a [(Value, Value)],
    i: usize,
    name: &str,
) -> Option<&'a Value> {
    args.get(i).or_else(|| {
        kwds.iter()
            .find(|(k, _)| k.as_str() == Some(name))
            .map(|(_, v)| v)
    })
}

/// A timeout argument: `None` (or a negative number, as `Lock.acquire(timeout=-1)`) is no limit.
fn seconds(v: Option<&Value>) -> Option<Duration> {
    let secs = match v? {
        Value::Int(n) => *n as f64,
        Value::Float(f) => *f,
        _ => return None,
    };
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(1e9)))
}

/// A timeout argument as a condition or barrier takes it: `None` (or absent) is no limit, a
/// negative number is no wait at all; anything but a number is a `TypeError`.
pub(crate) fn timeout_arg(v: Option<&Value>) -> std::result::Result<Option<Duration>, Reply> {
    let secs = match v {
        None | Some(Value::None) => return Ok(None),
        Some(Value::Int(n)) => *n as f64,
        Some(Value::Bool(b)) => f64::from(u8::from(*b)),
        Some(Value::Float(f)) => *f,
        Some(other) => {
            return Err(exception(
                "TypeError",
                vec![Value::str(format!(
                    "timeout must be a number, not {}",
                    other.type_name()
                ))],
            ));
        }
    };
    if secs.is_nan() {
        return Err(exception(
            "ValueError",
            vec![Value::str("timeout must not be NaN")],
        ));
    }
    Ok(Some(Duration::from_secs_f64(secs.clamp(0.0, 1e9))))
}

/// `Instant::now() + timeout`, `None` when there is no limit (or it is beyond reach).
pub(crate) fn deadline(timeout: Option<Duration>) -> Option<Instant> {
    timeout.and_then(|t| Instant::now().checked_add(t))
}

pub(crate) fn truthy(v: Option<&Value>, default: bool) -> bool {
    match v {
        None | Some(Value::None) => default,
        Some(Value::Bool(b)) => *b,
        Some(Value::Int(n)) => *n != 0,
        Some(_) => true,
    }
}

/// An object with methods, served to `SyncManager` proxies.
pub(crate) trait ServedObject: Send + Sync {
    /// The method names a client may call.
    fn exposed(&self) -> &'static [&'static str];
    /// Calls `method`.
    fn call(&self, method: &str, args: &[Value], kwds: &[(Value, Value)]) -> Reply;
    /// A copy of the object's value for `#GETVALUE`, if it has one.
    fn value(&self) -> Option<Value> {
        None
    }
    /// Calls `method` for connection `conn` (connections are numbered from 1): what objects
    /// owned by a connection use (a lock is held by the connection that acquired it, as by
    /// the serving thread in CPython).
    fn call_from(
        &self,
        _conn: u64,
        method: &str,
        args: &[Value],
        kwds: &[(Value, Value)],
    ) -> Reply {
        self.call(method, args, kwds)
    }
    /// Whether connection `conn` holds part of it (a lock): then the server calls
    /// [`connection_closed`](Self::connection_closed) if that connection ends.
    fn held_by(&self, _conn: u64) -> bool {
        false
    }
    /// Connection `conn` ended: give back what it held.
    fn connection_closed(&self, _conn: u64) {}
}

/// `SyncManager.Event()`.
#[derive(Default)]
pub(crate) struct ServedEvent {
    flag: Mutex<bool>,
    changed: Condvar,
}

impl ServedObject for ServedEvent {
    fn exposed(&self) -> &'static [&'static str] {
        &["is_set", "set", "clear", "wait"]
    }

    fn call(&self, method: &str, args: &[Value], kwds: &[(Value, Value)]) -> Reply {
        match method {
            "is_set" => Reply::Return(Value::Bool(*lock(&self.flag))),
            "set" => {
                *lock(&self.flag) = true;
                self.changed.notify_all();
                Reply::Return(Value::None)
            }
            "clear" => {
                *lock(&self.flag) = false;
                Reply::Return(Value::None)
            }
            "wait" => {
                let deadline = seconds(arg(args, kwds, 0, "timeout"))
                    .and_then(|t| Instant::now().checked_add(t));
                let (flag, set) = wait_until(&self.changed, lock(&self.flag), deadline, |f| *f);
                drop(flag);
                Reply::Return(Value::Bool(set))
            }
            m => Reply::Traceback(format!("AttributeError: an event has no method {m:?}")),
        }
    }
}

/// `SyncManager.Value(typecode, value)`.
pub(crate) struct ServedValue {
    value: Mutex<Value>,
}

impl ServedValue {
    pub(crate) fn from_args(args: &[Value]) -> ServedValue {
        ServedValue {
            value: Mutex::new(args.get(1).cloned().unwrap_or(Value::None)),
        }
    }
}

impl ServedObject for ServedValue {
    fn exposed(&self) -> &'static [&'static str] {
        &["get", "set"]
    }

    fn call(&self, method: &str, args: &[Value], _kwds: &[(Value, Value)]) -> Reply {
        match method {
            "get" => Reply::Return(lock(&self.value).clone()),
            "set" => {
                *lock(&self.value) = args.first().cloned().unwrap_or(Value::None);
                Reply::Return(Value::None)
            }
            m => Reply::Traceback(format!("AttributeError: a value has no method {m:?}")),
        }
    }

    fn value(&self) -> Option<Value> {
        Some(lock(&self.value).clone())
    }
}

/// `SyncManager.Namespace()`: attributes by name.
#[derive(Default)]
pub(crate) struct ServedNamespace {
    attrs: Mutex<Vec<(String, Value)>>,
}

impl ServedNamespace {
    pub(crate) fn from_kwds(kwds: &[(Value, Value)]) -> ServedNamespace {
        let attrs = kwds
            .iter()
            .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.clone())))
            .collect();
        ServedNamespace {
            attrs: Mutex::new(attrs),
        }
    }
}

impl ServedObject for ServedNamespace {
    fn exposed(&self) -> &'static [&'static str] {
        &["__getattribute__", "__setattr__", "__delattr__"]
    }

    fn call(&self, method: &str, args: &[Value], _kwds: &[(Value, Value)]) -> Reply {
        let Some(name) = args.first().and_then(Value::as_str) else {
            return Reply::Traceback("TypeError: attribute name must be a str".into());
        };
        let mut attrs = lock(&self.attrs);
        let at = attrs.iter().position(|(n, _)| n == name);
        let missing = || {
            exception(
                "AttributeError",
                vec![Value::str(format!(
                    "'Namespace' object has no attribute '{name}'"
                ))],
            )
        };
        match (method, at) {
            ("__getattribute__", Some(i)) => Reply::Return(attrs[i].1.clone()),
            ("__getattribute__", None) => missing(),
            ("__setattr__", at) => {
                let v = args.get(1).cloned().unwrap_or(Value::None);
                match at {
                    Some(i) => attrs[i].1 = v,
                    None => attrs.push((name.to_string(), v)),
                }
                Reply::Return(Value::None)
            }
            ("__delattr__", Some(i)) => {
                attrs.remove(i);
                Reply::Return(Value::None)
            }
            ("__delattr__", None) => missing(),
            (m, _) => Reply::Traceback(format!("AttributeError: a namespace has no method {m:?}")),
        }
    }

    fn value(&self) -> Option<Value> {
        // What CPython's `Namespace` pickles as: `NEWOBJ(Namespace) + BUILD(__dict__)`.
        let dict = lock(&self.attrs)
            .iter()
            .map(|(k, v)| (Value::str(k.as_str()), v.clone()))
            .collect();
        let mut object = crate::pickle::Object::new(
            Value::global("multiprocessing.managers", "Namespace"),
            crate::pickle::ObjectKind::NewObj,
            Vec::new(),
        );
        object.state = Some(Value::Dict(dict));
        Some(Value::Object(Box::new(object)))
    }
}

/// `SyncManager.Semaphore(n)` and `BoundedSemaphore(n)`.
pub(crate) struct ServedSemaphore {
    count: Mutex<i64>,
    bound: Option<i64>,
    changed: Condvar,
}

impl ServedSemaphore {
    pub(crate) fn from_args(args: &[Value], bounded: bool) -> ServedSemaphore {
        let n = match args.first() {
            Some(Value::Int(n)) => *n,
            _ => 1,
        };
        ServedSemaphore {
            count: Mutex::new(n),
            bound: bounded.then_some(n),
            changed: Condvar::new(),
        }
    }
}

impl ServedObject for ServedSemaphore {
    fn exposed(&self) -> &'static [&'static str] {
        LOCK_EXPOSED
    }

    fn call(&self, method: &str, args: &[Value], kwds: &[(Value, Value)]) -> Reply {
        match method {
            "acquire" => {
                let deadline = if truthy(arg(args, kwds, 0, "blocking"), true) {
                    seconds(arg(args, kwds, 1, "timeout"))
                        .and_then(|t| Instant::now().checked_add(t))
                } else {
                    Some(Instant::now())
                };
                let take = |c: &mut i64| {
                    let free = *c > 0;
                    if free {
                        *c -= 1;
                    }
                    free
                };
                let got = wait_until(&self.changed, lock(&self.count), deadline, take).1;
                Reply::Return(Value::Bool(got))
            }
            "release" => {
                let mut count = lock(&self.count);
                if self.bound.is_some_and(|b| *count >= b) {
                    return exception(
                        "ValueError",
                        vec![Value::str("Semaphore released too many times")],
                    );
                }
                *count += 1;
                self.changed.notify_one();
                Reply::Return(Value::None)
            }
            m => Reply::Traceback(format!("AttributeError: a semaphore has no method {m:?}")),
        }
    }
}

/// The iterator `iter(dict_proxy)` gets (SyncManager's `Iterator` typeid): over a snapshot
/// of the keys taken when iteration started.
pub(crate) struct ServedIterator {
    items: Mutex<std::collections::VecDeque<Value>>,
}

impl ServedIterator {
    pub(crate) fn new(items: Vec<Value>) -> ServedIterator {
        ServedIterator {
            items: Mutex::new(items.into()),
        }
    }
}

impl ServedObject for ServedIterator {
    fn exposed(&self) -> &'static [&'static str] {
        &["__next__", "send", "throw", "close"]
    }

    fn call(&self, method: &str, _args: &[Value], _kwds: &[(Value, Value)]) -> Reply {
        match method {
            "__next__" | "send" => match lock(&self.items).pop_front() {
                Some(v) => Reply::Return(v),
                None => exception("StopIteration", Vec::new()),
            },
            "close" => {
                lock(&self.items).clear();
                Reply::Return(Value::None)
            }
            m => Reply::Traceback(format!("AttributeError: an iterator has no method {m:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(d: &ServedDict, method: &str, args: Vec<Value>) -> Option<Value> {
        match d.call(method, &args) {
            Reply::Return(v) => Some(v),
            _ => None,
        }
    }

    #[test]
    fn a_dict_finds_structural_keys_and_keeps_insertion_order_through_deletes() {
        let d = ServedDict::default();
        let keys = [
            Value::Int(1),
            Value::str("a"),
            Value::Tuple(vec![Value::Int(1), Value::str("b")]),
            Value::Float(f64::NAN),
            Value::Float(2.5),
        ];
        for (i, k) in keys.iter().enumerate() {
            call(&d, "__setitem__", vec![k.clone(), Value::Int(i as i64)]).unwrap();
        }
        for (i, k) in keys.iter().enumerate() {
            let got = call(&d, "__getitem__", vec![k.clone()]).unwrap();
            assert!(pickle::same(&got, &Value::Int(i as i64)), "{k}");
        }
        assert!(matches!(call(&d, "__len__", vec![]), Some(Value::Int(5))));
        call(&d, "__delitem__", vec![keys[1].clone()]).unwrap();
        assert!(
            call(&d, "__getitem__", vec![keys[1].clone()]).is_none(),
            "KeyError"
        );
        call(&d, "__setitem__", vec![keys[1].clone(), Value::Int(9)]).unwrap();
        let Some(Value::List(order)) = call(&d, "keys", vec![]) else {
            panic!("keys")
        };
        let want = [&keys[0], &keys[2], &keys[3], &keys[4], &keys[1]];
        assert!(order.iter().zip(want).all(|(a, b)| pickle::same(a, b)));
        let Some(Value::Tuple(last)) = call(&d, "popitem", vec![]) else {
            panic!("popitem")
        };
        assert!(pickle::same(&last[0], &keys[1]));
        for k in &keys[2..] {
            assert!(call(&d, "__getitem__", vec![k.clone()]).is_some(), "{k}");
        }
    }

    #[test]
    fn numbers_python_calls_equal_are_one_key() {
        let d = ServedDict::default();
        let set = |k: Value, v: i64| call(&d, "__setitem__", vec![k, Value::Int(v)]).unwrap();
        let get = |k: Value| call(&d, "__getitem__", vec![k]);
        let two_to_70 = Value::from_i128(1 << 70);
        set(Value::Int(1), 1);
        set(Value::Float(1.0), 2);
        set(Value::Bool(true), 3);
        set(Value::Tuple(vec![Value::Int(1), Value::Float(2.0)]), 4);
        set(two_to_70.clone(), 5);
        set(Value::Float(-0.0), 6);
        // The key stays the first one set, as in Python: {1: 3, (1, 2.0): 4, …}.
        let Some(Value::List(keys)) = call(&d, "keys", vec![]) else {
            panic!("keys")
        };
        assert!(pickle::same(&keys[0], &Value::Int(1)), "{keys:?}");
        assert_eq!(keys.len(), 4, "{keys:?}");
        assert!(matches!(get(Value::Float(1.0)), Some(Value::Int(3))));
        let tuple = Value::Tuple(vec![Value::Bool(true), Value::Int(2)]);
        assert!(matches!(get(tuple), Some(Value::Int(4))));
        assert!(matches!(
            get(Value::Float(2f64.powi(70))),
            Some(Value::Int(5))
        ));
        assert!(matches!(get(Value::Int(0)), Some(Value::Int(6))));
        assert!(matches!(get(Value::Bool(false)), Some(Value::Int(6))));
        for missing in [
            Value::Float(0.5),
            Value::str("1"),
            Value::Float(f64::NAN),
            Value::Int(2),
        ] {
            assert!(get(missing.clone()).is_none(), "{missing}");
        }
        // Lists search the same way.
        let l = ServedList::from_args(&[Value::List(vec![
            Value::Int(1),
            Value::Float(2.0),
            Value::Int(1),
        ])]);
        let ask = |method: &str, x: Value| match l.call(method, &[x]) {
            Reply::Return(v) => Some(v),
            _ => None,
        };
        assert!(matches!(
            ask("count", Value::Float(1.0)),
            Some(Value::Int(2))
        ));
        assert!(matches!(ask("index", Value::Int(2)), Some(Value::Int(1))));
        assert!(matches!(
            ask("__contains__", Value::Bool(true)),
            Some(Value::Bool(true))
        ));
    }
}
