//! The pickle codec's error: its kind and, for malformed input, the byte offset. A leaf: the
//! decoder, the encoder, [`super::Value`] and [`super::BigInt`] all report through it.

use std::fmt;

/// What kind of [`PickleError`] this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The input is not a valid pickle (truncated, unknown opcode, bad stack, bad UTF-8).
    Malformed,
    /// A valid pickle of something this codec refuses: a global other than the plain-data
    /// builtins (a class, `os.system`, `datetime`), persistent ids, out-of-band buffers.
    Unsupported,
    /// A [`super::Limits`] bound was exceeded.
    Limit,
    /// The value does not have the shape the requested Rust type needs (serde error), or a Rust
    /// value cannot be written.
    Type,
}

/// An error of the pickle codec. The message says what was wrong and, for malformed input, at
/// which byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PickleError(Box<ErrorImpl>);

/// Boxed so that `Result<T, PickleError>` stays small on the decoder's hot path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ErrorImpl {
    kind: ErrorKind,
    message: String,
    offset: Option<usize>,
}

impl PickleError {
    #[cold]
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        PickleError(Box::new(ErrorImpl {
            kind,
            message: message.into(),
            offset: None,
        }))
    }

    #[cold]
    pub(crate) fn at(kind: ErrorKind, offset: usize, message: impl Into<String>) -> Self {
        PickleError(Box::new(ErrorImpl {
            kind,
            message: message.into(),
            offset: Some(offset),
        }))
    }

    /// The kind of error.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// The byte offset in the input where decoding failed, when known.
    pub fn offset(&self) -> Option<usize> {
        self.0.offset
    }
}

impl fmt::Display for PickleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.offset {
            Some(o) => write!(f, "{} (at byte {o})", self.0.message),
            None => f.write_str(&self.0.message),
        }
    }
}

impl std::error::Error for PickleError {}

impl serde::de::Error for PickleError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        PickleError::new(ErrorKind::Type, msg.to_string())
    }
}

impl serde::ser::Error for PickleError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        PickleError::new(ErrorKind::Type, msg.to_string())
    }
}
