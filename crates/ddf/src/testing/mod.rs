//! Test support, behind the `testing` feature: the mock clock, the backend conformance suite a
//! custom [`Backend`](crate::Backend) can run, and a way to build ddf's own backends without the
//! manager.
//!
//! ```toml
//! [dev-dependencies]
//! ddf = { version = "0.1", features = ["testing"] }
//! ```

pub mod conformance;

pub use crate::clock::{Clock, MockClock};

use std::sync::Arc;

use crate::{Backend, CacheConfig, Result};

/// The backend a config names, exactly as [`CacheManager::new`](crate::CacheManager::new)
/// builds it (Redis and Memcached behind the breaker and fallback), without the manager.
///
/// ```
/// use ddf::{CacheBackend, CacheConfig};
///
/// let dir = tempfile::tempdir()?;
/// let config = CacheConfig::default().with_pickle_dir(dir.path());
/// let backend = ddf::testing::build_backend(&config)?;
/// assert_eq!(backend.name(), "pickle");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// As [`CacheManager::new`](crate::CacheManager::new).
pub fn build_backend(config: &CacheConfig) -> Result<Arc<dyn Backend>> {
    crate::backend::from_config(config)
}

/// ddf's own tests and benchmarks reach a few internals through here; not for users (no
/// stability promise).
#[doc(hidden)]
pub mod internals {
    #[cfg(feature = "memcached")]
    pub use crate::backend::memcached::{DeadPolicy, MemcachedBackend};
    #[cfg(feature = "redis")]
    pub use crate::backend::redis::RedisBackend;
    pub use crate::codec::pickle;
    #[cfg(feature = "redis")]
    pub use crate::near::{
        drop_invalidations, ignore_topology_changes, pause_teardown, without_catch_up,
    };
    /// pymemcache's flags (see the crate's `flags` module).
    pub mod flags {
        pub use crate::flags::*;
    }
}
