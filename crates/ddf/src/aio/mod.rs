//! The async face: [`AsyncCacheManager`] and [`ASYNC_CACHE`] (feature `async`).
//!
//! One core, two faces: the codec, the TTL rules, `enabled = false`, the statistics and the
//! invalidation epochs are the sync face's ([`crate::manager::core::Core`]); the backends are
//! built from the same validated settings, share their key layout, command building, error
//! mapping, breaker, fallback and journal with the sync backends, and differ only in how the
//! bytes travel ([`backend::AsyncBackend`]).

pub(crate) mod backend;
#[cfg(feature = "redis")]
mod redis;
mod resilient;
#[cfg(any(feature = "memcached", feature = "redis"))]
mod scopes;

use std::fmt;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use self::backend::{AsyncBackend, Blocking, Noted, Place};
use crate::backend::{Backend, BackendStatus};
use crate::codec::{Codec, flags};
use crate::config::{BackendSettings, CacheConfig};
use crate::error::Result;
use crate::item::Item;
use crate::manager::CacheStats;
use crate::manager::core::Core;
use crate::memo::epoch::Epochs;
use crate::near::{Lookup, Near, Read};

/// The async cache: [`CacheManager`](crate::CacheManager)'s methods, names, arguments and
/// meaning, as futures, over native async clients (feature `async`).
///
/// Cloning is cheap (an `Arc`); clones share the backend, its connections and the statistics.
/// It is `Send + Sync` and every future it returns is `Send`, so it works inside
/// `tokio::spawn`. It needs a tokio runtime for server backends; the file backend's writes
/// run on the runtime's blocking pool (inline when polled outside a runtime).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use ddf::{AsyncCacheManager, CacheConfig};
///
/// let dir = tempfile::tempdir()?;
/// let cache = AsyncCacheManager::new(CacheConfig::default().with_pickle_dir(dir.path()))?;
/// cache.set("answer", &42u32, Some(Duration::from_secs(60))).await?;
/// assert_eq!(cache.get::<u32>("answer").await?, Some(42));
/// assert_eq!(cache.get::<u32>("question").await?, None);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct AsyncCacheManager {
    inner: Arc<Inner>,
}

struct Inner {
    core: Core,
    backend: Arc<dyn AsyncBackend>,
    /// `near_cache = true`: the in-process tier, the sync face's (see `near/`).
    near: Option<Arc<Near>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.backend.close();
    }
}

/// An owned handle on a cache's invalidation epochs, for a store task that may outlive its
/// caller.
struct OwnedEpochs(AsyncCacheManager);

impl std::ops::Deref for OwnedEpochs {
    type Target = Epochs;
    fn deref(&self) -> &Epochs {
        self.0.epochs()
    }
}

impl fmt::Debug for AsyncCacheManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let core = &self.inner.core;
        f.debug_struct("AsyncCacheManager")
            .field("backend", &self.inner.backend.name())
            .field("codec", &core.codec())
            .field("namespace", &core.config().namespace)
            .field("enabled", &core.config().enabled)
            .finish()
    }
}

/// The async backend a config names, from the same validated settings as the sync face's.
fn from_config(
    config: &CacheConfig,
    fallback: &Arc<AtomicU64>,
    breaker: &mut Option<Arc<crate::backend::resilience::Resilient>>,
) -> Result<Arc<dyn AsyncBackend>> {
    // Only the server backends have a fallback to count.
    #[cfg(not(any(feature = "redis", feature = "memcached")))]
    let _ = (fallback, breaker);
    Ok(match config.backend_settings()? {
        BackendSettings::None => Arc::new(Blocking::new(
            Arc::new(crate::backend::none::NoneBackend),
            Place::Inline,
            Place::Inline,
        )),
        // Reads inline, writes on the blocking pool. Measured on this project's machine
        // (examples/async_bench.rs, `file` rows, medians): get 1.9 µs inline against 7.5 µs
        // through spawn_blocking, set 2.8 µs against 10 µs. A read is one indexed SELECT on a
        // pooled connection and WAL readers never wait for a writer: the hop would cost 4x the
        // read. A write may wait up to SQLite's busy timeout (5 s) for another process's
        // transaction, which must not hold a worker: it pays the hop.
        BackendSettings::File(s) => Arc::new(Blocking::new(
            Arc::new(crate::backend::file::FileBackend::open(
                s.dir,
                &s.namespace,
            )?),
            Place::Inline,
            Place::Offload,
        )),
        #[cfg(not(feature = "redis"))]
        BackendSettings::Redis(_) => return Err(config.feature_off("redis")),
        #[cfg(not(feature = "memcached"))]
        BackendSettings::Memcached(_) => return Err(config.feature_off("memcached")),
        // A Cluster: the sync face's breaker per primary (the same journal scopes, so the two
        // faces replay each other's records) and slot map, each primary's requests over async
        // connections to its slots' owners (`aio/redis/cluster.rs`). With the near cache, the
        // sync backend on the blocking pool: its fills need the node that answered, which the
        // async resilience wrapper does not forward yet.
        #[cfg(feature = "redis")]
        BackendSettings::Redis(s) if matches!(s.target, crate::config::RedisTarget::Cluster(_)) => {
            match crate::backend::redis::cluster::Shards::discover(&s) {
                Some(shards) if !config.near_cache => {
                    tracing::info!(backend = config.backend.as_str(), namespace = %config.namespace, servers = %s.identity(), fallback = config.fallback.as_str(), "ddf: cache backend chosen (async, a breaker per Cluster primary)");
                    let sync = crate::backend::per_server_router(
                        config,
                        config.backend.as_str(),
                        s.identity(),
                        shards.clone(),
                        shards.specs(),
                    )?;
                    Arc::new(redis::cluster::AsyncCluster::new(
                        shards,
                        sync,
                        s.timeout,
                        s.connect_timeout,
                        fallback,
                    ))
                }
                _ => Arc::new(
                    Blocking::new(
                        crate::backend::from_config(config)?,
                        Place::Offload,
                        Place::Offload,
                    )
                    .counting_fallback(fallback.clone()),
                ),
            }
        }
        #[cfg(feature = "redis")]
        BackendSettings::Redis(settings) => {
            let twin = crate::backend::redis::RedisBackend::new(&settings)?;
            let primary =
                redis::AsyncRedis::new(Arc::new(twin), settings.timeout, settings.connect_timeout);
            let state = crate::backend::redis_resilient(config, settings)?;
            *breaker = Some(state.clone());
            match primary {
                Some(p) => Arc::new(resilient::AsyncResilient::new(
                    state,
                    Arc::new(p),
                    fallback.clone(),
                )),
                // Not reached (standalone and Sentinel have an async twin): should redis-rs
                // refuse to rebuild the client, the sync backend on the blocking pool.
                None => Arc::new(
                    Blocking::new(state, Place::Offload, Place::Offload)
                        .counting_fallback(fallback.clone()),
                ),
            }
        }
        // Several servers: the sync face's breaker per server (the same journal scopes, so the
        // two faces replay each other's records), each driven with its server's async client.
        #[cfg(feature = "memcached")]
        BackendSettings::Memcached(s) if s.servers.len() > 1 => {
            use crate::backend::memcached::{aio, placement::Placement};
            let (specs, clients) = aio::per_server(&s);
            let sync = crate::backend::per_server_router(
                config,
                config.backend.as_str(),
                s.identity(),
                Arc::new(Placement::new(&s)),
                specs,
            )?;
            Arc::new(scopes::AsyncPerScope::new(sync, clients, fallback))
        }
        #[cfg(feature = "memcached")]
        BackendSettings::Memcached(settings) => {
            use crate::backend::memcached::{MemcachedBackend, aio::AsyncMemcached};
            // One backend for both paths: its servers' health (the dead-server policy) is
            // shared, so the probe's successful ping also ends the async path's skip window.
            // Building it connects to nothing, so the factory need not build a new one.
            let twin = Arc::new(MemcachedBackend::new(&settings));
            let shared = twin.clone();
            let factory: crate::backend::resilience::Factory =
                Box::new(move || Ok(shared.clone() as Arc<dyn Backend>));
            let state = crate::backend::resilient_state(
                config,
                config.backend.as_str(),
                settings.identity(),
                factory,
            )?;
            *breaker = Some(state.clone());
            Arc::new(resilient::AsyncResilient::new(
                state,
                Arc::new(AsyncMemcached::new(twin)),
                fallback.clone(),
            ))
        }
    })
}

impl AsyncCacheManager {
    /// Builds the cache the configuration describes. A plain function: it may be called inside
    /// or outside a runtime, and opens no connection for calls (they open on first use). Like
    /// the sync face, if invalidations recorded during an outage are pending, it applies them
    /// for at most one `timeout` before returning (the rest goes on in the background).
    ///
    /// # Errors
    /// As [`CacheManager::new`](crate::CacheManager::new): a configuration that cannot work,
    /// or an unusable cache directory.
    pub fn new(config: CacheConfig) -> Result<Self> {
        let core = Core::new(config);
        let mut breaker = None;
        let backend = from_config(core.config(), &core.fallback_tally(), &mut breaker)?;
        let near = crate::near::for_async(core.config(), breaker)?;
        let mut cache = Self::from_core(core, backend);
        if let Some(inner) = Arc::get_mut(&mut cache.inner) {
            inner.near = near;
        }
        Ok(cache)
    }

    /// A cache over a sync [`Backend`] built elsewhere (your own, or a wrapper), each call run
    /// on the runtime's blocking pool. The config gives `enabled` and `ttl`.
    pub fn with_backend(config: CacheConfig, backend: Arc<dyn Backend>) -> Self {
        Self::from_parts(
            config,
            Arc::new(Blocking::new(backend, Place::Offload, Place::Offload)),
        )
    }

    pub(crate) fn from_parts(config: CacheConfig, backend: Arc<dyn AsyncBackend>) -> Self {
        Self::from_core(Core::new(config), backend)
    }

    fn from_core(core: Core, backend: Arc<dyn AsyncBackend>) -> Self {
        AsyncCacheManager {
            inner: Arc::new(Inner {
                core,
                backend,
                near: None,
            }),
        }
    }

    fn core(&self) -> &Core {
        &self.inner.core
    }

    fn backend(&self) -> &dyn AsyncBackend {
        self.inner.backend.as_ref()
    }

    /// A write through this cache: the near cache forgets what it changed once the server
    /// call returned, whatever it returned (docs/near-cache.md, "Own writes"), or once the
    /// write's future is dropped before that (a cancelled write may have reached the server):
    /// hold the guard across the call's await, then drop it.
    fn forgetting<F: FnOnce(&Near)>(&self, forget: F) -> Forget<'_, F> {
        Forget {
            near: self.inner.near.as_deref(),
            forget: Some(forget),
        }
    }

    /// The configuration this cache was built from.
    pub fn config(&self) -> &CacheConfig {
        self.core().config()
    }

    /// The backend's name (`none`, `pickle`, `redis`, ...).
    pub fn backend_name(&self) -> &'static str {
        self.backend().name()
    }

    /// The codec values are stored with.
    pub fn codec(&self) -> Codec {
        self.core().codec()
    }

    /// This cache's identity in this process (see `CacheManager::id`).
    #[allow(dead_code, reason = "for async memoization (memo/)")]
    pub(crate) fn id(&self) -> u64 {
        self.core().id()
    }

    /// The invalidation epochs of this cache: use [`Epochs::invalidate_async`] and
    /// [`Epochs::store_async`] from async code.
    pub(crate) fn epochs(&self) -> &Epochs {
        self.core().epochs()
    }

    /// Whether a value written can be read back (see `CacheManager::is_enabled`).
    #[allow(dead_code, reason = "for async memoization (memo/)")]
    pub(crate) fn is_enabled(&self) -> bool {
        self.core().is_enabled()
    }

    /// Reads a value. `Ok(None)` is a miss.
    ///
    /// # Errors
    /// As [`CacheManager::get`](crate::CacheManager::get).
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.read(key).await.result? {
            Read::Held(held) => self.core().decode_held(key, &held).map(Some),
            Read::Fetched(item) => self.core().decode(key, item),
        }
    }

    /// [`AsyncCacheManager::get`], and whether it met a temporary server failure that it
    /// answered otherwise (a miss, or the fallback): memoization's note.
    #[allow(dead_code, reason = "for async memoization (memo/)")]
    pub(crate) async fn get_noted<T: DeserializeOwned>(&self, key: &str) -> Noted<Option<T>> {
        let Noted { result, degraded } = self.get_item(key).await;
        Noted {
            result: result.and_then(|item| self.core().decode(key, item)),
            degraded,
        }
    }

    /// Reads any value as a JSON view, whatever its type.
    ///
    /// # Errors
    /// As [`AsyncCacheManager::get`].
    pub async fn get_json(&self, key: &str) -> Result<Option<serde_json::Value>> {
        let item = self.get_item(key).await.result?;
        self.core().decode_json(key, item)
    }

    async fn get_item(&self, key: &str) -> Noted<Option<Item>> {
        let Noted { result, degraded } = self.read(key).await;
        Noted {
            result: result.map(|r| match r {
                Read::Held(held) => Some(Item::clone(&held)),
                Read::Fetched(item) => item,
            }),
            degraded,
        }
    }

    /// A read: from the near cache when it holds the key (no await), else from the backend,
    /// offered to the near cache with the ticket taken before the call.
    async fn read(&self, key: &str) -> Noted<Read> {
        if !self.core().enabled() {
            self.core().missed(1);
            return Noted::clean(Ok(Read::Fetched(None)));
        }
        let near = self.inner.near.as_deref();
        let ticket = match near.map(|n| n.lookup(key)) {
            Some(Lookup::Hit(held)) => {
                self.core().near_hit();
                return Noted::clean(Ok(Read::Held(held)));
            }
            Some(Lookup::Miss(t)) => t,
            None => None,
        };
        let Noted { result, degraded } = match (near, ticket) {
            // A fill: with how long the key has left on the server, in the same round trip.
            (Some(n), Some(t)) => {
                let (Noted { result, degraded }, answered) =
                    self.backend().get_expiring_from(key).await;
                if let Ok(Some((item, expiry))) = &result {
                    // A degraded read may have been the fallback's: never stored.
                    n.fill_from(t, key, item, *expiry, degraded, answered.as_ref());
                }
                Noted {
                    result: result.map(|o| o.map(|(item, _)| item)),
                    degraded,
                }
            }
            _ => self.backend().get(key).await,
        };
        Noted {
            result: self.core().got(result).map(Read::Fetched),
            degraded,
        }
    }

    /// Stores a value. `ttl = None` uses the configured `ttl`. The value is encoded when this
    /// is called (so `T` need not be `Sync`), stored when the future is awaited.
    ///
    /// # Errors
    /// As [`CacheManager::set`](crate::CacheManager::set).
    pub fn set<'a, T: Serialize + ?Sized>(
        &'a self,
        key: &'a str,
        value: &T,
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<()>> + Send + 'a {
        let noted = self.set_noted(key, value, ttl);
        async move { noted.await.result }
    }

    /// [`AsyncCacheManager::set`] with memoization's note (see
    /// [`AsyncCacheManager::get_noted`]).
    pub(crate) fn set_noted<'a, T: Serialize + ?Sized>(
        &'a self,
        key: &'a str,
        value: &T,
        ttl: Option<Duration>,
    ) -> impl Future<Output = Noted<()>> + Send + 'a {
        let prepared = self.prepare_set(key, value, ttl);
        async move {
            match prepared {
                Err(e) => Noted::clean(Err(e)),
                Ok(None) => Noted::clean(Ok(())),
                Ok(Some((item, ttl))) => self.set_item(key, item, ttl).await,
            }
        }
    }

    /// A `set`'s item and TTL, encoded now; `None` when the cache is disabled.
    fn prepare_set<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<Option<(Item, Option<Duration>)>> {
        let ttl = self.core().ttl_or_default(ttl)?;
        if !self.core().enabled() {
            return Ok(None);
        }
        Ok(Some((self.core().encode(key, value)?, ttl)))
    }

    /// Memoization's store: the value encoded now, then written (as [`AsyncCacheManager::set`])
    /// unless an invalidation began since `epoch`, in a task of its own that holds the
    /// store's registration until the write finished (see [`Epochs::store_async`]).
    pub(crate) fn store_memoized<T: Serialize + ?Sized>(
        &self,
        epoch: u64,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
    ) -> impl Future<Output = Option<Result<()>>> + Send + 'static {
        let prepared = self.prepare_set(key, value, ttl);
        let (this, key) = (self.clone(), key.to_owned());
        let write = async move {
            match prepared? {
                None => Ok(()),
                Some((item, ttl)) => this.set_item(&key, item, ttl).await.result,
            }
        };
        Epochs::store_async(OwnedEpochs(self.clone()), epoch, write)
    }

    /// [`AsyncCacheManager::store_memoized`] fenced by a `get_or_set` lease
    /// (`Backend::set_if_lease`): `Some(Ok(false))` when the lease no longer holds `token`.
    pub(crate) fn store_under_lease<T: Serialize + ?Sized>(
        &self,
        epoch: u64,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
        lease: &str,
        token: &[u8],
    ) -> impl Future<Output = Option<Result<bool>>> + Send + 'static {
        let prepared = self.prepare_set(key, value, ttl);
        let (this, key) = (self.clone(), key.to_owned());
        let (lease, token) = (lease.to_owned(), token.to_vec());
        let write = async move {
            match prepared? {
                None => Ok(true),
                Some((item, ttl)) => {
                    let r = this
                        .backend()
                        .set_if_lease(&key, &item, ttl, &lease, &token)
                        .await;
                    this.core().added(r)
                }
            }
        };
        Epochs::store_async(OwnedEpochs(self.clone()), epoch, write)
    }

    async fn set_item(&self, key: &str, item: Item, ttl: Option<Duration>) -> Noted<()> {
        let forget = self.forgetting(|n| n.evict(key, false));
        let Noted { result, degraded } = self.backend().set(key, &item, ttl).await;
        drop(forget);
        Noted {
            result: self.core().stored(result, 1),
            degraded,
        }
    }

    /// Stores a value only if `key` holds none; `true` when this call stored it. The value is
    /// encoded when this is called.
    ///
    /// # Errors
    /// As [`CacheManager::add`](crate::CacheManager::add).
    pub fn add<'a, T: Serialize + ?Sized>(
        &'a self,
        key: &'a str,
        value: &T,
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<bool>> + Send + 'a {
        let prepared = self.prepare_set(key, value, ttl);
        async move {
            match prepared? {
                None => Ok(true),
                Some((item, ttl)) => {
                    let forget = self.forgetting(|n| n.evict(key, false));
                    let r = self.backend().add(key, &item, ttl).await;
                    drop(forget);
                    self.core().added(r)
                }
            }
        }
    }

    /// Adds `delta` to the integer under `key` atomically; returns the new value.
    ///
    /// # Errors
    /// As [`CacheManager::incr`](crate::CacheManager::incr).
    pub async fn incr(&self, key: &str, delta: i64) -> Result<i64> {
        self.core().check_counter()?;
        if !self.core().enabled() {
            return self.core().track(crate::backend::counter_step(0, delta));
        }
        let forget = self.forgetting(|n| n.evict(key, false));
        let r = self.backend().incr(key, delta, self.core().counter()).await;
        drop(forget);
        self.core().counted(r)
    }

    /// Subtracts `delta`: [`AsyncCacheManager::incr`] with `-delta`.
    ///
    /// # Errors
    /// As [`CacheManager::incr`](crate::CacheManager::incr).
    pub async fn decr(&self, key: &str, delta: i64) -> Result<i64> {
        let neg = crate::backend::decr_step(delta)?;
        self.incr(key, neg).await
    }

    /// Sets the expiry of the value under `key`; `true` when a value was there.
    ///
    /// # Errors
    /// As [`CacheManager::touch`](crate::CacheManager::touch).
    pub async fn touch(&self, key: &str, ttl: Option<Duration>) -> Result<bool> {
        let ttl = self.core().ttl_or_default(ttl)?;
        if !self.core().enabled() {
            return Ok(false);
        }
        // A near entry is bounded by the expiry it was read with: forget it, as for a write.
        let forget = self.forgetting(|n| n.evict(key, false));
        let r = self.backend().touch(key, ttl).await;
        drop(forget);
        self.core().track(r)
    }

    /// How long the value under `key` has left (`None`: no value).
    ///
    /// # Errors
    /// As [`CacheManager::ttl`](crate::CacheManager::ttl).
    pub async fn ttl(&self, key: &str) -> Result<Option<crate::backend::Expiry>> {
        if !self.core().enabled() {
            return Ok(None);
        }
        let r = self.backend().meta(key).await;
        Ok(self.core().track(r)?.map(|e| e.expiry))
    }

    /// Removes a value; `true` if one was there.
    ///
    /// # Errors
    /// As [`CacheManager::delete`](crate::CacheManager::delete).
    pub async fn delete(&self, key: &str) -> Result<bool> {
        if !self.core().enabled() {
            return Ok(false);
        }
        let forget = self.forgetting(|n| n.evict(key, false));
        let r = self
            .epochs()
            .invalidate_async(self.backend().delete(key))
            .await;
        drop(forget);
        self.core().deleted(r)
    }

    /// Removes every key that starts with `prefix`, taken literally; returns how many.
    ///
    /// # Errors
    /// As [`CacheManager::invalidate_pattern`](crate::CacheManager::invalidate_pattern).
    pub async fn invalidate_pattern(&self, prefix: &str) -> Result<u64> {
        if !self.core().enabled() {
            return Ok(0);
        }
        let forget = self.forgetting(|n| n.evict_prefix(prefix));
        let r = self
            .epochs()
            .invalidate_async(self.backend().delete_prefix(prefix))
            .await;
        drop(forget);
        self.core().invalidated(r)
    }

    /// Removes every entry of this cache (its namespace), and nothing else.
    ///
    /// # Errors
    /// As [`CacheManager::flush_all`](crate::CacheManager::flush_all).
    pub async fn flush_all(&self) -> Result<()> {
        if !self.core().enabled() {
            return Ok(());
        }
        let forget = self.forgetting(|n| n.reset(crate::near::Cause::Flush));
        let r = self.epochs().invalidate_async(self.backend().clear()).await;
        drop(forget);
        self.core().track(r)
    }

    /// Releases the backend's connections now; the next operation reconnects.
    pub fn cleanup(&self) {
        self.backend().close();
    }

    /// Reads several values, one result per key, in order.
    ///
    /// # Errors
    /// As [`AsyncCacheManager::get`].
    pub async fn get_many<T: DeserializeOwned>(&self, keys: &[&str]) -> Result<Vec<Option<T>>> {
        if !self.core().enabled() {
            self.core().missed(keys.len());
            return Ok(keys.iter().map(|_| None).collect());
        }
        let r = self.backend().get_many(keys).await;
        self.core().got_many(self.backend().name(), keys, r)
    }

    /// Stores several values with one TTL (`None`: the configured default). Encoded when
    /// called, stored when awaited; nothing is written when a value cannot be encoded.
    ///
    /// # Errors
    /// As [`CacheManager::set_many`](crate::CacheManager::set_many).
    pub fn set_many<'a, T: Serialize>(
        &'a self,
        items: &[(&'a str, T)],
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<()>> + Send + 'a {
        let prepared = self.core().ttl_or_default(ttl).and_then(|ttl| {
            if !self.core().enabled() {
                return Ok(None);
            }
            Ok(Some((self.core().encode_many(items)?, ttl)))
        });
        async move {
            match prepared? {
                None => Ok(()),
                Some((encoded, ttl)) => {
                    let forget =
                        self.forgetting(|n| encoded.iter().for_each(|(k, _)| n.evict(k, false)));
                    let r = self.backend().set_many(&encoded, ttl).await;
                    drop(forget);
                    self.core().stored(r, encoded.len())
                }
            }
        }
    }

    /// Removes several values; returns how many were there.
    ///
    /// # Errors
    /// As [`CacheManager::delete_many`](crate::CacheManager::delete_many).
    pub async fn delete_many(&self, keys: &[&str]) -> Result<u64> {
        if !self.core().enabled() {
            return Ok(0);
        }
        let forget = self.forgetting(|n| keys.iter().for_each(|k| n.evict(k, false)));
        let r = self
            .epochs()
            .invalidate_async(self.backend().delete_many(keys))
            .await;
        drop(forget);
        self.core().deleted_many(r)
    }

    /// Reads the raw stored bytes of a key (see
    /// [`CacheManager::get_bytes`](crate::CacheManager::get_bytes)).
    ///
    /// # Errors
    /// As [`AsyncCacheManager::get`].
    pub async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let item = self.get_item(key).await.result?;
        self.core().raw_bytes(key, item)
    }

    /// Stores raw bytes (flags 0), for callers that serialize themselves.
    ///
    /// # Errors
    /// As [`AsyncCacheManager::set`].
    pub async fn set_bytes(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        let ttl = self.core().ttl_or_default(ttl)?;
        if !self.core().enabled() {
            return Ok(());
        }
        let item = Item::new(value.to_vec(), flags::BYTES);
        self.set_item(key, item, ttl).await.result
    }

    /// [`CacheManager::get_or_set`](crate::CacheManager::get_or_set) with an async
    /// computation: on a miss one caller in the whole deployment computes (the lease), the
    /// others await its value (timers, never a blocked worker), and tasks of one process share
    /// one wait.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
    /// # let dir = tempfile::tempdir()?;
    /// let cache = ddf::AsyncCacheManager::new(ddf::CacheConfig::default().with_pickle_dir(dir.path()))?;
    /// let v = cache.get_or_set("answer", None, || async { 42u32 }).await?;
    /// assert_eq!(v, 42);
    /// assert_eq!(cache.get_or_set("answer", None, || async { 0u32 }).await?, 42);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`CacheManager::get_or_set`](crate::CacheManager::get_or_set).
    pub async fn get_or_set<T, F, Fut>(
        &self,
        key: &str,
        ttl: Option<Duration>,
        compute: F,
    ) -> Result<T>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        self.try_get_or_set_with(key, ttl, crate::RefreshOptions::new(), || async {
            Ok(compute().await)
        })
        .await
    }

    /// [`CacheManager::try_get_or_set_with`](crate::CacheManager::try_get_or_set_with) with
    /// an async computation (stale serving and early refresh included).
    ///
    /// # Errors
    /// The computation's error; a zero TTL's (converted into `E`).
    pub async fn try_get_or_set_with<T, E, F, Fut>(
        &self,
        key: &str,
        ttl: Option<Duration>,
        options: crate::RefreshOptions,
        compute: F,
    ) -> std::result::Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<crate::Error>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
    {
        let ttl = self.core().ttl_or_default(ttl)?;
        let plan = crate::stampede::Plan::new(self.config(), ttl, options);
        crate::stampede::task::get_or_set(self, key, &plan, compute).await
    }

    /// The backend, for `get_or_set`'s lease (`take_lease`, `release_lease`, `extend_lease`).
    pub(crate) fn lease_backend(&self) -> &dyn AsyncBackend {
        self.backend()
    }

    /// A snapshot of the statistics (a plain method: no I/O).
    pub fn stats(&self) -> CacheStats {
        crate::near::with_counts(self.core().stats(), self.inner.near.as_deref())
    }

    /// Facts about the backend's storage, as label/value pairs.
    ///
    /// # Errors
    /// The backend's error when it cannot tell.
    pub async fn backend_info(&self) -> Result<Vec<(String, String)>> {
        let r = self.backend().info().await;
        self.core().track(r)
    }

    /// Checks the backend and measures the round trip.
    ///
    /// # Errors
    /// The backend's error when it does not answer.
    pub async fn ping(&self) -> Result<(BackendStatus, Duration)> {
        let start = Instant::now();
        let r = self.backend().ping().await;
        let status = self.core().track(r)?;
        Ok((status, start.elapsed()))
    }
}

/// The global async cache, built on first use from [`CACHE_CONFIG`](crate::CACHE_CONFIG).
///
/// First use never panics, and may happen inside or outside a runtime. If the backend cannot
/// be built, the error is logged at `error` level, kept for
/// [`global_error`](crate::global_error), and this is a disabled cache (every get misses).
pub static ASYNC_CACHE: LazyLock<AsyncCacheManager> = LazyLock::new(|| {
    let config = crate::CACHE_CONFIG.clone();
    match AsyncCacheManager::new(config.clone()) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "ddf: cannot build the async cache backend; caching is disabled");
            let _ = crate::GLOBAL_ASYNC_ERROR.set(e);
            AsyncCacheManager::with_backend(
                config.with_enabled(false),
                Arc::new(crate::backend::none::NoneBackend),
            )
        }
    }
});

/// What a write makes the near cache forget, done when dropped: after the write's await, or
/// when its future is dropped mid-call (see [`AsyncCacheManager::forgetting`]).
struct Forget<'a, F: FnOnce(&Near)> {
    near: Option<&'a Near>,
    forget: Option<F>,
}

impl<F: FnOnce(&Near)> Drop for Forget<'_, F> {
    fn drop(&mut self) {
        if let (Some(n), Some(f)) = (self.near, self.forget.take()) {
            f(n);
        }
    }
}
