//! The seeds' distributed example across "machines": the master in one network namespace, two
//! workers in two others, each reaching the master only through its own veth link. Once over
//! the manager protocol, once over Redis. Needs root (`ip netns`); skipped with a reason when
//! namespaces cannot be made.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Output, Stdio};

#[path = "../../multiproc/tests/common/netns.rs"]
mod netns;
#[path = "../../multiproc/tests/common/redis.rs"]
mod redis_server;

use netns::{Children, Hosts, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_multiproc");

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
    let Some(hosts) = Hosts::make("a", 2) else {
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
    let Some(hosts) = Hosts::make("b", 2) else {
        return;
    };
    let dir = TempDir::new("netns-redis");
    let children = Children(vec![hosts.start_redis(6390, &dir.0)]);
    run_seed(
        &hosts,
        "redis://127.0.0.1:6390/0",
        |k| format!("redis://10.77.{k}.1:6390/0"),
        &[],
    );
    drop(children);
}
