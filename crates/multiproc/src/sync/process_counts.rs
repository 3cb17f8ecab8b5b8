//! A table of per-process counts in shared memory, so that what a process holds (semaphore
//! slots, queue items waiting in its memory) is known by process and can be taken back when
//! it dies.
//!
//! # Layout
//!
//! | word            | meaning                                                    |
//! |-----------------|------------------------------------------------------------|
//! | `pid << 32 \| n` | process `pid` holds `n`                                    |
//! | `0`             | free                                                       |
//!
//! A process looks for its entry from the position its pid hashes to, taking the first that
//! is its own or free. It may end up with two entries (after collisions and frees), which is
//! harmless: what it holds is their sum.

use super::shim::{AtomicU64, Ordering, alive};

fn entry(pid: u32, n: u32) -> u64 {
    (u64::from(pid) << 32) | u64::from(n)
}

/// A view of a table of counts by process.
#[derive(Clone, Copy)]
pub(crate) struct ProcessCounts<'a>(pub(crate) &'a [AtomicU64]);

impl<'a> ProcessCounts<'a> {
    /// The entries in the order process `pid` looks through them.
    fn probe(&self, pid: u32) -> impl Iterator<Item = &'a AtomicU64> {
        let table = self.0;
        let n = table.len().max(1);
        // Fibonacci hashing spreads consecutive pids.
        let start = (u64::from(pid).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize % n;
        let start = start.min(table.len());
        table[start..].iter().chain(&table[..start])
    }

    /// One more for `pid`; false if every entry is another process's.
    pub(crate) fn add(&self, pid: u32) -> bool {
        for slot in self.probe(pid) {
            let mut h = slot.load(Ordering::Relaxed);
            while h == 0 || (h >> 32) as u32 == pid {
                match slot.compare_exchange(
                    h,
                    entry(pid, h as u32 + 1),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return true,
                    Err(now) => h = now,
                }
            }
        }
        false
    }

    /// One less for `pid` (nothing if it holds none).
    pub(crate) fn sub(&self, pid: u32) {
        for slot in self.probe(pid) {
            let mut h = slot.load(Ordering::Relaxed);
            while (h >> 32) as u32 == pid && h as u32 > 0 {
                let next = if h as u32 == 1 { 0 } else { h - 1 };
                match slot.compare_exchange(h, next, Ordering::AcqRel, Ordering::Relaxed) {
                    Ok(_) => return,
                    Err(now) => h = now,
                }
            }
        }
    }

    /// What every process holds, together.
    pub(crate) fn total(&self) -> u64 {
        self.0
            .iter()
            .map(|slot| u64::from(slot.load(Ordering::Acquire) as u32))
            .sum()
    }

    /// Frees the entries of processes that died, calling `on_dead(pid, n)` for each that
    /// held `n > 0`.
    #[cold]
    pub(crate) fn take_dead(&self, mut on_dead: impl FnMut(u32, u32)) {
        for slot in self.0 {
            let h = slot.load(Ordering::Acquire);
            let pid = (h >> 32) as u32;
            if pid == 0 || alive(pid) {
                continue;
            }
            if slot
                .compare_exchange(h, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
                && h as u32 > 0
            {
                on_dead(pid, h as u32);
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn counts_by_process_and_takes_back_the_dead() {
        let table: Vec<AtomicU64> = (0..4).map(|_| AtomicU64::new(0)).collect();
        let counts = ProcessCounts(&table);
        let me = std::process::id();
        assert!(counts.add(me) && counts.add(me) && counts.add(1));
        assert_eq!(counts.total(), 3);
        counts.sub(me);
        counts.sub(99); // holds nothing: no change
        assert_eq!(counts.total(), 2);
        // A pid that cannot be running (beyond pid_max).
        let dead = 0x7fff_fff0;
        assert!(counts.add(dead) && counts.add(dead));
        let mut taken = Vec::new();
        counts.take_dead(|pid, n| taken.push((pid, n)));
        assert_eq!(taken, [(dead, 2)]);
        assert_eq!(counts.total(), 2);
        // Full of others: refused.
        let full = [AtomicU64::new(entry(1, 1))];
        assert!(!ProcessCounts(&full).add(me));
    }
}
