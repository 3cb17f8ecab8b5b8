//! How one task runs: its priority, when it starts, how it is retried and how long it may run
//! ([`Pool::task`]).

use std::marker::PhantomData;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{AsyncResult, Pool};
use crate::error::{Error, Result};

/// How urgent a task is: a pool's workers take [`High`](Priority::High) tasks before any
/// [`Normal`](Priority::Normal) one still waiting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Priority {
    /// In turn, first come first served.
    #[default]
    Normal,
    /// Ahead of every normal task not yet started.
    High,
}

/// When a failed task runs again, and how often.
///
/// A task is retried when its worker process dies or it runs past its timeout, and, with
/// [`on_panic`](Self::on_panic), when it panics. Without [`backoff`](Self::backoff) it runs
/// again at once; with it, the `n`-th retry waits `first × 2ⁿ⁻¹`, at most `max`, and with
/// [`jitter`](Self::jitter) (the default) a random part of that (from none to all of it), so
/// that tasks failing together do not come back together. Waiting retries need a broker pool
/// (`Pool::broker`, feature `broker`), whose broker keeps the task meanwhile.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use multiproc::RetryPolicy;
///
/// let policy = RetryPolicy::new(5).backoff(Duration::from_secs(1), Duration::from_secs(60));
/// assert_eq!(policy.retries(), 5);
/// // Without jitter: 1 s, 2 s, 4 s, … up to a minute.
/// let steady = policy.jitter(false);
/// assert_eq!(steady.delay_before(3), Duration::from_secs(4));
/// assert_eq!(steady.delay_before(10), Duration::from_secs(60));
/// // With it, a random part of that.
/// assert!(policy.delay_before(3) <= Duration::from_secs(4));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    retries: u32,
    first: Duration,
    max: Duration,
    jitter: bool,
    on_panic: bool,
}

impl RetryPolicy {
    /// Up to `retries` runs after the first, each at once.
    pub fn new(retries: u32) -> RetryPolicy {
        RetryPolicy {
            retries,
            first: Duration::ZERO,
            max: Duration::ZERO,
            jitter: true,
            on_panic: false,
        }
    }

    /// Waits `first` before the first retry, doubling for each one after, up to `max`.
    pub fn backoff(mut self, first: Duration, max: Duration) -> RetryPolicy {
        self.first = first;
        self.max = max.max(first);
        self
    }

    /// Whether each wait is a random part of the backoff (default true).
    pub fn jitter(mut self, jitter: bool) -> RetryPolicy {
        self.jitter = jitter;
        self
    }

    /// Whether a task that panics is retried too (default false: a panic is taken as the
    /// task's answer).
    pub fn on_panic(mut self, on_panic: bool) -> RetryPolicy {
        self.on_panic = on_panic;
        self
    }

    /// How many times a task may run again.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// Whether retries wait.
    pub(crate) fn waits(&self) -> bool {
        !self.first.is_zero()
    }

    /// Whether a panic is retried.
    pub(crate) fn retries_panics(&self) -> bool {
        self.on_panic
    }

    /// The wait before retry `n` (the first is 1), jitter included.
    pub fn delay_before(&self, n: u32) -> Duration {
        let doubled = self
            .first
            .checked_mul(1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX))
            .unwrap_or(self.max);
        let delay = doubled.min(self.max);
        if !self.jitter || delay.is_zero() {
            return delay;
        }
        // A uniform part of the delay, from none to all of it (std's hasher keys are random
        // per process, and differ each time).
        use std::hash::{BuildHasher, Hasher};
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let part = random as f64 / u64::MAX as f64;
        delay.mul_f64(part)
    }

    #[cfg(feature = "broker")]
    /// The parts that travel with a broker task: first and max in milliseconds.
    pub(crate) fn parts(&self) -> (u32, u64, u64, bool, bool) {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        (
            self.retries,
            ms(self.first),
            ms(self.max),
            self.jitter,
            self.on_panic,
        )
    }

    #[cfg(feature = "broker")]
    /// The policy [`parts`](Self::parts) describe.
    pub(crate) fn from_parts(
        (retries, first_ms, max_ms, jitter, on_panic): (u32, u64, u64, bool, bool),
    ) -> RetryPolicy {
        RetryPolicy {
            retries,
            first: Duration::from_millis(first_ms),
            max: Duration::from_millis(max_ms),
            jitter,
            on_panic,
        }
    }
}

/// When a task may start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Start {
    /// This long after it is sent (by the broker's clock).
    After(Duration),
    /// At this time (by the sender's clock).
    At(SystemTime),
}

/// What a task asks for beyond its function and arguments.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TaskOptions {
    /// Its own time limit (the pool's applies too: the shorter wins).
    pub(crate) timeout: Option<Duration>,
    pub(crate) priority: Priority,
    /// Not at once (a broker pool's task, kept by the broker until then).
    pub(crate) start: Option<Start>,
    /// Its own retries (the pool's otherwise).
    pub(crate) retry: Option<RetryPolicy>,
}

/// One task being set up, from [`Pool::task`]: its options, then
/// [`submit`](Self::submit).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use multiproc::{Pool, Priority};
///
/// fn double(x: u32) -> u32 {
///     x * 2
/// }
///
/// let pool = Pool::new(1)?;
/// let urgent = pool
///     .task(double, 21)
///     .priority(Priority::High)
///     .timeout(Duration::from_secs(10))
///     .submit()?;
/// assert_eq!(urgent.get()?, 42);
/// # Ok::<(), multiproc::Error>(())
/// ```
#[must_use = "a task is sent by `submit`"]
pub struct TaskCall<'p, F, A, R> {
    pool: &'p Pool,
    f: F,
    args: A,
    options: TaskOptions,
    result: PhantomData<fn() -> R>,
}

impl<F, A, R> std::fmt::Debug for TaskCall<'_, F, A, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskCall")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<'p, F, A, R> TaskCall<'p, F, A, R>
where
    F: Fn(A) -> R + Copy + 'static,
    A: Serialize + DeserializeOwned + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    pub(super) fn new(pool: &'p Pool, f: F, args: A) -> Self {
        TaskCall {
            pool,
            f,
            args,
            options: TaskOptions::default(),
            result: PhantomData,
        }
    }

    /// Its priority (default [`Priority::Normal`]).
    pub fn priority(mut self, priority: Priority) -> Self {
        self.options.priority = priority;
        self
    }

    /// Starts it no sooner than `delay` from now, by the broker's clock (Celery's
    /// `countdown`). A broker pool's only: the broker keeps the task until then, and it can
    /// be cancelled meanwhile (`TaskRecords::cancel`, feature `broker`).
    #[doc(alias = "countdown")]
    pub fn start_after(mut self, delay: Duration) -> Self {
        self.options.start = Some(Start::After(delay));
        self
    }

    /// Starts it no sooner than `time`, by this machine's clock (Celery's `eta`). A broker
    /// pool's only, as [`start_after`](Self::start_after).
    #[doc(alias = "eta")]
    pub fn start_at(mut self, time: SystemTime) -> Self {
        self.options.start = Some(Start::At(time));
        self
    }

    /// Its own retries, instead of the pool's. A local pool retries only at once, and only a
    /// task whose worker died or ran out of time.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.options.retry = Some(policy);
        self
    }

    /// Kills it if it runs longer (the pool's own limit applies too; the shorter wins).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.options.timeout = Some(timeout);
        self
    }

    /// Sends it; the result arrives in the returned [`AsyncResult`].
    ///
    /// # Errors
    /// As for [`Pool::apply_async`]; options the pool cannot honour (a delayed start or a
    /// waiting retry on a local pool) are refused with
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported); a broker that refuses a
    /// delayed task (out of memory, say) gives its error.
    pub fn submit(self) -> Result<AsyncResult<R>> {
        self.submit_with(|_: &R| {}, |_: &Error| {})
    }

    /// [`submit`](Self::submit), with callbacks as [`Pool::apply_async_with`]'s.
    ///
    /// # Errors
    /// As for [`submit`](Self::submit).
    pub fn submit_with(
        self,
        callback: impl FnOnce(&R) + Send + 'static,
        error_callback: impl FnOnce(&Error) + Send + 'static,
    ) -> Result<AsyncResult<R>> {
        self.pool
            .submit_one(self.f, self.args, callback, error_callback, self.options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_jitter_stays_within_it() {
        let p = RetryPolicy::new(10)
            .backoff(Duration::from_millis(100), Duration::from_secs(1))
            .jitter(false);
        let waits: Vec<u128> = (1..=6).map(|n| p.delay_before(n).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.delay_before(u32::MAX), Duration::from_secs(1));
        let jittered = p.jitter(true);
        let draws: Vec<Duration> = (0..64).map(|_| jittered.delay_before(4)).collect();
        assert!(draws.iter().all(|d| *d <= Duration::from_millis(800)));
        assert!(
            draws.iter().any(|d| *d != draws[0]),
            "jitter varies the waits"
        );
        assert!(!RetryPolicy::new(3).waits());
        #[cfg(feature = "broker")]
        assert_eq!(RetryPolicy::from_parts(p.parts()), p);
    }
}
