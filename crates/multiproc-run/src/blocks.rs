//! `--pipe`: the input (stdin, or the first `-a`/`::::` file) cut into blocks, each the
//! standard input of one job, as GNU parallel cuts it.
//!
//! A block is `--block` bytes (1 MiB by default) cut back to the last record end within it,
//! the rest starting the next block; a record longer than a block makes that block longer.
//! With `-N n`, a block is n records whatever its size. A record ends with `--recend` (a
//! newline by default), or is `-L n` lines. At the end of the input, what is left is the last
//! block (with `-L`, the last whole records and then the partial one, as GNU does).

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, sync_channel};

use anyhow::{Context, bail};

use crate::input::{Batches, Feed, Job};

/// How the input is cut.
#[derive(Debug, Clone)]
pub(crate) struct BlockSpec {
    /// `--block`: the bytes a block holds before it is cut back to a record end.
    pub(crate) size: usize,
    /// `--recend`: what ends a record (empty: blocks are cut anywhere).
    pub(crate) recend: Vec<u8>,
    /// `-N`: records per block, whatever its size.
    pub(crate) records: Option<usize>,
    /// `-L`: lines per record (ending with `--recend`'s newlines).
    pub(crate) lines: Option<usize>,
    /// `--header`: the records at the start that go before every block.
    pub(crate) header_lines: usize,
    /// `-r`: a block of blanks only is left out.
    pub(crate) skip_blank: bool,
}

/// The default `--block`: 1 MiB, as GNU parallel's.
pub(crate) const DEFAULT_BLOCK: usize = 1 << 20;

/// How much is read at a time.
const READ: usize = 1 << 16;

/// Parses `--block`: bytes, with a suffix `k`, `m`, `g`, `t` (powers of 1000) or `K`, `M`,
/// `G`, `T` (powers of 1024), as GNU parallel reads it; fractions allowed (`1.5M`).
pub(crate) fn parse_size(s: &str) -> anyhow::Result<usize> {
    match scaled(s) {
        Some(n) if n >= 1 => Ok(n),
        _ => bail!("bad --block {s:?}: use bytes, or a number with k, K, m, M, g, G"),
    }
}

/// A number with an optional suffix `k`, `m`, `g`, `t` (powers of 1000) or `K`, `M`, `G`, `T`
/// (powers of 1024), as GNU parallel reads sizes and counts; fractions allowed (`1.5M`), the
/// result rounded down.
pub(crate) fn scaled(s: &str) -> Option<usize> {
    let s = s.trim();
    let (num, scale) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let scale: f64 = match c {
                'k' => 1e3,
                'K' => 1024.0,
                'm' => 1e6,
                'M' => 1024.0 * 1024.0,
                'g' => 1e9,
                'G' => 1024.0 * 1024.0 * 1024.0,
                't' => 1e12,
                'T' => 1024f64.powi(4),
                _ => return None,
            };
            (&s[..i], scale)
        }
        _ => (s, 1.0),
    };
    let n: f64 = num.parse().ok()?;
    let v = n * scale;
    (v >= 0.0 && v < usize::MAX as f64).then_some(v as usize)
}

/// Opens the source and starts the thread that cuts it into jobs; `wake` gets a byte after
/// each batch sent.
pub(crate) fn start(
    source: Option<PathBuf>,
    spec: BlockSpec,
    wake: UnixStream,
) -> anyhow::Result<Receiver<Feed>> {
    let reader: Box<dyn Read + Send> = match &source {
        Some(p) if p.as_os_str() != "-" => Box::new(
            std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?,
        ),
        _ => Box::new(std::io::stdin()),
    };
    let (tx, rx) = sync_channel(4);
    let out = Batches::new(tx, wake);
    std::thread::Builder::new()
        .name("run-blocks".into())
        .spawn(move || cut(reader, &spec, out))
        .context("cannot start the input thread")?;
    Ok(rx)
}

/// Reads `r` to its end, sending a job per block.
fn cut(mut r: impl Read, spec: &BlockSpec, mut out: Batches) {
    let mut buf: Vec<u8> = Vec::new();
    let mut eof = false;
    let mut seq = 0u64;
    let mut header: Option<Vec<u8>> = (spec.header_lines == 0).then(Vec::new);
    loop {
        let at = loop {
            if header.is_none() {
                // The header first: its records, or all there is.
                if let Some(at) =
                    nth_end(&buf, &spec.recend, spec.header_lines).or(eof.then_some(buf.len()))
                {
                    let rest = buf.split_off(at);
                    header = Some(std::mem::replace(&mut buf, rest));
                    continue;
                }
            } else if let Some(at) = cut_point(&buf, spec, eof) {
                break Some(at);
            }
            if eof {
                break None;
            }
            let start = buf.len();
            buf.resize(start + READ, 0);
            match r.read(&mut buf[start..]) {
                Ok(n) => {
                    buf.truncate(start + n);
                    eof = n == 0;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => buf.truncate(start),
                Err(e) => {
                    buf.truncate(start);
                    out.close(Some(format!("reading input: {e}")));
                    return;
                }
            }
        };
        let block = match at {
            Some(at) => {
                let rest = buf.split_off(at);
                let block = std::mem::replace(&mut buf, rest);
                match header.as_deref() {
                    Some(h) if !h.is_empty() && !block.is_empty() => [h, &block].concat(),
                    _ => block,
                }
            }
            None => break,
        };
        if block.is_empty() {
            break;
        }
        if spec.skip_blank && block.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        seq += 1;
        let n = block.len();
        out.batch.push(Job {
            seq,
            // One empty argument, as GNU parallel gives `{}` under `--pipe`.
            args: vec![Vec::new()],
            input: Some(block),
        });
        if !out.read(n) {
            return;
        }
    }
    out.close(None);
}

/// Where the next block ends in `buf`, if that is known yet (`eof`: nothing more comes).
fn cut_point(buf: &[u8], spec: &BlockSpec, eof: bool) -> Option<usize> {
    if buf.is_empty() {
        return eof.then_some(0);
    }
    let per_record = spec.lines.unwrap_or(1);
    if let Some(n) = spec.records {
        // `-N`: n records, or what is left at the end.
        return nth_end(buf, &spec.recend, n.saturating_mul(per_record))
            .or(eof.then_some(buf.len()));
    }
    if spec.recend.is_empty() {
        return (buf.len() >= spec.size || eof).then(|| buf.len().min(spec.size));
    }
    if buf.len() >= spec.size {
        // The last record end within the block, or else the first after it.
        return last_end(&buf[..spec.size], &spec.recend, per_record)
            .or_else(|| nth_end(buf, &spec.recend, per_record))
            .or(eof.then_some(buf.len()));
    }
    if !eof {
        return None;
    }
    match spec.lines {
        // GNU parallel ends a block with `-L` at the last whole record, then the partial one.
        Some(_) => last_end(buf, &spec.recend, per_record).or(Some(buf.len())),
        None => Some(buf.len()),
    }
}

/// Where the n-th record end in `buf` ends (`None` if there are fewer).
fn nth_end(buf: &[u8], recend: &[u8], n: usize) -> Option<usize> {
    if n == 0 {
        return Some(0);
    }
    memchr::memmem::find_iter(buf, recend)
        .nth(n - 1)
        .map(|at| at + recend.len())
}

/// Where the last end of a record of `per_record` record ends in `buf` ends.
fn last_end(buf: &[u8], recend: &[u8], per_record: usize) -> Option<usize> {
    if per_record <= 1 {
        return memchr::memmem::rfind(buf, recend).map(|at| at + recend.len());
    }
    let ends = memchr::memmem::find_iter(buf, recend).count();
    let whole = ends / per_record * per_record;
    nth_end(buf, recend, whole).filter(|&at| at > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(input: &[u8], spec: &BlockSpec) -> Vec<usize> {
        let (tx, rx) = sync_channel(1024);
        let (_keep, wake) = UnixStream::pair().expect("socket pair");
        wake.set_nonblocking(true).expect("nonblocking");
        cut(input, spec, Batches::new(tx, wake));
        let mut sizes = Vec::new();
        while let Ok(Feed::Jobs(jobs)) = rx.recv() {
            sizes.extend(jobs.iter().map(|j| j.input.as_ref().map_or(0, Vec::len)));
        }
        sizes
    }

    fn spec(size: usize) -> BlockSpec {
        BlockSpec {
            size,
            recend: b"\n".to_vec(),
            records: None,
            lines: None,
            header_lines: 0,
            skip_blank: false,
        }
    }

    fn seq(n: u32) -> Vec<u8> {
        (1..=n)
            .map(|i| format!("{i}\n"))
            .collect::<String>()
            .into_bytes()
    }

    #[test]
    fn blocks_are_cut_at_the_last_record_end_as_gnu_cuts_them() {
        // `seq 20 | parallel --pipe --block 10 wc -c` gives 10 8 9 9 9 6.
        assert_eq!(blocks(&seq(20), &spec(10)), [10, 8, 9, 9, 9, 6]);
        // `seq 100000 | parallel --pipe --block 100k wc -c` starts 99996, 99996.
        let sizes = blocks(&seq(100_000), &spec(100_000));
        assert_eq!(&sizes[..2], [99_996, 99_996]);
        assert_eq!(sizes.iter().sum::<usize>(), seq(100_000).len());
        // The rest at the end, a last line without newline included.
        assert_eq!(blocks(b"a\nb", &spec(DEFAULT_BLOCK)), [3]);
        assert!(blocks(b"", &spec(10)).is_empty());
        // A record longer than the block makes the block longer.
        assert_eq!(blocks(b"abcdefgh\nij\n", &spec(4)), [9, 3]);
    }

    #[test]
    fn records_and_lines_per_block() {
        let n3 = BlockSpec {
            records: Some(3),
            ..spec(4)
        };
        assert_eq!(blocks(&seq(10), &n3), [6, 6, 6, 3]);
        let l3 = BlockSpec {
            lines: Some(3),
            ..spec(DEFAULT_BLOCK)
        };
        // `seq 10 | parallel --pipe -L3 wc -l` gives 9 1 (lines).
        assert_eq!(blocks(&seq(10), &l3), [18, 3]);
        let l3_small = BlockSpec {
            lines: Some(3),
            ..spec(8)
        };
        assert_eq!(blocks(&seq(10), &l3_small), [6, 6, 6, 3]);
        let header = BlockSpec {
            records: Some(1),
            header_lines: 1,
            ..spec(DEFAULT_BLOCK)
        };
        assert_eq!(blocks(b"h\n1\n2\n3\n", &header), [4, 4, 4]);
        assert!(blocks(b"h\n", &header).is_empty());
        let anywhere = BlockSpec {
            recend: Vec::new(),
            ..spec(4)
        };
        assert_eq!(blocks(b"abcdefghij", &anywhere), [4, 4, 2]);
    }

    #[test]
    fn sizes_read_as_gnu_reads_them() {
        assert_eq!(parse_size("100k").expect("k"), 100_000);
        assert_eq!(parse_size("100K").expect("K"), 102_400);
        assert_eq!(parse_size("1M").expect("M"), 1 << 20);
        assert_eq!(parse_size("1.5m").expect("m"), 1_500_000);
        assert_eq!(parse_size("42").expect("bytes"), 42);
        for bad in ["", "0", "-1", "1x", "k", "1e400"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }
}
