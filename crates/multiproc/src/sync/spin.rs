//! Bounded spinning before a sleep, only where it pays.
//!
//! A wake-up through the kernel costs 15–65 µs on the machines we measure; a peer that is
//! running on another core usually answers within a microsecond. So a waiter first re-checks
//! its condition for a short while, and only then sleeps (on a futex, in `poll`). Idle waiters
//! therefore cost nothing.
//!
//! Spinning pays only while the peer runs on *another* CPU. When the machine has more runnable
//! processes than cores, the peer is often waiting for a CPU, or for ours: then every
//! microsecond we spin is one it cannot run, and a spin that "succeeds" does so only because
//! the scheduler took our CPU away and gave it to the peer. Measured with `perf sched
//! timehist` (two busy processes beside a pipe ping-pong on two cores): both ends on one CPU,
//! each spinning out its time slice (~100 µs) before the other could answer, 200 µs a round
//! trip instead of 8.
//!
//! So each thread keeps a [`Governor`] that learns from how its spins end:
//! - **preempted**: a gap in our own clock reads shows the scheduler took the CPU away (the
//!   peer needs ours, or we need one): don't spin for a while (250 µs, doubled on each repeat
//!   up to 64 ms);
//! - **ran out on a crowded machine**, [`CROWDED_MISSES_BEFORE_REST`] times in a row: more
//!   tasks are runnable than there are CPUs (the kernel's count in `/proc/loadavg`, looked at
//!   once per [`CROWD_CHECK`]) and nothing came: the peer is most likely waiting for a CPU,
//!   often ours, and the scheduler let us finish our spin first. Rest as after a preemption. (Measured: 20 µs spins on each side of a
//!   pipe ping-pong beside one busy process made 45 µs round trips, where sleeping at once
//!   made 5–10.)
//! - **answered**, or **ran out** on a machine with a CPU to spare: spinning may pay; the
//!   next rest is short again. A spin that runs out there is a peer that was asleep or slow,
//!   and spinning again is what brings two peers back to answering each other at once (a
//!   rule that rested after several misses in a row left two resting peers waking each other
//!   through the kernel for ever). A crowd of spinners that answer each other (a pool's
//!   threads and workers) keeps spinning: what they answer is worth the CPU.
//!
//! An answer after a preemption counts as a preemption. On an idle machine nothing changes:
//! spins are answered (or the peer is slow, which costs a spin now and then).

use std::cell::Cell;
use std::time::{Duration, Instant};

use super::shim::spin_hint;

/// How long a spin lasts at most.
const BUDGET: Duration = Duration::from_micros(20);

/// A gap this long between two of our own clock reads means we were not running.
const PREEMPTED_GAP: Duration = Duration::from_micros(50);

/// Spins in a row that run out on a crowded machine before the thread rests.
const CROWDED_MISSES_BEFORE_REST: u32 = 3;

/// How often a thread looks whether the machine is crowded.
const CROWD_CHECK: Duration = Duration::from_micros(500);

/// How long a thread rests from spinning after a preemption; doubled on each repeat.
const FIRST_REST: Duration = Duration::from_micros(250);
const MAX_REST: Duration = Duration::from_millis(64);

/// Pauses before the second look of [`spin_until_batching`].
const BATCHING_FIRST_PAUSES: u32 = 32;
/// The most pauses between two looks (about a microsecond).
const MAX_PAUSES: u32 = 64;
/// The same for locks.
const MAX_PAUSES_PATIENT: u32 = 256;
/// The same for looks that are system calls.
const MAX_PAUSES_POLLING: u32 = 4;

/// What a thread has learned about spinning.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Governor {
    /// No spinning before this.
    rest_until: Option<Instant>,
    /// The next rest.
    next_rest: Duration,
    /// When the machine was last found crowded or not, and what was found.
    crowd_checked: Option<(Instant, bool)>,
    /// Spins in a row that ran out on a crowded machine.
    crowded_misses: u32,
}

/// How a spin ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SpinOutcome {
    Answered,
    RanOut,
    Preempted,
}

impl Governor {
    const fn new() -> Governor {
        Governor {
            rest_until: None,
            next_rest: FIRST_REST,
            crowd_checked: None,
            crowded_misses: 0,
        }
    }

    /// Whether to spin now.
    fn may_spin(&mut self, now: Instant) -> bool {
        match self.rest_until {
            Some(until) if now < until => false,
            Some(_) => {
                self.rest_until = None;
                true
            }
            None => true,
        }
    }

    /// Whether more tasks are runnable than there are CPUs (as last looked, if lately).
    fn crowded(&mut self, now: Instant, look: impl FnOnce() -> bool) -> bool {
        if let Some((at, crowded)) = self.crowd_checked
            && now.duration_since(at) < CROWD_CHECK
        {
            return crowded;
        }
        let crowded = look();
        self.crowd_checked = Some((now, crowded));
        crowded
    }

    /// Learns from a spin that ended at `now`; `look` says whether the machine is crowded,
    /// when asked.
    fn learn(&mut self, outcome: SpinOutcome, now: Instant, look: impl FnOnce() -> bool) {
        match outcome {
            SpinOutcome::Answered => {
                self.next_rest = FIRST_REST;
                self.crowded_misses = 0;
            }
            SpinOutcome::RanOut if self.crowded(now, look) => {
                self.crowded_misses += 1;
                if self.crowded_misses >= CROWDED_MISSES_BEFORE_REST {
                    self.rest(now);
                }
            }
            SpinOutcome::RanOut => {
                self.next_rest = FIRST_REST;
                self.crowded_misses = 0;
            }
            SpinOutcome::Preempted => self.rest(now),
        }
    }

    fn rest(&mut self, now: Instant) {
        self.crowded_misses = 0;
        self.rest_until = now.checked_add(self.next_rest);
        self.next_rest = (self.next_rest * 2).min(MAX_REST);
    }
}

/// Whether the machine has more runnable tasks than CPUs (we are one of them).
#[cfg(not(loom))]
fn machine_crowded() -> bool {
    static CPUS: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let cpus = *CPUS.get_or_init(crate::platform::online_cpus);
    crate::platform::runnable_tasks().is_some_and(|running| running > cpus)
}

#[cfg(loom)]
fn machine_crowded() -> bool {
    false
}

thread_local! {
    static GOVERNOR: Cell<Governor> = const { Cell::new(Governor::new()) };
}

/// Spins until `ready()` holds or the budget is spent; true if it became ready.
#[inline]
pub(crate) fn spin_until(ready: impl FnMut() -> bool) -> bool {
    spin_until_with(1, MAX_PAUSES, ready)
}

/// [`spin_until`] that waits a little before its second look: for a queue consumer (or
/// producer) whose peer is mid-stream, so that the peer can add several frames while it owns
/// the cache lines, instead of paying a miss per frame. Costs about half a microsecond of
/// latency; doubles throughput when the peer is busy.
#[inline]
pub(crate) fn spin_until_batching(ready: impl FnMut() -> bool) -> bool {
    spin_until_with(BATCHING_FIRST_PAUSES, MAX_PAUSES, ready)
}

/// [`spin_until`] for a look that is itself a system call (a non-blocking read of a
/// socket): hardly any pause between looks, since the call takes longer than a cache miss.
#[inline]
pub(crate) fn spin_until_polling(ready: impl FnMut() -> bool) -> bool {
    spin_until_with(1, MAX_PAUSES_POLLING, ready)
}

/// [`spin_until`] with a longer back-off: for a lock, where looking less often leaves the
/// holder's cache line alone and lets it finish (and even re-take the lock) without misses.
#[inline]
pub(crate) fn spin_until_patient(ready: impl FnMut() -> bool) -> bool {
    spin_until_with(1, MAX_PAUSES_PATIENT, ready)
}

#[inline]
fn spin_until_with(first_pauses: u32, max_pauses: u32, mut ready: impl FnMut() -> bool) -> bool {
    if cfg!(loom) {
        return ready();
    }
    let mut governor = GOVERNOR.with(Cell::get);
    let start = Instant::now();
    if !governor.may_spin(start) {
        GOVERNOR.with(|g| g.set(governor));
        return ready();
    }
    let (answered, outcome, end) = spin(start, BUDGET, first_pauses, max_pauses, &mut ready);
    governor.learn(outcome, end, machine_crowded);
    GOVERNOR.with(|g| g.set(governor));
    answered
}

/// One spin of at most `budget` from `start`: whether `ready()` came true, how the spin
/// ended, and when.
fn spin(
    start: Instant,
    budget: Duration,
    first_pauses: u32,
    max_pauses: u32,
    ready: &mut impl FnMut() -> bool,
) -> (bool, SpinOutcome, Instant) {
    let mut last = start;
    let mut pauses = first_pauses;
    loop {
        if ready() {
            return (true, SpinOutcome::Answered, last);
        }
        // Back off between looks: each look pulls the watched cache line away from the
        // writer, who then pays a miss to write it again.
        for _ in 0..pauses {
            spin_hint();
        }
        pauses = (pauses * 2).min(max_pauses);
        let now = Instant::now();
        if now.duration_since(last) >= PREEMPTED_GAP {
            // Off the CPU for a while: whatever came meanwhile came because we were not
            // spinning. Look once more (it may be there) and stop.
            return (ready(), SpinOutcome::Preempted, now);
        }
        last = now;
        if now.duration_since(start) >= budget {
            return (false, SpinOutcome::RanOut, now);
        }
    }
}

/// What the calling thread has learned, for tests.
#[cfg(all(test, not(loom)))]
fn governor() -> Governor {
    GOVERNOR.with(Cell::get)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_spin_that_runs_out_rests_only_on_a_crowded_machine() {
        let t0 = Instant::now();
        let mut g = Governor::new();
        // A CPU to spare: misses never stop the spinning.
        for i in 0..100 {
            g.learn(SpinOutcome::RanOut, t0 + CROWD_CHECK * i, || false);
            assert!(g.may_spin(t0 + CROWD_CHECK * i));
        }
        // Crowded: a few misses in a row rest it.
        let t1 = t0 + CROWD_CHECK * 200;
        let mut looks = 0;
        for _ in 0..CROWDED_MISSES_BEFORE_REST {
            assert!(g.may_spin(t1));
            g.learn(SpinOutcome::RanOut, t1, || {
                looks += 1;
                true
            });
        }
        assert!(!g.may_spin(t1));
        assert!(g.may_spin(t1 + FIRST_REST));
        assert_eq!(looks, 1, "looked at once per CROWD_CHECK");
        // An answer between misses starts the count again.
        for _ in 1..CROWDED_MISSES_BEFORE_REST {
            g.learn(SpinOutcome::RanOut, t1, || true);
        }
        g.learn(SpinOutcome::Answered, t1, || true);
        g.learn(SpinOutcome::RanOut, t1, || true);
        assert!(g.may_spin(t1 + FIRST_REST));
        // Answers keep a crowd spinning.
        let mut g = Governor::new();
        g.learn(SpinOutcome::Answered, t1, || true);
        assert!(g.may_spin(t1));
    }

    #[test]
    fn preemptions_rest_the_spinning_and_a_quiet_spin_shortens_the_next_rest() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut g = Governor::new();
        assert!(g.may_spin(t0));
        g.learn(SpinOutcome::Preempted, t0, || false);
        assert!(!g.may_spin(t0 + FIRST_REST / 2));
        assert!(g.may_spin(t0 + FIRST_REST));
        // A second preemption with nothing quiet between: twice the rest.
        g.learn(SpinOutcome::Preempted, ms(10), || false);
        assert!(!g.may_spin(ms(10) + FIRST_REST * 3 / 2));
        assert!(g.may_spin(ms(10) + FIRST_REST * 2));
        // An answer, or a spin that ran out on its own CPU, resets it.
        for quiet in [SpinOutcome::Answered, SpinOutcome::RanOut] {
            g.learn(SpinOutcome::Preempted, ms(20), || false);
            assert!(g.may_spin(ms(20) + FIRST_REST * 4));
            g.learn(quiet, ms(30), || false);
            g.learn(SpinOutcome::Preempted, ms(30), || false);
            assert!(g.may_spin(ms(30) + FIRST_REST), "{quiet:?}");
        }
        // The rest never grows past its bound.
        for i in 0..20 {
            g.learn(SpinOutcome::Preempted, ms(100 * i), || false);
        }
        assert!(g.may_spin(ms(1900) + MAX_REST));
    }

    #[test]
    // The sleeps stand for the time the scheduler keeps a spinner off its CPU; nothing waits
    // on them.
    #[allow(clippy::disallowed_methods)]
    fn a_spin_that_loses_its_cpu_says_so() {
        // A `ready` that sleeps past the gap stands for a preemption.
        let mut calls = 0;
        let (got, outcome, _) = spin(Instant::now(), BUDGET, 1, MAX_PAUSES, &mut || {
            calls += 1;
            if calls == 2 {
                std::thread::sleep(PREEMPTED_GAP * 2);
            }
            false
        });
        assert_eq!((got, outcome), (false, SpinOutcome::Preempted));
        // Nothing comes: it runs out (or, on a loaded machine, is preempted first).
        let (got, outcome, _) = spin(Instant::now(), BUDGET, 1, MAX_PAUSES, &mut || false);
        assert!(!got && outcome != SpinOutcome::Answered, "{outcome:?}");
        let (got, outcome, _) = spin(Instant::now(), BUDGET, 1, MAX_PAUSES, &mut || true);
        assert_eq!((got, outcome), (true, SpinOutcome::Answered));
        // Through the thread's governor (on a machine taken as not crowded): a preemption
        // stops the next spins.
        GOVERNOR.with(|g| {
            let mut quiet = g.get();
            quiet.crowd_checked = Some((Instant::now() + Duration::from_secs(3600), false));
            g.set(quiet);
        });
        let mut slept = false;
        spin_until(|| {
            if !slept {
                slept = true;
                std::thread::sleep(PREEMPTED_GAP * 2);
            }
            false
        });
        assert!(governor().rest_until.is_some());
        // Resting (for long enough that the test cannot outlast it): no spin.
        GOVERNOR.with(|g| {
            let mut resting = g.get();
            resting.rest_until = Instant::now().checked_add(Duration::from_secs(3600));
            g.set(resting);
        });
        let mut looks = 0;
        assert!(!spin_until(|| {
            looks += 1;
            false
        }));
        assert_eq!(looks, 1, "resting: one look, no spin");
    }
}
