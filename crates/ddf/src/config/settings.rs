//! Per-backend settings, extracted from a [`CacheConfig`] and validated once, here.
//!
//! A backend is built from settings that are already valid: every error about a setting is an
//! [`Error::Config`] naming where the value came from (file and line, environment variable,
//! code, default). Files the settings need (the Redis CA bundle) are read here, once; the choice
//! between a standalone Redis server, TLS, a unix socket and a Cluster is made here, once.
//!
//! The settings hold no client types: `backend/redis.rs` turns [`RedisSettings`] into a redis-rs
//! client in a few lines, and an async face can turn the same settings into its own client.

use std::path::PathBuf;
use std::time::Duration;

use super::keys::CacheConfig;
use super::types::{CacheBackend, FallbackMode};
use super::values::{Secret, ServerAddr};
use crate::error::{Error, Result, Source};

/// The settings of the backend a config names.
#[derive(Debug, Clone)]
pub(crate) enum BackendSettings {
    /// `backend = none`.
    None,
    /// `backend = pickle`.
    File(FileSettings),
    /// `backend = redis` or `redis_pickle`.
    Redis(RedisSettings),
    /// `backend = memcached` or `memcached_pickle`.
    Memcached(MemcachedSettings),
}

/// The file backend's settings: its directory and namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileSettings {
    /// The cache directory ([`CacheConfig::pickle_dir`], resolved).
    pub(crate) dir: PathBuf,
    /// The namespace of this cache's entries.
    pub(crate) namespace: String,
}

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

/// How the near cache (`near_cache = true`) learns that a value changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NearMode {
    /// Redis: server-assisted invalidation (`CLIENT TRACKING`).
    Tracked,
    /// Memcached: no push; entries live at most `near_cache_ttl`.
    TtlOnly,
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

/// How values are written on a Memcached server (pymemcache's conventions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ValueFormat {
    /// `backend = memcached`: JSON text, str and int as pymemcache writes them.
    Json,
    /// `backend = memcached_pickle`: Python pickles.
    Pickle,
}

/// The Memcached backend's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemcachedSettings {
    /// `memcached_servers`, in the configured order (placement hashes their names); never empty.
    pub(crate) servers: Vec<ServerAddr>,
    /// The value format.
    pub(crate) format: ValueFormat,
    /// `connect_timeout`.
    pub(crate) connect_timeout: Duration,
    /// `timeout`.
    pub(crate) timeout: Duration,
    /// `namespace`.
    pub(crate) namespace: String,
    /// `server_flush`.
    pub(crate) server_flush: bool,
    /// `memcached://a:1,b:2` with the servers sorted: one cache whatever their order.
    identity: String,
}

impl MemcachedSettings {
    /// The servers, without credentials, sorted: `memcached://a:11211,b:11211`. Names the
    /// servers in messages and scopes the outage journal.
    pub(crate) fn identity(&self) -> &str {
        &self.identity
    }

    /// The settings of one of the servers alone, for the breaker per server: its identity is
    /// that of a one-server list (`memcached://host:port`).
    pub(crate) fn only(&self, server: &ServerAddr) -> MemcachedSettings {
        MemcachedSettings {
            servers: vec![server.clone()],
            identity: memcached_identity(&[server.to_string()]),
            ..self.clone()
        }
    }
}

/// The identity of a Memcached server list (sorted, without duplicates): `memcached://a:1,b:2`.
fn memcached_identity(names: &[String]) -> String {
    format!("memcached://{}", names.join(","))
}

/// Where a standalone Redis server is, and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RedisEndpoint {
    /// Plain TCP (`redis_host`/`redis_port`, or a `redis://` URL).
    Tcp {
        /// Host name or IP address (IPv6 without brackets).
        host: String,
        /// TCP port.
        port: u16,
    },
    /// TLS (`rediss://`).
    Tls {
        /// Host name or IP address (IPv6 without brackets).
        host: String,
        /// TCP port.
        port: u16,
        /// `rediss://...#insecure`: the certificate's host name is not checked.
        insecure: bool,
    },
    /// A unix socket (`unix://` or `redis+unix://`).
    Unix {
        /// The socket's path.
        path: PathBuf,
    },
}

/// The Redis deployment the backend talks to, chosen once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RedisTarget {
    /// One server.
    Standalone(RedisEndpoint),
    /// A Redis Cluster, discovered from these nodes (`redis_cluster_nodes`); TLS to every node
    /// when a CA is given.
    Cluster(Vec<ServerAddr>),
    /// The master a group of Redis Sentinels monitors (`redis_sentinels`,
    /// `redis_sentinel_master`), found through them and followed across failovers; TLS to the
    /// Sentinels and the master when a CA is given. The master's credentials and database are
    /// `redis_password` and `redis_db`.
    Sentinel {
        /// The Sentinels, in the configured order.
        sentinels: Vec<ServerAddr>,
        /// The name the Sentinels monitor the master under.
        master: String,
        /// The Sentinels' own password (`redis_sentinel_password`).
        password: Option<Secret>,
    },
}

/// The Redis backend's settings.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct RedisSettings {
    /// Standalone (TCP, TLS, unix socket), Cluster or Sentinel.
    pub(crate) target: RedisTarget,
    /// The PEM CA bundle of `redis_ca_file`, read once, checked to hold certificates; only with
    /// TLS (`rediss://`), a cluster or Sentinel.
    pub(crate) ca: Option<Vec<u8>>,
    /// The user of `AUTH` (from the URL).
    pub(crate) username: Option<String>,
    /// The password of `AUTH`: the URL's, else `redis_password`.
    pub(crate) password: Option<Secret>,
    /// The database (always 0 on a cluster).
    pub(crate) db: i64,
    /// `?protocol=resp3` in the URL.
    pub(crate) resp3: bool,
    /// `connect_timeout`.
    pub(crate) connect_timeout: Duration,
    /// `timeout`.
    pub(crate) timeout: Duration,
    /// `namespace`.
    pub(crate) namespace: String,
    /// `server_flush`.
    pub(crate) server_flush: bool,
    /// Where the target's setting came from (`redis_url`, `redis_cluster_nodes`,
    /// `redis_sentinels` or `redis_host`), for an error the client raises when it is built.
    pub(crate) source: Source,
    identity: String,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The identity carries no credentials; the password is a Secret anyway.
        f.debug_struct("RedisSettings")
            .field("identity", &self.identity)
            .field("tls_ca", &self.ca.is_some())
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl RedisSettings {
    /// The server without credentials: `redis://host:port/db`, `rediss://host:port/db`,
    /// `unix:/path?db=N`, `cluster[a:1,b:2]` (nodes sorted) or `sentinel[a:1,b:2]/NAME/db`
    /// (Sentinels sorted). Names the server in messages and
    /// scopes the outage journal, so `redis` and `redis_pickle` on one server share it.
    pub(crate) fn identity(&self) -> &str {
        &self.identity
    }
}

const URL_FORMS: &str = "expected redis://[:password@]host[:port][/db], \
                         rediss://... (TLS) or unix:///path/to/socket[?db=N]";

impl CacheConfig {
    /// A configuration error about `key`, pointing at where its value came from.
    fn invalid(&self, key: &str, message: impl Into<String>) -> Error {
        Error::config(self.source_of(key), message)
    }

    /// The namespace, checked again here because the fields are public and may have been set
    /// without the parsers.
    fn check_namespace(&self) -> Result<()> {
        if self.namespace.len() > 128 || self.namespace.chars().any(char::is_control) {
            return Err(self.invalid(
                "namespace",
                "namespace is not valid: allowed: at most 128 bytes without control characters",
            ));
        }
        Ok(())
    }

    /// The namespace and the server timeouts (as [`Self::check_namespace`]).
    fn check_server(&self) -> Result<()> {
        self.check_namespace()?;
        for (key, d) in [
            ("connect_timeout", self.connect_timeout),
            ("timeout", self.timeout),
        ] {
            if d.is_zero() {
                return Err(self.invalid(
                    key,
                    format!("{key} is 0: it must be a number of seconds greater than 0"),
                ));
            }
        }
        Ok(())
    }

    /// The error for a backend whose cargo feature this build of ddf lacks.
    #[cfg_attr(all(feature = "redis", feature = "memcached"), allow(dead_code))]
    pub(crate) fn feature_off(&self, feature: &str) -> Error {
        self.invalid(
            "backend",
            format!(
                "backend = {} needs ddf's cargo feature `{feature}`, which this build was compiled \
                 without: enable it (`features = [\"{feature}\"]`, or leave ddf's default \
                 features on)",
                self.backend.as_str()
            ),
        )
    }

    /// The settings of the backend this config names, validated.
    ///
    /// # Errors
    /// [`Error::Config`] naming the setting and where its value came from.
    pub(crate) fn backend_settings(&self) -> Result<BackendSettings> {
        Ok(match self.backend {
            CacheBackend::None => BackendSettings::None,
            CacheBackend::Pickle => BackendSettings::File(self.file_settings()?),
            CacheBackend::Redis | CacheBackend::RedisPickle => {
                BackendSettings::Redis(self.redis_settings()?)
            }
            CacheBackend::Memcached | CacheBackend::MemcachedPickle => {
                BackendSettings::Memcached(self.memcached_settings()?)
            }
        })
    }

    /// The file backend's settings.
    ///
    /// # Errors
    /// [`Error::Config`] for an unusable namespace.
    pub(crate) fn file_settings(&self) -> Result<FileSettings> {
        self.check_namespace()?;
        Ok(FileSettings {
            dir: self.pickle_dir(),
            namespace: self.namespace.clone(),
        })
    }

    /// The breaker's, fallback's and journal's settings of a server backend.
    ///
    /// # Errors
    /// [`Error::Config`] for `breaker_failures = 0` or `breaker_retry = 0` (only possible by
    /// setting the fields directly: the parsers refuse them).
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

    /// The near cache's settings: `None` when `near_cache` is off or the backend stores
    /// nothing.
    ///
    /// # Errors
    /// [`Error::Config`] for a size or TTL out of range (only possible by setting the fields
    /// directly: the parsers refuse them), and for `near_cache = true` where it is not offered:
    /// the local directory (see docs/near-cache.md: a hit could not be both coherent and faster
    /// than the file's own get), a Redis Cluster, TLS or Sentinel (not tracked yet).
    pub(crate) fn near_settings(&self) -> Result<Option<NearSettings>> {
        if !self.near_cache {
            return Ok(None);
        }
        if !(1..=super::keys::NEAR_CACHE_SIZE_MAX).contains(&self.near_cache_size) {
            return Err(self.invalid(
                "near_cache_size",
                format!(
                    "near_cache_size is {}: allowed: a whole number of entries from 1 to {}",
                    self.near_cache_size,
                    super::keys::NEAR_CACHE_SIZE_MAX
                ),
            ));
        }
        if self.near_cache_ttl.is_zero() {
            return Err(self.invalid(
                "near_cache_ttl",
                "near_cache_ttl is 0: it must be a number of seconds greater than 0",
            ));
        }
        let not_offered = |what: &str| {
            self.invalid(
                "near_cache",
                format!(
                    "near_cache = true is not offered with {what}; set near_cache = false \
                     (see docs/near-cache.md)"
                ),
            )
        };
        let mode = match self.backend {
            CacheBackend::None => return Ok(None),
            CacheBackend::Pickle => {
                return Err(not_offered(
                    "backend = pickle (a local directory: a hit would not be faster than its own get)",
                ));
            }
            CacheBackend::Memcached | CacheBackend::MemcachedPickle => NearMode::TtlOnly,
            CacheBackend::Redis | CacheBackend::RedisPickle => {
                if !self.redis_cluster_nodes.is_empty() {
                    return Err(not_offered(
                        "a Redis Cluster (redis_cluster_nodes): tracking every primary is not written yet",
                    ));
                }
                NearMode::Tracked
            }
        };
        Ok(Some(NearSettings {
            size: self.near_cache_size,
            ttl: self.near_cache_ttl,
            mode,
        }))
    }

    /// The Memcached backend's settings.
    ///
    /// # Errors
    /// [`Error::Config`] for an empty `memcached_servers` (naming where it came from), a zero
    /// timeout or an unusable namespace.
    pub(crate) fn memcached_settings(&self) -> Result<MemcachedSettings> {
        self.check_server()?;
        if self.memcached_servers.is_empty() {
            return Err(self.invalid(
                "memcached_servers",
                "memcached_servers is empty: give at least one host:port",
            ));
        }
        let mut names: Vec<String> = self
            .memcached_servers
            .iter()
            .map(ToString::to_string)
            .collect();
        names.sort();
        names.dedup();
        Ok(MemcachedSettings {
            servers: self.memcached_servers.clone(),
            format: if self.backend == CacheBackend::MemcachedPickle {
                ValueFormat::Pickle
            } else {
                ValueFormat::Json
            },
            connect_timeout: self.connect_timeout,
            timeout: self.timeout,
            namespace: self.namespace.clone(),
            server_flush: self.server_flush,
            identity: memcached_identity(&names),
        })
    }

    /// The Redis backend's settings: the target chosen (Sentinel when `redis_sentinels` or
    /// `redis_sentinel_master` is set, Cluster when `redis_cluster_nodes` is, else `redis_url`,
    /// else `redis_host`/`redis_port`/`redis_db`), the CA file read.
    ///
    /// # Errors
    /// [`Error::Config`] naming the setting and where its value came from: an unparseable
    /// `redis_url`, an unreadable `redis_ca_file` or one without a PEM certificate, a CA file
    /// without `rediss://`, a `redis_db` other than 0 on a cluster, Sentinels without a master
    /// name (or the reverse), Sentinels with cluster nodes or a `redis_url`, a zero timeout.
    pub(crate) fn redis_settings(&self) -> Result<RedisSettings> {
        self.check_server()?;
        let ca = match &self.redis_ca_file {
            Some(p) => Some(std::fs::read(p).map_err(|e| {
                self.invalid(
                    "redis_ca_file",
                    format!(
                        "redis_ca_file {} cannot be read: {e}; give a PEM CA bundle",
                        p.display()
                    ),
                )
            })?),
            None => None,
        };
        let config_password = self
            .redis_password
            .clone()
            .filter(|p| !p.expose().is_empty());
        let sentinel = !self.redis_sentinels.is_empty() || self.redis_sentinel_master.is_some();
        let mut settings = if sentinel {
            self.sentinel(config_password)?
        } else if self.redis_cluster_nodes.is_empty() {
            self.standalone(config_password)?
        } else {
            if self.redis_db != 0 {
                return Err(self.invalid(
                    "redis_db",
                    "redis_db must be 0 with redis_cluster_nodes: Redis Cluster has only database 0",
                ));
            }
            let mut names: Vec<String> = self
                .redis_cluster_nodes
                .iter()
                .map(ToString::to_string)
                .collect();
            names.sort();
            names.dedup();
            RedisSettings {
                target: RedisTarget::Cluster(self.redis_cluster_nodes.clone()),
                ca: None,
                username: None,
                password: config_password,
                db: 0,
                resp3: false,
                connect_timeout: self.connect_timeout,
                timeout: self.timeout,
                namespace: self.namespace.clone(),
                server_flush: self.server_flush,
                source: self.source_of("redis_cluster_nodes"),
                identity: format!("cluster[{}]", names.join(",")),
            }
        };
        if let Some(pem) = ca {
            if matches!(
                settings.target,
                RedisTarget::Standalone(RedisEndpoint::Tcp { .. } | RedisEndpoint::Unix { .. })
            ) {
                return Err(self.invalid(
                    "redis_ca_file",
                    "redis_ca_file is set but the connection is not TLS: \
                     use redis_url = rediss://host:port, or remove redis_ca_file",
                ));
            }
            self.check_ca(&pem)?;
            settings.ca = Some(pem);
        }
        Ok(settings)
    }

    /// The master a group of Sentinels monitors (`redis_sentinels`, `redis_sentinel_master`);
    /// its password and database are `redis_password` and `redis_db`.
    fn sentinel(&self, config_password: Option<Secret>) -> Result<RedisSettings> {
        if !self.redis_cluster_nodes.is_empty() {
            return Err(self.invalid(
                "redis_sentinels",
                "redis_sentinels and redis_cluster_nodes are both set: a Redis deployment is \
                 either Sentinel or Cluster; remove one of them",
            ));
        }
        if self.redis_sentinels.is_empty() {
            return Err(self.invalid(
                "redis_sentinel_master",
                "redis_sentinel_master is set but redis_sentinels is empty: give the Sentinels \
                 as host:port, host:port",
            ));
        }
        let Some(master) = self.redis_sentinel_master.clone().filter(|m| !m.is_empty()) else {
            return Err(self.invalid(
                "redis_sentinels",
                "redis_sentinels is set without redis_sentinel_master: give the name the \
                 Sentinels monitor the master under (sentinel monitor NAME ...)",
            ));
        };
        if self.redis_url.is_some() {
            return Err(self.invalid(
                "redis_url",
                "redis_url names one server but redis_sentinels finds the master: remove \
                 redis_url (with Sentinel, the master's password and database are \
                 redis_password and redis_db; TLS is on when redis_ca_file is set)",
            ));
        }
        let mut names: Vec<String> = self
            .redis_sentinels
            .iter()
            .map(ToString::to_string)
            .collect();
        names.sort();
        names.dedup();
        Ok(RedisSettings {
            target: RedisTarget::Sentinel {
                sentinels: self.redis_sentinels.clone(),
                master: master.clone(),
                password: self
                    .redis_sentinel_password
                    .clone()
                    .filter(|p| !p.expose().is_empty()),
            },
            ca: None,
            username: None,
            password: config_password,
            db: i64::from(self.redis_db),
            resp3: false,
            connect_timeout: self.connect_timeout,
            timeout: self.timeout,
            namespace: self.namespace.clone(),
            server_flush: self.server_flush,
            source: self.source_of("redis_sentinels"),
            identity: format!("sentinel[{}]/{master}/{}", names.join(","), self.redis_db),
        })
    }

    /// A standalone server from `redis_url`, else from `redis_host`/`redis_port`/`redis_db`.
    fn standalone(&self, config_password: Option<Secret>) -> Result<RedisSettings> {
        let base = |target, identity: String, source| RedisSettings {
            target: RedisTarget::Standalone(target),
            ca: None,
            username: None,
            password: config_password.clone(),
            db: i64::from(self.redis_db),
            resp3: false,
            connect_timeout: self.connect_timeout,
            timeout: self.timeout,
            namespace: self.namespace.clone(),
            server_flush: self.server_flush,
            source,
            identity,
        };
        let Some(url) = &self.redis_url else {
            let addr = ServerAddr {
                host: self.redis_host.clone(),
                port: self.redis_port,
            };
            let identity = format!("redis://{addr}/{}", self.redis_db);
            let endpoint = RedisEndpoint::Tcp {
                host: addr.host,
                port: addr.port,
            };
            return Ok(base(endpoint, identity, self.source_of("redis_host")));
        };
        let s = base(
            RedisEndpoint::Tcp {
                host: String::new(),
                port: 0,
            },
            String::new(),
            self.source_of("redis_url"),
        );
        self.standalone_url(url, s)
    }

    /// A standalone server from `redis_url`, over `s` (the settings the other keys give).
    #[cfg(not(feature = "redis"))]
    fn standalone_url(&self, _url: &Secret, _s: RedisSettings) -> Result<RedisSettings> {
        Err(self.feature_off("redis"))
    }

    /// A standalone server from `redis_url`, over `s` (the settings the other keys give).
    #[cfg(feature = "redis")]
    fn standalone_url(&self, url: &Secret, mut s: RedisSettings) -> Result<RedisSettings> {
        use redis::IntoConnectionInfo;
        // The URL grammar (defaults, percent-decoding, `#insecure`, `?db=` of unix URLs) is
        // redis-rs's: parsed by redis-rs here so that the two never disagree, and turned at once
        // into our own types. The error text is ours: redis-rs's could quote the URL.
        let bad_url = || {
            self.invalid(
                "redis_url",
                format!("redis_url is not a valid URL; {URL_FORMS}"),
            )
        };
        if has_empty_port(url.expose()) {
            // The URL parser reads `host:` as the default port 6379: almost surely not meant.
            return Err(self.invalid(
                "redis_url",
                "redis_url has an empty port (a colon after the host, then no number): give the \
                 port, or leave the colon out for 6379",
            ));
        }
        let info = url.expose().into_connection_info().map_err(|_| bad_url())?;
        let r = info.redis_settings();
        let db = r.db();
        let (endpoint, identity) = match info.addr() {
            redis::ConnectionAddr::Tcp(host, port) => {
                let at = ServerAddr {
                    host: host.clone(),
                    port: *port,
                };
                (
                    RedisEndpoint::Tcp {
                        host: host.clone(),
                        port: *port,
                    },
                    format!("redis://{at}/{db}"),
                )
            }
            redis::ConnectionAddr::TcpTls {
                host,
                port,
                insecure,
                ..
            } => {
                let at = ServerAddr {
                    host: host.clone(),
                    port: *port,
                };
                (
                    RedisEndpoint::Tls {
                        host: host.clone(),
                        port: *port,
                        insecure: *insecure,
                    },
                    format!("rediss://{at}/{db}"),
                )
            }
            redis::ConnectionAddr::Unix(path) => (
                RedisEndpoint::Unix { path: path.clone() },
                format!("unix:{}?db={db}", path.display()),
            ),
            _ => return Err(bad_url()),
        };
        s.target = RedisTarget::Standalone(endpoint);
        s.identity = identity;
        s.db = db;
        s.username = r.username().map(str::to_owned);
        s.resp3 = r.protocol().supports_resp3();
        // redis_password applies when the URL carries none.
        if let Some(p) = r.password() {
            s.password = Some(Secret::new(p)).filter(|p| !p.expose().is_empty());
        }
        Ok(s)
    }

    #[cfg(not(feature = "tls"))]
    fn check_ca(&self, _pem: &[u8]) -> Result<()> {
        Err(self.invalid(
            "redis_ca_file",
            "redis_ca_file needs ddf's cargo feature `tls`, which this build was compiled without",
        ))
    }

    /// Checks that the CA bundle holds at least one PEM certificate that can be a trust anchor.
    #[cfg(feature = "tls")]
    fn check_ca(&self, pem: &[u8]) -> Result<()> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let path = self
            .redis_ca_file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let mut store = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let added = cert.ok().and_then(|c| store.add(c).ok());
            if added.is_none() {
                return Err(self.invalid(
                    "redis_ca_file",
                    format!("redis_ca_file {path} holds a certificate that cannot be read; give a PEM CA bundle"),
                ));
            }
        }
        if store.is_empty() {
            return Err(self.invalid(
                "redis_ca_file",
                format!("redis_ca_file {path} holds no PEM certificate; give a PEM CA bundle"),
            ));
        }
        Ok(())
    }
}

/// Whether a `redis://` or `rediss://` URL's authority ends with a colon (`host:/0`).
fn has_empty_port(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host_port.ends_with(':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(feature = "redis")]
    fn an_empty_redis_port_names_the_key_the_file_and_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ddf.ini");
        for url in [
            "redis://127.0.0.1:/0",
            "redis://:secret@127.0.0.1:",
            "rediss://[::1]:/2",
        ] {
            std::fs::write(
                &path,
                format!("[cache]\nbackend = redis\nredis_url = {url}\n"),
            )
            .unwrap();
            let e = CacheConfig::from_ini_file(&path)
                .unwrap()
                .redis_settings()
                .unwrap_err();
            let text = e.to_string();
            assert!(e.is_config(), "{text}");
            assert!(text.contains("redis_url"), "{text}");
            assert!(text.contains("empty port"), "{text}");
            assert!(text.contains("line 3"), "{text}");
            assert!(text.contains(&path.display().to_string()), "{text}");
            assert!(!text.contains("secret"), "{text}");
        }
        for fine in [
            "redis://127.0.0.1/0",
            "redis://u:p:w@h:1/0",
            "unix:///tmp/r.sock",
        ] {
            assert!(!has_empty_port(fine), "{fine}");
        }
    }

    fn cfg(text: &str) -> CacheConfig {
        CacheConfig::from_ini_str(text).unwrap()
    }

    #[test]
    #[cfg(feature = "tls")]
    fn unusable_settings_are_config_errors_with_their_line() {
        let ini = "[cache]\nbackend = redis\nredis_url = redis://:pw@[bad\n";
        let e = cfg(ini).redis_settings().unwrap_err();
        let text = e.to_string();
        assert!(e.is_config(), "{text}");
        assert!(
            text.contains("line 3") && text.contains("rediss://"),
            "{text}"
        );
        assert!(!text.contains("pw"), "{text}");

        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate").unwrap();
        let ini = format!("[cache]\nredis_ca_file = {}\n", ca.display());
        let e = cfg(&ini).redis_settings().unwrap_err();
        assert!(
            e.to_string().contains("line 2") && e.to_string().contains("rediss://"),
            "{e}"
        );
        // With TLS, a file without a certificate is refused here, not at the first connection.
        let ini = format!(
            "[cache]\nredis_url = rediss://h:1\nredis_ca_file = {}\n",
            ca.display()
        );
        let e = cfg(&ini).redis_settings().unwrap_err();
        assert!(
            e.to_string().contains("line 3") && e.to_string().contains("no PEM certificate"),
            "{e}"
        );

        let ini = "[cache]\nredis_db = 2\nredis_cluster_nodes = 127.0.0.1:7000\n";
        let e = cfg(ini).redis_settings().unwrap_err();
        assert!(
            e.to_string().contains("line 2") && e.to_string().contains("Cluster"),
            "{e}"
        );

        let ini = "[cache]\nredis_ca_file = /nonexistent/ca.pem\n";
        let e = cfg(ini).redis_settings().unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    #[cfg(feature = "tls")]
    fn redis_targets_are_chosen_once_with_identities_without_credentials() {
        let s = cfg("[cache]\nredis_host = r.example\nredis_port = 6380\nredis_db = 2\nredis_password = pw\n")
            .redis_settings()
            .unwrap();
        assert_eq!(
            s.target,
            RedisTarget::Standalone(RedisEndpoint::Tcp {
                host: "r.example".into(),
                port: 6380
            })
        );
        assert_eq!((s.identity(), s.db), ("redis://r.example:6380/2", 2));
        assert_eq!(s.password.as_ref().map(Secret::expose), Some("pw"));

        // The URL wins over host/port/db, and its password over redis_password.
        let s =
            cfg("[cache]\nredis_password = other\nredis_url = rediss://u:s3cret@[::1]:7000/3\n")
                .redis_settings()
                .unwrap();
        assert!(matches!(
            s.target,
            RedisTarget::Standalone(RedisEndpoint::Tls {
                port: 7000,
                insecure: false,
                ..
            })
        ));
        assert_eq!(s.identity(), "rediss://[::1]:7000/3");
        assert_eq!(s.password.as_ref().map(Secret::expose), Some("s3cret"));
        assert_eq!(s.username.as_deref(), Some("u"));
        assert!(!format!("{s:?}").contains("s3cret"));

        let s = cfg("[cache]\nredis_url = redis://:pw@h\n")
            .redis_settings()
            .unwrap();
        assert_eq!(s.identity(), "redis://h:6379/0");

        let s = cfg("[cache]\nredis_url = unix:///run/redis.sock?db=4\n")
            .redis_settings()
            .unwrap();
        assert_eq!(s.identity(), "unix:/run/redis.sock?db=4");
        assert_eq!(s.db, 4);

        let s = cfg("[cache]\nredis_cluster_nodes = b:7001, a:7000\nredis_url = redis://x\n")
            .redis_settings()
            .unwrap();
        assert_eq!(s.identity(), "cluster[a:7000,b:7001]");
        assert!(matches!(s.target, RedisTarget::Cluster(ref n) if n.len() == 2));
    }

    #[test]
    #[cfg(feature = "tls")]
    fn sentinel_settings_and_their_errors() {
        let s = cfg(
            "[cache]\nredis_sentinels = s2, s1:26380\nredis_sentinel_master = mymaster\n\
                     redis_sentinel_password = spw\nredis_password = mpw\nredis_db = 3\n",
        )
        .redis_settings()
        .unwrap();
        assert_eq!(s.identity(), "sentinel[s1:26380,s2:26379]/mymaster/3");
        assert_eq!((s.db, s.ca.is_none()), (3, true));
        assert_eq!(s.password.as_ref().map(Secret::expose), Some("mpw"));
        let RedisTarget::Sentinel {
            sentinels,
            master,
            password,
        } = &s.target
        else {
            panic!("{s:?}")
        };
        // The configured order is kept (the first is asked first); the default port is 26379.
        assert_eq!(sentinels[0].to_string(), "s2:26379");
        assert_eq!(master, "mymaster");
        assert_eq!(password.as_ref().map(Secret::expose), Some("spw"));
        assert!(!format!("{s:?}").contains("spw"));

        let err = |ini: &str| cfg(ini).redis_settings().unwrap_err().to_string();
        let e = err("[cache]\nredis_sentinels = s1\n");
        assert!(
            e.contains("line 2") && e.contains("without redis_sentinel_master"),
            "{e}"
        );
        let e = err("[cache]\nbackend = redis\nredis_sentinel_master = m\n");
        assert!(
            e.contains("line 3") && e.contains("redis_sentinels is empty"),
            "{e}"
        );
        let e = err(
            "[cache]\nredis_cluster_nodes = c:7000\nredis_sentinels = s1\nredis_sentinel_master = m\n",
        );
        assert!(
            e.contains("line 3") && e.contains("either Sentinel or Cluster"),
            "{e}"
        );
        let e = err(
            "[cache]\nredis_sentinels = s1\nredis_sentinel_master = m\nredis_url = redis://:pw@h\n",
        );
        assert!(
            e.contains("line 4") && e.contains("remove redis_url"),
            "{e}"
        );
        assert!(!e.contains("pw@"), "{e}");
        let e = CacheConfig::from_ini_str("[cache]\nredis_sentinel_master = my master\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("without spaces"), "{e}");

        // With a CA, the Sentinels and the master are reached over TLS.
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate").unwrap();
        let ini = format!(
            "[cache]\nredis_sentinels = s1\nredis_sentinel_master = m\nredis_ca_file = {}\n",
            ca.display()
        );
        let e = err(&ini);
        assert!(e.contains("no PEM certificate"), "{e}");
    }

    /// `default-features = false`: a server backend is a configuration error naming the
    /// feature, from the settings and from `from_config`.
    #[test]
    #[cfg(not(all(feature = "redis", feature = "memcached")))]
    fn a_backend_without_its_feature_is_a_clear_error() {
        let cases = [
            (cfg!(feature = "redis"), "redis", "redis"),
            (cfg!(feature = "redis"), "redis_pickle", "redis"),
            (cfg!(feature = "memcached"), "memcached", "memcached"),
        ];
        for (on, backend, feature) in cases {
            if on {
                continue;
            }
            let c = cfg(&format!("[cache]\nbackend = {backend}\n"));
            let e = crate::backend::from_config(&c).unwrap_err();
            let text = e.to_string();
            assert!(e.is_config(), "{text}");
            assert!(
                text.contains(&format!("cargo feature `{feature}`")) && text.contains("line 2"),
                "{text}"
            );
        }
        // The local directory needs no feature.
        let dir = tempfile::tempdir().unwrap();
        let c = cfg("[cache]\nbackend = pickle\n").with_pickle_dir(dir.path());
        crate::backend::from_config(&c).unwrap();
    }

    #[test]
    fn memcached_settings() {
        let s = cfg("[cache]\nbackend = memcached_pickle\nmemcached_servers = m2:1, m1\n")
            .memcached_settings()
            .unwrap();
        assert_eq!(s.identity(), "memcached://m1:11211,m2:1");
        assert_eq!(s.format, ValueFormat::Pickle);
        // Placement hashes the servers in the configured order: it is kept.
        assert_eq!(s.servers[0].to_string(), "m2:1");

        let e = cfg("[cache]\nbackend = memcached\n")
            .with_memcached_servers(Vec::new())
            .memcached_settings()
            .unwrap_err();
        assert!(e.is_config(), "{e}");
        assert!(
            e.to_string().contains("memcached_servers is empty") && e.to_string().contains("code"),
            "{e}"
        );
    }

    #[test]
    fn values_set_around_the_parsers_are_checked() {
        let c = CacheConfig {
            timeout: Duration::ZERO,
            ..CacheConfig::default()
        };
        let e = c.memcached_settings().unwrap_err();
        assert!(e.to_string().contains("timeout is 0"), "{e}");
        let c = CacheConfig {
            breaker_failures: 0,
            ..CacheConfig::default()
        };
        let e = c.resilience_settings().unwrap_err();
        assert!(e.to_string().contains("breaker_failures"), "{e}");
        let mut c = CacheConfig::default().with_namespace("a\nb");
        let e = c.file_settings().unwrap_err();
        assert!(e.to_string().contains("code: namespace"), "{e}");
        c.namespace = String::new();
        let r = c.resilience_settings().unwrap();
        assert!(r.refuse_whole_keyspace);
        assert_eq!(r.dir, c.pickle_dir());
    }
}
