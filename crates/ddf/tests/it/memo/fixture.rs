//! Set-ups the memoization and `get_or_set` tests share (`memo`, `amemo`, `stampede`,
//! `stampede_refresh`): each server backend's configs over servers started here (free loopback
//! ports, stopped when dropped; `None` where the server is not installed, a failure under
//! `DDF_TEST_REQUIRE_SERVERS=1`), a runtime, and callers that start together.

use std::sync::Barrier;
#[cfg(feature = "redis")]
use std::{path::Path, time::Duration};

#[cfg(feature = "redis")]
use ddf::FallbackMode;
use ddf::{CacheBackend, CacheConfig};
#[cfg(feature = "memcached")]
use ddf_testkit::MemcachedServer;
#[cfg(feature = "redis")]
use ddf_testkit::RedisServer;

/// A redis-server, and a config of each Redis backend (`redis`, `redis_pickle`) over it.
#[cfg(feature = "redis")]
pub(crate) fn redis() -> Option<(RedisServer, Vec<CacheConfig>)> {
    let server = RedisServer::start()?;
    let configs = [CacheBackend::Redis, CacheBackend::RedisPickle]
        .map(|backend| {
            CacheConfig::default()
                .with_backend(backend)
                .with_redis("127.0.0.1", server.port())
        })
        .into();
    Some((server, configs))
}

/// Two memcached servers, and a config of each Memcached backend (`memcached`,
/// `memcached_pickle`) over both.
#[cfg(feature = "memcached")]
pub(crate) fn memcached() -> Option<(Vec<MemcachedServer>, Vec<CacheConfig>)> {
    let servers: Vec<_> = (0..2)
        .map(|_| MemcachedServer::start())
        .collect::<Option<_>>()?;
    let addrs: Vec<ddf::ServerAddr> = servers
        .iter()
        .map(|s| ddf::ServerAddr::parse(&s.server(), 11211).unwrap())
        .collect();
    let configs = [CacheBackend::Memcached, CacheBackend::MemcachedPickle]
        .map(|backend| {
            CacheConfig::default()
                .with_backend(backend)
                .with_memcached_servers(addrs.clone())
        })
        .into();
    Some((servers, configs))
}

/// The timeouts of [`redis_to_stop`]'s configs: connect...
#[cfg(feature = "redis")]
pub(crate) const STOP_CONNECT: Duration = Duration::from_millis(300);
/// ... and each read or write.
#[cfg(feature = "redis")]
pub(crate) const STOP_TIMEOUT: Duration = Duration::from_millis(400);

/// A redis-server to stop (SIGSTOP) mid-test, and a config of the `redis` backend over it for
/// each fallback (`pickle`, into `dir`; `error`), with the short timeouts above.
#[cfg(feature = "redis")]
pub(crate) fn redis_to_stop(dir: &Path) -> Option<(RedisServer, Vec<(FallbackMode, CacheConfig)>)> {
    let port = ddf_testkit::free_port();
    let server = RedisServer::start_on(port, &[])?;
    let configs = [FallbackMode::Pickle, FallbackMode::Error]
        .map(|fallback| {
            let mut c = CacheConfig::default()
                .with_backend(CacheBackend::Redis)
                .with_redis("127.0.0.1", port)
                .with_pickle_dir(dir)
                .with_timeouts(STOP_CONNECT, STOP_TIMEOUT);
            c.fallback = fallback;
            (fallback, c)
        })
        .into();
    Some((server, configs))
}

/// A multi-threaded tokio runtime of `workers` threads, timers on.
pub(crate) fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `call(i)` on `n` threads that start together (a barrier); what each returned, in
/// order. A panic in a call fails the test.
pub(crate) fn together<R: Send>(n: usize, call: impl Fn(usize) -> R + Sync) -> Vec<R> {
    let start = Barrier::new(n);
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..n)
            .map(|i| {
                let (call, start) = (&call, &start);
                s.spawn(move || {
                    start.wait();
                    call(i)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    })
}
