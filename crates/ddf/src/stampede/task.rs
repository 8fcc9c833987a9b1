//! The async face of `get_or_set`: the same steps as `sync.rs` (read, lead or wait, store under
//! the lease, release; a due value refreshed by one caller), with the rules of `mod.rs`; the
//! waits are timers and the task face's flight registry (`memo/flight_task.rs`).

use std::future::Future;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Backoff, Envelope, Held, Plan, Read, deadline, now_ms, passed, token, uniform};
use crate::AsyncCacheManager;
use crate::codec::flags;
use crate::item::Item;
use crate::memo::flight_task::{self, TaskTurn};

async fn read<T: DeserializeOwned>(cache: &AsyncCacheManager, key: &str, plan: &Plan) -> Read<T> {
    let r = if plan.enveloped {
        cache
            .get::<Envelope<T>>(key)
            .await
            .map(|hit| hit.and_then(|e| e.open(plan.beta, now_ms(), uniform())))
    } else {
        cache
            .get::<T>(key)
            .await
            .map(|hit| hit.map(|v| (v, false, 0)))
    };
    Read::of(r)
}

/// A lease this task holds. [`Lease::release`] releases it; dropped without that (the
/// caller's future was dropped, or `compute` panicked) it is released by a task spawned on the
/// current tokio runtime (none: it expires after `lease_ttl`).
struct Lease {
    cache: AsyncCacheManager,
    key: String,
    held: Held,
    released: bool,
}

impl Lease {
    async fn release(mut self) {
        self.released = true;
        release(&self.cache, &self.key, &self.held.token).await;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::debug!(
                "ddf: get_or_set's lease was dropped outside a tokio runtime; it expires by lease_ttl"
            );
            return;
        };
        let cache = self.cache.clone();
        let key = std::mem::take(&mut self.key);
        let token = std::mem::take(&mut self.held.token);
        drop(rt.spawn(async move { release(&cache, &key, &token).await }));
    }
}

enum Acquired {
    Held(Lease),
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
        Ok(true) => Acquired::Held(Lease {
            cache: cache.clone(),
            key: key.to_owned(),
            held: Held::new(token, started, plan),
            released: false,
        }),
        Ok(false) => Acquired::Busy,
        Err(e) => {
            tracing::warn!(error = %e, "ddf: get_or_set could not take its lease; computing without one");
            Acquired::Failed
        }
    }
}

async fn release(cache: &AsyncCacheManager, key: &str, token: &[u8]) {
    let lease = Plan::lease_key(key);
    match cache
        .lease_backend()
        .compare_and_delete(&lease, token)
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
type Writing = std::pin::Pin<Box<dyn Future<Output = Option<crate::Result<bool>>> + Send>>;

/// One write of `get_or_set` (as `sync::put`): under a lease, fenced on the server where the
/// backend can.
fn put<V: Serialize + ?Sized>(
    cache: &AsyncCacheManager,
    key: &str,
    plan: &Plan,
    epoch: u64,
    held: Option<&Held>,
    v: &V,
) -> Writing {
    match held {
        Some(h) => Box::pin(cache.store_under_lease(
            epoch,
            key,
            v,
            plan.server_ttl,
            &Plan::lease_key(key),
            &h.token,
        )),
        None => {
            let w = cache.store_memoized(epoch, key, v, plan.server_ttl);
            Box::pin(async move { w.await.map(|r| r.map(|()| true)) })
        }
    }
}

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
        Some(put(cache, key, plan, epoch, held, &env))
    } else {
        Some(put(cache, key, plan, epoch, held, value))
    };
    async move {
        let Some(write) = write else { return };
        match write.await {
            None => tracing::debug!(
                key = %shown,
                "ddf: an invalidation began while get_or_set computed; the value is not stored"
            ),
            Some(Err(e)) => tracing::warn!(error = %e, "ddf: get_or_set could not store its value"),
            Some(Ok(false)) => tracing::warn!(
                key = %shown,
                "ddf: get_or_set's lease was gone on the server (expired or taken over); its value is returned, not stored"
            ),
            Some(Ok(true)) => {}
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
    let computing = flight_task::leading(compute());
    let v = match held {
        Some(h) => with_heartbeat(cache, key, plan, h, computing).await?,
        None => computing.await?,
    };
    store(cache, key, plan, epoch, held, &v, start.elapsed()).await;
    Ok(v)
}

/// Awaits `computing` while extending the lease every `lease_ttl / 3` (as the thread face's
/// heartbeat, polled beside it: no task is spawned). The heartbeat stops when the lease is no
/// longer ours or the backend cannot extend one.
async fn with_heartbeat<R>(
    cache: &AsyncCacheManager,
    key: &str,
    plan: &Plan,
    held: &Held,
    computing: impl Future<Output = R>,
) -> R {
    use std::task::Poll;
    // Timers need a tokio runtime; polled by another executor, no heartbeat.
    if deadline(plan.lease_ttl).is_none() || tokio::runtime::Handle::try_current().is_err() {
        return computing.await;
    }
    let every = plan.lease_ttl / 3;
    let lease = Plan::lease_key(key);
    let beat = async {
        loop {
            tokio::time::sleep(every).await;
            let sent = Instant::now();
            match cache
                .lease_backend()
                .extend_lease(&lease, &held.token, plan.lease_ttl)
                .await
            {
                Ok(true) => held.extended(sent, plan),
                Ok(false) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "ddf: get_or_set could not extend its lease");
                }
            }
        }
    };
    let mut computing = std::pin::pin!(computing);
    let mut beat = std::pin::pin!(beat);
    let mut beating = true;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = computing.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        if beating && beat.as_mut().poll(cx).is_ready() {
            beating = false;
        }
        Poll::Pending
    })
    .await
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
    // Every caller waits at most `lock_timeout` from its call, in the flight or for the lease.
    let deadline = deadline(plan.lock_timeout);
    let flight_key = Plan::lease_key(key);
    loop {
        let landings = flight_task::landings();
        match read::<T>(cache, key, plan).await {
            Read::Fresh(v) => return Ok(v),
            Read::Due(v, soft) => {
                return refresh(cache, key, plan, epoch, (v, soft), compute).await;
            }
            Read::Unavailable => return compute().await,
            Read::Miss => {}
        }
        match flight_task::take_turn(cache.id(), &flight_key, epoch, landings).await {
            TaskTurn::Lead(mut lead) => {
                match lead_across(cache, key, plan, epoch, deadline, compute).await {
                    Led::Done(r) => {
                        lead.mark_finished();
                        return r;
                    }
                    // The flight opens first: this process's waiters do not queue behind a
                    // computation that will not be stored.
                    Led::Alone(compute) => {
                        lead.mark_finished();
                        drop(lead);
                        return compute().await;
                    }
                }
            }
            // Nested in another flight: computes, stores nothing (no lease).
            TaskTurn::Bypass => return compute().await,
            TaskTurn::Landed(_) => {}
        }
    }
}

/// As `sync::Led`.
enum Led<T, E, F> {
    Done(Result<T, E>),
    Alone(F),
}

async fn lead_across<T, E, F, Fut>(
    cache: &AsyncCacheManager,
    key: &str,
    plan: &Plan,
    epoch: u64,
    deadline: Option<Instant>,
    compute: F,
) -> Led<T, E, F>
where
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::new();
    loop {
        match acquire(cache, key, plan).await {
            Acquired::Held(lease) => {
                let r = match read::<T>(cache, key, plan).await {
                    Read::Fresh(v) | Read::Due(v, _) => Ok(v),
                    Read::Miss | Read::Unavailable => {
                        compute_and_store(cache, key, plan, epoch, Some(&lease.held), compute).await
                    }
                };
                lease.release().await;
                return Led::Done(r);
            }
            Acquired::Busy => {}
            Acquired::Failed => {
                return Led::Done(compute_and_store(cache, key, plan, epoch, None, compute).await);
            }
        }
        if passed(deadline) {
            tracing::warn!(
                key = %crate::error::shorten(key),
                "ddf: get_or_set waited lock_timeout for another caller's computation; computing, not storing"
            );
            return Led::Alone(compute);
        }
        tokio::time::sleep(backoff.next(deadline)).await;
        match read::<T>(cache, key, plan).await {
            Read::Fresh(v) | Read::Due(v, _) => return Led::Done(Ok(v)),
            Read::Unavailable => return Led::Alone(compute),
            Read::Miss => {}
        }
    }
}

async fn refresh<T, E, F, Fut>(
    cache: &AsyncCacheManager,
    key: &str,
    plan: &Plan,
    epoch: u64,
    (stale, soft): (T, u64),
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
    let lease = match acquire(cache, key, plan).await {
        Acquired::Held(lease) => lease,
        Acquired::Busy | Acquired::Failed => {
            lead.mark_finished();
            return Ok(stale);
        }
    };
    // As the thread face: a value refreshed by another caller meanwhile is not computed again.
    match read::<T>(cache, key, plan).await {
        Read::Fresh(v) => {
            lease.release().await;
            lead.mark_finished();
            return Ok(v);
        }
        Read::Due(v, again) if again != soft => {
            lease.release().await;
            lead.mark_finished();
            return Ok(v);
        }
        Read::Due(..) | Read::Miss | Read::Unavailable => {}
    }
    let r = match compute_and_store(cache, key, plan, epoch, Some(&lease.held), compute).await {
        Ok(v) => v,
        Err(_) => {
            tracing::warn!(
                key = %crate::error::shorten(key),
                "ddf: get_or_set's refresh failed; serving the stale value"
            );
            stale
        }
    };
    lease.release().await;
    lead.mark_finished();
    Ok(r)
}
