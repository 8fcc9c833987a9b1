//! The near cache (`near_cache = true`): recently read items kept in this process, in front of
//! the backend, for both faces. The design, its guarantee and its limits are in
//! docs/near-cache.md; in short:
//!
//! - The store is quick_cache's sync `Cache` of `Arc<Item>` (bytes + flags, never a decoded
//!   value) with the instant each stops being served, so a hit is one lookup plus the core's
//!   decode, bounded by `near_cache_size` entries, `near_cache_ttl` and the key's own expiry on
//!   the server (read with the value in the same round trip).
//! - A fill takes a [`Ticket`] before the backend's `get` is sent: the invalidation sequence of
//!   the key's shard and the cache's generation. The reply is stored only when neither moved,
//!   checked and inserted under the shard's lock, the lock an invalidation takes to evict. So a
//!   reply that crossed an invalidation of its key is never stored, whichever arrived first.
//! - A reset (the invalidation channel lost, the breaker not up, a flush) takes every shard's
//!   lock, moves the generation and empties the store: no fill from before it lands after it.
//! - While the near cache is not live (Redis: tracking not established) or the breaker is not
//!   up, reads bypass it and fills are refused.
//! - Redis: a hit applies first what the tracking socket already delivered when no drain began
//!   in the last millisecond ([`CATCH_UP_NS`], `Near::catch_up`), so a push is applied before
//!   a later hit even while the tracking thread waits for a core.

pub(crate) mod file;
#[cfg(feature = "redis")]
mod hooks;
#[cfg(feature = "redis")]
mod socket;
#[cfg(feature = "redis")]
mod topology;
#[cfg(feature = "redis")]
mod tracking;

use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::backend::resilience::Resilient;
use crate::backend::{Backend, Expiry};
use crate::config::{BackendSettings, CacheConfig, NearMode, NearSettings};
use crate::error::Result;
use crate::item::Item;

/// Shards of the ticket lock: fills of keys in different shards never wait for each other.
const SHARDS: usize = 64;

/// How often a hit drains the tracking socket itself: a hit serves only after a drain that
/// began at most this long before it (docs/near-cache.md, "The strict rule").
#[cfg(feature = "redis")]
const CATCH_UP_NS: u64 = 1_000_000;

/// The longest a near entry is kept, whatever `near_cache_ttl` says (so that `Instant::now()`
/// plus it never overflows).
const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why the near cache was emptied as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    /// The invalidation channel (Redis tracking connection) was lost or could not be opened.
    ChannelLost,
    /// The breaker left the up state, came back, or the fallback answered a call.
    Breaker,
    /// A flush: `flush_all` here, or a null invalidation (`FLUSHDB`/`FLUSHALL` by anyone).
    Flush,
    /// A Redis Cluster's masters or slots changed (a resharding, a failover, a node added or
    /// removed): tracking is set up again on the masters it has now.
    Topology,
}

/// What the breaker says, for the near cache: whether the primary serves, and a counter that
/// moves at every change of state.
pub(crate) trait Health: Send + Sync {
    /// The primary serves calls.
    fn is_up(&self) -> bool;
    /// Changes of state so far.
    fn transitions(&self) -> u64;
}

impl Health for Resilient {
    fn is_up(&self) -> bool {
        matches!(
            Resilient::health(self),
            crate::backend::resilience::breaker::Health::Up
        )
    }
    fn transitions(&self) -> u64 {
        Resilient::transitions(self)
    }
}

/// Taken before a fill's `get` is sent; the reply is stored only if nothing moved since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    shard: usize,
    seq: u64,
    generation: u64,
    transitions: u64,
    /// When it was taken: the remaining TTL the reply carries counts from no earlier.
    at: Instant,
    /// The file backend's change counters before the `SELECT` (`near/file.rs`).
    stamp: file::Stamp,
}

/// What a face's read returned: an item the near cache holds, or what the backend returned.
pub(crate) enum Read {
    /// From the near cache.
    Held(Arc<Item>),
    /// From the backend.
    Fetched(Option<Item>),
}

/// What a near lookup found.
pub(crate) enum Lookup {
    /// The item, held in this process.
    Hit(Arc<Item>),
    /// Not held: fetch it, then offer the reply with the ticket (`None`: do not store it).
    Miss(Option<Ticket>),
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    lost: AtomicU64,
    breaker: AtomicU64,
    flush: AtomicU64,
    topology: AtomicU64,
}

/// The near cache's statistics (see [`CacheStats`](crate::CacheStats)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct NearCounts {
    pub(crate) hits: u64,
    pub(crate) misses: u64,
    pub(crate) evictions: u64,
    pub(crate) resets_lost: u64,
    pub(crate) resets_breaker: u64,
    pub(crate) resets_flush: u64,
    pub(crate) resets_topology: u64,
}

/// A held item and when it stops being served (`near_cache_ttl` after its fill, or the key's
/// expiry on the server if sooner).
#[derive(Clone)]
struct Held {
    item: Arc<Item>,
    until: Instant,
    /// The file backend: served only while the change counters still say this.
    stamp: file::Stamp,
}

/// The near cache of one cache (shared by the manager's clones, and by its tracking thread
/// through a weak reference).
pub(crate) struct Near {
    store: quick_cache::sync::Cache<String, Held>,
    /// `near_cache_ttl`.
    ttl: Duration,
    /// Per shard: the number of invalidations of any key of the shard so far. Its lock is the
    /// one a fill's check-and-insert and an eviction both take.
    shards: Box<[Mutex<u64>]>,
    /// Moves at every reset, under every shard's lock.
    generation: AtomicU64,
    /// Whether invalidations are being received (always, for a TTL-only near cache).
    live: AtomicBool,
    /// The breaker of the primary, when there is one.
    health: Option<Arc<dyn Health>>,
    /// The breaker's transitions when last looked at: a change means a reset.
    seen: AtomicU64,
    counts: Counters,
    mode: NearMode,
    /// The tracking session's socket and parser, while one is open (Redis).
    #[cfg(feature = "redis")]
    inbox: Mutex<Option<tracking::Inbox>>,
    /// The origin of [`Near::clock`].
    #[cfg(feature = "redis")]
    base: Instant,
    /// [`Near::clock`] when the latest completed drain of the inbox began.
    #[cfg(feature = "redis")]
    drained: AtomicU64,
    /// Hits drain the inbox (off only in ddf's own before/after measurements).
    #[cfg(feature = "redis")]
    catch_up: bool,
    /// The file backend's change counters (`NearMode::Counted`).
    watch: Option<file::Watch>,
    /// On a Redis Cluster, while a tracking session is open: every name (hostname and IP,
    /// `host:port`) of the masters it tracks; a fill is stored only when the node that answered
    /// its read is one of them. Set by [`Near::resume_tracking`] and cleared on suspend, under
    /// every shard's lock; read by a fill under its shard's. `None`: not checked (one server).
    tracked: Mutex<Option<Vec<(String, u16)>>>,
}

impl fmt::Debug for Near {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Near")
            .field("mode", &self.mode)
            .field("entries", &self.store.len())
            .field("live", &self.live.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn shard_of(key: &str) -> usize {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % SHARDS as u64) as usize
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Near {
    pub(crate) fn new(settings: &NearSettings, health: Option<Arc<dyn Health>>) -> Self {
        let store =
            quick_cache::sync::Cache::new(usize::try_from(settings.size).unwrap_or(usize::MAX));
        let seen = health.as_ref().map_or(0, |h| h.transitions());
        Near {
            store,
            ttl: settings.ttl.min(MAX_TTL),
            shards: (0..SHARDS).map(|_| Mutex::new(0)).collect(),
            generation: AtomicU64::new(0),
            // A tracked near cache is live once its channel is established.
            live: AtomicBool::new(settings.mode != NearMode::Tracked),
            health,
            seen: AtomicU64::new(seen),
            counts: Counters::default(),
            mode: settings.mode,
            #[cfg(feature = "redis")]
            inbox: Mutex::new(None),
            #[cfg(feature = "redis")]
            base: Instant::now(),
            #[cfg(feature = "redis")]
            drained: AtomicU64::new(0),
            #[cfg(feature = "redis")]
            catch_up: settings.mode == NearMode::Tracked && catching_up(),
            watch: None,
            tracked: Mutex::new(None),
        }
    }

    fn tracked(&self) -> MutexGuard<'_, Option<Vec<(String, u16)>>> {
        self.tracked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Checks every hit against the file backend's change counters (`NearMode::Counted`).
    pub(crate) fn watching(mut self, watch: file::Watch) -> Self {
        self.watch = Some(watch);
        self
    }

    /// The tracking session's inbox (see `tracking::Inbox`).
    #[cfg(feature = "redis")]
    fn inbox(&self) -> MutexGuard<'_, Option<tracking::Inbox>> {
        self.inbox
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Nanoseconds since this near cache was made (the time of a drain).
    #[cfg(feature = "redis")]
    fn clock(&self) -> u64 {
        self.since(Instant::now())
    }

    #[cfg(feature = "redis")]
    fn since(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// A drain that began at `began` (a [`Near::clock`]) completed.
    #[cfg(feature = "redis")]
    fn drained(&self, began: u64) {
        self.drained.fetch_max(began, Ordering::AcqRel);
    }

    /// The strict rule: before a hit at `now` is served, every push the kernel delivered before
    /// `now - CATCH_UP_NS` is applied. If no drain of the inbox began since then, this hit drains
    /// it (a `recv` that does not wait, and the evictions it brings), so a push is applied
    /// before any later hit even while the tracking thread waits for a core. Most hits pay one
    /// clock read and one atomic load. `false`: that could not be done (a drain cut short by
    /// its budget, a broken channel); this read bypasses the near cache.
    #[cfg(feature = "redis")]
    #[inline]
    fn catch_up(&self, now: Instant) -> bool {
        if !self.catch_up {
            return true;
        }
        let t = self.since(now);
        if self
            .drained
            .load(Ordering::Acquire)
            .saturating_add(CATCH_UP_NS)
            > t
        {
            return true;
        }
        self.drain_due(t)
    }

    /// The slow side of [`Near::catch_up`] (once a millisecond at most), kept out of the hit's
    /// code.
    #[cfg(feature = "redis")]
    #[cold]
    #[inline(never)]
    fn drain_due(&self, t: u64) -> bool {
        let mut inbox = self.inbox();
        // Another thread may have drained while this one waited for the lock.
        if self
            .drained
            .load(Ordering::Acquire)
            .saturating_add(CATCH_UP_NS)
            > t
        {
            return true;
        }
        let Some(ib) = inbox.as_mut() else {
            // Live without a channel: only in the gap before the tracking thread's teardown
            // (which suspends under this lock first); bypass as if suspended.
            self.suspend();
            return false;
        };
        let began = self.clock();
        match ib.drain(self) {
            Ok(true) => {
                self.drained(began);
                true
            }
            // A flood of pushes: the rest is the next drain's; this read bypasses.
            Ok(false) => false,
            Err(fault) => {
                tracing::debug!(reason = %fault.why, "ddf: a near hit found the tracking session unusable");
                // The thread ends the session and reconnects; until then, bypass.
                self.suspend_for(fault.cause);
                false
            }
        }
    }

    /// Ends the tracking session whose inbox `inbox` (this near cache's, locked) holds: suspends
    /// the near cache, then drops the inbox, both before the lock is let go (lock order: the
    /// inbox, then the shards). A hit that finds no inbox thus finds the near cache suspended.
    /// The reset counts under the cause a drain found (`cause` when none did).
    #[cfg(feature = "redis")]
    fn end_session(&self, inbox: &mut MutexGuard<'_, Option<tracking::Inbox>>, cause: Cause) {
        self.suspend_for(inbox.as_ref().and_then(|ib| ib.cause()).unwrap_or(cause));
        **inbox = None;
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, u64> {
        // A poisoned shard only means a thread panicked while holding it: the counter is
        // still a counter.
        match self.shards[shard].lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Whether the near cache may serve and fill now; resets it when the breaker changed
    /// state since last seen.
    fn usable(&self) -> bool {
        if !self.live.load(Ordering::Acquire) {
            return false;
        }
        let Some(h) = &self.health else {
            return true;
        };
        let t = h.transitions();
        if t != self.seen.load(Ordering::Acquire) {
            self.reset(Cause::Breaker);
            self.seen.store(t, Ordering::Release);
        }
        h.is_up()
    }

    /// Looks `key` up: a hit, or a miss with the ticket its fill must take.
    pub(crate) fn lookup(&self, key: &str) -> Lookup {
        if !self.usable() {
            return Lookup::Miss(None);
        }
        let now = Instant::now();
        #[cfg(feature = "redis")]
        if !self.catch_up(now) {
            bump(&self.counts.misses);
            return Lookup::Miss(None);
        }
        if let Some(held) = self.store.get(key)
            && now < held.until
        {
            match &self.watch {
                Some(w) if !w.changes.unchanged(held.stamp) => {
                    // Another write (any process) changed its shard since the fill.
                    let gone = self
                        .store
                        .remove_if(key, |h| Arc::ptr_eq(&h.item, &held.item));
                    if gone.is_some() {
                        bump(&self.counts.evictions);
                    }
                }
                _ => {
                    bump(&self.counts.hits);
                    return Lookup::Hit(held.item);
                }
            }
        }
        bump(&self.counts.misses);
        Lookup::Miss(Some(self.ticket(key)))
    }

    /// The ticket of a fill of `key`, taken before its `get` is sent.
    fn ticket(&self, key: &str) -> Ticket {
        let shard = shard_of(key);
        let seq = *self.lock(shard);
        let stamp = self
            .watch
            .as_ref()
            .map_or_else(file::Stamp::default, |w| w.changes.stamp(&w.namespace, key));
        Ticket {
            shard,
            seq,
            generation: self.generation.load(Ordering::Acquire),
            transitions: self.health.as_ref().map_or(0, |h| h.transitions()),
            at: Instant::now(),
            stamp,
        }
    }

    /// Stores what the backend returned for `key` if nothing invalidated it since `ticket`
    /// was taken (the key's shard, a reset, the breaker) and the near cache is still usable,
    /// for `near_cache_ttl` or what the server said it has left (`expiry`), whichever is
    /// shorter: an item that expired there is not stored; `served_by_fallback`: the reply came
    /// from the fallback, never stored.
    #[cfg(test)]
    pub(crate) fn fill(
        &self,
        ticket: Ticket,
        key: &str,
        item: &Item,
        expiry: Expiry,
        served_by_fallback: bool,
    ) {
        self.fill_from(ticket, key, item, expiry, served_by_fallback, None);
    }

    /// As [`Near::fill`], `answered` being the node whose reply it is (`host:port`, a Redis
    /// Cluster's: see `degraded::Answered`): on a Cluster the reply is stored only when that
    /// node is one the open tracking session tracks (a node just added, importing a slot or
    /// promoted since the session was set up is not: its writes would never be pushed here).
    pub(crate) fn fill_from(
        &self,
        ticket: Ticket,
        key: &str,
        item: &Item,
        expiry: Expiry,
        served_by_fallback: bool,
        answered: Option<&(String, u16)>,
    ) {
        if served_by_fallback {
            self.reset(Cause::Breaker);
            return;
        }
        let Some(until) = self.until(ticket.at, expiry) else {
            return;
        };
        let guard = self.lock(ticket.shard);
        let transitions = self.health.as_ref().map_or(0, |h| h.transitions());
        let up = self.health.as_ref().is_none_or(|h| h.is_up());
        if *guard == ticket.seq
            && self.generation.load(Ordering::Acquire) == ticket.generation
            && transitions == ticket.transitions
            && up
            && self.live.load(Ordering::Acquire)
            // Same generation: the session that set `tracked` is the one the ticket saw, so
            // that node's link was set up before the read was sent.
            && self
                .tracked()
                .as_ref()
                .is_none_or(|t| answered.is_some_and(|a| t.contains(a)))
        {
            let held = Held {
                item: Arc::new(item.clone()),
                until,
                stamp: ticket.stamp,
            };
            self.store.insert(key.to_owned(), held);
        }
        drop(guard);
    }

    /// Until when an item read at `now` with `expiry` left on the server may be served: the
    /// shorter of `near_cache_ttl` and `expiry`; `None`: not at all (expired, or past what an
    /// `Instant` holds).
    fn until(&self, now: Instant, expiry: Expiry) -> Option<Instant> {
        let life = match expiry {
            Expiry::In(left) => left.min(self.ttl),
            _ => self.ttl,
        };
        if life.is_zero() {
            return None;
        }
        now.checked_add(life)
    }

    /// Evicts `key` under its shard's lock, so that no fill whose ticket predates this lands
    /// after it. `pushed`: the server said it changed (counted as an eviction by
    /// invalidation).
    pub(crate) fn evict(&self, key: &str, pushed: bool) {
        let shard = shard_of(key);
        let mut guard = self.lock(shard);
        *guard = guard.wrapping_add(1);
        let had = self.store.remove(key).is_some();
        drop(guard);
        if pushed && had {
            bump(&self.counts.evictions);
        }
    }

    /// Evicts every key that starts with `prefix` (this cache's `invalidate_pattern`).
    pub(crate) fn evict_prefix(&self, prefix: &str) {
        let mut guards: Vec<MutexGuard<'_, u64>> = (0..SHARDS).map(|s| self.lock(s)).collect();
        for g in &mut guards {
            **g = g.wrapping_add(1);
        }
        self.store.retain(|k, _| !k.starts_with(prefix));
        drop(guards);
    }

    /// Empties the near cache: every shard's lock is taken, the generation moves, the store is
    /// emptied; no fill whose ticket predates this is stored after it.
    pub(crate) fn reset(&self, cause: Cause) {
        let guards: Vec<MutexGuard<'_, u64>> = (0..SHARDS).map(|s| self.lock(s)).collect();
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.store.clear();
        drop(guards);
        bump(match cause {
            Cause::ChannelLost => &self.counts.lost,
            Cause::Breaker => &self.counts.breaker,
            Cause::Flush => &self.counts.flush,
            Cause::Topology => &self.counts.topology,
        });
        tracing::debug!(?cause, "ddf: near cache reset");
    }

    /// The invalidation channel is down: bypass and empty until [`Near::resume`].
    pub(crate) fn suspend(&self) {
        self.suspend_for(Cause::ChannelLost);
    }

    /// As [`Near::suspend`], the reset counted under `cause` (the channel lost, or a Cluster's
    /// topology changed).
    pub(crate) fn suspend_for(&self, cause: Cause) {
        if self.live.swap(false, Ordering::AcqRel) {
            self.reset(cause);
            let guards: Vec<MutexGuard<'_, u64>> = (0..SHARDS).map(|s| self.lock(s)).collect();
            if let Some(t) = self.tracked().as_mut() {
                t.clear();
            }
            drop(guards);
        }
    }

    /// The invalidation channel is up again (tracking established): resume, empty.
    #[cfg(test)]
    pub(crate) fn resume(&self) {
        self.resume_tracking(None);
    }

    /// As [`Near::resume`], on a Redis Cluster with the names of the masters the session
    /// tracks (`None`: one server, no check of who answered a fill).
    pub(crate) fn resume_tracking(&self, tracked: Option<Vec<(String, u16)>>) {
        // Empty it again: nothing filled before the channel was established may stay.
        let guards: Vec<MutexGuard<'_, u64>> = (0..SHARDS).map(|s| self.lock(s)).collect();
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.store.clear();
        *self.tracked() = tracked;
        self.live.store(true, Ordering::Release);
        drop(guards);
    }

    pub(crate) fn counts(&self) -> NearCounts {
        let c = &self.counts;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        NearCounts {
            hits: l(&c.hits),
            misses: l(&c.misses),
            evictions: l(&c.evictions),
            resets_lost: l(&c.lost),
            resets_breaker: l(&c.breaker),
            resets_flush: l(&c.flush),
            resets_topology: l(&c.topology),
        }
    }
}

#[cfg(feature = "redis")]
use hooks::catching_up;
#[cfg(all(feature = "testing", feature = "redis"))]
pub use hooks::{drop_invalidations, ignore_topology_changes, pause_teardown, without_catch_up};

/// A backend and its near cache, if any.
pub(crate) type Built = (Arc<dyn Backend>, Option<Arc<Near>>);

/// `stats` with the near cache's counters, when there is one.
pub(crate) fn with_counts(
    mut stats: crate::manager::CacheStats,
    near: Option<&Near>,
) -> crate::manager::CacheStats {
    if let Some(n) = near {
        let c = n.counts();
        stats.near_hits = c.hits;
        stats.near_misses = c.misses;
        stats.near_evictions = c.evictions;
        stats.near_resets_lost = c.resets_lost;
        stats.near_resets_breaker = c.resets_breaker;
        stats.near_resets_flush = c.resets_flush;
        stats.near_resets_topology = c.resets_topology;
    }
    stats
}

/// The backend a config names and, with `near_cache = true`, its near cache (Redis: with its
/// tracking thread started). The backend is the one [`crate::backend::from_config`] builds.
///
/// # Errors
/// As [`crate::backend::from_config`]; [`Error::Config`](crate::Error::Config) for a near
/// cache the configuration cannot have (see `CacheConfig::near_settings`).
pub(crate) fn build(config: &CacheConfig) -> Result<Built> {
    let Some(near) = config.near_settings()? else {
        return Ok((crate::backend::from_config(config)?, None));
    };
    match config.backend_settings()? {
        // A Cluster: a breaker per primary (no one health to follow: a reply a fallback served
        // resets the near cache, as for several Memcached servers), a tracking connection per
        // master.
        #[cfg(feature = "redis")]
        BackendSettings::Redis(settings)
            if matches!(settings.target, crate::config::RedisTarget::Cluster(_)) =>
        {
            let backend = crate::backend::from_config(config)?;
            let cache = Arc::new(Near::new(&near, None));
            tracking::start(&settings, &cache);
            Ok((backend, Some(cache)))
        }
        #[cfg(feature = "redis")]
        BackendSettings::Redis(settings) => {
            let state = crate::backend::redis_resilient(config, settings.clone())?;
            let cache = Arc::new(Near::new(&near, Some(state.clone() as Arc<dyn Health>)));
            tracking::start(&settings, &cache);
            Ok((state, Some(cache)))
        }
        #[cfg(feature = "memcached")]
        BackendSettings::Memcached(settings) if settings.servers.len() == 1 => {
            let identity = settings.identity().to_owned();
            let factory: crate::backend::resilience::Factory = Box::new(move || {
                Ok(
                    Arc::new(crate::backend::memcached::MemcachedBackend::new(&settings))
                        as Arc<dyn Backend>,
                )
            });
            let state = crate::backend::resilient_state(
                config,
                config.backend.as_str(),
                &identity,
                factory,
            )?;
            let cache = Arc::new(Near::new(&near, Some(state.clone() as Arc<dyn Health>)));
            Ok((state, Some(cache)))
        }
        // The file backend: every hit checked against the directory's change counters.
        BackendSettings::File(settings) => Ok((
            crate::backend::from_config(config)?,
            file::watch(&settings.dir, &settings.namespace)
                .map(|w| Arc::new(Near::new(&near, None).watching(w))),
        )),
        // Several Memcached servers (a breaker each): TTL-bounded, reset whenever a fallback
        // answers a call.
        _ => Ok((
            crate::backend::from_config(config)?,
            Some(Arc::new(Near::new(&near, None))),
        )),
    }
}

/// The near cache of an async face whose backend `aio/` built (`breaker`: the primary's
/// `Resilient`, when there is one); the same type, rules and tracking thread as the sync face's.
///
/// # Errors
/// As [`build`].
#[cfg(feature = "async")]
pub(crate) fn for_async(
    config: &CacheConfig,
    breaker: Option<Arc<Resilient>>,
) -> Result<Option<Arc<Near>>> {
    let Some(near) = config.near_settings()? else {
        return Ok(None);
    };
    let health = breaker.map(|b| b as Arc<dyn Health>);
    let mut cache = Near::new(&near, health);
    if let BackendSettings::File(settings) = config.backend_settings()? {
        let Some(w) = file::watch(&settings.dir, &settings.namespace) else {
            return Ok(None);
        };
        cache = cache.watching(w);
    }
    let cache = Arc::new(cache);
    #[cfg(feature = "redis")]
    if let BackendSettings::Redis(settings) = config.backend_settings()? {
        tracking::start(&settings, &cache);
    }
    Ok(Some(cache))
}

#[cfg(test)]
mod tests;
