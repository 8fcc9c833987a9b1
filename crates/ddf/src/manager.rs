//! [`CacheManager`]: the typed, cheap-to-clone cache handle.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backend::degraded::FallbackWatch;
use crate::backend::{self, Backend, BackendStatus};
use crate::codec::{Codec, ValueCodec, flags};
use crate::config::{CacheBackend, CacheConfig};
use crate::error::{Error, Result};
use crate::item::Item;
use crate::memo::epoch::Epochs;

/// A cache: typed `get`/`set`/`delete`, prefix invalidation and a scoped flush over the backend
/// the configuration names.
///
/// Cloning is cheap (an `Arc`), and clones share the backend, its connections and the
/// statistics: share a cache by cloning it, never behind a `Mutex`.
///
/// ```
/// use std::time::Duration;
/// use ddf::{CacheConfig, CacheManager};
///
/// let dir = tempfile::tempdir()?;
/// let cache = CacheManager::new(CacheConfig::default().with_pickle_dir(dir.path()))?;
/// cache.set("answer", &42u32, Some(Duration::from_secs(60)))?;
/// assert_eq!(cache.get::<u32>("answer")?, Some(42));
/// assert_eq!(cache.get::<u32>("question")?, None);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct CacheManager {
    inner: Arc<Inner>,
}

struct Inner {
    /// See [`CacheManager::id`].
    id: u64,
    config: CacheConfig,
    backend: Arc<dyn Backend>,
    /// Chosen once from the backend kind: the only place values become items and back.
    codec: ValueCodec,
    stats: Counters,
    /// The invalidations made through this cache, for memoization (see [`Epochs`]).
    epochs: Epochs,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.backend.close();
    }
}

impl fmt::Debug for CacheManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheManager")
            .field("backend", &self.inner.backend.name())
            .field("codec", &self.inner.codec.codec())
            .field("namespace", &self.inner.config.namespace)
            .field("enabled", &self.inner.config.enabled)
            .finish()
    }
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    sets: AtomicU64,
    deletes: AtomicU64,
    invalidated: AtomicU64,
    errors: AtomicU64,
    fallback: AtomicU64,
}

/// A snapshot of a manager's statistics (shared by its clones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct CacheStats {
    /// Gets that found a value.
    pub hits: u64,
    /// Gets that found nothing.
    pub misses: u64,
    /// Values written.
    pub sets: u64,
    /// Values removed by `delete`/`delete_many`.
    pub deletes: u64,
    /// Values removed by `invalidate_pattern`.
    pub invalidated: u64,
    /// Operations that returned an error.
    pub errors: u64,
    /// Operations answered by the fallback while the server was down or failing (Redis,
    /// Memcached): served from the local directory, or a miss / a dropped write with `fallback
    /// = none`. Counted beside the operation's own counter (a get the fallback answered is also
    /// a hit or a miss).
    pub fallback: u64,
}

impl CacheStats {
    /// Hits over gets, from 0 to 1 (0 when there were no gets).
    pub fn hit_rate(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}

impl fmt::Display for CacheStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "hits {} misses {} (hit rate {:.1}%) sets {} deletes {} invalidated {} errors {} \
             fallback {}",
            self.hits,
            self.misses,
            self.hit_rate() * 100.0,
            self.sets,
            self.deletes,
            self.invalidated,
            self.errors,
            self.fallback
        )
    }
}

/// The next [`CacheManager::id`]. A `u64` counter does not wrap in any process's lifetime.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

fn check_ttl(ttl: Option<Duration>) -> Result<()> {
    match ttl {
        Some(t) if t.is_zero() => Err(Error::InvalidArgument(
            "a TTL of zero is not allowed: give a positive duration, or None for the configured default"
                .to_owned(),
        )),
        _ => Ok(()),
    }
}

impl CacheManager {
    /// Builds the cache the configuration describes.
    ///
    /// # Errors
    /// [`Error::Config`] when a backend's settings cannot work (an unreadable `redis_ca_file`,
    /// an empty `memcached_servers`), or the backend's own set-up error (an unusable cache
    /// directory, for example). No server is contacted: an unreachable server is not an error
    /// here (the cache starts on its fallback).
    pub fn new(config: CacheConfig) -> Result<Self> {
        let backend = backend::from_config(&config)?;
        Ok(Self::with_backend(config, backend))
    }

    /// A cache over a backend built elsewhere (your own [`Backend`], or a wrapper around one).
    /// The config still gives the namespace-independent settings: `enabled` and `ttl`.
    pub fn with_backend(config: CacheConfig, backend: Arc<dyn Backend>) -> Self {
        let codec = ValueCodec::for_config(&config);
        CacheManager {
            inner: Arc::new(Inner {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                config,
                backend,
                codec,
                stats: Counters::default(),
                epochs: Epochs::default(),
            }),
        }
    }

    /// The configuration this cache was built from.
    pub fn config(&self) -> &CacheConfig {
        &self.inner.config
    }

    /// The backend's name (`none`, `pickle`, `redis`, ...).
    pub fn backend_name(&self) -> &'static str {
        self.inner.backend.name()
    }

    /// The codec values are stored with.
    pub fn codec(&self) -> Codec {
        self.inner.codec.codec()
    }

    fn enabled(&self) -> bool {
        self.inner.config.enabled
    }

    /// This cache's identity in this process: unique per manager built, shared by its clones.
    /// What in-process coordination (memoization's single-flight) keys on, so that callers of
    /// two caches never wait for each other.
    pub(crate) fn id(&self) -> u64 {
        self.inner.id
    }

    /// The invalidation epochs of this cache (shared by its clones): every invalidation below
    /// begins a new one.
    pub(crate) fn epochs(&self) -> &Epochs {
        &self.inner.epochs
    }

    /// Whether a value written can be read back: the cache is enabled and its configuration
    /// names a backend that stores (not `backend = none`).
    pub(crate) fn is_enabled(&self) -> bool {
        self.inner.config.enabled && self.inner.config.backend != CacheBackend::None
    }

    /// A backend call: its error counted, and counted as `fallback` when the fallback answered.
    fn backend_call<T>(&self, op: impl FnOnce() -> Result<T>) -> Result<T> {
        let watch = FallbackWatch::start();
        let r = op();
        if watch.served() {
            bump(&self.inner.stats.fallback, 1);
        }
        self.track(r)
    }

    fn track<T>(&self, r: Result<T>) -> Result<T> {
        if r.is_err() {
            bump(&self.inner.stats.errors, 1);
        }
        r
    }

    fn ttl_or_default(&self, ttl: Option<Duration>) -> Result<Option<Duration>> {
        check_ttl(ttl)?;
        Ok(ttl.or(self.inner.config.ttl))
    }

    /// Reads a value. `Ok(None)` is a miss; a stored falsy value (`""`, `0`, `false`, `[]`)
    /// is `Ok(Some(..))`.
    ///
    /// # Errors
    /// [`Error::Decode`] when the stored value is not a `T`; [`Error::Backend`] when the
    /// backend fails.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let item = self.get_item(key)?;
        item.map(|i| self.track(self.inner.codec.decode(key, &i)))
            .transpose()
    }

    /// Reads any value as the Python value it is, losslessly (tuples, sets, bytes, integers of
    /// any size, dict order): what `ddf-cache get` prints. A typed `get::<pickle::Value>` goes
    /// through serde and forgets which sequence kind a pickle held; this does not.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = ddf::CacheManager::new(ddf::CacheConfig::default().with_pickle_dir(dir.path()))?;
    /// cache.set("t", &("a", 1), None)?;
    /// assert_eq!(cache.get_value("t")?.map(|v| v.type_name()), Some("tuple"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`CacheManager::get`].
    pub fn get_value(&self, key: &str) -> Result<Option<crate::pickle::Value>> {
        let item = self.get_item(key)?;
        item.map(|i| self.track(self.inner.codec.decode_value(key, &i)))
            .transpose()
    }

    /// Reads any value as a JSON view, whatever its type: what `ddf-cache get` prints. For
    /// the pickle codec the view is lossy; see docs/codecs.md.
    ///
    /// # Errors
    /// As [`CacheManager::get`].
    pub fn get_json(&self, key: &str) -> Result<Option<serde_json::Value>> {
        let item = self.get_item(key)?;
        item.map(|i| self.track(self.inner.codec.decode_json(key, &i)))
            .transpose()
    }

    fn get_item(&self, key: &str) -> Result<Option<Item>> {
        if !self.enabled() {
            bump(&self.inner.stats.misses, 1);
            return Ok(None);
        }
        let r = self.backend_call(|| self.inner.backend.get(key))?;
        tracing::trace!(key = %crate::error::shorten(key), hit = r.is_some(), "ddf: get");
        let s = &self.inner.stats;
        bump(if r.is_some() { &s.hits } else { &s.misses }, 1);
        Ok(r)
    }

    /// Stores a value. `ttl = None` uses the configured `ttl` (no expiry when that is empty).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a zero TTL; [`Error::Encode`] when the codec cannot
    /// represent the value; [`Error::Backend`] when the backend fails.
    pub fn set<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<()> {
        let ttl = self.ttl_or_default(ttl)?;
        if !self.enabled() {
            return Ok(());
        }
        let item = self.track(self.inner.codec.encode(key, value))?;
        self.set_item(key, &item, ttl)
    }

    fn set_item(&self, key: &str, item: &Item, ttl: Option<Duration>) -> Result<()> {
        self.backend_call(|| self.inner.backend.set(key, item, ttl))?;
        bump(&self.inner.stats.sets, 1);
        Ok(())
    }

    /// Removes a value; `true` if one was there.
    ///
    /// # Errors
    /// [`Error::Backend`] when the backend fails.
    pub fn delete(&self, key: &str) -> Result<bool> {
        if !self.enabled() {
            return Ok(false);
        }
        let removed = self.backend_call(|| {
            self.inner
                .epochs
                .invalidate(|| self.inner.backend.delete(key))
        })?;
        bump(&self.inner.stats.deletes, u64::from(removed));
        Ok(removed)
    }

    /// Removes every key that starts with `prefix`, taken literally (`*`, `?`, `[` have no
    /// special meaning), and returns how many were removed. The empty prefix removes every
    /// entry of this cache.
    ///
    /// # Errors
    /// [`Error::Backend`] when the backend fails (some keys may have been removed).
    pub fn invalidate_pattern(&self, prefix: &str) -> Result<u64> {
        if !self.enabled() {
            return Ok(0);
        }
        let n = self.backend_call(|| {
            self.inner
                .epochs
                .invalidate(|| self.inner.backend.delete_prefix(prefix))
        })?;
        bump(&self.inner.stats.invalidated, n);
        Ok(n)
    }

    /// Removes every entry of this cache (its namespace), and nothing else: other applications'
    /// keys on a shared server, or other files in the cache directory, stay.
    ///
    /// # Errors
    /// [`Error::Backend`] when the backend fails.
    pub fn flush_all(&self) -> Result<()> {
        if !self.enabled() {
            return Ok(());
        }
        self.backend_call(|| self.inner.epochs.invalidate(|| self.inner.backend.clear()))
    }

    /// Releases the backend's connections now (they are also released when the last clone is
    /// dropped). The cache stays usable: the next operation reconnects.
    pub fn cleanup(&self) {
        self.inner.backend.close();
    }

    /// Reads several values, one result per key, in order.
    ///
    /// # Errors
    /// As [`CacheManager::get`].
    pub fn get_many<T: DeserializeOwned>(&self, keys: &[&str]) -> Result<Vec<Option<T>>> {
        if !self.enabled() {
            bump(&self.inner.stats.misses, keys.len() as u64);
            return Ok(keys.iter().map(|_| None).collect());
        }
        let items = self.backend_call(|| self.inner.backend.get_many(keys))?;
        if items.len() != keys.len() {
            bump(&self.inner.stats.errors, 1);
            return Err(Error::Backend {
                backend: self.inner.backend.name(),
                message: format!(
                    "get_many returned {} results for {} keys",
                    items.len(),
                    keys.len()
                ),
                temporary: false,
                source: None,
            });
        }
        let hits = items.iter().filter(|i| i.is_some()).count() as u64;
        tracing::trace!(keys = keys.len(), hits, "ddf: get_many");
        bump(&self.inner.stats.hits, hits);
        bump(&self.inner.stats.misses, keys.len() as u64 - hits);
        keys.iter()
            .zip(items)
            .map(|(k, i)| {
                i.map(|i| self.track(self.inner.codec.decode(k, &i)))
                    .transpose()
            })
            .collect()
    }

    /// Stores several values with one TTL (`None`: the configured default).
    ///
    /// # Errors
    /// As [`CacheManager::set`]; nothing is written when a value cannot be encoded.
    pub fn set_many<T: Serialize>(&self, items: &[(&str, T)], ttl: Option<Duration>) -> Result<()> {
        let ttl = self.ttl_or_default(ttl)?;
        if !self.enabled() {
            return Ok(());
        }
        let encoded = items
            .iter()
            .map(|(k, v)| Ok((*k, self.inner.codec.encode(k, v)?)))
            .collect::<Result<Vec<_>>>();
        let encoded = self.track(encoded)?;
        self.backend_call(|| self.inner.backend.set_many(&encoded, ttl))?;
        bump(&self.inner.stats.sets, items.len() as u64);
        Ok(())
    }

    /// Removes several values; returns how many were there.
    ///
    /// # Errors
    /// [`Error::Backend`] when the backend fails.
    pub fn delete_many(&self, keys: &[&str]) -> Result<u64> {
        if !self.enabled() {
            return Ok(0);
        }
        let n = self.backend_call(|| {
            self.inner
                .epochs
                .invalidate(|| self.inner.backend.delete_many(keys))
        })?;
        bump(&self.inner.stats.deletes, n);
        Ok(n)
    }

    /// Reads the raw stored bytes of a key, whatever wrote them. On `memcached` and
    /// `memcached_pickle`, a Python `str` or `int` (pymemcache's flags 16, 2, 4) reads in the
    /// cache's own codec: JSON text, or the pickle of that `str` or `int`.
    ///
    /// # Errors
    /// [`Error::Backend`] when the backend fails.
    pub fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.get_item(key)?
            .map(|i| self.inner.codec.raw_bytes(key, i))
            .transpose()
    }

    /// Stores raw bytes (flags 0), for callers that serialize themselves.
    ///
    /// # Errors
    /// As [`CacheManager::set`].
    pub fn set_bytes(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        let ttl = self.ttl_or_default(ttl)?;
        if !self.enabled() {
            return Ok(());
        }
        self.set_item(key, &Item::new(value.to_vec(), flags::BYTES), ttl)
    }

    /// Lists at most `limit` keys that start with `prefix` (literally), with their expiry:
    /// what `ddf-cache keys` prints. Bounded on a large keyspace: Redis walks it with `SCAN`,
    /// Memcached with `lru_crawler metadump` (no expiry shown), the local directory with one
    /// range scan; it stops at `limit`. A disabled cache lists nothing.
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let cache = ddf::CacheManager::new(ddf::CacheConfig::default().with_pickle_dir(dir.path()))?;
    /// cache.set("svc:web", "x", None)?;
    /// let keys = cache.keys("svc:", 100)?;
    /// assert_eq!(keys[0].key, "svc:web");
    /// assert_eq!(keys[0].expiry, ddf::Expiry::Never);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// The backend's error; an error saying it is not supported for a custom [`Backend`] that
    /// does not implement [`Backend::keys`], and while Redis or Memcached is down.
    pub fn keys(&self, prefix: &str, limit: usize) -> Result<Vec<crate::backend::EntryInfo>> {
        if !self.enabled() || limit == 0 {
            return Ok(Vec::new());
        }
        self.backend_call(|| self.inner.backend.keys(prefix, limit))
    }

    /// What is stored under `key` (expiry, size, flags), without decoding it; `Ok(None)` when
    /// nothing is. What `ddf-cache get --meta` prints, with [`CacheManager::stored_form`].
    ///
    /// # Errors
    /// The backend's error.
    pub fn get_meta(&self, key: &str) -> Result<Option<crate::backend::EntryInfo>> {
        if !self.enabled() {
            return Ok(None);
        }
        self.backend_call(|| self.inner.backend.meta(key))
    }

    /// The stored form an entry's flags name (`json`, `pickle`, a pymemcache `str` or `int`).
    pub fn stored_form(&self, entry: &crate::backend::EntryInfo) -> &'static str {
        self.inner.codec.describe_flags(entry.flags)
    }

    /// A snapshot of the statistics.
    pub fn stats(&self) -> CacheStats {
        let s = &self.inner.stats;
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CacheStats {
            hits: l(&s.hits),
            misses: l(&s.misses),
            sets: l(&s.sets),
            deletes: l(&s.deletes),
            invalidated: l(&s.invalidated),
            errors: l(&s.errors),
            fallback: l(&s.fallback),
        }
    }

    /// Facts about the backend's storage (entries, bytes, server counters...), as label/value
    /// pairs: what `ddf-cache stats` prints beside [`CacheManager::stats`].
    ///
    /// # Errors
    /// The backend's error when it cannot tell.
    pub fn backend_info(&self) -> Result<Vec<(String, String)>> {
        self.track(self.inner.backend.info())
    }

    /// Checks the backend and measures the round trip.
    ///
    /// # Errors
    /// The backend's error when it does not answer.
    pub fn ping(&self) -> Result<(BackendStatus, Duration)> {
        let start = Instant::now();
        let status = self.track(self.inner.backend.ping())?;
        Ok((status, start.elapsed()))
    }
}
