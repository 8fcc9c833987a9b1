//! ddf: one cache API over interchangeable backends — none, a local cache directory (the
//! "pickle" backend, the default), Memcached and Redis — chosen by configuration, and
//! compatible with the Python DDF that shares the same servers.
//!
//! ```
//! use std::time::Duration;
//! use ddf::{CacheConfig, CacheManager};
//!
//! let dir = tempfile::tempdir()?;
//! let config = CacheConfig::from_ini_str("[cache]\nbackend = pickle\nttl = 3600\n")?
//!     .with_pickle_dir(dir.path());
//! let cache = CacheManager::new(config)?;
//! cache.set("service:web:ports", &vec!["8080:80"], Some(Duration::from_secs(60)))?;
//! let ports: Option<Vec<String>> = cache.get("service:web:ports")?;
//! assert_eq!(ports.unwrap(), ["8080:80"]);
//! assert_eq!(cache.invalidate_pattern("service:web:")?, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! See the README for the configuration reference, the backends' guarantees and the CLI.
#![warn(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]
// Without a server backend's feature (`default-features = false`), what only the server backends
// use (the breaker and journal, the server key rules, the settings of that server) is compiled
// but unused.
#![cfg_attr(
    not(all(feature = "redis", feature = "memcached")),
    allow(dead_code, unused_imports)
)]

#[doc(hidden)]
pub mod __private;
#[cfg(feature = "async")]
mod aio;
pub(crate) mod backend;
pub(crate) mod clock;
pub(crate) mod codec;
pub(crate) mod config;
mod error;
pub(crate) mod flags;
mod item;
pub(crate) mod key;
mod manager;
pub mod memo;
pub(crate) mod near;
pub(crate) mod shm;
mod stampede;
#[cfg(feature = "testing")]
pub mod testing;

use std::sync::{Arc, LazyLock, OnceLock};

#[cfg(feature = "async")]
pub use aio::{ASYNC_CACHE, AsyncCacheManager};
pub use backend::{Backend, BackendStatus, Counter, EntryInfo, Expiry, counter_step};
pub use codec::Codec;
pub use config::{
    CacheBackend, CacheConfig, ConfigRow, FallbackMode, Secret, ServerAddr, UnknownBackend,
};
/// Memoizes a function in the cache; see the attribute's documentation below and [`memo`].
pub use ddf_macros::cache_with_invalidation;
pub use error::{Error, Result, Source};
pub use item::Item;
pub use manager::{CacheManager, CacheStats};
pub use stampede::RefreshOptions;

/// Python values as ddf's pickle codec models them: [`pickle::Value`] (integers of any size,
/// floats, strings, bytes, lists, tuples, sets, dicts with any hashable keys), for
/// `cache.get::<ddf::pickle::Value>(key)` when the stored type is not known in advance. Read
/// through serde like this, tuples and sets arrive as lists.
///
/// ```
/// use ddf::pickle::Value;
/// let dir = tempfile::tempdir()?;
/// let cache = ddf::CacheManager::new(ddf::CacheConfig::default().with_pickle_dir(dir.path()))?;
/// cache.set("k", &(1, "a"), None)?;
/// let v: Option<Value> = cache.get("k")?;
/// assert!(v.is_some());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub mod pickle {
    pub use crate::codec::pickle::{BigInt, Value};
}

/// The configuration of the globals, or why it could not be loaded.
static GLOBAL_CONFIG: OnceLock<(CacheConfig, Option<Error>)> = OnceLock::new();
/// The global cache, or why it could not be built.
static GLOBAL_CACHE: OnceLock<(CacheManager, Option<Error>)> = OnceLock::new();
/// Why the global async cache could not be built (`ASYNC_CACHE`).
#[cfg(feature = "async")]
pub(crate) static GLOBAL_ASYNC_ERROR: OnceLock<Error> = OnceLock::new();

fn global_config() -> &'static (CacheConfig, Option<Error>) {
    GLOBAL_CONFIG.get_or_init(|| match CacheConfig::load() {
        Ok(c) => (c, None),
        Err(e) => {
            tracing::error!(error = %e, "ddf: cannot load the cache configuration; caching is disabled");
            (CacheConfig::default().with_enabled(false), Some(e))
        }
    })
}

fn global_cache() -> &'static (CacheManager, Option<Error>) {
    GLOBAL_CACHE.get_or_init(|| {
        let config = global_config().0.clone();
        match CacheManager::new(config.clone()) {
            Ok(m) => (m, None),
            Err(e) => {
                tracing::error!(error = %e, "ddf: cannot build the cache backend; caching is disabled");
                let m = CacheManager::with_backend(
                    config.with_enabled(false),
                    Arc::new(backend::none::NoneBackend),
                );
                (m, Some(e))
            }
        }
    })
}

/// Builds [`CACHE_CONFIG`] and [`CACHE`] now, or returns why they cannot be: call it first in
/// a program that uses the globals (the `#[cache_with_invalidation]` attribute uses [`CACHE`]
/// unless given `cache = ...`), so that a bad configuration stops the program with a message
/// instead of running it uncached.
///
/// Without it the globals are built on first use and never fail: a bad configuration is
/// logged at `error` level, kept in [`global_error`], and the global cache is disabled. After a
/// failed `init` the globals are that disabled cache too. Calling `init` again returns the
/// same outcome (the globals are built once per process).
///
/// ```no_run
/// fn main() -> Result<(), ddf::Error> {
///     ddf::init()?; // a bad ddf.ini stops the program here, naming the file and line
///     ddf::CACHE.set("greeting", "hello", None)?;
///     Ok(())
/// }
/// ```
///
/// # Errors
/// [`Error::Config`] or [`Error::ConfigFile`] when the configuration cannot be loaded (a bad
/// value, an unknown key, a misspelt `[cache]` section, an unreadable file), naming the file
/// and line; the backend's set-up error when the cache cannot be built (an unusable cache
/// directory, an unreadable `redis_ca_file`). An unreachable server is not an error: the cache
/// starts on its fallback.
pub fn init() -> Result<()> {
    if let Some(e) = &global_config().1 {
        return Err(e.duplicate());
    }
    match &global_cache().1 {
        Some(e) => Err(e.duplicate()),
        None => Ok(()),
    }
}

/// The global configuration, loaded on first use (or by [`init`]) by [`CacheConfig::load`]
/// (the INI file from `$DDF_CONFIG`, `./ddf.ini` or `~/.config/ddf/ddf.ini`, then the
/// environment).
///
/// First use never panics. If the configuration cannot be loaded (an unreadable file, a bad
/// value), the error is logged at `error` level, kept for [`global_error`], and this is the
/// default configuration with `enabled = false`: the program runs uncached rather than with a
/// cache it did not ask for. Call [`init`] first to get that error instead.
pub static CACHE_CONFIG: LazyLock<CacheConfig> = LazyLock::new(|| global_config().0.clone());

/// The global cache, built on first use (or by [`init`]) from [`CACHE_CONFIG`]; what
/// `#[cache_with_invalidation]` uses unless given `cache = ...`.
///
/// First use never panics. If the configuration cannot be loaded or the backend cannot be
/// built, the error is logged at `error` level, kept for [`global_error`], and this is a
/// disabled cache (every get misses, writes are dropped): the program runs, uncached. Call
/// [`init`] first to get that error instead and stop.
///
/// ```no_run
/// ddf::init()?;
/// ddf::CACHE.set("k", "v", None)?;
/// # Ok::<(), ddf::Error>(())
/// ```
pub static CACHE: LazyLock<CacheManager> = LazyLock::new(|| global_cache().0.clone());

/// Why [`CACHE_CONFIG`] or [`CACHE`] (or, with feature `async`, `ASYNC_CACHE`) fell back to a disabled cache, if one of them was built
/// and did ([`init`] returns the same error).
pub fn global_error() -> Option<&'static Error> {
    GLOBAL_CONFIG
        .get()
        .and_then(|c| c.1.as_ref())
        .or_else(|| GLOBAL_CACHE.get().and_then(|c| c.1.as_ref()))
        .or_else(global_async_error)
}

#[cfg(feature = "async")]
fn global_async_error() -> Option<&'static Error> {
    GLOBAL_ASYNC_ERROR.get()
}

#[cfg(not(feature = "async"))]
fn global_async_error() -> Option<&'static Error> {
    None
}

/// The README's examples, compiled and run as doctests so that it stays true.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
