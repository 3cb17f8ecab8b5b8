//! A child process in a process group of its own, killed with the whole group when the test
//! ends (passes or fails); shared by the tests that start workers and runners.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// How long a child may take to end before a test calls it a hang.
const PATIENCE: Duration = Duration::from_secs(60);

/// A child in its own process group.
pub(crate) struct Group(Option<Child>);

impl Group {
    /// Starts `cmd` in a new process group.
    pub(crate) fn spawn(cmd: &mut Command) -> Group {
        Group(Some(cmd.process_group(0).spawn().expect("spawn")))
    }

    /// The child, while it is not finished or killed.
    pub(crate) fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("a child")
    }

    /// Waits (at most a minute) for it to end, with its output.
    pub(crate) fn finish(mut self) -> Output {
        let deadline = Instant::now() + PATIENCE;
        while self.child().try_wait().expect("try_wait").is_none() {
            assert!(Instant::now() < deadline, "hung");
            std::thread::park_timeout(Duration::from_millis(20));
        }
        self.0
            .take()
            .expect("a child")
            .wait_with_output()
            .expect("output")
    }

    /// Kills it and its group now.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            // SAFETY: killpg takes a process-group id and a signal; the group is our child's.
            unsafe { libc::killpg(child.id() as i32, libc::SIGKILL) };
            let _ = child.wait();
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}
