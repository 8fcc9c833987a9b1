//! The byte-level backend boundary and the factory that builds a backend from a config.
//!
//! A [`Backend`] stores opaque bytes (plus a 32-bit `flags` word that only Memcached keeps on the
//! server; it carries pymemcache's type flags) under the *user's* keys, inside the namespace it was
//! built with. Codecs, default TTLs, statistics and `enabled = false` live above it, once, in
//! [`CacheManager`](crate::CacheManager). The boundary is deliberately narrow and synchronous so
//! that an async twin, an in-process L1 tier (`Tiered<L1, L2>`) or a fallback wrapper are
//! additions, not rewrites.
//!
//! Key layout (namespace joining, escaping, file names, memcached's key rules) is done in one
//! place, [`crate::key`]; backends call it rather than joining strings themselves.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{BackendSettings, CacheConfig};
use crate::error::Result;
pub use crate::item::Item;

#[cfg(any(feature = "redis", feature = "memcached"))]
mod ascii;
pub(crate) mod degraded;
#[cfg(any(feature = "redis", feature = "memcached"))]
pub(crate) mod dial;
pub mod file;
#[cfg(feature = "memcached")]
pub mod memcached;
pub mod none;
#[cfg(feature = "redis")]
pub mod redis;
pub(crate) mod resilience;
mod sqlite;

/// What a backend's health check reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackendStatus {
    /// One line a human can read: which server or directory answered, its state.
    pub detail: String,
}

/// How long a stored entry has left, as [`Backend::keys`] and [`Backend::meta`] report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Expiry {
    /// It does not expire.
    Never,
    /// It expires in this long (rounded down to the backend's precision).
    In(Duration),
    /// The backend does not tell.
    Unknown,
}

/// One stored entry as `ddf-cache keys` and `ddf-cache get --meta` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EntryInfo {
    /// The user's key (the namespace left out).
    pub key: String,
    /// Its expiry.
    pub expiry: Expiry,
    /// The stored size in bytes, when the backend tells.
    pub size: Option<u64>,
    /// The stored flags word (pymemcache's type flags), when the backend keeps one.
    pub flags: Option<u32>,
}

impl EntryInfo {
    /// An entry: its key and expiry, with neither size nor flags known.
    ///
    /// ```
    /// let e = ddf::EntryInfo::new("k", ddf::Expiry::Never);
    /// assert_eq!((e.key.as_str(), e.size), ("k", None));
    /// ```
    pub fn new(key: impl Into<String>, expiry: Expiry) -> Self {
        EntryInfo {
            key: key.into(),
            expiry,
            size: None,
            flags: None,
        }
    }
}

/// The error of an operation a backend does not offer.
pub(crate) fn unsupported(backend: &'static str, what: &str) -> crate::error::Error {
    crate::error::Error::Backend {
        backend,
        message: format!("{what} is not supported by this backend"),
        temporary: false,
        source: None,
    }
}

/// How the cache's codec stores a counter, handed to [`Backend::incr`] by the manager so that a
/// backend that stores items as the codec writes them (the file backend) reads and writes an
/// integer without calling a codec itself.
///
/// A backend's `incr` calls it; users implement it only to test a backend of their own:
///
/// ```
/// use ddf::{Counter, Item, Result};
///
/// /// Counters as decimal text.
/// struct Decimal;
///
/// impl Counter for Decimal {
///     fn read(&self, key: &str, item: &Item) -> Result<i64> {
///         std::str::from_utf8(&item.data)
///             .ok()
///             .and_then(|s| s.parse().ok())
///             .ok_or_else(|| ddf::Error::InvalidArgument(format!("{key}: not a number")))
///     }
///     fn write(&self, _key: &str, n: i64) -> Result<Item> {
///         Ok(Item::new(n.to_string().into_bytes(), 2))
///     }
/// }
///
/// let item = Decimal.write("hits", 41)?;
/// assert_eq!(Decimal.read("hits", &item)? + 1, 42);
/// # Ok::<(), ddf::Error>(())
/// ```
pub trait Counter: Send + Sync {
    /// The integer a stored item holds.
    ///
    /// # Errors
    /// [`Error::Decode`](crate::Error::Decode) when the item is not an integer.
    fn read(&self, key: &str, item: &Item) -> Result<i64>;

    /// The item that stores `n`.
    ///
    /// # Errors
    /// [`Error::Encode`](crate::Error::Encode) when the codec cannot write it.
    fn write(&self, key: &str, n: i64) -> Result<Item>;
}

/// The one range rule of counters, on every backend: `current + delta` must stay within
/// `0..=i64::MAX`. Memcached's counters are unsigned 64-bit, its `decr` stops at 0 and its
/// `incr` wraps; Redis and SQLite are signed. Rather than differ, every backend refuses a step
/// that leaves that range (nothing is changed) with this error.
///
/// ```
/// use ddf::counter_step;
/// assert_eq!(counter_step(2, 3).unwrap(), 5);
/// assert!(counter_step(2, -3).is_err());
/// assert!(counter_step(i64::MAX, 1).is_err());
/// ```
///
/// # Errors
/// [`Error::InvalidArgument`](crate::Error::InvalidArgument) naming the rule.
pub fn counter_step(current: i64, delta: i64) -> Result<i64> {
    match current.checked_add(delta) {
        Some(n) if n >= 0 => Ok(n),
        _ => Err(crate::error::Error::InvalidArgument(format!(
            "a counter of {current} changed by {delta} would leave 0..={}: ddf's counters are \
             never negative and never wrap, on every backend (memcached's are unsigned); \
             nothing was changed",
            i64::MAX
        ))),
    }
}

/// The step `decr(delta)` adds: `-delta`, or the range rule's error when `-delta` is no `i64`
/// (`delta = i64::MIN`: no counter within the range can take it).
pub(crate) fn decr_step(delta: i64) -> Result<i64> {
    delta.checked_neg().ok_or_else(|| {
        crate::error::Error::InvalidArgument(format!(
            "decr by {delta} would add {}: ddf's counters stay within 0..={}, on every \
             backend; nothing was changed",
            -i128::from(delta),
            i64::MAX
        ))
    })
}

/// The byte-level storage trait every backend implements.
///
/// Keys are the user's keys; the backend joins them with its namespace through ddf's one key layout.
/// Every method is safe to call from many threads at once.
///
/// Batch methods have default implementations in terms of the single-key ones; backends override
/// them where the protocol has a faster path (MGET, pipelines, memcached multi-get).
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// The backend's name as in the INI file (`none`, `pickle`, `redis`, ...).
    fn name(&self) -> &'static str;

    /// Reads a value. `Ok(None)` is a miss (absent or expired).
    fn get(&self, key: &str) -> Result<Option<Item>>;

    /// Stores a value. `ttl = None` means no expiry. A TTL is never zero (the manager refuses it).
    fn set(&self, key: &str, item: &Item, ttl: Option<Duration>) -> Result<()>;

    /// Removes a value; `true` if something was removed.
    fn delete(&self, key: &str) -> Result<bool>;

    /// Stores a value only if `key` holds none (absent, or expired): `Ok(true)` when this call
    /// stored it, `Ok(false)` when a live value was already there (it is left unchanged). Atomic
    /// against every other writer of the same store, other processes included: of many
    /// concurrent `add`s of one absent key exactly one returns `true`. `ttl = None` means no
    /// expiry; the TTL keeps the backend's precision (Redis and the file backend: milliseconds;
    /// Memcached: whole seconds, rounded up). The default says it is not supported (a custom
    /// backend may override it).
    fn add(&self, key: &str, item: &Item, ttl: Option<Duration>) -> Result<bool> {
        let _ = (key, item, ttl);
        Err(unsupported(self.name(), "add"))
    }

    /// Adds `delta` (negative: subtracts) to the counter under `key` atomically and returns the
    /// new value. A missing (or expired) key counts from 0 and is created without expiry; an
    /// existing key keeps its expiry. The result must stay within `0..=i64::MAX`
    /// ([`counter_step`]): otherwise nothing changes and the error says so. A backend that
    /// stores items in the cache's codec (the file backend) reads and writes the value through
    /// `counter`; Redis keeps decimal text, Memcached a pymemcache `int` (flags 2). The default
    /// says it is not supported.
    fn incr(&self, key: &str, delta: i64, counter: &dyn Counter) -> Result<i64> {
        let _ = (key, delta, counter);
        Err(unsupported(self.name(), "incr"))
    }

    /// Sets the expiry of the value under `key` to `ttl` from now (`None`: no expiry),
    /// leaving the value alone; `true` when a live value was there. The default says it is
    /// not supported.
    fn touch(&self, key: &str, ttl: Option<Duration>) -> Result<bool> {
        let _ = (key, ttl);
        Err(unsupported(self.name(), "touch"))
    }

    /// Removes every key of this namespace that starts with `prefix`, taken literally (no glob or
    /// regex meaning). Returns the number of keys removed.
    fn delete_prefix(&self, prefix: &str) -> Result<u64>;

    /// Removes every key of this cache's namespace, and nothing else.
    fn clear(&self) -> Result<()>;

    /// Checks that the backend answers.
    fn ping(&self) -> Result<BackendStatus>;

    /// Facts about the backend's storage for `ddf-cache stats` (entries, bytes, server
    /// counters...), as label/value pairs. Empty by default.
    fn info(&self) -> Result<Vec<(String, String)>> {
        Ok(Vec::new())
    }

    /// Lists at most `limit` keys of this namespace that start with `prefix` (literally), with
    /// their expiry, for an operator (`ddf-cache keys`). Bounded: it stops at `limit` and never
    /// blocks a server on a large keyspace. The default says it is not supported (a custom
    /// backend may override it).
    fn keys(&self, prefix: &str, limit: usize) -> Result<Vec<EntryInfo>> {
        let _ = (prefix, limit);
        Err(unsupported(self.name(), "listing keys"))
    }

    /// What is stored under `key`: its expiry, size and flags (`ddf-cache get --meta`);
    /// `Ok(None)` when nothing is. The default reads the value, so the expiry is
    /// [`Expiry::Unknown`].
    fn meta(&self, key: &str) -> Result<Option<EntryInfo>> {
        Ok(self.get(key)?.map(|item| EntryInfo {
            key: key.to_owned(),
            expiry: Expiry::Unknown,
            size: Some(item.data.len() as u64),
            flags: Some(item.flags),
        }))
    }

    /// Reads a value with how long it has left on the server, in the same round trip (the near
    /// cache keeps an item no longer than that). `Ok(None)` is a miss. The default reads the
    /// value, so the expiry is [`Expiry::Unknown`]; Redis and Memcached override it.
    ///
    /// # Errors
    /// As [`Backend::get`].
    fn get_expiring(&self, key: &str) -> Result<Option<(Item, Expiry)>> {
        Ok(self.get(key)?.map(|item| (item, Expiry::Unknown)))
    }

    /// Releases connections and other resources. The backend stays usable: the next call
    /// reconnects. Also happens on drop.
    fn close(&self) {}

    /// Reads several values; the result has one entry per key, in order.
    fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Item>>> {
        keys.iter().map(|k| self.get(k)).collect()
    }

    /// Stores several values with one TTL.
    fn set_many(&self, items: &[(&str, Item)], ttl: Option<Duration>) -> Result<()> {
        items.iter().try_for_each(|(k, v)| self.set(k, v, ttl))
    }

    /// Removes several values; returns how many were removed.
    fn delete_many(&self, keys: &[&str]) -> Result<u64> {
        let mut n = 0;
        for k in keys {
            n += u64::from(self.delete(k)?);
        }
        Ok(n)
    }

    /// Removes `key` only if its stored bytes are `expected` (a lease's token): `Ok(true)` when
    /// this call removed it, `Ok(false)` when it held something else or nothing. Atomic against
    /// every other writer of the same store (Redis: one Lua script; Memcached: `mg` for the CAS
    /// value, then `md` with it; the file backend: one `DELETE ... WHERE v = ?`). What releases
    /// a `get_or_set` lease without removing the lease a waiter took over. The default says it
    /// is not supported (a custom backend may override it).
    fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool> {
        let _ = (key, expected);
        Err(unsupported(self.name(), "compare_and_delete"))
    }

    /// Takes a `get_or_set` lease: stores `item` (the token) under `lease` only if it holds
    /// none, as [`Backend::add`] (which the default calls). A call of its own, not an `add`,
    /// so that a router over several servers knows from the call, never from the key's text,
    /// that `lease` is a lease (Memcached places it with the key it guards; every `add` of a
    /// user key is placed by that key, as pymemcache places it). Internal to `get_or_set`.
    #[doc(hidden)]
    fn take_lease(&self, lease: &str, item: &Item, ttl: Option<Duration>) -> Result<bool> {
        self.add(lease, item, ttl)
    }

    /// Releases a `get_or_set` lease: removes `lease` only while it holds `token`, as
    /// [`Backend::compare_and_delete`] (which the default calls); a call of its own for the
    /// reason [`Backend::take_lease`] gives. Internal to `get_or_set`.
    #[doc(hidden)]
    fn release_lease(&self, lease: &str, token: &[u8]) -> Result<bool> {
        self.compare_and_delete(lease, token)
    }

    /// A `get_or_set` leader's store, fenced by its lease: stores `item` under `key` only
    /// while `lease` holds `token`, in one atomic step on the server; `Ok(false)` when it did
    /// not store (the lease expired or was taken over). Redis (not Cluster: the two keys may
    /// be on two nodes): one Lua script; the file backend: one transaction. The default (and
    /// Memcached, Redis Cluster) stores unfenced, and the caller's clock margin is the only
    /// guard. Internal to `get_or_set`: a custom backend need not implement it.
    #[doc(hidden)]
    fn set_if_lease(
        &self,
        key: &str,
        item: &Item,
        ttl: Option<Duration>,
        lease: &str,
        token: &[u8],
    ) -> Result<bool> {
        let _ = (lease, token);
        self.set(key, item, ttl).map(|()| true)
    }

    /// A `get_or_set` lease's heartbeat: gives `lease` the TTL `ttl` from now only while it
    /// holds `token`; `Ok(false)` when it does not (expired, taken over) or when the backend
    /// cannot (the default, Memcached): the heartbeat then stops. Redis: one Lua script
    /// (`PEXPIRE`); the file backend: one `UPDATE .. WHERE v = token`. Internal to
    /// `get_or_set`.
    #[doc(hidden)]
    fn extend_lease(&self, lease: &str, token: &[u8], ttl: Duration) -> Result<bool> {
        let _ = (lease, token, ttl);
        Ok(false)
    }

    /// Several [`Backend::delete_prefix`] at once (the replay of recorded prefix
    /// invalidations); the number of keys removed. The default deletes one prefix after the
    /// other; Memcached lists each server's keys once for all of them. Internal to the
    /// resilience wrapper.
    #[doc(hidden)]
    fn delete_prefixes(&self, prefixes: &[&str]) -> Result<u64> {
        prefixes.iter().map(|p| self.delete_prefix(p)).sum()
    }
}

/// The error for an operation that would reach every key on a shared server (an empty
/// namespace without `server_flush`). `whole` names what it would remove.
pub(crate) fn whole_keyspace_refusal(whole: &str) -> crate::error::Error {
    crate::error::Error::InvalidArgument(format!(
        "with an empty namespace this would remove {whole}: set a namespace, invalidate a \
         non-empty prefix, or set `server_flush = true` to allow it"
    ))
}

/// Whether `delete_prefix(prefix)` on a server backend must be refused: the empty prefix of an
/// empty namespace is every key on the server (the same rule as `clear`).
pub(crate) fn check_prefix(
    namespace: &str,
    prefix: &str,
    server_flush: bool,
    whole: &str,
) -> Result<()> {
    if namespace.is_empty() && prefix.is_empty() && !server_flush {
        return Err(whole_keyspace_refusal(whole));
    }
    Ok(())
}

/// The one `clear` policy of the server backends: with a namespace, remove the namespace's keys
/// (`delete_prefix("")`); with an empty namespace ddf cannot tell its keys from anyone else's,
/// so a server-wide `flush` runs only when `server_flush` allows it. `whole` names what that
/// flush removes, for the error.
pub(crate) fn scoped_clear(
    backend: &dyn Backend,
    namespace: &str,
    server_flush: bool,
    whole: &str,
    flush: impl FnOnce() -> Result<()>,
) -> Result<()> {
    match clear_plan(backend.name(), namespace, server_flush, whole)? {
        ClearPlan::Prefix => backend.delete_prefix("").map(|_| ()),
        ClearPlan::Flush => flush(),
    }
}

/// How a server backend's `clear` runs (the policy of [`scoped_clear`], for either face).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClearPlan {
    /// `delete_prefix("")`: the namespace's keys.
    Prefix,
    /// The server-wide flush (`server_flush = true`, empty namespace).
    Flush,
}

/// The one `clear` policy: see [`scoped_clear`]. Logs the server-wide flush it allows.
///
/// # Errors
/// The refusal of a whole-keyspace flush without `server_flush`.
pub(crate) fn clear_plan(
    name: &str,
    namespace: &str,
    server_flush: bool,
    whole: &str,
) -> Result<ClearPlan> {
    if !namespace.is_empty() {
        return Ok(ClearPlan::Prefix);
    }
    if !server_flush {
        return Err(whole_keyspace_refusal(whole));
    }
    tracing::info!(backend = name, "server_flush: flushing {whole}");
    Ok(ClearPlan::Flush)
}

/// Wraps a server backend (Redis, Memcached) in [`resilience::Resilient`]: breaker, fallback
/// (`fallback = pickle`: the local directory; `none`; `error`), and the journal of invalidations
/// made during an outage. `identity` names the server(s) without credentials and without the
/// codec (`redis://host:port/db`, `memcached://host:port`; several Memcached servers get one
/// each, see [`per_server`]): processes that pass the same identity and namespace share the
/// journal, so a `redis` and a `redis_pickle` process on one server replay each other's records.
///
/// # Errors
/// [`Error::Config`](crate::Error::Config) for an unusable breaker setting; an error when the
/// local directory (the fallback and the journal) cannot be opened.
pub(crate) fn resilient(
    config: &CacheConfig,
    name: &'static str,
    identity: &str,
    factory: resilience::Factory,
) -> Result<Arc<dyn Backend>> {
    Ok(resilient_state(config, name, identity, factory)?)
}

/// [`resilient`], as the wrapper itself: the async face drives the same state machine,
/// fallback and journal through its crate-private hooks.
///
/// # Errors
/// As [`resilient`].
pub(crate) fn resilient_state(
    config: &CacheConfig,
    name: &'static str,
    identity: &str,
    factory: resilience::Factory,
) -> Result<Arc<resilience::Resilient>> {
    let settings = config.resilience_settings()?;
    let journal = Arc::new(resilience::journal::Journal::open(settings.dir.clone())?);
    Ok(Arc::new(resilient_scope(
        config, &settings, name, identity, factory, journal,
    )?))
}

/// The journal scope of a server identity: the identity and the namespace.
fn journal_scope(config: &CacheConfig, identity: &str) -> String {
    format!("{identity}|{}", config.namespace)
}

/// One [`resilience::Resilient`] (see [`resilient`]) on a journal the caller opened: the
/// servers of a [`resilience::scopes::PerScope`] share one.
///
/// # Errors
/// An error when the fallback's directory cannot be opened.
pub(crate) fn resilient_scope(
    config: &CacheConfig,
    settings: &crate::config::ResilienceSettings,
    name: &'static str,
    identity: &str,
    factory: resilience::Factory,
    journal: Arc<resilience::journal::Journal>,
) -> Result<resilience::Resilient> {
    use crate::config::FallbackMode;
    use resilience::Fallback;
    let scope = journal_scope(config, identity);
    let fallback = match settings.mode {
        // The fallback's entries live under a namespace of their own: a `pickle` cache with the
        // same namespace in the same directory is another cache, which the fallback must never
        // clear.
        FallbackMode::Pickle => Fallback::Serve(Arc::new(file::FileBackend::open(
            settings.dir.clone(),
            &format!("fallback[{scope}]:"),
        )?)),
        FallbackMode::None => Fallback::Serve(Arc::new(none::NoneBackend)),
        FallbackMode::Error => Fallback::Refuse,
    };
    let cfg = resilience::ResilientConfig {
        name,
        scope,
        failures: settings.failures,
        retry: settings.retry,
        startup_wait: config.timeout,
        refuse_whole_keyspace: settings.refuse_whole_keyspace,
    };
    Ok(resilience::Resilient::new(
        cfg,
        factory,
        fallback,
        journal,
        Arc::new(resilience::probe::ThreadSpawn),
    ))
}

/// A server backend over several independent servers (Memcached's `memcached_servers`): a
/// [`resilience::Resilient`] per server, each with its own breaker, journal scope
/// (`memcached://host:port|namespace`), outage generation and fallback entries, and keys routed
/// to the server `partition` places them on. Invalidations recorded under the whole list's
/// `identity` (by a ddf before the breaker per server) are first moved to the servers' scopes.
///
/// # Errors
/// As [`resilient`].
pub(crate) fn per_server(
    config: &CacheConfig,
    name: &'static str,
    identity: &str,
    partition: Arc<dyn resilience::scopes::Partition>,
    specs: Vec<resilience::scopes::ScopeSpec>,
) -> Result<Arc<dyn Backend>> {
    Ok(per_server_router(config, name, identity, partition, specs)?)
}

/// [`per_server`], as the router itself: the async face's router drives its scopes.
///
/// # Errors
/// As [`resilient`].
pub(crate) fn per_server_router(
    config: &CacheConfig,
    name: &'static str,
    identity: &str,
    partition: Arc<dyn resilience::scopes::Partition>,
    specs: Vec<resilience::scopes::ScopeSpec>,
) -> Result<Arc<resilience::scopes::PerScope>> {
    use resilience::scopes::{Cause, PerScope, Scope, adopt_legacy, build_all, watched};
    let settings = config.resilience_settings()?;
    let journal = Arc::new(resilience::journal::Journal::open(settings.dir.clone())?);
    let names: Vec<String> = specs
        .iter()
        .map(|s| journal_scope(config, &s.identity))
        .collect();
    let legacy = journal_scope(config, identity);
    if let Err(e) = adopt_legacy(&journal, &legacy, partition.as_ref(), &names) {
        tracing::warn!(error = %e, "cannot move the recorded invalidations of the whole server list; trying again at the next start");
    }
    let scopes = build_all(specs, |spec| {
        let cause = Arc::new(Cause::default());
        let factory = watched(spec.factory, cause.clone());
        let r = resilient_scope(
            config,
            &settings,
            name,
            &spec.identity,
            factory,
            journal.clone(),
        )?;
        Ok(Scope::new(spec.label, r, cause))
    })?;
    Ok(Arc::new(PerScope::new(name, partition, scopes)?))
}

/// Builds the backend a config names: its settings validated once
/// ([`CacheConfig`]'s `backend_settings`), then the backend built from them; a server backend
/// behind the breaker and fallback, its journal scoped by the settings' identity.
///
/// # Errors
/// [`Error::Config`](crate::Error::Config) naming the setting and where its value came from;
/// the backend's own errors when it cannot be set up (an unusable cache directory, for example).
pub fn from_config(config: &CacheConfig) -> Result<Arc<dyn Backend>> {
    let (backend, namespace) = (config.backend.as_str(), &config.namespace);
    match config.backend_settings()? {
        BackendSettings::None => {
            tracing::info!(backend, "ddf: cache backend chosen (stores nothing)");
            Ok(Arc::new(none::NoneBackend))
        }
        BackendSettings::File(s) => {
            tracing::info!(backend, namespace, dir = %s.dir.display(), "ddf: cache backend chosen");
            Ok(Arc::new(file::FileBackend::open(s.dir, &s.namespace)?))
        }
        // The codec (JSON or pickle) is chosen above the backend, by CacheManager.
        #[cfg(not(feature = "redis"))]
        BackendSettings::Redis(_) => Err(config.feature_off("redis")),
        #[cfg(not(feature = "memcached"))]
        BackendSettings::Memcached(_) => Err(config.feature_off("memcached")),
        // A Cluster: a breaker per primary, keys placed by hash slot (`redis/cluster.rs`).
        #[cfg(feature = "redis")]
        BackendSettings::Redis(settings)
            if matches!(settings.target, crate::config::RedisTarget::Cluster(_)) =>
        {
            tracing::info!(backend, namespace, servers = %settings.identity(), fallback = config.fallback.as_str(), "ddf: cache backend chosen (a breaker per Cluster primary)");
            match redis::cluster::Shards::discover(&settings) {
                Some(shards) => per_server(
                    config,
                    config.backend.as_str(),
                    settings.identity(),
                    shards.clone(),
                    shards.specs(),
                ),
                None => Ok(redis_resilient(config, settings)?),
            }
        }
        #[cfg(feature = "redis")]
        BackendSettings::Redis(settings) => {
            tracing::info!(backend, namespace, servers = %settings.identity(), fallback = config.fallback.as_str(), "ddf: cache backend chosen");
            Ok(redis_resilient(config, settings)?)
        }
        // Several servers: a breaker per server, keys placed as pymemcache places them.
        #[cfg(feature = "memcached")]
        BackendSettings::Memcached(settings) if settings.servers.len() > 1 => {
            tracing::info!(backend, namespace, servers = %settings.identity(), fallback = config.fallback.as_str(), "ddf: cache backend chosen (a breaker per server)");
            per_server(
                config,
                config.backend.as_str(),
                settings.identity(),
                Arc::new(memcached::placement::Placement::new(&settings)),
                memcached::MemcachedBackend::per_server(&settings),
            )
        }
        #[cfg(feature = "memcached")]
        BackendSettings::Memcached(settings) => {
            let identity = settings.identity().to_owned();
            tracing::info!(backend, namespace, servers = %identity, fallback = config.fallback.as_str(), "ddf: cache backend chosen");
            let factory: resilience::Factory = Box::new(move || {
                Ok(Arc::new(memcached::MemcachedBackend::new(&settings)) as Arc<dyn Backend>)
            });
            resilient(config, config.backend.as_str(), &identity, factory)
        }
    }
}

/// The Redis backend behind [`resilience::Resilient`], its journal scoped by the settings'
/// identity (for either face: the async face drives the same wrapper).
///
/// # Errors
/// As [`resilient`].
#[cfg(feature = "redis")]
pub(crate) fn redis_resilient(
    config: &CacheConfig,
    settings: crate::config::RedisSettings,
) -> Result<Arc<resilience::Resilient>> {
    let identity = settings.identity().to_owned();
    let factory: resilience::Factory =
        Box::new(move || Ok(Arc::new(redis::RedisBackend::new(&settings)?) as Arc<dyn Backend>));
    resilient_state(config, config.backend.as_str(), &identity, factory)
}
