//! Bounded waits (issue #14 point 5, "waits"): one call never waits longer than its timeout
//! plus one connect timeout, whatever the batch size, against a stopped (SIGSTOP) server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ddf::testing::internals::MemcachedBackend;
use ddf::testing::internals::RedisBackend;
use ddf::{CacheBackend, CacheConfig, CacheManager};
use ddf_testkit::{DripProxy, FakeReply, FakeServer, MemcachedServer, RedisServer, TlsFiles};

const TIMEOUT: Duration = Duration::from_millis(300);
const CONNECT: Duration = Duration::from_millis(300);
/// What a loaded 2-core test machine may add to a bound.
const SLACK: Duration = Duration::from_millis(250);

fn bound() -> Duration {
    TIMEOUT + CONNECT + SLACK
}

/// Runs `f`, which must fail, and returns how long it took.
fn failing<T: std::fmt::Debug>(what: &str, f: impl FnOnce() -> ddf::Result<T>) -> Duration {
    let t = Instant::now();
    let r = f();
    let took = t.elapsed();
    assert!(r.is_err(), "{what}: {r:?}");
    eprintln!("{what}: {took:?}");
    took
}

fn redis_direct(server: &RedisServer) -> CacheManager {
    let config = CacheConfig::default()
        .with_backend(CacheBackend::Redis)
        .with_redis("127.0.0.1", server.port())
        .with_namespace("w:")
        .with_timeouts(CONNECT, TIMEOUT);
    let backend = RedisBackend::from_config(&config).unwrap();
    CacheManager::with_backend(config, Arc::new(backend))
}

#[test]
fn redis_batches_on_a_stopped_server_wait_one_timeout() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let cache = redis_direct(&server);
    let items: Vec<(String, i32)> = (0..20).map(|i| (format!("k{i}"), i)).collect();
    let refs: Vec<(&str, i32)> = items.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let keys: Vec<&str> = refs.iter().map(|(k, _)| *k).collect();
    // A pooled connection exists: the calls below use it, then reconnect.
    cache.set_many(&refs, None).unwrap();
    cache.set("other", &99, None).unwrap();
    server.process.signal("STOP");
    let mut worst = Duration::ZERO;
    for _ in 0..2 {
        worst = worst.max(failing("set_many", || cache.set_many(&refs, None)));
        worst = worst.max(failing("get_many", || cache.get_many::<i32>(&keys)));
        worst = worst.max(failing("delete_many", || cache.delete_many(&keys)));
        worst = worst.max(failing("invalidate_pattern", || {
            cache.invalidate_pattern("k")
        }));
    }
    server.process.signal("CONT");
    assert!(worst < bound(), "worst call {worst:?}, bound {:?}", bound());
    // The connections that timed out were dropped: no late reply (here, of the requests sent
    // while the server was stopped, which it runs once continued) is taken for a new one.
    assert_eq!(cache.get::<i32>("other").unwrap(), Some(99));
}

#[test]
fn memcached_batches_on_a_stopped_server_wait_one_timeout() {
    let Some(server) = MemcachedServer::start() else {
        return;
    };
    let config = CacheConfig::default()
        .with_backend(CacheBackend::Memcached)
        .with_memcached_servers(vec![
            ddf::ServerAddr::parse(&server.server(), 11211).unwrap(),
        ])
        .with_namespace("w:")
        .with_timeouts(CONNECT, TIMEOUT);
    // The backend itself (no breaker): every call below goes to the stopped server.
    let backend = MemcachedBackend::from_config(&config).unwrap();
    let cache = CacheManager::with_backend(config, Arc::new(backend));
    let items: Vec<(String, i32)> = (0..200).map(|i| (format!("k{i}"), i)).collect();
    let refs: Vec<(&str, i32)> = items.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let keys: Vec<&str> = refs.iter().map(|(k, _)| *k).collect();
    cache.set_many(&refs, None).unwrap();
    server.process.signal("STOP");
    let mut worst = Duration::ZERO;
    for _ in 0..2 {
        worst = worst.max(failing("set_many", || cache.set_many(&refs, None)));
        worst = worst.max(failing("get_many", || cache.get_many::<i32>(&keys)));
        worst = worst.max(failing("delete_many", || cache.delete_many(&keys)));
        worst = worst.max(failing("invalidate_pattern", || {
            cache.invalidate_pattern("k")
        }));
    }
    server.process.signal("CONT");
    assert!(worst < bound(), "worst call {worst:?}, bound {:?}", bound());
}

/// A fake Redis that accepts `AUTH` and stalls on `SELECT`: the whole connection set-up
/// (`AUTH`, `SELECT`) ends within `connect_timeout`, not one connect timeout per set-up reply.
#[test]
fn redis_connection_set_up_fits_in_the_connect_timeout() {
    let fake = FakeServer::start(|line: &[u8]| match line {
        b"AUTH" => FakeReply::Send(b"+OK\r\n".to_vec()),
        b"SELECT" => FakeReply::SendThenStall(Vec::new()),
        _ => FakeReply::Nothing,
    });
    // A long operation timeout, so that only the set-up's deadline can end the call early.
    let timeout = Duration::from_secs(3);
    let mut config = CacheConfig::default()
        .with_backend(CacheBackend::Redis)
        .with_timeouts(CONNECT, timeout);
    config.redis_url = Some(ddf::Secret::new(format!(
        "redis://:pw@127.0.0.1:{}/2",
        fake.port()
    )));
    let backend = RedisBackend::from_config(&config).unwrap();
    let cache = CacheManager::with_backend(config, Arc::new(backend));
    let took = failing("get through a stalled SELECT", || cache.get::<i32>("k"));
    assert!(took < CONNECT + SLACK, "{took:?}");
}

/// A fake Redis that drip-feeds its reply to `GET`, one byte every half timeout (each socket
/// read is within the timeout): the call ends within its timeout, not one timeout per byte (57
/// bytes: 8.5 s before).
#[test]
fn redis_a_drip_fed_reply_ends_within_the_timeout() {
    let mut reply = b"$50\r\n".to_vec();
    reply.extend([b'x'; 50]);
    reply.extend(b"\r\n");
    let every = TIMEOUT / 2;
    let fake = FakeServer::start(move |line: &[u8]| match line {
        b"GET" => FakeReply::Drip(reply.clone(), every),
        _ => FakeReply::Nothing,
    });
    let mut config = CacheConfig::default()
        .with_backend(CacheBackend::Redis)
        .with_redis("127.0.0.1", fake.port())
        .with_timeouts(CONNECT, TIMEOUT);
    config.namespace = "w:".to_owned();
    let backend = RedisBackend::from_config(&config).unwrap();
    let cache = CacheManager::with_backend(config, Arc::new(backend));
    let took = failing("get of a drip-fed reply", || cache.get::<String>("k"));
    // Generous (a loaded machine), and far below one timeout per byte.
    assert!(took < TIMEOUT + Duration::from_secs(2), "{took:?}");
}

/// A value whose GET reply is long enough that one byte every half timeout takes far longer
/// than the timeout: with TLS, the reply's record is about 80 bytes (12 s at 150 ms a byte).
fn drip_fed_get(cache: &CacheManager, proxy: &DripProxy) -> Duration {
    cache.set("k", &"x".repeat(50), None).unwrap();
    assert_eq!(cache.get::<String>("k").unwrap().map(|v| v.len()), Some(50));
    let connections = proxy.connections();
    proxy.drip(Some(TIMEOUT / 2));
    let t = Instant::now();
    let e = cache.get::<String>("k").unwrap_err();
    let took = t.elapsed();
    eprintln!("get of a drip-fed reply: {took:?}: {e}");
    // The pooled connection was the one drip-fed (not a new one timing out its set-up), and
    // the error says so.
    assert_eq!(proxy.connections(), connections);
    assert!(
        e.to_string().contains("timed out waiting for a reply"),
        "{e}"
    );
    took
}

/// A real TLS redis-server behind a proxy that drip-feeds its bytes, one every half timeout,
/// once the connection is set up: the request ends within its timeout (redis-rs's TLS
/// connection bounded each reply, not each request: one timeout per byte of the TLS record).
#[test]
fn redis_a_drip_fed_tls_reply_ends_within_the_timeout() {
    let Some(tls) = TlsFiles::generate() else {
        return;
    };
    let Some(server) = RedisServer::start_tls(&tls, &[]) else {
        return;
    };
    let proxy = DripProxy::start(server.port());
    // A handshake in a debug build on a loaded machine: a generous connect timeout (the drip
    // starts after it).
    let mut config = CacheConfig::default()
        .with_backend(CacheBackend::Redis)
        .with_namespace("w:")
        .with_redis_url(Some(format!("rediss://127.0.0.1:{}/0", proxy.port())))
        .with_timeouts(Duration::from_secs(3), TIMEOUT);
    config.redis_ca_file = Some(tls.ca());
    let backend = RedisBackend::from_config(&config).unwrap();
    let cache = CacheManager::with_backend(config, Arc::new(backend));
    let took = drip_fed_get(&cache, &proxy);
    assert!(took < TIMEOUT + Duration::from_secs(2), "{took:?}");
}

/// The master a Sentinel names, a real redis-server behind the drip-feeding proxy: the request
/// ends within its timeout (the master's connection was redis-rs's, bounded per reply). The
/// Sentinel is a fake that names the proxy: a real one would mark the drip-fed master down.
#[test]
fn redis_a_drip_fed_sentinel_master_reply_ends_within_the_timeout() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let proxy = DripProxy::start(server.port());
    let at = proxy.port().to_string();
    let named = format!("*2\r\n$9\r\n127.0.0.1\r\n${}\r\n{at}\r\n", at.len()).into_bytes();
    let sentinel = FakeServer::start(move |line: &[u8]| match line {
        b"get-master-addr-by-name" => FakeReply::Send(named.clone()),
        _ => FakeReply::Nothing,
    });
    let sentinels = vec![ddf::ServerAddr::parse(&sentinel.server(), 26379).unwrap()];
    let config = CacheConfig::default()
        .with_backend(CacheBackend::Redis)
        .with_redis_sentinels(sentinels, "m")
        .with_namespace("w:")
        .with_timeouts(CONNECT, TIMEOUT);
    let backend = RedisBackend::from_config(&config).unwrap();
    let cache = CacheManager::with_backend(config, Arc::new(backend));
    let took = drip_fed_get(&cache, &proxy);
    assert!(took < TIMEOUT + Duration::from_secs(2), "{took:?}");
}

/// Builds a cache on `cfg` with an invalidation recorded and every server stopped (`stop`
/// stops them): how long the build and a first `get` took, and what the cache says is pending.
fn built_with_records_pending(cfg: &CacheConfig, stop: impl FnOnce()) -> (Duration, String) {
    let recorder = CacheManager::new(cfg.clone()).unwrap();
    recorder.set("k", &1, None).unwrap();
    stop();
    let _ = recorder.delete("k");
    drop(recorder);
    let t = Instant::now();
    let cache = CacheManager::new(cfg.clone()).unwrap();
    let got = cache.get::<i32>("k");
    let took = t.elapsed();
    assert!(!matches!(got, Ok(Some(_))), "the deleted value was served");
    let pending = cache
        .backend_info()
        .unwrap()
        .into_iter()
        .find(|(k, _)| k == "recorded invalidations pending")
        .map(|(_, v)| v)
        .unwrap_or_default();
    (took, pending)
}

/// A cache built with invalidations recorded while every server is stopped (standalone Redis,
/// two Memcached servers): the start-up recovery waits at most one timeout, the rest goes on in
/// the background (the record stays pending, the fallback serves).
#[test]
fn building_with_records_pending_on_stopped_servers_waits_one_timeout() {
    let (Some(redis), Some(mc1), Some(mc2)) = (
        RedisServer::start(),
        MemcachedServer::start(),
        MemcachedServer::start(),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let redis_cfg = CacheConfig::default()
        .with_backend(CacheBackend::Redis)
        .with_redis("127.0.0.1", redis.port())
        .with_namespace("w:")
        .with_pickle_dir(dir.path())
        .with_timeouts(CONNECT, TIMEOUT);
    let mc_cfg = CacheConfig::default()
        .with_backend(CacheBackend::Memcached)
        .with_memcached_servers(
            [&mc1, &mc2]
                .iter()
                .map(|s| ddf::ServerAddr::parse(&s.server(), 11211).unwrap())
                .collect(),
        )
        .with_namespace("w:")
        .with_pickle_dir(dir.path())
        .with_timeouts(CONNECT, TIMEOUT);
    let (redis_took, redis_pending) =
        built_with_records_pending(&redis_cfg, || redis.process.signal("STOP"));
    let (mc_took, mc_pending) = built_with_records_pending(&mc_cfg, || {
        mc1.process.signal("STOP");
        mc2.process.signal("STOP");
    });
    redis.process.signal("CONT");
    mc1.process.signal("CONT");
    mc2.process.signal("CONT");
    eprintln!(
        "build + first get with records pending, servers stopped: redis {redis_took:?}, \
         memcached (2 servers) {mc_took:?}"
    );
    assert_eq!((redis_pending.as_str(), mc_pending.as_str()), ("1", "1"));
    // Generous: "does not hang".
    let hang = bound() + Duration::from_secs(2);
    assert!(
        redis_took < hang && mc_took < hang,
        "{redis_took:?} {mc_took:?}"
    );
}
