//! The CPU each thread of this process and of its descendants (the benchmarks' redis-server
//! among them) has used, from `/proc`: where a benchmark's time goes, thread by thread.

use std::collections::BTreeMap;
use std::time::Duration;

/// Clock ticks a second, as `/proc/<pid>/task/<tid>/stat` counts them.
const TICKS_PER_SECOND: u32 = 100;

/// The CPU each thread of `pid` and of its descendants has used, by `"<pid>/<thread name>"`
/// (threads of one name in one process added up).
pub(crate) fn threads(pid: u32) -> BTreeMap<String, Duration> {
    let mut out = BTreeMap::new();
    add_threads(pid, &mut out);
    out
}

fn add_threads(pid: u32, out: &mut BTreeMap<String, Duration>) {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for thread in dir.flatten() {
        let path = thread.path();
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        // `tid (name) state ...`: the name may hold spaces and parentheses, so split at the
        // last ')'; utime and stime are the 12th and 13th fields after it.
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let name = stat[..close].split_once('(').map_or("?", |(_, n)| n);
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        if let (Some(user), Some(system)) = (ticks(11), ticks(12)) {
            let used = Duration::from_secs(user + system) / TICKS_PER_SECOND;
            *out.entry(format!("{pid}/{name}")).or_default() += used;
        }
        if let Ok(children) = std::fs::read_to_string(path.join("children")) {
            for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                add_threads(child, out);
            }
        }
    }
}

/// What each thread used between `before` and `after`, per one of `n`
/// jobs, largest first, with the sum.
pub(crate) fn per_job(
    before: &BTreeMap<String, Duration>,
    after: &BTreeMap<String, Duration>,
    n: u64,
) -> Vec<(String, Duration)> {
    let mut rows: Vec<(String, Duration)> = after
        .iter()
        .map(|(k, v)| {
            let used = v.saturating_sub(before.get(k).copied().unwrap_or_default());
            (k.clone(), used / n.max(1) as u32)
        })
        .collect();
    rows.sort_by_key(|row| std::cmp::Reverse(row.1));
    rows
}
