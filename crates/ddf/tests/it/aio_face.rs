//! One typed conformance suite for both faces: [`Face`] is what `conformance.rs` calls; the
//! sync [`CacheManager`] is one, and [`Blocked`] runs an [`AsyncCacheManager`]'s futures to
//! completion on a multi-threaded runtime, so that the same checks run on the async face.

use std::sync::Arc;
use std::time::Duration;

use ddf::{AsyncCacheManager, CacheManager, CacheStats, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The typed cache API the conformance suite uses.
pub trait Face: Clone + Send + Sync {
    fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>>;
    fn set<T: Serialize + ?Sized>(&self, key: &str, value: &T, ttl: Option<Duration>)
    -> Result<()>;
    fn delete(&self, key: &str) -> Result<bool>;
    fn invalidate_pattern(&self, prefix: &str) -> Result<u64>;
    fn flush_all(&self) -> Result<()>;
    fn get_many<T: DeserializeOwned>(&self, keys: &[&str]) -> Result<Vec<Option<T>>>;
    fn set_many<T: Serialize>(&self, items: &[(&str, T)], ttl: Option<Duration>) -> Result<()>;
    fn delete_many(&self, keys: &[&str]) -> Result<u64>;
    fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>>;
    fn set_bytes(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()>;
    fn stats(&self) -> CacheStats;
}

impl Face for CacheManager {
    fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        CacheManager::get(self, key)
    }
    fn set<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<()> {
        CacheManager::set(self, key, value, ttl)
    }
    fn delete(&self, key: &str) -> Result<bool> {
        CacheManager::delete(self, key)
    }
    fn invalidate_pattern(&self, prefix: &str) -> Result<u64> {
        CacheManager::invalidate_pattern(self, prefix)
    }
    fn flush_all(&self) -> Result<()> {
        CacheManager::flush_all(self)
    }
    fn get_many<T: DeserializeOwned>(&self, keys: &[&str]) -> Result<Vec<Option<T>>> {
        CacheManager::get_many(self, keys)
    }
    fn set_many<T: Serialize>(&self, items: &[(&str, T)], ttl: Option<Duration>) -> Result<()> {
        CacheManager::set_many(self, items, ttl)
    }
    fn delete_many(&self, keys: &[&str]) -> Result<u64> {
        CacheManager::delete_many(self, keys)
    }
    fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>> {
        CacheManager::get_bytes(self, key)
    }
    fn set_bytes(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        CacheManager::set_bytes(self, key, value, ttl)
    }
    fn stats(&self) -> CacheStats {
        CacheManager::stats(self)
    }
}

/// An async cache driven from plain threads: every call is `block_on` of its future.
#[derive(Clone, Debug)]
pub struct Blocked {
    pub cache: AsyncCacheManager,
    pub rt: Arc<tokio::runtime::Runtime>,
}

/// A multi-threaded runtime for [`Blocked`] caches.
pub fn runtime() -> Arc<tokio::runtime::Runtime> {
    Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
    )
}

impl Blocked {
    pub fn new(cache: AsyncCacheManager, rt: &Arc<tokio::runtime::Runtime>) -> Self {
        Blocked {
            cache,
            rt: rt.clone(),
        }
    }
}

impl Face for Blocked {
    fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.rt.block_on(self.cache.get(key))
    }
    fn set<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<()> {
        self.rt.block_on(self.cache.set(key, value, ttl))
    }
    fn delete(&self, key: &str) -> Result<bool> {
        self.rt.block_on(self.cache.delete(key))
    }
    fn invalidate_pattern(&self, prefix: &str) -> Result<u64> {
        self.rt.block_on(self.cache.invalidate_pattern(prefix))
    }
    fn flush_all(&self) -> Result<()> {
        self.rt.block_on(self.cache.flush_all())
    }
    fn get_many<T: DeserializeOwned>(&self, keys: &[&str]) -> Result<Vec<Option<T>>> {
        self.rt.block_on(self.cache.get_many(keys))
    }
    fn set_many<T: Serialize>(&self, items: &[(&str, T)], ttl: Option<Duration>) -> Result<()> {
        self.rt.block_on(self.cache.set_many(items, ttl))
    }
    fn delete_many(&self, keys: &[&str]) -> Result<u64> {
        self.rt.block_on(self.cache.delete_many(keys))
    }
    fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.rt.block_on(self.cache.get_bytes(key))
    }
    fn set_bytes(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        self.rt.block_on(self.cache.set_bytes(key, value, ttl))
    }
    fn stats(&self) -> CacheStats {
        self.cache.stats()
    }
}
