//! The behaviour every backend must show, run against each backend (object_store's
//! `integration.rs`): call [`run`] with a factory that builds a fresh cache for a namespace.
//!
//! Every check uses its own namespace, so checks never see each other's keys, even on a shared
//! server, and [`run`] can be called against a server other tests use.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ddf::Error;
use serde::{Deserialize, Serialize};

use crate::aio_face::Face;

/// What a backend can be asked to do in the suite.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// How long to sleep so that an entry set with a 1 s TTL is gone (servers count whole
    /// seconds); `None` skips the real-time TTL check (unit tests cover it with a mock clock).
    pub ttl_sleep: Option<Duration>,
    /// The longest key the backend must carry.
    pub long_key: usize,
}

impl Default for Caps {
    fn default() -> Self {
        Caps {
            ttl_sleep: Some(Duration::from_millis(1100)),
            long_key: 10_000,
        }
    }
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A namespace no other check uses, in this process or another.
pub fn unique_namespace(tag: &str) -> String {
    format!(
        "t{}-{}-{tag}:",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

#[derive(Serialize, Deserialize, PartialEq, Debug, Clone)]
struct Service {
    name: String,
    ports: Vec<String>,
    replicas: u32,
    env: BTreeMap<String, String>,
    healthy: bool,
    weight: f64,
    note: Option<String>,
}

fn service() -> Service {
    Service {
        name: "web".into(),
        ports: vec!["8080:80".into(), "8443:443".into()],
        replicas: 3,
        env: [("A".to_owned(), "1".to_owned())].into(),
        healthy: true,
        weight: 0.25,
        note: None,
    }
}

/// Runs every check. `make(namespace)` builds a fresh cache over the backend under test.
pub fn run<C: Face>(make: &dyn Fn(&str) -> C, caps: Caps) {
    round_trip_of_typed_values(&make(&unique_namespace("rt")));
    miss_and_falsy_values_are_distinct(&make(&unique_namespace("falsy")));
    overwrite_and_delete(&make(&unique_namespace("del")));
    prefix_invalidation_is_literal_and_exact(&make(&unique_namespace("prefix")));
    flush_is_scoped_to_the_namespace(make, &unique_namespace("a"), &unique_namespace("b"));
    odd_keys_round_trip(&make(&unique_namespace("odd")), caps);
    batches(&make(&unique_namespace("batch")));
    bytes_api(&make(&unique_namespace("bytes")));
    zero_ttl_is_refused(&make(&unique_namespace("ttl0")));
    concurrent_writers_never_tear(&make(&unique_namespace("conc")));
    if let Some(sleep) = caps.ttl_sleep {
        ttl_expires(&make(&unique_namespace("ttl")), sleep);
    }
    stats_count(&make(&unique_namespace("stats")));
}

pub fn round_trip_of_typed_values(c: &impl Face) {
    let s = service();
    c.set("service", &s, None).unwrap();
    assert_eq!(c.get::<Service>("service").unwrap(), Some(s));
    c.set("list", &vec![1u64, 2, 3], None).unwrap();
    assert_eq!(c.get::<Vec<u64>>("list").unwrap(), Some(vec![1, 2, 3]));
    c.set("unicode", "héllo wörld ✓ 🚀", None).unwrap();
    assert_eq!(
        c.get::<String>("unicode").unwrap().as_deref(),
        Some("héllo wörld ✓ 🚀")
    );
    c.set("neg", &-42i64, None).unwrap();
    assert_eq!(c.get::<i64>("neg").unwrap(), Some(-42));
    c.set("big", &u64::MAX, None).unwrap();
    assert_eq!(c.get::<u64>("big").unwrap(), Some(u64::MAX));
    c.set("float", &1.5f64, None).unwrap();
    assert_eq!(c.get::<f64>("float").unwrap(), Some(1.5));
    let map: BTreeMap<String, Vec<String>> = [("web".to_owned(), vec!["a".to_owned()])]
        .into_iter()
        .collect();
    c.set("map", &map, None).unwrap();
    assert_eq!(
        c.get::<BTreeMap<String, Vec<String>>>("map").unwrap(),
        Some(map)
    );
    // A value of the wrong type is a decode error that names the key, not a miss.
    let err = c.get::<Vec<u64>>("unicode").unwrap_err();
    assert!(err.is_decode(), "{err}");
    assert!(err.to_string().contains("unicode"), "{err}");
}

pub fn miss_and_falsy_values_are_distinct(c: &impl Face) {
    assert_eq!(c.get::<String>("absent").unwrap(), None);
    c.set("empty", "", None).unwrap();
    c.set("zero", &0, None).unwrap();
    c.set("false", &false, None).unwrap();
    c.set("empty-list", &Vec::<u8>::new(), None).unwrap();
    c.set("none", &Option::<u8>::None, None).unwrap();
    assert_eq!(c.get::<String>("empty").unwrap(), Some(String::new()));
    assert_eq!(c.get::<i32>("zero").unwrap(), Some(0));
    assert_eq!(c.get::<bool>("false").unwrap(), Some(false));
    assert_eq!(c.get::<Vec<u8>>("empty-list").unwrap(), Some(vec![]));
    assert_eq!(c.get::<Option<u8>>("none").unwrap(), Some(None));
}

pub fn overwrite_and_delete(c: &impl Face) {
    c.set("k", "one", None).unwrap();
    c.set("k", "two", None).unwrap();
    assert_eq!(c.get::<String>("k").unwrap().as_deref(), Some("two"));
    assert!(c.delete("k").unwrap());
    assert!(!c.delete("k").unwrap());
    assert_eq!(c.get::<String>("k").unwrap(), None);
    assert!(!c.delete("never-set").unwrap());
}

pub fn prefix_invalidation_is_literal_and_exact(c: &impl Face) {
    let keys = [
        "svc1:a", "svc1:b", "svc2:a", "svc[1]:a", "svc?x", "svc*", "svc", "svcx", r"svc\x",
        "foo:1", "foobar", "other",
    ];
    for k in keys {
        c.set(k, k, None).unwrap();
    }
    // Glob characters mean themselves.
    assert_eq!(c.invalidate_pattern("svc[1]:").unwrap(), 1);
    assert_eq!(
        c.get::<String>("svc1:a").unwrap().as_deref(),
        Some("svc1:a")
    );
    assert_eq!(c.invalidate_pattern("svc?").unwrap(), 1);
    assert_eq!(c.invalidate_pattern("svc*").unwrap(), 1);
    assert_eq!(c.invalidate_pattern(r"svc\").unwrap(), 1);
    assert_eq!(c.get::<String>("svcx").unwrap().as_deref(), Some("svcx"));
    // Boundaries: "foo:" does not take "foobar".
    assert_eq!(c.invalidate_pattern("foo:").unwrap(), 1);
    assert_eq!(
        c.get::<String>("foobar").unwrap().as_deref(),
        Some("foobar")
    );
    // A plain prefix takes what starts with it, and the count is exact.
    assert_eq!(c.invalidate_pattern("svc1:").unwrap(), 2);
    assert_eq!(c.invalidate_pattern("svc1:").unwrap(), 0);
    assert_eq!(c.invalidate_pattern("nothing-here").unwrap(), 0);
    assert_eq!(c.invalidate_pattern("svc").unwrap(), 3); // svc2:a, svc, svcx
    assert_eq!(c.get::<String>("other").unwrap().as_deref(), Some("other"));
    // Many keys.
    for i in 0..300 {
        c.set(&format!("many:{i}"), &i, None).unwrap();
    }
    assert_eq!(c.invalidate_pattern("many:").unwrap(), 300);
    assert_eq!(c.get::<i32>("many:7").unwrap(), None);
    // The empty prefix is every key of the namespace.
    assert_eq!(c.invalidate_pattern("").unwrap(), 2); // foobar, other
}

pub fn flush_is_scoped_to_the_namespace<C: Face>(make: &dyn Fn(&str) -> C, a: &str, b: &str) {
    let (ca, cb) = (make(a), make(b));
    ca.set("k", "a", None).unwrap();
    cb.set("k", "b", None).unwrap();
    ca.flush_all().unwrap();
    assert_eq!(ca.get::<String>("k").unwrap(), None);
    assert_eq!(cb.get::<String>("k").unwrap().as_deref(), Some("b"));
    // A namespace that is a prefix of another's is not touched by the other's flush either.
    assert_eq!(cb.invalidate_pattern("").unwrap(), 1);
}

pub fn odd_keys_round_trip(c: &impl Face, caps: Caps) {
    let long = "k".repeat(caps.long_key);
    let keys: Vec<String> = [
        "",
        " ",
        "with space",
        "tab\there",
        "new\nline",
        "x\r\nflush_all",
        "../x",
        "/etc/passwd",
        "a/b/c",
        "..",
        ".",
        "C:\\temp",
        "\u{0}nul",
        "ünïcödé",
        "日本語",
        "emoji 🚀",
        "%41",
        "~",
        "*",
        "?",
        "[",
        "]",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([long.clone(), format!("{long}x")])
    .collect();
    for (i, k) in keys.iter().enumerate() {
        c.set(k, &i, None).unwrap();
    }
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(c.get::<usize>(k).unwrap(), Some(i), "key {k:?}");
    }
    assert!(c.delete("../x").unwrap());
    assert_eq!(c.get::<usize>("/etc/passwd").unwrap(), Some(7));
    assert_eq!(c.invalidate_pattern(&long).unwrap(), 2);
    assert_eq!(c.invalidate_pattern("").unwrap(), keys.len() as u64 - 3);
}

pub fn batches(c: &impl Face) {
    let items: Vec<(String, u32)> = (0..100).map(|i| (format!("b:{i}"), i)).collect();
    let refs: Vec<(&str, u32)> = items.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    c.set_many(&refs, None).unwrap();
    let mut keys: Vec<&str> = items.iter().map(|(k, _)| k.as_str()).collect();
    keys.push("b:absent");
    let got = c.get_many::<u32>(&keys).unwrap();
    assert_eq!(got.len(), 101);
    for (i, v) in got.iter().take(100).enumerate() {
        assert_eq!(*v, Some(i as u32));
    }
    assert_eq!(got[100], None);
    assert_eq!(c.delete_many(&keys[..50]).unwrap(), 50);
    assert_eq!(c.delete_many(&keys[..50]).unwrap(), 0);
    assert_eq!(c.get::<u32>("b:50").unwrap(), Some(50));
    assert_eq!(c.get_many::<u32>(&[]).unwrap(), Vec::<Option<u32>>::new());
}

pub fn bytes_api(c: &impl Face) {
    let data: Vec<u8> = (0..=255).collect();
    c.set_bytes("raw", &data, None).unwrap();
    assert_eq!(c.get_bytes("raw").unwrap(), Some(data));
    c.set_bytes("empty", b"", None).unwrap();
    assert_eq!(c.get_bytes("empty").unwrap(), Some(vec![]));
    assert_eq!(c.get_bytes("absent").unwrap(), None);
}

pub fn zero_ttl_is_refused(c: &impl Face) {
    let err = c.set("k", &1, Some(Duration::ZERO)).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert_eq!(c.get::<i32>("k").unwrap(), None);
}

pub fn ttl_expires(c: &impl Face, sleep: Duration) {
    c.set("short", "v", Some(Duration::from_secs(1))).unwrap();
    c.set("long", "v", Some(Duration::from_secs(3600))).unwrap();
    c.set("forever", "v", None).unwrap();
    assert_eq!(c.get::<String>("short").unwrap().as_deref(), Some("v"));
    std::thread::sleep(sleep);
    assert_eq!(c.get::<String>("short").unwrap(), None);
    assert_eq!(c.get::<String>("long").unwrap().as_deref(), Some("v"));
    assert_eq!(c.get::<String>("forever").unwrap().as_deref(), Some("v"));
}

pub fn concurrent_writers_never_tear(c: &impl Face) {
    let values: Vec<String> = (0..4).map(|t| format!("{t}").repeat(2000)).collect();
    std::thread::scope(|s| {
        for t in 0..4 {
            let c = c.clone();
            let values = &values;
            s.spawn(move || {
                for i in 0..100 {
                    c.set(&format!("shared:{}", i % 5), &values[t], None)
                        .unwrap();
                    if let Some(v) = c.get::<String>(&format!("shared:{}", (i + 1) % 5)).unwrap() {
                        assert!(values.contains(&v), "torn or wrong value");
                    }
                }
            });
        }
    });
}

pub fn stats_count(c: &impl Face) {
    c.set("s", &1, None).unwrap();
    let _ = c.get::<i32>("s").unwrap();
    let _ = c.get::<i32>("absent").unwrap();
    assert!(c.delete("s").unwrap());
    let s = c.stats();
    assert_eq!((s.hits, s.misses, s.sets, s.deletes), (1, 1, 1, 1), "{s}");
}
