//! Items that enter the stream later (a broker pool's delayed tasks, and its retries that
//! wait), and items taken back out before anyone read them (a task cancelled by id).
//!
//! A queue's scheduled items wait in two keys beside its stream: the sorted set
//! `<stream>:scheduled` (each item's key, scored by when it is due, in milliseconds since the
//! epoch) and the hash `<stream>:scheduled:items` (each key's entry body). Consumers move
//! what is due into the stream ([`RedisQueue::move_due`]), each move one script, so an item
//! moves once however many consumers look. An item's key is the caller's (a task's id): a
//! second item under the same key replaces the first.

use std::time::{Duration, Instant, SystemTime};

use redis::Value;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::entry::{Entry, decode, decode_body, parse_entry};
use super::{COMMAND_TIMEOUT, GROUP, RedisQueue};
use crate::error::{Error, Result};

/// The most items one move takes into the stream.
const MOVE_AT_ONCE: usize = 256;
/// How many entries one look for an item to take back reads.
const SCAN_PAGE: usize = 512;
/// The longest key of a scheduled item.
const MAX_KEY: usize = 256;

/// When a scheduled item is due.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Due {
    /// This long from now, by the broker's clock.
    In(Duration),
    /// At this time, by this machine's clock.
    At(SystemTime),
}

/// Adds (or replaces) the item `ARGV[1]` with body `ARGV[2]`, due `ARGV[4]` ms from the
/// broker's now (`ARGV[3]` = `in`) or at `ARGV[4]` ms since the epoch (`at`).
const SCHEDULE: &str = r"
local due = tonumber(ARGV[4])
if ARGV[3] == 'in' then
  local t = redis.call('TIME')
  due = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + due
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], due, ARGV[1])
return 1
";

/// Moves up to `ARGV[1]` due items into the stream `KEYS[3]`; returns how many it moved and
/// the milliseconds until the next one is due (-1: none waits).
const MOVE_DUE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, key in ipairs(due) do
  local body = redis.call('HGET', KEYS[2], key)
  if body then
    redis.call('XADD', KEYS[3], '*', 'codec', ARGV[2], 'body', body)
  end
  redis.call('ZREM', KEYS[1], key)
  redis.call('HDEL', KEYS[2], key)
end
local next = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = -1
if next[2] then
  wait = math.max(0, tonumber(next[2]) - now)
end
return {#due, wait}
";

/// Takes the scheduled item `ARGV[1]` out if its body is still `ARGV[2]`; 1 if it did.
const UNSCHEDULE: &str = r"
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then
  return 0
end
redis.call('HDEL', KEYS[2], ARGV[1])
return redis.call('ZREM', KEYS[1], ARGV[1])
";

/// Deletes the entry `ARGV[2]` of stream `KEYS[1]` if the group `ARGV[1]` has not delivered
/// it yet (its id is past the group's last delivered one); 1 if it did.
const DELETE_UNDELIVERED: &str = r"
local function parts(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if not ok then
  return 0
end
local last = '0-0'
for _, g in ipairs(groups) do
  local name, delivered
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] end
    if g[i] == 'last-delivered-id' then delivered = g[i + 1] end
  end
  if name == ARGV[1] and delivered then last = delivered end
end
local ems, eseq = parts(ARGV[2])
local lms, lseq = parts(last)
if not ems or not lms then
  return 0
end
if ems > lms or (ems == lms and eseq > lseq) then
  return redis.call('XDEL', KEYS[1], ARGV[2])
end
return 0
";

impl RedisQueue {
    fn scheduled_keys(&self) -> (String, String) {
        let stream = &self.keys.stream;
        (
            format!("{stream}:scheduled"),
            format!("{stream}:scheduled:items"),
        )
    }

    /// Puts `item` into the stream when `due` comes, under `key` (replacing an item
    /// scheduled under it before). Waits for the broker's answer: a refusal (out of memory,
    /// say) is the caller's error.
    pub(crate) fn schedule<T: Serialize>(&self, key: &str, item: &T, due: Due) -> Result<()> {
        self.check_open()?;
        if key.is_empty() || key.len() > MAX_KEY {
            return Err(Error::invalid(
                self.what(),
                "a scheduled item's key is 1 to 256 bytes",
            ));
        }
        let body = self.encode(item)?;
        let (mode, ms) = match due {
            Due::In(d) => ("in", d.as_millis()),
            Due::At(t) => (
                "at",
                t.duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis(),
            ),
        };
        let ms = u64::try_from(ms).unwrap_or(u64::MAX).min(1 << 52);
        let (set, items) = self.scheduled_keys();
        let ms = ms.to_string();
        let args = [key.as_bytes(), &body, mode.as_bytes(), ms.as_bytes()];
        self.eval::<Value>(SCHEDULE, &[&set, &items], &args)
            .map(drop)
    }

    /// Runs the Lua `script` on `keys` with `args`, and reads its reply.
    fn eval<T: redis::FromRedisValue>(
        &self,
        script: &str,
        keys: &[&str],
        args: &[&[u8]],
    ) -> Result<T> {
        let mut eval = redis::cmd("EVAL");
        eval.arg(script).arg(keys.len()).arg(keys).arg(args);
        let deadline = Some(Instant::now() + COMMAND_TIMEOUT);
        self.with_conn(deadline, |c| eval.query(c))
    }

    /// Moves the scheduled items that are due into the stream; how long until the next one
    /// is due (`None`: none waits).
    pub(crate) fn move_due(&self) -> Result<Option<Duration>> {
        let (set, items) = self.scheduled_keys();
        let at_once = MOVE_AT_ONCE.to_string();
        let keys = [set.as_str(), &items, &self.keys.stream];
        // Scheduled in the codec this handle writes (a broker pool's tasks are moved by its
        // workers, which write the same).
        let args = [at_once.as_bytes(), self.codec().as_bytes()];
        let (moved, wait): (u64, i64) = self.eval(MOVE_DUE, &keys, &args)?;
        if moved as usize >= MOVE_AT_ONCE {
            // More may be due already.
            return Ok(Some(Duration::ZERO));
        }
        Ok(u64::try_from(wait).ok().map(Duration::from_millis))
    }

    /// Takes the item scheduled under `key` back out, if it is still waiting and satisfies
    /// `wanted`; the item if it did.
    pub(crate) fn unschedule<T: DeserializeOwned>(
        &self,
        key: &str,
        wanted: impl Fn(&T) -> bool,
    ) -> Result<Option<T>> {
        let (set, items) = self.scheduled_keys();
        let deadline = Some(Instant::now() + COMMAND_TIMEOUT);
        let body: Option<Vec<u8>> = self.with_conn(deadline, |c| {
            redis::cmd("HGET").arg(&items).arg(key).query(c)
        })?;
        let Some(body) = body else { return Ok(None) };
        let Ok(item) = decode_body::<T>(self.codec().as_bytes(), &body) else {
            return Ok(None);
        };
        if !wanted(&item) {
            return Ok(None);
        }
        let args = [key.as_bytes(), &body];
        let removed: u64 = self.eval(UNSCHEDULE, &[&set, &items], &args)?;
        Ok((removed == 1).then_some(item))
    }

    /// Takes the first entry no consumer has read yet whose item satisfies `wanted` out of
    /// the stream; the item, or `None` if there is none (every entry is read, in pages, from
    /// the last one delivered on: the cost grows with the backlog). Entries that do not
    /// decode are passed over.
    pub(crate) fn take_back_undelivered<T: DeserializeOwned>(
        &self,
        wanted: impl Fn(&T) -> bool,
    ) -> Result<Option<T>> {
        let deadline = Some(Instant::now() + COMMAND_TIMEOUT);
        let mut from = "-".to_string();
        loop {
            let page: Value = self.with_conn(deadline, |c| {
                redis::cmd("XRANGE")
                    .arg(&self.keys.stream)
                    .arg(&from)
                    .arg("+")
                    .arg("COUNT")
                    .arg(SCAN_PAGE)
                    .query(c)
            })?;
            let Value::Array(rows) = page else {
                return Ok(None);
            };
            let entries: Vec<Entry> = rows.iter().filter_map(parse_entry).collect();
            let Some(last) = entries.last() else {
                return Ok(None);
            };
            from = format!("({}", last.id);
            for entry in &entries {
                // Bounded: an entry over the body limit does not decode.
                let Ok(item) = decode::<T>(entry) else {
                    continue;
                };
                if !wanted(&item) {
                    continue;
                }
                let args = [GROUP.as_bytes(), entry.id.as_bytes()];
                let deleted: u64 = self.eval(DELETE_UNDELIVERED, &[&self.keys.stream], &args)?;
                return Ok((deleted == 1).then_some(item));
            }
            if entries.len() < SCAN_PAGE {
                return Ok(None);
            }
        }
    }
}
