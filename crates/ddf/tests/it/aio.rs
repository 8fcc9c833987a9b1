//! The async face ([`ddf::AsyncCacheManager`], feature `async`) against every backend.

use std::time::Duration;

use ddf::{AsyncCacheManager, CacheConfig};

fn assert_send<T: Send>(_: &T) {}
fn assert_send_sync<T: Send + Sync + Clone>() {}

fn pickle(dir: &std::path::Path) -> AsyncCacheManager {
    AsyncCacheManager::new(CacheConfig::default().with_pickle_dir(dir)).unwrap()
}

#[test]
fn the_handle_and_its_futures_are_send() {
    assert_send_sync::<AsyncCacheManager>();
    let dir = tempfile::tempdir().unwrap();
    let c = pickle(dir.path());
    // Not awaited: only their types are checked.
    assert_send(&c.get::<String>("k"));
    assert_send(&c.set("k", &std::cell::Cell::new(1), None));
    assert_send(&c.set_many(&[("k", 1)], None));
    assert_send(&c.get_many::<u8>(&["k"]));
    assert_send(&c.delete("k"));
    assert_send(&c.invalidate_pattern("k"));
    assert_send(&c.flush_all());
    assert_send(&c.delete_many(&["k"]));
    assert_send(&c.get_bytes("k"));
    assert_send(&c.set_bytes("k", b"v", None));
    assert_send(&c.get_json("k"));
    assert_send(&c.ping());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pickle_round_trip_inside_spawned_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let c = pickle(dir.path());
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                let k = format!("svc:{i}");
                c.set(&k, &vec![i; 3], Some(Duration::from_secs(60)))
                    .await
                    .unwrap();
                c.get::<Vec<u32>>(&k).await.unwrap()
            })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), Some(vec![i as u32; 3]));
    }
    assert_eq!(c.invalidate_pattern("svc:1").await.unwrap(), 7); // 1, 10..15
    assert_eq!(c.get::<Vec<u32>>("svc:1").await.unwrap(), None);
    assert!(c.delete("svc:2").await.unwrap());
    c.flush_all().await.unwrap();
    assert_eq!(c.get::<Vec<u32>>("svc:3").await.unwrap(), None);
    let s = c.stats();
    assert_eq!(
        (s.sets, s.hits, s.deletes, s.invalidated),
        (16, 16, 1, 7),
        "{s}"
    );
    assert!(c.ping().await.is_ok());
}

#[test]
fn a_future_polled_outside_a_runtime_runs_inline() {
    let dir = tempfile::tempdir().unwrap();
    let c = pickle(dir.path());
    // Another executor (no tokio runtime): the blocking calls run inline, never a panic.
    futures_lite_block_on(async {
        c.set("k", "v", None).await.unwrap();
        assert_eq!(c.get::<String>("k").await.unwrap().as_deref(), Some("v"));
        assert!(c.delete("k").await.unwrap());
    });
}

/// A minimal executor without a tokio runtime: polls with a no-op waker until ready (the
/// futures here complete without waiting on I/O readiness outside a runtime).
fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}

#[tokio::test]
async fn none_and_disabled_caches_miss() {
    let c = AsyncCacheManager::new(CacheConfig::from_ini_str("[cache]\nbackend = none\n").unwrap())
        .unwrap();
    c.set("k", &1, None).await.unwrap();
    assert_eq!(c.get::<i32>("k").await.unwrap(), None);
    let dir = tempfile::tempdir().unwrap();
    let off = AsyncCacheManager::new(
        CacheConfig::default()
            .with_pickle_dir(dir.path())
            .with_enabled(false),
    )
    .unwrap();
    off.set("k", &1, None).await.unwrap();
    assert_eq!(off.get::<i32>("k").await.unwrap(), None);
    assert_eq!(off.stats().misses, 1);
    let err = off.set("k", &1, Some(Duration::ZERO)).await.unwrap_err();
    assert!(matches!(err, ddf::Error::InvalidArgument(_)), "{err}");
}

mod conformance_suite {
    use std::path::Path;
    use std::time::Duration;

    use ddf::{AsyncCacheManager, CacheBackend, CacheConfig, ServerAddr};
    use ddf_testkit::{MemcachedServer, RedisCluster, RedisServer};

    use std::sync::Mutex;

    use crate::aio_face::{Blocked, runtime};
    use crate::conformance::{self, Caps};

    /// Keeps each cache the suite builds, for [`assert_up`].
    fn made(built: &Mutex<Vec<Blocked>>, c: Blocked) -> Blocked {
        built.lock().unwrap().push(c.clone());
        c
    }

    /// The suite ran on the server, not on the fallback: the breaker never opened.
    pub fn assert_up(rt: &tokio::runtime::Runtime, cache: &AsyncCacheManager) {
        let info = rt.block_on(cache.backend_info()).unwrap();
        let get = |k: &str| info.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("state").as_deref(), Some("up"), "{info:?}");
        assert_eq!(get("transitions").as_deref(), Some("0"), "{info:?}");
    }

    /// A server config whose fallback and journal live in `dir`.
    pub fn redis_config(port: u16, dir: &Path, ns: &str) -> CacheConfig {
        CacheConfig::default()
            .with_backend(CacheBackend::Redis)
            .with_redis("127.0.0.1", port)
            .with_pickle_dir(dir)
            .with_namespace(ns)
    }

    pub fn memcached_config(servers: &[MemcachedServer], dir: &Path, ns: &str) -> CacheConfig {
        let addrs = servers
            .iter()
            .map(|s| ServerAddr::parse(&s.server(), 11211).unwrap())
            .collect();
        CacheConfig::default()
            .with_backend(CacheBackend::Memcached)
            .with_memcached_servers(addrs)
            .with_pickle_dir(dir)
            .with_namespace(ns)
            .with_timeouts(Duration::from_millis(500), Duration::from_secs(1))
    }

    #[test]
    fn on_the_file_backend() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime();
        conformance::run(
            &|ns| {
                let cfg = CacheConfig::default()
                    .with_pickle_dir(dir.path())
                    .with_namespace(ns);
                Blocked::new(AsyncCacheManager::new(cfg).unwrap(), &rt)
            },
            Caps::default(),
        );
    }

    #[test]
    fn on_redis() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime();
        let built = Mutex::new(Vec::new());
        conformance::run(
            &|ns| {
                let cfg = redis_config(server.port(), dir.path(), ns);
                made(
                    &built,
                    Blocked::new(AsyncCacheManager::new(cfg).unwrap(), &rt),
                )
            },
            Caps::default(),
        );
        for c in built.lock().unwrap().iter() {
            assert_up(&rt, &c.cache);
        }
        let c = Blocked::new(
            AsyncCacheManager::new(redis_config(server.port(), dir.path(), "x:")).unwrap(),
            &rt,
        );
        let (status, _) = rt.block_on(c.cache.ping()).unwrap();
        assert!(status.detail.contains("state up"), "{}", status.detail);
    }

    #[test]
    fn on_a_redis_cluster() {
        let Some(cluster) = RedisCluster::start() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime();
        let built = Mutex::new(Vec::new());
        let nodes: Vec<ServerAddr> = cluster
            .addrs()
            .iter()
            .map(|a| ServerAddr::parse(a, 6379).unwrap())
            .collect();
        let cfg = |ns: &str| {
            CacheConfig::default()
                .with_backend(CacheBackend::Redis)
                .with_redis_cluster_nodes(nodes.clone())
                .with_pickle_dir(dir.path())
                .with_namespace(ns)
        };
        conformance::run(
            &|ns| {
                made(
                    &built,
                    Blocked::new(AsyncCacheManager::new(cfg(ns)).unwrap(), &rt),
                )
            },
            Caps::default(),
        );
        for c in built.lock().unwrap().iter() {
            assert_up(&rt, &c.cache);
        }
        // On the same cluster: 256 tasks of mixed calls, futures dropped at random points, the
        // history checked against the model, then every later answer checked exactly.
        use crate::aio_model::{
            LOADED_CONNECT, LOADED_TIMEOUT, every_later_answer_right, run_mix_on,
        };
        let cache =
            AsyncCacheManager::new(cfg("cmodel:").with_timeouts(LOADED_CONNECT, LOADED_TIMEOUT))
                .unwrap();
        let t = std::time::Instant::now();
        rt.block_on(async {
            let history = run_mix_on(&cache, 256, 30, 5000).await;
            every_later_answer_right(cache.clone(), "redis cluster", history).await;
        });
        eprintln!("redis cluster, the model run took {:?}", t.elapsed());
        assert_up(&rt, &cache);
    }

    #[test]
    fn on_three_memcached_servers() {
        let Some(servers) = (0..3)
            .map(|_| MemcachedServer::start())
            .collect::<Option<Vec<_>>>()
        else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime();
        let built = Mutex::new(Vec::new());
        conformance::run(
            &|ns| {
                let cfg = memcached_config(&servers, dir.path(), ns);
                made(
                    &built,
                    Blocked::new(AsyncCacheManager::new(cfg).unwrap(), &rt),
                )
            },
            Caps {
                ttl_sleep: Some(Duration::from_millis(2100)),
                ..Caps::default()
            },
        );
        for c in built.lock().unwrap().iter() {
            assert_up(&rt, &c.cache);
        }
    }

    /// A cache used from a second runtime while the first, which opened its connections, is
    /// alive and idle: `get` (the caller-driven connection) and `get_many` (the multiplexed
    /// one) open their own there instead of waiting on the idle runtime's I/O driver.
    #[test]
    fn a_second_runtime_while_the_first_idles() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let cache = AsyncCacheManager::new(redis_config(server.port(), dir.path(), "rt:")).unwrap();
        let current = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        let a = current();
        a.block_on(async {
            cache.set("k", &1, None).await.unwrap();
            let _: Vec<Option<i32>> = cache.get_many(&["k"]).await.unwrap();
        });
        let c = cache.clone();
        let seen = std::thread::spawn(move || {
            current().block_on(async {
                let one: Option<i32> = c.get("k").await.unwrap();
                let many: Vec<Option<i32>> = c.get_many(&["k"]).await.unwrap();
                (one, many)
            })
        })
        .join()
        .unwrap();
        assert_eq!(seen, (Some(1), vec![Some(1)]));
        assert_up(&a, &cache);
    }
}

mod tls {
    use std::sync::Arc;

    use ddf::testing::internals::RedisBackend;
    use ddf::{AsyncCacheManager, CacheBackend, CacheConfig, CacheManager, ServerAddr};
    use ddf_testkit::{RedisCluster, RedisServer, TlsFiles};

    /// What the server holds, read by the sync backend alone (no fallback in between).
    fn held(config: &CacheConfig, key: &str) -> Option<Vec<i32>> {
        let b = RedisBackend::from_config(config).unwrap();
        CacheManager::with_backend(config.clone(), Arc::new(b))
            .get(key)
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_async_client_speaks_tls() {
        let Some(tls) = TlsFiles::generate() else {
            return;
        };
        let Some(server) = RedisServer::start_tls(&tls, &[]) else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let mut config = CacheConfig::default()
            .with_backend(CacheBackend::Redis)
            .with_namespace("atls:")
            .with_pickle_dir(dir.path())
            .with_redis_url(Some(format!("rediss://localhost:{}/0", server.port())));
        config.redis_ca_file = Some(tls.ca());
        let cache = AsyncCacheManager::new(config.clone()).unwrap();
        cache.set("k", &[1, 2, 3], None).await.unwrap();
        assert_eq!(
            cache.get::<Vec<i32>>("k").await.unwrap(),
            Some(vec![1, 2, 3])
        );
        let check = config.clone();
        let on_server = tokio::task::spawn_blocking(move || held(&check, "k"))
            .await
            .unwrap();
        assert_eq!(on_server, Some(vec![1, 2, 3]), "written to the server");
        assert_eq!(cache.invalidate_pattern("").await.unwrap(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cluster_over_tls() {
        let Some(tls) = TlsFiles::generate() else {
            return;
        };
        let Some(cluster) = RedisCluster::start_tls(&tls) else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let nodes: Vec<ServerAddr> = cluster
            .addrs()
            .iter()
            .map(|a| ServerAddr::parse(a, 6379).unwrap())
            .collect();
        let mut config = CacheConfig::default()
            .with_backend(CacheBackend::Redis)
            .with_redis_cluster_nodes(nodes)
            .with_pickle_dir(dir.path())
            .with_namespace("act:")
            // Three TLS handshakes at once in a debug build on a loaded machine: the test is
            // about where the values go, not about the bounds (1 s / 2 s by default).
            .with_timeouts(
                std::time::Duration::from_secs(5),
                std::time::Duration::from_secs(5),
            );
        config.redis_ca_file = Some(tls.ca());
        let cache = AsyncCacheManager::new(config).unwrap();
        let keys: Vec<String> = (0..100).map(|i| format!("k:{i}")).collect();
        let items: Vec<(&str, usize)> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.as_str(), i))
            .collect();
        cache.set_many(&items, None).await.unwrap();
        let on_nodes: u64 = cluster
            .nodes
            .iter()
            .map(|n| {
                let size = cluster.cli(n.port(), &["DBSIZE"]);
                size.trim().parse::<u64>().unwrap()
            })
            .sum();
        assert_eq!(on_nodes, 100, "written to the cluster, not the fallback");
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let got = cache.get_many::<usize>(&refs).await.unwrap();
        assert!(got.iter().enumerate().all(|(i, v)| *v == Some(i)));
        assert_eq!(cache.invalidate_pattern("k:").await.unwrap(), 100);
        for n in &cluster.nodes {
            assert_eq!(cluster.cli(n.port(), &["DBSIZE"]).trim(), "0");
        }
    }
}
