//! The async face in a tokio program: a cache-aside lookup shared by many tasks.
//!
//! ```text
//! cargo run -p ddf --features async --example async_tokio
//! DDF_CONFIG=/path/to/ddf.ini cargo run -p ddf --features async --example async_tokio
//! ```
//! Without `DDF_CONFIG` it uses a local cache directory in a temporary directory (no server);
//! with it, whatever backend the file names (Redis, Memcached...).

use std::time::Duration;

use ddf::{AsyncCacheManager, CacheConfig};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Service {
    name: String,
    ports: Vec<String>,
}

/// The slow source of truth the cache stands in front of.
async fn load_service(name: &str) -> Service {
    tokio::time::sleep(Duration::from_millis(50)).await;
    Service {
        name: name.to_owned(),
        ports: vec!["8080:80".to_owned()],
    }
}

/// Cache-aside: the cache first, the source on a miss (or when the cache fails: a cache error
/// must not fail the request), then stored for an hour.
async fn service(cache: &AsyncCacheManager, name: &str) -> Service {
    let key = format!("service:{name}");
    match cache.get::<Service>(&key).await {
        Ok(Some(s)) => return s,
        Ok(None) => {}
        Err(e) => eprintln!("cache read failed, loading: {e}"),
    }
    let s = load_service(name).await;
    if let Err(e) = cache.set(&key, &s, Some(Duration::from_secs(3600))).await {
        eprintln!("cache write failed: {e}");
    }
    s
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let config = match std::env::var_os("DDF_CONFIG") {
        Some(_) => CacheConfig::load()?,
        None => CacheConfig::default()
            .with_pickle_dir(dir.path())
            .with_namespace("example:"),
    };
    // A plain function: no I/O, no runtime needed; connections open on first use.
    let cache = AsyncCacheManager::new(config)?;
    println!("backend: {}", cache.backend_name());
    cache.invalidate_pattern("service:").await?;

    // 64 requests for 8 services, from 64 tasks: the first per service loads, later ones hit.
    for round in 0..2 {
        let started = std::time::Instant::now();
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let cache = cache.clone(); // cheap: an Arc
                tokio::spawn(async move { service(&cache, &format!("svc{}", i % 8)).await })
            })
            .collect();
        for t in tasks {
            t.await?;
        }
        println!(
            "round {round}: 64 lookups in {:?}; {}",
            started.elapsed(),
            cache.stats()
        );
    }
    assert_eq!(cache.invalidate_pattern("service:").await?, 8);
    let (status, rtt) = cache.ping().await?;
    println!("ping: {} in {rtt:?}", status.detail);
    Ok(())
}
