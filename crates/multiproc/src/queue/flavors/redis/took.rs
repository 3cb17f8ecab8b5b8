//! How long a handle's items took, from being handed out to being done, counted in the
//! buckets of [`DURATION_BUCKETS`] and added to the queue's settings hash (`PN:config`) by the
//! same round trip as the acknowledgements that finish them: every consumer of a joinable
//! queue reports its items' durations, at no cost of its own.

use std::collections::HashMap;
use std::time::Duration;

use crate::durations::{DURATION_BUCKETS, duration_bucket};

/// The field of `PN:config` counting the items of bucket `i` (of [`DURATION_BUCKETS`], then
/// `+Inf`).
fn bucket_field(i: usize) -> String {
    format!("duration_bucket_{i}")
}

/// The field of `PN:config` with the sum of the durations, in microseconds.
const SUM_FIELD: &str = "duration_sum_us";

/// Every field of `PN:config` the durations are kept in.
pub(super) fn fields() -> impl Iterator<Item = String> {
    (0..=DURATION_BUCKETS.len())
        .map(bucket_field)
        .chain([SUM_FIELD.to_string()])
}

/// Entry ids a handle finished and has not acknowledged yet, and how long they took.
#[derive(Default)]
pub(super) struct AckList {
    pub(super) ids: Vec<String>,
    pub(super) took: Took,
}

impl AckList {
    pub(super) fn is_empty(&self) -> bool {
        self.ids.is_empty() && self.took.count == 0
    }

    /// Takes back `other` (acknowledgements that could not be sent).
    pub(super) fn merge(&mut self, other: AckList) {
        self.ids.extend(other.ids);
        for (mine, theirs) in self.took.counts.iter_mut().zip(other.took.counts) {
            *mine += theirs;
        }
        self.took.count += other.took.count;
        self.took.sum_us += other.took.sum_us;
    }
}

/// Durations, per bucket (not cumulative).
#[derive(Default)]
pub(super) struct Took {
    counts: [u64; DURATION_BUCKETS.len() + 1],
    count: u64,
    sum_us: u64,
}

impl Took {
    pub(super) fn observe(&mut self, d: Duration) {
        self.counts[duration_bucket(d)] += 1;
        self.count += 1;
        self.sum_us += u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    }

    /// Adds to `pipe` what adds these durations to the queue's settings hash `config`.
    pub(super) fn add_to(&self, pipe: &mut redis::Pipeline, config: &str) {
        if self.count == 0 {
            return;
        }
        for (i, &n) in self.counts.iter().enumerate().filter(|(_, n)| **n > 0) {
            pipe.cmd("HINCRBY")
                .arg(config)
                .arg(bucket_field(i))
                .arg(n)
                .ignore();
        }
        pipe.cmd("HINCRBY")
            .arg(config)
            .arg(SUM_FIELD)
            .arg(self.sum_us)
            .ignore();
    }
}

/// The durations in a queue's settings hash: how many items took at most each bound of
/// [`DURATION_BUCKETS`], then all of them (`+Inf`), and their sum; no counts if none was
/// reported.
pub(super) fn read(config: &HashMap<String, String>) -> (Vec<u64>, Duration) {
    let count = |i: usize| {
        config
            .get(&bucket_field(i))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let mut total = 0;
    let cumulative: Vec<u64> = (0..=DURATION_BUCKETS.len())
        .map(|i| {
            total += count(i);
            total
        })
        .collect();
    let sum_us = config
        .get(SUM_FIELD)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    match total {
        0 => (Vec::new(), Duration::ZERO),
        _ => (cumulative, Duration::from_micros(sum_us)),
    }
}
