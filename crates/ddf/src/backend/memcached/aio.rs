//! The async face's Memcached client: the same meta protocol ([`super::proto`]), placement,
//! key mapping, item limits, error mapping and dead-server policy as the sync backend (this
//! module is a child of it and calls its code), over tokio sockets.
//!
//! - **Connections**: a small pool per server; a request takes a connection for its round trip
//!   (a batch is one pipelined write, as in the sync client), so concurrent tasks use several
//!   connections at once, each with one request in flight, at most [`MAX_CONNECTIONS`] per
//!   server (a task beyond that waits for one, within `timeout`). Every exchange is bounded by
//!   `timeout`, every connect by `connect_timeout`. Each new connection learns the server's
//!   item limit (a server restarted with another `-I` is met, as by the sync client).
//! - **Cancellation**: a connection is returned to the pool only after a whole exchange; one
//!   whose future was dropped (or that timed out, or failed) is dropped with it, so no later
//!   request can read a reply meant for another.
//! - **What stays sync**: prefix invalidation (key listing with the LRU crawler, several passes),
//!   `clear`, `ping` and `info` run the sync backend on the blocking pool: they are rare and
//!   long, and their logic exists once, there. A server in its skip window (the dead-server
//!   policy) is answered by the sync backend too, which returns its skip error at once.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use self::conn::Conn;
use super::client::{McError, McResult};
use super::{BATCH, DEFAULT_ITEM_SIZE_MAX, MemcachedBackend, Server, exptime, is_stale, map_err};
use crate::aio::backend::{AsyncBackend, Blocking, BoxFuture, Noted, Place};
use crate::backend::{Backend, BackendStatus, Item};
use crate::error::Result;
use crate::key::{memcached_key, memcached_key_is_carryable};

mod conn;

/// Connections open at once per server, busy or idle: exchanges in flight to one server
/// beyond this wait for one to end. 64 lets a burst of 64 tasks (the load this backend is
/// measured and tested with) pipeline without waiting, and keeps a process far below
/// memcached's default connection limit (`-c 1024`), which every client of the server shares.
///
/// The bound holds because a connection is made only by a task holding an exchange permit
/// that found no idle connection: every open connection is then either idle or held by a
/// permit holder, so there are never more than the permits (the idle pool needs no cap).
pub(crate) const MAX_CONNECTIONS: usize = 64;

/// The async Memcached backend: the sync backend's rules, tokio sockets (see the module).
pub(crate) struct AsyncMemcached {
    core: Arc<MemcachedBackend>,
    /// Idle connections per server, in the order of `core.servers`.
    pools: Vec<Mutex<Vec<Conn>>>,
    /// Exchanges in flight per server (a connection's round trip, its connect included), at
    /// most [`MAX_CONNECTIONS`]: what bounds the connections open (see there).
    exchanges: Vec<tokio::sync::Semaphore>,
    /// The sync backend on the blocking pool, for what stays sync.
    slow: Blocking,
}

impl std::fmt::Debug for AsyncMemcached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncMemcached")
            .field("servers", &self.core.names)
            .finish_non_exhaustive()
    }
}

fn timed_out() -> McError {
    McError::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "no answer within the timeout",
    ))
}

impl AsyncMemcached {
    pub(crate) fn new(core: Arc<MemcachedBackend>) -> Self {
        let pools = core
            .servers
            .iter()
            .map(|_| Mutex::new(Vec::new()))
            .collect();
        let exchanges = core
            .servers
            .iter()
            .map(|_| tokio::sync::Semaphore::new(MAX_CONNECTIONS))
            .collect();
        let slow = Blocking::new(
            core.clone() as Arc<dyn Backend>,
            Place::Offload,
            Place::Offload,
        );
        AsyncMemcached {
            core,
            pools,
            exchanges,
            slow,
        }
    }

    fn pool(&self, i: usize) -> std::sync::MutexGuard<'_, Vec<Conn>> {
        self.pools[i].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether server `i` is in its skip window (then the sync backend answers: its error).
    fn skipped(&self, i: usize) -> bool {
        self.core.servers[i]
            .health()
            .down_until
            .is_some_and(|until| Instant::now() < until)
    }

    /// A new connection to server `i`, within `connect_timeout`; learns the item limit on each
    /// (a server restarted with another `-I` is met on a new connection).
    async fn connect(&self, i: usize, what: &str) -> Result<Conn> {
        let server: &Server = &self.core.servers[i];
        let made = async {
            let mut c = Conn::connect(&server.addr.host, server.addr.port).await?;
            let max = c.item_size_max().await?.unwrap_or(DEFAULT_ITEM_SIZE_MAX);
            server.item_size_max.store(max, Ordering::Relaxed);
            c.set_value_limit(server.item_size_max.load(Ordering::Relaxed));
            Ok(c)
        };
        let made = match tokio::time::timeout(self.core.connect_timeout, made).await {
            Ok(r) => r,
            Err(_) => Err(timed_out()),
        };
        made.map_err(|e| {
            server.fail(&self.core.policy, &e);
            map_err(&server.name, what, self.core.timeout, e)
        })
    }

    /// Runs one exchange on a connection to server `i` (the sync `run_checked`'s rules: a
    /// pooled connection found dead is retried once on a fresh one; a connection goes back to
    /// the pool only after a whole exchange that left it in step).
    async fn run<T, F, Fut>(&self, i: usize, what: &str, f: F) -> Result<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = (Conn, McResult<T>)>,
    {
        let server = &self.core.servers[i];
        // Held for the whole exchange: the bound on connections (see MAX_CONNECTIONS).
        let _exchange =
            match tokio::time::timeout(self.core.timeout, self.exchanges[i].acquire()).await {
                Ok(Ok(permit)) => permit,
                // The semaphores are never closed; a timeout means every connection stayed busy.
                Ok(Err(_)) | Err(_) => {
                    return Err(crate::error::Error::Backend {
                        backend: self.core.name,
                        message: format!(
                            "{what} on {}: all {MAX_CONNECTIONS} connections stayed busy for {:?} \
                         (timeout)",
                            server.name, self.core.timeout
                        ),
                        temporary: true,
                        source: None,
                    });
                }
            };
        let pooled = self.pool(i).pop();
        let was_pooled = pooled.is_some();
        let conn = match pooled {
            Some(c) => c,
            None => self.connect(i, what).await?,
        };
        let limit = self.core.timeout;
        let once = |c: Conn| async {
            match tokio::time::timeout(limit, f(c)).await {
                Ok((c, r)) => (Some(c), r),
                Err(_) => (None, Err(timed_out())),
            }
        };
        let (mut conn, mut result) = once(conn).await;
        if was_pooled && matches!(&result, Err(McError::Io(e)) if is_stale(e)) {
            self.pool(i).clear();
            let fresh = self.connect(i, what).await?;
            (conn, result) = once(fresh).await;
        }
        match result {
            Ok(v) => {
                server.succeed();
                self.put_back(i, conn);
                Ok(v)
            }
            Err(e @ McError::Server(_)) => {
                server.succeed();
                self.put_back(i, conn);
                Err(map_err(&server.name, what, self.core.timeout, e))
            }
            Err(e) => {
                server.fail(&self.core.policy, &e);
                Err(map_err(&server.name, what, self.core.timeout, e))
            }
        }
    }

    fn put_back(&self, i: usize, conn: Option<Conn>) {
        if let Some(c) = conn {
            self.pool(i).push(c);
        }
    }

    /// Makes sure server `i`'s item limit is known (the sync size check then does no I/O).
    async fn limit_known(&self, i: usize) -> Result<()> {
        if self.core.servers[i].item_size_max.load(Ordering::Relaxed) == 0 {
            self.run(i, "connect", |c| async { (c, Ok(())) }).await?;
        }
        Ok(())
    }

    async fn get_one(&self, key: &str) -> Result<Option<Item>> {
        let sk = self.core.keyspace.storage_key(key);
        let wk = memcached_key(&sk);
        let i = self.core.pick(&wk);
        if self.skipped(i) {
            return self.slow.get(key).await.result;
        }
        let wk: &str = &wk;
        let v = self
            .run(i, "get", |mut c| async move {
                let r = c.get(wk).await;
                (c, r)
            })
            .await?;
        let mapped = !memcached_key_is_carryable(&sk);
        Ok(v.and_then(|v| self.core.read_item(&sk, mapped, v)))
    }

    async fn set_one(&self, key: &str, item: &Item, ttl: Option<Duration>) -> Result<()> {
        let sk = self.core.keyspace.storage_key(key);
        let wk = memcached_key(&sk);
        let i = self.core.pick(&wk);
        if self.skipped(i) {
            return self.slow.set(key, item, ttl).await.result;
        }
        let mapped = !memcached_key_is_carryable(&sk);
        let data = MemcachedBackend::wire_data(&sk, mapped, item);
        self.limit_known(i).await?;
        self.core
            .check_size(&self.core.servers[i], key, &wk, data.len())?;
        let t = exptime(ttl);
        let one: &[(&str, &[u8], u32)] = &[(&wk, &data, item.flags)];
        self.run(i, "set", |mut c| async move {
            let r = c.set_many(one, t).await;
            (c, r)
        })
        .await
    }

    async fn get_batch(&self, keys: &[&str]) -> Result<Vec<Option<Item>>> {
        let mut out: Vec<Option<Item>> = keys.iter().map(|_| None).collect();
        let mut groups: Vec<Vec<(usize, String, String)>> =
            self.core.servers.iter().map(|_| Vec::new()).collect();
        for (i, k) in keys.iter().enumerate() {
            let sk = self.core.keyspace.storage_key(k);
            let wk = memcached_key(&sk).into_owned();
            groups[self.core.pick(&wk)].push((i, sk, wk));
        }
        for (s, group) in groups.iter().enumerate() {
            if group.is_empty() {
                continue;
            }
            if self.skipped(s) {
                // The sync backend returns the skip error of this server, or, if its skip
                // window ended meanwhile, the values (kept: they were thrown away, and a value
                // just written read back as a miss).
                let ks: Vec<&str> = group.iter().map(|(i, _, _)| keys[*i]).collect();
                let got = self.slow.get_many(&ks).await?;
                for ((i, _, _), v) in group.iter().zip(got) {
                    out[*i] = v;
                }
                continue;
            }
            for chunk in group.chunks(BATCH) {
                let wks: &[&str] = &chunk.iter().map(|(_, _, w)| w.as_str()).collect::<Vec<_>>();
                let vals = self
                    .run(s, "get_many", |mut c| async move {
                        let r = c.get_many(wks).await;
                        (c, r)
                    })
                    .await?;
                for ((i, sk, _), v) in chunk.iter().zip(vals) {
                    let mapped = !memcached_key_is_carryable(sk);
                    out[*i] = v.and_then(|v| self.core.read_item(sk, mapped, v));
                }
            }
        }
        Ok(out)
    }

    async fn set_batch(&self, items: &[(&str, Item)], ttl: Option<Duration>) -> Result<()> {
        let t = exptime(ttl);
        type Entry = (String, Vec<u8>, u32);
        let mut groups: Vec<Vec<Entry>> = self.core.servers.iter().map(|_| Vec::new()).collect();
        for (k, item) in items {
            let sk = self.core.keyspace.storage_key(k);
            let wk = memcached_key(&sk).into_owned();
            let mapped = !memcached_key_is_carryable(&sk);
            let s = self.core.pick(&wk);
            if self.skipped(s) {
                return self.slow.set_many(items, ttl).await;
            }
            let data = MemcachedBackend::wire_data(&sk, mapped, item).into_owned();
            self.limit_known(s).await?;
            self.core
                .check_size(&self.core.servers[s], k, &wk, data.len())?;
            groups[s].push((wk, data, item.flags));
        }
        for (s, group) in groups.iter().enumerate() {
            for chunk in group.chunks(BATCH) {
                let refs: &[(&str, &[u8], u32)] = &chunk
                    .iter()
                    .map(|(k, d, f)| (k.as_str(), d.as_slice(), *f))
                    .collect::<Vec<_>>();
                self.run(s, "set_many", |mut c| async move {
                    let r = c.set_many(refs, t).await;
                    (c, r)
                })
                .await?;
            }
        }
        Ok(())
    }

    async fn delete_batch(&self, keys: &[&str]) -> Result<u64> {
        let mut groups: Vec<Vec<String>> = self.core.servers.iter().map(|_| Vec::new()).collect();
        for k in keys {
            let wk = memcached_key(&self.core.keyspace.storage_key(k)).into_owned();
            groups[self.core.pick(&wk)].push(wk);
        }
        if (0..groups.len()).any(|s| !groups[s].is_empty() && self.skipped(s)) {
            return self.slow.delete_many(keys).await;
        }
        let mut n = 0;
        for (s, group) in groups.iter().enumerate() {
            for chunk in group.chunks(BATCH * 4) {
                let refs: &[&[u8]] = &chunk.iter().map(|k| k.as_bytes()).collect::<Vec<_>>();
                n += self
                    .run(s, "delete_many", |mut c| async move {
                        let r = c.delete_many(refs).await;
                        (c, r)
                    })
                    .await?;
            }
        }
        Ok(n)
    }
}

impl AsyncBackend for AsyncMemcached {
    fn name(&self) -> &'static str {
        self.core.name
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Noted<Option<Item>>> {
        Box::pin(async move { Noted::clean(self.get_one(key).await) })
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        item: &'a Item,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Noted<()>> {
        Box::pin(async move { Noted::clean(self.set_one(key, item, ttl).await) })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move { Ok(self.delete_batch(&[key]).await? > 0) })
    }

    fn delete_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<u64>> {
        self.slow.delete_prefix(prefix)
    }

    fn clear(&self) -> BoxFuture<'_, Result<()>> {
        self.slow.clear()
    }

    fn ping(&self) -> BoxFuture<'_, Result<BackendStatus>> {
        self.slow.ping()
    }

    fn info(&self) -> BoxFuture<'_, Result<Vec<(String, String)>>> {
        self.slow.info()
    }

    fn close(&self) {
        for i in 0..self.pools.len() {
            self.pool(i).clear();
        }
        self.core.close();
    }

    fn get_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<Option<Item>>>> {
        Box::pin(self.get_batch(keys))
    }

    fn set_many<'a>(
        &'a self,
        items: &'a [(&'a str, Item)],
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.set_batch(items, ttl))
    }

    fn delete_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<u64>> {
        Box::pin(self.delete_batch(keys))
    }
}
