//! [`CacheManager`]: the typed, cheap-to-clone cache handle.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backend::degraded::FallbackWatch;
use crate::backend::{Backend, BackendStatus};
use crate::codec::{Codec, flags};
use crate::config::CacheConfig;
use crate::error::Result;
use crate::item::Item;
use crate::memo::epoch::Epochs;
use crate::near::{Lookup, Near, Read};

pub(crate) mod core;

pub use self::core::CacheStats;
use self::core::Core;

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
    /// Codec, TTL rules, statistics, identity, epochs: shared with the async face's code.
    core: Core,
    backend: Arc<dyn Backend>,
    /// `near_cache = true`: the in-process tier (see `near/`).
    near: Option<Arc<Near>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.backend.close();
    }
}

impl fmt::Debug for CacheManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let core = &self.inner.core;
        f.debug_struct("CacheManager")
            .field("backend", &self.inner.backend.name())
            .field("codec", &core.codec())
            .field("namespace", &core.config().namespace)
            .field("enabled", &core.config().enabled)
            .finish()
    }
}

impl CacheManager {
    /// Builds the cache the configuration describes.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) when a backend's settings cannot work (an
    /// unreadable `redis_ca_file`, an empty `memcached_servers`), or the backend's own set-up
    /// error (an unusable cache directory, for example). No server is contacted: an unreachable
    /// server is not an error here (the cache starts on its fallback).
    pub fn new(config: CacheConfig) -> Result<Self> {
        let (backend, near) = crate::near::build(&config)?;
        let mut cache = Self::with_backend(config, backend);
        if let Some(inner) = Arc::get_mut(&mut cache.inner) {
            inner.near = near;
        }
        Ok(cache)
    }

    /// A cache over a backend built elsewhere (your own [`Backend`], or a wrapper around one).
    /// The config still gives the namespace-independent settings: `enabled` and `ttl`.
    pub fn with_backend(config: CacheConfig, backend: Arc<dyn Backend>) -> Self {
        CacheManager {
            inner: Arc::new(Inner {
                core: Core::new(config),
                backend,
                near: None,
            }),
        }
    }

    fn core(&self) -> &Core {
        &self.inner.core
    }

    /// A backend call, counted as `fallback` when the fallback answered it (the resilience
    /// wrapper notes that on this thread); the core's steps count the rest.
    fn call<T>(&self, op: impl FnOnce() -> Result<T>) -> Result<T> {
        self.call_noted(op).0
    }

    /// [`CacheManager::call`], also telling whether the fallback answered.
    fn call_noted<T>(&self, op: impl FnOnce() -> Result<T>) -> (Result<T>, bool) {
        let watch = FallbackWatch::start();
        let r = op();
        let served = watch.served();
        if served {
            self.core().fallback_served();
        }
        (r, served)
    }

    /// The near cache, when configured.
    fn near(&self) -> Option<&Near> {
        self.inner.near.as_deref()
    }

    /// A write through this cache: the near cache forgets what it changed once the server
    /// call returned, whatever it returned (see docs/near-cache.md for why after).
    fn written<T>(&self, r: Result<T>, forget: impl FnOnce(&Near)) -> Result<T> {
        if let Some(n) = self.near() {
            forget(n);
        }
        r
    }

    /// The configuration this cache was built from.
    pub fn config(&self) -> &CacheConfig {
        self.core().config()
    }

    /// The backend's name (`none`, `pickle`, `redis`, ...).
    pub fn backend_name(&self) -> &'static str {
        self.inner.backend.name()
    }

    /// The codec values are stored with.
    pub fn codec(&self) -> Codec {
        self.core().codec()
    }

    /// This cache's identity in this process: unique per manager built, shared by its clones.
    /// What in-process coordination (memoization's single-flight) keys on, so that callers of
    /// two caches never wait for each other.
    pub(crate) fn id(&self) -> u64 {
        self.core().id()
    }

    /// The invalidation epochs of this cache (shared by its clones): every invalidation below
    /// begins a new one.
    pub(crate) fn epochs(&self) -> &Epochs {
        self.core().epochs()
    }

    /// Whether a value written can be read back: the cache is enabled and its configuration
    /// names a backend that stores (not `backend = none`).
    pub(crate) fn is_enabled(&self) -> bool {
        self.core().is_enabled()
    }

    /// Reads a value. `Ok(None)` is a miss; a stored falsy value (`""`, `0`, `false`, `[]`)
    /// is `Ok(Some(..))`.
    ///
    /// # Errors
    /// [`Error::Decode`](crate::Error::Decode) when the stored value is not a `T`;
    /// [`Error::Backend`](crate::Error::Backend) when the backend fails.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.read(key)? {
            Read::Held(held) => self.core().decode_held(key, &held).map(Some),
            Read::Fetched(item) => self.core().decode(key, item),
        }
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
        self.core().decode_value(key, item)
    }

    /// Reads any value as a JSON view, whatever its type: what `ddf-cache get` prints. For
    /// the pickle codec the view is lossy; see docs/codecs.md.
    ///
    /// # Errors
    /// As [`CacheManager::get`].
    pub fn get_json(&self, key: &str) -> Result<Option<serde_json::Value>> {
        let item = self.get_item(key)?;
        self.core().decode_json(key, item)
    }

    /// Reads a stored item undecoded: its bytes and pymemcache flags (Redis stores no flags:
    /// 0), for a caller that decodes values itself, such as the Python package `ddf_cache`.
    /// Counted as a hit or a miss like [`CacheManager::get`].
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = ddf::CacheManager::new(ddf::CacheConfig::default().with_pickle_dir(dir.path()))?;
    /// cache.set_item("k", &ddf::Item::new(b"raw".to_vec(), 0), None)?;
    /// assert_eq!(cache.get_item("k")?.map(|i| i.data), Some(b"raw".to_vec()));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Backend`](crate::Error::Backend) when the backend fails.
    pub fn get_item(&self, key: &str) -> Result<Option<Item>> {
        Ok(match self.read(key)? {
            Read::Held(held) => Some(Item::clone(&held)),
            Read::Fetched(item) => item,
        })
    }

    /// A read: from the near cache when it holds the key, else from the backend (offered to
    /// the near cache with the ticket taken before the call).
    fn read(&self, key: &str) -> Result<Read> {
        if !self.core().enabled() {
            self.core().missed(1);
            return Ok(Read::Fetched(None));
        }
        let ticket = match self.near().map(|n| n.lookup(key)) {
            Some(Lookup::Hit(held)) => {
                self.core().near_hit();
                return Ok(Read::Held(held));
            }
            Some(Lookup::Miss(t)) => t,
            None => None,
        };
        let r = match (self.near(), ticket) {
            // A fill: with how long the key has left on the server, in the same round trip.
            (Some(n), Some(t)) => {
                let answered = crate::backend::degraded::Answered::start();
                let (r, served) = self.call_noted(|| self.inner.backend.get_expiring(key));
                if let Ok(Some((item, expiry))) = &r {
                    n.fill_from(t, key, item, *expiry, served, answered.take().as_ref());
                }
                r.map(|o| o.map(|(item, _)| item))
            }
            _ => self.call_noted(|| self.inner.backend.get(key)).0,
        };
        let r = self.core().got(r)?;
        tracing::trace!(key = %crate::error::shorten(key), hit = r.is_some(), "ddf: get");
        Ok(Read::Fetched(r))
    }

    /// Stores a value. `ttl = None` uses the configured `ttl` (no expiry when that is empty).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for a zero TTL;
    /// [`Error::Encode`](crate::Error::Encode) when the codec cannot represent the value;
    /// [`Error::Backend`](crate::Error::Backend) when the backend fails.
    pub fn set<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<()> {
        let ttl = self.core().ttl_or_default(ttl)?;
        if !self.core().enabled() {
            return Ok(());
        }
        let item = self.core().encode(key, value)?;
        let r = self.call(|| self.inner.backend.set(key, &item, ttl));
        self.core()
            .stored(self.written(r, |n| n.evict(key, false)), 1)
    }

    /// `set` fenced by a `get_or_set` lease ([`Backend::set_if_lease`]): `Ok(false)` when the
    /// lease no longer holds `token` (nothing stored).
    pub(crate) fn set_if_lease<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
        lease: &str,
        token: &[u8],
    ) -> Result<bool> {
        let ttl = self.core().ttl_or_default(ttl)?;
        if !self.core().enabled() {
            return Ok(true);
        }
        let item = self.core().encode(key, value)?;
        self.core().added(self.call(|| {
            self.inner
                .backend
                .set_if_lease(key, &item, ttl, lease, token)
        }))
    }

    /// Stores a value only if `key` holds none (absent or expired): `true` when this call
    /// stored it, `false` when a value was there (left unchanged). Atomic across threads,
    /// processes and hosts sharing the store: of concurrent `add`s of one absent key exactly
    /// one returns `true` (Redis `SET NX`, Memcached `add`, one SQLite statement). `ttl =
    /// None` uses the configured `ttl`. On `backend = none` and a disabled cache it returns
    /// `true` (stored, and forgotten at once, as `set`). While Redis or Memcached is down it
    /// follows the fallback rules (see the README, "Atomic operations").
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = ddf::CacheManager::new(ddf::CacheConfig::default().with_pickle_dir(dir.path()))?;
    /// assert!(cache.add("lock", &1, None)?);
    /// assert!(!cache.add("lock", &2, None)?);
    /// assert_eq!(cache.get::<i32>("lock")?, Some(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`CacheManager::set`].
    pub fn add<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<bool> {
        let ttl = self.core().ttl_or_default(ttl)?;
        if !self.core().enabled() {
            return Ok(true);
        }
        let item = self.core().encode(key, value)?;
        let r = self.call(|| self.inner.backend.add(key, &item, ttl));
        self.core().added(self.written(r, |n| n.evict(key, false)))
    }

    /// Adds `delta` to the integer under `key` atomically and returns the new value; a missing
    /// key counts from 0 (created without expiry; an existing key keeps its expiry). The
    /// stored value is one the Python DDF reads as an `int` (Redis: decimal text; Memcached:
    /// pymemcache's `int`, flags 2; the file backend: the codec's integer). Counters stay within
    /// `0..=i64::MAX` on every backend ([`counter_step`](crate::counter_step)): a
    /// step outside is refused and changes nothing. On `backend = none` and a disabled cache it
    /// returns `delta` (counted from 0, forgotten). While Redis or Memcached is down it counts
    /// on the fallback (see the README, "Atomic operations").
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = ddf::CacheManager::new(ddf::CacheConfig::default().with_pickle_dir(dir.path()))?;
    /// assert_eq!(cache.incr("hits", 1)?, 1);
    /// assert_eq!(cache.incr("hits", 5)?, 6);
    /// assert_eq!(cache.decr("hits", 2)?, 4);
    /// assert_eq!(cache.get::<i64>("hits")?, Some(4));
    /// assert!(cache.decr("hits", 5).is_err()); // never below 0
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for a step outside the range
    /// (or any counter on `redis_pickle`); [`Error::Decode`](crate::Error::Decode) when the
    /// stored value is not an integer (Redis says so itself: an
    /// [`Error::Backend`](crate::Error::Backend) carrying its "not an integer" refusal);
    /// [`Error::Backend`](crate::Error::Backend) when the backend fails.
    pub fn incr(&self, key: &str, delta: i64) -> Result<i64> {
        self.core().check_counter()?;
        if !self.core().enabled() {
            return self.core().track(crate::backend::counter_step(0, delta));
        }
        let r = self.call(|| self.inner.backend.incr(key, delta, &self.core().counter()));
        let r = self.written(r, |n| n.evict(key, false));
        tracing::trace!(key = %crate::error::shorten(key), delta, "ddf: incr");
        self.core().counted(r)
    }

    /// Subtracts `delta`: [`CacheManager::incr`] with `-delta`.
    ///
    /// # Errors
    /// As [`CacheManager::incr`].
    pub fn decr(&self, key: &str, delta: i64) -> Result<i64> {
        let neg = crate::backend::decr_step(delta)?;
        self.incr(key, neg)
    }

    /// Sets the expiry of the value under `key` to `ttl` from now (`None`: the configured
    /// `ttl`, and no expiry when that is empty); `true` when a value was there. Redis keeps
    /// milliseconds, the file backend milliseconds, Memcached whole seconds (rounded up).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = ddf::CacheManager::new(ddf::CacheConfig::default().with_pickle_dir(dir.path()))?;
    /// cache.set("k", "v", None)?;
    /// assert!(cache.touch("k", Some(std::time::Duration::from_secs(60)))?);
    /// assert!(!cache.touch("absent", Some(std::time::Duration::from_secs(60)))?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for a zero TTL;
    /// [`Error::Backend`](crate::Error::Backend) when the backend fails.
    pub fn touch(&self, key: &str, ttl: Option<Duration>) -> Result<bool> {
        let ttl = self.core().ttl_or_default(ttl)?;
        if !self.core().enabled() {
            return Ok(false);
        }
        let r = self.call(|| self.inner.backend.touch(key, ttl));
        // A near entry is bounded by the expiry it was read with: forget it, as for a write.
        let r = self.written(r, |n| n.evict(key, false));
        self.core().track(r)
    }

    /// How long the value under `key` has left: `None` when there is no value,
    /// `Some(Expiry::Never)` when it does not expire, `Some(Expiry::In(d))` otherwise (Redis
    /// and the file backend in milliseconds, Memcached in whole seconds);
    /// `Some(Expiry::Unknown)` when the backend cannot tell (a custom backend, a Memcached key
    /// ddf maps).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// use ddf::Expiry;
    /// let cache = ddf::CacheManager::new(ddf::CacheConfig::default().with_pickle_dir(dir.path()))?;
    /// cache.set("k", "v", None)?;
    /// assert_eq!(cache.ttl("k")?, Some(Expiry::Never));
    /// assert_eq!(cache.ttl("absent")?, None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Backend`](crate::Error::Backend) when the backend fails.
    pub fn ttl(&self, key: &str) -> Result<Option<crate::backend::Expiry>> {
        Ok(self.get_meta(key)?.map(|e| e.expiry))
    }

    /// Stores an item as it is (bytes and flags, encoded by the caller), with the TTL rules of
    /// [`CacheManager::set`]: the level below `set` for the Python package `ddf_cache`.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = ddf::CacheManager::new(ddf::CacheConfig::default().with_pickle_dir(dir.path()))?;
    /// // Flags 16 outside Memcached: JSON text.
    /// cache.set_item("k", &ddf::Item::new(b"\"hello\"".to_vec(), 16), None)?;
    /// assert_eq!(cache.get::<String>("k")?.as_deref(), Some("hello"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`CacheManager::set`], without the encoding step.
    pub fn set_item(&self, key: &str, item: &Item, ttl: Option<Duration>) -> Result<()> {
        let ttl = self.core().ttl_or_default(ttl)?;
        if !self.core().enabled() {
            return Ok(());
        }
        let r = self.call(|| self.inner.backend.set(key, item, ttl));
        self.core()
            .stored(self.written(r, |n| n.evict(key, false)), 1)
    }

    /// Removes a value; `true` if one was there.
    ///
    /// # Errors
    /// [`Error::Backend`](crate::Error::Backend) when the backend fails.
    pub fn delete(&self, key: &str) -> Result<bool> {
        if !self.core().enabled() {
            return Ok(false);
        }
        let r = self.call(|| self.epochs().invalidate(|| self.inner.backend.delete(key)));
        self.core()
            .deleted(self.written(r, |n| n.evict(key, false)))
    }

    /// Removes every key that starts with `prefix`, taken literally (`*`, `?`, `[` have no
    /// special meaning), and returns how many were removed. The empty prefix removes every
    /// entry of this cache.
    ///
    /// # Errors
    /// [`Error::Backend`](crate::Error::Backend) when the backend fails (some keys may have
    /// been removed).
    pub fn invalidate_pattern(&self, prefix: &str) -> Result<u64> {
        if !self.core().enabled() {
            return Ok(0);
        }
        let r = self.call(|| {
            self.epochs()
                .invalidate(|| self.inner.backend.delete_prefix(prefix))
        });
        self.core()
            .invalidated(self.written(r, |n| n.evict_prefix(prefix)))
    }

    /// Removes every entry of this cache (its namespace), and nothing else: other applications'
    /// keys on a shared server, or other files in the cache directory, stay.
    ///
    /// # Errors
    /// [`Error::Backend`](crate::Error::Backend) when the backend fails.
    pub fn flush_all(&self) -> Result<()> {
        if !self.core().enabled() {
            return Ok(());
        }
        let r = self.call(|| self.epochs().invalidate(|| self.inner.backend.clear()));
        self.core()
            .track(self.written(r, |n| n.reset(crate::near::Cause::Flush)))
    }

    /// Releases the backend's connections now (they are also released when the last clone is
    /// dropped). The cache stays usable: the next operation reconnects.
    pub fn cleanup(&self) {
        self.inner.backend.close();
    }

    /// Returns the value stored under `key`, or computes, stores (with `ttl`; `None`: the
    /// configured `ttl`) and returns it. On a miss **one caller in the whole deployment
    /// computes**: it holds a lease on the key (`lease_ttl`); the others, in every process
    /// sharing the cache, wait up to `lock_timeout` for its value, and take over if the lease
    /// expires (its holder died or ran too long). Threads of one process share one wait. Cache
    /// failures fail open (logged): the value is computed and returned. See the README's
    /// "get_or_set" section and [`CacheManager::try_get_or_set_with`] for stale serving and
    /// early refresh.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = ddf::CacheManager::new(ddf::CacheConfig::default().with_pickle_dir(dir.path()))?;
    /// let v = cache.get_or_set("answer", None, || 42u32)?;
    /// assert_eq!(v, 42);
    /// assert_eq!(cache.get_or_set("answer", None, || 0u32)?, 42); // stored: not computed
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for a zero TTL (nothing is
    /// computed).
    pub fn get_or_set<T, F>(&self, key: &str, ttl: Option<Duration>, compute: F) -> Result<T>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> T,
    {
        self.try_get_or_set(key, ttl, || Ok(compute()))
    }

    /// [`CacheManager::get_or_set`] with a computation that may fail: its error is returned
    /// and nothing is stored (the next caller computes again).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = ddf::CacheManager::new(ddf::CacheConfig::default().with_pickle_dir(dir.path()))?;
    /// let r: Result<u32, Box<dyn std::error::Error>> =
    ///     cache.try_get_or_set("n", None, || Err("upstream down".into()));
    /// assert!(r.is_err());
    /// assert_eq!(cache.get::<u32>("n")?, None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// The computation's error; a zero TTL's (converted into `E`).
    pub fn try_get_or_set<T, E, F>(
        &self,
        key: &str,
        ttl: Option<Duration>,
        compute: F,
    ) -> std::result::Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<crate::Error>,
        F: FnOnce() -> std::result::Result<T, E>,
    {
        self.try_get_or_set_with(key, ttl, crate::RefreshOptions::new(), compute)
    }

    /// [`CacheManager::try_get_or_set`] with stale serving and early refresh
    /// ([`RefreshOptions`](crate::RefreshOptions)): a value past its `ttl` is served for
    /// `stale_ttl` more while one caller refreshes it, and with `early_refresh` a caller may
    /// refresh it before its `ttl` runs out (XFetch). Such values are stored in an envelope
    /// (see docs/memoize.md): read them back through this method, not `get`.
    ///
    /// ```
    /// use std::time::Duration;
    /// # let dir = tempfile::tempdir()?;
    /// let cache = ddf::CacheManager::new(ddf::CacheConfig::default().with_pickle_dir(dir.path()))?;
    /// let opts = ddf::RefreshOptions::new().stale_ttl(Duration::from_secs(60));
    /// let v: u32 = cache.try_get_or_set_with("k", Some(Duration::from_secs(5)), opts, || {
    ///     Ok::<_, ddf::Error>(7)
    /// })?;
    /// assert_eq!(v, 7);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`CacheManager::try_get_or_set`].
    pub fn try_get_or_set_with<T, E, F>(
        &self,
        key: &str,
        ttl: Option<Duration>,
        options: crate::RefreshOptions,
        compute: F,
    ) -> std::result::Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<crate::Error>,
        F: FnOnce() -> std::result::Result<T, E>,
    {
        let ttl = self.core().ttl_or_default(ttl)?;
        let plan = crate::stampede::Plan::new(self.config(), ttl, options);
        crate::stampede::sync::get_or_set(self, key, &plan, compute)
    }

    /// A backend call from a module that joins no codec (`get_or_set`'s lease), counted as the
    /// others are (errors, `fallback`).
    pub(crate) fn on_backend<T>(&self, op: impl FnOnce(&dyn Backend) -> Result<T>) -> Result<T> {
        self.core()
            .track(self.call(|| op(self.inner.backend.as_ref())))
    }

    /// Reads several values, one result per key, in order.
    ///
    /// # Errors
    /// As [`CacheManager::get`].
    pub fn get_many<T: DeserializeOwned>(&self, keys: &[&str]) -> Result<Vec<Option<T>>> {
        if !self.core().enabled() {
            self.core().missed(keys.len());
            return Ok(keys.iter().map(|_| None).collect());
        }
        let r = self.call(|| self.inner.backend.get_many(keys));
        self.core().got_many(self.inner.backend.name(), keys, r)
    }

    /// Stores several values with one TTL (`None`: the configured default).
    ///
    /// # Errors
    /// As [`CacheManager::set`]; nothing is written when a value cannot be encoded.
    pub fn set_many<T: Serialize>(&self, items: &[(&str, T)], ttl: Option<Duration>) -> Result<()> {
        let ttl = self.core().ttl_or_default(ttl)?;
        if !self.core().enabled() {
            return Ok(());
        }
        let encoded = self.core().encode_many(items)?;
        let r = self.call(|| self.inner.backend.set_many(&encoded, ttl));
        let r = self.written(r, |n| items.iter().for_each(|(k, _)| n.evict(k, false)));
        self.core().stored(r, items.len())
    }

    /// Removes several values; returns how many were there.
    ///
    /// # Errors
    /// [`Error::Backend`](crate::Error::Backend) when the backend fails.
    pub fn delete_many(&self, keys: &[&str]) -> Result<u64> {
        if !self.core().enabled() {
            return Ok(0);
        }
        let r = self.call(|| {
            self.epochs()
                .invalidate(|| self.inner.backend.delete_many(keys))
        });
        let r = self.written(r, |n| keys.iter().for_each(|k| n.evict(k, false)));
        self.core().deleted_many(r)
    }

    /// Reads the raw stored bytes of a key, whatever wrote them. On `memcached` and
    /// `memcached_pickle`, a Python `str` or `int` (pymemcache's flags 16, 2, 4) reads in the
    /// cache's own codec: JSON text, or the pickle of that `str` or `int`.
    ///
    /// # Errors
    /// [`Error::Backend`](crate::Error::Backend) when the backend fails.
    pub fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let item = self.get_item(key)?;
        self.core().raw_bytes(key, item)
    }

    /// Stores raw bytes (flags 0), for callers that serialize themselves.
    ///
    /// # Errors
    /// As [`CacheManager::set`].
    pub fn set_bytes(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        let ttl = self.core().ttl_or_default(ttl)?;
        if !self.core().enabled() {
            return Ok(());
        }
        let item = Item::new(value.to_vec(), flags::BYTES);
        let r = self.call(|| self.inner.backend.set(key, &item, ttl));
        self.core()
            .stored(self.written(r, |n| n.evict(key, false)), 1)
    }

    /// Lists at most `limit` keys that start with `prefix` (literally), with their expiry:
    /// what `ddf-cache keys` prints. Bounded on a large keyspace: Redis walks it with `SCAN`,
    /// Memcached with `lru_crawler metadump`, the local directory with one
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
        if !self.core().enabled() || limit == 0 {
            return Ok(Vec::new());
        }
        let r = self.call(|| self.inner.backend.keys(prefix, limit));
        self.core().track(r)
    }

    /// What is stored under `key` (expiry, size, flags), without decoding it; `Ok(None)` when
    /// nothing is. What `ddf-cache get --meta` prints, with [`CacheManager::stored_form`].
    ///
    /// # Errors
    /// The backend's error.
    pub fn get_meta(&self, key: &str) -> Result<Option<crate::backend::EntryInfo>> {
        if !self.core().enabled() {
            return Ok(None);
        }
        let r = self.call(|| self.inner.backend.meta(key));
        self.core().track(r)
    }

    /// The stored form an entry's flags name (`json`, `pickle`, a pymemcache `str` or `int`).
    pub fn stored_form(&self, entry: &crate::backend::EntryInfo) -> &'static str {
        self.core().describe_flags(entry.flags)
    }

    /// A snapshot of the statistics.
    pub fn stats(&self) -> CacheStats {
        crate::near::with_counts(self.core().stats(), self.near())
    }

    /// Facts about the backend's storage (entries, bytes, server counters...), as label/value
    /// pairs: what `ddf-cache stats` prints beside [`CacheManager::stats`].
    ///
    /// # Errors
    /// The backend's error when it cannot tell.
    pub fn backend_info(&self) -> Result<Vec<(String, String)>> {
        self.core().track(self.inner.backend.info())
    }

    /// Checks the backend and measures the round trip.
    ///
    /// # Errors
    /// The backend's error when it does not answer.
    pub fn ping(&self) -> Result<(BackendStatus, Duration)> {
        let start = Instant::now();
        let status = self.core().track(self.inner.backend.ping())?;
        Ok((status, start.elapsed()))
    }
}
