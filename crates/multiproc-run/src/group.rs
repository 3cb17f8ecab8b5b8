//! How records become jobs: `-n N` records to a job, or with `-m`/`-X` as many as fit on one
//! command line; every job's command line kept under the length limit (`-s`), as GNU
//! parallel's `CommandLine::populate` does.
//!
//! A record that adds to a job making its line `max` bytes or longer goes to the next job
//! instead; a record too long for a job of its own stops the input with GNU parallel's
//! "Command line too long" error. With `-m`/`-X`, the records of the last line are spread over
//! the job slots when the input ends (so `-j4 -X` over 8 short arguments runs 4 jobs of 2).

use crate::job::Job;
use crate::template::{Ctx, Template, join};

/// The longest command line GNU parallel uses by default on Linux, whose limit for one
/// argument (`MAX_ARG_STRLEN`, 128 KiB with its NUL: `sh -c` gets the line as one) its probe
/// finds as 130 329 (the binary search stops within 1 % of the limit, see
/// [`probe_like_gnu`]); half of that less 3000 bytes for wrapping, as GNU parallel computes it.
pub(crate) const DEFAULT_MAX_LINE: usize = (probe_like_gnu(128 * 1024 - 1) - 3000) / 2;

/// What GNU parallel's probe of the longest command line (`find_max`) finds on a system that
/// takes lines of up to `limit` bytes: ×16 from 324 while they are taken, then a binary search
/// that stops once the bounds are within 1 % (or 1 byte).
const fn probe_like_gnu(limit: usize) -> usize {
    let mut len = 324;
    while len * 16 <= limit {
        len *= 16;
    }
    let (mut lower, mut upper) = (len, len * 16);
    // `lower / upper > 0.99` in integers.
    while lower + 1 < upper && lower * 100 <= upper * 99 {
        let middle = (upper - lower) / 2 + lower;
        if middle <= limit {
            lower = middle;
        } else {
            upper = middle;
        }
    }
    lower
}

/// The settings.
#[derive(Debug, Clone)]
pub(crate) struct Grouping {
    /// Records per job at most: `-n`, `-N`, `-L` (1 by default; no limit under `-m`/`-X`
    /// without them). 0 is `-n0`: a job per record, its values left out.
    pub(crate) per_job: usize,
    /// `-m`/`-X`: as many records as fit, spread over the slots at the end.
    pub(crate) pack: bool,
    /// The job slots (`-j`), for spreading.
    pub(crate) slots: usize,
    /// The command whose line is measured.
    pub(crate) template: Template,
    /// A line must be shorter than this (`-s`).
    pub(crate) max_line: usize,
}

/// A record that makes a command line too long even alone.
#[derive(Debug)]
pub(crate) struct TooLong(pub(crate) String);

/// The job being made and the jobs made.
pub(crate) struct Grouper {
    /// The settings.
    g: Grouping,
    /// The records of the job being made.
    records: Vec<Vec<Vec<u8>>>,
    /// Their values, in order.
    args: Vec<Vec<u8>>,
    /// The length of the job's command line.
    len: usize,
    /// The last sequence number given.
    seq: u64,
    /// Whether the records were spread over the slots (it happens once).
    spread: bool,
}

impl Grouper {
    /// A grouper; its first job gets sequence number 1.
    pub(crate) fn new(g: Grouping) -> Grouper {
        Grouper {
            g,
            records: Vec::new(),
            args: Vec::new(),
            len: 0,
            seq: 0,
            spread: false,
        }
    }

    /// Adds a record, appending to `jobs` the jobs it completes.
    pub(crate) fn push(
        &mut self,
        record: Vec<Vec<u8>>,
        jobs: &mut Vec<Job>,
    ) -> Result<(), TooLong> {
        if self.g.per_job == 0 {
            // `-n0`: the record only counts.
            self.seq += 1;
            jobs.push(Job {
                seq: self.seq,
                args: Vec::new(),
                input: None,
            });
            return Ok(());
        }
        if !self.records.is_empty() {
            let seq = self.seq + 1;
            let mut len = self.len;
            let mut exact = true;
            for (before, value) in (self.args.len()..).zip(&record) {
                match self.g.template.added_len(before, value, seq) {
                    Some(n) => len += n,
                    None => exact = false,
                }
            }
            if !exact {
                let mut all = self.args.clone();
                all.extend(record.iter().cloned());
                len = self.g.template.shell_line_len(&Ctx::new(&all, seq, 1));
            }
            if len < self.g.max_line {
                self.take(record, len, jobs);
                return Ok(());
            }
            self.end(jobs);
        }
        // The record starts a job.
        let len = self
            .g
            .template
            .shell_line_len(&Ctx::new(&record, self.seq + 1, 1));
        if len >= self.g.max_line {
            let mut shown = Vec::new();
            join(&record, &mut shown);
            let mut shown = String::from_utf8_lossy(&shown).into_owned();
            if let Some((cut, _)) = shown.char_indices().nth(50) {
                shown.truncate(cut);
                shown.push_str("...");
            }
            return Err(TooLong(format!(
                "Command line too long ({len} >= {}) at input 0: {shown}",
                self.g.max_line
            )));
        }
        self.take(record, len, jobs);
        Ok(())
    }

    /// Adds a record that fits, its job's line now `len` long; ends the job when full.
    fn take(&mut self, record: Vec<Vec<u8>>, len: usize, jobs: &mut Vec<Job>) {
        self.len = len;
        self.args.extend(record.iter().cloned());
        self.records.push(record);
        if self.records.len() >= self.g.per_job {
            self.end(jobs);
        }
    }

    /// The input has ended: the last job, spread over the slots under `-m`/`-X`.
    pub(crate) fn finish(&mut self, jobs: &mut Vec<Job>) {
        let n = self.records.len();
        if self.g.pack && !self.spread && n > 1 {
            self.spread = true;
            let per = n.div_ceil(self.g.slots.max(1));
            let records = std::mem::take(&mut self.records);
            self.args.clear();
            for chunk in records.chunks(per) {
                self.seq += 1;
                jobs.push(Job {
                    seq: self.seq,
                    args: chunk.iter().flatten().cloned().collect(),
                    input: None,
                });
            }
            return;
        }
        self.end(jobs);
    }

    /// Makes a job of the records gathered, if any.
    fn end(&mut self, jobs: &mut Vec<Job>) {
        if self.records.is_empty() {
            return;
        }
        self.records.clear();
        self.seq += 1;
        jobs.push(Job {
            seq: self.seq,
            args: std::mem::take(&mut self.args),
            input: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::Syntax;

    fn grouper(
        cmd: &[&str],
        syntax: &Syntax,
        per_job: usize,
        pack: bool,
        slots: usize,
        max: usize,
    ) -> Grouper {
        let words: Vec<Vec<u8>> = cmd.iter().map(|w| w.as_bytes().to_vec()).collect();
        Grouper::new(Grouping {
            per_job,
            pack,
            slots,
            template: Template::parse(&words, syntax).expect("parse"),
            max_line: max,
        })
    }

    fn run(mut g: Grouper, values: &[&str]) -> Result<Vec<String>, TooLong> {
        let mut jobs = Vec::new();
        for v in values {
            g.push(vec![v.as_bytes().to_vec()], &mut jobs)?;
        }
        g.finish(&mut jobs);
        Ok(jobs
            .iter()
            .enumerate()
            .map(|(i, j)| {
                assert_eq!(j.seq, i as u64 + 1);
                let mut s = Vec::new();
                join(&j.args, &mut s);
                String::from_utf8(s).expect("utf-8")
            })
            .collect())
    }

    const SIX: [&str; 6] = ["aaaa", "bbbb", "cccc", "dddd", "eeee", "ffff"];

    #[test]
    fn lines_stay_under_the_limit_as_gnu_parallel_packs_them() {
        let d = Syntax::default();
        // `echo aaaa bbbb cccc` is 19 bytes, one more argument makes 24.
        let g = grouper(&["echo"], &d, usize::MAX, true, 1, 20);
        assert_eq!(
            run(g, &SIX).expect("fits"),
            ["aaaa bbbb cccc", "dddd eeee ffff"]
        );
        let g = grouper(&["echo", "pre{}post"], &d, usize::MAX, true, 1, 20);
        assert_eq!(run(g, &SIX).expect("fits").len(), 6);
        let x = Syntax {
            context: true,
            ..Syntax::default()
        };
        let g = grouper(&["echo", "x{}y"], &x, usize::MAX, true, 1, 12);
        assert_eq!(run(g, &["a", "b"]).expect("fits"), ["a", "b"]);
        // `-n` packs by count too, and the limit still splits.
        let g = grouper(&["echo"], &d, 2, false, 1, 100);
        assert_eq!(run(g, &["1", "2", "3"]).expect("fits"), ["1 2", "3"]);
        let g = grouper(&["echo"], &d, 3, false, 1, 12);
        assert_eq!(
            run(g, &["aaa", "bbb", "c"]).expect("fits"),
            ["aaa", "bbb c"]
        );
    }

    #[test]
    fn the_last_line_is_spread_over_the_slots() {
        let d = Syntax::default();
        let seven = ["1", "2", "3", "4", "5", "6", "7"];
        let g = grouper(&["echo"], &d, usize::MAX, true, 3, DEFAULT_MAX_LINE);
        assert_eq!(run(g, &seven).expect("fits"), ["1 2 3", "4 5 6", "7"]);
        let g = grouper(&["echo"], &d, usize::MAX, true, 2, DEFAULT_MAX_LINE);
        assert_eq!(run(g, &seven[..5]).expect("fits"), ["1 2 3", "4 5"]);
        // Not with -n alone.
        let g = grouper(&["echo"], &d, 2, false, 3, DEFAULT_MAX_LINE);
        assert_eq!(run(g, &seven[..4]).expect("fits"), ["1 2", "3 4"]);
    }

    #[test]
    fn a_record_too_long_alone_is_gnu_parallels_error() {
        let d = Syntax::default();
        let g = grouper(&["echo"], &d, 1, false, 1, 10);
        let err = run(g, &["a", "bbbbbbbbbbbb"]).expect_err("too long");
        assert_eq!(
            err.0,
            "Command line too long (17 >= 10) at input 0: bbbbbbbbbbbb"
        );
        let g = grouper(&["echo"], &d, 1, false, 1, 10);
        let err = run(g, &[&"c".repeat(70)]).expect_err("too long");
        assert!(
            err.0.ends_with(&format!(": {}...", "c".repeat(50))),
            "{}",
            err.0
        );
    }

    #[test]
    fn the_default_line_is_gnu_parallels_on_linux() {
        // `parallel --max-line-length-allowed` says 130329 here; -s warns at 63664.
        assert_eq!(probe_like_gnu(128 * 1024 - 1), 130_329);
        assert_eq!(DEFAULT_MAX_LINE, 63_664);
    }

    #[test]
    fn n0_makes_a_job_per_record_without_values() {
        let g = grouper(&["echo", "x"], &Syntax::default(), 0, false, 1, 10);
        assert_eq!(run(g, &["a", "b"]).expect("fits"), ["", ""]);
    }
}
