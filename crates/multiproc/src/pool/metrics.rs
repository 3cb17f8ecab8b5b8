//! What a pool has done and holds, for a service to export ([`Pool::metrics`](super::Pool::metrics)):
//! counters kept with atomics by the supervisor, the durations of its tasks in a histogram of
//! fixed buckets, and Prometheus' text format for both.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use crate::durations::DURATION_BUCKETS;
use crate::durations::duration_bucket;

/// Durations counted in the buckets of [`DURATION_BUCKETS`], from any thread.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// let h = multiproc::DurationHistogram::new();
/// h.observe(Duration::from_millis(3));
/// h.observe(Duration::from_secs(2));
/// assert_eq!(h.count(), 2);
/// let mut text = String::new();
/// h.write_prometheus(&mut text, "job_seconds", "How long jobs took.", &[("queue", "q")]);
/// assert!(text.contains("job_seconds_bucket{queue=\"q\",le=\"0.005\"} 1\n"));
/// assert!(text.contains("job_seconds_bucket{queue=\"q\",le=\"+Inf\"} 2\n"));
/// ```
#[derive(Debug, Default)]
pub struct DurationHistogram {
    /// Per bucket (not cumulative), the last for `+Inf`.
    counts: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl DurationHistogram {
    /// An empty histogram.
    pub fn new() -> DurationHistogram {
        DurationHistogram::default()
    }

    /// Counts one duration.
    pub fn observe(&self, d: Duration) {
        self.counts[duration_bucket(d)].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// How many durations were counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Their sum.
    pub fn sum(&self) -> Duration {
        Duration::from_nanos(self.sum_ns.load(Ordering::Relaxed))
    }

    /// How many were at most each bound of [`DURATION_BUCKETS`], then all of them (`+Inf`).
    pub fn cumulative(&self) -> Vec<u64> {
        let mut total = 0;
        self.counts
            .iter()
            .map(|c| {
                total += c.load(Ordering::Relaxed);
                total
            })
            .collect()
    }

    /// Writes it to `out` in Prometheus' text format as the histogram `name` (its
    /// `_bucket`, `_sum` and `_count` samples), with `labels` on every sample.
    pub fn write_prometheus(
        &self,
        out: &mut String,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
    ) {
        write_histogram(out, (name, help), labels, &self.cumulative(), self.sum());
    }
}

/// What a pool has done so far and holds now ([`Pool::metrics`](super::Pool::metrics)).
///
/// A task here is what the pool sends a worker at once: one `apply`, or one chunk of a `map`.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct PoolMetrics {
    /// Tasks submitted.
    pub submitted: u64,
    /// Tasks whose result came back (every item of a chunk, for a `map`).
    pub succeeded: u64,
    /// Tasks that failed: a panic in one of its items, a worker lost under it, a timeout,
    /// a refusal.
    pub failed: u64,
    /// Workers started again after one died or was killed.
    pub workers_replaced: u64,
    /// Tasks waiting for a worker.
    pub waiting: usize,
    /// Tasks sent to a worker and not yet answered.
    pub running: usize,
    /// Workers running.
    pub workers: usize,
    /// How many tasks took at most each bound of [`DURATION_BUCKETS`] from being sent to a
    /// worker to their result, then all of them (`+Inf`).
    pub durations: Vec<u64>,
    /// The sum of those durations.
    pub duration_sum: Duration,
}

impl PoolMetrics {
    /// The figures in Prometheus' text format, as `multiproc_pool_*` families with `labels`
    /// on every sample (a service exporting several pools names each with one).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = multiproc::Pool::new(1)?;
    /// fn double(x: u32) -> u32 { x * 2 }
    /// pool.map(double, 0..10)?;
    /// let text = pool.metrics().to_prometheus(&[("pool", "doubler")]);
    /// assert!(text.contains("multiproc_pool_workers{pool=\"doubler\"} 1\n"));
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn to_prometheus(&self, labels: &[(&str, &str)]) -> String {
        let mut out = String::new();
        let set = label_set(labels);
        let figures: [(&str, &str, &str, f64); 7] = [
            (
                "multiproc_pool_tasks_submitted_total",
                "counter",
                "Tasks submitted.",
                self.submitted as f64,
            ),
            (
                "multiproc_pool_tasks_succeeded_total",
                "counter",
                "Tasks whose result came back.",
                self.succeeded as f64,
            ),
            (
                "multiproc_pool_tasks_failed_total",
                "counter",
                "Tasks that failed (panic, lost worker, timeout).",
                self.failed as f64,
            ),
            (
                "multiproc_pool_workers_replaced_total",
                "counter",
                "Workers started again after one died or was killed.",
                self.workers_replaced as f64,
            ),
            (
                "multiproc_pool_tasks_waiting",
                "gauge",
                "Tasks waiting for a worker.",
                self.waiting as f64,
            ),
            (
                "multiproc_pool_tasks_running",
                "gauge",
                "Tasks sent to a worker and not yet answered.",
                self.running as f64,
            ),
            (
                "multiproc_pool_workers",
                "gauge",
                "Workers running.",
                self.workers as f64,
            ),
        ];
        for (name, kind, help, value) in figures {
            family(&mut out, name, kind, help);
            let _ = writeln!(out, "{name}{set} {value}");
        }
        let name = (
            "multiproc_pool_task_duration_seconds",
            "Tasks' time from being sent to a worker to their result.",
        );
        write_histogram(&mut out, name, labels, &self.durations, self.duration_sum);
        out
    }
}

/// The counters a supervisor keeps.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) submitted: AtomicU64,
    pub(crate) succeeded: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) workers_replaced: AtomicU64,
    pub(crate) durations: DurationHistogram,
}

/// Writes the histogram `name` (its `_bucket`, `_sum` and `_count` samples): `cumulative`
/// counts for the bounds of [`DURATION_BUCKETS`] and `+Inf`.
fn write_histogram(
    out: &mut String,
    (name, help): (&str, &str),
    labels: &[(&str, &str)],
    cumulative: &[u64],
    sum: Duration,
) {
    family(out, name, "histogram", help);
    let bounds = DURATION_BUCKETS
        .iter()
        .map(|b| b.to_string())
        .chain(["+Inf".to_string()]);
    for (le, count) in bounds.zip(cumulative) {
        let mut with_le = labels.to_vec();
        with_le.push(("le", &le));
        let _ = writeln!(out, "{name}_bucket{} {count}", label_set(&with_le));
    }
    let set = label_set(labels);
    let _ = writeln!(out, "{name}_sum{set} {}", sum.as_secs_f64());
    let _ = writeln!(out, "{name}_count{set} {}", cumulative.last().unwrap_or(&0));
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// `{k="v",…}` with the values escaped as Prometheus wants, or nothing without labels.
fn label_set(labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let pairs: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{{{}}}", pairs.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_fall_in_their_buckets_and_labels_are_escaped() {
        let h = DurationHistogram::new();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(100));
        let c = h.cumulative();
        assert_eq!(c[0], 2, "0.0001 takes 50 µs and 100 µs");
        assert_eq!(c[DURATION_BUCKETS.len() - 1], 3);
        assert_eq!(*c.last().unwrap(), 4);
        assert_eq!(label_set(&[("q", "a\"b\\c\nd")]), "{q=\"a\\\"b\\\\c\\nd\"}");
        assert_eq!(label_set(&[]), "");
    }
}
