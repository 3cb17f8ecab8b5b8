//! The seeds' distributed example across "machines": the master in one network namespace, two
//! workers in two others, each reaching the master only through its own veth link. Once over
//! the manager protocol, once over Redis. Needs root (`ip netns`); skipped with a reason when
//! namespaces cannot be made.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

#[path = "../../multiproc/tests/common/redis.rs"]
mod redis_server;

const BIN: &str = env!("CARGO_BIN_EXE_multiproc");

/// Three namespaces, master `m` and workers `w1`, `w2`, linked master–worker by veth pairs
/// (10.77.k.1 on the master's side, 10.77.k.2 on worker k's). Deleted when dropped.
struct Hosts {
    master: String,
    workers: [String; 2],
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Hosts {
    fn make(tag: &str) -> Option<Hosts> {
        let id = std::process::id() % 100_000;
        let name = |role: &str| format!("mp{id}{tag}{role}");
        let hosts = Hosts {
            master: name("m"),
            workers: [name("w1"), name("w2")],
        };
        if !ip(&["netns", "add", &hosts.master]) {
            eprintln!("skipped: cannot create network namespaces (needs root and iproute2)");
            return None;
        }
        for (k, w) in hosts.workers.iter().enumerate() {
            let k = k + 1;
            let (m_end, w_end) = (format!("v{id}{tag}m{k}"), format!("v{id}{tag}w{k}"));
            let ok = ip(&["netns", "add", w])
                && ip(&[
                    "link", "add", &m_end, "type", "veth", "peer", "name", &w_end,
                ])
                && ip(&["link", "set", &m_end, "netns", &hosts.master])
                && ip(&["link", "set", &w_end, "netns", w])
                && ip(&[
                    "-n",
                    &hosts.master,
                    "addr",
                    "add",
                    &format!("10.77.{k}.1/24"),
                    "dev",
                    &m_end,
                ])
                && ip(&[
                    "-n",
                    w,
                    "addr",
                    "add",
                    &format!("10.77.{k}.2/24"),
                    "dev",
                    &w_end,
                ])
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
    fn at(ns: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, program]);
        c
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in self.workers.iter().chain([&self.master]) {
            ip(&["netns", "del", ns]);
        }
    }
}

/// Children killed when the test ends.
#[derive(Default)]
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn squares() -> BTreeSet<String> {
    (1..=10)
        .map(|n: i64| format!("{n} * {n} = {}", n * n))
        .collect()
}

/// Runs the two workers (each in its namespace, reaching the master at `broker(k)`), then
/// collects in the master's namespace; checks every result came and both workers ran.
fn run_seed(hosts: &Hosts, local: &str, broker: impl Fn(usize) -> String, env: &[(&str, &str)]) {
    let ten: Vec<String> = (1..=10).map(|n| n.to_string()).collect();
    let mut submit = Hosts::at(&hosts.master, BIN);
    submit
        .args(["submit", "-b", local])
        .args(&ten)
        .envs(env.iter().copied());
    ok(submit.output().unwrap());
    let mut children = Children::default();
    for (k, w) in hosts.workers.iter().enumerate() {
        let mut worker = Hosts::at(w, BIN);
        worker
            .args(["worker", "--square", "--idle", "1", "-b", &broker(k + 1)])
            .envs(env.iter().copied())
            .stdout(Stdio::piped());
        children.0.push(worker.spawn().unwrap());
    }
    let mut collect = Hosts::at(&hosts.master, BIN);
    collect
        .args(["collect", "--count", "10", "-b", local])
        .envs(env.iter().copied());
    let got: BTreeSet<String> = ok(collect.output().unwrap())
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(got, squares());
    for c in &mut children.0 {
        let out = BufReader::new(c.stdout.take().unwrap());
        let last = out.lines().map_while(Result::ok).last().unwrap_or_default();
        assert!(
            last.starts_with("worker:"),
            "a worker did not finish: {last:?}"
        );
    }
}

#[test]
fn the_seed_runs_across_namespaces_over_the_manager() {
    let Some(hosts) = Hosts::make("a") else {
        return;
    };
    let env = [("MULTIPROC_AUTHKEY", "abc")];
    let mut children = Children::default();
    let mut serve = Hosts::at(&hosts.master, BIN);
    serve
        .args([
            "serve",
            "--bind",
            "0.0.0.0:5000",
            "--queue",
            "task",
            "--queue",
            "result",
        ])
        .envs(env)
        .stdout(Stdio::piped());
    let mut server = serve.spawn().unwrap();
    let mut first = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("serving"), "{first}");
    children.0.push(server);
    run_seed(
        &hosts,
        "127.0.0.1:5000",
        |k| format!("10.77.{k}.1:5000"),
        &env,
    );
}

#[test]
fn the_seed_runs_across_namespaces_over_redis() {
    if !redis_server::installed() {
        return;
    }
    let Some(hosts) = Hosts::make("b") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("multiproc-netns-redis-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut children = Children::default();
    let mut redis = Hosts::at(&hosts.master, "redis-server");
    redis
        .args([
            "--port",
            "6390",
            "--bind",
            "0.0.0.0",
            "--protected-mode",
            "no",
        ])
        .args(["--appendonly", "yes", "--save", ""])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null());
    children.0.push(redis.spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pong = Hosts::at(&hosts.master, "redis-cli")
            .args(["-p", "6390", "ping"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"));
        if pong.unwrap_or(false) {
            break;
        }
        assert!(Instant::now() < deadline, "redis-server did not come up");
        std::thread::park_timeout(Duration::from_millis(20));
    }
    run_seed(
        &hosts,
        "redis://127.0.0.1:6390/0",
        |k| format!("redis://10.77.{k}.1:6390/0"),
        &[],
    );
    drop(children);
    let _ = std::fs::remove_dir_all(&dir);
}
