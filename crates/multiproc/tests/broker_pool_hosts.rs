//! A broker pool across "machines": the broker and the pool's master in one network namespace,
//! a `BrokerWorker` on each of three others, each reaching the master's namespace only through
//! a veth link of its own. One host's processes are all killed mid-map, as if it went down:
//! the map completes, with each result exactly once. Needs root (`ip netns`); skipped with a
//! reason when namespaces cannot be made.
//!
//! The master and the workers are this test binary again, run in their namespaces with the
//! ignored test `role` and `MP_ROLE` saying which.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::netns::{Children, Hosts, TempDir};
use multiproc::{BrokerWorker, Pool, TaskRegistry};

const KEY: &[u8] = b"hosts secret";
const QUEUE: &str = "hosts";
const TASKS: u64 = 300;
/// How long a dead worker's tasks wait before another worker takes them.
const LEASE: Duration = Duration::from_millis(1500);
/// How long the map may take before the test gives up on it.
const PATIENCE: Duration = Duration::from_secs(120);
/// The broker's port in the master's namespace.
const PORT: u16 = 6391;

/// Squares `x` after 25 ms of work; says which host ran it.
fn slow_square(x: u64) -> (u64, String) {
    let until = Instant::now() + Duration::from_millis(25);
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        std::thread::park_timeout(left);
    }
    (x * x, std::env::var("MP_HOST").unwrap_or_default())
}

fn registry() -> TaskRegistry {
    TaskRegistry::new().register("slow_square", slow_square)
}

/// A worker or the master, in the namespace the test put it in (nothing without `MP_ROLE`).
#[test]
#[ignore = "a role that the hosts test runs in a namespace of its own"]
fn role() {
    let (Ok(role), Ok(url)) = (std::env::var("MP_ROLE"), std::env::var("MP_URL")) else {
        return;
    };
    match role.as_str() {
        "worker" => BrokerWorker::new(url, QUEUE)
            .authkey(KEY.to_vec())
            .tasks(registry())
            .processes(2)
            .lease(LEASE)
            .run()
            .unwrap(),
        "master" => {
            let pool = Pool::broker(url, QUEUE)
                .authkey(KEY.to_vec())
                .tasks(registry())
                .lease(LEASE)
                .retries(3)
                .build()
                .unwrap();
            let mut out = std::io::stdout().lock();
            for result in pool.imap_unordered(slow_square, 0..TASKS, Some(1)).unwrap() {
                let (square, host) = result.unwrap();
                writeln!(out, "result {square} {host}").unwrap();
                out.flush().unwrap();
            }
            writeln!(out, "done").unwrap();
        }
        other => panic!("no role {other:?}"),
    }
}

/// This binary, to run `role` as `role` in namespace `ns`, with the broker at `url`.
fn as_role(ns: &str, role: &str, url: String, host: &str) -> Command {
    let me = std::env::current_exe().unwrap();
    let mut c = Hosts::at(ns, me);
    c.args(["--ignored", "--exact", "role", "--nocapture"])
        .env("MP_ROLE", role)
        .env("MP_URL", url)
        .env("MP_HOST", host);
    c
}

#[test]
fn a_map_across_three_hosts_completes_when_one_host_goes_down() {
    if !common::redis::installed() {
        return;
    }
    let Some(hosts) = Hosts::make("p", 3) else {
        return;
    };
    let dir = TempDir::new("hosts-redis");
    let mut children = Children(vec![hosts.start_redis(PORT, &dir.0)]);
    for (k, ns) in hosts.workers.iter().enumerate() {
        let url = format!("redis://10.77.{}.1:{PORT}/0", k + 1);
        let mut worker = as_role(ns, "worker", url, &format!("w{}", k + 1));
        children
            .0
            .push(worker.stdout(Stdio::null()).spawn().unwrap());
    }
    let url = format!("redis://127.0.0.1:{PORT}/0");
    let mut master = as_role(&hosts.master, "master", url, "m")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(master.stdout.take().unwrap()).lines();
    // A map that never ends fails the test rather than hanging it: the master is killed.
    let master_pid = master.id().to_string();
    let (_stop_watchdog, stopped) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if stopped.recv_timeout(PATIENCE) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
            let _ = Command::new("kill").args(["-9", &master_pid]).status();
        }
    });
    children.0.push(master);

    // Results as they come: once host w2 has answered some and the map is well under way,
    // every process of w2 is killed (its worker, and the worker's processes mid-task).
    let mut seen: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut killed_after = None;
    let mut done = false;
    for line in lines {
        let line = line.unwrap();
        // Read to the end: the master's test harness writes its summary after this.
        if line == "done" {
            done = true;
            continue;
        }
        let mut words = line.split_whitespace();
        if words.next() != Some("result") {
            continue;
        }
        let square: u64 = words.next().unwrap().parse().unwrap();
        let host = words.next().unwrap_or_default().to_string();
        seen.entry(square).or_default().push(host);
        let from_w2 = seen.values().flatten().filter(|h| *h == "w2").count();
        if killed_after.is_none() && seen.len() >= 40 && from_w2 > 0 {
            assert!(Hosts::kill_all(&hosts.workers[1]) > 0, "w2 had processes");
            killed_after = Some(seen.len());
        }
    }
    assert!(done, "the master did not finish: {} results", seen.len());
    let killed_after = killed_after.expect("w2 answered before the map ended");
    assert!(killed_after < TASKS as usize, "w2 went down mid-map");
    let squares: BTreeSet<u64> = (0..TASKS).map(|x| x * x).collect();
    assert_eq!(seen.keys().copied().collect::<BTreeSet<_>>(), squares);
    let twice: Vec<_> = seen.iter().filter(|(_, hosts)| hosts.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "results delivered more than once: {twice:?}"
    );
    let master = children.0.last_mut().unwrap();
    assert!(master.wait().unwrap().success());
}
