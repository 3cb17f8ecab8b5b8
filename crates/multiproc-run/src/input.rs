//! The arguments of `multiproc run`: read from stdin, `-a FILE`, `::: ARGS` and `:::: FILES`,
//! split into records by a delimiter, into columns by `--colsep`, combined as a cartesian
//! product when there are several sources, and grouped `-n` records to a job.
//!
//! Linked sources (`--link`, `:::+`) go side by side instead of into the product. The first
//! source is read lazily by a thread (so `tail -f log | multiproc run ...` starts jobs as lines
//! come), the others at once, as the product needs all of them. The thread sends
//! batches of jobs over a bounded channel and writes a byte to a socket after each, which the
//! runner's poll loop watches.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use anyhow::{Context, bail};
use regex::bytes::Regex;

use crate::group::{Grouper, Grouping, TooLong};
pub(crate) use crate::job::Job;

/// Where records come from.
pub(crate) enum Source {
    /// The arguments of a `:::` group.
    Args(Vec<Vec<u8>>),
    /// A file (`-a FILE`, `:::: FILE`); `-` is stdin.
    File(PathBuf),
    /// A file opened already (its `--header` read), and its name for messages.
    Opened(String, BufReader<Box<dyn Read + Send>>),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Args(a) => f.debug_tuple("Args").field(a).finish(),
            Source::File(p) => f.debug_tuple("File").field(p).finish(),
            Source::Opened(name, _) => f.debug_tuple("Opened").field(name).finish(),
        }
    }
}

/// Reads `--header`: the first `lines` records of each source (the first value of a `:::`
/// group) name its columns, split by `colsep` when given. Returns each name with the 1-based
/// position of its column among a record's values; the sources left hold the rest.
pub(crate) fn read_headers(
    sources: &mut Vec<Source>,
    lines: usize,
    delimiter: &[u8],
    colsep: Option<&Regex>,
) -> anyhow::Result<Vec<(Vec<u8>, usize)>> {
    if sources.is_empty() {
        sources.push(Source::File(PathBuf::from("-")));
    }
    let mut names = Vec::new();
    let mut offset = 0;
    for source in sources.iter_mut() {
        let header = match source {
            Source::Args(values) if values.is_empty() => continue,
            Source::Args(values) => values.remove(0),
            Source::File(path) => {
                let name = path.display().to_string();
                let mut reader = BufReader::with_capacity(1 << 16, open(path)?);
                let mut first = None;
                for _ in 0..lines {
                    let rec = read_record(&mut reader, delimiter)
                        .with_context(|| format!("reading the header of {name}"))?;
                    first = first.or(rec);
                }
                *source = Source::Opened(name, reader);
                match first {
                    Some(h) => h,
                    None => continue,
                }
            }
            Source::Opened(..) => continue,
        };
        for column in columns(header, colsep) {
            offset += 1;
            names.push((column, offset));
        }
    }
    Ok(names)
}

/// How to read the sources.
#[derive(Debug)]
pub(crate) struct Spec {
    /// The sources, in order: the first varies slowest in the product.
    pub(crate) sources: Vec<Source>,
    /// How the sources combine.
    pub(crate) links: Links,
    /// What ends a record (`\n`, `\0` with `-0`, or `-d`'s).
    pub(crate) delimiter: Vec<u8>,
    /// What separates columns within a record (`--colsep`).
    pub(crate) colsep: Option<Regex>,
    /// Which records are read.
    pub(crate) filter: Filter,
    /// How records make jobs.
    pub(crate) grouping: Grouping,
}

/// How the sources combine: by default each with each (a cartesian product).
#[derive(Debug, Default)]
pub(crate) struct Links {
    /// The sources (by index) linked to the one before them (`:::+`, `::::+`): their n-th
    /// records go together, as far as the shorter goes.
    pub(crate) to_previous: Vec<usize>,
    /// `--link`: all of them linked, the shorter ones wrapping around to the longest.
    pub(crate) all: bool,
}

/// Which records are read, GNU parallel's `-E`, `-r` and `-L`.
#[derive(Debug, Default, Clone)]
pub(crate) struct Filter {
    /// `-E`: a record equal to this ends its source.
    pub(crate) eof: Option<Vec<u8>>,
    /// `-r`: records of blanks only are left out.
    pub(crate) skip_blank: bool,
    /// `-L`: a line ending in a blank goes on on the next line.
    pub(crate) continued_lines: bool,
    /// Warn, as GNU parallel does, when the first three records end in CR (no `-d` given).
    pub(crate) warn_crnl: bool,
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

/// How many bytes of arguments a batch holds at most: with the channel's four batches, what
/// the reader holds ahead of the runner stays a few MiB however large the arguments are.
const BATCH_BYTES: usize = 1 << 20;

/// A source of records as stored or read.
enum Raw {
    /// Records already in memory.
    List(std::vec::IntoIter<Vec<u8>>),
    /// Records read from a file or stdin.
    Reader(BufReader<Box<dyn Read + Send>>),
}

/// A source of records, read one at a time through the filter.
struct Records {
    /// Where they come from.
    raw: Raw,
    /// Which are taken.
    filter: Filter,
    /// Set at the `-E` record.
    ended: bool,
    /// Records seen ending in CR and not, until three of one kind decide (`warn_crnl`).
    crnl: (u8, u8),
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
        loop {
            if self.ended {
                return Ok(None);
            }
            let Some(mut rec) = self.raw.next(delim)? else {
                return Ok(None);
            };
            if self.filter.continued_lines {
                while rec.last().is_some_and(|&b| b == b' ' || b == b'\t') {
                    match self.raw.next(delim)? {
                        // The end-of-file record ends the input, even as a continuation.
                        Some(more) if self.filter.eof.as_ref() == Some(&more) => {
                            self.ended = true;
                            break;
                        }
                        Some(more) => rec.extend_from_slice(&more),
                        None => break,
                    }
                }
            }
            if self.filter.warn_crnl && self.crnl.0 < 3 && self.crnl.1 < 3 {
                if rec.last() == Some(&b'\r') {
                    self.crnl.0 += 1;
                } else {
                    self.crnl.1 += 1;
                }
                if self.crnl == (3, 0) {
                    eprintln!(
                        "multiproc: Warning: The first three values end in CR-NL. \
                         Consider using -d \"\\r\\n\""
                    );
                }
            }
            if self.filter.eof.as_ref() == Some(&rec) {
                self.ended = true;
                return Ok(None);
            }
            if self.filter.skip_blank && rec.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Ok(Some(rec));
        }
    }

    /// Whether reading the next record may block (nothing is buffered).
    fn may_block(&self) -> bool {
        match &self.raw {
            Raw::List(_) => false,
            Raw::Reader(r) => r.buffer().is_empty(),
        }
    }
}

impl Raw {
    /// The next record as it is.
    fn next(&mut self, delim: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
        match self {
            Raw::List(it) => Ok(it.next()),
            Raw::Reader(r) => read_record(r, delim),
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
///
/// A NUL cannot be passed in an argument: it becomes the two characters `\0`, with GNU
/// parallel's warning.
fn columns(rec: Vec<u8>, colsep: Option<&Regex>) -> Vec<Vec<u8>> {
    let mut fields = match colsep {
        None => vec![rec],
        // `--colsep` implies GNU parallel's `--trim rl`: blanks around each field go.
        Some(re) => re.split(&rec).map(|f| f.trim_ascii().to_vec()).collect(),
    };
    if fields.iter().any(|f| f.contains(&0)) {
        eprintln!(
            "multiproc: Warning: A NUL character in the input was replaced with \\0.\n\
             multiproc: Warning: NUL cannot be passed through in the argument list.\n\
             multiproc: Warning: Did you mean to use the --null option?"
        );
        for f in &mut fields {
            if f.contains(&0) {
                *f = f.iter().fold(Vec::with_capacity(f.len() + 2), |mut v, &b| {
                    if b == 0 {
                        v.extend_from_slice(b"\\0");
                    } else {
                        v.push(b);
                    }
                    v
                });
            }
        }
    }
    fields
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

/// The records of a group of linked sources (or of one source), each its columns.
type Table = Vec<Vec<Vec<u8>>>;

/// What the first group of sources is: read lazily when it is one source, so that jobs start
/// as its records come (`tail -f log | multiproc run ...`).
enum First {
    /// One source, read as the jobs go.
    Lazy(Records),
    /// Linked sources, read at once.
    Read(std::vec::IntoIter<Vec<Vec<u8>>>),
}

/// Opens every source (so a missing file is an error before anything runs), reads all but the
/// first group, and starts the thread that reads the first and makes jobs. `wake` gets a byte
/// after each batch sent.
pub(crate) fn start(spec: Spec, wake: UnixStream) -> anyhow::Result<Receiver<Feed>> {
    let mut sources = spec.sources;
    if sources.is_empty() {
        sources.push(Source::File(PathBuf::from("-")));
    }
    // Which sources go together: a new group starts at each source not linked to the one
    // before.
    let mut groups: Vec<Vec<Source>> = Vec::new();
    for (i, s) in sources.into_iter().enumerate() {
        let linked = i > 0 && (spec.links.all || spec.links.to_previous.contains(&i));
        match groups.last_mut() {
            Some(g) if linked => g.push(s),
            _ => groups.push(vec![s]),
        }
    }
    let filter = spec.filter.clone();
    let to_records = |s: Source| -> anyhow::Result<Records> {
        let raw = match s {
            Source::Args(a) => Raw::List(a.into_iter()),
            Source::File(p) => Raw::Reader(BufReader::with_capacity(1 << 16, open(&p)?)),
            Source::Opened(_, reader) => Raw::Reader(reader),
        };
        Ok(Records {
            raw,
            filter: filter.clone(),
            ended: false,
            crnl: (0, 0),
        })
    };
    let read_all = |s: Source| -> anyhow::Result<Table> {
        let name = match &s {
            Source::File(p) => p.display().to_string(),
            Source::Opened(name, _) => name.clone(),
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
        Ok(all)
    };
    let mut groups = groups.into_iter();
    let mut first_group = groups.next().unwrap_or_default();
    let first = if first_group.len() == 1 {
        First::Lazy(to_records(first_group.remove(0))?)
    } else {
        let tables = first_group
            .into_iter()
            .map(read_all)
            .collect::<anyhow::Result<Vec<_>>>()?;
        First::Read(zip(tables, spec.links.all).into_iter())
    };
    let mut rest: Vec<Table> = Vec::new();
    for g in groups {
        let tables = g
            .into_iter()
            .map(read_all)
            .collect::<anyhow::Result<Vec<_>>>()?;
        rest.push(zip(tables, spec.links.all));
    }
    let (tx, rx) = sync_channel(4);
    let maker = Maker {
        out: Batches::new(tx, wake),
        grouper: Grouper::new(spec.grouping),
    };
    let (delimiter, colsep) = (spec.delimiter, spec.colsep);
    std::thread::Builder::new()
        .name("run-input".into())
        .spawn(move || maker.run(first, rest, &delimiter, colsep.as_ref()))
        .context("cannot start the input thread")?;
    Ok(rx)
}

/// Linked sources' records side by side: the n-th record of each, as far as the shortest
/// goes, or (`wrap`, `--link`) as far as the longest, the shorter ones starting over.
fn zip(tables: Vec<Table>, wrap: bool) -> Table {
    if tables.len() == 1 {
        return tables.into_iter().next().unwrap_or_default();
    }
    let lens = tables.iter().map(Vec::len);
    let n = if wrap { lens.max() } else { lens.min() }.unwrap_or(0);
    if tables.iter().any(Vec::is_empty) {
        return Vec::new();
    }
    (0..n)
        .map(|k| {
            tables
                .iter()
                .flat_map(|t| t[k % t.len()].iter().cloned())
                .collect()
        })
        .collect()
}

/// Jobs on their way to the runner: gathered into batches, each sent over a bounded channel
/// with a byte on the wake-up socket.
pub(crate) struct Batches {
    /// Where batches go.
    tx: SyncSender<Feed>,
    /// Written to after each batch.
    wake: UnixStream,
    /// The jobs not sent yet.
    pub(crate) batch: Vec<Job>,
    /// The bytes of input read since the last batch was sent.
    bytes: usize,
}

impl Batches {
    /// Batches sent over `tx`, announced on `wake`.
    pub(crate) fn new(tx: SyncSender<Feed>, wake: UnixStream) -> Batches {
        Batches {
            tx,
            wake,
            batch: Vec::with_capacity(BATCH),
            bytes: 0,
        }
    }

    /// Counts `n` bytes read; sends the batch when it is full. Returns `false` when the runner
    /// has gone.
    pub(crate) fn read(&mut self, n: usize) -> bool {
        self.bytes += n;
        if self.batch.len() >= BATCH || self.bytes >= BATCH_BYTES {
            return self.flush();
        }
        true
    }

    /// Sends the batch; returns `false` when the runner has gone.
    pub(crate) fn flush(&mut self) -> bool {
        if self.batch.is_empty() {
            return true;
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        self.bytes = 0;
        if self.tx.send(Feed::Jobs(batch)).is_err() {
            return false;
        }
        // The socket is non-blocking: a full one already has bytes waiting to wake the runner.
        let _ = self.wake.write(&[1]);
        true
    }

    /// Sends what is left, then the error if any; dropping the sender ends the feed.
    pub(crate) fn close(mut self, error: Option<String>) {
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

/// The reading thread's state: the jobs being gathered.
struct Maker {
    /// Where the jobs go.
    out: Batches,
    /// Makes jobs of records.
    grouper: Grouper,
}

impl Maker {
    /// Reads the first group of sources to its end, making jobs of its product with `rest`.
    ///
    /// A source with no record counts as one empty value while any other source has records,
    /// as GNU parallel counts it (`-E` can empty a `:::` group).
    fn run(mut self, mut first: First, rest: Vec<Table>, delim: &[u8], colsep: Option<&Regex>) {
        let rest_has_values = rest.iter().any(|t| !t.is_empty());
        let rest: Vec<Table> = rest
            .into_iter()
            .map(|t| {
                if t.is_empty() {
                    vec![vec![Vec::new()]]
                } else {
                    t
                }
            })
            .collect();
        let mut heads = 0u64;
        loop {
            let head = match &mut first {
                First::Lazy(records) => {
                    if records.may_block() && !self.out.flush() {
                        return;
                    }
                    match records.next(delim) {
                        Ok(Some(r)) => columns(r, colsep),
                        Ok(None) => break,
                        Err(e) => {
                            self.grouper.finish(&mut self.out.batch);
                            self.out.close(Some(format!("reading input: {e}")));
                            return;
                        }
                    }
                }
                First::Read(records) => match records.next() {
                    Some(r) => r,
                    None => break,
                },
            };
            heads += 1;
            match self.product(&head, &rest) {
                Ok(true) => {}
                Ok(false) => return,
                Err(TooLong(e)) => return self.out.close(Some(e)),
            }
        }
        if heads == 0 && rest_has_values {
            match self.product(&[Vec::new()], &rest) {
                Ok(true) => {}
                Ok(false) => return,
                Err(TooLong(e)) => return self.out.close(Some(e)),
            }
        }
        self.grouper.finish(&mut self.out.batch);
        self.out.close(None);
    }

    /// Makes the jobs of `head` with every combination of `rest`, the last varying fastest.
    /// Returns whether to go on.
    fn product(&mut self, head: &[Vec<u8>], rest: &[Table]) -> Result<bool, TooLong> {
        let mut idx = vec![0usize; rest.len()];
        loop {
            let mut record = head.to_vec();
            for (src, &i) in rest.iter().zip(&idx) {
                record.extend(src[i].iter().cloned());
            }
            let bytes = record.iter().map(Vec::len).sum();
            self.grouper.push(record, &mut self.out.batch)?;
            if !self.out.read(bytes) {
                return Ok(false);
            }
            // Advance the odometer.
            let mut k = rest.len();
            while k > 0 {
                k -= 1;
                idx[k] += 1;
                if idx[k] < rest[k].len() {
                    break;
                }
                idx[k] = 0;
            }
            if idx.iter().all(|&i| i == 0) {
                return Ok(true);
            }
        }
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
