//! The async face under concurrency, checked against the model of what a read may return
//! (`ddf_testkit::model`): 256 tasks on a multi-threaded runtime doing mixed operations, then
//! the same with futures dropped at random points (tiny `tokio::time::timeout` limits), then
//! every later answer checked exactly (Redis also with two tasks, so that the calls cut are
//! mostly on the caller-driven connection). And the sync face called from a runtime's workers.

use std::time::{Duration, Instant};

use ddf::{AsyncCacheManager, CacheBackend, CacheConfig, CacheManager, ServerAddr};
use ddf_testkit::model::{self, Op, Outcome};
use ddf_testkit::{MemcachedServer, RedisServer};

const TASKS: u32 = 256;
const PREFIXES: u64 = 4;
const KEYS: u64 = 8;

/// A small deterministic generator (xorshift64*): no `rand` dependency for a test mix.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn ns(origin: Instant) -> u64 {
    origin.elapsed().as_nanos() as u64
}

/// The end recorded for a write whose future was dropped: it may land at any later time, so
/// it can explain a read but never make one stale.
const UNKNOWN_END: u64 = u64::MAX / 4;

/// One task's share of the mix: `ops` operations, each (with `cut_us` above 0) under a random
/// tiny timeout below `cut_us` microseconds. Returns the recorded history.
async fn mixed(
    cache: AsyncCacheManager,
    task: u32,
    ops: u32,
    cut_us: u64,
    origin: Instant,
) -> Vec<Op> {
    let mut rng = Rng::new(u64::from(task) + 1);
    let mut out = Vec::with_capacity(ops as usize);
    for seq in 0..ops {
        let key = format!("p{}:k{}", rng.below(PREFIXES), rng.below(KEYS));
        let limit = if cut_us > 0 && rng.below(2) == 0 {
            // Half the calls get a tiny limit: some complete, some are cut before sending,
            // some after.
            Duration::from_micros(rng.below(cut_us))
        } else {
            Duration::from_secs(30)
        };
        let roll = rng.below(1000);
        let start = ns(origin);
        if roll < 500 {
            let r = tokio::time::timeout(limit, cache.get::<String>(&key)).await;
            let end = ns(origin);
            match r {
                Ok(Ok(v)) => out.push(Op::get(task, &key, Outcome::Ok(v), start, end)),
                Ok(Err(e)) => {
                    out.push(Op::get(task, &key, Outcome::Err(e.to_string()), start, end))
                }
                Err(_) => {} // dropped: returned nothing
            }
        } else if roll < 850 {
            let value = format!("t{task}-{seq}");
            let r = tokio::time::timeout(limit, cache.set(&key, &value, None)).await;
            let end = ns(origin);
            out.push(match r {
                Ok(Ok(())) => Op::set(task, &key, &value, start, end),
                Ok(Err(e)) => Op::set(task, &key, &value, start, UNKNOWN_END)
                    .with(Outcome::Err(e.to_string())),
                Err(_) => Op::set(task, &key, &value, start, UNKNOWN_END)
                    .with(Outcome::Err("dropped".into())),
            });
        } else if roll < 950 {
            let r = tokio::time::timeout(limit, cache.delete(&key)).await;
            let end = ns(origin);
            let op = Op::delete(task, &key, start, end);
            out.push(match r {
                Ok(Ok(_)) => op,
                Ok(Err(e)) => op.with(Outcome::Err(e.to_string())),
                Err(_) => op.with(Outcome::Err("dropped".into())),
            });
        } else if roll < 998 {
            let prefix = format!("p{}:", rng.below(PREFIXES));
            let r = tokio::time::timeout(limit, cache.invalidate_pattern(&prefix)).await;
            let end = ns(origin);
            let op = Op::invalidate_pattern(task, &prefix, start, end);
            out.push(match r {
                Ok(Ok(_)) => op,
                Ok(Err(e)) => op.with(Outcome::Err(e.to_string())),
                Err(_) => op.with(Outcome::Err("dropped".into())),
            });
        } else {
            let r = tokio::time::timeout(limit, cache.flush_all()).await;
            let end = ns(origin);
            let op = Op::flush_all(task, start, end);
            out.push(match r {
                Ok(Ok(())) => op,
                Ok(Err(e)) => op.with(Outcome::Err(e.to_string())),
                Err(_) => op.with(Outcome::Err("dropped".into())),
            });
        }
    }
    out
}

/// Runs the mix on `TASKS` tasks and returns the whole history.
async fn run_mix(cache: &AsyncCacheManager, ops: u32, cancel: bool) -> Vec<Op> {
    run_mix_on(cache, TASKS, ops, if cancel { 5000 } else { 0 }).await
}

/// Runs the mix on `tasks` tasks (see [`mixed`] for `cut_us`) and returns the whole history.
pub(crate) async fn run_mix_on(
    cache: &AsyncCacheManager,
    tasks: u32,
    ops: u32,
    cut_us: u64,
) -> Vec<Op> {
    let origin = Instant::now();
    let tasks: Vec<_> = (0..tasks)
        .map(|t| tokio::spawn(mixed(cache.clone(), t, ops, cut_us, origin)))
        .collect();
    let mut history = Vec::new();
    for t in tasks {
        history.extend(t.await.unwrap());
    }
    history
}

/// Checks the history, and that the checker catches a stale read planted after it.
fn check(history: &mut Vec<Op>, what: &str) -> model::Report {
    let report = model::check(history);
    assert!(
        report.is_ok(),
        "{what}: {} violation(s)\n{}",
        report.violations.len(),
        report.render(history, 10)
    );
    let t = history
        .iter()
        .map(|o| o.end.min(UNKNOWN_END - 1))
        .max()
        .unwrap_or(0)
        + 10;
    history.push(Op::set(9999, "p0:planted", "planted-1", t, t + 1));
    history.push(Op::delete(9999, "p0:planted", t + 2, t + 3));
    history.push(Op::get(
        9999,
        "p0:planted",
        Outcome::Ok(Some("planted-1".into())),
        t + 4,
        t + 5,
    ));
    assert_eq!(
        model::check(history).violations.len(),
        1,
        "{what}: the checker misses a planted stale read"
    );
    report
}

fn redis_config(server: &RedisServer, dir: &std::path::Path, ns: &str) -> CacheConfig {
    CacheConfig::default()
        .with_backend(CacheBackend::Redis)
        .with_redis("127.0.0.1", server.port())
        .with_pickle_dir(dir)
        .with_namespace(ns)
        .with_timeouts(LOADED_CONNECT, LOADED_TIMEOUT)
}

/// Timeouts for the model runs: what they check is what reads return, not how fast; 256 tasks
/// on a loaded 2-core machine (CI, other tests) can take more than the defaults to be served,
/// and a timeout there is an error the model counts ("no error on a healthy server" failed in a
/// loaded run with 11 of them).
pub(crate) const LOADED_CONNECT: std::time::Duration = std::time::Duration::from_secs(10);
pub(crate) const LOADED_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_256_tasks_match_the_model() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cache = AsyncCacheManager::new(redis_config(&server, dir.path(), "model:")).unwrap();
    let mut history = run_mix(&cache, 100, false).await;
    let report = check(&mut history, "redis");
    eprintln!(
        "redis, 256 tasks: {} ops, {} hits, {} misses, {} errors",
        history.len(),
        report.hits,
        report.misses,
        report.errors
    );
    assert_eq!(report.errors, 0, "no error on a healthy server");
    assert!(report.hits > 0, "the mix must read what it wrote");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pickle_256_tasks_match_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let cache = AsyncCacheManager::new(
        CacheConfig::default()
            .with_pickle_dir(dir.path())
            .with_namespace("model:"),
    )
    .unwrap();
    let mut history = run_mix(&cache, 40, false).await;
    let report = check(&mut history, "pickle");
    assert_eq!(report.errors, 0, "no error on a local directory");
    assert!(report.hits > 0);
}

/// Futures dropped at random points under load never leave a connection out of step: the
/// history still matches the model, and afterwards every key reads back exactly what is
/// written to it (a reply meant for a dropped request would show up as another value, a
/// decode error, or an error).
async fn dropped_futures_leave_every_later_answer_right(cache: AsyncCacheManager, what: &str) {
    let history = run_mix(&cache, 100, true).await;
    every_later_answer_right(cache, what, history).await;
}

/// Checks a history with dropped futures, then that every key reads back what is written.
pub(crate) async fn every_later_answer_right(
    cache: AsyncCacheManager,
    what: &str,
    mut history: Vec<Op>,
) {
    let dropped = history
        .iter()
        .filter(|o| o.outcome == Outcome::Err("dropped".into()))
        .count();
    let report = check(&mut history, what);
    let errors: Vec<_> = history
        .iter()
        .filter(|o| matches!(&o.outcome, Outcome::Err(e) if e != "dropped"))
        .take(5)
        .map(|o| format!("{o:?}"))
        .collect();
    assert!(
        errors.is_empty(),
        "{what}: completed calls failed: {errors:#?}"
    );
    eprintln!(
        "{what}, random drops: {} ops recorded, {dropped} writes dropped, {} hits",
        history.len(),
        report.hits
    );
    assert!(dropped > 0, "the limits must cut some calls");
    for round in 0..3 {
        let writes: Vec<_> = (0..PREFIXES * KEYS)
            .map(|i| {
                let cache = cache.clone();
                tokio::spawn(async move {
                    let key = format!("p{}:k{}", i / KEYS, i % KEYS);
                    let value = format!("final-{round}-{i}");
                    cache.set(&key, &value, None).await.unwrap();
                    assert_eq!(
                        cache.get::<String>(&key).await.unwrap().as_deref(),
                        Some(value.as_str()),
                        "{key}"
                    );
                    let got = cache.get_many::<String>(&[&key, "absent"]).await.unwrap();
                    assert_eq!(got, vec![Some(value.clone()), None], "{key}");
                })
            })
            .collect();
        for w in writes {
            w.await.unwrap();
        }
    }
    assert!(cache.ping().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_dropped_futures_leave_every_later_answer_right() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cache = AsyncCacheManager::new(redis_config(&server, dir.path(), "cancel:")).unwrap();
    // Requests already sent by dropped futures are answered (and discarded by the connection's
    // driver) before the later ones, which share the connection.
    dropped_futures_leave_every_later_answer_right(cache, "redis").await;
    // Two tasks, calls cut within 150 µs: most calls find the caller-driven connection
    // (`aio/redis/direct.rs`) free, and many are dropped with its request in flight.
    let few = AsyncCacheManager::new(redis_config(&server, dir.path(), "cancel2:")).unwrap();
    let history = run_mix_on(&few, 2, 400, 150).await;
    every_later_answer_right(few, "redis, 2 tasks", history).await;
}

fn memcached_config(server: &MemcachedServer, dir: &std::path::Path, ns: &str) -> CacheConfig {
    CacheConfig::default()
        .with_backend(CacheBackend::Memcached)
        .with_memcached_servers(vec![ServerAddr::parse(&server.server(), 11211).unwrap()])
        .with_pickle_dir(dir)
        .with_namespace(ns)
        .with_timeouts(LOADED_CONNECT, LOADED_TIMEOUT)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memcached_256_tasks_match_the_model() {
    let Some(server) = MemcachedServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cache = AsyncCacheManager::new(memcached_config(&server, dir.path(), "model:")).unwrap();
    let mut history = run_mix(&cache, 60, false).await;
    let report = check(&mut history, "memcached");
    // Every read is checked against the model above, strictly, and a healthy server gives no
    // error. (Prefix invalidations used to poll the server's one LRU crawler, and under load a
    // caller could lose every poll for half a minute: "the crawler stayed busy", or the call
    // cut by the 30 s limit above. They now queue in arrival order.)
    let slowest = history.iter().map(|o| o.end - o.start).max().unwrap_or(0);
    eprintln!(
        "memcached, 256 tasks: {} ops, {} errors, slowest call {:.1} s",
        history.len(),
        report.errors,
        slowest as f64 / 1e9
    );
    let errors: Vec<_> = history
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Err(_)))
        .take(5)
        .map(|o| format!("{o:?}"))
        .collect();
    assert_eq!(
        report.errors, 0,
        "errors on a healthy server (the first ones): {errors:#?}"
    );
    assert!(report.hits > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memcached_dropped_futures_leave_every_later_answer_right() {
    let Some(server) = MemcachedServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cache = AsyncCacheManager::new(memcached_config(&server, dir.path(), "cancel:")).unwrap();
    // A connection whose exchange was cut is dropped with the future, never pooled again.
    dropped_futures_leave_every_later_answer_right(cache, "memcached").await;
}

/// The sync face called directly on a runtime's worker threads (no `spawn_blocking`) works
/// and never panics: ddf's sync face starts no runtime of its own. It blocks the worker for
/// the call (see the README).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sync_face_on_runtime_workers_never_panics() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let redis = CacheManager::new(redis_config(&server, dir.path(), "sync-in-rt:")).unwrap();
    let pickle = CacheManager::new(CacheConfig::default().with_pickle_dir(dir.path())).unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (redis, pickle) = (redis.clone(), pickle.clone());
            tokio::spawn(async move {
                for c in [&redis, &pickle] {
                    let k = format!("s{i}:k");
                    c.set(&k, &i, None).unwrap();
                    assert_eq!(c.get::<i32>(&k).unwrap(), Some(i));
                    assert!(c.delete(&k).unwrap());
                    c.set(&k, &i, None).unwrap();
                    assert_eq!(c.invalidate_pattern(&format!("s{i}:")).unwrap(), 1);
                    c.ping().unwrap();
                }
                tokio::task::yield_now().await;
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    // A current-thread runtime too, and a cache built and dropped inside it.
    let dir2 = dir.path().to_owned();
    let port = server.port();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let cfg = CacheConfig::default()
                .with_backend(CacheBackend::Redis)
                .with_redis("127.0.0.1", port)
                .with_pickle_dir(&dir2);
            let c = CacheManager::new(cfg).unwrap();
            c.set("cur", "thread", None).unwrap();
            assert_eq!(c.get::<String>("cur").unwrap().as_deref(), Some("thread"));
            drop(c);
        });
    })
    .join()
    .unwrap();
}
