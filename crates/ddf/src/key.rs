//! The one place that turns a user's key into a backend's key.
//!
//! - [`Keyspace`] joins the namespace and the key (every backend stores `namespace + key`).
//! - [`prefix_range`]: the byte range of the keys under a prefix (the file backend's range
//!   delete).
//! - [`glob_escape`]: Redis `SCAN MATCH` patterns that match a prefix literally.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

/// A namespace; joins keys into storage keys.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Keyspace {
    namespace: String,
}

impl Keyspace {
    /// A keyspace for a namespace (may be empty).
    pub fn new(namespace: impl Into<String>) -> Self {
        Keyspace {
            namespace: namespace.into(),
        }
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `namespace + key`.
    pub fn storage_key(&self, key: &str) -> String {
        let mut s = String::with_capacity(self.namespace.len() + key.len());
        s.push_str(&self.namespace);
        s.push_str(key);
        s
    }

    /// The user key of a storage key of this namespace.
    pub fn user_key<'a>(&self, storage_key: &'a str) -> Option<&'a str> {
        storage_key.strip_prefix(self.namespace.as_str())
    }
}

/// The byte range `[lo, hi)` of the keys that start with `prefix` in byte order: `hi` is the
/// prefix with its last byte incremented (trailing `0xFF` bytes dropped first); `None` when no
/// upper bound exists (an empty prefix, or all `0xFF`).
///
/// ```
/// assert_eq!(ddf::key::prefix_range(b"ab"), (b"ab".to_vec(), Some(b"ac".to_vec())));
/// assert_eq!(ddf::key::prefix_range(b""), (vec![], None));
/// ```
pub fn prefix_range(prefix: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    let mut hi = prefix.to_vec();
    while let Some(last) = hi.pop() {
        if last < 0xFF {
            hi.push(last + 1);
            return (prefix.to_vec(), Some(hi));
        }
    }
    (prefix.to_vec(), None)
}

/// Escapes Redis glob characters (`* ? [ ] \`) so that a `SCAN MATCH` pattern matches `s`
/// literally; append `*` for a prefix match.
pub fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Lowercase hex SHA-256 of bytes (sha2 0.11 digests do not format with `{:x}`).
pub fn sha256_hex(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let mut s = String::with_capacity(64);
    for b in digest.iter() {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn prefix_ranges() {
        assert_eq!(
            prefix_range(b"a\xff"),
            (b"a\xff".to_vec(), Some(b"b".to_vec()))
        );
        assert_eq!(prefix_range(b"\xff\xff"), (b"\xff\xff".to_vec(), None));
    }

    #[test]
    fn glob_escaping() {
        assert_eq!(glob_escape(r"svc[1]:*?\"), r"svc\[1\]:\*\?\\");
    }

    #[test]
    fn sha256_hex_is_lowercase_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    proptest! {
        #[test]
        fn prefix_range_holds_exactly_the_keys_with_the_prefix(
            key in proptest::collection::vec(any::<u8>(), 0..6),
            prefix in proptest::collection::vec(any::<u8>(), 0..4),
        ) {
            let (lo, hi) = prefix_range(&prefix);
            let inside = key >= lo && hi.as_ref().is_none_or(|h| &key < h);
            prop_assert_eq!(inside, key.starts_with(&prefix));
        }
    }
}
