//! The thread face of `get_or_set`: blocking waits, over [`CacheManager`].

use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Backoff, Envelope, Held, Plan, Read, deadline, now_ms, passed, token, uniform};
use crate::CacheManager;
use crate::codec::flags;
use crate::item::Item;
use crate::memo::flight::{self, Landing, Turn};

/// What a read found.
fn read<T: DeserializeOwned>(cache: &CacheManager, key: &str, plan: &Plan) -> Read<T> {
    let r = if plan.enveloped {
        cache
            .get::<Envelope<T>>(key)
            .map(|hit| hit.and_then(|e| e.open(plan.beta, now_ms(), uniform())))
    } else {
        cache.get::<T>(key).map(|hit| hit.map(|v| (v, false, 0)))
    };
    Read::of(r)
}

/// A lease this caller holds: released (compare-and-delete of its token) when dropped, also
/// when `compute` panics, so that the others do not wait out `lease_ttl`.
struct Lease<'a> {
    cache: &'a CacheManager,
    key: &'a str,
    held: Held,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        release(self.cache, self.key, &self.held);
    }
}

/// What asking for the lease gave.
enum Acquired<'a> {
    Held(Lease<'a>),
    /// Another caller holds it.
    Busy,
    /// The backend could not tell (an error, logged): compute without a lease.
    Failed,
}

fn acquire<'a>(cache: &'a CacheManager, key: &'a str, plan: &Plan) -> Acquired<'a> {
    let token = token();
    let started = Instant::now();
    let item = Item::new(token.clone(), flags::BYTES);
    let lease = Plan::lease_key(key);
    match cache.on_backend(|b| b.add(&lease, &item, Some(plan.lease_ttl))) {
        Ok(true) => Acquired::Held(Lease {
            cache,
            key,
            held: Held::new(token, started, plan),
        }),
        Ok(false) => Acquired::Busy,
        Err(e) => {
            tracing::warn!(error = %e, "ddf: get_or_set could not take its lease; computing without one");
            Acquired::Failed
        }
    }
}

/// Never panics (it runs in `Drop`, also while unwinding): failures are logged.
fn release(cache: &CacheManager, key: &str, held: &Held) {
    let lease = Plan::lease_key(key);
    match cache.on_backend(|b| b.compare_and_delete(&lease, &held.token)) {
        Ok(true) => {}
        Ok(false) => tracing::debug!(
            key = %crate::error::shorten(key),
            "ddf: get_or_set's lease had expired before its release"
        ),
        // The lease then expires by its TTL.
        Err(e) => tracing::warn!(error = %e, "ddf: get_or_set could not release its lease"),
    }
}

/// Stores a computed value: unless an invalidation began since the call started (`epoch`), or
/// the lease it was computed under may have been taken over (`held` no longer certainly ours).
/// Errors fail open (logged).
fn store<T: Serialize>(
    cache: &CacheManager,
    key: &str,
    plan: &Plan,
    epoch: u64,
    held: Option<&Held>,
    value: &T,
    delta: Duration,
) {
    if held.is_some_and(|h| !h.may_write()) {
        tracing::warn!(
            key = %crate::error::shorten(key),
            "ddf: get_or_set's computation outlived its lease (lease_ttl); its value is returned, not stored"
        );
        return;
    }
    let write = || {
        if plan.enveloped {
            put(
                cache,
                key,
                plan,
                held,
                &Envelope::new(value, plan.soft_expiry_ms(), delta),
            )
        } else {
            put(cache, key, plan, held, value)
        }
    };
    match cache.epochs().store(epoch, write) {
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

/// One write of `get_or_set`: under a lease, fenced on the server where the backend can (Redis
/// outside a Cluster, the file backend): stored only while the lease still holds our token.
/// `Ok(false)`: not stored.
fn put<V: Serialize + ?Sized>(
    cache: &CacheManager,
    key: &str,
    plan: &Plan,
    held: Option<&Held>,
    v: &V,
) -> crate::Result<bool> {
    match held {
        Some(h) => cache.set_if_lease(key, v, plan.server_ttl, &Plan::lease_key(key), &h.token),
        None => cache.set(key, v, plan.server_ttl).map(|()| true),
    }
}

/// Computes, stores (see [`store`]), returns.
fn compute_and_store<T, E, F>(
    cache: &CacheManager,
    key: &str,
    plan: &Plan,
    epoch: u64,
    held: Option<&Held>,
    compute: F,
) -> Result<T, E>
where
    T: Serialize,
    F: FnOnce() -> Result<T, E>,
{
    let start = Instant::now();
    let v = match held {
        Some(h) => with_heartbeat(cache, key, plan, h, compute)?,
        None => compute()?,
    };
    store(cache, key, plan, epoch, held, &v, start.elapsed());
    Ok(v)
}

/// Runs `compute` while a scoped thread extends the lease every `lease_ttl / 3` (compare-and-
/// expire of our token), so that a computation longer than `lease_ttl` is neither taken over
/// nor kept from storing. The heartbeat stops when `compute` returns or unwinds, when the
/// lease is no longer ours, or on a backend that cannot extend one (Memcached: there the
/// limit stays, docs/memoize.md).
fn with_heartbeat<R>(
    cache: &CacheManager,
    key: &str,
    plan: &Plan,
    held: &Held,
    compute: impl FnOnce() -> R,
) -> R {
    let Some(every) = deadline(plan.lease_ttl).map(|_| plan.lease_ttl / 3) else {
        return compute();
    };
    let stop = Stop::default();
    std::thread::scope(|s| {
        s.spawn(|| {
            let lease = Plan::lease_key(key);
            while !stop.wait(every) {
                let sent = Instant::now();
                match cache.on_backend(|b| b.extend_lease(&lease, &held.token, plan.lease_ttl)) {
                    Ok(true) => held.extended(sent, plan),
                    Ok(false) => return,
                    Err(e) => {
                        tracing::debug!(error = %e, "ddf: get_or_set could not extend its lease");
                    }
                }
            }
        });
        // Stops the heartbeat also when `compute` unwinds (the scope joins it).
        let _stopping = Stopping(&stop);
        compute()
    })
}

/// The heartbeat's stop signal.
#[derive(Default)]
struct Stop {
    stopped: std::sync::Mutex<bool>,
    wake: std::sync::Condvar,
}

impl Stop {
    /// Waits up to `every`; whether the heartbeat must stop.
    fn wait(&self, every: Duration) -> bool {
        let stopped = self
            .stopped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (stopped, _) = self
            .wake
            .wait_timeout_while(stopped, every, |s| !*s)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *stopped
    }
}

struct Stopping<'a>(&'a Stop);

impl Drop for Stopping<'_> {
    fn drop(&mut self) {
        *self
            .0
            .stopped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        self.0.wake.notify_all();
    }
}

/// `get_or_set` and `try_get_or_set` of [`CacheManager`]: `ttl` has passed the TTL rule.
pub(crate) fn get_or_set<T, E, F>(
    cache: &CacheManager,
    key: &str,
    plan: &Plan,
    compute: F,
) -> Result<T, E>
where
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> Result<T, E>,
{
    if !cache.is_enabled() {
        return compute();
    }
    // Read before the lookup, as memoization does: a value computed before an invalidation
    // that returns after this is not stored.
    let epoch = cache.epochs().current();
    // Every caller waits at most `lock_timeout` from its call, in the flight or for the lease.
    let deadline = deadline(plan.lock_timeout);
    let flight_key = Plan::lease_key(key);
    loop {
        let landings = flight::landings();
        match read::<T>(cache, key, plan) {
            Read::Fresh(v) => return Ok(v),
            Read::Due(v, soft) => return refresh(cache, key, plan, epoch, (v, soft), compute),
            Read::Unavailable => return compute(),
            Read::Miss => {}
        }
        match flight::take_turn(cache.id(), &flight_key, epoch, landings) {
            Turn::Lead(lead) => match lead_across(cache, key, plan, epoch, deadline, compute) {
                Led::Done(r) => {
                    lead.finish();
                    return r;
                }
                // The flight opens first: this process's waiters do not queue behind a
                // computation that will not be stored.
                Led::Alone(compute) => {
                    lead.finish();
                    return compute();
                }
            },
            // This thread leads another flight: it never waits (no deadlock), it computes,
            // and stores nothing (it holds no lease: its value could overwrite a newer one).
            Turn::Bypass => return compute(),
            // Read again: the value is there unless the leader's computation failed or its
            // write did not happen; then one of the waiters leads next.
            Turn::Landed(Landing::Finished | Landing::Abandoned) => {}
        }
    }
}

/// How the leader of this process ended.
enum Led<T, E, F> {
    Done(Result<T, E>),
    /// No value and no lease (`lock_timeout` passed, or the cache could not be read): `compute`
    /// runs without storing, after the flight opened.
    Alone(F),
}

/// The leader of this process: takes the lease, or waits for the process that holds it (and
/// takes over a lease that expired), up to `deadline`.
fn lead_across<T, E, F>(
    cache: &CacheManager,
    key: &str,
    plan: &Plan,
    epoch: u64,
    deadline: Option<Instant>,
    compute: F,
) -> Led<T, E, F>
where
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> Result<T, E>,
{
    let mut backoff = Backoff::new();
    loop {
        match acquire(cache, key, plan) {
            Acquired::Held(lease) => {
                // A leader elsewhere may have stored and released between our miss and our
                // lease: one more read, so that the value is computed once.
                return Led::Done(match read::<T>(cache, key, plan) {
                    Read::Fresh(v) | Read::Due(v, _) => Ok(v),
                    Read::Miss | Read::Unavailable => {
                        compute_and_store(cache, key, plan, epoch, Some(&lease.held), compute)
                    }
                });
            }
            Acquired::Busy => {}
            Acquired::Failed => {
                return Led::Done(compute_and_store(cache, key, plan, epoch, None, compute));
            }
        }
        if passed(deadline) {
            tracing::warn!(
                key = %crate::error::shorten(key),
                "ddf: get_or_set waited lock_timeout for another caller's computation; computing, not storing"
            );
            return Led::Alone(compute);
        }
        std::thread::sleep(backoff.next(deadline));
        match read::<T>(cache, key, plan) {
            Read::Fresh(v) | Read::Due(v, _) => return Led::Done(Ok(v)),
            Read::Unavailable => return Led::Alone(compute),
            Read::Miss => {}
        }
    }
}

/// A value due for a refresh: one caller (in this process, the flight's leader; across
/// processes, the lease holder) computes the new one, the others return `stale` at once. A
/// failed refresh returns `stale` too (logged).
fn refresh<T, E, F>(
    cache: &CacheManager,
    key: &str,
    plan: &Plan,
    epoch: u64,
    (stale, soft): (T, u64),
    compute: F,
) -> Result<T, E>
where
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> Result<T, E>,
{
    let Some(lead) = flight::try_lead(cache.id(), &Plan::lease_key(key), epoch) else {
        return Ok(stale);
    };
    let lease = match acquire(cache, key, plan) {
        Acquired::Held(lease) => lease,
        Acquired::Busy | Acquired::Failed => {
            lead.finish();
            return Ok(stale);
        }
    };
    // Another caller may have refreshed and released between our read and our lease: a
    // value with another soft expiry is new, not computed again.
    match read::<T>(cache, key, plan) {
        Read::Fresh(v) => {
            drop(lease);
            lead.finish();
            return Ok(v);
        }
        Read::Due(v, again) if again != soft => {
            drop(lease);
            lead.finish();
            return Ok(v);
        }
        Read::Due(..) | Read::Miss | Read::Unavailable => {}
    }
    let r = match compute_and_store(cache, key, plan, epoch, Some(&lease.held), compute) {
        Ok(v) => v,
        Err(_) => {
            tracing::warn!(
                key = %crate::error::shorten(key),
                "ddf: get_or_set's refresh failed; serving the stale value"
            );
            stale
        }
    };
    drop(lease);
    lead.finish();
    Ok(r)
}
