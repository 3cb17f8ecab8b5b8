//! The machinery of the `_async` methods (feature `async`): futures that retry an operation
//! each time the word it waits on moves, woken by the process's futex reactor
//! ([`words`]), on any executor.
//!
//! An operation is written as an *attempt*: it tries without waiting, and when it must wait
//! it counts itself a sleeper (so the other side wakes, as for a blocking waiter), reads the
//! word, looks once more, and says which word to wait on and for which value
//! ([`Attempt::Wait`]). [`WaitFor`] turns an attempt into a future.

pub(crate) mod fds;
pub(crate) mod words;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering, fence};
use std::task::{Context, Poll};
use std::time::Instant;

pub(crate) use words::{Notify, Word, reactor};

/// Something that keeps a watched word's memory mapped (a shared segment).
pub(crate) type KeepAlive = std::sync::Arc<dyn std::any::Any + Send + Sync>;

/// What one try of an operation found.
pub(crate) enum Attempt<'a, T> {
    /// Done, with this outcome.
    Done(T),
    /// Not possible now: wait as this says, then try again.
    Wait(Park<'a>),
    /// Not possible now: wait until this descriptor is readable (a pipe's socket), counted
    /// as a sleeper meanwhile, then try again.
    WaitReadable(std::os::fd::OwnedFd, Option<Sleeper<'a>>),
    /// Not possible now: a thread of this process wakes these wakers when it changes what
    /// the attempt looks at (a manager server's own queue); try again then.
    #[cfg_attr(not(any(feature = "manager", feature = "broker")), allow(dead_code))]
    WaitWoken(&'a Wakers),
}

impl<'a, T> Attempt<'a, T> {
    /// The same attempt with its outcome turned by `f`.
    pub(crate) fn map<U>(self, f: impl FnOnce(T) -> U) -> Attempt<'a, U> {
        match self {
            Attempt::Done(v) => Attempt::Done(f(v)),
            Attempt::Wait(park) => Attempt::Wait(park),
            Attempt::WaitReadable(fd, sleeper) => Attempt::WaitReadable(fd, sleeper),
            Attempt::WaitWoken(wakers) => Attempt::WaitWoken(wakers),
        }
    }
}

/// How to wait before trying again.
pub(crate) struct Park<'a> {
    /// The word whose change means "try again".
    pub(crate) word: Word<'a>,
    /// Its value when the condition was last seen false (after counting as a sleeper).
    pub(crate) expected: u32,
    /// Whether a change is for one waiter or for all.
    pub(crate) notify: Notify,
    /// Try again at this time in any case.
    pub(crate) recheck: Option<Instant>,
    /// The count of sleepers the other side looks at before it wakes, while waiting.
    pub(crate) sleeper: Option<Sleeper<'a>>,
    /// Keeps the word's memory mapped, so that the reactor may go on watching it a while
    /// after its waiters went (a future that waits again soon then costs the reactor no
    /// wake-up).
    pub(crate) keep: Option<KeepAlive>,
}

impl<'a> Park<'a> {
    /// Waits for `word` to leave `expected`, one waiter served per change.
    pub(crate) fn one(word: Word<'a>, expected: u32, sleeper: Option<Sleeper<'a>>) -> Self {
        Park {
            word,
            expected,
            notify: Notify::One,
            recheck: None,
            sleeper,
            keep: None,
        }
    }

    /// Waits for `word` to leave `expected`, every waiter told of a change.
    pub(crate) fn all(word: Word<'a>, expected: u32, sleeper: Option<Sleeper<'a>>) -> Self {
        Park {
            word,
            expected,
            notify: Notify::All,
            recheck: None,
            sleeper,
            keep: None,
        }
    }
}

/// One count in a shared sleeper counter, for as long as it lives. Made before the word is
/// read (with a `SeqCst` fence between), so that the other side either sees the count and
/// wakes, or its change is seen in the read.
pub(crate) struct Sleeper<'a>(&'a AtomicU32);

impl<'a> Sleeper<'a> {
    /// Counts one more sleeper in `counter`, then fences.
    pub(crate) fn count(counter: &'a AtomicU32) -> Sleeper<'a> {
        counter.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        Sleeper(counter)
    }
}

impl Drop for Sleeper<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A registration with a reactor, while the future waits.
enum Parked<'a> {
    /// On a word.
    Word {
        registration: words::Registration<'a>,
        word: Word<'a>,
        /// Whether a notification not acted on must go to the next waiter (when dropped).
        pass_on: bool,
        _sleeper: Option<Sleeper<'a>>,
    },
    /// On a descriptor (every waiter on it is told, as `poll` tells every poller).
    Fd {
        registration: fds::FdRegistration,
        _sleeper: Option<Sleeper<'a>>,
    },
}

impl Parked<'_> {
    fn notified(&self) -> bool {
        match self {
            Parked::Word { registration, .. } => registration.notified(),
            Parked::Fd { registration, .. } => registration.ready(),
        }
    }

    fn set_waker(&self, waker: &std::task::Waker) {
        match self {
            Parked::Word { registration, .. } => registration.set_waker(waker),
            Parked::Fd { registration, .. } => registration.set_waker(waker),
        }
    }

    /// Acting on the notification now: nothing to pass on.
    fn acted_on(&mut self) {
        if let Parked::Word { pass_on, .. } = self {
            *pass_on = false;
        }
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        if let Parked::Word {
            registration,
            word,
            pass_on: true,
            ..
        } = self
            && registration.notified()
        {
            // Cancelled after being told to try: the next waiter tries instead.
            reactor().pass_on(*word);
        }
    }
}

/// A future that tries `attempt` and, while it says wait, waits as it says.
///
/// Cancel-safe as far as the attempt is: an attempt completes or changes nothing, and a
/// notification a dropped future did not act on is passed on.
pub(crate) struct WaitFor<'a, F> {
    attempt: F,
    parked: Option<Parked<'a>>,
}

impl<'a, F> WaitFor<'a, F> {
    /// A future over `attempt`.
    pub(crate) fn new(attempt: F) -> Self {
        WaitFor {
            attempt,
            parked: None,
        }
    }
}

// The attempt is never pinned: it is only called through `&mut`.
impl<F> Unpin for WaitFor<'_, F> {}

impl<'a, T, F> Future for WaitFor<'a, F>
where
    F: FnMut() -> Attempt<'a, T>,
{
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = &mut *self;
        if let Some(p) = &this.parked {
            if !p.notified() {
                p.set_waker(cx.waker());
                // Polled without news (a `select!`, a `join!`): wait on, unless the news came
                // while the waker was being changed.
                if !p.notified() {
                    return Poll::Pending;
                }
            }
            if let Some(mut p) = this.parked.take() {
                p.acted_on();
            }
        }
        match (this.attempt)() {
            Attempt::Done(v) => Poll::Ready(v),
            Attempt::Wait(park) => {
                let registration = reactor().register(&park, cx.waker());
                this.parked = Some(Parked::Word {
                    registration,
                    word: park.word,
                    pass_on: park.notify == Notify::One,
                    _sleeper: park.sleeper,
                });
                Poll::Pending
            }
            Attempt::WaitWoken(wakers) => {
                // Registered, then one more try: a change after that wakes us.
                wakers.register(cx.waker());
                match (this.attempt)() {
                    Attempt::Done(v) => Poll::Ready(v),
                    _ => Poll::Pending,
                }
            }
            Attempt::WaitReadable(fd, sleeper) => {
                let registered = fds::fd_reactor().and_then(|r| r.readable(fd, cx.waker()));
                match registered {
                    Ok(registration) => {
                        this.parked = Some(Parked::Fd {
                            registration,
                            _sleeper: sleeper,
                        });
                    }
                    // No epoll here (no descriptors left): look again soon rather than hang.
                    Err(_) => cx.waker().wake_by_ref(),
                }
                Poll::Pending
            }
        }
    }
}

/// The wakers of futures awaiting something a thread of this process completes (a pool's
/// result, an executor's future): registered under their own lock, all woken when it is done.
#[derive(Default)]
pub(crate) struct Wakers(std::sync::Mutex<Vec<std::task::Waker>>);

impl Wakers {
    /// Registers `waker` (once: a future polled again keeps one entry). The caller looks at
    /// its condition again afterwards: a completion after that look wakes it.
    pub(crate) fn register(&self, waker: &std::task::Waker) {
        use crate::local_lock::IgnorePoison;
        let mut all = self.0.lock().ignore_poison();
        if !all.iter().any(|w| w.will_wake(waker)) {
            all.push(waker.clone());
        }
    }

    /// Whether no waker is registered.
    #[cfg_attr(not(feature = "broker"), allow(dead_code))]
    pub(crate) fn is_empty(&self) -> bool {
        use crate::local_lock::IgnorePoison;
        self.0.lock().ignore_poison().is_empty()
    }

    /// Wakes and forgets every registered waker. The caller made its completion visible
    /// first.
    pub(crate) fn wake_all(&self) {
        use crate::local_lock::IgnorePoison;
        let all = std::mem::take(&mut *self.0.lock().ignore_poison());
        for w in all {
            w.wake();
        }
    }
}
