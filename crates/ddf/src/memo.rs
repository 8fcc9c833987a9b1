//! Memoization: the runtime of [`#[cache_with_invalidation]`](crate::cache_with_invalidation).
//!
//! The attribute is documented on [`crate::cache_with_invalidation`]; this module holds what
//! it expands to (key derivation, single-flight, validation stamps) and the helpers a user may
//! call directly:
//!
//! - [`file_sha256`]: the seed's validation stamp (the SHA-256 of a watched file);
//! - [`function_prefix`] / [`memo_key`]: the key layout, for tools that inspect a cache.
//!
//! ```
//! use std::sync::OnceLock;
//! use ddf::{CacheConfig, CacheManager, cache_with_invalidation};
//!
//! static CACHE: OnceLock<CacheManager> = OnceLock::new();
//!
//! #[cache_with_invalidation(cache = CACHE.get().unwrap(), ttl = 3600, key_prefix = "ports")]
//! fn ports(service: &str, replicas: &[u32]) -> Vec<String> {
//!     replicas.iter().map(|r| format!("{service}-{r}:80")).collect()
//! }
//!
//! let dir = tempfile::tempdir()?;
//! CACHE.set(CacheManager::new(CacheConfig::default().with_pickle_dir(dir.path()))?).unwrap();
//! let cache = CACHE.get().unwrap();
//!
//! assert_eq!(ports("web", &[1, 2]), ["web-1:80", "web-2:80"]); // computed, stored
//! assert_eq!(ports("web", &[1, 2]), ["web-1:80", "web-2:80"]); // from the cache
//! assert_eq!(cache.stats().hits, 1);
//! assert_eq!(ports("web", &[2, 1]), ["web-2:80", "web-1:80"]); // other arguments, other key
//!
//! assert!(ports_cache_key("web", &[1, 2])?.starts_with("ports:"));
//! assert!(ports_forget("web", &[1, 2])?);          // one call
//! assert_eq!(ports_forget_all()?, 1);               // every call of `ports`
//! assert_eq!(cache.invalidate_pattern("ports:")?, 0); // every call under the prefix
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Key layout
//!
//! ```text
//! [<key_prefix>:]<module path>::<function name>:<64 hex digits>
//! ```
//!
//! The hex digits are the SHA-256 of a canonical encoding of a format version, the
//! `key_prefix`, the module path, the function name and every keyed argument's value (through
//! serde, never `Debug` text or addresses). The readable part is there for invalidation:
//! `invalidate_pattern("<key_prefix>:")` forgets every call of every function with that
//! prefix, `invalidate_pattern(function_prefix(..))` (what the generated `<fn>_forget_all`
//! does) every call of one function. Identity lives in the hash, so two keys can only be equal
//! when the prefix, the function and all argument values are.
//!
//! The canonical encoding is ddf's own (below), so keys do not depend on a serde_json feature
//! flag, on Rust's `Debug` output or on the release of the compiler. Maps (`HashMap`,
//! `BTreeMap`, `#[serde(flatten)]` structs) are encoded in sorted order, so a `HashMap`
//! argument gives the same key in every process whatever its iteration order. Sequences keep
//! their order, as they must for `Vec`; serde cannot tell a `HashSet` from a sequence, so a
//! `HashSet` argument may give different keys in different processes: a miss, never a wrong
//! hit. Use `BTreeSet` for stable keys.

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::Path;
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::CacheManager;
use crate::error::{Error, Result};
use crate::key::sha256_hex;
use sha2::{Digest, Sha256};

/// The version of the key derivation; part of every hash, so a future change of the encoding
/// cannot serve entries written under the old one.
const KEY_FORMAT: &str = "ddf-memo/1";

/// The lowercase hex SHA-256 of a file's contents: a validation stamp that changes whenever
/// the file does (the seed's `yaml:hash`).
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("docker-compose.yml");
/// std::fs::write(&path, "abc")?;
/// assert_eq!(
///     ddf::memo::file_sha256(&path)?,
///     "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// The I/O error when the file cannot be read.
pub fn file_sha256(path: impl AsRef<Path>) -> io::Result<String> {
    Ok(sha256_hex(&std::fs::read(path)?))
}

/// The prefix shared by every key of one memoized function:
/// `[<key_prefix>:]<module path>::<name>:`.
///
/// ```
/// assert_eq!(
///     ddf::memo::function_prefix(Some("compose"), "app::files", "services"),
///     "compose:app::files::services:"
/// );
/// assert_eq!(ddf::memo::function_prefix(None, "app", "f"), "app::f:");
/// ```
pub fn function_prefix(key_prefix: Option<&str>, module: &str, name: &str) -> String {
    let mut s = String::with_capacity(
        key_prefix.map_or(0, |p| p.len() + 1) + module.len() + name.len() + 3,
    );
    if let Some(p) = key_prefix {
        s.push_str(p);
        s.push(':');
    }
    s.push_str(module);
    s.push_str("::");
    s.push_str(name);
    s.push(':');
    s
}

/// The key of one call: [`function_prefix`] followed by the SHA-256 of the canonical encoding
/// of the identity and `args` (a tuple of the keyed arguments, in order).
///
/// ```
/// let a = ddf::memo::memo_key(None, "app", "f", &("x", vec![1, 2]))?;
/// let b = ddf::memo::memo_key(None, "app", "f", &("x", vec![2, 1]))?;
/// assert!(a.starts_with("app::f:"));
/// assert_ne!(a, b);
/// # Ok::<(), ddf::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidArgument`] when an argument's `Serialize` implementation fails (a
/// `RefCell` already borrowed, a custom error).
pub fn memo_key<A: Serialize + ?Sized>(
    key_prefix: Option<&str>,
    module: &str,
    name: &str,
    args: &A,
) -> Result<String> {
    let mut c = Canon::new();
    let r = (KEY_FORMAT, key_prefix, module, name)
        .serialize(&mut c)
        .and_then(|()| args.serialize(&mut c));
    finish_key(key_prefix, module, name, c, r)
}

/// [`memo_key`] for arguments given one by one: encodes exactly as `memo_key` does for the
/// tuple of the same values, so the macro's keys and `memo_key`'s agree.
pub(crate) fn memo_key_parts(
    key_prefix: Option<&str>,
    module: &str,
    name: &str,
    parts: &[&dyn KeyPart],
) -> Result<String> {
    let mut w = KeyWriter(Canon::new());
    let r = (KEY_FORMAT, key_prefix, module, name)
        .serialize(&mut w.0)
        .and_then(|()| {
            w.0.tag(b'(');
            parts.iter().try_for_each(|p| p.write_key(&mut w))?;
            w.0.tag(b')');
            Ok(())
        });
    finish_key(key_prefix, module, name, w.0, r)
}

fn finish_key(
    key_prefix: Option<&str>,
    module: &str,
    name: &str,
    c: Canon,
    r: CResult,
) -> Result<String> {
    r.map_err(|e| {
        Error::InvalidArgument(format!(
            "cannot derive the memoization key of {module}::{name}: an argument failed to serialize: {e}"
        ))
    })?;
    let mut key = function_prefix(key_prefix, module, name);
    push_hex(&mut key, &Sha256::digest(&c.out));
    Ok(key)
}

/// Lowercase hex, as [`crate::key::sha256_hex`] writes it, without a formatter call per byte
/// (this is on every memoized call's path).
fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
}

/// Where a [`KeyPart`] writes (opaque).
#[doc(hidden)]
pub struct KeyWriter(Canon);

impl fmt::Debug for KeyWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyWriter")
    }
}

/// One argument of a memoized call, type-erased (object-safe, unlike `Serialize`), so the
/// expansion needs no `Serialize` bound beyond the one on each argument that carries the
/// diagnostic.
#[doc(hidden)]
pub trait KeyPart {
    /// Writes the value's canonical encoding.
    ///
    /// # Errors
    /// When the value's `Serialize` implementation fails.
    #[allow(private_interfaces)]
    fn write_key(&self, w: &mut KeyWriter) -> std::result::Result<(), CanonError>;
}

impl<T: Serialize + ?Sized> KeyPart for T {
    #[allow(private_interfaces)]
    fn write_key(&self, w: &mut KeyWriter) -> std::result::Result<(), CanonError> {
        self.serialize(&mut w.0)
    }
}

// ---------------------------------------------------------------------------------------------
// The canonical encoding.
//
// Hand-written because no crate offers a canonical, order-independent serde encoding that is
// stable by contract: serde_json's map order depends on its `preserve_order` feature (any crate
// in the build may turn it on), cannot key maps by non-strings and writes NaN as `null`.
// Every value is a tag byte followed by a self-delimiting body: strings and names are
// length-prefixed, compound values end with a closing byte that no value starts with. So the
// encoding is prefix-free and two values encode equally only when serde saw the same data.
// Integers of every width share one tag (their value, as i128 or u128), so widening an
// argument from u32 to u64 keeps its keys. Map entries are sorted by their encoded key.
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Canon {
    out: Vec<u8>,
}

/// An argument's `Serialize` implementation reported an error.
#[derive(Debug)]
struct CanonError(String);

impl fmt::Display for CanonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CanonError {}

impl serde::ser::Error for CanonError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        CanonError(msg.to_string())
    }
}

type CResult = std::result::Result<(), CanonError>;

impl Canon {
    /// Room for a typical call's identity and arguments without regrowing.
    fn new() -> Self {
        Canon {
            out: Vec::with_capacity(256),
        }
    }
    fn tag(&mut self, t: u8) {
        self.out.push(t);
    }
    fn bytes(&mut self, b: &[u8]) {
        self.out.extend_from_slice(&(b.len() as u64).to_le_bytes());
        self.out.extend_from_slice(b);
    }
    fn int(&mut self, v: i128) -> CResult {
        self.tag(b'i');
        self.out.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }
}

/// A sequence, tuple or struct in progress: elements are appended in order.
struct Seq<'a> {
    c: &'a mut Canon,
    close: u8,
}

impl Seq<'_> {
    fn elem<T: Serialize + ?Sized>(&mut self, v: &T) -> CResult {
        v.serialize(&mut *self.c)
    }
    fn field<T: Serialize + ?Sized>(&mut self, name: &str, v: &T) -> CResult {
        self.c.bytes(name.as_bytes());
        v.serialize(&mut *self.c)
    }
    fn end(self) -> CResult {
        self.c.tag(self.close);
        Ok(())
    }
}

/// A map in progress. Entries are written in place; `entries` remembers where each key and
/// value start and end, and `end` reorders them by their encoded bytes only when they are not
/// already sorted (a `BTreeMap` is): no allocation per entry on the hot path.
struct Map<'a> {
    c: &'a mut Canon,
    start: usize,
    /// (key start, value start, value end) offsets into `c.out`.
    entries: Vec<(usize, usize, usize)>,
    key_start: Option<usize>,
}

impl<'a> serde::Serializer for &'a mut Canon {
    type Ok = ();
    type Error = CanonError;
    type SerializeSeq = Seq<'a>;
    type SerializeTuple = Seq<'a>;
    type SerializeTupleStruct = Seq<'a>;
    type SerializeTupleVariant = Seq<'a>;
    type SerializeMap = Map<'a>;
    type SerializeStruct = Seq<'a>;
    type SerializeStructVariant = Seq<'a>;

    fn serialize_bool(self, v: bool) -> CResult {
        self.tag(b'b');
        self.tag(u8::from(v));
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> CResult {
        self.int(v.into())
    }
    fn serialize_i16(self, v: i16) -> CResult {
        self.int(v.into())
    }
    fn serialize_i32(self, v: i32) -> CResult {
        self.int(v.into())
    }
    fn serialize_i64(self, v: i64) -> CResult {
        self.int(v.into())
    }
    fn serialize_i128(self, v: i128) -> CResult {
        self.int(v)
    }
    fn serialize_u8(self, v: u8) -> CResult {
        self.int(v.into())
    }
    fn serialize_u16(self, v: u16) -> CResult {
        self.int(v.into())
    }
    fn serialize_u32(self, v: u32) -> CResult {
        self.int(v.into())
    }
    fn serialize_u64(self, v: u64) -> CResult {
        self.int(v.into())
    }
    fn serialize_u128(self, v: u128) -> CResult {
        match i128::try_from(v) {
            Ok(i) => self.int(i),
            Err(_) => {
                self.tag(b'q');
                self.out.extend_from_slice(&v.to_le_bytes());
                Ok(())
            }
        }
    }
    fn serialize_f32(self, v: f32) -> CResult {
        self.serialize_f64(v.into())
    }
    fn serialize_f64(self, v: f64) -> CResult {
        self.tag(b'f');
        // One NaN: payload bits carry no meaning a caller could rely on.
        let bits = if v.is_nan() {
            f64::NAN.to_bits()
        } else {
            v.to_bits()
        };
        self.out.extend_from_slice(&bits.to_le_bytes());
        Ok(())
    }
    fn serialize_char(self, v: char) -> CResult {
        self.tag(b'c');
        self.out.extend_from_slice(&u32::from(v).to_le_bytes());
        Ok(())
    }
    fn serialize_str(self, v: &str) -> CResult {
        self.tag(b'"');
        self.bytes(v.as_bytes());
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> CResult {
        self.tag(b'y');
        self.bytes(v);
        Ok(())
    }
    fn serialize_none(self) -> CResult {
        self.tag(b'n');
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> CResult {
        self.tag(b's');
        value.serialize(self)
    }
    fn serialize_unit(self) -> CResult {
        self.tag(b'u');
        Ok(())
    }
    fn serialize_unit_struct(self, name: &'static str) -> CResult {
        self.tag(b'U');
        self.bytes(name.as_bytes());
        Ok(())
    }
    fn serialize_unit_variant(self, name: &'static str, _i: u32, variant: &'static str) -> CResult {
        self.tag(b'v');
        self.bytes(name.as_bytes());
        self.bytes(variant.as_bytes());
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> CResult {
        self.tag(b'N');
        self.bytes(name.as_bytes());
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        _i: u32,
        variant: &'static str,
        value: &T,
    ) -> CResult {
        self.tag(b'w');
        self.bytes(name.as_bytes());
        self.bytes(variant.as_bytes());
        value.serialize(self)
    }
    fn serialize_seq(self, _len: Option<usize>) -> std::result::Result<Seq<'a>, CanonError> {
        self.tag(b'[');
        Ok(Seq {
            c: self,
            close: b']',
        })
    }
    fn serialize_tuple(self, _len: usize) -> std::result::Result<Seq<'a>, CanonError> {
        self.tag(b'(');
        Ok(Seq {
            c: self,
            close: b')',
        })
    }
    fn serialize_tuple_struct(
        self,
        name: &'static str,
        _len: usize,
    ) -> std::result::Result<Seq<'a>, CanonError> {
        self.tag(b'T');
        self.bytes(name.as_bytes());
        Ok(Seq {
            c: self,
            close: b')',
        })
    }
    fn serialize_tuple_variant(
        self,
        name: &'static str,
        _i: u32,
        variant: &'static str,
        _len: usize,
    ) -> std::result::Result<Seq<'a>, CanonError> {
        self.tag(b'V');
        self.bytes(name.as_bytes());
        self.bytes(variant.as_bytes());
        Ok(Seq {
            c: self,
            close: b')',
        })
    }
    fn serialize_map(self, len: Option<usize>) -> std::result::Result<Map<'a>, CanonError> {
        self.tag(b'{');
        let start = self.out.len();
        Ok(Map {
            c: self,
            start,
            entries: Vec::with_capacity(len.unwrap_or(0)),
            key_start: None,
        })
    }
    fn serialize_struct(
        self,
        name: &'static str,
        _len: usize,
    ) -> std::result::Result<Seq<'a>, CanonError> {
        self.tag(b'S');
        self.bytes(name.as_bytes());
        Ok(Seq {
            c: self,
            close: b'}',
        })
    }
    fn serialize_struct_variant(
        self,
        name: &'static str,
        _i: u32,
        variant: &'static str,
        _len: usize,
    ) -> std::result::Result<Seq<'a>, CanonError> {
        self.tag(b'W');
        self.bytes(name.as_bytes());
        self.bytes(variant.as_bytes());
        Ok(Seq {
            c: self,
            close: b'}',
        })
    }
}

impl serde::ser::SerializeSeq for Seq<'_> {
    type Ok = ();
    type Error = CanonError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> CResult {
        self.elem(v)
    }
    fn end(self) -> CResult {
        Seq::end(self)
    }
}

impl serde::ser::SerializeTuple for Seq<'_> {
    type Ok = ();
    type Error = CanonError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> CResult {
        self.elem(v)
    }
    fn end(self) -> CResult {
        Seq::end(self)
    }
}

impl serde::ser::SerializeTupleStruct for Seq<'_> {
    type Ok = ();
    type Error = CanonError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> CResult {
        self.elem(v)
    }
    fn end(self) -> CResult {
        Seq::end(self)
    }
}

impl serde::ser::SerializeTupleVariant for Seq<'_> {
    type Ok = ();
    type Error = CanonError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> CResult {
        self.elem(v)
    }
    fn end(self) -> CResult {
        Seq::end(self)
    }
}

impl serde::ser::SerializeStruct for Seq<'_> {
    type Ok = ();
    type Error = CanonError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, name: &'static str, v: &T) -> CResult {
        self.field(name, v)
    }
    fn end(self) -> CResult {
        Seq::end(self)
    }
}

impl serde::ser::SerializeStructVariant for Seq<'_> {
    type Ok = ();
    type Error = CanonError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, name: &'static str, v: &T) -> CResult {
        self.field(name, v)
    }
    fn end(self) -> CResult {
        Seq::end(self)
    }
}

impl serde::ser::SerializeMap for Map<'_> {
    type Ok = ();
    type Error = CanonError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> CResult {
        self.key_start = Some(self.c.out.len());
        key.serialize(&mut *self.c)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> CResult {
        let ks = self
            .key_start
            .take()
            .ok_or_else(|| CanonError("a map value came without its key".to_owned()))?;
        let vs = self.c.out.len();
        value.serialize(&mut *self.c)?;
        self.entries.push((ks, vs, self.c.out.len()));
        Ok(())
    }
    fn end(self) -> CResult {
        let out = &mut self.c.out;
        let entry = |buf: &[u8], &(ks, vs, ve): &(usize, usize, usize)| -> (Vec<u8>, Vec<u8>) {
            (buf[ks..vs].to_vec(), buf[vs..ve].to_vec())
        };
        let in_order = |buf: &[u8], a: &(usize, usize, usize), b: &(usize, usize, usize)| {
            (&buf[a.0..a.1], &buf[a.1..a.2]) <= (&buf[b.0..b.1], &buf[b.1..b.2])
        };
        let sorted = self.entries.windows(2).all(|w| in_order(out, &w[0], &w[1]));
        if !sorted {
            let mut pairs: Vec<(Vec<u8>, Vec<u8>)> =
                self.entries.iter().map(|e| entry(out, e)).collect();
            pairs.sort_unstable();
            out.truncate(self.start);
            for (k, v) in &pairs {
                out.extend_from_slice(k);
                out.extend_from_slice(v);
            }
        }
        out.push(b'}');
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The runtime the attribute expands to.
// ---------------------------------------------------------------------------------------------

/// What a memoized function is: its identity and its cache settings.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct MemoFn {
    pub module: &'static str,
    pub name: &'static str,
    pub key_prefix: Option<&'static str>,
    pub ttl: Option<Duration>,
}

impl MemoFn {
    pub(crate) fn prefix(&self) -> String {
        function_prefix(self.key_prefix, self.module, self.name)
    }
}

/// A validation stamp as the attribute sees it.
#[doc(hidden)]
#[derive(Debug)]
pub enum Stamp {
    /// No `validation` option.
    Unused,
    /// The current stamp.
    Is(String),
    /// The stamp could not be computed: call the function, do not cache.
    Unavailable,
}

/// What a `validation` expression may return: a string (`String`, `&str`), an `Option` of
/// one (`None`: no stamp now, the call is not cached), or a `Result` of one (`Err`: logged,
/// the call is not cached).
pub trait IntoStamp {
    /// The stamp, or `None` when there is none now.
    fn into_stamp(self) -> Option<String>;
}

impl IntoStamp for String {
    fn into_stamp(self) -> Option<String> {
        Some(self)
    }
}

impl IntoStamp for &str {
    fn into_stamp(self) -> Option<String> {
        Some(self.to_owned())
    }
}

impl IntoStamp for &String {
    fn into_stamp(self) -> Option<String> {
        Some(self.clone())
    }
}

impl<S: IntoStamp> IntoStamp for Option<S> {
    fn into_stamp(self) -> Option<String> {
        self.and_then(IntoStamp::into_stamp)
    }
}

impl<S: IntoStamp, E: fmt::Display> IntoStamp for std::result::Result<S, E> {
    fn into_stamp(self) -> Option<String> {
        match self {
            Ok(s) => s.into_stamp(),
            Err(e) => {
                tracing::warn!(error = %e, "ddf: the validation stamp cannot be computed; calling the function uncached");
                None
            }
        }
    }
}

#[doc(hidden)]
pub fn stamp<S: IntoStamp>(s: S) -> Stamp {
    match s.into_stamp() {
        Some(s) => Stamp::Is(s),
        None => Stamp::Unavailable,
    }
}

/// Whether memoization is worth anything with this cache (when not, the expansion derives no
/// key and computes no stamp).
#[doc(hidden)]
pub fn active(cache: &CacheManager) -> bool {
    cache.config().enabled && cache.backend_name() != "none"
}

/// Reads a stored result. Errors fail open: logged, read as a miss.
fn lookup<S: DeserializeOwned>(cache: &CacheManager, key: &str, stamp: &Stamp) -> Option<S> {
    let r = match stamp {
        Stamp::Is(current) => cache
            .get::<(String, S)>(key)
            .map(|hit| hit.and_then(|(s, v)| (s == *current).then_some(v))),
        _ => cache.get::<S>(key),
    };
    r.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "ddf: memoized read failed; calling the function");
        None
    })
}

/// Stores a result. Errors fail open: logged.
fn store<S: Serialize>(cache: &CacheManager, f: &MemoFn, key: &str, stamp: &Stamp, value: &S) {
    let r = match stamp {
        Stamp::Is(current) => cache.set(key, &(current, value), f.ttl),
        _ => cache.set(key, value, f.ttl),
    };
    if let Err(e) = r {
        tracing::warn!(error = %e, "ddf: memoized write failed; the result is not cached");
    }
}

/// Marker types select the policy; the expansion names one of them.
#[doc(hidden)]
pub trait Policy<R> {
    type Stored: Serialize + DeserializeOwned;
    fn stored(r: &R) -> Option<&Self::Stored>;
    fn restore(s: Self::Stored) -> R;
}

/// Plain values, and `Option<T>` with `cache_none`: everything is stored.
#[doc(hidden)]
#[derive(Debug)]
pub enum PolicyWhole {}
/// `Option<T>`: `Some` is stored, `None` is not.
#[doc(hidden)]
#[derive(Debug)]
pub enum PolicySome {}
/// `Result<T, E>`: `Ok` is stored, `Err` is not.
#[doc(hidden)]
#[derive(Debug)]
pub enum PolicyOk {}

impl<R: Serialize + DeserializeOwned> Policy<R> for PolicyWhole {
    type Stored = R;
    fn stored(r: &R) -> Option<&R> {
        Some(r)
    }
    fn restore(s: R) -> R {
        s
    }
}

impl<T: Serialize + DeserializeOwned> Policy<Option<T>> for PolicySome {
    type Stored = T;
    fn stored(r: &Option<T>) -> Option<&T> {
        r.as_ref()
    }
    fn restore(s: T) -> Option<T> {
        Some(s)
    }
}

impl<T: Serialize + DeserializeOwned, E> Policy<std::result::Result<T, E>> for PolicyOk {
    type Stored = T;
    fn stored(r: &std::result::Result<T, E>) -> Option<&T> {
        r.as_ref().ok()
    }
    fn restore(s: T) -> std::result::Result<T, E> {
        Ok(s)
    }
}

/// The memoized call: look up, else compute once per key in this process, store, return.
#[doc(hidden)]
pub fn memoize<P, R, F>(
    cache: &CacheManager,
    f: &MemoFn,
    key: Option<Result<String>>,
    stamp: Stamp,
    compute: F,
) -> R
where
    P: Policy<R>,
    F: FnOnce() -> R,
{
    let Some(key) = key else {
        return compute(); // an inactive cache
    };
    if matches!(stamp, Stamp::Unavailable) {
        return compute();
    }
    let key = match key {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(error = %e, "ddf: calling the function uncached");
            return compute();
        }
    };
    if let Some(v) = lookup::<P::Stored>(cache, &key, &stamp) {
        return P::restore(v);
    }
    let compute_and_store = |compute: F| {
        let r = compute();
        if let Some(s) = P::stored(&r) {
            store(cache, f, &key, &stamp, s);
        }
        r
    };
    // Callers of two caches (another directory, namespace or server) never wait for each other.
    let flight_key = format!("{:?}\0{key}", cache.config());
    match join(&flight_key) {
        Role::Bypass => compute_and_store(compute),
        Role::Followed | Role::Leader(_) => {
            // Leader: another caller may have stored the value between our miss and our
            // election. Follower: the leader has finished; its result is there unless it was
            // not cacheable (an Err, a None) or it panicked, and then we compute ourselves.
            // The leader's guard lives until the value is stored (end of this arm).
            if let Some(v) = lookup::<P::Stored>(cache, &key, &stamp) {
                return P::restore(v);
            }
            compute_and_store(compute)
        }
    }
}

/// Removes the stored result of one call.
#[doc(hidden)]
pub fn forget(cache: &CacheManager, key: Result<String>) -> Result<bool> {
    cache.delete(&key?)
}

/// Removes the stored results of every call of one function.
#[doc(hidden)]
pub fn forget_all(cache: &CacheManager, f: &MemoFn) -> Result<u64> {
    cache.invalidate_pattern(&f.prefix())
}

/// Whether a mutating function's call succeeded (`Ok` for `Result`, always otherwise).
#[doc(hidden)]
pub trait Succeeded {
    fn succeeded(&self) -> bool;
}

#[doc(hidden)]
#[derive(Debug)]
pub struct Always<'a, R>(pub &'a R);
#[doc(hidden)]
#[derive(Debug)]
pub struct IfOk<'a, R>(pub &'a R);

impl<R> Succeeded for Always<'_, R> {
    fn succeeded(&self) -> bool {
        true
    }
}

impl<T, E> Succeeded for IfOk<'_, std::result::Result<T, E>> {
    fn succeeded(&self) -> bool {
        self.0.is_ok()
    }
}

/// `invalidate_on`: after a successful call, removes every key under each prefix.
/// Errors fail open: logged (the call's own result is returned either way).
#[doc(hidden)]
pub fn invalidate_after(cache: &CacheManager, ok: bool, prefixes: &[String]) {
    if !ok {
        return;
    }
    for p in prefixes {
        match cache.invalidate_pattern(p) {
            Ok(n) => tracing::debug!(prefix = %p, removed = n, "ddf: invalidate_on"),
            Err(e) => {
                tracing::warn!(prefix = %p, error = %e, "ddf: invalidate_on failed; stale entries may be served")
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Single-flight: concurrent callers missing the same key in this process compute once.
//
// A map from key to the flight in progress. The first caller inserts a flight and is the
// leader; the others wait on the flight's condition variable. The leader's guard ends the
// flight in `Drop`, so a panicking function (unwinding) wakes its followers instead of leaving
// them blocked; they then find no value and compute themselves.
//
// No deadlock: a thread that leads a flight never waits for another one (a nested memoized call
// that finds its key in flight computes directly). Waiting threads hold no flight, so no thread
// waits for a thread that waits: no cycle, whether a function calls itself with the same
// arguments or two functions call each other from two threads. Poisoned locks are recovered:
// the data they guard (a map, a flag) is valid at every point a panic can occur.
// ---------------------------------------------------------------------------------------------

struct Flight {
    done: Mutex<bool>,
    cv: Condvar,
}

static FLIGHTS: LazyLock<Mutex<HashMap<String, Arc<Flight>>>> = LazyLock::new(Default::default);

thread_local! {
    /// How many flights this thread leads.
    static LEADING: Cell<usize> = const { Cell::new(0) };
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

enum Role {
    Leader(#[allow(dead_code)] LeaderGuard),
    Followed,
    /// The key is in flight, and this thread leads another flight: compute, do not wait.
    Bypass,
}

struct LeaderGuard {
    key: String,
    flight: Arc<Flight>,
}

impl Drop for LeaderGuard {
    fn drop(&mut self) {
        LEADING.with(|n| n.set(n.get().saturating_sub(1)));
        {
            let mut map = lock(&FLIGHTS);
            if map
                .get(&self.key)
                .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
            {
                map.remove(&self.key);
            }
        }
        *lock(&self.flight.done) = true;
        self.flight.cv.notify_all();
    }
}

fn join(key: &str) -> Role {
    let mut map = lock(&FLIGHTS);
    if let Some(flight) = map.get(key).cloned() {
        drop(map);
        if LEADING.with(Cell::get) > 0 {
            return Role::Bypass;
        }
        let mut done = lock(&flight.done);
        while !*done {
            done = flight.cv.wait(done).unwrap_or_else(PoisonError::into_inner);
        }
        return Role::Followed;
    }
    let flight = Arc::new(Flight {
        done: Mutex::new(false),
        cv: Condvar::new(),
    });
    map.insert(key.to_owned(), Arc::clone(&flight));
    drop(map);
    LEADING.with(|n| n.set(n.get() + 1));
    Role::Leader(LeaderGuard {
        key: key.to_owned(),
        flight,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap};

    fn enc<T: Serialize + ?Sized>(v: &T) -> Vec<u8> {
        let mut c = Canon::new();
        v.serialize(&mut c).unwrap();
        c.out
    }

    #[test]
    fn maps_are_order_independent() {
        let a: HashMap<String, u32> = (0..50).map(|i| (format!("k{i}"), i)).collect();
        let mut b: HashMap<String, u32> = HashMap::new();
        for i in (0..50).rev() {
            b.insert(format!("k{i}"), i);
        }
        let c: BTreeMap<String, u32> = a.clone().into_iter().collect();
        assert_eq!(enc(&a), enc(&b));
        assert_eq!(enc(&a), enc(&c));
    }

    #[test]
    fn distinct_values_encode_differently() {
        let vals: Vec<Vec<u8>> = vec![
            enc(&("a", "bc")),
            enc(&("ab", "c")),
            enc(&vec!["a", "b"]),
            enc(&vec!["ab"]),
            enc(&Vec::<String>::new()),
            enc(&Some("")),
            enc(&None::<String>),
            enc(""),
            enc(&0u8),
            enc(&0.0f64),
            enc(&-0.0f64),
            enc(&false),
            enc(&()),
            enc(&(1u8,)),
            enc(&vec![vec![1u8], vec![]]),
            enc(&vec![vec![], vec![1u8]]),
        ];
        for (i, a) in vals.iter().enumerate() {
            for (j, b) in vals.iter().enumerate() {
                assert_eq!(i == j, a == b, "{i} vs {j}");
            }
        }
    }

    proptest::proptest! {
        /// Equal encodings only for equal values, whatever the nesting.
        #[test]
        fn encoding_is_injective(
            a in proptest::collection::vec(proptest::collection::btree_map(".{0,3}", proptest::option::of(0u8..3), 0..3), 0..3),
            b in proptest::collection::vec(proptest::collection::btree_map(".{0,3}", proptest::option::of(0u8..3), 0..3), 0..3),
        ) {
            proptest::prop_assert_eq!(enc(&a) == enc(&b), a == b);
        }

        /// A HashMap encodes as the BTreeMap of the same entries.
        #[test]
        fn hash_maps_encode_sorted(m in proptest::collection::hash_map(".{0,4}", 0u32..9, 0..8)) {
            let sorted: BTreeMap<_, _> = m.clone().into_iter().collect();
            proptest::prop_assert_eq!(enc(&m), enc(&sorted));
        }
    }

    #[test]
    fn map_layout_is_sorted_entries_in_braces() {
        let m: HashMap<&str, u32> = [("b", 1), ("a", 2), ("c", 0)].into();
        let mut want = vec![b'{'];
        for (k, v) in [("a", 2u32), ("b", 1), ("c", 0)] {
            want.extend(enc(k));
            want.extend(enc(&v));
        }
        want.push(b'}');
        assert_eq!(enc(&m), want);
        // Nested maps in keys and values are sorted too.
        let nested: HashMap<u8, HashMap<&str, u8>> =
            [(2, [("y", 1), ("x", 2)].into()), (1, HashMap::new())].into();
        let sorted: BTreeMap<u8, BTreeMap<&str, u8>> =
            [(2, [("y", 1), ("x", 2)].into()), (1, BTreeMap::new())].into();
        assert_eq!(enc(&nested), enc(&sorted));
    }

    #[test]
    fn integer_widths_share_keys() {
        assert_eq!(enc(&7u8), enc(&7i64));
        assert_eq!(enc(&u128::MAX), enc(&u128::MAX));
        assert_ne!(enc(&u128::MAX), enc(&-1i128));
    }

    /// The key derivation is frozen: a change here orphans every stored memo entry, so it must
    /// come with a new KEY_FORMAT. (The hash below is a golden recorded from this code; the
    /// bytes test pins the encoding it hashes.)
    #[test]
    fn encoding_bytes_are_pinned() {
        let mut want = vec![b'(', b'i'];
        want.extend_from_slice(&1i128.to_le_bytes());
        want.push(b'"');
        want.extend_from_slice(&1u64.to_le_bytes());
        want.push(b'x');
        want.push(b')');
        assert_eq!(enc(&(1u32, "x")), want);
    }

    #[test]
    fn keys_are_stable() {
        let k = memo_key(Some("p"), "m", "f", &(1u32, "x", vec![1.5f64])).unwrap();
        assert_eq!(
            k,
            "p:m::f:361c40a0ecdca2e108ef92d5703dd876c4ab831d59dc115d92ee6057e340510f"
        );
    }

    #[test]
    fn hex_matches_sha256_hex() {
        let mut s = String::new();
        push_hex(&mut s, &Sha256::digest(b"abc"));
        assert_eq!(s, sha256_hex(b"abc"));
    }

    #[test]
    fn identity_is_in_the_hash() {
        // A key_prefix that imitates a module path cannot make two functions share keys.
        let a = memo_key(Some("m:"), "x", "f", &()).unwrap();
        let b = memo_key(None, "m::x", "f", &()).unwrap();
        assert_ne!(a, b);
    }
}
