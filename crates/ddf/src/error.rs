//! The one error type of the library.
//!
//! One `#[non_exhaustive]` enum with the backend as a field rather than a variant per backend
//! (object_store), and predicates rather than more variants (redis-rs). Third-party error types
//! never appear here: each backend maps its client's errors in one private function. No variant
//! ever carries a password or a connection URL with credentials.
//!
//! Every message is complete: it states its cause once, in its own text, and
//! [`std::error::Error::source`] returns `None`. A chain printer (`anyhow`'s `{:#}`, tracing's
//! error fields) and a plain `{}` therefore print the same line, with each cause once.

use std::fmt;
use std::path::PathBuf;

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where a configuration value came from, for error messages and `ddf-cache config`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// The built-in default.
    Default,
    /// An INI file, at a line (1-based). `path` is `None` for text given with `from_ini_str`.
    Ini {
        /// The file, when the text came from one.
        path: Option<PathBuf>,
        /// The line the key stands on (1-based).
        line: usize,
    },
    /// An environment variable.
    Env(String),
    /// A call in code (a builder method).
    Code,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::Ini {
                path: Some(p),
                line,
            } => write!(f, "{}, line {line}", p.display()),
            Source::Ini { path: None, line } => write!(f, "INI text, line {line}"),
            Source::Env(var) => write!(f, "environment variable {var}"),
            Source::Code => f.write_str("code"),
        }
    }
}

/// Everything that can go wrong in ddf.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value or file is wrong. The message names where (file and line, or the
    /// environment variable), the key, the value (redacted for secrets) and what is allowed.
    #[error("{source_}: {message}")]
    Config {
        /// Where the bad value came from.
        source_: Source,
        /// What was wrong and what is allowed.
        message: String,
    },

    /// A configuration file could not be read.
    #[error("cannot read config file {}: {error}", path.display())]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// The I/O error (its text is in the message).
        error: std::io::Error,
    },

    /// An argument other than a key is wrong (a zero TTL, an oversize value...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A value could not be encoded for storage.
    #[error("cannot encode the value for key {key:?} with the {codec} codec: {reason}")]
    Encode {
        /// The key.
        key: String,
        /// The codec (`json`, `pickle`).
        codec: &'static str,
        /// Why.
        reason: String,
    },

    /// A stored value could not be decoded into the requested type.
    #[error("cannot decode the value of key {key:?} with the {codec} codec: {reason}")]
    Decode {
        /// The key.
        key: String,
        /// The codec (`json`, `pickle`).
        codec: &'static str,
        /// Why.
        reason: String,
    },

    /// The backend failed (I/O, network, protocol).
    #[error("{backend} backend: {message}")]
    Backend {
        /// The backend's name (`pickle`, `redis`, ...).
        backend: &'static str,
        /// What failed. Never contains credentials.
        message: String,
        /// Whether retrying later may succeed (timeouts, refused connections).
        temporary: bool,
        /// Always `None` from ddf's own backends: the message states the cause (see the module
        /// docs). A custom [`Backend`](crate::Backend) may attach one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    },
}

impl Error {
    /// Whether retrying the operation later may succeed (a timeout, a refused connection).
    pub fn is_temporary(&self) -> bool {
        matches!(
            self,
            Error::Backend {
                temporary: true,
                ..
            }
        )
    }

    /// Whether this error comes from the configuration.
    pub fn is_config(&self) -> bool {
        matches!(self, Error::Config { .. } | Error::ConfigFile { .. })
    }

    /// Whether this error is about a stored value that could not be decoded.
    pub fn is_decode(&self) -> bool {
        matches!(self, Error::Decode { .. })
    }

    pub(crate) fn config(source: Source, message: impl Into<String>) -> Self {
        Error::Config {
            source_: source,
            message: message.into(),
        }
    }

    /// A backend error from an I/O error, `what: err` in one message. `temporary` follows the
    /// error kind.
    pub(crate) fn io(backend: &'static str, what: impl fmt::Display, err: std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        let temporary = matches!(
            err.kind(),
            K::TimedOut
                | K::WouldBlock
                | K::Interrupted
                | K::ConnectionRefused
                | K::ConnectionReset
                | K::ConnectionAborted
                | K::NotConnected
                | K::BrokenPipe
                | K::UnexpectedEof
        );
        Error::Backend {
            backend,
            message: format!("{what}: {err}"),
            temporary,
            source: None,
        }
    }

    /// An equal error for a second caller (`ddf::init` returns the one the globals keep). An
    /// I/O error keeps its kind and text; a custom backend's source is folded into the message.
    pub(crate) fn duplicate(&self) -> Self {
        match self {
            Error::Config { source_, message } => Error::config(source_.clone(), message.clone()),
            Error::ConfigFile { path, error } => Error::ConfigFile {
                path: path.clone(),
                error: std::io::Error::new(error.kind(), error.to_string()),
            },
            Error::InvalidArgument(m) => Error::InvalidArgument(m.clone()),
            Error::Encode { key, codec, reason } => Error::Encode {
                key: key.clone(),
                codec,
                reason: reason.clone(),
            },
            Error::Decode { key, codec, reason } => Error::Decode {
                key: key.clone(),
                codec,
                reason: reason.clone(),
            },
            Error::Backend {
                backend,
                message,
                temporary,
                source,
            } => Error::Backend {
                backend,
                message: match source {
                    Some(s) => format!("{message}: {s}"),
                    None => message.clone(),
                },
                temporary: *temporary,
                source: None,
            },
        }
    }
}

/// The words a backend's message uses for each kind of server failure, so that `ping` and
/// `stats` can say why a server is not answering (each backend's `map_err` writes them).
pub(crate) mod why {
    /// The connection was refused (nothing listens on the port).
    pub(crate) const REFUSED: &str = "connection refused";
    /// No connection within `connect_timeout`.
    pub(crate) const CONNECT_TIMEOUT: &str = "timed out while connecting";
    /// Connected, but no reply within `timeout` (a stopped or overloaded server).
    pub(crate) const REPLY_TIMEOUT: &str = "timed out waiting for a reply";
    /// The server answered something that is not its protocol.
    pub(crate) const PROTOCOL: &str = "protocol error";
}

/// Why a server failed, in the words `ping` and `stats` show: `refused`, `timed out while
/// connecting`, `timed out on a reply`, `protocol error`, or `failed` for anything else.
pub(crate) fn failure_kind(e: &Error) -> &'static str {
    let text = e.to_string().to_lowercase();
    if text.contains(why::REFUSED) {
        "refused"
    } else if text.contains(why::CONNECT_TIMEOUT) {
        "timed out while connecting"
    } else if text.contains(why::REPLY_TIMEOUT) {
        "timed out on a reply"
    } else if text.contains(why::PROTOCOL) {
        "protocol error"
    } else {
        "failed"
    }
}

/// Shortens a key for an error message: keys may be 10 kB.
pub(crate) fn shorten(key: &str) -> String {
    const MAX: usize = 120;
    if key.len() <= MAX {
        return key.to_owned();
    }
    let mut end = MAX;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &key[..end], key.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_kinds_are_named_from_the_backends_words() {
        let e = |m: &str| Error::Backend {
            backend: "redis",
            message: m.to_owned(),
            temporary: true,
            source: None,
        };
        for (message, kind) in [
            (
                "cannot connect on x: Connection refused (os error 111)",
                "refused",
            ),
            (
                "cannot connect on x: timed out while connecting (x)",
                "timed out while connecting",
            ),
            (
                "PING on x: timed out waiting for a reply (x)",
                "timed out on a reply",
            ),
            (
                "PING on x: protocol error: a reply that is not RESP",
                "protocol error",
            ),
            ("PING on x: NOAUTH", "failed"),
        ] {
            assert_eq!(failure_kind(&e(message)), kind, "{message}");
        }
    }

    #[test]
    fn long_keys_are_shortened_on_a_char_boundary() {
        let key = "é".repeat(100);
        let s = shorten(&key);
        assert!(s.ends_with("(200 bytes)"), "{s}");
        assert!(s.len() < 140);
    }

    #[test]
    fn timeouts_are_temporary_and_not_found_is_not() {
        let e = Error::io(
            "pickle",
            "read",
            std::io::Error::from(std::io::ErrorKind::TimedOut),
        );
        assert!(e.is_temporary());
        let e = Error::io(
            "pickle",
            "read",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        assert!(!e.is_temporary());
    }
}
