//! A [`Pool`] whose workers are on other machines (feature `broker`): the pool's tasks go to a
//! Redis stream, [`BrokerWorker`]s (runs of the same program anywhere) take and run them, and
//! their results come back on a stream of the pool's own.
//!
//! - `registry.rs`: [`TaskRegistry`], the functions that may travel, by name.
//! - `message.rs`: tasks and results on the wire, signed with the pool's authkey.
//! - `transport.rs`: the submitting side, the pool's [`Transport`](super::transport::Transport).
//! - `worker.rs`: [`BrokerWorker`], the working side; `hold.rs`: how many tasks it holds.
//! - `schedule.rs`: the two task streams (one per priority), the tasks kept for later, and
//!   taking a task back by id.
//! - `record.rs`: each task's signed record beside the stream; `lookup.rs`: [`TaskRecords`],
//!   which reads them (and cancels) by task id.
//!
//! # Delivery
//! Each task stream is a broker [`JoinableQueue`](crate::JoinableQueue): a worker leases each
//! task until its result is sent (at least once). A worker that dies loses its leases, and the
//! tasks go to another worker after the queue's lease; a task run more times than its retry
//! policy allows is reported as `WorkerLost` and goes to the dead letters.

/// The setters of what a pool and its workers share ([`Common`]), on both builders.
macro_rules! common_setters {
    () => {
        /// The key every task and result is signed with, the same for a pool and its
        /// workers. Required.
        pub fn authkey(mut self, key: impl Into<Vec<u8>>) -> Self {
            self.common.authkey = key.into();
            self
        }

        /// The functions, under the names the pool and its workers know them by.
        pub fn tasks(mut self, registry: TaskRegistry) -> Self {
            self.common.registry = registry;
            self
        }

        /// The queue's lease (see
        /// [`BrokerQueueBuilder::lease`](crate::BrokerQueueBuilder::lease)): how long a task
        /// whose worker died waits before another worker takes it. Unset, the queue's.
        pub fn lease(mut self, lease: Duration) -> Self {
            self.common.lease = Some(lease);
            self
        }

        /// Spreads the queue's normal tasks over `n` streams (1 to 256), each its own hash
        /// slot on a Redis Cluster, so that its primaries share the load; every worker reads
        /// them all. The queue keeps the count it was first used with: unset, that one (1 for
        /// a new queue); another is refused.
        pub fn partitions(mut self, n: u32) -> Self {
            self.common.partitions = Some(n);
            self
        }
    };
}

mod hold;
mod lookup;
mod message;
mod record;
mod registry;
mod schedule;
mod transport;
mod worker;

pub use lookup::{TaskRecords, TaskStatus};
pub use registry::TaskRegistry;
pub use worker::{BrokerWorker, WorkerStopper};

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use self::schedule::TaskQueues;
use self::transport::{BrokerTransport, Shared};
use super::Pool;
use super::supervisor::{Limits, Supervisor};
use crate::error::{Error, Result};
use crate::pool::RetryPolicy;

/// Deliveries before the queue itself would dead-letter a task: high, so that the workers
/// apply each pool's `retries` (and report the loss to the pool) first.
const MAX_DELIVERIES: u32 = 1000;

/// How long a pool's results stream lives past the last result written to it (by a worker,
/// or by a canceller).
const RESULTS_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The queue where the workers of build `build` find the tasks that workers of other builds
/// left for them: `<queue>@<digest of the build>`.
fn build_queue(queue: &str, build: &str) -> String {
    format!("{queue}@{}", short_digest(build))
}

/// The queue where a task of build `build` whose function some workers of that build lack
/// waits for one that has it: `<queue>@<digest of the build>~<digest of the function>`.
fn function_queue(queue: &str, build: &str, function: &str) -> String {
    format!("{}~{}", build_queue(queue, build), short_digest(function))
}

/// The first 8 bytes of the SHA-256 of `text`, in hex: a name safe in a key.
fn short_digest(text: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(text.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The id of task `id` of pool `pool`, as its record is named.
fn task_id(pool: &str, id: u64) -> String {
    format!("{pool}-{id}")
}

/// Tasks a broker pool keeps in flight by default (sent and not yet answered).
const DEFAULT_WINDOW: usize = 256;

/// The results stream of the pool `pool` sending to `queue`.
fn results_name(queue: &str, pool: &str) -> String {
    format!("{queue}:results:{pool}")
}

/// This build, as the tasks name it: a digest of the executable and the crate's version. Only
/// a worker of the very same build runs a task (the arguments' encoding and the functions
/// are this build's).
fn build_id() -> &'static str {
    static BUILD: OnceLock<String> = OnceLock::new();
    BUILD.get_or_init(|| {
        use sha2::Digest;
        let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        // The linker's digest when it left one (instant); else our own of the file.
        let digest = match crate::platform::gnu_build_id() {
            Some(id) => hex(&id),
            None => std::env::current_exe()
                .and_then(std::fs::read)
                .map(|bytes| hex(&sha2::Sha256::digest(&bytes)[..12]))
                .unwrap_or_else(|e| format!("unreadable-{e}")),
        };
        // For tests only: a run that must look like another build.
        let salt = std::env::var("MULTIPROC_TEST_BUILD_SALT").unwrap_or_default();
        format!("{}-{digest}{salt}", env!("CARGO_PKG_VERSION"))
    })
}

/// What a pool and its workers both have: the queue, the key and the functions.
#[derive(Debug)]
struct Common {
    url: String,
    queue: String,
    authkey: Vec<u8>,
    registry: TaskRegistry,
    lease: Option<Duration>,
    partitions: Option<u32>,
}

impl Common {
    fn new(url: String, queue: String) -> Common {
        Common {
            url,
            queue,
            authkey: Vec::new(),
            registry: TaskRegistry::new(),
            lease: None,
            partitions: None,
        }
    }

    /// Checks the settings of `what` and connects to the task streams.
    fn connect(&self, what: &str) -> Result<TaskQueues> {
        if self.authkey.is_empty() {
            return Err(Error::invalid(
                what,
                "needs the authkey (.authkey(...)): every task and result is signed with it",
            ));
        }
        self.registry.check()?;
        TaskQueues::open(&self.url, &self.queue, self.lease, self.partitions)
    }

    /// [`connect`](Self::connect), with the queue of the tasks left for this build by workers
    /// of others (a worker's).
    fn connect_worker(&self, what: &str) -> Result<TaskQueues> {
        let mut tasks = self.connect(what)?;
        tasks.own_build = Some(tasks.open_queue(&build_queue(&self.queue, build_id()))?);
        Ok(tasks)
    }
}

/// A random id for a pool.
fn pool_id() -> String {
    let mut random = [0u8; 8];
    let _ = getrandom::fill(&mut random);
    random.iter().map(|b| format!("{b:02x}")).collect()
}

/// Sets up a [`Pool`] whose tasks run on [`BrokerWorker`]s (from [`Pool::broker`]).
///
/// # Examples
///
/// ```no_run
/// use multiproc::{Pool, TaskRegistry};
///
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// fn tasks() -> TaskRegistry {
///     TaskRegistry::new().register("square", square)
/// }
///
/// // Workers run `BrokerWorker::new(url, "squares").authkey(..).tasks(tasks()).run()`.
/// let pool = Pool::broker("redis://127.0.0.1:6379/0", "squares")
///     .authkey(b"shared secret".to_vec())
///     .tasks(tasks())
///     .build()?;
/// assert_eq!(pool.map(square, 0..4)?, [0, 1, 4, 9]);
/// # Ok::<(), multiproc::Error>(())
/// ```
#[must_use = "a builder does nothing until built"]
pub struct BrokerPoolBuilder {
    common: Common,
    retry: RetryPolicy,
    window: usize,
    record_ttl: Duration,
    task_timeout: Option<Duration>,
}

impl fmt::Debug for BrokerPoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerPoolBuilder")
            .field("url", &self.common.url)
            .field("queue", &self.common.queue)
            .field("tasks", &self.common.registry)
            .finish_non_exhaustive()
    }
}

/// The most tasks of the in-flight window one slot holds.
const SLOT_TASKS: usize = 16;

impl BrokerPoolBuilder {
    pub(crate) fn new(url: String, queue: String) -> BrokerPoolBuilder {
        BrokerPoolBuilder {
            common: Common::new(url, queue),
            retry: RetryPolicy::new(0),
            window: DEFAULT_WINDOW,
            record_ttl: record::DEFAULT_TTL,
            task_timeout: None,
        }
    }

    common_setters!();

    /// Run a task again, at once, up to `n` times, when the worker process running it dies
    /// (on its machine, or with its machine) or it runs out of time: a
    /// [`retry`](Self::retry) policy without backoff.
    pub fn retries(mut self, n: u32) -> Self {
        self.retry = RetryPolicy::new(n);
        self
    }

    /// How the pool's tasks are retried: how often, after what wait (backoff and jitter),
    /// and whether a panic counts (a task's own [`TaskCall::retry`](crate::TaskCall::retry)
    /// applies instead). A retry that waits is kept by the broker meanwhile.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Kills a task that runs longer, on its worker, and fails it with
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) (a worker's own
    /// [`task_timeout`](BrokerWorker::task_timeout), if shorter, applies instead).
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.task_timeout = Some(timeout);
        self
    }

    /// How long each task's record (its state, then its result) stays on the broker after it
    /// was last written, for [`TaskRecords`] (default a day; whole seconds; zero: no
    /// records).
    pub fn result_ttl(mut self, ttl: Duration) -> Self {
        self.record_ttl = ttl;
        self
    }

    /// How many tasks (chunks of a `map`) are sent ahead of their results (default 256).
    pub fn in_flight(mut self, n: usize) -> Self {
        self.window = n;
        self
    }

    /// Connects to the broker and starts the pool.
    ///
    /// # Errors
    /// No authkey, a registry with refused names, an in-flight window of 0, a broker that
    /// cannot be reached.
    pub fn build(self) -> Result<Pool> {
        if self.window == 0 {
            return Err(Error::invalid(
                "broker pool",
                "needs room for one task in flight",
            ));
        }
        let tasks = self.common.connect("broker pool")?;
        let Common {
            url,
            queue,
            authkey,
            registry,
            ..
        } = self.common;
        let pool = pool_id();
        let results = schedule::results_of(&url, &queue, &pool)?;
        let shared = Shared {
            tasks,
            results_stream: results.redis()?.stream().to_string(),
            results,
            pool,
            registry,
            authkey,
            build: build_id().to_string(),
            retry: self.retry,
            record_ttl_s: self.record_ttl.as_secs(),
            timeout_ms: self
                .task_timeout
                .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1)),
            cancelled: Default::default(),
            refusals_seen: std::sync::Mutex::new(std::time::Instant::now()),
            left_queue: build_queue(&queue, build_id()),
            latest_start: Default::default(),
            held: Default::default(),
        };
        // The window as slots of up to 16 tasks each: the pool picks a slot for each task
        // sent, and fewer slots are fewer to look through.
        let ahead = self.window.min(SLOT_TASKS);
        let limits = Limits {
            processes: self.window.div_ceil(ahead),
            task_timeout: None,
            retries: 0,
        };
        let transport = BrokerTransport {
            shared: Arc::new(shared),
            ahead,
        };
        let (supervisor, handler) = Supervisor::start(Box::new(transport), limits)?;
        Ok(Pool::from_parts(supervisor, handler))
    }
}
