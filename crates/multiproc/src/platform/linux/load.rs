//! The machine's load, for the spin governor: online CPUs and runnable tasks.

/// How many tasks are runnable on the whole system right now (running or waiting for a CPU):
/// the fourth field of `/proc/loadavg` (`2/86`: 2). `None` if it cannot be read.
pub(crate) fn runnable_tasks() -> Option<u32> {
    use std::os::unix::fs::FileExt;
    static LOADAVG: std::sync::OnceLock<Option<std::fs::File>> = std::sync::OnceLock::new();
    let file = LOADAVG
        .get_or_init(|| std::fs::File::open("/proc/loadavg").ok())
        .as_ref()?;
    let mut buf = [0u8; 128];
    let n = file.read_at(&mut buf, 0).ok()?;
    let text = std::str::from_utf8(&buf[..n]).ok()?;
    let field = text.split_ascii_whitespace().nth(3)?;
    field.split('/').next()?.parse().ok()
}

/// How many CPUs are online on the whole system.
pub(crate) fn online_cpus() -> u32 {
    // SAFETY: sysconf has no memory preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    u32::try_from(n).unwrap_or(1).max(1)
}
