//! `Timer`: a thread that runs a function once after a delay, unless cancelled first.

use std::fmt;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::handle::{Thread, ThreadBuilder};
use crate::error::Result;
use crate::sync::IgnorePoison;
use crate::sync::deadline_after;
use crate::sync::lock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Waiting,
    Cancelled,
    Fired,
}

/// What the timer thread and its handle share. The thread decides to fire under the lock, so
/// that a `cancel` either comes first (the function never runs) or finds `Fired`.
struct Control {
    state: Mutex<State>,
    changed: Condvar,
}

type Function = Box<dyn FnOnce() + Send + 'static>;

/// A timer not yet started; see [`Timer::new`].
#[must_use = "a timer does nothing until started"]
pub struct TimerBuilder {
    interval: Duration,
    function: Function,
    thread: ThreadBuilder,
}

impl TimerBuilder {
    /// The timer thread's name (default `Thread-N`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.thread = self.thread.name(name);
        self
    }

    /// The timer thread's daemon flag; see [`ThreadBuilder::daemon`].
    pub fn daemon(mut self, daemon: bool) -> Self {
        self.thread = self.thread.daemon(daemon);
        self
    }

    /// Starts the timer thread; the interval counts from now.
    ///
    /// # Errors
    /// As [`ThreadBuilder::spawn`].
    pub fn start(self) -> Result<Timer> {
        let control = Arc::new(Control {
            state: Mutex::new(State::Waiting),
            changed: Condvar::new(),
        });
        // `None` (an interval too long to represent): wait until cancelled.
        let deadline = deadline_after(self.interval);
        let shared = control.clone();
        let function = self.function;
        let thread = self.thread.spawn(move || {
            if !shared.wait_to_fire(deadline) {
                return false;
            }
            function();
            true
        })?;
        Ok(Timer { thread, control })
    }
}

impl fmt::Debug for TimerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerBuilder")
            .field("interval", &self.interval)
            .field("thread", &self.thread)
            .finish_non_exhaustive()
    }
}

impl Control {
    /// Waits for the deadline or a cancel; whether to fire (then the state is `Fired`).
    fn wait_to_fire(&self, deadline: Option<Instant>) -> bool {
        let mut state = lock(&self.state);
        loop {
            if *state == State::Cancelled {
                return false;
            }
            state = match deadline {
                None => self.changed.wait(state).ignore_poison(),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        *state = State::Fired;
                        return true;
                    }
                    self.changed.wait_timeout(state, left).ignore_poison().0
                }
            };
        }
    }
}

/// A thread that calls a function once after an interval, unless cancelled before (Python's
/// `threading.Timer`).
///
/// # Examples
///
/// ```
/// use std::sync::mpsc;
/// use std::time::Duration;
/// use multiproc::Timer;
///
/// let (tx, rx) = mpsc::channel();
/// let timer = Timer::new(Duration::from_millis(20), move || tx.send("ding").unwrap())
///     .name("bell")
///     .start()?;
/// assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok("ding"));
/// assert!(timer.join()?); // it fired
///
/// let never = Timer::new(Duration::from_secs(3600), || unreachable!()).start()?;
/// assert!(never.cancel());
/// assert!(!never.join()?); // cancelled: returns at once
/// # Ok::<(), multiproc::Error>(())
/// ```
///
/// # Caveats
/// Dropping a `Timer` neither cancels nor waits for it: the function still runs when the
/// interval is over (as in Python), unless the process has exited by then.
pub struct Timer {
    thread: Thread<bool>,
    control: Arc<Control>,
}

impl Timer {
    /// A timer that will call `function` once, `interval` after [`start`](TimerBuilder::start).
    #[allow(clippy::new_ret_no_self)] // a timer is built, then started
    pub fn new(interval: Duration, function: impl FnOnce() + Send + 'static) -> TimerBuilder {
        TimerBuilder {
            interval,
            function: Box::new(function),
            thread: ThreadBuilder::new(),
        }
    }

    /// Stops the timer if it has not fired yet: whether the function is now sure never to run
    /// (`false`: it has already started or finished). The thread then ends at once.
    pub fn cancel(&self) -> bool {
        let mut state = lock(&self.control.state);
        match *state {
            State::Waiting => {
                *state = State::Cancelled;
                self.control.changed.notify_all();
                true
            }
            State::Cancelled => true,
            State::Fired => false,
        }
    }

    /// Whether the timer thread still runs: waiting, or running the function.
    pub fn is_alive(&self) -> bool {
        self.thread.is_alive()
    }

    /// The timer thread's name.
    pub fn name(&self) -> &str {
        self.thread.name()
    }

    /// The timer thread's ident.
    pub fn ident(&self) -> u64 {
        self.thread.ident()
    }

    /// The timer thread's daemon flag.
    pub fn daemon(&self) -> bool {
        self.thread.daemon()
    }

    /// Waits for the timer thread to end: whether the function ran (`false`: cancelled).
    ///
    /// # Errors
    /// As [`Thread::join`]: [`Error::Panicked`](crate::Error::Panicked) if the function
    /// panicked.
    pub fn join(self) -> Result<bool> {
        self.thread.join()
    }

    /// Like [`join`](Self::join) if the timer thread has ended, without waiting: `Ok(None)`
    /// if it still runs.
    ///
    /// # Errors
    /// As [`Thread::join`].
    pub fn try_join(&mut self) -> Result<Option<bool>> {
        self.thread.try_join()
    }

    /// Waits at most `timeout`: `Ok(None)` if the timer thread still runs, else as
    /// [`join`](Self::join).
    ///
    /// # Errors
    /// As [`Thread::join`].
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<Option<bool>> {
        self.thread.join_timeout(timeout)
    }

    /// Waits until `deadline`: `Ok(None)` if the timer thread still runs, else as
    /// [`join`](Self::join).
    ///
    /// # Errors
    /// As [`Thread::join`].
    pub fn join_deadline(&mut self, deadline: Instant) -> Result<Option<bool>> {
        self.thread.join_deadline(deadline)
    }
}

impl fmt::Debug for Timer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timer")
            .field("name", &self.thread.name())
            .field("state", &*lock(&self.control.state))
            .field("alive", &self.is_alive())
            .finish()
    }
}
