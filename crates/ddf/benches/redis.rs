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
use ddf_testkit::RedisServer;

fn redis(c: &mut Criterion) {
    let Some(server) = RedisServer::start() else {
        eprintln!("redis-server is not installed: the redis bench is skipped");
        return;
    };
    let cache = CacheManager::new(
        CacheConfig::default()
            .with_backend(CacheBackend::Redis)
            .with_redis("127.0.0.1", server.port()),
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

    // One and two threads doing single gets; throughput is gets per second in total.
    for threads in [1u64, 2] {
        g.throughput(Throughput::Elements(threads));
        g.bench_function(format!("get_hit_{threads}_threads"), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                std::thread::scope(|s| {
                    for _ in 0..threads {
                        let cache = cache.clone();
                        s.spawn(move || {
                            for _ in 0..iters {
                                black_box(cache.get::<String>("bench:hit").expect("get"));
                            }
                        });
                    }
                });
                start.elapsed()
            })
        });
    }
    g.finish();
    drop(server);
}

criterion_group!(benches, redis);
criterion_main!(benches);
