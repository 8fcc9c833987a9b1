//! The Redis backend (`backend = redis` and `backend = redis_pickle`): standalone, TLS, Cluster
//! and Sentinel.
//!
//! Every call into the `redis` crate (redis-rs) lives in this module, so that a major version of
//! the client (2.0 is at rc) touches one file, except the parsing of `redis_url`, which
//! `config/settings/redis.rs` leaves to redis-rs so that the two never disagree on the URL grammar.
//!
//! - **Connections**: the target (standalone over TCP, TLS or a unix socket, a Cluster, or the
//!   master of a group of Sentinels), the credentials and the CA bundle are chosen, read and
//!   validated once, in `config/settings/redis.rs` (`RedisSettings`); `RedisBackend::new` only
//!   turns them into a client. With Sentinel, each new connection goes to the master the Sentinels
//!   name, checked with `ROLE`, and a connection error, a timeout or `READONLY` makes the next
//!   one ask the Sentinels again ([`sentinel`]). Connections are kept
//!   in a small pool of our own (see `Pool`): redis-rs's r2d2 manager has no connect timeout.
//!   Connect timeout = `connect_timeout`, read and write timeouts = `timeout`. A connection that
//!   failed in any way is dropped, never returned to the pool.
//! - **Keys**: [`Keyspace::storage_key`] (`namespace + key`); an empty namespace stores keys
//!   exactly as given (the Python DDF's layout).
//! - **Prefix deletes**: `SCAN MATCH <glob-escaped namespace+prefix>* COUNT 1000` and `UNLINK` of
//!   each batch; on a cluster, on every primary read from `CLUSTER NODES`. `KEYS` is never sent.
//! - **clear()**: the namespace's keys only; with an empty namespace it refuses unless
//!   `server_flush = true` (then `FLUSHDB`). `FLUSHALL` is never sent.
//! - **Errors**: mapped in one function, `RedisBackend::map_err`, which never includes the
//!   password or a URL.
//! - **Cluster**: what `from_config` builds for a Cluster is [`cluster`]'s breaker per primary
//!   (a standalone `RedisBackend` per node, keys placed by hash slot); this type's own Cluster
//!   target (redis-rs's `ClusterConnection`) remains for ddf's tests of the bare backend.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use redis::cluster::{ClusterClient, ClusterConnection};
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::io::tcp::TcpSettings;
use redis::{ConnectionAddr, ConnectionLike, IntoConnectionInfo, RedisConnectionInfo};

use self::conn::Bounded;
use super::{Backend, BackendStatus, Item};
use crate::config::{RedisEndpoint, RedisSettings, RedisTarget};
use crate::error::{Error, Result};
use crate::key::Keyspace;

pub(crate) mod cluster;
pub(crate) mod commands;
pub(crate) mod conn;
pub(crate) mod resp;
pub(crate) mod sentinel;

const NAME: &str = "redis";

/// Idle connections kept per backend; more may be open while many threads work.
const POOL_MAX_IDLE: usize = 32;

/// How the backend reaches Redis.
#[allow(
    clippy::large_enum_variant,
    reason = "one per backend; the clients' sizes change with redis-rs's features"
)]
enum Target {
    /// A standalone server; the TLS configuration when it is reached over TLS.
    Single(redis::Client, Option<conn::TlsConfig>),
    Cluster(ClusterClient),
    /// The master a group of Sentinels names; its connections are [`Conn::Single`].
    Sentinel(Box<sentinel::Sentinels>),
}

/// One pooled connection.
// A few pooled connections per cache: the hot single-server variant is kept inline (no pointer
// to follow on each request) at the cost of a larger enum.
#[allow(clippy::large_enum_variant)]
enum Conn {
    Single(Bounded),
    Cluster(Box<ClusterConnection>),
}

impl Conn {
    fn as_like(&mut self) -> &mut dyn ConnectionLike {
        match self {
            Conn::Single(c) => c,
            Conn::Cluster(c) => c.as_mut(),
        }
    }

    /// A hot command (`GET`, `SET`, `UNLINK`) through our RESP2 encoder and parser
    /// ([`resp`], [`Bounded::hot`]) when this is a plain or unix RESP2 connection; else
    /// `fallback`, through redis-rs.
    fn hot<T>(
        &mut self,
        encode: impl FnOnce(&mut Vec<u8>),
        read: impl Fn(resp::Reply<'_>) -> redis::RedisResult<T>,
        fallback: impl FnOnce(&mut dyn ConnectionLike) -> redis::RedisResult<T>,
    ) -> redis::RedisResult<T> {
        if let Conn::Single(b) = self
            && let Some(r) = b.hot(encode, read)
        {
            return r;
        }
        fallback(self.as_like())
    }
}

/// A small connection pool.
///
/// Hand-written rather than r2d2: r2d2's `ManageConnection` for redis has no connect timeout,
/// and we need little: take an idle connection or open one (with the connect timeout), give it
/// back only when the operation succeeded. Threads never wait for each other beyond the mutex
/// around the idle list; a burst of threads opens extra connections, and at most
/// [`POOL_MAX_IDLE`] are kept afterwards.
struct Pool {
    idle: Mutex<Vec<Conn>>,
}

impl Pool {
    fn take(&self) -> Option<Conn> {
        self.idle.lock().ok().and_then(|mut v| v.pop())
    }

    fn put(&self, c: Conn) {
        if let Ok(mut v) = self.idle.lock()
            && v.len() < POOL_MAX_IDLE
        {
            v.push(c);
        }
    }

    fn clear(&self) {
        if let Ok(mut v) = self.idle.lock() {
            v.clear();
        }
    }
}

/// The Redis backend, built from validated settings by [`from_config`](super::from_config),
/// which puts it behind the breaker and fallback.
pub struct RedisBackend {
    keyspace: Keyspace,
    target: Target,
    pool: Pool,
    timeout: Duration,
    connect_timeout: Duration,
    /// The database a standalone connection selects (`SELECT`, sent by [`Bounded::open`]).
    db: i64,
    server_flush: bool,
    /// Where the server is, for messages: the settings' identity, never credentials.
    place: String,
    /// The password, only to scrub it from error texts (defence in depth).
    password: Option<String>,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("place", &self.place)
            .field("namespace", &self.keyspace.namespace())
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// Builds a Redis backend from validated settings ([`crate::config::RedisSettings`]: the
    /// target is chosen and the CA file read there). Redis stores no flags: every value read
    /// comes back with flags 0, which means "decode with the cache's own codec". No connection
    /// is opened here; the first operation connects.
    ///
    /// # Errors
    /// [`Error::Config`] pointing at the target's setting when redis-rs refuses to build the
    /// client (settings validated by [`CacheConfig`] do not make it refuse).
    pub(crate) fn new(settings: &RedisSettings) -> Result<Self> {
        let refused = |e: redis::RedisError| {
            Error::config(
                settings.source.clone(),
                // The detail names what was refused (a TLS setting); never a credential.
                match e.detail() {
                    Some(d) => format!("cannot set up the Redis client: {d}"),
                    None => format!("cannot set up the Redis client: {:?}", e.kind()),
                },
            )
        };
        let target = match &settings.target {
            RedisTarget::Cluster(nodes) => cluster_client(settings, nodes).map(Target::Cluster),
            RedisTarget::Standalone(endpoint) => client(settings, endpoint)
                .and_then(|c| Ok(Target::Single(c, tls_config(settings, endpoint)?))),
            RedisTarget::Sentinel {
                sentinels,
                master,
                password,
            } => sentinel::Sentinels::new(settings, sentinels, master, password.as_ref())
                .map(|s| Target::Sentinel(Box::new(s))),
        }
        .map_err(refused)?;
        let tls = settings.ca.is_some()
            || matches!(
                settings.target,
                RedisTarget::Standalone(RedisEndpoint::Tls { .. })
            );
        let place = if tls {
            format!("{} (TLS)", settings.identity())
        } else {
            settings.identity().to_owned()
        };
        Ok(RedisBackend {
            keyspace: Keyspace::new(settings.namespace.clone()),
            target,
            pool: Pool {
                idle: Mutex::new(Vec::new()),
            },
            timeout: settings.timeout,
            connect_timeout: settings.connect_timeout,
            db: settings.db,
            server_flush: settings.server_flush,
            place,
            password: settings
                .password
                .as_ref()
                .map(|p| p.expose().to_owned())
                .filter(|p| !p.is_empty()),
        })
    }

    #[cfg(any(test, feature = "testing"))]
    /// A Redis backend for a configuration: [`CacheConfig`]'s Redis settings, validated, then
    /// the backend built from them (see the type's example). No connection is opened here.
    ///
    /// # Errors
    /// [`Error::Config`] naming the setting (and where its value came from) when the
    /// configuration cannot work: an unparseable `redis_url`, an unreadable `redis_ca_file`, a
    /// CA file without `rediss://`, a `redis_db` other than 0 on a cluster.
    pub fn from_config(config: &crate::CacheConfig) -> Result<Self> {
        Self::new(&config.redis_settings()?)
    }

    /// The namespace and key layout.
    #[cfg(feature = "async")]
    pub(crate) fn keyspace(&self) -> &Keyspace {
        &self.keyspace
    }

    /// Where the server is, for messages (no credentials).
    #[cfg(feature = "async")]
    pub(crate) fn place(&self) -> &str {
        &self.place
    }

    /// `server_flush` as configured.
    #[cfg(feature = "async")]
    pub(crate) fn server_flush(&self) -> bool {
        self.server_flush
    }

    /// The client the async face connects with (the same target, credentials and TLS), or
    /// `None` for Sentinel, whose master the async face finds with [`RedisBackend::sentinels`],
    /// and for a Cluster, which the async face serves with `aio/redis/cluster.rs`.
    #[cfg(feature = "async")]
    pub(crate) fn async_client(&self) -> Option<redis::Client> {
        match &self.target {
            Target::Single(c, _) => on_db(c, self.db).ok(),
            Target::Cluster(_) | Target::Sentinel(_) => None,
        }
    }

    /// The Sentinels, when the master is found through them.
    #[cfg(feature = "async")]
    pub(crate) fn sentinels(&self) -> Option<&sentinel::Sentinels> {
        match &self.target {
            Target::Sentinel(s) => Some(s),
            _ => None,
        }
    }

    /// The one mapping from redis-rs errors to [`Error::Backend`]. Never includes credentials:
    /// redis-rs error texts carry no URL, and the password is scrubbed anyway.
    pub(crate) fn map_err(&self, what: &str, e: &redis::RedisError) -> Error {
        let temporary = e.is_timeout()
            || e.is_connection_refusal()
            || e.is_io_error()
            || e.is_connection_dropped()
            || e.is_cluster_error()
            || matches!(
                e.kind(),
                redis::ErrorKind::ClusterConnectionNotFound
                    | redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading)
                    | redis::ErrorKind::Server(redis::ServerErrorKind::MasterDown)
                    // A demoted master (Sentinel failover): the next connection finds the new one.
                    | redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
            );
        use crate::error::why;
        let mut text = e.to_string();
        if e.kind() == redis::ErrorKind::Parse {
            // redis-rs's parse errors span lines ("Unexpected `84`" per byte); one line here.
            let detail = text.split_whitespace().collect::<Vec<_>>().join(" ");
            text = format!(
                "{}: a reply that is not RESP (is this a Redis server?): {detail}",
                why::PROTOCOL
            );
        }
        if e.is_timeout() {
            // A connect timeout is `TimedOut`; a read or write timeout on a connected socket
            // is `WouldBlock` (EAGAIN).
            let phase = if io_kind(e) == Some(std::io::ErrorKind::TimedOut) {
                why::CONNECT_TIMEOUT
            } else {
                why::REPLY_TIMEOUT
            };
            text = format!("{phase} ({text})");
        }
        if let Some(p) = &self.password {
            text = text.replace(p.as_str(), "<redacted>");
        }
        Error::Backend {
            backend: NAME,
            message: format!("{what} on {}: {text}", self.place),
            temporary,
            source: None,
        }
    }

    fn connect(&self) -> redis::RedisResult<Conn> {
        match &self.target {
            Target::Single(client, tls) => Ok(Conn::Single(Bounded::open(
                client,
                tls.as_ref(),
                self.db,
                self.connect_timeout,
                self.timeout,
            )?)),
            Target::Cluster(client) => {
                let c = client.get_connection()?;
                c.set_read_timeout(Some(self.timeout))?;
                c.set_write_timeout(Some(self.timeout))?;
                Ok(Conn::Cluster(Box::new(c)))
            }
            // The lookup and the master's set-up (`SELECT` included) fit in `connect_timeout`
            // (sentinel.rs); the connection is then bounded like any other.
            Target::Sentinel(s) => Ok(Conn::Single(s.connect()?)),
        }
    }

    /// With Sentinel, an error that may mean the master moved (a connection error, a timeout,
    /// `READONLY`, `MASTERDOWN`) makes the next connection ask the Sentinels, and drops the idle
    /// connections: they lead to the same server.
    fn after_error(&self, e: &redis::RedisError) {
        let Target::Sentinel(s) = &self.target else {
            return;
        };
        if sentinel::master_may_have_moved(e) {
            s.forget();
            self.pool.clear();
        }
    }

    /// Runs `f` on a pooled connection. A connection whose operation failed is dropped. When a
    /// connection taken from the pool turns out to be dead (the server restarted or closed an
    /// idle connection) the operation is retried once on a fresh connection; timeouts are
    /// never retried.
    fn run<T>(
        &self,
        what: &str,
        mut f: impl FnMut(&mut Conn) -> redis::RedisResult<T>,
    ) -> Result<T> {
        if let Some(mut c) = self.pool.take() {
            match f(&mut c) {
                Ok(v) => {
                    self.pool.put(c);
                    return Ok(v);
                }
                Err(e) if e.is_connection_dropped() && !e.is_timeout() => {
                    tracing::debug!(place = %self.place, "pooled redis connection was dead; reconnecting");
                    self.after_error(&e);
                    // Every idle connection is probably as dead as this one.
                    self.pool.clear();
                }
                Err(e) => {
                    self.after_error(&e);
                    tracing::debug!(place = %self.place, error = %e, "redis connection dropped after an error");
                    return Err(self.map_err(what, &e));
                }
            }
        }
        let mut c = self.connect().map_err(|e| {
            self.after_error(&e);
            // Connected, then no reply to the set-up (AUTH, SELECT): not "cannot connect".
            let what = if e.is_timeout() && io_kind(&e) != Some(std::io::ErrorKind::TimedOut) {
                "setting up the connection"
            } else {
                "cannot connect"
            };
            self.map_err(what, &e)
        })?;
        tracing::debug!(place = %self.place, "redis connection opened");
        match f(&mut c) {
            Ok(v) => {
                self.pool.put(c);
                Ok(v)
            }
            Err(e) => {
                self.after_error(&e);
                Err(self.map_err(what, &e))
            }
        }
    }

    /// `host:port` of every primary of the cluster, from `CLUSTER NODES`.
    fn primaries(c: &mut ClusterConnection) -> redis::RedisResult<Vec<(String, u16)>> {
        let v = c.route_command(
            &commands::cluster_nodes(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
        )?;
        let text: String = redis::from_redis_value(v)?;
        Ok(commands::parse_cluster_nodes(&text))
    }

    /// SCAN of `pattern` on one connection or node, into `out` until it holds `limit` keys.
    fn scan_keys(
        c: &mut Conn,
        pattern: &str,
        node: Option<&(String, u16)>,
        limit: usize,
        out: &mut Vec<Vec<u8>>,
    ) -> redis::RedisResult<()> {
        let mut cursor: u64 = 0;
        while out.len() < limit {
            let scan = commands::scan(cursor, pattern);
            let (next, keys): (u64, Vec<Vec<u8>>) = match (&mut *c, node) {
                (Conn::Cluster(cc), Some((host, port))) => {
                    redis::from_redis_value(cc.route_command(
                        &scan,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port: *port,
                        }),
                    )?)?
                }
                (c, _) => scan.query(c.as_like())?,
            };
            let room = limit - out.len();
            out.extend(keys.into_iter().take(room));
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(())
    }

    /// Each key's `PTTL` (ms; -1 no expiry, -2 absent) and `STRLEN`, in one round trip per
    /// node.
    fn ttl_and_size(c: &mut Conn, keys: &[Vec<u8>]) -> redis::RedisResult<Vec<(i64, u64)>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let (ttls, sizes): (Vec<i64>, Vec<u64>) = match c {
            Conn::Single(s) => {
                let mut p = redis::pipe();
                for k in keys {
                    p.cmd("PTTL").arg(k);
                }
                for k in keys {
                    p.cmd("STRLEN").arg(k);
                }
                let mut all: Vec<i64> = p.query(s)?;
                let sizes = all.split_off(keys.len());
                (all, sizes.into_iter().map(|n| n.max(0) as u64).collect())
            }
            Conn::Cluster(cc) => (
                commands::per_key_pipeline("PTTL", keys).query(cc.as_mut())?,
                commands::per_key_pipeline("STRLEN", keys).query(cc.as_mut())?,
            ),
        };
        Ok(ttls.into_iter().zip(sizes).collect())
    }

    /// An entry from its storage key, `PTTL` and `STRLEN`; `None` when it is gone.
    pub(crate) fn entry(
        &self,
        storage_key: &[u8],
        pttl: i64,
        size: u64,
    ) -> Option<super::EntryInfo> {
        let expiry = match pttl {
            -2 => return None,
            ms if ms < 0 => super::Expiry::Never,
            ms => super::Expiry::In(Duration::from_millis(ms as u64)),
        };
        let ns = self.keyspace.namespace().len();
        Some(super::EntryInfo {
            key: String::from_utf8_lossy(&storage_key[ns.min(storage_key.len())..]).into_owned(),
            expiry,
            size: Some(size),
            flags: None,
        })
    }

    /// SCAN + UNLINK of `pattern` on one connection or node; returns the number unlinked.
    fn scan_unlink(
        &self,
        c: &mut Conn,
        pattern: &str,
        node: Option<&(String, u16)>,
    ) -> redis::RedisResult<u64> {
        let mut cursor: u64 = 0;
        let mut removed = 0u64;
        loop {
            let scan = commands::scan(cursor, pattern);
            let (next, keys): (u64, Vec<Vec<u8>>) = match (&mut *c, node) {
                (Conn::Cluster(cc), Some((host, port))) => {
                    redis::from_redis_value(cc.route_command(
                        &scan,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port: *port,
                        }),
                    )?)?
                }
                (c, _) => scan.query(c.as_like())?,
            };
            if !keys.is_empty() {
                removed += unlink(c, &keys)?;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }
}

/// The CA bundle as redis-rs takes it (feature `tls`; without it a CA is a configuration
/// error before any backend is built).
#[cfg(feature = "tls")]
fn certs(pem: &[u8]) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem.to_vec()),
    }
}

/// A client of one server (TCP, TLS or unix socket) from validated settings.
fn client(settings: &RedisSettings, endpoint: &RedisEndpoint) -> redis::RedisResult<redis::Client> {
    let addr = match endpoint {
        RedisEndpoint::Tcp { host, port } => ConnectionAddr::Tcp(host.clone(), *port),
        RedisEndpoint::Tls {
            host,
            port,
            insecure,
        } => ConnectionAddr::TcpTls {
            host: host.clone(),
            port: *port,
            insecure: *insecure,
            tls_params: None,
        },
        RedisEndpoint::Unix { path } => ConnectionAddr::Unix(path.clone()),
    };
    // Database 0 and no `CLIENT SETINFO`: the whole set-up must fit in `connect_timeout`, and
    // redis-rs gives each set-up reply its own (see `Bounded::open`, which sends `SELECT`).
    let mut redis = RedisConnectionInfo::default()
        .set_db(0)
        .set_skip_set_lib_name();
    if let Some(u) = &settings.username {
        redis = redis.set_username(u);
    }
    if let Some(p) = &settings.password {
        redis = redis.set_password(p.expose());
    }
    if settings.resp3 {
        redis = redis.set_protocol(redis::ProtocolVersion::RESP3);
    }
    let info = addr
        .into_connection_info()?
        .set_redis_settings(redis)
        .set_tcp_settings(tcp_settings());
    #[cfg(feature = "tls")]
    if let Some(pem) = &settings.ca {
        return redis::Client::build_with_tls(info, certs(pem));
    }
    redis::Client::open(info)
}

/// `client` on database `db`, for the async face: the sync clients are built with database 0
/// for the sync set-up (see `client`); the async set-up fits in one bounded connect, so
/// redis-rs selects `redis_db` itself.
#[cfg(feature = "async")]
fn on_db(client: &redis::Client, db: i64) -> redis::RedisResult<redis::Client> {
    let info = client.get_connection_info().clone();
    let redis = info.redis_settings().clone().set_db(db);
    redis::Client::open(info.set_redis_settings(redis))
}

/// The TLS configuration of a TLS endpoint (its CA, else the system's); `None` for a plain one.
fn tls_config(
    settings: &RedisSettings,
    endpoint: &RedisEndpoint,
) -> redis::RedisResult<Option<conn::TlsConfig>> {
    match endpoint {
        #[cfg(feature = "tls")]
        RedisEndpoint::Tls { insecure, .. } => {
            conn::TlsConfig::new(settings.ca.as_deref(), *insecure).map(Some)
        }
        _ => {
            let _ = settings;
            Ok(None)
        }
    }
}

/// A Redis Cluster client from validated settings; a CA means TLS to every node.
fn cluster_client(
    settings: &RedisSettings,
    nodes: &[crate::config::ServerAddr],
) -> redis::RedisResult<ClusterClient> {
    let nodes = nodes
        .iter()
        .map(|a| ConnectionAddr::Tcp(a.host.clone(), a.port).into_connection_info())
        .collect::<redis::RedisResult<Vec<_>>>()?;
    let mut b = ClusterClient::builder(nodes)
        .connection_timeout(settings.connect_timeout)
        .response_timeout(settings.timeout)
        .tcp_settings(tcp_settings());
    if let Some(p) = &settings.password {
        b = b.password(p.expose());
    }
    #[cfg(feature = "tls")]
    if let Some(pem) = &settings.ca {
        b = b.tls(redis::TlsMode::Secure).certs(certs(pem));
    }
    b.build()
}

/// TCP_NODELAY: every request is one write followed by a read, and a small write must not wait
/// for the server's delayed ACK (redis-rs leaves Nagle on by default).
fn tcp_settings() -> TcpSettings {
    TcpSettings::default().set_nodelay(true)
}

impl RedisBackend {
    /// `FLUSHDB` (on a cluster: on every primary); only through [`super::scoped_clear`].
    fn flushdb(&self) -> Result<()> {
        self.run("FLUSHDB", |c| match c {
            Conn::Single(s) => commands::flushdb().query::<()>(s),
            Conn::Cluster(cc) => {
                for (host, port) in Self::primaries(cc)? {
                    cc.route_command(
                        &commands::flushdb(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port }),
                    )?;
                }
                Ok(())
            }
        })
    }
}

impl Backend for RedisBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn get(&self, key: &str) -> Result<Option<Item>> {
        let k = self.keyspace.storage_key(key);
        let v: Option<Vec<u8>> = self.run("GET", |c| {
            c.hot(
                |b| resp::get(b, k.as_bytes()),
                resp::bulk,
                |c| commands::get(&k).query(c),
            )
        })?;
        Ok(v.map(Item::unflagged))
    }

    fn get_expiring(&self, key: &str) -> Result<Option<(Item, super::Expiry)>> {
        let k = self.keyspace.storage_key(key);
        let p = commands::get_expiring(&k);
        let (v, pttl): (Option<Vec<u8>>, i64) = self.run("GET/PTTL", |c| p.query(c.as_like()))?;
        Ok(v.map(|v| (Item::unflagged(v), commands::expiry(pttl))))
    }

    fn set(&self, key: &str, item: &Item, ttl: Option<Duration>) -> Result<()> {
        let k = self.keyspace.storage_key(key);
        self.run("SET", |c| {
            c.hot(
                |b| resp::set(b, k.as_bytes(), &item.data, ttl),
                // redis-rs reads any reply that is not an error as `()`: the same here.
                |_| Ok(()),
                |c| commands::set(&k, &item.data, ttl).query::<()>(c),
            )
        })
    }

    fn add(&self, key: &str, item: &Item, ttl: Option<Duration>) -> Result<bool> {
        let k = self.keyspace.storage_key(key);
        let cmd = commands::add(&k, &item.data, ttl);
        let r: Option<String> = self.run("SET NX", |c| cmd.query(c.as_like()))?;
        Ok(r.is_some())
    }

    fn incr(&self, key: &str, delta: i64, _counter: &dyn super::Counter) -> Result<i64> {
        let k = self.keyspace.storage_key(key);
        let cmd = commands::incr(&k, delta);
        let (code, value): (i64, Option<String>) =
            self.run("INCRBY", |c| cmd.query(c.as_like()))?;
        commands::incr_reply(code, value, delta)
    }

    fn touch(&self, key: &str, ttl: Option<Duration>) -> Result<bool> {
        let k = self.keyspace.storage_key(key);
        let cmd = commands::touch(&k, ttl);
        let n: i64 = self.run("PEXPIRE", |c| cmd.query(c.as_like()))?;
        Ok(n == 1)
    }

    fn delete(&self, key: &str) -> Result<bool> {
        let k = self.keyspace.storage_key(key);
        let n: i64 = self.run("UNLINK", |c| {
            c.hot(
                |b| resp::unlink(b, k.as_bytes()),
                resp::int_reply,
                |c| commands::unlink(&[&k]).query(c),
            )
        })?;
        Ok(n > 0)
    }

    fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        super::check_prefix(
            self.keyspace.namespace(),
            prefix,
            self.server_flush,
            commands::WHOLE,
        )?;
        let pattern = commands::prefix_pattern(&self.keyspace, prefix);
        self.run("SCAN/UNLINK", |c| {
            let nodes = match c {
                Conn::Single(_) => return self.scan_unlink(c, &pattern, None),
                Conn::Cluster(cc) => Self::primaries(cc)?,
            };
            let mut n = 0;
            for node in &nodes {
                n += self.scan_unlink(c, &pattern, Some(node))?;
            }
            Ok(n)
        })
    }

    fn clear(&self) -> Result<()> {
        super::scoped_clear(
            self,
            self.keyspace.namespace(),
            self.server_flush,
            commands::WHOLE_FLUSH,
            || self.flushdb(),
        )
    }

    fn keys(&self, prefix: &str, limit: usize) -> Result<Vec<super::EntryInfo>> {
        // SCAN, never KEYS: each step is bounded on the server, and it stops at `limit`.
        let pattern = commands::prefix_pattern(&self.keyspace, prefix);
        let found = self.run("SCAN", |c| {
            let mut keys = Vec::new();
            match c {
                Conn::Single(_) => Self::scan_keys(c, &pattern, None, limit, &mut keys)?,
                Conn::Cluster(cc) => {
                    for node in &Self::primaries(cc)? {
                        Self::scan_keys(c, &pattern, Some(node), limit, &mut keys)?;
                    }
                }
            }
            let meta = Self::ttl_and_size(c, &keys)?;
            Ok(keys.into_iter().zip(meta).collect::<Vec<_>>())
        })?;
        let mut out: Vec<_> = found
            .into_iter()
            .filter_map(|(k, (pttl, size))| self.entry(&k, pttl, size))
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn meta(&self, key: &str) -> Result<Option<super::EntryInfo>> {
        let k = self.keyspace.storage_key(key).into_bytes();
        let meta = self.run("PTTL/STRLEN", |c| {
            Self::ttl_and_size(c, std::slice::from_ref(&k))
        })?;
        Ok(meta
            .first()
            .and_then(|(pttl, size)| self.entry(&k, *pttl, *size)))
    }

    fn ping(&self) -> Result<BackendStatus> {
        let pong: String = self.run("PING", |c| commands::ping().query(c.as_like()))?;
        Ok(BackendStatus {
            detail: format!("redis {}: {pong}", self.place),
        })
    }

    fn info(&self) -> Result<Vec<(String, String)>> {
        // INFO (and CLUSTER INFO on a cluster) from one node: cheap, no key walk.
        let (info, cluster): (String, Option<String>) = self.run("INFO", |c| match c {
            Conn::Single(s) => Ok((commands::info().query(s)?, None)),
            Conn::Cluster(cc) => {
                let random = || RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
                let info = redis::from_redis_value(cc.route_command(&commands::info(), random())?)?;
                let ci = redis::from_redis_value(
                    cc.route_command(&commands::cluster_info(), random())?,
                )?;
                Ok((info, Some(ci)))
            }
        })?;
        let master = match &self.target {
            Target::Sentinel(s) => s.current(),
            _ => None,
        };
        Ok(commands::info_rows(
            &self.place,
            master,
            &info,
            cluster.as_deref(),
        ))
    }

    fn close(&self) {
        self.pool.clear();
    }

    fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Item>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let ks: Vec<String> = keys.iter().map(|k| self.keyspace.storage_key(k)).collect();
        let vals: Vec<Option<Vec<u8>>> = self.run("MGET", |c| match c {
            Conn::Single(s) => commands::mget(&ks).query(s),
            // redis-rs would split a cross-slot MGET into one request per slot, sent one after
            // the other (100 keys: ~100 round trips). A cluster pipeline of GETs is one round
            // trip per node instead.
            Conn::Cluster(cc) => commands::per_key_pipeline("GET", &ks).query(cc),
        })?;
        if vals.len() != keys.len() {
            return Err(Error::Backend {
                backend: NAME,
                message: format!(
                    "MGET on {} returned {} values for {} keys",
                    self.place,
                    vals.len(),
                    keys.len()
                ),
                temporary: false,
                source: None,
            });
        }
        Ok(vals.into_iter().map(|v| v.map(Item::unflagged)).collect())
    }

    fn set_many(&self, items: &[(&str, Item)], ttl: Option<Duration>) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        // One pipeline: one round trip (per node on a cluster). Built once, outside the
        // closure, which may run twice (a dead pooled connection is retried once).
        let cmds = items
            .iter()
            .map(|(k, it)| commands::set(&self.keyspace.storage_key(k), &it.data, ttl));
        match &self.target {
            Target::Single(..) | Target::Sentinel(_) => {
                let mut p = redis::pipe();
                for cmd in cmds {
                    p.add_command(cmd).ignore();
                }
                self.run("SET (pipeline)", |c| p.query::<()>(c.as_like()))
            }
            Target::Cluster(_) => {
                let mut p = redis::cluster::cluster_pipe();
                for cmd in cmds {
                    p.add_command(cmd).ignore();
                }
                self.run("SET (pipeline)", |c| match c {
                    Conn::Cluster(cc) => p.query::<()>(cc),
                    Conn::Single(_) => Err(redis::RedisError::from((
                        redis::ErrorKind::Client,
                        "a cluster pipeline needs a cluster connection",
                    ))),
                })
            }
        }
    }

    fn delete_many(&self, keys: &[&str]) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        let ks: Vec<String> = keys.iter().map(|k| self.keyspace.storage_key(k)).collect();
        self.run("UNLINK", |c| unlink(c, &ks))
    }

    fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool> {
        let k = self.keyspace.storage_key(key);
        let cmd = commands::compare_and_delete(&k, expected);
        let n: u64 = self.run("EVAL (compare-and-delete)", |c| cmd.query(c.as_like()))?;
        Ok(n > 0)
    }

    /// One script on a standalone server (or Sentinel's master); on a cluster the value and
    /// its lease may live on two nodes: an unfenced `SET` (the clock margin guards it).
    fn set_if_lease(
        &self,
        key: &str,
        item: &Item,
        ttl: Option<Duration>,
        lease: &str,
        token: &[u8],
    ) -> Result<bool> {
        let k = self.keyspace.storage_key(key);
        let l = self.keyspace.storage_key(lease);
        let fenced = commands::set_if_lease(&k, &item.data, ttl, &l, token);
        let plain = commands::set(&k, &item.data, ttl);
        let n: u64 = self.run("EVAL (set-if-lease)", |c| match c {
            Conn::Single(s) => fenced.query(s),
            Conn::Cluster(cc) => plain.query::<()>(cc.as_mut()).map(|()| 1),
        })?;
        Ok(n > 0)
    }

    fn extend_lease(&self, lease: &str, token: &[u8], ttl: Duration) -> Result<bool> {
        let l = self.keyspace.storage_key(lease);
        let cmd = commands::extend_lease(&l, token, ttl);
        let n: u64 = self.run("EVAL (extend-lease)", |c| cmd.query(c.as_like()))?;
        Ok(n > 0)
    }
}

/// `UNLINK` of many keys; the number removed. One command on a standalone server; on a cluster
/// a pipeline of single-key UNLINKs (one round trip per node, not one per slot).
fn unlink<K: redis::ToRedisArgs>(c: &mut Conn, keys: &[K]) -> redis::RedisResult<u64> {
    match c {
        Conn::Single(s) => commands::unlink(keys).query(s),
        Conn::Cluster(cc) => {
            let counts: Vec<u64> = commands::per_key_pipeline("UNLINK", keys).query(cc.as_mut())?;
            Ok(counts.iter().sum())
        }
    }
}

/// The I/O error kind behind a redis-rs error, if it is one.
fn io_kind(e: &redis::RedisError) -> Option<std::io::ErrorKind> {
    std::error::Error::source(e)?
        .downcast_ref::<std::io::Error>()
        .map(std::io::Error::kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CacheConfig;

    #[test]
    fn errors_never_show_the_password() {
        let mut config = CacheConfig::default();
        config.redis_url = Some(crate::config::Secret::new("redis://:s3cret@127.0.0.1:1/0"));
        let b = RedisBackend::from_config(&config).unwrap();
        assert!(!format!("{b:?}").contains("s3cret"));
        let e = b.get("x").unwrap_err();
        let text = format!("{e} {e:?}");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(e.is_temporary(), "{text}");
        assert!(text.contains("redis://127.0.0.1:1/0"), "{text}");
        config.redis_url = Some(crate::config::Secret::new("redis://:s3cret@[bad"));
        let e = RedisBackend::from_config(&config).unwrap_err();
        assert!(!format!("{e} {e:?}").contains("s3cret"));
    }
}
