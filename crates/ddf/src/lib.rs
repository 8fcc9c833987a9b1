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

#[doc(hidden)]
pub mod __private;
#[cfg(feature = "async")]
mod aio;
pub(crate) mod backend;
pub(crate) mod clock;
pub(crate) mod codec;
pub(crate) mod config;
mod error;
mod item;
pub(crate) mod key;
mod manager;
pub mod memo;
#[cfg(feature = "testing")]
pub mod testing;

use std::sync::{Arc, LazyLock, OnceLock};

#[cfg(feature = "async")]
pub use aio::{ASYNC_CACHE, AsyncCacheManager};
pub use backend::{Backend, BackendStatus};
pub use codec::Codec;
pub use config::{
    CacheBackend, CacheConfig, ConfigRow, FallbackMode, Secret, ServerAddr, UnknownBackend,
};
/// Memoizes a function in the cache; see the attribute's documentation below and [`memo`].
pub use ddf_macros::cache_with_invalidation;
pub use error::{Error, Result, Source};
pub use item::Item;
pub use manager::{CacheManager, CacheStats};

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

static GLOBAL_ERROR: OnceLock<Error> = OnceLock::new();

/// The global configuration, loaded on first use by [`CacheConfig::load`] (the INI file from
/// `$DDF_CONFIG`, `./ddf.ini` or `~/.config/ddf/ddf.ini`, then the environment).
///
/// First use never panics. If the configuration cannot be loaded (an unreadable file, a bad
/// value), the error is logged at `error` level, kept for [`global_error`], and this is the
/// default configuration with `enabled = false`: the program runs uncached rather than with a
/// cache it did not ask for.
pub static CACHE_CONFIG: LazyLock<CacheConfig> = LazyLock::new(|| match CacheConfig::load() {
    Ok(c) => c,
    Err(e) => {
        tracing::error!(error = %e, "ddf: cannot load the cache configuration; caching is disabled");
        let _ = GLOBAL_ERROR.set(e);
        CacheConfig::default().with_enabled(false)
    }
});

/// The global cache, built on first use from [`CACHE_CONFIG`].
///
/// First use never panics. If the backend cannot be built, the error is logged at `error`
/// level, kept for [`global_error`], and this is a disabled cache (every get misses).
pub static CACHE: LazyLock<CacheManager> = LazyLock::new(|| {
    let config = CACHE_CONFIG.clone();
    match CacheManager::new(config.clone()) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "ddf: cannot build the cache backend; caching is disabled");
            let _ = GLOBAL_ERROR.set(e);
            CacheManager::with_backend(
                config.with_enabled(false),
                Arc::new(backend::none::NoneBackend),
            )
        }
    }
});

/// Why [`CACHE_CONFIG`] or [`CACHE`] fell back to a disabled cache, if one of them did.
pub fn global_error() -> Option<&'static Error> {
    GLOBAL_ERROR.get()
}

/// The README's examples, compiled and run as doctests so that it stays true.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
