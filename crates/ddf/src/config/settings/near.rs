//! The near cache's settings (`near_cache`, `near_cache_size`, `near_cache_ttl`), and where it is
//! not offered.

use std::time::Duration;

use crate::config::keys::CacheConfig;
use crate::config::types::CacheBackend;
use crate::error::Result;

/// How the near cache (`near_cache = true`) learns that a value changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NearMode {
    /// Redis: server-assisted invalidation (`CLIENT TRACKING`).
    Tracked,
    /// Memcached: no push; entries live at most `near_cache_ttl`.
    TtlOnly,
    /// The file backend: every hit checks the directory's change counters (`near/file.rs`).
    Counted,
}

/// The near cache's settings (`near_cache`, `near_cache_size`, `near_cache_ttl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NearSettings {
    /// The most entries kept (at least 1).
    pub(crate) size: u64,
    /// How long an entry may live (more than 0).
    pub(crate) ttl: Duration,
    /// How invalidations are learnt.
    pub(crate) mode: NearMode,
}

impl CacheConfig {
    /// The near cache's settings: `None` when `near_cache` is off or the backend stores
    /// nothing.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error) for a size or TTL out of range (only possible by setting the
    /// fields directly: the parsers refuse them). Every backend that stores offers a near cache.
    pub(crate) fn near_settings(&self) -> Result<Option<NearSettings>> {
        if !self.near_cache {
            return Ok(None);
        }
        if !(1..=crate::config::keys::NEAR_CACHE_SIZE_MAX).contains(&self.near_cache_size) {
            return Err(self.invalid(
                "near_cache_size",
                format!(
                    "near_cache_size is {}: allowed: a whole number of entries from 1 to {}",
                    self.near_cache_size,
                    crate::config::keys::NEAR_CACHE_SIZE_MAX
                ),
            ));
        }
        if self.near_cache_ttl.is_zero() {
            return Err(self.invalid(
                "near_cache_ttl",
                "near_cache_ttl is 0: it must be a number of seconds greater than 0",
            ));
        }
        let mode = match self.backend {
            CacheBackend::None => return Ok(None),
            CacheBackend::Pickle => NearMode::Counted,
            CacheBackend::Memcached | CacheBackend::MemcachedPickle => NearMode::TtlOnly,
            // Standalone, Sentinel and Cluster (a tracking connection per master).
            CacheBackend::Redis | CacheBackend::RedisPickle => NearMode::Tracked,
        };
        Ok(Some(NearSettings {
            size: self.near_cache_size,
            ttl: self.near_cache_ttl,
            mode,
        }))
    }
}
