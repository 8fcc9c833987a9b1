//! A restricted, Python-compatible pickle codec: reads what CPython 3.11 writes (protocols 0
//! to 5) for plain data, writes protocol 4, and never executes anything.
//!
//! # Why our own codec
//!
//! The crates were measured (see the project notes): `serde-pickle` 1.2.0 cannot decode shared
//! references (`t = ("x", "y"); [t, t]`, common in real data because CPython memoizes), aborts
//! the whole process with a stack overflow on a 20 kB pickle nested 10,000 deep, and expands a
//! 200-byte memo bomb to 2^39 elements; `pickled` 2.0.0-alpha fixes sharing but is an alpha, not
//! `Send`, and aborts at 100,000 depth. Both fail on `b""` at protocols 0-2. A cache reads
//! values that other processes wrote, so a corrupt or hostile value must be an error, never an
//! abort, a hang or a memory blow-up. Hence this module:
//!
//! - the decoder ([`from_slice`]) is a loop over opcodes with an explicit stack: it never recurses
//!   on the input's depth. It builds objects in a flat arena (memo references are arena indices,
//!   so sharing and later mutation, `d = {}; [d, d]`, are exact), then measures the tree the arena
//!   would expand to (elements, bytes, depth, cycles) in one iterative pass *before* building
//!   anything, so a memo bomb is refused in microseconds ([`Limits`]);
//! - typed decoding ([`from_slice`]) first tries a single pass for pickles without memo
//!   references (everything ddf writes, and CPython's plain records): a serde `Deserializer`
//!   reading straight from the opcodes, with the same limits, which gives up on anything else or
//!   on any error; the two-pass decoder then runs and is the one that reports errors
//!   (`fast.rs`);
//! - the only globals it accepts are the ones CPython itself uses for plain data:
//!   `builtins.set`/`frozenset`/`bytearray`/`bytes` (also as `__builtin__`) and `_codecs.encode`
//!   with `latin1` (how protocols 0-2 write `bytes`). `datetime`, `decimal` and every other global
//!   (`os.system`, a class) are refused with an error naming it; nothing is ever called;
//! - the encoder ([`to_vec`]) is a serde `Serializer` writing protocol 4 (see [`PROTOCOL`]).
//!
//! # Types
//!
//! | Python | [`Value`] | serde (typed `T`) | written from Rust |
//! |---|---|---|---|
//! | `None` | `None` | unit, `Option::None` | `()`, `None`, unit structs |
//! | `bool` | `Bool` | `bool` | `bool` |
//! | `int` | `Int` (i64) / `BigInt` (any size) | any integer type that fits; `f32`/`f64` | every integer type incl. `u64`/`i128`/`u128` |
//! | `float` | `Float` (incl. nan, inf) | `f64`, `f32` | `f32`, `f64` |
//! | `str` | `Str` | `String`, `char`, unit enum variants | `str`, `String`, `char` |
//! | `bytes` | `Bytes` | `serde_bytes::ByteBuf`, `Vec<u8>` | `serialize_bytes` (`serde_bytes`) |
//! | `bytearray` | `ByteArray` | as `bytes` | only from [`Value::ByteArray`] |
//! | `list` | `List` | sequences | sequences (`Vec`, slices, sets of Rust) |
//! | `tuple` | `Tuple` | sequences, tuples | tuples, tuple structs, arrays `[T; N]` |
//! | `set`, `frozenset` | `Set`, `FrozenSet` | sequences | only from [`Value::Set`]/[`Value::FrozenSet`] |
//! | `dict` | `Dict` (any hashable keys, in order) | maps, structs | maps, structs |
//!
//! Enums are shaped as `serde_json` shapes them (externally tagged): a unit variant is its name,
//! other variants `{name: value}`.
//!
//! ```
//! use std::collections::BTreeMap;
//! use ddf::testing::internals::pickle::{self, Value};
//!
//! let bytes = pickle::to_vec(&("web", 8080u16))?;
//! let back: (String, u16) = pickle::from_slice(&bytes)?;
//! assert_eq!(back, ("web".to_owned(), 8080));
//!
//! // What Python 3.11 writes for `t = ("x", "y"); [t, t]` at protocol 5:
//! let py = b"\x80\x05\x95\x11\x00\x00\x00\x00\x00\x00\x00]\x94(\x8c\x01x\x94\x8c\x01y\x94\x86\x94h\x03e.";
//! let v = pickle::from_slice_value(py)?;
//! let t = Value::Tuple(vec![Value::Str("x".into()), Value::Str("y".into())]);
//! assert_eq!(v, Value::List(vec![t.clone(), t]));
//! assert_eq!(v.to_json(), serde_json::json!([["x", "y"], ["x", "y"]]));
//! # Ok::<(), ddf::testing::internals::pickle::PickleError>(())
//! ```

mod bigint;
mod de;
mod error;
mod fast;
mod ser;
mod typed;
pub(crate) mod value;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use bigint::BigInt;
pub use error::{ErrorKind, PickleError};
pub use value::Value;

/// The protocol [`to_vec`] writes: 4.
///
/// Protocol 4 (Python 3.4+) has everything plain data needs: 8-byte lengths, `EMPTY_SET` and
/// `FROZENSET` opcodes, short string opcodes. Protocol 5 only adds out-of-band buffers and a
/// `bytearray` opcode, and needs Python 3.8+; protocols 0-3 lack set opcodes and large lengths.
/// Every Python 3 that can run the DDF reads protocol 4. The encoder writes no `FRAME`s (they
/// only help Python's file reads) and no memo (nothing is shared on the Rust side).
pub const PROTOCOL: u8 = 4;

/// Resource limits of the decoder. Exceeding one is a [`PickleError`] of kind
/// [`ErrorKind::Limit`], never an abort.
///
/// Counts are of the *expanded* value: a string referenced 1,000 times through the memo counts
/// 1,000 times, so a small pickle cannot expand into a huge value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest accepted input, in bytes. Default 64 MiB.
    pub max_input_bytes: usize,
    /// Deepest nesting of containers (a flat list is depth 1). Default 256: the decoded
    /// [`Value`] and serde's `Deserialize` impls recurse on it, so it also bounds stack use.
    pub max_depth: usize,
    /// Most values (containers and scalars) in the expanded value. Default 2,000,000.
    pub max_elements: u64,
    /// Most string and bytes payload in the expanded value, in bytes. Default 256 MiB.
    pub max_decoded_bytes: u64,
    /// Largest integer, in bytes of two's complement (4,096 bytes is about 9,860 decimal digits;
    /// Python itself refuses to print ints over 4,300 digits). Default 4,096.
    pub max_int_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_input_bytes: 64 << 20,
            max_depth: 256,
            max_elements: 2_000_000,
            max_decoded_bytes: 256 << 20,
            max_int_bytes: 4096,
        }
    }
}

impl Limits {
    #[cfg(any(test, feature = "testing"))]
    /// Sets [`Limits::max_input_bytes`].
    #[must_use]
    pub fn with_max_input_bytes(mut self, n: usize) -> Self {
        self.max_input_bytes = n;
        self
    }

    #[cfg(any(test, feature = "testing"))]
    /// Sets [`Limits::max_depth`].
    #[must_use]
    pub fn with_max_depth(mut self, n: usize) -> Self {
        self.max_depth = n;
        self
    }

    #[cfg(any(test, feature = "testing"))]
    /// Sets [`Limits::max_elements`].
    #[must_use]
    pub fn with_max_elements(mut self, n: u64) -> Self {
        self.max_elements = n;
        self
    }

    #[cfg(any(test, feature = "testing"))]
    /// Sets [`Limits::max_decoded_bytes`].
    #[must_use]
    pub fn with_max_decoded_bytes(mut self, n: u64) -> Self {
        self.max_decoded_bytes = n;
        self
    }

    #[cfg(any(test, feature = "testing"))]
    /// Sets [`Limits::max_int_bytes`].
    #[must_use]
    pub fn with_max_int_bytes(mut self, n: usize) -> Self {
        self.max_int_bytes = n;
        self
    }
}

/// Encodes a value as a protocol-4 pickle that CPython's `pickle.loads` reads as the natural
/// Python value (see the module's table).
///
/// ```
/// let bytes = ddf::testing::internals::pickle::to_vec(&vec![1, 2, 3])?;
/// assert_eq!(bytes[..2], [0x80, 4]);
/// # Ok::<(), ddf::testing::internals::pickle::PickleError>(())
/// ```
///
/// # Errors
/// [`ErrorKind::Type`] when the value's `Serialize` impl fails, or a map key is a list, dict or
/// set (unhashable in Python).
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, PickleError> {
    ser::to_vec(value)
}

/// Decodes a pickle into `T` with the default [`Limits`].
///
/// A Python `float` decodes into `f64`/`f32`, an `int` into any integer type it fits (and into
/// `f64`); `None` into `Option::None` or `()`; a `dict` into a map or a struct; a `list`,
/// `tuple`, `set` or `frozenset` into a sequence or a tuple. For a lossless dynamic value use
/// [`from_slice_value`] (decoding into [`Value`] through serde forgets which sequence kind it
/// was).
///
/// ```
/// use std::collections::HashMap;
/// // pickle.dumps({'name': 'web', 'ports': ['8080:80']}, protocol=2)
/// let py = b"\x80\x02}q\x00(X\x04\x00\x00\x00nameq\x01X\x03\x00\x00\x00webq\x02X\x05\x00\x00\x00portsq\x03]q\x04X\x07\x00\x00\x008080:80q\x05au.";
/// let v: HashMap<String, serde_json::Value> = ddf::testing::internals::pickle::from_slice(py)?;
/// assert_eq!(v["ports"][0], "8080:80");
/// # Ok::<(), ddf::testing::internals::pickle::PickleError>(())
/// ```
///
/// # Errors
/// [`ErrorKind::Malformed`], [`ErrorKind::Unsupported`] or [`ErrorKind::Limit`] for a bad
/// pickle; [`ErrorKind::Type`] when the value is not a `T`.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, PickleError> {
    from_slice_with_limits(bytes, &Limits::default())
}

/// [`from_slice`] with explicit [`Limits`].
///
/// # Errors
/// As [`from_slice`].
pub fn from_slice_with_limits<T: DeserializeOwned>(
    bytes: &[u8],
    limits: &Limits,
) -> Result<T, PickleError> {
    // Single pass for pickles without memo references (see `fast.rs`); anything else, and
    // every error, goes through the two-pass decoder below.
    if let Some(v) = fast::try_from_slice(bytes, limits) {
        return Ok(v);
    }
    from_slice_slow(bytes, limits)
}

/// The two-pass decoder alone (the reference the fast path is tested against).
pub(crate) fn from_slice_slow<T: DeserializeOwned>(
    bytes: &[u8],
    limits: &Limits,
) -> Result<T, PickleError> {
    de::with_machine(bytes, limits, |m, root| {
        T::deserialize(typed::ArenaDe {
            m,
            id: root,
            depth: 0,
            shared: false,
        })
    })
}

/// Decodes a pickle into a [`Value`], keeping every Python distinction (tuple, set, frozenset,
/// bytearray, big ints, non-string keys), with the default [`Limits`].
///
/// # Errors
/// As [`from_slice`], except [`ErrorKind::Type`].
pub fn from_slice_value(bytes: &[u8]) -> Result<Value, PickleError> {
    de::decode(bytes, &Limits::default())
}

#[cfg(any(test, feature = "testing"))]
/// [`from_slice_value`] with explicit [`Limits`].
///
/// # Errors
/// As [`from_slice_value`].
pub fn from_slice_value_with_limits(bytes: &[u8], limits: &Limits) -> Result<Value, PickleError> {
    de::decode(bytes, limits)
}

#[cfg(test)]
mod tests;
