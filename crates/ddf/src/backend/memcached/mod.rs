//! The Memcached backend (`backend = memcached` and `memcached_pickle`).
//!
//! - `proto`: the meta protocol (plus a few text commands) as pure code over byte buffers.
//! - `client`: its blocking transport over `TcpStream` (why in-house: see there).
//! - `placement`: pymemcache `HashClient`'s rendezvous hashing, so Python and Rust clients
//!   find each other's entries on the same server list.
//! - Values: items are stored as the cache's codec made them, bytes and flags (pymemcache's
//!   `python_memcache` flags, chosen above the backend by the codec layer), and read back as
//!   stored. The backend never calls a codec.
//! - Keys: [`crate::key::memcached_key`]; a key memcached cannot carry is mapped to
//!   `<visible>~<hash>`, and its item starts with a small header holding the whole storage key
//!   (so reads verify it and prefix invalidation can decide on cut keys).
//! - Prefix invalidation lists keys on the servers (`lru_crawler metadump hash`) and deletes the
//!   matches; see `docs/memcached.md` for its cost and guarantees.
//! - Atomic operations (`add`, `incr`, `touch`, `meta`): `atomic`.
//! - Dead servers: see [`DeadPolicy`].

#[cfg(feature = "async")]
pub(crate) mod aio;
mod atomic;
mod buffer;
mod client;
pub(crate) mod placement;
mod proto;
mod replies;
mod turns;

use std::borrow::Cow;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::backend::{Backend, BackendStatus, Item};
use crate::config::{MemcachedSettings, ServerAddr, ValueFormat};
use crate::error::{Error, Result};
use crate::key::{
    Keyspace, MemcachedPrefix, PrefixMatch, memcached_key, memcached_key_is_carryable,
};

use client::{Conn, McError, McResult};

/// Memcached reads an expiry over 30 days as an absolute Unix time.
const RELATIVE_TTL_MAX: u64 = 30 * 24 * 3600;

/// The item limit assumed until a server's `stats settings` says otherwise (memcached's default).
const DEFAULT_ITEM_SIZE_MAX: usize = 1024 * 1024;

/// Bytes memcached adds to each item besides key and value: the item header (48), CAS (8),
/// client flags (4), the key's NUL and the value's CRLF, rounded up for safety.
const ITEM_OVERHEAD: usize = 80;

/// Idle connections kept per server.
const POOL_MAX_IDLE: usize = 8;

/// Keys per pipelined batch: requests stay well inside the socket buffers, so writing a whole
/// batch before reading can never deadlock against the server's replies.
const BATCH: usize = 256;

/// Listing passes per server in a prefix delete (see `delete_prefix`).
const METADUMP_PASSES: usize = 4;

/// How long after a prefix delete starts every item held by a queued LRU bump is listable again:
/// memcached's LRU maintainer drains the bump queues at least once a second
/// (`MAX_LRU_MAINTAINER_SLEEP`), plus a margin.
const BUMP_SETTLE: Duration = Duration::from_millis(1200);

/// The start of an item stored under a mapped key: magic, then the storage key's length (u32
/// little-endian) and the storage key.
const MAPPED_MAGIC: &[u8; 8] = b"\xffDDFKEY\x01";

/// What happens when a server fails, modelled on pymemcache `HashClient`'s
/// `retry_attempts`/`retry_timeout`/`dead_timeout` (defaults 2, 1 s, 60 s).
///
/// After a transport failure (refused, reset, timed out) the server is skipped for
/// `retry_timeout`; after more than `retry_attempts` failures in a row, for `dead_timeout`. A
/// success resets the count. While a server is skipped, operations on its keys fail at once with
/// a temporary [`Error::Backend`] instead of waiting for timeouts; keys are **not** moved to
/// another server (pymemcache moves them): a moved key would be written where a Python client or a
/// ddf with a fresh ring does not look, and invalidations made during the outage would miss the
/// stale copy left on the dead server when it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadPolicy {
    /// Failures in a row tolerated with short pauses before the server counts as dead.
    pub retry_attempts: u32,
    /// The pause after each of those failures.
    pub retry_timeout: Duration,
    /// How long a dead server is skipped.
    pub dead_timeout: Duration,
}

impl Default for DeadPolicy {
    fn default() -> Self {
        DeadPolicy {
            retry_attempts: 2,
            retry_timeout: Duration::from_secs(1),
            dead_timeout: Duration::from_secs(60),
        }
    }
}

impl DeadPolicy {
    #[cfg(any(test, feature = "testing"))]
    /// A policy with the given values.
    pub fn new(retry_attempts: u32, retry_timeout: Duration, dead_timeout: Duration) -> Self {
        DeadPolicy {
            retry_attempts,
            retry_timeout,
            dead_timeout,
        }
    }
}

#[derive(Debug, Default)]
struct Health {
    failures: u32,
    down_until: Option<Instant>,
    last_error: String,
}

/// One configured server: its connection pool, health and item limit.
struct Server {
    addr: ServerAddr,
    /// `host:port`, the node name pymemcache hashes.
    name: String,
    pool: Mutex<Vec<Conn>>,
    health: Mutex<Health>,
    /// `item_size_max` from `stats settings`; 0 until known.
    item_size_max: AtomicUsize,
    /// Whether the server refused `lru_crawler metadump hash` (then `all` is used).
    no_hash_dump: AtomicBool,
    /// This process's callers of the server's LRU crawler, served in arrival order.
    crawler: turns::Turns,
}

/// The Memcached backend: every configured server, pymemcache-compatible placement and values.
///
/// ```no_run
/// use ddf::{CacheConfig, CacheManager};
/// let config = CacheConfig::from_ini_str(
///     "[cache]\nbackend = memcached\nmemcached_servers = 10.0.0.1:11211, 10.0.0.2:11211\n",
/// )?;
/// let cache = CacheManager::new(config)?;
/// cache.set("svc:web", &"up", None)?;
/// assert_eq!(cache.invalidate_pattern("svc:")?, 1);
/// # Ok::<(), ddf::Error>(())
/// ```
pub struct MemcachedBackend {
    name: &'static str,
    servers: Vec<Server>,
    names: Vec<String>,
    keyspace: Keyspace,
    server_flush: bool,
    connect_timeout: Duration,
    timeout: Duration,
    policy: DeadPolicy,
}

impl fmt::Debug for MemcachedBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemcachedBackend")
            .field("servers", &self.names)
            .field("namespace", &self.keyspace.namespace())
            .finish()
    }
}

/// The one mapping from client errors to [`Error`].
fn map_err(server: &str, what: &str, timeout: Duration, e: McError) -> Error {
    use std::io::ErrorKind as K;
    match e {
        McError::Io(io) => {
            let message = match io.kind() {
                // `connect_timeout` ends as `TimedOut`, a read or write timeout as `WouldBlock`.
                K::TimedOut => format!(
                    "{what} on memcached server {server}: {}",
                    crate::error::why::CONNECT_TIMEOUT
                ),
                // The async client's reply timeouts carry their reason when there is one (the
                // connection's queue was full).
                K::WouldBlock => match io.get_ref() {
                    Some(reason) => format!(
                        "{what} on memcached server {server}: {}: {reason}",
                        crate::error::why::REPLY_TIMEOUT
                    ),
                    None => format!(
                        "{what} on memcached server {server}: {} (none within {:.1} s)",
                        crate::error::why::REPLY_TIMEOUT,
                        timeout.as_secs_f64()
                    ),
                },
                _ => format!("{what} on memcached server {server}: {io}"),
            };
            let temporary = !matches!(io.kind(), K::InvalidInput | K::InvalidData);
            Error::Backend {
                backend: "memcached",
                message,
                temporary,
                source: None,
            }
        }
        McError::Protocol(m) => Error::Backend {
            backend: "memcached",
            message: format!(
                "{what} on memcached server {server}: {}: {m}",
                crate::error::why::PROTOCOL
            ),
            temporary: false,
            source: None,
        },
        McError::Server(m) => Error::Backend {
            backend: "memcached",
            message: format!("{what} on memcached server {server}: {m}"),
            temporary: false,
            source: None,
        },
    }
}

/// Memcached's exptime for a TTL: whole seconds rounded up, absolute past 30 days, 0 for none.
fn exptime(ttl: Option<Duration>) -> u64 {
    let Some(ttl) = ttl else { return 0 };
    let secs = (ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0)).max(1);
    if secs > RELATIVE_TTL_MAX {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        now + secs
    } else {
        secs
    }
}

impl Server {
    fn new(addr: ServerAddr) -> Self {
        // pymemcache names a (host, port) node "host:port", IPv6 hosts without brackets.
        let name = placement::node_name(&addr);
        Server {
            addr,
            name,
            pool: Mutex::new(Vec::new()),
            health: Mutex::new(Health::default()),
            item_size_max: AtomicUsize::new(0),
            no_hash_dump: AtomicBool::new(false),
            crawler: turns::Turns::default(),
        }
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, Vec<Conn>> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fail(&self, policy: &DeadPolicy, e: &McError) {
        let mut h = self.health();
        h.failures += 1;
        let pause = if h.failures > policy.retry_attempts {
            policy.dead_timeout
        } else {
            policy.retry_timeout
        };
        h.down_until = Some(Instant::now() + pause);
        h.last_error = match e {
            McError::Io(io) => io.to_string(),
            McError::Server(m) | McError::Protocol(m) => m.clone(),
        };
        tracing::warn!(
            server = %self.name,
            failures = h.failures,
            pause_s = pause.as_secs_f64(),
            error = %h.last_error,
            "memcached server failed; skipping it"
        );
    }

    fn succeed(&self) {
        let mut h = self.health();
        if h.failures > 0 {
            tracing::info!(server = %self.name, "memcached server is answering again");
            *h = Health::default();
        }
    }
}

impl MemcachedBackend {
    /// A backend from validated settings ([`crate::config::MemcachedSettings`]: a non-empty
    /// server list, timeouts, namespace, `server_flush`), named `memcached` or
    /// `memcached_pickle` (the values' codec is chosen above the backend, by the cache). No
    /// connection is made until the first operation.
    pub(crate) fn new(settings: &MemcachedSettings) -> Self {
        let name = match settings.format {
            ValueFormat::Pickle => "memcached_pickle",
            ValueFormat::Json => "memcached",
        };
        let servers: Vec<Server> = settings.servers.iter().cloned().map(Server::new).collect();
        let names = servers.iter().map(|s| s.name.clone()).collect();
        MemcachedBackend {
            name,
            servers,
            names,
            keyspace: Keyspace::new(settings.namespace.clone()),
            server_flush: settings.server_flush,
            connect_timeout: settings.connect_timeout,
            timeout: settings.timeout,
            policy: DeadPolicy::default(),
        }
    }

    /// One scope per configured server for the breaker per server
    /// ([`crate::backend::per_server`]): its label (`host:port`), its journal identity
    /// (`memcached://host:port`, as the identity of a one-server configuration) and a factory of
    /// a backend on that server alone. Which server a key belongs to is
    /// [`placement::Placement`]'s answer, over every configured server.
    pub(crate) fn per_server(
        settings: &MemcachedSettings,
    ) -> Vec<crate::backend::resilience::scopes::ScopeSpec> {
        settings
            .servers
            .iter()
            .map(|addr| {
                let one = settings.only(addr);
                crate::backend::resilience::scopes::ScopeSpec {
                    label: placement::node_name(addr),
                    identity: one.identity().to_owned(),
                    factory: Box::new(move || {
                        Ok(std::sync::Arc::new(MemcachedBackend::new(&one))
                            as std::sync::Arc<dyn Backend>)
                    }),
                }
            })
            .collect()
    }

    #[cfg(any(test, feature = "testing"))]
    /// A backend for a configuration's `memcached_servers`, namespace, timeouts and
    /// `server_flush`: [`CacheConfig`]'s Memcached settings, validated, then the backend built
    /// from them. No connection is made until the first operation.
    ///
    /// # Errors
    /// [`Error::Config`] naming where `memcached_servers` came from when it is empty, or a zero
    /// timeout.
    pub fn from_config(config: &crate::CacheConfig) -> Result<Self> {
        Ok(Self::new(&config.memcached_settings()?))
    }

    #[cfg(any(test, feature = "testing"))]
    /// Replaces the dead-server policy (default: pymemcache's).
    #[must_use]
    pub fn with_dead_policy(mut self, policy: DeadPolicy) -> Self {
        self.policy = policy;
        self
    }

    #[cfg(any(test, feature = "testing"))]
    /// The configured servers, as `host:port` (the node names pymemcache hashes).
    pub fn servers(&self) -> &[String] {
        &self.names
    }

    #[cfg(any(test, feature = "testing"))]
    /// The server (`host:port`) that holds a user key: where pymemcache's `HashClient` puts the
    /// same wire key.
    pub fn server_for(&self, key: &str) -> &str {
        let wk = memcached_key(&self.keyspace.storage_key(key)).into_owned();
        &self.names[self.pick(&wk)]
    }

    fn pick(&self, wire_key: &str) -> usize {
        placement::pick(&self.names, wire_key).unwrap_or(0)
    }

    /// Runs `f` on a connection to `server`: fails fast while the server is skipped, takes a
    /// pooled connection or makes one (learning the item limit on the first), and returns the
    /// connection to the pool unless the stream may be out of step.
    fn run<T>(
        &self,
        server: &Server,
        what: &str,
        f: impl FnMut(&mut Conn) -> McResult<T>,
    ) -> Result<T> {
        self.run_checked(server, what, true, f)
    }

    /// The error of `what` on `server` while it is in its skip window; `None` outside it.
    fn skip_error(&self, server: &Server, what: &str) -> Option<Error> {
        let h = server.health();
        let until = h.down_until?;
        let now = Instant::now();
        (now < until).then(|| Error::Backend {
            backend: "memcached",
            message: format!(
                "{what}: memcached server {} is skipped for {:.1} s more after {} failure(s) in \
                 a row (last: {})",
                server.name,
                (until - now).as_secs_f64(),
                h.failures,
                h.last_error
            ),
            temporary: true,
            source: None,
        })
    }

    /// [`Self::run`]; `honor_skip = false` tries a skipped server anyway (`ping`, which is what
    /// the breaker's probe calls: a probe must see a server come back, not its skip window).
    fn run_checked<T>(
        &self,
        server: &Server,
        what: &str,
        honor_skip: bool,
        mut f: impl FnMut(&mut Conn) -> McResult<T>,
    ) -> Result<T> {
        if honor_skip && let Some(e) = self.skip_error(server, what) {
            return Err(e);
        }
        let pooled = server.pool().pop();
        let was_pooled = pooled.is_some();
        let mut conn = match pooled {
            Some(c) => c,
            None => self.connect(server, what)?,
        };
        let mut result = f(&mut conn);
        // A pooled connection the server closed while it sat idle (a restart, an idle timeout)
        // fails on first use with a reset, a broken pipe or an end of file, before the server
        // saw the command. Its siblings in the pool are likely dead too: drop them and retry
        // once on a fresh connection, so a restart does not count as a failure of the server.
        // Timeouts are never retried (the command may have run; the server may be stuck).
        if was_pooled && matches!(&result, Err(McError::Io(e)) if is_stale(e)) {
            server.pool().clear();
            conn = self.connect(server, what)?;
            result = f(&mut conn);
        }
        match result {
            Ok(v) => {
                server.succeed();
                self.put_back(server, conn);
                Ok(v)
            }
            Err(e @ McError::Server(_)) => {
                server.succeed();
                self.put_back(server, conn);
                Err(map_err(&server.name, what, self.timeout, e))
            }
            Err(e) => {
                server.fail(&self.policy, &e);
                Err(map_err(&server.name, what, self.timeout, e))
            }
        }
    }

    /// A new connection to `server`; learns the server's item limit on each (a server
    /// restarted with another `-I` is met on a new connection).
    fn connect(&self, server: &Server, what: &str) -> Result<Conn> {
        let made = Conn::connect(
            &server.addr.host,
            server.addr.port,
            self.connect_timeout,
            self.timeout,
        )
        .and_then(|mut c| {
            let max = c.item_size_max()?.unwrap_or(DEFAULT_ITEM_SIZE_MAX);
            server.item_size_max.store(max, Ordering::Relaxed);
            c.set_value_limit(server.item_size_max.load(Ordering::Relaxed));
            tracing::debug!(server = %server.name, "memcached connection opened");
            Ok(c)
        });
        made.map_err(|e| {
            server.fail(&self.policy, &e);
            map_err(&server.name, what, self.timeout, e)
        })
    }

    fn put_back(&self, server: &Server, conn: Conn) {
        let mut pool = server.pool();
        if pool.len() < POOL_MAX_IDLE {
            pool.push(conn);
        }
    }

    /// The largest value (after the mapped-key header) a server stores under `wire_key`.
    fn value_limit(&self, server: &Server, wire_key: &str) -> Result<usize> {
        if server.item_size_max.load(Ordering::Relaxed) == 0 {
            self.run(server, "connect", |_| Ok(()))?;
        }
        let max = match server.item_size_max.load(Ordering::Relaxed) {
            0 => DEFAULT_ITEM_SIZE_MAX,
            n => n,
        };
        Ok(max.saturating_sub(ITEM_OVERHEAD + wire_key.len()))
    }

    /// The bytes to store for `item` under `storage_key`: the item's own bytes (borrowed, no
    /// copy), or for a mapped key the header naming the storage key, then the bytes.
    fn wire_data<'a>(storage_key: &str, mapped: bool, item: &'a Item) -> Cow<'a, [u8]> {
        if !mapped {
            return Cow::Borrowed(&item.data);
        }
        let mut data = Vec::with_capacity(item.data.len() + storage_key.len() + 12);
        data.extend_from_slice(MAPPED_MAGIC);
        data.extend_from_slice(&(storage_key.len() as u32).to_le_bytes());
        data.extend_from_slice(storage_key.as_bytes());
        data.extend_from_slice(&item.data);
        Cow::Owned(data)
    }

    fn check_size(&self, server: &Server, key: &str, wire_key: &str, len: usize) -> Result<()> {
        let limit = self.value_limit(server, wire_key)?;
        if len > limit {
            return Err(Error::InvalidArgument(format!(
                "the value for key {:?} is {len} bytes encoded; memcached server {} stores at \
                 most {limit} bytes under this key (item_size_max {} minus the key and item \
                 overhead). Nothing was sent; the previous value is unchanged. Store less, or \
                 raise the limit with memcached -I",
                crate::error::shorten(key),
                server.name,
                server.item_size_max.load(Ordering::Relaxed)
            )));
        }
        Ok(())
    }

    /// The item of a stored value, bytes and flags as stored; `None` when a mapped key's header
    /// names another key (a collision, or a foreign item).
    fn read_item(&self, storage_key: &str, mapped: bool, v: client::Value) -> Option<Item> {
        let data = if mapped {
            let body = split_mapped(&v.data)?;
            if body.0 != storage_key.as_bytes() {
                tracing::debug!(key = %crate::error::shorten(storage_key), "memcached: mapped key holds another key's value; a miss");
                return None;
            }
            body.1.to_vec()
        } else {
            v.data
        };
        Some(Item::new(data, v.flags))
    }

    /// Lists this server's keys that belong to storage keys starting with one of `prefixes`
    /// (whole storage key checked for undecidable mapped keys), in one walk of the server's
    /// items whatever the number of prefixes, at most `cap` of them (the server's whole dump
    /// is still read, one line at a time: memory follows `cap`, not the keyspace), each with
    /// its `exp=` field; and whether the server holds more items than the listing showed
    /// (`curr_items` above the keys listed: the crawler skipped some).
    fn list_matching(
        &self,
        server: &Server,
        prefixes: &Prefixes,
        cap: usize,
    ) -> Result<(Vec<Listed>, bool)> {
        let deadline = Instant::now() + self.timeout * 15;
        let mut sure = Vec::new();
        let mut maybe = Vec::new();
        let mut unlisted = false;
        let busy = || Error::Backend {
            backend: "memcached",
            message: format!(
                "lru_crawler metadump on memcached server {}: the crawler stayed busy with other \
                 requests; try again",
                server.name
            ),
            temporary: true,
            source: None,
        };
        // This process's callers ask the crawler one at a time, in arrival order (see turns.rs).
        let _turn = server.crawler.wait(deadline).ok_or_else(busy)?;
        loop {
            let hash = !server.no_hash_dump.load(Ordering::Relaxed);
            let what = if hash {
                "prefix invalidation (lru_crawler metadump hash)"
            } else {
                "prefix invalidation (lru_crawler metadump all)"
            };
            let done = self.run(server, what, |c| {
                sure.clear();
                maybe.clear();
                let mut listed = 0u64;
                let r = c.metadump(hash, |k, exp| {
                    listed += 1;
                    if sure.len() + maybe.len() >= cap {
                        return;
                    }
                    // A key we could not send back (binary-protocol keys) is never ours.
                    let Ok(k) = std::str::from_utf8(k) else {
                        return;
                    };
                    if !memcached_key_is_carryable(k) {
                        return;
                    }
                    match prefixes.matches(k.as_bytes()) {
                        PrefixMatch::Yes => sure.push((k.to_owned(), exp)),
                        PrefixMatch::Maybe => maybe.push((k.to_owned(), exp)),
                        PrefixMatch::No => {}
                    }
                });
                match r {
                    // A server without the hash walk answers with an error line.
                    Err(McError::Server(m)) if hash => Ok(Err(m)),
                    Ok(true) if !hash => {
                        // The LRU walk skips busy items: did it list fewer than the server holds?
                        unlisted = c.curr_items()?.is_some_and(|n| n > listed);
                        Ok(Ok(true))
                    }
                    other => other.map(Ok),
                }
            })?;
            let done = match done {
                Ok(done) => done,
                Err(m) => {
                    tracing::info!(
                        server = %server.name,
                        reply = %m,
                        "memcached: no `lru_crawler metadump hash`; listing keys by LRU walk"
                    );
                    server.no_hash_dump.store(true, Ordering::Relaxed);
                    continue;
                }
            };
            if done {
                break;
            }
            if Instant::now() > deadline {
                return Err(busy());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for (k, exp) in maybe {
            let v = self.run(server, "get", |c| c.get(&k))?;
            let Some(v) = v else { continue };
            let full = match split_mapped(&v.data) {
                Some((key, _)) => prefixes.starts(key),
                None => prefixes.starts(k.as_bytes()),
            };
            if full {
                sure.push((k, exp));
            }
        }
        Ok((sure, unlisted))
    }
}

/// A key a metadump listed (on the wire), with its `exp=` field.
type Listed = (String, Option<i64>);

/// The storage-key prefixes one listing looks for (a prefix invalidation, or all the recorded
/// ones a replay applies at once), each also as the server may hold it (mapped keys).
struct Prefixes(Vec<(MemcachedPrefix, String)>);

impl Prefixes {
    fn new(storage_prefixes: impl IntoIterator<Item = String>) -> Self {
        Prefixes(
            storage_prefixes
                .into_iter()
                .map(|raw| (MemcachedPrefix::new(&raw), raw))
                .collect(),
        )
    }

    /// Whether the wire key belongs to one of the prefixes: `Yes` when one says so, else
    /// `Maybe` when one cannot tell from the wire key, else `No`.
    fn matches(&self, wire: &[u8]) -> PrefixMatch {
        let mut answer = PrefixMatch::No;
        for (p, _) in &self.0 {
            match p.matches(wire) {
                PrefixMatch::Yes => return PrefixMatch::Yes,
                PrefixMatch::Maybe => answer = PrefixMatch::Maybe,
                PrefixMatch::No => {}
            }
        }
        answer
    }

    /// Whether a whole storage key starts with one of the prefixes.
    fn starts(&self, storage_key: &[u8]) -> bool {
        self.0
            .iter()
            .any(|(_, raw)| storage_key.starts_with(raw.as_bytes()))
    }
}

/// The expiry a metadump's `exp=` field gives: `-1` never; else an absolute Unix time, shown as
/// what is left of it (whole seconds, as memcached keeps it).
/// The expiry an `mg ... t` reply says: seconds left, `-1` for none (whole seconds: the server's
/// clock ticks once a second, so the item may go up to a second sooner).
pub(crate) fn seconds_left(ttl: Option<i64>) -> super::Expiry {
    match ttl {
        Some(-1) => super::Expiry::Never,
        Some(t) => super::Expiry::In(Duration::from_secs(u64::try_from(t).unwrap_or(0))),
        None => super::Expiry::Unknown,
    }
}

fn dump_expiry(exp: Option<i64>) -> super::Expiry {
    match exp {
        Some(-1) => super::Expiry::Never,
        Some(at) if at >= 0 => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let at = u64::try_from(at).unwrap_or(0);
            super::Expiry::In(Duration::from_secs(at.saturating_sub(now)))
        }
        _ => super::Expiry::Unknown,
    }
}

/// Whether an I/O error on a pooled connection means the server closed it while it was idle.
fn is_stale(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::ConnectionReset
            | K::ConnectionAborted
            | K::BrokenPipe
            | K::UnexpectedEof
            | K::NotConnected
    )
}

/// Splits a mapped item into (storage key, value).
/// The user's key of a listed wire key: a mapped key (`<visible>~<32 hex>`) is decoded, and
/// one whose visible part was cut ends with `…`; the namespace is left out.
fn shown_key(wire: &str, namespace: &str) -> String {
    let mapped = wire
        .rsplit_once('~')
        .filter(|(_, h)| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    let storage = match mapped {
        None => wire.to_owned(),
        Some((visible, _)) => {
            let mut buf = Vec::new();
            proto::url_decode(visible.as_bytes(), &mut buf);
            let key = String::from_utf8_lossy(&buf).into_owned();
            if memcached_key(&key) == wire {
                key
            } else {
                format!("{key}…")
            }
        }
    };
    storage
        .strip_prefix(namespace)
        .unwrap_or(&storage)
        .to_owned()
}

fn split_mapped(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = data.strip_prefix(MAPPED_MAGIC.as_slice())?;
    let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let rest = &rest[4..];
    Some((rest.get(..len)?, rest.get(len..)?))
}

impl Backend for MemcachedBackend {
    fn name(&self) -> &'static str {
        self.name
    }

    fn get(&self, key: &str) -> Result<Option<Item>> {
        let sk = self.keyspace.storage_key(key);
        let wk = memcached_key(&sk);
        let server = &self.servers[self.pick(&wk)];
        let v = self.run(server, "get", |c| c.get(&wk))?;
        let mapped = !memcached_key_is_carryable(&sk);
        Ok(v.and_then(|v| self.read_item(&sk, mapped, v)))
    }

    fn get_expiring(&self, key: &str) -> Result<Option<(Item, super::Expiry)>> {
        let sk = self.keyspace.storage_key(key);
        let wk = memcached_key(&sk);
        let server = &self.servers[self.pick(&wk)];
        let v = self.run(server, "get", |c| c.get_expiring(&wk))?;
        let mapped = !memcached_key_is_carryable(&sk);
        Ok(v.and_then(|(v, ttl)| Some((self.read_item(&sk, mapped, v)?, seconds_left(ttl)))))
    }

    fn set(&self, key: &str, item: &Item, ttl: Option<Duration>) -> Result<()> {
        let sk = self.keyspace.storage_key(key);
        let wk = memcached_key(&sk);
        let mapped = !memcached_key_is_carryable(&sk);
        let server = &self.servers[self.pick(&wk)];
        let data = Self::wire_data(&sk, mapped, item);
        self.check_size(server, key, &wk, data.len())?;
        let t = exptime(ttl);
        self.run(server, "set", |c| c.set(&wk, &data, item.flags, t))
    }

    fn add(&self, key: &str, item: &Item, ttl: Option<Duration>) -> Result<bool> {
        self.add_item(key, item, ttl)
    }

    fn incr(&self, key: &str, delta: i64, _counter: &dyn super::Counter) -> Result<i64> {
        self.incr_counter(key, delta)
    }

    fn touch(&self, key: &str, ttl: Option<Duration>) -> Result<bool> {
        self.touch_item(key, ttl)
    }

    fn meta(&self, key: &str) -> Result<Option<super::EntryInfo>> {
        self.entry_meta(key)
    }

    fn delete(&self, key: &str) -> Result<bool> {
        let sk = self.keyspace.storage_key(key);
        let wk = memcached_key(&sk);
        let server = &self.servers[self.pick(&wk)];
        let n = self.run(server, "delete", |c| c.delete_many(&[wk.as_bytes()]))?;
        Ok(n > 0)
    }

    fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        self.delete_prefixes(&[prefix])
    }

    /// Every prefix at once: each server's items are listed once, every key matched against
    /// all the prefixes (a replay of 100 recorded prefix invalidations walks each server once,
    /// not 100 times).
    fn delete_prefixes(&self, prefixes: &[&str]) -> Result<u64> {
        for prefix in prefixes {
            super::check_prefix(
                self.keyspace.namespace(),
                prefix,
                self.server_flush,
                "every item on the memcached servers",
            )?;
        }
        if prefixes.is_empty() {
            return Ok(0);
        }
        let wanted = Prefixes::new(prefixes.iter().map(|p| self.keyspace.storage_key(p)));
        let settled = Instant::now() + BUMP_SETTLE;
        let mut total = 0;
        for server in &self.servers {
            // `metadump hash` walks the hash table with each bucket locked and sees every item
            // present when it starts: one pass is exact.
            //
            // Servers without it get the LRU walk (`metadump all`), which can miss items: one the
            // server moves between LRU queues during the walk, and, silently, every item another
            // thread holds a reference to (crawler.c: `refcount_incr(search) != 2`); a COLD item
            // read a second time is queued for an asynchronous LRU bump *holding a reference*
            // until the LRU maintainer drains the queue, up to 1 s later. So in that mode list
            // again after deleting, until a pass finds nothing (at most METADUMP_PASSES), and
            // when a pass finds nothing but the server holds more items than it listed, wait
            // until BUMP_SETTLE after the call began (once per call, not per server) and list
            // again.
            for _ in 0..METADUMP_PASSES {
                let began = Instant::now();
                let (keys, unlisted) = self.list_matching(server, &wanted, usize::MAX)?;
                let lru_walk = server.no_hash_dump.load(Ordering::Relaxed);
                if keys.is_empty() {
                    if !lru_walk || !unlisted || began >= settled {
                        break;
                    }
                    std::thread::sleep(settled.saturating_duration_since(Instant::now()));
                    continue;
                }
                let again = lru_walk;
                for chunk in keys.chunks(BATCH * 4) {
                    let refs: Vec<&[u8]> = chunk.iter().map(|(k, _)| k.as_bytes()).collect();
                    total += self.run(server, "delete", |c| c.delete_many(&refs))?;
                }
                if !again {
                    break;
                }
            }
        }
        Ok(total)
    }

    fn keys(&self, prefix: &str, limit: usize) -> Result<Vec<super::EntryInfo>> {
        // The same server-side listing as prefix invalidation (`lru_crawler metadump`): the
        // server walks its items, ddf keeps at most `limit` matching keys per server, with the
        // expiry the dump gives (`exp=`, an absolute Unix time).
        let wanted = Prefixes::new([self.keyspace.storage_key(prefix)]);
        let mut out = Vec::new();
        for server in &self.servers {
            if out.len() >= limit {
                break;
            }
            let (keys, _) = self.list_matching(server, &wanted, limit - out.len())?;
            out.extend(keys.iter().map(|(wire, exp)| {
                super::EntryInfo::new(
                    shown_key(wire, self.keyspace.namespace()),
                    dump_expiry(*exp),
                )
            }));
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn clear(&self) -> Result<()> {
        super::scoped_clear(
            self,
            self.keyspace.namespace(),
            self.server_flush,
            "every item on the memcached servers (flush_all)",
            || {
                self.servers
                    .iter()
                    .try_for_each(|server| self.run(server, "flush_all", |c| c.flush_all()))
            },
        )
    }

    fn ping(&self) -> Result<BackendStatus> {
        let mut parts = Vec::with_capacity(self.servers.len());
        for server in &self.servers {
            let v = self.run_checked(server, "version", false, |c| c.version())?;
            parts.push(format!("{} (memcached {v})", server.name));
        }
        Ok(BackendStatus {
            detail: format!("{} server(s) answering: {}", parts.len(), parts.join(", ")),
        })
    }

    fn info(&self) -> Result<Vec<(String, String)>> {
        // `stats` of every server: cheap, no key walk. A server that does not answer is
        // reported as such rather than failing the whole report.
        let mut out = vec![("servers".to_owned(), self.names.join(", "))];
        let (mut items, mut bytes) = (0u64, 0u64);
        for server in &self.servers {
            match self.run(server, "stats", |c| c.stats("")) {
                Ok(stats) => {
                    let get = |name: &str| {
                        stats
                            .iter()
                            .find(|(k, _)| k == name)
                            .map_or("?", |(_, v)| v.as_str())
                    };
                    items += get("curr_items").parse::<u64>().unwrap_or(0);
                    bytes += get("bytes").parse::<u64>().unwrap_or(0);
                    out.push((
                        server.name.clone(),
                        format!(
                            "memcached {}, {} items, {} bytes of {} max, {} evictions, item limit {}",
                            get("version"),
                            get("curr_items"),
                            get("bytes"),
                            get("limit_maxbytes"),
                            get("evictions"),
                            server.item_size_max.load(Ordering::Relaxed)
                        ),
                    ));
                }
                Err(e) => out.push((server.name.clone(), format!("not answering: {e}"))),
            }
        }
        out.push((
            "items (all applications, all servers)".to_owned(),
            items.to_string(),
        ));
        out.push(("bytes (all servers)".to_owned(), bytes.to_string()));
        Ok(out)
    }

    fn close(&self) {
        for s in &self.servers {
            s.pool().clear();
        }
    }

    fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Item>>> {
        let mut out: Vec<Option<Item>> = keys.iter().map(|_| None).collect();
        // Per server: (index in `keys`, storage key, wire key).
        let mut groups: Vec<Vec<(usize, String, String)>> =
            self.servers.iter().map(|_| Vec::new()).collect();
        for (i, k) in keys.iter().enumerate() {
            let sk = self.keyspace.storage_key(k);
            let wk = memcached_key(&sk).into_owned();
            groups[self.pick(&wk)].push((i, sk, wk));
        }
        for (server, group) in self.servers.iter().zip(&groups) {
            for chunk in group.chunks(BATCH) {
                let wks: Vec<&str> = chunk.iter().map(|(_, _, w)| w.as_str()).collect();
                let vals = self.run(server, "get_many", |c| c.get_many(&wks))?;
                for ((i, sk, _), v) in chunk.iter().zip(vals) {
                    let mapped = !memcached_key_is_carryable(sk);
                    out[*i] = v.and_then(|v| self.read_item(sk, mapped, v));
                }
            }
        }
        Ok(out)
    }

    fn set_many(&self, items: &[(&str, Item)], ttl: Option<Duration>) -> Result<()> {
        let t = exptime(ttl);
        // Per server: (wire key, bytes to store, flags).
        type Entry<'a> = (String, Cow<'a, [u8]>, u32);
        let mut groups: Vec<Vec<Entry<'_>>> = self.servers.iter().map(|_| Vec::new()).collect();
        for (k, item) in items {
            let sk = self.keyspace.storage_key(k);
            let wk = memcached_key(&sk).into_owned();
            let mapped = !memcached_key_is_carryable(&sk);
            let idx = self.pick(&wk);
            let data = Self::wire_data(&sk, mapped, item);
            self.check_size(&self.servers[idx], k, &wk, data.len())?;
            groups[idx].push((wk, data, item.flags));
        }
        for (server, group) in self.servers.iter().zip(&groups) {
            for chunk in group.chunks(BATCH) {
                let refs: Vec<(&str, &[u8], u32)> = chunk
                    .iter()
                    .map(|(k, data, flags)| (k.as_str(), &data[..], *flags))
                    .collect();
                self.run(server, "set_many", |c| c.set_many(&refs, t))?;
            }
        }
        Ok(())
    }

    fn delete_many(&self, keys: &[&str]) -> Result<u64> {
        let mut groups: Vec<Vec<String>> = self.servers.iter().map(|_| Vec::new()).collect();
        for k in keys {
            let wk = memcached_key(&self.keyspace.storage_key(k)).into_owned();
            groups[self.pick(&wk)].push(wk);
        }
        let mut n = 0;
        for (server, group) in self.servers.iter().zip(&groups) {
            for chunk in group.chunks(BATCH * 4) {
                let refs: Vec<&[u8]> = chunk.iter().map(|k| k.as_bytes()).collect();
                n += self.run(server, "delete_many", |c| c.delete_many(&refs))?;
            }
        }
        Ok(n)
    }

    /// `mg` for the value and its CAS value, then, if the value is `expected`, `md` with that
    /// CAS value: the delete fails if anything wrote the key in between.
    fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool> {
        let sk = self.keyspace.storage_key(key);
        let wk = memcached_key(&sk);
        let mapped = !memcached_key_is_carryable(&sk);
        let server = &self.servers[self.pick(&wk)];
        self.run(server, "compare_and_delete", |c| {
            let Some(read) = c.get_cas(&wk)? else {
                return Ok(false);
            };
            let (cas, value) = (
                read.cas,
                client::Value {
                    data: read.data,
                    flags: read.flags,
                },
            );
            match self.read_item(&sk, mapped, value) {
                Some(item) if item.data == expected => c.delete_cas(&wk, cas),
                _ => Ok(false),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_keys_show_the_users_key() {
        for key in ["plain", "with space", "ünï", "50%"] {
            let sk = format!("ns:{key}");
            assert_eq!(shown_key(&memcached_key(&sk), "ns:"), key);
        }
        let long = format!("ns:{}", "x".repeat(300));
        let shown = shown_key(&memcached_key(&long), "ns:");
        assert!(shown.ends_with('…') && shown.starts_with("xxx"), "{shown}");
    }

    #[test]
    fn ttl_rounding_and_absolute_times() {
        assert_eq!(exptime(None), 0);
        assert_eq!(exptime(Some(Duration::from_millis(1))), 1);
        assert_eq!(exptime(Some(Duration::from_millis(1500))), 2);
        assert_eq!(
            exptime(Some(Duration::from_secs(RELATIVE_TTL_MAX))),
            RELATIVE_TTL_MAX
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let t = exptime(Some(Duration::from_secs(RELATIVE_TTL_MAX + 1)));
        assert!(
            t > now + RELATIVE_TTL_MAX && t < now + RELATIVE_TTL_MAX + 100,
            "{t}"
        );
    }

    #[test]
    fn mapped_header_round_trip() {
        let mut d = MAPPED_MAGIC.to_vec();
        d.extend_from_slice(&3u32.to_le_bytes());
        d.extend_from_slice(b"a bvalue");
        assert_eq!(split_mapped(&d), Some((&b"a b"[..], &b"value"[..])));
        assert_eq!(split_mapped(b"plain"), None);
        assert_eq!(split_mapped(&d[..10]), None);
    }
}
