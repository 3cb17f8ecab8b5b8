//! How the supervisor reaches its workers: how tasks go out ([`WorkerLink::try_send`]), how
//! reports come back ([`Transport::wait_report`], [`Transport::try_report`]) and how a worker's
//! death is seen ([`WorkerLink::is_alive`], [`WorkerLink::join`]).
//!
//! The supervisor knows nothing else of where its workers are. [`LocalTransport`] is the local
//! pool's: worker processes of this machine, each with a shared-memory task queue of its own,
//! all reporting on one shared-memory result queue. A pool whose workers sit on other machines
//! is a second implementation of these two traits.

use std::time::Duration;

use super::options::TaskOptions;
use super::task::TaskTargetId;
use super::worker::{FromWorker, FromWorkerRef, TaskBytes, ToWorker, WorkerArgs, worker_main};
use crate::error::{Error, Result};
use crate::process::{Process, StartMethod};
use crate::queue::ShmQueueOf;

/// Where a pool's workers are, and how their reports come back.
pub(crate) trait Transport: Send + Sync {
    /// Starts the worker for `slot` (a replacement takes the slot of the one it replaces).
    fn start_worker(&self, slot: u32) -> Result<Box<dyn WorkerLink>>;

    /// Waits up to `timeout` for one report and hands it to `on_report`; whether one came.
    /// It must not keep other threads from taking reports with
    /// [`try_report`](Self::try_report) meanwhile (a pool's waiters take their own results
    /// while its handler thread waits here), and should not spin: the waiter is the pool's
    /// handler, and the CPU is the workers'.
    fn wait_report(&self, timeout: Duration, on_report: &mut dyn FnMut(FromWorkerRef<'_>)) -> bool;

    /// Takes one report if there is one now and hands it to `on_report`; whether it did.
    fn try_report(&self, on_report: &mut dyn FnMut(FromWorkerRef<'_>)) -> bool;

    /// Whether a report may come within a waiter's spin: the workers are on this machine.
    fn reports_are_near(&self) -> bool {
        true
    }

    /// How many tasks are sent ahead to one worker: one running and the next ready, for a
    /// worker process.
    fn tasks_ahead(&self) -> usize {
        2
    }

    /// The id by which other processes know the pool's task `id`, if they can (a broker
    /// pool's tasks have records there).
    fn task_key(&self, _id: u64) -> Option<String> {
        None
    }

    /// Whether its workers can run `target` (a broker pool's run only registered functions).
    fn check_target(&self, _target: TaskTargetId) -> Result<()> {
        Ok(())
    }

    /// Whether it can honour a task's `options`. Local workers start a task when one is
    /// free, and retry one only at once, when its worker died or it ran out of time.
    fn check_options(&self, options: &TaskOptions) -> Result<()> {
        let refuse = |what: &str| {
            Err(Error::Unsupported {
                what: "pool".into(),
                operation: "a task option",
                detail: format!("{what} needs a broker pool (Pool::broker)"),
            })
        };
        if options.start.is_some() {
            return refuse("a task that starts later");
        }
        match options.retry {
            Some(r) if r.waits() => refuse("a retry that waits (backoff)"),
            Some(r) if r.retries_panics() => refuse("retrying a task that panicked"),
            _ => Ok(()),
        }
    }

    /// Sends a task that starts later, holding none of its workers' room (see
    /// [`check_options`](Self::check_options)).
    fn send_later(&self, _task: &ToWorker) -> Result<()> {
        self.check_options(&TaskOptions {
            start: Some(super::options::Start::After(Duration::ZERO)),
            ..TaskOptions::default()
        })
    }

    /// Cancels task `id`, sent and not yet started, if it can; whether it did. Its report (a
    /// failure of kind `Cancelled`) follows.
    fn cancel(&self, _id: u64) -> bool {
        false
    }
}

/// One worker, as the supervisor sees it.
pub(crate) trait WorkerLink: Send {
    /// For messages (`PoolWorker-3`).
    fn name(&self) -> &str;

    fn pid(&self) -> i32;

    /// Sends `message` if the worker's inbox has room now; whether it did.
    fn try_send(&self, message: &ToWorker) -> bool;

    fn is_alive(&self) -> bool;

    /// Kills the worker (its task ran too long, or the pool is terminated).
    fn kill(&self);

    /// Waits until the worker has ended: `Ok` for a clean exit, how it died otherwise.
    fn join(&mut self) -> Result<()>;

    /// Like [`join`](Self::join), waiting at most `timeout` (then an error of kind `Timeout`).
    fn join_timeout(&mut self, timeout: Duration) -> Result<()>;
}

/// What every worker of a pool starts with.
#[derive(Clone)]
pub(crate) struct WorkerSetup {
    pub(crate) initializer: Option<(TaskTargetId, TaskBytes)>,
    /// Tasks to run before exiting (0: no limit), CPython's `maxtasksperchild`.
    pub(crate) max_tasks: u64,
    pub(crate) start_method: StartMethod,
}

/// The local pool's transport (see the module doc).
pub(crate) struct LocalTransport {
    results: ShmQueueOf<FromWorker>,
    setup: WorkerSetup,
}

impl LocalTransport {
    pub(crate) fn new(setup: WorkerSetup) -> Result<LocalTransport> {
        Ok(LocalTransport {
            results: ShmQueueOf::preallocated("pool results")?,
            setup,
        })
    }
}

impl Transport for LocalTransport {
    fn start_worker(&self, slot: u32) -> Result<Box<dyn WorkerLink>> {
        let tasks = ShmQueueOf::preallocated("pool tasks")?;
        let args = WorkerArgs {
            tasks: tasks.clone(),
            results: self.results.clone(),
            slot,
            initializer: self.setup.initializer.clone(),
            max_tasks: self.setup.max_tasks,
        };
        static WORKERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = WORKERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let process = Process::new(worker_main, args)
            .name(format!("PoolWorker-{n}"))
            .daemon(true)
            .start_method(self.setup.start_method)
            .start()?;
        Ok(Box::new(LocalWorker { process, tasks }))
    }

    fn wait_report(&self, timeout: Duration, on_report: &mut dyn FnMut(FromWorkerRef<'_>)) -> bool {
        self.results
            .get_timeout_shared_with(timeout, |what, bytes, _| {
                on_report(FromWorkerRef::decode(what, bytes)?);
                Ok(())
            })
            .is_ok()
    }

    fn try_report(&self, on_report: &mut dyn FnMut(FromWorkerRef<'_>)) -> bool {
        self.results
            .try_get_with(|what, bytes, _| {
                on_report(FromWorkerRef::decode(what, bytes)?);
                Ok(())
            })
            .is_ok()
    }
}

/// A worker process of this machine and its task queue.
struct LocalWorker {
    process: Process<()>,
    tasks: ShmQueueOf<ToWorker>,
}

impl WorkerLink for LocalWorker {
    fn name(&self) -> &str {
        self.process.name()
    }

    fn pid(&self) -> i32 {
        self.process.pid()
    }

    fn try_send(&self, message: &ToWorker) -> bool {
        self.tasks.try_put(message).is_ok()
    }

    fn is_alive(&self) -> bool {
        self.process.is_alive()
    }

    fn kill(&self) {
        let _ = self.process.kill();
    }

    fn join(&mut self) -> Result<()> {
        self.process.join()
    }

    fn join_timeout(&mut self, timeout: Duration) -> Result<()> {
        self.process.join_timeout(timeout)
    }
}

#[cfg(test)]
mod tests {
    //! The supervisor over a second transport: workers as threads of this process, fed by
    //! channels. It shows the seam carries everything the supervisor needs, deaths included.
    #![allow(unsafe_code)]

    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::{Arc, Condvar, Mutex, mpsc};
    use std::time::{Duration, Instant};

    use super::super::Pool;
    use super::super::chunk;
    use super::super::supervisor::{Limits, Supervisor};
    use super::super::task::TaskTarget;
    use super::super::worker::{FromWorker, FromWorkerRef, ToWorker};
    use super::{Transport, WorkerLink};
    use crate::error::{Error, ErrorKind, Result};
    use crate::sync::IgnorePoison;

    /// Reports from every worker thread, in order.
    #[derive(Default)]
    struct Reports {
        queue: Mutex<VecDeque<Vec<u8>>>,
        arrived: Condvar,
    }

    #[derive(Default)]
    struct ThreadTransport {
        reports: Arc<Reports>,
        started: AtomicU32,
    }

    struct ThreadWorker {
        inbox: mpsc::SyncSender<ToWorker>,
        alive: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<bool>>,
        name: String,
    }

    /// A thread worker runs each chunk of `i64`s, but dies, reporting nothing, on one holding
    /// a negative number: a worker lost in the middle of its task.
    fn thread_worker(slot: u32, inbox: mpsc::Receiver<ToWorker>, reports: Arc<Reports>) -> bool {
        while let Ok(ToWorker::Task {
            id, target, items, ..
        }) = inbox.recv()
        {
            let mut args: Vec<i64> = Vec::new();
            chunk::decode_items_appending("test", &items.0, &mut args).unwrap();
            if args.iter().any(|a| *a < 0) {
                return false;
            }
            // SAFETY: the id was made by `TaskTarget::id` in this very process.
            let target = unsafe { TaskTarget::trusting(target) };
            let report = FromWorker {
                slot,
                id,
                outcome: target
                    .run(&items.0)
                    .map(serde_bytes::ByteBuf::from)
                    .map_err(super::super::worker::TaskFailure::Broken),
            };
            let bytes = postcard::to_allocvec(&report).unwrap();
            reports.queue.lock().ignore_poison().push_back(bytes);
            reports.arrived.notify_all();
        }
        true
    }

    impl Transport for ThreadTransport {
        fn start_worker(&self, slot: u32) -> Result<Box<dyn WorkerLink>> {
            let n = self.started.fetch_add(1, Ordering::SeqCst);
            let (inbox, received) = mpsc::sync_channel(2);
            let alive = Arc::new(AtomicBool::new(true));
            let (reports, flag) = (self.reports.clone(), alive.clone());
            let thread = std::thread::spawn(move || {
                let clean = thread_worker(slot, received, reports);
                flag.store(false, Ordering::SeqCst);
                clean
            });
            Ok(Box::new(ThreadWorker {
                inbox,
                alive,
                thread: Some(thread),
                name: format!("ThreadWorker-{n}"),
            }))
        }

        fn wait_report(
            &self,
            timeout: Duration,
            on_report: &mut dyn FnMut(FromWorkerRef<'_>),
        ) -> bool {
            let deadline = Instant::now() + timeout;
            let mut queue = self.reports.queue.lock().ignore_poison();
            while queue.is_empty() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return false;
                }
                queue = self
                    .reports
                    .arrived
                    .wait_timeout(queue, left)
                    .ignore_poison()
                    .0;
            }
            let bytes = queue.pop_front().unwrap();
            drop(queue);
            on_report(FromWorkerRef::decode("test", &bytes).unwrap());
            true
        }

        fn try_report(&self, on_report: &mut dyn FnMut(FromWorkerRef<'_>)) -> bool {
            let bytes = self.reports.queue.lock().ignore_poison().pop_front();
            bytes.is_some_and(|bytes| {
                on_report(FromWorkerRef::decode("test", &bytes).unwrap());
                true
            })
        }
    }

    impl WorkerLink for ThreadWorker {
        fn name(&self) -> &str {
            &self.name
        }
        fn pid(&self) -> i32 {
            0
        }
        fn try_send(&self, message: &ToWorker) -> bool {
            let copy = match message {
                ToWorker::Task {
                    id,
                    target,
                    items,
                    options,
                } => ToWorker::Task {
                    id: *id,
                    target: *target,
                    items: items.clone(),
                    options: *options,
                },
                ToWorker::Stop => ToWorker::Stop,
            };
            self.inbox.try_send(copy).is_ok()
        }
        fn is_alive(&self) -> bool {
            self.alive.load(Ordering::SeqCst)
        }
        fn kill(&self) {}
        fn join_timeout(&mut self, _: Duration) -> Result<()> {
            self.join()
        }
        fn join(&mut self) -> Result<()> {
            match self.thread.take().map(|t| t.join()) {
                Some(Ok(true)) | None => Ok(()),
                _ => Err(Error::Exited {
                    name: self.name.clone(),
                    pid: 0,
                    code: 1,
                    detail: None,
                }),
            }
        }
    }

    fn double(x: i64) -> i64 {
        x * 2
    }

    #[test]
    fn the_supervisor_runs_over_another_transport_and_replaces_a_lost_worker() {
        let transport = Arc::new(ThreadTransport::default());
        let limits = Limits {
            processes: 2,
            task_timeout: None,
            retries: 0,
        };
        let shared = SharedTransport(transport.clone());
        let (supervisor, handler) = Supervisor::start(Box::new(shared), limits).unwrap();
        let pool = Pool::from_parts(supervisor, handler);
        assert_eq!(pool.map(double, 1..=5i64).unwrap(), [2, 4, 6, 8, 10]);
        // The worker that takes -1 dies without a word: its task fails, it is replaced.
        let err = pool.apply(double, -1).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WorkerLost, "{err}");
        assert_eq!(pool.apply(double, 21).unwrap(), 42);
        assert_eq!(transport.started.load(Ordering::SeqCst), 3);
        pool.close();
        pool.join().unwrap();
    }

    /// The test keeps a handle on the transport the pool owns.
    struct SharedTransport(Arc<ThreadTransport>);

    impl Transport for SharedTransport {
        fn start_worker(&self, slot: u32) -> Result<Box<dyn WorkerLink>> {
            self.0.start_worker(slot)
        }
        fn wait_report(
            &self,
            timeout: Duration,
            on_report: &mut dyn FnMut(FromWorkerRef<'_>),
        ) -> bool {
            self.0.wait_report(timeout, on_report)
        }
        fn try_report(&self, on_report: &mut dyn FnMut(FromWorkerRef<'_>)) -> bool {
            self.0.try_report(on_report)
        }
    }
}
