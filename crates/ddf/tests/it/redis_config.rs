//! The Redis cache configurations the integration tests share (one server, a cluster, or
//! Sentinel), written once as `process.rs` holds the processes' clock.

use std::path::Path;
use std::time::Duration;

use ddf::{CacheBackend, CacheConfig, FallbackMode, ServerAddr};

/// Where the cache's Redis is.
pub enum Redis<'a> {
    /// One server on 127.0.0.1.
    Server(u16),
    /// A cluster, seeded with these `host:port` nodes.
    Cluster(&'a [String]),
    /// The master these `host:port` Sentinels name `master`.
    Sentinel(&'a [String], &'a str),
}

/// A Redis cache at `at` in `namespace`, its fallback files in `dir`, with these connect and
/// reply timeouts; its breaker retries after 200 ms (the default fallback otherwise).
pub fn redis(
    at: Redis<'_>,
    namespace: &str,
    dir: &Path,
    connect: Duration,
    timeout: Duration,
) -> CacheConfig {
    let parse = |addrs: &[String], port| {
        addrs
            .iter()
            .map(|a| ServerAddr::parse(a, port).unwrap())
            .collect()
    };
    let c = CacheConfig::default().with_backend(CacheBackend::Redis);
    let mut c = match at {
        Redis::Server(port) => c.with_redis("127.0.0.1", port),
        Redis::Cluster(nodes) => c.with_redis_cluster_nodes(parse(nodes, 6379)),
        Redis::Sentinel(sentinels, master) => {
            c.with_redis_sentinels(parse(sentinels, 26379), master)
        }
    }
    .with_namespace(namespace)
    .with_pickle_dir(dir)
    .with_timeouts(connect, timeout);
    c.breaker_retry = Duration::from_millis(200);
    c
}

/// One side of a near cache coherence test: with `near`, the reader, through the near cache
/// and without a fallback; without, the writer, which must know which writes reached the
/// server (`FallbackMode::Error`).
pub fn near_or_writer(mut c: CacheConfig, near: bool) -> CacheConfig {
    c.fallback = if near {
        FallbackMode::None
    } else {
        FallbackMode::Error
    };
    c.near_cache = near;
    c
}
