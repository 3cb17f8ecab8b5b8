//! How many tasks a broker worker holds at once: running, waiting in its local pool, or ended
//! and not yet written back.
//!
//! About [`HOLD_FOR`] of work at the rate its pool has been getting through tasks, between 2
//! and 64 per process. A worker of quick tasks takes them in large batches (a round trip, a
//! system call and a wake-up for many); a worker of long ones holds a task or two per
//! process, so that what it cannot start soon stays on the broker for another worker. By
//! Little's law this settles where the tasks held wait about [`HOLD_FOR`] in the worker.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::sync::IgnorePoison;

/// How much work, at the rate seen, a worker holds.
const HOLD_FOR: Duration = Duration::from_millis(2);

/// How often the rate is measured again.
const MEASURE_EVERY: Duration = Duration::from_millis(10);

/// The fewest and most tasks held per process.
const LEAST_PER_PROCESS: usize = 2;
const MOST_PER_PROCESS: usize = 64;

/// How many tasks a worker holds (see the module's documentation).
pub(super) struct Hold {
    most: AtomicUsize,
    least: usize,
    cap: usize,
    /// Tasks ended since `.1`.
    counted: Mutex<(usize, Instant)>,
}

impl Hold {
    /// For a worker of `processes` processes: the fewest, until a rate is seen.
    pub(super) fn new(processes: usize) -> Hold {
        let least = processes.saturating_mul(LEAST_PER_PROCESS).max(1);
        Hold {
            most: AtomicUsize::new(least),
            least,
            cap: processes.saturating_mul(MOST_PER_PROCESS).max(least),
            counted: Mutex::new((0, Instant::now())),
        }
    }

    /// How many tasks to hold at most, now.
    pub(super) fn most(&self) -> usize {
        self.most.load(Ordering::Relaxed)
    }

    /// Counts `n` tasks that ended (written back).
    pub(super) fn ended(&self, n: usize) {
        self.ended_at(n, Instant::now());
    }

    fn ended_at(&self, n: usize, now: Instant) {
        let mut counted = self.counted.lock().ignore_poison();
        counted.0 += n;
        let over = now.saturating_duration_since(counted.1);
        if over < MEASURE_EVERY {
            return;
        }
        let per_second = counted.0 as f64 / over.as_secs_f64();
        let most = (per_second * HOLD_FOR.as_secs_f64()).ceil() as usize;
        self.most
            .store(most.clamp(self.least, self.cap), Ordering::Relaxed);
        *counted = (0, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_tasks_are_held_many_at_a_time_and_long_ones_few() {
        let hold = Hold::new(2);
        assert_eq!(hold.most(), 4, "the fewest until a rate is seen");
        let start = *hold.counted.lock().unwrap();
        let at = |ms: u64| start.1 + Duration::from_millis(ms);
        // Not measured within the first 10 ms.
        hold.ended_at(50, at(5));
        assert_eq!(hold.most(), 4);
        // 100 tasks in 10 ms: 10 000 a second, 20 in 2 ms.
        hold.ended_at(50, at(10));
        assert_eq!(hold.most(), 20);
        // Far quicker: capped at 64 a process.
        hold.ended_at(100_000, at(20));
        assert_eq!(hold.most(), 128);
        // One task in a second (after a pause, say): back to the fewest.
        hold.ended_at(1, at(1020));
        assert_eq!(hold.most(), 4);
    }
}
