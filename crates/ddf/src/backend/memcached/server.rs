//! One Memcached server as the backend sees it: the dead-server policy ([`DeadPolicy`]), its
//! health and connection pool, running a command on it (skip window, pooled connection, one
//! retry of a connection the server closed while idle), and the one mapping from client errors
//! to [`Error`].

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::client::{Conn, McError, McResult};
use super::{MemcachedBackend, placement, turns};
use crate::config::ServerAddr;
use crate::error::{Error, Result};

/// The item limit assumed until a server's `stats settings` says otherwise (memcached's default).
pub(super) const DEFAULT_ITEM_SIZE_MAX: usize = 1024 * 1024;

/// Idle connections kept per server.
const POOL_MAX_IDLE: usize = 8;

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
pub(super) struct Health {
    failures: u32,
    pub(super) down_until: Option<Instant>,
    last_error: String,
}

/// One configured server: its connection pool, health and item limit.
pub(super) struct Server {
    pub(super) addr: ServerAddr,
    /// `host:port`, the node name pymemcache hashes.
    pub(super) name: String,
    pool: Mutex<Vec<Conn>>,
    health: Mutex<Health>,
    /// `item_size_max` from `stats settings`; 0 until known.
    pub(super) item_size_max: AtomicUsize,
    /// Whether the server refused `lru_crawler metadump hash` (then `all` is used).
    pub(super) no_hash_dump: AtomicBool,
    /// This process's callers of the server's LRU crawler, served in arrival order.
    pub(super) crawler: turns::Turns,
}

/// The one mapping from client errors to [`Error`].
pub(super) fn map_err(server: &str, what: &str, timeout: Duration, e: McError) -> Error {
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

impl Server {
    pub(super) fn new(addr: ServerAddr) -> Self {
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

    pub(super) fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn pool(&self) -> std::sync::MutexGuard<'_, Vec<Conn>> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn fail(&self, policy: &DeadPolicy, e: &McError) {
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

    pub(super) fn succeed(&self) {
        let mut h = self.health();
        if h.failures > 0 {
            tracing::info!(server = %self.name, "memcached server is answering again");
            *h = Health::default();
        }
    }
}

impl MemcachedBackend {
    /// Runs `f` on a connection to `server`: fails fast while the server is skipped, takes a
    /// pooled connection or makes one (learning the item limit on the first), and returns the
    /// connection to the pool unless the stream may be out of step.
    pub(super) fn run<T>(
        &self,
        server: &Server,
        what: &str,
        f: impl FnMut(&mut Conn) -> McResult<T>,
    ) -> Result<T> {
        self.run_checked(server, what, true, f)
    }

    /// The error of `what` on `server` while it is in its skip window; `None` outside it.
    pub(super) fn skip_error(&self, server: &Server, what: &str) -> Option<Error> {
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
    pub(super) fn run_checked<T>(
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
    pub(super) fn connect(&self, server: &Server, what: &str) -> Result<Conn> {
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
}

/// Whether an I/O error on a pooled connection means the server closed it while it was idle.
pub(super) fn is_stale(e: &std::io::Error) -> bool {
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
