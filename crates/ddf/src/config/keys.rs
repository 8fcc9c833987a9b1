//! The keys of `[cache]`: [`CacheConfig`], which holds their values, and the table of keys (each
//! key's name, environment variables, parser, display and one line of documentation) that
//! loading, `describe` and `Debug` walk. Together because the table is made of accessors of the
//! struct's fields.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::types::{CacheBackend, FallbackMode};
use super::values::{Secret, ServerAddr};
use crate::error::Source;

/// Configuration of a cache: the `[cache]` section of `ddf.ini`.
///
/// Build one with [`CacheConfig::default`], [`CacheConfig::from_ini_str`] or
/// [`CacheConfig::load`], then adjust it with the `with_*` methods (calls in code win over every
/// other source).
///
/// ```
/// use ddf::{CacheBackend, CacheConfig};
/// let config = CacheConfig::from_ini_str("[cache]\nbackend = none\nttl = 60\n")?
///     .with_namespace("myapp:");
/// assert_eq!(config.backend, CacheBackend::None);
/// assert_eq!(config.ttl, Some(std::time::Duration::from_secs(60)));
/// # Ok::<(), ddf::Error>(())
/// ```
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub struct CacheConfig {
    /// Which backend stores the values (`backend`, default `pickle`).
    pub backend: CacheBackend,
    /// `enabled` (default `true`): when false every get misses and writes do nothing.
    pub enabled: bool,
    /// `ttl`: the default expiry of a `set` without one; `None` (empty) means no expiry.
    pub ttl: Option<Duration>,
    /// `namespace` (default `ddf:`): the prefix that scopes this cache's keys. May be empty.
    pub namespace: String,
    /// `pickle_dir`: the cache directory of the file backend; `None` means the user's cache
    /// directory (`$XDG_CACHE_HOME/ddf`, else `~/.cache/ddf`).
    pub pickle_dir: Option<PathBuf>,
    /// `redis_host` (default `localhost`).
    pub redis_host: String,
    /// `redis_port` (default 6379).
    pub redis_port: u16,
    /// `redis_password` (default none).
    pub redis_password: Option<Secret>,
    /// `redis_db` (default 0).
    pub redis_db: u32,
    /// `redis_url` (`redis://`, `rediss://`, `unix://`): when set, wins over host/port/db.
    pub redis_url: Option<Secret>,
    /// `redis_ca_file`: a PEM CA bundle to verify a `rediss://` server.
    pub redis_ca_file: Option<PathBuf>,
    /// `redis_cluster_nodes` (`host:port, ...`): when set, Redis is used as a Cluster.
    pub redis_cluster_nodes: Vec<ServerAddr>,
    /// `redis_sentinels` (`host:port, ...`, port 26379 by default): when set, the master named
    /// [`redis_sentinel_master`](Self::redis_sentinel_master) is found through these Sentinels.
    pub redis_sentinels: Vec<ServerAddr>,
    /// `redis_sentinel_master`: the name the Sentinels monitor the master under.
    pub redis_sentinel_master: Option<String>,
    /// `redis_sentinel_password`: the Sentinels' own password, when they have one.
    pub redis_sentinel_password: Option<Secret>,
    /// `memcached_servers` (`host:port, host:port`; default `localhost:11211`).
    pub memcached_servers: Vec<ServerAddr>,
    /// `compress_min_bytes` (default none: never): Memcached values longer than this many bytes
    /// are stored zlib-compressed with flags 8, as pymemcache's `CompressedSerde` writes them.
    pub compress_min_bytes: Option<usize>,
    /// `connect_timeout` in seconds (default 1).
    pub connect_timeout: Duration,
    /// `timeout`: the per-operation timeout in seconds (default 2).
    pub timeout: Duration,
    /// `fallback` (default `pickle`): what serves while Redis or Memcached is down.
    pub fallback: FallbackMode,
    /// `breaker_failures` (default 3): consecutive failed operations that mark the server down.
    pub breaker_failures: u32,
    /// `breaker_retry` in seconds (default 1): how often a down server is probed.
    pub breaker_retry: Duration,
    /// `server_flush` (default false): with an empty `namespace`, let `flush_all` flush the whole
    /// Redis database (`FLUSHDB`) or every Memcached server (`flush_all`). Never used otherwise.
    pub server_flush: bool,
    /// `lock_timeout` in seconds (default 20): how long a `get_or_set` caller waits for another
    /// one's computation of the same key before computing itself (uncached).
    pub lock_timeout: Duration,
    /// `lease_ttl` in seconds (default 10): how long a `get_or_set` computation holds its lease;
    /// a waiter takes over a lease that outlived this (its holder died or ran too long).
    pub lease_ttl: Duration,
    /// `near_cache` (default false): keep recently read values in this process, kept coherent
    /// with Redis by server-assisted invalidation (Memcached: for at most `near_cache_ttl`).
    pub near_cache: bool,
    /// `near_cache_size` (default 10000): the most entries the near cache keeps.
    pub near_cache_size: u64,
    /// `near_cache_ttl` in seconds (default 60): how long an entry may live in the near cache.
    pub near_cache_ttl: Duration,
    /// Where each key's value came from.
    pub(super) sources: BTreeMap<&'static str, Source>,
    /// The file the INI text came from, if any.
    pub(super) file: Option<PathBuf>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            backend: CacheBackend::Pickle,
            enabled: true,
            ttl: None,
            namespace: "ddf:".to_owned(),
            pickle_dir: None,
            redis_host: "localhost".to_owned(),
            redis_port: 6379,
            redis_password: None,
            redis_db: 0,
            redis_url: None,
            redis_ca_file: None,
            redis_cluster_nodes: Vec::new(),
            redis_sentinels: Vec::new(),
            redis_sentinel_master: None,
            redis_sentinel_password: None,
            memcached_servers: vec![ServerAddr {
                host: "localhost".to_owned(),
                port: 11211,
            }],
            compress_min_bytes: None,
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            fallback: FallbackMode::Pickle,
            breaker_failures: 3,
            breaker_retry: Duration::from_secs(1),
            server_flush: false,
            lock_timeout: Duration::from_secs(20),
            lease_ttl: Duration::from_secs(10),
            near_cache: false,
            near_cache_size: 10_000,
            near_cache_ttl: Duration::from_secs(60),
            sources: BTreeMap::new(),
            file: None,
        }
    }
}

/// One configuration key: its name, how to parse it into a config, how to show it.
pub(super) struct KeySpec {
    pub(super) name: &'static str,
    /// Extra environment variables (the Python DDF's), lower precedence than `DDF_CACHE_<KEY>`.
    pub(super) legacy_env: Option<&'static str>,
    pub(super) secret: bool,
    /// Parses the value into the config; the error says what is allowed.
    pub(super) apply: fn(&mut CacheConfig, &str) -> std::result::Result<(), String>,
    /// Shows the current value (secrets redacted).
    pub(super) show: fn(&CacheConfig) -> String,
    /// One line for the documentation.
    pub(super) doc: &'static str,
}

fn parse_bool(v: &str) -> std::result::Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "yes" | "true" | "on" => Ok(true),
        "0" | "no" | "false" | "off" => Ok(false),
        _ => Err("allowed: true/false, yes/no, on/off, 1/0".to_owned()),
    }
}

fn parse_secs(v: &str, what: &str) -> std::result::Result<Duration, String> {
    let t = v.trim();
    let secs: f64 = t
        .parse()
        .map_err(|_| format!("{what} must be a number of seconds greater than 0"))?;
    if !(secs.is_finite() && secs > 0.0 && secs <= 86_400.0 * 365.0) {
        return Err(format!(
            "{what} must be a number of seconds greater than 0 (and at most a year)"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_servers(v: &str, what: &str) -> std::result::Result<Vec<ServerAddr>, String> {
    let list: Vec<&str> = v
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .collect();
    if list.is_empty() {
        return Err(format!("{what} needs at least one host:port"));
    }
    let default_port = match what {
        "memcached_servers" => 11211,
        "redis_sentinels" => 26379,
        _ => 6379,
    };
    list.iter()
        .map(|s| ServerAddr::parse(s, default_port))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| format!("{e}; expected `host:port, host:port`"))
}

pub(super) fn show_list(v: &[ServerAddr]) -> String {
    v.iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn show_opt_path(p: &Option<PathBuf>) -> String {
    p.as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

pub(super) const KEYS: &[KeySpec] = &[
    KeySpec {
        name: "backend",
        legacy_env: None,
        secret: false,
        apply: |c, v| {
            c.backend = v
                .parse()
                .map_err(|_| format!("allowed: {}", CacheBackend::names()))?;
            Ok(())
        },
        show: |c| c.backend.to_string(),
        doc: "none, pickle (a local cache directory), redis, redis_pickle, memcached, memcached_pickle",
    },
    KeySpec {
        name: "enabled",
        legacy_env: None,
        secret: false,
        apply: |c, v| {
            c.enabled = parse_bool(v)?;
            Ok(())
        },
        show: |c| c.enabled.to_string(),
        doc: "false turns every get into a miss and every write into a no-op",
    },
    KeySpec {
        name: "ttl",
        legacy_env: None,
        secret: false,
        apply: |c, v| {
            let t = v.trim();
            c.ttl = if t.is_empty() {
                None
            } else {
                match t.parse::<u64>() {
                    Ok(n) if n > 0 => Some(Duration::from_secs(n)),
                    _ => {
                        return Err(
                            "allowed: a whole number of seconds of at least 1, or empty for no expiry"
                                .to_owned(),
                        );
                    }
                }
            };
            Ok(())
        },
        show: |c| c.ttl.map(|d| d.as_secs().to_string()).unwrap_or_default(),
        doc: "default expiry in seconds; empty means no expiry",
    },
    KeySpec {
        name: "namespace",
        legacy_env: None,
        secret: false,
        apply: |c, v| {
            if v.len() > 128 || v.chars().any(char::is_control) {
                return Err("allowed: at most 128 bytes without control characters".to_owned());
            }
            c.namespace = v.to_owned();
            Ok(())
        },
        show: |c| c.namespace.clone(),
        doc: "prefix that scopes this cache's keys on shared servers and directories; may be empty",
    },
    KeySpec {
        name: "pickle_dir",
        legacy_env: None,
        secret: false,
        apply: |c, v| {
            let t = v.trim();
            c.pickle_dir = (!t.is_empty()).then(|| PathBuf::from(t));
            Ok(())
        },
        show: |c| show_opt_path(&c.pickle_dir),
        doc: "cache directory of the pickle backend; empty means $XDG_CACHE_HOME/ddf or ~/.cache/ddf",
    },
    KeySpec {
        name: "redis_host",
        legacy_env: Some("REDIS_HOST"),
        secret: false,
        apply: |c, v| {
            let t = v.trim();
            if t.is_empty() || t.chars().any(char::is_whitespace) {
                return Err("allowed: a host name or IP address".to_owned());
            }
            c.redis_host = t.to_owned();
            Ok(())
        },
        show: |c| c.redis_host.clone(),
        doc: "Redis host",
    },
    KeySpec {
        name: "redis_port",
        legacy_env: Some("REDIS_PORT"),
        secret: false,
        apply: |c, v| {
            c.redis_port = match v.trim().parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err("allowed: a port number from 1 to 65535".to_owned()),
            };
            Ok(())
        },
        show: |c| c.redis_port.to_string(),
        doc: "Redis port",
    },
    KeySpec {
        name: "redis_password",
        legacy_env: Some("REDIS_PASSWORD"),
        secret: true,
        apply: |c, v| {
            c.redis_password = (!v.is_empty()).then(|| Secret::new(v));
            Ok(())
        },
        show: |c| {
            c.redis_password
                .as_ref()
                .map(|_| "<redacted>".to_owned())
                .unwrap_or_default()
        },
        doc: "Redis password (AUTH); empty means none",
    },
    KeySpec {
        name: "redis_db",
        legacy_env: Some("REDIS_DB"),
        secret: false,
        apply: |c, v| {
            c.redis_db = v
                .trim()
                .parse::<u32>()
                .map_err(|_| "allowed: a database number (0, 1, ...)".to_owned())?;
            Ok(())
        },
        show: |c| c.redis_db.to_string(),
        doc: "Redis database number",
    },
    KeySpec {
        name: "redis_url",
        legacy_env: None,
        secret: true,
        apply: |c, v| {
            let t = v.trim();
            if t.is_empty() {
                c.redis_url = None;
                return Ok(());
            }
            if !["redis://", "rediss://", "unix://", "redis+unix://"]
                .iter()
                .any(|s| t.starts_with(s))
            {
                return Err("allowed: a redis://, rediss:// (TLS) or unix:// URL".to_owned());
            }
            c.redis_url = Some(Secret::new(t));
            Ok(())
        },
        show: |c| {
            c.redis_url
                .as_ref()
                .map(|u| redact_url(u.expose()))
                .unwrap_or_default()
        },
        doc: "Redis URL (redis://, rediss:// for TLS, unix://); wins over host, port, db",
    },
    KeySpec {
        name: "redis_ca_file",
        legacy_env: None,
        secret: false,
        apply: |c, v| {
            let t = v.trim();
            c.redis_ca_file = (!t.is_empty()).then(|| PathBuf::from(t));
            Ok(())
        },
        show: |c| show_opt_path(&c.redis_ca_file),
        doc: "PEM file of the CA that signed the Redis server's TLS certificate",
    },
    KeySpec {
        name: "redis_cluster_nodes",
        legacy_env: None,
        secret: false,
        apply: |c, v| {
            c.redis_cluster_nodes = if v.trim().is_empty() {
                Vec::new()
            } else {
                parse_servers(v, "redis_cluster_nodes")?
            };
            Ok(())
        },
        show: |c| show_list(&c.redis_cluster_nodes),
        doc: "host:port of some Redis Cluster nodes; when set, Redis is used as a Cluster",
    },
    KeySpec {
        name: "redis_sentinels",
        legacy_env: None,
        secret: false,
        apply: |c, v| {
            c.redis_sentinels = if v.trim().is_empty() {
                Vec::new()
            } else {
                parse_servers(v, "redis_sentinels")?
            };
            Ok(())
        },
        show: |c| show_list(&c.redis_sentinels),
        doc: "host:port of the Redis Sentinels (port defaults to 26379); when set, the master is found through them",
    },
    KeySpec {
        name: "redis_sentinel_master",
        legacy_env: None,
        secret: false,
        apply: |c, v| {
            let t = v.trim();
            if t.len() > 256 || t.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
                return Err(
                    "allowed: the master's name as the Sentinels know it (sentinel monitor NAME ...), \
                     without spaces, at most 256 bytes"
                        .to_owned(),
                );
            }
            c.redis_sentinel_master = (!t.is_empty()).then(|| t.to_owned());
            Ok(())
        },
        show: |c| c.redis_sentinel_master.clone().unwrap_or_default(),
        doc: "the name of the master the Sentinels monitor (sentinel monitor NAME ...)",
    },
    KeySpec {
        name: "redis_sentinel_password",
        legacy_env: None,
        secret: true,
        apply: |c, v| {
            c.redis_sentinel_password = (!v.is_empty()).then(|| Secret::new(v));
            Ok(())
        },
        show: |c| {
            c.redis_sentinel_password
                .as_ref()
                .map(|_| "<redacted>".to_owned())
                .unwrap_or_default()
        },
        doc: "the Sentinels' own password (their requirepass); empty means none",
    },
    KeySpec {
        name: "memcached_servers",
        legacy_env: None,
        secret: false,
        apply: |c, v| {
            c.memcached_servers = parse_servers(v, "memcached_servers")?;
            Ok(())
        },
        show: |c| show_list(&c.memcached_servers),
        doc: "Memcached servers, host:port separated by commas (port defaults to 11211)",
    },
    KeySpec {
        name: "compress_min_bytes",
        legacy_env: None,
        secret: false,
        apply: |c, v| {
            let t = v.trim();
            c.compress_min_bytes = if t.is_empty() {
                None
            } else {
                match t.parse::<usize>() {
                    Ok(n) if n <= 1 << 30 => Some(n),
                    _ => {
                        return Err(
                            "allowed: a number of bytes (0 to 1073741824), or empty for never"
                                .to_owned(),
                        );
                    }
                }
            };
            Ok(())
        },
        show: |c| {
            c.compress_min_bytes
                .map(|n| n.to_string())
                .unwrap_or_default()
        },
        doc: "Memcached: zlib-compress values longer than this (flags 8, pymemcache's CompressedSerde); empty: never",
    },
    KeySpec {
        name: "connect_timeout",
        legacy_env: None,
        secret: false,
        apply: |c, v| {
            c.connect_timeout = parse_secs(v, "connect_timeout")?;
            Ok(())
        },
        show: |c| format!("{}", c.connect_timeout.as_secs_f64()),
        doc: "seconds to wait for a server connection",
    },
    KeySpec {
        name: "timeout",
        legacy_env: None,
        secret: false,
        apply: |c, v| {
            c.timeout = parse_secs(v, "timeout")?;
            Ok(())
        },
        show: |c| format!("{}", c.timeout.as_secs_f64()),
        doc: "seconds to wait for one server operation",
    },
    KeySpec {
        name: "fallback",
        legacy_env: None,
        secret: false,
        apply: |c, v| {
            c.fallback = match v.trim().to_ascii_lowercase().as_str() {
                "pickle" => FallbackMode::Pickle,
                "none" => FallbackMode::None,
                "error" => FallbackMode::Error,
                _ => return Err("allowed: pickle, none, error".to_owned()),
            };
            Ok(())
        },
        show: |c| c.fallback.as_str().to_owned(),
        doc: "while Redis/Memcached is down: pickle (serve from pickle_dir), none (miss), error",
    },
    KeySpec {
        name: "breaker_failures",
        legacy_env: None,
        secret: false,
        apply: |c, v| {
            c.breaker_failures = match v.trim().parse::<u32>() {
                Ok(n) if (1..=1000).contains(&n) => n,
                _ => return Err("allowed: a whole number from 1 to 1000".to_owned()),
            };
            Ok(())
        },
        show: |c| c.breaker_failures.to_string(),
        doc: "consecutive failed operations after which the server is marked down",
    },
    KeySpec {
        name: "breaker_retry",
        legacy_env: None,
        secret: false,
        apply: |c, v| {
            c.breaker_retry = parse_secs(v, "breaker_retry")?;
            Ok(())
        },
        show: |c| format!("{}", c.breaker_retry.as_secs_f64()),
        doc: "seconds between probes of a server marked down",
    },
    KeySpec {
        name: "server_flush",
        legacy_env: None,
        secret: false,
        apply: |c, v| {
            c.server_flush = parse_bool(v)?;
            Ok(())
        },
        show: |c| c.server_flush.to_string(),
        doc: "with an empty namespace, let flush_all flush the whole Redis database or Memcached servers",
    },
    KeySpec {
        name: "lock_timeout",
        legacy_env: None,
        secret: false,
        apply: |c, v| {
            c.lock_timeout = parse_secs(v, "lock_timeout")?;
            Ok(())
        },
        show: |c| format!("{}", c.lock_timeout.as_secs_f64()),
        doc: "seconds a get_or_set caller waits for another one's computation before computing itself",
    },
    KeySpec {
        name: "lease_ttl",
        legacy_env: None,
        secret: false,
        apply: |c, v| {
            c.lease_ttl = parse_secs(v, "lease_ttl")?;
            Ok(())
        },
        show: |c| format!("{}", c.lease_ttl.as_secs_f64()),
        doc: "seconds a get_or_set computation holds its lease before a waiter may take over",
    },
    KeySpec {
        name: "near_cache",
        legacy_env: None,
        secret: false,
        apply: |c, v| {
            c.near_cache = parse_bool(v)?;
            Ok(())
        },
        show: |c| c.near_cache.to_string(),
        doc: "keep read values in this process too (Redis: invalidated by the server; Memcached: for at most near_cache_ttl)",
    },
    KeySpec {
        name: "near_cache_size",
        legacy_env: None,
        secret: false,
        apply: |c, v| {
            c.near_cache_size = match v.trim().parse::<u64>() {
                Ok(n) if (1..=NEAR_CACHE_SIZE_MAX).contains(&n) => n,
                _ => {
                    return Err(format!(
                        "allowed: a whole number of entries from 1 to {NEAR_CACHE_SIZE_MAX}"
                    ));
                }
            };
            Ok(())
        },
        show: |c| c.near_cache_size.to_string(),
        doc: "the most entries the near cache keeps",
    },
    KeySpec {
        name: "near_cache_ttl",
        legacy_env: None,
        secret: false,
        apply: |c, v| {
            c.near_cache_ttl = parse_secs(v, "near_cache_ttl")?;
            Ok(())
        },
        show: |c| format!("{}", c.near_cache_ttl.as_secs_f64()),
        doc: "seconds an entry may live in the near cache (Memcached: the staleness bound)",
    },
];

/// The largest `near_cache_size` accepted: ten million entries.
pub(super) const NEAR_CACHE_SIZE_MAX: u64 = 10_000_000;

/// `redis://user:pass@host` -> `redis://<redacted>@host`.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}<redacted>{}", &url[..s + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

pub(super) fn spec(name: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|k| k.name == name)
}

pub(super) fn known_keys() -> String {
    KEYS.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
}
