//! The behaviour every [`Backend`] must show, as a suite that a custom backend's tests can run
//! (object_store's `integration.rs`). ddf runs it against each of its own backends.
//!
//! Each check panics with a message naming what failed, as `assert!` does: call it from a test.
//!
//! ```
//! use std::sync::Arc;
//! use ddf::testing::conformance::{self, Caps};
//! use ddf::{Backend, CacheBackend, CacheConfig};
//!
//! let dir = tempfile::tempdir()?;
//! // Any backend whose namespace the factory sets; here ddf's own local directory.
//! let make = |namespace: &str| -> Arc<dyn Backend> {
//!     ddf::testing::build_backend(
//!         &CacheConfig::default()
//!             .with_backend(CacheBackend::Pickle)
//!             .with_pickle_dir(dir.path())
//!             .with_namespace(namespace),
//!     )
//!     .unwrap()
//! };
//! conformance::run(&make, Caps::default().with_ttl_sleep(None));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::{Backend, Item};

/// What the backend under test can be asked to do.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Caps {
    /// How long to sleep so that an entry stored with a 1 s TTL is gone (servers count whole
    /// seconds); `None` skips the real-time TTL check.
    pub ttl_sleep: Option<Duration>,
    /// The longest key the backend must carry, in bytes.
    pub long_key: usize,
    /// Whether the backend keeps an item's flags (Redis keeps none and returns 0).
    pub keeps_flags: bool,
}

impl Default for Caps {
    fn default() -> Self {
        Caps {
            ttl_sleep: Some(Duration::from_millis(1100)),
            long_key: 10_000,
            keeps_flags: true,
        }
    }
}

impl Caps {
    /// These capabilities with `ttl_sleep` set as given (`None` skips the real-time TTL check).
    #[must_use]
    pub fn with_ttl_sleep(mut self, sleep: Option<Duration>) -> Self {
        self.ttl_sleep = sleep;
        self
    }

    /// These capabilities with `keeps_flags` set as given.
    #[must_use]
    pub fn with_flags(mut self, keeps_flags: bool) -> Self {
        self.keeps_flags = keeps_flags;
        self
    }
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A namespace no other check uses, in this process or another.
pub fn unique_namespace(tag: &str) -> String {
    format!(
        "c{}-{}-{tag}:",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs every check. `make(namespace)` builds a fresh backend for that namespace, over the same
/// store each time (the same directory, the same servers).
pub fn run(make: &dyn Fn(&str) -> Arc<dyn Backend>, caps: Caps) {
    let fresh = |tag: &str| make(&unique_namespace(tag));
    round_trip_and_miss(fresh("rt").as_ref(), caps);
    empty_values_are_hits(fresh("empty").as_ref());
    overwrite_and_delete(fresh("del").as_ref());
    prefix_removal_is_literal_and_exact(fresh("prefix").as_ref());
    clear_is_scoped_to_the_namespace(make);
    odd_keys_round_trip(fresh("odd").as_ref(), caps);
    batches(fresh("batch").as_ref(), caps);
    concurrent_writers_never_tear(&fresh("conc"));
    ping_answers(fresh("ping").as_ref());
    if let Some(sleep) = caps.ttl_sleep {
        ttl_expires(fresh("ttl").as_ref(), sleep);
    }
}

fn item(data: &[u8], flags: u32) -> Item {
    Item::new(data.to_vec(), flags)
}

fn expect(b: &dyn Backend, key: &str, want: Option<&Item>, caps: Caps, what: &str) {
    let got = b
        .get(key)
        .unwrap_or_else(|e| panic!("{}: get {key:?} failed: {e}", b.name()));
    let got = got.map(|mut i| {
        if !caps.keeps_flags {
            i.flags = want.map_or(0, |w| w.flags);
        }
        i
    });
    assert_eq!(got.as_ref(), want, "{}: {what}: key {key:?}", b.name());
}

/// A stored item reads back as it was stored; an absent key is a miss.
pub fn round_trip_and_miss(b: &dyn Backend, caps: Caps) {
    expect(b, "absent", None, caps, "a key never set is a miss");
    // Flags 16 (text) on bytes that are not text: a backend keeps both as they are.
    let v = item(b"\x00\xffbinary\r\n value", 16);
    b.set("k", &v, None).unwrap();
    expect(b, "k", Some(&v), caps, "what was set reads back");
    let big = item(&vec![7u8; 200_000], 1);
    b.set("big", &big, Some(Duration::from_secs(600))).unwrap();
    expect(b, "big", Some(&big), caps, "a 200 kB value reads back");
}

/// A value of zero bytes is stored and read as a hit, not a miss.
pub fn empty_values_are_hits(b: &dyn Backend) {
    b.set("e", &item(b"", 0), None).unwrap();
    let got = b.get("e").unwrap();
    assert_eq!(
        got.map(|i| i.data),
        Some(Vec::new()),
        "{}: an empty value is a hit",
        b.name()
    );
}

/// A set replaces the value; `delete` reports whether something was removed.
pub fn overwrite_and_delete(b: &dyn Backend) {
    b.set("k", &item(b"one", 0), None).unwrap();
    b.set("k", &item(b"two", 0), None).unwrap();
    assert_eq!(b.get("k").unwrap().map(|i| i.data), Some(b"two".to_vec()));
    assert!(
        b.delete("k").unwrap(),
        "{}: delete of a present key",
        b.name()
    );
    assert!(
        !b.delete("k").unwrap(),
        "{}: delete of an absent key",
        b.name()
    );
    assert_eq!(b.get("k").unwrap(), None, "{}: deleted key", b.name());
}

/// `delete_prefix` takes its prefix literally (no glob), counts exactly, and leaves the rest.
pub fn prefix_removal_is_literal_and_exact(b: &dyn Backend) {
    let keys = [
        "svc:1", "svc:2", "svc:10", "svc", "svc1:a", "svc?", "svc*", "svc[1]:a", "other",
    ];
    for k in keys {
        b.set(k, &item(k.as_bytes(), 0), None).unwrap();
    }
    assert_eq!(b.delete_prefix("svc:").unwrap(), 3, "{}: svc:", b.name());
    assert_eq!(
        b.delete_prefix("svc?").unwrap(),
        1,
        "{}: svc? is literal",
        b.name()
    );
    assert_eq!(
        b.delete_prefix("svc*").unwrap(),
        1,
        "{}: svc* is literal",
        b.name()
    );
    assert_eq!(
        b.delete_prefix("svc[1]:").unwrap(),
        1,
        "{}: svc[1]:",
        b.name()
    );
    assert_eq!(b.delete_prefix("nothing").unwrap(), 0, "{}", b.name());
    for k in ["svc", "svc1:a", "other"] {
        assert!(b.get(k).unwrap().is_some(), "{}: {k:?} survives", b.name());
    }
    assert_eq!(
        b.delete_prefix("").unwrap(),
        3,
        "{}: the empty prefix",
        b.name()
    );
    assert_eq!(b.get("other").unwrap(), None);
}

/// `clear` removes its own namespace's keys and nothing else.
pub fn clear_is_scoped_to_the_namespace(make: &dyn Fn(&str) -> Arc<dyn Backend>) {
    // Namespaces must not be prefixes of each other (a documented rule): `ns:` would own `ns:x`.
    let a = make(&unique_namespace("a"));
    let b = make(&unique_namespace("b"));
    a.set("k", &item(b"a", 0), None).unwrap();
    b.set("k", &item(b"b", 0), None).unwrap();
    a.clear().unwrap();
    assert_eq!(a.get("k").unwrap(), None, "{}: cleared", a.name());
    assert_eq!(
        b.get("k").unwrap().map(|i| i.data),
        Some(b"b".to_vec()),
        "{}: another namespace survives clear",
        a.name()
    );
    b.clear().unwrap();
}

/// Keys with spaces, control characters, path syntax, unicode and great length are just keys.
pub fn odd_keys_round_trip(b: &dyn Backend, caps: Caps) {
    let long = "x".repeat(caps.long_key);
    let keys = [
        "",
        "with space",
        "tab\tand\nnewline",
        "../../etc/passwd",
        "/abs/path",
        "ключ-日本",
        "a\u{0}b",
        "*",
        &long,
    ];
    for (i, k) in keys.iter().enumerate() {
        b.set(k, &item(format!("v{i}").as_bytes(), 0), None)
            .unwrap_or_else(|e| panic!("{}: set {k:?}: {e}", b.name()));
    }
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(
            b.get(k).unwrap().map(|i| i.data),
            Some(format!("v{i}").into_bytes()),
            "{}: key {k:?}",
            b.name()
        );
    }
    assert_eq!(
        b.delete_prefix("").unwrap(),
        keys.len() as u64,
        "{}",
        b.name()
    );
}

/// Batch reads answer one result per key, in order; batch writes and deletes count exactly.
pub fn batches(b: &dyn Backend, caps: Caps) {
    let items: Vec<(String, Item)> = (0..300)
        .map(|i| (format!("b{i}"), item(format!("{i}").as_bytes(), 2)))
        .collect();
    let refs: Vec<(&str, Item)> = items.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    b.set_many(&refs, None).unwrap();
    let mut keys: Vec<&str> = items.iter().map(|(k, _)| k.as_str()).collect();
    keys.insert(5, "absent");
    let got = b.get_many(&keys).unwrap();
    assert_eq!(got.len(), keys.len(), "{}: one result per key", b.name());
    assert_eq!(got[5], None);
    for (k, g) in keys.iter().zip(&got) {
        if *k != "absent" {
            let want = item(&k.as_bytes()[1..], 2);
            let mut g = g
                .clone()
                .unwrap_or_else(|| panic!("{}: {k} missing", b.name()));
            if !caps.keeps_flags {
                g.flags = 2;
            }
            assert_eq!(g, want, "{}: {k}", b.name());
        }
    }
    assert_eq!(b.get_many(&[]).unwrap(), Vec::new());
    assert_eq!(b.delete_many(&keys).unwrap(), 300, "{}", b.name());
    assert_eq!(b.delete_many(&keys).unwrap(), 0, "{}", b.name());
}

/// Readers see whole values while writers replace them, never a torn or foreign one.
pub fn concurrent_writers_never_tear(b: &Arc<dyn Backend>) {
    std::thread::scope(|s| {
        for w in 0..4u8 {
            let b = b.clone();
            s.spawn(move || {
                for i in 0..200usize {
                    let value = vec![w; 1000 + usize::from(w) * 997];
                    b.set("shared", &item(&value, 0), None).unwrap();
                    if let Some(got) = b.get("shared").unwrap() {
                        let first = got.data[0];
                        assert_eq!(got.data.len(), 1000 + usize::from(first) * 997, "torn");
                        assert!(got.data.iter().all(|x| *x == first), "torn at {i}");
                    }
                }
            });
        }
    });
}

/// `ping` answers.
pub fn ping_answers(b: &dyn Backend) {
    b.ping()
        .unwrap_or_else(|e| panic!("{}: ping failed: {e}", b.name()));
}

/// An item stored with a 1 s TTL is gone after `sleep`; one without a TTL stays.
pub fn ttl_expires(b: &dyn Backend, sleep: Duration) {
    b.set("short", &item(b"x", 0), Some(Duration::from_secs(1)))
        .unwrap();
    b.set("long", &item(b"y", 0), None).unwrap();
    assert!(b.get("short").unwrap().is_some());
    std::thread::sleep(sleep);
    assert_eq!(b.get("short").unwrap(), None, "{}: expired", b.name());
    assert!(b.get("long").unwrap().is_some(), "{}: no TTL", b.name());
}
