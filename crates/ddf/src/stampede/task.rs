//! The async face of `get_or_set`: the same steps as `sync.rs` (read, lead or wait, store under
//! the lease, release; a due value refreshed by one caller), with the rules of `mod.rs`; the
//! waits are timers and the task face's flight registry (`memo/flight_task.rs`).

use std::future::Future;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Backoff, Envelope, Held, Plan, now_ms, token, uniform};
use crate::AsyncCacheManager;
use crate::codec::flags;
use crate::item::Item;
use crate::memo::flight_task::{self, TaskTurn};

enum Read<T> {
    Fresh(T),
    Due(T),
    Miss,
    Unavailable,
}

async fn read<T: DeserializeOwned>(cache: &AsyncCacheManager, key: &str, plan: &Plan) -> Read<T> {
    let r = if plan.enveloped {
        cache
            .get::<Envelope<T>>(key)
            .await
            .map(|hit| hit.and_then(|e| e.open(plan.beta, now_ms(), uniform())))
    } else {
        cache.get::<T>(key).await.map(|hit| hit.map(|v| (v, false)))
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
            tracing::debug!(error = %e, "ddf: get_or_set read an unusable value; computing");
            Read::Miss
        }
    }
}

enum Acquired {
    Held(Held),
    Busy,
    Failed,
}

async fn acquire(cache: &AsyncCacheManager, key: &str, plan: &Plan) -> Acquired {
    let token = token();
    let started = Instant::now();
    let item = Item::new(token.clone(), flags::BYTES);
    let lease = Plan::lease_key(key);
    match cache
        .lease_backend()
        .add(&lease, &item, Some(plan.lease_ttl))
        .await
    {
        Ok(true) => Acquired::Held(Held::new(token, started, plan)),
        Ok(false) => Acquired::Busy,
        Err(e) => {
            tracing::warn!(error = %e, "ddf: get_or_set could not take its lease; computing without one");
            Acquired::Failed
        }
    }
}

async fn release(cache: &AsyncCacheManager, key: &str, held: &Held) {
    let lease = Plan::lease_key(key);
    match cache
        .lease_backend()
        .compare_and_delete(&lease, &held.token)
        .await
    {
        Ok(true) => {}
        Ok(false) => tracing::debug!(
            key = %crate::error::shorten(key),
            "ddf: get_or_set's lease had expired before its release"
        ),
        Err(e) => tracing::warn!(error = %e, "ddf: get_or_set could not release its lease"),
    }
}

/// A store in progress (either shape of value).
type Writing = std::pin::Pin<Box<dyn Future<Output = Option<crate::Result<()>>> + Send>>;

/// As `sync::store`: not after an invalidation, not once the lease may have been taken over.
/// The value is encoded now (the returned future borrows nothing: a result that is not `Sync`
/// keeps the caller's future `Send`).
fn store<T: Serialize>(
    cache: &AsyncCacheManager,
    key: &str,
    plan: &Plan,
    epoch: u64,
    held: Option<&Held>,
    value: &T,
    delta: Duration,
) -> impl Future<Output = ()> + Send + 'static {
    let shown = crate::error::shorten(key);
    let write = if held.is_some_and(|h| !h.may_write()) {
        tracing::warn!(
            key = %shown,
            "ddf: get_or_set's computation outlived its lease (lease_ttl); its value is returned, not stored"
        );
        None
    } else if plan.enveloped {
        let env = Envelope::new(value, plan.soft_expiry_ms(), delta);
        Some(Box::pin(cache.store_memoized(epoch, key, &env, plan.server_ttl)) as Writing)
    } else {
        Some(Box::pin(cache.store_memoized(epoch, key, value, plan.server_ttl)) as Writing)
    };
    async move {
        let Some(write) = write else { return };
        match write.await {
            None => tracing::debug!(
                key = %shown,
                "ddf: an invalidation began while get_or_set computed; the value is not stored"
            ),
            Some(Err(e)) => tracing::warn!(error = %e, "ddf: get_or_set could not store its value"),
            Some(Ok(())) => {}
        }
    }
}

async fn compute_and_store<T, E, F, Fut>(
    cache: &AsyncCacheManager,
    key: &str,
    plan: &Plan,
    epoch: u64,
    held: Option<&Held>,
    compute: F,
) -> Result<T, E>
where
    T: Serialize,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let start = Instant::now();
    let v = flight_task::leading(compute()).await?;
    store(cache, key, plan, epoch, held, &v, start.elapsed()).await;
    Ok(v)
}

/// `get_or_set` of [`AsyncCacheManager`]: `ttl` has passed the TTL rule.
pub(crate) async fn get_or_set<T, E, F, Fut>(
    cache: &AsyncCacheManager,
    key: &str,
    plan: &Plan,
    compute: F,
) -> Result<T, E>
where
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    if !cache.is_enabled() {
        return compute().await;
    }
    let epoch = cache.epochs().current();
    let flight_key = Plan::lease_key(key);
    loop {
        let landings = flight_task::landings();
        match read::<T>(cache, key, plan).await {
            Read::Fresh(v) => return Ok(v),
            Read::Due(v) => return refresh(cache, key, plan, epoch, v, compute).await,
            Read::Unavailable => return compute().await,
            Read::Miss => {}
        }
        match flight_task::take_turn(cache.id(), &flight_key, epoch, landings).await {
            TaskTurn::Lead(mut lead) => {
                let r = lead_across(cache, key, plan, epoch, compute).await;
                lead.mark_finished();
                return r;
            }
            TaskTurn::Bypass => {
                return compute_and_store(cache, key, plan, epoch, None, compute).await;
            }
            TaskTurn::Landed(_) => {}
        }
    }
}

async fn lead_across<T, E, F, Fut>(
    cache: &AsyncCacheManager,
    key: &str,
    plan: &Plan,
    epoch: u64,
    compute: F,
) -> Result<T, E>
where
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + plan.lock_timeout;
    let mut backoff = Backoff::new();
    loop {
        match acquire(cache, key, plan).await {
            Acquired::Held(held) => {
                let r = match read::<T>(cache, key, plan).await {
                    Read::Fresh(v) | Read::Due(v) => Ok(v),
                    Read::Miss | Read::Unavailable => {
                        compute_and_store(cache, key, plan, epoch, Some(&held), compute).await
                    }
                };
                release(cache, key, &held).await;
                return r;
            }
            Acquired::Busy => {}
            Acquired::Failed => {
                return compute_and_store(cache, key, plan, epoch, None, compute).await;
            }
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                key = %crate::error::shorten(key),
                "ddf: get_or_set waited lock_timeout for another caller's computation; computing, not storing"
            );
            return compute().await;
        }
        tokio::time::sleep(backoff.next(deadline)).await;
        match read::<T>(cache, key, plan).await {
            Read::Fresh(v) | Read::Due(v) => return Ok(v),
            Read::Unavailable => return compute().await,
            Read::Miss => {}
        }
    }
}

async fn refresh<T, E, F, Fut>(
    cache: &AsyncCacheManager,
    key: &str,
    plan: &Plan,
    epoch: u64,
    stale: T,
    compute: F,
) -> Result<T, E>
where
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let Some(mut lead) = flight_task::try_lead(cache.id(), &Plan::lease_key(key), epoch) else {
        return Ok(stale);
    };
    let held = match acquire(cache, key, plan).await {
        Acquired::Held(held) => held,
        Acquired::Busy | Acquired::Failed => {
            lead.mark_finished();
            return Ok(stale);
        }
    };
    let r = match compute_and_store(cache, key, plan, epoch, Some(&held), compute).await {
        Ok(v) => v,
        Err(_) => {
            tracing::warn!(
                key = %crate::error::shorten(key),
                "ddf: get_or_set's refresh failed; serving the stale value"
            );
            stale
        }
    };
    release(cache, key, &held).await;
    lead.mark_finished();
    Ok(r)
}
