//! `multiproc worker --metrics-bind ADDR`: the worker's own figures (tasks done and failed,
//! how long each took, whether one runs now) in Prometheus' text format at `/metrics`, served
//! by threads of their own ([`crate::http`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use multiproc::DurationHistogram;

use crate::http::{Reply, Server};

/// What a worker has done; served at `/metrics` if asked for.
pub(crate) struct WorkerFigures {
    queue: String,
    done: AtomicU64,
    failed: AtomicU64,
    durations: DurationHistogram,
    /// When the task running now started.
    busy_since: Mutex<Option<Instant>>,
}

impl WorkerFigures {
    pub(crate) fn new(queue: &str) -> Arc<WorkerFigures> {
        Arc::new(WorkerFigures {
            queue: queue.to_string(),
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            durations: DurationHistogram::new(),
            busy_since: Mutex::new(None),
        })
    }

    /// Serves `/metrics` at `addr` on a thread of its own, for as long as the worker runs.
    pub(crate) fn serve(self: &Arc<Self>, addr: SocketAddr) -> anyhow::Result<()> {
        let server = Server::bind(addr)
            .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))?;
        let figures = self.clone();
        std::thread::Builder::new()
            .name("multiproc-metrics".into())
            .spawn(move || {
                server.serve(move |request| match request.target.as_str() {
                    "/metrics" => Reply::new(200, figures.render())
                        .with_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8"),
                    _ => Reply::new(404, "not found\n"),
                });
            })?;
        Ok(())
    }

    /// A task starts.
    pub(crate) fn started(&self) {
        *self.busy_since.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    /// The task running ends, failed or not.
    pub(crate) fn ended(&self, failed: bool) {
        let since = self
            .busy_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(since) = since {
            self.durations.observe(since.elapsed());
        }
        let counter = if failed { &self.failed } else { &self.done };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self) -> String {
        let queue = self
            .queue
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let busy = self
            .busy_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        let mut out = String::new();
        let mut figure = |name: &str, kind: &str, help: &str, value: u64| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{queue=\"{queue}\"}} {value}\n"
            ));
        };
        figure(
            "multiproc_worker_tasks_done_total",
            "counter",
            "Tasks this worker did.",
            self.done.load(Ordering::Relaxed),
        );
        figure(
            "multiproc_worker_tasks_failed_total",
            "counter",
            "Tasks that failed on this worker.",
            self.failed.load(Ordering::Relaxed),
        );
        figure(
            "multiproc_worker_busy",
            "gauge",
            "Whether a task runs on this worker now.",
            u64::from(busy),
        );
        self.durations.write_prometheus(
            &mut out,
            "multiproc_worker_task_duration_seconds",
            "How long this worker's tasks took.",
            &[("queue", &self.queue)],
        );
        out
    }
}
