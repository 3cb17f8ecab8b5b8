//! A stream with one reader (a broker pool's results stream, read only by the pool that
//! named it): read with XREAD from where the last read ended, not through the consumer group,
//! and trimmed (XTRIM MINID) of what was read with the next read.
//!
//! Nothing is leased, acknowledged or tracked per entry: the broker does a third of the work
//! a consumer group costs it for each entry (the group's pending list, the acknowledgement, the
//! deletion by id, and the claim it writes to its append-only file for each entry delivered).
//! What was read and not yet handled is lost with its reader, which is the only one that wants
//! it.

use std::time::Instant;

use serde::de::DeserializeOwned;

use super::entry::decode;
use super::resp::StreamRead;
use super::{READ_SLICE, RedisQueue};
use crate::error::Result;
use crate::sync::IgnorePoison;

/// Where a sole reader is in its stream.
#[derive(Debug)]
pub(super) struct SoleRead {
    /// The id of the last entry read (`0-0` before the first).
    after: String,
    /// Entries up to `after` were read and are not trimmed yet.
    to_trim: bool,
}

impl Default for SoleRead {
    fn default() -> SoleRead {
        SoleRead {
            after: "0-0".into(),
            to_trim: false,
        }
    }
}

/// The stream id right after `id` (`ms-seq`), the threshold that trims `id` and all before
/// it; `None` for an id that is not one.
fn next_id(id: &str) -> Option<String> {
    let (ms, seq) = id.split_once('-')?;
    let (ms, seq) = (ms.parse::<u64>().ok()?, seq.parse::<u64>().ok()?);
    Some(match seq.checked_add(1) {
        Some(seq) => format!("{ms}-{seq}"),
        None => format!("{}-0", ms.checked_add(1)?),
    })
}

impl RedisQueue {
    /// The items put after those read before, up to `most`, waiting until `deadline` (or a
    /// slice of a second, without one) for the first; none if none came. For a queue with
    /// this one reader: other handles that `get` from it take entries this one would read
    /// again. An entry that does not decode goes to the dead letters.
    ///
    /// # Errors
    /// A broker that cannot be reached until `deadline`, or that refuses the read.
    pub(crate) fn read_sole<T: DeserializeOwned>(
        &self,
        deadline: Option<Instant>,
        most: usize,
    ) -> Result<Vec<T>> {
        self.check_open()?;
        let slice = deadline.map_or(READ_SLICE, |d| {
            d.saturating_duration_since(Instant::now()).min(READ_SLICE)
        });
        let mut at = self.sole.lock().ignore_poison();
        let entries = self.with_reader(deadline, |c| {
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT").arg(most.max(1));
            let threshold = at.to_trim.then(|| next_id(&at.after)).flatten();
            let before = threshold.map(|threshold| {
                let mut pipe = redis::pipe();
                pipe.cmd("XTRIM")
                    .arg(&self.keys.stream)
                    .arg("MINID")
                    .arg(threshold)
                    .ignore();
                pipe
            });
            let read = StreamRead {
                cmd,
                stream: &self.keys.stream,
                from: &at.after,
                block: slice,
                before,
            };
            let entries = c.read(read)??;
            // Trimmed with the read.
            at.to_trim = false;
            Ok(entries)
        })?;
        if let Some(last) = entries.last() {
            at.after.clone_from(&last.id);
            at.to_trim = true;
        }
        drop(at);
        let mut items = Vec::with_capacity(entries.len());
        for entry in entries {
            match decode(&entry) {
                Ok(item) => items.push(item),
                Err(reason) => {
                    tracing::warn!(queue = %self.name, id = %entry.id, %reason, "dead-lettered a malformed entry");
                    self.dead_letter(&entry, &reason, 0, deadline)?;
                }
            }
        }
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use super::next_id;

    #[test]
    fn the_next_id_is_the_least_id_after() {
        assert_eq!(next_id("5-1").as_deref(), Some("5-2"));
        assert_eq!(next_id("0-0").as_deref(), Some("0-1"));
        assert_eq!(next_id(&format!("5-{}", u64::MAX)).as_deref(), Some("6-0"));
        assert_eq!(next_id(&format!("{}-{}", u64::MAX, u64::MAX)), None);
        for garbage in ["", "5", "-", "a-1", "1-b", "1-2-3"] {
            assert_eq!(next_id(garbage), None, "{garbage:?}");
        }
    }
}
