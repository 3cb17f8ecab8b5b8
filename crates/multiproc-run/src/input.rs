//! The arguments of `multiproc run`: read from stdin, `-a FILE`, `::: ARGS` and `:::: FILES`,
//! split into records by a delimiter, into columns by `--colsep`, combined as a cartesian
//! product when there are several sources, and grouped `-n` records to a job.
//!
//! The first source is read lazily by a thread (so `tail -f log | multiproc run ...` starts
//! jobs as lines come), the others at once, as the product needs all of them. The thread sends
//! batches of jobs over a bounded channel and writes a byte to a socket after each, which the
//! runner's poll loop watches.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use anyhow::{Context, bail};
use regex::bytes::Regex;

/// Where records come from.
#[derive(Debug)]
pub(crate) enum Source {
    /// The arguments of a `:::` group.
    Args(Vec<Vec<u8>>),
    /// A file (`-a FILE`, `:::: FILE`); `-` is stdin.
    File(PathBuf),
}

/// How to read the sources.
#[derive(Debug)]
pub(crate) struct Spec {
    /// The sources, in order: the first varies slowest in the product.
    pub(crate) sources: Vec<Source>,
    /// What ends a record (`\n`, `\0` with `-0`, or `-d`'s).
    pub(crate) delimiter: Vec<u8>,
    /// What separates columns within a record (`--colsep`).
    pub(crate) colsep: Option<Regex>,
    /// How many records make a job (`-n`).
    pub(crate) per_job: usize,
}

/// One job's input.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    /// Its sequence number, from 1, in input order.
    pub(crate) seq: u64,
    /// Its arguments: the columns of each source, then of each further record with `-n`.
    pub(crate) args: Vec<Vec<u8>>,
}

/// What the reading thread sends.
#[derive(Debug)]
pub(crate) enum Feed {
    /// Some jobs, in order.
    Jobs(Vec<Job>),
    /// Reading failed; no more jobs follow.
    Error(String),
}

/// How many jobs a batch holds at most.
const BATCH: usize = 256;

/// A source of records, read one at a time.
enum Records {
    /// Records already in memory.
    List(std::vec::IntoIter<Vec<u8>>),
    /// Records read from a file or stdin.
    Reader(BufReader<Box<dyn Read + Send>>),
}

/// Opens `path` (`-` for stdin) for reading.
fn open(path: &PathBuf) -> anyhow::Result<Box<dyn Read + Send>> {
    if path.as_os_str() == "-" {
        return Ok(Box::new(std::io::stdin()));
    }
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    Ok(Box::new(f))
}

/// Parses `-d`'s argument: characters, C escapes (`\n`, `\t`, `\0`, `\\`, ...), `\xHH` and
/// `\NNN` (octal), as printf understands them.
pub(crate) fn parse_delimiter(s: &str) -> anyhow::Result<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' || i + 1 == b.len() {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let c = b[i + 1];
        i += 2;
        let simple = match c {
            b'n' => Some(b'\n'),
            b't' => Some(b'\t'),
            b'r' => Some(b'\r'),
            b'a' => Some(7),
            b'b' => Some(8),
            b'f' => Some(12),
            b'v' => Some(11),
            b'e' => Some(27),
            b'\\' => Some(b'\\'),
            _ => None,
        };
        if let Some(v) = simple {
            out.push(v);
        } else if c == b'x' {
            let n = b[i..]
                .iter()
                .take(2)
                .take_while(|d| d.is_ascii_hexdigit())
                .count();
            if n == 0 {
                bail!("bad delimiter {s:?}: \\x needs hex digits");
            }
            let digits = std::str::from_utf8(&b[i..i + n])?;
            out.push(u8::from_str_radix(digits, 16)?);
            i += n;
        } else if (b'0'..=b'7').contains(&c) {
            let n = b[i..]
                .iter()
                .take(2)
                .take_while(|d| (b'0'..=b'7').contains(*d))
                .count();
            let digits = std::str::from_utf8(&b[i - 1..i + n])?;
            let v = u32::from_str_radix(digits, 8)?;
            out.push(u8::try_from(v).with_context(|| format!("bad delimiter {s:?}"))?);
            i += n;
        } else {
            out.push(b'\\');
            out.push(c);
        }
    }
    if out.is_empty() {
        bail!("the delimiter is empty");
    }
    Ok(out)
}

/// Compiles `--colsep`: a regular expression, or, when it is not a valid one, the literal
/// string.
pub(crate) fn colsep(s: &str) -> anyhow::Result<Regex> {
    if s.is_empty() {
        bail!("--colsep is empty");
    }
    Regex::new(s)
        .or_else(|_| Regex::new(&regex::escape(s)))
        .with_context(|| format!("bad --colsep {s:?}"))
}

impl Records {
    /// The next record (without its delimiter), `None` at the end.
    fn next(&mut self, delim: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
        match self {
            Records::List(it) => Ok(it.next()),
            Records::Reader(r) => read_record(r, delim),
        }
    }

    /// Whether reading the next record may block (nothing is buffered).
    fn may_block(&self) -> bool {
        match self {
            Records::List(_) => false,
            Records::Reader(r) => r.buffer().is_empty(),
        }
    }
}

/// Reads up to and without `delim`; the last record needs no delimiter, and an empty rest is
/// no record.
fn read_record<R: BufRead>(r: &mut R, delim: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
    let Some((&last, _)) = delim.split_last() else {
        return Ok(None);
    };
    let mut rec = Vec::new();
    loop {
        let n = r.read_until(last, &mut rec)?;
        if n == 0 {
            return Ok(if rec.is_empty() { None } else { Some(rec) });
        }
        if rec.ends_with(delim) {
            rec.truncate(rec.len() - delim.len());
            return Ok(Some(rec));
        }
        if rec.last() != Some(&last) {
            return Ok(Some(rec)); // end of input
        }
    }
}

/// Splits a record into its columns.
fn columns(rec: Vec<u8>, colsep: Option<&Regex>) -> Vec<Vec<u8>> {
    match colsep {
        None => vec![rec],
        // `--colsep` implies GNU parallel's `--trim rl`: blanks around each field go.
        Some(re) => re.split(&rec).map(|f| f.trim_ascii().to_vec()).collect(),
    }
}

/// `bytes` split at each `delim` (a `:::` argument under `-d`): every delimiter separates
/// two pieces, a trailing one included, as GNU parallel splits them.
pub(crate) fn split_on(bytes: &[u8], delim: &[u8]) -> Vec<Vec<u8>> {
    let mut pieces = Vec::new();
    let mut rest = bytes;
    while let Some(at) = rest.windows(delim.len()).position(|w| w == delim) {
        pieces.push(rest[..at].to_vec());
        rest = &rest[at + delim.len()..];
    }
    pieces.push(rest.to_vec());
    pieces
}

/// Opens every source (so a missing file is an error before anything runs), reads all but the
/// first, and starts the thread that reads the first and makes jobs. `wake` gets a byte after
/// each batch sent.
pub(crate) fn start(spec: Spec, wake: UnixStream) -> anyhow::Result<Receiver<Feed>> {
    let mut sources = spec.sources.into_iter();
    let first = match sources.next() {
        Some(s) => s,
        None => Source::File(PathBuf::from("-")),
    };
    let to_records = |s: Source| -> anyhow::Result<Records> {
        Ok(match s {
            Source::Args(a) => Records::List(a.into_iter()),
            Source::File(p) => Records::Reader(BufReader::with_capacity(1 << 16, open(&p)?)),
        })
    };
    let first = to_records(first)?;
    let mut rest: Vec<Vec<Vec<Vec<u8>>>> = Vec::new();
    for s in sources {
        let name = match &s {
            Source::File(p) => p.display().to_string(),
            Source::Args(_) => ":::".into(),
        };
        let mut recs = to_records(s)?;
        let mut all = Vec::new();
        while let Some(r) = recs
            .next(&spec.delimiter)
            .with_context(|| format!("reading {name}"))?
        {
            all.push(columns(r, spec.colsep.as_ref()));
        }
        rest.push(all);
    }
    let (tx, rx) = sync_channel(4);
    let maker = Maker {
        tx,
        wake,
        batch: Vec::with_capacity(BATCH),
        group: Vec::new(),
        in_group: 0,
        per_job: spec.per_job,
        seq: 0,
    };
    std::thread::Builder::new()
        .name("run-input".into())
        .spawn(move || maker.run(first, rest, &spec.delimiter, spec.colsep.as_ref()))
        .context("cannot start the input thread")?;
    Ok(rx)
}

/// The reading thread's state: the jobs being gathered.
struct Maker {
    /// Where batches go.
    tx: SyncSender<Feed>,
    /// Written to after each batch.
    wake: UnixStream,
    /// The jobs not sent yet.
    batch: Vec<Job>,
    /// The arguments of the job being made (with `-n`).
    group: Vec<Vec<u8>>,
    /// How many records `group` holds.
    in_group: usize,
    /// Records per job; 0 for one record per job whose values are left out (`-n0`).
    per_job: usize,
    /// The last sequence number given.
    seq: u64,
}

impl Maker {
    /// Reads the first source to its end, making jobs of its product with `rest`.
    fn run(
        mut self,
        mut first: Records,
        rest: Vec<Vec<Vec<Vec<u8>>>>,
        delim: &[u8],
        colsep: Option<&Regex>,
    ) {
        if rest.iter().any(Vec::is_empty) {
            self.close(None);
            return;
        }
        loop {
            if first.may_block() && !self.flush() {
                return;
            }
            let rec = match first.next(delim) {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    self.close(Some(format!("reading input: {e}")));
                    return;
                }
            };
            let head = columns(rec, colsep);
            // The product with the other sources, the last varying fastest.
            let mut idx = vec![0usize; rest.len()];
            loop {
                let mut record = head.clone();
                for (src, &i) in rest.iter().zip(&idx) {
                    record.extend(src[i].iter().cloned());
                }
                if !self.add(record) {
                    return;
                }
                // Advance the odometer.
                let mut k = rest.len();
                loop {
                    if k == 0 {
                        break;
                    }
                    k -= 1;
                    idx[k] += 1;
                    if idx[k] < rest[k].len() {
                        break;
                    }
                    idx[k] = 0;
                }
                if idx.iter().all(|&i| i == 0) {
                    break;
                }
            }
        }
        self.close(None);
    }

    /// Adds one record; returns `false` when the runner has gone.
    fn add(&mut self, record: Vec<Vec<u8>>) -> bool {
        if self.per_job > 0 {
            self.group.extend(record);
        }
        self.in_group += 1;
        if self.in_group >= self.per_job {
            self.end_group();
        }
        self.batch.len() < BATCH || self.flush()
    }

    /// Makes a job of the gathered records.
    fn end_group(&mut self) {
        if self.in_group == 0 {
            return;
        }
        self.seq += 1;
        self.batch.push(Job {
            seq: self.seq,
            args: std::mem::take(&mut self.group),
        });
        self.in_group = 0;
    }

    /// Sends the batch; returns `false` when the runner has gone.
    fn flush(&mut self) -> bool {
        if self.batch.is_empty() {
            return true;
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        if self.tx.send(Feed::Jobs(batch)).is_err() {
            return false;
        }
        // The socket is non-blocking: a full one already has bytes waiting to wake the runner.
        let _ = self.wake.write(&[1]);
        true
    }

    /// Sends what is left, then the error if any; dropping the sender ends the feed.
    fn close(mut self, error: Option<String>) {
        self.end_group();
        if self.flush()
            && let Some(e) = error
            && self.tx.send(Feed::Error(e)).is_ok()
        {
            let _ = self.wake.write(&[1]);
        }
        drop(self.tx);
        let _ = self.wake.write(&[1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(input: &[u8], delim: &[u8]) -> Vec<Vec<u8>> {
        let mut r = std::io::Cursor::new(input.to_vec());
        let mut out = Vec::new();
        while let Some(rec) = read_record(&mut r, delim).expect("read") {
            out.push(rec);
        }
        out
    }

    #[test]
    fn records_split_on_the_delimiter() {
        let v = |xs: &[&str]| xs.iter().map(|x| x.as_bytes().to_vec()).collect::<Vec<_>>();
        assert_eq!(records(b"a\n\nb\n", b"\n"), v(&["a", "", "b"]));
        assert_eq!(records(b"a\nb", b"\n"), v(&["a", "b"]));
        assert_eq!(records(b"", b"\n"), v(&[]));
        assert_eq!(records(b"a,b\n", b","), v(&["a", "b\n"]));
        assert_eq!(records(b"a::b:c::", b"::"), v(&["a", "b:c"]));
        assert_eq!(records(b"a\0b c\0", b"\0"), v(&["a", "b c"]));
    }

    #[test]
    fn delimiters_understand_escapes() {
        assert_eq!(parse_delimiter("\\n").expect("ok"), b"\n");
        assert_eq!(parse_delimiter("\\0").expect("ok"), b"\0");
        assert_eq!(parse_delimiter("\\x41,").expect("ok"), b"A,");
        assert_eq!(parse_delimiter("\\101").expect("ok"), b"A");
        assert_eq!(parse_delimiter("ab").expect("ok"), b"ab");
        assert!(parse_delimiter("").is_err());
        assert!(parse_delimiter("\\xZ").is_err());
    }

    #[test]
    fn colsep_is_a_regex_or_a_string() {
        let re = colsep("[0-9]+").expect("ok");
        assert_eq!(columns(b"a1b22c".to_vec(), Some(&re)).len(), 3);
        let lit = colsep("(").expect("ok");
        assert_eq!(
            columns(b"a(b".to_vec(), Some(&lit)),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
    }
}
