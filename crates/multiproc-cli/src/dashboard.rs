//! `multiproc dashboard`: a web page and Prometheus metrics for the queues on a Redis broker.
//!
//! A small bounded server answers HTTP ([`crate::http`]): `/` is the page (embedded, nothing fetched from
//! elsewhere), which polls `/api/status` every two seconds and draws the last minutes itself;
//! `/metrics` is the Prometheus text format; `POST /api/queues/<name>/dead/requeue` and
//! `…/dead/purge` act on a queue's dead letters; `/api/task?queue=Q&id=ID` looks a broker
//! pool's task up by id (with the pool's authkey: `--authkey-file` or `MULTIPROC_AUTHKEY`).
//! What the broker says is read at most once a second, whatever the number of pages open.
//!
//! Access: bound to loopback it is open; bound elsewhere it needs a token, which every request
//! carries (`Authorization: Bearer …`, or the cookie that `/?token=…` sets). A request that
//! changes something must be a POST with the header `X-Multiproc-Request` (which a page of
//! another site cannot send without asking first, and is not answered) and, if it says where
//! it comes from (`Origin`), come from this page.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use clap::Args;
use multiproc::{DURATION_BUCKETS, DeadLetter, QueueAdmin, QueueStatus, TaskRecords, TaskStatus};
use serde_json::json;
use std::sync::Mutex;

use crate::admin::redis_only;
use crate::http::{Reply, Request, Server};
use crate::queues::{Auth, BrokerArg};

/// The page, with its script and style.
const PAGE: &str = include_str!("dashboard.html");
/// How long a look at the broker serves every request.
const FRESH_FOR: Duration = Duration::from_secs(1);
/// The dead letters shown per queue.
const DEAD_SHOWN: usize = 20;
/// The failing items shown per queue.
const ERRORS_SHOWN: usize = 20;
/// The longest task id a request may give.
const MAX_TASK_ID: usize = 256;
/// The longest queue name a request may give.
const MAX_NAME: usize = 1024;
/// The cookie `/?token=…` sets.
const COOKIE: &str = "multiproc_token";
/// The header a request that changes something must carry.
const CHANGE_HEADER: &str = "X-Multiproc-Request";

/// `multiproc dashboard`.
#[derive(Debug, Args)]
pub(crate) struct Dashboard {
    #[command(flatten)]
    broker: BrokerArg,
    /// Where to serve the page and /metrics.
    #[arg(long, default_value = "127.0.0.1:8080")]
    bind: SocketAddr,
    /// The token every request must carry (`Authorization: Bearer TOKEN`, or open
    /// `/?token=TOKEN` once in the browser). Required when --bind is not a loopback address.
    #[arg(long, env = "MULTIPROC_DASHBOARD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The queues to show (default: every queue under the key prefix, looked for again on
    /// each look).
    queues: Vec<String>,
    /// The authkey of the broker pools whose tasks the page looks up by id (from
    /// --authkey-file or MULTIPROC_AUTHKEY); without one, tasks are not looked up.
    #[command(flatten)]
    auth: Auth,
}

pub(crate) fn dashboard(args: Dashboard) -> anyhow::Result<()> {
    let url = redis_only(&args.broker, "dashboard")?.to_string();
    if !args.bind.ip().is_loopback() && args.token.as_deref().is_none_or(str::is_empty) {
        anyhow::bail!(
            "--bind {} is reachable from other machines: give a --token (or \
             MULTIPROC_DASHBOARD_TOKEN) that requests must carry",
            args.bind
        );
    }
    let server =
        Server::bind(args.bind).with_context(|| format!("cannot listen on {}", args.bind))?;
    let bound = server.local_addr().context("the dashboard's address")?;
    eprintln!("multiproc dashboard: serving http://{bound}/");
    let state = Mutex::new(State {
        url,
        names: args.queues,
        token: args.token.filter(|t| !t.is_empty()),
        authkey: args.auth.key().ok(),
        admins: HashMap::new(),
        last: None,
        down_since: None,
    });
    server.serve(move |request| {
        state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .answer(request)
    });
    Ok(())
}

/// What the server keeps between requests.
struct State {
    url: String,
    /// The queues asked for; empty: every queue found.
    names: Vec<String>,
    token: Option<String>,
    /// The broker pools' authkey, for looking tasks up.
    authkey: Option<Vec<u8>>,
    /// A handle on each queue looked at.
    admins: HashMap<String, QueueAdmin>,
    /// The last look, and when.
    last: Option<(Instant, Snapshot)>,
    /// Since when the broker has not answered.
    down_since: Option<SystemTime>,
}

/// What one look at the broker saw.
#[derive(Clone)]
struct Snapshot {
    at: SystemTime,
    /// Why the broker could not be read, if it could not.
    error: Option<String>,
    queues: Vec<QueueLook>,
}

/// One queue, as one look saw it.
#[derive(Clone)]
struct QueueLook {
    name: String,
    status: QueueStatus,
    dead: Vec<DeadLetter>,
    /// Items that failed and wait to be tried again, with their last error.
    errors: Vec<(String, String)>,
}

impl State {
    fn answer(&mut self, request: &Request) -> Reply {
        let url = request.target.as_str();
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        if let Some(token) = &self.token {
            let from_query = query
                .split('&')
                .find_map(|p| p.strip_prefix("token="))
                .is_some_and(|t| same(t, token));
            if path == "/" && request.method == "GET" && from_query {
                // Kept by the browser for this site only, then out of the address bar.
                let cookie = format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/");
                return Reply::new(303, Vec::new())
                    .with_header("Set-Cookie", cookie)
                    .with_header("Location", "/");
            }
            if !carries_token(request, token) {
                return text(
                    401,
                    "a token is required: open /?token=TOKEN, or send \
                                  Authorization: Bearer TOKEN\n",
                )
                .with_header("WWW-Authenticate", "Bearer");
            }
        }
        match (request.method.as_str(), path) {
            ("GET", "/") => Reply::new(200, PAGE)
                .with_header("Content-Type", "text/html; charset=utf-8")
                .with_header(
                    "Content-Security-Policy",
                    "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'",
                ),
            ("GET", "/metrics") => {
                let snapshot = self.look();
                Reply::new(200, metrics(&snapshot))
                    .with_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            }
            ("GET", "/api/status") => {
                let snapshot = self.look();
                json_answer(200, &self.status_json(&snapshot))
            }
            ("GET", "/api/task") => self.task(query),
            ("POST", path) => self.change(request, path),
            (_, "/" | "/metrics" | "/api/status") => text(405, "method not allowed\n"),
            _ => text(404, "not found\n"),
        }
    }

    /// A POST: requeue or purge a queue's dead letters.
    fn change(&mut self, request: &Request, path: &str) -> Reply {
        if request.header(CHANGE_HEADER).is_none() {
            return text(403, "a change needs the header X-Multiproc-Request\n");
        }
        if let Some(origin) = request.header("Origin") {
            let host = request.header("Host").unwrap_or_default();
            if origin != format!("http://{host}") {
                return text(403, "a change must come from the dashboard's own page\n");
            }
        }
        let Some(rest) = path.strip_prefix("/api/queues/") else {
            return text(404, "not found\n");
        };
        let Some((name, action)) = rest.rsplit_once("/dead/") else {
            return text(404, "not found\n");
        };
        let name = match percent_decode(name) {
            Some(n) if !n.is_empty() && n.len() <= MAX_NAME => n,
            _ => return text(400, "a bad queue name\n"),
        };
        let done = match self.admin(&name) {
            Ok(admin) => match action {
                "requeue" => admin
                    .requeue_dead(None)
                    .map(|n| json!({ "queue": name, "requeued": n })),
                "purge" => admin
                    .purge_dead()
                    .map(|n| json!({ "queue": name, "purged": n })),
                _ => return text(404, "not found\n"),
            },
            Err(e) => Err(e),
        };
        // The next look shows the change.
        self.last = None;
        match done {
            Ok(body) => json_answer(200, &body),
            Err(e) => {
                self.admins.remove(&name);
                json_answer(502, &json!({ "error": e.to_string() }))
            }
        }
    }

    /// The handle on queue `name`, connected if need be.
    fn admin(&mut self, name: &str) -> multiproc::Result<&QueueAdmin> {
        if !self.admins.contains_key(name) {
            let admin = QueueAdmin::connect(&self.url, name)?;
            self.admins.insert(name.to_string(), admin);
        }
        Ok(&self.admins[name])
    }

    /// What the broker says now (at most [`FRESH_FOR`] old).
    fn look(&mut self) -> Snapshot {
        if let Some((at, snapshot)) = &self.last
            && at.elapsed() < FRESH_FOR
        {
            return snapshot.clone();
        }
        let snapshot = match self.read_queues() {
            Ok(queues) => {
                self.down_since = None;
                Snapshot {
                    at: SystemTime::now(),
                    error: None,
                    queues,
                }
            }
            Err(e) => {
                // Connected again on the next look.
                self.admins.clear();
                self.down_since.get_or_insert_with(SystemTime::now);
                Snapshot {
                    at: SystemTime::now(),
                    error: Some(e.to_string()),
                    queues: Vec::new(),
                }
            }
        };
        self.last = Some((Instant::now(), snapshot.clone()));
        snapshot
    }

    /// `/api/task?queue=Q&id=ID`: a broker pool's task, by id.
    fn task(&self, query: &str) -> Reply {
        let param = |name: &str| {
            query
                .split('&')
                .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
                .and_then(percent_decode)
        };
        let (Some(queue), Some(id)) = (param("queue"), param("id")) else {
            return text(400, "give ?queue=NAME&id=TASK_ID\n");
        };
        if queue.is_empty() || queue.len() > MAX_NAME || id.is_empty() || id.len() > MAX_TASK_ID {
            return text(400, "a bad queue name or task id\n");
        }
        let Some(key) = &self.authkey else {
            return json_answer(
                404,
                &json!({ "error": "tasks are looked up with the pools' authkey: start the \
                                   dashboard with --authkey-file or MULTIPROC_AUTHKEY" }),
            );
        };
        let status = TaskRecords::connect(self.url.clone(), queue.clone(), key.clone())
            .and_then(|records| records.status(&id));
        match status {
            Ok(status) => {
                let (state, detail) = describe_task(&status);
                json_answer(
                    200,
                    &json!({ "queue": queue, "id": id, "state": state, "detail": detail }),
                )
            }
            Err(e) => json_answer(502, &json!({ "error": e.to_string() })),
        }
    }

    fn read_queues(&mut self) -> multiproc::Result<Vec<QueueLook>> {
        // At once, not after a command's retries, if the broker is away.
        QueueAdmin::ping(&self.url)?;
        let names = match self.names.is_empty() {
            true => QueueAdmin::list(&self.url)?,
            false => self.names.clone(),
        };
        // Handles on queues that went are let go.
        self.admins.retain(|name, _| names.contains(name));
        let mut queues = Vec::with_capacity(names.len());
        for name in names {
            let admin = self.admin(&name)?;
            let status = admin.status()?;
            let dead = match status.dead {
                0 => Vec::new(),
                _ => admin.dead_letters(DEAD_SHOWN)?,
            };
            let errors = admin.errors(ERRORS_SHOWN)?;
            queues.push(QueueLook {
                name,
                status,
                dead,
                errors,
            });
        }
        Ok(queues)
    }

    fn status_json(&self, snapshot: &Snapshot) -> serde_json::Value {
        let ms = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
        };
        let queues: Vec<_> = snapshot
            .queues
            .iter()
            .map(|look| {
                let QueueLook {
                    name,
                    status: s,
                    dead,
                    errors,
                } = look;
                let consumers: Vec<_> = s
                    .consumers
                    .iter()
                    .map(|c| {
                        // `host-pid-random`, as the library names them.
                        let mut parts = c.name.rsplitn(3, '-');
                        let (_, pid, host) = (parts.next(), parts.next(), parts.next());
                        json!({
                            "name": c.name,
                            "host": host.unwrap_or(""),
                            "pid": pid.and_then(|p| p.parse::<u32>().ok()),
                            "holds": c.pending,
                            "idle_ms": c.idle.as_millis() as u64,
                            "dead": c.dead,
                            "oldest": c.oldest,
                            // An entry's id starts with when it was queued.
                            "oldest_queued_ms": c.oldest.as_deref()
                                .and_then(|id| id.split('-').next()?.parse::<u64>().ok()),
                        })
                    })
                    .collect();
                let dead_letters: Vec<_> = dead
                    .iter()
                    .map(|d| {
                        json!({
                            "id": d.id,
                            "reason": d.reason,
                            "deliveries": d.deliveries,
                            "body": d.body.chars().take(500).collect::<String>(),
                        })
                    })
                    .collect();
                let errors: Vec<_> = errors
                    .iter()
                    .map(|(id, error)| json!({ "id": id, "error": error }))
                    .collect();
                json!({
                    "name": name,
                    "errors": errors,
                    "waiting": s.waiting,
                    "leased": s.pending,
                    "dead": s.dead,
                    "added": s.added,
                    "delivered": s.delivered,
                    "redelivered": s.redelivered,
                    "latency_ms": s.latency.map(|l| l.as_millis() as u64),
                    "consumers": consumers,
                    "dead_letters": dead_letters,
                })
            })
            .collect();
        json!({
            "broker_up": snapshot.error.is_none(),
            "error": snapshot.error,
            "down_since_ms": self.down_since.map(ms),
            "at_ms": ms(snapshot.at),
            "queues": queues,
        })
    }
}

/// The Prometheus text format of `snapshot`: nothing about the queues while the broker is
/// away (no old figures presented as live), only `multiproc_broker_up 0`.
fn metrics(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    let up = u8::from(snapshot.error.is_none());
    family(
        &mut out,
        "multiproc_broker_up",
        "gauge",
        "Whether the broker answered the last look (1) or not (0).",
    );
    let _ = writeln!(out, "multiproc_broker_up {up}");
    type Figure = fn(&QueueStatus) -> Option<u64>;
    let figures: [(&str, &str, &str, Figure); 8] = [
        (
            "multiproc_queue_waiting",
            "gauge",
            "Items no consumer has taken yet.",
            |s| Some(s.waiting),
        ),
        (
            "multiproc_queue_leased",
            "gauge",
            "Items taken by a consumer and not yet done.",
            |s| Some(s.pending),
        ),
        (
            "multiproc_queue_dead",
            "gauge",
            "Items in the queue's dead letters.",
            |s| Some(s.dead),
        ),
        (
            "multiproc_queue_consumers",
            "gauge",
            "Consumers (workers) the broker knows for the queue.",
            |s| Some(s.consumers.len() as u64),
        ),
        (
            "multiproc_queue_dead_consumers",
            "gauge",
            "Consumers that hold items and were silent for longer than the lease.",
            |s| Some(s.consumers.iter().filter(|c| c.dead).count() as u64),
        ),
        (
            "multiproc_queue_added_total",
            "counter",
            "Items ever added to the queue's stream.",
            |s| s.added,
        ),
        (
            "multiproc_queue_delivered_total",
            "counter",
            "Items handed to a consumer (redeliveries not included).",
            |s| s.delivered,
        ),
        (
            "multiproc_queue_redelivered_total",
            "counter",
            "Items handed out again after their lease ran out or they were given back.",
            |s| Some(s.redelivered),
        ),
    ];
    for (name, kind, help, figure) in figures {
        if snapshot.queues.is_empty() {
            continue;
        }
        family(&mut out, name, kind, help);
        for look in &snapshot.queues {
            if let Some(v) = figure(&look.status) {
                let _ = writeln!(out, "{name}{{queue=\"{}\"}} {v}", label(&look.name));
            }
        }
    }
    if !snapshot.queues.is_empty() {
        let name = "multiproc_queue_latency_seconds";
        let help = "How long the item waiting longest for a consumer has waited (0: none waits).";
        family(&mut out, name, "gauge", help);
        for look in &snapshot.queues {
            // Unknown (an old broker) with items waiting: left out rather than a false 0.
            let latency = match (look.status.waiting, look.status.latency) {
                (0, _) => Some(0.0),
                (_, l) => l.map(|l| l.as_secs_f64()),
            };
            if let Some(v) = latency {
                let _ = writeln!(out, "{name}{{queue=\"{}\"}} {v}", label(&look.name));
            }
        }
        durations(&mut out, &snapshot.queues);
    }
    out
}

/// The histogram of how long each queue's items took, as its consumers counted them.
fn durations(out: &mut String, queues: &[QueueLook]) {
    let name = "multiproc_queue_task_duration_seconds";
    let help = "How long the queue's items took, from being handed out to being done.";
    family(out, name, "histogram", help);
    let bounds: Vec<String> = DURATION_BUCKETS
        .iter()
        .map(f64::to_string)
        .chain(["+Inf".to_string()])
        .collect();
    for look in queues {
        let queue = label(&look.name);
        let none = vec![0; bounds.len()];
        let status = &look.status;
        let cumulative = match status.durations.len() {
            0 => &none,
            _ => &status.durations,
        };
        for (le, n) in bounds.iter().zip(cumulative) {
            let _ = writeln!(out, "{name}_bucket{{queue=\"{queue}\",le=\"{le}\"}} {n}");
        }
        let sum = status.duration_sum.as_secs_f64();
        let _ = writeln!(out, "{name}_sum{{queue=\"{queue}\"}} {sum}");
        let count = cumulative.last().copied().unwrap_or(0);
        let _ = writeln!(out, "{name}_count{{queue=\"{queue}\"}} {count}");
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// `text` as a Prometheus label value.
fn label(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A task's state by name, and what more its status says.
fn describe_task(status: &TaskStatus) -> (&'static str, serde_json::Value) {
    match status {
        TaskStatus::Pending => ("pending", serde_json::Value::Null),
        TaskStatus::Scheduled => ("scheduled", serde_json::Value::Null),
        TaskStatus::Waiting { why } => ("waiting", json!(why)),
        TaskStatus::Started { worker } => ("started", json!(worker)),
        TaskStatus::Retrying { worker } => ("retrying", json!(worker)),
        TaskStatus::Succeeded => ("succeeded", serde_json::Value::Null),
        TaskStatus::Failed(e) => ("failed", json!(e.to_string())),
        TaskStatus::Cancelled => ("cancelled", serde_json::Value::Null),
        _ => ("unknown", json!(format!("{status:?}"))),
    }
}

/// Whether `request` carries `token`, as a bearer token or in the cookie.
fn carries_token(request: &Request, token: &str) -> bool {
    let bearer = request
        .header("Authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| same(t, token));
    let cookie = request.header("Cookie").is_some_and(|cookies| {
        cookies
            .split(';')
            .filter_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
            .any(|t| same(t, token))
    });
    bearer || cookie
}

/// Whether `a` and `b` are equal, in a time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |diff, (x, y)| diff | (x ^ y))
            == 0
}

fn text(code: u16, body: &str) -> Reply {
    Reply::new(code, body).with_header("Content-Type", "text/plain; charset=utf-8")
}

fn json_answer(code: u16, body: &serde_json::Value) -> Reply {
    Reply::new(code, body.to_string())
        .with_header("Content-Type", "application/json")
        .with_header("Cache-Control", "no-store")
}

/// `text` with its `%XX` escapes decoded; `None` if one is broken or the result is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels_are_escaped_both_ways() {
        assert_eq!(percent_decode("a%20b%2Fc").as_deref(), Some("a b/c"));
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert!(same("s3cret", "s3cret"));
        assert!(!same("s3cret", "s3creT"));
        assert!(!same("s3cret", "s3cre"));
    }
}
