//! The objects a `SyncManager`-compatible server holds besides queues and containers:
//! `Lock`/`RLock`, `Event`, `Value`, `Namespace` and semaphores, with the methods CPython's
//! proxies for them call (`dict` and `list` are in `containers.rs`, `Array` in `array.rs`,
//! `Condition` and `Barrier` in `sync_objects.rs`).

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::stored::{ProxyRefs, Stored, call_stored, stored_proxies};
use crate::pickle::Value;
use crate::sync::lock;
use crate::sync::wait_until;

/// What a method call gives: a value, a Python exception, or a traceback text.
pub(crate) enum Reply {
    Return(Value),
    Error(Value),
    Traceback(String),
}

/// `#ERROR` with the built-in exception `name(*args)`.
pub(crate) fn exception(name: &str, args: Vec<Value>) -> Reply {
    Reply::Error(Value::reduce("builtins", name, args))
}

/// The methods `AcquirerProxy` uses.
pub(crate) const LOCK_EXPOSED: &[&str] = &["acquire", "release"];

/// A served `Lock` or `RLock`. An `RLock` belongs to the connection that acquired it, as
/// to a thread; a `Lock`, as `threading.Lock`, may be released by anyone. Either is freed
/// when the connection holding it ends (its client died), so that nobody waits for ever; a
/// `Lock` freed so then still takes the `release()` its program may make later (a parent
/// releasing what a child acquired before it exited), without touching a new holder.
#[derive(Default)]
pub(crate) struct ServedLock {
    state: Mutex<LockState>,
    freed: Condvar,
    /// An `RLock`: its holder may acquire it again; only its holder may release it.
    reentrant: bool,
}

#[derive(Default)]
struct LockState {
    /// The holding connection and how many times it holds the lock.
    holder: Option<(u64, u32)>,
    /// Releases still owed by holders whose connections ended (a `Lock`'s).
    owed: u32,
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
        let take = |s: &mut LockState| match s.holder {
            None => {
                s.holder = Some((me, 1));
                true
            }
            Some((holder, depth)) if self.reentrant && holder == me => {
                s.holder = Some((me, depth + 1));
                true
            }
            Some(_) => false,
        };
        wait_until(&self.freed, lock(&self.state), deadline, take).1
    }

    /// `release()` by connection `me`; the `RuntimeError` message if it may not.
    pub(crate) fn release(&self, me: u64) -> std::result::Result<(), &'static str> {
        let mut s = lock(&self.state);
        match s.holder {
            Some((holder, depth)) if holder == me && depth > 1 => {
                s.holder = Some((me, depth - 1));
                return Ok(());
            }
            Some((holder, _)) if holder == me => {}
            _ if self.reentrant => return Err("cannot release un-acquired lock"),
            // A release a dead holder's program still makes: owed, not the new holder's.
            _ if s.owed > 0 => {
                s.owed -= 1;
                return Ok(());
            }
            // `threading.Lock`: anyone may release it.
            Some(_) => {}
            None => return Err("release unlocked lock"),
        }
        s.holder = None;
        self.freed.notify_one();
        Ok(())
    }

    /// Releases every hold of connection `me` (its client went away); how many it had.
    pub(crate) fn release_all(&self, me: u64) -> u32 {
        let mut s = lock(&self.state);
        match s.holder {
            Some((holder, depth)) if holder == me => {
                s.holder = None;
                self.freed.notify_one();
                depth
            }
            _ => 0,
        }
    }

    /// Whether connection `me` holds it.
    pub(crate) fn is_owned_by(&self, me: u64) -> bool {
        lock(&self.state)
            .holder
            .is_some_and(|(holder, _)| holder == me)
    }

    /// Whether connection `me` may wait on a condition over it: holds it (an `RLock`), or
    /// anybody does (a `Lock`, as `threading.Condition` checks one).
    pub(crate) fn owned_for_condition(&self, me: u64) -> bool {
        let s = lock(&self.state);
        match s.holder {
            Some((holder, _)) => !self.reentrant || holder == me,
            None => false,
        }
    }

    /// Lets it go for a condition's wait by connection `me`: every hold of an `RLock`, a
    /// `Lock` whoever holds it; the depth to restore afterwards.
    pub(crate) fn release_for_wait(&self, me: u64) -> u32 {
        if self.reentrant {
            return self.release_all(me);
        }
        let mut s = lock(&self.state);
        if s.holder.take().is_some() {
            self.freed.notify_one();
        }
        1
    }

    /// Takes it for connection `me` with a hold count of `depth`, waiting as long as it takes
    /// (what a condition's `wait` does after it has waited: CPython's `_acquire_restore`).
    pub(crate) fn acquire_restore(&self, me: u64, depth: u32) {
        let take = |s: &mut LockState| {
            let free = s.holder.is_none();
            if free {
                s.holder = Some((me, depth.max(1)));
            }
            free
        };
        drop(wait_until(&self.freed, lock(&self.state), None, take));
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
            "release" => match self.release(me) {
                Ok(()) => Reply::Return(Value::None),
                Err(message) => exception("RuntimeError", vec![Value::str(message)]),
            },
            m => Reply::Traceback(format!("AttributeError: a lock has no method {m:?}")),
        }
    }

    fn held_by(&self, conn: u64) -> bool {
        self.is_owned_by(conn)
    }

    fn connection_closed(&self, conn: u64) {
        if self.release_all(conn) > 0 && !self.reentrant {
            let mut s = lock(&self.state);
            s.owed = s.owed.saturating_add(1);
        }
    }

    fn repr(&self) -> String {
        let s = lock(&self.state);
        match (self.reentrant, s.holder) {
            (false, None) => "<unlocked _thread.lock object>".into(),
            (false, Some(_)) => "<locked _thread.lock object>".into(),
            (true, None) => "<unlocked _thread.RLock object owner=0 count=0>".into(),
            (true, Some((owner, count))) => {
                format!("<locked _thread.RLock object owner={owner} count={count}>")
            }
        }
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
    /// Calls `method` for connection `conn`, with `refs` counting the server's references to
    /// proxies stored in the object: what objects that hold values (containers, a
    /// namespace, a value) implement.
    fn call_storing(
        &self,
        conn: u64,
        _refs: &mut dyn ProxyRefs,
        method: &str,
        args: &[Value],
        kwds: &[(Value, Value)],
    ) -> Reply {
        self.call_from(conn, method, args, kwds)
    }
    /// The idents of this server's objects that proxies stored in it refer to, each once per
    /// proxy (the references it holds: taken when it is made, given back when it goes);
    /// it counts them anew for [`call_storing`](Self::call_storing).
    fn stored_proxies(&self, _refs: &dyn ProxyRefs) -> Vec<String> {
        Vec::new()
    }
    /// A new object iterating over this one (`iter(dict_proxy)`), if it can be iterated.
    fn iterator(self: Arc<Self>) -> Option<Arc<dyn ServedObject>> {
        None
    }
    /// `repr(obj)` as the object would give it in CPython's server (`str()` and `repr()` of
    /// a proxy ask for it).
    fn repr(&self) -> String;
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

    fn repr(&self) -> String {
        let state = if *lock(&self.flag) { "set" } else { "unset" };
        format!("<threading.Event: {state}>")
    }
}

/// `SyncManager.Value(typecode, value)`.
pub(crate) struct ServedValue {
    typecode: Value,
    value: Mutex<Stored<Value>>,
}

/// What a value stores: itself.
fn value_values(v: &Value, f: &mut dyn FnMut(&Value)) {
    f(v);
}

impl ServedValue {
    pub(crate) fn from_args(args: &[Value]) -> ServedValue {
        ServedValue {
            typecode: args.first().cloned().unwrap_or(Value::None),
            value: Stored::new(args.get(1).cloned().unwrap_or(Value::None)),
        }
    }

    fn apply(value: &mut Value, method: &str, args: &[Value]) -> Reply {
        match method {
            "get" => Reply::Return(value.clone()),
            "set" => {
                *value = args.first().cloned().unwrap_or(Value::None);
                Reply::Return(Value::None)
            }
            m => Reply::Traceback(format!("AttributeError: a value has no method {m:?}")),
        }
    }
}

impl ServedObject for ServedValue {
    fn exposed(&self) -> &'static [&'static str] {
        &["get", "set"]
    }

    fn call(&self, method: &str, args: &[Value], _kwds: &[(Value, Value)]) -> Reply {
        Self::apply(&mut lock(&self.value).value, method, args)
    }

    fn call_storing(
        &self,
        _conn: u64,
        refs: &mut dyn ProxyRefs,
        method: &str,
        args: &[Value],
        kwds: &[(Value, Value)],
    ) -> Reply {
        call_stored(&self.value, refs, args, kwds, value_values, |v| {
            Self::apply(v, method, args)
        })
    }

    fn value(&self) -> Option<Value> {
        Some(lock(&self.value).value.clone())
    }

    fn stored_proxies(&self, refs: &dyn ProxyRefs) -> Vec<String> {
        stored_proxies(&self.value, refs, value_values)
    }

    fn repr(&self) -> String {
        format!("Value({}, {})", self.typecode, lock(&self.value).value)
    }
}

/// `SyncManager.Namespace()`: attributes by name.
#[derive(Default)]
pub(crate) struct ServedNamespace {
    attrs: Mutex<Stored<Vec<(String, Value)>>>,
}

/// What a namespace stores: its attributes' values.
// `&Vec`: it is `call_stored`'s `Fn(&T, …)` with `T` the stored `Vec`.
#[allow(clippy::ptr_arg)]
fn namespace_values(attrs: &Vec<(String, Value)>, f: &mut dyn FnMut(&Value)) {
    attrs.iter().for_each(|(_, v)| f(v));
}

impl ServedNamespace {
    pub(crate) fn from_kwds(kwds: &[(Value, Value)]) -> ServedNamespace {
        let attrs = kwds
            .iter()
            .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.clone())))
            .collect();
        ServedNamespace {
            attrs: Stored::new(attrs),
        }
    }

    fn apply(attrs: &mut Vec<(String, Value)>, method: &str, args: &[Value]) -> Reply {
        let Some(name) = args.first().and_then(Value::as_str) else {
            return exception(
                "TypeError",
                vec![Value::str("attribute name must be string")],
            );
        };
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
}

impl ServedObject for ServedNamespace {
    fn exposed(&self) -> &'static [&'static str] {
        &["__getattribute__", "__setattr__", "__delattr__"]
    }

    fn call(&self, method: &str, args: &[Value], _kwds: &[(Value, Value)]) -> Reply {
        Self::apply(&mut lock(&self.attrs).value, method, args)
    }

    fn call_storing(
        &self,
        _conn: u64,
        refs: &mut dyn ProxyRefs,
        method: &str,
        args: &[Value],
        kwds: &[(Value, Value)],
    ) -> Reply {
        call_stored(&self.attrs, refs, args, kwds, namespace_values, |attrs| {
            Self::apply(attrs, method, args)
        })
    }

    fn value(&self) -> Option<Value> {
        // What CPython's `Namespace` pickles as: `NEWOBJ(Namespace) + BUILD(__dict__)`.
        let dict = lock(&self.attrs)
            .value
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

    fn stored_proxies(&self, refs: &dyn ProxyRefs) -> Vec<String> {
        stored_proxies(&self.attrs, refs, namespace_values)
    }

    fn repr(&self) -> String {
        // As CPython's `Namespace.__repr__`: public attributes, sorted.
        let mut shown: Vec<String> = lock(&self.attrs)
            .value
            .iter()
            .filter(|(name, _)| !name.starts_with('_'))
            .map(|(name, v)| format!("{name}={v}"))
            .collect();
        shown.sort();
        format!("Namespace({})", shown.join(", "))
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

    fn repr(&self) -> String {
        let value = *lock(&self.count);
        match self.bound {
            Some(bound) => format!("<threading.BoundedSemaphore: value={value}/{bound}>"),
            None => format!("<threading.Semaphore: value={value}>"),
        }
    }
}
