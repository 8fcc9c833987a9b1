//! A breaker per server: [`PerScope`] routes each key to the [`Resilient`] of the server (the
//! *scope*) that holds it, so that one server down sends only its own keys to the fallback.
//!
//! The seam is [`Partition`]: a backend whose keys live on several independent servers says
//! which scope a key belongs to (`scope_of`), and builds a primary that serves one scope alone.
//! Memcached implements it with pymemcache's placement over **every** configured server: a down
//! server is never removed from the ring, its keys go to the fallback and never to another
//! server, so no second copy can go stale. A Redis Cluster implements it with the key's hash
//! slot (`redis/cluster.rs`: one scope per listed node, a failover keeps the slots in their
//! scope, a resharding moves them).
//!
//! Each scope is a whole [`Resilient`]: the one pure breaker state machine
//! ([`Breaker`](super::breaker::Breaker)), its journal scope (`memcached://host:port|namespace`),
//! its outage generation, its fallback entries and its background loop (probe, replay, journal
//! watcher). What is per-server is only the set of instances and the scope string.
//!
//! Operations on one key go to its scope; batches are split by scope; `delete_prefix` and
//! `clear` run on every scope (applied to the servers that are up, recorded and applied to the
//! fallback for the others), and report the first error after every scope was tried.
//!
//! Here: the seam ([`Partition`]) and the sync router ([`PerScope`]). Beside it: `routing.rs`,
//! the routing decisions both faces' routers make ([`Routing`], [`Tally`]); `build.rs`, how the
//! scopes are built and why each is down ([`ScopeSpec`], [`build_all`], [`Cause`]); `moves.rs`,
//! the records that cross scopes (the whole list's, a resharding's: [`adopt_legacy`],
//! [`ScopeState`], [`PerScope::follow_moves`]).

mod build;
mod moves;
mod routing;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::Resilient;
use super::breaker::Health;
use crate::backend::{Backend, BackendStatus, Item};
use crate::error::{Error, Result};
#[cfg(test)]
use crate::key::LEASE_PREFIX;

pub(crate) use build::{Cause, ScopeSpec, build_all, watched};
#[cfg(test)]
use moves::share_prefixes;
pub(crate) use moves::{ScopeState, adopt_legacy};
pub(crate) use routing::{Nothing, Routing, Tally};

/// How a backend's keys are spread over independent servers (scopes).
pub(crate) trait Partition: Send + Sync + fmt::Debug + 'static {
    /// The scope (an index into the scopes the backend was built with) that holds `key`, a user
    /// key. Never changes for a key while the configuration is the same, whatever the servers'
    /// state, except on a Redis Cluster when a resharding moves the key's slot to another
    /// primary (once the old scope has nothing to replay: see [`Partition::watch`] and
    /// `redis/cluster.rs`).
    fn scope_of(&self, key: &str) -> usize;

    /// The scopes of a batch's keys, in order: one call (a batch), so that a partition that
    /// bounds a call by when it started (a Redis Cluster's first slot-map wait) sees it once.
    fn scopes_of(&self, keys: &[&str]) -> Vec<usize> {
        keys.iter().map(|k| self.scope_of(k)).collect()
    }

    /// The scope of `key` asked in the middle of a call ([`PerScope::follow_moves`]), which
    /// must not count as a new call's start. The default is [`Partition::scope_of`].
    fn scope_within_call(&self, key: &str) -> usize {
        self.scope_of(key)
    }

    /// Told once the scopes are built (in their order) how to see their state: a partition
    /// that can move a key from one scope to another (a Redis Cluster's resharding) moves it
    /// only out of a scope with nothing to replay. The default ignores it.
    fn watch(&self, _scopes: Vec<ScopeState>) {}

    /// Whether a key can change scope while servers keep it (a Redis Cluster's resharding):
    /// then a prefix delete or `clear` recorded in one scope may concern keys another scope
    /// holds by the time it is replayed ([`share_prefixes`](moves::share_prefixes)). The default is no (Memcached).
    fn keys_move(&self) -> bool {
        false
    }

    /// Whether a `get_or_set` lease (`ddf-lease:<key>`,
    /// [`LEASE_PREFIX`](crate::key::LEASE_PREFIX)) is placed in the scope of the key it
    /// guards by the lease operations (`take_lease`, `release_lease`, `extend_lease`,
    /// `set_if_lease`'s fence; any other call places a key by itself, whatever its text), so
    /// that the store fenced by it (`set_if_lease`) finds the lease in the same scope: on the
    /// same server, and during that server's outage in the same fallback entries, where the
    /// fence holds as with one server. Memcached says yes
    /// (the router chooses the server; no other client reads a lease). The default is no (a
    /// Redis Cluster: a request goes to its slot's owner whatever the scope, so a lease in
    /// its key's scope would count its own node's failures against another scope's breaker).
    fn leases_follow_keys(&self) -> bool {
        false
    }
}

/// One server's breaker, fallback, journal scope and background loop.
pub(crate) struct Scope {
    label: String,
    resilient: Arc<Resilient>,
    cause: Arc<Cause>,
}

impl Scope {
    /// A scope made of its label, its [`Resilient`] (built on a [`watched`] factory) and the
    /// [`Cause`] that factory notes failures in.
    pub(crate) fn new(label: String, resilient: Resilient, cause: Arc<Cause>) -> Self {
        Scope {
            label,
            resilient: Arc::new(resilient),
            cause,
        }
    }

    /// The scope's state for `stats` and `ping`: `up`, `down (why)` or `recovering (...)`.
    fn state(&self) -> String {
        match self.resilient.health() {
            Health::Up => "up".to_owned(),
            Health::Down => match self.cause.get() {
                Some(why) => format!("down ({why}); its keys are served by the fallback"),
                None => Health::Down.to_string(),
            },
            h @ Health::Recovering => h.to_string(),
        }
    }
}

/// Keys routed to the breaker of the server that holds them (see the module docs).
pub(crate) struct PerScope {
    name: &'static str,
    routing: Routing,
    scopes: Vec<Scope>,
}

impl fmt::Debug for PerScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerScope")
            .field("name", &self.name)
            .field(
                "scopes",
                &self
                    .scopes
                    .iter()
                    .map(|s| (&s.label, s.resilient.health()))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl PerScope {
    /// Routes keys over `scopes` (in the order `partition` numbers them).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `scopes` is empty.
    pub(crate) fn new(
        name: &'static str,
        partition: Arc<dyn Partition>,
        scopes: Vec<Scope>,
    ) -> Result<Self> {
        if scopes.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{name}: no server to route keys to: list at least one"
            )));
        }
        partition.watch(
            scopes
                .iter()
                .map(|s| ScopeState(Arc::downgrade(&s.resilient.shared)))
                .collect(),
        );
        Ok(PerScope {
            name,
            routing: Routing::new(partition, scopes.len()),
            scopes,
        })
    }

    fn scope(&self, key: &str) -> &Resilient {
        &self.scopes[self.index(key)].resilient
    }

    /// The scope of a lease, in a lease operation ([`Routing::lease_index`]).
    fn lease_scope(&self, lease: &str) -> &Resilient {
        &self.scopes[self.routing.lease_index(lease)].resilient
    }

    fn index(&self, key: &str) -> usize {
        self.routing.index(key)
    }

    #[cfg(all(feature = "async", any(feature = "memcached", feature = "redis")))]
    /// The routing decisions (for the async face's router over the same scopes).
    pub(crate) fn routing(&self) -> &Routing {
        &self.routing
    }

    #[cfg(all(feature = "async", any(feature = "memcached", feature = "redis")))]
    /// Each scope's breaker, fallback and journal, and where the reason it is down is noted,
    /// in order (the async face's router drives them through its own primaries).
    pub(crate) fn states(&self) -> impl Iterator<Item = (&Arc<Resilient>, &Arc<Cause>)> {
        self.scopes.iter().map(|s| (&s.resilient, &s.cause))
    }

    /// Runs `op` on every scope at once, one thread each (this thread takes the first scope),
    /// so that a call spanning the servers (two of them stopped, say) waits for the slowest,
    /// not for the sum. A thread the system refuses is replaced by running on this one. A
    /// temporary failure or a fallback answer met on a helper thread is noted on this one
    /// (memoization and the manager's `fallback` counter read them). Results in scope order.
    fn fan_out<T: Send>(&self, op: impl Fn(&Scope) -> T + Sync) -> Vec<T> {
        use crate::backend::degraded;
        let Some((first, rest)) = self.scopes.split_first() else {
            return Vec::new();
        };
        let op = &op;
        let watched = move |scope: &Scope| {
            let watch = degraded::Watch::start();
            let fallback = degraded::FallbackWatch::start();
            let v = op(scope);
            (v, watch.failed(), fallback.served())
        };
        std::thread::scope(|s| {
            let handles: Vec<_> = rest
                .iter()
                .map(|scope| {
                    let h = std::thread::Builder::new()
                        .name("ddf-scope".to_owned())
                        .spawn_scoped(s, move || watched(scope))
                        .ok();
                    (scope, h)
                })
                .collect();
            let mut out = Vec::with_capacity(self.scopes.len());
            out.push(op(first));
            for (scope, h) in handles {
                match h.map(std::thread::ScopedJoinHandle::join) {
                    Some(Ok((v, failed, served))) => {
                        if failed {
                            degraded::note_temporary_failure();
                        }
                        if served {
                            degraded::note_fallback();
                        }
                        out.push(v);
                    }
                    // Not started (or it panicked, which library code does not): run it here.
                    _ => out.push(op(scope)),
                }
            }
            out
        })
    }

    /// Runs `op` on every scope, at once (none is skipped because another failed), and returns
    /// the results combined by `add`, or the first error (the others are logged).
    fn on_every<T: Send>(
        &self,
        what: &str,
        zero: T,
        add: impl Fn(T, T) -> T,
        op: impl Fn(&Resilient) -> Result<T> + Sync,
    ) -> Result<T> {
        let mut acc = zero;
        let mut first: Option<Error> = None;
        let results = self.fan_out(|s| op(&s.resilient));
        for (s, r) in self.scopes.iter().zip(results) {
            match r {
                Ok(v) => acc = add(acc, v),
                Err(e) => {
                    if first.is_some() {
                        tracing::warn!(server = %s.label, error = %e, "{what} failed on this server too");
                    } else {
                        first = Some(e);
                    }
                }
            }
        }
        first.map_or(Ok(acc), Err)
    }

    /// The aggregate state: `up` when every server is, else how many are not and which.
    fn state(&self) -> String {
        let not_up: Vec<&Scope> = self
            .scopes
            .iter()
            .filter(|s| s.resilient.health() != Health::Up)
            .collect();
        if not_up.is_empty() {
            return "up".to_owned();
        }
        if not_up.len() == self.scopes.len()
            && self
                .scopes
                .iter()
                .all(|s| s.resilient.health() == Health::Down)
        {
            return Health::Down.to_string();
        }
        format!(
            "partly down: {} of {} servers not up ({}); their keys are served by the fallback, \
             the others' by their servers",
            not_up.len(),
            self.scopes.len(),
            not_up
                .iter()
                .map(|s| s.label.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

impl Backend for PerScope {
    fn name(&self) -> &'static str {
        self.name
    }

    fn get(&self, key: &str) -> Result<Option<Item>> {
        self.scope(key).get(key)
    }

    fn get_expiring(&self, key: &str) -> Result<Option<(Item, crate::backend::Expiry)>> {
        self.scope(key).get_expiring(key)
    }

    fn set(&self, key: &str, item: &Item, ttl: Option<Duration>) -> Result<()> {
        let i = self.index(key);
        let r = self.scopes[i].resilient.set(key, item, ttl);
        self.follow_moves(i, &[key]);
        r
    }

    fn delete(&self, key: &str) -> Result<bool> {
        let i = self.index(key);
        let r = self.scopes[i].resilient.delete(key);
        self.follow_moves(i, &[key]);
        r
    }

    fn add(&self, key: &str, item: &Item, ttl: Option<Duration>) -> Result<bool> {
        self.scope(key).add(key, item, ttl)
    }

    fn incr(&self, key: &str, delta: i64, counter: &dyn crate::backend::Counter) -> Result<i64> {
        self.scope(key).incr(key, delta, counter)
    }

    fn touch(&self, key: &str, ttl: Option<Duration>) -> Result<bool> {
        self.scope(key).touch(key, ttl)
    }

    fn meta(&self, key: &str) -> Result<Option<crate::backend::EntryInfo>> {
        self.scope(key).meta(key)
    }

    fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        self.on_every(
            "delete_prefix",
            0,
            |a, b| a + b,
            |r| r.delete_prefix(prefix),
        )
    }

    /// One fan-out for all the prefixes (each scope's wrapper records or applies them).
    fn delete_prefixes(&self, prefixes: &[&str]) -> Result<u64> {
        self.on_every(
            "delete_prefixes",
            0,
            |a, b| a + b,
            |r| r.delete_prefixes(prefixes),
        )
    }

    fn clear(&self) -> Result<()> {
        self.on_every("clear", (), |(), ()| (), Resilient::clear)
    }

    fn keys(&self, prefix: &str, limit: usize) -> Result<Vec<crate::backend::EntryInfo>> {
        let mut out = self.on_every(
            "keys",
            Vec::new(),
            |mut a, b| {
                a.extend(b);
                a
            },
            |r| r.keys(prefix, limit),
        )?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out.truncate(limit);
        Ok(out)
    }

    fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Item>>> {
        let mut out = vec![None; keys.len()];
        for p in self.routing.parts(keys, |k| k) {
            p.place(self.scopes[p.scope].resilient.get_many(&p.items)?, &mut out);
        }
        Ok(out)
    }

    fn set_many(&self, items: &[(&str, Item)], ttl: Option<Duration>) -> Result<()> {
        let mut tally = Tally::new();
        for p in self.routing.parts(items, |(k, _)| k) {
            let r = self.scopes[p.scope].resilient.set_many(&p.items, ttl);
            tally.add(r.map(|()| Nothing));
            self.follow_moves(p.scope, &p.keys(|(k, _)| k));
        }
        tally.finish().map(|Nothing| ())
    }

    fn delete_many(&self, keys: &[&str]) -> Result<u64> {
        let mut tally = Tally::new();
        for p in self.routing.parts(keys, |k| k) {
            tally.add(self.scopes[p.scope].resilient.delete_many(&p.items));
            self.follow_moves(p.scope, &p.items);
        }
        tally.finish()
    }

    fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool> {
        self.scope(key).compare_and_delete(key, expected)
    }

    /// Fenced in the key's scope as by one server's wrapper when the lease is there too
    /// ([`Routing::fenced`]; always, with leases that follow their keys): during that server's
    /// outage the lease and the value are in the same fallback entries, and a leader whose
    /// lease was taken over does not overwrite the newer value.
    fn set_if_lease(
        &self,
        key: &str,
        item: &Item,
        ttl: Option<Duration>,
        lease: &str,
        token: &[u8],
    ) -> Result<bool> {
        let (i, fenced) = self.routing.fenced(key, lease);
        let r = &self.scopes[i].resilient;
        let stored = if fenced {
            r.set_if_lease(key, item, ttl, lease, token)
        } else {
            r.set(key, item, ttl).map(|()| true)
        };
        self.follow_moves(i, &[key]);
        stored
    }

    /// In the lease's scope ([`Routing::lease_index`]: its key's, with leases that follow
    /// their keys); an `add` of any key goes to that key's own scope.
    fn take_lease(&self, lease: &str, item: &Item, ttl: Option<Duration>) -> Result<bool> {
        self.lease_scope(lease).take_lease(lease, item, ttl)
    }

    /// In the lease's scope, as `take_lease`.
    fn release_lease(&self, lease: &str, token: &[u8]) -> Result<bool> {
        self.lease_scope(lease).release_lease(lease, token)
    }

    fn extend_lease(&self, lease: &str, token: &[u8], ttl: Duration) -> Result<bool> {
        self.lease_scope(lease).extend_lease(lease, token, ttl)
    }

    fn ping(&self) -> Result<BackendStatus> {
        let mut lines = Vec::with_capacity(self.scopes.len());
        let mut failed = 0;
        let mut temporary = false;
        let answers = self.fan_out(|s| s.resilient.ping());
        for (s, answer) in self.scopes.iter().zip(answers) {
            let answer = match answer {
                Ok(st) => st.detail,
                Err(e) => {
                    failed += 1;
                    temporary |= e.is_temporary();
                    match e {
                        Error::Backend { message, .. } => message,
                        other => other.to_string(),
                    }
                }
            };
            let why = match (s.resilient.health(), s.cause.get()) {
                (Health::Up, _) | (_, None) => String::new(),
                (_, Some(cause)) => format!("; down because: {cause}"),
            };
            lines.push(format!("{}: {answer}{why}", s.label));
        }
        let detail = lines.join(" | ");
        if failed == 0 {
            return Ok(BackendStatus { detail });
        }
        Err(Error::Backend {
            backend: self.name,
            message: format!(
                "{failed} of {} servers not answering: {detail}",
                self.scopes.len()
            ),
            temporary,
            source: None,
        })
    }

    fn info(&self) -> Result<Vec<(String, String)>> {
        let mut rows = vec![
            (
                "servers".to_owned(),
                self.scopes
                    .iter()
                    .map(|s| s.label.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            ("state".to_owned(), self.state()),
        ];
        let (mut transitions, mut failed_ops, mut pending) = (0, 0, 0);
        let (mut items, mut bytes) = (0u64, 0u64);
        let mut fallback = String::new();
        let mut per_server = Vec::new();
        let infos = self.fan_out(|s| s.resilient.info());
        for (s, info) in self.scopes.iter().zip(infos) {
            let r = &s.resilient;
            transitions += r.transitions();
            failed_ops += r.failed_ops();
            per_server.push((format!("server.{}.state", s.label), s.state()));
            for (k, v) in info? {
                let number = v.parse::<u64>().unwrap_or(0);
                match k.as_str() {
                    "state" | "servers" => {}
                    "fallback" => fallback = v,
                    "recorded invalidations pending" => {
                        pending += number;
                        per_server.push((format!("server.{}.pending", s.label), v));
                    }
                    "items (all applications, all servers)" => items += number,
                    "bytes (all servers)" => bytes += number,
                    _ if k == s.label => per_server.push((format!("server.{}", s.label), v)),
                    _ => per_server.push((format!("server.{}.{k}", s.label), v)),
                }
            }
        }
        rows.push(("transitions".to_owned(), transitions.to_string()));
        rows.push(("failed operations".to_owned(), failed_ops.to_string()));
        rows.push(("fallback".to_owned(), fallback));
        rows.push((
            "recorded invalidations pending".to_owned(),
            pending.to_string(),
        ));
        rows.extend(per_server);
        rows.push((
            "items (all applications, servers up)".to_owned(),
            items.to_string(),
        ));
        rows.push(("bytes (servers up)".to_owned(), bytes.to_string()));
        Ok(rows)
    }

    fn close(&self) {
        for s in &self.scopes {
            s.resilient.close();
        }
    }
}

#[cfg(test)]
#[path = "scopes_tests.rs"]
mod tests;

#[cfg(all(test, feature = "memcached"))]
#[path = "scopes_lease_tests.rs"]
pub(crate) mod lease_tests;
