//! The functions a broker pool may send to other machines, each under a stable name.

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::pool::task::{TaskTarget, TaskTargetId};

/// The longest name a function may be registered under.
pub(super) const MAX_NAME: usize = 256;

/// The functions a [`Pool`](crate::Pool) on a broker may run on other machines, each under a
/// name of its own (`"resize"`, `"thumbnails::render"`).
///
/// A task travels as the name of its function, never as code or an address: a worker runs
/// only what its own registry names, in a build identical to the submitter's. Build the same
/// registry on both sides, in one function of your program that both call.
///
/// # Examples
///
/// ```
/// use multiproc::TaskRegistry;
///
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// fn tasks() -> TaskRegistry {
///     TaskRegistry::new()
///         .register("square", square)
///         .register("shout", |s: String| s.to_uppercase())
/// }
///
/// assert_eq!(tasks().names(), ["shout", "square"]);
/// ```
#[derive(Clone, Default)]
pub struct TaskRegistry {
    by_name: HashMap<String, TaskTarget>,
    by_target: HashMap<TaskTargetId, String>,
    /// Names given twice or that cannot be used, reported when a pool or worker is built.
    refused: Vec<String>,
}

impl fmt::Debug for TaskRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskRegistry")
            .field("names", &self.names())
            .finish_non_exhaustive()
    }
}

impl TaskRegistry {
    /// An empty registry.
    pub fn new() -> TaskRegistry {
        TaskRegistry::default()
    }

    /// Adds `f` under `name`. A `fn` item or a closure that captures nothing, as for
    /// [`Pool::map`](crate::Pool::map). A name given twice, an empty one or one longer than
    /// 256 bytes is an error when the pool or worker is built.
    pub fn register<F, A, R>(mut self, name: &str, f: F) -> TaskRegistry
    where
        F: Fn(A) -> R + Copy + 'static,
        A: DeserializeOwned + 'static,
        R: Serialize + 'static,
    {
        let target = TaskTarget::of(&f);
        if name.is_empty() || name.len() > MAX_NAME {
            self.refused
                .push(format!("{name:?}: a name is 1 to {MAX_NAME} bytes"));
        } else if self.by_name.contains_key(name) {
            self.refused.push(format!("{name:?} is registered twice"));
        } else {
            self.by_name.insert(name.to_string(), target);
            self.by_target.insert(target.id(), name.to_string());
        }
        self
    }

    /// The registered names, in order.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The registry, or why it cannot be used.
    pub(super) fn check(&self) -> Result<()> {
        if self.refused.is_empty() {
            Ok(())
        } else {
            Err(Error::invalid("task registry", self.refused.join("; ")))
        }
    }

    /// The name `target` is registered under.
    pub(super) fn name_of(&self, target: TaskTargetId) -> Option<&str> {
        self.by_target.get(&target).map(String::as_str)
    }

    /// The function registered under `name`.
    pub(super) fn target(&self, name: &str) -> Option<TaskTarget> {
        self.by_name.get(name).copied()
    }
}
