//! What can go wrong reading or writing a pickle.

use std::fmt::Display;

/// A pickle could not be decoded, encoded or converted.
///
/// Decoding errors carry the byte offset of the opcode (or argument) at fault.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PickleError {
    /// The data ends in the middle of an opcode, or before `STOP`.
    #[error("truncated: {what} at byte {offset} runs past the end")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Where it starts.
        offset: usize,
    },
    /// An opcode this decoder does not read (unknown, or one that would run code or needs
    /// out-of-band data: `PERSID`, `EXT*`, `INST`, `OBJ`, `NEXT_BUFFER`, …).
    #[error("unsupported opcode 0x{opcode:02x} at byte {offset}")]
    UnsupportedOpcode {
        /// The opcode byte.
        opcode: u8,
        /// Its offset.
        offset: usize,
    },
    /// `PROTO` names a protocol above 5.
    #[error("unsupported protocol {protocol}")]
    UnsupportedProtocol {
        /// The protocol announced.
        protocol: u8,
    },
    /// The opcodes are well formed but do not make a value (stack underflow, missing mark, memo
    /// key never stored, invalid UTF-8, a structure that contains itself, …).
    #[error("invalid at byte {offset}: {detail}")]
    Invalid {
        /// The offset of the opcode at fault.
        offset: usize,
        /// What is wrong.
        detail: String,
    },
    /// A bound of [`Limits`](super::Limits) was reached.
    #[error("{limit} limit of {max} exceeded at byte {offset}")]
    LimitExceeded {
        /// Which bound.
        limit: &'static str,
        /// Its value.
        max: usize,
        /// Where decoding stopped.
        offset: usize,
    },
    /// A value cannot be written as a pickle.
    #[error("cannot pickle: {0}")]
    Unpicklable(String),
    /// A conversion between a Rust type and a [`Value`](super::Value) failed.
    #[error("{0}")]
    Convert(String),
}

impl PickleError {
    pub(crate) fn invalid(offset: usize, detail: impl Into<String>) -> Self {
        PickleError::Invalid {
            offset,
            detail: detail.into(),
        }
    }
}

impl serde::ser::Error for PickleError {
    fn custom<T: Display>(msg: T) -> Self {
        PickleError::Convert(msg.to_string())
    }
}

impl serde::de::Error for PickleError {
    fn custom<T: Display>(msg: T) -> Self {
        PickleError::Convert(msg.to_string())
    }
}

impl From<PickleError> for crate::Error {
    fn from(e: PickleError) -> Self {
        match e {
            PickleError::Unpicklable(_) | PickleError::Convert(_) => {
                crate::Error::serialization("pickle", e)
            }
            _ => crate::Error::protocol("pickle", e.to_string()),
        }
    }
}
