//! What async memoization costs on a hit: a memoized `async fn` that hits against a direct
//! `AsyncCacheManager::get` of the same value, on the file backend, interleaved in rounds (the
//! machine is often shared), beside the sync face's same pair (the baseline, benches/memo.rs's
//! interleaved ratio) in the same run. `cargo run --release -p ddf --example amemo_cost`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::OnceLock;
use std::time::Instant;

use ddf::{AsyncCacheManager, CacheConfig, CacheManager, cache_with_invalidation};

static CACHE: OnceLock<AsyncCacheManager> = OnceLock::new();
static SYNC: OnceLock<CacheManager> = OnceLock::new();

fn sync_cache() -> &'static CacheManager {
    SYNC.get().expect("set in main")
}

/// The same function on the sync face.
#[cache_with_invalidation(cache = sync_cache(), key_prefix = "bench")]
fn sync_services(project: &str, labels: &BTreeMap<String, String>) -> Vec<String> {
    let _ = labels;
    (0..5).map(|i| format!("{project}-service-{i}")).collect()
}

/// Per-call seconds of `n` calls of `f`.
fn per_call(n: u32, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_secs_f64() / f64::from(n)
}

/// Medians and quartiles of rounds of (direct, memoized) per-call times.
fn report(face: &str, rounds: &[(f64, f64)]) {
    let sorted = |f: &dyn Fn(&(f64, f64)) -> f64| {
        let mut v: Vec<f64> = rounds.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let (direct, memo, ratio) = (sorted(&|r| r.0), sorted(&|r| r.1), sorted(&|r| r.1 / r.0));
    let mid = rounds.len() / 2;
    println!(
        "{face}: direct get hit {:.1} us, memoized hit {:.1} us; memoized / direct = {:.3} (median of {} rounds; quartiles {:.3}..{:.3})",
        direct[mid] * 1e6,
        memo[mid] * 1e6,
        ratio[mid],
        rounds.len(),
        ratio[rounds.len() / 4],
        ratio[rounds.len() * 3 / 4]
    );
}

fn cache() -> &'static AsyncCacheManager {
    CACHE.get().expect("set in main")
}

/// The sync bench's function (benches/memo.rs), async.
#[cache_with_invalidation(cache = cache(), key_prefix = "bench")]
async fn services(project: &str, labels: &BTreeMap<String, String>) -> Vec<String> {
    let _ = labels;
    (0..5).map(|i| format!("{project}-service-{i}")).collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    CACHE
        .set(AsyncCacheManager::new(
            CacheConfig::default().with_pickle_dir(dir.path()),
        )?)
        .map_err(|_| "set once")?;
    SYNC.set(CacheManager::new(
        CacheConfig::default().with_pickle_dir(dir.path().join("sync")),
    )?)
    .map_err(|_| "set once")?;
    let labels: BTreeMap<String, String> = [
        ("env".to_owned(), "prod".to_owned()),
        ("team".to_owned(), "core".to_owned()),
    ]
    .into();
    rt.block_on(async {
        let value = services("shop", &labels).await; // stores it
        let key = services_cache_key("shop", &labels)?;
        assert_eq!(cache().get::<Vec<String>>(&key).await?, Some(value));
        let sync_value = sync_services("shop", &labels);
        let sync_key = sync_services_cache_key("shop", &labels)?;
        assert_eq!(
            sync_cache().get::<Vec<String>>(&sync_key)?,
            Some(sync_value)
        );
        let n = 300;
        let (mut asyn, mut sync) = (Vec::new(), Vec::new());
        for _ in 0..101 {
            let t = Instant::now();
            for _ in 0..n {
                black_box(cache().get::<Vec<String>>(black_box(&key)).await?);
            }
            let direct = t.elapsed().as_secs_f64() / f64::from(n);
            let t = Instant::now();
            for _ in 0..n {
                black_box(services(black_box("shop"), black_box(&labels)).await);
            }
            asyn.push((direct, t.elapsed().as_secs_f64() / f64::from(n)));
            let direct = per_call(n, || {
                black_box(sync_cache().get::<Vec<String>>(black_box(&sync_key)).ok());
            });
            let memo = per_call(n, || {
                black_box(sync_services(black_box("shop"), black_box(&labels)));
            });
            sync.push((direct, memo));
        }
        report("async", &asyn);
        report("sync ", &sync);
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}
