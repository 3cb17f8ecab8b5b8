//! A job: what the input makes and the runner runs.

/// One job's input.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    /// Its sequence number, from 1, in input order.
    pub(crate) seq: u64,
    /// Its arguments: the columns of each source, then of each further record with `-n`.
    pub(crate) args: Vec<Vec<u8>>,
    /// With `--pipe`: its block of the input, written to its stdin.
    pub(crate) input: Option<Vec<u8>>,
}
