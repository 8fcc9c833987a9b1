//! The atomic operations (`add`, `incr`/`decr`, `touch`, `ttl`) on the file backend, Redis and
//! Memcached, against real servers: the same checks on each, races between threads, and
//! (through [`crate::process`]) between processes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ddf::{CacheBackend, CacheConfig, CacheManager, ServerAddr};
use ddf_testkit::{MemcachedServer, RedisServer};

use crate::conformance::unique_namespace;

fn file_config(dir: &std::path::Path, namespace: &str) -> CacheConfig {
    CacheConfig::default()
        .with_pickle_dir(dir)
        .with_namespace(namespace)
}

fn redis_config(server: &RedisServer, namespace: &str) -> CacheConfig {
    CacheConfig::default()
        .with_backend(CacheBackend::Redis)
        .with_redis("127.0.0.1", server.port())
        .with_namespace(namespace)
}

fn memcached_config(server: &MemcachedServer, namespace: &str) -> CacheConfig {
    CacheConfig::default()
        .with_backend(CacheBackend::Memcached)
        .with_memcached_servers(vec![ServerAddr::parse(&server.server(), 11211).unwrap()])
        .with_namespace(namespace)
}

/// The `add` checks every backend passes.
fn add_checks(cache: &CacheManager) {
    assert!(cache.add("a", &1, None).unwrap(), "an absent key is added");
    assert!(!cache.add("a", &2, None).unwrap(), "a present key is not");
    assert_eq!(cache.get::<i32>("a").unwrap(), Some(1), "left unchanged");
    cache.delete("a").unwrap();
    assert!(
        cache.add("a", &3, None).unwrap(),
        "absent again after a delete"
    );
    assert_eq!(cache.get::<i32>("a").unwrap(), Some(3));
    // A falsy value is a value.
    cache.set("falsy", &0, None).unwrap();
    assert!(!cache.add("falsy", &1, None).unwrap());
    // An expired value is absent.
    assert!(
        cache
            .add("short", &1, Some(Duration::from_secs(1)))
            .unwrap()
    );
    std::thread::sleep(Duration::from_millis(2100));
    assert!(
        cache.add("short", &2, None).unwrap(),
        "an expired key is absent"
    );
    assert_eq!(cache.get::<i32>("short").unwrap(), Some(2));
    // A long key and one with spaces (Memcached maps them).
    let long = "k".repeat(400);
    assert!(cache.add(&long, &1, None).unwrap());
    assert!(!cache.add(&long, &1, None).unwrap());
    assert!(cache.add("with space é", &1, None).unwrap());
    assert!(!cache.add("with space é", &1, None).unwrap());
    add_race(cache, "race");
}

/// 16 threads `add` one absent key at once: exactly one wins.
fn add_race(cache: &CacheManager, key: &str) {
    for round in 0..5 {
        let key = format!("{key}{round}");
        let wins = AtomicUsize::new(0);
        let barrier = std::sync::Barrier::new(16);
        std::thread::scope(|s| {
            for t in 0..16 {
                let (cache, key, wins, barrier) = (cache.clone(), &key, &wins, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    if cache.add(key, &t, None).unwrap() {
                        wins.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(wins.load(Ordering::Relaxed), 1, "round {round}");
    }
}

#[test]
fn add_on_the_file_backend() {
    let dir = tempfile::tempdir().unwrap();
    let cache = CacheManager::new(file_config(dir.path(), &unique_namespace("add"))).unwrap();
    add_checks(&cache);
    // Two managers on one directory (two processes' worth of connections) race too.
    let other =
        CacheManager::new(file_config(dir.path(), cache.config().namespace.as_str())).unwrap();
    assert!(!other.add("a", &9, None).unwrap());
}

#[test]
fn add_on_redis() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let cache = CacheManager::new(redis_config(&server, &unique_namespace("add"))).unwrap();
    add_checks(&cache);
    // Sub-second precision: a 300 ms lease is gone after a second.
    assert!(
        cache
            .add("lease", &1, Some(Duration::from_millis(300)))
            .unwrap()
    );
    let pttl = ddf_testkit::redis_cli(
        server.port(),
        &["PTTL", &format!("{}lease", cache.config().namespace)],
    );
    let ms: i64 = pttl.trim().parse().unwrap();
    assert!((1..=300).contains(&ms), "PTTL {ms}");
}

#[test]
fn add_on_memcached() {
    let Some(server) = MemcachedServer::start() else {
        return;
    };
    let cache = CacheManager::new(memcached_config(&server, &unique_namespace("add"))).unwrap();
    add_checks(&cache);
}

#[test]
fn add_on_none_is_granted_and_forgotten() {
    let cache = CacheManager::new(CacheConfig::default().with_backend(CacheBackend::None)).unwrap();
    assert!(cache.add("k", &1, None).unwrap());
    assert!(cache.add("k", &1, None).unwrap());
    assert_eq!(cache.get::<i32>("k").unwrap(), None);
}
