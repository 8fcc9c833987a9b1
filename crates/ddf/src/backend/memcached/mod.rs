//! The Memcached backend (`backend = memcached` and `memcached_pickle`). This file holds the
//! backend (its servers, placement) and its `Backend` implementation; each topic is a module:
//!
//! - `proto`: the meta protocol (plus a few text commands) as pure code over byte buffers.
//! - `client`: its blocking transport over `TcpStream` (why in-house: see there).
//! - `placement`: pymemcache `HashClient`'s rendezvous hashing, so Python and Rust clients
//!   find each other's entries on the same server list.
//! - `server`: one server's health, pool and dead-server policy (see [`DeadPolicy`]), running a
//!   command on it, and the one mapping from client errors to [`crate::Error`].
//! - Values (`items`): items are stored as the cache's codec made them, bytes and flags
//!   (pymemcache's `python_memcache` flags, chosen above the backend by the codec layer), and
//!   read back as stored. The backend never calls a codec.
//! - Keys: [`crate::key::memcached_key`]; a key memcached cannot carry is mapped to
//!   `<visible>~<hash>`, and its item starts with a small header holding the whole storage key
//!   (so reads verify it and prefix invalidation can decide on cut keys): `items`.
//! - Prefix invalidation and `keys` (`listing`) list keys on the servers (`lru_crawler metadump
//!   hash`) and delete the matches; see `docs/memcached.md` for its cost and guarantees.
//! - Batches (`get_many`, `set_many`, `delete_many`): `batch`.
//! - Atomic operations (`add`, `incr`, `touch`, `meta`): `atomic`.
//! - The async face's client: `aio` (feature `async`).

#[cfg(feature = "async")]
pub(crate) mod aio;
mod atomic;
mod batch;
mod buffer;
mod client;
mod items;
mod listing;
pub(crate) mod placement;
mod proto;
mod replies;
mod server;
#[cfg(test)]
mod tests;
mod turns;

use std::fmt;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::backend::{Backend, BackendStatus, Item};
use crate::config::{MemcachedSettings, ValueFormat};
use crate::error::Result;
use crate::key::{Keyspace, memcached_key, memcached_key_is_carryable};

use items::{exptime, seconds_left};
pub use server::DeadPolicy;
use server::Server;

/// Keys per pipelined batch: requests stay well inside the socket buffers, so writing a whole
/// batch before reading can never deadlock against the server's replies.
const BATCH: usize = 256;

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
        self.delete_listed(prefixes)
    }

    fn keys(&self, prefix: &str, limit: usize) -> Result<Vec<super::EntryInfo>> {
        self.listed_keys(prefix, limit)
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
        self.get_batch(keys)
    }

    fn set_many(&self, items: &[(&str, Item)], ttl: Option<Duration>) -> Result<()> {
        self.set_batch(items, ttl)
    }

    fn delete_many(&self, keys: &[&str]) -> Result<u64> {
        self.delete_batch(keys)
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
