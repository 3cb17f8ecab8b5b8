//! The working side of a broker pool: a run of the user's own program that takes the pool's
//! tasks from the broker and runs each in a child process, as a local pool does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::hold::Hold;
use super::message::{FORMAT, Outcome, ResultMessage, TaskMessage};
use super::record::{self, Stage};
use super::registry::TaskRegistry;
use super::schedule::{TaskQueues, results_of};
use super::{Common, RESULTS_TTL, build_id, build_queue, function_queue, task_id};
use crate::error::{Error, Result};
use crate::local_lock::IgnorePoison;
use crate::pool::chunk::decode_failures;
use crate::pool::options::TaskOptions;
use crate::pool::worker::{TaskBytes, TaskFailure};
use crate::pool::{Pool, PoolBuilder, Priority, RetryPolicy};
use crate::queue::{Due, JoinableQueue, Leased, Packed, Queue, Reading, RedisQueue};

/// How long one wait for a task lasts before the worker looks whether it should stop (and
/// moves the tasks that are due).
const LOOK_EVERY: Duration = Duration::from_millis(200);
/// How long a task runs before its `started` record is written.
const STARTED_AFTER: Duration = Duration::from_millis(5);
/// The shortest wait for a task between two moves of those due.
const MOVE_AT_LEAST: Duration = Duration::from_millis(1);
/// How often a worker pushes a results stream's time back.
const RESULTS_TTL_EVERY: Duration = Duration::from_secs(60);
/// The most pools whose results streams a worker keeps a connection to.
const RESULT_STREAMS: usize = 16;

/// Runs the tasks of [`Pool`]s built with [`Pool::broker`], in a run of the same program (the
/// same build) on any machine that reaches the broker.
///
/// It takes tasks from the queue, checks each one's signature (the pool's authkey), build and
/// function, and runs it in one of its worker processes (a local [`Pool`]): a task that
/// panics fails with its message, one whose process dies fails with `WorkerLost` (or runs
/// again, as the pool's `retries` say), one that runs past [`task_timeout`](Self::task_timeout)
/// is killed. Its result goes back, signed, to the pool that sent it. A task that does not
/// verify goes to the queue's dead letters.
///
/// A task runs only on a worker of the build that sent it. One of another build is left on
/// the queue of that build's workers (`<queue>@<digest of the build>`, which every worker
/// reads beside the queue), with the reason in its record
/// ([`TaskStatus::Waiting`](crate::TaskStatus::Waiting)) and in the pool's log: old and new
/// workers can serve one queue during an upgrade. A task of this build whose function this worker lacks (the same
/// build registering other functions, a mistake) is refused with the reason: the pool's call
/// fails with it.
///
/// A worker that dies loses the leases of the tasks it held: the broker hands them to
/// another worker after the queue's lease.
///
/// # Examples
///
/// ```no_run
/// use multiproc::{BrokerWorker, TaskRegistry};
///
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// fn main() -> multiproc::Result<()> {
///     let tasks = TaskRegistry::new().register("square", square);
///     // Until SIGTERM or SIGINT: running tasks finish, the rest go back to the queue.
///     BrokerWorker::new("redis://127.0.0.1:6379/0", "squares")
///         .authkey(b"shared secret".to_vec())
///         .tasks(tasks)
///         .processes(4)
///         .run()
/// }
/// ```
#[must_use = "a worker does nothing until it runs"]
pub struct BrokerWorker {
    common: Common,
    processes: usize,
    task_timeout: Option<Duration>,
    stop: Arc<AtomicBool>,
    /// The rest of the local pool's settings.
    local: Box<dyn FnOnce(PoolBuilder) -> PoolBuilder>,
}

impl std::fmt::Debug for BrokerWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerWorker")
            .field("url", &self.common.url)
            .field("queue", &self.common.queue)
            .field("tasks", &self.common.registry)
            .field("processes", &self.processes)
            .field("task_timeout", &self.task_timeout)
            .finish_non_exhaustive()
    }
}

/// Stops a [`BrokerWorker`] from another thread, as SIGTERM does.
#[derive(Clone, Debug)]
pub struct WorkerStopper(Arc<AtomicBool>);

impl WorkerStopper {
    /// Asks the worker to stop: it takes no more tasks, and returns once those it runs are
    /// done.
    pub fn stop(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl BrokerWorker {
    /// A worker for the pools sending to `queue` on the broker at `url`.
    pub fn new(url: impl Into<String>, queue: impl Into<String>) -> BrokerWorker {
        BrokerWorker {
            common: Common::new(url.into(), queue.into()),
            processes: crate::cpu_count(),
            task_timeout: None,
            stop: Arc::new(AtomicBool::new(false)),
            local: Box::new(|pool| pool),
        }
    }

    /// Sets up the local pool whose processes run the tasks beyond its
    /// [`processes`](Self::processes) and [`task_timeout`](Self::task_timeout): an
    /// initializer that runs in each process first, a process that is replaced after so many
    /// tasks, how processes start.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use multiproc::{BrokerWorker, TaskRegistry};
    ///
    /// fn connect_cache(url: String) {
    ///     // Open this process's own connections, once.
    /// }
    ///
    /// BrokerWorker::new("redis://127.0.0.1:6379/0", "renders")
    ///     .authkey(b"shared secret".to_vec())
    ///     .tasks(TaskRegistry::new())
    ///     .local_pool(|pool| {
    ///         pool.initializer(connect_cache, "redis://cache:6379".to_string())
    ///             .max_tasks_per_child(1000)
    ///     })
    ///     .run()?;
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn local_pool(
        mut self,
        configure: impl FnOnce(PoolBuilder) -> PoolBuilder + 'static,
    ) -> Self {
        self.local = Box::new(configure);
        self
    }

    common_setters!();

    /// How many tasks run at once, each in a process of its own (default: the CPU count).
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = n;
        self
    }

    /// Kills a task that runs longer, and fails it with
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout).
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.task_timeout = Some(timeout);
        self
    }

    /// A handle that stops the worker from another thread.
    pub fn stopper(&self) -> WorkerStopper {
        WorkerStopper(self.stop.clone())
    }

    /// Runs tasks until SIGTERM or SIGINT (or [`WorkerStopper::stop`]): then takes no more,
    /// lets those running finish, gives back those read ahead, and returns.
    ///
    /// # Errors
    /// No authkey, a registry with refused names, 0 processes, a broker that cannot be
    /// reached at the start, worker processes that cannot start.
    pub fn run(self) -> Result<()> {
        if self.processes == 0 {
            return Err(Error::invalid(
                "broker worker",
                "needs at least one process",
            ));
        }
        let tasks = self.common.connect_worker("broker worker")?;
        let mut local = (self.local)(Pool::builder()).processes(self.processes);
        if let Some(t) = self.task_timeout {
            local = local.task_timeout(t);
        }
        let runner = Arc::new(Runner {
            tasks,
            local: local.build()?,
            url: self.common.url,
            queue: self.common.queue,
            authkey: self.common.authkey,
            registry: self.common.registry,
            build: build_id().to_string(),
            results: Mutex::new(HashMap::new()),
            hold: Hold::new(self.processes),
            telling_ahead: Mutex::new(()),
            terminated: Mutex::new(HashMap::new()),
            started: Mutex::default(),
            ended: Mutex::default(),
            ended_ready: Condvar::new(),
        });
        let writer = {
            let runner = runner.clone();
            std::thread::Builder::new()
                .name("multiproc-broker-writer".into())
                .spawn(move || runner.write_all_ended())
                .map_err(|e| Error::io("starting a broker worker's thread", e))?
        };
        let _signals = crate::platform::TerminationFlag::watch(&self.stop);
        tracing::info!(
            queue = %runner.queue,
            build = %runner.build,
            left_for_this_build = %build_queue(&runner.queue, &runner.build),
            processes = self.processes,
            "broker worker serving"
        );
        // Normal tasks fill up to what the worker holds (see `hold.rs`); high ones may come on
        // top of those, a few per process, and go ahead of them in the local pool.
        // Tasks left for this build by workers of others are taken as normal ones.
        let mut threads = Vec::new();
        let mut ended = Ok(());
        // One loop per partition of normal tasks (each blocks on its own stream): the first
        // runs on this thread, and also moves the tasks that are due.
        let partitions = (1..runner.tasks.normal.len()).map(|k| (Source::Normal(k), 0));
        for (source, extra) in [(Source::High, self.processes * 2), (Source::OwnBuild, 0)]
            .into_iter()
            .chain(partitions)
        {
            let (runner, stop) = (runner.clone(), self.stop.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("multiproc-broker-{}", source.name()))
                .spawn(move || runner.take_all(source, extra, &stop, false));
            match spawned {
                Ok(thread) => threads.push(thread),
                Err(e) => {
                    ended = Err(Error::io("starting a broker worker's thread", e));
                    break;
                }
            }
        }
        if ended.is_ok() {
            ended = runner.take_all(Source::Normal(0), 0, &self.stop, true);
        }
        // The stop flag ends the other loops too (within a look).
        self.stop.store(true, Ordering::SeqCst);
        for thread in threads {
            ended = ended.and(thread.join().unwrap_or(Ok(())));
        }
        runner.hold.wait_until_idle();
        runner.ended.lock().ignore_poison().closing = true;
        runner.ended_ready.notify_all();
        let _ = writer.join();
        ended
    }
}

/// Where a worker's loop takes tasks from.
#[derive(Clone)]
enum Source {
    /// The partition of normal tasks with this index.
    Normal(usize),
    High,
    /// Tasks of this build, left by workers of others.
    OwnBuild,
    /// Tasks of a function this worker has, left by workers of its build that lack it.
    ForFunction(JoinableQueue<TaskMessage>),
}

impl Source {
    fn queue<'a>(&'a self, tasks: &'a TaskQueues) -> Result<&'a RedisQueue> {
        match self {
            Source::Normal(k) => tasks.normal[*k].leases(),
            Source::High => tasks.high.leases(),
            Source::OwnBuild => tasks
                .own_build
                .as_ref()
                .ok_or_else(|| Error::invalid("broker worker", "no queue for its build"))?
                .leases(),
            Source::ForFunction(queue) => queue.leases(),
        }
    }

    fn priority(&self) -> Priority {
        match self {
            Source::High => Priority::High,
            _ => Priority::Normal,
        }
    }

    /// What its loop's thread is called.
    fn name(&self) -> String {
        match self {
            Source::Normal(k) => format!("normal-{k}"),
            Source::High => "high".into(),
            Source::OwnBuild => "own-build".into(),
            Source::ForFunction(_) => "function".into(),
        }
    }
}

/// What the worker's loop and its tasks' deliveries share.
struct Runner {
    tasks: TaskQueues,
    local: Pool,
    url: String,
    queue: String,
    authkey: Vec<u8>,
    registry: TaskRegistry,
    build: String,
    /// Handles to the results streams of the pools it serves.
    /// With when each stream's time to live was last pushed back.
    results: Mutex<HashMap<String, (Queue<ResultMessage>, Instant)>>,
    /// How many tasks it may hold in its local pool, how many are there, and how many it
    /// took and has not finished.
    hold: Hold,
    /// Held while the local pool is told how many tasks to send ahead to each process (the
    /// hold's latest count, so that two threads that saw it change cannot leave an older
    /// one in place).
    telling_ahead: Mutex<()>,
    /// Whether each pool was terminated, and when that was last looked at.
    terminated: Mutex<HashMap<String, (bool, Instant)>>,
    /// Tasks running whose `started` record is not written yet.
    started: Mutex<Started>,
    /// Tasks that ended, whose records, results and acknowledgements the writing thread
    /// sends together ([`Runner::write_ended`]).
    ended: Mutex<EndedTasks>,
    ended_ready: Condvar,
}

/// Tasks running whose `started` record is not written yet (pool and task id), since when,
/// and their records' time to live (see [`Runner::started`]).
#[derive(Default)]
struct Started {
    tasks: HashMap<(String, u64), (Instant, u64)>,
    /// No sooner than this is one of them due (none: none is).
    first_due: Option<Instant>,
}

/// What the writing thread has to send.
#[derive(Default)]
struct EndedTasks {
    tasks: Vec<EndedTask>,
    /// Whether the writing thread waits (and must be woken), and for what.
    writer_waits: WriterWaits,
    /// No task runs any more: the writing thread ends once it has sent the last.
    closing: bool,
}

/// What the writing thread waits for.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum WriterWaits {
    #[default]
    No,
    /// A task to end.
    First,
    /// A fuller batch: [`WRITE_BATCH`] tasks, or every task in the local pool ended.
    More,
}

/// A task that ended (not to be retried), taken from `source` as `lease`.
struct EndedTask {
    task: TaskMessage,
    outcome: Outcome,
    lease: String,
    source: Source,
}

/// The most ended tasks the writing thread sends in one go.
const WRITE_MOST: usize = 256;

/// How many ended tasks the writing thread waits for, while others are still running in the
/// local pool, before it sends them (at most [`LINGER`] after the first): a busy worker
/// writes a batch at a time, which costs it and the broker a system call and a wake-up for
/// many tasks, not for each one or two. A task that ends with none other running is sent at
/// once.
const WRITE_BATCH: usize = 16;

/// How long the first of a batch of ended tasks may wait for the rest.
const LINGER: Duration = Duration::from_micros(300);

/// How long a worker trusts what it last saw of a pool's termination.
const TERMINATION_SEEN_FOR: Duration = Duration::from_secs(1);

impl Runner {
    /// Takes the tasks of `source` and starts them, while it holds fewer than it may (and
    /// `extra`), until `stop`. With `moves`, also moves the scheduled tasks that are due into
    /// their streams.
    fn take_all(
        self: &Arc<Self>,
        source: Source,
        extra: usize,
        stop: &AtomicBool,
        moves: bool,
    ) -> Result<()> {
        let queue = source.queue(&self.tasks)?;
        let mut next_move = Instant::now();
        let mut next_left = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            let mut look = LOOK_EVERY;
            if moves {
                let now = Instant::now();
                if now >= next_left {
                    self.take_left_for_functions();
                    next_left = now + LOOK_EVERY;
                }
                if now >= next_move {
                    let wait = match self.tasks.move_due() {
                        Ok(wait) => wait.unwrap_or(LOOK_EVERY).min(LOOK_EVERY),
                        Err(e) => {
                            tracing::warn!(queue = %self.queue, error = %e, "moving the tasks that are due");
                            LOOK_EVERY
                        }
                    };
                    next_move = now + wait;
                }
                look = next_move.saturating_duration_since(now).max(MOVE_AT_LEAST);
                if let Some(due) = self.write_started() {
                    look = look.min(due.max(MOVE_AT_LEAST));
                }
            }
            let room = self.room_for(queue, extra, look);
            if room == 0 {
                continue;
            }
            let deadline = Some(Instant::now() + look);
            match queue.take_leased::<TaskMessage>(deadline, true, look, Reading::UpTo(room)) {
                Ok(leased) => self.clone().start(leased, source.clone()),
                Err(e) if e.kind() == crate::ErrorKind::Timeout => {}
                Err(e) => {
                    tracing::warn!(queue = %self.queue, error = %e, "taking a task");
                    std::thread::park_timeout(LOOK_EVERY);
                }
            }
        }
        Ok(())
    }

    /// Takes the tasks that workers of this build left for a function this one has (they
    /// lack it), while it holds fewer than it may.
    fn take_left_for_functions(self: &Arc<Self>) {
        let wanted = self.tasks.first().leases().and_then(|q| {
            let key = record::wanted_key(q.stream());
            q.query::<HashMap<String, String>>(redis::cmd("HGETALL").arg(key))
        });
        let wanted = match wanted {
            Ok(wanted) => wanted,
            Err(e) => {
                tracing::debug!(queue = %self.queue, error = %e, "looking for tasks left for a function");
                return;
            }
        };
        for (function, name) in wanted {
            let ours = function_queue(&self.queue, &self.build, &function);
            if name != ours || self.registry.target(&function).is_none() {
                continue;
            }
            let Ok(left) = self.tasks.other(&name) else {
                continue;
            };
            let Ok(redis) = left.leases() else { continue };
            loop {
                let room = self.room_for(redis, 0, Duration::ZERO);
                if room == 0 {
                    break;
                }
                let now = Some(Instant::now());
                let reading = Reading::UpTo(room);
                match redis.take_leased::<TaskMessage>(now, false, Duration::ZERO, reading) {
                    Ok(leased) => self
                        .clone()
                        .start(leased, Source::ForFunction(left.clone())),
                    Err(_) => break,
                }
            }
        }
    }

    /// Whether the pool `pool` was terminated (looked up at most once a second).
    fn terminated(&self, pool: &str) -> bool {
        let mut seen = self.terminated.lock().ignore_poison();
        if let Some((gone, at)) = seen.get(pool)
            && at.elapsed() < TERMINATION_SEEN_FOR
        {
            return *gone;
        }
        let gone = self
            .tasks
            .first()
            .leases()
            .and_then(|q| {
                let key = record::cancelled_key(q.stream(), pool);
                q.query::<bool>(redis::cmd("EXISTS").arg(key))
            })
            .unwrap_or(false);
        if seen.len() >= RESULT_STREAMS {
            seen.clear();
        }
        seen.insert(pool.to_string(), (gone, Instant::now()));
        gone
    }

    /// How many tasks it may take from `queue` now, waiting up to `patience` for room in its
    /// local pool (see [`Hold::wait_for_room`]) for what it may hold and `extra`; 0 if none.
    /// At least one, without waiting, while entries it read against the room there was wait
    /// in the handle (they are taken first).
    fn room_for(&self, queue: &RedisQueue, extra: usize, patience: Duration) -> usize {
        match queue.read_ahead() {
            0 => self.hold.wait_for_room(extra, patience),
            _ => self.hold.wait_for_room(extra, Duration::ZERO).max(1),
        }
    }

    /// Counts `n` tasks out of the local pool and `finished` finished (see
    /// [`Hold::left_local_pool`]), and passes on how many tasks the local pool should send
    /// ahead to each process, should that change.
    fn left_local_pool(&self, n: usize, finished: usize) {
        if self.hold.left_local_pool(n, finished) {
            let _one_at_a_time = self.telling_ahead.lock().ignore_poison();
            self.local.set_tasks_ahead(self.hold.tasks_ahead());
        }
    }

    /// Counts a task that left the local pool and will not be written: finished.
    fn finished_one(&self) {
        self.left_local_pool(1, 1);
    }

    /// Counts `n` tasks written: finished.
    fn finished(&self, n: usize) {
        self.left_local_pool(0, n);
    }

    /// Hands a task that ended to the writing thread.
    fn ended(&self, task: EndedTask) {
        self.left_local_pool(1, 0);
        let mut ended = self.ended.lock().ignore_poison();
        ended.tasks.push(task);
        let wake = match ended.writer_waits {
            WriterWaits::No => false,
            WriterWaits::First => true,
            WriterWaits::More => ended.tasks.len() >= WRITE_BATCH || self.in_local_pool() == 0,
        };
        if wake {
            ended.writer_waits = WriterWaits::No;
            self.ended_ready.notify_one();
        }
    }

    /// How many tasks still run in (or wait for) the local pool.
    fn in_local_pool(&self) -> usize {
        self.hold.in_local_pool()
    }

    /// The writing thread: sends what the tasks that ended say, a batch at a time (see
    /// [`WRITE_BATCH`]), until the worker closes and the last is sent.
    fn write_all_ended(&self) {
        loop {
            let batch = {
                let mut ended = self.ended.lock().ignore_poison();
                while ended.tasks.is_empty() {
                    if ended.closing {
                        return;
                    }
                    ended.writer_waits = WriterWaits::First;
                    ended = self.ended_ready.wait(ended).ignore_poison();
                }
                let until = Instant::now() + LINGER;
                while ended.tasks.len() < WRITE_BATCH && !ended.closing && self.in_local_pool() > 0
                {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    ended.writer_waits = WriterWaits::More;
                    ended = self.ended_ready.wait_timeout(ended, left).ignore_poison().0;
                }
                ended.writer_waits = WriterWaits::No;
                let n = ended.tasks.len().min(WRITE_MOST);
                ended.tasks.drain(..n).collect::<Vec<_>>()
            };
            self.write_ended(batch);
        }
    }

    /// Writes the records and results of `batch` (tasks that ended), then finishes their
    /// leases: each record or result on its connection (the partition's, the pool's
    /// results stream's) in one write per connection.
    fn write_ended(&self, batch: Vec<EndedTask>) {
        let n = batch.len();
        let worker = self.worker_name();
        let mut records: HashMap<&str, (&RedisQueue, Vec<Packed>)> = HashMap::new();
        let mut results: HashMap<String, (Queue<ResultMessage>, Vec<Packed>)> = HashMap::new();
        let mut leases = Vec::with_capacity(n);
        for EndedTask {
            task,
            outcome,
            lease,
            source,
        } in batch
        {
            let task = &task;
            if let Err(e) = self.pack_record(task, &outcome, &mut records) {
                tracing::warn!(queue = %self.queue, error = %e, "writing a task's record");
            }
            let packed = self.results_of(&task.pool).and_then(|q| {
                let redis = q.redis()?;
                let message = self.result_message(task, outcome, redis, &worker);
                let packed = redis.packed_put(&message)?;
                let to = results.entry(task.pool.clone()).or_insert((q, Vec::new()));
                to.1.push((packed, None));
                Ok(())
            });
            if let Err(e) = packed {
                tracing::warn!(queue = %self.queue, pool = %task.pool, error = %e, "sending a result");
            }
            leases.push((source, lease));
        }
        for (queue, packed) in records.into_values() {
            if let Err(e) = queue.send_all(packed) {
                tracing::warn!(queue = %self.queue, error = %e, "writing tasks' records");
            }
        }
        for (pool, (queue, packed)) in results {
            let sent = queue.redis().and_then(|q| q.send_all(packed));
            if let Err(e) = sent.and_then(|()| self.keep_results(&pool)) {
                tracing::warn!(queue = %self.queue, %pool, error = %e, "sending results");
            }
        }
        for (source, lease) in leases {
            if let Ok(queue) = source.queue(&self.tasks) {
                self.settle(queue, &lease, Ok(()));
            }
        }
        self.finished(n);
    }

    /// Adds the `ended` record of `task` (if its pool keeps them) to those to write on its
    /// partition's connection.
    fn pack_record<'a>(
        &'a self,
        task: &TaskMessage,
        outcome: &Outcome,
        records: &mut HashMap<&'a str, (&'a RedisQueue, Vec<Packed>)>,
    ) -> Result<()> {
        // Taken out first: the `started` record, if it is written, is written before this
        // (on the same connection).
        self.forget_started(&(task.pool.clone(), task.id));
        let key = (task.pool.as_str(), task.id);
        let ended = self.record_command(key, task.record_ttl_s, Stage::Ended, Some(outcome))?;
        if let Some((q, command)) = ended {
            let to = records.entry(q.stream()).or_insert((q, Vec::new()));
            to.1.push((command, None));
        }
        Ok(())
    }

    /// Checks a task (taken from `source`) and starts it in a worker process, leaves it for
    /// a worker of its build, or refuses it.
    fn start(self: Arc<Self>, leased: Leased<TaskMessage>, source: Source) {
        let Leased {
            item: task,
            id: lease,
            deliveries,
        } = leased;
        let Ok(queue) = source.queue(&self.tasks) else {
            return;
        };
        if let Err(why) = task.verify(&self.authkey, queue.stream()) {
            tracing::warn!(queue = %self.queue, %why, "dead-lettered a task that does not verify");
            self.settle(queue, &lease, Err(why));
            return;
        }
        if self.terminated(&task.pool) {
            // Its pool is gone and wants nothing more: dropped unstarted.
            return self.settle(queue, &lease, Ok(()));
        }
        if task.build != self.build {
            let name = build_queue(&self.queue, &task.build);
            let why = format!(
                "worker {} runs build {}; the task needs build {}: left on queue {name:?} for \
                 a worker of that build",
                queue.consumer(),
                self.build,
                task.build
            );
            return self.leave(&task, queue, &lease, (name, why));
        }
        let policy = RetryPolicy::from_parts(task.retry);
        // This run's number: the runs before this entry, and this entry's deliveries.
        let run = task.attempt.saturating_add(deliveries);
        if run > policy.retries().saturating_add(1) {
            let lost = TaskFailure::WorkerLost {
                name: format!("a broker worker of queue {:?}", self.queue),
                pid: 0,
                detail: format!(
                    "its workers were lost {} time(s) (killed, or gone with their machine)",
                    deliveries - 1
                ),
            };
            self.report(&task, Outcome::Failed(lost));
            return self.settle(
                queue,
                &lease,
                Err("its workers were lost too many times".into()),
            );
        }
        let Some(target) = self.registry.target(&task.function) else {
            let name = function_queue(&self.queue, &self.build, &task.function);
            let why = format!(
                "worker {} has no function {:?}: left on queue {name:?} for a worker of this \
                 build that has it",
                queue.consumer(),
                task.function
            );
            return self.leave(&task, queue, &lease, (name, why));
        };
        self.started(&task);
        let started_key = (task.pool.clone(), task.id);
        self.hold.took_one();
        let runner = self.clone();
        let options = TaskOptions {
            timeout: task.timeout_ms.map(Duration::from_millis),
            priority: source.priority(),
            ..TaskOptions::default()
        };
        let submitted = self.local.submit_raw(
            target,
            // A copy: the task is kept for a retry, which sends it again.
            TaskBytes(Arc::new(task.items.clone())),
            Box::new(move |outcome| {
                let retry = run <= policy.retries()
                    && match &outcome {
                        Err(e) => matches!(
                            e.kind(),
                            crate::ErrorKind::WorkerLost | crate::ErrorKind::Timeout
                        ),
                        Ok(bytes) => {
                            policy.retries_panics()
                                && decode_failures(bytes).is_ok_and(|(f, _)| !f.is_empty())
                        }
                    };
                if retry {
                    runner.retry(&task, &lease, &source, &policy, run);
                    runner.finished_one();
                } else {
                    let outcome = match outcome {
                        Ok(bytes) => Outcome::Done(bytes.to_vec()),
                        Err(e) => Outcome::Failed(failure_of(e)),
                    };
                    // Reported by the writing thread, with the others that end meanwhile.
                    runner.ended(EndedTask {
                        task,
                        outcome,
                        lease,
                        source,
                    });
                }
            }),
            options,
        );
        if let Err(e) = submitted {
            tracing::warn!(queue = %self.queue, error = %e, "a task could not start");
            self.forget_started(&started_key);
            self.finished_one();
        }
    }

    /// Runs `task` (leased as `lease` from `source`) again after its run `run`
    /// failed: at once (its lease given back), or after the policy's wait (a new entry kept
    /// by the broker until then, the lease finished once the broker has it).
    fn retry(
        &self,
        task: &TaskMessage,
        lease: &str,
        source: &Source,
        policy: &RetryPolicy,
        run: u32,
    ) {
        self.record(task, Stage::Retrying);
        let Ok(queue) = source.queue(&self.tasks) else {
            return;
        };
        if policy.waits() {
            let again = TaskMessage::new(
                &self.authkey,
                queue.stream(),
                TaskMessage {
                    attempt: run,
                    mac: Vec::new(),
                    ..task.clone()
                },
            );
            let key = task_id(&task.pool, task.id);
            match queue.schedule(&key, &again, Due::In(policy.delay_before(run))) {
                Ok(()) => return self.settle(queue, lease, Ok(())),
                Err(e) => {
                    tracing::warn!(queue = %self.queue, error = %e, "scheduling a retry; retrying at once")
                }
            }
        }
        if let Err(e) = queue.fail_lease(lease, "its run failed; it runs again") {
            tracing::warn!(queue = %self.queue, error = %e, "giving a task back");
        }
    }

    /// Leaves `task` (leased as `lease` of `queue`), which this worker cannot run, on the
    /// queue `to` of the workers that can, and says `why` in its record and to its pool. A
    /// task left for a function is also noted in the queue's `wanted` hash, where the
    /// workers that have the function find its queue.
    fn leave(
        &self,
        task: &TaskMessage,
        queue: &RedisQueue,
        lease: &str,
        (to, why): (String, String),
    ) {
        let left = self.tasks.other(&to).and_then(|target| {
            let redis = target.leases()?;
            let again = TaskMessage::new(
                &self.authkey,
                redis.stream(),
                TaskMessage {
                    mac: Vec::new(),
                    ..task.clone()
                },
            );
            // On the broker before this lease goes.
            target.put(again)?;
            target.flush()?;
            if task.build == self.build {
                let first = self.tasks.first();
                let q = first.leases()?;
                let mut wanted = redis::cmd("HSET");
                wanted
                    .arg(record::wanted_key(q.stream()))
                    .arg(&task.function)
                    .arg(&to);
                q.send_unconfirmed(&wanted)?;
                first.flush()?;
            }
            Ok(())
        });
        match left {
            Ok(()) => {
                let outcome = Outcome::Left {
                    queue: to,
                    why: why.clone(),
                };
                self.record_outcome(task, Stage::Waiting, Some(&outcome));
                self.notify(task, outcome);
                self.settle(queue, lease, Ok(()));
            }
            Err(e) => {
                tracing::warn!(queue = %self.queue, error = %e, "leaving a task for another worker; it goes back");
                if let Err(e) = queue.fail_lease(lease, &why) {
                    tracing::warn!(queue = %self.queue, error = %e, "giving a task back");
                }
            }
        }
    }

    /// Finishes the lease `lease` of `queue`: done (`Ok`), or to the dead letters with why.
    fn settle(&self, queue: &RedisQueue, lease: &str, how: std::result::Result<(), String>) {
        let settled = match how {
            Ok(()) => queue.finish_lease(lease),
            Err(why) => queue.reject_lease(lease, &why),
        };
        if let Err(e) = settled {
            tracing::warn!(queue = %self.queue, error = %e, "finishing a task's lease");
        }
    }

    /// Writes `task`'s record at `stage`, if its pool keeps them.
    fn record(&self, task: &TaskMessage, stage: Stage) {
        self.record_outcome(task, stage, None);
    }

    /// Writes `task`'s record at `stage` with `outcome`, if its pool keeps them (after its
    /// `started` record, if that was written: see [`started`](Self::started)).
    fn record_outcome(&self, task: &TaskMessage, stage: Stage, outcome: Option<&Outcome>) {
        let record = (task.pool.clone(), task.id);
        // Taken out first: the `started` record, if it is written, is written before this.
        self.forget_started(&record);
        self.write_record(&record, task.record_ttl_s, stage, outcome);
    }

    /// Writes the record of task `id` of `pool`, kept `ttl_s` seconds (0: none).
    fn write_record(
        &self,
        (pool, id): &(String, u64),
        ttl_s: u64,
        stage: Stage,
        outcome: Option<&Outcome>,
    ) {
        let written = self
            .record_command((pool, *id), ttl_s, stage, outcome)
            .and_then(|command| match command {
                Some((q, command)) => q.send_packed(command),
                None => Ok(()),
            });
        if let Err(e) = written {
            tracing::warn!(queue = %self.queue, error = %e, "writing a task's record");
        }
    }

    /// The command that writes the record of task `id` of `pool` (kept `ttl_s` seconds), with
    /// the partition whose connection it goes on; `None` if the pool keeps no records.
    fn record_command(
        &self,
        (pool, id): (&str, u64),
        ttl_s: u64,
        stage: Stage,
        outcome: Option<&Outcome>,
    ) -> Result<Option<(&RedisQueue, Vec<u8>)>> {
        if ttl_s == 0 {
            return Ok(None);
        }
        let id = task_id(pool, id);
        let q = self.tasks.records(&id)?;
        let key = record::key(q.stream(), &id);
        let ttl = Duration::from_secs(ttl_s);
        let command = record::command(&key, &self.authkey, (stage, q.consumer(), outcome), ttl)?;
        Ok(Some((q, command)))
    }

    /// Notes that `task` started: its `started` record is written only if it still runs
    /// [`STARTED_AFTER`] from now (most tasks end sooner, and their `ended` record is all
    /// they need: one write instead of two).
    fn started(&self, task: &TaskMessage) {
        if task.record_ttl_s > 0 {
            let record = (task.pool.clone(), task.id);
            let now = Instant::now();
            let mut started = self.started.lock().ignore_poison();
            started.tasks.insert(record, (now, task.record_ttl_s));
            // Those started before are due first.
            started.first_due.get_or_insert(now + STARTED_AFTER);
        }
    }

    /// Takes the task `record` (pool and id) out of those whose `started` record waits.
    fn forget_started(&self, record: &(String, u64)) {
        self.started.lock().ignore_poison().tasks.remove(record);
    }

    /// Writes the `started` records of the tasks running for [`STARTED_AFTER`]; how long
    /// until the next one is due, if one waits.
    fn write_started(&self) -> Option<Duration> {
        let mut started = self.started.lock().ignore_poison();
        let now = Instant::now();
        // Looked through only once one is due (the loop comes here once per task taken).
        match started.first_due {
            Some(due) if due > now => return Some(due - now),
            None => return None,
            Some(_) => {}
        }
        let mut next: Option<Duration> = None;
        let mut written = Vec::new();
        for (record, (since, ttl_s)) in started.tasks.iter() {
            match STARTED_AFTER.checked_sub(now.saturating_duration_since(*since)) {
                Some(left) if !left.is_zero() => next = Some(next.map_or(left, |n| n.min(left))),
                _ => {
                    // Written with the map locked: a task that ends meanwhile writes its
                    // `ended` record after this one.
                    self.write_record(record, *ttl_s, Stage::Started, None);
                    written.push(record.clone());
                }
            }
        }
        for record in written {
            started.tasks.remove(&record);
        }
        started.first_due = next.map(|left| now + left);
        next
    }

    /// Sends `outcome` to the pool that sent `task`, and keeps it in the task's record.
    fn report(&self, task: &TaskMessage, outcome: Outcome) {
        self.record_outcome(task, Stage::Ended, Some(&outcome));
        self.notify(task, outcome);
    }

    /// Sends `outcome` to the pool that sent `task`.
    fn notify(&self, task: &TaskMessage, outcome: Outcome) {
        let sent = self.results_of(&task.pool).and_then(|results| {
            let message = self.result_message(task, outcome, results.redis()?, &self.worker_name());
            results.put(message)?;
            self.keep_results(&task.pool)
        });
        if let Err(e) = sent {
            tracing::warn!(queue = %self.queue, pool = %task.pool, error = %e, "sending a result");
        }
    }

    /// The name results give as their worker's.
    fn worker_name(&self) -> String {
        self.tasks
            .first()
            .leases()
            .map(|l| l.consumer().to_string())
            .unwrap_or_default()
    }

    /// `outcome` of `task` as a result for its pool's results stream `results`, signed.
    fn result_message(
        &self,
        task: &TaskMessage,
        outcome: Outcome,
        results: &RedisQueue,
        worker: &str,
    ) -> ResultMessage {
        ResultMessage::new(
            &self.authkey,
            results.stream(),
            ResultMessage {
                v: FORMAT,
                slot: task.slot,
                id: task.id,
                worker: worker.to_string(),
                outcome,
                mac: Vec::new(),
            },
        )
    }

    /// The results stream of `pool`.
    ///
    /// A results stream lives a week past the last result written to it: a pool that went
    /// without deleting it (killed), or a result that came after its pool deleted it, leaves
    /// nothing for ever. The time is pushed back at most once a minute per pool.
    fn results_of(&self, pool: &str) -> Result<Queue<ResultMessage>> {
        let mut streams = self.results.lock().ignore_poison();
        if !streams.contains_key(pool) {
            if streams.len() >= RESULT_STREAMS {
                streams.clear();
            }
            let q = results_of(&self.url, &self.queue, pool)?;
            let long_ago = Instant::now()
                .checked_sub(RESULTS_TTL_EVERY)
                .unwrap_or_else(Instant::now);
            streams.insert(pool.to_string(), (q, long_ago));
        }
        Ok(streams[pool].0.clone())
    }

    /// Pushes back the time to live of `pool`'s results stream after a result was written to
    /// it (at most once a minute).
    fn keep_results(&self, pool: &str) -> Result<()> {
        let mut streams = self.results.lock().ignore_poison();
        let Some((q, pushed)) = streams.get_mut(pool) else {
            return Ok(());
        };
        if pushed.elapsed() >= RESULTS_TTL_EVERY {
            let redis = q.redis()?;
            let mut expire = redis::cmd("EXPIRE");
            expire.arg(redis.stream()).arg(RESULTS_TTL.as_secs());
            redis.send_unconfirmed(&expire)?;
            *pushed = Instant::now();
        }
        Ok(())
    }
}

/// Why a task has no results, as the pool is told.
fn failure_of(e: Error) -> TaskFailure {
    match e {
        Error::WorkerLost { name, pid, detail } => TaskFailure::WorkerLost { name, pid, detail },
        Error::Timeout { what, after } => TaskFailure::TimedOut {
            what,
            after_ms: u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
        },
        other => TaskFailure::Broken(other.to_string()),
    }
}
