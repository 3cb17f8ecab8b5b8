//! What `multiproc run` prints of its jobs' output: each job's stdout and stderr kept and
//! printed whole when the job ends (grouped, never interleaved), or whole lines as they come
//! (`--line-buffer`), in input order with `-k`, each line prefixed with the job's arguments
//! and a TAB with `--tag`; and `--results DIR`, which also stores them in files.
//!
//! Printing goes through buffers flushed before the runner waits, so a run of many small jobs
//! costs few writes; with a progress bar, each flush suspends the bar so that nothing written
//! clobbers it.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use anyhow::Context;
use indicatif::ProgressBar;

use crate::spool::Spool;
use crate::template::{Ctx, Template};

/// Which stream of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    /// Its stdout.
    Out,
    /// Its stderr.
    Err,
}

/// How to print.
#[derive(Debug, Clone, Default)]
pub(crate) struct Options {
    /// `-k`: in input order.
    pub(crate) keep_order: bool,
    /// `--line-buffer`: whole lines as they come.
    pub(crate) line_buffer: bool,
    /// `--tag`: each line prefixed with the arguments and a TAB.
    pub(crate) tag: bool,
    /// `--tagstring`: each line prefixed with this, its values put in, and a TAB.
    pub(crate) tagstring: Option<Template>,
    /// `-u`: everything as it comes, not even waiting for whole lines.
    pub(crate) ungroup: bool,
    /// `--results DIR`.
    pub(crate) results: Option<PathBuf>,
    /// `--results` with replacement strings in it: each job's own path (a directory when it
    /// ends in `/`, else the file of its stdout, with `.err` and `.seq` beside it).
    pub(crate) results_template: Option<Template>,
    /// `--header`'s column names, by position, for the `--results` directories.
    pub(crate) results_names: Vec<Option<Vec<u8>>>,
    /// `--files`: each job's stdout goes to a new file in `tmpdir`, and its name is printed
    /// instead.
    pub(crate) files: bool,
    /// Where output too large for memory waits, and `--files` go (`--tmpdir`, `$TMPDIR`).
    pub(crate) tmpdir: PathBuf,
}

/// Past this many bytes held in memory over all jobs, each stream that grows goes to a file.
const HELD_LIMIT: usize = 64 << 20;

/// One stream of one job.
#[derive(Debug, Default)]
struct Captured {
    /// What it wrote and is not printed yet.
    spool: Spool,
    /// How many bytes it wrote in all.
    total: u64,
}

/// One job's output.
#[derive(Debug, Default)]
struct JobOut {
    /// Its `--tag` prefix (the arguments, a TAB), empty without `--tag`.
    tag: Vec<u8>,
    /// Its arguments, for `--results`.
    args: Vec<Vec<u8>>,
    /// Its stdout.
    out: Captured,
    /// Its stderr.
    err: Captured,
    /// Whether it has ended.
    done: bool,
}

/// The printer.
pub(crate) struct Output {
    /// How to print.
    opts: Options,
    /// Our stdout (a duplicate of fd 1, unbuffered by std), buffered here.
    out: BufWriter<File>,
    /// Our stderr, buffered here.
    err: BufWriter<File>,
    /// The jobs that have output to keep, by sequence number.
    jobs: HashMap<u64, JobOut>,
    /// With `-k`: the jobs that ended or were skipped while an earlier one was unfinished.
    waiting: BTreeSet<u64>,
    /// With `-k`: the next sequence number to print.
    next: u64,
    /// The progress bar, if one is drawn.
    bar: Option<ProgressBar>,
    /// Set when stdout is closed (EPIPE): nothing more is printed.
    broken: bool,
    /// How many bytes the jobs' spools hold in memory.
    held: usize,
}

impl Output {
    /// A printer to fds 1 and 2.
    pub(crate) fn new(opts: Options, bar: Option<ProgressBar>) -> anyhow::Result<Output> {
        let dup = |fd: std::os::fd::BorrowedFd<'_>| -> anyhow::Result<File> {
            Ok(File::from(
                fd.try_clone_to_owned()
                    .context("cannot duplicate stdout/stderr")?,
            ))
        };
        Ok(Output {
            out: BufWriter::with_capacity(1 << 16, dup(std::io::stdout().as_fd())?),
            err: BufWriter::with_capacity(1 << 14, dup(std::io::stderr().as_fd())?),
            opts,
            jobs: HashMap::new(),
            waiting: BTreeSet::new(),
            next: 1,
            bar,
            broken: false,
            held: 0,
        })
    }

    /// Whether stdout was found closed.
    pub(crate) fn broken(&self) -> bool {
        self.broken
    }

    /// Registers a started job (a retry keeps its entry, emptied).
    pub(crate) fn start(&mut self, seq: u64, slot: usize, args: &[Vec<u8>]) {
        let job = self.jobs.entry(seq).or_default();
        self.held -= job.out.spool.in_memory() + job.err.spool.in_memory();
        job.out = Captured::default();
        job.err = Captured::default();
        if job.tag.is_empty() {
            if let Some(t) = &self.opts.tagstring {
                t.raw_line(&Ctx::new(args, seq, slot), &mut job.tag);
                job.tag.push(b'\t');
            } else if self.opts.tag {
                crate::template::join(args, &mut job.tag);
                job.tag.push(b'\t');
            }
        }
        if self.opts.results.is_some() && job.args.is_empty() {
            job.args = args.to_vec();
        }
    }

    /// Takes what a job wrote.
    pub(crate) fn data(&mut self, seq: u64, stream: Stream, bytes: &[u8]) {
        let Some(job) = self.jobs.get_mut(&seq) else {
            return;
        };
        let c = match stream {
            Stream::Out => &mut job.out,
            Stream::Err => &mut job.err,
        };
        let before = c.spool.in_memory();
        c.spool
            .push(bytes, &self.opts.tmpdir, self.held > HELD_LIMIT);
        self.held = self.held - before + c.spool.in_memory();
        c.total += bytes.len() as u64;
        if (self.opts.ungroup || (self.opts.line_buffer && c.spool.has_newline()))
            && (!self.opts.keep_order || seq == self.next)
        {
            self.print_lines(seq, stream);
        }
    }

    /// How many bytes a job wrote to stdout.
    pub(crate) fn received(&self, seq: u64) -> u64 {
        self.jobs.get(&seq).map_or(0, |j| j.out.total)
    }

    /// Prints the whole lines of a live job's stream not printed yet (with `-u`, all of it).
    fn print_lines(&mut self, seq: u64, stream: Stream) {
        if self.opts.results.is_some() || (self.opts.files && stream == Stream::Out) {
            return;
        }
        let Some(job) = self.jobs.get_mut(&seq) else {
            return;
        };
        let c = match stream {
            Stream::Out => &mut job.out,
            Stream::Err => &mut job.err,
        };
        let w = match stream {
            Stream::Out => &mut self.out,
            Stream::Err => &mut self.err,
        };
        let before = c.spool.in_memory();
        // `-u` prints as it comes, even half lines, so no tags (as GNU parallel).
        let res = if self.opts.ungroup {
            c.spool.write_all(w, b"")
        } else {
            c.spool.write_lines(w, &job.tag)
        };
        self.held = self.held - before + c.spool.in_memory();
        if let Err(e) = res {
            self.broken |= stream == Stream::Out && e.kind() == std::io::ErrorKind::BrokenPipe;
        }
        if stream == Stream::Err {
            // Keep stderr prompt, as a terminal user expects.
            let _ = self.err.flush();
        }
    }

    /// A job has ended for good: stores its `--results` and prints what is left of it (or,
    /// with `-k`, as soon as the jobs before it are printed). `seq` is its job number as
    /// `--results`' `seq` file holds it.
    pub(crate) fn finish(&mut self, seq: u64) -> anyhow::Result<()> {
        if let Some(dir) = &self.opts.results
            && let Some(job) = self.jobs.get_mut(&seq)
        {
            self.held -= job.out.spool.in_memory() + job.err.spool.in_memory();
            match &self.opts.results_template {
                Some(t) => {
                    let mut path = Vec::new();
                    t.raw_line(&Ctx::new(&job.args, seq, 1), &mut path);
                    store_at(&path, seq, job)?;
                }
                None => store(dir, seq, job, &self.opts.results_names)?,
            }
        }
        match self.jobs.get_mut(&seq) {
            Some(job) => job.done = true,
            None => return Ok(()),
        }
        if !self.opts.keep_order {
            self.print_rest(seq);
            return Ok(());
        }
        self.waiting.insert(seq);
        self.advance();
        Ok(())
    }

    /// A job that will not run (resumed, or never started): lets `-k` go past it.
    pub(crate) fn skip(&mut self, seq: u64) {
        if let Some(job) = self.jobs.remove(&seq) {
            self.held -= job.out.spool.in_memory() + job.err.spool.in_memory();
        }
        if self.opts.keep_order {
            self.waiting.insert(seq);
            self.advance();
        }
    }

    /// A job that was killed: its output is dropped.
    pub(crate) fn discard(&mut self, seq: u64) {
        self.skip(seq);
    }

    /// With `-k`: prints the ended jobs that are next in order, then the lines of the one
    /// after them, which is now live.
    fn advance(&mut self) {
        while self.waiting.remove(&self.next) {
            let seq = self.next;
            self.print_rest(seq);
            self.next += 1;
        }
        if self.opts.line_buffer && self.jobs.contains_key(&self.next) {
            self.print_lines(self.next, Stream::Out);
            self.print_lines(self.next, Stream::Err);
        }
    }

    /// Prints all a job has not printed, and forgets it.
    fn print_rest(&mut self, seq: u64) {
        let Some(mut job) = self.jobs.remove(&seq) else {
            return;
        };
        self.held -= job.out.spool.in_memory() + job.err.spool.in_memory();
        // With `--results` the output goes to the files only, as GNU parallel's does.
        if self.broken || self.opts.results.is_some() {
            return;
        }
        let mut res = if self.opts.files {
            match new_file(&self.opts.tmpdir, &mut job.out.spool) {
                Ok(mut name) => {
                    name.push(b'\n');
                    write_tagged(&mut self.out, &job.tag, &name)
                }
                Err(e) => {
                    let _ = self.out.flush();
                    let _ = writeln!(self.err, "multiproc: {e}");
                    Ok(())
                }
            }
        } else {
            job.out.spool.write_all(&mut self.out, &job.tag)
        };
        if res.is_ok() && !job.err.spool.is_empty() {
            res = self
                .out
                .flush()
                .and_then(|()| job.err.spool.write_all(&mut self.err, &job.tag));
            let _ = self.err.flush();
        }
        if let Err(e) = res {
            self.broken |= e.kind() == std::io::ErrorKind::BrokenPipe;
        }
    }

    /// At the end: prints, in order, what `-k` still holds back (jobs after a gap left by
    /// jobs that never ran), then flushes.
    pub(crate) fn close(&mut self) {
        let held: Vec<u64> = self.waiting.iter().copied().collect();
        self.waiting.clear();
        for seq in held {
            self.print_rest(seq);
        }
        self.flush();
    }

    /// Writes the buffered output out (the bar suspended meanwhile).
    pub(crate) fn flush(&mut self) {
        if self.out.buffer().is_empty() && self.err.buffer().is_empty() {
            return;
        }
        let (out, err) = (&mut self.out, &mut self.err);
        let res = match &self.bar {
            Some(bar) => bar.suspend(|| out.flush().and_then(|()| err.flush())),
            None => out.flush().and_then(|()| err.flush()),
        };
        if let Err(e) = res {
            self.broken |= e.kind() == std::io::ErrorKind::BrokenPipe;
        }
    }

    /// Prints a message of ours on stderr, after the output so far, without clobbering the
    /// bar.
    pub(crate) fn message(&mut self, msg: &str) {
        self.flush();
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{msg}")),
            None => eprintln!("{msg}"),
        }
    }
}

/// Writes `data`, each line prefixed with `tag` (nothing when it is empty). `data` starts at a
/// line start.
fn write_tagged(w: &mut impl Write, tag: &[u8], data: &[u8]) -> std::io::Result<()> {
    if tag.is_empty() {
        return w.write_all(data);
    }
    for line in data.split_inclusive(|&b| b == b'\n') {
        w.write_all(tag)?;
        w.write_all(line)?;
    }
    Ok(())
}

/// `--files`: writes `data` to a new file `DIR/parXXXXX.par` (readable by its owner only, as
/// GNU parallel's), and returns its path.
fn new_file(dir: &std::path::Path, data: &mut Spool) -> std::io::Result<Vec<u8>> {
    use std::hash::{BuildHasher, Hasher};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::OpenOptionsExt;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut last = None;
    for attempt in 0u64..100 {
        // Each `RandomState` is seeded afresh by the standard library.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(attempt);
        let mut bits = h.finish();
        let mut name = b"par".to_vec();
        for _ in 0..5 {
            name.push(CHARS[(bits % CHARS.len() as u64) as usize]);
            bits /= CHARS.len() as u64;
        }
        name.extend_from_slice(b".par");
        let path = dir.join(std::ffi::OsStr::from_bytes(&name));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(mut f) => {
                data.write_all(&mut f, b"").map_err(|e| {
                    std::io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display()))
                })?;
                return Ok(path.into_os_string().into_vec());
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("cannot create a file in {}: {e}", dir.display()),
                ));
            }
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free file name")))
}

/// The name GNU parallel gives an argument in a `--results` path: `\` as `\\`, `/` as `\_`,
/// TAB as `\t`, NUL as `\0`; at most `max` bytes of it when given.
fn escape_path(arg: &[u8], max: Option<usize>) -> Vec<u8> {
    let mut out = Vec::with_capacity(arg.len());
    for &b in arg {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'/' => out.extend_from_slice(b"\\_"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0 => out.extend_from_slice(b"\\0"),
            _ => out.push(b),
        }
    }
    if let Some(max) = max {
        out.truncate(max);
    }
    out
}

/// Writes a job's `--results` at the path its template made: a directory (ending in `/`)
/// of `seq`, `stdout`, `stderr`, or the file of its stdout with `.err` and `.seq` beside it,
/// as GNU parallel does.
fn store_at(path: &[u8], seq: u64, job: &mut JobOut) -> anyhow::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::path::Path::new(std::ffi::OsStr::from_bytes(path));
    let write = |p: PathBuf, data: &[u8]| {
        std::fs::write(&p, data).with_context(|| format!("cannot write {}", p.display()))
    };
    if path.ends_with(b"/") {
        std::fs::create_dir_all(p).with_context(|| format!("cannot create {}", p.display()))?;
        write(p.join("seq"), seq.to_string().as_bytes())?;
        write_spool(p.join("stdout"), &mut job.out.spool)?;
        return write_spool(p.join("stderr"), &mut job.err.spool);
    }
    if let Some(parent) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let beside = |suffix: &str| {
        let mut q = path.to_vec();
        q.extend_from_slice(suffix.as_bytes());
        PathBuf::from(std::ffi::OsStr::from_bytes(&q))
    };
    write_spool(p.to_path_buf(), &mut job.out.spool)?;
    write_spool(beside(".err"), &mut job.err.spool)?;
    write(beside(".seq"), seq.to_string().as_bytes())
}

/// Writes what a spool holds to the file at `p` (made anew).
fn write_spool(p: PathBuf, spool: &mut Spool) -> anyhow::Result<()> {
    let mut f = File::create(&p).with_context(|| format!("cannot write {}", p.display()))?;
    spool
        .write_all(&mut f, b"")
        .with_context(|| format!("cannot write {}", p.display()))
}

/// Writes a job's `--results`: `DIR/1/<arg 1>/2/<arg 2>/.../{seq,stdout,stderr}`, as GNU
/// parallel does (a column `--header` names is named so: `DIR/name/<arg>/...`).
///
/// An argument too long for a file name is cut to the longest the file system allows, as GNU
/// parallel cuts it.
fn store(
    dir: &std::path::Path,
    seq: u64,
    job: &mut JobOut,
    names: &[Option<Vec<u8>>],
) -> anyhow::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    // Each column under its name (its number without one), sorted as GNU parallel sorts
    // them: by the number a name starts with, then by name.
    let mut columns: Vec<(Vec<u8>, &Vec<u8>)> = job
        .args
        .iter()
        .enumerate()
        .map(|(i, a)| {
            // An empty name (a header line ending in a TAB) is none, as GNU's split makes it.
            let name = names
                .get(i)
                .and_then(Option::clone)
                .filter(|n| !n.is_empty());
            (name.unwrap_or_else(|| (i + 1).to_string().into_bytes()), a)
        })
        .collect();
    columns.sort_by(|(x, _), (y, _)| {
        leading_number(x)
            .total_cmp(&leading_number(y))
            .then_with(|| x.cmp(y))
    });
    let path_for = |max: Option<usize>| {
        let mut path = dir.as_os_str().as_bytes().to_vec();
        for (name, a) in &columns {
            path.push(b'/');
            path.extend_from_slice(&escape_path(name, max));
            path.push(b'/');
            path.extend_from_slice(&escape_path(a, max));
        }
        PathBuf::from(std::ffi::OsStr::from_bytes(&path))
    };
    let mut path = path_for(None);
    if let Err(e) = std::fs::create_dir_all(&path) {
        let too_long = e.raw_os_error() == Some(nix::errno::Errno::ENAMETOOLONG as i32);
        if !too_long {
            return Err(e).with_context(|| format!("cannot create {}", path.display()));
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let max = nix::unistd::pathconf(dir, nix::unistd::PathconfVar::NAME_MAX)
            .ok()
            .flatten()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(255);
        path = path_for(Some(max));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
    }
    let write = |name: &str, data: &[u8]| {
        let p = path.join(name);
        std::fs::write(&p, data).with_context(|| format!("cannot write {}", p.display()))
    };
    write("seq", seq.to_string().as_bytes())?;
    write_spool(path.join("stdout"), &mut job.out.spool)?;
    write_spool(path.join("stderr"), &mut job.err.spool)
}

/// The number a text starts with, as Perl reads one (`"12ab"` is 12, `"ab"` 0): how GNU
/// parallel orders `--results` columns.
fn leading_number(s: &[u8]) -> f64 {
    let s = String::from_utf8_lossy(s);
    let s = s.trim_start();
    let mut end = 0;
    let b = s.as_bytes();
    if end < b.len() && (b[end] == b'+' || b[end] == b'-') {
        end += 1;
    }
    let digits = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        i
    };
    end = digits(end);
    if end < b.len() && b[end] == b'.' {
        end = digits(end + 1);
    }
    if end < b.len() && (b[end] == b'e' || b[end] == b'E') {
        let mut e = end + 1;
        if e < b.len() && (b[e] == b'+' || b[e] == b'-') {
            e += 1;
        }
        let after = digits(e);
        if after > e {
            end = after;
        }
    }
    s[..end].parse().unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_every_line() {
        let mut v = Vec::new();
        write_tagged(&mut v, b"a b\t", b"1\n2\npartial").expect("write");
        assert_eq!(v, b"a b\t1\na b\t2\na b\tpartial");
    }

    #[test]
    fn columns_sort_by_leading_number_as_perl_reads_it() {
        assert_eq!(leading_number(b"12ab"), 12.0);
        assert_eq!(leading_number(b"ab"), 0.0);
        assert_eq!(leading_number(b" -1.5e2x"), -150.0);
        assert_eq!(leading_number(b"3e"), 3.0);
        assert_eq!(leading_number(b"."), 0.0);
    }

    #[test]
    fn results_paths_are_escaped_as_gnu_does() {
        assert_eq!(escape_path(b"a/b", None), b"a\\_b");
        assert_eq!(escape_path(b"c\\d", None), b"c\\\\d");
        assert_eq!(escape_path(b"t\tn\0", None), b"t\\tn\\0");
        assert_eq!(escape_path(b"abcdef", Some(4)), b"abcd");
    }
}
