//! `get_or_set`: one computation of a missing key across every process that shares the cache,
//! stale-while-revalidate and early refresh (XFetch). The rules are here, once, and the control
//! flow in `flow.rs` (a state machine without I/O); the thread face (`sync.rs`, over
//! [`CacheManager`](crate::CacheManager)) drives it with blocking calls and sleeps, and the async
//! face (`task.rs`, with feature `async`) with awaits and timers. docs/memoize.md explains the
//! design.
//!
//! - **The lease** is a second key, `ddf-lease:<key>` inside the cache's namespace, taken with
//!   [`Backend::take_lease`](crate::Backend::take_lease) (an `add`: stored only if absent)
//!   holding a random token, with the TTL `lease_ttl`, and released with
//!   [`Backend::release_lease`](crate::Backend::release_lease) (a `compare_and_delete`: removed
//!   only while it still holds that token, so a leader never removes the lease a waiter took
//!   over). The lease operations are calls of their own so that a router over several
//!   Memcached servers places the lease with its key from the call, never from the key's text
//!   (a user key beginning with `ddf-lease:` is placed by itself, as pymemcache places it).
//! - **Waiters** poll the value (and try the lease, to take over an expired one) with a backoff
//!   from [`FIRST_POLL`] to [`LAST_POLL`]: a value that lands is seen within `LAST_POLL` plus a
//!   round trip. In one process only one thread waits this way; the others wait on it through
//!   `memo/flight.rs`'s registry (the same one memoization uses).
//! - **A leader whose lease ran out does not write**: it writes only while its own monotonic
//!   clock, started before the lease was requested (or its last heartbeat), says the lease has
//!   at least [`write_margin`] left, and, where the backend can, only while the lease still
//!   holds its token on the server (`Backend::set_if_lease`: Redis outside a Cluster, the file
//!   backend). A waiter can take over only after the lease expired on the server, so the late
//!   leader's older value never overwrites the newer one.
//! - **A heartbeat** extends the lease every `lease_ttl / 3` while `compute` runs
//!   (`Backend::extend_lease`: Redis, the file backend), so slow computations are stored.
//! - **The envelope** (only with `stale_ttl` or `early_refresh`) stores the soft expiry and the
//!   last computation's duration with the value; the server's TTL is `ttl + stale_ttl`.

pub(crate) mod flow;
pub(crate) mod sync;
#[cfg(feature = "async")]
pub(crate) mod task;

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::codec::flags;
use crate::config::{CacheBackend, CacheConfig};
use crate::item::Item;
use flow::Leased;

pub(crate) use crate::key::LEASE_PREFIX;

/// A waiter's first poll comes after this long...
pub(crate) const FIRST_POLL: Duration = Duration::from_millis(2);
/// ... and the interval doubles up to this: the worst-case delay between a value landing and
/// a waiter in another process seeing it (plus one round trip).
pub(crate) const LAST_POLL: Duration = Duration::from_millis(50);

/// The version mark of the envelope (`ddf_envelope`).
const ENVELOPE: u32 = 1;

/// How `get_or_set` refreshes a value before it is gone: both are off by default.
///
/// ```
/// use std::time::Duration;
/// let opts = ddf::RefreshOptions::new()
///     .stale_ttl(Duration::from_secs(30))
///     .early_refresh(1.0);
/// assert_eq!(opts.stale_ttl, Some(Duration::from_secs(30)));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct RefreshOptions {
    /// Stale-while-revalidate: for this long after a value's TTL ran out it is still served,
    /// at once, while exactly one caller (the lease holder) computes the new one.
    pub stale_ttl: Option<Duration>,
    /// XFetch's `beta` (1.0 is the paper's default; more refreshes earlier): a caller refreshes
    /// a value before its TTL runs out with a probability that grows as the expiry nears and
    /// with how long the last computation took.
    pub early_refresh: Option<f64>,
}

impl RefreshOptions {
    /// No stale serving, no early refresh.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`RefreshOptions::stale_ttl`].
    pub fn stale_ttl(mut self, stale_ttl: Duration) -> Self {
        self.stale_ttl = Some(stale_ttl);
        self
    }

    /// Sets [`RefreshOptions::early_refresh`] (XFetch's `beta`; not finite or not above 0:
    /// off).
    pub fn early_refresh(mut self, beta: f64) -> Self {
        self.early_refresh = (beta.is_finite() && beta > 0.0).then_some(beta);
        self
    }

    /// Whether values are stored in the envelope.
    fn enveloped(&self) -> bool {
        self.stale_ttl.is_some_and(|s| !s.is_zero()) || self.early_refresh.is_some()
    }
}

/// One call's settings, worked out once from the config, the TTL and the options.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// The value's TTL (after the configured default); `None`: no expiry.
    pub(crate) ttl: Option<Duration>,
    /// What the server is told: `ttl + stale_ttl` when enveloped.
    pub(crate) server_ttl: Option<Duration>,
    pub(crate) enveloped: bool,
    pub(crate) beta: Option<f64>,
    pub(crate) lease_ttl: Duration,
    /// How much shorter than `lease_ttl` a lease may live on the server: Memcached counts
    /// expiry in whole seconds on its own clock tick, so a lease may end up to a second early.
    pub(crate) lease_slack: Duration,
    pub(crate) lock_timeout: Duration,
}

impl Plan {
    /// `ttl` is already the TTL rule's (zero refused, `None` the configured default).
    pub(crate) fn new(config: &CacheConfig, ttl: Option<Duration>, opts: RefreshOptions) -> Self {
        let enveloped = opts.enveloped() && ttl.is_some();
        let stale = opts.stale_ttl.unwrap_or_default();
        let memcached = matches!(
            config.backend,
            CacheBackend::Memcached | CacheBackend::MemcachedPickle
        );
        // Memcached: at least 2 s, so that a lease that may end a second early still leaves
        // its holder a window to write.
        let floor = Duration::from_millis(if memcached { 2000 } else { 1 });
        Plan {
            ttl,
            server_ttl: if enveloped {
                ttl.map(|t| t.saturating_add(stale))
            } else {
                ttl
            },
            enveloped,
            beta: opts.early_refresh,
            lease_ttl: config.lease_ttl.max(floor),
            lease_slack: if memcached {
                Duration::from_secs(1)
            } else {
                Duration::ZERO
            },
            lock_timeout: config.lock_timeout,
        }
    }

    /// The lease's key.
    pub(crate) fn lease_key(key: &str) -> String {
        format!("{LEASE_PREFIX}{key}")
    }

    /// What an envelope read now holds: the value, whether it is due for a refresh, its soft
    /// expiry (`None`: a miss, or not an envelope of this version).
    pub(crate) fn open<T>(&self, hit: Option<Envelope<T>>) -> Option<(T, bool, u64)> {
        hit.and_then(|e| e.open(self.beta, now_ms(), uniform()))
    }

    /// The soft expiry of a value stored now, in ms since the Unix epoch (0: never).
    pub(crate) fn soft_expiry_ms(&self) -> u64 {
        self.ttl.map_or(0, |t| {
            now_ms()
                .saturating_add(u64::try_from(t.as_millis()).unwrap_or(u64::MAX))
                .max(1)
        })
    }
}

/// The stored form of a value with `stale_ttl` or `early_refresh`: a map the Python DDF reads
/// as a `dict` (`{"ddf_envelope": 1, "soft_expiry_ms": .., "delta_ms": .., "value": ..}`), so
/// such keys are ddf's own (docs/memoize.md).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Envelope<V> {
    ddf_envelope: u32,
    /// When the value is due for a refresh, in ms since the Unix epoch (wall clock, shared by
    /// processes); 0: never.
    soft_expiry_ms: u64,
    /// How long the computation that produced the value took, in ms (XFetch's delta).
    delta_ms: u64,
    value: V,
}

impl<V> Envelope<V> {
    pub(crate) fn new(value: V, soft_expiry_ms: u64, delta: Duration) -> Self {
        Envelope {
            ddf_envelope: ENVELOPE,
            soft_expiry_ms,
            delta_ms: u64::try_from(delta.as_millis()).unwrap_or(u64::MAX),
            value,
        }
    }

    /// The value, whether it is due for a refresh now (`u`: a uniform draw in (0, 1]), and its
    /// soft expiry. `None`: not an envelope of this version (read as a miss, and replaced).
    pub(crate) fn open(self, beta: Option<f64>, now_ms: u64, u: f64) -> Option<(V, bool, u64)> {
        if self.ddf_envelope != ENVELOPE {
            return None;
        }
        let due = due(now_ms, self.soft_expiry_ms, self.delta_ms, beta, u);
        Some((self.value, due, self.soft_expiry_ms))
    }
}

/// What a `get_or_set` read found (both faces' drivers read, then act on this).
pub(crate) enum Read<T> {
    /// A value not due for a refresh.
    Fresh(T),
    /// A value due for a refresh (stale, or chosen by XFetch), and its soft expiry: served
    /// while one caller refreshes it.
    Due(T, u64),
    Miss,
    /// The server failed for a temporary reason: compute, store nothing.
    Unavailable,
}

impl<T> Read<T> {
    /// The meaning of a read's result: `(value, due, soft expiry)` or a miss, or an error.
    pub(crate) fn of(r: crate::error::Result<Option<(T, bool, u64)>>) -> Self {
        match r {
            Ok(Some((v, false, _))) => Read::Fresh(v),
            Ok(Some((v, true, soft))) => Read::Due(v, soft),
            Ok(None) => Read::Miss,
            Err(e) if e.is_temporary() => {
                tracing::warn!(error = %e, "ddf: get_or_set could not read the cache; computing, not storing");
                Read::Unavailable
            }
            Err(e) => {
                // A value of another shape (a plain value where an envelope is expected, or
                // the reverse): computed again and replaced.
                tracing::debug!(error = %e, "ddf: get_or_set read an unusable value; computing");
                Read::Miss
            }
        }
    }
}

/// Whether a value is due for a refresh: past its soft expiry (stale), or, with XFetch's
/// `beta`, early: `now - delta * beta * ln(u) >= expiry` (Vattani, Chierichetti, Lowenstein,
/// "Optimal Probabilistic Cache Stampede Prevention", 2015).
pub(crate) fn due(
    now_ms: u64,
    soft_expiry_ms: u64,
    delta_ms: u64,
    beta: Option<f64>,
    u: f64,
) -> bool {
    if soft_expiry_ms == 0 {
        return false;
    }
    if now_ms >= soft_expiry_ms {
        return true;
    }
    let Some(beta) = beta else { return false };
    let gap = delta_ms as f64 * beta * -u.clamp(f64::MIN_POSITIVE, 1.0).ln();
    now_ms as f64 + gap >= soft_expiry_ms as f64
}

/// A waiter's poll intervals: [`FIRST_POLL`], doubling, capped at [`LAST_POLL`].
#[derive(Debug)]
pub(crate) struct Backoff(Duration);

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff(FIRST_POLL)
    }

    /// The next interval, never past `deadline` (`None`: no deadline).
    pub(crate) fn next(&mut self, deadline: Option<Instant>) -> Duration {
        let d = self.0;
        self.0 = (d * 2).min(LAST_POLL);
        deadline.map_or(d, |at| d.min(at.saturating_duration_since(Instant::now())))
    }
}

/// When a wait of `timeout` from now ends; `None` when that is past what an [`Instant`] can
/// hold (a public setting of `Duration::MAX`): no deadline.
pub(crate) fn deadline(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// Whether `deadline` has passed (`None`: never).
pub(crate) fn passed(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|at| Instant::now() >= at)
}

/// A lease this caller holds.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) token: Vec<u8>,
    /// Until when the lease is certainly ours: `started` (read before the lease was requested,
    /// so the server's expiry is later than `started + lease_ttl`) plus `lease_ttl`, minus the
    /// write margin and the backend's slack; moved on by each heartbeat that extended the
    /// lease. `None`: a `lease_ttl` past what an [`Instant`] can hold, never over.
    until: Mutex<Option<Instant>>,
}

impl Held {
    pub(crate) fn new(token: Vec<u8>, started: Instant, plan: &Plan) -> Self {
        Held {
            token,
            until: Mutex::new(Self::until(started, plan)),
        }
    }

    /// Until when a lease given (or extended) to `lease_ttl` at `started` is certainly ours.
    fn until(started: Instant, plan: &Plan) -> Option<Instant> {
        let margin = write_margin(plan.lease_ttl).saturating_add(plan.lease_slack);
        started
            .checked_add(plan.lease_ttl)
            .map(|end| end.checked_sub(margin).unwrap_or(started).max(started))
    }

    /// A heartbeat, sent at `started`, extended the lease to `lease_ttl` from then.
    pub(crate) fn extended(&self, started: Instant, plan: &Plan) {
        let mut until = self.until.lock().unwrap_or_else(PoisonError::into_inner);
        *until = match (*until, Self::until(started, plan)) {
            (Some(old), Some(new)) => Some(old.max(new)),
            _ => None,
        };
    }

    /// Whether the lease is certainly still ours: at least [`write_margin`] (and the backend's
    /// slack) left by this process's clock. A leader past that does not write (a waiter may
    /// have taken over).
    pub(crate) fn may_write(&self) -> bool {
        self.until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none_or(|until| Instant::now() < until)
    }
}

/// A request for the lease of a key: a fresh token in the item `add` writes, and when it was
/// asked (before the request: see [`Held`]).
pub(crate) struct Ask {
    /// The lease's key.
    pub(crate) key: String,
    pub(crate) item: Item,
    token: Vec<u8>,
    started: Instant,
}

impl Ask {
    pub(crate) fn new(key: &str) -> Self {
        let token = token();
        let started = Instant::now();
        Ask {
            key: Plan::lease_key(key),
            item: Item::new(token.clone(), flags::BYTES),
            token,
            started,
        }
    }

    /// What the backend's answer to `add` (with TTL `plan.lease_ttl`) means.
    pub(crate) fn answer(self, r: crate::Result<bool>, plan: &Plan) -> Leased<Held> {
        match r {
            Ok(true) => Leased::Held(Held::new(self.token, self.started, plan)),
            Ok(false) => Leased::Busy,
            Err(e) => {
                tracing::warn!(error = %e, "ddf: get_or_set could not take its lease; computing without one");
                Leased::Failed
            }
        }
    }
}

/// Logs the backend's answer to the release of the lease of `key` (a release never fails: a
/// lease not removed expires by its TTL).
pub(crate) fn released(key: &str, r: crate::Result<bool>) {
    match r {
        Ok(true) => {}
        Ok(false) => tracing::debug!(
            key = %crate::error::shorten(key),
            "ddf: get_or_set's lease had expired before its release"
        ),
        Err(e) => tracing::warn!(error = %e, "ddf: get_or_set could not release its lease"),
    }
}

impl Held {
    /// What the heartbeat sent at `sent` (`extend_lease` to `lease_ttl`) got: whether to go on
    /// beating (not once the lease is no longer ours, or the backend cannot extend one).
    pub(crate) fn beat(&self, sent: Instant, plan: &Plan, r: crate::Result<bool>) -> bool {
        match r {
            Ok(true) => {
                self.extended(sent, plan);
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::debug!(error = %e, "ddf: get_or_set could not extend its lease");
                true
            }
        }
    }
}

/// Whether a value computed under `held` may be stored: not once the lease may have been taken
/// over (no longer certainly ours; logged).
pub(crate) fn may_store(key: &str, held: Option<&Held>) -> bool {
    let may = held.is_none_or(Held::may_write);
    if !may {
        tracing::warn!(
            key = %crate::error::shorten(key),
            "ddf: get_or_set's computation outlived its lease (lease_ttl); its value is returned, not stored"
        );
    }
    may
}

/// Logs what the store of a computed value gave: `None`, an invalidation began since the call
/// started (not stored); `Ok(false)`, the lease was gone on the server (not stored). Errors
/// fail open.
pub(crate) fn stored(key: &str, outcome: Option<crate::Result<bool>>) {
    match outcome {
        None => tracing::debug!(
            key = %crate::error::shorten(key),
            "ddf: an invalidation began while get_or_set computed; the value is not stored"
        ),
        Some(Err(e)) => tracing::warn!(error = %e, "ddf: get_or_set could not store its value"),
        Some(Ok(false)) => tracing::warn!(
            key = %crate::error::shorten(key),
            "ddf: get_or_set's lease was gone on the server (expired or taken over); its value is returned, not stored"
        ),
        Some(Ok(true)) => {}
    }
}

/// How much of a lease must be left for its holder to write: a tenth of it, at least 50 ms
/// (the write's own travel time and clock drift).
pub(crate) fn write_margin(lease_ttl: Duration) -> Duration {
    (lease_ttl / 10).max(Duration::from_millis(50))
}

/// Wall-clock ms since the Unix epoch (soft expiries are shared by processes).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// 64 random bits: std's per-process random hash keys over a counter, the time and the pid.
/// Not for secrets: a lease token only has to differ from every other holder's.
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// A fresh lease token (32 hex digits and the pid: readable in `ddf-cache get`).
pub(crate) fn token() -> Vec<u8> {
    format!(
        "{:016x}{:016x}-{}",
        random_u64(),
        random_u64(),
        std::process::id()
    )
    .into_bytes()
}

/// A uniform draw in (0, 1], for XFetch.
pub(crate) fn uniform() -> f64 {
    ((random_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_when_stale_and_never_without_a_soft_expiry() {
        assert!(!due(1_000, 0, 10, Some(100.0), 1e-9));
        assert!(due(1_000, 1_000, 0, None, 1.0));
        assert!(!due(999, 1_000, 0, None, 1e-9), "no beta: never early");
    }

    #[test]
    fn xfetch_refreshes_earlier_for_longer_computations_and_larger_beta() {
        // u = e^-1: the gap is delta * beta.
        let u = (-1.0f64).exp();
        assert!(due(900, 1_000, 100, Some(1.0), u));
        assert!(!due(899, 1_000, 100, Some(1.0), u));
        assert!(due(800, 1_000, 100, Some(2.0), u));
        assert!(!due(800, 1_000, 10, Some(2.0), u));
        // u = 1: no gap at all.
        assert!(!due(999, 1_000, 1_000_000, Some(10.0), 1.0));
    }

    #[test]
    fn xfetch_refresh_rate_follows_the_exponential() {
        // P(due) = P(-ln u >= gap / (delta * beta)) = e^(-gap / (delta * beta)).
        let n = 20_000;
        let hits = (0..n)
            .filter(|_| due(900, 1_000, 100, Some(1.0), uniform()))
            .count();
        let p = hits as f64 / n as f64;
        let want = (-1.0f64).exp();
        assert!((p - want).abs() < 0.03, "{p} vs {want}");
    }

    #[test]
    fn an_envelope_round_trips_and_a_foreign_one_is_refused() {
        let e = Envelope::new("v", 10, Duration::from_millis(7));
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["ddf_envelope"], 1);
        assert_eq!(json["delta_ms"], 7);
        let back: Envelope<String> = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(
            back.open(None, 5, 1.0).map(|(v, due, _)| (v, due)),
            Some(("v".to_owned(), false))
        );
        let mut other = json;
        other["ddf_envelope"] = 2.into();
        let back: Envelope<String> = serde_json::from_value(other).unwrap();
        assert_eq!(back.open(None, 5, 1.0), None);
    }

    #[test]
    fn the_plan_adds_stale_ttl_to_the_server_ttl_only_when_enveloped() {
        let c = CacheConfig::default();
        let ttl = Some(Duration::from_secs(10));
        let p = Plan::new(&c, ttl, RefreshOptions::new());
        assert_eq!((p.server_ttl, p.enveloped), (ttl, false));
        let p = Plan::new(
            &c,
            ttl,
            RefreshOptions::new().stale_ttl(Duration::from_secs(5)),
        );
        assert_eq!(p.server_ttl, Some(Duration::from_secs(15)));
        assert!(p.enveloped);
        let p = Plan::new(&c, None, RefreshOptions::new().early_refresh(1.0));
        assert!(!p.enveloped, "no TTL: nothing to refresh");
    }

    #[test]
    fn a_lease_leaves_a_window_to_write_on_every_backend() {
        for backend in [
            CacheBackend::Pickle,
            CacheBackend::Redis,
            CacheBackend::Memcached,
        ] {
            let mut c = CacheConfig::default().with_backend(backend);
            c.lease_ttl = Duration::from_millis(500);
            let plan = Plan::new(&c, None, RefreshOptions::new());
            let held = Held::new(Vec::new(), Instant::now(), &plan);
            assert!(held.may_write(), "{backend:?}");
            let old = Held::new(Vec::new(), Instant::now() - plan.lease_ttl, &plan);
            assert!(!old.may_write(), "{backend:?}: past its lease");
        }
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_stops_at_the_deadline() {
        let far = deadline(Duration::from_secs(60));
        let mut b = Backoff::new();
        let steps: Vec<_> = (0..7).map(|_| b.next(far)).collect();
        assert_eq!(steps[0], FIRST_POLL);
        assert_eq!(steps[1], FIRST_POLL * 2);
        assert_eq!(*steps.last().unwrap(), LAST_POLL);
        assert_eq!(b.next(Some(Instant::now())), Duration::ZERO);
        assert_eq!(b.next(None), LAST_POLL, "no deadline");
    }

    #[test]
    fn settings_of_duration_max_mean_no_deadline_not_a_panic() {
        let mut c = CacheConfig::default();
        c.lease_ttl = Duration::MAX;
        c.lock_timeout = Duration::MAX;
        let plan = Plan::new(&c, None, RefreshOptions::new());
        let held = Held::new(Vec::new(), Instant::now(), &plan);
        assert!(held.may_write());
        assert_eq!(deadline(plan.lock_timeout), None);
        assert!(!passed(None));
        assert!(passed(Some(Instant::now())));
    }

    #[test]
    fn the_file_backends_compare_and_delete_removes_only_the_expected_bytes() {
        use crate::backend::Backend;
        let dir = tempfile::tempdir().unwrap();
        let b = crate::backend::file::FileBackend::open(dir.path(), "cad:").unwrap();
        let ttl = Some(Duration::from_secs(60));
        assert!(
            b.add("lease", &crate::Item::new(b"tok1".to_vec(), 0), ttl)
                .unwrap()
        );
        assert!(!b.compare_and_delete("lease", b"tok2").unwrap());
        assert!(b.get("lease").unwrap().is_some(), "left in place");
        assert!(b.compare_and_delete("lease", b"tok1").unwrap());
        assert!(b.get("lease").unwrap().is_none());
        assert!(
            !b.compare_and_delete("lease", b"tok1").unwrap(),
            "already gone"
        );
    }

    #[test]
    fn tokens_differ() {
        assert_ne!(token(), token());
    }
}
