use std::sync::LazyLock;

static SYNC: LazyLock<ddf::CacheManager> =
    LazyLock::new(|| ddf::CacheManager::new(ddf::CacheConfig::default()).unwrap());

#[ddf::cache_with_invalidation(cache = SYNC, ttl = 60)]
async fn services(name: &str) -> Vec<String> {
    vec![name.to_owned()]
}

fn main() {}
