//! Where a queue's commands go: its broker, or, on a Redis Cluster, the primary that serves the
//! hash slot of the queue's keys. On a cluster every key of one queue carries the queue's name
//! as its hash tag (`<prefix>{<name>}`, see `keys`), so one queue lives in one slot, on one
//! node: each connection goes to that node, and the pipelined puts and the Lua scripts work
//! as on a single broker. Different queues hash to different slots and so spread over the
//! primaries.
//!
//! A connection that breaks, or a reply that says the slot moved (`MOVED`, `ASK`,
//! `CLUSTERDOWN`: a failover under way), makes the next connection ask the cluster again who
//! serves the slot: a failover looks to a queue like a broker restart.
//!
//! Replication is asynchronous: a primary may confirm a put and die before its replica has it.
//! So on a cluster, puts are confirmed only once `WAIT` says a replica has them (see
//! `link::Link::confirm`); until then they are kept to be written again.

use std::sync::Mutex;

use redis::{Client, Connection, ConnectionAddr, ConnectionInfo, RedisError, RedisResult, Value};

use super::entry::{as_string, as_u64};
use super::{COMMAND_TIMEOUT, CONNECT_TIMEOUT};
use crate::sync::IgnorePoison;

/// How many nodes a route remembers (a bound on what a cluster's reply can make us keep).
const MAX_NODES: usize = 1024;

/// Where one queue's connections go.
// One per queue, behind an `Arc`: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub(super) enum Route {
    /// A single broker (or one whose cluster support is off).
    Single(Client),
    /// The primary serving `slot` in a Redis Cluster.
    Cluster(ClusterRoute),
}

/// A queue's slot in a cluster, and what is known of the cluster.
pub(super) struct ClusterRoute {
    /// How to connect to any node: the URL's settings, its address replaced.
    info: ConnectionInfo,
    slot: u16,
    state: Mutex<ClusterState>,
}

struct ClusterState {
    /// The nodes known, the URL's first: asked in turn who serves the slot.
    nodes: Vec<Node>,
    /// The primary serving the slot, and how many replicas it has that are not failed;
    /// `None` once a connection to it broke or was redirected.
    primary: Option<(Client, usize)>,
}

/// One slot range of `CLUSTER SLOTS`: its first and last slot, its primary and its replicas.
struct SlotRange {
    first: u16,
    last: u16,
    primary: Node,
    replicas: Vec<Node>,
}

impl SlotRange {
    fn serves(&self, slot: u16) -> bool {
        self.first <= slot && slot <= self.last
    }
}

/// A host and port.
pub(super) type Node = (String, u16);

/// `url` with only the first of the hosts it names (`redis://h1:7000,h2:7001/…`: nodes of a
/// cluster, any of which will do), and the others.
pub(super) fn split_hosts(url: &str) -> std::result::Result<(String, Vec<Node>), String> {
    let Some(scheme) = url.find("://").map(|i| i + 3) else {
        return Ok((url.to_string(), Vec::new()));
    };
    let end = url[scheme..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| scheme + i);
    let hosts_at = url[scheme..end]
        .rfind('@')
        .map_or(scheme, |i| scheme + i + 1);
    let mut hosts = url[hosts_at..end].split(',');
    let first = hosts.next().unwrap_or_default();
    let others = hosts
        .map(|h| {
            let (host, port) = match h.rsplit_once(':') {
                Some((host, port)) if !host.ends_with(':') => (
                    host,
                    port.parse::<u16>()
                        .map_err(|_| format!("{h:?} is not host:port"))?,
                ),
                _ => (h, 6379),
            };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() {
                return Err(format!("an empty host in {h:?}"));
            }
            Ok((host.to_string(), port))
        })
        .collect::<std::result::Result<Vec<Node>, String>>()?;
    Ok((
        format!("{}{first}{}", &url[..hosts_at], &url[end..]),
        others,
    ))
}

/// A client for the node at `host:port`, with `info`'s other settings (user, password, TLS).
pub(super) fn client_at(info: &ConnectionInfo, (host, port): &Node) -> RedisResult<Client> {
    let addr = match info.addr() {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host: host.clone(),
            port: *port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host.clone(), *port),
    };
    Client::open(info.clone().set_addr(addr))
}

impl Route {
    /// The route for a queue whose stream key is `stream`, found through `conn`, the first
    /// connection to the URL of `client`: on a cluster, the slot of `stream`; `seeds` are
    /// other nodes to ask should that one be down later.
    pub(super) fn find(
        client: Client,
        conn: &mut Connection,
        stream: &str,
        seeds: Vec<Node>,
    ) -> RedisResult<Route> {
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(stream)
            .query(conn)?;
        let info = client.get_connection_info().clone();
        let Some(seed) = node_of(&info) else {
            return Err(refusal(
                "a Redis Cluster is reached over TCP: give a node's redis:// or rediss:// URL, \
                 not its unix socket",
            ));
        };
        Ok(Route::Cluster(ClusterRoute {
            info,
            slot,
            state: Mutex::new(ClusterState {
                nodes: std::iter::once(seed).chain(seeds).collect(),
                primary: None,
            }),
        }))
    }

    /// A new connection to where the queue's commands go, with how many replicas a put must
    /// reach before it counts as stored (0 on a single broker, or a primary without replicas;
    /// at most 1).
    pub(super) fn connect(&self) -> RedisResult<(Connection, usize)> {
        match self {
            Route::Single(client) => {
                let c = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
                Ok((c, 0))
            }
            Route::Cluster(route) => route.connect(),
        }
    }

    /// A client for the node the queue's connections go to (which may not answer).
    pub(super) fn client(&self) -> RedisResult<Client> {
        match self {
            Route::Single(client) => Ok(client.clone()),
            Route::Cluster(route) => route.primary().map(|(client, _)| client),
        }
    }

    /// How many healthy replicas the queue's primary has, as the node at the end of `conn`
    /// (the primary) sees them now.
    pub(super) fn replicas_seen_by(&self, conn: &mut Connection) -> RedisResult<usize> {
        match self {
            Route::Single(_) => Ok(0),
            Route::Cluster(route) => {
                let reply: Value = redis::cmd("CLUSTER").arg("SLOTS").query(conn)?;
                // Only the count matters here, not who the nodes are.
                Ok(parse_slots(&reply, "")
                    .iter()
                    .find(|r| r.serves(route.slot))
                    .map_or(0, |r| r.replicas.len()))
            }
        }
    }

    /// Says that a connection broke or was redirected: the next one asks the cluster again.
    pub(super) fn lost(&self) {
        if let Route::Cluster(route) = self {
            route.state.lock().ignore_poison().primary = None;
        }
    }

    /// Whether this is a cluster.
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Route::Cluster(_))
    }

    /// A client for each primary of the cluster (for what looks at every node: `SCAN`), or
    /// the single broker's.
    pub(super) fn primaries(&self) -> RedisResult<Vec<Client>> {
        match self {
            Route::Single(client) => Ok(vec![client.clone()]),
            Route::Cluster(route) => {
                let ranges = route.ask_cluster()?;
                let mut seen: Vec<Node> = Vec::new();
                for r in ranges {
                    if !seen.contains(&r.primary) {
                        seen.push(r.primary);
                    }
                }
                seen.iter()
                    .map(|node| client_at(&route.info, node))
                    .collect()
            }
        }
    }
}

impl ClusterRoute {
    /// A client for the primary serving the slot (asking the cluster if it is not known),
    /// and how many replicas it has.
    fn primary(&self) -> RedisResult<(Client, usize)> {
        let known = self.state.lock().ignore_poison().primary.clone();
        match known {
            Some(p) => Ok(p),
            None => {
                let ranges = self.ask_cluster()?;
                let range = ranges.iter().find(|r| r.serves(self.slot)).ok_or_else(|| {
                    unreachable(format!("no node serves slot {} (yet)", self.slot))
                })?;
                let found = (client_at(&self.info, &range.primary)?, range.replicas.len());
                self.state.lock().ignore_poison().primary = Some(found.clone());
                Ok(found)
            }
        }
    }

    fn connect(&self) -> RedisResult<(Connection, usize)> {
        let (client, replicas) = self.primary()?;
        match client.get_connection_with_timeout(CONNECT_TIMEOUT) {
            Ok(c) => Ok((c, replicas.min(1))),
            Err(e) => {
                self.state.lock().ignore_poison().primary = None;
                Err(e)
            }
        }
    }

    /// The slot ranges, as the first known node that answers sees them; every node named in
    /// them is remembered.
    fn ask_cluster(&self) -> RedisResult<Vec<SlotRange>> {
        let nodes = self.state.lock().ignore_poison().nodes.clone();
        let mut last = None;
        for node in nodes {
            match self.slots_from(&node) {
                Ok(ranges) => {
                    let mut state = self.state.lock().ignore_poison();
                    for r in &ranges {
                        for node in std::iter::once(&r.primary).chain(&r.replicas) {
                            if !state.nodes.contains(node) && state.nodes.len() < MAX_NODES {
                                state.nodes.push(node.clone());
                            }
                        }
                    }
                    return Ok(ranges);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| unreachable("no node of the cluster is known".into())))
    }

    /// The slot ranges as the node `node` sees them.
    fn slots_from(&self, node: &Node) -> RedisResult<Vec<SlotRange>> {
        let mut c = client_at(&self.info, node)?.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        c.set_read_timeout(Some(COMMAND_TIMEOUT))?;
        let reply: Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut c)?;
        Ok(parse_slots(&reply, &node.0))
    }
}

/// The host and port `info` connects to, unless it is a unix socket.
fn node_of(info: &ConnectionInfo) -> Option<Node> {
    match info.addr() {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
            Some((host.clone(), *port))
        }
        _ => None,
    }
}

/// The ranges of a `CLUSTER SLOTS` reply from the node at `asked`; a node given with an empty
/// host is `asked` itself; nodes without a known endpoint (`?`) are left out.
fn parse_slots(reply: &Value, asked: &str) -> Vec<SlotRange> {
    let Value::Array(rows) = reply else {
        return Vec::new();
    };
    let node = |v: &Value| -> Option<Node> {
        let Value::Array(fields) = v else { return None };
        let host = as_string(fields.first()?)?;
        let port = u16::try_from(as_u64(fields.get(1)?)?).ok()?;
        match host.as_str() {
            "?" => None,
            "" => Some((asked.to_string(), port)),
            _ => Some((host, port)),
        }
    };
    rows.iter()
        .filter_map(|row| {
            let Value::Array(fields) = row else {
                return None;
            };
            let first = u16::try_from(as_u64(fields.first()?)?).ok()?;
            let last = u16::try_from(as_u64(fields.get(1)?)?).ok()?;
            let primary = node(fields.get(2)?)?;
            let replicas = fields.iter().skip(3).filter_map(node).collect();
            Some(SlotRange {
                first,
                last,
                primary,
                replicas,
            })
        })
        .collect()
}

/// Whether `e` says the queue's slot is served elsewhere now, or the cluster is failing over.
pub(super) fn redirected(e: &RedisError) -> bool {
    matches!(
        e.code(),
        Some("MOVED" | "ASK" | "CLUSTERDOWN" | "TRYAGAIN" | "READONLY")
    )
}

/// An error that counts as "the broker is out of reach" (retried until the deadline).
fn unreachable(why: String) -> RedisError {
    RedisError::from(std::io::Error::new(std::io::ErrorKind::NotConnected, why))
}

/// An error that is not retried.
fn refusal(why: &str) -> RedisError {
    RedisError::from((
        redis::ErrorKind::InvalidClientConfig,
        "cannot route",
        why.to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_url_may_name_several_nodes() {
        let split = |u: &str| split_hosts(u).unwrap();
        assert_eq!(
            split("redis://h:1/0"),
            ("redis://h:1/0".to_string(), vec![])
        );
        assert_eq!(
            split("redis://:pw@h1:7000,h2:7001,[::1]:7002,h4/0?prefix=x"),
            (
                "redis://:pw@h1:7000/0?prefix=x".to_string(),
                vec![
                    ("h2".to_string(), 7001),
                    ("::1".to_string(), 7002),
                    ("h4".to_string(), 6379)
                ]
            )
        );
        assert_eq!(
            split("rediss://u:p@a:1,b:2"),
            ("rediss://u:p@a:1".to_string(), vec![("b".to_string(), 2)])
        );
        assert!(split_hosts("redis://a:1,b:x/").is_err());
        assert!(split_hosts("redis://a:1,:5/").is_err());
        assert_eq!(split("redis+unix:///tmp/r.sock").1, vec![]);
    }

    #[test]
    fn slot_ranges_name_their_nodes() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                Value::Array(vec![bulk("10.0.0.1"), Value::Int(7000), bulk("id1")]),
                Value::Array(vec![bulk(""), Value::Int(7003), bulk("id4")]),
                Value::Array(vec![bulk("?"), Value::Int(7009), bulk("id9")]),
            ]),
            Value::Array(vec![Value::Int(5461), Value::Int(99999)]),
            Value::Int(3),
        ]);
        let ranges = parse_slots(&reply, "seed");
        assert_eq!(ranges.len(), 1);
        let r = &ranges[0];
        assert_eq!((r.first, r.last), (0, 5460));
        assert_eq!(r.primary, ("10.0.0.1".to_string(), 7000));
        assert_eq!(r.replicas, vec![("seed".to_string(), 7003)]);
    }
}
