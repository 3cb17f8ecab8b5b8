//! `multiproc serve`, `worker`, `submit` and `collect`: named queues on a manager server,
//! spoken in CPython's manager protocol so that CPython's `BaseManager` workers and masters can
//! join in, or on a Redis broker (`-b redis://…`). One loop per command serves both: the
//! queues are `JoinableQueue`s either way, only what travels in them differs ([`Wire`]).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use multiproc::{Address, ErrorKind, JoinableQueue, ManagerClient, ManagerServer, Queue};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::task_command::{TaskCommand, brief};
use crate::worker_metrics::WorkerFigures;

/// Where the authkey comes from: never the command line (it would show in `ps`).
#[derive(Debug, Args)]
pub(crate) struct Auth {
    /// A file holding the authkey (its bytes, a final newline removed). Without it the key is
    /// read from the environment variable MULTIPROC_AUTHKEY.
    #[arg(long)]
    authkey_file: Option<PathBuf>,
}

impl Auth {
    /// The authkey: the file's bytes (a final newline removed), else `MULTIPROC_AUTHKEY`.
    pub(crate) fn key(&self) -> anyhow::Result<Vec<u8>> {
        crate::access::read_authkey(self.authkey_file.as_deref())
    }
}

/// Where the queues are.
#[derive(Debug, Args)]
pub(crate) struct BrokerArg {
    /// A manager server (HOST:PORT; authkey from MULTIPROC_AUTHKEY or --authkey-file) or a
    /// Redis broker (redis://HOST:PORT/DB, rediss://… for TLS, redis+unix:///PATH). Default:
    /// the manager at 127.0.0.1:5000.
    #[arg(
        short = 'b',
        long = "broker",
        visible_alias = "connect",
        env = "MULTIPROC_BROKER"
    )]
    broker: Option<String>,
    /// On Redis: the prefix of the queues' keys, so that they keep to themselves on a Redis
    /// other applications use (the queue `task` is the stream `multiproc:task`; "" for the
    /// bare names). Default `multiproc:`, or the URL's `prefix=` parameter. With the default,
    /// a queue made before there were prefixes is used under its old keys (`status
    /// --migrate-keys` moves them).
    #[arg(long, env = "MULTIPROC_PREFIX", value_name = "PREFIX")]
    prefix: Option<String>,
    /// The Redis URL with the prefix in it (the library reads it from there), made once.
    #[arg(skip)]
    redis_url: OnceLock<Option<String>>,
}

/// Where the queue commands look without `-b` or `MULTIPROC_BROKER`.
const DEFAULT_BROKER: &str = "127.0.0.1:5000";

impl BrokerArg {
    /// The broker given, or the default manager's address.
    pub(crate) fn address(&self) -> &str {
        self.broker.as_deref().unwrap_or(DEFAULT_BROKER)
    }

    /// Whether a broker was given (`-b` or `MULTIPROC_BROKER`).
    pub(crate) fn given(&self) -> bool {
        self.broker.is_some()
    }

    /// The Redis URL, if the broker is one, with `--prefix` in it as its `prefix=` query
    /// parameter: every queue opened with it (`Queue::connect`, `QueueAdmin::connect`, …)
    /// has its keys under that prefix.
    pub(crate) fn redis(&self) -> Option<&str> {
        self.redis_url
            .get_or_init(|| {
                let b = self.address();
                let is_redis = ["redis://", "rediss://", "redis+unix://"]
                    .iter()
                    .any(|scheme| b.starts_with(scheme));
                is_redis.then(|| match &self.prefix {
                    Some(prefix) => crate::access::with_prefix(b, prefix),
                    None => b.to_string(),
                })
            })
            .as_deref()
    }

    /// Connects to the manager, or names the broker.
    fn backend(&self, auth: &Auth) -> anyhow::Result<Backend<'_>> {
        if let Some(url) = self.redis() {
            return Ok(Backend::Redis(url));
        }
        let manager = ManagerClient::connect(&address(self.address())?, &auth.key()?)?;
        Ok(Backend::Manager(manager))
    }
}

/// Where the queues are.
enum Backend<'a> {
    Manager(ManagerClient),
    Redis(&'a str),
}

pub(crate) fn seconds(s: f64, what: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("bad {what}: {s}"))
}

/// A task or result: an integer, a text or bytes, as Python's `int`, `str` or `bytes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub(crate) enum Item {
    Int(i64),
    Text(String),
    Bytes(serde_bytes::ByteBuf),
}

impl Item {
    pub(crate) fn parse(s: &str) -> Item {
        s.parse()
            .map(Item::Int)
            .unwrap_or_else(|_| Item::Text(s.to_string()))
    }

    /// A command's output: a text if it is UTF-8, bytes otherwise.
    fn from_output(out: Vec<u8>) -> Item {
        match String::from_utf8(out) {
            Ok(s) => Item::Text(s),
            Err(e) => Item::Bytes(serde_bytes::ByteBuf::from(e.into_bytes())),
        }
    }

    /// What a command is given: the integer's digits, the text's or the bytes themselves.
    fn bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        match self {
            Item::Int(n) => n.to_string().into_bytes().into(),
            Item::Text(s) => s.as_bytes().into(),
            Item::Bytes(b) => b.as_slice().into(),
        }
    }

    /// For a log line: cut and escaped (a task's text is anybody's).
    pub(crate) fn brief(&self) -> String {
        match self {
            Item::Int(n) => n.to_string(),
            _ => brief(&self.bytes()),
        }
    }
}

impl std::fmt::Display for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Item::Int(n) => write!(f, "{n}"),
            Item::Text(s) => f.write_str(s),
            Item::Bytes(b) => write!(f, "{}", b.escape_ascii()),
        }
    }
}

/// The typeid CPython's seed registers for queue `name`: `task` → `get_task_queue`.
fn typeid(name: &str) -> String {
    format!("get_{name}_queue")
}

/// `HOST:PORT`, or a Unix socket's path (anything with a `/`, as CPython's `AF_UNIX`
/// addresses).
fn address(s: &str) -> anyhow::Result<Address> {
    if s.contains('/') {
        return Ok(Address::unix(s));
    }
    Address::tcp(s).with_context(|| format!("bad address {s:?}"))
}

/// `multiproc serve`.
#[derive(Debug, Args)]
pub(crate) struct Serve {
    /// Where to listen: HOST:PORT (loopback by default; port 0 picks a free one) or the path
    /// of a Unix socket.
    #[arg(long, default_value = "127.0.0.1:5000")]
    bind: String,
    /// A queue to serve, registered as `get_<name>_queue` (repeat for several).
    #[arg(long = "queue")]
    queues: Vec<String>,
    /// A queue to serve under exactly this typeid (a `BaseManager.register('get_jobs',
    /// callable=…)` that returns a `queue.Queue`; repeat for several).
    #[arg(long = "queue-typeid")]
    queue_typeids: Vec<String>,
    /// Ignore SIGINT, as CPython's manager process does: a Ctrl-C meant for the program that
    /// started the server (it shuts the server down itself).
    #[arg(long)]
    ignore_sigint: bool,
    #[command(flatten)]
    auth: Auth,
}

pub(crate) fn serve(args: Serve) -> anyhow::Result<()> {
    if args.ignore_sigint {
        // Blocked before the server starts any thread, so no thread of it ever takes SIGINT:
        // the signal stays pending and never ends us (no handler, so nothing unsafe).
        nix::sys::signal::SigSet::from(nix::sys::signal::Signal::SIGINT)
            .thread_block()
            .context("cannot ignore SIGINT")?;
    }
    let mut server = ManagerServer::bind(&address(&args.bind)?, &args.auth.key()?)?;
    let mut names: Vec<String> = args.queues.iter().map(|q| typeid(q)).collect();
    names.extend(args.queue_typeids.iter().cloned());
    for typeid in &names {
        server.register_queue::<Item>(typeid);
    }
    // SyncManager's typeids (dict, list, Queue, Lock, …) are always served.
    names.push("SyncManager's types".to_string());
    // One line, flushed at once: a program that started us reads the address from it.
    println!("serving {} on {}", names.join(", "), server.address());
    std::io::Write::flush(&mut std::io::stdout())?;
    server.serve_forever();
    Ok(())
}

/// `multiproc worker`.
#[derive(Debug, Args)]
pub(crate) struct Worker {
    #[command(flatten)]
    pub(crate) broker: BrokerArg,
    /// The queue to take tasks from (default `task`; with --run-jobs, `run`).
    #[arg(long)]
    pub(crate) tasks: Option<String>,
    /// The queue to put results in.
    #[arg(long, default_value = "result")]
    pub(crate) results: String,
    /// Stop after this many seconds without a task.
    #[arg(long, default_value_t = 3.0)]
    pub(crate) idle: f64,
    /// On Redis: seconds a taken task stays leased before another worker may take it (the
    /// lease is renewed while the task runs). The queue's setting: the first to connect sets
    /// it (default 30), the others take it; a worker asking for another one is refused.
    #[arg(long)]
    pub(crate) lease: Option<f64>,
    /// On Redis: deliveries before a task that keeps failing goes to the dead letters (the
    /// queue's setting, as --lease; default 5).
    #[arg(long)]
    pub(crate) max_deliveries: Option<u32>,
    /// Instead of a command, square integer tasks (the seeds' `n * n = ...`).
    #[arg(long, conflicts_with = "command")]
    pub(crate) square: bool,
    /// Run the command lines `multiproc run --broker` sends (on Redis), each with the shell
    /// (--shell): only jobs signed with this worker's authkey for this queue; any other goes
    /// to the dead letters unrun. Without this flag a worker never runs a job's command line.
    #[arg(long, conflicts_with_all = ["command", "square"])]
    pub(crate) run_jobs: bool,
    /// With --run-jobs: the shell that runs each command line.
    #[arg(long, default_value = "/bin/sh", requires = "run_jobs")]
    pub(crate) shell: PathBuf,
    /// The command to run per task, without a shell; its standard output, trimmed, is the
    /// result. An argument `{}` is the task; a `{}` inside a shell's script is the task quoted
    /// for that shell (`-- sh -c 'echo {}'`); the task is also the command's standard input.
    /// On Redis a command that fails gives its task back to be tried again (then to the dead
    /// letters); on a manager its error is the result.
    #[arg(last = true)]
    pub(crate) command: Vec<String>,
    /// Serve the worker's own figures (tasks done and failed, their durations, whether one
    /// runs now) in Prometheus' text format at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics_bind: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub(crate) auth: Auth,
}

/// What a worker does with each task: square it, or run a command.
pub(crate) enum TaskRunner {
    Square,
    Command(TaskCommand),
}

impl TaskRunner {
    /// Checks the worker's arguments before any task is taken.
    pub(crate) fn new(args: &Worker) -> anyhow::Result<TaskRunner> {
        if args.square {
            return Ok(TaskRunner::Square);
        }
        Ok(TaskRunner::Command(TaskCommand::parse(&args.command)?))
    }

    pub(crate) fn run(&self, task: &Item) -> anyhow::Result<Item> {
        match self {
            TaskRunner::Square => {
                let Item::Int(n) = task else {
                    bail!("--square needs integer tasks, got {}", task.brief());
                };
                let square = n
                    .checked_mul(*n)
                    .with_context(|| format!("{n} * {n} is too large"))?;
                Ok(Item::Text(format!("{n} * {n} = {square}")))
            }
            TaskRunner::Command(command) => Ok(Item::from_output(command.run(&task.bytes())?)),
        }
    }
}

pub(crate) fn worker(args: Worker) -> anyhow::Result<()> {
    let idle = seconds(args.idle.max(0.0), "--idle")?;
    let default_tasks = if args.run_jobs { "run" } else { "task" };
    let tasks_name = args.tasks.as_deref().unwrap_or(default_tasks);
    if args.run_jobs {
        let Some(url) = args.broker.redis() else {
            bail!("--run-jobs takes command lines from a Redis broker: give one with -b redis://…");
        };
        let key = args.auth.key()?;
        let tasks = broker_tasks(url, tasks_name, &args)?;
        return crate::remote::run_jobs(url, tasks_name, &tasks, &key, &args.shell, idle);
    }
    let runner = TaskRunner::new(&args)?;
    let figures = WorkerFigures::new(tasks_name);
    if let Some(addr) = args.metrics_bind {
        figures.serve(addr)?;
    }
    match args.broker.backend(&args.auth)? {
        Backend::Manager(m) => {
            let tasks = m.queue::<Item>(&typeid(tasks_name))?;
            let results = m.queue::<Item>(&typeid(&args.results))?;
            work::<Pickled>(&tasks, &results, (&runner, &figures), idle)
        }
        Backend::Redis(url) => {
            let tasks = broker_tasks(url, tasks_name, &args)?;
            let results = Queue::connect(url, &args.results)?;
            work::<Json>(&tasks, &results, (&runner, &figures), idle)
        }
    }
}

/// A worker's task queue on Redis, with its `--lease` and `--max-deliveries`.
fn broker_tasks<T>(url: &str, name: &str, args: &Worker) -> anyhow::Result<JoinableQueue<T>>
where
    T: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    let mut tasks = Queue::broker(url, name);
    if let Some(lease) = args.lease {
        tasks = tasks.lease(seconds(lease, "--lease")?);
    }
    if let Some(n) = args.max_deliveries {
        tasks = tasks.max_deliveries(n);
    }
    Ok(tasks.build_joinable()?)
}

/// The worker's loop, the same on every backend: takes tasks until none came for `idle`,
/// puts each one's result, then says the task is done.
fn work<W: Wire>(
    tasks: &JoinableQueue<W::Task>,
    results: &Queue<W::Outcome>,
    (runner, figures): (&TaskRunner, &WorkerFigures),
    idle: Duration,
) -> anyhow::Result<()> {
    let (mut done, mut failed) = (0u64, 0u64);
    loop {
        let task = match tasks.get_timeout(idle) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::Timeout => break,
            Err(e) => return Err(e.into()),
        };
        figures.started();
        let ran = runner.run(W::item(&task));
        figures.ended(ran.is_err());
        let result = match ran {
            Ok(result) => {
                done += 1;
                result
            }
            Err(e) if W::REDELIVERS => {
                // Given back to be tried again, then to the dead letters.
                eprintln!("task {} failed: {e:#}", W::item(&task).brief());
                tasks.task_failed(&format!("{e:#}"))?;
                failed += 1;
                continue;
            }
            Err(e) => {
                failed += 1;
                Item::Text(format!("error: {e:#}"))
            }
        };
        println!("task {} -> {}", W::item(&task).brief(), result.brief());
        results.put(W::outcome(task, result))?;
        // The result is stored before the task is done: a worker that dies in between leaves
        // the task to run again (where tasks are delivered again), never a task done without
        // its result.
        results.flush()?;
        tasks.task_done()?;
    }
    println!(
        "worker: {} done, {failed} failed, none left",
        tasks_word(done)
    );
    if failed > 0 {
        bail!("{} failed", tasks_word(failed));
    }
    Ok(())
}

/// `1 task`, `2 tasks`.
fn tasks_word(n: u64) -> String {
    format!("{n} task{}", if n == 1 { "" } else { "s" })
}

/// What travels in a backend's queues.
trait Wire {
    /// A task as it is queued.
    type Task: Serialize + DeserializeOwned;
    /// A result as it is queued.
    type Outcome: Serialize + DeserializeOwned;
    /// Whether a failed task is given back to be tried again (rather than answered with its
    /// error).
    const REDELIVERS: bool;
    fn task(id: u64, item: Item) -> Self::Task;
    fn item(task: &Self::Task) -> &Item;
    fn outcome(task: Self::Task, result: Item) -> Self::Outcome;
    /// The result, and the id of its task if results carry one (a task run twice, after its
    /// worker died, then gives one result).
    fn result(outcome: &Self::Outcome) -> (&Item, Option<u64>);
}

/// On a manager: bare items, as CPython's seed workers and masters put them.
struct Pickled;

impl Wire for Pickled {
    type Task = Item;
    type Outcome = Item;
    const REDELIVERS: bool = false;
    fn task(_: u64, item: Item) -> Item {
        item
    }
    fn item(task: &Item) -> &Item {
        task
    }
    fn outcome(_: Item, result: Item) -> Item {
        result
    }
    fn result(outcome: &Item) -> (&Item, Option<u64>) {
        (outcome, None)
    }
}

/// On a broker: JSON objects any language can read and write (see `docs/broker.md`): a task
/// `{"id": 7, "task": 3}`, its result `{"id": 7, "task": 3, "result": "3 * 3 = 9"}`.
struct Json;

/// A task on a broker: its id (unique per submission) and the task.
#[derive(Debug, Serialize, Deserialize)]
struct Task {
    id: u64,
    task: Item,
}

/// A result on a broker: the task's id and the task, and what came of it.
#[derive(Debug, Serialize, Deserialize)]
struct Outcome {
    id: u64,
    task: Item,
    result: Item,
}

impl Wire for Json {
    type Task = Task;
    type Outcome = Outcome;
    const REDELIVERS: bool = true;
    fn task(id: u64, task: Item) -> Task {
        Task { id, task }
    }
    fn item(task: &Task) -> &Item {
        &task.task
    }
    fn outcome(task: Task, result: Item) -> Outcome {
        Outcome {
            id: task.id,
            task: task.task,
            result,
        }
    }
    fn result(outcome: &Outcome) -> (&Item, Option<u64>) {
        (&outcome.result, Some(outcome.id))
    }
}

/// `multiproc submit`.
#[derive(Debug, Args)]
pub(crate) struct Submit {
    #[command(flatten)]
    pub(crate) broker: BrokerArg,
    /// The queue to put into.
    #[arg(long, default_value = "task")]
    pub(crate) queue: String,
    /// The tasks (integers travel as Python ints, anything else as str). None, or `-`: read
    /// them from standard input, one a line.
    pub(crate) items: Vec<String>,
    /// With tasks from standard input: they end with NUL instead of newline.
    #[arg(short = '0', long = "null")]
    pub(crate) null: bool,
    #[command(flatten)]
    pub(crate) auth: Auth,
}

pub(crate) fn submit(args: Submit) -> anyhow::Result<()> {
    let items = match args.items.as_slice() {
        [] => stdin_tasks(args.null)?,
        [dash] if dash == "-" => stdin_tasks(args.null)?,
        _ => args.items.clone(),
    };
    match args.broker.backend(&args.auth)? {
        Backend::Manager(m) => {
            put_tasks::<Pickled>(&*m.queue::<Item>(&typeid(&args.queue))?, &items)
        }
        Backend::Redis(url) => put_tasks::<Json>(&Queue::connect(url, &args.queue)?, &items),
    }
}

/// The tasks on standard input, one a line (or NUL-terminated); at most [`MAX_TASK_BYTES`]
/// each, as a task on the command line could be.
fn stdin_tasks(null: bool) -> anyhow::Result<Vec<String>> {
    use std::io::BufRead;
    let delim = if null { b'\0' } else { b'\n' };
    let mut tasks = Vec::new();
    for (i, record) in std::io::stdin().lock().split(delim).enumerate() {
        let record = record.context("reading tasks from standard input")?;
        if record.len() > MAX_TASK_BYTES {
            bail!(
                "task {} on standard input is {} bytes, over the limit of {MAX_TASK_BYTES}",
                i + 1,
                record.len()
            );
        }
        let text = String::from_utf8(record)
            .with_context(|| format!("task {} on standard input is not UTF-8", i + 1))?;
        tasks.push(text);
    }
    Ok(tasks)
}

/// The largest task `submit` reads from standard input.
const MAX_TASK_BYTES: usize = 1 << 20;

fn put_tasks<W: Wire>(queue: &Queue<W::Task>, items: &[String]) -> anyhow::Result<()> {
    // Ids unique across submissions: a random batch number, then the position.
    let batch = u64::from(random_u32()) << 32;
    for (i, item) in items.iter().enumerate() {
        queue.put(W::task(batch | i as u64, Item::parse(item)))?;
    }
    // On a broker puts go without waiting for its replies: this says every task is stored.
    queue.flush()?;
    println!("submitted {}", tasks_word(items.len() as u64));
    Ok(())
}

fn random_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish() as u32
}

/// `multiproc collect`.
#[derive(Debug, Args)]
pub(crate) struct Collect {
    #[command(flatten)]
    pub(crate) broker: BrokerArg,
    /// The queue to take from.
    #[arg(long, default_value = "result")]
    pub(crate) queue: String,
    /// How many results to wait for (on Redis: distinct tasks; a result that comes twice,
    /// from a task run again after its worker died, is printed once).
    #[arg(long)]
    pub(crate) count: usize,
    /// Give up after this many seconds without a result.
    #[arg(long, default_value_t = 30.0)]
    pub(crate) timeout: f64,
    #[command(flatten)]
    pub(crate) auth: Auth,
}

pub(crate) fn collect(args: Collect) -> anyhow::Result<()> {
    let wait = seconds(args.timeout.max(0.0), "--timeout")?;
    match args.broker.backend(&args.auth)? {
        Backend::Manager(m) => {
            take_results::<Pickled>(&*m.queue::<Item>(&typeid(&args.queue))?, args.count, wait)
        }
        Backend::Redis(url) => {
            take_results::<Json>(&Queue::connect(url, &args.queue)?, args.count, wait)
        }
    }
}

/// Prints `count` results (one per task where results name their task).
fn take_results<W: Wire>(
    queue: &Queue<W::Outcome>,
    count: usize,
    wait: Duration,
) -> anyhow::Result<()> {
    let mut seen = HashSet::new();
    let mut taken = 0;
    while taken < count {
        match queue.get_timeout(wait) {
            Ok(outcome) => {
                let (result, id) = W::result(&outcome);
                if id.is_none_or(|id| seen.insert(id)) {
                    println!("{result}");
                    taken += 1;
                }
            }
            Err(e) if e.kind() == ErrorKind::Timeout => {
                bail!("only {taken} of {count} results came within {wait:?}")
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
