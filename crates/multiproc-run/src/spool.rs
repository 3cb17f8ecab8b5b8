//! A job's output stream while it is held back: in memory while small, then in an unlinked
//! temporary file, so a job that writes gigabytes costs disk, not memory (GNU parallel keeps
//! every job's output in files under `$TMPDIR`).
//!
//! What a spool holds is the file's bytes followed by the memory's. A file that cannot be made
//! or written (no descriptors left, a full disk) keeps the rest in memory: nothing is lost.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Past this many bytes in memory, a stream goes to a file.
pub(crate) const MEMORY_LIMIT: usize = 1 << 20;

/// How much is read back from a file at a time.
const CHUNK: usize = 1 << 16;

/// One held-back stream.
#[derive(Debug, Default)]
pub(crate) struct Spool {
    /// The first `file_len` bytes, once there were too many for memory.
    file: Option<File>,
    /// How many bytes the file holds.
    file_len: u64,
    /// The bytes after the file's.
    memory: Vec<u8>,
    /// Whether a newline came since the lines were last taken.
    newline: bool,
}

impl Spool {
    /// Adds `bytes`. They go to a file in `dir` when memory would pass [`MEMORY_LIMIT`] or
    /// `spill` asks so (the printer holds too much over all jobs).
    pub(crate) fn push(&mut self, bytes: &[u8], dir: &Path, spill: bool) {
        self.newline |= memchr::memchr(b'\n', bytes).is_some();
        if self.file.is_none() && (spill || self.memory.len() + bytes.len() > MEMORY_LIMIT) {
            // Best effort: without a file, memory keeps it.
            self.file = tempfile::tempfile_in(dir).ok();
            self.file_len = 0;
        }
        if self.file.is_some() && self.memory.is_empty() {
            let n = self.write_file(bytes);
            self.memory.extend_from_slice(&bytes[n..]);
            return;
        }
        if self.file.is_some() && self.file_len == 0 {
            // Just made: the memory goes first.
            let held = std::mem::take(&mut self.memory);
            let n = self.write_file(&held);
            self.memory = held[n..].to_vec();
            if self.memory.is_empty() {
                let n = self.write_file(bytes);
                self.memory.extend_from_slice(&bytes[n..]);
                return;
            }
        }
        self.memory.extend_from_slice(bytes);
    }

    /// Appends to the file what it takes of `bytes`; returns how much it took.
    fn write_file(&mut self, bytes: &[u8]) -> usize {
        let Some(f) = &self.file else { return 0 };
        let mut done = 0;
        while done < bytes.len() {
            match f.write_at(&bytes[done..], self.file_len) {
                Ok(0) => break,
                Ok(n) => {
                    done += n;
                    self.file_len += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        done
    }

    /// How many bytes it holds in memory.
    pub(crate) fn in_memory(&self) -> usize {
        self.memory.len()
    }

    /// Whether it holds nothing.
    pub(crate) fn is_empty(&self) -> bool {
        self.file_len == 0 && self.memory.is_empty()
    }

    /// Whether a newline came since the lines were last taken.
    pub(crate) fn has_newline(&self) -> bool {
        self.newline
    }

    /// Writes all it holds, each line prefixed with `tag`, and empties it.
    pub(crate) fn write_all(&mut self, w: &mut impl Write, tag: &[u8]) -> std::io::Result<()> {
        let mut out = Tagged::new(w, tag);
        let res = self.for_each_chunk(|chunk| out.write(chunk));
        *self = Spool::default();
        res
    }

    /// Writes its whole lines, each prefixed with `tag`, and keeps the part after the last
    /// newline.
    pub(crate) fn write_lines(&mut self, w: &mut impl Write, tag: &[u8]) -> std::io::Result<()> {
        let mut out = Tagged::new(w, tag);
        let mut rest = Vec::new();
        let res = self.for_each_chunk(|chunk| match memchr::memrchr(b'\n', chunk) {
            Some(p) => {
                out.write(&rest)?;
                rest.clear();
                out.write(&chunk[..=p])?;
                rest.extend_from_slice(&chunk[p + 1..]);
                Ok(())
            }
            None => {
                rest.extend_from_slice(chunk);
                Ok(())
            }
        });
        *self = Spool {
            memory: rest,
            ..Spool::default()
        };
        res
    }

    /// Calls `f` with what it holds, in order, a chunk at a time.
    fn for_each_chunk(
        &self,
        mut f: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        if let Some(file) = &self.file {
            let mut buf = vec![0; CHUNK];
            let mut at = 0;
            while at < self.file_len {
                let want = usize::try_from(self.file_len - at).map_or(CHUNK, |n| n.min(CHUNK));
                let n = file.read_at(&mut buf[..want], at)?;
                if n == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "a job's output file was cut short",
                    ));
                }
                f(&buf[..n])?;
                at += n as u64;
            }
        }
        if self.memory.is_empty() {
            return Ok(());
        }
        // A line in memory may be long: split it, so a lone 100 MB line costs no copy.
        self.memory.chunks(CHUNK.max(1)).try_for_each(f)
    }
}

/// A writer that puts `tag` before each line, lines spanning calls included.
struct Tagged<'a, W: Write> {
    /// Where it goes.
    w: &'a mut W,
    /// What goes before each line; nothing when empty.
    tag: &'a [u8],
    /// Whether the next byte starts a line.
    at_start: bool,
}

impl<'a, W: Write> Tagged<'a, W> {
    /// A writer at the start of a line.
    fn new(w: &'a mut W, tag: &'a [u8]) -> Self {
        Tagged {
            w,
            tag,
            at_start: true,
        }
    }

    /// Writes `data`, tagging each line start.
    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if self.tag.is_empty() {
            return self.w.write_all(data);
        }
        for line in data.split_inclusive(|&b| b == b'\n') {
            if self.at_start {
                self.w.write_all(self.tag)?;
            }
            self.w.write_all(line)?;
            self.at_start = line.ends_with(b"\n");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dir() -> std::path::PathBuf {
        std::env::temp_dir()
    }

    #[test]
    fn small_output_stays_in_memory() {
        let mut s = Spool::default();
        s.push(b"a\nb", &dir(), false);
        assert!(s.file.is_none());
        assert_eq!(s.in_memory(), 3);
        let mut out = Vec::new();
        s.write_all(&mut out, b"T\t").expect("write");
        assert_eq!(out, b"T\ta\nT\tb");
        assert_eq!(s.in_memory(), 0);
    }

    #[test]
    fn large_output_goes_to_a_file_and_comes_back_whole() {
        let mut s = Spool::default();
        let block: Vec<u8> = (0..=255u8).cycle().take(MEMORY_LIMIT / 3).collect();
        let mut want = Vec::new();
        for _ in 0..5 {
            s.push(&block, &dir(), false);
            want.extend_from_slice(&block);
        }
        assert!(s.file.is_some(), "past the limit it spills");
        assert!(s.in_memory() < MEMORY_LIMIT);
        let mut out = Vec::new();
        s.write_all(&mut out, b"").expect("write");
        assert_eq!(out, want);
    }

    #[test]
    fn spilling_when_asked_keeps_the_order() {
        let mut s = Spool::default();
        s.push(b"one\n", &dir(), false);
        s.push(b"two\n", &dir(), true);
        s.push(b"three\n", &dir(), false);
        assert!(s.file.is_some());
        assert_eq!(s.in_memory(), 0);
        let mut out = Vec::new();
        s.write_all(&mut out, b"").expect("write");
        assert_eq!(out, b"one\ntwo\nthree\n");
    }

    #[test]
    fn a_missing_directory_keeps_it_in_memory() {
        let mut s = Spool::default();
        let big = vec![b'x'; MEMORY_LIMIT + 1];
        s.push(&big, Path::new("/nonexistent/multiproc-spool"), false);
        assert!(s.file.is_none());
        assert_eq!(s.in_memory(), big.len());
    }

    proptest! {
        /// Whatever the pieces and wherever the spill, the lines come out whole and tagged,
        /// and what follows the last newline stays.
        #[test]
        fn lines_come_out_whole(
            pieces in prop::collection::vec(prop::collection::vec(prop::sample::select(b"ab\n".to_vec()), 0..40), 0..20),
            spill_at in 0usize..20,
        ) {
            let mut s = Spool::default();
            let mut all = Vec::new();
            for (i, p) in pieces.iter().enumerate() {
                s.push(p, &dir(), i == spill_at);
                all.extend_from_slice(p);
            }
            let mut out = Vec::new();
            s.write_lines(&mut out, b"> ").expect("write");
            let cut = all.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
            let mut want = Vec::new();
            for line in all[..cut].split_inclusive(|&b| b == b'\n') {
                want.extend_from_slice(b"> ");
                want.extend_from_slice(line);
            }
            prop_assert_eq!(out, want);
            prop_assert!(!s.has_newline());
            let mut rest = Vec::new();
            s.write_all(&mut rest, b"").expect("write");
            prop_assert_eq!(rest, all[cut..].to_vec());
        }
    }
}
