//! Statistics that add up (issue #18): a scripted sequence of calls on every backend, and the
//! counters it must give; on Redis and Memcached also an outage, where the calls the fallback
//! answers are counted as `fallback` (and not as errors).

use ddf::{CacheBackend, CacheConfig, CacheManager, CacheStats, cache_with_invalidation};

use crate::resilience::{Kind, Server, config};

/// A memoized function over the cache it is given: one miss and one set on its first call, one
/// hit on the next.
struct Squares {
    cache: CacheManager,
}

impl Squares {
    #[cache_with_invalidation(cache = self.cache, key_prefix = "sq")]
    fn square(&self, n: u64) -> u64 {
        n * n
    }
}

/// The script: what every backend that stores sees.
fn script(cache: &CacheManager) {
    cache.set("a", "1", None).unwrap(); // sets 1
    assert_eq!(cache.get::<String>("a").unwrap().as_deref(), Some("1")); // hits 1
    assert_eq!(cache.get::<String>("b").unwrap(), None); // misses 1
    assert!(cache.delete("a").unwrap()); // deletes 1
    assert!(!cache.delete("a").unwrap()); // nothing removed
    cache.set_many(&[("x:1", 1u32), ("x:2", 2)], None).unwrap(); // sets 3
    let got = cache.get_many::<u32>(&["x:1", "x:2", "z"]).unwrap(); // hits 3, misses 2
    assert_eq!(got, [Some(1), Some(2), None]);
    assert_eq!(cache.invalidate_pattern("x:").unwrap(), 2); // invalidated 2
    cache.set("s", "text", None).unwrap(); // sets 4
    assert!(cache.get::<u32>("s").unwrap_err().is_decode()); // hits 4, errors 1
    let sq = Squares {
        cache: cache.clone(),
    };
    assert_eq!(sq.square(3), 9); // misses 3, sets 5
    assert_eq!(sq.square(3), 9); // hits 5
    cache.flush_all().unwrap();
}

fn expected_when_stored() -> CacheStats {
    let mut s = CacheStats::default();
    (s.hits, s.misses, s.sets, s.deletes, s.invalidated, s.errors) = (5, 3, 5, 1, 2, 1);
    s
}

#[test]
fn counters_add_up_on_the_file_and_none_backends() {
    let dir = tempfile::tempdir().unwrap();
    let cache = CacheManager::new(CacheConfig::default().with_pickle_dir(dir.path())).unwrap();
    script(&cache);
    assert_eq!(cache.stats(), expected_when_stored());

    // `none` stores nothing: every get misses, writes count as sets, nothing is removed.
    let none = CacheManager::new(CacheConfig::default().with_backend(CacheBackend::None)).unwrap();
    none.set("a", "1", None).unwrap();
    assert_eq!(none.get::<String>("a").unwrap(), None);
    assert!(!none.delete("a").unwrap());
    assert_eq!(none.get_many::<u32>(&["x", "y"]).unwrap(), [None, None]);
    let mut want = CacheStats::default();
    (want.sets, want.misses) = (1, 3);
    assert_eq!(none.stats(), want);
}

fn counters_add_up_on_a_server(kind: Kind) {
    let port = ddf_testkit::free_port();
    let Some(mut server) = Server::start_on(kind, port) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cache = CacheManager::new(config(kind, &[port], dir.path())).unwrap();
    script(&cache);
    assert_eq!(cache.stats(), expected_when_stored(), "{kind:?}");

    // The outage: every call below is answered by the fallback (the local directory).
    server.process().kill();
    let before = cache.stats();
    cache.set("k", "v", None).unwrap(); // the write fails on the server: the fallback takes it
    assert_eq!(cache.get::<String>("k").unwrap().as_deref(), Some("v"));
    assert_eq!(cache.get::<String>("nothing").unwrap(), None);
    assert!(cache.delete("k").unwrap());
    assert_eq!(cache.invalidate_pattern("p:").unwrap(), 0);
    let after = cache.stats();
    let mut want = before;
    want.sets += 1;
    want.hits += 1;
    want.misses += 1;
    want.deletes += 1;
    want.fallback += 5;
    assert_eq!(after, want, "{kind:?}: {after}");
    assert_eq!(
        after.errors, before.errors,
        "the fallback answered: no error"
    );
}

#[test]
fn counters_add_up_on_redis_with_an_outage() {
    counters_add_up_on_a_server(Kind::Redis);
}

#[test]
fn counters_add_up_on_memcached_with_an_outage() {
    counters_add_up_on_a_server(Kind::Memcached);
}
