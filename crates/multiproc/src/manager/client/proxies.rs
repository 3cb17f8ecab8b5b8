//! More proxies of a [`ManagerClient`]: `Namespace`, `RLock`, `Semaphore`/`BoundedSemaphore`,
//! `Condition`, `Barrier`, `Array` and `JoinableQueue` as CPython's `SyncManager` serves them
//! (ours serves the same), and [`ObjectProxy`] for any registered type.

use std::fmt;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[cfg(all(feature = "async", not(loom)))]
use super::awaiting::OnDrop;
use super::{LockProxy, ManagerClient, Proxy, found, is_exception, reply_as, reply_unit};
use crate::error::{Error, Result};
use crate::manager::typecode::{Typecode, parse_array};
use crate::pickle::{self, Value};

fn seconds(t: Duration) -> Value {
    Value::Float(t.as_secs_f64())
}

/// The positional arguments a serde value stands for: a tuple's items (`()` is none).
fn positional(what: &str, args: Value) -> Result<Vec<Value>> {
    match args {
        Value::Tuple(items) => Ok(items),
        Value::None => Ok(Vec::new()),
        other => Err(Error::invalid(
            what,
            format!(
                "positional arguments must be a tuple ((), (x,), (x, y)…), not a {}",
                other.type_name()
            ),
        )),
    }
}

/// The keyword arguments a serde value stands for: a struct's fields or a map with string
/// keys (`()` is none).
fn keywords(what: &str, kwargs: Value) -> Result<Vec<(Value, Value)>> {
    match kwargs {
        Value::Dict(pairs) if pairs.iter().all(|(k, _)| k.as_str().is_some()) => Ok(pairs),
        Value::None => Ok(Vec::new()),
        _ => Err(Error::invalid(
            what,
            "keyword arguments must be a struct or a map with string keys",
        )),
    }
}

impl ManagerClient {
    /// A new namespace on the server (`SyncManager.Namespace()`): attributes by name.
    ///
    /// # Errors
    /// [`ErrorKind::Remote`](crate::ErrorKind::Remote) if the server has no `Namespace`
    /// typeid; [`ErrorKind::Io`](crate::ErrorKind::Io) if it cannot be reached.
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{Address, ManagerClient, ManagerServer};
    ///
    /// let running = ManagerServer::bind(&Address::tcp("127.0.0.1:0")?, b"abc")?
    ///     .serve_in_background()?;
    /// let manager = ManagerClient::connect(running.address(), b"abc")?;
    /// let ns = manager.namespace()?;
    /// ns.set("epoch", &3)?;
    /// ns.set("name", "run-7")?;
    /// assert_eq!(ns.get::<i64>("epoch")?, Some(3));
    /// assert_eq!(ns.get::<String>("name")?.as_deref(), Some("run-7"));
    /// assert_eq!(ns.get::<i64>("missing")?, None);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn namespace(&self) -> Result<NamespaceProxy> {
        Ok(NamespaceProxy::from_proxy(self.proxy(
            "Namespace",
            Vec::new(),
            "remote namespace".into(),
        )?))
    }

    /// A new reentrant lock on the server (`SyncManager.RLock()`): the proxy that holds it may
    /// acquire it again, and must release it as many times.
    ///
    /// # Errors
    /// [`ErrorKind::Remote`](crate::ErrorKind::Remote) if the server has no `RLock` typeid.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use multiproc::{Address, ManagerClient, ManagerServer};
    ///
    /// let running = ManagerServer::bind(&Address::tcp("127.0.0.1:0")?, b"abc")?
    ///     .serve_in_background()?;
    /// let manager = ManagerClient::connect(running.address(), b"abc")?;
    /// let lock = manager.rlock()?;
    /// lock.acquire()?;
    /// lock.acquire()?; // the holder may take it again
    /// let other = lock.try_clone()?; // another connection: another holder
    /// assert!(!other.acquire_timeout(Duration::from_millis(10))?);
    /// lock.release()?;
    /// lock.release()?;
    /// other.acquire()?;
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn rlock(&self) -> Result<LockProxy> {
        Ok(LockProxy::from_proxy(self.proxy(
            "RLock",
            Vec::new(),
            "remote rlock".into(),
        )?))
    }

    /// A new semaphore with `value` slots on the server (`SyncManager.Semaphore(value)`).
    ///
    /// # Errors
    /// [`ErrorKind::Remote`](crate::ErrorKind::Remote) if the server has no `Semaphore`
    /// typeid.
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{Address, ManagerClient, ManagerServer};
    ///
    /// let running = ManagerServer::bind(&Address::tcp("127.0.0.1:0")?, b"abc")?
    ///     .serve_in_background()?;
    /// let manager = ManagerClient::connect(running.address(), b"abc")?;
    /// let slots = manager.semaphore(2)?;
    /// assert!(slots.try_acquire()? && slots.try_acquire()?);
    /// assert!(!slots.try_acquire()?, "both slots are taken");
    /// slots.release()?;
    /// slots.acquire()?;
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn semaphore(&self, value: u32) -> Result<SemaphoreProxy> {
        Ok(SemaphoreProxy::from_proxy(self.proxy(
            "Semaphore",
            vec![Value::Int(value.into())],
            "remote semaphore".into(),
        )?))
    }

    /// A new bounded semaphore with `value` slots on the server
    /// (`SyncManager.BoundedSemaphore(value)`): releasing more than were acquired is an error.
    ///
    /// # Errors
    /// [`ErrorKind::Remote`](crate::ErrorKind::Remote) if the server has no
    /// `BoundedSemaphore` typeid.
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{Address, ErrorKind, ManagerClient, ManagerServer};
    ///
    /// let running = ManagerServer::bind(&Address::tcp("127.0.0.1:0")?, b"abc")?
    ///     .serve_in_background()?;
    /// let manager = ManagerClient::connect(running.address(), b"abc")?;
    /// let slots = manager.bounded_semaphore(1)?;
    /// slots.acquire()?;
    /// slots.release()?;
    /// assert_eq!(slots.release().unwrap_err().kind(), ErrorKind::Remote); // ValueError
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn bounded_semaphore(&self, value: u32) -> Result<SemaphoreProxy> {
        Ok(SemaphoreProxy::from_proxy(self.proxy(
            "BoundedSemaphore",
            vec![Value::Int(value.into())],
            "remote bounded semaphore".into(),
        )?))
    }

    /// A new condition variable on the server (`SyncManager.Condition()`, over an `RLock`).
    ///
    /// # Errors
    /// [`ErrorKind::Remote`](crate::ErrorKind::Remote) if the server has no `Condition`
    /// typeid.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use multiproc::{Address, ManagerClient, ManagerServer};
    ///
    /// let running = ManagerServer::bind(&Address::tcp("127.0.0.1:0")?, b"abc")?
    ///     .serve_in_background()?;
    /// let manager = ManagerClient::connect(running.address(), b"abc")?;
    /// let cond = manager.condition()?;
    /// let ready = manager.value("i", &0)?;
    /// let (cond2, ready2) = (cond.try_clone()?, ready.try_clone()?);
    /// let waiter = std::thread::spawn(move || -> multiproc::Result<bool> {
    ///     cond2.acquire()?;
    ///     let seen = cond2.wait_for_timeout(|| Ok(ready2.get()? == 1), Duration::from_secs(30))?;
    ///     cond2.release()?;
    ///     Ok(seen)
    /// });
    /// cond.acquire()?;
    /// ready.set(&1)?;
    /// cond.notify_all()?;
    /// cond.release()?;
    /// assert!(waiter.join().unwrap()?);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn condition(&self) -> Result<ConditionProxy> {
        Ok(ConditionProxy::from_proxy(self.proxy(
            "Condition",
            Vec::new(),
            "remote condition".into(),
        )?))
    }

    /// A new barrier for `parties` waiters on the server (`SyncManager.Barrier(parties)`).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) if `parties` is 0 (CPython
    /// would make a barrier nobody passes); [`ErrorKind::Remote`](crate::ErrorKind::Remote)
    /// if the server has no `Barrier` typeid.
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{Address, ManagerClient, ManagerServer};
    ///
    /// let running = ManagerServer::bind(&Address::tcp("127.0.0.1:0")?, b"abc")?
    ///     .serve_in_background()?;
    /// let manager = ManagerClient::connect(running.address(), b"abc")?;
    /// let barrier = manager.barrier(2)?;
    /// let other = barrier.try_clone()?;
    /// let t = std::thread::spawn(move || other.wait());
    /// let mine = barrier.wait()?;
    /// let theirs = t.join().unwrap()?;
    /// assert_eq!(mine + theirs, 1, "arrival indices 0 and 1");
    /// assert_eq!(barrier.parties()?, 2);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn barrier(&self, parties: u32) -> Result<BarrierProxy> {
        if parties == 0 {
            return Err(Error::invalid("remote barrier", "parties must be > 0"));
        }
        Ok(BarrierProxy::from_proxy(self.proxy(
            "Barrier",
            vec![Value::Int(parties.into())],
            "remote barrier".into(),
        )?))
    }

    /// A new `array.array` of `typecode` (`"i"`, `"d"`, `"B"`, `"q"`, `"u"`…) holding `items`
    /// on the server (`SyncManager.Array(typecode, items)`). The server checks that every
    /// item fits the typecode (an `i` holds 32-bit ints).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) for an unknown typecode;
    /// [`ErrorKind::Remote`](crate::ErrorKind::Remote) if the server has no `Array` typeid
    /// or an item does not fit.
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{Address, ManagerClient, ManagerServer};
    ///
    /// let running = ManagerServer::bind(&Address::tcp("127.0.0.1:0")?, b"abc")?
    ///     .serve_in_background()?;
    /// let manager = ManagerClient::connect(running.address(), b"abc")?;
    /// let a = manager.array("i", &[1, 2, 3])?;
    /// a.set(-1, &30)?;
    /// assert_eq!(a.get(0)?, 1);
    /// assert_eq!(a.len()?, 3);
    /// assert_eq!(a.get_slice(1, 3)?, [2, 30]);
    /// assert_eq!(a.to_vec()?, [1, 2, 30]);
    /// assert!(a.set(0, &(1i64 << 40)).is_err(), "does not fit an 'i'");
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn array<T: Serialize + DeserializeOwned>(
        &self,
        typecode: &str,
        items: &[T],
    ) -> Result<ArrayProxy<T>> {
        let tc = Typecode::parse(typecode).ok_or_else(|| {
            Error::invalid(
                "remote array",
                format!("unknown typecode {typecode:?} (b B h H i I l L q Q f d u w)"),
            )
        })?;
        let items = items
            .iter()
            .map(pickle::to_value)
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let args = vec![Value::str(tc.code()), Value::List(items)];
        Ok(ArrayProxy {
            proxy: self.proxy("Array", args, format!("remote array('{}')", tc.code()))?,
            typecode: tc,
            _item: PhantomData,
        })
    }

    /// A new object of a type the server registered as `typeid` (CPython's
    /// `manager.Typeid(*args)` after `BaseManager.register('Typeid', callable)`; ours after
    /// [`ManagerServer::register`](crate::ManagerServer::register)), called method by method
    /// through an [`ObjectProxy`]. `args` is a tuple of positional arguments: `()`, `(x,)`,
    /// `(x, y)`…
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) if `args` is not a tuple;
    /// [`ErrorKind::Remote`](crate::ErrorKind::Remote) if there is no such typeid or making
    /// the object failed.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use multiproc::{Address, Managed, ManagerClient, ManagerServer, MethodCall};
    ///
    /// #[derive(Default)]
    /// struct Tally(Mutex<Vec<String>>);
    ///
    /// impl Managed for Tally {
    ///     fn methods(&self) -> &'static [&'static str] {
    ///         &["add", "count"]
    ///     }
    ///     fn call(&self, method: &str, call: &mut MethodCall<'_>) -> multiproc::Result<()> {
    ///         let mut seen = self.0.lock().unwrap();
    ///         if method == "add" {
    ///             seen.push(call.arg(0, "name")?);
    ///         }
    ///         call.ret(&seen.len())
    ///     }
    /// }
    ///
    /// let mut server = ManagerServer::bind(&Address::tcp("127.0.0.1:0")?, b"abc")?;
    /// server.register("Tally", || Arc::new(Tally::default()));
    /// let running = server.serve_in_background()?;
    /// let manager = ManagerClient::connect(running.address(), b"abc")?;
    /// let tally = manager.create("Tally", &())?;
    /// assert_eq!(tally.call::<usize>("add", &("ada",))?, 1);
    /// assert_eq!(tally.call::<usize>("count", &())?, 1);
    /// assert_eq!(tally.methods(), ["add", "count"]);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn create<A: Serialize + ?Sized>(&self, typeid: &str, args: &A) -> Result<ObjectProxy> {
        self.create_with_kwargs(typeid, args, &())
    }

    /// [`create`](Self::create) with keyword arguments too: a struct, or a map with string
    /// keys (`()` for none).
    ///
    /// # Errors
    /// As [`create`](Self::create); also if `kwargs` is neither.
    pub fn create_with_kwargs<A: Serialize + ?Sized, K: Serialize + ?Sized>(
        &self,
        typeid: &str,
        args: &A,
        kwargs: &K,
    ) -> Result<ObjectProxy> {
        let what = format!("remote {typeid}");
        let args = positional(&what, pickle::to_value(args)?)?;
        let kwds = keywords(&what, pickle::to_value(kwargs)?)?;
        Ok(ObjectProxy {
            proxy: self.proxy_with(typeid, args, kwds, what)?,
            typeid: typeid.to_string(),
        })
    }
}

proxy_type! {
    /// A namespace living in a manager server (CPython's `NamespaceProxy`): attributes got and
    /// set by name, any serde value that maps onto Python's data model.
    NamespaceProxy;
    /// Another proxy to the same namespace on a connection of its own.
}

impl NamespaceProxy {
    call_forms! {
        /// `ns.name`, or `None` if it has no such attribute.
        ///
        /// # Errors
        /// The server's failure; [`ErrorKind::Serialization`](crate::ErrorKind::Serialization)
        /// if the value is not a `T`.
        fn get / get_async[T: DeserializeOwned](&self, name: &str) -> Option<T>
            = "__getattribute__"(vec![Value::str(name)]) => |r: Result<Value>| match r {
                Ok(v) => Ok(Some(pickle::from_value(v)?)),
                Err(e) if is_exception(&e, "AttributeError") => Ok(None),
                Err(e) => Err(e),
            };

        /// `ns.name = value`.
        ///
        /// # Errors
        /// The server's failure; a value that does not map onto Python's data model.
        fn set / set_async[T: Serialize + ?Sized](&self, name: &str, value: &T) -> ()
            = "__setattr__"(vec![Value::str(name), pickle::to_value(value)?]) => reply_unit;

        /// `del ns.name`; whether it was there.
        ///
        /// # Errors
        /// The server's failure.
        fn remove / remove_async(&self, name: &str) -> bool
            = "__delattr__"(vec![Value::str(name)]) => |r| found(r, "AttributeError");
    }
}

proxy_type! {
    /// A semaphore living in a manager server (CPython's `AcquirerProxy` over
    /// `threading.Semaphore` or `BoundedSemaphore`). Slots are not tied to a connection: any
    /// proxy may release one.
    SemaphoreProxy;
    /// Another proxy to the same semaphore on a connection of its own (a waiting `acquire`
    /// blocks its proxy's connection).
}

acquire_forms!(SemaphoreProxy, "a slot");

impl SemaphoreProxy {
    call_forms! {
        /// Gives a slot back (`release()`).
        ///
        /// # Errors
        /// [`ErrorKind::Remote`](crate::ErrorKind::Remote) (`ValueError`) for a bounded
        /// semaphore released more times than it was acquired.
        fn release / release_async(&self) -> () = "release"(Vec::new()) => reply_unit;
    }
}

proxy_type! {
    /// A condition variable living in a manager server (CPython's `ConditionProxy`). Its lock is
    /// held by a proxy (the server counts each proxy connection as a thread); `wait` and
    /// `notify` need it held.
    ConditionProxy;
    /// Another proxy to the same condition on a connection of its own: another holder of its
    /// lock, for another thread.
}

acquire_forms!(ConditionProxy, "the condition's lock (reentrant)");

impl ConditionProxy {
    call_forms! {
        /// Releases the condition's lock.
        ///
        /// # Errors
        /// [`ErrorKind::Remote`](crate::ErrorKind::Remote) (`RuntimeError`) if this proxy does
        /// not hold it.
        fn release / release_async(&self) -> () = "release"(Vec::new()) => reply_unit;

        /// Wakes up to `n` waiters (in the order they came).
        ///
        /// # Errors
        /// [`ErrorKind::Remote`](crate::ErrorKind::Remote) (`RuntimeError`) if this proxy does
        /// not hold the lock.
        fn notify / notify_async(&self, n: usize) -> ()
            = "notify"(vec![Value::Int(i64::try_from(n).unwrap_or(i64::MAX))]) => reply_unit;

        /// Wakes every waiter.
        ///
        /// # Errors
        /// [`ErrorKind::Remote`](crate::ErrorKind::Remote) (`RuntimeError`) if this proxy does
        /// not hold the lock.
        fn notify_all / notify_all_async(&self) -> () = "notify_all"(Vec::new()) => reply_unit;
    }

    /// Releases the lock, waits for a `notify`, then takes the lock again.
    ///
    /// # Errors
    /// [`ErrorKind::Remote`](crate::ErrorKind::Remote) (`RuntimeError`) if this proxy does
    /// not hold the lock.
    pub fn wait(&self) -> Result<()> {
        self.wait_until(None).map(drop)
    }

    /// Like [`wait`](Self::wait), for at most `timeout`; whether it was notified.
    ///
    /// # Errors
    /// As for [`wait`](Self::wait).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool> {
        self.proxy.call_as("wait", vec![seconds(timeout)])
    }

    /// Like [`wait`](Self::wait), until `deadline`; whether it was notified.
    ///
    /// # Errors
    /// As for [`wait`](Self::wait).
    pub fn wait_deadline(&self, deadline: Instant) -> Result<bool> {
        self.wait_until(Some(deadline))
    }

    /// Releases the lock, waits for a `notify`, then takes the lock again, as a future: the
    /// form of [`wait`](Self::wait) to `.await`, on any executor.
    ///
    /// **Cancel-safe** in that the proxy holds nothing after a dropped wait: the lock, taken
    /// again by the server when the wait ends, is released then (the wait had given it up).
    ///
    /// # Errors
    /// As for [`wait`](Self::wait); a server that goes away while it waits.
    #[cfg(all(feature = "async", not(loom)))]
    pub fn wait_async(&self) -> impl std::future::Future<Output = Result<()>> + Send + '_ {
        let call = self
            .proxy
            .call_async("wait", vec![Value::None], Vec::new(), OnDrop::Release);
        async move { call.await.map(drop) }
    }

    fn wait_until(&self, deadline: Option<Instant>) -> Result<bool> {
        let timeout = deadline.map_or(Value::None, |d| {
            seconds(d.saturating_duration_since(Instant::now()))
        });
        self.proxy.call_as("wait", vec![timeout])
    }

    /// Waits until `predicate` holds. The lock must be held. As in CPython, this is `wait`
    /// in a loop on the client.
    ///
    /// # Errors
    /// The predicate's error; the server's failure.
    pub fn wait_for(&self, predicate: impl FnMut() -> Result<bool>) -> Result<()> {
        self.wait_for_until(predicate, None).map(drop)
    }

    /// Like [`wait_for`](Self::wait_for), for at most `timeout`; the predicate's last result.
    ///
    /// # Errors
    /// As for [`wait_for`](Self::wait_for).
    pub fn wait_for_timeout(
        &self,
        predicate: impl FnMut() -> Result<bool>,
        timeout: Duration,
    ) -> Result<bool> {
        self.wait_for_until(predicate, Instant::now().checked_add(timeout))
    }

    /// Like [`wait_for`](Self::wait_for), until `deadline`; the predicate's last result.
    ///
    /// # Errors
    /// As for [`wait_for`](Self::wait_for).
    pub fn wait_for_deadline(
        &self,
        predicate: impl FnMut() -> Result<bool>,
        deadline: Instant,
    ) -> Result<bool> {
        self.wait_for_until(predicate, Some(deadline))
    }

    fn wait_for_until(
        &self,
        mut predicate: impl FnMut() -> Result<bool>,
        deadline: Option<Instant>,
    ) -> Result<bool> {
        loop {
            if predicate()? {
                return Ok(true);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
            self.wait_until(deadline)?;
        }
    }
}

proxy_type! {
    /// A barrier living in a manager server (CPython's `BarrierProxy`). Each party waits through
    /// a proxy of its own ([`try_clone`](Self::try_clone)).
    BarrierProxy;
    /// Another proxy to the same barrier on a connection of its own (one per party).
}

impl BarrierProxy {
    /// Waits until `parties` waiters are there, at most the barrier's own default timeout;
    /// this waiter's arrival index, from 0.
    ///
    /// # Errors
    /// [`ErrorKind::BrokenBarrier`](crate::ErrorKind::BrokenBarrier) if the barrier is or
    /// becomes broken (aborted, reset while waiting, or a wait timed out, this one included).
    pub fn wait(&self) -> Result<u32> {
        self.proxy.call_as("wait", vec![Value::None])
    }

    /// Like [`wait`](Self::wait), at most `timeout` (then the barrier breaks).
    ///
    /// # Errors
    /// As for [`wait`](Self::wait).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<u32> {
        self.proxy.call_as("wait", vec![seconds(timeout)])
    }

    /// Like [`wait`](Self::wait), until `deadline` (then the barrier breaks).
    ///
    /// # Errors
    /// As for [`wait`](Self::wait).
    pub fn wait_deadline(&self, deadline: Instant) -> Result<u32> {
        self.wait_timeout(deadline.saturating_duration_since(Instant::now()))
    }

    /// Waits until `parties` waiters are there, as a future: the form of [`wait`](Self::wait)
    /// to `.await`, on any executor; this waiter's arrival index, from 0.
    ///
    /// **Not cancel-safe**: dropped after its arrival counted, it breaks the barrier (as a
    /// local [`Barrier`](crate::Barrier)'s dropped wait does): the other parties fail with
    /// [`ErrorKind::BrokenBarrier`](crate::ErrorKind::BrokenBarrier) rather than wait for a
    /// party that will not come. Dropped before it was polled, it changes nothing.
    ///
    /// # Errors
    /// As for [`wait`](Self::wait); a server that goes away while it waits.
    #[cfg(all(feature = "async", not(loom)))]
    pub fn wait_async(&self) -> impl std::future::Future<Output = Result<u32>> + Send + '_ {
        self.proxy
            .call_as_async("wait", vec![Value::None], OnDrop::AbortBarrier)
    }

    call_forms! {
        /// Breaks the barrier: waiters, and later waits until a `reset`, fail.
        ///
        /// # Errors
        /// The server's failure.
        fn abort / abort_async(&self) -> () = "abort"(Vec::new()) => reply_unit;

        /// Back to the empty, unbroken state; current waiters fail.
        ///
        /// # Errors
        /// The server's failure.
        fn reset / reset_async(&self) -> () = "reset"(Vec::new()) => reply_unit;

        /// How many waiters pass it at once.
        ///
        /// # Errors
        /// The server's failure.
        fn parties / parties_async(&self) -> u32
            = "__getattribute__"(vec![Value::str("parties")]) => reply_as;

        /// How many wait now.
        ///
        /// # Errors
        /// The server's failure.
        fn n_waiting / n_waiting_async(&self) -> u32
            = "__getattribute__"(vec![Value::str("n_waiting")]) => reply_as;

        /// Whether it is broken.
        ///
        /// # Errors
        /// The server's failure.
        fn broken / broken_async(&self) -> bool
            = "__getattribute__"(vec![Value::str("broken")]) => reply_as;
    }
}

/// An `array.array` living in a manager server (CPython's `ArrayProxy`): fixed-type items,
/// indexed from the end with negative indices as in Python.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct ArrayProxy<T> {
    proxy: Proxy,
    typecode: Typecode,
    _item: PhantomData<fn(T) -> T>,
}

impl<T> fmt::Debug for ArrayProxy<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArrayProxy")
            .field("typecode", &self.typecode.code())
            .field("ident", &self.proxy.ident)
            .finish_non_exhaustive()
    }
}

impl<T: Serialize + DeserializeOwned> ArrayProxy<T> {
    /// Its typecode (`"i"`).
    pub fn typecode(&self) -> &'static str {
        self.typecode.code()
    }

    call_forms! {
        /// `len(a)`.
        ///
        /// # Errors
        /// The server's failure.
        fn len / len_async(&self) -> usize = "__len__"(Vec::new()) => reply_as;

        /// `len(a) == 0`.
        ///
        /// # Errors
        /// The server's failure.
        fn is_empty / is_empty_async(&self) -> bool
            = "__len__"(Vec::new()) => |r| Ok(reply_as::<usize>(r)? == 0);

        /// `a[index]` (negative counts from the end).
        ///
        /// # Errors
        /// [`ErrorKind::Remote`](crate::ErrorKind::Remote) (`IndexError`) out of range.
        fn get / get_async(&self, index: i64) -> T
            = "__getitem__"(vec![Value::Int(index)]) => reply_as;

        /// `a[index] = value`.
        ///
        /// # Errors
        /// [`ErrorKind::Remote`](crate::ErrorKind::Remote): `IndexError` out of range,
        /// `OverflowError` or `TypeError` if the value does not fit the typecode.
        fn set / set_async(&self, index: i64, value: &T) -> ()
            = "__setitem__"(vec![Value::Int(index), pickle::to_value(value)?]) => reply_unit;

        /// `a[start:stop]`, with Python's clamping (negative counts from the end).
        ///
        /// # Errors
        /// The server's failure.
        fn get_slice / get_slice_async(&self, start: i64, stop: i64) -> Vec<T>
            = "__getitem__"(vec![slice(start, stop)]) => |r: Result<Value>| self.items(r?);

        /// `a[start:stop] = items`: replaces that part, which may change the length.
        ///
        /// # Errors
        /// [`ErrorKind::Serialization`](crate::ErrorKind::Serialization) if an item does not
        /// fit the typecode; the server's failure.
        fn set_slice / set_slice_async(&self, start: i64, stop: i64, items: &[T]) -> ()
            = "__setitem__"(vec![slice(start, stop), self.encode(items)?]) => reply_unit;

        /// A copy of the whole array (`a._getvalue()`).
        ///
        /// # Errors
        /// The server's failure; items of another type.
        fn to_vec / to_vec_async(&self) -> Vec<T>
            = "#GETVALUE"(Vec::new()) => |r: Result<Value>| self.items(r?);
    }

    /// `items` as the `array.array` the server takes.
    fn encode(&self, items: &[T]) -> Result<Value> {
        let values = items
            .iter()
            .map(pickle::to_value)
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let bytes = self.typecode.encode(&values).map_err(|r| {
            Error::serialization(
                self.proxy.what.as_str(),
                format!("{}: {}", r.name(), r.message()),
            )
        })?;
        Ok(self.typecode.to_value(bytes))
    }

    /// Another proxy to the same array on a connection of its own.
    ///
    /// # Errors
    /// If the server cannot be reached.
    pub fn try_clone(&self) -> Result<ArrayProxy<T>> {
        Ok(ArrayProxy {
            proxy: self.proxy.try_clone()?,
            typecode: self.typecode,
            _item: PhantomData,
        })
    }

    /// The items of an `array.array` the server sent (or of a list).
    fn items(&self, v: Value) -> Result<Vec<T>> {
        let items = match parse_array(&v) {
            Some(Ok((tc, bytes))) => tc.items(&bytes),
            Some(Err(r)) => {
                return Err(Error::protocol(
                    self.proxy.what.as_str(),
                    format!("a malformed array: {}", r.message()),
                ));
            }
            None => return Ok(pickle::from_value(v)?),
        };
        Ok(pickle::from_value(Value::List(items))?)
    }
}

/// `slice(start, stop)`, as `a[start:stop]` sends it.
fn slice(start: i64, stop: i64) -> Value {
    Value::reduce(
        "builtins",
        "slice",
        vec![Value::Int(start), Value::Int(stop), Value::None],
    )
}

/// An object of a registered type living in a manager server (CPython's `AutoProxy`): its
/// methods called by name, arguments and results any serde values that map onto Python's
/// data model.
#[derive(Serialize, Deserialize)]
pub struct ObjectProxy {
    proxy: Proxy,
    typeid: String,
}

impl fmt::Debug for ObjectProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectProxy")
            .field("typeid", &self.typeid)
            .field("ident", &self.proxy.ident)
            .finish_non_exhaustive()
    }
}

impl ObjectProxy {
    /// The typeid it was created as.
    pub fn typeid(&self) -> &str {
        &self.typeid
    }

    /// The methods the server exposes for it.
    pub fn methods(&self) -> &[String] {
        &self.proxy.exposed
    }

    /// Calls `method` with positional `args` (a tuple: `()`, `(x,)`, `(x, y)`…); its result
    /// as an `R` (`()` for `None`).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) if `args` is not a tuple;
    /// [`ErrorKind::Remote`](crate::ErrorKind::Remote) for the exception the method raised or
    /// a method it does not expose; [`ErrorKind::Serialization`](crate::ErrorKind::Serialization)
    /// if the result is not an `R`.
    pub fn call<R: DeserializeOwned>(
        &self,
        method: &str,
        args: &(impl Serialize + ?Sized),
    ) -> Result<R> {
        self.call_with_kwargs(method, args, &())
    }

    /// [`call`](Self::call) with keyword arguments too: a struct, or a map with string keys.
    ///
    /// # Errors
    /// As [`call`](Self::call); also if `kwargs` is neither.
    pub fn call_with_kwargs<R: DeserializeOwned>(
        &self,
        method: &str,
        args: &(impl Serialize + ?Sized),
        kwargs: &(impl Serialize + ?Sized),
    ) -> Result<R> {
        let args = positional(&self.proxy.what, pickle::to_value(args)?)?;
        let kwds = keywords(&self.proxy.what, pickle::to_value(kwargs)?)?;
        Ok(pickle::from_value(self.proxy.call(method, args, kwds)?)?)
    }

    /// [`call`](Self::call) as a future, to `.await` on any executor.
    ///
    /// **Not cancel-safe**: dropped after its request went out, the method still runs on the
    /// server; its result is dropped (and the proxy's next call connects again).
    ///
    /// # Errors
    /// As [`call`](Self::call); a server that goes away meanwhile.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use multiproc::{Address, Managed, ManagerClient, ManagerServer, MethodCall};
    ///
    /// struct Greeter;
    /// impl Managed for Greeter {
    ///     fn methods(&self) -> &'static [&'static str] {
    ///         &["greet"]
    ///     }
    ///     fn call(&self, _method: &str, call: &mut MethodCall<'_>) -> multiproc::Result<()> {
    ///         let name: String = call.arg(0, "name")?;
    ///         call.ret(&format!("hello, {name}"))
    ///     }
    /// }
    ///
    /// let mut server = ManagerServer::bind(&Address::tcp("127.0.0.1:0")?, b"k")?;
    /// server.register("Greeter", || Arc::new(Greeter));
    /// let running = server.serve_in_background()?;
    /// let greeter = ManagerClient::connect(running.address(), b"k")?.create("Greeter", &())?;
    /// let said: String = futures::executor::block_on(greeter.call_async("greet", &("ann",)))?;
    /// assert_eq!(said, "hello, ann");
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    #[cfg(all(feature = "async", not(loom)))]
    pub fn call_async<R: DeserializeOwned>(
        &self,
        method: &str,
        args: &(impl Serialize + ?Sized),
    ) -> impl std::future::Future<Output = Result<R>> + Send + '_ {
        self.call_with_kwargs_async(method, args, &())
    }

    /// [`call_with_kwargs`](Self::call_with_kwargs) as a future, to `.await` on any executor.
    /// Not cancel-safe, as [`call_async`](Self::call_async).
    ///
    /// # Errors
    /// As [`call_with_kwargs`](Self::call_with_kwargs); a server that goes away meanwhile.
    #[cfg(all(feature = "async", not(loom)))]
    pub fn call_with_kwargs_async<R: DeserializeOwned>(
        &self,
        method: &str,
        args: &(impl Serialize + ?Sized),
        kwargs: &(impl Serialize + ?Sized),
    ) -> impl std::future::Future<Output = Result<R>> + Send + '_ {
        // The arguments are turned into values now, so the future borrows none of them.
        let call = (|| -> Result<_> {
            let args = positional(&self.proxy.what, pickle::to_value(args)?)?;
            let kwds = keywords(&self.proxy.what, pickle::to_value(kwargs)?)?;
            Ok((args, kwds))
        })()
        .map(|(args, kwds)| self.proxy.call_async(method, args, kwds, OnDrop::Nothing));
        async move { Ok(pickle::from_value(call?.await?)?) }
    }

    /// Another proxy to the same object on a connection of its own.
    ///
    /// # Errors
    /// If the server cannot be reached.
    pub fn try_clone(&self) -> Result<ObjectProxy> {
        Ok(ObjectProxy {
            proxy: self.proxy.try_clone()?,
            typeid: self.typeid.clone(),
        })
    }
}
