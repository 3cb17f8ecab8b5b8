//! A manager server in a child process of its own (CPython's `BaseManager.start()`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ManagerClient, ManagerServer};
use crate::connection::Address;
use crate::connection::{Connection, Pipe};
use crate::error::{Error, Result};
use crate::process::Process;

/// How long the child may take to bind and report its address.
const START_PATIENCE: Duration = Duration::from_secs(30);
/// How long a server asked to shut down may take to exit before it is killed.
const SHUTDOWN_PATIENCE: Duration = Duration::from_secs(5);

/// An [`Address`] as it travels to the child.
#[derive(Serialize, Deserialize)]
enum Where {
    Tcp(String),
    Unix(PathBuf),
}

impl Where {
    fn of(a: &Address) -> Where {
        match a {
            Address::Tcp(s) => Where::Tcp(s.to_string()),
            Address::Unix(p) => Where::Unix(p.clone()),
        }
    }

    fn address(&self) -> Result<Address> {
        match self {
            Where::Tcp(s) => Address::tcp(s.as_str()),
            Where::Unix(p) => Ok(Address::unix(p.clone())),
        }
    }
}

/// What the child reports: its address, or why it could not serve.
type Started = std::result::Result<Where, String>;

/// A manager server running in a child process, started by [`ManagerServer::start`]. Dropping
/// it kills the server (as CPython's manager is shut down when it is collected); the child is a
/// daemon, so it also dies with this process.
#[derive(Debug)]
pub struct ManagerProcess {
    process: Process<()>,
    address: Address,
    authkey: Vec<u8>,
}

impl ManagerServer {
    /// Starts a manager server in a child process (CPython's `BaseManager.start()`), bound
    /// to `address` (`127.0.0.1:0` picks a free port) with `authkey`. `setup` runs in the child
    /// before it serves: register queues, dicts and user types there (it is a `fn` item or a
    /// closure that captures nothing, like any process target).
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{Address, ManagerClient, ManagerServer};
    ///
    /// let server = ManagerServer::start(&Address::tcp("127.0.0.1:0")?, b"key", |s| {
    ///     s.register_queue::<i64>("get_task_queue");
    /// })?;
    /// let client = ManagerClient::connect(server.address(), b"key")?;
    /// let tasks = client.queue::<i64>("get_task_queue")?;
    /// tasks.put(&7)?;
    /// assert_eq!(tasks.len(), 1);
    /// server.shutdown()?;
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// If the child cannot start, or cannot bind: the child's error.
    pub fn start<S>(address: &Address, authkey: &[u8], setup: S) -> Result<ManagerProcess>
    where
        S: Fn(&mut ManagerServer) + Copy + Send + Sync + 'static,
    {
        let (ours, theirs) = Pipe::new::<Started>(true)?;
        let serve = move |(report, at, key): (Connection<Started>, Where, Vec<u8>)| {
            let bound = at
                .address()
                .and_then(|a| ManagerServer::bind(&a, &key))
                .map_err(|e| e.to_string());
            match bound {
                Ok(mut server) => {
                    setup(&mut server);
                    let _ = report.send(&Ok(Where::of(server.address())));
                    drop(report);
                    server.serve_forever();
                }
                Err(why) => {
                    let _ = report.send(&Err(why));
                }
            }
        };
        let mut process = Process::new(serve, (theirs, Where::of(address), authkey.to_vec()))
            .name("ManagerServer")
            .daemon(true)
            .start()?;
        let started = ours.recv_timeout(START_PATIENCE).inspect_err(|_| {
            let _ = process.kill();
            let _ = process.join_timeout(SHUTDOWN_PATIENCE);
        })?;
        let address = match started {
            Ok(at) => at.address()?,
            Err(why) => {
                let _ = process.join_timeout(SHUTDOWN_PATIENCE);
                return Err(Error::invalid("manager", format!("cannot serve: {why}")));
            }
        };
        Ok(ManagerProcess {
            process,
            address,
            authkey: authkey.to_vec(),
        })
    }
}

impl ManagerProcess {
    /// The address clients connect to.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The server process's pid.
    pub fn pid(&self) -> i32 {
        self.process.pid()
    }

    /// Asks the server to shut down (a client's `shutdown` request, as CPython's manager
    /// does) and waits for its process to end; kills it if it does not within 5 s.
    ///
    /// # Errors
    /// If the process could not be waited for.
    pub fn shutdown(mut self) -> Result<()> {
        let asked = ManagerClient::connect(&self.address, &self.authkey).and_then(|c| c.shutdown());
        if asked.is_err() || self.process.join_timeout(SHUTDOWN_PATIENCE).is_err() {
            let _ = self.process.kill();
        }
        self.process.join_timeout(SHUTDOWN_PATIENCE).or_else(|e| {
            // Killed after all: that is a shutdown too.
            if self.process.exitcode().is_some() {
                Ok(())
            } else {
                Err(e)
            }
        })
    }
}

impl Drop for ManagerProcess {
    fn drop(&mut self) {
        if self.process.exitcode().is_none() {
            let _ = self.process.kill();
            let _ = self.process.join_timeout(SHUTDOWN_PATIENCE);
        }
    }
}
