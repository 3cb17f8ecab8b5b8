//! The one mechanism by which awaiting futures wait for shared-memory words: a few threads
//! per process, each sleeping in `futex_waitv` on up to 127 words at once (plus a word of its
//! own by which it learns of new ones), however many futures wait.
//!
//! A future that must wait counts itself into the word's sleeper counter (so that the other
//! side calls `futex_wake`, as it does for blocking waiters), reads the word, checks its
//! condition once more, and registers `(word, value read)` here with its waker. A thread wakes
//! when the kernel wakes it through a word or finds a word no longer holding the value
//! registered, and then notifies the word's futures: one (a queue's item, a lock: as the
//! blocking side's `futex_wake(…, 1)` does) or all (an event). A notified future that is
//! dropped before it acted passes the notification on ([`Reactor::pass_on`]), so a wake is
//! never lost to a cancelled future. Where there is no `futex_waitv` (Linux before 5.16), each
//! thread watches one word with `futex_wait`.
//!
//! The words live in shared mappings that futures borrow: a word is read here only under the
//! reactor's lock while a registration for it exists, and a registration ends (under the
//! lock) before its future, and so the mapping, can go. A registrant may also hand over a
//! reference that keeps the mapping (a queue's segment): its word is then watched on for a
//! moment after its last waiter went, so that a future waiting again soon (a ping-pong's next
//! `get`) finds the thread already watching it. The kernel may still be handed an
//! address whose mapping went meanwhile; it reads it or reports a fault, and the thread looks
//! again.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Instant;

use crate::local_lock::IgnorePoison;
use crate::platform::{self, FutexWait, WaitvEnded};

/// How many words one thread watches with `futex_waitv` (the kernel takes 128, one of which
/// is the thread's own).
const WORDS_PER_THREAD: usize = 127;

/// How long a word whose memory the reactor keeps mapped is still watched after its last
/// waiter went, while it does not change: a future that waits on it again meanwhile (the
/// next `get` of a ping-pong) registers without waking the thread.
const LINGER: std::time::Duration = std::time::Duration::from_millis(100);

/// A futex word as the other side writes it.
#[derive(Clone, Copy)]
pub(crate) enum Word<'a> {
    /// A 32-bit word.
    U32(&'a AtomicU32),
    /// The low half of a 64-bit word (a ring's head or tail), as the futex calls see it.
    Low(&'a AtomicU64),
}

impl Word<'_> {
    /// The address the kernel keys the futex on.
    fn futex_addr(self) -> usize {
        match self {
            Word::U32(w) => w.as_ptr() as usize,
            Word::Low(w) => {
                let base = w.as_ptr() as usize;
                if cfg!(target_endian = "little") {
                    base
                } else {
                    base + 4
                }
            }
        }
    }

    /// The value the kernel compares.
    pub(crate) fn load(self) -> u32 {
        match self {
            Word::U32(w) => w.load(Ordering::SeqCst),
            Word::Low(w) => w.load(Ordering::SeqCst) as u32,
        }
    }

    /// Wakes up to `n` sleepers on it, in any process.
    pub(crate) fn wake(self, n: u32) {
        platform::futex_wake_at(self.futex_addr(), n);
    }

    /// A copy of the reference the reactor keeps while a registration lives.
    fn raw(self) -> RawWord {
        match self {
            Word::U32(w) => RawWord::U32(w.as_ptr() as usize),
            Word::Low(w) => RawWord::Low(w.as_ptr() as usize),
        }
    }
}

/// [`Word`] without its lifetime: valid only while a registration for it exists.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RawWord {
    U32(usize),
    Low(usize),
}

impl RawWord {
    /// Reads the word.
    ///
    /// # Safety
    /// A registration for it exists, or its entry keeps its memory mapped (so the mapping is
    /// alive), and the caller holds the reactor's lock (so neither can end meanwhile).
    unsafe fn load(self) -> u32 {
        match self {
            // SAFETY: the caller's promise: the word lives.
            RawWord::U32(a) => unsafe { &*(a as *const AtomicU32) }.load(Ordering::SeqCst),
            // SAFETY: as above.
            RawWord::Low(a) => unsafe { &*(a as *const AtomicU64) }.load(Ordering::SeqCst) as u32,
        }
    }
}

/// Whom a wake through a word is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Notify {
    /// One waiting future (an item, a lock, a permit: what one `futex_wake(…, 1)` is for).
    One,
    /// Every waiting future (an event set, a barrier passed, a queue joined).
    All,
}

/// A waiting future's place: its waker, and whether it was notified.
struct Slot {
    waker: Mutex<Waker>,
    notified: AtomicBool,
}

/// A word and the futures waiting on it.
struct Entry {
    word: RawWord,
    /// The value the thread waits for the word to leave (the latest registrant's reading).
    expected: u32,
    notify: Notify,
    /// When to notify anyway (a lock's owner may have died without the kernel telling).
    recheck: Option<Instant>,
    waiting: VecDeque<Arc<Slot>>,
    /// The thread that watches it.
    thread: usize,
    /// Keeps the word's memory mapped, if its registrant gave the means.
    keep: Option<super::KeepAlive>,
    /// Since when nobody waits on it (it is watched on a while if `keep` is set).
    idle_since: Option<Instant>,
}

impl Entry {
    /// Its last waiter went: whether it must go too (it may linger if its memory is kept).
    fn emptied(&mut self, now: Instant) -> bool {
        if self.keep.is_none() {
            return true;
        }
        self.idle_since = Some(now);
        false
    }
}

/// A thread's own word, by which it learns that its words changed.
struct Control {
    word: AtomicU32,
}

impl Control {
    fn bump(&self) {
        self.word.fetch_add(1, Ordering::SeqCst);
        platform::futex_wake(&self.word, 1);
    }
}

struct State {
    /// The words waited on, by futex address.
    entries: HashMap<usize, Entry>,
    /// How many words each thread watches.
    load: Vec<usize>,
}

/// The process's futex reactor.
pub(crate) struct Reactor {
    pid: u32,
    /// Whether the kernel has `futex_waitv`.
    waitv: bool,
    state: Mutex<State>,
    /// Each thread's control word (threads are never stopped: at most one per
    /// [`WORDS_PER_THREAD`] words ever waited on at once).
    controls: Mutex<Vec<Arc<Control>>>,
}

/// The reactor of this process, started on first use (and afresh in a forked child).
pub(crate) fn reactor() -> &'static Reactor {
    static CURRENT: AtomicPtr<Reactor> = AtomicPtr::new(std::ptr::null_mut());
    let pid = platform::getpid_cached();
    let seen = CURRENT.load(Ordering::Acquire);
    // SAFETY: a non-null pointer in CURRENT is a leaked Box, never freed.
    if let Some(r) = unsafe { seen.as_ref() }
        && r.pid == pid
    {
        return r;
    }
    // In a forked child the parent's reactor has no threads here: a new one is made (the old
    // one stays leaked; its locks may have been held at the fork, so it is never touched).
    let fresh = Box::into_raw(Box::new(Reactor {
        pid,
        // `MULTIPROC_FUTEX_WAITV=0` makes it use the older kernels' way (for their tests).
        waitv: std::env::var_os("MULTIPROC_FUTEX_WAITV").is_none_or(|v| v != "0")
            && platform::futex_waitv(&[], Some(Instant::now())) != WaitvEnded::Unsupported,
        state: Mutex::new(State {
            entries: HashMap::new(),
            load: Vec::new(),
        }),
        controls: Mutex::new(Vec::new()),
    }));
    match CURRENT.compare_exchange(seen, fresh, Ordering::AcqRel, Ordering::Acquire) {
        // SAFETY: just leaked, never freed.
        Ok(_) => unsafe { &*fresh },
        Err(other) => {
            // SAFETY: ours, never shared.
            drop(unsafe { Box::from_raw(fresh) });
            // SAFETY: a leaked Box, as above.
            unsafe { &*other }
        }
    }
}

/// A future's registration for a word. Dropping it ends the registration; a notification it
/// got and did not act on must be passed on by its owner ([`Reactor::pass_on`]).
pub(crate) struct Registration<'a> {
    key: usize,
    slot: Arc<Slot>,
    _word: std::marker::PhantomData<&'a AtomicU32>,
}

impl Registration<'_> {
    /// Whether the reactor notified it (it is then no longer registered).
    pub(crate) fn notified(&self) -> bool {
        self.slot.notified.load(Ordering::Acquire)
    }

    /// Updates the waker to notify (a future polled again, maybe on another thread).
    pub(crate) fn set_waker(&self, waker: &Waker) {
        let mut w = self.slot.waker.lock().ignore_poison();
        if !w.will_wake(waker) {
            *w = waker.clone();
        }
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if self.notified() {
            return;
        }
        let r = reactor();
        let mut state = r.lock();
        let Some(entry) = state.entries.get_mut(&self.key) else {
            return;
        };
        entry.waiting.retain(|s| !Arc::ptr_eq(s, &self.slot));
        if entry.waiting.is_empty() && entry.emptied(Instant::now()) {
            let thread = entry.thread;
            state.entries.remove(&self.key);
            state.load[thread] -= 1;
        }
    }
}

impl Reactor {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().ignore_poison()
    }

    /// Registers a future waiting for `word` to leave `expected` (or be woken): `waker` is
    /// woken then, per `notify`, or at `recheck`. The caller counted itself a sleeper and
    /// read `expected` after that, as a blocking waiter would before `futex_wait`.
    pub(crate) fn register<'a>(
        &'static self,
        park: &super::Park<'a>,
        waker: &Waker,
    ) -> Registration<'a> {
        let (word, expected, notify, recheck) =
            (park.word, park.expected, park.notify, park.recheck);
        let key = word.futex_addr();
        let slot = Arc::new(Slot {
            waker: Mutex::new(waker.clone()),
            notified: AtomicBool::new(false),
        });
        let wake_thread = {
            let mut state = self.lock();
            let thread = match state.entries.get(&key) {
                Some(e) => e.thread,
                None => self.thread_with_room(&mut state),
            };
            let mut fresh = false;
            state.entries.entry(key).or_insert_with(|| {
                fresh = true;
                Entry {
                    word: word.raw(),
                    expected,
                    notify,
                    recheck: None,
                    waiting: VecDeque::new(),
                    thread,
                    keep: None,
                    idle_since: None,
                }
            });
            if fresh {
                state.load[thread] += 1;
            }
            let entry = state.entries.get_mut(&key).expect("just inserted");
            // A lingering entry still watched for the same value needs no wake-up.
            let changed = fresh || entry.expected != expected;
            entry.expected = expected;
            entry.word = word.raw();
            entry.idle_since = None;
            if entry.keep.is_none() {
                entry.keep = park.keep.clone();
            }
            if let Some(at) = recheck
                && entry.recheck.is_none_or(|r| at < r)
            {
                entry.recheck = Some(at);
            }
            entry.waiting.push_back(slot.clone());
            (changed || recheck.is_some()).then_some(thread)
        };
        if let Some(thread) = wake_thread {
            self.controls.lock().ignore_poison()[thread].bump();
        }
        Registration {
            key,
            slot,
            _word: std::marker::PhantomData,
        }
    }

    /// Passes a notification on: to another future of this process waiting on `word`, or,
    /// if none, to a sleeper in any process (`futex_wake(word, 1)`).
    pub(crate) fn pass_on(&self, word: Word<'_>) {
        let key = word.futex_addr();
        let waker = {
            let mut state = self.lock();
            state
                .entries
                .get_mut(&key)
                .and_then(take_one)
                .map(|(w, emptied)| {
                    let entry = state.entries.get_mut(&key).expect("just seen");
                    if emptied && entry.emptied(Instant::now()) {
                        let thread = entry.thread;
                        state.entries.remove(&key);
                        state.load[thread] -= 1;
                    }
                    w
                })
        };
        match waker {
            Some(w) => w.wake(),
            None => word.wake(1),
        }
    }

    /// A thread watching fewer words than it can: an existing one, or a new one.
    fn thread_with_room(&'static self, state: &mut State) -> usize {
        let room = if self.waitv { WORDS_PER_THREAD } else { 1 };
        if let Some(t) = state.load.iter().position(|&n| n < room) {
            return t;
        }
        let control = Arc::new(Control {
            word: AtomicU32::new(0),
        });
        let t = state.load.len();
        state.load.push(0);
        self.controls.lock().ignore_poison().push(control.clone());
        std::thread::Builder::new()
            .name("multiproc-async".into())
            .spawn(move || self.watch(t, &control))
            .expect("cannot start the async waiter thread");
        t
    }

    /// A thread's life: wait on its words, notify, and again.
    fn watch(&self, me: usize, control: &Control) {
        loop {
            let seen = control.word.load(Ordering::SeqCst);
            let (words, recheck) = {
                let state = self.lock();
                let mine = state.entries.iter().filter(|(_, e)| e.thread == me);
                let words: Vec<(usize, u32)> =
                    mine.clone().map(|(&k, e)| (k, e.expected)).collect();
                let recheck = mine
                    .filter_map(|(_, e)| match (e.recheck, e.idle_since) {
                        (Some(r), Some(i)) => Some(r.min(i + LINGER)),
                        (r, i) => r.or(i.map(|i| i + LINGER)),
                    })
                    .min();
                (words, recheck)
            };
            let woken = if self.waitv {
                let mut all = Vec::with_capacity(words.len() + 1);
                all.push((control.word.as_ptr() as usize, seen));
                all.extend_from_slice(&words);
                match platform::futex_waitv(&all, recheck) {
                    WaitvEnded::Woken(i) if i > 0 => Some(all[i].0),
                    _ => None,
                }
            } else {
                match words.first() {
                    Some(&(addr, expected)) => wait_one(addr, expected, recheck).then_some(addr),
                    None => {
                        platform::futex_wait(&control.word, seen, None);
                        None
                    }
                }
            };
            self.notify(me, woken);
        }
    }

    /// After a thread woke: notifies the futures of the word it was woken through, of every
    /// word that no longer holds its value, and of every word whose recheck time came.
    fn notify(&self, me: usize, woken: Option<usize>) {
        let now = Instant::now();
        let mut wakers = Vec::new();
        {
            let mut state = self.lock();
            let mut emptied = Vec::new();
            for (&key, entry) in state.entries.iter_mut().filter(|(_, e)| e.thread == me) {
                // SAFETY: the entry exists, so a registration for its word does or its memory
                // is kept mapped (`keep`), and we hold the lock.
                let now_value = unsafe { entry.word.load() };
                if entry.waiting.is_empty() {
                    // Lingering: it goes once it changes (nobody to tell) or has been idle long
                    // enough.
                    if now_value != entry.expected
                        || entry.idle_since.is_none_or(|i| i + LINGER <= now)
                    {
                        emptied.push(key);
                    }
                    continue;
                }
                let due = entry.recheck.is_some_and(|r| r <= now);
                if now_value == entry.expected && woken != Some(key) && !due {
                    continue;
                }
                entry.expected = now_value;
                if due {
                    entry.recheck = None;
                }
                match entry.notify {
                    Notify::All => {
                        while let Some((w, _)) = take_one(entry) {
                            wakers.push(w);
                        }
                    }
                    Notify::One => {
                        if let Some((w, _)) = take_one(entry) {
                            wakers.push(w);
                        }
                        if due {
                            // Everyone asked to look again at this time.
                            while let Some((w, _)) = take_one(entry) {
                                wakers.push(w);
                            }
                        }
                    }
                }
                if entry.waiting.is_empty() && entry.emptied(now) {
                    emptied.push(key);
                }
            }
            for key in emptied {
                state.entries.remove(&key);
                state.load[me] -= 1;
            }
        }
        for w in wakers {
            w.wake();
        }
    }
}

/// Takes the first waiting future off `entry`, marked notified: its waker, and whether the
/// entry is now empty.
fn take_one(entry: &mut Entry) -> Option<(Waker, bool)> {
    let slot = entry.waiting.pop_front()?;
    slot.notified.store(true, Ordering::Release);
    let w = slot.waker.lock().ignore_poison().clone();
    Some((w, entry.waiting.is_empty()))
}

/// Without `futex_waitv`: sleeps on one word while it holds `expected` (at most until
/// `recheck`, and a quarter second, after which the thread looks at its words again);
/// whether it was woken through the word or saw it change. The word's registration may have
/// ended meanwhile: its address only goes to the kernel.
fn wait_one(addr: usize, expected: u32, recheck: Option<Instant>) -> bool {
    let slice = Instant::now() + std::time::Duration::from_millis(250);
    let until = recheck.map_or(slice, |r| r.min(slice));
    platform::futex_wait_at(addr, expected, Some(until)) == FutexWait::Woken
}
