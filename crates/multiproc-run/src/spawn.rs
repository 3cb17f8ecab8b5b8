//! Starting a job's process: `posix_spawn(3)` with everything that is the same for every job
//! prepared once.
//!
//! `std::process::Command` builds a fresh environment block (a copy of the whole environment
//! sorted into a map) every time a variable is set, and opens `/dev/null` for each spawn. A run
//! of short jobs spawns thousands of times a second, so the [`Spawner`] keeps the environment
//! as ready `NAME=value` strings, the spawn attributes and one `/dev/null` descriptor, and a
//! job only adds its `PARALLEL_SEQ` and `PARALLEL_JOBSLOT` and its pipes.

use std::ffi::{CStr, CString, OsString};
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::fcntl::OFlag;
use nix::spawn::{PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::unistd::Pid;

/// The variables set per job, left out of the shared environment.
const PER_JOB: [&[u8]; 2] = [b"PARALLEL_SEQ", b"PARALLEL_JOBSLOT"];

/// A started job.
pub(crate) struct Spawned {
    /// Its pid, which is also its process group.
    pub(crate) pid: Pid,
    /// The read end of its stdout.
    pub(crate) out: File,
    /// The read end of its stderr.
    pub(crate) err: File,
    /// Our copies of the write ends, kept until the job is reaped (see [`Spawner::spawn`]).
    pub(crate) writers: [OwnedFd; 2],
    /// The write end of its stdin, when it was spawned with one (`--pipe`).
    pub(crate) input: Option<File>,
}

/// What every job is spawned with.
pub(crate) struct Spawner {
    /// Our environment, as `NAME=value`, without [`PER_JOB`].
    env: Vec<CString>,
    /// `/dev/null`, every job's stdin.
    devnull: OwnedFd,
    /// A process group of its own, no signal blocked, SIGPIPE back to its default.
    attr: PosixSpawnAttr,
}

impl Spawner {
    /// Prepares what is shared: our environment as it is now, `/dev/null`, the attributes.
    pub(crate) fn new() -> std::io::Result<Spawner> {
        let env = std::env::vars_os()
            .filter(|(k, _)| !PER_JOB.contains(&k.as_bytes()))
            .filter_map(|(k, v)| {
                let mut kv = OsString::with_capacity(k.len() + v.len() + 1);
                kv.push(&k);
                kv.push("=");
                kv.push(&v);
                CString::new(kv.into_encoded_bytes()).ok()
            })
            .collect();
        let devnull = File::open("/dev/null")?.into();
        let mut attr = PosixSpawnAttr::init()?;
        attr.set_flags(
            PosixSpawnFlags::POSIX_SPAWN_SETPGROUP
                | PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK
                | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF,
        )?;
        attr.set_pgroup(Pid::from_raw(0))?;
        attr.set_sigmask(&SigSet::empty())?;
        // We ignore SIGPIPE (Rust does, to get EPIPE): the job must not inherit that.
        let mut default = SigSet::empty();
        default.add(Signal::SIGPIPE);
        attr.set_sigdefault(&default)?;
        Ok(Spawner { env, devnull, attr })
    }

    /// Starts `program` with `argv` (`argv[0]` included) as job `seq` in slot `slot`: stdin
    /// from `/dev/null` (from a pipe when `piped`), stdout and stderr into pipes, in a process
    /// group of its own.
    ///
    /// The caller keeps the pipes' write ends ([`Spawned::writers`]) until it has reaped the
    /// job: the read ends then never see end of file, so a job that prints nothing wakes the
    /// runner once (its SIGCHLD), not two or three times (each pipe's end of file comes a
    /// moment before the exit can be reaped).
    /// `search` looks `program` up in `PATH` (as `execvp` does) when it has no `/`.
    pub(crate) fn spawn(
        &self,
        program: &CStr,
        search: bool,
        argv: &[CString],
        seq: u64,
        slot: usize,
        piped: bool,
    ) -> std::io::Result<Spawned> {
        let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        // Our end does not block: the runner writes what the pipe takes as poll says.
        let stdin = if piped {
            Some(nix::unistd::pipe2(OFlag::O_CLOEXEC)?)
        } else {
            None
        };
        let mut actions = PosixSpawnFileActions::init()?;
        match &stdin {
            Some((r, _)) => actions.add_dup2(r.as_raw_fd(), 0)?,
            None => actions.add_dup2(self.devnull.as_raw_fd(), 0)?,
        }
        actions.add_dup2(out_w.as_raw_fd(), 1)?;
        actions.add_dup2(err_w.as_raw_fd(), 2)?;
        let seq_var = CString::new(format!("PARALLEL_SEQ={seq}"))?;
        let slot_var = CString::new(format!("PARALLEL_JOBSLOT={slot}"))?;
        let env: Vec<&CStr> = self
            .env
            .iter()
            .map(CString::as_c_str)
            .chain([seq_var.as_c_str(), slot_var.as_c_str()])
            .collect();
        let spawned = if search {
            nix::spawn::posix_spawnp(program, &actions, &self.attr, argv, &env)
        } else {
            nix::spawn::posix_spawn(program, &actions, &self.attr, argv, &env)
        };
        let pid = spawned.map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
        if pid.as_raw() <= 0 {
            return Err(std::io::Error::other(format!(
                "posix_spawn returned pid {}",
                pid.as_raw()
            )));
        }
        Ok(Spawned {
            pid,
            out: File::from(out_r),
            err: File::from(err_r),
            writers: [out_w, err_w],
            input: match stdin {
                Some((_, w)) => {
                    nix::fcntl::fcntl(&w, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
                    Some(File::from(w))
                }
                None => None,
            },
        })
    }
}

/// `bytes` as a C string, or an error naming what it is for (a NUL byte cannot be passed).
pub(crate) fn c_string(bytes: Vec<u8>, what: &str) -> std::io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("the {what} contains a NUL byte"),
        )
    })
}
