//! The configuration's small types: [`CacheBackend`], [`FallbackMode`] and [`ConfigRow`]. A
//! leaf of `config/`: the key table, the settings and the loading code build on it.

use std::fmt;
use std::str::FromStr;

use crate::error::Source;

/// The available cache backends, with the Python DDF's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum CacheBackend {
    /// No caching: every get misses, writes are dropped.
    None,
    /// A local cache directory (`pickle_dir`), values as Python pickles. The default.
    #[default]
    Pickle,
    /// Memcached with JSON values.
    Memcached,
    /// Memcached with pickle values.
    MemcachedPickle,
    /// Redis with JSON values.
    Redis,
    /// Redis with pickle values.
    RedisPickle,
}

impl CacheBackend {
    /// Every backend, in the order the documentation lists them.
    pub const ALL: [CacheBackend; 6] = [
        CacheBackend::None,
        CacheBackend::Pickle,
        CacheBackend::Redis,
        CacheBackend::RedisPickle,
        CacheBackend::Memcached,
        CacheBackend::MemcachedPickle,
    ];

    /// The INI name (`none`, `pickle`, `redis`, `redis_pickle`, `memcached`, `memcached_pickle`).
    pub fn as_str(self) -> &'static str {
        match self {
            CacheBackend::None => "none",
            CacheBackend::Pickle => "pickle",
            CacheBackend::Memcached => "memcached",
            CacheBackend::MemcachedPickle => "memcached_pickle",
            CacheBackend::Redis => "redis",
            CacheBackend::RedisPickle => "redis_pickle",
        }
    }

    /// The valid names, comma-separated, for error messages.
    pub fn names() -> String {
        Self::ALL.map(Self::as_str).join(", ")
    }
}

impl fmt::Display for CacheBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing a [`CacheBackend`] name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownBackend(pub String);

impl fmt::Display for UnknownBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a backend; allowed: {}",
            self.0,
            CacheBackend::names()
        )
    }
}

impl std::error::Error for UnknownBackend {}

impl FromStr for CacheBackend {
    type Err = UnknownBackend;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let t = s.trim();
        Self::ALL
            .into_iter()
            .find(|b| b.as_str().eq_ignore_ascii_case(t))
            .ok_or_else(|| UnknownBackend(s.to_owned()))
    }
}

/// What serves while a Redis or Memcached primary is down (`fallback`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FallbackMode {
    /// Serve from the local cache directory (`pickle_dir`), as the original did.
    #[default]
    Pickle,
    /// Every get misses and writes are dropped (invalidations are still recorded).
    None,
    /// Operations return an error.
    Error,
}

impl FallbackMode {
    /// The INI name.
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackMode::Pickle => "pickle",
            FallbackMode::None => "none",
            FallbackMode::Error => "error",
        }
    }
}

/// One row of [`CacheConfig::describe`](crate::CacheConfig::describe): a key, its shown value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigRow {
    /// The INI key.
    pub key: &'static str,
    /// The value as the INI file would spell it; secrets print as `<redacted>`.
    pub value: String,
    /// Where the value came from.
    pub source: Source,
    /// The key's environment variable(s).
    pub env: String,
    /// What the key means.
    pub doc: &'static str,
}
