//! Where a queue's keys are: under a prefix (`multiproc:` unless the builder or the URL's
//! `prefix=` says otherwise), or, for a queue made before there were prefixes, under its bare
//! name until [`QueueAdmin::migrate_keys`](super::QueueAdmin::migrate_keys) moves them.

use std::collections::BTreeSet;
use std::sync::Mutex;

use redis::{Connection, Value};

use super::GROUP;
use super::entry::{as_string, field_of};
use crate::sync::IgnorePoison;

/// The prefix of a queue's keys when neither the builder nor the URL gives one.
pub(super) const DEFAULT_PREFIX: &str = "multiproc:";
/// The longest prefix accepted, in bytes.
pub(super) const MAX_PREFIX: usize = 256;
/// The name of the URL's query parameter that gives the prefix.
const URL_PARAMETER: &str = "prefix";
/// How many times a migration starts again when a key it watches changes under it.
const MIGRATE_ATTEMPTS: usize = 8;

/// The key names of one queue.
pub(super) struct Keys {
    /// The stream of items, read through the group [`GROUP`].
    pub(super) stream: String,
    /// The dead-letter stream.
    pub(super) dead: String,
    /// The hash of the last error reported for each entry.
    pub(super) errors: String,
    /// The queue's settings, which every handle shares: `lease_ms`, `max_deliveries`.
    pub(super) config: String,
    /// These are a queue's old keys, its bare name, found while the default prefix was asked
    /// for: its producers write only to a stream that exists (`XADD … NOMKSTREAM`), so that
    /// one left running while the keys are moved is told, not lost.
    pub(super) old: bool,
}

impl Keys {
    /// The keys of queue `name` under `prefix`.
    pub(super) fn new(prefix: &str, name: &str) -> Keys {
        Keys {
            stream: format!("{prefix}{name}"),
            dead: format!("{prefix}{name}:dead"),
            errors: format!("{prefix}{name}:errors"),
            config: format!("{prefix}{name}:config"),
            old: false,
        }
    }

    /// The keys of queue `name` under `prefix` on a Redis Cluster: the name is the hash tag
    /// of every one (`<prefix>{<name>}…`), so that they share a slot (see `route`).
    pub(super) fn tagged(prefix: &str, name: &str) -> Keys {
        Keys::new(prefix, &format!("{{{name}}}"))
    }

    /// Every key, the stream first.
    pub(super) fn all(&self) -> [&str; 4] {
        [&self.stream, &self.dead, &self.errors, &self.config]
    }
}

/// `url` without its `prefix=` query parameter, and that parameter's value (decoded as a form
/// value, as the Redis client decodes the others); an error if it is given twice, differently.
pub(super) fn split_url(url: &str) -> std::result::Result<(String, Option<String>), String> {
    let (head, fragment) = url.split_at(url.find('#').unwrap_or(url.len()));
    let Some((base, query)) = head.split_once('?') else {
        return Ok((url.to_string(), None));
    };
    let mut kept = Vec::new();
    let mut prefix: Option<String> = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match form_urlencoded::parse(pair.as_bytes()).next() {
            Some((key, value)) if key == URL_PARAMETER => match &prefix {
                Some(earlier) if *earlier != value => {
                    return Err(format!(
                        "the URL gives two key prefixes, {earlier:?} and {value:?}"
                    ));
                }
                _ => prefix = Some(value.into_owned()),
            },
            _ => kept.push(pair),
        }
    }
    let mut stripped = base.to_string();
    if !kept.is_empty() {
        stripped.push('?');
        stripped.push_str(&kept.join("&"));
    }
    stripped.push_str(fragment);
    Ok((stripped, prefix))
}

/// The prefix a handle uses: the one asked for through the builder, the URL's, or the default;
/// an error if the builder's and the URL's differ, or if it is too long.
pub(super) fn resolve_prefix(
    asked: Option<&str>,
    in_url: Option<&str>,
) -> std::result::Result<String, String> {
    let prefix = match (asked, in_url) {
        (Some(asked), Some(in_url)) if asked != in_url => {
            return Err(format!(
                "the key prefix asked for, {asked:?}, is not the URL's, {in_url:?}"
            ));
        }
        (Some(prefix), _) | (None, Some(prefix)) => prefix,
        (None, None) => DEFAULT_PREFIX,
    };
    if prefix.len() > MAX_PREFIX {
        return Err(format!(
            "a key prefix must be at most {MAX_PREFIX} bytes, not {}",
            prefix.len()
        ));
    }
    Ok(prefix.to_string())
}

/// The keys of queue `name` under `prefix`, or its old ones: with the default prefix, when the
/// prefixed stream does not exist and a stream named `name` read through our group does (a
/// queue made before there were prefixes), that one is the queue, so nothing in it is lost.
pub(super) fn find_keys(c: &mut Connection, prefix: &str, name: &str) -> redis::RedisResult<Keys> {
    let new = Keys::new(prefix, name);
    if prefix != DEFAULT_PREFIX {
        return Ok(new);
    }
    let (exists, kind): (bool, String) = redis::pipe()
        .cmd("EXISTS")
        .arg(&new.stream)
        .cmd("TYPE")
        .arg(name)
        .query(c)?;
    if exists || kind != "stream" || !has_group(c, name)? {
        return Ok(new);
    }
    Ok(Keys {
        old: true,
        ..Keys::new("", name)
    })
}

/// Whether `stream` has the consumer group [`GROUP`].
pub(super) fn has_group(c: &mut Connection, stream: &str) -> redis::RedisResult<bool> {
    let groups: Value = redis::cmd("XINFO").arg("GROUPS").arg(stream).query(c)?;
    let ours =
        |row: &Value| field_of(row, "name").and_then(|v| as_string(&v)).as_deref() == Some(GROUP);
    Ok(matches!(groups, Value::Array(rows) if rows.iter().any(ours)))
}

/// Says once per process and queue that `name` at `url` (already redacted) is used under its
/// old keys, and how to move them.
pub(super) fn warn_old_keys(url: &str, name: &str) {
    static WARNED: Mutex<BTreeSet<(String, String)>> = Mutex::new(BTreeSet::new());
    if !WARNED
        .lock()
        .ignore_poison()
        .insert((url.to_string(), name.to_string()))
    {
        return;
    }
    tracing::warn!(
        queue = %name,
        broker = %url,
        "the queue is under its old keys ({name}, {name}:dead, ...), not under the prefix \
         {DEFAULT_PREFIX:?}: they are used as they are, nothing is lost; to move them, stop the \
         queue's producers and consumers, then run `multiproc status --migrate-keys {name}` \
         (QueueAdmin::migrate_keys)"
    );
}

/// What a migration found, and did.
pub(super) enum Migration {
    /// The old keys were renamed (old, new), in one transaction.
    Moved(Vec<(String, String)>),
    /// There are no old keys and the stream under the prefix exists: nothing to do.
    AlreadyMoved,
    /// Neither the old stream nor the new one exists.
    NoQueue,
    /// The old key is not a multiproc queue: why.
    NotOurs(String),
    /// These new keys exist already (nothing was renamed).
    Taken(Vec<String>),
    /// The keys kept changing while they were looked at (nothing was renamed).
    Busy,
}

/// Renames the old keys of queue `name` (its bare name) to those under `prefix`, atomically:
/// the keys are watched while they are looked at, and the renames go in one MULTI/EXEC that
/// does not run if any of them changed meanwhile (then it starts again, a few times).
pub(super) fn migrate(
    c: &mut Connection,
    prefix: &str,
    name: &str,
) -> redis::RedisResult<Migration> {
    let old = Keys::new("", name);
    let new = Keys::new(prefix, name);
    for _ in 0..MIGRATE_ATTEMPTS {
        redis::cmd("WATCH")
            .arg(&old.all())
            .arg(&new.all())
            .query::<()>(c)?;
        let found = look(c, &old, &new);
        let moves = match found {
            Ok(Ok(moves)) => moves,
            Ok(Err(refusal)) => {
                redis::cmd("UNWATCH").query::<()>(c)?;
                return Ok(refusal);
            }
            Err(e) => {
                // The connection may be gone; if not, it must not stay watching.
                let _ = redis::cmd("UNWATCH").query::<()>(c);
                return Err(e);
            }
        };
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (from, to) in &moves {
            pipe.cmd("RENAME").arg(from).arg(to).ignore();
        }
        // Nil when a watched key changed: the transaction did not run.
        let done: Option<()> = pipe.query(c)?;
        if done.is_some() {
            return Ok(Migration::Moved(moves));
        }
    }
    Ok(Migration::Busy)
}

/// Under WATCH: the renames that move queue `old` to `new`, or why there are none.
#[allow(clippy::type_complexity)]
fn look(
    c: &mut Connection,
    old: &Keys,
    new: &Keys,
) -> redis::RedisResult<std::result::Result<Vec<(String, String)>, Migration>> {
    let kind: String = redis::cmd("TYPE").arg(&old.stream).query(c)?;
    let mut exists = redis::pipe();
    for key in old.all().into_iter().chain(new.all()) {
        exists.cmd("EXISTS").arg(key);
    }
    let exists: Vec<bool> = exists.query(c)?;
    let (old_exist, new_exist) = exists.split_at(exists.len() / 2);
    match kind.as_str() {
        "none" if new_exist.first() == Some(&true) => return Ok(Err(Migration::AlreadyMoved)),
        "none" => return Ok(Err(Migration::NoQueue)),
        "stream" => {}
        other => {
            return Ok(Err(Migration::NotOurs(format!(
                "the key {:?} is a {other}, not a stream",
                old.stream
            ))));
        }
    }
    if !has_group(c, &old.stream)? {
        return Ok(Err(Migration::NotOurs(format!(
            "the stream {:?} has no consumer group {GROUP:?}",
            old.stream
        ))));
    }
    let taken: Vec<String> = new
        .all()
        .iter()
        .zip(new_exist)
        .filter(|(_, exists)| **exists)
        .map(|(key, _)| key.to_string())
        .collect();
    if !taken.is_empty() {
        return Ok(Err(Migration::Taken(taken)));
    }
    Ok(Ok(old
        .all()
        .iter()
        .zip(new.all())
        .zip(old_exist)
        .filter(|(_, exists)| **exists)
        .map(|((from, to), _)| (from.to_string(), to.to_string()))
        .collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_comes_out_of_the_url_and_the_rest_stays_as_it_was() {
        let split = |url: &str| split_url(url).unwrap();
        assert_eq!(split("redis://h:6379/0"), ("redis://h:6379/0".into(), None));
        assert_eq!(
            split("redis://h/0?prefix=app%3A"),
            ("redis://h/0".into(), Some("app:".into()))
        );
        assert_eq!(
            split("redis://h/0?protocol=resp3&prefix=a+b&x=%41"),
            (
                "redis://h/0?protocol=resp3&x=%41".into(),
                Some("a b".into())
            )
        );
        assert_eq!(
            split("rediss://h/?prefix=#insecure"),
            ("rediss://h/#insecure".into(), Some(String::new()))
        );
        assert_eq!(
            split("redis+unix:///tmp/r.sock?db=2&prefix={t}:"),
            ("redis+unix:///tmp/r.sock?db=2".into(), Some("{t}:".into()))
        );
        // A `?` after the fragment is the fragment's.
        assert_eq!(
            split("redis://h/#x?prefix=a"),
            ("redis://h/#x?prefix=a".into(), None)
        );
        assert_eq!(
            split("redis://h/?prefix=a&prefix=a"),
            ("redis://h/".into(), Some("a".into()))
        );
        let err = split_url("redis://h/?prefix=a&prefix=b").unwrap_err();
        assert!(err.contains("two key prefixes"), "{err}");
    }

    #[test]
    fn the_prefix_is_the_builders_or_the_urls_or_the_default_and_bounded() {
        assert_eq!(resolve_prefix(None, None).unwrap(), DEFAULT_PREFIX);
        assert_eq!(resolve_prefix(Some(""), None).unwrap(), "");
        assert_eq!(resolve_prefix(None, Some("u:")).unwrap(), "u:");
        assert_eq!(resolve_prefix(Some("u:"), Some("u:")).unwrap(), "u:");
        let err = resolve_prefix(Some("a:"), Some("u:")).unwrap_err();
        assert!(err.contains("not the URL's"), "{err}");
        assert!(resolve_prefix(Some(&"p".repeat(MAX_PREFIX)), None).is_ok());
        let err = resolve_prefix(Some(&"p".repeat(MAX_PREFIX + 1)), None).unwrap_err();
        assert!(err.contains("at most 256 bytes"), "{err}");
    }

    #[test]
    fn keys_are_the_prefix_the_name_and_a_suffix() {
        let keys = Keys::new("multiproc:", "task");
        assert_eq!(
            keys.all(),
            [
                "multiproc:task",
                "multiproc:task:dead",
                "multiproc:task:errors",
                "multiproc:task:config"
            ]
        );
        assert_eq!(Keys::new("", "task").stream, "task");
    }
}
