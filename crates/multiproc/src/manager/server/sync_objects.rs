//! `SyncManager.Condition()` and `SyncManager.Barrier(parties)` as a server holds them, with
//! the methods CPython's `ConditionProxy` and `BarrierProxy` call (`wait_for` runs in the
//! client: it is `wait` in a loop).
//!
//! Both block the calling connection's thread only; every connection has its own.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::objects::{
    LOCK_EXPOSED, Reply, ServedLock, ServedObject, arg, deadline, exception, timeout_arg,
};
use crate::pickle::Value;
use crate::sync::{lock, wait_until};

/// What `ConditionProxy` calls.
const CONDITION_EXPOSED: &[&str] = &["acquire", "release", "wait", "notify", "notify_all"];

/// What `BarrierProxy` calls (properties through `__getattribute__`).
const BARRIER_EXPOSED: &[&str] = &["__getattribute__", "wait", "abort", "reset"];

/// Who waits on a condition: tickets in arrival order, and those notified but not yet awake.
#[derive(Default)]
struct Waiters {
    next_ticket: u64,
    waiting: VecDeque<u64>,
    notified: Vec<u64>,
}

/// `SyncManager.Condition(lock=None)`: a reentrant lock (or the given one) owned by
/// connections, and waiters woken in the order they came, as `threading.Condition`.
pub(crate) struct ServedCondition {
    lock: Arc<ServedLock>,
    waiters: Mutex<Waiters>,
    changed: Condvar,
}

impl ServedCondition {
    /// Over `lock` (a server lock the client passed), or a new `RLock`.
    pub(crate) fn new(lock: Option<Arc<ServedLock>>) -> ServedCondition {
        ServedCondition {
            lock: lock.unwrap_or_else(|| Arc::new(ServedLock::reentrant())),
            waiters: Mutex::new(Waiters::default()),
            changed: Condvar::new(),
        }
    }

    fn wait(&self, me: u64, timeout: Option<Duration>) -> Reply {
        if !self.lock.owned_for_condition(me) {
            return exception(
                "RuntimeError",
                vec![Value::str("cannot wait on un-acquired lock")],
            );
        }
        // Queue up before letting the lock go: a notifier needs the lock, so it cannot come
        // between the two and be missed.
        let ticket = {
            let mut w = lock(&self.waiters);
            let ticket = w.next_ticket;
            w.next_ticket += 1;
            w.waiting.push_back(ticket);
            ticket
        };
        let depth = self.lock.release_for_wait(me);
        let woken = |w: &mut Waiters| match w.notified.iter().position(|t| *t == ticket) {
            Some(i) => {
                w.notified.swap_remove(i);
                true
            }
            None => false,
        };
        let (mut w, notified) =
            wait_until(&self.changed, lock(&self.waiters), deadline(timeout), woken);
        if !notified {
            w.waiting.retain(|t| *t != ticket);
        }
        drop(w);
        self.lock.acquire_restore(me, depth);
        Reply::Return(Value::Bool(notified))
    }

    fn notify(&self, me: u64, n: usize) -> Reply {
        if !self.lock.owned_for_condition(me) {
            return exception(
                "RuntimeError",
                vec![Value::str("cannot notify on un-acquired lock")],
            );
        }
        let mut w = lock(&self.waiters);
        let n = n.min(w.waiting.len());
        let woken: Vec<u64> = w.waiting.drain(..n).collect();
        w.notified.extend(woken);
        self.changed.notify_all();
        Reply::Return(Value::None)
    }
}

impl ServedObject for ServedCondition {
    fn exposed(&self) -> &'static [&'static str] {
        CONDITION_EXPOSED
    }

    fn call(&self, method: &str, args: &[Value], kwds: &[(Value, Value)]) -> Reply {
        self.call_from(0, method, args, kwds)
    }

    fn call_from(&self, me: u64, method: &str, args: &[Value], kwds: &[(Value, Value)]) -> Reply {
        match method {
            m if LOCK_EXPOSED.contains(&m) => self.lock.call_from(me, m, args, kwds),
            "wait" => match timeout_arg(arg(args, kwds, 0, "timeout")) {
                Ok(timeout) => self.wait(me, timeout),
                Err(e) => e,
            },
            "notify" => match arg(args, kwds, 0, "n") {
                None => self.notify(me, 1),
                Some(Value::Int(n)) => self.notify(me, usize::try_from(*n).unwrap_or(0)),
                Some(other) => exception(
                    "TypeError",
                    vec![Value::str(format!(
                        "notify() takes an int, not {}",
                        other.type_name()
                    ))],
                ),
            },
            "notify_all" => self.notify(me, usize::MAX),
            m => Reply::Traceback(format!("AttributeError: a condition has no method {m:?}")),
        }
    }

    fn held_by(&self, conn: u64) -> bool {
        self.lock.is_owned_by(conn)
    }

    fn connection_closed(&self, conn: u64) {
        ServedObject::connection_closed(&*self.lock, conn);
    }

    fn repr(&self) -> String {
        format!("<Condition({}, 0)>", self.lock.repr())
    }
}

/// How a barrier round ended.
const PENDING: u8 = 0;
const PASSED: u8 = 1;
const BROKEN: u8 = 2;

struct BarrierState {
    /// Arrived in this round.
    count: u64,
    /// This round's outcome, shared with its waiters (a new round starts when one ends).
    round: Arc<AtomicU8>,
    /// Broken (aborted, or a wait timed out) until `reset`.
    broken: bool,
}

impl BarrierState {
    /// Ends the round as `outcome` and starts the next.
    fn end_round(&mut self, outcome: u8) {
        self.round.store(outcome, Ordering::Relaxed);
        self.round = Arc::new(AtomicU8::new(PENDING));
        self.count = 0;
    }
}

/// `SyncManager.Barrier(parties, action=None, timeout=None)` (no action: a manager does not
/// run code a client sends; and at least one party, where CPython makes a barrier of 0
/// parties that nobody passes).
pub(crate) struct ServedBarrier {
    parties: u64,
    default_timeout: Option<Duration>,
    state: Mutex<BarrierState>,
    changed: Condvar,
}

fn broken_barrier() -> Reply {
    Reply::Error(Value::reduce("threading", "BrokenBarrierError", Vec::new()))
}

impl ServedBarrier {
    /// From `create('Barrier', parties, action=None, timeout=None)`'s arguments.
    pub(crate) fn from_args(
        args: &[Value],
        kwds: &[(Value, Value)],
    ) -> std::result::Result<ServedBarrier, String> {
        let parties = match arg(args, kwds, 0, "parties") {
            Some(Value::Int(n)) if *n > 0 => *n as u64,
            Some(Value::Int(_)) => return Err("ValueError: parties must be > 0".into()),
            _ => return Err("TypeError: Barrier() needs an int number of parties".into()),
        };
        if !matches!(arg(args, kwds, 1, "action"), None | Some(Value::None)) {
            return Err("NotImplementedError: a barrier action cannot run in this manager".into());
        }
        let default_timeout = timeout_arg(arg(args, kwds, 2, "timeout"))
            .map_err(|_| "TypeError: timeout must be a number or None".to_string())?;
        Ok(ServedBarrier {
            parties,
            default_timeout,
            state: Mutex::new(BarrierState {
                count: 0,
                round: Arc::new(AtomicU8::new(PENDING)),
                broken: false,
            }),
            changed: Condvar::new(),
        })
    }

    fn wait(&self, timeout: Option<Duration>) -> Reply {
        let mut s = lock(&self.state);
        if s.broken {
            return broken_barrier();
        }
        let index = s.count;
        s.count += 1;
        if s.count >= self.parties {
            s.end_round(PASSED);
            self.changed.notify_all();
            return Reply::Return(Value::Int(index as i64));
        }
        let round = s.round.clone();
        let ended = |_: &mut BarrierState| round.load(Ordering::Relaxed) != PENDING;
        let (mut s, ended) = wait_until(&self.changed, s, deadline(timeout), ended);
        if !ended {
            // A wait that times out breaks the barrier for everyone (CPython's `_break`).
            s.broken = true;
            s.end_round(BROKEN);
            self.changed.notify_all();
            return broken_barrier();
        }
        if round.load(Ordering::Relaxed) == PASSED {
            Reply::Return(Value::Int(index as i64))
        } else {
            broken_barrier()
        }
    }
}

impl ServedObject for ServedBarrier {
    fn exposed(&self) -> &'static [&'static str] {
        BARRIER_EXPOSED
    }

    fn call(&self, method: &str, args: &[Value], kwds: &[(Value, Value)]) -> Reply {
        match method {
            "wait" => match timeout_arg(arg(args, kwds, 0, "timeout")) {
                Ok(timeout) => self.wait(timeout.or(self.default_timeout)),
                Err(e) => e,
            },
            "abort" | "reset" => {
                let mut s = lock(&self.state);
                if s.count > 0 {
                    s.end_round(BROKEN);
                }
                s.broken = method == "abort";
                self.changed.notify_all();
                Reply::Return(Value::None)
            }
            "__getattribute__" => {
                let s = lock(&self.state);
                match args.first().and_then(Value::as_str) {
                    Some("parties") => Reply::Return(Value::Int(self.parties as i64)),
                    Some("n_waiting") => {
                        Reply::Return(Value::Int(if s.broken { 0 } else { s.count as i64 }))
                    }
                    Some("broken") => Reply::Return(Value::Bool(s.broken)),
                    name => exception(
                        "AttributeError",
                        vec![Value::str(format!(
                            "'Barrier' object has no attribute {}",
                            name.map_or("?".into(), |n| format!("'{n}'"))
                        ))],
                    ),
                }
            }
            m => Reply::Traceback(format!("AttributeError: a barrier has no method {m:?}")),
        }
    }

    fn repr(&self) -> String {
        let s = lock(&self.state);
        if s.broken {
            return "<threading.Barrier: broken>".to_string();
        }
        format!("<threading.Barrier: waiters={}/{}>", s.count, self.parties)
    }
}
