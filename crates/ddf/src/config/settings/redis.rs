//! The Redis backend's settings (`backend = redis` or `redis_pickle`): the deployment (standalone
//! over TCP, TLS or a unix socket, Cluster, Sentinel) chosen once, the CA file read once.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::keys::CacheConfig;
use crate::config::values::{Secret, ServerAddr};
use crate::error::{Result, Source};

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
        /// `rediss://...#insecure` (no certificate check): refused when the settings are read,
        /// so always `false` here; the connection refuses it too.
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
    /// The Redis backend's settings: the target chosen (Sentinel when `redis_sentinels` or
    /// `redis_sentinel_master` is set, Cluster when `redis_cluster_nodes` is, else `redis_url`,
    /// else `redis_host`/`redis_port`/`redis_db`), the CA file read.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error) naming the setting and where its value came from: an
    /// unparseable `redis_url`, an unreadable `redis_ca_file` or one without a PEM certificate, a
    /// CA file without `rediss://`, a `redis_db` other than 0 on a cluster, Sentinels without a
    /// master name (or the reverse), Sentinels with cluster nodes or a `redis_url`, a zero timeout.
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
                if *insecure {
                    // Refused here, so that both faces refuse it when the cache is built
                    // (the connection could only refuse it later, as an outage).
                    return Err(self.invalid(
                        "redis_url",
                        "redis_url ends with #insecure (no certificate check), which is not \
                         supported: the server's certificate is always checked; allowed: \
                         rediss://host[:port][/db] without #insecure, with redis_ca_file naming \
                         the CA that signed the server's certificate (else the system's CA \
                         certificates are trusted)",
                    ));
                }
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
pub(super) fn has_empty_port(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host_port.ends_with(':')
}
