//! The async face's Memcached client: the same meta protocol ([`super::proto`]), placement,
//! key mapping, item limits, error mapping and dead-server policy as the sync backend (this
//! module is a child of it and calls its code), over tokio sockets.
//!
//! - **Connections**: one pipelined connection per server (`pipe.rs`; why one: `Pipes`),
//!   opened on first use; concurrent requests share it: a connection's writer
//!   sends every request queued at the time in one write, its reader answers them in order. Every
//!   exchange is bounded by `timeout`, every connect by `connect_timeout`. Each new connection
//!   learns the server's item limit (a server restarted with another `-I` is met, as by the
//!   sync client).
//! - **Cancellation**: a request whose future was dropped has its reply read and discarded by
//!   the connection's reader, so no later request can read a reply meant for another. A
//!   connection where a request timed out is closed (the server may be stuck).
//! - **What stays sync**: prefix invalidation (key listing with the LRU crawler, several passes),
//!   `clear`, `ping` and `info` run the sync backend on the blocking pool: they are rare and
//!   long, and their logic exists once, there. A server in its skip window (the dead-server
//!   policy) is answered by the sync backend too, which returns its skip error at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use self::conn::{Answer, Conn, Kind};
use self::pipe::{Failed, Pipe};
use super::client::{McError, McResult, Value};
use super::items::exptime;
use super::server::{DEFAULT_ITEM_SIZE_MAX, Server, is_stale, map_err};
use super::{BATCH, MemcachedBackend};
use crate::aio::backend::{AsyncBackend, Blocking, BoxFuture, Noted, Place};
use crate::backend::{Backend, BackendStatus, Item};
use crate::error::Result;
use crate::key::{memcached_key, memcached_key_is_carryable};

mod conn;
mod pipe;
#[cfg(test)]
mod tests;

/// One server's connection: one pipelined connection carries every concurrent request (as
/// redis-rs's multiplexed connection does). Measured with `examples/async_bench` on the 2-core
/// machine, 64 tasks made 260,000-350,000 gets/s on 1 connection, 90,000-110,000 on 2 and
/// 75,000-85,000 on 4 or 8 spread round-robin (each connection's tasks and memcached thread
/// wake for smaller batches). The cost: a large value holds up the replies behind it.
///
/// The lock is held while connecting: tasks that find no connection meanwhile wait for that
/// one attempt and share its outcome (as the async Redis client does), instead of each making
/// their own in turn: against a server that accepts and never answers, a burst of calls waits
/// one `connect_timeout`, not one each.
struct Pipes {
    slot: Mutex<Option<Arc<Pipe>>>,
    /// The last attempt's failure (message, temporary), for the calls that queued behind it.
    connecting: tokio::sync::Mutex<Option<(String, bool)>>,
    /// Connection attempts finished (a call reads it before it queues for `connecting`; an
    /// attempt that finished since is its outcome too).
    attempts: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The async Memcached backend: the sync backend's rules, tokio sockets (see the module).
pub(crate) struct AsyncMemcached {
    core: Arc<MemcachedBackend>,
    /// Connections per server, in the order of `core.servers`.
    pipes: Vec<Pipes>,
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

/// `connect_timeout` passed (mapped to the connect timeout's wording).
fn connect_timed_out() -> McError {
    McError::Io(std::io::ErrorKind::TimedOut.into())
}

fn value(a: Answer) -> Option<Option<Value>> {
    match a {
        Answer::Value(v) => Some(v),
        _ => None,
    }
}

fn values(a: Answer) -> Option<Vec<Option<Value>>> {
    match a {
        Answer::Values(v) => Some(v),
        _ => None,
    }
}

fn stored(a: Answer) -> Option<()> {
    matches!(a, Answer::Stored).then_some(())
}

fn deleted(a: Answer) -> Option<u64> {
    match a {
        Answer::Deleted(n) => Some(n),
        _ => None,
    }
}

impl AsyncMemcached {
    pub(crate) fn new(core: Arc<MemcachedBackend>) -> Self {
        let pipes = core
            .servers
            .iter()
            .map(|_| Pipes {
                slot: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(None),
                attempts: AtomicU64::new(0),
            })
            .collect();
        let slow = Blocking::new(
            core.clone() as Arc<dyn Backend>,
            Place::Offload,
            Place::Offload,
        );
        AsyncMemcached { core, pipes, slow }
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
            c.set_value_limit(max);
            Ok(c)
        };
        let made = match tokio::time::timeout(self.core.connect_timeout, made).await {
            Ok(r) => r,
            Err(_) => Err(connect_timed_out()),
        };
        made.map_err(|e| {
            server.fail(&self.core.policy, &e);
            map_err(&server.name, what, self.core.timeout, e)
        })
    }

    /// The live pipelined connection to server `i` (connected if there is none, or it died),
    /// and whether it was open before this call (then it may have died while idle: stale).
    /// Calls that queue behind an attempt share its outcome; one that gets the lock after the
    /// server entered its skip window gets the skip error; the wait is bounded by
    /// `connect_timeout`.
    async fn pipe(&self, i: usize, what: &str) -> Result<(Arc<Pipe>, bool)> {
        let pipes = &self.pipes[i];
        let live = || lock(&pipes.slot).clone().filter(|p| !p.is_dead());
        if let Some(p) = live() {
            return Ok((p, true));
        }
        let queued_at = pipes.attempts.load(Ordering::SeqCst);
        let until = tokio::time::Instant::now() + self.core.connect_timeout;
        let server = &self.core.servers[i];
        let Ok(mut last) = tokio::time::timeout_at(until, pipes.connecting.lock()).await else {
            // Another task's attempt took all of this call's `connect_timeout` (that attempt
            // counts against the server, not this wait).
            return Err(map_err(
                &server.name,
                what,
                self.core.timeout,
                connect_timed_out(),
            ));
        };
        if let Some(p) = live() {
            return Ok((p, false));
        }
        if pipes.attempts.load(Ordering::SeqCst) != queued_at
            && let Some((message, temporary)) = &*last
        {
            return Err(crate::Error::Backend {
                backend: "memcached",
                message: message.clone(),
                temporary: *temporary,
                source: None,
            });
        }
        if let Some(e) = self.core.skip_error(server, what) {
            return Err(e);
        }
        let made = self.connect(i, what).await;
        pipes.attempts.fetch_add(1, Ordering::SeqCst);
        let c = match made {
            Ok(c) => {
                *last = None;
                c
            }
            Err(e) => {
                *last = Some(match &e {
                    crate::Error::Backend {
                        message, temporary, ..
                    } => (message.clone(), *temporary),
                    e => (e.to_string(), e.is_temporary()),
                });
                return Err(e);
            }
        };
        let p = Arc::new(Pipe::start(c));
        if let Some(old) = lock(&pipes.slot).replace(p.clone()) {
            old.kill();
        }
        Ok((p, false))
    }

    /// Closes `pipe` (it failed) and takes it out of server `i`'s slot, if it is still there.
    fn forget(&self, i: usize, pipe: &Arc<Pipe>) {
        pipe.kill();
        let mut slot = lock(&self.pipes[i].slot);
        if slot.as_ref().is_some_and(|p| Arc::ptr_eq(p, pipe)) {
            *slot = None;
        }
    }

    /// Sends one request to server `i` (`build` writes it and says what reply it expects;
    /// `pick` takes the answer of that kind) with the sync `run_checked`'s rules: a connection
    /// open before the call and found dead is replaced and the request retried once; a
    /// timeout closes the connection; an I/O or protocol error counts against the server.
    ///
    /// The retry's limit: a request lost on a connection that failed on another request before
    /// it was sent is retried. One that was sent (it met the break on its own reply, or was lost
    /// behind another; the server may have run it) is retried only if `resend` (gets and sets:
    /// running them twice gives the same answer); a delete is not (its first attempt may have
    /// deleted the key, and the retry would find nothing and report a wrong `false`): it
    /// reports the error.
    async fn run<T>(
        &self,
        i: usize,
        what: &str,
        resend: bool,
        build: impl Fn(&mut Vec<u8>) -> McResult<Kind>,
        pick: fn(Answer) -> Option<T>,
    ) -> Result<T> {
        let server = &self.core.servers[i];
        let mut bytes = Vec::new();
        let kind =
            build(&mut bytes).map_err(|e| map_err(&server.name, what, self.core.timeout, e))?;
        // Each attempt's deadline starts once it has its connection (connecting is bounded by
        // `connect_timeout` on its own).
        let once = |p: Arc<Pipe>, bytes: Vec<u8>| async move {
            let deadline = tokio::time::Instant::now() + self.core.timeout;
            let r = p.call(bytes, kind, deadline).await;
            if matches!(r, Err(Failed::TimedOut { .. })) {
                p.kill();
            }
            (p, r)
        };
        let (p, was_open) = self.pipe(i, what).await?;
        let (mut p, mut result) = once(p, bytes).await;
        let retry = match &result {
            // The request met the break itself: it was sent, so only one that may run twice.
            Err(Failed::Error(McError::Io(e))) => resend && is_stale(e),
            Err(Failed::Lost { sent }) => !sent || resend,
            _ => false,
        };
        if was_open && retry {
            // A connection the server closed while it sat idle (a restart), or that failed on
            // another request: retried once on a new one.
            self.forget(i, &p);
            let (p2, _) = self.pipe(i, what).await?;
            // The request again (it was handed to the failed connection).
            let mut bytes = Vec::new();
            build(&mut bytes).map_err(|e| map_err(&server.name, what, self.core.timeout, e))?;
            (p, result) = once(p2, bytes).await;
        }
        let result = result.map_err(Failed::into_error).and_then(|a| {
            pick(a).ok_or_else(|| McError::Protocol(format!("a reply of another kind to {what}")))
        });
        match result {
            Ok(v) => {
                server.succeed();
                Ok(v)
            }
            Err(e @ McError::Server(_)) => {
                server.succeed();
                Err(map_err(&server.name, what, self.core.timeout, e))
            }
            Err(e) => {
                self.forget(i, &p);
                server.fail(&self.core.policy, &e);
                Err(map_err(&server.name, what, self.core.timeout, e))
            }
        }
    }

    /// Makes sure server `i`'s item limit is known (the sync size check then does no I/O).
    async fn limit_known(&self, i: usize) -> Result<()> {
        if self.core.servers[i].item_size_max.load(Ordering::Relaxed) == 0 {
            self.pipe(i, "connect").await?;
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
        let v = self
            .run(i, "get", true, |out| conn::get(out, &wk), value)
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
        self.run(i, "set", true, |out| conn::set_many(out, one, t), stored)
            .await
    }

    async fn get_batch(&self, keys: &[&str]) -> Result<Vec<Option<Item>>> {
        let mut out: Vec<Option<Item>> = keys.iter().map(|_| None).collect();
        let groups = self.core.reads_by_server(keys);
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
                let wks: Vec<&str> = chunk.iter().map(|(_, _, w)| w.as_str()).collect();
                let vals = self
                    .run(s, "get_many", true, |out| conn::get_many(out, &wks), values)
                    .await?;
                self.core.fill(&mut out, chunk, vals);
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
                let refs: Vec<(&str, &[u8], u32)> = chunk
                    .iter()
                    .map(|(k, d, f)| (k.as_str(), d.as_slice(), *f))
                    .collect();
                self.run(
                    s,
                    "set_many",
                    true,
                    |out| conn::set_many(out, &refs, t),
                    stored,
                )
                .await?;
            }
        }
        Ok(())
    }

    async fn delete_batch(&self, keys: &[&str]) -> Result<u64> {
        let groups = self.core.wire_keys_by_server(keys);
        if (0..groups.len()).any(|s| !groups[s].is_empty() && self.skipped(s)) {
            return self.slow.delete_many(keys).await;
        }
        let mut n = 0;
        for (s, group) in groups.iter().enumerate() {
            for chunk in group.chunks(BATCH * 4) {
                let refs: Vec<&[u8]> = chunk.iter().map(|k| k.as_bytes()).collect();
                n += self
                    .run(
                        s,
                        "delete_many",
                        false,
                        |out| conn::delete_many(out, &refs),
                        deleted,
                    )
                    .await?;
            }
        }
        Ok(n)
    }
}

/// One scope per configured server for the async face's breaker per server: the sync face's
/// scopes ([`MemcachedBackend::per_server`]: label, journal identity), each scope's primary the
/// one backend both faces use for that server (its dead-server state shared, as with one
/// server), and the async client on it, in the servers' order.
pub(crate) fn per_server(
    settings: &crate::config::MemcachedSettings,
) -> (
    Vec<crate::backend::resilience::scopes::ScopeSpec>,
    Vec<Arc<dyn AsyncBackend>>,
) {
    let mut specs = MemcachedBackend::per_server(settings);
    let mut clients: Vec<Arc<dyn AsyncBackend>> = Vec::with_capacity(specs.len());
    for (spec, addr) in specs.iter_mut().zip(&settings.servers) {
        let twin = Arc::new(MemcachedBackend::new(&settings.only(addr)));
        let shared = twin.clone();
        spec.factory = Box::new(move || Ok(shared.clone() as Arc<dyn Backend>));
        clients.push(Arc::new(AsyncMemcached::new(twin)));
    }
    (specs, clients)
}

impl AsyncBackend for AsyncMemcached {
    fn name(&self) -> &'static str {
        self.core.name
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Noted<Option<Item>>> {
        Box::pin(async move { Noted::clean(self.get_one(key).await) })
    }

    /// A near cache fill: `mg <key> v f t` on the blocking client (a miss of the near cache
    /// only; the pipelined connections carry the plain reads).
    fn get_expiring<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Noted<Option<(Item, crate::backend::Expiry)>>> {
        self.slow.get_expiring(key)
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
        for server in &self.pipes {
            if let Some(p) = lock(&server.slot).take() {
                p.kill();
            }
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

    // The atomic operations run on the sync client (the same protocol code) on the blocking
    // pool: a lease or a counter step is two round trips at most, and this keeps them out of
    // the async connection's buffer code.
    fn add<'a>(
        &'a self,
        key: &'a str,
        item: &'a Item,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<bool>> {
        self.slow.add(key, item, ttl)
    }

    fn incr<'a>(
        &'a self,
        key: &'a str,
        delta: i64,
        counter: crate::manager::core::CodecCounter,
    ) -> BoxFuture<'a, Result<i64>> {
        self.slow.incr(key, delta, counter)
    }

    fn touch<'a>(&'a self, key: &'a str, ttl: Option<Duration>) -> BoxFuture<'a, Result<bool>> {
        self.slow.touch(key, ttl)
    }

    fn meta<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<crate::backend::EntryInfo>>> {
        self.slow.meta(key)
    }

    fn compare_and_delete<'a>(
        &'a self,
        key: &'a str,
        expected: &'a [u8],
    ) -> BoxFuture<'a, Result<bool>> {
        self.slow.compare_and_delete(key, expected)
    }
}
