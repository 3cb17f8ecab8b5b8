//! How many tasks a broker worker holds at once in its local pool, waiting or running (those
//! that ended and wait to be written back keep no other worker from running them).
//!
//! About [`HOLD_FOR`] of work at the rate its processes get through tasks, between 2 and 64
//! per process. A worker of quick tasks takes them in large batches (a round trip, a system
//! call and a wake-up for many); a worker of long ones holds a task or two per process, so
//! that what it cannot start soon stays on the broker for another worker.
//!
//! The rate is measured only while every process has a task: what the processes can do, not
//! what they were given. A rate of all that ended would be bounded by the hold itself (a hold
//! that covers less than a round trip to the broker, to take more, starves the processes), and
//! a hold made from it would shrink with it. (Seen with `multiproc-bench
//! broker_pool_cpu_per_task`, no-op tasks, 2 processes: measured over all that ended, the hold
//! swung between 4 and 100 tasks from one 10 ms to the next; measured this way it stays at 128,
//! with the processes both busy about half of the time.)

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::sync::IgnorePoison;

/// How much work, at the rate its processes get through tasks, a worker holds.
const HOLD_FOR: Duration = Duration::from_millis(5);

/// How often the rate is measured again.
const MEASURE_EVERY: Duration = Duration::from_millis(10);

/// The least time every process must have had a task in a measurement for its rate to count.
const SATURATED_AT_LEAST: Duration = Duration::from_millis(1);

/// The fewest and most tasks held per process.
const LEAST_PER_PROCESS: usize = 2;
const MOST_PER_PROCESS: usize = 64;

/// The local pool sends each process an eighth of what is held for it (about 0.6 ms of
/// work), between 2 (the local pool's own: one running, the next ready) and 8. A process of
/// quick tasks then does not run dry between two wake-ups of the local pool's handler, and a
/// task that waits behind a long one on a process waits behind few.
const AHEAD_OF_HELD: usize = 8;
const LEAST_AHEAD: usize = 2;
const MOST_AHEAD: usize = 8;

/// How many tasks a worker may hold, how many it took and has not finished (their leases not
/// settled), and how many of those are in its local pool. The take loops wait here for room,
/// and the worker's stop for the last task.
pub(super) struct Hold {
    processes: usize,
    least: usize,
    cap: usize,
    counts: Mutex<Counts>,
    /// Signalled when the local pool has the room the take loops wait for, and when the last
    /// task is finished.
    room_or_idle: Condvar,
}

struct Counts {
    /// How many tasks may be in the local pool.
    most: usize,
    /// How many the local pool is told to send ahead to each process.
    ahead: usize,
    unfinished: usize,
    /// Waiting in the local pool or running there: what `most` bounds. The others ended and
    /// wait to be written back.
    in_local_pool: usize,
    /// Take loops asleep until `in_local_pool` falls to `wake_at` (the highest they wait
    /// for; 0 once they were woken).
    waiting: usize,
    wake_at: usize,
    /// Since when every process has had a task, if it has.
    saturated_since: Option<Instant>,
    /// In the measurement that began at `measured_at`: how long every process had a task,
    /// and how many tasks ended meanwhile.
    saturated_for: Duration,
    ended_saturated: usize,
    measured_at: Instant,
}

impl Hold {
    /// For a worker of `processes` processes: the fewest, until a rate is seen.
    pub(super) fn new(processes: usize) -> Hold {
        let processes = processes.max(1);
        let least = processes.saturating_mul(LEAST_PER_PROCESS);
        Hold {
            processes,
            least,
            cap: processes.saturating_mul(MOST_PER_PROCESS),
            counts: Mutex::new(Counts {
                most: least,
                ahead: LEAST_AHEAD,
                unfinished: 0,
                in_local_pool: 0,
                waiting: 0,
                wake_at: 0,
                saturated_since: None,
                saturated_for: Duration::ZERO,
                ended_saturated: 0,
                measured_at: Instant::now(),
            }),
            room_or_idle: Condvar::new(),
        }
    }

    /// Waits up to `patience` until the local pool holds fewer tasks than it may, and
    /// `extra`: at once if it is empty, else until a quarter of that is free, so that tasks
    /// are taken many to a read. How many may be taken then (0 if none).
    pub(super) fn wait_for_room(&self, extra: usize, patience: Duration) -> usize {
        // The most tasks in the local pool at which to take more.
        let take_at = |counts: &Counts, in_pool: usize| {
            let most = counts.most + extra;
            if in_pool == 0 {
                most
            } else {
                most.saturating_sub((most / 4).max(1))
            }
        };
        let until = Instant::now() + patience;
        let mut counts = self.counts.lock().ignore_poison();
        while counts.in_local_pool > take_at(&counts, counts.in_local_pool) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            // Said again before each sleep: a wake-up clears it.
            counts.waiting += 1;
            counts.wake_at = counts.wake_at.max(take_at(&counts, usize::MAX));
            counts = self
                .room_or_idle
                .wait_timeout(counts, left)
                .ignore_poison()
                .0;
            counts.waiting -= 1;
            if counts.waiting == 0 {
                counts.wake_at = 0;
            }
        }
        (counts.most + extra).saturating_sub(counts.in_local_pool)
    }

    /// Waits until every task taken is finished.
    pub(super) fn wait_until_idle(&self) {
        let counts = self.counts.lock().ignore_poison();
        let idle = self.room_or_idle.wait_while(counts, |c| c.unfinished > 0);
        drop(idle.ignore_poison());
    }

    /// Counts a task taken and started in the local pool.
    pub(super) fn took_one(&self) {
        self.took_one_at(Instant::now);
    }

    /// [`took_one`](Self::took_one), with the clock read only if it is needed.
    fn took_one_at(&self, now: impl FnOnce() -> Instant) {
        let mut counts = self.counts.lock().ignore_poison();
        counts.unfinished += 1;
        counts.in_local_pool += 1;
        if counts.in_local_pool == self.processes {
            counts.saturated_since = Some(now());
        }
    }

    /// Counts `n` tasks out of the local pool, and `finished` of those taken finished; wakes
    /// the take loops if that makes the room they wait for, or the wait for the last task.
    /// Whether that changed how many tasks the local pool should send ahead to each process
    /// ([`tasks_ahead`](Self::tasks_ahead)).
    #[must_use]
    pub(super) fn left_local_pool(&self, n: usize, finished: usize) -> bool {
        self.left_local_pool_at(n, finished, Instant::now())
    }

    fn left_local_pool_at(&self, n: usize, finished: usize, now: Instant) -> bool {
        let mut ahead = false;
        let mut counts = self.counts.lock().ignore_poison();
        debug_assert!(n <= counts.in_local_pool && finished <= counts.unfinished);
        if n > 0 {
            let in_pool = counts.in_local_pool.saturating_sub(n);
            if let Some(since) = counts.saturated_since {
                counts.ended_saturated += n;
                if in_pool < self.processes {
                    counts.saturated_for += now.saturating_duration_since(since);
                    counts.saturated_since = None;
                }
            }
            counts.in_local_pool = in_pool;
            ahead = self.measure(&mut counts, now);
        }
        counts.unfinished = counts.unfinished.saturating_sub(finished);
        let room = counts.waiting > 0 && counts.in_local_pool <= counts.wake_at;
        if room {
            // Woken once: the tasks that leave before the loops run notify no one again.
            counts.wake_at = 0;
        }
        if room || (finished > 0 && counts.unfinished == 0) {
            self.room_or_idle.notify_all();
        }
        ahead
    }

    /// Once a measurement is over: the rate while every process had a task, if long enough,
    /// sets how many may be held, and how many go ahead to each process (whether that
    /// changed).
    fn measure(&self, counts: &mut Counts, now: Instant) -> bool {
        if now.saturating_duration_since(counts.measured_at) < MEASURE_EVERY {
            return false;
        }
        let mut saturated = counts.saturated_for;
        if let Some(since) = counts.saturated_since {
            saturated += now.saturating_duration_since(since);
            counts.saturated_since = Some(now);
        }
        if saturated >= SATURATED_AT_LEAST {
            let per_second = counts.ended_saturated as f64 / saturated.as_secs_f64();
            let most = (per_second * HOLD_FOR.as_secs_f64()).ceil() as usize;
            counts.most = most.clamp(self.least, self.cap);
        }
        counts.saturated_for = Duration::ZERO;
        counts.ended_saturated = 0;
        counts.measured_at = now;
        let ahead = (counts.most / self.processes / AHEAD_OF_HELD).clamp(LEAST_AHEAD, MOST_AHEAD);
        std::mem::replace(&mut counts.ahead, ahead) != ahead
    }

    /// How many tasks the local pool should send ahead to each process.
    pub(super) fn tasks_ahead(&self) -> usize {
        self.counts.lock().ignore_poison().ahead
    }

    /// How many tasks are in the local pool, waiting or running.
    pub(super) fn in_local_pool(&self) -> usize {
        self.counts.lock().ignore_poison().in_local_pool
    }

    #[cfg(test)]
    fn most(&self) -> usize {
        self.counts.lock().unwrap().most
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Long enough that a test never sees it run out unless a wake-up was lost.
    const PATIENCE: Duration = Duration::from_secs(60);

    #[test]
    fn quick_tasks_are_held_many_at_a_time_and_long_ones_few() {
        let hold = Hold::new(2);
        assert_eq!(hold.most(), 4, "the fewest until a rate is seen");
        let start = hold.counts.lock().unwrap().measured_at;
        let at = |us: u64| start + Duration::from_micros(us);
        // How many the local pool was last told to send ahead to each process.
        let told = std::cell::Cell::new(None);
        let left = |now| {
            if hold.left_local_pool_at(1, 1, now) {
                told.set(Some(hold.tasks_ahead()));
            }
            hold.took_one_at(|| now);
        };
        // Both processes busy from 0 to 10 ms, 100 tasks ending: 10 000 a second, 50 in
        // 5 ms.
        for _ in 0..4 {
            hold.took_one_at(|| at(0));
        }
        for i in 0..99u64 {
            left(at(i * 100));
        }
        assert_eq!(hold.most(), 4, "not measured within the first 10 ms");
        left(at(10_000));
        assert_eq!(hold.most(), 50);
        // 25 held for each process: 3 go ahead to it.
        assert_eq!(told.get(), Some(3));
        // Far quicker: capped at 64 a process, 8 of them ahead.
        for i in 1..=1000u64 {
            left(at(10_000 + i * 10));
        }
        assert_eq!(hold.most(), 128);
        assert_eq!(told.get(), Some(8));
        // A task a second while both processes are busy: back to the fewest, and 2 ahead.
        left(at(1_020_000));
        left(at(2_020_000));
        assert_eq!(hold.most(), 4);
        assert_eq!(told.get(), Some(2));
    }

    #[test]
    fn a_rate_with_processes_idle_says_nothing() {
        let hold = Hold::new(2);
        let start = hold.counts.lock().unwrap().measured_at;
        let at = |us: u64| start + Duration::from_micros(us);
        // Quick tasks, one at a time (the broker gives no more): the processes could do far
        // more, so the hold does not follow this rate down (nor up).
        for i in 0..1000u64 {
            hold.took_one_at(|| at(i * 50));
            let _ = hold.left_local_pool_at(1, 1, at(i * 50 + 10));
        }
        assert_eq!(hold.most(), 4);
        // Both busy for a while, a task ending every 10 µs: a high rate, the hold grows.
        hold.took_one_at(|| at(60_000));
        hold.took_one_at(|| at(60_000));
        for i in 1..=1100u64 {
            let _ = hold.left_local_pool_at(1, 1, at(60_000 + i * 10));
            hold.took_one_at(|| at(60_000 + i * 10));
        }
        assert_eq!(hold.most(), 128);
    }

    #[test]
    fn room_is_given_at_once_when_there_is_some_and_only_what_there_is() {
        let hold = Hold::new(4);
        assert_eq!(hold.wait_for_room(0, PATIENCE), 8, "an empty pool");
        for _ in 0..6 {
            hold.took_one();
        }
        // 6 of 8 held: a quarter is free.
        assert_eq!(hold.wait_for_room(0, PATIENCE), 2);
        hold.took_one();
        // Without patience: what there is, even less than a quarter.
        assert_eq!(hold.wait_for_room(0, Duration::ZERO), 1);
        hold.took_one();
        assert_eq!(hold.wait_for_room(0, Duration::ZERO), 0);
        // High-priority tasks may come on top.
        assert_eq!(hold.wait_for_room(4, PATIENCE), 4);
        assert_eq!(hold.in_local_pool(), 8);
    }

    #[test]
    fn a_take_loop_waits_for_a_quarter_of_the_hold_and_tasks_being_written_leave_room() {
        let hold = std::sync::Arc::new(Hold::new(4));
        for _ in 0..8 {
            hold.took_one();
        }
        let waiter = {
            let hold = hold.clone();
            std::thread::spawn(move || {
                let t = Instant::now();
                (hold.wait_for_room(0, PATIENCE), t.elapsed())
            })
        };
        // One ends (to be written back) and one fails (finished at once): 6 in the pool.
        let _ = hold.left_local_pool(1, 0);
        let _ = hold.left_local_pool(1, 1);
        let (room, waited) = waiter.join().unwrap();
        assert!(waited < PATIENCE, "woken, not timed out");
        assert!(room >= 2, "{room}");
        assert_eq!(hold.in_local_pool(), 6);
        // The stop waits for the one being written too.
        let stop = {
            let hold = hold.clone();
            std::thread::spawn(move || hold.wait_until_idle())
        };
        let _ = hold.left_local_pool(6, 6);
        assert!(!stop.is_finished(), "one is still being written");
        let _ = hold.left_local_pool(0, 1);
        stop.join().unwrap();
        assert_eq!(hold.counts.lock().unwrap().unfinished, 0);
    }
}
