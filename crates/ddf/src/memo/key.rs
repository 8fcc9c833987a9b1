//! The key of a memoized call: `[<key_prefix>:]<module path>::<name>:<64 hex digits>`, the
//! digits being the SHA-256 of the [canonical encoding](super::canonical) of a format version,
//! the function's identity and its keyed arguments. The layout is described in [`super`].

use std::fmt;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::canonical::{CResult, Canon, CanonError};
use crate::error::{Error, Result};

/// The version of the key derivation; part of every hash, so a future change of the encoding
/// cannot serve entries written under the old one.
const KEY_FORMAT: &str = "ddf-memo/1";

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::sha256_hex;

    #[test]
    fn keys_are_stable() {
        let k = memo_key(Some("p"), "m", "f", &(1u32, "x", vec![1.5f64])).unwrap();
        assert_eq!(
            k,
            "p:m::f:361c40a0ecdca2e108ef92d5703dd876c4ab831d59dc115d92ee6057e340510f"
        );
    }

    #[test]
    fn argument_parts_key_as_their_tuple() {
        let parts: [&dyn KeyPart; 3] = [&1u32, &"x", &vec![1.5f64]];
        let k = memo_key_parts(Some("p"), "m", "f", &parts).unwrap();
        assert_eq!(
            k,
            memo_key(Some("p"), "m", "f", &(1u32, "x", vec![1.5f64])).unwrap()
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
