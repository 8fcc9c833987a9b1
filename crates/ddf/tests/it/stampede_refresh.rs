//! `get_or_set` within one process and at the edges (issue #17): stale-while-revalidate on
//! every backend and through the attribute, a failed computation, the in-process shared wait,
//! `compare_and_delete`'s contract, the attribute on an `async fn`, and the lease during an
//! outage. Counts, never durations. The cross-process runs are in `stampede`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ddf::testing::internals::{MemcachedBackend, RedisBackend};
use ddf::{Backend, CacheManager, Item, RefreshOptions, cache_with_invalidation};

use crate::memo::fixture::{runtime, together};
use crate::stampede::{KEY, Target, config, wait_until};

static STALE_CACHE: std::sync::OnceLock<CacheManager> = std::sync::OnceLock::new();
static STALE_RAN: AtomicUsize = AtomicUsize::new(0);
static STALE_RELEASE: AtomicBool = AtomicBool::new(false);

/// The attribute's stale-while-revalidate: the first call returns 1, every refresh blocks
/// until released and returns how many computations ran.
#[cache_with_invalidation(cache = STALE_CACHE.get().unwrap(), ttl = 1, stale_ttl = 120, early_refresh = 1.0)]
fn stale_counted() -> Result<usize, String> {
    let n = STALE_RAN.fetch_add(1, Ordering::SeqCst) + 1;
    if n > 1 {
        wait_until("the test's release", || {
            STALE_RELEASE.load(Ordering::SeqCst)
        });
    }
    Ok(n)
}

/// Waits past the soft expiry of a value stored now with a TTL of 1 s.
fn past_the_soft_expiry() {
    std::thread::sleep(Duration::from_millis(1100));
}

#[test]
fn the_attribute_serves_stale_while_one_refreshes() {
    let dir = tempfile::tempdir().unwrap();
    STALE_CACHE
        .set(CacheManager::new(config("pickle", dir.path())).unwrap())
        .unwrap();
    assert_eq!(stale_counted(), Ok(1));
    assert_eq!(stale_counted(), Ok(1), "fresh: from the cache");
    past_the_soft_expiry();
    let returned = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let returned = returned.clone();
            std::thread::spawn(move || {
                let v = stale_counted().unwrap();
                returned.fetch_add(1, Ordering::SeqCst);
                v
            })
        })
        .collect();
    wait_until("every caller but the refresher returned", || {
        returned.load(Ordering::SeqCst) == 7
    });
    // The refresher may not have started its computation yet: wait for it.
    wait_until("the refresh runs", || STALE_RAN.load(Ordering::SeqCst) >= 2);
    assert_eq!(STALE_RAN.load(Ordering::SeqCst), 2, "one refresh");
    STALE_RELEASE.store(true, Ordering::SeqCst);
    let mut got: Vec<usize> = callers.into_iter().map(|c| c.join().unwrap()).collect();
    got.sort_unstable();
    assert_eq!(got, [1, 1, 1, 1, 1, 1, 1, 2]);
    assert_eq!(stale_counted(), Ok(2), "the refreshed value is stored");
}

/// With `stale_ttl`, after the first fill no caller waits for a computation: once the value is
/// past its TTL, one caller refreshes it (its computation is held until every other caller has
/// returned, so a caller that waited for it would hang the test) and the others get the stale
/// value at once.
fn stale_while_revalidate(target: &str) {
    let dir = tempfile::tempdir().unwrap();
    let cache = CacheManager::new(config(target, dir.path())).unwrap();
    let opts = RefreshOptions::new().stale_ttl(Duration::from_secs(120));
    let ttl = Some(Duration::from_secs(1));
    let first: u32 = cache
        .try_get_or_set_with(KEY, ttl, opts, || Ok::<_, ddf::Error>(1))
        .unwrap();
    assert_eq!(first, 1);
    // Past the soft expiry (the server keeps the value for stale_ttl more).
    past_the_soft_expiry();
    let n = 8;
    let (ran, returned) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let release = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..n)
        .map(|_| {
            let (cache, ran, returned, release) = (
                cache.clone(),
                ran.clone(),
                returned.clone(),
                release.clone(),
            );
            std::thread::spawn(move || {
                let v: u32 = cache
                    .try_get_or_set_with(KEY, ttl, opts, || {
                        ran.fetch_add(1, Ordering::SeqCst);
                        wait_until("the test's release", || release.load(Ordering::SeqCst));
                        Ok::<_, ddf::Error>(2)
                    })
                    .unwrap();
                returned.fetch_add(1, Ordering::SeqCst);
                v
            })
        })
        .collect();
    wait_until("every caller but the refresher returned", || {
        returned.load(Ordering::SeqCst) == n - 1
    });
    // The refresher may return the others' answer before its own computation starts (it takes
    // the lease, then computes): wait for it rather than expect it.
    wait_until("the refresher computes", || ran.load(Ordering::SeqCst) >= 1);
    assert_eq!(ran.load(Ordering::SeqCst), 1, "one caller refreshes");
    release.store(true, Ordering::SeqCst);
    let mut got: Vec<u32> = callers.into_iter().map(|c| c.join().unwrap()).collect();
    got.sort_unstable();
    assert_eq!(
        got[..n - 1],
        vec![1; n - 1],
        "the others got the stale value"
    );
    assert_eq!(got[n - 1], 2, "the refresher got the new one");
    let now: u32 = cache
        .try_get_or_set_with(KEY, ttl, opts, || Ok::<_, ddf::Error>(3))
        .unwrap();
    assert_eq!(now, 2, "the refreshed value is stored");
}

#[test]
fn file_backend_serves_stale_while_one_refreshes() {
    stale_while_revalidate("pickle");
}

#[test]
fn redis_serves_stale_while_one_refreshes() {
    if let Some(t) = Target::redis() {
        stale_while_revalidate(&t.name);
    }
}

#[test]
fn memcached_serves_stale_while_one_refreshes() {
    if let Some(t) = Target::memcached() {
        stale_while_revalidate(&t.name);
    }
}

/// A failed computation is returned and stores nothing; the next caller computes.
#[test]
fn a_failed_computation_is_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let cache = CacheManager::new(config("pickle", dir.path())).unwrap();
    let r: Result<u32, ddf::Error> = cache.try_get_or_set(KEY, None, || {
        Err(ddf::Error::InvalidArgument("upstream down".into()))
    });
    assert!(r.is_err());
    assert_eq!(cache.get::<u32>(KEY).unwrap(), None);
    assert_eq!(cache.get_or_set(KEY, None, || 5u32).unwrap(), 5);
    assert_eq!(cache.get::<u32>(KEY).unwrap(), Some(5));
    assert_eq!(
        cache.keys("", 10).unwrap().len(),
        1,
        "the lease was released"
    );
}

/// Threads of one process that miss together compute once (the in-process wait is shared).
#[test]
fn threads_compute_once() {
    let dir = tempfile::tempdir().unwrap();
    let cache = CacheManager::new(config("pickle", dir.path())).unwrap();
    let ran = AtomicUsize::new(0);
    let got = together(16, |_| {
        cache
            .get_or_set(KEY, None, || {
                ran.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(100));
                7u32
            })
            .unwrap()
    });
    assert_eq!(got, [7; 16]);
    assert_eq!(ran.load(Ordering::SeqCst), 1);
}

/// `compare_and_delete` removes a key only while it holds the expected bytes (what releases a
/// lease without removing one a waiter took over), on every backend, long (Memcached-mapped)
/// keys included.
pub(crate) fn compare_and_delete_contract(b: &dyn Backend) {
    for key in ["lease", &"long".repeat(100)] {
        let ttl = Some(Duration::from_secs(60));
        assert!(b.add(key, &Item::new(b"tok1".to_vec(), 0), ttl).unwrap());
        assert!(
            !b.compare_and_delete(key, b"tok2").unwrap(),
            "another token"
        );
        assert!(
            !b.compare_and_delete(key, b"tok").unwrap(),
            "a prefix of it"
        );
        assert_eq!(b.get(key).unwrap().unwrap().data, b"tok1", "left in place");
        assert!(b.compare_and_delete(key, b"tok1").unwrap());
        assert_eq!(b.get(key).unwrap(), None);
        assert!(!b.compare_and_delete(key, b"tok1").unwrap(), "already gone");
    }
}

/// After `get_or_set` the lease is released (not left to expire).
fn lease_released(cache: &CacheManager) {
    assert_eq!(cache.get_or_set("released", None, || 1u32).unwrap(), 1);
    assert_eq!(cache.get_bytes("ddf-lease:released").unwrap(), None);
}

#[test]
fn compare_and_delete_on_every_backend() {
    let dir = tempfile::tempdir().unwrap();
    // The file backend's contract: a unit test of `stampede` (its type is crate-private).
    lease_released(&CacheManager::new(config("pickle", dir.path())).unwrap());
    if let Some(t) = Target::redis() {
        let cfg = config(&t.name, dir.path());
        compare_and_delete_contract(&RedisBackend::from_config(&cfg).unwrap());
        lease_released(&CacheManager::new(cfg).unwrap());
    }
    if let Some(t) = Target::memcached() {
        let cfg = config(&t.name, dir.path());
        compare_and_delete_contract(&MemcachedBackend::from_config(&cfg).unwrap());
        lease_released(&CacheManager::new(cfg).unwrap());
    }
}

static ASYNC_RAN: AtomicUsize = AtomicUsize::new(0);

/// A service with its own async cache: two of them on one server are two caches (no shared
/// in-process flight), as two processes are.
struct AsyncSvc {
    cache: ddf::AsyncCacheManager,
}

impl AsyncSvc {
    #[cache_with_invalidation(cache = self.cache, ttl = 60, lock = true)]
    async fn slow(&self) -> String {
        ASYNC_RAN.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(200)).await;
        "the value".to_owned()
    }
}

/// The attribute with `lock = true` on an `async fn`: two caches on one Redis, 8 tasks each,
/// compute once.
#[test]
fn the_attribute_with_lock_on_an_async_fn_computes_once_across_caches() {
    let Some(target) = Target::redis() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    runtime(4).block_on(async {
        let svcs: Vec<_> = (0..2)
            .map(|_| {
                Arc::new(AsyncSvc {
                    cache: ddf::AsyncCacheManager::new(config(&target.name, dir.path())).unwrap(),
                })
            })
            .collect();
        let calls: Vec<_> = (0..16)
            .map(|i| {
                let svc = svcs[i % 2].clone();
                tokio::spawn(async move { svc.slow().await })
            })
            .collect();
        for c in calls {
            assert_eq!(c.await.unwrap(), "the value");
        }
    });
    assert_eq!(ASYNC_RAN.load(Ordering::SeqCst), 1);
}

/// During an outage the lease follows the fallback rules (`fallback = pickle`): it lives in the
/// outage's entries of the local directory. Every caller gets a value and no caller waits for
/// a lease it cannot see; how many compute is not exact there (two caches, as two processes,
/// open their outages at different times, and the entries of an outage one of them closes
/// are removed: measured 2 to 4 computations of 8 callers), but every caller gets a value one
/// of them computed. When the server returns the outage's entries are forgotten, the lease
/// (neither taken nor released on the server, neither recorded) is not there, and the next
/// miss computes exactly once on the server: every caller gets that computation's value.
fn lease_during_an_outage(kind: crate::resilience::Kind) {
    use crate::resilience::{Server, config, wait_until_up};
    let dir = tempfile::tempdir().unwrap();
    let port = ddf_testkit::free_port();
    let Some(mut server) = Server::start_on(kind, port) else {
        return;
    };
    let cfg = config(kind, &[port], dir.path());
    let caches = [
        CacheManager::new(cfg.clone()).unwrap(),
        CacheManager::new(cfg).unwrap(),
    ];
    server.process().signal("STOP");
    for c in &caches {
        for _ in 0..2 {
            assert_eq!(c.get::<i64>("probe").unwrap(), None);
        }
    }
    let ran = Arc::new(AtomicUsize::new(0));
    // Each computation returns its number: the callers' values say which one they got.
    let run = |ran: &Arc<AtomicUsize>| -> Vec<usize> {
        together(8, |i| {
            caches[i % 2]
                .get_or_set(KEY, Some(Duration::from_secs(60)), || {
                    let n = ran.fetch_add(1, Ordering::SeqCst) + 1;
                    std::thread::sleep(Duration::from_millis(200));
                    n
                })
                .unwrap()
        })
    };
    let got = run(&ran);
    let during = ran.load(Ordering::SeqCst);
    println!("computations during the outage: {during} of 8 callers");
    assert!(
        got.iter().all(|v| (1..=during).contains(v)),
        "{got:?}: only values computed during the outage ({during})"
    );
    server.process().signal("CONT");
    for c in &caches {
        wait_until_up(c);
    }
    let got = run(&ran);
    assert_eq!(
        ran.load(Ordering::SeqCst),
        during + 1,
        "once more on the server"
    );
    assert!(
        got.iter().all(|v| *v == during + 1),
        "{got:?}: every caller gets the server's one computation"
    );
    assert_eq!(
        caches[0].get_bytes(&format!("ddf-lease:{KEY}")).unwrap(),
        None
    );
}

#[test]
fn lease_during_an_outage_on_redis() {
    lease_during_an_outage(crate::resilience::Kind::Redis);
}

#[test]
fn lease_during_an_outage_on_memcached() {
    lease_during_an_outage(crate::resilience::Kind::Memcached);
}

/// A nested call that finds its own key in flight (same thread) computes without waiting and
/// stores nothing: it holds no lease, so its value could overwrite a newer one.
#[test]
fn a_nested_call_on_its_own_key_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cache = CacheManager::new(config("pickle", dir.path())).unwrap();
    let r: Result<u32, ddf::Error> = cache.try_get_or_set("nested", None, || {
        assert_eq!(cache.get_or_set("nested", None, || 1u32).unwrap(), 1);
        Err(ddf::Error::InvalidArgument("the outer call fails".into()))
    });
    assert!(r.is_err());
    assert_eq!(cache.get::<u32>("nested").unwrap(), None, "nothing stored");
    assert_eq!(cache.get_bytes("ddf-lease:nested").unwrap(), None);
}

/// A computation that panics releases its lease (the others need not wait out lease_ttl).
#[test]
fn a_panicking_computation_releases_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    let cache = CacheManager::new(config("pickle", dir.path())).unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        cache.get_or_set("boom", None, || -> u32 { panic!("the computation fails") })
    }));
    assert!(r.is_err());
    assert_eq!(cache.get_bytes("ddf-lease:boom").unwrap(), None);
    assert_eq!(cache.get_or_set("boom", None, || 3u32).unwrap(), 3);
}

/// An async caller whose future is dropped mid-computation releases its lease (a task spawned
/// on the runtime).
#[test]
fn a_dropped_async_call_releases_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(2);
    let mut cfg = config("pickle", dir.path());
    // Far longer than the wait below: the lease is released, not expired.
    cfg.lease_ttl = Duration::from_secs(600);
    rt.block_on(async {
        let cache = ddf::AsyncCacheManager::new(cfg).unwrap();
        let started = Arc::new(tokio::sync::Notify::new());
        let call = {
            let (cache, started) = (cache.clone(), started.clone());
            tokio::spawn(async move {
                cache
                    .get_or_set("dropped", None, || async move {
                        started.notify_one();
                        std::future::pending::<u32>().await
                    })
                    .await
            })
        };
        started.notified().await;
        assert!(
            cache
                .get_bytes("ddf-lease:dropped")
                .await
                .unwrap()
                .is_some()
        );
        call.abort();
        assert!(call.await.unwrap_err().is_cancelled());
        let start = Instant::now();
        while cache
            .get_bytes("ddf-lease:dropped")
            .await
            .unwrap()
            .is_some()
        {
            assert!(start.elapsed() < Duration::from_secs(20), "never released");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            cache
                .get_or_set("dropped", None, || async { 4u32 })
                .await
                .unwrap(),
            4
        );
    });
}

/// Threads of one process waiting for a lease held elsewhere give up at their lock_timeout
/// together and compute at once (not one after another, each waiting out the previous one's
/// computation): every computation waits here until all four have started. Nothing is stored.
#[test]
fn waiters_past_lock_timeout_compute_together() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config("pickle", dir.path());
    cfg.lock_timeout = Duration::from_millis(200);
    let cache = CacheManager::new(cfg).unwrap();
    // Another process's lease, alive for the whole test.
    assert!(
        cache
            .add("ddf-lease:held", "theirs", Some(Duration::from_secs(600)))
            .unwrap()
    );
    let arrived = AtomicUsize::new(0);
    let got = together(4, |_| {
        cache
            .get_or_set("held", None, || {
                arrived.fetch_add(1, Ordering::SeqCst);
                wait_until("every caller computing", || {
                    arrived.load(Ordering::SeqCst) == 4
                });
                5u32
            })
            .unwrap()
    });
    assert_eq!(got, [5; 4]);
    assert_eq!(arrived.load(Ordering::SeqCst), 4);
    assert_eq!(cache.get::<u32>("held").unwrap(), None, "not stored");
}

/// A leader whose lease was taken over while it computed (by its own clock still within the
/// lease) does not store: the store is fenced on the server (file backend, Redis). Memcached
/// keeps only the clock margin (docs/memoize.md).
fn a_leader_whose_lease_was_taken_over_does_not_store(cache: &CacheManager) {
    let v = cache
        .get_or_set("fenced", None, || {
            // A waiter's lease replaces ours (a `set`: not an invalidation, which would stop
            // the store by itself).
            cache
                .set(
                    "ddf-lease:fenced",
                    "a waiter's",
                    Some(Duration::from_secs(600)),
                )
                .unwrap();
            6u32
        })
        .unwrap();
    assert_eq!(v, 6, "returned");
    assert_eq!(cache.get::<u32>("fenced").unwrap(), None, "not stored");
    assert_eq!(
        cache.get::<String>("ddf-lease:fenced").unwrap().as_deref(),
        Some("a waiter's"),
        "the waiter's lease is left alone"
    );
}

#[test]
fn the_store_is_fenced_by_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    for t in [Target::pickle(), Target::redis()].into_iter().flatten() {
        let cache = CacheManager::new(config(&t.name, dir.path())).unwrap();
        a_leader_whose_lease_was_taken_over_does_not_store(&cache);
    }
}

/// A computation longer than lease_ttl keeps its lease (a heartbeat extends it while it runs):
/// it is stored, and a caller of another cache (another process) waiting for it does not take
/// over and compute again.
fn a_slow_computation_keeps_its_lease(target: &str, dir: &std::path::Path) {
    let mut cfg = config(target, dir);
    cfg.lease_ttl = Duration::from_millis(600);
    let (a, b) = (
        CacheManager::new(cfg.clone()).unwrap(),
        CacheManager::new(cfg).unwrap(),
    );
    let ran = Arc::new(AtomicUsize::new(0));
    let leader = {
        let ran = ran.clone();
        std::thread::spawn(move || {
            a.get_or_set("slow", None, || {
                ran.fetch_add(1, Ordering::SeqCst);
                // Four lease_ttls.
                std::thread::sleep(Duration::from_millis(2400));
                1u32
            })
            .unwrap()
        })
    };
    wait_until("the leader computing", || ran.load(Ordering::SeqCst) == 1);
    let got = b
        .get_or_set("slow", None, || {
            ran.fetch_add(1, Ordering::SeqCst);
            2u32
        })
        .unwrap();
    assert_eq!(leader.join().unwrap(), 1);
    assert_eq!(got, 1, "{target}: the waiter got the leader's value");
    assert_eq!(ran.load(Ordering::SeqCst), 1, "{target}: computed once");
    assert_eq!(b.get::<u32>("slow").unwrap(), Some(1), "{target}: stored");
}

#[test]
fn a_slow_computation_keeps_its_lease_on_the_file_backend_and_redis() {
    let dir = tempfile::tempdir().unwrap();
    for t in [Target::pickle(), Target::redis()].into_iter().flatten() {
        a_slow_computation_keeps_its_lease(&t.name, dir.path());
    }
}

/// The async face: a slow computation keeps its lease (a heartbeat polled beside it) and is
/// stored; a late leader's store is fenced on the server.
fn async_lease_rules(target: &str, dir: &std::path::Path) {
    let rt = runtime(2);
    let mut cfg = config(target, dir);
    cfg.lease_ttl = Duration::from_millis(600);
    rt.block_on(async {
        let a = ddf::AsyncCacheManager::new(cfg.clone()).unwrap();
        let b = ddf::AsyncCacheManager::new(cfg).unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        let leader = {
            let ran = ran.clone();
            tokio::spawn(async move {
                a.get_or_set("aslow", None, || async move {
                    ran.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(2400)).await;
                    1u32
                })
                .await
                .unwrap()
            })
        };
        let start = Instant::now();
        while ran.load(Ordering::SeqCst) == 0 {
            assert!(start.elapsed() < Duration::from_secs(20), "never computed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let ran2 = ran.clone();
        let got = b
            .get_or_set("aslow", None, || async move {
                ran2.fetch_add(1, Ordering::SeqCst);
                2u32
            })
            .await
            .unwrap();
        assert_eq!(leader.await.unwrap(), 1);
        assert_eq!(got, 1, "{target}: the waiter got the leader's value");
        assert_eq!(ran.load(Ordering::SeqCst), 1, "{target}: computed once");
        assert_eq!(b.get::<u32>("aslow").await.unwrap(), Some(1));
        // Fenced: a waiter's lease replaced ours while we computed.
        let v = b
            .get_or_set("afenced", None, || async {
                b.set(
                    "ddf-lease:afenced",
                    "a waiter's",
                    Some(Duration::from_secs(600)),
                )
                .await
                .unwrap();
                6u32
            })
            .await
            .unwrap();
        assert_eq!(v, 6);
        assert_eq!(
            b.get::<u32>("afenced").await.unwrap(),
            None,
            "{target}: not stored"
        );
    });
}

#[test]
fn the_async_face_keeps_and_fences_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    for t in [Target::pickle(), Target::redis()].into_iter().flatten() {
        async_lease_rules(&t.name, dir.path());
    }
}

/// On a Redis Cluster (per-node breakers): the lease is taken, released, and extended by the
/// heartbeat (the store is unfenced there: the clock margin guards it).
#[test]
fn get_or_set_on_a_redis_cluster() {
    let Some(cluster) = ddf_testkit::RedisCluster::start() else {
        return;
    };
    let nodes: Vec<ddf::ServerAddr> = cluster
        .addrs()
        .iter()
        .map(|a| ddf::ServerAddr::parse(a, 6379).unwrap())
        .collect();
    let mut cfg = ddf::CacheConfig::default()
        .with_backend(ddf::CacheBackend::Redis)
        .with_redis_cluster_nodes(nodes)
        .with_namespace("stampede-cluster:");
    cfg.lease_ttl = Duration::from_millis(600);
    let cache = CacheManager::new(cfg).unwrap();
    lease_released(&cache);
    let ran = AtomicUsize::new(0);
    let v = cache
        .get_or_set("slow", None, || {
            ran.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(1800));
            assert!(
                cache.get_bytes("ddf-lease:slow").unwrap().is_some(),
                "extended past lease_ttl"
            );
            3u32
        })
        .unwrap();
    assert_eq!(v, 3);
    assert_eq!(cache.get::<u32>("slow").unwrap(), Some(3), "stored");
    assert_eq!(cache.get_bytes("ddf-lease:slow").unwrap(), None, "released");
}
