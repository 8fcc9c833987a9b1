//! The Redis backend through `CacheManager`, against a local `redis-server` started by
//! ddf-testkit: `cargo bench -p ddf --bench redis`.
//!
//! Compare with `redis-benchmark -c 1 -P 1 -d 100 -t get,set` (single operations) and
//! `-P 16` (batches) against the same kind of server; docs/redis.md has the numbers and the
//! targets of issue #4 (single ops >= 0.9x `-P 1`, 100-key batches >= 0.7x the keys/s of
//! `-P 16`, two threads >= 1.7x one).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ddf::{CacheBackend, CacheConfig, CacheManager};
use ddf_testkit::{RedisCluster, RedisServer};

fn redis(c: &mut Criterion) {
    let Some(server) = RedisServer::start() else {
        eprintln!("redis-server is not installed: the redis bench is skipped");
        return;
    };
    // Through CacheManager::new, as users get it: the backend behind the breaker, whose
    // fallback directory is a temporary one here.
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = CacheManager::new(
        CacheConfig::default()
            .with_backend(CacheBackend::Redis)
            .with_redis("127.0.0.1", server.port())
            .with_pickle_dir(dir.path()),
    )
    .expect("redis cache");
    // A 100-character string: 102 bytes of JSON, like redis-benchmark -d 100.
    let value = "x".repeat(100);
    cache.set("bench:hit", &value, None).expect("set");

    let mut g = c.benchmark_group("redis");
    g.measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(1));
    g.bench_function("get_hit_100B", |b| {
        b.iter(|| black_box(cache.get::<String>(black_box("bench:hit")).expect("get")))
    });
    let mut i = 0u64;
    g.bench_function("set_100B", |b| {
        b.iter(|| {
            i += 1;
            cache
                .set(&format!("bench:set:{}", i % 1000), &value, None)
                .expect("set")
        })
    });

    let keys: Vec<String> = (0..100).map(|i| format!("bench:many:{i}")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let items: Vec<(&str, &str)> = refs.iter().map(|k| (*k, value.as_str())).collect();
    g.throughput(Throughput::Elements(100));
    g.bench_function("set_many_100x100B", |b| {
        b.iter(|| cache.set_many(&items, None).expect("set_many"))
    });
    g.bench_function("get_many_100x100B", |b| {
        b.iter(|| black_box(cache.get_many::<String>(&refs).expect("get_many")))
    });

    g.finish();
    ratios(&server, &cache, &value, &refs, &items);
    drop(server);
}

/// Operations per second of `op` run in a loop for `secs` on `threads` threads (total).
fn rate(threads: usize, secs: f64, op: &(dyn Fn() + Sync)) -> f64 {
    let deadline = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let done: u64 = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut n = 0u64;
                    while start.elapsed() < deadline {
                        for _ in 0..64 {
                            op();
                        }
                        n += 64;
                    }
                    n
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("bench thread"))
            .sum()
    });
    done as f64 / start.elapsed().as_secs_f64()
}

/// `redis-benchmark -q` requests per second of one test, or `None` when it is not installed.
fn redis_benchmark(port: u16, clients: u32, pipeline: u32, test: &str) -> Option<f64> {
    let bin = ddf_testkit::which("redis-benchmark")?;
    let out = std::process::Command::new(bin)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "-d",
            "100",
            "-n",
            "100000",
        ])
        .args([
            "-c",
            &clients.to_string(),
            "-P",
            &pipeline.to_string(),
            "-t",
            test,
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    text.lines()
        .filter_map(|l| {
            l.split_once(": ")?
                .1
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .next_back()
}

/// The targets of issue #4, measured back to back against the same server: each ddf figure
/// right after the redis-benchmark figure it is compared with.
fn ratios(
    server: &RedisServer,
    cache: &CacheManager,
    value: &str,
    refs: &[&str],
    items: &[(&str, &str)],
) {
    let port = server.port();
    let secs = 1.5;
    let mut rows = Vec::new();
    let mut row = |name: &str, ours: f64, theirs: Option<f64>, target: f64| {
        rows.push(format!(
            "{name:<34} ddf {ours:>10.0}/s   reference {:>10}   ratio {:>5}   target >= {target}",
            theirs.map_or("-".to_owned(), |t| format!("{t:.0}/s")),
            theirs.map_or("-".to_owned(), |t| format!("{:.2}", ours / t)),
        ));
    };
    let rb = redis_benchmark(port, 1, 1, "get");
    row(
        "get (vs -c 1 -P 1 GET)",
        rate(1, secs, &|| {
            black_box(cache.get::<String>("bench:hit").expect("get"));
        }),
        rb,
        0.9,
    );
    let rb = redis_benchmark(port, 1, 1, "set");
    row(
        "set (vs -c 1 -P 1 SET)",
        rate(1, secs, &|| {
            cache.set("bench:set", value, None).expect("set")
        }),
        rb,
        0.9,
    );
    let rb = redis_benchmark(port, 1, 16, "get");
    row(
        "get_many 100, keys (vs -P 16 GET)",
        100.0
            * rate(1, secs, &|| {
                black_box(cache.get_many::<String>(refs).expect("get_many"));
            }),
        rb,
        0.7,
    );
    let rb = redis_benchmark(port, 1, 16, "set");
    row(
        "set_many 100, keys (vs -P 16 SET)",
        100.0 * rate(1, secs, &|| cache.set_many(items, None).expect("set_many")),
        rb,
        0.7,
    );
    let get = || {
        black_box(cache.get::<String>("bench:hit").expect("get"));
    };
    let one = rate(1, secs, &get);
    let two = rate(2, secs, &get);
    row("get, 2 threads (vs 1 thread)", two, Some(one), 1.7);
    let c1 = redis_benchmark(port, 1, 1, "get");
    let c2 = redis_benchmark(port, 2, 1, "get");
    if let (Some(c1), Some(c2)) = (c1, c2) {
        row("redis-benchmark -c 2 (vs -c 1)", c2, Some(c1), 1.7);
    }
    eprintln!("\nissue #4 ratios (one run, same server, 100-byte values):");
    for r in rows {
        eprintln!("  {r}");
    }
}

/// A 3-primary cluster on loopback: single ops and 100-key batches (keys spread over the nodes).
fn redis_cluster(c: &mut Criterion) {
    let Some(cluster) = RedisCluster::start() else {
        eprintln!("redis-server/redis-cli are not installed: the cluster bench is skipped");
        return;
    };
    let nodes = cluster
        .addrs()
        .iter()
        .map(|a| ddf::ServerAddr::parse(a, 6379).expect("addr"))
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = CacheManager::new(
        CacheConfig::default()
            .with_backend(CacheBackend::Redis)
            .with_redis_cluster_nodes(nodes)
            .with_pickle_dir(dir.path()),
    )
    .expect("redis cluster cache");
    let value = "x".repeat(100);
    cache.set("bench:hit", &value, None).expect("set");
    let keys: Vec<String> = (0..100).map(|i| format!("bench:many:{i}")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let items: Vec<(&str, &str)> = refs.iter().map(|k| (*k, value.as_str())).collect();

    let mut g = c.benchmark_group("redis_cluster");
    g.measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(1));
    g.bench_function("get_hit_100B", |b| {
        b.iter(|| black_box(cache.get::<String>(black_box("bench:hit")).expect("get")))
    });
    g.throughput(Throughput::Elements(100));
    g.bench_function("set_many_100x100B", |b| {
        b.iter(|| cache.set_many(&items, None).expect("set_many"))
    });
    g.bench_function("get_many_100x100B", |b| {
        b.iter(|| black_box(cache.get_many::<String>(&refs).expect("get_many")))
    });
    g.bench_function("delete_many_100", |b| {
        b.iter(|| black_box(cache.delete_many(&refs).expect("delete_many")))
    });
    g.finish();
    drop(cluster);
}

criterion_group!(benches, redis, redis_cluster);
criterion_main!(benches);
