//! The one place that turns a user's key into a backend's key.
//!
//! - [`Keyspace`] joins the namespace and the key (every backend stores `namespace + key`).
//! - [`prefix_range`]: the byte range of the keys under a prefix (the file backend's range
//!   delete).
//! - [`glob_escape`]: Redis `SCAN MATCH` patterns that match a prefix literally.
//! - [`memcached_key`] / [`MemcachedPrefix`]: memcached's wire keys. A storage key memcached can
//!   carry (1-250 bytes of printable ASCII, no space) is sent as it is, so pymemcache finds it under
//!   the same key. Any other key (over 250 bytes, whitespace, control characters, non-ASCII, empty)
//!   becomes `<visible>~<32 hex>`: `<visible>` is the key with every byte outside `!`..`~` and
//!   every `%` written `%XX`, cut to at most 217 bytes on a `%XX` boundary, and the hex is the
//!   first 128 bits of SHA-256 of the whole key. The form has no space or control character, so no
//!   key can inject a protocol command, and it keeps prefixes: prefix invalidation decides from the
//!   wire key alone except for cut keys (the backend stores the whole key with those and checks).
//!   A pymemcache client given the same raw key would not find a mapped key (pymemcache refuses
//!   such keys anyway).

use std::borrow::Cow;
use std::fmt::Write as _;

use sha2::{Digest, Sha256};

/// Where `get_or_set`'s leases live: `<namespace>ddf-lease:<key>` (the lease of `<key>`).
/// `invalidate_pattern("")` and `flush_all` remove them too (a computation in progress then
/// finishes and writes, and the others may compute once more); `keys("")` lists them. Known
/// here, below the backends, so that a router over several servers places a lease with the key
/// it guards (`backend/resilience/scopes.rs`).
pub(crate) const LEASE_PREFIX: &str = "ddf-lease:";

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
}

/// The byte range `[lo, hi)` of the keys that start with `prefix` in byte order: `hi` is the
/// prefix with its last byte incremented (trailing `0xFF` bytes dropped first); `None` when no
/// upper bound exists (an empty prefix, or all `0xFF`).
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

/// The largest index `<= at` that does not split a `%XX` triple.
fn codeword_boundary(enc: &str, at: usize) -> usize {
    let b = enc.as_bytes();
    let mut cut = at.min(b.len());
    // A triple starting at cut-1 or cut-2 would be split.
    for back in 1..=2 {
        if cut >= back && b[cut - back] == b'%' {
            cut -= back;
            break;
        }
    }
    cut
}

/// How a stored (wire) key relates to a prefix of storage keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefixMatch {
    /// Its storage key does not start with the prefix.
    No,
    /// Its storage key starts with the prefix (decided from the wire key alone).
    Yes,
    /// The wire key alone cannot tell (a mapped key cut before the prefix ends): read the whole
    /// key stored with the value to decide.
    Maybe,
}

/// The longest key memcached accepts, in bytes.
pub const MEMCACHED_KEY_MAX: usize = 250;

/// Hex digits of the hash at the end of a mapped memcached key.
const MC_HASH_HEX: usize = 32;

/// The longest visible part of a mapped memcached key (`250 - "~" - 32 hex`).
const MC_VISIBLE_MAX: usize = MEMCACHED_KEY_MAX - 1 - MC_HASH_HEX;

/// A byte memcached can carry in a key and that the mapping keeps as it is.
fn mc_plain(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) && b != b'%'
}

/// Whether memcached can carry `storage_key` as it is: 1-250 bytes, printable ASCII, no space.
pub fn memcached_key_is_carryable(storage_key: &str) -> bool {
    !storage_key.is_empty()
        && storage_key.len() <= MEMCACHED_KEY_MAX
        && storage_key.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// Percent-encodes every byte outside `!`..`~` and every `%` (a prefix-preserving code).
fn mc_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    for b in s.bytes() {
        if mc_plain(b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The memcached wire key of a storage key (`namespace + key`); see the module docs.
pub fn memcached_key(storage_key: &str) -> Cow<'_, str> {
    // A carryable key that already has the mapped shape is mapped too: sent as it is, it could
    // alias (and overwrite or delete) another key's mapped form.
    if memcached_key_is_carryable(storage_key)
        && mc_mapped_visible(storage_key.as_bytes()).is_none()
    {
        return Cow::Borrowed(storage_key);
    }
    let mut visible = mc_encode(storage_key);
    if visible.len() > MC_VISIBLE_MAX {
        let cut = codeword_boundary(&visible, MC_VISIBLE_MAX);
        visible.truncate(cut);
    }
    visible.push('~');
    let digest = Sha256::digest(storage_key.as_bytes());
    for b in &digest[..MC_HASH_HEX / 2] {
        let _ = write!(visible, "{b:02x}");
    }
    Cow::Owned(visible)
}

/// The visible part of a wire key that has the mapped shape (`<visible>~<32 lowercase hex>`).
fn mc_mapped_visible(wire: &[u8]) -> Option<&[u8]> {
    let n = wire.len();
    if n < MC_HASH_HEX + 1 || wire[n - MC_HASH_HEX - 1] != b'~' {
        return None;
    }
    let hex = &wire[n - MC_HASH_HEX..];
    hex.iter()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        .then_some(&wire[..n - MC_HASH_HEX - 1])
}

/// A prefix of storage keys, for matching memcached wire keys (from `lru_crawler metadump`).
#[derive(Debug, Clone)]
pub struct MemcachedPrefix {
    raw: String,
    encoded: String,
}

impl MemcachedPrefix {
    /// The prefix of storage keys (`namespace + prefix`).
    pub fn new(storage_prefix: &str) -> Self {
        MemcachedPrefix {
            raw: storage_prefix.to_owned(),
            encoded: mc_encode(storage_prefix),
        }
    }

    /// Whether the wire key `wire` belongs to a storage key that starts with this prefix.
    /// [`PrefixMatch::Maybe`] when the wire key alone cannot tell: a mapped key cut before the
    /// prefix ends, or a key that has the mapped shape but was written as it is by someone
    /// else; the caller then reads the whole key stored with the value.
    pub fn matches(&self, wire: &[u8]) -> PrefixMatch {
        let raw = wire.starts_with(self.raw.as_bytes());
        let Some(visible) = mc_mapped_visible(wire) else {
            return if raw {
                PrefixMatch::Yes
            } else {
                PrefixMatch::No
            };
        };
        let enc = self.encoded.as_bytes();
        let mapped = if visible.starts_with(enc) {
            PrefixMatch::Yes
        } else if enc.starts_with(visible) && visible.len() + 2 >= MC_VISIBLE_MAX {
            PrefixMatch::Maybe
        } else {
            PrefixMatch::No
        };
        match (mapped, raw) {
            (PrefixMatch::Yes, true) => PrefixMatch::Yes,
            (PrefixMatch::No, false) => PrefixMatch::No,
            _ => PrefixMatch::Maybe,
        }
    }
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

    #[test]
    fn prefix_range_examples() {
        assert_eq!(prefix_range(b"ab"), (b"ab".to_vec(), Some(b"ac".to_vec())));
        assert_eq!(prefix_range(b""), (vec![], None));
    }

    #[test]
    fn memcached_keys_are_carryable() {
        assert_eq!(memcached_key("ddf:svc:web"), "ddf:svc:web");
        let k = memcached_key("ddf:x\r\nflush_all");
        assert!(k.starts_with("ddf:x%0D%0Aflush_all~"), "{k}");
        assert!(k.bytes().all(|b| b.is_ascii_graphic()));
        assert!(memcached_key(&"k".repeat(10_000)).len() <= 250);
    }
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

    #[test]
    fn memcached_keys() {
        assert_eq!(memcached_key("a"), "a");
        let k250 = "k".repeat(250);
        assert_eq!(memcached_key(&k250), k250.as_str());
        for odd in [
            "",
            " ",
            "a b",
            "x\r\nflush_all",
            "café",
            "tab\there",
            "\u{7f}",
            &"k".repeat(251),
            &"é".repeat(5000),
        ] {
            let m = memcached_key(odd);
            assert!(m.len() <= MEMCACHED_KEY_MAX, "{odd:?}");
            assert!(m.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{m}");
            assert!(mc_mapped_visible(m.as_bytes()).is_some(), "{m}");
        }
        assert_ne!(
            memcached_key(&"k".repeat(300)),
            memcached_key(&"k".repeat(301))
        );
    }

    #[test]
    fn a_key_in_the_mapped_shape_cannot_alias_a_mapped_key() {
        let mapped = memcached_key("ns:a b").into_owned();
        assert_ne!(memcached_key(&mapped), mapped.as_str());
        assert_ne!(memcached_key(&mapped), memcached_key("ns:a b"));
    }

    #[test]
    fn memcached_prefixes() {
        let p = MemcachedPrefix::new("ns:svc[1]:");
        let m = |k: &str| p.matches(memcached_key(k).as_bytes());
        assert_eq!(m("ns:svc[1]:a"), PrefixMatch::Yes);
        assert_eq!(m("ns:svc[1]:a b"), PrefixMatch::Yes);
        assert_eq!(m("ns:svc1:a"), PrefixMatch::No);
        assert_eq!(m("ns:svc1:a b"), PrefixMatch::No);
        assert_eq!(
            m(&format!("ns:svc[1]:{}", "x".repeat(400))),
            PrefixMatch::Yes
        );
        // A prefix with a `%` does not match a mapped key through its encoding.
        let p = MemcachedPrefix::new("a%20");
        assert_eq!(
            p.matches(memcached_key("a b").as_bytes()),
            PrefixMatch::Maybe
        );
        // Cut keys are decided by the whole key.
        let long = "y".repeat(300);
        let p = MemcachedPrefix::new(&long);
        assert_eq!(
            p.matches(memcached_key(&"y".repeat(400)).as_bytes()),
            PrefixMatch::Maybe
        );
        assert_eq!(p.matches(memcached_key("y z").as_bytes()), PrefixMatch::No);
    }

    proptest! {
        #[test]
        fn memcached_prefix_relation(key in "[a-c :é%~]{0,300}", cut in 0usize..300) {
            let mut cut = cut.min(key.len());
            while !key.is_char_boundary(cut) { cut -= 1; }
            let m = MemcachedPrefix::new(&key[..cut]).matches(memcached_key(&key).as_bytes());
            prop_assert_ne!(m, PrefixMatch::No);
        }

        #[test]
        fn memcached_non_prefixes(key in "[a-c :é%]{0,20}", prefix in "[a-c :é%]{1,5}") {
            let m = MemcachedPrefix::new(&prefix).matches(memcached_key(&key).as_bytes());
            if !key.starts_with(&prefix) {
                prop_assert_ne!(m, PrefixMatch::Yes);
            }
        }

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
