//! The async Redis backend: redis-rs's multiplexed connection (standalone over TCP, TLS or a
//! unix socket, or the master Sentinels name), shared by every task of the cache. A Cluster
//! is [`cluster`]'s, whose nodes are standalone targets of this backend.
//!
//! Everything but the transport is the sync backend's: the target, credentials, TLS and
//! timeouts come from the same [`RedisBackend`] (built from the same validated settings), the
//! requests from `backend/redis/commands.rs`, the errors from [`RedisBackend::map_err`], the
//! `clear` policy from [`crate::backend::clear_plan`].
//!
//! - **One connection, many requests in flight**: concurrent tasks share one multiplexed
//!   connection (cloned per call: an `Arc` and a channel), whose driver task writes their
//!   requests as they come and matches replies in order, so that 64 tasks pipeline on one
//!   socket without a pool.
//! - **Bounded waits**: connect (set-up, `AUTH`, `SELECT` included) within `connect_timeout`,
//!   every reply within `timeout` (redis-rs's response timeout). One attempt connects at a
//!   time, and the calls queued behind it share its outcome (a failure included) instead of
//!   each making its own in turn: a call waits at most one `connect_timeout` plus its
//!   `timeout`, however many tasks find no connection at once.
//! - **Cancellation**: a dropped future only drops its reply's receiver; the driver still reads
//!   that reply and discards it, so the connection never gets out of step and a later request
//!   never reads another's reply.
//! - **Reconnection**: a connection that failed with an I/O error or was dropped (the server
//!   restarted, or the runtime that drove it ended) is forgotten; the next call connects again,
//!   and a call that met a dead connection is retried once on a fresh one (as the sync pool
//!   retries a dead pooled connection once). Timeouts are never retried.
//! - **One task, one poll**: `GET`, `SET` and `UNLINK` of one key go first to a caller-driven
//!   connection ([`direct`]: the calling task writes and reads the socket itself, with the sync
//!   hot path's RESP2 code) when it is free; a task that finds it busy pipelines on the
//!   multiplexed connection. TLS and RESP3 targets use the multiplexed connection only.
//! - **Sentinel**: both connections go to the master the Sentinels name, found by the sync
//!   face's lookup at each connect and followed through a failover ([`sentinel`]).

pub(crate) mod cluster;
mod direct;
mod keys;
mod sentinel;

use keys::{scan_unlink, unlink};

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Cmd, FromRedisValue, RedisError, RedisResult};

use super::backend::{AsyncBackend, BoxFuture, Noted};
use crate::backend::redis::{RedisBackend, commands, resp};
use crate::backend::{BackendStatus, ClearPlan, Item, check_prefix, clear_plan};
use crate::error::{Error, Result};

const NAME: &str = "redis";

/// A live connection (cheap to clone: requests share its socket).
#[derive(Clone)]
struct Conn(MultiplexedConnection);

impl Conn {
    async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> RedisResult<T> {
        cmd.query_async(&mut self.0).await
    }

    async fn query_pipe<T: FromRedisValue>(&mut self, p: &redis::Pipeline) -> RedisResult<T> {
        p.query_async(&mut self.0).await
    }
}

/// Where the multiplexed connection goes.
#[allow(
    clippy::large_enum_variant,
    reason = "one per backend; the clients' sizes change with redis-rs's features"
)]
enum Source {
    Fixed(redis::Client),
    Sentinel(Arc<sentinel::Follow>),
}

/// The async Redis backend (see the module's documentation).
pub(crate) struct AsyncRedis {
    /// Key layout, error mapping, place and settings: the sync backend's.
    core: Arc<RedisBackend>,
    source: Source,
    /// The caller-driven connection (standalone targets only).
    direct: Option<direct::Direct>,
    timeout: Duration,
    connect_timeout: Duration,
    /// The shared connection, once open, the runtime its driver task runs on and its
    /// Sentinel generation: only tasks on that runtime use it (elsewhere a request would wait
    /// on a driver nobody may be driving), and only while the master has not moved; a task on
    /// another runtime opens one there, which replaces it.
    current: Mutex<Option<(Conn, tokio::runtime::Id, u64)>>,
    /// Held while connecting, so that a burst of tasks opens one connection, not one each;
    /// it keeps the last attempt's failure for the calls that queued behind that attempt.
    connecting: tokio::sync::Mutex<LastAttempt>,
    /// Connection attempts finished (a generation: a call reads it before it queues for
    /// `connecting`, and an attempt that finished since is its outcome too).
    attempts: AtomicU64,
}

/// The outcome of the last connection attempt, when it failed: the message and whether it is
/// temporary (an [`Error`] is not `Clone`; every waiter gets its own).
#[derive(Debug, Default)]
struct LastAttempt {
    failure: Option<(String, bool)>,
}

impl std::fmt::Debug for AsyncRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncRedis")
            .field("place", &self.core.place())
            .finish_non_exhaustive()
    }
}

/// Whether an error means the connection is unusable (dropped, reset, refused): forget it.
fn is_dead(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal()
}

impl AsyncRedis {
    /// The async twin of `core` (built from the same settings): standalone or Sentinel; `None`
    /// for a Cluster (see [`cluster`]).
    pub(crate) fn new(
        core: Arc<RedisBackend>,
        timeout: Duration,
        connect_timeout: Duration,
    ) -> Option<Self> {
        let (source, direct) = match core.async_client() {
            Some(c) => {
                let d = direct::Direct::new(&c, timeout, connect_timeout);
                (Source::Fixed(c), Some(d))
            }
            None => {
                let follow = Arc::new(sentinel::Follow::new(&core)?);
                let plain = core.sentinels().is_some_and(|s| s.plain_resp2());
                let d = plain
                    .then(|| direct::Direct::following(follow.clone(), timeout, connect_timeout));
                (Source::Sentinel(follow), d)
            }
        };
        Some(AsyncRedis {
            core,
            source,
            direct,
            timeout,
            connect_timeout,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(LastAttempt::default()),
            attempts: AtomicU64::new(0),
        })
    }

    fn current(&self) -> Option<Conn> {
        let here = tokio::runtime::Handle::try_current().ok()?.id();
        let generation = self.generation();
        match &*self.current.lock().unwrap_or_else(PoisonError::into_inner) {
            Some((c, id, g)) if *id == here && *g == generation => Some(c.clone()),
            _ => None,
        }
    }

    /// The Sentinel generation a connection must have to be used (0 without Sentinel).
    fn generation(&self) -> u64 {
        match &self.source {
            Source::Sentinel(f) => f.generation(),
            Source::Fixed(_) => 0,
        }
    }

    /// With Sentinel: an error after which the master may have moved retires the connections
    /// and makes the next connect ask the Sentinels (the sync face's rule).
    fn after_error(&self, e: &RedisError) {
        if let Source::Sentinel(f) = &self.source {
            f.after_error(e);
        }
    }

    fn forget(&self) {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// A hot command on the caller-driven connection, `None` when it is busy (see [`direct`]).
    async fn hot<T>(
        &self,
        what: &str,
        encode: impl Fn(&mut Vec<u8>),
        read: impl Fn(resp::Reply<'_>) -> RedisResult<T>,
    ) -> Option<Result<T>> {
        // Outside a runtime `Direct::hot` says `None` too: the multiplexed path says what is
        // missing.
        let d = self.direct.as_ref()?;
        // Only these are sent twice when a reused connection fails (the server may have run
        // the first); anything else (`UNLINK`: its count) only when it was never written.
        let idempotent = matches!(what, "GET" | "SET");
        Some(
            d.hot(idempotent, encode, read)
                .await?
                .map_err(|e| self.core.map_err(what, &e)),
        )
    }

    /// The shared connection, opened (once, whoever asks first) if there is none.
    async fn conn(&self) -> Result<Conn> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let Ok(here) = tokio::runtime::Handle::try_current() else {
            return Err(Error::Backend {
                backend: NAME,
                message: "the async Redis client needs a tokio runtime: await this future \
                          inside one (tokio::main, Runtime::block_on)"
                    .to_owned(),
                temporary: false,
                source: None,
            });
        };
        // Calls that queue while an attempt is under way share its outcome: with a server
        // that accepts and never answers, 64 queued calls then wait one `connect_timeout`,
        // not one each in turn.
        let queued_at = self.attempts.load(Ordering::SeqCst);
        let mut last = self.connecting.lock().await;
        if let Some(c) = self.current() {
            return Ok(c);
        }
        if self.attempts.load(Ordering::SeqCst) != queued_at
            && let Some((message, temporary)) = &last.failure
        {
            return Err(Error::Backend {
                backend: NAME,
                message: message.clone(),
                temporary: *temporary,
                source: None,
            });
        }
        let opened = self.attempt().await;
        last.failure = match &opened {
            Ok((c, generation)) => {
                *self.current.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some((c.clone(), here.id(), *generation));
                None
            }
            Err(Error::Backend {
                message, temporary, ..
            }) => Some((message.clone(), *temporary)),
            Err(e) => Some((e.to_string(), e.is_temporary())),
        };
        self.attempts.fetch_add(1, Ordering::SeqCst);
        opened.map(|(c, _)| c)
    }

    /// One connection attempt, bounded by `connect_timeout` (a Sentinel lookup included), and
    /// the Sentinel generation of the connection.
    async fn attempt(&self) -> Result<(Conn, u64)> {
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        match tokio::time::timeout_at(deadline, self.open(deadline)).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => {
                self.after_error(&e);
                Err(self.core.map_err("cannot connect", &e))
            }
            Err(_) => Err(Error::Backend {
                backend: NAME,
                message: format!(
                    "cannot connect to {}: timed out after {:?} (connect_timeout)",
                    self.core.place(),
                    self.connect_timeout
                ),
                temporary: true,
                source: None,
            }),
        }
    }

    async fn open(&self, deadline: tokio::time::Instant) -> RedisResult<(Conn, u64)> {
        let single = |client: redis::Client| async move {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let cfg = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(left))
                .set_response_timeout(Some(self.timeout));
            client
                .get_multiplexed_async_connection_with_config(&cfg)
                .await
        };
        match &self.source {
            Source::Fixed(client) => Ok((Conn(single(client.clone()).await?), 0)),
            // `ROLE` on the connection itself (the lookup's was on another one): a master
            // demoted since is not used, and neither is a connection retired while opening.
            Source::Sentinel(f) => {
                let (client, addr, generation) = f.locate(deadline).await?;
                let mut m = single(client).await?;
                let role = redis::cmd("ROLE")
                    .query_async::<redis::Role>(&mut m)
                    .await?;
                f.verify(&role, &addr, generation)?;
                Ok((Conn(m), generation))
            }
        }
    }

    /// Runs `f` on the shared connection; see the module's documentation for what a failure
    /// does to the connection, and the single retry.
    async fn run<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>> + Send,
    {
        let c = self.conn().await?;
        match f(c).await {
            Ok(v) => return Ok(v),
            Err(e) if is_dead(&e) && !e.is_timeout() => {
                tracing::debug!(place = %self.core.place(), "redis connection was dead; reconnecting");
                self.after_error(&e);
                self.forget();
            }
            Err(e) => {
                self.after_error(&e);
                if is_dead(&e) {
                    self.forget();
                }
                return Err(self.core.map_err(what, &e));
            }
        }
        let c = self.conn().await?;
        f(c).await.map_err(|e| {
            self.after_error(&e);
            if is_dead(&e) {
                self.forget();
            }
            self.core.map_err(what, &e)
        })
    }

    fn key(&self, key: &str) -> String {
        self.core.keyspace().storage_key(key)
    }
}

impl AsyncRedis {
    async fn get_item(&self, key: &str) -> Result<Option<Item>> {
        let k = self.key(key);
        if let Some(r) = self
            .hot("GET", |b| resp::get(b, k.as_bytes()), resp::bulk)
            .await
        {
            return Ok(r?.map(Item::unflagged));
        }
        let cmd = &commands::get(&k);
        let v: Option<Vec<u8>> = self
            .run("GET", |mut c| async move { c.query(cmd).await })
            .await?;
        Ok(v.map(Item::unflagged))
    }

    async fn get_expiring_item(&self, key: &str) -> Result<Option<(Item, crate::backend::Expiry)>> {
        let p = &commands::get_expiring(&self.key(key));
        let (v, pttl): (Option<Vec<u8>>, i64) = self
            .run("GET/PTTL", |mut c| async move { c.query_pipe(p).await })
            .await?;
        Ok(v.map(|v| (Item::unflagged(v), commands::expiry(pttl))))
    }

    async fn set_item(&self, key: &str, item: &Item, ttl: Option<Duration>) -> Result<()> {
        let k = self.key(key);
        if let Some(r) = self
            .hot(
                "SET",
                |b| resp::set(b, k.as_bytes(), &item.data, ttl),
                // redis-rs reads any reply that is not an error as `()`: the same here.
                |_| Ok(()),
            )
            .await
        {
            return r;
        }
        let cmd = &commands::set(&k, &item.data, ttl);
        self.run("SET", |mut c| async move { c.query::<()>(cmd).await })
            .await
    }

    async fn remove_prefix(&self, prefix: &str) -> Result<u64> {
        check_prefix(
            self.core.keyspace().namespace(),
            prefix,
            self.core.server_flush(),
            commands::WHOLE,
        )?;
        let pattern = &commands::prefix_pattern(self.core.keyspace(), prefix);
        self.run("SCAN/UNLINK", |mut c| async move {
            scan_unlink(&mut c, pattern).await
        })
        .await
    }

    async fn clear_all(&self) -> Result<()> {
        let plan = clear_plan(
            NAME,
            self.core.keyspace().namespace(),
            self.core.server_flush(),
            commands::WHOLE_FLUSH,
        )?;
        match plan {
            ClearPlan::Prefix => self.remove_prefix("").await.map(drop),
            ClearPlan::Flush => {
                self.run("FLUSHDB", |mut c| async move {
                    c.query::<()>(&commands::flushdb()).await
                })
                .await
            }
        }
    }

    async fn ping_server(&self) -> Result<BackendStatus> {
        let pong: String = self
            .run(
                "PING",
                |mut c| async move { c.query(&commands::ping()).await },
            )
            .await?;
        Ok(BackendStatus {
            detail: format!("redis {}: {pong}", self.core.place()),
        })
    }

    async fn server_info(&self) -> Result<Vec<(String, String)>> {
        let info: String = self
            .run(
                "INFO",
                |mut c| async move { c.query(&commands::info()).await },
            )
            .await?;
        let master = match &self.source {
            Source::Sentinel(f) => f.current(),
            Source::Fixed(_) => None,
        };
        Ok(commands::info_rows(self.core.place(), master, &info, None))
    }

    async fn get_items(&self, keys: &[&str]) -> Result<Vec<Option<Item>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let ks: &[String] = &keys.iter().map(|k| self.key(k)).collect::<Vec<_>>();
        let vals: Vec<Option<Vec<u8>>> = self
            .run(
                "MGET",
                |mut c| async move { c.query(&commands::mget(ks)).await },
            )
            .await?;
        if vals.len() != keys.len() {
            return Err(Error::Backend {
                backend: NAME,
                message: format!(
                    "MGET on {} returned {} values for {} keys",
                    self.core.place(),
                    vals.len(),
                    keys.len()
                ),
                temporary: false,
                source: None,
            });
        }
        Ok(vals.into_iter().map(|v| v.map(Item::unflagged)).collect())
    }

    async fn set_items(&self, items: &[(&str, Item)], ttl: Option<Duration>) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let cmds: &[Cmd] = &items
            .iter()
            .map(|(k, it)| commands::set(&self.key(k), &it.data, ttl))
            .collect::<Vec<_>>();
        self.run("SET (pipeline)", |mut c| async move {
            let mut p = redis::pipe();
            for cmd in cmds {
                p.add_command(cmd.clone()).ignore();
            }
            c.query_pipe::<()>(&p).await
        })
        .await
    }

    async fn delete_items(&self, keys: &[&str]) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        let ks: &[String] = &keys.iter().map(|k| self.key(k)).collect::<Vec<_>>();
        self.run("UNLINK", |mut c| async move { unlink(&mut c, ks).await })
            .await
    }
}

impl AsyncBackend for AsyncRedis {
    fn name(&self) -> &'static str {
        NAME
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Noted<Option<Item>>> {
        Box::pin(async move { Noted::clean(self.get_item(key).await) })
    }

    fn get_expiring<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Noted<Option<(Item, crate::backend::Expiry)>>> {
        Box::pin(async move { Noted::clean(self.get_expiring_item(key).await) })
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        item: &'a Item,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Noted<()>> {
        Box::pin(async move { Noted::clean(self.set_item(key, item, ttl).await) })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let k = self.key(key);
            if let Some(r) = self
                .hot("UNLINK", |b| resp::unlink(b, k.as_bytes()), resp::int_reply)
                .await
            {
                return Ok(r? > 0);
            }
            let ks: &[String] = &[k];
            let n = self
                .run("UNLINK", |mut c| async move { unlink(&mut c, ks).await })
                .await?;
            Ok(n > 0)
        })
    }

    fn delete_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<u64>> {
        Box::pin(self.remove_prefix(prefix))
    }

    fn clear(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.clear_all())
    }

    fn ping(&self) -> BoxFuture<'_, Result<BackendStatus>> {
        Box::pin(self.ping_server())
    }

    fn info(&self) -> BoxFuture<'_, Result<Vec<(String, String)>>> {
        Box::pin(self.server_info())
    }

    fn close(&self) {
        self.forget();
        if let Some(d) = &self.direct {
            d.close();
        }
    }

    fn get_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<Option<Item>>>> {
        Box::pin(self.get_items(keys))
    }

    fn set_many<'a>(
        &'a self,
        items: &'a [(&'a str, Item)],
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.set_items(items, ttl))
    }

    fn delete_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<u64>> {
        Box::pin(self.delete_items(keys))
    }

    fn add<'a>(
        &'a self,
        key: &'a str,
        item: &'a Item,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let cmd = &commands::add(&self.key(key), &item.data, ttl);
            let r: Option<String> = self
                .run("SET NX", |mut c| async move { c.query(cmd).await })
                .await?;
            Ok(r.is_some())
        })
    }

    fn incr<'a>(
        &'a self,
        key: &'a str,
        delta: i64,
        _counter: crate::manager::core::CodecCounter,
    ) -> BoxFuture<'a, Result<i64>> {
        Box::pin(async move {
            let cmd = &commands::incr(&self.key(key), delta);
            let (code, value): (i64, Option<String>) = self
                .run("INCRBY", |mut c| async move { c.query(cmd).await })
                .await?;
            commands::incr_reply(code, value, delta)
        })
    }

    fn touch<'a>(&'a self, key: &'a str, ttl: Option<Duration>) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let cmd = &commands::touch(&self.key(key), ttl);
            let n: i64 = self
                .run("PEXPIRE", |mut c| async move { c.query(cmd).await })
                .await?;
            Ok(n == 1)
        })
    }

    fn meta<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<crate::backend::EntryInfo>>> {
        Box::pin(async move {
            let k = self.key(key);
            let both = &commands::ttl_and_size(&k);
            let (pttl, size): (i64, u64) = self
                .run(
                    "PTTL/STRLEN",
                    |mut c| async move { c.query_pipe(both).await },
                )
                .await?;
            Ok(self.core.entry(k.as_bytes(), pttl, size))
        })
    }

    fn compare_and_delete<'a>(
        &'a self,
        key: &'a str,
        expected: &'a [u8],
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let cmd = &commands::compare_and_delete(&self.key(key), expected);
            let n: u64 = self
                .run("EVAL (compare-and-delete)", |mut c| async move {
                    c.query(cmd).await
                })
                .await?;
            Ok(n > 0)
        })
    }

    /// As the sync backend's outside a Cluster: one script.
    fn set_if_lease<'a>(
        &'a self,
        key: &'a str,
        item: &'a Item,
        ttl: Option<Duration>,
        lease: &'a str,
        token: &'a [u8],
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let k = self.key(key);
            let fenced = &commands::set_if_lease(&k, &item.data, ttl, &self.key(lease), token);
            let n: u64 = self
                .run("EVAL (set-if-lease)", |mut c| async move {
                    c.query(fenced).await
                })
                .await?;
            Ok(n > 0)
        })
    }

    fn extend_lease<'a>(
        &'a self,
        lease: &'a str,
        token: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let cmd = &commands::extend_lease(&self.key(lease), token, ttl);
            let n: u64 = self
                .run(
                    "EVAL (extend-lease)",
                    |mut c| async move { c.query(cmd).await },
                )
                .await?;
            Ok(n > 0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CacheConfig;
    use crate::config::ServerAddr;

    fn sentinel_config() -> CacheConfig {
        CacheConfig::default()
            .with_backend(crate::CacheBackend::Redis)
            .with_redis_sentinels(vec![ServerAddr::parse("127.0.0.1:1", 26379).unwrap()], "m")
    }

    /// Sentinel has a native async twin (no server needed: nothing connects here): the
    /// multiplexed connection follows the master, and so does the caller-driven one over plain
    /// RESP2; with RESP3 there is no caller-driven connection.
    #[test]
    fn sentinel_is_served_natively() {
        let t = Duration::from_millis(100);
        let twin = |resp3: bool| {
            let mut s = sentinel_config().redis_settings().unwrap();
            s.resp3 = resp3;
            let core = RedisBackend::new(&s).unwrap();
            AsyncRedis::new(Arc::new(core), t, t).expect("an async twin")
        };
        let plain = twin(false);
        assert!(matches!(plain.source, Source::Sentinel(_)));
        assert!(plain.direct.is_some());
        assert!(twin(true).direct.is_none());
    }

    /// The reviewer's case on the multiplexed connection: the lookup's `ROLE` check reached
    /// a master, the connection then opened reaches a replica. It is refused (a temporary
    /// error: the breaker sends the call to the fallback), not read from.
    #[tokio::test]
    async fn the_multiplexed_connection_checks_role_itself() {
        use super::direct::tests::{master_and_replica, naming, switching_proxy};
        let Some((master, replica)) = master_and_replica() else {
            return;
        };
        let (_sentinel, core, _) = naming(switching_proxy(master.port(), replica.port()));
        let t = Duration::from_secs(5);
        let twin = AsyncRedis::new(core, t, t).expect("an async twin");
        let get = redis::cmd("GET").arg("k").clone();
        let r = twin
            .run("GET", |mut c| {
                let get = get.clone();
                async move { c.query::<Option<Vec<u8>>>(&get).await }
            })
            .await;
        let e = r.unwrap_err();
        assert!(
            e.is_temporary() && e.to_string().contains("is not a master"),
            "{e}"
        );
    }

    /// The caller-driven connection's `Debug` names the address, never the password.
    #[test]
    fn debug_shows_no_password() {
        let mut c = CacheConfig::default().with_backend(crate::CacheBackend::Redis);
        c.redis_url = Some(crate::config::Secret::new("redis://:s3cret@127.0.0.1:1/0"));
        let core = RedisBackend::new(&c.redis_settings().unwrap()).unwrap();
        let t = Duration::from_millis(100);
        let twin = AsyncRedis::new(Arc::new(core), t, t).expect("an async twin");
        let text = format!("{:?} {:?}", twin, twin.direct);
        assert!(text.contains("127.0.0.1"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
        // A Sentinel target: the master's password and the Sentinels' own are shown neither.
        let mut c = sentinel_config().with_redis_password(Some("m4ster".into()));
        c.redis_sentinel_password = Some(crate::config::Secret::new("sent1nel"));
        let core = RedisBackend::new(&c.redis_settings().unwrap()).unwrap();
        let twin = AsyncRedis::new(Arc::new(core), t, t).expect("an async twin");
        let text = format!("{:?} {:?}", twin, twin.direct);
        assert!(text.contains("127.0.0.1"), "{text}");
        assert!(
            !text.contains("m4ster") && !text.contains("sent1nel"),
            "{text}"
        );
    }
}
