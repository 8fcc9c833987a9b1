//! A Redis Cluster on the per-server seam (issue #14): a breaker per primary.
//!
//! - **Placement** ([`Shards`], a [`Partition`]): a key's slot is the CRC16 of its namespaced
//!   key as stored (or of its `{hash tag}`), and the slot map (from `CLUSTER SLOTS`) says which
//!   primary owns the slot. The map is read when the backend is built (the first configured
//!   node that answers), again on every `MOVED`, and each time a primary's probe reaches it.
//!   Until a node answers, the map is the even split `redis-cli --cluster create` makes over the
//!   configured nodes, in their order.
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

use super::{RedisBackend, commands};
use crate::backend::resilience::scopes::{Partition, ScopeSpec};
use crate::backend::{Backend, BackendStatus, Item};
use crate::config::{RedisEndpoint, RedisSettings, RedisTarget};
use crate::error::{Error, Result};
use crate::key::Keyspace;

/// The number of hash slots of a Redis Cluster.
const SLOTS: usize = 16384;

/// A node's address, as the cluster announces it.
pub(crate) type Addr = (String, u16);

/// The slot of a key as stored: CRC16 (XMODEM) of the key, or of its hash tag (the bytes
/// between the first `{` and the next `}`, when not empty), modulo 16384.
///
/// Written here because redis-rs computes it (`Slot::for_key`) but does not expose the number.
pub(crate) fn slot_of(key: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in hash_tag(key).unwrap_or(key) {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % SLOTS as u16
}

fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let rest = &key[open + 1..];
    let close = rest.iter().position(|&b| b == b'}')?;
    (close > 0).then(|| &rest[..close])
}

/// One range of `CLUSTER SLOTS`: its slots and its primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Range {
    first: u16,
    last: u16,
    primary: Addr,
}

/// The ranges of a `CLUSTER SLOTS` reply (`[[first, last, [host, port, id, ...], replicas...],
/// ...]`), pure. A primary announced without a host (an empty or `?` endpoint) is at `asked`'s
/// host, the node that answered. `None` when the reply is not that shape.
pub(crate) fn parse_slots(v: &Value, asked: &str) -> Option<Vec<Range>> {
    let int = |v: &Value| match v {
        Value::Int(n) => u16::try_from(*n).ok(),
        _ => None,
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let Value::Array(ranges) = v else {
        return None;
    };
    let mut out = Vec::with_capacity(ranges.len().min(SLOTS));
    for r in ranges {
        let Value::Array(f) = r else { return None };
        let (first, last) = (int(f.first()?)?, int(f.get(1)?)?);
        let Value::Array(node) = f.get(2)? else {
            return None;
        };
        let host = text(node.first()?)?;
        let port = int(node.get(1)?)?;
        let host = if host.is_empty() || host == "?" {
            asked.to_owned()
        } else {
            host
        };
        if first > last || usize::from(last) >= SLOTS || port == 0 {
            return None;
        }
        out.push(Range {
            first,
            last,
            primary: (host, port),
        });
    }
    Some(out)
}

/// The slot map: which scope and which node each slot belongs to.
#[derive(Debug)]
struct Map {
    /// Per slot: its scope (an index into the configured nodes).
    scope: Vec<u16>,
    /// Per slot: its owner (an index into `addrs`).
    owner: Vec<u16>,
    /// Every primary seen; the configured nodes first, in their order.
    addrs: Vec<Addr>,
    /// Per scope: the node (index into `addrs`) its probe pings.
    primary: Vec<u16>,
    /// Whether a node has answered `CLUSTER SLOTS` yet.
    known: bool,
}

impl Map {
    /// The split `redis-cli --cluster create` makes over `n` nodes: node `i` gets up to slot
    /// `round((i + 1) * 16384 / n - 1)`, the last node the rest.
    fn even(nodes: &[Addr]) -> Map {
        let n = nodes.len().max(1);
        let per = SLOTS as f64 / n as f64;
        let mut scope = vec![0u16; SLOTS];
        let mut first = 0usize;
        for i in 0..n {
            let last = if i + 1 == n {
                SLOTS - 1
            } else {
                (((i + 1) as f64 * per - 1.0).round() as usize).clamp(first, SLOTS - 1)
            };
            for s in scope.iter_mut().take(last + 1).skip(first) {
                *s = i as u16;
            }
            first = last + 1;
        }
        Map {
            owner: scope.clone(),
            scope,
            addrs: nodes.to_vec(),
            primary: (0..n as u16).collect(),
            known: false,
        }
    }

    fn index(&mut self, a: &Addr) -> u16 {
        match self.addrs.iter().position(|x| x == a) {
            Some(i) => i as u16,
            None => {
                self.addrs.push(a.clone());
                (self.addrs.len() - 1) as u16
            }
        }
    }

    /// Takes the ranges a node announced; whether a slot changed owner. The scope rule (see
    /// the module docs): at the first reading, a listed node's slots are its scope; later, a
    /// node that held slots before takes a slot into its scope (a resharding), while a node that
    /// held none (a promoted replica, listed or not) takes the slots over in the scope they were
    /// in (a failover), whose probe then pings it.
    fn apply(&mut self, nodes: &[Addr], ranges: &[Range]) -> bool {
        let first_reading = !self.known;
        let mut held = vec![false; self.addrs.len()];
        for &o in &self.owner {
            if let Some(h) = held.get_mut(usize::from(o)) {
                *h = true;
            }
        }
        let mut changed = false;
        for r in ranges {
            let owner = self.index(&r.primary);
            let listed = nodes.iter().position(|n| *n == r.primary).map(|i| i as u16);
            let led = self
                .primary
                .iter()
                .position(|&p| p == owner)
                .map(|i| i as u16);
            let current = self.scope[usize::from(r.first)];
            let scope = if first_reading {
                listed.or(led).unwrap_or(current)
            } else if held.get(usize::from(owner)).copied().unwrap_or(false) {
                led.or(listed).unwrap_or(current)
            } else {
                current
            };
            for s in usize::from(r.first)..=usize::from(r.last) {
                changed |= self.owner[s] != owner;
                self.scope[s] = scope;
                self.owner[s] = owner;
            }
            if let Some(p) = self.primary.get_mut(usize::from(scope)) {
                *p = owner;
            }
        }
        self.known = true;
        changed
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(nodes: &[(&str, u16)]) -> Vec<Addr> {
        nodes.iter().map(|(h, p)| ((*h).to_owned(), *p)).collect()
    }

    #[test]
    fn slots_follow_the_cluster_spec() {
        // The specification's test vector: CRC16("123456789") = 0x31C3.
        assert_eq!(slot_of(b"123456789"), 0x31C3);
        assert_eq!(slot_of(b"foo"), 12182);
        // A hash tag: only the part in braces counts; an empty tag does not.
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        assert_eq!(slot_of(b"foo{}{bar}"), slot_of(b"foo{}{bar}"));
        assert_ne!(slot_of(b"foo{}{bar}"), slot_of(b"bar"));
        assert_eq!(slot_of(b"foo{{bar}}zap"), slot_of(b"{bar"));
    }

    fn range(first: i64, last: i64, host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::Int(first),
            Value::Int(last),
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ]),
        ])
    }

    #[test]
    fn slot_map_parsing() {
        let v = Value::Array(vec![
            range(0, 5460, "10.0.0.1", 7000),
            range(5461, 16383, "", 7001),
        ]);
        let r = parse_slots(&v, "10.0.0.9").unwrap();
        assert_eq!(r[0].primary, ("10.0.0.1".to_owned(), 7000));
        assert_eq!(r[1].primary, ("10.0.0.9".to_owned(), 7001));
        assert_eq!((r[1].first, r[1].last), (5461, 16383));
        assert!(parse_slots(&Value::Int(3), "x").is_none());
        assert!(parse_slots(&Value::Array(vec![range(5, 4, "h", 1)]), "x").is_none());
        assert!(parse_slots(&Value::Array(vec![range(0, 16384, "h", 1)]), "x").is_none());
    }

    #[test]
    fn a_promoted_replica_keeps_the_shard_and_a_resharding_moves_slots() {
        let nodes = addrs(&[("a", 1), ("b", 2)]);
        let three = addrs(&[("a", 1), ("b", 2), ("c", 3)]);
        let m = Map::even(&three);
        // What `redis-cli --cluster create` assigns: 0-5460, 5461-10922, 10923-16383.
        assert_eq!((m.scope[5460], m.scope[5461]), (0, 1));
        assert_eq!((m.scope[10922], m.scope[10923], m.scope[16383]), (1, 2, 2));
        let mut m = Map::even(&nodes);
        assert_eq!((m.scope[8191], m.scope[8192], m.scope[16383]), (0, 1, 1));
        let r = |first, last, h: &str, p| Range {
            first,
            last,
            primary: (h.to_owned(), p),
        };
        // The real map: b owns the start.
        assert!(m.apply(&nodes, &[r(0, 99, "b", 2), r(100, 16383, "a", 1)]));
        assert_eq!((m.scope[0], m.scope[100]), (1, 0));
        // a's replica c is promoted: its slots stay in a's scope, whose probe now pings c.
        m.apply(&nodes, &[r(0, 99, "b", 2), r(100, 16383, "c", 3)]);
        assert_eq!(m.scope[100], 0);
        assert_eq!(m.addrs[usize::from(m.primary[0])], ("c".to_owned(), 3));
        assert_eq!(m.addrs[usize::from(m.owner[100])], ("c".to_owned(), 3));
        // One slot resharded to b: it moves to b's scope.
        m.apply(&nodes, &[r(0, 100, "b", 2), r(101, 16383, "c", 3)]);
        assert_eq!((m.scope[100], m.scope[101]), (1, 0));

        // Every node listed, replicas too: a listed replica that is promoted takes the shard
        // over in its primary's scope (where the records of the primary's outage are), not in
        // its own.
        let all = addrs(&[("a", 1), ("b", 2), ("a2", 3)]);
        let mut m = Map::even(&all);
        m.apply(&all, &[r(0, 8191, "a", 1), r(8192, 16383, "b", 2)]);
        assert_eq!((m.scope[0], m.scope[8192]), (0, 1));
        m.apply(&all, &[r(0, 8191, "a2", 3), r(8192, 16383, "b", 2)]);
        assert_eq!(m.scope[0], 0);
        assert_eq!(m.addrs[usize::from(m.primary[0])], ("a2".to_owned(), 3));
        // Failback (a is promoted again): still the same scope.
        m.apply(&all, &[r(0, 8191, "a", 1), r(8192, 16383, "b", 2)]);
        assert_eq!(m.scope[0], 0);
        assert_eq!(m.addrs[usize::from(m.primary[0])], ("a".to_owned(), 1));
    }
}
