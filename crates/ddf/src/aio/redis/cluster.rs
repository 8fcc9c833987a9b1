//! A Redis Cluster on the async face, natively: a breaker per primary, as on the sync face.
//!
//! The sync face's pieces are used as they are: its slot map and placement
//! (`backend/redis/cluster.rs`'s [`Shards`], read in the background from the build and again
//! on every `MOVED`: one map for both faces of a cache), its routing of a call's commands
//! ([`Route`]: the slot's owner, `ASKING` before a command after an `ASK`, at most three sends
//! per command, the map read once per round of `MOVED`s) and its router over the scopes
//! (`PerScope`, built by `backend::per_server_router`: each primary's breaker, journal scope,
//! fallback and probe). Only the transport is this module's: each node's requests go over an
//! [`AsyncRedis`] of its own (the multiplexed connection, TLS included, and the caller-driven
//! one for a lone `GET`, `SET` or `UNLINK`), the groups of one round to several nodes at once.
//!
//! - [`AsyncNode`], one scope's async primary, under `aio/scopes.rs`'s [`AsyncPerScope`]: keyed
//!   calls, batches and `meta` are native; what spans every primary (`invalidate_pattern`,
//!   `clear`, `ping`, `info`) is the sync router's on the blocking pool
//!   (`AsyncPerScope::every`).
//! - [`AsyncCluster`] waits for the first reading of the slot map before it routes a call (the
//!   sync placement would block a worker on it): one blocking-pool thread waits for it, once per
//!   cache, and every early call awaits its word (a `watch`). The requests of a call that
//!   waited are bounded by what is left of its `connect_timeout` + `timeout` (the sync face's
//!   rule), through a task-local deadline.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use redis::{RedisResult, Value};

use super::super::backend::{AsyncBackend, Blocking, BoxFuture, Noted, Place};
use super::super::scopes::AsyncPerScope;
use super::{AsyncRedis, Conn, NAME};
use crate::backend::redis::cluster::request::{self, Hop, Keyed, Route};
use crate::backend::redis::cluster::{Addr, META, Shards, slots_command};
use crate::backend::redis::{commands, resp};
use crate::backend::resilience::scopes::PerScope;
use crate::backend::{BackendStatus, EntryInfo, Expiry, Item};
use crate::error::{Error, Result};
use crate::manager::core::CodecCounter;

tokio::task_local! {
    /// The bound of a call whose routing waited for the first slot map: its start +
    /// `connect_timeout` + `timeout` (the sync face's `CALL_DEADLINE`).
    static CALL_DEADLINE: Instant;
}

/// The async connections to the cluster's nodes, one [`AsyncRedis`] per node (made on first
/// use), shared by every scope.
pub(crate) struct Nodes {
    shards: Arc<Shards>,
    conns: Mutex<HashMap<Addr, Arc<AsyncRedis>>>,
    timeout: Duration,
    connect_timeout: Duration,
}

impl std::fmt::Debug for Nodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nodes")
            .field("shards", &self.shards)
            .finish_non_exhaustive()
    }
}

/// Whether a lone command may go over the caller-driven connection, and whether it may be sent
/// twice there (see `direct.rs`): `GET` and `SET` are, `UNLINK` (its count) is not.
fn hot(what: &str) -> Option<bool> {
    match what {
        "GET" | "SET" => Some(true),
        "UNLINK" => Some(false),
        _ => None,
    }
}

/// A hot reply as redis-rs's value (an error reply never comes here: `resp::whole` makes it
/// the request's error).
fn value_of(r: resp::Reply<'_>) -> RedisResult<Value> {
    Ok(match r {
        resp::Reply::Status(b"OK") => Value::Okay,
        resp::Reply::Status(b) => Value::SimpleString(String::from_utf8_lossy(b).into_owned()),
        resp::Reply::Int(n) => Value::Int(n),
        resp::Reply::Bulk(Some(b)) => Value::BulkString(b.to_vec()),
        resp::Reply::Bulk(None) => Value::Nil,
        r @ resp::Reply::Error(_) => return Err(resp::unexpected(&r, "a cluster command")),
    })
}

impl Nodes {
    /// The async connection of one node.
    fn conn(&self, addr: &Addr) -> Result<Arc<AsyncRedis>> {
        let mut all = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = all.get(addr) {
            return Ok(c.clone());
        }
        let core = self.shards.node(addr)?;
        let place = core.place().to_owned();
        let c = AsyncRedis::new(core, self.timeout, self.connect_timeout).ok_or_else(|| {
            Error::Backend {
                backend: NAME,
                message: format!("{place}: no async client for this target"),
                temporary: false,
                source: None,
            }
        })?;
        let c = Arc::new(c);
        all.insert(addr.clone(), c.clone());
        Ok(c)
    }

    fn close(&self) {
        let all = std::mem::take(&mut *self.conns.lock().unwrap_or_else(PoisonError::into_inner));
        for c in all.values() {
            c.close();
        }
    }

    /// The commands' replies, in order, and the node that answered command `watch`: sent as
    /// [`Route`] says, each round's groups to their nodes at once. A call whose routing waited
    /// for the first slot map gets what is left of its bound ([`CALL_DEADLINE`]).
    async fn exec(
        &self,
        what: &str,
        cmds: &[Keyed],
        watch: Option<usize>,
    ) -> Result<(Vec<Value>, Option<Addr>)> {
        let work = self.exec_now(what, cmds, watch);
        match CALL_DEADLINE.try_with(|d| *d) {
            Ok(deadline) => tokio::time::timeout_at(deadline.into(), work)
                .await
                .unwrap_or_else(|_| Err(request::out_of_time(what, self.shards.budget()))),
            Err(_) => work.await,
        }
    }

    async fn exec_now(
        &self,
        what: &str,
        cmds: &[Keyed],
        watch: Option<usize>,
    ) -> Result<(Vec<Value>, Option<Addr>)> {
        let mut route = Route::new(&self.shards, cmds, watch);
        while let Some(groups) = route.round() {
            let sends = groups
                .iter()
                .map(|(to, idx)| self.send(what, to, cmds, idx));
            let replies = futures_util::future::join_all(sends).await;
            for ((to, idx), r) in groups.iter().zip(replies) {
                route.take(&self.shards, what, to, idx, r?)?;
            }
            if let Some(to) = route.moved()
                && let Err(e) = self.refresh_from(&to).await
            {
                tracing::debug!(error = %e, "cannot read the slot map after MOVED");
            }
        }
        Ok(route.finish())
    }

    /// One group to one node: a lone hot command on the caller-driven connection when it is
    /// free, else one pipeline on the multiplexed one. A server's error reply is the command's
    /// `Err`, for [`Route::take`].
    async fn send(
        &self,
        what: &str,
        to: &Hop,
        cmds: &[Keyed],
        idx: &[usize],
    ) -> Result<Vec<RedisResult<Value>>> {
        let node = self.conn(&to.addr)?;
        if let ([one], false, Some(idempotent), Some(d)) =
            (idx, to.asking, hot(what), node.direct.as_ref())
            && let Some(c) = cmds.get(*one)
        {
            let packed = c.cmd.get_packed_command();
            if let Some(r) = d
                .hot(idempotent, |b| b.extend_from_slice(&packed), value_of)
                .await
            {
                // A server's error reply or the connection's: the route maps either through
                // the node's backend, unless it is a redirect.
                return Ok(vec![r]);
            }
        }
        let (p, per) = request::pipeline(to, cmds, idx);
        let (p, n) = (&p, idx.len() * per);
        let all = node
            .run(what, |Conn(mut mc)| async move {
                mc.send_packed_commands(p, 0, n).await
            })
            .await?;
        let vals = request::check_count(what, to, request::unpipe(all, per), idx.len())?;
        Ok(vals.into_iter().map(request::reply).collect())
    }

    /// Reads `CLUSTER SLOTS` from `addr` over its async connection and applies it to the map
    /// both faces share.
    async fn refresh_from(&self, addr: &Addr) -> Result<()> {
        let node = self.conn(addr)?;
        let cmd = &slots_command();
        let v: Value = node
            .run("CLUSTER SLOTS", |mut c| async move { c.query(cmd).await })
            .await?;
        self.shards.apply_slots(addr, &v)
    }
}

/// One scope's async primary: requests for its keys, sent to each key's slot owner.
#[derive(Debug)]
pub(crate) struct AsyncNode {
    nodes: Arc<Nodes>,
    /// The sync scope's primary on the blocking pool (not reached: what spans every primary
    /// goes to the sync router).
    rare: Blocking,
}

impl AsyncNode {
    fn keyed(&self, key: &str, f: impl FnOnce(&str) -> redis::Cmd) -> Keyed {
        self.nodes.shards.keyed(key, f)
    }

    async fn one(&self, what: &str, cmd: Keyed) -> Result<Value> {
        let (mut v, _) = self
            .nodes
            .exec(what, std::slice::from_ref(&cmd), None)
            .await?;
        v.pop().ok_or_else(|| request::parse_error(what))
    }

    async fn many(&self, what: &str, cmds: &[Keyed]) -> Result<Vec<Value>> {
        Ok(self.nodes.exec(what, cmds, None).await?.0)
    }

    async fn get_item(&self, key: &str) -> Result<Option<Item>> {
        let v = self.one("GET", self.keyed(key, commands::get)).await?;
        let v: Option<Vec<u8>> = request::convert("GET", v)?;
        Ok(v.map(Item::unflagged))
    }

    /// `GET` and `PTTL` in one pipeline to the key's owner, and the node that answered.
    async fn get_expiring_item(
        &self,
        key: &str,
    ) -> (Result<Option<(Item, Expiry)>>, Option<(String, u16)>) {
        let get = self.keyed(key, commands::get);
        let pttl = self.keyed(key, |k| redis::cmd("PTTL").arg(k).clone());
        let (vals, answered) = match self.nodes.exec("GET/PTTL", &[get, pttl], Some(0)).await {
            Ok(r) => r,
            Err(e) => return (Err(e), None),
        };
        let read = || {
            let [v, pttl] =
                <[Value; 2]>::try_from(vals).map_err(|_| request::parse_error("GET/PTTL"))?;
            let v: Option<Vec<u8>> = request::convert("GET", v)?;
            let pttl: i64 = request::convert("PTTL", pttl)?;
            Ok(v.map(|v| (Item::unflagged(v), commands::expiry(pttl))))
        };
        (read(), answered)
    }
}

impl AsyncBackend for AsyncNode {
    fn name(&self) -> &'static str {
        NAME
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Noted<Option<Item>>> {
        Box::pin(async move { Noted::clean(self.get_item(key).await) })
    }

    fn get_expiring<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Noted<Option<(Item, Expiry)>>> {
        Box::pin(async move { Noted::clean(self.get_expiring_item(key).await.0) })
    }

    fn get_expiring_from<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, (Noted<Option<(Item, Expiry)>>, Option<(String, u16)>)> {
        Box::pin(async move {
            let (r, answered) = self.get_expiring_item(key).await;
            (Noted::clean(r), answered)
        })
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        item: &'a Item,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Noted<()>> {
        Box::pin(async move {
            let cmd = self.keyed(key, |k| commands::set(k, &item.data, ttl));
            Noted::clean(self.one("SET", cmd).await.map(drop))
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let v = self
                .one("UNLINK", self.keyed(key, |k| commands::unlink(&[k])))
                .await?;
            Ok(request::convert::<u64>("UNLINK", v)? > 0)
        })
    }

    // Not reached: the router sends what spans every primary to the sync router.
    fn delete_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<u64>> {
        self.rare.delete_prefix(prefix)
    }

    fn clear(&self) -> BoxFuture<'_, Result<()>> {
        self.rare.clear()
    }

    fn ping(&self) -> BoxFuture<'_, Result<BackendStatus>> {
        self.rare.ping()
    }

    fn info(&self) -> BoxFuture<'_, Result<Vec<(String, String)>>> {
        self.rare.info()
    }

    fn close(&self) {
        self.nodes.close();
    }

    fn get_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<Option<Item>>>> {
        Box::pin(async move {
            let cmds: Vec<Keyed> = keys.iter().map(|k| self.keyed(k, commands::get)).collect();
            self.many("GET (pipeline)", &cmds)
                .await?
                .into_iter()
                .map(|v| {
                    let v: Option<Vec<u8>> = request::convert("GET", v)?;
                    Ok(v.map(Item::unflagged))
                })
                .collect()
        })
    }

    fn set_many<'a>(
        &'a self,
        items: &'a [(&'a str, Item)],
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let cmds: Vec<Keyed> = items
                .iter()
                .map(|(k, it)| self.keyed(k, |k| commands::set(k, &it.data, ttl)))
                .collect();
            self.many("SET (pipeline)", &cmds).await.map(drop)
        })
    }

    fn delete_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let cmds: Vec<Keyed> = keys
                .iter()
                .map(|k| self.keyed(k, |k| commands::unlink(&[k])))
                .collect();
            let mut n = 0;
            for v in self.many("UNLINK (pipeline)", &cmds).await? {
                n += request::convert::<u64>("UNLINK", v)?;
            }
            Ok(n)
        })
    }

    fn add<'a>(
        &'a self,
        key: &'a str,
        item: &'a Item,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let cmd = self.keyed(key, |k| commands::add(k, &item.data, ttl));
            let v = self.one("SET NX", cmd).await?;
            Ok(request::convert::<Option<String>>("SET NX", v)?.is_some())
        })
    }

    fn incr<'a>(
        &'a self,
        key: &'a str,
        delta: i64,
        _counter: CodecCounter,
    ) -> BoxFuture<'a, Result<i64>> {
        Box::pin(async move {
            let cmd = self.keyed(key, |k| commands::incr(k, delta));
            let v = self.one("INCRBY", cmd).await?;
            let (code, value): (i64, Option<String>) = request::convert("INCRBY", v)?;
            commands::incr_reply(code, value, delta)
        })
    }

    fn touch<'a>(&'a self, key: &'a str, ttl: Option<Duration>) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let v = self
                .one("PEXPIRE", self.keyed(key, |k| commands::touch(k, ttl)))
                .await?;
            Ok(request::convert::<i64>("PEXPIRE", v)? == 1)
        })
    }

    fn meta<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<EntryInfo>>> {
        Box::pin(async move {
            let shards = &self.nodes.shards;
            let vals = self.many(META, &shards.meta_commands(key)).await?;
            shards.meta_entry(key, vals)
        })
    }

    fn compare_and_delete<'a>(
        &'a self,
        key: &'a str,
        expected: &'a [u8],
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let what = "EVAL (compare-and-delete)";
            let cmd = self.keyed(key, |k| commands::compare_and_delete(k, expected));
            let v = self.one(what, cmd).await?;
            Ok(request::convert::<u64>(what, v)? > 0)
        })
    }

    fn extend_lease<'a>(
        &'a self,
        lease: &'a str,
        token: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let what = "EVAL (extend-lease)";
            let cmd = self.keyed(lease, |k| commands::extend_lease(k, token, ttl));
            let v = self.one(what, cmd).await?;
            Ok(request::convert::<u64>(what, v)? > 0)
        })
    }
}

/// The async face's Redis Cluster: the breaker per primary ([`AsyncPerScope`] over the sync
/// router's scopes, an [`AsyncNode`] each), every call routed once the first slot map is read.
#[derive(Debug)]
pub(crate) struct AsyncCluster {
    shards: Arc<Shards>,
    nodes: Arc<Nodes>,
    inner: AsyncPerScope,
    /// Whether the first reading of the slot map is over, as the one thread waiting for it
    /// tells (started by the first call that finds it not over).
    first: OnceLock<tokio::sync::watch::Receiver<bool>>,
}

impl AsyncCluster {
    /// The cluster `shards` places keys in, over `sync`'s scopes (one per configured node, as
    /// `Shards::specs` made them), counting the fallback's answers in `fallback`.
    pub(crate) fn new(
        shards: Arc<Shards>,
        sync: Arc<PerScope>,
        timeout: Duration,
        connect_timeout: Duration,
        fallback: &Arc<AtomicU64>,
    ) -> Self {
        let nodes = Arc::new(Nodes {
            shards: shards.clone(),
            conns: Mutex::new(HashMap::new()),
            timeout,
            connect_timeout,
        });
        let primaries = (0..sync.states().count())
            .map(|scope| {
                Arc::new(AsyncNode {
                    nodes: nodes.clone(),
                    rare: Blocking::new(
                        shards.scope_backend(scope),
                        Place::Offload,
                        Place::Offload,
                    ),
                }) as Arc<dyn AsyncBackend>
            })
            .collect();
        AsyncCluster {
            inner: AsyncPerScope::new(sync, primaries, fallback),
            shards,
            nodes,
            first: OnceLock::new(),
        }
    }

    /// Waits until the first reading of the slot map is over (at most `connect_timeout` +
    /// `timeout` from the build): one blocking-pool thread waits, the first time this is
    /// called, and every caller awaits its word, so early calls hold no thread of their own
    /// (and a dropped call none at all). Outside a runtime, it waits here.
    async fn wait_first(&self) {
        let mut over = self
            .first
            .get_or_init(|| {
                let (tx, rx) = tokio::sync::watch::channel(false);
                let shards = self.shards.clone();
                let wait = move || {
                    shards.wait_first();
                    // No receiver left: nobody waits.
                    let _ = tx.send(true);
                };
                match tokio::runtime::Handle::try_current() {
                    // Detached: it ends by the build + the bound whatever the callers do.
                    Ok(h) => drop(h.spawn_blocking(wait)),
                    Err(_) => wait(),
                }
                rx
            })
            .clone();
        if over.wait_for(|over| *over).await.is_err() {
            // The waiter ended without its word (the runtime is shutting down): the routing
            // waits for the reading itself, bounded as ever.
            tracing::debug!("cannot wait for the first slot map off the workers");
        }
    }

    /// Runs the call `f` makes once the first slot map is read: awaited off the runtime's
    /// workers ([`AsyncCluster::wait_first`]), the call's requests then
    /// bounded by what is left of its own `connect_timeout` + `timeout`.
    async fn routed<'a, T>(&'a self, f: impl FnOnce() -> BoxFuture<'a, T>) -> T {
        if self.shards.first_read() {
            return f().await;
        }
        let deadline = Instant::now() + self.shards.budget();
        self.wait_first().await;
        CALL_DEADLINE.scope(deadline, f()).await
    }
}

impl AsyncBackend for AsyncCluster {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Noted<Option<Item>>> {
        Box::pin(self.routed(move || self.inner.get(key)))
    }

    fn get_expiring<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Noted<Option<(Item, Expiry)>>> {
        Box::pin(self.routed(move || self.inner.get_expiring(key)))
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        item: &'a Item,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Noted<()>> {
        Box::pin(self.routed(move || self.inner.set(key, item, ttl)))
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(self.routed(move || self.inner.delete(key)))
    }

    fn delete_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<u64>> {
        self.inner.delete_prefix(prefix)
    }

    fn clear(&self) -> BoxFuture<'_, Result<()>> {
        self.inner.clear()
    }

    fn ping(&self) -> BoxFuture<'_, Result<BackendStatus>> {
        self.inner.ping()
    }

    fn info(&self) -> BoxFuture<'_, Result<Vec<(String, String)>>> {
        self.inner.info()
    }

    fn close(&self) {
        self.inner.close();
        self.nodes.close();
    }

    fn get_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<Option<Item>>>> {
        Box::pin(self.routed(move || self.inner.get_many(keys)))
    }

    fn set_many<'a>(
        &'a self,
        items: &'a [(&'a str, Item)],
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.routed(move || self.inner.set_many(items, ttl)))
    }

    fn delete_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<u64>> {
        Box::pin(self.routed(move || self.inner.delete_many(keys)))
    }

    fn add<'a>(
        &'a self,
        key: &'a str,
        item: &'a Item,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(self.routed(move || self.inner.add(key, item, ttl)))
    }

    fn incr<'a>(
        &'a self,
        key: &'a str,
        delta: i64,
        counter: CodecCounter,
    ) -> BoxFuture<'a, Result<i64>> {
        Box::pin(self.routed(move || self.inner.incr(key, delta, counter)))
    }

    fn touch<'a>(&'a self, key: &'a str, ttl: Option<Duration>) -> BoxFuture<'a, Result<bool>> {
        Box::pin(self.routed(move || self.inner.touch(key, ttl)))
    }

    fn meta<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<EntryInfo>>> {
        Box::pin(self.routed(move || self.inner.meta(key)))
    }

    fn compare_and_delete<'a>(
        &'a self,
        key: &'a str,
        expected: &'a [u8],
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(self.routed(move || self.inner.compare_and_delete(key, expected)))
    }

    fn set_if_lease<'a>(
        &'a self,
        key: &'a str,
        item: &'a Item,
        ttl: Option<Duration>,
        lease: &'a str,
        token: &'a [u8],
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(self.routed(move || self.inner.set_if_lease(key, item, ttl, lease, token)))
    }

    fn extend_lease<'a>(
        &'a self,
        lease: &'a str,
        token: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(self.routed(move || self.inner.extend_lease(lease, token, ttl)))
    }
}
