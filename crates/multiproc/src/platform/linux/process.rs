//! Processes: ids, spawning this executable again, fork, start-up and exit, the executable's
//! identity, the constructor that runs before `main`.

use std::ffi::{CStr, CString, OsString};
use std::io;
use std::mem::{self, MaybeUninit};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::ptr;

use super::cvt;

pub(crate) const SIGTERM: i32 = libc::SIGTERM;

pub(crate) const SIGKILL: i32 = libc::SIGKILL;

/// How a child process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExitStatus {
    /// It called `exit(code)`.
    Exited(i32),
    /// A signal ended it.
    Signaled(i32),
}

impl ExitStatus {
    /// CPython's `exitcode`: the exit code, or minus the signal number.
    pub(crate) fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(code) => code,
            ExitStatus::Signaled(signal) => -signal,
        }
    }
}

pub(crate) fn getpid() -> i32 {
    std::process::id() as i32
}

pub(crate) fn getppid() -> i32 {
    // SAFETY: getppid has no preconditions and cannot fail.
    unsafe { libc::getppid() }
}

/// Whether the calling thread is the process's first thread (the one whose exit would fire a
/// child's `PR_SET_PDEATHSIG`; the signal follows the parent *thread*, not the process).
pub(crate) fn is_main_thread() -> bool {
    // SAFETY: gettid has no preconditions and cannot fail.
    let tid = unsafe { libc::gettid() };
    tid == getpid()
}

/// The number of threads of this process, from `/proc/self/stat`.
pub(crate) fn thread_count() -> io::Result<usize> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // The command name (field 2) is in parentheses and may hold spaces; count after its end.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    after
        .split_whitespace()
        .nth(17) // field 20 overall: num_threads
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "cannot parse /proc/self/stat"))
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in argument"))
}

/// Variables every process started by [`spawn_self`] gets in its environment besides ours
/// (we never change our own environment: that is unsound once threads run).
static CHILD_ENV: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

/// Adds (or replaces) a variable for the environment of every child started from now on.
pub(crate) fn set_child_env(key: &str, value: &str) {
    let mut vars = CHILD_ENV
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    vars.retain(|(k, _)| k != key);
    vars.push((key.to_string(), value.to_string()));
}

/// Starts a fresh copy of this executable (`/proc/self/exe`) with `env` added to the
/// environment, `keep` inherited at the same descriptor number and stdin on `/dev/null`.
pub(crate) fn spawn_self(env: (&str, &str), keep: BorrowedFd<'_>) -> io::Result<i32> {
    let argv0 = std::env::args_os()
        .next()
        .unwrap_or_else(|| OsString::from("multiproc-child"));
    let argv_owned = [cstring(argv0.as_bytes())?, cstring(b"--multiproc-child")?];
    let mut argv: Vec<*mut libc::c_char> =
        argv_owned.iter().map(|a| a.as_ptr() as *mut _).collect();
    argv.push(ptr::null_mut());
    let mut env_owned = Vec::new();
    let extra = CHILD_ENV
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    for (k, v) in &extra {
        env_owned.push(cstring(format!("{k}={v}").as_bytes())?);
    }
    for (k, v) in std::env::vars_os() {
        if k.as_bytes() == env.0.as_bytes()
            || extra.iter().any(|(e, _)| e.as_bytes() == k.as_bytes())
        {
            continue;
        }
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        env_owned.push(cstring(&kv)?);
    }
    env_owned.push(cstring(format!("{}={}", env.0, env.1).as_bytes())?);
    let mut envp: Vec<*mut libc::c_char> = env_owned.iter().map(|a| a.as_ptr() as *mut _).collect();
    envp.push(ptr::null_mut());
    let exe: &CStr = c"/proc/self/exe";

    let mut actions = MaybeUninit::<libc::posix_spawn_file_actions_t>::uninit();
    let mut attr = MaybeUninit::<libc::posix_spawnattr_t>::uninit();
    // SAFETY: init functions fill the uninitialised structs; each is destroyed below exactly
    // once; every pointer handed to posix_spawn (exe, argv, envp) stays alive for the call.
    unsafe {
        check_spawn(libc::posix_spawn_file_actions_init(actions.as_mut_ptr()))?;
        let mut actions = SpawnActions(actions.assume_init());
        // dup2(fd, fd) clears FD_CLOEXEC in the child (glibc >= 2.29, musl).
        check_spawn(libc::posix_spawn_file_actions_adddup2(
            &mut actions.0,
            keep.as_raw_fd(),
            keep.as_raw_fd(),
        ))?;
        check_spawn(libc::posix_spawn_file_actions_addopen(
            &mut actions.0,
            0,
            c"/dev/null".as_ptr(),
            libc::O_RDONLY,
            0,
        ))?;
        check_spawn(libc::posix_spawnattr_init(attr.as_mut_ptr()))?;
        let mut attr = SpawnAttr(attr.assume_init());
        let mut empty: libc::sigset_t = mem::zeroed();
        libc::sigemptyset(&mut empty);
        check_spawn(libc::posix_spawnattr_setsigmask(&mut attr.0, &empty))?;
        check_spawn(libc::posix_spawnattr_setflags(
            &mut attr.0,
            libc::POSIX_SPAWN_SETSIGMASK as _,
        ))?;
        let mut pid: libc::pid_t = 0;
        check_spawn(libc::posix_spawn(
            &mut pid,
            exe.as_ptr(),
            &actions.0,
            &attr.0,
            argv.as_ptr(),
            envp.as_ptr(),
        ))?;
        Ok(pid)
    }
}

struct SpawnActions(libc::posix_spawn_file_actions_t);

impl Drop for SpawnActions {
    fn drop(&mut self) {
        // SAFETY: constructed only after a successful init.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut self.0) };
    }
}

struct SpawnAttr(libc::posix_spawnattr_t);

impl Drop for SpawnAttr {
    fn drop(&mut self) {
        // SAFETY: constructed only after a successful init.
        unsafe { libc::posix_spawnattr_destroy(&mut self.0) };
    }
}

fn check_spawn(code: libc::c_int) -> io::Result<()> {
    if code == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(code))
    }
}

/// What `fork` returned on this side.
pub(crate) enum Forked {
    /// We are the parent; the child has this pid.
    Parent(i32),
    /// We are the new child.
    Child,
}

/// `fork()`.
///
/// # Safety
/// The calling process must be single-threaded, or the child must restrict itself to
/// async-signal-safe calls until it execs: locks held by other threads stay locked forever in
/// the child.
pub(crate) unsafe fn fork() -> io::Result<Forked> {
    // SAFETY: the caller upholds the single-thread requirement stated above.
    match cvt(unsafe { libc::fork() })? {
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid)),
    }
}

/// `prctl(PR_SET_PDEATHSIG, signal)`: the kernel sends `signal` when the thread that created
/// this process ends.
pub(crate) fn set_parent_death_signal(signal: i32) -> io::Result<()> {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a plain integer argument.
    cvt(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) }).map(drop)
}

/// Ignores SIGPIPE, as the Rust runtime does before `main` (writes to a closed pipe then fail
/// with `EPIPE` instead of killing the process).
/// Tells the allocator of a process that keeps allocating and freeing the same large buffers
/// (a pool worker, chunk after chunk) to keep freed memory instead of giving it back to the
/// kernel at once: otherwise glibc trims the heap top past 128 KiB after each free, and every
/// chunk pays a page fault per 4 KiB to get the memory back. Memory stays with the process up
/// to 64 MiB above its peak. `warm` bytes are touched and freed at once, so that the first
/// chunks find their memory mapped already. Only glibc has these knobs; elsewhere this does
/// nothing.
pub(crate) fn keep_freed_memory(warm: usize) {
    #[cfg(target_env = "gnu")]
    {
        const KEEP: libc::c_int = 64 << 20;
        // SAFETY: mallopt only changes glibc's tuning parameters; any value is accepted, and
        // both are set before the worker allocates its chunks.
        unsafe {
            libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP);
            libc::mallopt(libc::M_MMAP_THRESHOLD, KEEP);
        }
        // Not zeroes: calloc'd fresh memory would not be touched.
        let touched = vec![1u8; warm];
        std::hint::black_box(&touched);
    }
    #[cfg(not(target_env = "gnu"))]
    let _ = warm;
}

/// Points fd 0 at `/dev/null`.
pub(crate) fn stdin_to_devnull() -> io::Result<()> {
    let null = std::fs::File::open("/dev/null")?;
    // SAFETY: dup2 onto fd 0 replaces stdin; `null` stays open for the call.
    cvt(unsafe { libc::dup2(null.as_raw_fd(), 0) }).map(drop)
}

/// Ends the process at once: no atexit handlers, no destructors, no stdio flush.
pub(crate) fn exit_immediately(code: i32) -> ! {
    // SAFETY: _exit never returns and has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Registers `f` to run at normal process exit (`exit()` or return from `main`).
pub(crate) fn at_exit(f: extern "C" fn()) -> io::Result<()> {
    // SAFETY: `f` is a plain function with the C ABI that lives for the whole program.
    cvt(unsafe { libc::atexit(f) }).map(drop)
}

/// The device, inode, size and modification time of the running executable: two processes
/// that print the same string run the same file.
pub(crate) fn exe_identity() -> io::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata("/proc/self/exe")?;
    Ok(format!(
        "{}:{}:{}:{}.{}",
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec()
    ))
}

/// Reads the descriptor number in environment variable `name` and removes the variable, so
/// that it does not leak into grandchildren.
///
/// # Safety
/// Must run while the process is single-threaded (from a constructor before `main`): it
/// modifies the environment.
pub(crate) unsafe fn take_env(name: &str) -> Option<String> {
    let value = std::env::var(name).ok()?;
    // SAFETY: the caller guarantees no other thread reads or writes the environment now.
    unsafe { std::env::remove_var(name) };
    Some(value)
}

/// Adopts descriptor `fd` handed down by the parent.
///
/// # Safety
/// `fd` must be open and owned by nobody else in this process.
pub(crate) unsafe fn adopt_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: guaranteed by the caller.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Whether `fd` is an open descriptor.
pub(crate) fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only queries the descriptor table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Defines `static $name`, a function pointer the loader calls before `main` (an
/// `.init_array` entry on ELF systems): what lets every binary linking the crate serve as a
/// child process. The caller keeps the static reachable (`black_box(&$name)`) so that the
/// linker keeps it.
macro_rules! run_before_main {
    ($name:ident = $f:path) => {
        #[used]
        #[unsafe(link_section = ".init_array")]
        pub(crate) static $name: extern "C" fn() = {
            extern "C" fn before_main() {
                $f();
            }
            before_main
        };
    };
}
pub(crate) use run_before_main;

/// The running executable's GNU build id (the linker's digest of the file, in its
/// `.note.gnu.build-id`), read from the notes loaded in memory; `None` if it has none.
#[cfg_attr(not(feature = "broker"), allow(dead_code))]
pub(crate) fn gnu_build_id() -> Option<Vec<u8>> {
    const NT_GNU_BUILD_ID: u32 = 3;

    /// Looks through the notes of the first object, the executable, and stops.
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        found: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: dl_iterate_phdr passes a valid `info` for the duration of the call, and
        // `found` is the `Option<Vec<u8>>` the caller below handed it.
        let (info, found) = unsafe { (&*info, &mut *found.cast::<Option<Vec<u8>>>()) };
        for i in 0..usize::from(info.dlpi_phnum) {
            // SAFETY: `dlpi_phdr` points to `dlpi_phnum` program headers.
            let header = unsafe { &*info.dlpi_phdr.add(i) };
            if header.p_type != libc::PT_NOTE {
                continue;
            }
            let start = (info.dlpi_addr as usize).wrapping_add(header.p_vaddr as usize);
            // SAFETY: a PT_NOTE segment is loaded (readable) at this address, `p_memsz`
            // bytes long, for as long as the executable is mapped (the whole run).
            let notes =
                unsafe { std::slice::from_raw_parts(start as *const u8, header.p_memsz as usize) };
            if let Some(id) = find_build_id(notes, NT_GNU_BUILD_ID) {
                *found = Some(id);
                return 1;
            }
        }
        1
    }

    let mut found: Option<Vec<u8>> = None;
    // SAFETY: `each` matches dl_iterate_phdr's callback type and reads `found` as the
    // `Option<Vec<u8>>` it is, which outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(each), (&raw mut found).cast()) };
    found
}

/// The descriptor of the first `GNU` note of type `kind` in `notes` (an ELF note segment:
/// name size, descriptor size and type, then the name and the descriptor, each padded to 4).
#[cfg_attr(not(feature = "broker"), allow(dead_code))]
fn find_build_id(mut notes: &[u8], kind: u32) -> Option<Vec<u8>> {
    let word = |b: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    let padded = |n: usize| n.checked_add(3).map(|n| n & !3);
    while notes.len() >= 12 {
        let name_len = word(notes, 0)? as usize;
        let desc_len = word(notes, 4)? as usize;
        let note_kind = word(notes, 8)?;
        let desc_at = 12 + padded(name_len)?;
        let end = desc_at.checked_add(padded(desc_len)?)?;
        let name = notes.get(12..12 + name_len)?;
        let desc = notes.get(desc_at..desc_at + desc_len)?;
        if note_kind == kind && name == b"GNU\0" {
            return Some(desc.to_vec());
        }
        notes = notes.get(end..)?;
    }
    None
}

#[cfg(test)]
mod build_id_tests {
    use super::find_build_id;

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend((name.len() as u32).to_ne_bytes());
        n.extend((desc.len() as u32).to_ne_bytes());
        n.extend(kind.to_ne_bytes());
        n.extend(name);
        n.resize(n.len().next_multiple_of(4), 0);
        n.extend(desc);
        n.resize(n.len().next_multiple_of(4), 0);
        n
    }

    #[test]
    fn the_gnu_build_id_note_is_found_among_others() {
        let mut notes = note(b"GNU\0", 1, &[0, 0, 0, 0, 3, 0, 0, 0]);
        notes.extend(note(b"stapsdt\0", 3, b"probe"));
        notes.extend(note(b"GNU\0", 3, &[0xab; 20]));
        assert_eq!(find_build_id(&notes, 3), Some(vec![0xab; 20]));
        assert_eq!(find_build_id(&notes[..12], 3), None, "cut short");
        assert_eq!(find_build_id(&note(b"GNU\0", 1, b"x"), 3), None);
        // A size that runs past the segment is no note.
        let mut bad = note(b"GNU\0", 3, &[1; 8]);
        bad[4..8].copy_from_slice(&1000u32.to_ne_bytes());
        assert_eq!(find_build_id(&bad, 3), None);
    }
}
