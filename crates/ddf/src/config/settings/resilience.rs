//! What stands in for a server backend while its server is down: the breaker, the fallback and
//! the outage journal's settings.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::keys::CacheConfig;
use crate::config::types::FallbackMode;
use crate::error::Result;

/// What stands in for a Redis or Memcached server while it is down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResilienceSettings {
    /// `fallback`.
    pub(crate) mode: FallbackMode,
    /// `breaker_failures`: consecutive failures that mark the server down (at least 1).
    pub(crate) failures: u32,
    /// `breaker_retry`: how often a down server is probed (more than 0).
    pub(crate) retry: Duration,
    /// With an empty namespace and no `server_flush`, namespace-wide operations are refused
    /// (on the fallback too, so that an outage does not change what is allowed).
    pub(crate) refuse_whole_keyspace: bool,
    /// The directory of the fallback's entries and of the outage journal.
    pub(crate) dir: PathBuf,
}

impl CacheConfig {
    /// The breaker's, fallback's and journal's settings of a server backend.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error) for `breaker_failures = 0` or `breaker_retry = 0` (only
    /// possible by setting the fields directly: the parsers refuse them).
    pub(crate) fn resilience_settings(&self) -> Result<ResilienceSettings> {
        if self.breaker_failures == 0 {
            return Err(self.invalid(
                "breaker_failures",
                "breaker_failures is 0: allowed: a whole number from 1 to 1000",
            ));
        }
        if self.breaker_retry.is_zero() {
            return Err(self.invalid(
                "breaker_retry",
                "breaker_retry is 0: it must be a number of seconds greater than 0",
            ));
        }
        Ok(ResilienceSettings {
            mode: self.fallback,
            failures: self.breaker_failures,
            retry: self.breaker_retry,
            refuse_whole_keyspace: self.namespace.is_empty() && !self.server_flush,
            dir: self.pickle_dir(),
        })
    }
}
