//! Fault injection against real servers (issue #6): kill -9 under a multi-threaded load,
//! SIGSTOP then SIGCONT, a restart on the same port, a start with the server down, and (for
//! Memcached) one of three servers down. For each: no panic, no call longer than the timeout plus
//! a margin, the program keeps serving from the fallback, the primary is used again after it
//! returns, and a key invalidated during the outage is not served stale afterwards.
//!
//! The worst call duration of each scenario is printed (`--nocapture`) for the record.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ddf::Backend;
use ddf::{CacheBackend, CacheConfig, CacheManager, FallbackMode, ServerAddr};
use ddf_testkit::{MemcachedServer, RedisServer, ServerProcess, free_port};

use crate::process;

pub(crate) const CONNECT: Duration = Duration::from_millis(300);
pub(crate) const TIMEOUT: Duration = Duration::from_millis(400);
/// What a call may take beyond the operation timeout: scheduling on a loaded 2-core machine.
pub(crate) const MARGIN: Duration = Duration::from_millis(2500);

#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    Redis,
    Memcached,
}

pub(crate) enum Server {
    Redis(RedisServer),
    Memcached(MemcachedServer),
}

impl Server {
    pub(crate) fn start_on(kind: Kind, port: u16) -> Option<Server> {
        Some(match kind {
            Kind::Redis => Server::Redis(RedisServer::start_on(port, &[])?),
            Kind::Memcached => Server::Memcached(MemcachedServer::start_on(port, &[])?),
        })
    }

    pub(crate) fn process(&mut self) -> &mut ServerProcess {
        match self {
            Server::Redis(s) => &mut s.process,
            Server::Memcached(s) => &mut s.process,
        }
    }
}

pub(crate) fn config(kind: Kind, ports: &[u16], dir: &std::path::Path) -> CacheConfig {
    let base = CacheConfig::default()
        .with_namespace("res:")
        .with_pickle_dir(dir)
        .with_timeouts(CONNECT, TIMEOUT);
    let mut c = match kind {
        Kind::Redis => base
            .with_backend(CacheBackend::Redis)
            .with_redis("127.0.0.1", ports[0]),
        Kind::Memcached => base
            .with_backend(CacheBackend::Memcached)
            .with_memcached_servers(
                ports
                    .iter()
                    .map(|p| ServerAddr::parse(&format!("127.0.0.1:{p}"), 1).unwrap())
                    .collect(),
            ),
    };
    c.fallback = FallbackMode::Pickle;
    c.breaker_failures = 2;
    c.breaker_retry = Duration::from_millis(100);
    c
}

/// The primary alone, to check what it holds.
pub(crate) fn direct(config: &CacheConfig) -> CacheManager {
    let backend: Arc<dyn Backend> = match config.backend {
        CacheBackend::Redis => {
            Arc::new(ddf::testing::internals::RedisBackend::from_config(config).unwrap())
        }
        _ => Arc::new(ddf::testing::internals::MemcachedBackend::from_config(config).unwrap()),
    };
    CacheManager::with_backend(config.clone(), backend)
}

pub(crate) fn state(cache: &CacheManager) -> String {
    cache
        .backend_info()
        .unwrap()
        .into_iter()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v)
        .unwrap_or_default()
}

pub(crate) fn wait_until_up(cache: &CacheManager) {
    wait_until_up_within(cache, Duration::from_secs(20));
}

/// [`wait_until_up`] with a "does not hang" bound of `limit` (a long replay on a loaded
/// machine: 100 recorded prefix invalidations each walk memcached's whole keyspace).
pub(crate) fn wait_until_up_within(cache: &CacheManager, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        // Traffic is what notices a failure; the probe is what notices the return.
        let _ = cache.get::<String>("wait:probe");
        if state(cache) == "up" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the primary never came back: {}",
            state(cache)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs one call and returns its result and duration.
pub(crate) fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}

pub(crate) fn bound() -> Duration {
    TIMEOUT + CONNECT + MARGIN
}

fn kill9_under_load(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let Some(mut server) = Server::start_on(kind, port) else {
        return;
    };
    let cfg = config(kind, &[port], dir.path());
    let cache = CacheManager::new(cfg.clone()).unwrap();
    let stop = AtomicBool::new(false);
    let worst = AtomicU64::new(0);
    let errors = AtomicU64::new(0);
    let ops = AtomicU64::new(0);
    let restarted = std::thread::scope(|s| {
        for t in 0..4 {
            let (cache, stop, worst, errors, ops) = (&cache, &stop, &worst, &errors, &ops);
            s.spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("load:{t}:{}", i % 50);
                    let (r, d) = timed(|| {
                        cache
                            .set(&key, &i, None)
                            .and_then(|()| cache.get::<u64>(&key))
                    });
                    if r.is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    worst.fetch_max(d.as_micros() as u64, Ordering::Relaxed);
                    ops.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            });
        }
        std::thread::sleep(Duration::from_millis(500));
        server.process().kill();
        std::thread::sleep(Duration::from_millis(1000));
        drop(server);
        let restarted = Server::start_on(kind, port).unwrap();
        std::thread::sleep(Duration::from_millis(1000));
        stop.store(true, Ordering::Relaxed);
        restarted
    });
    let worst = Duration::from_micros(worst.load(Ordering::Relaxed));
    eprintln!(
        "[{kind:?}] kill -9 under 4 threads: {} ops, {} errors, worst call {worst:?}",
        ops.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed)
    );
    assert_eq!(errors.load(Ordering::Relaxed), 0, "the fallback serves");
    assert!(worst < bound(), "worst call {worst:?}");
    wait_until_up(&cache);
    cache.set("after", "primary", None).unwrap();
    assert_eq!(
        direct(&cfg).get::<String>("after").unwrap().as_deref(),
        Some("primary"),
        "the primary is used again"
    );
    drop(restarted);
}

fn sigstop_then_sigcont(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let Some(mut server) = Server::start_on(kind, port) else {
        return;
    };
    let cfg = config(kind, &[port], dir.path());
    let cache = CacheManager::new(cfg.clone()).unwrap();
    cache.set("stale", "old", None).unwrap();
    cache.set("p:1", "old", None).unwrap();
    server.process().signal("STOP");
    let mut worst = Duration::ZERO;
    // Invalidations during the outage: bounded, recorded, served by the fallback.
    let (r, d) = timed(|| cache.delete("stale"));
    r.unwrap();
    worst = worst.max(d);
    let (r, d) = timed(|| cache.invalidate_pattern("p:"));
    // The fallback's count once the server is marked down; if this call is the one that found
    // it stopped, the temporary error saying the invalidation was recorded.
    if let Err(e) = r {
        assert!(
            e.is_temporary() && e.to_string().contains("recorded"),
            "{e}"
        );
    }
    worst = worst.max(d);
    for i in 0..20 {
        let (r, d) = timed(|| cache.get::<String>(&format!("other:{i}")));
        r.unwrap();
        worst = worst.max(d);
    }
    let (r, d) = timed(|| cache.set("during", "fallback", None));
    r.unwrap();
    worst = worst.max(d);
    assert_eq!(
        cache.get::<String>("during").unwrap().as_deref(),
        Some("fallback")
    );
    assert_eq!(cache.get::<String>("stale").unwrap(), None);
    eprintln!("[{kind:?}] SIGSTOP: worst call {worst:?}");
    assert!(worst < bound(), "worst call {worst:?}");
    server.process().signal("CONT");
    wait_until_up(&cache);
    // The primary still held the old values; the recorded invalidations removed them before it
    // served a read again.
    assert_eq!(cache.get::<String>("stale").unwrap(), None);
    assert_eq!(cache.get::<String>("p:1").unwrap(), None);
    assert_eq!(direct(&cfg).get::<String>("stale").unwrap(), None);
    // Outage values are not promoted.
    assert_eq!(cache.get::<String>("during").unwrap(), None);
}

fn restart_on_the_same_port(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let Some(mut server) = Server::start_on(kind, port) else {
        return;
    };
    let cfg = config(kind, &[port], dir.path());
    let cache = CacheManager::new(cfg.clone()).unwrap();
    cache.set("k", "v1", None).unwrap();
    server.process().kill();
    let (r, d) = timed(|| cache.delete("k"));
    r.unwrap();
    assert!(d < bound(), "{d:?}");
    cache.set("k", "outage", None).unwrap();
    drop(server);
    // This process ends during the outage; let its loop finish its last probe (a loop that
    // outlived it could replay the delete before the write below, and v1 would rightly stay).
    drop(cache);
    std::thread::sleep(TIMEOUT + Duration::from_millis(300));
    let server = Server::start_on(kind, port).unwrap();
    // Another client writes the old value back while no cache is up: the recorded delete still
    // applies when one comes back, before it serves a read.
    direct(&cfg).set("k", "v1", None).unwrap();
    let cache = CacheManager::new(cfg.clone()).unwrap();
    wait_until_up(&cache);
    assert_eq!(cache.get::<String>("k").unwrap(), None);
    cache.set("k", "v2", None).unwrap();
    assert_eq!(
        direct(&cfg).get::<String>("k").unwrap().as_deref(),
        Some("v2")
    );
    drop(server);
}

fn start_with_the_server_down(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = config(kind, &[port], dir.path());
    let (cache, d) = timed(|| CacheManager::new(cfg.clone()).unwrap());
    assert!(d < bound(), "start-up took {d:?}");
    let (r, d) = timed(|| cache.set("k", "fallback", None));
    r.unwrap();
    assert!(d < bound(), "{d:?}");
    assert_eq!(
        cache.get::<String>("k").unwrap().as_deref(),
        Some("fallback")
    );
    assert!(state(&cache).starts_with("down"), "{}", state(&cache));
    let Some(server) = Server::start_on(kind, port) else {
        return;
    };
    wait_until_up(&cache);
    assert_eq!(cache.get::<String>("k").unwrap(), None);
    cache.set("k", "primary", None).unwrap();
    assert_eq!(
        direct(&cfg).get::<String>("k").unwrap().as_deref(),
        Some("primary")
    );
    let (status, _) = cache.ping().unwrap();
    assert!(status.detail.contains("state up"), "{}", status.detail);
    assert!(status.detail.contains("transitions"), "{}", status.detail);
    drop(server);
}

#[test]
fn redis_kill9_under_load() {
    kill9_under_load(Kind::Redis);
}

#[test]
fn redis_sigstop_then_sigcont() {
    sigstop_then_sigcont(Kind::Redis);
}

#[test]
fn redis_restart_on_the_same_port() {
    restart_on_the_same_port(Kind::Redis);
}

#[test]
fn redis_start_with_the_server_down() {
    start_with_the_server_down(Kind::Redis);
}

#[test]
fn memcached_kill9_under_load() {
    kill9_under_load(Kind::Memcached);
}

#[test]
fn memcached_sigstop_then_sigcont() {
    sigstop_then_sigcont(Kind::Memcached);
}

#[test]
fn memcached_restart_on_the_same_port() {
    restart_on_the_same_port(Kind::Memcached);
}

#[test]
fn memcached_start_with_the_server_down() {
    start_with_the_server_down(Kind::Memcached);
}

/// One of three Memcached servers down: operations keep working (its keys from the fallback),
/// calls stay bounded, and an invalidation made meanwhile reaches it before it serves again.
#[test]
fn memcached_one_of_three_servers_down() {
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut servers: Vec<Server> = Vec::new();
    for &p in &ports {
        let Some(s) = Server::start_on(Kind::Memcached, p) else {
            return;
        };
        servers.push(s);
    }
    let cfg = config(Kind::Memcached, &ports, dir.path());
    let cache = CacheManager::new(cfg.clone()).unwrap();
    let keys: Vec<String> = (0..30).map(|i| format!("k{i}")).collect();
    for k in &keys {
        cache.set(k, "old", None).unwrap();
    }
    servers[1].process().signal("STOP");
    let mut worst = Duration::ZERO;
    for k in &keys {
        let (r, d) = timed(|| cache.delete(k));
        r.unwrap();
        worst = worst.max(d);
        let (r, d) = timed(|| cache.get::<String>(k));
        assert_eq!(r.unwrap(), None);
        worst = worst.max(d);
    }
    eprintln!("[Memcached] one of three stopped: worst call {worst:?}");
    assert!(worst < bound(), "worst call {worst:?}");
    servers[1].process().signal("CONT");
    wait_until_up(&cache);
    for k in &keys {
        assert_eq!(cache.get::<String>(k).unwrap(), None, "{k} served stale");
        assert_eq!(
            direct(&cfg).get::<String>(k).unwrap(),
            None,
            "{k} left on a server"
        );
    }
}

/// The fallback of a Redis cache lives beside a `pickle` cache of the same namespace in the same
/// directory without ever touching it.
#[test]
fn the_fallback_never_touches_a_pickle_cache_in_the_same_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = CacheManager::new(
        CacheConfig::default()
            .with_namespace("res:")
            .with_pickle_dir(dir.path()),
    )
    .unwrap();
    file.set("k", "file cache", None).unwrap();
    // A server that is not there: the Redis cache starts on its fallback.
    let port = free_port();
    let redis = CacheManager::new(config(Kind::Redis, &[port], dir.path())).unwrap();
    redis.set("k", "fallback", None).unwrap();
    redis.flush_all().unwrap();
    drop(redis);
    let _again = CacheManager::new(config(Kind::Redis, &[port], dir.path())).unwrap();
    assert_eq!(
        file.get::<String>("k").unwrap().as_deref(),
        Some("file cache")
    );
}

/// The journal's scope is the server's identity and the namespace, not the codec: an
/// invalidation a `redis_pickle` cache records during an outage is applied by a `redis` cache of
/// the same server and namespace.
#[test]
fn redis_and_redis_pickle_share_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let Some(mut server) = Server::start_on(Kind::Redis, port) else {
        return;
    };
    let cfg = config(Kind::Redis, &[port], dir.path());
    direct(&cfg).set("k", "old", None).unwrap();
    let pickle = CacheManager::new(cfg.clone().with_backend(CacheBackend::RedisPickle)).unwrap();
    server.process().signal("STOP");
    pickle.delete("k").unwrap();
    assert!(state(&pickle).starts_with("down"), "{}", state(&pickle));
    drop(pickle);
    // Let the dropped cache's probe finish its last ping (it must not be the one that replays).
    std::thread::sleep(TIMEOUT + Duration::from_millis(300));
    server.process().signal("CONT");
    // The UNLINK that timed out was written before the server stopped reading; the server runs
    // it once continued (a timed-out write may or may not have been applied). Put the value
    // back once it did, so that only a replay can remove it.
    let _ = direct(&cfg).get::<String>("k");
    direct(&cfg).set("k", "old", None).unwrap();
    assert_eq!(
        direct(&cfg).get::<String>("k").unwrap().as_deref(),
        Some("old"),
        "nobody replayed yet"
    );
    let cache = CacheManager::new(cfg.clone()).unwrap();
    assert_eq!(state(&cache), "up", "applied while the cache was built");
    assert_eq!(direct(&cfg).get::<String>("k").unwrap(), None);
}

const JOURNAL_WORKER: &str = "DDF_TEST_JOURNAL_WORKER";

/// Another process records an invalidation while Redis is stopped, then ends; a process that
/// starts once the server is back applies it before its first read.
#[test]
fn an_invalidation_recorded_by_an_ended_process_is_applied() {
    if let Some(job) = process::job(JOURNAL_WORKER) {
        return journal_worker(&job);
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let Some(mut server) = Server::start_on(Kind::Redis, port) else {
        return;
    };
    let cfg = config(Kind::Redis, &[port], dir.path());
    direct(&cfg).set("k", "old", None).unwrap();
    server.process().signal("STOP");
    let c = process::child(
        "resilience::an_invalidation_recorded_by_an_ended_process_is_applied",
        JOURNAL_WORKER,
        &format!("{port}|{}", dir.path().display()),
    )
    .spawn()
    .unwrap();
    process::check(c, "journal worker");
    server.process().signal("CONT");
    // The worker's UNLINK that timed out reaches the server once continued (see above): put
    // the value back once it ran, so that only a replay can remove it.
    let _ = direct(&cfg).get::<String>("k");
    direct(&cfg).set("k", "old", None).unwrap();
    assert_eq!(
        direct(&cfg).get::<String>("k").unwrap().as_deref(),
        Some("old"),
        "the server still holds the value"
    );
    let cache = CacheManager::new(cfg.clone()).unwrap();
    assert_eq!(state(&cache), "up", "applied while the cache was built");
    assert_eq!(cache.get::<String>("k").unwrap(), None);
    assert_eq!(direct(&cfg).get::<String>("k").unwrap(), None);
}

/// The other process of the test above.
fn journal_worker(spec: &str) {
    let (port, dir) = spec.split_once('|').unwrap();
    let cfg = config(
        Kind::Redis,
        &[port.parse().unwrap()],
        std::path::Path::new(dir),
    );
    let cache = CacheManager::new(cfg).unwrap();
    // The server is stopped: this waits one timeout, marks it down and records the delete.
    cache.delete("k").unwrap();
    assert!(state(&cache).starts_with("down"), "{}", state(&cache));
}

/// The Memcached item limit is learned again on a new connection: a server restarted on the
/// same port with a larger `-I` takes the larger values (it kept the old limit before).
#[test]
fn memcached_a_restart_with_a_larger_item_limit_is_learned() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let Some(server) = MemcachedServer::start_on(port, &["-I", "1m"]) else {
        return;
    };
    let cfg = config(Kind::Memcached, &[port], dir.path());
    let cache = direct(&cfg);
    let big = "x".repeat(2 << 20);
    cache.set("small", "1", None).unwrap();
    assert!(cache.set("big", &big, None).is_err(), "above -I 1m");
    drop(server);
    let _server = MemcachedServer::start_on(port, &["-I", "4m"]).unwrap();
    // The pooled connection died with the server: the next call (or the one after) connects.
    let _ = cache.get::<String>("small");
    cache.set("big", &big, None).unwrap();
    assert_eq!(
        cache.get::<String>("big").unwrap().map(|v| v.len()),
        Some(big.len())
    );
}
