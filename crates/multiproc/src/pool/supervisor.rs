//! The supervisor: the pool's record of its tasks and workers, and the result-handler thread.
//!
//! The pool keeps, per worker, the tasks it sent in order: the first one is the one running.
//! The handler thread takes reports, runs deliveries (callbacks, result slots), and
//! supervises: when a worker dies it first takes every report still on its way (so nothing
//! the worker finished is lost), then fails the task the worker was running (`WorkerLost`, or
//! `Timeout` if the pool killed it for running too long, or retries it), hands the worker's
//! other tasks to the rest, and starts a replacement. Workers are reached only through the
//! [`Transport`] seam.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::chunk::{self, decode_failures};
use super::metrics::{Counters, PoolMetrics};
use super::options::{Priority, TaskOptions};
use super::result::{Pump, TaskOutcome};
use super::task::TaskTarget;
use super::transport::{Transport, WorkerLink};
use super::worker::{FromWorkerRef, INITIALIZER_FAILED, TaskBytes, TaskFailure, ToWorker};
use crate::error::{Error, Result};
use crate::sync::IgnorePoison;

/// How often the handler looks whether waiters still take results themselves.
const PUMPING_LOOK: Duration = Duration::from_millis(1);
/// How often the handler looks at the workers when no result comes.
const SUPERVISE_EVERY: Duration = Duration::from_millis(20);

pub(crate) type Deliver = Box<dyn for<'a> FnOnce(TaskOutcome<'a>) + Send>;

struct TaskEntry {
    target: TaskTarget,
    items: TaskBytes,
    retries_left: u32,
    /// Its own options: its timeout beside the pool's (the shorter applies), its priority.
    options: TaskOptions,
    /// This pool is cancelling it through the transport: a `Cancelled` report is the
    /// canceller's to answer, not the delivery's.
    cancelling: bool,
    deliver: Deliver,
    /// When it was last sent to a worker.
    sent_at: Option<Instant>,
}

/// A worker as the supervisor keeps it: its link (none while it is being replaced) and the
/// tasks sent to it.
struct WorkerSlot {
    link: Option<Box<dyn WorkerLink>>,
    /// Task ids sent to this worker, oldest (running) first.
    sent: VecDeque<u64>,
    /// Since when the oldest sent task may have been running.
    front_since: Instant,
    name: String,
    pid: i32,
}

struct State {
    workers: Vec<WorkerSlot>,
    backlog: VecDeque<u64>,
    tasks: HashMap<u64, TaskEntry>,
    next_id: u64,
    closed: bool,
    /// Terminated, or joined: the handler stops.
    finished: bool,
    /// Why the pool cannot run tasks (its initializer fails): no more workers are started.
    broken: Option<String>,
    /// Tasks sent ahead to one worker ([`Transport::tasks_ahead`]).
    ahead: usize,
}

/// The pool's state and the thread-safe calls on it; the result-handler thread runs
/// [`handle`](Self::handle).
pub(crate) struct Supervisor {
    state: Mutex<State>,
    /// Threads taking results themselves right now (see `Pump`); the handler steps aside.
    pumpers: AtomicUsize,
    /// The handler thread, to wake when the last pumper goes to sleep.
    handler_thread: OnceLock<std::thread::Thread>,
    /// Signalled when the last task is done, and when the pool finishes.
    idle: Condvar,
    transport: Box<dyn Transport>,
    limits: Limits,
    /// Buffers of finished tasks, for the next tasks' arguments: memory already mapped, so a
    /// map after the first takes no page faults for them.
    spare_buffers: Mutex<Vec<Vec<u8>>>,
    /// What it has done, for [`metrics`](Self::metrics).
    counters: Counters,
}

/// What the supervisor enforces.
#[derive(Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) processes: usize,
    /// Kill a worker whose task runs longer, and fail the task with `Timeout`.
    pub(crate) task_timeout: Option<Duration>,
    /// Run a task again this many times when its worker dies or times out under it.
    pub(crate) retries: u32,
}

/// The most spare argument buffers a pool keeps.
const SPARE_BUFFERS: usize = 8;
/// The largest buffer kept for reuse.
const SPARE_BUFFER_BYTES: usize = 1 << 20;

/// Serializes a chunk of arguments.
pub(crate) fn encode_args<A: Serialize + 'static>(args: &[A]) -> Result<TaskBytes> {
    encode_args_into(args, Vec::new())
}

/// Serializes a chunk of arguments into `bytes` (emptied first).
fn encode_args_into<A: Serialize + 'static>(args: &[A], mut bytes: Vec<u8>) -> Result<TaskBytes> {
    bytes.clear();
    chunk::encode_items("pool task arguments", args, &mut bytes)?;
    Ok(TaskBytes(Arc::new(bytes)))
}

impl Supervisor {
    /// Encodes a chunk of arguments into a spare buffer if there is one.
    pub(crate) fn encode_args<A: Serialize + 'static>(&self, args: &[A]) -> Result<TaskBytes> {
        let spare = self.spare_buffers.lock().ignore_poison().pop();
        encode_args_into(args, spare.unwrap_or_default())
    }

    /// Keeps a finished task's buffer for the next tasks, if nothing else holds it.
    fn recycle(&self, items: TaskBytes) {
        if let Ok(bytes) = Arc::try_unwrap(items.0)
            && bytes.capacity() <= SPARE_BUFFER_BYTES
        {
            let mut spare = self.spare_buffers.lock().ignore_poison();
            if spare.len() < SPARE_BUFFERS {
                spare.push(bytes);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().ignore_poison()
    }

    fn start_worker(&self, slot: u32) -> Result<WorkerSlot> {
        let link = self.transport.start_worker(slot)?;
        Ok(WorkerSlot {
            pid: link.pid(),
            name: link.name().to_string(),
            link: Some(link),
            sent: VecDeque::new(),
            front_since: Instant::now(),
        })
    }

    /// Adds a task and sends it if a worker has room.
    pub(crate) fn submit(
        &self,
        target: TaskTarget,
        items: TaskBytes,
        deliver: Deliver,
    ) -> Result<u64> {
        self.submit_with_options(target, items, deliver, TaskOptions::default())
    }

    /// [`submit`](Self::submit), with options of the task's own.
    ///
    /// A task that starts later goes to the transport at once, holding no worker's room (a
    /// broker keeps it until it is due); a high-priority one goes ahead of the normal ones in
    /// the backlog.
    pub(crate) fn submit_with_options(
        &self,
        target: TaskTarget,
        items: TaskBytes,
        deliver: Deliver,
        options: TaskOptions,
    ) -> Result<u64> {
        let mut state = self.lock();
        if let Some(why) = &state.broken {
            return Err(Error::invalid("pool", format!("broken: {why}")));
        }
        if state.closed || state.finished {
            return Err(Error::invalid("pool", "closed: no new tasks"));
        }
        self.transport.check_target(target.id())?;
        self.transport.check_options(&options)?;
        let id = state.next_id;
        state.next_id += 1;
        if options.start.is_some() {
            let message = ToWorker::Task {
                id,
                target: target.id(),
                items: items.clone(),
                options,
            };
            self.transport.send_later(&message)?;
        } else {
            let at = match options.priority {
                Priority::Normal => state.backlog.len(),
                Priority::High => {
                    let State { backlog, tasks, .. } = &*state;
                    backlog
                        .iter()
                        .position(|t| {
                            tasks
                                .get(t)
                                .is_none_or(|t| t.options.priority != Priority::High)
                        })
                        .unwrap_or(backlog.len())
                }
            };
            state.backlog.insert(at, id);
        }
        let retries_left = options.retry.map_or(self.limits.retries, |r| r.retries());
        state.tasks.insert(
            id,
            TaskEntry {
                target,
                items,
                retries_left,
                options,
                cancelling: false,
                deliver,
                sent_at: None,
            },
        );
        self.counters.submitted.fetch_add(1, Ordering::Relaxed);
        dispatch(&mut state);
        Ok(id)
    }

    /// The id other processes know task `id` by, if they can look it up.
    pub(crate) fn task_key(&self, id: u64) -> Option<String> {
        self.transport.task_key(id)
    }

    /// How long `task` may run: the shorter of its own timeout and the pool's.
    fn timeout_of(&self, task: Option<&TaskEntry>) -> Option<Duration> {
        let own = task.and_then(|t| t.options.timeout);
        match (own, self.limits.task_timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The result-handler thread.
    fn handle(&self) {
        let mut last_look = Instant::now();
        loop {
            // While threads take their own results (see `Pump`) stay out of their way: racing
            // them for each result, or sleeping on the queue so that every result costs the
            // worker a wake-up call, would slow both. Look again shortly.
            if self.pumpers.load(Ordering::SeqCst) > 0 {
                std::thread::park_timeout(PUMPING_LOOK);
            } else {
                self.transport
                    .wait_report(SUPERVISE_EVERY, &mut |report| self.on_report(report));
            }
            if last_look.elapsed() >= SUPERVISE_EVERY {
                last_look = Instant::now();
                if !self.supervise() {
                    return;
                }
            }
        }
    }

    fn on_report(&self, report: FromWorkerRef<'_>) {
        if report.id == INITIALIZER_FAILED {
            let why = report.outcome.err().map(TaskFailure::why);
            return self.break_pool(why.unwrap_or_default());
        }
        let (entry, now_idle) = {
            let mut state = self.lock();
            if let Some(w) = state.workers.get_mut(report.slot as usize) {
                if let Some(pos) = w.sent.iter().position(|id| *id == report.id) {
                    w.sent.remove(pos);
                }
                w.front_since = Instant::now();
            }
            let entry = state.tasks.remove(&report.id);
            dispatch(&mut state);
            (entry, state.tasks.is_empty())
        };
        let cancelled_here = matches!(report.outcome, Err(TaskFailure::Cancelled(_)));
        if let Some(entry) = entry.filter(|e| !(e.cancelling && cancelled_here)) {
            let outcome = report.outcome.map_err(TaskFailure::into_error);
            let failed = match &outcome {
                Ok(bytes) => decode_failures(bytes).is_ok_and(|(f, _)| !f.is_empty()),
                Err(_) => true,
            };
            self.count_end(entry.sent_at, failed);
            self.recycle(entry.items);
            run_delivery(entry.deliver, outcome);
        }
        if now_idle {
            self.idle.notify_all();
        }
    }

    /// The initializer fails: every task fails with why, and no worker is started again (a
    /// pool that would only restart failing workers would hang its callers).
    fn break_pool(&self, why: String) {
        let failed: Vec<TaskEntry> = {
            let mut state = self.lock();
            if state.broken.is_none() {
                state.broken = Some(format!("the initializer failed in a worker: {why}"));
            }
            state.backlog.clear();
            for w in &mut state.workers {
                w.sent.clear();
            }
            state.tasks.drain().map(|(_, t)| t).collect()
        };
        let message = self.lock().broken.clone().unwrap_or_default();
        for entry in failed {
            self.count_end(entry.sent_at, true);
            run_delivery(entry.deliver, Err(Error::invalid("pool", message.clone())));
        }
        self.idle.notify_all();
    }

    /// Looks for dead and overdue workers; false once the pool is finished.
    fn supervise(&self) -> bool {
        let mut ended = Vec::new();
        {
            let mut state = self.lock();
            if state.finished {
                return false;
            }
            let State { workers, tasks, .. } = &mut *state;
            for (slot, w) in workers.iter_mut().enumerate() {
                let Some(link) = &w.link else { continue };
                let limit = w.sent.front().and_then(|id| self.timeout_of(tasks.get(id)));
                let overdue = limit.is_some_and(|t| w.front_since.elapsed() > t);
                if overdue {
                    link.kill();
                    ended.push((slot, true));
                } else if !link.is_alive() {
                    ended.push((slot, false));
                }
            }
        }
        if ended.is_empty() {
            return true;
        }
        // Whatever the dead finished is in the result queue: take it first.
        while self.pump() {}
        let mut failed = Vec::new();
        {
            let mut state = self.lock();
            for (slot, timed_out) in ended {
                let Some(mut link) = state.workers[slot].link.take() else {
                    continue;
                };
                let how = link.join();
                let limit = state.workers[slot]
                    .sent
                    .front()
                    .and_then(|id| self.timeout_of(state.tasks.get(id)));
                let w = &mut state.workers[slot];
                let mut sent = std::mem::take(&mut w.sent);
                let running = match how {
                    // A clean exit (max_tasks_per_child): what it was sent never started.
                    Ok(()) => None,
                    Err(e) => sent.pop_front().map(|id| {
                        let error = if timed_out {
                            Error::timeout(
                                format!("pool task on worker {:?}", w.name),
                                limit.unwrap_or_default(),
                            )
                        } else {
                            lost(w, e)
                        };
                        (id, error)
                    }),
                };
                for id in sent.into_iter().rev() {
                    state.backlog.push_front(id);
                }
                if let Some((id, error)) = running {
                    let retry = state.tasks.get_mut(&id).is_some_and(|t| {
                        let again = t.retries_left > 0;
                        t.retries_left = t.retries_left.saturating_sub(1);
                        again
                    });
                    if retry {
                        state.backlog.push_front(id);
                    } else if let Some(entry) = state.tasks.remove(&id) {
                        failed.push((entry, error));
                    }
                }
                if !state.finished && state.broken.is_none() {
                    match self.start_worker(slot as u32) {
                        Ok(worker) => {
                            state.workers[slot] = worker;
                            self.counters
                                .workers_replaced
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            // Without workers the tasks would wait for ever: fail them.
                            for (_, entry) in state.tasks.drain() {
                                failed.push((entry, clone_error(&e)));
                            }
                            state.backlog.clear();
                        }
                    }
                }
            }
            dispatch(&mut state);
        }
        let now_idle = !failed.is_empty() && self.lock().tasks.is_empty();
        for (entry, error) in failed {
            self.count_end(entry.sent_at, true);
            run_delivery(entry.deliver, Err(error));
        }
        if now_idle {
            self.idle.notify_all();
        }
        true
    }
}

impl Pump for Supervisor {
    fn enter(&self) {
        self.pumpers.fetch_add(1, Ordering::SeqCst);
    }

    fn leave(&self, sleeping: bool) {
        let was = self.pumpers.fetch_sub(1, Ordering::SeqCst);
        // The last pumper goes to sleep: the handler must deliver now, not at its next look.
        if sleeping
            && was == 1
            && let Some(handler) = self.handler_thread.get()
        {
            handler.unpark();
        }
    }

    fn pump(&self) -> bool {
        self.transport
            .try_report(&mut |report| self.on_report(report))
    }

    fn worth_spinning(&self) -> bool {
        self.transport.reports_are_near()
    }
}

fn lost(w: &WorkerSlot, e: Error) -> Error {
    match e {
        Error::Killed { signal, .. } => Error::WorkerLost {
            name: w.name.clone(),
            pid: w.pid,
            detail: format!(
                "killed by signal {signal} ({})",
                crate::platform::signal_name(signal)
            ),
        },
        // panic = "abort": the panic itself is the news.
        e @ Error::Panicked { .. } => e,
        other => Error::WorkerLost {
            name: w.name.clone(),
            pid: w.pid,
            detail: other.to_string(),
        },
    }
}

fn clone_error(e: &Error) -> Error {
    Error::invalid("pool", format!("cannot replace a worker: {e}"))
}

/// Runs a delivery; a panicking callback is reported and does not take the handler down.
pub(crate) fn run_delivery(deliver: Deliver, outcome: TaskOutcome<'_>) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| deliver(outcome))).is_err() {
        tracing::error!("a pool callback panicked; the pool carries on");
    }
}

/// Sends backlog tasks to workers with room (state locked).
fn dispatch(state: &mut State) {
    while let Some(&id) = state.backlog.front() {
        // The least loaded worker; among equals the one that finished last, which is likely
        // still spinning for work rather than asleep (a wake-up costs tens of microseconds).
        let Some((slot, _)) = state
            .workers
            .iter()
            .enumerate()
            .filter(|(_, w)| w.link.is_some() && w.sent.len() < state.ahead)
            .min_by_key(|(_, w)| (w.sent.len(), std::cmp::Reverse(w.front_since)))
        else {
            return;
        };
        let Some(entry) = state.tasks.get_mut(&id) else {
            state.backlog.pop_front();
            continue;
        };
        entry.sent_at = Some(Instant::now());
        let message = ToWorker::Task {
            id,
            target: entry.target.id(),
            items: entry.items.clone(),
            options: entry.options,
        };
        let w = &mut state.workers[slot];
        if !w.link.as_ref().is_some_and(|link| link.try_send(&message)) {
            return;
        }
        if w.sent.is_empty() {
            w.front_since = Instant::now();
        }
        w.sent.push_back(id);
        state.backlog.pop_front();
    }
}

impl Supervisor {
    /// Starts `limits.processes` workers through `transport`, and the handler thread.
    pub(crate) fn start(
        transport: Box<dyn Transport>,
        limits: Limits,
    ) -> Result<(Arc<Supervisor>, JoinHandle<()>)> {
        let supervisor = Arc::new(Supervisor {
            pumpers: AtomicUsize::new(0),
            handler_thread: OnceLock::new(),
            state: Mutex::new(State {
                workers: Vec::new(),
                backlog: VecDeque::new(),
                ahead: transport.tasks_ahead().max(1),
                tasks: HashMap::new(),
                next_id: 0,
                closed: false,
                finished: false,
                broken: None,
            }),
            idle: Condvar::new(),
            transport,
            limits,
            counters: Counters::default(),
            spare_buffers: Mutex::new(Vec::new()),
        });
        {
            let mut state = supervisor.lock();
            for slot in 0..limits.processes {
                let worker = supervisor.start_worker(slot as u32)?;
                state.workers.push(worker);
            }
        }
        let handler_side = supervisor.clone();
        let handler = std::thread::Builder::new()
            .name("multiproc-pool-handler".into())
            .spawn(move || handler_side.handle())
            .map_err(|e| Error::io("pool: cannot start its result handler", e))?;
        let _ = supervisor.handler_thread.set(handler.thread().clone());
        Ok((supervisor, handler))
    }

    /// Sends up to `n` tasks ahead to each worker from now on (at least one), in place of
    /// what the transport said ([`Transport::tasks_ahead`]).
    #[cfg(feature = "broker")]
    pub(crate) fn set_tasks_ahead(&self, n: usize) {
        let mut state = self.lock();
        let more = n.max(1) > state.ahead;
        state.ahead = n.max(1);
        if more {
            dispatch(&mut state);
        }
    }

    pub(crate) fn limits(&self) -> Limits {
        self.limits
    }

    /// Accepts no more tasks.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.lock().finished
    }

    /// Waits for every task, then stops the workers (each gets 5 s to exit before it is
    /// killed).
    pub(crate) fn finish(&self) -> Result<()> {
        let mut state = self.lock();
        if !state.closed && !state.finished {
            return Err(Error::invalid(
                "pool",
                "join() needs close() or terminate() first",
            ));
        }
        while !state.tasks.is_empty() && !state.finished {
            state = self.idle.wait(state).ignore_poison();
        }
        state.finished = true;
        let mut links = Vec::new();
        for w in &mut state.workers {
            if let Some(link) = w.link.take() {
                link.try_send(&ToWorker::Stop);
                links.push(link);
            }
        }
        drop(state);
        for mut link in links {
            if link.join_timeout(Duration::from_secs(5)).is_err() {
                link.kill();
                let _ = link.join();
            }
        }
        Ok(())
    }

    /// Kills the workers at once; tasks not finished fail.
    pub(crate) fn terminate(&self) {
        let (links, tasks) = {
            let mut state = self.lock();
            state.closed = true;
            state.finished = true;
            state.backlog.clear();
            let links: Vec<_> = state
                .workers
                .iter_mut()
                .filter_map(|w| w.link.take())
                .collect();
            (links, std::mem::take(&mut state.tasks))
        };
        for link in &links {
            link.kill();
        }
        for mut link in links {
            let _ = link.join();
        }
        for (_, entry) in tasks {
            self.count_end(entry.sent_at, true);
            run_delivery(
                entry.deliver,
                Err(Error::invalid(
                    "pool",
                    "terminated before the task finished",
                )),
            );
        }
        self.idle.notify_all();
    }

    /// Where task `id` is.
    pub(crate) fn task_state(&self, id: u64) -> TaskState {
        let state = self.lock();
        if !state.tasks.contains_key(&id) {
            TaskState::Gone
        } else if state.backlog.contains(&id) {
            TaskState::Queued
        } else {
            TaskState::Sent
        }
    }

    /// Removes task `id` if no worker has started it; whether it did (its delivery never
    /// runs). A task the transport holds (a broker's) is cancelled there if it can be.
    pub(crate) fn cancel_task(&self, id: u64) -> bool {
        let mut state = self.lock();
        match state.backlog.iter().position(|t| *t == id) {
            Some(at) => {
                state.backlog.remove(at);
            }
            None => {
                let Some(entry) = state.tasks.get_mut(&id) else {
                    return false;
                };
                entry.cancelling = true;
                drop(state);
                // A broker answers with a report that frees the task's room.
                let cancelled = self.transport.cancel(id);
                state = self.lock();
                if !cancelled {
                    if let Some(entry) = state.tasks.get_mut(&id) {
                        entry.cancelling = false;
                    }
                    return false;
                }
            }
        }
        state.tasks.remove(&id);
        let idle = state.tasks.is_empty();
        drop(state);
        if idle {
            self.idle.notify_all();
        }
        true
    }

    /// Takes every task that no worker has yet out of the pool; their ids (their deliveries
    /// never run).
    pub(crate) fn cancel_queued(&self) -> Vec<u64> {
        let mut state = self.lock();
        let queued: Vec<u64> = state.backlog.drain(..).collect();
        for id in &queued {
            state.tasks.remove(id);
        }
        let idle = state.tasks.is_empty();
        drop(state);
        if idle {
            self.idle.notify_all();
        }
        queued
    }

    /// The pids of the current workers.
    pub(crate) fn worker_pids(&self) -> Vec<i32> {
        self.lock()
            .workers
            .iter()
            .filter(|w| w.link.is_some())
            .map(|w| w.pid)
            .collect()
    }

    /// What the pool has done and holds now.
    pub(crate) fn metrics(&self) -> PoolMetrics {
        let (waiting, running, workers) = {
            let state = self.lock();
            let live = state.workers.iter().filter(|w| w.link.is_some());
            let running = live.clone().map(|w| w.sent.len()).sum();
            (state.backlog.len(), running, live.count())
        };
        let c = &self.counters;
        PoolMetrics {
            submitted: c.submitted.load(Ordering::Relaxed),
            succeeded: c.succeeded.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            workers_replaced: c.workers_replaced.load(Ordering::Relaxed),
            waiting,
            running,
            workers,
            durations: c.durations.cumulative(),
            duration_sum: c.durations.sum(),
        }
    }

    /// Counts a task that ended (failed or not), and its time since it was sent.
    fn count_end(&self, sent_at: Option<Instant>, failed: bool) {
        let c = &self.counters;
        let counter = if failed { &c.failed } else { &c.succeeded };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(at) = sent_at {
            c.durations.observe(at.elapsed());
        }
    }

    /// Workers, pending tasks, and whether the pool is closed (for `Debug`).
    pub(crate) fn counts(&self) -> (usize, usize, bool) {
        let state = self.lock();
        (state.workers.len(), state.tasks.len(), state.closed)
    }
}

/// Where a task is, for [`Supervisor::task_state`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TaskState {
    /// Waiting for a worker.
    Queued,
    /// Sent to a worker (running, or next in its queue).
    Sent,
    /// Finished, failed or cancelled.
    Gone,
}
