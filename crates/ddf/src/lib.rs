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
pub mod backend;
pub mod clock;
pub mod codec;
pub mod config;
mod error;
mod item;
pub(crate) mod key;
mod manager;
pub mod memo;
#[cfg(feature = "testing")]
pub mod testing;

use std::sync::{Arc, LazyLock, OnceLock};

pub use backend::Backend;
pub use codec::Codec;
pub use config::{CacheBackend, CacheConfig, FallbackMode, ServerAddr};
/// Memoizes a function in the cache; see the attribute's documentation below and [`memo`].
pub use ddf_macros::cache_with_invalidation;
pub use error::{Error, Result, Source};
pub use item::Item;
pub use manager::{CacheManager, CacheStats};

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
