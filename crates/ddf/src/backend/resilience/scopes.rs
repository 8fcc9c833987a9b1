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

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Resilient;
use super::breaker::Health;
use super::journal::{Journal, PendingOp};
use crate::backend::{Backend, BackendStatus, Item};
use crate::error::{Error, Result};

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
    /// holds by the time it is replayed ([`share_prefixes`]). The default is no (Memcached).
    fn keys_move(&self) -> bool {
        false
    }
}

/// A scope's state as a [`Partition`] may ask it: whether its breaker is closed and whether
/// invalidations are recorded for it (by this process or another). Holds the scope weakly:
/// the partition is reached from the scope's own primary.
#[derive(Clone)]
pub(crate) struct ScopeState(std::sync::Weak<super::Shared>);

impl fmt::Debug for ScopeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ScopeState").finish_non_exhaustive()
    }
}

impl ScopeState {
    /// The scope's breaker is closed (its primary serves its keys).
    pub(crate) fn is_up(&self) -> bool {
        self.0.upgrade().is_some_and(|s| s.breaker.is_up())
    }

    /// The keys of the deletes recorded for the scope (by this process or another); `None`
    /// when the journal cannot be read.
    pub(crate) fn recorded_deletes(&self) -> Option<Vec<String>> {
        let s = self.0.upgrade()?;
        let ops = s.journal.read(&s.cfg.scope).ok()?;
        Some(
            ops.into_iter()
                .filter_map(|(_, op)| match op {
                    PendingOp::Delete(k) => Some(k.into_owned()),
                    _ => None,
                })
                .collect(),
        )
    }

    /// The scope may give a key away: its breaker is closed and nothing is recorded for it
    /// (a journal that cannot be read counts as something recorded).
    pub(crate) fn is_settled(&self) -> bool {
        self.0.upgrade().is_some_and(|s| {
            s.breaker.is_up() && s.journal.count(&s.cfg.scope).is_ok_and(|n| n == 0)
        })
    }
}

/// What makes one scope: its label in messages (`host:port`), its identity in the journal
/// (`memcached://host:port`, without the namespace), and the factory of its primary (a backend
/// that serves that scope alone).
pub(crate) struct ScopeSpec {
    /// `host:port`: what `stats` and `ping` name.
    pub(crate) label: String,
    /// The identity the journal scope is made from.
    pub(crate) identity: String,
    /// Builds the scope's primary.
    pub(crate) factory: super::Factory,
}

/// Moves the invalidations recorded under `legacy` (the scope of the whole server list, used
/// before the breaker per server, or by an older ddf still running) to the scopes of the
/// servers they concern: a `delete` to the scope of its key, a prefix or `clear` to every
/// scope. Called before the scopes' breakers are built, so that they find the entries and apply
/// them before serving. An entry moved twice (two processes starting at once, or a crash
/// between the copy and the removal) is applied twice, which is harmless.
///
/// # Errors
/// The journal's: the entries stay under `legacy` for the next start.
pub(crate) fn adopt_legacy(
    journal: &Journal,
    legacy: &str,
    partition: &dyn Partition,
    scopes: &[String],
) -> Result<()> {
    if let Err(e) = share_prefixes(journal, partition, scopes) {
        tracing::warn!(error = %e, "cannot share the recorded prefix invalidations between the servers; a key resharded since may be read stale until they are replayed");
    }
    let entries = journal.read(legacy)?;
    let Some(&(last, _)) = entries.last() else {
        return Ok(());
    };
    let n = scopes.len().max(1);
    let mut per: Vec<Vec<PendingOp<'_>>> = vec![Vec::new(); n];
    for (_, op) in &entries {
        match op {
            PendingOp::Delete(k) => per[partition.scope_of(k).min(n - 1)].push(op.clone()),
            _ => per.iter_mut().for_each(|ops| ops.push(op.clone())),
        }
    }
    for (scope, ops) in scopes.iter().zip(&per) {
        if !ops.is_empty() {
            journal.append(scope, ops)?;
        }
    }
    tracing::info!(
        from = legacy,
        entries = entries.len(),
        "recorded invalidations of the whole server list moved to the servers they concern"
    );
    journal.remove(legacy, last)
}

/// On a partition whose keys move between scopes ([`Partition::keys_move`]): copies every
/// prefix delete and `clear` recorded in one scope into every other scope's journal (where the
/// same entry is not already recorded), before the scopes are built. A key the entry concerns
/// may have been resharded to another scope's node since it was recorded, and this process
/// (whose first slot map already places it there) would read it through that scope at once,
/// while the entry waits for its own scope's node. With the copy, each scope applies the entry
/// on its own nodes, through its own breaker, before it serves (a down node holds only its own
/// scope down). A running process needs no copy: it keeps a resharded slot in its scope while
/// that scope has records (`redis/cluster.rs`). Applying an entry twice only deletes more.
///
/// # Errors
/// The journal's.
pub(crate) fn share_prefixes(
    journal: &Journal,
    partition: &dyn Partition,
    scopes: &[String],
) -> Result<()> {
    if !partition.keys_move() || scopes.len() < 2 {
        return Ok(());
    }
    let mut recorded: Vec<Vec<PendingOp<'static>>> = Vec::with_capacity(scopes.len());
    for scope in scopes {
        let ops = journal.read(scope)?;
        recorded.push(
            ops.into_iter()
                .map(|(_, op)| op)
                .filter(|op| !matches!(op, PendingOp::Delete(_)))
                .collect(),
        );
    }
    for (to, scope) in scopes.iter().enumerate() {
        let mut copies: Vec<PendingOp<'static>> = Vec::new();
        for (from, ops) in recorded.iter().enumerate() {
            for op in ops {
                if from != to
                    && recorded.get(to).is_some_and(|mine| !mine.contains(op))
                    && !copies.contains(op)
                {
                    copies.push(op.clone());
                }
            }
        }
        if !copies.is_empty() {
            journal.append(scope, &copies)?;
            tracing::info!(
                scope = %scope,
                entries = copies.len(),
                "prefix invalidations recorded for another server of the cluster copied here (a key resharded since may be here)"
            );
        }
    }
    Ok(())
}

/// Builds every scope with `build`, each on a thread of its own: a scope that finds recorded
/// invalidations applies them for up to one operation timeout while it is built (its server may
/// be stopped), and the servers wait together, not one after another. A thread the system
/// refuses is replaced by building that scope here.
///
/// # Errors
/// The first scope's error, in order.
pub(crate) fn build_all(
    specs: Vec<ScopeSpec>,
    build: impl Fn(ScopeSpec) -> Result<Scope> + Sync,
) -> Result<Vec<Scope>> {
    let slots: Vec<Mutex<Option<ScopeSpec>>> =
        specs.into_iter().map(|s| Mutex::new(Some(s))).collect();
    let take =
        |slot: &Mutex<Option<ScopeSpec>>| slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    let run = |slot: &Mutex<Option<ScopeSpec>>| -> Option<Result<Scope>> { take(slot).map(&build) };
    let results: Vec<Option<Result<Scope>>> = std::thread::scope(|s| {
        let handles: Vec<_> = slots
            .iter()
            .map(|slot| {
                std::thread::Builder::new()
                    .name("ddf-scope-start".to_owned())
                    .spawn_scoped(s, || run(slot))
                    .ok()
            })
            .collect();
        handles
            .into_iter()
            .zip(&slots)
            .map(
                |(h, slot)| match h.map(std::thread::ScopedJoinHandle::join) {
                    Some(Ok(r)) => r,
                    // Not started (or it panicked, which library code does not): build it here.
                    _ => run(slot),
                },
            )
            .collect()
    });
    results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(Error::Backend {
                    backend: "cache",
                    message: "a server of the list could not be set up".to_owned(),
                    temporary: false,
                    source: None,
                })
            })
        })
        .collect()
}

/// Why a scope's primary last failed, as its watcher saw it.
#[derive(Debug, Default)]
pub(crate) struct Cause(Mutex<Option<String>>);

impl Cause {
    /// Remembers `e` as the reason the scope is down, if it is temporary.
    pub(crate) fn note(&self, e: &Error) {
        if !e.is_temporary() {
            return;
        }
        let text = match e {
            Error::Backend { message, .. } => message.clone(),
            other => other.to_string(),
        };
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(text);
    }

    fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Wraps a scope's factory so that every temporary failure of its primary (operations and the
/// probe's pings) is remembered as the reason the scope is down.
pub(crate) fn watched(factory: super::Factory, cause: Arc<Cause>) -> super::Factory {
    Box::new(move || match factory() {
        Ok(inner) => Ok(Arc::new(Watched {
            inner,
            cause: cause.clone(),
        }) as Arc<dyn Backend>),
        Err(e) => {
            cause.note(&e);
            Err(e)
        }
    })
}

/// A primary that notes its temporary failures in a [`Cause`].
#[derive(Debug)]
struct Watched {
    inner: Arc<dyn Backend>,
    cause: Arc<Cause>,
}

impl Watched {
    fn seen<T>(&self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            self.cause.note(e);
        }
        r
    }
}

impl Backend for Watched {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn get(&self, key: &str) -> Result<Option<Item>> {
        self.seen(self.inner.get(key))
    }
    fn get_expiring(&self, key: &str) -> Result<Option<(Item, crate::backend::Expiry)>> {
        self.seen(self.inner.get_expiring(key))
    }
    fn set(&self, key: &str, item: &Item, ttl: Option<Duration>) -> Result<()> {
        self.seen(self.inner.set(key, item, ttl))
    }
    fn delete(&self, key: &str) -> Result<bool> {
        self.seen(self.inner.delete(key))
    }
    fn add(&self, key: &str, item: &Item, ttl: Option<Duration>) -> Result<bool> {
        self.seen(self.inner.add(key, item, ttl))
    }
    fn incr(&self, key: &str, delta: i64, counter: &dyn crate::backend::Counter) -> Result<i64> {
        self.seen(self.inner.incr(key, delta, counter))
    }
    fn touch(&self, key: &str, ttl: Option<Duration>) -> Result<bool> {
        self.seen(self.inner.touch(key, ttl))
    }
    fn meta(&self, key: &str) -> Result<Option<crate::backend::EntryInfo>> {
        self.seen(self.inner.meta(key))
    }
    fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        self.seen(self.inner.delete_prefix(prefix))
    }
    /// Forwarded as one call (the replay's batch: Memcached walks the server once for it).
    fn delete_prefixes(&self, prefixes: &[&str]) -> Result<u64> {
        self.seen(self.inner.delete_prefixes(prefixes))
    }
    fn clear(&self) -> Result<()> {
        self.seen(self.inner.clear())
    }
    fn ping(&self) -> Result<BackendStatus> {
        self.seen(self.inner.ping())
    }
    fn info(&self) -> Result<Vec<(String, String)>> {
        self.inner.info()
    }
    fn keys(&self, prefix: &str, limit: usize) -> Result<Vec<crate::backend::EntryInfo>> {
        self.seen(self.inner.keys(prefix, limit))
    }
    fn close(&self) {
        self.inner.close();
    }
    fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Item>>> {
        self.seen(self.inner.get_many(keys))
    }
    fn set_many(&self, items: &[(&str, Item)], ttl: Option<Duration>) -> Result<()> {
        self.seen(self.inner.set_many(items, ttl))
    }
    fn delete_many(&self, keys: &[&str]) -> Result<u64> {
        self.seen(self.inner.delete_many(keys))
    }
    fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool> {
        self.seen(self.inner.compare_and_delete(key, expected))
    }
    fn set_if_lease(
        &self,
        key: &str,
        item: &Item,
        ttl: Option<Duration>,
        lease: &str,
        token: &[u8],
    ) -> Result<bool> {
        self.seen(self.inner.set_if_lease(key, item, ttl, lease, token))
    }
    fn extend_lease(&self, lease: &str, token: &[u8], ttl: Duration) -> Result<bool> {
        self.seen(self.inner.extend_lease(lease, token, ttl))
    }
}

/// Why a scope is marked down by [`PerScope::follow_moves`]: `n` keys moved to it from the
/// scope labelled `from` while a write to them was recorded there.
fn moved_here(backend: &'static str, n: usize, from: &str) -> Error {
    Error::Backend {
        backend,
        message: format!(
            "{n} key(s) moved here from {from} while a write to them was recorded there; \
             replaying before serving them"
        ),
        temporary: true,
        source: None,
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

/// The routing decisions of a router over scopes, made once for both faces ([`PerScope`] and
/// the async face's router, `aio/scopes.rs`): which scope serves a key, and how a batch splits.
#[derive(Debug, Clone)]
pub(crate) struct Routing {
    partition: Arc<dyn Partition>,
    n: usize,
}

impl Routing {
    /// Keys placed by `partition` over `n` scopes.
    pub(crate) fn new(partition: Arc<dyn Partition>, n: usize) -> Self {
        Routing { partition, n }
    }

    /// The scope that serves `key`, a user key (a partition's answer past the last scope is
    /// the last).
    pub(crate) fn index(&self, key: &str) -> usize {
        self.partition.scope_of(key).min(self.n.saturating_sub(1))
    }

    /// The scope that serves `key` asked in the middle of a call ([`PerScope::follow_moves`]),
    /// which must not count as a new call's start ([`Partition::scope_within_call`]).
    pub(crate) fn index_within_call(&self, key: &str) -> usize {
        self.partition
            .scope_within_call(key)
            .min(self.n.saturating_sub(1))
    }

    /// A batch split by scope: one part per scope that has items, in scope order.
    /// The batch's scopes are asked in one call ([`Partition::scopes_of`]), so that a partition
    /// that bounds a call by when it started (a Redis Cluster's first slot-map wait) sees it once.
    pub(crate) fn parts<T: Clone>(&self, items: &[T], key: impl Fn(&T) -> &str) -> Vec<Part<T>> {
        let mut groups = vec![Vec::new(); self.n];
        let keys: Vec<&str> = items.iter().map(key).collect();
        for (i, s) in self.partition.scopes_of(&keys).into_iter().enumerate() {
            groups[s.min(self.n.saturating_sub(1))].push(i);
        }
        groups
            .into_iter()
            .enumerate()
            .filter(|(_, at)| !at.is_empty())
            .map(|(scope, at)| Part {
                scope,
                items: at.iter().map(|&i| items[i].clone()).collect(),
                at,
            })
            .collect()
    }
}

/// One scope's part of a batch ([`Routing::parts`]).
#[derive(Debug)]
pub(crate) struct Part<T> {
    /// The scope.
    pub(crate) scope: usize,
    /// The items' positions in the batch.
    pub(crate) at: Vec<usize>,
    /// The items, in batch order.
    pub(crate) items: Vec<T>,
}

impl<T> Part<T> {
    /// The part's keys.
    pub(crate) fn keys<'s>(&'s self, key: impl Fn(&'s T) -> &'s str) -> Vec<&'s str> {
        self.items.iter().map(key).collect()
    }

    /// Puts the part's answers (one per item, in order) at their places in the batch's.
    pub(crate) fn place<V>(&self, answers: Vec<V>, out: &mut [V]) {
        for (&i, v) in self.at.iter().zip(answers) {
            out[i] = v;
        }
    }
}

/// A batch's outcome over its scopes, the same for both faces: every scope's part is tried
/// (one failing does not skip the others); the sum of what they did, or the first error.
#[derive(Debug)]
pub(crate) struct Tally<T> {
    done: T,
    first: Option<Error>,
}

impl<T: Default + std::ops::AddAssign> Tally<T> {
    pub(crate) fn new() -> Self {
        Tally {
            done: T::default(),
            first: None,
        }
    }

    /// One scope's part.
    pub(crate) fn add(&mut self, r: Result<T>) {
        match r {
            Ok(v) => self.done += v,
            Err(e) => {
                self.first.get_or_insert(e);
            }
        }
    }

    /// The sum, or the first error.
    pub(crate) fn finish(self) -> Result<T> {
        self.first.map_or(Ok(self.done), Err)
    }
}

/// `()` as a count of nothing, for the batches whose parts return nothing ([`Tally`]).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Nothing;

impl std::ops::AddAssign for Nothing {
    fn add_assign(&mut self, _: Nothing) {}
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

    /// After a write in scope `from` that did not reach its server (recorded there): a key the
    /// partition now places in another scope moved there meanwhile (a Redis Cluster's
    /// resharding at that very instant, its check that `from` had nothing recorded made just
    /// before this write recorded). The key's delete is recorded in the scope that holds it
    /// now too, and that scope marked down, so that it replays the record before it reads the
    /// key from the server again. A write that reached the server needs nothing.
    pub(crate) fn follow_moves(&self, from: usize, keys: &[&str]) {
        let Some(old) = self.scopes.get(from) else {
            return;
        };
        if old.resilient.shared.breaker.is_up() {
            return;
        }
        for (to, scope) in self.scopes.iter().enumerate() {
            let moved: Vec<PendingOp> = keys
                .iter()
                .filter(|k| to != from && self.routing.index_within_call(k) == to)
                .map(|k| PendingOp::Delete(std::borrow::Cow::Borrowed(*k)))
                .collect();
            if moved.is_empty() {
                continue;
            }
            let s = &scope.resilient.shared;
            if let Err(e) = s.journal.append(&s.cfg.scope, &moved) {
                tracing::warn!(error = %e, "cannot record a write for the scope its key moved to");
            }
            let cause = moved_here(self.name, moved.len(), &old.label);
            super::Shared::failed(s, true, &cause);
        }
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

    fn extend_lease(&self, lease: &str, token: &[u8], ttl: Duration) -> Result<bool> {
        self.scope(lease).extend_lease(lease, token, ttl)
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
