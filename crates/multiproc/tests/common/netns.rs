//! "Machines" for a test: network namespaces, a master and workers, each worker reaching the
//! master only through a veth link of its own (10.77.k.1 on the master's side, 10.77.k.2 on
//! worker k's). Needs root (`ip netns`): `Hosts::make` says why and gives `None` when they
//! cannot be made. Everything is deleted when the test ends, also when it fails.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A master namespace and worker namespaces linked to it.
pub struct Hosts {
    pub master: String,
    pub workers: Vec<String>,
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Hosts {
    /// A master and `workers` workers, named after this process and `tag` (one letter, so that
    /// the tests of one binary do not meet).
    pub fn make(tag: &str, workers: usize) -> Option<Hosts> {
        let id = std::process::id() % 100_000;
        let name = |role: &str| format!("mp{id}{tag}{role}");
        let hosts = Hosts {
            master: name("m"),
            workers: (1..=workers).map(|k| name(&format!("w{k}"))).collect(),
        };
        if !ip(&["netns", "add", &hosts.master]) {
            eprintln!("skipped: cannot create network namespaces (needs root and iproute2)");
            return None;
        }
        for (k, w) in hosts.workers.iter().enumerate() {
            let k = k + 1;
            let (m_end, w_end) = (format!("v{id}{tag}m{k}"), format!("v{id}{tag}w{k}"));
            let (m_addr, w_addr) = (format!("10.77.{k}.1/24"), format!("10.77.{k}.2/24"));
            let ok = ip(&["netns", "add", w])
                && ip(&[
                    "link", "add", &m_end, "type", "veth", "peer", "name", &w_end,
                ])
                && ip(&["link", "set", &m_end, "netns", &hosts.master])
                && ip(&["link", "set", &w_end, "netns", w])
                && ip(&["-n", &hosts.master, "addr", "add", &m_addr, "dev", &m_end])
                && ip(&["-n", w, "addr", "add", &w_addr, "dev", &w_end])
                && ip(&["-n", &hosts.master, "link", "set", &m_end, "up"])
                && ip(&["-n", w, "link", "set", &w_end, "up"])
                && ip(&["-n", w, "link", "set", "lo", "up"]);
            if !ok {
                // Namespaces but no veth links (a container without the module): skip, and
                // take away a pair that stayed in this namespace.
                ip(&["link", "del", &m_end]);
                eprintln!("skipped: cannot link namespace {w} to the master's (veth)");
                return None;
            }
        }
        if !ip(&["-n", &hosts.master, "link", "set", "lo", "up"]) {
            eprintln!("skipped: cannot bring up the master namespace's loopback");
            return None;
        }
        Some(hosts)
    }

    /// A command run inside namespace `ns`.
    pub fn at(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }

    /// Kills every process in namespace `ns` (SIGKILL), as if its machine went down; how many.
    pub fn kill_all(ns: &str) -> usize {
        let out = Command::new("ip")
            .args(["netns", "pids", ns])
            .output()
            .expect("ip netns pids");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let pids: Vec<&str> = text.split_whitespace().collect();
        if !pids.is_empty() {
            let _ = Command::new("kill").arg("-9").args(&pids).status();
        }
        pids.len()
    }

    /// Starts `redis-server` in the master namespace on `port`, reachable from every worker
    /// at `redis://10.77.k.1:port`, with its files in `dir`; waits until it answers.
    pub fn start_redis(&self, port: u16, dir: &Path) -> Child {
        let mut redis = Hosts::at(&self.master, "redis-server");
        redis
            .args(["--port", &port.to_string(), "--bind", "0.0.0.0"])
            .args([
                "--protected-mode",
                "no",
                "--appendonly",
                "yes",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null());
        // Killed if it does not come up.
        let mut started = Children(vec![redis.spawn().expect("start redis-server")]);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let pong = Hosts::at(&self.master, "redis-cli")
                .args(["-p", &port.to_string(), "ping"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"));
            if pong.unwrap_or(false) {
                return started.0.pop().expect("the server");
            }
            assert!(Instant::now() < deadline, "redis-server did not come up");
            std::thread::park_timeout(Duration::from_millis(20));
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in self.workers.iter().chain([&self.master]) {
            Hosts::kill_all(ns);
            ip(&["netns", "del", ns]);
        }
    }
}

/// Children killed when the test ends, also when it fails.
#[derive(Default)]
pub struct Children(pub Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A directory of this test's own, removed when it ends.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("multiproc-{what}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
