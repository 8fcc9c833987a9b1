//! The one place that turns a user's key into a backend's key.
//!
//! - [`Keyspace`] joins the namespace and the key (every backend stores `namespace + key`).
//! - [`file_name`] / [`FilePrefix`]: the file backend's names. Keys are percent-encoded (only
//!   `A-Z a-z 0-9 - _` stay as they are), so no key can produce `/`, `..`, a leading `.`, a NUL or
//!   an absolute path, and the encoding of a prefix is a prefix of the encoding of every key that
//!   starts with it: prefix invalidation matches names from a directory listing without opening
//!   files. Encodings longer than [`FILE_STEM_MAX`] are cut (on a `%XX` boundary) and followed by
//!   `~` and 128 bits of SHA-256 of the whole key, which keeps names under 255 bytes; the entry
//!   stores the whole key, and reads compare it.
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

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
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

/// The characters kept as they are in file names: ASCII letters, digits, `-` and `_`.
const FILE_KEEP: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_');

/// Entry files end with this.
pub const FILE_SUFFIX: &str = ".ddf";

/// The longest encoded key kept whole in a file name; longer ones are cut and hashed.
pub const FILE_STEM_MAX: usize = 200;

/// Where a long name's visible part ends.
const FILE_CUT: usize = 160;

/// The mark between a long name's visible part and its hash.
const HASH_MARK: char = '~';

fn encode(s: &str) -> String {
    utf8_percent_encode(s, FILE_KEEP).to_string()
}

/// The file name of a storage key (`namespace + key`).
///
/// ```
/// assert_eq!(ddf::key::file_name("ddf:a/../b"), "ddf%3Aa%2F%2E%2E%2Fb.ddf");
/// assert_eq!(ddf::key::file_name(""), ".ddf");
/// ```
pub fn file_name(storage_key: &str) -> String {
    let mut stem = encode(storage_key);
    if stem.len() > FILE_STEM_MAX {
        let cut = codeword_boundary(&stem, FILE_CUT);
        stem.truncate(cut);
        stem.push(HASH_MARK);
        let digest = Sha256::digest(storage_key.as_bytes());
        for b in &digest[..16] {
            // Writing to a String cannot fail.
            let _ = write!(stem, "{b:02x}");
        }
    }
    stem.push_str(FILE_SUFFIX);
    stem
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

/// How a directory entry relates to a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefixMatch {
    /// Not an entry of ours, or its key does not start with the prefix.
    No,
    /// Its key starts with the prefix (decided from the name alone).
    Yes,
    /// A long, hashed name whose visible part is shorter than the prefix: read the key stored in
    /// the file to decide.
    Maybe,
}

/// A prefix of storage keys, encoded for matching file names.
#[derive(Debug, Clone)]
pub struct FilePrefix {
    encoded: String,
}

impl FilePrefix {
    /// The prefix of storage keys (`namespace + prefix`).
    pub fn new(storage_prefix: &str) -> Self {
        FilePrefix {
            encoded: encode(storage_prefix),
        }
    }

    /// Whether the entry file `name` holds a key that starts with this prefix.
    pub fn matches(&self, name: &str) -> PrefixMatch {
        let Some(stem) = name.strip_suffix(FILE_SUFFIX) else {
            return PrefixMatch::No;
        };
        if stem.starts_with('.') {
            return PrefixMatch::No; // temporary files and anything hidden
        }
        match stem.split_once(HASH_MARK) {
            None => {
                if stem.starts_with(&self.encoded) {
                    PrefixMatch::Yes
                } else {
                    PrefixMatch::No
                }
            }
            Some((visible, _hash)) => {
                if visible.starts_with(&self.encoded) {
                    PrefixMatch::Yes
                } else if self.encoded.starts_with(visible) {
                    PrefixMatch::Maybe
                } else {
                    PrefixMatch::No
                }
            }
        }
    }
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
///
/// ```
/// use ddf::key::memcached_key;
/// assert_eq!(memcached_key("ddf:svc:web"), "ddf:svc:web");
/// let k = memcached_key("ddf:x\r\nflush_all");
/// assert!(k.starts_with("ddf:x%0D%0Aflush_all~"), "{k}");
/// assert!(k.bytes().all(|b| b.is_ascii_graphic()));
/// assert!(memcached_key(&"k".repeat(10_000)).len() <= 250);
/// ```
pub fn memcached_key(storage_key: &str) -> Cow<'_, str> {
    if memcached_key_is_carryable(storage_key) {
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
    use proptest::prelude::*;

    #[test]
    fn dangerous_keys_become_flat_names() {
        for key in [
            "../x",
            "/etc/passwd",
            "a/b",
            ".",
            "..",
            "",
            " ",
            "\0",
            "a\nb",
            "C:\\x",
        ] {
            let n = file_name(key);
            assert!(
                !n.contains('/') && !n.contains('\\') && !n.contains('\0'),
                "{n}"
            );
            assert!(n.ends_with(FILE_SUFFIX), "{n}");
            assert_ne!(n, ".");
            assert_ne!(n, "..");
            assert!(
                !n[..n.len() - FILE_SUFFIX.len()].starts_with('.'),
                "{key:?} -> {n}"
            );
        }
    }

    #[test]
    fn long_keys_are_cut_and_hashed() {
        let key = "k".repeat(10_000);
        let n = file_name(&key);
        assert!(n.len() < 255, "{}", n.len());
        assert!(n.contains('~'));
        assert_ne!(n, file_name(&"k".repeat(9_999)));
        // A cut never splits a %XX triple.
        let key = "é".repeat(100);
        let n = file_name(&key);
        let visible = n.split('~').next().unwrap();
        assert_eq!(visible.len() % 3, 0, "{visible}");
    }

    #[test]
    fn prefix_matching() {
        let p = FilePrefix::new("ddf:svc[1]:");
        assert_eq!(p.matches(&file_name("ddf:svc[1]:a")), PrefixMatch::Yes);
        assert_eq!(p.matches(&file_name("ddf:svc1:a")), PrefixMatch::No);
        assert_eq!(p.matches("notes.txt"), PrefixMatch::No);
        assert_eq!(p.matches(".tmp-1-2.ddf"), PrefixMatch::No);
        let long = format!("ddf:svc[1]:{}", "x".repeat(300));
        assert_eq!(p.matches(&file_name(&long)), PrefixMatch::Yes);
        let lp = FilePrefix::new(&format!("ddf:svc[1]:{}", "x".repeat(200)));
        assert_eq!(lp.matches(&file_name(&long)), PrefixMatch::Maybe);
        assert_eq!(lp.matches(&file_name("ddf:svc[1]:x")), PrefixMatch::No);
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
        fn names_are_safe_and_injective(a in ".*", b in ".*") {
            let (na, nb) = (file_name(&a), file_name(&b));
            prop_assert!(na.len() < 255);
            prop_assert!(!na.contains('/') && !na.contains('\0'));
            prop_assert_eq!(na == nb, a == b);
        }

        #[test]
        fn prefix_relation_is_preserved(key in ".{0,80}", cut in 0usize..80) {
            let mut cut = cut.min(key.len());
            while !key.is_char_boundary(cut) { cut -= 1; }
            let prefix = &key[..cut];
            prop_assert_ne!(FilePrefix::new(prefix).matches(&file_name(&key)), PrefixMatch::No);
        }

        #[test]
        fn non_prefixes_do_not_match(key in "[a-c:/é]{0,20}", prefix in "[a-c:/é]{1,5}") {
            let m = FilePrefix::new(&prefix).matches(&file_name(&key));
            prop_assert_eq!(m == PrefixMatch::Yes, key.starts_with(&prefix));
        }
    }
}
