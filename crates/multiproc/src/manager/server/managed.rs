//! User objects served by a [`ManagerServer`](super::ManagerServer): the `register(typeid,
//! callable)` of CPython's `BaseManager`, with Rust types implementing [`Managed`].

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::objects::{Reply, ServedObject};
use crate::error::{Error, Result};
use crate::pickle::{self, Value};

/// An object a manager serves to its clients, method by method (a CPython client sees it
/// through an AutoProxy with these methods).
///
/// # Examples
///
/// ```
/// use std::sync::Mutex;
/// use multiproc::{Managed, MethodCall};
///
/// #[derive(Default)]
/// struct Counter(Mutex<i64>);
///
/// impl Managed for Counter {
///     fn methods(&self) -> &'static [&'static str] {
///         &["increment", "value"]
///     }
///     fn call(&self, method: &str, call: &mut MethodCall<'_>) -> multiproc::Result<()> {
///         let mut n = self.0.lock().unwrap();
///         match method {
///             "increment" => *n += call.arg::<i64>(0, "by").unwrap_or(1),
///             _ => {}
///         }
///         call.ret(&*n)
///     }
/// }
/// ```
pub trait Managed: Send + Sync + 'static {
    /// The method names clients may call.
    fn methods(&self) -> &'static [&'static str];

    /// Runs `method`: read arguments from `call` and set its return value or exception.
    ///
    /// # Errors
    /// An error becomes a remote exception for the client (`RuntimeError` with its message).
    fn call(&self, method: &str, call: &mut MethodCall<'_>) -> Result<()>;
}

/// One method call on a [`Managed`] object: its arguments and what it returns.
pub struct MethodCall<'a> {
    args: &'a [Value],
    kwds: &'a [(Value, Value)],
    reply: Option<Reply>,
}

impl fmt::Debug for MethodCall<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MethodCall")
            .field("args", &self.args.len())
            .field("kwds", &self.kwds.len())
            .finish()
    }
}

impl<'a> MethodCall<'a> {
    /// A call with these arguments (also what a factory of
    /// [`register_with_args`](super::ManagerServer::register_with_args) reads).
    pub(crate) fn new(args: &'a [Value], kwds: &'a [(Value, Value)]) -> MethodCall<'a> {
        MethodCall {
            args,
            kwds,
            reply: None,
        }
    }

    /// Positional argument `index`, or the keyword argument `name`, as a `T`.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) if it is missing;
    /// [`ErrorKind::Serialization`](crate::ErrorKind::Serialization) if it is not a `T`.
    pub fn arg<T: DeserializeOwned>(&self, index: usize, name: &str) -> Result<T> {
        let value = self.args.get(index).or_else(|| {
            self.kwds
                .iter()
                .find(|(k, _)| k.as_str() == Some(name))
                .map(|(_, v)| v)
        });
        match value {
            Some(v) => Ok(pickle::from_value(v.clone())?),
            None => Err(Error::invalid(
                "method call",
                format!("missing argument {name:?}"),
            )),
        }
    }

    /// The number of positional arguments.
    pub fn arg_count(&self) -> usize {
        self.args.len()
    }

    /// Sets the return value.
    ///
    /// # Errors
    /// [`ErrorKind::Serialization`](crate::ErrorKind::Serialization) if it does not map onto
    /// Python's data model.
    pub fn ret<T: Serialize>(&mut self, value: &T) -> Result<()> {
        self.reply = Some(Reply::Return(pickle::to_value(value)?));
        Ok(())
    }

    /// Raises a Python built-in exception in the client (`"ValueError"`, `"KeyError"`, …).
    pub fn raise(&mut self, exception: &str, message: &str) {
        self.reply = Some(Reply::Error(Value::reduce(
            "builtins",
            exception,
            vec![Value::str(message)],
        )));
    }
}

/// Adapts a [`Managed`] object to the server's object table.
pub(crate) struct ManagedObject<M: ?Sized>(pub(crate) std::sync::Arc<M>);

impl<M: Managed + ?Sized> ServedObject for ManagedObject<M> {
    fn exposed(&self) -> &'static [&'static str] {
        self.0.methods()
    }

    fn call(&self, method: &str, args: &[Value], kwds: &[(Value, Value)]) -> Reply {
        if !self.0.methods().contains(&method) {
            return Reply::Traceback(format!("AttributeError: method {method:?} is not exposed"));
        }
        let mut call = MethodCall::new(args, kwds);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.0.call(method, &mut call)
        }));
        match outcome {
            Ok(Ok(())) => call.reply.unwrap_or(Reply::Return(Value::None)),
            Ok(Err(e)) => Reply::Error(Value::reduce(
                "builtins",
                "RuntimeError",
                vec![Value::str(e.to_string())],
            )),
            Err(_) => Reply::Traceback(format!("the method {method:?} panicked")),
        }
    }

    fn repr(&self) -> String {
        format!("<managed object with methods {:?}>", self.0.methods())
    }
}
