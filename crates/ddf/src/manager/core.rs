//! The part of a cache that both faces share: the configuration, the codec, the TTL rules,
//! `enabled = false`, the statistics, the identity and the invalidation epochs.
//!
//! [`Core`] does no I/O. A face ([`CacheManager`](crate::CacheManager), and with feature
//! `async` the `AsyncCacheManager`) calls its backend, sync or async, between the core's steps:
//! `ttl_or_default` and `encode` before a write, `got`/`decode` after a read, and the counting
//! steps after the rest, so that every rule below exists once whatever the face.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{Codec, ValueCodec};
use crate::config::{CacheBackend, CacheConfig};
use crate::error::{Error, Result};
use crate::item::Item;
use crate::memo::epoch::Epochs;

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    sets: AtomicU64,
    deletes: AtomicU64,
    invalidated: AtomicU64,
    errors: AtomicU64,
    /// Shared with the async face's backends, which count on the thread that ran the fallback.
    fallback: Arc<AtomicU64>,
}

/// A snapshot of a manager's statistics (shared by its clones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct CacheStats {
    /// Gets that found a value.
    pub hits: u64,
    /// Gets that found nothing.
    pub misses: u64,
    /// Values written.
    pub sets: u64,
    /// Values removed by `delete`/`delete_many`.
    pub deletes: u64,
    /// Values removed by `invalidate_pattern`.
    pub invalidated: u64,
    /// Operations that returned an error.
    pub errors: u64,
    /// Operations answered by the fallback while the server was down or failing (Redis,
    /// Memcached): served from the local directory, or a miss / a dropped write with `fallback
    /// = none`. Counted beside the operation's own counter (a get the fallback answered is also
    /// a hit or a miss).
    pub fallback: u64,
    /// Gets the near cache answered (`near_cache = true`; counted in `hits` too).
    pub near_hits: u64,
    /// Gets the near cache did not hold while it served (counted as `hits` or `misses` by
    /// what the backend then returned).
    pub near_misses: u64,
    /// Near entries evicted because the server said their key changed (Redis tracking).
    pub near_evictions: u64,
    /// Times the near cache was emptied because its invalidation channel was lost.
    pub near_resets_lost: u64,
    /// Times the near cache was emptied because the breaker changed state or the fallback
    /// answered a call.
    pub near_resets_breaker: u64,
    /// Times the near cache was emptied by a flush (`flush_all`, or anyone's `FLUSHDB`).
    pub near_resets_flush: u64,
    /// Times the near cache was emptied because a Redis Cluster's masters or slots changed.
    pub near_resets_topology: u64,
}

impl CacheStats {
    /// Hits over gets, from 0 to 1 (0 when there were no gets).
    pub fn hit_rate(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}

impl fmt::Display for CacheStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "hits {} misses {} (hit rate {:.1}%) sets {} deletes {} invalidated {} errors {} \
             fallback {}",
            self.hits,
            self.misses,
            self.hit_rate() * 100.0,
            self.sets,
            self.deletes,
            self.invalidated,
            self.errors,
            self.fallback
        )?;
        if self.near_hits + self.near_misses > 0 {
            write!(
                f,
                " near: hits {} misses {} evictions {} resets (lost {} breaker {} flush {} \
                 topology {})",
                self.near_hits,
                self.near_misses,
                self.near_evictions,
                self.near_resets_lost,
                self.near_resets_breaker,
                self.near_resets_flush,
                self.near_resets_topology
            )?;
        }
        Ok(())
    }
}

/// The next [`Core::id`]. A `u64` counter does not wrap in any process's lifetime.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

fn check_ttl(ttl: Option<Duration>) -> Result<()> {
    match ttl {
        Some(t) if t.is_zero() => Err(Error::InvalidArgument(
            "a TTL of zero is not allowed: give a positive duration, or None for the configured default"
                .to_owned(),
        )),
        _ => Ok(()),
    }
}

/// A counter's value in the cache's codec, for [`Backend::incr`](crate::backend::Backend::incr)
/// (a copy of the codec: it may travel to the blocking pool).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CodecCounter(ValueCodec);

impl crate::backend::Counter for CodecCounter {
    fn read(&self, key: &str, item: &Item) -> Result<i64> {
        self.0.decode(key, item)
    }

    fn write(&self, key: &str, n: i64) -> Result<Item> {
        self.0.encode(key, &n)
    }
}

/// What one cache (a manager of either face and its clones) shares, without its backend.
pub(crate) struct Core {
    /// See [`Core::id`].
    id: u64,
    config: CacheConfig,
    /// Chosen once from the backend kind: the only place values become items and back.
    codec: ValueCodec,
    stats: Counters,
    /// The invalidations made through this cache, for memoization (see [`Epochs`]).
    epochs: Epochs,
}

impl Core {
    pub(crate) fn new(config: CacheConfig) -> Self {
        Core {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            codec: ValueCodec::for_config(&config),
            config,
            stats: Counters::default(),
            epochs: Epochs::default(),
        }
    }

    pub(crate) fn config(&self) -> &CacheConfig {
        &self.config
    }

    pub(crate) fn codec(&self) -> Codec {
        self.codec.codec()
    }

    /// `enabled` as configured: when false, reads miss (counted) and writes do nothing.
    pub(crate) fn enabled(&self) -> bool {
        self.config.enabled
    }

    /// Whether a value written can be read back: enabled, and a backend that stores.
    pub(crate) fn is_enabled(&self) -> bool {
        self.config.enabled && self.config.backend != CacheBackend::None
    }

    /// Unique per cache built in this process, shared by its clones.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn epochs(&self) -> &Epochs {
        &self.epochs
    }

    /// Counts an error, passes the result on.
    pub(crate) fn track<T>(&self, r: Result<T>) -> Result<T> {
        if r.is_err() {
            bump(&self.stats.errors, 1);
        }
        r
    }

    /// The TTL rule: zero is refused, `None` is the configured `ttl`.
    pub(crate) fn ttl_or_default(&self, ttl: Option<Duration>) -> Result<Option<Duration>> {
        check_ttl(ttl)?;
        Ok(ttl.or(self.config.ttl))
    }

    /// A call the fallback answered (see [`CacheStats::fallback`]).
    pub(crate) fn fallback_served(&self) {
        bump(&self.stats.fallback, 1);
    }

    /// The `fallback` counter itself, for a face whose fallback runs on another thread (the
    /// async face's blocking pool) and counts there.
    #[cfg(feature = "async")]
    pub(crate) fn fallback_tally(&self) -> Arc<AtomicU64> {
        self.stats.fallback.clone()
    }

    /// A read on a disabled cache: `n` misses.
    pub(crate) fn missed(&self, n: usize) {
        bump(&self.stats.misses, n as u64);
    }

    /// Counts what the backend's `get` returned (a hit, a miss or an error).
    pub(crate) fn got(&self, r: Result<Option<Item>>) -> Result<Option<Item>> {
        let r = self.track(r)?;
        bump(
            if r.is_some() {
                &self.stats.hits
            } else {
                &self.stats.misses
            },
            1,
        );
        Ok(r)
    }

    /// A get the near cache answered.
    pub(crate) fn near_hit(&self) {
        bump(&self.stats.hits, 1);
    }

    /// Decodes an item the near cache holds as a `T`.
    pub(crate) fn decode_held<T: DeserializeOwned>(&self, key: &str, item: &Item) -> Result<T> {
        self.track(self.codec.decode(key, item))
    }

    /// Decodes a read item as a `T`.
    pub(crate) fn decode<T: DeserializeOwned>(
        &self,
        key: &str,
        item: Option<Item>,
    ) -> Result<Option<T>> {
        item.map(|i| self.track(self.codec.decode(key, &i)))
            .transpose()
    }

    /// Decodes a read item as a JSON view.
    pub(crate) fn decode_json(
        &self,
        key: &str,
        item: Option<Item>,
    ) -> Result<Option<serde_json::Value>> {
        item.map(|i| self.track(self.codec.decode_json(key, &i)))
            .transpose()
    }

    /// Decodes a read item as the Python value it is (see `get_value`).
    pub(crate) fn decode_value(
        &self,
        key: &str,
        item: Option<Item>,
    ) -> Result<Option<crate::pickle::Value>> {
        item.map(|i| self.track(self.codec.decode_value(key, &i)))
            .transpose()
    }

    /// The raw bytes of a read item (see `get_bytes`).
    pub(crate) fn raw_bytes(&self, key: &str, item: Option<Item>) -> Result<Option<Vec<u8>>> {
        item.map(|i| self.track(self.codec.raw_bytes(key, i)))
            .transpose()
    }

    /// The stored form an item's flags name (see `stored_form`).
    pub(crate) fn describe_flags(&self, flags: Option<u32>) -> &'static str {
        self.codec.describe_flags(flags)
    }

    /// Encodes a value for `set`.
    pub(crate) fn encode<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<Item> {
        self.track(self.codec.encode(key, value))
    }

    /// Encodes every value for `set_many`; nothing when one cannot be encoded.
    pub(crate) fn encode_many<'k, T: Serialize>(
        &self,
        items: &[(&'k str, T)],
    ) -> Result<Vec<(&'k str, Item)>> {
        let encoded = items
            .iter()
            .map(|(k, v)| Ok((*k, self.codec.encode(k, v)?)))
            .collect::<Result<Vec<_>>>();
        self.track(encoded)
    }

    /// Counts what the backend's `set` or `set_many` of `n` values returned.
    pub(crate) fn stored(&self, r: Result<()>, n: usize) -> Result<()> {
        self.track(r)?;
        bump(&self.stats.sets, n as u64);
        Ok(())
    }

    /// Counts what the backend's `add` returned (a value stored is a set).
    pub(crate) fn added(&self, r: Result<bool>) -> Result<bool> {
        let stored = self.track(r)?;
        bump(&self.stats.sets, u64::from(stored));
        Ok(stored)
    }

    /// The counter rule of the codec: on `redis_pickle` a counter is refused (Redis counts in
    /// decimal text, which a pickle reader, ddf's or the Python DDF's, does not read as a value).
    pub(crate) fn check_counter(&self) -> Result<()> {
        if self.config.backend == CacheBackend::RedisPickle {
            bump(&self.stats.errors, 1);
            return Err(Error::InvalidArgument(
                "incr/decr are not offered on redis_pickle: Redis counts in decimal text \
                 (INCRBY), which neither ddf nor the Python DDF reads as a pickle; use backend \
                 = redis, where both read it as an int"
                    .to_owned(),
            ));
        }
        Ok(())
    }

    /// How this cache's codec stores a counter.
    pub(crate) fn counter(&self) -> CodecCounter {
        CodecCounter(self.codec)
    }

    /// Counts what the backend's `incr` returned (a write, as a set).
    pub(crate) fn counted(&self, r: Result<i64>) -> Result<i64> {
        let n = self.track(r)?;
        bump(&self.stats.sets, 1);
        Ok(n)
    }

    /// Counts what the backend's `delete` returned.
    pub(crate) fn deleted(&self, r: Result<bool>) -> Result<bool> {
        let removed = self.track(r)?;
        bump(&self.stats.deletes, u64::from(removed));
        Ok(removed)
    }

    /// Counts what the backend's `delete_many` returned.
    pub(crate) fn deleted_many(&self, r: Result<u64>) -> Result<u64> {
        let n = self.track(r)?;
        bump(&self.stats.deletes, n);
        Ok(n)
    }

    /// Counts what the backend's `delete_prefix` returned.
    pub(crate) fn invalidated(&self, r: Result<u64>) -> Result<u64> {
        let n = self.track(r)?;
        bump(&self.stats.invalidated, n);
        Ok(n)
    }

    /// Checks, counts and decodes what the backend's `get_many` returned for `keys`.
    pub(crate) fn got_many<T: DeserializeOwned>(
        &self,
        backend: &'static str,
        keys: &[&str],
        r: Result<Vec<Option<Item>>>,
    ) -> Result<Vec<Option<T>>> {
        let items = self.track(r)?;
        if items.len() != keys.len() {
            bump(&self.stats.errors, 1);
            return Err(Error::Backend {
                backend,
                message: format!(
                    "get_many returned {} results for {} keys",
                    items.len(),
                    keys.len()
                ),
                temporary: false,
                source: None,
            });
        }
        let hits = items.iter().filter(|i| i.is_some()).count() as u64;
        tracing::trace!(keys = keys.len(), hits, "ddf: get_many");
        bump(&self.stats.hits, hits);
        bump(&self.stats.misses, keys.len() as u64 - hits);
        keys.iter()
            .zip(items)
            .map(|(k, i)| i.map(|i| self.track(self.codec.decode(k, &i))).transpose())
            .collect()
    }

    /// A snapshot of the statistics.
    pub(crate) fn stats(&self) -> CacheStats {
        let s = &self.stats;
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CacheStats {
            hits: l(&s.hits),
            misses: l(&s.misses),
            sets: l(&s.sets),
            deletes: l(&s.deletes),
            invalidated: l(&s.invalidated),
            errors: l(&s.errors),
            fallback: l(&s.fallback),
            ..CacheStats::default()
        }
    }
}
