//! The child side: from the bootstrap message to the report and exit.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, Ordering};

use serde::{Deserialize, Serialize};

use super::target::{self, TargetOutcome};
use super::{current, forkserver, registry};
use crate::connection::frame::{self, FrameKind, FrameReader};
use crate::platform;
use crate::sync::lock;

pub(crate) const ENV: &str = "MULTIPROC_CHILD";

/// The first message on a child's control socket. The argument's descriptors ride with it.
#[derive(Serialize, Deserialize)]
pub(crate) struct Bootstrap {
    pub(crate) fingerprint: String,
    pub(crate) target: isize,
    pub(crate) name: String,
    pub(crate) identity: Vec<u32>,
    pub(crate) parent_pid: i32,
    pub(crate) parent_name: String,
    pub(crate) daemon: bool,
    /// The parent's creating thread is its main thread, so `PR_SET_PDEATHSIG` tracks the
    /// parent process itself (it follows the thread).
    pub(crate) death_signal: bool,
    pub(crate) args: Vec<u8>,
}

/// The child's last message. The result's descriptors ride with it.
#[derive(Serialize, Deserialize)]
pub(crate) enum Report {
    /// The target returned this value (`failed`: a `Result::Err`).
    Returned { value: Vec<u8>, failed: bool },
    /// The target panicked.
    Panicked {
        message: String,
        location: Option<String>,
    },
    /// The child could not run the target.
    Refused { message: String, mismatch: bool },
    /// The target ran off the end of the main thread's stack (written by a fault handler).
    StackOverflow,
}

/// For tests only: children append this variable's value to their fingerprint.
const TEST_FINGERPRINT_SALT: &str = "MULTIPROC_TEST_FINGERPRINT_SALT";

/// The build fingerprint: same file, same code layout.
pub(crate) fn fingerprint() -> String {
    let layout =
        (target::probe as fn() -> u8 as usize).wrapping_sub(target::anchor as fn() as usize);
    let file = platform::exe_identity().unwrap_or_else(|e| format!("unknown ({e})"));
    format!("{file}/{layout:x}/{}", env!("CARGO_PKG_VERSION"))
}

/// Called by the constructor before `main`: turns a marked process into a child or the fork
/// server; returns at once in any other process.
pub(crate) fn on_load() {
    // SAFETY: constructors run before `main`, while the process has a single thread.
    if let Some(fd) = unsafe { platform::take_env(ENV) } {
        let control = adopt(&fd);
        platform::ignore_sigpipe();
        child_main(control);
    }
    // SAFETY: as above.
    if let Some(fd) = unsafe { platform::take_env(forkserver::ENV) } {
        forkserver::serve(adopt(&fd), child_main);
    }
    // SAFETY: as above.
    if let Some(fd) = unsafe { platform::take_env(crate::shm::tracker::ENV) } {
        crate::shm::tracker::serve(adopt(&fd));
    }
}

fn adopt(fd: &str) -> OwnedFd {
    match fd.parse::<RawFd>() {
        // SAFETY: the parent handed this descriptor down to us alone (posix_spawn kept only it).
        Ok(fd) if fd > 2 && platform::fd_is_open(fd) => unsafe { platform::adopt_fd(fd) },
        _ => {
            tracing::error!(descriptor = ?fd, "bad bootstrap descriptor in the environment");
            platform::exit_immediately(1);
        }
    }
}

/// The descriptor of the control socket, for the panic hook.
static CONTROL: AtomicI32 = AtomicI32::new(-1);
static PANIC: Mutex<Option<(String, Option<String>)>> = Mutex::new(None);

/// Runs the child: reads the bootstrap, runs the target, reports, exits. Never returns.
pub(crate) fn child_main(control: OwnedFd) -> ! {
    // A forked child inherits its parent's tables: those children and that server are not ours.
    registry::forget_all();
    forkserver::forget();
    let _ = platform::set_cloexec(control.as_fd(), true);
    let mut reader = FrameReader::new(frame::DEFAULT_MAX_FRAME);
    let Ok(boot) = reader.read(control.as_fd(), None, false) else {
        platform::exit_immediately(1) // the parent went away before telling us anything
    };
    let bootstrap: Bootstrap = match postcard::from_bytes(&boot.payload) {
        Ok(b) => b,
        Err(e) => refuse(&control, format!("bad bootstrap message: {e}"), false),
    };
    let mut mine = fingerprint();
    // Lets a test make a child that differs from its parent (there is no other way to get a
    // mismatched child: the child is always `/proc/self/exe`).
    if let Some(salt) = std::env::var_os(TEST_FINGERPRINT_SALT) {
        mine.push_str(&salt.to_string_lossy());
    }
    if bootstrap.fingerprint != mine {
        let detail = format!(
            "parent runs build {}, child runs {}",
            bootstrap.fingerprint, mine
        );
        refuse(&control, detail, true);
    }
    current::set_child(
        &bootstrap.name,
        &bootstrap.identity,
        bootstrap.daemon,
        (bootstrap.parent_pid, &bootstrap.parent_name),
    );
    if bootstrap.daemon {
        bind_to_parent(&control, &bootstrap);
    }
    CONTROL.store(control.as_raw_fd(), Ordering::SeqCst);
    install_panic_hook();
    report_stack_overflow(&control);

    // SAFETY: the fingerprint matched, so this is the executable the offset was taken in.
    let trampoline = unsafe { target::resolve(bootstrap.target) };
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| trampoline(&bootstrap.args, boot.fds)));
    let (report, fds, code) = match outcome {
        Ok(TargetOutcome::Returned { value, fds, failed }) => {
            (Report::Returned { value, failed }, fds, i32::from(failed))
        }
        Ok(TargetOutcome::Broken(message)) => (
            Report::Refused {
                message,
                mismatch: false,
            },
            Vec::new(),
            1,
        ),
        Err(payload) => {
            let (message, location) = lock(&PANIC)
                .take()
                .unwrap_or_else(|| (crate::error::panic_message(&*payload), None));
            (Report::Panicked { message, location }, Vec::new(), 1)
        }
    };
    send_report(control.as_fd(), &report, &fds);
    finish(code)
}

/// Joins our own children, flushes stdio and exits without running the parent's inherited
/// `atexit` handlers (a forked child has copies of them).
fn finish(code: i32) -> ! {
    registry::join_all_at_exit();
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    platform::exit_immediately(code)
}

fn send_report(control: BorrowedFd<'_>, report: &Report, fds: &[OwnedFd]) {
    let payload = postcard::to_allocvec(report).unwrap_or_default();
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
    let _ = frame::write_frame(control, FrameKind::Value, &payload, &borrowed);
}

fn refuse(control: &OwnedFd, message: String, mismatch: bool) -> ! {
    send_report(control.as_fd(), &Report::Refused { message, mismatch }, &[]);
    platform::exit_immediately(1)
}

/// A daemon child must not outlive its parent: the kernel kills it when the parent's thread
/// ends (when that is the main thread), or a lifeline thread sees the control socket close.
fn bind_to_parent(control: &OwnedFd, boot: &Bootstrap) {
    if boot.death_signal && platform::set_parent_death_signal(platform::SIGKILL).is_ok() {
        if platform::getppid() != boot.parent_pid {
            platform::exit_immediately(1); // the parent died before the signal was armed
        }
        return;
    }
    let Ok(lifeline) = control.try_clone() else {
        return;
    };
    let _ = std::thread::Builder::new()
        .name("multiproc-lifeline".into())
        .spawn(move || {
            // The parent never writes after the bootstrap: a read returns only at end of file.
            let mut byte = [std::mem::MaybeUninit::uninit(); 1];
            loop {
                match platform::recv_with_fds(lifeline.as_fd(), &mut byte, &mut Vec::new(), false) {
                    Ok(0) | Err(_) => platform::exit_immediately(1),
                    Ok(_) => {}
                }
            }
        });
}

/// Has a stack overflow of the target say so, to standard error and to the parent, as a
/// Rust program's would (this process never reaches `main`, where Rust's handler is set up).
fn report_stack_overflow(control: &OwnedFd) {
    let payload = postcard::to_allocvec(&Report::StackOverflow).unwrap_or_default();
    let report = frame::frame_bytes(FrameKind::Value, &payload).leak();
    let me = current::current_process();
    let message = format!(
        "\nthread 'main' of process {:?} (pid {}) has overflowed its stack\nfatal runtime error: \
         stack overflow, aborting\n",
        me.name(),
        me.pid()
    )
    .into_bytes()
    .leak();
    if let Err(e) = platform::report_stack_overflow(control.as_fd(), report, message) {
        tracing::debug!("child: no stack overflow report: {e}");
    }
}

fn install_panic_hook() {
    let previous = panic::take_hook();
    let main_thread = std::thread::current().id();
    panic::set_hook(Box::new(move |info| {
        previous(info);
        if std::thread::current().id() != main_thread {
            return;
        }
        let message = info.payload_as_str().unwrap_or("Box<dyn Any>").to_string();
        let location = info.location().map(|l| l.to_string());
        if cfg!(panic = "abort") {
            // No unwinding will bring us back to child_main: report from here.
            let fd = CONTROL.load(Ordering::SeqCst);
            if fd >= 0 {
                // SAFETY: CONTROL holds the control socket, open for the child's whole life.
                let control = unsafe { BorrowedFd::borrow_raw(fd) };
                send_report(control, &Report::Panicked { message, location }, &[]);
            }
            return;
        }
        *lock(&PANIC) = Some((message, location));
    }));
}

/// The message and location of the last panic on the child's main thread (recorded by the
/// panic hook), for pool workers that catch their tasks' panics.
pub(crate) fn take_last_panic() -> Option<(String, Option<String>)> {
    lock(&PANIC).take()
}
