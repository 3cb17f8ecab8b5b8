//! A fork server killed by someone else is replaced, and the dead one is reaped (no zombie
//! left while this process lives). Alone in its binary: it finds the server among this
//! process's children.

use multiproc::{Process, StartMethod};

/// Our live children that run as a multiproc child (the fork server, once the others ended).
fn multiproc_children() -> Vec<i32> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if fields.get(1) == Some(&me.as_str())
            && fields.first() != Some(&"Z")
            && cmdline.windows(17).any(|w| w == b"--multiproc-child")
        {
            found.push(pid);
        }
    }
    found
}

fn forked(n: u32) -> u32 {
    n + 1
}

fn through_the_fork_server(n: u32) -> u32 {
    Process::new(forked, n)
        .start_method(StartMethod::ForkServer)
        .start()
        .unwrap()
        .into_result()
        .unwrap()
}

#[test]
fn a_killed_fork_server_is_replaced_and_reaped() {
    assert_eq!(through_the_fork_server(1), 2);
    let servers = multiproc_children();
    assert_eq!(servers.len(), 1, "one fork server: {servers:?}");
    let old = servers[0];
    // Killed from outside, as an operator or the OOM killer would.
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &old.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert_eq!(through_the_fork_server(2), 3);
    // The old server is gone for good (reaped: not even a zombie), a new one serves.
    assert!(
        std::fs::read_to_string(format!("/proc/{old}/stat")).is_err(),
        "the killed fork server {old} was not reaped"
    );
    let now = multiproc_children();
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now[0], old);
}
