//! `ThreadLocal`: Python's `threading.local()`, one value per thread for each object.
//!
//! The values do not live in the `ThreadLocal` but in the threads: each thread has a map
//! `SLOTS` (a `std` thread-local) from `ThreadLocal` ids to its own value for it. A thread
//! therefore never sees another thread's value, even one that reuses a dead thread's OS id, and
//! its values are dropped with its thread-locals when it exits. Each slot holds a `Weak` to its
//! owner's key: slots whose `ThreadLocal` was dropped are swept out when the thread next adds
//! a slot.

use std::any::Any;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

/// A `ThreadLocal`'s identity; alive as long as the `ThreadLocal`.
struct Key(u64);

struct Slot {
    owner: Weak<Key>,
    /// A `RefCell<Option<T>>` for the owner's `T`.
    value: Rc<dyn Any>,
}

thread_local! {
    static SLOTS: RefCell<BTreeMap<u64, Slot>> = const { RefCell::new(BTreeMap::new()) };
}

type Cell<T> = RefCell<Option<T>>;

/// A value of which each thread has its own copy (Python's `threading.local()`).
///
/// Each thread starts with no value (`None`, where Python raises `AttributeError`), and sees
/// only what it stored itself. The `ThreadLocal` can be a `static`, or shared through an
/// [`Arc`]; for several attributes, store a struct.
///
/// # Examples
///
/// ```
/// use multiproc::{Thread, ThreadLocal};
///
/// static STUDENT: ThreadLocal<String> = ThreadLocal::new();
///
/// fn greet() -> String {
///     format!("hello, {}", STUDENT.get().expect("set by the thread"))
/// }
///
/// let t = Thread::spawn(|| {
///     STUDENT.set("alice".into());
///     greet()
/// })?;
/// STUDENT.set("bob".into());
/// assert_eq!(t.join()?, "hello, alice");
/// assert_eq!(greet(), "hello, bob");
/// # Ok::<(), multiproc::Error>(())
/// ```
///
/// # Caveats
/// - A value is dropped in its own thread: when it is replaced or the thread exits. Values
///   that a dropped `ThreadLocal` left in other threads are dropped when those threads exit, or
///   sooner, the next time they store a value into a `ThreadLocal` they had none for. (The `thread_local` crate instead keeps
///   values until the `ThreadLocal` is dropped, and may show a dead thread's value to a new
///   thread that reuses its id, which Python never does.)
/// - `T` needs no `Send`: values never leave their thread.
///
/// # Panics
/// The value is borrowed while a [`with`](Self::with) or [`with_mut`](Self::with_mut)
/// closure runs: changing the same `ThreadLocal` from inside it panics (reading from inside
/// `with` is fine). Storing a value from a thread-local destructor while the thread exits
/// panics; reading then sees `None`.
pub struct ThreadLocal<T> {
    key: OnceLock<Arc<Key>>,
    _values: PhantomData<fn() -> T>,
}

impl<T> ThreadLocal<T> {
    /// A `ThreadLocal` with no value in any thread; usable in a `static`.
    pub const fn new() -> Self {
        ThreadLocal {
            key: OnceLock::new(),
            _values: PhantomData,
        }
    }
}

impl<T: 'static> ThreadLocal<T> {
    /// This thread's value, cloned; `None` if this thread has stored none.
    ///
    /// # Examples
    ///
    /// ```
    /// let tls = multiproc::ThreadLocal::new();
    /// assert_eq!(tls.get(), None);
    /// tls.set(7);
    /// assert_eq!(tls.get(), Some(7));
    /// ```
    pub fn get(&self) -> Option<T>
    where
        T: Clone,
    {
        self.with(|v| v.cloned())
    }

    /// This thread's value, cloned, after storing `init()` if there was none.
    ///
    /// # Examples
    ///
    /// ```
    /// let tls = multiproc::ThreadLocal::new();
    /// assert_eq!(tls.get_or(|| vec![1]), vec![1]);
    /// assert_eq!(tls.get_or(|| vec![2]), vec![1]);
    /// ```
    pub fn get_or(&self, init: impl FnOnce() -> T) -> T
    where
        T: Clone,
    {
        if let Some(value) = self.get() {
            return value;
        }
        // `init` runs with nothing borrowed: it may use this `ThreadLocal` too.
        let mut fresh = Some(init());
        let cell = self.cell_or_insert();
        let value = {
            let mut slot = cell.borrow_mut();
            if slot.is_none() {
                *slot = fresh.take();
            }
            slot.clone()
        };
        drop(fresh); // `init` stored a value itself: it stays
        value.expect("stored above")
    }

    /// Stores `value` as this thread's value, dropping the previous one.
    ///
    /// # Examples
    ///
    /// ```
    /// let tls = multiproc::ThreadLocal::new();
    /// tls.set("first");
    /// tls.set("second");
    /// assert_eq!(tls.get(), Some("second"));
    /// ```
    pub fn set(&self, value: T) {
        let old = self.cell_or_insert().borrow_mut().replace(value);
        drop(old);
    }

    /// Removes this thread's value and returns it (Python's `del local.attr`).
    ///
    /// # Examples
    ///
    /// ```
    /// let tls = multiproc::ThreadLocal::new();
    /// tls.set(1);
    /// assert_eq!(tls.take(), Some(1));
    /// assert_eq!(tls.take(), None);
    /// ```
    pub fn take(&self) -> Option<T> {
        self.cell().and_then(|cell| cell.borrow_mut().take())
    }

    /// Calls `f` with this thread's value, if any, borrowed.
    ///
    /// # Examples
    ///
    /// ```
    /// let tls = multiproc::ThreadLocal::new();
    /// tls.set(String::from("carol"));
    /// assert_eq!(tls.with(|name| name.map(String::len)), Some(5));
    /// ```
    pub fn with<R>(&self, f: impl FnOnce(Option<&T>) -> R) -> R {
        match self.cell() {
            Some(cell) => f(cell.borrow().as_ref()),
            None => f(None),
        }
    }

    /// Calls `f` with this thread's slot, to change its value in place, store one or take it.
    ///
    /// # Examples
    ///
    /// ```
    /// let counter = multiproc::ThreadLocal::new();
    /// for _ in 0..3 {
    ///     counter.with_mut(|n| *n.get_or_insert(0) += 1);
    /// }
    /// assert_eq!(counter.get(), Some(3));
    /// ```
    pub fn with_mut<R>(&self, f: impl FnOnce(&mut Option<T>) -> R) -> R {
        let cell = self.cell_or_insert();
        let mut slot = cell.borrow_mut();
        f(&mut slot)
    }

    /// This thread's slot, if it has one.
    fn cell(&self) -> Option<Rc<Cell<T>>> {
        let id = self.key.get()?.0;
        let value = SLOTS
            .try_with(|slots| slots.borrow().get(&id).map(|slot| slot.value.clone()))
            .ok()
            .flatten()?;
        value.downcast().ok()
    }

    #[cold]
    fn insert_cell(&self) -> Rc<Cell<T>> {
        let key = self
            .key
            .get_or_init(|| Arc::new(Key(NEXT_KEY.fetch_add(1, Ordering::Relaxed))));
        let cell: Rc<Cell<T>> = Rc::new(RefCell::new(None));
        let dead = SLOTS.with(|slots| {
            let mut slots = slots.borrow_mut();
            let (live, dead): (BTreeMap<_, _>, BTreeMap<_, _>) = std::mem::take(&mut *slots)
                .into_iter()
                .partition(|(_, slot)| slot.owner.strong_count() > 0);
            *slots = live;
            let value: Rc<dyn Any> = cell.clone();
            slots.insert(
                key.0,
                Slot {
                    owner: Arc::downgrade(key),
                    value,
                },
            );
            dead
        });
        // Dropped with nothing borrowed: their `Drop` may use thread-locals.
        drop(dead);
        cell
    }

    #[inline]
    fn cell_or_insert(&self) -> Rc<Cell<T>> {
        self.cell().unwrap_or_else(|| self.insert_cell())
    }
}

impl<T> Default for ThreadLocal<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Drop for ThreadLocal<T> {
    /// Drops the calling thread's value now; other threads drop theirs later (see the type's
    /// caveats).
    fn drop(&mut self) {
        let Some(key) = self.key.get() else {
            return;
        };
        let mine = SLOTS
            .try_with(|slots| {
                slots
                    .try_borrow_mut()
                    .ok()
                    .and_then(|mut slots| slots.remove(&key.0))
            })
            .ok()
            .flatten();
        drop(mine);
    }
}

impl<T: fmt::Debug + 'static> fmt::Debug for ThreadLocal<T> {
    /// Shows the calling thread's value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ThreadLocal");
        match self.cell() {
            None => d.field("value", &None::<T>),
            Some(cell) => match cell.try_borrow() {
                Ok(value) => d.field("value", &*value),
                Err(_) => d.field("value", &format_args!("<borrowed>")),
            },
        };
        d.finish()
    }
}
