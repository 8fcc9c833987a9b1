//! A Redis Cluster on the per-server seam (issue #14): a breaker per primary.
//!
//! - **Placement** ([`Shards`], a [`Partition`]): a key's slot is the CRC16 of its namespaced
//!   key as stored (or of its `{hash tag}`), and the slot map (from `CLUSTER SLOTS`) says which
//!   primary owns the slot; both pure, in [`slots`]. The map is read when the backend is built
//!   (every configured node asked at once, the first answer taken), again on every `MOVED`, and
//!   each time a primary's probe reaches it. Until a node answers, the map is the split
//!   `redis-cli --cluster create` makes over the configured nodes, in their order.
//! - **Scopes**: one per configured node (`redis_cluster_nodes`, which should list the
//!   primaries), each a whole `Resilient` with its own breaker, journal scope
//!   (`redis-cluster://host:port|namespace`), outage generation and fallback entries, built by
//!   `backend::per_server` as for Memcached. A scope is a **shard**: the slots its node owned
//!   when the map was read. When a failover promotes a replica, the slots keep their scope and
//!   the scope's requests go to the promoted node: the invalidations recorded while the old
//!   primary was down are replayed on the node that now holds its keys, before the scope serves
//!   again, also when the promoted replica is itself listed. A slot changes scope only when
//!   the map names as its owner a node that already held slots (a resharding, which `MIGRATE`
//!   can only do while both nodes answer).
//! - **Requests** ([`NodeBackend`], the primary of one scope) go to the slot's owner over our
//!   bounded connection (`conn.rs`: one deadline per request), through a standalone
//!   [`RedisBackend`] per node (its pool, error mapping and connection set-up): a stopped
//!   primary costs one timeout, then its breaker is open and only its keys go to the fallback.
//!   Batches are one pipeline per node. `MOVED` refreshes the map and the command is sent once
//!   more, to the new owner; `ASK` sends `ASKING` and the command to the node named (the map is
//!   not changed: the slot is only being migrated).
//! - **Prefix deletes, `clear`**: each scope scans the nodes that own its slots (`SCAN` +
//!   single-key `UNLINK`s: a multi-key `UNLINK` across slots is refused by a cluster node).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use redis::{RedisError, Value};

use self::slots::{Map, parse_slots, slot_of};

use super::{RedisBackend, commands};
use crate::backend::resilience::scopes::{Partition, ScopeSpec};
use crate::backend::{Backend, BackendStatus, Item};
use crate::config::{RedisEndpoint, RedisSettings, RedisTarget};
use crate::error::{Error, Result};
use crate::key::Keyspace;

mod slots;

pub(crate) use self::slots::Addr;

/// The cluster's slot map and a standalone backend per node, shared by every scope.
pub(crate) struct Shards {
    keyspace: Keyspace,
    /// The configured nodes: scope `i` is `nodes[i]`'s shard.
    nodes: Vec<Addr>,
    map: RwLock<Map>,
    /// A standalone backend (pool, error mapping) per node, made on first use.
    backends: Mutex<HashMap<Addr, Arc<RedisBackend>>>,
    settings: RedisSettings,
}

impl fmt::Debug for Shards {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shards")
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

impl Partition for Shards {
    fn scope_of(&self, key: &str) -> usize {
        let slot = slot_of(self.keyspace.storage_key(key).as_bytes());
        usize::from(self.read().scope[usize::from(slot)])
    }
}

impl Shards {
    /// The shards of a cluster's settings, with the slot map of the first configured node that
    /// answers (all asked at once, waited for at most `connect_timeout` + `timeout`; when none
    /// answers, the even split, corrected by the first node that answers later). `None` for
    /// another target.
    pub(crate) fn discover(settings: &RedisSettings) -> Option<Arc<Shards>> {
        let RedisTarget::Cluster(nodes) = &settings.target else {
            return None;
        };
        let nodes: Vec<Addr> = nodes.iter().map(|a| (a.host.clone(), a.port)).collect();
        if nodes.is_empty() {
            return None;
        }
        let shards = Arc::new(Shards {
            keyspace: Keyspace::new(settings.namespace.clone()),
            map: RwLock::new(Map::even(&nodes)),
            nodes,
            backends: Mutex::new(HashMap::new()),
            settings: settings.clone(),
        });
        if !shards.first_map(settings.connect_timeout + settings.timeout) {
            tracing::warn!(nodes = ?shards.nodes, "no Redis Cluster node answered CLUSTER SLOTS; keys are placed by the even split until one does");
        }
        Some(shards)
    }

    /// Asks every listed node for the slot map at once and waits for the first answer, at most
    /// `wait` (a stopped node costs nothing when another answers); whether one did. A node that
    /// answers later still applies its map (the same map: nothing changes).
    fn first_map(self: &Arc<Self>, wait: Duration) -> bool {
        let (tx, rx) = std::sync::mpsc::channel();
        for n in &self.nodes {
            let (shards, node, tx) = (self.clone(), n.clone(), tx.clone());
            let asked = std::thread::Builder::new()
                .name("ddf-cluster-map".to_owned())
                .spawn(move || {
                    let _ = tx.send(shards.refresh_from(&node).is_ok());
                });
            // A thread the system refuses: ask that node here.
            if asked.is_err() && self.refresh_from(n).is_ok() {
                return true;
            }
        }
        drop(tx);
        let deadline = std::time::Instant::now() + wait;
        while let Ok(ok) =
            rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
        {
            if ok {
                return true;
            }
        }
        false
    }

    /// One scope per configured node: label `host:port`, identity
    /// `redis-cluster://host:port`, a [`NodeBackend`] as its primary.
    pub(crate) fn specs(self: &Arc<Self>) -> Vec<ScopeSpec> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(scope, (host, port))| {
                let shards = self.clone();
                ScopeSpec {
                    label: format!("{host}:{port}"),
                    identity: format!("redis-cluster://{host}:{port}"),
                    factory: Box::new(move || {
                        Ok(Arc::new(NodeBackend {
                            shards: shards.clone(),
                            scope,
                        }) as Arc<dyn Backend>)
                    }),
                }
            })
            .collect()
    }

    /// Every primary the slot map names now (for a client-side cache that must track each).
    #[allow(
        dead_code,
        reason = "for the near cache (issue #15), which tracks every primary"
    )]
    pub(crate) fn primaries(&self) -> Vec<Addr> {
        let map = self.read();
        let mut out: Vec<Addr> = Vec::new();
        for &o in &map.owner {
            let a = &map.addrs[usize::from(o)];
            if !out.contains(a) {
                out.push(a.clone());
            }
        }
        out
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Map> {
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }

    fn owner(&self, slot: u16) -> Addr {
        let map = self.read();
        map.addrs[usize::from(map.owner[usize::from(slot)])].clone()
    }

    /// The node a scope's probe pings.
    fn primary(&self, scope: usize) -> Addr {
        let map = self.read();
        let i = map.primary.get(scope).copied().unwrap_or(0);
        map.addrs[usize::from(i)].clone()
    }

    /// The nodes that own a slot of `scope`.
    fn nodes_of(&self, scope: usize) -> Vec<Addr> {
        let map = self.read();
        let mut out: Vec<Addr> = Vec::new();
        for (s, &o) in map.scope.iter().zip(&map.owner) {
            let a = &map.addrs[usize::from(o)];
            if usize::from(*s) == scope && !out.contains(a) {
                out.push(a.clone());
            }
        }
        // None when the scope holds no slot (a listed replica): nothing of ours is there.
        out
    }

    /// The standalone backend of one node (made on first use).
    fn node(&self, addr: &Addr) -> Result<Arc<RedisBackend>> {
        let mut all = self.backends.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = all.get(addr) {
            return Ok(b.clone());
        }
        let (host, port) = addr.clone();
        let endpoint = if self.settings.ca.is_some() {
            RedisEndpoint::Tls {
                host: host.clone(),
                port,
                insecure: false,
            }
        } else {
            RedisEndpoint::Tcp {
                host: host.clone(),
                port,
            }
        };
        let mut settings = self.settings.clone();
        settings.target = RedisTarget::Standalone(endpoint);
        let mut b = RedisBackend::new(&settings)?;
        b.place = format!("Redis Cluster node {host}:{port}");
        let b = Arc::new(b);
        all.insert(addr.clone(), b.clone());
        Ok(b)
    }

    /// Reads `CLUSTER SLOTS` from `addr` and applies it.
    fn refresh_from(&self, addr: &Addr) -> Result<()> {
        let b = self.node(addr)?;
        let v: Value = b.run("CLUSTER SLOTS", |c| {
            c.as_like()
                .req_command(redis::cmd("CLUSTER").arg("SLOTS"))
                .and_then(|v| v.extract_error())
        })?;
        let Some(ranges) = parse_slots(&v, &addr.0) else {
            return Err(Error::Backend {
                backend: super::NAME,
                message: format!(
                    "CLUSTER SLOTS on {}:{}: a reply that is not a slot map",
                    addr.0, addr.1
                ),
                temporary: false,
                source: None,
            });
        };
        let changed = self
            .map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .apply(&self.nodes, &ranges);
        if changed {
            tracing::info!(from = %format!("{}:{}", addr.0, addr.1), ranges = ranges.len(), "Redis Cluster slot map changed");
        }
        Ok(())
    }

    /// Reads the map from any node but `skip`, the first that answers; whether one did.
    fn refresh_elsewhere(&self, skip: &Addr) -> bool {
        let others: Vec<Addr> = {
            let map = self.read();
            map.addrs.iter().filter(|a| *a != skip).cloned().collect()
        };
        others.iter().any(|a| self.refresh_from(a).is_ok())
    }
}

/// The primary of one scope: requests for its keys, sent to the owner of each key's slot.
#[derive(Debug)]
pub(crate) struct NodeBackend {
    shards: Arc<Shards>,
    scope: usize,
}

/// A command for the key of `slot`.
struct Keyed {
    slot: u16,
    cmd: redis::Cmd,
}

impl NodeBackend {
    fn keyed(&self, key: &str, f: impl FnOnce(&str) -> redis::Cmd) -> Keyed {
        let k = self.shards.keyspace.storage_key(key);
        Keyed {
            slot: slot_of(k.as_bytes()),
            cmd: f(&k),
        }
    }

    /// Sends the commands, one pipeline per owning node (one round trip each, one deadline
    /// each), then follows each `MOVED`/`ASK` once. Replies in order.
    fn exec(&self, what: &str, cmds: &[Keyed]) -> Result<Vec<Value>> {
        let mut groups: Vec<(Addr, Vec<usize>)> = Vec::new();
        for (i, c) in cmds.iter().enumerate() {
            let owner = self.shards.owner(c.slot);
            match groups.iter_mut().find(|(a, _)| *a == owner) {
                Some((_, v)) => v.push(i),
                None => groups.push((owner, vec![i])),
            }
        }
        let mut out = vec![Value::Nil; cmds.len()];
        for (addr, idx) in &groups {
            let b = self.shards.node(addr)?;
            let vals = match idx.as_slice() {
                [one] => {
                    let packed = cmds[*one].cmd.get_packed_command();
                    vec![b.run(what, |c| c.as_like().req_packed_command(&packed))?]
                }
                _ => {
                    let mut p = redis::pipe();
                    for &i in idx {
                        p.add_command(cmds[i].cmd.clone());
                    }
                    let packed = p.get_packed_pipeline();
                    b.run(what, |c| {
                        c.as_like().req_packed_commands(&packed, 0, idx.len())
                    })?
                }
            };
            if vals.len() != idx.len() {
                return Err(Error::Backend {
                    backend: super::NAME,
                    message: format!(
                        "{what} on {}:{}: {} replies for {} commands",
                        addr.0,
                        addr.1,
                        vals.len(),
                        idx.len()
                    ),
                    temporary: false,
                    source: None,
                });
            }
            for (&i, v) in idx.iter().zip(vals) {
                out[i] = match v {
                    Value::ServerError(e) => self.redirect(what, addr, &cmds[i].cmd, e.into())?,
                    v => v,
                };
            }
        }
        Ok(out)
    }

    /// Follows a `MOVED` (map refreshed from the new owner, the command sent there once) or an
    /// `ASK` (`ASKING` + the command at the node named); any other error reply is the error.
    fn redirect(&self, what: &str, from: &Addr, cmd: &redis::Cmd, e: RedisError) -> Result<Value> {
        let to = e
            .redirect_node()
            .and_then(|(a, _)| a.rsplit_once(':'))
            .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)));
        let Some(to) = to else {
            return Err(self.shards.node(from)?.map_err(what, &e));
        };
        let ask = e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::Ask);
        if !ask && let Err(err) = self.shards.refresh_from(&to) {
            tracing::debug!(error = %err, "cannot read the slot map after MOVED");
        }
        let b = self.shards.node(&to)?;
        let v = if ask {
            let mut p = redis::pipe();
            p.add_command(redis::cmd("ASKING")).add_command(cmd.clone());
            let packed = p.get_packed_pipeline();
            b.run(what, |c| c.as_like().req_packed_commands(&packed, 1, 1))?
                .pop()
                .unwrap_or(Value::Nil)
        } else {
            let packed = cmd.get_packed_command();
            b.run(what, |c| c.as_like().req_packed_command(&packed))?
        };
        match v {
            Value::ServerError(e) => Err(b.map_err(what, &e.into())),
            v => Ok(v),
        }
    }

    fn one(&self, what: &str, cmd: Keyed) -> Result<Value> {
        self.exec(what, std::slice::from_ref(&cmd))?
            .pop()
            .ok_or_else(|| self.parse_error(what))
    }

    fn parse_error(&self, what: &str) -> Error {
        Error::Backend {
            backend: super::NAME,
            message: format!("{what} on the Redis Cluster: an unexpected reply"),
            temporary: false,
            source: None,
        }
    }

    fn convert<T: redis::FromRedisValue>(&self, what: &str, v: Value) -> Result<T> {
        redis::from_redis_value(v).map_err(|_| self.parse_error(what))
    }

    /// `SCAN` + single-key `UNLINK`s of `pattern` on one node; the number unlinked.
    fn scan_unlink(b: &RedisBackend, pattern: &str) -> Result<u64> {
        let (mut cursor, mut removed) = (0u64, 0u64);
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = b.run("SCAN", |c| {
                commands::scan(cursor, pattern).query(c.as_like())
            })?;
            if !keys.is_empty() {
                let mut p = redis::pipe();
                for k in &keys {
                    p.add_command(commands::unlink(std::slice::from_ref(k)));
                }
                let counts: Vec<u64> = b.run("UNLINK", |c| p.query(c.as_like()))?;
                removed += counts.iter().sum::<u64>();
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }
}

impl Backend for NodeBackend {
    fn name(&self) -> &'static str {
        super::NAME
    }

    fn get(&self, key: &str) -> Result<Option<Item>> {
        let v = self.one("GET", self.keyed(key, commands::get))?;
        let v: Option<Vec<u8>> = self.convert("GET", v)?;
        Ok(v.map(Item::unflagged))
    }

    fn set(&self, key: &str, item: &Item, ttl: Option<Duration>) -> Result<()> {
        self.one(
            "SET",
            self.keyed(key, |k| commands::set(k, &item.data, ttl)),
        )?;
        Ok(())
    }

    fn delete(&self, key: &str) -> Result<bool> {
        let v = self.one("UNLINK", self.keyed(key, |k| commands::unlink(&[k])))?;
        Ok(self.convert::<u64>("UNLINK", v)? > 0)
    }

    fn add(&self, key: &str, item: &Item, ttl: Option<Duration>) -> Result<bool> {
        let v = self.one(
            "SET NX",
            self.keyed(key, |k| commands::add(k, &item.data, ttl)),
        )?;
        Ok(self.convert::<Option<String>>("SET NX", v)?.is_some())
    }

    fn incr(&self, key: &str, delta: i64, _counter: &dyn super::super::Counter) -> Result<i64> {
        let v = self.one("INCRBY", self.keyed(key, |k| commands::incr(k, delta)))?;
        let (code, value): (i64, Option<String>) = self.convert("INCRBY", v)?;
        commands::incr_reply(code, value, delta)
    }

    fn touch(&self, key: &str, ttl: Option<Duration>) -> Result<bool> {
        let v = self.one("PEXPIRE", self.keyed(key, |k| commands::touch(k, ttl)))?;
        Ok(self.convert::<i64>("PEXPIRE", v)? == 1)
    }

    fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool> {
        let what = "EVAL (compare-and-delete)";
        let v = self.one(
            what,
            self.keyed(key, |k| commands::compare_and_delete(k, expected)),
        )?;
        Ok(self.convert::<u64>(what, v)? > 0)
    }

    fn extend_lease(&self, lease: &str, token: &[u8], ttl: Duration) -> Result<bool> {
        let what = "EVAL (extend-lease)";
        let v = self.one(
            what,
            self.keyed(lease, |k| commands::extend_lease(k, token, ttl)),
        )?;
        Ok(self.convert::<u64>(what, v)? > 0)
    }

    fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        let s = &self.shards.settings;
        super::super::check_prefix(&s.namespace, prefix, s.server_flush, commands::WHOLE)?;
        let pattern = commands::prefix_pattern(&self.shards.keyspace, prefix);
        let mut n = 0;
        for addr in self.shards.nodes_of(self.scope) {
            n += Self::scan_unlink(&*self.shards.node(&addr)?, &pattern)?;
        }
        Ok(n)
    }

    fn clear(&self) -> Result<()> {
        let s = &self.shards.settings;
        super::super::scoped_clear(
            self,
            &s.namespace,
            s.server_flush,
            commands::WHOLE_FLUSH,
            || {
                for addr in self.shards.nodes_of(self.scope) {
                    self.shards
                        .node(&addr)?
                        .run("FLUSHDB", |c| commands::flushdb().query::<()>(c.as_like()))?;
                }
                Ok(())
            },
        )
    }

    /// Pings the scope's primary, then reads the slot map from it (a node that comes back may
    /// have lost or gained slots). When it does not answer, the map is read from another node:
    /// after a failover the scope's slots are on the promoted replica, which is pinged instead.
    fn ping(&self) -> Result<BackendStatus> {
        let addr = self.shards.primary(self.scope);
        match self.shards.node(&addr)?.ping() {
            Ok(st) => {
                if let Err(e) = self.shards.refresh_from(&addr) {
                    tracing::debug!(error = %e, "cannot read the slot map");
                }
                Ok(st)
            }
            Err(e) => {
                if self.shards.refresh_elsewhere(&addr) {
                    let now = self.shards.primary(self.scope);
                    if now != addr {
                        return self.shards.node(&now)?.ping();
                    }
                }
                Err(e)
            }
        }
    }

    fn info(&self) -> Result<Vec<(String, String)>> {
        self.shards.node(&self.shards.primary(self.scope))?.info()
    }

    fn keys(&self, prefix: &str, limit: usize) -> Result<Vec<crate::backend::EntryInfo>> {
        let mut out = Vec::new();
        for addr in self.shards.nodes_of(self.scope) {
            out.extend(self.shards.node(&addr)?.keys(prefix, limit)?);
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out.truncate(limit);
        Ok(out)
    }

    fn meta(&self, key: &str) -> Result<Option<crate::backend::EntryInfo>> {
        let slot = slot_of(self.shards.keyspace.storage_key(key).as_bytes());
        self.shards.node(&self.shards.owner(slot))?.meta(key)
    }

    fn close(&self) {
        let all = self
            .shards
            .backends
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for b in all.values() {
            b.close();
        }
    }

    fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Item>>> {
        let cmds: Vec<Keyed> = keys.iter().map(|k| self.keyed(k, commands::get)).collect();
        self.exec("GET (pipeline)", &cmds)?
            .into_iter()
            .map(|v| {
                let v: Option<Vec<u8>> = self.convert("GET", v)?;
                Ok(v.map(Item::unflagged))
            })
            .collect()
    }

    fn set_many(&self, items: &[(&str, Item)], ttl: Option<Duration>) -> Result<()> {
        let cmds: Vec<Keyed> = items
            .iter()
            .map(|(k, it)| self.keyed(k, |k| commands::set(k, &it.data, ttl)))
            .collect();
        self.exec("SET (pipeline)", &cmds)?;
        Ok(())
    }

    fn delete_many(&self, keys: &[&str]) -> Result<u64> {
        let cmds: Vec<Keyed> = keys
            .iter()
            .map(|k| self.keyed(k, |k| commands::unlink(&[k])))
            .collect();
        let mut n = 0;
        for v in self.exec("UNLINK (pipeline)", &cmds)? {
            n += self.convert::<u64>("UNLINK", v)?;
        }
        Ok(n)
    }
}
