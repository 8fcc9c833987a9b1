//! A memoized call that hits against a direct `CacheManager::get` of the same value, on the
//! file backend: `cargo bench -p ddf --bench memo`. Target: the memoized hit costs at most
//! 1.2x the direct get (the difference is the key derivation: canonical encoding + SHA-256).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::OnceLock;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use ddf::{CacheConfig, CacheManager, cache_with_invalidation};

static CACHE: OnceLock<CacheManager> = OnceLock::new();

fn cache() -> &'static CacheManager {
    CACHE.get().expect("set in the bench")
}

/// A typical memoized function: two arguments (a string and a small map), a list of strings.
#[cache_with_invalidation(cache = cache(), key_prefix = "bench")]
fn services(project: &str, labels: &BTreeMap<String, String>) -> Vec<String> {
    let _ = labels;
    (0..5).map(|i| format!("{project}-service-{i}")).collect()
}

fn memo(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    CACHE
        .set(CacheManager::new(CacheConfig::default().with_pickle_dir(dir.path())).expect("cache"))
        .expect("once");
    let labels: BTreeMap<String, String> = [
        ("env".to_owned(), "prod".to_owned()),
        ("team".to_owned(), "core".to_owned()),
    ]
    .into();
    let value = services("shop", &labels); // stores it
    let key = services_cache_key("shop", &labels).expect("key");
    assert_eq!(
        cache().get::<Vec<String>>(&key).expect("get"),
        Some(value.clone())
    );

    let mut g = c.benchmark_group("memo");
    g.measurement_time(Duration::from_secs(4));
    g.bench_function("direct_get_hit", |b| {
        b.iter(|| black_box(cache().get::<Vec<String>>(black_box(&key)).expect("get")))
    });
    g.bench_function("memoized_hit", |b| {
        b.iter(|| black_box(services(black_box("shop"), black_box(&labels))))
    });
    g.bench_function("key_derivation", |b| {
        b.iter(|| black_box(services_cache_key(black_box("shop"), black_box(&labels))))
    });
    g.finish();

    // The machine this runs on is often shared, and load shifts between criterion's two
    // measurements. So also measure the ratio interleaved: rounds of N direct gets then N
    // memoized hits, and report the median of the per-round ratios.
    let n = 300;
    let mut ratios: Vec<f64> = (0..101)
        .map(|_| {
            let t = std::time::Instant::now();
            for _ in 0..n {
                black_box(cache().get::<Vec<String>>(black_box(&key)).expect("get"));
            }
            let direct = t.elapsed();
            let t = std::time::Instant::now();
            for _ in 0..n {
                black_box(services(black_box("shop"), black_box(&labels)));
            }
            t.elapsed().as_secs_f64() / direct.as_secs_f64()
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    eprintln!(
        "memo/interleaved: memoized hit / direct get = {:.3} (median of 101 rounds; quartiles {:.3}..{:.3})",
        ratios[50], ratios[25], ratios[75]
    );
}

criterion_group!(benches, memo);
criterion_main!(benches);
