//! Hot paths of the file backend and the key mapping, so that regressions show:
//! `cargo bench -p ddf --bench file`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use ddf::{CacheConfig, CacheManager};

fn file(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache =
        CacheManager::new(CacheConfig::default().with_pickle_dir(dir.path())).expect("file cache");
    let value = "x".repeat(100);
    cache.set("bench:hit", &value, None).expect("set");

    let mut g = c.benchmark_group("file");
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("get_hit_100B", |b| {
        b.iter(|| black_box(cache.get::<String>(black_box("bench:hit")).expect("get")))
    });
    g.bench_function("get_miss", |b| {
        b.iter(|| black_box(cache.get::<String>(black_box("bench:absent")).expect("get")))
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
    g.finish();
}

criterion_group!(benches, file);
criterion_main!(benches);
