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

    proptest! {
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
