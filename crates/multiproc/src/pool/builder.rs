//! [`PoolBuilder`]: a pool's settings, and starting it over the local transport.

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Pool;
use super::supervisor::{Limits, Supervisor, encode_args};
use super::task::TaskTarget;
use super::transport::{LocalTransport, WorkerSetup};
use super::worker::TaskBytes;
use crate::error::{Error, Result};
use crate::process::StartMethod;

/// A pool's settings.
#[derive(Clone)]
struct Config {
    processes: usize,
    initializer: Option<(TaskTarget, TaskBytes)>,
    max_tasks_per_child: u64,
    task_timeout: Option<Duration>,
    retries: u32,
    start_method: StartMethod,
}

/// Sets up a [`Pool`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// fn setup(greeting: String) { let _ = greeting; }
///
/// let pool = multiproc::Pool::builder()
///     .processes(2)
///     .initializer(setup, "hello".to_string())
///     .max_tasks_per_child(100)
///     .task_timeout(Duration::from_secs(60))
///     .build()?;
/// assert_eq!(pool.apply(|x: u32| x + 1, 41)?, 42);
/// # Ok::<(), multiproc::Error>(())
/// ```
#[must_use = "a builder does nothing until built"]
pub struct PoolBuilder {
    config: Config,
    error: Option<Error>,
}

impl fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("processes", &self.config.processes)
            .finish_non_exhaustive()
    }
}

impl PoolBuilder {
    pub(crate) fn new() -> PoolBuilder {
        PoolBuilder {
            config: Config {
                processes: crate::cpu_count(),
                initializer: None,
                max_tasks_per_child: 0,
                task_timeout: None,
                retries: 0,
                start_method: StartMethod::default(),
            },
            error: None,
        }
    }

    /// The number of worker processes (default: [`cpu_count`](crate::cpu_count)).
    pub fn processes(mut self, n: usize) -> Self {
        self.config.processes = n;
        self
    }

    /// A function each worker runs once when it starts (Python's `initializer`/`initargs`).
    pub fn initializer<F, A, R>(mut self, f: F, args: A) -> Self
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + 'static,
    {
        match encode_args(&[args]) {
            Ok(bytes) => self.config.initializer = Some((TaskTarget::of(&f), bytes)),
            Err(e) => self.error = Some(e),
        }
        self
    }

    /// Replace each worker after it ran this many tasks (Python's `maxtasksperchild`; a chunk
    /// of `map` counts as one task).
    pub fn max_tasks_per_child(mut self, n: u64) -> Self {
        self.config.max_tasks_per_child = n;
        self
    }

    /// Kill a worker whose task runs longer than this and fail the task with
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) (not in CPython).
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.config.task_timeout = Some(timeout);
        self
    }

    /// Run a task again, up to `n` times, when its worker dies or times out under it.
    pub fn retries(mut self, n: u32) -> Self {
        self.config.retries = n;
        self
    }

    /// How workers are started (default [`StartMethod::Spawn`]).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.config.start_method = method;
        self
    }

    /// Starts the workers.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) for 0 processes; a worker
    /// that cannot start; an initializer argument that cannot be serialized.
    pub fn build(self) -> Result<Pool> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.config.processes == 0 {
            return Err(Error::invalid("pool", "needs at least one process"));
        }
        let config = self.config;
        let setup = WorkerSetup {
            initializer: config.initializer.map(|(target, args)| (target.id(), args)),
            max_tasks: config.max_tasks_per_child,
            start_method: config.start_method,
        };
        let limits = Limits {
            processes: config.processes,
            task_timeout: config.task_timeout,
            retries: config.retries,
        };
        let transport = LocalTransport::new(setup)?;
        let (supervisor, handler) = Supervisor::start(Box::new(transport), limits)?;
        Ok(Pool::from_parts(supervisor, handler))
    }
}
