//! `get_or_set` across processes (issue #17): one computation per miss in the whole deployment,
//! takeover when the leader is killed, stale-while-revalidate. Real servers; every assertion is
//! a count (computations, callers), never a duration. Children are this test binary run again
//! (see `process`); they count computations by appending a line to a shared file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use ddf::testing::internals::{MemcachedBackend, RedisBackend};
use ddf::{
    Backend, CacheBackend, CacheConfig, CacheManager, Item, RefreshOptions, ServerAddr,
    cache_with_invalidation,
};
use ddf_testkit::{MemcachedServer, RedisServer};

use crate::process;

const JOB: &str = "DDF_TEST_STAMPEDE_JOB";
const KEY: &str = "stampede:popular";
/// A bound for "does not hang" waits: far above every configured timeout.
const PATIENCE: Duration = Duration::from_secs(60);

/// Where the children's cache is: `pickle`, `redis:<port>` or `memcached:<host:port>`.
fn config(target: &str, dir: &Path) -> CacheConfig {
    let base = CacheConfig::default()
        .with_pickle_dir(dir.join("cache"))
        .with_namespace("stampede:");
    match target.split_once(':') {
        None => base.with_backend(CacheBackend::Pickle),
        Some(("redis", port)) => base
            .with_backend(CacheBackend::Redis)
            .with_redis("127.0.0.1", port.parse().unwrap()),
        Some(("memcached", server)) => base
            .with_backend(CacheBackend::Memcached)
            .with_memcached_servers(vec![ServerAddr::parse(server, 11211).unwrap()]),
        Some(_) => panic!("unknown target {target}"),
    }
}

/// One line per computation, appended (`O_APPEND`: whole lines from every process).
fn record(dir: &Path, what: &str) -> usize {
    let path = dir.join("computed");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    writeln!(f, "{what} {}", std::process::id()).unwrap();
    drop(f);
    computations(dir).len()
}

fn computations(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("computed"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Waits until `ok()` holds (a generous bound: a hang fails, a slow machine does not).
fn wait_until(what: &str, ok: impl Fn() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < PATIENCE, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A child: marks itself ready, waits for the parent's go, then runs `threads` callers of
/// `get_or_set` on one missing key at once; every caller must get the value.
fn child(job: &str) {
    let mut parts = job.split('|');
    let (target, dir, threads, lease_ttl) = (
        parts.next().unwrap(),
        PathBuf::from(parts.next().unwrap()),
        parts.next().unwrap().parse::<usize>().unwrap(),
        parts.next().unwrap().parse::<u64>().unwrap(),
    );
    let mut cfg = config(target, &dir);
    cfg.lease_ttl = Duration::from_secs(lease_ttl);
    cfg.lock_timeout = Duration::from_secs(45);
    let face = parts.next().unwrap_or("method");
    if face == "async" {
        return async_child(cfg, &dir, threads);
    }
    let cache = CacheManager::new(cfg).unwrap();
    let attribute = face == "attribute";
    if attribute {
        ATTR_CACHE.set(cache.clone()).unwrap();
    }
    std::fs::write(dir.join(format!("ready-{}", std::process::id())), "").unwrap();
    wait_until("the parent's go", || dir.join("go").exists());
    let start = Arc::new(Barrier::new(threads));
    let callers: Vec<_> = (0..threads)
        .map(|_| {
            let (cache, dir, start) = (cache.clone(), dir.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                let t0 = Instant::now();
                if attribute {
                    return (popular(&dir.display().to_string()), t0.elapsed());
                }
                let v = cache
                    .get_or_set(KEY, Some(Duration::from_secs(120)), || {
                        if record(&dir, "computed") == 1 && dir.join("hang-first").exists() {
                            // The parent kills this process now (kill -9).
                            std::thread::sleep(PATIENCE * 2);
                        }
                        std::thread::sleep(Duration::from_millis(200));
                        "the value".to_owned()
                    })
                    .unwrap();
                (v, t0.elapsed())
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for c in callers {
        let (v, took) = c.join().unwrap();
        assert_eq!(v, "the value");
        slowest = slowest.max(took);
    }
    println!("DDF_STAMPEDE_CALLERS={threads}");
    println!("DDF_STAMPEDE_SLOWEST_MS={}", slowest.as_millis());
}

/// [`child`] on the async face: `tasks` tasks on a multi-threaded runtime.
fn async_child(cfg: CacheConfig, dir: &Path, tasks: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cache = ddf::AsyncCacheManager::new(cfg).unwrap();
        std::fs::write(dir.join(format!("ready-{}", std::process::id())), "").unwrap();
        wait_until("the parent's go", || dir.join("go").exists());
        let callers: Vec<_> = (0..tasks)
            .map(|_| {
                let (cache, dir) = (cache.clone(), dir.to_owned());
                tokio::spawn(async move {
                    cache
                        .get_or_set(KEY, Some(Duration::from_secs(120)), || async move {
                            record(&dir, "computed");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            "the value".to_owned()
                        })
                        .await
                        .unwrap()
                })
            })
            .collect();
        for c in callers {
            assert_eq!(c.await.unwrap(), "the value");
        }
    });
    println!("DDF_STAMPEDE_CALLERS={tasks}");
}

static ATTR_CACHE: std::sync::OnceLock<CacheManager> = std::sync::OnceLock::new();

/// The attribute's face of the same computation: `lock = true`.
#[cache_with_invalidation(cache = ATTR_CACHE.get().unwrap(), ttl = 120, lock = true)]
fn popular(dir: &str) -> String {
    record(Path::new(dir), "computed");
    std::thread::sleep(Duration::from_millis(200));
    "the value".to_owned()
}

/// Starts `procs` children of `threads` callers each, lets them go at once, and returns them.
fn start_children(
    test: &str,
    target: &str,
    dir: &Path,
    procs: usize,
    threads: usize,
    lease_ttl: u64,
    face: &str,
) -> Vec<std::process::Child> {
    let job = format!("{target}|{}|{threads}|{lease_ttl}|{face}", dir.display());
    let children: Vec<_> = (0..procs)
        .map(|_| process::child(test, JOB, &job).spawn().unwrap())
        .collect();
    let ready = || {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("ready-")
            })
            .count()
    };
    wait_until("every child ready", || ready() == procs);
    std::fs::write(dir.join("go"), "").unwrap();
    children
}

/// 16 processes x 8 threads call `get_or_set` on one missing key whose computation takes
/// 200 ms: it runs exactly once.
fn computes_once(test: &str, target: &str) {
    computes_once_through(test, target, "method");
}

fn computes_once_through(test: &str, target: &str, face: &str) {
    let dir = tempfile::tempdir().unwrap();
    let children = start_children(test, target, dir.path(), 16, 8, 10, face);
    let (mut callers, mut slowest) = (0, 0);
    for c in children {
        let out = process::check(c, "stampede child");
        let field = |name: &str| {
            out.lines()
                .find_map(|l| l.split(name).nth(1))
                .map_or(0, |n| n.trim().parse::<u128>().unwrap())
        };
        callers += field("DDF_STAMPEDE_CALLERS=") as usize;
        slowest = slowest.max(field("DDF_STAMPEDE_SLOWEST_MS="));
    }
    // For the record, not asserted: the slowest caller's wait from its process's go to its
    // value (the 200 ms computation, the poll that sees it, and process start skew).
    println!("{target} {face}: slowest caller {slowest} ms (computation 200 ms)");
    assert_eq!(callers, 128, "every caller got the value");
    assert_eq!(
        computations(dir.path()).len(),
        1,
        "computed once: {:?}",
        computations(dir.path())
    );
}

/// The leader is killed (-9) mid-computation: a waiter takes over when its lease expires,
/// exactly one more computation runs, and every other caller gets a value.
fn leader_killed(test: &str, target: &str) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hang-first"), "").unwrap();
    let children = start_children(test, target, dir.path(), 4, 4, 2, "method");
    wait_until("a leader computing", || {
        !computations(dir.path()).is_empty()
    });
    let first = computations(dir.path())[0].clone();
    let pid: u32 = first.split(' ').nth(1).unwrap().parse().unwrap();
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut killed = 0;
    for c in children {
        if c.id() == pid {
            let out = c.wait_with_output().unwrap();
            assert!(!out.status.success(), "the leader was killed");
            killed += 1;
        } else {
            process::check(c, "stampede child");
        }
    }
    assert_eq!(killed, 1);
    let all = computations(dir.path());
    assert_eq!(all.len(), 2, "one more computation: {all:?}");
    assert_ne!(all[1], first, "the takeover ran in another process");
}

#[test]
fn file_backend_computes_once_across_processes() {
    if let Some(job) = process::job(JOB) {
        return child(&job);
    }
    computes_once(
        "stampede::file_backend_computes_once_across_processes",
        "pickle",
    );
}

#[test]
fn the_attribute_with_lock_computes_once_across_processes() {
    if let Some(job) = process::job(JOB) {
        return child(&job);
    }
    let Some(server) = RedisServer::start() else {
        return;
    };
    computes_once_through(
        "stampede::the_attribute_with_lock_computes_once_across_processes",
        &format!("redis:{}", server.port()),
        "attribute",
    );
}

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

#[test]
fn the_attribute_serves_stale_while_one_refreshes() {
    let dir = tempfile::tempdir().unwrap();
    STALE_CACHE
        .set(CacheManager::new(config("pickle", dir.path())).unwrap())
        .unwrap();
    assert_eq!(stale_counted(), Ok(1));
    assert_eq!(stale_counted(), Ok(1), "fresh: from the cache");
    let soft = Instant::now() + Duration::from_millis(1100);
    while Instant::now() < soft {
        std::thread::sleep(Duration::from_millis(50));
    }
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
    assert_eq!(STALE_RAN.load(Ordering::SeqCst), 2, "one refresh");
    STALE_RELEASE.store(true, Ordering::SeqCst);
    let mut got: Vec<usize> = callers.into_iter().map(|c| c.join().unwrap()).collect();
    got.sort_unstable();
    assert_eq!(got, [1, 1, 1, 1, 1, 1, 1, 2]);
    assert_eq!(stale_counted(), Ok(2), "the refreshed value is stored");
}

#[test]
fn async_face_computes_once_across_processes_on_redis() {
    if let Some(job) = process::job(JOB) {
        return child(&job);
    }
    let Some(server) = RedisServer::start() else {
        return;
    };
    computes_once_through(
        "stampede::async_face_computes_once_across_processes_on_redis",
        &format!("redis:{}", server.port()),
        "async",
    );
}

#[test]
fn async_face_computes_once_across_processes_on_memcached() {
    if let Some(job) = process::job(JOB) {
        return child(&job);
    }
    let Some(server) = MemcachedServer::start() else {
        return;
    };
    computes_once_through(
        "stampede::async_face_computes_once_across_processes_on_memcached",
        &format!("memcached:{}", server.server()),
        "async",
    );
}

#[test]
fn async_face_computes_once_across_processes_on_the_file_backend() {
    if let Some(job) = process::job(JOB) {
        return child(&job);
    }
    computes_once_through(
        "stampede::async_face_computes_once_across_processes_on_the_file_backend",
        "pickle",
        "async",
    );
}

#[test]
fn file_backend_leader_killed() {
    if let Some(job) = process::job(JOB) {
        return child(&job);
    }
    leader_killed("stampede::file_backend_leader_killed", "pickle");
}

#[test]
fn redis_computes_once_across_processes() {
    if let Some(job) = process::job(JOB) {
        return child(&job);
    }
    let Some(server) = RedisServer::start() else {
        return;
    };
    computes_once(
        "stampede::redis_computes_once_across_processes",
        &format!("redis:{}", server.port()),
    );
}

#[test]
fn redis_leader_killed() {
    if let Some(job) = process::job(JOB) {
        return child(&job);
    }
    let Some(server) = RedisServer::start() else {
        return;
    };
    leader_killed(
        "stampede::redis_leader_killed",
        &format!("redis:{}", server.port()),
    );
}

#[test]
fn memcached_computes_once_across_processes() {
    if let Some(job) = process::job(JOB) {
        return child(&job);
    }
    let Some(server) = MemcachedServer::start() else {
        return;
    };
    computes_once(
        "stampede::memcached_computes_once_across_processes",
        &format!("memcached:{}", server.server()),
    );
}

#[test]
fn memcached_leader_killed() {
    if let Some(job) = process::job(JOB) {
        return child(&job);
    }
    let Some(server) = MemcachedServer::start() else {
        return;
    };
    leader_killed(
        "stampede::memcached_leader_killed",
        &format!("memcached:{}", server.server()),
    );
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
    let soft = Instant::now() + Duration::from_millis(1100);
    while Instant::now() < soft {
        std::thread::sleep(Duration::from_millis(50));
    }
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
    let Some(server) = RedisServer::start() else {
        return;
    };
    stale_while_revalidate(&format!("redis:{}", server.port()));
}

#[test]
fn memcached_serves_stale_while_one_refreshes() {
    let Some(server) = MemcachedServer::start() else {
        return;
    };
    stale_while_revalidate(&format!("memcached:{}", server.server()));
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
    let ran = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(16));
    let callers: Vec<_> = (0..16)
        .map(|_| {
            let (cache, ran, start) = (cache.clone(), ran.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                cache
                    .get_or_set(KEY, None, || {
                        ran.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(100));
                        7u32
                    })
                    .unwrap()
            })
        })
        .collect();
    for c in callers {
        assert_eq!(c.join().unwrap(), 7);
    }
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
    if let Some(server) = RedisServer::start() {
        let cfg = config(&format!("redis:{}", server.port()), dir.path());
        compare_and_delete_contract(&RedisBackend::from_config(&cfg).unwrap());
        lease_released(&CacheManager::new(cfg).unwrap());
    }
    if let Some(server) = MemcachedServer::start() {
        let cfg = config(&format!("memcached:{}", server.server()), dir.path());
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
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let target = format!("redis:{}", server.port());
        let svcs: Vec<_> = (0..2)
            .map(|_| {
                Arc::new(AsyncSvc {
                    cache: ddf::AsyncCacheManager::new(config(&target, dir.path())).unwrap(),
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
/// are removed: measured 2 to 4 computations of 8 callers). When the server returns the
/// outage's entries are forgotten (journaled deletes), the lease is released, and the next
/// miss computes exactly once on the server.
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
    let run = |ran: &Arc<AtomicUsize>| {
        let start = Arc::new(Barrier::new(8));
        let callers: Vec<_> = (0..8)
            .map(|i| {
                let (cache, ran, start) = (caches[i % 2].clone(), ran.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    cache
                        .get_or_set(KEY, Some(Duration::from_secs(60)), || {
                            ran.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(200));
                            9u32
                        })
                        .unwrap()
                })
            })
            .collect();
        for c in callers {
            assert_eq!(c.join().unwrap(), 9);
        }
    };
    run(&ran);
    let during = ran.load(Ordering::SeqCst);
    println!("computations during the outage: {during} of 8 callers");
    assert!((1..=8).contains(&during));
    server.process().signal("CONT");
    for c in &caches {
        wait_until_up(c);
    }
    run(&ran);
    assert_eq!(
        ran.load(Ordering::SeqCst),
        during + 1,
        "once more on the server"
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
