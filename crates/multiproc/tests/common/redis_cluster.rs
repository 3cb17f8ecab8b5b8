//! A private Redis Cluster for a test, on loopback: its own directory, one `redis-server` per
//! node (each with a data directory, unix socket and TCP port of its own, the port's cluster
//! bus port, +10000, free too), stopped (and its files removed) when the test ends, also when
//! it fails.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeSet;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How many hash slots a cluster has.
const SLOTS: u64 = 16384;

/// How long the cluster may take to form, fail over or take a node back.
const SETTLE: Duration = Duration::from_secs(30);

/// The cluster bus port of a node is its port plus this.
const BUS_OFFSET: u16 = 10000;

/// A running Redis Cluster of `redis-server`s on 127.0.0.1.
pub struct RedisCluster {
    nodes: Vec<Node>,
    dir: PathBuf,
    replicas: usize,
}

/// One node: its port, and its process while it is up.
struct Node {
    port: u16,
    child: Option<Child>,
}

/// One range of slots from `CLUSTER SLOTS`: who serves it, as one node sees it.
#[derive(Debug)]
struct SlotRange {
    start: u64,
    end: u64,
    primary: u16,
    replicas: Vec<u16>,
}

impl RedisCluster {
    /// Starts `primaries * (1 + replicas_per_primary)` nodes, joins them into a cluster with
    /// `redis-cli --cluster create` and waits until every node sees all 16384 slots served
    /// and, with replicas, until each primary's replicas are in sync; or `None` with a printed
    /// reason when `redis-server` is not installed (under CI that fails the test instead).
    ///
    /// Nodes fsync every write (`appendonly yes`, `appendfsync always`), never evict, and a
    /// replica may always fail over (`cluster-replica-validity-factor 0`); a failed node is
    /// noticed after `cluster-node-timeout` 1000 ms.
    pub fn start(primaries: usize, replicas_per_primary: usize) -> Option<RedisCluster> {
        assert!(
            primaries >= 3,
            "a Redis Cluster needs at least 3 primaries (to be created, and for a failover's \
             majority), not {primaries}"
        );
        if !installed() {
            return None;
        }
        let dir = super::redis::private_dir("cluster");
        // From here on, a panic drops `cluster`, which stops what has been started.
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            dir,
            replicas: replicas_per_primary,
        };
        let mut taken = BTreeSet::new();
        for _ in 0..primaries * (1 + replicas_per_primary) {
            let mut attempts = 0;
            loop {
                let port = free_port_pair(&taken);
                taken.extend([port, port + BUS_OFFSET]);
                std::fs::create_dir_all(cluster.node_dir(port)).expect("create a node's directory");
                cluster.nodes.push(Node { port, child: None });
                if cluster.launch(port) {
                    break;
                }
                // Someone took the port (or its bus port) between the check and the bind.
                let log = cluster.log_tail(port);
                cluster.nodes.pop();
                attempts += 1;
                assert!(
                    attempts < 10,
                    "redis-server would not start on any free port; its log:\n{log}"
                );
                let _ = std::fs::remove_dir_all(cluster.node_dir(port));
            }
        }
        cluster.create();
        cluster.settle("the cluster to form", |c| c.formed());
        Some(cluster)
    }

    /// `redis://127.0.0.1:PORT/`, PORT the first node's (a primary, while it is up).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.nodes[0].port)
    }

    /// `redis://127.0.0.1:P1,127.0.0.1:P2,…/`: every node, so that a client can start while
    /// some are down.
    pub fn url_all(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis://{}/", nodes.join(","))
    }

    /// Every node's port, up or not, in the order started (`redis-cli --cluster create` made
    /// the first `primaries` of them the primaries).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// The ports of the nodes that are up (not [`kill`](Self::kill)ed).
    pub fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// The cluster's directory (a subdirectory per node, named by its port).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `redis-cli -h 127.0.0.1 -p PORT ARGS…` (without `-c`: pass `"-c"` first in `args`
    /// to follow redirections).
    pub fn cli(&self, port: u16, args: &[&str]) -> Output {
        Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli")
    }

    /// `redis-cli`'s output, trimmed.
    pub fn cli_text(&self, port: u16, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.cli(port, args).stdout)
            .trim()
            .to_string()
    }

    /// The port of the primary serving `key`'s slot, as the live nodes see it: the first
    /// answer naming a node that is up, else the first answer. (Between a
    /// [`kill`](Self::kill) and [`wait_failover`](Self::wait_failover) that can be the dead
    /// one.)
    pub fn primary_of_key(&self, key: &str) -> u16 {
        let mut first = None;
        let live = self.live_ports();
        for &port in &live {
            let Ok(slot) = self
                .cli_text(port, &["CLUSTER", "KEYSLOT", key])
                .parse::<u64>()
            else {
                continue;
            };
            let Ok(ranges) = self.slots(port) else {
                continue;
            };
            let Some(range) = ranges.iter().find(|r| r.start <= slot && slot <= r.end) else {
                continue;
            };
            if live.contains(&range.primary) {
                return range.primary;
            }
            first.get_or_insert(range.primary);
        }
        first.unwrap_or_else(|| panic!("no live node knows which node serves {key:?}"))
    }

    /// Kills the node on `port` as a crash would (SIGKILL) and reaps it; it stays down until
    /// [`restart`](Self::restart).
    pub fn kill(&mut self, port: u16) {
        let node = self.node_mut(port);
        if let Some(mut c) = node.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes the node on `port` (SIGSTOP): its connections stay open, it answers nothing
    /// until [`resume`](Self::resume).
    pub fn pause(&mut self, port: u16) {
        self.signal(port, "-STOP");
    }

    /// Lets the node on `port` run again (SIGCONT) after [`pause`](Self::pause).
    pub fn resume(&mut self, port: u16) {
        self.signal(port, "-CONT");
    }

    fn signal(&mut self, port: u16, signal: &str) {
        let pid = self
            .node_mut(port)
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("node {port} is down"))
            .id();
        let sent = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill {signal} {pid}");
    }

    /// The ports of the replicas of the primary on `port`, as its `INFO replication` says.
    pub fn replicas_of(&self, port: u16) -> Vec<u16> {
        self.cli_text(port, &["INFO", "replication"])
            .lines()
            .filter(|l| l.starts_with("slave"))
            .filter_map(|l| {
                let port = l.split(',').find_map(|f| f.strip_prefix("port="))?;
                port.trim().parse().ok()
            })
            .collect()
    }

    /// Waits until the cluster has failed over from the dead node on `dead`: no live node
    /// names it the primary of any slot, every live node sees all slots served and says
    /// `cluster_state:ok`. Panics after 30 s.
    pub fn wait_failover(&self, dead: u16) {
        assert!(
            !self.live_ports().contains(&dead),
            "node {dead} is up: kill it before waiting for its failover"
        );
        self.settle(&format!("a failover from node {dead}"), |c| {
            c.all_live(|port| {
                c.state_ok(port)?;
                let ranges = c.covering_slots(port)?;
                match ranges.iter().find(|r| r.primary == dead) {
                    Some(r) => Err(format!(
                        "node {port} still names {dead} the primary of slots {}-{}",
                        r.start, r.end
                    )),
                    None => Ok(()),
                }
            })
        });
    }

    /// Starts the [`kill`](Self::kill)ed node on `port` again, with its data and cluster
    /// config (a failed-over primary rejoins as a replica of its successor), and waits until
    /// every live node says `cluster_state:ok` and, if it is a replica, until it is in sync
    /// and every live node lists it as one.
    pub fn restart(&mut self, port: u16) {
        assert!(
            self.node_mut(port).child.is_none(),
            "node {port} is up: kill it before restarting it"
        );
        assert!(
            self.launch(port),
            "redis-server did not start again on port {port}; its log:\n{}",
            self.log_tail(port)
        );
        self.settle(&format!("node {port} to rejoin"), |c| {
            c.all_live(|p| {
                c.state_ok(p)?;
                c.covering_slots(p).map(drop)
            })?;
            let info = c.cli_text(port, &["INFO", "replication"]);
            if !info.lines().any(|l| l == "role:slave") {
                return Ok(());
            }
            if !info.lines().any(|l| l == "master_link_status:up") {
                return Err(format!("node {port} is not in sync with its primary"));
            }
            c.all_live(|p| {
                let listed = c.slots(p)?.iter().any(|r| r.replicas.contains(&port));
                if listed {
                    Ok(())
                } else {
                    Err(format!("node {p} does not list {port} as a replica yet"))
                }
            })
        });
    }

    fn node_mut(&mut self, port: u16) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node of this cluster has port {port}"))
    }

    fn node_dir(&self, port: u16) -> PathBuf {
        self.dir.join(port.to_string())
    }

    fn socket(&self, port: u16) -> PathBuf {
        self.node_dir(port).join("redis.sock")
    }

    fn log_file(&self, port: u16) -> PathBuf {
        self.node_dir(port).join("redis.log")
    }

    /// Starts the node on `port` and waits until it answers PING: true, or false if it
    /// exited instead (its port or bus port was taken).
    fn launch(&mut self, port: u16) -> bool {
        let dir = self.node_dir(port);
        let child = super::redis::server_command(port, &self.socket(port), &dir)
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
            .args(["--cluster-node-timeout", "1000"])
            .args(["--cluster-replica-validity-factor", "0"])
            // A replica's first sync at once, not after the default 5 s of waiting for others;
            // and its offset past 0 (which `CLUSTER SLOTS` lists replicas by) within 1 s, not
            // after the default 10 s between a primary's pings to its replicas.
            .args(["--repl-diskless-sync-delay", "0"])
            .args(["--repl-ping-replica-period", "1"])
            .arg("--logfile")
            .arg(self.log_file(port))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.node_mut(port).child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.ping(port) {
                return true;
            }
            let node = self.node_mut(port);
            let exited = node
                .child
                .as_mut()
                .is_some_and(|c| c.try_wait().ok().flatten().is_some());
            if exited {
                node.child = None;
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {port} did not come up; its log:\n{}",
                self.log_tail(port)
            );
            std::thread::park_timeout(Duration::from_millis(20));
        }
    }

    /// Answers PING with PONG (and has finished loading its data).
    fn ping(&self, port: u16) -> bool {
        super::redis::answers_ping(&self.socket(port))
    }

    /// Runs `redis-cli --cluster create` over all nodes (the first `primaries` become the
    /// primaries), at most 30 s.
    fn create(&self) {
        let log_path = self.dir.join("create.log");
        let log = File::create(&log_path).expect("create the cluster's create.log");
        let mut cmd = Command::new("redis-cli");
        cmd.args(["--cluster", "create"]);
        for n in &self.nodes {
            cmd.arg(format!("127.0.0.1:{}", n.port));
        }
        let mut child = cmd
            .args([
                "--cluster-replicas",
                &self.replicas.to_string(),
                "--cluster-yes",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone a file handle"))
            .stderr(log)
            .spawn()
            .expect("run redis-cli --cluster create");
        let deadline = Instant::now() + SETTLE;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for redis-cli") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "redis-cli --cluster create did not finish in {SETTLE:?}:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            std::thread::park_timeout(Duration::from_millis(20));
        };
        assert!(
            status.success(),
            "redis-cli --cluster create failed ({status}):\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
    }

    /// Whether the new cluster is ready: every node says `cluster_state:ok` and sees all slots
    /// served, each with its replicas; every primary has its replicas online, every replica
    /// its link to its primary up.
    fn formed(&self) -> Result<(), String> {
        self.all_live(|port| {
            self.state_ok(port)?;
            let ranges = self.covering_slots(port)?;
            if let Some(r) = ranges.iter().find(|r| r.replicas.len() != self.replicas) {
                return Err(format!(
                    "node {port} sees {} replica(s) of slots {}-{}, not {}",
                    r.replicas.len(),
                    r.start,
                    r.end,
                    self.replicas
                ));
            }
            if self.replicas == 0 {
                return Ok(());
            }
            let info = self.cli_text(port, &["INFO", "replication"]);
            if info.lines().any(|l| l == "role:slave") {
                if info.lines().any(|l| l == "master_link_status:up") {
                    return Ok(());
                }
                return Err(format!("replica {port} is not in sync with its primary"));
            }
            let want = format!("connected_slaves:{}", self.replicas);
            let online = info
                .lines()
                .filter(|l| l.starts_with("slave") && l.contains("state=online"))
                .count();
            if info.lines().any(|l| l == want) && online == self.replicas {
                Ok(())
            } else {
                Err(format!(
                    "primary {port} has {online} of {} replica(s) online",
                    self.replicas
                ))
            }
        })
    }

    /// `check` holds for every live node, or the first reason it does not.
    fn all_live(&self, mut check: impl FnMut(u16) -> Result<(), String>) -> Result<(), String> {
        self.live_ports().into_iter().try_for_each(&mut check)
    }

    /// Polls `done` until it holds; panics after 30 s with the last reason it did not.
    fn settle(&self, what: &str, mut done: impl FnMut(&Self) -> Result<(), String>) {
        let deadline = Instant::now() + SETTLE;
        loop {
            let why = match done(self) {
                Ok(()) => return,
                Err(why) => why,
            };
            assert!(
                Instant::now() < deadline,
                "waited {SETTLE:?} for {what}; last: {why}"
            );
            std::thread::park_timeout(Duration::from_millis(50));
        }
    }

    /// The node on `port` says `cluster_state:ok`.
    fn state_ok(&self, port: u16) -> Result<(), String> {
        let info = self.cli_text(port, &["CLUSTER", "INFO"]);
        if info.lines().any(|l| l == "cluster_state:ok") {
            return Ok(());
        }
        let state = info
            .lines()
            .find(|l| l.starts_with("cluster_state:"))
            .unwrap_or(&info);
        Err(format!("node {port} says {state:?}"))
    }

    /// The node's `CLUSTER SLOTS`, when they cover all 16384 slots.
    fn covering_slots(&self, port: u16) -> Result<Vec<SlotRange>, String> {
        let ranges = self.slots(port)?;
        let covered: u64 = ranges.iter().map(|r| r.end + 1 - r.start).sum();
        if covered == SLOTS {
            Ok(ranges)
        } else {
            Err(format!(
                "node {port} sees {covered} of {SLOTS} slots served"
            ))
        }
    }

    /// The node's `CLUSTER SLOTS` (through `redis-cli --json`, RESP2).
    fn slots(&self, port: u16) -> Result<Vec<SlotRange>, String> {
        let out = self.cli(port, &["-2", "--json", "CLUSTER", "SLOTS"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let bad = || {
            format!(
                "node {port}: unexpected CLUSTER SLOTS: {} {}",
                text.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            )
        };
        if !out.status.success() {
            return Err(bad());
        }
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|_| bad())?;
        let port_of = |n: &serde_json::Value| n.get(1)?.as_u64()?.try_into().ok();
        let range = |r: &serde_json::Value| -> Option<SlotRange> {
            let r = r.as_array()?;
            let nodes = r
                .get(2..)?
                .iter()
                .map(port_of)
                .collect::<Option<Vec<u16>>>()?;
            let (&primary, replicas) = nodes.split_first()?;
            Some(SlotRange {
                start: r.first()?.as_u64()?,
                end: r.get(1)?.as_u64()?,
                primary,
                replicas: replicas.to_vec(),
            })
        };
        value
            .as_array()
            .and_then(|a| a.iter().map(range).collect())
            .ok_or_else(bad)
    }

    /// The last lines of the node's log.
    fn log_tail(&self, port: u16) -> String {
        let log = std::fs::read_to_string(self.log_file(port)).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut c) = node.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether `redis-server` and `redis-cli` are installed; if not, says so (under CI that
/// fails the test instead).
pub fn installed() -> bool {
    super::redis::programs_installed(&["redis-server", "redis-cli"])
}

/// A port in 20000..40000 that, with its cluster bus port (+10000), was free a moment ago and
/// is not in `taken`. Each process starts at its own offset and goes on from there.
fn free_port_pair(taken: &BTreeSet<u16>) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 20000;
    const COUNT: u32 = 20000;
    let offset = std::process::id().wrapping_mul(7919) % COUNT;
    for _ in 0..COUNT {
        let i = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + offset.wrapping_add(i) % COUNT) as u16;
        let bus = port + BUS_OFFSET;
        if taken.contains(&port) || taken.contains(&bus) {
            continue;
        }
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(bus) {
            return port;
        }
    }
    panic!(
        "no free pair of ports P, P+{BUS_OFFSET} with P in {FIRST}..{}",
        FIRST + COUNT
    )
}
