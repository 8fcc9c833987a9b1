//! The thread face of `get_or_set`: blocking waits, over [`CacheManager`].

use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Backoff, Envelope, Held, Plan, now_ms, token, uniform};
use crate::CacheManager;
use crate::codec::flags;
use crate::item::Item;
use crate::memo::flight::{self, Landing, Turn};

/// What a read found.
enum Read<T> {
    /// A value not due for a refresh.
    Fresh(T),
    /// A value due for a refresh (stale, or chosen by XFetch): served while one caller
    /// refreshes it.
    Due(T),
    Miss,
    /// The server failed for a temporary reason: compute, store nothing.
    Unavailable,
}

fn read<T: DeserializeOwned>(cache: &CacheManager, key: &str, plan: &Plan) -> Read<T> {
    let r = if plan.enveloped {
        cache
            .get::<Envelope<T>>(key)
            .map(|hit| hit.and_then(|e| e.open(plan.beta, now_ms(), uniform())))
    } else {
        cache.get::<T>(key).map(|hit| hit.map(|v| (v, false)))
    };
    match r {
        Ok(Some((v, false))) => Read::Fresh(v),
        Ok(Some((v, true))) => Read::Due(v),
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

/// What asking for the lease gave.
enum Acquired {
    Held(Held),
    /// Another caller holds it.
    Busy,
    /// The backend could not tell (an error, logged): compute without a lease.
    Failed,
}

fn acquire(cache: &CacheManager, key: &str, plan: &Plan) -> Acquired {
    let token = token();
    let started = Instant::now();
    let item = Item::new(token.clone(), flags::BYTES);
    let lease = Plan::lease_key(key);
    match cache.on_backend(|b| b.add(&lease, &item, Some(plan.lease_ttl))) {
        Ok(true) => Acquired::Held(Held::new(token, started, plan)),
        Ok(false) => Acquired::Busy,
        Err(e) => {
            tracing::warn!(error = %e, "ddf: get_or_set could not take its lease; computing without one");
            Acquired::Failed
        }
    }
}

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
            let env = Envelope::new(value, plan.soft_expiry_ms(), delta);
            cache.set(key, &env, plan.server_ttl)
        } else {
            cache.set(key, value, plan.server_ttl)
        }
    };
    match cache.epochs().store(epoch, write) {
        None => tracing::debug!(
            key = %crate::error::shorten(key),
            "ddf: an invalidation began while get_or_set computed; the value is not stored"
        ),
        Some(Err(e)) => tracing::warn!(error = %e, "ddf: get_or_set could not store its value"),
        Some(Ok(())) => {}
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
    let v = compute()?;
    store(cache, key, plan, epoch, held, &v, start.elapsed());
    Ok(v)
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
    let flight_key = Plan::lease_key(key);
    loop {
        let landings = flight::landings();
        match read::<T>(cache, key, plan) {
            Read::Fresh(v) => return Ok(v),
            Read::Due(v) => return refresh(cache, key, plan, epoch, v, compute),
            Read::Unavailable => return compute(),
            Read::Miss => {}
        }
        match flight::take_turn(cache.id(), &flight_key, epoch, landings) {
            Turn::Lead(lead) => {
                let r = lead_across(cache, key, plan, epoch, compute);
                lead.finish();
                return r;
            }
            // This thread leads another flight: it never waits (no deadlock), it computes.
            Turn::Bypass => return compute_and_store(cache, key, plan, epoch, None, compute),
            // Read again: the value is there unless the leader's computation failed or its
            // write did not happen; then one of the waiters leads next.
            Turn::Landed(Landing::Finished | Landing::Abandoned) => {}
        }
    }
}

/// The leader of this process: takes the lease, or waits for the process that holds it (and
/// takes over a lease that expired), up to `lock_timeout`.
fn lead_across<T, E, F>(
    cache: &CacheManager,
    key: &str,
    plan: &Plan,
    epoch: u64,
    compute: F,
) -> Result<T, E>
where
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> Result<T, E>,
{
    let deadline = Instant::now() + plan.lock_timeout;
    let mut backoff = Backoff::new();
    loop {
        match acquire(cache, key, plan) {
            Acquired::Held(held) => {
                // A leader elsewhere may have stored and released between our miss and our
                // lease: one more read, so that the value is computed once.
                let r = match read::<T>(cache, key, plan) {
                    Read::Fresh(v) | Read::Due(v) => Ok(v),
                    Read::Miss | Read::Unavailable => {
                        compute_and_store(cache, key, plan, epoch, Some(&held), compute)
                    }
                };
                release(cache, key, &held);
                return r;
            }
            Acquired::Busy => {}
            Acquired::Failed => return compute_and_store(cache, key, plan, epoch, None, compute),
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                key = %crate::error::shorten(key),
                "ddf: get_or_set waited lock_timeout for another caller's computation; computing, not storing"
            );
            return compute();
        }
        std::thread::sleep(backoff.next(deadline));
        match read::<T>(cache, key, plan) {
            Read::Fresh(v) | Read::Due(v) => return Ok(v),
            Read::Unavailable => return compute(),
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
    stale: T,
    compute: F,
) -> Result<T, E>
where
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> Result<T, E>,
{
    let Some(lead) = flight::try_lead(cache.id(), &Plan::lease_key(key), epoch) else {
        return Ok(stale);
    };
    let held = match acquire(cache, key, plan) {
        Acquired::Held(held) => held,
        Acquired::Busy | Acquired::Failed => {
            lead.finish();
            return Ok(stale);
        }
    };
    let r = match compute_and_store(cache, key, plan, epoch, Some(&held), compute) {
        Ok(v) => v,
        Err(_) => {
            tracing::warn!(
                key = %crate::error::shorten(key),
                "ddf: get_or_set's refresh failed; serving the stale value"
            );
            stale
        }
    };
    release(cache, key, &held);
    lead.finish();
    Ok(r)
}
