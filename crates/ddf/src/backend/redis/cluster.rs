//! A Redis Cluster on the per-server seam (issue #14): a breaker per primary.
//!
//! - **Placement** ([`Shards`], a [`Partition`]): a key's slot is the CRC16 of its namespaced
//!   key as stored (or of its `{hash tag}`), and the slot map (from `CLUSTER SLOTS`) says which
//!   primary owns the slot; both pure, in [`slots`]. The map is first read in the background
//!   from the moment the backend is built (every configured node asked at once, the first
//!   answer taken): building a cache, on either face, waits for no server. The first use of
//!   the map waits for that reading, at most `connect_timeout` + `timeout` from the build
//!   ([`First`]); that wait counts against the call's own bound (`CALL_DEADLINE`: its
//!   requests, a batch's to several primaries included, get what is left of its
//!   `connect_timeout` + `timeout`; a `ping` or `info` that starts then is bounded the same
//!   way). It is read again on every `MOVED`, and each time a primary's probe reaches
//!   it. Until a node answers, the map is the split `redis-cli --cluster create` makes over the
//!   configured nodes, in their order.
//! - **Scopes**: one per configured node (`redis_cluster_nodes`, which should list the
//!   primaries), each a whole `Resilient` with its own breaker, journal scope
//!   (`redis-cluster://host:port|namespace`), outage generation and fallback entries, built by
//!   `backend::per_server` as for Memcached. A scope is a **shard**: the slots its node owned
//!   when the map was read (each node has a home scope, see [`slots::Map::apply`]). When a
//!   failover promotes a replica, the slots keep their scope and the scope's requests go to the
//!   promoted node: the invalidations recorded while the old primary was down are replayed on
//!   the node that now holds its keys, before the scope serves again, also when the promoted
//!   replica is itself listed (in any order). A slot changes scope only when the map names as
//!   its owner a node of another scope (a resharding), and only once the old scope has nothing
//!   to replay and both breakers are closed ([`ScopeState`]); until then it stays, its requests
//!   going to its new owner.
//! - **Requests** ([`NodeBackend`], the primary of one scope) go to the slot's owner over our
//!   bounded connection (`conn.rs`: one deadline per request), through a standalone
//!   [`RedisBackend`] per node (its pool, error mapping and connection set-up): a stopped
//!   primary costs one timeout, then its breaker is open and only its keys go to the fallback.
//!   Batches are one pipeline per node. The commands met by `MOVED` are sent again to the node
//!   named, grouped per node, and the map is read once per batch; `ASK` sends `ASKING` and the
//!   command to the node named (the map is not changed: the slot is only being migrated). At
//!   most three sends per command (`request.rs`).
//! - **Prefix deletes, `clear`**: each scope scans the nodes that own its slots (`SCAN` +
//!   single-key `UNLINK`s: a multi-key `UNLINK` across slots is refused by a cluster node;
//!   a slot resharded but held back in the scope counts, its new owner is scanned), then the
//!   nodes they are migrating slots to (`ASKING` + `UNLINK`). A prefix delete recorded in one
//!   scope is copied into every other scope's journal when a cache is built
//!   (`scopes::share_prefixes`): a process started after a resharding places the moved keys in
//!   their new scope at once, which so replays the record on its own nodes before serving. While
//!   a scope's node does not answer, the deletes recorded for it whose keys another scope now
//!   holds are applied through that scope (`Shards::forward_moved`, on the probe's failures).

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use redis::Value;

use self::request::Keyed;
use self::slots::{Map, migrating_to, parse_slots, slot_of, unknown};

use super::{RedisBackend, commands};
use crate::backend::resilience::REPLAY_BATCH;
use crate::backend::resilience::scopes::{Partition, ScopeSpec, ScopeState};
use crate::backend::{Backend, BackendStatus, Item};
use crate::config::{RedisEndpoint, RedisSettings, RedisTarget};
use crate::error::{Error, Result};
use crate::key::Keyspace;

pub(crate) mod request;
mod slots;

/// What a `meta` call's requests are named in errors.
pub(crate) const META: &str = "PTTL/STRLEN";

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
    /// The scopes' states, once built: a slot leaves a scope only when it may.
    states: OnceLock<Vec<ScopeState>>,
    /// The listed nodes already warned about (absent from the slot map).
    warned: Mutex<Vec<Addr>>,
    /// The first reading of the map, which its first use waits for.
    first: First,
    /// Per scope: a thread is applying its recorded deletes where their keys moved.
    forwarding: Vec<AtomicBool>,
}

/// The first reading of the slot map, made in the background from the build: the map's first
/// use waits until it is done or `until` (the build + `connect_timeout` + `timeout`) has
/// passed; later uses cost one atomic load.
struct First {
    /// Set once nobody need wait any more (the reading is over, or its time is).
    over: AtomicBool,
    /// Whether the reading is over, and the waiters' wake-up.
    done: Mutex<bool>,
    cv: Condvar,
    until: Instant,
    /// One call's bound (`connect_timeout` + `timeout`), which its wait counts against.
    budget: Duration,
}

thread_local! {
    /// The deadline of the call on this thread whose routing waited for the first slot map
    /// (its start + `connect_timeout` + `timeout`): its requests get only what is left
    /// ([`NodeBackend::exec`] reads it; a batch's requests to several scopes share it). Set by
    /// [`Partition::scope_of`] (once per batch, [`Partition::scopes_of`]) at the start of every
    /// keyed call, `None` when it did not wait, so no keyed call inherits another's; cleared by
    /// the calls that are not keyed (`ping`, `info`, `delete_prefix`), which would otherwise
    /// inherit the deadline of the last keyed call on their thread.
    static CALL_DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

impl First {
    fn new(wait: Duration) -> Self {
        First {
            over: AtomicBool::new(false),
            done: Mutex::new(false),
            cv: Condvar::new(),
            until: Instant::now() + wait,
            budget: wait,
        }
    }

    /// Whether the reading is over, without waiting.
    fn is_over(&self) -> bool {
        self.over.load(Ordering::Acquire)
    }

    /// The bound of a call that starts now: `None` when the reading is over (the call waits
    /// for nothing: its requests have their own timeouts), else now + `connect_timeout` +
    /// `timeout`, which its wait for the reading counts against.
    fn call_deadline(&self) -> Option<Instant> {
        (!self.is_over()).then(|| Instant::now() + self.budget)
    }

    /// The reading is over (answered or not): the waiters go on.
    fn finish(&self) {
        *self.done.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.over.store(true, Ordering::Release);
        self.cv.notify_all();
    }

    /// Waits until the reading is over, at most until `until`.
    fn wait(&self) {
        if self.over.load(Ordering::Acquire) {
            return;
        }
        let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        while !*done {
            let left = self.until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            done = self
                .cv
                .wait_timeout(done, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        self.over.store(true, Ordering::Release);
    }
}

impl fmt::Debug for Shards {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shards")
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

impl Partition for Shards {
    /// The scope of `key`; the first calls wait here for the first slot map, and that wait
    /// counts against the call's own bound (`CALL_DEADLINE`).
    fn scope_of(&self, key: &str) -> usize {
        self.scopes_of(&[key]).pop().unwrap_or(0)
    }

    /// The scopes of a batch; the batch waits for the first slot map once, and that wait
    /// counts against its bound (every request of the batch shares `CALL_DEADLINE`).
    fn scopes_of(&self, keys: &[&str]) -> Vec<usize> {
        let deadline = self.first.call_deadline();
        let scopes = self.place(keys);
        CALL_DEADLINE.set(deadline);
        scopes
    }

    /// Inside a call: its bound (`CALL_DEADLINE`) is left as its start set it.
    fn scope_within_call(&self, key: &str) -> usize {
        self.place(&[key]).pop().unwrap_or(0)
    }

    fn watch(&self, scopes: Vec<ScopeState>) {
        let _ = self.states.set(scopes);
    }

    /// A resharding moves keys between scopes.
    fn keys_move(&self) -> bool {
        true
    }
}

impl Shards {
    /// The shards of a cluster's settings, without waiting for any server: the slot map is
    /// asked of every configured node at once in the background, and its first use waits for
    /// the first answer, at most `connect_timeout` + `timeout` from now (when none answers, the
    /// even split, corrected by the first node that answers later). `None` for another target.
    pub(crate) fn discover(settings: &RedisSettings) -> Option<Arc<Shards>> {
        let RedisTarget::Cluster(nodes) = &settings.target else {
            return None;
        };
        let nodes: Vec<Addr> = nodes.iter().map(|a| (a.host.clone(), a.port)).collect();
        if nodes.is_empty() {
            return None;
        }
        let wait = settings.connect_timeout + settings.timeout;
        let shards = Arc::new(Shards {
            keyspace: Keyspace::new(settings.namespace.clone()),
            map: RwLock::new(Map::even(&nodes)),
            forwarding: nodes.iter().map(|_| AtomicBool::new(false)).collect(),
            nodes,
            backends: Mutex::new(HashMap::new()),
            settings: settings.clone(),
            states: OnceLock::new(),
            warned: Mutex::new(Vec::new()),
            first: First::new(wait),
        });
        let reader = shards.clone();
        let read = move || {
            if !reader.first_map(wait) {
                tracing::warn!(nodes = ?reader.nodes, "no Redis Cluster node answered CLUSTER SLOTS; keys are placed by the even split until one does");
            }
            reader.first.finish();
        };
        let spawned = std::thread::Builder::new()
            .name("ddf-cluster-map".to_owned())
            .spawn(read.clone());
        if spawned.is_err() {
            // No thread to be had: the map is read here (bounded as above).
            read();
        }
        Some(shards)
    }

    /// Asks every listed node for the slot map at once and waits for the first answer, at most
    /// `wait` (a stopped node costs nothing when another answers); whether one did.
    fn first_map(self: &Arc<Self>, wait: Duration) -> bool {
        self.ask_map(&self.nodes, wait)
    }

    /// Asks `addrs` for the slot map at once, each on a thread of its own, and waits for the
    /// first answer, at most `wait`; whether one did. A node that answers later still applies
    /// its map (read by the same rule: a stale one cannot move a slot out of a scope with
    /// records). A thread the system refuses is replaced by asking that node here.
    fn ask_map(self: &Arc<Self>, addrs: &[Addr], wait: Duration) -> bool {
        let (tx, rx) = std::sync::mpsc::channel();
        for n in addrs {
            let (shards, node, tx) = (self.clone(), n.clone(), tx.clone());
            let asked = std::thread::Builder::new()
                .name("ddf-cluster-map".to_owned())
                .spawn(move || {
                    let _ = tx.send(shards.refresh_from(&node).is_ok());
                });
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

    /// The scopes of `keys` by the map (waiting for its first reading).
    fn place(&self, keys: &[&str]) -> Vec<usize> {
        let map = self.read();
        keys.iter()
            .map(|k| {
                let slot = slot_of(self.keyspace.storage_key(k).as_bytes());
                usize::from(map.scope[usize::from(slot)])
            })
            .collect()
    }

    /// While `scope`'s node does not answer (its probe's ping just failed): applies the
    /// deletes recorded for `scope` (by any process) whose keys this process now places in
    /// another scope, one whose breaker is closed, through that scope (to the key's owner).
    /// Another process whose map had not seen a resharding recorded them in the old scope;
    /// this one, having moved the slot, reads the key from its new owner, and the old scope
    /// replays only once its own node answers again: until then the deleted value would be
    /// read. Applied on every failed ping (a delete is harmless twice); the records stay, for
    /// the old scope's replay. Run on a thread of its own, at most one per scope at a time, so
    /// that the ping that failed (a user's `ping` or `stats` too) does not wait for the journal
    /// read or the deletes; sent in batches of `REPLAY_BATCH` keys, each with its own timeout.
    fn forward_moved(self: &Arc<Self>, scope: usize) {
        let Some(busy) = self.forwarding.get(scope) else {
            return;
        };
        if busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("ddf-cluster-forward".to_owned())
            .spawn(move || {
                me.forward_now(scope);
                if let Some(busy) = me.forwarding.get(scope) {
                    busy.store(false, Ordering::Release);
                }
            });
        if let Err(e) = spawned {
            tracing::debug!(error = %e, "cannot start applying recorded deletes where their keys moved; the next probe tries again");
            busy.store(false, Ordering::Release);
        }
    }

    /// [`Shards::forward_moved`]'s work.
    fn forward_now(self: &Arc<Self>, scope: usize) {
        let Some(states) = self.states.get() else {
            return;
        };
        let Some(keys) = states.get(scope).and_then(ScopeState::recorded_deletes) else {
            return;
        };
        if keys.is_empty() {
            return;
        }
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let mut per: Vec<Vec<&str>> = vec![Vec::new(); states.len()];
        for (k, to) in refs.iter().zip(self.place(&refs)) {
            if to != scope
                && states.get(to).is_some_and(ScopeState::is_up)
                && let Some(keys) = per.get_mut(to)
            {
                keys.push(k);
            }
        }
        for (to, keys) in per.iter().enumerate() {
            let through = NodeBackend {
                shards: self.clone(),
                scope: to,
            };
            for batch in keys.chunks(REPLAY_BATCH) {
                match through.delete_many(batch) {
                    Ok(_) => tracing::debug!(
                        keys = batch.len(),
                        "deletes recorded in a scope whose node is down applied where their keys moved"
                    ),
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot apply recorded deletes where their keys moved");
                        break;
                    }
                }
            }
        }
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
                    factory: Box::new(move || Ok(shards.scope_backend(scope))),
                }
            })
            .collect()
    }

    /// A command for `key` (namespaced as stored), with its slot.
    pub(crate) fn keyed(&self, key: &str, f: impl FnOnce(&str) -> redis::Cmd) -> Keyed {
        let k = self.keyspace.storage_key(key);
        Keyed {
            slot: slot_of(k.as_bytes()),
            cmd: f(&k),
        }
    }

    /// `PTTL` and `STRLEN` of `key`, for one pipeline to its owner (both faces' `meta`; their
    /// replies make the entry in [`Shards::meta_entry`]).
    pub(crate) fn meta_commands(&self, key: &str) -> [Keyed; 2] {
        [
            self.keyed(key, |k| redis::cmd("PTTL").arg(k).clone()),
            self.keyed(key, |k| redis::cmd("STRLEN").arg(k).clone()),
        ]
    }

    /// The entry of `key` from the replies to [`Shards::meta_commands`]; `None` when it is gone.
    ///
    /// # Errors
    /// `request::parse_error` when the replies are not two integers.
    pub(crate) fn meta_entry(
        &self,
        key: &str,
        vals: Vec<Value>,
    ) -> Result<Option<crate::backend::EntryInfo>> {
        let [pttl, size] = <[Value; 2]>::try_from(vals).map_err(|_| request::parse_error(META))?;
        let pttl: i64 = request::convert("PTTL", pttl)?;
        let size: i64 = request::convert("STRLEN", size)?;
        let stored = self.keyspace.storage_key(key);
        let owner = self.owner(slot_of(stored.as_bytes()));
        Ok(self
            .node(&owner)?
            .entry(stored.as_bytes(), pttl, size.max(0) as u64))
    }

    /// Whether the first reading of the map is over: routing waits for nothing.
    #[cfg(feature = "async")]
    pub(crate) fn first_read(&self) -> bool {
        self.first.is_over()
    }

    /// Waits (blocking) until the first reading is over or its time is.
    #[cfg(feature = "async")]
    pub(crate) fn wait_first(&self) {
        self.first.wait();
    }

    /// One call's bound (`connect_timeout` + `timeout`), which a wait for the first reading
    /// counts against.
    #[cfg(feature = "async")]
    pub(crate) fn budget(&self) -> Duration {
        self.first.budget
    }

    /// The sync primary of `scope` (what each scope's requests go through on the sync face).
    pub(crate) fn scope_backend(self: &Arc<Self>, scope: usize) -> Arc<dyn Backend> {
        Arc::new(NodeBackend {
            shards: self.clone(),
            scope,
        })
    }

    /// The map, once its first reading is over (or its time is).
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Map> {
        self.first.wait();
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The node that owns `slot` by the map now.
    pub(crate) fn owner(&self, slot: u16) -> Addr {
        let map = self.read();
        map.addrs[usize::from(map.owner[usize::from(slot)])].clone()
    }

    /// The nodes a scope's probe pings: every owner of one of its slots, or, when it holds
    /// none (a listed replica), its listed node.
    fn probed(&self, scope: usize) -> Vec<Addr> {
        let owners = self.read().owners_of(scope);
        if owners.is_empty() {
            return self.nodes.get(scope).cloned().into_iter().collect();
        }
        owners
    }

    /// The nodes that own a slot of `scope` (none when it holds no slot, a listed replica:
    /// nothing of ours is there).
    fn nodes_of(&self, scope: usize) -> Vec<Addr> {
        self.read().owners_of(scope)
    }

    /// The nodes `owners` are migrating slots to, not among them (one `CLUSTER NODES` each):
    /// a node importing its first slot is in no scope yet, but holds the keys already moved
    /// to it. A node that refuses the command names none.
    ///
    /// # Errors
    /// A node that does not answer (its scan would not either).
    fn migrating_to(&self, owners: &[Addr]) -> Result<Vec<Addr>> {
        let mut out: Vec<Addr> = Vec::new();
        for addr in owners {
            let text = self.node(addr).and_then(|b| {
                b.run("CLUSTER NODES", |c| {
                    commands::cluster_nodes().query::<String>(c.as_like())
                })
            });
            match text {
                Ok(text) => {
                    for to in migrating_to(&text, &addr.0) {
                        if !owners.contains(&to) && !out.contains(&to) {
                            out.push(to);
                        }
                    }
                }
                // The node did not answer: its scan would not either.
                Err(e) if e.is_temporary() => return Err(e),
                // `CLUSTER NODES` refused (renamed, say): its own keys are still scanned.
                Err(e) => tracing::debug!(error = %e, "cannot read the slots being migrated"),
            }
        }
        Ok(out)
    }

    /// The standalone backend of one node (made on first use).
    pub(crate) fn node(&self, addr: &Addr) -> Result<Arc<RedisBackend>> {
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
                .req_command(&slots_command())
                .and_then(|v| v.extract_error())
        })?;
        self.apply_slots(addr, &v)
    }

    /// Applies `addr`'s reply to `CLUSTER SLOTS` (read by either face's connection).
    ///
    /// # Errors
    /// A reply that is not a slot map.
    pub(crate) fn apply_slots(&self, addr: &Addr, v: &Value) -> Result<()> {
        let Some(ranges) = parse_slots(v, &addr.0) else {
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
        self.warn_unknown(&ranges);
        // A slot leaves a scope only when that scope has nothing to replay and its breaker is
        // closed, into a scope whose breaker is closed: a key recorded while its scope was
        // down is never read through another scope first. Until the first reading is over
        // (answered, or its time up: the calls waiting for it then go on with the even
        // split), no call has placed a key by the even split's guess, so every slot goes to
        // its owner's scope whatever the scopes' states: a record another process made there
        // is then met, never bypassed by the guessed scope. Checked under the map's write lock:
        // a call that stops waiting marks the reading over before it reads the map. A first
        // answer after that follows the rule like any later one.
        let mut may_move = |from: u16, to: u16| match self.states.get() {
            _ if !self.first.is_over() => true,
            None => true,
            Some(states) => {
                states
                    .get(usize::from(from))
                    .is_some_and(ScopeState::is_settled)
                    && states.get(usize::from(to)).is_some_and(ScopeState::is_up)
            }
        };
        let done = self.map.write().unwrap_or_else(|p| p.into_inner()).apply(
            &self.nodes,
            &ranges,
            &mut may_move,
        );
        if done.changed {
            tracing::info!(from = %format!("{}:{}", addr.0, addr.1), ranges = ranges.len(), "Redis Cluster slot map changed");
        }
        if done.held_back > 0 {
            tracing::debug!(
                slots = done.held_back,
                "resharded slots stay in their scope until it has replayed its records"
            );
        }
        Ok(())
    }

    /// Warns once per listed node that the slot map names nowhere (neither a primary nor a
    /// replica): its scope never holds a slot, and when it is listed under another name than
    /// the cluster announces, its slots fall into the even split's guess.
    fn warn_unknown(&self, ranges: &[slots::Range]) {
        let missing = unknown(&self.nodes, ranges);
        if missing.is_empty() {
            return;
        }
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        for (host, port) in missing {
            if warned.iter().any(|w| w.0 == *host && w.1 == *port) {
                continue;
            }
            warned.push((host.clone(), *port));
            tracing::warn!(node = %format!("{host}:{port}"), "a node of redis_cluster_nodes is not in the cluster's slot map (CLUSTER SLOTS) as a primary or a replica: list the nodes as the cluster announces them (the same host names or addresses)");
        }
    }

    /// Reads the map from the nodes that may know it (the listed nodes and the owners of a
    /// slot now; an address seen once and owning nothing is not asked again) but `skip`, all
    /// at once, the first answer taken (at most `connect_timeout` + `timeout`); whether one
    /// did.
    fn refresh_elsewhere(self: &Arc<Self>, skip: &Addr) -> bool {
        let mut ask: Vec<Addr> = self.nodes.clone();
        {
            let map = self.read();
            for a in map.owners() {
                if !ask.contains(a) {
                    ask.push(a.clone());
                }
            }
        }
        ask.retain(|a| a != skip);
        let wait = self.settings.connect_timeout + self.settings.timeout;
        self.ask_map(&ask, wait)
    }
}

/// `CLUSTER SLOTS`.
pub(crate) fn slots_command() -> redis::Cmd {
    let mut c = redis::cmd("CLUSTER");
    c.arg("SLOTS");
    c
}

/// The primary of one scope: requests for its keys, sent to the owner of each key's slot.
#[derive(Debug, Clone)]
pub(crate) struct NodeBackend {
    shards: Arc<Shards>,
    scope: usize,
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

    /// `GET` and `PTTL` pipelined to the key's owner (redirects followed as for any request),
    /// as the standalone backend does for the near cache's fill; the node that answered the
    /// `GET` is noted (`degraded::note_answered`): the near cache stores the reply only from a
    /// node it tracks.
    fn get_expiring(&self, key: &str) -> Result<Option<(Item, crate::backend::Expiry)>> {
        let get = self.keyed(key, commands::get);
        let pttl = self.keyed(key, |k| redis::cmd("PTTL").arg(k).clone());
        let (vals, answered) = self.exec_from("GET/PTTL", &[get, pttl], Some(0))?;
        if let Some(a) = &answered {
            crate::backend::degraded::note_answered(a);
        }
        let [v, pttl] = <[Value; 2]>::try_from(vals).map_err(|_| self.parse_error("GET/PTTL"))?;
        let v: Option<Vec<u8>> = self.convert("GET", v)?;
        let pttl: i64 = self.convert("PTTL", pttl)?;
        Ok(v.map(|v| (Item::unflagged(v), commands::expiry(pttl))))
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
        CALL_DEADLINE.set(None);
        let s = &self.shards.settings;
        super::super::check_prefix(&s.namespace, prefix, s.server_flush, commands::WHOLE)?;
        let pattern = commands::prefix_pattern(&self.shards.keyspace, prefix);
        let mut n = 0;
        let owners = self.shards.nodes_of(self.scope);
        for addr in &owners {
            n += Self::scan_unlink(&*self.shards.node(addr)?, &pattern, false)?;
        }
        for addr in self.shards.migrating_to(&owners)? {
            n += Self::scan_unlink(&*self.shards.node(&addr)?, &pattern, true)?;
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

    /// Pings every node that owns one of the scope's slots (the scope is up only when all
    /// answer), then reads the slot map from the first (a node that comes back may have lost
    /// or gained slots). When one does not answer, the map is read from another node and the
    /// owners pinged once more: after a failover the scope's slots are on the promoted
    /// replica, which is pinged instead.
    ///
    /// A ping that starts before the first slot map is read (the start-up recovery, `ping`
    /// and `stats` at once after the build) is bounded like the first call: its
    /// `connect_timeout` and `timeout` from its start, the map wait included.
    fn ping(&self) -> Result<BackendStatus> {
        // Not a keyed call: a deadline a keyed call left on this thread is not ours.
        CALL_DEADLINE.set(None);
        let Some(deadline) = self.shards.first.call_deadline() else {
            return self.ping_now();
        };
        let me = self.clone();
        self.within(deadline, "PING", move || me.ping_now())
    }

    /// The first owner's `INFO`; bounded like [`NodeBackend::ping`] before the first slot map.
    fn info(&self) -> Result<Vec<(String, String)>> {
        CALL_DEADLINE.set(None);
        let Some(deadline) = self.shards.first.call_deadline() else {
            return self.info_now();
        };
        let me = self.clone();
        self.within(deadline, "INFO", move || me.info_now())
    }

    fn keys(&self, prefix: &str, limit: usize) -> Result<Vec<crate::backend::EntryInfo>> {
        let mut out = Vec::new();
        for addr in self.shards.nodes_of(self.scope) {
            // A node can own slots of two scopes (a resharded slot waiting to move): each
            // scope lists only its own keys, so none is listed twice.
            let found = self.shards.node(&addr)?.keys(prefix, limit)?;
            out.extend(
                found
                    .into_iter()
                    .filter(|e| self.shards.scope_of(&e.key) == self.scope),
            );
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out.truncate(limit);
        Ok(out)
    }

    /// `PTTL` and `STRLEN` of the key, one pipeline to its owner, redirects followed as for
    /// any request.
    fn meta(&self, key: &str) -> Result<Option<crate::backend::EntryInfo>> {
        let cmds = self.shards.meta_commands(key);
        let vals = self.exec(META, &cmds)?;
        self.shards.meta_entry(key, vals)
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

impl NodeBackend {
    /// [`Backend::ping`]'s work, unbounded but by each request's timeouts.
    fn ping_now(&self) -> Result<BackendStatus> {
        let mut before: Vec<Addr> = Vec::new();
        loop {
            let owners = self.shards.probed(self.scope);
            let mut answers = Vec::with_capacity(owners.len());
            let mut failed = None;
            for addr in &owners {
                match self.shards.node(addr)?.ping() {
                    Ok(st) => answers.push(st.detail),
                    Err(e) => {
                        failed = Some((addr.clone(), e));
                        break;
                    }
                }
            }
            match failed {
                None => {
                    if let Some(first) = owners.first()
                        && let Err(e) = self.shards.refresh_from(first)
                    {
                        tracing::debug!(error = %e, "cannot read the slot map");
                    }
                    return Ok(BackendStatus {
                        detail: answers.join(", "),
                    });
                }
                Some((addr, e)) => {
                    if !before.is_empty()
                        || !self.shards.refresh_elsewhere(&addr)
                        || self.shards.probed(self.scope) == owners
                    {
                        self.shards.forward_moved(self.scope);
                        return Err(e);
                    }
                    before = owners;
                }
            }
        }
    }

    /// [`Backend::info`]'s work.
    fn info_now(&self) -> Result<Vec<(String, String)>> {
        let first = self.shards.probed(self.scope).into_iter().next();
        let Some(addr) = first else {
            return Ok(Vec::new());
        };
        self.shards.node(&addr)?.info()
    }
}
