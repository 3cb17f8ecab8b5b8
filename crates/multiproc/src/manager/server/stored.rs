//! Proxies stored inside served objects (`d['pets'] = manager.dict()`): each keeps its object
//! alive while it is stored, as in CPython. A served object tells the server what it holds
//! before and after a change ([`ProxyRefs`]); objects that never held a proxy pay nothing.

use std::sync::Mutex;

use crate::pickle::Value;
use crate::sync::lock;

/// How a server counts its references to its own objects held through proxies stored in
/// other objects. A container tells it what it holds before and after a change; the server
/// takes a reference for each proxy that came in at once, and gives back each one that went
/// out once the client that changed the container makes its next request (a proxy handed
/// back in the reply is by then rebuilt and holds its own reference).
pub(crate) trait ProxyRefs {
    /// The ident of this server's object that `v` is a pickled proxy of.
    fn ident_of(&self, v: &Value) -> Option<String>;
    /// The references held before a change and after it, each ident once per proxy.
    fn changed(&mut self, before: Vec<String>, after: Vec<String>);
}

/// The idents of this server's objects that proxies inside `v` refer to.
pub(crate) fn proxies_in(refs: &dyn ProxyRefs, v: &Value, out: &mut Vec<String>) {
    if let Some(ident) = refs.ident_of(v) {
        out.push(ident);
        return;
    }
    match v {
        Value::Tuple(x) | Value::List(x) | Value::Set(x) | Value::FrozenSet(x) => {
            x.iter().for_each(|e| proxies_in(refs, e, out));
        }
        Value::Dict(pairs) => pairs.iter().for_each(|(k, e)| {
            proxies_in(refs, k, out);
            proxies_in(refs, e, out);
        }),
        Value::Object(o) => {
            o.args
                .iter()
                .chain(&o.list_items)
                .chain(&o.state)
                .for_each(|e| proxies_in(refs, e, out));
            o.dict_items.iter().for_each(|(k, e)| {
                proxies_in(refs, k, out);
                proxies_in(refs, e, out);
            });
        }
        _ => {}
    }
}

/// Whether a call's arguments carry a proxy of this server.
pub(crate) fn carries_proxies(
    refs: &dyn ProxyRefs,
    args: &[Value],
    kwds: &[(Value, Value)],
) -> bool {
    let mut found = Vec::new();
    args.iter().for_each(|a| proxies_in(refs, a, &mut found));
    kwds.iter()
        .for_each(|(_, v)| proxies_in(refs, v, &mut found));
    !found.is_empty()
}

/// What an object stores, and how many references the proxies in it hold.
#[derive(Default)]
pub(crate) struct Stored<T> {
    pub(crate) value: T,
    pub(crate) proxies: usize,
}

impl<T> Stored<T> {
    pub(crate) fn new(value: T) -> Mutex<Stored<T>> {
        Mutex::new(Stored { value, proxies: 0 })
    }
}

/// Runs `change` on what `stored` holds for a call with `args` and `kwds`, counting the
/// references its stored proxies hold when it holds some or the arguments bring some:
/// `values` lists the values it stores. An object with none pays nothing.
pub(crate) fn call_stored<T, R>(
    stored: &Mutex<Stored<T>>,
    refs: &mut dyn ProxyRefs,
    args: &[Value],
    kwds: &[(Value, Value)],
    values: impl Fn(&T, &mut dyn FnMut(&Value)),
    change: impl FnOnce(&mut T) -> R,
) -> R {
    let mut guard = lock(stored);
    let stored = &mut *guard;
    if stored.proxies == 0 && !carries_proxies(refs, args, kwds) {
        return change(&mut stored.value);
    }
    let scan = |value: &T, refs: &dyn ProxyRefs| {
        let mut found = Vec::new();
        values(value, &mut |v| proxies_in(refs, v, &mut found));
        found
    };
    let before = scan(&stored.value, refs);
    let result = change(&mut stored.value);
    let after = scan(&stored.value, refs);
    stored.proxies = after.len();
    refs.changed(before, after);
    result
}

/// The references the proxies in `stored` hold, counted anew (see
/// [`ServedObject::stored_proxies`]).
pub(crate) fn stored_proxies<T>(
    stored: &Mutex<Stored<T>>,
    refs: &dyn ProxyRefs,
    values: impl Fn(&T, &mut dyn FnMut(&Value)),
) -> Vec<String> {
    let mut stored = lock(stored);
    let mut found = Vec::new();
    values(&stored.value, &mut |v| proxies_in(refs, v, &mut found));
    stored.proxies = found.len();
    found
}
