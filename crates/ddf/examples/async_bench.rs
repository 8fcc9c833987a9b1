//! The async face's throughput against its peers, in one run on the same servers (issue #12):
//!
//! - Redis: gets/s of `AsyncCacheManager` with 1, 16, 64, 256 tasks, of the sync face with the
//!   same number of threads, and of `redis-benchmark -c <n> -P 1 -t get` at 1 and 64 clients;
//!   the mean `get` and `set` latency of one task (async) and one thread (sync);
//! - Memcached: gets/s of the async face with those tasks, and of the sync face with 2 threads;
//! - file: median `get` and `set` of the sync face inline, of the same calls moved to the
//!   blocking pool (`spawn_blocking`), and of the async face (reads inline, writes moved).
//!
//! ```text
//! cargo run --release -p ddf --features async --example async_bench -- [--tasks 1,16,64,256] [--secs 2] [--only redis|memcached|file|cluster]
//! ```
//! Starts its own `redis-server` and `memcached` on free loopback ports (ddf-testkit). Prints a
//! table; nothing is asserted (speed is measured here, never in tests).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ddf::{AsyncCacheManager, CacheBackend, CacheConfig, CacheManager, ServerAddr};
use ddf_testkit::{MemcachedServer, RedisServer};

const KEYS: usize = 100;

fn value() -> String {
    "x".repeat(100)
}

/// Calls per second of `tasks` tasks for `secs`, each calling `get(i)` for i = its index,
/// index + 1, ... (a call that does not find its value is printed).
fn tasks_per_second<F, Fut>(rt: &tokio::runtime::Runtime, tasks: usize, secs: f64, get: F) -> f64
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<Option<String>, String>> + Send,
{
    rt.block_on(async {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let (get, stop, count) = (get.clone(), stop.clone(), count.clone());
                tokio::spawn(async move {
                    let mut i = t;
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let v = get(i).await;
                        if !matches!(v, Ok(Some(_))) {
                            eprintln!("unexpected: {v:?}");
                        }
                        i += 1;
                        n += 1;
                    }
                    count.fetch_add(n, Ordering::Relaxed);
                })
            })
            .collect();
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            let _ = h.await;
        }
        count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
    })
}

/// Gets per second of the async face with `tasks` tasks for `secs`.
fn async_gets(
    rt: &tokio::runtime::Runtime,
    cache: &AsyncCacheManager,
    tasks: usize,
    secs: f64,
) -> f64 {
    // The keys made once: the loop measures the call, not a `format!`.
    let keys: Arc<Vec<String>> = Arc::new((0..KEYS).map(|i| format!("bench:{i}")).collect());
    let cache = cache.clone();
    tasks_per_second(rt, tasks, secs, move |i| {
        let (cache, keys) = (cache.clone(), keys.clone());
        async move {
            let r = cache.get::<String>(&keys[i % KEYS]).await;
            r.map_err(|e| e.to_string())
        }
    })
}

/// Gets per second of `tasks` tasks each calling the sync face on the blocking pool.
fn pooled_gets(
    rt: &tokio::runtime::Runtime,
    cache: &Arc<CacheManager>,
    tasks: usize,
    secs: f64,
) -> f64 {
    let cache = cache.clone();
    tasks_per_second(rt, tasks, secs, move |i| {
        let (c, key) = (cache.clone(), format!("bench:{}", i % KEYS));
        async move {
            match tokio::task::spawn_blocking(move || c.get::<String>(&key)).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        }
    })
}

/// Gets per second of the sync face with `threads` threads for `secs`.
fn sync_gets(cache: &CacheManager, threads: usize, secs: f64) -> f64 {
    let stop = AtomicBool::new(false);
    let count = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (cache, stop, count) = (cache, &stop, &count);
            s.spawn(move || {
                let keys: Vec<String> = (0..KEYS).map(|i| format!("bench:{i}")).collect();
                let mut i = t;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let _ = cache.get::<String>(&keys[i % KEYS]);
                    i += 1;
                    n += 1;
                }
                count.fetch_add(n, Ordering::Relaxed);
            });
        }
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
    });
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Microseconds per call of one task (async face) and one thread (sync face), for `get` and
/// `set` of a 100-byte value: twenty alternating windows of `secs / 20` each (so that a change
/// in the machine's load falls on both faces alike); the mean of the best window of each face
/// (the least disturbed by other work on the machine) and the mean over all windows.
fn one_caller(
    rt: &tokio::runtime::Runtime,
    a: &AsyncCacheManager,
    s: &CacheManager,
    secs: f64,
) -> Vec<(&'static str, [f64; 4])> {
    let window = secs / 20.0;
    let mut rows = Vec::new();
    for op in ["get", "set"] {
        let (mut async_t, mut async_n, mut sync_t, mut sync_n) = (0.0, 0u64, 0.0, 0u64);
        let (mut async_best, mut sync_best) = (f64::MAX, f64::MAX);
        for _ in 0..20 {
            let a = a.clone();
            let (t, n) = rt.block_on(async move {
                tokio::spawn(async move {
                    let (v, start) = (value(), Instant::now());
                    let mut n = 0u64;
                    while start.elapsed().as_secs_f64() < window {
                        let key = format!("bench:{}", n as usize % KEYS);
                        if op == "get" {
                            let _ = a.get::<String>(&key).await;
                        } else {
                            let _ = a.set(&key, &v, None).await;
                        }
                        n += 1;
                    }
                    (start.elapsed().as_secs_f64(), n)
                })
                .await
                .unwrap_or((0.0, 0))
            });
            (async_t, async_n) = (async_t + t, async_n + n);
            async_best = async_best.min(t * 1e6 / n.max(1) as f64);
            let (v, start) = (value(), Instant::now());
            let mut n = 0u64;
            while start.elapsed().as_secs_f64() < window {
                let key = format!("bench:{}", n as usize % KEYS);
                if op == "get" {
                    let _ = s.get::<String>(&key);
                } else {
                    let _ = s.set(&key, &v, None);
                }
                n += 1;
            }
            let t = start.elapsed().as_secs_f64();
            (sync_t, sync_n) = (sync_t + t, sync_n + n);
            sync_best = sync_best.min(t * 1e6 / n.max(1) as f64);
        }
        rows.push((
            op,
            [
                async_best,
                sync_best,
                async_t * 1e6 / async_n as f64,
                sync_t * 1e6 / sync_n as f64,
            ],
        ));
    }
    rows
}

/// `redis-benchmark -c clients -P 1 -t get`: requests per second.
fn redis_benchmark(port: u16, clients: usize) -> Option<f64> {
    let out = std::process::Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args([
            "-c",
            &clients.to_string(),
            "-P",
            "1",
            "-t",
            "get",
            "-n",
            "200000",
            "-q",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        eprintln!(
            "redis-benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // "GET: 123456.79 requests per second, p50=0.255 msec"
    // Progress lines end in `\r`, not a newline: split on both.
    let line = text
        .split(['\r', '\n'])
        .rev()
        .find(|l| l.contains("requests per second"))?;
    let rps = line.split(':').nth(1)?.split_whitespace().next()?;
    rps.parse().ok()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let mut tasks = vec![1usize, 16, 64, 256];
    let mut secs = 2.0;
    let mut only: Option<String> = None;
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--tasks" => {
                tasks = args[i + 1]
                    .split(',')
                    .map(|s| s.parse())
                    .collect::<Result<_, _>>()?;
                i += 1;
            }
            "--secs" => {
                secs = args[i + 1].parse()?;
                i += 1;
            }
            "--only" => {
                only = Some(args[i + 1].clone());
                i += 1;
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
        i += 1;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    let v = value();
    let items: Vec<(String, String)> = (0..KEYS)
        .map(|i| (format!("bench:{i}"), v.clone()))
        .collect();
    let refs: Vec<(&str, &str)> = items
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();

    let run = |what: &str| only.as_deref().is_none_or(|o| o == what);

    // Redis.
    if run("redis") {
        let redis = RedisServer::start().ok_or("redis-server not found")?;
        let rcfg = CacheConfig::default()
            .with_backend(CacheBackend::Redis)
            .with_redis("127.0.0.1", redis.port())
            .with_pickle_dir(dir.path())
            .with_namespace("b:");
        let sync_r = CacheManager::new(rcfg.clone())?;
        sync_r.set_many(&refs, None)?;
        let async_r = rt.block_on(async { AsyncCacheManager::new(rcfg.clone()) })?;
        println!("## Redis gets/s (value 100 B, {KEYS} keys, {secs} s per row)");
        println!(
            "| concurrency | async face (tasks) | sync face (threads) | redis-benchmark -P 1 (clients) |"
        );
        println!("|---|---|---|---|");
        for &n in &tasks {
            let a = async_gets(&rt, &async_r, n, secs);
            let s = sync_gets(&sync_r, n, secs);
            let rb = redis_benchmark(redis.port(), n).map_or("-".to_owned(), |r| format!("{r:.0}"));
            println!("| {n} | {a:.0} | {s:.0} | {rb} |");
        }
        println!(
            "\n## Redis, one caller: µs per call, best window / all windows (value 100 B, {secs} s per cell)"
        );
        println!("| op | async face (1 task) | sync face (1 thread) | async speed ÷ sync |");
        println!("|---|---|---|---|");
        for (op, [ab, sb, a, s]) in one_caller(&rt, &async_r, &sync_r, secs) {
            println!(
                "| {op} | {ab:.1} / {a:.1} | {sb:.1} / {s:.1} | {:.2}x / {:.2}x |",
                sb / ab,
                s / a
            );
        }
    }

    // Memcached.
    if run("memcached") {
        let mc = MemcachedServer::start().ok_or("memcached not found")?;
        let mcfg = CacheConfig::default()
            .with_backend(CacheBackend::Memcached)
            .with_memcached_servers(vec![ServerAddr::parse(&mc.server(), 11211)?])
            .with_pickle_dir(dir.path())
            .with_namespace("b:");
        let sync_m = CacheManager::new(mcfg.clone())?;
        sync_m.set_many(&refs, None)?;
        let async_m = rt.block_on(async { AsyncCacheManager::new(mcfg.clone()) })?;
        let two = sync_gets(&sync_m, 2, secs);
        println!("\n## Memcached gets/s; sync face with 2 threads: {two:.0}");
        println!("| tasks | async face | x sync(2 threads) |");
        println!("|---|---|---|");
        for &n in &tasks {
            let a = async_gets(&rt, &async_m, n, secs);
            println!("| {n} | {a:.0} | {:.2} |", a / two);
        }
    }
    // A Redis Cluster (only with `--only cluster`): the async face natively (a breaker per
    // primary, async connections per node) against the same calls on the blocking pool (what
    // the async face did before: the sync backend under `spawn_blocking`).
    if only.as_deref() == Some("cluster") {
        let cluster = ddf_testkit::RedisCluster::start().ok_or("redis-server not found")?;
        let nodes = cluster
            .addrs()
            .iter()
            .map(|a| ServerAddr::parse(a, 6379))
            .collect::<Result<Vec<_>, _>>()?;
        let ccfg = CacheConfig::default()
            .with_backend(CacheBackend::Redis)
            .with_redis_cluster_nodes(nodes)
            .with_pickle_dir(dir.path())
            .with_namespace("b:");
        let sync_c = Arc::new(CacheManager::new(ccfg.clone())?);
        sync_c.set_many(&refs, None)?;
        let async_c = rt.block_on(async { AsyncCacheManager::new(ccfg.clone()) })?;
        println!(
            "\n## Redis Cluster (3 primaries) gets/s (value 100 B, {KEYS} keys, {secs} s per row)"
        );
        println!(
            "| tasks | async face, native | blocking pool (sync face under spawn_blocking) | sync face (threads) |"
        );
        println!("|---|---|---|---|");
        for &n in &tasks {
            let a = async_gets(&rt, &async_c, n, secs);
            let b = pooled_gets(&rt, &sync_c, n, secs);
            let s = sync_gets(&sync_c, n, secs);
            println!("| {n} | {a:.0} | {b:.0} | {s:.0} |");
        }
        return Ok(());
    }
    if !run("file") {
        return Ok(());
    }

    // File: where a read and a write cost least.
    let fcfg = CacheConfig::default()
        .with_pickle_dir(dir.path())
        .with_namespace("f:");
    let sync_f = CacheManager::new(fcfg.clone())?;
    sync_f.set_many(&refs, None)?;
    let async_f = rt.block_on(async { AsyncCacheManager::new(fcfg.clone()) })?;
    const N: usize = 5000;
    let mut rows = Vec::new();
    for op in ["get", "set"] {
        let mut inline = Vec::with_capacity(N);
        let mut moved = Vec::with_capacity(N);
        let mut face = Vec::with_capacity(N);
        for i in 0..N {
            let key = format!("bench:{}", i % KEYS);
            let t = Instant::now();
            if op == "get" {
                sync_f.get::<String>(&key)?;
            } else {
                sync_f.set(&key, &v, None)?;
            }
            inline.push(t.elapsed());
            let (c, k, val) = (sync_f.clone(), key.clone(), v.clone());
            let t = Instant::now();
            rt.block_on(async move {
                tokio::task::spawn_blocking(move || {
                    if op == "get" {
                        c.get::<String>(&k).map(drop)
                    } else {
                        c.set(&k, &val, None)
                    }
                })
                .await
            })??;
            moved.push(t.elapsed());
            let t = Instant::now();
            rt.block_on(async {
                if op == "get" {
                    async_f.get::<String>(&key).await.map(drop)
                } else {
                    async_f.set(&key, &v, None).await
                }
            })?;
            face.push(t.elapsed());
        }
        rows.push((op, median(inline), median(moved), median(face)));
    }
    println!("\n## File backend, median per call ({N} calls, value 100 B)");
    println!("| op | sync inline | sync via spawn_blocking | async face |");
    println!("|---|---|---|---|");
    for (op, a, b, c) in rows {
        println!("| {op} | {a:?} | {b:?} | {c:?} |");
    }
    Ok(())
}
