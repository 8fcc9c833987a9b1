//! The atomic operations (`add`, `incr`/`decr`, `touch`, `ttl`) on the file backend, Redis and
//! Memcached, against real servers: the same checks on each, races between threads, and
//! (through [`crate::process`]) between processes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ddf::{CacheBackend, CacheConfig, CacheManager, Error, Expiry, ServerAddr};
use ddf_testkit::{MemcachedServer, RedisServer};

use crate::conformance::unique_namespace;
use crate::process;

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

/// 16 threads `add` one absent key at once: exactly one wins, in each of 5 rounds.
fn add_race(cache: &CacheManager, key: &str) {
    for (round, wins) in add_wins(cache, key).into_iter().enumerate() {
        assert_eq!(wins, 1, "round {round}");
    }
}

/// How many of 16 threads won an `add` of one absent key, in each of 5 rounds.
fn add_wins(cache: &CacheManager, key: &str) -> Vec<usize> {
    (0..5)
        .map(|round| {
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
            wins.load(Ordering::Relaxed)
        })
        .collect()
}

/// A planted violation: an `add` made of a read then a write (what a cache without an atomic
/// add offers) lets several threads win; the race check above sees it.
#[test]
fn the_add_race_check_catches_a_read_then_write_add() {
    #[derive(Debug, Default)]
    struct ReadThenWrite(std::sync::Mutex<std::collections::HashMap<String, ddf::Item>>);
    impl ddf::Backend for ReadThenWrite {
        fn name(&self) -> &'static str {
            "racy"
        }
        fn get(&self, key: &str) -> ddf::Result<Option<ddf::Item>> {
            Ok(self.0.lock().unwrap().get(key).cloned())
        }
        fn set(&self, key: &str, item: &ddf::Item, _ttl: Option<Duration>) -> ddf::Result<()> {
            self.0.lock().unwrap().insert(key.to_owned(), item.clone());
            Ok(())
        }
        fn add(&self, key: &str, item: &ddf::Item, ttl: Option<Duration>) -> ddf::Result<bool> {
            if self.get(key)?.is_some() {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(20));
            self.set(key, item, ttl).map(|()| true)
        }
        fn delete(&self, key: &str) -> ddf::Result<bool> {
            Ok(self.0.lock().unwrap().remove(key).is_some())
        }
        fn delete_prefix(&self, _prefix: &str) -> ddf::Result<u64> {
            Ok(0)
        }
        fn clear(&self) -> ddf::Result<()> {
            Ok(())
        }
        fn ping(&self) -> ddf::Result<ddf::BackendStatus> {
            Err(Error::InvalidArgument("a test double".into()))
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let cache = CacheManager::with_backend(
        file_config(dir.path(), "racy:"),
        std::sync::Arc::new(ReadThenWrite::default()),
    );
    let wins = add_wins(&cache, "k");
    assert!(wins.iter().any(|&w| w > 1), "{wins:?}");
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

/// The `incr`/`decr`/`touch`/`ttl` checks every backend passes.
fn counter_checks(cache: &CacheManager) {
    assert_eq!(
        cache.incr("c", 1).unwrap(),
        1,
        "a missing key counts from 0"
    );
    assert_eq!(cache.incr("c", 41).unwrap(), 42);
    assert_eq!(cache.decr("c", 2).unwrap(), 40);
    assert_eq!(cache.incr("c", -40).unwrap(), 0);
    assert_eq!(
        cache.get::<i64>("c").unwrap(),
        Some(0),
        "read back as an int"
    );
    // The range rule: never below 0, never past i64::MAX; nothing changes.
    let e = cache.decr("c", 1).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    assert!(e.to_string().contains("never negative"), "{e}");
    assert_eq!(cache.get::<i64>("c").unwrap(), Some(0));
    assert!(cache.decr("absent", 1).is_err());
    assert_eq!(
        cache.ttl("absent").unwrap(),
        None,
        "a refused first decr creates nothing"
    );
    assert_eq!(cache.incr("big", i64::MAX).unwrap(), i64::MAX);
    assert!(matches!(
        cache.incr("big", 1),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(cache.get::<i64>("big").unwrap(), Some(i64::MAX));
    // A value ddf wrote as an int counts on; one that is no int is an error, unchanged.
    cache.set("set-int", &7i64, None).unwrap();
    assert_eq!(cache.incr("set-int", 1).unwrap(), 8);
    cache.set("text", "abc", None).unwrap();
    assert!(cache.incr("text", 1).is_err());
    assert_eq!(cache.get::<String>("text").unwrap().as_deref(), Some("abc"));
    // A str of digits is a str, not a counter (memcached's `ma` would count on it).
    cache.set("digits", "7", None).unwrap();
    assert!(cache.incr("digits", 1).is_err());
    assert_eq!(cache.get::<String>("digits").unwrap().as_deref(), Some("7"));
    // The most negative step on a live counter is refused and changes nothing (Redis cannot
    // step back by it: `DECRBY i64::MIN` overflows).
    cache.set("five", &5i64, None).unwrap();
    assert!(matches!(
        cache.incr("five", i64::MIN),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(cache.get::<i64>("five").unwrap(), Some(5));
    // An existing counter keeps its expiry; touch and ttl.
    cache
        .set("exp", &1i64, Some(Duration::from_secs(100)))
        .unwrap();
    assert_eq!(cache.incr("exp", 1).unwrap(), 2);
    let left = |k: &str| match cache.ttl(k).unwrap() {
        Some(Expiry::In(d)) => d,
        other => panic!("{k}: {other:?}"),
    };
    assert!(left("exp") > Duration::from_secs(90), "{:?}", left("exp"));
    assert_eq!(cache.ttl("c").unwrap(), Some(Expiry::Never));
    assert!(cache.touch("c", Some(Duration::from_secs(50))).unwrap());
    let d = left("c");
    assert!(
        d > Duration::from_secs(40) && d <= Duration::from_secs(50),
        "{d:?}"
    );
    assert!(cache.touch("c", None).unwrap());
    assert_eq!(cache.ttl("c").unwrap(), Some(Expiry::Never));
    assert!(!cache.touch("absent", Some(Duration::from_secs(5))).unwrap());
    assert_eq!(
        cache.get::<i64>("c").unwrap(),
        Some(0),
        "touch leaves the value"
    );
    // Threads.
    std::thread::scope(|s| {
        for _ in 0..8 {
            let cache = cache.clone();
            s.spawn(move || {
                for _ in 0..250 {
                    cache.incr("threads", 1).unwrap();
                }
            });
        }
    });
    assert_eq!(cache.get::<i64>("threads").unwrap(), Some(2000));
}

#[test]
fn counters_on_the_file_backend() {
    let dir = tempfile::tempdir().unwrap();
    counter_checks(&CacheManager::new(file_config(dir.path(), &unique_namespace("ctr"))).unwrap());
}

#[test]
fn counters_on_redis() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    counter_checks(&CacheManager::new(redis_config(&server, &unique_namespace("ctr"))).unwrap());
    let pickled = CacheManager::new(
        redis_config(&server, &unique_namespace("ctrp")).with_backend(CacheBackend::RedisPickle),
    )
    .unwrap();
    let e = pickled.incr("c", 1).unwrap_err();
    assert!(e.to_string().contains("redis_pickle"), "{e}");
}

#[test]
fn counters_on_memcached() {
    let Some(server) = MemcachedServer::start() else {
        return;
    };
    counter_checks(
        &CacheManager::new(memcached_config(&server, &unique_namespace("ctr"))).unwrap(),
    );
    let pickled = CacheManager::new(
        memcached_config(&server, &unique_namespace("ctrp"))
            .with_backend(CacheBackend::MemcachedPickle),
    )
    .unwrap();
    assert_eq!(pickled.incr("c", 3).unwrap(), 3);
    assert_eq!(pickled.get::<i64>("c").unwrap(), Some(3));
    // memcached pads a shorter number with spaces: still an int.
    assert_eq!(pickled.incr("c", 7).unwrap(), 10);
    assert_eq!(pickled.decr("c", 1).unwrap(), 9);
    assert_eq!(pickled.get::<i64>("c").unwrap(), Some(9));
    assert_eq!(
        pickled.get_value("c").unwrap().map(|v| v.type_name()),
        Some("int")
    );
    let long = "k".repeat(300);
    assert!(matches!(
        pickled.incr(&long, 1),
        Err(Error::InvalidArgument(_))
    ));
}

const JOB: &str = "DDF_TEST_ATOMIC_INCR";
const PROCS: usize = 8;
const PER_PROC: i64 = 2_500;

/// A child: 2,500 `incr` by 1 on the cache its job names (`kind|where|namespace`).
fn incr_child() -> bool {
    let Some(job) = process::job(JOB) else {
        return false;
    };
    let mut parts = job.splitn(3, '|');
    let (kind, place, ns) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let config = match kind {
        "file" => file_config(std::path::Path::new(place), ns),
        "redis" => CacheConfig::default()
            .with_backend(CacheBackend::Redis)
            .with_redis("127.0.0.1", place.parse().unwrap())
            .with_namespace(ns),
        _ => CacheConfig::default()
            .with_backend(CacheBackend::Memcached)
            .with_memcached_servers(vec![ServerAddr::parse(place, 11211).unwrap()])
            .with_namespace(ns),
    };
    let cache = CacheManager::new(config).unwrap();
    for _ in 0..PER_PROC {
        cache.incr("n", 1).unwrap();
    }
    assert_eq!(cache.stats().fallback, 0, "every incr reached the store");
    true
}

/// 8 processes x 2,500 `incr` by 1 leave exactly 20,000.
fn processes_count_exactly(test: &str, kind: &str, place: &str, cache: &CacheManager) {
    let job = format!("{kind}|{place}|{}", cache.config().namespace);
    let children: Vec<_> = (0..PROCS)
        .map(|_| process::child(test, JOB, &job).spawn().unwrap())
        .collect();
    for c in children {
        process::check(c, "incr child");
    }
    assert_eq!(
        cache.get::<i64>("n").unwrap(),
        Some(PROCS as i64 * PER_PROC),
        "{kind}"
    );
}

#[test]
fn eight_processes_count_exactly_on_the_file_backend() {
    if incr_child() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cache = CacheManager::new(file_config(dir.path(), &unique_namespace("procs"))).unwrap();
    processes_count_exactly(
        "atomic::eight_processes_count_exactly_on_the_file_backend",
        "file",
        dir.path().to_str().unwrap(),
        &cache,
    );
}

#[test]
fn eight_processes_count_exactly_on_redis() {
    if incr_child() {
        return;
    }
    let Some(server) = RedisServer::start() else {
        return;
    };
    let cache = CacheManager::new(redis_config(&server, &unique_namespace("procs"))).unwrap();
    processes_count_exactly(
        "atomic::eight_processes_count_exactly_on_redis",
        "redis",
        &server.port().to_string(),
        &cache,
    );
    // redis-py and the Python DDF's JSON read an int.
    python_reads_the_count(
        "import json, sys, redis; v = json.loads(redis.Redis(port=int(sys.argv[1])).get(sys.argv[2])); print(type(v).__name__, v)",
        &[
            &server.port().to_string(),
            &format!("{}n", cache.config().namespace),
        ],
    );
}

/// The count as a Python client reads it: an `int`, exactly (when the tests have a Python).
fn python_reads_the_count(script: &str, args: &[&str]) {
    let Some(python) = ddf_testkit::python() else {
        return;
    };
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("int {}", PROCS as i64 * PER_PROC),
        "{out:?}"
    );
}

#[test]
fn eight_processes_count_exactly_on_memcached() {
    if incr_child() {
        return;
    }
    let Some(server) = MemcachedServer::start() else {
        return;
    };
    let cache = CacheManager::new(memcached_config(&server, &unique_namespace("procs"))).unwrap();
    processes_count_exactly(
        "atomic::eight_processes_count_exactly_on_memcached",
        "memcached",
        &server.server(),
        &cache,
    );
    // pymemcache with the python_memcache serializer (the Python DDF's) reads an int.
    let addr = server.server();
    let (host, port) = addr.rsplit_once(':').unwrap();
    python_reads_the_count(
        "import sys\nfrom pymemcache.client.base import Client\nfrom pymemcache import serde\nc = Client((sys.argv[1], int(sys.argv[2])), serde=serde.pickle_serde)\nv = c.get(sys.argv[3]); print(type(v).__name__, v)",
        &[host, port, &format!("{}n", cache.config().namespace)],
    );
}

/// The async face: the same operations, through native Redis, Memcached on the sync client
/// (blocking pool), the file backend through `Blocking`.
async fn async_checks(cache: &ddf::AsyncCacheManager) {
    assert!(cache.add("a", &1, None).await.unwrap());
    assert!(!cache.add("a", &2, None).await.unwrap());
    assert_eq!(cache.get::<i32>("a").await.unwrap(), Some(1));
    assert_eq!(cache.incr("c", 5).await.unwrap(), 5);
    assert_eq!(cache.decr("c", 2).await.unwrap(), 3);
    assert!(matches!(
        cache.decr("c", 4).await,
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(cache.get::<i64>("c").await.unwrap(), Some(3));
    assert_eq!(cache.ttl("c").await.unwrap(), Some(Expiry::Never));
    assert!(
        cache
            .touch("c", Some(Duration::from_secs(50)))
            .await
            .unwrap()
    );
    match cache.ttl("c").await.unwrap() {
        Some(Expiry::In(d)) => assert!(d > Duration::from_secs(40), "{d:?}"),
        other => panic!("{other:?}"),
    }
    assert!(!cache.touch("absent", None).await.unwrap());
    assert_eq!(cache.ttl("absent").await.unwrap(), None);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move {
                for _ in 0..100 {
                    cache.incr("tasks", 1).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(cache.get::<i64>("tasks").await.unwrap(), Some(800));
}

#[test]
fn the_async_face_on_every_backend() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (Some(redis), Some(memcached)) = (RedisServer::start(), MemcachedServer::start()) else {
        return;
    };
    for config in [
        file_config(dir.path(), &unique_namespace("async")),
        redis_config(&redis, &unique_namespace("async")),
        memcached_config(&memcached, &unique_namespace("async")),
    ] {
        let cache = ddf::AsyncCacheManager::new(config).unwrap();
        rt.block_on(async_checks(&cache));
    }
}

/// Outage semantics (issue #17 point 6), with the server stopped: the atomic operations run on
/// the fallback's entries of the outage (shared by the processes of this machine); counters
/// count from 0 there and record nothing, so when the server returns its count resumes where it
/// was; an `add` made during the outage records nothing, so the lease another host (here:
/// before the outage) put on the server is still there when it returns.
fn outage(kind: crate::resilience::Kind) {
    use crate::resilience::{Server, config, wait_until_up};
    let dir = tempfile::tempdir().unwrap();
    let port = ddf_testkit::free_port();
    let Some(mut server) = Server::start_on(kind, port) else {
        return;
    };
    let cfg = config(kind, &[port], dir.path());
    let cache = CacheManager::new(cfg.clone()).unwrap();
    assert_eq!(cache.incr("n", 5).unwrap(), 5);
    assert!(cache.add("lease", &"server", None).unwrap());

    // Paused, not killed: the server keeps its data. Two reads that time out open the breaker
    // (no counter step is in flight when it stops: one sent to a paused server would run when
    // it resumes).
    server.process().signal("STOP");
    for _ in 0..2 {
        assert_eq!(cache.get::<i64>("probe").unwrap(), None);
    }
    let before = cache.stats().fallback;
    assert_eq!(cache.incr("n", 1).unwrap(), 1, "the fallback counts from 0");
    assert_eq!(cache.incr("n", 1).unwrap(), 2);
    assert!(cache.stats().fallback > before, "answered by the fallback");
    assert!(cache.add("other", &1, None).unwrap());
    assert!(
        !cache.add("other", &2, None).unwrap(),
        "add is still exclusive there"
    );
    assert!(
        cache.add("lease", &"outage", None).unwrap(),
        "the server's lease is out of reach"
    );
    assert_eq!(cache.ttl("n").unwrap(), Some(Expiry::Never));
    assert!(cache.touch("n", Some(Duration::from_secs(100))).unwrap());
    assert!(matches!(cache.decr("n", 3), Err(Error::InvalidArgument(_))));
    // Another cache on this machine (another process's worth) shares the outage's entries.
    let other = CacheManager::new(cfg.clone()).unwrap();
    assert_eq!(other.incr("n", 1).unwrap(), 3);
    assert!(!other.add("other", &3, None).unwrap());

    server.process().signal("CONT");
    wait_until_up(&cache);
    assert_eq!(cache.incr("n", 1).unwrap(), 6, "the server's count resumes");
    assert_eq!(
        cache.ttl("n").unwrap(),
        Some(Expiry::Never),
        "the outage's touch stayed there"
    );
    assert!(
        !cache.add("lease", &"after", None).unwrap(),
        "an add during the outage recorded nothing: the server's lease is still there"
    );
    assert_eq!(
        cache.get::<String>("lease").unwrap().as_deref(),
        Some("server")
    );
    assert!(
        cache.add("other", &4, None).unwrap(),
        "the outage's entries are gone"
    );
}

#[test]
fn outage_on_redis() {
    outage(crate::resilience::Kind::Redis);
}

#[test]
fn outage_on_memcached() {
    outage(crate::resilience::Kind::Memcached);
}

/// A Redis Cluster: each script and command names one key, so it goes to that key's primary.
#[test]
fn add_and_counters_on_a_redis_cluster() {
    let Some(cluster) = ddf_testkit::RedisCluster::start() else {
        return;
    };
    let nodes: Vec<ServerAddr> = cluster
        .addrs()
        .iter()
        .map(|a| ServerAddr::parse(a, 6379).unwrap())
        .collect();
    let make = |tag: &str| {
        CacheManager::new(
            CacheConfig::default()
                .with_backend(CacheBackend::Redis)
                .with_redis_cluster_nodes(nodes.clone())
                .with_namespace(unique_namespace(tag)),
        )
        .unwrap()
    };
    add_checks(&make("add"));
    counter_checks(&make("ctr"));
}

/// Several Memcached servers: each key's operations go to the server pymemcache places it on,
/// behind that server's breaker.
#[test]
fn add_and_counters_on_several_memcached_servers() {
    let (Some(a), Some(b)) = (MemcachedServer::start(), MemcachedServer::start()) else {
        return;
    };
    let make = |tag: &str| {
        CacheManager::new(
            CacheConfig::default()
                .with_backend(CacheBackend::Memcached)
                .with_memcached_servers(
                    [&a, &b]
                        .iter()
                        .map(|s| ServerAddr::parse(&s.server(), 11211).unwrap())
                        .collect(),
                )
                .with_namespace(unique_namespace(tag)),
        )
        .unwrap()
    };
    add_checks(&make("add"));
    counter_checks(&make("ctr"));
}

/// The async face during an outage: the same routing as the sync face (`AsyncResilient`).
#[test]
fn the_async_face_during_an_outage() {
    use crate::resilience::{Kind, Server, config};
    let rt = tokio::runtime::Runtime::new().unwrap();
    for kind in [Kind::Redis, Kind::Memcached] {
        let dir = tempfile::tempdir().unwrap();
        let port = ddf_testkit::free_port();
        let Some(mut server) = Server::start_on(kind, port) else {
            return;
        };
        let cache = ddf::AsyncCacheManager::new(config(kind, &[port], dir.path())).unwrap();
        rt.block_on(async {
            assert_eq!(cache.incr("n", 5).await.unwrap(), 5);
            server.process().signal("STOP");
            for _ in 0..2 {
                assert_eq!(cache.get::<i64>("probe").await.unwrap(), None);
            }
            assert_eq!(
                cache.incr("n", 1).await.unwrap(),
                1,
                "{kind:?}: on the fallback"
            );
            assert!(cache.add("lock", &1, None).await.unwrap());
            assert!(!cache.add("lock", &1, None).await.unwrap());
            assert_eq!(cache.ttl("n").await.unwrap(), Some(Expiry::Never));
            assert!(cache.stats().fallback > 0);
        });
        server.process().signal("CONT");
    }
}
