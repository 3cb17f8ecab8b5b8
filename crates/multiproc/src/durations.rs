//! The buckets durations are counted in, wherever they are: a pool's
//! [`DurationHistogram`](crate::DurationHistogram), a queue's counts on the broker.

use std::time::Duration;

/// The upper bounds, in seconds, of the buckets durations are counted in (a
/// [`DurationHistogram`](crate::DurationHistogram)'s, a broker queue's): a last one, `+Inf`,
/// takes the rest. 100 µs to a minute.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 10.0, 60.0,
];

/// The bucket of [`DURATION_BUCKETS`] that `d` falls in (the last, `+Inf`, past them all).
pub(crate) fn duration_bucket(d: Duration) -> usize {
    let s = d.as_secs_f64();
    DURATION_BUCKETS
        .iter()
        .position(|&le| s <= le)
        .unwrap_or(DURATION_BUCKETS.len())
}
